/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The RFC 4180 reader (include/loom/csv.h): a byte-driven state machine that survives any split
 * of its input, so that an upload can be parsed chunk by chunk as it arrives. Runs of ordinary
 * bytes are copied in one step; a record's unquoted bytes accumulate in one bounded buffer and
 * are handed out as slices, so a record costs no allocation once the buffers have grown.
 */
#include <loom/csv.h>

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    S_RECORD_START, /* nothing of a record yet */
    S_FIELD_START,  /* a field has begun (after a comma or the record's first byte) */
    S_UNQUOTED,     /* inside an unquoted field */
    S_QUOTED,       /* inside a quoted field */
    S_QUOTE,        /* a quote inside a quoted field: an escape or the field's end */
    S_CR,           /* a CR outside quotes: a LF must follow */
};

static const unsigned char bom[3] = { 0xEF, 0xBB, 0xBF };

void loom_csv_reader_init(struct loom_csv_reader *r, const struct loom_csv_limits *limits,
                          loom_csv_record_fn fn, void *arg)
{
    memset(r, 0, sizeof(*r));
    if (limits)
        r->limits = *limits;
    struct loom_csv_limits *l = &r->limits;
    if (!l->max_fields)
        l->max_fields = LOOM_CSV_MAX_FIELDS_DEFAULT;
    if (!l->max_field_bytes)
        l->max_field_bytes = LOOM_CSV_MAX_FIELD_BYTES_DEFAULT;
    if (!l->max_record_bytes)
        l->max_record_bytes = LOOM_CSV_MAX_RECORD_BYTES_DEFAULT;
    if (!l->max_records)
        l->max_records = LOOM_CSV_MAX_RECORDS_DEFAULT;
    if (!l->max_bytes)
        l->max_bytes = LOOM_CSV_MAX_BYTES_DEFAULT;
    r->fn = fn;
    r->arg = arg;
    r->state = S_RECORD_START;
    r->line = 1;
    r->column = 1;
    /* The record buffer's ceiling is the record limit; +1 leaves room for its NUL. */
    loom_buf_init(&r->text, l->max_record_bytes + 1);
}

void loom_csv_reader_release(struct loom_csv_reader *r)
{
    loom_buf_release(&r->text);
    free(r->starts);
    free(r->columns);
    free(r->slices);
    r->starts = NULL;
    r->columns = NULL;
    r->slices = NULL;
    r->cap_fields = r->nfields = 0;
}

static loom_err failv(struct loom_csv_reader *r, struct loom_error *err, loom_err code,
                      uint64_t line, uint64_t column, const char *fmt, va_list ap)
    __attribute__((format(printf, 6, 0)));
static loom_err failv(struct loom_csv_reader *r, struct loom_error *err, loom_err code,
                      uint64_t line, uint64_t column, const char *fmt, va_list ap)
{
    char msg[LOOM_ERROR_MSG_MAX];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    r->failed = true;
    r->err_line = line;
    r->err_column = column;
    return loom_error_set(err, code, "line %llu, column %llu: %s", (unsigned long long)line,
                          (unsigned long long)column, msg);
}

loom_err loom_csv_fail(struct loom_csv_reader *r, struct loom_error *err, loom_err code,
                       uint64_t line, uint64_t column, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    loom_err e = failv(r, err, code, line, column, fmt, ap);
    va_end(ap);
    return e;
}

