/* SPDX-License-Identifier: Apache-2.0 */
/*
 * `loom train`: training jobs from the command line, a client of the trainer's REST API
 * (docs/trainer.md) over the blocking loom_http_fetch. `loom train -f job.yaml` reads a job
 * spec in YAML (through libyaml, converted to the JSON spec: plain scalars that look like
 * numbers, booleans or null become those, everything else strings) or JSON, uploads the
 * dataset first when the spec names a local CSV file instead of a digest, and submits the job
 * with an Idempotency-Key. With --wait (and `loom train status ID --wait`) it polls the job,
 * drawing a progress bar on stderr (round i/N, the validation metric, ETA; plain lines when
 * stderr is not a terminal), and at the end prints the report: metrics, fairness per group,
 * latency, each gate with PASS or FAIL, and the registry version. Exit status: 0 the job
 * succeeded (or was submitted, without --wait), 1 it was rejected, failed or cancelled, or the
 * trainer refused or could not be reached, 2 a usage error.
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
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <yaml.h>

#define DEFAULT_TRAINER "http://127.0.0.1:8083"
#define TIMEOUT_NS      (120 * LOOM_NS_PER_SEC)
#define UPLOAD_NS       (600 * LOOM_NS_PER_SEC)
#define SPEC_MAX        ((size_t)1 << 20)
#define POLL_NS         (250 * LOOM_NS_PER_MS)

int cmd_train(int argc, char **argv);

static const char usage_main[] =
    "Usage: loom train -f FILE [--wait] [--trainer=URL]\n"
    "       loom train status ID [--wait]\n"
    "       loom train cancel ID\n"
    "       loom train list\n"
    "\n"
    "Train a model (loom serve trainer): submit the job spec in FILE (YAML or JSON), and\n"
    "with --wait follow it with a progress bar and print its report when it ends.\n"
    "\n"
    "A job spec (docs/trainer.md):\n"
    "  model: fraud                    # the registry model the result becomes a version of\n"
    "  dataset: sha256:...             # a dataset digest, or a local CSV file to upload\n"
    "  label: is_fraud\n"
    "  sensitive: region               # optional: fairness per group of this column\n"
    "  backend: xgboost                # or linear\n"
    "  objective: binary:logistic\n"
    "  params: {max_depth: 4, eta: 0.1}\n"
    "  rounds: 100\n"
    "  split: {validation: 0.2, seed: 42}\n"
    "  gates: {min_auc: 0.95, max_equal_opportunity_diff: 0.2}\n"
    "\n"
    "Commands and options:\n"
    "  -f FILE        Submit the job in FILE\n"
    "  --wait         Follow the job until it ends and print its report\n"
    "  status ID      Show a job (its report when it has ended)\n"
    "  cancel ID      Cancel a queued or running job\n"
    "  list           Jobs, newest first\n"
    "  --trainer=URL  The trainer (default: $LOOM_TRAINER, else " DEFAULT_TRAINER ")\n"
    "\n"
    "Exit status: 0 succeeded (or submitted without --wait), 1 rejected, failed, cancelled or\n"
    "refused, 2 usage error.\n";

struct tcli {
    const char *trainer;
    struct loom_arena arena;
    bool tty;
};

struct tresp {
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
    fputs("loom train: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n\n", stderr);
    va_end(ap);
    fputs(usage_main, stderr);
    return 2;
}

static int call(struct tcli *c, enum loom_http_method method, const char *path, const char *ctype,
                struct loom_str body, const char *key, uint64_t timeout, struct tresp *r)
{
    size_t n = strlen(c->trainer) + strlen(path) + 1;
    char *url = loom_arena_alloc(&c->arena, n);
    snprintf(url, n, "%s%s", c->trainer, path);
    struct loom_http_header h[2];
    size_t nh = 0;
    if (ctype)
        h[nh++] = (struct loom_http_header){ LOOM_STR("Content-Type"), loom_str_cstr(ctype) };
    if (key)
        h[nh++] = (struct loom_http_header){ LOOM_STR("Idempotency-Key"), loom_str_cstr(key) };
    struct loom_error err = { 0 };
    memset(r, 0, sizeof(*r));
    if (loom_http_fetch(url, method, h, nh, body, timeout, 0, &r->raw, &err)) {
        fprintf(stderr,
                "loom train: cannot reach the trainer at %s: %s\n"
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

static struct loom_str jstr(struct tcli *c, const struct loom_json_doc *doc, int obj,
                            const char *key)
{
    int i = obj >= 0 ? loom_json_obj_get(doc, obj, key) : -1;
    struct loom_str s = LOOM_STR("");
    if (i >= 0 && loom_json_is_string(doc, i))
        loom_json_unescape(doc, i, &c->arena, &s);
    return s;
}

static double jnum(const struct loom_json_doc *doc, int obj, const char *key)
{
    int i = obj >= 0 ? loom_json_obj_get(doc, obj, key) : -1;
    double v = NAN;
    if (i >= 0 && loom_json_is_number(doc, i))
        loom_json_to_double(doc, i, &v);
    return v;
}

static int refused(struct tcli *c, struct tresp *r, const char *what)
{
    struct loom_str detail = r->json ? jstr(c, &r->doc, 0, "detail") : LOOM_STR("");
    struct loom_str field = r->json ? jstr(c, &r->doc, 0, "field") : LOOM_STR("");
    if (detail.len && field.len)
        fprintf(stderr, "loom train: %s: %.*s: %.*s (HTTP %d)\n", what, LOOM_STR_FMT(field),
                LOOM_STR_FMT(detail), r->status);
    else if (detail.len)
        fprintf(stderr, "loom train: %s: %.*s (HTTP %d)\n", what, LOOM_STR_FMT(detail), r->status);
    else
        fprintf(stderr, "loom train: %s: the trainer answered HTTP %d\n", what, r->status);
    loom_http_fetch_result_release(&r->raw);
    return 1;
}

/* ---- YAML to the JSON spec ---- */

