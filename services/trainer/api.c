/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The trainer's REST surface under /api/v1: datasets and training jobs. Handlers parse what
 * they can on the loop thread, then run their store work as a struct trn_op on the work pool
 * and answer from its completion, back on the loop. Errors are RFC 9457 problems; those about a
 * request's content name the offending field ("field": "params.max_depth") and, for CSV, the
 * line and column.
 */
#include "trainer/trainer.h"

#include <loom/log.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- problems ---- */

void trn_problem_body(struct loom_buf *b, int status, const char *detail, const char *field,
                      uint64_t line, uint64_t column)
{
    struct loom_json_writer w;
    loom_buf_reset(b);
    loom_json_writer_init(&w, b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "type");
    loom_json_write_string(&w, "about:blank");
    loom_json_write_key(&w, "title");
    loom_json_write_string(&w, loom_http_status_reason(status));
    loom_json_write_key(&w, "status");
    loom_json_write_i64(&w, status);
    loom_json_write_key(&w, "detail");
    loom_json_write_string(&w, detail);
    if (field && field[0]) {
        loom_json_write_key(&w, "field");
        loom_json_write_string(&w, field);
    }
    if (line) {
        loom_json_write_key(&w, "line");
        loom_json_write_u64(&w, line);
        loom_json_write_key(&w, "column");
        loom_json_write_u64(&w, column);
    }
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
}

void trn_problem(struct loom_http_req *req, int status, const char *field, const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    struct loom_buf b;
    loom_buf_init(&b, 0);
    trn_problem_body(&b, status, detail, field, 0, 0);
    loom_http_respond_buf(req, status, "application/problem+json", &b);
    loom_buf_release(&b);
}

/* ---- operations ---- */

struct trn_op *trn_op_new(struct loom_http_req *req, trn_op_fn fn, void *args)
{
    struct trn_op *op = loom_arena_new(req->arena, struct trn_op);
    op->req = req;
    op->trn = req->ctx;
    op->fn = fn;
    op->args = args;
    op->status = 500;
    loom_buf_init(&op->body, 0);
    return op;
}

static void op_release(void *arg)
{
    struct trn_op *op = arg;
    loom_buf_release(&op->body);
}

static void op_work(struct loom_work *w)
{
    struct trn_op *op = LOOM_CONTAINER_OF(w, struct trn_op, work);
    const char *prev = loom_log_service(); /* a worker of the process's pool, shared */
    loom_log_set_service("trainer");
    op->fn(op);
    loom_log_set_service(prev);
}

static void op_done(struct loom_work *w, loom_err status)
{
    struct trn_op *op = LOOM_CONTAINER_OF(w, struct trn_op, work);
    if (status) {
        trn_problem(op->req, 503, NULL, "the trainer is shutting down");
        return;
    }
    if (!op->content_type)
        op->content_type = "application/json";
    if (op->location[0])
        loom_http_resp_header(op->req, "Location", loom_str_cstr(op->location));
    loom_http_respond_buf(op->req, op->status, op->content_type, &op->body);
}

void trn_op_submit(struct trn_op *op)
{
    loom_arena_add_cleanup(op->req->arena, op_release, op);
    if (loom_pool_submit(op->trn->pool, op->req->loop, &op->work, op_work, op_done)) {
        loom_http_resp_header(op->req, "Retry-After", LOOM_STR("1"));
        trn_problem(op->req, 503, NULL, "the trainer is overloaded; try again");
    }
}

void trn_op_problem(struct trn_op *op, int status, const char *field, const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    op->status = status;
    op->content_type = "application/problem+json";
    trn_problem_body(&op->body, status, detail, field, 0, 0);
}

void trn_op_store_error(struct trn_op *op, loom_err e, const struct loom_error *err)
{
    LOOM_LOG_KV(LOOM_LOG_ERROR, "store error", LOOM_KV_CSTR("error", err->msg),
                LOOM_KV_CSTR("code", loom_err_name(e)));
    if (e == LOOM_ECONNECT || e == LOOM_EBUSY || e == LOOM_EUNAVAIL)
        trn_op_problem(op, 503, NULL, "the trainer's database is unavailable; try again");
    else
        trn_op_problem(op, 500, NULL, "internal error in the trainer's database");
}

void trn_op_json(struct trn_op *op, int status, struct loom_buf *b)
{
    loom_buf_release(&op->body);
    op->body = *b;
    loom_buf_init(b, 0);
    op->status = status;
    op->content_type = "application/json";
}

loom_err trn_exec(struct loom_store *s, const char *sql, const struct loom_sql_value *params,
                  size_t nparams, loom_sql_row_fn fn, void *arg, int64_t *changes,
                  struct loom_error *err)
{
    struct loom_db *db;
    loom_err e = loom_store_acquire(s, &db, err);
    if (e)
        return e;
    e = loom_db_exec(db, sql, params, nparams, fn, arg, changes, err);
    loom_store_release(s, db);
    return e;
}

bool trn_query_limit(struct loom_http_req *req, int64_t *limit)
{
    struct loom_str v;
    *limit = 50;
    if (!loom_http_req_query(req, "limit", &v))
        return true;
    if (loom_str_to_i64(v, limit) || *limit < 1 || *limit > 500) {
        trn_problem(req, 400, "limit", "limit must be an integer from 1 to 500");
        return false;
    }
    return true;
}

/* ---- routes ---- */

const struct loom_route trn_routes[TRN_NROUTES] = {
    /* The dataset limit is --trainer.max-dataset-bytes, enforced while the body streams. */
    { LOOM_HTTP_POST, "/api/v1/datasets", trn_h_dataset_upload, (size_t)1 << 42,
      LOOM_ROUTE_STREAM },
    { LOOM_HTTP_GET, "/api/v1/datasets", trn_h_dataset_list, 0, 0 },
    { LOOM_HTTP_GET, "/api/v1/datasets/{digest}", trn_h_dataset_get, 0, 0 },
    { LOOM_HTTP_POST, "/api/v1/training-jobs", trn_h_job_create, 0, 0 },
    { LOOM_HTTP_GET, "/api/v1/training-jobs", trn_h_job_list, 0, 0 },
    { LOOM_HTTP_GET, "/api/v1/training-jobs/{id}", trn_h_job_get, 0, 0 },
    { LOOM_HTTP_POST, "/api/v1/training-jobs/{id}/cancel", trn_h_job_cancel, 0, 0 },
};
