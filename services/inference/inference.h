/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The inference service: the KServe Open Inference Protocol v2 over REST, with Triton's binary
 * tensor, repository, statistics and classification extensions, serving models from a
 * Triton-style repository (DIR/<model>/config.json, DIR/<model>/<version>/<file>) through
 * loom's native model runtimes.
 *
 * How it fits together. The control plane (repo.c) scans the repository, parses and completes
 * each model's config, loads the selected versions on the work pool and publishes an immutable
 * snapshot of everything servable; readers on the loop threads read the current snapshot
 * without locks, and an old snapshot is freed only once every loop has passed an iteration
 * boundary since it was replaced (quiescent-state reclamation). A loaded version is refcounted:
 * requests in flight keep it alive across a reload, so traffic moves to the new version as
 * soon as it is published and the old one goes when its last request completes. The data
 * plane (v2.c, codec.c, batch.c) decodes a request into a float32 matrix, queues it in the
 * version's per-loop batcher (or runs it at once), executes on the loop thread or, for large
 * batches, across the work pool, and encodes the answer as JSON or binary tensors.
 */
#ifndef LOOM_SVC_INFERENCE_H
#define LOOM_SVC_INFERENCE_H

#include <loom/bus.h>
#include <loom/digest.h>
#include <loom/http.h>
#include <loom/metrics.h>
#include <loom/model.h>
#include <loom/service.h>
#include <loom/tensor.h>

#include <pthread.h>
#include <stdatomic.h>

extern const struct loom_service inference_service;

enum inf_control { INF_CONTROL_NONE, INF_CONTROL_POLL, INF_CONTROL_EXPLICIT };

struct inf_conf {
    const char *model_repository;
    int model_control;
    struct loom_conf_list load_models;
    uint64_t poll_interval;
    int64_t max_tensor_elements;
    uint64_t max_model_bytes;
    uint64_t max_infer_body;
    int64_t parallel_rows;        /* rows from which an execution is split across the work pool */
    const char *registry;         /* model registry base URL, or "" */
    struct loom_conf_list models; /* registry references served: name@alias or name:version */
    uint64_t registry_poll;
    int64_t registry_max_batch_size;
    bool registry_events;  /* follow the registry's events on the bus (--bus) */
    const char *bus_group; /* the bus group; "" means inference-<host>-<listen port> */
};

/* ---- model configuration (Triton names, JSON form) ---- */

struct inf_tensor_spec {
    char *name;
    enum loom_dtype dtype;
    int64_t dims[LOOM_TENSOR_MAX_DIMS];
    size_t ndims;
    bool optional;
};

enum inf_policy { INF_POLICY_LATEST, INF_POLICY_ALL, INF_POLICY_SPECIFIC };

/* What Triton FIL configurations ask of a classifier's output (parameters output_class,
 * predict_proba, threshold), applied after the runtime's prediction. */
enum inf_post {
    INF_POST_NONE,  /* the runtime's prediction as is */
    INF_POST_CLASS, /* the class: p > threshold for binary, argmax for multiclass */
    INF_POST_PROBA, /* per-class probabilities: [1 - p, p] for binary */
};

struct inf_config {
    atomic_int refs;
    char *name;
    char *backend;
    char *platform;
    int64_t max_batch_size;
    struct inf_tensor_spec input, output; /* the runtimes take one input and give one output */
    bool has_input, has_output;
    enum inf_policy policy;
    int64_t num_versions;
    int64_t *versions;
    size_t nversions;
    bool dynamic_batching;
    uint64_t max_queue_delay_us;
    uint64_t max_queue_size; /* 0: unbounded */
    uint64_t default_timeout_us;
    bool allow_timeout_override;
    int64_t *preferred_batch_sizes;
    size_t npreferred;
    char *default_model_filename;
    char *parameters_json; /* the "parameters" object, verbatim ("{}" if none) */
    enum inf_post post;
    float threshold;
    size_t out_width; /* values per row the service answers with (after post); set on completion */
    char *json;       /* the completed configuration, for GET .../config */
    uint64_t digest;  /* of the config file's bytes: a change means a reload */
};

/* Parse config.json text (or NULL for none) for model `name`. NULL and *err on a bad config. */
struct inf_config *inf_config_parse(const char *name, const char *text, size_t len,
                                    struct loom_error *err);
struct inf_config *inf_config_ref(struct inf_config *c);
void inf_config_unref(struct inf_config *c);
/* Fill what the file left out from the loaded model (inputs, outputs, dims), check the rest
 * against it, and render c->json. */