/* Is s exactly a JSON number? */
static bool json_number(const char *s, size_t n)
{
    size_t i = 0;
    if (i < n && s[i] == '-')
        i++;
    if (i == n)
        return false;
    if (s[i] == '0')
        i++;
    else if (s[i] >= '1' && s[i] <= '9')
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
    else
        return false;
    if (i < n && s[i] == '.') {
        i++;
        size_t d = i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == d)
            return false;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        size_t d = i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == d)
            return false;
    }
    return i == n;
}

static bool word_in(const char *s, size_t n, const char *const *words)
{
    for (; *words; words++)
        if (strlen(*words) == n && memcmp(*words, s, n) == 0)
            return true;
    return false;
}

static bool yaml_emit(yaml_document_t *doc, yaml_node_t *node, struct loom_json_writer *w,
                      int depth)
{
    static const char *const nulls[] = { "", "~", "null", "Null", "NULL", NULL };
    static const char *const trues[] = { "true", "True", "TRUE", NULL };
    static const char *const falses[] = { "false", "False", "FALSE", NULL };
    if (!node || depth > 32)
        return false;
    switch (node->type) {
    case YAML_SCALAR_NODE: {
        const char *s = (const char *)node->data.scalar.value;
        size_t n = node->data.scalar.length;
        if (node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
            loom_json_write_str(w, loom_str_make(s, n));
        } else if (word_in(s, n, nulls)) {
            loom_json_write_null(w);
        } else if (word_in(s, n, trues) || word_in(s, n, falses)) {
            loom_json_write_bool(w, word_in(s, n, trues));
        } else if (json_number(s, n)) {
            loom_json_write_raw(w, loom_str_make(s, n));
        } else {
            char *end;
            double v = strtod(s, &end);
            bool numeric = n && end == s + n && isfinite(v) && strchr("+-.0123456789", s[0]) &&
                           !memchr(s, 'x', n) && !memchr(s, 'X', n);
            if (numeric)
                loom_json_write_double(w, v); /* "+1", ".5", "1." */
            else
                loom_json_write_str(w, loom_str_make(s, n));
        }
        return true;
    }
    case YAML_SEQUENCE_NODE:
        loom_json_write_array_begin(w);
        for (yaml_node_item_t *it = node->data.sequence.items.start;
             it < node->data.sequence.items.top; it++)
            if (!yaml_emit(doc, yaml_document_get_node(doc, *it), w, depth + 1))
                return false;
        loom_json_write_array_end(w);
        return true;
    case YAML_MAPPING_NODE:
        loom_json_write_object_begin(w);
        for (yaml_node_pair_t *p = node->data.mapping.pairs.start; p < node->data.mapping.pairs.top;
             p++) {
            yaml_node_t *k = yaml_document_get_node(doc, p->key);
            if (!k || k->type != YAML_SCALAR_NODE)
                return false;
            loom_json_write_keyn(
                w, loom_str_make((const char *)k->data.scalar.value, k->data.scalar.length));
            if (!yaml_emit(doc, yaml_document_get_node(doc, p->value), w, depth + 1))
                return false;
        }
        loom_json_write_object_end(w);
        return true;
    default:
        return false;
    }
}

