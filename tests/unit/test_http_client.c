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

/* The length of the complete request at the start of `b` (head and Content-Length body), or 0
 * while it is incomplete. */
static size_t request_len(const struct loom_buf *b)
{
    const char *end = b->len ? strstr(b->data, "\r\n\r\n") : NULL;
    if (!end)
        return 0;
    size_t head = (size_t)(end - b->data) + 4, body = 0;
    const char *cl = strcasestr(b->data, "\r\ncontent-length:");
    if (cl && cl < end)
        body = strtoul(cl + 17, NULL, 10);
    return b->len < head + body ? 0 : head + body;
}

/* A listening loopback socket on a free port, for a test server's thread. */
static int listen_loopback(int *port, char addr[32])
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    CHECK_INT(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    CHECK_INT(listen(fd, 64), 0);
    *port = loom_net_local_port(fd);
    snprintf(addr, 32, "127.0.0.1:%d", *port);
    return fd;
}

/* Wake a test server's thread to stop, and wait for it. */
static void server_stop(pthread_t th, int lfd, int wake[2])
{
    CHECK_INT(write(wake[1], "x", 1), 1);
    pthread_join(th, NULL);
    close(lfd);
    close(wake[0]);
    close(wake[1]);
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
        size_t len = request_len(b);
        if (!len)
            return false;
        atomic_fetch_add(&r->requests, 1);
        loom_buf_consume(b, len);
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
    r->lfd = listen_loopback(&r->port, r->addr);
    CHECK_INT(pipe2(r->wake, O_CLOEXEC), 0);
    pthread_create(&r->th, NULL, raw_main, r);
}

static void raw_stop(struct raw *r)
{
    server_stop(r->th, r->lfd, r->wake);
}

/* ---- a raw server for pipelining: every request a read completes is answered in one write ---- */

enum pipe_act {
    PIPE_ANSWER,      /* 200 with the request's target as the body (none for HEAD) */
    PIPE_CLOSE_AFTER, /* answer with Connection: close, then close */
    PIPE_HANG_UP,     /* close without answering this request or the rest */
    PIPE_STALL,       /* answer nothing more on this connection */
    PIPE_GARBAGE,     /* answer with bytes that are not HTTP, then nothing more */
};

struct pipe_srv;
/* What to do with request `nth` (from 0) of the `conn`th connection accepted (from 0). */
typedef enum pipe_act (*pipe_fn)(int conn, int nth);

struct pipe_srv {
    int lfd, port, wake[2];
    pthread_t th;
    pipe_fn fn;
    int delay_ms;         /* before each answer of the first connection */
    atomic_bool no_reads; /* leave requests in the sockets */
    atomic_bool drop;     /* close every connection now, unread requests and all */
    atomic_int accepts, reads, requests;
    atomic_int per_conn[RAW_MAX_CONNS]; /* requests read on each connection */
    atomic_int most_per_read;           /* most requests one read completed */
    char addr[32];
};

struct pipe_conn {
    int fd, idx, nth;
    bool stalled;
    struct loom_buf in;
};

/* Serve the complete requests in c->in; true to close the connection. */
static bool pipe_serve(struct pipe_srv *ps, struct pipe_conn *c)
{
    struct loom_buf out;
    loom_buf_init(&out, 0);
    bool close_it = false;
    int n = 0;
    for (;;) {
        size_t len = request_len(&c->in);
        if (!len)
            break;
        n++;
        atomic_fetch_add(&ps->requests, 1);
        atomic_fetch_add(&ps->per_conn[c->idx], 1);
        const char *sp = strchr(c->in.data, ' ');
        const char *sp2 = sp ? strchr(sp + 1, ' ') : NULL;
        char target[128] = "";
        if (sp && sp2)
            snprintf(target, sizeof(target), "%.*s", (int)(sp2 - sp - 1), sp + 1);
        bool head_only = strncmp(c->in.data, "HEAD ", 5) == 0;
        loom_buf_consume(&c->in, len);
        if (c->stalled || close_it)
            continue;
        enum pipe_act act = ps->fn(c->idx, c->nth++);
        if (act == PIPE_STALL) {
            c->stalled = true;
            continue;
        }
        if (act == PIPE_HANG_UP) {
            close_it = true;
            continue;
        }
        if (act == PIPE_GARBAGE) {
            loom_buf_append(&out, "SSH-2.0-OpenSSH_9.2\r\n\r\n", 23);
            c->stalled = true;
            continue;
        }
        char h[256];
        int hn = snprintf(h, sizeof(h), "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n%s\r\n",
                          strlen(target), act == PIPE_CLOSE_AFTER ? "Connection: close\r\n" : "");
        loom_buf_append(&out, h, (size_t)hn);
        if (!head_only)
            loom_buf_append(&out, target, strlen(target));
        if (act == PIPE_CLOSE_AFTER)
            close_it = true;
    }
    int most = atomic_load(&ps->most_per_read);
    while (n > most && !atomic_compare_exchange_weak(&ps->most_per_read, &most, n)) {
    }
    if (c->idx == 0 && ps->delay_ms && (out.len || close_it))
        usleep((useconds_t)ps->delay_ms * 1000);
    if (out.len)
        send_all(c->fd, out.data, out.len);
    loom_buf_release(&out);
    return close_it;
}

