/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The JSON tokenizer, the value decoders and the writer. The tokenizer is the hot path of every
 * request body: one pass over the bytes, no recursion, no copies, tokens appended to an array in
 * the request's arena. Everything a later stage might trip on (bad UTF-8, lone surrogates,
 * malformed numbers) is rejected here, so that the decoders can stay simple and the rest of loom
 * can treat a parsed document as trusted. Decoding is lazy: strings are unescaped and numbers
 * converted only when a handler asks for them.
 */
#include <loom/core.h>
#include <loom/json.h>

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Length of the valid UTF-8 sequence at p (1..4), or 0 if it is not one (RFC 3629: no
 * overlongs, no surrogates, nothing above U+10FFFF). */
static size_t utf8_seq_len(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return n >= 2 && (p[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if (n < 3 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80)
            return 0;
        if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f))
            return 0;
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if (n < 4 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80)
            return 0;
        if ((c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] > 0x8f))
            return 0;
        return 4;
    }
    return 0;
}

loom_err loom_json_escape(struct loom_buf *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s, *end = n ? p + n : p;
    loom_err err = loom_buf_putc(out, '"');
    while (!err && p < end) {
        /* Copy the longest run that needs no escaping in one append. */
        const unsigned char *run = p;
        while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
            p++;
        if (p > run && (err = loom_buf_append(out, run, (size_t)(p - run))))
            break;
        if (p == end)
            break;
        unsigned c = *p;
        if (c >= 0x80) {
            size_t len = utf8_seq_len(p, (size_t)(end - p));
            if (len) {
                err = loom_buf_append(out, p, len);
                p += len;
            } else {
                err = loom_buf_append(out, "\\ufffd", 6);
                p++;
            }
            continue;
        }
        char esc[6] = { '\\', 0 };
        size_t elen = 2;
        switch (c) {
        case '"':
            esc[1] = '"';
            break;
        case '\\':
            esc[1] = '\\';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        default:
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            elen = 6;
        }
        err = loom_buf_append(out, esc, elen);
        p++;
    }
    return err ? err : loom_buf_putc(out, '"');
}

/* ---- Tokenizer ---------------------------------------------------------------------------- */

/* Bytes that end the fast scan of a string: controls, '"', '\\' and everything non-ASCII. */
static const unsigned char str_stop[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x00 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x10 */
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x20: '"' */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x30 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x40 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, /* 0x50: '\\' */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x60 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x70 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x80 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x90 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0xa0 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0xb0 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0xc0 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0xd0 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0xe0 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0xf0 */
};

struct parser {
    const unsigned char *base, *end;
    struct loom_arena *arena;
    struct loom_json_tok *toks;
    int ntoks, cap, max_tokens;
    bool nonfinite; /* limits->allow_nonfinite */
    loom_err code;
    struct loom_error *err;
};

static inline bool is_digit(unsigned c)
{
    return c - '0' < 10;
}

