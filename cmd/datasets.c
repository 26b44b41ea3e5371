/* SPDX-License-Identifier: Apache-2.0 */
/*
 * `loom datasets`: the trainer's datasets from the command line, a client of its REST API
 * (docs/trainer.md) over the blocking loom_http_fetch. push uploads a CSV file (mapped, not
 * read into memory: the kernel pages it out to the socket) and prints its digest and
 * description; list and show read. Exit status: 0 done, 1 the trainer refused (its problem
 * detail is printed, with the line and column of a CSV error) or could not be reached, 2 a
 * usage error.
 */
#include "cmd.h"

#include <loom/http_client.h>
#include <loom/json.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_TRAINER "http://127.0.0.1:8083"
#define TIMEOUT_NS      (600 * LOOM_NS_PER_SEC)

int cmd_datasets(int argc, char **argv);

static const char usage_main[] =
    "Usage: loom datasets [--trainer=URL] <command> [arguments]\n"
    "\n"
    "Datasets for training (loom serve trainer): CSV files with a header row, stored by the\n"
    "SHA-256 of their bytes.\n"
    "\n"
    "Commands:\n"
    "  push FILE      Upload a CSV file; prints its digest (sha256:...) and description\n"
    "  list           Datasets, newest first\n"
    "  show DIGEST    One dataset's columns (type, missing values, range)\n"
    "\n"
    "Options:\n"
    "  --trainer=URL  The trainer (default: $LOOM_TRAINER, else " DEFAULT_TRAINER ")\n"
    "\n"
    "Exit status: 0 done, 1 the trainer refused or could not be reached, 2 usage error.\n"
    "Example:\n"
    "  loom demo data fraud --rows 20000 --out fraud.csv && loom datasets push fraud.csv\n";

struct dcli {
    const char *trainer;
    struct loom_arena arena;
};

struct dresp {
    int status;
    bool json;
    struct loom_json_doc doc;
    struct loom_http_fetch_result raw;
};

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("loom datasets: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n\n", stderr);
    va_end(ap);
    fputs(usage_main, stderr);
    return 2;
}

static int call(struct dcli *c, enum loom_http_method method, const char *path,
                struct loom_str body, struct dresp *r)
{
    size_t n = strlen(c->trainer) + strlen(path) + 1;
    char *url = loom_arena_alloc(&c->arena, n);
    snprintf(url, n, "%s%s", c->trainer, path);
    struct loom_http_header h[1] = { { LOOM_STR("Content-Type"), LOOM_STR("text/csv") } };
    struct loom_error err = { 0 };
    memset(r, 0, sizeof(*r));
    if (loom_http_fetch(url, method, h, body.len ? 1 : 0, body, TIMEOUT_NS, 0, &r->raw, &err)) {
        fprintf(stderr,
                "loom datasets: cannot reach the trainer at %s: %s\n"
                "Start it with 'loom serve trainer', or point --trainer (or $LOOM_TRAINER) at "
                "it.\n",
                c->trainer, err.msg);
        return 1;
    }
    r->status = r->raw.status;
    r->json = r->raw.body_len &&
              !loom_json_parse(r->raw.body, r->raw.body_len, NULL, &c->arena, &r->doc, NULL) &&
              loom_json_is_object(&r->doc, 0);
    return 0;
}

static struct loom_str jstr(struct dcli *c, const struct loom_json_doc *doc, int obj,
                            const char *key)
{
    int i = obj >= 0 ? loom_json_obj_get(doc, obj, key) : -1;
    struct loom_str s = LOOM_STR("");
    if (i >= 0 && loom_json_is_string(doc, i))
        loom_json_unescape(doc, i, &c->arena, &s);
    return s;
}

static int64_t jint(const struct loom_json_doc *doc, int obj, const char *key)
{
    int i = obj >= 0 ? loom_json_obj_get(doc, obj, key) : -1;
    int64_t v = 0;
    if (i >= 0)
        loom_json_to_i64(doc, i, &v);
    return v;
}

