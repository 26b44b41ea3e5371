/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The linear backend: loom's own small JSON format for linear and logistic regression and
 * multinomial (softmax) models, documented in docs/models.md, so that a model exported from any
 * framework as a weight matrix can be served next to tree ensembles. Validation is strict
 * (unknown keys, wrong shapes and non-finite numbers are errors) and prediction is float32
 * arithmetic in a fixed, documented order, so that results are reproducible bit for bit:
 *
 *     margin[k] = bias[k];  for j in 0..F-1, x[j] not NaN:  margin[k] += weights[k][j] * x[j]
 *
 * each product and each sum rounded to float (no fused multiply-add: loom builds with
 * -ffp-contract=off). A missing (NaN) feature contributes nothing, as in XGBoost's gblinear.
 * The logistic and softmax transforms are XGBoost's (loom_model_sigmoid, loom_model_softmax).
 */
#include <loom/core.h>
#include <loom/json.h>
#include <loom/model.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum lin_transform { LT_IDENTITY, LT_SIGMOID, LT_SOFTPROB, LT_SOFTMAX };

static const struct {
    const char *name;
    enum lin_transform transform;
    bool multi;
} lin_objectives[] = {
    { "reg:squarederror", LT_IDENTITY, false },
    { "binary:logistic", LT_SIGMOID, false },
    { "multi:softprob", LT_SOFTPROB, true },
    { "multi:softmax", LT_SOFTMAX, true },
};

static const char *const lin_keys[] = { "loom_model", "version", "objective",    "num_features",
                                        "weights",    "bias",    "feature_names" };

struct linear {
    enum lin_transform transform;
    const char *objective;
    uint32_t nfeat, ngroups;
    float *weights; /* ngroups x nfeat, row-major */
    float *bias;    /* ngroups */
    char **feature_names;
    char *names_blob;
};

static void linear_free(void *state)
{
    struct linear *m = state;
    if (!m)
        return;
    free(m->weights);
    free(m->bias);
    free(m->feature_names);
    free(m->names_blob);
    free(m);
}

static void margins(const struct linear *m, const float *x, size_t n, float *out)
{
    const size_t nf = m->nfeat, ng = m->ngroups;
    for (size_t r = 0; r < n; r++) {
        const float *row = x + r * nf;
        for (size_t k = 0; k < ng; k++) {
            const float *w = m->weights + k * nf;
            float acc = m->bias[k];
            for (size_t j = 0; j < nf; j++)
                if (!isnan(row[j]))
                    acc += w[j] * row[j];
            out[r * ng + k] = acc;
        }
    }
}

static void linear_predict_margin(const void *state, const float *x, size_t n, float *out)
{
    margins(state, x, n, out);
}

/* Rows go through a stack buffer in blocks, so that multi:softmax (one output per row, but
 * ngroups margins) needs no allocation. */
static void linear_predict(const void *state, const float *x, size_t n, float *out)
{
    const struct linear *m = state;
    const size_t ng = m->ngroups, nf = m->nfeat;
    float acc[LOOM_MODEL_MAX_GROUPS_DEFAULT];
    const size_t block = LOOM_MODEL_MAX_GROUPS_DEFAULT / ng;
    for (size_t r = 0; r < n; r += block) {
        size_t nr = LOOM_MIN(block, n - r);
        margins(m, x + r * nf, nr, acc);
        for (size_t i = 0; i < nr; i++) {
            float *a = acc + i * ng;
            switch (m->transform) {
            case LT_IDENTITY:
                out[r + i] = a[0];
                break;
            case LT_SIGMOID:
                out[r + i] = loom_model_sigmoid(a[0]);
                break;
            case LT_SOFTPROB:
                loom_model_softmax(a, ng);
                memcpy(out + (r + i) * ng, a, ng * sizeof(*a));
                break;
            case LT_SOFTMAX:
                out[r + i] = loom_model_argmax(a, ng);
                break;
            }
        }
    }
}

/* A finite number into *out, or an error naming `what`. */
static loom_err finite_at(const struct loom_json_doc *d, int i, const char *what, int k, float *out,
                          struct loom_error *err)
{
    float f;
    if (!loom_json_is_number(d, i))
        return k < 0 ? loom_error_set(err, LOOM_EINVAL, "%s is not a number", what)
                     : loom_error_set(err, LOOM_EINVAL, "%s[%d] is not a number", what, k);
    if (loom_json_to_float(d, i, &f) != LOOM_OK || !isfinite(f))
        return k < 0 ? loom_error_set(err, LOOM_EINVAL, "%s is out of float range", what)
                     : loom_error_set(err, LOOM_EINVAL, "%s[%d] is out of float range", what, k);
    *out = f;
    return LOOM_OK;
}

