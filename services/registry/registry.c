/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The registry service table: settings, init (open the store and apply the schema, prepare the
 * artifact directories and delete unfinished uploads, optionally rebuild the projections from
 * the event log, open the bus and start the outbox relay that publishes the log's events) and
 * fini. Everything here runs on the main thread before the loops start, so it may block.
 */
#include "registry/registry.h"

#include <loom/log.h>
#include <loom/outbox.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const struct loom_conf_field reg_fields[] = {
    LOOM_CONF_SECRET_FIELD(struct reg_conf, store, "store", STRING, "",
                           "The SQL store: sqlite:PATH or postgres://USER:PASSWORD@HOST:PORT/DB "
                           "(default: sqlite:<data-dir>/registry.db)."),
    LOOM_CONF_FIELD(struct reg_conf, artifacts, "artifacts", STRING, "",
                    "Directory of the content-addressed artifacts (default: "
                    "<data-dir>/artifacts)."),
    LOOM_CONF_RANGE_FIELD(struct reg_conf, max_artifact_bytes, "max-artifact-bytes", SIZE, "1GiB",
                          1024, (int64_t)1 << 40,
                          "Largest model file accepted by POST /api/v1/artifacts (then 413)."),
    LOOM_CONF_FIELD(struct reg_conf, rebuild_projections, "rebuild-projections", BOOL, "false",
                    "At start, recompute the models, versions and aliases tables from the event "
                    "log."),
};

static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = loom_malloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static void reg_free(struct reg_service *reg)
{
    if (reg->relay)
        loom_outbox_relay_stop(reg->relay);
    if (reg->bus)
        loom_bus_close(reg->bus);
    if (reg->store)
        loom_store_close(reg->store);
    free(reg->artifacts_dir);
    free(reg->tmp_dir);
    free(reg);
}

static loom_err reg_init(struct loom_svc *svc, struct loom_error *err)
{
    struct reg_service *reg = loom_new(struct reg_service);
    reg->conf = loom_svc_conf(svc);
    reg->svc = svc;
    reg->pool = loom_svc_pool(svc);
    const char *data_dir = loom_svc_global(svc)->data_dir;
    if (mkdir(data_dir, 0755) < 0 && errno != EEXIST) {
        loom_error_errno(err, "registry: cannot create the data directory %s", data_dir);
        goto fail;
    }
    reg->artifacts_dir =
        reg->conf->artifacts[0] ? loom_strdup(reg->conf->artifacts) : join(data_dir, "artifacts");
    loom_err e = reg_artifacts_init(reg, err);
    if (e) {
        loom_error_prefix(err, "registry artifacts");
        goto fail;
    }
    char *url = NULL;
    if (reg->conf->store[0]) {
        url = loom_strdup(reg->conf->store);
    } else {
        size_t n = strlen(data_dir) + 32;
        url = loom_malloc(n);
        snprintf(url, n, "sqlite:%s/registry.db", data_dir);
    }
    e = loom_store_open(url, NULL, &reg->store, err);
    free(url);
    if (e) {
        reg->store = NULL;
        loom_error_prefix(err, "registry store");
        goto fail;
    }
    e = loom_store_migrate(reg->store, "registry", reg_migrations, reg_nmigrations, err);
    if (!e)
        e = loom_outbox_migrate(reg->store, err);
    if (!e && reg->conf->rebuild_projections)
        e = reg_rebuild(reg->store, err);
    if (e) {
        loom_error_prefix(err, "registry store");
        goto fail;
    }
    struct loom_metrics *m = loom_metrics_global();
    reg->g_models = loom_metrics_gauge(m, "registry", "loom_registry_models", "Models registered.");
    reg->g_versions = loom_metrics_gauge(m, "registry", "loom_registry_versions",
                                         "Model versions registered (all statuses).");
    static const char *const labels[] = { "type" };
    struct loom_counter_family *f =
        loom_metrics_counter_family(m, "registry", "loom_registry_events_total",
                                    "Events appended to the registry's log, by type.", labels, 1);
    for (int i = 0; i < REG_EV__COUNT; i++)
        reg->c_events[i] = loom_counter_get(f, &reg_event_types[i]);
    reg_refresh_gauges(reg);
    /* Events reach the bus through the outbox: reg_emit queues each one in the transaction that
     * appends it to the log, and the relay publishes it once that commits. */
    url = loom_svc_bus_url(svc, NULL);
    struct loom_bus_options bo = { .client_name = "loom-registry" };
    e = loom_bus_open(url, &bo, &reg->bus, err);
    free(url);
    if (e) {
        reg->bus = NULL;
        loom_error_prefix(err, "registry bus");
        goto fail;
    }
    struct loom_outbox_relay_options ro = {
        .store = reg->store, .bus = reg->bus, .metrics = m, .metrics_owner = "registry"
    };
    if ((e = loom_outbox_relay_start(&ro, &reg->relay, err))) {
        reg->relay = NULL;
        loom_error_prefix(err, "registry outbox");
        goto fail;
    }
    LOOM_LOG_KV(LOOM_LOG_INFO, "registry store ready",
                LOOM_KV_CSTR("backend", loom_store_backend(reg->store)),
                LOOM_KV_CSTR("bus", loom_bus_backend(reg->bus)),
                LOOM_KV_CSTR("artifacts", reg->artifacts_dir));
    loom_svc_set_state(svc, reg);
    return LOOM_OK;
fail:
    reg_free(reg);
    return err->code ? err->code : LOOM_EINVAL;
}

static void reg_fini(void *state)
{
    if (state)
        reg_free(state);
}

const struct loom_service registry_service = {
    .name = "registry",
    .summary = "Model registry: models, versions, aliases, artifacts, events",
    .default_listen = "127.0.0.1:8082",
    .error_body = loom_http_error_problem,
    .conf_fields = reg_fields,
    .nconf_fields = LOOM_ARRAY_SIZE(reg_fields),
    .conf_size = sizeof(struct reg_conf),
    .init = reg_init,
    .routes = reg_routes,
    .nroutes = REG_NROUTES,
    .fini = reg_fini,
};
