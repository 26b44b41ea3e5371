/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The report of a training job and its publication. The report says what was trained on what
 * (spec, rows, features and their encodings, split), how training went (parameters, per-round
 * metric, timings) and how the model did on the validation rows (metrics, confusion matrix,
 * fairness per group, latency, gates). It is stored with the job and pushed to the model
 * registry as the metadata of a new version, with the lineage (dataset digest, job id, code
 * version): `ready` when every gate passed, `rejected` otherwise. The registry is reached over
 * its public HTTP API only (services never call each other's functions), with loom_http_fetch
 * from the job's pool thread and an Idempotency-Key on every POST.
 */
#include "trainer/trainer.h"

#include <loom/http_client.h>
#include <loom/log.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void num(struct loom_json_writer *w, const char *key, double v)
{
    loom_json_write_key(w, key);
    if (isfinite(v))
        loom_json_write_double(w, v);
    else
        loom_json_write_null(w);
}

void trn_report_json(struct loom_buf *out, const struct trn_report_in *in)
{
    const struct trn_spec *spec = in->spec;
    const struct trn_data *d = in->data;
    struct loom_json_writer w;
    loom_json_writer_init(&w, out);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "model");
    loom_json_write_string(&w, spec->model);
    loom_json_write_key(&w, "backend");
    loom_json_write_string(&w, spec->backend == TRN_BACKEND_XGBOOST ? "xgboost" : "linear");
    loom_json_write_key(&w, "objective");
    loom_json_write_string(&w, spec->objective);
    loom_json_write_key(&w, "dataset");
    loom_json_write_string(&w, spec->dataset);
    loom_json_write_key(&w, "label");
    loom_json_write_string(&w, spec->label);
    loom_json_write_key(&w, "features");
    loom_json_write_array_begin(&w);
    for (size_t i = 0; i < spec->nfeatures; i++)
        loom_json_write_string(&w, spec->features[i]);
    loom_json_write_array_end(&w);
    loom_json_write_key(&w, "sensitive");
    loom_json_write_string(&w, spec->sensitive);
    /* String features are label-encoded: the value at index i is fed to the model as i. */
    loom_json_write_key(&w, "encodings");
    loom_json_write_object_begin(&w);
    for (size_t i = 0; i < d->nenc; i++) {
        loom_json_write_key(&w, d->enc[i].column);
        loom_json_write_array_begin(&w);
        for (size_t k = 0; k < d->enc[i].n; k++)
            loom_json_write_string(&w, d->enc[i].values[k]);
        loom_json_write_array_end(&w);
    }
    loom_json_write_object_end(&w);
    loom_json_write_key(&w, "split");
    loom_json_write_object_begin(&w);
    num(&w, "validation", spec->validation);
    loom_json_write_key(&w, "seed");
    loom_json_write_u64(&w, spec->seed);
    loom_json_write_key(&w, "train_rows");
    loom_json_write_u64(&w, in->ntr);
    loom_json_write_key(&w, "validation_rows");
    loom_json_write_u64(&w, in->nva);
    loom_json_write_object_end(&w);
    loom_json_write_key(&w, "parameters");
    if (in->train->info.len)
        loom_json_write_raw(&w, loom_buf_str(&in->train->info));
    else
        loom_json_write_null(&w);
    loom_json_write_key(&w, "validation_metric");
    loom_json_write_string(&w, in->train->metric);
    loom_json_write_key(&w, "metrics");
    trn_eval_metrics_json(&w, in->ev);
    trn_eval_report_members(&w, in->ev, spec->sensitive);
    loom_json_write_key(&w, "artifact");
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "digest");
    loom_json_write_string(&w, in->model_digest);
    loom_json_write_key(&w, "size");
    loom_json_write_u64(&w, in->model_size);
    loom_json_write_key(&w, "format");
    loom_json_write_string(&w, in->train->format);
    loom_json_write_object_end(&w);
    loom_json_write_key(&w, "timings_ms");
    loom_json_write_object_begin(&w);
    num(&w, "queued", in->queued_ms);
    num(&w, "load", in->load_ms);
    num(&w, "train", in->train_ms);
    num(&w, "evaluate", in->evaluate_ms);
    num(&w, "submit_to_trained", in->queued_ms + in->load_ms + in->train_ms);
    loom_json_write_object_end(&w);
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
}

