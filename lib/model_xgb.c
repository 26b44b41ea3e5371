/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The XGBoost backend: loads the JSON that XGBoost's save_model("model.json") writes (gbtree and
 * dart boosters) and predicts exactly what libxgboost 1.7's XGBoosterPredictFromDense returns,
 * bit for bit. The rules it follows are in docs/models.md: one float32 accumulator per output
 * group starting from the base margin, trees added in file order, `x < split` going left, NaN
 * following default_left, listed categories going right.
 *
 * Loading tokenizes the document once with loom's JSON tokenizer (NaN allowed) and converts it
 * in one pass into flat arrays: every tree is re-laid breadth-first into one node array so that
 * the two children of a node are adjacent (one child offset per node, plus the precomputed
 * child that missing values take) and the top levels of a tree share cache lines, all trees
 * concatenated. A leaf points to itself and has a threshold no value passes, so a walk can take
 * a fixed number of steps (the tree's depth) without branching on leaves; that lets prediction
 * walk sixteen (row, tree) pairs in lockstep, whose loads overlap instead of waiting on each
 * other. Everything a hostile file could get wrong is checked before a node is written, so the
 * walk never needs a bounds check.
 */
#include <loom/core.h>
#include <loom/json.h>
#include <loom/model.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- Objectives --------------------------------------------------------------------------- */

enum link { LINK_IDENTITY, LINK_LOGIT, LINK_LOG };
enum transform { TF_IDENTITY, TF_SIGMOID, TF_EXP, TF_HINGE, TF_SOFTPROB, TF_SOFTMAX };

/* How an objective turns base_score into the base margin and margins into predictions. */
struct objective {
    const char *name;
    uint8_t link;      /* enum link: base margin = base_score, logit(base_score) or log */
    uint8_t transform; /* enum transform */
};

static const struct objective objectives[] = {
    { "binary:logistic", LINK_LOGIT, TF_SIGMOID },
    { "binary:logitraw", LINK_IDENTITY, TF_IDENTITY },
    { "binary:hinge", LINK_IDENTITY, TF_HINGE },
    { "reg:squarederror", LINK_IDENTITY, TF_IDENTITY },
    { "reg:squaredlogerror", LINK_IDENTITY, TF_IDENTITY },
    { "reg:pseudohubererror", LINK_IDENTITY, TF_IDENTITY },
    { "reg:absoluteerror", LINK_IDENTITY, TF_IDENTITY },
    { "reg:logistic", LINK_LOGIT, TF_SIGMOID },
    { "count:poisson", LINK_LOG, TF_EXP },
    { "reg:gamma", LINK_LOG, TF_EXP },
    { "reg:tweedie", LINK_LOG, TF_EXP },
    { "survival:cox", LINK_LOG, TF_EXP },
    { "rank:pairwise", LINK_IDENTITY, TF_IDENTITY },
    { "multi:softprob", LINK_IDENTITY, TF_SOFTPROB },
    { "multi:softmax", LINK_IDENTITY, TF_SOFTMAX },
};

static bool is_multi(const struct objective *o)
{
    return o->transform == TF_SOFTPROB || o->transform == TF_SOFTMAX;
}

/* ---- The flat model ----------------------------------------------------------------------- */

#define XN_CAT 0x80000000u /* in xnode.feat: a categorical split (aux[].cat: its categories) */

/*
 * The hot part of a node, 16 bytes. Nodes are addressed by byte offset into the node array, so
 * that a step needs no index arithmetic. `child` is the offset of the left child, and the right
 * one follows it; `missing` is the child a missing value goes to (one of the two, resolved from
 * default_left at load time). `thr` is a numeric split's threshold. A leaf has a NaN threshold,
 * which no comparison passes, and points to itself both ways, so a walk that reached a leaf
 * stays there; it reads feature 0 and ignores it.
 */
struct xnode {
    float thr;
    uint32_t child;
    uint32_t missing;
    uint32_t feat; /* feature index, | XN_CAT */
};

#define XN_SIZE ((uint32_t)sizeof(struct xnode))

/* The cold part, read once per walk (a leaf's value, for dart already scaled by the tree's
 * weight) or only for categorical splits (their category list). */
union xaux {
    float leaf;
    uint32_t cat;
};

struct xtree {
    uint32_t root;  /* byte offset of the root in nodes */
    uint32_t depth; /* edges from the root to the deepest leaf */
    uint32_t group; /* output group the tree adds to (tree_info) */
};

/* A categorical split's categories: cats[off, off + len), sorted, distinct. */
struct cat_range {
    uint32_t off, len;
};

struct xgb {
    const struct objective *obj;
    uint32_t nfeat, ngroups, ntrees, max_depth;
    float base_margin;
    bool has_cats;
    struct xnode *nodes;
    union xaux *aux; /* parallel to nodes: node at byte offset o has aux[o / XN_SIZE] */
    size_t nnodes;
    struct xtree *trees;
    uint32_t *lane_depth; /* the deepest of trees [TREE_LANES * i, TREE_LANES * (i + 1)) */
    struct cat_range *cat_ranges;
    uint32_t ncat_ranges;
    uint32_t *cats;
    size_t ncats;
    char **feature_names; /* nfeat pointers into names_blob, or NULL */
    char *names_blob;
};

static void xgb_free(void *state)
{
    struct xgb *m = state;
    if (!m)
        return;
    free(m->nodes);
    free(m->aux);
    free(m->trees);
    free(m->lane_depth);
    free(m->cat_ranges);
    free(m->cats);
    free(m->feature_names);
    free(m->names_blob);
    free(m);
}

/* ---- Prediction --------------------------------------------------------------------------- */

#define TREE_LANES 16   /* trees walked at once for one row */
#define ROW_LANES  16   /* rows walked at once through one tree */
#define BLOCK_ROWS 64   /* rows per block: their accumulators and rows stay in L1 */
#define ACC_MAX    4096 /* floats of accumulators on the stack (LOOM_MODEL_MAX_GROUPS_DEFAULT) */

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* Whether a categorical split sends x right: only a listed category does. Negative, fractional
 * below 0, >= 2^24 and infinite values are no category and go left, as in XGBoost. */
static bool cat_goes_right(const struct xgb *m, uint32_t ci, float x)
{
    size_t lo = 0, hi = m->cat_ranges[ci].len;
    if (!(x >= 0.0f && x < 16777216.0f) || hi == 0)
        return false;
    uint32_t c = (uint32_t)x;
    const uint32_t *v = m->cats + m->cat_ranges[ci].off;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid] < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < m->cat_ranges[ci].len && v[lo] == c;
}

static const struct xnode *node_at(const struct xgb *m, size_t off)
{
    return (const struct xnode *)((const char *)m->nodes + off);
}

/* A step from a categorical split (the rare case, out of line). */
static size_t cat_step(const struct xgb *m, size_t off, const float *row)
{
    const struct xnode *nd = node_at(m, off);
    float x = row[nd->feat & ~XN_CAT];
    if (isnan(x))
        return nd->missing;
    return nd->child + (cat_goes_right(m, m->aux[off / XN_SIZE].cat, x) ? XN_SIZE : 0);
}

