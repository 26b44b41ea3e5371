/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Data contracts. A declaration is parsed strictly (an unknown member is an error, so a typo
 * such as "requried" is caught rather than ignored) and compiled into a field table that the
 * record validator walks once per record: one pass over the record's members, a lookup of each
 * in the table, the type and bounds checks, then the required fields not seen. The normalized
 * declaration (members in a fixed order, defaults spelled out) is what the store keeps and GET
 * answers, and saving the same declaration again changes nothing (its version stays).
 */
#include "ingest/ingest.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const type_names[] = { "number", "integer", "string", "boolean" };

bool ing_valid_stream_name(struct loom_str s)
{
    if (s.len == 0 || s.len > ING_STREAM_MAX)
        return false;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.ptr[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '_' && c != '-')))
            return false;
    }
    return true;
}

static bool valid_field_name(struct loom_str s)
{
    if (s.len == 0 || s.len > 128)
        return false;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.ptr[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return false;
    }
    return true;
}

struct ing_schema *ing_schema_ref(struct ing_schema *s)
{
    atomic_fetch_add(&s->refs, 1);
    return s;
}

void ing_schema_unref(struct ing_schema *s)
{
    if (!s || atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    for (size_t i = 0; i < s->nfields; i++) {
        free(s->fields[i].name);
        for (size_t k = 0; k < s->fields[i].nenum; k++)
            free(s->fields[i].enums[k]);
        free(s->fields[i].enums);
    }
    free(s->fields);
    free(s->name);
    free(s->id_field);
    free(s->description);
    free(s->spec);
    free(s);
}

/* ---- compiling a declaration ---- */

static loom_err str_of(const struct loom_json_doc *doc, int v, struct loom_arena *a,
                       struct loom_str *out)
{
    if (!loom_json_is_string(doc, v))
        return LOOM_EINVAL;
    return loom_json_unescape(doc, v, a, out);
}

static loom_err compile_field(const struct loom_json_doc *doc, int v, struct loom_str name,
                              struct loom_arena *a, struct ing_field *f, struct loom_error *err)
{
    if (!loom_json_is_object(doc, v))
        return loom_error_set(err, LOOM_EINVAL, "fields.%.*s must be an object",
                              LOOM_STR_FMT(name));
    f->name = loom_str_dup(name);
    bool has_type = false;
    int enum_tok = -1;
    loom_json_foreach (doc, v, k) {
        struct loom_str key;
        if (str_of(doc, k, a, &key))
            return loom_error_set(err, LOOM_EINVAL, "fields.%.*s: bad member name",
                                  LOOM_STR_FMT(name));
        int x = k + 1;
        if (loom_str_eq_cstr(key, "type")) {
            struct loom_str t;
            size_t i = 0;
            if (!str_of(doc, x, a, &t))
                while (i < LOOM_ARRAY_SIZE(type_names) && !loom_str_eq_cstr(t, type_names[i]))
                    i++;
            if (!loom_json_is_string(doc, x) || i == LOOM_ARRAY_SIZE(type_names))
                return loom_error_set(err, LOOM_EINVAL,
                                      "fields.%.*s.type must be number, integer, string or "
                                      "boolean",
                                      LOOM_STR_FMT(name));
            f->type = (enum ing_type)i;
            has_type = true;
        } else if (loom_str_eq_cstr(key, "required")) {
            if (loom_json_to_bool(doc, x, &f->required))
                return loom_error_set(err, LOOM_EINVAL, "fields.%.*s.required must be a boolean",
                                      LOOM_STR_FMT(name));
        } else if (loom_str_eq_cstr(key, "min") || loom_str_eq_cstr(key, "max")) {
            bool is_min = loom_str_eq_cstr(key, "min");
            double d;
            if (loom_json_to_double(doc, x, &d))
                return loom_error_set(err, LOOM_EINVAL, "fields.%.*s.%s must be a number",
                                      LOOM_STR_FMT(name), is_min ? "min" : "max");
            if (is_min) {
                f->has_min = true;
                f->min = d;
            } else {
                f->has_max = true;
                f->max = d;
            }
        } else if (loom_str_eq_cstr(key, "max_length")) {
            int64_t n;
            if (loom_json_to_i64(doc, x, &n) || n < 1 || n > (1 << 24))
                return loom_error_set(err, LOOM_EINVAL,
                                      "fields.%.*s.max_length must be an integer from 1 to %d",
                                      LOOM_STR_FMT(name), 1 << 24);
            f->max_length = n;
        } else if (loom_str_eq_cstr(key, "enum")) {
            enum_tok = x;
        } else {
            return loom_error_set(err, LOOM_EINVAL,
                                  "fields.%.*s: unknown member \"%.*s\" (type, required, min, "
                                  "max, max_length, enum)",
                                  LOOM_STR_FMT(name), (int)LOOM_MIN(key.len, 40), key.ptr);
        }
    }
    if (!has_type)
        return loom_error_set(err, LOOM_EINVAL, "fields.%.*s.type is missing", LOOM_STR_FMT(name));
    bool numeric = f->type == ING_NUMBER || f->type == ING_INTEGER;
    if ((f->has_min || f->has_max) && !numeric)
        return loom_error_set(err, LOOM_EINVAL, "fields.%.*s: min and max apply to numbers only",
                              LOOM_STR_FMT(name));
    if (f->has_min && f->has_max && f->min > f->max)
        return loom_error_set(err, LOOM_EINVAL, "fields.%.*s: min is above max",
                              LOOM_STR_FMT(name));
    if (f->max_length && f->type != ING_STRING)
        return loom_error_set(err, LOOM_EINVAL, "fields.%.*s: max_length applies to strings only",
                              LOOM_STR_FMT(name));
    if (enum_tok >= 0) {
        if (f->type != ING_STRING && f->type != ING_INTEGER)
            return loom_error_set(err, LOOM_EINVAL,
                                  "fields.%.*s: enum applies to strings and integers only",
                                  LOOM_STR_FMT(name));
        int n = loom_json_size(doc, enum_tok);
        if (!loom_json_is_array(doc, enum_tok) || n < 1 || n > ING_ENUM_MAX)
            return loom_error_set(err, LOOM_EINVAL,
                                  "fields.%.*s.enum must be an array of 1 to %d values",
                                  LOOM_STR_FMT(name), ING_ENUM_MAX);
        f->enums = loom_calloc((size_t)n, sizeof(*f->enums));
        loom_json_foreach (doc, enum_tok, e) {
            struct loom_str val;
            int64_t iv;
            char num[32];
            if (f->type == ING_STRING) {
                if (str_of(doc, e, a, &val))
                    return loom_error_set(err, LOOM_EINVAL, "fields.%.*s.enum must hold strings",
                                          LOOM_STR_FMT(name));
            } else {
                if (loom_json_to_i64(doc, e, &iv))
                    return loom_error_set(err, LOOM_EINVAL, "fields.%.*s.enum must hold integers",
                                          LOOM_STR_FMT(name));
                snprintf(num, sizeof(num), "%lld", (long long)iv);
                val = loom_str_cstr(num);
            }
            f->enums[f->nenum++] = loom_str_dup(val);
        }
    }
    return LOOM_OK;
}

static void write_spec(const struct ing_schema *s, struct loom_json_writer *w)
{
    loom_json_write_key(w, "kind");
    loom_json_write_string(w, s->labels ? "labels" : "data");
    loom_json_write_key(w, "id_field");
    loom_json_write_string(w, s->id_field); /* null when none */
    loom_json_write_key(w, "additional_fields");
    loom_json_write_bool(w, s->additional);
    if (s->description) {
        loom_json_write_key(w, "description");
        loom_json_write_string(w, s->description);
    }
    loom_json_write_key(w, "fields");
    loom_json_write_object_begin(w);
    for (size_t i = 0; i < s->nfields; i++) {
        const struct ing_field *f = &s->fields[i];
        loom_json_write_key(w, f->name);
        loom_json_write_object_begin(w);
        loom_json_write_key(w, "type");
        loom_json_write_string(w, type_names[f->type]);
        loom_json_write_key(w, "required");
        loom_json_write_bool(w, f->required);
        if (f->has_min) {
            loom_json_write_key(w, "min");
            loom_json_write_double(w, f->min);
        }
        if (f->has_max) {
            loom_json_write_key(w, "max");
            loom_json_write_double(w, f->max);
        }
        if (f->max_length) {
            loom_json_write_key(w, "max_length");
            loom_json_write_i64(w, f->max_length);
        }
        if (f->nenum) {
            loom_json_write_key(w, "enum");
            loom_json_write_array_begin(w);
            for (size_t k = 0; k < f->nenum; k++) {
                if (f->type == ING_INTEGER)
                    loom_json_write_raw(w, loom_str_cstr(f->enums[k]));
                else
                    loom_json_write_string(w, f->enums[k]);
            }
            loom_json_write_array_end(w);
        }
        loom_json_write_object_end(w);
    }
    loom_json_write_object_end(w);
}

void ing_schema_write(const struct ing_schema *s, struct loom_json_writer *w)
{
    char t[40];
    loom_json_write_object_begin(w);
    loom_json_write_key(w, "name");
    loom_json_write_string(w, s->name);
    loom_json_write_key(w, "version");
    loom_json_write_i64(w, s->version);
    write_spec(s, w);
    loom_json_write_key(w, "created_at");
    loom_time_rfc3339(s->created_ms * (int64_t)LOOM_NS_PER_MS, t);
    loom_json_write_string(w, t);
    loom_json_write_key(w, "updated_at");
    loom_time_rfc3339(s->updated_ms * (int64_t)LOOM_NS_PER_MS, t);
    loom_json_write_string(w, t);
    loom_json_write_object_end(w);
}

struct ing_schema *ing_schema_compile(const char *name, const char *text, size_t len,
                                      struct loom_error *err)
{
    struct loom_arena a;
    loom_arena_init(&a, 0);
    struct ing_schema *s = loom_new(struct ing_schema);
    atomic_init(&s->refs, 1);
    s->name = loom_strdup(name);
    struct loom_json_doc doc;
    struct loom_json_limits lim = { .max_depth = 16,
                                    .max_tokens = 1u << 16,
                                    .max_bytes = 1u << 20 };
    loom_err e = loom_json_parse(text, len, &lim, &a, &doc, err);
    if (e) {
        loom_error_prefix(err, "the declaration is not valid JSON");
        goto fail;
    }
    if (!loom_json_is_object(&doc, 0)) {
        e = loom_error_set(err, LOOM_EINVAL, "the declaration must be a JSON object");
        goto fail;
    }
    int fields = -1;
    struct loom_str id_field = LOOM_STR_NULL;
    loom_json_foreach (&doc, 0, k) {
        struct loom_str key, val;
        if ((e = str_of(&doc, k, &a, &key)))
            goto fail;
        int v = k + 1;
        if (loom_str_eq_cstr(key, "kind")) {
            if (str_of(&doc, v, &a, &val) ||
                !(loom_str_eq_cstr(val, "data") || loom_str_eq_cstr(val, "labels"))) {
                e = loom_error_set(err, LOOM_EINVAL, "kind must be \"data\" or \"labels\"");
                goto fail;
            }
            s->labels = loom_str_eq_cstr(val, "labels");
        } else if (loom_str_eq_cstr(key, "id_field")) {
            if (loom_json_is_null(&doc, v))
                continue;
            if (str_of(&doc, v, &a, &id_field) || id_field.len == 0) {
                e = loom_error_set(err, LOOM_EINVAL, "id_field must be the name of a field");
                goto fail;
            }
        } else if (loom_str_eq_cstr(key, "additional_fields")) {
            if (loom_json_to_bool(&doc, v, &s->additional)) {
                e = loom_error_set(err, LOOM_EINVAL, "additional_fields must be a boolean");
                goto fail;
            }
        } else if (loom_str_eq_cstr(key, "description")) {
            if (str_of(&doc, v, &a, &val) || val.len > 4096) {
                e = loom_error_set(err, LOOM_EINVAL,
                                   "description must be a string (4096 bytes "
                                   "at most)");
                goto fail;
            }
            s->description = loom_str_dup(val);
        } else if (loom_str_eq_cstr(key, "fields")) {
            fields = v;
        } else {
            e = loom_error_set(err, LOOM_EINVAL,
                               "unknown member \"%.*s\" (kind, id_field, additional_fields, "
                               "description, fields)",
                               (int)LOOM_MIN(key.len, 40), key.ptr);
            goto fail;
        }
    }
    if (fields < 0 || !loom_json_is_object(&doc, fields) || loom_json_size(&doc, fields) < 1 ||
        loom_json_size(&doc, fields) > ING_FIELDS_MAX) {
        e = loom_error_set(err, LOOM_EINVAL,
                           "fields must be an object declaring 1 to %d fields, e.g. "
                           "{\"amount\": {\"type\": \"number\", \"required\": true}}",
                           ING_FIELDS_MAX);
        goto fail;
    }
    s->fields = loom_calloc((size_t)loom_json_size(&doc, fields), sizeof(*s->fields));
    loom_json_foreach (&doc, fields, k) {
        struct loom_str fname;
        if ((e = str_of(&doc, k, &a, &fname)) || !valid_field_name(fname)) {
            e = loom_error_set(err, LOOM_EINVAL,
                               "field name \"%.*s\" is not 1 to 128 characters of "
                               "[A-Za-z0-9_.-]",
                               (int)LOOM_MIN(fname.len, 40), fname.ptr ? fname.ptr : "");
            goto fail;
        }
        for (size_t i = 0; i < s->nfields; i++)
            if (loom_str_eq_cstr(fname, s->fields[i].name)) {
                e = loom_error_set(err, LOOM_EINVAL, "field \"%.*s\" is declared twice",
                                   LOOM_STR_FMT(fname));
                goto fail;
            }
        struct ing_field *f = &s->fields[s->nfields++];
        if ((e = compile_field(&doc, k + 1, fname, &a, f, err)))
            goto fail;
    }
    if (id_field.len) {
        size_t i = 0;
        while (i < s->nfields && !loom_str_eq_cstr(id_field, s->fields[i].name))
            i++;
        if (i == s->nfields) {
            e = loom_error_set(err, LOOM_EINVAL, "id_field \"%.*s\" is not one of the fields",
                               (int)LOOM_MIN(id_field.len, 40), id_field.ptr);
            goto fail;
        }
        if (s->fields[i].type != ING_STRING && s->fields[i].type != ING_INTEGER) {
            e = loom_error_set(err, LOOM_EINVAL, "id_field \"%s\" must be a string or an integer",
                               s->fields[i].name);
            goto fail;
        }
        s->fields[i].required = true; /* a record without its id cannot be retried safely */
        s->id_field = loom_str_dup(id_field);
    }
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    write_spec(s, &w);
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
    s->spec = loom_buf_detach(&b, NULL);
    loom_arena_release(&a);
    return s;
fail:
    loom_arena_release(&a);
    ing_schema_unref(s);
    return NULL;
}

/* ---- validating a record ---- */

__attribute__((format(printf, 2, 3))) static void add_error(struct ing_verdict *v, const char *fmt,
                                                            ...)
{
    if (v->nerrors == ING_RECORD_ERRORS_MAX) {
        v->more_errors = true;
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->errors[v->nerrors++], sizeof(v->errors[0]), fmt, ap);
    va_end(ap);
}

static const char *kind_of(const struct loom_json_doc *doc, int i)
{
    switch (loom_json_type(doc, i)) {
    case LOOM_JSON_OBJECT:
        return "an object";
    case LOOM_JSON_ARRAY:
        return "an array";
    case LOOM_JSON_STRING:
        return "a string";
    case LOOM_JSON_NUMBER:
        return loom_json_is_integer(doc, i) ? "an integer" : "a number";
    case LOOM_JSON_TRUE:
    case LOOM_JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

static size_t utf8_chars(struct loom_str s)
{
    size_t n = 0;
    for (size_t i = 0; i < s.len; i++)
        n += ((unsigned char)s.ptr[i] & 0xc0) != 0x80;
    return n;
}

static bool in_enum(const struct ing_field *f, struct loom_str v)
{
    for (size_t k = 0; k < f->nenum; k++)
        if (loom_str_eq_cstr(v, f->enums[k]))
            return true;
    return false;
}

static void check_value(const struct ing_field *f, const struct loom_json_doc *doc, int x,
                        struct loom_arena *arena, struct ing_verdict *v, struct loom_str *text)
{
    const char *name = f->name;
    switch (f->type) {
    case ING_NUMBER:
    case ING_INTEGER: {
        double d;
        int64_t iv = 0;
        if (!loom_json_is_number(doc, x)) {
            add_error(v, "%s: expected %s, got %s", name,
                      f->type == ING_NUMBER ? "a number" : "an integer", kind_of(doc, x));
            return;
        }
        if (f->type == ING_INTEGER && loom_json_to_i64(doc, x, &iv)) {
            add_error(v, "%s: expected an integer, got %.*s", name,
                      (int)LOOM_MIN(loom_json_slice(doc, x).len, 40), loom_json_slice(doc, x).ptr);
            return;
        }
        if (loom_json_to_double(doc, x, &d) || !isfinite(d)) {
            add_error(v, "%s: %.*s is out of range", name,
                      (int)LOOM_MIN(loom_json_slice(doc, x).len, 40), loom_json_slice(doc, x).ptr);
            return;
        }
        char num[LOOM_FMT_DOUBLE_MAX];
        if (f->has_min && d < f->min) {
            loom_fmt_double(f->min, num);
            add_error(v, "%s: %.*s is below the minimum %s", name,
                      (int)LOOM_MIN(loom_json_slice(doc, x).len, 40), loom_json_slice(doc, x).ptr,
                      num);
        }
        if (f->has_max && d > f->max) {
            loom_fmt_double(f->max, num);
            add_error(v, "%s: %.*s is above the maximum %s", name,
                      (int)LOOM_MIN(loom_json_slice(doc, x).len, 40), loom_json_slice(doc, x).ptr,
                      num);
        }
        if (f->nenum) {
            char buf[32];
            snprintf(buf, sizeof(buf), "%lld", (long long)iv);
            if (!in_enum(f, loom_str_cstr(buf)))
                add_error(v, "%s: %s is not one of the allowed values", name, buf);
        }
        if (text) {
            char buf[32];
            int n = snprintf(buf, sizeof(buf), "%lld", (long long)iv);
            *text = loom_str_make(loom_arena_memdup(arena, buf, (size_t)n), (size_t)n);
        }
        return;
    }
    case ING_STRING: {
        struct loom_str s;
        if (!loom_json_is_string(doc, x)) {
            add_error(v, "%s: expected a string, got %s", name, kind_of(doc, x));
            return;
        }
        if (loom_json_unescape(doc, x, arena, &s)) {
            add_error(v, "%s: malformed string", name);
            return;
        }
        if (f->max_length && (int64_t)utf8_chars(s) > f->max_length)
            add_error(v, "%s: %zu characters, over the maximum length %lld", name, utf8_chars(s),
                      (long long)f->max_length);
        if (f->nenum && !in_enum(f, s))
            add_error(v, "%s: \"%.*s\" is not one of the allowed values", name,
                      (int)LOOM_MIN(s.len, 40), s.ptr);
        if (text)
            *text = s;
        return;
    }
    case ING_BOOLEAN:
        if (!loom_json_is_bool(doc, x))
            add_error(v, "%s: expected a boolean, got %s", name, kind_of(doc, x));
        return;
    }
}

static bool id_ok(struct loom_str id)
{
    if (id.len == 0 || id.len > ING_ID_MAX)
        return false;
    for (size_t i = 0; i < id.len; i++)
        if ((unsigned char)id.ptr[i] < 0x20)
            return false;
    return true;
}

void ing_validate(const struct ing_schema *s, const struct loom_json_doc *doc,
                  struct loom_arena *arena, struct ing_verdict *v)
{
    v->nerrors = 0;
    v->more_errors = false;
    v->id = LOOM_STR_NULL;
    if (!loom_json_is_object(doc, 0)) {
        add_error(v, "the record is %s, not a JSON object", kind_of(doc, 0));
        return;
    }
    uint64_t seen[(ING_FIELDS_MAX + 63) / 64] = { 0 };
    loom_json_foreach (doc, 0, k) {
        struct loom_str key = loom_json_slice(doc, k);
        if (doc->toks[k].flags & LOOM_JSON_ESCAPED)
            loom_json_unescape(doc, k, arena, &key);
        size_t i = 0;
        while (i < s->nfields && !(strlen(s->fields[i].name) == key.len &&
                                   memcmp(s->fields[i].name, key.ptr, key.len) == 0))
            i++;
        if (i == s->nfields) {
            if (!s->additional)
                add_error(v, "%.*s: unknown field (the stream's contract does not declare it)",
                          (int)LOOM_MIN(key.len, 60), key.ptr);
            continue;
        }
        if (seen[i / 64] & (1ull << (i % 64))) {
            add_error(v, "%s: appears twice", s->fields[i].name);
            continue;
        }
        seen[i / 64] |= 1ull << (i % 64);
        const struct ing_field *f = &s->fields[i];
        if (loom_json_is_null(doc, k + 1)) {
            if (f->required)
                add_error(v, "%s: required, got null", f->name);
            continue;
        }
        bool is_id = s->id_field && strcmp(s->id_field, f->name) == 0;
        struct loom_str text = LOOM_STR_NULL;
        size_t before = v->nerrors;
        check_value(f, doc, k + 1, arena, v, is_id ? &text : NULL);
        if (is_id && v->nerrors == before) {
            if (id_ok(text))
                v->id = text;
            else
                add_error(v, "%s: the record id must be 1 to %d characters", f->name, ING_ID_MAX);
        }
    }
    for (size_t i = 0; i < s->nfields; i++)
        if (s->fields[i].required && !(seen[i / 64] & (1ull << (i % 64))))
            add_error(v, "%s: required field is missing", s->fields[i].name);
}

/* ---- the store ---- */

static const char schema_v1[] = "CREATE TABLE IF NOT EXISTS ingest_streams ("
                                " name TEXT PRIMARY KEY, spec TEXT NOT NULL,"
                                " version BIGINT NOT NULL, created_ms BIGINT NOT NULL,"
                                " updated_ms BIGINT NOT NULL)";

const struct loom_migration ing_migrations[] = { { 1, schema_v1 } };
const size_t ing_nmigrations = LOOM_ARRAY_SIZE(ing_migrations);

struct row {
    struct ing_schema *s;
    struct loom_error *err;
    bool found;
};

static loom_err load_row(const struct loom_sql_row *row, void *arg)
{
    struct row *r = arg;
    const struct loom_sql_value *name = loom_sql_col(row, "name");
    const struct loom_sql_value *spec = loom_sql_col(row, "spec");
    if (!name || !spec)
        return LOOM_EINTERNAL;
    char *n = loom_str_dup(name->s);
    r->s = ing_schema_compile(n, spec->s.ptr, spec->s.len, r->err);
    free(n);
    if (!r->s)
        return loom_error_prefix(r->err, "stored contract of \"%.*s\"", LOOM_STR_FMT(name->s));
    r->s->version = loom_sql_col(row, "version")->i;
    r->s->created_ms = loom_sql_col(row, "created_ms")->i;
    r->s->updated_ms = loom_sql_col(row, "updated_ms")->i;
    r->s->loaded_ns = loom_now_ns();
    r->found = true;
    return LOOM_OK;
}

loom_err ing_schema_load(struct loom_store *store, const char *name, struct ing_schema **out,
                         struct loom_error *err)
{
    struct loom_db *db;
    loom_err e = loom_store_acquire(store, &db, err);
    if (e)
        return e;
    struct row r = { .err = err };
    struct loom_sql_value p = LOOM_SQL_CSTR_V(name);
    e = loom_db_exec(db,
                     "SELECT name, spec, version, created_ms, updated_ms FROM ingest_streams "
                     "WHERE name = $1",
                     &p, 1, load_row, &r, NULL, err);
    loom_store_release(store, db);
    if (e)
        return e;
    if (!r.found)
        return loom_error_set(err, LOOM_ENOTFOUND, "no stream \"%s\"", name);
    *out = r.s;
    return LOOM_OK;
}

struct save_ctx {
    struct ing_schema *s;
    bool created;
};

static loom_err save_existing(const struct loom_sql_row *row, void *arg)
{
    struct save_ctx *c = arg;
    const struct loom_sql_value *spec = loom_sql_col(row, "spec");
    c->created = false;
    c->s->version = loom_sql_col(row, "version")->i;
    c->s->created_ms = loom_sql_col(row, "created_ms")->i;
    c->s->updated_ms = loom_sql_col(row, "updated_ms")->i;
    if (!loom_str_eq_cstr(spec->s, c->s->spec))
        c->s->version = -c->s->version; /* changed: bumped below */
    return LOOM_OK;
}

static loom_err save_tx(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct save_ctx *c = arg;
    struct ing_schema *s = c->s;
    c->created = true;
    s->version = 0;
    struct loom_sql_value p = LOOM_SQL_CSTR_V(s->name);
    loom_err e = loom_db_exec(db,
                              "SELECT spec, version, created_ms, updated_ms FROM ingest_streams "
                              "WHERE name = $1",
                              &p, 1, save_existing, c, NULL, err);
    if (e)
        return e;
    int64_t now = loom_wall_ns() / (int64_t)LOOM_NS_PER_MS;
    if (!c->created && s->version > 0)
        return LOOM_OK; /* the same declaration again: nothing changes */
    if (c->created) {
        s->version = 1;
        s->created_ms = now;
    } else {
        s->version = -s->version + 1;
    }
    s->updated_ms = now;
    struct loom_sql_value q[] = { LOOM_SQL_CSTR_V(s->name), LOOM_SQL_CSTR_V(s->spec),
                                  LOOM_SQL_INT_V(s->version), LOOM_SQL_INT_V(s->created_ms),
                                  LOOM_SQL_INT_V(s->updated_ms) };
    return loom_db_exec(db,
                        "INSERT INTO ingest_streams (name, spec, version, created_ms, updated_ms) "
                        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET spec = $2, "
                        "version = $3, updated_ms = $5",
                        q, LOOM_ARRAY_SIZE(q), NULL, NULL, NULL, err);
}

loom_err ing_schema_save(struct loom_store *store, struct ing_schema *s, bool *created,
                         struct loom_error *err)
{
    struct save_ctx c = { .s = s };
    loom_err e = loom_store_tx(store, save_tx, &c, err);
    if (!e) {
        *created = c.created;
        s->loaded_ns = loom_now_ns();
    }
    return e;
}

struct list_ctx {
    struct loom_json_writer *w;
    size_t n, limit;
    char last[ING_STREAM_MAX + 1];
    struct loom_error *err;
};

static loom_err list_row(const struct loom_sql_row *row, void *arg)
{
    struct list_ctx *c = arg;
    if (c->n == c->limit) {
        c->n++; /* one more exists: there is a next page */
        return LOOM_OK;
    }
    struct row r = { .err = c->err };
    loom_err e = load_row(row, &r);
    if (e)
        return e;
    ing_schema_write(r.s, c->w);
    snprintf(c->last, sizeof(c->last), "%s", r.s->name);
    ing_schema_unref(r.s);
    c->n++;
    return LOOM_OK;
}

loom_err ing_schema_list(struct loom_store *store, struct loom_str cursor, size_t limit,
                         struct loom_buf *out, struct loom_error *err)
{
    struct loom_db *db;
    loom_err e = loom_store_acquire(store, &db, err);
    if (e)
        return e;
    struct loom_json_writer w;
    loom_json_writer_init(&w, out);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "items");
    loom_json_write_array_begin(&w);
    struct list_ctx c = { .w = &w, .limit = limit, .err = err };
    struct loom_sql_value p[] = { LOOM_SQL_TEXT_V(cursor), LOOM_SQL_INT_V(limit + 1) };
    e = loom_db_exec(db,
                     "SELECT name, spec, version, created_ms, updated_ms FROM ingest_streams "
                     "WHERE name > $1 ORDER BY name LIMIT $2",
                     p, 2, list_row, &c, NULL, err);
    loom_store_release(store, db);
    if (e)
        return e;
    loom_json_write_array_end(&w);
    loom_json_write_key(&w, "next_cursor");
    if (c.n > limit)
        loom_json_write_string(&w, c.last);
    else
        loom_json_write_null(&w);
    loom_json_write_object_end(&w);
    return loom_json_writer_finish(&w);
}
