/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The ingest API under /api/v1/streams (docs/events.md is the user's side):
 *   PUT  /api/v1/streams/{stream}          declare or replace a stream's contract (201, 200)
 *   GET  /api/v1/streams[/{stream}]        the contracts (cursor-paginated), or one
 *   POST /api/v1/streams/{stream}/events   a batch of records: JSON array or NDJSON, gzip or not
 *
 * A batch streams through: body bytes -> inflate (gzip) -> splitter -> one record at a time:
 * parse, validate, encode its CloudEvent into the current chunk. A full chunk is sealed and
 * queued; a request publishes its chunks one after the other on the work pool, so its events
 * reach the bus in order while the loop reads and encodes what follows. The answer comes when
 * the body has ended and the last chunk is durable (or something stopped the batch): it counts
 * what was accepted, which is what the bus holds, and lists each rejected record with its
 * position and reasons. Sealed chunks count against a window shared by all requests; a chunk
 * that does not fit stops its request with 503 and Retry-After.
 *
 * Status codes: 200 every record accepted (an empty batch too); 207 some accepted and some
 * rejected (the body says which); 422 records were sent and none was accepted; 400 a batch
 * whose framing is broken (the records before the break were accepted: see "accepted"); 404
 * no such stream; 413 a batch over the size or record ceilings; 415 an unsupported
 * Content-Type or Content-Encoding; 503 the bus is slow or away (Retry-After). Every answer but
 * 200/207/422 is an RFC 9457 problem carrying "accepted" and "rejected" counts, so a client
 * knows how far it got; resending the whole batch is always safe (record ids make it
 * idempotent).
 */
#include "ingest/ingest.h"

#include <loom/event.h>
#include <loom/id.h>
#include <loom/log.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHUNK_MAX_BYTES ((size_t)4 << 20)
#define CACHE_TTL       (5 * LOOM_NS_PER_SEC)
#define PAGE_DEFAULT    50
#define PAGE_MAX        500

/* ---- problems ---- */

/* An RFC 9457 problem with the batch's counts as extension members (counts < 0: none). */
static void problem(struct loom_http_req *req, int status, int64_t accepted, int64_t rejected,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void problem(struct loom_http_req *req, int status, int64_t accepted, int64_t rejected,
                    const char *fmt, ...)
{
    char detail[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "type");
    loom_json_write_string(&w, "about:blank");
    loom_json_write_key(&w, "title");
    loom_json_write_string(&w, loom_http_status_reason(status));
    loom_json_write_key(&w, "status");
    loom_json_write_i64(&w, status);
    loom_json_write_key(&w, "detail");
    loom_json_write_string(&w, detail);
    loom_json_write_key(&w, "instance");
    loom_json_write_str(&w, req->path);
    if (accepted >= 0) {
        loom_json_write_key(&w, "accepted");
        loom_json_write_i64(&w, accepted);
    }
    if (rejected >= 0) {
        loom_json_write_key(&w, "rejected");
        loom_json_write_i64(&w, rejected);
    }
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
    loom_http_respond_buf(req, status, "application/problem+json", &b);
    loom_buf_release(&b);
}

static void retry_after(struct ing_service *ing, struct loom_http_req *req)
{
    uint64_t s = (ing->conf->retry_after + LOOM_NS_PER_SEC - 1) / LOOM_NS_PER_SEC;
    loom_http_resp_headerf(req, "Retry-After", "%llu", (unsigned long long)LOOM_MAX(s, 1));
}

/* ---- store operations on the pool ---- */

enum op_kind { OP_SAVE, OP_GET, OP_LIST, OP_LOAD_FOR_POST };

struct ing_op {
    struct loom_work work;
    enum op_kind kind;
    struct ing_service *ing;
    struct loom_http_req *req;
    struct ing_schema *schema;
    char name[ING_STREAM_MAX + 1];
    struct loom_str cursor;
    size_t limit;
    bool created;
    loom_err e;
    struct loom_error err;
    struct loom_buf body;
};

static void start_batch(struct ing_service *ing, struct loom_http_req *req, struct ing_schema *s);

static void op_work(struct loom_work *w)
{
    struct ing_op *op = LOOM_CONTAINER_OF(w, struct ing_op, work);
    switch (op->kind) {
    case OP_SAVE:
        op->e = ing_schema_save(op->ing->store, op->schema, &op->created, &op->err);
        break;
    case OP_GET:
    case OP_LOAD_FOR_POST:
        op->e = ing_schema_load(op->ing->store, op->name, &op->schema, &op->err);
        break;
    case OP_LIST:
        loom_buf_init(&op->body, 0);
        op->e = ing_schema_list(op->ing->store, op->cursor, op->limit, &op->body, &op->err);
        break;
    }
}

static void store_problem(struct loom_http_req *req, loom_err e, const struct loom_error *err)
{
    LOOM_LOG_KV(LOOM_LOG_ERROR, "ingest: store error", LOOM_KV_CSTR("code", loom_err_name(e)),
                LOOM_KV_CSTR("error", err->msg));
    if (e == LOOM_ECONNECT || e == LOOM_EBUSY || e == LOOM_EUNAVAIL)
        loom_http_respond_problem(
            req, 503, NULL, "the ingest database is unavailable (%s); try again", loom_strerror(e));
    else
        loom_http_respond_problem(req, 500, NULL, "the ingest database failed: %s", err->msg);
}

static void respond_schema(struct loom_http_req *req, int status, const struct ing_schema *s)
{
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    ing_schema_write(s, &w);
    loom_json_writer_finish(&w);
    loom_http_respond_buf(req, status, "application/json", &b);
    loom_buf_release(&b);
}

static void op_done(struct loom_work *w, loom_err status)
{
    struct ing_op *op = LOOM_CONTAINER_OF(w, struct ing_op, work);
    struct loom_http_req *req = op->req;
    if (status)
        op->e = loom_error_set(&op->err, LOOM_EUNAVAIL, "the work was cancelled");
    if (op->e == LOOM_ENOTFOUND) {
        if (op->kind == OP_LOAD_FOR_POST)
            problem(req, 404, 0, 0, "no stream \"%s\"; declare it first with PUT %.*s", op->name,
                    (int)(req->path.len - strlen("/events")), req->path.ptr);
        else
            loom_http_respond_problem(req, 404, NULL, "no stream \"%s\"", op->name);
    } else if (op->e) {
        store_problem(req, op->e, &op->err);
    } else {
        switch (op->kind) {
        case OP_SAVE:
            ing_schema_metrics(op->ing, op->schema);
            ing_cache_put(op->ing, op->schema);
            if (op->created)
                loom_http_resp_headerf(req, "Location", "/api/v1/streams/%s", op->name);
            respond_schema(req, op->created ? 201 : 200, op->schema);
            break;
        case OP_GET:
            ing_schema_metrics(op->ing, op->schema);
            ing_cache_put(op->ing, op->schema);
            respond_schema(req, 200, op->schema);
            break;
        case OP_LIST:
            loom_http_respond_buf(req, 200, "application/json", &op->body);
            break;
        case OP_LOAD_FOR_POST:
            ing_schema_metrics(op->ing, op->schema);
            ing_cache_put(op->ing, op->schema);
            start_batch(op->ing, req, ing_schema_ref(op->schema));
            break;
        }
    }
    if (op->schema)
        ing_schema_unref(op->schema);
    loom_buf_release(&op->body);
    free(op);
}

static struct ing_op *op_new(struct ing_service *ing, struct loom_http_req *req, enum op_kind kind,
                             struct loom_str name)
{
    struct ing_op *op = loom_new(struct ing_op);
    op->kind = kind;
    op->ing = ing;
    op->req = req;
    if (name.len)
        snprintf(op->name, sizeof(op->name), "%.*s", LOOM_STR_FMT(name));
    loom_buf_init(&op->body, 0);
    return op;
}

static void op_submit(struct ing_op *op)
{
    if (loom_pool_submit(op->ing->pool, op->req->loop, &op->work, op_work, op_done)) {
        loom_http_respond_problem(op->req, 503, NULL, "the service is overloaded; try again");
        if (op->schema)
            ing_schema_unref(op->schema);
        loom_buf_release(&op->body);
        free(op);
    }
}

/* The {stream} of the path. A name no stream can have is a 404 where a stream is looked up, and
 * a 400 where one is declared (PUT), since then the fix is another name. */
static bool stream_param(struct loom_http_req *req, struct loom_str *name)
{
    *name = loom_http_req_param(req, "stream");
    if (ing_valid_stream_name(*name))
        return true;
    bool put = req->method == LOOM_HTTP_PUT;
    loom_http_respond_problem(req, put ? 400 : 404, NULL,
                              "%s \"%.*s\" (stream names are 1 to %d characters of "
                              "[a-z0-9_-], starting with a letter or digit)",
                              put ? "a stream cannot be named" : "no stream",
                              (int)LOOM_MIN(name->len, 80), name->ptr ? name->ptr : "",
                              ING_STREAM_MAX);
    return false;
}

static void h_put_stream(struct loom_http_req *req)
{
    struct ing_service *ing = req->ctx;
    struct loom_str name;
    if (!stream_param(req, &name))
        return;
    char cname[ING_STREAM_MAX + 1];
    snprintf(cname, sizeof(cname), "%.*s", LOOM_STR_FMT(name));
    struct loom_error err = { 0 };
    struct ing_schema *s = ing_schema_compile(cname, req->body.ptr, req->body.len, &err);
    if (!s) {
        loom_http_respond_problem(req, 400, NULL, "%s", err.msg);
        return;
    }
    struct ing_op *op = op_new(ing, req, OP_SAVE, name);
    op->schema = s;
    op_submit(op);
}

static void h_get_stream(struct loom_http_req *req)
{
    struct loom_str name;
    if (!stream_param(req, &name))
        return;
    op_submit(op_new(req->ctx, req, OP_GET, name));
}

static void h_list_streams(struct loom_http_req *req)
{
    struct ing_op *op = op_new(req->ctx, req, OP_LIST, LOOM_STR_NULL);
    op->limit = PAGE_DEFAULT;
    struct loom_str v;
    if (loom_http_req_query(req, "limit", &v)) {
        int64_t n;
        if (loom_str_to_i64(v, &n) || n < 1 || n > PAGE_MAX) {
            free(op);
            loom_http_respond_problem(req, 400, NULL, "limit must be an integer from 1 to %d",
                                      PAGE_MAX);
            return;
        }
        op->limit = (size_t)n;
    }
    if (loom_http_req_query(req, "cursor", &v))
        op->cursor = v;
    op_submit(op);
}

/* ---- batches ---- */

struct item {
    uint32_t id_off, id_len, data_off, data_len;
};

struct chunk {
    struct loom_work work;
    struct batch *b;
    struct chunk *next;
    struct loom_buf buf; /* the envelopes and ids, back to back */
    struct item *items;
    size_t n, cap;
    struct loom_bus_event *evs;
    size_t bytes; /* counted against the window */
    loom_err status;
    struct loom_error err;
    uint64_t ns;
};

struct batch {
    struct ing_service *ing;
    struct loom_http_req *req;
    struct ing_schema *schema;
    char subject[LOOM_BUS_SUBJECT_MAX + 1];
    bool gzip;
    struct ing_inflate z;
    struct ing_splitter split;
    struct loom_arena rec_arena;
    struct loom_buf data; /* one event's data member */
    uint64_t in_bytes;
    struct chunk *cur, *q_head, *q_tail;
    bool publishing, body_done;
    uint64_t records, accepted, rejected;
    struct loom_buf errors; /* the rejected list's entries, comma-separated */
    size_t listed;
    int fatal; /* the status that ends the batch early, or 0 */
    char fatal_msg[600];
};

static void chunk_free(struct chunk *c)
{
    loom_buf_release(&c->buf);
    free(c->items);
    free(c->evs);
    free(c);
}

__attribute__((format(printf, 3, 4))) static void set_fatal(struct batch *b, int status,
                                                            const char *fmt, ...)
{
    if (b->fatal)
        return;
    b->fatal = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->fatal_msg, sizeof(b->fatal_msg), fmt, ap);
    va_end(ap);
}

static void release_window(struct batch *b, struct chunk *c)
{
    atomic_fetch_sub(&b->ing->inflight_bytes, c->bytes);
    loom_gauge_sub(b->ing->m_inflight, (double)c->bytes);
}

static void batch_free(struct batch *b)
{
    for (struct chunk *c = b->q_head, *next; c; c = next) {
        next = c->next;
        release_window(b, c);
        chunk_free(c);
    }
    if (b->cur)
        chunk_free(b->cur);
    ing_inflate_release(&b->z);
    ing_split_release(&b->split);
    loom_arena_release(&b->rec_arena);
    loom_buf_release(&b->data);
    loom_buf_release(&b->errors);
    ing_schema_unref(b->schema);
    free(b);
}

static void respond(struct batch *b)
{
    struct loom_http_req *req = b->req;
    if (b->schema->m_accepted && b->accepted)
        loom_counter_add(b->schema->m_accepted, b->accepted);
    if (b->schema->m_rejected && b->rejected)
        loom_counter_add(b->schema->m_rejected, b->rejected);
    if (b->fatal) {
        if (b->fatal == 503)
            retry_after(b->ing, req);
        problem(req, b->fatal, (int64_t)b->accepted, (int64_t)b->rejected,
                "%s (%llu records of the batch were accepted before that, %llu rejected; "
                "sending the batch again is safe: record ids make it idempotent)",
                b->fatal_msg, (unsigned long long)b->accepted, (unsigned long long)b->rejected);
        batch_free(b);
        return;
    }
    int status = b->rejected == 0 ? 200 : b->accepted == 0 ? 422 : 207;
    struct loom_buf out;
    loom_buf_init(&out, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &out);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "stream");
    loom_json_write_string(&w, b->schema->name);
    loom_json_write_key(&w, "records");
    loom_json_write_u64(&w, b->records);
    loom_json_write_key(&w, "accepted");
    loom_json_write_u64(&w, b->accepted);
    loom_json_write_key(&w, "rejected");
    loom_buf_putc(&b->errors, ']');
    loom_json_write_raw(&w, loom_str_make(b->errors.data, b->errors.len));
    loom_json_write_key(&w, "rejected_count");
    loom_json_write_u64(&w, b->rejected);
    loom_json_write_key(&w, "rejected_truncated");
    loom_json_write_bool(&w, b->listed < b->rejected);
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
    loom_http_respond_buf(req, status, "application/json", &out);
    loom_buf_release(&out);
    batch_free(b);
}

