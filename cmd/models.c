/* SPDX-License-Identifier: Apache-2.0 */
/*
 * `loom models`: the registry's command line, a client of its REST API (docs/registry.md) over
 * the blocking loom_http_fetch. list and show read; push uploads a model file as an artifact,
 * creates the model if it is missing and registers a new version (the signature comes from the
 * file itself, read by the registry); alias set and alias rm move the pointers that inference
 * follows. Every write carries an Idempotency-Key, so a retried push never makes two versions.
 * Exit status: 0 done, 1 the registry said no (its problem detail is printed) or could not be
 * reached, 2 a usage error.
 */
#include "cmd.h"

#include <loom/http_client.h>
#include <loom/id.h>
#include <loom/json.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_REGISTRY "http://127.0.0.1:8082"
#define MAX_FILE         ((size_t)1 << 30)
#define TIMEOUT_NS       (120 * LOOM_NS_PER_SEC)

static const char usage_main[] =
    "Usage: loom models [--registry=URL] <command> [arguments]\n"
    "\n"
    "Manage models in the registry (loom serve registry).\n"
    "\n"
    "Commands:\n"
    "  list                         Models with their latest version and aliases\n"
    "  show NAME                    A model, its aliases and its versions\n"
    "  push FILE --name NAME        Upload a model file and register it as a new version\n"
    "  alias set NAME@ALIAS VERSION Point an alias (production, canary...) at a version\n"
    "  alias rm NAME@ALIAS          Remove an alias\n"
    "\n"
    "Options:\n"
    "  --registry=URL  The registry (default: $LOOM_REGISTRY, else " DEFAULT_REGISTRY ")\n"
    "\n"
    "Exit status: 0 done, 1 the registry refused or could not be reached, 2 usage error.\n"
    "Run 'loom models <command> --help' for a command's options.\n";

static const char usage_list[] = "Usage: loom models list [--registry=URL]\n"
                                 "\n"
                                 "List every model: name, latest version, aliases, "
                                 "description.\n";

static const char usage_show[] = "Usage: loom models show NAME [--registry=URL]\n"
                                 "\n"
                                 "Show a model: description, tags, aliases, and each version "
                                 "with its status,\nbackend, digest and metrics.\n";

static const char usage_push[] =
    "Usage: loom models push FILE --name NAME [--metrics k=v,...] [--description TEXT]\n"
    "                        [--status ready|rejected] [--registry=URL]\n"
    "\n"
    "Upload FILE (an XGBoost JSON model or a loom linear model; pickles are refused),\n"
    "create the model NAME if it does not exist, and register the file as its next\n"
    "version. The signature (features, outputs, objective) is read from the file.\n"
    "\n"
    "  --name NAME          The model ([a-z0-9][a-z0-9._-]*)\n"
    "  --metrics k=v,...    Evaluation metrics to record, e.g. auc=0.97,logloss=0.12\n"
    "  --description TEXT   The version's description\n"
    "  --status STATUS      ready (default) or rejected\n";

static const char usage_alias[] =
    "Usage: loom models alias set NAME@ALIAS VERSION [--registry=URL]\n"
    "       loom models alias rm NAME@ALIAS [--registry=URL]\n"
    "\n"
    "set points ALIAS of model NAME at VERSION (which must be ready), creating or moving it;\n"
    "rm removes it. Inference resolves NAME@ALIAS to the version it points at.\n";

/* ---- plumbing ---- */

struct cli {
    const char *registry; /* base URL without a trailing '/' */
    struct loom_arena arena;
};

struct resp {
    int status;
    struct loom_json_doc doc; /* when the body is JSON */
    bool json;
    struct loom_http_fetch_result raw;
};

