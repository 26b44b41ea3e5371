/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The producer and consumer that tests/system/test_bus_kill.py kills and restarts. They use
 * the library exactly as a service would:
 *
 *   bus_tool produce --bus URL --store URL --count N [--batch B] [--rate EV_PER_S]
 *       commits, B at a time, a row (n, id) in its table `produced` and the event
 *       loom.test.produced {"n": n} in the same transaction (loom_outbox_add_event); an outbox
 *       relay publishes them. Restarted, it resumes after the last committed n. Once all N are
 *       committed and published it prints "done" and keeps relaying until SIGTERM (a broker
 *       that restarts later gets what it may have lost).
 *   bus_tool consume --bus URL --store URL --group G [--ack-wait MS]
 *       applies each event exactly once to its own store: loom_consume_batch records the event
 *       id in loom_processed and inserts a row into `effects` (no unique key: a second
 *       application would show as a second row) in one transaction.
 *
 *   bus_tool latency --bus URL [--group G] [--filter F] [--batch B]
 *       for bench/bus.sh: reads events whose data.record.sent_ns is the wall time a client sent
 *       them, B at most per fetch (256), and on SIGTERM prints `RESULT count=N p50_ms=..
 *       p99_ms=.. max_ms=.. bus_to_consumer_p99_ms=..`: the time from the client's POST to a
 *       consumer seeing the event, and the p99 from the bus storing it (its time) to then.
 *
 * All print progress lines to stdout and exit 0 on SIGTERM or SIGINT.
 */
#include <loom/bus.h>
#include <loom/event.h>
#include <loom/json.h>
#include <loom/log.h>
#include <loom/outbox.h>
#include <loom/store.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static atomic_bool stopping;

static void *wait_signal(void *arg)
{
    sigset_t *set = arg;
    int sig = 0;
    sigwait(set, &sig);
    atomic_store(&stopping, true);
    return NULL;
}

static const char *opt(int argc, char **argv, const char *name, const char *def)
{
    size_t n = strlen(name);
    for (int i = 2; i < argc; i++) {
        if (strncmp(argv[i], name, n) == 0 && argv[i][n] == '=')
            return argv[i] + n + 1;
        if (strcmp(argv[i], name) == 0 && i + 1 < argc)
            return argv[i + 1];
    }
    return def;
}

static void die(const char *what, const struct loom_error *err)
{
    fprintf(stderr, "bus_tool: %s: %s\n", what, err->msg);
    exit(1);
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = { (time_t)(ns / LOOM_NS_PER_SEC), (long)(ns % LOOM_NS_PER_SEC) };
    nanosleep(&ts, NULL);
}

/* ---- produce ---- */

static const char produced_v1[] =
    "CREATE TABLE IF NOT EXISTS produced (n BIGINT PRIMARY KEY, id TEXT NOT NULL)";
static const struct loom_migration produce_migrations[] = { { 1, produced_v1 } };

static loom_err max_row(const struct loom_sql_row *row, void *arg)
{
    if (row->cols[0].type == LOOM_SQL_INT)
        *(int64_t *)arg = row->cols[0].i;
    return LOOM_OK;
}

struct produce_tx {
    int64_t from, to;
};

static loom_err produce_batch(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct produce_tx *t = arg;
    for (int64_t n = t->from; n < t->to; n++) {
        char data[64], id[LOOM_EVENT_ID_MAX + 1];
        snprintf(data, sizeof(data), "{\"n\":%lld}", (long long)n);
        struct loom_event_spec spec = { .source = "/loom/bus-tool",
                                        .type = "loom.test.produced",
                                        .data = loom_str_cstr(data) };
        loom_err e = loom_outbox_add_event(db, &spec, NULL, id, err);
        if (e)
            return e;
        struct loom_sql_value p[] = { LOOM_SQL_INT_V(n), LOOM_SQL_CSTR_V(id) };
        if ((e = loom_db_exec(db, "INSERT INTO produced (n, id) VALUES ($1, $2)", p, 2, NULL, NULL,
                              NULL, err)))
            return e;
    }
    return LOOM_OK;
}

