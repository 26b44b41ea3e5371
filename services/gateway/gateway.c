/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The gateway service table: its settings, init (the routing snapshot from the store, the
 * rate limiter, the idempotency table, the OpenAPI document, and per loop thread one upstream
 * per service, a verified-token cache and a Redis connection when configured) and fini. The
 * JWKS is fetched once the loops run (identity may be starting in the same process), and
 * /readyz answers 503 until it is in. docs/gateway.md is the user's side of every setting.
 */
#include "gateway/gateway.h"

#include <loom/log.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define SEC ((int64_t)LOOM_NS_PER_SEC)
#define MS  ((int64_t)LOOM_NS_PER_MS)

static const struct loom_conf_field gw_fields[] = {
    LOOM_CONF_FIELD(struct gw_conf, inference, "inference", LIST, "127.0.0.1:8081",
                    "Inference replicas (HOST:PORT or unix:/PATH, comma-separated): /v2/..."),
    LOOM_CONF_FIELD(struct gw_conf, registry, "registry", LIST, "127.0.0.1:8082",
                    "Registry replicas: /api/v1/models, /api/v1/artifacts, /api/v1/resolve."),
    LOOM_CONF_FIELD(struct gw_conf, trainer, "trainer", LIST, "127.0.0.1:8083",
                    "Trainer replicas: /api/v1/datasets, /api/v1/training-jobs."),
    LOOM_CONF_FIELD(struct gw_conf, ingest, "ingest", LIST, "127.0.0.1:8084",
                    "Ingest replicas: /api/v1/streams."),
    LOOM_CONF_FIELD(struct gw_conf, identity, "identity", LIST, "127.0.0.1:8087",
                    "Identity replicas: /oauth/token, /.well-known/jwks.json, /api/v1/clients; "
                    "the JWKS is fetched from them."),
    LOOM_CONF_FIELD(struct gw_conf, issuer, "issuer", STRING, "http://127.0.0.1:8087",
                    "The iss every token must have (identity's --identity.issuer)."),
    LOOM_CONF_FIELD(struct gw_conf, audience, "audience", STRING, "loom",
                    "The aud every token must have (identity's --identity.audience)."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, leeway, "leeway", DURATION, "30s", 0, 60 * SEC,
                          "Clock skew tolerated on exp and nbf (at most 60s)."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, jwks_refresh, "jwks-refresh", DURATION, "5m", SEC,
                          86400 * SEC, "How often the JWKS is fetched again."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, jwks_min_refresh, "jwks-min-refresh", DURATION, "5s",
                          100 * MS, 3600 * SEC,
                          "At most one JWKS fetch per this for tokens naming an unknown key."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, token_cache_size, "token-cache-size", INT, "16384", 2,
                          1 << 24, "Verified tokens cached per loop thread."),
    LOOM_CONF_FIELD(struct gw_conf, ratelimit, "ratelimit", STRING, "memory",
                    "Where rate limits and idempotency records live: memory, or "
                    "redis://HOST:PORT[/DB] to share them between gateway replicas."),
    LOOM_CONF_FIELD(struct gw_conf, rate_limit, "rate-limit", STRING, "100/s:200",
                    "Default limit per client: N/s, N/m or N/h, optionally :BURST."),
    LOOM_CONF_FIELD(struct gw_conf, route_rate_limits, "route-rate-limits", LIST, NULL,
                    "Extra limits per client and route class, CLASS=RATE (classes: infer, v2, "
                    "models, artifacts, resolve, datasets, training-jobs, streams, clients, "
                    "token, jwks, flags, traffic, repository, openapi)."),
    LOOM_CONF_FIELD(struct gw_conf, client_rate_limits, "client-rate-limits", LIST, NULL,
                    "Per-client limits replacing the default, CLIENT_ID=RATE."),
    LOOM_CONF_FIELD(struct gw_conf, anonymous_rate_limit, "anonymous-rate-limit", STRING,
                    "50/s:100", "Limit per client address on public routes (empty: none)."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, max_in_flight, "max-in-flight", INT, "4096", 1, 1000000,
                          "Requests in flight at once; beyond, 503 with Retry-After."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, timeout, "timeout", DURATION, "30s", MS, 3600 * SEC,
                          "Deadline of a platform API request (all its attempts)."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, infer_timeout, "infer-timeout", DURATION, "10s", MS,
                          3600 * SEC, "Deadline of a /v2 request."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, upload_timeout, "upload-timeout", DURATION, "10m", MS,
                          86400 * SEC, "Deadline of an artifact or dataset upload."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, max_deadline, "max-deadline", DURATION, "10m", MS,
                          86400 * SEC,
                          "The longest deadline a client may ask for with "
                          "Loom-Deadline-Ms (never beyond the route's timeout)."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, max_api_body, "max-api-body", SIZE, "1MiB", 1,
                          (int64_t)1 << 32, "Largest platform API request body (then 413)."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, max_infer_body, "max-infer-body", SIZE, "64MiB", 1,
                          (int64_t)1 << 32, "Largest /v2 request body (then 413)."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, max_upload_body, "max-upload-body", SIZE, "1GiB", 1,
                          (int64_t)1 << 40,
                          "Largest artifact or dataset upload; held once in memory while it is "
                          "forwarded. Also the largest response body."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, max_tensor_elements, "max-tensor-elements", INT,
                          "16777216", 1, (int64_t)1 << 40,
                          "Largest tensor (elements of a shape) in a /v2 infer request."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, retries, "retries", INT, "2", 0, 10,
                          "Retries of a failed idempotent request on another replica."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, inference_pipeline, "inference-pipeline", INT, "16", 1,
                          32,
                          "/v2 requests sent back to back on one inference connection before "
                          "their answers (HTTP/1.1 pipelining: inference handles them together); "
                          "1: one at a time."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, breaker_threshold, "breaker-threshold", INT, "5", 1, 1000,
                          "Consecutive failures that eject a replica."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, ejection_time, "ejection-time", DURATION, "1s", 10 * MS,
                          3600 * SEC, "First ejection of a replica; doubles while it fails."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, max_ejection_time, "max-ejection-time", DURATION, "10s",
                          10 * MS, 3600 * SEC, "Longest ejection."),
    LOOM_CONF_FIELD(struct gw_conf, cors_origins, "cors-origins", LIST, NULL,
                    "Origins allowed by CORS (e.g. https://ui.example.com; * for any)."),
    LOOM_CONF_SECRET_FIELD(struct gw_conf, store, "store", STRING, "",
                           "The SQL store of splits and flags: sqlite:PATH or postgres://... "
                           "(default: sqlite:<data-dir>/gateway.db)."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, poll_interval, "poll-interval", DURATION, "1s", 50 * MS,
                          3600 * SEC,
                          "How often the store is checked for changed splits and "
                          "flags (other replicas' changes)."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, idempotency_ttl, "idempotency-ttl", DURATION, "24h", SEC,
                          30 * 86400 * SEC, "How long an Idempotency-Key's answer is kept."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, idempotency_max_keys, "idempotency-max-keys", INT,
                          "100000", 1, 100000000,
                          "Idempotency records kept in memory (the oldest goes first)."),
    LOOM_CONF_RANGE_FIELD(struct gw_conf, idempotency_max_response, "idempotency-max-response",
                          SIZE, "1MiB", 0, (int64_t)1 << 30,
                          "Largest answer kept for replay (a larger one releases the key)."),
    LOOM_CONF_FIELD(struct gw_conf, access_log, "access-log", BOOL, "true",
                    "One info line per request (never the token)."),
};

