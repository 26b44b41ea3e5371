/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The distributed bus backend: NATS JetStream through nats.c. One stream (default "LOOM",
 * subjects "loom.>", file storage, a duplicate window of 2 minutes) holds the log; a second,
 * "<stream>_DLQ" (subjects "loomdlq.<stream>.<group>", direct get allowed), holds each group's
 * parked events. Both are created at start and again after every reconnect, idempotently
 * (updated when their limits changed), since a server that lost its store comes back empty.
 *
 * Publishing sends a batch asynchronously with Nats-Msg-Id set to each event's id, then waits
 * for every publish ack (one JetStream context per concurrent publisher, so each waits for its
 * own batch). A group is a durable pull consumer with explicit acks; AckWait is the group's
 * ack_wait, and MaxDeliver is set a little above the group's max_deliver as a backstop: the
 * pump parks an event itself, publishing it to the dead-letter subject before acking it, so
 * that parking is the same on both backends. Pull requests are made by hand on a private inbox
 * and kept in flight ahead of the handlers, up to the group's max_inflight (see nb_fetch), so
 * an idle consumer sees a new event the moment it is stored and a busy one never waits for a
 * round trip between batches; acks, naks with a delay and terms are published to each
 * message's ack subject.
 *
 * Replays of parked events are published again on their original subject with a Loom-Group
 * header; other groups acknowledge and skip them, so only the parking group sees them again.
 * The broker's incarnation (loom_bus_instance) is the server id, which a NATS server draws
 * anew at every start: the outbox republishes what a restarted server may have lost.
 */
#include <loom/bus.h>
#include <loom/event.h>
#include <loom/log.h>

#include <errno.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct pubctx {
    jsCtx *js;
    struct pubctx *next;
    pthread_mutex_t mu;
    int errors;
    char first_error[160];
};

struct nb_bus {
    natsConnection *nc;
    jsCtx *js; /* for API calls (each is a request/reply: safe from any thread) */
    char *stream, *dlq_stream, *dlq_prefix;
    int64_t max_age_ns, max_bytes, dup_window_ns, dlq_max_age_ns;
    int64_t replicas;
    int64_t timeout_ms;
    pthread_mutex_t mu; /* streams_ok, closing, closed, the free contexts */
    pthread_cond_t closed_cond;
    bool streams_ok;
    bool closing;
    bool closed; /* the connection's last callback has run */
    struct pubctx *free_ctx;
    atomic_uint conn_gen; /* bumped at every (re)connect: the pull requests out are gone */
};

/* A pull request lives this long on the server; one neither answered nor used up this long
 * after it expired is taken for lost. */
#define PULL_EXPIRES (5 * LOOM_NS_PER_SEC)
#define PULL_GRACE   (2 * LOOM_NS_PER_SEC)

struct nb_sub {
    natsSubscription *inbox; /* <inbox>.>: deliveries, the server's answers, wake-ups */
    natsInbox *inbox_subject;
    char *wake_subject; /* <inbox>.w */
    char *next_subject; /* $JS.API.CONSUMER.MSG.NEXT.<stream>.<group> */
    char *dlq_subject;
    /* Flow control (pump thread): held + credits <= max_inflight, so the server never has
     * more deliveries out to this member than its handlers may hold. */
    size_t held;            /* handed to the pump and not settled yet */
    size_t credits;         /* asked for by live pull requests and not received yet */
    uint64_t req_seq;       /* the last pull request's number (in its reply subject) */
    uint64_t live_from;     /* answers to requests numbered below this are ignored */
    uint64_t last_expiry;   /* when the newest live request expires (monotonic ns) */
    unsigned conn_gen;      /* the connection the live requests went out on */
    uint64_t missing_since; /* the consumer vanished (a reset): when we first noticed */
};

struct nb_msg {
    struct loom_bus_msg m;
    natsMsg *nm;
};

static loom_err nats_error(natsStatus s, jsErrCode jerr, struct loom_error *err, const char *what)
{
    loom_err code = LOOM_EIO;
    if (s == NATS_TIMEOUT)
        code = LOOM_ETIMEDOUT;
    else if (s == NATS_NO_SERVER || s == NATS_CONNECTION_CLOSED || s == NATS_NOT_YET_CONNECTED ||
             s == NATS_CONNECTION_DISCONNECTED || s == NATS_NO_RESPONDERS)
        code = LOOM_EUNAVAIL;
    else if (s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr || jerr == JSStreamNotFoundErr)
        code = LOOM_ENOTFOUND;
    const char *last = nats_GetLastError(NULL);
    return loom_error_set(err, code, "bus: %s: %s%s%s (%d)", what, natsStatus_GetText(s),
                          last ? ": " : "", last ? last : "", (int)jerr);
}

/* ---- connection and streams ---- */

static void on_reconnected(natsConnection *nc, void *closure)
{
    LOOM_UNUSED(nc);
    struct nb_bus *b = closure;
    pthread_mutex_lock(&b->mu);
    b->streams_ok = false; /* the server may have come back without its store */
    pthread_mutex_unlock(&b->mu);
    atomic_fetch_add(&b->conn_gen, 1);
    loom_log_info("bus: reconnected to NATS");
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    LOOM_UNUSED(nc);
    struct nb_bus *b = closure;
    pthread_mutex_lock(&b->mu);
    bool closing = b->closing;
    pthread_mutex_unlock(&b->mu);
    if (!closing)
        loom_log_warn("bus: disconnected from NATS; reconnecting");
}

static void on_connected(natsConnection *nc, void *closure)
{
    on_reconnected(nc, closure);
}

static void on_closed(natsConnection *nc, void *closure)
{
    LOOM_UNUSED(nc);
    struct nb_bus *b = closure;
    pthread_mutex_lock(&b->mu);
    b->closed = true;
    pthread_cond_signal(&b->closed_cond);
    pthread_mutex_unlock(&b->mu);
}

