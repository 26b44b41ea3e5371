/* SPDX-License-Identifier: Apache-2.0 */
/*
 * loom's XGBoost evaluator against libxgboost itself. Each case trains a model through the
 * XGBoost C API on synthetic data with about 15% missing values and some all-missing rows,
 * saves it to a JSON buffer, loads that into loom, and compares loom's predictions and margins
 * on held-out rows (with missing values, infinities and, for categorical models, negative,
 * fractional, unseen and huge categories) with XGBoosterPredictFromDense: every value must be
 * bit-identical. Cases cover every objective loom supports, dart boosters, multi-class with
 * num_parallel_tree > 1, and categorical splits (one-hot and partition). Built only when CMake
 * finds libxgboost.
 */
#include "check.h"

#include <loom/core.h>
#include <loom/model.h>

#include <xgboost/c_api.h>

#include <math.h>
#include <stdint.h>

#define XGB_CHECK(call)                                                                       \
    do {                                                                                      \
        if ((call) != 0) {                                                                    \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, XGBGetLastError()); \
            exit(1);                                                                          \
        }                                                                                     \
    } while (0)

enum { NF = 8, NTRAIN = 600, NTEST = 300, NCLASS = 4 };

enum label {
    L_BINARY,   /* 0 or 1 */
    L_REAL,     /* any real */
    L_UNIT,     /* in [0, 1] */
    L_COUNT,    /* 0, 1, 2, ... */
    L_POSITIVE, /* > 0 */
    L_SURVIVAL, /* > 0 observed, < 0 censored */
    L_CLASS,    /* 0 .. NCLASS - 1 */
};

struct ref_case {
    const char *name;
    enum label label;
    int rounds;
    bool categorical; /* features 0 and 1 are categorical */
    bool groups;      /* ranking: query groups of 20 rows */
    const char *params[12][2];
};

/* The xgboost parameters common to every case come first; a case's own may override them. */
static const struct ref_case cases[] = {
    { "binary:logistic", L_BINARY, 60, false, false, { { "objective", "binary:logistic" } } },
    { "binary:logistic base 0.3",
      L_BINARY,
      40,
      false,
      false,
      { { "objective", "binary:logistic" }, { "base_score", "0.3" } } },
    { "binary:logitraw",
      L_BINARY,
      40,
      false,
      false,
      { { "objective", "binary:logitraw" }, { "base_score", "0.3" } } },
    { "binary:hinge", L_BINARY, 40, false, false, { { "objective", "binary:hinge" } } },
    { "reg:squarederror", L_REAL, 60, false, false, { { "objective", "reg:squarederror" } } },
    { "reg:squarederror base 1234.567 depth 8",
      L_REAL,
      80,
      false,
      false,
      { { "objective", "reg:squarederror" }, { "base_score", "1234.567" }, { "max_depth", "8" } } },
    { "reg:squarederror approx depth 10",
      L_REAL,
      30,
      false,
      false,
      { { "objective", "reg:squarederror" }, { "tree_method", "approx" }, { "max_depth", "10" } } },
    { "reg:squaredlogerror",
      L_POSITIVE,
      40,
      false,
      false,
      { { "objective", "reg:squaredlogerror" } } },
    { "reg:pseudohubererror",
      L_REAL,
      40,
      false,
      false,
      { { "objective", "reg:pseudohubererror" } } },
    { "reg:absoluteerror", L_REAL, 40, false, false, { { "objective", "reg:absoluteerror" } } },
    { "reg:logistic",
      L_UNIT,
      40,
      false,
      false,
      { { "objective", "reg:logistic" }, { "base_score", "0.2" } } },
    { "count:poisson", L_COUNT, 40, false, false, { { "objective", "count:poisson" } } },
    { "reg:gamma",
      L_POSITIVE,
      40,
      false,
      false,
      { { "objective", "reg:gamma" }, { "base_score", "2.5" } } },
    { "reg:tweedie",
      L_POSITIVE,
      40,
      false,
      false,
      { { "objective", "reg:tweedie" }, { "tweedie_variance_power", "1.3" } } },
    { "survival:cox", L_SURVIVAL, 30, false, false, { { "objective", "survival:cox" } } },
    { "rank:pairwise", L_REAL, 30, false, true, { { "objective", "rank:pairwise" } } },
    { "multi:softprob",
      L_CLASS,
      30,
      false,
      false,
      { { "objective", "multi:softprob" }, { "num_class", "4" } } },
    { "multi:softmax",
      L_CLASS,
      30,
      false,
      false,
      { { "objective", "multi:softmax" }, { "num_class", "4" } } },
    { "multi:softprob num_parallel_tree 3",
      L_CLASS,
      15,
      false,
      false,
      { { "objective", "multi:softprob" },
        { "num_class", "4" },
        { "num_parallel_tree", "3" },
        { "subsample", "0.8" },
        { "colsample_bynode", "0.7" } } },
    { "dart binary:logistic",
      L_BINARY,
      40,
      false,
      false,
      { { "objective", "binary:logistic" },
        { "booster", "dart" },
        { "rate_drop", "0.2" },
        { "skip_drop", "0.1" } } },
    { "dart reg:squarederror forest",
      L_REAL,
      40,
      false,
      false,
      { { "objective", "reg:squarederror" },
        { "booster", "dart" },
        { "rate_drop", "0.3" },
        { "normalize_type", "forest" },
        { "base_score", "0.5" } } },
    { "dart multi:softprob",
      L_CLASS,
      20,
      false,
      false,
      { { "objective", "multi:softprob" },
        { "num_class", "4" },
        { "booster", "dart" },
        { "rate_drop", "0.2" } } },
    { "categorical reg:squarederror",
      L_REAL,
      40,
      true,
      false,
      { { "objective", "reg:squarederror" },
        { "tree_method", "hist" },
        { "max_cat_to_onehot", "1" } } },
    { "categorical one-hot binary:logistic",
      L_BINARY,
      40,
      true,
      false,
      { { "objective", "binary:logistic" },
        { "tree_method", "hist" },
        { "max_cat_to_onehot", "16" } } },
    { "categorical multi:softprob",
      L_CLASS,
      20,
      true,
      false,
      { { "objective", "multi:softprob" },
        { "num_class", "4" },
        { "tree_method", "approx" },
        { "max_cat_to_onehot", "1" } } },
};

