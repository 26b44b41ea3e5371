/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Metrics: counters, gauges and histograms kept in a registry and rendered in the Prometheus
 * text exposition format 0.0.4 for /metrics (clean under `promtool check metrics`). A family is
 * registered once, with a name, help text and fixed label names; each combination of label
 * values is a series, looked up once (under the family's mutex) and then kept by the caller, so
 * the hot path is one relaxed atomic on a pointer it already holds. Several services share one
 * process and one registry: each family records the service that owns it (or NULL for
 * process-wide metrics), and each service's /metrics shows its own families plus the
 * process-wide ones. Names follow `loom_<svc>_<name>_<unit>` in base units (seconds, bytes).
 *
 * Misuse is a programming error: it logs an error naming the metric and aborts. That is an
 * invalid metric or label name, a counter not ending in `_total` (or another type ending in it),
 * registering a name again with another type, owner, label names or buckets, or a NULL label
 * value.
 */
#ifndef LOOM_METRICS_H
#define LOOM_METRICS_H

#include <loom/str.h>

#include <stddef.h>
#include <stdint.h>

/* The Content-Type of a rendered page. */
#define LOOM_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Series per family, at most. Further label combinations share one series that is never
 * rendered (a warning is logged once): a label fed by unbounded input must not exhaust memory. */
#define LOOM_METRICS_MAX_SERIES 10000

/* Label values are cut to this many bytes (at a UTF-8 character boundary); invalid UTF-8 bytes
 * are replaced by U+FFFD, which Prometheus requires. */
#define LOOM_METRICS_LABEL_VALUE_MAX 256

/* Default histogram bucket bounds, in seconds: 50us to 10s for the latency of a fast server. */
#define LOOM_METRICS_LATENCY_BUCKETS_N 17
extern const double loom_metrics_latency_buckets[LOOM_METRICS_LATENCY_BUCKETS_N];

struct loom_metrics;
struct loom_counter_family;
struct loom_gauge_family;
struct loom_histogram_family;
/* Series handles: owned by the registry, valid until loom_metrics_free(). */
struct loom_counter;
struct loom_gauge;
struct loom_histogram;

/* A value computed when the page is rendered. It runs with the registry locked: it must be
 * quick and must not call into the registry. */
typedef double (*loom_metrics_fn)(void *arg);

/* An empty registry (caller frees with loom_metrics_free, after every user of its handles). */
struct loom_metrics *loom_metrics_new(void);
void loom_metrics_free(struct loom_metrics *reg);

/* The process-wide registry, created on first use and never freed. */
struct loom_metrics *loom_metrics_global(void);

/*
 * Register a family, or return the one already registered under `name` if its type, owner,
 * label names (and buckets) are the same; the first help text stays. `owner` is the owning
 * service's name, or NULL for a process-wide family. Every string is copied; `label_names` holds
 * `nlabels` names (it may be NULL when nlabels is 0). A family without labels has its one series
 * from the start, so it renders 0 before its first use; a labelled family renders only its HELP and
 * TYPE lines until a series is created. Thread-safe.
 */
struct loom_counter_family *loom_metrics_counter_family(struct loom_metrics *reg, const char *owner,
                                                        const char *name, const char *help,
                                                        const char *const *label_names,
                                                        size_t nlabels);
struct loom_gauge_family *loom_metrics_gauge_family(struct loom_metrics *reg, const char *owner,
                                                    const char *name, const char *help,
                                                    const char *const *label_names, size_t nlabels);
/* `bounds`: `nbounds` finite upper bounds in increasing order (a trailing +Inf is implied and
 * may be given); NULL and 0 select loom_metrics_latency_buckets. */
struct loom_histogram_family *
loom_metrics_histogram_family(struct loom_metrics *reg, const char *owner, const char *name,
                              const char *help, const char *const *label_names, size_t nlabels,
                              const double *bounds, size_t nbounds);

/* Unlabelled shortcuts: register (or find) the family and return its one series. */
struct loom_counter *loom_metrics_counter(struct loom_metrics *reg, const char *owner,
                                          const char *name, const char *help);
struct loom_gauge *loom_metrics_gauge(struct loom_metrics *reg, const char *owner, const char *name,
                                      const char *help);
struct loom_histogram *loom_metrics_histogram(struct loom_metrics *reg, const char *owner,
                                              const char *name, const char *help,
                                              const double *bounds, size_t nbounds);

/*
 * Unlabelled families whose value is fn(arg) at render time: gauges (RSS, queue depth, models
 * loaded) and counters kept elsewhere (CPU seconds). `arg` is borrowed until the registry is
 * freed. Registering the same name again returns quietly and keeps the first callback.
 */
void loom_metrics_gauge_fn(struct loom_metrics *reg, const char *owner, const char *name,
                           const char *help, loom_metrics_fn fn, void *arg);
void loom_metrics_counter_fn(struct loom_metrics *reg, const char *owner, const char *name,
                             const char *help, loom_metrics_fn fn, void *arg);

/*
 * The series for `label_values` (one per label name, in order; copied), created on first use.
 * Takes the family's mutex: look a series up once and keep the pointer for the hot path.
 */
struct loom_counter *loom_counter_get(struct loom_counter_family *fam,
                                      const char *const *label_values);
struct loom_gauge *loom_gauge_get(struct loom_gauge_family *fam, const char *const *label_values);
struct loom_histogram *loom_histogram_get(struct loom_histogram_family *fam,
                                          const char *const *label_values);

/* Hot path: lock-free, any thread. */
void loom_counter_add(struct loom_counter *c, uint64_t n);
void loom_counter_inc(struct loom_counter *c);
uint64_t loom_counter_value(const struct loom_counter *c);

void loom_gauge_set(struct loom_gauge *g, double v);
void loom_gauge_add(struct loom_gauge *g, double delta);
void loom_gauge_sub(struct loom_gauge *g, double delta);
void loom_gauge_inc(struct loom_gauge *g);
void loom_gauge_dec(struct loom_gauge *g);
double loom_gauge_value(const struct loom_gauge *g);

/* Count `v` in the first bucket whose bound is >= v (NaN counts only in +Inf) and add it to
 * the sum. */
void loom_histogram_observe(struct loom_histogram *h, double v);
/* Observe a duration given in nanoseconds (from loom_now_ns) as seconds. */
void loom_histogram_observe_ns(struct loom_histogram *h, uint64_t ns);
uint64_t loom_histogram_count(const struct loom_histogram *h);
double loom_histogram_sum(const struct loom_histogram *h);

/*
 * Append the page for `owner` to `out`: the families owned by `owner` and the process-wide
 * ones (owner NULL: every family), in registration order, series in creation order. Returns
 * LOOM_OK, or LOOM_ETOOBIG if out's ceiling was hit (out then holds a partial page).
 */
loom_err loom_metrics_render(struct loom_metrics *reg, const char *owner, struct loom_buf *out);

/*
 * Register the standard process metrics, read from /proc/self when rendered:
 * process_cpu_seconds_total, process_open_fds, process_max_fds, process_virtual_memory_bytes,
 * process_resident_memory_bytes, process_start_time_seconds (process-wide, idempotent). A value
 * that cannot be read renders as NaN.
 */
void loom_metrics_register_process(struct loom_metrics *reg);

#endif
