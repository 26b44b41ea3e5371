/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The registry's REST API under /api/v1 (api/openapi.yaml is its contract; docs/registry.md the
 * user's side). A handler parses and validates its request on the loop thread, answering 400 at
 * once for a bad name, version, query or body; then it runs its store work as a struct reg_op
 * on the work pool (the store blocks) and the completion answers, back on the loop. Writes run
 * in one transaction that checks the state, appends the event and applies it (events.c); a
 * refusal found there (404, 409) rolls the transaction back. Every error is an RFC 9457
 * problem. Lists are cursor-paginated: the cursor is the base64url of the last key answered,
 * and the next page starts after it, so a walk sees every item once even while items are added.
 */
#include "registry/registry.h"

#include <loom/log.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAGE_DEFAULT    50
#define PAGE_MAX        500
#define DESCRIPTION_MAX 4096
#define TAGS_MAX        64
#define TAG_KEY_MAX     128
#define TAG_VALUE_MAX   1024
#define IDEM_KEY_MAX    255

/* ---- names ---- */

static bool is_lower_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

bool reg_valid_model_name(struct loom_str s)
{
    if (s.len == 0 || s.len > 100 || !is_lower_alnum(s.ptr[0]))
        return false;
    for (size_t i = 1; i < s.len; i++)
        if (!is_lower_alnum(s.ptr[i]) && s.ptr[i] != '.' && s.ptr[i] != '_' && s.ptr[i] != '-')
            return false;
    return true;
}

bool reg_valid_alias(struct loom_str s)
{
    if (s.len == 0 || s.len > 63)
        return false;
    for (size_t i = 0; i < s.len; i++)
        if (!is_lower_alnum(s.ptr[i]) && s.ptr[i] != '-')
            return false;
    return true;
}

/* ---- operations ---- */

static void problem_body(struct loom_buf *b, const struct loom_http_req *req, int status,
                         const char *detail)
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
    loom_json_write_key(&w, "instance");
    loom_json_write_str(&w, req->path);
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
}

