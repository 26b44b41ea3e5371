/* SPDX-License-Identifier: Apache-2.0 */
/*
 * GCRA rate limiting in memory and on Redis, and the small asynchronous Redis client the latter
 * runs on (see include/loom/ratelimit.h).
 *
 * The memory store is 64 shards, each a mutex and a fixed array of slots probed at most
 * PROBE slots from the key's hash, so a check costs one lock per shard touched and never
 * allocates. A slot whose TAT has passed describes a full bucket, which is the same as no slot
 * at all: such slots are reused freely, which is what bounds the table without a sweeper. When
 * the probe window holds no such slot, the least limited key (the smallest TAT) is forgotten;
 * that key gets a whole burst again, the price of a bounded table under more live keys than
 * it was sized for.
 *
 * The Redis client drives hiredis's asynchronous API from a loom_io watcher (hiredis asks for
 * read and write interest through its ev hooks). Replies come back in order, so the send times
 * of commands in flight are a ring, and one timer watching the oldest is the command timeout: a
 * server that stops answering gets its connection dropped, which fails every command in flight
 * at once, and a new connection is made with exponential backoff.
 */
#include <loom/log.h>
#include <loom/ratelimit.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <math.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- rates ---- */

loom_err loom_rate_parse(struct loom_str s, struct loom_rate *out)
{
    struct loom_str head, burst_s = loom_str_cut(s, ':', &head);
    bool has_burst = burst_s.ptr != NULL;
    struct loom_str num, unit = loom_str_cut(head, '/', &num);
    double n, per;
    if (!unit.ptr || loom_str_to_double(num, &n) || !(n > 0) || !isfinite(n))
        return LOOM_EINVAL;
    if (loom_str_eq(unit, LOOM_STR("s")))
        per = 1;
    else if (loom_str_eq(unit, LOOM_STR("m")))
        per = 60;
    else if (loom_str_eq(unit, LOOM_STR("h")))
        per = 3600;
    else
        return LOOM_EINVAL;
    double rate = n / per;
    if (rate > 1e9)
        return LOOM_EINVAL;
    double burst = ceil(rate) < 1 ? 1 : ceil(rate);
    if (has_burst) {
        uint64_t b;
        if (loom_str_to_u64(burst_s, &b) || b < 1 || b > 1000000000)
            return LOOM_EINVAL;
        burst = (double)b;
    }
    *out = (struct loom_rate){ .per_sec = rate, .burst = burst };
    return LOOM_OK;
}

/* ---- GCRA ---- */

struct gcra {
    uint64_t period; /* ns between requests at the average rate */
    uint64_t tau;    /* ns of burst tolerance */
};

static bool gcra_of(struct loom_rate r, struct gcra *g)
{
    if (!(r.per_sec > 0) || !(r.burst >= 1) || !isfinite(r.per_sec) || !isfinite(r.burst))
        return false;
    double p = 1e9 / r.per_sec;
    g->period = p < 1 ? 1 : p > 1e18 ? (uint64_t)1e18 : (uint64_t)p;
    double tau = (double)g->period * r.burst;
    g->tau = tau > 4e18 ? (uint64_t)4e18 : (uint64_t)tau;
    return true;
}

/* One limit at `now` against TAT `tat`: the new TAT if it passes, and the figures. */
static bool gcra_step(const struct gcra *g, uint64_t tat, uint64_t now, uint64_t *new_tat,
                      int64_t *remaining, uint64_t *retry, uint64_t *reset)
{
    uint64_t base = tat > now ? tat : now;
    uint64_t nt = base + g->period;
    if (nt - now > g->tau) {
        *remaining = 0;
        *retry = nt - g->tau - now;
        *reset = base - now;
        return false;
    }
    *new_tat = nt;
    *remaining = (int64_t)((g->tau - (nt - now)) / g->period);
    *retry = 0;
    *reset = nt - now;
    return true;
}

static bool key_ok(struct loom_str k)
{
    return k.len > 0 && k.len <= LOOM_RATELIMIT_KEY_MAX && k.ptr;
}

