/* SPDX-License-Identifier: Apache-2.0 */
/*
 * `loom predict MODEL --input ROWS`: a KServe v2 client for one-off predictions. It reads the
 * model's metadata (input name, datatype, features per row), sends the rows as one batch and
 * prints one line per row with the model's outputs. ROWS is a JSON row ([1.5, 2, ...]) or a
 * list of rows, or @FILE: a .json file of the same, or a .csv file with a header (an empty field
 * is a missing value, NaN; when the model names its features and the header has them all,
 * columns are picked by name, so extra columns such as a label are ignored; otherwise the first
 * columns are taken in order). Talks to inference directly or through the gateway (--token or
 * LOOM_TOKEN).
 */
#include "cmd.h"

#include <loom/csv.h>
#include <loom/http_client.h>
#include <loom/json.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct predict {
    const char *url;
    const char *model;
    const char *version;
    const char *input;
    const char *token;
    bool raw;
    /* from the metadata */
    char input_name[128];
    char datatype[16];
    int64_t features;
    char **feature_names;
    size_t nfeature_names;
    /* the rows */
    struct loom_buf data; /* JSON numbers, comma-separated */
    size_t rows;
    struct loom_arena arena;
};

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: loom predict MODEL --input ROWS [--version V] [--inference=URL] [--token T] "
            "[--raw]\n\n"
            "Send rows to a model (KServe v2 infer) and print one line of outputs per row.\n\n"
            "  --input ROWS      a JSON row [1.5, 2, ...] or rows [[...], [...]], or @FILE: a "
            ".json\n"
            "                    file of the same or a .csv file with a header (empty field: "
            "missing)\n"
            "  --version V       a model version (default: the latest ready one)\n"
            "  --inference=URL   inference or gateway base URL (default $LOOM_INFERENCE or\n"
            "                    http://127.0.0.1:8081)\n"
            "  --token T         a bearer token, for the gateway (default $LOOM_TOKEN)\n"
            "  --raw             print the server's JSON answer as is\n");
}

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("loom predict: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

/* The "error" (KServe) or "detail" (problem+json) of an answer, for messages. */
static void answer_error(const struct loom_http_fetch_result *r, char *out, size_t cap)
{
    struct loom_arena a;
    loom_arena_init(&a, 0);
    struct loom_json_doc doc;
    snprintf(out, cap, "HTTP %d", r->status);
    if (loom_json_parse(r->body, r->body_len, NULL, &a, &doc, NULL) == LOOM_OK &&
        loom_json_is_object(&doc, 0)) {
        int e = loom_json_obj_get(&doc, 0, "error");
        if (e < 0)
            e = loom_json_obj_get(&doc, 0, "detail");
        struct loom_str s;
        if (e >= 0 && loom_json_unescape(&doc, e, &a, &s) == LOOM_OK)
            snprintf(out, cap, "HTTP %d: %.*s", r->status, LOOM_STR_FMT(s));
    }
    loom_arena_release(&a);
}

static loom_err fetch(struct predict *p, const char *path, enum loom_http_method m,
                      struct loom_str body, struct loom_http_fetch_result *res,
                      struct loom_error *err)
{
    char url[1024], auth[4096 + 16];
    snprintf(url, sizeof(url), "%s%s", p->url, path);
    struct loom_http_header h[2];
    size_t nh = 0;
    h[nh++] = (struct loom_http_header){ LOOM_STR("Content-Type"), LOOM_STR("application/json") };
    if (p->token && p->token[0]) {
        int n = snprintf(auth, sizeof(auth), "Bearer %s", p->token);
        h[nh++] =
            (struct loom_http_header){ LOOM_STR("Authorization"), loom_str_make(auth, (size_t)n) };
    }
    return loom_http_fetch(url, m, h, nh, body, 30 * LOOM_NS_PER_SEC, 256 << 20, res, err);
}

static int read_metadata(struct predict *p)
{
    char path[512];
    if (p->version)
        snprintf(path, sizeof(path), "/v2/models/%s/versions/%s", p->model, p->version);
    else
        snprintf(path, sizeof(path), "/v2/models/%s", p->model);
    struct loom_http_fetch_result r = { 0 };
    struct loom_error err = { 0 };
    if (fetch(p, path, LOOM_HTTP_GET, LOOM_STR_NULL, &r, &err))
        return fail("%s%s: %s", p->url, path, err.msg);
    int rc = 0;
    char msg[512];
    if (r.status != 200) {
        answer_error(&r, msg, sizeof(msg));
        rc = fail("model %s: %s", p->model, msg);
        goto out;
    }
    struct loom_json_doc doc;
    if (loom_json_parse(r.body, r.body_len, NULL, &p->arena, &doc, NULL) ||
        !loom_json_is_object(&doc, 0)) {
        rc = fail("model %s: the metadata is not JSON", p->model);
        goto out;
    }
    int inputs = loom_json_obj_get(&doc, 0, "inputs");
    int in = inputs >= 0 ? loom_json_arr_at(&doc, inputs, 0) : -1;
    int name = in >= 0 ? loom_json_obj_get(&doc, in, "name") : -1;
    int dt = in >= 0 ? loom_json_obj_get(&doc, in, "datatype") : -1;
    int shape = in >= 0 ? loom_json_obj_get(&doc, in, "shape") : -1;
    struct loom_str s;
    if (name < 0 || dt < 0 || shape < 0 || loom_json_size(&doc, shape) < 1 ||
        loom_json_unescape(&doc, name, &p->arena, &s) || s.len >= sizeof(p->input_name)) {
        rc = fail("model %s: the metadata has no usable input", p->model);
        goto out;
    }
    memcpy(p->input_name, s.ptr, s.len);
    p->input_name[s.len] = '\0';
    s = loom_json_slice(&doc, dt);
    snprintf(p->datatype, sizeof(p->datatype), "%.*s", LOOM_STR_FMT(s));
    int last = loom_json_arr_at(&doc, shape, loom_json_size(&doc, shape) - 1);
    if (loom_json_to_i64(&doc, last, &p->features) || p->features < 1) {
        rc = fail("model %s: the input's last dimension is not a feature count", p->model);
        goto out;
    }
    int params = loom_json_obj_get(&doc, 0, "parameters");
    int names = params >= 0 ? loom_json_obj_get(&doc, params, "feature_names") : -1;
    if (names >= 0 && loom_json_is_array(&doc, names) &&
        loom_json_size(&doc, names) == p->features) {
        p->feature_names = loom_arena_alloc(&p->arena, (size_t)p->features * sizeof(char *));
        loom_json_foreach (&doc, names, i) {
            struct loom_str n;
            if (loom_json_unescape(&doc, i, &p->arena, &n))
                break;
            p->feature_names[p->nfeature_names++] = loom_arena_strndup(&p->arena, n.ptr, n.len);
        }
    }
out:
    loom_http_fetch_result_release(&r);
    return rc;
}

static void put_value(struct predict *p, double v)
{
    if (p->data.len)
        loom_buf_putc(&p->data, ',');
    if (isnan(v)) {
        loom_buf_append_cstr(&p->data, "NaN");
        return;
    }
    char tmp[LOOM_FMT_DOUBLE_MAX];
    loom_buf_append(&p->data, tmp, loom_fmt_double(v, tmp));
}

/* Rows from JSON: one row of numbers, or an array of such rows. */
static int rows_from_json(struct predict *p, const char *text, size_t len)
{
    struct loom_json_limits lim = { .allow_nonfinite = true, .max_depth = 8 };
    struct loom_json_doc doc;
    struct loom_error err = { 0 };
    if (loom_json_parse(text, len, &lim, &p->arena, &doc, &err))
        return fail("--input: %s", err.msg);
    if (!loom_json_is_array(&doc, 0))
        return fail("--input: a row [..] or a list of rows [[..], ..] is expected");
    bool nested = loom_json_size(&doc, 0) > 0 && loom_json_is_array(&doc, 1);
    loom_json_foreach (&doc, 0, i) {
        int row = nested ? i : 0;
        if (!loom_json_is_array(&doc, row))
            return fail("--input: row %zu is not an array", p->rows);
        if (loom_json_size(&doc, row) != p->features)
            return fail("--input: row %zu has %d values; model %s takes %lld", p->rows,
                        loom_json_size(&doc, row), p->model, (long long)p->features);
        loom_json_foreach (&doc, row, k) {
            double v;
            if (loom_json_to_double(&doc, k, &v))
                return fail("--input: row %zu holds something that is not a number", p->rows);
            put_value(p, v);
        }
        p->rows++;
        if (!nested)
            break;
    }
    return 0;
}

struct csv_ctx {
    struct predict *p;
    size_t *pick; /* model feature i comes from CSV column pick[i] */
    size_t ncols;
};

static loom_err csv_record(struct loom_csv_reader *r, const struct loom_csv_record *rec, void *arg,
                           struct loom_error *err)
{
    struct csv_ctx *c = arg;
    struct predict *p = c->p;
    if (rec->index == 0) {
        /* The header: columns by name when it names the model's features, else in order. */
        c->ncols = rec->nfields;
        c->pick = loom_arena_alloc(&p->arena, (size_t)p->features * sizeof(size_t));
        if (rec->nfields < (size_t)p->features)
            return loom_csv_fail(r, err, LOOM_EINVAL, rec->line, 1,
                                 "%zu columns; model %s takes %lld features", rec->nfields,
                                 p->model, (long long)p->features);
        size_t found = 0;
        for (size_t i = 0; i < p->nfeature_names; i++) {
            for (size_t k = 0; k < rec->nfields; k++) {
                if (loom_str_eq_cstr(loom_str_trim(rec->fields[k]), p->feature_names[i])) {
                    c->pick[i] = k;
                    found++;
                    break;
                }
            }
        }
        if (found != (size_t)p->features || found != p->nfeature_names)
            for (size_t i = 0; i < (size_t)p->features; i++)
                c->pick[i] = i;
        return LOOM_OK;
    }
    if (rec->nfields != c->ncols)
        return loom_csv_fail(r, err, LOOM_EINVAL, rec->line, 1, "%zu fields; the header has %zu",
                             rec->nfields, c->ncols);
    for (size_t i = 0; i < (size_t)p->features; i++) {
        struct loom_str f = loom_str_trim(rec->fields[c->pick[i]]);
        double v = NAN;
        if (f.len && loom_str_to_double(f, &v))
            return loom_csv_fail(r, err, LOOM_EINVAL, rec->line, rec->columns[c->pick[i]],
                                 "\"%.*s\" is not a number", LOOM_STR_FMT(f));
        put_value(p, v);
    }
    p->rows++;
    return LOOM_OK;
}

static int rows_from_csv(struct predict *p, const char *text, size_t len)
{
    struct csv_ctx c = { .p = p };
    struct loom_csv_reader r;
    loom_csv_reader_init(&r, NULL, csv_record, &c);
    struct loom_error err = { 0 };
    loom_err e = loom_csv_feed(&r, text, len, &err);
    if (!e)
        e = loom_csv_finish(&r, &err);
    loom_csv_reader_release(&r);
    return e ? fail("--input: %s", err.msg) : 0;
}

static int read_rows(struct predict *p)
{
    const char *in = p->input;
    if (in[0] != '@' && strcmp(in, "-") != 0)
        return rows_from_json(p, in, strlen(in));
    FILE *f = strcmp(in, "-") == 0 ? stdin : fopen(in + 1, "rb");
    if (!f)
        return fail("--input %s: cannot open", in);
    struct loom_buf b;
    loom_buf_init(&b, (size_t)1 << 30);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        if (loom_buf_append(&b, chunk, n)) {
            loom_buf_release(&b);
            return fail("--input %s: over 1 GiB", in);
        }
    if (f != stdin)
        fclose(f);
    bool csv = loom_str_has_suffix(loom_str_cstr(in), LOOM_STR(".csv"));
    int rc = csv ? rows_from_csv(p, b.data, b.len) : rows_from_json(p, b.data, b.len);
    loom_buf_release(&b);
    return rc;
}

static int infer(struct predict *p)
{
    struct loom_buf req;
    loom_buf_init(&req, 0);
    loom_buf_append_cstr(&req, "{\"inputs\":[{\"name\":");
    loom_json_escape(&req, p->input_name, strlen(p->input_name));
    loom_buf_printf(&req, ",\"shape\":[%zu,%lld],\"datatype\":\"%s\",\"data\":[", p->rows,
                    (long long)p->features, p->datatype);
    loom_buf_append(&req, p->data.data, p->data.len);
    loom_buf_append_cstr(&req, "]}]}");
    char path[512];
    if (p->version)
        snprintf(path, sizeof(path), "/v2/models/%s/versions/%s/infer", p->model, p->version);
    else
        snprintf(path, sizeof(path), "/v2/models/%s/infer", p->model);
    struct loom_http_fetch_result r = { 0 };
    struct loom_error err = { 0 };
    loom_err e = fetch(p, path, LOOM_HTTP_POST, loom_buf_str(&req), &r, &err);
    loom_buf_release(&req);
    if (e)
        return fail("%s%s: %s", p->url, path, err.msg);
    int rc = 0;
    char msg[512];
    struct loom_json_doc doc;
    if (r.status != 200) {
        answer_error(&r, msg, sizeof(msg));
        rc = fail("%s", msg);
    } else if (p->raw) {
        fwrite(r.body, 1, r.body_len, stdout);
        fputc('\n', stdout);
    } else if (loom_json_parse(r.body, r.body_len, NULL, &p->arena, &doc, NULL) ||
               !loom_json_is_object(&doc, 0)) {
        rc = fail("the answer is not JSON");
    } else {
        int outs = loom_json_obj_get(&doc, 0, "outputs");
        int o = outs >= 0 ? loom_json_arr_at(&doc, outs, 0) : -1;
        int data = o >= 0 ? loom_json_obj_get(&doc, o, "data") : -1;
        if (data < 0 || !loom_json_is_array(&doc, data) || !p->rows) {
            rc = fail("the answer has no output data");
        } else {
            size_t per = (size_t)loom_json_size(&doc, data) / p->rows, k = 0;
            loom_json_foreach (&doc, data, i) {
                struct loom_str v = loom_json_slice(&doc, i);
                printf("%s%.*s", k % per ? " " : "", LOOM_STR_FMT(v));
                if (++k % per == 0)
                    putchar('\n');
            }
        }
    }
    loom_http_fetch_result_release(&r);
    return rc;
}

int cmd_predict(int argc, char **argv)
{
    struct predict p = { 0 };
    const char *env = getenv("LOOM_INFERENCE");
    p.url = env && env[0] ? env : "http://127.0.0.1:8081";
    p.token = getenv("LOOM_TOKEN");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
#define OPT(name, field)                                                                         \
    if (strncmp(a, name, strlen(name)) == 0 &&                                                   \
        (a[strlen(name)] == '=' || a[strlen(name)] == '\0')) {                                   \
        val = a[strlen(name)] == '=' ? a + strlen(name) + 1 : (i + 1 < argc ? argv[++i] : NULL); \
        if (!val) {                                                                              \
            fprintf(stderr, "loom predict: %s needs a value\n", name);                           \
            return 2;                                                                            \
        }                                                                                        \
        p.field = val;                                                                           \
        continue;                                                                                \
    }
        OPT("--input", input)
        OPT("--version", version)
        OPT("--inference", url)
        OPT("--token", token)
#undef OPT
        if (strcmp(a, "--raw") == 0) {
            p.raw = true;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "loom predict: unknown option %s (see loom predict --help)\n", a);
            return 2;
        } else if (!p.model) {
            p.model = a;
        } else {
            fprintf(stderr, "loom predict: unexpected argument \"%s\"\n", a);
            return 2;
        }
    }
    if (!p.model || !p.input) {
        usage(stderr);
        return 2;
    }
    loom_arena_init(&p.arena, 0);
    loom_buf_init(&p.data, (size_t)1 << 30);
    int rc = read_metadata(&p);
    if (!rc)
        rc = read_rows(&p);
    if (!rc && p.rows == 0)
        rc = fail("--input holds no rows");
    if (!rc)
        rc = infer(&p);
    loom_buf_release(&p.data);
    loom_arena_release(&p.arena);
    return rc;
}
