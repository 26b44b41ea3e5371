/* SPDX-License-Identifier: Apache-2.0 */
/*
 * `loom ingest STREAM FILE`: send a file of records to the ingest service, streaming it from
 * disk with a progress line. The file is a JSON array or NDJSON, gzip-compressed or not (found
 * by looking at its first bytes). It is read through the ingest service's own inflater and
 * record splitter (services/ingest/reader.c) and sent as NDJSON requests of at most
 * --batch-bytes, so a file of any size fits the service's limits and its publish window, and
 * rejected records are reported by their index in the file. Each request asks for
 * 100-continue, so a refusal (unknown stream, busy service) comes before the body is sent; a
 * 503 is retried after its Retry-After (resending is safe: record ids make it idempotent).
 */
#include "ingest/ingest.h"
#include "cmd.h"

#include <loom/core.h>
#include <loom/json.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

struct target {
    char host[256];
    char port[16];
    char prefix[256];
    const char *token; /* a bearer token for the gateway, or NULL */
};

struct totals {
    uint64_t records, accepted, rejected, printed;
    uint64_t base; /* index in the file of the current request's first record */
    uint64_t sent, size;
    uint64_t t0, last_progress;
    bool quiet;
};

static void usage(FILE *out, const char *cmd)
{
    fprintf(out,
            "Usage: %s STREAM FILE [--url URL] [--token T] [--batch-records N]\n"
            "       [--batch-bytes SIZE] [--retries N] [--quiet]\n\n"
            "Send the records in FILE to stream STREAM of the ingest service, with a progress\n"
            "line. FILE is a JSON array of records or NDJSON (one record per line), gzip-\n"
            "compressed or not. Records that break the stream's contract are listed with their\n"
            "position and reasons; the others are on the bus. Sending a file again is safe:\n"
            "records with ids are deduplicated.\n\n"
            "  --url URL          the ingest service (default $LOOM_INGEST_URL, else\n"
            "                     http://127.0.0.1:8084); a gateway's URL works too\n"
            "  --token T          a bearer token with the ingest scope, for the gateway\n"
            "                     (default $LOOM_TOKEN)\n"
            "  --batch-records N  records go in requests of at most N records (default 20000)\n"
            "  --batch-bytes SIZE ... and at most SIZE bytes (default 16MiB)\n"
            "  --retries N        times a busy service (503) is retried (default 10)\n"
            "  --quiet            no progress line\n\n"
            "Exit status: 0 every record accepted; 1 some rejected, or a request failed;\n"
            "2 bad usage.\n",
            cmd);
}

static bool parse_url(const char *url, struct target *t)
{
    if (strncmp(url, "http://", 7) != 0)
        return false;
    const char *p = url + 7;
    const char *slash = strchr(p, '/');
    size_t hostport = slash ? (size_t)(slash - p) : strlen(p);
    snprintf(t->prefix, sizeof(t->prefix), "%s", slash ? slash : "");
    size_t plen = strlen(t->prefix);
    if (plen && t->prefix[plen - 1] == '/')
        t->prefix[plen - 1] = '\0';
    const char *colon = memchr(p, ':', hostport);
    if (colon) {
        snprintf(t->host, sizeof(t->host), "%.*s", (int)(colon - p), p);
        snprintf(t->port, sizeof(t->port), "%.*s", (int)(hostport - (size_t)(colon - p) - 1),
                 colon + 1);
    } else {
        snprintf(t->host, sizeof(t->host), "%.*s", (int)hostport, p);
        snprintf(t->port, sizeof(t->port), "80");
    }
    return t->host[0] != '\0';
}

static int dial(const struct target *t)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res;
    if (getaddrinfo(t->host, t->port, &hints, &res) != 0)
        return -1;
    int fd = -1;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) == 0)
            break;
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

static bool send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

struct response {
    int status;
    uint64_t retry_after;
    struct loom_buf body;
};

/* Read one response (the server always sends Content-Length) from `in` and then from fd; the
 * bytes after it stay in `in` (a final answer may come in the same read as a 100 Continue). */
