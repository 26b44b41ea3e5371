/* SPDX-License-Identifier: Apache-2.0 */
/*
 * CSV: a strict RFC 4180 reader that is fed bytes as they arrive (a dataset is hashed, written
 * and parsed in one pass while it uploads) and hands each complete record to a callback. Fields
 * are separated by ',' and records by CRLF or LF; a field may be quoted with '"', and then holds
 * commas, line breaks and doubled quotes ("" is one quote). Outside quotes a quote, a bare CR
 * or a NUL byte is an error, as is anything but ',' or a line break after a closing quote.
 * Lines with no bytes at all are skipped (as pandas does), a UTF-8 byte-order mark at the very
 * start is dropped, and a last record without a line break is still a record. Every input is
 * capped (fields per record, bytes per field and per record, records, total bytes), and every
 * error says where: "line 7, column 12: unterminated quoted field".
 */
#ifndef LOOM_CSV_H
#define LOOM_CSV_H

#include <loom/core.h>

#include <stdbool.h>
#include <stdint.h>

/* Ceilings for one input; a zero field means its default. Hitting one is LOOM_ETOOBIG. */
struct loom_csv_limits {
    size_t max_fields;       /* fields in one record; default 4096 */
    size_t max_field_bytes;  /* bytes of one field after unquoting; default 1 MiB */
    size_t max_record_bytes; /* bytes of one record's fields together; default 4 MiB */
    uint64_t max_records;    /* records, a header included; default 2^32 */
    uint64_t max_bytes;      /* bytes of input; default 1 GiB */
};

#define LOOM_CSV_MAX_FIELDS_DEFAULT       4096u
#define LOOM_CSV_MAX_FIELD_BYTES_DEFAULT  ((size_t)1 << 20)
#define LOOM_CSV_MAX_RECORD_BYTES_DEFAULT ((size_t)4 << 20)
#define LOOM_CSV_MAX_RECORDS_DEFAULT      ((uint64_t)1 << 32)
#define LOOM_CSV_MAX_BYTES_DEFAULT        ((uint64_t)1 << 30)

/*
 * One record, valid during the callback only. fields[i] is the unquoted text of field i (not
 * NUL-terminated; it may hold any byte but NUL, line breaks included), borrowed from the
 * reader. columns[i] is the 1-based byte column where field i starts on its line.
 */
struct loom_csv_record {
    const struct loom_str *fields;
    const uint64_t *columns;
    size_t nfields;
    uint64_t index; /* 0 for the first record (the header, when there is one) */
    uint64_t line;  /* 1-based line where the record starts */
};

struct loom_csv_reader;

/* Called for each record. A non-OK return stops the reader: loom_csv_feed/finish return it,
 * with `err` as the callback left it (use loom_csv_fail to say where). */
typedef loom_err (*loom_csv_record_fn)(struct loom_csv_reader *r, const struct loom_csv_record *rec,
                                       void *arg, struct loom_error *err);

/* The reader; its fields are private but for err_line and err_column, which hold the position
 * of the first error (0 before any). */
struct loom_csv_reader {
    struct loom_csv_limits limits;
    loom_csv_record_fn fn;
    void *arg;
    int state;
    bool failed;
    uint64_t bytes;                    /* input consumed */
    uint64_t records;                  /* records delivered */
    uint64_t line;                     /* current line (1-based) */
    uint64_t column;                   /* column of the next byte (1-based) */
    uint64_t rec_line;                 /* where the current record started */
    uint64_t quote_line, quote_column; /* where the open quote was */
    struct loom_buf text;              /* the current record's unquoted bytes */
    size_t *starts;                    /* per field: offset into text */
    uint64_t *columns;                 /* per field: start column */
    struct loom_str *slices;           /* built for the callback */
    size_t nfields, cap_fields;
    size_t field_start; /* offset in text where the current field starts */
    uint8_t bom_seen;   /* bytes of a leading byte-order mark matched so far */
    uint64_t err_line, err_column;
};

/* Start reading. `limits` may be NULL for the defaults; `fn` gets each record with `arg`. */
void loom_csv_reader_init(struct loom_csv_reader *r, const struct loom_csv_limits *limits,
                          loom_csv_record_fn fn, void *arg);

/* Free the reader's memory. */
void loom_csv_reader_release(struct loom_csv_reader *r);

/*
 * Feed the next `n` bytes (any split: a chunk may end inside a field, a quote or a CRLF).
 * Complete records go to the callback before this returns. Returns LOOM_EPARSE for malformed
 * input, LOOM_ETOOBIG when a limit is hit, or the callback's error; `err` then says what and
 * where ("line 3, column 9: ...") and err_line/err_column hold the position. After an error
 * every later call returns LOOM_EINVAL.
 */
loom_err loom_csv_feed(struct loom_csv_reader *r, const char *data, size_t n,
                       struct loom_error *err);

/* The input is complete: deliver a last record without a line break, or fail with
 * LOOM_EPARSE for an unterminated quoted field. */
loom_err loom_csv_finish(struct loom_csv_reader *r, struct loom_error *err);

/* For callbacks: record an error at (line, column) with a message prefixed "line L, column C: "
 * and return `code`. */
loom_err loom_csv_fail(struct loom_csv_reader *r, struct loom_error *err, loom_err code,
                       uint64_t line, uint64_t column, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* Records delivered so far. */
static inline uint64_t loom_csv_records(const struct loom_csv_reader *r)
{
    return r->records;
}

/*
 * Parse a whole field as a number the way datasets do: a decimal or exponent form strtod
 * accepts ("12", "-0.5", "1e-3"; leading '+' allowed), finite, with no spaces, no hex and no
 * "nan"/"inf". Returns false (and leaves *out) for anything else.
 */
bool loom_csv_number(struct loom_str field, double *out);

#endif