static int produce(int argc, char **argv, struct loom_bus *bus, struct loom_store *store)
{
    struct loom_error err = { 0 };
    int64_t count = atoll(opt(argc, argv, "--count", "100000"));
    int64_t batch = atoll(opt(argc, argv, "--batch", "100"));
    double rate = atof(opt(argc, argv, "--rate", "0"));
    if (loom_outbox_migrate(store, &err) ||
        loom_store_migrate(store, "bus_tool_produce", produce_migrations, 1, &err))
        die("migrate", &err);
    struct loom_outbox_relay_options ro = { .store = store,
                                            .bus = bus,
                                            .interval = 50 * LOOM_NS_PER_MS };
    struct loom_outbox_relay *relay = NULL;
    if (loom_outbox_relay_start(&ro, &relay, &err))
        die("relay", &err);
    struct loom_db *db;
    int64_t next = -1;
    if (loom_store_acquire(store, &db, &err))
        die("store", &err);
    if (loom_db_exec(db, "SELECT max(n) FROM produced", NULL, 0, max_row, &next, NULL, &err))
        die("resume", &err);
    loom_store_release(store, db);
    next++;
    printf("resume %lld\n", (long long)next);
    fflush(stdout);
    uint64_t t0 = loom_now_ns();
    int64_t start = next;
    while (next < count && !atomic_load(&stopping)) {
        struct produce_tx t = { next, LOOM_MIN(next + batch, count) };
        loom_err e = loom_store_tx(store, produce_batch, &t, &err);
        if (e) {
            fprintf(stderr, "bus_tool: produce: %s (retrying)\n", err.msg);
            sleep_ns(50 * LOOM_NS_PER_MS);
            continue;
        }
        loom_outbox_relay_kick(relay);
        next = t.to;
        if (next % 10000 < batch) {
            printf("produced %lld\n", (long long)next);
            fflush(stdout);
        }
        if (rate > 0) {
            uint64_t due = t0 + (uint64_t)((double)(next - start) / rate * 1e9);
            uint64_t now = loom_now_ns();
            if (due > now)
                sleep_ns(due - now);
        }
    }
    if (next >= count) {
        while (!atomic_load(&stopping) &&
               loom_outbox_relay_flush(relay, 500 * LOOM_NS_PER_MS, &err) != LOOM_OK)
            ;
        if (!atomic_load(&stopping)) {
            printf("done %lld\n", (long long)count);
            fflush(stdout);
        }
    }
    while (!atomic_load(&stopping))
        sleep_ns(50 * LOOM_NS_PER_MS);
    loom_outbox_relay_stop(relay);
    return 0;
}

/* ---- consume ---- */

static const char effects_v1[] =
    "CREATE TABLE IF NOT EXISTS effects (id TEXT NOT NULL, n BIGINT NOT NULL, at_ms BIGINT NOT "
    "NULL)";
static const struct loom_migration consume_migrations[] = { { 1, effects_v1 } };

struct consumer {
    struct loom_store *store;
    atomic_uint_fast64_t applied, batches;
};

static loom_err apply(struct loom_db *db, struct loom_bus_msg *msg, void *arg,
                      struct loom_error *err)
{
    LOOM_UNUSED(arg);
    struct loom_arena a;
    loom_arena_init(&a, 0);
    struct loom_event ev;
    loom_err e = loom_event_parse(msg->data.ptr, msg->data.len, &a, &ev, err);
    struct loom_json_doc doc;
    int64_t n = -1;
    if (!e)
        e = loom_json_parse(ev.data.ptr, ev.data.len, NULL, &a, &doc, err);
    if (!e) {
        int v = loom_json_obj_get(&doc, 0, "n");
        if (v < 0 || loom_json_to_i64(&doc, v, &n))
            e = loom_error_set(err, LOOM_EINVAL, "no n in the event");
    }
    if (!e) {
        struct loom_sql_value p[] = { LOOM_SQL_TEXT_V(ev.id), LOOM_SQL_INT_V(n),
                                      LOOM_SQL_INT_V(loom_wall_ns() / 1000000) };
        e = loom_db_exec(db, "INSERT INTO effects (id, n, at_ms) VALUES ($1, $2, $3)", p, 3, NULL,
                         NULL, NULL, err);
    }
    loom_arena_release(&a);
    return e;
}

static void on_batch(struct loom_bus_msg *const *msgs, size_t n, void *arg)
{
    struct consumer *c = arg;
    loom_consume_batch(c->store, "bus-tool", msgs, n, apply, NULL);
    atomic_fetch_add(&c->applied, n);
    atomic_fetch_add(&c->batches, 1);
}

static int consume(int argc, char **argv, struct loom_bus *bus, struct loom_store *store)
{
    struct loom_error err = { 0 };
    if (loom_outbox_migrate(store, &err) ||
        loom_store_migrate(store, "bus_tool_consume", consume_migrations, 1, &err))
        die("migrate", &err);
    struct consumer c = { .store = store };
    struct loom_bus_sub_options so = {
        .group = opt(argc, argv, "--group", "kill-test"),
        .filter = "loom.test.>",
        .ack_wait = (uint64_t)atoll(opt(argc, argv, "--ack-wait", "2000")) * LOOM_NS_PER_MS,
        .batch = (size_t)atoll(opt(argc, argv, "--batch", "256")),
        .on_batch = on_batch,
        .arg = &c,
    };
    struct loom_bus_sub *sub = NULL;
    while (loom_bus_subscribe(bus, &so, &sub, &err)) {
        if (atomic_load(&stopping))
            return 0;
        fprintf(stderr, "bus_tool: subscribe: %s (retrying)\n", err.msg);
        sleep_ns(200 * LOOM_NS_PER_MS);
    }
    printf("subscribed\n");
    fflush(stdout);
    uint64_t last = 0;
    while (!atomic_load(&stopping)) {
        sleep_ns(100 * LOOM_NS_PER_MS);
        uint64_t n = atomic_load(&c.applied);
        if (n / 10000 != last / 10000) {
            printf("handled %llu\n", (unsigned long long)n);
            fflush(stdout);
        }
        last = n;
    }
    loom_bus_sub_stop(sub);
    return 0;
}

