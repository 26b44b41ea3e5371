/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Evaluation of a trained model on the validation rows, from the predictions of loom's own
 * evaluator (the code that will serve the model), and the gates that decide whether it ships.
 *
 * Binary tasks: AUC (exact: the Mann-Whitney statistic with average ranks for tied scores),
 * accuracy, confusion matrix and rates at the threshold 0.5 (a score >= 0.5 is a positive), log
 * loss (probabilities clipped to [1e-15, 1 - 1e-15]) and RMSE of the probabilities. Regression:
 * RMSE, MAE, R^2. Fairness, per group of the sensitive attribute: rows, actual positives,
 * predicted positive rate, true-positive rate (TPR, among actual positives) and false-positive
 * rate (FPR, among actual negatives); the equal-opportunity difference is the largest minus the
 * smallest TPR over the groups that have positives (the others are listed as excluded), the
 * demographic-parity difference the largest minus the smallest predicted positive rate over all
 * groups. Latency: single-row predictions, one call per row over the validation rows (cycled to
 * at least 1,000 calls, after 100 warm-up calls), each timed on the monotonic clock.
 */
#include "trainer/trainer.h"

#include <loom/model.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

static double prob_of(const char *objective, float v)
{
    if (strcmp(objective, "binary:logitraw") == 0)
        return (double)loom_model_sigmoid(v);
    return (double)v;
}

struct scored {
    double s;
    float y;
};

static int cmp_scored(const void *a, const void *b)
{
    double x = ((const struct scored *)a)->s, y = ((const struct scored *)b)->s;
    return (x > y) - (x < y);
}

/* Exact, tie-aware AUC; NaN without both classes. */
static double auc(const float *y, const double *p, size_t n)
{
    struct scored *v = loom_malloc((n ? n : 1) * sizeof(*v));
    size_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        v[i] = (struct scored){ isnan(p[i]) ? -INFINITY : p[i], y[i] };
        pos += y[i] > 0.5f;
    }
    size_t neg = n - pos;
    if (!pos || !neg) {
        free(v);
        return NAN;
    }
    qsort(v, n, sizeof(*v), cmp_scored);
    double rank_sum = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && v[j].s == v[i].s)
            j++;
        double avg = ((double)i + 1 + (double)j) / 2.0; /* ranks i+1..j */
        for (size_t k = i; k < j; k++)
            if (v[k].y > 0.5f)
                rank_sum += avg;
        i = j;
    }
    free(v);
    return (rank_sum - (double)pos * ((double)pos + 1) / 2.0) / ((double)pos * (double)neg);
}

void trn_evaluate(enum trn_task task, const char *objective, const float *y, const float *pred,
                  size_t n, const uint32_t *group, const char *const *group_names, size_t ngroups,
                  struct trn_eval *ev)
{
    memset(ev, 0, sizeof(*ev));
    ev->task = task;
    ev->n = n;
    ev->eo_diff = ev->dp_diff = NAN;
    double sse = 0, sae = 0, ybar = 0, sst = 0;
    for (size_t i = 0; i < n; i++)
        ybar += y[i];
    ybar = n ? ybar / (double)n : NAN;
    if (task == TRN_TASK_REGRESSION) {
        for (size_t i = 0; i < n; i++) {
            double d = (double)pred[i] - y[i];
            sse += d * d;
            sae += fabs(d);
            sst += ((double)y[i] - ybar) * ((double)y[i] - ybar);
        }
        ev->rmse = sqrt(sse / (double)n);
        ev->mae = sae / (double)n;
        ev->r2 = sst > 0 ? 1.0 - sse / sst : NAN;
        return;
    }
    double *p = loom_malloc((n ? n : 1) * sizeof(*p));
    double ll = 0;
    uint64_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        p[i] = prob_of(objective, pred[i]);
        bool actual = y[i] > 0.5f, predicted = p[i] >= 0.5;
        pos += actual;
        if (actual && predicted)
            ev->tp++;
        else if (!actual && predicted)
            ev->fp++;
        else if (actual)
            ev->fn++;
        else
            ev->tn++;
        double q = fmin(fmax(p[i], 1e-15), 1.0 - 1e-15);
        ll -= actual ? log(q) : log(1.0 - q);
        sse += (p[i] - y[i]) * (p[i] - y[i]);
    }
    ev->auc = auc(y, p, n);
    ev->accuracy = (double)(ev->tp + ev->tn) / (double)n;
    ev->logloss = ll / (double)n;
    ev->rmse = sqrt(sse / (double)n);
    ev->positive_rate = (double)pos / (double)n;
    ev->predicted_positive_rate = (double)(ev->tp + ev->fp) / (double)n;
    if (group && ngroups) {
        ev->has_fairness = true;
        ev->ngroups = ngroups;
        ev->groups = loom_calloc(ngroups, sizeof(*ev->groups));
        for (size_t g = 0; g < ngroups; g++)
            ev->groups[g].name = loom_strdup(group_names[g]);
        for (size_t i = 0; i < n; i++) {
            struct trn_group *gr = &ev->groups[group[i]];
            bool actual = y[i] > 0.5f, predicted = p[i] >= 0.5;
            gr->count++;
            gr->positives += actual;
            gr->predicted_positive += predicted;
            gr->true_positive += actual && predicted;
            gr->false_positive += !actual && predicted;
        }
        double tmin = INFINITY, tmax = -INFINITY, rmin = INFINITY, rmax = -INFINITY;
        size_t tn = 0, rn = 0;
        for (size_t g = 0; g < ngroups; g++) {
            const struct trn_group *gr = &ev->groups[g];
            if (!gr->count)
                continue;
            double rate = (double)gr->predicted_positive / (double)gr->count;
            rmin = fmin(rmin, rate);
            rmax = fmax(rmax, rate);
            rn++;
            if (gr->positives) {
                double tpr = (double)gr->true_positive / (double)gr->positives;
                tmin = fmin(tmin, tpr);
                tmax = fmax(tmax, tpr);
                tn++;
            }
        }
        if (tn >= 2)
            ev->eo_diff = tmax - tmin;
        if (rn >= 2)
            ev->dp_diff = rmax - rmin;
    }
    free(p);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

