/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The bus's common half: choosing a backend by URL, checking what callers pass, and running
 * subscriptions. A subscription's pump thread loops: apply the verdicts settled since last
 * time, claim a batch from the backend (which waits for events), park deliveries that have
 * used up their attempts without reaching a handler, and hand the rest to the handlers, on the
 * pump thread itself or through one task on the subscription's loop. Verdicts come back
 * through a queue under the subscription's mutex, so handlers may settle from any thread, and
 * at most max_inflight deliveries are outstanding: a slow consumer stops claiming rather than
 * buffering. Retries back off exponentially; a retry at the last attempt becomes a park.
 */
#include <loom/bus.h>
#include <loom/log.h>
#include <loom/metrics.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct loom_bus {
    const struct loom_bus_type *type;
    void *impl;
    struct loom_bus_options opts;
    char *client_name;
};

struct loom_bus_sub {
    struct loom_bus *bus;
    struct loom_bus_sub_options opts; /* defaults filled, strings owned below */
    char *group, *filter, *owner;
    void *impl;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    /* under mu */
    bool stopping;
    bool stopped; /* the pump is gone: late verdicts only free their message */
    struct loom_bus_msg *settled_head, *settled_tail;
    size_t inflight;
    struct loom_bus_msg *loopq_head, *loopq_tail;
    bool task_posted;
    int refs; /* 1 for the owner, 1 per message out with a LOOM_BUS_LATER */
    /* loop mode */
    struct loom_task task;
    /* metrics */
    struct loom_counter *m_delivered;
    struct loom_counter *m_settled[3];
    struct loom_gauge *m_lag;
};

/* ---- names ---- */

static bool token_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

static bool tokens_valid(struct loom_str s, bool wildcards)
{
    if (s.len == 0 || s.len > LOOM_BUS_SUBJECT_MAX)
        return false;
    size_t start = 0;
    for (size_t i = 0; i <= s.len; i++) {
        if (i < s.len && s.ptr[i] != '.')
            continue;
        struct loom_str tok = loom_str_make(s.ptr + start, i - start);
        if (tok.len == 0)
            return false;
        bool star = wildcards && tok.len == 1 && tok.ptr[0] == '*';
        bool gt = wildcards && tok.len == 1 && tok.ptr[0] == '>';
        if (gt && i != s.len)
            return false;
        if (!star && !gt)
            for (size_t k = 0; k < tok.len; k++)
                if (!token_char(tok.ptr[k]))
                    return false;
        start = i + 1;
    }
    return true;
}

bool loom_bus_subject_valid(struct loom_str subject)
{
    return loom_str_has_prefix(subject, LOOM_STR("loom.")) && tokens_valid(subject, false);
}

bool loom_bus_filter_valid(struct loom_str filter)
{
    return tokens_valid(filter, true);
}

bool loom_bus_group_valid(struct loom_str group)
{
    if (group.len == 0 || group.len > LOOM_BUS_GROUP_MAX)
        return false;
    for (size_t i = 0; i < group.len; i++)
        if (!token_char(group.ptr[i]))
            return false;
    return true;
}

static struct loom_str next_token(struct loom_str *s)
{
    struct loom_str head;
    struct loom_str rest = loom_str_cut(*s, '.', &head);
    *s = rest;
    return head;
}

bool loom_bus_subject_match(struct loom_str filter, struct loom_str subject)
{
    struct loom_str f = filter, s = subject;
    while (f.len) {
        struct loom_str ft = next_token(&f);
        if (ft.len == 1 && ft.ptr[0] == '>')
            return s.len > 0;
        if (s.len == 0)
            return false;
        struct loom_str st = next_token(&s);
        if (!(ft.len == 1 && ft.ptr[0] == '*') && !loom_str_eq(ft, st))
            return false;
    }
    return s.len == 0;
}

/* ---- the bus ---- */

