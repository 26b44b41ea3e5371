/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests for the log module: the exact line format and key order, every field type, trace
 * ids from the current context, per-thread service names, level filtering (and that disabled
 * macros evaluate nothing), truncation of long messages and fields into still-valid JSON, and
 * whole lines from concurrent threads. Lines go to a temporary file; a small strict validator
 * for flat JSON objects checks every line written.
 */
#include "check.h"

#include <loom/core.h>
#include <loom/log.h>
#include <loom/trace.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

static int out_fd = -1;
static char out[1 << 24];

static void capture_reset(void)
{
    CHECK_INT(ftruncate(out_fd, 0), 0);
}

/* Everything written since the last reset, NUL-terminated, in `out`; returns its length. */
static size_t capture(void)
{
    ssize_t n = pread(out_fd, out, sizeof(out) - 1, 0);
    if (n < 0)
        n = 0;
    out[n] = '\0';
    return (size_t)n;
}

/* A strict validator for the flat objects the logger writes. */

struct jv {
    const char *p, *end;
    char keys[16][32]; /* the first keys, for order checks */
    int nkeys;
};

static bool jv_string(struct jv *v, char *key, size_t keysz)
{
    size_t k = 0;
    if (v->p >= v->end || *v->p != '"')
        return false;
    v->p++;
    while (v->p < v->end && *v->p != '"') {
        unsigned char c = (unsigned char)*v->p;
        if (c < 0x20)
            return false;
        if (c == '\\') {
            v->p++;
            if (v->p >= v->end || !strchr("\"\\/bfnrtu", *v->p))
                return false;
            if (*v->p == 'u') {
                for (int i = 1; i <= 4; i++)
                    if (v->p + i >= v->end || !strchr("0123456789abcdefABCDEF", v->p[i]))
                        return false;
                v->p += 4;
            }
        } else if (c >= 0x80) {
            /* Well-formed UTF-8 sequence (the escaper guarantees no invalid bytes pass). */
            int len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;
            if (!len || v->end - v->p < len)
                return false;
            for (int i = 1; i < len; i++)
                if (((unsigned char)v->p[i] & 0xc0) != 0x80)
                    return false;
            v->p += len - 1;
        }
        if (key && k + 1 < keysz)
            key[k++] = (char)c;
        v->p++;
    }
    if (key)
        key[k] = '\0';
    if (v->p >= v->end)
        return false;
    v->p++;
    return true;
}

static bool jv_lit(struct jv *v, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(v->end - v->p) < n || memcmp(v->p, lit, n) != 0)
        return false;
    v->p += n;
    return true;
}

static bool jv_number(struct jv *v)
{
    const char *s = v->p;
    if (v->p < v->end && *v->p == '-')
        v->p++;
    if (v->p >= v->end || *v->p < '0' || *v->p > '9')
        return false;
    if (*v->p == '0')
        v->p++;
    else
        while (v->p < v->end && *v->p >= '0' && *v->p <= '9')
            v->p++;
    if (v->p < v->end && *v->p == '.') {
        v->p++;
        if (v->p >= v->end || *v->p < '0' || *v->p > '9')
            return false;
        while (v->p < v->end && *v->p >= '0' && *v->p <= '9')
            v->p++;
    }
    if (v->p < v->end && (*v->p == 'e' || *v->p == 'E')) {
        v->p++;
        if (v->p < v->end && (*v->p == '+' || *v->p == '-'))
            v->p++;
        if (v->p >= v->end || *v->p < '0' || *v->p > '9')
            return false;
        while (v->p < v->end && *v->p >= '0' && *v->p <= '9')
            v->p++;
    }
    return v->p > s;
}

/* One line: a flat JSON object and a final '\n', nothing else. */
static bool json_line_ok(const char *line, size_t n, struct jv *v)
{
    memset(v, 0, sizeof(*v));
    v->p = line;
    v->end = line + n;
    if (n < 2 || line[n - 1] != '\n' || memchr(line, '\n', n - 1))
        return false;
    v->end--;
    if (!jv_lit(v, "{"))
        return false;
    for (bool first = true;; first = false) {
        if (jv_lit(v, "}"))
            return v->p == v->end && !first;
        if (!first && !jv_lit(v, ","))
            return false;
        char key[32];
        if (!jv_string(v, key, sizeof(key)) || !jv_lit(v, ":"))
            return false;
        if (v->nkeys < 16)
            memcpy(v->keys[v->nkeys++], key, sizeof(key));
        if (v->p < v->end && *v->p == '"') {
            if (!jv_string(v, NULL, 0))
                return false;
        } else if (!jv_lit(v, "true") && !jv_lit(v, "false") && !jv_lit(v, "null") &&
                   !jv_number(v)) {
            return false;
        }
    }
}

