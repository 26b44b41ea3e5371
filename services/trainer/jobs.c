/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Training jobs: the spec, the store's records, the scheduler and the run.
 *
 * Lifecycle. POST /api/v1/training-jobs validates the spec (its shape on the loop thread, then
 * against the dataset's description and, for XGBoost, with a dry run of its parameters, on the
 * pool), records the job as `queued` and hands it to the scheduler, which keeps at most
 * max-concurrent-jobs of this process's jobs on the work pool and the rest in order. A job moves
 * to `running` with a conditional update (so a cancel that wins the race is never overwritten),
 * reports its progress after every round (memory at once, the store at most twice a second),
 * and ends `succeeded` (every gate passed, a `ready` version in the registry), `rejected` (a
 * gate failed, a `rejected` version), `failed` (with the reason) or `cancelled`. Cancellation
 * is checked between rounds. When the service drains, a running job stops at its next round
 * and is marked failed; at start, jobs a previous process left queued or running are marked
 * failed with the reason, so no job is ever silently lost.
 *
 * The split is deterministic: indices 0..n-1 shuffled by Fisher-Yates (from the last index
 * down, j = next() % (i + 1)) with xoshiro256** seeded through splitmix64 from split.seed; the
 * first round(n * validation) shuffled indices are the validation rows; both sets keep file
 * order. bench/train_capi.c does the same.
 */
#include "trainer/trainer.h"

#include <loom/event.h>
#include <loom/id.h>
#include <loom/log.h>
#include <loom/model.h>
#include <loom/outbox.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- schema ---- */

const struct loom_migration trn_migrations[] = {
    { 1, "CREATE TABLE IF NOT EXISTS trn_datasets ("
         "  digest TEXT PRIMARY KEY,"
         "  size BIGINT NOT NULL,"
         "  nrows BIGINT NOT NULL,"
         "  columns_json TEXT NOT NULL,"
         "  created_at BIGINT NOT NULL);"
         "CREATE INDEX IF NOT EXISTS trn_datasets_created ON trn_datasets (created_at);"
         "CREATE TABLE IF NOT EXISTS trn_jobs ("
         "  id TEXT PRIMARY KEY,"
         "  status TEXT NOT NULL,"
         "  model TEXT NOT NULL,"
         "  dataset TEXT NOT NULL,"
         "  backend TEXT NOT NULL,"
         "  objective TEXT NOT NULL,"
         "  spec TEXT NOT NULL,"
         "  created_at BIGINT NOT NULL,"
         "  started_at BIGINT,"
         "  trained_at BIGINT,"
         "  finished_at BIGINT,"
         "  round BIGINT NOT NULL,"
         "  rounds BIGINT NOT NULL,"
         "  metric TEXT,"
         "  metric_last DOUBLE PRECISION,"
         "  history TEXT,"
         "  report TEXT,"
         "  registry_version BIGINT,"
         "  model_digest TEXT,"
         "  error TEXT,"
         "  updated_at BIGINT NOT NULL);"
         "CREATE INDEX IF NOT EXISTS trn_jobs_status ON trn_jobs (status);"
         "CREATE TABLE IF NOT EXISTS trn_idempotency ("
         "  idem_key TEXT PRIMARY KEY,"
         "  request_hash TEXT NOT NULL,"
         "  state TEXT NOT NULL,"
         "  status BIGINT,"
         "  response TEXT,"
         "  created_at BIGINT NOT NULL)" },
};
const size_t trn_nmigrations = LOOM_ARRAY_SIZE(trn_migrations);

#define IDEM_TTL_MS      (24 * 3600 * 1000LL)
#define IDEM_ABANDON_MS  (10 * 60 * 1000LL)
#define PERSIST_EVERY_NS (500 * LOOM_NS_PER_MS)
#define ROUNDS_MAX       10000
#define FEATURES_MAX     4096

/* ---- the spec ---- */

static const char *const spec_keys[] = { "model",      "dataset", "label",     "features",
                                         "sensitive",  "backend", "objective", "params",
                                         "rounds",     "split",   "gates",     "code_version",
                                         "description" };
static const char *const gate_keys[] = { "min_auc",
                                         "min_accuracy",
                                         "max_rmse",
                                         "max_equal_opportunity_diff",
                                         "max_demographic_parity_diff",
                                         "max_p99_latency_us" };
static const char *const linear_params[] = { "lambda", "tol" };

struct sp {
    const struct loom_json_doc *d;
    struct loom_arena *a;
    char *field;
    size_t cap;
    struct loom_error *err;
};

static loom_err bad(struct sp *p, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static loom_err bad(struct sp *p, const char *field, const char *fmt, ...)
{
    snprintf(p->field, p->cap, "%s", field);
    va_list ap;
    va_start(ap, fmt);
    loom_error_setv(p->err, LOOM_EINVAL, fmt, ap);
    va_end(ap);
    return LOOM_EINVAL;
}

/* A string of 1..max bytes without NUL, copied (caller frees). */
static loom_err str_at(struct sp *p, int tok, const char *field, size_t max, char **out)
{
    struct loom_str s;
    if (!loom_json_is_string(p->d, tok) || loom_json_unescape(p->d, tok, p->a, &s))
        return bad(p, field, "%s must be a string", field);
    if (s.len == 0 || s.len > max || memchr(s.ptr, '\0', s.len))
        return bad(p, field, "%s must be 1 to %zu characters", field, max);
    *out = loom_str_dup(s);
    return LOOM_OK;
}

static loom_err num_at(struct sp *p, int tok, const char *field, double *out)
{
    if (!loom_json_is_number(p->d, tok) || loom_json_to_double(p->d, tok, out) || !isfinite(*out))
        return bad(p, field, "%s must be a number", field);
    return LOOM_OK;
}

static bool valid_model_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 100 || !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= '0' && s[0] <= '9')))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static bool one_of(const char *s, const char *const *set, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(s, set[i]) == 0)
            return true;
    return false;
}

void trn_spec_release(struct trn_spec *s)
{
    free(s->model);
    free(s->dataset);
    free(s->label);
    free(s->sensitive);
    for (size_t i = 0; i < s->nfeatures; i++)
        free(s->features[i]);
    free(s->features);
    free(s->objective);
    for (size_t i = 0; i < s->nparams; i++) {
        free(s->params[i].name);
        free(s->params[i].value);
    }
    free(s->params);
    free(s->code_version);
    free(s->description);
    memset(s, 0, sizeof(*s));
}

const char *trn_spec_param(const struct trn_spec *spec, const char *name)
{
    for (size_t i = 0; i < spec->nparams; i++)
        if (strcmp(spec->params[i].name, name) == 0)
            return spec->params[i].value;
    return NULL;
}

static loom_err parse_params(struct sp *p, int obj, struct trn_spec *s)
{
    if (!loom_json_is_object(p->d, obj))
        return bad(p, "params", "params must be an object of parameter names to values");
    size_t n = (size_t)loom_json_size(p->d, obj);
    s->params = loom_calloc(n ? n : 1, sizeof(*s->params));
    loom_json_foreach (p->d, obj, k) {
        struct loom_str name, val;
        char field[128];
        if (loom_json_unescape(p->d, k, p->a, &name))
            return bad(p, "params", "params has a malformed name");
        snprintf(field, sizeof(field), "params.%.*s", (int)LOOM_MIN(name.len, (size_t)100),
                 name.ptr);
        int v = k + 1;
        if (loom_json_is_string(p->d, v)) {
            if (loom_json_unescape(p->d, v, p->a, &val) || val.len == 0 || val.len > 1000)
                return bad(p, field, "%s must be a non-empty string or a number", field);
        } else if (loom_json_is_number(p->d, v)) {
            val = loom_json_slice(p->d, v);
        } else if (loom_json_is_bool(p->d, v)) {
            val = loom_json_is_true(p->d, v) ? LOOM_STR("true") : LOOM_STR("false");
        } else {
            return bad(p, field, "%s must be a string or a number", field);
        }
        char *nm = loom_str_dup(name);
        for (size_t i = 0; i < s->nparams; i++)
            if (strcmp(s->params[i].name, nm) == 0) {
                free(nm);
                return bad(p, field, "%s is given twice", field);
            }
        s->params[s->nparams].name = nm;
        s->params[s->nparams].value = loom_str_dup(val);
        s->nparams++;
        if (strcmp(nm, "objective") == 0)
            return bad(p, field, "the objective is set by the spec's \"objective\", not params");
        if (strcmp(nm, "nthread") == 0 || strcmp(nm, "n_jobs") == 0)
            return bad(p, field, "%s is set by the trainer (the work pool's size)", field);
        if (s->backend == TRN_BACKEND_XGBOOST) {
            if (!trn_xgb_param_ok(nm))
                return bad(p, field,
                           "%s is not an XGBoost tree-booster parameter the trainer "
                           "accepts",
                           field);
            if (strcmp(nm, "booster") == 0 && strcmp(s->params[s->nparams - 1].value, "gbtree") &&
                strcmp(s->params[s->nparams - 1].value, "dart"))
                return bad(p, field, "booster must be gbtree or dart (loom serves tree models)");
        } else {
            if (!one_of(nm, linear_params, LOOM_ARRAY_SIZE(linear_params)))
                return bad(p, field, "%s is not a parameter of the linear backend (lambda, tol)",
                           field);
            char *end;
            double d = strtod(s->params[s->nparams - 1].value, &end);
            if (*end || !isfinite(d) || d < 0)
                return bad(p, field, "%s must be a number >= 0", field);
        }
    }
    return LOOM_OK;
}

