/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests for the model runtime: hand-written XGBoost trees with known answers (missing
 * values both ways, infinities, thresholds hit exactly, categorical splits with listed,
 * unlisted, negative, fractional and huge categories), every transform against its margin,
 * dart weights, multi-class groups, the linear backend and its format, a catalogue of broken and
 * hostile models with the exact messages they must produce, limits, loading from files, and
 * random models checked against a naive evaluator written here, also from four threads at once.
 * Inputs that must fail are loaded from exactly-sized heap copies so that AddressSanitizer
 * reports any read past the end.
 */
#include "check.h"

#include <loom/core.h>
#include <loom/model.h>

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <unistd.h>

/* ---- helpers ---------------------------------------------------------------------------- */

/* Load from an exactly-sized heap copy; *out is NULL on failure. */
static loom_err load(const char *backend, const char *json, const struct loom_model_limits *lim,
                     struct loom_model **out, struct loom_error *e)
{
    size_t n = strlen(json);
    char *copy = malloc(n ? n : 1);
    memcpy(copy, json, n);
    *out = NULL;
    loom_err err = loom_model_load(backend, copy, n, lim, out, e);
    free(copy);
    return err;
}

/* `base` with the first `from` replaced by `to` (caller frees); aborts the test if absent. */
static char *mutate(const char *base, const char *from, const char *to)
{
    const char *at = strstr(base, from);
    if (!at) {
        fprintf(stderr, "mutate: \"%s\" not found\n", from);
        abort();
    }
    size_t a = (size_t)(at - base), fl = strlen(from), tl = strlen(to), bl = strlen(base);
    char *s = malloc(bl - fl + tl + 1);
    memcpy(s, base, a);
    memcpy(s + a, to, tl);
    memcpy(s + a + tl, at + fl, bl - a - fl + 1);
    return s;
}

static bool same_bits(float a, float b)
{
    return memcmp(&a, &b, sizeof(a)) == 0;
}

#define CHECK_BITS(a, b)                                                           \
    do {                                                                           \
        check_count++;                                                             \
        float a_ = (a), b_ = (b);                                                  \
        if (!same_bits(a_, b_))                                                    \
            CHECK_FAIL_("%s == %s: %.9g != %.9g", #a, #b, (double)a_, (double)b_); \
    } while (0)

/* ---- hand-written XGBoost models -------------------------------------------------------- */

/*
 * Tree A (numeric): node 0 splits a < 0.5 (missing goes left), node 1 splits b < 2 (missing
 * goes right); leaves: node 2 = 0.25, node 3 = -1, node 4 = 1.5.
 */
#define TREE_A                                                                                  \
    "{\"base_weights\":[0E0,0E0,0E0,0E0,0E0],\"categories\":[],\"categories_nodes\":[],"        \
    "\"categories_segments\":[],\"categories_sizes\":[],\"default_left\":[1,0,0,0,0],\"id\":0," \
    "\"left_children\":[1,3,-1,-1,-1],\"loss_changes\":[1E0,1E0,0E0,0E0,0E0],"                  \
    "\"parents\":[2147483647,0,0,1,1],\"right_children\":[2,4,-1,-1,-1],"                       \
    "\"split_conditions\":[5E-1,2E0,2.5E-1,-1E0,1.5E0],\"split_indices\":[0,1,0,0,0],"          \
    "\"split_type\":[0,0,0,0,0],\"sum_hessian\":[1E0,1E0,1E0,1E0,1E0],"                         \
    "\"tree_param\":{\"num_deleted\":\"0\",\"num_feature\":\"3\",\"num_nodes\":\"5\","          \
    "\"size_leaf_vector\":\"0\"}}"

/* Tree B (categorical): node 0 sends c in {1, 3} right (listed unsorted), missing left;
 * leaves: node 1 = 10, node 2 = 20. Its split condition is the bare NaN XGBoost writes. */
#define TREE_B                                                                                \
    "{\"categories\":[3,1],\"categories_nodes\":[0],\"categories_segments\":[0],"             \
    "\"categories_sizes\":[2],\"default_left\":[1,0,0],\"id\":1,\"left_children\":[1,-1,-1]," \
    "\"right_children\":[2,-1,-1],\"split_conditions\":[NaN,1E1,2E1],"                        \
    "\"split_indices\":[2,0,0],\"split_type\":[1,0,0],"                                       \
    "\"tree_param\":{\"num_nodes\":\"3\",\"size_leaf_vector\":\"0\"}}"

#define GBTREE(trees, info, n)                                                              \
    "\"gradient_booster\":{\"model\":{\"gbtree_model_param\":{\"num_parallel_tree\":\"1\"," \
    "\"num_trees\":\"" n "\",\"size_leaf_vector\":\"0\"},\"tree_info\":" info ","           \
    "\"trees\":" trees "},\"name\":\"gbtree\"}"

#define MODEL(objective, num_class, base_score, booster)                                     \
    "{\"learner\":{\"attributes\":{},\"feature_names\":[\"a\",\"b\",\"c\"],"                 \
    "\"feature_types\":[]," booster ",\"learner_model_param\":{\"base_score\":\"" base_score \
    "\",\"boost_from_average\":\"1\",\"num_class\":\"" num_class "\",\"num_feature\":\"3\"," \
    "\"num_target\":\"1\"},\"objective\":{\"name\":\"" objective "\",\"reg_loss_param\":"    \
    "{\"scale_pos_weight\":\"1\"}}},\"version\":[1,7,4]}"

static const char reg_model[] =
    MODEL("reg:squarederror", "0", "5E-1", GBTREE("[" TREE_A "," TREE_B "]", "[0,0]", "2"));

enum { NROWS = 12 };

/* Rows for the two trees, and reg_model's predictions for them (all exact in float). */
static const float rows[NROWS][3] = {
    { 0, 0, NAN },                      /* A: -1    B: missing -> left 10 */
    { 0, 3, 1 },                        /* A: 1.5   B: 1 listed -> 20 */
    { NAN, 3, 3.7f },                   /* A: missing left, b >= 2 -> 1.5   B: 3.7 is 3 -> 20 */
    { 0, NAN, 2 },                      /* A: b missing -> right 1.5   B: 2 unlisted -> 10 */
    { 0.5f, 0, -0.5f },                 /* A: 0.5 is not < 0.5 -> 0.25   B: negative -> 10 */
    { INFINITY, 0, 1e30f },             /* A: 0.25   B: huge -> 10 */
    { -INFINITY, 0, 16777217.0f },      /* A: -1   B: >= 2^24 -> 10 */
    { 0.49999997f, 1.9999999f, -0.0f }, /* A: -1   B: -0 is category 0, unlisted -> 10 */
    { NAN, NAN, NAN },                  /* A: left, then right: 1.5   B: 10 */
    { 1, 5, 3 },                        /* A: 0.25   B: 20 */
    { 0, 2, INFINITY },                 /* A: b = 2 -> right 1.5   B: inf -> 10 */
    { 0, -1, 0.99f },                   /* A: -1   B: 0.99 is 0 -> 10 */
};
static const float reg_expected[NROWS] = { 9.5f, 22.0f, 22.0f, 12.0f,  10.75f, 10.75f,
                                           9.5f, 9.5f,  12.0f, 20.75f, 12.0f,  9.5f };

static void test_xgb_known_answers(void)
{
    struct loom_model *m;
    struct loom_error e = { 0 };
    CHECK_INT(load("xgboost", reg_model, NULL, &m, &e), LOOM_OK);
    if (!m) {
        fprintf(stderr, "  %s\n", e.msg);
        return;
    }
    const struct loom_model_info *info = loom_model_info(m);
    CHECK_STR(info->backend, "xgboost");
    CHECK_STR(info->objective, "reg:squarederror");
    CHECK_UINT(info->num_features, 3);
    CHECK_UINT(info->num_outputs, 1);
    CHECK_UINT(info->num_groups, 1);
    CHECK_UINT(info->num_trees, 2);
    CHECK_UINT(info->max_depth, 2);
    CHECK(info->feature_names != NULL);
    if (info->feature_names) {
        CHECK_STR(info->feature_names[0], "a");
        CHECK_STR(info->feature_names[2], "c");
    }
    float out[NROWS], margin[NROWS], one;
    loom_model_predict(m, &rows[0][0], NROWS, out);
    loom_model_predict_margin(m, &rows[0][0], NROWS, margin);
    for (int r = 0; r < NROWS; r++) {
        CHECK_BITS(out[r], reg_expected[r]);
        CHECK_BITS(margin[r], reg_expected[r]);
        loom_model_predict(m, rows[r], 1, &one);
        CHECK_BITS(one, reg_expected[r]);
    }
    /* Batches of every size give the same answers (lane groups and their remainders). */
    for (size_t n = 1; n <= NROWS; n++) {
        float part[NROWS];
        loom_model_predict(m, &rows[NROWS - n][0], n, part);
        for (size_t r = 0; r < n; r++)
            CHECK_BITS(part[r], reg_expected[NROWS - n + r]);
    }
    /* A batch long enough for the block kernel (lanes of 16 rows and a remainder). */
    enum { BIG = 5 * NROWS };
    float big[BIG][3], bigout[BIG];
    for (int r = 0; r < BIG; r++)
        memcpy(big[r], rows[r % NROWS], sizeof(big[r]));
    loom_model_predict(m, &big[0][0], BIG, bigout);
    for (int r = 0; r < BIG; r++)
        CHECK_BITS(bigout[r], reg_expected[r % NROWS]);
    loom_model_predict(m, &rows[0][0], 0, out); /* nothing to do */
    loom_model_free(m);
    loom_model_free(NULL);
}

/* The float sum XGBoost forms: base margin first, then each tree in order. */
static float tree_a(const float *x)
{
    if (isnan(x[0]) || x[0] < 0.5f)
        return isnan(x[1]) || !(x[1] < 2.0f) ? 1.5f : -1.0f;
    return 0.25f;
}

static float tree_b(const float *x)
{
    if (isnan(x[2]))
        return 10.0f;
    bool listed = x[2] >= 0 && x[2] < 16777216.0f && ((int)x[2] == 1 || (int)x[2] == 3);
    return listed ? 20.0f : 10.0f;
}

static void test_xgb_transforms(void)
{
    static const struct {
        const char *json;
        float base_margin;
        int kind; /* 0 identity, 1 sigmoid, 2 exp, 3 hinge */
    } cases[] = {
        { MODEL("binary:logistic", "0", "5E-1", GBTREE("[" TREE_A "," TREE_B "]", "[0,0]", "2")),
          0.0f, 1 },
        { MODEL("binary:logitraw", "0", "3E-1", GBTREE("[" TREE_A "," TREE_B "]", "[0,0]", "2")),
          0.3f, 0 },
        { MODEL("reg:logistic", "0", "2E-1", GBTREE("[" TREE_A "," TREE_B "]", "[0,0]", "2")), NAN,
          1 },
        { MODEL("count:poisson", "0", "2.5E0", GBTREE("[" TREE_A "," TREE_B "]", "[0,0]", "2")),
          NAN, 2 },
        { MODEL("binary:hinge", "0", "5E-1", GBTREE("[" TREE_A "," TREE_B "]", "[0,0]", "2")), 0.5f,
          3 },
        { MODEL("reg:absoluteerror", "0", "-7.935785E-2",
                GBTREE("[" TREE_A "," TREE_B "]", "[0,0]", "2")),
          -7.935785E-2f, 0 },
    };
    /* The base margins of the logit and log links, as XGBoost computes them in float. */
    float bs = 0.2f, logit = -logf(1.0f / bs - 1.0f), lg = logf(2.5f);
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(cases); k++) {
        struct loom_model *m;
        struct loom_error e = { 0 };
        CHECK_INT(load("xgboost", cases[k].json, NULL, &m, &e), LOOM_OK);
        if (!m) {
            fprintf(stderr, "  case %zu: %s\n", k, e.msg);
            continue;
        }
        float bm = k == 2 ? logit : k == 3 ? lg : cases[k].base_margin;
        float out[NROWS], margin[NROWS];
        loom_model_predict(m, &rows[0][0], NROWS, out);
        loom_model_predict_margin(m, &rows[0][0], NROWS, margin);
        for (int r = 0; r < NROWS; r++) {
            float want = bm;
            want += tree_a(rows[r]);
            want += tree_b(rows[r]);
            CHECK_BITS(margin[r], want);
            switch (cases[k].kind) {
            case 0:
                CHECK_BITS(out[r], want);
                break;
            case 1:
                CHECK_BITS(out[r], loom_model_sigmoid(want));
                CHECK_NEAR(out[r], 1 / (1 + exp(-(double)want)), 1e-7);
                break;
            case 2:
                CHECK_BITS(out[r], expf(want));
                break;
            case 3:
                CHECK_BITS(out[r], want > 0 ? 1.0f : 0.0f);
                break;
            }
        }
        loom_model_free(m);
    }
    /* XGBoost's sigmoid: clamped, never 0 or NaN, exactly 0.5 at 0. */
    CHECK_BITS(loom_model_sigmoid(0.0f), 0.5f);
    CHECK(loom_model_sigmoid(-1000.0f) > 0.0f);
    CHECK_BITS(loom_model_sigmoid(1000.0f), 1.0f);
    CHECK(loom_model_sigmoid(-88.7f) == loom_model_sigmoid(-100.0f));
}