static inline const unsigned char *skip_ws(const unsigned char *p, const unsigned char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

/* Record a syntax error or a limit at `at`. Line and column are computed only now: the happy
 * path does not count newlines. Returns NULL so that scanners can `return fail(...)`. */
__attribute__((format(printf, 4, 5))) static const unsigned char *
fail(struct parser *ps, const unsigned char *at, loom_err code, const char *fmt, ...)
{
    char what[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    size_t off = (size_t)(at - ps->base), line = 1, col = 1;
    for (const unsigned char *q = ps->base; q < at; q++) {
        col++;
        if (*q == '\n') {
            line++;
            col = 1;
        }
    }
    ps->code =
        loom_error_set(ps->err, code, "%s%s at offset %zu (line %zu, column %zu)",
                       at == ps->end ? "unexpected end of input, " : "", what, off, line, col);
    return NULL;
}

/*
 * The token array grows geometrically inside the arena rather than being sized by a counting
 * pass: counting would read every byte twice, while growth costs at most one extra copy of the
 * array per doubling and wastes less than the final array's size, all freed with the arena.
 * The first guess (one token per six bytes, at most 1024) covers typical request bodies, so
 * they parse with a single allocation.
 */
static bool grow(struct parser *ps, const unsigned char *at)
{
    if (ps->cap >= ps->max_tokens) {
        fail(ps, at, LOOM_ETOOBIG, "more than %d tokens", ps->max_tokens);
        return false;
    }
    size_t cap = LOOM_MIN((size_t)ps->cap * 2, (size_t)ps->max_tokens);
    struct loom_json_tok *t = loom_arena_alloc(ps->arena, loom_mul_size(cap, sizeof(*t)));
    memcpy(t, ps->toks, (size_t)ps->ntoks * sizeof(*t));
    ps->toks = t;
    ps->cap = (int)cap;
    return true;
}

/* Append a token spanning [start, end) of the source; its index, or -1 at the token limit. */
static inline int push(struct parser *ps, const unsigned char *start, const unsigned char *end,
                       enum loom_json_type type, unsigned flags)
{
    if (LOOM_UNLIKELY(ps->ntoks == ps->cap) && !grow(ps, start))
        return -1;
    int i = ps->ntoks++;
    struct loom_json_tok *t = &ps->toks[i];
    t->type = (uint8_t)type;
    t->flags = (uint8_t)flags;
    t->start = (uint32_t)(start - ps->base);
    t->end = (uint32_t)(end - ps->base);
    t->size = 0;
    t->next = i + 1;
    return i;
}

static inline int hexval(unsigned c)
{
    if (c - '0' < 10)
        return (int)(c - '0');
    c |= 0x20;
    if (c - 'a' < 6)
        return (int)(c - 'a' + 10);
    return -1;
}

/* The code unit of the 4 hex digits at p (the caller checked they are in bounds), or -1. */
static inline int hex4(const unsigned char *p)
{
    int a = hexval(p[0]), b = hexval(p[1]), c = hexval(p[2]), d = hexval(p[3]);
    if ((a | b | c | d) < 0)
        return -1;
    return a << 12 | b << 8 | c << 4 | d;
}

/* Validate the \u escape at q (q[1] == 'u'); its length in the source (6 or 12), or 0. */
static size_t scan_u_escape(struct parser *ps, const unsigned char *q)
{
    const unsigned char *end = ps->end;
    int cu = end - q >= 6 ? hex4(q + 2) : -1;
    if (cu < 0) {
        fail(ps, q, LOOM_EPARSE, "invalid \\u escape");
        return 0;
    }
    if (cu >= 0xdc00 && cu <= 0xdfff) {
        fail(ps, q, LOOM_EPARSE, "unpaired surrogate \\u%04x", (unsigned)cu);
        return 0;
    }
    if (cu < 0xd800 || cu > 0xdbff)
        return 6;
    if (end - q >= 8 && q[6] == '\\' && q[7] == 'u') {
        int lo = end - q >= 12 ? hex4(q + 8) : -1;
        if (lo < 0) {
            fail(ps, q + 6, LOOM_EPARSE, "invalid \\u escape");
            return 0;
        }
        if (lo >= 0xdc00 && lo <= 0xdfff)
            return 12;
    }
    fail(ps, q, LOOM_EPARSE, "unpaired surrogate \\u%04x", (unsigned)cu);
    return 0;
}

/* The string starting at the quote p: push its token, return the byte after the closing quote. */
static const unsigned char *scan_string(struct parser *ps, const unsigned char *p)
{
    const unsigned char *q = p + 1, *end = ps->end;
    unsigned flags = 0;
    for (;;) {
        while (q < end && !str_stop[*q])
            q++;
        if (q == end)
            return fail(ps, p, LOOM_EPARSE, "unterminated string");
        unsigned c = *q;
        if (c == '"')
            break;
        if (c == '\\') {
            flags = LOOM_JSON_ESCAPED;
            if (end - q < 2)
                return fail(ps, p, LOOM_EPARSE, "unterminated string");
            switch (q[1]) {
            case '"':
            case '\\':
            case '/':
            case 'b':
            case 'f':
            case 'n':
            case 'r':
            case 't':
                q += 2;
                continue;
            case 'u': {
                size_t n = scan_u_escape(ps, q);
                if (!n)
                    return NULL;
                q += n;
                continue;
            }
            default:
                if (q[1] >= 0x20 && q[1] < 0x7f)
                    return fail(ps, q, LOOM_EPARSE, "invalid escape '\\%c'", q[1]);
                return fail(ps, q, LOOM_EPARSE, "invalid escape");
            }
        }
        if (c < 0x20)
            return fail(ps, q, LOOM_EPARSE, "unescaped control character 0x%02x in a string", c);
        size_t n = utf8_seq_len(q, (size_t)(end - q));
        if (!n)
            return fail(ps, q, LOOM_EPARSE, "invalid UTF-8");
        q += n;
    }
    if (push(ps, p + 1, q, LOOM_JSON_STRING, flags) < 0)
        return NULL;
    return q + 1;
}

/* The number at p: -? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)? */
static const unsigned char *scan_number(struct parser *ps, const unsigned char *p)
{
    const unsigned char *q = p, *end = ps->end;
    unsigned flags = LOOM_JSON_INTEGER;
    if (*q == '-')
        q++;
    if (q == end || !is_digit(*q))
        return fail(ps, q, LOOM_EPARSE, "expected a digit");
    if (*q == '0') {
        q++;
        if (q < end && is_digit(*q))
            return fail(ps, q - 1, LOOM_EPARSE, "leading zero in a number");
    } else {
        while (q < end && is_digit(*q))
            q++;
    }
    if (q < end && *q == '.') {
        q++;
        if (q == end || !is_digit(*q))
            return fail(ps, q, LOOM_EPARSE, "expected a digit after '.'");
        while (q < end && is_digit(*q))
            q++;
        flags = 0;
    }
    if (q < end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < end && (*q == '+' || *q == '-'))
            q++;
        if (q == end || !is_digit(*q))
            return fail(ps, q, LOOM_EPARSE, "expected a digit in the exponent");
        while (q < end && is_digit(*q))
            q++;
        flags = 0;
    }
    if (push(ps, p, q, LOOM_JSON_NUMBER, flags) < 0)
        return NULL;
    return q;
}

static const unsigned char *scan_literal(struct parser *ps, const unsigned char *p, const char *lit,
                                         size_t n, enum loom_json_type type, unsigned flags)
{
    if ((size_t)(ps->end - p) < n || memcmp(p, lit, n) != 0)
        return fail(ps, p, LOOM_EPARSE, "expected a value");
    if (push(ps, p, p + n, type, flags) < 0)
        return NULL;
    return p + n;
}

loom_err loom_json_parse(const char *src, size_t len, const struct loom_json_limits *limits,
                         struct loom_arena *arena, struct loom_json_doc *doc,
                         struct loom_error *err)
{
    uint32_t max_depth = LOOM_JSON_MAX_DEPTH_DEFAULT;
    uint32_t max_tokens = LOOM_JSON_MAX_TOKENS_DEFAULT;
    size_t max_bytes = LOOM_BUF_MAX_DEFAULT;
    if (limits) {
        max_depth = limits->max_depth ? limits->max_depth : max_depth;
        if (limits->max_tokens)
            max_tokens = LOOM_MIN(limits->max_tokens, (uint32_t)INT32_MAX);
        if (limits->max_bytes)
            max_bytes = LOOM_MIN(limits->max_bytes, (size_t)UINT32_MAX);
    }
    if (len > max_bytes)
        return loom_error_set(err, LOOM_ETOOBIG,
                              "document is %zu bytes, more than the limit of %zu", len, max_bytes);
    if (!src)
        src = "";

    struct parser ps = { 0 };
    ps.base = (const unsigned char *)src;
    ps.end = ps.base + len;
    ps.arena = arena;
    ps.max_tokens = (int)max_tokens;
    ps.nonfinite = limits && limits->allow_nonfinite;
    ps.cap = (int)LOOM_MIN(LOOM_MIN(len / 6 + 8, (size_t)1024), (size_t)max_tokens);
    ps.toks = loom_arena_alloc(arena, (size_t)ps.cap * sizeof(*ps.toks));
    ps.err = err;

    /*
     * A state machine whose states are the labels below: `value` (a value is due), `key` (an
     * object key is due), `close` (a container just ended) and `after` (a value just ended).
     * Open containers need no stack of their own: until a container closes, its `next` field
     * holds the index of its parent, restored as `cur` when it closes.
     */
    const unsigned char *p = ps.base, *end = ps.end;
    int cur = -1, t;
    uint32_t depth = 0;

value:
    p = skip_ws(p, end);
    if (p == end)
        goto syntax_value;
    if (cur >= 0 && ps.toks[cur].type == LOOM_JSON_ARRAY)
        ps.toks[cur].size++;
    switch (*p) {
    case '{':
    case '[': {
        bool obj = *p == '{';
        if (depth == max_depth) {
            fail(&ps, p, LOOM_ETOOBIG, "nesting deeper than %u", max_depth);
            return ps.code;
        }
        depth++;
        if ((t = push(&ps, p, p + 1, obj ? LOOM_JSON_OBJECT : LOOM_JSON_ARRAY, 0)) < 0)
            return ps.code;
        ps.toks[t].next = cur;
        cur = t;
        p = skip_ws(p + 1, end);
        if (p < end && *p == (obj ? '}' : ']')) {
            p++;
            goto close;
        }
        if (!obj)
            goto value;
        if (p == end || *p != '"') {
            fail(&ps, p, LOOM_EPARSE, "expected a string key or '}'");
            return ps.code;
        }
        goto key;
    }
    case '"':
        p = scan_string(&ps, p);
        break;
    case '-':
        if (ps.nonfinite && end - p > 1 && p[1] == 'I') {
            p = scan_literal(&ps, p, "-Infinity", 9, LOOM_JSON_NUMBER, LOOM_JSON_NONFINITE);
            break;
        }
        p = scan_number(&ps, p);
        break;
    case '0':
    case '1':
    case '2':
    case '3':
    case '4':
    case '5':
    case '6':
    case '7':
    case '8':
    case '9':
        p = scan_number(&ps, p);
        break;
    case 't':
        p = scan_literal(&ps, p, "true", 4, LOOM_JSON_TRUE, 0);
        break;
    case 'f':
        p = scan_literal(&ps, p, "false", 5, LOOM_JSON_FALSE, 0);
        break;
    case 'n':
        p = scan_literal(&ps, p, "null", 4, LOOM_JSON_NULL, 0);
        break;
    case 'N':
        if (!ps.nonfinite)
            goto syntax_value;
        p = scan_literal(&ps, p, "NaN", 3, LOOM_JSON_NUMBER, LOOM_JSON_NONFINITE);
        break;
    case 'I':
        if (!ps.nonfinite)
            goto syntax_value;
        p = scan_literal(&ps, p, "Infinity", 8, LOOM_JSON_NUMBER, LOOM_JSON_NONFINITE);
        break;
    default:
        goto syntax_value;
    }
    if (!p)
        return ps.code;
    goto after;

key:
    if (p == end || *p != '"') {
        fail(&ps, p, LOOM_EPARSE, "expected a string key");
        return ps.code;
    }
    ps.toks[cur].size++;
    if (!(p = scan_string(&ps, p)))
        return ps.code;
    p = skip_ws(p, end);
    if (p == end || *p != ':') {
        fail(&ps, p, LOOM_EPARSE, "expected ':'");
        return ps.code;
    }
    p++;
    goto value;

close:
    ps.toks[cur].end = (uint32_t)(p - ps.base);
    t = ps.toks[cur].next;
    ps.toks[cur].next = ps.ntoks;
    cur = t;
    depth--;

after:
    p = skip_ws(p, end);
    if (cur < 0) {
        if (p != end) {
            fail(&ps, p, LOOM_EPARSE, "unexpected data after the top-level value");
            return ps.code;
        }
        doc->src = src;
        doc->len = len;
        doc->toks = ps.toks;
        doc->ntoks = ps.ntoks;
        return LOOM_OK;
    }
    if (ps.toks[cur].type == LOOM_JSON_OBJECT) {
        if (p < end && *p == ',') {
            p = skip_ws(p + 1, end);
            goto key;
        }
        if (p < end && *p == '}') {
            p++;
            goto close;
        }
        fail(&ps, p, LOOM_EPARSE, "expected ',' or '}'");
        return ps.code;
    }
    if (p < end && *p == ',') {
        p++;
        goto value;
    }
    if (p < end && *p == ']') {
        p++;
        goto close;
    }
    fail(&ps, p, LOOM_EPARSE, "expected ',' or ']'");
    return ps.code;

syntax_value:
    fail(&ps, p, LOOM_EPARSE, "expected a value");
    return ps.code;
}

/* ---- Navigation --------------------------------------------------------------------------- */

/*
 * Decode the escape at p (p[0] == '\\') into UTF-8 in out; returns its length in the source and
 * sets *outlen, or returns 0 for an invalid escape. Documents from loom_json_parse only hold
 * valid ones, but a doc is a plain struct, so the bounds are checked anyway.
 */
static size_t decode_escape(const unsigned char *p, const unsigned char *end, char out[4],
                            size_t *outlen)
{
    if (end - p < 2)
        return 0;
    char c;
    switch (p[1]) {
    case '"':
    case '\\':
    case '/':
        c = (char)p[1];
        break;
    case 'b':
        c = '\b';
        break;
    case 'f':
        c = '\f';
        break;
    case 'n':
        c = '\n';
        break;
    case 'r':
        c = '\r';
        break;
    case 't':
        c = '\t';
        break;
    case 'u': {
        long cp = end - p >= 6 ? hex4(p + 2) : -1;
        size_t n = 6;
        if (cp < 0 || (cp >= 0xdc00 && cp <= 0xdfff))
            return 0;
        if (cp >= 0xd800 && cp <= 0xdbff) {
            long lo = end - p >= 12 && p[6] == '\\' && p[7] == 'u' ? hex4(p + 8) : -1;
            if (lo < 0xdc00 || lo > 0xdfff)
                return 0;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            n = 12;
        }
        if (cp < 0x80) {
            out[0] = (char)cp;
            *outlen = 1;
        } else if (cp < 0x800) {
            out[0] = (char)(0xc0 | (cp >> 6));
            out[1] = (char)(0x80 | (cp & 0x3f));
            *outlen = 2;
        } else if (cp < 0x10000) {
            out[0] = (char)(0xe0 | (cp >> 12));
            out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
            out[2] = (char)(0x80 | (cp & 0x3f));
            *outlen = 3;
        } else {
            out[0] = (char)(0xf0 | (cp >> 18));
            out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
            out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
            out[3] = (char)(0x80 | (cp & 0x3f));
            *outlen = 4;
        }
        return n;
    }
    default:
        return 0;
    }
    out[0] = c;
    *outlen = 1;
    return 2;
}

bool loom_json_str_eq(const struct loom_json_doc *doc, int i, struct loom_str s)
{
    if (!loom_json_is_string(doc, i))
        return false;
    struct loom_str raw = loom_json_slice(doc, i);
    if (!(doc->toks[i].flags & LOOM_JSON_ESCAPED))
        return loom_str_eq(raw, s);
    /* Compare while decoding: an escaped key never needs a copy. */
    const unsigned char *p = (const unsigned char *)raw.ptr, *end = p + raw.len;
    size_t k = 0;
    while (p < end) {
        if (*p != '\\') {
            if (k == s.len || (unsigned char)s.ptr[k] != *p)
                return false;
            k++;
            p++;
            continue;
        }
        char u[4];
        size_t ulen, n = decode_escape(p, end, u, &ulen);
        if (!n || ulen > s.len - k || memcmp(s.ptr + k, u, ulen) != 0)
            return false;
        k += ulen;
        p += n;
    }
    return k == s.len;
}

int loom_json_obj_getn(const struct loom_json_doc *doc, int obj, struct loom_str key)
{
    if (!loom_json_is_object(doc, obj))
        return -1;
    loom_json_foreach (doc, obj, k) {
        if (loom_json_str_eq(doc, k, key))
            return k + 1;
    }
    return -1;
}

int loom_json_obj_get(const struct loom_json_doc *doc, int obj, const char *key)
{
    return loom_json_obj_getn(doc, obj, loom_str_cstr(key));
}

int loom_json_arr_at(const struct loom_json_doc *doc, int arr, int n)
{
    if (!loom_json_is_array(doc, arr) || n < 0 || n >= doc->toks[arr].size)
        return -1;
    int i = arr + 1;
    while (n--)
        i = doc->toks[i].next;
    return i;
}

/* ---- Values ------------------------------------------------------------------------------- */

loom_err loom_json_unescape(const struct loom_json_doc *doc, int i, struct loom_arena *arena,
                            struct loom_str *out)
{
    if (!loom_json_is_string(doc, i))
        return LOOM_EINVAL;
    struct loom_str raw = loom_json_slice(doc, i);
    if (!(doc->toks[i].flags & LOOM_JSON_ESCAPED)) {
        *out = raw;
        return LOOM_OK;
    }
    /* Every escape is at least as long as what it decodes to, so raw.len bytes suffice. */
    char *dst = loom_arena_alloc(arena, raw.len + 1), *d = dst;
    const unsigned char *p = (const unsigned char *)raw.ptr, *end = p + raw.len;
    while (p < end) {
        const unsigned char *bs = memchr(p, '\\', (size_t)(end - p));
        size_t run = bs ? (size_t)(bs - p) : (size_t)(end - p);
        memcpy(d, p, run);
        d += run;
        p += run;
        if (!bs)
            break;
        size_t ulen, n = decode_escape(p, end, d, &ulen);
        if (!n)
            return LOOM_EPARSE;
        d += ulen;
        p += n;
    }
    *d = '\0';
    *out = loom_str_make(dst, (size_t)(d - dst));
    return LOOM_OK;
}

loom_err loom_json_to_bool(const struct loom_json_doc *doc, int i, bool *out)
{
    if (!loom_json_is_bool(doc, i))
        return LOOM_EINVAL;
    *out = loom_json_is_true(doc, i);
    return LOOM_OK;
}

/* A number token cut into sign, integer digits, fraction digits and exponent. */
struct numparts {
    bool neg;
    const char *ip, *fp;
    size_t ilen, flen;
    int64_t exp; /* saturated at +-1e9: beyond that, every value is 0, inf or out of range */
};

/* Split number token i, checking the grammar again (a doc is a plain struct). */
static bool number_split(const struct loom_json_doc *doc, int i, struct numparts *np)
{
    if (!loom_json_is_number(doc, i))
        return false;
    struct loom_str s = loom_json_slice(doc, i);
    const char *p = s.ptr, *end = p + s.len;
    memset(np, 0, sizeof(*np));
    if (p < end && *p == '-') {
        np->neg = true;
        p++;
    }
    np->ip = p;
    while (p < end && is_digit((unsigned char)*p))
        p++;
    np->ilen = (size_t)(p - np->ip);
    if (np->ilen == 0)
        return false;
    np->fp = p;
    if (p < end && *p == '.') {
        np->fp = ++p;
        while (p < end && is_digit((unsigned char)*p))
            p++;
        np->flen = (size_t)(p - np->fp);
        if (np->flen == 0)
            return false;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        bool eneg = p < end && *p == '-';
        if (p < end && (*p == '-' || *p == '+'))
            p++;
        const char *e0 = p;
        for (; p < end && is_digit((unsigned char)*p); p++)
            if (np->exp < 1000000000)
                np->exp = np->exp * 10 + (*p - '0');
        if (p == e0)
            return false;
        if (eneg)
            np->exp = -np->exp;
    }
    return p == end;
}

/* Digit k of the integer digits followed by the fraction digits. */
static inline unsigned digit_at(const struct numparts *np, size_t k)
{
    return (unsigned)((k < np->ilen ? np->ip[k] : np->fp[k - np->ilen]) - '0');
}

/* The magnitude of an integral number, exactly. */
static loom_err number_magnitude(const struct numparts *np, uint64_t *out)
{
    size_t total = np->ilen + np->flen, k0 = 0, k1;
    while (k0 < total && digit_at(np, k0) == 0)
        k0++;
    if (k0 == total) {
        *out = 0;
        return LOOM_OK;
    }
    for (k1 = total - 1; digit_at(np, k1) == 0; k1--)
        ;
    /* value = digits[k0..k1] * 10^e */
    int64_t e = np->exp - (int64_t)np->flen + (int64_t)(total - 1 - k1);
    if (e < 0)
        return LOOM_EINVAL;
    if ((int64_t)(k1 - k0 + 1) + e > 20)
        return LOOM_ETOOBIG;
    uint64_t v = 0;
    for (size_t k = k0; k <= k1; k++)
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, digit_at(np, k), &v))
            return LOOM_ETOOBIG;
    while (e-- > 0)
        if (__builtin_mul_overflow(v, 10, &v))
            return LOOM_ETOOBIG;
    *out = v;
    return LOOM_OK;
}

