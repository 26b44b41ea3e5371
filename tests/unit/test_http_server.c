/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests for the HTTP/1.1 server, through real sockets: a loop thread serves a small route
 * table and the tests speak raw HTTP to it, so every byte on the wire is under control
 * (pipelining, fragments, malformed heads, slow clients, disconnects).
 */
#include "check.h"

#include <loom/http.h>
#include <loom/log.h>
#include <loom/net.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- handlers ---- */

static void h_hello(struct loom_http_req *req)
{
    loom_http_respond(req, 200, "text/plain", LOOM_STR("hello"));
}

static void h_echo(struct loom_http_req *req)
{
    loom_http_resp_headerf(req, "X-Body-Length", "%zu", req->body.len);
    loom_http_respond(req, 200, "application/octet-stream", req->body);
}

static void h_params(struct loom_http_req *req)
{
    struct loom_str name = loom_http_req_param(req, "name");
    struct loom_str version = loom_http_req_param(req, "version");
    struct loom_str q = LOOM_STR_NULL;
    loom_http_req_query(req, "q", &q);
    char out[256];
    int n = snprintf(out, sizeof(out), "%.*s|%.*s|%.*s", LOOM_STR_FMT(name), LOOM_STR_FMT(version),
                     LOOM_STR_FMT(q));
    loom_http_respond(req, 200, "text/plain", loom_str_make(out, (size_t)n));
}

static void h_rest(struct loom_http_req *req)
{
    loom_http_respond(req, 200, "text/plain", loom_http_req_param(req, "rest"));
}

static void h_trace(struct loom_http_req *req)
{
    char out[128];
    int n = snprintf(out, sizeof(out), "%s %s", req->trace.trace_hex, req->trace.span_hex);
    loom_http_respond(req, 200, "text/plain", loom_str_make(out, (size_t)n));
}

static void h_big(struct loom_http_req *req)
{
    struct loom_buf b;
    loom_buf_init(&b, 0);
    for (int i = 0; i < 200000; i++)
        loom_buf_putc(&b, (char)('a' + i % 26));
    loom_http_respond_buf(req, 200, "text/plain", &b);
}

/* Answers 20 ms later, from a timer: the asynchronous path. */
struct later {
    struct loom_timer t;
    struct loom_http_req *req;
};
static atomic_int aborted_count;

static void later_fire(struct loom_timer *t)
{
    struct later *l = LOOM_CONTAINER_OF(t, struct later, t);
    bool was_aborted = loom_http_req_is_aborted(l->req);
    loom_http_respond(l->req, 200, "text/plain", was_aborted ? LOOM_STR("gone") : LOOM_STR("late"));
}

static void later_abort(void *arg)
{
    LOOM_UNUSED(arg);
    atomic_fetch_add(&aborted_count, 1);
}

static void h_async(struct loom_http_req *req)
{
    struct later *l = loom_arena_new(req->arena, struct later);
    l->req = req;
    loom_timer_init(&l->t, req->loop, later_fire);
    loom_timer_start(&l->t, 20 * LOOM_NS_PER_MS, 0);
    loom_http_req_on_abort(req, later_abort, NULL);
}

static void h_post_only(struct loom_http_req *req)
{
    loom_http_respond(req, 201, NULL, LOOM_STR_NULL);
}

/* ---- a parallel route (LOOM_ROUTE_PARALLEL) ---- */

/* /par/{id}: answers "{id}" and the body after X-Delay-Ms (0: at once), and keeps a log of
 * dispatches ("d1"), answers ("a1") and /seq's dispatches ("s"), and the most handlers that
 * held a request at once. */
static char par_log[512];
static int par_holding, par_max_holding;
static atomic_int par_aborted;

struct par {
    struct loom_timer t;
    struct loom_http_req *req;
};

static void par_log_add(const char *what, struct loom_str id)
{
    size_t n = strlen(par_log);
    snprintf(par_log + n, sizeof(par_log) - n, "%s%s%.*s", n ? " " : "", what, LOOM_STR_FMT(id));
}

static void par_answer(struct loom_http_req *req)
{
    struct loom_str id = loom_http_req_param(req, "id");
    par_log_add("a", id);
    char out[128];
    int n = snprintf(out, sizeof(out), "%.*s%.*s", LOOM_STR_FMT(id), LOOM_STR_FMT(req->body));
    loom_http_respond(req, 200, "text/plain", loom_str_make(out, (size_t)n));
}

static void par_fire(struct loom_timer *t)
{
    struct par *p = LOOM_CONTAINER_OF(t, struct par, t);
    par_holding--;
    if (!loom_http_req_is_aborted(p->req))
        par_answer(p->req);
    else
        loom_http_respond(p->req, 200, NULL, LOOM_STR_NULL);
}

static void par_abort(void *arg)
{
    LOOM_UNUSED(arg);
    atomic_fetch_add(&par_aborted, 1);
}

static void h_par(struct loom_http_req *req)
{
    par_log_add("d", loom_http_req_param(req, "id"));
    struct loom_str d = loom_http_req_header(req, "x-delay-ms");
    int ms = 0;
    for (size_t i = 0; i < d.len; i++)
        ms = ms * 10 + (d.ptr[i] - '0');
    if (ms == 0) {
        par_answer(req);
        return;
    }
    struct par *p = loom_arena_new(req->arena, struct par);
    p->req = req;
    loom_timer_init(&p->t, req->loop, par_fire);
    loom_timer_start(&p->t, (uint64_t)ms * LOOM_NS_PER_MS, 0);
    loom_http_req_on_abort(req, par_abort, NULL);
    if (++par_holding > par_max_holding)
        par_max_holding = par_holding;
}

static void h_seq(struct loom_http_req *req)
{
    par_log_add("s", LOOM_STR(""));
    loom_http_respond(req, 200, "text/plain", LOOM_STR("seq"));
}

/* ---- streaming bodies ---- */

struct upload {
    uint64_t bytes, sum, chunks;
    struct loom_timer t;
    struct loom_http_req *req;
};
static atomic_int stream_ends, stream_closed;

static loom_err up_data(struct loom_http_req *req, struct loom_str chunk, void *arg)
{
    LOOM_UNUSED(req);
    struct upload *u = arg;
    for (size_t i = 0; i < chunk.len; i++)
        u->sum = u->sum * 31 + (unsigned char)chunk.ptr[i];
    u->bytes += chunk.len;
    u->chunks++;
    /* A sink error: a byte the "disk" refuses. */
    return memchr(chunk.ptr, '!', chunk.len) ? LOOM_EIO : LOOM_OK;
}

