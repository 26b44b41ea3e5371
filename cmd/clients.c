/* SPDX-License-Identifier: Apache-2.0 */
/*
 * `loom clients`: manage the identity service's API clients from the command line (create,
 * list, show, disable, enable, rotate, delete). It is a client like any other: it gets an
 * admin token from POST /oauth/token with its own client credentials (--client-id and
 * --client-secret, or LOOM_CLIENT_ID and LOOM_CLIENT_SECRET, or the bootstrap admin's secret
 * file in the data directory) and calls /api/v1/clients with it. Secrets are printed once, when
 * a client is created or its secret rotated, with a warning that they cannot be shown again.
 */
#include "cmd.h"

#include <loom/http_client.h>
#include <loom/json.h>

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cmd_clients(int argc, char **argv);

#define DEFAULT_IDENTITY "http://127.0.0.1:8087"
#define BOOTSTRAP_FILE   "identity-bootstrap-secret"
#define TIMEOUT_NS       (30 * LOOM_NS_PER_SEC)

struct opts {
    const char *identity;
    const char *client_id;
    const char *client_secret;
    const char *data_dir;
    const char *scopes;
    const char *rps;
    const char *burst;
    bool json;
    const char *args[4];
    int nargs;
    char *file_secret; /* read from the bootstrap file (freed at exit) */
};

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: loom clients <command> [arguments] [options]\n\n"
            "Manage the API clients of the identity service.\n\n"
            "Commands:\n"
            "  create NAME --scopes S1,S2 [--rps N --burst M]\n"
            "                    create a client; prints its secret once. Without --rps and\n"
            "                    --burst it has no quota: the gateway's default limit applies\n"
            "  list              list the clients\n"
            "  show ID           show one client\n"
            "  disable ID        refuse tokens to a client (tokens issued stay valid until they "
            "expire)\n"
            "  enable ID         issue tokens to a disabled client again\n"
            "  rotate ID         give a client a new secret (printed once; the old one stops "
            "working)\n"
            "  delete ID         delete a client\n\n"
            "Scopes: models:read models:write infer train ingest admin\n\n"
            "Options:\n"
            "  --identity=URL          the identity service (default $LOOM_IDENTITY "
            "or " DEFAULT_IDENTITY ")\n"
            "  --client-id=ID          who you are (default $LOOM_CLIENT_ID, else admin when the\n"
            "                          bootstrap secret file exists)\n"
            "  --client-secret=SECRET  your secret (default $LOOM_CLIENT_SECRET, else the file\n"
            "                          <data-dir>/" BOOTSTRAP_FILE "); prefer the environment:\n"
            "                          arguments are visible to other users in ps\n"
            "  --data-dir=DIR          where to look for the bootstrap secret (default "
            "$LOOM_DATA_DIR or ./loom-data)\n"
            "  --json                  print the API's JSON instead of text\n");
}

static const char *env_or(const char *name, const char *def)
{
    const char *v = getenv(name);
    return v && *v ? v : def;
}

/* Parse argv into o; returns 0, or 2 after printing a usage error, or -1 for --help. */
static int parse(int argc, char **argv, struct opts *o)
{
    static const struct {
        const char *name;
        size_t offset;
    } flags[] = {
        { "identity", offsetof(struct opts, identity) },
        { "client-id", offsetof(struct opts, client_id) },
        { "client-secret", offsetof(struct opts, client_secret) },
        { "data-dir", offsetof(struct opts, data_dir) },
        { "scopes", offsetof(struct opts, scopes) },
        { "rps", offsetof(struct opts, rps) },
        { "burst", offsetof(struct opts, burst) },
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            return -1;
        if (strcmp(a, "--json") == 0) {
            o->json = true;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) {
            if (o->nargs == (int)LOOM_ARRAY_SIZE(o->args)) {
                fprintf(stderr, "loom clients: unexpected argument \"%s\"\n", a);
                return 2;
            }
            o->args[o->nargs++] = a;
            continue;
        }
        const char *eq = strchr(a, '=');
        size_t n = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        bool found = false;
        for (size_t f = 0; f < LOOM_ARRAY_SIZE(flags); f++) {
            if (strlen(flags[f].name) != n || strncmp(a + 2, flags[f].name, n) != 0)
                continue;
            const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
            if (!v) {
                fprintf(stderr, "loom clients: --%s needs a value\n", flags[f].name);
                return 2;
            }
            *(const char **)((char *)o + flags[f].offset) = v;
            found = true;
        }
        if (!found) {
            fprintf(stderr, "loom clients: unknown option \"%s\"; see 'loom clients --help'\n", a);
            return 2;
        }
    }
    return 0;
}