static loom_err add_stream(struct nb_bus *b, const char *name, const char *subject, int64_t max_age,
                           int64_t max_bytes, bool direct, struct loom_error *err)
{
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    const char *subjects[] = { subject };
    cfg.Name = name;
    cfg.Subjects = subjects;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    cfg.Retention = js_LimitsPolicy;
    cfg.MaxAge = max_age;
    cfg.MaxBytes = max_bytes > 0 ? max_bytes : -1;
    cfg.Duplicates = b->dup_window_ns;
    cfg.Replicas = b->replicas;
    cfg.AllowDirect = direct;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_AddStream(&si, b->js, &cfg, NULL, &jerr);
    if (s != NATS_OK && jerr == JSStreamNameExistErr)
        s = js_UpdateStream(&si, b->js, &cfg, NULL, &jerr);
    jsStreamInfo_Destroy(si);
    if (s != NATS_OK)
        return nats_error(s, jerr, err, "create stream");
    return LOOM_OK;
}

static loom_err ensure_streams(struct nb_bus *b, struct loom_error *err)
{
    pthread_mutex_lock(&b->mu);
    bool ok = b->streams_ok;
    pthread_mutex_unlock(&b->mu);
    if (ok)
        return LOOM_OK;
    if (natsConnection_Status(b->nc) != NATS_CONN_STATUS_CONNECTED)
        return loom_error_set(err, LOOM_EUNAVAIL, "bus: not connected to NATS");
    char dlq_subjects[LOOM_BUS_SUBJECT_MAX];
    snprintf(dlq_subjects, sizeof(dlq_subjects), "%s.>", b->dlq_prefix);
    loom_err e = add_stream(b, b->stream, "loom.>", b->max_age_ns, b->max_bytes, false, err);
    if (!e)
        e = add_stream(b, b->dlq_stream, dlq_subjects, b->dlq_max_age_ns, 0, true, err);
    if (!e) {
        pthread_mutex_lock(&b->mu);
        b->streams_ok = true;
        pthread_mutex_unlock(&b->mu);
    }
    return e;
}

static loom_err parse_url(struct nb_bus *b, const char *url, char **servers, struct loom_error *err)
{
    struct loom_str u = loom_str_cstr(url);
    struct loom_str hosts;
    struct loom_str query = loom_str_cut(u, '?', &hosts);
    *servers = loom_str_dup(hosts);
    const char *stream = "LOOM";
    char sbuf[64] = "";
    while (query.len) {
        struct loom_str kv;
        query = loom_str_cut(query, '&', &kv);
        struct loom_str k;
        struct loom_str v = loom_str_cut(kv, '=', &k);
        uint64_t x;
        int64_t i;
        if (loom_str_eq_cstr(k, "max_age") && !loom_str_to_duration_ns(v, &x)) {
            b->max_age_ns = (int64_t)x;
        } else if (loom_str_eq_cstr(k, "max_bytes") && !loom_str_to_size(v, &x)) {
            b->max_bytes = (int64_t)x;
        } else if (loom_str_eq_cstr(k, "duplicates") && !loom_str_to_duration_ns(v, &x) && x) {
            b->dup_window_ns = (int64_t)x;
        } else if (loom_str_eq_cstr(k, "replicas") && !loom_str_to_i64(v, &i) && i >= 1 && i <= 5) {
            b->replicas = i;
        } else if (loom_str_eq_cstr(k, "stream") && loom_bus_group_valid(v) && v.len < 48) {
            snprintf(sbuf, sizeof(sbuf), "%.*s", LOOM_STR_FMT(v));
            stream = sbuf;
        } else {
            return loom_error_set(err, LOOM_EINVAL,
                                  "bus URL option \"%.*s\" is unknown or malformed (stream, "
                                  "max_age, max_bytes, duplicates, replicas)",
                                  LOOM_STR_FMT(kv));
        }
    }
    b->stream = loom_strdup(stream);
    size_t n = strlen(stream);
    b->dlq_stream = loom_malloc(n + 5);
    snprintf(b->dlq_stream, n + 5, "%s_DLQ", stream);
    b->dlq_prefix = loom_malloc(n + 9);
    snprintf(b->dlq_prefix, n + 9, "loomdlq.%s", stream);
    return LOOM_OK;
}

static void nb_free(struct nb_bus *b)
{
    for (struct pubctx *c = b->free_ctx, *next; c; c = next) {
        next = c->next;
        jsCtx_Destroy(c->js);
        pthread_mutex_destroy(&c->mu);
        free(c);
    }
    jsCtx_Destroy(b->js);
    pthread_mutex_lock(&b->mu);
    b->closing = true;
    pthread_mutex_unlock(&b->mu);
    if (b->nc) {
        /* nats.c runs the connection's callbacks on a thread of its own, after Close has
         * returned (on_disconnected among them): wait for the last one, on_closed, before
         * freeing what they touch. Bounded, in case a version of nats.c does not call it. */
        natsConnection_Close(b->nc);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 5;
        pthread_mutex_lock(&b->mu);
        while (!b->closed)
            if (pthread_cond_timedwait(&b->closed_cond, &b->mu, &until) == ETIMEDOUT)
                break;
        pthread_mutex_unlock(&b->mu);
        natsConnection_Destroy(b->nc);
    }
    pthread_cond_destroy(&b->closed_cond);
    pthread_mutex_destroy(&b->mu);
    free(b->stream);
    free(b->dlq_stream);
    free(b->dlq_prefix);
    free(b);
}