/* An error at the current position. */
static loom_err fail_here(struct loom_csv_reader *r, struct loom_error *err, loom_err code,
                          const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static loom_err fail_here(struct loom_csv_reader *r, struct loom_error *err, loom_err code,
                          const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    loom_err e = failv(r, err, code, r->line, r->column, fmt, ap);
    va_end(ap);
    return e;
}

static loom_err begin_field(struct loom_csv_reader *r, struct loom_error *err)
{
    if (r->nfields == r->limits.max_fields)
        return fail_here(r, err, LOOM_ETOOBIG, "more than %zu fields in one record",
                         r->limits.max_fields);
    if (r->nfields == r->cap_fields) {
        size_t cap = r->cap_fields ? r->cap_fields * 2 : 16;
        r->starts = loom_realloc(r->starts, cap * sizeof(*r->starts));
        r->columns = loom_realloc(r->columns, cap * sizeof(*r->columns));
        r->slices = loom_realloc(r->slices, cap * sizeof(*r->slices));
        r->cap_fields = cap;
    }
    r->starts[r->nfields] = r->text.len;
    r->columns[r->nfields] = r->column;
    r->nfields++;
    r->field_start = r->text.len;
    return LOOM_OK;
}

static loom_err append(struct loom_csv_reader *r, const char *p, size_t n, struct loom_error *err)
{
    /* Errors point at the first byte over the limit, whatever the split of the input. */
    size_t field = r->text.len - r->field_start;
    if (field + n > r->limits.max_field_bytes)
        return loom_csv_fail(r, err, LOOM_ETOOBIG, r->line,
                             r->column + (r->limits.max_field_bytes - field),
                             "a field is longer than %zu bytes", r->limits.max_field_bytes);
    if (r->text.len + n > r->limits.max_record_bytes || loom_buf_append(&r->text, p, n))
        return loom_csv_fail(r, err, LOOM_ETOOBIG, r->line,
                             r->column + (r->limits.max_record_bytes - r->text.len),
                             "a record is longer than %zu bytes", r->limits.max_record_bytes);
    return LOOM_OK;
}

static loom_err emit(struct loom_csv_reader *r, struct loom_error *err)
{
    if (r->records == r->limits.max_records)
        return loom_csv_fail(r, err, LOOM_ETOOBIG, r->rec_line, 1, "more than %llu records",
                             (unsigned long long)r->limits.max_records);
    /* A record of empty fields has no text at all: its slices point at "". */
    const char *base = r->text.data ? r->text.data : "";
    for (size_t i = 0; i < r->nfields; i++) {
        size_t end = i + 1 < r->nfields ? r->starts[i + 1] : r->text.len;
        r->slices[i] = loom_str_make(base + r->starts[i], end - r->starts[i]);
    }
    struct loom_csv_record rec = {
        .fields = r->slices,
        .columns = r->columns,
        .nfields = r->nfields,
        .index = r->records,
        .line = r->rec_line,
    };
    loom_err e = r->fn ? r->fn(r, &rec, r->arg, err) : LOOM_OK;
    if (e) {
        if (!r->failed) {
            r->failed = true;
            r->err_line = r->rec_line;
            r->err_column = 1;
        }
        return e;
    }
    r->records++;
    loom_buf_reset(&r->text);
    r->nfields = 0;
    r->field_start = 0;
    return LOOM_OK;
}

static inline bool ordinary(unsigned char c)
{
    return c != ',' && c != '\n' && c != '\r' && c != '"' && c != '\0';
}

static loom_err run(struct loom_csv_reader *r, const char *p, size_t n, struct loom_error *err)
{
    loom_err e;
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)p[i];
        switch (r->state) {
        case S_RECORD_START:
            if (c == '\n') { /* a blank line */
                r->line++;
                r->column = 1;
                i++;
                continue;
            }
            if (c == '\r') {
                r->state = S_CR;
                r->column++;
                i++;
                continue;
            }
            r->rec_line = r->line;
            if ((e = begin_field(r, err)))
                return e;
            r->state = S_FIELD_START;
            continue; /* the byte is the field's first */
        case S_FIELD_START:
            if (c == '"') {
                r->quote_line = r->line;
                r->quote_column = r->column;
                r->state = S_QUOTED;
                r->column++;
                i++;
                continue;
            }
            r->state = S_UNQUOTED;
            continue;
        case S_UNQUOTED: {
            size_t j = i;
            while (j < n && ordinary((unsigned char)p[j]))
                j++;
            if (j > i) {
                if ((e = append(r, p + i, j - i, err)))
                    return e;
                r->column += j - i;
                i = j;
                continue;
            }
            if (c == ',') {
                r->column++;
                i++;
                if ((e = begin_field(r, err)))
                    return e;
                r->state = S_FIELD_START;
            } else if (c == '\n') {
                r->line++;
                r->column = 1;
                i++;
                if ((e = emit(r, err)))
                    return e;
                r->state = S_RECORD_START;
            } else if (c == '\r') {
                r->column++;
                i++;
                r->state = S_CR;
            } else if (c == '"') {
                return fail_here(r, err, LOOM_EPARSE,
                                 "a quote inside an unquoted field (quote the whole field and "
                                 "double the quotes inside it)");
            } else {
                return fail_here(r, err, LOOM_EPARSE, "a NUL byte");
            }
            continue;
        }
        case S_QUOTED: {
            size_t j = i;
            while (j < n && p[j] != '"' && p[j] != '\0')
                j++;
            if (j > i) {
                if ((e = append(r, p + i, j - i, err)))
                    return e;
                for (; i < j; i++) {
                    if (p[i] == '\n') {
                        r->line++;
                        r->column = 1;
                    } else {
                        r->column++;
                    }
                }
                continue;
            }
            if (c == '\0')
                return fail_here(r, err, LOOM_EPARSE, "a NUL byte");
            r->column++;
            i++;
            r->state = S_QUOTE;
            continue;
        }
        case S_QUOTE:
            if (c == '"') {
                if ((e = append(r, "\"", 1, err)))
                    return e;
                r->column++;
                i++;
                r->state = S_QUOTED;
            } else if (c == ',') {
                r->column++;
                i++;
                if ((e = begin_field(r, err)))
                    return e;
                r->state = S_FIELD_START;
            } else if (c == '\n') {
                r->line++;
                r->column = 1;
                i++;
                if ((e = emit(r, err)))
                    return e;
                r->state = S_RECORD_START;
            } else if (c == '\r') {
                r->column++;
                i++;
                r->state = S_CR;
            } else {
                return fail_here(r, err, LOOM_EPARSE,
                                 "expected ',' or a line break after a closing quote");
            }
            continue;
        case S_CR:
            if (c != '\n')
                return loom_csv_fail(r, err, LOOM_EPARSE, r->line, r->column - 1,
                                     "a carriage return not followed by a line feed");
            r->line++;
            r->column = 1;
            i++;
            if (r->nfields && (e = emit(r, err)))
                return e;
            r->state = S_RECORD_START;
            continue;
        }
    }
    return LOOM_OK;
}

