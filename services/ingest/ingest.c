/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The ingest service table: settings, init (open the store and apply its schema, open the bus,
 * register the metrics, start the bus lag gauges), the contract cache, and fini. init runs on
 * the main thread before the loops start, so it may block.
 */
#include "ingest/ingest.h"

#include <loom/log.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define LAG_INTERVAL (5 * LOOM_NS_PER_SEC)

static const struct loom_conf_field ing_fields[] = {
    LOOM_CONF_SECRET_FIELD(struct ing_conf, bus, "bus", STRING, "",
                           "The event bus, if not the one every service shares (--bus): "
                           "sqlite:PATH or nats://HOST:PORT[,HOST:PORT]."),
    LOOM_CONF_SECRET_FIELD(struct ing_conf, store, "store", STRING, "",
                           "The SQL store for stream contracts: sqlite:PATH or "
                           "postgres://USER:PASSWORD@HOST:PORT/DB (default: "
                           "sqlite:<data-dir>/ingest.db)."),
    LOOM_CONF_RANGE_FIELD(struct ing_conf, max_batch_bytes, "max-batch-bytes", SIZE, "256MiB", 1024,
                          (int64_t)1 << 40,
                          "Largest batch once decompressed (gzip bodies included); then 413."),
    LOOM_CONF_RANGE_FIELD(struct ing_conf, max_batch_records, "max-batch-records", INT, "1000000",
                          1, (int64_t)1 << 32, "Most records in one batch; then 413."),
    LOOM_CONF_RANGE_FIELD(struct ing_conf, max_record_bytes, "max-record-bytes", SIZE, "256KiB", 64,
                          768 * 1024, "Longest record; a longer one is rejected (the rest go on)."),
    LOOM_CONF_RANGE_FIELD(struct ing_conf, max_inflight_bytes, "max-inflight-bytes", SIZE, "64MiB",
                          1024, (int64_t)1 << 40,
                          "Encoded events waiting for the bus, across all requests; past it "
                          "batches get 503 with Retry-After."),
    LOOM_CONF_RANGE_FIELD(struct ing_conf, publish_batch, "publish-batch", INT, "4096", 1,
                          LOOM_BUS_MAX_BATCH, "Events per publish to the bus."),
    LOOM_CONF_RANGE_FIELD(struct ing_conf, retry_after, "retry-after", DURATION, "1s",
                          (int64_t)LOOM_NS_PER_SEC, (int64_t)3600 * (int64_t)LOOM_NS_PER_SEC,
                          "What 503 answers tell clients to wait (Retry-After)."),
    LOOM_CONF_RANGE_FIELD(struct ing_conf, max_errors, "max-errors", INT, "1000", 0, 1000000,
                          "Rejected records listed in one answer (all are counted)."),
    LOOM_CONF_RANGE_FIELD(struct ing_conf, publish_delay, "publish-delay", DURATION, "0", 0,
                          (int64_t)60 * (int64_t)LOOM_NS_PER_SEC,
                          "Hold each publish this long (for testing backpressure)."),
};

/* ---- the contract cache ---- */

struct ing_schema *ing_cache_get(struct ing_service *ing, struct loom_str name, uint64_t max_age_ns)
{
    struct ing_schema *s = NULL;
    uint64_t now = loom_now_ns();
    pthread_mutex_lock(&ing->mu);
    for (size_t i = 0; i < ing->ncache; i++) {
        if (loom_str_eq_cstr(name, ing->cache[i]->name)) {
            if (now - ing->cache[i]->loaded_ns <= max_age_ns)
                s = ing_schema_ref(ing->cache[i]);
            break;
        }
    }
    pthread_mutex_unlock(&ing->mu);
    return s;
}

void ing_cache_put(struct ing_service *ing, struct ing_schema *s)
{
    ing_schema_ref(s);
    struct ing_schema *old = NULL;
    pthread_mutex_lock(&ing->mu);
    size_t i = 0;
    while (i < ing->ncache && strcmp(ing->cache[i]->name, s->name) != 0)
        i++;
    if (i < ing->ncache) {
        old = ing->cache[i];
    } else {
        if (ing->ncache == ing->cache_cap) {
            ing->cache_cap = ing->cache_cap ? 2 * ing->cache_cap : 16;
            ing->cache = loom_realloc(ing->cache, ing->cache_cap * sizeof(*ing->cache));
        }
        ing->ncache++;
    }
    ing->cache[i] = s;
    pthread_mutex_unlock(&ing->mu);
    ing_schema_unref(old);
}

void ing_schema_metrics(struct ing_service *ing, struct ing_schema *s)
{
    const char *acc[] = { s->name, "accepted" };
    const char *rej[] = { s->name, "rejected" };
    s->m_accepted = loom_counter_get(ing->f_records, acc);
    s->m_rejected = loom_counter_get(ing->f_records, rej);
}

/* ---- bus lag gauges ---- */

static loom_err lag_group(const char *name, void *arg)
{
    struct ing_service *ing = arg;
    struct loom_bus_group_info info;
    struct loom_error err = { 0 };
    if (loom_bus_group_info(ing->bus, name, &info, &err) == LOOM_OK) {
        const char *v[] = { name };
        loom_gauge_set(loom_gauge_get(ing->f_lag, v), (double)info.lag);
    }
    return LOOM_OK;
}

