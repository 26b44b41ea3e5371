/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests for the metrics module: the exact text of a page with every kind of family, owner
 * filtering, number formatting, label and HELP escaping (and UTF-8 repair), histogram bucket
 * edges, re-registration, the series cap, the process metrics, misuse aborting (in a forked
 * child), exact totals under 4 threads hammering one counter and one histogram, and
 * `promtool check metrics` on a rendered page when promtool is installed.
 */
#include "check.h"

#include <loom/core.h>
#include <loom/log.h>
#include <loom/metrics.h>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define LABELS(...) ((const char *const[]){ __VA_ARGS__ })

/* Render into a fresh NUL-terminated string (caller frees). */
static char *render(struct loom_metrics *reg, const char *owner)
{
    struct loom_buf b;
    loom_buf_init(&b, 0);
    CHECK_INT(loom_metrics_render(reg, owner, &b), LOOM_OK);
    return loom_buf_detach(&b, NULL);
}

static double seven(void *arg)
{
    LOOM_UNUSED(arg);
    return 7;
}

static double twelve(void *arg)
{
    return *(double *)arg;
}

/* A registry with one of everything, shared by the exact-text and promtool tests. */
static struct loom_metrics *sample_registry(void)
{
    static double events = 12;
    struct loom_metrics *reg = loom_metrics_new();

    struct loom_counter_family *req = loom_metrics_counter_family(
        reg, "gateway", "loom_gateway_requests_total", "Requests by route template and status.",
        LABELS("route", "code"), 2);
    loom_counter_add(loom_counter_get(req, LABELS("/v1/models/{name}", "200")), 41);
    loom_counter_inc(loom_counter_get(req, LABELS("/v1/models/{name}", "200")));
    loom_counter_inc(loom_counter_get(req, LABELS("/livez", "503")));

    struct loom_counter *restarts =
        loom_metrics_counter(reg, NULL, "loom_restarts_total", "Restarts.\nOf \\ the \"process\".");
    loom_counter_add(restarts, 2);

    struct loom_gauge *inflight = loom_metrics_gauge(
        reg, "gateway", "loom_gateway_inflight_requests", "Requests being served.");
    loom_gauge_set(inflight, 3);
    loom_gauge_add(inflight, 0.5);
    loom_gauge_sub(inflight, 2);
    loom_gauge_inc(inflight);
    loom_gauge_dec(inflight);

    struct loom_gauge_family *depth =
        loom_metrics_gauge_family(reg, "inference", "loom_inference_queue_depth_requests",
                                  "Queued requests per model.", LABELS("model"), 1);
    loom_gauge_set(loom_gauge_get(depth, LABELS("fraud")), 4);

    struct loom_histogram_family *lat = loom_metrics_histogram_family(
        reg, "gateway", "loom_gateway_request_duration_seconds", "Request latency.",
        LABELS("route"), 1, (const double[]){ 0.01, 0.25, 1 }, 3);
    struct loom_histogram *h = loom_histogram_get(lat, LABELS("/livez"));
    loom_histogram_observe(h, 0.0078125);
    loom_histogram_observe(h, 0.25); /* on a bound: counted in that bucket */
    loom_histogram_observe(h, 0.5);
    loom_histogram_observe(h, 4);

    /* Labelled and never used: HELP and TYPE only. */
    loom_metrics_counter_family(reg, "gateway", "loom_gateway_retries_total", "Retries.",
                                LABELS("upstream"), 1);

    loom_metrics_gauge_fn(reg, "inference", "loom_inference_models_loaded", "Models loaded.", seven,
                          NULL);
    loom_metrics_counter_fn(reg, NULL, "loom_bus_events_total", "Events published.", twelve,
                            &events);
    return reg;
}

