/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Training requested through the bus: the group "trainer" reads loom.training.requested events
 * (docs/events.md), whose data is a job spec as POST /api/v1/training-jobs takes it, and runs
 * them as jobs. Exactly once: trn_job_from_event records the event id in loom_processed in the
 * transaction that inserts the job, so a redelivered event finds its record and queues nothing,
 * and the job's id is derived from the event's, so whoever published the request can follow the
 * job at /api/v1/training-jobs/{id} without waiting for an answer. A spec that can never run
 * (malformed, an unknown dataset, a parameter libxgboost refuses) is parked in the group's dead
 * letter with the reason, to be replayed once fixed; a store failure is retried.
 *
 * Handlers run on the subscription's own thread: the checks read the store and may dry-run
 * libxgboost, which must not happen on a loop thread.
 */
#include "trainer/trainer.h"

#include <loom/event.h>
#include <loom/log.h>
#include <loom/outbox.h>
#include <loom/trace.h>

#include <stdio.h>
#include <stdlib.h>

static enum loom_bus_verdict on_request(struct loom_bus_msg *msg, void *arg)
{
    struct trn_service *trn = arg;
    if (loom_svc_is_draining(trn->svc)) {
        snprintf(msg->reason, sizeof(msg->reason), "the trainer is stopping");
        msg->retry_delay = LOOM_NS_PER_SEC;
        return LOOM_BUS_RETRY; /* a replica that stays, or this one restarted, takes it */
    }
    struct loom_arena arena;
    loom_arena_init(&arena, 0);
    struct loom_event ev;
    struct loom_error err = { 0 };
    enum loom_bus_verdict verdict = LOOM_BUS_ACK;
    if (loom_event_parse(msg->data.ptr, msg->data.len, &arena, &ev, &err)) {
        snprintf(msg->reason, sizeof(msg->reason), "not a CloudEvent: %.200s", err.msg);
        verdict = LOOM_BUS_PARK;
        goto out;
    }
    if (!ev.has_data) {
        snprintf(msg->reason, sizeof(msg->reason), "no data: the job spec is the event's data");
        verdict = LOOM_BUS_PARK;
        goto out;
    }
    /* The job runs under the trace of the request that asked for it. */
    const struct loom_trace_ctx *saved = loom_trace_current();
    if (ev.has_trace)
        loom_trace_set_current(&ev.trace);
    char job[LOOM_UUID_LEN + 1] = "", field[128] = "";
    bool duplicate = false;
    loom_err e =
        trn_job_from_event(trn, ev.id, ev.data, job, &duplicate, field, sizeof(field), &err);
    loom_trace_set_current(saved);
    if (e == LOOM_EINVAL) {
        snprintf(msg->reason, sizeof(msg->reason), "%.60s%s%.180s", field, field[0] ? ": " : "",
                 err.msg);
        LOOM_LOG_KV(LOOM_LOG_WARN, "training request refused", LOOM_KV_STR("event", ev.id),
                    LOOM_KV_CSTR("reason", msg->reason));
        verdict = LOOM_BUS_PARK;
    } else if (e) {
        snprintf(msg->reason, sizeof(msg->reason), "%.250s", err.msg);
        verdict = LOOM_BUS_RETRY;
    } else if (duplicate) {
        LOOM_LOG_KV(LOOM_LOG_DEBUG, "training request seen before", LOOM_KV_STR("event", ev.id),
                    LOOM_KV_CSTR("job", job));
    }
out:
    loom_arena_release(&arena);
    return verdict;
}

loom_err trn_events_start(struct trn_service *trn, struct loom_error *err)
{
    if (!trn->conf->events)
        return LOOM_OK;
    loom_err e = loom_outbox_migrate(trn->store, err); /* loom_processed */
    if (e)
        return loom_error_prefix(err, "trainer store");
    char *url = loom_svc_bus_url(trn->svc, NULL);
    struct loom_bus_options bo = { .client_name = "loom-trainer" };
    e = loom_bus_open(url, &bo, &trn->bus, err);
    free(url);
    if (e) {
        trn->bus = NULL;
        return loom_error_prefix(err, "trainer bus");
    }
    struct loom_bus_sub_options o = {
        .group = "trainer",
        .filter = "loom.training.requested",
        .batch = 8,
        .on_msg = on_request,
        .arg = trn,
        .metrics = loom_metrics_global(),
        .metrics_owner = "trainer",
    };
    e = loom_bus_subscribe(trn->bus, &o, &trn->sub, err);
    if (e) {
        trn->sub = NULL;
        loom_bus_close(trn->bus);
        trn->bus = NULL;
        return loom_error_prefix(err, "trainer: following loom.training.requested");
    }
    LOOM_LOG_KV(LOOM_LOG_INFO, "following training requests",
                LOOM_KV_CSTR("bus", loom_bus_backend(trn->bus)), LOOM_KV_CSTR("group", "trainer"));
    return LOOM_OK;
}

void trn_events_stop(struct trn_service *trn)
{
    if (trn->sub)
        loom_bus_sub_stop(trn->sub);
    trn->sub = NULL;
    if (trn->bus)
        loom_bus_close(trn->bus);
    trn->bus = NULL;
}