loom_err loom_csv_feed(struct loom_csv_reader *r, const char *data, size_t n,
                       struct loom_error *err)
{
    if (r->failed)
        return loom_error_set(err, LOOM_EINVAL, "the reader already failed");
    if (n > r->limits.max_bytes - r->bytes)
        return fail_here(r, err, LOOM_ETOOBIG, "the input is larger than %llu bytes",
                         (unsigned long long)r->limits.max_bytes);
    uint64_t before = r->bytes;
    r->bytes += n;
    /* A byte-order mark is dropped only at the very start; bytes that looked like the start of
     * one but were not are data after all. */
    while (before < 3 && r->bom_seen == before && n) {
        if ((unsigned char)*data != bom[before]) {
            loom_err e = run(r, (const char *)bom, r->bom_seen, err);
            r->bom_seen = 0xff;
            if (e)
                return e;
            break;
        }
        r->bom_seen++;
        before++;
        data++;
        n--;
    }
    return run(r, data, n, err);
}

loom_err loom_csv_finish(struct loom_csv_reader *r, struct loom_error *err)
{
    if (r->failed)
        return loom_error_set(err, LOOM_EINVAL, "the reader already failed");
    if (r->bom_seen > 0 && r->bom_seen < 3) {
        /* The input was a lone prefix of a byte-order mark: data. */
        uint8_t k = r->bom_seen;
        r->bom_seen = 0xff;
        loom_err e = run(r, (const char *)bom, k, err);
        if (e)
            return e;
    }
    if (r->state == S_QUOTED)
        return loom_csv_fail(r, err, LOOM_EPARSE, r->quote_line, r->quote_column,
                             "unterminated quoted field");
    /* A record is pending unless nothing of one was read (a CR alone ends a blank line). */
    if (r->state != S_RECORD_START && r->nfields) {
        loom_err e = emit(r, err);
        if (e)
            return e;
    }
    r->state = S_RECORD_START;
    return LOOM_OK;
}

bool loom_csv_number(struct loom_str field, double *out)
{
    char tmp[128];
    if (field.len == 0 || field.len >= sizeof(tmp))
        return false;
    bool digit = false;
    for (size_t i = 0; i < field.len; i++) {
        char c = field.ptr[i];
        if (c >= '0' && c <= '9')
            digit = true;
        else if (c != '.' && c != 'e' && c != 'E' && c != '+' && c != '-')
            return false;
    }
    if (!digit || field.ptr[0] == 'e' || field.ptr[0] == 'E')
        return false;
    memcpy(tmp, field.ptr, field.len);
    tmp[field.len] = '\0';
    char *end;
    errno = 0;
    double v = strtod(tmp, &end);
    if (end != tmp + field.len || !isfinite(v))
        return false;
    *out = v;
    return true;
}