/* YAML text to JSON in out; false with a message naming the line and column. */
static bool yaml_to_json(const char *text, size_t len, struct loom_buf *out, char *msg, size_t cap)
{
    yaml_parser_t p;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&p)) {
        snprintf(msg, cap, "out of memory");
        return false;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    if (!yaml_parser_load(&p, &doc)) {
        snprintf(msg, cap, "line %zu, column %zu: %s", (size_t)p.problem_mark.line + 1,
                 (size_t)p.problem_mark.column + 1, p.problem ? p.problem : "malformed YAML");
        yaml_parser_delete(&p);
        return false;
    }
    bool ok = true;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root || root->type != YAML_MAPPING_NODE) {
        snprintf(msg, cap, "a job spec is a mapping (model: ..., dataset: ..., label: ...)");
        ok = false;
    } else {
        struct loom_json_writer w;
        loom_json_writer_init(&w, out);
        if (!yaml_emit(&doc, root, &w, 0) || loom_json_writer_finish(&w)) {
            snprintf(msg, cap, "the YAML is too deep, too large, or has a non-scalar key");
            ok = false;
        }
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&p);
    return ok;
}

static char *read_file(const char *path, size_t max, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    struct loom_buf b;
    loom_buf_init(&b, max);
    char chunk[65536];
    size_t n;
    bool ok = true;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        if (loom_buf_append(&b, chunk, n)) {
            ok = false;
            errno = EFBIG;
            break;
        }
    ok = ok && !ferror(f);
    fclose(f);
    if (!ok) {
        loom_buf_release(&b);
        return NULL;
    }
    return loom_buf_detach(&b, len);
}

/* Upload a local CSV named by the spec; the digest into out. */
static int push_dataset(struct tcli *c, const char *path, char *out, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
        fprintf(stderr,
                "loom train: dataset \"%s\" is neither a digest (sha256:...) nor a readable "
                "CSV file\n",
                path);
        if (fd >= 0)
            close(fd);
        return 1;
    }
    size_t len = (size_t)st.st_size;
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        fprintf(stderr, "loom train: cannot map %s: %s\n", path, strerror(errno));
        return 1;
    }
    fprintf(stderr, "loom train: uploading %s (%zu bytes)\n", path, len);
    struct tresp r;
    int rc = call(c, LOOM_HTTP_POST, "/api/v1/datasets", "text/csv", loom_str_make(map, len), NULL,
                  UPLOAD_NS, &r);
    munmap(map, len);
    if (rc)
        return rc;
    if ((r.status != 200 && r.status != 201) || !r.json)
        return refused(c, &r, "the dataset was refused");
    snprintf(out, cap, "%.*s", LOOM_STR_FMT(jstr(c, &r.doc, 0, "digest")));
    fprintf(stderr, "loom train: dataset %s\n", out);
    loom_http_fetch_result_release(&r.raw);
    return 0;
}

/* ---- waiting and printing ---- */

static const char *const final_statuses[] = { "succeeded", "rejected", "failed", "cancelled",
                                              NULL };

