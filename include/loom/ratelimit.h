/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Rate limiting with GCRA, the generic cell rate algorithm: each key keeps one number, its
 * theoretical arrival time (TAT). A limit of `rate` per second with a burst of `burst` lets a
 * request through when TAT - now <= burst / rate after adding 1 / rate to TAT; that is a token
 * bucket of `burst` tokens refilled at `rate`, kept in 8 bytes with no refill timer. Two stores
 * keep the TATs: one in memory for a process (sharded by key hash, a mutex per shard, bounded:
 * a full shard reuses a slot whose bucket is full again, else the least limited one), and one
 * on Redis for replicas that must share limits, where one Lua script (EVALSHA) checks and
 * updates every key of a request atomically on Redis's own clock. The Redis client here is a
 * small asynchronous one (hiredis on the loom loop, one connection per loop thread, commands
 * pipelined, a deadline per command), also usable for other commands (the gateway keeps its
 * idempotency records on it). Nothing here blocks a loop thread.
 */
#ifndef LOOM_RATELIMIT_H
#define LOOM_RATELIMIT_H

#include <loom/core.h>
#include <loom/loop.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- rates ---- */

/* A rate: `per_sec` requests per second on average, at most `burst` at once (>= 1). */
struct loom_rate {
    double per_sec;
    double burst;
};

/*
 * Parse "N/s", "N/m" or "N/h" (N a positive number), optionally followed by ":BURST" (a
 * positive integer; default: N per second rounded up, at least 1): "100/s", "6000/m:200".
 * LOOM_EINVAL for anything else, or a rate over 1e9/s; *out is written only on success.
 */
loom_err loom_rate_parse(struct loom_str s, struct loom_rate *out);

/* ---- checks ---- */

/* Longest key, in bytes. */
#define LOOM_RATELIMIT_KEY_MAX 128
/* Most limits one check may apply at once. */
#define LOOM_RATELIMIT_MAX_LIMITS 4

/* One limit applied to one key (the key is borrowed for the call). */
struct loom_ratelimit_limit {
    struct loom_str key;
    struct loom_rate rate;
};

/* The outcome of a check. When several limits apply, the figures are those of the most
 * constraining one (`index`): the fewest remaining when allowed, the longest wait when not. */
struct loom_ratelimit_result {
    bool allowed;         /* every limit allowed it; then every TAT moved, else none did */
    size_t index;         /* the limit the figures describe */
    int64_t remaining;    /* requests that would still pass right now (>= 0) */
    uint64_t retry_after; /* ns to wait before this request would pass (0 when allowed) */
    uint64_t reset;       /* ns until that limit's burst is whole again */
};

/* ---- in memory ---- */

struct loom_ratelimiter;

/* A limiter holding up to about `max_keys` keys (0: 65536) in memory. Thread-safe; caller
 * frees with loom_ratelimiter_free. */
struct loom_ratelimiter *loom_ratelimiter_new(size_t max_keys);
void loom_ratelimiter_free(struct loom_ratelimiter *rl);

/*
 * Apply `n` limits (1..LOOM_RATELIMIT_MAX_LIMITS, distinct keys) at monotonic time `now_ns`,
 * all or nothing. LOOM_EINVAL for a bad count, an empty key or one over LOOM_RATELIMIT_KEY_MAX,
 * or a rate that is not positive; *out is written on LOOM_OK only. Any thread.
 */
loom_err loom_ratelimiter_check(struct loom_ratelimiter *rl,
                                const struct loom_ratelimit_limit *limits, size_t n,
                                uint64_t now_ns, struct loom_ratelimit_result *out);

/* Keys held now (approximate while other threads check). */
size_t loom_ratelimiter_keys(struct loom_ratelimiter *rl);

/* ---- Redis: an asynchronous client on a loom loop ---- */

struct loom_redis;
/* A reply, valid during the callback only (opaque; read it with the accessors below). */
struct loom_redis_reply;