/* ---- HTTP ---- */

static void base64(struct loom_buf *out, const uint8_t *p, size_t n)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        loom_buf_putc(out, t[v >> 18]);
        loom_buf_putc(out, t[(v >> 12) & 63]);
        loom_buf_putc(out, i + 1 < n ? t[(v >> 6) & 63] : '=');
        loom_buf_putc(out, i + 2 < n ? t[v & 63] : '=');
    }
}

/* application/x-www-form-urlencoded, as RFC 6749 section 2.3.1 asks for Basic credentials. */
static void form_encode(struct loom_buf *out, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_' || c == '.' || c == '~')
            loom_buf_putc(out, (char)c);
        else
            loom_buf_printf(out, "%%%02X", c);
    }
}

/* The text of string member `key` of the document's top object, or "" (arena-owned). */
static struct loom_str member(const struct loom_json_doc *d, const char *key, struct loom_arena *a)
{
    int i = d->ntoks && loom_json_is_object(d, 0) ? loom_json_obj_get(d, 0, key) : -1;
    struct loom_str s = LOOM_STR("");
    if (i >= 0 && loom_json_is_string(d, i))
        loom_json_unescape(d, i, a, &s);
    return s;
}

/* Print why a response is an error: a problem's detail or an OAuth error's description. */
static void print_error(const char *what, const struct loom_http_fetch_result *r)
{
    struct loom_arena a;
    loom_arena_init(&a, 0);
    struct loom_json_doc d;
    struct loom_str detail = LOOM_STR("");
    if (loom_json_parse(r->body, r->body_len, NULL, &a, &d, NULL) == LOOM_OK) {
        detail = member(&d, "detail", &a);
        if (!detail.len)
            detail = member(&d, "error_description", &a);
    }
    fprintf(stderr, "loom clients: %s: %d %s%s%.*s\n", what, r->status,
            loom_http_status_reason(r->status), detail.len ? ": " : "", LOOM_STR_FMT(detail));
    loom_arena_release(&a);
}

static int fetch(const struct opts *o, enum loom_http_method m, const char *path,
                 const struct loom_http_header *h, size_t nh, struct loom_str body,
                 struct loom_http_fetch_result *r)
{
    char url[1024];
    snprintf(url, sizeof(url), "%s%s", o->identity, path);
    struct loom_error err = { 0 };
    if (loom_http_fetch(url, m, h, nh, body, TIMEOUT_NS, 0, r, &err)) {
        fprintf(stderr,
                "loom clients: cannot reach the identity service at %s: %s\n"
                "Is 'loom serve identity' running? Point at it with --identity=URL or "
                "LOOM_IDENTITY.\n",
                o->identity, err.msg);
        return 1;
    }
    return 0;
}

