/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The event bus: one interface over a durable, ordered log of events, with two backends chosen
 * by URL the way Redis chooses a connection type, through a table of function pointers
 * (struct loom_bus_type):
 *
 *   sqlite:PATH     embedded, the default (<data-dir>/bus.db): an append-only log in one SQLite
 *                   file (WAL) that several processes on one host share. Consumers are woken
 *                   through inotify on the WAL the moment a publisher commits, with a slow
 *                   safety poll behind it.
 *   nats://H:P[,..] NATS JetStream through nats.c: one stream (subjects "loom.>"), a durable
 *                   pull consumer per group, Nats-Msg-Id dedup, explicit acks, AckWait.
 *
 * The contract, the same on both (tests/unit/test_bus.c runs one suite against each):
 *  - Publishing appends events in order and returns once the bus holds them durably. The
 *    event id is the dedup key: publishing an id the bus already holds (sqlite: while it is
 *    retained; nats: within the stream's duplicate window, 2 minutes by default) is a no-op.
 *  - A group is a durable named consumer: every event matching its filter is delivered to one
 *    member of the group, at least once, in log order per member (a retried event comes later).
 *    Its position survives restarts. A new group starts at the beginning or at the end.
 *  - A delivery is settled with a verdict: ack (done), retry (again after a backoff), park
 *    (poison: into the group's dead letter). An unsettled delivery (a crash, a handler slower
 *    than ack_wait) is delivered again after ack_wait. After max_deliver attempts an event is
 *    parked instead of retried forever; parked events can be listed and replayed to the group.
 *  - A group can be moved to a position (a sequence or a time) to replay the log.
 * Effects are exactly-once only when consumers make them so: see loom/outbox.h.
 *
 * Threads. Publishing blocks (a SQLite commit, or JetStream acks): call it from the work pool
 * or a thread of your own, never from a loop thread. Every subscription has a thread of its
 * own (its pump) that waits for events, claims them in batches and settles verdicts. Handlers
 * run either on that thread (no loop given: they may block, e.g. on a store transaction, and
 * one subscription handles one batch at a time, in order) or on a loom loop (a loop given:
 * they must not block; they may answer LOOM_BUS_LATER and settle from any thread later, e.g.
 * after a job on the work pool). Why not the work pool for the pump: the pool is small and
 * shared with request work, and a pump waits on the broker for long stretches; a thread of its
 * own waits without starving anything, and several subscriptions to one group give
 * parallelism.
 */
#ifndef LOOM_BUS_H
#define LOOM_BUS_H

#include <loom/core.h>
#include <loom/loop.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct loom_bus;
struct loom_bus_sub;
struct loom_metrics;

/* Ceilings. */
#define LOOM_BUS_SUBJECT_MAX  256  /* bytes of a subject or a filter */
#define LOOM_BUS_GROUP_MAX    64   /* bytes of a group name */
#define LOOM_BUS_INSTANCE_MAX 128  /* bytes of an instance string, NUL included */
#define LOOM_BUS_REASON_MAX   256  /* bytes of a verdict's reason, NUL included */
#define LOOM_BUS_MAX_BATCH    4096 /* events in one publish or one fetch */

struct loom_bus_options {
    uint64_t publish_timeout; /* ns a publish waits for the broker's acks [5 s] */
    const char *client_name;  /* for the broker's connection list and logs ["loom"] */
};

/*
 * Open the bus at `url` ("sqlite:PATH[?opts]" or "nats://HOST:PORT[,HOST:PORT...][?opts]"; see
 * docs/events.md for the options: retention max_age and max_bytes on both, stream name on
 * NATS). opts may be NULL. The sqlite backend creates the file; the nats backend connects and
 * keeps reconnecting forever in the background when the server goes away, and creates its
 * streams (idempotently) once it can. Returns LOOM_EINVAL for a bad URL, LOOM_EIO or
 * LOOM_ECONNECT with a message; the caller frees *out with loom_bus_close.
 */
loom_err loom_bus_open(const char *url, const struct loom_bus_options *opts, struct loom_bus **out,
                       struct loom_error *err);

/* Close the bus. Every subscription must have been stopped. */
void loom_bus_close(struct loom_bus *bus);

/* "sqlite" or "nats". */
const char *loom_bus_backend(const struct loom_bus *bus);

/*
 * Which incarnation of the broker holds what was published: a string that changes when the
 * broker restarts and may have lost writes it had acknowledged but not yet flushed (the NATS
 * server's id, new at every start; for SQLite, an id made when the file was created, since a
 * commit is durable). Empty when unknown (not connected). The outbox compares it to decide
 * what to publish again. Thread-safe.
 */
void loom_bus_instance(struct loom_bus *bus, char out[LOOM_BUS_INSTANCE_MAX]);

/* ---- publishing ---- */

/* One event to publish. All borrowed for the call. */
struct loom_bus_event {
    struct loom_str id;      /* the dedup key: the CloudEvent's id (1..128 printable bytes) */
    struct loom_str subject; /* where it is routed: the event type, optionally followed by more
                                tokens ("loom.data.ingested.transactions") */
    struct loom_str data;    /* the encoded CloudEvent (at most 1 MiB) */
};

/*
 * Append `n` events (at most LOOM_BUS_MAX_BATCH) in order; return once the bus holds all of
 * them durably (sqlite: committed in one transaction; nats: every publish acknowledged).
 * Duplicates of ids the bus holds are dropped silently. On error some of the events may have
 * been appended: publish the same batch again (the ids make it safe). LOOM_EINVAL for a bad
 * id or subject, LOOM_ETOOBIG for an oversized event or batch, LOOM_ETIMEDOUT or
 * LOOM_EUNAVAIL when the broker did not answer, LOOM_EIO. Blocking; thread-safe.
 */
loom_err loom_bus_publish(struct loom_bus *bus, const struct loom_bus_event *evs, size_t n,
                          struct loom_error *err);

/* Subjects are dot-separated tokens of [A-Za-z0-9_-] starting with "loom."; filters are the
 * same with NATS wildcards: "*" matches one token, a last ">" one or more. */
bool loom_bus_subject_valid(struct loom_str subject);
bool loom_bus_filter_valid(struct loom_str filter);
bool loom_bus_subject_match(struct loom_str filter, struct loom_str subject);

/* Group names: 1..64 bytes of [A-Za-z0-9_-]. */
bool loom_bus_group_valid(struct loom_str group);

/* ---- consuming ---- */

enum loom_bus_verdict {
    LOOM_BUS_ACK = 0, /* handled: never delivered to this group again */
    LOOM_BUS_RETRY,   /* failed but may succeed later: delivered again after a backoff, and
                         parked once it has been tried max_deliver times */
    LOOM_BUS_PARK,    /* will never succeed (poison): parked in the group's dead letter now */
    LOOM_BUS_LATER,   /* the handler settles it later with loom_bus_msg_settle */
};

/* A delivered event. The slices stay valid until the message is settled. */
struct loom_bus_msg {
    struct loom_str id; /* the event id (the dedup key it was published with) */
    struct loom_str subject;
    struct loom_str data; /* the encoded CloudEvent */
    uint64_t seq;         /* its position in the log (stream sequence) */
    int64_t time_ns;      /* when the bus stored it (wall clock) */
    uint32_t attempt;     /* 1 on the first delivery to this group */
    /* Set by batch handlers for each message (it starts as LOOM_BUS_ACK). */
    enum loom_bus_verdict verdict;
    uint64_t retry_delay; /* with RETRY: ns until the next attempt (0: the group's backoff) */
    char reason[LOOM_BUS_REASON_MAX]; /* with RETRY or PARK: why (kept with a parked event) */
    /* private */
    struct loom_bus_sub *sub;
    struct loom_bus_msg *next;
    void *impl;
    unsigned flags;
};

/* Where a new group starts reading. */
enum loom_bus_start {
    LOOM_BUS_START_FIRST = 0, /* the oldest event the bus holds */
    LOOM_BUS_START_NEW,       /* events published after the group is created */
};

/* One event at a time: return the verdict (LOOM_BUS_LATER to settle it later). */
typedef enum loom_bus_verdict (*loom_bus_msg_fn)(struct loom_bus_msg *msg, void *arg);
/* A batch at a time (in log order): set msgs[i]->verdict for each (default ACK). */
typedef void (*loom_bus_batch_fn)(struct loom_bus_msg *const *msgs, size_t n, void *arg);

/* A subscription. Zero fields take the defaults in brackets. */
struct loom_bus_sub_options {
    const char *group;         /* the durable group (required) */
    const char *filter;        /* subjects the group receives ["loom.>": everything] */
    enum loom_bus_start start; /* for a group that does not exist yet [FIRST] */
    uint32_t max_deliver;      /* attempts before an event is parked [5] */
    uint64_t ack_wait;         /* ns before an unsettled delivery is delivered again [30 s] */
    uint64_t retry_delay;      /* ns before the 1st retry; doubles per attempt, up to 1 min
                                  [1 s] */
    size_t batch;              /* most events fetched and handled at once [64] */
    size_t max_inflight;       /* most events delivered but not settled [4 * batch] */
    /* NULL: handlers run on the subscription's own thread and may block. Else: on this loop's
     * thread, and must not block. */
    struct loom_loop *loop;
    loom_bus_msg_fn on_msg; /* exactly one of on_msg and on_batch */
    loom_bus_batch_fn on_batch;
    void *arg;
    /* Optional metrics: loom_<owner>_bus_delivered_total{group}, _settled_total{group,verdict}
     * and _lag_events{group} (events the group has yet to settle). */
    struct loom_metrics *metrics;
    const char *metrics_owner;
};

/*
 * Join group `opts->group` (creating it, idempotently, if it does not exist; an existing
 * group keeps its position and takes the new ack_wait and max_deliver) and start delivering.
 * Returns LOOM_EINVAL for bad options, LOOM_ECONFLICT if the group exists with another filter,
 * or a backend error; then nothing was started. Free with loom_bus_sub_stop.
 */
loom_err loom_bus_subscribe(struct loom_bus *bus, const struct loom_bus_sub_options *opts,
                            struct loom_bus_sub **out, struct loom_error *err);

/*
 * Stop delivering, wait for a handler running on the pump thread, settle what was settled,
 * and free the subscription. Deliveries not yet settled are released unsettled (delivered
 * again after ack_wait); settling them afterwards is a no-op. In loop mode, call it from
 * another thread than the loop's, or once the loop has stopped. Blocking.
 */
void loom_bus_sub_stop(struct loom_bus_sub *sub);

/* Settle a message a handler answered LOOM_BUS_LATER for (`reason` may be NULL). Any thread,
 * exactly once; the message must not be touched afterwards. */
void loom_bus_msg_settle(struct loom_bus_msg *msg, enum loom_bus_verdict verdict,
                         const char *reason);

/* ---- groups: state, replay, dead letter ---- */

struct loom_bus_group_info {
    uint64_t head;    /* the last sequence in the log */
    uint64_t next;    /* the next sequence the group will read */
    uint64_t pending; /* delivered, not yet settled, or waiting for a retry */
    uint64_t lag;     /* events the group has yet to settle (pending + not yet read) */
    uint64_t parked;  /* events in the group's dead letter */
};

/* Call fn(name, arg) for every group the bus knows; a non-OK return stops and is returned.
 * Blocking. */
typedef loom_err (*loom_bus_group_fn)(const char *name, void *arg);
loom_err loom_bus_group_list(struct loom_bus *bus, loom_bus_group_fn fn, void *arg,
                             struct loom_error *err);

/* The state of a group. LOOM_ENOTFOUND if there is no such group. Blocking. */
loom_err loom_bus_group_info(struct loom_bus *bus, const char *group,
                             struct loom_bus_group_info *out, struct loom_error *err);

/*
 * Move a group to a position, to replay the log: the first event with sequence >= `seq` if
 * seq > 0, else the first stored at or after `time_ns` (wall clock). Pending deliveries are
 * forgotten. Members keep running (on NATS the durable consumer is recreated and members
 * rebind to it). LOOM_ENOTFOUND for an unknown group. Blocking.
 */
loom_err loom_bus_group_reset(struct loom_bus *bus, const char *group, uint64_t seq,
                              int64_t time_ns, struct loom_error *err);

/* A parked event, for loom_bus_parked_list. Slices valid during the callback. */
struct loom_bus_parked {
    uint64_t pseq; /* its position in the dead letter (a cursor for listing) */
    uint64_t seq;  /* its position in the log when it was parked */
    struct loom_str id, subject, data;
    struct loom_str reason;
    uint32_t deliveries; /* attempts made */
    int64_t parked_ns;   /* when (wall clock) */
};

typedef loom_err (*loom_bus_parked_fn)(const struct loom_bus_parked *p, void *arg);

/* Call fn for up to `limit` parked events of `group` with pseq > `after`, in order. A
 * non-OK return from fn stops the listing and is returned. Blocking. */
loom_err loom_bus_parked_list(struct loom_bus *bus, const char *group, uint64_t after, size_t limit,
                              loom_bus_parked_fn fn, void *arg, struct loom_error *err);

/*
 * Deliver parked events of `group` again (to that group only), as new deliveries with fresh
 * attempts: the one at `pseq`, or all of them with pseq 0. They leave the dead letter.
 * *count (may be NULL) gets how many. LOOM_ENOTFOUND if pseq names none. Blocking.
 */
loom_err loom_bus_parked_replay(struct loom_bus *bus, const char *group, uint64_t pseq,
                                size_t *count, struct loom_error *err);

/* ---- backends ---- */

/*
 * A backend: what loom_bus_* dispatch to. Functions marked (pump) are called on a
 * subscription's own thread only; the others from any thread. Backends keep their state in
 * bus->impl / sub->impl through the accessors below.
 */
struct loom_bus_type {
    const char *name;
    loom_err (*open)(struct loom_bus *bus, const char *url, struct loom_error *err);
    void (*close)(struct loom_bus *bus);
    void (*instance)(struct loom_bus *bus, char out[LOOM_BUS_INSTANCE_MAX]);
    loom_err (*publish)(struct loom_bus *bus, const struct loom_bus_event *evs, size_t n,
                        struct loom_error *err);
    /* Create or join the group of sub's options; set up what fetch needs. */
    loom_err (*sub_open)(struct loom_bus_sub *sub, struct loom_error *err);
    void (*sub_close)(struct loom_bus_sub *sub);
    /* (pump) Claim up to `max` deliveries, waiting up to `wait_ns` for the first; append them
     * to *out (a list linked by next) and return how many in *n. */
    loom_err (*fetch)(struct loom_bus_sub *sub, size_t max, uint64_t wait_ns,
                      struct loom_bus_msg **out, size_t *n, struct loom_error *err);
    /* (pump) Apply the verdicts of these messages (never LATER; RETRY carries its delay in
     * retry_delay) and free them. */
    void (*settle)(struct loom_bus_sub *sub, struct loom_bus_msg *const *msgs, size_t n);
    /* (pump) Free a message without settling it (redelivered after ack_wait). */
    void (*release)(struct loom_bus_sub *sub, struct loom_bus_msg *msg);
    /* Any thread: make a waiting fetch return soon. */
    void (*wake)(struct loom_bus_sub *sub);
    loom_err (*group_list)(struct loom_bus *bus, loom_bus_group_fn fn, void *arg,
                           struct loom_error *err);
    loom_err (*group_info)(struct loom_bus *bus, const char *group, struct loom_bus_group_info *out,
                           struct loom_error *err);
    loom_err (*group_reset)(struct loom_bus *bus, const char *group, uint64_t seq, int64_t time_ns,
                            struct loom_error *err);
    loom_err (*parked_list)(struct loom_bus *bus, const char *group, uint64_t after, size_t limit,
                            loom_bus_parked_fn fn, void *arg, struct loom_error *err);
    loom_err (*parked_replay)(struct loom_bus *bus, const char *group, uint64_t pseq, size_t *count,
                              struct loom_error *err);
};

extern const struct loom_bus_type loom_bus_sqlite;
extern const struct loom_bus_type loom_bus_nats;

/* For backends: their state, the bus's options, a subscription's bus and options. */
void *loom_bus_impl(const struct loom_bus *bus);
void loom_bus_set_impl(struct loom_bus *bus, void *impl);
const struct loom_bus_options *loom_bus_options(const struct loom_bus *bus);
void *loom_bus_sub_impl(const struct loom_bus_sub *sub);
void loom_bus_sub_set_impl(struct loom_bus_sub *sub, void *impl);
struct loom_bus *loom_bus_sub_bus(const struct loom_bus_sub *sub);
/* The subscription's options with defaults filled in (strings owned by the subscription). */
const struct loom_bus_sub_options *loom_bus_sub_options(const struct loom_bus_sub *sub);

#endif
