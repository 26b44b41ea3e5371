/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Idempotency-Key for the creating POSTs, as the IETF draft and Stripe describe it. A key is
 * claimed (stored with the request's method and path, the SHA-256 of its body and status 0,
 * "in flight") before the work starts, in its own transaction, so that a second request with
 * the same key sees it at once: while the first is in flight it gets 409; with the same body
 * afterwards it gets the stored status and body again (with Idempotent-Replayed: true); with
 * another body or another path, 422. Answers of 5xx are not stored (the client should retry).
 * Keys expire after 24 hours; a claim still in flight after an hour belonged to a process that
 * died and is given up.
 */
#include "registry/registry.h"

#include <loom/log.h>

#include <string.h>

#define IDEM_TTL_MS   ((int64_t)24 * 3600 * 1000)
#define IDEM_LEASE_MS ((int64_t)3600 * 1000)

struct begin {
    struct loom_str key;
    const char *scope;
    const char *sha;
    enum reg_idem_result res;
    struct reg_idem_stored *stored;
    bool found;
    bool scope_ok;
};

static void copy_text(const struct loom_sql_value *v, char *out, size_t cap)
{
    size_t n = v && v->type == LOOM_SQL_TEXT ? LOOM_MIN(v->s.len, cap - 1) : 0;
    if (n)
        memcpy(out, v->s.ptr, n);
    out[n] = '\0';
}

static loom_err get_claim(const struct loom_sql_row *row, void *arg)
{
    struct begin *b = arg;
    struct reg_idem_stored *s = b->stored;
    b->found = true;
    const struct loom_sql_value *scope = loom_sql_col(row, "scope");
    b->scope_ok = scope && scope->type == LOOM_SQL_TEXT && loom_str_eq_cstr(scope->s, b->scope);
    const struct loom_sql_value *st = loom_sql_col(row, "status");
    s->status = st && st->type == LOOM_SQL_INT ? (int)st->i : 0;
    copy_text(loom_sql_col(row, "content_type"), s->content_type, sizeof(s->content_type));
    copy_text(loom_sql_col(row, "body_sha"), s->body_sha, sizeof(s->body_sha));
    const struct loom_sql_value *resp = loom_sql_col(row, "response");
    loom_buf_reset(&s->body);
    if (resp && (resp->type == LOOM_SQL_TEXT || resp->type == LOOM_SQL_BLOB))
        loom_buf_append_str(&s->body, resp->s);
    return LOOM_OK;
}

static loom_err begin_tx(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct begin *b = arg;
    b->found = false;
    int64_t now = loom_wall_ns() / (int64_t)LOOM_NS_PER_MS;
    struct loom_sql_value p[4] = { LOOM_SQL_TEXT_V(b->key), LOOM_SQL_INT_V(now - IDEM_LEASE_MS),
                                   LOOM_SQL_INT_V(now - IDEM_TTL_MS) };
    loom_err e = loom_db_exec(db,
                              "DELETE FROM registry_idempotency WHERE created_ms < $3 OR"
                              " (idem_key = $1 AND status = 0 AND created_ms < $2)",
                              p, 3, NULL, NULL, NULL, err);
    if (e)
        return e;
    e = loom_db_exec(db,
                     "SELECT scope, body_sha, status, content_type, response"
                     " FROM registry_idempotency WHERE idem_key = $1",
                     p, 1, get_claim, b, NULL, err);
    if (e)
        return e;
    if (!b->found) {
        p[1] = LOOM_SQL_CSTR_V(b->scope);
        p[2] = LOOM_SQL_CSTR_V(b->sha);
        p[3] = LOOM_SQL_INT_V(now);
        e = loom_db_exec(db,
                         "INSERT INTO registry_idempotency (idem_key, scope, body_sha, status,"
                         " content_type, response, created_ms) VALUES ($1, $2, $3, 0, '', '', $4)",
                         p, 4, NULL, NULL, NULL, err);
        if (e == LOOM_ECONFLICT) /* claimed by another process meanwhile: look again */
            return loom_error_set(err, LOOM_EBUSY, "idempotency key claimed concurrently");
        b->res = REG_IDEM_PROCEED;
        return e;
    }
    if (!b->scope_ok)
        b->res = REG_IDEM_MISMATCH;
    else if (b->stored->status == 0)
        b->res = REG_IDEM_INFLIGHT;
    else if (b->sha[0] && strcmp(b->sha, b->stored->body_sha) != 0)
        b->res = REG_IDEM_MISMATCH;
    else
        b->res = REG_IDEM_REPLAY;
    return LOOM_OK;
}

loom_err reg_idem_begin(struct loom_store *store, struct loom_str key, const char *scope,
                        const char *sha, enum reg_idem_result *res, struct reg_idem_stored *stored,
                        struct loom_error *err)
{
    struct begin b = { .key = key, .scope = scope, .sha = sha, .stored = stored };
    loom_err e = loom_store_tx(store, begin_tx, &b, err);
    if (!e)
        *res = b.res;
    return e;
}

void reg_idem_finish(struct loom_store *store, struct loom_str key, const char *sha, int status,
                     const char *content_type, struct loom_str body)
{
    struct loom_db *db;
    struct loom_error err = { 0 };
    loom_err e = loom_store_acquire(store, &db, &err);
    if (e)
        goto out;
    if (status >= 500) {
        struct loom_sql_value p[1] = { LOOM_SQL_TEXT_V(key) };
        e = loom_db_exec(db, "DELETE FROM registry_idempotency WHERE idem_key = $1", p, 1, NULL,
                         NULL, NULL, &err);
    } else {
        struct loom_sql_value p[5] = { LOOM_SQL_TEXT_V(key), LOOM_SQL_INT_V(status),
                                       LOOM_SQL_CSTR_V(content_type ? content_type : ""),
                                       LOOM_SQL_TEXT_V(body), LOOM_SQL_CSTR_V(sha ? sha : "") };
        bool with_sha = sha && sha[0];
        e = loom_db_exec(db,
                         with_sha ? "UPDATE registry_idempotency SET status = $2,"
                                    " content_type = $3, response = $4, body_sha = $5"
                                    " WHERE idem_key = $1"
                                  : "UPDATE registry_idempotency SET status = $2,"
                                    " content_type = $3, response = $4 WHERE idem_key = $1",
                         p, with_sha ? 5 : 4, NULL, NULL, NULL, &err);
    }
    loom_store_release(store, db);
out:
    if (e)
        LOOM_LOG_KV(LOOM_LOG_WARN, "could not record an idempotent answer",
                    LOOM_KV_CSTR("error", err.msg));
}

void reg_idem_release(struct loom_store *store, struct loom_str key)
{
    reg_idem_finish(store, key, NULL, 500, NULL, LOOM_STR_NULL);
}