static bool read_response(int fd, struct loom_buf *in, struct response *r, int timeout_ms)
{
    for (;;) {
        char *e = in->len ? strstr(in->data, "\r\n\r\n") : NULL;
        if (e) {
            size_t head_end = (size_t)(e - in->data) + 4;
            if (sscanf(in->data, "HTTP/1.%*d %d", &r->status) != 1)
                return false;
            uint64_t clen = 0;
            r->retry_after = 1;
            for (char *line = strstr(in->data, "\r\n"); line && line < e;
                 line = strstr(line + 2, "\r\n")) {
                if (strncasecmp(line + 2, "content-length:", 15) == 0)
                    clen = strtoull(line + 17, NULL, 10);
                else if (strncasecmp(line + 2, "retry-after:", 12) == 0)
                    r->retry_after = strtoull(line + 14, NULL, 10);
            }
            if (r->status == 100) /* 100 Continue: the caller sends the body */
                clen = 0;
            if (in->len - head_end >= clen) {
                if (r->status != 100) {
                    loom_buf_init(&r->body, 0);
                    loom_buf_append(&r->body, in->data + head_end, (size_t)clen);
                }
                loom_buf_consume(in, head_end + (size_t)clen);
                if (in->len)
                    in->data[in->len] = '\0';
                return true;
            }
        }
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        if (poll(&pfd, 1, timeout_ms) <= 0 || loom_buf_reserve(in, 65536))
            return false;
        ssize_t got = read(fd, in->data + in->len, 65536);
        if (got <= 0)
            return false;
        in->len += (size_t)got;
        in->data[in->len] = '\0';
    }
}

/* Whether the progress line is on the terminal's last line: a message first ends it, or the
 * next "\r" would overwrite the message. */
static bool progress_shown;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    if (progress_shown)
        fputc('\n', stderr);
    progress_shown = false;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

static void progress(struct totals *t, bool force)
{
    uint64_t now = loom_now_ns();
    if (t->quiet || (!force && now - t->last_progress < 200 * LOOM_NS_PER_MS))
        return;
    t->last_progress = now;
    progress_shown = true;
    double secs = (double)(now - t->t0) / 1e9;
    fprintf(stderr, "\rloom ingest: %.1f / %.1f MiB (%.0f%%), %.1f MiB/s   ",
            (double)t->sent / 1048576.0, (double)t->size / 1048576.0,
            t->size ? 100.0 * (double)t->sent / (double)t->size : 100.0,
            secs > 0 ? (double)t->sent / 1048576.0 / secs : 0.0);
}

static uint64_t json_u64(const struct loom_json_doc *doc, const char *key)
{
    uint64_t v = 0;
    int i = loom_json_obj_get(doc, 0, key);
    if (i >= 0)
        loom_json_to_u64(doc, i, &v);
    return v;
}