static loom_err nb_open(struct loom_bus *bus, const char *url, struct loom_error *err)
{
    struct nb_bus *b = loom_new(struct nb_bus);
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->closed_cond, NULL);
    b->max_age_ns = (int64_t)7 * 24 * 3600 * (int64_t)LOOM_NS_PER_SEC;
    b->dlq_max_age_ns = (int64_t)30 * 24 * 3600 * (int64_t)LOOM_NS_PER_SEC;
    b->dup_window_ns = (int64_t)120 * (int64_t)LOOM_NS_PER_SEC;
    b->replicas = 1;
    const struct loom_bus_options *o = loom_bus_options(bus);
    b->timeout_ms = (int64_t)(o->publish_timeout / LOOM_NS_PER_MS);
    char *servers = NULL;
    natsOptions *opts = NULL;
    loom_err e = parse_url(b, url, &servers, err);
    if (e)
        goto out;
    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK)
        s = natsOptions_SetURL(opts, servers);
    if (s == NATS_OK)
        s = natsOptions_SetName(opts, o->client_name);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(opts, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(opts, 100);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(opts, 2000);
    if (s == NATS_OK)
        s = natsOptions_SetRetryOnFailedConnect(opts, true, on_connected, b);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(opts, on_reconnected, b);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(opts, on_disconnected, b);
    if (s == NATS_OK)
        s = natsOptions_SetClosedCB(opts, on_closed, b);
    if (s != NATS_OK) {
        e = nats_error(s, 0, err, "options");
        goto out;
    }
    s = natsConnection_Connect(&b->nc, opts);
    if (s != NATS_OK && s != NATS_NOT_YET_CONNECTED) {
        e = nats_error(s, 0, err, "connect");
        goto out;
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = b->timeout_ms;
    if ((s = natsConnection_JetStream(&b->js, b->nc, &jo)) != NATS_OK) {
        e = nats_error(s, 0, err, "JetStream");
        goto out;
    }
    struct loom_error ignored = { 0 };
    if (ensure_streams(b, &ignored)) /* not fatal: again before the first use */
        LOOM_LOG_KV(LOOM_LOG_WARN, "bus: NATS streams not ready yet",
                    LOOM_KV_CSTR("error", ignored.msg));
out:
    natsOptions_Destroy(opts);
    free(servers);
    if (e) {
        nb_free(b);
        return e;
    }
    loom_bus_set_impl(bus, b);
    return LOOM_OK;
}

static void nb_close(struct loom_bus *bus)
{
    nb_free(loom_bus_impl(bus));
}

static void nb_instance(struct loom_bus *bus, char out[LOOM_BUS_INSTANCE_MAX])
{
    struct nb_bus *b = loom_bus_impl(bus);
    char id[LOOM_BUS_INSTANCE_MAX - 8];
    if (natsConnection_Status(b->nc) == NATS_CONN_STATUS_CONNECTED &&
        natsConnection_GetConnectedServerId(b->nc, id, sizeof(id)) == NATS_OK)
        snprintf(out, LOOM_BUS_INSTANCE_MAX, "nats:%s", id);
}

/* ---- publishing ---- */

static void on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    LOOM_UNUSED(js);
    LOOM_UNUSED(pa);
    struct pubctx *c = closure;
    if (pae) {
        pthread_mutex_lock(&c->mu);
        if (c->errors++ == 0)
            snprintf(c->first_error, sizeof(c->first_error), "%s (%d)",
                     pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err), (int)pae->ErrCode);
        pthread_mutex_unlock(&c->mu);
    }
    natsMsg_Destroy(msg);
}

static struct pubctx *take_ctx(struct nb_bus *b, struct loom_error *err)
{
    pthread_mutex_lock(&b->mu);
    struct pubctx *c = b->free_ctx;
    if (c)
        b->free_ctx = c->next;
    pthread_mutex_unlock(&b->mu);
    if (c)
        return c;
    c = loom_new(struct pubctx);
    pthread_mutex_init(&c->mu, NULL);
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = b->timeout_ms;
    jo.PublishAsync.AckHandler = on_pub_ack;
    jo.PublishAsync.AckHandlerClosure = c;
    jo.PublishAsync.MaxPending = LOOM_BUS_MAX_BATCH;
    natsStatus s = natsConnection_JetStream(&c->js, b->nc, &jo);
    if (s != NATS_OK) {
        nats_error(s, 0, err, "JetStream");
        pthread_mutex_destroy(&c->mu);
        free(c);
        return NULL;
    }
    return c;
}

static void give_ctx(struct nb_bus *b, struct pubctx *c)
{
    pthread_mutex_lock(&b->mu);
    c->next = b->free_ctx;
    b->free_ctx = c;
    pthread_mutex_unlock(&b->mu);
}

static loom_err nb_publish(struct loom_bus *bus, const struct loom_bus_event *evs, size_t n,
                           struct loom_error *err)
{
    struct nb_bus *b = loom_bus_impl(bus);
    loom_err e = ensure_streams(b, err);
    if (e)
        return e;
    struct pubctx *c = take_ctx(b, err);
    if (!c)
        return LOOM_EIO;
    c->errors = 0;
    c->first_error[0] = '\0';
    natsStatus s = NATS_OK;
    char subject[LOOM_BUS_SUBJECT_MAX + 1], id[136];
    for (size_t i = 0; i < n && s == NATS_OK; i++) {
        snprintf(subject, sizeof(subject), "%.*s", LOOM_STR_FMT(evs[i].subject));
        snprintf(id, sizeof(id), "%.*s", LOOM_STR_FMT(evs[i].id));
        natsMsg *m = NULL;
        s = natsMsg_Create(&m, subject, NULL, evs[i].data.ptr, (int)evs[i].data.len);
        if (s == NATS_OK) {
            jsPubOptions po;
            jsPubOptions_Init(&po);
            po.MsgId = id;
            s = js_PublishMsgAsync(c->js, &m, &po);
        }
        natsMsg_Destroy(m); /* NULL when the library took it */
    }
    if (s == NATS_OK) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = b->timeout_ms;
        s = js_PublishAsyncComplete(c->js, &po);
    }
    if (s != NATS_OK) {
        e = nats_error(s, 0, err, "publish");
        natsMsgList pending;
        if (js_PublishAsyncGetPendingList(&pending, c->js) == NATS_OK)
            natsMsgList_Destroy(&pending);
    } else if (c->errors) {
        e = loom_error_set(err, LOOM_EIO, "bus: %d of %zu publishes failed: %s", c->errors, n,
                           c->first_error);
    }
    give_ctx(b, c);
    return e;
}

/* ---- subscriptions ---- */

