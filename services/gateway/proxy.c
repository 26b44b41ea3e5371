/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The edge pipeline every request goes through, and the reverse proxy at its end.
 *
 * Every route is a streaming route, so the handler runs as soon as the head is in: CORS
 * preflights are answered, overload is shed, the token is checked and the rate limit applied
 * before a byte of the body is read, so an anonymous client cannot make the gateway buffer an
 * upload. A refusal of a request with a small body reads (and drops) the body first so that
 * the connection can be kept; a large one is answered at once and the connection closed. The
 * body is then read once into the request's arena (its Content-Length is known) or a growing
 * buffer (chunked), and handed to lib/http_client.c as the borrowed body of the upstream call:
 * a body is held once, never copied again (http_client cannot stream a request body, so an
 * upload is held whole: --gateway.max-upload-body bounds it). The upstream's answer is copied
 * into the client's response buffer, or handed over without a copy when large.
 *
 * Forwarding follows RFC 9110 section 7.6: hop-by-hop fields (Connection and the fields it
 * names, Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade) are dropped
 * both ways; Via, X-Forwarded-For/-Host/-Proto and X-Request-Id are added; traceparent becomes
 * the gateway's own span (a child of the caller's); Loom-Deadline-Ms carries the time left; the
 * caller's identity goes upstream as Loom-Client-Id (a client cannot set it: the gateway
 * drops the one it sends). Upstream failures become problems: 502 when no replica could be
 * reached or the answer was broken, 503 when every replica is ejected, 504 at the deadline.
 */
#include "gateway/gateway.h"

#include <loom/log.h>
#include <loom/trace.h>

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SMALL_BODY  (64 * 1024) /* refusals read a body up to this size to keep the connection */
#define LINGER_BODY (16u << 20) /* a body over its limit is read and dropped up to this size */
#define EXPOSE_HDRS                                                                           \
    "X-Request-Id, RateLimit, RateLimit-Policy, Retry-After, Idempotent-Replayed, Location, " \
    "Loom-Model-Version, WWW-Authenticate"
#define ALLOW_HDRS                                                                          \
    "Authorization, Content-Type, Idempotency-Key, X-Request-Id, traceparent, tracestate, " \
    "Loom-Deadline-Ms, Loom-Model-Version, Inference-Header-Content-Length"

static void dispatch(struct gw_req *g);
static void after_limits(struct gw_req *g, bool allowed);
static void read_body(struct gw_req *g, uint64_t clen);

/* ---- answers ---- */

static void access_log(struct gw_req *g)
{
    if (!g->gw->conf->access_log || !loom_log_level_enabled(LOOM_LOG_INFO))
        return;
    struct loom_http_req *req = g->req;
    double ms = (double)(loom_now_ns() - g->start_ns) / 1e6;
    loom_trace_set_current(&req->trace);
    LOOM_LOG_KV(LOOM_LOG_INFO, "access",
                LOOM_KV_STR("request_id", loom_str_make(g->request_id, g->request_id_len)),
                LOOM_KV_CSTR("client_id", g->authed ? g->who.client_id : ""),
                LOOM_KV_STR("method", req->method_name),
                LOOM_KV_CSTR("route", req->route ? req->route->path : ""),
                LOOM_KV_INT("status", g->status), LOOM_KV_DBL("duration_ms", ms),
                LOOM_KV_CSTR("upstream", g->upstream_addr), LOOM_KV_UINT("attempts", g->attempts));
    loom_trace_set_current(NULL);
}

static void edge_headers(struct gw_req *g)
{
    struct loom_http_req *req = g->req;
    loom_http_resp_header(req, "X-Request-Id", loom_str_make(g->request_id, g->request_id_len));
    if (g->origin.len) {
        loom_http_resp_header(req, "Access-Control-Allow-Origin", g->origin);
        loom_http_resp_header(req, "Vary", LOOM_STR("Origin"));
        loom_http_resp_header(req, "Access-Control-Expose-Headers", LOOM_STR(EXPOSE_HDRS));
    }
    if (g->rl_done)
        gw_limits_headers(g);
    if (g->routed_version > 0)
        loom_http_resp_headerf(req, "Loom-Model-Version", "%" PRId64, g->routed_version);
}

static void finish(struct gw_req *g, int status)
{
    g->status = status;
    g->responded = true;
    if (g->counted) {
        atomic_fetch_sub_explicit(&g->gw->in_flight, 1, memory_order_relaxed);
        g->counted = false;
    }
    access_log(g);
}

/* A local answer to a POST that claimed an Idempotency-Key is kept for replays too. */
static void idem_local(struct gw_req *g, int status, const char *ctype, struct loom_str body)
{
    if (!g->idem_claimed)
        return;
    struct loom_http_header h = { LOOM_STR("Content-Type"), loom_str_cstr(ctype) };
    gw_idem_finish(g, status, &h, ctype ? 1 : 0, body);
}

void gw_respond(struct gw_req *g, int status, const char *ctype, struct loom_str body)
{
    if (g->responded)
        return;
    idem_local(g, status, ctype, body);
    if (loom_timer_is_active(&g->wait_timer))
        loom_timer_stop(&g->wait_timer);
    edge_headers(g);
    loom_http_respond(g->req, status, ctype, body);
    finish(g, status);
}