static int refused(struct dcli *c, struct dresp *r, const char *what)
{
    struct loom_str detail = r->json ? jstr(c, &r->doc, 0, "detail") : LOOM_STR("");
    if (detail.len)
        fprintf(stderr, "loom datasets: %s: %.*s (HTTP %d)\n", what, LOOM_STR_FMT(detail),
                r->status);
    else
        fprintf(stderr, "loom datasets: %s: the trainer answered HTTP %d\n", what, r->status);
    loom_http_fetch_result_release(&r->raw);
    return 1;
}

static void human_size(uint64_t n, char *out, size_t cap)
{
    if (n < 1024)
        snprintf(out, cap, "%llu B", (unsigned long long)n);
    else if (n < (1u << 20))
        snprintf(out, cap, "%.1f KiB", (double)n / 1024);
    else if (n < (1u << 30))
        snprintf(out, cap, "%.1f MiB", (double)n / (1 << 20));
    else
        snprintf(out, cap, "%.2f GiB", (double)n / (1 << 30));
}

/* A dataset's description, as `show` and `push` print it. */
static void print_dataset(struct dcli *c, const struct loom_json_doc *doc, int d)
{
    char size[32];
    human_size((uint64_t)jint(doc, d, "size"), size, sizeof(size));
    printf("digest   %.*s\n", LOOM_STR_FMT(jstr(c, doc, d, "digest")));
    printf("rows     %lld\n", (long long)jint(doc, d, "rows"));
    printf("size     %s\n", size);
    printf("created  %.*s\n", LOOM_STR_FMT(jstr(c, doc, d, "created_at")));
    int cols = loom_json_obj_get(doc, d, "columns");
    if (cols < 0 || !loom_json_is_array(doc, cols))
        return;
    printf("columns  %d\n\n  %-32s %-7s %9s  %s\n", loom_json_size(doc, cols), "NAME", "TYPE",
           "MISSING", "RANGE");
    loom_json_foreach (doc, cols, k) {
        struct loom_str name = jstr(c, doc, k, "name");
        printf("  %-32.*s %-7.*s %9lld  ", LOOM_STR_FMT(name),
               LOOM_STR_FMT(jstr(c, doc, k, "type")), (long long)jint(doc, k, "missing"));
        int lo = loom_json_obj_get(doc, k, "min"), hi = loom_json_obj_get(doc, k, "max");
        if (lo >= 0 && hi >= 0)
            printf("%.*s .. %.*s", LOOM_STR_FMT(loom_json_slice(doc, lo)),
                   LOOM_STR_FMT(loom_json_slice(doc, hi)));
        printf("\n");
    }
}

static int do_push(struct dcli *c, int argc, char **argv)
{
    if (argc != 2)
        return usage_error(argc < 2 ? "push needs a FILE" : "push takes one FILE");
    const char *path = argv[1];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "loom datasets: cannot open %s: %s\n", path, strerror(errno));
        return 1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
        fprintf(stderr, "loom datasets: %s is not a non-empty regular file\n", path);
        close(fd);
        return 1;
    }
    size_t len = (size_t)st.st_size;
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        fprintf(stderr, "loom datasets: cannot map %s: %s\n", path, strerror(errno));
        return 1;
    }
    madvise(map, len, MADV_SEQUENTIAL);
    struct dresp r;
    int rc = call(c, LOOM_HTTP_POST, "/api/v1/datasets", loom_str_make(map, len), &r);
    munmap(map, len);
    if (rc)
        return rc;
    if (r.status != 200 && r.status != 201) {
        char what[512];
        snprintf(what, sizeof(what), "%s was refused", path);
        return refused(c, &r, what);
    }
    if (!r.json)
        return refused(c, &r, "unexpected answer");
    if (r.status == 200)
        fprintf(stderr, "loom datasets: the trainer already had these bytes\n");
    print_dataset(c, &r.doc, 0);
    loom_http_fetch_result_release(&r.raw);
    return 0;
}

