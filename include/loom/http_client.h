/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The HTTP/1.1 client. An upstream is a named set of addresses ("HOST:PORT", resolved once)
 * living on ONE loop: it keeps a keep-alive connection pool per address (and, if configured,
 * pipelines idempotent requests on those connections), balances requests with P2C (the less
 * loaded of two random healthy addresses), retries failed idempotent requests on another
 * address with jittered exponential backoff inside the request's deadline and within a
 * retry budget (a ratio of recent requests plus a small floor, so a failing upstream never sees
 * a retry storm), and ejects an address whose consecutive failures reach a threshold (a circuit
 * breaker: ejected for a time that doubles on repeated ejection, then one probe at a time). The
 * gateway creates one upstream per loop thread; inference downloads artifacts through one; the
 * CLI and tests use the blocking loom_http_fetch. Plain http:// only: there is no TLS.
 *
 * Everything runs on the upstream's loop thread, callbacks included. If a function that takes a
 * callback returns an error, the callback is never called; otherwise it is called exactly once,
 * from the loop and never from inside loom_http_upstream_request itself.
 */
#ifndef LOOM_HTTP_CLIENT_H
#define LOOM_HTTP_CLIENT_H

#include <loom/core.h>
#include <loom/http.h>
#include <loom/loop.h>

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct loom_metrics;

/* breaker_threshold value that turns outlier ejection off. */
#define LOOM_HTTP_BREAKER_OFF UINT_MAX

/*
 * An upstream's configuration. Zero fields take the defaults given in brackets. Every string and
 * array is copied by loom_http_upstream_new.
 */
struct loom_http_upstream_config {
    const char *name;                /* for logs, errors and metric labels ["upstream"] */
    const char *const *addresses;    /* "HOST:PORT" / "[V6]:PORT", resolved once at creation */
    size_t naddresses;               /* at least 1 */
    const char *host;                /* Host header value [the address as written above] */
    size_t max_idle_per_address;     /* keep-alive connections kept idle per address [64] */
    unsigned pipeline_depth;         /* requests in flight per connection [1: no pipelining].
                                        Above 1, idempotent requests to one address share
                                        connections (HTTP/1.1 pipelining): those of one loop
                                        iteration leave in one writev, and responses come
                                        back in order. A request that is not idempotent has
                                        a connection of its own. Requests queued behind one
                                        that fails or times out, or behind a response that
                                        ends the connection, are sent again as neither
                                        success nor failure, outside the retry budget */
    uint64_t idle_timeout;           /* ns an idle connection is kept [30 s] */
    uint64_t connect_timeout;        /* ns per connect attempt [1 s] */
    uint64_t timeout;                /* ns, the overall deadline of a request that gives none
                                        [30 s] */
    uint64_t try_timeout;            /* ns, a deadline per attempt (then retried if allowed)
                                        [none: only the overall deadline] */
    size_t max_header_bytes;         /* response header names and values [64 KiB] */
    size_t max_headers;              /* response header count [100] */
    size_t max_body_bytes;           /* response body ceiling of a request that gives none
                                        [64 MiB] */
    unsigned max_attempts;           /* first attempt included; 1 turns retries off [3] */
    uint64_t backoff_base;           /* ns before the first retry, doubling after each [10 ms];
                                        the wait is jittered in [d/2, d] */
    uint64_t backoff_max;            /* ns, the cap of that doubling [250 ms] */
    bool retry_budget_off;           /* no budget: retries limited by max_attempts only */
    double retry_budget_ratio;       /* retries allowed per request in the window [0.2];
                                        negative: 0 */
    double retry_budget_min_per_sec; /* retries allowed per second regardless [3];
                                        negative: 0 */
    uint64_t retry_budget_window;    /* ns of history the budget looks at [10 s] */
    const int *retry_statuses;       /* statuses retried like connection errors [502 503 504];
                                        non-NULL with n = 0: none */
    size_t nretry_statuses;          /* at most 16 */
    const int *failure_statuses;     /* statuses that count as breaker failures [502 503 504];
                                        non-NULL with n = 0: none */
    size_t nfailure_statuses;        /* at most 16 */
    unsigned breaker_threshold;      /* consecutive failures that eject an address [5];
                                        LOOM_HTTP_BREAKER_OFF: never eject */
    uint64_t ejection_time;          /* ns of the first ejection, doubled on each re-ejection
                                        without a successful probe in between [1 s] */
    uint64_t max_ejection_time;      /* ns [30 s] */
    bool panic_mode;                 /* every address ejected: use them all anyway instead of
                                        failing fast with LOOM_EUNAVAIL */
    const char *metrics_owner;       /* service owning the metrics (loom_<owner>_upstream_*);
                                        NULL: no metrics */
    struct loom_metrics *metrics;    /* registry [loom_metrics_global()]; borrowed, must
                                        outlive the upstream */
};

