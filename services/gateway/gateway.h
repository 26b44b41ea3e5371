/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The API gateway: the platform's only public listener. Every request goes through one edge
 * pipeline (gw_h_edge in proxy.c): CORS, load shedding, a request id, authentication of the
 * bearer JWT against identity's JWKS with a cache of verified tokens (auth.c), rate limits per
 * client and route (GCRA in memory or on Redis, limits.c), the route's scope (deny by default:
 * the routing table, routes.c, names a scope or "public" for every route), then the
 * body is read up to the route's limit, an Idempotency-Key is honoured (idem.c), and the
 * request is either served by the gateway itself (traffic splits and feature flags in
 * traffic.c, the OpenAPI document in openapi.c) or forwarded to an upstream service through
 * lib/http_client.c (proxy.c): one upstream set per loop thread, keep-alive pools, deadlines
 * propagated in Loom-Deadline-Ms, retries of idempotent requests within a budget, circuit
 * breaking and P2C balancing across replicas. Shared state (keys, limits, the routing snapshot
 * of splits and flags) is built off the loop threads and swapped whole; each loop holds its own
 * reference, so the hot path takes no lock but the rate limiter's shard.
 */
#ifndef LOOM_SVC_GATEWAY_H
#define LOOM_SVC_GATEWAY_H

#include <loom/conf.h>
#include <loom/http.h>
#include <loom/http_client.h>
#include <loom/json.h>
#include <loom/jwt.h>
#include <loom/metrics.h>
#include <loom/ratelimit.h>
#include <loom/service.h>
#include <loom/store.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

extern const struct loom_service gateway_service;

/* ---- settings (gateway.c) ---- */

struct gw_conf {
    struct loom_conf_list inference, registry, trainer, ingest, identity; /* upstream addresses */
    const char *issuer;
    const char *audience;
    uint64_t leeway;
    uint64_t jwks_refresh;                    /* periodic JWKS refresh */
    uint64_t jwks_min_refresh;                /* at most one refresh for unknown kids per this */
    int64_t token_cache_size;                 /* verified tokens kept per loop thread */
    const char *ratelimit;                    /* "memory" or redis://HOST:PORT */
    const char *rate_limit;                   /* default per-client rate "100/s[:burst]" */
    struct loom_conf_list route_rate_limits;  /* CLASS=RATE */
    struct loom_conf_list client_rate_limits; /* CLIENT_ID=RATE */
    const char *anonymous_rate_limit;         /* per client address, on public routes */
    int64_t max_in_flight;
    uint64_t timeout;        /* API requests */
    uint64_t infer_timeout;  /* /v2 */
    uint64_t upload_timeout; /* artifact and dataset uploads */
    uint64_t max_deadline;   /* the most a client's Loom-Deadline-Ms may ask for */
    uint64_t max_api_body;
    uint64_t max_infer_body;
    uint64_t max_upload_body;
    int64_t max_tensor_elements;
    int64_t retries;            /* attempts after the first, idempotent requests */
    int64_t inference_pipeline; /* requests in flight per inference connection */
    int64_t breaker_threshold;  /* consecutive failures that eject a replica */
    uint64_t ejection_time;
    uint64_t max_ejection_time;
    struct loom_conf_list cors_origins;
    const char *store;
    uint64_t poll_interval; /* splits and flags from the store */
    uint64_t idempotency_ttl;
    int64_t idempotency_max_keys;
    uint64_t idempotency_max_response;
    bool access_log;
};

/* ---- scopes and the routing table (routes.c) ---- */

enum gw_scope_bit {
    GW_SCOPE_MODELS_READ = 1u << 0,
    GW_SCOPE_MODELS_WRITE = 1u << 1,
    GW_SCOPE_INFER = 1u << 2,
    GW_SCOPE_TRAIN = 1u << 3,
    GW_SCOPE_INGEST = 1u << 4,
    GW_SCOPE_ADMIN = 1u << 5,
};
#define GW_NSCOPES 6
extern const char *const gw_scope_names[GW_NSCOPES];
/* The bits of the known names in a space-separated scope string (unknown names ignored). */
unsigned gw_scopes_parse(struct loom_str scope);
/* The name of one scope bit. */
const char *gw_scope_name(unsigned bit);