/* Create or update the durable consumer for the group. */
static loom_err ensure_consumer(struct nb_bus *b, const struct loom_bus_sub_options *o,
                                uint64_t start_seq, int64_t start_time, bool update,
                                struct loom_error *err)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetConsumerInfo(&ci, b->js, b->stream, o->group, NULL, &jerr);
    if (s == NATS_OK) {
        loom_err e = LOOM_OK;
        const char *f = ci->Config->FilterSubject ? ci->Config->FilterSubject : "";
        if (strcmp(f, o->filter) != 0 && !(f[0] == '\0' && strcmp(o->filter, "loom.>") == 0)) {
            e = loom_error_set(err, LOOM_ECONFLICT, "group \"%s\" exists with filter \"%s\"",
                               o->group, f);
        } else if (update && (ci->Config->AckWait != (int64_t)o->ack_wait ||
                              ci->Config->MaxDeliver != (int64_t)o->max_deliver + 3)) {
            jsConsumerConfig cc = *ci->Config;
            cc.AckWait = (int64_t)o->ack_wait;
            cc.MaxDeliver = (int64_t)o->max_deliver + 3;
            jsConsumerInfo *ui = NULL;
            s = js_UpdateConsumer(&ui, b->js, b->stream, &cc, NULL, &jerr);
            jsConsumerInfo_Destroy(ui);
            if (s != NATS_OK)
                e = nats_error(s, jerr, err, "update consumer");
        }
        jsConsumerInfo_Destroy(ci);
        return e;
    }
    if (jerr != JSConsumerNotFoundErr && s != NATS_NOT_FOUND)
        return nats_error(s, jerr, err, "consumer info");
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = o->group;
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = (int64_t)o->ack_wait;
    cc.MaxDeliver = (int64_t)o->max_deliver + 3; /* a backstop: the pump parks first */
    cc.MaxAckPending = 20000;
    cc.FilterSubject = o->filter;
    if (start_seq) {
        cc.DeliverPolicy = js_DeliverByStartSequence;
        cc.OptStartSeq = start_seq;
    } else if (start_time) {
        cc.DeliverPolicy = js_DeliverByStartTime;
        cc.OptStartTime = start_time;
    } else {
        cc.DeliverPolicy = o->start == LOOM_BUS_START_NEW ? js_DeliverNew : js_DeliverAll;
    }
    s = js_AddConsumer(&ci, b->js, b->stream, &cc, NULL, &jerr);
    jsConsumerInfo_Destroy(ci);
    if (s != NATS_OK && jerr != JSConsumerNameExistErr && jerr != JSConsumerExistingActiveErr)
        return nats_error(s, jerr, err, "create consumer");
    return LOOM_OK;
}

static loom_err nb_sub_open(struct loom_bus_sub *sub, struct loom_error *err)
{
    struct nb_bus *b = loom_bus_impl(loom_bus_sub_bus(sub));
    const struct loom_bus_sub_options *o = loom_bus_sub_options(sub);
    loom_err e = ensure_streams(b, err);
    if (!e)
        e = ensure_consumer(b, o, 0, 0, true, err);
    if (e)
        return e;
    struct nb_sub *s = loom_new(struct nb_sub);
    size_t n = strlen(b->dlq_prefix) + strlen(o->group) + 2;
    s->dlq_subject = loom_malloc(n);
    snprintf(s->dlq_subject, n, "%s.%s", b->dlq_prefix, o->group);
    n = strlen(b->stream) + strlen(o->group) + 40;
    s->next_subject = loom_malloc(n);
    snprintf(s->next_subject, n, "$JS.API.CONSUMER.MSG.NEXT.%s.%s", b->stream, o->group);
    s->conn_gen = atomic_load(&b->conn_gen);
    natsStatus st = natsInbox_Create(&s->inbox_subject);
    if (st == NATS_OK) {
        n = strlen(s->inbox_subject) + 3;
        s->wake_subject = loom_malloc(n);
        snprintf(s->wake_subject, n, "%s.w", s->inbox_subject);
        char all[128];
        snprintf(all, sizeof(all), "%s.>", s->inbox_subject);
        st = natsConnection_SubscribeSync(&s->inbox, b->nc, all);
    }
    if (st == NATS_OK) /* bounded by max_inflight (the pull requests); no slow-consumer drops */
        st = natsSubscription_SetPendingLimits(s->inbox, -1, -1);
    if (st != NATS_OK) {
        e = nats_error(st, 0, err, "subscribe");
        natsSubscription_Destroy(s->inbox);
        natsInbox_Destroy(s->inbox_subject);
        free(s->wake_subject);
        free(s->next_subject);
        free(s->dlq_subject);
        free(s);
        return e;
    }
    loom_bus_sub_set_impl(sub, s);
    return LOOM_OK;
}

static void nb_sub_close(struct loom_bus_sub *sub)
{
    struct nb_sub *s = loom_bus_sub_impl(sub);
    natsSubscription_Unsubscribe(s->inbox); /* the inbox only: the durable consumer stays */
    natsSubscription_Destroy(s->inbox);
    natsInbox_Destroy(s->inbox_subject);
    free(s->wake_subject);
    free(s->next_subject);
    free(s->dlq_subject);
    free(s);
}

/* A message on our own inbox without a reply subject (deliveries have an ack subject) and
 * without a Status header (the server's answers have one) interrupts a waiting fetch. */
static void nb_wake(struct loom_bus_sub *sub)
{
    struct nb_sub *s = loom_bus_sub_impl(sub);
    struct nb_bus *b = loom_bus_impl(loom_bus_sub_bus(sub));
    if (s)
        natsConnection_Publish(b->nc, s->wake_subject, "w", 1);
}

static const char *header(natsMsg *m, const char *name)
{
    const char *v = NULL;
    if (natsMsgHeader_Get(m, name, &v) != NATS_OK)
        return NULL;
    return v;
}

/*
 * The delivery facts are in the ack subject: $JS.ACK.<stream>.<consumer>.<delivered>.
 * <stream seq>.<consumer seq>.<time ns>.<pending> (or with <domain>.<account hash> before the
 * stream and a random token after, in the newer form).
 */
