/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The model registry: models, their numbered versions, aliases that point at versions
 * (production, canary), and the content-addressed artifacts (sha256) the versions are made of.
 *
 * How it fits together. Every change is an event appended to a per-model log (events.c) in the
 * same transaction as the update of the state tables, which are projections of that log computed
 * by one function, reg_apply, used both live and to rebuild them from the log. The API (api.c)
 * parses and validates a request on the loop thread, then runs its store work as a struct
 * reg_op on the work pool and answers from the completion, back on the loop. Artifacts
 * (artifacts.c) stream to a temporary file while they are hashed, are checked to be servable
 * models, and are renamed to artifacts/sha256/<2 hex>/<64 hex>; downloads are verified against
 * their digest before a byte is sent. Creating POSTs accept an Idempotency-Key (idem.c).
 */
#ifndef LOOM_SVC_REGISTRY_H
#define LOOM_SVC_REGISTRY_H

#include <loom/digest.h>
#include <loom/http.h>
#include <loom/json.h>
#include <loom/metrics.h>
#include <loom/outbox.h>
#include <loom/service.h>
#include <loom/store.h>

#include <stdbool.h>
#include <stdint.h>

extern const struct loom_service registry_service;

/* --registry.* settings. */
struct reg_conf {
    const char *store;           /* URL; "" means sqlite:<data-dir>/registry.db */
    const char *artifacts;       /* directory; "" means <data-dir>/artifacts */
    uint64_t max_artifact_bytes; /* larger uploads get 413 */
    bool rebuild_projections;    /* recompute the state tables from the event log at start */
};

/* The event types, in the order of reg_event_types. */
enum reg_event_type {
    REG_EV_MODEL_CREATED,
    REG_EV_MODEL_UPDATED,
    REG_EV_MODEL_DELETED,
    REG_EV_VERSION_CREATED,
    REG_EV_VERSION_UPDATED,
    REG_EV_ALIAS_CHANGED,
    REG_EV__COUNT
};

/* "loom.model.created", ... indexed by enum reg_event_type. */
extern const char *const reg_event_types[REG_EV__COUNT];

struct reg_service {
    const struct reg_conf *conf;
    struct loom_svc *svc;
    struct loom_pool *pool;
    struct loom_store *store;
    struct loom_bus *bus;            /* where the log's events are published */
    struct loom_outbox_relay *relay; /* publishes the outbox of `store` to `bus` */
    char *artifacts_dir;             /* <dir> */
    char *tmp_dir;                   /* <dir>/tmp: uploads in progress */
    /* metrics */
    struct loom_gauge *g_models, *g_versions;
    struct loom_counter *c_events[REG_EV__COUNT];
};

/* ---- names ---- */

/* [a-z0-9][a-z0-9._-]{0,99} */
bool reg_valid_model_name(struct loom_str s);
/* [a-z0-9-]{1,63} */
bool reg_valid_alias(struct loom_str s);

/* ---- operations: store work on the pool, the answer on the loop (api.c) ---- */

struct reg_op;
typedef void (*reg_op_fn)(struct reg_op *op);

/*
 * One request's work. Allocated in the request's arena (the request stays valid until it is
 * answered, which only the completion does). `fn` runs on a worker and fills status, body and
 * content type, with reg_op_problem for errors.
 */
struct reg_op {
    struct loom_work work;
    struct loom_http_req *req;
    struct reg_service *reg;
    reg_op_fn fn;
    int status;
    const char *content_type;
    struct loom_buf body;
    /* response headers that are not stored with an idempotent response */
    char digest_b64[48];
    char etag[80];
    char content_type_buf[64]; /* a replayed answer's Content-Type */
    /* Idempotency-Key */
    bool has_key;
    bool replayed;
    struct loom_str key;
    const char *scope; /* "POST /api/v1/models" */
    char body_sha[LOOM_SHA256_HEX];
    void *args;  /* the handler's parsed request */
    int file_fd; /* an answer sent from a file (an artifact), or -1 */
    uint64_t file_len;
};

/* A new operation for `req` that runs fn with args. */
struct reg_op *reg_op_new(struct loom_http_req *req, reg_op_fn fn, void *args);

/* Run op->fn on the pool (with the Idempotency-Key protocol when the request has one and
 * `idempotent` is true), then answer. On a full pool: 503 at once. */
void reg_op_submit(struct reg_op *op, bool idempotent);

/* Take the request's Idempotency-Key (op->key, op->scope), if it has one: false (answered 400)
 * if it is malformed. */
bool reg_op_take_key(struct reg_op *op);

/* Answer from the loop thread with op's status, body and headers (the completion). */
void reg_op_respond(struct reg_op *op);