void gw_respond_buf(struct gw_req *g, int status, const char *ctype, struct loom_buf *body)
{
    if (g->responded) {
        loom_buf_release(body);
        return;
    }
    idem_local(g, status, ctype, loom_buf_str(body));
    if (loom_timer_is_active(&g->wait_timer))
        loom_timer_stop(&g->wait_timer);
    edge_headers(g);
    loom_http_respond_buf(g->req, status, ctype, body);
    finish(g, status);
}

void gw_json(struct gw_req *g, int status, struct loom_buf *b)
{
    gw_respond_buf(g, status, "application/json", b);
    loom_buf_release(b);
}

static void problem_v(struct gw_req *g, int status, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
static void problem_v(struct gw_req *g, int status, const char *fmt, va_list ap)
{
    char detail[512];
    vsnprintf(detail, sizeof(detail), fmt, ap);
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
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
    loom_json_write_str(&w, g->req->path);
    loom_json_write_object_end(&w);
    gw_respond_buf(g, status, "application/problem+json", &b);
    loom_buf_release(&b);
}

void gw_problem(struct gw_req *g, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    problem_v(g, status, fmt, ap);
    va_end(ap);
}

/* ---- refusals before the body ---- */

static bool has_body(const struct loom_http_req *req, uint64_t *clen)
{
    struct loom_str cl = loom_http_req_header(req, "content-length");
    *clen = UINT64_MAX;
    if (cl.len && loom_str_to_u64(cl, clen) == LOOM_OK)
        return *clen > 0;
    return loom_http_req_has_header(req, "transfer-encoding");
}

static loom_err drop_data(struct loom_http_req *req, struct loom_str chunk, void *arg)
{
    LOOM_UNUSED(req);
    LOOM_UNUSED(chunk);
    LOOM_UNUSED(arg);
    return LOOM_OK;
}

static void answer_refusal(struct gw_req *g)
{
    if (g->fail_www)
        loom_http_resp_header(g->req, "WWW-Authenticate", loom_str_cstr(g->fail_www));
    gw_problem(g, g->fail_status, "%s", g->fail_detail);
}

static void drop_end(struct loom_http_req *req, loom_err status, void *arg)
{
    LOOM_UNUSED(req);
    LOOM_UNUSED(status);
    answer_refusal(arg);
}

/* Refuse the request. `www` (copied into the arena by the caller, or static) is the
 * WWW-Authenticate value, or NULL. */
static void refuse(struct gw_req *g, int status, const char *www, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void refuse(struct gw_req *g, int status, const char *www, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->fail_detail, sizeof(g->fail_detail), fmt, ap);
    va_end(ap);
    g->fail_status = status;
    g->fail_www = www;
    uint64_t clen;
    if (has_body(g->req, &clen) && clen <= SMALL_BODY) {
        /* Read the small body and drop it: the connection stays usable. */
        loom_http_req_read_body(g->req, drop_data, drop_end, g);
        return;
    }
    answer_refusal(g);
}

/* ---- request ids, CORS ---- */

static bool id_ok(struct loom_str s)
{
    if (s.len == 0 || s.len > 64)
        return false;
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\\')
            return false;
    }
    return true;
}

static void set_request_id(struct gw_req *g)
{
    struct loom_str id = loom_http_req_header(g->req, "x-request-id");
    if (id_ok(id)) {
        memcpy(g->request_id, id.ptr, id.len);
        g->request_id_len = id.len;
        return;
    }
    static const char hex[] = "0123456789abcdef";
    uint64_t a = loom_trace_random_u64(), b = loom_trace_random_u64();
    for (int i = 0; i < 16; i++) {
        g->request_id[i] = hex[(a >> (60 - 4 * i)) & 15];
        g->request_id[16 + i] = hex[(b >> (60 - 4 * i)) & 15];
    }
    g->request_id_len = 32;
}

static bool origin_allowed(const struct gw_conf *conf, struct loom_str origin)
{
    for (size_t i = 0; i < conf->cors_origins.n; i++) {
        const char *o = conf->cors_origins.items[i];
        if (strcmp(o, "*") == 0 || loom_str_eq_cstr(origin, o))
            return true;
    }
    return false;
}

/* The methods the path has in the routing table, OPTIONS included, as an Allow value into
 * `out`; false when the table does not have the path. */
static bool allow_list(struct gw_req *g, char *out, size_t cap)
{
    struct loom_route_match m;
    /* No route of the table is an OPTIONS one: the match fails and gathers every method. */
    loom_router_match(g->gw->known, LOOM_HTTP_OPTIONS, g->req->path, &m);
    if (!m.allowed)
        return false;
    loom_http_allow_list(m.allowed | (1u << LOOM_HTTP_OPTIONS), out, cap);
    return true;
}