/*
 * One step of a walk: the offset of the next node after node `off` for `row`. No branch: x >=
 * thr goes right, anything else left, then a missing x (the comparison is unordered) goes where
 * the node says. A leaf's NaN threshold makes every comparison unordered, and a leaf's children
 * are itself. `cats` is a compile-time constant at each call site, so models without
 * categorical splits do not test for them at all.
 *
 * On x86-64 the two selects are written as conditional moves on the flags of one ucomiss, the
 * shortest form there is (compilers turn the C version into branches, which mispredict on
 * every other node). Elsewhere, and with LOOM_MODEL_NO_ASM, the C version computes the same.
 */
static ALWAYS_INLINE size_t xstep(const struct xgb *m, size_t off, const float *row, bool cats)
{
    const struct xnode *nd = node_at(m, off);
    uint32_t feat = nd->feat;
    if (cats && LOOM_UNLIKELY(feat & XN_CAT))
        return cat_step(m, off, row);
    float x = row[feat];
#if defined(__x86_64__) && !defined(LOOM_MODEL_NO_ASM)
    size_t next = (size_t)nd->child + XN_SIZE;
    __asm__("ucomiss %[thr], %[x]\n\t"     /* CF: x < thr or unordered; PF: unordered */
            "cmovb %[child], %k[next]\n\t" /* CF: the left child */
            "cmovp %[missing], %k[next]"   /* PF: where missing values go */
            : [next] "+r"(next)
            : [x] "x"(x), [thr] "m"(nd->thr), [child] "m"(nd->child), [missing] "m"(nd->missing)
            : "cc");
    return next;
#else
    if (isunordered(x, nd->thr))
        return nd->missing;
    return (size_t)nd->child + (isgreaterequal(x, nd->thr) ? XN_SIZE : 0);
#endif
}

static float leaf_at(const struct xgb *m, size_t off)
{
    return m->aux[off / XN_SIZE].leaf;
}

/*
 * Add every tree's leaf to one row's accumulators, walking TREE_LANES trees at once (each group of
 * TREE_LANES for the deepest one's depth, m->lane_depth), then adding their leaves in file order.
 * With one output group (`single`, a compile-time constant) the sum stays in a register: the
 * additions are a chain that cannot be reordered without changing the rounding, and a chain
 * through memory would cost a store-to-load round trip per tree.
 */
static ALWAYS_INLINE void walk_row(const struct xgb *m, const float *row, float *acc, bool cats,
                                   bool single)
{
    const struct xtree *tr = m->trees;
    uint32_t t = 0, nt = m->ntrees;
    float sum = acc[0];
    for (; t + TREE_LANES <= nt; t += TREE_LANES) {
        size_t n[TREE_LANES];
        uint32_t depth = m->lane_depth[t / TREE_LANES];
        for (int k = 0; k < TREE_LANES; k++)
            n[k] = tr[t + k].root;
        for (uint32_t d = 0; d < depth; d++) {
#pragma GCC unroll 16
            for (int k = 0; k < TREE_LANES; k++)
                n[k] = xstep(m, n[k], row, cats);
        }
        for (int k = 0; k < TREE_LANES; k++) {
            if (single)
                sum += leaf_at(m, n[k]);
            else
                acc[tr[t + k].group] += leaf_at(m, n[k]);
        }
    }
    for (; t < nt; t++) {
        size_t n = tr[t].root;
        for (uint32_t d = 0; d < tr[t].depth; d++)
            n = xstep(m, n, row, cats);
        if (single)
            sum += leaf_at(m, n);
        else
            acc[tr[t].group] += leaf_at(m, n);
    }
    if (single)
        acc[0] = sum;
}

/* Add every tree's leaf to the accumulators of nrows rows, tree by tree (the tree stays in
 * cache), ROW_LANES rows at once. Each row still sees the trees in file order. */
static ALWAYS_INLINE void walk_block(const struct xgb *m, const float *x, size_t nrows, float *acc,
                                     bool cats)
{
    const size_t nf = m->nfeat, ng = m->ngroups;
    for (uint32_t t = 0; t < m->ntrees; t++) {
        const struct xtree tr = m->trees[t];
        size_t r = 0;
        for (; r + ROW_LANES <= nrows; r += ROW_LANES) {
            size_t n[ROW_LANES];
            const float *row[ROW_LANES];
            for (int k = 0; k < ROW_LANES; k++) {
                n[k] = tr.root;
                row[k] = x + (r + (size_t)k) * nf;
            }
            for (uint32_t d = 0; d < tr.depth; d++) {
#pragma GCC unroll 16
                for (int k = 0; k < ROW_LANES; k++)
                    n[k] = xstep(m, n[k], row[k], cats);
            }
            for (int k = 0; k < ROW_LANES; k++)
                acc[(r + (size_t)k) * ng + tr.group] += leaf_at(m, n[k]);
        }
        for (; r < nrows; r++) {
            size_t n = tr.root;
            for (uint32_t d = 0; d < tr.depth; d++)
                n = xstep(m, n, x + r * nf, cats);
            acc[r * ng + tr.group] += leaf_at(m, n);
        }
    }
}

static void walk_rows_num(const struct xgb *m, const float *x, size_t nrows, float *acc)
{
    if (nrows >= ROW_LANES)
        walk_block(m, x, nrows, acc, false);
    else if (m->ngroups == 1)
        for (size_t r = 0; r < nrows; r++)
            walk_row(m, x + r * m->nfeat, acc + r, false, true);
    else
        for (size_t r = 0; r < nrows; r++)
            walk_row(m, x + r * m->nfeat, acc + r * m->ngroups, false, false);
}

/* The same for models with categorical splits (rare: one instantiation serves any groups). */
static void walk_rows_cat(const struct xgb *m, const float *x, size_t nrows, float *acc)
{
    if (nrows >= ROW_LANES)
        walk_block(m, x, nrows, acc, true);
    else
        for (size_t r = 0; r < nrows; r++)
            walk_row(m, x + r * m->nfeat, acc + r * m->ngroups, true, false);
}

/* Write nrows rows of margins as predictions (or as they are). */
static void emit(const struct xgb *m, float *acc, size_t nrows, float *out, bool margin)
{
    size_t ng = m->ngroups, total = nrows * ng;
    if (margin) {
        memcpy(out, acc, total * sizeof(*out));
        return;
    }
    switch (m->obj->transform) {
    case TF_IDENTITY:
        memcpy(out, acc, total * sizeof(*out));
        break;
    case TF_SIGMOID:
        for (size_t i = 0; i < total; i++)
            out[i] = loom_model_sigmoid(acc[i]);
        break;
    case TF_EXP:
        for (size_t i = 0; i < total; i++)
            out[i] = expf(acc[i]);
        break;
    case TF_HINGE:
        for (size_t i = 0; i < total; i++)
            out[i] = acc[i] > 0.0f ? 1.0f : 0.0f;
        break;
    case TF_SOFTPROB:
        for (size_t r = 0; r < nrows; r++)
            loom_model_softmax(acc + r * ng, ng);
        memcpy(out, acc, total * sizeof(*out));
        break;
    case TF_SOFTMAX:
        for (size_t r = 0; r < nrows; r++)
            out[r] = loom_model_argmax(acc + r * ng, ng);
        break;
    }
}

