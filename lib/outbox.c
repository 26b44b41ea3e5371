/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The transactional outbox, its relay, and idempotent consumers (see loom/outbox.h for why).
 * Tables, in the service's own store:
 *   loom_outbox     id (the event id: adding it twice is a no-op), pos (a UUIDv7: the order
 *                   rows are published in), subject, data, created_ms, sent_ms (NULL: not yet)
 *                   and instance (the broker incarnation that acknowledged it)
 *   loom_processed  (consumer, event_id): what each consumer has applied, and when
 * The relay is a thread that sleeps on a condition variable until kicked or until its poll
 * interval passes, then publishes unsent rows in batches, in pos order, and marks them sent in
 * one transaction per batch. A failed publish is retried with the same batch after a backoff;
 * what the bus already got is dropped by its dedup. When the bus reports another incarnation
 * than the one that acknowledged kept rows, those rows are marked unsent again.
 */
#include <loom/id.h>
#include <loom/log.h>
#include <loom/metrics.h>
#include <loom/outbox.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char outbox_v1[] =
    "CREATE TABLE IF NOT EXISTS loom_outbox ("
    " id TEXT PRIMARY KEY, pos TEXT NOT NULL, subject TEXT NOT NULL, data TEXT NOT NULL,"
    " created_ms BIGINT NOT NULL, sent_ms BIGINT, instance TEXT);"
    "CREATE INDEX IF NOT EXISTS loom_outbox_unsent ON loom_outbox (sent_ms, pos);"
    "CREATE TABLE IF NOT EXISTS loom_processed ("
    " consumer TEXT NOT NULL, event_id TEXT NOT NULL, at_ms BIGINT NOT NULL,"
    " PRIMARY KEY (consumer, event_id));"
    "CREATE INDEX IF NOT EXISTS loom_processed_at ON loom_processed (at_ms)";

static const struct loom_migration outbox_migrations[] = { { 1, outbox_v1 } };

static int64_t now_ms(void)
{
    return loom_wall_ns() / (int64_t)LOOM_NS_PER_MS;
}

loom_err loom_outbox_migrate(struct loom_store *store, struct loom_error *err)
{
    return loom_store_migrate(store, "loom_outbox", outbox_migrations,
                              LOOM_ARRAY_SIZE(outbox_migrations), err);
}

