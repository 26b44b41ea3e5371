/* SPDX-License-Identifier: Apache-2.0 */
/*
 * `loom events`: the event bus from the command line, opened directly as the services open it
 * (--bus, $LOOM_BUS, else sqlite:<data-dir>/bus.db). publish sends one CloudEvent (how a
 * pipeline asks for training: loom.training.requested); groups shows every consumer group with
 * its position and lag; parked lists a group's dead letter with the reasons; replay delivers
 * parked events again; reset moves a group to replay the log; tail reads events as a group of
 * its own and prints each CloudEvent on a line (what a service would receive). Exit status: 0
 * done, 1 the bus refused or failed, 2 a usage error.
 */
#include "cmd.h"

#include <loom/bus.h>
#include <loom/event.h>
#include <loom/json.h>
#include <loom/trace.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_main[] =
    "Usage: loom events [--bus=URL] [--data-dir=DIR] <command> [arguments]\n"
    "\n"
    "The event bus the services share (docs/events.md).\n"
    "\n"
    "Commands:\n"
    "  publish TYPE DATA [--subject S] [--id ID]  Publish a CloudEvent; DATA is JSON, @FILE\n"
    "                                             or - (standard input)\n"
    "  groups                                     Consumer groups: position, lag, parked\n"
    "  parked GROUP [--after N] [--limit N]       A group's dead letter, with the reasons\n"
    "  replay GROUP [PSEQ]                        Deliver parked events again (all, or one)\n"
    "  reset GROUP --seq N | --time RFC3339       Move a group, to replay the log from there\n"
    "  tail GROUP [--filter F] [--new] [--count N] [--timeout SECONDS]\n"
    "                                             Read as group GROUP (created if new, from\n"
    "                                             the oldest event, or only new ones with\n"
    "                                             --new) and print each CloudEvent as a line,\n"
    "                                             until N events, SECONDS or Ctrl-C\n"
    "\n"
    "Options:\n"
    "  --bus=URL       sqlite:PATH or nats://HOST:PORT (default: $LOOM_BUS, else\n"
    "                  sqlite:<data-dir>/bus.db)\n"
    "  --data-dir=DIR  (default: $LOOM_DATA_DIR, else ./loom-data)\n"
    "\n"
    "Exit status: 0 done, 1 the bus refused or failed, 2 usage error.\n";

struct opts {
    const char *bus, *data_dir, *subject, *id, *after, *limit, *seq, *time;
    const char *filter, *count, *timeout;
    bool new_only;
    const char *pos[3];
    int npos;
};

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loom events: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nRun 'loom events --help' for usage.\n");
    return 2;
}

/* --name=value or --name value. */
static bool take(int argc, char **argv, int *i, const char *name, const char **out)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0)
        return false;
    if (argv[*i][n] == '=') {
        *out = argv[*i] + n + 1;
        return true;
    }
    if (argv[*i][n] == '\0' && *i + 1 < argc) {
        *out = argv[++*i];
        return true;
    }
    return false;
}

static int parse(int argc, char **argv, struct opts *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (take(argc, argv, &i, "--bus", &o->bus) ||
            take(argc, argv, &i, "--data-dir", &o->data_dir) ||
            take(argc, argv, &i, "--subject", &o->subject) ||
            take(argc, argv, &i, "--id", &o->id) || take(argc, argv, &i, "--after", &o->after) ||
            take(argc, argv, &i, "--limit", &o->limit) || take(argc, argv, &i, "--seq", &o->seq) ||
            take(argc, argv, &i, "--time", &o->time) ||
            take(argc, argv, &i, "--filter", &o->filter) ||
            take(argc, argv, &i, "--count", &o->count) ||
            take(argc, argv, &i, "--timeout", &o->timeout))
            continue;
        if (strcmp(a, "--new") == 0) {
            o->new_only = true;
            continue;
        }
        if (a[0] == '-' && a[1] != '\0')
            return usage_error("unknown option %s", a);
        if (o->npos == (int)LOOM_ARRAY_SIZE(o->pos))
            return usage_error("unexpected argument %s", a);
        o->pos[o->npos++] = a;
    }
    return 0;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-')
        return false;
    *out = v;
    return true;
}

