/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The identity service's HTTP API. /oauth/token is the OAuth 2.0 token endpoint for the client
 * credentials grant (RFC 6749 sections 4.4, 2.3.1, 5.1 and 5.2): a strictly parsed form body,
 * credentials by HTTP Basic or in the body (never both), errors as {"error",
 * "error_description"} with Cache-Control: no-store. /.well-known/jwks.json publishes the
 * verification keys and /.well-known/oauth-authorization-server the RFC 8414 metadata. The
 * /api/v1/clients routes manage API clients; they take a bearer token this service issued
 * with the admin scope (RFC 6750 answers: 401 invalid_token, 403 insufficient_scope) and
 * answer errors as RFC 9457 problems. A handler validates its request on the loop thread;
 * store work, argon2 and token checks run as a struct idn_op on the work pool, and the
 * completion answers back on the loop. Failed authentications are counted per client id in a
 * fixed-size table (a minute's window, --identity.max-failed-auth per window) so that guessing
 * a secret is slow; while a client id is over its limit every attempt is refused with 429,
 * before any hashing. Secrets and tokens never reach a log line.
 */
#include "identity/identity.h"

#include <loom/id.h>
#include <loom/log.h>

#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOKEN_BODY_MAX  4096
#define TOKEN_BODY_DROP (64 * 1024) /* a larger token body is read and dropped up to this */
#define ROUTE_BODY_ANY  ((size_t)1 << 40)
#define CLIENT_BODY_MAX 16384
#define PAGE_DEFAULT    50
#define PAGE_MAX        500
#define SECRET_MAX      256 /* bytes of a presented secret */
#define RPS_MAX         1e6
#define BURST_MAX       1000000
#define FAIL_WINDOW_MS  60000
#define LIMITER_PROBE   8
#define REALM           "loom"

/* ---- operations ---- */

struct idn_op;
typedef void (*idn_op_fn)(struct idn_op *op);

/* What a token request carries. */
struct token_args {
    struct loom_str client_id, secret;
    bool via_basic;
    bool has_scope;
    unsigned scopes;
};

/* What a clients request carries. */
struct client_args {
    struct loom_str id;
    struct loom_str name;
    unsigned scopes;
    struct idn_client_patch patch;
    struct loom_str after;
    size_t limit;
};

struct idn_op {
    struct loom_work work;
    struct loom_http_req *req;
    struct idn_service *idn;
    idn_op_fn fn;
    bool need_admin;
    int status;
    const char *content_type;
    struct loom_buf body;
    char www_authenticate[160];
    char location[128];
    int retry_after;
    bool no_store;
    struct token_args tok;
    struct client_args cl;
};

static struct idn_op *op_new(struct loom_http_req *req, idn_op_fn fn)
{
    struct idn_op *op = loom_arena_new(req->arena, struct idn_op);
    op->req = req;
    op->idn = req->ctx;
    op->fn = fn;
    loom_buf_init(&op->body, 0);
    return op;
}

static void problem_into(struct loom_buf *b, const struct loom_http_req *req, int status,
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

static void op_problem(struct idn_op *op, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void op_problem(struct idn_op *op, int status, const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    problem_into(&op->body, op->req, status, detail);
    op->status = status;
    op->content_type = "application/problem+json";
}

/* Answer a clients request at once (loop thread) with a problem. */
static void problem(struct loom_http_req *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void problem(struct loom_http_req *req, int status, const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    struct loom_buf b;
    loom_buf_init(&b, 0);
    problem_into(&b, req, status, detail);
    loom_http_respond_buf(req, status, "application/problem+json", &b);
    loom_buf_release(&b);
}

/* An RFC 6749 section 5.2 error into the op's answer. */
static void op_oauth_error(struct idn_op *op, int status, const char *error, const char *desc)
{
    struct loom_json_writer w;
    loom_buf_reset(&op->body);
    loom_json_writer_init(&w, &op->body);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "error");
    loom_json_write_string(&w, error);
    loom_json_write_key(&w, "error_description");
    loom_json_write_string(&w, desc);
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
    op->status = status;
    op->content_type = "application/json";
    op->no_store = true;
    if (status == 401)
        snprintf(op->www_authenticate, sizeof(op->www_authenticate),
                 "Basic realm=\"" REALM "\", charset=\"UTF-8\"");
}

static void op_store_error(struct idn_op *op, loom_err e, const struct loom_error *err)
{
    LOOM_LOG_KV(LOOM_LOG_ERROR, "store error", LOOM_KV_CSTR("code", loom_err_name(e)),
                LOOM_KV_CSTR("error", err->msg), LOOM_KV_STR("path", op->req->path));
    if (e == LOOM_ECONNECT || e == LOOM_EBUSY || e == LOOM_EUNAVAIL)
        op_problem(op, 503, "the identity database is unavailable (%s); try again",
                   loom_strerror(e));
    else
        op_problem(op, 500, "the identity database failed");
}

static void op_json(struct idn_op *op, int status, struct loom_buf *b)
{
    loom_buf_release(&op->body);
    op->body = *b;
    loom_buf_init(b, 0);
    op->status = status;
    op->content_type = "application/json";
}

static void op_respond(struct idn_op *op)
{
    struct loom_http_req *req = op->req;
    if (op->www_authenticate[0])
        loom_http_resp_header(req, "WWW-Authenticate", loom_str_cstr(op->www_authenticate));
    if (op->location[0])
        loom_http_resp_header(req, "Location", loom_str_cstr(op->location));
    if (op->retry_after > 0)
        loom_http_resp_headerf(req, "Retry-After", "%d", op->retry_after);
    if (op->no_store) {
        loom_http_resp_header(req, "Cache-Control", LOOM_STR("no-store"));
        loom_http_resp_header(req, "Pragma", LOOM_STR("no-cache"));
    }
    if (op->status == 204)
        loom_http_respond(req, 204, NULL, LOOM_STR_NULL);
    else
        loom_http_respond(req, op->status, op->content_type, loom_buf_str(&op->body));
    /* The body may hold a secret or a token: wipe our copy before the memory is reused (the
     * server's copy goes with its output buffer). */
    if (op->body.data)
        OPENSSL_cleanse(op->body.data, op->body.cap);
    loom_buf_release(&op->body);
}

/* ---- bearer tokens for the clients API ---- */

/* On the loop thread, before anything else is looked at: a request to the clients API without
 * a bearer token is answered 401 at once, so an anonymous caller learns nothing from the
 * validation of its body or ids. The token itself is verified on the pool (authorize_admin). */
static bool has_bearer(struct loom_http_req *req)
{
    struct loom_str h = loom_http_req_header(req, "authorization");
    struct loom_str scheme, token = loom_str_cut(h, ' ', &scheme);
    if (h.len && loom_str_ieq(scheme, LOOM_STR("Bearer")) && token.len)
        return true;
    loom_http_resp_header(req, "WWW-Authenticate", LOOM_STR("Bearer realm=\"" REALM "\""));
    problem(req, 401,
            "this API needs a bearer token with the admin scope (from POST /oauth/token)");
    return false;
}

/* Verify the request's bearer token; false with the answer set when it does not do. */
static bool authorize_admin(struct idn_op *op)
{
    struct idn_service *idn = op->idn;
    struct loom_str h = loom_http_req_header(op->req, "authorization");
    struct loom_str scheme, token = loom_str_cut(h, ' ', &scheme);
    if (!h.len || !loom_str_ieq(scheme, LOOM_STR("Bearer")) || !token.len) {
        snprintf(op->www_authenticate, sizeof(op->www_authenticate), "Bearer realm=\"" REALM "\"");
        op_problem(op, 401,
                   "this API needs a bearer token with the admin scope (from POST /oauth/token)");
        return false;
    }
    struct loom_jwt_expect x = {
        .issuer = idn->conf->issuer,
        .audience = idn->conf->audience,
        .leeway = (int64_t)(idn->conf->clock_skew / LOOM_NS_PER_SEC),
    };
    struct loom_jwt_claims c;
    struct loom_error err = { 0 };
    /* A private arena: this runs on a worker, and the request's belongs to the loop. */
    struct loom_arena arena;
    loom_arena_init(&arena, 0);
    struct idn_keyring *ring = idn_keys_current(idn);
    loom_err e = loom_jwt_verify(ring->verify, token, &x, &arena, &c, &err);
    if (e == LOOM_ENOTFOUND && idn_keys_reload_soon(idn)) {
        /* Another replica may have rotated: try once more with a fresh keyring. */
        idn_keyring_unref(ring);
        ring = idn_keys_current(idn);
        e = loom_jwt_verify(ring->verify, token, &x, &arena, &c, &err);
    }
    idn_keyring_unref(ring);
    bool admin = !e && loom_jwt_scope_has(c.scope, LOOM_STR("admin"));
    char who[IDN_ID_MAX + 1] = "";
    if (!e)
        snprintf(who, sizeof(who), "%.*s", (int)LOOM_MIN(c.client_id.len, IDN_ID_MAX),
                 c.client_id.ptr);
    loom_arena_release(&arena);
    if (e) {
        LOOM_LOG_KV(LOOM_LOG_INFO, "bearer token refused",
                    LOOM_KV_CSTR("reason", loom_jwt_reason(e)), LOOM_KV_CSTR("error", err.msg),
                    LOOM_KV_STR("path", op->req->path));
        snprintf(op->www_authenticate, sizeof(op->www_authenticate),
                 "Bearer realm=\"" REALM "\", error=\"invalid_token\", error_description=\"%s\"",
                 loom_jwt_reason(e));
        op_problem(op, 401, "the bearer token is not valid (%s)", loom_jwt_reason(e));
        return false;
    }
    if (!admin) {
        snprintf(op->www_authenticate, sizeof(op->www_authenticate),
                 "Bearer realm=\"" REALM "\", error=\"insufficient_scope\", scope=\"admin\"");
        op_problem(op, 403, "this API needs the admin scope; client %s does not have it", who);
        return false;
    }
    return true;
}

static void op_work(struct loom_work *w)
{
    struct idn_op *op = LOOM_CONTAINER_OF(w, struct idn_op, work);
    loom_log_set_service("identity");
    loom_trace_set_current(&op->req->trace);
    if (!op->need_admin || authorize_admin(op))
        op->fn(op);
    loom_trace_set_current(NULL);
}

static void op_done(struct loom_work *w, loom_err status)
{
    struct idn_op *op = LOOM_CONTAINER_OF(w, struct idn_op, work);
    if (status)
        op_problem(op, 503, "the identity service is shutting down");
    op_respond(op);
}

static void op_submit(struct idn_op *op)
{
    if (loom_pool_submit(op->idn->pool, op->req->loop, &op->work, op_work, op_done)) {
        loom_buf_release(&op->body);
        problem(op->req, 503, "the identity service is overloaded; try again");
    }
}

/* ---- failed-authentication limiter ---- */

static uint64_t fnv1a(uint64_t seed, struct loom_str s)
{
    uint64_t h = 1469598103934665603ull ^ seed;
    for (size_t i = 0; i < s.len; i++)
        h = (h ^ (uint8_t)s.ptr[i]) * 1099511628211ull;
    return h;
}

/*
 * The slot of id, under limiter_mu: its own, or with `create` a free one or the one with the
 * oldest window in its probe run (an expired window is always older than a live one). The hash
 * is seeded per process, so nobody can aim collisions at a client's slot to evict it.
 */
static struct idn_limiter_slot *limiter_slot(struct idn_service *idn, struct loom_str id,
                                             int64_t now, bool create)
{
    LOOM_UNUSED(now);
    uint64_t h = fnv1a(idn->limiter_seed, id);
    struct idn_limiter_slot *victim = NULL;
    for (int i = 0; i < LIMITER_PROBE; i++) {
        struct idn_limiter_slot *s = &idn->limiter[(h + (uint64_t)i) % IDN_LIMITER_SLOTS];
        if (s->id[0] && strlen(s->id) == id.len && memcmp(s->id, id.ptr, id.len) == 0)
            return s;
        if (!s->id[0]) {
            if (!victim || victim->id[0])
                victim = s;
        } else if (!victim || (victim->id[0] && s->window_ms < victim->window_ms)) {
            victim = s;
        }
    }
    if (!create)
        return NULL;
    memcpy(victim->id, id.ptr, id.len);
    victim->id[id.len] = '\0';
    victim->window_ms = now;
    victim->failures = 0;
    return victim;
}

/* Seconds until `id` may try again, 0 if it may now. */
static int limiter_wait(struct idn_service *idn, struct loom_str id)
{
    int64_t now = loom_wall_ns() / (int64_t)LOOM_NS_PER_MS;
    pthread_mutex_lock(&idn->limiter_mu);
    struct idn_limiter_slot *s = limiter_slot(idn, id, now, false);
    int wait = 0;
    if (s && now - s->window_ms < FAIL_WINDOW_MS && s->failures >= idn->conf->max_failed_auth)
        wait = (int)((s->window_ms + FAIL_WINDOW_MS - now + 999) / 1000);
    pthread_mutex_unlock(&idn->limiter_mu);
    return wait;
}

static void limiter_record(struct idn_service *idn, struct loom_str id, bool failed)
{
    int64_t now = loom_wall_ns() / (int64_t)LOOM_NS_PER_MS;
    pthread_mutex_lock(&idn->limiter_mu);
    struct idn_limiter_slot *s = limiter_slot(idn, id, now, failed);
    if (s && !failed) {
        s->id[0] = '\0';
        s->failures = 0;
    } else if (s) {
        if (now - s->window_ms >= FAIL_WINDOW_MS) {
            s->window_ms = now;
            s->failures = 0;
        }
        s->failures++;
    }
    pthread_mutex_unlock(&idn->limiter_mu);
}

/* ---- /oauth/token ---- */

static void count_failure(struct idn_service *idn, const char *reason)
{
    const char *labels[] = { reason };
    loom_counter_inc(loom_counter_get(idn->f_failed, labels));
}

static void token_work(struct idn_op *op)
{
    struct idn_service *idn = op->idn;
    struct token_args *t = &op->tok;
    struct idn_client c;
    char *hash = NULL;
    struct loom_error err = { 0 };
    loom_err e = idn_client_get(idn->store, t->client_id, &c, &hash, &err);
    if (e && e != LOOM_ENOTFOUND) {
        op_store_error(op, e, &err);
        return;
    }
    /* An unknown id costs one argon2 verification too, so timing does not tell ids apart. */
    bool ok = idn_verify_secret(e ? idn->dummy_hash : hash, t->secret) && !e;
    free(hash);
    limiter_record(idn, t->client_id, !ok);
    if (!ok) {
        count_failure(idn, e ? "unknown_client" : "bad_secret");
        LOOM_LOG_KV(LOOM_LOG_INFO, "token refused", LOOM_KV_STR("client_id", t->client_id),
                    LOOM_KV_CSTR("reason", "invalid_client"));
        op_oauth_error(op, 401, "invalid_client", "client authentication failed");
        return;
    }
    if (c.disabled) {
        count_failure(idn, "disabled");
        LOOM_LOG_KV(LOOM_LOG_INFO, "token refused", LOOM_KV_STR("client_id", t->client_id),
                    LOOM_KV_CSTR("reason", "disabled"));
        op_oauth_error(op, 400, "unauthorized_client", "the client is disabled");
        return;
    }
    unsigned granted = t->has_scope ? t->scopes : c.scopes;
    if (granted & ~c.scopes) {
        count_failure(idn, "scope");
        op_oauth_error(op, 400, "invalid_scope",
                       "the requested scope is not a subset of the client's scopes");
        return;
    }
    if (!granted) {
        count_failure(idn, "scope");
        op_oauth_error(op, 400, "invalid_scope", "the client has no scopes");
        return;
    }
    struct loom_buf scope;
    loom_buf_init(&scope, 0);
    idn_scopes_format(granted, &scope);
    char jti[LOOM_UUID_LEN + 1];
    loom_uuid7(jti);
    int64_t now = loom_wall_ns() / (int64_t)LOOM_NS_PER_SEC;
    int64_t ttl = (int64_t)(idn->conf->token_ttl / LOOM_NS_PER_SEC);
    /* The client's quota travels in the token, so that the gateway enforces it without asking
     * identity: a change applies to the tokens issued after it. A client without a quota gets
     * no claim, and the gateway's default limit. */
    struct loom_buf quota;
    loom_buf_init(&quota, 0);
    if (c.has_quota) {
        struct loom_json_writer qw;
        loom_json_writer_init(&qw, &quota);
        loom_json_write_object_begin(&qw);
        loom_json_write_key(&qw, "rps");
        loom_json_write_double(&qw, c.quota.requests_per_second);
        loom_json_write_key(&qw, "burst");
        loom_json_write_i64(&qw, c.quota.burst);
        loom_json_write_object_end(&qw);
        loom_json_writer_finish(&qw);
    }
    struct loom_jwt_claims claims = {
        .iss = loom_str_cstr(idn->conf->issuer),
        .sub = loom_str_cstr(c.id),
        .aud = loom_str_cstr(idn->conf->audience),
        .jti = loom_str_cstr(jti),
        .client_id = loom_str_cstr(c.id),
        .scope = loom_buf_str(&scope),
        .exp = now + ttl,
        .nbf = now,
        .iat = now,
        .private_name = c.has_quota ? LOOM_STR(IDN_QUOTA_CLAIM) : LOOM_STR_NULL,
        .private_json = loom_buf_str(&quota),
    };
    struct idn_keyring *ring = idn_keys_current(idn);
    struct loom_buf token;
    loom_buf_init(&token, LOOM_JWT_MAX_LEN + 1);
    const struct loom_jwk *signer =
        idn_keyring_signer(ring, loom_wall_ns() / (int64_t)LOOM_NS_PER_MS);
    e = loom_jwt_sign(signer, &claims, &token, &err);
    loom_buf_release(&quota);
    if (e) {
        idn_keyring_unref(ring);
        loom_buf_release(&scope);
        loom_buf_release(&token);
        LOOM_LOG_KV(LOOM_LOG_ERROR, "signing failed", LOOM_KV_CSTR("error", err.msg));
        op_oauth_error(op, 500, "server_error", "the token could not be signed");
        return;
    }
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "access_token");
    loom_json_write_str(&w, loom_buf_str(&token));
    loom_json_write_key(&w, "token_type");
    loom_json_write_string(&w, "Bearer");
    loom_json_write_key(&w, "expires_in");
    loom_json_write_i64(&w, ttl);
    loom_json_write_key(&w, "scope");
    loom_json_write_str(&w, loom_buf_str(&scope));
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
    op_json(op, 200, &b);
    op->no_store = true;
    loom_counter_inc(idn->m_issued);
    LOOM_LOG_KV(LOOM_LOG_INFO, "token issued", LOOM_KV_CSTR("client_id", c.id),
                LOOM_KV_STR("scope", loom_buf_str(&scope)), LOOM_KV_CSTR("jti", jti),
                LOOM_KV_CSTR("kid", loom_jwk_kid(signer)), LOOM_KV_INT("expires_in", ttl));
    idn_keyring_unref(ring);
    OPENSSL_cleanse(token.data, token.len);
    loom_buf_release(&token);
    loom_buf_release(&scope);
}

/* Answer a token request at once (loop thread) with an RFC 6749 error. */
static void oauth_error(struct loom_http_req *req, int status, const char *error, const char *desc)
{
    struct idn_op *op = op_new(req, NULL);
    op_oauth_error(op, status, error, desc);
    op_respond(op);
}

/* Whether s (decoded) has a control character or invalid UTF-8... control characters only:
 * the JSON writer replaces invalid UTF-8 wherever these values are echoed. */
static bool has_control(struct loom_str s)
{
    for (size_t i = 0; i < s.len; i++)
        if ((unsigned char)s.ptr[i] < 0x20 || s.ptr[i] == 0x7f)
            return true;
    return false;
}

/* Strict standard base64 (RFC 4648 section 4, padded) for HTTP Basic credentials. */
static bool base64_decode(struct loom_str in, uint8_t *out, size_t *n)
{
    if (in.len == 0 || in.len % 4)
        return false;
    size_t o = 0;
    for (size_t i = 0; i < in.len; i += 4) {
        uint32_t v = 0;
        int pad = 0;
        for (int j = 0; j < 4; j++) {
            char c = in.ptr[i + j];
            uint32_t d;
            if (c >= 'A' && c <= 'Z')
                d = (uint32_t)(c - 'A');
            else if (c >= 'a' && c <= 'z')
                d = (uint32_t)(c - 'a' + 26);
            else if (c >= '0' && c <= '9')
                d = (uint32_t)(c - '0' + 52);
            else if (c == '+')
                d = 62;
            else if (c == '/')
                d = 63;
            else if (c == '=' && i + 4 == in.len && j >= 2)
                d = 0, pad++;
            else
                return false;
            if (pad && c != '=')
                return false;
            v = v << 6 | d;
        }
        if ((pad == 2 && (v & 0xffff)) || (pad == 1 && (v & 0xff)))
            return false; /* non-zero unused bits */
        out[o++] = (uint8_t)(v >> 16);
        if (pad < 2)
            out[o++] = (uint8_t)(v >> 8);
        if (pad < 1)
            out[o++] = (uint8_t)v;
    }
    *n = o;
    return true;
}

/* Parse "Basic <base64(urlencode(id):urlencode(secret))>"; false if malformed. */
static bool parse_basic(struct loom_http_req *req, struct loom_str cred, struct loom_str *id,
                        struct loom_str *secret)
{
    if (cred.len > 1024)
        return false;
    uint8_t *raw = loom_arena_alloc(req->arena, cred.len);
    size_t n;
    if (!base64_decode(cred, raw, &n))
        return false;
    struct loom_str all = loom_str_make((const char *)raw, n), rawid;
    struct loom_str rawsecret = loom_str_cut(all, ':', &rawid);
    if (!rawsecret.ptr)
        return false;
    return loom_http_url_decode(rawid, true, req->arena, id) == LOOM_OK &&
           loom_http_url_decode(rawsecret, true, req->arena, secret) == LOOM_OK;
}

enum { F_GRANT, F_SCOPE, F_ID, F_SECRET, F_COUNT };
static const char *const form_names[F_COUNT] = { "grant_type", "scope", "client_id",
                                                 "client_secret" };

/* Parse the form strictly; NULL or what is wrong with it. */
static const char *parse_form(struct loom_http_req *req, struct loom_str vals[F_COUNT],
                              bool seen[F_COUNT])
{
    struct loom_str body = req->body;
    if (!body.len)
        return "the request has no body";
    while (body.ptr) {
        struct loom_str pair, rawname;
        body = loom_str_cut(body, '&', &pair);
        if (!pair.len)
            return "the form has an empty parameter";
        struct loom_str rawval = loom_str_cut(pair, '=', &rawname);
        if (!rawval.ptr)
            return "a form parameter has no '='";
        struct loom_str name, val;
        if (loom_http_url_decode(rawname, true, req->arena, &name) ||
            loom_http_url_decode(rawval, true, req->arena, &val))
            return "the form has a malformed %-escape";
        if (has_control(name) || has_control(val))
            return "the form has control characters";
        for (int i = 0; i < F_COUNT; i++) {
            if (!loom_str_eq_cstr(name, form_names[i]))
                continue;
            if (seen[i])
                return "a form parameter is repeated";
            seen[i] = true;
            vals[i] = val;
        }
        /* Other parameters are ignored (RFC 6749 section 3.2). */
    }
    return NULL;
}

static void token_request(struct loom_http_req *req)
{
    struct idn_service *idn = req->ctx;
    struct loom_str ctype = loom_http_req_header(req, "content-type"), mt;
    loom_str_cut(ctype, ';', &mt);
    if (!loom_str_ieq(loom_str_trim(mt), LOOM_STR("application/x-www-form-urlencoded"))) {
        oauth_error(req, 400, "invalid_request",
                    "the body must be application/x-www-form-urlencoded");
        return;
    }
    struct loom_str vals[F_COUNT] = { 0 };
    bool seen[F_COUNT] = { 0 };
    const char *why = parse_form(req, vals, seen);
    if (why) {
        oauth_error(req, 400, "invalid_request", why);
        return;
    }
    if (!seen[F_GRANT] || !vals[F_GRANT].len) {
        oauth_error(req, 400, "invalid_request", "grant_type is missing");
        return;
    }
    if (!loom_str_eq(vals[F_GRANT], LOOM_STR("client_credentials"))) {
        oauth_error(req, 400, "unsupported_grant_type", "only client_credentials is supported");
        return;
    }
    struct idn_op *op = op_new(req, token_work);
    struct token_args *t = &op->tok;
    struct loom_str auth = loom_http_req_header(req, "authorization");
    if (auth.len) {
        struct loom_str scheme, cred = loom_str_cut(auth, ' ', &scheme);
        if (!loom_str_ieq(scheme, LOOM_STR("Basic"))) {
            oauth_error(req, 400, "invalid_request",
                        "authenticate with HTTP Basic or client_id and client_secret in the body");
            return;
        }
        if (seen[F_SECRET]) {
            oauth_error(req, 400, "invalid_request",
                        "use one authentication method: HTTP Basic or client_secret, not both");
            return;
        }
        if (!parse_basic(req, cred, &t->client_id, &t->secret)) {
            op_oauth_error(op, 401, "invalid_client", "malformed HTTP Basic credentials");
            op_respond(op);
            return;
        }
        if (seen[F_ID] && !loom_str_eq(vals[F_ID], t->client_id)) {
            oauth_error(req, 400, "invalid_request",
                        "client_id in the body differs from the HTTP Basic user");
            return;
        }
        t->via_basic = true;
    } else if (seen[F_ID] && seen[F_SECRET]) {
        t->client_id = vals[F_ID];
        t->secret = vals[F_SECRET];
    } else {
        op_oauth_error(op, 401, "invalid_client",
                       "no client credentials: use HTTP Basic or client_id and client_secret");
        op_respond(op);
        return;
    }
    if (!idn_valid_id(t->client_id) || t->secret.len == 0 || t->secret.len > SECRET_MAX) {
        count_failure(idn, "unknown_client");
        op_oauth_error(op, 401, "invalid_client", "client authentication failed");
        op_respond(op);
        return;
    }
    if (seen[F_SCOPE]) {
        t->has_scope = true;
        if (!idn_scopes_parse(vals[F_SCOPE], &t->scopes) || !t->scopes) {
            oauth_error(req, 400, "invalid_scope",
                        "scope is a space-separated subset of models:read models:write infer "
                        "train ingest admin");
            return;
        }
    }
    int wait = limiter_wait(idn, t->client_id);
    if (wait) {
        count_failure(idn, "rate_limited");
        LOOM_LOG_KV(LOOM_LOG_WARN, "token refused", LOOM_KV_STR("client_id", t->client_id),
                    LOOM_KV_CSTR("reason", "too many failed attempts"));
        op_oauth_error(op, 429, "invalid_client",
                       "too many failed authentication attempts for this client; retry later");
        op->retry_after = wait;
        op_respond(op);
        return;
    }
    op_submit(op);
}

/* The token endpoint reads its own body so that one over TOKEN_BODY_MAX gets an RFC 6749
 * section 5.2 error like every other refusal there, not the server's problem document: a body
 * up to TOKEN_BODY_DROP is read and dropped (the connection is kept), a larger one is answered
 * at once and the connection closed. */
struct token_body {
    char buf[TOKEN_BODY_MAX];
    size_t len;
    uint64_t seen;
};

static loom_err token_data(struct loom_http_req *req, struct loom_str chunk, void *arg)
{
    LOOM_UNUSED(req);
    struct token_body *b = arg;
    b->seen += chunk.len;
    if (b->seen > TOKEN_BODY_DROP)
        return LOOM_ETOOBIG;
    if (b->seen <= TOKEN_BODY_MAX) {
        memcpy(b->buf + b->len, chunk.ptr, chunk.len);
        b->len += chunk.len;
    }
    return LOOM_OK;
}

static void token_too_big(struct loom_http_req *req)
{
    _Static_assert(TOKEN_BODY_MAX == 4096, "the message says 4096");
    oauth_error(req, 413, "invalid_request", "the request body is over 4096 bytes");
}

static void token_end(struct loom_http_req *req, loom_err status, void *arg)
{
    struct token_body *b = arg;
    if (status == LOOM_ETOOBIG || (status == LOOM_OK && b->seen > TOKEN_BODY_MAX)) {
        token_too_big(req);
        return;
    }
    if (status) {
        oauth_error(req, 400, "invalid_request", "the request body is malformed");
        return;
    }
    req->body = loom_str_make(b->buf, b->len);
    token_request(req);
}

static void h_token(struct loom_http_req *req)
{
    struct loom_str cl = loom_http_req_header(req, "content-length");
    uint64_t n;
    if (cl.len && loom_str_to_u64(cl, &n) == LOOM_OK && n > TOKEN_BODY_DROP) {
        token_too_big(req);
        return;
    }
    struct token_body *b = loom_arena_new(req->arena, struct token_body);
    loom_http_req_read_body(req, token_data, token_end, b);
}

/* ---- discovery ---- */

static void h_jwks(struct loom_http_req *req)
{
    struct idn_service *idn = req->ctx;
    struct idn_keyring *ring = idn_keys_current(idn);
    /* Half the time the next key is published before it signs (at most 5 min, at least 1 s):
     * a copy cached for max-age, refetched when it expires, holds the next key before its
     * first token. */
    uint64_t max_age = LOOM_MAX(LOOM_MIN(idn_keys_prepublish(idn->conf) / 2, 300 * LOOM_NS_PER_SEC),
                                LOOM_NS_PER_SEC);
    loom_http_resp_headerf(req, "Cache-Control", "public, max-age=%llu",
                           (unsigned long long)(max_age / LOOM_NS_PER_SEC));
    loom_http_respond(req, 200, "application/jwk-set+json",
                      loom_str_make(ring->jwks_json, ring->jwks_len));
    idn_keyring_unref(ring);
}

static void h_metadata(struct loom_http_req *req)
{
    struct idn_service *idn = req->ctx;
    struct loom_buf b, u;
    loom_buf_init(&b, 0);
    loom_buf_init(&u, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "issuer");
    loom_json_write_string(&w, idn->conf->issuer);
    loom_buf_printf(&u, "%s/oauth/token", idn->conf->issuer);
    loom_json_write_key(&w, "token_endpoint");
    loom_json_write_str(&w, loom_buf_str(&u));
    loom_buf_reset(&u);
    loom_buf_printf(&u, "%s/.well-known/jwks.json", idn->conf->issuer);
    loom_json_write_key(&w, "jwks_uri");
    loom_json_write_str(&w, loom_buf_str(&u));
    loom_json_write_key(&w, "grant_types_supported");
    loom_json_write_array_begin(&w);
    loom_json_write_string(&w, "client_credentials");
    loom_json_write_array_end(&w);
    loom_json_write_key(&w, "response_types_supported");
    loom_json_write_array_begin(&w);
    loom_json_write_array_end(&w);
    loom_json_write_key(&w, "token_endpoint_auth_methods_supported");
    loom_json_write_array_begin(&w);
    loom_json_write_string(&w, "client_secret_basic");
    loom_json_write_string(&w, "client_secret_post");
    loom_json_write_array_end(&w);
    loom_json_write_key(&w, "scopes_supported");
    loom_json_write_array_begin(&w);
    for (int i = 0; i < IDN_NSCOPES; i++)
        loom_json_write_string(&w, idn_scope_names[i]);
    loom_json_write_array_end(&w);
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
    loom_http_resp_header(req, "Cache-Control", LOOM_STR("public, max-age=300"));
    loom_http_respond_buf(req, 200, "application/json", &b);
    loom_buf_release(&b);
    loom_buf_release(&u);
}

/* ---- /api/v1/clients ---- */

static void client_answer(struct idn_op *op, int status, const struct idn_client *c,
                          const char *secret)
{
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    idn_client_json(c, &w);
    if (secret) {
        loom_json_write_key(&w, "secret");
        loom_json_write_string(&w, secret);
    }
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
    op_json(op, status, &b);
    if (secret)
        op->no_store = true;
}

static void client_error(struct idn_op *op, loom_err e, const struct loom_error *err)
{
    switch (e) {
    case LOOM_ENOTFOUND:
        op_problem(op, 404, "%s", err->msg);
        break;
    case LOOM_EEXIST:
    case LOOM_ECONFLICT:
        op_problem(op, 409, "%s", err->msg);
        break;
    default:
        op_store_error(op, e, err);
    }
}

static void create_work(struct idn_op *op)
{
    struct client_args *a = &op->cl;
    struct idn_client c = { .scopes = a->scopes };
    idn_new_id(c.id);
    memcpy(c.name, a->name.ptr, a->name.len);
    c.name[a->name.len] = '\0';
    c.has_quota = a->patch.set_rps; /* h_create saw both fields, or none */
    c.quota = a->patch.quota;
    c.created_ms = c.updated_ms = c.secret_rotated_ms = loom_wall_ns() / (int64_t)LOOM_NS_PER_MS;
    char secret[IDN_SECRET_LEN + 1];
    idn_new_secret(secret);
    char *hash = idn_hash_secret(loom_str_cstr(secret));
    struct loom_error err = { 0 };
    loom_err e = idn_client_insert(op->idn->store, &c, hash, &err);
    free(hash);
    if (e) {
        client_error(op, e, &err);
    } else {
        client_answer(op, 201, &c, secret);
        snprintf(op->location, sizeof(op->location), "/api/v1/clients/%s", c.id);
        struct loom_buf s;
        loom_buf_init(&s, 0);
        idn_scopes_format(c.scopes, &s);
        LOOM_LOG_KV(LOOM_LOG_INFO, "client created", LOOM_KV_CSTR("client_id", c.id),
                    LOOM_KV_CSTR("name", c.name), LOOM_KV_STR("scopes", loom_buf_str(&s)));
        loom_buf_release(&s);
    }
    OPENSSL_cleanse(secret, sizeof(secret));
}

static void list_work(struct idn_op *op)
{
    struct client_args *a = &op->cl;
    struct idn_client *v = loom_calloc(a->limit + 1, sizeof(*v));
    size_t n = 0;
    struct loom_error err = { 0 };
    loom_err e = idn_client_list(op->idn->store, a->after, a->limit + 1, v, &n, &err);
    if (e) {
        free(v);
        op_store_error(op, e, &err);
        return;
    }
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "items");
    loom_json_write_array_begin(&w);
    for (size_t i = 0; i < n && i < a->limit; i++) {
        loom_json_write_object_begin(&w);
        idn_client_json(&v[i], &w);
        loom_json_write_object_end(&w);
    }
    loom_json_write_array_end(&w);
    loom_json_write_key(&w, "next_cursor");
    if (n > a->limit)
        loom_json_write_string(&w, v[a->limit - 1].id);
    else
        loom_json_write_null(&w);
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
    op_json(op, 200, &b);
    free(v);
}

static void get_work(struct idn_op *op)
{
    struct idn_client c;
    struct loom_error err = { 0 };
    loom_err e = idn_client_get(op->idn->store, op->cl.id, &c, NULL, &err);
    if (e)
        client_error(op, e, &err);
    else
        client_answer(op, 200, &c, NULL);
}

static void patch_work(struct idn_op *op)
{
    struct idn_client c;
    struct loom_error err = { 0 };
    loom_err e = idn_client_update(op->idn->store, op->cl.id, &op->cl.patch, &c, &err);
    if (e) {
        client_error(op, e, &err);
        return;
    }
    client_answer(op, 200, &c, NULL);
    LOOM_LOG_KV(LOOM_LOG_INFO, "client updated", LOOM_KV_CSTR("client_id", c.id),
                LOOM_KV_BOOL("disabled", c.disabled));
}

static void delete_work(struct idn_op *op)
{
    struct loom_error err = { 0 };
    loom_err e = idn_client_delete(op->idn->store, op->cl.id, &err);
    if (e) {
        client_error(op, e, &err);
        return;
    }
    op->status = 204;
    LOOM_LOG_KV(LOOM_LOG_INFO, "client deleted", LOOM_KV_STR("client_id", op->cl.id));
}

static void rotate_work(struct idn_op *op)
{
    char secret[IDN_SECRET_LEN + 1];
    idn_new_secret(secret);
    char *hash = idn_hash_secret(loom_str_cstr(secret));
    struct idn_client c;
    struct loom_error err = { 0 };
    loom_err e = idn_client_set_secret(op->idn->store, op->cl.id, hash, &c, &err);
    free(hash);
    if (e) {
        client_error(op, e, &err);
    } else {
        client_answer(op, 200, &c, secret);
        LOOM_LOG_KV(LOOM_LOG_INFO, "client secret rotated", LOOM_KV_CSTR("client_id", c.id));
    }
    OPENSSL_cleanse(secret, sizeof(secret));
}

/* The route's {id}, validated; false (answered 404) if it cannot be an id. */
static bool take_id(struct loom_http_req *req, struct client_args *a)
{
    a->id = loom_http_req_param(req, "id");
    if (!idn_valid_id(a->id)) {
        problem(req, 404, "no client \"%.*s\"", (int)LOOM_MIN(a->id.len, 64), a->id.ptr);
        return false;
    }
    return true;
}

static bool json_body(struct loom_http_req *req, bool patch, struct loom_json_doc *doc)
{
    struct loom_str ctype = loom_http_req_header(req, "content-type"), mt;
    loom_str_cut(ctype, ';', &mt);
    mt = loom_str_trim(mt);
    if (!loom_str_ieq(mt, LOOM_STR("application/json")) &&
        !(patch && loom_str_ieq(mt, LOOM_STR("application/merge-patch+json")))) {
        problem(req, 415, "the body must be application/json");
        return false;
    }
    struct loom_json_limits lim = { .max_depth = 8, .max_tokens = 1024 };
    struct loom_error err = { 0 };
    if (loom_json_parse(req->body.ptr, req->body.len, &lim, req->arena, doc, &err)) {
        problem(req, 400, "the body is not JSON: %s", err.msg);
        return false;
    }
    if (!loom_json_is_object(doc, 0)) {
        problem(req, 400, "the body must be a JSON object");
        return false;
    }
    return true;
}

/* scopes: an array of scope names (or one space-separated string). */
static bool parse_scopes(struct loom_http_req *req, const struct loom_json_doc *d, int i,
                         unsigned *out)
{
    unsigned bits = 0;
    if (loom_json_is_array(d, i)) {
        loom_json_foreach (d, i, s) {
            struct loom_str name;
            unsigned one;
            if (!loom_json_is_string(d, s) || loom_json_unescape(d, s, req->arena, &name) ||
                !idn_scopes_parse(name, &one) || __builtin_popcount(one) != 1) {
                problem(req, 400,
                        "scopes holds names from: models:read models:write infer train ingest "
                        "admin");
                return false;
            }
            bits |= one;
        }
    } else {
        problem(req, 400, "scopes is an array of scope names");
        return false;
    }
    *out = bits;
    return true;
}

/* quota: {requests_per_second, burst}, either optional in a PATCH; or null for none. */
static bool parse_quota(struct loom_http_req *req, const struct loom_json_doc *d, int q,
                        struct idn_client_patch *p)
{
    if (loom_json_is_null(d, q)) {
        p->clear_quota = true;
        return true;
    }
    if (!loom_json_is_object(d, q)) {
        problem(req, 400, "quota is an object {requests_per_second, burst}, or null for none");
        return false;
    }
    loom_json_foreach (d, q, k) {
        if (loom_json_str_eq(d, k, LOOM_STR("requests_per_second"))) {
            double v;
            if (loom_json_to_double(d, k + 1, &v) || !(v > 0) || v > RPS_MAX) {
                problem(req, 400, "quota.requests_per_second is a number in (0, 1e6]");
                return false;
            }
            p->set_rps = true;
            p->quota.requests_per_second = v;
        } else if (loom_json_str_eq(d, k, LOOM_STR("burst"))) {
            int64_t v;
            if (!loom_json_is_integer(d, k + 1) || loom_json_to_i64(d, k + 1, &v) || v < 1 ||
                v > BURST_MAX) {
                problem(req, 400, "quota.burst is an integer in [1, 1000000]");
                return false;
            }
            p->set_burst = true;
            p->quota.burst = v;
        } else {
            problem(req, 400, "quota has requests_per_second and burst only");
            return false;
        }
    }
    if (!p->set_rps && !p->set_burst) {
        problem(req, 400, "quota is {requests_per_second, burst}, or null for none");
        return false;
    }
    return true;
}

/* Refuse objects with a key twice: a client could otherwise mean either value. */
static bool unique_keys(struct loom_http_req *req, const struct loom_json_doc *d, int obj)
{
    loom_json_foreach (d, obj, a) {
        for (int b = loom_json_skip(d, a + 1); b < loom_json_skip(d, obj);
             b = loom_json_skip(d, b + 1)) {
            struct loom_str sa;
            if (!loom_json_unescape(d, a, req->arena, &sa) && loom_json_str_eq(d, b, sa)) {
                problem(req, 400, "the body has a key twice");
                return false;
            }
        }
    }
    return true;
}

static void h_create(struct loom_http_req *req)
{
    if (!has_bearer(req))
        return;
    struct loom_json_doc d;
    if (!json_body(req, false, &d) || !unique_keys(req, &d, 0))
        return;
    struct idn_op *op = op_new(req, create_work);
    op->need_admin = true;
    struct client_args *a = &op->cl;
    bool has_name = false, has_scopes = false;
    loom_json_foreach (&d, 0, k) {
        if (loom_json_str_eq(&d, k, LOOM_STR("name"))) {
            if (!loom_json_is_string(&d, k + 1) ||
                loom_json_unescape(&d, k + 1, req->arena, &a->name) || !idn_valid_name(a->name)) {
                problem(req, 400,
                        "name is 1 to 64 characters of A-Z a-z 0-9 . _ -, starting with a letter "
                        "or digit");
                return;
            }
            has_name = true;
        } else if (loom_json_str_eq(&d, k, LOOM_STR("scopes"))) {
            if (!parse_scopes(req, &d, k + 1, &a->scopes))
                return;
            has_scopes = true;
        } else if (loom_json_str_eq(&d, k, LOOM_STR("quota"))) {
            if (!unique_keys(req, &d, k + 1) || !parse_quota(req, &d, k + 1, &a->patch))
                return;
        } else {
            struct loom_str key = loom_json_slice(&d, k);
            problem(req, 400, "unknown field \"%.*s\" (name, scopes, quota)",
                    (int)LOOM_MIN(key.len, 64), key.ptr);
            return;
        }
    }
    if (!has_name || !has_scopes) {
        problem(req, 400, "a client needs a name and scopes");
        return;
    }
    if (a->patch.set_rps != a->patch.set_burst) {
        problem(req, 400, "a quota has both requests_per_second and burst (or give none)");
        return;
    }
    op_submit(op);
}

static void h_list(struct loom_http_req *req)
{
    if (!has_bearer(req))
        return;
    struct idn_op *op = op_new(req, list_work);
    op->need_admin = true;
    struct client_args *a = &op->cl;
    a->limit = PAGE_DEFAULT;
    struct loom_str v;
    if (loom_http_req_query(req, "limit", &v)) {
        uint64_t n;
        if (loom_str_to_u64(v, &n) || n < 1 || n > PAGE_MAX) {
            problem(req, 400, "limit is an integer from 1 to %d", PAGE_MAX);
            return;
        }
        a->limit = (size_t)n;
    }
    if (loom_http_req_query(req, "cursor", &v)) {
        if (!idn_valid_id(v)) {
            problem(req, 400, "cursor is the next_cursor of a previous page");
            return;
        }
        a->after = v;
    } else {
        a->after = LOOM_STR("");
    }
    op_submit(op);
}

static void h_get(struct loom_http_req *req)
{
    if (!has_bearer(req))
        return;
    struct idn_op *op = op_new(req, get_work);
    op->need_admin = true;
    if (take_id(req, &op->cl))
        op_submit(op);
}

static void h_patch(struct loom_http_req *req)
{
    if (!has_bearer(req))
        return;
    struct idn_op *op = op_new(req, patch_work);
    op->need_admin = true;
    struct client_args *a = &op->cl;
    struct loom_json_doc d;
    if (!take_id(req, a) || !json_body(req, true, &d) || !unique_keys(req, &d, 0))
        return;
    struct idn_client_patch *p = &a->patch;
    loom_json_foreach (&d, 0, k) {
        if (loom_json_str_eq(&d, k, LOOM_STR("scopes"))) {
            if (!parse_scopes(req, &d, k + 1, &p->scopes))
                return;
            p->set_scopes = true;
        } else if (loom_json_str_eq(&d, k, LOOM_STR("quota"))) {
            if (!unique_keys(req, &d, k + 1) || !parse_quota(req, &d, k + 1, p))
                return;
        } else if (loom_json_str_eq(&d, k, LOOM_STR("disabled"))) {
            if (loom_json_to_bool(&d, k + 1, &p->disabled)) {
                problem(req, 400, "disabled is true or false");
                return;
            }
            p->set_disabled = true;
        } else {
            struct loom_str key = loom_json_slice(&d, k);
            problem(req, 400, "field \"%.*s\" cannot be changed (scopes, quota, disabled)",
                    (int)LOOM_MIN(key.len, 64), key.ptr);
            return;
        }
    }
    if (!p->set_scopes && !p->set_rps && !p->set_burst && !p->clear_quota && !p->set_disabled) {
        problem(req, 400, "nothing to change: give scopes, quota or disabled");
        return;
    }
    op_submit(op);
}

static void h_delete(struct loom_http_req *req)
{
    if (!has_bearer(req))
        return;
    struct idn_op *op = op_new(req, delete_work);
    op->need_admin = true;
    if (take_id(req, &op->cl))
        op_submit(op);
}

static void h_rotate(struct loom_http_req *req)
{
    if (!has_bearer(req))
        return;
    struct idn_op *op = op_new(req, rotate_work);
    op->need_admin = true;
    if (take_id(req, &op->cl))
        op_submit(op);
}

const struct loom_route idn_routes[IDN_NROUTES] = {
    { LOOM_HTTP_POST, "/oauth/token", h_token, ROUTE_BODY_ANY, LOOM_ROUTE_STREAM },
    { LOOM_HTTP_GET, "/.well-known/jwks.json", h_jwks, 0, 0 },
    { LOOM_HTTP_GET, "/.well-known/oauth-authorization-server", h_metadata, 0, 0 },
    { LOOM_HTTP_POST, "/api/v1/clients", h_create, CLIENT_BODY_MAX, 0 },
    { LOOM_HTTP_GET, "/api/v1/clients", h_list, 0, 0 },
    { LOOM_HTTP_GET, "/api/v1/clients/{id}", h_get, 0, 0 },
    { LOOM_HTTP_PATCH, "/api/v1/clients/{id}", h_patch, CLIENT_BODY_MAX, 0 },
    { LOOM_HTTP_DELETE, "/api/v1/clients/{id}", h_delete, 0, 0 },
    { LOOM_HTTP_POST, "/api/v1/clients/{id}/rotate-secret", h_rotate, 0, 0 },
};
