/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Execution and dynamic batching. Each loop thread has, per model version, a batcher: requests
 * that arrive within max_queue_delay_microseconds of the first one waiting (or in the same loop
 * iteration, with a delay of 0) are merged, up to max_batch_size rows, into one execution. The
 * queue across all loops is bounded by max_queue_size (then 503), and a request whose timeout
 * passes while it waits is answered with 503. Small executions run right on the loop thread: a
 * one-row prediction costs well under a microsecond, less than any hand-off. Executions of at
 * least --inference.parallel-rows rows are split across the work pool, and their completions
 * come back to the loop that owns the requests.
 */
#include "inference/inference.h"

#include <loom/log.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct inf_batcher {
    struct inf_version *v; /* borrowed: the batcher lives in the version */
    struct inf_loop *lp;
    struct inf_job *head, *tail;
    uint64_t rows;
    struct loom_timer timer;
    struct loom_task flush_task;
    bool flush_scheduled;
};

static void record_failure(struct inf_job *job)
{
    struct inf_version *v = job->v;
    inf_stats_add(&v->stats->fail, loom_now_ns() - job->t_start);
    loom_counter_inc(v->m_failure);
}

static void job_release(struct inf_job *job)
{
    inf_version_unref(job->v);
    job->v = NULL;
}

void inf_job_fail(struct inf_job *job, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    record_failure(job);
    if (status == 503)
        loom_http_resp_header(job->http, "Retry-After", LOOM_STR("1"));
    loom_http_respond_error(job->http, status, "%s", msg);
    job_release(job);
}

/* ---- finishing an execution ---- */

static void answer(struct inf_job *job, uint64_t exec_ns, uint64_t infer_ns)
{
    struct inf_version *v = job->v;
    struct inf_stats *s = v->stats;
    uint64_t t0 = loom_now_ns();
    inf_respond(v, job->http, &job->req, job->y);
    uint64_t t1 = loom_now_ns();
    inf_stats_add(&s->success, t1 - job->t_start);
    inf_stats_add(&s->queue, job->t_exec - job->t_queued);
    inf_stats_add(&s->compute_input, exec_ns);
    inf_stats_add(&s->compute_infer, infer_ns);
    inf_stats_add(&s->compute_output, t1 - t0);
    atomic_store_explicit(&s->last_inference_ms, (uint64_t)(loom_wall_ns() / 1000000),
                          memory_order_relaxed);
    loom_counter_inc(v->m_success);
    loom_histogram_observe_ns(v->m_request, t1 - job->t_start);
    loom_histogram_observe_ns(v->m_queue, job->t_exec - job->t_queued);
    job_release(job);
}

struct exec {
    struct inf_loop *lp;
    struct inf_version *v; /* a reference for the execution */
    struct inf_job **jobs;
    size_t njobs;
    float *x, *y;
    float *raw; /* the runtime's output: y itself, or a buffer when the config post-processes */
    bool own;   /* x and y were allocated for a merged batch */
    uint64_t rows;
    uint64_t t_exec, t_gathered, t_inferred;
    size_t parts_left;
    struct exec_part *parts;
};

struct exec_part {
    struct loom_work work;
    struct exec *e;
    uint64_t begin, end;
};

static void exec_finish(struct exec *e)
{
    struct inf_version *v = e->v;
    size_t nout = v->config->out_width;
    if (e->raw != e->y) {
        inf_postprocess(v->config, v->info, e->raw, (size_t)e->rows, e->y);
        free(e->raw);
    }
    if (e->own) {
        /* Scatter the merged outputs back to each request. */
        uint64_t off = 0;
        for (size_t i = 0; i < e->njobs; i++) {
            struct inf_job *job = e->jobs[i];
            memcpy(job->y, e->y + off * nout, (size_t)job->req.rows * nout * sizeof(float));
            off += job->req.rows;
        }
    }
    uint64_t gather_ns = e->t_gathered - e->t_exec, infer_ns = e->t_inferred - e->t_gathered;
    uint64_t t0 = loom_now_ns();
    for (size_t i = 0; i < e->njobs; i++)
        answer(e->jobs[i], gather_ns, infer_ns);
    uint64_t out_ns = loom_now_ns() - t0;
    struct inf_stats *s = v->stats;
    atomic_fetch_add_explicit(&s->inference_count, e->rows, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->execution_count, 1, memory_order_relaxed);
    inf_stats_batch(s, (int64_t)e->rows, gather_ns, infer_ns, out_ns);
    loom_counter_add(v->m_infer_count, e->rows);
    loom_counter_inc(v->m_exec_count);
    loom_histogram_observe(v->m_batch, (double)e->rows);
    loom_histogram_observe_ns(v->m_compute, gather_ns + infer_ns + out_ns);
    if (e->own) {
        free(e->x);
        free(e->y);
    }
    free(e->parts);
    free(e->jobs);
    inf_version_unref(v);
    free(e);
}

