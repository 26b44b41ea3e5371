/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests for the HTTP/1.1 client, through real sockets on loopback. The well-behaved
 * upstreams are loom HTTP servers on a loop thread of their own; the misbehaving ones are raw
 * socket servers written here (a poll loop on another thread) that answer with canned bytes,
 * close without answering, or never answer, and count what they accept. The client runs on the
 * test's thread, on a loop driven with loom_loop_run_once.
 */
#include "check.h"

#include <loom/http.h>
#include <loom/http_client.h>
#include <loom/log.h>
#include <loom/metrics.h>
#include <loom/net.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- loom servers: A and B on one loop thread ---- */

struct srv {
    struct loom_http_server *s;
    int port;
    const char *id;
    atomic_int hits;
    char addr[32];
};

static struct loom_loop *sloop;
static pthread_t sthread;
static struct srv srv_a = { .id = "a" }, srv_b = { .id = "b" };
static atomic_int flaky_fail;

static void h_hello(struct loom_http_req *req)
{
    struct srv *sv = req->ctx;
    atomic_fetch_add(&sv->hits, 1);
    loom_http_respond(req, 200, "text/plain", LOOM_STR("hello"));
}

static void h_id(struct loom_http_req *req)
{
    struct srv *sv = req->ctx;
    atomic_fetch_add(&sv->hits, 1);
    loom_http_respond(req, 200, "text/plain", loom_str_cstr(sv->id));
}

static void h_big(struct loom_http_req *req)
{
    struct loom_buf b;
    loom_buf_init(&b, 0);
    for (int i = 0; i < 200000; i++)
        loom_buf_putc(&b, (char)('a' + i % 26));
    loom_http_respond_buf(req, 200, "text/plain", &b);
}

static void h_echo(struct loom_http_req *req)
{
    loom_http_resp_header(req, "X-Method", req->method_name);
    loom_http_respond(req, 200, "application/octet-stream", req->body);
}

static void h_hdr(struct loom_http_req *req)
{
    char out[256];
    struct loom_str x = loom_http_req_header(req, "x-test");
    struct loom_str host = loom_http_req_header(req, "host");
    int n = snprintf(out, sizeof(out), "%.*s|%.*s", LOOM_STR_FMT(x), LOOM_STR_FMT(host));
    loom_http_respond(req, 200, "text/plain", loom_str_make(out, (size_t)n));
}

static void h_flaky(struct loom_http_req *req)
{
    struct srv *sv = req->ctx;
    atomic_fetch_add(&sv->hits, 1);
    if (atomic_load(&flaky_fail))
        loom_http_respond(req, 503, "text/plain", LOOM_STR("down"));
    else
        loom_http_respond(req, 200, "text/plain", LOOM_STR("up"));
}

struct later {
    struct loom_timer t;
    struct loom_http_req *req;
};

static void later_fire(struct loom_timer *t)
{
    struct later *l = LOOM_CONTAINER_OF(t, struct later, t);
    loom_http_respond(l->req, 200, "text/plain", LOOM_STR("slow"));
}

static void h_slow(struct loom_http_req *req)
{
    struct later *l = loom_arena_new(req->arena, struct later);
    l->req = req;
    loom_timer_init(&l->t, req->loop, later_fire);
    loom_timer_start(&l->t, 50 * LOOM_NS_PER_MS, 0);
}

static const struct loom_route routes[] = {
    { LOOM_HTTP_GET, "/hello", h_hello, 0, 0 },  { LOOM_HTTP_GET, "/id", h_id, 0, 0 },
    { LOOM_HTTP_GET, "/big", h_big, 0, 0 },      { LOOM_HTTP_POST, "/echo", h_echo, 0, 0 },
    { LOOM_HTTP_GET, "/hdr", h_hdr, 0, 0 },      { LOOM_HTTP_GET, "/flaky", h_flaky, 0, 0 },
    { LOOM_HTTP_POST, "/flaky", h_flaky, 0, 0 }, { LOOM_HTTP_GET, "/slow", h_slow, 0, 0 },
};

static void *serve(void *arg)
{
    LOOM_UNUSED(arg);
    loom_loop_run(sloop);
    return NULL;
}

static void srv_start(struct srv *sv)
{
    struct loom_http_server_config cfg = {
        .name = "test",
        .routes = routes,
        .nroutes = LOOM_ARRAY_SIZE(routes),
        .ctx = sv,
    };
    struct loom_error err = { 0 };
    sv->s = loom_http_server_new(&cfg, &err);
    CHECK(sv->s != NULL);
    CHECK_INT(loom_http_server_listen(sv->s, sloop, "127.0.0.1:0", &err), LOOM_OK);
    sv->port = loom_http_server_port(sv->s);
    snprintf(sv->addr, sizeof(sv->addr), "127.0.0.1:%d", sv->port);
}

/* U listens on a unix socket; its path (and "unix:" + it) are filled in by servers_start. */
static struct srv srv_u = { .id = "u" };
static char unix_path[64], unix_addr[80];

static void servers_start(void)
{
    sloop = loom_loop_new();
    srv_start(&srv_a);
    srv_start(&srv_b);
    snprintf(unix_path, sizeof(unix_path), "/tmp/loom-test-client-%d.sock", (int)getpid());
    snprintf(unix_addr, sizeof(unix_addr), "unix:%s", unix_path);
    /* A file left by a server that died is taken over. */
    int stale = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un un = { .sun_family = AF_UNIX };
    snprintf(un.sun_path, sizeof(un.sun_path), "%s", unix_path);
    CHECK_INT(bind(stale, (struct sockaddr *)&un, sizeof(un)), 0);
    close(stale);
    struct loom_http_server_config cfg = {
        .name = "test", .routes = routes, .nroutes = LOOM_ARRAY_SIZE(routes), .ctx = &srv_u
    };
    struct loom_error err = { 0 };
    srv_u.s = loom_http_server_new(&cfg, &err);
    CHECK_INT(loom_http_server_listen(srv_u.s, sloop, unix_addr, &err), LOOM_OK);
    pthread_create(&sthread, NULL, serve, NULL);
}

static void servers_stop(void)
{
    loom_loop_stop(sloop);
    pthread_join(sthread, NULL);
    loom_http_server_free(srv_a.s);
    loom_http_server_free(srv_b.s);
    loom_http_server_free(srv_u.s);
    CHECK(access(unix_path, F_OK) != 0); /* the socket file went with its server */
    loom_loop_free(sloop);
}

/* ---- raw servers: canned bytes, no reply, or a close ---- */

#define RAW_MAX_CONNS 64

struct raw;
/* Answer the nth request of a connection; return true to close it. */
typedef bool (*raw_fn)(struct raw *r, int fd, int nth);

struct raw {
    int lfd, port, wake[2];
    pthread_t th;
    raw_fn fn; /* NULL: never answer */
    const char *reply;
    bool close_after;
    atomic_int accepts, requests, closes;
    char addr[32];
};

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

static bool raw_canned(struct raw *r, int fd, int nth)
{
    LOOM_UNUSED(nth);
    send_all(fd, r->reply, strlen(r->reply));
    return r->close_after;
}