static int usage_error(const char *usage, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int usage_error(const char *usage, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("loom models: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n\n", stderr);
    va_end(ap);
    fputs(usage, stderr);
    return 2;
}

static bool is_help(const char *a)
{
    return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0;
}

/* A string member of object `obj` (decoded into the arena), or "" if absent. */
static struct loom_str jstr(struct cli *c, const struct loom_json_doc *doc, int obj,
                            const char *key)
{
    int i = obj >= 0 ? loom_json_obj_get(doc, obj, key) : -1;
    struct loom_str s = LOOM_STR("");
    if (i >= 0 && loom_json_is_string(doc, i))
        loom_json_unescape(doc, i, &c->arena, &s);
    return s;
}

static int64_t jint(const struct loom_json_doc *doc, int obj, const char *key, int64_t def)
{
    int i = obj >= 0 ? loom_json_obj_get(doc, obj, key) : -1;
    int64_t v;
    if (i < 0 || loom_json_to_i64(doc, i, &v))
        return def;
    return v;
}

/*
 * One request. On a transport failure prints why and returns 1; otherwise 0 with *r filled
 * (release r->raw). `key` adds an Idempotency-Key.
 */
static int call(struct cli *c, enum loom_http_method method, const char *path,
                const char *content_type, struct loom_str body, bool key, struct resp *r)
{
    size_t n = strlen(c->registry) + strlen(path) + 1;
    char *url = loom_arena_alloc(&c->arena, n);
    snprintf(url, n, "%s%s", c->registry, path);
    struct loom_http_header h[2];
    size_t nh = 0;
    if (content_type)
        h[nh++] =
            (struct loom_http_header){ LOOM_STR("Content-Type"), loom_str_cstr(content_type) };
    char id[LOOM_UUID_LEN + 1];
    if (key) {
        loom_uuid7(id);
        h[nh++] = (struct loom_http_header){ LOOM_STR("Idempotency-Key"), loom_str_cstr(id) };
    }
    struct loom_error err = { 0 };
    memset(r, 0, sizeof(*r));
    if (loom_http_fetch(url, method, h, nh, body, TIMEOUT_NS, MAX_FILE + 1, &r->raw, &err)) {
        fprintf(stderr,
                "loom models: cannot reach the registry at %s: %s\n"
                "Start it with 'loom serve registry', or point --registry (or $LOOM_REGISTRY) "
                "at it.\n",
                c->registry, err.msg);
        return 1;
    }
    r->status = r->raw.status;
    r->json = r->raw.body_len &&
              !loom_json_parse(r->raw.body, r->raw.body_len, NULL, &c->arena, &r->doc, NULL) &&
              loom_json_is_object(&r->doc, 0);
    return 0;
}

/* Print the registry's refusal (its problem detail) and return 1. */
static int refused(struct cli *c, struct resp *r, const char *what)
{
    struct loom_str detail = r->json ? jstr(c, &r->doc, 0, "detail") : LOOM_STR("");
    if (detail.len)
        fprintf(stderr, "loom models: %s: %.*s (HTTP %d)\n", what, LOOM_STR_FMT(detail), r->status);
    else
        fprintf(stderr, "loom models: %s: the registry answered HTTP %d\n", what, r->status);
    loom_http_fetch_result_release(&r->raw);
    return 1;
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 100 || !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= '0' && s[0] <= '9')))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '.' ||
              s[i] == '_' || s[i] == '-'))
            return false;
    return true;
}

/* ---- list ---- */

static void print_aliases(const struct loom_json_doc *doc, int obj)
{
    int a = loom_json_obj_get(doc, obj, "aliases");
    bool first = true;
    if (a >= 0 && loom_json_is_object(doc, a)) {
        loom_json_foreach (doc, a, k) {
            int64_t v = 0;
            loom_json_to_i64(doc, k + 1, &v);
            printf("%s%.*s=%lld", first ? "" : ",", LOOM_STR_FMT(loom_json_slice(doc, k)),
                   (long long)v);
            first = false;
        }
    }
    if (first)
        printf("-");
}

static int do_list(struct cli *c, int argc, char **argv)
{
    if (argc > 1)
        return usage_error(usage_list, "unexpected argument \"%s\"", argv[1]);
    char path[600] = "/api/v1/models?limit=500";
    bool header = false;
    for (;;) {
        struct resp r;
        if (call(c, LOOM_HTTP_GET, path, NULL, LOOM_STR_NULL, false, &r))
            return 1;
        if (r.status != 200 || !r.json)
            return refused(c, &r, "cannot list models");
        if (!header) {
            printf("%-32s %-7s %-30s %s\n", "NAME", "LATEST", "ALIASES", "DESCRIPTION");
            header = true;
        }
        int items = loom_json_obj_get(&r.doc, 0, "items");
        if (items >= 0 && loom_json_is_array(&r.doc, items)) {
            loom_json_foreach (&r.doc, items, m) {
                struct loom_str name = jstr(c, &r.doc, m, "name");
                int64_t latest = jint(&r.doc, m, "latest_version", 0);
                printf("%-32.*s ", LOOM_STR_FMT(name));
                if (latest)
                    printf("%-7lld ", (long long)latest);
                else
                    printf("%-7s ", "-");
                print_aliases(&r.doc, m);
                printf(" %.*s\n", LOOM_STR_FMT(jstr(c, &r.doc, m, "description")));
            }
        }
        struct loom_str next = jstr(c, &r.doc, 0, "next_cursor");
        if (next.len && next.len < 400)
            snprintf(path, sizeof(path), "/api/v1/models?limit=500&cursor=%.*s",
                     LOOM_STR_FMT(next));
        loom_http_fetch_result_release(&r.raw);
        if (!next.len)
            return 0;
    }
}

