/* SPDX-License-Identifier: Apache-2.0 */
/*
 * XGBoost training through libxgboost's C API: the training and validation rows become two
 * DMatrix (NaN = missing) given to the booster at creation, so that its per-round evaluation on
 * the validation rows is incremental; then one UpdateOneIter and one EvalOneIter per round, and
 * the model saved as XGBoost JSON, which loom's own evaluator serves. Training is reproducible:
 * nthread is the work pool's size and the seed is fixed (params.seed, else the split's seed), so
 * the same spec on the same dataset gives the same bytes. libxgboost's log lines are routed
 * into loom's JSON log and its console verbosity is off.
 *
 * libxgboost is loaded with dlopen at the first job or spec check, not linked: with its C++
 * runtime, OpenMP and static initialisers it weighs about 5 MB of RSS, which every process
 * would pay (an inference replica, a gateway) whether or not it ever trains.
 */
#include "trainer/trainer.h"

#include <loom/log.h>

#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xgboost/c_api.h>

/* Objectives whose models loom's evaluator serves and whose metrics the trainer computes. */
static const struct {
    const char *name;
    enum trn_task task;
} objectives[] = {
    { "binary:logistic", TRN_TASK_BINARY },
    { "binary:logitraw", TRN_TASK_BINARY },
    { "binary:hinge", TRN_TASK_BINARY },
    { "reg:logistic", TRN_TASK_BINARY },
    { "reg:squarederror", TRN_TASK_REGRESSION },
    { "reg:squaredlogerror", TRN_TASK_REGRESSION },
    { "reg:pseudohubererror", TRN_TASK_REGRESSION },
    { "reg:absoluteerror", TRN_TASK_REGRESSION },
    { "count:poisson", TRN_TASK_REGRESSION },
    { "reg:gamma", TRN_TASK_REGRESSION },
    { "reg:tweedie", TRN_TASK_REGRESSION },
};

/* Booster parameters of XGBoost 1.7 (tree boosters) a spec may set. objective and nthread are
 * the trainer's; gblinear is refused (loom's evaluator does not read it). */
static const char *const params[] = {
    "booster",
    "eta",
    "learning_rate",
    "gamma",
    "min_split_loss",
    "max_depth",
    "min_child_weight",
    "max_delta_step",
    "subsample",
    "sampling_method",
    "colsample_bytree",
    "colsample_bylevel",
    "colsample_bynode",
    "lambda",
    "reg_lambda",
    "alpha",
    "reg_alpha",
    "tree_method",
    "scale_pos_weight",
    "grow_policy",
    "max_leaves",
    "max_bin",
    "num_parallel_tree",
    "monotone_constraints",
    "interaction_constraints",
    "max_cat_to_onehot",
    "base_score",
    "eval_metric",
    "seed",
    "seed_per_iteration",
    "sample_type",
    "normalize_type",
    "rate_drop",
    "one_drop",
    "skip_drop",
    "tweedie_variance_power",
    "huber_slope",
    "max_cached_hist_node",
};

bool trn_xgb_objective_ok(const char *objective, enum trn_task *task)
{
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(objectives); i++)
        if (strcmp(objectives[i].name, objective) == 0) {
            *task = objectives[i].task;
            return true;
        }
    return false;
}

bool trn_xgb_param_ok(const char *name)
{
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(params); i++)
        if (strcmp(params[i], name) == 0)
            return true;
    return false;
}

static void xgb_log(const char *msg)
{
    LOOM_LOG_KV(LOOM_LOG_INFO, "xgboost", LOOM_KV_CSTR("detail", msg));
}

/* The C API functions the trainer calls, from dlopen("libxgboost.so.0"). */
static struct {
    __typeof__(&XGBGetLastError) XGBGetLastError;
    __typeof__(&XGBRegisterLogCallback) XGBRegisterLogCallback;
    __typeof__(&XGBSetGlobalConfig) XGBSetGlobalConfig;
    __typeof__(&XGDMatrixCreateFromMat) XGDMatrixCreateFromMat;
    __typeof__(&XGDMatrixSetFloatInfo) XGDMatrixSetFloatInfo;
    __typeof__(&XGDMatrixSetStrFeatureInfo) XGDMatrixSetStrFeatureInfo;
    __typeof__(&XGDMatrixFree) XGDMatrixFree;
    __typeof__(&XGBoosterCreate) XGBoosterCreate;
    __typeof__(&XGBoosterSetParam) XGBoosterSetParam;
    __typeof__(&XGBoosterUpdateOneIter) XGBoosterUpdateOneIter;
    __typeof__(&XGBoosterEvalOneIter) XGBoosterEvalOneIter;
    __typeof__(&XGBoosterSaveModelToBuffer) XGBoosterSaveModelToBuffer;
    __typeof__(&XGBoosterFree) XGBoosterFree;
} xgb;
static pthread_once_t xgb_once = PTHREAD_ONCE_INIT;
static char xgb_load_error[256];

