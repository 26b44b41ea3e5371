/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests for the service runtime: the settings sections (globals, the common per-service
 * settings with each service's own defaults, the service's own table), `loom serve`'s argument
 * handling, and a real run of a small service in this process: built-in /livez /readyz
 * /metrics, the service's route with its state, readiness from the service's callback, and a
 * SIGTERM drain that lets an in-flight request finish and returns 0.
 */
#include "check.h"

#include <loom/log.h>
#include <loom/service.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>

struct toy_conf {
    int64_t answer;
};

struct toy {
    int64_t answer;
    atomic_bool ready;
    struct loom_timer timer; /* for the slow route */
    struct loom_http_req *pending;
};

static struct toy *the_toy;

static const struct loom_conf_field toy_fields[] = {
    LOOM_CONF_RANGE_FIELD(struct toy_conf, answer, "answer", INT, "42", 0, 1000, "The answer."),
};

static void h_answer(struct loom_http_req *req)
{
    struct toy *t = req->ctx;
    char body[32];
    int n = snprintf(body, sizeof(body), "%lld", (long long)t->answer);
    loom_http_respond(req, 200, "text/plain", loom_str_make(body, (size_t)n));
}

static void slow_fire(struct loom_timer *timer)
{
    struct toy *t = LOOM_CONTAINER_OF(timer, struct toy, timer);
    loom_http_respond(t->pending, 200, "text/plain", LOOM_STR("slow"));
}

static void h_slow(struct loom_http_req *req)
{
    struct toy *t = req->ctx;
    t->pending = req;
    loom_timer_init(&t->timer, req->loop, slow_fire);
    loom_timer_start(&t->timer, 300 * LOOM_NS_PER_MS, 0);
}

static loom_err toy_init(struct loom_svc *svc, struct loom_error *err)
{
    const struct toy_conf *c = loom_svc_conf(svc);
    if (c->answer == 13)
        return loom_error_set(err, LOOM_EINVAL, "13 is unlucky");
    struct toy *t = loom_new(struct toy);
    t->answer = c->answer;
    atomic_store(&t->ready, false);
    the_toy = t;
    CHECK(loom_svc_nloops(svc) == 1);
    CHECK(loom_svc_pool(svc) != NULL);
    loom_svc_set_state(svc, t);
    return LOOM_OK;
}

static bool toy_ready(void *state)
{
    return atomic_load(&((struct toy *)state)->ready);
}

static void toy_fini(void *state)
{
    free(state);
}

static const struct loom_route toy_routes[] = {
    { LOOM_HTTP_GET, "/answer", h_answer, 0, 0 },
    { LOOM_HTTP_GET, "/slow", h_slow, 0, 0 },
};

static const struct loom_service toy_service = {
    .name = "toy",
    .summary = "A test service",
    .default_listen = "127.0.0.1:0",
    .default_max_body = "2KiB",
    .conf_fields = toy_fields,
    .nconf_fields = 1,
    .conf_size = sizeof(struct toy_conf),
    .init = toy_init,
    .routes = toy_routes,
    .nroutes = 2,
    .ready = toy_ready,
    .fini = toy_fini,
};

static const struct loom_service other_service = {
    .name = "other",
    .summary = "An optional one",
    .default_listen = "127.0.0.1:9999",
    .optional = true,
};

static void test_sections(void)
{
    const struct loom_service *const svcs[] = { &toy_service, &other_service };
    struct loom_service_sections ss;
    loom_service_sections_init(&ss, svcs, 2);
    CHECK_UINT(ss.nsections, 1 + 2 + 1); /* globals, toy x2, other (no own fields) */
    struct loom_conf conf;
    loom_conf_init(&conf, ss.sections, ss.nsections);
    CHECK_STR(ss.global.data_dir, "./loom-data");
    CHECK_STR(ss.commons[0].listen, "127.0.0.1:0");
    CHECK_STR(ss.commons[1].listen, "127.0.0.1:9999");
    CHECK_UINT(ss.commons[0].max_body_bytes, 2048);    /* the service's default */
    CHECK_UINT(ss.commons[1].max_body_bytes, 1 << 20); /* the runtime's */
    CHECK_INT(((struct toy_conf *)ss.confs[0])->answer, 42);
    char *argv[] = { "serve", "--toy.answer=7", "--other.threads=3", "--log-level=debug", NULL };
    struct loom_error err = { 0 };
    CHECK_INT(loom_conf_load(&conf, 4, argv, NULL, &err), LOOM_OK);
    CHECK_INT(((struct toy_conf *)ss.confs[0])->answer, 7);
    CHECK_INT(ss.commons[1].threads, 3);
    CHECK_INT(ss.global.log_level, LOOM_LOG_DEBUG);
    loom_conf_release(&conf);
    loom_service_sections_release(&ss);
}

