/* SPDX-License-Identifier: Apache-2.0 */
/*
 * JSON for hot paths: a strict RFC 8259 tokenizer that turns a document into a flat array of
 * tokens pointing back into the input (no DOM, no copies), helpers to navigate and convert
 * those tokens, and a writer that appends to a bounded struct loom_buf. Request bodies (KServe
 * v2 infer requests, feature vectors, events) are parsed once into a request arena; strings and
 * numbers are decoded lazily, only where a handler asks for them. Every input is capped: bytes,
 * tokens and nesting depth. Numbers are read and written in the "C" locale's format; loom never
 * calls setlocale, and neither should a program that embeds it.
 */
#ifndef LOOM_JSON_H
#define LOOM_JSON_H

#include <loom/err.h>
#include <loom/mem.h>
#include <loom/str.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Append `s` (n bytes) to `out` as a quoted JSON string: ", \ and control characters escaped,
 * valid UTF-8 copied as is, each invalid UTF-8 byte replaced by \ufffd. Returns LOOM_ETOOBIG if
 * the buffer's ceiling is hit (the buffer may then hold a partial string).
 */
loom_err loom_json_escape(struct loom_buf *out, const char *s, size_t n);

/* ---- Tokenizer ---------------------------------------------------------------------------- */

enum loom_json_type {
    LOOM_JSON_OBJECT = 1,
    LOOM_JSON_ARRAY,
    LOOM_JSON_STRING,
    LOOM_JSON_NUMBER,
    LOOM_JSON_TRUE,
    LOOM_JSON_FALSE,
    LOOM_JSON_NULL,
};

/* Token flags. */
#define LOOM_JSON_ESCAPED   0x01 /* a string with at least one backslash escape */
#define LOOM_JSON_INTEGER   0x02 /* a number with neither fraction nor exponent */
#define LOOM_JSON_NONFINITE 0x04 /* NaN, Infinity or -Infinity (only with allow_nonfinite) */

/*
 * One value (or object key) of a document. Offsets are bytes into the source: a string's span
 * excludes its quotes, a container's span runs from its opening to just past its closing bracket,
 * so the text of any value can be forwarded as is. `next` is the index of the first token after
 * this one's subtree (index + 1 for scalars): skipping a subtree is O(1).
 */
struct loom_json_tok {
    uint8_t type;  /* enum loom_json_type */
    uint8_t flags; /* LOOM_JSON_ESCAPED, LOOM_JSON_INTEGER */
    uint32_t start, end;
    int32_t size; /* object: key/value pairs; array: elements; others: 0 */
    int32_t next;
};

/*
 * Ceilings for one parse, and one opt-in extension. A zero field means its default. Offsets are
 * 32-bit, so max_bytes is also clamped to UINT32_MAX.
 *
 * allow_nonfinite accepts the bare tokens NaN, Infinity and -Infinity wherever a value may
 * stand (exactly those spellings, case-sensitive), as number tokens flagged LOOM_JSON_NONFINITE.
 * They are not RFC 8259 JSON, but XGBoost writes NaN into model files and Python's json module
 * (hence KServe clients) writes all three for float tensors. Off by default: strict RFC 8259.
 */
struct loom_json_limits {
    uint32_t max_depth;   /* nesting of objects and arrays; default 64 */
    uint32_t max_tokens;  /* default 1 << 20 (at most INT32_MAX) */
    size_t max_bytes;     /* default LOOM_BUF_MAX_DEFAULT (64 MiB) */
    bool allow_nonfinite; /* accept NaN, Infinity, -Infinity as numbers; default false */
};

#define LOOM_JSON_MAX_DEPTH_DEFAULT  64u
#define LOOM_JSON_MAX_TOKENS_DEFAULT (1u << 20)

/*
 * A parsed document. The tokens are in document order: toks[0] is the top-level value, an
 * object's members are its key token immediately followed by the key's value subtree.
 */
struct loom_json_doc {
    const char *src; /* borrowed: the parsed input, which must outlive the document */
    size_t len;
    struct loom_json_tok *toks; /* in the arena given to loom_json_parse */
    int ntoks;
};

/*
 * Tokenize `len` bytes at `src` (not necessarily NUL-terminated; nothing past src + len is
 * read), validating them strictly against RFC 8259: one value with only whitespace around it,
 * UTF-8 throughout (a byte-order mark is rejected), no leading zeros, no trailing commas, no raw
 * control characters in strings, only the standard escapes, and \u surrogates correctly paired.
 * `limits` may be NULL for the defaults. The token array is allocated in `arena` (which may have
 * grown even when parsing fails) and `src` is borrowed by *doc, which is written only on
 * success. Returns LOOM_EPARSE for malformed input and LOOM_ETOOBIG when a limit is hit; `err`
 * (may be NULL) then says what and where: "expected ',' or '}' at offset 17 (line 1, column 18)"
 * (columns count bytes, from 1).
 */