static bool id_valid(struct loom_str id)
{
    if (id.len == 0 || id.len > 128)
        return false;
    for (size_t i = 0; i < id.len; i++)
        if (id.ptr[i] <= 0x20 || id.ptr[i] >= 0x7f)
            return false;
    return true;
}

loom_err loom_bus_open(const char *url, const struct loom_bus_options *opts, struct loom_bus **out,
                       struct loom_error *err)
{
    const struct loom_bus_type *type = NULL;
    struct loom_str u = loom_str_cstr(url);
    if (loom_str_has_prefix(u, LOOM_STR("sqlite:")))
        type = &loom_bus_sqlite;
    else if (loom_str_has_prefix(u, LOOM_STR("nats://")))
        type = &loom_bus_nats;
    else
        return loom_error_set(err, LOOM_EINVAL,
                              "bus URL \"%s\" is neither sqlite:PATH nor nats://HOST:PORT",
                              url ? url : "");
    struct loom_bus *bus = loom_new(struct loom_bus);
    bus->type = type;
    if (opts)
        bus->opts = *opts;
    if (!bus->opts.publish_timeout)
        bus->opts.publish_timeout = 5 * LOOM_NS_PER_SEC;
    bus->client_name = loom_strdup(bus->opts.client_name ? bus->opts.client_name : "loom");
    bus->opts.client_name = bus->client_name;
    loom_err e = type->open(bus, url, err);
    if (e) {
        free(bus->client_name);
        free(bus);
        return e;
    }
    *out = bus;
    return LOOM_OK;
}

void loom_bus_close(struct loom_bus *bus)
{
    if (!bus)
        return;
    bus->type->close(bus);
    free(bus->client_name);
    free(bus);
}

const char *loom_bus_backend(const struct loom_bus *bus)
{
    return bus->type->name;
}

void loom_bus_instance(struct loom_bus *bus, char out[LOOM_BUS_INSTANCE_MAX])
{
    out[0] = '\0';
    bus->type->instance(bus, out);
}

loom_err loom_bus_publish(struct loom_bus *bus, const struct loom_bus_event *evs, size_t n,
                          struct loom_error *err)
{
    if (n == 0)
        return LOOM_OK;
    if (n > LOOM_BUS_MAX_BATCH)
        return loom_error_set(err, LOOM_ETOOBIG, "%zu events in one publish, over %d", n,
                              LOOM_BUS_MAX_BATCH);
    for (size_t i = 0; i < n; i++) {
        if (!id_valid(evs[i].id))
            return loom_error_set(err, LOOM_EINVAL,
                                  "event %zu: the id must be 1 to 128 printable bytes", i);
        if (!loom_bus_subject_valid(evs[i].subject))
            return loom_error_set(err, LOOM_EINVAL, "event %zu: subject \"%.*s\" is not loom.<...>",
                                  i, (int)LOOM_MIN(evs[i].subject.len, 80),
                                  evs[i].subject.ptr ? evs[i].subject.ptr : "");
        if (evs[i].data.len > ((size_t)1 << 20))
            return loom_error_set(err, LOOM_ETOOBIG, "event %zu is %zu bytes, over 1 MiB", i,
                                  evs[i].data.len);
    }
    return bus->type->publish(bus, evs, n, err);
}

void *loom_bus_impl(const struct loom_bus *bus)
{
    return bus->impl;
}

void loom_bus_set_impl(struct loom_bus *bus, void *impl)
{
    bus->impl = impl;
}

const struct loom_bus_options *loom_bus_options(const struct loom_bus *bus)
{
    return &bus->opts;
}

void *loom_bus_sub_impl(const struct loom_bus_sub *sub)
{
    return sub->impl;
}

void loom_bus_sub_set_impl(struct loom_bus_sub *sub, void *impl)
{
    sub->impl = impl;
}

struct loom_bus *loom_bus_sub_bus(const struct loom_bus_sub *sub)
{
    return sub->bus;
}

const struct loom_bus_sub_options *loom_bus_sub_options(const struct loom_bus_sub *sub)
{
    return &sub->opts;
}