static void up_end(struct loom_http_req *req, loom_err status, void *arg)
{
    struct upload *u = arg;
    atomic_fetch_add(&stream_ends, 1);
    if (status == LOOM_ECLOSED)
        atomic_fetch_add(&stream_closed, 1);
    if (status) {
        loom_http_respond_error(req, status == LOOM_EIO ? 507 : loom_err_http_status(status),
                                "upload failed: %s", loom_strerror(status));
        return;
    }
    char out[96];
    int n = snprintf(out, sizeof(out), "%llu %llu", (unsigned long long)u->bytes,
                     (unsigned long long)u->sum);
    loom_http_respond(req, 201, "text/plain", loom_str_make(out, (size_t)n));
}

static void up_later(struct loom_timer *t)
{
    struct upload *u = LOOM_CONTAINER_OF(t, struct upload, t);
    loom_http_req_read_body(u->req, up_data, up_end, u);
}

static void h_upload(struct loom_http_req *req)
{
    struct upload *u = loom_arena_new(req->arena, struct upload);
    u->req = req;
    struct loom_str mode = loom_http_req_header(req, "x-mode");
    if (loom_str_eq_cstr(mode, "refuse")) {
        loom_http_respond_error(req, 409, "refused before the body");
        return;
    }
    if (loom_str_eq_cstr(mode, "later")) {
        /* Ask for the body only after some asynchronous work: what came meanwhile waits. */
        loom_timer_init(&u->t, req->loop, up_later);
        loom_timer_start(&u->t, 30 * LOOM_NS_PER_MS, 0);
        return;
    }
    loom_http_req_read_body(req, up_data, up_end, u);
}

/* A file of 300,000 bytes (and a small one): sendfile for the large, a copy for the small. */
static char file_path[64];
static void h_file(struct loom_http_req *req)
{
    int fd = open(file_path, O_RDONLY);
    struct loom_str small = loom_http_req_param(req, "which");
    bool tiny = loom_str_eq_cstr(small, "small");
    loom_http_respond_file(req, 200, "application/octet-stream", fd, tiny ? 10 : 0,
                           tiny ? 100 : 300000);
}

/* A proxy's HEAD: the length of a body it does not have. */
static void h_proxied_head(struct loom_http_req *req)
{
    loom_http_respond_head(req, 200, "application/json", 12345);
}

static const struct loom_route routes[] = {
    { LOOM_HTTP_GET, "/hello", h_hello, 0, 0 },
    { LOOM_HTTP_POST, "/echo", h_echo, 1000, 0 },
    { LOOM_HTTP_GET, "/v2/models/{name}/versions/{version}/infer", h_params, 0, 0 },
    { LOOM_HTTP_GET, "/v2/models/{name}", h_params, 0, 0 },
    { LOOM_HTTP_GET, "/v2/models/special", h_hello, 0, 0 },
    { LOOM_HTTP_GET, "/files/{rest...}", h_rest, 0, 0 },
    { LOOM_HTTP_GET, "/trace", h_trace, 0, 0 },
    { LOOM_HTTP_GET, "/big", h_big, 0, 0 },
    { LOOM_HTTP_GET, "/async", h_async, 0, 0 },
    { LOOM_HTTP_POST, "/async", h_async, 0, 0 },
    { LOOM_HTTP_POST, "/only-post", h_post_only, 0, 0 },
    { LOOM_HTTP_DELETE, "/only-post", h_post_only, 0, 0 },
    { LOOM_HTTP_PUT, "/upload", h_upload, 1 << 20, LOOM_ROUTE_STREAM },
    { LOOM_HTTP_GET, "/file/{which}", h_file, 0, 0 },
    { LOOM_HTTP_GET, "/proxied", h_proxied_head, 0, 0 },
    { LOOM_HTTP_GET, "/par/{id}", h_par, 0, LOOM_ROUTE_PARALLEL },
    { LOOM_HTTP_POST, "/par/{id}", h_par, 0, LOOM_ROUTE_PARALLEL },
    { LOOM_HTTP_GET, "/seq", h_seq, 0, 0 },
};

/* ---- the server thread ---- */

static struct loom_loop *loop;
static struct loom_http_server *server;
static int port;
static pthread_t thread;

static void *serve(void *arg)
{
    LOOM_UNUSED(arg);
    loom_loop_run(loop);
    return NULL;
}

static void start_server(void)
{
    loop = loom_loop_new();
    struct loom_http_server_config cfg = {
        .name = "test",
        .routes = routes,
        .nroutes = LOOM_ARRAY_SIZE(routes),
        .limits = { .header_timeout = 300 * LOOM_NS_PER_MS, .idle_timeout = 500 * LOOM_NS_PER_MS },
    };
    struct loom_error err = { 0 };
    server = loom_http_server_new(&cfg, &err);
    CHECK(server != NULL);
    CHECK_INT(loom_http_server_listen(server, loop, "127.0.0.1:0", &err), LOOM_OK);
    port = loom_http_server_port(server);
    CHECK(port > 0);
    pthread_create(&thread, NULL, serve, NULL);
}

struct drain_call {
    struct loom_task task;
    atomic_bool drained;
};
static struct drain_call drain_call;

static void on_drained(struct loom_http_server *s, struct loom_loop *l, void *arg)
{
    LOOM_UNUSED(s);
    LOOM_UNUSED(l);
    struct drain_call *d = arg;
    atomic_store(&d->drained, true);
}

static void do_drain(struct loom_task *t)
{
    struct drain_call *d = LOOM_CONTAINER_OF(t, struct drain_call, task);
    loom_http_server_drain(server, loop, on_drained, d);
}

static void stop_server(void)
{
    loom_loop_stop(loop);
    pthread_join(thread, NULL);
    loom_http_server_free(server);
    loom_loop_free(loop);
}

/* ---- a raw client ---- */