static loom_err parse_gates(struct sp *p, int obj, struct trn_spec *s)
{
    if (!loom_json_is_object(p->d, obj))
        return bad(p, "gates", "gates must be an object");
    double *slots[] = { &s->gates.min_auc,
                        &s->gates.min_accuracy,
                        &s->gates.max_rmse,
                        &s->gates.max_equal_opportunity_diff,
                        &s->gates.max_demographic_parity_diff,
                        &s->gates.max_p99_latency_us };
    loom_json_foreach (p->d, obj, k) {
        struct loom_str name;
        char field[96];
        loom_json_unescape(p->d, k, p->a, &name);
        snprintf(field, sizeof(field), "gates.%.*s", (int)LOOM_MIN(name.len, (size_t)64), name.ptr);
        size_t g = 0;
        while (g < LOOM_ARRAY_SIZE(gate_keys) && !loom_str_eq_cstr(name, gate_keys[g]))
            g++;
        if (g == LOOM_ARRAY_SIZE(gate_keys))
            return bad(p, field,
                       "%s is not a gate (min_auc, min_accuracy, max_rmse, "
                       "max_equal_opportunity_diff, max_demographic_parity_diff, "
                       "max_p99_latency_us)",
                       field);
        if (loom_json_is_null(p->d, k + 1))
            continue;
        loom_err e = num_at(p, k + 1, field, slots[g]);
        if (e)
            return e;
        if (*slots[g] < 0)
            return bad(p, field, "%s must be >= 0", field);
    }
    bool binary = s->task == TRN_TASK_BINARY;
    if (!binary && (!isnan(s->gates.min_auc) || !isnan(s->gates.min_accuracy)))
        return bad(p, !isnan(s->gates.min_auc) ? "gates.min_auc" : "gates.min_accuracy",
                   "this gate needs a binary objective, not %s", s->objective);
    bool fair =
        !isnan(s->gates.max_equal_opportunity_diff) || !isnan(s->gates.max_demographic_parity_diff);
    const char *fair_field = !isnan(s->gates.max_equal_opportunity_diff)
                                 ? "gates.max_equal_opportunity_diff"
                                 : "gates.max_demographic_parity_diff";
    if (fair && !binary)
        return bad(p, fair_field, "fairness gates need a binary objective, not %s", s->objective);
    if (fair && !s->sensitive)
        return bad(p, fair_field, "fairness gates need a sensitive attribute (\"sensitive\")");
    return LOOM_OK;
}

static loom_err parse_split(struct sp *p, int obj, struct trn_spec *s)
{
    if (!loom_json_is_object(p->d, obj))
        return bad(p, "split", "split must be an object {\"validation\": 0.2, \"seed\": 42}");
    loom_json_foreach (p->d, obj, k) {
        int v = k + 1;
        if (loom_json_str_eq(p->d, k, LOOM_STR("validation"))) {
            loom_err e = num_at(p, v, "split.validation", &s->validation);
            if (e)
                return e;
            if (!(s->validation > 0 && s->validation <= 0.9))
                return bad(p, "split.validation",
                           "split.validation must be more than 0 and at most 0.9");
        } else if (loom_json_str_eq(p->d, k, LOOM_STR("seed"))) {
            if (loom_json_to_u64(p->d, v, &s->seed))
                return bad(p, "split.seed", "split.seed must be an integer >= 0");
        } else {
            struct loom_str name = loom_json_slice(p->d, k);
            char field[96];
            snprintf(field, sizeof(field), "split.%.*s", (int)LOOM_MIN(name.len, (size_t)64),
                     name.ptr);
            return bad(p, field, "%s is not a split setting (validation, seed)", field);
        }
    }
    return LOOM_OK;
}

loom_err trn_spec_parse(const char *json, size_t len, struct trn_spec *s, char *field,
                        size_t field_cap, struct loom_error *err)
{
    memset(s, 0, sizeof(*s));
    s->rounds = 100;
    s->validation = 0.2;
    s->seed = 42;
    s->gates = (struct trn_gates){ NAN, NAN, NAN, NAN, NAN, NAN };
    field[0] = '\0';
    struct loom_arena a;
    loom_arena_init(&a, 0);
    struct loom_json_doc doc;
    struct loom_json_limits lim = { .max_depth = 16, .max_tokens = 1 << 16 };
    struct sp p = { .d = &doc, .a = &a, .field = field, .cap = field_cap, .err = err };
    loom_err e = loom_json_parse(json, len, &lim, &a, &doc, err);
    if (e) {
        loom_error_prefix(err, "the job spec is not JSON");
        goto out;
    }
    if (!loom_json_is_object(&doc, 0)) {
        e = bad(&p, "", "the job spec must be a JSON object");
        goto out;
    }
    loom_json_foreach (&doc, 0, k) {
        struct loom_str key;
        loom_json_unescape(&doc, k, &a, &key);
        size_t i = 0;
        while (i < LOOM_ARRAY_SIZE(spec_keys) && !loom_str_eq_cstr(key, spec_keys[i]))
            i++;
        if (i == LOOM_ARRAY_SIZE(spec_keys)) {
            char f[80];
            snprintf(f, sizeof(f), "%.*s", (int)LOOM_MIN(key.len, (size_t)64), key.ptr);
            e = bad(&p, f, "unknown field \"%s\"", f);
            goto out;
        }
    }
    int t;
#define REQUIRED(name)                                \
    if ((t = loom_json_obj_get(&doc, 0, name)) < 0) { \
        e = bad(&p, name, "%s is required", name);    \
        goto out;                                     \
    }
    REQUIRED("model");
    if ((e = str_at(&p, t, "model", 100, &s->model)))
        goto out;
    if (!valid_model_name(s->model)) {
        e = bad(&p, "model",
                "model \"%s\" must be 1 to 100 of a-z, 0-9, '.', '_', '-', starting with a letter "
                "or digit",
                s->model);
        goto out;
    }
    REQUIRED("dataset");
    if ((e = str_at(&p, t, "dataset", 71, &s->dataset)))
        goto out;
    if (strlen(s->dataset) != 71 || strncmp(s->dataset, "sha256:", 7) != 0 ||
        !loom_sha256_hex_valid(loom_str_make(s->dataset + 7, 64))) {
        e = bad(&p, "dataset", "dataset must be a digest sha256:<64 lowercase hex digits>");
        goto out;
    }
    REQUIRED("label");
    if ((e = str_at(&p, t, "label", 200, &s->label)))
        goto out;
#undef REQUIRED
    if ((t = loom_json_obj_get(&doc, 0, "sensitive")) >= 0 && !loom_json_is_null(&doc, t)) {
        if ((e = str_at(&p, t, "sensitive", 200, &s->sensitive)))
            goto out;
        if (strcmp(s->sensitive, s->label) == 0) {
            e = bad(&p, "sensitive", "the sensitive attribute cannot be the label");
            goto out;
        }
    }
    s->backend = TRN_BACKEND_XGBOOST;
    if ((t = loom_json_obj_get(&doc, 0, "backend")) >= 0) {
        if (loom_json_str_eq(&doc, t, LOOM_STR("linear"))) {
            s->backend = TRN_BACKEND_LINEAR;
        } else if (!loom_json_str_eq(&doc, t, LOOM_STR("xgboost"))) {
            e = bad(&p, "backend", "backend must be \"xgboost\" or \"linear\"");
            goto out;
        }
    }
    if ((t = loom_json_obj_get(&doc, 0, "objective")) >= 0) {
        if ((e = str_at(&p, t, "objective", 64, &s->objective)))
            goto out;
    } else {
        s->objective = loom_strdup("binary:logistic");
    }
    if (s->backend == TRN_BACKEND_XGBOOST) {
        if (!trn_xgb_objective_ok(s->objective, &s->task)) {
            e = bad(&p, "objective",
                    "objective %s is not one the trainer trains with xgboost (binary:logistic, "
                    "binary:logitraw, binary:hinge, reg:logistic, reg:squarederror, "
                    "reg:squaredlogerror, reg:pseudohubererror, reg:absoluteerror, "
                    "count:poisson, reg:gamma, reg:tweedie)",
                    s->objective);
            goto out;
        }
    } else if (strcmp(s->objective, "binary:logistic") == 0) {
        s->task = TRN_TASK_BINARY;
    } else if (strcmp(s->objective, "reg:squarederror") == 0) {
        s->task = TRN_TASK_REGRESSION;
    } else {
        e = bad(&p, "objective",
                "the linear backend trains binary:logistic or reg:squarederror, not %s",
                s->objective);
        goto out;
    }
    if ((t = loom_json_obj_get(&doc, 0, "features")) >= 0 && !loom_json_is_null(&doc, t)) {
        if (!loom_json_is_array(&doc, t) || loom_json_size(&doc, t) == 0 ||
            loom_json_size(&doc, t) > FEATURES_MAX) {
            e = bad(&p, "features", "features must be an array of 1 to %d column names",
                    FEATURES_MAX);
            goto out;
        }
        s->features_given = true;
        s->features = loom_calloc((size_t)loom_json_size(&doc, t), sizeof(char *));
        loom_json_foreach (&doc, t, i) {
            char f[32];
            snprintf(f, sizeof(f), "features[%zu]", s->nfeatures);
            char *name;
            if ((e = str_at(&p, i, f, 200, &name)))
                goto out;
            s->features[s->nfeatures++] = name;
            if (strcmp(name, s->label) == 0) {
                e = bad(&p, f, "the label %s cannot be a feature", name);
                goto out;
            }
            for (size_t j = 0; j + 1 < s->nfeatures; j++)
                if (strcmp(s->features[j], name) == 0) {
                    e = bad(&p, f, "feature %s is listed twice", name);
                    goto out;
                }
        }
    }
    if ((t = loom_json_obj_get(&doc, 0, "params")) >= 0 && (e = parse_params(&p, t, s)))
        goto out;
    if ((t = loom_json_obj_get(&doc, 0, "rounds")) >= 0) {
        if (loom_json_to_i64(&doc, t, &s->rounds) || s->rounds < 1 || s->rounds > ROUNDS_MAX) {
            e = bad(&p, "rounds", "rounds must be an integer from 1 to %d", ROUNDS_MAX);
            goto out;
        }
    }
    if ((t = loom_json_obj_get(&doc, 0, "split")) >= 0 && (e = parse_split(&p, t, s)))
        goto out;
    if ((t = loom_json_obj_get(&doc, 0, "gates")) >= 0 && (e = parse_gates(&p, t, s)))
        goto out;
    if ((t = loom_json_obj_get(&doc, 0, "code_version")) >= 0 && !loom_json_is_null(&doc, t)) {
        if ((e = str_at(&p, t, "code_version", 200, &s->code_version)))
            goto out;
    }
    if ((t = loom_json_obj_get(&doc, 0, "description")) >= 0 && !loom_json_is_null(&doc, t)) {
        if ((e = str_at(&p, t, "description", 2000, &s->description)))
            goto out;
    }
    if (!s->code_version)
        s->code_version = loom_strdup("");
    if (!s->description)
        s->description = loom_strdup("");
out:
    loom_arena_release(&a);
    if (e)
        trn_spec_release(s);
    return e;
}