static bool parse_ack_subject(const char *reply, uint64_t *sseq, uint64_t *delivered,
                              int64_t *time_ns)
{
    if (!reply || strncmp(reply, "$JS.ACK.", 8) != 0)
        return false;
    struct loom_str tok[16];
    size_t n = 0;
    struct loom_str rest = loom_str_cstr(reply + 8);
    while (rest.len && n < 16) {
        struct loom_str head;
        rest = loom_str_cut(rest, '.', &head);
        tok[n++] = head;
    }
    size_t base = n == 7 ? 0 : n >= 9 ? 2 : SIZE_MAX; /* index of <stream> */
    if (base == SIZE_MAX)
        return false;
    uint64_t d, sq, t;
    if (loom_str_to_u64(tok[base + 2], &d) || loom_str_to_u64(tok[base + 3], &sq) ||
        loom_str_to_u64(tok[base + 5], &t))
        return false;
    *delivered = d;
    *sseq = sq;
    *time_ns = (int64_t)t;
    return true;
}

static void ack(struct nb_bus *b, natsMsg *nm, const char *body)
{
    const char *reply = natsMsg_GetReply(nm);
    if (reply)
        natsConnection_Publish(b->nc, reply, body, (int)strlen(body));
}

/* Wrap one delivered message. NULL: not for this group (a replay for another one: acked). */
static struct nb_msg *wrap(struct nb_bus *b, const struct loom_bus_sub_options *o, natsMsg *nm)
{
    const char *only = header(nm, "Loom-Group");
    if (only && strcmp(only, o->group) != 0) {
        ack(b, nm, "+ACK");
        natsMsg_Destroy(nm);
        return NULL;
    }
    struct nb_msg *m = loom_new(struct nb_msg);
    m->nm = nm;
    const char *id = header(nm, "Loom-Event-Id");
    if (!id)
        id = header(nm, "Nats-Msg-Id");
    m->m.id = loom_str_cstr(id ? id : "");
    m->m.subject = loom_str_cstr(natsMsg_GetSubject(nm));
    m->m.data = loom_str_make(natsMsg_GetData(nm), (size_t)natsMsg_GetDataLength(nm));
    uint64_t delivered = 1;
    if (!parse_ack_subject(natsMsg_GetReply(nm), &m->m.seq, &delivered, &m->m.time_ns))
        delivered = 1;
    m->m.attempt = (uint32_t)LOOM_MAX(delivered, 1);
    return m;
}

/* A status message (no data, a Status header): its code, or 0 for a user message. */
static int status_of(natsMsg *nm, const char **desc)
{
    if (natsMsg_GetDataLength(nm) > 0)
        return 0;
    const char *st = header(nm, "Status");
    if (!st)
        return 0;
    *desc = header(nm, "Description");
    return atoi(st);
}

/*
 * Pull requests are sent and answered by hand on a private inbox rather than through nats.c's
 * fetch, which waits for a whole batch (or its expiry) before returning, and can be confused
 * by answers to requests it already gave up on. Here every event is handed on the moment it
 * arrives, and requests are kept in flight ahead of the handlers: whenever the room under
 * max_inflight (less what the handlers hold and what live requests may still bring) is half a
 * batch or more, another request asks for all of it. A group that asked for its next batch
 * only once the last was used up spent a round trip per batch and fell behind a steady stream
 * (p99 stored -> consumer in the hundreds of ms at half load, bench/bus.sh).
 *
 * The server serves a member's live requests in turn, so which one a delivery belongs to is
 * unknown; only the total matters. Each request's reply subject, <inbox>.<number>.<batch>,
 * tells which request a status answers: 408 (expired) and 409 (refused or cut short) carry
 * what that request will no longer bring (Nats-Pending-Messages, else its batch), a request
 * used up gets no answer at all. Answers to requests forgotten (a reconnect: the server lost
 * them or will drop them; a reset) are ignored, and deliveries they still bring only lower the
 * count, which the next request makes up.
 */

/* Forget the pull requests out; their answers, if any, are ignored. */
static void forget_requests(struct nb_sub *s)
{
    s->credits = 0;
    s->live_from = s->req_seq + 1;
}

/* Ask for more when nothing is asked for or when at least half a batch fits under
 * max_inflight; `taken` are deliveries read but not handed to the pump yet. */
static loom_err request_more(struct nb_bus *b, struct nb_sub *s,
                             const struct loom_bus_sub_options *o, size_t taken,
                             struct loom_error *err)
{
    size_t used = s->held + taken + s->credits;
    if (used >= o->max_inflight)
        return LOOM_OK;
    size_t room = o->max_inflight - used;
    if (s->credits && room < LOOM_MAX(o->batch / 2, 1))
        return LOOM_OK;
    /* Not while disconnected: nats.c would buffer the request and send it after the
     * reconnect, when it has been forgotten. */
    if (natsConnection_Status(b->nc) != NATS_CONN_STATUS_CONNECTED)
        return LOOM_OK;
    char reply[160], body[96];
    snprintf(reply, sizeof(reply), "%s.%llu.%zu", s->inbox_subject,
             (unsigned long long)(s->req_seq + 1), room);
    int len = snprintf(body, sizeof(body), "{\"batch\":%zu,\"expires\":%llu}", room,
                       (unsigned long long)PULL_EXPIRES);
    natsStatus st = natsConnection_PublishRequest(b->nc, s->next_subject, reply, body, len);
    if (st != NATS_OK)
        return nats_error(st, 0, err, "pull request");
    s->req_seq++;
    s->credits += room;
    s->last_expiry = loom_now_ns() + PULL_EXPIRES;
    return LOOM_OK;
}

/* The live request a status answers (reply subject <inbox>.<number>.<batch>) and what it will
 * no longer bring; false for an answer to a forgotten request or to none. */
static bool answered_request(const struct nb_sub *s, natsMsg *nm, uint64_t *left)
{
    struct loom_str subj = loom_str_cstr(natsMsg_GetSubject(nm));
    struct loom_str pre = loom_str_cstr(s->inbox_subject);
    if (!loom_str_has_prefix(subj, pre) || subj.len <= pre.len + 1 || subj.ptr[pre.len] != '.')
        return false;
    struct loom_str num;
    struct loom_str batch =
        loom_str_cut(loom_str_make(subj.ptr + pre.len + 1, subj.len - pre.len - 1), '.', &num);
    uint64_t id, k;
    if (loom_str_to_u64(num, &id) || loom_str_to_u64(batch, &k) || id < s->live_from ||
        id > s->req_seq)
        return false;
    const char *pending = header(nm, "Nats-Pending-Messages");
    if (!pending || loom_str_to_u64(loom_str_cstr(pending), left))
        *left = k;
    return true;
}