static void test_xgb_multiclass(void)
{
    /* Trees A, B, A, B into groups 0, 1, 2, 1: group 1 adds B twice. */
    static const char json[] =
        MODEL("multi:softprob", "3", "5E-1",
              GBTREE("[" TREE_A "," TREE_B "," TREE_A "," TREE_B "]", "[0,1,2,1]", "4"));
    char *softmax = mutate(json, "multi:softprob", "multi:softmax");
    struct loom_model *m, *s;
    struct loom_error e = { 0 };
    CHECK_INT(load("xgboost", json, NULL, &m, &e), LOOM_OK);
    CHECK_INT(load("xgboost", softmax, NULL, &s, &e), LOOM_OK);
    free(softmax);
    if (!m || !s) {
        fprintf(stderr, "  %s\n", e.msg);
        loom_model_free(m);
        loom_model_free(s);
        return;
    }
    CHECK_UINT(loom_model_info(m)->num_outputs, 3);
    CHECK_UINT(loom_model_info(m)->num_groups, 3);
    CHECK_UINT(loom_model_info(s)->num_outputs, 1);
    CHECK_UINT(loom_model_info(s)->num_groups, 3);
    float prob[NROWS * 3], margin[NROWS * 3], cls[NROWS], one[3];
    loom_model_predict(m, &rows[0][0], NROWS, prob);
    loom_model_predict_margin(m, &rows[0][0], NROWS, margin);
    loom_model_predict(s, &rows[0][0], NROWS, cls);
    for (int r = 0; r < NROWS; r++) {
        float g[3] = { 0.5f, 0.5f, 0.5f };
        g[0] += tree_a(rows[r]);
        g[1] += tree_b(rows[r]);
        g[2] += tree_a(rows[r]);
        g[1] += tree_b(rows[r]);
        for (int k = 0; k < 3; k++)
            CHECK_BITS(margin[r * 3 + k], g[k]);
        /* softmax as XGBoost forms it: max subtracted, sum in double, one division each */
        float wmax = LOOM_MAX(LOOM_MAX(g[0], g[1]), g[2]);
        double sum = 0;
        float ex[3];
        for (int k = 0; k < 3; k++)
            sum += ex[k] = expf(g[k] - wmax);
        for (int k = 0; k < 3; k++)
            CHECK_BITS(prob[r * 3 + k], ex[k] / (float)sum);
        CHECK_NEAR(prob[r * 3] + prob[r * 3 + 1] + prob[r * 3 + 2], 1.0, 1e-6);
        int best = g[1] > g[0] ? 1 : 0;
        best = g[2] > g[best] ? 2 : best;
        CHECK_BITS(cls[r], (float)best);
        loom_model_predict(m, rows[r], 1, one);
        CHECK(memcmp(one, prob + r * 3, sizeof(one)) == 0);
    }
    /* Ties go to the first class, as std::max_element does. */
    float tie[3] = { 1, 3, 3 };
    CHECK_BITS(loom_model_argmax(tie, 3), 1.0f);
    loom_model_free(m);
    loom_model_free(s);
}