static void *pipe_main(void *arg)
{
    struct pipe_srv *ps = arg;
    struct pipe_conn conns[RAW_MAX_CONNS];
    int n = 0;
    for (;;) {
        if (atomic_exchange(&ps->drop, false)) {
            for (int i = 0; i < n; i++) {
                close(conns[i].fd); /* unread bytes: a reset, as from a killed process */
                loom_buf_release(&conns[i].in);
            }
            n = 0;
        }
        struct pollfd pfd[RAW_MAX_CONNS + 2];
        pfd[0] = (struct pollfd){ .fd = ps->wake[0], .events = POLLIN };
        pfd[1] = (struct pollfd){ .fd = ps->lfd, .events = POLLIN };
        bool reads = !atomic_load(&ps->no_reads);
        for (int i = 0; i < n; i++)
            pfd[2 + i] = (struct pollfd){ .fd = conns[i].fd, .events = reads ? POLLIN : 0 };
        int polled = n;
        if (poll(pfd, (nfds_t)(2 + n), reads ? 1000 : 5) < 0)
            continue;
        if (pfd[0].revents)
            break;
        if ((pfd[1].revents & POLLIN) && n < RAW_MAX_CONNS) {
            int fd = accept4(ps->lfd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0) {
                int idx = atomic_fetch_add(&ps->accepts, 1);
                conns[n] = (struct pipe_conn){ .fd = fd, .idx = LOOM_MIN(idx, RAW_MAX_CONNS - 1) };
                loom_buf_init(&conns[n].in, 0);
                n++;
            }
        }
        for (int i = polled - 1; i >= 0; i--) {
            if (!pfd[2 + i].revents)
                continue;
            char tmp[65536];
            ssize_t k = recv(conns[i].fd, tmp, sizeof(tmp), 0);
            bool close_it = k <= 0;
            if (k > 0) {
                atomic_fetch_add(&ps->reads, 1);
                loom_buf_append(&conns[i].in, tmp, (size_t)k);
                close_it = pipe_serve(ps, &conns[i]);
            }
            if (close_it) {
                close(conns[i].fd);
                loom_buf_release(&conns[i].in);
                conns[i] = conns[--n];
            }
        }
    }
    for (int i = 0; i < n; i++) {
        close(conns[i].fd);
        loom_buf_release(&conns[i].in);
    }
    return NULL;
}

static void pipe_start(struct pipe_srv *ps, pipe_fn fn)
{
    memset(ps, 0, sizeof(*ps));
    ps->fn = fn;
    ps->lfd = listen_loopback(&ps->port, ps->addr);
    CHECK_INT(pipe2(ps->wake, O_CLOEXEC), 0);
    pthread_create(&ps->th, NULL, pipe_main, ps);
}