static loom_err check_group(const char *group, struct loom_error *err)
{
    if (!group || !loom_bus_group_valid(loom_str_cstr(group)))
        return loom_error_set(err, LOOM_EINVAL,
                              "group \"%s\" is not 1 to %d characters of [A-Za-z0-9_-]",
                              group ? group : "", LOOM_BUS_GROUP_MAX);
    return LOOM_OK;
}

loom_err loom_bus_group_list(struct loom_bus *bus, loom_bus_group_fn fn, void *arg,
                             struct loom_error *err)
{
    return bus->type->group_list(bus, fn, arg, err);
}

loom_err loom_bus_group_info(struct loom_bus *bus, const char *group,
                             struct loom_bus_group_info *out, struct loom_error *err)
{
    loom_err e = check_group(group, err);
    if (e)
        return e;
    memset(out, 0, sizeof(*out));
    return bus->type->group_info(bus, group, out, err);
}

loom_err loom_bus_group_reset(struct loom_bus *bus, const char *group, uint64_t seq,
                              int64_t time_ns, struct loom_error *err)
{
    loom_err e = check_group(group, err);
    if (e)
        return e;
    return bus->type->group_reset(bus, group, seq, time_ns, err);
}

loom_err loom_bus_parked_list(struct loom_bus *bus, const char *group, uint64_t after, size_t limit,
                              loom_bus_parked_fn fn, void *arg, struct loom_error *err)
{
    loom_err e = check_group(group, err);
    if (e)
        return e;
    if (limit == 0)
        return LOOM_OK;
    return bus->type->parked_list(bus, group, after, limit, fn, arg, err);
}

loom_err loom_bus_parked_replay(struct loom_bus *bus, const char *group, uint64_t pseq,
                                size_t *count, struct loom_error *err)
{
    size_t dummy;
    loom_err e = check_group(group, err);
    if (e)
        return e;
    return bus->type->parked_replay(bus, group, pseq, count ? count : &dummy, err);
}

/* ---- subscriptions ---- */

static const char *const verdict_names[] = { "ack", "retry", "park" };

/* Message flags (under the subscription's mutex). */
#define MSG_IN_HANDLER 1u /* a handler call over it has not returned */
#define MSG_EARLY      2u /* settled before that call returned */
#define MSG_OUT        4u /* answered LATER: the handler holds it (and a reference) */

static void sub_free(struct loom_bus_sub *sub)
{
    pthread_mutex_destroy(&sub->mu);
    pthread_cond_destroy(&sub->cond);
    free(sub->group);
    free(sub->filter);
    free(sub->owner);
    free(sub);
}

/* Drop one reference (mu held, released here); frees the subscription at zero. */
static void sub_unref_locked(struct loom_bus_sub *sub)
{
    bool last = --sub->refs == 0;
    pthread_mutex_unlock(&sub->mu);
    if (last)
        sub_free(sub);
}

/* Turn a handler's verdict into one the backend applies: a retry at the last attempt parks,
 * a retry gets its backoff. */
static void normalize(struct loom_bus_sub *sub, struct loom_bus_msg *m)
{
    if (m->verdict > LOOM_BUS_PARK)
        m->verdict = LOOM_BUS_RETRY;
    if (m->verdict == LOOM_BUS_RETRY && m->attempt >= sub->opts.max_deliver) {
        char why[LOOM_BUS_REASON_MAX];
        snprintf(why, sizeof(why), "failed %u attempts%s%.200s", m->attempt,
                 m->reason[0] ? ": " : "", m->reason);
        memcpy(m->reason, why, sizeof(why));
        m->verdict = LOOM_BUS_PARK;
    }
    if (m->verdict == LOOM_BUS_RETRY && m->retry_delay == 0) {
        uint64_t d = sub->opts.retry_delay;
        for (uint32_t i = 1; i < m->attempt && d < 60 * LOOM_NS_PER_SEC; i++)
            d *= 2;
        m->retry_delay = LOOM_MIN(d, 60 * LOOM_NS_PER_SEC);
    }
}