/* ---- show ---- */

static void print_metrics(struct cli *c, const struct loom_json_doc *doc, int v)
{
    int meta = loom_json_obj_get(doc, v, "metadata");
    int m = meta >= 0 ? loom_json_obj_get(doc, meta, "metrics") : -1;
    bool first = true;
    if (m >= 0 && loom_json_is_object(doc, m)) {
        loom_json_foreach (doc, m, k) {
            struct loom_str name;
            if (loom_json_unescape(doc, k, &c->arena, &name))
                continue;
            printf("%s%.*s=%.*s", first ? "" : ",", LOOM_STR_FMT(name),
                   LOOM_STR_FMT(loom_json_slice(doc, k + 1)));
            first = false;
        }
    }
    if (first)
        printf("-");
}

static int do_show(struct cli *c, int argc, char **argv)
{
    if (argc < 2)
        return usage_error(usage_show, "show needs a model name");
    if (argc > 2)
        return usage_error(usage_show, "unexpected argument \"%s\"", argv[2]);
    const char *name = argv[1];
    if (!valid_name(name))
        return usage_error(usage_show, "invalid model name \"%s\"", name);
    char path[600];
    snprintf(path, sizeof(path), "/api/v1/models/%s", name);
    struct resp r;
    if (call(c, LOOM_HTTP_GET, path, NULL, LOOM_STR_NULL, false, &r))
        return 1;
    if (r.status != 200 || !r.json)
        return refused(c, &r, "cannot show the model");
    printf("model        %s\n", name);
    printf("description  %.*s\n", LOOM_STR_FMT(jstr(c, &r.doc, 0, "description")));
    int tags = loom_json_obj_get(&r.doc, 0, "tags");
    printf("tags         %.*s\n", LOOM_STR_FMT(loom_json_slice(&r.doc, tags >= 0 ? tags : 0)));
    printf("aliases      ");
    print_aliases(&r.doc, 0);
    printf("\ncreated      %.*s\n\n", LOOM_STR_FMT(jstr(c, &r.doc, 0, "created_at")));
    loom_http_fetch_result_release(&r.raw);
    printf("%-8s %-9s %-8s %-20s %-28s %s\n", "VERSION", "STATUS", "BACKEND", "DIGEST", "CREATED",
           "METRICS");
    snprintf(path, sizeof(path), "/api/v1/models/%s/versions?limit=500", name);
    for (;;) {
        if (call(c, LOOM_HTTP_GET, path, NULL, LOOM_STR_NULL, false, &r))
            return 1;
        if (r.status != 200 || !r.json)
            return refused(c, &r, "cannot list the versions");
        int items = loom_json_obj_get(&r.doc, 0, "items");
        if (items >= 0 && loom_json_is_array(&r.doc, items)) {
            loom_json_foreach (&r.doc, items, v) {
                struct loom_str digest = jstr(c, &r.doc, v, "artifact_digest");
                printf("%-8lld %-9.*s %-8.*s %-20.*s %-28.*s ",
                       (long long)jint(&r.doc, v, "version", 0),
                       LOOM_STR_FMT(jstr(c, &r.doc, v, "status")),
                       LOOM_STR_FMT(jstr(c, &r.doc, v, "backend")),
                       (int)LOOM_MIN(digest.len, (size_t)19), digest.ptr,
                       LOOM_STR_FMT(jstr(c, &r.doc, v, "created_at")));
                print_metrics(c, &r.doc, v);
                printf("\n");
            }
        }
        struct loom_str next = jstr(c, &r.doc, 0, "next_cursor");
        if (next.len && next.len < 400)
            snprintf(path, sizeof(path), "/api/v1/models/%s/versions?limit=500&cursor=%.*s", name,
                     LOOM_STR_FMT(next));
        loom_http_fetch_result_release(&r.raw);
        if (!next.len)
            return 0;
    }
}

