/* SPDX-License-Identifier: Apache-2.0 */
/*
 * loadgen: a small open-loop HTTP/1.1 load generator for the benchmarks (wrk is closed-loop and
 * cannot hold a rate). Request k is scheduled at t0 + k/RATE whatever happened before; at that
 * time it goes out on an idle keep-alive connection of the N open ones, or waits, in order, for
 * the next connection to become idle (one request in flight per connection, no pipelining).
 * Each latency is measured from the request's *scheduled* time, not from when it was written,
 * so a stalled server is charged for every request it delayed (no coordinated omission).
 * Requests still unanswered when the run stops (2 s after the last one is due) enter the sample
 * with the time to the stop, a lower bound. Percentiles come from the exact sorted sample. A
 * warm-up at the same rate (default 1 s) precedes the measured window and is not counted. One
 * thread, epoll, non-blocking sockets, a timerfd for the schedule; self-contained (no libloom).
 *
 * Usage: loadgen [-c CONNS] [-d SECONDS] [-w WARMUP] [-b BODYFILE] [-T CONTENT-TYPE] -r RATE URL
 *   URL is http://IPv4:PORT/PATH; with -b the request is a POST of the file's bytes, else a GET.
 * Prints a summary and one `RESULT key=value ...` line for scripts (latencies in us), with the
 * time the generator itself waited for its cpu (schedstat), which inflates latencies. Exit
 * status 0 when the run completed (errors and non-2xx answers are counted, not fatal), 2 on bad
 * usage or if no connection could be made.
 * Build: cc -O2 -Wall -Wextra -o loadgen bench/loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define NS         1000000000ull
#define DRAIN_NS   (2 * NS)    /* time left to the requests in flight after the last is due */
#define RETRY_NS   10000000ull /* delay before reconnecting after a failure */
#define MAX_HEAD   65536       /* largest response head */
#define MAX_BUF    (16u << 20) /* largest response */
#define MAX_EVENTS 256

enum conn_state { DOWN, CONNECTING, IDLE, BUSY };

struct conn {
    int fd;
    enum conn_state state;
    uint64_t req;      /* BUSY: index of the request in flight */
    size_t woff;       /* BUSY: bytes of it written so far */
    bool want_out;     /* EPOLLOUT is registered */
    uint64_t retry_at; /* DOWN: when to reconnect */
    char *buf;         /* the response read so far */
    size_t len, cap;
};

enum outcome { PENDING, ANSWERED, FAILED };

struct gen {
    struct sockaddr_in addr;
    const char *request;
    size_t request_len;
    int epfd, tfd;
    struct conn *conns;
    int nconns;
    int *idle; /* stack of the indexes of idle connections */
    int nidle;

    double rate;
    uint64_t t0;      /* when request 0 is due */
    uint64_t nwarm;   /* requests of the warm-up, not counted */
    uint64_t nmeas;   /* requests of the measured window */
    uint8_t *outcome; /* per measured request: enum outcome */
    uint64_t *lat;    /* per measured request: latency from its scheduled time, ns */
    uint64_t *lag;    /* per measured request written: how late it was written, ns */
    uint64_t nlag;
    uint64_t answered, ok, non2xx, errors, conn_failures, last_answer;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static uint64_t due_at(const struct gen *g, uint64_t k)
{
    return g->t0 + (uint64_t)((double)k * 1e9 / g->rate);
}

static void die(const char *msg)
{
    fprintf(stderr, "loadgen: %s\n", msg);
    exit(2);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p)
        die("out of memory");
    return p;
}

static void ep(struct gen *g, int op, struct conn *c, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.ptr = c };
    if (epoll_ctl(g->epfd, op, c->fd, &ev) != 0 && op != EPOLL_CTL_DEL)
        die("epoll_ctl failed");
}