loom_err loom_outbox_add(struct loom_db *db, const struct loom_bus_event *ev,
                         struct loom_error *err)
{
    if (ev->id.len == 0 || ev->id.len > LOOM_EVENT_ID_MAX)
        return loom_error_set(err, LOOM_EINVAL, "outbox: an event id is 1 to %d bytes",
                              LOOM_EVENT_ID_MAX);
    if (!loom_bus_subject_valid(ev->subject))
        return loom_error_set(err, LOOM_EINVAL, "outbox: subject \"%.*s\" is not loom.<...>",
                              (int)LOOM_MIN(ev->subject.len, 80), ev->subject.ptr);
    if (ev->data.len > LOOM_EVENT_MAX_BYTES)
        return loom_error_set(err, LOOM_ETOOBIG, "outbox: event is %zu bytes, over %zu",
                              ev->data.len, LOOM_EVENT_MAX_BYTES);
    char pos[LOOM_UUID_LEN + 1];
    loom_uuid7(pos);
    struct loom_sql_value p[] = {
        LOOM_SQL_TEXT_V(ev->id),   LOOM_SQL_CSTR_V(pos),     LOOM_SQL_TEXT_V(ev->subject),
        LOOM_SQL_TEXT_V(ev->data), LOOM_SQL_INT_V(now_ms()),
    };
    return loom_db_exec(db,
                        "INSERT INTO loom_outbox (id, pos, subject, data, created_ms) VALUES ($1, "
                        "$2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                        p, LOOM_ARRAY_SIZE(p), NULL, NULL, NULL, err);
}

loom_err loom_outbox_add_event(struct loom_db *db, const struct loom_event_spec *spec,
                               const char *subject, char *id_out, struct loom_error *err)
{
    struct loom_buf b;
    loom_buf_init(&b, LOOM_EVENT_MAX_BYTES + 1024);
    char id[LOOM_EVENT_ID_MAX + 1];
    loom_err e = loom_event_build(spec, &b, id, err);
    if (!e) {
        struct loom_bus_event ev = { loom_str_cstr(id),
                                     loom_str_cstr(subject ? subject : spec->type),
                                     loom_buf_str(&b) };
        e = loom_outbox_add(db, &ev, err);
    }
    if (!e && id_out)
        memcpy(id_out, id, strlen(id) + 1);
    loom_buf_release(&b);
    return e;
}

/* ---- the relay ---- */

struct row {
    char *pos, *id, *subject, *data;
    size_t data_len;
};

struct loom_outbox_relay {
    struct loom_outbox_relay_options o;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool stopping, kicked;
    char instance[LOOM_BUS_INSTANCE_MAX]; /* the incarnation last seen */
    bool checked_instance;
    struct row *rows;
    size_t nrows;
    char *owner;
    struct loom_gauge *m_pending;
    struct loom_counter *m_published, *m_republished;
    struct loom_histogram *m_seconds;
};

static void rows_clear(struct loom_outbox_relay *r)
{
    for (size_t i = 0; i < r->nrows; i++) {
        free(r->rows[i].pos);
        free(r->rows[i].id);
        free(r->rows[i].subject);
        free(r->rows[i].data);
    }
    r->nrows = 0;
}

static loom_err take_row(const struct loom_sql_row *row, void *arg)
{
    struct loom_outbox_relay *r = arg;
    if (row->ncols < 4)
        return LOOM_EINTERNAL;
    struct row *w = &r->rows[r->nrows++];
    w->pos = loom_str_dup(row->cols[0].s);
    w->id = loom_str_dup(row->cols[1].s);
    w->subject = loom_str_dup(row->cols[2].s);
    w->data = loom_str_dup(row->cols[3].s);
    w->data_len = row->cols[3].s.len;
    return LOOM_OK;
}

struct mark_ctx {
    struct loom_outbox_relay *r;
    const char *instance;
    int64_t sent_ms;
};

static loom_err mark_sent(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct mark_ctx *m = arg;
    for (size_t i = 0; i < m->r->nrows; i++) {
        struct loom_sql_value p[] = { LOOM_SQL_INT_V(m->sent_ms), LOOM_SQL_CSTR_V(m->instance),
                                      LOOM_SQL_CSTR_V(m->r->rows[i].id) };
        loom_err e =
            loom_db_exec(db, "UPDATE loom_outbox SET sent_ms = $1, instance = $2 WHERE id = $3", p,
                         3, NULL, NULL, NULL, err);
        if (e)
            return e;
    }
    return LOOM_OK;
}

static loom_err count_row(const struct loom_sql_row *row, void *arg)
{
    if (row->ncols && row->cols[0].type == LOOM_SQL_INT)
        *(int64_t *)arg = row->cols[0].i;
    return LOOM_OK;
}

static loom_err unsent_count(struct loom_store *store, int64_t *n, struct loom_error *err)
{
    struct loom_db *db;
    loom_err e = loom_store_acquire(store, &db, err);
    if (e)
        return e;
    *n = 0;
    e = loom_db_exec(db, "SELECT count(*) FROM loom_outbox WHERE sent_ms IS NULL", NULL, 0,
                     count_row, n, NULL, err);
    loom_store_release(store, db);
    return e;
}

/* A broker incarnation other than the one that acknowledged kept rows: send them again. */
static loom_err check_instance(struct loom_outbox_relay *r, struct loom_error *err)
{
    char now_inst[LOOM_BUS_INSTANCE_MAX];
    loom_bus_instance(r->o.bus, now_inst);
    if (!now_inst[0] || (r->checked_instance && strcmp(now_inst, r->instance) == 0))
        return LOOM_OK;
    struct loom_db *db;
    loom_err e = loom_store_acquire(r->o.store, &db, err);
    if (e)
        return e;
    int64_t changes = 0;
    struct loom_sql_value p[] = {
        LOOM_SQL_CSTR_V(now_inst), LOOM_SQL_INT_V(now_ms() - (int64_t)(r->o.keep / LOOM_NS_PER_MS))
    };
    e = loom_db_exec(db,
                     "UPDATE loom_outbox SET sent_ms = NULL WHERE sent_ms IS NOT NULL AND "
                     "instance <> $1 AND sent_ms >= $2",
                     p, 2, NULL, NULL, &changes, err);
    loom_store_release(r->o.store, db);
    if (e)
        return e;
    if (changes) {
        LOOM_LOG_KV(LOOM_LOG_WARN,
                    "outbox: the broker restarted; republishing what it may have lost",
                    LOOM_KV_INT("events", changes), LOOM_KV_CSTR("instance", now_inst));
        if (r->m_republished)
            loom_counter_add(r->m_republished, (uint64_t)changes);
    }
    memcpy(r->instance, now_inst, sizeof(now_inst));
    r->checked_instance = true;
    return LOOM_OK;
}

/* One batch: select, publish, mark. *more is set when the batch was full. */
static loom_err pass(struct loom_outbox_relay *r, bool *more, struct loom_error *err)
{
    *more = false;
    loom_err e = check_instance(r, err);
    if (e)
        return e;
    struct loom_db *db;
    if ((e = loom_store_acquire(r->o.store, &db, err)))
        return e;
    rows_clear(r);
    struct loom_sql_value lim = LOOM_SQL_INT_V(r->o.batch);
    e = loom_db_exec(db,
                     "SELECT pos, id, subject, data FROM loom_outbox WHERE sent_ms IS NULL ORDER "
                     "BY pos LIMIT $1",
                     &lim, 1, take_row, r, NULL, err);
    loom_store_release(r->o.store, db);
    if (e || r->nrows == 0)
        return e;
    /* The incarnation before the publish is the one that acknowledges it (if the broker
     * restarts in between, the publish fails, or the next check sends the rows again). */
    char inst[LOOM_BUS_INSTANCE_MAX];
    loom_bus_instance(r->o.bus, inst);
    struct loom_bus_event *evs = loom_calloc(r->nrows, sizeof(*evs));
    for (size_t i = 0; i < r->nrows; i++)
        evs[i] = (struct loom_bus_event){ loom_str_cstr(r->rows[i].id),
                                          loom_str_cstr(r->rows[i].subject),
                                          loom_str_make(r->rows[i].data, r->rows[i].data_len) };
    uint64_t t0 = loom_now_ns();
    e = loom_bus_publish(r->o.bus, evs, r->nrows, err);
    free(evs);
    if (e)
        return e;
    if (r->m_seconds)
        loom_histogram_observe_ns(r->m_seconds, loom_now_ns() - t0);
    struct mark_ctx m = { r, inst, now_ms() };
    if ((e = loom_store_tx(r->o.store, mark_sent, &m, err)))
        return e;
    if (r->m_published)
        loom_counter_add(r->m_published, r->nrows);
    *more = r->nrows == r->o.batch;
    return LOOM_OK;
}

/* Wait until kicked, stopped or `ns` passed. Returns true when stopping. */
static bool relay_wait(struct loom_outbox_relay *r, uint64_t ns)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t t = (uint64_t)ts.tv_nsec + ns;
    ts.tv_sec += (time_t)(t / LOOM_NS_PER_SEC);
    ts.tv_nsec = (long)(t % LOOM_NS_PER_SEC);
    pthread_mutex_lock(&r->mu);
    while (!r->stopping && !r->kicked)
        if (pthread_cond_timedwait(&r->cond, &r->mu, &ts) == ETIMEDOUT)
            break;
    r->kicked = false;
    bool stop = r->stopping;
    pthread_mutex_unlock(&r->mu);
    return stop;
}