void reg_problem(struct loom_http_req *req, int status, const char *fmt, ...)
{
    char detail[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    struct loom_buf b;
    loom_buf_init(&b, 0);
    problem_body(&b, req, status, detail);
    loom_http_respond_buf(req, status, "application/problem+json", &b);
    loom_buf_release(&b);
}

void reg_op_problem(struct reg_op *op, int status, const char *fmt, ...)
{
    char detail[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    problem_body(&op->body, op->req, status, detail);
    op->status = status;
    op->content_type = "application/problem+json";
}

void reg_op_store_error(struct reg_op *op, loom_err e, const struct loom_error *err)
{
    LOOM_LOG_KV(LOOM_LOG_ERROR, "store error", LOOM_KV_CSTR("code", loom_err_name(e)),
                LOOM_KV_CSTR("error", err->msg), LOOM_KV_STR("path", op->req->path));
    if (e == LOOM_ECONNECT || e == LOOM_EBUSY || e == LOOM_EUNAVAIL)
        reg_op_problem(op, 503, "the registry's database is unavailable (%s); try again",
                       loom_strerror(e));
    else
        reg_op_problem(op, 500, "the registry's database failed: %s", err->msg);
}

void reg_op_json(struct reg_op *op, int status, struct loom_buf *b)
{
    loom_buf_release(&op->body);
    op->body = *b;
    loom_buf_init(b, 0);
    op->status = status;
    op->content_type = "application/json";
}

struct reg_op *reg_op_new(struct loom_http_req *req, reg_op_fn fn, void *args)
{
    struct reg_op *op = loom_arena_new(req->arena, struct reg_op);
    op->req = req;
    op->reg = req->ctx;
    op->fn = fn;
    op->args = args;
    op->file_fd = -1;
    loom_buf_init(&op->body, 0);
    return op;
}

void reg_op_respond(struct reg_op *op)
{
    struct loom_http_req *req = op->req;
    if (op->replayed)
        loom_http_resp_header(req, "Idempotent-Replayed", LOOM_STR("true"));
    if (op->digest_b64[0])
        loom_http_resp_headerf(req, "Digest", "sha-256=%s", op->digest_b64);
    if (op->etag[0])
        loom_http_resp_headerf(req, "ETag", "\"%s\"", op->etag);
    if (op->status == 204 || op->status == 304)
        loom_http_respond(req, op->status, NULL, LOOM_STR_NULL);
    else if (op->file_fd >= 0)
        loom_http_respond_file(req, op->status, op->content_type, op->file_fd, 0, op->file_len);
    else
        loom_http_respond_buf(req, op->status, op->content_type, &op->body);
    op->file_fd = -1;
    loom_buf_release(&op->body);
}

static void op_work(struct loom_work *w)
{
    struct reg_op *op = LOOM_CONTAINER_OF(w, struct reg_op, work);
    struct loom_store *store = op->reg->store;
    if (op->has_key) {
        struct reg_idem_stored st = { 0 };
        loom_buf_init(&st.body, 0);
        enum reg_idem_result res;
        struct loom_error err = { 0 };
        loom_err e = reg_idem_begin(store, op->key, op->scope, op->body_sha, &res, &st, &err);
        if (e) {
            loom_buf_release(&st.body);
            reg_op_store_error(op, e, &err);
            return;
        }
        switch (res) {
        case REG_IDEM_PROCEED:
            break;
        case REG_IDEM_REPLAY:
            snprintf(op->content_type_buf, sizeof(op->content_type_buf), "%s", st.content_type);
            op->content_type = op->content_type_buf;
            op->status = st.status;
            loom_buf_release(&op->body);
            op->body = st.body;
            op->replayed = true;
            return;
        case REG_IDEM_MISMATCH:
            loom_buf_release(&st.body);
            reg_op_problem(op, 422,
                           "Idempotency-Key \"%.*s\" was already used for another request "
                           "(a different body or path); use a new key for a new request",
                           LOOM_STR_FMT(op->key));
            return;
        case REG_IDEM_INFLIGHT:
            loom_buf_release(&st.body);
            reg_op_problem(op, 409,
                           "a request with Idempotency-Key \"%.*s\" is still in progress; "
                           "retry when it has finished",
                           LOOM_STR_FMT(op->key));
            return;
        }
        loom_buf_release(&st.body);
    }
    op->fn(op);
    if (op->has_key)
        reg_idem_finish(store, op->key, op->body_sha, op->status, op->content_type,
                        loom_buf_str(&op->body));
}

static void op_done(struct loom_work *w, loom_err status)
{
    struct reg_op *op = LOOM_CONTAINER_OF(w, struct reg_op, work);
    if (status == LOOM_ECANCELED)
        reg_op_problem(op, 503, "the registry is shutting down");
    reg_op_respond(op);
}

bool reg_op_take_key(struct reg_op *op)
{
    struct loom_http_req *req = op->req;
    bool found = false;
    struct loom_str key =
        loom_http_header_get(req->headers, req->nheaders, "Idempotency-Key", &found);
    if (!found)
        return true;
    bool ok = key.len >= 1 && key.len <= IDEM_KEY_MAX;
    for (size_t i = 0; ok && i < key.len; i++)
        ok = key.ptr[i] > 0x20 && key.ptr[i] < 0x7f;
    if (!ok) {
        reg_problem(req, 400, "Idempotency-Key must be 1 to %d visible ASCII characters",
                    IDEM_KEY_MAX);
        return false;
    }
    op->has_key = true;
    op->key = key; /* borrowed from the request, valid until the answer */
    size_t n = req->path.len + 6;
    char *scope = loom_arena_alloc(req->arena, n);
    snprintf(scope, n, "%s %.*s", loom_http_method_name(req->method), LOOM_STR_FMT(req->path));
    op->scope = scope;
    return true;
}

void reg_op_submit(struct reg_op *op, bool idempotent)
{
    struct loom_http_req *req = op->req;
    if (idempotent) {
        if (!reg_op_take_key(op))
            return;
        if (op->has_key && !op->body_sha[0]) {
            uint8_t d[LOOM_SHA256_LEN];
            loom_sha256(req->body.ptr, req->body.len, d);
            loom_hex(d, sizeof(d), op->body_sha);
        }
    }
    if (loom_pool_submit(op->reg->pool, req->loop, &op->work, op_work, op_done)) {
        loom_buf_release(&op->body);
        loom_http_resp_header(req, "Retry-After", LOOM_STR("1"));
        reg_problem(req, 503, "the registry is overloaded; try again");
    }
}

/* ---- request parsing ---- */

/* The model named by the route, or NULL (answered 400). */
static bool model_param(struct loom_http_req *req, struct loom_str *name)
{
    *name = loom_http_req_param(req, "model");
    if (reg_valid_model_name(*name))
        return true;
    reg_problem(req, 400,
                "invalid model name \"%.*s\": names are 1 to 100 characters of a-z, 0-9, '.', "
                "'_' and '-', starting with a letter or a digit",
                LOOM_STR_FMT(*name));
    return false;
}

static bool version_param(struct loom_http_req *req, int64_t *version)
{
    struct loom_str v = loom_http_req_param(req, "version");
    if (v.len && v.ptr[0] != '0' && !loom_str_to_i64(v, version) && *version >= 1)
        return true;
    reg_problem(req, 400, "invalid version \"%.*s\": versions are positive integers (1, 2, 3...)",
                LOOM_STR_FMT(v));
    return false;
}

static bool alias_param(struct loom_http_req *req, struct loom_str *alias)
{
    *alias = loom_http_req_param(req, "alias");
    if (reg_valid_alias(*alias))
        return true;
    reg_problem(req, 400,
                "invalid alias \"%.*s\": aliases are 1 to 63 characters of a-z, 0-9 and '-'",
                LOOM_STR_FMT(*alias));
    return false;
}

/* Parse the body as a JSON object, or answer 400. */
static bool body_object(struct loom_http_req *req, struct loom_json_doc *doc)
{
    struct loom_error err = { 0 };
    if (!req->body.len) {
        reg_problem(req, 400, "the request needs a JSON object as its body");
        return false;
    }
    if (loom_json_parse(req->body.ptr, req->body.len, NULL, req->arena, doc, &err)) {
        reg_problem(req, 400, "the body is not valid JSON: %s", err.msg);
        return false;
    }
    if (!loom_json_is_object(doc, 0)) {
        reg_problem(req, 400, "the body must be a JSON object");
        return false;
    }
    return true;
}

/* Refuse members other than `allowed` (NULL-terminated). */
static bool known_members(struct loom_http_req *req, const struct loom_json_doc *doc, int obj,
                          const char *where, const char *const *allowed)
{
    loom_json_foreach (doc, obj, k) {
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = loom_json_str_eq(doc, k, loom_str_cstr(*a));
        if (!ok) {
            struct loom_str key = loom_json_slice(doc, k);
            char list[256] = "";
            for (const char *const *a = allowed; *a; a++)
                snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
                         a == allowed ? "" : ", ", *a);
            reg_problem(req, 400, "unknown field \"%s%.*s\" (accepted: %s)", where,
                        LOOM_STR_FMT(key), list);
            return false;
        }
    }
    return true;
}

static bool string_member(struct loom_http_req *req, const struct loom_json_doc *doc, int i,
                          const char *what, size_t max, struct loom_str *out)
{
    if (!loom_json_is_string(doc, i) || loom_json_unescape(doc, i, req->arena, out)) {
        reg_problem(req, 400, "\"%s\" must be a string", what);
        return false;
    }
    if (out->len > max) {
        reg_problem(req, 400, "\"%s\" is longer than %zu bytes", what, max);
        return false;
    }
    return true;
}

/* Validate a tags object: at most TAGS_MAX string values. */
static bool tags_member(struct loom_http_req *req, const struct loom_json_doc *doc, int i)
{
    if (!loom_json_is_object(doc, i)) {
        reg_problem(req, 400, "\"tags\" must be an object of strings, like {\"team\": \"risk\"}");
        return false;
    }
    if (loom_json_size(doc, i) > TAGS_MAX) {
        reg_problem(req, 400, "\"tags\" has more than %d entries", TAGS_MAX);
        return false;
    }
    loom_json_foreach (doc, i, k) {
        struct loom_str key = loom_json_slice(doc, k);
        if (key.len == 0 || key.len > TAG_KEY_MAX) {
            reg_problem(req, 400, "tag names are 1 to %d bytes", TAG_KEY_MAX);
            return false;
        }
        if (!loom_json_is_string(doc, k + 1) || loom_json_slice(doc, k + 1).len > TAG_VALUE_MAX) {
            reg_problem(req, 400, "tag \"%.*s\" must be a string of at most %d bytes",
                        LOOM_STR_FMT(key), TAG_VALUE_MAX);
            return false;
        }
    }
    return true;
}

/* The raw JSON text of token i (strings with their quotes). */
static struct loom_str raw_json(const struct loom_json_doc *doc, int i)
{
    struct loom_str s = loom_json_slice(doc, i);
    if (loom_json_is_string(doc, i))
        s = loom_str_make(s.ptr - 1, s.len + 2);
    return s;
}

/* ---- pagination ---- */

struct page {
    int64_t limit;
    bool has_after;
    struct loom_str after; /* the last key of the previous page */
};

/* ?limit= and ?cursor= (kind is a letter that keeps cursors of different lists apart). */
static bool page_params(struct loom_http_req *req, char kind, struct page *pg)
{
    pg->limit = PAGE_DEFAULT;
    pg->has_after = false;
    struct loom_str v;
    if (loom_http_req_query(req, "limit", &v)) {
        if (loom_str_to_i64(v, &pg->limit) || pg->limit < 1 || pg->limit > PAGE_MAX) {
            reg_problem(req, 400, "limit must be an integer from 1 to %d", PAGE_MAX);
            return false;
        }
    }
    if (loom_http_req_query(req, "cursor", &v) && v.len) {
        uint8_t *buf = loom_arena_alloc(req->arena, v.len + 1);
        size_t n = 0;
        if (v.len > 400 || !reg_base64url_decode(v, buf, &n) || n < 2 || buf[0] != (uint8_t)kind ||
            buf[1] != ':') {
            reg_problem(req, 400, "cursor is not one this list gave out; start again without it");
            return false;
        }
        pg->has_after = true;
        pg->after = loom_str_make((const char *)buf + 2, n - 2);
    }
    return true;
}

static void write_cursor(struct loom_json_writer *w, char kind, struct loom_str key)
{
    size_t n = key.len + 2;
    uint8_t *raw = loom_malloc(n);
    raw[0] = (uint8_t)kind;
    raw[1] = ':';
    memcpy(raw + 2, key.ptr, key.len);
    char *out = loom_malloc(4 * ((n + 2) / 3) + 1);
    reg_base64(raw, n, true, out);
    loom_json_write_string(w, out);
    free(out);
    free(raw);
}

/* ---- rows ---- */

static struct loom_str col_str(const struct loom_sql_row *row, const char *name)
{
    const struct loom_sql_value *v = loom_sql_col(row, name);
    return v && (v->type == LOOM_SQL_TEXT || v->type == LOOM_SQL_BLOB) ? v->s : LOOM_STR("");
}

static int64_t col_i64(const struct loom_sql_row *row, const char *name)
{
    const struct loom_sql_value *v = loom_sql_col(row, name);
    return v && v->type == LOOM_SQL_INT ? v->i : 0;
}

static void write_time(struct loom_json_writer *w, const char *key, int64_t ms)
{
    char t[40];
    loom_time_rfc3339(ms * (int64_t)LOOM_NS_PER_MS, t);
    loom_json_write_key(w, key);
    loom_json_write_string(w, t);
}

#define VERSION_COLS                                                                       \
    "model, version, artifact_digest, size, format, backend, signature, status, metadata," \
    " created_ms, updated_ms"

static void write_version(struct loom_json_writer *w, const struct loom_sql_row *row)
{
    loom_json_write_object_begin(w);
    loom_json_write_key(w, "model");
    loom_json_write_str(w, col_str(row, "model"));
    loom_json_write_key(w, "version");
    loom_json_write_i64(w, col_i64(row, "version"));
    loom_json_write_key(w, "artifact_digest");
    loom_json_write_str(w, col_str(row, "artifact_digest"));
    loom_json_write_key(w, "size");
    loom_json_write_i64(w, col_i64(row, "size"));
    loom_json_write_key(w, "format");
    loom_json_write_str(w, col_str(row, "format"));
    loom_json_write_key(w, "backend");
    loom_json_write_str(w, col_str(row, "backend"));
    loom_json_write_key(w, "signature");
    loom_json_write_raw(w, col_str(row, "signature"));
    loom_json_write_key(w, "status");
    loom_json_write_str(w, col_str(row, "status"));
    loom_json_write_key(w, "metadata");
    loom_json_write_raw(w, col_str(row, "metadata"));
    write_time(w, "created_at", col_i64(row, "created_ms"));
    write_time(w, "updated_at", col_i64(row, "updated_ms"));
    loom_json_write_object_end(w);
}

/* Rows written as a page: items up to limit, then the cursor of the last one. */
struct page_writer {
    struct loom_json_writer *w;
    int64_t limit, n;
    char kind;
    char *last_key; /* malloc'd */
    void (*write)(struct loom_json_writer *w, const struct loom_sql_row *row);
    const char *key_col; /* the column holding the key (text or integer) */
};

static loom_err page_row(const struct loom_sql_row *row, void *arg)
{
    struct page_writer *pw = arg;
    if (++pw->n > pw->limit)
        return LOOM_OK; /* the probe row: there is a next page */
    pw->write(pw->w, row);
    free(pw->last_key);
    const struct loom_sql_value *k = loom_sql_col(row, pw->key_col);
    if (k && k->type == LOOM_SQL_INT) {
        char buf[24];
        snprintf(buf, sizeof(buf), "%lld", (long long)k->i);
        pw->last_key = loom_strdup(buf);
    } else {
        pw->last_key = loom_str_dup(col_str(row, pw->key_col));
    }
    return LOOM_OK;
}

static void page_end(struct page_writer *pw)
{
    loom_json_write_array_end(pw->w);
    loom_json_write_key(pw->w, "next_cursor");
    if (pw->n > pw->limit && pw->last_key)
        write_cursor(pw->w, pw->kind, loom_str_cstr(pw->last_key));
    else
        loom_json_write_null(pw->w);
    loom_json_write_object_end(pw->w);
    free(pw->last_key);
    pw->last_key = NULL;
}

/* ---- transactions ---- */

/* A write: fn checks the state and emits events. A refusal sets status and msg and returns
 * LOOM_ECANCELED, which rolls the transaction back. */
struct tx {
    struct reg_op *op;
    loom_err (*fn)(struct tx *t, struct loom_db *db, struct loom_error *err);
    int status;
    char msg[512];
    int64_t version;          /* create version: the number given */
    int64_t previous_version; /* alias: what it pointed at (0: none) */
    bool changed;
    struct loom_buf data; /* event data being built */
};

static loom_err refuse(struct tx *t, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static loom_err refuse(struct tx *t, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->msg, sizeof(t->msg), fmt, ap);
    va_end(ap);
    t->status = status;
    return LOOM_ECANCELED;
}

static loom_err tx_trampoline(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct tx *t = arg;
    t->status = 0;
    t->changed = false;
    t->previous_version = 0;
    loom_buf_reset(&t->data);
    return t->fn(t, db, err);
}

/* Run a write; false with op answered if it failed or was refused. */
static bool run_tx(struct reg_op *op, struct tx *t)
{
    struct loom_error err = { 0 };
    t->op = op;
    loom_buf_init(&t->data, 0);
    loom_err e = loom_store_tx(op->reg->store, tx_trampoline, t, &err);
    loom_buf_release(&t->data);
    if (e == LOOM_ECANCELED && t->status) {
        reg_op_problem(op, t->status, "%s", t->msg);
        return false;
    }
    if (e) {
        reg_op_store_error(op, e, &err);
        return false;
    }
    if (t->changed) {
        loom_outbox_relay_kick(op->reg->relay);
        reg_refresh_gauges(op->reg);
    }
    return true;
}

static loom_err emit(struct tx *t, struct loom_db *db, struct loom_str model,
                     enum reg_event_type type, struct loom_error *err)
{
    loom_err e = reg_emit(db, model, type, loom_buf_str(&t->data), NULL, err);
    if (!e) {
        t->changed = true;
        loom_counter_inc(t->op->reg->c_events[type]);
    }
    return e;
}

static loom_err exists_row(const struct loom_sql_row *row, void *arg)
{
    LOOM_UNUSED(row);
    *(bool *)arg = true;
    return LOOM_OK;
}

static loom_err get_int(const struct loom_sql_row *row, void *arg)
{
    *(int64_t *)arg = row->cols[0].type == LOOM_SQL_INT ? row->cols[0].i : 0;
    return LOOM_OK;
}

/* The model's latest version (0: none) into *latest; LOOM_ECANCELED with 404 if no model. */
static loom_err need_model(struct tx *t, struct loom_db *db, struct loom_str name, int64_t *latest,
                           struct loom_error *err)
{
    int64_t v = -1;
    struct loom_sql_value p[1] = { LOOM_SQL_TEXT_V(name) };
    loom_err e = loom_db_exec(db, "SELECT latest_version FROM registry_models WHERE name = $1", p,
                              1, get_int, &v, NULL, err);
    if (e)
        return e;
    if (v < 0)
        return refuse(t, 404, "no model named \"%.*s\"", LOOM_STR_FMT(name));
    if (latest)
        *latest = v;
    return LOOM_OK;
}

/* ---- models ---- */

struct model_rec {
    char *name, *description, *tags;
    int64_t latest, created, updated;
};

struct alias_rec {
    char *model, *alias;
    int64_t version;
};

struct model_page {
    struct model_rec *m;
    size_t nm, capm;
    struct alias_rec *a;
    size_t na, capa;
};

static loom_err collect_model(const struct loom_sql_row *row, void *arg)
{
    struct model_page *mp = arg;
    if (mp->nm == mp->capm)
        mp->m = loom_realloc(mp->m, (mp->capm = mp->capm ? 2 * mp->capm : 16) * sizeof(*mp->m));
    struct model_rec *r = &mp->m[mp->nm++];
    r->name = loom_str_dup(col_str(row, "name"));
    r->description = loom_str_dup(col_str(row, "description"));
    r->tags = loom_str_dup(col_str(row, "tags"));
    r->latest = col_i64(row, "latest_version");
    r->created = col_i64(row, "created_ms");
    r->updated = col_i64(row, "updated_ms");
    return LOOM_OK;
}

static loom_err collect_alias(const struct loom_sql_row *row, void *arg)
{
    struct model_page *mp = arg;
    if (mp->na == mp->capa)
        mp->a = loom_realloc(mp->a, (mp->capa = mp->capa ? 2 * mp->capa : 16) * sizeof(*mp->a));
    struct alias_rec *r = &mp->a[mp->na++];
    r->model = loom_str_dup(col_str(row, "model"));
    r->alias = loom_str_dup(col_str(row, "alias"));
    r->version = col_i64(row, "version");
    return LOOM_OK;
}

static void model_page_free(struct model_page *mp)
{
    for (size_t i = 0; i < mp->nm; i++) {
        free(mp->m[i].name);
        free(mp->m[i].description);
        free(mp->m[i].tags);
    }
    for (size_t i = 0; i < mp->na; i++) {
        free(mp->a[i].model);
        free(mp->a[i].alias);
    }
    free(mp->m);
    free(mp->a);
}

/* The aliases of the models in mp (which are sorted by name). */
static loom_err load_aliases(struct loom_db *db, struct model_page *mp, size_t n,
                             struct loom_error *err)
{
    if (!n)
        return LOOM_OK;
    struct loom_sql_value p[2] = { LOOM_SQL_CSTR_V(mp->m[0].name),
                                   LOOM_SQL_CSTR_V(mp->m[n - 1].name) };
    return loom_db_exec(db,
                        "SELECT model, alias, version FROM registry_aliases"
                        " WHERE model >= $1 AND model <= $2 ORDER BY model, alias",
                        p, 2, collect_alias, mp, NULL, err);
}

static void write_model(struct loom_json_writer *w, const struct model_rec *r,
                        const struct model_page *mp)
{
    loom_json_write_object_begin(w);
    loom_json_write_key(w, "name");
    loom_json_write_string(w, r->name);
    loom_json_write_key(w, "description");
    loom_json_write_string(w, r->description);
    loom_json_write_key(w, "tags");
    loom_json_write_raw(w, loom_str_cstr(r->tags));
    loom_json_write_key(w, "latest_version");
    if (r->latest > 0)
        loom_json_write_i64(w, r->latest);
    else
        loom_json_write_null(w);
    loom_json_write_key(w, "aliases");
    loom_json_write_object_begin(w);
    for (size_t i = 0; i < mp->na; i++) {
        if (strcmp(mp->a[i].model, r->name) != 0)
            continue;
        loom_json_write_key(w, mp->a[i].alias);
        loom_json_write_i64(w, mp->a[i].version);
    }
    loom_json_write_object_end(w);
    write_time(w, "created_at", r->created);
    write_time(w, "updated_at", r->updated);
    loom_json_write_object_end(w);
}

#define MODEL_COLS "name, description, tags, latest_version, created_ms, updated_ms"

/* Answer op with model `name` (404 if there is none). */
static void answer_model(struct reg_op *op, struct loom_str name, int status)
{
    struct loom_error err = { 0 };
    struct loom_db *db;
    loom_err e = loom_store_acquire(op->reg->store, &db, &err);
    if (e) {
        reg_op_store_error(op, e, &err);
        return;
    }
    struct model_page mp = { 0 };
    struct loom_sql_value p[1] = { LOOM_SQL_TEXT_V(name) };
    e = loom_db_exec(db, "SELECT " MODEL_COLS " FROM registry_models WHERE name = $1", p, 1,
                     collect_model, &mp, NULL, &err);
    if (!e)
        e = load_aliases(db, &mp, mp.nm, &err);
    loom_store_release(op->reg->store, db);
    if (e) {
        reg_op_store_error(op, e, &err);
    } else if (!mp.nm) {
        reg_op_problem(op, 404, "no model named \"%.*s\"", LOOM_STR_FMT(name));
    } else {
        struct loom_buf b;
        loom_buf_init(&b, 0);
        struct loom_json_writer w;
        loom_json_writer_init(&w, &b);
        write_model(&w, &mp.m[0], &mp);
        loom_json_writer_finish(&w);
        reg_op_json(op, status, &b);
    }
    model_page_free(&mp);
}

struct model_args {
    struct loom_str name;
    bool has_description, has_tags;
    struct loom_str description;
    struct loom_str tags; /* raw JSON */
};

static loom_err create_model_tx(struct tx *t, struct loom_db *db, struct loom_error *err)
{
    struct model_args *a = t->op->args;
    bool exists = false;
    struct loom_sql_value p[1] = { LOOM_SQL_TEXT_V(a->name) };
    loom_err e = loom_db_exec(db, "SELECT 1 FROM registry_models WHERE name = $1", p, 1, exists_row,
                              &exists, NULL, err);
    if (e)
        return e;
    if (exists)
        return refuse(t, 409, "a model named \"%.*s\" already exists", LOOM_STR_FMT(a->name));
    struct loom_json_writer w;
    loom_json_writer_init(&w, &t->data);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "name");
    loom_json_write_str(&w, a->name);
    loom_json_write_key(&w, "description");
    loom_json_write_str(&w, a->description);
    loom_json_write_key(&w, "tags");
    loom_json_write_raw(&w, a->has_tags ? a->tags : LOOM_STR("{}"));
    loom_json_write_object_end(&w);
    return emit(t, db, a->name, REG_EV_MODEL_CREATED, err);
}

