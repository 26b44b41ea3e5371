/* SPDX-License-Identifier: Apache-2.0 */
/*
 * JSON-lines logger. Each thread owns a line buffer and a message buffer, allocated on its first
 * line and freed by a thread-exit destructor, so the steady state allocates nothing and shares
 * nothing but the level and the fd (both atomics read relaxed). The line is capped at
 * LOOM_LOG_LINE_MAX: space for the trace ids and for the closing `"truncated":true}` is held
 * back while the message and the fields are written, so a cut line is still one valid object.
 * Not async-signal-safe: do not log from a signal handler.
 */
#include <loom/log.h>

#include <loom/core.h>
#include <loom/json.h>
#include <loom/mem.h>
#include <loom/trace.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

atomic_int loom__log_min_level = LOOM_LOG_INFO;
static atomic_int log_fd = 2;
static _Thread_local const char *thread_svc;

static const char *const level_names[] = { "debug", "info", "warn", "error" };

void loom_log_set_level(enum loom_log_level level)
{
    atomic_store_explicit(&loom__log_min_level, (int)level, memory_order_relaxed);
}

const char *loom_log_level_name(enum loom_log_level level)
{
    return (unsigned)level < LOOM_LOG_ERROR + 1u ? level_names[level] : "?";
}

loom_err loom_log_parse_level(struct loom_str s, enum loom_log_level *out)
{
    for (int i = LOOM_LOG_DEBUG; i <= LOOM_LOG_ERROR; i++) {
        if (loom_str_ieq(s, loom_str_cstr(level_names[i]))) {
            *out = (enum loom_log_level)i;
            return LOOM_OK;
        }
    }
    if (loom_str_ieq(s, LOOM_STR("warning"))) {
        *out = LOOM_LOG_WARN;
        return LOOM_OK;
    }
    return LOOM_EINVAL;
}

void loom_log_set_service(const char *svc)
{
    thread_svc = svc;
}

const char *loom_log_service(void)
{
    return thread_svc ? thread_svc : "loom";
}

void loom_log_set_fd(int fd)
{
    atomic_store_explicit(&log_fd, fd, memory_order_relaxed);
}

/* Per-thread buffers. */

struct log_tls {
    struct loom_buf line;
    char msg[LOOM_LOG_LINE_MAX];
};

static _Thread_local struct log_tls *tls;
static pthread_key_t tls_key;
static bool tls_key_ok;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

/* Runs at thread exit; a line logged by a later destructor simply allocates again. */
static void tls_free(void *p)
{
    struct log_tls *t = p;
    loom_buf_release(&t->line);
    free(t);
    tls = NULL;
}

static void tls_key_create(void)
{
    tls_key_ok = pthread_key_create(&tls_key, tls_free) == 0;
}

static struct log_tls *tls_get(void)
{
    if (LOOM_LIKELY(tls != NULL))
        return tls;
    pthread_once(&tls_once, tls_key_create);
    struct log_tls *t = loom_malloc(sizeof(*t));
    loom_buf_init(&t->line, LOOM_LOG_LINE_MAX);
    if (tls_key_ok)
        pthread_setspecific(tls_key, t);
    tls = t;
    return t;
}

/* Line building. */

/* Bytes held back at the end for `,"truncated":true` and `}\n`. */
#define TAIL_RESERVE (sizeof(",\"truncated\":true}\n") - 1)
/* Bytes the trace ids take at most: `,"trace_id":"<32>","span_id":"<16>"`. */
#define IDS_RESERVE  (sizeof(",\"trace_id\":\"\",\"span_id\":\"\"") - 1 + 32 + 16)
#define FIELDS_LIMIT (LOOM_LOG_LINE_MAX - TAIL_RESERVE)
#define MSG_LIMIT    (FIELDS_LIMIT - IDS_RESERVE)
/* Most bytes the svc value takes, quotes included. */
#define SVC_MAX 256

static void buf_truncate(struct loom_buf *b, size_t len)
{
    b->len = len;
    b->data[len] = '\0';
}

/* Back k up to the start of the UTF-8 character it falls in, so a cut never splits one. */
static size_t utf8_floor(const char *s, size_t n, size_t k)
{
    size_t min = k > 3 ? k - 3 : 0;
    while (k < n && k > min && ((unsigned char)s[k] & 0xc0) == 0x80)
        k--;
    return k;
}

/*
 * Append s as a JSON string without letting the buffer pass `limit` bytes: if the whole string
 * does not fit, the longest prefix (at a character boundary) that does is written instead and
 * true is returned. The caller guarantees room for at least "" (b->len + 2 <= limit).
 */
static bool put_str(struct loom_buf *b, const char *s, size_t n, size_t limit)
{
    size_t mark = b->len, saved_max = b->max;
    bool cut = false;
    b->max = limit;
    if (loom_json_escape(b, s, n) != LOOM_OK) {
        cut = true;
        /* Escaping never shortens, so no prefix longer than the room can fit. */
        size_t lo = 0, hi = LOOM_MIN(n, limit - mark - 2);
        while (lo < hi) {
            size_t mid = lo + (hi - lo + 1) / 2;
            buf_truncate(b, mark);
            if (loom_json_escape(b, s, utf8_floor(s, n, mid)) == LOOM_OK)
                lo = mid;
            else
                hi = mid - 1;
        }
        buf_truncate(b, mark);
        loom_json_escape(b, s, utf8_floor(s, n, lo));
    }
    b->max = saved_max;
    return cut;
}