static loom_err nb_fetch(struct loom_bus_sub *sub, size_t max, uint64_t wait_ns,
                         struct loom_bus_msg **out, size_t *n, struct loom_error *err)
{
    struct nb_bus *b = loom_bus_impl(loom_bus_sub_bus(sub));
    struct nb_sub *s = loom_bus_sub_impl(sub);
    const struct loom_bus_sub_options *o = loom_bus_sub_options(sub);
    *n = 0;
    *out = NULL;
    loom_err e = ensure_streams(b, err);
    if (e)
        return e;
    unsigned gen = atomic_load(&b->conn_gen);
    if (gen != s->conn_gen) {
        s->conn_gen = gen;
        forget_requests(s);
    }
    uint64_t now = loom_now_ns();
    if (s->credits && now > s->last_expiry + PULL_GRACE) {
        /* Requests neither used up nor answered past their expiry: lost, or sent to a group
         * that no longer exists (the server does not answer those). */
        forget_requests(s);
        jsConsumerInfo *ci = NULL;
        jsErrCode jerr = 0;
        natsStatus st = js_GetConsumerInfo(&ci, b->js, b->stream, o->group, NULL, &jerr);
        jsConsumerInfo_Destroy(ci);
        if (st != NATS_OK && (jerr == JSConsumerNotFoundErr || st == NATS_NOT_FOUND) &&
            !s->missing_since)
            s->missing_since = now;
    }
    if (s->missing_since) {
        /* The consumer was deleted (a reset recreates it): wait, then create it ourselves. */
        if (now - s->missing_since < 3 * LOOM_NS_PER_SEC) {
            jsConsumerInfo *ci = NULL;
            if (js_GetConsumerInfo(&ci, b->js, b->stream, o->group, NULL, NULL) != NATS_OK)
                return loom_error_set(err, LOOM_ENOTFOUND, "bus: group \"%s\" is missing",
                                      o->group);
            jsConsumerInfo_Destroy(ci);
        } else if ((e = ensure_consumer(b, o, 0, 0, true, err))) {
            return e;
        }
        s->missing_since = 0;
        forget_requests(s);
    }
    struct loom_bus_msg *head = NULL, **tail = &head;
    uint64_t until = now + wait_ns;
    while (*n < max) {
        if ((e = request_more(b, s, o, *n, err)))
            break;
        int64_t wait_ms = 0;
        if (*n == 0 && (now = loom_now_ns()) < until)
            wait_ms = (int64_t)((until - now + LOOM_NS_PER_MS - 1) / LOOM_NS_PER_MS);
        natsMsg *nm = NULL;
        natsStatus st = natsSubscription_NextMsg(&nm, s->inbox, wait_ms);
        if (st == NATS_TIMEOUT)
            break;
        if (st != NATS_OK) {
            e = nats_error(st, 0, err, "fetch");
            break;
        }
        const char *desc = NULL;
        int code = status_of(nm, &desc);
        if (!code && !natsMsg_GetReply(nm)) { /* nb_wake */
            natsMsg_Destroy(nm);
            break;
        }
        if (code) {
            uint64_t left = 0;
            bool live = answered_request(s, nm, &left);
            bool gone = code == 503 || (code == 409 && desc && strstr(desc, "Deleted"));
            char why[96];
            snprintf(why, sizeof(why), "%d %s", code, desc ? desc : "");
            natsMsg_Destroy(nm);
            if (!live || code == 100) /* a forgotten request's; heartbeats, flow control */
                continue;
            if (gone) {
                forget_requests(s);
                s->missing_since = loom_now_ns();
                if (*n == 0)
                    e = loom_error_set(err, LOOM_ENOTFOUND, "bus: group \"%s\" is gone (%s)",
                                       o->group, why);
                break;
            }
            s->credits -= LOOM_MIN(left, s->credits);
            if (code == 409) { /* refused (too many requests waiting...): not again at once */
                if (*n == 0)
                    e = loom_error_set(err, LOOM_EAGAIN, "bus: group \"%s\": pull request %s",
                                       o->group, why);
                break;
            }
            continue; /* 408: that request expired; the loop asks again */
        }
        if (s->credits)
            s->credits--;
        struct nb_msg *m = wrap(b, o, nm);
        if (!m)
            continue;
        *tail = &m->m;
        tail = &m->m.next;
        (*n)++;
    }
    *tail = NULL;
    *out = head;
    s->held += *n;
    return *n ? LOOM_OK : e;
}

/* Called only once the pump has stopped, perhaps after nb_sub_close: leaves `held` alone. */
static void nb_release(struct loom_bus_sub *sub, struct loom_bus_msg *msg)
{
    LOOM_UNUSED(sub);
    struct nb_msg *m = LOOM_CONTAINER_OF(msg, struct nb_msg, m);
    natsMsg_Destroy(m->nm);
    free(m);
}

static natsStatus park(struct nb_bus *b, struct nb_sub *s, const struct loom_bus_sub_options *o,
                       const struct loom_bus_msg *m)
{
    natsMsg *dm = NULL;
    char buf[64], id[LOOM_BUS_GROUP_MAX + 32];
    natsStatus st = natsMsg_Create(&dm, s->dlq_subject, NULL, m->data.ptr, (int)m->data.len);
    if (st == NATS_OK) {
        char tmp[160];
        snprintf(tmp, sizeof(tmp), "%.*s", LOOM_STR_FMT(m->id));
        st = natsMsgHeader_Set(dm, "Loom-Event-Id", tmp);
    }
    if (st == NATS_OK) {
        char tmp[LOOM_BUS_SUBJECT_MAX + 1];
        snprintf(tmp, sizeof(tmp), "%.*s", LOOM_STR_FMT(m->subject));
        st = natsMsgHeader_Set(dm, "Loom-Subject", tmp);
    }
    if (st == NATS_OK) {
        snprintf(buf, sizeof(buf), "%llu", (unsigned long long)m->seq);
        st = natsMsgHeader_Set(dm, "Loom-Seq", buf);
    }
    if (st == NATS_OK) {
        snprintf(buf, sizeof(buf), "%u", m->attempt);
        st = natsMsgHeader_Set(dm, "Loom-Deliveries", buf);
    }
    if (st == NATS_OK)
        st = natsMsgHeader_Set(dm, "Loom-Reason", m->reason[0] ? m->reason : "parked");
    if (st == NATS_OK) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        snprintf(id, sizeof(id), "%s:%llu", o->group, (unsigned long long)m->seq);
        po.MsgId = id;
        st = js_PublishMsg(NULL, b->js, dm, &po, NULL);
    }
    natsMsg_Destroy(dm);
    return st;
}

