/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for the core module: errors, allocation and arenas, slices, buffers, clocks. */
#include "check.h"

#include <loom/core.h>

#include <errno.h>
#include <float.h>
#include <time.h>

static void test_err_table(void)
{
    for (int i = 0; i < LOOM_ERR__COUNT; i++) {
        CHECK(loom_strerror((loom_err)i) != NULL);
        CHECK(loom_err_name((loom_err)i)[0] == (i == 0 ? 'O' : 'E'));
    }
    CHECK_STR(loom_strerror((loom_err)999), "unknown error");
    CHECK_INT(loom_err_http_status(LOOM_EINVAL), 400);
    CHECK_INT(loom_err_http_status(LOOM_ENOTFOUND), 404);
    CHECK_INT(loom_err_http_status(LOOM_ETOOBIG), 413);
    CHECK_INT(loom_err_http_status(LOOM_EBUSY), 503);
    CHECK_INT(loom_err_http_status((loom_err)999), 500);
    /* The numbers are a stable contract: they are logged and persisted. */
    CHECK_INT(LOOM_EINVAL, 1);
    CHECK_INT(LOOM_ECONNECT, 18);
}

static void test_error_carrier(void)
{
    struct loom_error e = { 0 };
    CHECK_INT(loom_error_set(&e, LOOM_EINVAL, "dims[%d] is %d", 2, -1), LOOM_EINVAL);
    CHECK_INT(e.code, LOOM_EINVAL);
    CHECK_STR(e.msg, "dims[2] is -1");
    CHECK_INT(loom_error_prefix(&e, "input '%s'", "x"), LOOM_EINVAL);
    CHECK_STR(e.msg, "input 'x': dims[2] is -1");
    errno = ENOENT;
    CHECK_INT(loom_error_errno(&e, "open %s", "/nope"), LOOM_EIO);
    CHECK_STR(e.msg, "open /nope: No such file or directory");
    CHECK_INT(errno, ENOENT);
    CHECK_INT(loom_error_set(NULL, LOOM_EBUSY, "ignored"), LOOM_EBUSY);
    char big[600];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    loom_error_set(&e, LOOM_ETOOBIG, "%s", big);
    CHECK_UINT(strlen(e.msg), LOOM_ERROR_MSG_MAX - 1);
}

static int cleanup_order[8];
static int cleanup_n;
static void record_cleanup(void *arg)
{
    cleanup_order[cleanup_n++] = (int)(intptr_t)arg;
}

static void test_arena(void)
{
    struct loom_arena a;
    loom_arena_init(&a, 256);
    char *p = loom_arena_alloc(&a, 10);
    CHECK(((uintptr_t)p % LOOM_ARENA_ALIGN) == 0);
    memset(p, 'x', 10);
    char *q = loom_arena_alloc(&a, 1);
    CHECK(q >= p + 10);
    CHECK(((uintptr_t)q % LOOM_ARENA_ALIGN) == 0);
    /* Many small allocations span chunks; every one stays valid until reset. */
    char *ptrs[100];
    for (int i = 0; i < 100; i++) {
        ptrs[i] = loom_arena_alloc(&a, 24);
        memset(ptrs[i], i, 24);
    }
    for (int i = 0; i < 100; i++)
        CHECK(ptrs[i][23] == (char)i);
    /* A large allocation goes into a chunk of its own. */
    char *large = loom_arena_zalloc(&a, 10000);
    CHECK(large[9999] == 0);
    char *s = loom_arena_strndup(&a, "hello world", 5);
    CHECK_STR(s, "hello");
    CHECK(a.bytes >= 10 + 1 + 2400 + 10000);

    cleanup_n = 0;
    loom_arena_add_cleanup(&a, record_cleanup, (void *)1);
    loom_arena_add_cleanup(&a, record_cleanup, (void *)2);
    loom_arena_reset(&a);
    CHECK_INT(cleanup_n, 2);
    CHECK_INT(cleanup_order[0], 2); /* newest first */
    CHECK_INT(cleanup_order[1], 1);
    CHECK_UINT(a.bytes, 0);
    CHECK(a.large == NULL);
    /* After a reset the first chunk is reused: the first address comes back. */
    char *r = loom_arena_alloc(&a, 10);
    CHECK(r == p);
    loom_arena_add_cleanup(&a, record_cleanup, (void *)3);
    loom_arena_release(&a);
    CHECK_INT(cleanup_n, 3);
    CHECK_INT(cleanup_order[2], 3);
    CHECK(a.chunks == NULL);
    loom_arena_release(&a); /* releasing twice is harmless */
}