/* Print what the service said about one request; false if it refused the request. */
static bool report(const struct response *r, struct totals *t)
{
    struct loom_arena a;
    loom_arena_init(&a, 0);
    struct loom_json_doc doc;
    bool ok = r->status == 200 || r->status == 207 || r->status == 422;
    if (loom_json_parse(r->body.data, r->body.len, NULL, &a, &doc, NULL) ||
        !loom_json_is_object(&doc, 0)) {
        say("loom ingest: the service answered %d: %.*s\n", r->status,
            (int)LOOM_MIN(r->body.len, 500), r->body.data ? r->body.data : "");
        loom_arena_release(&a);
        return false;
    }
    if (!ok) {
        int d = loom_json_obj_get(&doc, 0, "detail");
        struct loom_str detail = LOOM_STR_NULL;
        if (d >= 0)
            loom_json_unescape(&doc, d, &a, &detail);
        say("loom ingest: %d: %.*s\n", r->status, LOOM_STR_FMT(detail));
        t->accepted += json_u64(&doc, "accepted");
        loom_arena_release(&a);
        return false;
    }
    t->records += json_u64(&doc, "records");
    t->accepted += json_u64(&doc, "accepted");
    t->rejected += json_u64(&doc, "rejected_count");
    int rej = loom_json_obj_get(&doc, 0, "rejected");
    if (rej >= 0 && loom_json_is_array(&doc, rej)) {
        loom_json_foreach (&doc, rej, i) {
            if (t->printed++ >= 20)
                break;
            struct loom_str id = LOOM_STR_NULL;
            int idt = loom_json_obj_get(&doc, i, "id");
            if (idt >= 0)
                loom_json_unescape(&doc, idt, &a, &id);
            int64_t index = 0;
            int x = loom_json_obj_get(&doc, i, "index");
            if (x >= 0)
                loom_json_to_i64(&doc, x, &index);
            say("rejected: record %llu of the file%s%.*s\n",
                (unsigned long long)(t->base + (uint64_t)LOOM_MAX(index, 0)), id.len ? " id " : "",
                LOOM_STR_FMT(id));
            int errs = loom_json_obj_get(&doc, i, "errors");
            if (errs >= 0)
                loom_json_foreach (&doc, errs, e) {
                    struct loom_str msg;
                    if (!loom_json_unescape(&doc, e, &a, &msg))
                        say("  %.*s\n", LOOM_STR_FMT(msg));
                }
        }
    }
    loom_arena_release(&a);
    return true;
}

/* Send one request with `body` (NDJSON); retried on 503. */
static bool send_batch(const struct target *tg, const char *stream, struct loom_str body,
                       int retries, struct totals *t)
{
    for (int attempt = 0;; attempt++) {
        int fd = dial(tg);
        if (fd < 0) {
            say("loom ingest: cannot connect to %s:%s: %s; is `loom serve ingest` "
                "running? (--url)\n",
                tg->host, tg->port, strerror(errno));
            return false;
        }
        char head[1024 + 8192];
        int n = snprintf(head, sizeof(head),
                         "POST %s/api/v1/streams/%s/events HTTP/1.1\r\nHost: %s\r\n"
                         "Content-Type: application/x-ndjson\r\nContent-Length: %zu\r\n"
                         "%s%s%s"
                         "Expect: 100-continue\r\nConnection: close\r\n\r\n",
                         tg->prefix, stream, tg->host, body.len,
                         tg->token ? "Authorization: Bearer " : "", tg->token ? tg->token : "",
                         tg->token ? "\r\n" : "");
        struct response r = { 0 };
        struct loom_buf in;
        loom_buf_init(&in, (size_t)64 << 20);
        bool ok = send_all(fd, head, (size_t)n) && read_response(fd, &in, &r, 30000);
        if (ok && r.status == 100) {
            /* Not when the refusal came along with the 100: the server has answered. */
            if (in.len == 0)
                send_all(fd, body.ptr, body.len); /* a refusal mid-way is read below */
            ok = read_response(fd, &in, &r, 600000);
        }
        loom_buf_release(&in);
        close(fd);
        if (!ok) {
            say("loom ingest: the connection to %s:%s failed\n", tg->host, tg->port);
            return false;
        }
        if (r.status == 503 && attempt < retries) {
            say("loom ingest: the service is busy; retrying in %llu s\n",
                (unsigned long long)r.retry_after);
            loom_buf_release(&r.body);
            sleep((unsigned)LOOM_MAX(r.retry_after, 1));
            continue;
        }
        bool good = report(&r, t);
        loom_buf_release(&r.body);
        return good;
    }
}

/* Reading the file: records are split out of it (decompressed first if need be) and sent as
 * NDJSON batches of at most batch_bytes. */
struct reader {
    const struct target *tg;
    const char *stream;
    int retries;
    uint64_t batch_bytes;
    struct totals *t;
    bool started, failed, bom_checked;
    struct ing_splitter split;
    struct loom_buf batch;
    uint64_t batch_records_max;
    uint64_t batch_first; /* index in the file of the batch's first record */
    uint64_t batch_records, local_rejected;
};