static int dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK_INT(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    struct timeval tv = { .tv_sec = 5 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static void send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

static void send_str(int fd, const char *s)
{
    send_all(fd, s, strlen(s));
}

/* Read until the peer closes (or times out); returns a malloc'd NUL-terminated string. */
static char *read_all(int fd, size_t *len)
{
    struct loom_buf b;
    loom_buf_init(&b, 0);
    char tmp[65536];
    for (;;) {
        ssize_t n = recv(fd, tmp, sizeof(tmp), 0);
        if (n <= 0)
            break;
        loom_buf_append(&b, tmp, (size_t)n);
    }
    return loom_buf_detach(&b, len);
}

/* Read exactly one response (head + Content-Length body, or the head alone when `head_only`,
 * as for HEAD). Returns malloc'd text or NULL. */
static char *read_response_x(int fd, bool head_only)
{
    struct loom_buf b;
    loom_buf_init(&b, 0);
    size_t need = SIZE_MAX;
    char c;
    while (b.len < need) {
        ssize_t n = recv(fd, &c, 1, 0);
        if (n <= 0)
            break;
        loom_buf_putc(&b, c);
        if (need == SIZE_MAX && b.len >= 4 && memcmp(b.data + b.len - 4, "\r\n\r\n", 4) == 0) {
            const char *cl = strcasestr(b.data, "\r\nContent-Length: ");
            size_t body = cl ? strtoul(cl + 18, NULL, 10) : 0;
            if (strncmp(b.data, "HTTP/1.1 100", 12) == 0 || head_only)
                body = 0;
            need = b.len + body;
        }
    }
    if (b.len == 0) {
        loom_buf_release(&b);
        return NULL;
    }
    return loom_buf_detach(&b, NULL);
}

static char *read_response(int fd)
{
    return read_response_x(fd, false);
}

static bool peer_closed(int fd)
{
    char c;
    ssize_t n = recv(fd, &c, 1, 0);
    return n == 0 || (n < 0 && errno == ECONNRESET);
}

/* True if the peer has closed (without blocking when it has not). */
static bool peer_closed_nowait(int fd)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    if (poll(&p, 1, 0) <= 0)
        return false;
    char c;
    return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) <= 0;
}

static int status_of(const char *resp)
{
    return resp && strncmp(resp, "HTTP/1.1 ", 9) == 0 ? atoi(resp + 9) : -1;
}

static const char *body_of(const char *resp)
{
    const char *p = resp ? strstr(resp, "\r\n\r\n") : NULL;
    return p ? p + 4 : "";
}

/* ---- tests ---- */