static void op_create_model(struct reg_op *op)
{
    struct model_args *a = op->args;
    struct tx t = { .fn = create_model_tx };
    if (run_tx(op, &t))
        answer_model(op, a->name, 201);
}

/* Parse a model body (create: name required; patch: no name). */
static bool parse_model_body(struct loom_http_req *req, bool create, struct model_args *a)
{
    static const char *const create_fields[] = { "name", "description", "tags", NULL };
    static const char *const patch_fields[] = { "description", "tags", NULL };
    struct loom_json_doc doc;
    if (!body_object(req, &doc) ||
        !known_members(req, &doc, 0, "", create ? create_fields : patch_fields))
        return false;
    if (create) {
        int n = loom_json_obj_get(&doc, 0, "name");
        if (n < 0) {
            reg_problem(req, 400, "\"name\" is required");
            return false;
        }
        if (!string_member(req, &doc, n, "name", 100, &a->name))
            return false;
        if (!reg_valid_model_name(a->name)) {
            reg_problem(req, 400,
                        "invalid model name \"%.*s\": names are 1 to 100 characters of a-z, 0-9, "
                        "'.', '_' and '-', starting with a letter or a digit",
                        LOOM_STR_FMT(a->name));
            return false;
        }
    }
    a->description = LOOM_STR("");
    int d = loom_json_obj_get(&doc, 0, "description");
    if (d >= 0) {
        if (!string_member(req, &doc, d, "description", DESCRIPTION_MAX, &a->description))
            return false;
        a->has_description = true;
    }
    int t = loom_json_obj_get(&doc, 0, "tags");
    if (t >= 0) {
        if (!tags_member(req, &doc, t))
            return false;
        a->has_tags = true;
        a->tags = raw_json(&doc, t);
    }
    return true;
}