/* Values per row the service answers with for a model under this configuration (after
 * c->post), or 0 with *err if the model's objective does not allow c->post. */
size_t inf_config_out_width(const struct inf_config *c, const struct loom_model_info *info,
                            struct loom_error *err);
/* Apply c->post to `rows` predictions `raw` (info->num_outputs each) into y (out_width each). */
void inf_postprocess(const struct inf_config *c, const struct loom_model_info *info,
                     const float *raw, size_t rows, float *y);
loom_err inf_config_complete(struct inf_config *c, const struct loom_model_info *info,
                             struct loom_error *err);

/* ---- loaded versions ---- */

enum inf_state { INF_UNKNOWN, INF_READY, INF_UNAVAILABLE, INF_LOADING, INF_UNLOADING };
const char *inf_state_name(enum inf_state s);

struct inf_counter {
    atomic_uint_fast64_t count, ns;
};

struct inf_batch_stat {
    int64_t size;
    struct inf_counter input, infer, output;
};

struct inf_stats {
    atomic_uint_fast64_t inference_count, execution_count, last_inference_ms;
    struct inf_counter success, fail, queue, compute_input, compute_infer, compute_output;
    pthread_mutex_t batch_mu;
    struct inf_batch_stat *batches;
    size_t nbatches;
};

struct inf_batcher;
struct inf_service;

struct inf_version {
    atomic_int refs;
    struct inf_service *inf;
    char *model_name;
    int64_t version;
    char version_str[24];
    struct inf_config *config;
    struct loom_model *model;
    const struct loom_model_info *info;
    uint64_t file_mtime_ns, file_size; /* to notice a changed file when polling */
    char digest[LOOM_SHA256_HEX];      /* the artifact's, for models from the registry */
    struct inf_stats *stats;           /* shared by reloads of the same name and version */
    struct inf_batcher *batchers;      /* one per loop, when dynamic batching is on */
    atomic_uint_fast64_t queued;       /* requests waiting in all batchers */
    /* metrics */
    struct loom_counter *m_success, *m_failure, *m_infer_count, *m_exec_count;
    struct loom_histogram *m_request, *m_queue, *m_compute, *m_batch;
    struct loom_gauge *m_queue_depth;
};

struct inf_version *inf_version_ref(struct inf_version *v);
void inf_version_unref(struct inf_version *v);

/* ---- the published snapshot ---- */

struct inf_snap_version {
    int64_t version;
    enum inf_state state;
    char *reason;
    struct inf_version *v; /* set when READY */
};

struct inf_snap_model {
    char *name;
    enum inf_state state; /* READY if any version is; else why not */
    char *reason;
    struct inf_snap_version *versions; /* ascending */
    size_t nversions;
    struct inf_config *config; /* of the ready versions, or NULL */
};

struct inf_snapshot {
    struct inf_snap_model *models; /* sorted by name */
    size_t nmodels;
};

const struct inf_snap_model *inf_snap_find(const struct inf_snapshot *s, struct loom_str name);
/* The version to serve: `version` if > 0, else the highest READY one; NULL if none. */
const struct inf_snap_version *inf_snap_pick(const struct inf_snap_model *m, int64_t version);

/* ---- the service ---- */

struct inf_loop {
    struct inf_service *inf;
    size_t index;
    struct loom_loop *loop;
};

struct inf_service {
    const struct inf_conf *conf;
    char *repo_dir; /* --inference.model-repository, or <data-dir>/models */
    struct loom_svc *svc;
    struct loom_pool *pool;
    struct inf_loop *loops;
    size_t nloops;
    _Atomic(struct inf_snapshot *) snap;
    pthread_mutex_t ctl_mu; /* serialises the control plane */
    struct inf_ctl *ctl;    /* the control plane's own records (under ctl_mu) */
    pthread_mutex_t retire_mu;
    struct inf_retire *retiring_list; /* snapshots waiting for every loop's quiescent point */
    atomic_bool initial_load_done;
    struct loom_timer poll_timer;
    atomic_bool poll_running;
    struct loom_timer registry_timer;
    atomic_bool registry_running;
    struct loom_bus *bus;         /* with --inference.models: the registry's events... */
    struct loom_bus_sub *reg_sub; /* ...through this subscription (NULL until subscribed) */
    char bus_group[LOOM_BUS_GROUP_MAX + 1];
    char *cache_dir; /* <data-dir>/inference-cache: artifacts downloaded from the registry */
    /* stats survive reloads: one per model name and version */
    pthread_mutex_t stats_mu;
    struct inf_stats_entry *stats_list;
    atomic_bool stopping;
    /* metric families */
    struct loom_counter_family *f_success, *f_failure, *f_infer_count, *f_exec_count;
    struct loom_histogram_family *f_request, *f_queue, *f_compute, *f_batch;
    struct loom_gauge_family *f_queue_depth, *f_state;
};

