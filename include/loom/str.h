/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Strings: slices (pointer + length, borrowed from an input buffer, never NUL-terminated by
 * contract) and growable buffers with a ceiling (curl's dynbuf rule: every buffer that grows on
 * input has a maximum, and hitting it is an error the caller turns into 413 or 431). Strict
 * number, duration and size parsers for configuration and protocol fields live here too.
 */
#ifndef LOOM_STR_H
#define LOOM_STR_H

#include <loom/err.h>

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* A borrowed slice. `ptr` may be NULL when `len` is 0. */
struct loom_str {
    const char *ptr;
    size_t len;
};

#define LOOM_STR(lit) ((struct loom_str){ "" lit, sizeof(lit) - 1 })
#define LOOM_STR_NULL ((struct loom_str){ NULL, 0 })
/* printf("%.*s", LOOM_STR_FMT(s)) */
#define LOOM_STR_FMT(s) (int)(s).len, (s).ptr

static inline struct loom_str loom_str_make(const char *p, size_t n)
{
    return (struct loom_str){ p, n };
}

static inline struct loom_str loom_str_cstr(const char *s)
{
    return (struct loom_str){ s, s ? strlen(s) : 0 };
}

static inline bool loom_str_eq(struct loom_str a, struct loom_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static inline bool loom_str_eq_cstr(struct loom_str a, const char *b)
{
    return loom_str_eq(a, loom_str_cstr(b));
}

/* ASCII case-insensitive equality, for header names and tokens. */
bool loom_str_ieq(struct loom_str a, struct loom_str b);
bool loom_str_has_prefix(struct loom_str s, struct loom_str prefix);
bool loom_str_has_suffix(struct loom_str s, struct loom_str suffix);
/* Offset of the first `c` in s, or -1. */
ptrdiff_t loom_str_index(struct loom_str s, char c);
/* s without leading and trailing spaces and tabs. */
struct loom_str loom_str_trim(struct loom_str s);
/* Split at the first `sep`: head is before it, the return value is after it (LOOM_STR_NULL and
 * head = s when there is no sep). */
struct loom_str loom_str_cut(struct loom_str s, char sep, struct loom_str *head);
/* A NUL-terminated copy (caller frees). */
char *loom_str_dup(struct loom_str s);

/*
 * Strict parsers: the whole slice must be the value (no spaces, no trailing bytes), with
 * overflow detected. They return LOOM_EINVAL (not a number) or LOOM_ETOOBIG (out of range) and
 * write *out only on success.
 */
loom_err loom_str_to_i64(struct loom_str s, int64_t *out);
loom_err loom_str_to_u64(struct loom_str s, uint64_t *out);
loom_err loom_str_to_double(struct loom_str s, double *out);
/* "true"/"false"/"1"/"0"/"yes"/"no"/"on"/"off". */
loom_err loom_str_to_bool(struct loom_str s, bool *out);
/* "250ms", "5s", "2m", "1h", "100us", "10ns", or a bare number of milliseconds. */
loom_err loom_str_to_duration_ns(struct loom_str s, uint64_t *out);
/* "512", "32KiB", "1MiB", "2GiB", "10kB", "1MB" (decimal SI and binary IEC suffixes). */
loom_err loom_str_to_size(struct loom_str s, uint64_t *out);

/* A growable byte buffer with a ceiling. `data` is NUL-terminated whenever cap > 0. */
struct loom_buf {
    char *data;
    size_t len;
    size_t cap;
    size_t max; /* the ceiling on len */
};

#define LOOM_BUF_MAX_DEFAULT ((size_t)64 << 20)

/* An empty buffer that may grow to `max` bytes (0: LOOM_BUF_MAX_DEFAULT). No allocation yet. */
void loom_buf_init(struct loom_buf *b, size_t max);
/* Free the memory; the buffer is empty and may be reused. */
void loom_buf_release(struct loom_buf *b);
/* Forget the contents, keep the memory. */
static inline void loom_buf_reset(struct loom_buf *b)
{
    b->len = 0;
    if (b->cap)
        b->data[0] = '\0';
}

/* Make room for `n` more bytes: LOOM_ETOOBIG if len + n would pass the ceiling. */
loom_err loom_buf_reserve(struct loom_buf *b, size_t n);
loom_err loom_buf_append(struct loom_buf *b, const void *p, size_t n);
static inline loom_err loom_buf_append_str(struct loom_buf *b, struct loom_str s)
{
    return loom_buf_append(b, s.ptr, s.len);
}
static inline loom_err loom_buf_append_cstr(struct loom_buf *b, const char *s)
{
    return loom_buf_append(b, s, strlen(s));
}
loom_err loom_buf_putc(struct loom_buf *b, char c);
loom_err loom_buf_printf(struct loom_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
loom_err loom_buf_vprintf(struct loom_buf *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
/* Append the decimal form of an integer (faster than printf on hot paths). */
loom_err loom_buf_append_u64(struct loom_buf *b, uint64_t v);
loom_err loom_buf_append_i64(struct loom_buf *b, int64_t v);
/* Drop the first `n` bytes (n <= len). */
void loom_buf_consume(struct loom_buf *b, size_t n);
/* Take the memory (caller frees, NUL-terminated, never NULL); the buffer is left empty. */
char *loom_buf_detach(struct loom_buf *b, size_t *len);

static inline struct loom_str loom_buf_str(const struct loom_buf *b)
{
    return (struct loom_str){ b->data, b->len };
}

/* Write the decimal form of v into out (at least 20 bytes); returns the length, no NUL. */
size_t loom_u64_to_dec(uint64_t v, char *out);

#define LOOM_FMT_DOUBLE_MAX 32

/*
 * The shortest text that reads back as the same double (or float): whole numbers below 2^53
 * (2^24) as plain integers, others with the fewest %g digits that round-trip. NUL-terminated;
 * returns the length. Non-finite values print as "NaN", "+Inf", "-Inf" (Prometheus' spelling);
 * callers writing JSON must check isfinite first. Assumes the "C" locale, as all of loom does.
 */
size_t loom_fmt_double(double v, char out[LOOM_FMT_DOUBLE_MAX]);
size_t loom_fmt_float(float v, char out[LOOM_FMT_DOUBLE_MAX]);

#endif
