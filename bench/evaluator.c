/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The model evaluator against libxgboost, in one process: the same model file is loaded into
 * loom (loom_model_load_file) and into XGBoost (XGBoosterLoadModel), then both predict the same
 * rows and the times are compared. One row: the per-call time of loom_model_predict and of
 * XGBoosterPredictFromDense over many calls. 10,000 rows: both on every core, XGBoost with
 * nthread = nproc, loom with nproc persistent threads taking blocks of 256 rows from a shared
 * counter (so a thread the scheduler delays does not hold up the run; a barrier starts and ends
 * each run, so thread start-up is not timed, as OpenMP's pool is not). Each
 * measurement is the best of several rounds, the two interleaved round by round. Every
 * prediction of both is compared: the exit status is 1 if any differs by more than 1e-6, and
 * the number of rows that are not bit-identical is printed too.
 *
 * Usage: bench_evaluator MODEL.json ROWS.json [ROWS]   (ROWS.json from tests/models/train.py;
 * its inputs are cycled, with small deterministic perturbations, to make ROWS rows, 10000)
 */
#include <loom/core.h>
#include <loom/json.h>
#include <loom/model.h>

#include <xgboost/c_api.h>

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define XGB_CHECK(call)                                                             \
    do {                                                                            \
        if ((call) != 0) {                                                          \
            fprintf(stderr, "bench_evaluator: %s: %s\n", #call, XGBGetLastError()); \
            exit(2);                                                                \
        }                                                                           \
    } while (0)

static const char predict_config[] =
    "{\"type\": 0, \"training\": false, \"iteration_begin\": 0, \"iteration_end\": 0, "
    "\"strict_shape\": false, \"missing\": NaN, \"cache_id\": 0}";

/* XGBoosterPredictFromDense on n rows of x; returns XGBoost's buffer (valid until its next
 * call on this booster). */
static const float *xgb_predict(BoosterHandle b, const float *x, size_t n, size_t nf)
{
    char iface[256];
    snprintf(iface, sizeof(iface),
             "{\"data\": [%llu, true], \"shape\": [%zu, %zu], \"strides\": null, "
             "\"typestr\": \"<f4\", \"version\": 3}",
             (unsigned long long)(uintptr_t)x, n, nf);
    const bst_ulong *shape;
    bst_ulong dim;
    const float *out;
    XGB_CHECK(XGBoosterPredictFromDense(b, iface, predict_config, NULL, &shape, &dim, &out));
    return out;
}

/* ---- loom on every core: persistent threads, one slice of rows each ---- */

struct team;

struct worker {
    struct team *team;
    pthread_t thread;
    size_t index;
};

/* One thread per CPU: left alone, the scheduler kept the two threads of a run on one CPU for
 * the whole process now and then (sleeping threads look idle), halving the figure. */
static void pin(pthread_t thread, size_t cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET((int)(cpu % (size_t)sysconf(_SC_NPROCESSORS_ONLN)), &set);
    pthread_setaffinity_np(thread, sizeof(set), &set);
}

struct team {
    const struct loom_model *model;
    const float *x;
    float *out;
    size_t n, nthreads;
    size_t next; /* the next block of rows to take (atomic) */
    bool quit;
    pthread_barrier_t start, done;
    struct worker *workers;
};

enum { TEAM_BLOCK = 256 };

/* Predict blocks of rows until none are left. */
static void team_work(struct team *t)
{
    const struct loom_model_info *info = loom_model_info(t->model);
    for (;;) {
        size_t lo = __atomic_fetch_add(&t->next, TEAM_BLOCK, __ATOMIC_RELAXED);
        if (lo >= t->n)
            return;
        size_t hi = LOOM_MIN(t->n, lo + TEAM_BLOCK);
        loom_model_predict(t->model, t->x + lo * info->num_features, hi - lo,
                           t->out + lo * info->num_outputs);
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    pin(pthread_self(), w->index);
    for (;;) {
        pthread_barrier_wait(&w->team->start);
        if (w->team->quit)
            return NULL;
        team_work(w->team);
        pthread_barrier_wait(&w->team->done);
    }
}

static void team_init(struct team *t, const struct loom_model *model, size_t nthreads)
{
    memset(t, 0, sizeof(*t));
    t->model = model;
    t->nthreads = nthreads;
    pthread_barrier_init(&t->start, NULL, (unsigned)nthreads);
    pthread_barrier_init(&t->done, NULL, (unsigned)nthreads);
    t->workers = loom_calloc(nthreads, sizeof(*t->workers));
    pin(pthread_self(), 0);
    for (size_t i = 1; i < nthreads; i++) {
        t->workers[i] = (struct worker){ .team = t, .index = i };
        pthread_create(&t->workers[i].thread, NULL, worker_main, &t->workers[i]);
    }
}

/* Predict n rows on all threads, the calling thread one of them. */
static void team_run(struct team *t, const float *x, size_t n, float *out)
{
    t->x = x;
    t->n = n;
    t->out = out;
    t->next = 0;
    pthread_barrier_wait(&t->start);
    team_work(t);
    pthread_barrier_wait(&t->done);
}

static void team_release(struct team *t)
{
    t->quit = true;
    pthread_barrier_wait(&t->start);
    for (size_t i = 1; i < t->nthreads; i++)
        pthread_join(t->workers[i].thread, NULL);
    pthread_barrier_destroy(&t->start);
    pthread_barrier_destroy(&t->done);
    free(t->workers);
}

/* ---- input rows ---- */

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "bench_evaluator: cannot open %s\n", path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    rewind(f);
    char *buf = loom_malloc((size_t)size + 1);
    *len = fread(buf, 1, (size_t)size, f);
    fclose(f);
    return buf;
}

/* The "inputs" of a rows file, cycled to n rows; every copy after the first is scaled by a
 * deterministic factor in [0.9, 1.1) so that the rows take different paths. */
static float *load_rows(const char *path, size_t nf, size_t n)
{
    size_t len;
    char *src = read_file(path, &len);
    struct loom_arena arena;
    struct loom_json_doc doc;
    struct loom_error err = { 0 };
    const struct loom_json_limits lim = { .max_tokens = INT32_MAX, .allow_nonfinite = true };
    loom_arena_init(&arena, 0);
    if (loom_json_parse(src, len, &lim, &arena, &doc, &err)) {
        fprintf(stderr, "bench_evaluator: %s: %s\n", path, err.msg);
        exit(2);
    }
    int inputs = loom_json_obj_get(&doc, 0, "inputs");
    int nrows = inputs >= 0 ? loom_json_size(&doc, inputs) : 0;
    if (nrows == 0) {
        fprintf(stderr, "bench_evaluator: %s has no inputs\n", path);
        exit(2);
    }
    float *base = loom_malloc(loom_mul_size((size_t)nrows, nf * sizeof(float)));
    size_t r = 0;
    loom_json_foreach (&doc, inputs, row) {
        size_t c = 0;
        if ((size_t)loom_json_size(&doc, row) != nf) {
            fprintf(stderr, "bench_evaluator: %s: rows must have %zu values\n", path, nf);
            exit(2);
        }
        loom_json_foreach (&doc, row, v)
            loom_json_to_float(&doc, v, &base[r * nf + c++]);
        r++;
    }
    float *x = loom_malloc(loom_mul_size(n, nf * sizeof(float)));
    uint64_t state = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < n; i++) {
        const float *b = base + (i % (size_t)nrows) * nf;
        for (size_t j = 0; j < nf; j++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            float scale = i < (size_t)nrows ? 1.0f : 0.9f + (float)(state >> 40) / (1 << 24) * 0.2f;
            x[i * nf + j] = b[j] * scale;
        }
    }
    free(base);
    free(src);
    loom_arena_release(&arena);
    return x;
}

static double seconds(uint64_t ns)
{
    return (double)ns / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_evaluator MODEL.json ROWS.json [ROWS]\n");
        return 2;
    }
    const char *model_path = argv[1], *rows_path = argv[2];
    size_t n = argc > 3 ? strtoull(argv[3], NULL, 10) : 10000;
    size_t nthreads = (size_t)sysconf(_SC_NPROCESSORS_ONLN);
    nthreads = nthreads ? nthreads : 1;

    struct loom_model *model;
    struct loom_error err = { 0 };
    if (loom_model_load_file("xgboost", model_path, NULL, &model, &err)) {
        fprintf(stderr, "bench_evaluator: loom: %s\n", err.msg);
        return 2;
    }
    const struct loom_model_info *info = loom_model_info(model);
    size_t nf = info->num_features, no = info->num_outputs;

    BoosterHandle b;
    char nt[24];
    snprintf(nt, sizeof(nt), "%zu", nthreads);
    XGB_CHECK(XGBoosterCreate(NULL, 0, &b));
    XGB_CHECK(XGBoosterLoadModel(b, model_path));
    XGB_CHECK(XGBoosterSetParam(b, "nthread", nt));
    int major, minor, patch;
    XGBoostVersion(&major, &minor, &patch);

    float *x = load_rows(rows_path, nf, n);
    float *ours = loom_malloc(loom_mul_size(n, no * sizeof(float)));
    struct team team;
    team_init(&team, model, nthreads);

    /* Agreement on every row, and on each row predicted alone. */
    team_run(&team, x, n, ours);
    const float *theirs = xgb_predict(b, x, n, nf);
    double maxdiff = 0;
    size_t differ = 0;
    for (size_t i = 0; i < n * no; i++) {
        double d = fabs((double)ours[i] - (double)theirs[i]);
        if (!(d <= maxdiff))
            maxdiff = isnan(d) ? INFINITY : d;
        differ += memcmp(&ours[i], &theirs[i], sizeof(float)) != 0;
    }
    for (size_t i = 0; i < LOOM_MIN(n, (size_t)1000); i++) {
        float one[LOOM_MODEL_MAX_GROUPS_DEFAULT];
        loom_model_predict(model, x + i * nf, 1, one);
        differ += memcmp(one, ours + i * no, no * sizeof(float)) != 0;
    }

    /* One row per call. */
    enum { ROUNDS = 5 };
    const size_t loom_calls = 200000, xgb_calls = 5000;
    double loom1 = INFINITY, xgb1 = INFINITY, loomn = INFINITY, xgbn = INFINITY;
    volatile float sink = 0;
    for (int round = 0; round < ROUNDS; round++) {
        uint64_t t0 = loom_now_ns();
        for (size_t i = 0; i < loom_calls; i++) {
            float one[LOOM_MODEL_MAX_GROUPS_DEFAULT];
            loom_model_predict(model, x + (i % n) * nf, 1, one);
            sink += one[0];
        }
        uint64_t t1 = loom_now_ns();
        for (size_t i = 0; i < xgb_calls; i++)
            sink += xgb_predict(b, x + (i % n) * nf, 1, nf)[0];
        uint64_t t2 = loom_now_ns();
        loom1 = LOOM_MIN(loom1, seconds(t1 - t0) / (double)loom_calls);
        xgb1 = LOOM_MIN(xgb1, seconds(t2 - t1) / (double)xgb_calls);
    }
    (void)sink; /* read once: the predictions above cannot be optimised away */
    /* n rows per call, every core. */
    for (int round = 0; round < 3 * ROUNDS; round++) {
        uint64_t t0 = loom_now_ns();
        team_run(&team, x, n, ours);
        uint64_t t1 = loom_now_ns();
        sink += xgb_predict(b, x, n, nf)[0];
        uint64_t t2 = loom_now_ns();
        loomn = LOOM_MIN(loomn, seconds(t1 - t0));
        xgbn = LOOM_MIN(xgbn, seconds(t2 - t1));
    }

    printf("model: %s (%s, %zu trees, max depth %zu, %zu features); libxgboost %d.%d.%d; "
           "%zu threads\n",
           model_path, info->objective, info->num_trees, info->max_depth, nf, major, minor, patch,
           nthreads);
    printf("agreement: %zu rows, max abs diff %.3g, %zu values not bit-identical\n", n, maxdiff,
           differ);
    printf("1 row:       loom %8.3f us   xgboost %8.3f us   loom is %.1fx faster\n", loom1 * 1e6,
           xgb1 * 1e6, xgb1 / loom1);
    printf("%zu rows: loom %8.3f ms   xgboost %8.3f ms   loom is %.1fx faster\n", n, loomn * 1e3,
           xgbn * 1e3, xgbn / loomn);

    team_release(&team);
    XGB_CHECK(XGBoosterFree(b));
    loom_model_free(model);
    free(x);
    free(ours);
    return maxdiff <= 1e-6 ? 0 : 1;
}