struct loom_http_upstream;

/*
 * An upstream on `loop` (caller frees with loom_http_upstream_free, on the loop's thread). The
 * addresses are resolved here, with getaddrinfo for names (blocking: create upstreams at
 * start-up). NULL with *err set (LOOM_EINVAL) for a bad configuration or an address that does
 * not resolve.
 */
struct loom_http_upstream *loom_http_upstream_new(struct loom_loop *loop,
                                                  const struct loom_http_upstream_config *cfg,
                                                  struct loom_error *err);

/*
 * Cancel every request in flight (each callback runs with LOOM_ECANCELED before this returns),
 * close every connection and free the upstream. Not from inside one of its callbacks. NULL is
 * allowed.
 */
void loom_http_upstream_free(struct loom_http_upstream *up);

/* ---- requests ---- */

enum loom_http_idempotency {
    LOOM_HTTP_IDEMPOTENT_AUTO = 0, /* by method: GET HEAD PUT DELETE OPTIONS yes; POST PATCH no */
    LOOM_HTTP_IDEMPOTENT_YES,      /* e.g. the gateway's inference POSTs */
    LOOM_HTTP_IDEMPOTENT_NO,
};

/*
 * A request. The method line, target and headers are copied when it is submitted; the body is
 * BORROWED: it must stay valid and unchanged until the callback runs (retries send it again).
 * Content-Length is written by the client (for any body, and 0 for an empty POST/PUT/PATCH);
 * Host is the upstream's unless the caller gives one; Content-Length, Transfer-Encoding and
 * Connection given by the caller are dropped. A traceparent for the calling thread's current
 * span (loom_trace_current) is added unless the caller gives one.
 */
struct loom_http_request {
    enum loom_http_method method;           /* not LOOM_HTTP_OTHER */
    struct loom_str target;                 /* origin form: "/path?query" ("*" for OPTIONS) */
    const struct loom_http_header *headers; /* copied */
    size_t nheaders;
    struct loom_str body; /* borrowed until the callback */
    uint64_t deadline;    /* absolute loop time in ns (loom_loop_now), covering every attempt */
    uint64_t timeout;     /* ns from now when deadline is 0; both 0: the upstream's timeout */
    enum loom_http_idempotency idempotent; /* which failed requests may be sent again */
    size_t max_body; /* response body ceiling (LOOM_ETOOBIG over it); 0: the upstream's */
};

struct loom_http_call;

/*
 * What the callback gets. Every pointer is valid during the callback only: headers and body
 * point into buffers the client reuses for its next request (copy what you keep, or take the
 * body with loom_http_response_take_body).
 *
 * err is LOOM_OK when a response arrived, whatever its status (a 503 after the last allowed
 * retry is delivered as a response). Otherwise status is 0 and err says why: LOOM_ECONNECT
 * (connect refused or timed out), LOOM_ECLOSED (the connection closed or was reset before the
 * response was complete), LOOM_ETIMEDOUT (the deadline, or the last attempt's try_timeout,
 * passed), LOOM_ETOOBIG (the response head or body is over its limit), LOOM_EPARSE (a malformed
 * response), LOOM_EUNAVAIL (every address is ejected, or a retried failure status found none
 * left), LOOM_ECANCELED (loom_http_call_cancel or loom_http_upstream_free), LOOM_EIO.
 */
struct loom_http_response {
    loom_err err;
    const char *error; /* what went wrong (upstream, address, cause); "" when err is OK */
    int status;        /* 0 unless err is LOOM_OK */
    unsigned version_minor;
    const struct loom_http_header *headers;
    size_t nheaders;
    struct loom_str body; /* empty for HEAD, 204 and 304 */
    const char *address;  /* the last attempt's address as configured; "" if none was tried */
    size_t address_index; /* its index in the configuration; SIZE_MAX if none */
    unsigned attempts;    /* attempts made, 0 if none */
    struct loom_http_call *call; /* private */
};

typedef void (*loom_http_response_cb)(struct loom_http_response *resp, void *arg);

/*
 * A reference to a call in flight, for loom_http_call_cancel. It stays safe to use after the
 * call completed: the client's call structures are pooled, never freed before the upstream, and
 * a generation number tells a finished call from the one reusing its memory.
 */
struct loom_http_call_ref {
    struct loom_http_call *call;
    uint64_t gen;
};

/*
 * Send `req` (see struct loom_http_request for what is copied and what is borrowed) and call
 * cb(resp, arg) exactly once, later, on the loop thread. `ref` (may be NULL) receives a handle
 * for cancellation. Returns LOOM_EINVAL for a bad request (bad method, target or header, which
 * *err names), LOOM_ETOOBIG for a request head over 64 KiB, LOOM_EUNAVAIL while the upstream is
 * being freed: then cb is never called. Failures of the exchange itself come through cb.
 * Steady state allocates nothing: calls and their buffers are pooled, connections reused.
 */