static struct loom_bus *open_bus(const struct opts *o)
{
    const char *url = o->bus ? o->bus : getenv("LOOM_BUS");
    const char *dir = o->data_dir ? o->data_dir : getenv("LOOM_DATA_DIR");
    char buf[4096];
    if (!url || !url[0] || strcmp(url, "sqlite") == 0) {
        snprintf(buf, sizeof(buf), "sqlite:%s/bus.db", dir && dir[0] ? dir : "./loom-data");
        url = buf;
    }
    struct loom_bus_options bo = { .client_name = "loom-cli" };
    struct loom_bus *bus = NULL;
    struct loom_error err = { 0 };
    if (loom_bus_open(url, &bo, &bus, &err)) {
        fprintf(stderr, "loom events: %s\n", err.msg);
        return NULL;
    }
    return bus;
}

/* DATA as given: JSON text, @FILE, or - for standard input. */
static char *read_data(const char *arg, size_t *len)
{
    FILE *f = NULL;
    if (strcmp(arg, "-") == 0)
        f = stdin;
    else if (arg[0] == '@' && !(f = fopen(arg + 1, "rb"))) {
        fprintf(stderr, "loom events: %s: %s\n", arg + 1, strerror(errno));
        return NULL;
    }
    if (!f) {
        *len = strlen(arg);
        return loom_strdup(arg);
    }
    struct loom_buf b;
    loom_buf_init(&b, LOOM_EVENT_MAX_BYTES + 1);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        if (loom_buf_append(&b, chunk, n)) {
            fprintf(stderr, "loom events: DATA is over %zu bytes\n", LOOM_EVENT_MAX_BYTES);
            loom_buf_release(&b);
            if (f != stdin)
                fclose(f);
            return NULL;
        }
    if (f != stdin)
        fclose(f);
    *len = b.len;
    loom_buf_append(&b, "", 1);
    return b.data ? b.data : loom_strdup("");
}

static int do_publish(struct loom_bus *bus, const struct opts *o)
{
    if (o->npos != 3)
        return usage_error("publish needs TYPE and DATA");
    const char *type = o->pos[1];
    if (!loom_event_type_valid(loom_str_cstr(type)))
        return usage_error("\"%s\" is not an event type (loom.<noun>.<verb>, lowercase)", type);
    size_t len = 0;
    char *data = read_data(o->pos[2], &len);
    if (!data)
        return 1;
    /* The data is copied into the envelope as is: make sure it is one JSON value. */
    struct loom_arena a;
    loom_arena_init(&a, 0);
    struct loom_json_doc doc;
    struct loom_error err = { 0 };
    int rc = 1;
    if (loom_json_parse(data, len, NULL, &a, &doc, &err)) {
        fprintf(stderr, "loom events: DATA is not JSON: %s\n", err.msg);
        rc = 2;
        goto out;
    }
    /* A new trace, or a child of $TRACEPARENT: the event says what caused it, as services'
     * events do. */
    struct loom_trace_ctx parent, trace;
    const char *tp = getenv("TRACEPARENT");
    bool have_parent = tp && loom_trace_parse(loom_str_cstr(tp), &parent) == LOOM_OK;
    loom_trace_child(have_parent ? &parent : NULL, &trace);
    struct loom_buf ev;
    loom_buf_init(&ev, 0);
    struct loom_event_spec spec = {
        .id = o->id ? loom_str_cstr(o->id) : LOOM_STR_NULL,
        .source = "/loom/cli",
        .type = type,
        .subject = o->subject ? loom_str_cstr(o->subject) : LOOM_STR_NULL,
        .data = loom_json_slice(&doc, 0),
        .trace = &trace,
    };
    char id[LOOM_EVENT_ID_MAX + 1];
    if (loom_event_build(&spec, &ev, id, &err)) {
        fprintf(stderr, "loom events: %s\n", err.msg);
        loom_buf_release(&ev);
        goto out;
    }
    struct loom_bus_event be = { .id = loom_str_cstr(id),
                                 .subject = loom_str_cstr(type),
                                 .data = loom_buf_str(&ev) };
    if (loom_bus_publish(bus, &be, 1, &err))
        fprintf(stderr, "loom events: publish: %s\n", err.msg);
    else {
        printf("%s\n", id);
        rc = 0;
    }
    loom_buf_release(&ev);
out:
    loom_arena_release(&a);
    free(data);
    return rc;
}

struct groups_ctx {
    struct loom_bus *bus;
    int rc;
};

