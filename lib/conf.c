/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Configuration loading: field tables checked and defaulted at init, then a file in a TOML
 * subset, the environment and the command line applied over them, each value parsed by its
 * field's type and bounds and stored through offsetof into the caller's struct. Every value
 * keeps its source so that --print-config can say where it came from. Strings and lists live in
 * the conf's arena; parsing scratch lives in a per-load arena dropped at the end of the load.
 */
#include <loom/conf.h>
#include <loom/core.h>

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#define CONF_FILE_MAX  ((size_t)1 << 20) /* bytes in a config file */
#define CONF_LINE_MAX  8192              /* bytes in one line of it */
#define CONF_NAME_MAX  48                /* bytes in a section name or key */
#define CONF_QUOTE_MAX 64                /* bytes of a bad value quoted in a message */
#define CONF_NAME_BUF  128               /* a flag or environment name, with room to spare */

struct loom__conf_slot {
    unsigned char source; /* enum loom_conf_source */
    unsigned line;        /* line in conf->file when the source is the file */
};

/* A field by position: conf->sections[sec].fields[fld]. */
struct ref {
    size_t sec, fld;
};

/* A value as read: one string, or (from a file) an array of strings. */
struct value {
    struct loom_str text;
    const struct loom_str *items;
    size_t nitems;
    bool is_array;
};

union parsed {
    const char *s;
    int64_t i;
    bool b;
    double d;
    uint64_t u;
    int e;
    struct loom_conf_list l;
};

static const char *const reserved_keys[] = { "config", "help", "print-config" };

/* ---- Names ---------------------------------------------------------------------------------- */

static const struct loom_conf_field *field_of(const struct loom_conf *conf, struct ref r)
{
    return &conf->sections[r.sec].fields[r.fld];
}

static struct loom__conf_slot *slot_of(const struct loom_conf *conf, struct ref r)
{
    return &conf->slots[r.sec][r.fld];
}

static bool is_valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > CONF_NAME_MAX || !(s[0] >= 'a' && s[0] <= 'z'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return true;
}

/* "inference.listen", or "log-level" for a global. */
static void dotted_name(const struct loom_conf *conf, struct ref r, char *out, size_t size)
{
    const char *sec = conf->sections[r.sec].name;
    snprintf(out, size, "%s%s%s", sec, *sec ? "." : "", field_of(conf, r)->key);
}

size_t loom_conf_env_name(const char *section, const char *key, char *out, size_t size)
{
    size_t n = 0;
    const char *parts[] = { "LOOM_", section, *section ? "_" : "", key };
    for (size_t p = 0; p < LOOM_ARRAY_SIZE(parts); p++) {
        for (const char *c = parts[p]; *c; c++, n++) {
            char ch = *c == '-' ? '_' : (char)toupper((unsigned char)*c);
            if (n + 1 < size)
                out[n] = ch;
        }
    }
    if (size)
        out[n < size ? n : size - 1] = '\0';
    return n;
}

static void env_name_of(const struct loom_conf *conf, struct ref r, char *out, size_t size)
{
    loom_conf_env_name(conf->sections[r.sec].name, field_of(conf, r)->key, out, size);
}

static bool section_exists(const struct loom_conf *conf, struct loom_str name)
{
    for (size_t i = 0; i < conf->nsections; i++)
        if (loom_str_eq_cstr(name, conf->sections[i].name))
            return true;
    return false;
}

static bool find_field(const struct loom_conf *conf, struct loom_str section, struct loom_str key,
                       struct ref *out)
{
    for (size_t s = 0; s < conf->nsections; s++) {
        if (!loom_str_eq_cstr(section, conf->sections[s].name))
            continue;
        for (size_t f = 0; f < conf->sections[s].nfields; f++) {
            if (loom_str_eq_cstr(key, conf->sections[s].fields[f].key)) {
                *out = (struct ref){ s, f };
                return true;
            }
        }
    }
    return false;
}

/* ---- Suggestions ---------------------------------------------------------------------------- */

/* Edit distance with transpositions (optimal string alignment), ASCII case-insensitive.
 * Names are short, so longer inputs are simply not compared. */
static size_t edit_distance(struct loom_str a, struct loom_str b)
{
    enum { N = CONF_NAME_BUF };
    if (a.len >= N || b.len >= N)
        return SIZE_MAX;
    size_t rows[3][N];
    size_t *pp = rows[0], *p = rows[1], *c = rows[2];
    for (size_t j = 0; j <= b.len; j++)
        p[j] = j;
    for (size_t i = 1; i <= a.len; i++) {
        c[0] = i;
        for (size_t j = 1; j <= b.len; j++) {
            char x = (char)tolower((unsigned char)a.ptr[i - 1]);
            char y = (char)tolower((unsigned char)b.ptr[j - 1]);
            size_t best = p[j - 1] + (x != y);
            best = LOOM_MIN(best, p[j] + 1);
            best = LOOM_MIN(best, c[j - 1] + 1);
            if (i > 1 && j > 1 && x == tolower((unsigned char)b.ptr[j - 2]) &&
                tolower((unsigned char)a.ptr[i - 2]) == y)
                best = LOOM_MIN(best, pp[j - 2] + 1);
            c[j] = best;
        }
        size_t *t = pp;
        pp = p;
        p = c;
        c = t;
    }
    return p[b.len];
}

/* The closest candidate offered so far, if it is close enough to be a typo. */
struct suggest {
    struct loom_str word;
    size_t dist;
    char best[CONF_NAME_BUF];
};

static void suggest_init(struct suggest *s, struct loom_str word)
{
    s->word = word;
    s->dist = SIZE_MAX;
    s->best[0] = '\0';
}

static void suggest_offer(struct suggest *s, const char *cand)
{
    struct loom_str c = loom_str_cstr(cand);
    size_t d = edit_distance(s->word, c);
    size_t longest = LOOM_MAX(s->word.len, c.len);
    size_t limit = longest <= 4 ? 1 : longest <= 8 ? 2 : 3;
    if (d <= limit && d < s->dist && c.len < sizeof(s->best)) {
        s->dist = d;
        memcpy(s->best, cand, c.len + 1);
    }
}

/* ---- Messages ------------------------------------------------------------------------------- */

/* `v` double-quoted for a message: escaped, and shortened with "..." when long. */
static const char *quote(struct loom_str v, char *out, size_t size)
{
    size_t n = 0;
    out[n++] = '"';
    for (size_t i = 0; i < v.len; i++) {
        unsigned char c = (unsigned char)v.ptr[i];
        char esc[8];
        if (c == '"' || c == '\\')
            snprintf(esc, sizeof(esc), "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            snprintf(esc, sizeof(esc), "\\x%02x", c);
        else
            snprintf(esc, sizeof(esc), "%c", c);
        size_t len = strlen(esc);
        if (n + len + 5 > size) {
            memcpy(out + n, "...", 3);
            n += 3;
            break;
        }
        memcpy(out + n, esc, len);
        n += len;
    }
    out[n++] = '"';
    out[n] = '\0';
    return out;
}

/* Durations and sizes in the largest unit that divides them exactly, in a form the parsers
 * read back. */
static const char *format_duration(uint64_t ns, char *out, size_t size)
{
    static const char *const units[] = { "h", "m", "s", "ms", "us" };
    static const uint64_t scales[] = { 3600 * LOOM_NS_PER_SEC, 60 * LOOM_NS_PER_SEC,
                                       LOOM_NS_PER_SEC, LOOM_NS_PER_MS, LOOM_NS_PER_US };
    if (ns == 0) {
        snprintf(out, size, "0s");
        return out;
    }
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(units); i++) {
        if (ns % scales[i] == 0) {
            snprintf(out, size, "%" PRIu64 "%s", ns / scales[i], units[i]);
            return out;
        }
    }
    snprintf(out, size, "%" PRIu64 "ns", ns);
    return out;
}

