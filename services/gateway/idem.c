/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The edge's Idempotency-Key (draft-ietf-httpapi-idempotency-key-header) for POSTs: the first
 * request with a key claims it; its answer (status, headers, body) is kept for
 * --gateway.idempotency-ttl (24 h) and replayed, with Idempotent-Replayed: true, to a later
 * request with the same key and the same body (method, target and body are fingerprinted with
 * SHA-256). The same key with another body is a 422; the same key while the first request is
 * still in flight is a 409. Keys are per client (the token's client id, or the client's address
 * on public routes), so one client can neither see nor block another's. A 5xx answer, a
 * failure to reach the upstream, an answer over --gateway.idempotency-max-response, or one marked
 * Cache-Control: no-store (a token, a new client secret) releases the key instead (the request
 * may be tried again; secrets are not kept). Claims a crashed gateway never finished
 * expire after an hour.
 *
 * The records live in memory (one table under a mutex: idempotent POSTs are not the hot path;
 * bounded by --gateway.idempotency-max-keys, the oldest record going first) or, with
 * --gateway.ratelimit=redis://..., on Redis next to the rate limits (SET NX for the claim),
 * so that every replica sees every key. A record is one blob: "I" and the fingerprint for a
 * claim, or "D", the fingerprint, the status, the header lines and the body.
 */
#include "gateway/gateway.h"

#include <loom/digest.h>
#include <loom/log.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CLAIM_TTL_MS (3600 * 1000)
#define KEY_MAX      255

struct entry {
    struct entry *hnext;       /* hash chain */
    struct entry *prev, *next; /* age list, oldest first */
    uint64_t hash;
    char *key;
    char *rec; /* the record */
    size_t rec_len;
    int64_t expires_ms;
};

struct gw_idem {
    pthread_mutex_t mu;
    struct entry **buckets;
    size_t nbuckets;
    struct entry *oldest, *newest;
    size_t count, max;
};

loom_err gw_idem_init(struct gw_service *gw, struct loom_error *err)
{
    LOOM_UNUSED(err);
    struct gw_idem *m = loom_new(struct gw_idem);
    pthread_mutex_init(&m->mu, NULL);
    m->max = (size_t)gw->conf->idempotency_max_keys;
    m->nbuckets = 1024;
    while (m->nbuckets < m->max && m->nbuckets < ((size_t)1 << 22))
        m->nbuckets *= 2;
    m->buckets = loom_calloc(m->nbuckets, sizeof(*m->buckets));
    gw->idem = m;
    return LOOM_OK;
}

static void entry_free(struct entry *e)
{
    free(e->key);
    free(e->rec);
    free(e);
}

void gw_idem_release(struct gw_service *gw)
{
    struct gw_idem *m = gw->idem;
    if (!m)
        return;
    for (struct entry *e = m->oldest; e;) {
        struct entry *n = e->next;
        entry_free(e);
        e = n;
    }
    free(m->buckets);
    pthread_mutex_destroy(&m->mu);
    free(m);
    gw->idem = NULL;
}

static uint64_t fnv(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h;
}

static int64_t now_ms(void)
{
    return loom_wall_ns() / (int64_t)LOOM_NS_PER_MS;
}