/* OPTIONS: a CORS preflight is answered here; any other OPTIONS lists the path's methods. */
static void options(struct gw_req *g)
{
    struct loom_http_req *req = g->req;
    struct loom_str origin = loom_http_req_header(req, "origin");
    struct loom_str method = loom_http_req_header(req, "access-control-request-method");
    char allow[128];
    if (!allow_list(g, allow, sizeof(allow))) {
        refuse(g, 404, NULL, "no route for %.*s", (int)LOOM_MIN(req->path.len, 200), req->path.ptr);
        return;
    }
    if (!origin.len || !method.len) {
        loom_http_resp_header(req, "Allow", loom_str_cstr(allow));
        gw_respond(g, 204, NULL, LOOM_STR_NULL);
        return;
    }
    if (!g->origin.len) {
        gw_problem(g, 403, "origin %.*s is not allowed (--gateway.cors-origins)",
                   (int)LOOM_MIN(origin.len, 200), origin.ptr);
        return;
    }
    loom_http_resp_header(req, "Access-Control-Allow-Methods", loom_str_cstr(allow));
    loom_http_resp_header(req, "Access-Control-Allow-Headers", LOOM_STR(ALLOW_HDRS));
    loom_http_resp_header(req, "Access-Control-Max-Age", LOOM_STR("600"));
    gw_respond(g, 204, NULL, LOOM_STR_NULL);
}

void gw_h_no_route(struct gw_req *g)
{
    struct loom_http_req *req = g->req;
    char allow[128];
    if (allow_list(g, allow, sizeof(allow))) {
        loom_http_resp_header(req, "Allow", loom_str_cstr(allow));
        refuse(g, 405, NULL, "method %.*s is not allowed here (allowed: %s)",
               LOOM_STR_FMT(req->method_name), allow);
        return;
    }
    refuse(g, 404, NULL, "no route for %.*s", (int)LOOM_MIN(req->path.len, 200), req->path.ptr);
}

/* ---- authentication ---- */

static void authenticate(struct gw_req *g, bool may_wait);

static void on_wait_timer(struct loom_timer *t)
{
    struct gw_req *g = LOOM_CONTAINER_OF(t, struct gw_req, wait_timer);
    uint64_t now = loom_loop_now(g->req->loop);
    if (gw_auth_gen(g->gw) != g->wait_gen || !gw_auth_fetching(g->gw) || now >= g->wait_until) {
        authenticate(g, false);
        return;
    }
    loom_timer_start(t, 5 * LOOM_NS_PER_MS, 0);
}

static void on_wait_abort(void *arg)
{
    struct gw_req *g = arg;
    if (!g->responded && loom_timer_is_active(&g->wait_timer)) {
        loom_timer_stop(&g->wait_timer);
        gw_respond(g, 499, NULL, LOOM_STR_NULL);
    }
}

static const char *www_value(struct gw_req *g, const char *error, const char *desc)
{
    size_t n = strlen(desc) + 96;
    char *v = loom_arena_alloc(g->req->arena, n);
    snprintf(v, n, "Bearer realm=\"loom\", error=\"%s\", error_description=\"%s\"", error, desc);
    return v;
}

/* After the limits of an authenticated request: refused (429), or the scope (403), or on. */
static void after_auth_limits(struct gw_req *g, bool allowed)
{
    if (g->responded)
        return;
    const struct gw_rule *rule = g->rule;
    if (allowed && rule->access == GW_SCOPE && !(g->who.scopes & rule->scope)) {
        const char *scope = gw_scope_name(rule->scope);
        size_t n = strlen(scope) + 128;
        char *v = loom_arena_alloc(g->req->arena, n);
        snprintf(v, n,
                 "Bearer realm=\"loom\", error=\"insufficient_scope\", scope=\"%s\", "
                 "error_description=\"this route needs the %s scope\"",
                 scope, scope);
        refuse(g, 403, v, "this route needs the %s scope", scope);
        return;
    }
    after_limits(g, allowed);
}

/* After the address's limit of a request whose credentials were refused: a client guessing
 * tokens is slowed down like any anonymous one (429), else it gets its 401. */
static void after_refusal_limits(struct gw_req *g, bool allowed)
{
    if (g->responded)
        return;
    if (!allowed) {
        after_limits(g, false);
        return;
    }
    char detail[sizeof(g->fail_detail)];
    memcpy(detail, g->fail_detail, sizeof(detail));
    refuse(g, g->fail_status, g->fail_www, "%s", detail);
}

static void refuse_after_limits(struct gw_req *g, const char *www, const char *detail)
{
    g->fail_status = 401;
    g->fail_www = www;
    snprintf(g->fail_detail, sizeof(g->fail_detail), "%s", detail);
    gw_limits_check(g, after_refusal_limits);
}

static void authenticate(struct gw_req *g, bool may_wait)
{
    const char *why = "";
    enum gw_auth_result r = gw_authenticate(g->gl, g->req, &g->who, &why, may_wait);
    switch (r) {
    case GW_AUTH_OK:
        break;
    case GW_AUTH_MISSING: {
        char detail[200];
        snprintf(detail, sizeof(detail),
                 "a bearer token is required (Authorization: Bearer ...)%s%s", why[0] ? ": " : "",
                 why);
        refuse_after_limits(g, "Bearer realm=\"loom\"", detail);
        return;
    }
    case GW_AUTH_INVALID: {
        char detail[200];
        snprintf(detail, sizeof(detail), "invalid token: %s", why);
        refuse_after_limits(g, www_value(g, "invalid_token", why), detail);
        return;
    }
    case GW_AUTH_NOT_READY:
        loom_http_resp_header(g->req, "Retry-After", LOOM_STR("1"));
        refuse(g, 503, NULL, "the gateway has not loaded identity's signing keys yet");
        return;
    case GW_AUTH_WAIT:
        /* An unknown kid started a JWKS refresh: wait for it (briefly), then verify again. */
        g->wait_gen = gw_auth_gen(g->gw);
        g->wait_until = loom_loop_now(g->req->loop) + 2 * LOOM_NS_PER_SEC;
        loom_timer_init(&g->wait_timer, g->req->loop, on_wait_timer);
        loom_timer_start(&g->wait_timer, 5 * LOOM_NS_PER_MS, 0);
        loom_http_req_on_abort(g->req, on_wait_abort, g);
        return;
    }
    g->authed = true;
    gw_limits_check(g, after_auth_limits);
}