static void test_str(void)
{
    struct loom_str s = LOOM_STR("  Content-Type \t");
    CHECK_SLICE(loom_str_trim(s), "Content-Type");
    CHECK(loom_str_ieq(LOOM_STR("content-TYPE"), LOOM_STR("Content-Type")));
    CHECK(!loom_str_ieq(LOOM_STR("content-typ"), LOOM_STR("Content-Type")));
    CHECK(loom_str_has_prefix(LOOM_STR("/v2/models"), LOOM_STR("/v2")));
    CHECK(!loom_str_has_prefix(LOOM_STR("/v"), LOOM_STR("/v2")));
    CHECK(loom_str_has_suffix(LOOM_STR("model.json"), LOOM_STR(".json")));
    CHECK_INT(loom_str_index(LOOM_STR("a=b"), '='), 1);
    CHECK_INT(loom_str_index(LOOM_STR("ab"), '='), -1);
    CHECK_INT(loom_str_index(LOOM_STR_NULL, '='), -1);
    struct loom_str head, tail = loom_str_cut(LOOM_STR("host:8080"), ':', &head);
    CHECK_SLICE(head, "host");
    CHECK_SLICE(tail, "8080");
    tail = loom_str_cut(LOOM_STR("host"), ':', &head);
    CHECK_SLICE(head, "host");
    CHECK(tail.ptr == NULL && tail.len == 0);
    char *d = loom_str_dup(LOOM_STR("abc"));
    CHECK_STR(d, "abc");
    free(d);
    CHECK(loom_str_eq_cstr(LOOM_STR("x"), "x"));
}

static void test_numbers(void)
{
    int64_t i;
    uint64_t u;
    double f;
    bool b;
    CHECK_INT(loom_str_to_i64(LOOM_STR("-42"), &i), LOOM_OK);
    CHECK_INT(i, -42);
    CHECK_INT(loom_str_to_i64(LOOM_STR("9223372036854775807"), &i), LOOM_OK);
    CHECK(i == INT64_MAX);
    CHECK_INT(loom_str_to_i64(LOOM_STR("-9223372036854775808"), &i), LOOM_OK);
    CHECK(i == INT64_MIN);
    CHECK_INT(loom_str_to_i64(LOOM_STR("9223372036854775808"), &i), LOOM_ETOOBIG);
    CHECK_INT(loom_str_to_u64(LOOM_STR("18446744073709551615"), &u), LOOM_OK);
    CHECK(u == UINT64_MAX);
    CHECK_INT(loom_str_to_u64(LOOM_STR("18446744073709551616"), &u), LOOM_ETOOBIG);
    CHECK_INT(loom_str_to_u64(LOOM_STR(""), &u), LOOM_EINVAL);
    CHECK_INT(loom_str_to_u64(LOOM_STR("12a"), &u), LOOM_EINVAL);
    CHECK_INT(loom_str_to_u64(LOOM_STR(" 12"), &u), LOOM_EINVAL);
    CHECK_INT(loom_str_to_i64(LOOM_STR("-"), &i), LOOM_EINVAL);
    CHECK_INT(loom_str_to_double(LOOM_STR("1.5e3"), &f), LOOM_OK);
    CHECK_NEAR(f, 1500.0, 0);
    CHECK_INT(loom_str_to_double(LOOM_STR("1.5x"), &f), LOOM_EINVAL);
    CHECK_INT(loom_str_to_double(LOOM_STR("1e999"), &f), LOOM_ETOOBIG);
    CHECK_INT(loom_str_to_bool(LOOM_STR("Yes"), &b), LOOM_OK);
    CHECK(b);
    CHECK_INT(loom_str_to_bool(LOOM_STR("off"), &b), LOOM_OK);
    CHECK(!b);
    CHECK_INT(loom_str_to_bool(LOOM_STR("maybe"), &b), LOOM_EINVAL);

    CHECK_INT(loom_str_to_duration_ns(LOOM_STR("250ms"), &u), LOOM_OK);
    CHECK_UINT(u, 250 * LOOM_NS_PER_MS);
    CHECK_INT(loom_str_to_duration_ns(LOOM_STR("5s"), &u), LOOM_OK);
    CHECK_UINT(u, 5 * LOOM_NS_PER_SEC);
    CHECK_INT(loom_str_to_duration_ns(LOOM_STR("2m"), &u), LOOM_OK);
    CHECK_UINT(u, 120 * LOOM_NS_PER_SEC);
    CHECK_INT(loom_str_to_duration_ns(LOOM_STR("100us"), &u), LOOM_OK);
    CHECK_UINT(u, 100 * LOOM_NS_PER_US);
    CHECK_INT(loom_str_to_duration_ns(LOOM_STR("30"), &u), LOOM_OK);
    CHECK_UINT(u, 30 * LOOM_NS_PER_MS);
    CHECK_INT(loom_str_to_duration_ns(LOOM_STR("5 s"), &u), LOOM_EINVAL);
    CHECK_INT(loom_str_to_duration_ns(LOOM_STR("5d"), &u), LOOM_EINVAL);
    CHECK_INT(loom_str_to_duration_ns(LOOM_STR("s"), &u), LOOM_EINVAL);
    CHECK_INT(loom_str_to_duration_ns(LOOM_STR("99999999999h"), &u), LOOM_ETOOBIG);
    CHECK_INT(loom_str_to_size(LOOM_STR("32KiB"), &u), LOOM_OK);
    CHECK_UINT(u, 32768);
    CHECK_INT(loom_str_to_size(LOOM_STR("1MB"), &u), LOOM_OK);
    CHECK_UINT(u, 1000000);
    CHECK_INT(loom_str_to_size(LOOM_STR("512"), &u), LOOM_OK);
    CHECK_UINT(u, 512);
    CHECK_INT(loom_str_to_size(LOOM_STR("1TiB"), &u), LOOM_EINVAL);
}

