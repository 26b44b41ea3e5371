/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests for the GCRA rate limiter (include/loom/ratelimit.h): rate parsing, the burst and
 * the steady rate at exact times, Retry-After and reset figures, all-or-nothing checks of
 * several keys, the bounded table, concurrency from several threads on one key, and the same
 * behaviour on a real redis-server (started here on a free port when Debian's redis-server is
 * installed, skipped otherwise): the script loaded by EVAL after NOSCRIPT, shared state
 * between two clients, and commands failing fast while the server is down, then succeeding
 * again after the client reconnects by itself.
 */
#include "check.h"

#include <loom/loop.h>
#include <loom/ratelimit.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define SEC LOOM_NS_PER_SEC
#define MS  LOOM_NS_PER_MS

static void test_parse(void)
{
    struct loom_rate r;
    CHECK_INT(loom_rate_parse(LOOM_STR("100/s"), &r), LOOM_OK);
    CHECK_NEAR(r.per_sec, 100, 1e-9);
    CHECK_NEAR(r.burst, 100, 1e-9);
    CHECK_INT(loom_rate_parse(LOOM_STR("6000/m:200"), &r), LOOM_OK);
    CHECK_NEAR(r.per_sec, 100, 1e-9);
    CHECK_NEAR(r.burst, 200, 1e-9);
    CHECK_INT(loom_rate_parse(LOOM_STR("1/h"), &r), LOOM_OK);
    CHECK_NEAR(r.burst, 1, 1e-9);
    CHECK_INT(loom_rate_parse(LOOM_STR("0.5/s:3"), &r), LOOM_OK);
    CHECK_NEAR(r.per_sec, 0.5, 1e-12);
    static const char *const bad[] = { "",      "100",  "100/d", "-1/s",   "0/s",   "x/s",
                                       "1/s:0", "1/s:", "1/s:x", "1/s:-2", "2e9/s", "/s" };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(bad); i++) {
        r.per_sec = 7;
        CHECK_INT(loom_rate_parse(loom_str_cstr(bad[i]), &r), LOOM_EINVAL);
        CHECK_NEAR(r.per_sec, 7, 0); /* untouched */
    }
}

static struct loom_ratelimit_limit lim(const char *key, double rate, double burst)
{
    return (struct loom_ratelimit_limit){ loom_str_cstr(key), { rate, burst } };
}

static void test_burst_and_rate(void)
{
    struct loom_ratelimiter *rl = loom_ratelimiter_new(0);
    struct loom_ratelimit_limit l = lim("client-a", 10, 5); /* 10/s, burst 5 */
    struct loom_ratelimit_result r;
    uint64_t t0 = 1000 * SEC;
    for (int i = 0; i < 5; i++) {
        CHECK_INT(loom_ratelimiter_check(rl, &l, 1, t0, &r), LOOM_OK);
        CHECK(r.allowed);
        CHECK_INT(r.remaining, 4 - i);
    }
    CHECK_INT(loom_ratelimiter_check(rl, &l, 1, t0, &r), LOOM_OK);
    CHECK(!r.allowed);
    CHECK_INT(r.remaining, 0);
    CHECK_UINT(r.retry_after, 100 * MS); /* one period */
    CHECK_UINT(r.reset, 500 * MS);       /* five periods until the burst is whole */
    /* Just before the period: still refused; at it: one more. */
    CHECK_INT(loom_ratelimiter_check(rl, &l, 1, t0 + 99 * MS, &r), LOOM_OK);
    CHECK(!r.allowed);
    CHECK_UINT(r.retry_after, 1 * MS);
    CHECK_INT(loom_ratelimiter_check(rl, &l, 1, t0 + 100 * MS, &r), LOOM_OK);
    CHECK(r.allowed);
    CHECK_INT(r.remaining, 0);
    /* A steady 10/s for 10 s passes whole; 20/s passes half. */
    int ok = 0;
    for (int i = 1; i <= 200; i++) {
        loom_ratelimiter_check(rl, &l, 1, t0 + 100 * MS + (uint64_t)i * 50 * MS, &r);
        ok += r.allowed;
    }
    CHECK(ok >= 99 && ok <= 101);
    /* Another key is independent; a full bucket again after idling. */
    struct loom_ratelimit_limit other = lim("client-b", 10, 5);
    CHECK_INT(loom_ratelimiter_check(rl, &other, 1, t0, &r), LOOM_OK);
    CHECK(r.allowed && r.remaining == 4);
    CHECK_INT(loom_ratelimiter_check(rl, &l, 1, t0 + 3600 * SEC, &r), LOOM_OK);
    CHECK(r.allowed && r.remaining == 4);
    loom_ratelimiter_free(rl);
}

