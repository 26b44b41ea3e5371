/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The HTTP/1.1 server: listeners (one per loop, SO_REUSEPORT) and the connection state machine.
 *
 * A connection reads into `in`, feeds the parser, and handles one request at a time: the parser
 * pauses after each message, the request is dispatched, and only once it is answered does
 * parsing go on (so pipelined requests are answered in order and a slow handler stops reading
 * instead of buffering without bound). The exception is a route marked LOOM_ROUTE_PARALLEL:
 * up to PIPE_MAX of its pipelined requests are handled at once, their answers held in order
 * (see "Pipelining" below). Head fields are recorded as offsets while they arrive in
 * fragments, and the head is copied once into the request's arena when complete, so `in` can be
 * compacted or grown freely afterwards. Responses are appended to `out` and written by a task
 * deferred to the end of the loop iteration: the answers to every request that arrived in one
 * read leave in one write. Timeouts use one timer per connection, moved lazily: a new deadline
 * is a store, and the timer re-arms itself when it fires early.
 */
#include "internal.h"

#include <loom/log.h>
#include <loom/metrics.h>
#include <loom/net.h>

#include <loom/json.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#define READ_SLACK   16384 /* `in` may hold this much beyond the header limit */
#define ACCEPT_BATCH 64
#define LINGER_IDLE  (2 * LOOM_NS_PER_SEC) /* lingering ends after this long without a byte */
#define LINGER_MAX   (30 * LOOM_NS_PER_SEC)
#define PIPE_MAX     32 /* pipelined requests a connection has in hand at once */

enum cstate {
    C_IDLE,     /* between requests */
    C_HEAD,     /* reading a request head */
    C_BODY,     /* reading a request body */
    C_READY,    /* a complete request waits to be dispatched */
    C_HANDLING, /* the handler has it and has not answered yet */
};

struct hoff { /* a header as offsets from the start of the message */
    uint32_t name_off, name_len, value_off, value_len;
};

struct abort_hook {
    struct abort_hook *next;
    loom_cleanup_fn fn;
    void *arg;
};

struct listener;
struct loom__http_conn;

/*
 * One request's own state: the request being read or handled (conn->cur), or one that is
 * waiting in the connection's pipeline (see pipe_push): answered out of turn, or still with its
 * handler while later pipelined requests are read. Kept for reuse on the connection.
 */
struct rq {
    struct loom_http_req req;
    struct loom_arena arena;
    struct loom_buf body;
    struct loom_buf resp_headers;
    struct loom_buf out; /* its answer, held until every answer before it is out */
    struct abort_hook *abort_hooks;
    struct rq *next; /* in the pipeline, or the spares */
    int status;
    bool keepalive;
    bool responded;
    bool queued; /* in the pipeline */
};

struct loom__http_conn {
    struct loom_io io;
    struct loom_timer timer;
    struct loom_task kick_task;
    struct loom_task free_task;
    struct listener *ls;
    struct loom__http_conn *prev, *next;
    int fd;
    enum cstate state;

    struct loom_buf in;
    size_t in_off;    /* bytes of `in` already parsed */
    size_t msg_start; /* where the current message began in `in` */
    struct loom__h1_parser parser;

    /* the head being parsed */
    struct loom_buf hoffs;
    uint32_t target_off, target_len, head_end;
    bool last_was_value;
    uint64_t body_limit;
    int refuse_status; /* set by a parser callback that refused the message */
    const char *refuse_msg;
    int deferred_status; /* a refusal answered after the (bodiless) message completes */
    char deferred_msg[160];

    struct rq *cur;                   /* the request being read, dispatched or handled */
    struct rq *pipe_head, *pipe_tail; /* earlier requests whose answers are not out yet */
    size_t npipe;
    struct rq *spares;
    bool replay; /* the message being read must wait for the pipeline to empty: re-read then */

    /* a LOOM_ROUTE_STREAM request */
    bool streaming;     /* its handler has run; the body goes to the sink, or waits in `body` */
    uint64_t body_seen; /* body bytes received */
    loom_err sink_err;  /* on_data refused the body */
    bool body_done;     /* the whole body has arrived */
    bool end_called;
    loom_http_body_fn on_data;
    loom_http_end_fn on_end;
    void *body_arg;
    loom_err body_err; /* the body failed before the handler asked for it */

    struct loom_buf out;
    size_t out_off;
    struct loom_buf out_big; /* a body handed over by loom_http_respond_buf, sent after out */
    size_t big_off;
    int file_fd; /* a body sent from a file (loom_http_respond_file), after out; -1: none */
    off_t file_off;
    uint64_t file_left;

    uint64_t deadline;
    bool close_after; /* close once `out` is written */
    bool closed;
    bool kick_pending;
    bool peer_eof;
    bool continue_owed;  /* Expect: 100-continue on a streaming route: sent when it reads */
    bool lingering;      /* answered and shut for writing: reading what the client still sends */
    uint64_t linger_end; /* when lingering stops, however much the client still sends */
    bool peer_known;
    char peer[64]; /* the client's address, read at the first loom_http_req_peer */
};

struct route_metrics {
    struct loom_histogram *duration;
    _Atomic(struct loom_counter *) by_code[8]; /* a tiny cache of code -> series */
    _Atomic int codes[8];
};

struct loom_http_server {
    struct loom_http_server_config cfg;
    struct loom_router *router;
    struct loom_counter_family *m_requests;
    struct loom_histogram_family *m_duration;
    struct loom_gauge *m_connections;
    struct route_metrics *route_metrics; /* one per route, plus one for unmatched */
    pthread_mutex_t mu;
    struct listener **listeners;
    size_t nlisteners;
    int port;
    char *unix_path; /* the socket file of a unix: listener, removed when listening stops */
    atomic_size_t nconns;
};

struct listener {
    struct loom_http_server *srv;
    struct loom_loop *loop;
    struct loom_io io;
    struct loom_timer pause_timer;
    int fd;
    bool accepting;
    bool draining;
    struct loom__http_conn *conns;
    size_t nconns;
    loom_http_drained_fn drained;
    void *drained_arg;
    struct loom_task drained_task;
    int64_t date_sec;
    uint64_t date_checked;
    char date[32];
};

static void conn_close(struct loom__http_conn *c);
static void conn_linger(struct loom__http_conn *c);
static void conn_kick(struct loom__http_conn *c);
static void process_input(struct loom__http_conn *c);
static void update_interest(struct loom__http_conn *c);
static void listener_accept_resume(struct listener *ls);
static const struct loom__h1_callbacks h1_callbacks;

/* ---- errors and response building ---- */

const char *loom_http_error_json(struct loom_buf *out, int status, const char *message,
                                 struct loom_str instance)
{
    LOOM_UNUSED(status);
    LOOM_UNUSED(instance);
    loom_buf_append_cstr(out, "{\"error\":");
    loom_json_escape(out, message, strlen(message));
    loom_buf_putc(out, '}');
    return "application/json";
}

const char *loom_http_error_problem(struct loom_buf *out, int status, const char *message,
                                    struct loom_str instance)
{
    const char *title = loom_http_status_reason(status);
    loom_buf_append_cstr(out, "{\"type\":\"about:blank\",\"title\":");
    loom_json_escape(out, title, strlen(title));
    loom_buf_printf(out, ",\"status\":%d,\"detail\":", status);
    loom_json_escape(out, message, strlen(message));
    if (instance.len) {
        loom_buf_append_cstr(out, ",\"instance\":");
        loom_json_escape(out, instance.ptr, instance.len);
    }
    loom_buf_putc(out, '}');
    return "application/problem+json";
}

static const char *date_header(struct listener *ls)
{
    uint64_t now = loom_loop_now(ls->loop);
    if (ls->date_sec == 0 || now - ls->date_checked >= LOOM_NS_PER_SEC / 4) {
        ls->date_checked = now;
        int64_t sec = loom_wall_ns() / (int64_t)LOOM_NS_PER_SEC;
        if (sec != ls->date_sec) {
            ls->date_sec = sec;
            loom_time_http_date(sec, ls->date);
        }
    }
    return ls->date;
}

static bool conn_draining(const struct loom__http_conn *c)
{
    return c->ls->draining;
}

static struct rq *rq_of(const struct loom_http_req *req)
{
    return LOOM_CONTAINER_OF(req, struct rq, req);
}

/* Where the next bytes of output go: after a handed-over body, if one is pending. */
static struct loom_buf *out_tail(struct loom__http_conn *c)
{
    return c->out_big.len ? &c->out_big : &c->out;
}

/* An answer waits in its request while an earlier request's answer is not out. */
static bool held(const struct loom__http_conn *c, const struct rq *r)
{
    return r->queued || c->pipe_head;
}

static struct loom_buf *resp_out(struct loom__http_conn *c, struct rq *r)
{
    return held(c, r) ? &r->out : out_tail(c);
}

