/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The trainer: datasets, training jobs and their reports.
 *
 * How it fits together. A dataset (datasets.c) is a CSV file uploaded once: hashed, written and
 * parsed while it streams in, stored content-addressed as <datasets>/<hex>.csv and described
 * (rows, columns with their type and missing count) in the store. A training job (jobs.c) is a
 * JSON spec validated against its dataset's description and recorded as `queued`; a scheduler
 * runs at most --trainer.max-concurrent-jobs of them at a time on a pool of its own (so that a
 * long training never holds the process's work pool, which the API's store calls and, in one
 * process, the registry need), the others wait in order. A running job loads its dataset into
 * float32 matrices (label-encoding string features), splits it deterministically, trains
 * (train_xgb.c through libxgboost's C API, train_linear.c with loom's own solver), reporting
 * progress after every round, then evaluates the model with loom's native evaluator on the
 * validation rows (evaluate.c: metrics, fairness per group of a sensitive attribute, single-row
 * latency, gates) and publishes it to the model registry over its HTTP API as a `ready` or
 * `rejected` version with the report in its metadata (report.c). Cancellation is checked between
 * rounds. A job never disappears: at start, jobs left queued or running by a previous process are
 * marked failed with the reason. The API is in api.c; every store call runs on the work pool, never
 * on a loop thread.
 */
#ifndef LOOM_SVC_TRAINER_H
#define LOOM_SVC_TRAINER_H

#include <loom/bus.h>
#include <loom/digest.h>
#include <loom/http.h>
#include <loom/json.h>
#include <loom/metrics.h>
#include <loom/model.h>
#include <loom/service.h>
#include <loom/store.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

extern const struct loom_service trainer_service;

struct trn_service;
struct trn_spec;

/* --trainer.* settings. */
struct trn_conf {
    const char *store;    /* URL; "" means sqlite:<data-dir>/trainer.db */
    const char *datasets; /* directory; "" means <data-dir>/datasets */
    const char *registry; /* base URL of the model registry */
    uint64_t max_dataset_bytes;
    int64_t max_concurrent_jobs;
    bool events; /* run the jobs loom.training.requested events on the bus ask for */
};

/* The reason a job left queued or running by a stopped trainer carries. */
#define TRN_STOPPED_RUNNING "the trainer stopped while this job was running"
#define TRN_STOPPED_QUEUED  "the trainer stopped before this job started"

/* ---- datasets (datasets.c) ---- */

struct trn_column {
    char *name;
    bool is_string; /* some non-empty value is not a number */
    uint64_t missing;
    double min, max; /* of the numbers (NaN when none) */
};

struct trn_dataset {
    char digest[8 + LOOM_SHA256_HEX]; /* "sha256:<hex>" */
    uint64_t rows, size;
    struct trn_column *cols;
    size_t ncols;
    int64_t created_ms;
};

void trn_dataset_release(struct trn_dataset *d);
/* The description as a JSON object. */
void trn_dataset_json(struct loom_json_writer *w, const struct trn_dataset *d);
/* Parse a column list as trn_dataset_json writes it (from the store). */
loom_err trn_columns_parse(struct loom_str json, struct trn_dataset *d, struct loom_error *err);
/* Read a dataset's description from the store: LOOM_ENOTFOUND if unknown. */
loom_err trn_dataset_get(struct loom_db *db, const char *digest, struct trn_dataset *out,
                         struct loom_error *err);
/* The file of a dataset (caller frees). */
char *trn_dataset_path(const struct trn_service *trn, const char *hex);

/* POST /api/v1/datasets (LOOM_ROUTE_STREAM), GET /api/v1/datasets[/{digest}]. */
void trn_h_dataset_upload(struct loom_http_req *req);
void trn_h_dataset_list(struct loom_http_req *req);
void trn_h_dataset_get(struct loom_http_req *req);

/* Create the datasets directory and delete uploads left by dead processes. Main thread. */
loom_err trn_datasets_init(struct trn_service *trn, struct loom_error *err);

/* A dataset loaded for training: the spec's features as dense float32 rows. */
struct trn_encoding {
    const char *column; /* borrowed from the spec */
    char **values;      /* sorted: value i is encoded as i */
    size_t n;
};

struct trn_data {
    size_t nrows, nfeat;
    float *x;        /* nrows x nfeat, NaN = missing */
    float *y;        /* nrows */
    uint32_t *group; /* nrows: index into group_names, or NULL without a sensitive attribute */
    char **group_names;
    size_t ngroups;
    const char *const *feature_names; /* the spec's */
    struct trn_encoding *enc;         /* string features */
    size_t nenc;
};