static void h_create_model(struct loom_http_req *req)
{
    struct model_args *a = loom_arena_new(req->arena, struct model_args);
    if (!parse_model_body(req, true, a))
        return;
    reg_op_submit(reg_op_new(req, op_create_model, a), true);
}

struct list_args {
    struct page page;
    struct loom_str model;
    struct loom_str status; /* versions: filter, or empty */
    int64_t after_seq;      /* events */
};

static void op_list_models(struct reg_op *op)
{
    struct list_args *a = op->args;
    struct loom_error err = { 0 };
    struct loom_db *db;
    loom_err e = loom_store_acquire(op->reg->store, &db, &err);
    if (e) {
        reg_op_store_error(op, e, &err);
        return;
    }
    struct model_page mp = { 0 };
    struct loom_sql_value p[2] = { LOOM_SQL_TEXT_V(a->page.after),
                                   LOOM_SQL_INT_V(a->page.limit + 1) };
    if (a->page.has_after)
        e = loom_db_exec(db,
                         "SELECT " MODEL_COLS " FROM registry_models WHERE name > $1"
                         " ORDER BY name LIMIT $2",
                         p, 2, collect_model, &mp, NULL, &err);
    else
        e = loom_db_exec(db, "SELECT " MODEL_COLS " FROM registry_models ORDER BY name LIMIT $1",
                         p + 1, 1, collect_model, &mp, NULL, &err);
    size_t n = LOOM_MIN(mp.nm, (size_t)a->page.limit);
    if (!e)
        e = load_aliases(db, &mp, n, &err);
    loom_store_release(op->reg->store, db);
    if (e) {
        model_page_free(&mp);
        reg_op_store_error(op, e, &err);
        return;
    }
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "items");
    loom_json_write_array_begin(&w);
    for (size_t i = 0; i < n; i++)
        write_model(&w, &mp.m[i], &mp);
    loom_json_write_array_end(&w);
    loom_json_write_key(&w, "next_cursor");
    if (mp.nm > n)
        write_cursor(&w, 'm', loom_str_cstr(mp.m[n - 1].name));
    else
        loom_json_write_null(&w);
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
    model_page_free(&mp);
    reg_op_json(op, 200, &b);
}

static void h_list_models(struct loom_http_req *req)
{
    struct list_args *a = loom_arena_new(req->arena, struct list_args);
    if (!page_params(req, 'm', &a->page))
        return;
    reg_op_submit(reg_op_new(req, op_list_models, a), false);
}

static void op_get_model(struct reg_op *op)
{
    struct model_args *a = op->args;
    answer_model(op, a->name, 200);
}

static void h_get_model(struct loom_http_req *req)
{
    struct model_args *a = loom_arena_new(req->arena, struct model_args);
    if (!model_param(req, &a->name))
        return;
    reg_op_submit(reg_op_new(req, op_get_model, a), false);
}

static loom_err patch_model_tx(struct tx *t, struct loom_db *db, struct loom_error *err)
{
    struct model_args *a = t->op->args;
    loom_err e = need_model(t, db, a->name, NULL, err);
    if (e || (!a->has_description && !a->has_tags))
        return e;
    struct loom_json_writer w;
    loom_json_writer_init(&w, &t->data);
    loom_json_write_object_begin(&w);
    if (a->has_description) {
        loom_json_write_key(&w, "description");
        loom_json_write_str(&w, a->description);
    }
    if (a->has_tags) {
        loom_json_write_key(&w, "tags");
        loom_json_write_raw(&w, a->tags);
    }
    loom_json_write_object_end(&w);
    return emit(t, db, a->name, REG_EV_MODEL_UPDATED, err);
}

static void op_patch_model(struct reg_op *op)
{
    struct model_args *a = op->args;
    struct tx t = { .fn = patch_model_tx };
    if (run_tx(op, &t))
        answer_model(op, a->name, 200);
}

static void h_patch_model(struct loom_http_req *req)
{
    struct model_args *a = loom_arena_new(req->arena, struct model_args);
    struct loom_str name;
    if (!model_param(req, &name) || !parse_model_body(req, false, a))
        return;
    a->name = name;
    reg_op_submit(reg_op_new(req, op_patch_model, a), false);
}

struct alias_list {
    char list[256];
    size_t n;
};

static loom_err collect_alias_names(const struct loom_sql_row *row, void *arg)
{
    struct alias_list *al = arg;
    size_t len = strlen(al->list);
    if (len < sizeof(al->list) - 80)
        snprintf(al->list + len, sizeof(al->list) - len, "%s%.*s -> %lld", al->n ? ", " : "",
                 LOOM_STR_FMT(col_str(row, "alias")), (long long)col_i64(row, "version"));
    al->n++;
    return LOOM_OK;
}

static loom_err delete_model_tx(struct tx *t, struct loom_db *db, struct loom_error *err)
{
    struct model_args *a = t->op->args;
    loom_err e = need_model(t, db, a->name, NULL, err);
    if (e)
        return e;
    struct alias_list al = { .n = 0 };
    struct loom_sql_value p[1] = { LOOM_SQL_TEXT_V(a->name) };
    e = loom_db_exec(db,
                     "SELECT alias, version FROM registry_aliases WHERE model = $1 ORDER BY alias",
                     p, 1, collect_alias_names, &al, NULL, err);
    if (e)
        return e;
    if (al.n)
        return refuse(t, 409, "model \"%.*s\" still has aliases (%s): delete them before the model",
                      LOOM_STR_FMT(a->name), al.list);
    loom_buf_append_cstr(&t->data, "{}");
    return emit(t, db, a->name, REG_EV_MODEL_DELETED, err);
}

static void op_delete_model(struct reg_op *op)
{
    struct tx t = { .fn = delete_model_tx };
    if (run_tx(op, &t))
        op->status = 204;
}

static void h_delete_model(struct loom_http_req *req)
{
    struct model_args *a = loom_arena_new(req->arena, struct model_args);
    if (!model_param(req, &a->name))
        return;
    reg_op_submit(reg_op_new(req, op_delete_model, a), false);
}