/* Status line and the server's headers. */
static void write_head(struct loom__http_conn *c, struct rq *r, int status,
                       const char *content_type, size_t content_length)
{
    if (c->streaming && !c->body_done)
        c->close_after = true; /* answered before the body ended: the rest is not read */
    struct loom_buf *o = resp_out(c, r);
    char line[16] = "HTTP/1.1 000 ";
    line[9] = (char)('0' + status / 100 % 10);
    line[10] = (char)('0' + status / 10 % 10);
    line[11] = (char)('0' + status % 10);
    loom_buf_append(o, line, 13);
    loom_buf_append_cstr(o, loom_http_status_reason(status));
    loom_buf_append_cstr(o, "\r\nServer: loom\r\nDate: ");
    loom_buf_append(o, date_header(c->ls), 29);
    if (content_type) {
        loom_buf_append_cstr(o, "\r\nContent-Type: ");
        loom_buf_append_cstr(o, content_type);
    }
    loom_buf_append_cstr(o, "\r\nContent-Length: ");
    loom_buf_append_u64(o, content_length);
    /* A held answer closes the connection for its own reasons only: the close wanted by a
     * later request goes on that request's answer. */
    if (!r->keepalive || (c->close_after && !held(c, r)) || conn_draining(c)) {
        c->close_after = true;
        loom_buf_append_cstr(o, "\r\nConnection: close");
    }
    loom_buf_append_cstr(o, "\r\n");
    if (r->resp_headers.len)
        loom_buf_append(o, r->resp_headers.data, r->resp_headers.len);
    loom_buf_append_cstr(o, "\r\n");
}

static bool head_request(const struct rq *r)
{
    return r->req.method == LOOM_HTTP_HEAD;
}

static void finish_response(struct loom__http_conn *c, struct rq *r, int status)
{
    r->status = status;
    r->responded = true;
    conn_kick(c); /* flush at the end of this loop iteration, with whatever else is ready */
}

void loom_http_respond(struct loom_http_req *req, int status, const char *content_type,
                       struct loom_str body)
{
    struct loom__http_conn *c = req->conn;
    struct rq *r = rq_of(req);
    if (r->responded) {
        loom_log_error("second response to %.*s %.*s ignored", LOOM_STR_FMT(req->method_name),
                       LOOM_STR_FMT(req->path));
        return;
    }
    if (!c->closed) {
        write_head(c, r, status, content_type, body.len);
        if (!head_request(r) && body.len)
            loom_buf_append(resp_out(c, r), body.ptr, body.len);
    }
    finish_response(c, r, status);
}

void loom_http_respond_head(struct loom_http_req *req, int status, const char *content_type,
                            uint64_t content_length)
{
    struct loom__http_conn *c = req->conn;
    struct rq *r = rq_of(req);
    if (r->responded) {
        loom_log_error("second response to %.*s %.*s ignored", LOOM_STR_FMT(req->method_name),
                       LOOM_STR_FMT(req->path));
        return;
    }
    if (!head_request(r)) {
        loom_log_error("loom_http_respond_head for %.*s %.*s: answered without a body",
                       LOOM_STR_FMT(req->method_name), LOOM_STR_FMT(req->path));
        content_length = 0;
    }
    if (!c->closed)
        write_head(c, r, status, content_type, (size_t)content_length);
    finish_response(c, r, status);
}

void loom_http_respond_file(struct loom_http_req *req, int status, const char *content_type, int fd,
                            uint64_t offset, uint64_t len)
{
    struct loom__http_conn *c = req->conn;
    struct rq *r = rq_of(req);
    if (r->responded || c->closed || head_request(r)) {
        if (!r->responded && !c->closed)
            write_head(c, r, status, content_type, (size_t)len); /* HEAD: no body */
        close(fd);
        if (!r->responded)
            finish_response(c, r, status);
        return;
    }
    if (len < 65536 || c->out_big.len || c->file_fd >= 0 || held(c, r)) {
        /* Small bodies are cheaper to copy; one file at a time keeps the order simple; and a
         * held answer waits in memory anyway. */
        struct loom_buf b;
        loom_buf_init(&b, (size_t)len + 1);
        bool ok = loom_buf_reserve(&b, (size_t)len) == LOOM_OK;
        for (uint64_t got = 0; ok && got < len;) {
            ssize_t n = pread(fd, b.data + got, (size_t)(len - got), (off_t)(offset + got));
            ok = n > 0 || (n < 0 && errno == EINTR);
            got += n > 0 ? (uint64_t)n : 0;
            b.len = (size_t)got;
        }
        close(fd);
        if (ok)
            loom_http_respond_buf(req, status, content_type, &b);
        else
            loom_http_respond_error(req, 500, "cannot read the response body from its file");
        loom_buf_release(&b);
        return;
    }
    write_head(c, r, status, content_type, (size_t)len);
    c->file_fd = fd;
    c->file_off = (off_t)offset;
    c->file_left = len;
    finish_response(c, r, status);
}

void loom_http_respond_buf(struct loom_http_req *req, int status, const char *content_type,
                           struct loom_buf *body)
{
    struct loom__http_conn *c = req->conn;
    struct rq *r = rq_of(req);
    if (r->responded || c->closed || head_request(r) || body->len < 65536 || c->out_big.len ||
        held(c, r)) {
        /* Small bodies are cheaper to copy than to send from a second buffer. */
        loom_http_respond(req, status, content_type, loom_buf_str(body));
        loom_buf_release(body);
        return;
    }
    write_head(c, r, status, content_type, body->len);
    c->out_big = *body;
    c->big_off = 0;
    loom_buf_init(body, body->max);
    finish_response(c, r, status);
}

static void respond_error_msg(struct loom_http_req *req, int status, const char *msg)
{
    struct loom_buf b;
    loom_buf_init(&b, 0);
    loom_http_error_fn fn = req->conn->ls->srv->cfg.error_body;
    const char *ctype = fn(&b, status, msg, req->path);
    loom_http_respond(req, status, ctype, loom_buf_str(&b));
    loom_buf_release(&b);
}

void loom_http_respond_error(struct loom_http_req *req, int status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    respond_error_msg(req, status, msg);
}

void loom_http_respond_problem(struct loom_http_req *req, int status, const char *type,
                               const char *detail_fmt, ...)
{
    char detail[1024];
    va_list ap;
    va_start(ap, detail_fmt);
    vsnprintf(detail, sizeof(detail), detail_fmt, ap);
    va_end(ap);
    struct loom_buf b;
    loom_buf_init(&b, 0);
    const char *title = loom_http_status_reason(status);
    loom_buf_append_cstr(&b, "{\"type\":");
    loom_json_escape(&b, type ? type : "about:blank", strlen(type ? type : "about:blank"));
    loom_buf_append_cstr(&b, ",\"title\":");
    loom_json_escape(&b, title, strlen(title));
    loom_buf_printf(&b, ",\"status\":%d,\"detail\":", status);
    loom_json_escape(&b, detail, strlen(detail));
    if (req->path.len) {
        loom_buf_append_cstr(&b, ",\"instance\":");
        loom_json_escape(&b, req->path.ptr, req->path.len);
    }
    loom_buf_putc(&b, '}');
    loom_http_respond(req, status, "application/problem+json", loom_buf_str(&b));
    loom_buf_release(&b);
}

void loom_http_resp_header(struct loom_http_req *req, const char *name, struct loom_str value)
{
    struct loom_buf *b = &rq_of(req)->resp_headers;
    loom_buf_append_cstr(b, name);
    loom_buf_append(b, ": ", 2);
    /* A CR or LF in a value would split the response: drop them. */
    for (size_t i = 0; i < value.len; i++) {
        char ch = value.ptr[i];
        if (ch != '\r' && ch != '\n')
            loom_buf_putc(b, ch);
    }
    loom_buf_append(b, "\r\n", 2);
}