/* Read the dataset file at `path` (described by ds) into out, for spec. Errors name the line.
 * stop(arg) (may be NULL) is asked now and then: true abandons the load with LOOM_ECANCELED. */
loom_err trn_data_load(const char *path, const struct trn_dataset *ds, const struct trn_spec *spec,
                       bool (*stop)(void *arg), void *arg, struct trn_data *out,
                       struct loom_error *err);
void trn_data_release(struct trn_data *d);

/* ---- the job spec (jobs.c) ---- */

enum trn_backend { TRN_BACKEND_XGBOOST, TRN_BACKEND_LINEAR };
/* What the objective predicts, which decides the metrics and gates that apply. */
enum trn_task { TRN_TASK_BINARY, TRN_TASK_REGRESSION };

struct trn_param {
    char *name, *value; /* as given; numbers in their JSON text */
};

/* The gates; NaN when not set. */
struct trn_gates {
    double min_auc, min_accuracy, max_rmse, max_equal_opportunity_diff, max_demographic_parity_diff,
        max_p99_latency_us;
};

struct trn_spec {
    char *model;
    char *dataset; /* "sha256:<hex>" */
    char *label;
    char *sensitive; /* NULL: none */
    char **features; /* NULL until resolved against the dataset when not given */
    size_t nfeatures;
    bool features_given;
    enum trn_backend backend;
    char *objective;
    enum trn_task task;
    struct trn_param *params;
    size_t nparams;
    int64_t rounds;
    double validation;
    uint64_t seed;
    struct trn_gates gates;
    char *code_version; /* "" when not given */
    char *description;  /* "" when not given */
};

/* Parse a job spec, checking everything that does not need the dataset. On error `field` gets
 * the offending field's path ("params.max_depth", "features[2]") and err the reason. */
loom_err trn_spec_parse(const char *json, size_t len, struct trn_spec *spec, char *field,
                        size_t field_cap, struct loom_error *err);
/* Check the spec against its dataset and fill the default feature list. */
loom_err trn_spec_check(struct trn_spec *spec, const struct trn_dataset *ds, char *field,
                        size_t field_cap, struct loom_error *err);
void trn_spec_release(struct trn_spec *spec);
/* The spec with its defaults, as stored and shown. */
void trn_spec_json(struct loom_json_writer *w, const struct trn_spec *spec);
/* The value of parameter `name`, or NULL. */
const char *trn_spec_param(const struct trn_spec *spec, const char *name);

/* ---- training (train_xgb.c, train_linear.c) ---- */

/* Called after every round with the validation metric's name ("logloss") and value: a non-OK
 * return (LOOM_ECANCELED) stops training. */
typedef loom_err (*trn_progress_fn)(void *arg, int64_t round, int64_t rounds, const char *metric,
                                    double value);

/* The data a trainer sees: dense float32 rows, NaN for missing values. Borrowed. */
struct trn_train_in {
    const struct trn_spec *spec;
    const float *xtr, *ytr;
    size_t ntr;
    const float *xva, *yva;
    size_t nva;
    size_t nfeat;
    const char *const *feature_names;
    unsigned nthread;
    trn_progress_fn progress;
    void *arg;
};

struct trn_train_out {
    char *model; /* the model file (caller frees) */
    size_t model_len;
    const char *format;   /* "xgboost" or "linear": the backend of loom_model_load */
    char metric[64];      /* the per-round validation metric: "logloss", "rmse" */
    struct loom_buf info; /* a JSON object about the training (effective parameters...) */
};

loom_err trn_train_xgb(const struct trn_train_in *in, struct trn_train_out *out,
                       struct loom_error *err);
loom_err trn_train_linear(const struct trn_train_in *in, struct trn_train_out *out,
                          struct loom_error *err);
void trn_train_out_release(struct trn_train_out *out);

/* The XGBoost objectives and parameters the trainer accepts (train_xgb.c). */
bool trn_xgb_objective_ok(const char *objective, enum trn_task *task);
bool trn_xgb_param_ok(const char *name);
/* Check a spec's XGBoost parameters with a dry run of libxgboost on a few rows: 400 material
 * now rather than a failed job later. `field` gets "params.<name>" when one is named. */