static void xgb_load(void)
{
    void *h = dlopen("libxgboost.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(xgb_load_error, sizeof(xgb_load_error), "%s", dlerror());
        return;
    }
#define LOAD(name)                                                                          \
    do {                                                                                    \
        *(void **)&xgb.name = dlsym(h, #name);                                              \
        if (!xgb.name && !xgb_load_error[0])                                                \
            snprintf(xgb_load_error, sizeof(xgb_load_error), "libxgboost lacks %s", #name); \
    } while (0)
    LOAD(XGBGetLastError);
    LOAD(XGBRegisterLogCallback);
    LOAD(XGBSetGlobalConfig);
    LOAD(XGDMatrixCreateFromMat);
    LOAD(XGDMatrixSetFloatInfo);
    LOAD(XGDMatrixSetStrFeatureInfo);
    LOAD(XGDMatrixFree);
    LOAD(XGBoosterCreate);
    LOAD(XGBoosterSetParam);
    LOAD(XGBoosterUpdateOneIter);
    LOAD(XGBoosterEvalOneIter);
    LOAD(XGBoosterSaveModelToBuffer);
    LOAD(XGBoosterFree);
#undef LOAD
    if (xgb_load_error[0])
        return;
    xgb.XGBRegisterLogCallback(xgb_log);
    xgb.XGBSetGlobalConfig("{\"verbosity\": 1}");
}

#define XGBGetLastError            (xgb.XGBGetLastError)
#define XGDMatrixCreateFromMat     (xgb.XGDMatrixCreateFromMat)
#define XGDMatrixSetFloatInfo      (xgb.XGDMatrixSetFloatInfo)
#define XGDMatrixSetStrFeatureInfo (xgb.XGDMatrixSetStrFeatureInfo)
#define XGDMatrixFree              (xgb.XGDMatrixFree)
#define XGBoosterCreate            (xgb.XGBoosterCreate)
#define XGBoosterSetParam          (xgb.XGBoosterSetParam)
#define XGBoosterUpdateOneIter     (xgb.XGBoosterUpdateOneIter)
#define XGBoosterEvalOneIter       (xgb.XGBoosterEvalOneIter)
#define XGBoosterSaveModelToBuffer (xgb.XGBoosterSaveModelToBuffer)
#define XGBoosterFree              (xgb.XGBoosterFree)

/* Load libxgboost once; LOOM_EUNSUPPORTED with the reason if it cannot be. */
static loom_err xgb_ready(struct loom_error *err)
{
    pthread_once(&xgb_once, xgb_load);
    if (xgb_load_error[0])
        return loom_error_set(err, LOOM_EUNSUPPORTED,
                              "cannot load libxgboost (Debian package libxgboost0): %s",
                              xgb_load_error);
    return LOOM_OK;
}

/* libxgboost's last error without its "[time] file:line: " prefix. */
static const char *xgb_error(void)
{
    const char *m = XGBGetLastError();
    const char *p = m;
    if (*p == '[') {
        const char *q = strstr(p, ": ");
        if (q) {
            p = q + 2;
            /* "src/learner.cc:123: " */
            const char *r = strstr(p, ": ");
            if (r && r - p < 80 && memchr(p, ':', (size_t)(r - p)))
                p = r + 2;
        }
    }
    while (*p == ' ' || *p == '\n')
        p++;
    return *p ? p : m;
}

#define XGB_CHECK(call, what)                                                    \
    do {                                                                         \
        if ((call) != 0) {                                                       \
            e = loom_error_set(err, LOOM_EINVAL, "%s: %s", (what), xgb_error()); \
            goto out;                                                            \
        }                                                                        \
    } while (0)

static loom_err set_params(BoosterHandle b, const struct trn_spec *spec, unsigned nthread,
                           struct loom_buf *info, struct loom_error *err)
{
    char tmp[32];
    loom_err e = LOOM_OK;
    /* The trainer's settings first; the spec may override all but objective and nthread. */
    const char *fixed[][2] = {
        { "verbosity", "1" },
        { "objective", spec->objective },
        { "tree_method", "hist" },
        { "validate_parameters", "1" },
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(fixed); i++)
        XGB_CHECK(XGBoosterSetParam(b, fixed[i][0], fixed[i][1]), fixed[i][0]);
    snprintf(tmp, sizeof(tmp), "%u", nthread ? nthread : 1);
    XGB_CHECK(XGBoosterSetParam(b, "nthread", tmp), "nthread");
    snprintf(tmp, sizeof(tmp), "%llu", (unsigned long long)(spec->seed & 0x7fffffff));
    XGB_CHECK(XGBoosterSetParam(b, "seed", tmp), "seed");
    for (size_t i = 0; i < spec->nparams; i++) {
        char what[96];
        snprintf(what, sizeof(what), "params.%s", spec->params[i].name);
        XGB_CHECK(XGBoosterSetParam(b, spec->params[i].name, spec->params[i].value), what);
    }
    if (info) {
        struct loom_json_writer w;
        loom_json_writer_init(&w, info);
        loom_json_write_object_begin(&w);
        loom_json_write_key(&w, "objective");
        loom_json_write_string(&w, spec->objective);
        loom_json_write_key(&w, "tree_method");
        loom_json_write_string(
            &w, trn_spec_param(spec, "tree_method") ? trn_spec_param(spec, "tree_method") : "hist");
        loom_json_write_key(&w, "nthread");
        loom_json_write_u64(&w, nthread ? nthread : 1);
        loom_json_write_key(&w, "seed");
        loom_json_write_string(&w,
                               trn_spec_param(spec, "seed") ? trn_spec_param(spec, "seed") : tmp);
        for (size_t i = 0; i < spec->nparams; i++) {
            if (strcmp(spec->params[i].name, "tree_method") == 0 ||
                strcmp(spec->params[i].name, "seed") == 0)
                continue;
            loom_json_write_key(&w, spec->params[i].name);
            loom_json_write_string(&w, spec->params[i].value);
        }
        loom_json_write_key(&w, "rounds");
        loom_json_write_i64(&w, spec->rounds);
        loom_json_write_object_end(&w);
        loom_json_writer_finish(&w);
    }
out:
    return e;
}

/* "[12]\tvalidation-logloss:0.0123" -> name "logloss", value. */
static bool parse_eval(const char *s, char *name, size_t cap, double *value)
{
    const char *p = strstr(s, "validation-");
    if (!p)
        return false;
    p += strlen("validation-");
    const char *colon = strchr(p, ':');
    if (!colon)
        return false;
    snprintf(name, cap, "%.*s", (int)(colon - p), p);
    char *end;
    *value = strtod(colon + 1, &end);
    return end != colon + 1;
}

static loom_err make_dmatrix(const float *x, const float *y, size_t n, size_t nfeat,
                             const char *const *names, DMatrixHandle *out, struct loom_error *err)
{
    loom_err e = LOOM_OK;
    DMatrixHandle d = NULL;
    XGB_CHECK(XGDMatrixCreateFromMat(x, n, nfeat, NAN, &d), "building the training matrix");
    XGB_CHECK(XGDMatrixSetFloatInfo(d, "label", y, n), "setting the labels");
    if (names)
        XGB_CHECK(XGDMatrixSetStrFeatureInfo(d, "feature_name", (const char **)names, nfeat),
                  "setting the feature names");
    *out = d;
    return LOOM_OK;
out:
    if (d)
        XGDMatrixFree(d);
    return e;
}

loom_err trn_train_xgb(const struct trn_train_in *in, struct trn_train_out *out,
                       struct loom_error *err)
{
    if (xgb_ready(err))
        return err->code;
    const struct trn_spec *spec = in->spec;
    loom_err e = LOOM_OK;
    DMatrixHandle dtr = NULL, dva = NULL;
    BoosterHandle b = NULL;
    memset(out, 0, sizeof(*out));
    loom_buf_init(&out->info, 0);
    out->format = "xgboost";
    if ((e = make_dmatrix(in->xtr, in->ytr, in->ntr, in->nfeat, in->feature_names, &dtr, err)))
        goto out;
    if ((e = make_dmatrix(in->xva, in->yva, in->nva, in->nfeat, in->feature_names, &dva, err)))
        goto out;
    DMatrixHandle cache[2] = { dtr, dva };
    XGB_CHECK(XGBoosterCreate(cache, 2, &b), "creating the booster");
    if ((e = set_params(b, spec, in->nthread, &out->info, err)))
        goto out;
    const char *names[1] = { "validation" };
    for (int64_t i = 0; i < spec->rounds; i++) {
        XGB_CHECK(XGBoosterUpdateOneIter(b, (int)i, dtr), "training");
        const char *res = NULL;
        double v = NAN;
        XGB_CHECK(XGBoosterEvalOneIter(b, (int)i, &dva, names, 1, &res), "evaluating");
        if (!parse_eval(res, out->metric, sizeof(out->metric), &v))
            snprintf(out->metric, sizeof(out->metric), "unknown");
        if (in->progress &&
            (e = in->progress(in->arg, i + 1, spec->rounds, out->metric, v)) != LOOM_OK) {
            loom_error_set(err, e, "training stopped at round %lld", (long long)(i + 1));
            goto out;
        }
    }
    bst_ulong len = 0;
    const char *data = NULL;
    XGB_CHECK(XGBoosterSaveModelToBuffer(b, "{\"format\": \"json\"}", &len, &data),
              "saving the model");
    out->model = loom_malloc(len + 1);
    memcpy(out->model, data, len);
    out->model[len] = '\0';
    out->model_len = len;
out:
    if (b)
        XGBoosterFree(b);
    if (dtr)
        XGDMatrixFree(dtr);
    if (dva)
        XGDMatrixFree(dva);
    if (e)
        trn_train_out_release(out);
    return e;
}

/* Two rounds on four rows with the spec's parameters, so that libxgboost validates them. */
static loom_err dry_run(const struct trn_spec *spec, size_t nfeat, struct loom_error *err)
{
    if (xgb_ready(err))
        return err->code;
    size_t n = 4;
    float *x = loom_calloc(n * nfeat, sizeof(float));
    float y[4] = { 0, 1, 0, 1 };
    if (spec->task == TRN_TASK_REGRESSION)
        for (size_t i = 0; i < n; i++)
            y[i] += 1; /* gamma and friends need positive labels */
    for (size_t i = 0; i < n * nfeat; i++)
        x[i] = (float)(i % 7);
    loom_err e = LOOM_OK;
    DMatrixHandle d = NULL;
    BoosterHandle b = NULL;
    XGB_CHECK(XGDMatrixCreateFromMat(x, n, nfeat, NAN, &d), "params");
    XGB_CHECK(XGDMatrixSetFloatInfo(d, "label", y, n), "params");
    XGB_CHECK(XGBoosterCreate(&d, 1, &b), "params");
    if ((e = set_params(b, spec, 1, NULL, err)))
        goto out;
    XGB_CHECK(XGBoosterUpdateOneIter(b, 0, d), "params");
    XGB_CHECK(XGBoosterUpdateOneIter(b, 1, d), "params");
out:
    if (b)
        XGBoosterFree(b);
    if (d)
        XGDMatrixFree(d);
    free(x);
    if (e) {
        char *nl = strchr(err->msg, '\n'); /* libxgboost appends the parameter's help */
        if (nl)
            *nl = '\0';
    }
    return e;
}

loom_err trn_xgb_check_params(const struct trn_spec *spec, size_t nfeat, char *field,
                              size_t field_cap, struct loom_error *err)
{
    loom_err e = dry_run(spec, nfeat, err);
    if (!e)
        return LOOM_OK;
    if (e == LOOM_EUNSUPPORTED) { /* no libxgboost here: the linear backend still works */
        snprintf(field, field_cap, "backend");
        return e;
    }
    /* Find the parameter to blame: the first that fails on its own. */
    snprintf(field, field_cap, "params");
    for (size_t i = 0; i < spec->nparams; i++) {
        struct trn_spec one = *spec;
        one.params = &spec->params[i];
        one.nparams = 1;
        struct loom_error e1 = { 0 };
        if (dry_run(&one, nfeat, &e1)) {
            snprintf(field, field_cap, "params.%s", spec->params[i].name);
            loom_error_set(err, e1.code, "params.%s = %s: %s", spec->params[i].name,
                           spec->params[i].value,
                           strncmp(e1.msg, "params: ", 8) == 0 ? e1.msg + 8 : e1.msg);
            break;
        }
    }
    return e;
}

void trn_train_out_release(struct trn_train_out *out)
{
    free(out->model);
    out->model = NULL;
    out->model_len = 0;
    loom_buf_release(&out->info);
}
