/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The event log and its projections. Every change to a model is an event appended to that
 * model's log (registry_events: model, seq 1, 2, 3..., a UUIDv7 id, type, time, data) in the
 * same transaction as the update of the state tables (registry_models, registry_versions,
 * registry_aliases). Those tables are projections: reg_apply computes them from one event at a
 * time, and the same function rebuilds them from the whole log (--registry.rebuild-projections),
 * so what the API answers is always what the log says. The log is also the concurrency control:
 * (model, seq) is the primary key, so two writers racing on one model cannot both append the
 * same seq; the loser's transaction is rolled back and run again (LOOM_EBUSY to loom_store_tx),
 * and sees the winner's change. The log of a deleted model stays, as an audit trail.
 *
 * The same transaction queues the event in the outbox (loom/outbox.h), so the bus gets every
 * committed event and none that was rolled back: a CloudEvent with the log's id and time,
 * source /loom/registry, subject the model's name, and the log's data with "model" first.
 */
#include "registry/registry.h"

#include <loom/id.h>
#include <loom/log.h>

#include <stdlib.h>
#include <string.h>

const char *const reg_event_types[REG_EV__COUNT] = {
    [REG_EV_MODEL_CREATED] = "loom.model.created",
    [REG_EV_MODEL_UPDATED] = "loom.model.updated",
    [REG_EV_MODEL_DELETED] = "loom.model.deleted",
    [REG_EV_VERSION_CREATED] = "loom.model.version.created",
    [REG_EV_VERSION_UPDATED] = "loom.model.version.updated",
    [REG_EV_ALIAS_CHANGED] = "loom.model.alias.changed",
};

/* Times are milliseconds since the epoch; JSON documents (tags, signature, metadata, event
 * data) are stored as text, as the client's validated JSON. */
static const char schema_v1[] =
    "CREATE TABLE IF NOT EXISTS registry_events ("
    " model TEXT NOT NULL, seq BIGINT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL,"
    " time_ms BIGINT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (model, seq));"
    "CREATE TABLE IF NOT EXISTS registry_models ("
    " name TEXT PRIMARY KEY, description TEXT NOT NULL, tags TEXT NOT NULL,"
    " latest_version BIGINT NOT NULL, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS registry_versions ("
    " model TEXT NOT NULL, version BIGINT NOT NULL, artifact_digest TEXT NOT NULL,"
    " size BIGINT NOT NULL, format TEXT NOT NULL, backend TEXT NOT NULL,"
    " signature TEXT NOT NULL, status TEXT NOT NULL, metadata TEXT NOT NULL,"
    " created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL, PRIMARY KEY (model, version));"
    "CREATE INDEX IF NOT EXISTS registry_versions_status"
    " ON registry_versions (model, status, version);"
    "CREATE TABLE IF NOT EXISTS registry_aliases ("
    " model TEXT NOT NULL, alias TEXT NOT NULL, version BIGINT NOT NULL,"
    " updated_ms BIGINT NOT NULL, PRIMARY KEY (model, alias));"
    "CREATE TABLE IF NOT EXISTS registry_artifacts ("
    " digest TEXT PRIMARY KEY, size BIGINT NOT NULL, format TEXT NOT NULL,"
    " backend TEXT NOT NULL, signature TEXT NOT NULL, created_ms BIGINT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS registry_idempotency ("
    " idem_key TEXT PRIMARY KEY, scope TEXT NOT NULL, body_sha TEXT NOT NULL,"
    " status BIGINT NOT NULL, content_type TEXT NOT NULL, response TEXT NOT NULL,"
    " created_ms BIGINT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS registry_idempotency_created"
    " ON registry_idempotency (created_ms)";

const struct loom_migration reg_migrations[] = {
    { 1, schema_v1 },
};
const size_t reg_nmigrations = LOOM_ARRAY_SIZE(reg_migrations);

/* ---- emitting ---- */

