/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The service runtime. The main thread loads the configuration, builds every service (its
 * loops, its state through init, its HTTP server with the built-in routes), starts one thread
 * per loop, and then runs a small loop of its own that waits for SIGTERM or SIGINT. A signal
 * starts the drain: every listener stops accepting and closes idle connections; when the last
 * connection of every loop is gone, or drain-timeout passes, the loops stop, the services'
 * fini run, and the process exits with 0. A second signal skips the wait.
 */
#include <loom/log.h>
#include <loom/metrics.h>
#include <loom/service.h>

#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- settings ---- */

static const char *const log_levels[] = { "debug", "info", "warn", "error", NULL };

static const struct loom_conf_field global_fields[] = {
    LOOM_CONF_FIELD(struct loom_global_conf, data_dir, "data-dir", STRING, "./loom-data",
                    "Directory for the services' files (databases, artifacts)."),
    LOOM_CONF_ENUM_FIELD(struct loom_global_conf, log_level, "log-level", log_levels, "info",
                         "Least severe level written to the log: debug, info, warn, error."),
    LOOM_CONF_RANGE_FIELD(struct loom_global_conf, pool_threads, "pool-threads", INT, "0", 0, 256,
                          "Worker threads for blocking and CPU-heavy jobs (0: one per CPU)."),
    LOOM_CONF_SECRET_FIELD(struct loom_global_conf, bus, "bus", STRING, "sqlite",
                           "The event bus the services share: sqlite (the file "
                           "<data-dir>/bus.db), sqlite:PATH, or nats://HOST:PORT[,HOST:PORT...] "
                           "(NATS JetStream)."),
};

static const struct loom_conf_field common_template[] = {
    LOOM_CONF_FIELD(struct loom_svc_conf, listen, "listen", ADDR, NULL,
                    "HOST:PORT to listen on (port 0 picks a free one), or unix:/PATH."),
    LOOM_CONF_RANGE_FIELD(struct loom_svc_conf, threads, "threads", INT, "1", 1, 256,
                          "Event-loop threads, each with its own SO_REUSEPORT listener."),
    LOOM_CONF_RANGE_FIELD(struct loom_svc_conf, max_header_bytes, "max-header-bytes", SIZE, "32KiB",
                          1024, 1 << 20,
                          "Largest request line plus headers; a larger head gets 431."),
    LOOM_CONF_RANGE_FIELD(struct loom_svc_conf, max_body_bytes, "max-body-bytes", SIZE, "1MiB", 1,
                          (int64_t)1 << 32,
                          "Default largest request body (routes may set their own); 413 above."),
    LOOM_CONF_RANGE_FIELD(struct loom_svc_conf, header_timeout, "header-timeout", DURATION, "10s",
                          (int64_t)LOOM_NS_PER_MS, (int64_t)3600 * (int64_t)LOOM_NS_PER_SEC,
                          "Time a client has to send a complete request head; then 408."),
    LOOM_CONF_RANGE_FIELD(struct loom_svc_conf, idle_timeout, "idle-timeout", DURATION, "60s",
                          (int64_t)LOOM_NS_PER_MS, (int64_t)24 * 3600 * (int64_t)LOOM_NS_PER_SEC,
                          "Time a keep-alive connection may sit idle, or a body or write stall."),
    LOOM_CONF_RANGE_FIELD(struct loom_svc_conf, drain_timeout, "drain-timeout", DURATION, "10s", 0,
                          (int64_t)3600 * (int64_t)LOOM_NS_PER_SEC,
                          "On SIGTERM, time given to in-flight requests before exiting."),
    LOOM_CONF_RANGE_FIELD(struct loom_svc_conf, max_connections, "max-connections", INT, "10000", 1,
                          1000000, "Open connections per thread; accepting pauses beyond."),
};

