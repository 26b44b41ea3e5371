/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The trainer service table: settings, init (the store is opened and migrated, jobs a previous
 * process left behind are marked failed, the datasets directory is made ready, training
 * requests on the bus are followed), readiness and
 * fini (queued jobs of this process are marked failed: the trainer stops, they will not run).
 */
#include "trainer/trainer.h"

#include <loom/log.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct loom_conf_field trn_fields[] = {
    LOOM_CONF_SECRET_FIELD(struct trn_conf, store, "store", STRING, "",
                           "Where jobs and dataset descriptions live: sqlite:PATH or "
                           "postgres://user:pass@host:port/db (default: "
                           "sqlite:<data-dir>/trainer.db)."),
    LOOM_CONF_FIELD(struct trn_conf, datasets, "datasets", STRING, "",
                    "Directory of uploaded datasets, stored by digest "
                    "(default: <data-dir>/datasets)."),
    LOOM_CONF_FIELD(struct trn_conf, registry, "registry", STRING, "http://127.0.0.1:8082",
                    "Base URL of the model registry that trained models are pushed to."),
    LOOM_CONF_RANGE_FIELD(struct trn_conf, max_dataset_bytes, "max-dataset-bytes", SIZE, "1GiB",
                          1024, (int64_t)1 << 40, "Largest dataset upload (then 413)."),
    LOOM_CONF_RANGE_FIELD(struct trn_conf, max_concurrent_jobs, "max-concurrent-jobs", INT, "1", 1,
                          64, "Training jobs that run at once; the others wait, queued."),
    LOOM_CONF_FIELD(struct trn_conf, events, "events", BOOL, "true",
                    "Run the jobs that loom.training.requested events on the bus (--bus) ask "
                    "for, as the consumer group \"trainer\"."),
};

int64_t trn_now_ms(void)
{
    return loom_wall_ns() / (int64_t)LOOM_NS_PER_MS;
}

void trn_write_time(struct loom_json_writer *w, const char *key, int64_t ms)
{
    loom_json_write_key(w, key);
    if (ms <= 0) {
        loom_json_write_null(w);
        return;
    }
    char t[40];
    loom_time_rfc3339(ms * (int64_t)LOOM_NS_PER_MS, t);
    loom_json_write_string(w, t);
}

static char *path_join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = loom_malloc(n);
    snprintf(p, n, "%s/%s", a, b);
    return p;
}

static void trn_free(struct trn_service *trn)
{
    trn_events_stop(trn);
    if (trn->train_pool)
        loom_pool_free(trn->train_pool);
    if (trn->store)
        loom_store_close(trn->store);
    pthread_mutex_destroy(&trn->sched.mu);
    free(trn->datasets_dir);
    free(trn->registry);
    free(trn);
}

static void trn_metrics_init(struct trn_service *trn)
{
    struct loom_metrics *m = loom_metrics_global();
    static const char *const status_label[] = { "status" };
    trn->f_jobs =
        loom_metrics_counter_family(m, "trainer", "loom_trainer_jobs_total",
                                    "Training jobs finished, by final status.", status_label, 1);
    trn->g_running =
        loom_metrics_gauge(m, "trainer", "loom_trainer_jobs_running", "Training jobs running now.");
    trn->g_queued = loom_metrics_gauge(m, "trainer", "loom_trainer_jobs_queued",
                                       "Training jobs waiting for a slot.");
    static const double train_buckets[] = { 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600 };
    trn->h_train = loom_metrics_histogram(m, "trainer", "loom_trainer_train_seconds",
                                          "Time spent training a model (rounds only).",
                                          train_buckets, LOOM_ARRAY_SIZE(train_buckets));
    trn->c_datasets = loom_metrics_counter(m, "trainer", "loom_trainer_datasets_uploaded_total",
                                           "Datasets uploaded (new or already known).");
}

static loom_err trn_init(struct loom_svc *svc, struct loom_error *err)
{
    struct trn_service *trn = loom_new(struct trn_service);
    trn->conf = loom_svc_conf(svc);
    trn->svc = svc;
    trn->pool = loom_svc_pool(svc);
    trn->nthread = loom_pool_threads(trn->pool);
    trn->max_jobs = (size_t)trn->conf->max_concurrent_jobs;
    trn->train_pool = loom_pool_new((unsigned)trn->max_jobs, 0);
    trn->loop = loom_svc_loop(svc, 0);
    pthread_mutex_init(&trn->sched.mu, NULL);
    const char *data = loom_svc_global(svc)->data_dir;

    /* The registry's base URL, without a trailing slash. */
    const char *reg = trn->conf->registry;
    if (strncmp(reg, "http://", 7) != 0) {
        loom_error_set(err, LOOM_EINVAL,
                       "--trainer.registry \"%s\" must be an http:// URL (there is no TLS)", reg);
        goto fail;
    }
    trn->registry = loom_strdup(reg);
    for (size_t n = strlen(trn->registry); n > 7 && trn->registry[n - 1] == '/'; n--)
        trn->registry[n - 1] = '\0';

    trn->datasets_dir =
        trn->conf->datasets[0] ? loom_strdup(trn->conf->datasets) : path_join(data, "datasets");
    if (trn_datasets_init(trn, err))
        goto fail;

    char *url = NULL;
    if (trn->conf->store[0]) {
        url = loom_strdup(trn->conf->store);
    } else {
        size_t n = strlen(data) + 32;
        url = loom_malloc(n);
        snprintf(url, n, "sqlite:%s/trainer.db", data);
    }
    loom_err e = loom_store_open(url, NULL, &trn->store, err);
    free(url);
    if (e) {
        loom_error_prefix(err, "--trainer.store");
        goto fail;
    }
    if (loom_store_migrate(trn->store, "trainer", trn_migrations, trn_nmigrations, err))
        goto fail;
    if (trn_jobs_recover(trn, err))
        goto fail;
    trn_metrics_init(trn);
    if (trn_events_start(trn, err))
        goto fail;
    loom_svc_set_state(svc, trn);
    return LOOM_OK;
fail:
    trn_free(trn);
    return err->code ? err->code : LOOM_EINVAL;
}

static void trn_fini(void *state)
{
    struct trn_service *trn = state;
    if (!trn)
        return;
    trn_events_stop(trn); /* no new job from the bus while the others wind down */
    /* Running jobs stop at their next round (the service drains), record how they ended and
     * are joined here; queued ones never start. */
    loom_pool_free(trn->train_pool);
    trn->train_pool = NULL;
    trn_jobs_shutdown(trn);
    trn_free(trn);
}

const struct loom_service trainer_service = {
    .name = "trainer",
    .summary = "Datasets and training jobs (XGBoost, linear) with evaluation and gates",
    .default_listen = "127.0.0.1:8083",
    .error_body = loom_http_error_problem,
    .conf_fields = trn_fields,
    .nconf_fields = LOOM_ARRAY_SIZE(trn_fields),
    .conf_size = sizeof(struct trn_conf),
    .init = trn_init,
    .routes = trn_routes,
    .nroutes = TRN_NROUTES,
    .fini = trn_fini,
};