static double in_flight_fn(void *arg)
{
    struct gw_service *gw = arg;
    return (double)atomic_load(&gw->in_flight);
}

static void gw_free(struct gw_service *gw)
{
    for (size_t i = 0; i < gw->nloops; i++) {
        struct gw_loop *gl = &gw->loops[i];
        for (int u = 0; u < GW_UP__COUNT; u++)
            loom_http_upstream_free(gl->up[u]);
        loom_redis_free(gl->redis);
        gw_token_cache_free(gl->tokens);
        loom_jwks_unref(gl->jwks);
        gw_snapshot_unref(gl->snap);
    }
    free(gw->loops);
    gw_limits_release(gw);
    gw_idem_release(gw);
    gw_traffic_release(gw);
    gw_auth_release(gw);
    loom_router_free(gw->known);
    free(gw->known_routes);
    free(gw->openapi_json);
    free(gw);
}

static loom_err make_upstreams(struct gw_service *gw, struct gw_loop *gl, struct loom_error *err)
{
    const struct gw_conf *c = gw->conf;
    const struct loom_conf_list *lists[GW_UP__COUNT] = { &c->inference, &c->registry, &c->trainer,
                                                         &c->ingest, &c->identity };
    for (int u = 0; u < GW_UP__COUNT; u++) {
        if (lists[u]->n == 0)
            return loom_error_set(err, LOOM_EINVAL, "--gateway.%s needs at least one address",
                                  gw_upstream_names[u]);
        struct loom_http_upstream_config uc = {
            .name = gw_upstream_names[u],
            .addresses = lists[u]->items,
            .naddresses = lists[u]->n,
            .max_idle_per_address = 256,
            .timeout = c->timeout,
            .max_body_bytes = (size_t)c->max_upload_body,
            .max_attempts = (unsigned)c->retries + 1,
            .pipeline_depth = u == GW_UP_INFERENCE ? (unsigned)c->inference_pipeline : 1,
            .breaker_threshold = (unsigned)c->breaker_threshold,
            .ejection_time = c->ejection_time,
            .max_ejection_time = c->max_ejection_time,
            .metrics_owner = "gateway",
        };
        gl->up[u] = loom_http_upstream_new(gl->loop, &uc, err);
        if (!gl->up[u])
            return loom_error_prefix(err, "--gateway.%s", gw_upstream_names[u]);
    }
    return LOOM_OK;
}