static const struct trn_column *find_column(const struct trn_dataset *ds, const char *name)
{
    for (size_t i = 0; i < ds->ncols; i++)
        if (strcmp(ds->cols[i].name, name) == 0)
            return &ds->cols[i];
    return NULL;
}

loom_err trn_spec_check(struct trn_spec *s, const struct trn_dataset *ds, char *field,
                        size_t field_cap, struct loom_error *err)
{
    struct sp p = { .field = field, .cap = field_cap, .err = err };
    const struct trn_column *label = find_column(ds, s->label);
    if (!label)
        return bad(&p, "label", "the dataset has no column %s", s->label);
    if (label->is_string)
        return bad(&p, "label", "the label %s is a string column; labels must be numbers",
                   s->label);
    if (label->missing)
        return bad(&p, "label", "the label %s has %llu missing values", s->label,
                   (unsigned long long)label->missing);
    if (s->task == TRN_TASK_BINARY && (label->min < 0 || label->max > 1))
        return bad(&p, "label", "objective %s needs labels 0 and 1; %s ranges from %g to %g",
                   s->objective, s->label, label->min, label->max);
    if (s->sensitive && !find_column(ds, s->sensitive))
        return bad(&p, "sensitive", "the dataset has no column %s", s->sensitive);
    if (s->features_given) {
        for (size_t i = 0; i < s->nfeatures; i++)
            if (!find_column(ds, s->features[i])) {
                char f[32];
                snprintf(f, sizeof(f), "features[%zu]", i);
                return bad(&p, f, "the dataset has no column %s", s->features[i]);
            }
    } else {
        /* Every column but the label and the sensitive attribute. */
        s->features = loom_calloc(ds->ncols ? ds->ncols : 1, sizeof(char *));
        s->nfeatures = 0;
        for (size_t i = 0; i < ds->ncols; i++) {
            const char *n = ds->cols[i].name;
            if (strcmp(n, s->label) != 0 && !(s->sensitive && strcmp(n, s->sensitive) == 0))
                s->features[s->nfeatures++] = loom_strdup(n);
        }
        if (!s->nfeatures)
            return bad(&p, "features", "the dataset has no column left to be a feature");
        if (s->nfeatures > FEATURES_MAX)
            return bad(&p, "features", "the dataset has more than %d feature columns",
                       FEATURES_MAX);
    }
    if (ds->rows < 2)
        return bad(&p, "dataset", "the dataset has %llu rows: at least 2 are needed",
                   (unsigned long long)ds->rows);
    return LOOM_OK;
}

void trn_spec_json(struct loom_json_writer *w, const struct trn_spec *s)
{
    loom_json_write_object_begin(w);
    loom_json_write_key(w, "model");
    loom_json_write_string(w, s->model);
    loom_json_write_key(w, "dataset");
    loom_json_write_string(w, s->dataset);
    loom_json_write_key(w, "label");
    loom_json_write_string(w, s->label);
    loom_json_write_key(w, "features");
    loom_json_write_array_begin(w);
    for (size_t i = 0; i < s->nfeatures; i++)
        loom_json_write_string(w, s->features[i]);
    loom_json_write_array_end(w);
    loom_json_write_key(w, "sensitive");
    loom_json_write_string(w, s->sensitive);
    loom_json_write_key(w, "backend");
    loom_json_write_string(w, s->backend == TRN_BACKEND_XGBOOST ? "xgboost" : "linear");
    loom_json_write_key(w, "objective");
    loom_json_write_string(w, s->objective);
    loom_json_write_key(w, "params");
    loom_json_write_object_begin(w);
    for (size_t i = 0; i < s->nparams; i++) {
        loom_json_write_key(w, s->params[i].name);
        loom_json_write_string(w, s->params[i].value);
    }
    loom_json_write_object_end(w);
    loom_json_write_key(w, "rounds");
    loom_json_write_i64(w, s->rounds);
    loom_json_write_key(w, "split");
    loom_json_write_object_begin(w);
    loom_json_write_key(w, "validation");
    loom_json_write_double(w, s->validation);
    loom_json_write_key(w, "seed");
    loom_json_write_u64(w, s->seed);
    loom_json_write_object_end(w);
    loom_json_write_key(w, "gates");
    loom_json_write_object_begin(w);
    const double *g = &s->gates.min_auc;
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(gate_keys); i++)
        if (!isnan(g[i])) {
            loom_json_write_key(w, gate_keys[i]);
            loom_json_write_double(w, g[i]);
        }
    loom_json_write_object_end(w);
    loom_json_write_key(w, "code_version");
    loom_json_write_string(w, s->code_version);
    loom_json_write_key(w, "description");
    loom_json_write_string(w, s->description);
    loom_json_write_object_end(w);
}

/* ---- jobs in memory ---- */

struct hist {
    int64_t round;
    double value;
};

enum job_state { JOB_QUEUED, JOB_SUBMITTED, JOB_RUNNING };

struct trn_job {
    struct loom_work work;
    struct trn_service *trn;
    struct trn_job *next_active, *next_queued;
    char id[LOOM_UUID_LEN + 1];
    struct trn_spec spec;
    uint64_t created_ns; /* monotonic, when the create request arrived */
    atomic_bool cancel;
    bool stopped; /* the service drained while it ran */
    /* under trn->sched.mu */
    enum job_state state;
    int64_t round, rounds, started_ms;
    char metric[64];
    struct hist *history;
    size_t nhistory, cap;
    /* the job thread's own */
    uint64_t last_persist_ns;
};

static void job_free(struct trn_job *job)
{
    trn_spec_release(&job->spec);
    free(job->history);
    free(job);
}

static struct trn_job *find_active(struct trn_sched *s, const char *id)
{
    for (struct trn_job *j = s->active; j; j = j->next_active)
        if (strcmp(j->id, id) == 0)
            return j;
    return NULL;
}

static void unlink_active(struct trn_sched *s, struct trn_job *job)
{
    for (struct trn_job **p = &s->active; *p; p = &(*p)->next_active)
        if (*p == job) {
            *p = job->next_active;
            return;
        }
}

static bool unlink_queued(struct trn_sched *s, struct trn_job *job)
{
    struct trn_job *prev = NULL;
    for (struct trn_job *j = s->queue; j; prev = j, j = j->next_queued)
        if (j == job) {
            if (prev)
                prev->next_queued = j->next_queued;
            else
                s->queue = j->next_queued;
            if (s->queue_tail == j)
                s->queue_tail = prev;
            return true;
        }
    return false;
}

static size_t queued_count(const struct trn_sched *s)
{
    size_t n = 0;
    for (const struct trn_job *j = s->queue; j; j = j->next_queued)
        n++;
    return n;
}

/* The history as a JSON array of {round, value}. Under the scheduler's lock. */
static void history_json(struct loom_json_writer *w, const struct hist *h, size_t n)
{
    loom_json_write_array_begin(w);
    for (size_t i = 0; i < n; i++) {
        loom_json_write_object_begin(w);
        loom_json_write_key(w, "round");
        loom_json_write_i64(w, h[i].round);
        loom_json_write_key(w, "value");
        if (isfinite(h[i].value))
            loom_json_write_double(w, h[i].value);
        else
            loom_json_write_null(w);
        loom_json_write_object_end(w);
    }
    loom_json_write_array_end(w);
}

static void job_work(struct loom_work *w);
static void job_done(struct loom_work *w, loom_err status);

static void update_gauges(struct trn_service *trn)
{
    loom_gauge_set(trn->g_running, (double)trn->sched.running);
    loom_gauge_set(trn->g_queued, (double)queued_count(&trn->sched));
}

/* Start queued jobs while there are free slots. Under the scheduler's lock. */
static void pump_locked(struct trn_service *trn)
{
    struct trn_sched *s = &trn->sched;
    /* A draining service starts nothing: what waits is marked failed at shutdown. */
    while (s->running < trn->max_jobs && s->queue && !loom_svc_is_draining(trn->svc)) {
        struct trn_job *job = s->queue;
        s->queue = job->next_queued;
        if (!s->queue)
            s->queue_tail = NULL;
        job->state = JOB_SUBMITTED;
        s->running++;
        if (loom_pool_submit(trn->train_pool, trn->loop, &job->work, job_work, job_done)) {
            /* Unbounded pool: only while it is being freed. The job stays queued in the store
             * and is marked failed at shutdown. */
            s->running--;
            job->state = JOB_QUEUED;
            break;
        }
    }
    update_gauges(trn);
}

static void enqueue(struct trn_service *trn, struct trn_job *job)
{
    struct trn_sched *s = &trn->sched;
    pthread_mutex_lock(&s->mu);
    job->next_active = s->active;
    s->active = job;
    job->state = JOB_QUEUED;
    if (s->queue_tail)
        s->queue_tail->next_queued = job;
    else
        s->queue = job;
    s->queue_tail = job;
    pump_locked(trn);
    pthread_mutex_unlock(&s->mu);
}

/* ---- store records ---- */

struct job_row {
    char id[LOOM_UUID_LEN + 1];
    char status[16];
    char model[128], dataset[80], backend[16], objective[64], metric[64], model_digest[80];
    char *spec, *history, *report, *error;
    int64_t created, started, trained, finished, round, rounds, registry_version;
    double metric_last; /* NaN when none */
    bool has_version;
};

static void job_row_release(struct job_row *r)
{
    free(r->spec);
    free(r->history);
    free(r->report);
    free(r->error);
    memset(r, 0, sizeof(*r));
}

#define JOB_COLUMNS                                                                              \
    "id, status, model, dataset, backend, objective, spec, created_at, started_at, trained_at, " \
    "finished_at, round, rounds, metric, metric_last, history, report, registry_version, "       \
    "model_digest, error"