static void *relay_main(void *arg)
{
    struct loom_outbox_relay *r = arg;
    uint64_t backoff = 0, last_warn = 0, last_prune = loom_now_ns();
    for (;;) {
        pthread_mutex_lock(&r->mu);
        bool stop = r->stopping;
        pthread_mutex_unlock(&r->mu);
        if (stop)
            break;
        struct loom_error err = { 0 };
        bool more = false;
        loom_err e = pass(r, &more, &err);
        if (e) {
            uint64_t now = loom_now_ns();
            if (now - last_warn > 10 * LOOM_NS_PER_SEC) {
                LOOM_LOG_KV(LOOM_LOG_WARN, "outbox: cannot publish yet; retrying",
                            LOOM_KV_CSTR("error", err.msg));
                last_warn = now;
            }
            backoff = backoff ? LOOM_MIN(backoff * 2, 5 * LOOM_NS_PER_SEC) : 50 * LOOM_NS_PER_MS;
            if (relay_wait(r, backoff))
                break;
            continue;
        }
        backoff = 0;
        if (r->m_pending) {
            int64_t n = 0;
            if (unsent_count(r->o.store, &n, &err) == LOOM_OK)
                loom_gauge_set(r->m_pending, (double)n);
        }
        if (!more && loom_now_ns() - last_prune > 60 * LOOM_NS_PER_SEC) {
            last_prune = loom_now_ns();
            if (loom_outbox_prune(r->o.store, 8 * 24 * 3600 * LOOM_NS_PER_SEC, r->o.keep, &err))
                loom_log_warn("outbox: prune: %s", err.msg);
        }
        if (!more && relay_wait(r, r->o.interval))
            break;
    }
    rows_clear(r);
    return NULL;
}