/* Queue a settled message for the pump (mu held). */
static void enqueue_locked(struct loom_bus_sub *sub, struct loom_bus_msg *m)
{
    m->next = NULL;
    if (sub->settled_tail)
        sub->settled_tail->next = m;
    else
        sub->settled_head = m;
    sub->settled_tail = m;
}

/* Apply verdicts now (pump thread, or stop once the pump is gone). */
static void apply(struct loom_bus_sub *sub, struct loom_bus_msg **msgs, size_t n)
{
    if (n == 0)
        return;
    for (size_t i = 0; i < n; i++) {
        if (sub->m_settled[msgs[i]->verdict])
            loom_counter_inc(sub->m_settled[msgs[i]->verdict]);
        if (msgs[i]->verdict == LOOM_BUS_PARK)
            LOOM_LOG_KV(LOOM_LOG_WARN, "bus: event parked", LOOM_KV_CSTR("group", sub->group),
                        LOOM_KV_STR("id", msgs[i]->id), LOOM_KV_UINT("seq", msgs[i]->seq),
                        LOOM_KV_CSTR("reason", msgs[i]->reason));
    }
    sub->bus->type->settle(sub, msgs, n);
    pthread_mutex_lock(&sub->mu);
    sub->inflight -= n;
    pthread_mutex_unlock(&sub->mu);
}

void loom_bus_msg_settle(struct loom_bus_msg *msg, enum loom_bus_verdict verdict,
                         const char *reason)
{
    struct loom_bus_sub *sub = msg->sub;
    pthread_mutex_lock(&sub->mu);
    msg->verdict = verdict == LOOM_BUS_LATER ? LOOM_BUS_RETRY : verdict;
    if (reason)
        snprintf(msg->reason, sizeof(msg->reason), "%s", reason);
    normalize(sub, msg);
    if (msg->flags & MSG_IN_HANDLER) { /* the handler call that got it has not returned */
        msg->flags |= MSG_EARLY;
        pthread_mutex_unlock(&sub->mu);
        return;
    }
    msg->flags &= ~MSG_OUT;
    if (sub->stopped) { /* the pump is gone: free it unsettled (back after ack_wait) */
        sub->bus->type->release(sub, msg);
        sub_unref_locked(sub);
        return;
    }
    enqueue_locked(sub, msg);
    pthread_cond_signal(&sub->cond);
    sub->refs--; /* the owner's reference is alive while not stopped */
    pthread_mutex_unlock(&sub->mu);
    sub->bus->type->wake(sub);
}

/* Run the handlers over `n` messages and queue their verdicts for the pump; messages answered
 * LATER stay with the handler, each holding a reference to the subscription. */
static void run_handlers(struct loom_bus_sub *sub, struct loom_bus_msg **msgs, size_t n)
{
    pthread_mutex_lock(&sub->mu);
    for (size_t i = 0; i < n; i++) {
        msgs[i]->verdict = LOOM_BUS_ACK;
        msgs[i]->reason[0] = '\0';
        msgs[i]->retry_delay = 0;
        msgs[i]->flags = MSG_IN_HANDLER;
    }
    pthread_mutex_unlock(&sub->mu);
    if (sub->opts.on_batch) {
        sub->opts.on_batch(msgs, n, sub->opts.arg);
    } else {
        for (size_t i = 0; i < n; i++) {
            enum loom_bus_verdict v = sub->opts.on_msg(msgs[i], sub->opts.arg);
            pthread_mutex_lock(&sub->mu);
            if (!(msgs[i]->flags & MSG_EARLY))
                msgs[i]->verdict = v;
            pthread_mutex_unlock(&sub->mu);
        }
    }
    pthread_mutex_lock(&sub->mu);
    for (size_t i = 0; i < n; i++) {
        struct loom_bus_msg *m = msgs[i];
        bool early = m->flags & MSG_EARLY;
        m->flags = 0;
        if (!early && m->verdict == LOOM_BUS_LATER) {
            m->flags = MSG_OUT;
            sub->refs++;
            continue;
        }
        if (!early)
            normalize(sub, m);
        enqueue_locked(sub, m);
    }
    pthread_cond_signal(&sub->cond);
    pthread_mutex_unlock(&sub->mu);
}

