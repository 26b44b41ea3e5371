/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The bus contract, one suite run against each backend: the embedded SQLite log (a temporary
 * file) and NATS JetStream (a real `nats-server -js` started here on a free loopback port with
 * a temporary store, and stopped at the end; skipped with a note when nats-server is not
 * installed). Each test uses subjects and groups of its own, so the suite shares one bus per
 * backend. What it checks: order and dedup, one member per event in a group and every group
 * seeing everything, filters, retries with backoff, parking after max_deliver and replaying
 * from the dead letter, redelivery of unsettled events after ack_wait, new groups starting at
 * the end, resetting a group to a sequence, loop-mode handlers settling later from another
 * thread, prompt wake-ups, group state, and positions surviving a reopen.
 */
#include "check.h"

#include <loom/bus.h>
#include <loom/loop.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAXREC 4096

/* What the handlers saw. */
struct seen {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    size_t n;
    char ids[MAXREC][48];
    uint32_t attempts[MAXREC];
    int member[MAXREC];
    uint64_t t_ns[MAXREC];
    /* behaviour */
    int retry_until; /* answer RETRY while attempt < this (0: never) */
    bool always_retry;
    bool ignore;                       /* answer LATER and never settle (simulates a crash) */
    struct loom_bus_msg *held[MAXREC]; /* what `ignore` kept */
    size_t nheld;
};

struct member {
    struct seen *seen;
    int index;
};

static void seen_init(struct seen *s)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cond, NULL);
}

static void seen_release(struct seen *s)
{
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cond);
}

static void record(struct seen *s, const struct loom_bus_msg *m, int member)
{
    pthread_mutex_lock(&s->mu);
    if (s->n < MAXREC) {
        snprintf(s->ids[s->n], sizeof(s->ids[0]), "%.*s", LOOM_STR_FMT(m->id));
        s->attempts[s->n] = m->attempt;
        s->member[s->n] = member;
        s->t_ns[s->n] = loom_now_ns();
        s->n++;
    }
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mu);
}

static enum loom_bus_verdict on_msg(struct loom_bus_msg *m, void *arg)
{
    struct member *mb = arg;
    struct seen *s = mb->seen;
    record(s, m, mb->index);
    if (s->ignore) {
        pthread_mutex_lock(&s->mu);
        s->held[s->nheld++] = m;
        pthread_mutex_unlock(&s->mu);
        return LOOM_BUS_LATER;
    }
    if (s->always_retry) {
        snprintf(m->reason, sizeof(m->reason), "cannot handle %.*s", LOOM_STR_FMT(m->id));
        return LOOM_BUS_RETRY;
    }
    if ((int)m->attempt < s->retry_until)
        return LOOM_BUS_RETRY;
    return LOOM_BUS_ACK;
}

static bool wait_n(struct seen *s, size_t n, double secs)
{
    uint64_t deadline = loom_now_ns() + (uint64_t)(secs * 1e9);
    pthread_mutex_lock(&s->mu);
    while (s->n < n && loom_now_ns() < deadline) {
        pthread_mutex_unlock(&s->mu);
        usleep(2000);
        pthread_mutex_lock(&s->mu);
    }
    bool ok = s->n >= n;
    pthread_mutex_unlock(&s->mu);
    return ok;
}

