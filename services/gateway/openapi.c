/* SPDX-License-Identifier: Apache-2.0 */
/*
 * GET /openapi.json: the platform's one OpenAPI 3.1 document (api/openapi.yaml, the contract the
 * system tests validate against) served as JSON. The YAML is embedded in the binary at build
 * time (.incbin of the file CMake names in GW_OPENAPI_YAML, rebuilt when it changes) and
 * converted once at start with libyaml's event parser: mappings become objects, sequences
 * arrays, plain scalars that YAML 1.2's core schema reads as null, booleans or numbers become
 * those, and every other scalar a string. Aliases are refused (the contract does not use them).
 * The gateway then answers from memory.
 */
#include "gateway/gateway.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#ifndef GW_OPENAPI_YAML
#error "GW_OPENAPI_YAML must name api/openapi.yaml (see the gateway block of CMakeLists.txt)"
#endif

__asm__(".pushsection .rodata\n"
        ".balign 16\n"
        ".hidden gw_openapi_yaml\n"
        ".globl gw_openapi_yaml\n"
        "gw_openapi_yaml:\n"
        ".incbin \"" GW_OPENAPI_YAML "\"\n"
        ".hidden gw_openapi_yaml_end\n"
        ".globl gw_openapi_yaml_end\n"
        "gw_openapi_yaml_end:\n"
        ".byte 0\n"
        ".popsection\n");
extern const char gw_openapi_yaml[];
extern const char gw_openapi_yaml_end[];

static bool all_digits(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

/* A plain scalar as JSON: null, a boolean, a number, or (false) a string. */
static bool write_plain(struct loom_json_writer *w, const char *s, size_t n)
{
    if (n == 0 || (n == 1 && s[0] == '~') ||
        (n == 4 && (!memcmp(s, "null", 4) || !memcmp(s, "Null", 4) || !memcmp(s, "NULL", 4)))) {
        loom_json_write_null(w);
        return true;
    }
    if ((n == 4 && (!memcmp(s, "true", 4) || !memcmp(s, "True", 4) || !memcmp(s, "TRUE", 4)))) {
        loom_json_write_bool(w, true);
        return true;
    }
    if ((n == 5 && (!memcmp(s, "false", 5) || !memcmp(s, "False", 5) || !memcmp(s, "FALSE", 5)))) {
        loom_json_write_bool(w, false);
        return true;
    }
    const char *p = s;
    size_t m = n;
    if (*p == '-' || *p == '+')
        p++, m--;
    if (all_digits(p, m)) {
        if (m > 1 && p[0] == '0')
            return false; /* octal-looking: keep the text */
        if (s[0] == '+')
            loom_json_write_raw(w, loom_str_make(s + 1, n - 1));
        else
            loom_json_write_raw(w, loom_str_make(s, n));
        return true;
    }
    /* A float of the core schema: digits with a point and/or an exponent. */
    bool digit = false, bad = false;
    for (size_t i = 0; i < m; i++) {
        char c = p[i];
        if (c >= '0' && c <= '9')
            digit = true;
        else if (!(c == '.' || c == 'e' || c == 'E' || c == '-' || c == '+'))
            bad = true;
    }
    if (digit && !bad) {
        char tmp[64];
        if (n < sizeof(tmp)) {
            memcpy(tmp, s, n);
            tmp[n] = '\0';
            char *end;
            double v = strtod(tmp, &end);
            if (end == tmp + n && isfinite(v)) {
                loom_json_write_double(w, v);
                return true;
            }
        }
    }
    return false;
}

loom_err gw_openapi_init(struct gw_service *gw, struct loom_error *err)
{
    yaml_parser_t parser;
    yaml_event_t ev;
    if (!yaml_parser_initialize(&parser))
        return loom_error_set(err, LOOM_EINTERNAL, "libyaml cannot start");
    yaml_parser_set_input_string(&parser, (const unsigned char *)gw_openapi_yaml,
                                 (size_t)(gw_openapi_yaml_end - gw_openapi_yaml));
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    /* Per open container: is it a mapping, and is a key due next. */
    bool is_map[64], want_key[64];
    int depth = 0;
    loom_err e = LOOM_OK;
    bool done = false;
    while (!done) {
        if (!yaml_parser_parse(&parser, &ev)) {
            e = loom_error_set(err, LOOM_EPARSE, "api/openapi.yaml: %s at line %zu",
                               parser.problem ? parser.problem : "syntax error",
                               (size_t)parser.problem_mark.line + 1);
            break;
        }
        bool key = depth > 0 && is_map[depth - 1] && want_key[depth - 1];
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_MAPPING_START_EVENT:
        case YAML_SEQUENCE_START_EVENT:
            if (key || depth == 64) {
                e = loom_error_set(err, LOOM_EPARSE, "api/openapi.yaml: a complex key or too deep");
                done = true;
                break;
            }
            if (depth > 0 && is_map[depth - 1])
                want_key[depth - 1] = true;
            is_map[depth] = ev.type == YAML_MAPPING_START_EVENT;
            want_key[depth] = true;
            depth++;
            if (ev.type == YAML_MAPPING_START_EVENT)
                loom_json_write_object_begin(&w);
            else
                loom_json_write_array_begin(&w);
            break;
        case YAML_MAPPING_END_EVENT:
            loom_json_write_object_end(&w);
            depth--;
            break;
        case YAML_SEQUENCE_END_EVENT:
            loom_json_write_array_end(&w);
            depth--;
            break;
        case YAML_SCALAR_EVENT: {
            const char *s = (const char *)ev.data.scalar.value;
            size_t n = ev.data.scalar.length;
            if (key) {
                loom_json_write_keyn(&w, loom_str_make(s, n));
                want_key[depth - 1] = false;
                break;
            }
            if (depth > 0 && is_map[depth - 1])
                want_key[depth - 1] = true;
            if (ev.data.scalar.style != YAML_PLAIN_SCALAR_STYLE || !write_plain(&w, s, n))
                loom_json_write_str(&w, loom_str_make(s, n));
            break;
        }
        case YAML_ALIAS_EVENT:
            e = loom_error_set(err, LOOM_EPARSE, "api/openapi.yaml: aliases are not supported");
            done = true;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    if (!e && loom_json_writer_finish(&w))
        e = loom_error_set(err, LOOM_EPARSE, "api/openapi.yaml: not one document");
    if (e) {
        loom_buf_release(&b);
        return e;
    }
    gw->openapi_json = loom_buf_detach(&b, &gw->openapi_len);
    return LOOM_OK;
}

void gw_h_openapi(struct gw_req *g)
{
    gw_respond(g, 200, "application/json", loom_str_make(g->gw->openapi_json, g->gw->openapi_len));
}