static loom_err get_i64(const struct loom_sql_row *row, void *arg)
{
    const struct loom_sql_value *v = &row->cols[0];
    *(int64_t *)arg = v->type == LOOM_SQL_INT ? v->i : 0;
    return LOOM_OK;
}

/* The event as published: {"model": <name>, <the log's data members>}. */
static loom_err queue_event(struct loom_db *db, struct loom_str model, enum reg_event_type type,
                            const char *id, int64_t time_ms, struct loom_str data,
                            struct loom_error *err)
{
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "model");
    loom_json_write_str(&w, model);
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
    /* data is an object the registry wrote: splice its members in after "model". */
    size_t i = 1;
    while (i < data.len && (data.ptr[i] == ' ' || data.ptr[i] == '\n'))
        i++;
    if (i < data.len && data.ptr[i] != '}') {
        b.len--; /* the closing brace */
        loom_buf_append(&b, ",", 1);
        loom_buf_append(&b, data.ptr + i, data.len - i);
    }
    struct loom_event_spec spec = {
        .id = loom_str_cstr(id),
        .source = "/loom/registry",
        .type = reg_event_types[type],
        .subject = model,
        .time_ns = time_ms * (int64_t)LOOM_NS_PER_MS,
        .data = loom_buf_str(&b),
    };
    loom_err e = loom_outbox_add_event(db, &spec, NULL, NULL, err);
    loom_buf_release(&b);
    return e;
}

loom_err reg_emit(struct loom_db *db, struct loom_str model, enum reg_event_type type,
                  struct loom_str data, int64_t *time_ms_out, struct loom_error *err)
{
    int64_t seq = 0;
    struct loom_sql_value p[6] = { LOOM_SQL_TEXT_V(model) };
    loom_err e =
        loom_db_exec(db, "SELECT COALESCE(MAX(seq), 0) FROM registry_events WHERE model = $1", p, 1,
                     get_i64, &seq, NULL, err);
    if (e)
        return e;
    char id[LOOM_UUID_LEN + 1];
    loom_uuid7(id);
    int64_t now_ms = loom_wall_ns() / (int64_t)LOOM_NS_PER_MS;
    p[1] = LOOM_SQL_INT_V(seq + 1);
    p[2] = LOOM_SQL_CSTR_V(id);
    p[3] = LOOM_SQL_CSTR_V(reg_event_types[type]);
    p[4] = LOOM_SQL_INT_V(now_ms);
    p[5] = LOOM_SQL_TEXT_V(data);
    e = loom_db_exec(db,
                     "INSERT INTO registry_events (model, seq, id, type, time_ms, data)"
                     " VALUES ($1, $2, $3, $4, $5, $6)",
                     p, 6, NULL, NULL, NULL, err);
    if (e == LOOM_ECONFLICT)
        return loom_error_set(err, LOOM_EBUSY,
                              "event %lld of model %.*s was taken by another writer",
                              (long long)(seq + 1), LOOM_STR_FMT(model));
    if (e)
        return e;
    e = reg_apply(db, model, loom_str_cstr(reg_event_types[type]), now_ms, data, err);
    if (!e)
        e = queue_event(db, model, type, id, now_ms, data, err);
    if (!e && time_ms_out)
        *time_ms_out = now_ms;
    return e;
}

/* ---- applying ---- */

/* The event's data, parsed. */
struct ev {
    struct loom_json_doc doc;
    struct loom_arena *arena;
};

static int ev_get(const struct ev *ev, const char *key)
{
    return loom_json_obj_get(&ev->doc, 0, key);
}

static loom_err ev_str(const struct ev *ev, const char *key, struct loom_str *out)
{
    int i = ev_get(ev, key);
    if (i < 0 || !loom_json_is_string(&ev->doc, i))
        return LOOM_ENOTFOUND;
    return loom_json_unescape(&ev->doc, i, ev->arena, out);
}

static loom_err ev_i64(const struct ev *ev, const char *key, int64_t *out, bool *is_null)
{
    int i = ev_get(ev, key);
    if (is_null)
        *is_null = i < 0 || loom_json_is_null(&ev->doc, i);
    if (i < 0 || loom_json_is_null(&ev->doc, i))
        return is_null ? LOOM_OK : LOOM_ENOTFOUND;
    return loom_json_to_i64(&ev->doc, i, out);
}