/* ---- the pipeline ---- */

static uint64_t kind_timeout(const struct gw_conf *c, enum gw_kind k)
{
    switch (k) {
    case GW_KIND_INFER:
    case GW_KIND_V2:
        return c->infer_timeout;
    case GW_KIND_UPLOAD:
        return c->upload_timeout;
    default:
        return c->timeout;
    }
}

static size_t kind_body_max(const struct gw_conf *c, enum gw_kind k)
{
    switch (k) {
    case GW_KIND_INFER:
    case GW_KIND_V2:
        return (size_t)c->max_infer_body;
    case GW_KIND_UPLOAD:
        return (size_t)c->max_upload_body;
    default:
        return (size_t)c->max_api_body;
    }
}

void gw_h_edge(struct loom_http_req *req)
{
    struct gw_service *gw = req->ctx;
    struct gw_req *g = loom_arena_new(req->arena, struct gw_req);
    g->req = req;
    g->gw = gw;
    g->gl = loom_loop_data(req->loop);
    g->rule = gw_rule_of(req->route);
    g->start_ns = req->start_ns ? req->start_ns : loom_now_ns();
    g->wait_timer.heap_index = SIZE_MAX;
    set_request_id(g);
    struct loom_str origin = loom_http_req_header(req, "origin");
    if (origin.len && gw->conf->cors_origins.n && origin_allowed(gw->conf, origin))
        g->origin = origin;
    if (!g->rule) {
        gw_problem(g, 404, "no route");
        return;
    }
    if (req->method == LOOM_HTTP_OPTIONS) {
        options(g);
        return;
    }
    if (g->rule->local == gw_h_no_route) {
        gw_h_no_route(g);
        return;
    }
    long n = atomic_fetch_add_explicit(&gw->in_flight, 1, memory_order_relaxed) + 1;
    g->counted = true;
    if (n > gw->conf->max_in_flight) {
        loom_counter_inc(gw->m_shed);
        loom_http_resp_header(req, "Retry-After", LOOM_STR("1"));
        refuse(g, 503, NULL, "the gateway is at its limit of %" PRId64 " requests in flight",
               gw->conf->max_in_flight);
        return;
    }
    /* The deadline: the route's timeout, shortened by the caller's Loom-Deadline-Ms. */
    uint64_t budget = kind_timeout(gw->conf, g->rule->kind);
    struct loom_str dl = loom_http_req_header(req, "loom-deadline-ms");
    if (dl.len) {
        uint64_t ms;
        if (loom_str_to_u64(dl, &ms)) {
            refuse(g, 400, NULL, "Loom-Deadline-Ms is a whole number of milliseconds");
            return;
        }
        if (ms == 0) {
            refuse(g, 504, NULL, "the caller's deadline (Loom-Deadline-Ms: 0) has passed");
            return;
        }
        uint64_t want = ms > UINT64_MAX / LOOM_NS_PER_MS ? UINT64_MAX : ms * LOOM_NS_PER_MS;
        budget = LOOM_MIN(budget, LOOM_MIN(want, gw->conf->max_deadline));
    }
    uint64_t elapsed = loom_now_ns() - g->start_ns;
    g->deadline = loom_loop_now(req->loop) + (budget > elapsed ? budget - elapsed : 1);
    if (g->rule->access == GW_PUBLIC)
        gw_limits_check(g, after_limits);
    else
        authenticate(g, true);
}

static void after_limits(struct gw_req *g, bool allowed)
{
    if (g->responded)
        return;
    if (!allowed) {
        loom_counter_inc(g->gw->m_limited);
        refuse(g, 429, NULL, "rate limit exceeded; retry after the time in Retry-After");
        return;
    }
    struct loom_http_req *req = g->req;
    uint64_t clen;
    if (!has_body(req, &clen)) {
        dispatch(g);
        return;
    }
    g->body_max = kind_body_max(g->gw->conf, g->rule->kind);
    if (clen != UINT64_MAX && clen > g->body_max) {
        /* A body not much over the limit is read and dropped first, so that the client (still
         * sending) reads the 413 rather than a reset; a huge one is answered at once. */
        snprintf(g->fail_detail, sizeof(g->fail_detail),
                 "the body of %" PRIu64 " bytes is over this route's limit of %zu", clen,
                 g->body_max);
        g->fail_status = 413;
        g->fail_www = NULL;
        if (clen <= LINGER_BODY)
            loom_http_req_read_body(req, drop_data, drop_end, g);
        else
            answer_refusal(g);
        return;
    }
    read_body(g, clen);
}