/* Append a field's value as JSON; false if it did not fit whole. */
static bool put_value(struct loom_buf *b, const struct loom_kv *kv, size_t limit, bool *cut)
{
    char tmp[32];
    size_t n;
    switch (kv->type) {
    case LOOM_KV_TYPE_STR:
    case LOOM_KV_TYPE_CSTR: {
        struct loom_str s = kv->type == LOOM_KV_TYPE_STR ? kv->v.str : loom_str_cstr(kv->v.cstr);
        if (kv->type == LOOM_KV_TYPE_CSTR && !kv->v.cstr) {
            memcpy(tmp, "null", 4);
            n = 4;
            break;
        }
        if (b->len + 2 > limit)
            return false;
        *cut = put_str(b, s.ptr ? s.ptr : "", s.len, limit);
        return true;
    }
    case LOOM_KV_TYPE_INT:
        if (kv->v.i < 0) {
            tmp[0] = '-';
            n = 1 + loom_u64_to_dec(-(uint64_t)kv->v.i, tmp + 1);
        } else {
            n = loom_u64_to_dec((uint64_t)kv->v.i, tmp);
        }
        break;
    case LOOM_KV_TYPE_UINT:
        n = loom_u64_to_dec(kv->v.u, tmp);
        break;
    case LOOM_KV_TYPE_DBL:
        if (isfinite(kv->v.d)) {
            n = loom_fmt_double(kv->v.d, tmp);
        } else {
            memcpy(tmp, "null", 4);
            n = 4;
        }
        break;
    case LOOM_KV_TYPE_BOOL:
        n = kv->v.b ? 4 : 5;
        memcpy(tmp, kv->v.b ? "true" : "false", n);
        break;
    default:
        memcpy(tmp, "null", 4);
        n = 4;
    }
    if (b->len + n > limit)
        return false;
    loom_buf_append(b, tmp, n);
    return true;
}

static void put_lit(struct loom_buf *b, const char *lit)
{
    loom_buf_append(b, lit, strlen(lit));
}

/* One write(2) for the whole line; a failed write is dropped: there is nowhere to report it. */
static void write_line(const char *p, size_t n)
{
    int fd = atomic_load_explicit(&log_fd, memory_order_relaxed);
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        /* Only a signal or a full non-blocking pipe splits a line; finish it rather than
         * leave half a line for the next one to join. */
        p += w;
        n -= (size_t)w;
    }
}

static void emit(struct log_tls *t, enum loom_log_level level, const char *msg, size_t msg_len,
                 bool cut, const struct loom_kv *kv, size_t nkv)
{
    struct loom_buf *b = &t->line;
    char ts[32];
    loom_buf_reset(b);
    /* Everything up to the message is short and fixed but for svc, which is capped well
     * below the line so that the message keeps its room. */
    put_lit(b, "{\"ts\":\"");
    loom_buf_append(b, ts, loom_time_rfc3339(loom_wall_ns(), ts));
    put_lit(b, "\",\"level\":\"");
    put_lit(b, loom_log_level_name(level));
    put_lit(b, "\",\"svc\":");
    const char *svc = loom_log_service();
    cut |= put_str(b, svc, strlen(svc), b->len + SVC_MAX);
    put_lit(b, ",\"msg\":");
    cut |= put_str(b, msg, msg_len, MSG_LIMIT);

    const struct loom_trace_ctx *tc = loom_trace_current();
    put_lit(b, ",\"trace_id\":\"");
    if (tc)
        loom_buf_append(b, tc->trace_hex, 32);
    put_lit(b, "\",\"span_id\":\"");
    if (tc)
        loom_buf_append(b, tc->span_hex, 16);
    loom_buf_putc(b, '"');

    for (size_t i = 0; i < nkv && !cut; i++) {
        size_t mark = b->len;
        const char *key = kv[i].key ? kv[i].key : "";
        bool ok = b->len + sizeof(",\"\":") - 1 <= FIELDS_LIMIT;
        if (ok) {
            loom_buf_putc(b, ',');
            ok = !put_str(b, key, strlen(key), FIELDS_LIMIT - 1);
        }
        if (ok) {
            loom_buf_putc(b, ':');
            ok = put_value(b, &kv[i], FIELDS_LIMIT, &cut);
        }
        if (!ok) {
            /* A field that does not fit goes whole, and so do the ones after it. */
            buf_truncate(b, mark);
            cut = true;
        }
    }
    if (cut)
        put_lit(b, ",\"truncated\":true");
    put_lit(b, "}\n");
    write_line(b->data, b->len);
}

void loom_logv(enum loom_log_level level, const char *fmt, va_list ap)
{
    if (!loom_log_level_enabled(level))
        return;
    int saved_errno = errno;
    struct log_tls *t = tls_get();
    int n = vsnprintf(t->msg, sizeof(t->msg), fmt, ap);
    bool cut = n >= (int)sizeof(t->msg);
    size_t len = n < 0 ? 0 : cut ? sizeof(t->msg) - 1 : (size_t)n;
    emit(t, level, t->msg, len, cut, NULL, 0);
    errno = saved_errno;
}

void loom_log(enum loom_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    loom_logv(level, fmt, ap);
    va_end(ap);
}

void loom_log_kv(enum loom_log_level level, const char *msg, const struct loom_kv *kv, size_t n)
{
    if (!loom_log_level_enabled(level))
        return;
    int saved_errno = errno;
    if (!msg)
        msg = "";
    emit(tls_get(), level, msg, strlen(msg), false, kv, n);
    errno = saved_errno;
}