loom_err loom_json_to_u64(const struct loom_json_doc *doc, int i, uint64_t *out)
{
    struct numparts np;
    uint64_t v;
    if (!number_split(doc, i, &np))
        return LOOM_EINVAL;
    loom_err err = number_magnitude(&np, &v);
    if (err)
        return err;
    if (np.neg && v)
        return LOOM_EINVAL;
    *out = v;
    return LOOM_OK;
}

loom_err loom_json_to_i64(const struct loom_json_doc *doc, int i, int64_t *out)
{
    struct numparts np;
    uint64_t v;
    if (!number_split(doc, i, &np))
        return LOOM_EINVAL;
    loom_err err = number_magnitude(&np, &v);
    if (err)
        return err;
    if (np.neg ? v > (uint64_t)INT64_MAX + 1 : v > (uint64_t)INT64_MAX)
        return LOOM_ETOOBIG;
    *out = np.neg ? (int64_t)(0 - v) : (int64_t)v;
    return LOOM_OK;
}

/* All significant digits as one integer m with value = m * 10^*e10, if there are at most 19. */
static bool number_mantissa(const struct numparts *np, uint64_t *m, int64_t *e10)
{
    uint64_t v = 0;
    int nd = 0;
    for (size_t k = 0; k < np->ilen + np->flen; k++) {
        unsigned d = digit_at(np, k);
        if ((v || d) && ++nd > 19)
            return false;
        v = v * 10 + d;
    }
    *m = v;
    *e10 = np->exp - (int64_t)np->flen;
    return true;
}