static int do_show(struct dcli *c, int argc, char **argv)
{
    if (argc != 2)
        return usage_error("show needs one DIGEST (sha256:...)");
    char path[256];
    snprintf(path, sizeof(path), "/api/v1/datasets/%s", argv[1]);
    struct dresp r;
    if (call(c, LOOM_HTTP_GET, path, LOOM_STR_NULL, &r))
        return 1;
    if (r.status != 200 || !r.json)
        return refused(c, &r, "cannot show the dataset");
    print_dataset(c, &r.doc, 0);
    loom_http_fetch_result_release(&r.raw);
    return 0;
}

static int do_list(struct dcli *c, int argc, char **argv)
{
    if (argc > 1)
        return usage_error("unexpected argument \"%s\"", argv[1]);
    char path[256] = "/api/v1/datasets?limit=500";
    printf("%-71s %10s %7s %10s  %s\n", "DIGEST", "ROWS", "COLUMNS", "SIZE", "CREATED");
    for (;;) {
        struct dresp r;
        if (call(c, LOOM_HTTP_GET, path, LOOM_STR_NULL, &r))
            return 1;
        if (r.status != 200 || !r.json)
            return refused(c, &r, "cannot list datasets");
        int items = loom_json_obj_get(&r.doc, 0, "items");
        if (items >= 0 && loom_json_is_array(&r.doc, items)) {
            loom_json_foreach (&r.doc, items, d) {
                int cols = loom_json_obj_get(&r.doc, d, "columns");
                char size[32];
                human_size((uint64_t)jint(&r.doc, d, "size"), size, sizeof(size));
                printf("%-71.*s %10lld %7d %10s  %.*s\n",
                       LOOM_STR_FMT(jstr(c, &r.doc, d, "digest")),
                       (long long)jint(&r.doc, d, "rows"),
                       cols >= 0 ? loom_json_size(&r.doc, cols) : 0, size,
                       LOOM_STR_FMT(jstr(c, &r.doc, d, "created_at")));
            }
        }
        struct loom_str next = jstr(c, &r.doc, 0, "next_cursor");
        if (next.len && next.len < 200)
            snprintf(path, sizeof(path), "/api/v1/datasets?limit=500&cursor=%.*s",
                     LOOM_STR_FMT(next));
        loom_http_fetch_result_release(&r.raw);
        if (!next.len)
            return 0;
    }
}

int cmd_datasets(int argc, char **argv)
{
    struct dcli c = { .trainer = getenv("LOOM_TRAINER") };
    if (!c.trainer || !c.trainer[0])
        c.trainer = DEFAULT_TRAINER;
    /* Options may come before or after the command. */
    char **args = calloc((size_t)argc + 1, sizeof(char *));
    int n = 0;
    for (int i = 0; i < argc; i++) {
        if (i > 0 && (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)) {
            fputs(usage_main, stdout);
            free(args);
            return 0;
        }
        if (i > 0 && strncmp(argv[i], "--trainer=", 10) == 0) {
            c.trainer = argv[i] + 10;
        } else if (i > 0 && strcmp(argv[i], "--trainer") == 0 && i + 1 < argc) {
            c.trainer = argv[++i];
        } else if (i > 0 && argv[i][0] == '-' && argv[i][1]) {
            free(args);
            return usage_error("unknown option \"%s\"", argv[i]);
        } else {
            args[n++] = argv[i];
        }
    }
    if (strncmp(c.trainer, "http://", 7) != 0) {
        free(args);
        return usage_error("--trainer must be an http:// URL, not \"%s\"", c.trainer);
    }
    char *base = loom_strdup(c.trainer);
    for (size_t len = strlen(base); len > 7 && base[len - 1] == '/'; len--)
        base[len - 1] = '\0';
    c.trainer = base;
    loom_arena_init(&c.arena, 0);
    int rc;
    if (n < 2)
        rc = usage_error("a command is needed");
    else if (strcmp(args[1], "push") == 0)
        rc = do_push(&c, n - 1, args + 1);
    else if (strcmp(args[1], "list") == 0)
        rc = do_list(&c, n - 1, args + 1);
    else if (strcmp(args[1], "show") == 0)
        rc = do_show(&c, n - 1, args + 1);
    else
        rc = usage_error("unknown command \"%s\"", args[1]);
    loom_arena_release(&c.arena);
    free(base);
    free(args);
    return rc;
}