static void test_xgb_dart(void)
{
    static const char json[] =
        MODEL("reg:squarederror", "0", "5E-1",
              "\"gradient_booster\":{\"gbtree\":{\"model\":{\"gbtree_model_param\":"
              "{\"num_parallel_tree\":\"1\",\"num_trees\":\"2\",\"size_leaf_vector\":\"0\"},"
              "\"tree_info\":[0,0],\"trees\":[" TREE_A "," TREE_B "]},\"name\":\"gbtree\"},"
              "\"name\":\"dart\",\"weight_drop\":[3.3333334E-1,1.7E0]}");
    struct loom_model *m;
    struct loom_error e = { 0 };
    CHECK_INT(load("xgboost", json, NULL, &m, &e), LOOM_OK);
    if (!m) {
        fprintf(stderr, "  %s\n", e.msg);
        return;
    }
    float out[NROWS];
    loom_model_predict(m, &rows[0][0], NROWS, out);
    for (int r = 0; r < NROWS; r++) {
        /* XGBoosterPredictFromDense's rule for dart: ((bm + leaf) - bm) * weight per tree. */
        float bm = 0.5f, want = bm, wa = 3.3333334E-1f, wb = 1.7f;
        float la = tree_a(rows[r]), lb = tree_b(rows[r]);
        want += (float)((float)((float)(bm + la) - bm) * wa);
        want += (float)((float)((float)(bm + lb) - bm) * wb);
        CHECK_BITS(out[r], want);
    }
    loom_model_free(m);
}

/* ---- the catalogue of broken and hostile models ----------------------------------------- */

struct bad_model {
    const char *from, *to; /* a mutation of reg_model */
    loom_err code;
    const char *msg;
};