static void nb_settle(struct loom_bus_sub *sub, struct loom_bus_msg *const *msgs, size_t n)
{
    struct nb_bus *b = loom_bus_impl(loom_bus_sub_bus(sub));
    struct nb_sub *s = loom_bus_sub_impl(sub);
    const struct loom_bus_sub_options *o = loom_bus_sub_options(sub);
    s->held -= LOOM_MIN(n, s->held); /* room for the next pull request */
    for (size_t i = 0; i < n; i++) {
        struct nb_msg *m = LOOM_CONTAINER_OF(msgs[i], struct nb_msg, m);
        switch (m->m.verdict) {
        case LOOM_BUS_PARK:
            if (park(b, s, o, &m->m) == NATS_OK) {
                ack(b, m->nm, "+ACK");
            } else {
                /* Comes back past max_deliver and is parked then. */
                LOOM_LOG_KV(LOOM_LOG_WARN, "bus: cannot park; will retry",
                            LOOM_KV_CSTR("group", o->group), LOOM_KV_STR("id", m->m.id));
                ack(b, m->nm, "-NAK {\"delay\":1000000000}");
            }
            break;
        case LOOM_BUS_RETRY: {
            char nak[64];
            snprintf(nak, sizeof(nak), "-NAK {\"delay\":%llu}",
                     (unsigned long long)m->m.retry_delay);
            ack(b, m->nm, nak);
            break;
        }
        default:
            ack(b, m->nm, "+ACK");
            break;
        }
        nb_release(sub, &m->m);
    }
}

/* ---- groups and the dead letter ---- */

static loom_err nb_group_list(struct loom_bus *bus, loom_bus_group_fn fn, void *arg,
                              struct loom_error *err)
{
    struct nb_bus *b = loom_bus_impl(bus);
    loom_err e = ensure_streams(b, err);
    if (e)
        return e;
    jsConsumerNamesList *list = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_ConsumerNames(&list, b->js, b->stream, NULL, &jerr);
    if (s == NATS_NOT_FOUND)
        return LOOM_OK;
    if (s != NATS_OK)
        return nats_error(s, jerr, err, "list groups");
    for (int i = 0; i < list->Count && !e; i++)
        e = fn(list->List[i], arg);
    jsConsumerNamesList_Destroy(list);
    return e;
}

static loom_err nb_group_info(struct loom_bus *bus, const char *group,
                              struct loom_bus_group_info *out, struct loom_error *err)
{
    struct nb_bus *b = loom_bus_impl(bus);
    loom_err e = ensure_streams(b, err);
    if (e)
        return e;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetConsumerInfo(&ci, b->js, b->stream, group, NULL, &jerr);
    if (s != NATS_OK) {
        if (jerr == JSConsumerNotFoundErr || s == NATS_NOT_FOUND)
            return loom_error_set(err, LOOM_ENOTFOUND, "no group \"%s\"", group);
        return nats_error(s, jerr, err, "consumer info");
    }
    out->pending = (uint64_t)ci->NumAckPending;
    out->next = ci->Delivered.Stream + 1;
    out->lag = ci->NumPending + (uint64_t)ci->NumAckPending;
    jsConsumerInfo_Destroy(ci);
    jsStreamInfo *si = NULL;
    if (js_GetStreamInfo(&si, b->js, b->stream, NULL, &jerr) == NATS_OK) {
        out->head = si->State.LastSeq;
        jsStreamInfo_Destroy(si);
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    char subj[LOOM_BUS_SUBJECT_MAX];
    snprintf(subj, sizeof(subj), "%s.%s", b->dlq_prefix, group);
    jo.Stream.Info.SubjectsFilter = subj;
    if (js_GetStreamInfo(&si, b->js, b->dlq_stream, &jo, &jerr) == NATS_OK) {
        if (si->State.Subjects)
            for (int i = 0; i < si->State.Subjects->Count; i++)
                out->parked += si->State.Subjects->List[i].Msgs;
        jsStreamInfo_Destroy(si);
    }
    return LOOM_OK;
}

static loom_err nb_group_reset(struct loom_bus *bus, const char *group, uint64_t seq,
                               int64_t time_ns, struct loom_error *err)
{
    struct nb_bus *b = loom_bus_impl(bus);
    loom_err e = ensure_streams(b, err);
    if (e)
        return e;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetConsumerInfo(&ci, b->js, b->stream, group, NULL, &jerr);
    if (s != NATS_OK) {
        if (jerr == JSConsumerNotFoundErr || s == NATS_NOT_FOUND)
            return loom_error_set(err, LOOM_ENOTFOUND, "no group \"%s\"", group);
        return nats_error(s, jerr, err, "consumer info");
    }
    /* A durable consumer's start cannot be changed: delete it and create it again. */
    struct loom_bus_sub_options o = {
        .group = group,
        .filter = ci->Config->FilterSubject && ci->Config->FilterSubject[0]
                      ? ci->Config->FilterSubject
                      : "loom.>",
        .ack_wait = (uint64_t)ci->Config->AckWait,
        .max_deliver = (uint32_t)LOOM_MAX(ci->Config->MaxDeliver - 3, 1),
    };
    char *filter = loom_strdup(o.filter);
    o.filter = filter;
    jsConsumerInfo_Destroy(ci);
    s = js_DeleteConsumer(b->js, b->stream, group, NULL, &jerr);
    if (s != NATS_OK && jerr != JSConsumerNotFoundErr)
        e = nats_error(s, jerr, err, "delete consumer");
    if (!e) {
        if (seq == 0 && time_ns <= 0)
            seq = 1;
        e = ensure_consumer(b, &o, seq, seq ? 0 : time_ns, false, err);
    }
    free(filter);
    return e;
}

static uint64_t header_u64(natsMsg *m, const char *name)
{
    const char *v = header(m, name);
    uint64_t x = 0;
    if (v)
        loom_str_to_u64(loom_str_cstr(v), &x);
    return x;
}

static loom_err nb_parked_list(struct loom_bus *bus, const char *group, uint64_t after,
                               size_t limit, loom_bus_parked_fn fn, void *arg,
                               struct loom_error *err)
{
    struct nb_bus *b = loom_bus_impl(bus);
    loom_err e = ensure_streams(b, err);
    if (e)
        return e;
    char subj[LOOM_BUS_SUBJECT_MAX];
    snprintf(subj, sizeof(subj), "%s.%s", b->dlq_prefix, group);
    uint64_t next = after + 1;
    for (size_t k = 0; k < limit; k++) {
        jsDirectGetMsgOptions dg;
        memset(&dg, 0, sizeof(dg));
        dg.Sequence = next;
        dg.NextBySubject = subj;
        natsMsg *m = NULL;
        natsStatus s = js_DirectGetMsg(&m, b->js, b->dlq_stream, NULL, &dg);
        if (s == NATS_NOT_FOUND)
            break;
        if (s != NATS_OK)
            return nats_error(s, 0, err, "list parked");
        uint64_t pseq = header_u64(m, "Nats-Sequence");
        const char *ts = header(m, "Nats-Time-Stamp");
        const char *id = header(m, "Loom-Event-Id");
        const char *subject = header(m, "Loom-Subject");
        const char *reason = header(m, "Loom-Reason");
        int64_t parked = 0;
        if (ts && loom_event_parse_time(loom_str_cstr(ts), &parked))
            parked = 0;
        struct loom_bus_parked p = {
            .pseq = pseq,
            .seq = header_u64(m, "Loom-Seq"),
            .id = loom_str_cstr(id ? id : ""),
            .subject = loom_str_cstr(subject ? subject : ""),
            .data = loom_str_make(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m)),
            .reason = loom_str_cstr(reason ? reason : ""),
            .deliveries = (uint32_t)header_u64(m, "Loom-Deliveries"),
            .parked_ns = parked,
        };
        e = fn(&p, arg);
        natsMsg_Destroy(m);
        if (e)
            return e;
        if (pseq == 0)
            break;
        next = pseq + 1;
    }
    return LOOM_OK;
}