void loom_service_sections_init(struct loom_service_sections *ss,
                                const struct loom_service *const *services, size_t n)
{
    memset(ss, 0, sizeof(*ss));
    ss->nservices = n;
    ss->sections = loom_calloc(1 + 2 * n, sizeof(*ss->sections));
    ss->commons = loom_calloc(n ? n : 1, sizeof(*ss->commons));
    ss->confs = loom_calloc(n ? n : 1, sizeof(*ss->confs));
    ss->common_fields = loom_calloc(n ? n : 1, sizeof(*ss->common_fields));
    ss->sections[ss->nsections++] =
        (struct loom_conf_section){ "", global_fields, LOOM_ARRAY_SIZE(global_fields),
                                    &ss->global };
    for (size_t i = 0; i < n; i++) {
        const struct loom_service *svc = services[i];
        struct loom_conf_field *f = loom_malloc(sizeof(common_template));
        memcpy(f, common_template, sizeof(common_template));
        for (size_t k = 0; k < LOOM_ARRAY_SIZE(common_template); k++) { /* per-service defaults */
            if (strcmp(f[k].key, "listen") == 0)
                f[k].def = svc->default_listen;
            else if (strcmp(f[k].key, "max-body-bytes") == 0 && svc->default_max_body)
                f[k].def = svc->default_max_body;
        }
        ss->common_fields[i] = f;
        ss->sections[ss->nsections++] =
            (struct loom_conf_section){ svc->name, f, LOOM_ARRAY_SIZE(common_template),
                                        &ss->commons[i] };
        ss->confs[i] = loom_calloc(1, svc->conf_size ? svc->conf_size : 1);
        if (svc->nconf_fields)
            ss->sections[ss->nsections++] =
                (struct loom_conf_section){ svc->name, svc->conf_fields, svc->nconf_fields,
                                            ss->confs[i] };
    }
}

void loom_service_sections_release(struct loom_service_sections *ss)
{
    for (size_t i = 0; i < ss->nservices; i++) {
        free(ss->common_fields[i]);
        free(ss->confs[i]);
    }
    free(ss->common_fields);
    free(ss->confs);
    free(ss->commons);
    free(ss->sections);
    memset(ss, 0, sizeof(*ss));
}

/* ---- the runtime ---- */

struct runtime;

struct loop_ctl { /* a message to one service loop */
    struct loom_task task;
    struct loom_svc *svc;
    struct loom_loop *loop;
};

struct loom_svc {
    const struct loom_service *service;
    const void *conf;
    const struct loom_svc_conf *common;
    const struct loom_global_conf *global;
    void *state;
    bool initialised;
    struct runtime *rt;
    struct loom_loop **loops;
    pthread_t *threads;
    size_t nthreads; /* started */
    struct loop_ctl *ctl;
    size_t nloops;
    struct loom_route *routes;
    struct loom_http_server *http;
    atomic_bool draining;
};

struct runtime {
    struct loom_loop *main;
    struct loom_pool *pool;
    struct loom_svc *svcs;
    size_t nsvcs;
    struct loom_signal sigterm, sigint;
    struct loom_timer drain_timer;
    struct loom_task all_drained;
    atomic_size_t loops_left;
    bool draining;
};

const void *loom_svc_conf(const struct loom_svc *svc)
{
    return svc->conf;
}
const struct loom_svc_conf *loom_svc_common(const struct loom_svc *svc)
{
    return svc->common;
}
const struct loom_global_conf *loom_svc_global(const struct loom_svc *svc)
{
    return svc->global;
}

char *loom_svc_bus_url(const struct loom_svc *svc, const char *given)
{
    const char *url = given && given[0] ? given : svc->global->bus;
    if (url && url[0] && strcmp(url, "sqlite") != 0)
        return loom_strdup(url);
    size_t n = strlen(svc->global->data_dir) + sizeof("sqlite:/bus.db");
    char *out = loom_malloc(n);
    snprintf(out, n, "sqlite:%s/bus.db", svc->global->data_dir);
    return out;
}
const struct loom_service *loom_svc_service(const struct loom_svc *svc)
{
    return svc->service;
}
void loom_svc_set_state(struct loom_svc *svc, void *state)
{
    svc->state = state;
}
void *loom_svc_state(const struct loom_svc *svc)
{
    return svc->state;
}
struct loom_pool *loom_svc_pool(const struct loom_svc *svc)
{
    return svc->rt->pool;
}
size_t loom_svc_nloops(const struct loom_svc *svc)
{
    return svc->nloops;
}
struct loom_loop *loom_svc_loop(const struct loom_svc *svc, size_t i)
{
    return i < svc->nloops ? svc->loops[i] : NULL;
}
int loom_svc_port(const struct loom_svc *svc)
{
    return svc->http ? loom_http_server_port(svc->http) : -1;
}
bool loom_svc_is_draining(const struct loom_svc *svc)
{
    return atomic_load(&svc->draining);
}

/* ---- built-in routes ---- */

static void h_livez(struct loom_http_req *req)
{
    loom_http_respond(req, 200, "text/plain; charset=utf-8", LOOM_STR("ok\n"));
}

