/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Models: load a trained model once, then predict from many threads at once. A model is opaque
 * and immutable after loading; prediction takes dense float32 rows (NaN = missing) and writes
 * float32 results, allocating nothing. Each file format is a backend, a table of function
 * pointers in the manner of Redis's ConnectionType: "xgboost" reads XGBoost JSON models (gbtree
 * and dart) and predicts bit for bit what libxgboost 1.7's XGBoosterPredictFromDense does;
 * "linear" reads loom's own linear-model JSON (docs/models.md). Adding a backend is one more
 * struct loom_model_backend and one entry in the table in lib/model.c.
 *
 * Loaders treat their input as hostile: every index, length and count is validated before
 * prediction can use it, so a model that loads can never make prediction read out of bounds or
 * loop forever, and inputs are capped by struct loom_model_limits.
 */
#ifndef LOOM_MODEL_H
#define LOOM_MODEL_H

#include <loom/err.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct loom_model;

/*
 * Ceilings for one load; a zero field means its default. Hitting one is LOOM_ETOOBIG with a
 * message naming the limit. Every model's memory is proportional to its file's size, so
 * max_bytes bounds memory as well.
 */
struct loom_model_limits {
    size_t max_bytes;      /* size of the model file; default 1 GiB, at most 4 GiB - 1 */
    uint32_t max_trees;    /* trees in a tree ensemble; default 1 << 20 */
    uint32_t max_nodes;    /* nodes in one tree; default 1 << 20 */
    uint32_t max_features; /* input columns; default 1 << 20 (at most 1 << 28) */
    uint32_t max_groups;   /* outputs per row (classes); default and at most 4096 */
};

#define LOOM_MODEL_MAX_BYTES_DEFAULT    ((size_t)1 << 30)
#define LOOM_MODEL_MAX_TREES_DEFAULT    (1u << 20)
#define LOOM_MODEL_MAX_NODES_DEFAULT    (1u << 20)
#define LOOM_MODEL_MAX_FEATURES_DEFAULT (1u << 20)
#define LOOM_MODEL_MAX_GROUPS_DEFAULT   4096u

/*
 * What a loaded model is. All pointers are borrowed from the model and valid until
 * loom_model_free.
 */
struct loom_model_info {
    const char *backend;   /* "xgboost", "linear" */
    const char *objective; /* "binary:logistic", "multi:softprob", ... */
    size_t num_features;   /* columns of every input row */
    size_t num_outputs;    /* values per row written by loom_model_predict */
    size_t num_groups;     /* values per row written by loom_model_predict_margin */
    size_t num_trees;      /* 0 for models without trees */
    size_t max_depth;      /* edges from a root to its deepest leaf, over all trees; 0 if none */
    /* num_features NUL-terminated names, or NULL if the model does not name its features. */
    const char *const *feature_names;
};

/*
 * Load a model of `backend` ("xgboost" or "linear") from the `len` bytes at `data` (borrowed,
 * not necessarily NUL-terminated; nothing of it is kept). `limits` may be NULL for the
 * defaults. On success *out is a new model the caller frees with loom_model_free; on failure
 * *out is untouched and `err` (may be NULL) says what is wrong, naming the field, tree and node:
 * "tree 12 node 7: right child 3 is not after the node". Errors: LOOM_ENOTFOUND for an unknown
 * backend, LOOM_EPARSE for malformed JSON, LOOM_EINVAL for a model that is well-formed JSON but
 * inconsistent, LOOM_EUNSUPPORTED for a valid model this runtime cannot evaluate ("objective
 * survival:aft is not supported"), LOOM_ETOOBIG when a limit is hit.
 */
loom_err loom_model_load(const char *backend, const char *data, size_t len,
                         const struct loom_model_limits *limits, struct loom_model **out,
                         struct loom_error *err);

/* loom_model_load on the contents of the file at `path`; also LOOM_ENOTFOUND if it does not
 * exist, LOOM_EIO if it cannot be read, LOOM_ETOOBIG if it is larger than limits->max_bytes
 * (checked before reading). Messages start with the path. */
loom_err loom_model_load_file(const char *backend, const char *path,
                              const struct loom_model_limits *limits, struct loom_model **out,
                              struct loom_error *err);

/* The model's description, borrowed from the model; never NULL. */
const struct loom_model_info *loom_model_info(const struct loom_model *model);

/*
 * Predict `n` rows: `x` holds n * num_features float32 values, row-major, NaN meaning missing
 * (infinities are values, not missing); `out` receives n * num_outputs values, row-major: what
 * the model's framework returns for its objective (probabilities for binary:logistic and
 * multi:softprob, the class index for multi:softmax, the response for regressions). Both
 * buffers are borrowed and must not overlap. Safe to call from any number of threads at once;
 * allocates nothing and cannot fail.
 */
void loom_model_predict(const struct loom_model *model, const float *x, size_t n, float *out);

/* Like loom_model_predict but writes the raw margins before the objective's transformation:
 * n * num_groups values (one per class for multi-class models). */
void loom_model_predict_margin(const struct loom_model *model, const float *x, size_t n,
                               float *out);

/* Free a model (NULL is allowed). No prediction may be running on it. */
void loom_model_free(struct loom_model *model);

/* ---- Backend interface (for lib/model_*.c) ------------------------------------------------ */

/*
 * A model format. `load` parses `data` under `limits` (defaults already filled in), fills *info
 * (its pointers may point into the state) and sets *state, which the other callbacks receive
 * and `free` releases; on failure it returns the error with `err` filled and leaves nothing
 * allocated. The predict callbacks have loom_model_predict's contract.
 */
struct loom_model_backend {
    const char *name;
    loom_err (*load)(const char *data, size_t len, const struct loom_model_limits *limits,
                     struct loom_model_info *info, void **state, struct loom_error *err);
    void (*predict)(const void *state, const float *x, size_t n, float *out);
    void (*predict_margin)(const void *state, const float *x, size_t n, float *out);
    void (*free)(void *state);
};

extern const struct loom_model_backend loom_model_backend_xgboost; /* lib/model_xgb.c */
extern const struct loom_model_backend loom_model_backend_linear;  /* lib/model_linear.c */

/*
 * The logistic function exactly as XGBoost 1.7 computes it in float32, shared by the
 * backends: 1 / (1 + exp(-x)) with the exponent clamped at 88.7 and a 1e-16 guard.
 */
float loom_model_sigmoid(float x);

/* XGBoost's softmax over the k values at v, in place: v_i = expf(v_i - max) / sum, the sum
 * accumulated in double and rounded to float once. */
void loom_model_softmax(float *v, size_t k);

/* The index of the first largest of the k values at v, as a float (multi:softmax's output). */
float loom_model_argmax(const float *v, size_t k);

#endif
