/* SPDX-License-Identifier: Apache-2.0 */
/*
 * loom's own linear trainer: logistic regression (binary:logistic) by Newton's method with a
 * backtracking line search, and linear least squares (reg:squarederror) in closed form, both
 * with an L2 penalty `lambda` on the weights (not the intercept). Features are standardised
 * internally (mean 0, variance 1 over the training rows) so that the penalty treats them alike
 * and the Hessian is well conditioned; the weights are mapped back to the raw features before
 * the model is written in loom's linear JSON format (docs/models.md), which loom_model_load
 * serves. A missing (NaN) value counts as 0 in the raw feature, which is what the evaluator does
 * with it, so training and serving agree. Everything is double precision in a fixed order, so
 * the same data and spec give the same model. The objective minimised is
 *
 *     (1/n) sum_i loss(y_i, b + w . z_i) + (lambda/2) |w|^2     (z: standardised features)
 *
 * which is scikit-learn's LogisticRegression with C = 1 / (lambda n) (or Ridge with
 * alpha = lambda n) on standardised data, and its unpenalised fit when lambda = 0.
 */
#include "trainer/trainer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LINEAR_MAX_FEATURES 512

struct lin {
    size_t n, f, p; /* rows, features, parameters (f + 1: the intercept is last) */
    double *z;      /* n x f standardised training rows */
    const float *y;
    double *mu, *sd; /* per feature */
    double lambda;
    bool logistic;
};

static double raw(float v)
{
    return isnan(v) ? 0.0 : (double)v;
}

static void standardise(struct lin *m, const float *x)
{
    size_t n = m->n, f = m->f;
    for (size_t j = 0; j < f; j++) {
        double s = 0, ss = 0;
        for (size_t i = 0; i < n; i++)
            s += raw(x[i * f + j]);
        double mu = s / (double)n;
        for (size_t i = 0; i < n; i++) {
            double d = raw(x[i * f + j]) - mu;
            ss += d * d;
        }
        double sd = sqrt(ss / (double)n);
        m->mu[j] = mu;
        m->sd[j] = sd > 1e-12 ? sd : 1.0;
    }
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < f; j++)
            m->z[i * f + j] = (raw(x[i * f + j]) - m->mu[j]) / m->sd[j];
}

static double margin(const struct lin *m, const double *w, const double *zrow)
{
    double a = w[m->f];
    for (size_t j = 0; j < m->f; j++)
        a += w[j] * zrow[j];
    return a;
}

/* log(1 + e^a) without overflow */
static double softplus(double a)
{
    return a > 0 ? a + log1p(exp(-a)) : log1p(exp(a));
}

static double sigmoid(double a)
{
    return a >= 0 ? 1.0 / (1.0 + exp(-a)) : exp(a) / (1.0 + exp(a));
}

static double objective(const struct lin *m, const double *w)
{
    double l = 0;
    for (size_t i = 0; i < m->n; i++) {
        double a = margin(m, w, m->z + i * m->f), y = m->y[i];
        l += m->logistic ? softplus(a) - y * a : 0.5 * (a - y) * (a - y);
    }
    double r = 0;
    for (size_t j = 0; j < m->f; j++)
        r += w[j] * w[j];
    return l / (double)m->n + 0.5 * m->lambda * r;
}

/* Gradient g and Hessian h (p x p, full) of the objective at w. */
static void derivatives(const struct lin *m, const double *w, double *g, double *h)
{
    size_t p = m->p, f = m->f;
    memset(g, 0, p * sizeof(*g));
    memset(h, 0, p * p * sizeof(*h));
    double *zr = loom_malloc(p * sizeof(*zr));
    zr[f] = 1.0;
    for (size_t i = 0; i < m->n; i++) {
        memcpy(zr, m->z + i * f, f * sizeof(*zr));
        double a = margin(m, w, zr), r, c;
        if (m->logistic) {
            double q = sigmoid(a);
            r = q - m->y[i];
            c = q * (1.0 - q);
        } else {
            r = a - m->y[i];
            c = 1.0;
        }
        for (size_t j = 0; j < p; j++) {
            g[j] += r * zr[j];
            double cz = c * zr[j];
            for (size_t k = 0; k <= j; k++)
                h[j * p + k] += cz * zr[k];
        }
    }
    free(zr);
    double inv = 1.0 / (double)m->n;
    for (size_t j = 0; j < p; j++) {
        g[j] *= inv;
        for (size_t k = 0; k <= j; k++) {
            h[j * p + k] *= inv;
            h[k * p + j] = h[j * p + k];
        }
    }
    for (size_t j = 0; j < f; j++) {
        g[j] += m->lambda * w[j];
        h[j * p + j] += m->lambda;
    }
}