/* The JSON text of member `key` (a container or scalar), or `def`. */
static struct loom_str ev_raw(const struct ev *ev, const char *key, const char *def)
{
    int i = ev_get(ev, key);
    if (i < 0)
        return loom_str_cstr(def);
    struct loom_str s = loom_json_slice(&ev->doc, i);
    if (loom_json_is_string(&ev->doc, i))
        s = loom_str_make(s.ptr - 1, s.len + 2); /* with its quotes */
    return s;
}

struct meta_arg {
    struct loom_arena *arena;
    struct loom_str metadata;
    bool found;
};

static loom_err get_metadata(const struct loom_sql_row *row, void *arg)
{
    struct meta_arg *m = arg;
    const struct loom_sql_value *v = loom_sql_col(row, "metadata");
    if (v && v->type == LOOM_SQL_TEXT) {
        m->metadata = loom_str_make(loom_arena_memdup(m->arena, v->s.ptr, v->s.len), v->s.len);
        m->found = true;
    }
    return LOOM_OK;
}

/* metadata with its "description" replaced by `desc` (a JSON string token's text, quoted). */
static struct loom_str metadata_with_description(struct loom_arena *a, struct loom_str metadata,
                                                 struct loom_str desc)
{
    struct loom_json_doc doc;
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    if (!loom_json_parse(metadata.ptr, metadata.len, NULL, a, &doc, NULL) &&
        loom_json_is_object(&doc, 0)) {
        loom_json_foreach (&doc, 0, k) {
            if (loom_json_str_eq(&doc, k, LOOM_STR("description")))
                continue;
            struct loom_str key;
            if (loom_json_unescape(&doc, k, a, &key))
                continue;
            loom_json_write_keyn(&w, key);
            struct loom_str v = loom_json_slice(&doc, k + 1);
            if (loom_json_is_string(&doc, k + 1))
                v = loom_str_make(v.ptr - 1, v.len + 2);
            loom_json_write_raw(&w, v);
        }
    }
    loom_json_write_key(&w, "description");
    loom_json_write_raw(&w, desc);
    loom_json_write_object_end(&w);
    struct loom_str out = loom_str_make(loom_arena_memdup(a, b.data, b.len), b.len);
    loom_buf_release(&b);
    return out;
}

static loom_err touch_model(struct loom_db *db, struct loom_str model, int64_t t,
                            struct loom_error *err)
{
    struct loom_sql_value p[2] = { LOOM_SQL_TEXT_V(model), LOOM_SQL_INT_V(t) };
    return loom_db_exec(db, "UPDATE registry_models SET updated_ms = $2 WHERE name = $1", p, 2,
                        NULL, NULL, NULL, err);
}