loom_err trn_xgb_check_params(const struct trn_spec *spec, size_t nfeat, char *field,
                              size_t field_cap, struct loom_error *err);

/* ---- evaluation (evaluate.c) ---- */

struct trn_group {
    char *name;
    uint64_t count, positives, predicted_positive, true_positive, false_positive;
};

struct trn_gate_result {
    const char *name;
    double threshold, value;
    bool passed;
};

struct trn_eval {
    enum trn_task task;
    size_t n;
    /* binary */
    double auc, accuracy, logloss, positive_rate, predicted_positive_rate;
    uint64_t tp, fp, tn, fn;
    /* both */
    double rmse, mae, r2;
    /* fairness (binary, with a sensitive attribute) */
    bool has_fairness;
    struct trn_group *groups;
    size_t ngroups;
    double eo_diff, dp_diff; /* NaN when fewer than two groups qualify */
    /* latency */
    uint64_t latency_calls;
    double p50_us, p99_us, mean_us;
    /* gates */
    struct trn_gate_result gates[6];
    size_t ngates;
    bool passed;
};

/* Evaluate `pred` (model outputs for the n validation rows) against y. group[i] indexes
 * group_names (ngroups), or group is NULL. */
void trn_evaluate(enum trn_task task, const char *objective, const float *y, const float *pred,
                  size_t n, const uint32_t *group, const char *const *group_names, size_t ngroups,
                  struct trn_eval *ev);
/* Single-row predictions over the rows (cycled to at least `min_calls`): p50/p99/mean. */
void trn_measure_latency(const struct loom_model *model, const float *x, size_t n, size_t nfeat,
                         size_t min_calls, struct trn_eval *ev);
/* Apply the spec's gates to ev. */
void trn_apply_gates(const struct trn_gates *g, struct trn_eval *ev);
void trn_eval_release(struct trn_eval *ev);
/* The metrics object of a report. */
void trn_eval_metrics_json(struct loom_json_writer *w, const struct trn_eval *ev);
/* fairness, latency, confusion matrix and gates members of a report (into an open object). */
void trn_eval_report_members(struct loom_json_writer *w, const struct trn_eval *ev,
                             const char *sensitive);

/* ---- reports and publishing to the registry (report.c) ---- */

/* Everything a report is made of, borrowed. */
struct trn_report_in {
    const char *job_id;
    const struct trn_spec *spec;
    const struct trn_data *data;
    size_t ntr, nva;
    const struct trn_train_out *train;
    const struct trn_eval *ev;
    const char *model_digest; /* "sha256:<hex>" of the model file */
    size_t model_size;
    double queued_ms, load_ms, train_ms, evaluate_ms;
};

/* The report (a JSON object) into out. */
void trn_report_json(struct loom_buf *out, const struct trn_report_in *in);
/* The version metadata the registry stores: metrics, parameters, lineage, report, description. */
void trn_metadata_json(struct loom_buf *out, const struct trn_report_in *in,
                       struct loom_str report);

struct trn_published {
    int64_t version;
    char digest[8 + LOOM_SHA256_HEX];
};

/* Push the model file, the model (if new) and a version (status "ready" or "rejected") with
 * `metadata` to the registry at `base`, each POST with an Idempotency-Key derived from `job_id`
 * so that retries never make two versions. Connection errors and 5xx are retried a few times
 * (not while `svc` drains); a 4xx is final and its detail returned. Blocking: pool threads. */
loom_err trn_publish(const char *base, const char *job_id, const char *model_name,
                     const char *description, const char *model, size_t model_len, bool ready,
                     struct loom_str metadata, const struct loom_svc *svc,
                     struct trn_published *out, struct loom_error *err);

/* ---- jobs (jobs.c) ---- */

struct trn_job;

/* The scheduler's record of the jobs of this process (queued or running). */
struct trn_sched {
    pthread_mutex_t mu;
    struct trn_job *active;             /* every job of this process, queued or running */
    struct trn_job *queue, *queue_tail; /* waiting for a slot, in order */
    size_t running;
};

/* The API's side of jobs: create (with validation and the Idempotency-Key), list, get, cancel. */
void trn_h_job_create(struct loom_http_req *req);
void trn_h_job_list(struct loom_http_req *req);
void trn_h_job_get(struct loom_http_req *req);
void trn_h_job_cancel(struct loom_http_req *req);