/* ---- versions ---- */

struct version_args {
    struct loom_str model;
    int64_t version;
    struct loom_str digest;
    struct loom_str status; /* empty: unchanged (patch) / ready (create) */
    struct loom_str metadata;
    bool has_description;
    struct loom_str description_raw; /* a JSON string, quoted */
};

static loom_err write_version_row(const struct loom_sql_row *row, void *arg)
{
    write_version(arg, row);
    return LOOM_OK;
}

/* Answer op with one version found by `where` (with $1 = model and $2 = the key). */
static void answer_version(struct reg_op *op, const char *sql, struct loom_str model,
                           struct loom_sql_value key, int status, const char *missing)
{
    struct loom_error err = { 0 };
    struct loom_db *db;
    loom_err e = loom_store_acquire(op->reg->store, &db, &err);
    if (e) {
        reg_op_store_error(op, e, &err);
        return;
    }
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    struct loom_sql_value p[2] = { LOOM_SQL_TEXT_V(model), key };
    e = loom_db_exec(db, sql, p, 2, write_version_row, &w, NULL, &err);
    loom_store_release(op->reg->store, db);
    if (e) {
        reg_op_store_error(op, e, &err);
    } else if (!b.len) {
        reg_op_problem(op, 404, "%s", missing);
    } else {
        loom_json_writer_finish(&w);
        reg_op_json(op, status, &b);
    }
    loom_buf_release(&b);
}

static const char version_by_number[] =
    "SELECT " VERSION_COLS " FROM registry_versions WHERE model = $1 AND version = $2";

static void answer_version_number(struct reg_op *op, struct loom_str model, int64_t version,
                                  int status)
{
    char missing[200];
    snprintf(missing, sizeof(missing), "model \"%.*s\" has no version %lld", LOOM_STR_FMT(model),
             (long long)version);
    answer_version(op, version_by_number, model, LOOM_SQL_INT_V(version), status, missing);
}

struct artifact_rec {
    bool found;
    int64_t size;
    char format[32], backend[32];
    char *signature;
};

static loom_err get_artifact(const struct loom_sql_row *row, void *arg)
{
    struct artifact_rec *r = arg;
    r->found = true;
    r->size = col_i64(row, "size");
    snprintf(r->format, sizeof(r->format), "%.*s", LOOM_STR_FMT(col_str(row, "format")));
    snprintf(r->backend, sizeof(r->backend), "%.*s", LOOM_STR_FMT(col_str(row, "backend")));
    free(r->signature);
    r->signature = loom_str_dup(col_str(row, "signature"));
    return LOOM_OK;
}

static loom_err create_version_tx(struct tx *t, struct loom_db *db, struct loom_error *err)
{
    struct version_args *a = t->op->args;
    int64_t latest = 0;
    loom_err e = need_model(t, db, a->model, &latest, err);
    if (e)
        return e;
    struct artifact_rec art = { .found = false };
    struct loom_sql_value p[1] = { LOOM_SQL_TEXT_V(a->digest) };
    e = loom_db_exec(db,
                     "SELECT size, format, backend, signature FROM registry_artifacts"
                     " WHERE digest = $1",
                     p, 1, get_artifact, &art, NULL, err);
    if (!e && !art.found)
        e = refuse(t, 404, "no artifact %.*s: upload it first with POST /api/v1/artifacts",
                   LOOM_STR_FMT(a->digest));
    if (e) {
        free(art.signature);
        return e;
    }
    t->version = latest + 1;
    struct loom_json_writer w;
    loom_json_writer_init(&w, &t->data);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "version");
    loom_json_write_i64(&w, t->version);
    loom_json_write_key(&w, "artifact_digest");
    loom_json_write_str(&w, a->digest);
    loom_json_write_key(&w, "size");
    loom_json_write_i64(&w, art.size);
    loom_json_write_key(&w, "format");
    loom_json_write_string(&w, art.format);
    loom_json_write_key(&w, "backend");
    loom_json_write_string(&w, art.backend);
    loom_json_write_key(&w, "signature");
    loom_json_write_raw(&w, loom_str_cstr(art.signature));
    loom_json_write_key(&w, "status");
    loom_json_write_str(&w, a->status.len ? a->status : LOOM_STR("ready"));
    loom_json_write_key(&w, "metadata");
    loom_json_write_raw(&w, a->metadata);
    loom_json_write_object_end(&w);
    free(art.signature);
    return emit(t, db, a->model, REG_EV_VERSION_CREATED, err);
}

static void op_create_version(struct reg_op *op)
{
    struct version_args *a = op->args;
    struct tx t = { .fn = create_version_tx };
    if (run_tx(op, &t))
        answer_version_number(op, a->model, t.version, 201);
}

static bool valid_digest(struct loom_str d)
{
    return loom_str_has_prefix(d, LOOM_STR("sha256:")) &&
           loom_sha256_hex_valid(loom_str_make(d.ptr + 7, d.len - 7));
}

/* Check metadata: {metrics?: {name: number}, parameters?: {}, lineage?: {...}, report?: any,
 * description?: string}. */
static bool valid_metadata(struct loom_http_req *req, const struct loom_json_doc *doc, int m)
{
    static const char *const fields[] = { "metrics", "parameters",  "lineage",
                                          "report",  "description", NULL };
    static const char *const lineage_fields[] = { "dataset_digest", "training_job", "code_version",
                                                  NULL };
    if (!loom_json_is_object(doc, m)) {
        reg_problem(req, 400, "\"metadata\" must be an object");
        return false;
    }
    if (!known_members(req, doc, m, "metadata.", fields))
        return false;
    int i = loom_json_obj_get(doc, m, "metrics");
    if (i >= 0) {
        if (!loom_json_is_object(doc, i)) {
            reg_problem(req, 400, "\"metadata.metrics\" must be an object of numbers");
            return false;
        }
        loom_json_foreach (doc, i, k) {
            /* null: a metric that is undefined for this model (AUC with one class) */
            if (!loom_json_is_number(doc, k + 1) && !loom_json_is_null(doc, k + 1)) {
                reg_problem(req, 400, "metric \"%.*s\" must be a number (or null)",
                            LOOM_STR_FMT(loom_json_slice(doc, k)));
                return false;
            }
        }
    }
    i = loom_json_obj_get(doc, m, "parameters");
    if (i >= 0 && !loom_json_is_object(doc, i)) {
        reg_problem(req, 400, "\"metadata.parameters\" must be an object");
        return false;
    }
    i = loom_json_obj_get(doc, m, "lineage");
    if (i >= 0) {
        if (!loom_json_is_object(doc, i)) {
            reg_problem(req, 400, "\"metadata.lineage\" must be an object");
            return false;
        }
        if (!known_members(req, doc, i, "metadata.lineage.", lineage_fields))
            return false;
        loom_json_foreach (doc, i, k) {
            if (!loom_json_is_string(doc, k + 1)) {
                reg_problem(req, 400, "\"metadata.lineage.%.*s\" must be a string",
                            LOOM_STR_FMT(loom_json_slice(doc, k)));
                return false;
            }
        }
    }
    i = loom_json_obj_get(doc, m, "description");
    struct loom_str d;
    if (i >= 0 && !string_member(req, doc, i, "metadata.description", DESCRIPTION_MAX, &d))
        return false;
    return true;
}

static bool valid_status(struct loom_str s, bool create)
{
    return loom_str_eq_cstr(s, "ready") || loom_str_eq_cstr(s, "rejected") ||
           (!create && loom_str_eq_cstr(s, "archived"));
}

static void h_create_version(struct loom_http_req *req)
{
    static const char *const fields[] = { "artifact_digest", "status", "metadata", NULL };
    struct version_args *a = loom_arena_new(req->arena, struct version_args);
    struct loom_json_doc doc;
    if (!model_param(req, &a->model) || !body_object(req, &doc) ||
        !known_members(req, &doc, 0, "", fields))
        return;
    int d = loom_json_obj_get(&doc, 0, "artifact_digest");
    if (d < 0) {
        reg_problem(req, 400,
                    "\"artifact_digest\" is required (\"sha256:<64 hex digits>\", as "
                    "POST /api/v1/artifacts answered)");
        return;
    }
    if (!string_member(req, &doc, d, "artifact_digest", 80, &a->digest))
        return;
    if (!valid_digest(a->digest)) {
        reg_problem(req, 400,
                    "\"artifact_digest\" must be \"sha256:\" and 64 lowercase hex digits");
        return;
    }
    int s = loom_json_obj_get(&doc, 0, "status");
    if (s >= 0) {
        if (!string_member(req, &doc, s, "status", 16, &a->status))
            return;
        if (!valid_status(a->status, true)) {
            reg_problem(req, 400,
                        "a new version's status is \"ready\" (the default) or \"rejected\"");
            return;
        }
    }
    a->metadata = LOOM_STR("{}");
    int m = loom_json_obj_get(&doc, 0, "metadata");
    if (m >= 0) {
        if (!valid_metadata(req, &doc, m))
            return;
        a->metadata = raw_json(&doc, m);
    }
    reg_op_submit(reg_op_new(req, op_create_version, a), true);
}

