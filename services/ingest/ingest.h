/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The ingest service: the front door for data. A stream is declared with a data contract (its
 * fields, their types and ranges, which field is the record id, and whether its records are
 * data or labels) and stored in the service's own store. Records are POSTed in batches, as a
 * JSON array or NDJSON, optionally gzip-compressed, and read as they stream in: each record is
 * split out of the body, checked against the contract, and published on the bus as a
 * CloudEvent (loom.data.ingested or loom.label.ingested) whose id derives from (stream, record
 * id), so a retried batch yields the same events and the bus's dedup and its consumers'
 * idempotence absorb it. A record that breaks the contract is rejected with its position and
 * reasons, never dropped silently. Publishing runs on the work pool in chunks, one chunk in
 * flight per request, and the bytes waiting for the bus are bounded across all requests: past
 * the bound the service answers 503 with Retry-After rather than buffering.
 *
 *   schema.c  contracts: parse and check a declaration, validate a record, store and cache
 *   reader.c  the body: gzip inflation with a ceiling, splitting arrays and NDJSON into records
 *   api.c     the routes, the publishing pipeline and the answers
 *   ingest.c  the service table, settings, init and fini, the bus lag gauges
 */
#ifndef LOOM_SVC_INGEST_H
#define LOOM_SVC_INGEST_H

#include <loom/bus.h>
#include <loom/http.h>
#include <loom/json.h>
#include <loom/metrics.h>
#include <loom/service.h>
#include <loom/store.h>

#include <pthread.h>
#include <stdatomic.h>
#include <zlib.h>

extern const struct loom_service ingest_service;

struct ing_conf {
    const char *bus;             /* "" : sqlite:<data-dir>/bus.db */
    const char *store;           /* "" : sqlite:<data-dir>/ingest.db */
    uint64_t max_batch_bytes;    /* decompressed bytes of one request */
    int64_t max_batch_records;   /* records in one request */
    uint64_t max_record_bytes;   /* one record */
    uint64_t max_inflight_bytes; /* encoded events waiting for the bus, all requests */
    int64_t publish_batch;       /* events per bus publish */
    uint64_t retry_after;        /* what 503 answers advise */
    int64_t max_errors;          /* rejected records listed in an answer */
    uint64_t publish_delay;      /* tests: hold each publish this long */
};

/* ---- contracts (schema.c) ---- */

#define ING_STREAM_MAX 64
#define ING_FIELDS_MAX 256
#define ING_ENUM_MAX   256
#define ING_ID_MAX     128

enum ing_type { ING_NUMBER, ING_INTEGER, ING_STRING, ING_BOOLEAN };

struct ing_field {
    char *name;
    enum ing_type type;
    bool required;
    bool has_min, has_max;
    double min, max;
    int64_t max_length; /* strings, in characters; 0: none */
    char **enums;       /* strings the value must be one of (strings and integers) */
    size_t nenum;
};

struct ing_schema {
    atomic_int refs;
    char *name;
    bool labels;
    char *id_field;  /* NULL: records carry no id (each gets a fresh event id) */
    bool additional; /* fields the contract does not declare are allowed */
    char *description;
    struct ing_field *fields;
    size_t nfields;
    char *spec; /* the normalized declaration, as stored */
    int64_t version, created_ms, updated_ms;
    uint64_t loaded_ns;
    struct loom_counter *m_accepted, *m_rejected;
};

/* Is `s` a stream name: 1..64 of [a-z0-9_-], starting with a letter or digit? */
bool ing_valid_stream_name(struct loom_str s);

/* Compile a declaration (the PUT body) for stream `name`. NULL with a message in err (which
 * names the field and what to fix) when it is not valid. */
struct ing_schema *ing_schema_compile(const char *name, const char *text, size_t len,
                                      struct loom_error *err);
struct ing_schema *ing_schema_ref(struct ing_schema *s);
void ing_schema_unref(struct ing_schema *s);

/* Write the stream as GET answers it (one JSON object) with `w`. */
void ing_schema_write(const struct ing_schema *s, struct loom_json_writer *w);

/* What validating one record found. */
#define ING_RECORD_ERRORS_MAX 8
struct ing_verdict {
    struct loom_str id; /* the record id (decoded into the arena), empty if none or invalid */
    size_t nerrors;
    char errors[ING_RECORD_ERRORS_MAX][160];
    bool more_errors;
};

/* Check record `doc` (token 0) against the contract. */
void ing_validate(const struct ing_schema *s, const struct loom_json_doc *doc,
                  struct loom_arena *arena, struct ing_verdict *v);

/* The store: migrations, and load/save of declarations (blocking: on the work pool). */
extern const struct loom_migration ing_migrations[];
extern const size_t ing_nmigrations;
/* Load one stream; LOOM_ENOTFOUND if there is none. */
loom_err ing_schema_load(struct loom_store *store, const char *name, struct ing_schema **out,
                         struct loom_error *err);
