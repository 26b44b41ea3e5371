/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The metrics registry and its Prometheus text renderer. Everything that can be computed once
 * is computed at registration or series creation: the HELP/TYPE header of a family, the escaped
 * label block of a series, the `le` text of every bucket, so rendering is mostly copying.
 * Values are atomics updated with relaxed ordering: a scrape needs no ordering between series,
 * only untorn values. A histogram stores per-bucket counts (one atomic add per observation) and
 * derives the cumulative buckets and _count at render time, so _count always equals the +Inf
 * bucket even while observations race with the scrape. Doubles (gauges, histogram sums) are
 * updated by compare-and-swap on their bit pattern.
 */
#include <loom/metrics.h>

#include <loom/core.h>
#include <loom/log.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

const double loom_metrics_latency_buckets[LOOM_METRICS_LATENCY_BUCKETS_N] = {
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05,    0.1,    0.25,    0.5,    1,     2.5,    5,     10,
};

/* Label names per family, at most; more is a design smell rather than a need. */
#define MAX_LABELS 16

enum kind { KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM };
static const char *const kind_names[] = { "counter", "gauge", "histogram" };

struct loom_counter {
    _Atomic uint64_t value;
};

struct loom_gauge {
    _Atomic uint64_t bits; /* a double */
};

struct loom_histogram {
    const double *bounds; /* the family's */
    size_t nbounds;
    _Atomic uint64_t sum_bits; /* a double */
    _Atomic uint64_t *counts;  /* nbounds + 1, not cumulative; the last is +Inf */
};

struct series {
    struct series *hash_next;
    uint64_t hash;
    char **values;      /* nlabels cleaned values, owned */
    char *labels;       /* `a="x",b="y"`: escaped, without braces; "" without labels */
    loom_metrics_fn fn; /* a callback series: the value is fn(arg) */
    void *arg;
    union {
        struct loom_counter counter;
        struct loom_gauge gauge;
        struct loom_histogram hist;
    } u;
    /* A histogram's counts follow. */
};

struct family {
    enum kind kind;
    bool is_fn;
    char *name;
    char *owner;  /* NULL: process-wide */
    char *header; /* "# HELP ...\n# TYPE ...\n" */
    char **label_names;
    size_t nlabels;
    double *bounds;
    char **le; /* bounds as text */
    size_t nbounds;

    pthread_mutex_t lock;   /* guards what follows */
    struct series **series; /* creation order */
    size_t nseries, series_cap;
    struct series **table; /* hash chains; size is a power of two */
    size_t table_size;
    struct series *overflow; /* beyond LOOM_METRICS_MAX_SERIES: counted, never rendered */
};

struct loom_metrics {
    pthread_mutex_t lock;
    struct family **fams; /* registration order */
    size_t nfams, cap;
};