static const char gateway_page[] =
    "# HELP loom_gateway_requests_total Requests by route template and status.\n"
    "# TYPE loom_gateway_requests_total counter\n"
    "loom_gateway_requests_total{route=\"/v1/models/{name}\",code=\"200\"} 42\n"
    "loom_gateway_requests_total{route=\"/livez\",code=\"503\"} 1\n"
    "# HELP loom_restarts_total Restarts.\\nOf \\\\ the \"process\".\n"
    "# TYPE loom_restarts_total counter\n"
    "loom_restarts_total 2\n"
    "# HELP loom_gateway_inflight_requests Requests being served.\n"
    "# TYPE loom_gateway_inflight_requests gauge\n"
    "loom_gateway_inflight_requests 1.5\n"
    "# HELP loom_gateway_request_duration_seconds Request latency.\n"
    "# TYPE loom_gateway_request_duration_seconds histogram\n"
    "loom_gateway_request_duration_seconds_bucket{route=\"/livez\",le=\"0.01\"} 1\n"
    "loom_gateway_request_duration_seconds_bucket{route=\"/livez\",le=\"0.25\"} 2\n"
    "loom_gateway_request_duration_seconds_bucket{route=\"/livez\",le=\"1\"} 3\n"
    "loom_gateway_request_duration_seconds_bucket{route=\"/livez\",le=\"+Inf\"} 4\n"
    "loom_gateway_request_duration_seconds_sum{route=\"/livez\"} 4.7578125\n"
    "loom_gateway_request_duration_seconds_count{route=\"/livez\"} 4\n"
    "# HELP loom_gateway_retries_total Retries.\n"
    "# TYPE loom_gateway_retries_total counter\n"
    "# HELP loom_bus_events_total Events published.\n"
    "# TYPE loom_bus_events_total counter\n"
    "loom_bus_events_total 12\n";

static const char inference_page[] =
    "# HELP loom_restarts_total Restarts.\\nOf \\\\ the \"process\".\n"
    "# TYPE loom_restarts_total counter\n"
    "loom_restarts_total 2\n"
    "# HELP loom_inference_queue_depth_requests Queued requests per model.\n"
    "# TYPE loom_inference_queue_depth_requests gauge\n"
    "loom_inference_queue_depth_requests{model=\"fraud\"} 4\n"
    "# HELP loom_inference_models_loaded Models loaded.\n"
    "# TYPE loom_inference_models_loaded gauge\n"
    "loom_inference_models_loaded 7\n"
    "# HELP loom_bus_events_total Events published.\n"
    "# TYPE loom_bus_events_total counter\n"
    "loom_bus_events_total 12\n";

static void test_render_exact(void)
{
    struct loom_metrics *reg = sample_registry();
    char *page = render(reg, "gateway");
    CHECK_STR(page, gateway_page);
    free(page);
    page = render(reg, "inference");
    CHECK_STR(page, inference_page);
    free(page);
    /* A service with no families of its own sees the process-wide ones. */
    page = render(reg, "registry");
    CHECK_STR(page, "# HELP loom_restarts_total Restarts.\\nOf \\\\ the \"process\".\n"
                    "# TYPE loom_restarts_total counter\n"
                    "loom_restarts_total 2\n"
                    "# HELP loom_bus_events_total Events published.\n"
                    "# TYPE loom_bus_events_total counter\n"
                    "loom_bus_events_total 12\n");
    free(page);
    /* NULL: everything, in registration order. */
    page = render(reg, NULL);
    CHECK(strncmp(page, gateway_page, strlen("# HELP loom_gateway_requests_total")) == 0);
    CHECK_CONTAINS(page, "loom_inference_queue_depth_requests{model=\"fraud\"} 4\n"
                         "# HELP loom_gateway_request_duration_seconds");
    CHECK_CONTAINS(page, "loom_inference_models_loaded 7\n# HELP loom_bus_events_total");
    CHECK_UINT(strlen(page),
               strlen(gateway_page) + strlen(inference_page) -
                   2 * strlen("# HELP loom_restarts_total Restarts.\\nOf \\\\ the "
                              "\"process\".\n# TYPE loom_restarts_total counter\n"
                              "loom_restarts_total 2\n") -
                   strlen("# HELP loom_bus_events_total Events published.\n# TYPE "
                          "loom_bus_events_total counter\nloom_bus_events_total 12\n") +
                   strlen("# HELP loom_restarts_total Restarts.\\nOf \\\\ the "
                          "\"process\".\n# TYPE loom_restarts_total counter\n"
                          "loom_restarts_total 2\n"));
    free(page);

    /* A ceiling that is too small: ETOOBIG, and a prefix of the page. */
    struct loom_buf small;
    loom_buf_init(&small, 300);
    CHECK_INT(loom_metrics_render(reg, "gateway", &small), LOOM_ETOOBIG);
    CHECK(small.len > 100 && small.len <= 300);
    CHECK(small.data && strncmp(small.data, gateway_page, small.len) == 0);
    loom_buf_release(&small);
    loom_metrics_free(reg);
}