enum gw_upstream {
    GW_UP_INFERENCE,
    GW_UP_REGISTRY,
    GW_UP_TRAINER,
    GW_UP_INGEST,
    GW_UP_IDENTITY,
    GW_UP__COUNT,
    GW_UP_LOCAL = -1, /* served by the gateway itself */
};
extern const char *const gw_upstream_names[GW_UP__COUNT];

enum gw_access {
    GW_PUBLIC,    /* no token needed (a token that is sent is not checked) */
    GW_SCOPE,     /* a valid token with the rule's scope */
    GW_ANY_TOKEN, /* any valid token (the caller's own flag evaluations) */
};

enum gw_kind {
    GW_KIND_API,    /* platform API: --gateway.timeout, --gateway.max-api-body */
    GW_KIND_INFER,  /* POST .../infer: idempotent, tensor cap, traffic splits */
    GW_KIND_V2,     /* other /v2 calls */
    GW_KIND_UPLOAD, /* artifact and dataset uploads */
    GW_KIND_LOCAL,  /* answered by the gateway */
};

struct gw_req;
typedef void (*gw_local_fn)(struct gw_req *g);

/* What the gateway does with one route of its table. */
struct gw_rule {
    int upstream; /* enum gw_upstream or GW_UP_LOCAL */
    enum gw_access access;
    unsigned scope; /* GW_SCOPE_* for GW_SCOPE */
    enum gw_kind kind;
    const char *limit_class; /* name for --gateway.route-rate-limits */
    gw_local_fn local;       /* GW_UP_LOCAL */
};

/* The server's route table (every route runs gw_h_edge) and, index for index, the rules. */
extern const struct loom_route gw_routes[];
extern const struct gw_rule gw_rules[];
extern const size_t gw_nroutes;
#define GW_NROUTES 61 /* checked at compile time in routes.c */

/* The rule of a matched route (found by the route's template pointer; the runtime copies the
 * table, the strings stay ours). NULL for the runtime's built-in routes. */
const struct gw_rule *gw_rule_of(const struct loom_route *route);

/* The first routes of the table are the catch-alls ("/{path...}"): OPTIONS, then the others. */
#define GW_NCATCHALL 6
/* The answer of the catch-alls: 404, or 405 with Allow (the path exists for other methods).
 * A small body is read and dropped first, so the connection is kept. */
void gw_h_no_route(struct gw_req *g);

/* The names of the route classes used in --gateway.route-rate-limits. */
extern const char *const gw_limit_classes[];

/* ---- the edge pipeline and the proxy (proxy.c) ---- */

/* The handler of every route. */
void gw_h_edge(struct loom_http_req *req);

/* ---- auth (auth.c): the JWKS cache and the verified-token cache ---- */

struct gw_service;
struct gw_loop;

struct gw_auth {
    pthread_mutex_t mu;
    struct loom_jwks *jwks; /* under mu; NULL until the first fetch */
    atomic_uint_fast64_t gen;
    atomic_uint_fast64_t last_fetch_ns; /* when the last fetch started (monotonic) */
    atomic_uint_fast64_t max_age_ns;    /* the last JWKS's Cache-Control max-age; 0: none */
    atomic_bool fetching;
    atomic_bool loaded;
};

/* A verified identity. */
struct gw_principal {
    char client_id[65];
    unsigned scopes;
    int64_t exp;
    bool has_quota;
    struct loom_rate quota; /* the client's own rate limit, from the token's loom_quota */
};

/* The private claim in which identity puts the client's quota: {"rps": N, "burst": B}. */
#define GW_QUOTA_CLAIM "loom_quota"

enum gw_auth_result {
    GW_AUTH_OK,
    GW_AUTH_MISSING,  /* no credentials */
    GW_AUTH_INVALID,  /* refused: *why says why */
    GW_AUTH_WAIT,     /* the JWKS is being fetched: call again when gw_auth_gen changes */
    GW_AUTH_NOT_READY /* no JWKS yet */
};

void gw_auth_init(struct gw_service *gw);
void gw_auth_release(struct gw_service *gw);
/* Start the first fetch and the periodic refresh (on loop 0, from its thread). */
void gw_auth_start(struct gw_loop *gl);
/* Verify the request's Authorization header. On GW_AUTH_INVALID *why is a short reason for
 * error_description (never quoting the token). May start a JWKS refresh (unknown kid). */
