/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests for the trace module: the traceparent parser against the W3C Trace Context rules
 * (lengths, versions, lowercase hex, zero ids, whitespace), formatting round trips, child and
 * root spans, id uniqueness (also across fork) and the per-thread current context.
 */
#include "check.h"

#include <loom/core.h>
#include <loom/trace.h>

#include <pthread.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#define TRACE "4bf92f3577b34da6a3ce929d0e0e4736"
#define SPAN  "00f067aa0ba902b7"
#define VALID "00-" TRACE "-" SPAN "-01"

static loom_err parse(const char *s, struct loom_trace_ctx *out)
{
    return loom_trace_parse(loom_str_cstr(s), out);
}

static void test_parse_valid(void)
{
    struct loom_trace_ctx c;
    CHECK_INT(parse(VALID, &c), LOOM_OK);
    CHECK_STR(c.trace_hex, TRACE);
    CHECK_STR(c.span_hex, SPAN);
    CHECK_INT(c.trace_id[0], 0x4b);
    CHECK_INT(c.trace_id[15], 0x36);
    CHECK_INT(c.span_id[0], 0x00);
    CHECK_INT(c.span_id[7], 0xb7);
    CHECK_INT(c.flags, LOOM_TRACE_FLAG_SAMPLED);
    CHECK(loom_trace_is_sampled(&c));
    for (size_t i = 0; i < sizeof(c.parent_span_id); i++)
        CHECK_INT(c.parent_span_id[i], 0);

    CHECK_INT(parse("00-" TRACE "-" SPAN "-00", &c), LOOM_OK);
    CHECK_INT(c.flags, 0);
    CHECK(!loom_trace_is_sampled(&c));
    /* Unknown flag bits are accepted but not kept: version 00 senders must send them as 0. */
    CHECK_INT(parse("00-" TRACE "-" SPAN "-09", &c), LOOM_OK);
    CHECK_INT(c.flags, LOOM_TRACE_FLAG_SAMPLED);
    CHECK_INT(parse("00-" TRACE "-" SPAN "-fe", &c), LOOM_OK);
    CHECK_INT(c.flags, 0);

    /* HTTP OWS around the value is not part of it. */
    CHECK_INT(parse(" \t" VALID " \t", &c), LOOM_OK);
    CHECK_STR(c.span_hex, SPAN);
    /* A slice that is not NUL-terminated. */
    const char buf[] = VALID "trailing junk";
    CHECK_INT(loom_trace_parse(loom_str_make(buf, LOOM_TRACEPARENT_LEN), &c), LOOM_OK);
}

static void test_parse_versions(void)
{
    struct loom_trace_ctx c;
    /* Version 00 is exactly 55 characters. */
    CHECK_INT(parse(VALID "-", &c), LOOM_EINVAL);
    CHECK_INT(parse(VALID "-what-the-future-will-be-like", &c), LOOM_EINVAL);
    CHECK_INT(parse(VALID "0", &c), LOOM_EINVAL);
    /* Higher versions: the first 55 characters as in 00, then the end or a dash. */
    CHECK_INT(parse("01-" TRACE "-" SPAN "-01", &c), LOOM_OK);
    CHECK_INT(parse("cc-" TRACE "-" SPAN "-01-what-the-future-will-be-like", &c), LOOM_OK);
    CHECK_STR(c.trace_hex, TRACE);
    CHECK_INT(c.flags, LOOM_TRACE_FLAG_SAMPLED);
    CHECK_INT(parse("cc-" TRACE "-" SPAN "-01-", &c), LOOM_OK);
    CHECK_INT(parse("cc-" TRACE "-" SPAN "-01.what", &c), LOOM_EINVAL);
    CHECK_INT(parse("cc-" TRACE "-" SPAN "-0", &c), LOOM_EINVAL);
    CHECK_INT(parse("cc-" TRACE "-" SPAN "-xx-future", &c), LOOM_EINVAL);
    /* ff is forbidden, and versions are lowercase hex too. */
    CHECK_INT(parse("ff-" TRACE "-" SPAN "-01", &c), LOOM_EINVAL);
    CHECK_INT(parse("ff-" TRACE "-" SPAN "-01-future", &c), LOOM_EINVAL);
    CHECK_INT(parse("0A-" TRACE "-" SPAN "-01", &c), LOOM_EINVAL);
    CHECK_INT(parse("0g-" TRACE "-" SPAN "-01", &c), LOOM_EINVAL);
}