static void test_xgb_errors(void)
{
    static const struct bad_model cases[] = {
        { "\"left_children\":[1,3,-1,-1,-1]", "\"left_children\":[1,0,-1,-1,-1]", LOOM_EINVAL,
          "tree 0 node 1: left child 0 is not after the node" },
        { "\"right_children\":[2,4,-1,-1,-1]", "\"right_children\":[2,1,-1,-1,-1]", LOOM_EINVAL,
          "tree 0 node 1: right child 1 is not after the node" },
        { "\"right_children\":[2,4,-1,-1,-1]", "\"right_children\":[2,9,-1,-1,-1]", LOOM_EINVAL,
          "tree 0 node 1: right child 9 is out of range (num_nodes 5)" },
        { "\"left_children\":[1,3,-1,-1,-1]", "\"left_children\":[1,-1,-1,-1,-1]", LOOM_EINVAL,
          "tree 0 node 1: left child is -1 but right child is 4" },
        { "\"left_children\":[1,3,-1,-1,-1]", "\"left_children\":[1,-7,-1,-1,-1]", LOOM_EINVAL,
          "tree 0: left_children[1] = -7 is out of range [-1, 2147483647]" },
        { "\"right_children\":[2,4,-1,-1,-1]", "\"right_children\":[2,2,-1,-1,-1]", LOOM_EINVAL,
          "tree 0 node 1: node 2 already has parent 0" },
        { "\"left_children\":[1,3,-1,-1,-1]", "\"left_children\":[1,4,-1,-1,-1]", LOOM_EINVAL,
          "tree 0 node 1: node 4 already has parent 1" },
        { "\"split_indices\":[0,1,0,0,0]", "\"split_indices\":[0,3,0,0,0]", LOOM_EINVAL,
          "tree 0 node 1: split feature 3 is out of range (num_feature 3)" },
        { "\"split_indices\":[0,1,0,0,0]", "\"split_indices\":[-1,1,0,0,0]", LOOM_EINVAL,
          "tree 0 node 0: split feature -1 is out of range (num_feature 3)" },
        { "\"split_indices\":[0,1,0,0,0]", "\"split_indices\":[0,1.5,0,0,0]", LOOM_EINVAL,
          "tree 0: split_indices[1] is not an integer" },
        { "\"split_conditions\":[5E-1,2E0,2.5E-1,-1E0,1.5E0]",
          "\"split_conditions\":[5E-1,2E0,2.5E-1,-1E0]", LOOM_EINVAL,
          "tree 0: split_conditions has 4 elements, num_nodes is 5" },
        { "\"split_conditions\":[5E-1,2E0,2.5E-1,-1E0,1.5E0]",
          "\"split_conditions\":[5E-1,\"2\",2.5E-1,-1E0,1.5E0]", LOOM_EINVAL,
          "tree 0: split_conditions[1] is not a float number" },
        { "\"split_conditions\":[5E-1,2E0,2.5E-1,-1E0,1.5E0]",
          "\"split_conditions\":[5E-1,[2E0],2.5E-1,-1E0,1.5E0]", LOOM_EINVAL,
          "tree 0: split_conditions must hold only numbers" },
        { "\"default_left\":[1,0,0,0,0]", "\"default_left\":[2,0,0,0,0]", LOOM_EINVAL,
          "tree 0: default_left[0] = 2 is out of range [0, 1]" },
        { "\"default_left\":[1,0,0,0,0]", "\"default_left\":{}", LOOM_EINVAL,
          "tree 0: default_left is not an array" },
        { "\"split_type\":[0,0,0,0,0]", "\"split_type\":[0,2,0,0,0]", LOOM_EINVAL,
          "tree 0: split_type[1] = 2 is out of range [0, 1]" },
        { "\"left_children\":[1,3,-1,-1,-1],", "", LOOM_EINVAL,
          "tree 0: left_children is missing" },
        { "\"num_nodes\":\"5\"", "\"num_nodes\":\"0\"", LOOM_EINVAL,
          "tree 0: tree_param.num_nodes 0 is out of range [1, 2147483647]" },
        { "\"num_nodes\":\"5\"", "\"num_nodes\":\"6\"", LOOM_EINVAL,
          "tree 0: left_children has 5 elements, num_nodes is 6" },
        { "\"num_nodes\":\"5\"", "\"num_nodes\":\"five\"", LOOM_EINVAL,
          "tree 0: tree_param.num_nodes \"five\" is not an integer" },
        { "\"tree_param\":{\"num_deleted\"", "\"tree_parm\":{\"num_deleted\"", LOOM_EINVAL,
          "tree 0: tree_param is missing" },
        /* categorical splits */
        { "\"categories_sizes\":[2]", "\"categories_sizes\":[3]", LOOM_EINVAL,
          "tree 1: categories_sizes[0] = 3 is out of range [0, 2]" },
        { "\"categories_segments\":[0]", "\"categories_segments\":[1]", LOOM_EINVAL,
          "tree 1 node 0: categories [1, 3) run past the 2 categories" },
        { "\"categories\":[3,1]", "\"categories\":[3,-1]", LOOM_EINVAL,
          "tree 1: categories[1] = -1 is out of range [0, 2147483647]" },
        { "\"categories\":[3,1]", "\"categories\":[3,1e10]", LOOM_EINVAL,
          "tree 1: categories[1] = 10000000000 is out of range [0, 2147483647]" },
        { "\"categories_nodes\":[0]", "\"categories_nodes\":[1]", LOOM_EINVAL,
          "tree 1 node 1: has categories but is not a categorical split" },
        { "\"categories_nodes\":[0]", "\"categories_nodes\":[5]", LOOM_EINVAL,
          "tree 1: categories_nodes[0] = 5 is out of range [0, 2]" },
        { "\"categories_nodes\":[0],\"categories_segments\":[0],\"categories_sizes\":[2]",
          "\"categories_nodes\":[],\"categories_segments\":[],\"categories_sizes\":[]", LOOM_EINVAL,
          "tree 1 node 0: categorical split without categories" },
        { "\"categories_nodes\":[0],\"categories_segments\":[0]",
          "\"categories_nodes\":[0,0],\"categories_segments\":[0,0]", LOOM_EINVAL,
          "tree 1: categories_nodes, categories_segments and categories_sizes differ in length" },
        /* the ensemble */
        { "\"tree_info\":[0,0]", "\"tree_info\":[0,1]", LOOM_EINVAL,
          "tree_info[1] = 1 is not an output group in [0, 1)" },
        { "\"tree_info\":[0,0]", "\"tree_info\":[0]", LOOM_EINVAL,
          "tree_info must hold 2 integers, one per tree" },
        { "\"tree_info\":[0,0]", "\"tree_info\":[0,\"0\"]", LOOM_EINVAL,
          "tree_info[1] = 0 is not an output group in [0, 1)" },
        { "\"num_trees\":\"2\"", "\"num_trees\":\"3\"", LOOM_EINVAL,
          "trees has 2 trees, num_trees is 3" },
        { "\"trees\":[", "\"trees\":[7,", LOOM_EINVAL, "trees has 3 trees, num_trees is 2" },
        { "\"num_trees\":\"2\",\"size_leaf_vector\":\"0\"",
          "\"num_trees\":\"2\",\"size_leaf_vector\":\"2\"", LOOM_EUNSUPPORTED,
          "vector leaves (size_leaf_vector 2) are not supported" },
        { "\"num_nodes\":\"3\",\"size_leaf_vector\":\"0\"",
          "\"num_nodes\":\"3\",\"size_leaf_vector\":\"1\"", LOOM_EUNSUPPORTED,
          "tree 1: vector leaves (size_leaf_vector 1) are not supported" },
        { "\"name\":\"gbtree\"", "\"name\":\"gblinear\"", LOOM_EUNSUPPORTED,
          "booster gblinear is not supported (only gbtree and dart)" },
        { "\"name\":\"gbtree\"", "\"name\":\"forest\"", LOOM_EUNSUPPORTED,
          "booster forest is not supported (only gbtree and dart)" },
        { "\"name\":\"reg:squarederror\"", "\"name\":\"survival:aft\"", LOOM_EUNSUPPORTED,
          "objective survival:aft is not supported" },
        { "\"name\":\"reg:squarederror\"", "\"name\":\"rank:ndcg\"", LOOM_EUNSUPPORTED,
          "objective rank:ndcg is not supported" },
        { "\"name\":\"reg:squarederror\"", "\"name\":7", LOOM_EINVAL,
          "learner.objective.name is missing" },
        /* learner parameters */
        { "\"base_score\":\"5E-1\"", "\"base_score\":\"abc\"", LOOM_EINVAL,
          "learner.learner_model_param.base_score \"abc\" is not a finite number" },
        { "\"base_score\":\"5E-1\"", "\"base_score\":\"nan\"", LOOM_EINVAL,
          "learner.learner_model_param.base_score \"nan\" is not a finite number" },
        { "\"base_score\":\"5E-1\"", "\"base_score\":\"1e39\"", LOOM_EINVAL,
          "learner.learner_model_param.base_score \"1e39\" is not a finite number" },
        { "\"base_score\":\"5E-1\",", "", LOOM_EINVAL,
          "learner.learner_model_param.base_score is missing" },
        { "\"num_class\":\"0\",\"num_feature\":\"3\"", "\"num_class\":\"0\",\"num_feature\":\"0\"",
          LOOM_EINVAL, "learner.learner_model_param.num_feature is 0" },
        { "\"num_class\":\"0\",\"num_feature\":\"3\"", "\"num_class\":\"0\",\"num_feature\":\"-3\"",
          LOOM_EINVAL,
          "learner.learner_model_param.num_feature -3 is out of range [0, 2147483647]" },
        { "\"num_class\":\"0\",\"num_feature\":\"3\"", "\"num_class\":\"0\",\"num_feature\":\"2\"",
          LOOM_EINVAL, "learner.feature_names has 3 names for 2 features" },
        { "\"num_class\":\"0\"", "\"num_class\":\"3\"", LOOM_EINVAL,
          "learner.learner_model_param.num_class 3 does not suit objective reg:squarederror" },
        { "\"num_target\":\"1\"", "\"num_target\":\"2\"", LOOM_EUNSUPPORTED,
          "learner.learner_model_param.num_target 2: multi-target models are not supported" },
        { "\"feature_names\":[\"a\",\"b\",\"c\"]", "\"feature_names\":[\"a\",\"b\"]", LOOM_EINVAL,
          "learner.feature_names has 2 names for 3 features" },
        { "\"feature_names\":[\"a\",\"b\",\"c\"]", "\"feature_names\":[\"a\",\"b\",3]", LOOM_EINVAL,
          "learner.feature_names holds a non-string" },
        { "\"version\":[1,7,4]", "\"version\":[3,0,0]", LOOM_EUNSUPPORTED,
          "XGBoost version 3 models are not supported (1.x and 2.x are)" },
        { "\"version\":[1,7,4]", "\"version\":\"1.7\"", LOOM_EINVAL,
          "version is not [major, minor, patch]" },
        { "{\"learner\":", "{\"learnr\":", LOOM_EINVAL, "learner is missing" },
        { "\"objective\":{\"name\"", "\"objective\":[{\"name\"", LOOM_EPARSE, "model JSON: " },
        /* syntax */
        { "\"version\":[1,7,4]}", "\"version\":[1,7,4]}x", LOOM_EPARSE,
          "model JSON: unexpected data after the top-level value at offset " },
        /* a syntax error in a tree: its offset is counted from the start of the tree */
        { "NaN", "nan", LOOM_EPARSE,
          "model JSON, in tree 1 which starts at offset 735: expected a value at offset 195 "
          "(line 1, column 196)" },
        { "[" TREE_A ",", "[" TREE_A ",,", LOOM_EPARSE,
          "model JSON: expected a value at offset 735 (line 1, column 736)" },
    };
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(cases); k++) {
        char *json = mutate(reg_model, cases[k].from, cases[k].to);
        struct loom_model *m;
        struct loom_error e = { 0 };
        loom_err code = load("xgboost", json, NULL, &m, &e);
        bool prefix = strncmp(cases[k].msg, "model JSON: ", 12) == 0;
        bool ok = code == cases[k].code && m == NULL &&
                  (prefix ? strncmp(e.msg, cases[k].msg, strlen(cases[k].msg)) == 0
                          : strcmp(e.msg, cases[k].msg) == 0);
        check_count++;
        if (!ok) {
            check_failures++;
            fprintf(stderr, "  case %zu (%s -> %s): got %s \"%s\"\n    want %s \"%s\"\n", k,
                    cases[k].from, cases[k].to, loom_err_name(code), e.msg,
                    loom_err_name(cases[k].code), cases[k].msg);
        }
        loom_model_free(m);
        free(json);
    }

    /* Whole documents. */
    static const struct {
        const char *json;
        loom_err code;
        const char *msg;
    } docs[] = {
        { "[]", LOOM_EINVAL, "the model is not a JSON object" },
        /* found by fuzz_xgb: the document ends where the trees array should begin */
        { "{\"learner\":{\"gradient_booster\":{\"model\":{\"trees\":", LOOM_EPARSE,
          "model JSON: unexpected end of input, expected a value at offset 49 (line 1, column "
          "50)" },
        { "{}", LOOM_EINVAL, "learner is missing" },
        { "{\"learner\":[]}", LOOM_EINVAL, "learner is not an object" },
        { "", LOOM_EPARSE,
          "model JSON: unexpected end of input, expected a value at offset 0 (line 1, column 1)" },
        { MODEL("binary:logistic", "0", "1.5E0", GBTREE("[" TREE_A "]", "[0]", "1")), LOOM_EINVAL,
          "learner.learner_model_param.base_score 1.5 must be in (0, 1) for objective "
          "binary:logistic" },
        { MODEL("reg:gamma", "0", "0E0", GBTREE("[" TREE_A "]", "[0]", "1")), LOOM_EINVAL,
          "learner.learner_model_param.base_score 0 must be positive for objective reg:gamma" },
        { MODEL("multi:softprob", "0", "5E-1", GBTREE("[" TREE_A "]", "[0]", "1")), LOOM_EINVAL,
          "learner.learner_model_param.num_class 0 does not suit objective multi:softprob" },
        { MODEL("reg:squarederror", "0", "5E-1", GBTREE("[" TREE_A ",3]", "[0,0]", "2")),
          LOOM_EINVAL, "tree 1 is not an object" },
        { MODEL("reg:squarederror", "0", "5E-1",
                "\"gradient_booster\":{\"gbtree\":{\"model\":{\"gbtree_model_param\":"
                "{\"num_trees\":\"1\"},\"tree_info\":[0],\"trees\":[" TREE_A "]}},"
                "\"name\":\"dart\",\"weight_drop\":[1,2]}"),
          LOOM_EINVAL, "weight_drop must hold 1 numbers, one per tree" },
        { MODEL("reg:squarederror", "0", "5E-1",
                "\"gradient_booster\":{\"gbtree\":{\"model\":{\"gbtree_model_param\":"
                "{\"num_trees\":\"1\"},\"tree_info\":[0],\"trees\":[" TREE_A "]}},"
                "\"name\":\"dart\",\"weight_drop\":[Infinity]}"),
          LOOM_EINVAL, "weight_drop[0] is not a finite number" },
        { MODEL("reg:squarederror", "0", "5E-1",
                "\"gradient_booster\":{\"gbtree\":{\"model\":{}},\"name\":\"dart\"}"),
          LOOM_EINVAL, "learner.gradient_booster.weight_drop is missing" },
    };
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(docs); k++) {
        struct loom_model *m;
        struct loom_error e = { 0 };
        loom_err code = load("xgboost", docs[k].json, NULL, &m, &e);
        check_count++;
        if (code != docs[k].code || strcmp(e.msg, docs[k].msg) != 0 || m) {
            check_failures++;
            fprintf(stderr, "  doc %zu: got %s \"%s\"\n    want %s \"%s\"\n", k,
                    loom_err_name(code), e.msg, loom_err_name(docs[k].code), docs[k].msg);
        }
        loom_model_free(m);
    }
}