void loom_http_resp_headerf(struct loom_http_req *req, const char *name, const char *fmt, ...)
{
    char value[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(value, sizeof(value), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    loom_http_resp_header(req, name, loom_str_make(value, LOOM_MIN((size_t)n, sizeof(value) - 1)));
}

/* ---- request accessors ---- */

struct loom_str loom_http_req_header(const struct loom_http_req *req, const char *name)
{
    return loom_http_header_get(req->headers, req->nheaders, name, NULL);
}

bool loom_http_req_has_header(const struct loom_http_req *req, const char *name)
{
    bool found;
    loom_http_header_get(req->headers, req->nheaders, name, &found);
    return found;
}

struct loom_str loom_http_req_param(const struct loom_http_req *req, const char *name)
{
    struct loom_str want = loom_str_cstr(name);
    for (size_t i = 0; i < req->match.nparams; i++)
        if (loom_str_eq(req->match.names[i], want))
            return req->match.values[i];
    return LOOM_STR_NULL;
}

bool loom_http_req_query(const struct loom_http_req *req, const char *name, struct loom_str *value)
{
    struct loom_str q = req->query, want = loom_str_cstr(name);
    while (q.len) {
        struct loom_str pair, key;
        q = loom_str_cut(q, '&', &pair);
        struct loom_str raw = loom_str_cut(pair, '=', &key);
        struct loom_str dkey;
        if (loom_http_url_decode(key, true, req->arena, &dkey) || !loom_str_eq(dkey, want))
            continue;
        return loom_http_url_decode(raw, true, req->arena, value) == LOOM_OK;
    }
    return false;
}

const char *loom_http_req_peer(const struct loom_http_req *req)
{
    struct loom__http_conn *c = req->conn;
    if (!c->peer_known && c->fd >= 0) {
        struct loom_sockaddr sa = { .len = sizeof(sa.ss) };
        if (getpeername(c->fd, (struct sockaddr *)&sa.ss, &sa.len) == 0)
            loom_net_format(&sa, c->peer, sizeof(c->peer));
        c->peer_known = true;
    }
    return c->peer;
}

bool loom_http_req_is_aborted(const struct loom_http_req *req)
{
    return req->conn->closed;
}

void loom_http_req_on_abort(struct loom_http_req *req, loom_cleanup_fn fn, void *arg)
{
    struct rq *r = rq_of(req);
    struct abort_hook *h = loom_arena_alloc(&r->arena, sizeof(*h));
    h->fn = fn;
    h->arg = arg;
    h->next = r->abort_hooks;
    r->abort_hooks = h;
}

/* ---- metrics ---- */

static struct route_metrics *route_metrics_of(struct loom_http_server *s,
                                              const struct loom_route *route)
{
    size_t i = route ? (size_t)(route - s->cfg.routes) : s->cfg.nroutes;
    return &s->route_metrics[i];
}

static const char *route_label(const struct loom_http_server *s, const struct loom_route *route)
{
    LOOM_UNUSED(s);
    return route ? route->path : "unmatched";
}

static void record_request(struct loom__http_conn *c, const struct rq *r)
{
    struct loom_http_server *s = c->ls->srv;
    const struct loom_route *route = r->req.route;
    struct route_metrics *rm = route_metrics_of(s, route);
    double secs = (double)(loom_now_ns() - r->req.start_ns) / 1e9;
    const char *method = route ? loom_http_method_name(route->method) : "OTHER";
    if (!rm->duration) {
        /* Created on first use: the family lock makes concurrent creation safe. */
        const char *labels[] = { route_label(s, route), method };
        rm->duration = loom_histogram_get(s->m_duration, labels);
    }
    loom_histogram_observe(rm->duration, secs);

    struct loom_counter *counter = NULL;
    for (int i = 0; i < 8; i++) {
        if (atomic_load_explicit(&rm->codes[i], memory_order_acquire) == r->status) {
            counter = atomic_load_explicit(&rm->by_code[i], memory_order_acquire);
            if (counter)
                break;
        }
    }
    if (!counter) {
        char code[8];
        snprintf(code, sizeof(code), "%d", r->status);
        const char *labels[] = { route_label(s, route), method, code };
        counter = loom_counter_get(s->m_requests, labels);
        for (int i = 0; i < 8; i++) {
            struct loom_counter *none = NULL;
            if (atomic_compare_exchange_strong(&rm->by_code[i], &none, counter)) {
                atomic_store_explicit(&rm->codes[i], r->status, memory_order_release);
                break;
            }
        }
    }
    loom_counter_inc(counter);
    if (loom_log_level_enabled(LOOM_LOG_DEBUG)) {
        loom_trace_set_current(&r->req.trace); /* the line carries the request's ids */
        LOOM_LOG_KV(LOOM_LOG_DEBUG, "request", LOOM_KV_STR("method", r->req.method_name),
                    LOOM_KV_STR("path", r->req.path), LOOM_KV_CSTR("route", route_label(s, route)),
                    LOOM_KV_INT("status", r->status), LOOM_KV_DBL("duration_ms", secs * 1e3));
        loom_trace_set_current(NULL);
    }
}

/* ---- deadlines ---- */

static void set_deadline(struct loom__http_conn *c, uint64_t deadline)
{
    c->deadline = deadline;
    if (deadline == UINT64_MAX)
        return;
    if (!loom_timer_is_active(&c->timer) || c->timer.deadline > deadline)
        loom_timer_start_at(&c->timer, deadline);
}

static const struct loom_http_limits *limits(const struct loom__http_conn *c)
{
    return &c->ls->srv->cfg.limits;
}

/* ---- output ---- */

static bool output_pending(const struct loom__http_conn *c)
{
    return c->out_off < c->out.len || c->out_big.len || c->file_fd >= 0;
}

static size_t output_backlog(const struct loom__http_conn *c)
{
    return (c->out.len - c->out_off) + (c->out_big.len - c->big_off) + (size_t)c->file_left;
}

static void file_done(struct loom__http_conn *c)
{
    if (c->file_fd >= 0)
        close(c->file_fd);
    c->file_fd = -1;
    c->file_left = 0;
}

/* Send the file body once the buffers ahead of it are out. Returns the bytes sent, 0 when it
 * must wait for the socket, -1 on a dead socket or a failed read. */
static ssize_t send_file_part(struct loom__http_conn *c)
{
    size_t chunk = (size_t)LOOM_MIN(c->file_left, (uint64_t)1 << 20);
    ssize_t w = sendfile(c->fd, c->file_fd, &c->file_off, chunk);
    if (w < 0)
        return errno == EAGAIN ? 0 : (errno == EINTR ? 0 : -1);
    if (w == 0) /* the file shrank under us: the length promised cannot be kept */
        return -1;
    c->file_left -= (uint64_t)w;
    if (c->file_left == 0)
        file_done(c);
    return w;
}

/* Write what we can. Returns false if the connection was closed. */
static bool flush(struct loom__http_conn *c)
{
    while (output_pending(c)) {
        if (c->out_off == c->out.len && !c->out_big.len) {
            ssize_t s = send_file_part(c);
            if (s < 0) {
                conn_close(c);
                return false;
            }
            if (s == 0 && c->file_fd >= 0) {
                loom_io_start(&c->io, (c->io.events & ~(unsigned)LOOM_IO_READ) | LOOM_IO_WRITE);
                set_deadline(c, loom_loop_now(c->ls->loop) + limits(c)->idle_timeout);
                return true;
            }
            continue;
        }
        struct iovec iov[2];
        int n = 0;
        if (c->out_off < c->out.len)
            iov[n++] = (struct iovec){ c->out.data + c->out_off, c->out.len - c->out_off };
        if (c->out_big.len)
            iov[n++] = (struct iovec){ c->out_big.data + c->big_off, c->out_big.len - c->big_off };
        struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t)n };
        ssize_t w = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                loom_io_start(&c->io, (c->io.events & ~(unsigned)LOOM_IO_READ) | LOOM_IO_WRITE);
                set_deadline(c, loom_loop_now(c->ls->loop) + limits(c)->idle_timeout);
                return true;
            }
            conn_close(c);
            return false;
        }
        size_t left = (size_t)w;
        size_t a = LOOM_MIN(left, c->out.len - c->out_off);
        c->out_off += a;
        left -= a;
        c->big_off += left;
        if (c->out_off == c->out.len) {
            loom_buf_reset(&c->out);
            c->out_off = 0;
            if (c->out_big.len) {
                if (c->big_off == c->out_big.len) {
                    loom_buf_release(&c->out_big);
                    c->big_off = 0;
                } else {
                    /* Later responses were appended to out_big; keep writing from it. */
                }
            }
        }
    }
    if (c->io.events & LOOM_IO_WRITE)
        loom_io_start(&c->io, c->io.events & ~(unsigned)LOOM_IO_WRITE);
    if (c->close_after && c->state == C_IDLE && !c->pipe_head) {
        conn_linger(c);
        return false;
    }
    return true;
}

/* ---- request lifecycle ---- */

static void rq_reset(struct loom__http_conn *c, struct rq *r)
{
    loom_arena_reset(&r->arena);
    loom_buf_reset(&r->body);
    loom_buf_reset(&r->resp_headers);
    loom_buf_reset(&r->out);
    r->abort_hooks = NULL;
    r->next = NULL;
    r->status = 0;
    r->keepalive = false;
    r->responded = false;
    r->queued = false;
    memset(&r->req, 0, sizeof(r->req));
    r->req.conn = c;
    r->req.arena = &r->arena;
    r->req.loop = c->ls->loop;
    r->req.ctx = c->ls->srv->cfg.ctx;
    r->req.owner = c->ls->srv->cfg.owner;
}