/*
 * Clinger's fast path: when both m and 10^|e| are exact in the type, one IEEE operation gives
 * the correctly rounded result. That only holds if the compiler evaluates in the type's own
 * precision (no x87 excess precision), hence the FLT_EVAL_METHOD guards; elsewhere the libc
 * conversion does all the work.
 */
static const double pow10_d[] = { 1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                  1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                  1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22 };
static const double pow10_inv_d[] = { 1e0,   1e-1,  1e-2,  1e-3,  1e-4,  1e-5,  1e-6,  1e-7,
                                      1e-8,  1e-9,  1e-10, 1e-11, 1e-12, 1e-13, 1e-14, 1e-15,
                                      1e-16, 1e-17, 1e-18, 1e-19, 1e-20, 1e-21, 1e-22 };
static const float pow10_f[] = {
    1e0f, 1e1f, 1e2f, 1e3f, 1e4f, 1e5f, 1e6f, 1e7f, 1e8f, 1e9f, 1e10f
};

static bool clinger_double(uint64_t m, int64_t e10, double *out)
{
#if FLT_EVAL_METHOD == 0
    if (m < (1ull << 53) && e10 >= -22 && e10 <= 22) {
        double d = (double)m;
        *out = e10 < 0 ? d / pow10_d[-e10] : d * pow10_d[e10];
        return true;
    }
#else
    LOOM_UNUSED(m);
    LOOM_UNUSED(e10);
    LOOM_UNUSED(out);
    LOOM_UNUSED(pow10_d);
#endif
    return false;
}