static uint64_t rng_state;

static double uniform(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

/*
 * n rows of NF features: normal-ish reals, or for categorical cases small integer categories in
 * features 0 (12 levels) and 1 (5 levels). About 15% of values are missing and every 50th row
 * is missing entirely. `test` rows also get infinities and, for categories, values XGBoost
 * treats as "no category": negative, fractional, unseen and beyond 2^24.
 */
static void make_rows(float *x, size_t n, bool categorical, bool test)
{
    static const float odd_cats[] = { -1.0f,       -0.5f, 0.99f,    3.5f,      40.0f,
                                      16777216.0f, 1e30f, INFINITY, -INFINITY, -0.0f };
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < NF; j++) {
            float v = (float)(uniform() * 4.0 - 2.0 + uniform() - 0.5);
            if (categorical && j < 2)
                v = (float)(int)(uniform() * (j == 0 ? 12 : 5));
            if (test && uniform() < 0.04)
                v = categorical && j < 2 ? odd_cats[(size_t)(uniform() * LOOM_ARRAY_SIZE(odd_cats))]
                                         : (uniform() < 0.5 ? INFINITY : -INFINITY);
            if (uniform() < 0.15 || i % 50 == 7)
                v = NAN;
            x[i * NF + j] = v;
        }
    }
}

static float label_for(const float *row, enum label kind, bool categorical)
{
    double s = 0;
    for (size_t j = 0; j < NF; j++) {
        double v = isnan(row[j]) ? 0.3 : row[j];
        if (categorical && j < 2)
            v = isnan(row[j]) ? 0 : ((int)row[j] % 3) - 1.0;
        s += v * (double)(j % 3 == 0 ? 1.0 : j % 3 == 1 ? -0.7 : 0.4);
    }
    s += 0.3 * (uniform() - 0.5);
    switch (kind) {
    case L_BINARY:
        return s > 0.2 ? 1.0f : 0.0f;
    case L_REAL:
        return (float)(3 * s + 1);
    case L_UNIT:
        return (float)(1 / (1 + exp(-s)));
    case L_COUNT:
        return (float)floor(exp(0.5 * s) * 2 * uniform());
    case L_POSITIVE:
        return (float)(exp(0.4 * s) + 0.01);
    case L_SURVIVAL: {
        float t = (float)(exp(0.4 * s) + 0.01);
        return uniform() < 0.2 ? -t : t;
    }
    case L_CLASS:
        return (float)(s < -1.0 ? 0 : s < 0 ? 1 : s < 1 ? 2 : 3);
    }
    return 0;
}

