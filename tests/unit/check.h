/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A minimal unit-test harness: CHECK macros that report file:line and the values involved and
 * keep going, and RUN() to call a test function by name. A test binary returns non-zero if any
 * check failed, which is what ctest looks at.
 */
#ifndef LOOM_TEST_CHECK_H
#define LOOM_TEST_CHECK_H

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_failures;
static int check_count;
static const char *check_current = "";

#define CHECK_FAIL_(...)                                                   \
    do {                                                                   \
        check_failures++;                                                  \
        fprintf(stderr, "%s:%d: %s: ", __FILE__, __LINE__, check_current); \
        fprintf(stderr, __VA_ARGS__);                                      \
        fputc('\n', stderr);                                               \
    } while (0)

#define CHECK(cond)                                 \
    do {                                            \
        check_count++;                              \
        if (!(cond))                                \
            CHECK_FAIL_("CHECK(%s) failed", #cond); \
    } while (0)

#define CHECK_INT(a, b)                                            \
    do {                                                           \
        check_count++;                                             \
        long long a_ = (long long)(a), b_ = (long long)(b);        \
        if (a_ != b_)                                              \
            CHECK_FAIL_("%s == %s: %lld != %lld", #a, #b, a_, b_); \
    } while (0)

#define CHECK_UINT(a, b)                                                               \
    do {                                                                               \
        check_count++;                                                                 \
        unsigned long long a_ = (unsigned long long)(a), b_ = (unsigned long long)(b); \
        if (a_ != b_)                                                                  \
            CHECK_FAIL_("%s == %s: %llu != %llu", #a, #b, a_, b_);                     \
    } while (0)

#define CHECK_NEAR(a, b, eps)                                        \
    do {                                                             \
        check_count++;                                               \
        double a_ = (double)(a), b_ = (double)(b);                   \
        if (!(fabs(a_ - b_) <= (eps)))                               \
            CHECK_FAIL_("%s ~= %s: %.17g != %.17g", #a, #b, a_, b_); \
    } while (0)

#define CHECK_STR(a, b)                                                           \
    do {                                                                          \
        check_count++;                                                            \
        const char *a_ = (a), *b_ = (b);                                          \
        if (!a_ || !b_ || strcmp(a_, b_) != 0)                                    \
            CHECK_FAIL_("%s == %s: \"%s\" != \"%s\"", #a, #b, a_ ? a_ : "(null)", \
                        b_ ? b_ : "(null)");                                      \
    } while (0)

/* Compare a loom_str (or anything with .ptr/.len) with a C string. */
#define CHECK_SLICE(s, cstr)                                                \
    do {                                                                    \
        check_count++;                                                      \
        const char *b_ = (cstr);                                            \
        size_t bl_ = strlen(b_);                                            \
        if ((s).len != bl_ || ((s).len && memcmp((s).ptr, b_, bl_) != 0))   \
            CHECK_FAIL_("%s == \"%s\": got \"%.*s\"", #s, b_, (int)(s).len, \
                        (s).ptr ? (s).ptr : "");                            \
    } while (0)

#define CHECK_CONTAINS(hay, needle)                                                \
    do {                                                                           \
        check_count++;                                                             \
        const char *h_ = (hay), *n_ = (needle);                                    \
        if (!h_ || !strstr(h_, n_))                                                \
            CHECK_FAIL_("\"%s\" does not contain \"%s\"", h_ ? h_ : "(null)", n_); \
    } while (0)

#define RUN(fn)                                                                       \
    do {                                                                              \
        check_current = #fn;                                                          \
        int before_ = check_failures;                                                 \
        fn();                                                                         \
        fprintf(stderr, "%s %s\n", check_failures == before_ ? "ok  " : "FAIL", #fn); \
    } while (0)

static inline int check_report(void)
{
    fprintf(stderr, "%d checks, %d failed\n", check_count, check_failures);
    return check_failures ? 1 : 0;
}

#endif