/*
 * The job a loom.training.requested event asks for: `spec_json` (the event's data) is checked
 * as POST /api/v1/training-jobs checks a body; then one transaction records the event as
 * processed by the consumer "trainer" (loom_consume_once) and inserts the job, whose id
 * (job_id, LOOM_UUID_LEN + 1 bytes) is derived from the event's; then the job is queued.
 * *duplicate: the event was processed before, nothing was done. LOOM_EINVAL, with `field` and
 * err, for a spec that can never run (park the event); other errors are worth a retry.
 * Blocking.
 */
loom_err trn_job_from_event(struct trn_service *trn, struct loom_str event_id,
                            struct loom_str spec_json, char *job_id, bool *duplicate, char *field,
                            size_t field_cap, struct loom_error *err);
/* Follow loom.training.requested on the bus (events.c); stop before the store closes. */
loom_err trn_events_start(struct trn_service *trn, struct loom_error *err);
void trn_events_stop(struct trn_service *trn);
/* Mark jobs left queued or running by a previous process failed. Main thread, at init. */
loom_err trn_jobs_recover(struct trn_service *trn, struct loom_error *err);
/* At shutdown (the pool is gone): mark this process's queued jobs failed and free them. */
void trn_jobs_shutdown(struct trn_service *trn);

/* The schema (component "trainer"). */
extern const struct loom_migration trn_migrations[];
extern const size_t trn_nmigrations;

/* ---- the service ---- */

struct trn_service {
    const struct trn_conf *conf;
    struct loom_svc *svc;
    struct loom_pool *pool;       /* the process's work pool: store calls of the API */
    struct loom_pool *train_pool; /* max-concurrent-jobs threads: running jobs only */
    struct loom_store *store;
    struct loom_bus *bus;     /* with --trainer.events: where requests arrive... */
    struct loom_bus_sub *sub; /* ...through the group "trainer" */
    char *datasets_dir;
    char *registry;   /* base URL without a trailing slash */
    unsigned nthread; /* XGBoost threads: the work pool's size */
    size_t max_jobs;
    struct loom_loop *loop; /* where job completions run */
    struct trn_sched sched;
    /* metrics */
    struct loom_counter_family *f_jobs; /* by final status */
    struct loom_gauge *g_running, *g_queued;
    struct loom_histogram *h_train;
    struct loom_counter *c_datasets;
};

/* ---- api helpers (api.c) ---- */

/* One request's store work on the pool, answered from the completion on the loop. */
struct trn_op;
typedef void (*trn_op_fn)(struct trn_op *op);

struct trn_op {
    struct loom_work work;
    struct loom_http_req *req;
    struct trn_service *trn;
    trn_op_fn fn;
    int status;
    const char *content_type;
    struct loom_buf body;
    char location[160]; /* a Location header for the answer, when set */
    void *args;
};

struct trn_op *trn_op_new(struct loom_http_req *req, trn_op_fn fn, void *args);
/* Run op->fn on the pool, then answer; 503 at once when the pool refuses. */
void trn_op_submit(struct trn_op *op);
/* Set op's answer to a problem; `field` (may be NULL) names the offending field. */
void trn_op_problem(struct trn_op *op, int status, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Set op's answer from a store error: 503 for a lost or busy database, else 500. */
void trn_op_store_error(struct trn_op *op, loom_err e, const struct loom_error *err);
/* Set op's answer to a JSON body (taken over from b). */
void trn_op_json(struct trn_op *op, int status, struct loom_buf *b);
/* Write a problem body (with extension members: field, line, column when non-zero). */
void trn_problem_body(struct loom_buf *b, int status, const char *detail, const char *field,
                      uint64_t line, uint64_t column);
/* Answer req with a problem at once (loop thread). */
void trn_problem(struct loom_http_req *req, int status, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The ?limit= of a list request (default 50, 1..500); false with a problem answered. */
bool trn_query_limit(struct loom_http_req *req, int64_t *limit);
/* One statement on a borrowed connection (loom_db_exec's contract). Pool threads only. */
loom_err trn_exec(struct loom_store *s, const char *sql, const struct loom_sql_value *params,
                  size_t nparams, loom_sql_row_fn fn, void *arg, int64_t *changes,
                  struct loom_error *err);
/* Wall time now in ms, and its RFC 3339 text. */
int64_t trn_now_ms(void);
void trn_write_time(struct loom_json_writer *w, const char *key, int64_t ms);

#define TRN_NROUTES 7
extern const struct loom_route trn_routes[TRN_NROUTES];

#endif