/* A fresh request: a spare (reset when it was recycled) or a new one. */
static struct rq *rq_new(struct loom__http_conn *c)
{
    struct rq *r = c->spares;
    if (r) {
        c->spares = r->next;
        r->next = NULL;
        return r;
    }
    r = loom_new(struct rq);
    loom_arena_init(&r->arena, 4096);
    loom_buf_init(&r->body, 0);
    loom_buf_init(&r->resp_headers, 64 * 1024);
    loom_buf_init(&r->out, 0);
    rq_reset(c, r);
    return r;
}

static void rq_free(struct rq *r)
{
    loom_arena_release(&r->arena);
    loom_buf_release(&r->body);
    loom_buf_release(&r->resp_headers);
    loom_buf_release(&r->out);
    free(r);
}

/* Keep a finished request for the next one. */
static void rq_recycle(struct loom__http_conn *c, struct rq *r)
{
    rq_reset(c, r);
    r->next = c->spares;
    c->spares = r;
}

/* The parser's state for the next message. */
static void reset_parse(struct loom__http_conn *c)
{
    loom_buf_reset(&c->hoffs);
    c->continue_owed = false;
    c->streaming = false;
    c->body_seen = 0;
    c->sink_err = LOOM_OK;
    c->body_done = false;
    c->end_called = false;
    c->on_data = NULL;
    c->on_end = NULL;
    c->body_err = LOOM_OK;
    c->refuse_status = 0;
    c->refuse_msg = NULL;
    c->deferred_status = 0;
    c->target_off = c->target_len = c->head_end = 0;
    c->last_was_value = false;
    c->state = C_IDLE;
}

/* The parser's state for the next message, and the current request made fresh. */
static void reset_request(struct loom__http_conn *c)
{
    rq_reset(c, c->cur);
    reset_parse(c);
}

/* The handler has answered: account for it and get ready for the next request. */
static void complete_request(struct loom__http_conn *c)
{
    record_request(c, c->cur);
    reset_request(c);
    loom__h1_resume(&c->parser);
    if (!c->closed)
        set_deadline(c, loom_loop_now(c->ls->loop) + limits(c)->idle_timeout);
}

/*
 * Pipelining. A request to a LOOM_ROUTE_PARALLEL route that its handler does not answer at once
 * joins the connection's pipeline, and the next pipelined request is read and dispatched without
 * waiting for it (so, say, a run of inference requests on one connection is batched together).
 * Every answer given while an earlier one is not out is held in its request (resp_out), and
 * pipe_advance moves answers to `out` in the order the requests came. Only parallel routes and
 * answers without a handler (refusals) go ahead of an unanswered request: a request to any
 * other route waits, read but not dispatched (C_READY), until the pipeline is empty; one whose
 * handler would run before its body is read (a streaming route), or that wants a 100 Continue,
 * is not even read: its head is read again once the pipeline is empty (c->replay).
 */
static bool parallel_route(const struct loom__http_conn *c)
{
    const struct loom_route *route = c->cur->req.route;
    return route && (route->flags & LOOM_ROUTE_PARALLEL);
}

static void pipe_push(struct loom__http_conn *c)
{
    struct rq *r = c->cur;
    r->queued = true;
    if (c->pipe_tail)
        c->pipe_tail->next = r;
    else
        c->pipe_head = r;
    c->pipe_tail = r;
    c->npipe++;
    if (!r->keepalive)
        c->close_after = true; /* nothing after it is read */
    c->cur = rq_new(c);
    reset_parse(c);
    loom__h1_resume(&c->parser);
    set_deadline(c, UINT64_MAX); /* the handlers have it; a new message sets its own */
    if (r->responded)
        conn_kick(c);
}

static bool pipe_unanswered(const struct loom__http_conn *c)
{
    for (const struct rq *r = c->pipe_head; r; r = r->next)
        if (!r->responded)
            return true;
    return false;
}

/* Move the answers that are next in order to `out`. */
static void pipe_advance(struct loom__http_conn *c)
{
    struct rq *r;
    while ((r = c->pipe_head) && r->responded) {
        c->pipe_head = r->next;
        if (!c->pipe_head)
            c->pipe_tail = NULL;
        c->npipe--;
        if (!c->closed && r->out.len)
            loom_buf_append(out_tail(c), r->out.data, r->out.len);
        record_request(c, r);
        rq_recycle(c, r);
    }
    if (!c->pipe_head && !c->closed && c->state == C_IDLE && c->in_off == c->in.len)
        set_deadline(c, loom_loop_now(c->ls->loop) + limits(c)->idle_timeout);
}

static void dispatch(struct loom__http_conn *c)
{
    struct rq *r = c->cur;
    struct loom_http_req *req = &r->req;
    req->body = loom_buf_str(&r->body);
    if (c->deferred_status) {
        respond_error_msg(req, c->deferred_status, c->deferred_msg);
    } else {
        loom_trace_set_current(&req->trace);
        req->route->handler(req);
        loom_trace_set_current(NULL);
    }
    if (c->pipe_head || (!r->responded && parallel_route(c))) {
        pipe_push(c);
    } else if (r->responded) {
        complete_request(c);
    } else {
        c->state = C_HANDLING;
        set_deadline(c, UINT64_MAX);
    }
}

/* Refuse the request being read with `status` and close after the answer: used when the rest of
 * the input cannot be trusted or is not worth reading. */
static void refuse_and_close(struct loom__http_conn *c, int status, const char *msg)
{
    struct rq *r = c->cur;
    c->close_after = true;
    if (!r->req.method_name.ptr)
        r->req.method_name = LOOM_STR("-");
    if (!r->req.start_ns)
        r->req.start_ns = loom_now_ns();
    respond_error_msg(&r->req, status, msg);
    if (c->pipe_head) {
        pipe_push(c); /* answered after the answers before it */
    } else {
        record_request(c, r);
    }
    c->state = C_IDLE; /* nothing more is read: close_after closes once written */
    conn_kick(c);
}

/* The message being read must wait for the pipeline to empty: read its head again then. */
static void replay_later(struct loom__http_conn *c)
{
    c->in_off = c->msg_start;
    loom__h1_init(&c->parser, LOOM__H1_REQUEST, &h1_callbacks, c);
    reset_request(c);
    c->replay = true;
}

/* ---- parser callbacks ---- */

static struct loom__http_conn *cb_conn(void *ud)
{
    return ud;
}

static const char *msg_base(const struct loom__http_conn *c)
{
    return c->in.data + c->msg_start;
}

static int head_overflow(struct loom__http_conn *c, const char *end)
{
    size_t used = (size_t)(end - msg_base(c));
    if (used > limits(c)->max_header_bytes) {
        c->refuse_status = 431;
        c->refuse_msg = "request header fields too large";
        return -1;
    }
    if (used > c->head_end)
        c->head_end = (uint32_t)used;
    return 0;
}

static int on_message_begin(void *ud)
{
    struct loom__http_conn *c = cb_conn(ud);
    c->state = C_HEAD;
    return 0;
}

static int on_target(void *ud, const char *at, size_t len)
{
    struct loom__http_conn *c = cb_conn(ud);
    if (c->target_len == 0)
        c->target_off = (uint32_t)(at - msg_base(c));
    c->target_len += (uint32_t)len;
    return head_overflow(c, at + len);
}

static int on_header_name(void *ud, const char *at, size_t len)
{
    struct loom__http_conn *c = cb_conn(ud);
    if (head_overflow(c, at + len))
        return -1;
    size_t n = c->hoffs.len / sizeof(struct hoff);
    struct hoff *h;
    if (n == 0 || c->last_was_value) {
        if (n >= limits(c)->max_headers) {
            c->refuse_status = 431;
            c->refuse_msg = "too many header fields";
            return -1;
        }
        struct hoff fresh = { (uint32_t)(at - msg_base(c)), (uint32_t)len, 0, 0 };
        loom_buf_append(&c->hoffs, &fresh, sizeof(fresh));
    } else {
        h = (struct hoff *)(void *)c->hoffs.data + n - 1;
        h->name_len += (uint32_t)len;
    }
    c->last_was_value = false;
    return 0;
}

static int on_header_value(void *ud, const char *at, size_t len)
{
    struct loom__http_conn *c = cb_conn(ud);
    if (head_overflow(c, at + len))
        return -1;
    size_t n = c->hoffs.len / sizeof(struct hoff);
    struct hoff *h = (struct hoff *)(void *)c->hoffs.data + n - 1;
    if (!c->last_was_value) {
        h->value_off = (uint32_t)(at - msg_base(c));
        h->value_len = (uint32_t)len;
    } else {
        h->value_len += (uint32_t)len;
    }
    c->last_was_value = true;
    return 0;
}

static void defer_refusal(struct loom__http_conn *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void defer_refusal(struct loom__http_conn *c, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->deferred_msg, sizeof(c->deferred_msg), fmt, ap);
    va_end(ap);
    c->deferred_status = status;
}