/* A chain whose children come before their parents would loop if it were walked; one whose
 * node points to itself, too. */
static void test_xgb_cycles(void)
{
    char *self =
        mutate(reg_model, "\"left_children\":[1,3,-1,-1,-1]", "\"left_children\":[0,3,-1,-1,-1]");
    struct loom_model *m;
    struct loom_error e = { 0 };
    CHECK_INT(load("xgboost", self, NULL, &m, &e), LOOM_EINVAL);
    CHECK_STR(e.msg, "tree 0 node 0: left child 0 is not after the node");
    free(self);
    /* Unreachable nodes (as pruning leaves them) are dropped, not walked. */
    char *orphan = mutate(reg_model, "\"left_children\":[1,3,-1,-1,-1]",
                          "\"left_children\":[3,-1,-1,-1,-1],\"x\":0");
    char *orphan2 =
        mutate(orphan, "\"right_children\":[2,4,-1,-1,-1]", "\"right_children\":[4,-1,-1,-1,-1]");
    CHECK_INT(load("xgboost", orphan2, NULL, &m, &e), LOOM_OK);
    if (m) {
        CHECK_UINT(loom_model_info(m)->max_depth, 1);
        float out;
        loom_model_predict(m, rows[0], 1, &out); /* a = 0 < 0.5: node 3 = -1, B: 10 */
        CHECK_BITS(out, 9.5f);
    }
    loom_model_free(m);
    free(orphan);
    free(orphan2);
}

/*
 * Trees are normally cut out of the text and tokenized one at a time; documents the cutting
 * scanner does not follow are tokenized whole instead, with the same results.
 */
static void test_xgb_layouts(void)
{
    /* An escaped key, pretty-printed whitespace, and a decoy "model" where dart has none. */
    char *escaped = mutate(reg_model, "\"trees\":", "\"tr\\u0065es\":");
    char *spaced = mutate(reg_model, "\"trees\":[", "\"trees\" :\n [\n  ");
    char *spaced2 = mutate(spaced, "},{\"categories\"", "} ,\n {\"categories\"");
    static const char dart[] =
        MODEL("reg:squarederror", "0", "5E-1",
              "\"gradient_booster\":{\"model\":{\"gbtree_model_param\":{\"num_trees\":\"0\"},"
              "\"tree_info\":[],\"trees\":[]},\"gbtree\":{\"model\":{\"gbtree_model_param\":"
              "{\"num_trees\":\"2\"},\"tree_info\":[0,0],\"trees\":[" TREE_A "," TREE_B "]}},"
              "\"name\":\"dart\",\"weight_drop\":[1,1]}");
    const char *docs[] = { escaped, spaced2, dart };
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(docs); k++) {
        struct loom_model *m;
        struct loom_error e = { 0 };
        CHECK_INT(load("xgboost", docs[k], NULL, &m, &e), LOOM_OK);
        if (!m) {
            fprintf(stderr, "  doc %zu: %s\n", k, e.msg);
            continue;
        }
        CHECK_UINT(loom_model_info(m)->num_trees, 2);
        float out[NROWS];
        loom_model_predict(m, &rows[0][0], NROWS, out);
        for (int r = 0; r < NROWS; r++)
            CHECK_BITS(out[r], reg_expected[r]);
        loom_model_free(m);
    }
    free(escaped);
    free(spaced);
    free(spaced2);
    /* A trailing comma among the trees is still a syntax error. */
    char *trailing = mutate(reg_model, TREE_B "]", TREE_B ",]");
    struct loom_model *m;
    struct loom_error e = { 0 };
    CHECK_INT(load("xgboost", trailing, NULL, &m, &e), LOOM_EPARSE);
    free(trailing);
}

/* A categorical split whose list is empty sends every value left (found by fuzz_xgb: the
 * model then has no category storage at all). */
static void test_xgb_empty_categories(void)
{
    char *json = mutate(reg_model, "\"categories\":[3,1]", "\"categories\":[]");
    char *json2 = mutate(json, "\"categories_sizes\":[2]", "\"categories_sizes\":[0]");
    struct loom_model *m;
    struct loom_error e = { 0 };
    CHECK_INT(load("xgboost", json2, NULL, &m, &e), LOOM_OK);
    if (m) {
        float out[NROWS], one;
        loom_model_predict(m, &rows[0][0], NROWS, out);
        for (int r = 0; r < NROWS; r++) {
            float want = 0.5f;
            want += tree_a(rows[r]);
            want += 10.0f;
            CHECK_BITS(out[r], want);
            loom_model_predict(m, rows[r], 1, &one);
            CHECK_BITS(one, want);
        }
        loom_model_free(m);
    }
    free(json);
    free(json2);
}