static void part_work(struct loom_work *w)
{
    struct exec_part *p = LOOM_CONTAINER_OF(w, struct exec_part, work);
    struct exec *e = p->e;
    const struct loom_model_info *info = e->v->info;
    loom_model_predict(e->v->model, e->x + p->begin * info->num_features, p->end - p->begin,
                       e->raw + p->begin * info->num_outputs);
}

static void part_done(struct loom_work *w, loom_err status)
{
    struct exec_part *p = LOOM_CONTAINER_OF(w, struct exec_part, work);
    struct exec *e = p->e;
    if (status) {
        /* Cancelled: the pool is shutting down. Compute here so the answers stay right. */
        part_work(w);
    }
    if (--e->parts_left == 0) {
        e->t_inferred = loom_now_ns();
        exec_finish(e);
    }
}

/* Execute `jobs` (all of version v) as one batch. Takes over the jobs array. */
static void execute(struct inf_loop *lp, struct inf_version *v, struct inf_job **jobs, size_t njobs)
{
    struct exec *e = loom_new(struct exec);
    e->lp = lp;
    e->v = inf_version_ref(v);
    e->jobs = jobs;
    e->njobs = njobs;
    e->t_exec = loom_now_ns();
    const struct loom_model_info *info = v->info;
    for (size_t i = 0; i < njobs; i++) {
        jobs[i]->t_exec = e->t_exec;
        e->rows += jobs[i]->req.rows;
    }
    if (njobs == 1) {
        e->x = jobs[0]->req.x;
        e->y = jobs[0]->y;
    } else {
        e->own = true;
        e->x = loom_malloc(loom_mul_size((size_t)e->rows ? (size_t)e->rows : 1,
                                         info->num_features * sizeof(float)));
        e->y = loom_malloc(loom_mul_size((size_t)e->rows ? (size_t)e->rows : 1,
                                         v->config->out_width * sizeof(float)));
        uint64_t off = 0;
        for (size_t i = 0; i < njobs; i++) {
            size_t n = (size_t)jobs[i]->req.rows * info->num_features;
            memcpy(e->x + off * info->num_features, jobs[i]->req.x, n * sizeof(float));
            off += jobs[i]->req.rows;
        }
    }
    e->raw = e->y;
    if (v->config->post != INF_POST_NONE)
        e->raw = loom_malloc(loom_mul_size((size_t)e->rows ? (size_t)e->rows : 1,
                                           info->num_outputs * sizeof(float)));
    e->t_gathered = loom_now_ns();
    struct inf_service *inf = v->inf;
    unsigned threads = loom_pool_threads(inf->pool);
    if (e->rows < (uint64_t)inf->conf->parallel_rows || threads < 2) {
        if (e->rows)
            loom_model_predict(v->model, e->x, (size_t)e->rows, e->raw);
        e->t_inferred = loom_now_ns();
        exec_finish(e);
        return;
    }
    /* Split across the pool; the loop thread waits for nothing, the parts come back to it. */
    size_t nparts = LOOM_MIN((size_t)threads, (size_t)(e->rows / 64) + 1);
    e->parts = loom_calloc(nparts, sizeof(*e->parts));
    e->parts_left = nparts;
    uint64_t per = (e->rows + nparts - 1) / nparts;
    for (size_t i = 0; i < nparts; i++) {
        struct exec_part *p = &e->parts[i];
        p->e = e;
        p->begin = LOOM_MIN(e->rows, per * i);
        p->end = LOOM_MIN(e->rows, per * (i + 1));
        if (loom_pool_submit(inf->pool, lp->loop, &p->work, part_work, part_done)) {
            /* The pool refused (full or stopping): do this part here. */
            part_work(&p->work);
            part_done(&p->work, LOOM_OK);
        }
    }
}

/* ---- batching ---- */

static void dequeue_count(struct inf_version *v, size_t n)
{
    atomic_fetch_sub_explicit(&v->queued, n, memory_order_relaxed);
    loom_gauge_sub(v->m_queue_depth, (double)n);
}