static void pump(struct batch *b);

static void publish_work(struct loom_work *w)
{
    struct chunk *c = LOOM_CONTAINER_OF(w, struct chunk, work);
    struct ing_service *ing = c->b->ing;
    if (ing->conf->publish_delay) {
        struct timespec ts = { (time_t)(ing->conf->publish_delay / LOOM_NS_PER_SEC),
                               (long)(ing->conf->publish_delay % LOOM_NS_PER_SEC) };
        nanosleep(&ts, NULL);
    }
    uint64_t t0 = loom_now_ns();
    c->status = loom_bus_publish(ing->bus, c->evs, c->n, &c->err);
    c->ns = loom_now_ns() - t0;
}

static void publish_done(struct loom_work *w, loom_err status)
{
    struct chunk *c = LOOM_CONTAINER_OF(w, struct chunk, work);
    struct batch *b = c->b;
    release_window(b, c);
    if (status && !c->status)
        c->status = loom_error_set(&c->err, status, "the publish was cancelled");
    if (c->status == LOOM_OK) {
        b->accepted += c->n;
        loom_histogram_observe_ns(b->ing->m_publish, c->ns);
    } else {
        LOOM_LOG_KV(LOOM_LOG_WARN, "ingest: publish failed",
                    LOOM_KV_CSTR("stream", b->schema->name), LOOM_KV_CSTR("error", c->err.msg));
        set_fatal(b, 503, "the event bus did not take the events (%s); send the batch again",
                  c->err.msg);
    }
    chunk_free(c);
    b->publishing = false;
    pump(b);
}