/* ---- the body ---- */

static loom_err body_data(struct loom_http_req *req, struct loom_str chunk, void *arg)
{
    LOOM_UNUSED(req);
    struct gw_req *g = arg;
    if (chunk.len > g->body_max - g->body_len)
        return LOOM_ETOOBIG;
    if (g->body_in_buf) {
        if (loom_buf_append_str(&g->body_buf, chunk))
            return LOOM_ETOOBIG;
        g->body_len += chunk.len;
        return LOOM_OK;
    }
    if (g->body_len + chunk.len > g->body_cap)
        return LOOM_EPARSE; /* more than Content-Length: the parser would have refused it */
    memcpy(g->body + g->body_len, chunk.ptr, chunk.len);
    g->body_len += chunk.len;
    return LOOM_OK;
}

static void release_body(void *arg)
{
    loom_buf_release(arg);
}

static void body_end(struct loom_http_req *req, loom_err status, void *arg)
{
    LOOM_UNUSED(req);
    struct gw_req *g = arg;
    switch (status) {
    case LOOM_OK:
        if (g->body_in_buf)
            g->body = g->body_buf.data;
        dispatch(g);
        return;
    case LOOM_ETOOBIG:
        gw_problem(g, 413, "the body is over this route's limit of %zu bytes", g->body_max);
        return;
    case LOOM_ECLOSED:
        gw_respond(g, 499, NULL, LOOM_STR_NULL);
        return;
    default:
        gw_problem(g, 400, "malformed request body");
        return;
    }
}

static void read_body(struct gw_req *g, uint64_t clen)
{
    if (clen != UINT64_MAX) {
        g->body = loom_arena_alloc(g->req->arena, clen ? (size_t)clen : 1);
        g->body_cap = (size_t)clen;
    } else {
        g->body_in_buf = true;
        loom_buf_init(&g->body_buf, g->body_max);
        loom_arena_add_cleanup(g->req->arena, release_body, &g->body_buf);
    }
    loom_http_req_read_body(g->req, body_data, body_end, g);
}

/* ---- inference specifics: the tensor cap and traffic splits ---- */

/* The largest element count of any "shape" array in the JSON text: a fast scan, not a parse
 * (the inference service validates the request fully; this only keeps huge tensors off it). */
static uint64_t max_shape_elements(struct loom_str json)
{
    static const char key[] = "\"shape\"";
    uint64_t best = 0;
    const char *p = json.ptr, *end = json.ptr + json.len;
    while (p && p < end) {
        p = memmem(p, (size_t)(end - p), key, sizeof(key) - 1);
        if (!p)
            break;
        p += sizeof(key) - 1;
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n' || *p == ':'))
            p++;
        if (p >= end || *p != '[')
            continue;
        p++;
        uint64_t prod = 1;
        bool any = false;
        while (p < end && *p != ']') {
            if (*p >= '0' && *p <= '9') {
                uint64_t v = 0;
                while (p < end && *p >= '0' && *p <= '9') {
                    v = v > UINT64_MAX / 10 ? UINT64_MAX : v * 10 + (uint64_t)(*p - '0');
                    p++;
                }
                prod = (v && prod > UINT64_MAX / v) ? UINT64_MAX : prod * v;
                any = true;
            } else {
                p++;
            }
        }
        if (any && prod > best)
            best = prod;
    }
    return best;
}