static loom_err print_group(const char *name, void *arg)
{
    struct groups_ctx *g = arg;
    struct loom_bus_group_info in;
    struct loom_error err = { 0 };
    if (loom_bus_group_info(g->bus, name, &in, &err)) {
        fprintf(stderr, "loom events: %s: %s\n", name, err.msg);
        g->rc = 1;
        return LOOM_OK;
    }
    printf("%-32s %10llu %10llu %10llu %10llu %8llu\n", name, (unsigned long long)in.next,
           (unsigned long long)in.head, (unsigned long long)in.pending, (unsigned long long)in.lag,
           (unsigned long long)in.parked);
    return LOOM_OK;
}

static int do_groups(struct loom_bus *bus, const struct opts *o)
{
    if (o->npos != 1)
        return usage_error("groups takes no argument");
    struct groups_ctx g = { .bus = bus };
    struct loom_error err = { 0 };
    printf("%-32s %10s %10s %10s %10s %8s\n", "GROUP", "NEXT", "HEAD", "PENDING", "LAG", "PARKED");
    if (loom_bus_group_list(bus, print_group, &g, &err)) {
        fprintf(stderr, "loom events: %s\n", err.msg);
        return 1;
    }
    return g.rc;
}

static loom_err print_parked(const struct loom_bus_parked *p, void *arg)
{
    LOOM_UNUSED(arg);
    char t[40];
    loom_time_rfc3339(p->parked_ns, t);
    printf("%-6llu %-8llu %-40.*s %-32.*s %-3u %s  %.*s\n", (unsigned long long)p->pseq,
           (unsigned long long)p->seq, LOOM_STR_FMT(p->id), LOOM_STR_FMT(p->subject), p->deliveries,
           t, LOOM_STR_FMT(p->reason));
    return LOOM_OK;
}

static int do_parked(struct loom_bus *bus, const struct opts *o)
{
    if (o->npos != 2)
        return usage_error("parked needs GROUP");
    uint64_t after = 0, limit = 100;
    if ((o->after && !parse_u64(o->after, &after)) ||
        (o->limit && (!parse_u64(o->limit, &limit) || limit == 0 || limit > 100000)))
        return usage_error("--after and --limit are counts (--limit 1 to 100000)");
    struct loom_error err = { 0 };
    struct loom_bus_group_info in;
    if (loom_bus_group_info(bus, o->pos[1], &in, &err)) {
        fprintf(stderr, "loom events: %s\n", err.msg);
        return 1;
    }
    printf("%-6s %-8s %-40s %-32s %-3s %-24s  %s\n", "PSEQ", "SEQ", "ID", "SUBJECT", "TRY",
           "PARKED", "REASON");
    if (loom_bus_parked_list(bus, o->pos[1], after, (size_t)limit, print_parked, NULL, &err)) {
        fprintf(stderr, "loom events: %s\n", err.msg);
        return 1;
    }
    return 0;
}

static int do_replay(struct loom_bus *bus, const struct opts *o)
{
    if (o->npos < 2)
        return usage_error("replay needs GROUP");
    uint64_t pseq = 0;
    if (o->npos == 3 && (!parse_u64(o->pos[2], &pseq) || pseq == 0))
        return usage_error("PSEQ \"%s\" is not a parked event's number (see loom events parked)",
                           o->pos[2]);
    size_t n = 0;
    struct loom_error err = { 0 };
    if (loom_bus_parked_replay(bus, o->pos[1], pseq, &n, &err)) {
        fprintf(stderr, "loom events: %s\n", err.msg);
        return 1;
    }
    printf("%zu parked event%s delivered again to %s\n", n, n == 1 ? "" : "s", o->pos[1]);
    return 0;
}

static int do_reset(struct loom_bus *bus, const struct opts *o)
{
    if (o->npos != 2 || (!o->seq == !o->time))
        return usage_error("reset needs GROUP and one of --seq N or --time RFC3339");
    uint64_t seq = 0;
    int64_t t = 0;
    if (o->seq && (!parse_u64(o->seq, &seq) || seq == 0))
        return usage_error("--seq \"%s\" is not a positive sequence number", o->seq);
    if (o->time && loom_event_parse_time(loom_str_cstr(o->time), &t))
        return usage_error("--time \"%s\" is not an RFC 3339 time (2026-11-24T10:00:00Z)", o->time);
    struct loom_error err = { 0 };
    if (loom_bus_group_reset(bus, o->pos[1], seq, t, &err)) {
        fprintf(stderr, "loom events: %s\n", err.msg);
        return 1;
    }
    printf("%s moved\n", o->pos[1]);
    return 0;
}