static void test_buf(void)
{
    struct loom_buf b;
    loom_buf_init(&b, 16);
    CHECK_INT(loom_buf_append_cstr(&b, "hello"), LOOM_OK);
    CHECK_INT(loom_buf_putc(&b, ' '), LOOM_OK);
    CHECK_INT(loom_buf_printf(&b, "%d", 42), LOOM_OK);
    CHECK_STR(b.data, "hello 42");
    CHECK_UINT(b.len, 8);
    /* The ceiling is exact: 16 bytes fit, 17 do not, and a failed append changes nothing. */
    CHECK_INT(loom_buf_append_cstr(&b, "12345678"), LOOM_OK);
    CHECK_UINT(b.len, 16);
    CHECK_INT(loom_buf_putc(&b, 'x'), LOOM_ETOOBIG);
    CHECK_INT(loom_buf_printf(&b, "%s", "y"), LOOM_ETOOBIG);
    CHECK_UINT(b.len, 16);
    CHECK_STR(b.data, "hello 4212345678");
    CHECK(b.cap <= 17);
    loom_buf_consume(&b, 6);
    CHECK_STR(b.data, "4212345678");
    loom_buf_reset(&b);
    CHECK_UINT(b.len, 0);
    CHECK_STR(b.data, "");
    loom_buf_release(&b);

    loom_buf_init(&b, 0);
    CHECK_UINT(b.max, LOOM_BUF_MAX_DEFAULT);
    char big[1000];
    memset(big, 'z', sizeof(big));
    for (int i = 0; i < 100; i++)
        CHECK_INT(loom_buf_append(&b, big, sizeof(big)), LOOM_OK);
    CHECK_UINT(b.len, 100000);
    CHECK_INT(loom_buf_printf(&b, "%0300d", 7), LOOM_OK); /* longer than printf's stack buffer */
    CHECK_UINT(b.len, 100300);
    CHECK(b.data[b.len - 1] == '7' && b.data[b.len] == '\0');
    loom_buf_reset(&b);
    CHECK_INT(loom_buf_append_u64(&b, 0), LOOM_OK);
    CHECK_INT(loom_buf_putc(&b, ' '), LOOM_OK);
    CHECK_INT(loom_buf_append_u64(&b, UINT64_MAX), LOOM_OK);
    CHECK_INT(loom_buf_putc(&b, ' '), LOOM_OK);
    CHECK_INT(loom_buf_append_i64(&b, INT64_MIN), LOOM_OK);
    CHECK_STR(b.data, "0 18446744073709551615 -9223372036854775808");
    size_t n;
    char *p = loom_buf_detach(&b, &n);
    CHECK_UINT(n, 43);
    CHECK(b.data == NULL && b.len == 0);
    free(p);
    p = loom_buf_detach(&b, &n); /* an empty buffer detaches as "" */
    CHECK_STR(p, "");
    free(p);
}