/* An admin token into *token (caller frees); returns an exit status. */
static int get_token(struct opts *o, char **token)
{
    if (!o->client_id || !o->client_secret) {
        fprintf(stderr,
                "loom clients: no credentials: give --client-id and --client-secret (or "
                "LOOM_CLIENT_ID and LOOM_CLIENT_SECRET), or run where %s/" BOOTSTRAP_FILE
                " is readable (--data-dir)\n",
                o->data_dir);
        return 2;
    }
    struct loom_buf cred, basic;
    loom_buf_init(&cred, 0);
    loom_buf_init(&basic, 0);
    form_encode(&cred, o->client_id);
    loom_buf_putc(&cred, ':');
    form_encode(&cred, o->client_secret);
    loom_buf_append_cstr(&basic, "Basic ");
    base64(&basic, (const uint8_t *)cred.data, cred.len);
    struct loom_http_header h[] = {
        { LOOM_STR("Authorization"), loom_buf_str(&basic) },
        { LOOM_STR("Content-Type"), LOOM_STR("application/x-www-form-urlencoded") },
        { LOOM_STR("Accept"), LOOM_STR("application/json") },
    };
    struct loom_http_fetch_result r = { 0 };
    int rc = fetch(o, LOOM_HTTP_POST, "/oauth/token", h, LOOM_ARRAY_SIZE(h),
                   LOOM_STR("grant_type=client_credentials&scope=admin"), &r);
    loom_buf_release(&cred);
    loom_buf_release(&basic);
    if (rc)
        return rc;
    if (r.status != 200) {
        print_error("getting an admin token", &r);
        loom_http_fetch_result_release(&r);
        return 1;
    }
    struct loom_arena a;
    loom_arena_init(&a, 0);
    struct loom_json_doc d;
    struct loom_str t = LOOM_STR("");
    if (loom_json_parse(r.body, r.body_len, NULL, &a, &d, NULL) == LOOM_OK)
        t = member(&d, "access_token", &a);
    if (t.len)
        *token = loom_str_dup(t);
    else
        fprintf(stderr, "loom clients: the token endpoint answered without an access_token\n");
    loom_arena_release(&a);
    loom_http_fetch_result_release(&r);
    return t.len ? 0 : 1;
}

/* Call the clients API; on 2xx *r holds the answer. Returns an exit status. */
static int api(struct opts *o, enum loom_http_method m, const char *path, struct loom_str body,
               const char *what, struct loom_http_fetch_result *r)
{
    char *token = NULL;
    int rc = get_token(o, &token);
    if (rc)
        return rc;
    struct loom_buf auth;
    loom_buf_init(&auth, 0);
    loom_buf_printf(&auth, "Bearer %s", token);
    struct loom_http_header h[] = {
        { LOOM_STR("Authorization"), loom_buf_str(&auth) },
        { LOOM_STR("Content-Type"), LOOM_STR("application/json") },
        { LOOM_STR("Accept"), LOOM_STR("application/json") },
    };
    rc = fetch(o, m, path, h, body.len ? 3 : 2, body, r);
    loom_buf_release(&auth);
    free(token);
    if (rc)
        return rc;
    if (r->status / 100 != 2) {
        print_error(what, r);
        loom_http_fetch_result_release(r);
        return 1;
    }
    return 0;
}

/* ---- output ---- */

static void print_scopes(const struct loom_json_doc *d, int arr, struct loom_arena *a,
                         const char *sep)
{
    bool first = true;
    if (arr < 0 || !loom_json_is_array(d, arr))
        return;
    loom_json_foreach (d, arr, i) {
        struct loom_str s;
        if (loom_json_is_string(d, i) && !loom_json_unescape(d, i, a, &s)) {
            printf("%s%.*s", first ? "" : sep, LOOM_STR_FMT(s));
            first = false;
        }
    }
}

static void print_number(const struct loom_json_doc *d, int obj, const char *key)
{
    int q = loom_json_obj_get(d, obj, "quota");
    int i = q >= 0 ? loom_json_obj_get(d, q, key) : -1;
    struct loom_str s = i >= 0 ? loom_json_slice(d, i) : LOOM_STR("-");
    printf("%.*s", LOOM_STR_FMT(s));
}

