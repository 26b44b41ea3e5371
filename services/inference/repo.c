/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The control plane: the model repository. Work here runs on the work pool under ctl_mu, never
 * on a loop thread: it reads directories and files and parses models that may be large. Its
 * records (struct ctl_model) say, per model, the configuration in force and every version with
 * its state; publish() turns them into an immutable snapshot for the loops and retires the old
 * one. A version that fails to load leaves what was serving in place: the failure is recorded
 * (and shown by /v2/repository/index) and the previous versions keep answering.
 */
#include "inference/inference.h"

#include <loom/event.h>
#include <loom/http_client.h>
#include <loom/json.h>
#include <loom/log.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct ctl_version {
    int64_t version;
    enum inf_state state;
    char *reason;
    struct inf_version *v; /* a reference, when READY */
};

struct ctl_model {
    char *name;
    struct inf_config *config; /* in force; NULL until one parsed */
    enum inf_state state;
    char *reason;
    bool wanted;        /* explicit mode: loaded by request (or at start) */
    bool from_registry; /* served from --inference.models, not the repository directory */
    struct ctl_version *versions;
    size_t nversions;
};

struct inf_ctl {
    struct ctl_model *models;
    size_t nmodels;
};

const char *inf_state_name(enum inf_state s)
{
    switch (s) {
    case INF_READY:
        return "READY";
    case INF_UNAVAILABLE:
        return "UNAVAILABLE";
    case INF_LOADING:
        return "LOADING";
    case INF_UNLOADING:
        return "UNLOADING";
    default:
        return "UNKNOWN";
    }
}

bool inf_valid_model_name(struct loom_str name, struct loom_error *err)
{
    if (name.len == 0 || name.len > 200) {
        loom_error_set(err, LOOM_EINVAL, "model names are 1 to 200 characters");
        return false;
    }
    if (loom_str_eq_cstr(name, ".") || loom_str_eq_cstr(name, "..") ||
        memmem(name.ptr, name.len, "..", 2)) {
        loom_error_set(err, LOOM_EINVAL, "model name \"%.*s\" must not contain \"..\"",
                       LOOM_STR_FMT(name));
        return false;
    }
    for (size_t i = 0; i < name.len; i++) {
        char c = name.ptr[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.')) {
            loom_error_set(err, LOOM_EINVAL,
                           "model name \"%.*s\" may only hold letters, digits, '.', '_' and '-'",
                           LOOM_STR_FMT(name));
            return false;
        }
    }
    return true;
}

/* ---- versions ---- */

struct inf_version *inf_version_ref(struct inf_version *v)
{
    atomic_fetch_add_explicit(&v->refs, 1, memory_order_relaxed);
    return v;
}

void inf_version_unref(struct inf_version *v)
{
    if (!v || atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) != 1)
        return;
    inf_batchers_free(v);
    loom_model_free(v->model);
    inf_config_unref(v->config);
    free(v->model_name);
    free(v);
}

static struct inf_version *version_new(struct inf_service *inf, const char *name, int64_t version,
                                       struct inf_config *config, struct loom_model *model,
                                       const struct stat *st)
{
    struct inf_version *v = loom_new(struct inf_version);
    atomic_init(&v->refs, 1);
    v->inf = inf;
    v->model_name = loom_strdup(name);
    v->version = version;
    snprintf(v->version_str, sizeof(v->version_str), "%lld", (long long)version);
    v->config = inf_config_ref(config);
    v->model = model;
    v->info = loom_model_info(model);
    v->file_mtime_ns =
        (uint64_t)st->st_mtim.tv_sec * LOOM_NS_PER_SEC + (uint64_t)st->st_mtim.tv_nsec;
    v->file_size = (uint64_t)st->st_size;
    v->stats = inf_stats_for(inf, name, version);
    inf_version_metrics(inf, v);
    inf_batchers_init(inf, v);
    return v;
}

/* ---- files ---- */

static char *path_join(const char *a, const char *b, const char *c)
{
    size_t n = strlen(a) + strlen(b) + (c ? strlen(c) : 0) + 3;
    char *p = loom_malloc(n);
    if (c)
        snprintf(p, n, "%s/%s/%s", a, b, c);
    else
        snprintf(p, n, "%s/%s", a, b);
    return p;
}

/* Read a whole file of at most `max` bytes (caller frees). */
static char *read_file(const char *path, uint64_t max, size_t *len, struct stat *st,
                       struct loom_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        loom_error_errno(err, "open %s", path);
        return NULL;
    }
    char *data = NULL;
    if (fstat(fd, st) < 0) {
        loom_error_errno(err, "stat %s", path);
        goto out;
    }
    if (!S_ISREG(st->st_mode)) {
        loom_error_set(err, LOOM_EINVAL, "%s is not a regular file", path);
        goto out;
    }
    if ((uint64_t)st->st_size > max) {
        loom_error_set(err, LOOM_ETOOBIG, "%s is %lld bytes, over the limit of %llu", path,
                       (long long)st->st_size, (unsigned long long)max);
        goto out;
    }
    size_t size = (size_t)st->st_size, got = 0;
    data = loom_malloc(size + 1);
    while (got < size) {
        ssize_t n = read(fd, data + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            loom_error_set(err, LOOM_EIO, "%s: short read", path);
            free(data);
            data = NULL;
            goto out;
        }
        got += (size_t)n;
    }
    data[size] = '\0';
    *len = size;
out:
    close(fd);
    return data;
}

/* ---- records ---- */

static void ctl_version_clear(struct ctl_version *cv)
{
    free(cv->reason);
    inf_version_unref(cv->v);
    memset(cv, 0, sizeof(*cv));
}

