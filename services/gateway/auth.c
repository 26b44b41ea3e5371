/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Authentication at the edge: bearer JWTs (RFC 6750) verified with lib/jwt.c against identity's
 * JWK Set, with keys pinned to their algorithm (so "none", HS256 with a public key, or any
 * algorithm other than the key's are refused before any cryptography), iss and aud checked,
 * exp and nbf within --gateway.leeway, and tokens over 8 KiB refused.
 *
 * The JWKS is fetched from identity (GET /.well-known/jwks.json through the loop's identity
 * upstream) once the loops run, then again every --gateway.jwks-refresh or the answer's
 * Cache-Control max-age if that is shorter (at least a second): identity publishes its next
 * key ahead of its first use, for at least that max-age, so the set is already here when
 * the first token signed with it arrives. A token naming a kid the set does not have waits for
 * a fetch that is running, or starts one at most once per --gateway.jwks-min-refresh whatever
 * the number of such tokens (forged kids cannot make the gateway hammer identity); otherwise it
 * is refused at once. The set is immutable and shared by reference; each loop keeps its
 * own reference and a generation number, so verification takes no lock.
 *
 * Verified tokens are cached per loop thread (no lock) in a bounded two-way table keyed by a
 * seeded hash of the token; a hit compares the whole token, so a hash collision can only cost
 * a verification, never admit a token. An entry lives until the token's exp, so the hot path
 * does one hash and one memcmp instead of an ECDSA verification. Refused tokens are not
 * cached. The token itself is never logged.
 */
#include "gateway/gateway.h"

#include <loom/log.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the verified-token cache ---- */

struct tc_entry {
    uint64_t hash;
    int64_t exp;
    char *token;
    size_t len;
    struct gw_principal who;
};

struct gw_token_cache {
    struct tc_entry *e;
    size_t mask;
    uint64_t seed;
};

struct gw_token_cache *gw_token_cache_new(size_t n)
{
    size_t cap = 2;
    while (cap < n && cap < ((size_t)1 << 24))
        cap *= 2;
    struct gw_token_cache *c = loom_new(struct gw_token_cache);
    c->e = loom_calloc(cap, sizeof(*c->e));
    c->mask = cap - 1;
    c->seed = loom_trace_random_u64() | 1;
    return c;
}

void gw_token_cache_free(struct gw_token_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i <= c->mask; i++)
        free(c->e[i].token);
    free(c->e);
    free(c);
}

