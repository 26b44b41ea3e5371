/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The v2 REST surface: health, server and model metadata, model readiness and configuration,
 * infer, and the repository and statistics extensions. Errors use the protocol's
 * {"error": "..."} body: 400 for a bad request, 404 for an unknown model or version, 503 (with
 * Retry-After) for a model that is not ready or a full queue, 500 for the rest.
 */
#include "inference/inference.h"

#include <loom/json.h>
#include <loom/log.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct inf_service *svc_of(struct loom_http_req *req)
{
    return req->ctx;
}

static void respond_json(struct loom_http_req *req, int status, struct loom_buf *b)
{
    loom_http_respond_buf(req, status, "application/json", b);
    loom_buf_release(b);
}

/* 503 with Retry-After: the condition is temporary. */
static void unavailable(struct loom_http_req *req, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void unavailable(struct loom_http_req *req, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    loom_http_resp_header(req, "Retry-After", LOOM_STR("1"));
    loom_http_respond_error(req, 503, "%s", msg);
}

/* ---- lookups ---- */

/* The model named by the route, and the version asked for (0: none), or an error answered. */
static const struct inf_snap_model *find_model(struct loom_http_req *req, int64_t *version)
{
    struct inf_service *inf = svc_of(req);
    struct loom_str name = loom_http_req_param(req, "name");
    struct loom_error err = { 0 };
    if (!inf_valid_model_name(name, &err)) {
        loom_http_respond_error(req, 400, "%s", err.msg);
        return NULL;
    }
    *version = 0;
    struct loom_str ver = loom_http_req_param(req, "version");
    if (ver.len && (loom_str_to_i64(ver, version) || *version < 1)) {
        loom_http_respond_error(req, 400, "version \"%.*s\" must be a positive integer",
                                LOOM_STR_FMT(ver));
        return NULL;
    }
    const struct inf_snap_model *m = inf_snap_find(inf_snapshot(inf), name);
    if (!m) {
        loom_http_respond_error(req, 404, "unknown model '%.*s'", LOOM_STR_FMT(name));
        return NULL;
    }
    return m;
}

/* The version to serve from model m, or an error answered (404 unknown, 503 not ready). */
static struct inf_version *find_ready(struct loom_http_req *req, const struct inf_snap_model *m,
                                      int64_t version)
{
    const struct inf_snap_version *sv = inf_snap_pick(m, version);
    if (!sv) {
        if (version) {
            loom_http_respond_error(req, 404, "model '%s' has no version %lld", m->name,
                                    (long long)version);
            return NULL;
        }
        unavailable(req, "model '%s' has no ready version: %s", m->name,
                    m->reason ? m->reason : "not loaded");
        return NULL;
    }
    if (sv->state != INF_READY || !sv->v) {
        char ver[24];
        snprintf(ver, sizeof(ver), "%lld", (long long)sv->version);
        loom_http_resp_header(req, "Retry-After", LOOM_STR("1"));
        loom_http_respond_error(req, 503, "model '%s' version %s is not ready: %s", m->name, ver,
                                sv->reason ? sv->reason : inf_state_name(sv->state));
        return NULL;
    }
    return sv->v;
}

/* ---- health and server metadata ---- */

static void h_live(struct loom_http_req *req)
{
    loom_http_respond(req, 200, "application/json", LOOM_STR("{\"live\":true}"));
}

static void h_ready(struct loom_http_req *req)
{
    struct inf_service *inf = svc_of(req);
    if (!atomic_load(&inf->initial_load_done)) {
        unavailable(req, "the model repository is still loading");
        return;
    }
    if (loom_svc_is_draining(inf->svc)) {
        unavailable(req, "the server is shutting down");
        return;
    }
    loom_http_respond(req, 200, "application/json", LOOM_STR("{\"ready\":true}"));
}

static void h_server_metadata(struct loom_http_req *req)
{
    loom_http_respond(req, 200, "application/json",
                      LOOM_STR("{\"name\":\"loom\",\"version\":\"" LOOM_VERSION "\","
                               "\"extensions\":[\"binary_tensor_data\",\"classification\","
                               "\"model_repository\",\"model_repository(unload_dependents)\","
                               "\"schedule_policy\",\"model_configuration\",\"statistics\","
                               "\"parameters\"]}"));
}

/* ---- model metadata, readiness, configuration ---- */

static void write_tensor_meta(struct loom_json_writer *w, const struct inf_config *c,
                              const struct inf_tensor_spec *t)
{
    loom_json_write_array_begin(w);
    loom_json_write_object_begin(w);
    loom_json_write_key(w, "name");
    loom_json_write_string(w, t->name);
    loom_json_write_key(w, "datatype");
    loom_json_write_string(w, loom_dtype_name(t->dtype));
    loom_json_write_key(w, "shape");
    loom_json_write_array_begin(w);
    if (c->max_batch_size > 0)
        loom_json_write_i64(w, -1);
    for (size_t i = 0; i < t->ndims; i++)
        loom_json_write_i64(w, t->dims[i]);
    loom_json_write_array_end(w);
    loom_json_write_object_end(w);
    loom_json_write_array_end(w);
}

static void h_model_metadata(struct loom_http_req *req)
{
    int64_t version;
    const struct inf_snap_model *m = find_model(req, &version);
    if (!m)
        return;
    struct inf_version *v = find_ready(req, m, version);
    if (!v)
        return;
    const struct inf_config *c = v->config;
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "name");
    loom_json_write_string(&w, m->name);
    loom_json_write_key(&w, "versions");
    loom_json_write_array_begin(&w);
    for (size_t i = 0; i < m->nversions; i++) {
        const struct inf_snap_version *sv = &m->versions[i];
        if (sv->state == INF_READY && (!version || sv->version == version)) {
            char ver[24];
            snprintf(ver, sizeof(ver), "%lld", (long long)sv->version);
            loom_json_write_string(&w, ver);
        }
    }
    loom_json_write_array_end(&w);
    loom_json_write_key(&w, "platform");
    loom_json_write_string(&w, c->platform);
    loom_json_write_key(&w, "inputs");
    write_tensor_meta(&w, c, &c->input);
    loom_json_write_key(&w, "outputs");
    write_tensor_meta(&w, c, &c->output);
    loom_json_write_key(&w, "parameters");
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "objective");
    loom_json_write_string(&w, v->info->objective);
    loom_json_write_key(&w, "backend");
    loom_json_write_string(&w, c->backend);
    if (v->info->feature_names) {
        loom_json_write_key(&w, "feature_names");
        loom_json_write_array_begin(&w);
        for (size_t i = 0; i < v->info->num_features; i++)
            loom_json_write_string(&w, v->info->feature_names[i]);
        loom_json_write_array_end(&w);
    }
    loom_json_write_object_end(&w);
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
    respond_json(req, 200, &b);
}