static loom_err apply_parsed(struct loom_db *db, struct loom_str model, struct loom_str type,
                             int64_t t, const struct ev *ev, struct loom_error *err)
{
    struct loom_sql_value p[10];
    p[0] = LOOM_SQL_TEXT_V(model);
    if (loom_str_eq_cstr(type, reg_event_types[REG_EV_MODEL_CREATED])) {
        struct loom_str desc = LOOM_STR("");
        ev_str(ev, "description", &desc);
        p[1] = LOOM_SQL_TEXT_V(desc);
        p[2] = LOOM_SQL_TEXT_V(ev_raw(ev, "tags", "{}"));
        p[3] = LOOM_SQL_INT_V(t);
        return loom_db_exec(db,
                            "INSERT INTO registry_models (name, description, tags, latest_version,"
                            " created_ms, updated_ms) VALUES ($1, $2, $3, 0, $4, $4)",
                            p, 4, NULL, NULL, NULL, err);
    }
    if (loom_str_eq_cstr(type, reg_event_types[REG_EV_MODEL_UPDATED])) {
        struct loom_str desc;
        loom_err e = LOOM_OK;
        if (!ev_str(ev, "description", &desc)) {
            p[1] = LOOM_SQL_TEXT_V(desc);
            e = loom_db_exec(db, "UPDATE registry_models SET description = $2 WHERE name = $1", p,
                             2, NULL, NULL, NULL, err);
        }
        if (!e && ev_get(ev, "tags") >= 0) {
            p[1] = LOOM_SQL_TEXT_V(ev_raw(ev, "tags", "{}"));
            e = loom_db_exec(db, "UPDATE registry_models SET tags = $2 WHERE name = $1", p, 2, NULL,
                             NULL, NULL, err);
        }
        return e ? e : touch_model(db, model, t, err);
    }
    if (loom_str_eq_cstr(type, reg_event_types[REG_EV_MODEL_DELETED])) {
        static const char *const del[] = {
            "DELETE FROM registry_aliases WHERE model = $1",
            "DELETE FROM registry_versions WHERE model = $1",
            "DELETE FROM registry_models WHERE name = $1",
        };
        for (size_t i = 0; i < LOOM_ARRAY_SIZE(del); i++) {
            loom_err e = loom_db_exec(db, del[i], p, 1, NULL, NULL, NULL, err);
            if (e)
                return e;
        }
        return LOOM_OK;
    }
    if (loom_str_eq_cstr(type, reg_event_types[REG_EV_VERSION_CREATED])) {
        int64_t version = 0, size = 0;
        struct loom_str digest, format, backend, status;
        if (ev_i64(ev, "version", &version, NULL) || ev_i64(ev, "size", &size, NULL) ||
            ev_str(ev, "artifact_digest", &digest) || ev_str(ev, "format", &format) ||
            ev_str(ev, "backend", &backend) || ev_str(ev, "status", &status))
            return loom_error_set(err, LOOM_EINVAL, "event data of %.*s is incomplete",
                                  LOOM_STR_FMT(type));
        p[1] = LOOM_SQL_INT_V(version);
        p[2] = LOOM_SQL_TEXT_V(digest);
        p[3] = LOOM_SQL_INT_V(size);
        p[4] = LOOM_SQL_TEXT_V(format);
        p[5] = LOOM_SQL_TEXT_V(backend);
        p[6] = LOOM_SQL_TEXT_V(ev_raw(ev, "signature", "{}"));
        p[7] = LOOM_SQL_TEXT_V(status);
        p[8] = LOOM_SQL_TEXT_V(ev_raw(ev, "metadata", "{}"));
        p[9] = LOOM_SQL_INT_V(t);
        loom_err e = loom_db_exec(
            db,
            "INSERT INTO registry_versions (model, version, artifact_digest, size, format, backend,"
            " signature, status, metadata, created_ms, updated_ms)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
            p, 10, NULL, NULL, NULL, err);
        if (e)
            return e;
        p[2] = LOOM_SQL_INT_V(t);
        return loom_db_exec(db,
                            "UPDATE registry_models SET latest_version = $2, updated_ms = $3"
                            " WHERE name = $1",
                            p, 3, NULL, NULL, NULL, err);
    }
    if (loom_str_eq_cstr(type, reg_event_types[REG_EV_VERSION_UPDATED])) {
        int64_t version = 0;
        if (ev_i64(ev, "version", &version, NULL))
            return loom_error_set(err, LOOM_EINVAL, "event data of %.*s has no version",
                                  LOOM_STR_FMT(type));
        p[1] = LOOM_SQL_INT_V(version);
        p[2] = LOOM_SQL_INT_V(t);
        struct loom_str status;
        loom_err e = LOOM_OK;
        if (!ev_str(ev, "status", &status)) {
            p[3] = LOOM_SQL_TEXT_V(status);
            e = loom_db_exec(db,
                             "UPDATE registry_versions SET status = $4, updated_ms = $3"
                             " WHERE model = $1 AND version = $2",
                             p, 4, NULL, NULL, NULL, err);
        }
        int d = ev_get(ev, "description");
        if (!e && d >= 0 && loom_json_is_string(&ev->doc, d)) {
            struct meta_arg m = { .arena = ev->arena };
            e = loom_db_exec(db,
                             "SELECT metadata FROM registry_versions WHERE model = $1"
                             " AND version = $2",
                             p, 2, get_metadata, &m, NULL, err);
            if (!e && m.found) {
                p[3] = LOOM_SQL_TEXT_V(metadata_with_description(ev->arena, m.metadata,
                                                                 ev_raw(ev, "description", "")));
                e = loom_db_exec(db,
                                 "UPDATE registry_versions SET metadata = $4, updated_ms = $3"
                                 " WHERE model = $1 AND version = $2",
                                 p, 4, NULL, NULL, NULL, err);
            }
        }
        return e ? e : touch_model(db, model, t, err);
    }
    if (loom_str_eq_cstr(type, reg_event_types[REG_EV_ALIAS_CHANGED])) {
        struct loom_str alias;
        int64_t version = 0;
        bool is_null = false;
        if (ev_str(ev, "alias", &alias) || ev_i64(ev, "version", &version, &is_null))
            return loom_error_set(err, LOOM_EINVAL, "event data of %.*s is incomplete",
                                  LOOM_STR_FMT(type));
        p[1] = LOOM_SQL_TEXT_V(alias);
        p[2] = LOOM_SQL_INT_V(version);
        p[3] = LOOM_SQL_INT_V(t);
        loom_err e;
        if (is_null)
            e = loom_db_exec(db, "DELETE FROM registry_aliases WHERE model = $1 AND alias = $2", p,
                             2, NULL, NULL, NULL, err);
        else
            e = loom_db_exec(db,
                             "INSERT INTO registry_aliases (model, alias, version, updated_ms)"
                             " VALUES ($1, $2, $3, $4) ON CONFLICT (model, alias)"
                             " DO UPDATE SET version = excluded.version,"
                             " updated_ms = excluded.updated_ms",
                             p, 4, NULL, NULL, NULL, err);
        return e ? e : touch_model(db, model, t, err);
    }
    return loom_error_set(err, LOOM_EINVAL, "unknown event type %.*s", LOOM_STR_FMT(type));
}