/* Split the target into path and query; accept absolute-form (RFC 9112 3.2.2). */
static void split_target(struct loom_http_req *req)
{
    struct loom_str t = req->target;
    if (loom_str_has_prefix(t, LOOM_STR("http://")) ||
        loom_str_has_prefix(t, LOOM_STR("https://"))) {
        size_t skip = (size_t)loom_str_index(t, ':') + 3;
        struct loom_str rest = loom_str_make(t.ptr + skip, t.len - skip);
        ptrdiff_t slash = loom_str_index(rest, '/');
        t = slash < 0 ? LOOM_STR("/") : loom_str_make(rest.ptr + slash, rest.len - (size_t)slash);
    }
    struct loom_str path;
    struct loom_str query = loom_str_cut(t, '?', &path);
    ptrdiff_t hash = loom_str_index(query, '#');
    if (hash >= 0)
        query.len = (size_t)hash;
    req->path = path;
    req->query = query;
}

/*
 * Every line of the head ends in LF or CRLF, with no other CR: a CR that does not end a line
 * could be read differently by another server on the path, and http-parser, as Debian builds
 * it, lets it through. Scans from the start of the message to its blank line, which the parser
 * has just seen, so it lies before `end`.
 */
static bool head_lines_ok(const char *p, const char *end)
{
    bool started = false;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            return true;
        const char *e = nl > p && nl[-1] == '\r' ? nl - 1 : nl;
        if (memchr(p, '\r', (size_t)(e - p)))
            return false;
        if (e == p && started)
            return true; /* the blank line */
        started = started || e > p;
        p = nl + 1;
    }
    return true;
}

static int on_headers_complete(void *ud)
{
    struct loom__http_conn *c = cb_conn(ud);
    struct loom_http_server *s = c->ls->srv;
    struct loom_http_req *req = &c->cur->req;
    req->start_ns = loom_now_ns();

    /* Copy the head once into the arena; every slice of the request points there. */
    size_t head_len = c->head_end;
    char *head = loom_arena_memdup(&c->cur->arena, msg_base(c), head_len);
    if (!head_lines_ok(msg_base(c), c->in.data + c->in.len)) {
        c->refuse_status = 400;
        c->refuse_msg = "bare CR in the request head";
        return -1;
    }
    size_t n = c->hoffs.len / sizeof(struct hoff);
    const struct hoff *ho = (const struct hoff *)(const void *)c->hoffs.data;
    struct loom_http_header *hs = loom_arena_alloc(&c->cur->arena, (n ? n : 1) * sizeof(*hs));
    for (size_t i = 0; i < n; i++) {
        hs[i].name = loom_str_make(head + ho[i].name_off, ho[i].name_len);
        hs[i].value = loom_str_trim(loom_str_make(head + ho[i].value_off, ho[i].value_len));
    }
    req->headers = hs;
    req->nheaders = n;
    req->target = loom_str_make(head + c->target_off, c->target_len);
    req->method = loom__h1_method(&c->parser);
    /* The method is the first token; http-parser tolerates blank lines before it. */
    size_t m0 = 0;
    while (m0 < head_len && (head[m0] == '\r' || head[m0] == '\n'))
        m0++;
    size_t m1 = m0;
    while (m1 < head_len && head[m1] != ' ')
        m1++;
    req->method_name = loom_str_make(head + m0, m1 - m0);
    req->version_minor = loom__h1_version_minor(&c->parser);
    c->cur->keepalive = loom__h1_keepalive(&c->parser);
    split_target(req);

    bool chunked = loom__h1_chunked(&c->parser);
    uint64_t clen = loom__h1_content_length(&c->parser);
    bool has_body = chunked || (clen != UINT64_MAX && clen > 0);

    if (loom__h1_version_major(&c->parser) != 1) {
        c->refuse_status = 505;
        c->refuse_msg = "only HTTP/1.0 and HTTP/1.1 are supported";
        return -1;
    }
    int hosts = 0;
    bool has_te = false;
    struct loom_str expect = LOOM_STR_NULL, traceparent = LOOM_STR_NULL;
    for (size_t i = 0; i < n; i++) {
        struct loom_str name = hs[i].name;
        if (!loom__http_token(name) || !loom__http_field_value(hs[i].value)) {
            c->refuse_status = 400;
            c->refuse_msg = "malformed header field";
            return -1;
        }
        if (loom_str_ieq(name, LOOM_STR("host")))
            hosts++;
        else if (loom_str_ieq(name, LOOM_STR("transfer-encoding")))
            has_te = true;
        else if (loom_str_ieq(name, LOOM_STR("expect")))
            expect = hs[i].value;
        else if (loom_str_ieq(name, LOOM_STR("traceparent")))
            traceparent = hs[i].value;
    }
    if (has_te && clen != UINT64_MAX) {
        /* Request smuggling defence (RFC 9112 6.1): refuse and close. */
        c->refuse_status = 400;
        c->refuse_msg = "Content-Length together with Transfer-Encoding";
        return -1;
    }
    if (has_te && !chunked) {
        c->refuse_status = 400;
        c->refuse_msg = "unsupported Transfer-Encoding (only chunked is accepted)";
        return -1;
    }

    struct loom_trace_ctx parent;
    bool have_parent = traceparent.len && loom_trace_parse(traceparent, &parent) == LOOM_OK;
    loom_trace_child(have_parent ? &parent : NULL, &req->trace);

    if (req->version_minor == 1 && hosts != 1) {
        defer_refusal(c, 400, hosts ? "more than one Host header" : "missing Host header");
    } else if (req->method == LOOM_HTTP_OTHER) {
        defer_refusal(c, 501, "method %.*s is not supported", LOOM_STR_FMT(req->method_name));
    } else {
        loom_router_match(s->router, req->method, req->path, &req->match);
        req->route = req->match.route;
        if (!req->route && req->match.allowed) {
            char allow[96];
            loom_http_allow_list(req->match.allowed, allow, sizeof(allow));
            loom_http_resp_header(req, "Allow", loom_str_cstr(allow));
            defer_refusal(c, 405, "method %s is not allowed on %.*s (allowed: %s)",
                          loom_http_method_name(req->method), LOOM_STR_FMT(req->path), allow);
        } else if (!req->route) {
            defer_refusal(c, 404, "no route for %.*s", LOOM_STR_FMT(req->path));
        }
        for (size_t i = 0; req->route && i < req->match.nparams; i++) {
            if (loom_http_url_decode(req->match.values[i], false, &c->cur->arena,
                                     &req->match.values[i])) {
                defer_refusal(c, 400, "malformed percent-encoding in the path");
                break;
            }
        }
    }
    c->body_limit =
        req->route && req->route->max_body ? req->route->max_body : limits(c)->max_body_bytes;
    if (expect.len) {
        if (!loom_str_ieq(expect, LOOM_STR("100-continue"))) {
            c->refuse_status = 417;
            c->refuse_msg = "only Expect: 100-continue is supported";
            return -1;
        }
    }
    if (has_body && c->deferred_status) {
        /* Refused before its body: answer now and close rather than read a body we discard. */
        c->refuse_status = c->deferred_status;
        c->refuse_msg = c->deferred_msg;
        return -1;
    }
    if (clen != UINT64_MAX && clen > c->body_limit) {
        c->refuse_status = 413;
        c->refuse_msg = "request body is larger than this route accepts";
        return -1;
    }
    bool stream = req->route && (req->route->flags & LOOM_ROUTE_STREAM) && !c->deferred_status;
    if (c->pipe_head && (stream || (expect.len && has_body))) {
        c->replay = true; /* its handler, or its 100, must not go ahead of earlier answers */
        return -1;
    }
    if (expect.len && has_body && req->version_minor == 1) {
        /* A streaming handler may answer before it wants the body (an unknown stream, say):
         * the client then never sends it, so the 100 waits for loom_http_req_read_body. */
        if (stream) {
            c->continue_owed = true;
        } else {
            loom_buf_append_cstr(out_tail(c), "HTTP/1.1 100 Continue\r\n\r\n");
            conn_kick(c);
        }
    }
    if (clen != UINT64_MAX && clen > 0 && !stream)
        loom_buf_reserve(&c->cur->body, (size_t)clen);
    c->state = C_BODY;
    set_deadline(c, loom_loop_now(c->ls->loop) + limits(c)->idle_timeout);
    if (stream) {
        /* The handler runs now and reads the body as it comes (loom_http_req_read_body). */
        c->streaming = true;
        c->body_done = !has_body;
        loom_trace_set_current(&req->trace);
        req->route->handler(req);
        loom_trace_set_current(NULL);
    }
    return 0;
}

/* A streaming request's body is complete. */
static void stream_finish(struct loom__http_conn *c)
{
    c->body_done = true;
    if (!c->cur->responded && c->on_end && !c->end_called) {
        c->end_called = true;
        c->on_end(&c->cur->req, LOOM_OK, c->body_arg);
    }
    if (c->cur->responded) {
        complete_request(c);
    } else {
        c->state = C_HANDLING; /* the handler answers from on_end, or asks for the body later */
        set_deadline(c, UINT64_MAX);
    }
}