static void h_readyz(struct loom_http_req *req)
{
    struct loom_svc *svc = req->owner;
    if (atomic_load(&svc->draining)) {
        loom_http_respond(req, 503, "text/plain; charset=utf-8", LOOM_STR("draining\n"));
        return;
    }
    if (svc->service->ready && !svc->service->ready(svc->state)) {
        loom_http_respond(req, 503, "text/plain; charset=utf-8", LOOM_STR("not ready\n"));
        return;
    }
    loom_http_respond(req, 200, "text/plain; charset=utf-8", LOOM_STR("ready\n"));
}

static void h_metrics(struct loom_http_req *req)
{
    struct loom_svc *svc = req->owner;
    struct loom_buf b;
    loom_buf_init(&b, 0);
    loom_metrics_render(loom_metrics_global(), svc->service->name, &b);
    loom_http_respond_buf(req, 200, "text/plain; version=0.0.4; charset=utf-8", &b);
    loom_buf_release(&b);
}

static const struct loom_route builtin_routes[] = {
    { LOOM_HTTP_GET, "/livez", h_livez, 0, 0 },
    { LOOM_HTTP_GET, "/readyz", h_readyz, 0, 0 },
    { LOOM_HTTP_GET, "/metrics", h_metrics, 0, 0 },
};

/* ---- lifecycle ---- */

static void *loop_thread(void *arg)
{
    struct loop_ctl *ctl = arg;
    loom_log_set_service(ctl->svc->service->name);
    loom_loop_run(ctl->loop);
    return NULL;
}

static void on_all_drained(struct loom_task *task)
{
    struct runtime *rt = LOOM_CONTAINER_OF(task, struct runtime, all_drained);
    loom_log_info("drained; exiting");
    loom_loop_stop(rt->main);
}

/* On a service loop: its listener has no connection left. */
static void on_loop_drained(struct loom_http_server *s, struct loom_loop *loop, void *arg)
{
    LOOM_UNUSED(s);
    LOOM_UNUSED(loop);
    struct loom_svc *svc = arg;
    if (atomic_fetch_sub(&svc->rt->loops_left, 1) == 1)
        loom_loop_post(svc->rt->main, &svc->rt->all_drained, on_all_drained);
}

static void drain_on_loop(struct loom_task *task)
{
    struct loop_ctl *ctl = LOOM_CONTAINER_OF(task, struct loop_ctl, task);
    loom_http_server_drain(ctl->svc->http, ctl->loop, on_loop_drained, ctl->svc);
}

static void on_drain_deadline(struct loom_timer *t)
{
    struct runtime *rt = LOOM_CONTAINER_OF(t, struct runtime, drain_timer);
    loom_log_warn("drain deadline passed with %zu loop(s) still busy; closing their connections",
                  atomic_load(&rt->loops_left));
    loom_loop_stop(rt->main);
}

static void on_signal(struct loom_signal *s, int signum)
{
    struct runtime *rt = loom_loop_data(s->io.loop);
    if (rt->draining) {
        loom_log_warn("signal %d again: stopping without waiting", signum);
        loom_loop_stop(rt->main);
        return;
    }
    rt->draining = true;
    uint64_t deadline = 0;
    size_t loops = 0;
    for (size_t i = 0; i < rt->nsvcs; i++) {
        deadline = LOOM_MAX(deadline, rt->svcs[i].common->drain_timeout);
        loops += rt->svcs[i].nloops;
    }
    loom_log_info("signal %d: draining (up to %.1f s)", signum, (double)deadline / 1e9);
    atomic_store(&rt->loops_left, loops);
    for (size_t i = 0; i < rt->nsvcs; i++) {
        struct loom_svc *svc = &rt->svcs[i];
        atomic_store(&svc->draining, true);
        for (size_t j = 0; j < svc->nloops; j++)
            loom_loop_post(svc->loops[j], &svc->ctl[j].task, drain_on_loop);
    }
    loom_timer_init(&rt->drain_timer, rt->main, on_drain_deadline);
    loom_timer_start(&rt->drain_timer, deadline, 0);
}