/* One client, as "key: value" lines. */
static void print_client(const struct loom_json_doc *d, int obj, struct loom_arena *a)
{
    static const char *const keys[] = { "id", "name" };
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(keys); k++) {
        int i = loom_json_obj_get(d, obj, keys[k]);
        struct loom_str s = LOOM_STR("");
        if (i >= 0)
            loom_json_unescape(d, i, a, &s);
        printf("%-18s %.*s\n", keys[k], LOOM_STR_FMT(s));
    }
    printf("%-18s ", "scopes");
    print_scopes(d, loom_json_obj_get(d, obj, "scopes"), a, " ");
    int q = loom_json_obj_get(d, obj, "quota");
    if (q < 0 || !loom_json_is_object(d, q)) {
        printf("\n%-18s none (the gateway's --gateway.rate-limit applies)", "quota");
    } else {
        printf("\n%-18s ", "requests/second");
        print_number(d, obj, "requests_per_second");
        printf("\n%-18s ", "burst");
        print_number(d, obj, "burst");
    }
    int dis = loom_json_obj_get(d, obj, "disabled");
    printf("\n%-18s %s\n", "disabled", dis >= 0 && loom_json_is_true(d, dis) ? "yes" : "no");
    static const char *const times[] = { "created_at", "updated_at", "secret_rotated_at" };
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(times); k++) {
        int i = loom_json_obj_get(d, obj, times[k]);
        struct loom_str s = LOOM_STR("");
        if (i >= 0)
            loom_json_unescape(d, i, a, &s);
        printf("%-18s %.*s\n", times[k], LOOM_STR_FMT(s));
    }
}

/* Print a client answer (with its secret, if any). */
static int show_answer(const struct opts *o, struct loom_http_fetch_result *r)
{
    if (o->json) {
        printf("%.*s\n", (int)r->body_len, r->body);
        return 0;
    }
    struct loom_arena a;
    loom_arena_init(&a, 0);
    struct loom_json_doc d;
    if (loom_json_parse(r->body, r->body_len, NULL, &a, &d, NULL) || !loom_json_is_object(&d, 0)) {
        fprintf(stderr, "loom clients: the identity service answered something that is not a "
                        "client\n");
        loom_arena_release(&a);
        return 1;
    }
    print_client(&d, 0, &a);
    struct loom_str secret = member(&d, "secret", &a);
    if (secret.len) {
        printf("%-18s %.*s\n", "secret", LOOM_STR_FMT(secret));
        fprintf(stderr, "\nStore this secret now: it is not stored anywhere and cannot be shown "
                        "again (rotate it to get a new one).\n");
    }
    loom_arena_release(&a);
    return 0;
}

/* ---- commands ---- */

static int c_create(struct opts *o)
{
    if (o->nargs != 2 || !o->scopes) {
        fprintf(stderr, "usage: loom clients create NAME --scopes S1,S2 [--rps N --burst M]\n");
        return 2;
    }
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "name");
    loom_json_write_string(&w, o->args[1]);
    loom_json_write_key(&w, "scopes");
    loom_json_write_array_begin(&w);
    struct loom_str rest = loom_str_cstr(o->scopes);
    while (rest.len) {
        struct loom_str one;
        rest = loom_str_cut(rest, ',', &one);
        one = loom_str_trim(one);
        if (one.len)
            loom_json_write_str(&w, one);
    }
    loom_json_write_array_end(&w);
    if (!o->rps != !o->burst) {
        fprintf(stderr, "loom clients: --rps and --burst go together (neither: the gateway's "
                        "default limit applies)\n");
        loom_buf_release(&b);
        return 2;
    }
    if (o->rps) {
        loom_json_write_key(&w, "quota");
        loom_json_write_object_begin(&w);
        double rps;
        int64_t burst;
        if (o->rps) {
            if (loom_str_to_double(loom_str_cstr(o->rps), &rps)) {
                fprintf(stderr, "loom clients: --rps is a number of requests per second\n");
                loom_buf_release(&b);
                return 2;
            }
            loom_json_write_key(&w, "requests_per_second");
            loom_json_write_double(&w, rps);
        }
        if (o->burst) {
            if (loom_str_to_i64(loom_str_cstr(o->burst), &burst)) {
                fprintf(stderr, "loom clients: --burst is a whole number of requests\n");
                loom_buf_release(&b);
                return 2;
            }
            loom_json_write_key(&w, "burst");
            loom_json_write_i64(&w, burst);
        }
        loom_json_write_object_end(&w);
    }
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
    struct loom_http_fetch_result r = { 0 };
    int rc = api(o, LOOM_HTTP_POST, "/api/v1/clients", loom_buf_str(&b), "creating the client", &r);
    loom_buf_release(&b);
    if (rc)
        return rc;
    rc = show_answer(o, &r);
    loom_http_fetch_result_release(&r);
    return rc;
}