static void predict_any(const struct xgb *m, const float *x, size_t n, float *out, bool margin)
{
    float acc[ACC_MAX];
    const size_t ng = m->ngroups, nf = m->nfeat;
    const size_t block = LOOM_MIN((size_t)BLOCK_ROWS, ACC_MAX / ng);
    const size_t width = margin || m->obj->transform != TF_SOFTMAX ? ng : 1;
    for (size_t r = 0; r < n; r += block) {
        size_t nr = LOOM_MIN(block, n - r);
        for (size_t i = 0; i < nr * ng; i++)
            acc[i] = m->base_margin;
        if (m->has_cats)
            walk_rows_cat(m, x + r * nf, nr, acc);
        else
            walk_rows_num(m, x + r * nf, nr, acc);
        emit(m, acc, nr, out + r * width, margin);
    }
}

static void xgb_predict(const void *state, const float *x, size_t n, float *out)
{
    predict_any(state, x, n, out, false);
}

static void xgb_predict_margin(const void *state, const float *x, size_t n, float *out)
{
    predict_any(state, x, n, out, true);
}

/* ---- Loading ------------------------------------------------------------------------------ */

/* Per-node scratch for one tree, grown to the largest tree so far. */
struct scratch {
    size_t cap;
    int64_t *left, *right;
    int64_t *feat;
    float *cond;
    uint8_t *dl, *st;
    uint32_t *parent; /* UINT32_MAX: none seen yet */
    uint32_t *order;  /* breadth-first order of the reachable nodes */
    uint32_t *depth;
    int32_t *catk; /* index into categories_nodes, or -1 */
};

/* A byte range of the model document. */
struct span {
    size_t start, len;
};

struct loader {
    const struct loom_json_doc *doc; /* the document, or while a tree loads, the tree's */
    const struct loom_model_limits *lim;
    struct loom_error *err;
    struct xgb *m;
    struct scratch s;
    bool dart;
    int weight_drop; /* dart: the weight_drop array */
    float *weights;  /* per tree: dart's weight_drop, 1 for gbtree */
    /* Split mode: the document was tokenized without the trees, whose spans are here. */
    const char *data;
    const struct span *trees;
    size_t ntrees;
    size_t trees_at; /* offset of the (emptied) trees array in the tokenized skeleton */
    struct loom_arena *tree_arena;
    size_t node_cap, cat_cap, range_cap;
};

/* The member `key` of object `obj` as a token index, or -1 (also if obj is not an object). */
static int member(const struct loader *ld, int obj, const char *key)
{
    return obj >= 0 ? loom_json_obj_get(ld->doc, obj, key) : -1;
}

static loom_err need_object(struct loader *ld, int obj, const char *key, const char *where,
                            int *out)
{
    int i = member(ld, obj, key);
    if (i < 0)
        return loom_error_set(ld->err, LOOM_EINVAL, "%s%s is missing", where, key);
    if (!loom_json_is_object(ld->doc, i))
        return loom_error_set(ld->err, LOOM_EINVAL, "%s%s is not an object", where, key);
    *out = i;
    return LOOM_OK;
}

/* A parameter: XGBoost writes them as strings ("30", "5E-1"); plain numbers are accepted. */
static loom_err param_text(struct loader *ld, int obj, const char *key, const char *where,
                           bool required, struct loom_str *out)
{
    int i = member(ld, obj, key);
    if (i < 0) {
        if (!required)
            return LOOM_EAGAIN;
        return loom_error_set(ld->err, LOOM_EINVAL, "%s%s is missing", where, key);
    }
    if (!loom_json_is_string(ld->doc, i) && !loom_json_is_number(ld->doc, i))
        return loom_error_set(ld->err, LOOM_EINVAL, "%s%s is not a string or a number", where, key);
    *out = loom_json_slice(ld->doc, i);
    return LOOM_OK;
}

/* An integer parameter in [lo, hi]; `dflt` if absent and not required. */
static loom_err param_int(struct loader *ld, int obj, const char *key, const char *where,
                          bool required, int64_t dflt, int64_t lo, int64_t hi, int64_t *out)
{
    struct loom_str s;
    loom_err e = param_text(ld, obj, key, where, required, &s);
    if (e == LOOM_EAGAIN) {
        *out = dflt;
        return LOOM_OK;
    }
    if (e)
        return e;
    int64_t v;
    if (loom_str_to_i64(s, &v) != LOOM_OK)
        return loom_error_set(ld->err, LOOM_EINVAL, "%s%s \"%.*s\" is not an integer", where, key,
                              (int)LOOM_MIN(s.len, 40), s.ptr);
    if (v < lo || v > hi)
        return loom_error_set(ld->err, LOOM_EINVAL, "%s%s %lld is out of range [%lld, %lld]", where,
                              key, (long long)v, (long long)lo, (long long)hi);
    *out = v;
    return LOOM_OK;
}

/* A float parameter, read as XGBoost reads it (strtof of the whole text); finite. */
static loom_err param_float(struct loader *ld, int obj, const char *key, const char *where,
                            float *out)
{
    struct loom_str s;
    loom_err e = param_text(ld, obj, key, where, true, &s);
    if (e)
        return e;
    char tmp[64];
    char *end = NULL;
    float v = 0;
    bool ok = s.len > 0 && s.len < sizeof(tmp);
    if (ok) {
        memcpy(tmp, s.ptr, s.len);
        tmp[s.len] = '\0';
        v = strtof(tmp, &end);
        ok = end == tmp + s.len && tmp[0] != ' ' && isfinite(v);
    }
    if (!ok)
        return loom_error_set(ld->err, LOOM_EINVAL, "%s%s \"%.*s\" is not a finite number", where,
                              key, (int)LOOM_MIN(s.len, 40), s.ptr);
    *out = v;
    return LOOM_OK;
}

/*
 * Array `key` of tree t: must hold exactly n scalars (so element k is token index + 1 + k).
 * Returns the token index, or -1 when the key is absent and the array is optional.
 */
static loom_err tree_array(struct loader *ld, uint32_t t, int tree, const char *key, int64_t n,
                           bool required, int *out)
{
    const struct loom_json_doc *d = ld->doc;
    int a = member(ld, tree, key);
    if (a < 0) {
        if (required)
            return loom_error_set(ld->err, LOOM_EINVAL, "tree %u: %s is missing", t, key);
        *out = -1;
        return LOOM_OK;
    }
    if (!loom_json_is_array(d, a))
        return loom_error_set(ld->err, LOOM_EINVAL, "tree %u: %s is not an array", t, key);
    int size = loom_json_size(d, a);
    if (n >= 0 && size != n)
        return loom_error_set(ld->err, LOOM_EINVAL,
                              "tree %u: %s has %d elements, num_nodes is %lld", t, key, size,
                              (long long)n);
    if (loom_json_skip(d, a) != a + 1 + size)
        return loom_error_set(ld->err, LOOM_EINVAL, "tree %u: %s must hold only numbers", t, key);
    *out = a;
    return LOOM_OK;
}