/* Publish the next sealed chunk, or answer when there is nothing left to do. */
static void pump(struct batch *b)
{
    if (b->publishing)
        return;
    /* After a refusal of the rest of the batch (400, 413) what was read is still published:
     * the answer says those records were accepted. After a 503 nothing more goes out. */
    bool draining = b->fatal && b->fatal != 503;
    if (b->q_head && (!b->fatal || draining)) {
        struct chunk *c = b->q_head;
        b->q_head = c->next;
        if (!b->q_head)
            b->q_tail = NULL;
        b->publishing = true;
        if (loom_pool_submit(b->ing->pool, b->req->loop, &c->work, publish_work, publish_done)) {
            b->publishing = false;
            release_window(b, c);
            chunk_free(c);
            set_fatal(b, 503, "the service is overloaded; send the batch again");
        } else {
            return;
        }
    }
    if ((b->fatal && !draining) || ((b->body_done || draining) && !b->q_head && !b->cur))
        respond(b);
}

/* Seal the current chunk and queue it, if the window has room. */
static loom_err seal(struct batch *b)
{
    struct chunk *c = b->cur;
    if (!c || c->n == 0)
        return LOOM_OK;
    b->cur = NULL;
    c->evs = loom_calloc(c->n, sizeof(*c->evs));
    for (size_t i = 0; i < c->n; i++) {
        const struct item *it = &c->items[i];
        c->evs[i] =
            (struct loom_bus_event){ loom_str_make(c->buf.data + it->id_off, it->id_len),
                                     loom_str_cstr(b->subject),
                                     loom_str_make(c->buf.data + it->data_off, it->data_len) };
    }
    c->bytes = c->buf.len + c->n * (sizeof(struct item) + sizeof(struct loom_bus_event));
    uint64_t max = b->ing->conf->max_inflight_bytes;
    uint64_t before = atomic_fetch_add(&b->ing->inflight_bytes, c->bytes);
    if (before > 0 && before + c->bytes > max) {
        atomic_fetch_sub(&b->ing->inflight_bytes, c->bytes);
        chunk_free(c);
        set_fatal(b, 503,
                  "ingest is busy: %llu bytes of events are waiting for the bus (at most %llu); "
                  "send the batch again later, or in smaller batches",
                  (unsigned long long)before, (unsigned long long)max);
        return LOOM_EBUSY;
    }
    loom_gauge_add(b->ing->m_inflight, (double)c->bytes);
    c->b = b;
    if (b->q_tail)
        b->q_tail->next = c;
    else
        b->q_head = c;
    b->q_tail = c;
    pump(b);
    return LOOM_OK;
}