static bool is_final(struct loom_str s)
{
    for (const char *const *f = final_statuses; *f; f++)
        if (loom_str_eq_cstr(s, *f))
            return true;
    return false;
}

static void fmt_duration(double ms, char *out, size_t cap)
{
    if (!(ms >= 0))
        snprintf(out, cap, "?");
    else if (ms < 1000)
        snprintf(out, cap, "%.0fms", ms);
    else if (ms < 60000)
        snprintf(out, cap, "%.1fs", ms / 1000);
    else
        snprintf(out, cap, "%dm%02ds", (int)(ms / 60000), (int)fmod(ms / 1000, 60));
}

/* One progress line: [#####.....] 37/100 validation-logloss 0.0234 ETA 12s */
static void draw_progress(struct tcli *c, const struct loom_json_doc *doc, int *last_decile,
                          struct loom_str *last_status)
{
    struct loom_str status = jstr(c, doc, 0, "status");
    int prog = loom_json_obj_get(doc, 0, "progress");
    double round = jnum(doc, prog, "round"), rounds = jnum(doc, prog, "rounds");
    double eta = jnum(doc, prog, "eta_ms");
    int metric = loom_json_obj_get(doc, 0, "metric");
    struct loom_str mname = metric >= 0 ? jstr(c, doc, metric, "name") : LOOM_STR("");
    double mval = metric >= 0 ? jnum(doc, metric, "last") : NAN;
    char line[256], etas[32];
    int width = 30, fill = rounds > 0 ? (int)(width * round / rounds) : 0;
    char bar[64];
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    fmt_duration(eta, etas, sizeof(etas));
    if (loom_str_eq_cstr(status, "queued"))
        snprintf(line, sizeof(line), "[%s] queued", bar);
    else if (isfinite(mval))
        snprintf(line, sizeof(line), "[%s] round %.0f/%.0f  %.*s %.5g  ETA %s", bar, round, rounds,
                 LOOM_STR_FMT(mname), mval, etas);
    else
        snprintf(line, sizeof(line), "[%s] round %.0f/%.0f  %.*s", bar, round, rounds,
                 LOOM_STR_FMT(status));
    if (c->tty) {
        fprintf(stderr, "\r%s\033[K", line);
    } else {
        int decile = rounds > 0 ? (int)(10 * round / rounds) : 0;
        if (decile != *last_decile || !loom_str_eq(status, *last_status)) {
            fprintf(stderr, "%s\n", line);
            *last_decile = decile;
        }
    }
    *last_status = loom_str_make(loom_arena_strndup(&c->arena, status.ptr, status.len), status.len);
    fflush(stderr);
}

static void print_num(const char *label, double v)
{
    if (isfinite(v))
        printf("  %-26s %.6g\n", label, v);
    else
        printf("  %-26s -\n", label);
}

