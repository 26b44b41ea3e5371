/* SPDX-License-Identifier: Apache-2.0 */
/*
 * CloudEvents 1.0 envelopes in structured JSON mode: building them for producers and parsing
 * them strictly for consumers. Building writes the attributes in a fixed order with the JSON
 * writer and copies `data` verbatim, so an ingest hot path pays for one escape per attribute
 * and a memcpy of the record. Parsing tokenizes once and checks every attribute against the
 * spec's types and loom's ceilings; it never allocates except to unescape strings.
 */
#include <loom/digest.h>
#include <loom/event.h>
#include <loom/json.h>

#include <string.h>

/* ---- helpers ---- */

static bool is_type_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
}

bool loom_event_type_valid(struct loom_str type)
{
    if (type.len > LOOM_EVENT_TYPE_MAX || !loom_str_has_prefix(type, LOOM_STR("loom.")))
        return false;
    size_t tokens = 0, toklen = 0;
    for (size_t i = 5; i < type.len; i++) {
        char c = type.ptr[i];
        if (c == '.') {
            if (toklen == 0)
                return false;
            tokens++;
            toklen = 0;
        } else if (is_type_char(c)) {
            toklen++;
        } else {
            return false;
        }
    }
    if (toklen == 0)
        return false;
    return tokens + 1 >= 2;
}

static bool digits(const char *p, size_t n, int *out)
{
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return true;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m)
{
    static const int days[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : days[m - 1];
}

loom_err loom_event_parse_time(struct loom_str s, int64_t *out)
{
    const char *p = s.ptr;
    int y, mo, d, h, mi, se;
    if (s.len < 20 || !digits(p, 4, &y) || p[4] != '-' || !digits(p + 5, 2, &mo) || p[7] != '-' ||
        !digits(p + 8, 2, &d) || (p[10] != 'T' && p[10] != 't') || !digits(p + 11, 2, &h) ||
        p[13] != ':' || !digits(p + 14, 2, &mi) || p[16] != ':' || !digits(p + 17, 2, &se))
        return LOOM_EINVAL;
    if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 59)
        return LOOM_EINVAL;
    size_t i = 19;
    int64_t frac = 0;
    if (i < s.len && p[i] == '.') {
        i++;
        size_t n = 0;
        while (i < s.len && p[i] >= '0' && p[i] <= '9') {
            if (n < 9)
                frac = frac * 10 + (p[i] - '0');
            n++;
            i++;
        }
        if (n == 0 || n > 9)
            return LOOM_EINVAL;
        for (; n < 9; n++)
            frac *= 10;
    }
    int64_t offset = 0;
    if (i + 1 == s.len && (p[i] == 'Z' || p[i] == 'z')) {
        i++;
    } else if (i + 6 == s.len && (p[i] == '+' || p[i] == '-')) {
        int oh, om;
        if (!digits(p + i + 1, 2, &oh) || p[i + 3] != ':' || !digits(p + i + 4, 2, &om) ||
            oh > 23 || om > 59)
            return LOOM_EINVAL;
        offset = (int64_t)(oh * 60 + om) * 60;
        if (p[i] == '-')
            offset = -offset;
        i += 6;
    } else {
        return LOOM_EINVAL;
    }
    int64_t sec = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - offset;
    *out = sec * (int64_t)LOOM_NS_PER_SEC + frac;
    return LOOM_OK;
}

void loom_event_id_derive(struct loom_str ns, struct loom_str key, char out[LOOM_UUID_LEN + 1])
{
    struct loom_sha256 h;
    uint8_t d[LOOM_SHA256_LEN];
    loom_sha256_init(&h);
    loom_sha256_update(&h, ns.ptr, ns.len);
    loom_sha256_update(&h, "", 1);
    loom_sha256_update(&h, key.ptr, key.len);
    loom_sha256_final(&h, d);
    d[6] = (uint8_t)(0x80 | (d[6] & 0x0f)); /* version 8 */
    d[8] = (uint8_t)(0x80 | (d[8] & 0x3f)); /* the RFC 9562 variant */
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[d[i] >> 4];
        out[o++] = hex[d[i] & 15];
    }
    out[o] = '\0';
}

/* ---- building ---- */

static bool id_char_ok(char c)
{
    return c > 0x20 && c < 0x7f;
}

