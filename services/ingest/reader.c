/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Reading a batch as it streams in. gzip bodies are inflated through a 64 KiB window with a
 * ceiling on the total output, so a small body that inflates to gigabytes (a zip bomb) is
 * refused as soon as it passes the ceiling; concatenated gzip members are accepted, as gzip
 * itself does. The splitter finds record boundaries without parsing the records: NDJSON splits
 * at newlines (a newline cannot occur inside a JSON value), a JSON array by tracking nesting
 * and strings. Each record is then parsed strictly on its own, so a malformed record is
 * rejected alone; only a broken array (a missing comma between records, no closing bracket)
 * stops the batch. A record longer than its ceiling is not kept, only measured.
 */
#include "ingest/ingest.h"

#include <string.h>

/* ---- gzip ---- */

void ing_inflate_init(struct ing_inflate *z, uint64_t max_out)
{
    memset(&z->z, 0, sizeof(z->z));
    z->active = false;
    z->in_member = false;
    z->out_total = 0;
    z->max_out = max_out;
}

void ing_inflate_release(struct ing_inflate *z)
{
    if (z->active)
        inflateEnd(&z->z);
    z->active = false;
}

loom_err ing_inflate_feed(struct ing_inflate *z, const char *p, size_t n, ing_bytes_fn sink,
                          void *arg, struct loom_error *err)
{
    if (!z->active) {
        if (inflateInit2(&z->z, 16 + MAX_WBITS) != Z_OK) /* gzip framing only */
            return loom_error_set(err, LOOM_EINTERNAL, "cannot start zlib");
        z->active = true;
    }
    z->z.next_in = (Bytef *)(uintptr_t)p;
    z->z.avail_in = (uInt)n;
    while (z->z.avail_in > 0) {
        z->in_member = true;
        z->z.next_out = (Bytef *)z->out;
        z->z.avail_out = sizeof(z->out);
        int rc = inflate(&z->z, Z_NO_FLUSH);
        size_t got = sizeof(z->out) - z->z.avail_out;
        if (rc != Z_OK && rc != Z_STREAM_END && !(rc == Z_BUF_ERROR && got))
            return loom_error_set(err, LOOM_EPARSE,
                                  "the gzip body is corrupt (%s, after %llu "
                                  "bytes of output)",
                                  z->z.msg ? z->z.msg : "bad data",
                                  (unsigned long long)z->out_total);
        z->out_total += got;
        if (z->out_total > z->max_out)
            return loom_error_set(err, LOOM_ETOOBIG, "the body inflates to more than %llu bytes",
                                  (unsigned long long)z->max_out);
        if (got) {
            loom_err e = sink(arg, z->out, got);
            if (e)
                return e;
        }
        if (rc == Z_STREAM_END) { /* another member may follow */
            z->in_member = false;
            inflateReset(&z->z);
        }
    }
    return LOOM_OK;
}

loom_err ing_inflate_finish(struct ing_inflate *z, struct loom_error *err)
{
    if (z->active && z->in_member)
        return loom_error_set(err, LOOM_EPARSE, "the gzip body is truncated");
    return LOOM_OK;
}

/* ---- splitting ---- */

void ing_split_init(struct ing_splitter *s, bool ndjson, size_t max_record)
{
    memset(s, 0, sizeof(*s));
    s->ndjson = ndjson;
    s->state = SPLIT_START;
    s->line = 1;
    loom_buf_init(&s->rec, max_record);
}

void ing_split_release(struct ing_splitter *s)
{
    loom_buf_release(&s->rec);
}

static bool ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void keep(struct ing_splitter *s, const char *p, size_t n)
{
    if (!s->oversize && loom_buf_append(&s->rec, p, n))
        s->oversize = true;
}

static loom_err emit(struct ing_splitter *s, ing_record_fn fn, void *arg)
{
    struct ing_pos pos = { .index = s->count++,
                           .offset = s->rec_start,
                           .line = s->ndjson ? s->rec_line : 0,
                           .oversize = s->oversize };
    struct loom_str r = loom_buf_str(&s->rec);
    if (s->oversize)
        pos.oversize = true;
    loom_err e = fn(arg, r.ptr ? r.ptr : "", r.len, &pos);
    loom_buf_reset(&s->rec);
    s->oversize = false;
    return e;
}

static bool blank(struct loom_str s)
{
    for (size_t i = 0; i < s.len; i++)
        if (!ws(s.ptr[i]))
            return false;
    return true;
}

static loom_err feed_ndjson(struct ing_splitter *s, const char *p, size_t n, ing_record_fn fn,
                            void *arg)
{
    while (n) {
        if (s->rec.len == 0 && !s->oversize) {
            s->rec_start = s->offset;
            s->rec_line = s->line;
        }
        const char *nl = memchr(p, '\n', n);
        size_t take = nl ? (size_t)(nl - p) : n;
        keep(s, p, take);
        s->offset += take;
        p += take;
        n -= take;
        if (!nl)
            break;
        p++;
        n--;
        s->offset++;
        s->line++;
        if (!s->oversize && blank(loom_buf_str(&s->rec))) {
            loom_buf_reset(&s->rec);
            continue;
        }
        loom_err e = emit(s, fn, arg);
        if (e)
            return e;
    }
    return LOOM_OK;
}