static void h_model_ready(struct loom_http_req *req)
{
    int64_t version;
    const struct inf_snap_model *m = find_model(req, &version);
    if (!m)
        return;
    if (!find_ready(req, m, version))
        return;
    struct loom_buf b;
    loom_buf_init(&b, 0);
    loom_buf_append_cstr(&b, "{\"name\":");
    loom_json_escape(&b, m->name, strlen(m->name));
    loom_buf_append_cstr(&b, ",\"ready\":true}");
    respond_json(req, 200, &b);
}

static void h_model_config(struct loom_http_req *req)
{
    int64_t version;
    const struct inf_snap_model *m = find_model(req, &version);
    if (!m)
        return;
    struct inf_version *v = find_ready(req, m, version);
    if (v)
        loom_http_respond(req, 200, "application/json", loom_str_cstr(v->config->json));
}

/* ---- infer ---- */

static void h_infer(struct loom_http_req *req)
{
    struct inf_service *inf = svc_of(req);
    int64_t version;
    const struct inf_snap_model *m = find_model(req, &version);
    if (!m)
        return;
    struct inf_version *v = find_ready(req, m, version);
    if (!v)
        return;
    struct inf_job *job = loom_arena_new(req->arena, struct inf_job);
    job->http = req;
    job->v = inf_version_ref(v);
    job->t_start = req->start_ns;
    struct loom_error err = { 0 };
    int status = inf_decode(v, req, &job->req, &err);
    if (status) {
        inf_job_fail(job, status, "%s", err.msg);
        return;
    }
    job->y = loom_arena_alloc(req->arena,
                              (size_t)job->req.rows * v->config->out_width * sizeof(float) + 1);
    inf_submit(inf_loop_of(req->loop), job);
    LOOM_UNUSED(inf);
}

