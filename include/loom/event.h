/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Events: the CloudEvents 1.0 envelope in structured JSON mode, which is what every event on
 * loom's bus is (https://github.com/cloudevents/spec, format json-format.md). A producer builds
 * one with loom_event_build: specversion "1.0", an id (a UUIDv7, or an id derived from a
 * natural key so that a retried request yields the same event), source "/loom/<service>",
 * type "loom.<noun>.<verb>", time (RFC 3339), an optional subject, datacontenttype
 * application/json, the W3C traceparent of the work that caused it (an extension attribute),
 * and data, a JSON value. A consumer parses one with loom_event_parse, which is strict: every
 * required attribute present with the right type and size, no data_base64, extension names as
 * the spec says, a well-formed time and traceparent. docs/events.md lists every type loom emits
 * with its data schema.
 */
#ifndef LOOM_EVENT_H
#define LOOM_EVENT_H

#include <loom/core.h>
#include <loom/id.h>
#include <loom/trace.h>

#include <stdbool.h>
#include <stdint.h>

/* Ceilings for one event. An attribute longer than its ceiling is an error, never cut. */
#define LOOM_EVENT_MAX_BYTES   ((size_t)1 << 20) /* the whole encoded envelope */
#define LOOM_EVENT_ID_MAX      128
#define LOOM_EVENT_SOURCE_MAX  256
#define LOOM_EVENT_TYPE_MAX    128
#define LOOM_EVENT_SUBJECT_MAX 256
#define LOOM_EVENT_EXT_MAX     16 /* extension attributes besides traceparent */

/* What loom_event_build needs. Strings are borrowed for the call. */
struct loom_event_spec {
    struct loom_str id;      /* empty: a new UUIDv7 */
    const char *source;      /* "/loom/<service>" */
    const char *type;        /* "loom.<noun>.<verb>", lowercase, at least three dot-separated
                                tokens of [a-z0-9_] */
    struct loom_str subject; /* optional: what the event is about (a model name, a stream) */
    int64_t time_ns;         /* wall time in ns since the epoch; 0: now */
    /* The trace that caused the event: NULL takes the calling thread's current trace
     * (loom_trace_current), and without one the event carries no traceparent. */
    const struct loom_trace_ctx *trace;
    struct loom_str data; /* one JSON value, copied as is: the caller vouches for it (write it
                             with a struct loom_json_writer) */
};

/*
 * Append the envelope for `spec` to `out` as one JSON object, and the id used to `id_out`
 * (LOOM_EVENT_ID_MAX + 1 bytes, NUL-terminated; may be NULL). Returns LOOM_EINVAL when an
 * attribute is missing or malformed (a source that is not "/loom/...", a type that is not
 * "loom.<noun>.<verb>", empty data), LOOM_ETOOBIG when an attribute or the whole envelope is
 * over its ceiling, or out's own ceiling is hit; `err` says which. On error `out` may hold a
 * partial object past its previous length: truncate it back.
 */
loom_err loom_event_build(const struct loom_event_spec *spec, struct loom_buf *out, char *id_out,
                          struct loom_error *err);

/* An extension attribute other than traceparent, as received. */
struct loom_event_ext {
    struct loom_str name;
    struct loom_str value; /* a string unescaped, or a number's or boolean's JSON text */
};

/*
 * A parsed envelope. Every slice points into the parsed text or into the arena given to
 * loom_event_parse (escaped strings are decoded there): both must outlive the event.
 */
struct loom_event {
    struct loom_str id, source, type, specversion;
    struct loom_str subject;         /* empty when absent */
    struct loom_str time;            /* as written; empty when absent */
    int64_t time_ns;                 /* parsed time, 0 when absent */
    struct loom_str datacontenttype; /* empty when absent (then JSON is implied) */
    struct loom_str dataschema;      /* empty when absent */
    struct loom_str traceparent;     /* empty when absent */
    struct loom_trace_ctx trace;     /* parsed traceparent, valid when has_trace */
    bool has_trace;
    struct loom_str data; /* the JSON text of "data", forwardable as is; empty when absent */
    bool has_data;
    struct loom_event_ext ext[LOOM_EVENT_EXT_MAX]; /* extension attributes but traceparent */
    size_t n_ext;                                  /* how many */
};

/*
 * Parse one structured-mode envelope of `len` bytes (not necessarily NUL-terminated). Strict:
 * the JSON itself (RFC 8259), an object at the top, specversion "1.0", id, source and type
 * non-empty strings within their ceilings, optional attributes of the right type when present
 * (null counts as absent), time as RFC 3339 with a zone, traceparent as W3C version 00,
 * datacontenttype JSON (application/json or a +json type), no data_base64, extension names of
 * 1..20 characters [a-z0-9] with string, number or boolean values, at most
 * LOOM_EVENT_EXT_MAX of them, and no member twice. Returns LOOM_EPARSE (not JSON),
 * LOOM_EINVAL (not a valid event), LOOM_ETOOBIG (over a ceiling), LOOM_EUNSUPPORTED
 * (data_base64, or a datacontenttype that is not JSON), with the reason in `err`; *out is
 * written only on success.
 */
loom_err loom_event_parse(const char *src, size_t len, struct loom_arena *arena,
                          struct loom_event *out, struct loom_error *err);

/*
 * An id derived from a natural key: a version 8 UUID (RFC 9562) made of the first 122 bits of
 * SHA-256(ns || 0x00 || key). The same (ns, key) always gives the same id, which is how a
 * retried request yields the same events and the bus's dedup and the consumers' idempotence
 * can absorb the retry. `out` gets LOOM_UUID_LEN + 1 bytes, NUL-terminated.
 */
void loom_event_id_derive(struct loom_str ns, struct loom_str key, char out[LOOM_UUID_LEN + 1]);

/* Is `type` a loom event type: "loom." then two or more dot-separated tokens of [a-z0-9_],
 * at most LOOM_EVENT_TYPE_MAX bytes? */
bool loom_event_type_valid(struct loom_str type);

/*
 * Parse an RFC 3339 timestamp ("2026-11-24T19:10:00.123456Z", "...+01:00"; 'T' or 't', 'Z' or
 * 'z'; up to 9 fraction digits; seconds 60 are refused) into ns since the epoch. LOOM_EINVAL
 * for anything else; *out is written only on success.
 */
loom_err loom_event_parse_time(struct loom_str s, int64_t *out);

#endif
