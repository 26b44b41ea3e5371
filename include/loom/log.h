/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Logging: one JSON object per line on stderr, for people and for log shippers alike. Every
 * line has the keys ts, level, svc, msg, trace_id and span_id in that order, then the caller's
 * fields: {"ts":"2026-11-24T19:10:00.123456Z","level":"info","svc":"gateway","msg":"listening",
 * "trace_id":"","span_id":"","port":8080}. The service name is per thread (each service's loop
 * threads set theirs) and the ids come from the thread's current trace context (loom/trace.h),
 * so a request's lines can be joined with its trace. A line is built in a per-thread buffer and
 * written with one write(2), so lines of concurrent threads never interleave; nothing on the way
 * takes a lock, and a disabled level costs one comparison. Never log request bodies, secrets or
 * feature values.
 */
#ifndef LOOM_LOG_H
#define LOOM_LOG_H

#include <loom/str.h>

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

enum loom_log_level {
    LOOM_LOG_DEBUG = 0,
    LOOM_LOG_INFO = 1,
    LOOM_LOG_WARN = 2,
    LOOM_LOG_ERROR = 3,
};

/*
 * Longest line written, '\n' included. A longer message or field list is truncated (cut at a
 * UTF-8 character boundary, fields that do not fit dropped) and the line gets "truncated":true
 * as its last field; it stays valid JSON.
 */
#define LOOM_LOG_LINE_MAX 16384

/* Internal: the lowest enabled level. Read it through loom_log_level_enabled(). */
extern atomic_int loom__log_min_level;

/* Whether lines of `level` are written (default: info and above). Cheap: one relaxed load. */
static inline bool loom_log_level_enabled(enum loom_log_level level)
{
    return (int)level >= atomic_load_explicit(&loom__log_min_level, memory_order_relaxed);
}

/* Write lines of `level` and above only. Any thread, any time. */
void loom_log_set_level(enum loom_log_level level);

/* "debug", "info", "warn", "error" (never NULL; "?" for a value outside the enum). */
const char *loom_log_level_name(enum loom_log_level level);

/*
 * Parse a level name, ASCII case-insensitive: debug, info, warn, warning, error. Returns LOOM_OK
 * or LOOM_EINVAL; *out is written only on success.
 */
loom_err loom_log_parse_level(struct loom_str s, enum loom_log_level *out);

/*
 * The svc of lines written by the calling thread (default "loom"). Borrowed: the string must
 * outlive the thread's logging (service names are static). NULL restores the default.
 */
void loom_log_set_service(const char *svc);
const char *loom_log_service(void);

/* Write lines to `fd` instead of 2 (tests use a pipe or a file). The fd is borrowed. */
void loom_log_set_fd(int fd);

enum loom_kv_type {
    LOOM_KV_TYPE_STR,  /* struct loom_str */
    LOOM_KV_TYPE_CSTR, /* const char *, NULL written as null */
    LOOM_KV_TYPE_INT,
    LOOM_KV_TYPE_UINT,
    LOOM_KV_TYPE_DBL, /* NaN and infinities written as null */
    LOOM_KV_TYPE_BOOL,
};

/* One structured field. Key and string values are borrowed for the duration of the call. */
struct loom_kv {
    const char *key;
    enum loom_kv_type type;
    union {
        struct loom_str str;
        const char *cstr;
        int64_t i;
        uint64_t u;
        double d;
        bool b;
    } v;
};

#define LOOM_KV_STR(k, s) ((struct loom_kv){ .key = (k), .type = LOOM_KV_TYPE_STR, .v.str = (s) })
#define LOOM_KV_CSTR(k, s) \
    ((struct loom_kv){ .key = (k), .type = LOOM_KV_TYPE_CSTR, .v.cstr = (s) })
#define LOOM_KV_INT(k, x) \
    ((struct loom_kv){ .key = (k), .type = LOOM_KV_TYPE_INT, .v.i = (int64_t)(x) })
#define LOOM_KV_UINT(k, x) \
    ((struct loom_kv){ .key = (k), .type = LOOM_KV_TYPE_UINT, .v.u = (uint64_t)(x) })
#define LOOM_KV_DBL(k, x) \
    ((struct loom_kv){ .key = (k), .type = LOOM_KV_TYPE_DBL, .v.d = (double)(x) })
#define LOOM_KV_BOOL(k, x) \
    ((struct loom_kv){ .key = (k), .type = LOOM_KV_TYPE_BOOL, .v.b = (bool)(x) })

/*
 * Write one line with a printf-style message and no fields, if `level` is enabled. A message
 * longer than the line is truncated. Failed writes are dropped silently (a logger has nowhere
 * to report them). Any thread; no locks.
 */
void loom_log(enum loom_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void loom_logv(enum loom_log_level level, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

/*
 * Write one line with a fixed message and `n` fields (kv may be NULL when n is 0), if `level`
 * is enabled. Keys should be unique and differ from the six standard keys.
 */
void loom_log_kv(enum loom_log_level level, const char *msg, const struct loom_kv *kv, size_t n);

/*
 * LOOM_LOG_KV(LOOM_LOG_INFO, "request", LOOM_KV_STR("path", path), LOOM_KV_INT("status", 200)):
 * builds the field array in place (at least one field) and writes nothing, evaluating none of
 * the fields, when the level is disabled.
 */
#define LOOM_LOG_KV(level, msg, ...)                                                               \
    do {                                                                                           \
        if (loom_log_level_enabled(level))                                                         \
            loom_log_kv((level), (msg), (const struct loom_kv[]){ __VA_ARGS__ },                   \
                        sizeof((const struct loom_kv[]){ __VA_ARGS__ }) / sizeof(struct loom_kv)); \
    } while (0)

/* printf-style shortcuts; the arguments are not evaluated when the level is disabled. */
#define loom_log_debug(...)                         \
    do {                                            \
        if (loom_log_level_enabled(LOOM_LOG_DEBUG)) \
            loom_log(LOOM_LOG_DEBUG, __VA_ARGS__);  \
    } while (0)
#define loom_log_info(...)                         \
    do {                                           \
        if (loom_log_level_enabled(LOOM_LOG_INFO)) \
            loom_log(LOOM_LOG_INFO, __VA_ARGS__);  \
    } while (0)
#define loom_log_warn(...)                         \
    do {                                           \
        if (loom_log_level_enabled(LOOM_LOG_WARN)) \
            loom_log(LOOM_LOG_WARN, __VA_ARGS__);  \
    } while (0)
#define loom_log_error(...)                         \
    do {                                            \
        if (loom_log_level_enabled(LOOM_LOG_ERROR)) \
            loom_log(LOOM_LOG_ERROR, __VA_ARGS__);  \
    } while (0)

#endif
