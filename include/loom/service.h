/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Services and their runtime. A service is a table: a name, its settings (a field table and the
 * size of the struct they fill), an init that builds its state, its routes, an optional
 * readiness check, and a fini. The runtime does the rest for every service alike: loads the
 * configuration, sets up logging and metrics, starts the service's loop threads with one
 * SO_REUSEPORT listener each, serves the built-in /livez, /readyz and /metrics, and on SIGTERM
 * or SIGINT drains (stops accepting, answers what is in flight within drain-timeout) and exits
 * with 0. Several services run in one process this way, each on its own listener and threads;
 * they never call each other's functions.
 */
#ifndef LOOM_SERVICE_H
#define LOOM_SERVICE_H

#include <loom/conf.h>
#include <loom/core.h>
#include <loom/http.h>
#include <loom/loop.h>

/* Settings every process has (section ""): --data-dir, --log-level, --pool-threads, --bus. */
struct loom_global_conf {
    const char *data_dir;
    int log_level; /* enum loom_log_level */
    int64_t pool_threads;
    const char *bus; /* "sqlite", sqlite:PATH or nats://...: see loom_svc_bus_url */
};

/* Settings every service has, in its own section: --<svc>.listen, --<svc>.threads, limits. */
struct loom_svc_conf {
    const char *listen;
    int64_t threads;
    uint64_t max_header_bytes;
    uint64_t max_body_bytes;
    uint64_t header_timeout;
    uint64_t idle_timeout;
    uint64_t drain_timeout;
    int64_t max_connections;
};

struct loom_svc;

struct loom_service {
    const char *name;             /* "inference": section name, metrics prefix, log svc */
    const char *summary;          /* one line for `loom help` */
    const char *default_listen;   /* "127.0.0.1:8081" */
    bool optional;                /* not started by a bare `loom serve` */
    const char *default_max_body; /* default of max-body-bytes if not the runtime's 1MiB */
    /* The body of errors the server itself answers (404, 405, 413...): NULL for KServe's
     * {"error": ...}; loom_http_error_problem for RFC 9457 problem+json (the platform API). */
    loom_http_error_fn error_body;
    const struct loom_conf_field *conf_fields; /* the service's own settings */
    size_t nconf_fields;
    size_t conf_size; /* sizeof the struct they fill */
    /* Build the state (loom_svc_set_state) from loom_svc_conf(svc). Runs on the main thread
     * before any request; LOOM_OK or an error with a message. */
    loom_err (*init)(struct loom_svc *svc, struct loom_error *err);
    const struct loom_route *routes; /* handlers get the state as req->ctx */
    size_t nroutes;
    bool (*ready)(void *state); /* optional: false makes /readyz answer 503 */
    void (*fini)(void *state);  /* after the loops stopped */
};

/* The service's own settings struct (conf_size bytes), read-only. */
const void *loom_svc_conf(const struct loom_svc *svc);
/* The settings every service has. */
const struct loom_svc_conf *loom_svc_common(const struct loom_svc *svc);
const struct loom_global_conf *loom_svc_global(const struct loom_svc *svc);
/* The URL of the event bus the service uses: `given` (its own --<svc>.bus) when not empty, else
 * --bus, with "sqlite" meaning sqlite:<data-dir>/bus.db. The caller frees it. */
char *loom_svc_bus_url(const struct loom_svc *svc, const char *given);
const struct loom_service *loom_svc_service(const struct loom_svc *svc);
void loom_svc_set_state(struct loom_svc *svc, void *state);
void *loom_svc_state(const struct loom_svc *svc);
/* The process-wide work pool. */
struct loom_pool *loom_svc_pool(const struct loom_svc *svc);
/* The service's loops (one per thread), valid from init on. Their loom_loop_data pointer
 * belongs to the service. */
size_t loom_svc_nloops(const struct loom_svc *svc);
struct loom_loop *loom_svc_loop(const struct loom_svc *svc, size_t i);
/* The port the service listens on. */
int loom_svc_port(const struct loom_svc *svc);
/* True while the service drains (it then answers /readyz with 503). */
bool loom_svc_is_draining(const struct loom_svc *svc);

/* The conf sections for the globals and for each service in `services` (2 per service), in a
 * form loom_conf_init takes. `confs[i]` receive the service-specific structs (allocated here,
 * conf_size bytes) and `commons[i]` the common ones. Free with loom_service_sections_free. */
struct loom_service_sections {
    struct loom_conf_section *sections;
    size_t nsections;
    struct loom_global_conf global;
    struct loom_svc_conf *commons;
    void **confs;
    struct loom_conf_field **common_fields; /* per service: the common table, its listen default
                                               filled in */
    size_t nservices;
};
void loom_service_sections_init(struct loom_service_sections *ss,
                                const struct loom_service *const *services, size_t n);
void loom_service_sections_release(struct loom_service_sections *ss);

/*
 * Run `services[i]` with their settings (`which` selects from ss by index) until SIGTERM or
 * SIGINT, then drain and return 0; 1 if a service failed to start (with the reason logged).
 */
int loom_services_run(const struct loom_service *const *services, const size_t *which, size_t n,
                      const struct loom_service_sections *ss);

/*
 * `loom serve`: load the settings of every service in `services` from argv (argv[0] is the
 * command name; positional arguments name the services to run, none meaning every service
 * that is not optional), the environment and --config, handle --help and --print-config, and
 * run. Returns the process exit status: 0, 1 (a service failed), 2 (bad usage or settings).
 */
int loom_serve_main(const struct loom_service *const *services, size_t n, int argc, char **argv);

/* One service, as a main() of two lines. */
int loom_service_main(const struct loom_service *service, int argc, char **argv);

#endif