static void test_serve_main_usage(void)
{
    const struct loom_service *const svcs[] = { &toy_service, &other_service };
    char *bad_svc[] = { "loom serve", "nope", NULL };
    CHECK_INT(loom_serve_main(svcs, 2, 2, bad_svc), 2);
    char *twice[] = { "loom serve", "toy", "toy", NULL };
    CHECK_INT(loom_serve_main(svcs, 2, 3, twice), 2);
    char *bad_key[] = { "loom serve", "--toy.answr=1", NULL };
    CHECK_INT(loom_serve_main(svcs, 2, 2, bad_key), 2);
    char *range[] = { "loom serve", "--toy.answer=5000", NULL };
    CHECK_INT(loom_serve_main(svcs, 2, 2, range), 2);
    FILE *saved = stdout;
    stdout = fopen("/dev/null", "w");
    char *help[] = { "loom serve", "--help", NULL };
    int rc_help = loom_serve_main(svcs, 2, 2, help);
    char *print[] = { "loom serve", "--print-config", NULL };
    int rc_print = loom_serve_main(svcs, 2, 2, print);
    fclose(stdout);
    stdout = saved;
    CHECK_INT(rc_help, 0);
    CHECK_INT(rc_print, 0);
    /* A failing init: exit status 1, nothing left running. */
    char *unlucky[] = { "loom serve", "toy", "--toy.answer=13", "--log-level=error", NULL };
    CHECK_INT(loom_serve_main(svcs, 2, 4, unlucky), 1);
}

/* ---- a real run ---- */

static atomic_int run_status = -1;
static char listen_flag[64];

static void *run_main(void *arg)
{
    LOOM_UNUSED(arg);
    const struct loom_service *const svcs[] = { &toy_service };
    char *argv[] = { "loom serve", "--log-level=error", "--toy.drain-timeout=5s", listen_flag,
                     NULL };
    atomic_store(&run_status, loom_serve_main(svcs, 1, 4, argv));
    return NULL;
}

static int dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    struct timeval tv = { .tv_sec = 5 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

/* GET path on a new connection; the whole answer into out. Returns the status or -1. */
static int get(int port, const char *path, char *out, size_t cap)
{
    int fd = dial(port);
    if (fd < 0)
        return -1;
    char req[256];
    int n =
        snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
    if (send(fd, req, (size_t)n, 0) != n) {
        close(fd);
        return -1;
    }
    size_t got = 0;
    ssize_t r;
    while (got + 1 < cap && (r = recv(fd, out + got, cap - got - 1, 0)) > 0)
        got += (size_t)r;
    out[got] = '\0';
    close(fd);
    return got > 12 ? atoi(out + 9) : -1;
}

/* A free port: bind port 0, read it, let it go (the service then binds it). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    getsockname(fd, (struct sockaddr *)&sa, &len);
    close(fd);
    return ntohs(sa.sin_port);
}

/* Wait until the service answers /livez. */
static bool wait_up(int port)
{
    char buf[256];
    for (int i = 0; i < 500; i++) {
        if (get(port, "/livez", buf, sizeof(buf)) == 200)
            return true;
        usleep(10000);
    }
    return false;
}

struct slow_client {
    int port;
    int status;
    char body[512];
};

static void *slow_request(void *arg)
{
    struct slow_client *c = arg;
    c->status = get(c->port, "/slow", c->body, sizeof(c->body));
    return NULL;
}

static void test_run_and_drain(void)
{
    int port = free_port();
    snprintf(listen_flag, sizeof(listen_flag), "--toy.listen=127.0.0.1:%d", port);
    pthread_t t;
    pthread_create(&t, NULL, run_main, NULL);
    bool up = wait_up(port);
    CHECK(up);
    if (!up) {
        kill(getpid(), SIGTERM);
        pthread_join(t, NULL);
        return;
    }
    char buf[4096];
    CHECK_INT(get(port, "/livez", buf, sizeof(buf)), 200);
    CHECK_INT(get(port, "/readyz", buf, sizeof(buf)), 503); /* the service says not yet */
    atomic_store(&the_toy->ready, true);
    CHECK_INT(get(port, "/readyz", buf, sizeof(buf)), 200);
    CHECK_INT(get(port, "/answer", buf, sizeof(buf)), 200);
    CHECK_CONTAINS(buf, "\r\n\r\n42");
    CHECK_INT(get(port, "/metrics", buf, sizeof(buf)), 200);
    CHECK_CONTAINS(buf, "text/plain; version=0.0.4");
    CHECK_CONTAINS(buf,
                   "loom_toy_http_requests_total{route=\"/answer\",method=\"GET\",code=\"200\"} 1");
    CHECK_CONTAINS(buf, "process_resident_memory_bytes");
    CHECK_INT(get(port, "/nope", buf, sizeof(buf)), 404);
    /* SIGTERM while a request is in flight: it is answered, then the run returns 0. */
    struct slow_client slow = { .port = port };
    pthread_t st;
    pthread_create(&st, NULL, slow_request, &slow);
    usleep(100000);
    kill(getpid(), SIGTERM);
    pthread_join(st, NULL);
    CHECK_INT(slow.status, 200);
    CHECK_CONTAINS(slow.body, "Connection: close");
    CHECK_CONTAINS(slow.body, "slow");
    pthread_join(t, NULL);
    CHECK_INT(atomic_load(&run_status), 0);
    CHECK_INT(dial(port), -1); /* nothing listens any more */
}

int main(void)
{
    /* The runtime takes SIGTERM through a signalfd: no other thread may take it first. */
    int sigs[] = { SIGTERM, SIGINT, 0 };
    loom_signal_block(sigs);
    loom_log_set_level(LOOM_LOG_ERROR);
    RUN(test_sections);
    RUN(test_serve_main_usage);
    RUN(test_run_and_drain);
    return check_report();
}
