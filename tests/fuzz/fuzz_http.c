/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer driver for the HTTP/1.1 server, in the manner of h2o's fuzz/driver: the input is
 * written into one end of a socketpair whose other end the real server adopts as an accepted
 * connection, and the real loop runs until the server has answered and closed. So the fuzzer
 * exercises the parser wrapper, the connection state machine, limits, routing and response
 * writing together. The first byte picks the size of the writes, so that heads and bodies
 * arrive in fragments.
 */
#include "internal.h"

#include <loom/http.h>
#include <loom/log.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static void h_hello(struct loom_http_req *req)
{
    loom_http_respond(req, 200, "text/plain", LOOM_STR("hello"));
}

static void h_echo(struct loom_http_req *req)
{
    struct loom_str q;
    if (loom_http_req_query(req, "x", &q))
        loom_http_resp_header(req, "X-Q", q);
    loom_http_respond(req, 200, "application/octet-stream", req->body);
}

static void h_param(struct loom_http_req *req)
{
    loom_http_respond_problem(req, 404, NULL, "no model %.*s",
                              LOOM_STR_FMT(loom_http_req_param(req, "name")));
}

static const struct loom_route routes[] = {
    { LOOM_HTTP_GET, "/hello", h_hello, 0, 0 },
    { LOOM_HTTP_POST, "/echo", h_echo, 0, 0 },
    { LOOM_HTTP_PUT, "/echo", h_echo, 64, 0 },
    { LOOM_HTTP_GET, "/v2/models/{name}/versions/{version}", h_param, 0, 0 },
    { LOOM_HTTP_GET, "/files/{rest...}", h_param, 0, 0 },
};

static struct loom_loop *loop;
static struct loom_http_server *server;

static void setup(void)
{
    loom_log_set_level(LOOM_LOG_ERROR);
    loop = loom_loop_new();
    struct loom_http_server_config cfg = {
        .name = "fuzz",
        .routes = routes,
        .nroutes = sizeof(routes) / sizeof(routes[0]),
        .limits = { .max_header_bytes = 4096, .max_headers = 20, .max_body_bytes = 8192 },
    };
    struct loom_error err = { 0 };
    server = loom_http_server_new(&cfg, &err);
    if (!server)
        abort();
}

static void drain_peer(int fd, bool *eof)
{
    char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n > 0)
            continue;
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            *eof = true;
        return;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!loop)
        setup();
    if (size < 1 || size > 200000)
        return 0;
    size_t chunk = (size_t)data[0] * 7 + 1;
    data++;
    size--;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    loom__http_server_adopt(server, loop, sv[0]);
    bool eof = false;
    size_t off = 0;
    int spins = 0;
    while (off < size && !eof && spins++ < 100000) {
        size_t n = size - off < chunk ? size - off : chunk;
        ssize_t w = write(sv[1], data + off, n);
        if (w > 0)
            off += (size_t)w;
        else if (w < 0 && errno != EAGAIN)
            break;
        loom_loop_run_once(loop, 0);
        drain_peer(sv[1], &eof);
    }
    shutdown(sv[1], SHUT_WR);
    for (int i = 0; i < 100000 && !eof; i++) {
        loom_loop_run_once(loop, 0);
        drain_peer(sv[1], &eof);
    }
    close(sv[1]);
    /* Let the server notice and free the connection. */
    for (int i = 0; i < 4 && loom_http_server_connections(server) > 0; i++)
        loom_loop_run_once(loop, 0);
    if (loom_http_server_connections(server) > 0) {
        /* Every input must end with the connection closed: a stuck one is a bug. */
        abort();
    }
    loom_loop_run_once(loop, 0);
    return 0;
}