/* Element k of scalar array a as an integer in [lo, hi]. */
static loom_err elem_int(struct loader *ld, uint32_t t, int a, const char *key, int64_t k,
                         int64_t lo, int64_t hi, int64_t *out)
{
    const struct loom_json_doc *d = ld->doc;
    int i = a + 1 + (int)k;
    int64_t v;
    if (loom_json_is_bool(d, i))
        v = loom_json_is_true(d, i);
    else if (loom_json_to_i64(d, i, &v) != LOOM_OK)
        return loom_error_set(ld->err, LOOM_EINVAL, "tree %u: %s[%lld] is not an integer", t, key,
                              (long long)k);
    if (v < lo || v > hi)
        return loom_error_set(ld->err, LOOM_EINVAL,
                              "tree %u: %s[%lld] = %lld is out of range [%lld, %lld]", t, key,
                              (long long)k, (long long)v, (long long)lo, (long long)hi);
    *out = v;
    return LOOM_OK;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static void scratch_reserve(struct scratch *s, size_t n);

/* Grow the array at *p (of elements of `size` bytes, *cap of them) to hold `need`. */
static void reserve(void *p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return;
    size_t c = LOOM_MAX(need, *cap * 2);
    *(void **)p = loom_realloc(*(void **)p, loom_mul_size(c, size));
    *cap = c;
}

/* Validate tree t (token `tree` of ld->doc) and append its re-laid nodes to the model. */
static loom_err load_tree(struct loader *ld, uint32_t t, int tree)
{
    const struct loom_json_doc *d = ld->doc;
    const struct loom_model_limits *lim = ld->lim;
    struct xgb *m = ld->m;
    struct scratch *s = &ld->s;
    loom_err e;
    int64_t n, v;
    int tp;
    if (!loom_json_is_object(d, tree))
        return loom_error_set(ld->err, LOOM_EINVAL, "tree %u is not an object", t);
    if ((e = need_object(ld, tree, "tree_param", "", &tp)))
        return loom_error_prefix(ld->err, "tree %u", t);
    if ((e = param_int(ld, tp, "num_nodes", "tree_param.", true, 0, 1, INT32_MAX, &n)) ||
        (e = param_int(ld, tp, "size_leaf_vector", "tree_param.", false, 0, 0, INT32_MAX, &v)))
        return loom_error_prefix(ld->err, "tree %u", t);
    if (v != 0)
        return loom_error_set(ld->err, LOOM_EUNSUPPORTED,
                              "tree %u: vector leaves (size_leaf_vector %lld) are not supported", t,
                              (long long)v);
    if (n > lim->max_nodes)
        return loom_error_set(ld->err, LOOM_ETOOBIG,
                              "tree %u: num_nodes %lld is more than the limit of %u", t,
                              (long long)n, lim->max_nodes);
    int al, ar, af, ac, adl, ast, acat, acn, acs, acz;
    if ((e = tree_array(ld, t, tree, "left_children", n, true, &al)) ||
        (e = tree_array(ld, t, tree, "right_children", n, true, &ar)) ||
        (e = tree_array(ld, t, tree, "split_indices", n, true, &af)) ||
        (e = tree_array(ld, t, tree, "split_conditions", n, true, &ac)) ||
        (e = tree_array(ld, t, tree, "default_left", n, true, &adl)) ||
        (e = tree_array(ld, t, tree, "split_type", n, false, &ast)) ||
        (e = tree_array(ld, t, tree, "categories", -1, false, &acat)) ||
        (e = tree_array(ld, t, tree, "categories_nodes", -1, false, &acn)) ||
        (e = tree_array(ld, t, tree, "categories_segments", -1, false, &acs)) ||
        (e = tree_array(ld, t, tree, "categories_sizes", -1, false, &acz)))
        return e;

    /* Room for this tree. The arrays were just checked to hold n numbers each, so no count
     * claimed by the file reserves more than its tokens justify. */
    size_t base = m->nnodes;
    if ((size_t)n > UINT32_MAX / XN_SIZE - 1 - base)
        return loom_error_set(ld->err, LOOM_ETOOBIG, "the model has more than %u nodes",
                              UINT32_MAX / XN_SIZE - 1);
    size_t node_cap = ld->node_cap;
    reserve(&m->nodes, &node_cap, base + (size_t)n, sizeof(*m->nodes));
    reserve(&m->aux, &ld->node_cap, base + (size_t)n, sizeof(*m->aux));
    if (acat >= 0)
        reserve(&m->cats, &ld->cat_cap, m->ncats + (size_t)loom_json_size(d, acat),
                sizeof(*m->cats));
    if (acn >= 0)
        reserve(&m->cat_ranges, &ld->range_cap, m->ncat_ranges + (size_t)loom_json_size(d, acn),
                sizeof(*m->cat_ranges));
    scratch_reserve(s, (size_t)n);

    /* Children: a leaf has -1 and -1; a split has two children after it, each with one parent.
     * Children after their parent make every walk finite. */
    for (int64_t i = 0; i < n; i++)
        s->parent[i] = UINT32_MAX;
    for (int64_t i = 0; i < n; i++) {
        if ((e = elem_int(ld, t, al, "left_children", i, -1, INT32_MAX, &s->left[i])) ||
            (e = elem_int(ld, t, ar, "right_children", i, -1, INT32_MAX, &s->right[i])))
            return e;
        int64_t c[2] = { s->left[i], s->right[i] };
        if (c[0] == -1 || c[1] == -1) {
            if (c[0] != c[1])
                return loom_error_set(
                    ld->err, LOOM_EINVAL, "tree %u node %lld: %s child is -1 but %s child is %lld",
                    t, (long long)i, c[0] == -1 ? "left" : "right", c[0] == -1 ? "right" : "left",
                    (long long)(c[0] == -1 ? c[1] : c[0]));
            continue;
        }
        for (int k = 0; k < 2; k++) {
            const char *side = k ? "right" : "left";
            if (c[k] <= i)
                return loom_error_set(ld->err, LOOM_EINVAL,
                                      "tree %u node %lld: %s child %lld is not after the node", t,
                                      (long long)i, side, (long long)c[k]);
            if (c[k] >= n)
                return loom_error_set(ld->err, LOOM_EINVAL,
                                      "tree %u node %lld: %s child %lld is out of range "
                                      "(num_nodes %lld)",
                                      t, (long long)i, side, (long long)c[k], (long long)n);
            if (s->parent[c[k]] != UINT32_MAX)
                return loom_error_set(ld->err, LOOM_EINVAL,
                                      "tree %u node %lld: node %lld already has parent %u", t,
                                      (long long)i, (long long)c[k], s->parent[c[k]]);
            s->parent[c[k]] = (uint32_t)i;
        }
    }

    /* Per-node fields. Leaves' split_indices are not features (XGBoost writes 0, and large
     * values for deleted nodes), so only splits are range-checked. */
    for (int64_t i = 0; i < n; i++) {
        bool split = s->left[i] != -1;
        if ((e = elem_int(ld, t, af, "split_indices", i, INT64_MIN, INT64_MAX, &s->feat[i])))
            return e;
        if (split && (s->feat[i] < 0 || s->feat[i] >= m->nfeat))
            return loom_error_set(ld->err, LOOM_EINVAL,
                                  "tree %u node %lld: split feature %lld is out of range "
                                  "(num_feature %u)",
                                  t, (long long)i, (long long)s->feat[i], m->nfeat);
        if (loom_json_to_float(d, ac + 1 + (int)i, &s->cond[i]) != LOOM_OK)
            return loom_error_set(ld->err, LOOM_EINVAL,
                                  "tree %u: split_conditions[%lld] is not a float number", t,
                                  (long long)i);
        if ((e = elem_int(ld, t, adl, "default_left", i, 0, 1, &v)))
            return e;
        s->dl[i] = (uint8_t)v;
        v = 0;
        if (ast >= 0 && (e = elem_int(ld, t, ast, "split_type", i, 0, 1, &v)))
            return e;
        s->st[i] = (uint8_t)(split && v == 1);
        s->catk[i] = -1;
    }

    /* Categorical splits: entry k gives node categories_nodes[k] the list
     * categories[segments[k], segments[k] + sizes[k]). Lists may not add up to more entries
     * than `categories` has, which keeps the model's memory proportional to the file. */
    int ncn = acn >= 0 ? loom_json_size(d, acn) : 0;
    if ((acs >= 0 ? loom_json_size(d, acs) : 0) != ncn ||
        (acz >= 0 ? loom_json_size(d, acz) : 0) != ncn)
        return loom_error_set(ld->err, LOOM_EINVAL,
                              "tree %u: categories_nodes, categories_segments and "
                              "categories_sizes differ in length",
                              t);
    int64_t ncat = acat >= 0 ? loom_json_size(d, acat) : 0, listed = 0;
    for (int k = 0; k < ncn; k++) {
        int64_t node, seg, size;
        if ((e = elem_int(ld, t, acn, "categories_nodes", k, 0, n - 1, &node)) ||
            (e = elem_int(ld, t, acs, "categories_segments", k, 0, ncat, &seg)) ||
            (e = elem_int(ld, t, acz, "categories_sizes", k, 0, ncat, &size)))
            return e;
        if (!s->st[node])
            return loom_error_set(ld->err, LOOM_EINVAL,
                                  "tree %u node %lld: has categories but is not a categorical "
                                  "split",
                                  t, (long long)node);
        if (s->catk[node] >= 0)
            return loom_error_set(ld->err, LOOM_EINVAL,
                                  "tree %u node %lld: listed twice in categories_nodes", t,
                                  (long long)node);
        if (seg + size > ncat)
            return loom_error_set(ld->err, LOOM_EINVAL,
                                  "tree %u node %lld: categories [%lld, %lld) run past the %lld "
                                  "categories",
                                  t, (long long)node, (long long)seg, (long long)(seg + size),
                                  (long long)ncat);
        if ((listed += size) > ncat)
            return loom_error_set(ld->err, LOOM_EINVAL,
                                  "tree %u: categories_sizes add up to more than the %lld "
                                  "categories",
                                  t, (long long)ncat);
        s->catk[node] = k;
    }
    for (int64_t i = 0; i < n; i++)
        if (s->st[i] && s->catk[i] < 0)
            return loom_error_set(ld->err, LOOM_EINVAL,
                                  "tree %u node %lld: categorical split without categories", t,
                                  (long long)i);

    /* Breadth-first re-layout of the nodes reachable from the root: the children of the k-th
     * node visited get the next two free slots. Unreachable nodes (deleted ones) are dropped. */
    size_t nvis = 1, k = 0;
    s->order[0] = 0;
    s->depth[0] = 0;
    uint32_t depth = 0;
    float bm = m->base_margin, w = ld->weights[t];
    for (; k < nvis; k++) {
        uint32_t old = s->order[k];
        struct xnode *nd = &m->nodes[base + k];
        union xaux *ax = &m->aux[base + k];
        uint32_t self = (uint32_t)(base + k) * XN_SIZE;
        depth = LOOM_MAX(depth, s->depth[old]);
        if (s->left[old] == -1) {
            float leaf = s->cond[old];
            /* XGBoosterPredictFromDense scales a dart tree's leaf through the base margin:
             * ((bm + leaf) - bm) * weight, each step rounded to float. */
            if (ld->dart)
                leaf = (float)((float)((float)(bm + leaf) - bm) * w);
            *nd = (struct xnode){ .thr = NAN, .child = self, .missing = self, .feat = 0 };
            ax->leaf = leaf;
            continue;
        }
        uint32_t l = (uint32_t)s->left[old], r = (uint32_t)s->right[old];
        s->order[nvis] = l;
        s->order[nvis + 1] = r;
        s->depth[l] = s->depth[r] = s->depth[old] + 1;
        nd->child = (uint32_t)(base + nvis) * XN_SIZE;
        nd->missing = nd->child + (s->dl[old] ? 0 : XN_SIZE);
        nd->feat = (uint32_t)s->feat[old];
        nvis += 2;
        ax->leaf = 0;
        if (!s->st[old]) {
            /* `x < NaN` is false for every x, so a NaN threshold sends all present values
             * right, as -inf does with `x >= thr`. */
            nd->thr = isnan(s->cond[old]) ? -INFINITY : s->cond[old];
            continue;
        }
        nd->thr = NAN;
        /* Copy the list, sorted and without duplicates, for a binary search. */
        int ck = s->catk[old];
        int64_t seg, size;
        elem_int(ld, t, acs, "categories_segments", ck, 0, ncat, &seg);
        elem_int(ld, t, acz, "categories_sizes", ck, 0, ncat, &size);
        size_t len = 0;
        if (size > 0) {
            uint32_t *dst = m->cats + m->ncats;
            for (int64_t j = 0; j < size; j++) {
                int64_t c;
                if ((e = elem_int(ld, t, acat, "categories", seg + j, 0, INT32_MAX, &c)))
                    return e;
                dst[j] = (uint32_t)c;
            }
            qsort(dst, (size_t)size, sizeof(*dst), cmp_u32);
            for (int64_t j = 0; j < size; j++)
                if (len == 0 || dst[len - 1] != dst[j])
                    dst[len++] = dst[j];
        }
        m->cat_ranges[m->ncat_ranges] = (struct cat_range){ (uint32_t)m->ncats, (uint32_t)len };
        ax->cat = m->ncat_ranges++;
        nd->feat |= XN_CAT;
        m->ncats += len;
        m->has_cats = true;
    }
    m->trees[t].root = (uint32_t)base * XN_SIZE;
    m->trees[t].depth = depth;
    m->max_depth = LOOM_MAX(m->max_depth, depth);
    m->nnodes += nvis;
    return LOOM_OK;
}

static void scratch_reserve(struct scratch *s, size_t n)
{
    if (n <= s->cap)
        return;
    n = LOOM_MAX(n, s->cap * 2);
    s->left = loom_realloc(s->left, loom_mul_size(n, sizeof(*s->left)));
    s->right = loom_realloc(s->right, loom_mul_size(n, sizeof(*s->right)));
    s->feat = loom_realloc(s->feat, loom_mul_size(n, sizeof(*s->feat)));
    s->cond = loom_realloc(s->cond, loom_mul_size(n, sizeof(*s->cond)));
    s->dl = loom_realloc(s->dl, n);
    s->st = loom_realloc(s->st, n);
    s->parent = loom_realloc(s->parent, loom_mul_size(n, sizeof(*s->parent)));
    s->order = loom_realloc(s->order, loom_mul_size(n, sizeof(*s->order)));
    s->depth = loom_realloc(s->depth, loom_mul_size(n, sizeof(*s->depth)));
    s->catk = loom_realloc(s->catk, loom_mul_size(n, sizeof(*s->catk)));
    s->cap = n;
}

static void scratch_free(struct scratch *s)
{
    free(s->left);
    free(s->right);
    free(s->feat);
    free(s->cond);
    free(s->dl);
    free(s->st);
    free(s->parent);
    free(s->order);
    free(s->depth);
    free(s->catk);
}

/* feature_names: absent or empty, or one string per feature. */
static loom_err load_feature_names(struct loader *ld, int learner, struct loom_arena *arena)
{
    const struct loom_json_doc *d = ld->doc;
    struct xgb *m = ld->m;
    int a = member(ld, learner, "feature_names");
    if (a < 0 || (loom_json_is_array(d, a) && loom_json_size(d, a) == 0))
        return LOOM_OK;
    if (!loom_json_is_array(d, a))
        return loom_error_set(ld->err, LOOM_EINVAL, "learner.feature_names is not an array");
    if ((uint32_t)loom_json_size(d, a) != m->nfeat)
        return loom_error_set(ld->err, LOOM_EINVAL,
                              "learner.feature_names has %d names for %u features",
                              loom_json_size(d, a), m->nfeat);
    size_t total = 0;
    loom_json_foreach (d, a, i) {
        struct loom_str s;
        if (loom_json_unescape(d, i, arena, &s) != LOOM_OK)
            return loom_error_set(ld->err, LOOM_EINVAL, "learner.feature_names holds a non-string");
        total += s.len + 1;
    }
    m->feature_names = loom_malloc(loom_mul_size(m->nfeat, sizeof(char *)));
    m->names_blob = loom_malloc(total);
    char *p = m->names_blob;
    size_t k = 0;
    loom_json_foreach (d, a, i) {
        struct loom_str s;
        loom_json_unescape(d, i, arena, &s);
        memcpy(p, s.ptr, s.len);
        p[s.len] = '\0';
        m->feature_names[k++] = p;
        p += s.len + 1;
    }
    return LOOM_OK;
}

/* The whole document into ld->m. */
static loom_err load_doc(struct loader *ld, struct loom_arena *arena)
{
    const struct loom_json_doc *d = ld->doc;
    struct xgb *m = ld->m;
    const struct loom_model_limits *lim = ld->lim;
    loom_err e;
    int learner, lmp, objective, gb, model, mp;
    if (!loom_json_is_object(d, 0))
        return loom_error_set(ld->err, LOOM_EINVAL, "the model is not a JSON object");
    if ((e = need_object(ld, 0, "learner", "", &learner)) ||
        (e = need_object(ld, learner, "learner_model_param", "learner.", &lmp)) ||
        (e = need_object(ld, learner, "objective", "learner.", &objective)) ||
        (e = need_object(ld, learner, "gradient_booster", "learner.", &gb)))
        return e;

    int ver = member(ld, 0, "version");
    if (ver >= 0) {
        int64_t major = 0;
        int v0 = loom_json_arr_at(d, ver, 0);
        if (v0 < 0 || loom_json_to_i64(d, v0, &major) != LOOM_OK)
            return loom_error_set(ld->err, LOOM_EINVAL, "version is not [major, minor, patch]");
        if (major != 1 && major != 2)
            return loom_error_set(ld->err, LOOM_EUNSUPPORTED,
                                  "XGBoost version %lld models are not supported (1.x and 2.x are)",
                                  (long long)major);
    }

    /* The objective. */
    int name = member(ld, objective, "name");
    if (name < 0 || !loom_json_is_string(d, name))
        return loom_error_set(ld->err, LOOM_EINVAL, "learner.objective.name is missing");
    struct loom_str oname = loom_json_slice(d, name);
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(objectives); i++)
        if (loom_json_str_eq(d, name, loom_str_cstr(objectives[i].name)))
            m->obj = &objectives[i];
    if (!m->obj)
        return loom_error_set(ld->err, LOOM_EUNSUPPORTED, "objective %.*s is not supported",
                              (int)LOOM_MIN(oname.len, 64), oname.ptr);

    /* Model parameters. */
    int64_t nfeat, nclass, ntarget, v;
    const char *w = "learner.learner_model_param.";
    if ((e = param_int(ld, lmp, "num_feature", w, true, 0, 0, INT32_MAX, &nfeat)) ||
        (e = param_int(ld, lmp, "num_class", w, false, 0, 0, INT32_MAX, &nclass)) ||
        (e = param_int(ld, lmp, "num_target", w, false, 1, 0, INT32_MAX, &ntarget)))
        return e;
    if (nfeat < 1)
        return loom_error_set(ld->err, LOOM_EINVAL, "%snum_feature is 0", w);
    if (nfeat > lim->max_features)
        return loom_error_set(ld->err, LOOM_ETOOBIG,
                              "%snum_feature %lld is more than the limit of %u", w,
                              (long long)nfeat, lim->max_features);
    if (ntarget != 1)
        return loom_error_set(ld->err, LOOM_EUNSUPPORTED,
                              "%snum_target %lld: multi-target models are not supported", w,
                              (long long)ntarget);
    if (is_multi(m->obj) ? nclass < 1 : nclass > 1)
        return loom_error_set(ld->err, LOOM_EINVAL, "%snum_class %lld does not suit objective %s",
                              w, (long long)nclass, m->obj->name);
    if (nclass > lim->max_groups)
        return loom_error_set(ld->err, LOOM_ETOOBIG,
                              "%snum_class %lld is more than the limit of %u", w, (long long)nclass,
                              lim->max_groups);
    m->nfeat = (uint32_t)nfeat;
    m->ngroups = (uint32_t)LOOM_MAX(nclass, 1);

    /* base_score is the prediction of an empty model; the margin it starts from depends on
     * the objective's link, computed in float as XGBoost does. */
    float bs = 0;
    if ((e = param_float(ld, lmp, "base_score", w, &bs)))
        return e;
    switch (m->obj->link) {
    case LINK_LOGIT:
        if (!(bs > 0.0f && bs < 1.0f))
            return loom_error_set(ld->err, LOOM_EINVAL,
                                  "%sbase_score %g must be in (0, 1) for objective %s", w,
                                  (double)bs, m->obj->name);
        m->base_margin = -logf(1.0f / bs - 1.0f);
        break;
    case LINK_LOG:
        if (!(bs > 0.0f))
            return loom_error_set(ld->err, LOOM_EINVAL,
                                  "%sbase_score %g must be positive for objective %s", w,
                                  (double)bs, m->obj->name);
        m->base_margin = logf(bs);
        break;
    default:
        m->base_margin = bs;
    }

    /* The booster. */
    int gname = member(ld, gb, "name");
    if (gname < 0 || !loom_json_is_string(d, gname))
        return loom_error_set(ld->err, LOOM_EINVAL, "learner.gradient_booster.name is missing");
    if (loom_json_str_eq(d, gname, LOOM_STR("gbtree"))) {
        if ((e = need_object(ld, gb, "model", "learner.gradient_booster.", &model)))
            return e;
    } else if (loom_json_str_eq(d, gname, LOOM_STR("dart"))) {
        int inner;
        ld->dart = true;
        if ((e = need_object(ld, gb, "gbtree", "learner.gradient_booster.", &inner)) ||
            (e = need_object(ld, inner, "model", "learner.gradient_booster.gbtree.", &model)))
            return e;
        ld->weight_drop = member(ld, gb, "weight_drop");
        if (ld->weight_drop < 0 || !loom_json_is_array(d, ld->weight_drop))
            return loom_error_set(ld->err, LOOM_EINVAL,
                                  "learner.gradient_booster.weight_drop is missing");
    } else {
        struct loom_str g = loom_json_slice(d, gname);
        return loom_error_set(ld->err, LOOM_EUNSUPPORTED,
                              "booster %.*s is not supported (only gbtree and dart)",
                              (int)LOOM_MIN(g.len, 64), g.ptr);
    }
    if ((e = need_object(ld, model, "gbtree_model_param", "gbtree model.", &mp)))
        return e;
    int64_t ntrees;
    if ((e = param_int(ld, mp, "num_trees", "gbtree_model_param.", true, 0, 0, INT32_MAX,
                       &ntrees)) ||
        (e = param_int(ld, mp, "size_leaf_vector", "gbtree_model_param.", false, 0, 0, INT32_MAX,
                       &v)))
        return e;
    if (v != 0)
        return loom_error_set(ld->err, LOOM_EUNSUPPORTED,
                              "vector leaves (size_leaf_vector %lld) are not supported",
                              (long long)v);
    if (ntrees > lim->max_trees)
        return loom_error_set(ld->err, LOOM_ETOOBIG, "num_trees %lld is more than the limit of %u",
                              (long long)ntrees, lim->max_trees);
    int trees = member(ld, model, "trees"), info = member(ld, model, "tree_info");
    if (trees < 0 || !loom_json_is_array(d, trees))
        return loom_error_set(ld->err, LOOM_EINVAL, "trees is missing");
    if (info < 0 || !loom_json_is_array(d, info))
        return loom_error_set(ld->err, LOOM_EINVAL, "tree_info is missing");
    /* In split mode the skeleton's trees array must be the one that was emptied; if the
     * document's layout fooled the scanner, load it again the plain way. */
    size_t count = (size_t)loom_json_size(d, trees);
    if (ld->trees) {
        if (d->toks[trees].start != ld->trees_at || count != 0)
            return LOOM_EAGAIN;
        count = ld->ntrees;
    }
    if (count != (size_t)ntrees)
        return loom_error_set(ld->err, LOOM_EINVAL, "trees has %zu trees, num_trees is %lld", count,
                              (long long)ntrees);
    if (loom_json_size(d, info) != ntrees || loom_json_skip(d, info) != info + 1 + ntrees)
        return loom_error_set(ld->err, LOOM_EINVAL,
                              "tree_info must hold %lld integers, one per tree", (long long)ntrees);
    if (ld->dart && (loom_json_size(d, ld->weight_drop) != ntrees ||
                     loom_json_skip(d, ld->weight_drop) != ld->weight_drop + 1 + ntrees))
        return loom_error_set(ld->err, LOOM_EINVAL,
                              "weight_drop must hold %lld numbers, one per tree",
                              (long long)ntrees);
    m->ntrees = (uint32_t)ntrees;
    m->trees = loom_calloc(ntrees ? (size_t)ntrees : 1, sizeof(*m->trees));
    ld->weights = loom_malloc(loom_mul_size(ntrees ? (size_t)ntrees : 1, sizeof(float)));
    for (uint32_t t = 0; t < m->ntrees; t++) {
        struct loom_str g = loom_json_slice(d, info + 1 + (int)t);
        int64_t group;
        if (loom_json_to_i64(d, info + 1 + (int)t, &group) != LOOM_OK || group < 0 ||
            group >= m->ngroups)
            return loom_error_set(ld->err, LOOM_EINVAL,
                                  "tree_info[%u] = %.*s is not an output group in [0, %u)", t,
                                  (int)LOOM_MIN(g.len, 40), g.ptr, m->ngroups);
        m->trees[t].group = (uint32_t)group;
        ld->weights[t] = 1.0f;
        if (ld->dart && (loom_json_to_float(d, ld->weight_drop + 1 + (int)t, &ld->weights[t]) ||
                         !isfinite(ld->weights[t])))
            return loom_error_set(ld->err, LOOM_EINVAL, "weight_drop[%u] is not a finite number",
                                  t);
    }
    if ((e = load_feature_names(ld, learner, arena)))
        return e;

    /* Each tree: a subtree of the document's tokens, or tokenized from its span on its own
     * (into an arena reset for each, so that only one tree's tokens exist at a time). */
    const struct loom_json_doc *doc = ld->doc;
    uint32_t t = 0;
    if (!ld->trees) {
        loom_json_foreach (doc, trees, ti) {
            if ((e = load_tree(ld, t++, ti)))
                return e;
        }
    }
    for (t = 0; ld->trees && t < ld->ntrees; t++) {
        const struct loom_json_limits jl = { .max_depth = 8,
                                             .max_tokens = INT32_MAX,
                                             .allow_nonfinite = true };
        struct loom_json_doc tdoc;
        const struct span sp = ld->trees[t];
        loom_arena_reset(ld->tree_arena);
        if ((e = loom_json_parse(ld->data + sp.start, sp.len, &jl, ld->tree_arena, &tdoc, ld->err)))
            return loom_error_prefix(ld->err, "model JSON, in tree %u which starts at offset %zu",
                                     t, sp.start);
        ld->doc = &tdoc;
        e = load_tree(ld, t, 0);
        ld->doc = doc;
        if (e)
            return e;
    }
    m->lane_depth = loom_calloc(ntrees / TREE_LANES + 1, sizeof(*m->lane_depth));
    for (t = 0; t < m->ntrees; t++)
        m->lane_depth[t / TREE_LANES] = LOOM_MAX(m->lane_depth[t / TREE_LANES], m->trees[t].depth);
    return LOOM_OK;
}