/* ---- tail ---- */

struct tail {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t seen, want; /* want 0: no limit */
};

static volatile sig_atomic_t interrupted;

static void on_interrupt(int sig)
{
    LOOM_UNUSED(sig);
    interrupted = 1;
}

/* One event at a time (batch 1), so that no more than --count are taken from the group: the
 * ones after it are left unsettled, for the group's next reader. */
static enum loom_bus_verdict on_tail(struct loom_bus_msg *msg, void *arg)
{
    struct tail *t = arg;
    pthread_mutex_lock(&t->mu);
    bool full = t->want && t->seen >= t->want;
    if (!full) {
        fwrite(msg->data.ptr, 1, msg->data.len, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        t->seen++;
        pthread_cond_broadcast(&t->cv);
    }
    pthread_mutex_unlock(&t->mu);
    return full ? LOOM_BUS_LATER : LOOM_BUS_ACK;
}

static int do_tail(struct loom_bus *bus, const struct opts *o)
{
    if (o->npos != 2)
        return usage_error("tail needs GROUP");
    uint64_t want = 0, secs = 0;
    if (o->count && (!parse_u64(o->count, &want) || want == 0))
        return usage_error("--count \"%s\" is not a positive count", o->count);
    if (o->timeout && (!parse_u64(o->timeout, &secs) || secs == 0 || secs > 86400 * 365))
        return usage_error("--timeout \"%s\" is not a number of seconds", o->timeout);
    struct tail t = { .want = want };
    pthread_mutex_init(&t.mu, NULL);
    pthread_cond_init(&t.cv, NULL);
    struct loom_bus_sub_options so = {
        .group = o->pos[1],
        .filter = o->filter,
        .start = o->new_only ? LOOM_BUS_START_NEW : LOOM_BUS_START_FIRST,
        .ack_wait = 5 * LOOM_NS_PER_SEC,
        .batch = 1,
        .max_inflight = 1,
        .on_msg = on_tail,
        .arg = &t,
    };
    struct loom_bus_sub *sub = NULL;
    struct loom_error err = { 0 };
    if (loom_bus_subscribe(bus, &so, &sub, &err)) {
        fprintf(stderr, "loom events: tail %s: %s\n", o->pos[1], err.msg);
        return 1;
    }
    signal(SIGINT, on_interrupt);
    signal(SIGTERM, on_interrupt);
    int64_t end = secs ? (int64_t)(loom_now_ns() + secs * LOOM_NS_PER_SEC) : 0;
    pthread_mutex_lock(&t.mu);
    while (!interrupted && !(want && t.seen >= want) && !(end && (int64_t)loom_now_ns() >= end)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000 * 1000; /* a signal does not wake a condition: look often */
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&t.cv, &t.mu, &ts);
    }
    uint64_t seen = t.seen;
    pthread_mutex_unlock(&t.mu);
    loom_bus_sub_stop(sub);
    pthread_cond_destroy(&t.cv);
    pthread_mutex_destroy(&t.mu);
    /* Fewer than --count before the timeout is a failure a script can test. */
    return want && seen < want ? 1 : 0;
}

int cmd_events(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage_main, stdout);
            return 0;
        }
    struct opts o = { 0 };
    int rc = parse(argc, argv, &o);
    if (rc)
        return rc;
    if (o.npos == 0) {
        fputs(usage_main, stderr);
        return 2;
    }
    static const struct {
        const char *name;
        int (*fn)(struct loom_bus *, const struct opts *);
    } cmds[] = { { "publish", do_publish }, { "groups", do_groups }, { "parked", do_parked },
                 { "replay", do_replay },   { "reset", do_reset },   { "tail", do_tail } };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(cmds); i++) {
        if (strcmp(o.pos[0], cmds[i].name) != 0)
            continue;
        struct loom_bus *bus = open_bus(&o);
        if (!bus)
            return 1;
        rc = cmds[i].fn(bus, &o);
        loom_bus_close(bus);
        return rc;
    }
    return usage_error("unknown command \"%s\"", o.pos[0]);
}