/* ---- latency ---- */

struct latency {
    pthread_mutex_t mu;
    double *ms, *bus_ms; /* from the client's send; from when the bus stored the event */
    size_t n, cap;
};

static void on_latency(struct loom_bus_msg *const *msgs, size_t n, void *arg)
{
    struct latency *l = arg;
    int64_t now = loom_wall_ns();
    struct loom_arena a;
    loom_arena_init(&a, 0);
    for (size_t i = 0; i < n; i++) {
        loom_arena_reset(&a);
        struct loom_event ev;
        struct loom_json_doc doc;
        if (loom_event_parse(msgs[i]->data.ptr, msgs[i]->data.len, &a, &ev, NULL) ||
            loom_json_parse(ev.data.ptr, ev.data.len, NULL, &a, &doc, NULL))
            continue;
        int rec = loom_json_obj_get(&doc, 0, "record");
        int t = rec >= 0 ? loom_json_obj_get(&doc, rec, "sent_ns") : -1;
        int64_t sent;
        if (t < 0 || loom_json_to_i64(&doc, t, &sent) || sent <= 0)
            continue;
        pthread_mutex_lock(&l->mu);
        if (l->n == l->cap) {
            l->cap = l->cap ? 2 * l->cap : 65536;
            l->ms = loom_realloc(l->ms, l->cap * sizeof(*l->ms));
            l->bus_ms = loom_realloc(l->bus_ms, l->cap * sizeof(*l->bus_ms));
        }
        l->bus_ms[l->n] = (double)(now - msgs[i]->time_ns) / 1e6;
        l->ms[l->n++] = (double)(now - sent) / 1e6;
        pthread_mutex_unlock(&l->mu);
    }
    loom_arena_release(&a);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int latency(int argc, char **argv, struct loom_bus *bus)
{
    struct loom_error err = { 0 };
    struct latency l = { .mu = PTHREAD_MUTEX_INITIALIZER };
    struct loom_bus_sub_options so = {
        .group = opt(argc, argv, "--group", "bench-latency"),
        .filter = opt(argc, argv, "--filter", "loom.data.ingested.>"),
        .start = LOOM_BUS_START_NEW,
        .batch = (size_t)atoi(opt(argc, argv, "--batch", "256")),
        .on_batch = on_latency,
        .arg = &l,
    };
    struct loom_bus_sub *sub = NULL;
    if (loom_bus_subscribe(bus, &so, &sub, &err))
        die("subscribe", &err);
    printf("subscribed\n");
    fflush(stdout);
    while (!atomic_load(&stopping))
        sleep_ns(50 * LOOM_NS_PER_MS);
    loom_bus_sub_stop(sub);
    qsort(l.ms, l.n, sizeof(*l.ms), cmp_double);
    qsort(l.bus_ms, l.n, sizeof(*l.bus_ms), cmp_double);
    double p50 = l.n ? l.ms[l.n / 2] : 0, p99 = l.n ? l.ms[(size_t)((double)l.n * 0.99)] : 0;
    double b99 = l.n ? l.bus_ms[(size_t)((double)l.n * 0.99)] : 0;
    printf("RESULT count=%zu p50_ms=%.2f p99_ms=%.2f max_ms=%.2f bus_to_consumer_p99_ms=%.2f\n",
           l.n, p50, p99, l.n ? l.ms[l.n - 1] : 0.0, b99);
    free(l.ms);
    free(l.bus_ms);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 ||
        (strcmp(argv[1], "produce") && strcmp(argv[1], "consume") && strcmp(argv[1], "latency"))) {
        fprintf(stderr, "usage: bus_tool produce|consume|latency --bus URL [--store URL] "
                        "[options]\n");
        return 2;
    }
    static sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    pthread_t th;
    pthread_create(&th, NULL, wait_signal, &set);
    pthread_detach(th);
    loom_log_set_level(LOOM_LOG_WARN);

    struct loom_error err = { 0 };
    struct loom_bus *bus = NULL;
    struct loom_store *store = NULL;
    struct loom_bus_options bo = { .client_name = argv[1] };
    if (loom_bus_open(opt(argc, argv, "--bus", ""), &bo, &bus, &err))
        die("bus", &err);
    if (strcmp(argv[1], "latency") == 0) {
        int rc = latency(argc, argv, bus);
        loom_bus_close(bus);
        return rc;
    }
    if (loom_store_open(opt(argc, argv, "--store", ""), NULL, &store, &err))
        die("store", &err);
    int rc = strcmp(argv[1], "produce") == 0 ? produce(argc, argv, bus, store)
                                             : consume(argc, argv, bus, store);
    loom_store_close(store);
    loom_bus_close(bus);
    return rc;
}