/* Solve h d = g in place (d returned in g) by Cholesky; false if h is not positive definite. */
static bool cholesky_solve(double *h, double *g, size_t p)
{
    for (size_t j = 0; j < p; j++) {
        double s = h[j * p + j];
        for (size_t k = 0; k < j; k++)
            s -= h[j * p + k] * h[j * p + k];
        if (!(s > 0))
            return false;
        double d = sqrt(s);
        h[j * p + j] = d;
        for (size_t i = j + 1; i < p; i++) {
            double t = h[i * p + j];
            for (size_t k = 0; k < j; k++)
                t -= h[i * p + k] * h[j * p + k];
            h[i * p + j] = t / d;
        }
    }
    for (size_t i = 0; i < p; i++) {
        double t = g[i];
        for (size_t k = 0; k < i; k++)
            t -= h[i * p + k] * g[k];
        g[i] = t / h[i * p + i];
    }
    for (size_t i = p; i-- > 0;) {
        double t = g[i];
        for (size_t k = i + 1; k < p; k++)
            t -= h[k * p + i] * g[k];
        g[i] = t / h[i * p + i];
    }
    return true;
}

/* Newton step: d = H^-1 g, with a growing ridge if H is singular (lambda 0, constant columns). */
static bool newton_direction(const double *h, const double *g, double *d, double *work, size_t p)
{
    double ridge = 0;
    for (int attempt = 0; attempt < 12; attempt++) {
        memcpy(work, h, p * p * sizeof(*work));
        memcpy(d, g, p * sizeof(*d));
        for (size_t j = 0; j < p; j++)
            work[j * p + j] += ridge;
        if (cholesky_solve(work, d, p))
            return true;
        ridge = ridge ? ridge * 100 : 1e-12;
    }
    return false;
}

/* The validation metric of standardised weights w: log loss or RMSE. */
static double validation_metric(const struct lin *m, const double *w, const float *x,
                                const float *y, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        double a = w[m->f];
        for (size_t j = 0; j < m->f; j++)
            a += w[j] * (raw(x[i * m->f + j]) - m->mu[j]) / m->sd[j];
        if (m->logistic) {
            double q = fmin(fmax(sigmoid(a), 1e-15), 1 - 1e-15);
            s -= y[i] ? log(q) : log(1 - q);
        } else {
            s += (a - y[i]) * (a - y[i]);
        }
    }
    return m->logistic ? s / (double)n : sqrt(s / (double)n);
}

static loom_err param_double(const struct trn_spec *spec, const char *name, double def, double *out,
                             struct loom_error *err)
{
    const char *v = trn_spec_param(spec, name);
    *out = def;
    if (!v)
        return LOOM_OK;
    char *end;
    double d = strtod(v, &end);
    if (*end || end == v || !isfinite(d) || d < 0)
        return loom_error_set(err, LOOM_EINVAL, "params.%s must be a number >= 0", name);
    *out = d;
    return LOOM_OK;
}

/* The model in loom's linear format, weights mapped back to raw features. */
static void write_model(const struct lin *m, const double *w, const struct trn_train_in *in,
                        struct trn_train_out *out)
{
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer jw;
    loom_json_writer_init(&jw, &b);
    loom_json_write_object_begin(&jw);
    loom_json_write_key(&jw, "loom_model");
    loom_json_write_string(&jw, "linear");
    loom_json_write_key(&jw, "version");
    loom_json_write_i64(&jw, 1);
    loom_json_write_key(&jw, "objective");
    loom_json_write_string(&jw, in->spec->objective);
    loom_json_write_key(&jw, "num_features");
    loom_json_write_u64(&jw, m->f);
    loom_json_write_key(&jw, "weights");
    loom_json_write_array_begin(&jw);
    double bias = w[m->f];
    for (size_t j = 0; j < m->f; j++) {
        double wr = w[j] / m->sd[j];
        bias -= wr * m->mu[j];
        loom_json_write_double(&jw, wr);
    }
    loom_json_write_array_end(&jw);
    loom_json_write_key(&jw, "bias");
    loom_json_write_double(&jw, bias);
    if (in->feature_names) {
        loom_json_write_key(&jw, "feature_names");
        loom_json_write_array_begin(&jw);
        for (size_t j = 0; j < m->f; j++)
            loom_json_write_string(&jw, in->feature_names[j]);
        loom_json_write_array_end(&jw);
    }
    loom_json_write_object_end(&jw);
    loom_json_writer_finish(&jw);
    out->model = loom_buf_detach(&b, &out->model_len);
}