static int c_list(struct opts *o)
{
    if (o->nargs != 1) {
        fprintf(stderr, "usage: loom clients list\n");
        return 2;
    }
    char path[256] = "/api/v1/clients?limit=500";
    char cursor[128] = "";
    bool header = false;
    for (;;) {
        if (cursor[0])
            snprintf(path, sizeof(path), "/api/v1/clients?limit=500&cursor=%s", cursor);
        struct loom_http_fetch_result r = { 0 };
        int rc = api(o, LOOM_HTTP_GET, path, LOOM_STR_NULL, "listing clients", &r);
        if (rc)
            return rc;
        if (o->json) {
            printf("%.*s\n", (int)r.body_len, r.body);
            loom_http_fetch_result_release(&r);
            return 0;
        }
        struct loom_arena a;
        loom_arena_init(&a, 0);
        struct loom_json_doc d;
        int items = -1;
        if (loom_json_parse(r.body, r.body_len, NULL, &a, &d, NULL) == LOOM_OK &&
            loom_json_is_object(&d, 0))
            items = loom_json_obj_get(&d, 0, "items");
        if (items < 0 || !loom_json_is_array(&d, items)) {
            fprintf(stderr, "loom clients: the identity service answered something that is not "
                            "a list\n");
            loom_arena_release(&a);
            loom_http_fetch_result_release(&r);
            return 1;
        }
        if (!header) {
            printf("%-32s %-24s %-8s %-8s %-8s %s\n", "ID", "NAME", "RPS", "BURST", "DISABLED",
                   "SCOPES");
            header = true;
        }
        loom_json_foreach (&d, items, c) {
            struct loom_str id = LOOM_STR(""), name = LOOM_STR("");
            int i = loom_json_obj_get(&d, c, "id"), n = loom_json_obj_get(&d, c, "name");
            if (i >= 0)
                loom_json_unescape(&d, i, &a, &id);
            if (n >= 0)
                loom_json_unescape(&d, n, &a, &name);
            int dis = loom_json_obj_get(&d, c, "disabled");
            printf("%-32.*s %-24.*s ", LOOM_STR_FMT(id), LOOM_STR_FMT(name));
            int q = loom_json_obj_get(&d, c, "quota");
            int rps = q >= 0 ? loom_json_obj_get(&d, q, "requests_per_second") : -1;
            int burst = q >= 0 ? loom_json_obj_get(&d, q, "burst") : -1;
            struct loom_str rs = rps >= 0 ? loom_json_slice(&d, rps) : LOOM_STR("-");
            struct loom_str bs = burst >= 0 ? loom_json_slice(&d, burst) : LOOM_STR("-");
            printf("%-8.*s %-8.*s %-8s ", LOOM_STR_FMT(rs), LOOM_STR_FMT(bs),
                   dis >= 0 && loom_json_is_true(&d, dis) ? "yes" : "no");
            print_scopes(&d, loom_json_obj_get(&d, c, "scopes"), &a, ",");
            printf("\n");
        }
        struct loom_str next = member(&d, "next_cursor", &a);
        snprintf(cursor, sizeof(cursor), "%.*s", LOOM_STR_FMT(next));
        loom_arena_release(&a);
        loom_http_fetch_result_release(&r);
        if (!cursor[0])
            return 0;
    }
}

/* The path of client `id`, with `suffix`; false (usage printed) for an id that cannot be. */
static bool client_path(const char *cmd, const struct opts *o, const char *suffix, char *out,
                        size_t cap)
{
    if (o->nargs != 2) {
        fprintf(stderr, "usage: loom clients %s ID\n", cmd);
        return false;
    }
    for (const char *p = o->args[1]; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')) {
            fprintf(stderr, "loom clients: \"%s\" is not a client id (see 'loom clients list')\n",
                    o->args[1]);
            return false;
        }
    }
    snprintf(out, cap, "/api/v1/clients/%s%s", o->args[1], suffix);
    return true;
}

static int c_show(struct opts *o)
{
    char path[256];
    if (!client_path("show", o, "", path, sizeof(path)))
        return 2;
    struct loom_http_fetch_result r = { 0 };
    int rc = api(o, LOOM_HTTP_GET, path, LOOM_STR_NULL, "showing the client", &r);
    if (rc)
        return rc;
    rc = show_answer(o, &r);
    loom_http_fetch_result_release(&r);
    return rc;
}