/* Check every line in `out` and return how many there are (-1 if one is not valid). */
static int check_lines(const char *s, size_t n)
{
    int count = 0;
    const char *end = s + n;
    while (s < end) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        if (!nl)
            return -1;
        struct jv v;
        if (!json_line_ok(s, (size_t)(nl - s + 1), &v)) {
            fprintf(stderr, "invalid line: %.*s\n", (int)(nl - s < 300 ? nl - s : 300), s);
            return -1;
        }
        static const char *const std_keys[] = {
            "ts", "level", "svc", "msg", "trace_id", "span_id"
        };
        for (int i = 0; i < 6; i++)
            if (i >= v.nkeys || strcmp(v.keys[i], std_keys[i]) != 0)
                return -1;
        count++;
        s = nl + 1;
    }
    return count;
}

#define CHECK_PREFIX(s, prefix)                                                     \
    do {                                                                            \
        const char *s_ = (s), *p_ = (prefix);                                       \
        CHECK(strncmp(s_, p_, strlen(p_)) == 0);                                    \
        if (strncmp(s_, p_, strlen(p_)) != 0)                                       \
            fprintf(stderr, "  got:  %.*s\n  want: %s\n", (int)strlen(p_), s_, p_); \
    } while (0)

/* The line after its timestamp, after checking the timestamp's shape. */
static const char *after_ts(const char *line)
{
    static const char prefix[] = "{\"ts\":\"";
    if (strncmp(line, prefix, sizeof(prefix) - 1) != 0)
        return "(no ts)";
    const char *ts = line + sizeof(prefix) - 1;
    /* 2026-11-24T19:10:00.123456Z */
    bool ok = strlen(ts) > 28 && ts[4] == '-' && ts[7] == '-' && ts[10] == 'T' && ts[13] == ':' &&
              ts[16] == ':' && ts[19] == '.' && ts[26] == 'Z' && ts[27] == '"';
    return ok ? ts + 27 : "(bad ts)";
}

static void test_line_format(void)
{
    capture_reset();
    loom_log_set_service("test");
    loom_log(LOOM_LOG_INFO, "hello %d %s", 42, "world");
    loom_log_kv(LOOM_LOG_WARN, "fixed", NULL, 0);
    capture();
    CHECK_INT(check_lines(out, strlen(out)), 2);
    CHECK_PREFIX(after_ts(out), "\",\"level\":\"info\",\"svc\":\"test\",\"msg\":\"hello 42 world\","
                                "\"trace_id\":\"\",\"span_id\":\"\"}\n"
                                "{\"ts\":\"2");
    const char *second = strchr(out, '\n') + 1;
    CHECK_STR(after_ts(second), "\",\"level\":\"warn\",\"svc\":\"test\",\"msg\":\"fixed\","
                                "\"trace_id\":\"\",\"span_id\":\"\"}\n");
    /* Year 2xxx: the clock is the real one. */
    CHECK(out[7] == '2');
}