static void test_multi_key(void)
{
    struct loom_ratelimiter *rl = loom_ratelimiter_new(0);
    struct loom_ratelimit_limit ls[2] = { lim("c:x", 100, 100), lim("r:infer:x", 1, 2) };
    struct loom_ratelimit_result r;
    uint64_t t = 5 * SEC;
    CHECK_INT(loom_ratelimiter_check(rl, ls, 2, t, &r), LOOM_OK);
    CHECK(r.allowed);
    CHECK_UINT(r.index, 1); /* the tighter limit is the one described */
    CHECK_INT(r.remaining, 1);
    CHECK_INT(loom_ratelimiter_check(rl, ls, 2, t, &r), LOOM_OK);
    CHECK(r.allowed && r.remaining == 0);
    CHECK_INT(loom_ratelimiter_check(rl, ls, 2, t, &r), LOOM_OK);
    CHECK(!r.allowed);
    CHECK_UINT(r.index, 1);
    CHECK_UINT(r.retry_after, 1 * SEC);
    /* All or nothing: the refused check did not spend the client-wide limit. */
    CHECK_INT(loom_ratelimiter_check(rl, &ls[0], 1, t, &r), LOOM_OK);
    CHECK(r.allowed);
    CHECK_INT(r.remaining, 97);
    /* Bad arguments. */
    CHECK_INT(loom_ratelimiter_check(rl, ls, 0, t, &r), LOOM_EINVAL);
    CHECK_INT(loom_ratelimiter_check(rl, ls, LOOM_RATELIMIT_MAX_LIMITS + 1, t, &r), LOOM_EINVAL);
    struct loom_ratelimit_limit bad = lim("", 1, 1);
    CHECK_INT(loom_ratelimiter_check(rl, &bad, 1, t, &r), LOOM_EINVAL);
    bad = lim("k", 0, 1);
    CHECK_INT(loom_ratelimiter_check(rl, &bad, 1, t, &r), LOOM_EINVAL);
    char big[LOOM_RATELIMIT_KEY_MAX + 2];
    memset(big, 'k', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    bad = lim(big, 1, 1);
    CHECK_INT(loom_ratelimiter_check(rl, &bad, 1, t, &r), LOOM_EINVAL);
    loom_ratelimiter_free(rl);
}

static void test_bounded(void)
{
    struct loom_ratelimiter *rl = loom_ratelimiter_new(1024);
    struct loom_ratelimit_result r;
    char key[32];
    for (int i = 0; i < 100000; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        struct loom_ratelimit_limit l = lim(key, 1, 1);
        CHECK_INT(loom_ratelimiter_check(rl, &l, 1, 10 * SEC, &r), LOOM_OK);
    }
    CHECK(loom_ratelimiter_keys(rl) <= 1024);
    /* A key used again within its period is (almost always) still limited: it was among the
     * most recent. */
    struct loom_ratelimit_limit l = lim("k99999", 1, 1);
    CHECK_INT(loom_ratelimiter_check(rl, &l, 1, 10 * SEC, &r), LOOM_OK);
    CHECK(!r.allowed);
    loom_ratelimiter_free(rl);
}

struct hammer {
    struct loom_ratelimiter *rl;
    int allowed;
};

static void *hammer_thread(void *arg)
{
    struct hammer *h = arg;
    struct loom_ratelimit_limit l = lim("shared", 1, 1000);
    for (int i = 0; i < 5000; i++) {
        struct loom_ratelimit_result r;
        loom_ratelimiter_check(h->rl, &l, 1, 42 * SEC, &r);
        h->allowed += r.allowed;
    }
    return NULL;
}

static void test_threads(void)
{
    struct loom_ratelimiter *rl = loom_ratelimiter_new(0);
    struct hammer h[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        h[i] = (struct hammer){ rl, 0 };
        pthread_create(&t[i], NULL, hammer_thread, &h[i]);
    }
    int total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        total += h[i].allowed;
    }
    CHECK_INT(total, 1000); /* exactly the burst at one instant, however the threads raced */
    loom_ratelimiter_free(rl);
}

/* ---- Redis ---- */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    bind(fd, (struct sockaddr *)&a, sizeof(a));
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd);
    return ntohs(a.sin_port);
}

static pid_t start_redis(int port)
{
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        char p[16];
        snprintf(p, sizeof(p), "%d", port);
        execl("/usr/bin/redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1", "--save",
              "", "--appendonly", "no", "--loglevel", "warning", (char *)NULL);
        _exit(127);
    }
    return pid;
}