enum gw_auth_result gw_authenticate(struct gw_loop *gl, struct loom_http_req *req,
                                    struct gw_principal *out, const char **why, bool may_wait);
uint64_t gw_auth_gen(struct gw_service *gw);
bool gw_auth_fetching(struct gw_service *gw);

/* Per-loop cache of verified tokens. */
struct gw_token_cache;
struct gw_token_cache *gw_token_cache_new(size_t n);
void gw_token_cache_free(struct gw_token_cache *c);

/* ---- limits (limits.c): rate limits and their headers ---- */

struct gw_limits;
/* Parse the settings. LOOM_EINVAL with a message naming the bad one. */
loom_err gw_limits_init(struct gw_service *gw, struct loom_error *err);
void gw_limits_release(struct gw_service *gw);

typedef void (*gw_limit_done)(struct gw_req *g, bool allowed);
/* Check the request's limits; done(g, allowed) runs now or later (Redis). Sets g's headers. */
void gw_limits_check(struct gw_req *g, gw_limit_done done);
/* Add RateLimit-Policy and RateLimit to the response (and Retry-After when refused). */
void gw_limits_headers(struct gw_req *g);

/* ---- idempotency (idem.c) ---- */

struct gw_idem;
loom_err gw_idem_init(struct gw_service *gw, struct loom_error *err);
void gw_idem_release(struct gw_service *gw);

enum gw_idem_verdict {
    GW_IDEM_PROCEED,  /* first use: forward, then gw_idem_finish */
    GW_IDEM_REPLAYED, /* answered with the stored response */
    GW_IDEM_REFUSED,  /* answered with 409 or 422 (or 400 for a bad key) */
};
typedef void (*gw_idem_done)(struct gw_req *g, enum gw_idem_verdict v);
/* For a POST with Idempotency-Key: claim the key, or replay, or refuse; done runs now or
 * later (Redis). */
void gw_idem_begin(struct gw_req *g, gw_idem_done done);
/* The forwarded request's answer: kept for replays (2xx-4xx), or the claim is dropped. */
void gw_idem_finish(struct gw_req *g, int status, const struct loom_http_header *headers,
                    size_t nheaders, struct loom_str body);

/* ---- traffic splits and flags (traffic.c) ---- */

struct gw_split {
    int64_t version;
    int64_t weight;
};

struct gw_traffic_entry {
    char *model;
    struct gw_split *splits;
    size_t nsplits;
    int64_t total;
    int64_t updated_ms;
};

struct gw_flag {
    char *name;
    char *description;
    bool enabled;
    int64_t percentage;   /* 0..100 */
    char **allow, **deny; /* client ids */
    size_t nallow, ndeny;
    int64_t updated_ms;
};

/* An immutable routing snapshot: splits and flags, sorted by name. Reference-counted. */
struct gw_snapshot {
    atomic_int refs;
    uint64_t rev;
    struct gw_traffic_entry *traffic;
    size_t ntraffic;
    struct gw_flag *flags;
    size_t nflags;
};

struct gw_snapshot *gw_snapshot_ref(struct gw_snapshot *s);
void gw_snapshot_unref(struct gw_snapshot *s);
/* The loop's current snapshot (refreshed when the shared one changed). Loop thread only. */
const struct gw_snapshot *gw_snapshot_current(struct gw_loop *gl);
const struct gw_traffic_entry *gw_traffic_find(const struct gw_snapshot *s, struct loom_str model);

loom_err gw_traffic_init(struct gw_service *gw, struct loom_error *err);
void gw_traffic_start(struct gw_loop *gl);
void gw_traffic_release(struct gw_service *gw);

/* Local handlers. */
void gw_h_traffic_list(struct gw_req *g);
void gw_h_traffic_get(struct gw_req *g);
void gw_h_traffic_put(struct gw_req *g);
void gw_h_traffic_delete(struct gw_req *g);
void gw_h_flags_list(struct gw_req *g);
void gw_h_flags_create(struct gw_req *g);
void gw_h_flag_get(struct gw_req *g);
void gw_h_flag_put(struct gw_req *g);
void gw_h_flag_delete(struct gw_req *g);
void gw_h_flag_evaluate(struct gw_req *g);