/* ---- push ---- */

static char *read_whole(const char *path, size_t *len, char *why, size_t whylen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(why, whylen, "%s", fd < 0 ? strerror(errno) : "not a regular file");
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    if ((size_t)st.st_size > MAX_FILE) {
        snprintf(why, whylen, "larger than 1 GiB");
        close(fd);
        return NULL;
    }
    size_t size = (size_t)st.st_size, got = 0;
    char *data = loom_malloc(size + 1);
    while (got < size) {
        ssize_t n = read(fd, data + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(why, whylen, "%s", n < 0 ? strerror(errno) : "short read");
            free(data);
            close(fd);
            return NULL;
        }
        got += (size_t)n;
    }
    close(fd);
    *len = size;
    return data;
}

/* "auc=0.97,logloss=0.12" as a JSON object into w; false if malformed. */
static bool write_metrics(struct loom_json_writer *w, const char *spec, char *why, size_t whylen)
{
    loom_json_write_object_begin(w);
    struct loom_str rest = loom_str_cstr(spec), item;
    while (rest.len) {
        rest = loom_str_cut(rest, ',', &item);
        item = loom_str_trim(item);
        struct loom_str key;
        struct loom_str val = loom_str_cut(item, '=', &key);
        double d;
        key = loom_str_trim(key);
        if (!val.ptr || !key.len || loom_str_to_double(loom_str_trim(val), &d) || !isfinite(d)) {
            snprintf(why, whylen,
                     "--metrics wants name=number pairs separated by commas, not "
                     "\"%.*s\"",
                     LOOM_STR_FMT(item));
            return false;
        }
        loom_json_write_keyn(w, key);
        loom_json_write_double(w, d);
    }
    loom_json_write_object_end(w);
    return true;
}

static void print_signature(struct cli *c, const struct loom_json_doc *doc, int sig)
{
    int64_t nf = jint(doc, sig, "num_features", 0), no = jint(doc, sig, "num_outputs", 0);
    printf("signature  %lld features -> %lld output%s, %.*s", (long long)nf, (long long)no,
           no == 1 ? "" : "s", LOOM_STR_FMT(jstr(c, doc, sig, "objective")));
    int names = sig >= 0 ? loom_json_obj_get(doc, sig, "feature_names") : -1;
    if (names >= 0 && loom_json_is_array(doc, names)) {
        printf(", features ");
        int shown = 0;
        loom_json_foreach (doc, names, f) {
            struct loom_str s = LOOM_STR("");
            loom_json_unescape(doc, f, &c->arena, &s);
            if (shown < 8)
                printf("%s%.*s", shown ? ", " : "", LOOM_STR_FMT(s));
            shown++;
        }
        if (shown > 8)
            printf(" (+%d more)", shown - 8);
    }
    printf("\n");
}