static void metrics_init(struct gw_service *gw)
{
    struct loom_metrics *m = loom_metrics_global();
    static const char *const reason[] = { "reason" };
    gw->f_auth_fail = loom_metrics_counter_family(
        m, "gateway", "loom_gateway_auth_failures_total",
        "Requests refused by authentication, by reason (missing, malformed, expired, ...).", reason,
        1);
    gw->m_shed = loom_metrics_counter(m, "gateway", "loom_gateway_shed_total",
                                      "Requests refused with 503 at --gateway.max-in-flight.");
    gw->m_limited = loom_metrics_counter(m, "gateway", "loom_gateway_rate_limited_total",
                                         "Requests refused with 429 by a rate limit.");
    gw->m_token_hits = loom_metrics_counter(m, "gateway", "loom_gateway_token_cache_hits_total",
                                            "Tokens found in the verified-token cache.");
    gw->m_token_misses = loom_metrics_counter(m, "gateway", "loom_gateway_token_cache_misses_total",
                                              "Tokens verified (not in the verified-token cache).");
    gw->m_idem_replays = loom_metrics_counter(m, "gateway", "loom_gateway_idempotent_replays_total",
                                              "Answers replayed for a repeated Idempotency-Key.");
    gw->m_jwks_ok = loom_metrics_counter(m, "gateway", "loom_gateway_jwks_fetches_total",
                                         "JWKS documents fetched from identity and loaded.");
    gw->m_jwks_fail = loom_metrics_counter(m, "gateway", "loom_gateway_jwks_fetch_failures_total",
                                           "JWKS fetches that failed.");
    gw->m_redis_fallback =
        loom_metrics_counter(m, "gateway", "loom_gateway_ratelimit_fallbacks_total",
                             "Rate-limit checks done in memory because Redis did not answer.");
    loom_metrics_gauge_fn(m, "gateway", "loom_gateway_in_flight", "Requests in flight.",
                          in_flight_fn, gw);
}