static void test_fields(void)
{
    capture_reset();
    struct loom_str slice = loom_str_make("a\"b\nc-not-included", 5);
    LOOM_LOG_KV(LOOM_LOG_ERROR, "fields", LOOM_KV_STR("s", slice), LOOM_KV_CSTR("c", "x\\y"),
                LOOM_KV_CSTR("null", NULL), LOOM_KV_STR("empty", LOOM_STR_NULL),
                LOOM_KV_INT("i", -5), LOOM_KV_INT("imin", INT64_MIN), LOOM_KV_INT("zero", 0),
                LOOM_KV_UINT("u", UINT64_MAX), LOOM_KV_DBL("d", 0.1), LOOM_KV_DBL("big", 1e300),
                LOOM_KV_DBL("tiny", 5e-324), LOOM_KV_DBL("sum", 0.1 + 0.2),
                LOOM_KV_DBL("whole", 100.0), LOOM_KV_DBL("neg", -2.5), LOOM_KV_DBL("nan", NAN),
                LOOM_KV_DBL("inf", -INFINITY), LOOM_KV_BOOL("t", 1), LOOM_KV_BOOL("f", false));
    capture();
    CHECK_INT(check_lines(out, strlen(out)), 1);
    CHECK_STR(after_ts(out),
              "\",\"level\":\"error\",\"svc\":\"test\",\"msg\":\"fields\",\"trace_id\":\"\","
              "\"span_id\":\"\",\"s\":\"a\\\"b\\nc\",\"c\":\"x\\\\y\",\"null\":null,\"empty\":\"\","
              "\"i\":-5,\"imin\":-9223372036854775808,\"zero\":0,\"u\":18446744073709551615,"
              "\"d\":0.1,\"big\":1e+300,\"tiny\":5e-324,\"sum\":0.30000000000000004,"
              "\"whole\":100,\"neg\":-2.5,\"nan\":null,\"inf\":null,\"t\":true,\"f\":false}\n");
}

static void test_escaping(void)
{
    capture_reset();
    loom_log(LOOM_LOG_INFO, "q\"b\\s\x01\t\xff caf\xc3\xa9");
    const struct loom_kv kv[] = { LOOM_KV_CSTR("k\"ey", "v") };
    loom_log_kv(LOOM_LOG_INFO, "", kv, 1);
    capture();
    CHECK_INT(check_lines(out, strlen(out)), 2);
    CHECK_CONTAINS(out, "\"msg\":\"q\\\"b\\\\s\\u0001\\t\\ufffd caf\xc3\xa9\",");
    CHECK_CONTAINS(out, "\"msg\":\"\",");
    CHECK_CONTAINS(out, ",\"k\\\"ey\":\"v\"}");
}

