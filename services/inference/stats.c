/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Statistics and metrics. Statistics follow Triton's statistics extension (per model version:
 * inference and execution counts, cumulative request, queue and compute times, and one entry per
 * executed batch size) and outlive reloads of the same name and version. Metrics are the
 * Prometheus view of the same events, per model and version, plus the state of every version.
 */
#include "inference/inference.h"

#include <loom/json.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct inf_stats_entry {
    struct inf_stats_entry *next;
    char *model;
    int64_t version;
    struct inf_stats stats;
    struct loom_gauge *ready; /* loom_inference_model_ready for this version */
};

struct inf_stats *inf_stats_for(struct inf_service *inf, const char *model, int64_t version)
{
    pthread_mutex_lock(&inf->stats_mu);
    struct inf_stats_entry *e = inf->stats_list;
    while (e && !(e->version == version && strcmp(e->model, model) == 0))
        e = e->next;
    if (!e) {
        e = loom_new(struct inf_stats_entry);
        e->model = loom_strdup(model);
        e->version = version;
        pthread_mutex_init(&e->stats.batch_mu, NULL);
        char ver[24];
        snprintf(ver, sizeof(ver), "%lld", (long long)version);
        const char *labels[] = { model, ver };
        e->ready = loom_gauge_get(inf->f_state, labels);
        e->next = inf->stats_list;
        inf->stats_list = e;
    }
    pthread_mutex_unlock(&inf->stats_mu);
    return &e->stats;
}

void inf_stats_free_all(struct inf_service *inf)
{
    while (inf->stats_list) {
        struct inf_stats_entry *e = inf->stats_list;
        inf->stats_list = e->next;
        pthread_mutex_destroy(&e->stats.batch_mu);
        free(e->stats.batches);
        free(e->model);
        free(e);
    }
}

void inf_stats_add(struct inf_counter *c, uint64_t ns)
{
    atomic_fetch_add_explicit(&c->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&c->ns, ns, memory_order_relaxed);
}

static void counter_add(struct inf_counter *c, uint64_t ns)
{
    inf_stats_add(c, ns);
}

void inf_stats_batch(struct inf_stats *s, int64_t size, uint64_t in_ns, uint64_t infer_ns,
                     uint64_t out_ns)
{
    pthread_mutex_lock(&s->batch_mu);
    struct inf_batch_stat *b = NULL;
    for (size_t i = 0; i < s->nbatches && !b; i++)
        if (s->batches[i].size == size)
            b = &s->batches[i];
    if (!b) {
        s->batches = loom_realloc(s->batches, (s->nbatches + 1) * sizeof(*s->batches));
        b = &s->batches[s->nbatches++];
        memset(b, 0, sizeof(*b));
        b->size = size;
    }
    counter_add(&b->input, in_ns);
    counter_add(&b->infer, infer_ns);
    counter_add(&b->output, out_ns);
    pthread_mutex_unlock(&s->batch_mu);
}

static void write_counter(struct loom_buf *out, const char *name, const struct inf_counter *c,
                          bool comma)
{
    loom_buf_printf(out, "%s\"%s\":{\"count\":%llu,\"ns\":%llu}", comma ? "," : "", name,
                    (unsigned long long)atomic_load(&c->count),
                    (unsigned long long)atomic_load(&c->ns));
}

static int cmp_batch(const void *a, const void *b)
{
    int64_t x = ((const struct inf_batch_stat *)a)->size,
            y = ((const struct inf_batch_stat *)b)->size;
    return (x > y) - (x < y);
}

void inf_stats_json(const struct inf_version *v, const struct inf_stats *cs, const char *name,
                    const char *version, struct loom_buf *out)
{
    LOOM_UNUSED(v);
    struct inf_stats *s = (struct inf_stats *)cs;
    loom_buf_append_cstr(out, "{\"name\":");
    loom_json_escape(out, name, strlen(name));
    loom_buf_append_cstr(out, ",\"version\":");
    loom_json_escape(out, version, strlen(version));
    loom_buf_printf(out,
                    ",\"last_inference\":%llu,\"inference_count\":%llu,"
                    "\"execution_count\":%llu,\"inference_stats\":{",
                    (unsigned long long)atomic_load(&s->last_inference_ms),
                    (unsigned long long)atomic_load(&s->inference_count),
                    (unsigned long long)atomic_load(&s->execution_count));
    struct inf_counter zero = { 0 };
    write_counter(out, "success", &s->success, false);
    write_counter(out, "fail", &s->fail, true);
    write_counter(out, "queue", &s->queue, true);
    write_counter(out, "compute_input", &s->compute_input, true);
    write_counter(out, "compute_infer", &s->compute_infer, true);
    write_counter(out, "compute_output", &s->compute_output, true);
    write_counter(out, "cache_hit", &zero, true);
    write_counter(out, "cache_miss", &zero, true);
    loom_buf_append_cstr(out, "},\"batch_stats\":[");
    pthread_mutex_lock(&s->batch_mu);
    if (s->nbatches)
        qsort(s->batches, s->nbatches, sizeof(*s->batches), cmp_batch);
    for (size_t i = 0; i < s->nbatches; i++) {
        const struct inf_batch_stat *b = &s->batches[i];
        loom_buf_printf(out, "%s{\"batch_size\":%lld", i ? "," : "", (long long)b->size);
        write_counter(out, "compute_input", &b->input, true);
        write_counter(out, "compute_infer", &b->infer, true);
        write_counter(out, "compute_output", &b->output, true);
        loom_buf_putc(out, '}');
    }
    pthread_mutex_unlock(&s->batch_mu);
    loom_buf_append_cstr(out, "]}");
}

