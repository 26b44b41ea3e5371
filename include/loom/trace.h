/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Trace context: the W3C Trace Context `traceparent` header (https://www.w3.org/TR/trace-context/)
 * parsed into ids and formatted back, new spans for a request, and the context of the work the
 * calling thread is doing now, so that every log line of a request carries its trace and span ids.
 * A server parses the incoming header, derives its own span with loom_trace_child(), sets it as
 * current while the handler runs, and sends loom_trace_format() of that span downstream. Ids come
 * from a fast per-thread generator: they are unique in practice but NOT unpredictable, so never
 * use them as secrets, tokens or nonces.
 */
#ifndef LOOM_TRACE_H
#define LOOM_TRACE_H

#include <loom/str.h>

#include <stdbool.h>
#include <stdint.h>

/* The one flag defined by Trace Context level 1: the caller may have recorded this trace. */
#define LOOM_TRACE_FLAG_SAMPLED 0x01

/* Length of a version-00 traceparent value, and the buffer loom_trace_format() needs. */
#define LOOM_TRACEPARENT_LEN  55
#define LOOM_TRACEPARENT_SIZE (LOOM_TRACEPARENT_LEN + 1)

/*
 * One span's place in a trace. The hex strings are kept next to the bytes (lowercase,
 * NUL-terminated) because log lines print them on every call. A plain value: copy it freely.
 */
struct loom_trace_ctx {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t parent_span_id[8]; /* all zero for a root span or a parsed remote context */
    uint8_t flags;             /* LOOM_TRACE_FLAG_SAMPLED or 0 */
    char trace_hex[33];
    char span_hex[17];
};

/*
 * Parse a traceparent header value. Leading and trailing spaces and tabs (HTTP OWS) are ignored.
 * Version 00 must be exactly 55 characters; version ff is invalid; a higher version is accepted
 * when its first 55 characters parse as version 00 does and are followed by the end or a '-'
 * (the rest is ignored). Only lowercase hex is accepted, and an all-zero trace id or parent id
 * is invalid. On success, out describes the caller's span: span_id is the header's parent-id,
 * parent_span_id is zero, and flags keeps only the sampled bit (the other bits are reserved and
 * must be sent as zero). Returns LOOM_OK or LOOM_EINVAL; out is written only on success.
 */
loom_err loom_trace_parse(struct loom_str traceparent, struct loom_trace_ctx *out);

/*
 * A new span. With a parent: the same trace id and flags, parent_span_id = parent's span_id and
 * a new random span id. With parent NULL: a new root with a random trace id, no parent and the
 * sampled flag set. Generated ids are never all zero. parent and out may be the same object.
 */
void loom_trace_child(const struct loom_trace_ctx *parent, struct loom_trace_ctx *out);

/* Write "00-<trace_id>-<span_id>-<flags>" and a NUL into out; returns LOOM_TRACEPARENT_LEN. */
size_t loom_trace_format(const struct loom_trace_ctx *ctx, char out[LOOM_TRACEPARENT_SIZE]);

static inline bool loom_trace_is_sampled(const struct loom_trace_ctx *ctx)
{
    return (ctx->flags & LOOM_TRACE_FLAG_SAMPLED) != 0;
}

/*
 * The calling thread's current context: set it while work for a request runs (the HTTP server
 * does around each handler) and clear it with NULL afterwards. The pointer is borrowed: it must
 * stay valid until it is replaced or cleared. loom_trace_current() returns it, or NULL.
 */
void loom_trace_set_current(const struct loom_trace_ctx *ctx);
const struct loom_trace_ctx *loom_trace_current(void);

/*
 * 64 bits from the calling thread's id generator (xoshiro256**, seeded from getrandom(2) on first
 * use in each thread and again in a child after fork). Fast and well distributed, NOT
 * cryptographically secure: fine for ids, sampling and jitter, never for secrets.
 */
uint64_t loom_trace_random_u64(void);

#endif