static void test_limits(void)
{
    char too_big[96];
    snprintf(too_big, sizeof(too_big), "model is %zu bytes, more than the limit of 100",
             strlen(reg_model));
    const struct {
        struct loom_model_limits lim;
        const char *msg;
    } cases[] = {
        { { .max_bytes = 100 }, too_big },
        { { .max_trees = 1 }, "num_trees 2 is more than the limit of 1" },
        { { .max_nodes = 4 }, "tree 0: num_nodes 5 is more than the limit of 4" },
        { { .max_features = 2 },
          "learner.learner_model_param.num_feature 3 is more than the limit of 2" },
    };
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(cases); k++) {
        struct loom_model *m;
        struct loom_error e = { 0 };
        CHECK_INT(load("xgboost", reg_model, &cases[k].lim, &m, &e), LOOM_ETOOBIG);
        CHECK_STR(e.msg, cases[k].msg);
        CHECK(m == NULL);
    }
    static const char multi[] =
        MODEL("multi:softprob", "3", "5E-1", GBTREE("[" TREE_A "]", "[2]", "1"));
    struct loom_model_limits lim = { .max_groups = 2 };
    struct loom_model *m;
    struct loom_error e = { 0 };
    CHECK_INT(load("xgboost", multi, &lim, &m, &e), LOOM_ETOOBIG);
    CHECK_STR(e.msg, "learner.learner_model_param.num_class 3 is more than the limit of 2");
    lim.max_groups = 3;
    CHECK_INT(load("xgboost", multi, &lim, &m, &e), LOOM_OK);
    loom_model_free(m);
    /* Exactly at each limit loads. */
    struct loom_model_limits exact = {
        .max_bytes = strlen(reg_model), .max_trees = 2, .max_nodes = 5, .max_features = 3
    };
    CHECK_INT(load("xgboost", reg_model, &exact, &m, &e), LOOM_OK);
    loom_model_free(m);

    CHECK_INT(load("onnx", reg_model, NULL, &m, &e), LOOM_ENOTFOUND);
    CHECK_STR(e.msg, "unknown model backend \"onnx\" (known: xgboost, linear)");
    CHECK_INT(loom_model_load(NULL, reg_model, 10, NULL, &m, &e), LOOM_ENOTFOUND);
}

static void test_load_file(void)
{
    char dir[] = "/tmp/loom-test-model-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[128];
    snprintf(path, sizeof(path), "%s/model.json", dir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f)
        return;
    fputs(reg_model, f);
    fclose(f);

    struct loom_model *m = NULL;
    struct loom_error e = { 0 };
    CHECK_INT(loom_model_load_file("xgboost", path, NULL, &m, &e), LOOM_OK);
    if (m) {
        float out;
        loom_model_predict(m, rows[1], 1, &out);
        CHECK_BITS(out, reg_expected[1]);
        loom_model_free(m);
    }
    char want[256];
    struct loom_model_limits small = { .max_bytes = 1000 };
    CHECK_INT(loom_model_load_file("xgboost", path, &small, &m, &e), LOOM_ETOOBIG);
    snprintf(want, sizeof(want), "%s: %zu bytes, more than the limit of 1000", path,
             strlen(reg_model));
    CHECK_STR(e.msg, want);
    /* The linear backend parses strictly: XGBoost's bare NaN is a syntax error there. */
    CHECK_INT(loom_model_load_file("linear", path, NULL, &m, &e), LOOM_EPARSE);
    snprintf(want, sizeof(want), "%s: model JSON: expected a value at offset ", path);
    CHECK(strncmp(e.msg, want, strlen(want)) == 0);
    CHECK_INT(loom_model_load_file("xgboost", dir, NULL, &m, &e), LOOM_EINVAL);
    snprintf(want, sizeof(want), "%s: not a regular file", dir);
    CHECK_STR(e.msg, want);
    unlink(path);
    CHECK_INT(loom_model_load_file("xgboost", path, NULL, &m, &e), LOOM_ENOTFOUND);
    snprintf(want, sizeof(want), "%s: no such file", path);
    CHECK_STR(e.msg, want);
    rmdir(dir);
}

/* ---- the linear backend ----------------------------------------------------------------- */

static void test_linear(void)
{
    static const char reg[] = "{\"loom_model\": \"linear\", \"version\": 1, "
                              "\"objective\": \"reg:squarederror\", \"num_features\": 3, "
                              "\"weights\": [0.5, -1.25, 2.1], \"bias\": 0.1, "
                              "\"feature_names\": [\"age\", \"income\", \"score\"]}";
    struct loom_model *m;
    struct loom_error e = { 0 };
    CHECK_INT(load("linear", reg, NULL, &m, &e), LOOM_OK);
    if (!m) {
        fprintf(stderr, "  %s\n", e.msg);
        return;
    }
    const struct loom_model_info *info = loom_model_info(m);
    CHECK_STR(info->backend, "linear");
    CHECK_STR(info->objective, "reg:squarederror");
    CHECK_UINT(info->num_features, 3);
    CHECK_UINT(info->num_outputs, 1);
    CHECK_UINT(info->num_trees, 0);
    CHECK(info->feature_names && strcmp(info->feature_names[1], "income") == 0);
    const float x[4][3] = { { 1, 2, 3 }, { NAN, 2, 3 }, { 0.1f, 0.2f, 0.3f }, { NAN, NAN, NAN } };
    float out[4];
    loom_model_predict(m, &x[0][0], 4, out);
    for (int r = 0; r < 4; r++) {
        /* The documented arithmetic: bias, then each present feature's float product. */
        float w[3] = { 0.5f, -1.25f, 2.1f }, want = 0.1f;
        for (int j = 0; j < 3; j++)
            if (!isnan(x[r][j]))
                want += w[j] * x[r][j];
        CHECK_BITS(out[r], want);
    }
    CHECK_BITS(out[3], 0.1f);
    loom_model_free(m);

    static const char bin[] = "{\"loom_model\":\"linear\",\"version\":1,"
                              "\"objective\":\"binary:logistic\",\"num_features\":2,"
                              "\"weights\":[[2,-1]],\"bias\":[-0.5]}";
    CHECK_INT(load("linear", bin, NULL, &m, &e), LOOM_OK);
    if (m) {
        float p, mg;
        float row[2] = { 1, 0.25f };
        loom_model_predict(m, row, 1, &p);
        loom_model_predict_margin(m, row, 1, &mg);
        CHECK_BITS(mg, 1.25f);
        CHECK_BITS(p, loom_model_sigmoid(1.25f));
        CHECK(info != loom_model_info(m) || true);
        CHECK(loom_model_info(m)->feature_names == NULL);
        loom_model_free(m);
    }

    static const char multi[] = "{\"loom_model\":\"linear\",\"version\":1,"
                                "\"objective\":\"multi:softprob\",\"num_features\":2,"
                                "\"weights\":[[1,0],[0,1],[-1,-1]],\"bias\":[0,0.5,-0.5]}";
    char *softmax = mutate(multi, "multi:softprob", "multi:softmax");
    struct loom_model *s;
    CHECK_INT(load("linear", multi, NULL, &m, &e), LOOM_OK);
    CHECK_INT(load("linear", softmax, NULL, &s, &e), LOOM_OK);
    free(softmax);
    if (m && s) {
        CHECK_UINT(loom_model_info(m)->num_outputs, 3);
        CHECK_UINT(loom_model_info(s)->num_outputs, 1);
        CHECK_UINT(loom_model_info(s)->num_groups, 3);
        float row[2][2] = { { 2, 1 }, { -3, 4 } }, p[6], mg[6], cls[2];
        loom_model_predict(m, &row[0][0], 2, p);
        loom_model_predict_margin(m, &row[0][0], 2, mg);
        loom_model_predict(s, &row[0][0], 2, cls);
        float want[6] = { 2, 1.5f, -3.5f, -3, 4.5f, -1.5f };
        for (int i = 0; i < 6; i++)
            CHECK_BITS(mg[i], want[i]);
        loom_model_softmax(want, 3);
        loom_model_softmax(want + 3, 3);
        for (int i = 0; i < 6; i++)
            CHECK_BITS(p[i], want[i]);
        CHECK_BITS(cls[0], 0.0f);
        CHECK_BITS(cls[1], 1.0f);
    }
    loom_model_free(m);
    loom_model_free(s);
}