/*
 * ---- Splitting the trees out -----------------------------------------------------------------
 *
 * Tokens take about as many bytes as the text they describe, and a model is nearly all trees,
 * so tokenizing a model of hundreds of MB whole would need several times its size. Instead a
 * small structural scanner (strings and brackets only) finds learner.gradient_booster's
 * model.trees (gbtree.model.trees for dart) and cuts it into one span per tree. The document is
 * tokenized with the trees array emptied, and each tree on its own when its turn comes, so one
 * tree's tokens exist at a time. The scanner validates nothing the tokenizer will not see
 * again: every byte except the separators between trees (which it checks itself) goes through
 * the strict tokenizer. Anything it does not follow (escaped keys, odd nesting) falls back to
 * tokenizing the whole document.
 */

static const char *sc_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

/* Past the string whose opening quote is at p, or NULL. */
static const char *sc_string(const char *p, const char *end)
{
    for (p++; p < end;) {
        if (*p == '"')
            return p + 1;
        if (*p == '\\' && end - p < 2)
            return NULL;
        p += *p == '\\' ? 2 : 1;
    }
    return NULL;
}

/* Past the value at p, or NULL; containers may nest `depth` deep. */
static const char *sc_value(const char *p, const char *end, int depth)
{
    if (p == end)
        return NULL;
    if (*p == '"')
        return sc_string(p, end);
    if (*p != '{' && *p != '[') {
        const char *q = p; /* a number or a literal: the tokenizer judges it later */
        while (q < end && ((*q >= '0' && *q <= '9') || (*q >= 'a' && *q <= 'z') ||
                           (*q >= 'A' && *q <= 'Z') || *q == '-' || *q == '+' || *q == '.'))
            q++;
        return q > p ? q : NULL;
    }
    char close = *p == '{' ? '}' : ']';
    if (depth == 0)
        return NULL;
    p = sc_ws(p + 1, end);
    if (p < end && *p == close)
        return p + 1;
    for (;;) {
        if (close == '}') {
            if (p == end || *p != '"' || !(p = sc_string(p, end)))
                return NULL;
            p = sc_ws(p, end);
            if (p == end || *p != ':')
                return NULL;
            p = sc_ws(p + 1, end);
        }
        if (!(p = sc_value(p, end, depth - 1)))
            return NULL;
        p = sc_ws(p, end);
        if (p < end && *p == ',') {
            p = sc_ws(p + 1, end);
            continue;
        }
        return p < end && *p == close ? p + 1 : NULL;
    }
}