/* ---- statistics ---- */

static void h_stats(struct loom_http_req *req)
{
    struct inf_service *inf = svc_of(req);
    struct loom_str name = loom_http_req_param(req, "name");
    int64_t version = 0;
    const struct inf_snap_model *only = NULL;
    if (name.len) {
        only = find_model(req, &version);
        if (!only)
            return;
        if (version && !inf_snap_pick(only, version)) {
            loom_http_respond_error(req, 404, "model '%s' has no version %lld", only->name,
                                    (long long)version);
            return;
        }
    }
    const struct inf_snapshot *s = inf_snapshot(inf);
    struct loom_buf b;
    loom_buf_init(&b, 0);
    loom_buf_append_cstr(&b, "{\"model_stats\":[");
    bool first = true;
    for (size_t i = 0; i < s->nmodels; i++) {
        const struct inf_snap_model *m = &s->models[i];
        if (only && m != only)
            continue;
        for (size_t j = 0; j < m->nversions; j++) {
            const struct inf_snap_version *sv = &m->versions[j];
            if (!sv->v || (version && sv->version != version))
                continue;
            if (!first)
                loom_buf_putc(&b, ',');
            first = false;
            inf_stats_json(sv->v, sv->v->stats, m->name, sv->v->version_str, &b);
        }
    }
    loom_buf_append_cstr(&b, "]}");
    respond_json(req, 200, &b);
}

/* ---- the repository extension ---- */

static void h_repo_index(struct loom_http_req *req)
{
    bool ready_only = false;
    if (req->body.len) {
        struct loom_json_doc doc;
        if (loom_json_parse(req->body.ptr, req->body.len, NULL, req->arena, &doc, NULL) ||
            !loom_json_is_object(&doc, 0)) {
            loom_http_respond_error(req, 400,
                                    "the body must be a JSON object like "
                                    "{\"ready\": true}");
            return;
        }
        int r = loom_json_obj_get(&doc, 0, "ready");
        if (r >= 0 && loom_json_to_bool(&doc, r, &ready_only)) {
            loom_http_respond_error(req, 400, "'ready' must be a boolean");
            return;
        }
    }
    struct loom_buf b;
    loom_buf_init(&b, 0);
    inf_repo_index(svc_of(req), ready_only, &b);
    respond_json(req, 200, &b);
}

static void ctl_done(void *arg, loom_err err, const char *msg)
{
    struct loom_http_req *req = arg;
    if (!err)
        loom_http_respond(req, 200, "application/json", LOOM_STR("{}"));
    else
        loom_http_respond_error(req, err == LOOM_ENOTFOUND ? 404 : 400, "%s", msg);
}

static bool explicit_control(struct loom_http_req *req)
{
    struct inf_service *inf = svc_of(req);
    if (inf->conf->model_control == INF_CONTROL_EXPLICIT)
        return true;
    loom_http_respond_error(req, 400,
                            "loading and unloading models needs explicit model control "
                            "(start with --inference.model-control=explicit)");
    return false;
}

static void h_repo_load(struct loom_http_req *req)
{
    struct inf_service *inf = svc_of(req);
    struct loom_str name = loom_http_req_param(req, "name");
    struct loom_error err = { 0 };
    if (!inf_valid_model_name(name, &err)) {
        loom_http_respond_error(req, 400, "%s", err.msg);
        return;
    }
    if (!explicit_control(req))
        return;
    struct loom_str config = LOOM_STR_NULL;
    bool has_config = false;
    if (req->body.len) {
        struct loom_json_doc doc;
        struct loom_error jerr = { 0 };
        if (loom_json_parse(req->body.ptr, req->body.len, NULL, req->arena, &doc, &jerr) ||
            !loom_json_is_object(&doc, 0)) {
            loom_http_respond_error(req, 400, "the body must be a JSON object: %s",
                                    jerr.msg[0] ? jerr.msg : "not an object");
            return;
        }
        int params = loom_json_obj_get(&doc, 0, "parameters");
        if (params >= 0) {
            if (!loom_json_is_object(&doc, params)) {
                loom_http_respond_error(req, 400, "'parameters' must be an object");
                return;
            }
            loom_json_foreach (&doc, params, k) {
                struct loom_str key = loom_json_slice(&doc, k);
                if (loom_str_eq_cstr(key, "config")) {
                    if (!loom_json_is_string(&doc, k + 1) ||
                        loom_json_unescape(&doc, k + 1, req->arena, &config)) {
                        loom_http_respond_error(req, 400,
                                                "parameters.config must be a string "
                                                "holding the model configuration "
                                                "as JSON");
                        return;
                    }
                    has_config = true;
                } else if (loom_str_has_prefix(key, LOOM_STR("file:"))) {
                    loom_http_respond_error(req, 400,
                                            "file overrides (\"%.*s\") are not "
                                            "supported: put the files in the "
                                            "repository",
                                            LOOM_STR_FMT(key));
                    return;
                }
            }
        }
    }
    if (inf_repo_load(inf, req->loop, name, has_config ? config.ptr : NULL, config.len, ctl_done,
                      req))
        unavailable(req, "the server is busy; try again");
}