static bool raw_close(struct raw *r, int fd, int nth)
{
    LOOM_UNUSED(r);
    LOOM_UNUSED(fd);
    LOOM_UNUSED(nth);
    return true;
}

/* Serve the complete requests in `b`; true to close. */
static bool raw_serve(struct raw *r, int fd, struct loom_buf *b, int *nth)
{
    for (;;) {
        const char *end = b->len ? strstr(b->data, "\r\n\r\n") : NULL;
        if (!end)
            return false;
        size_t head = (size_t)(end - b->data) + 4;
        size_t body = 0;
        const char *cl = strcasestr(b->data, "\r\ncontent-length:");
        if (cl && cl < end)
            body = strtoul(cl + 17, NULL, 10);
        if (b->len < head + body)
            return false;
        atomic_fetch_add(&r->requests, 1);
        loom_buf_consume(b, head + body);
        if (!r->fn)
            continue;
        if (r->fn(r, fd, (*nth)++))
            return true;
    }
}

static void *raw_main(void *arg)
{
    struct raw *r = arg;
    int fds[RAW_MAX_CONNS], nth[RAW_MAX_CONNS];
    struct loom_buf bufs[RAW_MAX_CONNS];
    int n = 0;
    for (;;) {
        struct pollfd pfd[RAW_MAX_CONNS + 2];
        pfd[0] = (struct pollfd){ .fd = r->wake[0], .events = POLLIN };
        pfd[1] = (struct pollfd){ .fd = r->lfd, .events = POLLIN };
        for (int i = 0; i < n; i++)
            pfd[2 + i] = (struct pollfd){ .fd = fds[i], .events = POLLIN };
        int polled = n;
        if (poll(pfd, (nfds_t)(2 + n), 1000) < 0)
            continue;
        if (pfd[0].revents)
            break;
        if ((pfd[1].revents & POLLIN) && n < RAW_MAX_CONNS) {
            int fd = accept4(r->lfd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0) {
                fds[n] = fd;
                nth[n] = 0;
                loom_buf_init(&bufs[n], 0);
                n++;
                atomic_fetch_add(&r->accepts, 1);
            }
        }
        for (int i = polled - 1; i >= 0; i--) {
            if (!pfd[2 + i].revents)
                continue;
            char tmp[65536];
            ssize_t k = recv(fds[i], tmp, sizeof(tmp), 0);
            bool close_it = k <= 0;
            if (k > 0) {
                loom_buf_append(&bufs[i], tmp, (size_t)k);
                close_it = raw_serve(r, fds[i], &bufs[i], &nth[i]);
            }
            if (close_it) {
                close(fds[i]);
                loom_buf_release(&bufs[i]);
                atomic_fetch_add(&r->closes, 1);
                n--;
                fds[i] = fds[n];
                nth[i] = nth[n];
                bufs[i] = bufs[n];
            }
        }
    }
    for (int i = 0; i < n; i++) {
        close(fds[i]);
        loom_buf_release(&bufs[i]);
    }
    return NULL;
}

