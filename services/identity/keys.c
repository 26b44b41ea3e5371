/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The identity service's signing keys. Keys are ES256 pairs kept in the store (the private key
 * as PKCS#8 PEM; encrypting it at rest is future work, see docs/identity.md), each with the
 * time it was created, the time it starts signing and, once a newer key took over, the time it
 * was retired. A key is published (in the JWKS) from its creation, and the next key is created
 * a pre-publication period (idn_keys_prepublish) before it signs, so that verifiers that
 * refresh their copy of the JWKS on their normal schedule already hold it when its first token
 * arrives. The rotation job runs in one transaction under a lock row (so replicas sharing a
 * PostgreSQL store rotate once): it creates a key that signs at once when nothing signs (a
 * fresh store), creates the next one when the current key is one pre-publication period away
 * from having signed for --identity.key-rotation, retires the keys a newer one has taken over
 * from, and deletes retired keys whose every token has expired: retired + token-ttl + one check
 * interval (another replica may sign with the old key until its next reload) + clock-skew (the
 * verifiers' leeway). Then the keyring is rebuilt from the store and swapped in whole, if
 * anything changed; it holds the next key too, and the signer switches to it at its time. The
 * JWKS publishes every key the store still holds, so a token stays verifiable for as long as it
 * can be valid.
 */
#include "identity/identity.h"

#include <loom/log.h>

#include <openssl/crypto.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_KEY_ROWS LOOM_JWKS_MAX_KEYS

struct key_row {
    char kid[LOOM_JWK_KID_MAX + 1];
    char alg[16];
    char *pem;
    int64_t created_ms;    /* published from */
    int64_t signs_from_ms; /* signs from (later than created_ms for a pre-published key) */
    int64_t retired_ms;    /* 0: not retired */
};

struct key_rows {
    struct key_row v[MAX_KEY_ROWS];
    size_t n;
};

static void rows_clear(struct key_rows *r)
{
    for (size_t i = 0; i < r->n; i++) {
        if (r->v[i].pem) {
            OPENSSL_cleanse(r->v[i].pem, strlen(r->v[i].pem));
            free(r->v[i].pem);
        }
    }
    r->n = 0;
}

static int64_t now_ms(void)
{
    return loom_wall_ns() / (int64_t)LOOM_NS_PER_MS;
}

uint64_t idn_keys_check_interval(const struct idn_conf *conf)
{
    uint64_t base = LOOM_MIN(conf->key_rotation, conf->token_ttl) / 4;
    return LOOM_MAX(LOOM_MIN(base, 60 * LOOM_NS_PER_SEC), 250 * LOOM_NS_PER_MS);
}

uint64_t idn_keys_prepublish(const struct idn_conf *conf)
{
    return LOOM_MIN(conf->key_rotation / 2, conf->key_prepublish);
}

/* When a key retired at `retired_ms` has no valid token left and may go. */
static int64_t drop_after_ms(const struct idn_conf *conf, int64_t retired_ms)
{
    uint64_t keep = conf->token_ttl + idn_keys_check_interval(conf) + conf->clock_skew;
    return retired_ms + (int64_t)(keep / LOOM_NS_PER_MS);
}

static loom_err collect_row(const struct loom_sql_row *row, void *arg)
{
    struct key_rows *r = arg;
    if (r->n == MAX_KEY_ROWS)
        return LOOM_ETOOBIG;
    const struct loom_sql_value *kid = loom_sql_col(row, "kid"), *alg = loom_sql_col(row, "alg"),
                                *pem = loom_sql_col(row, "private_pem"),
                                *created = loom_sql_col(row, "created_ms"),
                                *from = loom_sql_col(row, "signs_from_ms"),
                                *retired = loom_sql_col(row, "retired_ms");
    if (!kid || kid->type != LOOM_SQL_TEXT || kid->s.len > LOOM_JWK_KID_MAX || !alg ||
        alg->type != LOOM_SQL_TEXT || alg->s.len >= sizeof(r->v[0].alg) || !pem ||
        pem->type != LOOM_SQL_TEXT || !created || created->type != LOOM_SQL_INT || !from ||
        from->type != LOOM_SQL_INT || !retired)
        return LOOM_EINTERNAL;
    struct key_row *k = &r->v[r->n++];
    memcpy(k->kid, kid->s.ptr, kid->s.len);
    k->kid[kid->s.len] = '\0';
    memcpy(k->alg, alg->s.ptr, alg->s.len);
    k->alg[alg->s.len] = '\0';
    k->pem = loom_str_dup(pem->s);
    k->created_ms = created->i;
    k->signs_from_ms = from->i;
    k->retired_ms = retired->type == LOOM_SQL_INT ? retired->i : 0;
    return LOOM_OK;
}

static loom_err load_rows(struct loom_db *db, struct key_rows *rows, struct loom_error *err)
{
    rows_clear(rows);
    loom_err e = loom_db_exec(db,
                              "SELECT kid, alg, private_pem, created_ms, signs_from_ms, "
                              "retired_ms FROM identity_keys ORDER BY signs_from_ms, kid",
                              NULL, 0, collect_row, rows, NULL, err);
    if (e == LOOM_ETOOBIG)
        return loom_error_set(err, e, "the store holds more than %d signing keys", MAX_KEY_ROWS);
    if (e == LOOM_EINTERNAL)
        return loom_error_set(err, e, "a row of identity_keys has unexpected types");
    return e;
}

/* ---- the keyring ---- */

struct idn_keyring *idn_keyring_ref(struct idn_keyring *r)
{
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
    return r;
}

void idn_keyring_unref(struct idn_keyring *r)
{
    if (!r || atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
        return;
    loom_jwks_unref(r->verify);
    loom_jwk_unref(r->signer);
    loom_jwk_unref(r->next);
    free(r->jwks_json);
    free(r->fingerprint);
    free(r);
}

const struct loom_jwk *idn_keyring_signer(const struct idn_keyring *r, int64_t now_ms)
{
    return r->next && now_ms >= r->next_from_ms ? r->next : r->signer;
}

struct idn_keyring *idn_keys_current(struct idn_service *idn)
{
    pthread_mutex_lock(&idn->keys_mu);
    struct idn_keyring *r = idn->ring ? idn_keyring_ref(idn->ring) : NULL;
    pthread_mutex_unlock(&idn->keys_mu);
    return r;
}

/* Build a keyring from rows (the keys not yet past their drop time): the signer is the newest
 * key that signs by `now`, the next one the first that signs after it. */
static loom_err build_ring(struct idn_service *idn, const struct key_rows *rows, int64_t now,
                           struct idn_keyring **out, struct loom_error *err)
{
    struct idn_keyring *r = loom_new(struct idn_keyring);
    atomic_init(&r->refs, 1);
    r->verify = loom_jwks_new();
    struct loom_buf fp;
    loom_buf_init(&fp, 0);
    loom_err e = LOOM_OK;
    const struct key_row *signer = NULL, *next = NULL;
    for (size_t i = 0; i < rows->n; i++) {
        const struct key_row *k = &rows->v[i];
        if (k->retired_ms && drop_after_ms(idn->conf, k->retired_ms) <= now)
            continue;
        enum loom_jwt_alg alg = loom_jwt_alg_parse(loom_str_cstr(k->alg));
        struct loom_jwk *jwk = NULL;
        e = loom_jwk_from_pem(alg, k->kid, loom_str_cstr(k->pem), &jwk, err);
        if (!e) {
            e = loom_jwks_add(r->verify, jwk, err);
            loom_jwk_unref(jwk);
        }
        if (e) {
            loom_error_prefix(err, "signing key %s", k->kid);
            goto fail;
        }
        loom_buf_printf(&fp, "%s:%lld:%lld;", k->kid, (long long)k->signs_from_ms,
                        (long long)k->retired_ms);
        if (k->retired_ms)
            continue;
        /* rows are in signs_from order */
        if (k->signs_from_ms <= now)
            signer = k;
        else if (!next)
            next = k;
    }
    if (!signer) {
        e = loom_error_set(err, LOOM_ENOTFOUND, "the store has no signing key");
        goto fail;
    }
    r->signer =
        loom_jwk_ref((struct loom_jwk *)loom_jwks_find(r->verify, loom_str_cstr(signer->kid)));
    if (next) {
        r->next =
            loom_jwk_ref((struct loom_jwk *)loom_jwks_find(r->verify, loom_str_cstr(next->kid)));
        r->next_from_ms = next->signs_from_ms;
    }
    loom_buf_printf(&fp, "signer=%s", signer->kid);
    struct loom_buf doc;
    loom_buf_init(&doc, 0);
    loom_jwks_write(r->verify, &doc);
    r->jwks_json = loom_buf_detach(&doc, &r->jwks_len);
    r->fingerprint = loom_buf_detach(&fp, NULL);
    *out = r;
    return LOOM_OK;
fail:
    loom_buf_release(&fp);
    idn_keyring_unref(r);
    return e;
}

/* Swap in a keyring built from rows, unless it would be the same as the current one. */
static loom_err publish(struct idn_service *idn, const struct key_rows *rows,
                        struct loom_error *err)
{
    struct idn_keyring *r = NULL;
    loom_err e = build_ring(idn, rows, now_ms(), &r, err);
    if (e)
        return e;
    pthread_mutex_lock(&idn->keys_mu);
    struct idn_keyring *old = idn->ring;
    bool same = old && strcmp(old->fingerprint, r->fingerprint) == 0;
    if (!same)
        idn->ring = r;
    pthread_mutex_unlock(&idn->keys_mu);
    if (same) {
        idn_keyring_unref(r);
        return LOOM_OK;
    }
    loom_gauge_set(idn->m_keys, (double)loom_jwks_count(r->verify));
    LOOM_LOG_KV(LOOM_LOG_INFO, "keys published",
                LOOM_KV_CSTR("signing_kid", loom_jwk_kid(r->signer)),
                LOOM_KV_CSTR("next_kid", r->next ? loom_jwk_kid(r->next) : ""),
                LOOM_KV_UINT("keys", loom_jwks_count(r->verify)));
    idn_keyring_unref(old);
    return LOOM_OK;
}

/* ---- rotation ---- */

struct rotation {
    struct idn_service *idn;
    struct key_rows rows;
    int64_t now;
    char created[LOOM_JWK_KID_MAX + 1];
    int64_t created_from_ms;
    char retired[LOOM_JWK_KID_MAX + 1];
    int64_t deleted;
};

/* Create a key that signs from `from_ms` (published from now). */
static loom_err create_key(struct loom_db *db, struct rotation *rot, int64_t from_ms,
                           struct loom_error *err)
{
    struct loom_jwk *k = NULL;
    loom_err e = loom_jwk_generate(LOOM_JWT_ES256, NULL, &k, err);
    if (e)
        return e;
    struct loom_buf pem;
    loom_buf_init(&pem, 0);
    e = loom_jwk_private_pem(k, &pem, err);
    if (!e) {
        struct loom_sql_value p[] = {
            LOOM_SQL_CSTR_V(loom_jwk_kid(k)),
            LOOM_SQL_CSTR_V("ES256"),
            LOOM_SQL_TEXT_V(loom_buf_str(&pem)),
            LOOM_SQL_INT_V(rot->now),
            LOOM_SQL_INT_V(from_ms),
        };
        e = loom_db_exec(db,
                         "INSERT INTO identity_keys (kid, alg, private_pem, created_ms, "
                         "signs_from_ms) VALUES ($1, $2, $3, $4, $5)",
                         p, LOOM_ARRAY_SIZE(p), NULL, NULL, NULL, err);
    }
    if (pem.data)
        OPENSSL_cleanse(pem.data, pem.len);
    loom_buf_release(&pem);
    snprintf(rot->created, sizeof(rot->created), "%s", loom_jwk_kid(k));
    rot->created_from_ms = from_ms;
    loom_jwk_unref(k);
    return e;
}

static loom_err rotate_tx(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct rotation *rot = arg;
    const struct idn_conf *conf = rot->idn->conf;
    rot->created[0] = rot->retired[0] = '\0';
    rot->deleted = 0;
    /* The lock row serialises rotations across replicas (SQLite's BEGIN IMMEDIATE already
     * does; on PostgreSQL this takes the row lock until commit). */
    loom_err e = loom_db_exec(db, "UPDATE identity_locks SET name = name WHERE name = 'keys'", NULL,
                              0, NULL, NULL, NULL, err);
    if (!e)
        e = load_rows(db, &rot->rows, err);
    if (e)
        return e;
    /* cur: the newest key that signs now; next: a pre-published one (rows are in signs_from
     * order). */
    const struct key_row *cur = NULL, *next = NULL;
    for (size_t i = 0; i < rot->rows.n; i++) {
        const struct key_row *k = &rot->rows.v[i];
        if (k->retired_ms)
            continue;
        if (k->signs_from_ms <= rot->now)
            cur = k;
        else if (!next)
            next = k;
    }
    int64_t rotation_ms = (int64_t)(conf->key_rotation / LOOM_NS_PER_MS);
    int64_t pre_ms = (int64_t)(idn_keys_prepublish(conf) / LOOM_NS_PER_MS);
    if (!cur) {
        /* Nothing signs (a fresh store): no verifier can hold a token yet, so sign at once. */
        e = create_key(db, rot, rot->now, err);
    } else if (!next && rot->now >= cur->signs_from_ms + rotation_ms - pre_ms) {
        /* The next key, published at least pre_ms before it signs (later than its turn if
         * this job ran late: the current key then signs a little longer). */
        e = create_key(db, rot, LOOM_MAX(cur->signs_from_ms + rotation_ms, rot->now + pre_ms), err);
    }
    if (e)
        return e;
    /* Only the newest key that signs now keeps signing: the ones before it retire. */
    const char *keep =
        rot->created[0] && rot->created_from_ms <= rot->now ? rot->created : cur->kid;
    for (size_t i = 0; i < rot->rows.n; i++) {
        const struct key_row *k = &rot->rows.v[i];
        if (k->retired_ms || k->signs_from_ms > rot->now || strcmp(k->kid, keep) == 0)
            continue;
        struct loom_sql_value p[] = { LOOM_SQL_INT_V(rot->now), LOOM_SQL_CSTR_V(k->kid) };
        e = loom_db_exec(db, "UPDATE identity_keys SET retired_ms = $1 WHERE kid = $2", p, 2, NULL,
                         NULL, NULL, err);
        if (e)
            return e;
        snprintf(rot->retired, sizeof(rot->retired), "%s", k->kid);
    }
    /* Keys whose last token has expired everywhere. */
    int64_t keep_ms = drop_after_ms(conf, 0);
    struct loom_sql_value p[] = { LOOM_SQL_INT_V(rot->now - keep_ms) };
    e = loom_db_exec(db,
                     "DELETE FROM identity_keys WHERE retired_ms IS NOT NULL AND retired_ms <= $1",
                     p, 1, NULL, NULL, &rot->deleted, err);
    if (e)
        return e;
    return load_rows(db, &rot->rows, err);
}

loom_err idn_keys_rotate(struct idn_service *idn, struct loom_error *err)
{
    struct rotation *rot = loom_new(struct rotation);
    rot->idn = idn;
    pthread_mutex_lock(&idn->rotate_mu);
    rot->now = now_ms();
    loom_err e = loom_store_tx(idn->store, rotate_tx, rot, err);
    if (!e) {
        if (rot->created[0]) {
            loom_counter_inc(idn->m_rotations);
            LOOM_LOG_KV(LOOM_LOG_INFO, "signing key created", LOOM_KV_CSTR("kid", rot->created),
                        LOOM_KV_CSTR("alg", "ES256"),
                        LOOM_KV_DBL("signs_in_s", (double)(rot->created_from_ms - rot->now) / 1e3));
        }
        if (rot->retired[0])
            LOOM_LOG_KV(LOOM_LOG_INFO, "signing key retired", LOOM_KV_CSTR("kid", rot->retired));
        if (rot->deleted > 0)
            LOOM_LOG_KV(LOOM_LOG_INFO, "expired signing keys deleted",
                        LOOM_KV_INT("keys", rot->deleted));
        e = publish(idn, &rot->rows, err);
    }
    pthread_mutex_unlock(&idn->rotate_mu);
    rows_clear(&rot->rows);
    free(rot);
    return e;
}

bool idn_keys_reload_soon(struct idn_service *idn)
{
    int64_t now = now_ms(), last = atomic_load(&idn->reloaded_ms);
    if (now - last < 1000 || !atomic_compare_exchange_strong(&idn->reloaded_ms, &last, now))
        return false;
    struct key_rows *rows = loom_new(struct key_rows);
    struct loom_error err = { 0 };
    struct loom_db *db = NULL;
    pthread_mutex_lock(&idn->rotate_mu);
    loom_err e = loom_store_acquire(idn->store, &db, &err);
    if (!e) {
        e = load_rows(db, rows, &err);
        loom_store_release(idn->store, db);
    }
    if (!e)
        e = publish(idn, rows, &err);
    pthread_mutex_unlock(&idn->rotate_mu);
    if (e)
        LOOM_LOG_KV(LOOM_LOG_WARN, "reloading the signing keys failed",
                    LOOM_KV_CSTR("error", err.msg));
    rows_clear(rows);
    free(rows);
    return e == LOOM_OK;
}

static void rotate_work(struct loom_work *w)
{
    struct idn_service *idn = LOOM_CONTAINER_OF(w, struct idn_service, rotate_work);
    struct loom_error err = { 0 };
    loom_log_set_service("identity");
    if (idn_keys_rotate(idn, &err))
        LOOM_LOG_KV(LOOM_LOG_ERROR, "key rotation failed", LOOM_KV_CSTR("error", err.msg));
    /* Cleared here, not in the completion: the completion may never run once the loops stop,
     * and fini waits for this flag. */
    atomic_store(&idn->rotate_running, false);
}

static void rotate_done(struct loom_work *w, loom_err status)
{
    LOOM_UNUSED(w);
    LOOM_UNUSED(status);
}

static void on_rotate_timer(struct loom_timer *t)
{
    struct idn_service *idn = LOOM_CONTAINER_OF(t, struct idn_service, rotate_timer);
    bool idle = false;
    if (!atomic_compare_exchange_strong(&idn->rotate_running, &idle, true))
        return;
    if (loom_pool_submit(idn->pool, t->loop, &idn->rotate_work, rotate_work, rotate_done))
        atomic_store(&idn->rotate_running, false);
}

void idn_keys_start(struct idn_service *idn)
{
    uint64_t every = idn_keys_check_interval(idn->conf);
    loom_timer_init(&idn->rotate_timer, loom_svc_loop(idn->svc, 0), on_rotate_timer);
    loom_timer_start(&idn->rotate_timer, every, every);
}