static const char *format_size(uint64_t bytes, char *out, size_t size)
{
    static const char *const units[] = { "GiB", "MiB", "KiB", "GB", "MB", "kB" };
    static const uint64_t scales[] = { 1ull << 30,    1ull << 20, 1ull << 10,
                                       1000000000ull, 1000000ull, 1000ull };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(units) && bytes; i++) {
        if (bytes % scales[i] == 0) {
            snprintf(out, size, "%" PRIu64 "%s", bytes / scales[i], units[i]);
            return out;
        }
    }
    snprintf(out, size, "%" PRIu64, bytes);
    return out;
}

/* A bound of a field, in the field's units. */
static const char *format_bound(const struct loom_conf_field *f, int64_t v, char *out, size_t size)
{
    if (f->type == LOOM_CONF_DURATION)
        return format_duration(v < 0 ? 0 : (uint64_t)v, out, size);
    if (f->type == LOOM_CONF_SIZE)
        return format_size(v < 0 ? 0 : (uint64_t)v, out, size);
    snprintf(out, size, "%" PRId64, v);
    return out;
}

static loom_err out_of_range(const struct loom_conf_field *f, const char *qv,
                             struct loom_error *err)
{
    if (f->min < f->max) {
        char lo[32], hi[32];
        return loom_error_set(err, LOOM_EINVAL, "%s is out of range %s..%s", qv,
                              format_bound(f, f->min, lo, sizeof(lo)),
                              format_bound(f, f->max, hi, sizeof(hi)));
    }
    return loom_error_set(err, LOOM_EINVAL, "%s is out of range", qv);
}

/* ---- Parsing a value by type ---------------------------------------------------------------- */

static bool is_host_char(char c)
{
    return isalnum((unsigned char)c) || c == '-' || c == '.' || c == '_';
}

static bool is_ipv6_char(char c)
{
    return isxdigit((unsigned char)c) || c == ':' || c == '.';
}

static loom_err check_addr(struct loom_str s, bool allow_empty, const char *qv,
                           struct loom_error *err)
{
    if (s.len == 0) {
        if (allow_empty)
            return LOOM_OK;
        return loom_error_set(err, LOOM_EINVAL,
                              "%s is not HOST:PORT (e.g. 127.0.0.1:8080, or :8080 for all "
                              "interfaces)",
                              qv);
    }
    if (loom_str_has_prefix(s, LOOM_STR("unix:"))) {
        size_t max = sizeof(((struct sockaddr_un *)0)->sun_path) - 1; /* 107 on Linux */
        if (s.len < 7 || s.ptr[5] != '/' || s.len - 5 > max)
            return loom_error_set(err, LOOM_EINVAL,
                                  "%s is not unix:/ABSOLUTE/PATH (of at most %zu bytes)", qv, max);
        return LOOM_OK;
    }
    struct loom_str host, port;
    if (s.ptr[0] == '[') {
        ptrdiff_t close = loom_str_index(s, ']');
        if (close < 0)
            return loom_error_set(err, LOOM_EINVAL, "%s is not HOST:PORT (missing \"]\")", qv);
        host = loom_str_make(s.ptr + 1, (size_t)close - 1);
        struct loom_str rest = loom_str_make(s.ptr + close + 1, s.len - (size_t)close - 1);
        if (rest.len == 0 || rest.ptr[0] != ':')
            return loom_error_set(err, LOOM_EINVAL, "%s is not HOST:PORT (missing :PORT)", qv);
        port = loom_str_make(rest.ptr + 1, rest.len - 1);
        /* An optional zone follows '%': "[fe80::1%eth0]:80". */
        struct loom_str zone = loom_str_cut(host, '%', &host);
        bool ok = host.len > 0 && loom_str_index(host, ':') >= 0;
        for (size_t i = 0; ok && i < host.len; i++)
            ok = is_ipv6_char(host.ptr[i]);
        for (size_t i = 0; ok && i < zone.len; i++)
            ok = is_host_char(zone.ptr[i]);
        if (!ok)
            return loom_error_set(err, LOOM_EINVAL,
                                  "%s is not HOST:PORT (bad IPv6 address in brackets)", qv);
    } else {
        ptrdiff_t colon = -1;
        for (size_t i = 0; i < s.len; i++)
            if (s.ptr[i] == ':')
                colon = (ptrdiff_t)i;
        if (colon < 0)
            return loom_error_set(err, LOOM_EINVAL, "%s is not HOST:PORT", qv);
        host = loom_str_make(s.ptr, (size_t)colon);
        port = loom_str_make(s.ptr + colon + 1, s.len - (size_t)colon - 1);
        if (loom_str_index(host, ':') >= 0)
            return loom_error_set(err, LOOM_EINVAL,
                                  "%s is not HOST:PORT (write IPv6 addresses in brackets, "
                                  "e.g. [::1]:8080)",
                                  qv);
        bool ok = host.len <= 253;
        for (size_t i = 0; ok && i < host.len; i++)
            ok = is_host_char(host.ptr[i]);
        if (!ok)
            return loom_error_set(err, LOOM_EINVAL, "%s is not HOST:PORT (bad host name)", qv);
    }
    uint64_t p;
    if (port.len == 0)
        return loom_error_set(err, LOOM_EINVAL, "%s is not HOST:PORT (the port is missing)", qv);
    if (loom_str_to_u64(port, &p) != LOOM_OK || p > 65535)
        return loom_error_set(err, LOOM_EINVAL,
                              "%s is not HOST:PORT (the port must be a number in 0..65535)", qv);
    return LOOM_OK;
}

static loom_err parse_enum(const struct loom_conf_field *f, struct loom_str s, const char *qv,
                           int *out, struct loom_error *err)
{
    struct suggest sg;
    suggest_init(&sg, s);
    char list[160];
    size_t n = 0;
    list[0] = '\0';
    for (int i = 0; f->choices[i]; i++) {
        if (loom_str_ieq(s, loom_str_cstr(f->choices[i]))) {
            *out = i;
            return LOOM_OK;
        }
        suggest_offer(&sg, f->choices[i]);
        if (n < sizeof(list))
            n += (size_t)snprintf(list + n, sizeof(list) - n, "%s%s", i ? ", " : "", f->choices[i]);
    }
    if (sg.best[0])
        return loom_error_set(err, LOOM_EINVAL, "%s is not one of: %s (did you mean \"%s\"?)", qv,
                              list, sg.best);
    return loom_error_set(err, LOOM_EINVAL, "%s is not one of: %s", qv, list);
}

static loom_err parse_list(struct loom_conf *conf, const struct value *v, const char *qv,
                           struct loom_conf_list *out, struct loom_error *err)
{
    struct loom_conf_list l = { NULL, 0 };
    if (v->is_array) {
        l.items = loom_arena_alloc(&conf->arena, (v->nitems ? v->nitems : 1) * sizeof(char *));
        for (size_t i = 0; i < v->nitems; i++) {
            struct loom_str item = loom_str_trim(v->items[i]);
            if (item.len == 0)
                return loom_error_set(err, LOOM_EINVAL, "item %zu of the array is empty", i + 1);
            l.items[l.n++] = loom_arena_strndup(&conf->arena, item.ptr, item.len);
        }
        *out = l;
        return LOOM_OK;
    }
    struct loom_str s = loom_str_trim(v->text);
    if (s.len == 0) {
        *out = l;
        return LOOM_OK;
    }
    size_t cap = 1;
    for (size_t i = 0; i < s.len; i++)
        cap += s.ptr[i] == ',';
    l.items = loom_arena_alloc(&conf->arena, cap * sizeof(char *));
    while (s.ptr) {
        struct loom_str item;
        s = loom_str_cut(s, ',', &item);
        item = loom_str_trim(item);
        if (item.len == 0)
            return loom_error_set(err, LOOM_EINVAL,
                                  "%s has an empty item (items are separated by commas)", qv);
        l.items[l.n++] = loom_arena_strndup(&conf->arena, item.ptr, item.len);
    }
    *out = l;
    return LOOM_OK;
}