/* Copy a number's text to a NUL-terminated buffer for strtod/strtof. */
static bool number_cstr(const struct loom_json_doc *doc, int i, char buf[LOOM_JSON_NUMBER_MAX + 1])
{
    struct loom_str s = loom_json_slice(doc, i);
    if (s.len > LOOM_JSON_NUMBER_MAX)
        return false;
    memcpy(buf, s.ptr, s.len);
    buf[s.len] = '\0';
    return true;
}

/*
 * The value of a NaN, Infinity or -Infinity token: the tokenizer pushed exactly one of those
 * three spellings, so the first byte tells them apart. NaN is returned positive and quiet.
 */
static bool nonfinite_value(const struct loom_json_doc *doc, int i, double *out)
{
    if (!loom_json_is_number(doc, i) || !(doc->toks[i].flags & LOOM_JSON_NONFINITE))
        return false;
    struct loom_str s = loom_json_slice(doc, i);
    if (loom_str_eq_cstr(s, "NaN"))
        *out = NAN;
    else if (loom_str_eq_cstr(s, "Infinity"))
        *out = INFINITY;
    else if (loom_str_eq_cstr(s, "-Infinity"))
        *out = -INFINITY;
    else
        return false;
    return true;
}

loom_err loom_json_to_double(const struct loom_json_doc *doc, int i, double *out)
{
    struct numparts np;
    uint64_t m;
    int64_t e10;
    double d;
    if (nonfinite_value(doc, i, &d)) {
        *out = d;
        return LOOM_OK;
    }
    if (!number_split(doc, i, &np))
        return LOOM_EINVAL;
    if (number_mantissa(&np, &m, &e10)) {
        if (m == 0) {
            *out = np.neg ? -0.0 : 0.0;
            return LOOM_OK;
        }
        if (clinger_double(m, e10, &d)) {
            *out = np.neg ? -d : d;
            return LOOM_OK;
        }
    }
    char buf[LOOM_JSON_NUMBER_MAX + 1];
    if (!number_cstr(doc, i, buf))
        return LOOM_ETOOBIG;
    d = strtod(buf, NULL);
    if (isinf(d))
        return LOOM_ETOOBIG;
    *out = d;
    return LOOM_OK;
}