static void pipe_stop(struct pipe_srv *ps)
{
    server_stop(ps->th, ps->lfd, ps->wake);
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
    /* Again: the call's memory, reused from the pool, gets its free retry again. */
    for (int i = 0; i < 200 && atomic_load(&raw.closes) < 4; i++)
        usleep(1000);
    usleep(20000);
    do_get(up, "/x", &r);
    CHECK_INT(r.err, LOOM_OK);
    CHECK_INT(r.status, 200);
    CHECK_INT(atomic_load(&raw.accepts), 5);
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

/* ---- pipelining ---- */

/* Callbacks of pipelined calls, recorded in the order they run. */
struct seq {
    int order[64];
    int n;
};

struct pres {
    struct res r;
    int idx;
    char target[32];
    struct seq *seq;
};

static void on_pres(struct loom_http_response *resp, void *arg)
{
    struct pres *p = arg;
    on_res(resp, &p->r);
    if (p->seq->n < 64)
        p->seq->order[p->seq->n] = p->idx;
    p->seq->n++;
}

/* Submit `n` requests in one go (one loop iteration): GET /p/<i> unless `methods` says
 * otherwise ('H' HEAD, 'P' POST, 'G' GET). */
static void pipe_submit(struct loom_http_upstream *up, struct pres *p, int n, struct seq *seq,
                        const char *methods, struct loom_http_call_ref *refs)
{
    for (int i = 0; i < n; i++) {
        memset(&p[i], 0, sizeof(p[i]));
        p[i].idx = i;
        p[i].seq = seq;
        char m = methods ? methods[i] : 'G';
        snprintf(p[i].target, sizeof(p[i].target), "/%s/%d", m == 'P' ? "post" : "p", i);
        struct loom_http_request req = {
            .method = m == 'H'   ? LOOM_HTTP_HEAD
                      : m == 'P' ? LOOM_HTTP_POST
                                 : LOOM_HTTP_GET,
            .target = loom_str_cstr(p[i].target),
            .body = m == 'P' ? LOOM_STR("{}") : LOOM_STR_NULL,
        };
        CHECK_INT(
            loom_http_upstream_request(up, &req, on_pres, &p[i], refs ? &refs[i] : NULL, NULL),
            LOOM_OK);
    }
}

static void check_answers(const struct pres *p, int n)
{
    for (int i = 0; i < n; i++) {
        CHECK_INT(p[i].r.done, 1);
        CHECK_INT(p[i].r.err, LOOM_OK);
        CHECK_INT(p[i].r.status, 200);
        CHECK_STR(p[i].r.body, p[i].target);
    }
}

static enum pipe_act pipe_answer_all(int conn, int nth)
{
    LOOM_UNUSED(conn);
    LOOM_UNUSED(nth);
    return PIPE_ANSWER;
}

static void test_pipeline_one_write(void)
{
    /* 8 calls of one loop iteration leave in one write on one connection, whether it is being
     * opened (the first round) or taken from the pool (the second); the server reads them in one
     * read, answers in one write, and the callbacks run in order with their own responses. */
    struct pipe_srv ps;
    pipe_start(&ps, pipe_answer_all);
    struct loom_http_upstream_config cfg = { .pipeline_depth = 8 };
    struct loom_http_upstream *up = upstream(&cfg, ps.addr, NULL);
    for (int round = 0; round < 2; round++) {
        struct pres p[8];
        struct seq seq = { 0 };
        pipe_submit(up, p, 8, &seq, NULL, NULL);
        CHECK(run_until(&seq.n, 8, 5000));
        check_answers(p, 8);
        for (int i = 0; i < 8; i++) {
            CHECK_INT(seq.order[i], i);
            CHECK_INT(p[i].r.attempts, 1);
        }
        CHECK_INT(atomic_load(&ps.accepts), 1);
        CHECK_INT(atomic_load(&ps.reads), round + 1);
        CHECK_INT(atomic_load(&ps.requests), 8 * (round + 1));
        CHECK_INT(atomic_load(&ps.most_per_read), 8);
    }
    /* HEAD responses in the middle of a pipeline have no body. */
    struct pres p[3];
    struct seq seq = { 0 };
    pipe_submit(up, p, 3, &seq, "GHG", NULL);
    CHECK(run_until(&seq.n, 3, 5000));
    CHECK_STR(p[0].r.body, "/p/0");
    CHECK_INT(p[1].r.status, 200);
    CHECK_UINT(p[1].r.body_len, 0);
    CHECK_STR(p[1].r.clen, "4");
    CHECK_STR(p[2].r.body, "/p/2");
    struct loom_http_addr_stats st;
    addr_stats(up, 0, &st);
    CHECK_UINT(st.connects, 1);
    CHECK_UINT(st.connections, 1);
    CHECK_UINT(st.idle, 1);
    CHECK_UINT(st.outstanding, 0);
    CHECK_UINT(st.requests, 19);
    CHECK_UINT(st.failures, 0);
    /* Freed before the end of the iteration whose calls wait for the flush task: they are
     * cancelled, and the task, left queued on the loop, frees itself when it runs. */
    memset(&seq, 0, sizeof(seq));
    pipe_submit(up, p, 3, &seq, NULL, NULL);
    loom_http_upstream_free(up);
    CHECK_INT(seq.n, 3);
    CHECK_INT(p[0].r.err, LOOM_ECANCELED);
    run_for(10);
    CHECK_INT(atomic_load(&ps.requests), 19);
    pipe_stop(&ps);

    /* A loom HTTP server answers pipelined requests too (in order, one at a time). */
    up = upstream(&cfg, srv_a.addr, NULL);
    struct pres q[8];
    struct seq sq = { 0 };
    int hits = atomic_load(&srv_a.hits);
    for (int i = 0; i < 8; i++) {
        struct loom_http_request req = { .method = LOOM_HTTP_GET, .target = LOOM_STR("/id") };
        q[i] = (struct pres){ .idx = i, .seq = &sq };
        CHECK_INT(loom_http_upstream_request(up, &req, on_pres, &q[i], NULL, NULL), LOOM_OK);
    }
    CHECK(run_until(&sq.n, 8, 5000));
    for (int i = 0; i < 8; i++) {
        CHECK_INT(sq.order[i], i);
        CHECK_STR(q[i].r.body, "a");
    }
    CHECK_INT(atomic_load(&srv_a.hits), hits + 8);
    /* Responses of 200,000 bytes each: they span many reads, and one read holds the end of one
     * and the start of the next. */
    memset(&sq, 0, sizeof(sq));
    for (int i = 0; i < 4; i++) {
        struct loom_http_request req = { .method = LOOM_HTTP_GET, .target = LOOM_STR("/big") };
        q[i] = (struct pres){ .idx = i, .seq = &sq };
        CHECK_INT(loom_http_upstream_request(up, &req, on_pres, &q[i], NULL, NULL), LOOM_OK);
    }
    CHECK(run_until(&sq.n, 4, 5000));
    for (int i = 0; i < 4; i++) {
        CHECK_INT(sq.order[i], i);
        CHECK_INT(q[i].r.status, 200);
        CHECK_UINT(q[i].r.body_len, 200000);
        CHECK(q[i].r.body[0] == 'a' && q[i].r.body[25] == 'z' && q[i].r.body[26] == 'a');
    }
    addr_stats(up, 0, &st);
    CHECK_UINT(st.connects, 1);
    loom_http_upstream_free(up);
}

static enum pipe_act pipe_hang_up_after_3(int conn, int nth)
{
    return conn == 0 && nth == 3 ? PIPE_HANG_UP : PIPE_ANSWER;
}

static enum pipe_act pipe_garbage_second(int conn, int nth)
{
    return conn == 0 && nth == 1 ? PIPE_GARBAGE : PIPE_ANSWER;
}

static void test_pipeline_server_closes(void)
{
    /* The server answers 3 of 8 and closes: the other 5 go again on a new connection, and the
     * breaker sees no failure (a keep-alive race), nor does the retry budget refuse anything. */
    struct pipe_srv ps;
    pipe_start(&ps, pipe_hang_up_after_3);
    struct loom_http_upstream_config cfg = { .pipeline_depth = 8,
                                             .retry_budget_ratio = -1,
                                             .retry_budget_min_per_sec = -1 };
    struct loom_http_upstream *up = upstream(&cfg, ps.addr, NULL);
    struct pres p[8];
    struct seq seq = { 0 };
    pipe_submit(up, p, 8, &seq, NULL, NULL);
    CHECK(run_until(&seq.n, 8, 5000));
    check_answers(p, 8);
    for (int i = 0; i < 3; i++)
        CHECK_INT(p[i].r.attempts, 1);
    CHECK_INT(atomic_load(&ps.accepts), 2);
    CHECK_INT(atomic_load(&ps.per_conn[0]), 8);
    CHECK_INT(atomic_load(&ps.per_conn[1]), 5);
    struct loom_http_addr_stats st;
    addr_stats(up, 0, &st);
    CHECK_UINT(st.failures, 0);
    CHECK_UINT(st.consecutive_failures, 0);
    CHECK_UINT(st.outstanding, 0);
    CHECK_INT(st.state, LOOM_HTTP_ADDR_HEALTHY);
    struct loom_http_upstream_stats ust;
    loom_http_upstream_stats(up, &ust);
    CHECK_UINT(ust.retries_denied, 0); /* the budget is 0: none was asked for */
    CHECK_UINT(ust.in_flight, 0);
    loom_http_upstream_free(up);
    pipe_stop(&ps);

    /* A malformed response in the middle: that call is a breaker failure and is retried (from
     * the budget); the ones behind go again as neither. */
    pipe_start(&ps, pipe_garbage_second);
    cfg.retry_budget_ratio = 0;
    cfg.retry_budget_min_per_sec = 0;
    up = upstream(&cfg, ps.addr, NULL);
    memset(&seq, 0, sizeof(seq));
    pipe_submit(up, p, 8, &seq, NULL, NULL);
    CHECK(run_until(&seq.n, 8, 5000));
    check_answers(p, 8);
    CHECK_INT(p[0].r.attempts, 1);
    CHECK_INT(p[1].r.attempts, 2);
    CHECK_INT(atomic_load(&ps.accepts), 2);
    CHECK_INT(atomic_load(&ps.per_conn[1]), 7);
    addr_stats(up, 0, &st);
    CHECK_UINT(st.failures, 1);
    loom_http_upstream_stats(up, &ust);
    CHECK_UINT(ust.retries_denied, 0);
    loom_http_upstream_free(up);
    pipe_stop(&ps);
}

static enum pipe_act pipe_close_first(int conn, int nth)
{
    return conn == 0 && nth == 0 ? PIPE_CLOSE_AFTER : PIPE_ANSWER;
}

static void test_pipeline_connection_close(void)
{
    /* The first response says Connection: close: the 7 behind it go again on a new connection.
     * The server processed none of them, so the re-send is not even an attempt. */
    struct pipe_srv ps;
    pipe_start(&ps, pipe_close_first);
    struct loom_http_upstream_config cfg = { .pipeline_depth = 8,
                                             .max_attempts = 1,
                                             .retry_budget_ratio = -1,
                                             .retry_budget_min_per_sec = -1 };
    struct loom_http_upstream *up = upstream(&cfg, ps.addr, NULL);
    struct pres p[8];
    struct seq seq = { 0 };
    pipe_submit(up, p, 8, &seq, NULL, NULL);
    CHECK(run_until(&seq.n, 8, 5000));
    check_answers(p, 8);
    for (int i = 0; i < 8; i++)
        CHECK_INT(p[i].r.attempts, 1);
    CHECK_INT(atomic_load(&ps.accepts), 2);
    CHECK_INT(atomic_load(&ps.per_conn[1]), 7);
    struct loom_http_addr_stats st;
    addr_stats(up, 0, &st);
    CHECK_UINT(st.failures, 0);
    CHECK_UINT(st.connections, 1);
    CHECK_UINT(st.idle, 1);
    loom_http_upstream_free(up);
    pipe_stop(&ps);
}

static void test_pipeline_not_idempotent(void)
{
    /* A POST has a connection of its own, and nothing is pipelined behind it; the GETs of the
     * same iteration share one. A POST the caller marks idempotent is pipelined. */
    struct pipe_srv ps;
    pipe_start(&ps, pipe_answer_all);
    struct loom_http_upstream_config cfg = { .pipeline_depth = 8 };
    struct loom_http_upstream *up = upstream(&cfg, ps.addr, NULL);
    struct pres p[6];
    struct seq seq = { 0 };
    pipe_submit(up, p, 6, &seq, "PGGGGP", NULL);
    CHECK(run_until(&seq.n, 6, 5000));
    check_answers(p, 6);
    CHECK_INT(atomic_load(&ps.accepts), 3);
    int ones = 0, fours = 0;
    for (int i = 0; i < 3; i++) {
        ones += atomic_load(&ps.per_conn[i]) == 1;
        fours += atomic_load(&ps.per_conn[i]) == 4;
    }
    CHECK_INT(ones, 2);
    CHECK_INT(fours, 1);
    loom_http_upstream_free(up);

    /* Marked idempotent: one connection for all. */
    up = upstream(&cfg, ps.addr, NULL);
    int accepts = atomic_load(&ps.accepts);
    struct res r[4];
    int done = 0;
    for (int i = 0; i < 4; i++) {
        struct loom_http_request req = { .method = LOOM_HTTP_POST,
                                         .target = LOOM_STR("/infer"),
                                         .body = LOOM_STR("{\"inputs\":[1]}"),
                                         .idempotent = LOOM_HTTP_IDEMPOTENT_YES };
        memset(&r[i], 0, sizeof(r[i]));
        CHECK_INT(loom_http_upstream_request(up, &req, on_res, &r[i], NULL, NULL), LOOM_OK);
    }
    uint64_t end = loom_now_ns() + 5 * LOOM_NS_PER_SEC;
    while (done < 4 && loom_now_ns() < end) {
        loom_loop_run_once(cloop, 10 * LOOM_NS_PER_MS);
        done = r[0].done + r[1].done + r[2].done + r[3].done;
    }
    for (int i = 0; i < 4; i++)
        CHECK_STR(r[i].body, "/infer");
    CHECK_INT(atomic_load(&ps.accepts), accepts + 1);
    loom_http_upstream_free(up);
    pipe_stop(&ps);
}

static enum pipe_act pipe_stall_all(int conn, int nth)
{
    LOOM_UNUSED(conn);
    LOOM_UNUSED(nth);
    return PIPE_STALL;
}

/* Cancels another call (in the same batch of responses) from inside a callback. */
struct canceller {
    struct pres p;
    struct loom_http_call_ref victim;
    bool cancelled;
};

static void on_cancel_other(struct loom_http_response *resp, void *arg)
{
    struct canceller *c = arg;
    on_pres(resp, &c->p);
    c->cancelled = loom_http_call_cancel(c->victim);
}

static enum pipe_act pipe_hang_up_first(int conn, int nth)
{
    return conn == 0 && nth == 0 ? PIPE_HANG_UP : PIPE_ANSWER;
}

static void test_pipeline_cancel(void)
{
    /* The server takes 150 ms to answer the first connection. The 2nd of 4 calls is cancelled
     * once all four were written: its callback runs then, with LOOM_ECANCELED, never with its
     * response, which is read and dropped; the others get theirs, and the connection is kept. */
    struct pipe_srv ps;
    pipe_start(&ps, pipe_answer_all);
    ps.delay_ms = 150;
    struct loom_http_upstream_config cfg = { .pipeline_depth = 8 };
    struct loom_http_upstream *up = upstream(&cfg, ps.addr, NULL);
    struct pres p[5];
    struct seq seq = { 0 };
    struct loom_http_call_ref refs[5];
    pipe_submit(up, p, 4, &seq, NULL, refs);
    for (int i = 0; i < 500 && atomic_load(&ps.requests) < 4; i++)
        loom_loop_run_once(cloop, 2 * LOOM_NS_PER_MS);
    CHECK_INT(atomic_load(&ps.requests), 4);
    CHECK_INT(seq.n, 0);
    CHECK(loom_http_call_cancel(refs[1]));
    CHECK_INT(p[1].r.done, 1);
    CHECK_INT(p[1].r.err, LOOM_ECANCELED);
    CHECK(!loom_http_call_cancel(refs[1]));
    CHECK(run_until(&seq.n, 4, 5000));
    run_for(30);
    CHECK_INT(seq.n, 4);
    CHECK_INT(seq.order[0], 1);
    CHECK_INT(seq.order[1], 0);
    CHECK_INT(seq.order[2], 2);
    CHECK_INT(seq.order[3], 3);
    CHECK_INT(p[1].r.done, 1);
    CHECK_INT(p[1].r.err, LOOM_ECANCELED);
    check_answers(&p[2], 2);
    check_answers(&p[0], 1);
    CHECK_INT(atomic_load(&ps.accepts), 1);
    struct loom_http_addr_stats st;
    addr_stats(up, 0, &st);
    CHECK_UINT(st.idle, 1);
    CHECK_UINT(st.connections, 1);
    CHECK_UINT(st.outstanding, 0);
    CHECK_UINT(st.failures, 0);

    /* Cancelled before they were written (the first, one in the middle, the last): they leave
     * the queue and never reach the server. The pooled connection serves the rest. */
    ps.delay_ms = 0;
    memset(&seq, 0, sizeof(seq));
    pipe_submit(up, p, 5, &seq, NULL, refs);
    CHECK(loom_http_call_cancel(refs[0]));
    CHECK(loom_http_call_cancel(refs[2]));
    CHECK(loom_http_call_cancel(refs[4]));
    CHECK(run_until(&seq.n, 5, 5000));
    run_for(30);
    CHECK_INT(seq.n, 5);
    CHECK_INT(p[0].r.err, LOOM_ECANCELED);
    CHECK_INT(p[2].r.err, LOOM_ECANCELED);
    CHECK_INT(p[4].r.err, LOOM_ECANCELED);
    check_answers(&p[1], 1);
    check_answers(&p[3], 1);
    CHECK_INT(atomic_load(&ps.requests), 6);
    CHECK_INT(atomic_load(&ps.accepts), 1);

    /* The first callback cancels the third call, whose response came in the same read and
     * waits for its turn: it is cancelled (the response is dropped), the others unaffected. */
    memset(&seq, 0, sizeof(seq));
    struct canceller cc = { .p = { .idx = 0, .seq = &seq } };
    snprintf(cc.p.target, sizeof(cc.p.target), "/first");
    struct loom_http_request first = { .method = LOOM_HTTP_GET, .target = LOOM_STR("/first") };
    CHECK_INT(loom_http_upstream_request(up, &first, on_cancel_other, &cc, NULL, NULL), LOOM_OK);
    pipe_submit(up, &p[1], 3, &seq, NULL, &refs[1]);
    for (int i = 1; i < 4; i++) /* pipe_submit numbered them from 0 */
        p[i].idx = i;
    cc.victim = refs[2];
    CHECK(run_until(&seq.n, 4, 5000));
    run_for(30);
    CHECK(cc.cancelled);
    CHECK_INT(seq.n, 4);
    CHECK_INT(seq.order[0], 0);
    CHECK_INT(seq.order[1], 2); /* the cancelled one, from inside the first callback */
    CHECK_INT(p[2].r.err, LOOM_ECANCELED);
    CHECK_STR(cc.p.r.body, "/first");
    CHECK_STR(p[1].r.body, "/p/0");
    CHECK_STR(p[3].r.body, "/p/2");
    CHECK_INT(atomic_load(&ps.accepts), 1);
    loom_http_upstream_free(up);

    /* A request cancelled while written in part (the server reads nothing for now): the
     * connection is closed, and the calls before and after it are answered on another. */
    atomic_store(&ps.no_reads, true);
    up = upstream(&cfg, ps.addr, NULL);
    size_t huge_len = 16u << 20; /* more than loopback socket buffers hold */
    char *huge = malloc(huge_len);
    memset(huge, 'h', huge_len);
    memset(&seq, 0, sizeof(seq));
    for (int i = 0; i < 3; i++) {
        p[i] = (struct pres){ .idx = i, .seq = &seq };
        snprintf(p[i].target, sizeof(p[i].target), "/w/%d", i);
        struct loom_http_request req = { .method = i == 1 ? LOOM_HTTP_PUT : LOOM_HTTP_GET,
                                         .target = loom_str_cstr(p[i].target),
                                         .body = i == 1 ? loom_str_make(huge, huge_len)
                                                        : LOOM_STR_NULL };
        CHECK_INT(loom_http_upstream_request(up, &req, on_pres, &p[i], &refs[i], NULL), LOOM_OK);
    }
    run_for(100);
    CHECK_INT(seq.n, 0);
    int accepts = atomic_load(&ps.accepts);
    CHECK(loom_http_call_cancel(refs[1]));
    CHECK_INT(p[1].r.err, LOOM_ECANCELED);
    memset(huge, 0, huge_len); /* the caller may reuse its body once the callback ran */
    atomic_store(&ps.no_reads, false);
    CHECK(run_until(&seq.n, 3, 5000));
    CHECK_STR(p[0].r.body, "/w/0");
    CHECK_STR(p[2].r.body, "/w/2");
    CHECK_INT(p[2].r.attempts, 1); /* never written: not counted */
    CHECK_INT(atomic_load(&ps.accepts), accepts + 1);
    addr_stats(up, 0, &st);
    CHECK_UINT(st.failures, 0);
    loom_http_upstream_free(up);
    free(huge);
    pipe_stop(&ps);

    /* A placeholder at the head of a connection the server then closes: the calls behind it
     * go again, and nobody's attempt is a failure. */
    pipe_start(&ps, pipe_hang_up_first);
    ps.delay_ms = 150;
    up = upstream(&cfg, ps.addr, NULL);
    memset(&seq, 0, sizeof(seq));
    pipe_submit(up, p, 3, &seq, NULL, refs);
    for (int i = 0; i < 500 && atomic_load(&ps.requests) < 3; i++)
        loom_loop_run_once(cloop, 2 * LOOM_NS_PER_MS);
    CHECK(loom_http_call_cancel(refs[0]));
    CHECK(run_until(&seq.n, 3, 5000));
    CHECK_INT(p[0].r.err, LOOM_ECANCELED);
    check_answers(&p[1], 2);
    CHECK_INT(atomic_load(&ps.accepts), 2);
    addr_stats(up, 0, &st);
    CHECK_UINT(st.failures, 0);
    loom_http_upstream_free(up);
    pipe_stop(&ps);

    /* Placeholders whose responses never come hold the connection no longer than their
     * deadline; the upstream can be freed with them in flight. */
    pipe_start(&ps, pipe_stall_all);
    for (int pass = 0; pass < 2; pass++) {
        up = upstream(&cfg, ps.addr, NULL);
        int before = atomic_load(&ps.requests);
        struct res r[2] = { 0 };
        for (int i = 0; i < 2; i++) {
            struct loom_http_request req = { .method = LOOM_HTTP_GET,
                                             .target = LOOM_STR("/never"),
                                             .timeout = 200 * LOOM_NS_PER_MS };
            CHECK_INT(loom_http_upstream_request(up, &req, on_res, &r[i], &refs[i], NULL), LOOM_OK);
        }
        for (int i = 0; i < 500 && atomic_load(&ps.requests) < before + 2; i++)
            loom_loop_run_once(cloop, 2 * LOOM_NS_PER_MS);
        CHECK(loom_http_call_cancel(refs[0]));
        CHECK(loom_http_call_cancel(refs[1]));
        CHECK_INT(r[0].err, LOOM_ECANCELED);
        CHECK_INT(r[1].err, LOOM_ECANCELED);
        addr_stats(up, 0, &st);
        CHECK_UINT(st.connections, 1);
        CHECK_UINT(st.outstanding, 0);
        if (pass == 0) {
            run_for(300);
            addr_stats(up, 0, &st);
            CHECK_UINT(st.connections, 0);
            CHECK_UINT(st.failures, 0);
        }
        loom_http_upstream_free(up);
        CHECK_INT(r[0].done + r[1].done, 2);
    }
    pipe_stop(&ps);
}

static enum pipe_act pipe_stall_after_first(int conn, int nth)
{
    return conn == 0 && nth > 0 ? PIPE_STALL : PIPE_ANSWER;
}

static void test_pipeline_try_timeout(void)
{
    /* The server answers the first of 4 and stalls: the try timeout of the 2nd closes the
     * connection, and it and the two behind it go again on a new connection, where they are
     * answered. Only the timed-out call is a breaker failure. */
    struct pipe_srv ps;
    pipe_start(&ps, pipe_stall_after_first);
    struct loom_http_upstream_config cfg = { .pipeline_depth = 8,
                                             .try_timeout = 200 * LOOM_NS_PER_MS };
    struct loom_http_upstream *up = upstream(&cfg, ps.addr, NULL);
    struct pres p[4];
    struct seq seq = { 0 };
    uint64_t t0 = loom_now_ns();
    pipe_submit(up, p, 4, &seq, NULL, NULL);
    CHECK(run_until(&seq.n, 4, 5000));
    CHECK(loom_now_ns() - t0 >= 190 * LOOM_NS_PER_MS);
    check_answers(p, 4);
    CHECK_INT(seq.order[0], 0);
    CHECK_INT(p[0].r.attempts, 1);
    for (int i = 1; i < 4; i++)
        CHECK_INT(p[i].r.attempts, 2);
    CHECK_INT(atomic_load(&ps.accepts), 2);
    CHECK_INT(atomic_load(&ps.per_conn[0]), 4);
    CHECK_INT(atomic_load(&ps.per_conn[1]), 3);
    struct loom_http_addr_stats st;
    addr_stats(up, 0, &st);
    CHECK_UINT(st.failures, 1);
    CHECK_UINT(st.outstanding, 0);
    loom_http_upstream_free(up);
    pipe_stop(&ps);

    /* Without retries the timed-out call fails, and so do the calls behind it: the server may
     * have run them (their requests were written), so going again would be another attempt. */
    pipe_start(&ps, pipe_stall_after_first);
    cfg.max_attempts = 1;
    up = upstream(&cfg, ps.addr, NULL);
    memset(&seq, 0, sizeof(seq));
    pipe_submit(up, p, 4, &seq, NULL, NULL);
    CHECK(run_until(&seq.n, 4, 5000));
    check_answers(p, 1);
    int timed_out = 0, closed = 0; /* the three share a deadline: any may time out first */
    for (int i = 1; i < 4; i++) {
        timed_out += p[i].r.err == LOOM_ETIMEDOUT;
        if (p[i].r.err == LOOM_ECLOSED) {
            closed++;
            CHECK_CONTAINS(p[i].r.msg, "another request on it failed");
        }
    }
    CHECK_INT(timed_out, 1);
    CHECK_INT(closed, 2);
    CHECK_INT(atomic_load(&ps.accepts), 1);
    addr_stats(up, 0, &st);
    CHECK_UINT(st.failures, 1);
    CHECK_UINT(st.connections, 0);
    loom_http_upstream_free(up);
    pipe_stop(&ps);
}

static void test_pipeline_write_error(void)
{
    /* The server dies while the client is still writing a pipeline (a big request, unread):
     * the write fails, the first call (written, unanswered) is retried, the one written in part
     * and the one not written at all go again, and all three are answered on a new
     * connection. */
    struct pipe_srv ps;
    pipe_start(&ps, pipe_answer_all);
    atomic_store(&ps.no_reads, true);
    struct loom_http_upstream_config cfg = { .pipeline_depth = 8 };
    struct loom_http_upstream *up = upstream(&cfg, ps.addr, NULL);
    size_t huge_len = 16u << 20;
    char *huge = malloc(huge_len);
    memset(huge, 'h', huge_len);
    struct pres p[3];
    struct seq seq = { 0 };
    for (int i = 0; i < 3; i++) {
        p[i] = (struct pres){ .idx = i, .seq = &seq };
        snprintf(p[i].target, sizeof(p[i].target), "/w/%d", i);
        struct loom_http_request req = { .method = i == 1 ? LOOM_HTTP_PUT : LOOM_HTTP_GET,
                                         .target = loom_str_cstr(p[i].target),
                                         .body = i == 1 ? loom_str_make(huge, huge_len)
                                                        : LOOM_STR_NULL };
        CHECK_INT(loom_http_upstream_request(up, &req, on_pres, &p[i], NULL, NULL), LOOM_OK);
    }
    run_for(100);
    CHECK_INT(seq.n, 0);
    atomic_store(&ps.no_reads, false);
    atomic_store(&ps.drop, true);
    CHECK(run_until(&seq.n, 3, 10000));
    check_answers(p, 3);
    CHECK_INT(p[0].r.attempts, 2);
    CHECK_INT(p[1].r.attempts, 2);
    CHECK_INT(p[2].r.attempts, 1);
    CHECK_INT(atomic_load(&ps.accepts), 2);
    struct loom_http_addr_stats st;
    addr_stats(up, 0, &st);
    CHECK_UINT(st.failures, 1);
    CHECK_UINT(st.outstanding, 0);
    loom_http_upstream_free(up);
    free(huge);
    pipe_stop(&ps);
}

static void test_pipeline_depth(void)
{
    /* Depth 1 (the default): one connection per concurrent call, as without pipelining. */
    struct pipe_srv ps;
    pipe_start(&ps, pipe_answer_all);
    struct loom_http_upstream_config cfg = { 0 };
    struct loom_http_upstream *up = upstream(&cfg, ps.addr, NULL);
    struct pres p[8];
    struct seq seq = { 0 };
    pipe_submit(up, p, 4, &seq, NULL, NULL);
    CHECK(run_until(&seq.n, 4, 5000));
    check_answers(p, 4);
    CHECK_INT(atomic_load(&ps.accepts), 4);
    for (int i = 0; i < 4; i++)
        CHECK_INT(atomic_load(&ps.per_conn[i]), 1);
    loom_http_upstream_free(up);
    pipe_stop(&ps);

    /* Depth 4: 8 calls fill two connections, 4 each. */
    pipe_start(&ps, pipe_answer_all);
    cfg.pipeline_depth = 4;
    up = upstream(&cfg, ps.addr, NULL);
    memset(&seq, 0, sizeof(seq));
    pipe_submit(up, p, 8, &seq, NULL, NULL);
    CHECK(run_until(&seq.n, 8, 5000));
    check_answers(p, 8);
    CHECK_INT(atomic_load(&ps.accepts), 2);
    CHECK_INT(atomic_load(&ps.per_conn[0]), 4);
    CHECK_INT(atomic_load(&ps.per_conn[1]), 4);
    loom_http_upstream_free(up);
    pipe_stop(&ps);
}

static void test_pipeline_dead_server(void)
{
    /* As test_dead_server, with up to 8 calls in flight on each connection to B when it dies:
     * not one request fails. */
    struct pipe_srv b;
    pipe_start(&b, pipe_answer_all);
    struct loom_http_upstream_config cfg = { .pipeline_depth = 8 };
    struct loom_http_upstream *up = upstream(&cfg, srv_a.addr, b.addr);
    struct load l = { .up = up, .target = "/hello", .total = 3000, .max_inflight = 48 };
    load_pump(&l);
    bool killed = false;
    uint64_t end = loom_now_ns() + 20 * LOOM_NS_PER_SEC;
    while (l.done < l.total && loom_now_ns() < end) {
        loom_loop_run_once(cloop, 10 * LOOM_NS_PER_MS);
        if (!killed && l.done >= 600 && (l.by_addr[1] >= 100 || l.done >= 2000)) {
            killed = true;
            pipe_stop(&b);
        }
    }
    if (!killed)
        pipe_stop(&b);
    CHECK(killed);
    CHECK_INT(l.done, l.total);
    CHECK_INT(l.failed, 0);
    struct loom_http_addr_stats st;
    addr_stats(up, 1, &st);
    CHECK(st.ejections >= 1);
    addr_stats(up, 0, &st);
    CHECK(st.connects < 20); /* the calls to A share connections */
    loom_http_upstream_free(up);
}

/* Mostly answers; sometimes closes after answering, hangs up, stalls or sends garbage. */
static _Thread_local unsigned chaos_seed;

static enum pipe_act pipe_chaos(int conn, int nth)
{
    LOOM_UNUSED(conn);
    LOOM_UNUSED(nth);
    unsigned r = (unsigned)rand_r(&chaos_seed) % 100;
    return r < 84   ? PIPE_ANSWER
           : r < 89 ? PIPE_CLOSE_AFTER
           : r < 94 ? PIPE_HANG_UP
           : r < 97 ? PIPE_STALL
                    : PIPE_GARBAGE;
}

#define CHAOS_CALLS 600

struct chaos;

struct chaos_slot {
    struct chaos *ch;
    int idx;
};

struct chaos {
    struct loom_http_upstream *up;
    struct chaos_slot slots[CHAOS_CALLS];
    struct loom_http_call_ref refs[CHAOS_CALLS];
    int done[CHAOS_CALLS];
    int total, started, finished, answered, cancelled, max_inflight;
    unsigned seed;
    struct loom_str big;
};

static void chaos_pump(struct chaos *ch);

/* Cancel a random call that is still in flight, if the dice say so. */
static void chaos_cancel_some(struct chaos *ch, unsigned percent)
{
    if (ch->started == 0 || (unsigned)rand_r(&ch->seed) % 100 >= percent)
        return;
    int i = (int)((unsigned)rand_r(&ch->seed) % (unsigned)ch->started);
    if (ch->done[i] == 0 && loom_http_call_cancel(ch->refs[i]))
        ch->cancelled++;
}

static void chaos_cb(struct loom_http_response *r, void *arg)
{
    struct chaos_slot *s = arg;
    struct chaos *ch = s->ch;
    ch->done[s->idx]++;
    ch->finished++;
    CHECK_INT(ch->done[s->idx], 1);
    CHECK(r->err == LOOM_OK || r->err == LOOM_ECANCELED || r->err == LOOM_ECLOSED ||
          r->err == LOOM_ETIMEDOUT || r->err == LOOM_EPARSE || r->err == LOOM_ECONNECT ||
          r->err == LOOM_EUNAVAIL);
    if (r->err == LOOM_OK) {
        ch->answered++;
        CHECK_INT(r->status, 200);
    }
    if (r->err != LOOM_ECANCELED) {
        chaos_cancel_some(ch, 10); /* from inside a callback, while others may be pending */
        chaos_pump(ch);
    }
}

static void chaos_pump(struct chaos *ch)
{
    while (ch->started < ch->total && ch->started - ch->finished < ch->max_inflight) {
        int i = ch->started++;
        ch->slots[i] = (struct chaos_slot){ ch, i };
        unsigned kind = (unsigned)rand_r(&ch->seed) % 10;
        struct loom_http_request req = { .method = LOOM_HTTP_GET,
                                         .target = LOOM_STR("/chaos"),
                                         .timeout = 1500 * LOOM_NS_PER_MS };
        if (kind == 0) { /* not idempotent: a connection of its own */
            req.method = LOOM_HTTP_POST;
            req.body = LOOM_STR("{}");
        } else if (kind == 1) { /* big enough to be written in several goes */
            req.method = LOOM_HTTP_POST;
            req.body = ch->big;
            req.idempotent = LOOM_HTTP_IDEMPOTENT_YES;
        }
        CHECK_INT(
            loom_http_upstream_request(ch->up, &req, chaos_cb, &ch->slots[i], &ch->refs[i], NULL),
            LOOM_OK);
    }
}

static void test_pipeline_chaos(void)
{
    /* Two servers that misbehave at random, calls cancelled at random (from the loop and from
     * callbacks), try timeouts, bodies written in several goes: every callback runs exactly
     * once, and nothing is left in flight or leaked. */
    struct pipe_srv s1, s2;
    pipe_start(&s1, pipe_chaos);
    pipe_start(&s2, pipe_chaos);
    size_t big_len = 2000000;
    char *big = malloc(big_len);
    memset(big, 'x', big_len);
    struct loom_http_upstream_config cfg = { .pipeline_depth = 8,
                                             .try_timeout = 150 * LOOM_NS_PER_MS,
                                             .max_attempts = 2,
                                             .breaker_threshold = LOOM_HTTP_BREAKER_OFF };
    for (int pass = 0; pass < 2; pass++) {
        struct chaos *ch = calloc(1, sizeof(*ch));
        ch->up = upstream(&cfg, s1.addr, s2.addr);
        ch->total = pass == 0 ? CHAOS_CALLS : 100;
        ch->max_inflight = 40;
        ch->seed = 12345u + (unsigned)pass;
        ch->big = loom_str_make(big, big_len);
        chaos_pump(ch);
        uint64_t end = loom_now_ns() + 30 * LOOM_NS_PER_SEC;
        int iterations = 0;
        while (ch->finished < ch->total && loom_now_ns() < end) {
            loom_loop_run_once(cloop, 5 * LOOM_NS_PER_MS);
            chaos_cancel_some(ch, 5);
            /* The second pass frees the upstream with calls in flight. */
            if (pass == 1 && ++iterations == 20)
                break;
        }
        if (pass == 0) {
            CHECK_INT(ch->finished, ch->total);
            CHECK(ch->answered > ch->total / 3);
            struct loom_http_upstream_stats ust;
            loom_http_upstream_stats(ch->up, &ust);
            CHECK_UINT(ust.in_flight, 0);
            for (size_t a = 0; a < 2; a++) {
                struct loom_http_addr_stats st;
                addr_stats(ch->up, a, &st);
                CHECK_UINT(st.outstanding, 0);
            }
        }
        loom_http_upstream_free(ch->up);
        CHECK_INT(ch->finished, ch->started);
        for (int i = 0; i < ch->started; i++)
            CHECK_INT(ch->done[i], 1);
        run_for(20);
        free(ch);
    }
    free(big);
    pipe_stop(&s1);
    pipe_stop(&s2);
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
    RUN(test_pipeline_one_write);
    RUN(test_pipeline_server_closes);
    RUN(test_pipeline_connection_close);
    RUN(test_pipeline_not_idempotent);
    RUN(test_pipeline_cancel);
    RUN(test_pipeline_try_timeout);
    RUN(test_pipeline_write_error);
    RUN(test_pipeline_depth);
    RUN(test_pipeline_dead_server);
    RUN(test_pipeline_chaos);
    loom_loop_free(cloop);
    servers_stop();
    return check_report();
}