/* Parse `v` for field `f` into *out (strings and lists copied into the conf's arena). The
 * message says what is wrong with the value; the caller prefixes where it came from. */
static loom_err parse_value(struct loom_conf *conf, const struct loom_conf_field *f,
                            const struct value *v, union parsed *out, struct loom_error *err)
{
    if (v->is_array && f->type != LOOM_CONF_LIST)
        return loom_error_set(err, LOOM_EINVAL, "an array is accepted only for lists");
    char qbuf[CONF_QUOTE_MAX + 16];
    const char *qv =
        f->flags & LOOM_CONF_SECRET ? "(redacted)" : quote(v->text, qbuf, sizeof(qbuf));
    /* Only strings keep surrounding spaces; everything else is a token. */
    struct loom_str s = f->type == LOOM_CONF_STRING ? v->text : loom_str_trim(v->text);
    loom_err rc;
    switch (f->type) {
    case LOOM_CONF_STRING:
        out->s = loom_arena_strndup(&conf->arena, s.ptr, s.len);
        return LOOM_OK;
    case LOOM_CONF_INT:
        rc = loom_str_to_i64(s, &out->i);
        if (rc == LOOM_EINVAL)
            return loom_error_set(err, LOOM_EINVAL, "%s is not an integer", qv);
        if (rc != LOOM_OK || (f->min < f->max && (out->i < f->min || out->i > f->max)))
            return out_of_range(f, qv, err);
        return LOOM_OK;
    case LOOM_CONF_BOOL:
        if (loom_str_to_bool(s, &out->b) != LOOM_OK)
            return loom_error_set(err, LOOM_EINVAL,
                                  "%s is not a boolean (true/false, yes/no, on/off, 1/0)", qv);
        return LOOM_OK;
    case LOOM_CONF_DOUBLE:
        rc = loom_str_to_double(s, &out->d);
        if (rc == LOOM_OK && !isfinite(out->d))
            return loom_error_set(err, LOOM_EINVAL, "%s is not a finite number", qv);
        if (rc != LOOM_OK)
            return loom_error_set(err, LOOM_EINVAL, "%s is not a number", qv);
        return LOOM_OK;
    case LOOM_CONF_DURATION:
    case LOOM_CONF_SIZE:
        if (f->type == LOOM_CONF_DURATION)
            rc = loom_str_to_duration_ns(s, &out->u);
        else
            rc = loom_str_to_size(s, &out->u);
        if (rc == LOOM_EINVAL && f->type == LOOM_CONF_DURATION)
            return loom_error_set(err, LOOM_EINVAL,
                                  "%s is not a duration (a whole number with a unit: 250ms, 5s, "
                                  "2m, 1h)",
                                  qv);
        if (rc == LOOM_EINVAL)
            return loom_error_set(err, LOOM_EINVAL,
                                  "%s is not a size (a whole number of bytes with an optional "
                                  "unit: 512, 64KiB, 10MB, 1GiB)",
                                  qv);
        if (rc != LOOM_OK || (f->min < f->max && ((f->min > 0 && out->u < (uint64_t)f->min) ||
                                                  f->max < 0 || out->u > (uint64_t)f->max)))
            return out_of_range(f, qv, err);
        return LOOM_OK;
    case LOOM_CONF_ENUM:
        return parse_enum(f, s, qv, &out->e, err);
    case LOOM_CONF_ADDR:
        rc = check_addr(s, !f->def || !*f->def, qv, err);
        if (rc == LOOM_OK)
            out->s = loom_arena_strndup(&conf->arena, s.ptr, s.len);
        return rc;
    case LOOM_CONF_LIST:
        return parse_list(conf, v, qv, &out->l, err);
    }
    return loom_error_set(err, LOOM_EINTERNAL, "unknown setting type %d", (int)f->type);
}

static void store(struct loom_conf *conf, struct ref r, const union parsed *p)
{
    const struct loom_conf_field *f = field_of(conf, r);
    char *dst = (char *)conf->sections[r.sec].base + f->offset;
    switch (f->type) {
    case LOOM_CONF_STRING:
    case LOOM_CONF_ADDR:
        memcpy(dst, &p->s, sizeof(p->s));
        break;
    case LOOM_CONF_INT:
        memcpy(dst, &p->i, sizeof(p->i));
        break;
    case LOOM_CONF_BOOL:
        memcpy(dst, &p->b, sizeof(p->b));
        break;
    case LOOM_CONF_DOUBLE:
        memcpy(dst, &p->d, sizeof(p->d));
        break;
    case LOOM_CONF_DURATION:
    case LOOM_CONF_SIZE:
        memcpy(dst, &p->u, sizeof(p->u));
        break;
    case LOOM_CONF_ENUM:
        memcpy(dst, &p->e, sizeof(p->e));
        break;
    case LOOM_CONF_LIST:
        memcpy(dst, &p->l, sizeof(p->l));
        break;
    }
}

/* Parse and store `v` into field `r`, recording its source; on error the message starts with
 * where the value came from: "--inference.listen", "LOOM_INFERENCE_LISTEN",
 * "loom.conf:12: inference.listen". */
static loom_err apply(struct loom_conf *conf, struct ref r, const struct value *v,
                      enum loom_conf_source source, unsigned line, struct loom_error *err)
{
    union parsed p;
    loom_err rc = parse_value(conf, field_of(conf, r), v, &p, err);
    if (rc != LOOM_OK) {
        char name[CONF_NAME_BUF];
        switch (source) {
        case LOOM_CONF_FROM_FLAG:
            dotted_name(conf, r, name, sizeof(name));
            return loom_error_prefix(err, "--%s", name);
        case LOOM_CONF_FROM_ENV:
            env_name_of(conf, r, name, sizeof(name));
            return loom_error_prefix(err, "%s", name);
        case LOOM_CONF_FROM_FILE:
            dotted_name(conf, r, name, sizeof(name));
            return loom_error_prefix(err, "%s", name);
        case LOOM_CONF_FROM_DEFAULT:
            dotted_name(conf, r, name, sizeof(name));
            return loom_error_prefix(err, "the default of %s", name);
        }
        return rc;
    }
    store(conf, r, &p);
    slot_of(conf, r)->source = (unsigned char)source;
    slot_of(conf, r)->line = line;
    return LOOM_OK;
}

static struct value scalar(const char *s)
{
    return (struct value){ .text = loom_str_cstr(s) };
}

/* ---- Init ----------------------------------------------------------------------------------- */