static int do_push(struct cli *c, int argc, char **argv)
{
    const char *file = NULL, *name = NULL, *metrics = NULL, *description = NULL, *status = NULL;
    for (int i = 1; i < argc; i++) {
        const char **slot = NULL;
        const char *a = argv[i];
        size_t skip = 0;
        if (strncmp(a, "--name", 6) == 0 && (a[6] == '=' || !a[6]))
            slot = &name, skip = 6;
        else if (strncmp(a, "--metrics", 9) == 0 && (a[9] == '=' || !a[9]))
            slot = &metrics, skip = 9;
        else if (strncmp(a, "--description", 13) == 0 && (a[13] == '=' || !a[13]))
            slot = &description, skip = 13;
        else if (strncmp(a, "--status", 8) == 0 && (a[8] == '=' || !a[8]))
            slot = &status, skip = 8;
        if (slot) {
            if (a[skip] == '=') {
                *slot = a + skip + 1;
            } else if (i + 1 < argc) {
                *slot = argv[++i];
            } else {
                return usage_error(usage_push, "%s needs a value", a);
            }
        } else if (a[0] == '-' && a[1]) {
            return usage_error(usage_push, "unknown option \"%s\"", a);
        } else if (!file) {
            file = a;
        } else {
            return usage_error(usage_push, "unexpected argument \"%s\"", a);
        }
    }
    if (!file)
        return usage_error(usage_push, "push needs a model file");
    if (!name)
        return usage_error(usage_push, "push needs --name NAME");
    if (!valid_name(name))
        return usage_error(usage_push,
                           "invalid model name \"%s\": use a-z, 0-9, '.', '_' and '-', starting "
                           "with a letter or a digit",
                           name);
    if (status && strcmp(status, "ready") != 0 && strcmp(status, "rejected") != 0)
        return usage_error(usage_push, "--status is ready or rejected");
    char why[300];
    struct loom_buf body;
    loom_buf_init(&body, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &body);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "artifact_digest");
    size_t digest_at = body.len; /* the digest goes here once known */
    loom_json_write_string(&w, "");
    if (status) {
        loom_json_write_key(&w, "status");
        loom_json_write_string(&w, status);
    }
    loom_json_write_key(&w, "metadata");
    loom_json_write_object_begin(&w);
    if (metrics) {
        loom_json_write_key(&w, "metrics");
        if (!write_metrics(&w, metrics, why, sizeof(why))) {
            loom_buf_release(&body);
            return usage_error(usage_push, "%s", why);
        }
    }
    if (description) {
        loom_json_write_key(&w, "description");
        loom_json_write_string(&w, description);
    }
    loom_json_write_object_end(&w);
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
    size_t len = 0;
    char *data = read_whole(file, &len, why, sizeof(why));
    if (!data) {
        loom_buf_release(&body);
        return usage_error(usage_push, "cannot read %s: %s", file, why);
    }
    int rc = 1;
    char path[300];
    struct resp r;
    /* the model */
    snprintf(path, sizeof(path), "/api/v1/models/%s", name);
    if (call(c, LOOM_HTTP_GET, path, NULL, LOOM_STR_NULL, false, &r))
        goto out;
    bool created = false;
    if (r.status == 404) {
        loom_http_fetch_result_release(&r.raw);
        char create[200];
        snprintf(create, sizeof(create), "{\"name\":\"%s\"}", name);
        if (call(c, LOOM_HTTP_POST, "/api/v1/models", "application/json", loom_str_cstr(create),
                 true, &r))
            goto out;
        if (r.status != 201 && r.status != 409) {
            rc = refused(c, &r, "cannot create the model");
            goto out;
        }
        created = r.status == 201;
    } else if (r.status != 200) {
        rc = refused(c, &r, "cannot look the model up");
        goto out;
    }
    loom_http_fetch_result_release(&r.raw);
    printf("model      %s%s\n", name, created ? " (created)" : "");
    /* the artifact */
    if (call(c, LOOM_HTTP_POST, "/api/v1/artifacts", "application/octet-stream",
             loom_str_make(data, len), true, &r))
        goto out;
    if ((r.status != 200 && r.status != 201) || !r.json) {
        rc = refused(c, &r, "the registry refused the file");
        goto out;
    }
    struct loom_str digest = jstr(c, &r.doc, 0, "digest");
    printf("artifact   %.*s (%zu bytes, %.*s, %s)\n", LOOM_STR_FMT(digest), len,
           LOOM_STR_FMT(jstr(c, &r.doc, 0, "format")),
           r.status == 201 ? "uploaded" : "already stored");
    print_signature(c, &r.doc, loom_json_obj_get(&r.doc, 0, "signature"));
    /* the version */
    struct loom_buf vb;
    loom_buf_init(&vb, 0);
    loom_buf_append(&vb, body.data, digest_at);
    loom_json_escape(&vb, digest.ptr, digest.len);
    loom_buf_append(&vb, body.data + digest_at + 2, body.len - digest_at - 2);
    loom_http_fetch_result_release(&r.raw);
    snprintf(path, sizeof(path), "/api/v1/models/%s/versions", name);
    int e = call(c, LOOM_HTTP_POST, path, "application/json", loom_buf_str(&vb), true, &r);
    loom_buf_release(&vb);
    if (e)
        goto out;
    if (r.status != 201 || !r.json) {
        rc = refused(c, &r, "cannot register the version");
        goto out;
    }
    printf("pushed     %s version %lld (%.*s)\n", name, (long long)jint(&r.doc, 0, "version", 0),
           LOOM_STR_FMT(jstr(c, &r.doc, 0, "status")));
    loom_http_fetch_result_release(&r.raw);
    rc = 0;
out:
    free(data);
    loom_buf_release(&body);
    return rc;
}

/* ---- alias ---- */

static bool split_ref(const char *ref, char *name, size_t nlen, const char **alias)
{
    const char *at = strchr(ref, '@');
    if (!at || at == ref || !at[1] || (size_t)(at - ref) >= nlen)
        return false;
    snprintf(name, nlen, "%.*s", (int)(at - ref), ref);
    *alias = at + 1;
    return valid_name(name);
}