/* An array of exactly n numbers into out[0..n). */
static loom_err numbers(const struct loom_json_doc *d, int a, size_t n, const char *what,
                        float *out, struct loom_error *err)
{
    if (!loom_json_is_array(d, a))
        return loom_error_set(err, LOOM_EINVAL, "%s is not an array", what);
    if ((size_t)loom_json_size(d, a) != n)
        return loom_error_set(err, LOOM_EINVAL, "%s has %d values, expected %zu", what,
                              loom_json_size(d, a), n);
    int k = 0;
    loom_json_foreach (d, a, i) {
        loom_err e = finite_at(d, i, what, k, &out[k], err);
        if (e)
            return e;
        k++;
    }
    return LOOM_OK;
}

static loom_err load_linear(const struct loom_json_doc *d, const struct loom_model_limits *lim,
                            struct linear *m, struct loom_arena *arena, struct loom_error *err)
{
    loom_err e;
    if (!loom_json_is_object(d, 0))
        return loom_error_set(err, LOOM_EINVAL, "the model is not a JSON object");
    loom_json_foreach (d, 0, k) {
        bool known = false;
        for (size_t i = 0; i < LOOM_ARRAY_SIZE(lin_keys); i++)
            known |= loom_json_str_eq(d, k, loom_str_cstr(lin_keys[i]));
        if (!known) {
            struct loom_str key = loom_json_slice(d, k);
            return loom_error_set(err, LOOM_EINVAL, "unknown key \"%.*s\"",
                                  (int)LOOM_MIN(key.len, 64), key.ptr);
        }
    }
    int kind = loom_json_obj_get(d, 0, "loom_model");
    if (kind < 0 || !loom_json_str_eq(d, kind, LOOM_STR("linear")))
        return loom_error_set(err, LOOM_EINVAL, "\"loom_model\": \"linear\" is missing");
    int ver = loom_json_obj_get(d, 0, "version");
    int64_t v;
    if (ver < 0 || loom_json_to_i64(d, ver, &v) != LOOM_OK || v != 1)
        return loom_error_set(err, LOOM_EUNSUPPORTED, "version must be 1");

