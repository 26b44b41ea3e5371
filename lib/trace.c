/* SPDX-License-Identifier: Apache-2.0 */
/*
 * W3C Trace Context: the traceparent parser and formatter, span id generation and the per-thread
 * current context. Ids are drawn from xoshiro256** with one state per thread, so generating them
 * takes no lock and no system call after the first; the state is seeded from getrandom(2), and a
 * fork makes every thread of the child reseed so parent and child never repeat each other's ids.
 */
#include <loom/trace.h>

#include <loom/core.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static _Thread_local const struct loom_trace_ctx *current;

void loom_trace_set_current(const struct loom_trace_ctx *ctx)
{
    current = ctx;
}

const struct loom_trace_ctx *loom_trace_current(void)
{
    return current;
}

/* Id generator. */

struct rng {
    uint64_t s[4];
    unsigned gen; /* fork_gen when seeded; 0: never seeded */
};

static _Thread_local struct rng rng;
/* Bumped in the child of every fork: a thread whose rng.gen differs reseeds. Starts at 1 so a
 * zeroed thread-local state always counts as unseeded. */
static atomic_uint fork_gen = 1;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void)
{
    atomic_fetch_add_explicit(&fork_gen, 1, memory_order_relaxed);
}

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, on_fork_child);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* splitmix64: spreads a weak seed over the whole xoshiro state when getrandom is unavailable. */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void rng_seed(struct rng *r, unsigned gen)
{
    pthread_once(&atfork_once, register_atfork);
    size_t got = 0;
    while (got < sizeof(r->s)) {
        ssize_t n = getrandom((char *)r->s + got, sizeof(r->s) - got, GRND_NONBLOCK);
        if (n > 0) {
            got += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        break;
    }
    if (got < sizeof(r->s) || (r->s[0] | r->s[1] | r->s[2] | r->s[3]) == 0) {
        /* No entropy yet (early boot, seccomp): distinct per thread, process and instant. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
        x ^= (uint64_t)getpid() << 32;
        x ^= (uint64_t)(uintptr_t)r;
        x ^= r->s[0];
        for (int i = 0; i < 4; i++)
            r->s[i] = splitmix64(&x);
    }
    r->gen = gen;
}

uint64_t loom_trace_random_u64(void)
{
    struct rng *r = &rng;
    unsigned gen = atomic_load_explicit(&fork_gen, memory_order_relaxed);
    if (LOOM_UNLIKELY(r->gen != gen))
        rng_seed(r, gen);
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Hex. */

static const char hexdig[] = "0123456789abcdef";

static void to_hex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hexdig[p[i] >> 4];
        out[2 * i + 1] = hexdig[p[i] & 15];
    }
    out[2 * n] = '\0';
}

/* Value of a lowercase hex digit, or -1: the spec allows no uppercase. */
static int unhex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Decode 2n hex digits into n bytes; false on any non-lowercase-hex character. */
static bool from_hex(const char *s, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i++) {
        int hi = unhex(s[2 * i]), lo = unhex(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

static bool is_zero(const uint8_t *p, size_t n)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= p[i];
    return acc == 0;
}

static void fill_hex(struct loom_trace_ctx *ctx)
{
    to_hex(ctx->trace_id, sizeof(ctx->trace_id), ctx->trace_hex);
    to_hex(ctx->span_id, sizeof(ctx->span_id), ctx->span_hex);
}

/* The header: 2 version, '-', 32 trace id, '-', 16 parent id, '-', 2 flags. */
enum {
    TP_TRACE = 3,
    TP_SPAN = 36,
    TP_FLAGS = 53,
};

loom_err loom_trace_parse(struct loom_str traceparent, struct loom_trace_ctx *out)
{
    struct loom_str s = loom_str_trim(traceparent);
    if (s.len < LOOM_TRACEPARENT_LEN)
        return LOOM_EINVAL;
    const char *p = s.ptr;
    uint8_t version;
    if (!from_hex(p, 1, &version) || version == 0xff)
        return LOOM_EINVAL;
    if (version == 0 && s.len != LOOM_TRACEPARENT_LEN)
        return LOOM_EINVAL;
    /* A future version may append fields, each introduced by a dash. */
    if (s.len > LOOM_TRACEPARENT_LEN && p[LOOM_TRACEPARENT_LEN] != '-')
        return LOOM_EINVAL;
    if (p[2] != '-' || p[TP_SPAN - 1] != '-' || p[TP_FLAGS - 1] != '-')
        return LOOM_EINVAL;
    struct loom_trace_ctx ctx = { 0 };
    uint8_t flags;
    if (!from_hex(p + TP_TRACE, sizeof(ctx.trace_id), ctx.trace_id) ||
        !from_hex(p + TP_SPAN, sizeof(ctx.span_id), ctx.span_id) ||
        !from_hex(p + TP_FLAGS, 1, &flags))
        return LOOM_EINVAL;
    if (is_zero(ctx.trace_id, sizeof(ctx.trace_id)) || is_zero(ctx.span_id, sizeof(ctx.span_id)))
        return LOOM_EINVAL;
    ctx.flags = flags & LOOM_TRACE_FLAG_SAMPLED;
    fill_hex(&ctx);
    *out = ctx;
    return LOOM_OK;
}

static void random_id(uint8_t *out, size_t n)
{
    do {
        for (size_t i = 0; i < n; i += 8) {
            uint64_t v = loom_trace_random_u64();
            memcpy(out + i, &v, n - i < 8 ? n - i : 8);
        }
    } while (is_zero(out, n));
}

void loom_trace_child(const struct loom_trace_ctx *parent, struct loom_trace_ctx *out)
{
    struct loom_trace_ctx ctx = { 0 };
    if (parent) {
        memcpy(ctx.trace_id, parent->trace_id, sizeof(ctx.trace_id));
        memcpy(ctx.parent_span_id, parent->span_id, sizeof(ctx.parent_span_id));
        ctx.flags = parent->flags;
    } else {
        random_id(ctx.trace_id, sizeof(ctx.trace_id));
        ctx.flags = LOOM_TRACE_FLAG_SAMPLED;
    }
    random_id(ctx.span_id, sizeof(ctx.span_id));
    fill_hex(&ctx);
    *out = ctx;
}

size_t loom_trace_format(const struct loom_trace_ctx *ctx, char out[LOOM_TRACEPARENT_SIZE])
{
    out[0] = '0';
    out[1] = '0';
    out[2] = '-';
    to_hex(ctx->trace_id, sizeof(ctx->trace_id), out + TP_TRACE);
    out[TP_SPAN - 1] = '-';
    to_hex(ctx->span_id, sizeof(ctx->span_id), out + TP_SPAN);
    out[TP_FLAGS - 1] = '-';
    to_hex(&ctx->flags, 1, out + TP_FLAGS);
    return LOOM_TRACEPARENT_LEN;
}