static bool flush_batch(struct reader *rd)
{
    if (rd->batch.len == 0)
        return true;
    rd->t->base = rd->batch_first;
    bool ok = send_batch(rd->tg, rd->stream, loom_buf_str(&rd->batch), rd->retries, rd->t);
    rd->batch_first += rd->batch_records;
    rd->batch_records = 0;
    loom_buf_reset(&rd->batch);
    progress(rd->t, false);
    return ok;
}

static loom_err on_record(void *arg, const char *p, size_t n, const struct ing_pos *pos)
{
    struct reader *rd = arg;
    if (pos->oversize) {
        say("rejected: record %llu: longer than 1 MiB (not sent)\n",
            (unsigned long long)(rd->batch_first + rd->batch_records));
        rd->t->records++;
        rd->t->rejected++;
        rd->local_rejected++;
        rd->batch_first++;
        return LOOM_OK;
    }
    if (rd->batch.len &&
        (rd->batch.len + n + 1 > rd->batch_bytes || rd->batch_records >= rd->batch_records_max) &&
        !flush_batch(rd)) {
        rd->failed = true;
        return LOOM_ECANCELED;
    }
    size_t at = rd->batch.len;
    loom_buf_append(&rd->batch, p, n);
    /* One line per record: a record of a pretty-printed array may span lines (a raw newline
     * cannot be inside a JSON string, so this changes whitespace only). */
    for (size_t i = at; i < rd->batch.len; i++)
        if (rd->batch.data[i] == '\n' || rd->batch.data[i] == '\r')
            rd->batch.data[i] = ' ';
    loom_buf_putc(&rd->batch, '\n');
    rd->batch_records++;
    return LOOM_OK;
}

static loom_err on_bytes(void *arg, const char *p, size_t n)
{
    struct reader *rd = arg;
    if (!rd->started) { /* an array or NDJSON, by the first significant byte */
        size_t i = 0;
        if (!rd->bom_checked && n >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0)
            i = 3; /* a UTF-8 byte order mark */
        rd->bom_checked = true;
        while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n'))
            i++;
        if (i == n)
            return LOOM_OK;
        ing_split_init(&rd->split, p[i] != '[', (size_t)1 << 20);
        rd->started = true;
        p += i;
        n -= i;
    }
    struct loom_error err = { 0 };
    loom_err e = ing_split_feed(&rd->split, p, n, on_record, rd, &err);
    if (e == LOOM_EPARSE)
        say("loom ingest: %s\n", err.msg);
    return e;
}