static void test_linear_errors(void)
{
    static const char base[] = "{\"loom_model\":\"linear\",\"version\":1,"
                               "\"objective\":\"reg:squarederror\",\"num_features\":2,"
                               "\"weights\":[1,2],\"bias\":0}";
    static const struct bad_model cases[] = {
        { "\"bias\":0}", "\"bias\":0,\"extra\":1}", LOOM_EINVAL, "unknown key \"extra\"" },
        { "\"linear\"", "\"tree\"", LOOM_EINVAL, "\"loom_model\": \"linear\" is missing" },
        { "\"version\":1", "\"version\":2", LOOM_EUNSUPPORTED, "version must be 1" },
        { "reg:squarederror", "reg:gamma", LOOM_EUNSUPPORTED,
          "objective reg:gamma is not supported (reg:squarederror, binary:logistic, "
          "multi:softprob, multi:softmax)" },
        { "\"num_features\":2", "\"num_features\":0", LOOM_EINVAL,
          "num_features must be a positive integer" },
        { "\"num_features\":2", "\"num_features\":2.5", LOOM_EINVAL,
          "num_features must be a positive integer" },
        { "\"weights\":[1,2]", "\"weights\":[1,2,3]", LOOM_EINVAL,
          "weights has 3 values, expected 2" },
        { "\"weights\":[1,2]", "\"weights\":[]", LOOM_EINVAL, "weights must be a non-empty array" },
        { "\"weights\":[1,2]", "\"weights\":[1,\"2\"]", LOOM_EINVAL, "weights[1] is not a number" },
        { "\"weights\":[1,2]", "\"weights\":[1,1e39]", LOOM_EINVAL,
          "weights[1] is out of float range" },
        { "\"weights\":[1,2]", "\"weights\":[[1,2],[3,4]]", LOOM_EINVAL,
          "objective reg:squarederror needs one row of weights, not 2" },
        { "\"weights\":[1,2]", "\"weights\":[[1,2],3]", LOOM_EINVAL,
          "objective reg:squarederror needs one row of weights, not 2" },
        { "\"bias\":0", "\"bias\":[0,1]", LOOM_EINVAL, "bias has 2 values, expected 1" },
        { "\"bias\":0", "\"bias\":\"0\"", LOOM_EINVAL, "bias is not a number" },
        { ",\"bias\":0", "", LOOM_EINVAL, "bias is missing" },
        { "\"bias\":0", "\"bias\":0,\"feature_names\":[\"a\"]", LOOM_EINVAL,
          "feature_names must be an array of 2 strings" },
        { "\"bias\":0", "\"bias\":NaN", LOOM_EPARSE, "model JSON: expected a value at offset " },
        { "reg:squarederror\",\"num_features\":2,\"weights\":[1,2]",
          "multi:softprob\",\"num_features\":2,\"weights\":[1,2]", LOOM_EINVAL,
          "objective multi:softprob needs weights as one array per class (2 or more)" },
        { "reg:squarederror\",\"num_features\":2,\"weights\":[1,2],\"bias\":0",
          "multi:softmax\",\"num_features\":2,\"weights\":[[1,2],[3]],\"bias\":[0,0]", LOOM_EINVAL,
          "weights[1] has 1 values, expected 2" },
        { "reg:squarederror\",\"num_features\":2,\"weights\":[1,2],\"bias\":0",
          "multi:softmax\",\"num_features\":2,\"weights\":[[1,2],[3,4]],\"bias\":0", LOOM_EINVAL,
          "bias must be an array of 2 numbers" },
        { "reg:squarederror\",\"num_features\":2,\"weights\":[1,2],\"bias\":0",
          "multi:softmax\",\"num_features\":2,\"weights\":[[1,2],7],\"bias\":[0,0]", LOOM_EINVAL,
          "weights[1] is not an array" },
    };
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(cases); k++) {
        char *json = mutate(base, cases[k].from, cases[k].to);
        struct loom_model *m;
        struct loom_error e = { 0 };
        loom_err code = load("linear", json, NULL, &m, &e);
        bool prefix = strncmp(cases[k].msg, "model JSON: ", 12) == 0;
        bool ok = code == cases[k].code && m == NULL &&
                  (prefix ? strncmp(e.msg, cases[k].msg, strlen(cases[k].msg)) == 0
                          : strcmp(e.msg, cases[k].msg) == 0);
        check_count++;
        if (!ok) {
            check_failures++;
            fprintf(stderr, "  case %zu: got %s \"%s\"\n    want %s \"%s\"\n", k,
                    loom_err_name(code), e.msg, loom_err_name(cases[k].code), cases[k].msg);
        }
        loom_model_free(m);
        free(json);
    }
    struct loom_model *m;
    struct loom_error e = { 0 };
    struct loom_model_limits lim = { .max_features = 1 };
    CHECK_INT(load("linear", base, &lim, &m, &e), LOOM_ETOOBIG);
    CHECK_STR(e.msg, "num_features 2 is more than the limit of 1");
    CHECK_INT(load("linear", "[1]", NULL, &m, &e), LOOM_EINVAL);
    CHECK_STR(e.msg, "the model is not a JSON object");
}

/* ---- random models against a naive evaluator --------------------------------------------- */

enum { RF = 30, RMAXN = 255 };

struct rtree {
    int n;
    int left[RMAXN], right[RMAXN], feat[RMAXN], dl[RMAXN];
    float cond[RMAXN];
};

static uint64_t rng = 1;

static double urand(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng >> 11) / 9007199254740992.0;
}

/* Grow node `i` to at most `depth` more levels. Depth-first allocation puts a right child far
 * from its left sibling (XGBoost's own trees have them adjacent; loom must not assume it). */
static void grow(struct rtree *t, int i, int depth, bool full)
{
    t->feat[i] = 0;
    t->dl[i] = 0;
    t->cond[i] = (float)(urand() * 2 - 1) * 0.3f;
    t->left[i] = t->right[i] = -1;
    if (depth == 0 || t->n + 2 > RMAXN || (!full && urand() < 0.25))
        return;
    t->feat[i] = (int)(urand() * RF);
    t->dl[i] = urand() < 0.5;
    t->cond[i] = (float)(urand() * 4 - 2);
    t->left[i] = t->n++;
    grow(t, t->left[i], depth - 1, full);
    t->right[i] = t->n++;
    grow(t, t->right[i], depth - 1, full);
}

static float rtree_leaf(const struct rtree *t, const float *x)
{
    int n = 0;
    while (t->left[n] != -1) {
        float v = x[t->feat[n]];
        n = isnan(v) ? (t->dl[n] ? t->left[n] : t->right[n])
                     : (v < t->cond[n] ? t->left[n] : t->right[n]);
    }
    return t->cond[n];
}