#define JOB_SUMMARY_COLUMNS                                                                \
    "id, status, model, dataset, backend, objective, created_at, started_at, trained_at, " \
    "finished_at, round, rounds, metric, metric_last, registry_version, model_digest, error"

static void col_str(const struct loom_sql_row *row, const char *name, char *out, size_t cap)
{
    const struct loom_sql_value *v = loom_sql_col(row, name);
    out[0] = '\0';
    if (v && v->type == LOOM_SQL_TEXT)
        snprintf(out, cap, "%.*s", LOOM_STR_FMT(v->s));
}

static char *col_dup(const struct loom_sql_row *row, const char *name)
{
    const struct loom_sql_value *v = loom_sql_col(row, name);
    return v && v->type == LOOM_SQL_TEXT ? loom_str_dup(v->s) : NULL;
}

static int64_t col_int(const struct loom_sql_row *row, const char *name, bool *present)
{
    const struct loom_sql_value *v = loom_sql_col(row, name);
    if (present)
        *present = v && v->type == LOOM_SQL_INT;
    return v && v->type == LOOM_SQL_INT ? v->i : 0;
}

struct rows {
    struct job_row *items;
    size_t n, cap;
};

static loom_err job_row_cb(const struct loom_sql_row *row, void *arg)
{
    struct rows *rs = arg;
    if (rs->n == rs->cap) {
        rs->cap = rs->cap ? rs->cap * 2 : 8;
        rs->items = loom_realloc(rs->items, rs->cap * sizeof(*rs->items));
    }
    struct job_row *r = &rs->items[rs->n++];
    memset(r, 0, sizeof(*r));
    col_str(row, "id", r->id, sizeof(r->id));
    col_str(row, "status", r->status, sizeof(r->status));
    col_str(row, "model", r->model, sizeof(r->model));
    col_str(row, "dataset", r->dataset, sizeof(r->dataset));
    col_str(row, "backend", r->backend, sizeof(r->backend));
    col_str(row, "objective", r->objective, sizeof(r->objective));
    col_str(row, "metric", r->metric, sizeof(r->metric));
    col_str(row, "model_digest", r->model_digest, sizeof(r->model_digest));
    r->spec = col_dup(row, "spec");
    r->history = col_dup(row, "history");
    r->report = col_dup(row, "report");
    r->error = col_dup(row, "error");
    r->created = col_int(row, "created_at", NULL);
    r->started = col_int(row, "started_at", NULL);
    r->trained = col_int(row, "trained_at", NULL);
    r->finished = col_int(row, "finished_at", NULL);
    r->round = col_int(row, "round", NULL);
    r->rounds = col_int(row, "rounds", NULL);
    r->registry_version = col_int(row, "registry_version", &r->has_version);
    const struct loom_sql_value *ml = loom_sql_col(row, "metric_last");
    r->metric_last = ml && ml->type == LOOM_SQL_REAL ? ml->r : NAN;
    return LOOM_OK;
}

static void rows_release(struct rows *rs)
{
    for (size_t i = 0; i < rs->n; i++)
        job_row_release(&rs->items[i]);
    free(rs->items);
}

static loom_err load_job(struct trn_service *trn, const char *id, struct job_row *out,
                         struct loom_error *err)
{
    struct rows rs = { 0 };
    struct loom_sql_value p[] = { LOOM_SQL_CSTR_V(id) };
    loom_err e = trn_exec(trn->store, "SELECT " JOB_COLUMNS " FROM trn_jobs WHERE id = $1", p, 1,
                          job_row_cb, &rs, NULL, err);
    if (!e && !rs.n)
        e = LOOM_ENOTFOUND;
    if (!e) {
        *out = rs.items[0];
        rs.items[0] = (struct job_row){ 0 };
    }
    rows_release(&rs);
    return e;
}

/* The job as JSON; `full` adds spec, history and report. Live progress of a job this process
 * is running replaces the stored one. */
static void job_json(struct trn_service *trn, struct loom_json_writer *w, const struct job_row *r,
                     bool full, bool with_history)
{
    int64_t round = r->round, rounds = r->rounds, started = r->started;
    char metric[64];
    snprintf(metric, sizeof(metric), "%s", r->metric);
    bool cancel_requested = false;
    struct loom_buf live_hist;
    loom_buf_init(&live_hist, 0);
    bool live = false;
    double last = r->metric_last;
    pthread_mutex_lock(&trn->sched.mu);
    struct trn_job *job = find_active(&trn->sched, r->id);
    if (job && strcmp(r->status, "running") == 0 && job->state == JOB_RUNNING) {
        live = true;
        round = job->round;
        rounds = job->rounds;
        if (job->started_ms)
            started = job->started_ms;
        if (job->metric[0])
            snprintf(metric, sizeof(metric), "%s", job->metric);
        if (job->nhistory)
            last = job->history[job->nhistory - 1].value;
        if (full && with_history) {
            struct loom_json_writer hw;
            loom_json_writer_init(&hw, &live_hist);
            history_json(&hw, job->history, job->nhistory);
            loom_json_writer_finish(&hw);
        }
    }
    if (job)
        cancel_requested = atomic_load(&job->cancel);
    pthread_mutex_unlock(&trn->sched.mu);

    loom_json_write_object_begin(w);
    loom_json_write_key(w, "id");
    loom_json_write_string(w, r->id);
    loom_json_write_key(w, "status");
    loom_json_write_string(w, r->status);
    loom_json_write_key(w, "model");
    loom_json_write_string(w, r->model);
    loom_json_write_key(w, "dataset");
    loom_json_write_string(w, r->dataset);
    loom_json_write_key(w, "backend");
    loom_json_write_string(w, r->backend);
    loom_json_write_key(w, "objective");
    loom_json_write_string(w, r->objective);
    trn_write_time(w, "created_at", r->created);
    trn_write_time(w, "started_at", started);
    trn_write_time(w, "trained_at", r->trained);
    trn_write_time(w, "finished_at", r->finished);
    loom_json_write_key(w, "progress");
    loom_json_write_object_begin(w);
    loom_json_write_key(w, "round");
    loom_json_write_i64(w, round);
    loom_json_write_key(w, "rounds");
    loom_json_write_i64(w, rounds);
    if (strcmp(r->status, "running") == 0 && started > 0) {
        int64_t elapsed = LOOM_MAX(trn_now_ms() - started, (int64_t)0);
        loom_json_write_key(w, "elapsed_ms");
        loom_json_write_i64(w, elapsed);
        loom_json_write_key(w, "eta_ms");
        if (round > 0)
            loom_json_write_i64(
                w, (int64_t)((double)elapsed / (double)round * (double)(rounds - round)));
        else
            loom_json_write_null(w);
    }
    loom_json_write_object_end(w);
    loom_json_write_key(w, "metric");
    if (metric[0]) {
        loom_json_write_object_begin(w);
        loom_json_write_key(w, "name");
        char name[80];
        snprintf(name, sizeof(name), "validation-%s", metric);
        loom_json_write_string(w, name);
        if (full && with_history) {
            loom_json_write_key(w, "history");
            if (live)
                loom_json_write_raw(w, loom_buf_str(&live_hist));
            else if (r->history)
                loom_json_write_raw(w, loom_str_cstr(r->history));
            else
                loom_json_write_raw(w, LOOM_STR("[]"));
        }
        if (isfinite(last)) {
            loom_json_write_key(w, "last");
            loom_json_write_double(w, last);
        }
        loom_json_write_object_end(w);
    } else {
        loom_json_write_null(w);
    }
    if (cancel_requested && strcmp(r->status, "running") == 0) {
        loom_json_write_key(w, "cancel_requested");
        loom_json_write_bool(w, true);
    }
    loom_json_write_key(w, "registry");
    if (r->has_version) {
        loom_json_write_object_begin(w);
        loom_json_write_key(w, "model");
        loom_json_write_string(w, r->model);
        loom_json_write_key(w, "version");
        loom_json_write_i64(w, r->registry_version);
        loom_json_write_key(w, "status");
        loom_json_write_string(w, strcmp(r->status, "succeeded") == 0 ? "ready" : "rejected");
        loom_json_write_object_end(w);
    } else {
        loom_json_write_null(w);
    }
    loom_json_write_key(w, "model_digest");
    loom_json_write_string(w, r->model_digest[0] ? r->model_digest : NULL);
    loom_json_write_key(w, "error");
    loom_json_write_string(w, r->error);
    if (full) {
        loom_json_write_key(w, "spec");
        loom_json_write_raw(w, loom_str_cstr(r->spec ? r->spec : "null"));
        loom_json_write_key(w, "report");
        loom_json_write_raw(w, loom_str_cstr(r->report ? r->report : "null"));
    }
    loom_json_write_object_end(w);
    loom_buf_release(&live_hist);
}

/* ---- idempotency ---- */

enum idem { IDEM_PROCEED, IDEM_REPLAY, IDEM_MISMATCH, IDEM_INFLIGHT };

struct idem_tx {
    const char *key, *hash;
    enum idem result;
    int status;
    struct loom_buf *body;
    /* the row read */
    bool found;
    char row_hash[LOOM_SHA256_HEX], state[16];
    int64_t row_status, created;
};

static loom_err idem_row(const struct loom_sql_row *row, void *arg)
{
    struct idem_tx *t = arg;
    t->found = true;
    col_str(row, "request_hash", t->row_hash, sizeof(t->row_hash));
    col_str(row, "state", t->state, sizeof(t->state));
    t->row_status = col_int(row, "status", NULL);
    t->created = col_int(row, "created_at", NULL);
    const struct loom_sql_value *v = loom_sql_col(row, "response");
    loom_buf_reset(t->body);
    if (v && v->type == LOOM_SQL_TEXT)
        loom_buf_append_str(t->body, v->s);
    return LOOM_OK;
}