/* ---- the OpenAPI document (openapi.c) ---- */

/* Convert the embedded api/openapi.yaml to JSON once. LOOM_EPARSE with a message. */
loom_err gw_openapi_init(struct gw_service *gw, struct loom_error *err);
void gw_h_openapi(struct gw_req *g);

/* ---- per-request state ---- */

struct gw_req {
    struct loom_http_req *req;
    struct gw_loop *gl;
    struct gw_service *gw;
    const struct gw_rule *rule;
    uint64_t start_ns;
    uint64_t deadline; /* loop time */
    char request_id[72];
    size_t request_id_len;
    struct gw_principal who;
    bool authed;
    /* CORS */
    struct loom_str origin; /* an allowed Origin, or empty */
    /* rate limits */
    bool rl_done;
    struct loom_ratelimit_result rl;
    struct loom_rate rl_rate;
    const char *rl_policy;
    /* the body */
    char *body;
    size_t body_len, body_cap, body_max;
    struct loom_buf body_buf; /* chunked bodies: grown here */
    bool body_in_buf;
    int fail_status; /* a refusal answered once the (small) body is read */
    char fail_detail[256];
    const char *fail_www; /* WWW-Authenticate of that refusal */
    /* the upstream call */
    struct loom_http_call_ref call;
    bool in_call;
    char upstream_addr[64];
    unsigned attempts;
    struct loom_str target; /* rewritten infer target, else empty */
    int64_t routed_version;
    /* JWKS wait */
    struct loom_timer wait_timer;
    uint64_t wait_gen, wait_until;
    /* idempotency */
    struct loom_str idem_key;
    uint8_t idem_fp[32];
    bool idem_claimed;
    /* the outcome */
    int status;
    bool responded;
    bool counted;
};

/* Answer: adds the edge's headers (request id, CORS, rate limits), records the access log line
 * and metrics, releases the in-flight slot. Body copied. */
void gw_respond(struct gw_req *g, int status, const char *ctype, struct loom_str body);
/* The same with a body the server takes over. */
void gw_respond_buf(struct gw_req *g, int status, const char *ctype, struct loom_buf *body);
/* An RFC 9457 problem with the request id. */
void gw_problem(struct gw_req *g, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* JSON written by the caller into `b` (a writer over it), answered with `status`. */
void gw_json(struct gw_req *g, int status, struct loom_buf *b);

/* ---- the service ---- */

struct gw_loop {
    struct gw_service *gw;
    size_t index;
    struct loom_loop *loop;
    struct loom_http_upstream *up[GW_UP__COUNT];
    struct gw_token_cache *tokens;
    struct loom_redis *redis; /* NULL without --gateway.ratelimit=redis://... */
    struct gw_snapshot *snap;
    uint64_t snap_rev;
    /* the JWKS this loop verifies with */
    struct loom_jwks *jwks;
    uint64_t jwks_gen;
    struct loom_timer jwks_timer; /* loop 0: periodic refresh and first fetch */
    struct loom_timer poll_timer; /* loop 0: splits and flags from the store */
    struct loom_timer start_timer;
    struct loom_work poll_work;
    bool polling;
};

struct gw_service {
    const struct gw_conf *conf;
    struct loom_svc *svc;
    struct loom_pool *pool;
    struct gw_loop *loops;
    size_t nloops;
    struct gw_auth auth;
    struct gw_limits *limits;
    struct gw_idem *idem;
    struct loom_store *store;
    pthread_mutex_t snap_mu;
    struct gw_snapshot *snap; /* under snap_mu */
    atomic_uint_fast64_t snap_rev;
    struct loom_router *known;       /* the table without its catch-alls: for 405 and Allow */
    struct loom_route *known_routes; /* its routes (the router borrows them) */
    char *openapi_json;
    size_t openapi_len;
    atomic_long in_flight;
    /* metrics */
    struct loom_counter_family *f_auth_fail;
    struct loom_counter *m_shed, *m_limited, *m_token_hits, *m_token_misses, *m_idem_replays;
    struct loom_counter *m_jwks_ok, *m_jwks_fail, *m_redis_fallback;
};

#endif
