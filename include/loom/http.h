/* SPDX-License-Identifier: Apache-2.0 */
/*
 * HTTP/1.1 server and router. A server serves one service: a route table, limits, and one
 * listener per loop thread (SO_REUSEPORT, so the kernel spreads connections across loops). Each
 * connection parses requests one at a time (pipelined requests wait their turn, answered in
 * order), gathers the body up to the route's limit, and calls the route's handler on the loop
 * thread with a request that owns an arena. The handler answers at once or later (after a
 * batch or an upstream call) with loom_http_respond*; until then the connection reads nothing
 * more. Everything the server itself refuses gets the right status: 400 for malformed input
 * (and Content-Length with Transfer-Encoding, then close), 404, 405 with Allow, 408 for a head
 * that takes too long, 413 for a body over the route's limit, 417 for an unknown Expect, 431
 * for a head over the header limit.
 */
#ifndef LOOM_HTTP_H
#define LOOM_HTTP_H

#include <loom/core.h>
#include <loom/loop.h>
#include <loom/trace.h>

#include <stdbool.h>
#include <stdint.h>

enum loom_http_method {
    LOOM_HTTP_OTHER = 0,
    LOOM_HTTP_GET,
    LOOM_HTTP_HEAD,
    LOOM_HTTP_POST,
    LOOM_HTTP_PUT,
    LOOM_HTTP_DELETE,
    LOOM_HTTP_PATCH,
    LOOM_HTTP_OPTIONS,
    LOOM_HTTP__METHODS
};

/* "GET", ...; "OTHER" for LOOM_HTTP_OTHER. */
const char *loom_http_method_name(enum loom_http_method m);
/* LOOM_HTTP_OTHER if the name is not one of ours. */
enum loom_http_method loom_http_method_parse(struct loom_str name);
/* "OK", "Not Found", ...; "Unknown" for codes without a reason phrase. */
const char *loom_http_status_reason(int status);

struct loom_http_header {
    struct loom_str name, value;
};

/* The first header named `name` (case-insensitive), or LOOM_STR_NULL with *found false. */
struct loom_str loom_http_header_get(const struct loom_http_header *h, size_t n, const char *name,
                                     bool *found);

/* Decode %XX escapes (and '+' as space when `plus_is_space`) into the arena. LOOM_EINVAL for a
 * malformed escape. */
loom_err loom_http_url_decode(struct loom_str in, bool plus_is_space, struct loom_arena *a,
                              struct loom_str *out);

/* ---- routes ---- */

struct loom_http_req;
typedef void (*loom_http_handler)(struct loom_http_req *req);

#define LOOM_ROUTE_MAX_PARAMS 8

/*
 * A route: method + path template + handler. Templates are literal segments and `{name}`
 * captures of one non-empty segment; a last segment `{name...}` captures the rest of the path
 * (possibly empty). Literal segments win over captures at the same position.
 */
struct loom_route {
    enum loom_http_method method;
    const char *path;
    loom_http_handler handler;
    size_t max_body; /* 0: the server's default */
    unsigned flags;  /* LOOM_ROUTE_* */
};

/* The handler runs as soon as the head is complete and reads the body as it arrives, with
 * loom_http_req_read_body (uploads hashed and written while they stream, never held whole). */
#define LOOM_ROUTE_STREAM 1u
/* Its requests have no effect a later request could depend on (an inference, say): pipelined on
 * one connection, the next is read and dispatched while the handler still has this one, so they
 * are handled together; the answers still leave in the order the requests came (RFC 9112 9.3.2
 * allows this for safe methods, and the route vouches that it is as good as safe). */
#define LOOM_ROUTE_PARALLEL 2u

struct loom_router;

/* Compile a route table (borrowed; must outlive the router). LOOM_EINVAL with a message for a
 * malformed template or a duplicate method + path. */
struct loom_router *loom_router_new(const struct loom_route *routes, size_t n,
                                    struct loom_error *err);
void loom_router_free(struct loom_router *r);

struct loom_route_match {
    const struct loom_route *route; /* NULL: no route */
    unsigned allowed;               /* when route is NULL: bit (1 << method) for each method the
                                       path has (0: 404, else 405) */
    size_t nparams;
    struct loom_str names[LOOM_ROUTE_MAX_PARAMS];  /* borrowed from the router */
    struct loom_str values[LOOM_ROUTE_MAX_PARAMS]; /* raw slices of the path */
};

