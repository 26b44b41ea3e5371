/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Traffic control: weighted splits between model versions for unversioned KServe infer calls,
 * and feature flags (boolean or percentage switches with per-client targeting), both changed
 * at run time through /api/v1/traffic and /api/v1/flags.
 *
 * Both live in the gateway's SQL store (--gateway.store; SQLite by default, PostgreSQL to share
 * them between replicas) with a revision number bumped in the same transaction as every change.
 * What requests read is an immutable snapshot (splits and flags sorted by name) built from the
 * store on the work pool and published by swapping one pointer under a mutex; each loop keeps a
 * reference to the snapshot it routes with and takes the new one between two requests, so a
 * change neither stops nor drops a request (in-flight requests finish with the snapshot they
 * started with). A write publishes the snapshot it read after its commit; every replica also
 * polls the revision every --gateway.poll-interval (1 s) and reloads when it moved, and a
 * snapshot only ever replaces an older revision.
 *
 * A split picks the version of a request by a hash of its X-Request-Id (the client's own, or
 * a random one the gateway makes), so shares converge to the weights and a retry that reuses
 * its request id reaches the same version. A percentage flag is on for a client when a hash of
 * the flag's name and the client id falls below the percentage: stable for a client, and
 * independent between flags.
 */
#include "gateway/gateway.h"

#include <loom/log.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SPLITS   16
#define MAX_TARGETS  1000
#define MAX_ITEMS    10000
#define NAME_MAX_LEN 128

static const struct loom_migration gw_migrations[] = {
    { 1, "CREATE TABLE IF NOT EXISTS gateway_traffic ("
         "  model TEXT PRIMARY KEY,"
         "  splits TEXT NOT NULL,"
         "  updated_ms BIGINT NOT NULL);"
         "CREATE TABLE IF NOT EXISTS gateway_flags ("
         "  name TEXT PRIMARY KEY,"
         "  doc TEXT NOT NULL,"
         "  updated_ms BIGINT NOT NULL);"
         "CREATE TABLE IF NOT EXISTS gateway_revision ("
         "  id BIGINT PRIMARY KEY,"
         "  rev BIGINT NOT NULL);"
         "INSERT INTO gateway_revision (id, rev) VALUES (1, 0) ON CONFLICT (id) DO NOTHING" },
};

/* ---- snapshots ---- */

struct gw_snapshot *gw_snapshot_ref(struct gw_snapshot *s)
{
    if (s)
        atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

static void flag_release(struct gw_flag *f)
{
    free(f->name);
    free(f->description);
    for (size_t i = 0; i < f->nallow; i++)
        free(f->allow[i]);
    for (size_t i = 0; i < f->ndeny; i++)
        free(f->deny[i]);
    free(f->allow);
    free(f->deny);
}

void gw_snapshot_unref(struct gw_snapshot *s)
{
    if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < s->ntraffic; i++) {
        free(s->traffic[i].model);
        free(s->traffic[i].splits);
    }
    free(s->traffic);
    for (size_t i = 0; i < s->nflags; i++)
        flag_release(&s->flags[i]);
    free(s->flags);
    free(s);
}

const struct gw_snapshot *gw_snapshot_current(struct gw_loop *gl)
{
    struct gw_service *gw = gl->gw;
    uint64_t gen = atomic_load_explicit(&gw->snap_rev, memory_order_acquire);
    if (gen != gl->snap_rev) {
        pthread_mutex_lock(&gw->snap_mu);
        struct gw_snapshot *s = gw_snapshot_ref(gw->snap);
        gen = atomic_load(&gw->snap_rev);
        pthread_mutex_unlock(&gw->snap_mu);
        gw_snapshot_unref(gl->snap);
        gl->snap = s;
        gl->snap_rev = gen;
    }
    return gl->snap;
}

/* Publish `s` (taking its reference) unless the published one is as new. */
static void publish(struct gw_service *gw, struct gw_snapshot *s)
{
    pthread_mutex_lock(&gw->snap_mu);
    struct gw_snapshot *old = gw->snap;
    if (old && old->rev >= s->rev && old->rev != 0) {
        pthread_mutex_unlock(&gw->snap_mu);
        gw_snapshot_unref(s);
        return;
    }
    gw->snap = s;
    atomic_fetch_add_explicit(&gw->snap_rev, 1, memory_order_release);
    pthread_mutex_unlock(&gw->snap_mu);
    gw_snapshot_unref(old);
}