static void print_report(struct tcli *c, const struct loom_json_doc *doc)
{
    int rep = loom_json_obj_get(doc, 0, "report");
    if (rep < 0 || !loom_json_is_object(doc, rep))
        return;
    int split = loom_json_obj_get(doc, rep, "split");
    int metrics = loom_json_obj_get(doc, rep, "metrics");
    printf("\nmetrics (validation, %.0f rows; train %.0f rows):\n",
           jnum(doc, split, "validation_rows"), jnum(doc, split, "train_rows"));
    if (metrics >= 0 && loom_json_is_object(doc, metrics)) {
        loom_json_foreach (doc, metrics, k) {
            struct loom_str name = loom_json_slice(doc, k);
            if (loom_str_eq_cstr(name, "rows"))
                continue;
            char label[64];
            snprintf(label, sizeof(label), "%.*s", LOOM_STR_FMT(name));
            double v = NAN;
            if (loom_json_is_number(doc, k + 1))
                loom_json_to_double(doc, k + 1, &v);
            print_num(label, v);
        }
    }
    int cm = loom_json_obj_get(doc, rep, "confusion_matrix");
    if (cm >= 0 && loom_json_is_object(doc, cm))
        printf("  %-26s tp %.0f  fp %.0f  tn %.0f  fn %.0f (threshold 0.5)\n", "confusion matrix",
               jnum(doc, cm, "tp"), jnum(doc, cm, "fp"), jnum(doc, cm, "tn"), jnum(doc, cm, "fn"));
    int fair = loom_json_obj_get(doc, rep, "fairness");
    if (fair >= 0 && loom_json_is_object(doc, fair)) {
        printf("\nfairness by %.*s:\n", LOOM_STR_FMT(jstr(c, doc, fair, "attribute")));
        printf("  %-20s %8s %9s %13s %7s %7s\n", "GROUP", "ROWS", "POSITIVES", "PREDICTED-POS",
               "TPR", "FPR");
        int groups = loom_json_obj_get(doc, fair, "groups");
        if (groups >= 0 && loom_json_is_array(doc, groups)) {
            loom_json_foreach (doc, groups, g) {
                double tpr = jnum(doc, g, "tpr"), fpr = jnum(doc, g, "fpr");
                char ts[16] = "-", fs[16] = "-";
                if (isfinite(tpr))
                    snprintf(ts, sizeof(ts), "%.3f", tpr);
                if (isfinite(fpr))
                    snprintf(fs, sizeof(fs), "%.4f", fpr);
                printf("  %-20.*s %8.0f %9.0f %13.4f %7s %7s\n",
                       LOOM_STR_FMT(jstr(c, doc, g, "group")), jnum(doc, g, "count"),
                       jnum(doc, g, "positives"), jnum(doc, g, "positive_rate"), ts, fs);
            }
        }
        print_num("equal-opportunity diff", jnum(doc, fair, "equal_opportunity_diff"));
        print_num("demographic-parity diff", jnum(doc, fair, "demographic_parity_diff"));
        int ex = loom_json_obj_get(doc, fair, "excluded_from_equal_opportunity");
        if (ex >= 0 && loom_json_size(doc, ex) > 0) {
            printf("  (groups without positives, excluded from equal opportunity:");
            loom_json_foreach (doc, ex, i)
                printf(" %.*s", LOOM_STR_FMT(loom_json_slice(doc, i)));
            printf(")\n");
        }
    }
    int lat = loom_json_obj_get(doc, rep, "latency");
    if (lat >= 0)
        printf("\nlatency (single-row predictions, %.0f calls): p50 %.2f us, p99 %.2f us\n",
               jnum(doc, lat, "calls"), jnum(doc, lat, "p50_us"), jnum(doc, lat, "p99_us"));
    int gates = loom_json_obj_get(doc, rep, "gates");
    if (gates >= 0 && loom_json_is_array(doc, gates)) {
        printf("\ngates:\n");
        if (loom_json_size(doc, gates) == 0)
            printf("  (none)\n");
        loom_json_foreach (doc, gates, g) {
            int passed = loom_json_obj_get(doc, g, "passed");
            struct loom_str name = jstr(c, doc, g, "name");
            bool max = loom_str_has_prefix(name, LOOM_STR("max_"));
            double v = jnum(doc, g, "value");
            char vs[32] = "n/a";
            if (isfinite(v))
                snprintf(vs, sizeof(vs), "%.4g", v);
            printf("  %s  %-32.*s %s %-8.4g (value %s)\n",
                   passed >= 0 && loom_json_is_true(doc, passed) ? "PASS" : "FAIL",
                   LOOM_STR_FMT(name), max ? "<=" : ">=", jnum(doc, g, "threshold"), vs);
        }
    }
    int t = loom_json_obj_get(doc, rep, "timings_ms");
    if (t >= 0) {
        char a[32], b[32], d[32];
        fmt_duration(jnum(doc, t, "load"), a, sizeof(a));
        fmt_duration(jnum(doc, t, "train"), b, sizeof(b));
        fmt_duration(jnum(doc, t, "evaluate"), d, sizeof(d));
        printf("\ntimings: load %s, train %s, evaluate %s\n", a, b, d);
    }
}