static void op_list_versions(struct reg_op *op)
{
    struct list_args *a = op->args;
    struct loom_error err = { 0 };
    struct tx t = { .fn = NULL };
    struct loom_db *db;
    loom_err e = loom_store_acquire(op->reg->store, &db, &err);
    if (e) {
        reg_op_store_error(op, e, &err);
        return;
    }
    t.op = op;
    e = need_model(&t, db, a->model, NULL, &err);
    if (e) {
        loom_store_release(op->reg->store, db);
        if (e == LOOM_ECANCELED)
            reg_op_problem(op, t.status, "%s", t.msg);
        else
            reg_op_store_error(op, e, &err);
        return;
    }
    int64_t after = 0;
    if (a->page.has_after && (loom_str_to_i64(a->page.after, &after) || after < 0))
        after = 0;
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "items");
    loom_json_write_array_begin(&w);
    struct page_writer pw = {
        .w = &w, .limit = a->page.limit, .kind = 'v', .write = write_version, .key_col = "version"
    };
    struct loom_sql_value p[4] = { LOOM_SQL_TEXT_V(a->model), LOOM_SQL_INT_V(after),
                                   LOOM_SQL_INT_V(a->page.limit + 1), LOOM_SQL_TEXT_V(a->status) };
    if (a->status.len)
        e = loom_db_exec(db,
                         "SELECT " VERSION_COLS " FROM registry_versions WHERE model = $1"
                         " AND version > $2 AND status = $4 ORDER BY version LIMIT $3",
                         p, 4, page_row, &pw, NULL, &err);
    else
        e = loom_db_exec(db,
                         "SELECT " VERSION_COLS " FROM registry_versions WHERE model = $1"
                         " AND version > $2 ORDER BY version LIMIT $3",
                         p, 3, page_row, &pw, NULL, &err);
    loom_store_release(op->reg->store, db);
    page_end(&pw);
    loom_json_writer_finish(&w);
    if (e)
        reg_op_store_error(op, e, &err);
    else
        reg_op_json(op, 200, &b);
    loom_buf_release(&b);
}

static void h_list_versions(struct loom_http_req *req)
{
    struct list_args *a = loom_arena_new(req->arena, struct list_args);
    if (!model_param(req, &a->model) || !page_params(req, 'v', &a->page))
        return;
    struct loom_str s;
    if (loom_http_req_query(req, "status", &s) && s.len) {
        if (!valid_status(s, false)) {
            reg_problem(req, 400, "status must be ready, archived or rejected");
            return;
        }
        a->status = s;
    }
    reg_op_submit(reg_op_new(req, op_list_versions, a), false);
}

static void op_get_version(struct reg_op *op)
{
    struct version_args *a = op->args;
    answer_version_number(op, a->model, a->version, 200);
}

static void h_get_version(struct loom_http_req *req)
{
    struct version_args *a = loom_arena_new(req->arena, struct version_args);
    if (!model_param(req, &a->model) || !version_param(req, &a->version))
        return;
    reg_op_submit(reg_op_new(req, op_get_version, a), false);
}

struct version_state {
    bool found;
    char status[16];
};

static loom_err get_version_state(const struct loom_sql_row *row, void *arg)
{
    struct version_state *vs = arg;
    vs->found = true;
    snprintf(vs->status, sizeof(vs->status), "%.*s", LOOM_STR_FMT(col_str(row, "status")));
    return LOOM_OK;
}

static loom_err need_version(struct tx *t, struct loom_db *db, struct loom_str model,
                             int64_t version, struct version_state *vs, struct loom_error *err)
{
    loom_err e = need_model(t, db, model, NULL, err);
    if (e)
        return e;
    struct loom_sql_value p[2] = { LOOM_SQL_TEXT_V(model), LOOM_SQL_INT_V(version) };
    vs->found = false;
    e = loom_db_exec(db, "SELECT status FROM registry_versions WHERE model = $1 AND version = $2",
                     p, 2, get_version_state, vs, NULL, err);
    if (e)
        return e;
    if (!vs->found)
        return refuse(t, 404, "model \"%.*s\" has no version %lld", LOOM_STR_FMT(model),
                      (long long)version);
    return LOOM_OK;
}

static loom_err patch_version_tx(struct tx *t, struct loom_db *db, struct loom_error *err)
{
    struct version_args *a = t->op->args;
    struct version_state vs;
    loom_err e = need_version(t, db, a->model, a->version, &vs, err);
    if (e)
        return e;
    bool status_changes = a->status.len && !loom_str_eq_cstr(a->status, vs.status);
    if (status_changes && !loom_str_eq_cstr(a->status, "ready")) {
        struct alias_list al = { .n = 0 };
        struct loom_sql_value p[2] = { LOOM_SQL_TEXT_V(a->model), LOOM_SQL_INT_V(a->version) };
        e = loom_db_exec(db,
                         "SELECT alias, version FROM registry_aliases WHERE model = $1"
                         " AND version = $2 ORDER BY alias",
                         p, 2, collect_alias_names, &al, NULL, err);
        if (e)
            return e;
        if (al.n)
            return refuse(t, 409,
                          "version %lld of \"%.*s\" is the target of aliases (%s): move them "
                          "to another version before making it %.*s",
                          (long long)a->version, LOOM_STR_FMT(a->model), al.list,
                          LOOM_STR_FMT(a->status));
    }
    if (!status_changes && !a->has_description)
        return LOOM_OK;
    struct loom_json_writer w;
    loom_json_writer_init(&w, &t->data);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "version");
    loom_json_write_i64(&w, a->version);
    if (status_changes) {
        loom_json_write_key(&w, "status");
        loom_json_write_str(&w, a->status);
        loom_json_write_key(&w, "previous_status");
        loom_json_write_string(&w, vs.status);
    }
    if (a->has_description) {
        loom_json_write_key(&w, "description");
        loom_json_write_raw(&w, a->description_raw);
    }
    loom_json_write_object_end(&w);
    return emit(t, db, a->model, REG_EV_VERSION_UPDATED, err);
}

static void op_patch_version(struct reg_op *op)
{
    struct version_args *a = op->args;
    struct tx t = { .fn = patch_version_tx };
    if (run_tx(op, &t))
        answer_version_number(op, a->model, a->version, 200);
}

static void h_patch_version(struct loom_http_req *req)
{
    static const char *const fields[] = { "status", "description", NULL };
    struct version_args *a = loom_arena_new(req->arena, struct version_args);
    struct loom_json_doc doc;
    if (!model_param(req, &a->model) || !version_param(req, &a->version) ||
        !body_object(req, &doc) || !known_members(req, &doc, 0, "", fields))
        return;
    int s = loom_json_obj_get(&doc, 0, "status");
    if (s >= 0) {
        if (!string_member(req, &doc, s, "status", 16, &a->status))
            return;
        if (!valid_status(a->status, false)) {
            reg_problem(req, 400, "status must be \"ready\", \"archived\" or \"rejected\"");
            return;
        }
    }
    int d = loom_json_obj_get(&doc, 0, "description");
    if (d >= 0) {
        struct loom_str text;
        if (!string_member(req, &doc, d, "description", DESCRIPTION_MAX, &text))
            return;
        a->has_description = true;
        a->description_raw = raw_json(&doc, d);
    }
    reg_op_submit(reg_op_new(req, op_patch_version, a), false);
}

static loom_err get_digest(const struct loom_sql_row *row, void *arg)
{
    char *out = arg;
    snprintf(out, 80, "%.*s", LOOM_STR_FMT(col_str(row, "artifact_digest")));
    return LOOM_OK;
}

static void op_version_artifact(struct reg_op *op)
{
    struct version_args *a = op->args;
    struct loom_error err = { 0 };
    struct loom_db *db;
    loom_err e = loom_store_acquire(op->reg->store, &db, &err);
    if (e) {
        reg_op_store_error(op, e, &err);
        return;
    }
    char digest[80] = "";
    struct loom_sql_value p[2] = { LOOM_SQL_TEXT_V(a->model), LOOM_SQL_INT_V(a->version) };
    e = loom_db_exec(db,
                     "SELECT artifact_digest FROM registry_versions WHERE model = $1"
                     " AND version = $2",
                     p, 2, get_digest, digest, NULL, &err);
    loom_store_release(op->reg->store, db);
    if (e)
        reg_op_store_error(op, e, &err);
    else if (!digest[0])
        reg_op_problem(op, 404, "model \"%.*s\" has no version %lld", LOOM_STR_FMT(a->model),
                       (long long)a->version);
    else
        reg_artifact_send(op, loom_str_cstr(digest));
}

static void h_version_artifact(struct loom_http_req *req)
{
    struct version_args *a = loom_arena_new(req->arena, struct version_args);
    if (!model_param(req, &a->model) || !version_param(req, &a->version))
        return;
    reg_op_submit(reg_op_new(req, op_version_artifact, a), false);
}