static int do_alias(struct cli *c, int argc, char **argv)
{
    if (argc < 2)
        return usage_error(usage_alias, "alias needs set or rm");
    bool set = strcmp(argv[1], "set") == 0;
    if (!set && strcmp(argv[1], "rm") != 0)
        return usage_error(usage_alias, "unknown alias command \"%s\" (set or rm)", argv[1]);
    if (argc != (set ? 4 : 3))
        return usage_error(usage_alias, set ? "alias set needs NAME@ALIAS and VERSION"
                                            : "alias rm needs NAME@ALIAS");
    char name[128], path[400];
    const char *alias;
    if (!split_ref(argv[2], name, sizeof(name), &alias))
        return usage_error(usage_alias, "\"%s\" is not NAME@ALIAS (e.g. fraud@production)",
                           argv[2]);
    snprintf(path, sizeof(path), "/api/v1/models/%s/aliases/%s", name, alias);
    struct resp r;
    if (!set) {
        if (call(c, LOOM_HTTP_DELETE, path, NULL, LOOM_STR_NULL, false, &r))
            return 1;
        if (r.status != 204)
            return refused(c, &r, "cannot remove the alias");
        printf("removed %s@%s\n", name, alias);
        loom_http_fetch_result_release(&r.raw);
        return 0;
    }
    int64_t version;
    if (loom_str_to_i64(loom_str_cstr(argv[3]), &version) || version < 1)
        return usage_error(usage_alias, "VERSION must be a positive integer, not \"%s\"", argv[3]);
    char body[64];
    snprintf(body, sizeof(body), "{\"version\":%lld}", (long long)version);
    if (call(c, LOOM_HTTP_PUT, path, "application/json", loom_str_cstr(body), false, &r))
        return 1;
    if (r.status != 200 || !r.json)
        return refused(c, &r, "cannot set the alias");
    int64_t prev = jint(&r.doc, 0, "previous_version", 0);
    printf("%s@%s -> version %lld", name, alias, (long long)version);
    if (prev && prev != version)
        printf(" (was %lld)", (long long)prev);
    printf("\n");
    loom_http_fetch_result_release(&r.raw);
    return 0;
}

/* ---- dispatch ---- */

int cmd_models(int argc, char **argv)
{
    struct cli c = { 0 };
    const char *env = getenv("LOOM_REGISTRY");
    c.registry = env && env[0] ? env : DEFAULT_REGISTRY;
    /* --registry may come anywhere; take it out, keep the rest in order */
    char **args = loom_calloc((size_t)argc + 1, sizeof(*args));
    int n = 0;
    bool help = false;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--registry=", 11) == 0) {
            c.registry = argv[i] + 11;
        } else if (strcmp(argv[i], "--registry") == 0 && i + 1 < argc) {
            c.registry = argv[++i];
        } else if (is_help(argv[i])) {
            help = true;
        } else {
            args[n++] = argv[i];
        }
    }
    const char *cmd = n ? args[0] : NULL;
    int rc;
    if (help) {
        const char *u = usage_main;
        if (cmd && strcmp(cmd, "list") == 0)
            u = usage_list;
        else if (cmd && strcmp(cmd, "show") == 0)
            u = usage_show;
        else if (cmd && strcmp(cmd, "push") == 0)
            u = usage_push;
        else if (cmd && strcmp(cmd, "alias") == 0)
            u = usage_alias;
        fputs(u, stdout);
        free(args);
        return 0;
    }
    if (!cmd) {
        free(args);
        return usage_error(usage_main, "a command is needed");
    }
    size_t rl = strlen(c.registry);
    char *base = loom_strdup(c.registry);
    while (rl && base[rl - 1] == '/')
        base[--rl] = '\0';
    c.registry = base;
    loom_arena_init(&c.arena, 0);
    if (strcmp(cmd, "list") == 0)
        rc = do_list(&c, n, args);
    else if (strcmp(cmd, "show") == 0)
        rc = do_show(&c, n, args);
    else if (strcmp(cmd, "push") == 0)
        rc = do_push(&c, n, args);
    else if (strcmp(cmd, "alias") == 0)
        rc = do_alias(&c, n, args);
    else
        rc = usage_error(usage_main, "unknown command \"%s\"", cmd);
    loom_arena_release(&c.arena);
    free(base);
    free(args);
    return rc;
}