static void put_ints(struct loom_buf *b, const char *key, const int *v, int n)
{
    loom_buf_printf(b, "\"%s\":[", key);
    for (int i = 0; i < n; i++)
        loom_buf_printf(b, "%s%d", i ? "," : "", v[i]);
    loom_buf_append_cstr(b, "],");
}

/* An XGBoost JSON document for the trees, groups[t] being tree t's output group. */
static char *rmodel_json(const struct rtree *trees, const int *groups, int nt, int nclass,
                         const char *objective)
{
    struct loom_buf b;
    loom_buf_init(&b, 0);
    loom_buf_printf(&b,
                    "{\"learner\":{\"learner_model_param\":{\"base_score\":\"3.3E-1\","
                    "\"num_class\":\"%d\",\"num_feature\":\"%d\"},\"objective\":{\"name\":\"%s\"},"
                    "\"gradient_booster\":{\"name\":\"gbtree\",\"model\":{\"gbtree_model_param\":"
                    "{\"num_trees\":\"%d\"},",
                    nclass, RF, objective, nt);
    put_ints(&b, "tree_info", groups, nt);
    loom_buf_append_cstr(&b, "\"trees\":[");
    for (int t = 0; t < nt; t++) {
        const struct rtree *r = &trees[t];
        loom_buf_printf(&b, "%s{\"tree_param\":{\"num_nodes\":\"%d\"},", t ? "," : "", r->n);
        put_ints(&b, "left_children", r->left, r->n);
        put_ints(&b, "right_children", r->right, r->n);
        put_ints(&b, "split_indices", r->feat, r->n);
        put_ints(&b, "default_left", r->dl, r->n);
        loom_buf_append_cstr(&b, "\"split_conditions\":[");
        for (int i = 0; i < r->n; i++)
            loom_buf_printf(&b, "%s%.9g", i ? "," : "", (double)r->cond[i]);
        loom_buf_append_cstr(&b, "]}");
    }
    loom_buf_append_cstr(&b, "]}}}}");
    return loom_buf_detach(&b, NULL);
}

struct shared {
    const struct loom_model *m;
    const float *x;
    const float *want; /* n x groups margins */
    size_t n, ng;
    int mismatches;
};

static void *predict_thread(void *arg)
{
    struct shared *s = arg;
    float *out = malloc(s->n * s->ng * sizeof(float));
    for (int round = 0; round < 3; round++) {
        loom_model_predict_margin(s->m, s->x, s->n, out);
        for (size_t i = 0; i < s->n * s->ng; i++)
            if (!same_bits(out[i], s->want[i]))
                __atomic_add_fetch(&s->mismatches, 1, __ATOMIC_RELAXED);
        for (size_t r = 0; r < s->n; r += 17) {
            loom_model_predict_margin(s->m, s->x + r * RF, 1, out);
            for (size_t g = 0; g < s->ng; g++)
                if (!same_bits(out[g], s->want[r * s->ng + g]))
                    __atomic_add_fetch(&s->mismatches, 1, __ATOMIC_RELAXED);
        }
    }
    free(out);
    return NULL;
}

static void test_random_models(void)
{
    enum { NT = 133, N = 1003 };
    static struct rtree trees[NT];
    static int groups[NT];
    float *x = malloc(N * RF * sizeof(float));
    for (size_t i = 0; i < N * RF; i++) {
        double u = urand();
        x[i] = u < 0.15   ? NAN
               : u < 0.16 ? (u < 0.155 ? INFINITY : -INFINITY)
                          : (float)(urand() * 4 - 2);
    }
    for (size_t j = 0; j < RF; j++)
        x[5 * RF + j] = NAN;
    for (int nclass = 0; nclass <= 3; nclass += 3) {
        int ng = nclass ? nclass : 1;
        for (int t = 0; t < NT; t++) {
            trees[t].n = 1;
            grow(&trees[t], 0, 1 + (int)(urand() * 7), urand() < 0.3);
            groups[t] = (int)(urand() * ng);
        }
        char *json =
            rmodel_json(trees, groups, NT, nclass, nclass ? "multi:softprob" : "reg:squarederror");
        struct loom_model *m;
        struct loom_error e = { 0 };
        CHECK_INT(load("xgboost", json, NULL, &m, &e), LOOM_OK);
        free(json);
        if (!m) {
            fprintf(stderr, "  %s\n", e.msg);
            continue;
        }
        /* The naive evaluator: walk the original arrays, add in float in file order. */
        float *want = malloc(N * (size_t)ng * sizeof(float));
        for (size_t r = 0; r < N; r++) {
            for (int g = 0; g < ng; g++)
                want[r * ng + g] = 0.33f;
            for (int t = 0; t < NT; t++)
                want[r * ng + groups[t]] += rtree_leaf(&trees[t], x + r * RF);
        }
        struct shared s = { .m = m, .x = x, .want = want, .n = N, .ng = (size_t)ng };
        predict_thread(&s);
        CHECK_INT(s.mismatches, 0);
        /* Four threads at once give the same answers. */
        pthread_t th[4];
        for (int k = 0; k < 4; k++)
            pthread_create(&th[k], NULL, predict_thread, &s);
        for (int k = 0; k < 4; k++)
            pthread_join(th[k], NULL);
        CHECK_INT(s.mismatches, 0);
        if (nclass) {
            float *p = malloc(N * (size_t)ng * sizeof(float));
            loom_model_predict(m, x, N, p);
            for (size_t r = 0; r < N; r++) {
                loom_model_softmax(want + r * ng, (size_t)ng);
                CHECK(memcmp(p + r * ng, want + r * ng, (size_t)ng * sizeof(float)) == 0);
            }
            free(p);
        }
        free(want);
        loom_model_free(m);
    }
    free(x);
}

/* Time one row and a batch of a 100-tree, depth-6 model over 30 features (informational). */
static void test_timing(void)
{
    enum { NT = 100, N = 4096 };
    static struct rtree trees[NT];
    static int groups[NT];
    for (int t = 0; t < NT; t++) {
        trees[t].n = 1;
        grow(&trees[t], 0, 6, true);
    }
    char *json = rmodel_json(trees, groups, NT, 0, "binary:logistic");
    struct loom_model *m;
    struct loom_error e = { 0 };
    CHECK_INT(load("xgboost", json, NULL, &m, &e), LOOM_OK);
    free(json);
    if (!m)
        return;
    float *x = malloc(N * RF * sizeof(float)), *out = malloc(N * sizeof(float));
    for (size_t i = 0; i < N * RF; i++)
        x[i] = urand() < 0.1 ? NAN : (float)(urand() * 4 - 2);
    double one = INFINITY, batch = INFINITY;
    for (int round = 0; round < 5; round++) {
        uint64_t t0 = loom_now_ns();
        for (size_t r = 0; r < 20000; r++)
            loom_model_predict(m, x + (r % N) * RF, 1, out);
        uint64_t t1 = loom_now_ns();
        loom_model_predict(m, x, N, out);
        uint64_t t2 = loom_now_ns();
        one = LOOM_MIN(one, (double)(t1 - t0) / 20000);
        batch = LOOM_MIN(batch, (double)(t2 - t1) / N);
    }
    fprintf(stderr, "  100 trees of depth 6, 30 features: one row %.0f ns, batch %.0f ns/row\n",
            one, batch);
    free(x);
    free(out);
    loom_model_free(m);
}

int main(void)
{
    RUN(test_xgb_known_answers);
    RUN(test_xgb_transforms);
    RUN(test_xgb_multiclass);
    RUN(test_xgb_dart);
    RUN(test_xgb_errors);
    RUN(test_xgb_cycles);
    RUN(test_xgb_layouts);
    RUN(test_xgb_empty_categories);
    RUN(test_limits);
    RUN(test_load_file);
    RUN(test_linear);
    RUN(test_linear_errors);
    RUN(test_random_models);
    RUN(test_timing);
    return check_report();
}