static void test_parse_invalid(void)
{
    static const char *const bad[] = {
        "",
        "00",
        "00-" TRACE "-" SPAN "-0",                         /* 54 characters */
        "00-" TRACE "-" SPAN "-001",                       /* 56 */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-" SPAN "-01", /* uppercase trace id */
        "00-" TRACE "-00F067AA0BA902B7-01",                /* uppercase span id */
        "00-" TRACE "-" SPAN "-0A",                        /* uppercase flags */
        "00-00000000000000000000000000000000-" SPAN "-01", /* zero trace id */
        "00-" TRACE "-0000000000000000-01",                /* zero span id */
        "00_" TRACE "-" SPAN "-01",                        /* wrong separators */
        "00-" TRACE "_" SPAN "-01",
        "00-" TRACE "-" SPAN "_01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-" SPAN "-011", /* fields shifted */
        "00-" TRACE "-" SPAN "- 1",
        "00-4bf92f3577b34da6 3ce929d0e0e4736-" SPAN "-01", /* inner space */
        "00-4bf92f3577b34da6a3ce929d0e0e473g-" SPAN "-01",
        "00-" TRACE "-00f067aa0ba902bz-01",
        "00-" TRACE "-" SPAN "-0x",
        "-00-" TRACE "-" SPAN "-1",
        "00-" TRACE "-" SPAN "-01\r", /* CR is not OWS */
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(bad); i++) {
        struct loom_trace_ctx c;
        memset(&c, 0xa5, sizeof(c));
        loom_err err = parse(bad[i], &c);
        if (err != LOOM_EINVAL)
            fprintf(stderr, "accepted: \"%s\"\n", bad[i]);
        CHECK_INT(err, LOOM_EINVAL);
        /* Nothing written on failure. */
        CHECK_INT(c.flags, 0xa5);
        CHECK_INT(c.trace_id[0], 0xa5);
        CHECK_INT((unsigned char)c.trace_hex[0], 0xa5);
    }
    struct loom_trace_ctx c;
    CHECK_INT(loom_trace_parse(LOOM_STR_NULL, &c), LOOM_EINVAL);
}

static void test_format_roundtrip(void)
{
    struct loom_trace_ctx c, d;
    char out[LOOM_TRACEPARENT_SIZE];
    CHECK_INT(parse(VALID, &c), LOOM_OK);
    CHECK_UINT(loom_trace_format(&c, out), LOOM_TRACEPARENT_LEN);
    CHECK_STR(out, VALID);
    /* A future version is sent on as 00, the only version we speak. */
    CHECK_INT(parse("cc-" TRACE "-" SPAN "-09-extra", &c), LOOM_OK);
    loom_trace_format(&c, out);
    CHECK_STR(out, VALID);
    /* Generated contexts round-trip. */
    loom_trace_child(NULL, &c);
    loom_trace_format(&c, out);
    CHECK_UINT(strlen(out), LOOM_TRACEPARENT_LEN);
    CHECK_INT(parse(out, &d), LOOM_OK);
    CHECK(memcmp(c.trace_id, d.trace_id, 16) == 0);
    CHECK(memcmp(c.span_id, d.span_id, 8) == 0);
    CHECK_STR(d.trace_hex, c.trace_hex);
    CHECK_STR(d.span_hex, c.span_hex);
    CHECK_INT(d.flags, c.flags);
}