static loom_err idem_begin_tx(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct idem_tx *t = arg;
    int64_t now = trn_now_ms();
    t->found = false;
    struct loom_sql_value k[] = { LOOM_SQL_CSTR_V(t->key) };
    loom_err e = loom_db_exec(db,
                              "SELECT request_hash, state, status, response, created_at FROM "
                              "trn_idempotency WHERE idem_key = $1",
                              k, 1, idem_row, t, NULL, err);
    if (e)
        return e;
    bool expired =
        t->found && (t->created < now - IDEM_TTL_MS ||
                     (strcmp(t->state, "in_flight") == 0 && t->created < now - IDEM_ABANDON_MS));
    if (expired) {
        if ((e = loom_db_exec(db, "DELETE FROM trn_idempotency WHERE idem_key = $1", k, 1, NULL,
                              NULL, NULL, err)))
            return e;
        t->found = false;
    }
    if (!t->found) {
        struct loom_sql_value p[] = { LOOM_SQL_CSTR_V(t->key), LOOM_SQL_CSTR_V(t->hash),
                                      LOOM_SQL_INT_V(now) };
        t->result = IDEM_PROCEED;
        return loom_db_exec(db,
                            "INSERT INTO trn_idempotency (idem_key, request_hash, state, "
                            "created_at) VALUES ($1, $2, 'in_flight', $3)",
                            p, 3, NULL, NULL, NULL, err);
    }
    if (strcmp(t->row_hash, t->hash) != 0)
        t->result = IDEM_MISMATCH;
    else if (strcmp(t->state, "in_flight") == 0)
        t->result = IDEM_INFLIGHT;
    else {
        t->result = IDEM_REPLAY;
        t->status = (int)t->row_status;
    }
    return LOOM_OK;
}

static loom_err idem_begin(struct loom_store *s, struct idem_tx *t, struct loom_error *err)
{
    loom_err e = loom_store_tx(s, idem_begin_tx, t, err);
    if (e == LOOM_ECONFLICT) /* another process claimed it between our read and insert */
        e = loom_store_tx(s, idem_begin_tx, t, err);
    return e;
}

static void idem_forget(struct loom_store *s, const char *key)
{
    struct loom_error err = { 0 };
    struct loom_sql_value k[] = { LOOM_SQL_CSTR_V(key) };
    trn_exec(s, "DELETE FROM trn_idempotency WHERE idem_key = $1 AND state = 'in_flight'", k, 1,
             NULL, NULL, NULL, &err);
}

/* ---- POST /api/v1/training-jobs ---- */

struct create_args {
    struct trn_spec spec;
    bool has_key;
    char key[256];
    char hash[LOOM_SHA256_HEX];
};

static void create_args_release(void *arg)
{
    struct create_args *a = arg;
    trn_spec_release(&a->spec);
}

struct insert_tx {
    const char *id, *key;
    const struct trn_spec *spec;
    struct loom_str spec_json, body;
    int64_t now;
};

static loom_err insert_tx(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct insert_tx *t = arg;
    const struct trn_spec *s = t->spec;
    struct loom_sql_value p[] = {
        LOOM_SQL_CSTR_V(t->id),
        LOOM_SQL_CSTR_V(s->model),
        LOOM_SQL_CSTR_V(s->dataset),
        LOOM_SQL_CSTR_V(s->backend == TRN_BACKEND_XGBOOST ? "xgboost" : "linear"),
        LOOM_SQL_CSTR_V(s->objective),
        LOOM_SQL_TEXT_V(t->spec_json),
        LOOM_SQL_INT_V(t->now),
        LOOM_SQL_INT_V(s->rounds),
    };
    loom_err e = loom_db_exec(db,
                              "INSERT INTO trn_jobs (id, status, model, dataset, backend, "
                              "objective, spec, created_at, round, rounds, updated_at) VALUES "
                              "($1, 'queued', $2, $3, $4, $5, $6, $7, 0, $8, $7)",
                              p, LOOM_ARRAY_SIZE(p), NULL, NULL, NULL, err);
    if (e || !t->key)
        return e;
    struct loom_sql_value q[] = { LOOM_SQL_CSTR_V(t->key), LOOM_SQL_TEXT_V(t->body) };
    return loom_db_exec(db,
                        "UPDATE trn_idempotency SET state = 'done', status = 201, response = $2 "
                        "WHERE idem_key = $1",
                        q, 2, NULL, NULL, NULL, err);
}

/* Check a parsed spec against its dataset and libxgboost, as a create does. *client tells a
 * spec that can never be trained (with `field` and err) from a store failure. */
static loom_err check_spec(struct trn_service *trn, struct trn_spec *spec, char *field,
                           size_t field_cap, bool *client, struct loom_error *err)
{
    struct trn_dataset ds = { 0 };
    struct loom_db *db;
    *client = false;
    loom_err e = loom_store_acquire(trn->store, &db, err);
    if (e)
        return e;
    e = trn_dataset_get(db, spec->dataset, &ds, err);
    loom_store_release(trn->store, db);
    if (e == LOOM_ENOTFOUND) {
        *client = true;
        snprintf(field, field_cap, "dataset");
        return loom_error_set(err, LOOM_EINVAL,
                              "no dataset %s: upload it first (POST /api/v1/datasets, or loom "
                              "datasets push FILE)",
                              spec->dataset);
    }
    if (e)
        return e;
    e = trn_spec_check(spec, &ds, field, field_cap, err);
    if (!e && spec->backend == TRN_BACKEND_XGBOOST)
        e = trn_xgb_check_params(spec, spec->nfeatures, field, field_cap, err);
    trn_dataset_release(&ds);
    *client = e != LOOM_OK;
    return e;
}

/* A job about to be recorded: the job (taking the spec over), its row's insert, and the answer
 * to a create (its record as JSON). */
struct new_job {
    struct trn_job *job;
    struct loom_buf spec_json, body;
    struct insert_tx t;
};

static void new_job_init(struct new_job *nj, struct trn_service *trn, struct trn_spec *spec,
                         uint64_t created_ns)
{
    struct trn_job *job = loom_new(struct trn_job);
    job->trn = trn;
    loom_uuid7(job->id);
    job->created_ns = created_ns;
    job->spec = *spec;
    memset(spec, 0, sizeof(*spec));
    nj->job = job;
    loom_buf_init(&nj->spec_json, 0);
    loom_buf_init(&nj->body, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &nj->spec_json);
    trn_spec_json(&w, &job->spec);
    loom_json_writer_finish(&w);
    int64_t now = trn_now_ms();
    nj->t = (struct insert_tx){
        .id = job->id, .spec = &job->spec, .spec_json = loom_buf_str(&nj->spec_json), .now = now
    };
}

/* The answer to a create: after the id is final (an event's job takes a derived one). */
static void new_job_body(struct new_job *nj)
{
    struct trn_job *job = nj->job;
    struct job_row row = { .created = nj->t.now, .rounds = job->spec.rounds, .metric_last = NAN };
    snprintf(row.id, sizeof(row.id), "%s", job->id);
    snprintf(row.status, sizeof(row.status), "queued");
    snprintf(row.model, sizeof(row.model), "%s", job->spec.model);
    snprintf(row.dataset, sizeof(row.dataset), "%s", job->spec.dataset);
    snprintf(row.backend, sizeof(row.backend), "%s",
             job->spec.backend == TRN_BACKEND_XGBOOST ? "xgboost" : "linear");
    snprintf(row.objective, sizeof(row.objective), "%s", job->spec.objective);
    row.spec = nj->spec_json.data;
    loom_buf_reset(&nj->body);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &nj->body);
    job_json(job->trn, &w, &row, true, true);
    loom_json_writer_finish(&w);
    nj->t.body = loom_buf_str(&nj->body);
}

static void new_job_release(struct new_job *nj, bool free_job)
{
    loom_buf_release(&nj->spec_json);
    loom_buf_release(&nj->body);
    if (free_job)
        job_free(nj->job);
}

static void queued_log(const struct trn_job *job, const char *from)
{
    LOOM_LOG_KV(LOOM_LOG_INFO, "training job queued", LOOM_KV_CSTR("job", job->id),
                LOOM_KV_CSTR("from", from), LOOM_KV_CSTR("model", job->spec.model),
                LOOM_KV_CSTR("dataset", job->spec.dataset),
                LOOM_KV_CSTR("objective", job->spec.objective),
                LOOM_KV_INT("rounds", job->spec.rounds));
}

static void op_job_create(struct trn_op *op)
{
    struct create_args *a = op->args;
    struct trn_service *trn = op->trn;
    struct loom_error err = { 0 };
    loom_err e;
    if (a->has_key) {
        struct loom_buf stored;
        loom_buf_init(&stored, 0);
        struct idem_tx t = { .key = a->key, .hash = a->hash, .body = &stored };
        if ((e = idem_begin(trn->store, &t, &err))) {
            loom_buf_release(&stored);
            trn_op_store_error(op, e, &err);
            return;
        }
        switch (t.result) {
        case IDEM_PROCEED:
            loom_buf_release(&stored);
            break;
        case IDEM_REPLAY:
            trn_op_json(op, t.status, &stored);
            loom_buf_release(&stored);
            return;
        case IDEM_MISMATCH:
            loom_buf_release(&stored);
            trn_op_problem(op, 422, "Idempotency-Key",
                           "this Idempotency-Key was used with a different request body");
            return;
        case IDEM_INFLIGHT:
            loom_buf_release(&stored);
            trn_op_problem(op, 409, "Idempotency-Key",
                           "a request with this Idempotency-Key is still being processed");
            return;
        }
    }
    char field[128] = "";
    bool client = false;
    if ((e = check_spec(trn, &a->spec, field, sizeof(field), &client, &err))) {
        if (!client)
            goto store_error;
        trn_op_problem(op, 400, field, "%s", err.msg);
        goto client_error;
    }
    /* Record the job and, with a key, its answer, in one transaction. */
    struct new_job nj;
    new_job_init(&nj, trn, &a->spec, op->req->start_ns);
    new_job_body(&nj);
    nj.t.key = a->has_key ? a->key : NULL;
    e = loom_store_tx(trn->store, insert_tx, &nj.t, &err);
    if (e) {
        new_job_release(&nj, true);
        goto store_error;
    }
    queued_log(nj.job, "api");
    snprintf(op->location, sizeof(op->location), "/api/v1/training-jobs/%s", nj.job->id);
    trn_op_json(op, 201, &nj.body);
    enqueue(trn, nj.job);
    new_job_release(&nj, false);
    return;
store_error:
    trn_op_store_error(op, e, &err);
client_error:
    if (a->has_key)
        idem_forget(trn->store, a->key);
}