static int c_set_disabled(struct opts *o, bool disabled)
{
    char path[256];
    if (!client_path(disabled ? "disable" : "enable", o, "", path, sizeof(path)))
        return 2;
    struct loom_http_fetch_result r = { 0 };
    int rc = api(o, LOOM_HTTP_PATCH, path,
                 disabled ? LOOM_STR("{\"disabled\":true}") : LOOM_STR("{\"disabled\":false}"),
                 disabled ? "disabling the client" : "enabling the client", &r);
    if (rc)
        return rc;
    if (o->json)
        printf("%.*s\n", (int)r.body_len, r.body);
    else
        printf("client %s %s\n", o->args[1], disabled ? "disabled" : "enabled");
    loom_http_fetch_result_release(&r);
    return 0;
}

static int c_rotate(struct opts *o)
{
    char path[256];
    if (!client_path("rotate", o, "/rotate-secret", path, sizeof(path)))
        return 2;
    struct loom_http_fetch_result r = { 0 };
    int rc = api(o, LOOM_HTTP_POST, path, LOOM_STR_NULL, "rotating the secret", &r);
    if (rc)
        return rc;
    rc = show_answer(o, &r);
    loom_http_fetch_result_release(&r);
    return rc;
}

static int c_delete(struct opts *o)
{
    char path[256];
    if (!client_path("delete", o, "", path, sizeof(path)))
        return 2;
    struct loom_http_fetch_result r = { 0 };
    int rc = api(o, LOOM_HTTP_DELETE, path, LOOM_STR_NULL, "deleting the client", &r);
    if (rc)
        return rc;
    if (!o->json)
        printf("client %s deleted\n", o->args[1]);
    loom_http_fetch_result_release(&r);
    return 0;
}

/* The bootstrap admin's secret from <data-dir>, if the file is there (caller frees). */
static char *read_bootstrap(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/" BOOTSTRAP_FILE, dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char buf[512];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    buf[n] = '\0';
    return n ? loom_strndup(buf, n) : NULL;
}

int cmd_clients(int argc, char **argv)
{
    struct opts o = { 0 };
    int rc = parse(argc, argv, &o);
    if (rc < 0) {
        usage(stdout);
        return 0;
    }
    if (rc)
        return rc;
    if (o.nargs == 0) {
        usage(stderr);
        return 2;
    }
    if (!o.identity)
        o.identity = env_or("LOOM_IDENTITY", DEFAULT_IDENTITY);
    if (!o.data_dir)
        o.data_dir = env_or("LOOM_DATA_DIR", "./loom-data");
    if (!o.client_id)
        o.client_id = env_or("LOOM_CLIENT_ID", NULL);
    if (!o.client_secret)
        o.client_secret = env_or("LOOM_CLIENT_SECRET", NULL);
    if (!o.client_secret && (!o.client_id || strcmp(o.client_id, "admin") == 0)) {
        o.file_secret = read_bootstrap(o.data_dir);
        if (o.file_secret) {
            o.client_secret = o.file_secret;
            o.client_id = "admin";
        }
    }
    const char *cmd = o.args[0];
    if (strcmp(cmd, "create") == 0)
        rc = c_create(&o);
    else if (strcmp(cmd, "list") == 0)
        rc = c_list(&o);
    else if (strcmp(cmd, "show") == 0)
        rc = c_show(&o);
    else if (strcmp(cmd, "disable") == 0)
        rc = c_set_disabled(&o, true);
    else if (strcmp(cmd, "enable") == 0)
        rc = c_set_disabled(&o, false);
    else if (strcmp(cmd, "rotate") == 0)
        rc = c_rotate(&o);
    else if (strcmp(cmd, "delete") == 0)
        rc = c_delete(&o);
    else {
        fprintf(stderr, "loom clients: unknown command \"%s\"; see 'loom clients --help'\n", cmd);
        rc = 2;
    }
    free(o.file_secret);
    return rc;
}
