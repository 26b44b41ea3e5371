/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The generic half of the model runtime: the table of backends, loading from memory or from a
 * file under limits, and dispatch of prediction to the backend. The arithmetic the backends
 * share with XGBoost (its sigmoid and softmax) lives here too, so that every backend rounds
 * the same way.
 */
#include <loom/core.h>
#include <loom/model.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct loom_model {
    const struct loom_model_backend *backend;
    struct loom_model_info info;
    void *state;
};

static const struct loom_model_backend *const backends[] = {
    &loom_model_backend_xgboost,
    &loom_model_backend_linear,
};

static const struct loom_model_backend *backend_find(const char *name)
{
    for (size_t i = 0; name && i < LOOM_ARRAY_SIZE(backends); i++)
        if (strcmp(backends[i]->name, name) == 0)
            return backends[i];
    return NULL;
}

static struct loom_model_limits limits_resolve(const struct loom_model_limits *in)
{
    struct loom_model_limits l = in ? *in : (struct loom_model_limits){ 0 };
    if (!l.max_bytes)
        l.max_bytes = LOOM_MODEL_MAX_BYTES_DEFAULT;
    l.max_bytes = LOOM_MIN(l.max_bytes, (size_t)UINT32_MAX - 1);
    if (!l.max_trees)
        l.max_trees = LOOM_MODEL_MAX_TREES_DEFAULT;
    if (!l.max_nodes)
        l.max_nodes = LOOM_MODEL_MAX_NODES_DEFAULT;
    if (!l.max_features)
        l.max_features = LOOM_MODEL_MAX_FEATURES_DEFAULT;
    l.max_features = LOOM_MIN(l.max_features, 1u << 28);
    if (!l.max_groups || l.max_groups > LOOM_MODEL_MAX_GROUPS_DEFAULT)
        l.max_groups = LOOM_MODEL_MAX_GROUPS_DEFAULT;
    return l;
}

loom_err loom_model_load(const char *backend, const char *data, size_t len,
                         const struct loom_model_limits *limits, struct loom_model **out,
                         struct loom_error *err)
{
    const struct loom_model_backend *be = backend_find(backend);
    if (!be)
        return loom_error_set(err, LOOM_ENOTFOUND,
                              "unknown model backend \"%s\" (known: xgboost, linear)",
                              backend ? backend : "(null)");
    struct loom_model_limits l = limits_resolve(limits);
    if (len > l.max_bytes)
        return loom_error_set(err, LOOM_ETOOBIG, "model is %zu bytes, more than the limit of %zu",
                              len, l.max_bytes);
    struct loom_model_info info = { 0 };
    void *state = NULL;
    loom_err code = be->load(data ? data : "", len, &l, &info, &state, err);
    if (code)
        return code;
    struct loom_model *m = loom_new(struct loom_model);
    m->backend = be;
    m->info = info;
    m->info.backend = be->name;
    m->state = state;
    *out = m;
    return LOOM_OK;
}

loom_err loom_model_load_file(const char *backend, const char *path,
                              const struct loom_model_limits *limits, struct loom_model **out,
                              struct loom_error *err)
{
    struct loom_model_limits l = limits_resolve(limits);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return loom_error_set(err, LOOM_ENOTFOUND, "%s: no such file", path);
        return loom_error_errno(err, "%s: cannot open", path);
    }
    loom_err code;
    struct stat st;
    char *buf = NULL;
    if (fstat(fd, &st) != 0) {
        code = loom_error_errno(err, "%s: cannot stat", path);
        goto out_close;
    }
    if (!S_ISREG(st.st_mode)) {
        code = loom_error_set(err, LOOM_EINVAL, "%s: not a regular file", path);
        goto out_close;
    }
    if ((uint64_t)st.st_size > l.max_bytes) {
        code = loom_error_set(err, LOOM_ETOOBIG, "%s: %lld bytes, more than the limit of %zu", path,
                              (long long)st.st_size, l.max_bytes);
        goto out_close;
    }
    size_t size = (size_t)st.st_size, got = 0;
    buf = loom_malloc(size ? size : 1);
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            code = loom_error_errno(err, "%s: read failed", path);
            goto out_free;
        }
        if (r == 0)
            break; /* truncated while we read: parse what is there, which will fail cleanly */
        got += (size_t)r;
    }
    code = loom_model_load(backend, buf, got, &l, out, err);
    if (code)
        loom_error_prefix(err, "%s", path);
out_free:
    free(buf);
out_close:
    close(fd);
    return code;
}

const struct loom_model_info *loom_model_info(const struct loom_model *model)
{
    return &model->info;
}

void loom_model_predict(const struct loom_model *model, const float *x, size_t n, float *out)
{
    if (n)
        model->backend->predict(model->state, x, n, out);
}

void loom_model_predict_margin(const struct loom_model *model, const float *x, size_t n, float *out)
{
    if (n)
        model->backend->predict_margin(model->state, x, n, out);
}

void loom_model_free(struct loom_model *model)
{
    if (!model)
        return;
    model->backend->free(model->state);
    free(model);
}

/*
 * XGBoost 1.7's common::Sigmoid in float: the clamp keeps expf finite, and the 1e-16 guard is a
 * float add that never changes the sum but is kept so the operations match one for one.
 */
float loom_model_sigmoid(float x)
{
    float e = expf(fminf(-x, 88.7f));
    return 1.0f / ((e + 1.0f) + 1e-16f);
}

void loom_model_softmax(float *v, size_t k)
{
    float wmax = v[0];
    for (size_t i = 1; i < k; i++)
        if (v[i] > wmax)
            wmax = v[i];
    double wsum = 0;
    for (size_t i = 0; i < k; i++) {
        v[i] = expf(v[i] - wmax);
        wsum += v[i];
    }
    float s = (float)wsum;
    for (size_t i = 0; i < k; i++)
        v[i] /= s;
}

float loom_model_argmax(const float *v, size_t k)
{
    size_t best = 0;
    for (size_t i = 1; i < k; i++)
        if (v[i] > v[best])
            best = i;
    return (float)best;
}