loom_err loom_http_upstream_request(struct loom_http_upstream *up,
                                    const struct loom_http_request *req, loom_http_response_cb cb,
                                    void *arg, struct loom_http_call_ref *ref,
                                    struct loom_error *err);

/*
 * Cancel a call: if it has not completed, its callback runs with LOOM_ECANCELED before this
 * returns; returns true. Its connection (if any) is closed, never pooled, unless other calls are
 * pipelined on it: then a request written whole has its response read and dropped when it comes
 * (within the call's deadline), one not yet written is dropped, and one written in part closes
 * the connection (the other calls are sent again). Returns false and does nothing if the
 * callback already ran or is running. Loop thread only.
 */
bool loom_http_call_cancel(struct loom_http_call_ref ref);

/*
 * Take the response body out of the callback without a copy: *out (which the caller owns and
 * releases with loom_buf_release; any previous content is released) receives the buffer, and
 * resp->body becomes empty. Only inside the callback.
 */
void loom_http_response_take_body(struct loom_http_response *resp, struct loom_buf *out);

/* The value of response header `name` (case-insensitive), or LOOM_STR_NULL. */
struct loom_str loom_http_response_header(const struct loom_http_response *resp, const char *name);

/* ---- state, for metrics and tests (loop thread only) ---- */

enum loom_http_addr_state {
    LOOM_HTTP_ADDR_HEALTHY,   /* in rotation */
    LOOM_HTTP_ADDR_EJECTED,   /* out of rotation until ejected_until */
    LOOM_HTTP_ADDR_HALF_OPEN, /* ejection over: the next request is a probe, one at a time */
};

struct loom_http_addr_stats {
    const char *address; /* as configured; borrowed from the upstream */
    enum loom_http_addr_state state;
    unsigned consecutive_failures;
    unsigned ejections_in_a_row; /* the next ejection lasts ejection_time << this (capped) */
    uint64_t ejected_until;      /* loop time in ns while ejected, else 0 */
    size_t outstanding;          /* attempts in flight */
    size_t connections;          /* open connections, idle ones included */
    size_t idle;                 /* idle keep-alive connections */
    uint64_t requests;           /* attempts sent here, retries included */
    uint64_t retries;            /* of which retries */
    uint64_t failures;           /* attempts that counted as breaker failures */
    uint64_t ejections;
    uint64_t connects; /* connections opened */
};

struct loom_http_upstream_stats {
    uint64_t requests;       /* calls submitted */
    uint64_t retries;        /* attempts after the first */
    uint64_t retries_denied; /* retries the budget refused */
    size_t in_flight;        /* calls whose callback has not run yet */
};

size_t loom_http_upstream_naddresses(const struct loom_http_upstream *up);

/* The state of address `i` (< loom_http_upstream_naddresses). */
void loom_http_upstream_addr_stats(const struct loom_http_upstream *up, size_t i,
                                   struct loom_http_addr_stats *out);

void loom_http_upstream_stats(const struct loom_http_upstream *up,
                              struct loom_http_upstream_stats *out);

/* ---- blocking convenience for the CLI and tests ---- */

/* What loom_http_fetch returns: owned by the caller, freed with
 * loom_http_fetch_result_release. */
struct loom_http_fetch_result {
    int status;
    struct loom_http_header *headers; /* slices into one block freed with the result */
    size_t nheaders;
    char *body; /* NUL-terminated (never NULL), body_len bytes before the NUL */
    size_t body_len;
    void *mem; /* private */
};

/*
 * Fetch `url` ("http://HOST[:PORT][/path][?query]", port 80 by default) with a private loop and
 * upstream, blocking until the response or `timeout_ns` (0: 30 s). `headers` are copied, `body`
 * borrowed for the call; `max_body` caps the response body (0: 64 MiB). Idempotent methods are
 * retried on connection errors as the upstream defaults say. On LOOM_OK *out holds the response,
 * whatever its status; otherwise *out is untouched and *err says why: LOOM_EUNSUPPORTED for
 * https:// (no TLS), LOOM_EINVAL for a malformed URL, or any error of struct
 * loom_http_response. Not from a loop thread's callbacks (it would block that loop).
 */
loom_err loom_http_fetch(const char *url, enum loom_http_method method,
                         const struct loom_http_header *headers, size_t nheaders,
                         struct loom_str body, uint64_t timeout_ns, size_t max_body,
                         struct loom_http_fetch_result *out, struct loom_error *err);

/* Free what loom_http_fetch returned; the result is zeroed. */
void loom_http_fetch_result_release(struct loom_http_fetch_result *r);

#endif