static int cmp_model(const void *a, const void *b)
{
    return strcmp(((const struct gw_traffic_entry *)a)->model,
                  ((const struct gw_traffic_entry *)b)->model);
}

static int cmp_flag(const void *a, const void *b)
{
    return strcmp(((const struct gw_flag *)a)->name, ((const struct gw_flag *)b)->name);
}

static int cmp_slice(struct loom_str a, const char *b)
{
    size_t bl = strlen(b);
    int c = memcmp(a.ptr, b, LOOM_MIN(a.len, bl));
    return c ? c : (a.len < bl ? -1 : a.len > bl ? 1 : 0);
}

const struct gw_traffic_entry *gw_traffic_find(const struct gw_snapshot *s, struct loom_str model)
{
    size_t lo = 0, hi = s->ntraffic;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = cmp_slice(model, s->traffic[mid].model);
        if (c == 0)
            return &s->traffic[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

static const struct gw_flag *flag_find(const struct gw_snapshot *s, struct loom_str name)
{
    size_t lo = 0, hi = s->nflags;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = cmp_slice(name, s->flags[mid].name);
        if (c == 0)
            return &s->flags[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* ---- parsing and writing the JSON forms ---- */

static bool name_ok(struct loom_str s)
{
    if (s.len == 0 || s.len > NAME_MAX_LEN)
        return false;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.ptr[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* The splits array at token i into e (validated). Returns NULL or an error message. */
static const char *parse_splits(const struct loom_json_doc *d, int i, struct gw_traffic_entry *e)
{
    if (!loom_json_is_array(d, i) || loom_json_size(d, i) < 1 || loom_json_size(d, i) > MAX_SPLITS)
        return "splits is an array of 1 to 16 {version, weight} objects";
    e->splits = loom_calloc((size_t)loom_json_size(d, i), sizeof(*e->splits));
    e->nsplits = 0;
    e->total = 0;
    loom_json_foreach (d, i, k) {
        int64_t v = -1, w = -1;
        if (!loom_json_is_object(d, k))
            return "each split is an object {version, weight}";
        loom_json_foreach (d, k, f) {
            int64_t x;
            if (loom_json_to_i64(d, f + 1, &x))
                return "version and weight are integers";
            if (loom_json_str_eq(d, f, LOOM_STR("version")))
                v = x;
            else if (loom_json_str_eq(d, f, LOOM_STR("weight")))
                w = x;
            else
                return "a split has only version and weight";
        }
        if (v < 1 || w < 0 || w > 1000000)
            return "version is >= 1 and weight 0 to 1000000";
        for (size_t j = 0; j < e->nsplits; j++)
            if (e->splits[j].version == v)
                return "a version appears twice in splits";
        e->splits[e->nsplits++] = (struct gw_split){ v, w };
        e->total += w;
    }
    if (e->total <= 0)
        return "the weights add up to 0";
    return NULL;
}

static void write_splits(struct loom_json_writer *w, const struct gw_traffic_entry *e)
{
    loom_json_write_array_begin(w);
    for (size_t i = 0; i < e->nsplits; i++) {
        loom_json_write_object_begin(w);
        loom_json_write_key(w, "version");
        loom_json_write_i64(w, e->splits[i].version);
        loom_json_write_key(w, "weight");
        loom_json_write_i64(w, e->splits[i].weight);
        loom_json_write_object_end(w);
    }
    loom_json_write_array_end(w);
}

static void write_time(struct loom_json_writer *w, const char *key, int64_t ms)
{
    char ts[40];
    loom_time_rfc3339(ms * (int64_t)LOOM_NS_PER_MS, ts);
    loom_json_write_key(w, key);
    loom_json_write_string(w, ts);
}

static void write_traffic(struct loom_json_writer *w, const struct gw_traffic_entry *e)
{
    loom_json_write_object_begin(w);
    loom_json_write_key(w, "model");
    loom_json_write_string(w, e->model);
    loom_json_write_key(w, "splits");
    write_splits(w, e);
    write_time(w, "updated_at", e->updated_ms);
    loom_json_write_object_end(w);
}

static bool id_list(const struct loom_json_doc *d, int i, char ***out, size_t *n)
{
    if (!loom_json_is_array(d, i) || loom_json_size(d, i) > MAX_TARGETS)
        return false;
    *out = loom_calloc((size_t)loom_json_size(d, i) + 1, sizeof(char *));
    *n = 0;
    loom_json_foreach (d, i, k) {
        struct loom_arena a;
        loom_arena_init(&a, 0);
        struct loom_str s;
        bool ok = loom_json_is_string(d, k) && !loom_json_unescape(d, k, &a, &s) && s.len >= 1 &&
                  s.len <= 64 && name_ok(s);
        if (ok)
            (*out)[(*n)++] = loom_str_dup(s);
        loom_arena_release(&a);
        if (!ok)
            return false;
    }
    return true;
}

/* The flag object at token 0 into f. `name` (from the path) may be empty for a POST, which
 * takes it from the body. Returns NULL or an error message. */
static const char *parse_flag(const struct loom_json_doc *d, struct loom_str name,
                              struct gw_flag *f, struct loom_arena *a)
{
    if (!loom_json_is_object(d, 0))
        return "a flag is a JSON object";
    f->enabled = true;
    f->percentage = 100;
    bool has_name = false;
    loom_json_foreach (d, 0, k) {
        int v = k + 1;
        if (loom_json_str_eq(d, k, LOOM_STR("name"))) {
            struct loom_str s;
            if (!loom_json_is_string(d, v) || loom_json_unescape(d, v, a, &s) || !name_ok(s))
                return "name is 1 to 128 characters of A-Z a-z 0-9 . _ -";
            if (name.len && !loom_str_eq(s, name))
                return "the name in the body differs from the one in the path";
            name = s;
            has_name = true;
        } else if (loom_json_str_eq(d, k, LOOM_STR("description"))) {
            struct loom_str s;
            if (!loom_json_is_string(d, v) || loom_json_unescape(d, v, a, &s) || s.len > 1024)
                return "description is a string of at most 1024 bytes";
            free(f->description);
            f->description = loom_str_dup(s);
        } else if (loom_json_str_eq(d, k, LOOM_STR("enabled"))) {
            if (loom_json_to_bool(d, v, &f->enabled))
                return "enabled is true or false";
        } else if (loom_json_str_eq(d, k, LOOM_STR("percentage"))) {
            if (loom_json_to_i64(d, v, &f->percentage) || f->percentage < 0 || f->percentage > 100)
                return "percentage is an integer from 0 to 100";
        } else if (loom_json_str_eq(d, k, LOOM_STR("targets"))) {
            if (!loom_json_is_object(d, v))
                return "targets is {\"allow\": [client ids], \"deny\": [client ids]}";
            loom_json_foreach (d, v, t) {
                bool ok;
                if (loom_json_str_eq(d, t, LOOM_STR("allow")))
                    ok = !f->allow && id_list(d, t + 1, &f->allow, &f->nallow);
                else if (loom_json_str_eq(d, t, LOOM_STR("deny")))
                    ok = !f->deny && id_list(d, t + 1, &f->deny, &f->ndeny);
                else
                    ok = false;
                if (!ok)
                    return "targets is {\"allow\": [client ids], \"deny\": [client ids]} (at "
                           "most 1000 each)";
            }
        } else if (loom_json_str_eq(d, k, LOOM_STR("updated_at"))) {
            /* read-only; accepted so that a GET's answer can be PUT back */
        } else {
            return "unknown field (name, description, enabled, percentage, targets)";
        }
    }
    if (!name.len && !has_name)
        return "name is required";
    if (!name_ok(name))
        return "name is 1 to 128 characters of A-Z a-z 0-9 . _ -";
    f->name = loom_str_dup(name);
    return NULL;
}

static void write_ids(struct loom_json_writer *w, char **ids, size_t n)
{
    loom_json_write_array_begin(w);
    for (size_t i = 0; i < n; i++)
        loom_json_write_string(w, ids[i]);
    loom_json_write_array_end(w);
}

/* The stored form (and, with the time, the API's). */
static void write_flag(struct loom_json_writer *w, const struct gw_flag *f, bool with_time)
{
    loom_json_write_object_begin(w);
    loom_json_write_key(w, "name");
    loom_json_write_string(w, f->name);
    loom_json_write_key(w, "description");
    loom_json_write_string(w, f->description ? f->description : "");
    loom_json_write_key(w, "enabled");
    loom_json_write_bool(w, f->enabled);
    loom_json_write_key(w, "percentage");
    loom_json_write_i64(w, f->percentage);
    loom_json_write_key(w, "targets");
    loom_json_write_object_begin(w);
    loom_json_write_key(w, "allow");
    write_ids(w, f->allow, f->nallow);
    loom_json_write_key(w, "deny");
    write_ids(w, f->deny, f->ndeny);
    loom_json_write_object_end(w);
    if (with_time)
        write_time(w, "updated_at", f->updated_ms);
    loom_json_write_object_end(w);
}

/* ---- loading from the store (work pool) ---- */

struct load {
    struct gw_snapshot *s;
    size_t cap_t, cap_f;
};

static loom_err row_rev(const struct loom_sql_row *row, void *arg)
{
    *(int64_t *)arg = row->cols[0].i;
    return LOOM_OK;
}

static loom_err row_traffic(const struct loom_sql_row *row, void *arg)
{
    struct load *l = arg;
    struct gw_snapshot *s = l->s;
    if (s->ntraffic >= MAX_ITEMS)
        return LOOM_OK;
    struct loom_arena a;
    loom_arena_init(&a, 0);
    struct loom_json_doc d;
    struct gw_traffic_entry e = { 0 };
    struct loom_str js = row->cols[1].s;
    if (loom_json_parse(js.ptr, js.len, NULL, &a, &d, NULL) || parse_splits(&d, 0, &e)) {
        LOOM_LOG_KV(LOOM_LOG_WARN, "traffic: a stored split does not parse; ignored",
                    LOOM_KV_STR("model", row->cols[0].s));
        free(e.splits);
        loom_arena_release(&a);
        return LOOM_OK;
    }
    loom_arena_release(&a);
    e.model = loom_str_dup(row->cols[0].s);
    e.updated_ms = row->cols[2].i;
    if (s->ntraffic == l->cap_t) {
        l->cap_t = l->cap_t ? l->cap_t * 2 : 8;
        s->traffic = loom_realloc(s->traffic, l->cap_t * sizeof(*s->traffic));
    }
    s->traffic[s->ntraffic++] = e;
    return LOOM_OK;
}

static loom_err row_flag(const struct loom_sql_row *row, void *arg)
{
    struct load *l = arg;
    struct gw_snapshot *s = l->s;
    if (s->nflags >= MAX_ITEMS)
        return LOOM_OK;
    struct loom_arena a;
    loom_arena_init(&a, 0);
    struct loom_json_doc d;
    struct gw_flag f = { 0 };
    struct loom_str js = row->cols[1].s;
    if (loom_json_parse(js.ptr, js.len, NULL, &a, &d, NULL) ||
        parse_flag(&d, row->cols[0].s, &f, &a)) {
        LOOM_LOG_KV(LOOM_LOG_WARN, "flags: a stored flag does not parse; ignored",
                    LOOM_KV_STR("name", row->cols[0].s));
        flag_release(&f);
        loom_arena_release(&a);
        return LOOM_OK;
    }
    loom_arena_release(&a);
    f.updated_ms = row->cols[2].i;
    if (s->nflags == l->cap_f) {
        l->cap_f = l->cap_f ? l->cap_f * 2 : 8;
        s->flags = loom_realloc(s->flags, l->cap_f * sizeof(*s->flags));
    }
    s->flags[s->nflags++] = f;
    return LOOM_OK;
}

/* The store's revision. */
static loom_err read_rev(struct loom_db *db, int64_t *rev, struct loom_error *err)
{
    return loom_db_exec(db, "SELECT rev FROM gateway_revision WHERE id = 1", NULL, 0, row_rev, rev,
                        NULL, err);
}

/* A snapshot of everything, read in one transaction so that it matches its revision. */
static loom_err load_tx(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct load *l = arg;
    if (l->s)
        gw_snapshot_unref(l->s); /* a retried transaction starts over */
    l->s = loom_new(struct gw_snapshot);
    atomic_store(&l->s->refs, 1);
    l->cap_t = l->cap_f = 0;
    int64_t rev = 0;
    loom_err e = read_rev(db, &rev, err);
    e = e ? e
          : loom_db_exec(db, "SELECT model, splits, updated_ms FROM gateway_traffic", NULL, 0,
                         row_traffic, l, NULL, err);
    e = e ? e
          : loom_db_exec(db, "SELECT name, doc, updated_ms FROM gateway_flags", NULL, 0, row_flag,
                         l, NULL, err);
    l->s->rev = (uint64_t)rev;
    return e;
}

static struct gw_snapshot *load(struct loom_store *store, struct loom_error *err)
{
    struct load l = { 0 };
    loom_err e = loom_store_tx(store, load_tx, &l, err);
    if (e) {
        gw_snapshot_unref(l.s);
        return NULL;
    }
    if (l.s->ntraffic)
        qsort(l.s->traffic, l.s->ntraffic, sizeof(*l.s->traffic), cmp_model);
    if (l.s->nflags)
        qsort(l.s->flags, l.s->nflags, sizeof(*l.s->flags), cmp_flag);
    return l.s;
}

/* ---- init and polling ---- */

loom_err gw_traffic_init(struct gw_service *gw, struct loom_error *err)
{
    const char *data_dir = loom_svc_global(gw->svc)->data_dir;
    char *url;
    if (gw->conf->store[0]) {
        url = loom_strdup(gw->conf->store);
    } else {
        size_t n = strlen(data_dir) + 32;
        url = loom_malloc(n);
        snprintf(url, n, "sqlite:%s/gateway.db", data_dir);
    }
    loom_err e = loom_store_open(url, NULL, &gw->store, err);
    free(url);
    if (e) {
        gw->store = NULL;
        return loom_error_prefix(err, "gateway store");
    }
    e = loom_store_migrate(gw->store, "gateway", gw_migrations, LOOM_ARRAY_SIZE(gw_migrations),
                           err);
    if (e)
        return loom_error_prefix(err, "gateway store");
    struct gw_snapshot *s = load(gw->store, err);
    if (!s)
        return loom_error_prefix(err, "gateway store");
    gw->snap = s;
    atomic_store(&gw->snap_rev, 1);
    LOOM_LOG_KV(LOOM_LOG_INFO, "gateway store ready",
                LOOM_KV_CSTR("backend", loom_store_backend(gw->store)),
                LOOM_KV_UINT("splits", s->ntraffic), LOOM_KV_UINT("flags", s->nflags),
                LOOM_KV_UINT("revision", s->rev));
    return LOOM_OK;
}

void gw_traffic_release(struct gw_service *gw)
{
    gw_snapshot_unref(gw->snap);
    gw->snap = NULL;
    if (gw->store)
        loom_store_close(gw->store);
    gw->store = NULL;
    pthread_mutex_destroy(&gw->snap_mu);
}

struct poll_job {
    struct loom_work work;
    struct gw_loop *gl;
    struct gw_snapshot *s;
};

static void poll_work(struct loom_work *w)
{
    struct gw_loop *gl = LOOM_CONTAINER_OF(w, struct gw_loop, poll_work);
    struct gw_service *gw = gl->gw;
    struct loom_error err = { 0 };
    struct loom_db *db;
    if (loom_store_acquire(gw->store, &db, &err))
        return;
    int64_t rev = -1;
    loom_err e = read_rev(db, &rev, &err);
    loom_store_release(gw->store, db);
    pthread_mutex_lock(&gw->snap_mu);
    uint64_t have = gw->snap ? gw->snap->rev : 0;
    pthread_mutex_unlock(&gw->snap_mu);
    if (e || (uint64_t)rev == have)
        return;
    struct gw_snapshot *s = load(gw->store, &err);
    if (s) {
        LOOM_LOG_KV(LOOM_LOG_INFO, "routing snapshot reloaded", LOOM_KV_UINT("revision", s->rev),
                    LOOM_KV_UINT("splits", s->ntraffic), LOOM_KV_UINT("flags", s->nflags));
        publish(gw, s);
    }
}

static void poll_done(struct loom_work *w, loom_err status)
{
    LOOM_UNUSED(status);
    struct gw_loop *gl = LOOM_CONTAINER_OF(w, struct gw_loop, poll_work);
    gl->polling = false;
}

static void on_poll(struct loom_timer *t)
{
    struct gw_loop *gl = LOOM_CONTAINER_OF(t, struct gw_loop, poll_timer);
    if (!gl->polling) {
        gl->polling = true;
        if (loom_pool_submit(gl->gw->pool, gl->loop, &gl->poll_work, poll_work, poll_done))
            gl->polling = false;
    }
    loom_timer_start(t, gl->gw->conf->poll_interval, 0);
}

void gw_traffic_start(struct gw_loop *gl)
{
    loom_timer_init(&gl->poll_timer, gl->loop, on_poll);
    loom_timer_start(&gl->poll_timer, gl->gw->conf->poll_interval, 0);
}

/* ---- writes (work pool) ---- */

enum op_kind { OP_TRAFFIC_PUT, OP_TRAFFIC_DELETE, OP_FLAG_CREATE, OP_FLAG_PUT, OP_FLAG_DELETE };

struct write_op {
    struct loom_work work;
    struct gw_req *g;
    enum op_kind kind;
    char *name;
    char *doc; /* the stored JSON */
    int64_t now_ms;
    loom_err e;
    bool created;
    struct loom_error err;
    struct gw_snapshot *s;
};

/* Insert or replace one row (a PUT): *created says whether the row is new (201 + Location). */
static loom_err upsert(struct loom_db *db, const char *exists_sql, const char *upsert_sql,
                       const struct loom_sql_value p[3], bool *created, struct loom_error *err)
{
    int64_t found = 0;
    loom_err e = loom_db_exec(db, exists_sql, p, 1, row_rev, &found, NULL, err);
    if (e)
        return e;
    *created = !found;
    return loom_db_exec(db, upsert_sql, p, 3, NULL, NULL, NULL, err);
}

static loom_err write_tx(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct write_op *op = arg;
    struct loom_sql_value p[3] = { LOOM_SQL_CSTR_V(op->name),
                                   LOOM_SQL_CSTR_V(op->doc ? op->doc : ""),
                                   LOOM_SQL_INT_V(op->now_ms) };
    int64_t changes = 0;
    loom_err e;
    op->created = false;
    switch (op->kind) {
    case OP_TRAFFIC_PUT:
        e = upsert(db, "SELECT 1 FROM gateway_traffic WHERE model = $1",
                   "INSERT INTO gateway_traffic (model, splits, updated_ms) VALUES ($1, $2, $3) "
                   "ON CONFLICT (model) DO UPDATE SET splits = $2, updated_ms = $3",
                   p, &op->created, err);
        break;
    case OP_TRAFFIC_DELETE:
        e = loom_db_exec(db, "DELETE FROM gateway_traffic WHERE model = $1", p, 1, NULL, NULL,
                         &changes, err);
        if (!e && changes == 0)
            return loom_error_set(err, LOOM_ENOTFOUND, "no traffic split for this model");
        break;
    case OP_FLAG_CREATE:
        e = loom_db_exec(db,
                         "INSERT INTO gateway_flags (name, doc, updated_ms) VALUES ($1, $2, $3) "
                         "ON CONFLICT (name) DO NOTHING",
                         p, 3, NULL, NULL, &changes, err);
        if (!e && changes == 0)
            return loom_error_set(err, LOOM_EEXIST, "a flag with this name exists");
        op->created = true;
        break;
    case OP_FLAG_PUT:
        e = upsert(db, "SELECT 1 FROM gateway_flags WHERE name = $1",
                   "INSERT INTO gateway_flags (name, doc, updated_ms) VALUES ($1, $2, $3) "
                   "ON CONFLICT (name) DO UPDATE SET doc = $2, updated_ms = $3",
                   p, &op->created, err);
        break;
    case OP_FLAG_DELETE:
        e = loom_db_exec(db, "DELETE FROM gateway_flags WHERE name = $1", p, 1, NULL, NULL,
                         &changes, err);
        if (!e && changes == 0)
            return loom_error_set(err, LOOM_ENOTFOUND, "no such flag");
        break;
    default:
        return LOOM_EINVAL;
    }
    if (e)
        return e;
    return loom_db_exec(db, "UPDATE gateway_revision SET rev = rev + 1 WHERE id = 1", NULL, 0, NULL,
                        NULL, NULL, err);
}

static void write_work(struct loom_work *w)
{
    struct write_op *op = LOOM_CONTAINER_OF(w, struct write_op, work);
    struct gw_service *gw = op->g->gw;
    op->e = loom_store_tx(gw->store, write_tx, op, &op->err);
    if (!op->e)
        op->s = load(gw->store, &op->err);
}

static void write_done(struct loom_work *w, loom_err status)
{
    struct write_op *op = LOOM_CONTAINER_OF(w, struct write_op, work);
    struct gw_req *g = op->g;
    struct gw_service *gw = g->gw;
    if (op->s) {
        LOOM_LOG_KV(LOOM_LOG_INFO, "routing snapshot changed", LOOM_KV_UINT("revision", op->s->rev),
                    LOOM_KV_CSTR("name", op->name),
                    LOOM_KV_CSTR("client_id", g->authed ? g->who.client_id : ""));
        gw_snapshot_ref(op->s);
        publish(gw, op->s);
    }
    free(op->doc);
    if (status || op->e) {
        loom_err e = status ? status : op->e;
        int code = e == LOOM_ENOTFOUND ? 404 : e == LOOM_EEXIST ? 409 : 503;
        gw_problem(g, code, "%s", status ? "the store is busy" : op->err.msg);
        gw_snapshot_unref(op->s);
        free(op->name);
        return;
    }
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer jw;
    loom_json_writer_init(&jw, &b);
    int code = 200;
    struct loom_str name = loom_str_cstr(op->name);
    switch (op->kind) {
    case OP_TRAFFIC_PUT: {
        const struct gw_traffic_entry *t = op->s ? gw_traffic_find(op->s, name) : NULL;
        if (t)
            write_traffic(&jw, t);
        else
            loom_json_write_null(&jw);
        code = op->created ? 201 : 200;
        if (op->created)
            loom_http_resp_headerf(g->req, "Location", "/api/v1/traffic/%s", op->name);
        break;
    }
    case OP_FLAG_CREATE:
    case OP_FLAG_PUT: {
        const struct gw_flag *f = op->s ? flag_find(op->s, name) : NULL;
        if (f)
            write_flag(&jw, f, true);
        else
            loom_json_write_null(&jw);
        code = op->created ? 201 : 200;
        if (op->created)
            loom_http_resp_headerf(g->req, "Location", "/api/v1/flags/%s", op->name);
        break;
    }
    default:
        gw_snapshot_unref(op->s);
        free(op->name);
        loom_buf_release(&b);
        gw_respond(g, 204, NULL, LOOM_STR_NULL);
        return;
    }
    gw_snapshot_unref(op->s);
    free(op->name);
    gw_json(g, code, &b);
}

static void submit(struct gw_req *g, enum op_kind kind, struct loom_str name, char *doc)
{
    struct write_op *op = loom_arena_new(g->req->arena, struct write_op);
    op->g = g;
    op->kind = kind;
    op->name = loom_str_dup(name);
    op->doc = doc;
    op->now_ms = loom_wall_ns() / (int64_t)LOOM_NS_PER_MS;
    if (loom_pool_submit(g->gw->pool, g->req->loop, &op->work, write_work, write_done)) {
        free(op->name);
        free(op->doc);
        loom_http_resp_header(g->req, "Retry-After", LOOM_STR("1"));
        gw_problem(g, 503, "the gateway is busy");
    }
}

/* ---- handlers ---- */

static bool parse_body(struct gw_req *g, struct loom_json_doc *d)
{
    struct loom_error err = { 0 };
    struct loom_json_limits lim = { .max_depth = 8, .max_tokens = 8192 };
    if (!g->body_len) {
        gw_problem(g, 400, "a JSON body is required");
        return false;
    }
    if (loom_json_parse(g->body, g->body_len, &lim, g->req->arena, d, &err)) {
        gw_problem(g, 400, "the body is not valid JSON: %s", err.msg);
        return false;
    }
    return true;
}

void gw_h_traffic_list(struct gw_req *g)
{
    const struct gw_snapshot *s = gw_snapshot_current(g->gl);
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "items");
    loom_json_write_array_begin(&w);
    for (size_t i = 0; s && i < s->ntraffic; i++)
        write_traffic(&w, &s->traffic[i]);
    loom_json_write_array_end(&w);
    loom_json_write_object_end(&w);
    gw_json(g, 200, &b);
}

void gw_h_traffic_get(struct gw_req *g)
{
    struct loom_str model = loom_http_req_param(g->req, "model");
    const struct gw_snapshot *s = gw_snapshot_current(g->gl);
    const struct gw_traffic_entry *t = s ? gw_traffic_find(s, model) : NULL;
    if (!t) {
        gw_problem(g, 404, "no traffic split for model %.*s", (int)LOOM_MIN(model.len, 128),
                   model.ptr);
        return;
    }
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    write_traffic(&w, t);
    gw_json(g, 200, &b);
}

void gw_h_traffic_put(struct gw_req *g)
{
    struct loom_str model = loom_http_req_param(g->req, "model");
    if (!name_ok(model)) {
        gw_problem(g, 400, "a model name is 1 to 128 characters of A-Z a-z 0-9 . _ -");
        return;
    }
    struct loom_json_doc d;
    if (!parse_body(g, &d))
        return;
    int splits = loom_json_is_object(&d, 0) ? loom_json_obj_get(&d, 0, "splits") : -1;
    if (splits < 0 || loom_json_size(&d, 0) != 1) {
        gw_problem(g, 400, "the body is {\"splits\": [{\"version\": 1, \"weight\": 90}, ...]}");
        return;
    }
    struct gw_traffic_entry e = { 0 };
    const char *bad = parse_splits(&d, splits, &e);
    if (bad) {
        free(e.splits);
        gw_problem(g, 400, "%s", bad);
        return;
    }
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    write_splits(&w, &e);
    free(e.splits);
    size_t len;
    submit(g, OP_TRAFFIC_PUT, model, loom_buf_detach(&b, &len));
}

void gw_h_traffic_delete(struct gw_req *g)
{
    submit(g, OP_TRAFFIC_DELETE, loom_http_req_param(g->req, "model"), NULL);
}

void gw_h_flags_list(struct gw_req *g)
{
    const struct gw_snapshot *s = gw_snapshot_current(g->gl);
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "items");
    loom_json_write_array_begin(&w);
    for (size_t i = 0; s && i < s->nflags; i++)
        write_flag(&w, &s->flags[i], true);
    loom_json_write_array_end(&w);
    loom_json_write_object_end(&w);
    gw_json(g, 200, &b);
}

static void flag_write(struct gw_req *g, struct loom_str name, enum op_kind kind)
{
    struct loom_json_doc d;
    if (!parse_body(g, &d))
        return;
    struct gw_flag f = { 0 };
    const char *bad = parse_flag(&d, name, &f, g->req->arena);
    if (bad) {
        flag_release(&f);
        gw_problem(g, 400, "%s", bad);
        return;
    }
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    write_flag(&w, &f, false);
    size_t len;
    char *doc = loom_buf_detach(&b, &len);
    struct loom_str fname = loom_str_cstr(f.name);
    submit(g, kind, fname, doc);
    flag_release(&f);
}

void gw_h_flags_create(struct gw_req *g)
{
    flag_write(g, LOOM_STR_NULL, OP_FLAG_CREATE);
}

void gw_h_flag_put(struct gw_req *g)
{
    struct loom_str name = loom_http_req_param(g->req, "name");
    if (!name_ok(name)) {
        gw_problem(g, 400, "a flag name is 1 to 128 characters of A-Z a-z 0-9 . _ -");
        return;
    }
    flag_write(g, name, OP_FLAG_PUT);
}

void gw_h_flag_delete(struct gw_req *g)
{
    submit(g, OP_FLAG_DELETE, loom_http_req_param(g->req, "name"), NULL);
}

void gw_h_flag_get(struct gw_req *g)
{
    struct loom_str name = loom_http_req_param(g->req, "name");
    const struct gw_snapshot *s = gw_snapshot_current(g->gl);
    const struct gw_flag *f = s ? flag_find(s, name) : NULL;
    if (!f) {
        gw_problem(g, 404, "no flag named %.*s", (int)LOOM_MIN(name.len, 128), name.ptr);
        return;
    }
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    write_flag(&w, f, true);
    gw_json(g, 200, &b);
}

static bool in_list(char **ids, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(ids[i], id) == 0)
            return true;
    return false;
}

void gw_h_flag_evaluate(struct gw_req *g)
{
    struct loom_str name = loom_http_req_param(g->req, "name");
    const struct gw_snapshot *s = gw_snapshot_current(g->gl);
    const struct gw_flag *f = s ? flag_find(s, name) : NULL;
    if (!f) {
        gw_problem(g, 404, "no flag named %.*s", (int)LOOM_MIN(name.len, 128), name.ptr);
        return;
    }
    const char *client = g->who.client_id;
    bool on;
    const char *reason;
    if (in_list(f->deny, f->ndeny, client)) {
        on = false;
        reason = "denied";
    } else if (in_list(f->allow, f->nallow, client)) {
        on = true;
        reason = "allowed";
    } else if (!f->enabled) {
        on = false;
        reason = "disabled";
    } else if (f->percentage >= 100) {
        on = true;
        reason = "enabled";
    } else {
        uint64_t h = 0xcbf29ce484222325ull;
        for (const char *p = f->name; *p; p++)
            h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
        h = (h ^ '\n') * 0x100000001b3ull;
        for (const char *p = client; *p; p++)
            h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
        h ^= h >> 33;
        h *= 0xff51afd7ed558ccdull;
        h ^= h >> 33;
        on = (int64_t)(h % 100) < f->percentage;
        reason = "percentage";
    }
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "flag");
    loom_json_write_string(&w, f->name);
    loom_json_write_key(&w, "client_id");
    loom_json_write_string(&w, client);
    loom_json_write_key(&w, "enabled");
    loom_json_write_bool(&w, on);
    loom_json_write_key(&w, "reason");
    loom_json_write_string(&w, reason);
    loom_json_write_object_end(&w);
    gw_json(g, 200, &b);
}