loom_err reg_apply(struct loom_db *db, struct loom_str model, struct loom_str type, int64_t time_ms,
                   struct loom_str data, struct loom_error *err)
{
    struct loom_arena arena;
    loom_arena_init(&arena, 0);
    struct ev ev = { .arena = &arena };
    struct loom_json_limits lim = { .max_depth = 128 };
    loom_err e = loom_json_parse(data.ptr, data.len, &lim, &arena, &ev.doc, err);
    if (!e && !loom_json_is_object(&ev.doc, 0))
        e = loom_error_set(err, LOOM_EINVAL, "event data is not an object");
    if (!e)
        e = apply_parsed(db, model, type, time_ms, &ev, err);
    loom_arena_release(&arena);
    return e;
}

/* ---- rebuilding ---- */

struct batch_row {
    char *model, *type, *data;
    size_t model_len, type_len, data_len;
    int64_t seq, time_ms;
};

struct batch {
    struct batch_row rows[500];
    size_t n;
};

static char *dup_col(const struct loom_sql_value *v, size_t *len)
{
    *len = v && v->type == LOOM_SQL_TEXT ? v->s.len : 0;
    return loom_strndup(*len ? v->s.ptr : "", *len);
}

static loom_err collect_event(const struct loom_sql_row *row, void *arg)
{
    struct batch *b = arg;
    struct batch_row *r = &b->rows[b->n++];
    r->model = dup_col(loom_sql_col(row, "model"), &r->model_len);
    r->type = dup_col(loom_sql_col(row, "type"), &r->type_len);
    r->data = dup_col(loom_sql_col(row, "data"), &r->data_len);
    r->seq = loom_sql_col(row, "seq")->i;
    r->time_ms = loom_sql_col(row, "time_ms")->i;
    return LOOM_OK;
}