/* The value of the first member named `key` (compared unescaped-as-is) of the object at p. */
static const char *sc_member(const char *p, const char *end, const char *key)
{
    if (!p || p == end || *p != '{')
        return NULL;
    size_t klen = strlen(key);
    p = sc_ws(p + 1, end);
    while (p < end && *p == '"') {
        const char *k = p + 1, *q = sc_string(p, end);
        if (!q)
            return NULL;
        bool match = (size_t)(q - 1 - k) == klen && memcmp(k, key, klen) == 0;
        p = sc_ws(q, end);
        if (p == end || *p != ':')
            return NULL;
        p = sc_ws(p + 1, end);
        if (match)
            return p;
        if (!(p = sc_value(p, end, 32)))
            return NULL;
        p = sc_ws(p, end);
        if (p == end || *p != ',')
            return NULL;
        p = sc_ws(p + 1, end);
    }
    return NULL;
}

/*
 * Find the trees array: on success *open and *close are the offsets of its brackets and
 * *spans (caller frees) holds the elements' spans. False when the document does not have the
 * expected shape or has more than max_trees trees; the plain path then reports what is wrong.
 */
static bool split_trees(const char *data, size_t len, uint32_t max_trees, size_t *open,
                        size_t *close, struct span **spans, size_t *n)
{
    const char *end = data + len, *root = sc_ws(data, end);
    const char *gb = sc_member(sc_member(root, end, "learner"), end, "gradient_booster");
    const char *model = sc_member(gb, end, "model");
    if (!model)
        model = sc_member(sc_member(gb, end, "gbtree"), end, "model");
    const char *p = sc_member(model, end, "trees");
    if (!p || p == end || *p != '[')
        return false;
    *open = (size_t)(p - data);
    struct span *sp = NULL;
    size_t count = 0, cap = 0;
    p = sc_ws(p + 1, end);
    while (p < end && *p != ']') {
        const char *q = sc_value(p, end, 8);
        if (!q || count == max_trees)
            goto fail;
        reserve(&sp, &cap, count + 1, sizeof(*sp));
        sp[count++] = (struct span){ (size_t)(p - data), (size_t)(q - p) };
        p = sc_ws(q, end);
        if (p < end && *p == ',') {
            p = sc_ws(p + 1, end);
            if (p < end && *p == ']')
                goto fail; /* a trailing comma */
        } else if (p == end || *p != ']') {
            goto fail;
        }
    }
    if (p == end)
        goto fail;
    *close = (size_t)(p - data);
    *spans = sp;
    *n = count;
    return true;
fail:
    free(sp);
    return false;
}