static void h_repo_unload(struct loom_http_req *req)
{
    struct inf_service *inf = svc_of(req);
    struct loom_str name = loom_http_req_param(req, "name");
    struct loom_error err = { 0 };
    if (!inf_valid_model_name(name, &err)) {
        loom_http_respond_error(req, 400, "%s", err.msg);
        return;
    }
    if (!explicit_control(req))
        return;
    if (inf_repo_unload(inf, req->loop, name, ctl_done, req))
        unavailable(req, "the server is busy; try again");
}

static void h_repo_named(struct loom_http_req *req)
{
    loom_http_respond_error(req, 400, "'repository_name' specification is not supported");
}

const struct loom_route inf_routes[INF_NROUTES] = {
    { LOOM_HTTP_GET, "/v2", h_server_metadata, 0, 0 },
    { LOOM_HTTP_GET, "/v2/health/live", h_live, 0, 0 },
    { LOOM_HTTP_GET, "/v2/health/ready", h_ready, 0, 0 },
    { LOOM_HTTP_GET, "/v2/models/stats", h_stats, 0, 0 },
    { LOOM_HTTP_GET, "/v2/models/{name}", h_model_metadata, 0, 0 },
    { LOOM_HTTP_GET, "/v2/models/{name}/versions/{version}", h_model_metadata, 0, 0 },
    { LOOM_HTTP_GET, "/v2/models/{name}/ready", h_model_ready, 0, 0 },
    { LOOM_HTTP_GET, "/v2/models/{name}/versions/{version}/ready", h_model_ready, 0, 0 },
    { LOOM_HTTP_GET, "/v2/models/{name}/config", h_model_config, 0, 0 },
    { LOOM_HTTP_GET, "/v2/models/{name}/versions/{version}/config", h_model_config, 0, 0 },
    { LOOM_HTTP_GET, "/v2/models/{name}/stats", h_stats, 0, 0 },
    { LOOM_HTTP_GET, "/v2/models/{name}/versions/{version}/stats", h_stats, 0, 0 },
    { LOOM_HTTP_POST, "/v2/models/{name}/infer", h_infer, 0, LOOM_ROUTE_PARALLEL },
    { LOOM_HTTP_POST, "/v2/models/{name}/versions/{version}/infer", h_infer, 0,
      LOOM_ROUTE_PARALLEL },
    { LOOM_HTTP_POST, "/v2/repository/index", h_repo_index, 0, 0 },
    { LOOM_HTTP_POST, "/v2/repository/models/{name}/load", h_repo_load, 0, 0 },
    { LOOM_HTTP_POST, "/v2/repository/models/{name}/unload", h_repo_unload, 0, 0 },
    { LOOM_HTTP_POST, "/v2/repository/{repo}/index", h_repo_named, 0, 0 },
    { LOOM_HTTP_POST, "/v2/repository/{repo}/models/{name}/load", h_repo_named, 0, 0 },
    { LOOM_HTTP_POST, "/v2/repository/{repo}/models/{name}/unload", h_repo_named, 0, 0 },
};

_Static_assert(sizeof(inf_routes) / sizeof(inf_routes[0]) == INF_NROUTES, "INF_NROUTES");