static loom_err svc_start(struct runtime *rt, struct loom_svc *svc, struct loom_error *err)
{
    const struct loom_service *service = svc->service;
    svc->nloops = (size_t)svc->common->threads;
    svc->loops = loom_calloc(svc->nloops, sizeof(*svc->loops));
    svc->threads = loom_calloc(svc->nloops, sizeof(*svc->threads));
    svc->ctl = loom_calloc(svc->nloops, sizeof(*svc->ctl));
    for (size_t i = 0; i < svc->nloops; i++) {
        svc->loops[i] = loom_loop_new();
        svc->ctl[i] = (struct loop_ctl){ .svc = svc, .loop = svc->loops[i] };
    }
    svc->rt = rt;
    if (service->init) {
        loom_err e = service->init(svc, err);
        if (e)
            return loom_error_prefix(err, "%s: init", service->name);
    }
    svc->initialised = true;

    size_t nroutes = service->nroutes + LOOM_ARRAY_SIZE(builtin_routes);
    svc->routes = loom_calloc(nroutes, sizeof(*svc->routes));
    memcpy(svc->routes, builtin_routes, sizeof(builtin_routes));
    if (service->nroutes)
        memcpy(svc->routes + LOOM_ARRAY_SIZE(builtin_routes), service->routes,
               service->nroutes * sizeof(*service->routes));
    struct loom_http_server_config hc = {
        .name = service->name,
        .routes = svc->routes,
        .nroutes = nroutes,
        .ctx = svc->state,
        .owner = svc,
        .error_body = service->error_body,
        .limits = {
            .max_header_bytes = svc->common->max_header_bytes,
            .max_body_bytes = svc->common->max_body_bytes,
            .header_timeout = svc->common->header_timeout,
            .idle_timeout = svc->common->idle_timeout,
            .max_connections = (size_t)svc->common->max_connections,
        },
    };
    svc->http = loom_http_server_new(&hc, err);
    if (!svc->http)
        return loom_error_prefix(err, "%s: routes", service->name);
    for (size_t i = 0; i < svc->nloops; i++) {
        loom_err e = loom_http_server_listen(svc->http, svc->loops[i], svc->common->listen, err);
        if (e)
            return loom_error_prefix(err, "%s: listen", service->name);
    }
    return LOOM_OK;
}

static void svc_stop(struct loom_svc *svc)
{
    for (size_t i = 0; i < svc->nthreads; i++)
        loom_loop_stop(svc->loops[i]);
    for (size_t i = 0; i < svc->nthreads; i++)
        pthread_join(svc->threads[i], NULL);
    svc->nthreads = 0;
}

static void svc_free(struct loom_svc *svc)
{
    if (svc->initialised && svc->service->fini)
        svc->service->fini(svc->state);
    loom_http_server_free(svc->http);
    for (size_t i = 0; i < svc->nloops; i++)
        loom_loop_free(svc->loops[i]);
    free(svc->loops);
    free(svc->threads);
    free(svc->ctl);
    free(svc->routes);
}

int loom_services_run(const struct loom_service *const *services, const size_t *which, size_t n,
                      const struct loom_service_sections *ss)
{
    uint64_t t0 = loom_now_ns();
    loom_log_set_level((enum loom_log_level)ss->global.log_level);
    loom_log_set_service("loom");
    signal(SIGPIPE, SIG_IGN);
    /* Pin glibc's mmap threshold at its initial 128 KiB: larger blocks are mmap'ed, so they
     * cost RSS only for the pages touched (a big calloc'ed table) and go back to the system when
     * freed. Left dynamic, the threshold rises after the first such free, up to 32 MiB, and
     * large transient buffers (an argon2id hash's 19 MiB, a big request's tensors) then stay
     * in the heap and in the RSS for good. */
    mallopt(M_MMAP_THRESHOLD, 128 << 10);
    /* Block before any thread exists, so that only the signalfd sees these. */
    static const int blocked[] = { SIGTERM, SIGINT, 0 };
    loom_signal_block(blocked);
    loom_metrics_register_process(loom_metrics_global());

    struct runtime rt = { 0 };
    rt.sigterm.io.fd = rt.sigint.io.fd = -1;
    rt.main = loom_loop_new();
    loom_loop_set_data(rt.main, &rt);
    rt.pool = loom_pool_new((unsigned)ss->global.pool_threads, 0);
    rt.svcs = loom_calloc(n ? n : 1, sizeof(*rt.svcs));
    rt.nsvcs = n;
    int status = 0;
    struct loom_error err = { 0 };
    for (size_t i = 0; i < n; i++) {
        struct loom_svc *svc = &rt.svcs[i];
        svc->service = services[which[i]];
        svc->conf = ss->confs[which[i]];
        svc->common = &ss->commons[which[i]];
        svc->global = &ss->global;
        if (svc_start(&rt, svc, &err)) {
            loom_log_error("%s", err.msg);
            status = 1;
            goto out_stop;
        }
    }
    if (loom_signal_start(&rt.sigterm, rt.main, SIGTERM, on_signal) ||
        loom_signal_start(&rt.sigint, rt.main, SIGINT, on_signal)) {
        loom_log_error("cannot watch signals");
        status = 1;
        goto out_stop;
    }
    for (size_t i = 0; i < n; i++) {
        struct loom_svc *svc = &rt.svcs[i];
        for (size_t j = 0; j < svc->nloops; j++) {
            if (pthread_create(&svc->threads[j], NULL, loop_thread, &svc->ctl[j]) != 0) {
                loom_log_error("%s: cannot start a thread", svc->service->name);
                status = 1;
                goto out_stop;
            }
            svc->nthreads++;
        }
        loom_log_set_service(svc->service->name);
        LOOM_LOG_KV(LOOM_LOG_INFO, "listening", LOOM_KV_CSTR("addr", svc->common->listen),
                    LOOM_KV_INT("port", loom_svc_port(svc)),
                    LOOM_KV_INT("threads", (int64_t)svc->nloops));
    }
    loom_log_set_service("loom");
    LOOM_LOG_KV(LOOM_LOG_INFO, "started", LOOM_KV_STR("version", LOOM_STR(LOOM_VERSION)),
                LOOM_KV_UINT("services", n),
                LOOM_KV_DBL("startup_ms", (double)(loom_now_ns() - t0) / 1e6));
    loom_loop_run(rt.main);

out_stop:
    for (size_t i = 0; i < n; i++)
        svc_stop(&rt.svcs[i]);
    loom_pool_free(rt.pool);
    for (size_t i = 0; i < n; i++)
        svc_free(&rt.svcs[i]);
    loom_signal_stop(&rt.sigterm);
    loom_signal_stop(&rt.sigint);
    free(rt.svcs);
    loom_loop_free(rt.main);
    if (status == 0)
        loom_log_info("stopped");
    return status;
}