/* ---- aliases ---- */

struct alias_args {
    struct loom_str model, alias;
    int64_t version;
};

static void write_alias_obj(struct loom_json_writer *w, struct loom_str model,
                            struct loom_str alias, int64_t version, int64_t updated_ms)
{
    loom_json_write_object_begin(w);
    loom_json_write_key(w, "model");
    loom_json_write_str(w, model);
    loom_json_write_key(w, "alias");
    loom_json_write_str(w, alias);
    loom_json_write_key(w, "version");
    loom_json_write_i64(w, version);
    write_time(w, "updated_at", updated_ms);
    loom_json_write_object_end(w);
}

static void write_alias_row(struct loom_json_writer *w, const struct loom_sql_row *row)
{
    write_alias_obj(w, col_str(row, "model"), col_str(row, "alias"), col_i64(row, "version"),
                    col_i64(row, "updated_ms"));
}

static loom_err alias_row(const struct loom_sql_row *row, void *arg)
{
    write_alias_row(arg, row);
    return LOOM_OK;
}

static void op_get_alias(struct reg_op *op)
{
    struct alias_args *a = op->args;
    struct loom_error err = { 0 };
    struct loom_db *db;
    loom_err e = loom_store_acquire(op->reg->store, &db, &err);
    if (e) {
        reg_op_store_error(op, e, &err);
        return;
    }
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    struct loom_sql_value p[2] = { LOOM_SQL_TEXT_V(a->model), LOOM_SQL_TEXT_V(a->alias) };
    e = loom_db_exec(db,
                     "SELECT model, alias, version, updated_ms FROM registry_aliases"
                     " WHERE model = $1 AND alias = $2",
                     p, 2, alias_row, &w, NULL, &err);
    loom_store_release(op->reg->store, db);
    if (e)
        reg_op_store_error(op, e, &err);
    else if (!b.len)
        reg_op_problem(op, 404, "model \"%.*s\" has no alias \"%.*s\"", LOOM_STR_FMT(a->model),
                       LOOM_STR_FMT(a->alias));
    else
        reg_op_json(op, 200, &b);
    loom_buf_release(&b);
}

static void h_get_alias(struct loom_http_req *req)
{
    struct alias_args *a = loom_arena_new(req->arena, struct alias_args);
    if (!model_param(req, &a->model) || !alias_param(req, &a->alias))
        return;
    reg_op_submit(reg_op_new(req, op_get_alias, a), false);
}

static void op_list_aliases(struct reg_op *op)
{
    struct list_args *a = op->args;
    struct loom_error err = { 0 };
    struct tx t = { .op = op };
    struct loom_db *db;
    loom_err e = loom_store_acquire(op->reg->store, &db, &err);
    if (e) {
        reg_op_store_error(op, e, &err);
        return;
    }
    e = need_model(&t, db, a->model, NULL, &err);
    if (e) {
        loom_store_release(op->reg->store, db);
        if (e == LOOM_ECANCELED)
            reg_op_problem(op, t.status, "%s", t.msg);
        else
            reg_op_store_error(op, e, &err);
        return;
    }
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "items");
    loom_json_write_array_begin(&w);
    struct page_writer pw = {
        .w = &w, .limit = a->page.limit, .kind = 'a', .write = write_alias_row, .key_col = "alias"
    };
    struct loom_sql_value p[3] = { LOOM_SQL_TEXT_V(a->model), LOOM_SQL_TEXT_V(a->page.after),
                                   LOOM_SQL_INT_V(a->page.limit + 1) };
    e = loom_db_exec(db,
                     "SELECT model, alias, version, updated_ms FROM registry_aliases"
                     " WHERE model = $1 AND alias > $2 ORDER BY alias LIMIT $3",
                     p, 3, page_row, &pw, NULL, &err);
    loom_store_release(op->reg->store, db);
    page_end(&pw);
    loom_json_writer_finish(&w);
    if (e)
        reg_op_store_error(op, e, &err);
    else
        reg_op_json(op, 200, &b);
    loom_buf_release(&b);
}

static void h_list_aliases(struct loom_http_req *req)
{
    struct list_args *a = loom_arena_new(req->arena, struct list_args);
    if (!model_param(req, &a->model) || !page_params(req, 'a', &a->page))
        return;
    if (!a->page.has_after)
        a->page.after = LOOM_STR("");
    reg_op_submit(reg_op_new(req, op_list_aliases, a), false);
}

static loom_err put_alias_tx(struct tx *t, struct loom_db *db, struct loom_error *err)
{
    struct alias_args *a = t->op->args;
    struct version_state vs;
    loom_err e = need_version(t, db, a->model, a->version, &vs, err);
    if (e)
        return e;
    if (strcmp(vs.status, "ready") != 0)
        return refuse(t, 409,
                      "version %lld of \"%.*s\" is %s: only a ready version can be given an alias",
                      (long long)a->version, LOOM_STR_FMT(a->model), vs.status);
    struct loom_sql_value p[2] = { LOOM_SQL_TEXT_V(a->model), LOOM_SQL_TEXT_V(a->alias) };
    e = loom_db_exec(db, "SELECT version FROM registry_aliases WHERE model = $1 AND alias = $2", p,
                     2, get_int, &t->previous_version, NULL, err);
    if (e || t->previous_version == a->version)
        return e;
    struct loom_json_writer w;
    loom_json_writer_init(&w, &t->data);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "alias");
    loom_json_write_str(&w, a->alias);
    loom_json_write_key(&w, "version");
    loom_json_write_i64(&w, a->version);
    loom_json_write_key(&w, "previous_version");
    if (t->previous_version)
        loom_json_write_i64(&w, t->previous_version);
    else
        loom_json_write_null(&w);
    loom_json_write_object_end(&w);
    return emit(t, db, a->model, REG_EV_ALIAS_CHANGED, err);
}

static void op_put_alias(struct reg_op *op)
{
    struct alias_args *a = op->args;
    struct tx t = { .fn = put_alias_tx };
    if (!run_tx(op, &t))
        return;
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "model");
    loom_json_write_str(&w, a->model);
    loom_json_write_key(&w, "alias");
    loom_json_write_str(&w, a->alias);
    loom_json_write_key(&w, "version");
    loom_json_write_i64(&w, a->version);
    loom_json_write_key(&w, "previous_version");
    if (t.previous_version)
        loom_json_write_i64(&w, t.previous_version);
    else
        loom_json_write_null(&w);
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
    reg_op_json(op, 200, &b);
}

static void h_put_alias(struct loom_http_req *req)
{
    static const char *const fields[] = { "version", NULL };
    struct alias_args *a = loom_arena_new(req->arena, struct alias_args);
    struct loom_json_doc doc;
    if (!model_param(req, &a->model) || !alias_param(req, &a->alias) || !body_object(req, &doc) ||
        !known_members(req, &doc, 0, "", fields))
        return;
    int v = loom_json_obj_get(&doc, 0, "version");
    if (v < 0 || !loom_json_is_integer(&doc, v) || loom_json_to_i64(&doc, v, &a->version) ||
        a->version < 1) {
        reg_problem(req, 400, "\"version\" is required: the positive integer of a ready version");
        return;
    }
    reg_op_submit(reg_op_new(req, op_put_alias, a), false);
}

static loom_err delete_alias_tx(struct tx *t, struct loom_db *db, struct loom_error *err)
{
    struct alias_args *a = t->op->args;
    loom_err e = need_model(t, db, a->model, NULL, err);
    if (e)
        return e;
    struct loom_sql_value p[2] = { LOOM_SQL_TEXT_V(a->model), LOOM_SQL_TEXT_V(a->alias) };
    e = loom_db_exec(db, "SELECT version FROM registry_aliases WHERE model = $1 AND alias = $2", p,
                     2, get_int, &t->previous_version, NULL, err);
    if (e)
        return e;
    if (!t->previous_version)
        return refuse(t, 404, "model \"%.*s\" has no alias \"%.*s\"", LOOM_STR_FMT(a->model),
                      LOOM_STR_FMT(a->alias));
    struct loom_json_writer w;
    loom_json_writer_init(&w, &t->data);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "alias");
    loom_json_write_str(&w, a->alias);
    loom_json_write_key(&w, "version");
    loom_json_write_null(&w);
    loom_json_write_key(&w, "previous_version");
    loom_json_write_i64(&w, t->previous_version);
    loom_json_write_object_end(&w);
    return emit(t, db, a->model, REG_EV_ALIAS_CHANGED, err);
}

static void op_delete_alias(struct reg_op *op)
{
    struct tx t = { .fn = delete_alias_tx };
    if (run_tx(op, &t))
        op->status = 204;
}

static void h_delete_alias(struct loom_http_req *req)
{
    struct alias_args *a = loom_arena_new(req->arena, struct alias_args);
    if (!model_param(req, &a->model) || !alias_param(req, &a->alias))
        return;
    reg_op_submit(reg_op_new(req, op_delete_alias, a), false);
}