static void on_loop_task(struct loom_task *task)
{
    struct loom_bus_sub *sub = LOOM_CONTAINER_OF(task, struct loom_bus_sub, task);
    pthread_mutex_lock(&sub->mu);
    struct loom_bus_msg *head = sub->loopq_head;
    sub->loopq_head = sub->loopq_tail = NULL;
    sub->task_posted = false;
    pthread_mutex_unlock(&sub->mu);
    size_t n = 0;
    for (struct loom_bus_msg *m = head; m; m = m->next)
        n++;
    if (n == 0)
        return;
    struct loom_bus_msg **msgs = loom_calloc(n, sizeof(*msgs));
    size_t i = 0;
    for (struct loom_bus_msg *m = head; m; m = m->next)
        msgs[i++] = m;
    run_handlers(sub, msgs, n);
    free(msgs);
    sub->bus->type->wake(sub);
}

static bool wait_stopping(struct loom_bus_sub *sub, uint64_t ns)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t t = (uint64_t)ts.tv_nsec + ns;
    ts.tv_sec += (time_t)(t / LOOM_NS_PER_SEC);
    ts.tv_nsec = (long)(t % LOOM_NS_PER_SEC);
    pthread_mutex_lock(&sub->mu);
    while (!sub->stopping && !sub->settled_head)
        if (pthread_cond_timedwait(&sub->cond, &sub->mu, &ts) == ETIMEDOUT)
            break;
    bool stop = sub->stopping;
    pthread_mutex_unlock(&sub->mu);
    return stop;
}

static void update_lag(struct loom_bus_sub *sub)
{
    struct loom_bus_group_info info;
    struct loom_error err = { 0 };
    memset(&info, 0, sizeof(info));
    if (sub->bus->type->group_info(sub->bus, sub->group, &info, &err) == LOOM_OK)
        loom_gauge_set(sub->m_lag, (double)info.lag);
}