static size_t count(struct seen *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->n;
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void publish(struct loom_bus *bus, const char *subject, const char *prefix, int from, int to)
{
    struct loom_bus_event evs[256];
    char ids[256][48];
    char data[256][64];
    int k = 0;
    for (int i = from; i < to; i++) {
        snprintf(ids[k], sizeof(ids[k]), "%s-%05d", prefix, i);
        snprintf(data[k], sizeof(data[k]), "{\"n\":%d}", i);
        evs[k] = (struct loom_bus_event){ loom_str_cstr(ids[k]), loom_str_cstr(subject),
                                          loom_str_cstr(data[k]) };
        if (++k == 256 || i + 1 == to) {
            struct loom_error err = { 0 };
            loom_err e = loom_bus_publish(bus, evs, (size_t)k, &err);
            if (e)
                fprintf(stderr, "publish: %s\n", err.msg);
            CHECK_INT(e, LOOM_OK);
            k = 0;
        }
    }
}

static struct loom_bus_sub *sub(struct loom_bus *bus, const char *group, const char *filter,
                                struct member *mb, uint32_t max_deliver, uint64_t ack_wait_ms)
{
    struct loom_bus_sub_options o = {
        .group = group,
        .filter = filter,
        .max_deliver = max_deliver,
        .ack_wait = ack_wait_ms * LOOM_NS_PER_MS,
        .retry_delay = 50 * LOOM_NS_PER_MS,
        .batch = 32,
        .on_msg = on_msg,
        .arg = mb,
    };
    struct loom_bus_sub *s = NULL;
    struct loom_error err = { 0 };
    loom_err e = loom_bus_subscribe(bus, &o, &s, &err);
    if (e)
        fprintf(stderr, "subscribe %s: %s\n", group, err.msg);
    CHECK_INT(e, LOOM_OK);
    return s;
}

/* ---- the contract ---- */

static struct loom_bus *g_bus;
static const char *g_url;

static void test_order_and_dedup(void)
{
    struct seen s;
    seen_init(&s);
    struct member m = { &s, 0 };
    publish(g_bus, "loom.t1.x", "a", 0, 300);
    publish(g_bus, "loom.t1.x", "a", 100, 200); /* duplicates */
    struct loom_bus_sub *sb = sub(g_bus, "t1", "loom.t1.>", &m, 5, 30000);
    CHECK(wait_n(&s, 300, 10));
    usleep(300000);
    CHECK_UINT(count(&s), 300);
    for (size_t i = 0; i < 300 && i < s.n; i++) {
        char want[48];
        snprintf(want, sizeof(want), "a-%05zu", i);
        CHECK_STR(s.ids[i], want);
        CHECK_UINT(s.attempts[i], 1);
    }
    loom_bus_sub_stop(sb);
    seen_release(&s);
}

static void test_members_and_groups(void)
{
    struct seen s1, s2;
    seen_init(&s1);
    seen_init(&s2);
    struct member a = { &s1, 1 }, b = { &s1, 2 }, c = { &s2, 3 };
    struct loom_bus_sub *sa = sub(g_bus, "t2a", "loom.t2.>", &a, 5, 30000);
    struct loom_bus_sub *sb = sub(g_bus, "t2a", "loom.t2.>", &b, 5, 30000);
    struct loom_bus_sub *sc = sub(g_bus, "t2b", "loom.t2.>", &c, 5, 30000);
    publish(g_bus, "loom.t2.y", "b", 0, 1000);
    CHECK(wait_n(&s1, 1000, 15));
    CHECK(wait_n(&s2, 1000, 15));
    usleep(300000);
    CHECK_UINT(count(&s1), 1000); /* one member each */
    CHECK_UINT(count(&s2), 1000); /* every group sees everything */
    int per[3] = { 0 };
    for (size_t i = 0; i < s1.n; i++)
        per[s1.member[i]]++;
    fprintf(stderr, "  members got %d and %d\n", per[1], per[2]);
    /* The ids are distinct. */
    int dup = 0;
    for (size_t i = 1; i < s1.n; i++)
        for (size_t j = 0; j < i && j < 2000; j++)
            if (strcmp(s1.ids[i], s1.ids[j]) == 0)
                dup++;
    CHECK_INT(dup, 0);
    loom_bus_sub_stop(sa);
    loom_bus_sub_stop(sb);
    loom_bus_sub_stop(sc);
    seen_release(&s1);
    seen_release(&s2);
}

static void test_filter(void)
{
    struct seen s;
    seen_init(&s);
    struct member m = { &s, 0 };
    struct loom_bus_sub *sb = sub(g_bus, "t3", "loom.t3.*.created", &m, 5, 30000);
    publish(g_bus, "loom.t3.model.created", "c", 0, 10);
    publish(g_bus, "loom.t3.model.deleted", "d", 0, 10);
    publish(g_bus, "loom.t3.model.version.created", "e", 0, 10);
    publish(g_bus, "loom.t3.data.created", "f", 0, 10);
    CHECK(wait_n(&s, 20, 10));
    usleep(300000);
    CHECK_UINT(count(&s), 20);
    for (size_t i = 0; i < s.n; i++)
        CHECK(s.ids[i][0] == 'c' || s.ids[i][0] == 'f');
    /* The same group with another filter is refused. */
    struct loom_bus_sub_options o = {
        .group = "t3", .filter = "loom.t3.>", .on_msg = on_msg, .arg = &m
    };
    struct loom_bus_sub *other = NULL;
    struct loom_error err = { 0 };
    CHECK_INT(loom_bus_subscribe(g_bus, &o, &other, &err), LOOM_ECONFLICT);
    loom_bus_sub_stop(sb);
    seen_release(&s);
    CHECK(loom_bus_subject_match(LOOM_STR("loom.>"), LOOM_STR("loom.a.b")));
    CHECK(!loom_bus_subject_match(LOOM_STR("loom.>"), LOOM_STR("loom")));
    CHECK(loom_bus_subject_match(LOOM_STR("loom.*.b"), LOOM_STR("loom.a.b")));
    CHECK(!loom_bus_subject_match(LOOM_STR("loom.*.b"), LOOM_STR("loom.a.b.c")));
    CHECK(!loom_bus_filter_valid(LOOM_STR("loom.>.x")));
    CHECK(!loom_bus_subject_valid(LOOM_STR("other.x")));
    CHECK(!loom_bus_subject_valid(LOOM_STR("loom..x")));
}

static void test_retry_then_ack(void)
{
    struct seen s;
    seen_init(&s);
    s.retry_until = 3; /* attempts 1 and 2 fail */
    struct member m = { &s, 0 };
    struct loom_bus_sub *sb = sub(g_bus, "t4", "loom.t4.>", &m, 5, 30000);
    uint64_t t0 = loom_now_ns();
    publish(g_bus, "loom.t4.x", "g", 0, 5);
    CHECK(wait_n(&s, 15, 10));
    usleep(400000);
    CHECK_UINT(count(&s), 15);
    int by_attempt[4] = { 0 };
    for (size_t i = 0; i < s.n; i++)
        if (s.attempts[i] <= 3)
            by_attempt[s.attempts[i]]++;
    CHECK_INT(by_attempt[1], 5);
    CHECK_INT(by_attempt[2], 5);
    CHECK_INT(by_attempt[3], 5);
    /* Backoff: 50 ms then 100 ms at least. */
    CHECK(s.t_ns[s.n - 1] - t0 >= 140 * LOOM_NS_PER_MS);
    struct loom_bus_group_info info;
    struct loom_error err = { 0 };
    CHECK_INT(loom_bus_group_info(g_bus, "t4", &info, &err), LOOM_OK);
    CHECK_UINT(info.pending, 0);
    CHECK_UINT(info.parked, 0);
    loom_bus_sub_stop(sb);
    seen_release(&s);
}

struct parked_list {
    size_t n;
    uint64_t pseq[16];
    char ids[16][48];
    uint32_t deliveries[16];
    char reason[16][128];
};

static loom_err collect_parked(const struct loom_bus_parked *p, void *arg)
{
    struct parked_list *l = arg;
    if (l->n < 16) {
        l->pseq[l->n] = p->pseq;
        snprintf(l->ids[l->n], sizeof(l->ids[0]), "%.*s", LOOM_STR_FMT(p->id));
        snprintf(l->reason[l->n], sizeof(l->reason[0]), "%.*s", LOOM_STR_FMT(p->reason));
        l->deliveries[l->n] = p->deliveries;
        CHECK_SLICE(p->data, "{\"n\":0}");
        CHECK_SLICE(p->subject, "loom.t5.x");
        l->n++;
    }
    return LOOM_OK;
}

static void test_poison_parked_and_replayed(void)
{
    struct seen s, other;
    seen_init(&s);
    seen_init(&other);
    s.always_retry = true;
    struct member m = { &s, 0 }, mo = { &other, 0 };
    struct loom_bus_sub *sb = sub(g_bus, "t5", "loom.t5.>", &m, 3, 30000);
    struct loom_bus_sub *so = sub(g_bus, "t5other", "loom.t5.>", &mo, 3, 30000);
    publish(g_bus, "loom.t5.x", "p", 0, 1);
    CHECK(wait_n(&s, 3, 10));
    CHECK(wait_n(&other, 1, 10));
    usleep(800000);
    CHECK_UINT(count(&s), 3); /* not retried forever */
    struct loom_error err = { 0 };
    struct loom_bus_group_info info;
    CHECK_INT(loom_bus_group_info(g_bus, "t5", &info, &err), LOOM_OK);
    CHECK_UINT(info.parked, 1);
    CHECK_UINT(info.pending, 0);
    struct parked_list pl = { 0 };
    CHECK_INT(loom_bus_parked_list(g_bus, "t5", 0, 10, collect_parked, &pl, &err), LOOM_OK);
    CHECK_UINT(pl.n, 1);
    CHECK_STR(pl.ids[0], "p-00000");
    CHECK_UINT(pl.deliveries[0], 3);
    CHECK_CONTAINS(pl.reason[0], "failed 3 attempts: cannot handle p-00000");
    /* Replay it: the group sees it again (fresh attempts), the other group does not. */
    s.always_retry = false;
    size_t replayed = 0;
    CHECK_INT(loom_bus_parked_replay(g_bus, "t5", 0, &replayed, &err), LOOM_OK);
    CHECK_UINT(replayed, 1);
    CHECK(wait_n(&s, 4, 10));
    usleep(500000);
    CHECK_UINT(count(&s), 4);
    CHECK_STR(s.ids[3], "p-00000");
    CHECK_UINT(s.attempts[3], 1);
    CHECK_UINT(count(&other), 1);
    memset(&pl, 0, sizeof(pl));
    CHECK_INT(loom_bus_parked_list(g_bus, "t5", 0, 10, collect_parked, &pl, &err), LOOM_OK);
    CHECK_UINT(pl.n, 0);
    CHECK_INT(loom_bus_parked_replay(g_bus, "t5", 12345, &replayed, &err), LOOM_ENOTFOUND);
    loom_bus_sub_stop(sb);
    loom_bus_sub_stop(so);
    seen_release(&s);
    seen_release(&other);
}

static void test_unsettled_redelivered(void)
{
    struct seen s1, s2;
    seen_init(&s1);
    seen_init(&s2);
    s1.ignore = true; /* takes the events and never settles: a crashed member */
    struct member a = { &s1, 1 }, b = { &s2, 2 };
    struct loom_bus_sub *sa = sub(g_bus, "t6", "loom.t6.>", &a, 5, 1000);
    publish(g_bus, "loom.t6.x", "u", 0, 20);
    CHECK(wait_n(&s1, 20, 10));
    loom_bus_sub_stop(sa); /* released unsettled */
    uint64_t t0 = loom_now_ns();
    struct loom_bus_sub *sb = sub(g_bus, "t6", "loom.t6.>", &b, 5, 1000);
    CHECK(wait_n(&s2, 20, 10));
    uint64_t took = loom_now_ns() - t0;
    fprintf(stderr, "  redelivered after %.2f s\n", (double)took / 1e9);
    CHECK(took < 5 * LOOM_NS_PER_SEC);
    for (size_t i = 0; i < s2.n; i++)
        CHECK(s2.attempts[i] >= 2);
    loom_bus_sub_stop(sb);
    /* Settling after the stop only frees them (and the stopped subscription with the last). */
    for (size_t i = 0; i < s1.nheld; i++)
        loom_bus_msg_settle(s1.held[i], LOOM_BUS_ACK, NULL);
    seen_release(&s1);
    seen_release(&s2);
}

static void test_start_new_and_reset(void)
{
    struct seen s;
    seen_init(&s);
    struct member m = { &s, 0 };
    publish(g_bus, "loom.t7.x", "old", 0, 10);
    struct loom_bus_sub_options o = { .group = "t7",
                                      .filter = "loom.t7.>",
                                      .start = LOOM_BUS_START_NEW,
                                      .on_msg = on_msg,
                                      .arg = &m };
    struct loom_bus_sub *sb = NULL;
    struct loom_error err = { 0 };
    CHECK_INT(loom_bus_subscribe(g_bus, &o, &sb, &err), LOOM_OK);
    publish(g_bus, "loom.t7.x", "new", 0, 5);
    CHECK(wait_n(&s, 5, 10));
    usleep(300000);
    CHECK_UINT(count(&s), 5);
    CHECK_STR(s.ids[0], "new-00000");
    loom_bus_sub_stop(sb);

    /* Replay from the beginning: everything again. */
    struct loom_bus_group_info info;
    CHECK_INT(loom_bus_group_info(g_bus, "t7", &info, &err), LOOM_OK);
    CHECK_INT(loom_bus_group_reset(g_bus, "t7", 1, 0, &err), LOOM_OK);
    CHECK_INT(loom_bus_group_reset(g_bus, "nosuchgroup", 1, 0, &err), LOOM_ENOTFOUND);
    CHECK_INT(loom_bus_subscribe(g_bus, &o, &sb, &err), LOOM_OK);
    CHECK(wait_n(&s, 20, 10));
    usleep(300000);
    CHECK_UINT(count(&s), 20);
    CHECK_STR(s.ids[5], "old-00000");
    loom_bus_sub_stop(sb);
    seen_release(&s);
}

/* Loop mode: handlers on a loop thread answer LATER and a worker thread settles. */
struct later {
    pthread_mutex_t mu;
    struct loom_bus_msg *q[64];
    size_t n;
    atomic_int handled;
    atomic_bool on_loop;
    struct loom_loop *loop;
};

static enum loom_bus_verdict on_msg_later(struct loom_bus_msg *m, void *arg)
{
    struct later *l = arg;
    if (loom_loop_current() == l->loop)
        atomic_store(&l->on_loop, true);
    pthread_mutex_lock(&l->mu);
    if (l->n < 64)
        l->q[l->n++] = m;
    pthread_mutex_unlock(&l->mu);
    return LOOM_BUS_LATER;
}

static void *loop_thread(void *arg)
{
    loom_loop_run(arg);
    return NULL;
}

static void test_loop_mode_later(void)
{
    struct later l;
    memset(&l, 0, sizeof(l));
    pthread_mutex_init(&l.mu, NULL);
    l.loop = loom_loop_new();
    pthread_t th;
    pthread_create(&th, NULL, loop_thread, l.loop);
    struct loom_bus_sub_options o = {
        .group = "t8", .filter = "loom.t8.>", .loop = l.loop, .on_msg = on_msg_later, .arg = &l
    };
    struct loom_bus_sub *sb = NULL;
    struct loom_error err = { 0 };
    CHECK_INT(loom_bus_subscribe(g_bus, &o, &sb, &err), LOOM_OK);
    publish(g_bus, "loom.t8.x", "l", 0, 30);
    uint64_t deadline = loom_now_ns() + 10 * LOOM_NS_PER_SEC;
    int settled = 0;
    while (settled < 30 && loom_now_ns() < deadline) {
        pthread_mutex_lock(&l.mu);
        size_t n = l.n;
        struct loom_bus_msg *q[64];
        memcpy(q, l.q, n * sizeof(q[0]));
        l.n = 0;
        pthread_mutex_unlock(&l.mu);
        for (size_t i = 0; i < n; i++)
            loom_bus_msg_settle(q[i], LOOM_BUS_ACK, NULL);
        settled += (int)n;
        usleep(2000);
    }
    CHECK_INT(settled, 30);
    CHECK(atomic_load(&l.on_loop));
    usleep(300000);
    struct loom_bus_group_info info;
    CHECK_INT(loom_bus_group_info(g_bus, "t8", &info, &err), LOOM_OK);
    CHECK_UINT(info.pending, 0);
    CHECK_UINT(info.lag, 0);
    loom_loop_stop(l.loop);
    pthread_join(th, NULL);
    loom_bus_sub_stop(sb);
    loom_loop_free(l.loop);
    pthread_mutex_destroy(&l.mu);
}

static void test_prompt_wakeup(void)
{
    struct seen s;
    seen_init(&s);
    struct member m = { &s, 0 };
    struct loom_bus_sub *sb = sub(g_bus, "t9", "loom.t9.>", &m, 5, 30000);
    usleep(1500000); /* the pump is idle and waiting */
    double worst = 0;
    for (int i = 0; i < 10; i++) {
        uint64_t t0 = loom_now_ns();
        publish(g_bus, "loom.t9.x", "w", i, i + 1);
        CHECK(wait_n(&s, (size_t)i + 1, 5));
        double ms = (double)(s.t_ns[i] - t0) / 1e6;
        worst = ms > worst ? ms : worst;
        usleep(100000);
    }
    fprintf(stderr, "  publish to handler: worst %.2f ms\n", worst);
    CHECK(worst < 100);
    loom_bus_sub_stop(sb);
    seen_release(&s);
}

static void test_reopen_keeps_position(void)
{
    struct seen s;
    seen_init(&s);
    struct member m = { &s, 0 };
    struct loom_bus_sub *sb = sub(g_bus, "t10", "loom.t10.>", &m, 5, 30000);
    publish(g_bus, "loom.t10.x", "r", 0, 50);
    CHECK(wait_n(&s, 50, 10));
    usleep(300000);
    loom_bus_sub_stop(sb);
    char inst[LOOM_BUS_INSTANCE_MAX];
    loom_bus_instance(g_bus, inst);
    CHECK(inst[0] != '\0');
    loom_bus_close(g_bus);
    struct loom_error err = { 0 };
    CHECK_INT(loom_bus_open(g_url, NULL, &g_bus, &err), LOOM_OK);
    publish(g_bus, "loom.t10.x", "r", 50, 60);
    sb = sub(g_bus, "t10", "loom.t10.>", &m, 5, 30000);
    CHECK(wait_n(&s, 60, 10));
    usleep(300000);
    CHECK_UINT(count(&s), 60);
    CHECK_STR(s.ids[50], "r-00050");
    char inst2[LOOM_BUS_INSTANCE_MAX];
    loom_bus_instance(g_bus, inst2);
    CHECK_STR(inst, inst2);
    loom_bus_sub_stop(sb);
    seen_release(&s);
}

static loom_err count_group(const char *name, void *arg)
{
    if (strcmp(name, "t1") == 0 || strcmp(name, "t2a") == 0)
        (*(int *)arg)++;
    /* The callback may call into the bus (the ingest service reads each group's lag). */
    struct loom_bus_group_info info;
    struct loom_error err = { 0 };
    CHECK_INT(loom_bus_group_info(g_bus, name, &info, &err), LOOM_OK);
    return LOOM_OK;
}

static void test_group_list(void)
{
    int found = 0;
    struct loom_error err = { 0 };
    CHECK_INT(loom_bus_group_list(g_bus, count_group, &found, &err), LOOM_OK);
    CHECK_INT(found, 2);
}

static void test_refusals(void)
{
    struct loom_error err = { 0 };
    struct loom_bus_event ev = { LOOM_STR("x"), LOOM_STR("nope"), LOOM_STR("{}") };
    CHECK_INT(loom_bus_publish(g_bus, &ev, 1, &err), LOOM_EINVAL);
    ev.subject = LOOM_STR("loom.ok");
    ev.id = LOOM_STR("has space");
    CHECK_INT(loom_bus_publish(g_bus, &ev, 1, &err), LOOM_EINVAL);
    struct member m = { NULL, 0 };
    struct loom_bus_sub_options o = { .group = "bad.group", .on_msg = on_msg, .arg = &m };
    struct loom_bus_sub *sb = NULL;
    CHECK_INT(loom_bus_subscribe(g_bus, &o, &sb, &err), LOOM_EINVAL);
    o.group = "ok";
    o.on_msg = NULL;
    CHECK_INT(loom_bus_subscribe(g_bus, &o, &sb, &err), LOOM_EINVAL);
    struct loom_bus *b = NULL;
    CHECK_INT(loom_bus_open("kafka://x", NULL, &b, &err), LOOM_EINVAL);
    CHECK_INT(loom_bus_open("sqlite:/tmp/x.db?bogus=1", NULL, &b, &err), LOOM_EINVAL);
}

static void run_suite(const char *url)
{
    fprintf(stderr, "== %s\n", url);
    g_url = url;
    struct loom_error err = { 0 };
    loom_err e = loom_bus_open(url, NULL, &g_bus, &err);
    if (e)
        fprintf(stderr, "open: %s\n", err.msg);
    CHECK_INT(e, LOOM_OK);
    if (e)
        return;
    RUN(test_order_and_dedup);
    RUN(test_members_and_groups);
    RUN(test_filter);
    RUN(test_retry_then_ack);
    RUN(test_poison_parked_and_replayed);
    RUN(test_unsettled_redelivered);
    RUN(test_start_new_and_reset);
    RUN(test_loop_mode_later);
    RUN(test_prompt_wakeup);
    RUN(test_reopen_keeps_position);
    RUN(test_group_list);
    RUN(test_refusals);
    loom_bus_close(g_bus);
}

/* ---- the SQLite backend alone ---- */

/* Retention by size keeps the newest events (the oldest bytes past max_bytes are deleted). */
static const char *g_dir;

static void test_sqlite_retention(void)
{
    char url[300];
    snprintf(url, sizeof(url), "sqlite:%s/retention.db?max_bytes=300", g_dir);
    struct loom_bus *bus = NULL;
    struct loom_error err = { 0 };
    CHECK_INT(loom_bus_open(url, NULL, &bus, &err), LOOM_OK);
    if (!bus)
        return;
    publish(bus, "loom.r.x", "r", 0, 100); /* about 1,000 bytes; the first publish runs retention */
    struct seen s;
    seen_init(&s);
    struct member m = { &s, 0 };
    struct loom_bus_sub *sb = sub(bus, "r", "loom.r.>", &m, 5, 30000);
    CHECK(wait_n(&s, 20, 10));
    usleep(300000);
    size_t n = count(&s);
    CHECK(n >= 20 && n < 50);
    if (n)
        CHECK_STR(s.ids[n - 1], "r-00099");
    loom_bus_sub_stop(sb);
    seen_release(&s);
    loom_bus_close(bus);
}

/* Under a steady stream of publishes the WAL starts over once it passes 64 MiB: 60,000 events
 * with random dedup keys write some 200 MiB of WAL frames. */
static void test_sqlite_wal_restarts(void)
{
    char url[300], wal[300];
    snprintf(url, sizeof(url), "sqlite:%s/wal.db", g_dir);
    snprintf(wal, sizeof(wal), "%s/wal.db-wal", g_dir);
    struct loom_bus *bus = NULL;
    struct loom_error err = { 0 };
    CHECK_INT(loom_bus_open(url, NULL, &bus, &err), LOOM_OK);
    if (!bus)
        return;
    publish(bus, "loom.w.x", "w", 0, 60000);
    struct stat st;
    CHECK_INT(stat(wal, &st), 0);
    CHECK(st.st_size < (off_t)128 << 20);
    loom_bus_close(bus);
}

/* ---- a real nats-server ---- */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(a);
    bind(fd, (struct sockaddr *)&a, sizeof(a));
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd);
    return ntohs(a.sin_port);
}