static void test_clock(void)
{
    uint64_t a = loom_now_ns(), b = loom_now_ns();
    CHECK(b >= a);
    int64_t w = loom_wall_ns();
    CHECK(w > (int64_t)1700000000 * (int64_t)LOOM_NS_PER_SEC);
    char out[40];
    CHECK_UINT(loom_time_rfc3339(0, out), 27);
    CHECK_STR(out, "1970-01-01T00:00:00.000000Z");
    loom_time_rfc3339((int64_t)1795547400 * 1000000000 + 123456789, out);
    CHECK_STR(out, "2026-11-24T19:10:00.123456Z");
    loom_time_rfc3339((int64_t)951782400 * 1000000000, out); /* a leap day */
    CHECK_STR(out, "2000-02-29T00:00:00.000000Z");
    CHECK_UINT(loom_time_http_date(1795547400, out), 29);
    CHECK_STR(out, "Tue, 24 Nov 2026 19:10:00 GMT");
    CHECK_UINT(loom_time_http_date(784111777, out), 29);
    CHECK_STR(out, "Sun, 06 Nov 1994 08:49:37 GMT"); /* RFC 9110's example */
    /* Agree with the C library over a range of days. */
    for (time_t t = 0; t < (time_t)4102444800; t += 86400 * 7 + 3607) {
        struct tm tm;
        char want[64];
        gmtime_r(&t, &tm);
        strftime(want, sizeof(want), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        loom_time_http_date(t, out);
        if (strcmp(out, want) != 0) {
            CHECK_STR(out, want);
            break;
        }
    }
}

static void test_mul_size(void)
{
    CHECK_UINT(loom_mul_size(1000, 1000), 1000000);
    int *v = loom_calloc(4, sizeof(int));
    CHECK(v[3] == 0);
    v = loom_realloc(v, 1000 * sizeof(int));
    v[999] = 7;
    CHECK_INT(v[999], 7);
    free(v);
    char *s = loom_strndup("abcdef", 3);
    CHECK_STR(s, "abc");
    free(s);
}

static void test_fmt_double(void)
{
    char out[LOOM_FMT_DOUBLE_MAX];
    static const struct {
        double v;
        const char *want;
    } cases[] = {
        { 0, "0" },
        { -0.0, "-0" },
        { 0.1, "0.1" },
        { -2.5, "-2.5" },
        { 100, "100" },
        { 1e15, "1000000000000000" },
        { 1e21, "1e+21" },
        { 0.1 + 0.2, "0.30000000000000004" },
        { 5e-324, "5e-324" },
        { 1e-7, "1e-07" },
        { 1.7976931348623157e308, "1.7976931348623157e+308" },
        { NAN, "NaN" },
        { INFINITY, "+Inf" },
        { -INFINITY, "-Inf" },
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(cases); i++) {
        loom_fmt_double(cases[i].v, out);
        CHECK_STR(out, cases[i].want);
    }
    CHECK_UINT(loom_fmt_float(0.1f, out), 3);
    CHECK_STR(out, "0.1");
    loom_fmt_float(16777216.0f, out);
    CHECK_STR(out, "16777216");
    loom_fmt_float(3.14159274f, out);
    CHECK_STR(out, "3.1415927");
    loom_fmt_float(1e-45f, out);
    CHECK_STR(out, "1e-45");
    /* The integer fast path writes what printf's shortest %g does, for every kind of float. */
    int differ = 0;
    srand(5);
    for (int i = 0; i < 500000 && differ < 5; i++) {
        uint32_t bits = (uint32_t)rand() << 16 ^ (uint32_t)rand();
        if (i % 3 == 0) /* bias toward probabilities and scores */
            bits = 0x3c000000u + (uint32_t)rand() % 0x3000000u;
        float f;
        memcpy(&f, &bits, sizeof(f));
        if (!isfinite(f) || fabsf(f) < FLT_MIN)
            continue; /* subnormals start from one digit in both paths */
        char want[LOOM_FMT_DOUBLE_MAX];
        if (fabsf(f) < 16777216.0f && f == truncf(f))
            continue; /* integers take their own path */
        for (int prec = 6; prec <= 9; prec++) {
            snprintf(want, sizeof(want), "%.*g", prec, (double)f);
            if (strtof(want, NULL) == f)
                break;
        }
        loom_fmt_float(f, out);
        if (strcmp(out, want) != 0) {
            differ++;
            CHECK_STR(out, want);
        }
    }
    CHECK_INT(differ, 0);
    /* Every output reads back exactly, over a spread of magnitudes. */
    srand(11);
    for (int i = 0; i < 20000; i++) {
        double v = ldexp((double)rand() / RAND_MAX, rand() % 2000 - 1000) * (i % 2 ? -1 : 1);
        loom_fmt_double(v, out);
        if (strtod(out, NULL) != v) {
            CHECK_STR(out, "(round trip)");
            break;
        }
        float f = (float)v;
        if (isfinite(f)) {
            loom_fmt_float(f, out);
            if (strtof(out, NULL) != f) {
                CHECK_STR(out, "(float round trip)");
                break;
            }
        }
    }
}

int main(void)
{
    RUN(test_err_table);
    RUN(test_error_carrier);
    RUN(test_arena);
    RUN(test_str);
    RUN(test_numbers);
    RUN(test_buf);
    RUN(test_clock);
    RUN(test_mul_size);
    RUN(test_fmt_double);
    return check_report();
}