struct replay_ctx {
    struct nb_bus *b;
    const char *group;
    uint64_t only;
    uint64_t last; /* the dead letter's last sequence when the replay began */
    size_t done;
    loom_err e;
    struct loom_error *err;
};

static loom_err replay_one(const struct loom_bus_parked *p, void *arg)
{
    struct replay_ctx *r = arg;
    if (p->pseq > r->last)
        return LOOM_EAGAIN; /* parked again since the replay began: a later replay's business */
    if (r->only && p->pseq != r->only)
        return LOOM_OK;
    char subject[LOOM_BUS_SUBJECT_MAX + 1], id[160], msgid[LOOM_BUS_GROUP_MAX + 48];
    snprintf(subject, sizeof(subject), "%.*s", LOOM_STR_FMT(p->subject));
    snprintf(id, sizeof(id), "%.*s", LOOM_STR_FMT(p->id));
    snprintf(msgid, sizeof(msgid), "replay:%s:%llu", r->group, (unsigned long long)p->pseq);
    natsMsg *m = NULL;
    natsStatus s = natsMsg_Create(&m, subject, NULL, p->data.ptr, (int)p->data.len);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "Loom-Event-Id", id);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "Loom-Group", r->group);
    if (s == NATS_OK) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MsgId = msgid;
        s = js_PublishMsg(NULL, r->b->js, m, &po, NULL);
    }
    natsMsg_Destroy(m);
    jsErrCode jerr = 0;
    if (s == NATS_OK)
        s = js_DeleteMsg(r->b->js, r->b->dlq_stream, p->pseq, NULL, &jerr);
    if (s != NATS_OK)
        return nats_error(s, jerr, r->err, "replay parked");
    r->done++;
    return LOOM_OK;
}

static loom_err nb_parked_replay(struct loom_bus *bus, const char *group, uint64_t pseq,
                                 size_t *count, struct loom_error *err)
{
    struct nb_bus *b = loom_bus_impl(bus);
    struct replay_ctx r = { .b = b, .group = group, .only = pseq, .err = err };
    /* The group's consumer may park a replayed event again while we walk the dead letter: stop
     * at what was there when we began, or a poison event would be replayed round and round. */
    loom_err e = ensure_streams(b, err);
    if (e)
        return e;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, b->js, b->dlq_stream, NULL, &jerr);
    if (s != NATS_OK)
        return nats_error(s, jerr, err, "dead letter info");
    r.last = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    e = nb_parked_list(bus, group, pseq ? pseq - 1 : 0, pseq ? 1 : SIZE_MAX, replay_one, &r, err);
    if (e == LOOM_EAGAIN)
        e = LOOM_OK;
    if (e)
        return e;
    if (pseq && r.done == 0)
        return loom_error_set(err, LOOM_ENOTFOUND, "group \"%s\" has no parked event %llu", group,
                              (unsigned long long)pseq);
    *count = r.done;
    return LOOM_OK;
}

const struct loom_bus_type loom_bus_nats = {
    .name = "nats",
    .open = nb_open,
    .close = nb_close,
    .instance = nb_instance,
    .publish = nb_publish,
    .sub_open = nb_sub_open,
    .sub_close = nb_sub_close,
    .fetch = nb_fetch,
    .settle = nb_settle,
    .release = nb_release,
    .wake = nb_wake,
    .group_list = nb_group_list,
    .group_info = nb_group_info,
    .group_reset = nb_group_reset,
    .parked_list = nb_parked_list,
    .parked_replay = nb_parked_replay,
};