static void test_trace_ids(void)
{
    struct loom_trace_ctx ctx;
    CHECK_INT(
        loom_trace_parse(LOOM_STR("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), &ctx),
        LOOM_OK);
    capture_reset();
    loom_trace_set_current(&ctx);
    LOOM_LOG_KV(LOOM_LOG_INFO, "in request", LOOM_KV_INT("status", 200));
    loom_trace_set_current(NULL);
    loom_log_info("after");
    capture();
    CHECK_INT(check_lines(out, strlen(out)), 2);
    CHECK_CONTAINS(out, "\"msg\":\"in request\",\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\","
                        "\"span_id\":\"00f067aa0ba902b7\",\"status\":200}\n");
    CHECK_CONTAINS(out, "\"msg\":\"after\",\"trace_id\":\"\",\"span_id\":\"\"}\n");
}

static int evaluated;
static int side_effect(void)
{
    return ++evaluated;
}

static void test_levels(void)
{
    CHECK(loom_log_level_enabled(LOOM_LOG_INFO));
    CHECK(!loom_log_level_enabled(LOOM_LOG_DEBUG));
    capture_reset();
    evaluated = 0;
    loom_log_debug("x %d", side_effect());
    LOOM_LOG_KV(LOOM_LOG_DEBUG, "x", LOOM_KV_INT("n", side_effect()));
    loom_log(LOOM_LOG_DEBUG, "direct");
    CHECK_INT(evaluated, 0);
    CHECK_UINT(capture(), 0);

    loom_log_set_level(LOOM_LOG_DEBUG);
    loom_log_debug("x %d", side_effect());
    CHECK_INT(evaluated, 1);
    loom_log_set_level(LOOM_LOG_ERROR);
    loom_log_warn("dropped");
    loom_log_info("dropped");
    loom_log_error("kept");
    loom_log_set_level(LOOM_LOG_INFO);
    capture();
    CHECK_INT(check_lines(out, strlen(out)), 2);
    CHECK_CONTAINS(out, "\"level\":\"debug\",\"svc\":\"test\",\"msg\":\"x 1\"");
    CHECK_CONTAINS(out, "\"level\":\"error\",\"svc\":\"test\",\"msg\":\"kept\"");
    CHECK(strstr(out, "dropped") == NULL);

    enum loom_log_level l = LOOM_LOG_ERROR;
    CHECK_INT(loom_log_parse_level(LOOM_STR("debug"), &l), LOOM_OK);
    CHECK_INT(l, LOOM_LOG_DEBUG);
    CHECK_INT(loom_log_parse_level(LOOM_STR("INFO"), &l), LOOM_OK);
    CHECK_INT(l, LOOM_LOG_INFO);
    CHECK_INT(loom_log_parse_level(LOOM_STR("Warning"), &l), LOOM_OK);
    CHECK_INT(l, LOOM_LOG_WARN);
    CHECK_INT(loom_log_parse_level(LOOM_STR("warn"), &l), LOOM_OK);
    CHECK_INT(l, LOOM_LOG_WARN);
    CHECK_INT(loom_log_parse_level(LOOM_STR("eRRor"), &l), LOOM_OK);
    CHECK_INT(l, LOOM_LOG_ERROR);
    CHECK_INT(loom_log_parse_level(LOOM_STR("fatal"), &l), LOOM_EINVAL);
    CHECK_INT(loom_log_parse_level(LOOM_STR("info "), &l), LOOM_EINVAL);
    CHECK_INT(loom_log_parse_level(LOOM_STR(""), &l), LOOM_EINVAL);
    CHECK_INT(l, LOOM_LOG_ERROR);
    CHECK_STR(loom_log_level_name(LOOM_LOG_WARN), "warn");
    CHECK_STR(loom_log_level_name((enum loom_log_level)9), "?");
}

static void test_truncation(void)
{
    size_t big = 3 * LOOM_LOG_LINE_MAX;
    char *s = malloc(big + 1);

    /* A long printf message. */
    memset(s, 'a', big);
    s[big] = '\0';
    capture_reset();
    loom_log(LOOM_LOG_INFO, "%s", s);
    size_t n = capture();
    CHECK(n <= LOOM_LOG_LINE_MAX);
    CHECK(n > LOOM_LOG_LINE_MAX - 200);
    CHECK_INT(check_lines(out, n), 1);
    CHECK_CONTAINS(out, "aaa\",\"trace_id\":\"\",\"span_id\":\"\",\"truncated\":true}\n");

    /* Cut at a character boundary: no replacement character appears. */
    for (size_t i = 0; i + 2 <= big; i += 2)
        memcpy(s + i, "\xc3\xa9", 2);
    s[big] = '\0';
    capture_reset();
    loom_log_kv(LOOM_LOG_INFO, s, NULL, 0);
    n = capture();
    CHECK(n <= LOOM_LOG_LINE_MAX);
    CHECK_INT(check_lines(out, n), 1);
    CHECK(strstr(out, "\\ufffd") == NULL);
    CHECK_CONTAINS(out, "\xc3\xa9\",\"trace_id\"");

    /* Characters that escape to six bytes each. */
    memset(s, '\x01', big);
    capture_reset();
    loom_log_kv(LOOM_LOG_INFO, s, NULL, 0);
    n = capture();
    CHECK(n <= LOOM_LOG_LINE_MAX);
    CHECK(n > LOOM_LOG_LINE_MAX - 200);
    CHECK_INT(check_lines(out, n), 1);
    CHECK_CONTAINS(out, "\\u0001\",\"trace_id\"");

    /* A long string field is cut; the fields after it are dropped. */
    memset(s, 'b', big);
    capture_reset();
    LOOM_LOG_KV(LOOM_LOG_INFO, "m", LOOM_KV_INT("before", 1),
                LOOM_KV_STR("long", loom_str_make(s, big)), LOOM_KV_INT("after", 2));
    n = capture();
    CHECK(n <= LOOM_LOG_LINE_MAX);
    CHECK(n > LOOM_LOG_LINE_MAX - 200);
    CHECK_INT(check_lines(out, n), 1);
    CHECK_CONTAINS(out, "\"before\":1,\"long\":\"bbb");
    CHECK_CONTAINS(out, "bbb\",\"truncated\":true}\n");
    CHECK(strstr(out, "after") == NULL);

    /* Many small fields: the ones that do not fit are left out whole. */
    enum { NF = 3000 };
    struct loom_kv *kv = malloc(NF * sizeof(*kv));
    for (int i = 0; i < NF; i++)
        kv[i] = LOOM_KV_INT("field", i);
    capture_reset();
    loom_log_kv(LOOM_LOG_INFO, "many", kv, NF);
    n = capture();
    CHECK(n <= LOOM_LOG_LINE_MAX);
    CHECK_INT(check_lines(out, n), 1);
    CHECK_CONTAINS(out, ",\"field\":0,\"field\":1,");
    CHECK_CONTAINS(out, ",\"truncated\":true}\n");
    /* A line that just fits is not marked. */
    capture_reset();
    loom_log_kv(LOOM_LOG_INFO, "few", kv, 10);
    capture();
    CHECK(strstr(out, "truncated") == NULL);

    /* A huge key and a huge service name. */
    kv[0] = LOOM_KV_INT(s, 1);
    capture_reset();
    loom_log_kv(LOOM_LOG_INFO, "key", kv, 1);
    loom_log_set_service(s);
    loom_log_info("svc");
    loom_log_set_service("test");
    n = capture();
    CHECK_INT(check_lines(out, n), 2);
    CHECK_CONTAINS(out, "\"msg\":\"key\",\"trace_id\":\"\",\"span_id\":\"\",\"truncated\":true}\n");
    /* svc is capped at 256 bytes with its quotes; the message keeps its room. */
    char want[400] = "\"svc\":\"";
    memset(want + 7, 'b', 254);
    strcpy(want + 7 + 254,
           "\",\"msg\":\"svc\",\"trace_id\":\"\",\"span_id\":\"\",\"truncated\":true}\n");
    CHECK_CONTAINS(out, want);
    free(kv);
    free(s);
}

static void test_errno_kept(void)
{
    capture_reset();
    errno = ENOENT;
    loom_log_info("x");
    CHECK_INT(errno, ENOENT);
    loom_log_set_fd(-1); /* a failed write is dropped silently */
    loom_log_info("lost");
    CHECK_INT(errno, ENOENT);
    loom_log_set_fd(out_fd);
}

enum { NTHREADS = 4, PER_THREAD = 600 };

static void *log_thread(void *arg)
{
    int id = (int)(intptr_t)arg;
    char svc[16];
    snprintf(svc, sizeof(svc), "svc%d", id);
    /* A new thread starts with the default name (checked by the main thread: CHECK is not
     * thread-safe). */
    bool default_svc = strcmp(loom_log_service(), "loom") == 0;
    loom_log_set_service(svc);
    char pad[9000];
    memset(pad, 'a' + id, sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = '\0';
    for (int i = 0; i < PER_THREAD; i++) {
        /* Lengths from tens of bytes to beyond PIPE_BUF. */
        int len = (i * 37) % (int)sizeof(pad);
        LOOM_LOG_KV(LOOM_LOG_INFO, "concurrent", LOOM_KV_INT("i", i),
                    LOOM_KV_STR("pad", loom_str_make(pad, (size_t)len)));
    }
    return (void *)(intptr_t)(default_svc ? 1 : 2);
}

static void test_concurrent_lines(void)
{
    capture_reset();
    pthread_t t[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        pthread_create(&t[i], NULL, log_thread, (void *)(intptr_t)i);
    for (int i = 0; i < NTHREADS; i++) {
        void *ret = NULL;
        pthread_join(t[i], &ret);
        CHECK(ret == (void *)(intptr_t)1);
    }
    size_t n = capture();
    CHECK(n < sizeof(out) - 1);
    CHECK_INT(check_lines(out, n), NTHREADS * PER_THREAD);
    /* Each line carries its own thread's service and padding. */
    int bad = 0;
    for (const char *p = out; p < out + n;) {
        const char *nl = strchr(p, '\n');
        const char *svc = strstr(p, "\"svc\":\"svc");
        const char *pad = strstr(p, "\"pad\":\"");
        if (!svc || svc > nl || !pad || pad > nl)
            bad++;
        else if (pad[7] != '"' && pad[7] != 'a' + (svc[10] - '0'))
            bad++;
        p = nl + 1;
    }
    CHECK_INT(bad, 0);
}

int main(void)
{
    char path[] = "/tmp/loom-test-log-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        perror("mkstemp");
        return 1;
    }
    unlink(path);
    /* O_APPEND so that writes after ftruncate start at 0 again. */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_APPEND);
    out_fd = fd;
    loom_log_set_fd(fd);

    RUN(test_line_format);
    RUN(test_fields);
    RUN(test_escaping);
    RUN(test_trace_ids);
    RUN(test_levels);
    RUN(test_truncation);
    RUN(test_errno_kept);
    RUN(test_concurrent_lines);

    loom_log_set_fd(2);
    close(fd);
    return check_report();
}