/* Print the job's outcome; the exit status it means. */
static int print_outcome(struct tcli *c, const struct loom_json_doc *doc)
{
    struct loom_str id = jstr(c, doc, 0, "id"), status = jstr(c, doc, 0, "status");
    struct loom_str err = jstr(c, doc, 0, "error");
    printf("job %.*s %.*s (model %.*s, %.*s %.*s)\n", LOOM_STR_FMT(id), LOOM_STR_FMT(status),
           LOOM_STR_FMT(jstr(c, doc, 0, "model")), LOOM_STR_FMT(jstr(c, doc, 0, "backend")),
           LOOM_STR_FMT(jstr(c, doc, 0, "objective")));
    if (err.len)
        printf("%s: %.*s\n", loom_str_eq_cstr(status, "rejected") ? "rejected by" : "reason",
               LOOM_STR_FMT(err));
    print_report(c, doc);
    int reg = loom_json_obj_get(doc, 0, "registry");
    if (reg >= 0 && loom_json_is_object(doc, reg))
        printf("\nregistry: %.*s version %.0f (%.*s)\n", LOOM_STR_FMT(jstr(c, doc, reg, "model")),
               jnum(doc, reg, "version"), LOOM_STR_FMT(jstr(c, doc, reg, "status")));
    if (!is_final(status))
        return 0;
    return loom_str_eq_cstr(status, "succeeded") ? 0 : 1;
}

static int get_job(struct tcli *c, const char *id, bool summary, struct tresp *r)
{
    char path[160];
    snprintf(path, sizeof(path), "/api/v1/training-jobs/%s%s", id, summary ? "?history=false" : "");
    if (call(c, LOOM_HTTP_GET, path, NULL, LOOM_STR_NULL, NULL, TIMEOUT_NS, r))
        return 1;
    if (r->status != 200 || !r->json)
        return refused(c, r, "cannot read the job");
    return 0;
}

static int follow(struct tcli *c, const char *id)
{
    int last_decile = -1;
    struct loom_str last_status = LOOM_STR("");
    for (;;) {
        struct tresp r;
        if (get_job(c, id, true, &r))
            return 1;
        struct loom_str status = jstr(c, &r.doc, 0, "status");
        bool done = is_final(status);
        if (!done)
            draw_progress(c, &r.doc, &last_decile, &last_status);
        loom_http_fetch_result_release(&r.raw);
        if (done)
            break;
        struct timespec ts = { 0, (long)POLL_NS };
        nanosleep(&ts, NULL);
    }
    if (c->tty)
        fprintf(stderr, "\r\033[K");
    struct tresp r;
    if (get_job(c, id, false, &r))
        return 1;
    int rc = print_outcome(c, &r.doc);
    loom_http_fetch_result_release(&r.raw);
    return rc;
}

/* ---- commands ---- */

/* The JSON text of value i as written (a string's slice excludes its quotes). */
static struct loom_str value_text(const struct loom_json_doc *doc, int i)
{
    struct loom_str s = loom_json_slice(doc, i);
    if (loom_json_is_string(doc, i))
        s = loom_str_make(s.ptr - 1, s.len + 2);
    return s;
}