static bool tensor_ok(struct gw_req *g)
{
    struct loom_str body = loom_str_make(g->body, g->body_len);
    struct loom_str hl = loom_http_req_header(g->req, "inference-header-content-length");
    uint64_t n;
    if (hl.len && loom_str_to_u64(hl, &n) == LOOM_OK && n <= body.len)
        body.len = (size_t)n; /* binary tensor extension: the JSON header comes first */
    /* A tensor carries at least a byte per element (JSON: a digit; binary: UINT8 or BOOL), so a
     * body no larger than the cap cannot hold a tensor over it: only larger ones are scanned
     * (a shape that claims more than its data is inference's 400 to give). */
    if (g->body_len <= (uint64_t)g->gw->conf->max_tensor_elements)
        return true;
    uint64_t el = max_shape_elements(body);
    if (el > (uint64_t)g->gw->conf->max_tensor_elements) {
        gw_problem(g, 413, "a tensor of %" PRIu64 " elements is over the limit of %" PRId64, el,
                   g->gw->conf->max_tensor_elements);
        return false;
    }
    return true;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

/* Unversioned infer: Loom-Model-Version, else the model's traffic split (by a hash of the
 * request id, so a retried request with the same id goes to the same version). */
static bool route_version(struct gw_req *g)
{
    struct loom_http_req *req = g->req;
    if (loom_http_req_param(req, "version").ptr)
        return true;
    int64_t v = 0;
    struct loom_str hv = loom_http_req_header(req, "loom-model-version");
    if (hv.len) {
        if (loom_str_to_i64(hv, &v) || v < 1) {
            gw_problem(g, 400, "Loom-Model-Version is a version number (1, 2, ...)");
            return false;
        }
    } else {
        const struct gw_snapshot *s = gw_snapshot_current(g->gl);
        const struct gw_traffic_entry *t =
            s ? gw_traffic_find(s, loom_http_req_param(req, "model")) : NULL;
        if (!t || t->total <= 0)
            return true;
        uint64_t h = 0xcbf29ce484222325ull;
        for (size_t i = 0; i < g->request_id_len; i++)
            h = (h ^ (unsigned char)g->request_id[i]) * 0x100000001b3ull;
        int64_t pick = (int64_t)(mix64(h) % (uint64_t)t->total);
        for (size_t i = 0; i < t->nsplits; i++) {
            if (pick < t->splits[i].weight) {
                v = t->splits[i].version;
                break;
            }
            pick -= t->splits[i].weight;
        }
        if (v < 1)
            return true;
    }
    /* /v2/models/<raw model>/infer -> /v2/models/<raw model>/versions/<v>/infer */
    struct loom_str path = req->path;
    struct loom_str model = loom_str_make(path.ptr + 11, path.len - 11 - 6);
    size_t cap = path.len + req->query.len + 48;
    char *t = loom_arena_alloc(req->arena, cap);
    int n = snprintf(t, cap, "/v2/models/%.*s/versions/%" PRId64 "/infer%s%.*s",
                     LOOM_STR_FMT(model), v, req->query.len ? "?" : "", LOOM_STR_FMT(req->query));
    g->target = loom_str_make(t, (size_t)n);
    g->routed_version = v;
    return true;
}

/* ---- dispatch ---- */

static void proxy(struct gw_req *g);

static void after_idem(struct gw_req *g, enum gw_idem_verdict v)
{
    if (v != GW_IDEM_PROCEED || g->responded)
        return;
    if (g->rule->upstream == GW_UP_LOCAL) {
        if (g->rule->local)
            g->rule->local(g);
        else
            gw_problem(g, 404, "no route");
        return;
    }
    proxy(g);
}

static void dispatch(struct gw_req *g)
{
    if (g->responded)
        return;
    if (g->rule->kind == GW_KIND_INFER && (!tensor_ok(g) || !route_version(g)))
        return;
    if (g->req->method == LOOM_HTTP_POST && loom_http_req_has_header(g->req, "idempotency-key")) {
        gw_idem_begin(g, after_idem);
        return;
    }
    after_idem(g, GW_IDEM_PROCEED);
}

/* ---- forwarding ---- */

enum {
    F_HOP = 1,       /* hop-by-hop (RFC 9110 7.6.1): never forwarded, either way */
    F_OWNED = 2,     /* a request field the gateway sets itself: the client's is dropped */
    F_RESP_SKIP = 4, /* a response field the server or the edge writes */
    F_AUTH = 8,      /* Authorization: forwarded to identity only */
};

/* What a field name is to the proxy: one switch on the length, then one or two
 * case-insensitive compares (every forwarded field goes through here, both ways). */
static unsigned field_flags(struct loom_str n)
{
#define IS(lit) loom_str_ieq(n, LOOM_STR(lit))
    switch (n.len) {
    case 2:
        return IS("te") ? F_HOP : 0;
    case 3:
        return IS("via") ? F_OWNED | F_RESP_SKIP : 0;
    case 4:
        return IS("host") ? F_OWNED : IS("date") ? F_RESP_SKIP : 0;
    case 6:
        return IS("server") ? F_RESP_SKIP : 0;
    case 7:
        return IS("upgrade") || IS("trailer") ? F_HOP : 0;
    case 9:
        return IS("ratelimit") ? F_RESP_SKIP : 0;
    case 10:
        return IS("connection") || IS("keep-alive") ? F_HOP : 0;
    case 11:
        return IS("traceparent") ? F_OWNED : 0;
    case 12:
        return IS("x-request-id") ? F_OWNED | F_RESP_SKIP : IS("content-type") ? F_RESP_SKIP : 0;
    case 13:
        return IS("authorization") ? F_AUTH : 0;
    case 14:
        return IS("content-length") ? F_RESP_SKIP : IS("loom-client-id") ? F_OWNED : 0;
    case 15:
        return IS("x-forwarded-for") ? F_OWNED : 0;
    case 16:
        return IS("x-forwarded-host") || IS("loom-deadline-ms") ? F_OWNED
               : IS("proxy-connection")                         ? F_HOP
               : IS("ratelimit-policy")                         ? F_RESP_SKIP
                                                                : 0;
    case 17:
        return IS("transfer-encoding") ? F_HOP : IS("x-forwarded-proto") ? F_OWNED : 0;
    case 18:
        return IS("proxy-authenticate") ? F_HOP : IS("loom-model-version") ? F_OWNED : 0;
    case 19:
        return IS("proxy-authorization") ? F_HOP : 0;
    case 27:
        return IS("access-control-allow-origin") ? F_RESP_SKIP : 0;
    default:
        return 0;
    }
#undef IS
}

/* Whether `name` is one of the comma-separated tokens of the Connection fields. */
static bool named_by_connection(const struct loom_http_header *h, size_t n, struct loom_str name)
{
    for (size_t i = 0; i < n; i++) {
        if (!loom_str_ieq(h[i].name, LOOM_STR("connection")))
            continue;
        struct loom_str v = h[i].value;
        while (v.len) {
            struct loom_str tok;
            v = loom_str_cut(v, ',', &tok);
            if (loom_str_ieq(loom_str_trim(tok), name))
                return true;
        }
    }
    return false;
}

/* Whether a Connection field names anything but the usual keep-alive/close. */
static bool connection_names_fields(const struct loom_http_header *h, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (h[i].name.len == 10 && loom_str_ieq(h[i].name, LOOM_STR("connection")) &&
            !loom_str_ieq(h[i].value, LOOM_STR("keep-alive")) &&
            !loom_str_ieq(h[i].value, LOOM_STR("close")))
            return true;
    return false;
}

/* Concatenate slices into the arena (no printf on the hot path). */
static struct loom_str cat(struct loom_arena *a, const struct loom_str *parts, size_t n)
{
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += parts[i].len;
    char *p = loom_arena_alloc(a, len + 1), *q = p;
    for (size_t i = 0; i < n; i++) {
        if (parts[i].len)
            memcpy(q, parts[i].ptr, parts[i].len);
        q += parts[i].len;
    }
    *q = '\0';
    return loom_str_make(p, len);
}

static void on_client_abort(void *arg)
{
    struct gw_req *g = arg;
    if (g->in_call)
        loom_http_call_cancel(g->call);
}

static void on_upstream(struct loom_http_response *resp, void *arg);

static void proxy(struct gw_req *g)
{
    struct loom_http_req *req = g->req;
    struct gw_loop *gl = g->gl;
    const struct gw_conf *conf = g->gw->conf;
    struct loom_arena *a = req->arena;
    size_t nin = req->nheaders;
    const struct loom_http_header *in = req->headers;
    bool conn_named = connection_names_fields(in, nin);
    bool to_identity = g->rule->upstream == GW_UP_IDENTITY;
    struct loom_http_header *h = loom_arena_alloc(a, (nin + 10) * sizeof(*h));
    size_t n = 0;
    struct loom_str xff = LOOM_STR_NULL, via = LOOM_STR_NULL, host = LOOM_STR_NULL;
    for (size_t i = 0; i < nin; i++) {
        struct loom_str name = in[i].name;
        unsigned f = field_flags(name);
        if ((f & F_HOP) || (conn_named && named_by_connection(in, nin, name)))
            continue;
        if (f & F_OWNED) {
            if (name.len == 15)
                xff = in[i].value;
            else if (name.len == 3)
                via = in[i].value;
            else if (name.len == 4)
                host = in[i].value;
            continue;
        }
        /* The token stays at the edge: the services behind it trust Loom-Client-Id. Identity
         * checks its admin tokens itself, so it gets them. */
        if ((f & F_AUTH) && !to_identity)
            continue;
        h[n++] = in[i];
    }
    const char *peer = loom_http_req_peer(req);
    const char *colon = strrchr(peer, ':');
    size_t plen = colon ? (size_t)(colon - peer) : strlen(peer);
    if (plen >= 2 && peer[0] == '[')
        peer++, plen -= 2; /* [v6]:port -> v6 */
    struct loom_str ip = loom_str_make(peer, plen);
    struct loom_str xparts[] = { xff, LOOM_STR(", "), ip };
    h[n++] =
        (struct loom_http_header){ LOOM_STR("X-Forwarded-For"), xff.len ? cat(a, xparts, 3) : ip };
    if (host.len)
        h[n++] = (struct loom_http_header){ LOOM_STR("X-Forwarded-Host"), host };
    h[n++] = (struct loom_http_header){ LOOM_STR("X-Forwarded-Proto"), LOOM_STR("http") };
    struct loom_str vparts[] = { via, LOOM_STR(", 1.1 loom-gateway") };
    h[n++] = (struct loom_http_header){ LOOM_STR("Via"), via.len ? cat(a, vparts, 2)
                                                                 : LOOM_STR("1.1 loom-gateway") };
    h[n++] = (struct loom_http_header){ LOOM_STR("X-Request-Id"),
                                        loom_str_make(g->request_id, g->request_id_len) };
    char *tp = loom_arena_alloc(a, LOOM_TRACEPARENT_SIZE);
    size_t tplen = loom_trace_format(&req->trace, tp);
    h[n++] = (struct loom_http_header){ LOOM_STR("traceparent"), loom_str_make(tp, tplen) };
    uint64_t now = loom_loop_now(req->loop);
    uint64_t left_ms =
        g->deadline > now ? (g->deadline - now + LOOM_NS_PER_MS - 1) / LOOM_NS_PER_MS : 1;
    char *dl = loom_arena_alloc(a, 24);
    h[n++] = (struct loom_http_header){ LOOM_STR("Loom-Deadline-Ms"),
                                        loom_str_make(dl, loom_u64_to_dec(left_ms, dl)) };
    if (g->authed)
        h[n++] = (struct loom_http_header){ LOOM_STR("Loom-Client-Id"),
                                            loom_str_cstr(g->who.client_id) };

    struct loom_str target = g->target;
    if (!target.len) {
        target = req->target;
        if (target.len && target.ptr[0] != '/') { /* absolute-form: forward origin-form */
            struct loom_str tparts[] = { req->path, req->query.len ? LOOM_STR("?") : LOOM_STR(""),
                                         req->query };
            target = cat(a, tparts, 3);
        }
    }
    struct loom_http_request ur = {
        .method = req->method,
        .target = target,
        .headers = h,
        .nheaders = n,
        .body = loom_str_make(g->body, g->body_len),
        .deadline = g->deadline,
        .idempotent =
            g->rule->kind == GW_KIND_INFER ? LOOM_HTTP_IDEMPOTENT_YES : LOOM_HTTP_IDEMPOTENT_AUTO,
        .max_body = (size_t)conf->max_upload_body,
    };
    struct loom_error err = { 0 };
    g->in_call = true;
    loom_err e =
        loom_http_upstream_request(gl->up[g->rule->upstream], &ur, on_upstream, g, &g->call, &err);
    if (e) {
        g->in_call = false;
        gw_idem_finish(g, 0, NULL, 0, LOOM_STR_NULL);
        gw_problem(g, e == LOOM_EINVAL ? 400 : 502, "the request cannot be forwarded: %s", err.msg);
        return;
    }
    loom_http_req_on_abort(req, on_client_abort, g);
}

/* A HEAD answer carries the Content-Length the GET would have (RFC 9110 section 9.3.2): the
 * upstream's. */
static void respond_head(struct gw_req *g, int status, const char *ctype, struct loom_str clen)
{
    uint64_t n;
    if (loom_str_to_u64(clen, &n)) {
        gw_respond(g, status, ctype, LOOM_STR_NULL);
        return;
    }
    edge_headers(g);
    loom_http_respond_head(g->req, status, ctype, n);
    finish(g, status);
}

static void on_upstream(struct loom_http_response *resp, void *arg)
{
    struct gw_req *g = arg;
    struct loom_http_req *req = g->req;
    g->in_call = false;
    g->attempts = resp->attempts;
    size_t alen = LOOM_MIN(strlen(resp->address), sizeof(g->upstream_addr) - 1);
    memcpy(g->upstream_addr, resp->address, alen);
    g->upstream_addr[alen] = '\0';
    if (resp->err) {
        gw_idem_finish(g, 0, NULL, 0, LOOM_STR_NULL);
        const char *up = gw_upstream_names[g->rule->upstream];
        switch (resp->err) {
        case LOOM_ECANCELED:
            gw_respond(g, 499, NULL, LOOM_STR_NULL); /* the client left: nobody reads this */
            return;
        case LOOM_ETIMEDOUT:
            gw_problem(g, 504, "%s did not answer before the deadline", up);
            return;
        case LOOM_EUNAVAIL:
            loom_http_resp_header(req, "Retry-After", LOOM_STR("1"));
            gw_problem(g, 503, "no %s replica is available (all are ejected)", up);
            return;
        case LOOM_ECONNECT:
            gw_problem(g, 502, "cannot connect to %s", up);
            return;
        case LOOM_ETOOBIG:
            gw_problem(g, 502, "the answer of %s is over the gateway's limit", up);
            return;
        default:
            gw_problem(g, 502, "%s failed to answer (%s)", up, loom_strerror(resp->err));
            return;
        }
    }
    const char *ctype = NULL;
    bool conn_named = connection_names_fields(resp->headers, resp->nheaders);
    struct loom_str via = LOOM_STR_NULL, clen = LOOM_STR_NULL;
    for (size_t i = 0; i < resp->nheaders; i++) {
        const struct loom_http_header *hd = &resp->headers[i];
        if (loom_str_ieq(hd->name, LOOM_STR("content-type"))) {
            ctype = loom_arena_strndup(req->arena, hd->value.ptr, hd->value.len);
            continue;
        }
        if (loom_str_ieq(hd->name, LOOM_STR("content-length")))
            clen = hd->value;
        unsigned f = field_flags(hd->name);
        if (hd->name.len == 3 && (f & F_OWNED))
            via = hd->value;
        if ((f & (F_HOP | F_RESP_SKIP)) ||
            (conn_named && named_by_connection(resp->headers, resp->nheaders, hd->name)))
            continue;
        char name[128];
        size_t nl = LOOM_MIN(hd->name.len, sizeof(name) - 1);
        memcpy(name, hd->name.ptr, nl);
        name[nl] = '\0';
        loom_http_resp_header(req, name, hd->value);
    }
    struct loom_str vparts[] = { via, LOOM_STR(", 1.1 loom-gateway") };
    loom_http_resp_header(req, "Via",
                          via.len ? cat(req->arena, vparts, 2) : LOOM_STR("1.1 loom-gateway"));
    if (g->idem_claimed)
        gw_idem_finish(g, resp->status, resp->headers, resp->nheaders, resp->body);
    if (req->method == LOOM_HTTP_HEAD && clen.len) {
        respond_head(g, resp->status, ctype, clen);
        return;
    }
    if (resp->body.len >= SMALL_BODY) {
        struct loom_buf b = { 0 };
        loom_http_response_take_body(resp, &b);
        gw_respond_buf(g, resp->status, ctype, &b);
        loom_buf_release(&b);
        return;
    }
    gw_respond(g, resp->status, ctype, resp->body);
}