static void set_reason(char **slot, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_reason(char **slot, const char *fmt, ...)
{
    free(*slot);
    *slot = NULL;
    if (!fmt)
        return;
    char msg[LOOM_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    *slot = loom_strdup(msg);
}

static struct ctl_model *ctl_find(struct inf_ctl *ctl, const char *name, bool create)
{
    for (size_t i = 0; i < ctl->nmodels; i++)
        if (strcmp(ctl->models[i].name, name) == 0)
            return &ctl->models[i];
    if (!create)
        return NULL;
    ctl->models = loom_realloc(ctl->models, (ctl->nmodels + 1) * sizeof(*ctl->models));
    struct ctl_model *m = &ctl->models[ctl->nmodels++];
    memset(m, 0, sizeof(*m));
    m->name = loom_strdup(name);
    return m;
}

static void ctl_model_drop_versions(struct ctl_model *m)
{
    for (size_t i = 0; i < m->nversions; i++)
        ctl_version_clear(&m->versions[i]);
    free(m->versions);
    m->versions = NULL;
    m->nversions = 0;
}

static bool model_ready(const struct ctl_model *m)
{
    for (size_t i = 0; i < m->nversions; i++)
        if (m->versions[i].state == INF_READY)
            return true;
    return false;
}

/* ---- snapshots ---- */

static int cmp_snap_model(const void *a, const void *b)
{
    return strcmp(((const struct inf_snap_model *)a)->name,
                  ((const struct inf_snap_model *)b)->name);
}

static void snapshot_free(struct inf_snapshot *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nmodels; i++) {
        struct inf_snap_model *m = &s->models[i];
        for (size_t j = 0; j < m->nversions; j++) {
            free(m->versions[j].reason);
            inf_version_unref(m->versions[j].v);
        }
        free(m->versions);
        free(m->name);
        free(m->reason);
        inf_config_unref(m->config);
    }
    free(s->models);
    free(s);
}

struct inf_retire {
    struct inf_retire *next, *prev;
    struct inf_service *inf;
    struct inf_snapshot *snap;
    atomic_size_t left;
    struct loom_task tasks[]; /* one per loop */
};

static void retire_unlink(struct inf_service *inf, struct inf_retire *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        inf->retiring_list = r->next;
    if (r->next)
        r->next->prev = r->prev;
}

/* Runs on each loop between callbacks: a point where the loop holds no snapshot pointer. */
static void retire_quiescent(struct loom_task *t)
{
    struct inf_loop *lp = inf_loop_of(loom_loop_current());
    struct inf_retire *r = LOOM_CONTAINER_OF(t, struct inf_retire, tasks[lp->index]);
    if (atomic_fetch_sub(&r->left, 1) != 1)
        return;
    struct inf_service *inf = r->inf;
    pthread_mutex_lock(&inf->retire_mu);
    retire_unlink(inf, r);
    pthread_mutex_unlock(&inf->retire_mu);
    snapshot_free(r->snap);
    free(r);
}

static void retire(struct inf_service *inf, struct inf_snapshot *old)
{
    if (!old)
        return;
    struct inf_retire *r = loom_calloc(1, sizeof(*r) + inf->nloops * sizeof(struct loom_task));
    r->inf = inf;
    r->snap = old;
    atomic_init(&r->left, inf->nloops);
    pthread_mutex_lock(&inf->retire_mu);
    r->next = inf->retiring_list;
    if (r->next)
        r->next->prev = r;
    inf->retiring_list = r;
    pthread_mutex_unlock(&inf->retire_mu);
    for (size_t i = 0; i < inf->nloops; i++)
        loom_loop_post(inf->loops[i].loop, &r->tasks[i], retire_quiescent);
}

/* Build a snapshot from the records and make it current. Under ctl_mu. */
static void publish(struct inf_service *inf)
{
    struct inf_ctl *ctl = inf->ctl;
    struct inf_snapshot *s = loom_new(struct inf_snapshot);
    s->models = loom_calloc(ctl->nmodels ? ctl->nmodels : 1, sizeof(*s->models));
    for (size_t i = 0; i < ctl->nmodels; i++) {
        const struct ctl_model *cm = &ctl->models[i];
        if (!cm->nversions && cm->state == INF_UNKNOWN)
            continue; /* known on disk only: listed by the index, not servable */
        struct inf_snap_model *m = &s->models[s->nmodels++];
        m->name = loom_strdup(cm->name);
        m->state = model_ready(cm) ? INF_READY : (cm->state ? cm->state : INF_UNAVAILABLE);
        m->reason = cm->reason ? loom_strdup(cm->reason) : NULL;
        m->config = cm->config && model_ready(cm) ? inf_config_ref(cm->config) : NULL;
        m->versions = loom_calloc(cm->nversions ? cm->nversions : 1, sizeof(*m->versions));
        for (size_t j = 0; j < cm->nversions; j++) {
            const struct ctl_version *cv = &cm->versions[j];
            struct inf_snap_version *sv = &m->versions[m->nversions++];
            sv->version = cv->version;
            sv->state = cv->state;
            sv->reason = cv->reason ? loom_strdup(cv->reason) : NULL;
            sv->v = cv->v ? inf_version_ref(cv->v) : NULL;
        }
    }
    qsort(s->models, s->nmodels, sizeof(*s->models), cmp_snap_model);
    struct inf_snapshot *old = atomic_exchange_explicit(&inf->snap, s, memory_order_acq_rel);
    inf_publish_state_metrics(inf, s);
    retire(inf, old);
}

const struct inf_snap_model *inf_snap_find(const struct inf_snapshot *s, struct loom_str name)
{
    size_t lo = 0, hi = s->nmodels;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const char *n = s->models[mid].name;
        size_t nlen = strlen(n);
        int c = memcmp(n, name.ptr, LOOM_MIN(nlen, name.len));
        if (c == 0)
            c = nlen < name.len ? -1 : nlen > name.len;
        if (c == 0)
            return &s->models[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const struct inf_snap_version *inf_snap_pick(const struct inf_snap_model *m, int64_t version)
{
    for (size_t i = m->nversions; i-- > 0;) {
        const struct inf_snap_version *sv = &m->versions[i];
        if (version > 0 ? sv->version == version : sv->state == INF_READY)
            return sv;
    }
    return NULL;
}

/* ---- syncing a model with the repository ---- */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The numeric version directories of a model, ascending (caller frees). */
static int64_t *list_versions(const char *dir, size_t *n)
{
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return NULL;
    size_t cap = 8;
    int64_t *v = loom_calloc(cap, sizeof(*v));
    struct dirent *e;
    while ((e = readdir(d))) {
        int64_t ver;
        if (e->d_name[0] == '0' || loom_str_to_i64(loom_str_cstr(e->d_name), &ver) || ver < 1)
            continue;
        char *p = path_join(dir, e->d_name, NULL);
        struct stat st;
        bool isdir = stat(p, &st) == 0 && S_ISDIR(st.st_mode);
        free(p);
        if (!isdir)
            continue;
        if (*n == cap)
            v = loom_realloc(v, (cap *= 2) * sizeof(*v));
        v[(*n)++] = ver;
    }
    closedir(d);
    qsort(v, *n, sizeof(*v), cmp_i64);
    return v;
}

/* Which of the available versions the policy serves (in place, ascending). */
static size_t apply_policy(const struct inf_config *c, int64_t *v, size_t n)
{
    if (c->policy == INF_POLICY_ALL)
        return n;
    if (c->policy == INF_POLICY_LATEST) {
        size_t keep = (size_t)LOOM_MIN((int64_t)n, c->num_versions);
        memmove(v, v + n - keep, keep * sizeof(*v));
        return keep;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < c->nversions; j++)
            if (v[i] == c->versions[j]) {
                v[k++] = v[i];
                break;
            }
    return k;
}

static const char *model_file(const struct inf_config *c, const char *vdir, char **path)
{
    static const char *const xgb_defaults[] = { "model.json", "xgboost.json", NULL };
    static const char *const linear_defaults[] = { "model.json", NULL };
    if (c->default_model_filename && c->default_model_filename[0]) {
        *path = path_join(vdir, c->default_model_filename, NULL);
        return c->default_model_filename;
    }
    const char *const *names = strcmp(c->backend, "linear") == 0 ? linear_defaults : xgb_defaults;
    for (; *names; names++) {
        *path = path_join(vdir, *names, NULL);
        if (access(*path, F_OK) == 0 || !names[1])
            return *names;
        free(*path);
    }
    return NULL;
}

static const char *runtime_backend(const struct inf_config *c)
{
    return strcmp(c->backend, "linear") == 0 ? "linear" : "xgboost";
}

/* Check that a version's model fits a completed configuration. */
static loom_err check_fits(const struct inf_config *c, const struct loom_model_info *info,
                           struct loom_error *err)
{
    int64_t f = c->input.dims[c->input.ndims - 1];
    size_t width = inf_config_out_width(c, info, err);
    if (!width)
        return LOOM_EINVAL;
    if (f != (int64_t)info->num_features || width != c->out_width)
        return loom_error_set(err, LOOM_EINVAL,
                              "the model has %zu features and %zu outputs per row; the "
                              "configuration says %lld and %zu",
                              info->num_features, width, (long long)f, c->out_width);
    return LOOM_OK;
}

static int cmp_ctl_version(const void *a, const void *b)
{
    int64_t x = ((const struct ctl_version *)a)->version,
            y = ((const struct ctl_version *)b)->version;
    return (x > y) - (x < y);
}

/* Load one version's file: a new inf_version, or NULL with *err. Under ctl_mu. */
static struct inf_version *load_version(struct inf_service *inf, struct ctl_model *m,
                                        struct inf_config *cfg, bool *completed, int64_t version,
                                        const struct ctl_version *old, struct loom_error *err)
{
    char vname[24];
    snprintf(vname, sizeof(vname), "%lld", (long long)version);
    char *vdir = path_join(inf->repo_dir, m->name, vname);
    char *path = NULL;
    const char *file = model_file(cfg, vdir, &path);
    struct inf_version *v = NULL;
    struct stat st;
    if (!file) {
        loom_error_set(err, LOOM_ENOTFOUND, "no model file in %s", vdir);
        goto out;
    }
    if (stat(path, &st) < 0) {
        loom_error_errno(err, "%s/%s/%s", m->name, vname, file);
        goto out;
    }
    uint64_t mtime = (uint64_t)st.st_mtim.tv_sec * LOOM_NS_PER_SEC + (uint64_t)st.st_mtim.tv_nsec;
    if (old && old->v && old->v->config == cfg && old->v->file_mtime_ns == mtime &&
        old->v->file_size == (uint64_t)st.st_size) {
        v = inf_version_ref(old->v); /* unchanged: keep serving the same object */
        goto out;
    }
    size_t len = 0;
    char *data = read_file(path, inf->conf->max_model_bytes, &len, &st, err);
    if (!data)
        goto out;
    struct loom_model *model = NULL;
    uint64_t t0 = loom_now_ns();
    loom_err e = loom_model_load(runtime_backend(cfg), data, len, NULL, &model, err);
    free(data);
    if (e) {
        loom_error_prefix(err, "%s/%s/%s", m->name, vname, file);
        goto out;
    }
    const struct loom_model_info *info = loom_model_info(model);
    e = *completed ? check_fits(cfg, info, err) : inf_config_complete(cfg, info, err);
    if (e) {
        loom_error_prefix(err, "%s version %s", m->name, vname);
        loom_model_free(model);
        goto out;
    }
    *completed = true;
    v = version_new(inf, m->name, version, cfg, model, &st);
    LOOM_LOG_KV(LOOM_LOG_INFO, "model loaded", LOOM_KV_CSTR("model", m->name),
                LOOM_KV_INT("version", version), LOOM_KV_CSTR("objective", info->objective),
                LOOM_KV_UINT("trees", info->num_trees),
                LOOM_KV_UINT("features", info->num_features),
                LOOM_KV_DBL("load_ms", (double)(loom_now_ns() - t0) / 1e6));
out:
    free(path);
    free(vdir);
    return v;
}

/*
 * Bring model `name` in line with the repository (or with `override_json` as its
 * configuration). Under ctl_mu. Returns LOOM_OK if the model ends up with what it should serve,
 * else an error whose message says why (the model then keeps what it served before).
 */
static loom_err sync_model(struct inf_service *inf, const char *name, const char *override_json,
                           size_t override_len, struct loom_error *err)
{
    struct inf_ctl *ctl = inf->ctl;
    char *dir = path_join(inf->repo_dir, name, NULL);
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        free(dir);
        return loom_error_set(err, LOOM_ENOTFOUND, "model '%s' is not in the repository", name);
    }
    struct ctl_model *m = ctl_find(ctl, name, true);
    loom_err result = LOOM_OK;
    char *text = NULL;
    size_t len = 0;
    if (override_json) {
        text = loom_strndup(override_json, override_len);
        len = override_len;
    } else {
        char *cpath = path_join(dir, "config.json", NULL);
        struct stat cst;
        if (stat(cpath, &cst) == 0)
            text = read_file(cpath, 1 << 20, &len, &cst, err);
        free(cpath);
        if (!text && err && err->code) {
            set_reason(&m->reason, "%s", err->msg);
            if (!model_ready(m))
                m->state = INF_UNAVAILABLE;
            result = err->code;
            goto out;
        }
    }
    /* Reuse the configuration object when the file did not change, so unchanged versions are
     * recognised and kept. */
    struct inf_config *cfg = NULL;
    uint64_t digest = 0;
    if (text) {
        struct inf_config *probe = inf_config_parse(name, text, len, err);
        if (!probe) {
            set_reason(&m->reason, "%s", err->msg);
            if (!model_ready(m))
                m->state = INF_UNAVAILABLE;
            LOOM_LOG_KV(LOOM_LOG_WARN, "model configuration refused", LOOM_KV_CSTR("model", name),
                        LOOM_KV_CSTR("reason", err->msg));
            result = LOOM_EINVAL;
            goto out;
        }
        digest = probe->digest;
        if (m->config && m->config->digest == digest && model_ready(m)) {
            inf_config_unref(probe);
            cfg = inf_config_ref(m->config);
        } else {
            cfg = probe;
        }
    } else if (m->config && m->config->digest == 0 && model_ready(m)) {
        cfg = inf_config_ref(m->config);
    } else {
        cfg = inf_config_parse(name, NULL, 0, err);
    }
    bool completed = cfg == m->config; /* a reused configuration is already complete */

    size_t navail = 0;
    int64_t *avail = list_versions(dir, &navail);
    size_t nwant = apply_policy(cfg, avail, navail);
    struct ctl_version *next = loom_calloc(nwant ? nwant : 1, sizeof(*next));
    size_t nready = 0;
    char first_err[LOOM_ERROR_MSG_MAX] = "";
    /* Newest first, so that the newest version completes the configuration. */
    for (size_t i = nwant; i-- > 0;) {
        struct ctl_version *cv = &next[i];
        cv->version = avail[i];
        const struct ctl_version *old = NULL;
        for (size_t j = 0; j < m->nversions; j++)
            if (m->versions[j].version == cv->version)
                old = &m->versions[j];
        struct loom_error verr = { 0 };
        cv->v = load_version(inf, m, cfg, &completed, cv->version, old, &verr);
        if (cv->v) {
            cv->state = INF_READY;
            nready++;
        } else {
            cv->state = INF_UNAVAILABLE;
            cv->reason = loom_strdup(verr.msg);
            if (!first_err[0])
                snprintf(first_err, sizeof(first_err), "%s", verr.msg);
            LOOM_LOG_KV(LOOM_LOG_WARN, "model version failed to load", LOOM_KV_CSTR("model", name),
                        LOOM_KV_INT("version", cv->version), LOOM_KV_CSTR("reason", verr.msg));
        }
    }
    if (nwant == 0) {
        snprintf(first_err, sizeof(first_err), "model '%s' has no version directory %s", name,
                 navail ? "that its version_policy selects" : "(1, 2, ...)");
    }
    free(avail);
    if (nready == 0 && nwant > 0 && model_ready(m)) {
        /* Versions exist but none loads: keep serving what was there, and say why: the failed
         * versions are listed (UNAVAILABLE, with their reason) beside the ones still serving. */
        for (size_t i = 0; i < nwant; i++) {
            bool known = false;
            for (size_t j = 0; j < m->nversions && !known; j++)
                known = m->versions[j].version == next[i].version;
            if (known) {
                ctl_version_clear(&next[i]);
                continue;
            }
            m->versions = loom_realloc(m->versions, (m->nversions + 1) * sizeof(*m->versions));
            m->versions[m->nversions++] = next[i];
        }
        qsort(m->versions, m->nversions, sizeof(*m->versions), cmp_ctl_version);
        free(next);
        inf_config_unref(cfg);
        set_reason(&m->reason, "reload failed, still serving the previous versions: %s", first_err);
        result = loom_error_set(err, LOOM_EINVAL, "%s", first_err);
        goto out;
    }
    ctl_model_drop_versions(m);
    m->versions = next;
    m->nversions = nwant;
    inf_config_unref(m->config);
    m->config = cfg;
    if (nready) {
        m->state = INF_READY;
        set_reason(&m->reason, NULL);
    } else {
        m->state = INF_UNAVAILABLE;
        set_reason(&m->reason, "%s", first_err);
        result = loom_error_set(err, LOOM_EINVAL, "%s", first_err);
    }
    if (nready && nready < nwant)
        result = loom_error_set(err, LOOM_EINVAL, "%s", first_err);
out:
    free(text);
    free(dir);
    return result;
}

static void unload_model(struct inf_service *inf, struct ctl_model *m, const char *reason)
{
    LOOM_UNUSED(inf);
    ctl_model_drop_versions(m);
    m->state = INF_UNAVAILABLE;
    set_reason(&m->reason, "%s", reason);
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The model directories of the repository, sorted (caller frees each and the array). */
static char **list_models(const char *repo, size_t *n)
{
    *n = 0;
    DIR *d = opendir(repo);
    if (!d)
        return NULL;
    size_t cap = 16;
    char **names = loom_calloc(cap, sizeof(*names));
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !inf_valid_model_name(loom_str_cstr(e->d_name), NULL))
            continue;
        char *p = path_join(repo, e->d_name, NULL);
        struct stat st;
        bool isdir = stat(p, &st) == 0 && S_ISDIR(st.st_mode);
        free(p);
        if (!isdir)
            continue;
        if (*n == cap)
            names = loom_realloc(names, (cap *= 2) * sizeof(*names));
        names[(*n)++] = loom_strdup(e->d_name);
    }
    closedir(d);
    qsort(names, *n, sizeof(*names), cmp_str_ptr);
    return names;
}

/* Sync every model the mode says should be served. Under ctl_mu. */
static void sync_all(struct inf_service *inf, bool startup)
{
    size_t n = 0;
    char **names = list_models(inf->repo_dir, &n);
    bool explicit_mode = inf->conf->model_control == INF_CONTROL_EXPLICIT;
    for (size_t i = 0; i < n; i++) {
        struct ctl_model *m = ctl_find(inf->ctl, names[i], true);
        if (m->from_registry) {
            if (startup)
                LOOM_LOG_KV(LOOM_LOG_WARN,
                            "repository directory ignored: the model is served "
                            "from the registry",
                            LOOM_KV_CSTR("model", names[i]));
            continue;
        }
        if (explicit_mode && startup) {
            const struct loom_conf_list *l = &inf->conf->load_models;
            for (size_t j = 0; j < l->n; j++)
                if (strcmp(l->items[j], "*") == 0 || strcmp(l->items[j], names[i]) == 0)
                    m->wanted = true;
        }
        if (explicit_mode && !m->wanted)
            continue;
        struct loom_error err = { 0 };
        sync_model(inf, names[i], NULL, 0, &err);
    }
    /* Polling: models whose directory went away are unloaded. */
    for (size_t i = 0; !explicit_mode && i < inf->ctl->nmodels; i++) {
        struct ctl_model *m = &inf->ctl->models[i];
        if (!m->from_registry && !bsearch(&m->name, names, n, sizeof(*names), cmp_str_ptr) &&
            m->nversions)
            unload_model(inf, m, "removed from the repository");
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    publish(inf);
}

/* ---- models from the registry ---- */

/* The model name of a reference "name@alias" or "name:version" into name (NUL-terminated). */
static bool ref_name(const char *ref, char *name, size_t cap)
{
    size_t n = strcspn(ref, "@:");
    if (!ref[n] || n == 0 || n >= cap)
        return false;
    memcpy(name, ref, n);
    name[n] = '\0';
    if (!inf_valid_model_name(loom_str_make(name, n), NULL))
        return false;
    for (const char *p = ref + n + 1; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' ||
              *p == '.'))
            return false;
    return ref[n + 1] != '\0';
}

/* GET the registry's `path`: LOOM_OK with a 200 answer in *res (release it), else *err. */
static loom_err registry_get(struct inf_service *inf, const char *path, uint64_t max,
                             struct loom_http_fetch_result *res, struct loom_error *err)
{
    char url[1024];
    snprintf(url, sizeof(url), "%s%s", inf->conf->registry, path);
    loom_err e = loom_http_fetch(url, LOOM_HTTP_GET, NULL, 0, LOOM_STR_NULL, 60 * LOOM_NS_PER_SEC,
                                 (size_t)max, res, err);
    if (e)
        return loom_error_prefix(err, "registry");
    if (res->status == 200)
        return LOOM_OK;
    /* The registry answers problem+json: its detail says why. */
    struct loom_arena a;
    loom_arena_init(&a, 0);
    struct loom_json_doc doc;
    struct loom_str detail = LOOM_STR("");
    if (loom_json_parse(res->body, res->body_len, NULL, &a, &doc, NULL) == LOOM_OK) {
        int d = loom_json_obj_get(&doc, 0, "detail");
        if (d >= 0)
            loom_json_unescape(&doc, d, &a, &detail);
    }
    e = loom_error_set(err, res->status == 404 ? LOOM_ENOTFOUND : LOOM_EIO,
                       "registry: GET %s answered %d %.*s", path, res->status,
                       LOOM_STR_FMT(detail));
    loom_arena_release(&a);
    loom_http_fetch_result_release(res);
    return e;
}

struct resolved {
    int64_t version;
    char hex[LOOM_SHA256_HEX];
    char backend[16];
    char *serving; /* metadata.serving.config, a model configuration (JSON text), or NULL */
};

static loom_err parse_resolved(const struct loom_http_fetch_result *res, struct resolved *r,
                               struct loom_error *err)
{
    struct loom_arena a;
    loom_arena_init(&a, 0);
    struct loom_json_doc doc;
    loom_err e = LOOM_OK;
    if (loom_json_parse(res->body, res->body_len, NULL, &a, &doc, err) ||
        !loom_json_is_object(&doc, 0)) {
        e = loom_error_set(err, LOOM_EINVAL, "registry: the resolve answer is not a JSON object");
        goto out;
    }
    int ver = loom_json_obj_get(&doc, 0, "version");
    int dig = loom_json_obj_get(&doc, 0, "artifact_digest");
    int back = loom_json_obj_get(&doc, 0, "backend");
    struct loom_str d, b;
    if (ver < 0 || loom_json_to_i64(&doc, ver, &r->version) || r->version < 1 || dig < 0 ||
        loom_json_unescape(&doc, dig, &a, &d) || !loom_str_has_prefix(d, LOOM_STR("sha256:")) ||
        !loom_sha256_hex_valid(loom_str_make(d.ptr + 7, d.len - 7)) || back < 0 ||
        loom_json_unescape(&doc, back, &a, &b) || b.len >= sizeof(r->backend)) {
        e = loom_error_set(
            err, LOOM_EINVAL,
            "registry: the resolve answer lacks version, artifact_digest or backend");
        goto out;
    }
    memcpy(r->hex, d.ptr + 7, 64);
    r->hex[64] = '\0';
    memcpy(r->backend, b.ptr, b.len);
    r->backend[b.len] = '\0';
    int meta = loom_json_obj_get(&doc, 0, "metadata");
    int serving = meta >= 0 ? loom_json_obj_get(&doc, meta, "serving") : -1;
    int config = serving >= 0 ? loom_json_obj_get(&doc, serving, "config") : -1;
    if (config >= 0 && loom_json_is_object(&doc, config))
        r->serving = loom_str_dup(loom_json_slice(&doc, config));
out:
    loom_arena_release(&a);
    return e;
}

/* The artifact's bytes, from the cache or downloaded into it; verified against the digest
 * either way (a file changed on disk is refused at load as at download). */
static char *registry_artifact(struct inf_service *inf, const char *hex, size_t *len,
                               struct stat *st, struct loom_error *err)
{
    char file[80];
    snprintf(file, sizeof(file), "%s.model", hex);
    char *path = path_join(inf->cache_dir, file, NULL);
    char *data = NULL;
    uint8_t d[LOOM_SHA256_LEN];
    char got[LOOM_SHA256_HEX];
    if (access(path, F_OK) != 0) {
        char apath[128];
        snprintf(apath, sizeof(apath), "/api/v1/artifacts/sha256:%s", hex);
        struct loom_http_fetch_result res = { 0 };
        if (registry_get(inf, apath, inf->conf->max_model_bytes, &res, err))
            goto out;
        loom_sha256(res.body, res.body_len, d);
        loom_hex(d, sizeof(d), got);
        if (strcmp(got, hex) != 0) {
            loom_error_set(err, LOOM_EIO,
                           "artifact sha256:%s downloaded from the registry has digest sha256:%s: "
                           "refused",
                           hex, got);
            loom_http_fetch_result_release(&res);
            goto out;
        }
        char tmp[96];
        snprintf(tmp, sizeof(tmp), "%s.model.tmp", hex);
        char *tpath = path_join(inf->cache_dir, tmp, NULL);
        FILE *f = fopen(tpath, "wb");
        bool ok = f && fwrite(res.body, 1, res.body_len, f) == res.body_len && fflush(f) == 0 &&
                  fsync(fileno(f)) == 0;
        if (f)
            fclose(f);
        ok = ok && rename(tpath, path) == 0;
        if (!ok)
            unlink(tpath);
        free(tpath);
        loom_http_fetch_result_release(&res);
        if (!ok) {
            loom_error_errno(err, "cannot write %s", path);
            goto out;
        }
    }
    data = read_file(path, inf->conf->max_model_bytes, len, st, err);
    if (!data)
        goto out;
    loom_sha256(data, *len, d);
    loom_hex(d, sizeof(d), got);
    if (strcmp(got, hex) != 0) {
        loom_error_set(err, LOOM_EIO, "cached artifact %s no longer has digest sha256:%s: refused",
                       path, hex);
        free(data);
        data = NULL;
        unlink(path); /* downloaded again next time */
    }
out:
    free(path);
    return data;
}

/* Serve what registry reference `ref` resolves to now. Under ctl_mu. LOOM_OK, or why not (the
 * model then keeps serving what it served, with the reason recorded). */
static loom_err sync_registry_ref(struct inf_service *inf, const char *ref)
{
    char name[201];
    if (!ref_name(ref, name, sizeof(name))) {
        LOOM_LOG_KV(LOOM_LOG_ERROR, "bad registry reference (want name@alias or name:version)",
                    LOOM_KV_CSTR("ref", ref));
        return LOOM_EINVAL;
    }
    struct ctl_model *m = ctl_find(inf->ctl, name, true);
    m->from_registry = true;
    struct loom_error err = { 0 };
    struct loom_http_fetch_result res = { 0 };
    struct resolved r = { 0 };
    char path[512];
    snprintf(path, sizeof(path), "/api/v1/resolve/%s", ref);
    if (registry_get(inf, path, 1 << 20, &res, &err))
        goto fail;
    loom_err e = parse_resolved(&res, &r, &err);
    loom_http_fetch_result_release(&res);
    if (e)
        goto fail;
    if (m->nversions == 1 && m->versions[0].v && m->versions[0].version == r.version &&
        strcmp(m->versions[0].v->digest, r.hex) == 0) {
        free(r.serving);
        return LOOM_OK; /* already serving it */
    }
    size_t len = 0;
    struct stat st;
    char *data = registry_artifact(inf, r.hex, &len, &st, &err);
    if (!data)
        goto fail;
    struct loom_model *model = NULL;
    e = loom_model_load(strcmp(r.backend, "linear") == 0 ? "linear" : "xgboost", data, len, NULL,
                        &model, &err);
    free(data);
    if (e) {
        loom_error_prefix(&err, "%s version %lld", name, (long long)r.version);
        goto fail;
    }
    char dflt[96];
    snprintf(dflt, sizeof(dflt), "{\"backend\":\"%s\",\"max_batch_size\":%lld}",
             strcmp(r.backend, "linear") == 0 ? "linear" : "xgboost",
             (long long)inf->conf->registry_max_batch_size);
    const char *text = r.serving ? r.serving : dflt;
    struct inf_config *cfg = inf_config_parse(name, text, strlen(text), &err);
    if (!cfg || inf_config_complete(cfg, loom_model_info(model), &err)) {
        inf_config_unref(cfg);
        loom_model_free(model);
        goto fail;
    }
    struct inf_version *v = version_new(inf, name, r.version, cfg, model, &st);
    memcpy(v->digest, r.hex, sizeof(v->digest));
    ctl_model_drop_versions(m);
    m->versions = loom_calloc(1, sizeof(*m->versions));
    m->versions[0] = (struct ctl_version){ .version = r.version, .state = INF_READY, .v = v };
    m->nversions = 1;
    inf_config_unref(m->config);
    m->config = cfg;
    m->state = INF_READY;
    set_reason(&m->reason, NULL);
    LOOM_LOG_KV(LOOM_LOG_INFO, "model loaded from the registry", LOOM_KV_CSTR("ref", ref),
                LOOM_KV_INT("version", r.version), LOOM_KV_CSTR("digest", r.hex));
    free(r.serving);
    return LOOM_OK;
fail:
    free(r.serving);
    if (!m->reason || !strstr(m->reason, err.msg)) /* once per distinct reason, not per poll */
        LOOM_LOG_KV(LOOM_LOG_WARN, "registry model not updated", LOOM_KV_CSTR("ref", ref),
                    LOOM_KV_CSTR("reason", err.msg));
    if (model_ready(m)) {
        set_reason(&m->reason,
                   "update from the registry failed, still serving the previous "
                   "version: %s",
                   err.msg);
    } else {
        m->state = INF_UNAVAILABLE;
        set_reason(&m->reason, "%s", err.msg);
    }
    return err.code ? err.code : LOOM_EIO;
}

static void sync_registry(struct inf_service *inf)
{
    for (size_t i = 0; i < inf->conf->models.n; i++)
        sync_registry_ref(inf, inf->conf->models.items[i]);
}

/* ---- registry events: aliases that move ---- */

/*
 * A registry event (loom.model.*, published through the registry's outbox) about a model this
 * replica serves from the registry: serve again what its references resolve to. The effect is
 * idempotent (it makes what is served match what the registry answers now), so a redelivered
 * or late event changes nothing, and events of models served from elsewhere are acked at
 * once. Runs on the subscription's own thread, which may block on the registry as the poll
 * does. A registry that does not answer makes it retry with the bus's backoff; after the last
 * attempt the event is acked, and the poll catches up.
 */
static enum loom_bus_verdict on_registry_event(struct loom_bus_msg *msg, void *arg)
{
    struct inf_service *inf = arg;
    struct loom_arena arena;
    loom_arena_init(&arena, 0);
    struct loom_event ev;
    struct loom_error err = { 0 };
    enum loom_bus_verdict verdict = LOOM_BUS_ACK;
    if (loom_event_parse(msg->data.ptr, msg->data.len, &arena, &ev, &err)) {
        snprintf(msg->reason, sizeof(msg->reason), "%s", err.msg);
        verdict = LOOM_BUS_PARK;
        goto out;
    }
    if (atomic_load(&inf->stopping) || !ev.subject.len)
        goto out;
    loom_err failed = LOOM_OK;
    bool ours = false;
    pthread_mutex_lock(&inf->ctl_mu);
    for (size_t i = 0; i < inf->conf->models.n; i++) {
        const char *ref = inf->conf->models.items[i];
        char name[201];
        if (!ref_name(ref, name, sizeof(name)) || !loom_str_eq_cstr(ev.subject, name))
            continue;
        ours = true;
        loom_err e = sync_registry_ref(inf, ref);
        if (e && e != LOOM_ENOTFOUND && e != LOOM_EINVAL)
            failed = e;
    }
    if (ours)
        publish(inf);
    pthread_mutex_unlock(&inf->ctl_mu);
    if (ours)
        LOOM_LOG_KV(LOOM_LOG_DEBUG, "registry event applied", LOOM_KV_STR("type", ev.type),
                    LOOM_KV_STR("model", ev.subject), LOOM_KV_STR("id", ev.id));
    if (failed && msg->attempt < loom_bus_sub_options(msg->sub)->max_deliver) {
        snprintf(msg->reason, sizeof(msg->reason), "the registry did not answer: %s",
                 loom_strerror(failed));
        verdict = LOOM_BUS_RETRY;
    }
out:
    loom_arena_release(&arena);
    return verdict;
}

/* Join the bus group that follows the registry's model events. Pool thread or init. */
static loom_err subscribe_registry(struct inf_service *inf, struct loom_error *err)
{
    struct loom_bus_sub_options o = {
        .group = inf->bus_group,
        .filter = "loom.model.>",
        .start = LOOM_BUS_START_NEW, /* what happened before is read from the registry */
        .batch = 16,
        .on_msg = on_registry_event,
        .arg = inf,
        .metrics = loom_metrics_global(),
        .metrics_owner = "inference",
    };
    loom_err e = loom_bus_subscribe(inf->bus, &o, &inf->reg_sub, err);
    if (e) {
        inf->reg_sub = NULL;
        return loom_error_prefix(err, "inference: following the registry's events");
    }
    LOOM_LOG_KV(LOOM_LOG_INFO, "following the registry's events",
                LOOM_KV_CSTR("bus", loom_bus_backend(inf->bus)),
                LOOM_KV_CSTR("group", inf->bus_group));
    return LOOM_OK;
}

/* The default group: one per replica, stable across its restarts. */
static void default_group(struct inf_service *inf)
{
    char host[256] = "";
    gethostname(host, sizeof(host) - 1);
    const char *listen = loom_svc_common(inf->svc)->listen;
    const char *port = listen ? strrchr(listen, ':') : NULL;
    char raw[512];
    snprintf(raw, sizeof(raw), "inference-%s-%s", host[0] ? host : "local",
             port && port[1] ? port + 1 : "0");
    size_t n = 0;
    for (const char *p = raw; *p && n < LOOM_BUS_GROUP_MAX; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_';
        inf->bus_group[n++] = ok ? c : '_';
    }
    inf->bus_group[n] = '\0';
}

/* ---- pool jobs ---- */

struct ctl_job {
    struct loom_work work;
    struct inf_service *inf;
    enum { JOB_STARTUP, JOB_POLL, JOB_REGISTRY, JOB_LOAD, JOB_UNLOAD } kind;
    char *name;
    char *config;
    size_t config_len;
    inf_ctl_done_fn done;
    void *arg;
    struct loom_error err;
};

static void job_run(struct loom_work *w)
{
    struct ctl_job *j = LOOM_CONTAINER_OF(w, struct ctl_job, work);
    struct inf_service *inf = j->inf;
    loom_log_set_service("inference");
    pthread_mutex_lock(&inf->ctl_mu);
    switch (j->kind) {
    case JOB_STARTUP:
        sync_registry(inf);
        sync_all(inf, true);
        break;
    case JOB_POLL:
        sync_all(inf, false);
        break;
    case JOB_REGISTRY:
        if (inf->bus && !inf->reg_sub) {
            struct loom_error err = { 0 };
            if (subscribe_registry(inf, &err) == LOOM_OK)
                loom_log_info("subscribed to the registry's events after all");
        }
        sync_registry(inf);
        publish(inf);
        break;
    case JOB_LOAD: {
        struct ctl_model *rm = ctl_find(inf->ctl, j->name, false);
        if (rm && rm->from_registry) {
            loom_error_set(&j->err, LOOM_EINVAL,
                           "model '%s' is served from the registry (--inference.models)", j->name);
            break;
        }
        if (sync_model(inf, j->name, j->config, j->config_len, &j->err) == LOOM_OK ||
            j->err.code != LOOM_ENOTFOUND) {
            struct ctl_model *m = ctl_find(inf->ctl, j->name, false);
            if (m)
                m->wanted = true;
        }
        publish(inf);
        break;
    }
    case JOB_UNLOAD: {
        struct ctl_model *m = ctl_find(inf->ctl, j->name, false);
        if (m && m->from_registry) {
            loom_error_set(&j->err, LOOM_EINVAL,
                           "model '%s' is served from the registry (--inference.models)", j->name);
        } else if (!m || (!m->nversions && m->state != INF_READY)) {
            loom_error_set(&j->err, LOOM_ENOTFOUND, "model '%s' is not loaded", j->name);
        } else {
            m->wanted = false;
            unload_model(inf, m, "unloaded");
            publish(inf);
            LOOM_LOG_KV(LOOM_LOG_INFO, "model unloaded", LOOM_KV_CSTR("model", j->name));
        }
        break;
    }
    }
    pthread_mutex_unlock(&inf->ctl_mu);
}

static void job_done(struct loom_work *w, loom_err status)
{
    struct ctl_job *j = LOOM_CONTAINER_OF(w, struct ctl_job, work);
    struct inf_service *inf = j->inf;
    if (j->kind == JOB_STARTUP) {
        atomic_store(&inf->initial_load_done, true);
        loom_log_info("model repository loaded");
    }
    if (j->kind == JOB_POLL)
        atomic_store(&inf->poll_running, false);
    if (j->kind == JOB_REGISTRY)
        atomic_store(&inf->registry_running, false);
    if (j->done) {
        loom_err e = status ? status : j->err.code;
        j->done(j->arg, e, e ? (j->err.msg[0] ? j->err.msg : loom_strerror(e)) : "");
    }
    free(j->name);
    free(j->config);
    free(j);
}

static loom_err submit(struct inf_service *inf, struct loom_loop *loop, struct ctl_job *j)
{
    j->inf = inf;
    loom_err e = loom_pool_submit(inf->pool, loop, &j->work, job_run, job_done);
    if (e) {
        free(j->name);
        free(j->config);
        free(j);
    }
    return e;
}

loom_err inf_repo_load(struct inf_service *inf, struct loom_loop *loop, struct loom_str name,
                       const char *config_json, size_t config_len, inf_ctl_done_fn done, void *arg)
{
    struct ctl_job *j = loom_new(struct ctl_job);
    j->kind = JOB_LOAD;
    j->name = loom_str_dup(name);
    if (config_json) {
        j->config = loom_strndup(config_json, config_len);
        j->config_len = config_len;
    }
    j->done = done;
    j->arg = arg;
    return submit(inf, loop, j);
}

loom_err inf_repo_unload(struct inf_service *inf, struct loom_loop *loop, struct loom_str name,
                         inf_ctl_done_fn done, void *arg)
{
    struct ctl_job *j = loom_new(struct ctl_job);
    j->kind = JOB_UNLOAD;
    j->name = loom_str_dup(name);
    j->done = done;
    j->arg = arg;
    return submit(inf, loop, j);
}

static void on_poll_timer(struct loom_timer *t)
{
    struct inf_service *inf = LOOM_CONTAINER_OF(t, struct inf_service, poll_timer);
    if (atomic_exchange(&inf->poll_running, true))
        return;
    struct ctl_job *j = loom_new(struct ctl_job);
    j->kind = JOB_POLL;
    if (submit(inf, t->loop, j))
        atomic_store(&inf->poll_running, false);
}

static void on_registry_timer(struct loom_timer *t)
{
    struct inf_service *inf = LOOM_CONTAINER_OF(t, struct inf_service, registry_timer);
    if (atomic_exchange(&inf->registry_running, true))
        return;
    struct ctl_job *j = loom_new(struct ctl_job);
    j->kind = JOB_REGISTRY;
    if (submit(inf, t->loop, j))
        atomic_store(&inf->registry_running, false);
}

loom_err inf_repo_start(struct inf_service *inf, struct loom_error *err)
{
    if (inf->conf->models.n && !inf->conf->registry[0])
        return loom_error_set(err, LOOM_EINVAL,
                              "--inference.models needs --inference.registry (the registry URL)");
    for (size_t i = 0; i < inf->conf->models.n; i++) {
        char name[201];
        if (!ref_name(inf->conf->models.items[i], name, sizeof(name)))
            return loom_error_set(err, LOOM_EINVAL,
                                  "--inference.models: \"%s\" is not name@alias or name:version",
                                  inf->conf->models.items[i]);
    }
    if (inf->conf->models.n) {
        const char *data = loom_svc_global(inf->svc)->data_dir;
        mkdir(data, 0755);
        inf->cache_dir = path_join(data, "inference-cache", NULL);
        if (mkdir(inf->cache_dir, 0755) < 0 && errno != EEXIST)
            return loom_error_errno(err, "cannot create %s", inf->cache_dir);
    }
    struct stat st;
    const char *repo = inf->conf->model_repository;
    if (!repo[0]) {
        /* No repository named: an empty one under the data directory, so that a bare
         * `loom serve` starts (models can then be added, with poll or explicit control). */
        const char *data = loom_svc_global(inf->svc)->data_dir;
        inf->repo_dir = path_join(data, "models", NULL);
        mkdir(data, 0755);
        if (mkdir(inf->repo_dir, 0755) < 0 && errno != EEXIST)
            return loom_error_errno(err, "cannot create the model repository %s", inf->repo_dir);
    } else {
        inf->repo_dir = loom_strdup(repo);
    }
    if (stat(inf->repo_dir, &st) < 0 || !S_ISDIR(st.st_mode))
        return loom_error_set(err, LOOM_EINVAL, "--inference.model-repository %s: not a directory",
                              inf->repo_dir);
    if (inf->conf->models.n && inf->conf->registry_events) {
        char *url = loom_svc_bus_url(inf->svc, NULL);
        struct loom_bus_options bo = { .client_name = "loom-inference" };
        loom_err e = loom_bus_open(url, &bo, &inf->bus, err);
        free(url);
        if (e) {
            inf->bus = NULL;
            return loom_error_prefix(err, "inference bus");
        }
        if (inf->conf->bus_group[0])
            snprintf(inf->bus_group, sizeof(inf->bus_group), "%s", inf->conf->bus_group);
        else
            default_group(inf);
        if (!loom_bus_group_valid(loom_str_cstr(inf->bus_group))) {
            loom_bus_close(inf->bus);
            inf->bus = NULL;
            return loom_error_set(err, LOOM_EINVAL,
                                  "--inference.bus-group \"%s\": 1 to 64 of A-Z a-z 0-9 _ -",
                                  inf->bus_group);
        }
    }
    inf->ctl = loom_new(struct inf_ctl);
    pthread_mutex_init(&inf->ctl_mu, NULL);
    pthread_mutex_init(&inf->retire_mu, NULL);
    atomic_store(&inf->snap, loom_new(struct inf_snapshot));
    if (inf->bus) {
        struct loom_error serr = { 0 };
        if (subscribe_registry(inf, &serr))
            LOOM_LOG_KV(LOOM_LOG_WARN, "not following the registry's events yet: polling",
                        LOOM_KV_CSTR("reason", serr.msg));
    }
    struct ctl_job *j = loom_new(struct ctl_job);
    j->kind = JOB_STARTUP;
    loom_err e = submit(inf, inf->loops[0].loop, j);
    if (e)
        return loom_error_set(err, e, "cannot start loading the model repository");
    if (inf->conf->model_control == INF_CONTROL_POLL) {
        loom_timer_init(&inf->poll_timer, inf->loops[0].loop, on_poll_timer);
        loom_timer_start(&inf->poll_timer, inf->conf->poll_interval, inf->conf->poll_interval);
    }
    if (inf->conf->models.n) {
        loom_timer_init(&inf->registry_timer, inf->loops[0].loop, on_registry_timer);
        loom_timer_start(&inf->registry_timer, inf->conf->registry_poll, inf->conf->registry_poll);
    }
    return LOOM_OK;
}

void inf_repo_stop(struct inf_service *inf)
{
    atomic_store(&inf->stopping, true);
    if (inf->reg_sub)
        loom_bus_sub_stop(inf->reg_sub);
    inf->reg_sub = NULL;
    if (inf->bus)
        loom_bus_close(inf->bus);
    inf->bus = NULL;
    if (!inf->ctl)
        return;
    /* The loops have stopped and the pool is gone: nothing else touches these now. */
    for (size_t i = 0; i < inf->ctl->nmodels; i++) {
        struct ctl_model *m = &inf->ctl->models[i];
        ctl_model_drop_versions(m);
        inf_config_unref(m->config);
        free(m->name);
        free(m->reason);
    }
    free(inf->ctl->models);
    free(inf->ctl);
    inf->ctl = NULL;
    while (inf->retiring_list) {
        struct inf_retire *r = inf->retiring_list;
        inf->retiring_list = r->next;
        snapshot_free(r->snap);
        free(r);
    }
    snapshot_free(atomic_exchange(&inf->snap, NULL));
    free(inf->cache_dir);
    pthread_mutex_destroy(&inf->ctl_mu);
    pthread_mutex_destroy(&inf->retire_mu);
}

/* ---- /v2/repository/index ---- */

static void index_entry(struct loom_buf *out, bool *first, const char *name, const char *version,
                        enum inf_state state, const char *reason)
{
    loom_buf_append_cstr(out, *first ? "{\"name\":" : ",{\"name\":");
    *first = false;
    loom_json_escape(out, name, strlen(name));
    if (version) {
        loom_buf_append_cstr(out, ",\"version\":");
        loom_json_escape(out, version, strlen(version));
    }
    if (state != INF_UNKNOWN) {
        loom_buf_printf(out, ",\"state\":\"%s\",\"reason\":", inf_state_name(state));
        loom_json_escape(out, reason ? reason : "", reason ? strlen(reason) : 0);
    }
    loom_buf_putc(out, '}');
}

void inf_repo_index(struct inf_service *inf, bool ready_only, struct loom_buf *out)
{
    size_t n = 0;
    char **names = list_models(inf->repo_dir, &n);
    const struct inf_snapshot *s = inf_snapshot(inf);
    bool first = true;
    loom_buf_putc(out, '[');
    for (size_t i = 0; i < n; i++) {
        const struct inf_snap_model *m = inf_snap_find(s, loom_str_cstr(names[i]));
        if (!m || (!m->nversions && m->state != INF_UNAVAILABLE)) {
            if (!ready_only)
                index_entry(out, &first, names[i], NULL, INF_UNKNOWN, NULL);
        } else if (!m->nversions) {
            if (!ready_only)
                index_entry(out, &first, names[i], NULL, m->state, m->reason);
        } else {
            for (size_t j = 0; j < m->nversions; j++) {
                const struct inf_snap_version *sv = &m->versions[j];
                if (ready_only && sv->state != INF_READY)
                    continue;
                char ver[24];
                snprintf(ver, sizeof(ver), "%lld", (long long)sv->version);
                index_entry(out, &first, names[i], ver, sv->state, sv->reason);
            }
        }
    }
    /* Models served from the registry have no directory: list them too. */
    for (size_t i = 0; i < s->nmodels; i++) {
        const struct inf_snap_model *m = &s->models[i];
        if (bsearch(&m->name, names, n, sizeof(*names), cmp_str_ptr))
            continue;
        for (size_t j = 0; j < m->nversions; j++) {
            const struct inf_snap_version *sv = &m->versions[j];
            if (ready_only && sv->state != INF_READY)
                continue;
            char ver[24];
            snprintf(ver, sizeof(ver), "%lld", (long long)sv->version);
            index_entry(out, &first, m->name, ver, sv->state, sv->reason);
        }
        if (!m->nversions && !ready_only)
            index_entry(out, &first, m->name, NULL, m->state, m->reason);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    loom_buf_putc(out, ']');
}