static loom_err gw_init(struct loom_svc *svc, struct loom_error *err)
{
    struct gw_service *gw = loom_new(struct gw_service);
    gw->conf = loom_svc_conf(svc);
    gw->svc = svc;
    gw->pool = loom_svc_pool(svc);
    pthread_mutex_init(&gw->snap_mu, NULL);
    gw_auth_init(gw);
    metrics_init(gw);
    const struct gw_conf *c = gw->conf;
    loom_err e = LOOM_OK;
    bool redis = strcmp(c->ratelimit, "memory") != 0;
    if (redis && strncmp(c->ratelimit, "redis://", 8) != 0) {
        e = loom_error_set(err, LOOM_EINVAL,
                           "--gateway.ratelimit is memory or redis://HOST:PORT[/DB]");
        goto fail;
    }
    if (!c->issuer[0] || !c->audience[0]) {
        e = loom_error_set(err, LOOM_EINVAL, "--gateway.issuer and --gateway.audience are needed");
        goto fail;
    }
    const char *data_dir = loom_svc_global(svc)->data_dir;
    if (!c->store[0] && mkdir(data_dir, 0755) < 0 && errno != EEXIST) {
        e = loom_error_errno(err, "gateway: cannot create the data directory %s", data_dir);
        goto fail;
    }
    if ((e = gw_limits_init(gw, err)) || (e = gw_idem_init(gw, err)) ||
        (e = gw_openapi_init(gw, err)) || (e = gw_traffic_init(gw, err)))
        goto fail;
    /* The paths and methods the edge answers: its table without the catch-alls, and the
     * runtime's own GET routes, so that Allow lists them too. */
    static const char *const runtime_paths[] = { "/livez", "/readyz", "/metrics" };
    size_t nknown = gw_nroutes - GW_NCATCHALL + LOOM_ARRAY_SIZE(runtime_paths);
    gw->known_routes = loom_calloc(nknown, sizeof(*gw->known_routes));
    memcpy(gw->known_routes, gw_routes + GW_NCATCHALL,
           (gw_nroutes - GW_NCATCHALL) * sizeof(*gw->known_routes));
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(runtime_paths); i++)
        gw->known_routes[gw_nroutes - GW_NCATCHALL + i] =
            (struct loom_route){ LOOM_HTTP_GET, runtime_paths[i], gw_h_edge, 0, 0 };
    gw->known = loom_router_new(gw->known_routes, nknown, err);
    if (!gw->known) {
        e = LOOM_EINVAL;
        goto fail;
    }
    gw->nloops = loom_svc_nloops(svc);
    gw->loops = loom_calloc(gw->nloops, sizeof(*gw->loops));
    for (size_t i = 0; i < gw->nloops; i++) {
        struct gw_loop *gl = &gw->loops[i];
        gl->gw = gw;
        gl->index = i;
        gl->loop = loom_svc_loop(svc, i);
        loom_loop_set_data(gl->loop, gl);
        gl->tokens = gw_token_cache_new((size_t)c->token_cache_size);
        if ((e = make_upstreams(gw, gl, err)))
            goto fail;
        if (redis) {
            gl->redis = loom_redis_new(gl->loop, c->ratelimit, NULL, err);
            if (!gl->redis) {
                e = loom_error_prefix(err, "--gateway.ratelimit");
                goto fail;
            }
        }
    }
    /* Loop 0 fetches the JWKS and polls the store; the timers fire once the loops run. */
    gw_auth_start(&gw->loops[0]);
    gw_traffic_start(&gw->loops[0]);
    LOOM_LOG_KV(
        LOOM_LOG_INFO, "gateway ready to route", LOOM_KV_UINT("inference_replicas", c->inference.n),
        LOOM_KV_CSTR("ratelimit", redis ? "redis" : "memory"), LOOM_KV_CSTR("issuer", c->issuer),
        LOOM_KV_CSTR("audience", c->audience), LOOM_KV_UINT("routes", gw_nroutes));
    loom_svc_set_state(svc, gw);
    return LOOM_OK;
fail:
    gw_free(gw);
    return e ? e : LOOM_EINVAL;
}

static bool gw_ready(void *state)
{
    struct gw_service *gw = state;
    return atomic_load(&gw->auth.loaded);
}

static void gw_fini(void *state)
{
    struct gw_service *gw = state;
    if (!gw)
        return;
    if (gw->nloops) { /* loop 0's timers are the only ones started */
        loom_timer_stop(&gw->loops[0].jwks_timer);
        loom_timer_stop(&gw->loops[0].poll_timer);
    }
    gw_free(gw);
}

const struct loom_service gateway_service = {
    .name = "gateway",
    .summary = "API gateway: the public edge (auth, rate limits, routing, traffic splits)",
    .default_listen = "127.0.0.1:8080",
    .error_body = loom_http_error_problem,
    .conf_fields = gw_fields,
    .nconf_fields = LOOM_ARRAY_SIZE(gw_fields),
    .conf_size = sizeof(struct gw_conf),
    .init = gw_init,
    .routes = gw_routes,
    .nroutes = GW_NROUTES,
    .ready = gw_ready,
    .fini = gw_fini,
};