void trn_measure_latency(const struct loom_model *model, const float *x, size_t n, size_t nfeat,
                         size_t min_calls, struct trn_eval *ev)
{
    if (!n)
        return;
    const struct loom_model_info *info = loom_model_info(model);
    size_t calls = LOOM_MIN(LOOM_MAX(n, min_calls), (size_t)100000);
    uint64_t *t = loom_malloc(calls * sizeof(*t));
    float *out = loom_malloc(LOOM_MAX(info->num_outputs, (size_t)1) * sizeof(float));
    volatile float sink = 0;
    for (size_t i = 0; i < 100; i++) {
        loom_model_predict(model, x + (i % n) * nfeat, 1, out);
        sink += out[0];
    }
    double total = 0;
    for (size_t i = 0; i < calls; i++) {
        const float *row = x + (i % n) * nfeat;
        uint64_t t0 = loom_now_ns();
        loom_model_predict(model, row, 1, out);
        t[i] = loom_now_ns() - t0;
        sink += out[0];
        total += (double)t[i];
    }
    (void)sink;
    qsort(t, calls, sizeof(*t), cmp_u64);
    /* Nearest rank: the smallest value with at least q of the calls at or below it. */
    size_t i50 = (size_t)ceil(0.50 * (double)calls) - 1,
           i99 = (size_t)ceil(0.99 * (double)calls) - 1;
    ev->latency_calls = calls;
    ev->p50_us = (double)t[i50] / 1e3;
    ev->p99_us = (double)t[i99] / 1e3;
    ev->mean_us = total / (double)calls / 1e3;
    free(t);
    free(out);
}

static void gate(struct trn_eval *ev, const char *name, double threshold, double value, bool max)
{
    if (isnan(threshold))
        return;
    struct trn_gate_result *g = &ev->gates[ev->ngates++];
    g->name = name;
    g->threshold = threshold;
    g->value = value;
    g->passed = !isnan(value) && (max ? value <= threshold : value >= threshold);
    if (!g->passed)
        ev->passed = false;
}

void trn_apply_gates(const struct trn_gates *g, struct trn_eval *ev)
{
    ev->passed = true;
    ev->ngates = 0;
    gate(ev, "min_auc", g->min_auc, ev->auc, false);
    gate(ev, "min_accuracy", g->min_accuracy, ev->accuracy, false);
    gate(ev, "max_rmse", g->max_rmse, ev->rmse, true);
    gate(ev, "max_equal_opportunity_diff", g->max_equal_opportunity_diff, ev->eo_diff, true);
    gate(ev, "max_demographic_parity_diff", g->max_demographic_parity_diff, ev->dp_diff, true);
    gate(ev, "max_p99_latency_us", g->max_p99_latency_us, ev->p99_us, true);
}

void trn_eval_release(struct trn_eval *ev)
{
    for (size_t i = 0; i < ev->ngroups; i++)
        free(ev->groups[i].name);
    free(ev->groups);
    ev->groups = NULL;
    ev->ngroups = 0;
}

/* A number, or null when it is not defined (NaN). */
static void num(struct loom_json_writer *w, const char *key, double v)
{
    loom_json_write_key(w, key);
    if (isfinite(v))
        loom_json_write_double(w, v);
    else
        loom_json_write_null(w);
}