static uint64_t token_hash(uint64_t seed, struct loom_str t)
{
    uint64_t h = seed ^ (t.len * 0x9e3779b97f4a7c15ull);
    size_t i = 0;
    for (; i + 8 <= t.len; i += 8) {
        uint64_t w;
        memcpy(&w, t.ptr + i, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
    }
    uint64_t w = 0;
    memcpy(&w, t.ptr + i, t.len - i);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    return h | 1;
}

static const struct gw_principal *tc_get(struct gw_token_cache *c, uint64_t h, struct loom_str t,
                                         int64_t now)
{
    size_t i = (size_t)h & c->mask & ~(size_t)1;
    for (size_t k = 0; k < 2; k++) {
        struct tc_entry *e = &c->e[i + k];
        if (e->hash == h && e->len == t.len && e->exp > now && memcmp(e->token, t.ptr, t.len) == 0)
            return &e->who;
    }
    return NULL;
}

static void tc_put(struct gw_token_cache *c, uint64_t h, struct loom_str t,
                   const struct gw_principal *who, int64_t now)
{
    size_t i = (size_t)h & c->mask & ~(size_t)1;
    struct tc_entry *a = &c->e[i], *b = &c->e[i + 1];
    struct tc_entry *e = a->exp <= now ? a : b->exp <= now ? b : (a->exp < b->exp ? a : b);
    if (e->len < t.len || !e->token) {
        free(e->token);
        e->token = loom_malloc(t.len ? t.len : 1);
    }
    memcpy(e->token, t.ptr, t.len);
    e->len = t.len;
    e->hash = h;
    e->exp = who->exp;
    e->who = *who;
}

/* ---- the JWKS ---- */

void gw_auth_init(struct gw_service *gw)
{
    pthread_mutex_init(&gw->auth.mu, NULL);
    gw->auth.jwks = NULL;
    atomic_store(&gw->auth.gen, 0);
    atomic_store(&gw->auth.last_fetch_ns, 0);
    atomic_store(&gw->auth.max_age_ns, 0);
    atomic_store(&gw->auth.fetching, false);
    atomic_store(&gw->auth.loaded, false);
}

void gw_auth_release(struct gw_service *gw)
{
    loom_jwks_unref(gw->auth.jwks);
    gw->auth.jwks = NULL;
    pthread_mutex_destroy(&gw->auth.mu);
}

uint64_t gw_auth_gen(struct gw_service *gw)
{
    return atomic_load_explicit(&gw->auth.gen, memory_order_acquire);
}

bool gw_auth_fetching(struct gw_service *gw)
{
    return atomic_load(&gw->auth.fetching);
}

/* The max-age of a Cache-Control value in ns, 0 if it has none. */
static uint64_t max_age_of(const struct loom_http_response *resp)
{
    bool found;
    struct loom_str cc =
        loom_http_header_get(resp->headers, resp->nheaders, "cache-control", &found);
    while (found && cc.ptr) {
        struct loom_str item;
        cc = loom_str_cut(cc, ',', &item);
        struct loom_str name, value = loom_str_cut(loom_str_trim(item), '=', &name);
        uint64_t s;
        if (loom_str_ieq(loom_str_trim(name), LOOM_STR("max-age")) && value.ptr &&
            !loom_str_to_u64(loom_str_trim(value), &s))
            return s < 86400 ? s * LOOM_NS_PER_SEC : 86400 * LOOM_NS_PER_SEC;
    }
    return 0;
}

/* How long until the next periodic fetch: --gateway.jwks-refresh, or the set's max-age if
 * shorter, at least a second. */
static uint64_t refresh_period(struct gw_service *gw)
{
    uint64_t every = gw->conf->jwks_refresh, max_age = atomic_load(&gw->auth.max_age_ns);
    if (max_age && max_age < every)
        every = LOOM_MAX(max_age, LOOM_NS_PER_SEC);
    return every;
}

static void on_jwks(struct loom_http_response *resp, void *arg)
{
    struct gw_loop *gl = arg;
    struct gw_service *gw = gl->gw;
    struct loom_error err = { 0 };
    struct loom_jwks *set = NULL;
    loom_err e;
    if (resp->err) {
        e = loom_error_set(&err, resp->err, "%s", resp->error);
    } else if (resp->status != 200) {
        e = loom_error_set(&err, LOOM_EIO, "identity answered %d", resp->status);
    } else {
        e = loom_jwks_parse(resp->body.ptr, resp->body.len, &set, &err);
    }
    if (e) {
        loom_counter_inc(gw->m_jwks_fail);
        LOOM_LOG_KV(LOOM_LOG_WARN, "jwks fetch failed", LOOM_KV_CSTR("error", err.msg));
    } else {
        loom_counter_inc(gw->m_jwks_ok);
        atomic_store(&gw->auth.max_age_ns, max_age_of(resp));
        pthread_mutex_lock(&gw->auth.mu);
        struct loom_jwks *old = gw->auth.jwks;
        gw->auth.jwks = set;
        atomic_fetch_add_explicit(&gw->auth.gen, 1, memory_order_release);
        pthread_mutex_unlock(&gw->auth.mu);
        loom_jwks_unref(old);
        if (!atomic_exchange(&gw->auth.loaded, true))
            LOOM_LOG_KV(LOOM_LOG_INFO, "jwks loaded", LOOM_KV_UINT("keys", loom_jwks_count(set)));
        else
            LOOM_LOG_KV(LOOM_LOG_DEBUG, "jwks refreshed",
                        LOOM_KV_UINT("keys", loom_jwks_count(set)));
    }
    atomic_store(&gw->auth.fetching, false);
}

/* Start a fetch on gl's loop unless one is running; true if one is running now (whose result
 * a caller may wait for). `force` skips the rate limit (the periodic refresh and the first
 * fetch). */
static bool jwks_fetch(struct gw_loop *gl, bool force)
{
    struct gw_service *gw = gl->gw;
    uint64_t now = loom_now_ns();
    uint64_t last = atomic_load(&gw->auth.last_fetch_ns);
    if (atomic_load(&gw->auth.fetching))
        return true;
    if (!force && last && now - last < gw->conf->jwks_min_refresh)
        return false;
    bool no = false;
    if (!atomic_compare_exchange_strong(&gw->auth.fetching, &no, true))
        return true; /* one is running: its result will do */
    atomic_store(&gw->auth.last_fetch_ns, now);
    static const struct loom_http_header accept[] = {
        { LOOM_STR("Accept"), LOOM_STR("application/json") },
    };
    struct loom_http_request r = {
        .method = LOOM_HTTP_GET,
        .target = LOOM_STR("/.well-known/jwks.json"),
        .headers = accept,
        .nheaders = 1,
        .timeout = 5 * LOOM_NS_PER_SEC,
        .max_body = 1 << 20,
    };
    struct loom_error err = { 0 };
    if (loom_http_upstream_request(gl->up[GW_UP_IDENTITY], &r, on_jwks, gl, NULL, &err)) {
        atomic_store(&gw->auth.fetching, false);
        LOOM_LOG_KV(LOOM_LOG_WARN, "jwks fetch failed", LOOM_KV_CSTR("error", err.msg));
        return false;
    }
    LOOM_LOG_KV(LOOM_LOG_DEBUG, "jwks fetch", LOOM_KV_BOOL("periodic", force));
    return true;
}

static void on_jwks_timer(struct loom_timer *t)
{
    struct gw_loop *gl = LOOM_CONTAINER_OF(t, struct gw_loop, jwks_timer);
    struct gw_service *gw = gl->gw;
    /* Until the first set is in, try every second; then every refresh_period (a fetch that is
     * still running when the second check comes counts as this period's). */
    if (!atomic_load(&gw->auth.loaded)) {
        jwks_fetch(gl, true);
        loom_timer_start(t, LOOM_NS_PER_SEC, 0);
        return;
    }
    uint64_t every = refresh_period(gw);
    uint64_t now = loom_now_ns(), last = atomic_load(&gw->auth.last_fetch_ns);
    if (now - last >= every)
        jwks_fetch(gl, true);
    last = atomic_load(&gw->auth.last_fetch_ns);
    uint64_t next = last + every;
    loom_timer_start(t, next > now ? next - now : every, 0);
}

void gw_auth_start(struct gw_loop *gl)
{
    loom_timer_init(&gl->jwks_timer, gl->loop, on_jwks_timer);
    loom_timer_start(&gl->jwks_timer, 0, 0);
}

/* The loop's reference to the current set. */
static struct loom_jwks *loop_jwks(struct gw_loop *gl)
{
    struct gw_service *gw = gl->gw;
    uint64_t gen = gw_auth_gen(gw);
    if (gen != gl->jwks_gen) {
        pthread_mutex_lock(&gw->auth.mu);
        struct loom_jwks *cur = gw->auth.jwks ? loom_jwks_ref(gw->auth.jwks) : NULL;
        gen = atomic_load(&gw->auth.gen);
        pthread_mutex_unlock(&gw->auth.mu);
        loom_jwks_unref(gl->jwks);
        gl->jwks = cur;
        gl->jwks_gen = gen;
    }
    return gl->jwks;
}

/* ---- verification ---- */

static const char *describe(loom_err e)
{
    switch (e) {
    case LOOM_ETOOBIG:
        return "the token is too large";
    case LOOM_EPARSE:
        return "the token is malformed";
    case LOOM_EINVAL:
        return "the token is not an access token of this platform";
    case LOOM_EUNSUPPORTED:
        return "the token's algorithm is not its key's";
    case LOOM_ENOTFOUND:
        return "the token names an unknown key";
    case LOOM_EUNAUTH:
        return "the signature does not verify";
    case LOOM_ETIMEDOUT:
        return "the token has expired";
    case LOOM_EAGAIN:
        return "the token is not valid yet";
    case LOOM_ECONFLICT:
        return "the token has the wrong issuer";
    case LOOM_EFORBIDDEN:
        return "the token has the wrong audience";
    default:
        return "the token cannot be verified";
    }
}

static void count_failure(struct gw_service *gw, const char *reason)
{
    const char *labels[] = { reason };
    loom_counter_inc(loom_counter_get(gw->f_auth_fail, labels));
}

/* The client's quota from the token's private claim: {"rps": N > 0, "burst": B >= 1}. A token
 * without it, or with one out of those bounds, gets the gateway's default limit. The signature
 * verified, so the claim is identity's word. */
static bool quota_claim(struct loom_arena *arena, struct loom_str payload, struct loom_rate *out)
{
    struct loom_json_doc d;
    struct loom_json_limits lim = { .max_depth = 16 };
    if (loom_json_parse(payload.ptr, payload.len, &lim, arena, &d, NULL))
        return false;
    int q = loom_json_obj_get(&d, 0, GW_QUOTA_CLAIM);
    int rps = q >= 0 ? loom_json_obj_get(&d, q, "rps") : -1;
    int burst = q >= 0 ? loom_json_obj_get(&d, q, "burst") : -1;
    double r, b;
    if (rps < 0 || burst < 0 || loom_json_to_double(&d, rps, &r) ||
        loom_json_to_double(&d, burst, &b) || !(r > 0 && r <= 1e9) || !(b >= 1 && b <= 1e9))
        return false;
    *out = (struct loom_rate){ .per_sec = r, .burst = b };
    return true;
}

enum gw_auth_result gw_authenticate(struct gw_loop *gl, struct loom_http_req *req,
                                    struct gw_principal *out, const char **why, bool may_wait)
{
    struct gw_service *gw = gl->gw;
    bool found;
    struct loom_str h = loom_http_header_get(req->headers, req->nheaders, "authorization", &found);
    if (!found) {
        count_failure(gw, "missing");
        return GW_AUTH_MISSING;
    }
    /* Another scheme, or the scheme alone, is a request without bearer credentials: RFC 6750
     * section 3.1 gives it a challenge without an error code (GW_AUTH_MISSING). */
    struct loom_str scheme, tok = loom_str_cut(loom_str_trim(h), ' ', &scheme);
    if (!loom_str_ieq(scheme, LOOM_STR("bearer"))) {
        count_failure(gw, "not_bearer");
        *why = "the Authorization scheme must be Bearer";
        return GW_AUTH_MISSING;
    }
    tok = loom_str_trim(tok);
    if (tok.len == 0) {
        count_failure(gw, "missing");
        *why = "the bearer token is empty";
        return GW_AUTH_MISSING;
    }
    if (tok.len > LOOM_JWT_MAX_LEN) {
        count_failure(gw, "too_large");
        *why = "the token is too large";
        return GW_AUTH_INVALID;
    }
    int64_t now = loom_wall_ns() / (int64_t)LOOM_NS_PER_SEC;
    uint64_t hash = token_hash(gl->tokens->seed, tok);
    const struct gw_principal *hit = tc_get(gl->tokens, hash, tok, now);
    if (hit) {
        loom_counter_inc(gw->m_token_hits);
        *out = *hit;
        return GW_AUTH_OK;
    }
    loom_counter_inc(gw->m_token_misses);
    struct loom_jwks *keys = loop_jwks(gl);
    if (!keys) {
        if (may_wait && gw_auth_fetching(gw))
            return GW_AUTH_WAIT;
        return GW_AUTH_NOT_READY;
    }
    struct loom_jwt_expect expect = {
        .issuer = gw->conf->issuer,
        .audience = gw->conf->audience,
        .leeway = (int64_t)(gw->conf->leeway / LOOM_NS_PER_SEC),
        .max_len = LOOM_JWT_MAX_LEN,
    };
    struct loom_jwt_claims claims;
    struct loom_error err = { 0 };
    loom_err e = loom_jwt_verify(keys, tok, &expect, req->arena, &claims, &err);
    if (e == LOOM_ENOTFOUND && may_wait && jwks_fetch(gl, false))
        return GW_AUTH_WAIT; /* identity may have rotated: verify again with the new set */
    if (e) {
        count_failure(gw, loom_jwt_reason(e));
        *why = describe(e);
        LOOM_LOG_KV(LOOM_LOG_DEBUG, "token refused", LOOM_KV_CSTR("reason", loom_jwt_reason(e)),
                    LOOM_KV_CSTR("detail", err.msg));
        return GW_AUTH_INVALID;
    }
    if (claims.client_id.len >= sizeof(out->client_id)) {
        count_failure(gw, "invalid");
        *why = "the token's client_id is too long";
        return GW_AUTH_INVALID;
    }
    memcpy(out->client_id, claims.client_id.ptr, claims.client_id.len);
    out->client_id[claims.client_id.len] = '\0';
    out->scopes = gw_scopes_parse(claims.scope);
    out->exp = claims.exp;
    out->has_quota = quota_claim(req->arena, claims.payload, &out->quota);
    tc_put(gl->tokens, hash, tok, out, now);
    return GW_AUTH_OK;
}