/* ---- in memory ---- */

#define SHARDS 64
#define PROBE  8

struct slot {
    uint64_t hash;
    uint64_t tat;
    uint8_t klen; /* 0: empty */
    char key[LOOM_RATELIMIT_KEY_MAX];
};

struct shard {
    pthread_mutex_t mu;
    struct slot *slots;
    size_t mask;
    size_t used;
};

struct loom_ratelimiter {
    struct shard shards[SHARDS];
    uint64_t seed;
};

static uint64_t hash_key(uint64_t seed, struct loom_str k)
{
    uint64_t h = 0xcbf29ce484222325ull ^ seed;
    for (size_t i = 0; i < k.len; i++) {
        h ^= (unsigned char)k.ptr[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h | 1; /* never 0 */
}

struct loom_ratelimiter *loom_ratelimiter_new(size_t max_keys)
{
    if (!max_keys)
        max_keys = 65536;
    size_t per = 16;
    while (per * SHARDS < max_keys && per < ((size_t)1 << 24))
        per *= 2;
    struct loom_ratelimiter *rl = loom_new(struct loom_ratelimiter);
    rl->seed = (uint64_t)loom_now_ns() * 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < SHARDS; i++) {
        pthread_mutex_init(&rl->shards[i].mu, NULL);
        rl->shards[i].slots = loom_calloc(per, sizeof(struct slot));
        rl->shards[i].mask = per - 1;
    }
    return rl;
}

void loom_ratelimiter_free(struct loom_ratelimiter *rl)
{
    if (!rl)
        return;
    for (size_t i = 0; i < SHARDS; i++) {
        pthread_mutex_destroy(&rl->shards[i].mu);
        free(rl->shards[i].slots);
    }
    free(rl);
}

static struct slot *slot_find(struct shard *sh, uint64_t h, struct loom_str k)
{
    for (size_t i = 0; i < PROBE; i++) {
        struct slot *s = &sh->slots[(h + i) & sh->mask];
        if (s->klen == k.len && s->hash == h && memcmp(s->key, k.ptr, k.len) == 0)
            return s;
    }
    return NULL;
}

/* A slot for a new key: an empty one, else one whose bucket is full again, else the least
 * limited. */
static struct slot *slot_claim(struct shard *sh, uint64_t h, struct loom_str k, uint64_t now)
{
    struct slot *best = NULL;
    for (size_t i = 0; i < PROBE; i++) {
        struct slot *s = &sh->slots[(h + i) & sh->mask];
        if (s->klen == 0) {
            sh->used++;
            best = s;
            break;
        }
        if (s->tat <= now) {
            best = s;
            break;
        }
        if (!best || s->tat < best->tat)
            best = s;
    }
    best->hash = h;
    best->klen = (uint8_t)k.len;
    memcpy(best->key, k.ptr, k.len);
    best->tat = 0;
    return best;
}

loom_err loom_ratelimiter_check(struct loom_ratelimiter *rl,
                                const struct loom_ratelimit_limit *limits, size_t n,
                                uint64_t now_ns, struct loom_ratelimit_result *out)
{
    if (n == 0 || n > LOOM_RATELIMIT_MAX_LIMITS)
        return LOOM_EINVAL;
    struct gcra g[LOOM_RATELIMIT_MAX_LIMITS];
    uint64_t h[LOOM_RATELIMIT_MAX_LIMITS], tat[LOOM_RATELIMIT_MAX_LIMITS];
    size_t sh[LOOM_RATELIMIT_MAX_LIMITS];
    for (size_t i = 0; i < n; i++) {
        if (!key_ok(limits[i].key) || !gcra_of(limits[i].rate, &g[i]))
            return LOOM_EINVAL;
        h[i] = hash_key(rl->seed, limits[i].key);
        sh[i] = (size_t)(h[i] >> 58) % SHARDS;
    }
    /* Lock each shard once, in index order, so concurrent multi-key checks cannot deadlock. */
    uint64_t mask = 0;
    for (size_t i = 0; i < n; i++)
        mask |= 1ull << sh[i];
    for (size_t s = 0; s < SHARDS; s++)
        if (mask & (1ull << s))
            pthread_mutex_lock(&rl->shards[s].mu);
    struct loom_ratelimit_result res = { .allowed = true, .remaining = INT64_MAX };
    for (size_t i = 0; i < n; i++) {
        struct slot *s = slot_find(&rl->shards[sh[i]], h[i], limits[i].key);
        int64_t rem;
        uint64_t retry, reset;
        bool ok = gcra_step(&g[i], s ? s->tat : 0, now_ns, &tat[i], &rem, &retry, &reset);
        if (!ok) {
            if (res.allowed || retry > res.retry_after) {
                res.index = i;
                res.retry_after = retry;
                res.reset = reset;
            }
            res.allowed = false;
            res.remaining = 0;
        } else if (res.allowed && rem < res.remaining) {
            res.index = i;
            res.remaining = rem;
            res.reset = reset;
        }
    }
    if (res.allowed) {
        for (size_t i = 0; i < n; i++) {
            struct shard *s = &rl->shards[sh[i]];
            struct slot *sl = slot_find(s, h[i], limits[i].key);
            if (!sl)
                sl = slot_claim(s, h[i], limits[i].key, now_ns);
            sl->tat = tat[i];
        }
    }
    for (size_t s = 0; s < SHARDS; s++)
        if (mask & (1ull << s))
            pthread_mutex_unlock(&rl->shards[s].mu);
    *out = res;
    return LOOM_OK;
}

size_t loom_ratelimiter_keys(struct loom_ratelimiter *rl)
{
    size_t n = 0;
    for (size_t i = 0; i < SHARDS; i++) {
        pthread_mutex_lock(&rl->shards[i].mu);
        n += rl->shards[i].used;
        pthread_mutex_unlock(&rl->shards[i].mu);
    }
    return n;
}

/* ---- Redis ---- */

enum loom_redis_type loom_redis_reply_type(const struct loom_redis_reply *r)
{
    return (enum loom_redis_type)((const redisReply *)(const void *)r)->type;
}

int64_t loom_redis_reply_integer(const struct loom_redis_reply *r)
{
    const redisReply *x = (const redisReply *)(const void *)r;
    return x->type == REDIS_REPLY_INTEGER ? (int64_t)x->integer : 0;
}

struct loom_str loom_redis_reply_str(const struct loom_redis_reply *r)
{
    const redisReply *x = (const redisReply *)(const void *)r;
    if (x->type == REDIS_REPLY_STRING || x->type == REDIS_REPLY_STATUS ||
        x->type == REDIS_REPLY_ERROR)
        return loom_str_make(x->str, x->len);
    return LOOM_STR_NULL;
}

size_t loom_redis_reply_count(const struct loom_redis_reply *r)
{
    const redisReply *x = (const redisReply *)(const void *)r;
    return x->type == REDIS_REPLY_ARRAY ? x->elements : 0;
}

const struct loom_redis_reply *loom_redis_reply_at(const struct loom_redis_reply *r, size_t i)
{
    const redisReply *x = (const redisReply *)(const void *)r;
    return (const struct loom_redis_reply *)(const void *)x->element[i];
}

struct loom_redis {
    struct loom_loop *loop;
    char *host;
    int port;
    int db;
    struct loom_redis_options opts;
    redisAsyncContext *ac; /* NULL while disconnected */
    bool connected;
    struct loom_io io;
    unsigned events;
    struct loom_timer reconnect;
    uint64_t backoff;
    struct loom_timer watchdog;
    uint64_t *sent; /* ring of send times of the commands in flight */
    size_t head, count;
    loom_err fail_with; /* why callbacks without a reply are failing */
    bool freeing;
    bool warned;
};

struct pending {
    struct loom_redis *r;
    loom_redis_cb cb;
    void *arg;
};

static void redis_connect(struct loom_redis *r);

static void ev_update(struct loom_redis *r)
{
    if (r->events)
        loom_io_start(&r->io, r->events);
    else
        loom_io_stop(&r->io);
}

static void ev_add_read(void *p)
{
    struct loom_redis *r = p;
    r->events |= LOOM_IO_READ;
    ev_update(r);
}
static void ev_del_read(void *p)
{
    struct loom_redis *r = p;
    r->events &= ~(unsigned)LOOM_IO_READ;
    ev_update(r);
}
static void ev_add_write(void *p)
{
    struct loom_redis *r = p;
    r->events |= LOOM_IO_WRITE;
    ev_update(r);
}
static void ev_del_write(void *p)
{
    struct loom_redis *r = p;
    r->events &= ~(unsigned)LOOM_IO_WRITE;
    ev_update(r);
}
static void ev_cleanup(void *p)
{
    struct loom_redis *r = p;
    r->events = 0;
    loom_io_stop(&r->io);
}

static void on_io(struct loom_io *io, unsigned events)
{
    struct loom_redis *r = LOOM_CONTAINER_OF(io, struct loom_redis, io);
    redisAsyncContext *ac = r->ac;
    if (!ac)
        return;
    if (events & (LOOM_IO_READ | LOOM_IO_HUP | LOOM_IO_ERROR))
        redisAsyncHandleRead(ac);
    if ((events & LOOM_IO_WRITE) && r->ac == ac)
        redisAsyncHandleWrite(ac);
}

static void schedule_reconnect(struct loom_redis *r)
{
    if (r->freeing)
        return;
    r->backoff = r->backoff ? LOOM_MIN(r->backoff * 2, r->opts.reconnect_max) : 50 * LOOM_NS_PER_MS;
    loom_timer_start(&r->reconnect, r->backoff, 0);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct loom_redis *r = ac->data;
    if (status != REDIS_OK) {
        if (!r->warned)
            LOOM_LOG_KV(LOOM_LOG_WARN, "redis: cannot connect", LOOM_KV_CSTR("host", r->host),
                        LOOM_KV_INT("port", r->port), LOOM_KV_CSTR("error", ac->errstr));
        r->warned = true;
        r->ac = NULL; /* hiredis frees the context after this callback */
        r->connected = false;
        schedule_reconnect(r);
        return;
    }
    r->connected = true;
    r->backoff = 0;
    if (r->warned)
        LOOM_LOG_KV(LOOM_LOG_INFO, "redis: connected", LOOM_KV_CSTR("host", r->host),
                    LOOM_KV_INT("port", r->port));
    r->warned = false;
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct loom_redis *r = ac->data;
    LOOM_UNUSED(status);
    if (r->ac == ac) {
        r->ac = NULL;
        r->connected = false;
        if (!r->freeing) {
            LOOM_LOG_KV(LOOM_LOG_WARN, "redis: connection lost", LOOM_KV_CSTR("host", r->host),
                        LOOM_KV_INT("port", r->port));
            r->warned = true;
        }
        schedule_reconnect(r);
    }
}

static void redis_connect(struct loom_redis *r)
{
    redisAsyncContext *ac = redisAsyncConnect(r->host, r->port);
    if (!ac) {
        schedule_reconnect(r);
        return;
    }
    if (ac->err) {
        if (!r->warned)
            LOOM_LOG_KV(LOOM_LOG_WARN, "redis: cannot connect", LOOM_KV_CSTR("host", r->host),
                        LOOM_KV_INT("port", r->port), LOOM_KV_CSTR("error", ac->errstr));
        r->warned = true;
        redisAsyncFree(ac);
        schedule_reconnect(r);
        return;
    }
    r->ac = ac;
    ac->data = r;
    r->events = 0;
    loom_io_init(&r->io, r->loop, ac->c.fd, on_io);
    ac->ev.data = r;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    redisAsyncSetConnectCallback(ac, on_connect); /* asks for write interest: the connect */
    if (r->db) {
        char db[16];
        snprintf(db, sizeof(db), "%d", r->db);
        redisAsyncCommand(ac, NULL, NULL, "SELECT %s", db);
    }
}

static void on_reconnect(struct loom_timer *t)
{
    struct loom_redis *r = LOOM_CONTAINER_OF(t, struct loom_redis, reconnect);
    if (!r->ac && !r->freeing)
        redis_connect(r);
}

static void watchdog_arm(struct loom_redis *r)
{
    if (r->count)
        loom_timer_start_at(&r->watchdog, r->sent[r->head] + r->opts.command_timeout);
    else
        loom_timer_stop(&r->watchdog);
}

static void on_watchdog(struct loom_timer *t)
{
    struct loom_redis *r = LOOM_CONTAINER_OF(t, struct loom_redis, watchdog);
    if (!r->count)
        return;
    if (loom_loop_now(r->loop) < r->sent[r->head] + r->opts.command_timeout) {
        watchdog_arm(r);
        return;
    }
    if (r->ac) {
        LOOM_LOG_KV(LOOM_LOG_WARN, "redis: no answer in time; reconnecting",
                    LOOM_KV_CSTR("host", r->host), LOOM_KV_INT("port", r->port),
                    LOOM_KV_UINT("timeout_ms", r->opts.command_timeout / LOOM_NS_PER_MS));
        redisAsyncContext *ac = r->ac;
        r->ac = NULL;
        r->connected = false;
        r->fail_with = LOOM_ETIMEDOUT;
        redisAsyncFree(ac); /* every pending callback runs with no reply */
        r->fail_with = LOOM_OK;
        schedule_reconnect(r);
    }
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    LOOM_UNUSED(ac);
    struct pending *p = privdata;
    struct loom_redis *r = p->r;
    if (r->count) {
        r->head = (r->head + 1) % r->opts.max_pending;
        r->count--;
    }
    loom_err e = LOOM_OK;
    if (!reply)
        e = r->freeing ? LOOM_ECANCELED : r->fail_with ? r->fail_with : LOOM_ECONNECT;
    p->cb((const struct loom_redis_reply *)reply, e, p->arg);
    free(p);
    if (!r->freeing)
        watchdog_arm(r);
}

struct loom_redis *loom_redis_new(struct loom_loop *loop, const char *url,
                                  const struct loom_redis_options *opts, struct loom_error *err)
{
    struct loom_str u = loom_str_cstr(url);
    if (!loom_str_has_prefix(u, LOOM_STR("redis://"))) {
        loom_error_set(err, LOOM_EINVAL, "a Redis URL is redis://HOST[:PORT][/DB]");
        return NULL;
    }
    struct loom_str rest = loom_str_make(u.ptr + 8, u.len - 8), auth;
    struct loom_str dbs = loom_str_cut(rest, '/', &auth);
    if (loom_str_index(auth, '@') >= 0) {
        loom_error_set(err, LOOM_EINVAL, "Redis URLs with credentials are not supported");
        return NULL;
    }
    struct loom_str host, port_s = loom_str_cut(auth, ':', &host);
    uint64_t port = 6379, db = 0;
    if ((port_s.ptr && (loom_str_to_u64(port_s, &port) || port == 0 || port > 65535)) ||
        host.len == 0 || host.len > 255 ||
        (dbs.ptr && dbs.len && (loom_str_to_u64(dbs, &db) || db > 1000))) {
        loom_error_set(err, LOOM_EINVAL, "a Redis URL is redis://HOST[:PORT][/DB]");
        return NULL;
    }
    struct loom_redis *r = loom_new(struct loom_redis);
    r->loop = loop;
    r->host = loom_str_dup(host);
    r->port = (int)port;
    r->db = (int)db;
    if (opts)
        r->opts = *opts;
    if (!r->opts.command_timeout)
        r->opts.command_timeout = 250 * LOOM_NS_PER_MS;
    if (!r->opts.reconnect_max)
        r->opts.reconnect_max = 2 * LOOM_NS_PER_SEC;
    if (!r->opts.max_pending)
        r->opts.max_pending = 65536;
    r->sent = loom_calloc(r->opts.max_pending, sizeof(*r->sent));
    loom_timer_init(&r->reconnect, loop, on_reconnect);
    loom_timer_init(&r->watchdog, loop, on_watchdog);
    r->io.fd = -1;
    redis_connect(r);
    return r;
}

void loom_redis_free(struct loom_redis *r)
{
    if (!r)
        return;
    r->freeing = true;
    loom_timer_stop(&r->reconnect);
    loom_timer_stop(&r->watchdog);
    if (r->ac) {
        redisAsyncContext *ac = r->ac;
        r->ac = NULL;
        redisAsyncFree(ac);
    }
    free(r->sent);
    free(r->host);
    free(r);
}

bool loom_redis_is_connected(const struct loom_redis *r)
{
    return r && r->connected && r->ac;
}

loom_err loom_redis_command(struct loom_redis *r, int argc, const char *const *argv,
                            const size_t *lens, loom_redis_cb cb, void *arg)
{
    if (!loom_redis_is_connected(r))
        return LOOM_ECONNECT;
    if (r->count >= r->opts.max_pending)
        return LOOM_EBUSY;
    struct pending *p = loom_new(struct pending);
    *p = (struct pending){ r, cb, arg };
    if (redisAsyncCommandArgv(r->ac, on_reply, p, argc, (const char **)argv, lens) != REDIS_OK) {
        free(p);
        return LOOM_ECONNECT;
    }
    r->sent[(r->head + r->count) % r->opts.max_pending] = loom_loop_now(r->loop);
    r->count++;
    if (r->count == 1)
        watchdog_arm(r);
    return LOOM_OK;
}

void loom_redis_flush(struct loom_redis *r)
{
    if (r->ac && loom_redis_is_connected(r))
        redisAsyncHandleWrite(r->ac);
}

/* ---- GCRA on Redis ---- */

/* KEYS: the buckets; ARGV: per key, its period and tolerance in microseconds. Returns
 * {allowed, remaining, retry_us, reset_us, index (from 0)}. Redis's clock, so replicas with
 * different clocks agree. */
static const char gcra_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local ok, rem, retry, reset, idx = 1, -1, 0, 0, 0\n"
    "local tats = {}\n"
    "for i = 1, #KEYS do\n"
    "  local T, tau = tonumber(ARGV[2*i-1]), tonumber(ARGV[2*i])\n"
    "  local tat = tonumber(redis.call('GET', KEYS[i]) or 0)\n"
    "  if tat < now then tat = now end\n"
    "  local nt = tat + T\n"
    "  if nt - now > tau then\n"
    "    local ra = nt - tau - now\n"
    "    if ok == 1 or ra > retry then retry = ra; reset = tat - now; idx = i - 1 end\n"
    "    ok = 0; rem = 0\n"
    "  else\n"
    "    local r = math.floor((tau - (nt - now)) / T)\n"
    "    if ok == 1 and (rem < 0 or r < rem) then rem = r; reset = nt - now; idx = i - 1 end\n"
    "  end\n"
    "  tats[i] = nt\n"
    "end\n"
    "if ok == 1 then\n"
    "  for i = 1, #KEYS do\n"
    "    redis.call('SET', KEYS[i], string.format('%d', tats[i]), 'PX',\n"
    "               math.floor((tats[i] - now) / 1000) + 1)\n"
    "  end\n"
    "end\n"
    "return {ok, rem, retry, reset, idx}\n";

struct rl_call {
    loom_ratelimit_cb cb;
    void *arg;
    struct loom_redis *r;
    bool retried;
    int argc;
    size_t lens[3 + 3 * LOOM_RATELIMIT_MAX_LIMITS];
    char *argv[3 + 3 * LOOM_RATELIMIT_MAX_LIMITS];
    char mem[LOOM_RATELIMIT_MAX_LIMITS * (LOOM_RATELIMIT_KEY_MAX + 64) + 128];
};

static void script_sha(char out[41])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_Digest(gcra_lua, sizeof(gcra_lua) - 1, md, &n, EVP_sha1(), NULL);
    static const char hex[] = "0123456789abcdef";
    for (unsigned i = 0; i < 20; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[40] = '\0';
}

static void rl_reply(const struct loom_redis_reply *reply, loom_err err, void *arg)
{
    struct rl_call *c = arg;
    if (!err && loom_redis_reply_type(reply) == LOOM_REDIS_ERROR && !c->retried &&
        loom_str_has_prefix(loom_redis_reply_str(reply), LOOM_STR("NOSCRIPT"))) {
        /* The server has not seen the script yet (or was restarted): EVAL loads it. */
        c->retried = true;
        c->argv[0] = "EVAL";
        c->lens[0] = 4;
        c->argv[1] = (char *)gcra_lua;
        c->lens[1] = sizeof(gcra_lua) - 1;
        if (loom_redis_command(c->r, c->argc, (const char *const *)c->argv, c->lens, rl_reply, c) ==
            LOOM_OK)
            return;
        err = LOOM_ECONNECT;
    }
    struct loom_ratelimit_result res = { 0 };
    if (!err) {
        if (loom_redis_reply_type(reply) != LOOM_REDIS_ARRAY ||
            loom_redis_reply_count(reply) != 5) {
            err = LOOM_EPARSE;
        } else {
            int64_t v[5];
            for (size_t i = 0; i < 5; i++)
                v[i] = loom_redis_reply_integer(loom_redis_reply_at(reply, i));
            res.allowed = v[0] == 1;
            res.remaining = v[1] < 0 ? 0 : v[1];
            res.retry_after = (uint64_t)(v[2] < 0 ? 0 : v[2]) * LOOM_NS_PER_US;
            res.reset = (uint64_t)(v[3] < 0 ? 0 : v[3]) * LOOM_NS_PER_US;
            res.index = (size_t)(v[4] < 0 ? 0 : v[4]);
        }
    }
    c->cb(&res, err, c->arg);
    free(c);
}

loom_err loom_ratelimit_redis_check(struct loom_redis *r, const struct loom_ratelimit_limit *limits,
                                    size_t n, loom_ratelimit_cb cb, void *arg)
{
    if (n == 0 || n > LOOM_RATELIMIT_MAX_LIMITS)
        return LOOM_EINVAL;
    struct gcra g[LOOM_RATELIMIT_MAX_LIMITS];
    for (size_t i = 0; i < n; i++)
        if (!key_ok(limits[i].key) || !gcra_of(limits[i].rate, &g[i]))
            return LOOM_EINVAL;
    struct rl_call *c = loom_new(struct rl_call);
    c->cb = cb;
    c->arg = arg;
    c->r = r;
    char *p = c->mem;
    int a = 0;
    c->argv[a] = "EVALSHA";
    c->lens[a++] = 7;
    script_sha(p);
    c->argv[a] = p;
    c->lens[a++] = 40;
    p += 41;
    int k = snprintf(p, 8, "%zu", n);
    c->argv[a] = p;
    c->lens[a++] = (size_t)k;
    p += k + 1;
    for (size_t i = 0; i < n; i++) {
        memcpy(p, "loom:rl:", 8);
        memcpy(p + 8, limits[i].key.ptr, limits[i].key.len);
        c->argv[a] = p;
        c->lens[a++] = 8 + limits[i].key.len;
        p += 8 + limits[i].key.len;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t period = LOOM_MAX(g[i].period / LOOM_NS_PER_US, 1);
        uint64_t tau = g[i].tau / LOOM_NS_PER_US;
        k = snprintf(p, 24, "%llu", (unsigned long long)period);
        c->argv[a] = p;
        c->lens[a++] = (size_t)k;
        p += k + 1;
        k = snprintf(p, 24, "%llu", (unsigned long long)tau);
        c->argv[a] = p;
        c->lens[a++] = (size_t)k;
        p += k + 1;
    }
    c->argc = a;
    loom_err e = loom_redis_command(r, a, (const char *const *)c->argv, c->lens, rl_reply, c);
    if (e)
        free(c);
    return e;
}