    int obj = loom_json_obj_get(d, 0, "objective");
    if (obj < 0 || !loom_json_is_string(d, obj))
        return loom_error_set(err, LOOM_EINVAL, "objective is missing");
    bool multi = false;
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(lin_objectives); i++)
        if (loom_json_str_eq(d, obj, loom_str_cstr(lin_objectives[i].name))) {
            m->objective = lin_objectives[i].name;
            m->transform = lin_objectives[i].transform;
            multi = lin_objectives[i].multi;
        }
    if (!m->objective) {
        struct loom_str o = loom_json_slice(d, obj);
        return loom_error_set(err, LOOM_EUNSUPPORTED,
                              "objective %.*s is not supported (reg:squarederror, "
                              "binary:logistic, multi:softprob, multi:softmax)",
                              (int)LOOM_MIN(o.len, 64), o.ptr);
    }

    int nf = loom_json_obj_get(d, 0, "num_features");
    if (nf < 0 || loom_json_to_i64(d, nf, &v) != LOOM_OK || v < 1)
        return loom_error_set(err, LOOM_EINVAL, "num_features must be a positive integer");
    if (v > lim->max_features)
        return loom_error_set(err, LOOM_ETOOBIG, "num_features %lld is more than the limit of %u",
                              (long long)v, lim->max_features);
    m->nfeat = (uint32_t)v;

    /* weights: F numbers (one output), or K arrays of F numbers (K outputs). */
    int w = loom_json_obj_get(d, 0, "weights");
    if (w < 0 || !loom_json_is_array(d, w) || loom_json_size(d, w) == 0)
        return loom_error_set(err, LOOM_EINVAL, "weights must be a non-empty array");
    int first = w + 1;
    bool matrix = loom_json_is_array(d, first);
    size_t ng = matrix ? (size_t)loom_json_size(d, w) : 1;
    if (multi && (!matrix || ng < 2))
        return loom_error_set(err, LOOM_EINVAL,
                              "objective %s needs weights as one array per class (2 or more)",
                              m->objective);
    if (!multi && ng != 1)
        return loom_error_set(err, LOOM_EINVAL, "objective %s needs one row of weights, not %zu",
                              m->objective, ng);
    if (ng > lim->max_groups)
        return loom_error_set(err, LOOM_ETOOBIG, "%zu classes is more than the limit of %u", ng,
                              lim->max_groups);
    m->ngroups = (uint32_t)ng;
    m->weights = loom_malloc(loom_mul_size(ng, loom_mul_size(m->nfeat, sizeof(float))));
    m->bias = loom_malloc(ng * sizeof(float));
    if (!matrix) {
        if ((e = numbers(d, w, m->nfeat, "weights", m->weights, err)))
            return e;
    } else {
        size_t k = 0;
        loom_json_foreach (d, w, row) {
            char what[32];
            snprintf(what, sizeof(what), "weights[%zu]", k);
            if ((e = numbers(d, row, m->nfeat, what, m->weights + k * m->nfeat, err)))
                return e;
            k++;
        }
    }

    /* bias: a number for one output, an array of K numbers for K. */
    int b = loom_json_obj_get(d, 0, "bias");
    if (b < 0)
        return loom_error_set(err, LOOM_EINVAL, "bias is missing");
    if (loom_json_is_array(d, b)) {
        if ((e = numbers(d, b, ng, "bias", m->bias, err)))
            return e;
    } else if (ng != 1) {
        return loom_error_set(err, LOOM_EINVAL, "bias must be an array of %zu numbers", ng);
    } else if ((e = finite_at(d, b, "bias", -1, m->bias, err))) {
        return e;
    }

    int names = loom_json_obj_get(d, 0, "feature_names");
    if (names < 0)
        return LOOM_OK;
    if (!loom_json_is_array(d, names) || (uint32_t)loom_json_size(d, names) != m->nfeat)
        return loom_error_set(err, LOOM_EINVAL, "feature_names must be an array of %u strings",
                              m->nfeat);
    size_t total = 0;
    loom_json_foreach (d, names, i) {
        struct loom_str s;
        if (loom_json_unescape(d, i, arena, &s) != LOOM_OK)
            return loom_error_set(err, LOOM_EINVAL, "feature_names must be an array of %u strings",
                                  m->nfeat);
        total += s.len + 1;
    }
    m->feature_names = loom_malloc(loom_mul_size(m->nfeat, sizeof(char *)));
    m->names_blob = loom_malloc(total);
    char *p = m->names_blob;
    size_t k = 0;
    loom_json_foreach (d, names, i) {
        struct loom_str s;
        loom_json_unescape(d, i, arena, &s);
        memcpy(p, s.ptr, s.len);
        p[s.len] = '\0';
        m->feature_names[k++] = p;
        p += s.len + 1;
    }
    return LOOM_OK;
}

static loom_err linear_load(const char *data, size_t len, const struct loom_model_limits *lim,
                            struct loom_model_info *info, void **state, struct loom_error *err)
{
    struct loom_arena arena;
    struct loom_json_doc doc;
    const struct loom_json_limits jl = {
        .max_depth = 8,
        .max_tokens = INT32_MAX,
        .max_bytes = lim->max_bytes,
    };
    loom_arena_init(&arena, 1 << 14);
    loom_err e = loom_json_parse(data, len, &jl, &arena, &doc, err);
    if (e) {
        loom_error_prefix(err, "model JSON");
        goto out;
    }
    struct linear *m = loom_new(struct linear);
    if ((e = load_linear(&doc, lim, m, &arena, err))) {
        linear_free(m);
        goto out;
    }
    info->objective = m->objective;
    info->num_features = m->nfeat;
    info->num_groups = m->ngroups;
    info->num_outputs = m->transform == LT_SOFTMAX ? 1 : m->ngroups;
    info->feature_names = (const char *const *)m->feature_names;
    *state = m;
out:
    loom_arena_release(&arena);
    return e;
}

const struct loom_model_backend loom_model_backend_linear = {
    .name = "linear",
    .load = linear_load,
    .predict = linear_predict,
    .predict_margin = linear_predict_margin,
    .free = linear_free,
};