static double ratio(uint64_t a, uint64_t b)
{
    return b ? (double)a / (double)b : NAN;
}

void trn_eval_metrics_json(struct loom_json_writer *w, const struct trn_eval *ev)
{
    loom_json_write_object_begin(w);
    if (ev->task == TRN_TASK_BINARY) {
        num(w, "auc", ev->auc);
        num(w, "accuracy", ev->accuracy);
        num(w, "logloss", ev->logloss);
        num(w, "rmse", ev->rmse);
        num(w, "precision", ratio(ev->tp, ev->tp + ev->fp));
        num(w, "recall", ratio(ev->tp, ev->tp + ev->fn));
        num(w, "positive_rate", ev->positive_rate);
        num(w, "predicted_positive_rate", ev->predicted_positive_rate);
    } else {
        num(w, "rmse", ev->rmse);
        num(w, "mae", ev->mae);
        num(w, "r2", ev->r2);
    }
    loom_json_write_key(w, "rows");
    loom_json_write_u64(w, ev->n);
    loom_json_write_object_end(w);
}

void trn_eval_report_members(struct loom_json_writer *w, const struct trn_eval *ev,
                             const char *sensitive)
{
    if (ev->task == TRN_TASK_BINARY) {
        loom_json_write_key(w, "confusion_matrix");
        loom_json_write_object_begin(w);
        num(w, "threshold", 0.5);
        loom_json_write_key(w, "tp");
        loom_json_write_u64(w, ev->tp);
        loom_json_write_key(w, "fp");
        loom_json_write_u64(w, ev->fp);
        loom_json_write_key(w, "tn");
        loom_json_write_u64(w, ev->tn);
        loom_json_write_key(w, "fn");
        loom_json_write_u64(w, ev->fn);
        loom_json_write_object_end(w);
    }
    loom_json_write_key(w, "fairness");
    if (!ev->has_fairness) {
        loom_json_write_null(w);
    } else {
        loom_json_write_object_begin(w);
        loom_json_write_key(w, "attribute");
        loom_json_write_string(w, sensitive);
        loom_json_write_key(w, "groups");
        loom_json_write_array_begin(w);
        for (size_t i = 0; i < ev->ngroups; i++) {
            const struct trn_group *g = &ev->groups[i];
            loom_json_write_object_begin(w);
            loom_json_write_key(w, "group");
            loom_json_write_string(w, g->name);
            loom_json_write_key(w, "count");
            loom_json_write_u64(w, g->count);
            loom_json_write_key(w, "positives");
            loom_json_write_u64(w, g->positives);
            num(w, "positive_rate", ratio(g->predicted_positive, g->count));
            num(w, "tpr", ratio(g->true_positive, g->positives));
            num(w, "fpr", ratio(g->false_positive, g->count - g->positives));
            loom_json_write_object_end(w);
        }
        loom_json_write_array_end(w);
        num(w, "equal_opportunity_diff", ev->eo_diff);
        num(w, "demographic_parity_diff", ev->dp_diff);
        loom_json_write_key(w, "excluded_from_equal_opportunity");
        loom_json_write_array_begin(w);
        for (size_t i = 0; i < ev->ngroups; i++)
            if (!ev->groups[i].positives)
                loom_json_write_string(w, ev->groups[i].name);
        loom_json_write_array_end(w);
        loom_json_write_key(w, "note");
        loom_json_write_string(w, "positive_rate is the rate of predicted positives (score >= "
                                  "0.5); groups without actual positives have no TPR and are "
                                  "excluded from the equal-opportunity difference");
        loom_json_write_object_end(w);
    }
    loom_json_write_key(w, "latency");
    loom_json_write_object_begin(w);
    loom_json_write_key(w, "calls");
    loom_json_write_u64(w, ev->latency_calls);
    num(w, "p50_us", ev->p50_us);
    num(w, "p99_us", ev->p99_us);
    num(w, "mean_us", ev->mean_us);
    loom_json_write_object_end(w);
    loom_json_write_key(w, "gates");
    loom_json_write_array_begin(w);
    for (size_t i = 0; i < ev->ngates; i++) {
        const struct trn_gate_result *g = &ev->gates[i];
        loom_json_write_object_begin(w);
        loom_json_write_key(w, "name");
        loom_json_write_string(w, g->name);
        num(w, "threshold", g->threshold);
        num(w, "value", g->value);
        loom_json_write_key(w, "passed");
        loom_json_write_bool(w, g->passed);
        loom_json_write_object_end(w);
    }
    loom_json_write_array_end(w);
    loom_json_write_key(w, "passed");
    loom_json_write_bool(w, ev->passed);
}