loom_err loom_outbox_relay_start(const struct loom_outbox_relay_options *opts,
                                 struct loom_outbox_relay **out, struct loom_error *err)
{
    if (!opts->store || !opts->bus)
        return loom_error_set(err, LOOM_EINVAL, "outbox relay: a store and a bus are needed");
    struct loom_outbox_relay *r = loom_new(struct loom_outbox_relay);
    r->o = *opts;
    if (!r->o.interval)
        r->o.interval = 200 * LOOM_NS_PER_MS;
    if (!r->o.keep)
        r->o.keep = 300 * LOOM_NS_PER_SEC;
    if (!r->o.batch)
        r->o.batch = 512;
    r->o.batch = LOOM_MIN(r->o.batch, (size_t)LOOM_BUS_MAX_BATCH);
    r->rows = loom_calloc(r->o.batch, sizeof(*r->rows));
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (opts->metrics) {
        const char *own = opts->metrics_owner;
        r->owner = own ? loom_strdup(own) : NULL;
        r->o.metrics_owner = r->owner;
        char name[160];
        const char *pre = own ? own : "";
        const char *sep = own ? "_" : "";
        snprintf(name, sizeof(name), "loom_%s%soutbox_pending_events", pre, sep);
        r->m_pending =
            loom_metrics_gauge(opts->metrics, own, name, "Events in the outbox not yet published.");
        snprintf(name, sizeof(name), "loom_%s%soutbox_published_total", pre, sep);
        r->m_published =
            loom_metrics_counter(opts->metrics, own, name, "Events the outbox relay published.");
        snprintf(name, sizeof(name), "loom_%s%soutbox_republished_total", pre, sep);
        r->m_republished = loom_metrics_counter(
            opts->metrics, own, name, "Kept events published again to a restarted broker.");
        snprintf(name, sizeof(name), "loom_%s%soutbox_publish_seconds", pre, sep);
        r->m_seconds = loom_metrics_histogram(opts->metrics, own, name,
                                              "Time to publish one batch of the outbox.", NULL, 0);
    }
    if (pthread_create(&r->thread, NULL, relay_main, r) != 0) {
        loom_error_errno(err, "outbox relay: cannot start a thread");
        pthread_mutex_destroy(&r->mu);
        pthread_cond_destroy(&r->cond);
        free(r->rows);
        free(r->owner);
        free(r);
        return LOOM_EIO;
    }
    *out = r;
    return LOOM_OK;
}

void loom_outbox_relay_kick(struct loom_outbox_relay *r)
{
    pthread_mutex_lock(&r->mu);
    r->kicked = true;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->mu);
}