/* Match a raw path (no query). HEAD matches a GET route when no HEAD route exists. */
void loom_router_match(const struct loom_router *r, enum loom_http_method method,
                       struct loom_str path, struct loom_route_match *m);

/* Write "GET, HEAD, POST" for an allowed-methods mask. Returns the length. */
size_t loom_http_allow_list(unsigned allowed, char *out, size_t cap);

/* ---- requests ---- */

struct loom__http_conn;

struct loom_http_req {
    enum loom_http_method method;
    struct loom_str method_name;
    struct loom_str target; /* as received: path and query */
    struct loom_str path;   /* raw (percent-encoded) path */
    struct loom_str query;  /* after '?', without it */
    unsigned version_minor; /* HTTP/1.x */
    const struct loom_http_header *headers;
    size_t nheaders;
    struct loom_str body;
    const struct loom_route *route;
    struct loom_route_match match; /* decoded parameter values */
    void *ctx;                     /* the server's ctx (the service's state) */
    void *owner;                   /* the server's owner (the service runtime) */
    struct loom_arena *arena;      /* freed when the response is done */
    struct loom_loop *loop;
    struct loom_trace_ctx trace;  /* this request's span, child of the caller's traceparent */
    uint64_t start_ns;            /* when the head was complete */
    struct loom__http_conn *conn; /* private */
};

/* The value of header `name` (case-insensitive), or LOOM_STR_NULL. */
struct loom_str loom_http_req_header(const struct loom_http_req *req, const char *name);
bool loom_http_req_has_header(const struct loom_http_req *req, const char *name);

/* The percent-decoded value of route parameter `name`, or LOOM_STR_NULL. */
struct loom_str loom_http_req_param(const struct loom_http_req *req, const char *name);

/* The decoded value of query parameter `name`: false when absent or malformed. */
bool loom_http_req_query(const struct loom_http_req *req, const char *name, struct loom_str *value);

/*
 * For LOOM_ROUTE_STREAM routes: receive the body. on_data(req, chunk, arg) gets each piece in
 * order (what arrived before this call comes first); returning an error stops the body. Then
 * on_end(req, status, arg) runs exactly once: LOOM_OK when the whole body is in, else why not
 * (LOOM_ETOOBIG over the route's limit, LOOM_EPARSE malformed framing, LOOM_ECLOSED the
 * client left, or on_data's error); the handler must answer from on_end or later (an answer to
 * a client that left is discarded). A handler that answers before on_end (a refusal) does not
 * get on_end, and the connection closes after the answer. Loop thread only.
 */
typedef loom_err (*loom_http_body_fn)(struct loom_http_req *req, struct loom_str chunk, void *arg);
typedef void (*loom_http_end_fn)(struct loom_http_req *req, loom_err status, void *arg);
void loom_http_req_read_body(struct loom_http_req *req, loom_http_body_fn on_data,
                             loom_http_end_fn on_end, void *arg);

/* The client's address as "127.0.0.1:50312" or "[::1]:50312" ("" if it cannot be known),
 * NUL-terminated and borrowed: valid until the response. Read once per connection (the first
 * call does one getpeername). For X-Forwarded-For and per-address limits at an edge. */
const char *loom_http_req_peer(const struct loom_http_req *req);

/* True once the client went away: a later response is discarded. */
bool loom_http_req_is_aborted(const struct loom_http_req *req);

/* Run fn(arg) if the client goes away before the response is sent (e.g. to cancel an upstream
 * call). Not run after a response. */
void loom_http_req_on_abort(struct loom_http_req *req, loom_cleanup_fn fn, void *arg);

/* ---- responses: exactly one per request, on the request's loop thread ---- */

/* Add a response header (copied). Call before responding. Content-Length, Date, Server and
 * Connection are written by the server. */