static void reject(struct batch *b, const struct ing_pos *pos, struct loom_str id,
                   const char *const *errors, size_t nerrors, bool more)
{
    b->rejected++;
    if (b->listed >= (size_t)b->ing->conf->max_errors)
        return;
    if (b->listed++)
        loom_buf_putc(&b->errors, ',');
    /* ... entries are appended after the '[' start_batch wrote */
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b->errors);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "index");
    loom_json_write_u64(&w, pos->index);
    if (id.len) {
        loom_json_write_key(&w, "id");
        loom_json_write_str(&w, id);
    }
    if (pos->line) {
        loom_json_write_key(&w, "line");
        loom_json_write_u64(&w, pos->line);
    }
    loom_json_write_key(&w, "offset");
    loom_json_write_u64(&w, pos->offset);
    loom_json_write_key(&w, "errors");
    loom_json_write_array_begin(&w);
    for (size_t i = 0; i < nerrors; i++)
        loom_json_write_string(&w, errors[i]);
    if (more)
        loom_json_write_string(&w, "(more errors not listed)");
    loom_json_write_array_end(&w);
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
}

static loom_err on_record(void *arg, const char *p, size_t n, const struct ing_pos *pos)
{
    struct batch *b = arg;
    const struct ing_conf *conf = b->ing->conf;
    if (++b->records > (uint64_t)conf->max_batch_records) {
        set_fatal(b, 413, "the batch has more than %lld records; split it",
                  (long long)conf->max_batch_records);
        return LOOM_ETOOBIG;
    }
    char msg[LOOM_ERROR_MSG_MAX + 32];
    const char *one[1] = { msg };
    if (pos->oversize) {
        snprintf(msg, sizeof(msg), "the record is longer than %llu bytes",
                 (unsigned long long)conf->max_record_bytes);
        reject(b, pos, LOOM_STR_NULL, one, 1, false);
        return LOOM_OK;
    }
    loom_arena_reset(&b->rec_arena);
    struct loom_json_doc doc;
    struct loom_error err = { 0 };
    struct loom_json_limits lim = { .max_depth = 32, .max_bytes = conf->max_record_bytes };
    if (loom_json_parse(p, n, &lim, &b->rec_arena, &doc, &err)) {
        snprintf(msg, sizeof(msg), "malformed JSON: %s", err.msg);
        reject(b, pos, LOOM_STR_NULL, one, 1, false);
        return LOOM_OK;
    }
    struct ing_verdict v;
    ing_validate(b->schema, &doc, &b->rec_arena, &v);
    if (v.nerrors) {
        const char *errs[ING_RECORD_ERRORS_MAX];
        for (size_t i = 0; i < v.nerrors; i++)
            errs[i] = v.errors[i];
        reject(b, pos, v.id, errs, v.nerrors, v.more_errors);
        return LOOM_OK;
    }
    /* The event: its id from (stream, record id), its data {"stream", "record"}. */
    char id[LOOM_UUID_LEN + 1];
    if (v.id.len)
        loom_event_id_derive(loom_str_cstr(b->schema->name), v.id, id);
    else
        loom_uuid7(id);
    loom_buf_reset(&b->data);
    loom_buf_append_cstr(&b->data, "{\"stream\":\"");
    loom_buf_append_cstr(&b->data, b->schema->name); /* stream names need no escaping */
    loom_buf_append_cstr(&b->data, "\",\"record\":");
    loom_buf_append(&b->data, p, n);
    loom_buf_putc(&b->data, '}');
    if (!b->cur) {
        struct chunk *c = loom_new(struct chunk);
        loom_buf_init(&c->buf, 0);
        c->cap = (size_t)conf->publish_batch;
        c->items = loom_calloc(c->cap, sizeof(*c->items));
        b->cur = c;
    }
    struct chunk *c = b->cur;
    struct loom_event_spec spec = {
        .id = loom_str_make(id, LOOM_UUID_LEN),
        .source = "/loom/ingest",
        .type = b->schema->labels ? "loom.label.ingested" : "loom.data.ingested",
        .subject = loom_str_cstr(b->schema->name),
        .trace = &b->req->trace,
        .data = loom_buf_str(&b->data),
    };
    size_t start = c->buf.len;
    if (loom_event_build(&spec, &c->buf, NULL, &err)) {
        c->buf.len = start;
        snprintf(msg, sizeof(msg), "%s", err.msg);
        reject(b, pos, v.id, one, 1, false);
        return LOOM_OK;
    }
    struct item *it = &c->items[c->n++];
    it->data_off = (uint32_t)start;
    it->data_len = (uint32_t)(c->buf.len - start);
    it->id_off = (uint32_t)c->buf.len;
    it->id_len = LOOM_UUID_LEN;
    loom_buf_append(&c->buf, id, LOOM_UUID_LEN);
    if (c->n == c->cap || c->buf.len >= CHUNK_MAX_BYTES)
        return seal(b);
    return LOOM_OK;
}