static int do_submit(struct tcli *c, const char *file, bool wait)
{
    size_t len = 0;
    char *text = read_file(file, SPEC_MAX, &len);
    if (!text) {
        fprintf(stderr, "loom train: cannot read %s: %s\n", file, strerror(errno));
        return 1;
    }
    struct loom_buf spec;
    loom_buf_init(&spec, SPEC_MAX);
    size_t k = 0;
    while (k < len && strchr(" \t\r\n", text[k]))
        k++;
    size_t flen = strlen(file);
    bool is_json =
        (flen > 5 && strcmp(file + flen - 5, ".json") == 0) || (k < len && text[k] == '{');
    char msg[300];
    if (is_json) {
        loom_buf_append(&spec, text, len);
    } else if (!yaml_to_json(text, len, &spec, msg, sizeof(msg))) {
        fprintf(stderr, "loom train: %s: %s\n", file, msg);
        free(text);
        loom_buf_release(&spec);
        return 1;
    }
    free(text);

    /* A dataset given as a local file is uploaded first. */
    struct loom_json_doc doc;
    if (loom_json_parse(spec.data, spec.len, NULL, &c->arena, &doc, NULL) == LOOM_OK &&
        loom_json_is_object(&doc, 0)) {
        struct loom_str ds = jstr(c, &doc, 0, "dataset");
        if (ds.len && !loom_str_has_prefix(ds, LOOM_STR("sha256:"))) {
            char path[4096], digest[80];
            if (ds.ptr[0] == '/' ||
                access(loom_arena_strndup(&c->arena, ds.ptr, ds.len), R_OK) == 0) {
                snprintf(path, sizeof(path), "%.*s", LOOM_STR_FMT(ds));
            } else {
                /* Relative to the job file's directory. */
                const char *slash = strrchr(file, '/');
                snprintf(path, sizeof(path), "%.*s%.*s", slash ? (int)(slash - file + 1) : 0, file,
                         LOOM_STR_FMT(ds));
            }
            if (push_dataset(c, path, digest, sizeof(digest))) {
                loom_buf_release(&spec);
                return 1;
            }
            struct loom_buf out;
            loom_buf_init(&out, SPEC_MAX);
            struct loom_json_writer w;
            loom_json_writer_init(&w, &out);
            loom_json_write_object_begin(&w);
            loom_json_foreach (&doc, 0, key) {
                struct loom_str name;
                loom_json_unescape(&doc, key, &c->arena, &name);
                loom_json_write_keyn(&w, name);
                if (loom_str_eq_cstr(name, "dataset"))
                    loom_json_write_string(&w, digest);
                else
                    loom_json_write_raw(&w, value_text(&doc, key + 1));
            }
            loom_json_write_object_end(&w);
            loom_json_writer_finish(&w);
            loom_buf_release(&spec);
            spec = out;
        }
    }

    char key[LOOM_UUID_LEN + 1];
    loom_uuid7(key);
    struct tresp r;
    int rc = call(c, LOOM_HTTP_POST, "/api/v1/training-jobs", "application/json",
                  loom_buf_str(&spec), key, TIMEOUT_NS, &r);
    loom_buf_release(&spec);
    if (rc)
        return rc;
    if (r.status != 201 || !r.json)
        return refused(c, &r, "the job was refused");
    struct loom_str id = jstr(c, &r.doc, 0, "id");
    char *idc = loom_arena_strndup(&c->arena, id.ptr, id.len);
    loom_http_fetch_result_release(&r.raw);
    if (!wait) {
        printf("%s\n", idc);
        fprintf(stderr, "loom train: job %s queued; follow it with 'loom train status %s --wait'\n",
                idc, idc);
        return 0;
    }
    fprintf(stderr, "loom train: job %s\n", idc);
    return follow(c, idc);
}

static int do_status(struct tcli *c, const char *id, bool wait)
{
    if (wait)
        return follow(c, id);
    struct tresp r;
    if (get_job(c, id, false, &r))
        return 1;
    struct loom_str status = jstr(c, &r.doc, 0, "status");
    int rc = print_outcome(c, &r.doc);
    if (!is_final(status)) {
        int prog = loom_json_obj_get(&r.doc, 0, "progress");
        printf("progress: round %.0f/%.0f\n", jnum(&r.doc, prog, "round"),
               jnum(&r.doc, prog, "rounds"));
    }
    loom_http_fetch_result_release(&r.raw);
    return rc;
}

static int do_cancel(struct tcli *c, const char *id)
{
    char path[160];
    snprintf(path, sizeof(path), "/api/v1/training-jobs/%s/cancel", id);
    struct tresp r;
    if (call(c, LOOM_HTTP_POST, path, NULL, LOOM_STR_NULL, NULL, TIMEOUT_NS, &r))
        return 1;
    if (r.status != 202 || !r.json)
        return refused(c, &r, "cannot cancel the job");
    struct loom_str status = jstr(c, &r.doc, 0, "status");
    if (loom_str_eq_cstr(status, "cancelled"))
        printf("job %s cancelled\n", id);
    else
        printf("job %s: cancellation requested (it stops after its current round)\n", id);
    loom_http_fetch_result_release(&r.raw);
    return 0;
}