loom_err loom_json_parse(const char *src, size_t len, const struct loom_json_limits *limits,
                         struct loom_arena *arena, struct loom_json_doc *doc,
                         struct loom_error *err);

/* ---- Navigation (indices must be valid: 0 <= i < doc->ntoks) ------------------------------ */

static inline enum loom_json_type loom_json_type(const struct loom_json_doc *doc, int i)
{
    return (enum loom_json_type)doc->toks[i].type;
}

/* The token's bytes in the source, borrowed: a string without quotes and still escaped, a
 * number's text, or a container's full text. */
static inline struct loom_str loom_json_slice(const struct loom_json_doc *doc, int i)
{
    return loom_str_make(doc->src + doc->toks[i].start, doc->toks[i].end - doc->toks[i].start);
}

/* The index of the first token after i's subtree (may be doc->ntoks). */
static inline int loom_json_skip(const struct loom_json_doc *doc, int i)
{
    return doc->toks[i].next;
}

/* Number of elements of an array or members of an object; 0 for scalars. */
static inline int loom_json_size(const struct loom_json_doc *doc, int i)
{
    return doc->toks[i].size;
}

static inline bool loom_json_is_object(const struct loom_json_doc *doc, int i)
{
    return doc->toks[i].type == LOOM_JSON_OBJECT;
}
static inline bool loom_json_is_array(const struct loom_json_doc *doc, int i)
{
    return doc->toks[i].type == LOOM_JSON_ARRAY;
}
static inline bool loom_json_is_string(const struct loom_json_doc *doc, int i)
{
    return doc->toks[i].type == LOOM_JSON_STRING;
}
static inline bool loom_json_is_number(const struct loom_json_doc *doc, int i)
{
    return doc->toks[i].type == LOOM_JSON_NUMBER;
}
/* A number written without fraction or exponent ("12", not "12.0" or "1.2e1"). */
static inline bool loom_json_is_integer(const struct loom_json_doc *doc, int i)
{
    return doc->toks[i].type == LOOM_JSON_NUMBER && (doc->toks[i].flags & LOOM_JSON_INTEGER);
}
static inline bool loom_json_is_bool(const struct loom_json_doc *doc, int i)
{
    return doc->toks[i].type == LOOM_JSON_TRUE || doc->toks[i].type == LOOM_JSON_FALSE;
}
static inline bool loom_json_is_true(const struct loom_json_doc *doc, int i)
{
    return doc->toks[i].type == LOOM_JSON_TRUE;
}
static inline bool loom_json_is_null(const struct loom_json_doc *doc, int i)
{
    return doc->toks[i].type == LOOM_JSON_NULL;
}
static inline bool loom_json_is_container(const struct loom_json_doc *doc, int i)
{
    return doc->toks[i].type == LOOM_JSON_OBJECT || doc->toks[i].type == LOOM_JSON_ARRAY;
}

/*
 * Iterate over the children of token `parent` with `int i`: an array's elements, or an object's
 * keys (the member's value is then i + 1). A scalar has no children. `doc` and `parent` are
 * evaluated more than once; `i` must be a plain name, distinct in nested loops.
 *
 *     loom_json_foreach (doc, arr, i)
 *         sum += ...value of token i...;
 */
#define loom_json_foreach(doc, parent, i)                                                     \
    for (int i = (parent) + 1, loom__end_##i = (doc)->toks[(parent)].next; i < loom__end_##i; \
         i = (doc)->toks[i + ((doc)->toks[(parent)].type == LOOM_JSON_OBJECT)].next)

/*
 * The index of the value whose key equals `key` in object `obj`, or -1 if there is none or obj
 * is not an object. Keys are compared after unescaping ("\u0069d" matches "id"); with duplicate
 * keys the first wins. O(members), allocation-free.
 */
int loom_json_obj_get(const struct loom_json_doc *doc, int obj, const char *key);
int loom_json_obj_getn(const struct loom_json_doc *doc, int obj, struct loom_str key);

/* The index of array element n (from 0), or -1 if out of range or arr is not an array. O(n). */
int loom_json_arr_at(const struct loom_json_doc *doc, int arr, int n);

/* Whether string token i, unescaped, equals s (false for non-strings). Allocation-free. */
bool loom_json_str_eq(const struct loom_json_doc *doc, int i, struct loom_str s);

/* ---- Values ------------------------------------------------------------------------------- */

/*
 * The UTF-8 text of string token i with escapes decoded (surrogate pairs combined; "\u0000"
 * gives a NUL byte, so use the length). A string without escapes is returned as a slice of the
 * source, anything else is decoded into `arena`; either way *out is borrowed and not
 * NUL-terminated by contract. LOOM_EINVAL if i is not a string, LOOM_EPARSE if the token holds an
 * invalid escape (impossible for a document from loom_json_parse).
 */