static void test_numbers(void)
{
    struct loom_metrics *reg = loom_metrics_new();
    struct loom_gauge_family *g =
        loom_metrics_gauge_family(reg, NULL, "v", "Values.", LABELS("case"), 1);
    static const struct {
        const char *name;
        double v;
    } cases[] = {
        { "zero", 0 },
        { "tenth", 0.1 },
        { "neg", -2.5 },
        { "sum", 0.1 + 0.2 },
        { "big", 1e21 },
        { "large_int", 999999999999999 },
        { "e15", 1e15 },
        { "huge", 123456789012345678.0 },
        { "small", 1e-7 },
        { "denormal", 5e-324 },
        { "max", 1.7976931348623157e308 },
        { "nan", NAN },
        { "inf", INFINITY },
        { "ninf", -INFINITY },
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(cases); i++)
        loom_gauge_set(loom_gauge_get(g, LABELS(cases[i].name)), cases[i].v);
    char *page = render(reg, NULL);
    CHECK_STR(page, "# HELP v Values.\n# TYPE v gauge\n"
                    "v{case=\"zero\"} 0\n"
                    "v{case=\"tenth\"} 0.1\n"
                    "v{case=\"neg\"} -2.5\n"
                    "v{case=\"sum\"} 0.30000000000000004\n"
                    "v{case=\"big\"} 1e+21\n"
                    "v{case=\"large_int\"} 999999999999999\n"
                    "v{case=\"e15\"} 1000000000000000\n"
                    "v{case=\"huge\"} 1.2345678901234568e+17\n"
                    "v{case=\"small\"} 1e-07\n"
                    "v{case=\"denormal\"} 5e-324\n"
                    "v{case=\"max\"} 1.7976931348623157e+308\n"
                    "v{case=\"nan\"} NaN\n"
                    "v{case=\"inf\"} +Inf\n"
                    "v{case=\"ninf\"} -Inf\n");
    free(page);

    /* The default buckets, as text. */
    loom_metrics_histogram(reg, NULL, "d_seconds", "Default buckets.", NULL, 0);
    page = render(reg, NULL);
    CHECK_CONTAINS(page, "d_seconds_bucket{le=\"5e-05\"} 0\nd_seconds_bucket{le=\"0.0001\"} 0\n"
                         "d_seconds_bucket{le=\"0.00025\"} 0\n");
    CHECK_CONTAINS(page, "d_seconds_bucket{le=\"2.5\"} 0\nd_seconds_bucket{le=\"5\"} 0\n"
                         "d_seconds_bucket{le=\"10\"} 0\nd_seconds_bucket{le=\"+Inf\"} 0\n"
                         "d_seconds_sum 0\nd_seconds_count 0\n");
    free(page);
    loom_metrics_free(reg);
}