void trn_h_job_create(struct loom_http_req *req)
{
    struct create_args *a = loom_arena_new(req->arena, struct create_args);
    char field[128];
    struct loom_error err = { 0 };
    struct loom_str key = loom_http_req_header(req, "idempotency-key");
    if (key.ptr) {
        bool ok = key.len >= 1 && key.len < sizeof(a->key);
        for (size_t i = 0; ok && i < key.len; i++)
            ok = key.ptr[i] > 0x20 && key.ptr[i] < 0x7f;
        if (!ok) {
            trn_problem(req, 400, "Idempotency-Key",
                        "Idempotency-Key must be 1 to 255 visible ASCII characters");
            return;
        }
        a->has_key = true;
        snprintf(a->key, sizeof(a->key), "%.*s", LOOM_STR_FMT(key));
        uint8_t d[LOOM_SHA256_LEN];
        loom_sha256(req->body.ptr, req->body.len, d);
        loom_hex(d, sizeof(d), a->hash);
    }
    if (trn_spec_parse(req->body.ptr, req->body.len, &a->spec, field, sizeof(field), &err)) {
        trn_problem(req, 400, field, "%s", err.msg);
        return;
    }
    loom_arena_add_cleanup(req->arena, create_args_release, a);
    trn_op_submit(trn_op_new(req, op_job_create, a));
}

/* ---- jobs requested by events (loom.training.requested) ---- */

loom_err trn_job_from_event(struct trn_service *trn, struct loom_str event_id,
                            struct loom_str spec_json, char *job_id, bool *duplicate, char *field,
                            size_t field_cap, struct loom_error *err)
{
    struct trn_spec spec = { 0 };
    *duplicate = false;
    field[0] = '\0';
    if (trn_spec_parse(spec_json.ptr, spec_json.len, &spec, field, field_cap, err)) {
        trn_spec_release(&spec);
        return LOOM_EINVAL;
    }
    bool client = false;
    loom_err e = check_spec(trn, &spec, field, field_cap, &client, err);
    if (e) {
        trn_spec_release(&spec);
        return client ? LOOM_EINVAL : e;
    }
    struct new_job nj;
    new_job_init(&nj, trn, &spec, loom_now_ns());
    /* The job's id derives from the event's, so that whoever requested it can find it. */
    loom_event_id_derive(LOOM_STR("loom.training.requested"), event_id, nj.job->id);
    nj.t.id = nj.job->id;
    snprintf(job_id, LOOM_UUID_LEN + 1, "%s", nj.job->id);
    e = loom_consume_once(trn->store, "trainer", event_id, insert_tx, &nj.t, duplicate, err);
    if (e || *duplicate) {
        new_job_release(&nj, true);
        return e;
    }
    queued_log(nj.job, "event");
    enqueue(trn, nj.job);
    new_job_release(&nj, false);
    return LOOM_OK;
}

/* ---- GET /api/v1/training-jobs[/{id}] ---- */

struct list_args {
    char id[LOOM_UUID_LEN + 1];
    int64_t limit;
    char cursor[LOOM_UUID_LEN + 1];
    char status[16];
    bool no_history; /* ?history=false */
};

static const char *const statuses[] = { "queued",   "running", "succeeded",
                                        "rejected", "failed",  "cancelled" };

static void op_job_get(struct trn_op *op)
{
    struct list_args *a = op->args;
    struct loom_error err = { 0 };
    struct job_row r;
    loom_err e = load_job(op->trn, a->id, &r, &err);
    if (e == LOOM_ENOTFOUND) {
        trn_op_problem(op, 404, "id", "no training job %s", a->id);
        return;
    }
    if (e) {
        trn_op_store_error(op, e, &err);
        return;
    }
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    job_json(op->trn, &w, &r, true, !a->no_history);
    loom_json_writer_finish(&w);
    job_row_release(&r);
    trn_op_json(op, 200, &b);
}

static bool id_param(struct loom_http_req *req, char *out)
{
    struct loom_str id = loom_http_req_param(req, "id");
    if (!loom_uuid_valid(id)) {
        trn_problem(req, 400, "id", "a training job id is a UUID (as POST returned it)");
        return false;
    }
    snprintf(out, LOOM_UUID_LEN + 1, "%.*s", LOOM_STR_FMT(id));
    return true;
}

void trn_h_job_get(struct loom_http_req *req)
{
    struct list_args *a = loom_arena_new(req->arena, struct list_args);
    struct loom_str v;
    if (loom_http_req_query(req, "history", &v))
        a->no_history = loom_str_eq_cstr(v, "false") || loom_str_eq_cstr(v, "0");
    if (id_param(req, a->id))
        trn_op_submit(trn_op_new(req, op_job_get, a));
}

static void op_job_list(struct trn_op *op)
{
    struct list_args *a = op->args;
    struct loom_error err = { 0 };
    struct rows rs = { 0 };
    char sql[512];
    struct loom_sql_value p[3];
    size_t np = 0;
    int len = snprintf(sql, sizeof(sql), "SELECT " JOB_SUMMARY_COLUMNS " FROM trn_jobs");
    const char *sep = " WHERE ";
    if (a->cursor[0]) {
        p[np++] = LOOM_SQL_CSTR_V(a->cursor);
        len += snprintf(sql + len, sizeof(sql) - (size_t)len, "%sid < $%zu", sep, np);
        sep = " AND ";
    }
    if (a->status[0]) {
        p[np++] = LOOM_SQL_CSTR_V(a->status);
        len += snprintf(sql + len, sizeof(sql) - (size_t)len, "%sstatus = $%zu", sep, np);
    }
    p[np++] = LOOM_SQL_INT_V(a->limit + 1);
    snprintf(sql + len, sizeof(sql) - (size_t)len, " ORDER BY id DESC LIMIT $%zu", np);
    loom_err e = trn_exec(op->trn->store, sql, p, np, job_row_cb, &rs, NULL, &err);
    if (e) {
        rows_release(&rs);
        trn_op_store_error(op, e, &err);
        return;
    }
    bool more = rs.n > (size_t)a->limit;
    size_t n = more ? (size_t)a->limit : rs.n;
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "items");
    loom_json_write_array_begin(&w);
    for (size_t i = 0; i < n; i++)
        job_json(op->trn, &w, &rs.items[i], false, false);
    loom_json_write_array_end(&w);
    loom_json_write_key(&w, "next_cursor");
    loom_json_write_string(&w, more ? rs.items[n - 1].id : NULL);
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
    rows_release(&rs);
    trn_op_json(op, 200, &b);
}

void trn_h_job_list(struct loom_http_req *req)
{
    struct list_args *a = loom_arena_new(req->arena, struct list_args);
    if (!trn_query_limit(req, &a->limit))
        return;
    struct loom_str v;
    if (loom_http_req_query(req, "cursor", &v)) {
        if (!loom_uuid_valid(v)) {
            trn_problem(req, 400, "cursor", "cursor is not one this API gave out");
            return;
        }
        snprintf(a->cursor, sizeof(a->cursor), "%.*s", LOOM_STR_FMT(v));
    }
    if (loom_http_req_query(req, "status", &v)) {
        bool ok = false;
        for (size_t i = 0; i < LOOM_ARRAY_SIZE(statuses); i++)
            ok |= loom_str_eq_cstr(v, statuses[i]);
        if (!ok) {
            trn_problem(req, 400, "status",
                        "status must be queued, running, succeeded, rejected, failed or "
                        "cancelled");
            return;
        }
        snprintf(a->status, sizeof(a->status), "%.*s", LOOM_STR_FMT(v));
    }
    trn_op_submit(trn_op_new(req, op_job_list, a));
}

/* ---- POST /api/v1/training-jobs/{id}/cancel ---- */

static void op_job_cancel(struct trn_op *op)
{
    struct list_args *a = op->args;
    struct trn_service *trn = op->trn;
    struct loom_error err = { 0 };
    struct trn_job *removed = NULL;
    bool known = false;
    pthread_mutex_lock(&trn->sched.mu);
    struct trn_job *job = find_active(&trn->sched, a->id);
    if (job) {
        known = true;
        atomic_store(&job->cancel, true);
        if (job->state == JOB_QUEUED && unlink_queued(&trn->sched, job)) {
            unlink_active(&trn->sched, job);
            removed = job;
            update_gauges(trn);
        }
    }
    pthread_mutex_unlock(&trn->sched.mu);
    int64_t now = trn_now_ms(), changes = 0;
    struct loom_sql_value p[] = { LOOM_SQL_CSTR_V(a->id), LOOM_SQL_INT_V(now) };
    loom_err e = trn_exec(trn->store,
                          "UPDATE trn_jobs SET status = 'cancelled', finished_at = $2, "
                          "updated_at = $2, error = 'cancelled by request' WHERE id = $1 AND "
                          "status = 'queued'",
                          p, 2, NULL, NULL, &changes, &err);
    if (removed) {
        if (!e)
            loom_counter_inc(loom_counter_get(trn->f_jobs, (const char *const[]){ "cancelled" }));
        job_free(removed);
    }
    if (e) {
        trn_op_store_error(op, e, &err);
        return;
    }
    struct job_row r;
    e = load_job(trn, a->id, &r, &err);
    if (e == LOOM_ENOTFOUND) {
        trn_op_problem(op, 404, "id", "no training job %s", a->id);
        return;
    }
    if (e) {
        trn_op_store_error(op, e, &err);
        return;
    }
    bool running = strcmp(r.status, "running") == 0;
    if (!changes && !(running && known)) {
        if (strcmp(r.status, "cancelled") == 0 || running) {
            /* Already cancelled, or running in another process: nothing more to do here. */
        } else {
            trn_op_problem(op, 409, NULL, "training job %s is already %s", a->id, r.status);
            job_row_release(&r);
            return;
        }
    }
    if (changes)
        LOOM_LOG_KV(LOOM_LOG_INFO, "training job cancelled", LOOM_KV_CSTR("job", a->id));
    else if (running && known)
        LOOM_LOG_KV(LOOM_LOG_INFO, "training job cancellation requested",
                    LOOM_KV_CSTR("job", a->id));
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    job_json(trn, &w, &r, false, false);
    loom_json_writer_finish(&w);
    job_row_release(&r);
    trn_op_json(op, 202, &b);
}