/* ---- command line ---- */

extern char **environ;

static void serve_usage(const char *cmd, const struct loom_service *const *services, size_t n,
                        const struct loom_conf *conf, FILE *out)
{
    fprintf(out,
            "Usage: %s [SERVICE...] [--config FILE] [--print-config] [--SETTING=VALUE...]\n\n"
            "Run the named services in one process, each on its own listener (with no name,\n"
            "every service that is not optional). Every service answers /livez, /readyz and\n"
            "/metrics. SIGTERM or SIGINT drains in-flight requests and exits with 0.\n\n"
            "Services:\n",
            cmd);
    for (size_t i = 0; i < n; i++)
        fprintf(out, "  %-10s %-16s %s%s\n", services[i]->name, services[i]->default_listen,
                services[i]->summary, services[i]->optional ? " (optional)" : "");
    fputc('\n', out);
    loom_conf_usage(conf, NULL, out);
}

int loom_serve_main(const struct loom_service *const *services, size_t n, int argc, char **argv)
{
    const char *cmd = argc > 0 ? argv[0] : "loom serve";
    struct loom_service_sections ss;
    loom_service_sections_init(&ss, services, n);
    struct loom_conf conf;
    loom_conf_init(&conf, ss.sections, ss.nsections);
    struct loom_error err = { 0 };
    int status = 2;
    size_t *which = loom_calloc(n ? n : 1, sizeof(*which));
    size_t nwhich = 0;
    if (loom_conf_load(&conf, argc, argv, environ, &err)) {
        fprintf(stderr, "%s: %s\n", cmd, err.msg);
        goto out;
    }
    if (conf.help) {
        serve_usage(cmd, services, n, &conf, stdout);
        status = 0;
        goto out;
    }
    for (size_t a = 0; a < conf.nargs; a++) {
        size_t i = 0;
        while (i < n && strcmp(services[i]->name, conf.args[a]) != 0)
            i++;
        if (i == n) {
            fprintf(stderr, "%s: unknown service \"%s\"; the services are:", cmd, conf.args[a]);
            for (size_t j = 0; j < n; j++)
                fprintf(stderr, " %s", services[j]->name);
            fputc('\n', stderr);
            goto out;
        }
        for (size_t k = 0; k < nwhich; k++) {
            if (which[k] == i) {
                fprintf(stderr, "%s: service \"%s\" named twice\n", cmd, conf.args[a]);
                goto out;
            }
        }
        which[nwhich++] = i;
    }
    if (nwhich == 0)
        for (size_t i = 0; i < n; i++)
            if (!services[i]->optional)
                which[nwhich++] = i;
    if (conf.print_config) {
        loom_conf_print(&conf, stdout);
        status = 0;
        goto out;
    }
    status = loom_services_run(services, which, nwhich, &ss);
out:
    free(which);
    loom_conf_release(&conf);
    loom_service_sections_release(&ss);
    return status;
}

int loom_service_main(const struct loom_service *service, int argc, char **argv)
{
    return loom_serve_main(&service, 1, argc, argv);
}
