/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Rate limits at the edge, on lib/ratelimit.c. Every authenticated request counts against its
 * client's limit (--gateway.rate-limit, or the client's own line in
 * --gateway.client-rate-limits) and, when its route class has one in
 * --gateway.route-rate-limits, against that too (a bucket per client and class); public
 * routes count against the client's address (--gateway.anonymous-rate-limit). A client's rate
 * is identity's per-client quota, which identity writes into every access token it issues (the
 * private claim loom_quota, read once per token by auth.c), so the edge needs no call to
 * identity; a line of --gateway.client-rate-limits overrides it, and --gateway.rate-limit is
 * for tokens without the claim.
 *
 * The TATs live in memory, or on Redis (--gateway.ratelimit=redis://...) so that replicas
 * share them; a Redis that is down or slow (250 ms) makes the gateway fall back to its own
 * memory limiter for that request (fail open to local limits, counted in
 * loom_gateway_ratelimit_fallbacks_total) rather than refuse traffic.
 *
 * Answers carry the IETF headers (draft-ietf-httpapi-ratelimit-headers): RateLimit-Policy
 * names the binding policy with its quota q (the burst) and window w (seconds to refill it),
 * RateLimit its remaining r and t, the seconds until it is whole again; a 429 adds
 * Retry-After.
 */
#include "gateway/gateway.h"

#include <loom/log.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CLASSES 32

struct client_rate {
    char *id;
    struct loom_rate rate;
};

struct gw_limits {
    struct loom_ratelimiter *mem;
    struct loom_rate def, anon;
    bool anon_on;
    const char *classes[MAX_CLASSES];
    struct loom_rate class_rate[MAX_CLASSES];
    size_t nclasses;
    struct client_rate *clients;
    size_t nclients;
};

static bool known_class(struct loom_str name, const char **canon)
{
    for (size_t i = 0; gw_limit_classes[i]; i++) {
        if (loom_str_eq_cstr(name, gw_limit_classes[i])) {
            *canon = gw_limit_classes[i];
            return true;
        }
    }
    return false;
}

static int cmp_client(const void *a, const void *b)
{
    return strcmp(((const struct client_rate *)a)->id, ((const struct client_rate *)b)->id);
}

loom_err gw_limits_init(struct gw_service *gw, struct loom_error *err)
{
    const struct gw_conf *c = gw->conf;
    struct gw_limits *l = loom_new(struct gw_limits);
    gw->limits = l;
    if (loom_rate_parse(loom_str_cstr(c->rate_limit), &l->def))
        return loom_error_set(err, LOOM_EINVAL,
                              "--gateway.rate-limit: \"%s\" is not a rate (N/s, N/m or N/h, "
                              "optionally :BURST)",
                              c->rate_limit);
    if (c->anonymous_rate_limit[0]) {
        if (loom_rate_parse(loom_str_cstr(c->anonymous_rate_limit), &l->anon))
            return loom_error_set(err, LOOM_EINVAL,
                                  "--gateway.anonymous-rate-limit: \"%s\" is not a rate",
                                  c->anonymous_rate_limit);
        l->anon_on = true;
    }
    for (size_t i = 0; i < c->route_rate_limits.n; i++) {
        struct loom_str item = loom_str_cstr(c->route_rate_limits.items[i]), name;
        struct loom_str rate = loom_str_cut(item, '=', &name);
        const char *canon;
        if (!rate.ptr || !known_class(loom_str_trim(name), &canon))
            return loom_error_set(err, LOOM_EINVAL,
                                  "--gateway.route-rate-limits: \"%s\" is not CLASS=RATE with a "
                                  "known class (infer, v2, models, artifacts, ...)",
                                  c->route_rate_limits.items[i]);
        if (l->nclasses == MAX_CLASSES ||
            loom_rate_parse(loom_str_trim(rate), &l->class_rate[l->nclasses]))
            return loom_error_set(err, LOOM_EINVAL,
                                  "--gateway.route-rate-limits: bad rate in \"%s\"",
                                  c->route_rate_limits.items[i]);
        l->classes[l->nclasses++] = canon;
    }
    l->clients = loom_calloc(c->client_rate_limits.n + 1, sizeof(*l->clients));
    for (size_t i = 0; i < c->client_rate_limits.n; i++) {
        struct loom_str item = loom_str_cstr(c->client_rate_limits.items[i]), id;
        struct loom_str rate = loom_str_cut(item, '=', &id);
        id = loom_str_trim(id);
        if (!rate.ptr || id.len == 0 || id.len > 64 ||
            loom_rate_parse(loom_str_trim(rate), &l->clients[l->nclients].rate))
            return loom_error_set(err, LOOM_EINVAL,
                                  "--gateway.client-rate-limits: \"%s\" is not CLIENT_ID=RATE",
                                  c->client_rate_limits.items[i]);
        l->clients[l->nclients++].id = loom_str_dup(id);
    }
    qsort(l->clients, l->nclients, sizeof(*l->clients), cmp_client);
    l->mem = loom_ratelimiter_new(0);
    return LOOM_OK;
}

void gw_limits_release(struct gw_service *gw)
{
    struct gw_limits *l = gw->limits;
    if (!l)
        return;
    for (size_t i = 0; i < l->nclients; i++)
        free(l->clients[i].id);
    free(l->clients);
    loom_ratelimiter_free(l->mem);
    free(l);
    gw->limits = NULL;
}

/* The client's rate: its line in --gateway.client-rate-limits (the operator's override at this
 * gateway), else the quota its token carries (identity's per-client quota), else the default. */
static struct loom_rate client_rate(const struct gw_limits *l, const struct gw_principal *who)
{
    const char *id = who->client_id;
    size_t lo = 0, hi = l->nclients;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(id, l->clients[mid].id);
        if (c == 0)
            return l->clients[mid].rate;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return who->has_quota ? who->quota : l->def;
}

/* The limits of a request, with their keys written into `keys`. */
struct plan {
    struct loom_ratelimit_limit lim[2];
    const char *policy[2];
    size_t n;
    char keys[2][LOOM_RATELIMIT_KEY_MAX];
};

static void make_plan(struct gw_req *g, struct plan *p)
{
    const struct gw_limits *l = g->gw->limits;
    p->n = 0;
    if (g->authed) {
        int k = snprintf(p->keys[0], sizeof(p->keys[0]), "c:%s", g->who.client_id);
        p->lim[0] = (struct loom_ratelimit_limit){ loom_str_make(p->keys[0], (size_t)k),
                                                   client_rate(l, &g->who) };
        p->policy[0] = "client";
        p->n = 1;
        for (size_t i = 0; i < l->nclasses; i++) {
            if (l->classes[i] == g->rule->limit_class ||
                strcmp(l->classes[i], g->rule->limit_class) == 0) {
                k = snprintf(p->keys[1], sizeof(p->keys[1]), "r:%s:%s", l->classes[i],
                             g->who.client_id);
                p->lim[1] = (struct loom_ratelimit_limit){ loom_str_make(p->keys[1], (size_t)k),
                                                           l->class_rate[i] };
                p->policy[1] = l->classes[i];
                p->n = 2;
                break;
            }
        }
        return;
    }
    if (!l->anon_on)
        return;
    const char *peer = loom_http_req_peer(g->req);
    const char *colon = strrchr(peer, ':');
    int plen = colon ? (int)(colon - peer) : (int)strlen(peer);
    int k = snprintf(p->keys[0], sizeof(p->keys[0]), "a:%.*s", plen, peer);
    p->lim[0] = (struct loom_ratelimit_limit){ loom_str_make(p->keys[0], (size_t)k), l->anon };
    p->policy[0] = "address";
    p->n = 1;
}

struct redis_wait {
    struct gw_req *g;
    gw_limit_done done;
    struct plan plan;
};

static void apply(struct gw_req *g, const struct plan *p, const struct loom_ratelimit_result *r)
{
    g->rl = *r;
    size_t i = r->index < p->n ? r->index : 0;
    g->rl_rate = p->lim[i].rate;
    g->rl_policy = p->policy[i];
    g->rl_done = true;
}

static void check_memory(struct gw_req *g, const struct plan *p, gw_limit_done done)
{
    struct loom_ratelimit_result r;
    if (loom_ratelimiter_check(g->gw->limits->mem, p->lim, p->n, loom_now_ns(), &r)) {
        done(g, true);
        return;
    }
    apply(g, p, &r);
    done(g, r.allowed);
}

static void on_redis(const struct loom_ratelimit_result *res, loom_err err, void *arg)
{
    struct redis_wait *w = arg;
    struct gw_req *g = w->g;
    if (err) {
        loom_counter_inc(g->gw->m_redis_fallback);
        check_memory(g, &w->plan, w->done);
        return;
    }
    apply(g, &w->plan, res);
    w->done(g, res->allowed);
}

void gw_limits_check(struct gw_req *g, gw_limit_done done)
{
    struct redis_wait *w = loom_arena_new(g->req->arena, struct redis_wait);
    make_plan(g, &w->plan);
    if (w->plan.n == 0) {
        done(g, true);
        return;
    }
    struct loom_redis *redis = g->gl->redis;
    if (redis) {
        w->g = g;
        w->done = done;
        /* The keys point into w->plan, which lives as long as the request. */
        if (loom_ratelimit_redis_check(redis, w->plan.lim, w->plan.n, on_redis, w) == LOOM_OK)
            return;
        loom_counter_inc(g->gw->m_redis_fallback);
    }
    check_memory(g, &w->plan, done);
}

static uint64_t ceil_sec(uint64_t ns)
{
    return (ns + LOOM_NS_PER_SEC - 1) / LOOM_NS_PER_SEC;
}

/* A small text builder for header values (no printf on the hot path). */
struct hv {
    char b[160];
    size_t n;
};

static void hv_s(struct hv *h, const char *s)
{
    size_t l = strlen(s);
    if (l > sizeof(h->b) - h->n - 1)
        l = sizeof(h->b) - h->n - 1;
    memcpy(h->b + h->n, s, l);
    h->n += l;
}

static void hv_u(struct hv *h, uint64_t v)
{
    if (sizeof(h->b) - h->n > 21)
        h->n += loom_u64_to_dec(v, h->b + h->n);
}

void gw_limits_headers(struct gw_req *g)
{
    struct loom_http_req *req = g->req;
    double window = ceil(g->rl_rate.burst / g->rl_rate.per_sec);
    if (window < 1)
        window = 1;
    struct hv h = { .n = 0 };
    hv_s(&h, "\"");
    hv_s(&h, g->rl_policy);
    hv_s(&h, "\";q=");
    hv_u(&h, (uint64_t)g->rl_rate.burst);
    hv_s(&h, ";w=");
    hv_u(&h, (uint64_t)window);
    loom_http_resp_header(req, "RateLimit-Policy", loom_str_make(h.b, h.n));
    h.n = 0;
    hv_s(&h, "\"");
    hv_s(&h, g->rl_policy);
    hv_s(&h, "\";r=");
    hv_u(&h, (uint64_t)(g->rl.remaining > 0 ? g->rl.remaining : 0));
    hv_s(&h, ";t=");
    hv_u(&h, ceil_sec(g->rl.reset));
    loom_http_resp_header(req, "RateLimit", loom_str_make(h.b, h.n));
    if (!g->rl.allowed) {
        uint64_t sec = ceil_sec(g->rl.retry_after);
        h.n = 0;
        hv_u(&h, sec ? sec : 1);
        loom_http_resp_header(req, "Retry-After", loom_str_make(h.b, h.n));
    }
}