void trn_metadata_json(struct loom_buf *out, const struct trn_report_in *in, struct loom_str report)
{
    const struct trn_spec *spec = in->spec;
    struct loom_json_writer w;
    loom_json_writer_init(&w, out);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "metrics");
    trn_eval_metrics_json(&w, in->ev);
    loom_json_write_key(&w, "parameters");
    if (in->train->info.len)
        loom_json_write_raw(&w, loom_buf_str(&in->train->info));
    else
        loom_json_write_null(&w);
    loom_json_write_key(&w, "lineage");
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "dataset_digest");
    loom_json_write_string(&w, spec->dataset);
    loom_json_write_key(&w, "training_job");
    loom_json_write_string(&w, in->job_id);
    loom_json_write_key(&w, "code_version");
    loom_json_write_string(&w, spec->code_version);
    loom_json_write_object_end(&w);
    loom_json_write_key(&w, "report");
    loom_json_write_raw(&w, report);
    loom_json_write_key(&w, "description");
    if (spec->description[0]) {
        loom_json_write_string(&w, spec->description);
    } else {
        char text[256];
        snprintf(text, sizeof(text), "Trained by loom's trainer (job %s) on %s", in->job_id,
                 spec->dataset);
        loom_json_write_string(&w, text);
    }
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
}

/* ---- the registry's API ---- */

#define PUBLISH_ATTEMPTS 4
#define PUBLISH_TIMEOUT  (60 * LOOM_NS_PER_SEC)

/* The "detail" of a problem answer, or the body's start. */
static void answer_detail(const struct loom_http_fetch_result *r, char *out, size_t cap)
{
    struct loom_arena a;
    loom_arena_init(&a, 0);
    struct loom_json_doc doc;
    struct loom_str s = LOOM_STR_NULL;
    if (loom_json_parse(r->body, r->body_len, NULL, &a, &doc, NULL) == LOOM_OK &&
        loom_json_is_object(&doc, 0)) {
        int i = loom_json_obj_get(&doc, 0, "detail");
        if (i < 0)
            i = loom_json_obj_get(&doc, 0, "error");
        if (i >= 0 && loom_json_is_string(&doc, i))
            loom_json_unescape(&doc, i, &a, &s);
    }
    if (!s.len)
        s = loom_str_make(r->body, LOOM_MIN(r->body_len, (size_t)160));
    snprintf(out, cap, "%.*s", LOOM_STR_FMT(s));
    loom_arena_release(&a);
}

static bool stopping(const struct loom_svc *svc)
{
    return svc && loom_svc_is_draining(svc);
}

/* POST `body` to base + path; *out holds the answer, whatever its status, unless an error is
 * returned. Connection errors and 5xx are tried again. */
static loom_err post(const char *base, const char *path, const char *ctype, const char *key,
                     struct loom_str body, const struct loom_svc *svc,
                     struct loom_http_fetch_result *out, struct loom_error *err)
{
    char url[1024];
    snprintf(url, sizeof(url), "%s%s", base, path);
    struct loom_http_header h[2] = {
        { LOOM_STR("Content-Type"), loom_str_cstr(ctype) },
        { LOOM_STR("Idempotency-Key"), loom_str_cstr(key) },
    };
    loom_err e = LOOM_OK;
    for (int attempt = 1;; attempt++) {
        struct loom_error ferr = { 0 };
        memset(out, 0, sizeof(*out));
        e = loom_http_fetch(url, LOOM_HTTP_POST, h, 2, body, PUBLISH_TIMEOUT, (size_t)16 << 20, out,
                            &ferr);
        if (!e && out->status < 500)
            return LOOM_OK;
        if (!e) {
            char detail[200];
            answer_detail(out, detail, sizeof(detail));
            loom_error_set(err, LOOM_EUNAVAIL, "the registry answered POST %s with %d: %s", path,
                           out->status, detail);
            loom_http_fetch_result_release(out);
            e = LOOM_EUNAVAIL;
        } else {
            loom_error_set(err, e, "the registry at %s cannot be reached: %s", base, ferr.msg);
        }
        if (attempt == PUBLISH_ATTEMPTS || stopping(svc))
            return e;
        LOOM_LOG_KV(LOOM_LOG_WARN, "registry call failed; retrying", LOOM_KV_CSTR("path", path),
                    LOOM_KV_CSTR("error", err->msg), LOOM_KV_INT("attempt", attempt));
        struct timespec ts = { .tv_sec = 0, .tv_nsec = 250000000L << (attempt - 1) };
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec = ts.tv_nsec / 1000000000L;
            ts.tv_nsec %= 1000000000L;
        }
        nanosleep(&ts, NULL);
    }
}