loom_err trn_train_linear(const struct trn_train_in *in, struct trn_train_out *out,
                          struct loom_error *err)
{
    const struct trn_spec *spec = in->spec;
    memset(out, 0, sizeof(*out));
    loom_buf_init(&out->info, 0);
    out->format = "linear";
    if (in->nfeat > LINEAR_MAX_FEATURES)
        return loom_error_set(err, LOOM_ETOOBIG,
                              "the linear backend takes at most %d features, not %zu",
                              LINEAR_MAX_FEATURES, in->nfeat);
    struct lin m = {
        .n = in->ntr,
        .f = in->nfeat,
        .p = in->nfeat + 1,
        .y = in->ytr,
        .logistic = strcmp(spec->objective, "binary:logistic") == 0,
    };
    double tol;
    loom_err e = param_double(spec, "lambda", 1e-4, &m.lambda, err);
    if (!e)
        e = param_double(spec, "tol", 1e-10, &tol, err);
    if (e)
        return e;
    snprintf(out->metric, sizeof(out->metric), "%s", m.logistic ? "logloss" : "rmse");
    size_t p = m.p;
    m.z = loom_malloc(loom_mul_size(loom_mul_size(m.n, m.f ? m.f : 1), sizeof(double)));
    m.mu = loom_calloc(p, sizeof(double));
    m.sd = loom_calloc(p, sizeof(double));
    double *w = loom_calloc(p, sizeof(double)), *g = loom_malloc(p * sizeof(double));
    double *h = loom_malloc(p * p * sizeof(double)), *work = loom_malloc(p * p * sizeof(double));
    double *d = loom_malloc(p * sizeof(double)), *trial = loom_malloc(p * sizeof(double));
    standardise(&m, in->xtr);

    /* Start from the intercept alone: the mean (or its log-odds). */
    double ybar = 0;
    for (size_t i = 0; i < m.n; i++)
        ybar += m.y[i];
    ybar /= (double)m.n;
    if (m.logistic)
        w[m.f] = ybar > 0 && ybar < 1 ? log(ybar / (1 - ybar)) : 0;
    else
        w[m.f] = ybar;

    int64_t rounds = m.logistic ? spec->rounds : 1, it = 0, iters = 0, shown = 0;
    double loss = objective(&m, w), metric = NAN;
    bool converged = false;
    for (it = 1; it <= rounds && !converged; it++) {
        derivatives(&m, w, g, h);
        if (!newton_direction(h, g, d, work, p)) {
            e = loom_error_set(err, LOOM_EINVAL, "the linear system is singular");
            goto out;
        }
        /* Backtracking (Armijo) on the full Newton step: each accepted step lowers the loss. */
        double slope = 0;
        for (size_t j = 0; j < p; j++)
            slope += g[j] * d[j];
        double t = 1, next = loss;
        for (int k = 0; k < 60; k++, t *= 0.5) {
            for (size_t j = 0; j < p; j++)
                trial[j] = w[j] - t * d[j];
            next = objective(&m, trial);
            if (next <= loss - 1e-4 * t * slope || !m.logistic)
                break;
        }
        double step = 0, size = 0;
        for (size_t j = 0; j < p; j++) {
            step = fmax(step, fabs(t * d[j]));
            size = fmax(size, fabs(trial[j]));
        }
        if (!(next <= loss) && m.logistic) {
            converged = true; /* no descent left at double precision */
            break;
        }
        memcpy(w, trial, p * sizeof(double));
        iters++;
        converged = !m.logistic || step <= tol * (1 + size) || loss - next <= tol * fabs(loss);
        loss = next;
        for (size_t j = 0; j < p; j++)
            if (!isfinite(w[j])) {
                e = loom_error_set(err, LOOM_EINVAL,
                                   "the weights diverge (separable data?): set params.lambda > 0");
                goto out;
            }
        metric = validation_metric(&m, w, in->xva, in->yva, in->nva);
        /* At convergence the remaining rounds have nothing to do: report them done. */
        shown = converged ? spec->rounds : it;
        if (in->progress &&
            (e = in->progress(in->arg, shown, spec->rounds, out->metric, metric)) != LOOM_OK) {
            loom_error_set(err, e, "training stopped at iteration %lld", (long long)it);
            goto out;
        }
    }
    if (shown < spec->rounds && in->progress) {
        if (isnan(metric))
            metric = validation_metric(&m, w, in->xva, in->yva, in->nva);
        if ((e = in->progress(in->arg, spec->rounds, spec->rounds, out->metric, metric)) !=
            LOOM_OK) {
            loom_error_set(err, e, "training stopped at iteration %lld", (long long)iters);
            goto out;
        }
    }
    write_model(&m, w, in, out);
    struct loom_json_writer jw;
    loom_json_writer_init(&jw, &out->info);
    loom_json_write_object_begin(&jw);
    loom_json_write_key(&jw, "objective");
    loom_json_write_string(&jw, spec->objective);
    loom_json_write_key(&jw, "solver");
    loom_json_write_string(&jw, m.logistic ? "newton" : "cholesky");
    loom_json_write_key(&jw, "lambda");
    loom_json_write_double(&jw, m.lambda);
    loom_json_write_key(&jw, "tol");
    loom_json_write_double(&jw, tol);
    loom_json_write_key(&jw, "iterations");
    loom_json_write_i64(&jw, iters);
    loom_json_write_key(&jw, "converged");
    loom_json_write_bool(&jw, converged);
    loom_json_write_key(&jw, "training_objective");
    loom_json_write_double(&jw, loss);
    loom_json_write_object_end(&jw);
    loom_json_writer_finish(&jw);
out:
    free(m.z);
    free(m.mu);
    free(m.sd);
    free(w);
    free(g);
    free(h);
    free(work);
    free(d);
    free(trial);
    if (e)
        trn_train_out_release(out);
    return e;
}