static void *pump(void *arg)
{
    struct loom_bus_sub *sub = arg;
    const struct loom_bus_type *type = sub->bus->type;
    size_t cap = LOOM_MAX(sub->opts.max_inflight, sub->opts.batch);
    struct loom_bus_msg **msgs = loom_calloc(cap, sizeof(*msgs));
    uint64_t backoff = 0, last_warn = 0, errors = 0, last_lag = 0;
    for (;;) {
        pthread_mutex_lock(&sub->mu);
        if (sub->stopping) {
            pthread_mutex_unlock(&sub->mu);
            break;
        }
        struct loom_bus_msg *done = sub->settled_head;
        sub->settled_head = sub->settled_tail = NULL;
        pthread_mutex_unlock(&sub->mu);
        size_t ns = 0;
        for (struct loom_bus_msg *m = done, *next; m; m = next) {
            next = m->next;
            msgs[ns++] = m;
            if (ns == cap) {
                apply(sub, msgs, ns);
                ns = 0;
            }
        }
        apply(sub, msgs, ns);

        if (sub->m_lag && loom_now_ns() - last_lag > 2 * LOOM_NS_PER_SEC) {
            last_lag = loom_now_ns();
            update_lag(sub);
        }
        pthread_mutex_lock(&sub->mu);
        size_t inflight = sub->inflight;
        pthread_mutex_unlock(&sub->mu);
        size_t room = sub->opts.max_inflight > inflight ? sub->opts.max_inflight - inflight : 0;
        if (room == 0) {
            if (wait_stopping(sub, LOOM_NS_PER_SEC))
                break;
            continue;
        }
        uint64_t wait = inflight ? 100 * LOOM_NS_PER_MS : LOOM_NS_PER_SEC;
        struct loom_bus_msg *list = NULL;
        size_t n = 0;
        struct loom_error err = { 0 };
        loom_err e = type->fetch(sub, LOOM_MIN(room, sub->opts.batch), wait, &list, &n, &err);
        if (e) {
            errors++;
            uint64_t now = loom_now_ns();
            if (now - last_warn > 10 * LOOM_NS_PER_SEC) {
                LOOM_LOG_KV(LOOM_LOG_WARN, "bus: fetch failed; retrying",
                            LOOM_KV_CSTR("group", sub->group), LOOM_KV_CSTR("error", err.msg),
                            LOOM_KV_UINT("failures", errors));
                last_warn = now;
            }
            backoff = backoff ? LOOM_MIN(backoff * 2, 2 * LOOM_NS_PER_SEC) : 50 * LOOM_NS_PER_MS;
            if (wait_stopping(sub, backoff))
                break;
            continue;
        }
        backoff = 0;
        if (n == 0)
            continue;
        if (sub->m_delivered)
            loom_counter_add(sub->m_delivered, n);
        /* Deliveries past max_deliver never reached a verdict (a crash, a timeout): park them
         * without running the handler again. */
        size_t nh = 0;
        pthread_mutex_lock(&sub->mu);
        sub->inflight += n;
        for (struct loom_bus_msg *m = list, *next; m; m = next) {
            next = m->next;
            m->next = NULL;
            m->sub = sub;
            m->flags = 0;
            if (m->attempt > sub->opts.max_deliver) {
                m->verdict = LOOM_BUS_PARK;
                m->retry_delay = 0;
                snprintf(m->reason, sizeof(m->reason), "not settled after %u deliveries",
                         m->attempt - 1);
                enqueue_locked(sub, m);
            } else {
                msgs[nh++] = m;
            }
        }
        bool post = false;
        if (nh && sub->opts.loop) {
            for (size_t i = 0; i < nh; i++) {
                if (sub->loopq_tail)
                    sub->loopq_tail->next = msgs[i];
                else
                    sub->loopq_head = msgs[i];
                sub->loopq_tail = msgs[i];
            }
            post = !sub->task_posted;
            sub->task_posted = true;
        }
        pthread_mutex_unlock(&sub->mu);
        if (post)
            loom_loop_post(sub->opts.loop, &sub->task, on_loop_task);
        else if (nh && !sub->opts.loop)
            run_handlers(sub, msgs, nh);
    }
    free(msgs);
    return NULL;
}