static bool port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

static const char *find_nats_server(void)
{
    static const char *const paths[] = { "/usr/bin/nats-server", "/usr/sbin/nats-server",
                                         "/usr/local/bin/nats-server" };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(paths); i++)
        if (access(paths[i], X_OK) == 0)
            return paths[i];
    return NULL;
}

static pid_t start_nats(const char *bin, int port, const char *dir)
{
    pid_t pid = fork();
    if (pid == 0) {
        char p[16];
        snprintf(p, sizeof(p), "%d", port);
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execl(bin, bin, "-js", "-a", "127.0.0.1", "-p", p, "-sd", dir, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500 && !port_open(port); i++)
        usleep(10000);
    return pid;
}

/* Processes that open a fresh bus at the same moment all get it (turning the new file to WAL
 * once failed in all but one with "database is locked"). */
static void test_sqlite_concurrent_open(void)
{
    for (int round = 0; round < 10; round++) {
        char url[300];
        snprintf(url, sizeof(url), "sqlite:%s/fresh%d.db", g_dir, round);
        int go[2];
        CHECK_INT(pipe(go), 0);
        pid_t kids[6];
        for (int i = 0; i < 6; i++) {
            kids[i] = fork();
            if (kids[i] == 0) {
                char c;
                close(go[1]);
                if (read(go[0], &c, 1) != 0) /* EOF: everyone starts together */
                    _exit(3);
                struct loom_bus *b = NULL;
                struct loom_error err = { 0 };
                loom_err e = loom_bus_open(url, NULL, &b, &err);
                if (e)
                    fprintf(stderr, "open: %s\n", err.msg);
                else
                    loom_bus_close(b);
                _exit(e ? 1 : 0);
            }
        }
        close(go[0]);
        close(go[1]);
        int ok = 0;
        for (int i = 0; i < 6; i++) {
            int st = 0;
            waitpid(kids[i], &st, 0);
            ok += WIFEXITED(st) && WEXITSTATUS(st) == 0;
        }
        CHECK_INT(ok, 6);
    }
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    char dir[] = "/tmp/loom-test-bus-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char url[256];
    snprintf(url, sizeof(url), "sqlite:%s/bus.db", dir);
    run_suite(url);
    g_dir = dir;
    RUN(test_sqlite_retention);
    RUN(test_sqlite_wal_restarts);
    RUN(test_sqlite_concurrent_open);

    const char *bin = find_nats_server();
    if (!bin) {
        fprintf(stderr, "nats-server not installed: the NATS half is skipped "
                        "(scripts/deps.sh test installs it)\n");
    } else {
        char sd[300];
        snprintf(sd, sizeof(sd), "%s/nats", dir);
        mkdir(sd, 0700);
        int port = free_port();
        pid_t pid = start_nats(bin, port, sd);
        snprintf(url, sizeof(url), "nats://127.0.0.1:%d", port);
        run_suite(url);
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
    }
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return check_report();
}