static void test_escaping(void)
{
    struct loom_metrics *reg = loom_metrics_new();
    struct loom_counter_family *f =
        loom_metrics_counter_family(reg, NULL, "e_total", "Escapes.", LABELS("a", "b"), 2);
    loom_counter_inc(loom_counter_get(f, LABELS("back\\slash \"quoted\"\nnewline", "tab\there")));
    /* Invalid UTF-8 becomes U+FFFD; valid multibyte text is kept. */
    loom_counter_inc(loom_counter_get(f, LABELS("bad\xff\xc3", "caf\xc3\xa9 \xe2\x82\xac")));
    /* The repaired value is the identity: the same input finds the same series. */
    struct loom_counter *c1 =
        loom_counter_get(f, LABELS("bad\xff\xc3", "caf\xc3\xa9 \xe2\x82\xac"));
    struct loom_counter *c2 =
        loom_counter_get(f, LABELS("bad\xef\xbf\xbd\xef\xbf\xbd", "caf\xc3\xa9 \xe2\x82\xac"));
    CHECK(c1 == c2);
    /* Long values are cut at a character boundary. */
    char longv[1000];
    for (size_t i = 0; i + 2 < sizeof(longv); i += 2)
        memcpy(longv + i, "\xc3\xa9", 2);
    longv[sizeof(longv) - 2] = '\0';
    loom_counter_inc(loom_counter_get(f, LABELS("long", longv)));
    char *page = render(reg, NULL);
    CHECK_CONTAINS(page,
                   "e_total{a=\"back\\\\slash \\\"quoted\\\"\\nnewline\",b=\"tab\there\"} 1\n");
    CHECK_CONTAINS(page,
                   "e_total{a=\"bad\xef\xbf\xbd\xef\xbf\xbd\",b=\"caf\xc3\xa9 \xe2\x82\xac\"} 1\n");
    const char *l = strstr(page, "{a=\"long\",b=\"");
    CHECK(l != NULL);
    if (l) {
        const char *v = l + strlen("{a=\"long\",b=\"");
        const char *end = strchr(v, '"');
        CHECK_UINT((size_t)(end - v), LOOM_METRICS_LABEL_VALUE_MAX);
        CHECK(strncmp(end, "\"} 1\n", 5) == 0);
    }
    /* An empty value is a value. */
    loom_counter_inc(loom_counter_get(f, LABELS("", "")));
    free(page);
    page = render(reg, NULL);
    CHECK_CONTAINS(page, "e_total{a=\"\",b=\"\"} 1\n");
    free(page);
    loom_metrics_free(reg);
}

static void test_values(void)
{
    struct loom_metrics *reg = loom_metrics_new();
    struct loom_histogram *h =
        loom_metrics_histogram(reg, NULL, "h_seconds", "H.", (const double[]){ 1, 2, INFINITY }, 3);
    loom_histogram_observe(h, -5);
    loom_histogram_observe(h, 1);
    loom_histogram_observe(h, 1.0000001);
    loom_histogram_observe(h, 2);
    loom_histogram_observe(h, 1e9);
    loom_histogram_observe_ns(h, 1500000000);
    CHECK_UINT(loom_histogram_count(h), 6);
    CHECK_NEAR(loom_histogram_sum(h), -5 + 1 + 1.0000001 + 2 + 1e9 + 1.5, 1e-6);
    char *page = render(reg, NULL);
    /* The explicit +Inf bound was folded into the implicit one. */
    CHECK_CONTAINS(page, "h_seconds_bucket{le=\"1\"} 2\nh_seconds_bucket{le=\"2\"} 5\n"
                         "h_seconds_bucket{le=\"+Inf\"} 6\n");
    free(page);
    loom_histogram_observe(h, NAN);
    CHECK_UINT(loom_histogram_count(h), 7);
    page = render(reg, NULL);
    CHECK_CONTAINS(page, "h_seconds_bucket{le=\"2\"} 5\nh_seconds_bucket{le=\"+Inf\"} 7\n"
                         "h_seconds_sum NaN\nh_seconds_count 7\n");
    free(page);

    struct loom_counter *c = loom_metrics_counter(reg, NULL, "c_total", "C.");
    loom_counter_add(c, UINT64_MAX - 1);
    loom_counter_inc(c);
    CHECK_UINT(loom_counter_value(c), UINT64_MAX);
    page = render(reg, NULL);
    CHECK_CONTAINS(page, "\nc_total 18446744073709551615\n");
    free(page);

    struct loom_gauge *g = loom_metrics_gauge(reg, NULL, "g", "G.");
    CHECK(loom_gauge_value(g) == 0);
    loom_gauge_set(g, -1.25);
    loom_gauge_add(g, 0.25);
    CHECK(loom_gauge_value(g) == -1);
    loom_metrics_free(reg);
}

