/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer driver for the json module. Each input is parsed with tight limits from an
 * exactly-sized heap copy (so ASan sees any read past the end). A document that parses is then
 * checked from every side: token invariants, every string unescaped, every number converted,
 * and the whole document re-written through the writer and parsed again, which must succeed
 * and give back the same structure, strings and numbers (a differential check of tokenizer,
 * decoders and writer against each other).
 */
#include <loom/core.h>
#include <loom/json.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond)                                                                \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                     \
        }                                                                                \
    } while (0)

static const struct loom_json_limits limits = {
    .max_depth = 32, /* below the writer's ceiling, so every parsed document can be re-written */
    .max_tokens = 4096,
    .max_bytes = 1 << 16,
};

/* The conversions agree with each other and, bit for bit, with libc. */
static void check_number(const struct loom_json_doc *d, int i)
{
    int64_t v;
    uint64_t u;
    double x;
    float f;
    loom_err ie = loom_json_to_i64(d, i, &v), ue = loom_json_to_u64(d, i, &u);
    loom_err de = loom_json_to_double(d, i, &x), fe = loom_json_to_float(d, i, &f);
    FUZZ_ASSERT(ie == LOOM_OK || ie == LOOM_EINVAL || ie == LOOM_ETOOBIG);
    FUZZ_ASSERT(ue == LOOM_OK || ue == LOOM_EINVAL || ue == LOOM_ETOOBIG);
    FUZZ_ASSERT(de == LOOM_OK || de == LOOM_ETOOBIG);
    FUZZ_ASSERT(fe == LOOM_OK || fe == LOOM_ETOOBIG);
    if (loom_json_is_integer(d, i))
        FUZZ_ASSERT(ie != LOOM_EINVAL &&
                    (ue != LOOM_EINVAL || loom_json_slice(d, i).ptr[0] == '-'));
    if (!ie && !ue)
        FUZZ_ASSERT((uint64_t)v == u);
    /* An integer's value is exact, so converting it is one correct rounding as well. */
    if (!ie && !de)
        FUZZ_ASSERT(x == (double)v);
    if (!ie && !fe)
        FUZZ_ASSERT(f == (float)v);
    if (!ue && !de)
        FUZZ_ASSERT(x == (double)u);
    struct loom_str s = loom_json_slice(d, i);
    if (s.len > LOOM_JSON_NUMBER_MAX) {
        FUZZ_ASSERT(de == LOOM_ETOOBIG && fe == LOOM_ETOOBIG);
        return;
    }
    char tmp[LOOM_JSON_NUMBER_MAX + 1];
    memcpy(tmp, s.ptr, s.len);
    tmp[s.len] = '\0';
    double wx = strtod(tmp, NULL);
    float wf = strtof(tmp, NULL);
    FUZZ_ASSERT(isinf(wx) ? de == LOOM_ETOOBIG : !de && memcmp(&x, &wx, sizeof(x)) == 0);
    FUZZ_ASSERT(isinf(wf) ? fe == LOOM_ETOOBIG : !fe && memcmp(&f, &wf, sizeof(f)) == 0);
}

/* Token invariants, and every value decoded once. */
static void walk(const struct loom_json_doc *d, struct loom_arena *a)
{
    for (int i = 0; i < d->ntoks; i++) {
        const struct loom_json_tok *t = &d->toks[i];
        FUZZ_ASSERT(t->type >= LOOM_JSON_OBJECT && t->type <= LOOM_JSON_NULL);
        FUZZ_ASSERT(t->start <= t->end && t->end <= d->len);
        FUZZ_ASSERT(t->next > i && t->next <= d->ntoks);
        if (loom_json_is_container(d, i)) {
            int n = 0, last = i;
            bool obj = loom_json_is_object(d, i);
            loom_json_foreach (d, i, k) {
                n++;
                if (obj) {
                    /* Looking the key up finds this member or an earlier duplicate. */
                    struct loom_str key;
                    FUZZ_ASSERT(loom_json_is_string(d, k));
                    FUZZ_ASSERT(loom_json_skip(d, k) == k + 1);
                    FUZZ_ASSERT(loom_json_unescape(d, k, a, &key) == LOOM_OK);
                    int v = loom_json_obj_getn(d, i, key);
                    FUZZ_ASSERT(v > i && v <= k + 1 && loom_json_str_eq(d, v - 1, key));
                }
                FUZZ_ASSERT(d->toks[k].start > t->start);
                last = k;
            }
            FUZZ_ASSERT(n == t->size);
            FUZZ_ASSERT(last < t->next);
            if (!obj && n)
                FUZZ_ASSERT(loom_json_arr_at(d, i, n - 1) == last);
        } else {
            FUZZ_ASSERT(t->size == 0 && t->next == i + 1);
        }
        if (loom_json_is_string(d, i)) {
            struct loom_str s;
            FUZZ_ASSERT(loom_json_unescape(d, i, a, &s) == LOOM_OK);
            FUZZ_ASSERT(loom_json_str_eq(d, i, s));
            FUZZ_ASSERT(!(t->flags & LOOM_JSON_ESCAPED) || s.len <= t->end - t->start);
        }
        if (loom_json_is_number(d, i))
            check_number(d, i);
    }
}

