/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The baseline of bench/train.sh: the same XGBoost training as loom's trainer, straight
 * through libxgboost's C API in one process. It loads the same CSV (a header row; string
 * columns label-encoded with their sorted distinct values, as the trainer does), drops the
 * label and the sensitive column from the features, splits the rows exactly as the trainer
 * does (Fisher-Yates with xoshiro256** seeded through splitmix64; the first round(n * v)
 * shuffled rows are the validation set; both sets keep file order), and trains with the same
 * parameters (objective, tree_method=hist, nthread, seed, then the given ones), evaluating on
 * the validation rows after every round as the trainer does for its progress. It prints the
 * time from its start to the model trained (load, split and train included) and the SHA-256
 * of the model's JSON, which equals the trainer's model digest when both did the same work.
 *
 * Usage: train_capi CSV LABEL SENSITIVE ROUNDS NTHREAD SEED VALIDATION [name=value...]
 * Build: cc -O2 -std=c17 bench/train_capi.c -o train_capi -lxgboost -lcrypto -lm
 */
#define _GNU_SOURCE
#include <math.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xgboost/c_api.h>

#define CK(call)                                                               \
    do {                                                                       \
        if ((call) != 0) {                                                     \
            fprintf(stderr, "train_capi: %s: %s\n", #call, XGBGetLastError()); \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "train_capi: out of memory\n");
        exit(1);
    }
    return p;
}

/* ---- the trainer's split ---- */

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

static uint64_t next(uint64_t *s)
{
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

/* ---- a plain CSV (no quotes: the demo data has none) ---- */

struct column {
    char *name;
    int is_string;
    char **values; /* distinct strings, sorted at the end */
    size_t nvalues, cap;
};

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static size_t split_line(char *line, char **fields, size_t max)
{
    size_t n = 0;
    char *p = line;
    for (;;) {
        if (n == max)
            return n;
        fields[n++] = p;
        char *c = strchr(p, ',');
        if (!c)
            break;
        *c = '\0';
        p = c + 1;
    }
    size_t len = strlen(fields[n - 1]);
    while (len && (fields[n - 1][len - 1] == '\n' || fields[n - 1][len - 1] == '\r'))
        fields[n - 1][--len] = '\0';
    return n;
}

static int is_number(const char *s, double *v)
{
    if (!*s)
        return 0;
    char *end;
    *v = strtod(s, &end);
    return *end == '\0';
}

int main(int argc, char **argv)
{
    if (argc < 8) {
        fprintf(stderr, "usage: train_capi CSV LABEL SENSITIVE ROUNDS NTHREAD SEED VALIDATION "
                        "[name=value...]\n");
        return 2;
    }
    double t0 = now_ms();
    const char *path = argv[1], *label = argv[2], *sensitive = argv[3];
    int rounds = atoi(argv[4]), nthread = atoi(argv[5]);
    uint64_t seed = strtoull(argv[6], NULL, 10);
    double validation = strtod(argv[7], NULL);

    /* Read the whole file, then two passes: types and strings, then values. */
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = xmalloc((size_t)size + 1);
    if (fread(text, 1, (size_t)size, f) != (size_t)size) {
        perror(path);
        return 1;
    }
    text[size] = '\0';
    fclose(f);
    size_t nlines = 0;
    for (long i = 0; i < size; i++)
        nlines += text[i] == '\n';
    char **lines = xmalloc((nlines + 1) * sizeof(char *));
    size_t nl = 0;
    for (char *p = text; *p;) {
        char *e = strchr(p, '\n');
        lines[nl++] = p;
        if (!e)
            break;
        *e = '\0';
        p = e + 1;
    }
    char *fields[4096];
    size_t ncols = split_line(lines[0], fields, 4096);
    struct column *cols = calloc(ncols, sizeof(*cols));
    long label_col = -1;
    for (size_t j = 0; j < ncols; j++) {
        cols[j].name = fields[j];
        if (strcmp(fields[j], label) == 0)
            label_col = (long)j;
    }
    size_t nrows = nl - 1;
    while (nrows && lines[nrows][0] == '\0')
        nrows--;
    char ***cells = xmalloc(nrows * sizeof(char **));
    for (size_t i = 0; i < nrows; i++) {
        cells[i] = xmalloc(ncols * sizeof(char *));
        split_line(lines[i + 1], cells[i], ncols);
        for (size_t j = 0; j < ncols; j++) {
            double v;
            if (cells[i][j][0] && !is_number(cells[i][j], &v))
                cols[j].is_string = 1;
        }
    }
    /* features: every column but the label and the sensitive one, in file order */
    size_t *feat = xmalloc(ncols * sizeof(size_t)), nfeat = 0;
    for (size_t j = 0; j < ncols; j++)
        if ((long)j != label_col && strcmp(cols[j].name, sensitive) != 0)
            feat[nfeat++] = j;
    for (size_t k = 0; k < nfeat; k++) {
        struct column *c = &cols[feat[k]];
        if (!c->is_string)
            continue;
        for (size_t i = 0; i < nrows; i++) {
            const char *s = cells[i][feat[k]];
            if (!*s)
                continue;
            size_t m = 0;
            while (m < c->nvalues && strcmp(c->values[m], s) != 0)
                m++;
            if (m == c->nvalues) {
                if (c->nvalues == c->cap) {
                    c->cap = c->cap ? 2 * c->cap : 16;
                    c->values = realloc(c->values, c->cap * sizeof(char *));
                }
                c->values[c->nvalues++] = (char *)s;
            }
        }
        qsort(c->values, c->nvalues, sizeof(char *), cmp_str);
    }
    float *x = xmalloc(nrows * nfeat * sizeof(float)), *y = xmalloc(nrows * sizeof(float));
    for (size_t i = 0; i < nrows; i++) {
        for (size_t k = 0; k < nfeat; k++) {
            const char *s = cells[i][feat[k]];
            struct column *c = &cols[feat[k]];
            float v = NAN;
            if (*s && c->is_string) {
                const char **hit = bsearch(&s, c->values, c->nvalues, sizeof(char *), cmp_str);
                v = (float)(hit - (const char **)c->values);
            } else if (*s) {
                v = (float)strtod(s, NULL);
            }
            x[i * nfeat + k] = v;
        }
        y[i] = (float)strtod(cells[i][label_col], NULL);
    }

    /* split */
    uint64_t st[4], sd = seed;
    for (int i = 0; i < 4; i++)
        st[i] = splitmix64(&sd);
    size_t *perm = xmalloc(nrows * sizeof(size_t));
    for (size_t i = 0; i < nrows; i++)
        perm[i] = i;
    for (size_t i = nrows - 1; i > 0; i--) {
        size_t j = (size_t)(next(st) % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    size_t nva = (size_t)llround((double)nrows * validation);
    if (nva < 1)
        nva = 1;
    if (nva > nrows - 1)
        nva = nrows - 1;
    char *is_val = calloc(nrows, 1);
    for (size_t i = 0; i < nva; i++)
        is_val[perm[i]] = 1;
    size_t ntr = nrows - nva;
    float *xtr = xmalloc(ntr * nfeat * sizeof(float)), *ytr = xmalloc(ntr * sizeof(float));
    float *xva = xmalloc(nva * nfeat * sizeof(float)), *yva = xmalloc(nva * sizeof(float));
    for (size_t i = 0, a = 0, b = 0; i < nrows; i++) {
        if (is_val[i]) {
            memcpy(xva + b * nfeat, x + i * nfeat, nfeat * sizeof(float));
            yva[b++] = y[i];
        } else {
            memcpy(xtr + a * nfeat, x + i * nfeat, nfeat * sizeof(float));
            ytr[a++] = y[i];
        }
    }
    double t1 = now_ms();

    /* train */
    const char **names = xmalloc(nfeat * sizeof(char *));
    for (size_t k = 0; k < nfeat; k++)
        names[k] = cols[feat[k]].name;
    DMatrixHandle dtr, dva;
    CK(XGDMatrixCreateFromMat(xtr, ntr, nfeat, NAN, &dtr));
    CK(XGDMatrixSetFloatInfo(dtr, "label", ytr, ntr));
    CK(XGDMatrixSetStrFeatureInfo(dtr, "feature_name", names, nfeat));
    CK(XGDMatrixCreateFromMat(xva, nva, nfeat, NAN, &dva));
    CK(XGDMatrixSetFloatInfo(dva, "label", yva, nva));
    CK(XGDMatrixSetStrFeatureInfo(dva, "feature_name", names, nfeat));
    DMatrixHandle cache[2] = { dtr, dva };
    BoosterHandle b;
    CK(XGBoosterCreate(cache, 2, &b));
    char tmp[32];
    CK(XGBoosterSetParam(b, "verbosity", "1"));
    CK(XGBoosterSetParam(b, "objective", "binary:logistic"));
    CK(XGBoosterSetParam(b, "tree_method", "hist"));
    CK(XGBoosterSetParam(b, "validate_parameters", "1"));
    snprintf(tmp, sizeof(tmp), "%d", nthread);
    CK(XGBoosterSetParam(b, "nthread", tmp));
    snprintf(tmp, sizeof(tmp), "%llu", (unsigned long long)(seed & 0x7fffffff));
    CK(XGBoosterSetParam(b, "seed", tmp));
    for (int i = 8; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            fprintf(stderr, "train_capi: parameter %s is not name=value\n", argv[i]);
            return 2;
        }
        *eq = '\0';
        CK(XGBoosterSetParam(b, argv[i], eq + 1));
    }
    const char *evnames[1] = { "validation" };
    double last = NAN;
    for (int it = 0; it < rounds; it++) {
        const char *res;
        CK(XGBoosterUpdateOneIter(b, it, dtr));
        CK(XGBoosterEvalOneIter(b, it, &dva, evnames, 1, &res));
        const char *colon = strrchr(res, ':');
        if (colon)
            last = strtod(colon + 1, NULL);
    }
    double t2 = now_ms();
    bst_ulong len;
    const char *model;
    CK(XGBoosterSaveModelToBuffer(b, "{\"format\": \"json\"}", &len, &model));
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_Digest(model, len, md, &mdlen, EVP_sha256(), NULL);
    printf("capi_ms=%.1f load_ms=%.1f train_ms=%.1f rows=%zu features=%zu metric=%.6g "
           "digest=sha256:",
           t2 - t0, t1 - t0, t2 - t1, nrows, nfeat, last);
    for (unsigned i = 0; i < mdlen; i++)
        printf("%02x", md[i]);
    printf("\n");
    XGBoosterFree(b);
    XGDMatrixFree(dtr);
    XGDMatrixFree(dva);
    return 0;
}