static void stop_redis(pid_t pid)
{
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

struct rwait {
    bool done;
    loom_err err;
    struct loom_ratelimit_result r;
};

static void on_rl(const struct loom_ratelimit_result *res, loom_err err, void *arg)
{
    struct rwait *w = arg;
    w->done = true;
    w->err = err;
    if (!err)
        w->r = *res;
}

static void wait_connected(struct loom_loop *loop, struct loom_redis *r)
{
    for (int i = 0; i < 300 && !loom_redis_is_connected(r); i++)
        loom_loop_run_once(loop, 20 * MS);
}

static loom_err redis_check(struct loom_loop *loop, struct loom_redis *r,
                            const struct loom_ratelimit_limit *l, size_t n,
                            struct loom_ratelimit_result *out)
{
    struct rwait w = { 0 };
    loom_err e = loom_ratelimit_redis_check(r, l, n, on_rl, &w);
    if (e)
        return e;
    for (int i = 0; i < 500 && !w.done; i++)
        loom_loop_run_once(loop, 10 * MS);
    CHECK(w.done);
    *out = w.r;
    return w.err;
}

static void test_redis(void)
{
    if (access("/usr/bin/redis-server", X_OK) != 0) {
        fprintf(stderr, "test_redis: skipped (redis-server is not installed)\n");
        return;
    }
    int port = free_port();
    pid_t pid = start_redis(port);
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
    struct loom_loop *loop = loom_loop_new();
    struct loom_error err = { 0 };
    struct loom_redis *a = loom_redis_new(loop, url, NULL, &err);
    struct loom_redis *b = loom_redis_new(loop, url, NULL, &err);
    CHECK(a && b);
    wait_connected(loop, a);
    wait_connected(loop, b);
    CHECK(loom_redis_is_connected(a) && loom_redis_is_connected(b));

    /* A burst of 5 shared by two clients (two gateway replicas): exactly 5 pass. */
    char key[48];
    snprintf(key, sizeof(key), "unit:%d", port);
    struct loom_ratelimit_limit l = lim(key, 0.001, 5);
    struct loom_ratelimit_result r;
    int ok = 0;
    for (int i = 0; i < 10; i++) {
        CHECK_INT(redis_check(loop, i % 2 ? b : a, &l, 1, &r), LOOM_OK);
        ok += r.allowed;
        if (i == 0)
            CHECK_INT(r.remaining, 4);
    }
    CHECK_INT(ok, 5);
    CHECK(!r.allowed);
    CHECK(r.retry_after > 900 * SEC && r.retry_after <= 1000 * SEC);
    /* Two keys, all or nothing, the tighter described. */
    snprintf(key, sizeof(key), "unit2:%d", port);
    struct loom_ratelimit_limit ls[2] = { lim(key, 1000, 1000), lim("unit3", 0.001, 1) };
    CHECK_INT(redis_check(loop, a, ls, 2, &r), LOOM_OK);
    CHECK(r.allowed && r.index == 1 && r.remaining == 0);
    CHECK_INT(redis_check(loop, a, ls, 2, &r), LOOM_OK);
    CHECK(!r.allowed && r.index == 1);
    CHECK_INT(redis_check(loop, a, &ls[0], 1, &r), LOOM_OK);
    CHECK(r.allowed && r.remaining == 998);

    /* The server dies: commands fail fast; it comes back: the client reconnects alone and the
     * script is loaded again (NOSCRIPT, then EVAL). */
    stop_redis(pid);
    for (int i = 0; i < 50 && loom_redis_is_connected(a); i++)
        loom_loop_run_once(loop, 10 * MS);
    CHECK(!loom_redis_is_connected(a));
    struct rwait w = { 0 };
    CHECK_INT(loom_ratelimit_redis_check(a, &l, 1, on_rl, &w), LOOM_ECONNECT);
    pid = start_redis(port);
    wait_connected(loop, a);
    CHECK(loom_redis_is_connected(a));
    CHECK_INT(redis_check(loop, a, &l, 1, &r), LOOM_OK);
    CHECK(r.allowed); /* a fresh server: a fresh bucket */

    loom_redis_free(a);
    loom_redis_free(b);
    loom_loop_free(loop);
    stop_redis(pid);
    CHECK(loom_redis_new(NULL, "http://x", NULL, &err) == NULL);
    CHECK(loom_redis_new(NULL, "redis://h:0", NULL, &err) == NULL);
    CHECK(loom_redis_new(NULL, "redis://u:p@h:1", NULL, &err) == NULL);
}

int main(void)
{
    RUN(test_parse);
    RUN(test_burst_and_rate);
    RUN(test_multi_key);
    RUN(test_bounded);
    RUN(test_threads);
    RUN(test_redis);
    return check_report();
}