static loom_err xgb_load(const char *data, size_t len, const struct loom_model_limits *lim,
                         struct loom_model_info *info, void **state, struct loom_error *err)
{
    struct loom_arena arena, tree_arena;
    struct loom_json_doc doc;
    const struct loom_json_limits jl = {
        .max_depth = 32,
        .max_tokens = INT32_MAX,
        .max_bytes = lim->max_bytes,
        .allow_nonfinite = true,
    };
    struct span *spans = NULL;
    size_t open, close, nspans = 0;
    char *skeleton = NULL;
    bool split = split_trees(data, len, lim->max_trees, &open, &close, &spans, &nspans);
    loom_arena_init(&arena, 1 << 16);
    loom_arena_init(&tree_arena, 1 << 16);
    loom_err e;
    struct loader ld;
again:
    if (split) {
        /* The document without the trees: "...\"trees\":[" + "]..." */
        skeleton = loom_malloc(open + 1 + (len - close));
        memcpy(skeleton, data, open + 1);
        memcpy(skeleton + open + 1, data + close, len - close);
        e = loom_json_parse(skeleton, open + 1 + (len - close), &jl, &arena, &doc, err);
    } else {
        e = loom_json_parse(data, len, &jl, &arena, &doc, err);
    }
    if (e) {
        loom_error_prefix(err, "model JSON");
        goto out;
    }
    ld = (struct loader){ .doc = &doc, .lim = lim, .err = err, .m = loom_new(struct xgb) };
    if (split) {
        ld.data = data;
        ld.trees = spans;
        ld.ntrees = nspans;
        ld.trees_at = open;
        ld.tree_arena = &tree_arena;
    }
    e = load_doc(&ld, &arena);
    scratch_free(&ld.s);
    free(ld.weights);
    if (e) {
        xgb_free(ld.m);
        if (e == LOOM_EAGAIN && split) {
            split = false;
            free(skeleton);
            skeleton = NULL;
            loom_arena_reset(&arena);
            goto again;
        }
        goto out;
    }
    struct xgb *m = ld.m;
    info->objective = m->obj->name;
    info->num_features = m->nfeat;
    info->num_groups = m->ngroups;
    info->num_outputs = m->obj->transform == TF_SOFTMAX ? 1 : m->ngroups;
    info->num_trees = m->ntrees;
    info->max_depth = m->max_depth;
    info->feature_names = (const char *const *)m->feature_names;
    *state = m;
out:
    free(skeleton);
    free(spans);
    loom_arena_release(&tree_arena);
    loom_arena_release(&arena);
    return e;
}

const struct loom_model_backend loom_model_backend_xgboost = {
    .name = "xgboost",
    .load = xgb_load,
    .predict = xgb_predict,
    .predict_margin = xgb_predict_margin,
    .free = xgb_free,
};