enum loom_redis_type {
    LOOM_REDIS_STRING = 1,
    LOOM_REDIS_ARRAY,
    LOOM_REDIS_INTEGER,
    LOOM_REDIS_NIL,
    LOOM_REDIS_STATUS,
    LOOM_REDIS_ERROR,
};

enum loom_redis_type loom_redis_reply_type(const struct loom_redis_reply *r);
/* The integer of an INTEGER reply (0 otherwise). */
int64_t loom_redis_reply_integer(const struct loom_redis_reply *r);
/* The bytes of a STRING, STATUS or ERROR reply (empty otherwise). */
struct loom_str loom_redis_reply_str(const struct loom_redis_reply *r);
size_t loom_redis_reply_count(const struct loom_redis_reply *r);
/* Element i (< count) of an ARRAY reply. */
const struct loom_redis_reply *loom_redis_reply_at(const struct loom_redis_reply *r, size_t i);

/*
 * The callback of a command: `reply` is the server's answer (an ERROR reply included) with err
 * LOOM_OK, or NULL with err LOOM_ECONNECT (not connected, or the connection failed),
 * LOOM_ETIMEDOUT (no answer within the command timeout: the connection is then dropped and
 * made again) or LOOM_ECANCELED (the client is being freed). Runs on the client's loop, never
 * from inside loom_redis_command.
 */
typedef void (*loom_redis_cb)(const struct loom_redis_reply *reply, loom_err err, void *arg);

struct loom_redis_options {
    uint64_t command_timeout; /* ns an answer may take [250 ms] */
    uint64_t reconnect_max;   /* ns, the longest wait between connection attempts [2 s] */
    size_t max_pending;       /* commands in flight at once; more get LOOM_EBUSY [65536] */
};

/*
 * A client for "redis://HOST:PORT" (port 6379 by default; a trailing "/DB" selects a
 * database) on `loop` (caller frees with loom_redis_free, on the loop's thread or after it
 * stopped). It connects in the background and reconnects with backoff when the connection
 * fails. opts may be NULL. NULL with *err (LOOM_EINVAL) for a malformed URL.
 */
struct loom_redis *loom_redis_new(struct loom_loop *loop, const char *url,
                                  const struct loom_redis_options *opts, struct loom_error *err);
/* Cancel every command in flight (callbacks run with LOOM_ECANCELED) and free the client. */
void loom_redis_free(struct loom_redis *r);
bool loom_redis_is_connected(const struct loom_redis *r);

/*
 * Send one command (argv[i] of lens[i] bytes, copied). LOOM_ECONNECT while not connected and
 * LOOM_EBUSY at max_pending: then cb is never called. Otherwise cb runs exactly once, later.
 * Loop thread only.
 */
loom_err loom_redis_command(struct loom_redis *r, int argc, const char *const *argv,
                            const size_t *lens, loom_redis_cb cb, void *arg);
/* Write the commands sent so far now, rather than when the loop next polls (so that they reach
 * Redis before whatever the caller does next, an HTTP answer say). Loop thread only. */
void loom_redis_flush(struct loom_redis *r);

typedef void (*loom_ratelimit_cb)(const struct loom_ratelimit_result *res, loom_err err, void *arg);

/*
 * The same check as loom_ratelimiter_check on Redis, shared by every process on that server:
 * keys are prefixed with "loom:rl:" and expire once their bucket is whole. The answer comes to
 * cb on the loop: LOOM_OK with the result, or an error of loom_redis_cb (the caller decides
 * whether to fail open). Errors returned here (then cb is never called): those of
 * loom_redis_command, and LOOM_EINVAL as for loom_ratelimiter_check.
 */
loom_err loom_ratelimit_redis_check(struct loom_redis *r, const struct loom_ratelimit_limit *limits,
                                    size_t n, loom_ratelimit_cb cb, void *arg);

#endif