static void raw_start(struct raw *r, raw_fn fn, const char *reply, bool close_after)
{
    memset(r, 0, sizeof(*r));
    r->fn = fn;
    r->reply = reply;
    r->close_after = close_after;
    r->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(r->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    CHECK_INT(bind(r->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    CHECK_INT(listen(r->lfd, 64), 0);
    r->port = loom_net_local_port(r->lfd);
    snprintf(r->addr, sizeof(r->addr), "127.0.0.1:%d", r->port);
    CHECK_INT(pipe2(r->wake, O_CLOEXEC), 0);
    pthread_create(&r->th, NULL, raw_main, r);
}

static void raw_stop(struct raw *r)
{
    CHECK_INT(write(r->wake[1], "x", 1), 1);
    pthread_join(r->th, NULL);
    close(r->lfd);
    close(r->wake[0]);
    close(r->wake[1]);
}

/* A loopback address where nothing listens: connecting to it is refused. */
static void dead_addr(char *out, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    snprintf(out, cap, "127.0.0.1:%d", loom_net_local_port(fd));
    close(fd);
}

/* ---- the client side ---- */

static struct loom_loop *cloop;

struct res {
    int done;
    loom_err err;
    int status;
    unsigned attempts;
    size_t addr_index;
    char body[512];
    size_t body_len;
    char msg[LOOM_ERROR_MSG_MAX];
    char ctype[64];
    char clen[32];
    bool has_link;
};

static void on_res(struct loom_http_response *r, void *arg)
{
    struct res *out = arg;
    out->done++;
    out->err = r->err;
    out->status = r->status;
    out->attempts = r->attempts;
    out->addr_index = r->address_index;
    out->body_len = r->body.len;
    snprintf(out->body, sizeof(out->body), "%.*s", (int)LOOM_MIN(r->body.len, 500),
             r->body.ptr ? r->body.ptr : "");
    snprintf(out->msg, sizeof(out->msg), "%s", r->error);
    struct loom_str ct = loom_http_response_header(r, "content-type");
    snprintf(out->ctype, sizeof(out->ctype), "%.*s", LOOM_STR_FMT(ct));
    struct loom_str cl = loom_http_response_header(r, "Content-Length");
    snprintf(out->clen, sizeof(out->clen), "%.*s", LOOM_STR_FMT(cl));
    bool found = false;
    loom_http_header_get(r->headers, r->nheaders, "link", &found);
    out->has_link = found;
}

/* Run the client loop until *done reaches `target` or `ms` pass. */
static bool run_until(const int *done, int target, int ms)
{
    uint64_t end = loom_now_ns() + (uint64_t)ms * LOOM_NS_PER_MS;
    while (*done < target && loom_now_ns() < end)
        loom_loop_run_once(cloop, 10 * LOOM_NS_PER_MS);
    return *done >= target;
}

static void run_for(int ms)
{
    uint64_t end = loom_now_ns() + (uint64_t)ms * LOOM_NS_PER_MS;
    while (loom_now_ns() < end)
        loom_loop_run_once(cloop, 5 * LOOM_NS_PER_MS);
}

static struct loom_http_upstream *upstream(struct loom_http_upstream_config *cfg, const char *a0,
                                           const char *a1)
{
    const char *addrs[2] = { a0, a1 };
    cfg->addresses = addrs;
    cfg->naddresses = a1 ? 2 : 1;
    if (!cfg->name)
        cfg->name = "t";
    struct loom_error err = { 0 };
    struct loom_http_upstream *up = loom_http_upstream_new(cloop, cfg, &err);
    CHECK(up != NULL);
    if (!up)
        fprintf(stderr, "upstream: %s\n", err.msg);
    return up;
}

static void send_req(struct loom_http_upstream *up, const struct loom_http_request *req,
                     struct res *out)
{
    memset(out, 0, sizeof(*out));
    struct loom_error err = { 0 };
    CHECK_INT(loom_http_upstream_request(up, req, on_res, out, NULL, &err), LOOM_OK);
    CHECK(run_until(&out->done, 1, 10000));
    CHECK_INT(out->done, 1);
}

static void do_get(struct loom_http_upstream *up, const char *target, struct res *out)
{
    struct loom_http_request req = { .method = LOOM_HTTP_GET, .target = loom_str_cstr(target) };
    send_req(up, &req, out);
}

static void addr_stats(struct loom_http_upstream *up, size_t i, struct loom_http_addr_stats *st)
{
    loom_http_upstream_addr_stats(up, i, st);
}

/* ---- tests ---- */

static void test_keepalive_reuse(void)
{
    struct loom_http_upstream_config cfg = { 0 };
    struct loom_http_upstream *up = upstream(&cfg, srv_a.addr, NULL);
    struct res r;
    for (int i = 0; i < 20; i++) {
        do_get(up, "/hello", &r);
        CHECK_INT(r.err, LOOM_OK);
        CHECK_INT(r.status, 200);
        CHECK_STR(r.body, "hello");
        CHECK_STR(r.ctype, "text/plain");
        CHECK_INT(r.attempts, 1);
    }
    struct loom_http_addr_stats st;
    addr_stats(up, 0, &st);
    CHECK_UINT(st.connects, 1);
    CHECK_UINT(st.requests, 20);
    CHECK_UINT(st.idle, 1);
    CHECK_UINT(st.outstanding, 0);
    CHECK_INT(st.state, LOOM_HTTP_ADDR_HEALTHY);
    loom_http_upstream_free(up);

    /* Counted on the server side too. */
    struct raw raw;
    raw_start(&raw, raw_canned, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false);
    up = upstream(&cfg, raw.addr, NULL);
    for (int i = 0; i < 10; i++) {
        do_get(up, "/x", &r);
        CHECK_INT(r.status, 200);
        CHECK_STR(r.body, "ok");
    }
    CHECK_INT(atomic_load(&raw.accepts), 1);
    CHECK_INT(atomic_load(&raw.requests), 10);
    loom_http_upstream_free(up);
    raw_stop(&raw);
}

static void test_dead_idle_connection(void)
{
    /* The server closes every connection right after answering, without saying so: the client
     * pools it, then must notice the close before reusing it, even for a POST (which a failure
     * after writing would not retry). */
    struct raw raw;
    raw_start(&raw, raw_canned, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true);
    struct loom_http_upstream_config cfg = { .max_attempts = 1 };
    struct loom_http_upstream *up = upstream(&cfg, raw.addr, NULL);
    struct res r;
    do_get(up, "/x", &r);
    CHECK_INT(r.status, 200);
    /* Let the close arrive while the loop does not run: only the peek on reuse can see it. */
    for (int i = 0; i < 200 && atomic_load(&raw.closes) < 1; i++)
        usleep(1000);
    usleep(20000);
    struct loom_http_request post = { .method = LOOM_HTTP_POST,
                                      .target = LOOM_STR("/x"),
                                      .body = LOOM_STR("data") };
    send_req(up, &post, &r);
    CHECK_INT(r.err, LOOM_OK);
    CHECK_INT(r.status, 200);
    CHECK_INT(atomic_load(&raw.accepts), 2);
    /* And with the loop running, the close is noticed while idle. */
    for (int i = 0; i < 200 && atomic_load(&raw.closes) < 2; i++)
        usleep(1000);
    run_for(50);
    struct loom_http_addr_stats st;
    addr_stats(up, 0, &st);
    CHECK_UINT(st.connections, 0);
    CHECK_UINT(st.idle, 0);

    /* An idempotent GET takes the pooled connection without a peek (one system call fewer on
     * the proxy's path): when it finds it closed, it goes again at once on a fresh connection,
     * even with max_attempts 1 and without touching the retry budget. */
    do_get(up, "/x", &r);
    CHECK_INT(r.status, 200);
    for (int i = 0; i < 200 && atomic_load(&raw.closes) < 3; i++)
        usleep(1000);
    usleep(20000);
    struct loom_http_upstream_stats ust0;
    loom_http_upstream_stats(up, &ust0);
    do_get(up, "/x", &r);
    CHECK_INT(r.err, LOOM_OK);
    CHECK_INT(r.status, 200);
    CHECK_INT(atomic_load(&raw.accepts), 4);
    struct loom_http_upstream_stats ust1;
    loom_http_upstream_stats(up, &ust1);
    CHECK_UINT(ust1.retries_denied, ust0.retries_denied);
    addr_stats(up, 0, &st);
    CHECK_INT(st.state, LOOM_HTTP_ADDR_HEALTHY);
    loom_http_upstream_free(up);
    raw_stop(&raw);
}

static void test_pool_limits(void)
{
    struct loom_http_upstream_config cfg = { .max_idle_per_address = 2,
                                             .idle_timeout = 150 * LOOM_NS_PER_MS };
    struct loom_http_upstream *up = upstream(&cfg, srv_a.addr, NULL);
    struct res r[6];
    memset(r, 0, sizeof(r));
    int done = 0;
    struct loom_http_request req = { .method = LOOM_HTTP_GET, .target = LOOM_STR("/slow") };
    for (int i = 0; i < 6; i++)
        CHECK_INT(loom_http_upstream_request(up, &req, on_res, &r[i], NULL, NULL), LOOM_OK);
    uint64_t end = loom_now_ns() + 10 * LOOM_NS_PER_SEC;
    while (loom_now_ns() < end) {
        done = 0;
        for (int i = 0; i < 6; i++)
            done += r[i].done;
        if (done == 6)
            break;
        loom_loop_run_once(cloop, 10 * LOOM_NS_PER_MS);
    }
    CHECK_INT(done, 6);
    for (int i = 0; i < 6; i++) {
        CHECK_INT(r[i].status, 200);
        CHECK_STR(r[i].body, "slow");
    }
    struct loom_http_addr_stats st;
    addr_stats(up, 0, &st);
    CHECK_UINT(st.connects, 6);
    CHECK_UINT(st.idle, 2);
    CHECK_UINT(st.connections, 2);
    /* The idle timeout closes the rest. */
    run_for(400);
    addr_stats(up, 0, &st);
    CHECK_UINT(st.idle, 0);
    CHECK_UINT(st.connections, 0);
    loom_http_upstream_free(up);
}

static void test_framing(void)
{
    struct loom_http_upstream_config cfg = { .max_attempts = 1 };
    struct res r;

    struct raw chunked;
    raw_start(&chunked, raw_canned,
              "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
              "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n",
              false);
    struct loom_http_upstream *up = upstream(&cfg, chunked.addr, NULL);
    for (int i = 0; i < 3; i++) {
        do_get(up, "/c", &r);
        CHECK_INT(r.status, 200);
        CHECK_STR(r.body, "hello world");
    }
    CHECK_INT(atomic_load(&chunked.accepts), 1);
    loom_http_upstream_free(up);
    raw_stop(&chunked);

    struct raw eof;
    raw_start(&eof, raw_canned, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close",
              true);
    up = upstream(&cfg, eof.addr, NULL);
    for (int i = 0; i < 2; i++) {
        do_get(up, "/e", &r);
        CHECK_INT(r.err, LOOM_OK);
        CHECK_INT(r.status, 200);
        CHECK_STR(r.body, "until close");
    }
    CHECK_INT(atomic_load(&eof.accepts), 2);
    struct loom_http_addr_stats st;
    addr_stats(up, 0, &st);
    CHECK_UINT(st.idle, 0);
    loom_http_upstream_free(up);
    raw_stop(&eof);

    struct raw h10;
    raw_start(&h10, raw_canned, "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n1.0", false);
    up = upstream(&cfg, h10.addr, NULL);
    do_get(up, "/h", &r);
    CHECK_STR(r.body, "1.0");
    do_get(up, "/h", &r);
    CHECK_STR(r.body, "1.0");
    CHECK_INT(atomic_load(&h10.accepts), 2); /* HTTP/1.0 without keep-alive: not reused */
    loom_http_upstream_free(up);
    raw_stop(&h10);
}

static void test_head_and_1xx(void)
{
    struct loom_http_upstream_config cfg = { 0 };
    struct loom_http_upstream *up = upstream(&cfg, srv_a.addr, NULL);
    struct res r;
    struct loom_http_request head = { .method = LOOM_HTTP_HEAD, .target = LOOM_STR("/hello") };
    send_req(up, &head, &r);
    CHECK_INT(r.err, LOOM_OK);
    CHECK_INT(r.status, 200);
    CHECK_UINT(r.body_len, 0);
    CHECK_STR(r.clen, "5");
    do_get(up, "/hello", &r);
    CHECK_STR(r.body, "hello");
    struct loom_http_addr_stats st;
    addr_stats(up, 0, &st);
    CHECK_UINT(st.connects, 1);
    loom_http_upstream_free(up);

    struct raw info;
    raw_start(&info, raw_canned,
              "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
              "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: 1\r\n\r\nok",
              false);
    up = upstream(&cfg, info.addr, NULL);
    for (int i = 0; i < 2; i++) {
        do_get(up, "/i", &r);
        CHECK_INT(r.err, LOOM_OK);
        CHECK_INT(r.status, 200);
        CHECK_STR(r.body, "ok");
        CHECK(!r.has_link);
    }
    CHECK_INT(atomic_load(&info.accepts), 1);
    loom_http_upstream_free(up);
    raw_stop(&info);
}

static void test_headers_and_host(void)
{
    struct loom_http_upstream_config cfg = { 0 };
    struct loom_http_upstream *up = upstream(&cfg, srv_a.addr, NULL);
    struct res r;
    struct loom_http_header hs[] = {
        { LOOM_STR("X-Test"), LOOM_STR("abc") },
        { LOOM_STR("Connection"), LOOM_STR("close") }, /* dropped: the client decides */
    };
    struct loom_http_request req = {
        .method = LOOM_HTTP_GET, .target = LOOM_STR("/hdr"), .headers = hs, .nheaders = 2
    };
    send_req(up, &req, &r);
    char want[64];
    snprintf(want, sizeof(want), "abc|%s", srv_a.addr);
    CHECK_STR(r.body, want);
    struct loom_http_header host[] = { { LOOM_STR("Host"), LOOM_STR("models.internal") } };
    req.headers = host;
    req.nheaders = 1;
    send_req(up, &req, &r);
    CHECK_STR(r.body, "|models.internal");
    struct loom_http_addr_stats st;
    addr_stats(up, 0, &st);
    CHECK_UINT(st.connects, 1);

    /* POST with a body, echoed. */
    struct loom_http_request post = { .method = LOOM_HTTP_POST,
                                      .target = LOOM_STR("/echo"),
                                      .body = LOOM_STR("{\"inputs\":[1,2,3]}") };
    send_req(up, &post, &r);
    CHECK_INT(r.status, 200);
    CHECK_STR(r.body, "{\"inputs\":[1,2,3]}");

    /* Refused at submission: the callback never runs. */
    struct loom_http_header bad[] = { { LOOM_STR("X-Evil"), LOOM_STR("a\r\nInjected: 1") } };
    req.headers = bad;
    struct res never = { 0 };
    struct loom_error err = { 0 };
    CHECK_INT(loom_http_upstream_request(up, &req, on_res, &never, NULL, &err), LOOM_EINVAL);
    CHECK_CONTAINS(err.msg, "X-Evil");
    struct loom_http_request bad_target = { .method = LOOM_HTTP_GET, .target = LOOM_STR("/a b") };
    CHECK_INT(loom_http_upstream_request(up, &bad_target, on_res, &never, NULL, &err), LOOM_EINVAL);
    struct loom_http_request bad_method = { .method = LOOM_HTTP_OTHER, .target = LOOM_STR("/") };
    CHECK_INT(loom_http_upstream_request(up, &bad_method, on_res, &never, NULL, &err), LOOM_EINVAL);
    CHECK_INT(loom_http_upstream_request(up, &post, NULL, NULL, NULL, &err), LOOM_EINVAL);
    run_for(20);
    CHECK_INT(never.done, 0);
    loom_http_upstream_free(up);
}

static void test_deadline(void)
{
    struct raw hole;
    raw_start(&hole, NULL, NULL, false);
    struct loom_http_upstream_config cfg = { 0 };
    struct loom_http_upstream *up = upstream(&cfg, hole.addr, NULL);
    struct res r;
    struct loom_http_request req = { .method = LOOM_HTTP_GET,
                                     .target = LOOM_STR("/never"),
                                     .timeout = 200 * LOOM_NS_PER_MS };
    uint64_t t0 = loom_now_ns();
    send_req(up, &req, &r);
    uint64_t took = loom_now_ns() - t0;
    CHECK_INT(r.err, LOOM_ETIMEDOUT);
    CHECK_INT(r.attempts, 1);
    CHECK_CONTAINS(r.msg, "deadline");
    CHECK(took >= 190 * LOOM_NS_PER_MS);
    CHECK(took < 5 * LOOM_NS_PER_SEC);
    struct loom_http_addr_stats st;
    addr_stats(up, 0, &st);
    CHECK_UINT(st.connections, 0); /* closed, never pooled */
    CHECK_UINT(st.outstanding, 0);
    for (int i = 0; i < 2000 && atomic_load(&hole.closes) < 1; i++)
        usleep(1000);
    CHECK_INT(atomic_load(&hole.closes), 1);
    loom_http_upstream_free(up);

    /* A per-try timeout retries an idempotent request inside the overall deadline. */
    struct loom_http_upstream_config cfg2 = { .try_timeout = 100 * LOOM_NS_PER_MS,
                                              .breaker_threshold = LOOM_HTTP_BREAKER_OFF };
    up = upstream(&cfg2, hole.addr, NULL);
    req.timeout = 5 * LOOM_NS_PER_SEC;
    send_req(up, &req, &r);
    CHECK_INT(r.err, LOOM_ETIMEDOUT);
    CHECK_INT(r.attempts, 3);
    CHECK_CONTAINS(r.msg, "try timeout");
    CHECK_INT(atomic_load(&hole.accepts), 4);
    loom_http_upstream_free(up);
    raw_stop(&hole);
}

static void test_connect_refused(void)
{
    char dead[32];
    dead_addr(dead, sizeof(dead));
    struct loom_http_upstream_config cfg = { .breaker_threshold = LOOM_HTTP_BREAKER_OFF };
    struct loom_http_upstream *up = upstream(&cfg, dead, NULL);
    struct res r;
    do_get(up, "/x", &r);
    CHECK_INT(r.err, LOOM_ECONNECT);
    CHECK_INT(r.attempts, 3);
    CHECK_CONTAINS(r.msg, "refused");
    CHECK_CONTAINS(r.msg, dead);
    /* Nothing was written, so even a POST is retried. */
    struct loom_http_request post = { .method = LOOM_HTTP_POST, .target = LOOM_STR("/x") };
    send_req(up, &post, &r);
    CHECK_INT(r.err, LOOM_ECONNECT);
    CHECK_INT(r.attempts, 3);
    loom_http_upstream_free(up);
}

static void test_retry_other_address(void)
{
    char dead[32];
    dead_addr(dead, sizeof(dead));
    struct loom_http_upstream_config cfg = { .breaker_threshold = LOOM_HTTP_BREAKER_OFF };
    struct loom_http_upstream *up = upstream(&cfg, dead, srv_a.addr);
    struct res r;
    int retried = 0;
    for (int i = 0; i < 60 && retried < 3; i++) {
        /* A POST too: refused connections wrote nothing. */
        struct loom_http_request req = { .method = i % 2 ? LOOM_HTTP_POST : LOOM_HTTP_GET,
                                         .target = loom_str_cstr(i % 2 ? "/echo" : "/hello"),
                                         .body = i % 2 ? LOOM_STR("hello") : LOOM_STR_NULL };
        send_req(up, &req, &r);
        CHECK_INT(r.err, LOOM_OK);
        CHECK_INT(r.status, 200);
        CHECK_STR(r.body, "hello");
        CHECK_UINT(r.addr_index, 1);
        CHECK(r.attempts == 1 || r.attempts == 2);
        retried += r.attempts == 2;
    }
    CHECK(retried >= 3);
    loom_http_upstream_free(up);

    /* 503 from one address: retried on the other. */
    struct raw busy;
    raw_start(&busy, raw_canned,
              "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy", false);
    up = upstream(&cfg, busy.addr, srv_a.addr);
    retried = 0;
    for (int i = 0; i < 60 && retried < 3; i++) {
        do_get(up, "/hello", &r);
        CHECK_INT(r.status, 200);
        CHECK_UINT(r.addr_index, 1);
        retried += r.attempts == 2;
    }
    CHECK(retried >= 3);
    CHECK_INT(atomic_load(&busy.requests), retried);
    loom_http_upstream_free(up);
    raw_stop(&busy);
}

static void test_post_not_retried(void)
{
    struct raw busy;
    raw_start(&busy, raw_canned,
              "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy", false);
    struct loom_http_upstream_config cfg = { .breaker_threshold = LOOM_HTTP_BREAKER_OFF };
    struct loom_http_upstream *up = upstream(&cfg, busy.addr, NULL);
    struct res r;
    struct loom_http_request post = { .method = LOOM_HTTP_POST,
                                      .target = LOOM_STR("/v2/models/m/infer"),
                                      .body = LOOM_STR("{}") };
    send_req(up, &post, &r);
    CHECK_INT(r.err, LOOM_OK);
    CHECK_INT(r.status, 503);
    CHECK_STR(r.body, "busy");
    CHECK_INT(r.attempts, 1);
    CHECK_INT(atomic_load(&busy.requests), 1);
    /* Marked idempotent (as the gateway marks inference): retried, and the last 503 is the
     * answer once attempts run out. */
    post.idempotent = LOOM_HTTP_IDEMPOTENT_YES;
    send_req(up, &post, &r);
    CHECK_INT(r.status, 503);
    CHECK_INT(r.attempts, 3);
    CHECK_INT(atomic_load(&busy.requests), 4);
    /* A GET marked not idempotent is not retried either. */
    struct loom_http_request get = { .method = LOOM_HTTP_GET,
                                     .target = LOOM_STR("/x"),
                                     .idempotent = LOOM_HTTP_IDEMPOTENT_NO };
    send_req(up, &get, &r);
    CHECK_INT(r.attempts, 1);
    loom_http_upstream_free(up);
    raw_stop(&busy);

    /* A server that reads the request and closes: the POST was written, so not retried. */
    struct raw closer;
    raw_start(&closer, raw_close, NULL, false);
    up = upstream(&cfg, closer.addr, NULL);
    post.idempotent = LOOM_HTTP_IDEMPOTENT_AUTO;
    send_req(up, &post, &r);
    CHECK_INT(r.err, LOOM_ECLOSED);
    CHECK_INT(r.attempts, 1);
    CHECK_CONTAINS(r.msg, "closed");
    do_get(up, "/x", &r);
    CHECK_INT(r.err, LOOM_ECLOSED);
    CHECK_INT(r.attempts, 3);
    CHECK_INT(atomic_load(&closer.requests), 4);
    loom_http_upstream_free(up);
    raw_stop(&closer);
}

static void test_retry_budget(void)
{
    struct raw busy;
    raw_start(&busy, raw_canned,
              "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy", false);
    /* A reserve of 2 retries (1/s over 2 s) and almost no ratio. */
    struct loom_http_upstream_config cfg = { .breaker_threshold = LOOM_HTTP_BREAKER_OFF,
                                             .retry_budget_ratio = 0.001,
                                             .retry_budget_min_per_sec = 1,
                                             .retry_budget_window = 2 * LOOM_NS_PER_SEC };
    struct loom_http_upstream *up = upstream(&cfg, busy.addr, NULL);
    struct res r;
    unsigned attempts = 0;
    for (int i = 0; i < 10; i++) {
        do_get(up, "/x", &r);
        CHECK_INT(r.status, 503);
        attempts += r.attempts;
    }
    CHECK_UINT(attempts, 12);
    CHECK_INT(atomic_load(&busy.requests), 12);
    struct loom_http_upstream_stats st;
    loom_http_upstream_stats(up, &st);
    CHECK_UINT(st.requests, 10);
    CHECK_UINT(st.retries, 2);
    CHECK_UINT(st.retries_denied, 9);
    CHECK_UINT(st.in_flight, 0);
    loom_http_upstream_free(up);
    raw_stop(&busy);
}

static void test_breaker(void)
{
    atomic_store(&flaky_fail, 1);
    struct loom_http_upstream_config cfg = { .breaker_threshold = 3,
                                             .ejection_time = 200 * LOOM_NS_PER_MS,
                                             .max_ejection_time = 2 * LOOM_NS_PER_SEC,
                                             .max_attempts = 1 };
    struct loom_http_upstream *up = upstream(&cfg, srv_a.addr, NULL);
    struct res r;
    for (int i = 0; i < 3; i++) {
        do_get(up, "/flaky", &r);
        CHECK_INT(r.status, 503);
    }
    struct loom_http_addr_stats st;
    addr_stats(up, 0, &st);
    CHECK_INT(st.state, LOOM_HTTP_ADDR_EJECTED);
    CHECK_UINT(st.ejections, 1);
    CHECK_UINT(st.failures, 3);
    CHECK_UINT(st.idle, 0); /* pooled connections of an ejected address are closed */
    int hits = atomic_load(&srv_a.hits);
    do_get(up, "/flaky", &r);
    CHECK_INT(r.err, LOOM_EUNAVAIL);
    CHECK_INT(r.attempts, 0);
    CHECK_CONTAINS(r.msg, "ejected");
    CHECK_INT(atomic_load(&srv_a.hits), hits);

    /* After the ejection time: half-open, one probe at a time; a failed probe re-ejects for
     * twice as long. */
    run_for(300);
    addr_stats(up, 0, &st);
    CHECK_INT(st.state, LOOM_HTTP_ADDR_HALF_OPEN);
    struct res p1 = { 0 }, p2 = { 0 };
    struct loom_http_request req = { .method = LOOM_HTTP_GET, .target = LOOM_STR("/flaky") };
    CHECK_INT(loom_http_upstream_request(up, &req, on_res, &p1, NULL, NULL), LOOM_OK);
    CHECK_INT(loom_http_upstream_request(up, &req, on_res, &p2, NULL, NULL), LOOM_OK);
    CHECK(run_until(&p1.done, 1, 5000));
    CHECK(run_until(&p2.done, 1, 5000));
    CHECK_INT(p1.status, 503);
    CHECK_INT(p2.err, LOOM_EUNAVAIL);
    addr_stats(up, 0, &st);
    CHECK_INT(st.state, LOOM_HTTP_ADDR_EJECTED);
    CHECK_UINT(st.ejections_in_a_row, 2);
    CHECK(st.ejected_until > loom_loop_now(cloop) + 250 * LOOM_NS_PER_MS);

    /* Healthy again: the next probe closes the breaker. */
    atomic_store(&flaky_fail, 0);
    run_for(450);
    addr_stats(up, 0, &st);
    CHECK_INT(st.state, LOOM_HTTP_ADDR_HALF_OPEN);
    do_get(up, "/flaky", &r);
    CHECK_INT(r.status, 200);
    addr_stats(up, 0, &st);
    CHECK_INT(st.state, LOOM_HTTP_ADDR_HEALTHY);
    CHECK_UINT(st.ejections_in_a_row, 0);
    CHECK_UINT(st.consecutive_failures, 0);
    do_get(up, "/flaky", &r);
    CHECK_INT(r.status, 200);
    loom_http_upstream_free(up);

    /* Panic mode: with every address ejected, use them anyway. */
    atomic_store(&flaky_fail, 1);
    cfg.panic_mode = true;
    up = upstream(&cfg, srv_a.addr, NULL);
    for (int i = 0; i < 5; i++) {
        do_get(up, "/flaky", &r);
        CHECK_INT(r.status, 503);
    }
    addr_stats(up, 0, &st);
    CHECK_INT(st.state, LOOM_HTTP_ADDR_EJECTED);
    loom_http_upstream_free(up);
    atomic_store(&flaky_fail, 0);
}

/* Keeps `max_inflight` requests going until `total` completed, submitting from callbacks. */
struct load {
    struct loom_http_upstream *up;
    const char *target;
    int total, started, done, failed, max_inflight;
    int by_addr[2];
};

static void load_pump(struct load *l);

static void load_cb(struct loom_http_response *r, void *arg)
{
    struct load *l = arg;
    l->done++;
    if (r->err || r->status != 200) {
        if (l->failed++ < 5)
            fprintf(stderr, "load failure: %s (status %d)\n", r->error, r->status);
    } else if (r->address_index < 2) {
        l->by_addr[r->address_index]++;
    }
    load_pump(l);
}

static void load_pump(struct load *l)
{
    while (l->started < l->total && l->started - l->done < l->max_inflight) {
        struct loom_http_request req = { .method = LOOM_HTTP_GET,
                                         .target = loom_str_cstr(l->target) };
        l->started++;
        CHECK_INT(loom_http_upstream_request(l->up, &req, load_cb, l, NULL, NULL), LOOM_OK);
    }
}

static void test_p2c_spread(void)
{
    struct loom_http_upstream_config cfg = { 0 };
    struct loom_http_upstream *up = upstream(&cfg, srv_a.addr, srv_b.addr);
    struct load l = { .up = up, .target = "/id", .total = 400, .max_inflight = 8 };
    load_pump(&l);
    CHECK(run_until(&l.done, l.total, 20000));
    CHECK_INT(l.failed, 0);
    CHECK(l.by_addr[0] >= 120);
    CHECK(l.by_addr[1] >= 120);
    struct loom_http_addr_stats a, b;
    addr_stats(up, 0, &a);
    addr_stats(up, 1, &b);
    CHECK(a.connects <= 8 && b.connects <= 8); /* keep-alive under concurrency */
    loom_http_upstream_free(up);
}

static void test_dead_server(void)
{
    /* B is killed mid-run: its listener and every connection close at once, abruptly (a raw
     * server, so that the kill does not go through any graceful shutdown path). */
    struct raw b;
    raw_start(&b, raw_canned, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false);
    struct loom_http_upstream_config cfg = { 0 };
    struct loom_http_upstream *up = upstream(&cfg, srv_a.addr, b.addr);
    struct load l = { .up = up, .target = "/hello", .total = 600, .max_inflight = 8 };
    load_pump(&l);
    bool killed = false;
    uint64_t end = loom_now_ns() + 20 * LOOM_NS_PER_SEC;
    while (l.done < l.total && loom_now_ns() < end) {
        loom_loop_run_once(cloop, 10 * LOOM_NS_PER_MS);
        if (!killed && l.done >= 150 && (l.by_addr[1] >= 20 || l.done >= 400)) {
            killed = true;
            raw_stop(&b);
        }
    }
    if (!killed)
        raw_stop(&b);
    CHECK(killed);
    CHECK_INT(l.done, l.total);
    CHECK_INT(l.failed, 0);
    struct loom_http_addr_stats st;
    addr_stats(up, 1, &st);
    CHECK(st.failures >= 1);
    CHECK(st.ejections >= 1);
    CHECK(l.by_addr[0] > 200);
    loom_http_upstream_free(up);
}

static void test_too_big(void)
{
    struct loom_http_upstream_config cfg = { 0 };
    struct loom_http_upstream *up = upstream(&cfg, srv_a.addr, NULL);
    struct res r;
    struct loom_http_request req = { .method = LOOM_HTTP_GET,
                                     .target = LOOM_STR("/big"),
                                     .max_body = 1000 };
    send_req(up, &req, &r);
    CHECK_INT(r.err, LOOM_ETOOBIG);
    CHECK_INT(r.attempts, 1);
    CHECK_CONTAINS(r.msg, "limit of 1000");
    struct loom_http_addr_stats st;
    addr_stats(up, 0, &st);
    CHECK_UINT(st.connections, 0);
    CHECK_UINT(st.failures, 0);
    req.max_body = 0; /* the upstream's 64 MiB */
    send_req(up, &req, &r);
    CHECK_INT(r.status, 200);
    CHECK_UINT(r.body_len, 200000);
    loom_http_upstream_free(up);

    struct raw chunked;
    raw_start(&chunked, raw_canned, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n200\r\n",
              false);
    up = upstream(&cfg, chunked.addr, NULL);
    req.max_body = 100;
    send_req(up, &req, &r);
    CHECK_INT(r.err, LOOM_ETOOBIG);
    loom_http_upstream_free(up);
    raw_stop(&chunked);

    /* A head over the limit. */
    char big_head[4096] = "HTTP/1.1 200 OK\r\nX-Big: ";
    size_t n = strlen(big_head);
    memset(big_head + n, 'x', 3000);
    strcpy(big_head + n + 3000, "\r\nContent-Length: 0\r\n\r\n");
    struct raw fat;
    raw_start(&fat, raw_canned, big_head, false);
    struct loom_http_upstream_config small = { .max_header_bytes = 1024 };
    up = upstream(&small, fat.addr, NULL);
    do_get(up, "/x", &r);
    CHECK_INT(r.err, LOOM_ETOOBIG);
    CHECK_CONTAINS(r.msg, "header");
    loom_http_upstream_free(up);
    raw_stop(&fat);
}

static void test_malformed(void)
{
    struct loom_http_upstream_config cfg = { .max_attempts = 1 };
    struct res r;
    static const char *const replies[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
        "SSH-2.0-OpenSSH_9.2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\n\r\n",
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(replies); i++) {
        struct raw bad;
        raw_start(&bad, raw_canned, replies[i], false);
        struct loom_http_upstream *up = upstream(&cfg, bad.addr, NULL);
        do_get(up, "/x", &r);
        CHECK_INT(r.err, LOOM_EPARSE);
        CHECK_CONTAINS(r.msg, "malformed response");
        CHECK_CONTAINS(r.msg, bad.addr);
        struct loom_http_addr_stats st;
        addr_stats(up, 0, &st);
        CHECK_UINT(st.connections, 0);
        CHECK_UINT(st.failures, 1);
        loom_http_upstream_free(up);
        raw_stop(&bad);
    }
    /* Truncated: the connection closes before Content-Length bytes arrived. */
    struct raw cut;
    raw_start(&cut, raw_canned, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true);
    struct loom_http_upstream *up = upstream(&cfg, cut.addr, NULL);
    do_get(up, "/x", &r);
    CHECK_INT(r.err, LOOM_ECLOSED);
    CHECK_CONTAINS(r.msg, "before the response was complete");
    loom_http_upstream_free(up);
    raw_stop(&cut);
}

static void test_cancel(void)
{
    struct raw hole;
    raw_start(&hole, NULL, NULL, false);
    struct loom_http_upstream_config cfg = { 0 };
    struct loom_http_upstream *up = upstream(&cfg, hole.addr, NULL);
    struct loom_http_request req = { .method = LOOM_HTTP_GET, .target = LOOM_STR("/never") };

    /* In flight: the server has the request. */
    struct res r = { 0 };
    struct loom_http_call_ref ref;
    CHECK_INT(loom_http_upstream_request(up, &req, on_res, &r, &ref, NULL), LOOM_OK);
    for (int i = 0; i < 500 && atomic_load(&hole.requests) < 1; i++)
        loom_loop_run_once(cloop, 5 * LOOM_NS_PER_MS);
    CHECK_INT(atomic_load(&hole.requests), 1);
    CHECK_INT(r.done, 0);
    CHECK(loom_http_call_cancel(ref));
    CHECK_INT(r.done, 1); /* synchronously */
    CHECK_INT(r.err, LOOM_ECANCELED);
    CHECK(!loom_http_call_cancel(ref));
    struct loom_http_addr_stats st;
    addr_stats(up, 0, &st);
    CHECK_UINT(st.connections, 0);
    CHECK_UINT(st.outstanding, 0);
    CHECK_UINT(st.failures, 0);
    run_for(30);
    CHECK_INT(r.done, 1);

    /* Before the loop ran at all (still connecting). */
    struct res r2 = { 0 };
    CHECK_INT(loom_http_upstream_request(up, &req, on_res, &r2, &ref, NULL), LOOM_OK);
    CHECK(loom_http_call_cancel(ref));
    CHECK_INT(r2.done, 1);
    CHECK_INT(r2.err, LOOM_ECANCELED);
    run_for(30);
    CHECK_INT(r2.done, 1);

    /* A stale reference to a completed call (whose memory a new call reuses) does nothing. */
    struct loom_http_call_ref old = ref;
    struct res r3 = { 0 };
    CHECK_INT(loom_http_upstream_request(up, &req, on_res, &r3, &ref, NULL), LOOM_OK);
    CHECK(ref.call == old.call);
    CHECK(!loom_http_call_cancel(old));
    CHECK_INT(r3.done, 0);

    /* Freeing the upstream cancels what is in flight. */
    loom_http_upstream_free(up);
    CHECK_INT(r3.done, 1);
    CHECK_INT(r3.err, LOOM_ECANCELED);
    raw_stop(&hole);
}

static void test_fetch(void)
{
    char url[128];
    struct loom_http_fetch_result res;
    struct loom_error err = { 0 };
    snprintf(url, sizeof(url), "http://%s/hello", srv_a.addr);
    CHECK_INT(loom_http_fetch(url, LOOM_HTTP_GET, NULL, 0, LOOM_STR_NULL, 0, 0, &res, &err),
              LOOM_OK);
    CHECK_INT(res.status, 200);
    CHECK_STR(res.body, "hello");
    CHECK_UINT(res.body_len, 5);
    struct loom_str ct = loom_http_header_get(res.headers, res.nheaders, "Content-Type", NULL);
    CHECK_SLICE(ct, "text/plain");
    loom_http_fetch_result_release(&res);

    snprintf(url, sizeof(url), "http://%s/echo", srv_a.addr);
    struct loom_http_header hs[] = { { LOOM_STR("Content-Type"), LOOM_STR("text/plain") } };
    CHECK_INT(loom_http_fetch(url, LOOM_HTTP_POST, hs, 1, LOOM_STR("ping"), 5 * LOOM_NS_PER_SEC, 0,
                              &res, &err),
              LOOM_OK);
    CHECK_STR(res.body, "ping");
    struct loom_str m = loom_http_header_get(res.headers, res.nheaders, "x-method", NULL);
    CHECK_SLICE(m, "POST");
    loom_http_fetch_result_release(&res);

    snprintf(url, sizeof(url), "http://%s/nope?x=1#frag", srv_a.addr);
    CHECK_INT(loom_http_fetch(url, LOOM_HTTP_GET, NULL, 0, LOOM_STR_NULL, 0, 0, &res, &err),
              LOOM_OK);
    CHECK_INT(res.status, 404);
    loom_http_fetch_result_release(&res);

    snprintf(url, sizeof(url), "http://%s/big", srv_a.addr);
    CHECK_INT(loom_http_fetch(url, LOOM_HTTP_GET, NULL, 0, LOOM_STR_NULL, 0, 100, &res, &err),
              LOOM_ETOOBIG);

    CHECK_INT(loom_http_fetch("https://example.com/", LOOM_HTTP_GET, NULL, 0, LOOM_STR_NULL, 0, 0,
                              &res, &err),
              LOOM_EUNSUPPORTED);
    CHECK_CONTAINS(err.msg, "TLS");
    CHECK_INT(loom_http_fetch("ftp://x/", LOOM_HTTP_GET, NULL, 0, LOOM_STR_NULL, 0, 0, &res, &err),
              LOOM_EINVAL);
    CHECK_INT(loom_http_fetch("http:///x", LOOM_HTTP_GET, NULL, 0, LOOM_STR_NULL, 0, 0, &res, &err),
              LOOM_EINVAL);
    char dead[32];
    dead_addr(dead, sizeof(dead));
    snprintf(url, sizeof(url), "http://%s", dead);
    CHECK_INT(loom_http_fetch(url, LOOM_HTTP_GET, NULL, 0, LOOM_STR_NULL, 0, 0, &res, &err),
              LOOM_ECONNECT);
    CHECK_CONTAINS(err.msg, "refused");
}

static void test_metrics(void)
{
    struct loom_metrics *reg = loom_metrics_new();
    struct loom_http_upstream_config cfg = { .name = "models",
                                             .metrics_owner = "test",
                                             .metrics = reg };
    struct loom_http_upstream *up = upstream(&cfg, srv_a.addr, NULL);
    struct res r;
    for (int i = 0; i < 3; i++)
        do_get(up, "/hello", &r);
    struct loom_buf page;
    loom_buf_init(&page, 0);
    CHECK_INT(loom_metrics_render(reg, "test", &page), LOOM_OK);
    char want[160];
    snprintf(want, sizeof(want),
             "loom_test_upstream_requests_total{upstream=\"models\",address=\"%s\"} 3\n",
             srv_a.addr);
    CHECK_CONTAINS(page.data, want);
    CHECK_CONTAINS(page.data, "# TYPE loom_test_upstream_ejections_total counter");
    loom_buf_release(&page);
    loom_http_upstream_free(up);
    loom_metrics_free(reg);
}

static void take_cb(struct loom_http_response *r, void *arg)
{
    struct loom_buf *kept = arg;
    loom_http_response_take_body(r, kept);
    CHECK_UINT(r->body.len, 0);
}

static void test_take_body_moves(void)
{
    struct loom_http_upstream_config cfg = { 0 };
    struct loom_http_upstream *up = upstream(&cfg, srv_a.addr, NULL);
    struct loom_buf kept;
    loom_buf_init(&kept, 0);
    struct loom_http_request req = { .method = LOOM_HTTP_GET, .target = LOOM_STR("/big") };
    CHECK_INT(loom_http_upstream_request(up, &req, take_cb, &kept, NULL, NULL), LOOM_OK);
    uint64_t end = loom_now_ns() + 5 * LOOM_NS_PER_SEC;
    while (kept.len == 0 && loom_now_ns() < end)
        loom_loop_run_once(cloop, 10 * LOOM_NS_PER_MS);
    CHECK_UINT(kept.len, 200000);
    CHECK(kept.data && kept.data[0] == 'a' && kept.data[25] == 'z');
    /* The next request on the same call memory starts from an empty body. */
    struct res r;
    do_get(up, "/hello", &r);
    CHECK_STR(r.body, "hello");
    loom_buf_release(&kept);
    loom_http_upstream_free(up);
}

static void test_unix_socket(void)
{
    struct loom_http_upstream_config cfg = { 0 };
    struct loom_http_upstream *up = upstream(&cfg, unix_addr, NULL);
    struct res r;
    for (int i = 0; i < 5; i++) {
        do_get(up, "/id", &r);
        CHECK_INT(r.status, 200);
        CHECK_STR(r.body, "u");
    }
    struct loom_http_header hs[] = { { LOOM_STR("X-Test"), LOOM_STR("abc") } };
    struct loom_http_request req = {
        .method = LOOM_HTTP_GET, .target = LOOM_STR("/hdr"), .headers = hs, .nheaders = 1
    };
    send_req(up, &req, &r);
    CHECK_STR(r.body, "abc|localhost"); /* a unix socket has no host name to send */
    struct loom_http_request post = { .method = LOOM_HTTP_POST,
                                      .target = LOOM_STR("/echo"),
                                      .body = LOOM_STR("{\"inputs\":[1,2,3]}") };
    send_req(up, &post, &r);
    CHECK_STR(r.body, "{\"inputs\":[1,2,3]}");
    struct loom_http_addr_stats st;
    addr_stats(up, 0, &st);
    CHECK_UINT(st.connects, 1);
    CHECK_UINT(st.requests, 7);
    loom_http_upstream_free(up);

    /* A second server cannot take a path where one listens, nor a file that is no socket. */
    struct loom_http_server_config scfg = { .name = "t2", .routes = routes, .nroutes = 1 };
    struct loom_error err = { 0 };
    struct loom_http_server *s2 = loom_http_server_new(&scfg, &err);
    struct loom_loop *l2 = loom_loop_new();
    CHECK(loom_http_server_listen(s2, l2, unix_addr, &err) != LOOM_OK);
    CHECK_CONTAINS(err.msg, "another server listens there");
    char file[80], faddr[96];
    snprintf(file, sizeof(file), "%s.file", unix_path);
    snprintf(faddr, sizeof(faddr), "unix:%s", file);
    FILE *f = fopen(file, "w");
    fclose(f);
    CHECK(loom_http_server_listen(s2, l2, faddr, &err) != LOOM_OK);
    CHECK_CONTAINS(err.msg, "is not a socket");
    unlink(file);
    CHECK_INT(loom_http_server_listen(s2, l2, "unix:relative.sock", &err), LOOM_EINVAL);
    loom_http_server_free(s2);
    loom_loop_free(l2);
    CHECK(access(unix_path, F_OK) == 0); /* the refused listens left the live one alone */

    /* A path where nothing listens: connect is refused, as for a closed TCP port. */
    char none[96];
    snprintf(none, sizeof(none), "unix:%s.none", unix_path);
    up = upstream(&cfg, none, NULL);
    do_get(up, "/id", &r);
    CHECK_INT(r.err, LOOM_ECONNECT);
    loom_http_upstream_free(up);
}

int main(void)
{
    loom_log_set_level(LOOM_LOG_ERROR);
    servers_start();
    cloop = loom_loop_new();
    RUN(test_keepalive_reuse);
    RUN(test_dead_idle_connection);
    RUN(test_pool_limits);
    RUN(test_framing);
    RUN(test_head_and_1xx);
    RUN(test_headers_and_host);
    RUN(test_deadline);
    RUN(test_connect_refused);
    RUN(test_retry_other_address);
    RUN(test_post_not_retried);
    RUN(test_retry_budget);
    RUN(test_breaker);
    RUN(test_p2c_spread);
    RUN(test_too_big);
    RUN(test_malformed);
    RUN(test_cancel);
    RUN(test_fetch);
    RUN(test_metrics);
    RUN(test_take_body_moves);
    RUN(test_dead_server);
    RUN(test_unix_socket);
    loom_loop_free(cloop);
    servers_stop();
    return check_report();
}