static void flush(struct inf_batcher *b)
{
    struct inf_version *v = inf_version_ref(b->v); /* answering may drop the last job's ref */
    loom_timer_stop(&b->timer);
    uint64_t now = loom_loop_now(b->lp->loop);
    int64_t max = v->config->max_batch_size;
    while (b->head) {
        size_t cap = 8, n = 0;
        struct inf_job **jobs = loom_malloc(cap * sizeof(*jobs));
        uint64_t rows = 0;
        while (b->head && (n == 0 || rows + b->head->req.rows <= (uint64_t)max)) {
            struct inf_job *job = b->head;
            b->head = job->next;
            if (!b->head)
                b->tail = NULL;
            b->rows -= job->req.rows;
            dequeue_count(v, 1);
            if (job->deadline <= now) {
                job->t_exec = loom_now_ns();
                inf_job_fail(job, 503,
                             "request timed out after waiting %llu us in the queue of "
                             "model '%s'",
                             (unsigned long long)((job->t_exec - job->t_queued) / 1000),
                             v->model_name);
                continue;
            }
            if (n == cap)
                jobs = loom_realloc(jobs, (cap *= 2) * sizeof(*jobs));
            jobs[n++] = job;
            rows += job->req.rows;
        }
        if (n)
            execute(b->lp, v, jobs, n);
        else
            free(jobs);
    }
    inf_version_unref(v);
}

static void on_batch_timer(struct loom_timer *t)
{
    flush(LOOM_CONTAINER_OF(t, struct inf_batcher, timer));
}

static void on_flush_task(struct loom_task *task)
{
    struct inf_batcher *b = LOOM_CONTAINER_OF(task, struct inf_batcher, flush_task);
    struct inf_version *v = b->v;
    b->flush_scheduled = false;
    if (b->head)
        flush(b);
    inf_version_unref(v); /* taken when the flush was scheduled */
}

static bool preferred_reached(const struct inf_config *c, uint64_t rows)
{
    for (size_t i = 0; i < c->npreferred; i++)
        if ((uint64_t)c->preferred_batch_sizes[i] == rows)
            return true;
    return false;
}

void inf_submit(struct inf_loop *lp, struct inf_job *job)
{
    struct inf_version *v = job->v;
    const struct inf_config *c = v->config;
    job->t_queued = loom_now_ns();
    if (!c->dynamic_batching) {
        job->t_exec = job->t_queued;
        struct inf_job **jobs = loom_malloc(sizeof(*jobs));
        jobs[0] = job;
        execute(lp, v, jobs, 1);
        return;
    }
    if (c->max_queue_size &&
        atomic_load_explicit(&v->queued, memory_order_relaxed) >= c->max_queue_size) {
        inf_job_fail(job, 503, "Exceeds maximum queue size: model '%s' has %llu requests waiting",
                     v->model_name, (unsigned long long)c->max_queue_size);
        return;
    }
    uint64_t timeout_us = c->default_timeout_us;
    if (job->req.timeout_us &&
        (!timeout_us || job->req.timeout_us < timeout_us || c->allow_timeout_override))
        timeout_us = job->req.timeout_us;
    uint64_t now = loom_loop_now(lp->loop);
    job->deadline = timeout_us ? now + timeout_us * LOOM_NS_PER_US : UINT64_MAX;
    struct inf_batcher *b = &v->batchers[lp->index];
    atomic_fetch_add_explicit(&v->queued, 1, memory_order_relaxed);
    loom_gauge_add(v->m_queue_depth, 1);
    job->next = NULL;
    if (b->tail)
        b->tail->next = job;
    else
        b->head = job;
    b->tail = job;
    b->rows += job->req.rows;
    if (b->rows >= (uint64_t)c->max_batch_size || preferred_reached(c, b->rows)) {
        flush(b);
        return;
    }
    if (c->max_queue_delay_us == 0) {
        if (!b->flush_scheduled) {
            /* The pending task keeps the version (and so this batcher) alive. */
            b->flush_scheduled = true;
            inf_version_ref(v);
            loom_loop_defer(lp->loop, &b->flush_task, on_flush_task);
        }
        return;
    }
    if (!loom_timer_is_active(&b->timer))
        loom_timer_start(&b->timer, c->max_queue_delay_us * LOOM_NS_PER_US, 0);
    if (job->deadline != UINT64_MAX && job->deadline < b->timer.deadline)
        loom_timer_start_at(&b->timer, job->deadline); /* answer the timeout on time */
}

void inf_batchers_init(struct inf_service *inf, struct inf_version *v)
{
    if (!v->config->dynamic_batching)
        return;
    v->batchers = loom_calloc(inf->nloops, sizeof(*v->batchers));
    for (size_t i = 0; i < inf->nloops; i++) {
        struct inf_batcher *b = &v->batchers[i];
        b->v = v;
        b->lp = &inf->loops[i];
        loom_timer_init(&b->timer, inf->loops[i].loop, on_batch_timer);
    }
}

void inf_batchers_free(struct inf_version *v)
{
    /* The last reference is gone: no job waits, so no timer is armed, and a scheduled flush
     * holds a reference of its own. */
    free(v->batchers);
    v->batchers = NULL;
}