/* Whether a double lies exactly halfway between two adjacent normal floats. */
static bool is_float_midpoint(double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof(bits));
    return (bits & 0x1fffffff) == 0x10000000;
}

/*
 * The common case of a float tensor element, in one pass over the token: the first 19
 * significant digits in a uint64 (later digits only set `truncated`), scaled by an exact power
 * of ten in double. Two roundings (m to double, then the scaling) and the truncated digits
 * leave the double within ~2 ulps of the exact value; rounding it to float is then exact
 * unless a float midpoint lies within that distance, which the low mantissa bits tell: those
 * rare cases, and everything outside the ranges here, return false for the careful path. This
 * is what makes the 17-digit text of float32 values that Python clients send cheap to read.
 */
static bool fast_float(const char *p, const char *end, float *out)
{
#if FLT_EVAL_METHOD == 0
    bool neg = p < end && *p == '-';
    p += neg;
    uint64_t m = 0;
    int digits = 0;  /* significant digits kept in m */
    int64_t e10 = 0; /* value = m * 10^e10 (+ truncated) */
    bool seen_point = false;
    for (; p < end; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (d <= 9) {
            if (digits < 19) {
                if (m || d) {
                    m = m * 10 + d;
                    digits++;
                }
                e10 -= seen_point;
            } else {
                e10 += !seen_point; /* dropped integer digit: scale up; dropped fraction digit:
                                       nothing */
            }
        } else if (*p == '.' && !seen_point) {
            seen_point = true;
        } else {
            break;
        }
    }
    if (p < end) {
        if (*p != 'e' && *p != 'E')
            return false;
        p++;
        bool eneg = p < end && *p == '-';
        p += p < end && (*p == '-' || *p == '+');
        int64_t e = 0;
        for (; p < end && (unsigned)(*p - '0') <= 9 && e < 100000; p++)
            e = e * 10 + (*p - '0');
        if (p != end)
            return false;
        e10 += eneg ? -e : e;
    }
    if (m == 0) {
        *out = neg ? -0.0f : 0.0f;
        return true;
    }
    if (e10 < -22 || e10 > 22)
        return false;
    /* A multiplication by the rounded reciprocal instead of a division: one more half-ulp of
     * error, well inside the guard below, for a fraction of the latency. */
    double d = (double)m;
    d = e10 < 0 ? d * pow10_inv_d[-e10] : d * pow10_d[e10];
    if (d < FLT_MIN || d > FLT_MAX)
        return false;
    uint64_t bits;
    memcpy(&bits, &d, sizeof(bits));
    uint64_t low = bits & 0x1fffffff; /* the 29 bits a float drops; 0x10000000 is a midpoint */
    if (low > 0x10000000 - 16 && low < 0x10000000 + 16)
        return false;
    float f = (float)d;
    *out = neg ? -f : f;
    return true;
#else
    LOOM_UNUSED(p);
    LOOM_UNUSED(end);
    LOOM_UNUSED(out);
    return false;
#endif
}