/* Re-write subtree i; returns the index after it. */
static int rewrite(const struct loom_json_doc *d, int i, struct loom_json_writer *w,
                   struct loom_arena *a)
{
    struct loom_str s;
    int64_t v;
    uint64_t u;
    double x;
    switch (loom_json_type(d, i)) {
    case LOOM_JSON_OBJECT:
        loom_json_write_object_begin(w);
        loom_json_foreach (d, i, k) {
            FUZZ_ASSERT(loom_json_unescape(d, k, a, &s) == LOOM_OK);
            loom_json_write_keyn(w, s);
            rewrite(d, k + 1, w, a);
        }
        loom_json_write_object_end(w);
        break;
    case LOOM_JSON_ARRAY:
        loom_json_write_array_begin(w);
        loom_json_foreach (d, i, k)
            rewrite(d, k, w, a);
        loom_json_write_array_end(w);
        break;
    case LOOM_JSON_STRING:
        FUZZ_ASSERT(loom_json_unescape(d, i, a, &s) == LOOM_OK);
        loom_json_write_str(w, s);
        break;
    case LOOM_JSON_NUMBER:
        if (loom_json_to_i64(d, i, &v) == LOOM_OK)
            loom_json_write_i64(w, v);
        else if (loom_json_to_u64(d, i, &u) == LOOM_OK)
            loom_json_write_u64(w, u);
        else if (loom_json_to_double(d, i, &x) == LOOM_OK)
            loom_json_write_double(w, x);
        else
            loom_json_write_raw(w, loom_json_slice(d, i));
        break;
    case LOOM_JSON_TRUE:
    case LOOM_JSON_FALSE:
        loom_json_write_bool(w, loom_json_is_true(d, i));
        break;
    default:
        loom_json_write_null(w);
    }
    return loom_json_skip(d, i);
}

/* The re-written document must hold the same values as the original. */
static void compare(const struct loom_json_doc *a, const struct loom_json_doc *b,
                    struct loom_arena *arena)
{
    FUZZ_ASSERT(a->ntoks == b->ntoks);
    for (int i = 0; i < a->ntoks; i++) {
        const struct loom_json_tok *x = &a->toks[i], *y = &b->toks[i];
        FUZZ_ASSERT(x->type == y->type && x->size == y->size && x->next == y->next);
        if (x->type == LOOM_JSON_STRING) {
            struct loom_str s, t;
            FUZZ_ASSERT(loom_json_unescape(a, i, arena, &s) == LOOM_OK);
            FUZZ_ASSERT(loom_json_unescape(b, i, arena, &t) == LOOM_OK);
            FUZZ_ASSERT(loom_str_eq(s, t));
        } else if (x->type == LOOM_JSON_NUMBER) {
            double dx, dy;
            int64_t ix, iy;
            uint64_t ux, uy;
            if (loom_json_to_double(a, i, &dx) == LOOM_OK) {
                FUZZ_ASSERT(loom_json_to_double(b, i, &dy) == LOOM_OK);
                FUZZ_ASSERT(memcmp(&dx, &dy, sizeof(dx)) == 0 || (dx == 0 && dy == 0));
            }
            if (loom_json_to_i64(a, i, &ix) == LOOM_OK) {
                FUZZ_ASSERT(loom_json_to_i64(b, i, &iy) == LOOM_OK);
                FUZZ_ASSERT(ix == iy);
            }
            if (loom_json_to_u64(a, i, &ux) == LOOM_OK) {
                FUZZ_ASSERT(loom_json_to_u64(b, i, &uy) == LOOM_OK);
                FUZZ_ASSERT(ux == uy);
            }
        }
    }
}

/* Every float the document holds survives loom_json_write_float and a parse, bit for bit. */
static void float_roundtrip(const struct loom_json_doc *d, struct loom_arena *arena)
{
    for (int i = 0; i < d->ntoks; i++) {
        float f, g;
        if (!loom_json_is_number(d, i) || loom_json_to_float(d, i, &f) != LOOM_OK)
            continue;
        struct loom_buf buf;
        struct loom_json_writer w;
        struct loom_json_doc e;
        loom_buf_init(&buf, 64);
        loom_json_writer_init(&w, &buf);
        loom_json_write_float(&w, f);
        FUZZ_ASSERT(loom_json_writer_finish(&w) == LOOM_OK);
        FUZZ_ASSERT(loom_json_parse(buf.data, buf.len, NULL, arena, &e, NULL) == LOOM_OK);
        FUZZ_ASSERT(loom_json_to_float(&e, 0, &g) == LOOM_OK);
        FUZZ_ASSERT(memcmp(&f, &g, sizeof(f)) == 0);
        loom_buf_release(&buf);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = size ? malloc(size) : NULL;
    if (size)
        memcpy(copy, data, size);
    struct loom_arena arena;
    struct loom_error err = { 0 };
    struct loom_json_doc doc;
    loom_arena_init(&arena, 0);
    loom_err code = loom_json_parse(copy, size, &limits, &arena, &doc, &err);
    if (code) {
        FUZZ_ASSERT(code == LOOM_EPARSE || code == LOOM_ETOOBIG);
        FUZZ_ASSERT(strstr(err.msg, " at offset ") || strstr(err.msg, "document is"));
        goto out;
    }
    walk(&doc, &arena);
    float_roundtrip(&doc, &arena);

    /* Escaping grows a string at most 6-fold (a control byte becomes \u00XX). */
    struct loom_buf buf;
    struct loom_json_writer w;
    struct loom_json_doc again;
    loom_buf_init(&buf, 8 * size + 64);
    loom_json_writer_init(&w, &buf);
    FUZZ_ASSERT(rewrite(&doc, 0, &w, &arena) == doc.ntoks);
    FUZZ_ASSERT(loom_json_writer_finish(&w) == LOOM_OK);
    struct loom_json_limits relaxed = limits;
    relaxed.max_bytes = 0;
    code = loom_json_parse(buf.data, buf.len, &relaxed, &arena, &again, &err);
    if (code) {
        fprintf(stderr, "re-parse failed: %s\n%.*s\n", err.msg, (int)buf.len, buf.data);
        abort();
    }
    compare(&doc, &again, &arena);
    loom_buf_release(&buf);
out:
    loom_arena_release(&arena);
    free(copy);
    return 0;
}