static loom_err split_sink(void *arg, const char *p, size_t n)
{
    struct batch *b = arg;
    struct loom_error err = { 0 };
    loom_err e = ing_split_feed(&b->split, p, n, on_record, b, &err);
    if (e == LOOM_EPARSE)
        set_fatal(b, 400, "%s", err.msg);
    return e;
}

static loom_err on_data(struct loom_http_req *req, struct loom_str chunk, void *arg)
{
    LOOM_UNUSED(req);
    struct batch *b = arg;
    if (b->fatal)
        return LOOM_ECANCELED;
    loom_err e;
    if (b->gzip) {
        struct loom_error err = { 0 };
        e = ing_inflate_feed(&b->z, chunk.ptr, chunk.len, split_sink, b, &err);
        if (e == LOOM_ETOOBIG)
            set_fatal(b, 413, "%s (the limit for one batch); split it", err.msg);
        else if (e == LOOM_EPARSE)
            set_fatal(b, 400, "%s", err.msg);
    } else {
        b->in_bytes += chunk.len;
        if (b->in_bytes > b->ing->conf->max_batch_bytes) {
            set_fatal(b, 413, "the batch is larger than %llu bytes; split it",
                      (unsigned long long)b->ing->conf->max_batch_bytes);
            return LOOM_ETOOBIG;
        }
        e = split_sink(b, chunk.ptr, chunk.len);
    }
    return e;
}