loom_err loom_event_build(const struct loom_event_spec *spec, struct loom_buf *out, char *id_out,
                          struct loom_error *err)
{
    char idbuf[LOOM_EVENT_ID_MAX + 1];
    struct loom_str id = spec->id;
    if (id.len == 0) {
        loom_uuid7(idbuf);
        id = loom_str_make(idbuf, LOOM_UUID_LEN);
    } else {
        if (id.len > LOOM_EVENT_ID_MAX)
            return loom_error_set(err, LOOM_ETOOBIG, "event id is %zu bytes, over %d", id.len,
                                  LOOM_EVENT_ID_MAX);
        for (size_t i = 0; i < id.len; i++)
            if (!id_char_ok(id.ptr[i]))
                return loom_error_set(err, LOOM_EINVAL,
                                      "event id must be printable ASCII without spaces");
    }
    struct loom_str source = loom_str_cstr(spec->source);
    if (!loom_str_has_prefix(source, LOOM_STR("/loom/")) || source.len == 6)
        return loom_error_set(err, LOOM_EINVAL, "event source must be \"/loom/<service>\"");
    if (source.len > LOOM_EVENT_SOURCE_MAX)
        return loom_error_set(err, LOOM_ETOOBIG, "event source is over %d bytes",
                              LOOM_EVENT_SOURCE_MAX);
    struct loom_str type = loom_str_cstr(spec->type);
    if (!loom_event_type_valid(type))
        return loom_error_set(err, LOOM_EINVAL,
                              "event type \"%.*s\" is not loom.<noun>.<verb> (lowercase)",
                              (int)LOOM_MIN(type.len, 64), type.ptr ? type.ptr : "");
    if (spec->subject.len > LOOM_EVENT_SUBJECT_MAX)
        return loom_error_set(err, LOOM_ETOOBIG, "event subject is %zu bytes, over %d",
                              spec->subject.len, LOOM_EVENT_SUBJECT_MAX);
    if (spec->data.len == 0)
        return loom_error_set(err, LOOM_EINVAL, "event data is empty (use {} for none)");
    if (spec->data.len > LOOM_EVENT_MAX_BYTES)
        return loom_error_set(err, LOOM_ETOOBIG, "event data is %zu bytes, over %zu",
                              spec->data.len, LOOM_EVENT_MAX_BYTES);

    size_t start = out->len;
    char tbuf[40];
    loom_time_rfc3339(spec->time_ns ? spec->time_ns : loom_wall_ns(), tbuf);
    const struct loom_trace_ctx *trace = spec->trace ? spec->trace : loom_trace_current();

    struct loom_json_writer w;
    loom_json_writer_init(&w, out);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "specversion");
    loom_json_write_string(&w, "1.0");
    loom_json_write_key(&w, "id");
    loom_json_write_str(&w, id);
    loom_json_write_key(&w, "source");
    loom_json_write_str(&w, source);
    loom_json_write_key(&w, "type");
    loom_json_write_str(&w, type);
    loom_json_write_key(&w, "time");
    loom_json_write_string(&w, tbuf);
    if (spec->subject.len) {
        loom_json_write_key(&w, "subject");
        loom_json_write_str(&w, spec->subject);
    }
    loom_json_write_key(&w, "datacontenttype");
    loom_json_write_string(&w, "application/json");
    if (trace) {
        char tp[LOOM_TRACEPARENT_SIZE];
        loom_trace_format(trace, tp);
        loom_json_write_key(&w, "traceparent");
        loom_json_write_string(&w, tp);
    }
    loom_json_write_key(&w, "data");
    loom_json_write_raw(&w, spec->data);
    loom_json_write_object_end(&w);
    loom_err e = loom_json_writer_finish(&w);
    if (e)
        return loom_error_set(err, e, "event does not fit its buffer");
    if (out->len - start > LOOM_EVENT_MAX_BYTES)
        return loom_error_set(err, LOOM_ETOOBIG, "event is %zu bytes, over %zu", out->len - start,
                              LOOM_EVENT_MAX_BYTES);
    if (id_out) {
        memcpy(id_out, id.ptr, id.len);
        id_out[id.len] = '\0';
    }
    return LOOM_OK;
}

/* ---- parsing ---- */

enum attr {
    A_SPECVERSION,
    A_ID,
    A_SOURCE,
    A_TYPE,
    A_SUBJECT,
    A_TIME,
    A_DATACONTENTTYPE,
    A_DATASCHEMA,
    A_TRACEPARENT,
    A_DATA,
    A_DATA_BASE64,
    A__COUNT
};

static const char *const attr_names[A__COUNT] = {
    "specversion",     "id",         "source",      "type", "subject",    "time",
    "datacontenttype", "dataschema", "traceparent", "data", "data_base64"
};