loom_err loom_json_unescape(const struct loom_json_doc *doc, int i, struct loom_arena *arena,
                            struct loom_str *out);

/*
 * Exact integer value of number token i. Fractions and exponents are accepted when the value is
 * integral ("1.0" and "2.5e1" are, "25e-2" is not). LOOM_EINVAL for a non-number, a non-integral
 * value or (u64) a negative one; LOOM_ETOOBIG if it does not fit. *out is written on success.
 */
loom_err loom_json_to_i64(const struct loom_json_doc *doc, int i, int64_t *out);
loom_err loom_json_to_u64(const struct loom_json_doc *doc, int i, uint64_t *out);

/*
 * Number token i correctly rounded to double or to float (directly, as strtof does, not through
 * double). LOOM_EINVAL for a non-number; LOOM_ETOOBIG if the value overflows to infinity or the
 * number is longer than LOOM_JSON_NUMBER_MAX characters. Underflow gives a subnormal or zero.
 * The tokens NaN, Infinity and -Infinity (parsed with allow_nonfinite) give a quiet NaN and
 * the infinities; the integer decoders reject them with LOOM_EINVAL.
 */
loom_err loom_json_to_double(const struct loom_json_doc *doc, int i, double *out);
loom_err loom_json_to_float(const struct loom_json_doc *doc, int i, float *out);
/* Whether i is true or false: *out is written; LOOM_EINVAL for anything else. */
loom_err loom_json_to_bool(const struct loom_json_doc *doc, int i, bool *out);

#define LOOM_JSON_NUMBER_MAX 512

/* ---- Writer ------------------------------------------------------------------------------- */

#define LOOM_JSON_WRITER_MAX_DEPTH 64

/*
 * Appends one JSON value to a borrowed struct loom_buf, inserting commas and colons itself. The
 * first error sticks (later calls do nothing) and is returned by loom_json_writer_err and
 * loom_json_writer_finish: LOOM_ETOOBIG when the buffer's ceiling is hit or nesting passes
 * LOOM_JSON_WRITER_MAX_DEPTH, LOOM_EINVAL when calls are out of order (a key outside an object,
 * a value where a key is due, a mismatched end, a second top-level value). On error the buffer
 * holds a truncated document: discard it.
 */
struct loom_json_writer {
    struct loom_buf *buf;
    loom_err err;
    int depth;
    bool first;                                /* nothing written yet at this level */
    bool want_key;                             /* in an object, a key is due */
    bool done;                                 /* the top-level value is complete */
    uint8_t stack[LOOM_JSON_WRITER_MAX_DEPTH]; /* LOOM_JSON_OBJECT or LOOM_JSON_ARRAY */
};

/* Start writing at the end of `buf` (borrowed; it must outlive the writer). */
void loom_json_writer_init(struct loom_json_writer *w, struct loom_buf *buf);
/* The sticky error, LOOM_OK so far. */
loom_err loom_json_writer_err(const struct loom_json_writer *w);
/* The sticky error, or LOOM_EINVAL if the top-level value is incomplete. */
loom_err loom_json_writer_finish(struct loom_json_writer *w);

void loom_json_write_object_begin(struct loom_json_writer *w);
void loom_json_write_object_end(struct loom_json_writer *w);
void loom_json_write_array_begin(struct loom_json_writer *w);
void loom_json_write_array_end(struct loom_json_writer *w);
/* An object key (NUL-terminated, or a slice), escaped like loom_json_write_str. */
void loom_json_write_key(struct loom_json_writer *w, const char *key);
void loom_json_write_keyn(struct loom_json_writer *w, struct loom_str key);
/* A string, escaped with loom_json_escape (invalid UTF-8 becomes \ufffd). NULL writes null. */
void loom_json_write_string(struct loom_json_writer *w, const char *s);
void loom_json_write_str(struct loom_json_writer *w, struct loom_str s);
void loom_json_write_i64(struct loom_json_writer *w, int64_t v);
void loom_json_write_u64(struct loom_json_writer *w, uint64_t v);
/* The shortest of %.15g..%.17g (double) or %.6g..%.9g (float) that reads back to the same bits,
 * so 0.5 is "0.5" and 0.1f is "0.1". NaN and infinities have no JSON form: they write null. */
void loom_json_write_double(struct loom_json_writer *w, double v);
void loom_json_write_float(struct loom_json_writer *w, float v);
void loom_json_write_bool(struct loom_json_writer *w, bool v);
void loom_json_write_null(struct loom_json_writer *w);
/* Pre-encoded JSON, copied as one value without validation: the caller vouches for it (use a
 * loom_json_slice of a parsed document, or the output of another writer). */
void loom_json_write_raw(struct loom_json_writer *w, struct loom_str json);

#endif