void loom_http_resp_header(struct loom_http_req *req, const char *name, struct loom_str value);
void loom_http_resp_headerf(struct loom_http_req *req, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Respond with `body` (copied). `content_type` may be NULL for no Content-Type. */
void loom_http_respond(struct loom_http_req *req, int status, const char *content_type,
                       struct loom_str body);

/* Respond with `len` bytes of the open file `fd` from `offset`, sent with sendfile(2) (no copy
 * through user space): for artifacts and datasets. The server takes the fd and closes it. */
void loom_http_respond_file(struct loom_http_req *req, int status, const char *content_type, int fd,
                            uint64_t offset, uint64_t len);

/* Answer a HEAD request with the Content-Length its GET would have (RFC 9110 9.3.2), without
 * the bytes: a proxy passing on an upstream's HEAD answer. For another method it is a
 * programming error: the answer then has an empty body (Content-Length: 0). */
void loom_http_respond_head(struct loom_http_req *req, int status, const char *content_type,
                            uint64_t content_length);

/* Respond with a body the server takes over and frees (no copy): for large bodies. */
void loom_http_respond_buf(struct loom_http_req *req, int status, const char *content_type,
                           struct loom_buf *body);

/* Respond with the server's error format (by default KServe's {"error": "<message>"}). */
void loom_http_respond_error(struct loom_http_req *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Respond with an RFC 9457 problem: {"type","title","status","detail","instance"} (instance:
 * the request's path), as application/problem+json. `type` may be NULL for "about:blank". */
void loom_http_respond_problem(struct loom_http_req *req, int status, const char *type,
                               const char *detail_fmt, ...) __attribute__((format(printf, 4, 5)));

/* ---- the server ---- */

struct loom_http_limits {
    size_t max_header_bytes; /* request line + headers; over it: 431 (default 32 KiB) */
    size_t max_headers;      /* header count; over it: 431 (default 100) */
    size_t max_body_bytes;   /* default per-route body limit; over it: 413 (default 1 MiB) */
    uint64_t header_timeout; /* ns from a request's first byte to its complete head: 408
                                (default 10 s) */
    uint64_t idle_timeout;   /* ns a keep-alive connection may sit idle, or a body or a write
                                may stall (default 60 s) */
    size_t max_connections;  /* per loop; accepting pauses at the limit (default 10000) */
    size_t max_pending_out;  /* unsent response bytes before a pipelining client is no longer
                                read (default 1 MiB) */
};

/* Write an error body for `status` and `message` into `out`; returns the Content-Type.
 * `instance` is the request's path (empty when the request line was not even read). */
typedef const char *(*loom_http_error_fn)(struct loom_buf *out, int status, const char *message,
                                          struct loom_str instance);

/* The default error body: {"error": "<message>"} (the KServe v2 form). */
const char *loom_http_error_json(struct loom_buf *out, int status, const char *message,
                                 struct loom_str instance);
/* RFC 9457 application/problem+json: type about:blank, title, status, detail, instance. */
const char *loom_http_error_problem(struct loom_buf *out, int status, const char *message,
                                    struct loom_str instance);

struct loom_http_server_config {
    const char *name; /* the service, for metrics (loom_<name>_http_...) and logs */
    const struct loom_route *routes;
    size_t nroutes;
    void *ctx;                      /* given to handlers as req->ctx */
    void *owner;                    /* given to handlers as req->owner */
    struct loom_http_limits limits; /* zero fields take the defaults */
    loom_http_error_fn error_body;  /* NULL: loom_http_error_json */
};

struct loom_http_server;

/* A server for a route table (copied config; routes borrowed). NULL and *err on a bad table. */
struct loom_http_server *loom_http_server_new(const struct loom_http_server_config *config,
                                              struct loom_error *err);

/*
 * Listen on `addr` ("HOST:PORT", "[::1]:PORT", ":PORT" for all interfaces; port 0 picks one,
 * then every later listener of this server binds the same port) and serve on `loop`. Call
 * once per loop, before the loops run or from the loop's own thread. LOOM_EIO/LOOM_EINVAL with
 * a message on failure.
 */
loom_err loom_http_server_listen(struct loom_http_server *s, struct loom_loop *loop,
                                 const char *addr, struct loom_error *err);

/* The port the server listens on (after the first listen). */
int loom_http_server_port(const struct loom_http_server *s);

typedef void (*loom_http_drained_fn)(struct loom_http_server *s, struct loom_loop *loop, void *arg);

/*
 * Graceful drain of the listener on `loop` (call on that loop's thread): stop accepting, close
 * idle connections, answer in-flight requests with Connection: close, and call done(s, loop, arg)
 * on that loop once it has no connection left (at once if it has none).
 */
void loom_http_server_drain(struct loom_http_server *s, struct loom_loop *loop,
                            loom_http_drained_fn done, void *arg);

/* Close every connection on `loop` now (after a drain deadline). Loop thread only. */
void loom_http_server_close_all(struct loom_http_server *s, struct loom_loop *loop);

/* Open connections across all loops (approximate while loops run). */
size_t loom_http_server_connections(const struct loom_http_server *s);

/* Free the server after its loops have stopped (connections still open are closed). */
void loom_http_server_free(struct loom_http_server *s);

#endif