/* Set op's answer to an RFC 9457 problem (type about:blank, instance = the request path). */
void reg_op_problem(struct reg_op *op, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Answer `req` with a problem at once (loop thread). */
void reg_problem(struct loom_http_req *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Set op's answer from a store error: 503 for a lost or busy database, else 500. */
void reg_op_store_error(struct reg_op *op, loom_err e, const struct loom_error *err);

/* Set op's answer to a JSON body (taken over from `b`). */
void reg_op_json(struct reg_op *op, int status, struct loom_buf *b);

/* ---- the event log and its projections (events.c) ---- */

/* The schema of the registry, for loom_store_migrate (component "registry"). */
extern const struct loom_migration reg_migrations[];
extern const size_t reg_nmigrations;

/*
 * Append an event to `model`'s log (the next seq, a new UUIDv7 id, the current time), apply it
 * to the projections and queue it in the outbox as a CloudEvent (same id and time, subject the
 * model, data the log's with "model" added), in the caller's transaction. `data` is a JSON object.
 * On success *time_ms_out (may be NULL) is the event's time. LOOM_EBUSY when another writer took
 * the same seq (the transaction is then retried by loom_store_tx).
 */
loom_err reg_emit(struct loom_db *db, struct loom_str model, enum reg_event_type type,
                  struct loom_str data, int64_t *time_ms_out, struct loom_error *err);

/* Apply one event to the projections (the one function used live and by the rebuild). */
loom_err reg_apply(struct loom_db *db, struct loom_str model, struct loom_str type, int64_t time_ms,
                   struct loom_str data, struct loom_error *err);

/* Empty the projections and replay every event, in one transaction. */
loom_err reg_rebuild(struct loom_store *store, struct loom_error *err);

/* Count models and versions into the gauges. Pool or main thread. */
void reg_refresh_gauges(struct reg_service *reg);

/* ---- idempotency (idem.c) ---- */

enum reg_idem_result {
    REG_IDEM_PROCEED,  /* the key is ours now: do the work, then reg_idem_finish */
    REG_IDEM_REPLAY,   /* a stored answer for the same request: send it again */
    REG_IDEM_MISMATCH, /* the key was used for another request (422) */
    REG_IDEM_INFLIGHT, /* the first request with this key has not finished (409) */
};

struct reg_idem_stored {
    int status;
    char content_type[64];
    struct loom_buf body;
    char body_sha[LOOM_SHA256_HEX]; /* of the first request's body ("" until known) */
};

/*
 * Claim `key` for `scope` ("POST /api/v1/models") and the body digest `sha` (hex, or "" when
 * the body is not known yet: the stored digest is then returned with a REPLAY for the caller to
 * compare). Keys expire after 24 h; a claim left in flight for an hour is abandoned. *stored
 * (its body initialised by the caller) is filled whenever the key was found; the caller
 * releases its body in every case.
 */
loom_err reg_idem_begin(struct loom_store *store, struct loom_str key, const char *scope,
                        const char *sha, enum reg_idem_result *res, struct reg_idem_stored *stored,
                        struct loom_error *err);

/* Store the answer for a claimed key (a 5xx answer forgets the key, so the client may retry). */
void reg_idem_finish(struct loom_store *store, struct loom_str key, const char *sha, int status,
                     const char *content_type, struct loom_str body);

/* Forget a claimed key (the request failed before an answer worth storing). */
void reg_idem_release(struct loom_store *store, struct loom_str key);

/* ---- artifacts (artifacts.c) ---- */

/* POST /api/v1/artifacts (LOOM_ROUTE_STREAM). */
void reg_h_upload(struct loom_http_req *req);

/* On the pool: answer op with the verified bytes of the artifact `digest` ("sha256:<hex>"),
 * 404 if unknown, 500 if the file no longer matches its digest. */
void reg_artifact_send(struct reg_op *op, struct loom_str digest);

/* Create the artifact directories and delete uploads left by dead processes. Main thread. */
loom_err reg_artifacts_init(struct reg_service *reg, struct loom_error *err);

/* The path of a stored artifact (caller frees). */
char *reg_artifact_path(const struct reg_service *reg, const char *hex);

/* Standard base64 (with padding) or base64url (without) of n bytes into out (NUL-terminated;
 * room for 4 * ((n + 2) / 3) + 1 bytes). Returns the length. */
size_t reg_base64(const uint8_t *in, size_t n, bool url, char *out);
/* Decode base64url without padding; false if malformed. out has room for 3 * len / 4 bytes. */
bool reg_base64url_decode(struct loom_str in, uint8_t *out, size_t *outlen);

/* ---- routes (api.c) ---- */

#define REG_NROUTES 18
extern const struct loom_route reg_routes[REG_NROUTES];

#endif