static loom_err broken(struct ing_splitter *s, struct loom_error *err, const char *what)
{
    return loom_error_set(err, LOOM_EPARSE, "malformed JSON at byte %llu: %s",
                          (unsigned long long)s->offset, what);
}

/* Skip what there is of a leading EF BB BF, even split across feeds; a start that is not one is
 * left to the parser to refuse. */
static size_t skip_bom(struct ing_splitter *s, const char *p, size_t n)
{
    static const unsigned char bom[3] = { 0xef, 0xbb, 0xbf };
    size_t i = 0;
    while (s->bom < 3 && i < n && (unsigned char)p[i] == bom[s->bom]) {
        s->bom++;
        i++;
    }
    if (i < n || s->bom == 3)
        s->bom = 4;
    s->offset += i;
    return i;
}

loom_err ing_split_feed(struct ing_splitter *s, const char *p, size_t n, ing_record_fn fn,
                        void *arg, struct loom_error *err)
{
    if (s->bom < 4) {
        size_t skip = skip_bom(s, p, n);
        p += skip;
        n -= skip;
    }
    if (s->ndjson)
        return feed_ndjson(s, p, n, fn, arg);
    for (size_t i = 0; i < n; i++, s->offset++) {
        char c = p[i];
again:
        switch (s->state) {
        case SPLIT_START:
            if (ws(c))
                continue;
            if (c == '[') {
                s->state = SPLIT_BEFORE;
                s->first = true;
                continue;
            }
            if (c == '{') { /* one record on its own */
                s->single = true;
                s->state = SPLIT_BEFORE;
                goto again;
            }
            return broken(s, err,
                          "expected '[' (a JSON array of records); send NDJSON with "
                          "Content-Type: application/x-ndjson");
        case SPLIT_BEFORE:
            if (ws(c))
                continue;
            if (c == ']' && !s->single) {
                if (!s->first)
                    return broken(s, err, "a ',' is followed by ']'");
                s->state = SPLIT_END;
                continue;
            }
            if (c == ',' || c == ']' || c == '}' || c == ':')
                return broken(s, err, "expected a record");
            s->rec_start = s->offset;
            s->depth = 0;
            s->in_str = s->esc = false;
            s->state = SPLIT_VALUE;
            goto again;
        case SPLIT_VALUE: {
            /* Copy the run of plain bytes at once. */
            if (s->in_str) {
                if (s->esc) {
                    s->esc = false;
                } else if (c == '\\') {
                    s->esc = true;
                } else if (c == '"') {
                    s->in_str = false;
                    if (s->depth == 0) {
                        keep(s, &c, 1);
                        s->state = s->single ? SPLIT_END : SPLIT_AFTER;
                        loom_err e = emit(s, fn, arg);
                        if (e)
                            return e;
                        continue;
                    }
                }
                keep(s, &c, 1);
                continue;
            }
            if (c == '"') {
                s->in_str = true;
            } else if (c == '{' || c == '[') {
                s->depth++;
            } else if (c == '}' || c == ']') {
                if (s->depth == 0) { /* the array's own bracket ends a bare value */
                    s->state = SPLIT_AFTER;
                    loom_err e = emit(s, fn, arg);
                    if (e)
                        return e;
                    goto again;
                }
                keep(s, &c, 1);
                if (--s->depth == 0) {
                    s->state = s->single ? SPLIT_END : SPLIT_AFTER;
                    loom_err e = emit(s, fn, arg);
                    if (e)
                        return e;
                }
                continue;
            } else if (s->depth == 0 && (c == ',' || ws(c))) {
                s->state = SPLIT_AFTER;
                loom_err e = emit(s, fn, arg);
                if (e)
                    return e;
                goto again;
            }
            keep(s, &c, 1);
            continue;
        }
        case SPLIT_AFTER:
            if (ws(c))
                continue;
            if (c == ',') {
                s->state = SPLIT_BEFORE;
                s->first = false;
                continue;
            }
            if (c == ']') {
                s->state = SPLIT_END;
                continue;
            }
            return broken(s, err, "expected ',' or ']' after a record");
        case SPLIT_END:
            if (ws(c))
                continue;
            return broken(s, err, "data after the end of the batch");
        }
    }
    return LOOM_OK;
}

loom_err ing_split_finish(struct ing_splitter *s, ing_record_fn fn, void *arg,
                          struct loom_error *err)
{
    if (s->ndjson) {
        if (s->oversize || (s->rec.len && !blank(loom_buf_str(&s->rec))))
            return emit(s, fn, arg);
        return LOOM_OK;
    }
    if (s->state == SPLIT_START)
        return loom_error_set(err, LOOM_EPARSE,
                              "the body is empty: send a JSON array of records, or NDJSON");
    if (s->state == SPLIT_VALUE && s->single && !s->in_str && s->depth == 0)
        return emit(s, fn, arg);
    if (s->state != SPLIT_END)
        return broken(s, err, "the body ends before the array is closed");
    return LOOM_OK;
}