/* Records the outcome of request k at time t: an HTTP status, or -1 if it failed. */
static void record(struct gen *g, uint64_t k, uint64_t t, int status)
{
    if (k < g->nwarm)
        return;
    uint64_t i = k - g->nwarm;
    if (g->outcome[i] != PENDING)
        return;
    if (status < 0) {
        g->outcome[i] = FAILED;
        g->errors++;
        return;
    }
    g->outcome[i] = ANSWERED;
    uint64_t due = due_at(g, k);
    g->lat[i] = t > due ? t - due : 0;
    g->answered++;
    g->last_answer = t;
    if (status >= 200 && status < 300)
        g->ok++;
    else
        g->non2xx++;
}

static void conn_open(struct gen *g, struct conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die("socket failed");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->len = 0;
    c->woff = 0;
    if (connect(c->fd, (const struct sockaddr *)&g->addr, sizeof(g->addr)) == 0) {
        c->state = IDLE;
        c->want_out = false;
        ep(g, EPOLL_CTL_ADD, c, EPOLLIN);
        g->idle[g->nidle++] = (int)(c - g->conns);
    } else if (errno == EINPROGRESS) {
        c->state = CONNECTING;
        c->want_out = true;
        ep(g, EPOLL_CTL_ADD, c, EPOLLIN | EPOLLOUT);
    } else {
        close(c->fd);
        c->fd = -1;
        c->state = DOWN;
        c->retry_at = now_ns() + RETRY_NS;
        g->conn_failures++;
    }
}

/* Closes c, failing the request in flight; reconnects after RETRY_NS after a failure, at once
 * when the server merely closed a keep-alive connection between requests. */
static void conn_reset(struct gen *g, struct conn *c, bool failed)
{
    if (c->state == BUSY)
        record(g, c->req, now_ns(), -1);
    if (c->state == IDLE) {
        for (int i = 0; i < g->nidle; i++) {
            if (g->idle[i] == c - g->conns) {
                g->idle[i] = g->idle[--g->nidle];
                break;
            }
        }
    }
    if (c->fd >= 0) {
        ep(g, EPOLL_CTL_DEL, c, 0);
        close(c->fd);
    }
    c->fd = -1;
    c->state = DOWN;
    c->retry_at = failed ? now_ns() + RETRY_NS : 0;
    if (failed)
        g->conn_failures++;
}

static void want_out(struct gen *g, struct conn *c, bool want)
{
    if (c->want_out == want)
        return;
    c->want_out = want;
    ep(g, EPOLL_CTL_MOD, c, EPOLLIN | (want ? EPOLLOUT : 0));
}

static void conn_write(struct gen *g, struct conn *c)
{
    while (c->woff < g->request_len) {
        ssize_t n = send(c->fd, g->request + c->woff, g->request_len - c->woff, MSG_NOSIGNAL);
        if (n > 0) {
            c->woff += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            want_out(g, c, true);
            return;
        } else {
            conn_reset(g, c, true);
            return;
        }
    }
    want_out(g, c, false);
}

static void send_request(struct gen *g, uint64_t k)
{
    struct conn *c = &g->conns[g->idle[--g->nidle]];
    c->state = BUSY;
    c->req = k;
    c->woff = 0;
    c->len = 0;
    if (k >= g->nwarm) {
        uint64_t t = now_ns(), due = due_at(g, k);
        g->lag[g->nlag++] = t > due ? t - due : 0;
    }
    conn_write(g, c);
}

/* Length of the chunked body at p (n bytes so far): 0 if incomplete, -1 if malformed. */
static long chunked_len(const char *p, size_t n)
{
    size_t off = 0;
    for (;;) {
        const char *eol = memmem(p + off, n - off, "\r\n", 2);
        if (!eol)
            return 0;
        char *end;
        unsigned long size = strtoul(p + off, &end, 16);
        if (end == p + off)
            return -1;
        off = (size_t)(eol - p) + 2;
        if (size == 0) {
            for (;;) { /* trailers, then an empty line */
                const char *e = memmem(p + off, n - off, "\r\n", 2);
                if (!e)
                    return 0;
                size_t line = (size_t)(e - (p + off));
                off += line + 2;
                if (line == 0)
                    return (long)off;
            }
        }
        if (n - off < size + 2)
            return 0;
        off += size + 2;
    }
}