void trn_h_job_cancel(struct loom_http_req *req)
{
    struct list_args *a = loom_arena_new(req->arena, struct list_args);
    if (id_param(req, a->id))
        trn_op_submit(trn_op_new(req, op_job_cancel, a));
}

/* ---- running a job (on the pool) ---- */

struct rng {
    uint64_t s[4];
};

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(struct rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

/* is_val[i] for the n rows: round(n * v) rows chosen by a seeded shuffle (at least one on
 * each side). Returns the number of validation rows. */
static size_t split_rows(size_t n, double v, uint64_t seed, bool *is_val)
{
    struct rng r;
    for (int i = 0; i < 4; i++)
        r.s[i] = splitmix64(&seed);
    size_t *perm = loom_malloc(n * sizeof(*perm));
    for (size_t i = 0; i < n; i++)
        perm[i] = i;
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = (size_t)(rng_next(&r) % (uint64_t)(i + 1));
        size_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    size_t nva = (size_t)llround((double)n * v);
    nva = LOOM_MIN(LOOM_MAX(nva, (size_t)1), n - 1);
    memset(is_val, 0, n * sizeof(*is_val));
    for (size_t i = 0; i < nva; i++)
        is_val[perm[i]] = true;
    free(perm);
    return nva;
}

static void persist_progress(struct trn_job *job)
{
    struct trn_service *trn = job->trn;
    struct loom_buf h;
    loom_buf_init(&h, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &h);
    pthread_mutex_lock(&trn->sched.mu);
    int64_t round = job->round;
    char metric[64];
    snprintf(metric, sizeof(metric), "%s", job->metric);
    double last = job->nhistory ? job->history[job->nhistory - 1].value : NAN;
    history_json(&w, job->history, job->nhistory);
    pthread_mutex_unlock(&trn->sched.mu);
    loom_json_writer_finish(&w);
    struct loom_error err = { 0 };
    struct loom_sql_value p[] = {
        LOOM_SQL_CSTR_V(job->id),     LOOM_SQL_INT_V(round),
        LOOM_SQL_CSTR_V(metric),      LOOM_SQL_TEXT_V(loom_buf_str(&h)),
        LOOM_SQL_INT_V(trn_now_ms()), isfinite(last) ? LOOM_SQL_REAL_V(last) : LOOM_SQL_NULL_V
    };
    loom_err e = trn_exec(trn->store,
                          "UPDATE trn_jobs SET round = $2, metric = $3, history = $4, "
                          "updated_at = $5, metric_last = $6 WHERE id = $1",
                          p, 6, NULL, NULL, NULL, &err);
    if (e)
        LOOM_LOG_KV(LOOM_LOG_WARN, "progress not saved", LOOM_KV_CSTR("job", job->id),
                    LOOM_KV_CSTR("error", err.msg));
    loom_buf_release(&h);
}

static loom_err job_progress(void *arg, int64_t round, int64_t rounds, const char *metric,
                             double value)
{
    struct trn_job *job = arg;
    struct trn_service *trn = job->trn;
    pthread_mutex_lock(&trn->sched.mu);
    job->round = round;
    job->rounds = rounds;
    snprintf(job->metric, sizeof(job->metric), "%s", metric);
    if (job->nhistory == job->cap) {
        job->cap = job->cap ? job->cap * 2 : 64;
        job->history = loom_realloc(job->history, job->cap * sizeof(*job->history));
    }
    job->history[job->nhistory++] = (struct hist){ round, value };
    pthread_mutex_unlock(&trn->sched.mu);
    uint64_t now = loom_now_ns();
    if (now - job->last_persist_ns >= PERSIST_EVERY_NS || round == rounds) {
        job->last_persist_ns = now;
        persist_progress(job);
    }
    if (atomic_load(&job->cancel))
        return LOOM_ECANCELED;
    if (loom_svc_is_draining(trn->svc)) {
        job->stopped = true;
        return LOOM_ECANCELED;
    }
    return LOOM_OK;
}

/* What a run ends with. */
struct outcome {
    const char *status;
    char error[1024];
    struct loom_buf report;
    int64_t trained_ms;
    bool has_version;
    int64_t version;
    char model_digest[8 + LOOM_SHA256_HEX];
};

static void failf(struct outcome *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void failf(struct outcome *o, const char *fmt, ...)
{
    o->status = "failed";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->error, sizeof(o->error), fmt, ap);
    va_end(ap);
}

static bool job_should_stop(void *arg)
{
    struct trn_job *job = arg;
    if (loom_svc_is_draining(job->trn->svc))
        job->stopped = true;
    return job->stopped || atomic_load(&job->cancel);
}

/* A job that stopped early: cancelled, or the service drains. */
static void stopped_outcome(struct trn_job *job, struct outcome *o)
{
    if (job->stopped) {
        failf(o, "%s", TRN_STOPPED_RUNNING);
    } else {
        o->status = "cancelled";
        snprintf(o->error, sizeof(o->error), "cancelled by request");
    }
}

static double ms_between(uint64_t a, uint64_t b)
{
    return b > a ? (double)(b - a) / 1e6 : 0.0;
}

static void run(struct trn_job *job, struct outcome *o)
{
    struct trn_service *trn = job->trn;
    struct trn_spec *spec = &job->spec;
    struct loom_error err = { 0 };
    struct trn_dataset ds = { 0 };
    struct trn_data data = { 0 };
    struct trn_train_out tout = { 0 };
    struct trn_eval ev = { 0 };
    struct loom_model *model = NULL;
    float *xtr = NULL, *ytr = NULL, *xva = NULL, *yva = NULL, *pred = NULL;
    uint32_t *gva = NULL;
    bool *is_val = NULL;
    char *path = NULL;
    loom_buf_init(&tout.info, 0);
    uint64_t t0 = loom_now_ns();
    double queued_ms = ms_between(job->created_ns, t0);

    struct loom_db *db;
    loom_err e = loom_store_acquire(trn->store, &db, &err);
    if (!e) {
        e = trn_dataset_get(db, spec->dataset, &ds, &err);
        loom_store_release(trn->store, db);
    }
    if (e) {
        failf(o, "the dataset %s cannot be read: %s", spec->dataset, err.msg);
        goto out;
    }
    path = trn_dataset_path(trn, spec->dataset + 7);
    if ((e = trn_data_load(path, &ds, spec, job_should_stop, job, &data, &err))) {
        if (e == LOOM_ECANCELED)
            stopped_outcome(job, o);
        else
            failf(o, "loading the dataset failed: %s", err.msg);
        goto out;
    }
    uint64_t t1 = loom_now_ns();

    /* Split. */
    size_t n = data.nrows, f = data.nfeat;
    is_val = loom_malloc(n * sizeof(*is_val));
    size_t nva = split_rows(n, spec->validation, spec->seed, is_val), ntr = n - nva;
    xtr = loom_malloc(loom_mul_size(ntr * f, sizeof(float)));
    ytr = loom_malloc(ntr * sizeof(float));
    xva = loom_malloc(loom_mul_size(nva * f, sizeof(float)));
    yva = loom_malloc(nva * sizeof(float));
    if (data.group)
        gva = loom_malloc(nva * sizeof(*gva));
    for (size_t i = 0, a = 0, b = 0; i < n; i++) {
        if (is_val[i]) {
            memcpy(xva + b * f, data.x + i * f, f * sizeof(float));
            yva[b] = data.y[i];
            if (gva)
                gva[b] = data.group[i];
            b++;
        } else {
            memcpy(xtr + a * f, data.x + i * f, f * sizeof(float));
            ytr[a++] = data.y[i];
        }
    }
    free(data.x); /* the split holds the rows now */
    data.x = NULL;

    /* Train. */
    struct trn_train_in in = {
        .spec = spec,
        .xtr = xtr,
        .ytr = ytr,
        .ntr = ntr,
        .xva = xva,
        .yva = yva,
        .nva = nva,
        .nfeat = f,
        .feature_names = data.feature_names,
        .nthread = trn->nthread,
        .progress = job_progress,
        .arg = job,
    };
    LOOM_LOG_KV(LOOM_LOG_INFO, "training started", LOOM_KV_CSTR("job", job->id),
                LOOM_KV_UINT("train_rows", ntr), LOOM_KV_UINT("validation_rows", nva),
                LOOM_KV_UINT("features", f), LOOM_KV_UINT("threads", trn->nthread));
    e = spec->backend == TRN_BACKEND_XGBOOST ? trn_train_xgb(&in, &tout, &err)
                                             : trn_train_linear(&in, &tout, &err);
    uint64_t t2 = loom_now_ns();
    if (e == LOOM_ECANCELED) {
        stopped_outcome(job, o);
        goto out;
    }
    if (e) {
        failf(o, "training failed: %s", err.msg);
        goto out;
    }
    o->trained_ms = trn_now_ms();
    loom_histogram_observe_ns(trn->h_train, t2 - t1);

    /* Evaluate with the evaluator that will serve the model. */
    if ((e = loom_model_load(tout.format, tout.model, tout.model_len, NULL, &model, &err))) {
        failf(o, "the trained model does not load in loom's evaluator: %s", err.msg);
        goto out;
    }
    const struct loom_model_info *mi = loom_model_info(model);
    pred = loom_malloc(loom_mul_size(nva, mi->num_outputs * sizeof(float)));
    loom_model_predict(model, xva, nva, pred);
    trn_evaluate(spec->task, spec->objective, yva, pred, nva, gva,
                 (const char *const *)data.group_names, data.ngroups, &ev);
    trn_measure_latency(model, xva, nva, f, 1000, &ev);
    trn_apply_gates(&spec->gates, &ev);
    uint64_t t3 = loom_now_ns();

    uint8_t d[LOOM_SHA256_LEN];
    char hex[LOOM_SHA256_HEX];
    loom_sha256(tout.model, tout.model_len, d);
    loom_hex(d, sizeof(d), hex);
    snprintf(o->model_digest, sizeof(o->model_digest), "sha256:%s", hex);
    struct trn_report_in ri = {
        .job_id = job->id,
        .spec = spec,
        .data = &data,
        .ntr = ntr,
        .nva = nva,
        .train = &tout,
        .ev = &ev,
        .model_digest = o->model_digest,
        .model_size = tout.model_len,
        .queued_ms = queued_ms,
        .load_ms = ms_between(t0, t1),
        .train_ms = ms_between(t1, t2),
        .evaluate_ms = ms_between(t2, t3),
    };
    trn_report_json(&o->report, &ri);

    /* The verdict, and the reasons for a rejection. */
    o->status = ev.passed ? "succeeded" : "rejected";
    size_t len = 0;
    for (size_t i = 0; i < ev.ngates; i++) {
        const struct trn_gate_result *g = &ev.gates[i];
        if (g->passed || len >= sizeof(o->error) - 1)
            continue;
        bool max = strncmp(g->name, "max_", 4) == 0;
        len += (size_t)snprintf(o->error + len, sizeof(o->error) - len,
                                isnan(g->value) ? "%sgate %s: the value cannot be computed"
                                                : "%sgate %s: %.4g %s %.4g",
                                len ? "; " : "", g->name, g->value, max ? ">" : "<", g->threshold);
    }

    /* Publish, unless the service is stopping (the registry may be gone already). */
    if (job_should_stop(job) && job->stopped) {
        failf(o, "%s", TRN_STOPPED_RUNNING);
        goto out;
    }
    struct loom_buf meta;
    loom_buf_init(&meta, 0);
    trn_metadata_json(&meta, &ri, loom_buf_str(&o->report));
    struct trn_published pub = { 0 };
    char description[256];
    snprintf(description, sizeof(description), "%s",
             spec->description[0] ? spec->description : "trained by loom's trainer");
    e = trn_publish(trn->registry, job->id, spec->model, description, tout.model, tout.model_len,
                    ev.passed, loom_buf_str(&meta), trn->svc, &pub, &err);
    loom_buf_release(&meta);
    if (e) {
        failf(o,
              "the model was trained and evaluated (%s) but publishing it to the registry "
              "failed: %s",
              ev.passed ? "gates passed" : "gates failed", err.msg);
        goto out;
    }
    o->has_version = true;
    o->version = pub.version;
out:
    trn_eval_release(&ev);
    loom_model_free(model);
    trn_train_out_release(&tout);
    trn_data_release(&data);
    trn_dataset_release(&ds);
    free(path);
    free(is_val);
    free(xtr);
    free(ytr);
    free(xva);
    free(yva);
    free(gva);
    free(pred);
}

static void job_work(struct loom_work *w)
{
    struct trn_job *job = LOOM_CONTAINER_OF(w, struct trn_job, work);
    struct trn_service *trn = job->trn;
    loom_log_set_service("trainer"); /* the training pool is the trainer's own */
    if (atomic_load(&job->cancel))
        return; /* the cancel marked it in the store */
    struct loom_error err = { 0 };
    int64_t now = trn_now_ms(), changes = 0;
    if (loom_svc_is_draining(trn->svc)) {
        struct loom_sql_value q[] = { LOOM_SQL_CSTR_V(job->id), LOOM_SQL_CSTR_V(TRN_STOPPED_QUEUED),
                                      LOOM_SQL_INT_V(now) };
        trn_exec(trn->store,
                 "UPDATE trn_jobs SET status = 'failed', error = $2, finished_at = $3, "
                 "updated_at = $3 WHERE id = $1 AND status = 'queued'",
                 q, 3, NULL, NULL, NULL, &err);
        return;
    }
    struct loom_sql_value p[] = { LOOM_SQL_CSTR_V(job->id), LOOM_SQL_INT_V(now) };
    loom_err e = trn_exec(trn->store,
                          "UPDATE trn_jobs SET status = 'running', started_at = $2, "
                          "updated_at = $2 WHERE id = $1 AND status = 'queued'",
                          p, 2, NULL, NULL, &changes, &err);
    if (e || !changes) {
        if (e)
            LOOM_LOG_KV(LOOM_LOG_ERROR, "training job not started", LOOM_KV_CSTR("job", job->id),
                        LOOM_KV_CSTR("error", err.msg));
        return;
    }
    pthread_mutex_lock(&trn->sched.mu);
    job->state = JOB_RUNNING;
    job->started_ms = now;
    job->rounds = job->spec.rounds;
    pthread_mutex_unlock(&trn->sched.mu);
    job->last_persist_ns = loom_now_ns();

    struct outcome o = { 0 };
    loom_buf_init(&o.report, 0);
    run(job, &o);

    /* The final record, with the full history. */
    struct loom_buf h;
    loom_buf_init(&h, 0);
    struct loom_json_writer hw;
    loom_json_writer_init(&hw, &h);
    pthread_mutex_lock(&trn->sched.mu);
    history_json(&hw, job->history, job->nhistory);
    int64_t round = job->round;
    char metric[64];
    snprintf(metric, sizeof(metric), "%s", job->metric);
    double last = job->nhistory ? job->history[job->nhistory - 1].value : NAN;
    pthread_mutex_unlock(&trn->sched.mu);
    loom_json_writer_finish(&hw);
    int64_t end = trn_now_ms();
    struct loom_sql_value q[] = {
        LOOM_SQL_CSTR_V(job->id),
        LOOM_SQL_CSTR_V(o.status),
        LOOM_SQL_INT_V(end),
        LOOM_SQL_INT_V(round),
        metric[0] ? LOOM_SQL_CSTR_V(metric) : LOOM_SQL_NULL_V,
        LOOM_SQL_TEXT_V(loom_buf_str(&h)),
        o.report.len ? LOOM_SQL_TEXT_V(loom_buf_str(&o.report)) : LOOM_SQL_NULL_V,
        o.has_version ? LOOM_SQL_INT_V(o.version) : LOOM_SQL_NULL_V,
        o.model_digest[0] ? LOOM_SQL_CSTR_V(o.model_digest) : LOOM_SQL_NULL_V,
        o.error[0] ? LOOM_SQL_CSTR_V(o.error) : LOOM_SQL_NULL_V,
        o.trained_ms ? LOOM_SQL_INT_V(o.trained_ms) : LOOM_SQL_NULL_V,
        isfinite(last) ? LOOM_SQL_REAL_V(last) : LOOM_SQL_NULL_V,
    };
    e = trn_exec(
        trn->store,
        "UPDATE trn_jobs SET status = $2, finished_at = $3, updated_at = $3, round = $4, "
        "metric = $5, history = $6, report = $7, registry_version = $8, "
        "model_digest = $9, error = $10, trained_at = $11, metric_last = $12 WHERE id = $1",
        q, LOOM_ARRAY_SIZE(q), NULL, NULL, NULL, &err);
    if (e)
        LOOM_LOG_KV(LOOM_LOG_ERROR, "training job result not saved", LOOM_KV_CSTR("job", job->id),
                    LOOM_KV_CSTR("error", err.msg));
    loom_counter_inc(loom_counter_get(trn->f_jobs, (const char *const[]){ o.status }));
    LOOM_LOG_KV(strcmp(o.status, "failed") == 0 ? LOOM_LOG_WARN : LOOM_LOG_INFO,
                "training job finished", LOOM_KV_CSTR("job", job->id),
                LOOM_KV_CSTR("status", o.status),
                LOOM_KV_CSTR("error", o.error[0] ? o.error : NULL),
                LOOM_KV_INT("version", o.has_version ? o.version : 0));
    loom_buf_release(&h);
    loom_buf_release(&o.report);
}

static void job_done(struct loom_work *w, loom_err status)
{
    LOOM_UNUSED(status);
    struct trn_job *job = LOOM_CONTAINER_OF(w, struct trn_job, work);
    struct trn_service *trn = job->trn;
    pthread_mutex_lock(&trn->sched.mu);
    trn->sched.running--;
    unlink_active(&trn->sched, job);
    pump_locked(trn);
    pthread_mutex_unlock(&trn->sched.mu);
    job_free(job);
}

/* ---- start and stop ---- */

loom_err trn_jobs_recover(struct trn_service *trn, struct loom_error *err)
{
    int64_t now = trn_now_ms(), running = 0, queued = 0;
    struct loom_sql_value p[] = { LOOM_SQL_CSTR_V(TRN_STOPPED_RUNNING), LOOM_SQL_INT_V(now) };
    loom_err e = trn_exec(trn->store,
                          "UPDATE trn_jobs SET status = 'failed', error = $1, finished_at = $2, "
                          "updated_at = $2 WHERE status = 'running'",
                          p, 2, NULL, NULL, &running, err);
    if (e)
        return e;
    struct loom_sql_value q[] = { LOOM_SQL_CSTR_V(TRN_STOPPED_QUEUED), LOOM_SQL_INT_V(now) };
    e = trn_exec(trn->store,
                 "UPDATE trn_jobs SET status = 'failed', error = $1, finished_at = $2, "
                 "updated_at = $2 WHERE status = 'queued'",
                 q, 2, NULL, NULL, &queued, err);
    if (e)
        return e;
    if (running || queued)
        LOOM_LOG_KV(LOOM_LOG_WARN, "jobs of a stopped trainer marked failed",
                    LOOM_KV_INT("running", running), LOOM_KV_INT("queued", queued));
    return LOOM_OK;
}

void trn_jobs_shutdown(struct trn_service *trn)
{
    /* The loops and the pool are gone: jobs still here never ran (or their completion was
     * dropped with the loop). Those still queued in the store will not run now. */
    struct trn_job *job = trn->sched.active;
    while (job) {
        struct trn_job *next = job->next_active;
        struct loom_error err = { 0 };
        struct loom_sql_value p[] = { LOOM_SQL_CSTR_V(job->id), LOOM_SQL_CSTR_V(TRN_STOPPED_QUEUED),
                                      LOOM_SQL_INT_V(trn_now_ms()) };
        trn_exec(trn->store,
                 "UPDATE trn_jobs SET status = 'failed', error = $2, finished_at = $3, "
                 "updated_at = $3 WHERE id = $1 AND status = 'queued'",
                 p, 3, NULL, NULL, NULL, &err);
        job_free(job);
        job = next;
    }
    trn->sched.active = trn->sched.queue = trn->sched.queue_tail = NULL;
}