static const float *xgb_predict(BoosterHandle b, const float *x, size_t n, int type, bst_ulong *len)
{
    char iface[256], config[256];
    snprintf(iface, sizeof(iface),
             "{\"data\": [%llu, true], \"shape\": [%zu, %d], \"strides\": null, "
             "\"typestr\": \"<f4\", \"version\": 3}",
             (unsigned long long)(uintptr_t)x, n, NF);
    snprintf(config, sizeof(config),
             "{\"type\": %d, \"training\": false, \"iteration_begin\": 0, \"iteration_end\": 0, "
             "\"strict_shape\": false, \"missing\": NaN, \"cache_id\": 0}",
             type);
    const bst_ulong *shape;
    bst_ulong dim;
    const float *out;
    XGB_CHECK(XGBoosterPredictFromDense(b, iface, config, NULL, &shape, &dim, &out));
    *len = 1;
    for (bst_ulong k = 0; k < dim; k++)
        *len *= shape[k];
    return out;
}

/* Compare n values bit for bit; returns the number that differ and updates *maxdiff. */
static size_t compare(const char *what, const char *name, const float *ours, const float *theirs,
                      size_t n, double *maxdiff)
{
    size_t differ = 0;
    for (size_t i = 0; i < n; i++) {
        if (memcmp(&ours[i], &theirs[i], sizeof(float)) == 0)
            continue;
        double d = fabs((double)ours[i] - (double)theirs[i]);
        *maxdiff = isnan(d) ? INFINITY : LOOM_MAX(*maxdiff, d);
        if (differ++ < 3)
            fprintf(stderr, "  %s %s [%zu]: loom %.9g xgboost %.9g\n", name, what, i,
                    (double)ours[i], (double)theirs[i]);
    }
    return differ;
}

static int exact_cases;

static void run_case(const struct ref_case *c)
{
    static float xtrain[NTRAIN * NF], ytrain[NTRAIN], xtest[NTEST * NF];
    rng_state = 0x853c49e6748fea9bull ^ (uint64_t)(uintptr_t)(c - cases) * 0x9e3779b9u;
    make_rows(xtrain, NTRAIN, c->categorical, false);
    for (size_t i = 0; i < NTRAIN; i++)
        ytrain[i] = label_for(xtrain + i * NF, c->label, c->categorical);
    make_rows(xtest, NTEST, c->categorical, true);

    DMatrixHandle dtrain;
    BoosterHandle b;
    XGB_CHECK(XGDMatrixCreateFromMat(xtrain, NTRAIN, NF, NAN, &dtrain));
    XGB_CHECK(XGDMatrixSetFloatInfo(dtrain, "label", ytrain, NTRAIN));
    if (c->categorical) {
        const char *types[NF] = { "c", "c", "q", "q", "q", "q", "q", "q" };
        XGB_CHECK(XGDMatrixSetStrFeatureInfo(dtrain, "feature_type", types, NF));
    }
    if (c->groups) {
        unsigned groups[NTRAIN / 20];
        for (size_t g = 0; g < LOOM_ARRAY_SIZE(groups); g++)
            groups[g] = 20;
        XGB_CHECK(XGDMatrixSetUIntInfo(dtrain, "group", groups, LOOM_ARRAY_SIZE(groups)));
    }
    XGB_CHECK(XGBoosterCreate(&dtrain, 1, &b));
    XGB_CHECK(XGBoosterSetParam(b, "nthread", "1"));
    XGB_CHECK(XGBoosterSetParam(b, "seed", "7"));
    XGB_CHECK(XGBoosterSetParam(b, "max_depth", "6"));
    XGB_CHECK(XGBoosterSetParam(b, "verbosity", "0"));
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(c->params) && c->params[k][0]; k++)
        XGB_CHECK(XGBoosterSetParam(b, c->params[k][0], c->params[k][1]));
    for (int it = 0; it < c->rounds; it++)
        XGB_CHECK(XGBoosterUpdateOneIter(b, it, dtrain));

    bst_ulong jlen;
    const char *json;
    XGB_CHECK(XGBoosterSaveModelToBuffer(b, "{\"format\": \"json\"}", &jlen, &json));
    struct loom_model *m = NULL;
    struct loom_error err = { 0 };
    loom_err code = loom_model_load("xgboost", json, (size_t)jlen, NULL, &m, &err);
    CHECK_INT(code, LOOM_OK);
    if (code) {
        fprintf(stderr, "  %s: %s\n", c->name, err.msg);
        goto out;
    }
    const struct loom_model_info *info = loom_model_info(m);
    CHECK_STR(info->objective, c->params[0][1]);
    size_t splits = 0, partitions = 0;
    if (c->categorical) {
        /* The model must really split on categories, some on more than one at once. */
        static const char key[] = "\"categories_sizes\":[";
        for (const char *p = json; (p = strstr(p, key)) != NULL;) {
            p += sizeof(key) - 1;
            for (;;) {
                char *end;
                long v = strtol(p, &end, 10);
                if (end == p)
                    break;
                splits++;
                partitions += v > 1;
                p = *end == ',' ? end + 1 : end;
            }
        }
        CHECK(splits > 0);
        if (strstr(c->name, "one-hot") == NULL)
            CHECK(partitions > 0);
    }
    CHECK_UINT(info->num_features, NF);

    size_t no = info->num_outputs, ng = info->num_groups;
    float *ours = loom_malloc(NTEST * ng * sizeof(float));
    float *one = loom_malloc(ng * sizeof(float));
    double maxdiff = 0;
    size_t differ = 0;
    bst_ulong len;

    const float *theirs = xgb_predict(b, xtest, NTEST, 0, &len);
    CHECK_UINT(len, NTEST * no);
    loom_model_predict(m, xtest, NTEST, ours);
    differ += compare("prediction", c->name, ours, theirs, NTEST * no, &maxdiff);
    /* One row at a time takes the other kernel: it must agree as well. */
    for (size_t i = 0; i < NTEST; i++) {
        loom_model_predict(m, xtest + i * NF, 1, one);
        differ += compare("single-row prediction", c->name, one, theirs + i * no, no, &maxdiff);
    }

    theirs = xgb_predict(b, xtest, NTEST, 1, &len);
    CHECK_UINT(len, NTEST * ng);
    loom_model_predict_margin(m, xtest, NTEST, ours);
    differ += compare("margin", c->name, ours, theirs, NTEST * ng, &maxdiff);
    for (size_t i = 0; i < NTEST; i += 7) {
        loom_model_predict_margin(m, xtest + i * NF, 1, one);
        differ += compare("single-row margin", c->name, one, theirs + i * ng, ng, &maxdiff);
    }

    CHECK(maxdiff <= 1e-6);
    CHECK_UINT(differ, 0);
    exact_cases += differ == 0;
    fprintf(stderr, "  %-40s %3zu trees, depth %2zu: %s (max abs diff %.3g)\n", c->name,
            info->num_trees, info->max_depth, differ ? "DIFFERENT" : "bit-identical", maxdiff);
    if (c->categorical)
        fprintf(stderr, "  %-40s %zu categorical splits, %zu on several categories\n", "", splits,
                partitions);
    free(ours);
    free(one);
    loom_model_free(m);