static void lag_work(struct loom_work *w)
{
    struct ing_service *ing = LOOM_CONTAINER_OF(w, struct ing_service, lag_work);
    struct loom_error err = { 0 };
    loom_bus_group_list(ing->bus, lag_group, ing, &err);
}

static void lag_done(struct loom_work *w, loom_err status)
{
    LOOM_UNUSED(status);
    struct ing_service *ing = LOOM_CONTAINER_OF(w, struct ing_service, lag_work);
    atomic_store(&ing->lag_running, false);
}

static void on_lag_timer(struct loom_timer *t)
{
    struct ing_service *ing = LOOM_CONTAINER_OF(t, struct ing_service, lag_timer);
    if (atomic_exchange(&ing->lag_running, true))
        return;
    if (loom_pool_submit(ing->pool, t->loop, &ing->lag_work, lag_work, lag_done))
        atomic_store(&ing->lag_running, false);
}

/* ---- lifecycle ---- */

static char *default_url(const char *given, const char *data_dir, const char *file)
{
    if (given[0])
        return loom_strdup(given);
    size_t n = strlen(data_dir) + strlen(file) + 16;
    char *url = loom_malloc(n);
    snprintf(url, n, "sqlite:%s/%s", data_dir, file);
    return url;
}

static void ing_free(struct ing_service *ing)
{
    for (size_t i = 0; i < ing->ncache; i++)
        ing_schema_unref(ing->cache[i]);
    free(ing->cache);
    if (ing->bus)
        loom_bus_close(ing->bus);
    if (ing->store)
        loom_store_close(ing->store);
    pthread_mutex_destroy(&ing->mu);
    free(ing);
}

static loom_err ing_init(struct loom_svc *svc, struct loom_error *err)
{
    struct ing_service *ing = loom_new(struct ing_service);
    loom_err e = LOOM_EIO;
    ing->conf = loom_svc_conf(svc);
    ing->svc = svc;
    ing->pool = loom_svc_pool(svc);
    pthread_mutex_init(&ing->mu, NULL);
    const char *data_dir = loom_svc_global(svc)->data_dir;
    if (mkdir(data_dir, 0755) < 0 && errno != EEXIST) {
        loom_error_errno(err, "ingest: cannot create the data directory %s", data_dir);
        goto fail;
    }
    char *url = default_url(ing->conf->store, data_dir, "ingest.db");
    e = loom_store_open(url, NULL, &ing->store, err);
    free(url);
    if (e) {
        ing->store = NULL;
        loom_error_prefix(err, "ingest store");
        goto fail;
    }
    if ((e = loom_store_migrate(ing->store, "ingest", ing_migrations, ing_nmigrations, err))) {
        loom_error_prefix(err, "ingest store");
        goto fail;
    }
    url = loom_svc_bus_url(svc, ing->conf->bus);
    struct loom_bus_options bo = { .client_name = "loom-ingest" };
    e = loom_bus_open(url, &bo, &ing->bus, err);
    free(url);
    if (e) {
        ing->bus = NULL;
        loom_error_prefix(err, "ingest bus");
        goto fail;
    }
    struct loom_metrics *m = loom_metrics_global();
    const char *rl[] = { "stream", "outcome" };
    ing->f_records = loom_metrics_counter_family(
        m, "ingest", "loom_ingest_records_total",
        "Records received, by stream and outcome (accepted: on the bus; rejected: broke the "
        "contract).",
        rl, 2);
    ing->m_publish =
        loom_metrics_histogram(m, "ingest", "loom_ingest_publish_seconds",
                               "Time to publish one chunk of events to the bus.", NULL, 0);
    ing->m_inflight = loom_metrics_gauge(m, "ingest", "loom_ingest_inflight_bytes",
                                         "Encoded events waiting for the bus.");
    const char *gl[] = { "group" };
    ing->f_lag = loom_metrics_gauge_family(
        m, "ingest", "loom_ingest_bus_lag_events",
        "Events each consumer group of the bus has yet to settle (refreshed every 5 s).", gl, 1);
    loom_timer_init(&ing->lag_timer, loom_svc_loop(svc, 0), on_lag_timer);
    loom_timer_start(&ing->lag_timer, 100 * LOOM_NS_PER_MS, LAG_INTERVAL);
    LOOM_LOG_KV(LOOM_LOG_INFO, "ingest: ready", LOOM_KV_CSTR("bus", loom_bus_backend(ing->bus)),
                LOOM_KV_CSTR("store", loom_store_backend(ing->store)));
    loom_svc_set_state(svc, ing);
    return LOOM_OK;
fail:
    ing_free(ing);
    return e;
}

static void ing_fini(void *state)
{
    struct ing_service *ing = state;
    if (ing)
        ing_free(ing);
}

const struct loom_service ingest_service = {
    .name = "ingest",
    .summary = "Stream contracts and record ingestion onto the event bus",
    .default_listen = "127.0.0.1:8084",
    .default_max_body = "256MiB",
    .error_body = loom_http_error_problem,
    .conf_fields = ing_fields,
    .nconf_fields = LOOM_ARRAY_SIZE(ing_fields),
    .conf_size = sizeof(struct ing_conf),
    .init = ing_init,
    .routes = ing_routes,
    .nroutes = ING_NROUTES,
    .fini = ing_fini,
};