/* A streaming request's body failed (too large, malformed, refused by the sink): the handler
 * learns it from on_end and answers; the connection closes after that answer. */
static void stream_fail(struct loom__http_conn *c, int status)
{
    c->close_after = true;
    loom_err e = c->sink_err ? c->sink_err : status == 413 ? LOOM_ETOOBIG : LOOM_EPARSE;
    if (c->cur->responded) {
        conn_kick(c);
        return;
    }
    c->state = C_HANDLING;
    set_deadline(c, UINT64_MAX);
    if (c->on_end && !c->end_called) {
        c->end_called = true;
        c->on_end(&c->cur->req, e, c->body_arg);
    } else {
        c->body_err = e; /* told when the handler asks for the body */
    }
    update_interest(c);
}

void loom_http_req_read_body(struct loom_http_req *req, loom_http_body_fn on_data,
                             loom_http_end_fn on_end, void *arg)
{
    struct loom__http_conn *c = req->conn;
    c->on_data = on_data;
    c->on_end = on_end;
    c->body_arg = arg;
    if (c->continue_owed && !c->cur->responded && !c->closed) {
        c->continue_owed = false;
        loom_buf_append_cstr(out_tail(c), "HTTP/1.1 100 Continue\r\n\r\n");
        conn_kick(c);
    }
    loom_err e = c->body_err;
    if (!e && c->cur->body.len) {
        /* What arrived before the handler asked. */
        e = on_data(req, loom_buf_str(&c->cur->body), arg);
        loom_buf_release(&c->cur->body);
        if (e) {
            c->sink_err = e;
            c->close_after = true;
        }
    }
    if (e || (c->body_done && !c->closed) || c->closed) {
        c->end_called = true;
        on_end(req, c->closed ? LOOM_ECLOSED : e, arg);
    }
}

static int on_body(void *ud, const char *at, size_t len)
{
    struct loom__http_conn *c = cb_conn(ud);
    c->deadline = loom_loop_now(c->ls->loop) + limits(c)->idle_timeout;
    if (c->streaming && c->cur->responded)
        return 0; /* answered early: the rest is read only to be dropped, then we close */
    c->body_seen += len;
    if (c->body_seen > c->body_limit) {
        c->refuse_status = 413;
        c->refuse_msg = "request body is larger than this route accepts";
        return -1;
    }
    if (c->streaming && c->on_data) {
        loom_err e = c->on_data(&c->cur->req, loom_str_make(at, len), c->body_arg);
        if (e) {
            c->sink_err = e;
            c->refuse_status = loom_err_http_status(e);
            c->refuse_msg = "the request body was refused";
            return -1;
        }
        return 0;
    }
    if (loom_buf_append(&c->cur->body, at, len)) {
        c->refuse_status = 413;
        c->refuse_msg = "request body is larger than this route accepts";
        return -1;
    }
    return 0;
}

static int on_chunk_header(void *ud, uint64_t len)
{
    struct loom__http_conn *c = cb_conn(ud);
    if (len > c->body_limit - c->cur->body.len) {
        c->refuse_status = 413;
        c->refuse_msg = "request body is larger than this route accepts";
        return -1;
    }
    return 0;
}

static int on_message_complete(void *ud)
{
    struct loom__http_conn *c = cb_conn(ud);
    c->state = C_READY;
    return 0;
}

static const struct loom__h1_callbacks h1_callbacks = {
    .on_message_begin = on_message_begin,
    .on_target = on_target,
    .on_header_name = on_header_name,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_chunk_header = on_chunk_header,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- input ---- */

/* Nothing more is read or parsed until a handler answers or the pipeline moves. */
static bool blocked(const struct loom__http_conn *c)
{
    return c->state == C_HANDLING || c->state == C_READY || c->replay || c->npipe >= PIPE_MAX;
}

static void update_interest(struct loom__http_conn *c)
{
    if (c->closed)
        return;
    bool want_read = !blocked(c) && !c->close_after && !c->peer_eof &&
                     output_backlog(c) < limits(c)->max_pending_out;
    unsigned ev = c->io.events & LOOM_IO_WRITE;
    if (want_read || blocked(c))
        ev |= LOOM_IO_READ; /* while blocked: only to notice the client leaving (see on_io) */
    loom_io_start(&c->io, ev);
}

static void process_input(struct loom__http_conn *c)
{
    if (!c->pipe_head) {
        c->replay = false;
        if (c->state == C_READY && !c->closed)
            dispatch(c); /* it waited for the pipeline to empty */
    }
    /* A file body goes out after everything queued before it: answer nothing more until it has. */
    while (!c->closed && !c->close_after && !blocked(c) && c->in_off < c->in.len &&
           c->file_fd < 0 && output_backlog(c) < limits(c)->max_pending_out) {
        if (c->state == C_IDLE) {
            c->msg_start = c->in_off;
            set_deadline(c, loom_loop_now(c->ls->loop) + limits(c)->header_timeout);
        }
        size_t used = 0;
        enum loom__h1_status st =
            loom__h1_execute(&c->parser, c->in.data + c->in_off, c->in.len - c->in_off, &used);
        c->in_off += used;
        if (st == LOOM__H1_ERROR) {
            if (c->replay) {
                replay_later(c);
                break;
            }
            int status = c->refuse_status ? c->refuse_status : 400;
            if (c->streaming) {
                stream_fail(c, status);
                return;
            }
            char msg[200];
            if (c->refuse_msg)
                snprintf(msg, sizeof(msg), "%s", c->refuse_msg);
            else
                snprintf(msg, sizeof(msg), "malformed request: %s", loom__h1_error(&c->parser));
            refuse_and_close(c, status, msg);
            return;
        }
        if (st == LOOM__H1_MORE) {
            if ((c->state == C_HEAD || c->state == C_IDLE) &&
                c->in_off - c->msg_start > limits(c)->max_header_bytes) {
                refuse_and_close(c, 431, "request header fields too large");
                return;
            }
            break;
        }
        if (c->streaming)
            stream_finish(c);
        else if (!c->pipe_head || c->deferred_status || parallel_route(c))
            dispatch(c);
        /* else C_READY: dispatched when the pipeline is empty */
    }
    /* Compact: keep only the unparsed bytes, and the current head if it is incomplete (its
     * offsets are relative to msg_start, so moving it is safe). */
    size_t keep_from = (c->state == C_HEAD) ? c->msg_start : c->in_off;
    if (keep_from > 0) {
        loom_buf_consume(&c->in, keep_from);
        c->in_off -= keep_from;
        c->msg_start = c->msg_start >= keep_from ? c->msg_start - keep_from : 0;
    }
    update_interest(c);
}

static void abort_request(struct rq *r)
{
    struct abort_hook *h = r->abort_hooks;
    r->abort_hooks = NULL;
    for (; h; h = h->next)
        h->fn(h->arg);
}

/* Lingering: discard what the client sends until it closes, it is quiet for LINGER_IDLE, or
 * LINGER_MAX has passed. */
static void linger_read(struct loom__http_conn *c)
{
    char buf[16384];
    for (int i = 0;; i++) {
        ssize_t n = read(c->fd, buf, sizeof(buf));
        if (n > 0 && i < 64)
            continue;
        if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR))) {
            /* Quiet, or enough for one turn (the loop calls again). */
            uint64_t now = loom_loop_now(c->ls->loop);
            set_deadline(c, LOOM_MIN(now + LINGER_IDLE, c->linger_end));
            return;
        }
        break; /* EOF or an error: the client has read the answer, or left */
    }
    conn_close(c);
}

static void on_io(struct loom_io *io, unsigned events)
{
    struct loom__http_conn *c = LOOM_CONTAINER_OF(io, struct loom__http_conn, io);
    if (c->lingering) {
        linger_read(c);
        return;
    }
    if (events & LOOM_IO_WRITE) {
        if (!flush(c))
            return;
        if (!output_pending(c))
            process_input(c);
    }
    if (c->closed || !(events & (LOOM_IO_READ | LOOM_IO_HUP | LOOM_IO_ERROR)))
        return;
    if (blocked(c)) {
        /* A handler has the request; the only thing to learn now is whether the client left.
         * Peek so that pipelined bytes stay in the socket. */
        char b;
        ssize_t n = recv(c->fd, &b, 1, MSG_PEEK);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            conn_close(c);
        } else if (n > 0) {
            loom_io_start(&c->io, c->io.events & ~(unsigned)LOOM_IO_READ);
        }
        return;
    }
    /* Start small (most heads fit in 4 KiB) and double up to the ceiling. */
    size_t room = c->in.cap ? c->in.cap - c->in.len - 1 : 0;
    if (room < 1024 && loom_buf_reserve(&c->in, c->in.len < 4096 ? 4096 : c->in.len)) {
        /* `in` is at its ceiling with no complete head in it. */
        if (c->state == C_HEAD || c->state == C_IDLE)
            refuse_and_close(c, 431, "request header fields too large");
        else
            update_interest(c);
        return;
    }
    ssize_t n = read(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len - 1);
    if (n > 0) {
        c->in.len += (size_t)n;
        c->in.data[c->in.len] = '\0';
        process_input(c);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    /* EOF or error: answers already queued are still sent if the socket allows. */
    c->peer_eof = true;
    /* Answers already given still go out; requests still with their handlers are for a client
     * that left (as a blocked connection learns with its peek). */
    if ((output_pending(c) || c->pipe_head) && !pipe_unanswered(c) && n == 0) {
        c->close_after = true;
        update_interest(c);
        return;
    }
    conn_close(c);
}