loom_err loom_json_to_float(const struct loom_json_doc *doc, int i, float *out)
{
    struct numparts np;
    uint64_t m;
    int64_t e10;
    double nf;
    const struct loom_json_tok *t = &doc->toks[i];
    if (t->type == LOOM_JSON_NUMBER && !(t->flags & LOOM_JSON_NONFINITE) &&
        fast_float(doc->src + t->start, doc->src + t->end, out))
        return LOOM_OK;
    if (nonfinite_value(doc, i, &nf)) {
        *out = (float)nf;
        return LOOM_OK;
    }
    if (!number_split(doc, i, &np))
        return LOOM_EINVAL;
    if (number_mantissa(&np, &m, &e10)) {
        if (m == 0) {
            *out = np.neg ? -0.0f : 0.0f;
            return LOOM_OK;
        }
#if FLT_EVAL_METHOD == 0
        if (m < (1u << 24) && e10 >= -10 && e10 <= 10) {
            float f = (float)m;
            f = e10 < 0 ? f / pow10_f[-e10] : f * pow10_f[e10];
            *out = np.neg ? -f : f;
            return LOOM_OK;
        }
#else
        LOOM_UNUSED(pow10_f);
#endif
        /*
         * Rounding the correctly rounded double to float is the correctly rounded float, except
         * when the double lands exactly on a midpoint between two floats that the exact value
         * was not on (double rounding), so those few go to strtof. Clinger's range keeps
         * doubles within float's normal range; the FLT_MIN test documents that assumption.
         */
        double d;
        if (clinger_double(m, e10, &d) && d >= FLT_MIN && !is_float_midpoint(d)) {
            float f = (float)d;
            *out = np.neg ? -f : f;
            return LOOM_OK;
        }
    }
    char buf[LOOM_JSON_NUMBER_MAX + 1];
    if (!number_cstr(doc, i, buf))
        return LOOM_ETOOBIG;
    float f = strtof(buf, NULL);
    if (isinf(f))
        return LOOM_ETOOBIG;
    *out = f;
    return LOOM_OK;
}

/* ---- Writer ------------------------------------------------------------------------------- */

void loom_json_writer_init(struct loom_json_writer *w, struct loom_buf *buf)
{
    memset(w, 0, sizeof(*w));
    w->buf = buf;
    w->first = true;
}

loom_err loom_json_writer_err(const struct loom_json_writer *w)
{
    return w->err;
}

loom_err loom_json_writer_finish(struct loom_json_writer *w)
{
    if (!w->err && !w->done)
        w->err = LOOM_EINVAL;
    return w->err;
}