static void on_end(struct loom_http_req *req, loom_err status, void *arg)
{
    LOOM_UNUSED(req);
    struct batch *b = arg;
    struct loom_error err = { 0 };
    if (status == LOOM_OK && !b->fatal) {
        if (b->gzip && ing_inflate_finish(&b->z, &err))
            set_fatal(b, 400, "%s", err.msg);
        else if (ing_split_finish(&b->split, on_record, b, &err) == LOOM_EPARSE)
            set_fatal(b, 400, "%s", err.msg);
        if (!b->fatal)
            seal(b);
    } else if (!b->fatal) {
        if (status == LOOM_ETOOBIG)
            set_fatal(b, 413,
                      "the request body is larger than this service accepts "
                      "(--ingest.max-body-bytes); split the batch");
        else if (status == LOOM_ECLOSED)
            set_fatal(b, 499, "the client went away");
        else
            set_fatal(b, 400, "the request body is malformed (%s)", loom_strerror(status));
    }
    b->body_done = true;
    if (b->fatal == 503 && b->cur) {
        chunk_free(b->cur);
        b->cur = NULL;
    } else if (b->fatal) {
        seal(b); /* what was read before the refusal still goes out */
    }
    pump(b);
}

static void start_batch(struct ing_service *ing, struct loom_http_req *req, struct ing_schema *s)
{
    struct batch *b = loom_new(struct batch);
    b->ing = ing;
    b->req = req;
    b->schema = s;
    snprintf(b->subject, sizeof(b->subject), "%s.%s",
             s->labels ? "loom.label.ingested" : "loom.data.ingested", s->name);
    struct loom_str ctype = loom_http_req_header(req, "content-type"), head;
    loom_str_cut(ctype, ';', &head);
    head = loom_str_trim(head);
    bool ndjson = loom_str_ieq(head, LOOM_STR("application/x-ndjson")) ||
                  loom_str_ieq(head, LOOM_STR("application/jsonl")) ||
                  loom_str_ieq(head, LOOM_STR("application/ndjson"));
    b->gzip = loom_str_ieq(loom_str_trim(loom_http_req_header(req, "content-encoding")),
                           LOOM_STR("gzip"));
    ing_inflate_init(&b->z, ing->conf->max_batch_bytes);
    ing_split_init(&b->split, ndjson, (size_t)ing->conf->max_record_bytes);
    loom_arena_init(&b->rec_arena, 16384);
    loom_buf_init(&b->data, 0);
    loom_buf_init(&b->errors, 0);
    loom_buf_putc(&b->errors, '['); /* the rejected list, closed when answering */
    loom_http_req_read_body(req, on_data, on_end, b);
}