static void on_timer(struct loom_timer *t)
{
    struct loom__http_conn *c = LOOM_CONTAINER_OF(t, struct loom__http_conn, timer);
    uint64_t now = loom_loop_now(c->ls->loop);
    if (c->deadline == UINT64_MAX)
        return;
    if (c->deadline > now) {
        loom_timer_start_at(t, c->deadline);
        return;
    }
    if (c->lingering) {
        conn_close(c);
        return;
    }
    if (output_pending(c) || c->state == C_HANDLING) {
        conn_close(c); /* a client that stopped reading its answers */
        return;
    }
    bool partial = c->state == C_HEAD || c->state == C_BODY || c->in_off < c->in.len;
    if (c->pipe_head && blocked(c))
        return; /* what it has read waits for the handlers, not for the client */
    if (!partial) {
        if (!c->pipe_head)
            conn_close(c); /* idle keep-alive connection */
        return;            /* else the handlers have its requests */
    }
    refuse_and_close(c, 408,
                     c->state == C_BODY ? "request body not received in time"
                                        : "request header not received in time");
}

/* ---- connection lifecycle ---- */

static void conn_free(struct loom_task *task)
{
    struct loom__http_conn *c = LOOM_CONTAINER_OF(task, struct loom__http_conn, free_task);
    loom_buf_release(&c->in);
    loom_buf_release(&c->out);
    loom_buf_release(&c->out_big);
    file_done(c);
    loom_buf_release(&c->hoffs);
    rq_free(c->cur);
    for (struct rq *r = c->pipe_head, *next; r; r = next) {
        next = r->next;
        rq_free(r);
    }
    for (struct rq *r = c->spares, *next; r; r = next) {
        next = r->next;
        rq_free(r);
    }
    free(c);
}

static void listener_check_drained(struct listener *ls);

/*
 * Close after the last answer is out. Closing a socket with unread bytes in it makes the kernel
 * send RST, and a client's kernel that gets RST may discard the answer it had not yet read: a
 * client that was still sending a body (a refusal before the body ended, a 100-continue that
 * went on) would see "connection reset" instead of our 404 or 413. So, as nginx's lingering
 * close: shut the socket for writing (the client reads the answer, then EOF), read and discard
 * until the client closes, falls quiet for LINGER_IDLE, or LINGER_MAX has passed, then close.
 * A client that already closed, and a server that is draining, are closed at once.
 */
static void conn_linger(struct loom__http_conn *c)
{
    if (c->closed)
        return;
    if (c->peer_eof || c->ls->draining || shutdown(c->fd, SHUT_WR) != 0) {
        conn_close(c);
        return;
    }
    c->lingering = true;
    uint64_t now = loom_loop_now(c->ls->loop);
    c->linger_end = now + LINGER_MAX;
    loom_io_start(&c->io, LOOM_IO_READ);
    linger_read(c);
}

static void conn_close(struct loom__http_conn *c)
{
    if (c->closed)
        return;
    c->closed = true;
    struct listener *ls = c->ls;
    loom_io_stop(&c->io);
    loom_timer_stop(&c->timer);
    close(c->fd);
    c->fd = -1;
    if (c->prev)
        c->prev->next = c->next;
    else
        ls->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    ls->nconns--;
    atomic_fetch_sub(&ls->srv->nconns, 1);
    loom_gauge_sub(ls->srv->m_connections, 1);
    if (c->streaming && !c->cur->responded && c->on_end && !c->end_called) {
        c->end_called = true;
        c->on_end(&c->cur->req, LOOM_ECLOSED, c->body_arg); /* the handler answers (discarded) */
    }
    /* Handlers that still hold requests are told; the connection is freed once they answer
     * (see kick_task). */
    bool held_by_handler = false;
    if ((c->state == C_HANDLING || c->streaming) && !c->cur->responded) {
        held_by_handler = true;
        abort_request(c->cur);
    }
    for (struct rq *r = c->pipe_head; r; r = r->next) {
        if (!r->responded) {
            held_by_handler = true;
            abort_request(r);
        }
    }
    if (!held_by_handler)
        loom_loop_defer(ls->loop, &c->free_task, conn_free);
    if (!ls->draining && !ls->accepting)
        listener_accept_resume(ls);
    listener_check_drained(ls);
}

static void kick_task(struct loom_task *task)
{
    struct loom__http_conn *c = LOOM_CONTAINER_OF(task, struct loom__http_conn, kick_task);
    c->kick_pending = false;
    if ((c->state == C_HANDLING || (c->streaming && c->state == C_BODY)) && c->cur->responded) {
        if (c->state == C_BODY)
            c->close_after = true; /* answered before the body ended: do not read the rest */
        complete_request(c);
    }
    pipe_advance(c);
    if (c->closed) {
        if (c->state != C_HANDLING && !c->streaming && !c->pipe_head)
            loom_loop_defer(c->ls->loop, &c->free_task, conn_free);
        return;
    }
    if (!flush(c))
        return;
    process_input(c);
}

static void conn_kick(struct loom__http_conn *c)
{
    if (c->kick_pending)
        return;
    c->kick_pending = true;
    loom_loop_defer(c->ls->loop, &c->kick_task, kick_task);
}

static void conn_new(struct listener *ls, int fd)
{
    struct loom__http_conn *c = loom_new(struct loom__http_conn);
    c->ls = ls;
    c->fd = fd;
    loom_buf_init(&c->in, limits(c)->max_header_bytes + READ_SLACK);
    loom_buf_init(&c->out, 0);
    loom_buf_init(&c->out_big, 0);
    c->file_fd = -1;
    loom_buf_init(&c->hoffs, 0);
    c->cur = rq_new(c);
    loom__h1_init(&c->parser, LOOM__H1_REQUEST, &h1_callbacks, c);
    reset_parse(c);
    loom_io_init(&c->io, ls->loop, fd, on_io);
    loom_timer_init(&c->timer, ls->loop, on_timer);
    c->next = ls->conns;
    if (ls->conns)
        ls->conns->prev = c;
    ls->conns = c;
    ls->nconns++;
    atomic_fetch_add(&ls->srv->nconns, 1);
    loom_gauge_add(ls->srv->m_connections, 1);
    set_deadline(c, loom_loop_now(ls->loop) + limits(c)->header_timeout);
    if (loom_io_start(&c->io, LOOM_IO_READ))
        conn_close(c);
}

/* ---- listeners ---- */

static void on_pause_timer(struct loom_timer *t)
{
    struct listener *ls = LOOM_CONTAINER_OF(t, struct listener, pause_timer);
    listener_accept_resume(ls);
}

static void listener_accept_resume(struct listener *ls)
{
    if (ls->fd < 0 || ls->draining || ls->nconns >= ls->srv->cfg.limits.max_connections)
        return;
    if (loom_io_start(&ls->io, LOOM_IO_READ) == LOOM_OK)
        ls->accepting = true;
}

static void listener_accept_pause(struct listener *ls)
{
    loom_io_stop(&ls->io);
    ls->accepting = false;
}

static void on_accept(struct loom_io *io, unsigned events)
{
    LOOM_UNUSED(events);
    struct listener *ls = LOOM_CONTAINER_OF(io, struct listener, io);
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        if (ls->nconns >= ls->srv->cfg.limits.max_connections) {
            listener_accept_pause(ls);
            return;
        }
        int fd = accept4(ls->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: pause rather than spin on a ready listener. */
                loom_log_warn("accept: %s; pausing for 100 ms", strerror(errno));
                listener_accept_pause(ls);
                loom_timer_start(&ls->pause_timer, 100 * LOOM_NS_PER_MS, 0);
            }
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        conn_new(ls, fd);
    }
}

static struct listener *listener_of(struct loom_http_server *s, struct loom_loop *loop)
{
    pthread_mutex_lock(&s->mu);
    struct listener *found = NULL;
    for (size_t i = 0; i < s->nlisteners && !found; i++)
        if (s->listeners[i]->loop == loop)
            found = s->listeners[i];
    pthread_mutex_unlock(&s->mu);
    return found;
}