int cmd_ingest(int argc, char **argv)
{
    const char *cmd = argc > 0 ? argv[0] : "loom ingest";
    const char *url = getenv("LOOM_INGEST_URL");
    const char *token = getenv("LOOM_TOKEN");
    if (!url || !*url)
        url = "http://127.0.0.1:8084";
    const char *pos[2] = { NULL, NULL };
    int npos = 0, retries = 10;
    uint64_t batch_bytes = (uint64_t)16 << 20, batch_records = 20000;
    struct totals t = { 0 };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout, cmd);
            return 0;
        } else if (strcmp(a, "--quiet") == 0) {
            t.quiet = true;
        } else if (strcmp(a, "--token") == 0 && i + 1 < argc) {
            token = argv[++i];
        } else if (strncmp(a, "--token=", 8) == 0) {
            token = a + 8;
        } else if ((strcmp(a, "--url") == 0 || strcmp(a, "--batch-bytes") == 0 ||
                    strcmp(a, "--batch-records") == 0 || strcmp(a, "--retries") == 0) &&
                   i + 1 < argc) {
            const char *v = argv[++i];
            if (strcmp(a, "--url") == 0) {
                url = v;
            } else if (strcmp(a, "--batch-bytes") == 0) {
                if (loom_str_to_size(loom_str_cstr(v), &batch_bytes) || batch_bytes < 1024) {
                    fprintf(stderr, "%s: --batch-bytes wants a size such as 16MiB\n", cmd);
                    return 2;
                }
            } else if (strcmp(a, "--batch-records") == 0) {
                batch_records = strtoull(v, NULL, 10);
                if (batch_records < 1) {
                    fprintf(stderr, "%s: --batch-records wants a positive number\n", cmd);
                    return 2;
                }
            } else {
                retries = atoi(v);
            }
        } else if (strncmp(a, "--url=", 6) == 0) {
            url = a + 6;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "%s: unknown option %s; see --help\n", cmd, a);
            return 2;
        } else if (npos < 2) {
            pos[npos++] = a;
        } else {
            fprintf(stderr, "%s: unexpected argument \"%s\"; see --help\n", cmd, a);
            return 2;
        }
    }
    if (npos != 2) {
        usage(stderr, cmd);
        return 2;
    }
    struct target tg;
    if (!parse_url(url, &tg)) {
        fprintf(stderr, "%s: --url wants http://HOST:PORT, got \"%s\"\n", cmd, url);
        return 2;
    }
    if (token && !*token)
        token = NULL;
    for (const char *c = token; c && *c; c++) {
        if ((unsigned char)*c <= ' ' || *c == 0x7f || c - token >= 8192) {
            fprintf(stderr, "%s: --token must be one word of at most 8 KiB\n", cmd);
            return 2;
        }
    }
    tg.token = token;
    int file = open(pos[1], O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (file < 0 || fstat(file, &st) < 0) {
        fprintf(stderr, "%s: cannot read %s: %s\n", cmd, pos[1], strerror(errno));
        return 1;
    }
    t.size = (uint64_t)st.st_size;
    unsigned char magic[2] = { 0, 0 };
    bool gzip = pread(file, magic, 2, 0) == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
    struct reader rd = { .tg = &tg,
                         .stream = pos[0],
                         .retries = retries,
                         .batch_bytes = batch_bytes,
                         .batch_records_max = batch_records,
                         .t = &t };
    loom_buf_init(&rd.batch, 0);
    struct ing_inflate *z = loom_new(struct ing_inflate);
    ing_inflate_init(z, UINT64_MAX);
    t.t0 = loom_now_ns();
    char buf[65536];
    loom_err e = LOOM_OK;
    struct loom_error err = { 0 };
    for (;;) {
        ssize_t got = read(file, buf, sizeof(buf));
        if (got < 0) {
            say("%s: cannot read %s: %s\n", cmd, pos[1], strerror(errno));
            e = LOOM_EIO;
            break;
        }
        if (got == 0)
            break;
        t.sent += (uint64_t)got;
        e = gzip ? ing_inflate_feed(z, buf, (size_t)got, on_bytes, &rd, &err)
                 : on_bytes(&rd, buf, (size_t)got);
        if (e)
            break;
        progress(&t, false);
    }
    if (!e && gzip && (e = ing_inflate_finish(z, &err)))
        say("%s: %s\n", pos[1], err.msg);
    if (e == LOOM_EPARSE && gzip && !rd.failed && err.msg[0])
        say("%s: %s\n", pos[1], err.msg);
    if (!e && rd.started && (e = ing_split_finish(&rd.split, on_record, &rd, &err)))
        say("%s: %s\n", pos[1], err.msg);
    bool ok = !e && !rd.failed && flush_batch(&rd);
    close(file);
    ing_inflate_release(z);
    free(z);
    if (rd.started)
        ing_split_release(&rd.split);
    loom_buf_release(&rd.batch);
    progress(&t, true);
    double secs = (double)(loom_now_ns() - t.t0) / 1e9;
    if (progress_shown)
        fputc('\n', stderr);
    printf("%s: accepted %llu of %llu records into %s (%llu rejected) in %.1f s\n", pos[1],
           (unsigned long long)t.accepted, (unsigned long long)t.records, pos[0],
           (unsigned long long)t.rejected, secs);
    return ok && t.rejected == 0 ? 0 : 1;
}