static void test_child(void)
{
    struct loom_trace_ctx root, child, grand;
    loom_trace_child(NULL, &root);
    CHECK(loom_trace_is_sampled(&root));
    CHECK(memcmp(root.parent_span_id, "\0\0\0\0\0\0\0\0", 8) == 0);
    CHECK(memcmp(root.trace_id, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 16) != 0);
    CHECK(memcmp(root.span_id, "\0\0\0\0\0\0\0\0", 8) != 0);
    CHECK_UINT(strlen(root.trace_hex), 32);
    CHECK_UINT(strlen(root.span_hex), 16);
    CHECK(strspn(root.trace_hex, "0123456789abcdef") == 32);

    loom_trace_child(&root, &child);
    CHECK(memcmp(child.trace_id, root.trace_id, 16) == 0);
    CHECK_STR(child.trace_hex, root.trace_hex);
    CHECK(memcmp(child.parent_span_id, root.span_id, 8) == 0);
    CHECK(memcmp(child.span_id, root.span_id, 8) != 0);
    CHECK_INT(child.flags, root.flags);

    /* Flags are kept: an unsampled trace stays unsampled. */
    struct loom_trace_ctx remote;
    CHECK_INT(parse("00-" TRACE "-" SPAN "-00", &remote), LOOM_OK);
    loom_trace_child(&remote, &grand);
    CHECK_INT(grand.flags, 0);
    CHECK_STR(grand.trace_hex, TRACE);
    CHECK_INT(grand.parent_span_id[7], 0xb7);

    /* In place. */
    struct loom_trace_ctx self = child;
    loom_trace_child(&self, &self);
    CHECK(memcmp(self.parent_span_id, child.span_id, 8) == 0);
    CHECK_STR(self.trace_hex, child.trace_hex);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_unique_ids(void)
{
    enum { N = 100000 };
    uint64_t *ids = malloc(N * sizeof(*ids));
    struct loom_trace_ctx root, c;
    loom_trace_child(NULL, &root);
    for (int i = 0; i < N; i++) {
        loom_trace_child(&root, &c);
        memcpy(&ids[i], c.span_id, 8);
    }
    qsort(ids, N, sizeof(*ids), cmp_u64);
    int dups = 0;
    for (int i = 1; i < N; i++)
        dups += ids[i] == ids[i - 1];
    CHECK_INT(dups, 0);
    free(ids);
}

static void test_fork_reseeds(void)
{
    loom_trace_random_u64(); /* make sure this thread is seeded before the fork */
    int fds[2];
    CHECK_INT(pipe(fds), 0);
    pid_t pid = fork();
    if (pid == 0) {
        uint64_t v[4];
        for (int i = 0; i < 4; i++)
            v[i] = loom_trace_random_u64();
        _exit(write(fds[1], v, sizeof(v)) == (ssize_t)sizeof(v) ? 0 : 1);
    }
    CHECK(pid > 0);
    uint64_t mine[4], theirs[4];
    for (int i = 0; i < 4; i++)
        mine[i] = loom_trace_random_u64();
    CHECK_INT(read(fds[0], theirs, sizeof(theirs)), sizeof(theirs));
    int status = -1;
    waitpid(pid, &status, 0);
    CHECK_INT(status, 0);
    CHECK(memcmp(mine, theirs, sizeof(mine)) != 0);
    close(fds[0]);
    close(fds[1]);
}

static void *thread_current(void *arg)
{
    const struct loom_trace_ctx *seen = loom_trace_current();
    struct loom_trace_ctx mine;
    loom_trace_child(NULL, &mine);
    loom_trace_set_current(&mine);
    bool ok = seen == NULL && loom_trace_current() == &mine;
    loom_trace_set_current(NULL);
    *(bool *)arg = ok;
    return NULL;
}

static void test_current(void)
{
    CHECK(loom_trace_current() == NULL);
    struct loom_trace_ctx c;
    loom_trace_child(NULL, &c);
    loom_trace_set_current(&c);
    CHECK(loom_trace_current() == &c);
    /* Another thread has its own. */
    bool ok = false;
    pthread_t t;
    pthread_create(&t, NULL, thread_current, &ok);
    pthread_join(t, NULL);
    CHECK(ok);
    CHECK(loom_trace_current() == &c);
    loom_trace_set_current(NULL);
    CHECK(loom_trace_current() == NULL);
}

int main(void)
{
    RUN(test_parse_valid);
    RUN(test_parse_versions);
    RUN(test_parse_invalid);
    RUN(test_format_roundtrip);
    RUN(test_child);
    RUN(test_unique_ids);
    RUN(test_fork_reseeds);
    RUN(test_current);
    return check_report();
}