static _Noreturn void misuse(const char *name, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Log what was wrong with which metric, then abort: misuse is a bug to fix, not a condition to
 * handle, and it shows on the first run. */
static void misuse(const char *name, const char *fmt, ...)
{
    char msg[512];
    int n = snprintf(msg, sizeof(msg), "metrics: programming error: ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
    va_end(ap);
    const struct loom_kv kv[] = { LOOM_KV_CSTR("metric", name) };
    loom_log_kv(LOOM_LOG_ERROR, msg, kv, 1);
    abort();
}

/* Text. */

static double bits_to_double(uint64_t b)
{
    double d;
    memcpy(&d, &b, sizeof(d));
    return d;
}

static uint64_t double_to_bits(double d)
{
    uint64_t b;
    memcpy(&b, &d, sizeof(b));
    return b;
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

static bool is_alpha_(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* [a-zA-Z_:][a-zA-Z0-9_:]* */
static bool valid_metric_name(const char *s)
{
    if (!s || !(is_alpha_(*s) || *s == ':'))
        return false;
    for (s++; *s; s++)
        if (!is_alpha_(*s) && !is_digit(*s) && *s != ':')
            return false;
    return true;
}

/* [a-zA-Z_][a-zA-Z0-9_]*, not starting with __ (reserved for Prometheus itself). */
static bool valid_label_name(const char *s)
{
    if (!s || !is_alpha_(*s) || (s[0] == '_' && s[1] == '_'))
        return false;
    for (s++; *s; s++)
        if (!is_alpha_(*s) && !is_digit(*s))
            return false;
    return true;
}

/* Length of the well-formed UTF-8 character at p (1 to 4), or 0. */
static size_t utf8_char_len(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    size_t len;
    unsigned min;
    if (c < 0x80)
        return 1;
    else if ((c & 0xe0) == 0xc0)
        len = 2, min = 0x80;
    else if ((c & 0xf0) == 0xe0)
        len = 3, min = 0x800;
    else if ((c & 0xf8) == 0xf0)
        len = 4, min = 0x10000;
    else
        return 0;
    if (n < len)
        return 0;
    unsigned cp = c & (0x7fu >> len);
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* Whether a label value can be used as given: well-formed UTF-8 within the length cap. */
static bool value_is_clean(const char *v)
{
    const unsigned char *p = (const unsigned char *)v;
    size_t n = strlen(v);
    if (n > LOOM_METRICS_LABEL_VALUE_MAX)
        return false;
    for (size_t i = 0; i < n;) {
        size_t len = utf8_char_len(p + i, n - i);
        if (!len)
            return false;
        i += len;
    }
    return true;
}

/* A copy of v with invalid bytes replaced by U+FFFD, cut at a character boundary to the cap. */
static char *value_clean(const char *v)
{
    const unsigned char *p = (const unsigned char *)v;
    size_t n = strlen(v), o = 0;
    char *out = loom_malloc(LOOM_METRICS_LABEL_VALUE_MAX + 1);
    for (size_t i = 0; i < n;) {
        size_t len = utf8_char_len(p + i, n - i);
        const char *src = len ? v + i : "\xef\xbf\xbd";
        size_t slen = len ? len : 3;
        if (o + slen > LOOM_METRICS_LABEL_VALUE_MAX)
            break;
        memcpy(out + o, src, slen);
        o += slen;
        i += len ? len : 1;
    }
    out[o] = '\0';
    return out;
}

/* Append s with `\`, newline and (if quote) `"` escaped, as label values and HELP need. */
static void append_escaped(struct loom_buf *b, const char *s, bool quote)
{
    for (const char *run = s;; s++) {
        char c = *s;
        if (c && c != '\\' && c != '\n' && !(quote && c == '"'))
            continue;
        loom_buf_append(b, run, (size_t)(s - run));
        if (!c)
            return;
        loom_buf_append(b, c == '\n' ? "\\n" : c == '"' ? "\\\"" : "\\\\", 2);
        run = s + 1;
    }
}

/* Render. */

struct render {
    struct loom_buf *out;
    loom_err err; /* the first error; later appends are skipped */
};

static void put(struct render *r, const char *p, size_t n)
{
    if (!r->err)
        r->err = loom_buf_append(r->out, p, n);
}

static void puts_(struct render *r, const char *s)
{
    put(r, s, strlen(s));
}

/* `name<suffix>{labels[,extra]} ` */
static void put_sample_name(struct render *r, const struct family *f, const char *suffix,
                            const struct series *s, const char *extra)
{
    puts_(r, f->name);
    puts_(r, suffix);
    bool any = s->labels[0] || extra;
    if (any)
        put(r, "{", 1);
    puts_(r, s->labels);
    if (s->labels[0] && extra)
        put(r, ",", 1);
    if (extra)
        puts_(r, extra);
    put(r, any ? "} " : " ", any ? 2 : 1);
}

static void put_u64_line(struct render *r, uint64_t v)
{
    char tmp[24];
    size_t n = loom_u64_to_dec(v, tmp);
    tmp[n++] = '\n';
    put(r, tmp, n);
}

static void put_double_line(struct render *r, double v)
{
    char tmp[32];
    size_t n = loom_fmt_double(v, tmp);
    tmp[n++] = '\n';
    put(r, tmp, n);
}

static void render_series(struct render *r, const struct family *f, const struct series *s)
{
    if (s->fn) {
        put_sample_name(r, f, "", s, NULL);
        put_double_line(r, s->fn(s->arg));
        return;
    }
    switch (f->kind) {
    case KIND_COUNTER:
        put_sample_name(r, f, "", s, NULL);
        put_u64_line(r, atomic_load_explicit(&s->u.counter.value, memory_order_relaxed));
        break;
    case KIND_GAUGE:
        put_sample_name(r, f, "", s, NULL);
        put_double_line(r, loom_gauge_value(&s->u.gauge));
        break;
    case KIND_HISTOGRAM: {
        const struct loom_histogram *h = &s->u.hist;
        uint64_t cum = 0;
        for (size_t i = 0; i <= f->nbounds; i++) {
            cum += atomic_load_explicit(&h->counts[i], memory_order_relaxed);
            put_sample_name(r, f, "_bucket", s, i < f->nbounds ? f->le[i] : "le=\"+Inf\"");
            put_u64_line(r, cum);
        }
        put_sample_name(r, f, "_sum", s, NULL);
        put_double_line(r, loom_histogram_sum(h));
        put_sample_name(r, f, "_count", s, NULL);
        put_u64_line(r, cum);
        break;
    }
    }
}

static bool owner_matches(const struct family *f, const char *owner)
{
    return !owner || !f->owner || strcmp(owner, f->owner) == 0;
}

loom_err loom_metrics_render(struct loom_metrics *reg, const char *owner, struct loom_buf *out)
{
    struct render r = { out, LOOM_OK };
    pthread_mutex_lock(&reg->lock);
    for (size_t i = 0; i < reg->nfams && !r.err; i++) {
        struct family *f = reg->fams[i];
        if (!owner_matches(f, owner))
            continue;
        puts_(&r, f->header);
        pthread_mutex_lock(&f->lock);
        for (size_t j = 0; j < f->nseries && !r.err; j++)
            render_series(&r, f, f->series[j]);
        pthread_mutex_unlock(&f->lock);
    }
    pthread_mutex_unlock(&reg->lock);
    return r.err;
}

/* Series. */

static uint64_t hash_values(const char *const *values, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        for (const unsigned char *p = (const unsigned char *)values[i];; p++) {
            h = (h ^ *p) * 0x100000001b3ull; /* the NUL separates values */
            if (!*p)
                break;
        }
    return h;
}

static bool values_equal(const struct series *s, const char *const *values, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(s->values[i], values[i]) != 0)
            return false;
    return true;
}

static struct series *series_new(const struct family *f, const char *const *values, uint64_t hash)
{
    size_t ncounts = f->kind == KIND_HISTOGRAM ? f->nbounds + 1 : 0;
    struct series *s = loom_calloc(1, sizeof(*s) + ncounts * sizeof(_Atomic uint64_t));
    s->hash = hash;
    s->values = loom_calloc(f->nlabels ? f->nlabels : 1, sizeof(char *));
    struct loom_buf labels;
    loom_buf_init(&labels, 0);
    for (size_t i = 0; i < f->nlabels; i++) {
        s->values[i] = loom_strdup(values[i]);
        if (i)
            loom_buf_putc(&labels, ',');
        loom_buf_append_cstr(&labels, f->label_names[i]);
        loom_buf_append(&labels, "=\"", 2);
        append_escaped(&labels, values[i], true);
        loom_buf_putc(&labels, '"');
    }
    s->labels = loom_buf_detach(&labels, NULL);
    switch (f->kind) {
    case KIND_COUNTER:
        atomic_init(&s->u.counter.value, 0);
        break;
    case KIND_GAUGE:
        atomic_init(&s->u.gauge.bits, double_to_bits(0.0));
        break;
    case KIND_HISTOGRAM:
        s->u.hist.bounds = f->bounds;
        s->u.hist.nbounds = f->nbounds;
        atomic_init(&s->u.hist.sum_bits, double_to_bits(0.0));
        s->u.hist.counts = (_Atomic uint64_t *)(void *)(s + 1);
        for (size_t i = 0; i < ncounts; i++)
            atomic_init(&s->u.hist.counts[i], 0);
        break;
    }
    return s;
}

static void series_free(struct series *s, size_t nlabels)
{
    if (!s)
        return;
    for (size_t i = 0; i < nlabels; i++)
        free(s->values[i]);
    free(s->values);
    free(s->labels);
    free(s);
}

static void table_insert(struct family *f, struct series *s)
{
    size_t i = s->hash & (f->table_size - 1);
    s->hash_next = f->table[i];
    f->table[i] = s;
}

static void table_grow(struct family *f)
{
    free(f->table);
    f->table_size = f->table_size ? f->table_size * 2 : 16;
    f->table = loom_calloc(f->table_size, sizeof(*f->table));
    for (size_t i = 0; i < f->nseries; i++)
        table_insert(f, f->series[i]);
}

/* Find or create; the caller holds f->lock and passes clean values. */
static struct series *series_find_locked(struct family *f, const char *const *values)
{
    uint64_t hash = hash_values(values, f->nlabels);
    if (f->table_size) {
        for (struct series *s = f->table[hash & (f->table_size - 1)]; s; s = s->hash_next)
            if (s->hash == hash && values_equal(s, values, f->nlabels))
                return s;
    }
    if (f->nseries >= LOOM_METRICS_MAX_SERIES) {
        if (!f->overflow) {
            f->overflow = series_new(f, values, hash);
            const struct loom_kv kv[] = { LOOM_KV_CSTR("metric", f->name),
                                          LOOM_KV_UINT("max_series", LOOM_METRICS_MAX_SERIES) };
            loom_log_kv(LOOM_LOG_WARN, "metrics: too many series, new ones are not exported", kv,
                        LOOM_ARRAY_SIZE(kv));
        }
        return f->overflow;
    }
    struct series *s = series_new(f, values, hash);
    if (f->nseries == f->series_cap) {
        f->series_cap = f->series_cap ? f->series_cap * 2 : 4;
        f->series = loom_realloc(f->series, f->series_cap * sizeof(*f->series));
    }
    f->series[f->nseries++] = s;
    if (f->nseries > f->table_size)
        table_grow(f);
    else
        table_insert(f, s);
    return s;
}

static struct series *series_get(struct family *f, const char *const *values)
{
    const char *clean[MAX_LABELS];
    char *copies[MAX_LABELS] = { 0 };
    if (f->nlabels && !values)
        misuse(f->name, "label values missing");
    for (size_t i = 0; i < f->nlabels; i++) {
        if (!values[i])
            misuse(f->name, "value of label %s is NULL", f->label_names[i]);
        clean[i] = value_is_clean(values[i]) ? values[i] : (copies[i] = value_clean(values[i]));
    }
    pthread_mutex_lock(&f->lock);
    struct series *s = series_find_locked(f, clean);
    pthread_mutex_unlock(&f->lock);
    for (size_t i = 0; i < f->nlabels; i++)
        free(copies[i]);
    return s;
}

/* Families. */

struct shape {
    enum kind kind;
    bool is_fn;
    const char *owner, *name, *help;
    const char *const *label_names;
    size_t nlabels;
    const double *bounds;
    size_t nbounds;
};

static void check_shape(struct shape *sh)
{
    const char *name = sh->name ? sh->name : "(null)";
    if (!valid_metric_name(sh->name))
        misuse(name, "invalid metric name (want [a-zA-Z_:][a-zA-Z0-9_:]*)");
    if (sh->kind == KIND_COUNTER && (!has_suffix(name, "_total") || !strcmp(name, "_total")))
        misuse(name, "a counter's name must end in _total");
    if (sh->kind != KIND_COUNTER && has_suffix(name, "_total"))
        misuse(name, "only counters' names may end in _total");
    if (sh->kind == KIND_GAUGE &&
        (has_suffix(name, "_count") || has_suffix(name, "_sum") || has_suffix(name, "_bucket")))
        misuse(name, "_count, _sum and _bucket are reserved for histograms");
    if (!sh->help || !sh->help[0])
        misuse(name, "help text missing");
    if (sh->owner && !sh->owner[0])
        misuse(name, "empty owner (use NULL for process-wide metrics)");
    if (sh->nlabels > MAX_LABELS)
        misuse(name, "%zu labels, at most %d", sh->nlabels, MAX_LABELS);
    if (sh->nlabels && !sh->label_names)
        misuse(name, "label names missing");
    for (size_t i = 0; i < sh->nlabels; i++) {
        const char *l = sh->label_names[i];
        if (!valid_label_name(l))
            misuse(name, "invalid label name \"%s\" (want [a-zA-Z_][a-zA-Z0-9_]*, no __ prefix)",
                   l ? l : "(null)");
        if (!strcmp(l, "le") || !strcmp(l, "quantile"))
            misuse(name, "label name \"%s\" is reserved", l);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(l, sh->label_names[j]))
                misuse(name, "label name \"%s\" given twice", l);
    }
    if (sh->kind == KIND_HISTOGRAM) {
        if (!sh->bounds && !sh->nbounds) {
            sh->bounds = loom_metrics_latency_buckets;
            sh->nbounds = LOOM_METRICS_LATENCY_BUCKETS_N;
        }
        if (!sh->bounds)
            misuse(name, "bucket bounds missing");
        if (sh->nbounds && isinf(sh->bounds[sh->nbounds - 1]) && sh->bounds[sh->nbounds - 1] > 0)
            sh->nbounds--; /* +Inf is always there */
        for (size_t i = 0; i < sh->nbounds; i++) {
            if (!isfinite(sh->bounds[i]))
                misuse(name, "bucket bound %zu is not finite", i);
            if (i && !(sh->bounds[i] > sh->bounds[i - 1]))
                misuse(name, "bucket bounds must increase (bound %zu)", i);
        }
    }
}

static bool same_shape(const struct family *f, const struct shape *sh)
{
    if (f->kind != sh->kind || f->is_fn != sh->is_fn || f->nlabels != sh->nlabels)
        return false;
    if ((f->owner == NULL) != (sh->owner == NULL) || (f->owner && strcmp(f->owner, sh->owner)))
        return false;
    for (size_t i = 0; i < f->nlabels; i++)
        if (strcmp(f->label_names[i], sh->label_names[i]) != 0)
            return false;
    if (f->kind == KIND_HISTOGRAM) {
        if (f->nbounds != sh->nbounds)
            return false;
        for (size_t i = 0; i < f->nbounds; i++)
            if (f->bounds[i] != sh->bounds[i])
                return false;
    }
    return true;
}

static char *make_header(const struct shape *sh)
{
    struct loom_buf b;
    loom_buf_init(&b, 0);
    loom_buf_printf(&b, "# HELP %s ", sh->name);
    append_escaped(&b, sh->help, false);
    loom_buf_printf(&b, "\n# TYPE %s %s\n", sh->name, kind_names[sh->kind]);
    return loom_buf_detach(&b, NULL);
}

static struct family *family_new(const struct shape *sh)
{
    struct family *f = loom_new(struct family);
    f->kind = sh->kind;
    f->is_fn = sh->is_fn;
    f->name = loom_strdup(sh->name);
    f->owner = sh->owner ? loom_strdup(sh->owner) : NULL;
    f->header = make_header(sh);
    f->nlabels = sh->nlabels;
    f->label_names = loom_calloc(sh->nlabels ? sh->nlabels : 1, sizeof(char *));
    for (size_t i = 0; i < sh->nlabels; i++)
        f->label_names[i] = loom_strdup(sh->label_names[i]);
    if (sh->kind == KIND_HISTOGRAM) {
        f->nbounds = sh->nbounds;
        f->bounds = loom_calloc(sh->nbounds ? sh->nbounds : 1, sizeof(double));
        f->le = loom_calloc(sh->nbounds ? sh->nbounds : 1, sizeof(char *));
        for (size_t i = 0; i < sh->nbounds; i++) {
            char tmp[32], le[48];
            f->bounds[i] = sh->bounds[i];
            loom_fmt_double(sh->bounds[i], tmp);
            snprintf(le, sizeof(le), "le=\"%s\"", tmp);
            f->le[i] = loom_strdup(le);
        }
    }
    pthread_mutex_init(&f->lock, NULL);
    return f;
}

static void family_free(struct family *f)
{
    for (size_t i = 0; i < f->nseries; i++)
        series_free(f->series[i], f->nlabels);
    series_free(f->overflow, f->nlabels);
    free(f->series);
    free(f->table);
    for (size_t i = 0; i < f->nlabels; i++)
        free(f->label_names[i]);
    free(f->label_names);
    for (size_t i = 0; i < f->nbounds; i++)
        free(f->le[i]);
    free(f->le);
    free(f->bounds);
    free(f->name);
    free(f->owner);
    free(f->header);
    pthread_mutex_destroy(&f->lock);
    free(f);
}

static struct family *family_register(struct loom_metrics *reg, struct shape *sh,
                                      loom_metrics_fn fn, void *arg)
{
    check_shape(sh);
    pthread_mutex_lock(&reg->lock);
    for (size_t i = 0; i < reg->nfams; i++) {
        struct family *f = reg->fams[i];
        if (strcmp(f->name, sh->name) != 0)
            continue;
        if (!same_shape(f, sh)) {
            pthread_mutex_unlock(&reg->lock);
            misuse(sh->name,
                   "registered again with another type, owner, labels or buckets "
                   "(first by %s)",
                   f->owner ? f->owner : "the process");
        }
        pthread_mutex_unlock(&reg->lock);
        return f;
    }
    struct family *f = family_new(sh);
    if (sh->nlabels == 0) {
        /* The one series exists from the start, so the page shows it before first use. */
        struct series *s = series_find_locked(f, NULL);
        s->fn = fn;
        s->arg = arg;
    }
    if (reg->nfams == reg->cap) {
        reg->cap = reg->cap ? reg->cap * 2 : 16;
        reg->fams = loom_realloc(reg->fams, reg->cap * sizeof(*reg->fams));
    }
    reg->fams[reg->nfams++] = f;
    pthread_mutex_unlock(&reg->lock);
    return f;
}

struct loom_counter_family *loom_metrics_counter_family(struct loom_metrics *reg, const char *owner,
                                                        const char *name, const char *help,
                                                        const char *const *label_names,
                                                        size_t nlabels)
{
    struct shape sh = { KIND_COUNTER, false, owner, name, help, label_names, nlabels, NULL, 0 };
    return (struct loom_counter_family *)(void *)family_register(reg, &sh, NULL, NULL);
}

struct loom_gauge_family *loom_metrics_gauge_family(struct loom_metrics *reg, const char *owner,
                                                    const char *name, const char *help,
                                                    const char *const *label_names, size_t nlabels)
{
    struct shape sh = { KIND_GAUGE, false, owner, name, help, label_names, nlabels, NULL, 0 };
    return (struct loom_gauge_family *)(void *)family_register(reg, &sh, NULL, NULL);
}

struct loom_histogram_family *
loom_metrics_histogram_family(struct loom_metrics *reg, const char *owner, const char *name,
                              const char *help, const char *const *label_names, size_t nlabels,
                              const double *bounds, size_t nbounds)
{
    struct shape sh = { KIND_HISTOGRAM, false,   owner,  name,   help,
                        label_names,    nlabels, bounds, nbounds };
    return (struct loom_histogram_family *)(void *)family_register(reg, &sh, NULL, NULL);
}

struct loom_counter *loom_metrics_counter(struct loom_metrics *reg, const char *owner,
                                          const char *name, const char *help)
{
    return loom_counter_get(loom_metrics_counter_family(reg, owner, name, help, NULL, 0), NULL);
}

struct loom_gauge *loom_metrics_gauge(struct loom_metrics *reg, const char *owner, const char *name,
                                      const char *help)
{
    return loom_gauge_get(loom_metrics_gauge_family(reg, owner, name, help, NULL, 0), NULL);
}

struct loom_histogram *loom_metrics_histogram(struct loom_metrics *reg, const char *owner,
                                              const char *name, const char *help,
                                              const double *bounds, size_t nbounds)
{
    return loom_histogram_get(
        loom_metrics_histogram_family(reg, owner, name, help, NULL, 0, bounds, nbounds), NULL);
}

void loom_metrics_gauge_fn(struct loom_metrics *reg, const char *owner, const char *name,
                           const char *help, loom_metrics_fn fn, void *arg)
{
    struct shape sh = { KIND_GAUGE, true, owner, name, help, NULL, 0, NULL, 0 };
    if (!fn)
        misuse(name, "callback missing");
    family_register(reg, &sh, fn, arg);
}

void loom_metrics_counter_fn(struct loom_metrics *reg, const char *owner, const char *name,
                             const char *help, loom_metrics_fn fn, void *arg)
{
    struct shape sh = { KIND_COUNTER, true, owner, name, help, NULL, 0, NULL, 0 };
    if (!fn)
        misuse(name, "callback missing");
    family_register(reg, &sh, fn, arg);
}

static struct family *family_of(void *fam, enum kind kind)
{
    struct family *f = fam;
    if (f->kind != kind || f->is_fn)
        misuse(f->name, "used as a %s%s", kind_names[kind], f->is_fn ? " (it is a callback)" : "");
    return f;
}

struct loom_counter *loom_counter_get(struct loom_counter_family *fam,
                                      const char *const *label_values)
{
    return &series_get(family_of(fam, KIND_COUNTER), label_values)->u.counter;
}

struct loom_gauge *loom_gauge_get(struct loom_gauge_family *fam, const char *const *label_values)
{
    return &series_get(family_of(fam, KIND_GAUGE), label_values)->u.gauge;
}

struct loom_histogram *loom_histogram_get(struct loom_histogram_family *fam,
                                          const char *const *label_values)
{
    return &series_get(family_of(fam, KIND_HISTOGRAM), label_values)->u.hist;
}

/* Registry. */

struct loom_metrics *loom_metrics_new(void)
{
    struct loom_metrics *reg = loom_new(struct loom_metrics);
    pthread_mutex_init(&reg->lock, NULL);
    return reg;
}

void loom_metrics_free(struct loom_metrics *reg)
{
    if (!reg)
        return;
    for (size_t i = 0; i < reg->nfams; i++)
        family_free(reg->fams[i]);
    free(reg->fams);
    pthread_mutex_destroy(&reg->lock);
    free(reg);
}

static struct loom_metrics *global_reg;
static pthread_once_t global_once = PTHREAD_ONCE_INIT;

static void global_init(void)
{
    global_reg = loom_metrics_new();
}

struct loom_metrics *loom_metrics_global(void)
{
    pthread_once(&global_once, global_init);
    return global_reg;
}

/* Values. */

void loom_counter_add(struct loom_counter *c, uint64_t n)
{
    atomic_fetch_add_explicit(&c->value, n, memory_order_relaxed);
}

void loom_counter_inc(struct loom_counter *c)
{
    atomic_fetch_add_explicit(&c->value, 1, memory_order_relaxed);
}

uint64_t loom_counter_value(const struct loom_counter *c)
{
    return atomic_load_explicit(&((struct loom_counter *)c)->value, memory_order_relaxed);
}

static void add_double(_Atomic uint64_t *bits, double delta)
{
    uint64_t old = atomic_load_explicit(bits, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(bits, &old,
                                                  double_to_bits(bits_to_double(old) + delta),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

void loom_gauge_set(struct loom_gauge *g, double v)
{
    atomic_store_explicit(&g->bits, double_to_bits(v), memory_order_relaxed);
}

void loom_gauge_add(struct loom_gauge *g, double delta)
{
    add_double(&g->bits, delta);
}

void loom_gauge_sub(struct loom_gauge *g, double delta)
{
    add_double(&g->bits, -delta);
}

void loom_gauge_inc(struct loom_gauge *g)
{
    add_double(&g->bits, 1.0);
}

void loom_gauge_dec(struct loom_gauge *g)
{
    add_double(&g->bits, -1.0);
}

double loom_gauge_value(const struct loom_gauge *g)
{
    return bits_to_double(
        atomic_load_explicit(&((struct loom_gauge *)g)->bits, memory_order_relaxed));
}

void loom_histogram_observe(struct loom_histogram *h, double v)
{
    /* The first bound >= v; NaN compares false everywhere and lands in +Inf. */
    size_t lo = 0, hi = h->nbounds;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (v <= h->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    atomic_fetch_add_explicit(&h->counts[lo], 1, memory_order_relaxed);
    add_double(&h->sum_bits, v);
}

void loom_histogram_observe_ns(struct loom_histogram *h, uint64_t ns)
{
    loom_histogram_observe(h, (double)ns / 1e9);
}

uint64_t loom_histogram_count(const struct loom_histogram *h)
{
    uint64_t n = 0;
    for (size_t i = 0; i <= h->nbounds; i++)
        n += atomic_load_explicit(&h->counts[i], memory_order_relaxed);
    return n;
}

double loom_histogram_sum(const struct loom_histogram *h)
{
    return bits_to_double(
        atomic_load_explicit(&((struct loom_histogram *)h)->sum_bits, memory_order_relaxed));
}

/* Process metrics. */

/* Fields of /proc/self/stat, counted from 3 (state) after the command name. */
enum { STAT_UTIME = 14, STAT_STIME = 15, STAT_STARTTIME = 22, STAT_VSIZE = 23, STAT_RSS = 24 };

static bool read_file(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    size_t len = 0;
    while (len + 1 < size) {
        ssize_t n = read(fd, buf + len, size - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    return len > 0;
}

/* One numeric field of /proc/self/stat (see proc(5)), or NaN. */
static double proc_stat_field(int field)
{
    char buf[1024];
    if (!read_file("/proc/self/stat", buf, sizeof(buf)))
        return NAN;
    /* The command name may hold spaces and parentheses: fields start after the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p)
        return NAN;
    p++;
    for (int i = 3; i <= field; i++) {
        while (*p == ' ')
            p++;
        if (!*p)
            return NAN;
        if (i == field)
            return strtod(p, NULL);
        while (*p && *p != ' ')
            p++;
    }
    return NAN;
}

static double clock_ticks(void)
{
    long t = sysconf(_SC_CLK_TCK);
    return t > 0 ? (double)t : 100.0;
}

static double proc_cpu_seconds(void *arg)
{
    LOOM_UNUSED(arg);
    return (proc_stat_field(STAT_UTIME) + proc_stat_field(STAT_STIME)) / clock_ticks();
}

static double proc_virtual_bytes(void *arg)
{
    LOOM_UNUSED(arg);
    return proc_stat_field(STAT_VSIZE);
}

static double proc_resident_bytes(void *arg)
{
    LOOM_UNUSED(arg);
    long page = sysconf(_SC_PAGESIZE);
    return proc_stat_field(STAT_RSS) * (double)(page > 0 ? page : 4096);
}

static double proc_open_fds(void *arg)
{
    LOOM_UNUSED(arg);
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return NAN;
    double n = 0;
    int self = dirfd(d);
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.' && atoi(e->d_name) != self)
            n++;
    closedir(d);
    return n;
}

static double proc_max_fds(void *arg)
{
    LOOM_UNUSED(arg);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return NAN;
    return rl.rlim_cur == RLIM_INFINITY ? INFINITY : (double)rl.rlim_cur;
}

/* Boot time (btime in /proc/stat) plus the start time in ticks since boot. Constant, so read
 * once. */
static double start_time_seconds = NAN;
static pthread_once_t start_time_once = PTHREAD_ONCE_INIT;

static void start_time_init(void)
{
    FILE *f = fopen("/proc/stat", "re");
    if (!f)
        return;
    char *line = NULL;
    size_t cap = 0;
    double btime = NAN;
    while (getline(&line, &cap, f) > 0) {
        if (strncmp(line, "btime ", 6) == 0) {
            btime = strtod(line + 6, NULL);
            break;
        }
    }
    free(line);
    fclose(f);
    start_time_seconds = btime + proc_stat_field(STAT_STARTTIME) / clock_ticks();
}

static double proc_start_time(void *arg)
{
    LOOM_UNUSED(arg);
    pthread_once(&start_time_once, start_time_init);
    return start_time_seconds;
}

void loom_metrics_register_process(struct loom_metrics *reg)
{
    loom_metrics_counter_fn(reg, NULL, "process_cpu_seconds_total",
                            "Total user and system CPU time spent in seconds.", proc_cpu_seconds,
                            NULL);
    loom_metrics_gauge_fn(reg, NULL, "process_open_fds", "Number of open file descriptors.",
                          proc_open_fds, NULL);
    loom_metrics_gauge_fn(reg, NULL, "process_max_fds", "Maximum number of open file descriptors.",
                          proc_max_fds, NULL);
    loom_metrics_gauge_fn(reg, NULL, "process_virtual_memory_bytes",
                          "Virtual memory size in bytes.", proc_virtual_bytes, NULL);
    loom_metrics_gauge_fn(reg, NULL, "process_resident_memory_bytes",
                          "Resident memory size in bytes.", proc_resident_bytes, NULL);
    loom_metrics_gauge_fn(reg, NULL, "process_start_time_seconds",
                          "Start time of the process since unix epoch in seconds.", proc_start_time,
                          NULL);
    pthread_once(&start_time_once, start_time_init);
}