/* ---- resolve ---- */

static void op_resolve(struct reg_op *op)
{
    struct alias_args *a = op->args;
    if (a->alias.len) {
        char missing[200];
        snprintf(missing, sizeof(missing), "model \"%.*s\" has no alias \"%.*s\"",
                 LOOM_STR_FMT(a->model), LOOM_STR_FMT(a->alias));
        answer_version(op,
                       "SELECT " VERSION_COLS " FROM registry_versions WHERE model = $1 AND"
                       " version = (SELECT version FROM registry_aliases WHERE model = $1"
                       " AND alias = $2)",
                       a->model, LOOM_SQL_TEXT_V(a->alias), 200, missing);
    } else
        answer_version_number(op, a->model, a->version, 200);
}

static void h_resolve(struct loom_http_req *req)
{
    struct alias_args *a = loom_arena_new(req->arena, struct alias_args);
    struct loom_str ref = loom_http_req_param(req, "ref");
    ptrdiff_t at = loom_str_index(ref, '@'), colon = loom_str_index(ref, ':');
    bool ok = false;
    if (at > 0 && colon < 0) {
        a->model = loom_str_make(ref.ptr, (size_t)at);
        a->alias = loom_str_make(ref.ptr + at + 1, ref.len - (size_t)at - 1);
        ok = reg_valid_model_name(a->model) && reg_valid_alias(a->alias);
    } else if (colon > 0 && at < 0) {
        a->model = loom_str_make(ref.ptr, (size_t)colon);
        struct loom_str v = loom_str_make(ref.ptr + colon + 1, ref.len - (size_t)colon - 1);
        ok = reg_valid_model_name(a->model) && v.len && v.ptr[0] != '0' &&
             !loom_str_to_i64(v, &a->version) && a->version >= 1;
    }
    if (!ok) {
        reg_problem(req, 400,
                    "invalid reference \"%.*s\": write MODEL@ALIAS (fraud@production) or "
                    "MODEL:VERSION (fraud:3)",
                    LOOM_STR_FMT(ref));
        return;
    }
    reg_op_submit(reg_op_new(req, op_resolve, a), false);
}

/* ---- events ---- */

static void write_event_row(struct loom_json_writer *w, const struct loom_sql_row *row)
{
    struct loom_str model = col_str(row, "model");
    loom_json_write_object_begin(w);
    loom_json_write_key(w, "specversion");
    loom_json_write_string(w, "1.0");
    loom_json_write_key(w, "id");
    loom_json_write_str(w, col_str(row, "id"));
    loom_json_write_key(w, "source");
    char source[160];
    snprintf(source, sizeof(source), "/api/v1/models/%.*s", LOOM_STR_FMT(model));
    loom_json_write_string(w, source);
    loom_json_write_key(w, "type");
    loom_json_write_str(w, col_str(row, "type"));
    write_time(w, "time", col_i64(row, "time_ms"));
    loom_json_write_key(w, "model");
    loom_json_write_str(w, model);
    loom_json_write_key(w, "seq");
    loom_json_write_i64(w, col_i64(row, "seq"));
    loom_json_write_key(w, "data");
    loom_json_write_raw(w, col_str(row, "data"));
    loom_json_write_object_end(w);
}

static void op_events(struct reg_op *op)
{
    struct list_args *a = op->args;
    struct loom_error err = { 0 };
    struct loom_db *db;
    loom_err e = loom_store_acquire(op->reg->store, &db, &err);
    if (e) {
        reg_op_store_error(op, e, &err);
        return;
    }
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "items");
    loom_json_write_array_begin(&w);
    struct page_writer pw = {
        .w = &w, .limit = a->page.limit, .kind = 'e', .write = write_event_row, .key_col = "seq"
    };
    struct loom_sql_value p[3] = { LOOM_SQL_TEXT_V(a->model), LOOM_SQL_INT_V(a->after_seq),
                                   LOOM_SQL_INT_V(a->page.limit + 1) };
    e = loom_db_exec(db,
                     "SELECT model, seq, id, type, time_ms, data FROM registry_events"
                     " WHERE model = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                     p, 3, page_row, &pw, NULL, &err);
    bool any = pw.n > 0;
    if (!e && !any && a->after_seq > 0) {
        int64_t max = 0;
        e = loom_db_exec(db, "SELECT COALESCE(MAX(seq), 0) FROM registry_events WHERE model = $1",
                         p, 1, get_int, &max, NULL, &err);
        any = max > 0;
    }
    loom_store_release(op->reg->store, db);
    page_end(&pw);
    loom_json_writer_finish(&w);
    if (e)
        reg_op_store_error(op, e, &err);
    else if (!any)
        reg_op_problem(op, 404, "no model named \"%.*s\" has ever existed", LOOM_STR_FMT(a->model));
    else
        reg_op_json(op, 200, &b);
    loom_buf_release(&b);
}

static void h_events(struct loom_http_req *req)
{
    struct list_args *a = loom_arena_new(req->arena, struct list_args);
    if (!model_param(req, &a->model) || !page_params(req, 'e', &a->page))
        return;
    struct loom_str v;
    if (loom_http_req_query(req, "after", &v)) {
        if (loom_str_to_i64(v, &a->after_seq) || a->after_seq < 0) {
            reg_problem(req, 400, "after must be a sequence number (0 or more)");
            return;
        }
    }
    if (a->page.has_after) {
        int64_t s;
        if (loom_str_to_i64(a->page.after, &s) || s < 0) {
            reg_problem(req, 400, "cursor is not one this list gave out; start again without it");
            return;
        }
        a->after_seq = LOOM_MAX(a->after_seq, s);
    }
    reg_op_submit(reg_op_new(req, op_events, a), false);
}

/* ---- artifacts ---- */

static void op_get_artifact(struct reg_op *op)
{
    struct alias_args *a = op->args;
    reg_artifact_send(op, a->alias);
}

static void h_get_artifact(struct loom_http_req *req)
{
    struct alias_args *a = loom_arena_new(req->arena, struct alias_args);
    a->alias = loom_http_req_param(req, "digest");
    if (!valid_digest(a->alias)) {
        reg_problem(req, 400, "invalid digest \"%.*s\": write sha256:<64 lowercase hex digits>",
                    LOOM_STR_FMT(a->alias));
        return;
    }
    reg_op_submit(reg_op_new(req, op_get_artifact, a), false);
}

/* Uploads are limited by --registry.max-artifact-bytes, checked by the handler itself. */
#define UPLOAD_ROUTE_MAX ((size_t)1 << 46)

const struct loom_route reg_routes[REG_NROUTES] = {
    { LOOM_HTTP_POST, "/api/v1/models", h_create_model, 0, 0 },
    { LOOM_HTTP_GET, "/api/v1/models", h_list_models, 0, 0 },
    { LOOM_HTTP_GET, "/api/v1/models/{model}", h_get_model, 0, 0 },
    { LOOM_HTTP_PATCH, "/api/v1/models/{model}", h_patch_model, 0, 0 },
    { LOOM_HTTP_DELETE, "/api/v1/models/{model}", h_delete_model, 0, 0 },
    { LOOM_HTTP_POST, "/api/v1/models/{model}/versions", h_create_version, 0, 0 },
    { LOOM_HTTP_GET, "/api/v1/models/{model}/versions", h_list_versions, 0, 0 },
    { LOOM_HTTP_GET, "/api/v1/models/{model}/versions/{version}", h_get_version, 0, 0 },
    { LOOM_HTTP_PATCH, "/api/v1/models/{model}/versions/{version}", h_patch_version, 0, 0 },
    { LOOM_HTTP_GET, "/api/v1/models/{model}/versions/{version}/artifact", h_version_artifact, 0,
      0 },
    { LOOM_HTTP_GET, "/api/v1/models/{model}/aliases", h_list_aliases, 0, 0 },
    { LOOM_HTTP_GET, "/api/v1/models/{model}/aliases/{alias}", h_get_alias, 0, 0 },
    { LOOM_HTTP_PUT, "/api/v1/models/{model}/aliases/{alias}", h_put_alias, 0, 0 },
    { LOOM_HTTP_DELETE, "/api/v1/models/{model}/aliases/{alias}", h_delete_alias, 0, 0 },
    { LOOM_HTTP_GET, "/api/v1/models/{model}/events", h_events, 0, 0 },
    { LOOM_HTTP_POST, "/api/v1/artifacts", reg_h_upload, UPLOAD_ROUTE_MAX, LOOM_ROUTE_STREAM },
    { LOOM_HTTP_GET, "/api/v1/artifacts/{digest}", h_get_artifact, 0, 0 },
    { LOOM_HTTP_GET, "/api/v1/resolve/{ref}", h_resolve, 0, 0 },
};

_Static_assert(sizeof(reg_routes) / sizeof(reg_routes[0]) == REG_NROUTES, "REG_NROUTES");