static void batch_clear(struct batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        free(b->rows[i].model);
        free(b->rows[i].type);
        free(b->rows[i].data);
    }
    b->n = 0;
}

struct rebuild {
    struct batch *batch;
    int64_t events;
};

static loom_err rebuild_tx(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct rebuild *rb = arg;
    rb->events = 0;
    static const char *const wipe[] = {
        "DELETE FROM registry_aliases",
        "DELETE FROM registry_versions",
        "DELETE FROM registry_models",
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(wipe); i++) {
        loom_err e = loom_db_exec(db, wipe[i], NULL, 0, NULL, NULL, NULL, err);
        if (e)
            return e;
    }
    /* In pages by (model, seq): no statement runs while another one's rows are being read. */
    char *last_model = loom_strdup("");
    int64_t last_seq = 0;
    loom_err e = LOOM_OK;
    for (;;) {
        struct batch *b = rb->batch;
        struct loom_sql_value p[3] = { LOOM_SQL_CSTR_V(last_model), LOOM_SQL_INT_V(last_seq),
                                       LOOM_SQL_INT_V(LOOM_ARRAY_SIZE(b->rows)) };
        e = loom_db_exec(db,
                         "SELECT model, seq, type, time_ms, data FROM registry_events"
                         " WHERE model > $1 OR (model = $1 AND seq > $2)"
                         " ORDER BY model, seq LIMIT $3",
                         p, 3, collect_event, b, NULL, err);
        for (size_t i = 0; !e && i < b->n; i++) {
            struct batch_row *r = &b->rows[i];
            e = reg_apply(db, loom_str_make(r->model, r->model_len),
                          loom_str_make(r->type, r->type_len), r->time_ms,
                          loom_str_make(r->data, r->data_len), err);
            if (e)
                loom_error_prefix(err, "event %lld of model %s", (long long)r->seq, r->model);
            rb->events++;
        }
        size_t n = b->n;
        if (n) {
            free(last_model);
            last_model = loom_strdup(b->rows[n - 1].model);
            last_seq = b->rows[n - 1].seq;
        }
        batch_clear(b);
        if (e || n < LOOM_ARRAY_SIZE(b->rows))
            break;
    }
    free(last_model);
    return e;
}

loom_err reg_rebuild(struct loom_store *store, struct loom_error *err)
{
    struct rebuild rb = { .batch = loom_new(struct batch) };
    uint64_t t0 = loom_now_ns();
    loom_err e = loom_store_tx(store, rebuild_tx, &rb, err);
    batch_clear(rb.batch);
    free(rb.batch);
    if (!e)
        LOOM_LOG_KV(LOOM_LOG_INFO, "projections rebuilt from the event log",
                    LOOM_KV_INT("events", rb.events),
                    LOOM_KV_DBL("seconds", (double)(loom_now_ns() - t0) / 1e9));
    return e;
}

/* ---- gauges ---- */

struct counts {
    int64_t models, versions;
};

static loom_err get_counts(const struct loom_sql_row *row, void *arg)
{
    struct counts *c = arg;
    c->models = row->cols[0].type == LOOM_SQL_INT ? row->cols[0].i : 0;
    c->versions = row->cols[1].type == LOOM_SQL_INT ? row->cols[1].i : 0;
    return LOOM_OK;
}

void reg_refresh_gauges(struct reg_service *reg)
{
    struct loom_db *db;
    struct loom_error err = { 0 };
    if (loom_store_acquire(reg->store, &db, &err))
        return;
    struct counts c = { 0 };
    if (!loom_db_exec(db,
                      "SELECT (SELECT COUNT(*) FROM registry_models),"
                      " (SELECT COUNT(*) FROM registry_versions)",
                      NULL, 0, get_counts, &c, NULL, &err)) {
        loom_gauge_set(reg->g_models, (double)c.models);
        loom_gauge_set(reg->g_versions, (double)c.versions);
    }
    loom_store_release(reg->store, db);
}