static void test_basic_and_keepalive(void)
{
    int fd = dial();
    for (int i = 0; i < 3; i++) {
        send_str(fd, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
        char *r = read_response(fd);
        CHECK_INT(status_of(r), 200);
        CHECK_CONTAINS(r, "\r\nContent-Length: 5\r\n");
        CHECK_CONTAINS(r, "\r\nContent-Type: text/plain\r\n");
        CHECK_CONTAINS(r, "\r\nDate: ");
        CHECK_CONTAINS(r, " GMT\r\n");
        CHECK_STR(body_of(r), "hello");
        CHECK(strstr(r, "Connection: close") == NULL);
        free(r);
    }
    close(fd);
}

static void test_fragments(void)
{
    /* The head arrives a byte at a time; the header name and value are split everywhere. */
    const char *req = "GET /v2/models/m%20x/versions/7/infer?q=a%2Bb+c HTTP/1.1\r\n"
                      "Host: localhost\r\nX-Long-Header-Name: some value\r\n\r\n";
    int fd = dial();
    for (const char *p = req; *p; p++) {
        send_all(fd, p, 1);
        if ((p - req) % 7 == 0)
            usleep(200);
    }
    char *r = read_response(fd);
    CHECK_INT(status_of(r), 200);
    CHECK_STR(body_of(r), "m x|7|a+b c");
    free(r);
    close(fd);
}

static void test_pipelining(void)
{
    int fd = dial();
    send_str(fd, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
                 "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                 "GET /async HTTP/1.1\r\nHost: x\r\n\r\n"
                 "GET /v2/models/foo HTTP/1.1\r\nHost: x\r\n\r\n");
    char *r1 = read_response(fd), *r2 = read_response(fd), *r3 = read_response(fd),
         *r4 = read_response(fd);
    CHECK_STR(body_of(r1), "hello");
    CHECK_STR(body_of(r2), "abc");
    CHECK_STR(body_of(r3), "late"); /* the async answer keeps its place in line */
    CHECK_STR(body_of(r4), "foo||");
    free(r1);
    free(r2);
    free(r3);
    free(r4);
    close(fd);
}

/* The log and the holding count are the server thread's: read them once it is quiet. */
static void par_reset(void)
{
    usleep(20000);
    par_log[0] = '\0';
    par_holding = par_max_holding = 0;
    atomic_store(&par_aborted, 0);
}

#define PAR(id, ms) "GET /par/" #id " HTTP/1.1\r\nHost: x\r\nX-Delay-Ms: " #ms "\r\n\r\n"

static void test_parallel_pipelining(void)
{
    /* Requests to a parallel route are all dispatched before the first is answered; the
     * answers, given in the reverse order, leave in the order the requests came. */
    par_reset();
    int fd = dial();
    uint64_t t0 = loom_now_ns();
    send_str(
        fd,
        PAR(1, 80) PAR(2, 40) PAR(
            3,
            0) "POST /par/4 HTTP/1.1\r\nHost: x\r\nX-Delay-Ms: 10\r\nContent-Length: 3\r\n\r\nxyz");
    const char *want[] = { "1", "2", "3", "4xyz" };
    for (int i = 0; i < 4; i++) {
        char *r = read_response(fd);
        CHECK_INT(status_of(r), 200);
        CHECK_STR(body_of(r), want[i]);
        free(r);
    }
    uint64_t took = loom_now_ns() - t0;
    CHECK(took < 120 * LOOM_NS_PER_MS); /* together: 80 ms, not 80 + 40 + 10 */
    usleep(10000);
    CHECK_STR(par_log, "d1 d2 d3 a3 d4 a4 a2 a1");
    CHECK_INT(par_max_holding, 3);

    /* A request to another route waits until every answer before it is out; so does a
     * streaming one and one expecting 100 Continue (their heads are read again then). */
    par_reset();
    send_str(fd, PAR(5, 30) "GET /seq HTTP/1.1\r\nHost: x\r\n\r\n" PAR(
                     6, 10) "PUT /upload "
                            "HTTP/1.1\r\nHost: "
                            "x\r\nContent-Length: "
                            "5\r\n\r\nhello" PAR(7, 20) "POST /echo "
                                                        "HTTP/1.1\r\nHost: "
                                                        "x\r\nExpect: "
                                                        "100-continue\r\n"
                                                        "Content-Length: "
                                                        "2\r\n\r\nok" PAR(8, 0));
    char *r = read_response(fd);
    CHECK_STR(body_of(r), "5");
    free(r);
    r = read_response(fd);
    CHECK_STR(body_of(r), "seq");
    free(r);
    r = read_response(fd);
    CHECK_STR(body_of(r), "6");
    free(r);
    r = read_response(fd);
    CHECK_INT(status_of(r), 201);
    CHECK_STR(body_of(r), "5 99162322"); /* the whole body reached the stream */
    free(r);
    r = read_response(fd);
    CHECK_STR(body_of(r), "7");
    free(r);
    r = read_response(fd);
    CHECK_INT(status_of(r), 100);
    free(r);
    r = read_response(fd);
    CHECK_STR(body_of(r), "ok");
    free(r);
    r = read_response(fd);
    CHECK_STR(body_of(r), "8");
    free(r);
    usleep(10000);
    CHECK_STR(par_log, "d5 a5 s d6 a6 d7 a7 d8 a8");

    /* Refusals take their place in line; Connection: close ends the line after its answer. */
    par_reset();
    send_str(
        fd,
        PAR(9, 30) "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                   "GET /par/10 HTTP/1.1\r\nHost: x\r\nX-Delay-Ms: 10\r\nConnection: close\r\n\r\n"
                   "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    r = read_response(fd);
    CHECK_STR(body_of(r), "9");
    CHECK(strstr(r, "Connection: close") == NULL);
    free(r);
    r = read_response(fd);
    CHECK_INT(status_of(r), 404);
    CHECK(strstr(r, "Connection: close") == NULL);
    free(r);
    r = read_response(fd);
    CHECK_STR(body_of(r), "10");
    CHECK_CONTAINS(r, "Connection: close");
    free(r);
    CHECK(peer_closed(fd)); /* /hello, after the close, is not answered */
    close(fd);

    /* Waiting on a slow handler past the timeouts (300 ms for a head, 500 ms idle here) is not the
     * client's slowness: what was read waits, and is answered. */
    par_reset();
    fd = dial();
    send_str(fd, PAR(14, 700) "GET /seq HTTP/1.1\r\nHost: x\r\n\r\n"
                              "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    const char *slow[] = { "14", "seq", "hello" };
    for (int i = 0; i < 3; i++) {
        r = read_response(fd);
        CHECK_INT(status_of(r), 200);
        CHECK_STR(body_of(r), slow[i]);
        free(r);
    }
    close(fd);

    /* A client that leaves with requests in hand: every handler is told. */
    par_reset();
    fd = dial();
    send_str(fd, PAR(11, 100) PAR(12, 100) PAR(13, 100));
    usleep(20000);
    close(fd);
    usleep(150000);
    CHECK_INT(atomic_load(&par_aborted), 3);

    /* Many more than the pipeline holds at once: all answered, in order. */
    par_reset();
    fd = dial();
    struct loom_buf b;
    loom_buf_init(&b, 0);
    for (int i = 0; i < 100; i++)
        loom_buf_printf(&b, "GET /par/%d HTTP/1.1\r\nHost: x\r\nX-Delay-Ms: %d\r\n\r\n", i,
                        1 + (i * 7) % 5);
    send_all(fd, b.data, b.len);
    loom_buf_release(&b);
    for (int i = 0; i < 100; i++) {
        r = read_response(fd);
        char want_id[8];
        snprintf(want_id, sizeof(want_id), "%d", i);
        CHECK_STR(body_of(r), want_id);
        free(r);
    }
    CHECK(par_max_holding > 1);
    CHECK(par_max_holding <= 32);
    close(fd);
}

static void *send_many(void *arg)
{
    int fd = *(int *)arg;
    const char *one = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
    struct loom_buf b;
    loom_buf_init(&b, 0);
    for (int i = 0; i < 10000; i++)
        loom_buf_append_cstr(&b, one);
    loom_buf_append_cstr(&b, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    send_all(fd, b.data, b.len);
    loom_buf_release(&b);
    return NULL;
}

static void test_pipelining_10k(void)
{
    int fd = dial();
    pthread_t t;
    pthread_create(&t, NULL, send_many, &fd);
    size_t len;
    char *all = read_all(fd, &len);
    pthread_join(t, NULL);
    int count = 0;
    for (const char *p = all; (p = strstr(p, "HTTP/1.1 200 OK\r\n")); p++)
        count++;
    CHECK_INT(count, 10001);
    CHECK_CONTAINS(all + len - 200, "Connection: close");
    free(all);
    close(fd);
}

static void test_chunked_body(void)
{
    int fd = dial();
    send_str(fd, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\n");
    char *r = read_response(fd);
    CHECK_INT(status_of(r), 200);
    CHECK_STR(body_of(r), "hello world");
    CHECK_CONTAINS(r, "X-Body-Length: 11");
    free(r);
    /* The connection is still usable. */
    send_str(fd, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    r = read_response(fd);
    CHECK_STR(body_of(r), "hello");
    free(r);
    close(fd);
}

static void test_expect_continue(void)
{
    int fd = dial();
    send_str(fd,
             "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    char *r = read_response(fd);
    CHECK(r && strncmp(r, "HTTP/1.1 100 Continue\r\n\r\n", 25) == 0);
    free(r);
    send_str(fd, "ping");
    r = read_response(fd);
    CHECK_INT(status_of(r), 200);
    CHECK_STR(body_of(r), "ping");
    free(r);
    /* Too large: 413 instead of 100, and the body is never read. */
    send_str(
        fd,
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n");
    r = read_response(fd);
    CHECK_INT(status_of(r), 413);
    CHECK_CONTAINS(r, "Connection: close");
    CHECK(peer_closed(fd));
    free(r);
    close(fd);
    fd = dial();
    send_str(fd,
             "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: teapot\r\n\r\nping");
    r = read_response(fd);
    CHECK_INT(status_of(r), 417);
    free(r);
    close(fd);
}

/* Send `req`, expect `status`, a JSON error body, and the connection closed. */
static void expect_refusal(const char *req, size_t len, int status, const char *msg_part)
{
    int fd = dial();
    send_all(fd, req, len);
    char *r = read_response(fd);
    CHECK_INT(status_of(r), status);
    CHECK_CONTAINS(r, "Connection: close");
    CHECK_CONTAINS(body_of(r), "{\"error\":\"");
    if (msg_part)
        CHECK_CONTAINS(body_of(r), msg_part);
    CHECK(peer_closed(fd));
    free(r);
    close(fd);
}

static void test_bad_requests(void)
{
#define REFUSE(req, status, msg) expect_refusal(req, sizeof(req) - 1, status, msg)
    REFUSE(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nabc\r\n0\r\n\r\n",
        400, NULL);
    REFUSE(
        "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        "3\r\nabc\r\n0\r\n\r\n",
        400, NULL);
    REFUSE("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
           "chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
           400, "chunk size");
    REFUSE("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc", 400,
           "Transfer-Encoding");
    /* Chunked framing is strict: data must end in CRLF, sizes are hex, lines end in CRLF. */
    REFUSE("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           "5\r\nhelloAB3\r\nabc\r\n0\r\n\r\n",
           400, "CRLF after chunk data");
    REFUSE(
        "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        400, "chunk size");
    REFUSE("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n",
           400, "chunk size");
    REFUSE("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           "10000000000000000\r\n",
           400, "too large");
    REFUSE("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           "0\r\nBad Trailer: x\r\n\r\n",
           400, NULL);
    REFUSE("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\rX", 400,
           "ending the chunked body");
    REFUSE("GET /hello HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400, NULL);
    REFUSE("GET /hello HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\rX-B: b\r\n\r\n", 400, NULL);
    REFUSE("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
           400, NULL);
    REFUSE("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, NULL);
    REFUSE("GET /hello HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n", 400, NULL);
    REFUSE("GET /hello HTTP/2.0\r\nHost: x\r\n\r\n", 505, NULL);
    REFUSE("GARBAGE\r\n\r\n", 400, NULL);
    REFUSE("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n", 413, NULL);
    REFUSE("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           "3e9\r\n",
           413, NULL);
#undef REFUSE
    /* Chunked body that grows past the limit over several chunks. */
    struct loom_buf b;
    loom_buf_init(&b, 0);
    loom_buf_append_cstr(&b,
                         "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 30; i++) {
        loom_buf_append_cstr(&b, "40\r\n");
        for (int j = 0; j < 64; j++)
            loom_buf_putc(&b, 'z');
        loom_buf_append_cstr(&b, "\r\n");
    }
    expect_refusal(b.data, b.len, 413, NULL);
    /* A head over 32 KiB: 431. */
    loom_buf_reset(&b);
    loom_buf_append_cstr(&b, "GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: ");
    for (int i = 0; i < 40000; i++)
        loom_buf_putc(&b, 'a');
    loom_buf_append_cstr(&b, "\r\n\r\n");
    expect_refusal(b.data, b.len, 431, NULL);
    /* Many small headers: 431 too. */
    loom_buf_reset(&b);
    loom_buf_append_cstr(&b, "GET /hello HTTP/1.1\r\nHost: x\r\n");
    for (int i = 0; i < 150; i++)
        loom_buf_printf(&b, "X-H%d: v\r\n", i);
    loom_buf_append_cstr(&b, "\r\n");
    expect_refusal(b.data, b.len, 431, "too many");
    /* A URL over the limit. */
    loom_buf_reset(&b);
    loom_buf_append_cstr(&b, "GET /");
    for (int i = 0; i < 40000; i++)
        loom_buf_putc(&b, 'u');
    loom_buf_append_cstr(&b, " HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_refusal(b.data, b.len, 431, NULL);
    loom_buf_release(&b);
}

static void test_routing_errors(void)
{
    int fd = dial();
    send_str(fd, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    char *r = read_response(fd);
    CHECK_INT(status_of(r), 404);
    CHECK_CONTAINS(r, "Content-Type: application/json");
    CHECK_CONTAINS(body_of(r), "no route for /nope");
    free(r);
    /* The connection survives a 404 without a body. */
    send_str(fd, "GET /only-post HTTP/1.1\r\nHost: x\r\n\r\n");
    r = read_response(fd);
    CHECK_INT(status_of(r), 405);
    CHECK_CONTAINS(r, "\r\nAllow: POST, DELETE\r\n");
    free(r);
    send_str(fd, "POST /only-post HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    r = read_response(fd);
    CHECK_INT(status_of(r), 201);
    CHECK_CONTAINS(r, "Content-Length: 0");
    free(r);
    send_str(fd, "GET /v2/models/special HTTP/1.1\r\nHost: x\r\n\r\n");
    r = read_response(fd);
    CHECK_STR(body_of(r), "hello"); /* the literal wins over {name} */
    free(r);
    send_str(fd, "GET /files/a/b/c.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    r = read_response(fd);
    CHECK_STR(body_of(r), "a/b/c.txt");
    free(r);
    send_str(fd, "HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    r = read_response_x(fd, true);
    CHECK_INT(status_of(r), 200);
    CHECK_CONTAINS(r, "Content-Length: 5");
    free(r);
    send_str(fd, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"); /* no body was sent for HEAD */
    r = read_response(fd);
    CHECK_STR(body_of(r), "hello");
    free(r);
    /* An Upgrade we do not speak is ignored (RFC 9110 7.8); the next request still parses. */
    send_str(fd, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
                 "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
                 "GET /v2/models/up HTTP/1.1\r\nHost: x\r\n\r\n");
    r = read_response(fd);
    CHECK_STR(body_of(r), "hello");
    free(r);
    r = read_response(fd);
    CHECK_STR(body_of(r), "up||");
    free(r);
    send_str(fd, "BREW /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    r = read_response(fd);
    CHECK(status_of(r) == 501 || status_of(r) == 400);
    free(r);
    close(fd);
    /* HTTP/1.1 without Host */
    fd = dial();
    send_str(fd, "GET /hello HTTP/1.1\r\n\r\n");
    r = read_response(fd);
    CHECK_INT(status_of(r), 400);
    CHECK_CONTAINS(body_of(r), "Host");
    free(r);
    close(fd);
    /* Malformed escape in a path parameter */
    fd = dial();
    send_str(fd, "GET /v2/models/a%zz HTTP/1.1\r\nHost: x\r\n\r\n");
    r = read_response(fd);
    CHECK_INT(status_of(r), 400);
    free(r);
    close(fd);
}

static void test_http10(void)
{
    int fd = dial();
    send_str(fd, "GET /hello HTTP/1.0\r\n\r\n");
    size_t len;
    char *r = read_all(fd, &len);
    CHECK_INT(status_of(r), 200);
    CHECK_CONTAINS(r, "Connection: close");
    CHECK_STR(body_of(r), "hello");
    free(r);
    close(fd);
}

static void test_timeouts(void)
{
    /* Slowloris: a head that never completes gets 408 after the header timeout. */
    int fd = dial();
    send_str(fd, "GET /hello HTTP/1.1\r\nHost: x\r\n");
    uint64_t t0 = loom_now_ns();
    for (int i = 0; i < 10; i++) {
        usleep(50000);
        send_str(fd, "X: y\r\n"); /* trickling bytes does not extend the deadline */
    }
    char *r = read_response(fd);
    uint64_t waited = loom_now_ns() - t0;
    CHECK_INT(status_of(r), 408);
    CHECK(waited < 2 * LOOM_NS_PER_SEC);
    CHECK(peer_closed(fd));
    free(r);
    close(fd);
    /* An idle keep-alive connection is closed quietly. */
    fd = dial();
    send_str(fd, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    r = read_response(fd);
    CHECK_INT(status_of(r), 200);
    free(r);
    t0 = loom_now_ns();
    CHECK(peer_closed(fd));
    waited = loom_now_ns() - t0;
    CHECK(waited >= 400 * LOOM_NS_PER_MS && waited < 2 * LOOM_NS_PER_SEC);
    close(fd);
    /* A connection that never sends anything is closed after the header timeout. */
    fd = dial();
    CHECK(peer_closed(fd));
    close(fd);
    /* A stalled body gets 408 after the idle timeout. */
    fd = dial();
    send_str(fd, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc");
    r = read_response(fd);
    CHECK_INT(status_of(r), 408);
    free(r);
    close(fd);
}

static void test_trace(void)
{
    int fd = dial();
    send_str(fd, "GET /trace HTTP/1.1\r\nHost: x\r\n"
                 "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n");
    char *r = read_response(fd);
    CHECK(strncmp(body_of(r), "4bf92f3577b34da6a3ce929d0e0e4736 ", 33) == 0);
    CHECK(strstr(body_of(r), "00f067aa0ba902b7") == NULL); /* a new span of our own */
    free(r);
    send_str(fd, "GET /trace HTTP/1.1\r\nHost: x\r\ntraceparent: garbage\r\n\r\n");
    r = read_response(fd);
    CHECK_INT(status_of(r), 200); /* a bad traceparent starts a new trace */
    CHECK_UINT(strlen(body_of(r)), 32 + 1 + 16);
    free(r);
    close(fd);
}

static void test_big_response(void)
{
    int fd = dial();
    send_str(fd, "GET /big HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    char *r = read_response(fd);
    CHECK_INT(status_of(r), 200);
    const char *body = body_of(r);
    CHECK_UINT(strlen(body), 200000);
    CHECK(body[199999] == (char)('a' + 199999 % 26));
    free(r);
    r = read_response(fd);
    CHECK_STR(body_of(r), "hello");
    free(r);
    close(fd);
}

static void test_abort(void)
{
    /* The client leaves while the handler is working: the abort hook runs, the late answer is
     * dropped, and the server keeps serving. */
    atomic_store(&aborted_count, 0);
    for (int i = 0; i < 5; i++) {
        int fd = dial();
        send_str(fd, "GET /async HTTP/1.1\r\nHost: x\r\n\r\n");
        usleep(2000);
        close(fd);
    }
    usleep(100000);
    CHECK_INT(atomic_load(&aborted_count), 5);
    /* Mid-head and mid-body disconnects. */
    for (int i = 0; i < 5; i++) {
        int fd = dial();
        send_str(fd, i % 2 ? "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab"
                           : "GET /hel");
        close(fd);
    }
    int fd = dial();
    send_str(fd, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    char *r = read_response(fd);
    CHECK_INT(status_of(r), 200);
    free(r);
    close(fd);
}

static uint64_t hash_of(const char *p, size_t n)
{
    uint64_t h = 0;
    for (size_t i = 0; i < n; i++)
        h = h * 31 + (unsigned char)p[i];
    return h;
}

static void test_streaming(void)
{
    /* A 600 KiB body in many writes: far more than any read buffer, never held whole. */
    size_t n = 600 * 1024;
    char *body = malloc(n);
    for (size_t i = 0; i < n; i++)
        body[i] = (char)('a' + i % 23);
    int fd = dial();
    char head[128];
    int hl = snprintf(head, sizeof(head),
                      "PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n", n);
    send_all(fd, head, (size_t)hl);
    for (size_t off = 0; off < n; off += 50000) {
        send_all(fd, body + off, LOOM_MIN((size_t)50000, n - off));
        usleep(1000);
    }
    char *r = read_response(fd);
    char want[96];
    snprintf(want, sizeof(want), "%zu %llu", n, (unsigned long long)hash_of(body, n));
    CHECK_INT(status_of(r), 201);
    CHECK_STR(body_of(r), want);
    free(r);
    /* The connection goes on: a chunked upload next, then an ordinary request. */
    send_str(fd, "PUT /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    r = read_response(fd);
    snprintf(want, sizeof(want), "11 %llu", (unsigned long long)hash_of("hello world", 11));
    CHECK_STR(body_of(r), want);
    free(r);
    r = read_response(fd);
    CHECK_STR(body_of(r), "hello");
    free(r);
    /* The handler asks for the body late: what arrived meanwhile is delivered first. */
    send_str(fd, "PUT /upload HTTP/1.1\r\nHost: x\r\nX-Mode: later\r\nContent-Length: 10\r\n\r\n"
                 "0123456789");
    r = read_response(fd);
    snprintf(want, sizeof(want), "10 %llu", (unsigned long long)hash_of("0123456789", 10));
    CHECK_STR(body_of(r), want);
    free(r);
    close(fd);
    free(body);

    /* A refusal before the body: answered at once, then the connection closes. */
    fd = dial();
    send_str(fd,
             "PUT /upload HTTP/1.1\r\nHost: x\r\nX-Mode: refuse\r\nContent-Length: 100000\r\n\r\n");
    r = read_response(fd);
    CHECK_INT(status_of(r), 409);
    CHECK_CONTAINS(r, "Connection: close");
    CHECK(peer_closed(fd));
    free(r);
    close(fd);

    /* With Expect: 100-continue, a streaming handler that refuses before reading gets no 100
     * sent ahead of its answer (the client never sends the body); one that reads gets it. */
    fd = dial();
    send_str(fd, "PUT /upload HTTP/1.1\r\nHost: x\r\nX-Mode: refuse\r\nContent-Length: 100000\r\n"
                 "Expect: 100-continue\r\n\r\n");
    r = read_response(fd);
    CHECK_INT(status_of(r), 409);
    CHECK(peer_closed(fd));
    free(r);
    close(fd);
    fd = dial();
    send_str(fd, "PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                 "Expect: 100-continue\r\n\r\n");
    r = read_response(fd);
    CHECK(r && strncmp(r, "HTTP/1.1 100 Continue\r\n\r\n", 25) == 0);
    free(r);
    send_str(fd, "abc");
    r = read_response(fd);
    CHECK_INT(status_of(r), 201);
    free(r);
    close(fd);

    /* Over the route's limit (chunked, so only the count tells): on_end says ETOOBIG. */
    atomic_store(&stream_ends, 0);
    fd = dial();
    send_str(fd, "PUT /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    static char data[0x2000];
    memset(data, 'z', sizeof(data));
    for (int i = 0; i < 140 && !peer_closed_nowait(fd); i++) {
        send_str(fd, "2000\r\n");
        send_all(fd, data, sizeof(data));
        send_str(fd, "\r\n");
    }
    r = read_response(fd);
    CHECK_INT(status_of(r), 413);
    CHECK_CONTAINS(body_of(r), "upload failed");
    free(r);
    close(fd);
    CHECK_INT(atomic_load(&stream_ends), 1);

    /* The sink refuses: the handler answers with its own status. */
    fd = dial();
    send_str(fd, "PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabc!ef");
    r = read_response(fd);
    CHECK_INT(status_of(r), 507);
    free(r);
    close(fd);

    /* The client leaves mid-body: on_end says ECLOSED, and the server serves on. */
    atomic_store(&stream_closed, 0);
    fd = dial();
    send_str(fd, "PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc");
    usleep(20000);
    close(fd);
    usleep(50000);
    CHECK_INT(atomic_load(&stream_closed), 1);
    fd = dial();
    send_str(fd, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    r = read_response(fd);
    CHECK_STR(body_of(r), "hello");
    free(r);
    close(fd);
}

/* A client that goes on sending a body the server refused: the server answers, then reads and
 * discards until the client is done (lingering close), so the client gets the whole answer and
 * an orderly end instead of a reset. */
static void test_linger(void)
{
    int fd = dial();
    send_str(fd, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4000000\r\n\r\n");
    char chunk[65536];
    memset(chunk, 'z', sizeof(chunk));
    size_t sent = 0;
    while (sent < 4000000) {
        ssize_t w = send(fd, chunk, LOOM_MIN(sizeof(chunk), 4000000 - sent), MSG_NOSIGNAL);
        if (w <= 0)
            break;
        sent += (size_t)w;
    }
    CHECK_UINT(sent, 4000000); /* no reset while sending */
    char *r = read_response(fd);
    CHECK(r != NULL);
    CHECK_INT(status_of(r), 413);
    CHECK_CONTAINS(r, "Connection: close");
    free(r);
    char b;
    CHECK_INT((int)recv(fd, &b, 1, 0), 0); /* then EOF, not ECONNRESET */
    close(fd);
}

static void test_file(void)
{
    snprintf(file_path, sizeof(file_path), "/tmp/loom-test-file-%d", (int)getpid());
    FILE *f = fopen(file_path, "wb");
    for (int i = 0; i < 300000; i++)
        fputc('A' + i % 26, f);
    fclose(f);
    int fd = dial();
    /* Pipelined behind and ahead of the file: answers stay in order. */
    send_str(fd, "GET /file/large HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
                 "GET /file/small HTTP/1.1\r\nHost: x\r\n\r\n");
    char *r = read_response(fd);
    CHECK_INT(status_of(r), 200);
    CHECK_CONTAINS(r, "Content-Length: 300000");
    const char *body = body_of(r);
    CHECK_UINT(strlen(body), 300000);
    CHECK(body[0] == 'A' && body[299999] == (char)('A' + 299999 % 26));
    free(r);
    r = read_response(fd);
    CHECK_STR(body_of(r), "hello");
    free(r);
    r = read_response(fd);
    CHECK_UINT(strlen(body_of(r)), 100);
    CHECK(body_of(r)[0] == 'A' + 10);
    free(r);
    send_str(fd,
             "HEAD /file/large HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    r = read_response_x(fd, true);
    CHECK_CONTAINS(r, "Content-Length: 300000");
    free(r);
    r = read_response(fd);
    CHECK_STR(body_of(r), "hello");
    free(r);
    /* loom_http_respond_head: the length without the bytes; a GET to it gets an empty body. */
    send_str(fd, "HEAD /proxied HTTP/1.1\r\nHost: x\r\n\r\nGET /proxied HTTP/1.1\r\nHost: x\r\n\r\n"
                 "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    r = read_response_x(fd, true);
    CHECK_CONTAINS(r, "Content-Length: 12345");
    free(r);
    r = read_response(fd);
    CHECK_CONTAINS(r, "Content-Length: 0");
    free(r);
    r = read_response(fd);
    CHECK_STR(body_of(r), "hello");
    free(r);
    close(fd);
    /* A client that leaves mid-file: the server closes the file and serves on. */
    fd = dial();
    send_str(fd, "GET /file/large HTTP/1.1\r\nHost: x\r\n\r\n");
    char buf[1000];
    CHECK(recv(fd, buf, sizeof(buf), 0) > 0);
    close(fd);
    usleep(20000);
    fd = dial();
    send_str(fd, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    r = read_response(fd);
    CHECK_STR(body_of(r), "hello");
    free(r);
    close(fd);
    unlink(file_path);
}

/* lib/http.c's field checks (lib/internal.h), against the RFC 9110 rules written byte by byte:
 * every byte value at every position of values up to 24 bytes, which covers the word-at-a-time
 * path, its tail, and a bad byte after good ones in the same word. */
bool loom__http_token(struct loom_str s);
bool loom__http_field_value(struct loom_str s);

static void test_field_checks(void)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    char buf[32];
    int wrong = 0;
    for (size_t len = 1; len <= 24; len++) {
        for (size_t at = 0; at < len; at++) {
            for (int b = 0; b < 256; b++) {
                memset(buf, at % 2 ? 'x' : '\t', len); /* tabs are fine in values */
                buf[at] = (char)b;
                bool value_ok = true, token_ok = true;
                for (size_t i = 0; i < len; i++) {
                    unsigned char ch = (unsigned char)buf[i];
                    value_ok &= !((ch < 0x20 && ch != '\t') || ch == 0x7f);
                    token_ok &= (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
                                (ch >= 'A' && ch <= 'Z') || (ch && strchr(extra, ch));
                }
                struct loom_str v = loom_str_make(buf, len);
                wrong += loom__http_field_value(v) != value_ok;
                wrong += loom__http_token(v) != token_ok;
            }
        }
    }
    CHECK_INT(wrong, 0);
    CHECK(loom__http_field_value(LOOM_STR("")));
    CHECK(!loom__http_token(LOOM_STR("")));
    CHECK(loom__http_field_value(LOOM_STR("Bearer eyJhbGciOiJFUzI1NiJ9.e30.c2ln \x80\xff")));
    CHECK(!loom__http_field_value(LOOM_STR("Bearer eyJhbGciOiJFUzI1NiJ9.e30\r\nX: 1")));
}

/* A port held by another server is refused, not shared through SO_REUSEPORT; the loops of one
 * server still share theirs. */
static void test_port_in_use(void)
{
    struct loom_http_server_config cfg = { .name = "t2", .routes = routes, .nroutes = 1 };
    struct loom_error err = { 0 };
    struct loom_http_server *s2 = loom_http_server_new(&cfg, &err);
    struct loom_loop *l1 = loom_loop_new(), *l2 = loom_loop_new();
    char addr[32];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    CHECK_INT(loom_http_server_listen(s2, l1, addr, &err), LOOM_EIO);
    CHECK_CONTAINS(err.msg, "is in use by another process");
    loom_http_server_free(s2);

    s2 = loom_http_server_new(&cfg, &err);
    CHECK_INT(loom_http_server_listen(s2, l1, "127.0.0.1:0", &err), LOOM_OK);
    int p2 = loom_http_server_port(s2);
    CHECK_INT(loom_http_server_listen(s2, l2, "127.0.0.1:0", &err), LOOM_OK);
    CHECK_INT(loom_http_server_port(s2), p2); /* the second loop joined the first's port */
    loom_http_server_free(s2);
    loom_loop_free(l1);
    loom_loop_free(l2);
}

static void test_drain(void)
{
    int busy = dial();
    send_str(busy, "GET /async HTTP/1.1\r\nHost: x\r\n\r\n");
    int idle = dial();
    send_str(idle, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    char *r = read_response(idle);
    free(r);
    usleep(5000);
    loom_loop_post(loop, &drain_call.task, do_drain);
    /* The idle connection is closed; the busy one is answered with Connection: close. */
    CHECK(peer_closed(idle));
    r = read_response(busy);
    CHECK_INT(status_of(r), 200);
    CHECK_STR(body_of(r), "late");
    CHECK_CONTAINS(r, "Connection: close");
    CHECK(peer_closed(busy));
    free(r);
    usleep(20000);
    CHECK(atomic_load(&drain_call.drained));
    /* No longer accepting. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0);
    close(fd);
    close(idle);
    close(busy);
}

static void test_router_table_errors(void)
{
    struct loom_error err = { 0 };
    static const struct loom_route dup[] = {
        { LOOM_HTTP_GET, "/a/{x}", h_hello, 0, 0 },
        { LOOM_HTTP_GET, "/a/{x}", h_hello, 0, 0 },
    };
    CHECK(loom_router_new(dup, 2, &err) == NULL);
    CHECK_CONTAINS(err.msg, "declared twice");
    static const struct loom_route bad1[] = { { LOOM_HTTP_GET, "a", h_hello, 0, 0 } };
    CHECK(loom_router_new(bad1, 1, &err) == NULL);
    static const struct loom_route bad2[] = { { LOOM_HTTP_GET, "/a/x{y}", h_hello, 0, 0 } };
    CHECK(loom_router_new(bad2, 1, &err) == NULL);
    CHECK_CONTAINS(err.msg, "whole segment");
    static const struct loom_route bad3[] = { { LOOM_HTTP_GET, "/a/{r...}/b", h_hello, 0, 0 } };
    CHECK(loom_router_new(bad3, 1, &err) == NULL);
    static const struct loom_route bad4[] = { { LOOM_HTTP_GET, "/a/{x}/{x}", h_hello, 0, 0 } };
    CHECK(loom_router_new(bad4, 1, &err) == NULL);
    /* Matching details, straight on the router. */
    struct loom_router *r = loom_router_new(routes, LOOM_ARRAY_SIZE(routes), &err);
    struct loom_route_match m;
    loom_router_match(r, LOOM_HTTP_GET, LOOM_STR("/v2/models/x/versions/3/infer"), &m);
    CHECK(m.route == &routes[2]);
    CHECK_INT(m.nparams, 2);
    CHECK_SLICE(m.names[0], "name");
    CHECK_SLICE(m.values[0], "x");
    CHECK_SLICE(m.values[1], "3");
    loom_router_match(r, LOOM_HTTP_GET, LOOM_STR("/v2/models//versions/3/infer"), &m);
    CHECK(m.route == NULL); /* an empty segment is not a parameter */
    loom_router_match(r, LOOM_HTTP_GET, LOOM_STR("/files/"), &m);
    CHECK(m.route == &routes[5]);
    CHECK_SLICE(m.values[0], "");
    loom_router_match(r, LOOM_HTTP_PUT, LOOM_STR("/async"), &m);
    CHECK(m.route == NULL);
    CHECK_UINT(m.allowed, (1u << LOOM_HTTP_GET) | (1u << LOOM_HTTP_HEAD) | (1u << LOOM_HTTP_POST));
    loom_router_match(r, LOOM_HTTP_GET, LOOM_STR("/hello/"), &m);
    CHECK(m.route == NULL && m.allowed == 0);
    loom_router_free(r);
    char allow[64];
    loom_http_allow_list((1u << LOOM_HTTP_GET) | (1u << LOOM_HTTP_DELETE), allow, sizeof(allow));
    CHECK_STR(allow, "GET, DELETE");
}

int main(void)
{
    loom_log_set_level(LOOM_LOG_WARN);
    RUN(test_router_table_errors);
    start_server();
    RUN(test_basic_and_keepalive);
    RUN(test_fragments);
    RUN(test_pipelining);
    RUN(test_pipelining_10k);
    RUN(test_parallel_pipelining);
    RUN(test_chunked_body);
    RUN(test_expect_continue);
    RUN(test_bad_requests);
    RUN(test_routing_errors);
    RUN(test_http10);
    RUN(test_timeouts);
    RUN(test_trace);
    RUN(test_big_response);
    RUN(test_abort);
    RUN(test_streaming);
    RUN(test_linger);
    RUN(test_file);
    RUN(test_field_checks);
    RUN(test_port_in_use);
    RUN(test_drain);
    stop_server();
    return check_report();
}