static void h_post_events(struct loom_http_req *req)
{
    struct ing_service *ing = req->ctx;
    struct loom_str name;
    if (!stream_param(req, &name))
        return;
    struct loom_str ctype = loom_http_req_header(req, "content-type"), head;
    loom_str_cut(ctype, ';', &head);
    head = loom_str_trim(head);
    if (head.len && !loom_str_ieq(head, LOOM_STR("application/json")) &&
        !loom_str_ieq(head, LOOM_STR("application/x-ndjson")) &&
        !loom_str_ieq(head, LOOM_STR("application/ndjson")) &&
        !loom_str_ieq(head, LOOM_STR("application/jsonl"))) {
        loom_http_respond_problem(req, 415, NULL,
                                  "Content-Type %.*s is not supported: send application/json (an "
                                  "array of records) or application/x-ndjson",
                                  (int)LOOM_MIN(head.len, 80), head.ptr);
        return;
    }
    struct loom_str enc = loom_str_trim(loom_http_req_header(req, "content-encoding"));
    if (enc.len && !loom_str_ieq(enc, LOOM_STR("gzip")) &&
        !loom_str_ieq(enc, LOOM_STR("identity"))) {
        loom_http_resp_header(req, "Accept-Encoding", LOOM_STR("gzip")); /* RFC 9110 12.5.3 */
        loom_http_respond_problem(req, 415, NULL,
                                  "Content-Encoding %.*s is not supported (gzip or none)",
                                  (int)LOOM_MIN(enc.len, 80), enc.ptr);
        return;
    }
    uint64_t waiting = atomic_load(&ing->inflight_bytes);
    if (waiting >= ing->conf->max_inflight_bytes) {
        retry_after(ing, req);
        problem(req, 503, 0, 0,
                "ingest is busy: %llu bytes of events are waiting for the bus; send the batch "
                "again later",
                (unsigned long long)waiting);
        return;
    }
    struct ing_schema *s = ing_cache_get(ing, name, CACHE_TTL);
    if (s) {
        start_batch(ing, req, s);
        return;
    }
    op_submit(op_new(ing, req, OP_LOAD_FOR_POST, name));
}

const struct loom_route ing_routes[ING_NROUTES] = {
    { LOOM_HTTP_GET, "/api/v1/streams", h_list_streams, 0, 0 },
    { LOOM_HTTP_GET, "/api/v1/streams/{stream}", h_get_stream, 0, 0 },
    { LOOM_HTTP_PUT, "/api/v1/streams/{stream}", h_put_stream, (size_t)1 << 20, 0 },
    { LOOM_HTTP_POST, "/api/v1/streams/{stream}/events", h_post_events, 0, LOOM_ROUTE_STREAM },
};