static inline const struct inf_snapshot *inf_snapshot(struct inf_service *inf)
{
    return atomic_load_explicit(&inf->snap, memory_order_acquire);
}

static inline struct inf_loop *inf_loop_of(struct loom_loop *loop)
{
    return loom_loop_data(loop);
}

/* repo.c: the control plane. */
loom_err inf_repo_start(struct inf_service *inf, struct loom_error *err);
void inf_repo_stop(struct inf_service *inf);
/* Load (or reload) one model: runs on the work pool, then done(arg, err, msg) on `loop`. With
 * config_json (NULL: the repository's file) the model's configuration is replaced. */
typedef void (*inf_ctl_done_fn)(void *arg, loom_err err, const char *msg);
loom_err inf_repo_load(struct inf_service *inf, struct loom_loop *loop, struct loom_str name,
                       const char *config_json, size_t config_len, inf_ctl_done_fn done, void *arg);
loom_err inf_repo_unload(struct inf_service *inf, struct loom_loop *loop, struct loom_str name,
                         inf_ctl_done_fn done, void *arg);
/* Every model in the repository directory with its state, for /v2/repository/index. */
void inf_repo_index(struct inf_service *inf, bool ready_only, struct loom_buf *out);
/* Valid model name: 1..200 bytes of [A-Za-z0-9._-], not "." or ".." and no "..". */
bool inf_valid_model_name(struct loom_str name, struct loom_error *err);

/* stats.c */
struct inf_stats *inf_stats_for(struct inf_service *inf, const char *model, int64_t version);
void inf_stats_free_all(struct inf_service *inf);
void inf_metrics_init(struct inf_service *inf);
void inf_version_metrics(struct inf_service *inf, struct inf_version *v);
void inf_publish_state_metrics(struct inf_service *inf, const struct inf_snapshot *snap);
void inf_stats_add(struct inf_counter *c, uint64_t ns);
void inf_stats_batch(struct inf_stats *s, int64_t size, uint64_t in_ns, uint64_t infer_ns,
                     uint64_t out_ns);
void inf_stats_json(const struct inf_version *v, const struct inf_stats *s, const char *name,
                    const char *version, struct loom_buf *out);

/* ---- requests: codec.c ---- */

struct inf_out_req { /* an output the client asked for */
    bool binary;
    uint32_t classification; /* top-k, 0 for plain values */
};

struct inf_request {
    struct loom_str id;
    bool has_id;
    uint64_t rows; /* inference rows (batch elements) */
    float *x;      /* rows x num_features (arena) */
    int64_t in_shape[LOOM_TENSOR_MAX_DIMS];
    size_t in_ndims;
    bool want_output; /* the output was listed, or no outputs were listed */
    struct inf_out_req out;
    uint64_t timeout_us;         /* 0: none */
    struct loom_str params_json; /* request "parameters" echoed? no: kept for logging */
};

/* Decode an infer request body for version `v`. Returns 0 or an HTTP status (400) with the
 * message in err. Memory comes from the request's arena. */
int inf_decode(const struct inf_version *v, struct loom_http_req *http, struct inf_request *r,
               struct loom_error *err);

/* Encode the answer for `r` from `y` (rows x num_outputs) and respond. */
void inf_respond(const struct inf_version *v, struct loom_http_req *http,
                 const struct inf_request *r, const float *y);

/* ---- execution: batch.c ---- */

struct inf_job {
    struct inf_job *next;
    struct loom_http_req *http;
    struct inf_version *v; /* a reference */
    struct inf_request req;
    float *y;         /* rows x num_outputs (arena) */
    uint64_t t_start; /* when the request head was complete */
    uint64_t t_queued, t_exec, t_infer, t_done;
    uint64_t deadline; /* loop time, or UINT64_MAX */
};

/* Run (or queue) a decoded job; the job answers the request itself. */
void inf_submit(struct inf_loop *lp, struct inf_job *job);
void inf_batchers_init(struct inf_service *inf, struct inf_version *v);
void inf_batchers_free(struct inf_version *v);
/* Answer with an error and account for it. */
void inf_job_fail(struct inf_job *job, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* v2.c */
#define INF_NROUTES 20
extern const struct loom_route inf_routes[INF_NROUTES];

#endif