void inf_metrics_init(struct inf_service *inf)
{
    struct loom_metrics *reg = loom_metrics_global();
    static const char *const mv[] = { "model", "version" };
    static const double batch_bounds[] = {
        1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384
    };
    const char *o = "inference";
    inf->f_success =
        loom_metrics_counter_family(reg, o, "loom_inference_request_success_total",
                                    "Inference requests answered successfully.", mv, 2);
    inf->f_failure = loom_metrics_counter_family(reg, o, "loom_inference_request_failure_total",
                                                 "Inference requests that failed (after the model "
                                                 "was found).",
                                                 mv, 2);
    inf->f_infer_count = loom_metrics_counter_family(
        reg, o, "loom_inference_inference_count_total",
        "Inferences performed (batch elements: a request of 8 rows counts 8).", mv, 2);
    inf->f_exec_count = loom_metrics_counter_family(
        reg, o, "loom_inference_execution_count_total",
        "Model executions (dynamic batching merges requests into one execution).", mv, 2);
    inf->f_request =
        loom_metrics_histogram_family(reg, o, "loom_inference_request_duration_seconds",
                                      "End-to-end time of successful inference "
                                      "requests, from complete head to answer.",
                                      mv, 2, NULL, 0);
    inf->f_queue = loom_metrics_histogram_family(reg, o, "loom_inference_queue_duration_seconds",
                                                 "Time requests waited in the batching queue.", mv,
                                                 2, NULL, 0);
    inf->f_compute = loom_metrics_histogram_family(
        reg, o, "loom_inference_compute_duration_seconds",
        "Time of model executions (input gathering, inference, output).", mv, 2, NULL, 0);
    inf->f_batch = loom_metrics_histogram_family(reg, o, "loom_inference_batch_size",
                                                 "Rows per model execution.", mv, 2, batch_bounds,
                                                 LOOM_ARRAY_SIZE(batch_bounds));
    inf->f_queue_depth = loom_metrics_gauge_family(
        reg, o, "loom_inference_queue_depth", "Requests waiting in the batching queue.", mv, 2);
    inf->f_state =
        loom_metrics_gauge_family(reg, o, "loom_inference_model_ready",
                                  "1 if the model version is loaded and ready, else 0.", mv, 2);
}

void inf_version_metrics(struct inf_service *inf, struct inf_version *v)
{
    const char *labels[] = { v->model_name, v->version_str };
    v->m_success = loom_counter_get(inf->f_success, labels);
    v->m_failure = loom_counter_get(inf->f_failure, labels);
    v->m_infer_count = loom_counter_get(inf->f_infer_count, labels);
    v->m_exec_count = loom_counter_get(inf->f_exec_count, labels);
    v->m_request = loom_histogram_get(inf->f_request, labels);
    v->m_queue = loom_histogram_get(inf->f_queue, labels);
    v->m_compute = loom_histogram_get(inf->f_compute, labels);
    v->m_batch = loom_histogram_get(inf->f_batch, labels);
    v->m_queue_depth = loom_gauge_get(inf->f_queue_depth, labels);
}

void inf_publish_state_metrics(struct inf_service *inf, const struct inf_snapshot *snap)
{
    pthread_mutex_lock(&inf->stats_mu);
    for (struct inf_stats_entry *e = inf->stats_list; e; e = e->next) {
        bool ready = false;
        const struct inf_snap_model *m = inf_snap_find(snap, loom_str_cstr(e->model));
        for (size_t i = 0; m && i < m->nversions && !ready; i++)
            ready = m->versions[i].version == e->version && m->versions[i].state == INF_READY;
        loom_gauge_set(e->ready, ready ? 1 : 0);
    }
    pthread_mutex_unlock(&inf->stats_mu);
}