static void test_reregister(void)
{
    struct loom_metrics *reg = loom_metrics_new();
    struct loom_counter_family *a =
        loom_metrics_counter_family(reg, "svc", "r_total", "R.", LABELS("x"), 1);
    struct loom_counter_family *b =
        loom_metrics_counter_family(reg, "svc", "r_total", "Other help is fine.", LABELS("x"), 1);
    CHECK(a == b);
    struct loom_counter *s1 = loom_counter_get(a, LABELS("1"));
    CHECK(loom_counter_get(b, LABELS("1")) == s1);
    CHECK(loom_counter_get(b, LABELS("2")) != s1);
    CHECK(loom_metrics_counter(reg, NULL, "u_total", "U.") ==
          loom_metrics_counter(reg, NULL, "u_total", "U."));
    CHECK(loom_metrics_histogram(reg, NULL, "h_seconds", "H.", NULL, 0) ==
          loom_metrics_histogram(reg, NULL, "h_seconds", "H.", loom_metrics_latency_buckets,
                                 LOOM_METRICS_LATENCY_BUCKETS_N));
    /* Callbacks and the process metrics are idempotent. */
    loom_metrics_gauge_fn(reg, NULL, "f", "F.", seven, NULL);
    loom_metrics_gauge_fn(reg, NULL, "f", "F.", seven, NULL);
    loom_metrics_register_process(reg);
    loom_metrics_register_process(reg);
    char *page = render(reg, NULL);
    CHECK_CONTAINS(page, "\nf 7\n");
    const char *first = strstr(page, "# TYPE process_open_fds gauge");
    CHECK(first && !strstr(first + 1, "# TYPE process_open_fds gauge"));
    free(page);
    CHECK(loom_metrics_global() == loom_metrics_global());
    CHECK(loom_metrics_global() != NULL);
    loom_metrics_free(reg);
}

static void test_series_cap(void)
{
    struct loom_metrics *reg = loom_metrics_new();
    struct loom_counter_family *f =
        loom_metrics_counter_family(reg, NULL, "cap_total", "Cap.", LABELS("id"), 1);
    int devnull = open("/dev/null", O_WRONLY);
    loom_log_set_fd(devnull); /* the warning */
    char id[32];
    struct loom_counter *first_extra = NULL;
    int same = 0;
    for (int i = 0; i < LOOM_METRICS_MAX_SERIES + 10; i++) {
        snprintf(id, sizeof(id), "%d", i);
        struct loom_counter *c = loom_counter_get(f, LABELS(id));
        loom_counter_inc(c);
        if (i == LOOM_METRICS_MAX_SERIES)
            first_extra = c;
        else if (i > LOOM_METRICS_MAX_SERIES)
            same += c == first_extra;
    }
    loom_log_set_fd(2);
    close(devnull);
    CHECK_INT(same, 9);
    CHECK_UINT(loom_counter_value(first_extra), 10);
    /* Existing series are still found. */
    CHECK(loom_counter_value(loom_counter_get(f, LABELS("0"))) == 1);
    CHECK(loom_counter_value(loom_counter_get(f, LABELS("9999"))) == 1);
    char *page = render(reg, NULL);
    size_t lines = 0;
    for (const char *p = page; *p; p++)
        lines += *p == '\n';
    CHECK_UINT(lines, 2 + LOOM_METRICS_MAX_SERIES);
    CHECK(strstr(page, "{id=\"10000\"}") == NULL);
    free(page);
    loom_metrics_free(reg);
}

