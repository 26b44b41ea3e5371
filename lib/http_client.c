/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The HTTP/1.1 client: upstreams, their per-address keep-alive pools, request pipelining, retries,
 * the retry budget and the circuit breaker, and the blocking loom_http_fetch.
 *
 * A call (one request, all its attempts) is a pooled struct that keeps its buffers between uses,
 * so the steady state of a busy upstream allocates nothing: the request head is serialised once
 * into the call at submission and every attempt sends it with writev as [request line][Host line
 * of the chosen address][other headers][borrowed body]. A connection belongs to an address and
 * is, at any time, connecting, active (carrying an ordered queue of calls) or idle in its
 * address's LIFO stack; idle ones stay registered for reading so that a server closing them is
 * noticed at once, are checked again with a peek when taken, and are closed by one sweep timer
 * per upstream when they have been idle too long. Responses are read through one shared buffer
 * per upstream (all of it runs on one thread, and the parser copies what it keeps into the call).
 * Each call has one timer for its deadline, its connect and per-try timeouts and its backoff: it
 * is re-armed at the nearest of those whenever the call changes state. Failures found while a
 * request is being submitted are delivered from that timer too, so the callback never runs inside
 * loom_http_upstream_request; outcomes found while a connection event is handled wait in a ready
 * list until the connection is left consistent, then run in order.
 *
 * Without pipelining (pipeline_depth 1, the default) a connection carries exactly one call. With
 * a depth above 1, idempotent calls share connections: a call joins its address's "open"
 * connection (the one last given a pipelined call, while it has fewer than depth in flight), else
 * takes an idle one, else opens one; a call that is not idempotent still has a connection of its
 * own. Requests are not written at once but by a flush task at the end of the loop iteration, so
 * that the calls of one iteration leave in one writev; responses are matched to the queue in
 * order, and bytes left after one response belong to the next. When the connection fails, its
 * head call is judged as ever and every other call on it is sent again at once as neither success
 * nor failure, without drawing on the retry budget; such a re-send counts against max_attempts
 * only if its request had been written (the server may have run it) and the fault was not the
 * server's announced close. A response that ends the connection (Connection: close, HTTP/1.0)
 * sends the calls behind it again the same way. A call that times out closes its connection and
 * the others on it are sent again. Cancelling a pipelined call whose request was written whole
 * keeps it in the queue as a placeholder whose response is read and dropped (bounded by the
 * call's own deadline, after which the connection is closed); one not yet written leaves the
 * queue; one written in part closes the connection, since its body is the caller's only until the
 * callback, and the others are sent again. A connection returns to the pool once its queue is
 * empty.
 *
 * The breaker counts consecutive failures per address (connect errors, resets, timeouts,
 * malformed responses and the configured failure statuses). A keep-alive connection (one that
 * already carried a complete exchange) that closes before any byte of the response is a
 * keep-alive race rather than a sick server: it counts as neither success nor failure, and the
 * request is retried only if it is idempotent, like any other request whose bytes were written.
 */
#include "internal.h"

#include <loom/http_client.h>
#include <loom/log.h>
#include <loom/metrics.h>
#include <loom/net.h>
#include <loom/trace.h>

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define READ_BUF_SIZE    65536
#define READS_PER_EVENT  8
#define MAX_REQUEST_HEAD (64 * 1024)
#define MAX_STATUSES     16
#define BUDGET_BUCKETS   10
#define KEEP_BUF_CAP     (256 * 1024) /* bigger call buffers are freed instead of pooled */

enum call_state {
    CALL_FREE,       /* in the pool */
    CALL_CONNECTING, /* an attempt waits for its connection */
    CALL_ACTIVE,     /* an attempt writes its request and reads the response */
    CALL_BACKOFF,    /* waiting before the next attempt */
    CALL_DELIVER,    /* the outcome is known; the timer runs the callback */
    CALL_READY,      /* the outcome is known; the callback runs once the event is handled */
    CALL_DONE,       /* the callback is running */
    CALL_DISCARD,    /* cancelled with its request on the wire: its response is read, dropped */
};

enum conn_state { CONN_CONNECTING, CONN_ACTIVE, CONN_IDLE };

enum verdict { V_NEUTRAL, V_SUCCESS, V_FAILURE };

struct hoff { /* a response header as offsets into call->rhead */
    uint32_t name_off, name_len, value_off, value_len;
};

struct conn;

struct addr {
    struct loom_http_upstream *up;
    size_t index;
    char *name;
    struct loom_sockaddr sa;
    char *host_line; /* "Host: NAME\r\n" */
    size_t host_line_len;
    struct conn *idle_head, *idle_tail; /* most recently used first */
    struct conn *open;                  /* the connection pipelined calls join while it has room */
    size_t nidle, nconns, outstanding;
    enum loom_http_addr_state state;
    unsigned consecutive_failures, ejections_in_a_row;
    uint64_t ejected_until;
    bool probing;
    uint64_t requests, retries, failures, ejections, connects;
    struct loom_counter *m_requests, *m_retries, *m_failures, *m_ejections;
};

struct conn {
    struct loom_io io;
    struct addr *addr;
    struct conn *prev, *next;           /* the idle stack */
    struct conn *fprev, *fnext;         /* the upstream's flush queue */
    struct loom_http_call *head, *tail; /* calls in flight in request order; head's is read */
    struct loom_http_call *unsent;      /* the first call not written whole, or NULL */
    size_t ncalls;
    uint64_t responses; /* complete responses read here: a keep-alive connection once > 0 */
    struct loom__h1_parser parser;
    uint64_t idle_since;
    int write_errno;
    enum conn_state state;
    bool pipelined; /* carries idempotent calls of an upstream that pipelines */
    bool flush_queued;
};

struct loom_http_call {
    struct loom_http_upstream *up;
    struct loom_http_call *prev, *next; /* in flight or discarded (doubly linked), free (next) */
    struct loom_http_call *qnext;       /* its connection's queue, or the ready list */
    uint64_t gen;
    enum call_state state;
    bool in_submit;

    /* the request */
    enum loom_http_method method;
    bool idempotent;
    struct loom_buf head; /* request line and headers, without Host */
    size_t host_at;       /* where the Host line goes; SIZE_MAX: the caller gave one */
    struct loom_str body;
    uint64_t deadline;
    size_t max_body;
    loom_http_response_cb cb;
    void *arg;
    struct loom_timer timer;

    /* the current attempt */
    unsigned attempts;
    struct addr *addr;      /* while an attempt is in flight */
    struct addr *last_addr; /* the last attempt's */
    struct conn *conn;
    bool probe, reused, wrote_any, got_bytes;
    bool stale_retried; /* the one free retry after a reused connection closed was taken */
    bool fresh;         /* the next attempt takes no idle connection */
    bool free_attempt;  /* the next attempt is a re-send that max_attempts does not count */
    bool discard;       /* cancelled, but kept in its connection's queue (conn_forget) */
    size_t sent, total;
    uint64_t connect_deadline, try_deadline, backoff_until;

    /* the response */
    struct loom_buf rhead;    /* header names and values, back to back */
    struct loom_buf rhoffs;   /* struct hoff per header */
    struct loom_buf rheaders; /* struct loom_http_header per header */
    struct loom_buf rbody;
    size_t nheaders;
    int status;
    unsigned version_minor;
    bool last_was_value, informational;
    loom_err perr; /* why a parser callback refused the response */
    char pmsg[160];

    /* the outcome */
    loom_err err;
    char msg[LOOM_ERROR_MSG_MAX];
};

struct budget {
    uint64_t bucket_ns;
    uint64_t cur; /* absolute index of the current bucket */
    uint32_t reqs[BUDGET_BUCKETS], retries[BUDGET_BUCKETS];
};

struct loom_http_upstream {
    struct loom_loop *loop;
    struct loom_http_upstream_config cfg; /* defaults applied; pointers not kept */
    char *name;
    int retry_statuses[MAX_STATUSES];
    size_t nretry;
    int failure_statuses[MAX_STATUSES];
    size_t nfailure;
    double budget_ratio, budget_reserve;
    struct addr *addrs;
    size_t naddrs;
    size_t *scratch;                   /* candidate indices for pick() */
    struct loom_http_call *calls;      /* in flight */
    struct loom_http_call *free_calls; /* the pool */
    struct loom_http_call *discarded;  /* CALL_DISCARD */
    struct loom_timer sweep;           /* closes idle connections past idle_timeout */
    /* Outcomes found while a batch runs wait here (CALL_READY, in order): see batch_begin. */
    struct loom_http_call *ready_head, *ready_tail;
    unsigned batch;
    bool draining;
    /* Pipelining. */
    unsigned depth;          /* pipeline_depth, at least 1 */
    struct flusher *flusher; /* NULL without pipelining */
    struct conn *flush_head; /* connections with requests to write */
    bool flush_pending;      /* the flush task is queued on the loop */
    struct iovec *iov;       /* niov entries, for conn_send */
    size_t niov;
    struct budget budget;
    char *rbuf; /* READ_BUF_SIZE bytes shared by every connection */
    bool closing;
    uint64_t nrequests, nretries, nretries_denied;
    size_t inflight;
};

/* The end-of-iteration task that writes pipelined requests. Apart from the upstream so that an
 * upstream freed while the task is queued can leave it behind, to free itself when it runs. */
struct flusher {
    struct loom_task task;
    struct loom_http_upstream *up; /* NULL once the upstream is gone */
};

static const int default_statuses[] = { 502, 503, 504 };

static void attempt_begin(struct loom_http_call *call);
static bool conn_read(struct conn *c);
static void conn_on_io(struct loom_io *io, unsigned events);
static const struct loom__h1_callbacks h1_callbacks;

static uint64_t now_of(const struct loom_http_upstream *up)
{
    return loom_loop_now(up->loop);
}

static bool in_set(const int *set, size_t n, int status)
{
    for (size_t i = 0; i < n; i++)
        if (set[i] == status)
            return true;
    return false;
}

static void counter_inc(struct loom_counter *c)
{
    if (c)
        loom_counter_inc(c);
}

/* ---- the retry budget: requests and retries counted in a ring of time buckets ---- */

static void budget_advance(struct budget *b, uint64_t now)
{
    uint64_t idx = now / b->bucket_ns;
    if (idx <= b->cur)
        return;
    if (idx - b->cur >= BUDGET_BUCKETS) {
        memset(b->reqs, 0, sizeof(b->reqs));
        memset(b->retries, 0, sizeof(b->retries));
    } else {
        for (uint64_t k = b->cur + 1; k <= idx; k++) {
            b->reqs[k % BUDGET_BUCKETS] = 0;
            b->retries[k % BUDGET_BUCKETS] = 0;
        }
    }
    b->cur = idx;
}

static void budget_deposit(struct loom_http_upstream *up)
{
    budget_advance(&up->budget, now_of(up));
    up->budget.reqs[up->budget.cur % BUDGET_BUCKETS]++;
}

static bool budget_withdraw(struct loom_http_upstream *up)
{
    if (up->cfg.retry_budget_off)
        return true;
    struct budget *b = &up->budget;
    budget_advance(b, now_of(up));
    uint64_t reqs = 0, retries = 0;
    for (size_t i = 0; i < BUDGET_BUCKETS; i++) {
        reqs += b->reqs[i];
        retries += b->retries[i];
    }
    double allowed = up->budget_ratio * (double)reqs + up->budget_reserve;
    if ((double)(retries + 1) > allowed)
        return false;
    b->retries[b->cur % BUDGET_BUCKETS]++;
    return true;
}

/* ---- connections ---- */

static void idle_unlink(struct conn *c)
{
    struct addr *a = c->addr;
    if (c->prev)
        c->prev->next = c->next;
    else
        a->idle_head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        a->idle_tail = c->prev;
    c->prev = c->next = NULL;
    a->nidle--;
}

static void flush_unlink(struct conn *c)
{
    struct loom_http_upstream *up = c->addr->up;
    if (!c->flush_queued)
        return;
    if (c->fprev)
        c->fprev->fnext = c->fnext;
    else
        up->flush_head = c->fnext;
    if (c->fnext)
        c->fnext->fprev = c->fprev;
    c->fprev = c->fnext = NULL;
    c->flush_queued = false;
}

static void queue_push(struct conn *c, struct loom_http_call *call)
{
    call->qnext = NULL;
    if (c->tail)
        c->tail->qnext = call;
    else
        c->head = call;
    c->tail = call;
    if (!c->unsent)
        c->unsent = call;
    c->ncalls++;
    call->conn = c;
}

/* Unlink `call` from the list of calls chained by qnext from *head to *tail (qnext kept). */
static void qlist_unlink(struct loom_http_call **head, struct loom_http_call **tail,
                         struct loom_http_call *call)
{
    struct loom_http_call **p = head, *prev = NULL;
    while (*p != call) {
        prev = *p;
        p = &prev->qnext;
    }
    *p = call->qnext;
    if (*tail == call)
        *tail = prev;
}

static void queue_unlink(struct conn *c, struct loom_http_call *call)
{
    qlist_unlink(&c->head, &c->tail, call);
    if (c->unsent == call)
        c->unsent = call->qnext;
    call->qnext = NULL;
    c->ncalls--;
}

static struct loom_http_call *queue_pop(struct conn *c)
{
    struct loom_http_call *call = c->head;
    queue_unlink(c, call);
    return call;
}

/* Take a call that was never written out of the queue, wherever it stands. */
static void queue_remove(struct conn *c, struct loom_http_call *call)
{
    queue_unlink(c, call);
    call->conn = NULL;
}

static void discard_release(struct loom_http_call *call);
static void resubmit(struct loom_http_call *call, bool charge, const char *why);

/* Close and free at once: every caller returns without touching `c` again, and loom_io_stop
 * drops events already collected for it. Only placeholders of cancelled calls may be left in
 * its queue: they go back to the pool. */
static void conn_close(struct conn *c)
{
    struct addr *a = c->addr;
    if (c->state == CONN_IDLE)
        idle_unlink(c);
    flush_unlink(c);
    if (a->open == c)
        a->open = NULL;
    while (c->head) {
        struct loom_http_call *call = queue_pop(c);
        call->conn = NULL;
        if (call->state == CALL_DISCARD)
            discard_release(call);
    }
    loom_io_stop(&c->io);
    close(c->io.fd);
    a->nconns--;
    free(c);
}

/*
 * Close `c` after a failure that belongs to `except` (or to none of its calls): every other call
 * on it is sent again (see resubmit; `charge` and `why` are passed on), placeholders dropped.
 */
static void conn_abort(struct conn *c, struct loom_http_call *except, bool charge, const char *why)
{
    struct loom_http_call *list = c->head;
    c->head = c->tail = c->unsent = NULL;
    c->ncalls = 0;
    conn_close(c);
    while (list) {
        struct loom_http_call *call = list;
        list = call->qnext;
        call->qnext = NULL;
        call->conn = NULL;
        if (call == except)
            continue;
        if (call->state == CALL_DISCARD)
            discard_release(call);
        else if (call->state == CALL_CONNECTING || call->state == CALL_ACTIVE)
            resubmit(call, charge, why);
        /* else a placeholder whose cancel callback is running: deliver recycles it */
    }
}

static void close_idle(struct addr *a)
{
    while (a->idle_head)
        conn_close(a->idle_head);
}

static struct conn *conn_open(struct addr *a, struct loom_error *err)
{
    int fd = loom_net_connect(&a->sa, err);
    if (fd < 0)
        return NULL;
    struct conn *c = loom_new(struct conn);
    c->addr = a;
    c->state = CONN_CONNECTING;
    loom_io_init(&c->io, a->up->loop, fd, conn_on_io);
    if (loom_io_start(&c->io, LOOM_IO_WRITE)) {
        loom_error_set(err, LOOM_EIO, "cannot watch the socket");
        close(fd);
        free(c);
        return NULL;
    }
    a->nconns++;
    a->connects++;
    return c;
}

/* The connection a pipelined call to `a` joins, or NULL. */
static struct conn *open_conn(struct addr *a)
{
    struct conn *c = a->open;
    return c && c->ncalls < a->up->depth && !c->write_errno ? c : NULL;
}

static void on_flush(struct loom_task *task);

/* Have `c`'s unwritten requests written at the end of this loop iteration, with whatever else
 * is queued on it by then. */
static void flush_queue(struct conn *c)
{
    struct loom_http_upstream *up = c->addr->up;
    if (c->flush_queued || (c->io.events & LOOM_IO_WRITE))
        return; /* queued already, or waiting for the socket, which writes everything */
    c->flush_queued = true;
    c->fprev = NULL;
    c->fnext = up->flush_head;
    if (up->flush_head)
        up->flush_head->fprev = c;
    up->flush_head = c;
    if (!up->flush_pending) {
        up->flush_pending = true;
        loom_loop_defer(up->loop, &up->flusher->task, on_flush);
    }
}

static void sweep_arm(struct loom_http_upstream *up)
{
    uint64_t next = UINT64_MAX;
    for (size_t i = 0; i < up->naddrs; i++)
        if (up->addrs[i].idle_tail)
            next = LOOM_MIN(next, up->addrs[i].idle_tail->idle_since + up->cfg.idle_timeout);
    if (next != UINT64_MAX)
        loom_timer_start_at(&up->sweep, next);
}

static void on_sweep(struct loom_timer *t)
{
    struct loom_http_upstream *up = LOOM_CONTAINER_OF(t, struct loom_http_upstream, sweep);
    uint64_t now = now_of(up);
    for (size_t i = 0; i < up->naddrs; i++) {
        struct addr *a = &up->addrs[i];
        while (a->idle_tail && a->idle_tail->idle_since + up->cfg.idle_timeout <= now)
            conn_close(a->idle_tail);
    }
    sweep_arm(up);
}

/* Keep a connection whose exchanges all completed cleanly, or close it if the pool is full. */
static void pool_put(struct conn *c)
{
    struct addr *a = c->addr;
    struct loom_http_upstream *up = a->up;
    flush_unlink(c);
    if (a->open == c)
        a->open = NULL;
    c->pipelined = false;
    if (a->nidle >= up->cfg.max_idle_per_address || a->state == LOOM_HTTP_ADDR_EJECTED ||
        up->closing || loom_io_start(&c->io, LOOM_IO_READ)) {
        conn_close(c);
        return;
    }
    c->state = CONN_IDLE;
    c->idle_since = now_of(up);
    c->prev = NULL;
    c->next = a->idle_head;
    if (a->idle_head)
        a->idle_head->prev = c;
    else
        a->idle_tail = c;
    a->idle_head = c;
    a->nidle++;
    if (!loom_timer_is_active(&up->sweep))
        loom_timer_start_at(&up->sweep, c->idle_since + up->cfg.idle_timeout);
}

/*
 * The most recently used idle connection that is still alive, or NULL. Idle connections are
 * watched, so a close is normally seen before reuse; only one that lands between the loop's
 * last wait and now can slip through. For a request that may not be retried (not idempotent)
 * a peek closes that window; an idempotent one saves the system call (one in five on the
 * proxy's path) and is retried, not from the pool, if it hits such a close.
 */
static struct conn *pool_get(struct addr *a, bool peek)
{
    while (a->idle_head) {
        struct conn *c = a->idle_head;
        idle_unlink(c);
        c->state = CONN_ACTIVE;
        if (!peek)
            return c;
        char b;
        ssize_t n = recv(c->io.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return c;
        conn_close(c);
    }
    return NULL;
}

/* ---- the breaker and the balancer ---- */

static void addr_refresh(struct addr *a, uint64_t now)
{
    if (a->state == LOOM_HTTP_ADDR_EJECTED && now >= a->ejected_until) {
        a->state = LOOM_HTTP_ADDR_HALF_OPEN;
        a->probing = false;
    }
}

static bool addr_eligible(struct addr *a, uint64_t now)
{
    addr_refresh(a, now);
    return a->state == LOOM_HTTP_ADDR_HEALTHY ||
           (a->state == LOOM_HTTP_ADDR_HALF_OPEN && !a->probing);
}

static void addr_eject(struct addr *a, uint64_t now)
{
    struct loom_http_upstream *up = a->up;
    uint64_t d = up->cfg.ejection_time;
    for (unsigned i = 0; i < a->ejections_in_a_row && d < up->cfg.max_ejection_time; i++)
        d *= 2;
    d = LOOM_MIN(d, up->cfg.max_ejection_time);
    a->state = LOOM_HTTP_ADDR_EJECTED;
    a->ejected_until = now + d;
    a->probing = false;
    if (a->ejections_in_a_row < 64)
        a->ejections_in_a_row++;
    a->ejections++;
    counter_inc(a->m_ejections);
    LOOM_LOG_KV(LOOM_LOG_WARN, "upstream address ejected", LOOM_KV_CSTR("upstream", up->name),
                LOOM_KV_CSTR("address", a->name),
                LOOM_KV_UINT("consecutive_failures", a->consecutive_failures),
                LOOM_KV_UINT("ejection_ms", d / LOOM_NS_PER_MS));
    /* Pooled connections to a failing server are suspect too. */
    close_idle(a);
}

static void addr_verdict(struct addr *a, enum verdict v, bool probe, uint64_t now)
{
    struct loom_http_upstream *up = a->up;
    if (probe)
        a->probing = false;
    if (v == V_NEUTRAL)
        return;
    if (v == V_SUCCESS) {
        a->consecutive_failures = 0;
        if (probe && a->state == LOOM_HTTP_ADDR_HALF_OPEN) {
            a->state = LOOM_HTTP_ADDR_HEALTHY;
            a->ejections_in_a_row = 0;
            a->ejected_until = 0;
            LOOM_LOG_KV(LOOM_LOG_INFO, "upstream address readmitted",
                        LOOM_KV_CSTR("upstream", up->name), LOOM_KV_CSTR("address", a->name));
        }
        return;
    }
    a->failures++;
    counter_inc(a->m_failures);
    if (a->consecutive_failures < UINT_MAX)
        a->consecutive_failures++;
    if (up->cfg.breaker_threshold == LOOM_HTTP_BREAKER_OFF)
        return;
    if (probe && a->state == LOOM_HTTP_ADDR_HALF_OPEN)
        addr_eject(a, now);
    else if (a->state == LOOM_HTTP_ADDR_HEALTHY &&
             a->consecutive_failures >= up->cfg.breaker_threshold)
        addr_eject(a, now);
}

static bool any_eligible(struct loom_http_upstream *up, uint64_t now)
{
    if (up->cfg.panic_mode)
        return true;
    for (size_t i = 0; i < up->naddrs; i++)
        if (addr_eligible(&up->addrs[i], now))
            return true;
    return false;
}

/* P2C: of two distinct random candidates, the one with fewer attempts in flight. `avoid` (the
 * previous attempt's address) is left out when there is another candidate. */
static struct addr *pick(struct loom_http_upstream *up, const struct addr *avoid, uint64_t now)
{
    size_t n = 0;
    for (size_t i = 0; i < up->naddrs; i++)
        if (addr_eligible(&up->addrs[i], now))
            up->scratch[n++] = i;
    if (n == 0) {
        if (!up->cfg.panic_mode)
            return NULL;
        for (size_t i = 0; i < up->naddrs; i++)
            up->scratch[n++] = i;
    }
    if (n > 1 && avoid) {
        for (size_t i = 0; i < n; i++) {
            if (up->scratch[i] == avoid->index) {
                up->scratch[i] = up->scratch[--n];
                break;
            }
        }
    }
    if (n == 1)
        return &up->addrs[up->scratch[0]];
    uint64_t r = loom_trace_random_u64();
    size_t i = (size_t)(r % n), j = (size_t)((r >> 32) % (n - 1));
    if (j >= i)
        j++;
    struct addr *a = &up->addrs[up->scratch[i]], *b = &up->addrs[up->scratch[j]];
    return b->outstanding < a->outstanding ? b : a;
}

/* ---- calls ---- */

static void release_big(struct loom_buf *b)
{
    if (b->cap > KEEP_BUF_CAP)
        loom_buf_release(b);
    else
        loom_buf_reset(b);
}

static void reset_response(struct loom_http_call *call)
{
    loom_buf_reset(&call->rhead);
    loom_buf_reset(&call->rhoffs);
    loom_buf_reset(&call->rbody);
    call->rbody.max = call->max_body;
    call->nheaders = 0;
    call->status = 0;
    call->version_minor = 0;
    call->last_was_value = false;
    call->informational = false;
    call->perr = LOOM_OK;
    call->pmsg[0] = '\0';
}

static void on_call_timer(struct loom_timer *t);

static void list_push(struct loom_http_call **head, struct loom_http_call *call)
{
    call->prev = NULL;
    call->next = *head;
    if (*head)
        (*head)->prev = call;
    *head = call;
}

static void list_unlink(struct loom_http_call **head, struct loom_http_call *call)
{
    if (call->prev)
        call->prev->next = call->next;
    else
        *head = call->next;
    if (call->next)
        call->next->prev = call->prev;
    call->prev = call->next = NULL;
}

static struct loom_http_call *call_get(struct loom_http_upstream *up)
{
    struct loom_http_call *call = up->free_calls;
    if (call) {
        up->free_calls = call->next;
    } else {
        call = loom_new(struct loom_http_call);
        call->up = up;
        loom_buf_init(&call->head, MAX_REQUEST_HEAD);
        loom_buf_init(&call->rhead, up->cfg.max_header_bytes);
        loom_buf_init(&call->rhoffs, (size_t)1 << 30);
        loom_buf_init(&call->rheaders, (size_t)1 << 30);
        loom_buf_init(&call->rbody, up->cfg.max_body_bytes);
        loom_timer_init(&call->timer, up->loop, on_call_timer);
    }
    list_push(&up->calls, call);
    call->qnext = NULL;
    call->attempts = 0;
    call->addr = call->last_addr = NULL;
    call->conn = NULL;
    call->probe = false;
    call->stale_retried = false;
    call->free_attempt = false;
    call->discard = false;
    call->err = LOOM_OK;
    call->msg[0] = '\0';
    return call;
}

/* Back to the pool, from any list but the in-flight one. */
static void call_recycle(struct loom_http_call *call)
{
    struct loom_http_upstream *up = call->up;
    loom_timer_stop(&call->timer);
    release_big(&call->head);
    release_big(&call->rhead);
    release_big(&call->rhoffs);
    release_big(&call->rheaders);
    release_big(&call->rbody);
    call->body = LOOM_STR_NULL;
    call->cb = NULL;
    call->arg = NULL;
    call->gen++;
    call->state = CALL_FREE;
    call->prev = NULL;
    call->next = up->free_calls;
    up->free_calls = call;
}

static void call_release(struct loom_http_call *call)
{
    list_unlink(&call->up->calls, call);
    call_recycle(call);
}

/* A placeholder's response was read, or its connection closed. */
static void discard_release(struct loom_http_call *call)
{
    list_unlink(&call->up->discarded, call);
    call_recycle(call);
}

static void call_free_mem(struct loom_http_call *call)
{
    loom_buf_release(&call->head);
    loom_buf_release(&call->rhead);
    loom_buf_release(&call->rhoffs);
    loom_buf_release(&call->rheaders);
    loom_buf_release(&call->rbody);
    free(call);
}

/* Arm the call's one timer at the nearest of the times that matter in its state. */
static void call_arm(struct loom_http_call *call)
{
    uint64_t t;
    switch (call->state) {
    case CALL_DELIVER:
        t = 0; /* due at once: runs in this iteration's timer pass or the next one's */
        break;
    case CALL_CONNECTING:
        t = LOOM_MIN(call->deadline, LOOM_MIN(call->connect_deadline, call->try_deadline));
        break;
    case CALL_ACTIVE:
    case CALL_DISCARD:
        t = LOOM_MIN(call->deadline, call->try_deadline);
        break;
    case CALL_BACKOFF:
        t = call->backoff_until;
        break;
    default:
        loom_timer_stop(&call->timer);
        return;
    }
    loom_timer_start_at(&call->timer, t);
}

static void deliver(struct loom_http_call *call)
{
    struct loom_http_upstream *up = call->up;
    call->state = CALL_DONE;
    loom_timer_stop(&call->timer);
    struct loom_http_response r = {
        .err = call->err,
        .error = call->err ? call->msg : "",
        .address = call->last_addr ? call->last_addr->name : "",
        .address_index = call->last_addr ? call->last_addr->index : SIZE_MAX,
        .attempts = call->attempts,
        .call = call,
    };
    if (call->err == LOOM_OK) {
        r.status = call->status;
        r.version_minor = call->version_minor;
        r.headers =
            call->nheaders ? (const struct loom_http_header *)(void *)call->rheaders.data : NULL;
        r.nheaders = call->nheaders;
        r.body = loom_buf_str(&call->rbody);
    }
    up->inflight--;
    call->cb(&r, call->arg);
    if (call->discard && call->conn) {
        /* Cancelled in a pipeline with its request written (conn_forget): it stays in its
         * connection's queue, under a new generation, until its response has been read. Its
         * deadline still bounds the wait. */
        list_unlink(&up->calls, call);
        call->cb = NULL;
        call->arg = NULL;
        call->body = LOOM_STR_NULL;
        call->gen++;
        call->state = CALL_DISCARD;
        list_push(&up->discarded, call);
        call_arm(call);
        return;
    }
    call_release(call);
}

/* The call's outcome is final: run the callback now; from the timer if the call is still being
 * submitted; after the event being handled (batch_end) if there is one. */
static void finish(struct loom_http_call *call)
{
    struct loom_http_upstream *up = call->up;
    if (call->in_submit) {
        call->state = CALL_DELIVER;
        call_arm(call);
        return;
    }
    if (up->batch) {
        call->state = CALL_READY;
        loom_timer_stop(&call->timer);
        call->qnext = NULL;
        if (up->ready_tail)
            up->ready_tail->qnext = call;
        else
            up->ready_head = call;
        up->ready_tail = call;
        return;
    }
    deliver(call);
}

static void ready_unlink(struct loom_http_call *call)
{
    qlist_unlink(&call->up->ready_head, &call->up->ready_tail, call);
    call->qnext = NULL;
}

/*
 * Every entry point that handles connections (I/O events, timers, the flush task, cancel) runs
 * between batch_begin and batch_end: outcomes found meanwhile wait in the ready list, so that no
 * callback (which may submit or cancel calls) runs while a connection or its queue is half
 * updated, or while the shared read buffer still holds bytes to parse. They run in order at the
 * outermost batch_end.
 */
static void batch_begin(struct loom_http_upstream *up)
{
    up->batch++;
}

static void batch_end(struct loom_http_upstream *up)
{
    if (--up->batch > 0 || up->draining)
        return;
    up->draining = true;
    while (up->ready_head) {
        struct loom_http_call *call = up->ready_head;
        up->ready_head = call->qnext;
        if (!up->ready_head)
            up->ready_tail = NULL;
        call->qnext = NULL;
        deliver(call);
    }
    up->draining = false;
}

static void set_msg(struct loom_http_call *call, loom_err err, const struct addr *a,
                    const char *fmt, va_list ap) __attribute__((format(printf, 4, 0)));
static void set_msg(struct loom_http_call *call, loom_err err, const struct addr *a,
                    const char *fmt, va_list ap)
{
    int n =
        a ? snprintf(call->msg, sizeof(call->msg), "upstream \"%s\" %s: ", call->up->name, a->name)
          : snprintf(call->msg, sizeof(call->msg), "upstream \"%s\": ", call->up->name);
    if (n < 0)
        n = 0;
    if ((size_t)n < sizeof(call->msg))
        vsnprintf(call->msg + n, sizeof(call->msg) - (size_t)n, fmt, ap);
    call->err = err;
}

static void fail_call(struct loom_http_call *call, loom_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_call(struct loom_http_call *call, loom_err err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_msg(call, err, NULL, fmt, ap);
    va_end(ap);
    finish(call);
}

/* The attempt in flight is over: account for it on its address. */
static void attempt_end(struct loom_http_call *call, enum verdict v)
{
    struct addr *a = call->addr;
    if (!a)
        return;
    a->outstanding--;
    addr_verdict(a, v, call->probe, now_of(call->up));
    call->probe = false;
    call->addr = NULL;
}

static uint64_t backoff_delay(const struct loom_http_upstream *up, unsigned attempts)
{
    uint64_t d = up->cfg.backoff_base;
    for (unsigned i = 1; i < attempts && d < up->cfg.backoff_max; i++)
        d *= 2;
    d = LOOM_MIN(d, up->cfg.backoff_max);
    uint64_t half = d / 2;
    return half + loom_trace_random_u64() % (d - half + 1);
}

/* Whether the call may try again, and if so when: the checks that cost nothing come before
 * the budget, which a refusal must not consume. */
static bool retry_allowed(struct loom_http_call *call)
{
    struct loom_http_upstream *up = call->up;
    uint64_t now = now_of(up);
    if (up->closing || call->attempts >= up->cfg.max_attempts)
        return false;
    if (!call->idempotent && call->wrote_any)
        return false;
    uint64_t delay = backoff_delay(up, call->attempts);
    if (now + delay >= call->deadline || !any_eligible(up, now))
        return false;
    if (!budget_withdraw(up)) {
        up->nretries_denied++;
        return false;
    }
    call->backoff_until = now + delay;
    return true;
}

static void schedule_retry(struct loom_http_call *call)
{
    call->up->nretries++;
    call->state = CALL_BACKOFF;
    call_arm(call);
}

/*
 * `call` leaves its connection unanswered through no fault of its own: another call on it
 * failed, or the server ended the connection after an earlier response. That is neither a success
 * nor a failure of the address, and the call goes again at once, without drawing on the retry
 * budget (it was never really attempted) but within its deadline. The re-send counts against
 * max_attempts only when `charge` and its request had been written, since the server may then
 * have run it. While the upstream is being freed it only waits, for the cancel that follows.
 */
static void resubmit(struct loom_http_call *call, bool charge, const char *why)
{
    struct loom_http_upstream *up = call->up;
    bool counted = charge && call->wrote_any;
    snprintf(call->msg, sizeof(call->msg), "upstream \"%s\" %s: %s", up->name,
             call->addr ? call->addr->name : "", why);
    call->err = LOOM_ECLOSED;
    call->conn = NULL;
    attempt_end(call, V_NEUTRAL);
    if (!up->closing && counted && call->attempts >= up->cfg.max_attempts) {
        finish(call);
        return;
    }
    call->free_attempt = !counted;
    call->backoff_until = now_of(up);
    schedule_retry(call);
}

/* Whether `call`'s connection had carried a complete exchange before: a close before any byte
 * of its response is then a keep-alive race, not a sign of a sick server. */
static bool on_kept_conn(const struct loom_http_call *call)
{
    return call->reused || (call->conn && call->conn->responses > 0);
}

/* The attempt failed with `err`: close its connection (sending the calls that shared it
 * again), account for the attempt, then retry or give up. */
static void attempt_failedv(struct loom_http_call *call, loom_err err, enum verdict v,
                            bool retriable, const char *fmt, va_list ap)
    __attribute__((format(printf, 5, 0)));
static void attempt_failedv(struct loom_http_call *call, loom_err err, enum verdict v,
                            bool retriable, const char *fmt, va_list ap)
{
    set_msg(call, err, call->addr, fmt, ap);
    bool kept = on_kept_conn(call);
    if (call->conn) {
        conn_abort(call->conn, call, true,
                   "connection closed before a response, after another request on it failed");
        call->conn = NULL;
    }
    /* A keep-alive connection the server had closed (nothing came back on it) says nothing
     * about the server: an idempotent request goes again at once, on a connection that is not
     * idle in the pool, without drawing on the retry budget — once. */
    bool stale = kept && !call->got_bytes && err == LOOM_ECLOSED && call->idempotent &&
                 !call->stale_retried && !call->up->closing;
    attempt_end(call, v);
    if (retriable && stale) {
        call->stale_retried = true;
        call->fresh = true;
        call->backoff_until = now_of(call->up);
        schedule_retry(call);
        return;
    }
    if (retriable && retry_allowed(call)) {
        schedule_retry(call);
        return;
    }
    finish(call);
}

static void attempt_failed(struct loom_http_call *call, loom_err err, enum verdict v,
                           bool retriable, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void attempt_failed(struct loom_http_call *call, loom_err err, enum verdict v,
                           bool retriable, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    attempt_failedv(call, err, v, retriable, fmt, ap);
    va_end(ap);
}

/* The connection failed while its head call's response was due: that call's attempt failed,
 * or, for the placeholder of a cancelled call, nobody's; the others go again. */
static void conn_failed(struct conn *c, loom_err err, enum verdict v, bool retriable,
                        const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void conn_failed(struct conn *c, loom_err err, enum verdict v, bool retriable,
                        const char *fmt, ...)
{
    struct loom_http_call *call = c->head;
    if (call->discard) {
        conn_abort(c, NULL, true,
                   "connection closed before a response, after another request on it failed");
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    attempt_failedv(call, err, v, retriable, fmt, ap);
    va_end(ap);
}

/*
 * The head call's response is complete; `left` bytes follow it in the buffer. Returns true if
 * the connection goes on with the next call's response.
 */
static bool response_done(struct conn *c, size_t left)
{
    struct addr *ca = c->addr;
    struct loom_http_upstream *up = ca->up;
    struct loom_http_call *call = queue_pop(c);
    bool keep = call->sent == call->total && loom__h1_keepalive(&c->parser);
    bool more = false;
    c->responses++;
    call->conn = NULL;
    if (!keep) {
        /* The server ends the connection here (Connection: close, HTTP/1.0, a body delimited by
         * the close, an answer before the request was read whole): the calls behind will not be
         * answered, and were not processed. */
        if (c->head)
            conn_abort(c, NULL, false,
                       "connection closed before a response: the server ended it after an "
                       "earlier one");
        else
            conn_close(c);
    } else if (c->head) {
        loom__h1_init(&c->parser, LOOM__H1_RESPONSE, &h1_callbacks, c);
        if (c->pipelined && !c->write_errno && c->ncalls < up->depth &&
            (!ca->open || ca->open->ncalls >= up->depth))
            ca->open = c;
        more = true;
    } else if (left == 0 && c->write_errno == 0) {
        pool_put(c);
    } else {
        conn_close(c); /* bytes nobody asked for, or a failed write */
    }
    if (call->discard) {
        if (call->state == CALL_DISCARD)
            discard_release(call);
        return more;
    }
    int status = call->status;
    struct addr *a = call->addr;
    attempt_end(call, in_set(up->failure_statuses, up->nfailure, status) ? V_FAILURE : V_SUCCESS);
    if (in_set(up->retry_statuses, up->nretry, status) && retry_allowed(call)) {
        /* Kept in case the retry finds no address left. */
        call->err = LOOM_EUNAVAIL;
        snprintf(call->msg, sizeof(call->msg),
                 "upstream \"%s\" %s: HTTP %d, and no address was left to retry", up->name, a->name,
                 status);
        schedule_retry(call);
        return more;
    }
    call->err = LOOM_OK;
    call->msg[0] = '\0';
    finish(call);
    return more;
}

/* ---- writing the request ---- */

static size_t add_iov(struct iovec *iov, size_t n, size_t *skip, const char *p, size_t len)
{
    if (*skip >= len) {
        *skip -= len;
        return n;
    }
    iov[n].iov_base = (void *)(p + *skip);
    iov[n].iov_len = len - *skip;
    *skip = 0;
    return n + 1;
}

/* Write the requests not yet written, as many in one system call as the iovec limit allows.
 * Returns false if the connection is gone. */
static bool conn_send(struct conn *c)
{
    struct addr *a = c->addr;
    struct loom_http_upstream *up = a->up;
    while (c->unsent) {
        size_t n = 0;
        for (struct loom_http_call *call = c->unsent; call && n + 4 <= up->niov;
             call = call->qnext) {
            size_t skip = call->sent;
            size_t split = call->host_at == SIZE_MAX ? call->head.len : call->host_at;
            n = add_iov(up->iov, n, &skip, call->head.data, split);
            if (call->host_at != SIZE_MAX)
                n = add_iov(up->iov, n, &skip, a->host_line, a->host_line_len);
            n = add_iov(up->iov, n, &skip, call->head.data + split, call->head.len - split);
            n = add_iov(up->iov, n, &skip, call->body.ptr, call->body.len);
        }
        struct msghdr m = { .msg_iov = up->iov, .msg_iovlen = n };
        ssize_t w = sendmsg(c->io.fd, &m, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (loom_io_start(&c->io, LOOM_IO_READ | LOOM_IO_WRITE)) {
                    conn_failed(c, LOOM_EIO, V_NEUTRAL, false, "cannot watch the socket");
                    return false;
                }
                return true;
            }
            /* The server may have answered and closed without reading everything (a 413, say):
             * read what it sent before giving up. */
            c->write_errno = errno;
            if (a->open == c)
                a->open = NULL;
            return conn_read(c);
        }
        /* Every unsent call has bytes left, so each byte written advances one. */
        for (size_t left = (size_t)w; left;) {
            struct loom_http_call *call = c->unsent;
            size_t k = LOOM_MIN(left, call->total - call->sent);
            call->sent += k;
            call->wrote_any = true;
            left -= k;
            if (call->sent == call->total)
                c->unsent = call->qnext;
        }
    }
    if (c->io.events != LOOM_IO_READ && loom_io_start(&c->io, LOOM_IO_READ)) {
        conn_failed(c, LOOM_EIO, V_NEUTRAL, false, "cannot watch the socket");
        return false;
    }
    return true;
}

/* The end-of-iteration flush: each queued connection writes what its calls added. */
static void on_flush(struct loom_task *task)
{
    struct flusher *f = LOOM_CONTAINER_OF(task, struct flusher, task);
    struct loom_http_upstream *up = f->up;
    if (!up) {
        free(f); /* the upstream was freed while this task was queued */
        return;
    }
    up->flush_pending = false;
    batch_begin(up);
    while (up->flush_head) {
        struct conn *c = up->flush_head;
        flush_unlink(c);
        if (c->state == CONN_ACTIVE && c->unsent)
            conn_send(c);
    }
    batch_end(up);
}

/* ---- reading the response ---- */

/* The parser's callbacks fill the head call: its response is the one being read. */
static struct loom_http_call *cb_call(void *ud)
{
    return ((struct conn *)ud)->head;
}

static int refuse(struct loom_http_call *call, loom_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int refuse(struct loom_http_call *call, loom_err err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(call->pmsg, sizeof(call->pmsg), fmt, ap);
    va_end(ap);
    call->perr = err;
    return -1;
}

static int on_header_name(void *ud, const char *at, size_t len)
{
    struct loom_http_call *call = cb_call(ud);
    size_t n = call->rhoffs.len / sizeof(struct hoff);
    if (n == 0 || call->last_was_value) {
        if (n >= call->up->cfg.max_headers)
            return refuse(call, LOOM_ETOOBIG, "more than %zu response header fields",
                          call->up->cfg.max_headers);
        struct hoff h = { (uint32_t)call->rhead.len, 0, 0, 0 };
        loom_buf_append(&call->rhoffs, &h, sizeof(h));
        n++;
    }
    if (loom_buf_append(&call->rhead, at, len))
        return refuse(call, LOOM_ETOOBIG, "response header fields over %zu bytes",
                      call->up->cfg.max_header_bytes);
    struct hoff *h = (struct hoff *)(void *)call->rhoffs.data + n - 1;
    h->name_len += (uint32_t)len;
    call->last_was_value = false;
    return 0;
}

static int on_header_value(void *ud, const char *at, size_t len)
{
    struct loom_http_call *call = cb_call(ud);
    size_t n = call->rhoffs.len / sizeof(struct hoff);
    if (n == 0)
        return refuse(call, LOOM_EPARSE, "header value without a name");
    struct hoff *h = (struct hoff *)(void *)call->rhoffs.data + n - 1;
    if (!call->last_was_value) {
        h->value_off = (uint32_t)call->rhead.len;
        h->value_len = 0;
    }
    if (loom_buf_append(&call->rhead, at, len))
        return refuse(call, LOOM_ETOOBIG, "response header fields over %zu bytes",
                      call->up->cfg.max_header_bytes);
    h = (struct hoff *)(void *)call->rhoffs.data + n - 1;
    h->value_len += (uint32_t)len;
    call->last_was_value = true;
    return 0;
}

static int on_headers_complete(void *ud)
{
    struct conn *c = ud;
    struct loom_http_call *call = c->head;
    int status = loom__h1_status_code(&c->parser);
    call->status = status;
    call->version_minor = loom__h1_version_minor(&c->parser);
    if (status >= 100 && status < 200) {
        if (status == 101)
            return refuse(call, LOOM_EPARSE, "unexpected 101 Switching Protocols");
        /* Informational: forget its headers and wait for the final response. */
        call->informational = true;
        loom_buf_reset(&call->rhead);
        loom_buf_reset(&call->rhoffs);
        call->last_was_value = false;
        return 0;
    }
    size_t n = call->rhoffs.len / sizeof(struct hoff);
    if (n) {
        loom_buf_reset(&call->rheaders);
        loom_buf_reserve(&call->rheaders, n * sizeof(struct loom_http_header));
        struct loom_http_header *hs = (struct loom_http_header *)(void *)call->rheaders.data;
        const struct hoff *ho = (const struct hoff *)(const void *)call->rhoffs.data;
        for (size_t i = 0; i < n; i++) {
            hs[i].name = loom_str_make(call->rhead.data + ho[i].name_off, ho[i].name_len);
            hs[i].value =
                loom_str_trim(loom_str_make(call->rhead.data + ho[i].value_off, ho[i].value_len));
        }
    }
    call->nheaders = n;
    if (call->method == LOOM_HTTP_HEAD)
        return 1; /* the Content-Length of a HEAD response describes a body that is not sent */
    if (c->addr->open == c && !loom__h1_keepalive(&c->parser))
        c->addr->open = NULL; /* the connection ends after this response: no more joiners */
    uint64_t clen = loom__h1_content_length(&c->parser);
    if (clen != UINT64_MAX && clen > call->max_body)
        return refuse(call, LOOM_ETOOBIG, "response body of %llu bytes is over the limit of %zu",
                      (unsigned long long)clen, call->max_body);
    if (clen != UINT64_MAX && clen > 0)
        loom_buf_reserve(&call->rbody, (size_t)clen);
    return 0;
}

static int on_chunk_header(void *ud, uint64_t len)
{
    struct loom_http_call *call = cb_call(ud);
    if (len > call->max_body - call->rbody.len)
        return refuse(call, LOOM_ETOOBIG, "response body over the limit of %zu bytes",
                      call->max_body);
    return 0;
}

static int on_body(void *ud, const char *at, size_t len)
{
    struct loom_http_call *call = cb_call(ud);
    if (loom_buf_append(&call->rbody, at, len))
        return refuse(call, LOOM_ETOOBIG, "response body over the limit of %zu bytes",
                      call->max_body);
    return 0;
}

static const struct loom__h1_callbacks h1_callbacks = {
    .on_header_name = on_header_name,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_chunk_header = on_chunk_header,
    .on_body = on_body,
};

/* Verdict for a connection that failed: a keep-alive one that closed before answering lost a
 * race, which says nothing about the server's health. */
static enum verdict closed_verdict(const struct loom_http_call *call)
{
    return on_kept_conn(call) && !call->got_bytes ? V_NEUTRAL : V_FAILURE;
}

/* Parse bytes that arrived. Returns false if the connection has no response left to read
 * (it was pooled or closed). */
static bool conn_feed(struct conn *c, const char *data, size_t len)
{
    for (;;) {
        struct loom_http_call *call = c->head;
        call->got_bytes = true;
        size_t used = 0;
        enum loom__h1_status st = loom__h1_execute(&c->parser, data, len, &used);
        if (st == LOOM__H1_ERROR) {
            if (call->perr == LOOM_ETOOBIG)
                conn_failed(c, LOOM_ETOOBIG, V_NEUTRAL, false, "%s", call->pmsg);
            else if (call->perr)
                conn_failed(c, call->perr, V_FAILURE, true, "malformed response: %s", call->pmsg);
            else
                conn_failed(c, LOOM_EPARSE, V_FAILURE, true, "malformed response: %s",
                            loom__h1_error(&c->parser));
            return false;
        }
        if (st == LOOM__H1_MORE)
            return true;
        data += used;
        len -= used;
        if (call->informational) {
            call->informational = false;
            loom__h1_init(&c->parser, LOOM__H1_RESPONSE, &h1_callbacks, c);
            if (len == 0)
                return true;
            continue;
        }
        /* Bytes after a response belong to the next call's. */
        if (!response_done(c, len))
            return false;
        if (len == 0)
            return true;
    }
}

static bool conn_eof(struct conn *c)
{
    struct loom_http_call *call = c->head;
    if (loom__h1_finish(&c->parser) == LOOM__H1_MESSAGE && !call->informational) {
        response_done(c, 0); /* a body delimited by the close */
        return false;
    }
    if (call->got_bytes)
        conn_failed(c, LOOM_ECLOSED, V_FAILURE, true,
                    "connection closed before the response was complete");
    else
        conn_failed(c, LOOM_ECLOSED, closed_verdict(call), true,
                    "connection closed before a response%s",
                    on_kept_conn(call) ? " (reused keep-alive connection)" : "");
    return false;
}

static bool conn_read(struct conn *c)
{
    struct loom_http_upstream *up = c->addr->up;
    for (int i = 0; i < READS_PER_EVENT; i++) {
        ssize_t n = read(c->io.fd, up->rbuf, READ_BUF_SIZE);
        if (n > 0) {
            if (!conn_feed(c, up->rbuf, (size_t)n))
                return false;
            if ((size_t)n < READ_BUF_SIZE && !c->write_errno)
                break;
            continue;
        }
        if (n == 0)
            return conn_eof(c);
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        int e = errno;
        conn_failed(c, LOOM_ECLOSED, closed_verdict(c->head), true, "read: %s", strerror(e));
        return false;
    }
    if (c->write_errno) {
        conn_failed(c, LOOM_ECLOSED, closed_verdict(c->head), true, "write: %s",
                    strerror(c->write_errno));
        return false;
    }
    return true;
}

static void conn_event(struct conn *c, unsigned events)
{
    switch (c->state) {
    case CONN_IDLE:
        /* An idle connection has nothing to say: this is a close or garbage. */
        conn_close(c);
        return;
    case CONN_CONNECTING: {
        int rc = loom_net_connect_result(c->io.fd);
        if (rc) {
            conn_failed(c, LOOM_ECONNECT, V_FAILURE, true, "connect: %s", strerror(rc));
            return;
        }
        c->state = CONN_ACTIVE;
        for (struct loom_http_call *call = c->head; call; call = call->qnext) {
            call->state = CALL_ACTIVE;
            call_arm(call);
        }
        flush_unlink(c);
        conn_send(c);
        return;
    }
    case CONN_ACTIVE:
        if ((events & LOOM_IO_WRITE) && !conn_send(c))
            return;
        if (events & (LOOM_IO_READ | LOOM_IO_HUP | LOOM_IO_ERROR))
            conn_read(c);
        return;
    }
}

static void conn_on_io(struct loom_io *io, unsigned events)
{
    struct conn *c = LOOM_CONTAINER_OF(io, struct conn, io);
    struct loom_http_upstream *up = c->addr->up;
    batch_begin(up);
    conn_event(c, events);
    batch_end(up);
}

/* ---- attempts ---- */

static void attempt_begin(struct loom_http_call *call)
{
    struct loom_http_upstream *up = call->up;
    uint64_t now = now_of(up);
    if (now >= call->deadline) {
        if (call->attempts == 0)
            fail_call(call, LOOM_ETIMEDOUT, "the deadline passed before the request was sent");
        else
            fail_call(call, LOOM_ETIMEDOUT, "the deadline passed after %u attempts",
                      call->attempts);
        return;
    }
    struct addr *a = pick(up, call->last_addr, now);
    if (!a) {
        if (call->attempts == 0)
            fail_call(call, LOOM_EUNAVAIL, "all %zu addresses are ejected (circuit open)",
                      up->naddrs);
        else
            finish(call); /* with the last attempt's error */
        return;
    }
    call->probe = a->state == LOOM_HTTP_ADDR_HALF_OPEN && !a->probing;
    if (call->probe)
        a->probing = true;
    call->addr = a;
    call->last_addr = a;
    a->outstanding++;
    a->requests++;
    counter_inc(a->m_requests);
    if (call->attempts > 0) {
        a->retries++;
        counter_inc(a->m_retries);
    }
    if (call->free_attempt)
        call->free_attempt = false;
    else
        call->attempts++;
    reset_response(call);
    call->sent = 0;
    call->wrote_any = false;
    call->got_bytes = false;
    call->total =
        call->head.len + (call->host_at != SIZE_MAX ? a->host_line_len : 0) + call->body.len;
    call->try_deadline = up->cfg.try_timeout ? now + up->cfg.try_timeout : UINT64_MAX;

    /* A pipelined call joins the open connection, even after a keep-alive race (`fresh`): that
     * one is in use, not a survivor of the idle pool. */
    bool pipe = up->depth > 1 && call->idempotent;
    struct conn *c = pipe ? open_conn(a) : NULL;
    bool joined = c != NULL;
    if (!c && !call->fresh)
        c = pool_get(a, !call->idempotent);
    call->fresh = false;
    call->reused = c && !joined;
    if (!c) {
        struct loom_error e = { 0 };
        c = conn_open(a, &e);
        if (!c) {
            attempt_failed(call, LOOM_ECONNECT, V_FAILURE, true, "%s", e.msg);
            return;
        }
    }
    if (!joined) {
        c->write_errno = 0;
        c->pipelined = pipe;
        loom__h1_init(&c->parser, LOOM__H1_RESPONSE, &h1_callbacks, c);
        if (pipe)
            a->open = c;
    }
    queue_push(c, call);
    if (c->state == CONN_CONNECTING) {
        call->state = CALL_CONNECTING;
        call->connect_deadline = now + up->cfg.connect_timeout;
        call_arm(call);
        return;
    }
    call->state = CALL_ACTIVE;
    call_arm(call);
    if (pipe)
        flush_queue(c); /* with the other calls of this loop iteration */
    else
        conn_send(c);
}

static void call_timeout(struct loom_http_call *call)
{
    uint64_t now = now_of(call->up);
    switch (call->state) {
    case CALL_DELIVER:
        deliver(call);
        return;
    case CALL_BACKOFF:
        if (now >= call->backoff_until)
            attempt_begin(call);
        else
            call_arm(call);
        return;
    case CALL_CONNECTING:
    case CALL_ACTIVE:
        /* A call in a pipeline cannot skip its response: its connection is closed, and the
         * other calls on it go again (attempt_failed). */
        if (now >= call->deadline) {
            attempt_failed(call, LOOM_ETIMEDOUT, V_FAILURE, false,
                           "no response before the deadline (attempt %u)", call->attempts);
        } else if (call->state == CALL_CONNECTING && now >= call->connect_deadline) {
            attempt_failed(call, LOOM_ECONNECT, V_FAILURE, true, "connect timed out after %llu ms",
                           (unsigned long long)(call->up->cfg.connect_timeout / LOOM_NS_PER_MS));
        } else if (now >= call->try_deadline) {
            attempt_failed(call, LOOM_ETIMEDOUT, V_FAILURE, true,
                           "no response within the try timeout of %llu ms",
                           (unsigned long long)(call->up->cfg.try_timeout / LOOM_NS_PER_MS));
        } else {
            call_arm(call);
        }
        return;
    case CALL_DISCARD:
        /* A cancelled call's response did not come within its time: nor will the others'. */
        if (now < LOOM_MIN(call->deadline, call->try_deadline))
            call_arm(call);
        else if (call->conn)
            conn_abort(call->conn, NULL, true,
                       "connection closed before a response: a cancelled request ahead of it "
                       "got no response in time");
        else
            discard_release(call);
        return;
    default:
        return;
    }
}

static void on_call_timer(struct loom_timer *t)
{
    struct loom_http_call *call = LOOM_CONTAINER_OF(t, struct loom_http_call, timer);
    struct loom_http_upstream *up = call->up;
    batch_begin(up);
    call_timeout(call);
    batch_end(up);
}

/* ---- the public API ---- */

static bool valid_target(enum loom_http_method m, struct loom_str t)
{
    if (t.len == 0)
        return false;
    if (!(t.ptr[0] == '/' || (m == LOOM_HTTP_OPTIONS && t.len == 1 && t.ptr[0] == '*')))
        return false;
    for (size_t i = 0; i < t.len; i++) {
        unsigned char ch = (unsigned char)t.ptr[i];
        if (ch <= 0x20 || ch == 0x7f)
            return false;
    }
    return true;
}

static bool default_idempotent(enum loom_http_method m)
{
    return m == LOOM_HTTP_GET || m == LOOM_HTTP_HEAD || m == LOOM_HTTP_PUT ||
           m == LOOM_HTTP_DELETE || m == LOOM_HTTP_OPTIONS;
}

/* Serialise the method line and headers (Host excepted) into call->head. */
static loom_err build_head(struct loom_http_call *call, const struct loom_http_request *req,
                           struct loom_error *err)
{
    struct loom_buf *h = &call->head;
    loom_buf_reset(h);
    bool has_host = false, has_trace = false;
    loom_err e = loom_buf_append_cstr(h, loom_http_method_name(req->method));
    e = e ? e : loom_buf_putc(h, ' ');
    e = e ? e : loom_buf_append_str(h, req->target);
    e = e ? e : loom_buf_append_cstr(h, " HTTP/1.1\r\n");
    call->host_at = h->len;
    for (size_t i = 0; i < req->nheaders && !e; i++) {
        const struct loom_http_header *hd = &req->headers[i];
        if (!loom__http_token(hd->name) || !loom__http_field_value(hd->value))
            return loom_error_set(err, LOOM_EINVAL, "header %zu (%.*s) is malformed", i,
                                  (int)LOOM_MIN(hd->name.len, 64),
                                  hd->name.ptr ? hd->name.ptr : "");
        if (loom_str_ieq(hd->name, LOOM_STR("content-length")) ||
            loom_str_ieq(hd->name, LOOM_STR("transfer-encoding")) ||
            loom_str_ieq(hd->name, LOOM_STR("connection")))
            continue;
        if (loom_str_ieq(hd->name, LOOM_STR("host")))
            has_host = true;
        else if (loom_str_ieq(hd->name, LOOM_STR("traceparent")))
            has_trace = true;
        e = loom_buf_append_str(h, hd->name);
        e = e ? e : loom_buf_append(h, ": ", 2);
        e = e ? e : loom_buf_append_str(h, hd->value);
        e = e ? e : loom_buf_append(h, "\r\n", 2);
    }
    const struct loom_trace_ctx *trace = loom_trace_current();
    if (!e && !has_trace && trace) {
        char tp[LOOM_TRACEPARENT_SIZE];
        size_t n = loom_trace_format(trace, tp);
        e = loom_buf_append_cstr(h, "traceparent: ");
        e = e ? e : loom_buf_append(h, tp, n);
        e = e ? e : loom_buf_append(h, "\r\n", 2);
    }
    if (!e && (req->body.len || req->method == LOOM_HTTP_POST || req->method == LOOM_HTTP_PUT ||
               req->method == LOOM_HTTP_PATCH)) {
        e = loom_buf_append_cstr(h, "Content-Length: ");
        e = e ? e : loom_buf_append_u64(h, req->body.len);
        e = e ? e : loom_buf_append(h, "\r\n", 2);
    }
    e = e ? e : loom_buf_append(h, "\r\n", 2);
    if (e)
        return loom_error_set(err, LOOM_ETOOBIG, "request head over %d bytes", MAX_REQUEST_HEAD);
    if (has_host)
        call->host_at = SIZE_MAX;
    return LOOM_OK;
}

loom_err loom_http_upstream_request(struct loom_http_upstream *up,
                                    const struct loom_http_request *req, loom_http_response_cb cb,
                                    void *arg, struct loom_http_call_ref *ref,
                                    struct loom_error *err)
{
    if (up->closing)
        return loom_error_set(err, LOOM_EUNAVAIL, "upstream \"%s\" is being freed", up->name);
    if (!cb)
        return loom_error_set(err, LOOM_EINVAL, "no callback");
    if (req->method <= LOOM_HTTP_OTHER || req->method >= LOOM_HTTP__METHODS)
        return loom_error_set(err, LOOM_EINVAL, "unsupported method");
    if (!valid_target(req->method, req->target))
        return loom_error_set(err, LOOM_EINVAL,
                              "request target must be \"/path?query\" without spaces or controls");
    if (req->nheaders && !req->headers)
        return loom_error_set(err, LOOM_EINVAL, "nheaders without headers");
    if (req->body.len && !req->body.ptr)
        return loom_error_set(err, LOOM_EINVAL, "body length without a pointer");
    struct loom_http_call *call = call_get(up);
    loom_err e = build_head(call, req, err);
    if (e) {
        call_release(call);
        return e;
    }
    uint64_t now = now_of(up);
    call->method = req->method;
    call->idempotent =
        req->idempotent == LOOM_HTTP_IDEMPOTENT_YES ||
        (req->idempotent == LOOM_HTTP_IDEMPOTENT_AUTO && default_idempotent(req->method));
    call->body = req->body;
    call->deadline = req->deadline  ? req->deadline
                     : req->timeout ? now + req->timeout
                                    : now + up->cfg.timeout;
    /* A loom_buf ceiling near SIZE_MAX would overflow its capacity arithmetic. */
    call->max_body = LOOM_MIN(req->max_body ? req->max_body : up->cfg.max_body_bytes, SIZE_MAX / 4);
    call->cb = cb;
    call->arg = arg;
    up->nrequests++;
    up->inflight++;
    budget_deposit(up);
    call->in_submit = true;
    attempt_begin(call);
    call->in_submit = false;
    if (ref)
        *ref = (struct loom_http_call_ref){ call, call->gen };
    return LOOM_OK;
}

/*
 * `call`, being cancelled, leaves connection `c`. Alone on it, it takes the connection with it,
 * as without pipelining. Among pipelined calls: one not yet written simply leaves the queue; one
 * written whole stays there as a placeholder (deliver makes it CALL_DISCARD) whose response is
 * read and dropped, so that the calls behind it get theirs and the connection survives; one
 * written in part cannot be completed (its body is the caller's once the callback has run), so
 * the connection is closed and the other calls go again.
 */
static void conn_forget(struct conn *c, struct loom_http_call *call)
{
    if (c->ncalls == 1 || call->up->closing) {
        conn_abort(c, call, false, "connection closed before a response");
    } else if (call->sent == 0) {
        queue_remove(c, call);
    } else if (call->sent == call->total) {
        call->discard = true;
        return;
    } else {
        conn_abort(c, call, false,
                   "connection closed before a response: a request pipelined with it was "
                   "cancelled while being written");
    }
    call->conn = NULL;
}

bool loom_http_call_cancel(struct loom_http_call_ref ref)
{
    struct loom_http_call *call = ref.call;
    if (!call || call->gen != ref.gen)
        return false;
    struct loom_http_upstream *up = call->up;
    switch (call->state) {
    case CALL_CONNECTING:
    case CALL_ACTIVE:
        batch_begin(up);
        if (call->conn)
            conn_forget(call->conn, call);
        attempt_end(call, V_NEUTRAL);
        break;
    case CALL_READY:
        batch_begin(up);
        ready_unlink(call);
        break;
    case CALL_BACKOFF:
    case CALL_DELIVER:
        batch_begin(up);
        break;
    default:
        return false;
    }
    call->err = LOOM_ECANCELED;
    snprintf(call->msg, sizeof(call->msg), "upstream \"%s\": cancelled", up->name);
    deliver(call);
    batch_end(up);
    return true;
}

void loom_http_response_take_body(struct loom_http_response *resp, struct loom_buf *out)
{
    struct loom_http_call *call = resp->call;
    loom_buf_release(out);
    *out = call->rbody;
    loom_buf_init(&call->rbody, call->up->cfg.max_body_bytes);
    resp->body = LOOM_STR_NULL;
}

struct loom_str loom_http_response_header(const struct loom_http_response *resp, const char *name)
{
    return loom_http_header_get(resp->headers, resp->nheaders, name, NULL);
}

size_t loom_http_upstream_naddresses(const struct loom_http_upstream *up)
{
    return up->naddrs;
}

void loom_http_upstream_addr_stats(const struct loom_http_upstream *up, size_t i,
                                   struct loom_http_addr_stats *out)
{
    struct addr *a = &up->addrs[i];
    addr_refresh(a, now_of(up));
    *out = (struct loom_http_addr_stats){
        .address = a->name,
        .state = a->state,
        .consecutive_failures = a->consecutive_failures,
        .ejections_in_a_row = a->ejections_in_a_row,
        .ejected_until = a->state == LOOM_HTTP_ADDR_EJECTED ? a->ejected_until : 0,
        .outstanding = a->outstanding,
        .connections = a->nconns,
        .idle = a->nidle,
        .requests = a->requests,
        .retries = a->retries,
        .failures = a->failures,
        .ejections = a->ejections,
        .connects = a->connects,
    };
}

void loom_http_upstream_stats(const struct loom_http_upstream *up,
                              struct loom_http_upstream_stats *out)
{
    *out = (struct loom_http_upstream_stats){
        .requests = up->nrequests,
        .retries = up->nretries,
        .retries_denied = up->nretries_denied,
        .in_flight = up->inflight,
    };
}

/* ---- creation and teardown ---- */

static size_t copy_statuses(int *dst, const int *src, size_t n)
{
    if (!src) {
        memcpy(dst, default_statuses, sizeof(default_statuses));
        return LOOM_ARRAY_SIZE(default_statuses);
    }
    memcpy(dst, src, n * sizeof(*src));
    return n;
}

static void setup_metrics(struct loom_http_upstream *up,
                          const struct loom_http_upstream_config *cfg)
{
    struct loom_metrics *reg = cfg->metrics ? cfg->metrics : loom_metrics_global();
    static const char *const labels[] = { "upstream", "address" };
    char name[160];
    struct loom_counter_family *fam[4];
    static const char *const what[4][2] = {
        { "requests", "Attempts sent to an upstream address, retries included." },
        { "retries", "Attempts sent to an upstream address that were retries." },
        { "failures", "Attempts that failed: connect errors, resets, timeouts, malformed "
                      "responses and failure statuses." },
        { "ejections", "Times the circuit breaker took an upstream address out of rotation." },
    };
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof(name), "loom_%s_upstream_%s_total", cfg->metrics_owner, what[i][0]);
        fam[i] = loom_metrics_counter_family(reg, cfg->metrics_owner, name, what[i][1], labels, 2);
    }
    for (size_t i = 0; i < up->naddrs; i++) {
        struct addr *a = &up->addrs[i];
        const char *values[] = { up->name, a->name };
        a->m_requests = loom_counter_get(fam[0], values);
        a->m_retries = loom_counter_get(fam[1], values);
        a->m_failures = loom_counter_get(fam[2], values);
        a->m_ejections = loom_counter_get(fam[3], values);
    }
}

static void upstream_free_mem(struct loom_http_upstream *up)
{
    for (size_t i = 0; i < up->naddrs; i++) {
        free(up->addrs[i].name);
        free(up->addrs[i].host_line);
    }
    free(up->addrs);
    free(up->scratch);
    free(up->iov);
    free(up->rbuf);
    free(up->name);
    free(up);
}

struct loom_http_upstream *loom_http_upstream_new(struct loom_loop *loop,
                                                  const struct loom_http_upstream_config *cfg,
                                                  struct loom_error *err)
{
    if (!cfg->naddresses || !cfg->addresses) {
        loom_error_set(err, LOOM_EINVAL, "an upstream needs at least one address");
        return NULL;
    }
    if ((cfg->retry_statuses && cfg->nretry_statuses > MAX_STATUSES) ||
        (cfg->failure_statuses && cfg->nfailure_statuses > MAX_STATUSES)) {
        loom_error_set(err, LOOM_EINVAL, "at most %d retry or failure statuses", MAX_STATUSES);
        return NULL;
    }
    struct loom_http_upstream *up = loom_new(struct loom_http_upstream);
    up->loop = loop;
    up->cfg = *cfg;
    up->name = loom_strdup(cfg->name ? cfg->name : "upstream");
    struct loom_http_upstream_config *c = &up->cfg;
    c->name = up->name;
    c->addresses = NULL;
    c->host = NULL;
    c->retry_statuses = c->failure_statuses = NULL;
    c->metrics_owner = NULL;
    c->metrics = NULL;
#define DEFAULT(field, value) \
    if (!c->field)            \
        c->field = (value);
    DEFAULT(max_idle_per_address, 64)
    DEFAULT(idle_timeout, 30 * LOOM_NS_PER_SEC)
    DEFAULT(connect_timeout, LOOM_NS_PER_SEC)
    DEFAULT(timeout, 30 * LOOM_NS_PER_SEC)
    DEFAULT(max_header_bytes, 64 * 1024)
    DEFAULT(max_headers, 100)
    DEFAULT(max_body_bytes, (size_t)64 << 20)
    c->max_body_bytes = LOOM_MIN(c->max_body_bytes, SIZE_MAX / 4);
    DEFAULT(max_attempts, 3)
    DEFAULT(backoff_base, 10 * LOOM_NS_PER_MS)
    DEFAULT(backoff_max, 250 * LOOM_NS_PER_MS)
    DEFAULT(retry_budget_window, 10 * LOOM_NS_PER_SEC)
    DEFAULT(breaker_threshold, 5)
    DEFAULT(ejection_time, LOOM_NS_PER_SEC)
    DEFAULT(max_ejection_time, 30 * LOOM_NS_PER_SEC)
#undef DEFAULT
    c->max_ejection_time = LOOM_MAX(c->max_ejection_time, c->ejection_time);
    c->backoff_max = LOOM_MAX(c->backoff_max, c->backoff_base);
    up->nretry = copy_statuses(up->retry_statuses, cfg->retry_statuses, cfg->nretry_statuses);
    up->nfailure =
        copy_statuses(up->failure_statuses, cfg->failure_statuses, cfg->nfailure_statuses);
    up->budget_ratio = cfg->retry_budget_ratio == 0  ? 0.2
                       : cfg->retry_budget_ratio < 0 ? 0
                                                     : cfg->retry_budget_ratio;
    double per_sec = cfg->retry_budget_min_per_sec == 0  ? 3
                     : cfg->retry_budget_min_per_sec < 0 ? 0
                                                         : cfg->retry_budget_min_per_sec;
    up->budget_reserve = per_sec * (double)c->retry_budget_window / (double)LOOM_NS_PER_SEC;
    up->budget.bucket_ns = LOOM_MAX(c->retry_budget_window / BUDGET_BUCKETS, 1);
    up->budget.cur = loom_loop_now(loop) / up->budget.bucket_ns;

    up->naddrs = cfg->naddresses;
    up->addrs = loom_calloc(up->naddrs, sizeof(*up->addrs));
    up->scratch = loom_calloc(up->naddrs, sizeof(*up->scratch));
    for (size_t i = 0; i < up->naddrs; i++) {
        struct addr *a = &up->addrs[i];
        a->up = up;
        a->index = i;
        a->name = loom_strdup(cfg->addresses[i] ? cfg->addresses[i] : "");
        a->state = LOOM_HTTP_ADDR_HEALTHY;
        if (loom_net_resolve(a->name, false, &a->sa, err)) {
            loom_error_prefix(err, "upstream \"%s\"", up->name);
            up->naddrs = i + 1;
            upstream_free_mem(up);
            return NULL;
        }
        /* A unix socket has no host name to give: "localhost", as curl sends. */
        const char *host = cfg->host                       ? cfg->host
                           : a->sa.ss.ss_family == AF_UNIX ? "localhost"
                                                           : a->name;
        struct loom_str hs = loom_str_cstr(host);
        if (!loom__http_field_value(hs) || hs.len == 0) {
            loom_error_set(err, LOOM_EINVAL, "upstream \"%s\": bad host \"%s\"", up->name, host);
            up->naddrs = i + 1;
            upstream_free_mem(up);
            return NULL;
        }
        a->host_line_len = hs.len + 8;
        a->host_line = loom_malloc(a->host_line_len + 1);
        snprintf(a->host_line, a->host_line_len + 1, "Host: %s\r\n", host);
    }
    up->rbuf = loom_malloc(READ_BUF_SIZE);
    up->depth = LOOM_MAX(c->pipeline_depth, 1u);
    up->niov = LOOM_MIN((size_t)IOV_MAX, 4 * (size_t)up->depth); /* 4 per request */
    up->iov = loom_calloc(up->niov, sizeof(*up->iov));
    if (up->depth > 1) {
        up->flusher = loom_new(struct flusher);
        up->flusher->up = up;
    }
    loom_timer_init(&up->sweep, loop, on_sweep);
    if (cfg->metrics_owner)
        setup_metrics(up, cfg);
    return up;
}

void loom_http_upstream_free(struct loom_http_upstream *up)
{
    if (!up)
        return;
    up->closing = true;
    while (up->calls) {
        struct loom_http_call *call = up->calls;
        if (!loom_http_call_cancel((struct loom_http_call_ref){ call, call->gen })) {
            /* Only a call whose callback is running can refuse, and freeing from inside a
             * callback is not allowed: unlink it rather than loop forever. */
            call_release(call);
        }
    }
    /* Placeholders of cancelled calls hold the last busy connections. */
    while (up->discarded)
        conn_close(up->discarded->conn);
    for (size_t i = 0; i < up->naddrs; i++)
        close_idle(&up->addrs[i]);
    loom_timer_stop(&up->sweep);
    if (up->flush_pending)
        up->flusher->up = NULL; /* on_flush frees it when the loop runs it */
    else
        free(up->flusher);
    while (up->free_calls) {
        struct loom_http_call *call = up->free_calls;
        up->free_calls = call->next;
        call_free_mem(call);
    }
    upstream_free_mem(up);
}

/* ---- loom_http_fetch ---- */

struct fetch {
    bool done;
    loom_err err;
    struct loom_error *error;
    struct loom_http_fetch_result *out;
};

static void fetch_done(struct loom_http_response *resp, void *arg)
{
    struct fetch *f = arg;
    f->done = true;
    f->err = resp->err;
    if (resp->err) {
        loom_error_set(f->error, resp->err, "%s", resp->error);
        return;
    }
    /* One block: the header array, then every name and value. */
    size_t bytes = resp->nheaders * sizeof(struct loom_http_header);
    for (size_t i = 0; i < resp->nheaders; i++)
        bytes += resp->headers[i].name.len + resp->headers[i].value.len + 2;
    char *mem = loom_malloc(bytes ? bytes : 1);
    struct loom_http_header *hs = (struct loom_http_header *)(void *)mem;
    char *p = mem + resp->nheaders * sizeof(*hs);
    for (size_t i = 0; i < resp->nheaders; i++) {
        const struct loom_http_header *h = &resp->headers[i];
        memcpy(p, h->name.ptr, h->name.len);
        p[h->name.len] = '\0';
        hs[i].name = loom_str_make(p, h->name.len);
        p += h->name.len + 1;
        if (h->value.len)
            memcpy(p, h->value.ptr, h->value.len);
        p[h->value.len] = '\0';
        hs[i].value = loom_str_make(p, h->value.len);
        p += h->value.len + 1;
    }
    struct loom_buf body = { 0 };
    loom_http_response_take_body(resp, &body);
    size_t len;
    char *data = loom_buf_detach(&body, &len);
    *f->out = (struct loom_http_fetch_result){
        .status = resp->status,
        .headers = resp->nheaders ? hs : NULL,
        .nheaders = resp->nheaders,
        .body = data,
        .body_len = len,
        .mem = mem,
    };
}

/* Split "http://authority/rest" into "HOST:PORT" and the target. */
static loom_err parse_url(const char *url, char *hostport, size_t cap, struct loom_buf *target,
                          struct loom_error *err)
{
    struct loom_str u = loom_str_cstr(url);
    if (u.len >= 8 && strncasecmp(url, "https://", 8) == 0)
        return loom_error_set(err, LOOM_EUNSUPPORTED,
                              "%s: https:// is not supported (loom's HTTP client has no TLS); "
                              "use http://",
                              url);
    if (u.len < 7 || strncasecmp(url, "http://", 7) != 0)
        return loom_error_set(err, LOOM_EINVAL, "%s: the URL must start with http://", url);
    struct loom_str rest = loom_str_make(u.ptr + 7, u.len - 7);
    size_t alen = 0;
    while (alen < rest.len && rest.ptr[alen] != '/' && rest.ptr[alen] != '?' &&
           rest.ptr[alen] != '#')
        alen++;
    struct loom_str auth = loom_str_make(rest.ptr, alen);
    struct loom_str path = loom_str_make(rest.ptr + alen, rest.len - alen);
    ptrdiff_t hash = loom_str_index(path, '#');
    if (hash >= 0)
        path.len = (size_t)hash;
    if (auth.len == 0)
        return loom_error_set(err, LOOM_EINVAL, "%s: no host in the URL", url);
    if (loom_str_index(auth, '@') >= 0)
        return loom_error_set(err, LOOM_EINVAL, "%s: credentials in URLs are not supported", url);
    /* A port is present if the last ':' comes after any IPv6 bracket. */
    const char *colon = memrchr(auth.ptr, ':', auth.len);
    const char *bracket = memrchr(auth.ptr, ']', auth.len);
    bool has_port = colon && (!bracket || colon > bracket);
    int n = snprintf(hostport, cap, "%.*s%s", LOOM_STR_FMT(auth), has_port ? "" : ":80");
    if (n < 0 || (size_t)n >= cap)
        return loom_error_set(err, LOOM_EINVAL, "%s: host too long", url);
    loom_buf_reset(target);
    if (path.len == 0 || path.ptr[0] == '?')
        loom_buf_putc(target, '/');
    loom_buf_append_str(target, path);
    return LOOM_OK;
}

loom_err loom_http_fetch(const char *url, enum loom_http_method method,
                         const struct loom_http_header *headers, size_t nheaders,
                         struct loom_str body, uint64_t timeout_ns, size_t max_body,
                         struct loom_http_fetch_result *out, struct loom_error *err)
{
    char hostport[300];
    struct loom_buf target;
    loom_buf_init(&target, 16 * 1024);
    loom_err e = parse_url(url, hostport, sizeof(hostport), &target, err);
    if (e)
        goto out_target;
    struct loom_loop *loop = loom_loop_new();
    const char *addrs[] = { hostport };
    struct loom_http_upstream_config cfg = {
        .name = "fetch",
        .addresses = addrs,
        .naddresses = 1,
        .breaker_threshold = LOOM_HTTP_BREAKER_OFF,
        .retry_budget_off = true,
        .max_body_bytes = max_body,
    };
    struct loom_http_upstream *up = loom_http_upstream_new(loop, &cfg, err);
    if (!up) {
        e = err ? err->code : LOOM_EINVAL;
        goto out_loop;
    }
    struct fetch f = { .error = err, .out = out };
    struct loom_http_request req = {
        .method = method,
        .target = loom_buf_str(&target),
        .headers = headers,
        .nheaders = nheaders,
        .body = body,
        .timeout = timeout_ns,
        .max_body = max_body,
    };
    e = loom_http_upstream_request(up, &req, fetch_done, &f, NULL, err);
    if (e)
        goto out_upstream;
    while (!f.done)
        loom_loop_run_once(loop, 100 * LOOM_NS_PER_MS);
    e = f.err;
out_upstream:
    loom_http_upstream_free(up);
out_loop:
    loom_loop_free(loop);
out_target:
    loom_buf_release(&target);
    return e;
}

void loom_http_fetch_result_release(struct loom_http_fetch_result *r)
{
    if (!r)
        return;
    free(r->body);
    free(r->mem);
    memset(r, 0, sizeof(*r));
}