static int do_list(struct tcli *c)
{
    struct tresp r;
    if (call(c, LOOM_HTTP_GET, "/api/v1/training-jobs?limit=100", NULL, LOOM_STR_NULL, NULL,
             TIMEOUT_NS, &r))
        return 1;
    if (r.status != 200 || !r.json)
        return refused(c, &r, "cannot list jobs");
    printf("%-36s %-10s %-20s %-8s %9s  %s\n", "ID", "STATUS", "MODEL", "BACKEND", "PROGRESS",
           "CREATED");
    int items = loom_json_obj_get(&r.doc, 0, "items");
    if (items >= 0 && loom_json_is_array(&r.doc, items)) {
        loom_json_foreach (&r.doc, items, j) {
            int prog = loom_json_obj_get(&r.doc, j, "progress");
            char p[32];
            snprintf(p, sizeof(p), "%.0f/%.0f", jnum(&r.doc, prog, "round"),
                     jnum(&r.doc, prog, "rounds"));
            printf("%-36.*s %-10.*s %-20.*s %-8.*s %9s  %.*s\n",
                   LOOM_STR_FMT(jstr(c, &r.doc, j, "id")),
                   LOOM_STR_FMT(jstr(c, &r.doc, j, "status")),
                   LOOM_STR_FMT(jstr(c, &r.doc, j, "model")),
                   LOOM_STR_FMT(jstr(c, &r.doc, j, "backend")), p,
                   LOOM_STR_FMT(jstr(c, &r.doc, j, "created_at")));
        }
    }
    loom_http_fetch_result_release(&r.raw);
    return 0;
}

int cmd_train(int argc, char **argv)
{
    struct tcli c = { .trainer = getenv("LOOM_TRAINER"), .tty = isatty(2) };
    if (!c.trainer || !c.trainer[0])
        c.trainer = DEFAULT_TRAINER;
    const char *file = NULL;
    bool wait = false;
    const char *pos[4];
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage_main, stdout);
            return 0;
        }
        if (strcmp(a, "-f") == 0 || strcmp(a, "--file") == 0) {
            if (i + 1 >= argc)
                return usage_error("%s needs a FILE", a);
            file = argv[++i];
        } else if (strncmp(a, "--file=", 7) == 0) {
            file = a + 7;
        } else if (strcmp(a, "--wait") == 0) {
            wait = true;
        } else if (strncmp(a, "--trainer=", 10) == 0) {
            c.trainer = a + 10;
        } else if (strcmp(a, "--trainer") == 0 && i + 1 < argc) {
            c.trainer = argv[++i];
        } else if (a[0] == '-' && a[1]) {
            return usage_error("unknown option \"%s\"", a);
        } else if (npos < (int)LOOM_ARRAY_SIZE(pos)) {
            pos[npos++] = a;
        } else {
            return usage_error("unexpected argument \"%s\"", a);
        }
    }
    if (strncmp(c.trainer, "http://", 7) != 0)
        return usage_error("--trainer must be an http:// URL, not \"%s\"", c.trainer);
    char *base = loom_strdup(c.trainer);
    for (size_t len = strlen(base); len > 7 && base[len - 1] == '/'; len--)
        base[len - 1] = '\0';
    c.trainer = base;
    loom_arena_init(&c.arena, 0);
    int rc;
    if (file && npos == 0) {
        rc = do_submit(&c, file, wait);
    } else if (file) {
        rc = usage_error("-f FILE takes no other argument");
    } else if (npos == 2 && strcmp(pos[0], "status") == 0) {
        rc = do_status(&c, pos[1], wait);
    } else if (npos == 2 && strcmp(pos[0], "cancel") == 0) {
        rc = do_cancel(&c, pos[1]);
    } else if (npos == 1 && strcmp(pos[0], "list") == 0) {
        rc = do_list(&c);
    } else if (npos == 0) {
        rc = usage_error("-f FILE, or a command (status ID, cancel ID, list), is needed");
    } else {
        rc = usage_error("unknown command \"%s\"", pos[0]);
    }
    loom_arena_release(&c.arena);
    free(base);
    return rc;
}