static void test_process(void)
{
    struct loom_metrics *reg = loom_metrics_new();
    loom_metrics_register_process(reg);
    /* Burn a little CPU so the counter is not 0. */
    volatile double x = 0;
    for (int i = 0; i < 20000000; i++)
        x = x + i * 0.5;
    char *page = render(reg, "gateway");
    static const char *const names[] = {
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(names); i++) {
        char want[128];
        snprintf(want, sizeof(want), "\n%s ", names[i]);
        const char *line = strstr(page, want);
        CHECK(line != NULL);
        if (!line)
            continue;
        double v = strtod(line + strlen(want), NULL);
        CHECK(v > 0);
        CHECK(!isnan(v));
        if (!strcmp(names[i], "process_start_time_seconds")) {
            double now = (double)loom_wall_ns() / 1e9;
            CHECK(v > now - 3600 && v <= now + 1);
        }
        if (!strcmp(names[i], "process_resident_memory_bytes"))
            CHECK(v > 1e6);
    }
    CHECK_CONTAINS(page, "# TYPE process_cpu_seconds_total counter\n");
    CHECK_CONTAINS(page, "# TYPE process_resident_memory_bytes gauge\n");
    free(page);
    loom_metrics_free(reg);
}

/* Misuse: each case runs in a child, which must die of SIGABRT. */

static void misuse_bad_name(struct loom_metrics *r)
{
    loom_metrics_counter(r, NULL, "1st_total", "X.");
}
static void misuse_bad_char(struct loom_metrics *r)
{
    loom_metrics_gauge(r, NULL, "a-b", "X.");
}
static void misuse_no_total(struct loom_metrics *r)
{
    loom_metrics_counter(r, NULL, "requests", "X.");
}
static void misuse_gauge_total(struct loom_metrics *r)
{
    loom_metrics_gauge(r, NULL, "requests_total", "X.");
}
static void misuse_gauge_count(struct loom_metrics *r)
{
    loom_metrics_gauge(r, NULL, "items_count", "X.");
}
static void misuse_no_help(struct loom_metrics *r)
{
    loom_metrics_gauge(r, NULL, "g", "");
}
static void misuse_label_reserved(struct loom_metrics *r)
{
    loom_metrics_gauge_family(r, NULL, "g", "X.", LABELS("__name"), 1);
}
static void misuse_label_le(struct loom_metrics *r)
{
    loom_metrics_histogram_family(r, NULL, "h", "X.", LABELS("le"), 1, NULL, 0);
}
static void misuse_label_chars(struct loom_metrics *r)
{
    loom_metrics_gauge_family(r, NULL, "g", "X.", LABELS("a:b"), 1);
}
static void misuse_label_twice(struct loom_metrics *r)
{
    loom_metrics_gauge_family(r, NULL, "g", "X.", LABELS("a", "a"), 2);
}
static void misuse_other_type(struct loom_metrics *r)
{
    loom_metrics_gauge(r, NULL, "g", "X.");
    loom_metrics_histogram(r, NULL, "g", "X.", NULL, 0);
}
static void misuse_other_labels(struct loom_metrics *r)
{
    loom_metrics_gauge_family(r, NULL, "g", "X.", LABELS("a"), 1);
    loom_metrics_gauge_family(r, NULL, "g", "X.", LABELS("b"), 1);
}
static void misuse_other_owner(struct loom_metrics *r)
{
    loom_metrics_gauge(r, "gateway", "g", "X.");
    loom_metrics_gauge(r, "inference", "g", "X.");
}
static void misuse_other_buckets(struct loom_metrics *r)
{
    loom_metrics_histogram(r, NULL, "h", "X.", (const double[]){ 1, 2 }, 2);
    loom_metrics_histogram(r, NULL, "h", "X.", (const double[]){ 1, 3 }, 2);
}
static void misuse_buckets_order(struct loom_metrics *r)
{
    loom_metrics_histogram(r, NULL, "h", "X.", (const double[]){ 1, 1 }, 2);
}
static void misuse_buckets_nan(struct loom_metrics *r)
{
    loom_metrics_histogram(r, NULL, "h", "X.", (const double[]){ NAN }, 1);
}
static void misuse_null_value(struct loom_metrics *r)
{
    struct loom_gauge_family *f = loom_metrics_gauge_family(r, NULL, "g", "X.", LABELS("a"), 1);
    loom_gauge_get(f, LABELS(NULL));
}
static void misuse_callback_get(struct loom_metrics *r)
{
    loom_metrics_gauge_fn(r, NULL, "g", "X.", seven, NULL);
    loom_gauge_get(loom_metrics_gauge_family(r, NULL, "g", "X.", NULL, 0), NULL);
}