static void put(struct loom_json_writer *w, const void *p, size_t n)
{
    if (!w->err)
        w->err = loom_buf_append(w->buf, p, n);
}

/* Before a value: check that one may come here and write its separator. */
static bool value_begin(struct loom_json_writer *w)
{
    if (w->err)
        return false;
    if (w->depth == 0) {
        if (w->done)
            w->err = LOOM_EINVAL;
    } else if (w->stack[w->depth - 1] == LOOM_JSON_OBJECT) {
        if (w->want_key)
            w->err = LOOM_EINVAL; /* the colon was written with the key */
    } else if (!w->first) {
        put(w, ",", 1);
    }
    return !w->err;
}

/* After a value: the level now has a member; in an object, a key is due again. */
static void value_end(struct loom_json_writer *w)
{
    if (w->depth == 0) {
        w->done = true;
        return;
    }
    w->first = false;
    w->want_key = w->stack[w->depth - 1] == LOOM_JSON_OBJECT;
}

static void container_begin(struct loom_json_writer *w, enum loom_json_type type)
{
    if (!value_begin(w))
        return;
    if (w->depth == LOOM_JSON_WRITER_MAX_DEPTH) {
        w->err = LOOM_ETOOBIG;
        return;
    }
    put(w, type == LOOM_JSON_OBJECT ? "{" : "[", 1);
    w->stack[w->depth++] = (uint8_t)type;
    w->first = true;
    w->want_key = type == LOOM_JSON_OBJECT;
}

static void container_end(struct loom_json_writer *w, enum loom_json_type type)
{
    if (w->err)
        return;
    if (w->depth == 0 || w->stack[w->depth - 1] != type ||
        (type == LOOM_JSON_OBJECT && !w->want_key)) {
        w->err = LOOM_EINVAL;
        return;
    }
    put(w, type == LOOM_JSON_OBJECT ? "}" : "]", 1);
    w->depth--;
    value_end(w);
}

void loom_json_write_object_begin(struct loom_json_writer *w)
{
    container_begin(w, LOOM_JSON_OBJECT);
}

void loom_json_write_object_end(struct loom_json_writer *w)
{
    container_end(w, LOOM_JSON_OBJECT);
}

void loom_json_write_array_begin(struct loom_json_writer *w)
{
    container_begin(w, LOOM_JSON_ARRAY);
}

void loom_json_write_array_end(struct loom_json_writer *w)
{
    container_end(w, LOOM_JSON_ARRAY);
}

void loom_json_write_keyn(struct loom_json_writer *w, struct loom_str key)
{
    if (w->err)
        return;
    if (w->depth == 0 || w->stack[w->depth - 1] != LOOM_JSON_OBJECT || !w->want_key) {
        w->err = LOOM_EINVAL;
        return;
    }
    if (!w->first)
        put(w, ",", 1);
    if (!w->err)
        w->err = loom_json_escape(w->buf, key.ptr, key.len);
    put(w, ":", 1);
    w->want_key = false;
}

void loom_json_write_key(struct loom_json_writer *w, const char *key)
{
    loom_json_write_keyn(w, loom_str_cstr(key));
}

void loom_json_write_str(struct loom_json_writer *w, struct loom_str s)
{
    if (!value_begin(w))
        return;
    w->err = loom_json_escape(w->buf, s.ptr, s.len);
    value_end(w);
}

void loom_json_write_string(struct loom_json_writer *w, const char *s)
{
    if (!s)
        loom_json_write_null(w);
    else
        loom_json_write_str(w, loom_str_cstr(s));
}

void loom_json_write_raw(struct loom_json_writer *w, struct loom_str json)
{
    if (!value_begin(w))
        return;
    put(w, json.ptr, json.len);
    value_end(w);
}

void loom_json_write_i64(struct loom_json_writer *w, int64_t v)
{
    if (!value_begin(w))
        return;
    w->err = loom_buf_append_i64(w->buf, v);
    value_end(w);
}

void loom_json_write_u64(struct loom_json_writer *w, uint64_t v)
{
    if (!value_begin(w))
        return;
    w->err = loom_buf_append_u64(w->buf, v);
    value_end(w);
}

void loom_json_write_bool(struct loom_json_writer *w, bool v)
{
    loom_json_write_raw(w, v ? LOOM_STR("true") : LOOM_STR("false"));
}

void loom_json_write_null(struct loom_json_writer *w)
{
    loom_json_write_raw(w, LOOM_STR("null"));
}

/* Numbers print in their shortest round-trip form (loom_fmt_double); NaN and infinities, which
 * JSON cannot represent, as null. */
void loom_json_write_double(struct loom_json_writer *w, double v)
{
    if (!isfinite(v)) {
        loom_json_write_null(w);
        return;
    }
    char tmp[LOOM_FMT_DOUBLE_MAX];
    loom_json_write_raw(w, loom_str_make(tmp, loom_fmt_double(v, tmp)));
}

void loom_json_write_float(struct loom_json_writer *w, float v)
{
    if (!isfinite(v)) {
        loom_json_write_null(w);
        return;
    }
    char tmp[LOOM_FMT_DOUBLE_MAX];
    loom_json_write_raw(w, loom_str_make(tmp, loom_fmt_float(v, tmp)));
}