/* A string or integer member of a JSON answer. */
static bool answer_member(const struct loom_http_fetch_result *r, const char *key, char *s,
                          size_t cap, int64_t *i)
{
    struct loom_arena a;
    loom_arena_init(&a, 0);
    struct loom_json_doc doc;
    bool ok = false;
    if (loom_json_parse(r->body, r->body_len, NULL, &a, &doc, NULL) == LOOM_OK &&
        loom_json_is_object(&doc, 0)) {
        int v = loom_json_obj_get(&doc, 0, key);
        struct loom_str str;
        if (v >= 0 && s && loom_json_is_string(&doc, v) &&
            loom_json_unescape(&doc, v, &a, &str) == LOOM_OK) {
            snprintf(s, cap, "%.*s", LOOM_STR_FMT(str));
            ok = true;
        } else if (v >= 0 && i && loom_json_to_i64(&doc, v, i) == LOOM_OK) {
            ok = true;
        }
    }
    loom_arena_release(&a);
    return ok;
}

static loom_err refused(const char *what, const struct loom_http_fetch_result *r,
                        struct loom_error *err)
{
    char detail[200];
    answer_detail(r, detail, sizeof(detail));
    return loom_error_set(err, LOOM_EINVAL, "the registry refused %s (%d): %s", what, r->status,
                          detail);
}

loom_err trn_publish(const char *base, const char *job_id, const char *model_name,
                     const char *description, const char *model, size_t model_len, bool ready,
                     struct loom_str metadata, const struct loom_svc *svc,
                     struct trn_published *out, struct loom_error *err)
{
    struct loom_http_fetch_result r;
    char key[96], path[512];
    loom_err e;

    /* 1. The model file, content-addressed. */
    snprintf(key, sizeof(key), "trainer-%s-artifact", job_id);
    if ((e = post(base, "/api/v1/artifacts", "application/json", key,
                  loom_str_make(model, model_len), svc, &r, err)))
        return e;
    if (r.status != 200 && r.status != 201) {
        e = refused("the model file", &r, err);
        loom_http_fetch_result_release(&r);
        return e;
    }
    if (!answer_member(&r, "digest", out->digest, sizeof(out->digest), NULL)) {
        loom_http_fetch_result_release(&r);
        return loom_error_set(err, LOOM_EPARSE, "the registry's artifact answer has no digest");
    }
    loom_http_fetch_result_release(&r);

    /* 2. The model, unless it exists (409). */
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "name");
    loom_json_write_string(&w, model_name);
    loom_json_write_key(&w, "description");
    loom_json_write_string(&w, description);
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
    snprintf(key, sizeof(key), "trainer-%s-model", job_id);
    e = post(base, "/api/v1/models", "application/json", key, loom_buf_str(&b), svc, &r, err);
    loom_buf_release(&b);
    if (e)
        return e;
    if (r.status != 200 && r.status != 201 && r.status != 409) {
        e = refused("the model", &r, err);
        loom_http_fetch_result_release(&r);
        return e;
    }
    loom_http_fetch_result_release(&r);

    /* 3. The version, with the report. */
    loom_buf_init(&b, 0);
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "artifact_digest");
    loom_json_write_string(&w, out->digest);
    loom_json_write_key(&w, "status");
    loom_json_write_string(&w, ready ? "ready" : "rejected");
    loom_json_write_key(&w, "metadata");
    loom_json_write_raw(&w, metadata);
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
    snprintf(key, sizeof(key), "trainer-%s-version", job_id);
    snprintf(path, sizeof(path), "/api/v1/models/%s/versions", model_name);
    e = post(base, path, "application/json", key, loom_buf_str(&b), svc, &r, err);
    loom_buf_release(&b);
    if (e)
        return e;
    if (r.status != 200 && r.status != 201) {
        e = refused("the version", &r, err);
        loom_http_fetch_result_release(&r);
        return e;
    }
    if (!answer_member(&r, "version", NULL, 0, &out->version)) {
        loom_http_fetch_result_release(&r);
        return loom_error_set(err, LOOM_EPARSE, "the registry's version answer has no version");
    }
    loom_http_fetch_result_release(&r);
    return LOOM_OK;
}