loom_err loom_outbox_relay_flush(struct loom_outbox_relay *r, uint64_t timeout_ns,
                                 struct loom_error *err)
{
    uint64_t deadline = loom_now_ns() + timeout_ns;
    for (;;) {
        int64_t n = 0;
        loom_err e = unsent_count(r->o.store, &n, err);
        if (e)
            return e;
        if (n == 0)
            return LOOM_OK;
        if (loom_now_ns() >= deadline)
            return loom_error_set(err, LOOM_ETIMEDOUT, "outbox: %lld events still unsent",
                                  (long long)n);
        loom_outbox_relay_kick(r);
        struct timespec ts = { 0, 5 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
}

void loom_outbox_relay_stop(struct loom_outbox_relay *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    r->stopping = true;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cond);
    free(r->rows);
    free(r->owner);
    free(r);
}

loom_err loom_outbox_prune(struct loom_store *store, uint64_t max_age_ns, uint64_t keep_ns,
                           struct loom_error *err)
{
    struct loom_db *db;
    loom_err e = loom_store_acquire(store, &db, err);
    if (e)
        return e;
    struct loom_sql_value p = LOOM_SQL_INT_V(now_ms() - (int64_t)(max_age_ns / LOOM_NS_PER_MS));
    e = loom_db_exec(db, "DELETE FROM loom_processed WHERE at_ms < $1", &p, 1, NULL, NULL, NULL,
                     err);
    if (!e) {
        p = LOOM_SQL_INT_V(now_ms() - (int64_t)(keep_ns / LOOM_NS_PER_MS));
        e = loom_db_exec(db, "DELETE FROM loom_outbox WHERE sent_ms IS NOT NULL AND sent_ms < $1",
                         &p, 1, NULL, NULL, NULL, err);
    }
    loom_store_release(store, db);
    return e;
}

/* ---- idempotent consumers ---- */

/* Record (consumer, id); *fresh says whether it was new. */
static loom_err record(struct loom_db *db, const char *consumer, struct loom_str id, bool *fresh,
                       struct loom_error *err)
{
    struct loom_sql_value p[] = { LOOM_SQL_CSTR_V(consumer), LOOM_SQL_TEXT_V(id),
                                  LOOM_SQL_INT_V(now_ms()) };
    int64_t changes = 0;
    loom_err e = loom_db_exec(db,
                              "INSERT INTO loom_processed (consumer, event_id, at_ms) VALUES ($1, "
                              "$2, $3) ON CONFLICT (consumer, event_id) DO NOTHING",
                              p, 3, NULL, NULL, &changes, err);
    if (!e)
        *fresh = changes > 0;
    return e;
}

struct once_ctx {
    const char *consumer;
    struct loom_str id;
    loom_tx_fn fn;
    void *arg;
    bool duplicate;
};

static loom_err once_tx(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct once_ctx *c = arg;
    bool fresh = false;
    loom_err e = record(db, c->consumer, c->id, &fresh, err);
    if (e)
        return e;
    c->duplicate = !fresh;
    return fresh ? c->fn(db, c->arg, err) : LOOM_OK;
}

loom_err loom_consume_once(struct loom_store *store, const char *consumer, struct loom_str event_id,
                           loom_tx_fn fn, void *arg, bool *duplicate, struct loom_error *err)
{
    struct once_ctx c = { consumer, event_id, fn, arg, false };
    loom_err e = loom_store_tx(store, once_tx, &c, err);
    if (!e && duplicate)
        *duplicate = c.duplicate;
    return e;
}

struct batch_ctx {
    const char *consumer;
    struct loom_bus_msg *const *msgs;
    size_t n;
    loom_consume_fn fn;
    void *arg;
};

static loom_err batch_tx(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct batch_ctx *c = arg;
    for (size_t i = 0; i < c->n; i++) {
        bool fresh = false;
        loom_err e = record(db, c->consumer, c->msgs[i]->id, &fresh, err);
        if (!e && fresh)
            e = c->fn(db, c->msgs[i], c->arg, err);
        if (e)
            return e;
    }
    return LOOM_OK;
}

static bool permanent(loom_err e)
{
    return e == LOOM_EINVAL || e == LOOM_EPARSE || e == LOOM_EUNSUPPORTED;
}

void loom_consume_batch(struct loom_store *store, const char *consumer,
                        struct loom_bus_msg *const *msgs, size_t n, loom_consume_fn fn, void *arg)
{
    struct loom_error err = { 0 };
    struct batch_ctx c = { consumer, msgs, n, fn, arg };
    loom_err e = loom_store_tx(store, batch_tx, &c, &err);
    if (!e) {
        for (size_t i = 0; i < n; i++)
            msgs[i]->verdict = LOOM_BUS_ACK;
        return;
    }
    /* Something failed: one transaction per event, to find out which. */
    for (size_t i = 0; i < n; i++) {
        struct batch_ctx one = { consumer, &msgs[i], 1, fn, arg };
        memset(&err, 0, sizeof(err));
        e = loom_store_tx(store, batch_tx, &one, &err);
        if (!e) {
            msgs[i]->verdict = LOOM_BUS_ACK;
            continue;
        }
        msgs[i]->verdict = permanent(e) ? LOOM_BUS_PARK : LOOM_BUS_RETRY;
        snprintf(msgs[i]->reason, sizeof(msgs[i]->reason), "%s", err.msg);
    }
}