static void test_misuse(void)
{
    static const struct {
        const char *name;
        void (*fn)(struct loom_metrics *);
    } cases[] = {
#define C(f) { #f, f }
        C(misuse_bad_name),       C(misuse_bad_char),      C(misuse_no_total),
        C(misuse_gauge_total),    C(misuse_gauge_count),   C(misuse_no_help),
        C(misuse_label_reserved), C(misuse_label_le),      C(misuse_label_chars),
        C(misuse_label_twice),    C(misuse_other_type),    C(misuse_other_labels),
        C(misuse_other_owner),    C(misuse_other_buckets), C(misuse_buckets_order),
        C(misuse_buckets_nan),    C(misuse_null_value),    C(misuse_callback_get),
#undef C
    };
    char path[] = "/tmp/loom-test-metrics-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    unlink(path);
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(cases); i++) {
        CHECK_INT(ftruncate(fd, 0), 0);
        lseek(fd, 0, SEEK_SET); /* the child shares this offset */
        pid_t pid = fork();
        if (pid == 0) {
            loom_log_set_fd(fd);
            struct loom_metrics *r = loom_metrics_new();
            cases[i].fn(r);
            _exit(0);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        bool aborted = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
        if (!aborted)
            fprintf(stderr, "%s did not abort\n", cases[i].name);
        CHECK(aborted);
        /* And said why, as a log line. */
        char msg[512] = { 0 };
        CHECK(pread(fd, msg, sizeof(msg) - 1, 0) > 0);
        CHECK_CONTAINS(msg, "\"level\":\"error\"");
        CHECK_CONTAINS(msg, "metrics: programming error: ");
    }
    close(fd);
}

/* Concurrency: exact totals. */

enum { THREADS = 4, ITERATIONS = 1000000 };

struct hammer {
    struct loom_counter_family *fam;
    struct loom_histogram *hist;
    struct loom_counter *seen;
};

static void *hammer_thread(void *arg)
{
    struct hammer *hm = arg;
    /* Racing lookups of one label set must agree on the series. */
    struct loom_counter *c = loom_counter_get(hm->fam, LABELS("shared"));
    for (int i = 0; i < ITERATIONS; i++) {
        loom_counter_inc(c);
        loom_histogram_observe(hm->hist, (i & 3) * 0.25); /* 0, 0.25, 0.5, 0.75: exact sums */
    }
    hm->seen = c;
    return NULL;
}