loom_err loom_bus_subscribe(struct loom_bus *bus, const struct loom_bus_sub_options *opts,
                            struct loom_bus_sub **out, struct loom_error *err)
{
    loom_err e = check_group(opts->group, err);
    if (e)
        return e;
    const char *filter = opts->filter && opts->filter[0] ? opts->filter : "loom.>";
    if (!loom_bus_filter_valid(loom_str_cstr(filter)))
        return loom_error_set(err, LOOM_EINVAL, "filter \"%s\" is not a subject pattern", filter);
    if (!opts->on_msg == !opts->on_batch)
        return loom_error_set(err, LOOM_EINVAL, "give exactly one of on_msg and on_batch");
    struct loom_bus_sub *sub = loom_new(struct loom_bus_sub);
    sub->bus = bus;
    sub->opts = *opts;
    sub->group = loom_strdup(opts->group);
    sub->filter = loom_strdup(filter);
    sub->opts.group = sub->group;
    sub->opts.filter = sub->filter;
    if (!sub->opts.max_deliver)
        sub->opts.max_deliver = 5;
    if (!sub->opts.ack_wait)
        sub->opts.ack_wait = 30 * LOOM_NS_PER_SEC;
    if (!sub->opts.retry_delay)
        sub->opts.retry_delay = LOOM_NS_PER_SEC;
    if (!sub->opts.batch)
        sub->opts.batch = 64;
    sub->opts.batch = LOOM_MIN(sub->opts.batch, (size_t)LOOM_BUS_MAX_BATCH);
    if (!sub->opts.max_inflight)
        sub->opts.max_inflight = 4 * sub->opts.batch;
    sub->opts.max_inflight = LOOM_MAX(sub->opts.max_inflight, sub->opts.batch);
    sub->refs = 1;
    pthread_mutex_init(&sub->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_cond_init(&sub->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (opts->metrics) {
        char name[160];
        const char *own = opts->metrics_owner;
        sub->owner = own ? loom_strdup(own) : NULL;
        sub->opts.metrics_owner = sub->owner;
        const char *pre = own ? own : "";
        const char *sep = own ? "_" : "";
        const char *gl[] = { "group" };
        const char *gv[] = { sub->group };
        snprintf(name, sizeof(name), "loom_%s%sbus_delivered_total", pre, sep);
        sub->m_delivered = loom_counter_get(
            loom_metrics_counter_family(opts->metrics, own, name,
                                        "Events delivered to the group's handlers.", gl, 1),
            gv);
        const char *sl[] = { "group", "verdict" };
        snprintf(name, sizeof(name), "loom_%s%sbus_settled_total", pre, sep);
        struct loom_counter_family *sf = loom_metrics_counter_family(
            opts->metrics, own, name, "Deliveries settled, by verdict (ack, retry, park).", sl, 2);
        for (int v = 0; v < 3; v++) {
            const char *sv[] = { sub->group, verdict_names[v] };
            sub->m_settled[v] = loom_counter_get(sf, sv);
        }
        snprintf(name, sizeof(name), "loom_%s%sbus_lag_events", pre, sep);
        sub->m_lag =
            loom_gauge_get(loom_metrics_gauge_family(opts->metrics, own, name,
                                                     "Events the group has yet to settle.", gl, 1),
                           gv);
    }
    e = bus->type->sub_open(sub, err);
    if (e)
        goto out_free;
    if (pthread_create(&sub->thread, NULL, pump, sub) != 0) {
        e = loom_error_errno(err, "cannot start the subscription's thread");
        bus->type->sub_close(sub);
        goto out_free;
    }
    sub->thread_started = true;
    *out = sub;
    return LOOM_OK;
out_free:
    sub_free(sub);
    return e;
}

void loom_bus_sub_stop(struct loom_bus_sub *sub)
{
    if (!sub)
        return;
    pthread_mutex_lock(&sub->mu);
    sub->stopping = true;
    pthread_cond_broadcast(&sub->cond);
    pthread_mutex_unlock(&sub->mu);
    sub->bus->type->wake(sub);
    if (sub->thread_started)
        pthread_join(sub->thread, NULL);
    /* From here on late verdicts free their message; apply what was settled, release what
     * waits for the loop, then close. */
    pthread_mutex_lock(&sub->mu);
    sub->stopped = true;
    struct loom_bus_msg *done = sub->settled_head, *queued = sub->loopq_head;
    sub->settled_head = sub->settled_tail = NULL;
    sub->loopq_head = sub->loopq_tail = NULL;
    pthread_mutex_unlock(&sub->mu);
    size_t n = 0;
    for (struct loom_bus_msg *m = done; m; m = m->next)
        n++;
    if (n) {
        struct loom_bus_msg **v = loom_calloc(n, sizeof(*v));
        size_t i = 0;
        for (struct loom_bus_msg *m = done; m; m = m->next)
            v[i++] = m;
        apply(sub, v, n);
        free(v);
    }
    for (struct loom_bus_msg *m = queued, *next; m; m = next) {
        next = m->next;
        sub->bus->type->release(sub, m);
    }
    sub->bus->type->sub_close(sub);
    pthread_mutex_lock(&sub->mu);
    sub_unref_locked(sub);
}