loom_err loom_http_server_listen(struct loom_http_server *s, struct loom_loop *loop,
                                 const char *addr, struct loom_error *err)
{
    if (listener_of(s, loop))
        return loom_error_set(err, LOOM_EEXIST, "already listening on this loop");
    struct loom_sockaddr sa;
    loom_err e = loom_net_resolve(addr, true, &sa, err);
    if (e)
        return e;
    pthread_mutex_lock(&s->mu);
    if (s->port > 0)
        loom_net_set_port(&sa, s->port);
    /* The loops' listeners share the port through SO_REUSEPORT, which would let another
     * process share it too: the first checks that nobody holds it (a unix path is checked by
     * loom_net_listen itself). */
    if (sa.ss.ss_family != AF_UNIX && !s->nlisteners && s->port <= 0 &&
        !loom_net_addr_free(&sa, err)) {
        pthread_mutex_unlock(&s->mu);
        return LOOM_EIO;
    }
    /* A unix socket cannot be bound once per loop: the loops share one, each with its own fd. */
    int fd = sa.ss.ss_family == AF_UNIX && s->nlisteners && s->listeners[0]->fd >= 0
                 ? fcntl(s->listeners[0]->fd, F_DUPFD_CLOEXEC, 0)
                 : loom_net_listen(&sa, true, 4096, err);
    if (fd < 0) {
        if (err && !err->code)
            loom_error_errno(err, "dup of the listening socket");
        pthread_mutex_unlock(&s->mu);
        return LOOM_EIO;
    }
    if (s->port <= 0)
        s->port = loom_net_local_port(fd);
    if (sa.ss.ss_family == AF_UNIX && !s->unix_path && !s->nlisteners)
        s->unix_path = loom_strdup(((const struct sockaddr_un *)&sa.ss)->sun_path);
    struct listener *ls = loom_new(struct listener);
    ls->srv = s;
    ls->loop = loop;
    ls->fd = fd;
    loom_io_init(&ls->io, loop, fd, on_accept);
    loom_timer_init(&ls->pause_timer, loop, on_pause_timer);
    s->listeners = loom_realloc(s->listeners, (s->nlisteners + 1) * sizeof(*s->listeners));
    s->listeners[s->nlisteners++] = ls;
    pthread_mutex_unlock(&s->mu);
    listener_accept_resume(ls);
    if (!ls->accepting)
        return loom_error_set(err, LOOM_EIO, "cannot watch the listening socket");
    return LOOM_OK;
}

void loom__http_server_adopt(struct loom_http_server *s, struct loom_loop *loop, int fd)
{
    struct listener *ls = listener_of(s, loop);
    if (!ls) {
        ls = loom_new(struct listener);
        ls->srv = s;
        ls->loop = loop;
        ls->fd = -1;
        loom_io_init(&ls->io, loop, -1, on_accept);
        loom_timer_init(&ls->pause_timer, loop, on_pause_timer);
        pthread_mutex_lock(&s->mu);
        s->listeners = loom_realloc(s->listeners, (s->nlisteners + 1) * sizeof(*s->listeners));
        s->listeners[s->nlisteners++] = ls;
        pthread_mutex_unlock(&s->mu);
    }
    conn_new(ls, fd);
}

int loom_http_server_port(const struct loom_http_server *s)
{
    return s->port;
}

size_t loom_http_server_connections(const struct loom_http_server *s)
{
    return atomic_load(&((struct loom_http_server *)s)->nconns);
}

static void drained_task(struct loom_task *task)
{
    struct listener *ls = LOOM_CONTAINER_OF(task, struct listener, drained_task);
    loom_http_drained_fn fn = ls->drained;
    ls->drained = NULL;
    if (fn)
        fn(ls->srv, ls->loop, ls->drained_arg);
}

static void listener_check_drained(struct listener *ls)
{
    if (ls->draining && ls->nconns == 0 && ls->drained)
        loom_loop_defer(ls->loop, &ls->drained_task, drained_task);
}

/* The socket file goes with the first listener to stop: a client then finds no server rather
 * than one that no longer accepts. */
static void unlink_unix_path(struct loom_http_server *s)
{
    pthread_mutex_lock(&s->mu);
    if (s->unix_path)
        unlink(s->unix_path);
    free(s->unix_path);
    s->unix_path = NULL;
    pthread_mutex_unlock(&s->mu);
}

static void listener_close_fd(struct listener *ls)
{
    if (ls->fd < 0)
        return;
    unlink_unix_path(ls->srv);
    loom_io_stop(&ls->io);
    loom_timer_stop(&ls->pause_timer);
    close(ls->fd);
    ls->fd = -1;
    ls->accepting = false;
}

void loom_http_server_drain(struct loom_http_server *s, struct loom_loop *loop,
                            loom_http_drained_fn done, void *arg)
{
    struct listener *ls = listener_of(s, loop);
    if (!ls) {
        if (done)
            done(s, loop, arg);
        return;
    }
    ls->draining = true;
    ls->drained = done;
    ls->drained_arg = arg;
    listener_close_fd(ls);
    struct loom__http_conn *c = ls->conns;
    while (c) {
        struct loom__http_conn *next = c->next;
        /* Busy connections finish their request: its response says Connection: close. */
        if (c->state == C_IDLE && c->in_off == c->in.len && !output_pending(c) && !c->pipe_head)
            conn_close(c);
        c = next;
    }
    listener_check_drained(ls);
}

void loom_http_server_close_all(struct loom_http_server *s, struct loom_loop *loop)
{
    struct listener *ls = listener_of(s, loop);
    if (!ls)
        return;
    listener_close_fd(ls);
    while (ls->conns)
        conn_close(ls->conns);
}

static void free_conn_now(struct loom__http_conn *c)
{
    if (!c->closed) {
        close(c->fd);
        c->closed = true;
    }
    conn_free(&c->free_task);
}

void loom_http_server_free(struct loom_http_server *s)
{
    if (!s)
        return;
    unlink_unix_path(s);
    for (size_t i = 0; i < s->nlisteners; i++) {
        struct listener *ls = s->listeners[i];
        if (ls->fd >= 0)
            close(ls->fd);
        while (ls->conns) {
            struct loom__http_conn *c = ls->conns;
            ls->conns = c->next;
            free_conn_now(c);
        }
        free(ls);
    }
    free(s->listeners);
    loom_router_free(s->router);
    free(s->route_metrics);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

struct loom_http_server *loom_http_server_new(const struct loom_http_server_config *config,
                                              struct loom_error *err)
{
    /* sendfile(2) has no MSG_NOSIGNAL: a peer that leaves mid-file would kill the process. */
    struct sigaction pipe_sa;
    if (sigaction(SIGPIPE, NULL, &pipe_sa) == 0 && pipe_sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
    struct loom_http_server *s = loom_new(struct loom_http_server);
    s->cfg = *config;
    struct loom_http_limits *l = &s->cfg.limits;
    if (!l->max_header_bytes)
        l->max_header_bytes = 32 * 1024;
    if (!l->max_headers)
        l->max_headers = 100;
    if (!l->max_body_bytes)
        l->max_body_bytes = 1024 * 1024;
    if (!l->header_timeout)
        l->header_timeout = 10 * LOOM_NS_PER_SEC;
    if (!l->idle_timeout)
        l->idle_timeout = 60 * LOOM_NS_PER_SEC;
    if (!l->max_connections)
        l->max_connections = 10000;
    if (!l->max_pending_out)
        l->max_pending_out = 1024 * 1024;
    if (!s->cfg.error_body)
        s->cfg.error_body = loom_http_error_json;
    if (!s->cfg.name)
        s->cfg.name = "loom";
    s->router = loom_router_new(config->routes, config->nroutes, err);
    if (!s->router) {
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->mu, NULL);
    s->route_metrics = loom_calloc(config->nroutes + 1, sizeof(*s->route_metrics));

    struct loom_metrics *reg = loom_metrics_global();
    char name[128];
    snprintf(name, sizeof(name), "loom_%s_http_requests_total", s->cfg.name);
    static const char *const req_labels[] = { "route", "method", "code" };
    s->m_requests =
        loom_metrics_counter_family(reg, s->cfg.name, name,
                                    "HTTP requests answered, by route template, method and "
                                    "status code.",
                                    req_labels, 3);
    snprintf(name, sizeof(name), "loom_%s_http_request_duration_seconds", s->cfg.name);
    s->m_duration = loom_metrics_histogram_family(
        reg, s->cfg.name, name, "Time from a complete request head to its response.", req_labels, 2,
        NULL, 0);
    snprintf(name, sizeof(name), "loom_%s_http_connections", s->cfg.name);
    s->m_connections = loom_metrics_gauge(reg, s->cfg.name, name, "Open HTTP connections.");
    return s;
}