__attribute__((noreturn, format(printf, 1, 2))) static void table_bug(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("loom conf: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(" (a bug in a field table)\n", stderr);
    va_end(ap);
    abort();
}

static void check_tables(const struct loom_conf *conf)
{
    for (size_t s = 0; s < conf->nsections; s++) {
        const struct loom_conf_section *sec = &conf->sections[s];
        if (!sec->name || (*sec->name && !is_valid_name(sec->name)))
            table_bug("section name \"%s\" is not kebab-case", sec->name ? sec->name : "(null)");
        if (sec->nfields && (!sec->fields || !sec->base))
            table_bug("section [%s] has no fields array or no base struct", sec->name);
        for (size_t f = 0; f < sec->nfields; f++) {
            const struct loom_conf_field *fd = &sec->fields[f];
            if (!fd->key || !is_valid_name(fd->key))
                table_bug("key \"%s\" in [%s] is not kebab-case", fd->key ? fd->key : "(null)",
                          sec->name);
            for (size_t i = 0; !*sec->name && i < LOOM_ARRAY_SIZE(reserved_keys); i++)
                if (strcmp(fd->key, reserved_keys[i]) == 0)
                    table_bug("global key \"%s\" is reserved for the command line", fd->key);
            if ((unsigned)fd->type > LOOM_CONF_LIST)
                table_bug("%s has an unknown type %d", fd->key, (int)fd->type);
            if (fd->type == LOOM_CONF_ENUM && (!fd->choices || !fd->choices[0]))
                table_bug("enum %s has no choices", fd->key);
            char env[CONF_NAME_BUF];
            env_name_of(conf, (struct ref){ s, f }, env, sizeof(env));
            /* Two names map to one variable if they are equal, or if dashes and the section
             * dot line up ("a.b-c" and "a-b.c"); either is a bug in the tables. */
            for (size_t s2 = 0; s2 <= s; s2++) {
                const struct loom_conf_section *sec2 = &conf->sections[s2];
                for (size_t f2 = 0; f2 < (s2 == s ? f : sec2->nfields); f2++) {
                    char env2[CONF_NAME_BUF];
                    env_name_of(conf, (struct ref){ s2, f2 }, env2, sizeof(env2));
                    if (strcmp(env, env2) != 0)
                        continue;
                    if (strcmp(sec->name, sec2->name) == 0)
                        table_bug("key \"%s\" is declared twice in [%s]", fd->key, sec->name);
                    char a[CONF_NAME_BUF], b[CONF_NAME_BUF];
                    dotted_name(conf, (struct ref){ s2, f2 }, a, sizeof(a));
                    dotted_name(conf, (struct ref){ s, f }, b, sizeof(b));
                    table_bug("%s and %s share the environment variable %s", a, b, env);
                }
            }
        }
    }
}

static const char *zero_default(const struct loom_conf_field *f)
{
    switch (f->type) {
    case LOOM_CONF_INT:
    case LOOM_CONF_DOUBLE:
    case LOOM_CONF_DURATION:
    case LOOM_CONF_SIZE:
        return "0";
    case LOOM_CONF_BOOL:
        return "false";
    case LOOM_CONF_ENUM:
        return f->choices[0];
    case LOOM_CONF_STRING:
    case LOOM_CONF_ADDR:
    case LOOM_CONF_LIST:
        break;
    }
    return "";
}

void loom_conf_init(struct loom_conf *conf, const struct loom_conf_section *sections, size_t n)
{
    memset(conf, 0, sizeof(*conf));
    conf->sections = sections;
    conf->nsections = n;
    loom_arena_init(&conf->arena, 0);
    check_tables(conf);
    conf->slots = loom_arena_zalloc(&conf->arena, (n ? n : 1) * sizeof(*conf->slots));
    for (size_t s = 0; s < n; s++) {
        size_t nf = sections[s].nfields;
        conf->slots[s] = loom_arena_zalloc(&conf->arena, (nf ? nf : 1) * sizeof(**conf->slots));
        for (size_t f = 0; f < nf; f++) {
            const struct loom_conf_field *fd = &sections[s].fields[f];
            struct value v = scalar(fd->def ? fd->def : zero_default(fd));
            struct loom_error err = { 0 };
            if (apply(conf, (struct ref){ s, f }, &v, LOOM_CONF_FROM_DEFAULT, 0, &err))
                table_bug("%s", err.msg);
        }
    }
}

void loom_conf_release(struct loom_conf *conf)
{
    loom_arena_release(&conf->arena);
    memset(conf, 0, sizeof(*conf));
}

bool loom_conf_source_of(const struct loom_conf *conf, const char *section, const char *key,
                         enum loom_conf_source *out)
{
    struct ref r;
    if (!find_field(conf, loom_str_cstr(section), loom_str_cstr(key), &r))
        return false;
    *out = (enum loom_conf_source)slot_of(conf, r)->source;
    return true;
}

/* ---- The file ------------------------------------------------------------------------------- */

static struct loom_str trim_left(struct loom_str s)
{
    while (s.len && (s.ptr[0] == ' ' || s.ptr[0] == '\t')) {
        s.ptr++;
        s.len--;
    }
    return s;
}

static struct loom_str skip(struct loom_str s, size_t n)
{
    return loom_str_make(s.ptr + n, s.len - n);
}

static size_t put_utf8(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* A TOML basic string at s (s.ptr[0] is '"'): its decoded text in *out (scratch arena) and
 * what follows the closing quote in *rest. Decoding never grows the text. */
static loom_err decode_basic(struct loom_arena *a, struct loom_str s, struct loom_str *out,
                             struct loom_str *rest, struct loom_error *err)
{
    char *buf = loom_arena_alloc(a, s.len + 1);
    size_t n = 0, i = 1;
    for (;;) {
        if (i >= s.len)
            return loom_error_set(err, LOOM_EPARSE, "unterminated string (missing closing \")");
        char c = s.ptr[i++];
        if (c == '"')
            break;
        if (c != '\\') {
            buf[n++] = c;
            continue;
        }
        if (i >= s.len)
            return loom_error_set(err, LOOM_EPARSE, "unterminated string (missing closing \")");
        c = s.ptr[i++];
        switch (c) {
        case '"':
        case '\\':
            buf[n++] = c;
            break;
        case 'n':
            buf[n++] = '\n';
            break;
        case 't':
            buf[n++] = '\t';
            break;
        case 'r':
            buf[n++] = '\r';
            break;
        case 'b':
            buf[n++] = '\b';
            break;
        case 'f':
            buf[n++] = '\f';
            break;
        case 'u':
        case 'U': {
            size_t digits = c == 'u' ? 4 : 8;
            uint32_t cp = 0;
            bool ok = i + digits <= s.len;
            for (size_t k = 0; ok && k < digits; k++) {
                char h = s.ptr[i + k];
                ok = isxdigit((unsigned char)h);
                cp = cp * 16 + (uint32_t)(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
            }
            if (!ok || cp == 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                return loom_error_set(err, LOOM_EPARSE,
                                      "bad \\%c escape (write \\u followed by 4 hex digits of a "
                                      "Unicode scalar value other than 0)",
                                      c);
            i += digits;
            n += put_utf8(cp, buf + n);
            break;
        }
        default:
            if (c > 0x20 && c < 0x7f)
                return loom_error_set(err, LOOM_EPARSE,
                                      "unknown escape \\%c in a string (write a backslash as "
                                      "\\\\)",
                                      c);
            return loom_error_set(err, LOOM_EPARSE,
                                  "unknown escape in a string (write a backslash as \\\\)");
        }
    }
    buf[n] = '\0';
    *out = loom_str_make(buf, n);
    *rest = skip(s, i);
    return LOOM_OK;
}

/* A TOML literal string at s (s.ptr[0] is '\''): no escapes. */
static loom_err decode_literal(struct loom_str s, struct loom_str *out, struct loom_str *rest,
                               struct loom_error *err)
{
    ptrdiff_t close = loom_str_index(skip(s, 1), '\'');
    if (close < 0)
        return loom_error_set(err, LOOM_EPARSE, "unterminated string (missing closing ')");
    *out = loom_str_make(s.ptr + 1, (size_t)close);
    *rest = skip(s, (size_t)close + 2);
    return LOOM_OK;
}

static loom_err decode_string(struct loom_arena *a, struct loom_str s, struct loom_str *out,
                              struct loom_str *rest, struct loom_error *err)
{
    if (s.len >= 3 && s.ptr[1] == s.ptr[0] && s.ptr[2] == s.ptr[0])
        return loom_error_set(err, LOOM_EPARSE, "multi-line strings are not supported");
    if (s.ptr[0] == '"')
        return decode_basic(a, s, out, rest, err);
    return decode_literal(s, out, rest, err);
}

/* After a value only a comment may follow. */
static loom_err expect_end(struct loom_str rest, struct loom_error *err)
{
    rest = loom_str_trim(rest);
    if (rest.len == 0 || rest.ptr[0] == '#')
        return LOOM_OK;
    char q[CONF_QUOTE_MAX + 16];
    return loom_error_set(err, LOOM_EPARSE, "unexpected %s after the value",
                          quote(rest, q, sizeof(q)));
}

/* A bare token runs to the end of the line or to a '#' that follows a space. */
static struct loom_str bare_token(struct loom_str s)
{
    for (size_t i = 1; i < s.len; i++)
        if (s.ptr[i] == '#' && (s.ptr[i - 1] == ' ' || s.ptr[i - 1] == '\t'))
            return loom_str_trim(loom_str_make(s.ptr, i));
    return loom_str_trim(s);
}

/* A one-line array of strings (or bare tokens) at s (s.ptr[0] is '['). */
static loom_err parse_array(struct loom_arena *a, struct loom_str s, struct value *v,
                            struct loom_error *err)
{
    size_t cap = 8;
    struct loom_str *items = loom_arena_alloc(a, cap * sizeof(*items));
    size_t n = 0;
    struct loom_str rest = skip(s, 1);
    for (;;) {
        rest = trim_left(rest);
        if (rest.len == 0 || rest.ptr[0] == '#')
            return loom_error_set(err, LOOM_EPARSE,
                                  "unterminated array (missing \"]\"; arrays must be on one line)");
        if (rest.ptr[0] == ']') {
            rest = skip(rest, 1);
            break;
        }
        struct loom_str item;
        if (rest.ptr[0] == '"' || rest.ptr[0] == '\'') {
            loom_err rc = decode_string(a, rest, &item, &rest, err);
            if (rc)
                return rc;
        } else if (rest.ptr[0] == '[') {
            return loom_error_set(err, LOOM_EPARSE, "nested arrays are not supported");
        } else {
            size_t len = 0;
            while (len < rest.len && rest.ptr[len] != ',' && rest.ptr[len] != ']')
                len++;
            item = loom_str_trim(loom_str_make(rest.ptr, len));
            if (item.len == 0)
                return loom_error_set(err, LOOM_EPARSE, "empty item in the array");
            rest = skip(rest, len);
        }
        if (n == cap) {
            struct loom_str *more = loom_arena_alloc(a, 2 * cap * sizeof(*items));
            memcpy(more, items, cap * sizeof(*items));
            items = more;
            cap *= 2;
        }
        items[n++] = item;
        rest = trim_left(rest);
        if (rest.len && rest.ptr[0] == ',') {
            rest = skip(rest, 1);
            continue;
        }
        if (rest.len && rest.ptr[0] == ']') {
            rest = skip(rest, 1);
            break;
        }
        return loom_error_set(err, LOOM_EPARSE, "expected \",\" or \"]\" in the array");
    }
    v->is_array = true;
    v->items = items;
    v->nitems = n;
    return expect_end(rest, err);
}

/* The value after "key =". */
static loom_err parse_file_value(struct loom_arena *a, struct loom_str s, struct value *v,
                                 struct loom_error *err)
{
    memset(v, 0, sizeof(*v));
    if (s.len == 0 || s.ptr[0] == '#')
        return loom_error_set(err, LOOM_EPARSE,
                              "missing value after \"=\" (write \"\" for an empty string)");
    if (s.ptr[0] == '[')
        return parse_array(a, s, v, err);
    if (s.ptr[0] == '"' || s.ptr[0] == '\'') {
        struct loom_str rest;
        loom_err rc = decode_string(a, s, &v->text, &rest, err);
        return rc ? rc : expect_end(rest, err);
    }
    v->text = bare_token(s);
    return LOOM_OK;
}

/* An unknown key in a file: suggest a close key of the same section, or say where it
 * belongs if it is a key of another section or a global. */
static loom_err unknown_key(const struct loom_conf *conf, struct loom_str section,
                            struct loom_str key, struct loom_error *err)
{
    char q[CONF_QUOTE_MAX + 16];
    char where[CONF_NAME_BUF + 8];
    quote(key, q, sizeof(q));
    if (section.len)
        snprintf(where, sizeof(where), " in [%.*s]", LOOM_STR_FMT(section));
    else
        snprintf(where, sizeof(where), " at the top level");
    struct suggest sg;
    suggest_init(&sg, key);
    for (size_t s = 0; s < conf->nsections; s++)
        if (loom_str_eq_cstr(section, conf->sections[s].name))
            for (size_t f = 0; f < conf->sections[s].nfields; f++)
                suggest_offer(&sg, conf->sections[s].fields[f].key);
    if (sg.best[0])
        return loom_error_set(err, LOOM_EINVAL, "unknown key %s%s (did you mean \"%s\"?)", q, where,
                              sg.best);
    for (size_t s = 0; s < conf->nsections; s++) {
        const char *name = conf->sections[s].name;
        for (size_t f = 0; f < conf->sections[s].nfields; f++) {
            if (!loom_str_eq_cstr(key, conf->sections[s].fields[f].key))
                continue;
            if (!*name)
                return loom_error_set(err, LOOM_EINVAL,
                                      "unknown key %s%s (it is a global key: move it above the "
                                      "first [section])",
                                      q, where);
            return loom_error_set(err, LOOM_EINVAL, "unknown key %s%s (it belongs in [%s])", q,
                                  where, name);
        }
    }
    return loom_error_set(err, LOOM_EINVAL, "unknown key %s%s", q, where);
}

/* One non-blank line; *section is the current [section] and may be changed. */
static loom_err parse_line(struct loom_conf *conf, struct loom_arena *scratch, struct loom_str s,
                           unsigned line, struct loom_str *section, struct loom_error *err)
{
    char q[CONF_QUOTE_MAX + 16];
    if (s.ptr[0] == '[') {
        ptrdiff_t close = loom_str_index(s, ']');
        if (s.len > 1 && s.ptr[1] == '[')
            return loom_error_set(err, LOOM_EPARSE, "arrays of tables ([[...]]) are not supported");
        if (close < 0)
            return loom_error_set(err, LOOM_EPARSE, "missing \"]\" after the section name");
        struct loom_str rest = loom_str_trim(skip(s, (size_t)close + 1));
        if (rest.len && rest.ptr[0] != '#')
            return loom_error_set(err, LOOM_EPARSE, "unexpected %s after [section]",
                                  quote(rest, q, sizeof(q)));
        struct loom_str name = loom_str_trim(loom_str_make(s.ptr + 1, (size_t)close - 1));
        if (name.len == 0 || !section_exists(conf, name)) {
            struct suggest sg;
            suggest_init(&sg, name);
            for (size_t i = 0; i < conf->nsections; i++)
                if (*conf->sections[i].name)
                    suggest_offer(&sg, conf->sections[i].name);
            if (sg.best[0])
                return loom_error_set(err, LOOM_EINVAL,
                                      "unknown section [%.*s] (did you mean [%s]?)",
                                      (int)LOOM_MIN(name.len, CONF_QUOTE_MAX), name.ptr, sg.best);
            return loom_error_set(err, LOOM_EINVAL, "unknown section [%.*s]",
                                  (int)LOOM_MIN(name.len, CONF_QUOTE_MAX), name.ptr);
        }
        *section = name;
        return LOOM_OK;
    }
    struct loom_str key;
    struct loom_str rest = loom_str_cut(s, '=', &key);
    if (!rest.ptr)
        return loom_error_set(err, LOOM_EPARSE, "expected key = value or [section], got %s",
                              quote(s, q, sizeof(q)));
    key = loom_str_trim(key);
    struct ref r;
    if (!find_field(conf, *section, key, &r))
        return unknown_key(conf, *section, key, err);
    struct loom__conf_slot *slot = slot_of(conf, r);
    if (slot->source == LOOM_CONF_FROM_FILE)
        return loom_error_set(err, LOOM_EINVAL, "%s is set twice (first on line %u)",
                              quote(key, q, sizeof(q)), slot->line);
    struct value v;
    loom_err rc = parse_file_value(scratch, loom_str_trim(rest), &v, err);
    if (rc)
        return rc;
    return apply(conf, r, &v, LOOM_CONF_FROM_FILE, line, err);
}

loom_err loom_conf_load_text(struct loom_conf *conf, const char *name, const char *text, size_t len,
                             struct loom_error *err)
{
    if (len > CONF_FILE_MAX)
        return loom_error_set(err, LOOM_ETOOBIG, "%s: the config file is larger than 1 MiB", name);
    conf->file = loom_arena_strndup(&conf->arena, name, strlen(name));
    struct loom_arena scratch;
    loom_arena_init(&scratch, 0);
    struct loom_str rest = loom_str_make(text, len);
    struct loom_str section = LOOM_STR("");
    loom_err rc = LOOM_OK;
    /* A UTF-8 byte order mark is allowed at the start. */
    if (rest.len >= 3 && memcmp(rest.ptr, "\xef\xbb\xbf", 3) == 0)
        rest = skip(rest, 3);
    for (unsigned line = 1; rest.ptr && rest.len; line++) {
        struct loom_str s;
        rest = loom_str_cut(rest, '\n', &s);
        if (s.len > CONF_LINE_MAX) {
            rc = loom_error_set(err, LOOM_ETOOBIG, "%s:%u: the line is longer than 8 KiB",
                                conf->file, line);
            break;
        }
        if (s.len && s.ptr[s.len - 1] == '\r')
            s.len--;
        if (memchr(s.ptr, '\0', s.len)) {
            rc = loom_error_set(err, LOOM_EPARSE, "%s:%u: NUL byte in the line", conf->file, line);
            break;
        }
        s = loom_str_trim(s);
        if (s.len == 0 || s.ptr[0] == '#')
            continue;
        rc = parse_line(conf, &scratch, s, line, &section, err);
        if (rc) {
            loom_error_prefix(err, "%s:%u", conf->file, line);
            break;
        }
    }
    loom_arena_release(&scratch);
    return rc;
}

static loom_err load_file(struct loom_conf *conf, const char *path, const char *via,
                          struct loom_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return loom_error_errno(err, "cannot read the config file %s (from %s)", path, via);
    struct loom_buf b;
    loom_buf_init(&b, CONF_FILE_MAX);
    loom_err rc = LOOM_OK;
    char chunk[16384];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (loom_buf_append(&b, chunk, n) != LOOM_OK) {
            rc =
                loom_error_set(err, LOOM_ETOOBIG, "%s: the config file is larger than 1 MiB", path);
            goto out_close;
        }
    }
    if (ferror(f)) {
        rc = loom_error_errno(err, "cannot read the config file %s (from %s)", path, via);
        goto out_close;
    }
    rc = loom_conf_load_text(conf, path, b.data ? b.data : "", b.len, err);
out_close:
    fclose(f);
    loom_buf_release(&b);
    return rc;
}

/* ---- Environment ---------------------------------------------------------------------------- */

static const char *env_lookup(char *const *envp, const char *name)
{
    size_t n = strlen(name);
    for (char *const *e = envp; e && *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

/* LOOM_<SECTION>_<unknown>: an error with the closest variable of that section. */
static loom_err unknown_env(const struct loom_conf *conf, struct loom_str name,
                            struct loom_error *err)
{
    for (size_t s = 0; s < conf->nsections; s++) {
        const char *sec = conf->sections[s].name;
        char prefix[CONF_NAME_BUF];
        if (!*sec)
            continue;
        size_t plen = loom_conf_env_name(sec, "", prefix, sizeof(prefix));
        if (name.len <= plen || !loom_str_has_prefix(name, loom_str_make(prefix, plen)))
            continue;
        struct suggest sg;
        suggest_init(&sg, name);
        for (size_t s2 = 0; s2 < conf->nsections; s2++) {
            if (strcmp(conf->sections[s2].name, sec) != 0)
                continue;
            for (size_t f = 0; f < conf->sections[s2].nfields; f++) {
                char env[CONF_NAME_BUF];
                env_name_of(conf, (struct ref){ s2, f }, env, sizeof(env));
                suggest_offer(&sg, env);
            }
        }
        int shown = (int)LOOM_MIN(name.len, CONF_QUOTE_MAX);
        if (sg.best[0])
            return loom_error_set(err, LOOM_EINVAL,
                                  "%.*s: unknown setting for [%s] (did you mean %s?)", shown,
                                  name.ptr, sec, sg.best);
        return loom_error_set(err, LOOM_EINVAL,
                              "%.*s: unknown setting for [%s] (see loom --help for the keys)",
                              shown, name.ptr, sec);
    }
    return LOOM_OK;
}

static loom_err apply_env(struct loom_conf *conf, char *const *envp, struct loom_error *err)
{
    for (char *const *e = envp; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq || strncmp(*e, "LOOM_", 5) != 0)
            continue;
        struct loom_str name = loom_str_make(*e, (size_t)(eq - *e));
        if (loom_str_eq_cstr(name, "LOOM_CONFIG"))
            continue;
        bool found = false;
        for (size_t s = 0; s < conf->nsections && !found; s++) {
            for (size_t f = 0; f < conf->sections[s].nfields && !found; f++) {
                char env[CONF_NAME_BUF];
                env_name_of(conf, (struct ref){ s, f }, env, sizeof(env));
                if (!loom_str_eq_cstr(name, env))
                    continue;
                found = true;
                struct value v = scalar(eq + 1);
                loom_err rc = apply(conf, (struct ref){ s, f }, &v, LOOM_CONF_FROM_ENV, 0, err);
                if (rc)
                    return rc;
            }
        }
        if (!found) {
            loom_err rc = unknown_env(conf, name, err);
            if (rc)
                return rc;
        }
    }
    return LOOM_OK;
}

/* ---- Command line --------------------------------------------------------------------------- */

struct flag {
    struct ref r;
    const char *value;
};

static bool is_option(const char *a)
{
    return a[0] == '-' && a[1] == '-';
}

static loom_err unknown_option(const struct loom_conf *conf, struct loom_str name,
                               struct loom_error *err)
{
    struct suggest sg;
    suggest_init(&sg, name);
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(reserved_keys); i++)
        suggest_offer(&sg, reserved_keys[i]);
    for (size_t s = 0; s < conf->nsections; s++) {
        for (size_t f = 0; f < conf->sections[s].nfields; f++) {
            char dn[CONF_NAME_BUF];
            dotted_name(conf, (struct ref){ s, f }, dn, sizeof(dn));
            suggest_offer(&sg, dn);
        }
    }
    /* No close spelling: perhaps the right key under another section, or a global. */
    struct loom_str key = name;
    struct loom_str tail = loom_str_cut(name, '.', &key);
    if (tail.ptr)
        key = tail;
    for (size_t s = 0; s < conf->nsections && !sg.best[0]; s++) {
        for (size_t f = 0; f < conf->sections[s].nfields && !sg.best[0]; f++) {
            if (loom_str_eq_cstr(key, conf->sections[s].fields[f].key))
                dotted_name(conf, (struct ref){ s, f }, sg.best, sizeof(sg.best));
        }
    }
    int shown = (int)LOOM_MIN(name.len, CONF_QUOTE_MAX);
    if (sg.best[0])
        return loom_error_set(err, LOOM_EINVAL, "unknown option --%.*s (did you mean --%s?)", shown,
                              name.ptr, sg.best);
    if (section_exists(conf, name))
        return loom_error_set(err, LOOM_EINVAL,
                              "unknown option --%.*s (set a key of [%.*s] with --%.*s.KEY=VALUE)",
                              shown, name.ptr, shown, name.ptr, shown, name.ptr);
    return loom_error_set(err, LOOM_EINVAL, "unknown option --%.*s (see --help)", shown, name.ptr);
}

/* Split argv into flags (applied later, above the file and the environment), positional
 * arguments (into conf->args) and --config. With `lenient`, for --help, unknown options and
 * missing values are skipped instead of reported. */
static loom_err scan_args(struct loom_conf *conf, int argc, char *const *argv, bool lenient,
                          struct flag *flags, size_t *nflags, const char **config,
                          struct loom_error *err)
{
    bool options = true;
    conf->args = loom_arena_alloc(&conf->arena, (size_t)(argc > 0 ? argc : 1) * sizeof(char *));
    for (int i = 1; i < argc && argv[i]; i++) {
        const char *a = argv[i];
        if (!options || !is_option(a)) {
            if (options && strcmp(a, "-h") == 0)
                conf->help = true;
            else
                conf->args[conf->nargs++] = loom_arena_strndup(&conf->arena, a, strlen(a));
            continue;
        }
        if (a[2] == '\0') {
            options = false;
            continue;
        }
        const char *eq = strchr(a, '=');
        struct loom_str name = loom_str_make(a + 2, eq ? (size_t)(eq - a - 2) : strlen(a + 2));
        const char *value = eq ? eq + 1 : NULL;
        if (loom_str_eq_cstr(name, "help") || loom_str_eq_cstr(name, "print-config")) {
            if (value && !lenient)
                return loom_error_set(err, LOOM_EINVAL, "--%.*s takes no value",
                                      LOOM_STR_FMT(name));
            if (name.ptr[0] == 'h')
                conf->help = true;
            else
                conf->print_config = true;
            continue;
        }
        if (loom_str_eq_cstr(name, "config")) {
            if (!value && i + 1 < argc && argv[i + 1] && !is_option(argv[i + 1]))
                value = argv[++i];
            if ((!value || !*value) && !lenient)
                return loom_error_set(err, LOOM_EINVAL,
                                      "missing value after --config (write --config FILE)");
            *config = value;
            continue;
        }
        struct loom_str section = LOOM_STR("");
        struct loom_str key = name;
        struct loom_str tail = loom_str_cut(name, '.', &section);
        if (tail.ptr)
            key = tail;
        else
            section = LOOM_STR("");
        struct ref r;
        if ((tail.ptr && section.len == 0) || !find_field(conf, section, key, &r)) {
            if (lenient)
                continue;
            return unknown_option(conf, name, err);
        }
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!value && field_of(conf, r)->type == LOOM_CONF_BOOL) {
            /* A bare boolean is true; "true"/"false" after it are taken, since leaving them
             * as positional arguments would only surprise. */
            value = "true";
            if (next && (strcmp(next, "true") == 0 || strcmp(next, "false") == 0))
                value = argv[++i];
        } else if (!value) {
            if (!next || is_option(next)) {
                if (lenient)
                    continue;
                return loom_error_set(err, LOOM_EINVAL,
                                      "missing value after --%.*s (write --%.*s=VALUE)",
                                      LOOM_STR_FMT(name), LOOM_STR_FMT(name));
            }
            value = argv[++i];
        }
        flags[(*nflags)++] = (struct flag){ r, value };
    }
    return LOOM_OK;
}

loom_err loom_conf_load(struct loom_conf *conf, int argc, char *const *argv, char *const *envp,
                        struct loom_error *err)
{
    bool help = false;
    for (int i = 1; i < argc && argv[i] && strcmp(argv[i], "--") != 0; i++)
        help = help || strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0;
    struct flag *flags = loom_calloc(argc > 0 ? (size_t)argc : 1, sizeof(*flags));
    size_t nflags = 0;
    const char *config = NULL, *via = "--config";
    loom_err rc = scan_args(conf, argc, argv, help, flags, &nflags, &config, err);
    if (help) {
        /* Even if "-h" was taken as the value of a flag before it. */
        conf->help = true;
        goto out_free;
    }
    if (rc)
        goto out_free;
    if (!config && envp) {
        config = env_lookup(envp, "LOOM_CONFIG");
        via = "LOOM_CONFIG";
        if (config && !*config)
            config = NULL;
    }
    if (config && (rc = load_file(conf, config, via, err)) != LOOM_OK)
        goto out_free;
    if (envp && (rc = apply_env(conf, envp, err)) != LOOM_OK)
        goto out_free;
    for (size_t i = 0; i < nflags; i++) {
        struct value v = scalar(flags[i].value);
        if ((rc = apply(conf, flags[i].r, &v, LOOM_CONF_FROM_FLAG, 0, err)) != LOOM_OK)
            goto out_free;
    }
out_free:
    free(flags);
    return rc;
}

/* ---- Output --------------------------------------------------------------------------------- */

/* `s` as a TOML basic string. */
static void put_quoted(struct loom_buf *b, const char *s)
{
    loom_buf_putc(b, '"');
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        switch (c) {
        case '"':
            loom_buf_append_cstr(b, "\\\"");
            break;
        case '\\':
            loom_buf_append_cstr(b, "\\\\");
            break;
        case '\n':
            loom_buf_append_cstr(b, "\\n");
            break;
        case '\t':
            loom_buf_append_cstr(b, "\\t");
            break;
        case '\r':
            loom_buf_append_cstr(b, "\\r");
            break;
        default:
            if (c < 0x20 || c == 0x7f)
                loom_buf_printf(b, "\\u%04x", c);
            else
                loom_buf_putc(b, (char)c);
        }
    }
    loom_buf_putc(b, '"');
}

static void put_double(struct loom_buf *b, double d)
{
    char tmp[LOOM_FMT_DOUBLE_MAX];
    loom_buf_append(b, tmp, loom_fmt_double(d, tmp));
}

static void put_value(const struct loom_conf *conf, struct ref r, struct loom_buf *b)
{
    const struct loom_conf_field *f = field_of(conf, r);
    const char *p = (const char *)conf->sections[r.sec].base + f->offset;
    char tmp[40];
    const char *s;
    int64_t i;
    bool yes;
    double d;
    uint64_t u;
    int e;
    struct loom_conf_list l;
    switch (f->type) {
    case LOOM_CONF_STRING:
    case LOOM_CONF_ADDR:
        memcpy(&s, p, sizeof(s));
        put_quoted(b, s ? s : "");
        break;
    case LOOM_CONF_INT:
        memcpy(&i, p, sizeof(i));
        loom_buf_append_i64(b, i);
        break;
    case LOOM_CONF_BOOL:
        memcpy(&yes, p, sizeof(yes));
        loom_buf_append_cstr(b, yes ? "true" : "false");
        break;
    case LOOM_CONF_DOUBLE:
        memcpy(&d, p, sizeof(d));
        put_double(b, d);
        break;
    case LOOM_CONF_DURATION:
        memcpy(&u, p, sizeof(u));
        put_quoted(b, format_duration(u, tmp, sizeof(tmp)));
        break;
    case LOOM_CONF_SIZE:
        memcpy(&u, p, sizeof(u));
        put_quoted(b, format_size(u, tmp, sizeof(tmp)));
        break;
    case LOOM_CONF_ENUM:
        memcpy(&e, p, sizeof(e));
        for (int k = 0; f->choices[k]; k++) {
            if (k == e) {
                put_quoted(b, f->choices[k]);
                return;
            }
        }
        loom_buf_printf(b, "%d", e); /* the program stored a bad index; show it */
        break;
    case LOOM_CONF_LIST:
        memcpy(&l, p, sizeof(l));
        loom_buf_putc(b, '[');
        for (size_t k = 0; k < l.n; k++) {
            if (k)
                loom_buf_append_cstr(b, ", ");
            put_quoted(b, l.items[k]);
        }
        loom_buf_putc(b, ']');
        break;
    }
}

/* Secrets print as "<redacted>" unless they are empty (whether one is set is not a secret). */
static bool is_empty_string(const struct loom_conf *conf, struct ref r)
{
    const struct loom_conf_field *f = field_of(conf, r);
    const char *p = (const char *)conf->sections[r.sec].base + f->offset;
    if (f->type == LOOM_CONF_STRING || f->type == LOOM_CONF_ADDR) {
        const char *s;
        memcpy(&s, p, sizeof(s));
        return !s || !*s;
    }
    return false;
}

static void put_setting(const struct loom_conf *conf, struct ref r, struct loom_buf *b)
{
    loom_buf_printf(b, "%s = ", field_of(conf, r)->key);
    if ((field_of(conf, r)->flags & LOOM_CONF_SECRET) && !is_empty_string(conf, r))
        loom_buf_append_cstr(b, "\"<redacted>\"");
    else
        put_value(conf, r, b);
}

static void put_source(const struct loom_conf *conf, struct ref r, struct loom_buf *b)
{
    const struct loom__conf_slot *slot = slot_of(conf, r);
    char env[CONF_NAME_BUF];
    switch ((enum loom_conf_source)slot->source) {
    case LOOM_CONF_FROM_DEFAULT:
        loom_buf_append_cstr(b, "# default");
        break;
    case LOOM_CONF_FROM_FILE:
        loom_buf_printf(b, "# file %s:%u", conf->file ? conf->file : "", slot->line);
        break;
    case LOOM_CONF_FROM_ENV:
        env_name_of(conf, r, env, sizeof(env));
        loom_buf_printf(b, "# env %s", env);
        break;
    case LOOM_CONF_FROM_FLAG:
        loom_buf_append_cstr(b, "# flag");
        break;
    }
}

/* Whether sections[i] is the first with its name: same-named sections print as one. */
static bool is_first_of_name(const struct loom_conf *conf, size_t i)
{
    for (size_t j = 0; j < i; j++)
        if (strcmp(conf->sections[j].name, conf->sections[i].name) == 0)
            return false;
    return true;
}

static void print_block(const struct loom_conf *conf, const char *name, FILE *out)
{
    struct loom_buf b;
    loom_buf_init(&b, 0);
    size_t width = 0;
    for (size_t s = 0; s < conf->nsections; s++) {
        if (strcmp(conf->sections[s].name, name) != 0)
            continue;
        for (size_t f = 0; f < conf->sections[s].nfields; f++) {
            loom_buf_reset(&b);
            put_setting(conf, (struct ref){ s, f }, &b);
            width = LOOM_MAX(width, LOOM_MIN(b.len, (size_t)40));
        }
    }
    if (*name)
        fprintf(out, "\n[%s]\n", name);
    for (size_t s = 0; s < conf->nsections; s++) {
        if (strcmp(conf->sections[s].name, name) != 0)
            continue;
        for (size_t f = 0; f < conf->sections[s].nfields; f++) {
            struct ref r = { s, f };
            loom_buf_reset(&b);
            put_setting(conf, r, &b);
            while (b.len < width)
                loom_buf_putc(&b, ' ');
            loom_buf_append_cstr(&b, "  ");
            put_source(conf, r, &b);
            fprintf(out, "%s\n", b.data);
        }
    }
    loom_buf_release(&b);
}

void loom_conf_print(const struct loom_conf *conf, FILE *out)
{
    fputs("# loom: effective configuration; each value is followed by its source.\n"
          "# Load this file with --config FILE.\n",
          out);
    print_block(conf, "", out);
    for (size_t s = 0; s < conf->nsections; s++)
        if (*conf->sections[s].name && is_first_of_name(conf, s))
            print_block(conf, conf->sections[s].name, out);
}

static void put_flag_form(const struct loom_conf *conf, struct ref r, struct loom_buf *b)
{
    const struct loom_conf_field *f = field_of(conf, r);
    char dn[CONF_NAME_BUF];
    dotted_name(conf, r, dn, sizeof(dn));
    loom_buf_printf(b, "  --%s", dn);
    switch (f->type) {
    case LOOM_CONF_STRING:
        loom_buf_append_cstr(b, "=STRING");
        break;
    case LOOM_CONF_INT:
        loom_buf_append_cstr(b, "=INT");
        break;
    case LOOM_CONF_BOOL:
        loom_buf_append_cstr(b, "[=BOOL]");
        break;
    case LOOM_CONF_DOUBLE:
        loom_buf_append_cstr(b, "=NUMBER");
        break;
    case LOOM_CONF_DURATION:
        loom_buf_append_cstr(b, "=DURATION");
        break;
    case LOOM_CONF_SIZE:
        loom_buf_append_cstr(b, "=SIZE");
        break;
    case LOOM_CONF_ENUM:
        for (int i = 0; f->choices[i]; i++)
            loom_buf_printf(b, "%c%s", i ? '|' : '=', f->choices[i]);
        break;
    case LOOM_CONF_ADDR:
        loom_buf_append_cstr(b, "=HOST:PORT");
        break;
    case LOOM_CONF_LIST:
        loom_buf_append_cstr(b, "=A,B,...");
        break;
    }
}

static void usage_block(const struct loom_conf *conf, const char *name, FILE *out)
{
    struct loom_buf b;
    loom_buf_init(&b, 0);
    size_t width = 0;
    for (size_t s = 0; s < conf->nsections; s++) {
        if (strcmp(conf->sections[s].name, name) != 0)
            continue;
        for (size_t f = 0; f < conf->sections[s].nfields; f++) {
            loom_buf_reset(&b);
            put_flag_form(conf, (struct ref){ s, f }, &b);
            width = LOOM_MAX(width, LOOM_MIN(b.len, (size_t)44));
        }
    }
    char env[CONF_NAME_BUF];
    loom_conf_env_name(name, "<KEY>", env, sizeof(env));
    if (*name)
        fprintf(out, "\n[%s] settings (environment: %s):\n", name, env);
    else
        fprintf(out, "\nGlobal settings (environment: %s):\n", env);
    for (size_t s = 0; s < conf->nsections; s++) {
        if (strcmp(conf->sections[s].name, name) != 0)
            continue;
        for (size_t f = 0; f < conf->sections[s].nfields; f++) {
            const struct loom_conf_field *fd = &conf->sections[s].fields[f];
            loom_buf_reset(&b);
            put_flag_form(conf, (struct ref){ s, f }, &b);
            if (b.len > width) {
                /* Too long for the column: the help goes on the next line. */
                fprintf(out, "%s\n", b.data);
                loom_buf_reset(&b);
            }
            while (b.len < width + 2)
                loom_buf_putc(&b, ' ');
            loom_buf_append_cstr(&b, fd->help ? fd->help : "");
            if (fd->def && *fd->def)
                loom_buf_printf(&b, " (default %s)", fd->def);
            if (fd->min < fd->max && (fd->type == LOOM_CONF_INT || fd->type == LOOM_CONF_DURATION ||
                                      fd->type == LOOM_CONF_SIZE)) {
                char lo[32], hi[32];
                loom_buf_printf(&b, " [%s..%s]", format_bound(fd, fd->min, lo, sizeof(lo)),
                                format_bound(fd, fd->max, hi, sizeof(hi)));
            }
            fprintf(out, "%s\n", b.data);
        }
    }
    loom_buf_release(&b);
}

void loom_conf_usage(const struct loom_conf *conf, const char *section, FILE *out)
{
    if (section) {
        if (section_exists(conf, loom_str_cstr(section)))
            usage_block(conf, section, out);
        else
            fprintf(out, "no settings for [%s]\n", section);
        return;
    }
    fputs("Options:\n"
          "  --config FILE     read settings from FILE (also LOOM_CONFIG)\n"
          "  --print-config    print the effective configuration and exit\n"
          "  --help, -h        print this help and exit\n"
          "Settings are applied in this order, each overriding the one before: defaults,\n"
          "the --config file, environment variables, command-line flags.\n",
          out);
    if (section_exists(conf, LOOM_STR("")))
        usage_block(conf, "", out);
    for (size_t s = 0; s < conf->nsections; s++)
        if (*conf->sections[s].name && is_first_of_name(conf, s))
            usage_block(conf, conf->sections[s].name, out);
}