static void test_concurrency(void)
{
    struct loom_metrics *reg = loom_metrics_new();
    struct hammer hm[THREADS];
    struct loom_counter_family *fam =
        loom_metrics_counter_family(reg, NULL, "hammer_total", "H.", LABELS("k"), 1);
    struct loom_histogram *hist = loom_metrics_histogram(reg, NULL, "hammer_seconds", "H.",
                                                         (const double[]){ 0.1, 0.5, 1 }, 3);
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        hm[i] = (struct hammer){ fam, hist, NULL };
        pthread_create(&t[i], NULL, hammer_thread, &hm[i]);
    }
    /* Scrapes while the threads run must not disturb them. */
    for (int i = 0; i < 20; i++)
        free(render(reg, NULL));
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    for (int i = 1; i < THREADS; i++)
        CHECK(hm[i].seen == hm[0].seen);
    uint64_t total = (uint64_t)THREADS * ITERATIONS;
    CHECK_UINT(loom_counter_value(hm[0].seen), total);
    CHECK_UINT(loom_histogram_count(hist), total);
    CHECK(loom_histogram_sum(hist) == (double)total / 4 * (0 + 0.25 + 0.5 + 0.75));
    char *page = render(reg, NULL);
    char want[512];
    snprintf(want, sizeof(want),
             "hammer_total{k=\"shared\"} %llu\n"
             "# HELP hammer_seconds H.\n# TYPE hammer_seconds histogram\n"
             "hammer_seconds_bucket{le=\"0.1\"} %llu\n"
             "hammer_seconds_bucket{le=\"0.5\"} %llu\n"
             "hammer_seconds_bucket{le=\"1\"} %llu\n"
             "hammer_seconds_bucket{le=\"+Inf\"} %llu\n"
             "hammer_seconds_sum 1500000\n"
             "hammer_seconds_count %llu\n",
             (unsigned long long)total, (unsigned long long)total / 4,
             (unsigned long long)total * 3 / 4, (unsigned long long)total,
             (unsigned long long)total, (unsigned long long)total);
    CHECK_CONTAINS(page, want);
    free(page);
    loom_metrics_free(reg);
}

/* promtool. */

static bool have_promtool(void)
{
    return system("command -v promtool >/dev/null 2>&1") == 0;
}

static void test_promtool(void)
{
    if (!have_promtool()) {
        fprintf(stderr, "skip test_promtool: promtool is not on PATH\n");
        return;
    }
    struct loom_metrics *reg = sample_registry();
    loom_metrics_register_process(reg);
    struct loom_counter_family *f = loom_metrics_counter_family(
        reg, NULL, "loom_escapes_total", "Escapes \\ and\nlines.", LABELS("value"), 1);
    loom_counter_inc(loom_counter_get(f, LABELS("a\\b \"c\"\nd \xff")));
    loom_metrics_histogram(reg, "gateway", "loom_gateway_default_seconds", "Default buckets.", NULL,
                           0);
    for (int pass = 0; pass < 2; pass++) {
        char *page = render(reg, pass ? "gateway" : NULL);
        char in[] = "/tmp/loom-test-promtool-XXXXXX";
        int fd = mkstemp(in);
        CHECK(fd >= 0);
        CHECK(write(fd, page, strlen(page)) == (ssize_t)strlen(page));
        close(fd);
        char cmd[256], out_path[64];
        snprintf(out_path, sizeof(out_path), "%s.out", in);
        snprintf(cmd, sizeof(cmd), "promtool check metrics < %s > %s 2>&1", in, out_path);
        int status = system(cmd);
        char output[4096] = { 0 };
        FILE *o = fopen(out_path, "r");
        if (o) {
            size_t n = fread(output, 1, sizeof(output) - 1, o);
            output[n] = '\0';
            fclose(o);
        }
        if (status != 0 || output[0])
            fprintf(stderr, "promtool (exit %d) says:\n%s\npage:\n%s", status, output, page);
        CHECK_INT(status, 0);
        CHECK_STR(output, "");
        unlink(in);
        unlink(out_path);
        free(page);
    }
    loom_metrics_free(reg);
}

int main(void)
{
    RUN(test_render_exact);
    RUN(test_numbers);
    RUN(test_escaping);
    RUN(test_values);
    RUN(test_reregister);
    RUN(test_series_cap);
    RUN(test_process);
    RUN(test_misuse);
    RUN(test_concurrency);
    RUN(test_promtool);
    return check_report();
}
