/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The echo service. POST /api/v1/echo answers with the request body and its Content-Type;
 * GET /api/v1/echo/{message} answers {"message": ..., "trace_id": ...}. With --echo.delay set,
 * every answer is sent that much later from a timer, which is how tests hold requests in
 * flight (for drains and timeouts) without any other service.
 */
#include "echo/echo.h"

#include <loom/json.h>
#include <loom/log.h>

#include <stdlib.h>

struct echo_conf {
    uint64_t delay;
};

static const struct loom_conf_field echo_fields[] = {
    LOOM_CONF_RANGE_FIELD(struct echo_conf, delay, "delay", DURATION, "0", 0,
                          (int64_t)60 * (int64_t)LOOM_NS_PER_SEC,
                          "Answer each request this much later (for testing drains)."),
};

struct echo {
    uint64_t delay;
};

/* An answer waiting for its delay. */
struct pending {
    struct loom_timer timer;
    struct loom_http_req *req;
    int status;
    const char *content_type;
    struct loom_str body;
};

static void pending_fire(struct loom_timer *t)
{
    struct pending *p = LOOM_CONTAINER_OF(t, struct pending, timer);
    loom_http_respond(p->req, p->status, p->content_type, p->body);
}

static void pending_cancel(void *arg)
{
    struct pending *p = arg;
    loom_timer_stop(&p->timer);
    /* The client left: answer now so the request is released (the answer is discarded). */
    loom_http_respond(p->req, 499, NULL, LOOM_STR_NULL);
}

static void answer(struct loom_http_req *req, int status, const char *content_type,
                   struct loom_str body)
{
    struct echo *e = req->ctx;
    if (!e->delay) {
        loom_http_respond(req, status, content_type, body);
        return;
    }
    struct pending *p = loom_arena_new(req->arena, struct pending);
    p->req = req;
    p->status = status;
    p->content_type = content_type;
    p->body = body; /* borrowed from the request, which lives until the answer */
    loom_timer_init(&p->timer, req->loop, pending_fire);
    loom_timer_start(&p->timer, e->delay, 0);
    loom_http_req_on_abort(req, pending_cancel, p);
}

static void h_echo_body(struct loom_http_req *req)
{
    struct loom_str ctype = loom_http_req_header(req, "content-type");
    const char *ct = ctype.len ? loom_arena_strndup(req->arena, ctype.ptr, ctype.len)
                               : "application/octet-stream";
    loom_http_resp_header(req, "X-Trace-Id", loom_str_cstr(req->trace.trace_hex));
    answer(req, 200, ct, req->body);
}

static void h_echo_message(struct loom_http_req *req)
{
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_str msg = loom_http_req_param(req, "message");
    loom_buf_append_cstr(&b, "{\"message\":");
    loom_json_escape(&b, msg.ptr, msg.len);
    loom_buf_append_cstr(&b, ",\"trace_id\":\"");
    loom_buf_append_cstr(&b, req->trace.trace_hex);
    loom_buf_append_cstr(&b, "\"}");
    struct loom_str body = loom_str_make(loom_arena_memdup(req->arena, b.data, b.len), b.len);
    loom_buf_release(&b);
    loom_log_debug("echo %.*s", LOOM_STR_FMT(msg));
    answer(req, 200, "application/json", body);
}

static loom_err echo_init(struct loom_svc *svc, struct loom_error *err)
{
    LOOM_UNUSED(err);
    const struct echo_conf *conf = loom_svc_conf(svc);
    struct echo *e = loom_new(struct echo);
    e->delay = conf->delay;
    loom_svc_set_state(svc, e);
    return LOOM_OK;
}

static void echo_fini(void *state)
{
    free(state);
}

static const struct loom_route echo_routes[] = {
    { LOOM_HTTP_POST, "/api/v1/echo", h_echo_body, 0, 0 },
    { LOOM_HTTP_GET, "/api/v1/echo/{message}", h_echo_message, 0, 0 },
};

const struct loom_service echo_service = {
    .name = "echo",
    .summary = "Echoes requests back (proves the runtime end to end)",
    .default_listen = "127.0.0.1:8090",
    .optional = true,
    .conf_fields = echo_fields,
    .nconf_fields = LOOM_ARRAY_SIZE(echo_fields),
    .conf_size = sizeof(struct echo_conf),
    .init = echo_init,
    .routes = echo_routes,
    .nroutes = LOOM_ARRAY_SIZE(echo_routes),
    .fini = echo_fini,
};