/* True if the header line at l (up to its \r) contains word. */
static bool header_has(const char *l, const char *eoh, const char *word)
{
    const char *e = memchr(l, '\r', (size_t)(eoh - l) + 1);
    return e && memmem(l, (size_t)(e - l), word, strlen(word)) != NULL;
}

/* Parses the response at the start of c->buf: 1 if complete (its status, length and whether the
 * connection closes after it), 0 if more bytes are needed, -1 if malformed. Without a length or
 * chunked framing the body ends with the connection (eof). */
static int parse(const struct conn *c, bool eof, int *status, size_t *used, bool *close_after)
{
    const char *b = c->buf;
    const char *eoh = memmem(b, c->len, "\r\n\r\n", 4);
    if (!eoh)
        return c->len > MAX_HEAD ? -1 : 0;
    size_t head = (size_t)(eoh - b) + 4;
    if (head < 16 || memcmp(b, "HTTP/1.", 7) != 0 || b[8] != ' ')
        return -1;
    *status = (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');
    *close_after = b[7] == '0';
    long clen = -1;
    bool chunked = false;
    /* each header line starts after a \n; the \r\n\r\n at eoh ends the walk */
    for (const char *l = (const char *)memchr(b, '\n', head) + 1; l < eoh;
         l = (const char *)memchr(l, '\n', (size_t)(eoh - l) + 2) + 1) {
        if (strncasecmp(l, "content-length:", 15) == 0)
            clen = strtol(l + 15, NULL, 10);
        else if (strncasecmp(l, "transfer-encoding:", 18) == 0)
            chunked = header_has(l, eoh, "chunked");
        else if (strncasecmp(l, "connection:", 11) == 0 && header_has(l, eoh, "close"))
            *close_after = true;
        else if (strncasecmp(l, "connection:", 11) == 0 && header_has(l, eoh, "keep-alive"))
            *close_after = false;
    }
    size_t body;
    if (*status / 100 == 1 || *status == 204 || *status == 304) {
        body = 0;
    } else if (chunked) {
        long n = chunked_len(b + head, c->len - head);
        if (n <= 0)
            return (int)n;
        body = (size_t)n;
    } else if (clen >= 0) {
        body = (size_t)clen;
    } else if (eof) {
        body = c->len - head; /* delimited by the end of the connection */
    } else {
        return 0;
    }
    if (c->len < head + body)
        return 0;
    *used = head + body;
    return 1;
}

static void conn_read(struct gen *g, struct conn *c)
{
    bool eof = false;
    for (;;) {
        if (c->cap - c->len < 4096) {
            size_t cap = c->cap ? c->cap * 2 : 16384;
            if (cap > MAX_BUF) {
                conn_reset(g, c, true);
                return;
            }
            c->buf = realloc(c->buf, cap);
            if (!c->buf)
                die("out of memory");
            c->cap = cap;
        }
        ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (n > 0) {
            c->len += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        eof = !(n < 0 && errno == EAGAIN); /* the end of the connection, or an error */
        break;
    }
    if (c->state != BUSY) {
        /* the server closed a connection between requests (fine), or sent bytes unasked */
        if (eof || c->len > 0)
            conn_reset(g, c, c->len > 0);
        return;
    }
    int status = 0, r;
    size_t used = 0;
    bool close_after = false;
    while ((r = parse(c, eof, &status, &used, &close_after)) == 1 && status / 100 == 1) {
        memmove(c->buf, c->buf + used, c->len - used); /* an interim response: skip it */
        c->len -= used;
    }
    if (r <= 0) {
        if (r < 0 || eof)
            conn_reset(g, c, true);
        return;
    }
    record(g, c->req, now_ns(), status);
    c->state = IDLE;
    if (eof || close_after || used != c->len) {
        conn_reset(g, c, used != c->len);
        return;
    }
    c->len = 0;
    g->idle[g->nidle++] = (int)(c - g->conns);
}

static void conn_event(struct gen *g, struct conn *c, uint32_t ev)
{
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0 || (ev & (EPOLLERR | EPOLLHUP))) {
            conn_reset(g, c, true);
            return;
        }
        c->state = IDLE;
        want_out(g, c, false);
        g->idle[g->nidle++] = (int)(c - g->conns);
        return;
    }
    if ((ev & EPOLLOUT) && c->state == BUSY && c->woff < g->request_len)
        conn_write(g, c);
    if (c->state != DOWN && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        conn_read(g, c);
}

/* Waits up to timeout_ms for events and handles them (the timerfd just wakes the loop). */
static void poll_events(struct gen *g, int timeout_ms)
{
    struct epoll_event evs[MAX_EVENTS];
    int n = epoll_wait(g->epfd, evs, MAX_EVENTS, timeout_ms);
    for (int i = 0; i < n; i++) {
        if (evs[i].data.ptr) {
            conn_event(g, evs[i].data.ptr, evs[i].events);
        } else {
            uint64_t expirations;
            if (read(g->tfd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
                die("timerfd read failed");
        }
    }
}

static bool any_busy(const struct gen *g)
{
    for (int i = 0; i < g->nconns; i++)
        if (g->conns[i].state == BUSY)
            return true;
    return false;
}

/* Sends the requests on their schedule until all are answered or the stop time; returns it. */
static uint64_t run(struct gen *g)
{
    uint64_t total = g->nwarm + g->nmeas, next = 0, armed = 0;
    uint64_t stop = due_at(g, total) + DRAIN_NS;
    for (;;) {
        uint64_t t = now_ns();
        uint64_t due = t < g->t0 ? 0 : (uint64_t)((double)(t - g->t0) * g->rate / 1e9) + 1;
        if (due > total)
            due = total;
        while (next < due && g->nidle > 0)
            send_request(g, next++);
        if (t >= stop || (next == total && !any_busy(g)))
            return t;
        /* wake by the stop time at the latest, every 10 ms while a connection is down */
        int timeout = (int)((stop - t) / 1000000) + 1;
        for (int i = 0; i < g->nconns; i++) {
            struct conn *c = &g->conns[i];
            if (c->state == DOWN && t >= c->retry_at)
                conn_open(g, c);
            else if (c->state == DOWN && timeout > 10)
                timeout = 10;
        }
        /* the timer wakes the loop when the next request is due (if it need not wait for a
         * connection anyway); PR_SET_TIMERSLACK keeps it close to the time */
        if (next < total && next >= due && due_at(g, next) != armed) {
            armed = due_at(g, next);
            struct itimerspec its = { .it_value = { .tv_sec = (time_t)(armed / NS),
                                                    .tv_nsec = (long)(armed % NS) } };
            timerfd_settime(g->tfd, TFD_TIMER_ABSTIME, &its, NULL);
        }
        poll_events(g, timeout);
    }
}

/* Time this thread has waited, runnable, for a cpu (ns; /proc/thread-self/schedstat), or 0. */
static uint64_t cpu_wait_ns(void)
{
    unsigned long long run = 0, wait = 0;
    FILE *f = fopen("/proc/thread-self/schedstat", "r");
    if (!f)
        return 0;
    if (fscanf(f, "%llu %llu", &run, &wait) != 2)
        wait = 0;
    fclose(f);
    return wait;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Percentile p of the sorted sample v[n], in microseconds. */
static double pct(const uint64_t *v, uint64_t n, double p)
{
    if (n == 0)
        return 0;
    uint64_t i = (uint64_t)(p / 100.0 * (double)n);
    return (double)v[i < n ? i : n - 1] / 1e3;
}

static void usage(void)
{
    fprintf(stderr, "usage: loadgen [-c CONNS] [-d SECONDS] [-w WARMUP] [-b BODYFILE] "
                    "[-T CONTENT-TYPE] -r RATE http://IPv4:PORT/PATH\n");
    exit(2);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        die("cannot open the body file");
    char *data = NULL;
    size_t cap = 0;
    *len = 0;
    for (;;) {
        if (cap - *len < 4096) {
            cap = cap ? cap * 2 : 65536;
            data = realloc(data, cap);
            if (!data)
                die("out of memory");
        }
        size_t n = fread(data + *len, 1, cap - *len, f);
        *len += n;
        if (n == 0)
            break;
    }
    if (ferror(f))
        die("cannot read the body file");
    fclose(f);
    return data;
}

/* Builds the request for url (http://IPv4:PORT/PATH) and fills g->addr. */
static void make_request(struct gen *g, const char *url, const char *bodyfile, const char *ctype)
{
    if (strncmp(url, "http://", 7) != 0)
        usage();
    const char *hp = url + 7, *slash = strchr(hp, '/'), *colon = strchr(hp, ':');
    if (!colon || (slash && colon > slash))
        usage();
    int hostportlen = (int)(slash ? (size_t)(slash - hp) : strlen(hp));
    char host[64];
    size_t hostlen = (size_t)(colon - hp);
    if (hostlen >= sizeof(host))
        usage();
    memcpy(host, hp, hostlen);
    host[hostlen] = 0;
    g->addr.sin_family = AF_INET;
    g->addr.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &g->addr.sin_addr) != 1)
        die("the host must be an IPv4 address");
    const char *path = slash ? slash : "/";

    size_t body_len = 0;
    char *body = bodyfile ? read_file(bodyfile, &body_len) : NULL;
    size_t cap = strlen(path) + (size_t)hostportlen + strlen(ctype) + body_len + 128;
    char *req = xcalloc(cap, 1);
    int n = bodyfile ? snprintf(req, cap,
                                "POST %s HTTP/1.1\r\nHost: %.*s\r\nContent-Type: %s\r\n"
                                "Content-Length: %zu\r\n\r\n",
                                path, hostportlen, hp, ctype, body_len)
                     : snprintf(req, cap, "GET %s HTTP/1.1\r\nHost: %.*s\r\n\r\n", path,
                                hostportlen, hp);
    if (n < 0 || (size_t)n + body_len >= cap)
        die("request too large");
    if (body_len)
        memcpy(req + n, body, body_len);
    free(body);
    g->request = req;
    g->request_len = (size_t)n + body_len;
}

int main(int argc, char **argv)
{
    struct gen gen = { .nconns = 50 }, *g = &gen;
    double dur = 10, warm = 1;
    const char *bodyfile = NULL, *ctype = "application/json";
    int opt;
    while ((opt = getopt(argc, argv, "c:d:w:b:T:r:")) != -1) {
        switch (opt) {
        case 'c':
            g->nconns = atoi(optarg);
            break;
        case 'd':
            dur = atof(optarg);
            break;
        case 'w':
            warm = atof(optarg);
            break;
        case 'b':
            bodyfile = optarg;
            break;
        case 'T':
            ctype = optarg;
            break;
        case 'r':
            g->rate = atof(optarg);
            break;
        default:
            usage();
        }
    }
    if (optind != argc - 1 || g->nconns < 1 || dur <= 0 || warm < 0 || g->rate <= 0)
        usage();
    const char *url = argv[optind];
    make_request(g, url, bodyfile, ctype);

    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    g->nwarm = (uint64_t)(warm * g->rate);
    g->nmeas = (uint64_t)(dur * g->rate);
    g->outcome = xcalloc(g->nmeas, 1);
    g->lat = xcalloc(g->nmeas, sizeof(*g->lat));
    g->lag = xcalloc(g->nmeas, sizeof(*g->lag));
    g->conns = xcalloc((size_t)g->nconns, sizeof(*g->conns));
    g->idle = xcalloc((size_t)g->nconns, sizeof(*g->idle));
    g->epfd = epoll_create1(EPOLL_CLOEXEC);
    g->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (g->epfd < 0 || g->tfd < 0)
        die("epoll or timerfd failed");
    struct epoll_event tev = { .events = EPOLLIN, .data.ptr = NULL };
    if (epoll_ctl(g->epfd, EPOLL_CTL_ADD, g->tfd, &tev) != 0)
        die("epoll_ctl failed");

    /* connect everything before the clock starts (up to 2 s) */
    for (int i = 0; i < g->nconns; i++)
        conn_open(g, &g->conns[i]);
    for (uint64_t deadline = now_ns() + 2 * NS; g->nidle < g->nconns && now_ns() < deadline;) {
        poll_events(g, 10);
        for (int i = 0; i < g->nconns; i++)
            if (g->conns[i].state == DOWN && now_ns() >= g->conns[i].retry_at)
                conn_open(g, &g->conns[i]);
    }
    if (g->nidle == 0)
        die("could not connect");
    int connected = g->nidle;

    g->t0 = now_ns() + 1000000;
    uint64_t measure_start = due_at(g, g->nwarm);
    uint64_t wait0 = cpu_wait_ns();
    uint64_t end = run(g);
    double cpu_wait_ms = (double)(cpu_wait_ns() - wait0) / 1e6;

    /* the sample: answered requests, and unanswered ones at the time to the stop */
    uint64_t m = 0, unfinished = 0;
    for (uint64_t i = 0; i < g->nmeas; i++) {
        if (g->outcome[i] == PENDING) {
            uint64_t due = due_at(g, g->nwarm + i);
            g->lat[i] = end > due ? end - due : 0;
            unfinished++;
        }
        if (g->outcome[i] != FAILED)
            g->lat[m++] = g->lat[i];
    }
    qsort(g->lat, m, sizeof(*g->lat), cmp_u64);
    qsort(g->lag, g->nlag, sizeof(*g->lag), cmp_u64);
    double window = g->last_answer > measure_start ? (g->last_answer - measure_start) / 1e9 : 0;
    double achieved = (double)g->answered / (window > dur ? window : dur);

    printf("loadgen: %s, %d connections (%d connected), %.0f req/s for %.1f s after %.1f s of "
           "warm-up\n",
           url, g->nconns, connected, g->rate, dur, warm);
    printf("  achieved %.0f req/s: %llu answered (%llu 2xx, %llu non-2xx), %llu failed, "
           "%llu unfinished, %llu connection failures\n",
           achieved, (unsigned long long)g->answered, (unsigned long long)g->ok,
           (unsigned long long)g->non2xx, (unsigned long long)g->errors,
           (unsigned long long)unfinished, (unsigned long long)g->conn_failures);
    printf("  latency from the scheduled time: p50 %.0f us, p90 %.0f us, p99 %.0f us, "
           "p99.9 %.0f us, max %.0f us\n",
           pct(g->lat, m, 50), pct(g->lat, m, 90), pct(g->lat, m, 99), pct(g->lat, m, 99.9),
           pct(g->lat, m, 100));
    printf("  send lag (written after the scheduled time): p50 %.0f us, p99 %.0f us, "
           "max %.0f us\n",
           pct(g->lag, g->nlag, 50), pct(g->lag, g->nlag, 99), pct(g->lag, g->nlag, 100));
    printf("  the generator waited %.1f ms for its cpu (other processes ran on it)\n", cpu_wait_ms);
    printf("RESULT target=%.0f achieved=%.0f answered=%llu ok=%llu non2xx=%llu errors=%llu "
           "unfinished=%llu p50=%.0f p90=%.0f p99=%.0f p999=%.0f max=%.0f lag_p99=%.0f "
           "cpu_wait_ms=%.1f\n",
           g->rate, achieved, (unsigned long long)g->answered, (unsigned long long)g->ok,
           (unsigned long long)g->non2xx, (unsigned long long)g->errors,
           (unsigned long long)unfinished, pct(g->lat, m, 50), pct(g->lat, m, 90),
           pct(g->lat, m, 99), pct(g->lat, m, 99.9), pct(g->lat, m, 100), pct(g->lag, g->nlag, 99),
           cpu_wait_ms);

    for (int i = 0; i < g->nconns; i++) {
        if (g->conns[i].fd >= 0)
            close(g->conns[i].fd);
        free(g->conns[i].buf);
    }
    close(g->tfd);
    close(g->epfd);
    free(g->conns);
    free(g->idle);
    free(g->lag);
    free(g->lat);
    free(g->outcome);
    free((char *)g->request);
    return 0;
}
