/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Exactly-once effects over an at-least-once bus: the transactional outbox on the producing
 * side and idempotent consumers on the other, both in the service's own store (loom/store.h).
 *
 * Producers. A service writes its state change and the events describing it in ONE store
 * transaction: loom_outbox_add(db, ...) inside loom_store_tx inserts the event into the table
 * loom_outbox. Either both commit or neither does, so no event is lost when the process dies
 * after its commit and none is published for a change that was rolled back. A relay (a thread
 * per store, started with loom_outbox_relay_start) publishes unsent rows in order, marks them
 * sent, and retries with a backoff while the bus is away; kicking it after a commit makes it
 * publish at once rather than at its next poll.
 *
 * Why sent rows are kept. A broker may acknowledge a publish and then lose it: nats-server 2.9
 * flushes JetStream to disk every 60 s and has no option to sync each write, so a machine that
 * crashes loses up to a minute of acknowledged events. The relay therefore keeps sent rows for
 * `keep` (5 minutes by default, well over the flush interval) together with the broker
 * incarnation that acknowledged them (loom_bus_instance: the NATS server's id, new at each
 * start). When the relay sees another incarnation, it publishes again, in order, every kept
 * row the old one acknowledged. Rows the restarted broker still holds are dropped by its
 * duplicate window (2 minutes, keyed on the event id) or, when older than that, delivered a
 * second time, and the consumers' idempotence absorbs them. The SQLite bus commits each
 * publish durably, so its incarnation only changes if its file is recreated.
 *
 * Consumers. loom_consume_once runs the consumer's effect in a store transaction together with
 * an insert of (consumer, event id) into loom_processed; a redelivered event finds its row and
 * changes nothing. loom_consume_batch does the same for a batch of deliveries in one
 * transaction (falling back to one transaction per event to isolate a failing one) and sets
 * each delivery's verdict, so a bus handler is one call. Processed rows must outlive every
 * possible redelivery: keep them longer than the bus's retention (loom_outbox_prune).
 *
 * Wiring a service (docs/events.md shows it in full): call loom_outbox_migrate in init, start
 * a relay on the service's store and bus, call loom_outbox_add_event in the transactions that
 * change state, and loom_outbox_relay_kick after they commit; consumers subscribe with
 * loom_bus_subscribe and call loom_consume_batch from their batch handler.
 */
#ifndef LOOM_OUTBOX_H
#define LOOM_OUTBOX_H

#include <loom/bus.h>
#include <loom/event.h>
#include <loom/store.h>

struct loom_metrics;
struct loom_outbox_relay;

/* Create the tables loom_outbox and loom_processed in `store` (migrations of the component
 * "loom_outbox"; safe to call from several processes). Blocking. */
loom_err loom_outbox_migrate(struct loom_store *store, struct loom_error *err);

/*
 * Inside a transaction on `db`: queue `ev` for publishing once the transaction commits. Adding
 * an id already in the outbox changes nothing (a retried command adds its event once). Errors
 * are the store's (the caller's transaction should roll back), or LOOM_EINVAL / LOOM_ETOOBIG
 * for an event the bus would refuse.
 */
loom_err loom_outbox_add(struct loom_db *db, const struct loom_bus_event *ev,
                         struct loom_error *err);

/*
 * Build a CloudEvent (loom_event_build) and queue it. The bus subject is the event type, or
 * `subject` when given (the type followed by more tokens, e.g. a stream name); `id_out` (may
 * be NULL) gets the event's id, LOOM_EVENT_ID_MAX + 1 bytes.
 */
loom_err loom_outbox_add_event(struct loom_db *db, const struct loom_event_spec *spec,
                               const char *subject, char *id_out, struct loom_error *err);

struct loom_outbox_relay_options {
    struct loom_store *store; /* borrowed: must outlive the relay */
    struct loom_bus *bus;     /* borrowed: must outlive the relay */
    uint64_t interval;        /* ns between polls when nobody kicks [200 ms] */
    uint64_t keep;            /* ns sent rows are kept, and republished to a restarted
                                 broker [5 min] */
    size_t batch;             /* rows per publish [512] */
    /* Optional: loom_<owner>_outbox_pending_events, _published_total, _republished_total and
     * _publish_seconds. */
    struct loom_metrics *metrics;
    const char *metrics_owner;
};

/* Start a relay thread publishing the outbox of opts->store to opts->bus. Free with
 * loom_outbox_relay_stop. LOOM_EINVAL without a store or bus, LOOM_EIO if no thread. */
loom_err loom_outbox_relay_start(const struct loom_outbox_relay_options *opts,
                                 struct loom_outbox_relay **out, struct loom_error *err);

/* Publish soon (after a commit that added events). Thread-safe, never blocks. */
void loom_outbox_relay_kick(struct loom_outbox_relay *r);

/* Wait until no row is unsent, or `timeout_ns` passes (LOOM_ETIMEDOUT). Blocking. */
loom_err loom_outbox_relay_flush(struct loom_outbox_relay *r, uint64_t timeout_ns,
                                 struct loom_error *err);

/* Stop the thread (waiting for a pass in progress) and free the relay. Unsent rows stay in the
 * outbox for the next start. Blocking. */
void loom_outbox_relay_stop(struct loom_outbox_relay *r);

/* ---- idempotent consumers ---- */

/*
 * Run fn(db, arg, err) in a store transaction together with recording (consumer, event_id) in
 * loom_processed. If the pair is already recorded, fn is not run, nothing changes, and
 * *duplicate (may be NULL) is set. Returns fn's error (rolled back) or the store's.
 */
loom_err loom_consume_once(struct loom_store *store, const char *consumer, struct loom_str event_id,
                           loom_tx_fn fn, void *arg, bool *duplicate, struct loom_error *err);

/* A consumer's effect for one delivery, inside the caller's transaction. Return LOOM_OK, or
 * LOOM_EINVAL / LOOM_EPARSE / LOOM_EUNSUPPORTED for an event that can never be applied
 * (parked at once), or any other error for a failure worth retrying. */
typedef loom_err (*loom_consume_fn)(struct loom_db *db, struct loom_bus_msg *msg, void *arg,
                                    struct loom_error *err);

/*
 * Apply `n` deliveries exactly once: one transaction that records each (consumer, id) and runs
 * fn for those not seen before; if it fails, each delivery again in a transaction of its own.
 * Sets every msgs[i]->verdict: ACK (applied, or applied before), PARK (fn said it never can
 * be), RETRY (fn or the store failed; the reason is in msgs[i]->reason). For a bus batch
 * handler (loom_bus_batch_fn); blocking.
 */
void loom_consume_batch(struct loom_store *store, const char *consumer,
                        struct loom_bus_msg *const *msgs, size_t n, loom_consume_fn fn, void *arg);

/* Delete processed records older than `max_age_ns` (keep them longer than the bus retains
 * events) and sent outbox rows older than `keep_ns`. Blocking; the relay calls it every
 * minute with its `keep` and 8 days (the bus keeps events 7 days by default). */
loom_err loom_outbox_prune(struct loom_store *store, uint64_t max_age_ns, uint64_t keep_ns,
                           struct loom_error *err);

#endif