/* Unlink from the chain and the age list (mu held). */
static void unlink_entry(struct gw_idem *m, struct entry *e)
{
    struct entry **pp = &m->buckets[e->hash & (m->nbuckets - 1)];
    while (*pp && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = e->hnext;
    if (e->prev)
        e->prev->next = e->next;
    else
        m->oldest = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        m->newest = e->prev;
    m->count--;
}

static struct entry *find(struct gw_idem *m, const char *key, size_t klen, uint64_t h)
{
    for (struct entry *e = m->buckets[h & (m->nbuckets - 1)]; e; e = e->hnext)
        if (e->hash == h && strlen(e->key) == klen && memcmp(e->key, key, klen) == 0)
            return e;
    return NULL;
}

/* ---- records ---- */

static void hex32(const uint8_t *fp, char out[65])
{
    loom_hex(fp, 32, out);
}

/* Parse a record: its kind ('I' or 'D'), fingerprint hex, and for 'D' the rest. */
struct record {
    char kind;
    struct loom_str fp;
    int status;
    struct loom_str headers; /* "Name: value\r\n"... */
    struct loom_str body;
};

static bool parse_record(struct loom_str r, struct record *out)
{
    if (r.len < 65 || (r.ptr[0] != 'I' && r.ptr[0] != 'D'))
        return false;
    out->kind = r.ptr[0];
    out->fp = loom_str_make(r.ptr + 1, 64);
    if (out->kind == 'I')
        return true;
    if (r.len < 65 + 4)
        return false;
    const char *p = r.ptr + 65;
    out->status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    if (p[3] != '\n' || out->status < 100 || out->status > 599)
        return false;
    struct loom_str rest = loom_str_make(p + 4, r.len - 69);
    const char *end = memmem(rest.ptr, rest.len, "\r\n\r\n", 4);
    size_t hl;
    if (rest.len >= 2 && rest.ptr[0] == '\r' && rest.ptr[1] == '\n') {
        hl = 0; /* no headers */
        out->headers = loom_str_make(rest.ptr, 0);
        out->body = loom_str_make(rest.ptr + 2, rest.len - 2);
        return true;
    }
    if (!end)
        return false;
    hl = (size_t)(end - rest.ptr) + 2;
    out->headers = loom_str_make(rest.ptr, hl);
    out->body = loom_str_make(rest.ptr + hl + 2, rest.len - hl - 2);
    return true;
}

static bool stored_field(struct loom_str name)
{
    static const struct loom_str skip[] = {
        LOOM_STR("content-length"),
        LOOM_STR("date"),
        LOOM_STR("server"),
        LOOM_STR("connection"),
        LOOM_STR("keep-alive"),
        LOOM_STR("transfer-encoding"),
        LOOM_STR("x-request-id"),
        LOOM_STR("ratelimit"),
        LOOM_STR("ratelimit-policy"),
        LOOM_STR("via"),
        LOOM_STR("idempotent-replayed"),
        LOOM_STR("te"),
        LOOM_STR("trailer"),
        LOOM_STR("upgrade"),
        LOOM_STR("proxy-connection"),
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(skip); i++)
        if (loom_str_ieq(name, skip[i]))
            return false;
    return true;
}

static void replay(struct gw_req *g, const struct record *r)
{
    struct loom_http_req *req = g->req;
    const char *ctype = NULL;
    struct loom_str h = r->headers;
    while (h.len) {
        const char *nl = memmem(h.ptr, h.len, "\r\n", 2);
        size_t ll = nl ? (size_t)(nl - h.ptr) : h.len;
        struct loom_str line = loom_str_make(h.ptr, ll), name;
        struct loom_str value = loom_str_trim(loom_str_cut(line, ':', &name));
        h = nl ? loom_str_make(nl + 2, h.len - ll - 2) : LOOM_STR_NULL;
        if (!name.len)
            continue;
        if (loom_str_ieq(name, LOOM_STR("content-type"))) {
            ctype = loom_arena_strndup(req->arena, value.ptr, value.len);
            continue;
        }
        char nm[128];
        size_t nl2 = LOOM_MIN(name.len, sizeof(nm) - 1);
        memcpy(nm, name.ptr, nl2);
        nm[nl2] = '\0';
        loom_http_resp_header(req, nm, value);
    }
    loom_http_resp_header(req, "Idempotent-Replayed", LOOM_STR("true"));
    loom_counter_inc(g->gw->m_idem_replays);
    gw_respond(g, r->status, ctype, r->body);
}

/* The verdict for an existing record. */
static enum gw_idem_verdict judge(struct gw_req *g, const struct record *r)
{
    char fp[65];
    hex32(g->idem_fp, fp);
    if (!loom_str_eq(r->fp, loom_str_make(fp, 64))) {
        gw_problem(g, 422,
                   "this Idempotency-Key was used with another request body; use a new key");
        return GW_IDEM_REFUSED;
    }
    if (r->kind == 'I') {
        loom_http_resp_header(g->req, "Retry-After", LOOM_STR("1"));
        gw_problem(g, 409, "a request with this Idempotency-Key is still in flight");
        return GW_IDEM_REFUSED;
    }
    replay(g, r);
    return GW_IDEM_REPLAYED;
}

/* The scoped key: the client (or its address) and the client's key. */
static size_t scoped_key(struct gw_req *g, char *out, size_t cap)
{
    int n;
    if (g->authed) {
        n = snprintf(out, cap, "c:%s\n%.*s", g->who.client_id, LOOM_STR_FMT(g->idem_key));
    } else {
        const char *peer = loom_http_req_peer(g->req);
        const char *colon = strrchr(peer, ':');
        n = snprintf(out, cap, "a:%.*s\n%.*s", colon ? (int)(colon - peer) : (int)strlen(peer),
                     peer, LOOM_STR_FMT(g->idem_key));
    }
    return n < 0 ? 0 : LOOM_MIN((size_t)n, cap - 1);
}

static void redis_key(const char *key, size_t klen, char out[96])
{
    uint8_t d[32];
    char hex[65];
    loom_sha256(key, klen, d);
    loom_hex(d, 32, hex);
    snprintf(out, 96, "loom:idem:%s", hex);
}

/* ---- Redis ---- */

struct redis_op {
    struct gw_req *g;
    gw_idem_done done;
    char key[96];
    char claim[66];
    bool second;
};

static void redis_claim(struct redis_op *op);

static void on_get(const struct loom_redis_reply *rep, loom_err err, void *arg)
{
    struct redis_op *op = arg;
    struct gw_req *g = op->g;
    if (err || loom_redis_reply_type(rep) == LOOM_REDIS_ERROR) {
        gw_problem(g, 503, "the idempotency store is unavailable");
        op->done(g, GW_IDEM_REFUSED);
        return;
    }
    if (loom_redis_reply_type(rep) == LOOM_REDIS_NIL) {
        if (!op->second) { /* expired in between: claim again */
            op->second = true;
            redis_claim(op);
            return;
        }
        op->done(g, GW_IDEM_PROCEED);
        return;
    }
    struct record r;
    if (!parse_record(loom_redis_reply_str(rep), &r)) {
        gw_problem(g, 500, "a damaged idempotency record");
        op->done(g, GW_IDEM_REFUSED);
        return;
    }
    op->done(g, judge(g, &r));
}

static void on_set_nx(const struct loom_redis_reply *rep, loom_err err, void *arg)
{
    struct redis_op *op = arg;
    struct gw_req *g = op->g;
    if (err || loom_redis_reply_type(rep) == LOOM_REDIS_ERROR) {
        gw_problem(g, 503, "the idempotency store is unavailable");
        op->done(g, GW_IDEM_REFUSED);
        return;
    }
    if (loom_redis_reply_type(rep) != LOOM_REDIS_NIL) {
        g->idem_claimed = true;
        op->done(g, GW_IDEM_PROCEED);
        return;
    }
    const char *argv[] = { "GET", op->key };
    size_t lens[] = { 3, strlen(op->key) };
    if (loom_redis_command(g->gl->redis, 2, argv, lens, on_get, op)) {
        gw_problem(g, 503, "the idempotency store is unavailable");
        op->done(g, GW_IDEM_REFUSED);
    }
}

static void redis_claim(struct redis_op *op)
{
    struct gw_req *g = op->g;
    char ttl[24];
    snprintf(ttl, sizeof(ttl), "%d", CLAIM_TTL_MS);
    const char *argv[] = { "SET", op->key, op->claim, "NX", "PX", ttl };
    size_t lens[] = { 3, strlen(op->key), 65, 2, 2, strlen(ttl) };
    if (loom_redis_command(g->gl->redis, 6, argv, lens, on_set_nx, op)) {
        gw_problem(g, 503, "the idempotency store is unavailable");
        op->done(g, GW_IDEM_REFUSED);
    }
}

static void on_redis_done(const struct loom_redis_reply *rep, loom_err err, void *arg)
{
    LOOM_UNUSED(rep);
    LOOM_UNUSED(err);
    free(arg);
}

/* ---- the API ---- */

static bool key_ok(struct loom_str k)
{
    if (k.len == 0 || k.len > KEY_MAX)
        return false;
    for (size_t i = 0; i < k.len; i++)
        if ((unsigned char)k.ptr[i] < 0x20 || (unsigned char)k.ptr[i] >= 0x7f)
            return false;
    return true;
}

void gw_idem_begin(struct gw_req *g, gw_idem_done done)
{
    struct loom_http_req *req = g->req;
    struct loom_str k = loom_http_req_header(req, "idempotency-key");
    /* RFC 8941 strings come quoted; accept the quoted and the bare form. */
    if (k.len >= 2 && k.ptr[0] == '"' && k.ptr[k.len - 1] == '"')
        k = loom_str_make(k.ptr + 1, k.len - 2);
    if (!key_ok(k)) {
        gw_problem(g, 400, "Idempotency-Key is 1 to %d visible ASCII characters", KEY_MAX);
        done(g, GW_IDEM_REFUSED);
        return;
    }
    g->idem_key = k;
    struct loom_sha256 h;
    loom_sha256_init(&h);
    loom_sha256_update(&h, req->method_name.ptr, req->method_name.len);
    loom_sha256_update(&h, " ", 1);
    loom_sha256_update(&h, req->target.ptr, req->target.len);
    loom_sha256_update(&h, "\n", 1);
    loom_sha256_update(&h, g->body ? g->body : "", g->body_len);
    loom_sha256_final(&h, g->idem_fp);

    char key[KEY_MAX + 96];
    size_t klen = scoped_key(g, key, sizeof(key));
    if (g->gl->redis) {
        struct redis_op *op = loom_arena_new(req->arena, struct redis_op);
        op->g = g;
        op->done = done;
        redis_key(key, klen, op->key);
        op->claim[0] = 'I';
        hex32(g->idem_fp, op->claim + 1);
        redis_claim(op);
        return;
    }
    struct gw_idem *m = g->gw->idem;
    uint64_t hh = fnv(key, klen);
    int64_t now = now_ms();
    pthread_mutex_lock(&m->mu);
    struct entry *e = find(m, key, klen, hh);
    if (e && e->expires_ms <= now) {
        unlink_entry(m, e);
        entry_free(e);
        e = NULL;
    }
    if (e) {
        size_t len = e->rec_len;
        char *copy = loom_arena_memdup(req->arena, e->rec, len);
        pthread_mutex_unlock(&m->mu);
        struct record r;
        if (!parse_record(loom_str_make(copy, len), &r)) {
            gw_problem(g, 500, "a damaged idempotency record");
            done(g, GW_IDEM_REFUSED);
            return;
        }
        done(g, judge(g, &r));
        return;
    }
    while (m->count >= m->max && m->oldest) {
        struct entry *old = m->oldest;
        unlink_entry(m, old);
        entry_free(old);
    }
    e = loom_new(struct entry);
    e->hash = hh;
    e->key = loom_strndup(key, klen);
    e->rec = loom_malloc(65);
    e->rec[0] = 'I';
    char fp[65];
    hex32(g->idem_fp, fp);
    memcpy(e->rec + 1, fp, 64);
    e->rec_len = 65;
    e->expires_ms = now + CLAIM_TTL_MS;
    size_t b = hh & (m->nbuckets - 1);
    e->hnext = m->buckets[b];
    m->buckets[b] = e;
    e->prev = m->newest;
    if (m->newest)
        m->newest->next = e;
    else
        m->oldest = e;
    m->newest = e;
    m->count++;
    pthread_mutex_unlock(&m->mu);
    g->idem_claimed = true;
    done(g, GW_IDEM_PROCEED);
}

void gw_idem_finish(struct gw_req *g, int status, const struct loom_http_header *headers,
                    size_t nheaders, struct loom_str body)
{
    if (!g->idem_claimed)
        return;
    g->idem_claimed = false;
    const struct gw_conf *conf = g->gw->conf;
    bool keep = status >= 200 && status < 500 && status != 408 && status != 429 &&
                body.len <= conf->idempotency_max_response;
    /* An answer the service marks no-store (a token, a client's new secret) is never kept: the
     * key is released instead, and the secret is not held for a day in memory or on Redis. */
    for (size_t i = 0; keep && i < nheaders; i++)
        if (loom_str_ieq(headers[i].name, LOOM_STR("cache-control")) &&
            memmem(headers[i].value.ptr, headers[i].value.len, "no-store", 8))
            keep = false;
    char key[KEY_MAX + 96];
    size_t klen = scoped_key(g, key, sizeof(key));
    struct loom_buf rec;
    loom_buf_init(&rec, 0);
    if (keep) {
        char fp[65];
        hex32(g->idem_fp, fp);
        loom_buf_putc(&rec, 'D');
        loom_buf_append(&rec, fp, 64);
        loom_buf_printf(&rec, "%03d\n", status);
        for (size_t i = 0; i < nheaders; i++) {
            if (!stored_field(headers[i].name))
                continue;
            loom_buf_append_str(&rec, headers[i].name);
            loom_buf_append(&rec, ": ", 2);
            loom_buf_append_str(&rec, headers[i].value);
            loom_buf_append(&rec, "\r\n", 2);
        }
        loom_buf_append(&rec, "\r\n", 2);
        loom_buf_append_str(&rec, body);
    }
    if (g->gl->redis) {
        char *rk = loom_malloc(96);
        redis_key(key, klen, rk);
        loom_err e;
        if (keep) {
            char ttl[24];
            snprintf(ttl, sizeof(ttl), "%llu",
                     (unsigned long long)(conf->idempotency_ttl / LOOM_NS_PER_MS));
            const char *argv[] = { "SET", rk, rec.data, "PX", ttl };
            size_t lens[] = { 3, strlen(rk), rec.len, 2, strlen(ttl) };
            e = loom_redis_command(g->gl->redis, 5, argv, lens, on_redis_done, rk);
        } else {
            const char *argv[] = { "DEL", rk };
            size_t lens[] = { 3, strlen(rk) };
            e = loom_redis_command(g->gl->redis, 2, argv, lens, on_redis_done, rk);
        }
        /* Written now, before the answer leaves (not when the loop next polls): a client that
         * replays through another gateway at once finds the record, not the claim (409). */
        if (e)
            free(rk);
        else
            loom_redis_flush(g->gl->redis);
        loom_buf_release(&rec);
        return;
    }
    struct gw_idem *m = g->gw->idem;
    uint64_t hh = fnv(key, klen);
    pthread_mutex_lock(&m->mu);
    struct entry *e = find(m, key, klen, hh);
    if (e) {
        if (keep) {
            free(e->rec);
            e->rec = loom_buf_detach(&rec, &e->rec_len);
            e->expires_ms = now_ms() + (int64_t)(conf->idempotency_ttl / LOOM_NS_PER_MS);
        } else {
            unlink_entry(m, e);
            entry_free(e);
        }
    }
    pthread_mutex_unlock(&m->mu);
    loom_buf_release(&rec);
}