out:
    XGB_CHECK(XGBoosterFree(b));
    XGB_CHECK(XGDMatrixFree(dtrain));
}

static void test_reference(void)
{
    int major, minor, patch;
    XGBoostVersion(&major, &minor, &patch);
    fprintf(stderr, "  libxgboost %d.%d.%d\n", major, minor, patch);
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(cases); k++)
        run_case(&cases[k]);
    fprintf(stderr, "  %d of %zu models bit-identical\n", exact_cases, LOOM_ARRAY_SIZE(cases));
}

/* gblinear models are refused with a clear message, not mis-evaluated. */
static void test_gblinear_rejected(void)
{
    static float x[NTRAIN * NF], y[NTRAIN];
    rng_state = 42;
    make_rows(x, NTRAIN, false, false);
    for (size_t i = 0; i < NTRAIN; i++)
        y[i] = label_for(x + i * NF, L_REAL, false);
    DMatrixHandle d;
    BoosterHandle b;
    XGB_CHECK(XGDMatrixCreateFromMat(x, NTRAIN, NF, NAN, &d));
    XGB_CHECK(XGDMatrixSetFloatInfo(d, "label", y, NTRAIN));
    XGB_CHECK(XGBoosterCreate(&d, 1, &b));
    XGB_CHECK(XGBoosterSetParam(b, "booster", "gblinear"));
    XGB_CHECK(XGBoosterSetParam(b, "nthread", "1"));
    for (int it = 0; it < 3; it++)
        XGB_CHECK(XGBoosterUpdateOneIter(b, it, d));
    bst_ulong jlen;
    const char *json;
    XGB_CHECK(XGBoosterSaveModelToBuffer(b, "{\"format\": \"json\"}", &jlen, &json));
    struct loom_model *m = NULL;
    struct loom_error err = { 0 };
    CHECK_INT(loom_model_load("xgboost", json, (size_t)jlen, NULL, &m, &err), LOOM_EUNSUPPORTED);
    CHECK_STR(err.msg, "booster gblinear is not supported (only gbtree and dart)");
    CHECK(m == NULL);
    XGB_CHECK(XGBoosterFree(b));
    XGB_CHECK(XGDMatrixFree(d));
}

int main(void)
{
    RUN(test_reference);
    RUN(test_gblinear_rejected);
    return check_report();
}
