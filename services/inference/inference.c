/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The inference service table: settings, init (the model repository starts loading on the work
 * pool; /v2/health/ready and /readyz answer 503 until it has), and fini.
 */
#include "inference/inference.h"

#include <stdlib.h>

static const char *const controls[] = { "none", "poll", "explicit", NULL };

static const struct loom_conf_field inf_fields[] = {
    LOOM_CONF_FIELD(struct inf_conf, model_repository, "model-repository", STRING, "",
                    "Directory of models: DIR/<model>/config.json, DIR/<model>/<version>/<file> "
                    "(default: <data-dir>/models, created if missing)."),
    LOOM_CONF_ENUM_FIELD(struct inf_conf, model_control, "model-control", controls, "none",
                         "none: load every model at start; poll: also rescan the repository; "
                         "explicit: load only --inference.load-models, then through the API."),
    LOOM_CONF_FIELD(struct inf_conf, load_models, "load-models", LIST, NULL,
                    "With explicit model control: the models to load at start (* for all)."),
    LOOM_CONF_RANGE_FIELD(struct inf_conf, poll_interval, "poll-interval", DURATION, "5s",
                          (int64_t)100 * (int64_t)LOOM_NS_PER_MS,
                          (int64_t)24 * 3600 * (int64_t)LOOM_NS_PER_SEC,
                          "With model-control=poll: how often to rescan the repository."),
    LOOM_CONF_RANGE_FIELD(struct inf_conf, max_tensor_elements, "max-tensor-elements", INT,
                          "16777216", 1, (int64_t)1 << 31,
                          "Largest number of elements an input tensor may have (then 400)."),
    LOOM_CONF_RANGE_FIELD(struct inf_conf, max_model_bytes, "max-model-bytes", SIZE, "1GiB", 1024,
                          (int64_t)1 << 40, "Largest model file loaded."),
    LOOM_CONF_RANGE_FIELD(struct inf_conf, parallel_rows, "parallel-rows", INT, "512", 1,
                          (int64_t)1 << 30,
                          "Executions of at least this many rows are split across the work pool."),
    LOOM_CONF_FIELD(struct inf_conf, registry, "registry", STRING, "",
                    "Model registry URL (e.g. http://127.0.0.1:8082) to serve --inference.models "
                    "from."),
    LOOM_CONF_FIELD(struct inf_conf, models, "models", LIST, NULL,
                    "Registry models to serve, as name@alias or name:version (served under their "
                    "name; aliases are followed as they move)."),
    LOOM_CONF_FIELD(struct inf_conf, registry_events, "registry-events", BOOL, "true",
                    "Follow the registry's events on the bus (--bus): a moved alias is served "
                    "within moments."),
    LOOM_CONF_FIELD(struct inf_conf, bus_group, "bus-group", STRING, "",
                    "The bus group this replica reads the registry's events with; each replica "
                    "needs its own (default: inference-<hostname>-<listen port>)."),
    LOOM_CONF_RANGE_FIELD(struct inf_conf, registry_poll, "registry-poll", DURATION, "1m",
                          (int64_t)100 * (int64_t)LOOM_NS_PER_MS,
                          (int64_t)24 * 3600 * (int64_t)LOOM_NS_PER_SEC,
                          "How often to check the registry anyway: the safety net behind the "
                          "events, and the only way with --inference.registry-events=false."),
    LOOM_CONF_RANGE_FIELD(struct inf_conf, registry_max_batch_size, "registry-max-batch-size", INT,
                          "1024", 0, 1 << 24,
                          "max_batch_size of registry models whose version has no serving config."),
};

static loom_err inf_init(struct loom_svc *svc, struct loom_error *err)
{
    struct inf_service *inf = loom_new(struct inf_service);
    inf->conf = loom_svc_conf(svc);
    inf->svc = svc;
    inf->pool = loom_svc_pool(svc);
    inf->nloops = loom_svc_nloops(svc);
    inf->loops = loom_calloc(inf->nloops, sizeof(*inf->loops));
    for (size_t i = 0; i < inf->nloops; i++) {
        inf->loops[i] = (struct inf_loop){ .inf = inf, .index = i, .loop = loom_svc_loop(svc, i) };
        loom_loop_set_data(inf->loops[i].loop, &inf->loops[i]);
    }
    pthread_mutex_init(&inf->stats_mu, NULL);
    inf_metrics_init(inf);
    loom_err e = inf_repo_start(inf, err);
    if (e) {
        free(inf->repo_dir);
        inf_stats_free_all(inf);
        pthread_mutex_destroy(&inf->stats_mu);
        free(inf->loops);
        free(inf);
        return e;
    }
    loom_svc_set_state(svc, inf);
    return LOOM_OK;
}

static bool inf_ready(void *state)
{
    struct inf_service *inf = state;
    return atomic_load(&inf->initial_load_done);
}

static void inf_fini(void *state)
{
    struct inf_service *inf = state;
    if (!inf)
        return;
    inf_repo_stop(inf);
    inf_stats_free_all(inf);
    pthread_mutex_destroy(&inf->stats_mu);
    free(inf->repo_dir);
    free(inf->loops);
    free(inf);
}

const struct loom_service inference_service = {
    .name = "inference",
    .summary = "KServe v2 inference (REST) for XGBoost and linear models",
    .default_listen = "127.0.0.1:8081",
    .default_max_body = "64MiB",
    .conf_fields = inf_fields,
    .nconf_fields = LOOM_ARRAY_SIZE(inf_fields),
    .conf_size = sizeof(struct inf_conf),
    .init = inf_init,
    .routes = inf_routes,
    .nroutes = INF_NROUTES,
    .ready = inf_ready,
    .fini = inf_fini,
};