/* Save `s` (insert, or replace when its spec changed): *created says it is new, and s's
 * version and times are updated from the store. */
loom_err ing_schema_save(struct loom_store *store, struct ing_schema *s, bool *created,
                         struct loom_error *err);
/* Write {"streams": [...], "next_cursor": ...} for up to `limit` streams after `cursor`. */
loom_err ing_schema_list(struct loom_store *store, struct loom_str cursor, size_t limit,
                         struct loom_buf *out, struct loom_error *err);

/* ---- the body (reader.c) ---- */

struct ing_inflate {
    z_stream z;
    bool active;    /* inflateInit2 was called */
    bool in_member; /* inside a gzip member (a clean end needs this false) */
    uint64_t out_total;
    uint64_t max_out;
    char out[64 * 1024];
};

typedef loom_err (*ing_bytes_fn)(void *arg, const char *p, size_t n);

void ing_inflate_init(struct ing_inflate *z, uint64_t max_out);
void ing_inflate_release(struct ing_inflate *z);
/* Inflate `n` bytes, passing the output on; LOOM_EPARSE for a corrupt stream, LOOM_ETOOBIG
 * past max_out, or the sink's error. `err` says which. */
loom_err ing_inflate_feed(struct ing_inflate *z, const char *p, size_t n, ing_bytes_fn sink,
                          void *arg, struct loom_error *err);
/* The body ended: LOOM_EPARSE if inside a gzip member. */
loom_err ing_inflate_finish(struct ing_inflate *z, struct loom_error *err);

/* Where a record was found. */
struct ing_pos {
    uint64_t index;  /* 0-based record number */
    uint64_t offset; /* of its first byte in the (decompressed) body */
    uint64_t line;   /* NDJSON: its line, from 1; else 0 */
    bool oversize;   /* longer than the record ceiling (its text is not kept) */
};

typedef loom_err (*ing_record_fn)(void *arg, const char *p, size_t n, const struct ing_pos *pos);

enum ing_split_state { SPLIT_START, SPLIT_BEFORE, SPLIT_VALUE, SPLIT_AFTER, SPLIT_END };

/* Splits a JSON array (or one object) or NDJSON into records, one byte at a time: nothing is
 * held but the record being read. */
struct ing_splitter {
    bool ndjson;
    enum ing_split_state state;
    bool first, single, in_str, esc;
    int depth;
    struct loom_buf rec; /* the record so far, up to max_record bytes */
    bool oversize;
    unsigned bom; /* bytes of a leading UTF-8 byte order mark skipped; 4 once past the start */
    uint64_t offset, rec_start, line, rec_line, count;
};

void ing_split_init(struct ing_splitter *s, bool ndjson, size_t max_record);
void ing_split_release(struct ing_splitter *s);
/* Feed bytes; fn gets each complete record. LOOM_EPARSE (with the offset in err) when the
 * framing is broken, or fn's error. A UTF-8 byte order mark at the start is skipped (RFC 8259
 * 8.1 lets a parser ignore it; Windows tools write one). */
loom_err ing_split_feed(struct ing_splitter *s, const char *p, size_t n, ing_record_fn fn,
                        void *arg, struct loom_error *err);
/* The body ended: emit a last NDJSON line; LOOM_EPARSE if an array is not closed. */
loom_err ing_split_finish(struct ing_splitter *s, ing_record_fn fn, void *arg,
                          struct loom_error *err);

/* ---- the service ---- */

struct ing_service {
    const struct ing_conf *conf;
    struct loom_svc *svc;
    struct loom_pool *pool;
    struct loom_store *store;
    struct loom_bus *bus;
    pthread_mutex_t mu; /* the contract cache */
    struct ing_schema **cache;
    size_t ncache, cache_cap;
    atomic_uint_fast64_t inflight_bytes;
    /* metrics */
    struct loom_counter_family *f_records;
    struct loom_histogram *m_publish;
    struct loom_gauge *m_inflight;
    struct loom_gauge_family *f_lag;
    /* the lag gauges, refreshed on the pool every few seconds */
    struct loom_timer lag_timer;
    struct loom_work lag_work;
    atomic_bool lag_running;
};

/* The cached contract of `name` (a reference: unref it), NULL if not cached or older than
 * `max_age_ns`. */
struct ing_schema *ing_cache_get(struct ing_service *ing, struct loom_str name,
                                 uint64_t max_age_ns);
/* Put (or replace) a contract in the cache; takes a reference of its own. */
void ing_cache_put(struct ing_service *ing, struct ing_schema *s);
/* Find the metric series of a contract (loop or pool thread). */
void ing_schema_metrics(struct ing_service *ing, struct ing_schema *s);

#define ING_NROUTES 4
extern const struct loom_route ing_routes[ING_NROUTES];

#endif
