/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer driver for the model loaders. Each input is loaded as an XGBoost JSON model, from
 * an exactly-sized heap copy (so ASan sees any read past the end) and under tight limits. A
 * model that loads must then predict without crashing, hanging or reading out of bounds: an
 * all-missing row, a row of zeros, rows of infinities and of values derived from the input
 * bytes, one row at a time and as a batch (the two kernels), transformed and as margins; the
 * batch must agree with the single rows bit for bit. A load that fails must say why. The same
 * bytes are offered to the linear backend as well.
 */
#include <loom/core.h>
#include <loom/model.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond)                                                                \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                     \
        }                                                                                \
    } while (0)

static const struct loom_model_limits limits = {
    .max_bytes = 1 << 16,
    .max_trees = 64,
    .max_nodes = 512,
    .max_features = 64,
    .max_groups = 16,
};

enum { ROWS = 19 }; /* one lane group of the batch kernel (16 rows) and a remainder */

static void exercise(const struct loom_model *m, const uint8_t *data, size_t size)
{
    const struct loom_model_info *info = loom_model_info(m);
    size_t nf = info->num_features, no = info->num_outputs, ng = info->num_groups;
    FUZZ_ASSERT(nf >= 1 && nf <= limits.max_features);
    FUZZ_ASSERT(ng >= 1 && ng <= limits.max_groups && no >= 1 && no <= ng);
    FUZZ_ASSERT(info->num_trees <= limits.max_trees);
    FUZZ_ASSERT(info->backend && info->objective);
    if (info->feature_names)
        for (size_t j = 0; j < nf; j++)
            FUZZ_ASSERT(info->feature_names[j] != NULL);

    float *x = malloc(ROWS * nf * sizeof(float));
    float *batch = malloc(ROWS * ng * sizeof(float));
    float *one = malloc(ng * sizeof(float));
    static const float specials[] = { NAN,   0.0f,   -0.0f,       INFINITY, -INFINITY,
                                      1e30f, -1e30f, 16777216.0f, 0.5f,     3.0f };
    for (size_t r = 0; r < ROWS; r++) {
        for (size_t j = 0; j < nf; j++) {
            float v;
            if (r < LOOM_ARRAY_SIZE(specials))
                v = specials[r];
            else {
                /* Values from the input itself hit its thresholds and categories. */
                uint32_t bits = 0;
                for (size_t k = 0; k < 4 && size; k++)
                    bits = bits << 8 | data[(r * 131 + j * 17 + k) % size];
                memcpy(&v, &bits, sizeof(v));
                if (j % 3 == 1)
                    v = (float)(bits % 40) - 4.0f;
            }
            x[r * nf + j] = v;
        }
    }
    for (int margin = 0; margin < 2; margin++) {
        size_t width = margin ? ng : no;
        if (margin)
            loom_model_predict_margin(m, x, ROWS, batch);
        else
            loom_model_predict(m, x, ROWS, batch);
        for (size_t r = 0; r < ROWS; r++) {
            if (margin)
                loom_model_predict_margin(m, x + r * nf, 1, one);
            else
                loom_model_predict(m, x + r * nf, 1, one);
            FUZZ_ASSERT(memcmp(one, batch + r * width, width * sizeof(float)) == 0);
        }
    }
    free(x);
    free(batch);
    free(one);
}

static void try_backend(const char *backend, const uint8_t *data, size_t size)
{
    char *copy = size ? malloc(size) : NULL;
    if (size)
        memcpy(copy, data, size);
    struct loom_model *m = NULL;
    struct loom_error err = { 0 };
    loom_err code = loom_model_load(backend, copy, size, &limits, &m, &err);
    if (code == LOOM_OK) {
        FUZZ_ASSERT(m != NULL);
        exercise(m, data, size);
        loom_model_free(m);
    } else {
        FUZZ_ASSERT(m == NULL);
        FUZZ_ASSERT(err.code == code && err.msg[0] != '\0');
        FUZZ_ASSERT(code == LOOM_EPARSE || code == LOOM_EINVAL || code == LOOM_ETOOBIG ||
                    code == LOOM_EUNSUPPORTED);
    }
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    try_backend("xgboost", data, size);
    try_backend("linear", data, size);
    return 0;
}