static bool ext_name_ok(struct loom_str n)
{
    if (n.len == 0 || n.len > 20)
        return false;
    for (size_t i = 0; i < n.len; i++) {
        char c = n.ptr[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
            return false;
    }
    return true;
}

/* A JSON media type: application/json, or any type/subtype ending in +json, with parameters. */
static bool json_media_type(struct loom_str ct)
{
    struct loom_str head;
    loom_str_cut(ct, ';', &head);
    head = loom_str_trim(head);
    if (loom_str_ieq(head, LOOM_STR("application/json")) ||
        loom_str_ieq(head, LOOM_STR("text/json")))
        return true;
    return head.len > 5 &&
           loom_str_ieq(loom_str_make(head.ptr + head.len - 5, 5), LOOM_STR("+json"));
}

static loom_err str_attr(const struct loom_json_doc *doc, int v, const char *name, size_t max,
                         bool required, struct loom_arena *arena, struct loom_str *out,
                         struct loom_error *err)
{
    if (!loom_json_is_string(doc, v))
        return loom_error_set(err, LOOM_EINVAL, "attribute \"%s\" must be a string", name);
    if (loom_json_unescape(doc, v, arena, out))
        return loom_error_set(err, LOOM_EINVAL, "attribute \"%s\" is not valid text", name);
    if (required && out->len == 0)
        return loom_error_set(err, LOOM_EINVAL, "attribute \"%s\" must not be empty", name);
    if (out->len > max)
        return loom_error_set(err, LOOM_ETOOBIG, "attribute \"%s\" is %zu bytes, over %zu", name,
                              out->len, max);
    if (memchr(out->ptr, '\0', out->len))
        return loom_error_set(err, LOOM_EINVAL, "attribute \"%s\" contains a NUL", name);
    return LOOM_OK;
}

loom_err loom_event_parse(const char *src, size_t len, struct loom_arena *arena,
                          struct loom_event *out, struct loom_error *err)
{
    if (len > LOOM_EVENT_MAX_BYTES)
        return loom_error_set(err, LOOM_ETOOBIG, "event is %zu bytes, over %zu", len,
                              LOOM_EVENT_MAX_BYTES);
    struct loom_json_doc doc;
    struct loom_json_limits lim = { .max_depth = 64, .max_tokens = 1u << 20 };
    loom_err e = loom_json_parse(src, len, &lim, arena, &doc, err);
    if (e)
        return e == LOOM_ETOOBIG ? e : loom_error_prefix(err, "event is not JSON");
    if (!loom_json_is_object(&doc, 0))
        return loom_error_set(err, LOOM_EINVAL, "event must be a JSON object");

    struct loom_event ev;
    memset(&ev, 0, sizeof(ev));
    int seen[A__COUNT];
    for (int a = 0; a < A__COUNT; a++)
        seen[a] = -1;
    loom_json_foreach (&doc, 0, k) {
        struct loom_str key;
        if (loom_json_unescape(&doc, k, arena, &key))
            return loom_error_set(err, LOOM_EINVAL, "malformed member name");
        int v = k + 1;
        int a = 0;
        while (a < A__COUNT && !loom_str_eq_cstr(key, attr_names[a]))
            a++;
        if (a < A__COUNT) {
            if (seen[a] >= 0)
                return loom_error_set(err, LOOM_EINVAL, "attribute \"%s\" appears twice",
                                      attr_names[a]);
            seen[a] = v;
            continue;
        }
        /* An extension attribute. */
        if (!ext_name_ok(key))
            return loom_error_set(err, LOOM_EINVAL,
                                  "attribute name \"%.*s\" is not 1 to 20 characters of [a-z0-9]",
                                  (int)LOOM_MIN(key.len, 40), key.ptr);
        for (size_t i = 0; i < ev.n_ext; i++)
            if (loom_str_eq(ev.ext[i].name, key))
                return loom_error_set(err, LOOM_EINVAL, "attribute \"%.*s\" appears twice",
                                      LOOM_STR_FMT(key));
        if (loom_json_is_null(&doc, v))
            continue;
        if (ev.n_ext == LOOM_EVENT_EXT_MAX)
            return loom_error_set(err, LOOM_ETOOBIG, "more than %d extension attributes",
                                  LOOM_EVENT_EXT_MAX);
        struct loom_event_ext *x = &ev.ext[ev.n_ext];
        x->name = key;
        if (loom_json_is_string(&doc, v)) {
            e = str_attr(&doc, v, "extension", LOOM_EVENT_SOURCE_MAX * 4, false, arena, &x->value,
                         err);
            if (e)
                return e;
        } else if (loom_json_is_number(&doc, v) || loom_json_is_bool(&doc, v)) {
            x->value = loom_json_slice(&doc, v);
        } else {
            return loom_error_set(
                err, LOOM_EINVAL,
                "extension attribute \"%.*s\" must be a string, number or boolean",
                LOOM_STR_FMT(key));
        }
        ev.n_ext++;
    }
    /* null counts as absent for every attribute */
    for (int a = 0; a < A__COUNT; a++)
        if (seen[a] >= 0 && loom_json_is_null(&doc, seen[a]))
            seen[a] = -1;

    static const int required[] = { A_SPECVERSION, A_ID, A_SOURCE, A_TYPE };
    for (size_t r = 0; r < LOOM_ARRAY_SIZE(required); r++)
        if (seen[required[r]] < 0)
            return loom_error_set(err, LOOM_EINVAL, "required attribute \"%s\" is missing",
                                  attr_names[required[r]]);
    if ((e = str_attr(&doc, seen[A_SPECVERSION], "specversion", 16, true, arena, &ev.specversion,
                      err)))
        return e;
    if (!loom_str_eq_cstr(ev.specversion, "1.0"))
        return loom_error_set(err, LOOM_EINVAL, "specversion \"%.*s\" is not \"1.0\"",
                              LOOM_STR_FMT(ev.specversion));
    if ((e = str_attr(&doc, seen[A_ID], "id", LOOM_EVENT_ID_MAX, true, arena, &ev.id, err)) ||
        (e = str_attr(&doc, seen[A_SOURCE], "source", LOOM_EVENT_SOURCE_MAX, true, arena,
                      &ev.source, err)) ||
        (e = str_attr(&doc, seen[A_TYPE], "type", LOOM_EVENT_TYPE_MAX, true, arena, &ev.type, err)))
        return e;
    if (seen[A_SUBJECT] >= 0 &&
        (e = str_attr(&doc, seen[A_SUBJECT], "subject", LOOM_EVENT_SUBJECT_MAX, true, arena,
                      &ev.subject, err)))
        return e;
    if (seen[A_TIME] >= 0) {
        if ((e = str_attr(&doc, seen[A_TIME], "time", 64, true, arena, &ev.time, err)))
            return e;
        if (loom_event_parse_time(ev.time, &ev.time_ns))
            return loom_error_set(err, LOOM_EINVAL, "time \"%.*s\" is not an RFC 3339 timestamp",
                                  LOOM_STR_FMT(ev.time));
    }
    if (seen[A_DATACONTENTTYPE] >= 0) {
        if ((e = str_attr(&doc, seen[A_DATACONTENTTYPE], "datacontenttype", 128, true, arena,
                          &ev.datacontenttype, err)))
            return e;
        if (!json_media_type(ev.datacontenttype))
            return loom_error_set(err, LOOM_EUNSUPPORTED,
                                  "datacontenttype \"%.*s\" is not JSON; loom events carry JSON",
                                  LOOM_STR_FMT(ev.datacontenttype));
    }
    if (seen[A_DATASCHEMA] >= 0 &&
        (e = str_attr(&doc, seen[A_DATASCHEMA], "dataschema", LOOM_EVENT_SOURCE_MAX, true, arena,
                      &ev.dataschema, err)))
        return e;
    if (seen[A_TRACEPARENT] >= 0) {
        if ((e = str_attr(&doc, seen[A_TRACEPARENT], "traceparent", 128, true, arena,
                          &ev.traceparent, err)))
            return e;
        if (loom_trace_parse(ev.traceparent, &ev.trace))
            return loom_error_set(err, LOOM_EINVAL, "traceparent \"%.*s\" is malformed",
                                  (int)LOOM_MIN(ev.traceparent.len, 64), ev.traceparent.ptr);
        ev.has_trace = true;
    }
    if (seen[A_DATA_BASE64] >= 0)
        return loom_error_set(err, LOOM_EUNSUPPORTED,
                              "data_base64 is not supported: loom events carry JSON data");
    if (seen[A_DATA] >= 0) {
        ev.data = loom_json_slice(&doc, seen[A_DATA]);
        if (loom_json_is_string(&doc, seen[A_DATA])) /* the slice excludes the quotes */
            ev.data = loom_str_make(ev.data.ptr - 1, ev.data.len + 2);
        ev.has_data = true;
    }
    *out = ev;
    return LOOM_OK;
}
