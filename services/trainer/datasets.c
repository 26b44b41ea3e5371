/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Datasets: CSV files with a header row, uploaded once and named by the SHA-256 of their bytes.
 * An upload is hashed, written to a temporary file and parsed in one pass while it streams in
 * (on the loop thread, chunk by chunk: nothing holds the whole file), so that a malformed file
 * is refused with the line and column of its first error and a good one is described as it
 * arrives: rows, and per column its type (number unless some non-empty value is not a number),
 * its missing (empty) values and, for numbers, the smallest and largest. The file is then
 * synced and renamed to <datasets>/<hex>.csv on the pool, and its description recorded in the
 * store. The same bytes uploaded again give the same digest (200 instead of 201).
 */
#include "trainer/trainer.h"

#include <loom/csv.h>
#include <loom/id.h>
#include <loom/log.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define COLUMN_NAME_MAX 200

/* ---- descriptions ---- */

void trn_dataset_release(struct trn_dataset *d)
{
    for (size_t i = 0; i < d->ncols; i++)
        free(d->cols[i].name);
    free(d->cols);
    d->cols = NULL;
    d->ncols = 0;
}

static void columns_json(struct loom_json_writer *w, const struct trn_dataset *d)
{
    loom_json_write_array_begin(w);
    for (size_t i = 0; i < d->ncols; i++) {
        const struct trn_column *c = &d->cols[i];
        loom_json_write_object_begin(w);
        loom_json_write_key(w, "name");
        loom_json_write_string(w, c->name);
        loom_json_write_key(w, "type");
        loom_json_write_string(w, c->is_string ? "string" : "number");
        loom_json_write_key(w, "missing");
        loom_json_write_u64(w, c->missing);
        if (!c->is_string && !isnan(c->min)) {
            loom_json_write_key(w, "min");
            loom_json_write_double(w, c->min);
            loom_json_write_key(w, "max");
            loom_json_write_double(w, c->max);
        }
        loom_json_write_object_end(w);
    }
    loom_json_write_array_end(w);
}

void trn_dataset_json(struct loom_json_writer *w, const struct trn_dataset *d)
{
    loom_json_write_object_begin(w);
    loom_json_write_key(w, "digest");
    loom_json_write_string(w, d->digest);
    loom_json_write_key(w, "rows");
    loom_json_write_u64(w, d->rows);
    loom_json_write_key(w, "columns");
    columns_json(w, d);
    loom_json_write_key(w, "size");
    loom_json_write_u64(w, d->size);
    trn_write_time(w, "created_at", d->created_ms);
    loom_json_write_object_end(w);
}

loom_err trn_columns_parse(struct loom_str json, struct trn_dataset *d, struct loom_error *err)
{
    struct loom_arena a;
    loom_arena_init(&a, 0);
    struct loom_json_doc doc;
    loom_err e = loom_json_parse(json.ptr, json.len, NULL, &a, &doc, err);
    if (e)
        goto out;
    if (!loom_json_is_array(&doc, 0)) {
        e = loom_error_set(err, LOOM_EINVAL, "stored columns are not an array");
        goto out;
    }
    size_t n = (size_t)loom_json_size(&doc, 0), k = 0;
    d->cols = loom_calloc(n ? n : 1, sizeof(*d->cols));
    loom_json_foreach (&doc, 0, i) {
        struct trn_column *c = &d->cols[k];
        int name = loom_json_obj_get(&doc, i, "name"), type = loom_json_obj_get(&doc, i, "type");
        int missing = loom_json_obj_get(&doc, i, "missing");
        int min = loom_json_obj_get(&doc, i, "min"), max = loom_json_obj_get(&doc, i, "max");
        struct loom_str s;
        if (name < 0 || type < 0 || missing < 0 || loom_json_unescape(&doc, name, &a, &s)) {
            e = loom_error_set(err, LOOM_EINVAL, "stored column %zu is malformed", k);
            break;
        }
        c->name = loom_str_dup(s);
        c->is_string = loom_json_str_eq(&doc, type, LOOM_STR("string"));
        loom_json_to_u64(&doc, missing, &c->missing);
        c->min = c->max = NAN;
        if (min >= 0 && max >= 0) {
            loom_json_to_double(&doc, min, &c->min);
            loom_json_to_double(&doc, max, &c->max);
        }
        k++;
        d->ncols = k;
    }
out:
    loom_arena_release(&a);
    return e;
}

/* ---- the store ---- */

struct ds_rows {
    struct trn_dataset *items;
    size_t n, cap;
    struct loom_error *err;
};

static loom_err ds_row_fill(const struct loom_sql_row *row, struct trn_dataset *d,
                            struct loom_error *err)
{
    const struct loom_sql_value *dg = loom_sql_col(row, "digest"),
                                *size = loom_sql_col(row, "size"),
                                *nrows = loom_sql_col(row, "nrows"),
                                *cols = loom_sql_col(row, "columns_json"),
                                *at = loom_sql_col(row, "created_at");
    if (!dg || !size || !nrows || !cols || !at)
        return loom_error_set(err, LOOM_EINTERNAL, "dataset row without its columns");
    snprintf(d->digest, sizeof(d->digest), "%.*s", LOOM_STR_FMT(dg->s));
    d->size = (uint64_t)size->i;
    d->rows = (uint64_t)nrows->i;
    d->created_ms = at->i;
    return trn_columns_parse(cols->s, d, err);
}

static loom_err ds_row(const struct loom_sql_row *row, void *arg)
{
    struct ds_rows *r = arg;
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 8;
        r->items = loom_realloc(r->items, r->cap * sizeof(*r->items));
    }
    struct trn_dataset *d = &r->items[r->n++];
    memset(d, 0, sizeof(*d));
    return ds_row_fill(row, d, r->err);
}

static void ds_rows_release(struct ds_rows *r)
{
    for (size_t i = 0; i < r->n; i++)
        trn_dataset_release(&r->items[i]);
    free(r->items);
}

#define DS_COLUMNS "digest, size, nrows, columns_json, created_at"

loom_err trn_dataset_get(struct loom_db *db, const char *digest, struct trn_dataset *out,
                         struct loom_error *err)
{
    struct ds_rows r = { .err = err };
    struct loom_sql_value p[] = { LOOM_SQL_CSTR_V(digest) };
    loom_err e = loom_db_exec(db, "SELECT " DS_COLUMNS " FROM trn_datasets WHERE digest = $1", p, 1,
                              ds_row, &r, NULL, err);
    if (!e && r.n == 0)
        e = loom_error_set(err, LOOM_ENOTFOUND, "no dataset %s", digest);
    if (!e) {
        *out = r.items[0];
        r.items[0] = (struct trn_dataset){ 0 };
    }
    ds_rows_release(&r);
    return e;
}

char *trn_dataset_path(const struct trn_service *trn, const char *hex)
{
    size_t n = strlen(trn->datasets_dir) + strlen(hex) + 8;
    char *p = loom_malloc(n);
    snprintf(p, n, "%s/%s.csv", trn->datasets_dir, hex);
    return p;
}

/* "sha256:<64 lowercase hex>" */
static bool valid_digest(struct loom_str s)
{
    return s.len == 71 && memcmp(s.ptr, "sha256:", 7) == 0 &&
           loom_sha256_hex_valid(loom_str_make(s.ptr + 7, 64));
}

/* ---- GET /api/v1/datasets[/{digest}] ---- */

struct get_args {
    char digest[72];
    int64_t limit;
    int64_t cursor_ms;
    char cursor_digest[72];
    bool has_cursor;
};

static void op_dataset_get(struct trn_op *op)
{
    struct get_args *a = op->args;
    struct loom_error err = { 0 };
    struct loom_db *db;
    loom_err e = loom_store_acquire(op->trn->store, &db, &err);
    if (e) {
        trn_op_store_error(op, e, &err);
        return;
    }
    struct trn_dataset d;
    e = trn_dataset_get(db, a->digest, &d, &err);
    loom_store_release(op->trn->store, db);
    if (e == LOOM_ENOTFOUND) {
        trn_op_problem(op, 404, "digest", "no dataset %s", a->digest);
        return;
    }
    if (e) {
        trn_op_store_error(op, e, &err);
        return;
    }
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    trn_dataset_json(&w, &d);
    loom_json_writer_finish(&w);
    trn_dataset_release(&d);
    trn_op_json(op, 200, &b);
}

void trn_h_dataset_get(struct loom_http_req *req)
{
    struct loom_str digest = loom_http_req_param(req, "digest");
    if (!valid_digest(digest)) {
        trn_problem(req, 400, "digest", "a dataset is named sha256:<64 lowercase hex digits>");
        return;
    }
    struct get_args *a = loom_arena_new(req->arena, struct get_args);
    snprintf(a->digest, sizeof(a->digest), "%.*s", LOOM_STR_FMT(digest));
    trn_op_submit(trn_op_new(req, op_dataset_get, a));
}

static void op_dataset_list(struct trn_op *op)
{
    struct get_args *a = op->args;
    struct loom_error err = { 0 };
    struct ds_rows r = { .err = &err };
    loom_err e;
    /* One row more than asked says whether there is a next page. */
    if (a->has_cursor) {
        struct loom_sql_value p[] = { LOOM_SQL_INT_V(a->cursor_ms),
                                      LOOM_SQL_CSTR_V(a->cursor_digest),
                                      LOOM_SQL_INT_V(a->limit + 1) };
        e = trn_exec(op->trn->store,
                     "SELECT " DS_COLUMNS " FROM trn_datasets WHERE created_at < $1 OR "
                     "(created_at = $1 AND digest < $2) ORDER BY created_at DESC, digest DESC "
                     "LIMIT $3",
                     p, 3, ds_row, &r, NULL, &err);
    } else {
        struct loom_sql_value p[] = { LOOM_SQL_INT_V(a->limit + 1) };
        e = trn_exec(op->trn->store,
                     "SELECT " DS_COLUMNS " FROM trn_datasets ORDER BY created_at DESC, "
                     "digest DESC LIMIT $1",
                     p, 1, ds_row, &r, NULL, &err);
    }
    if (e) {
        ds_rows_release(&r);
        trn_op_store_error(op, e, &err);
        return;
    }
    bool more = r.n > (size_t)a->limit;
    size_t n = more ? (size_t)a->limit : r.n;
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "items");
    loom_json_write_array_begin(&w);
    for (size_t i = 0; i < n; i++)
        trn_dataset_json(&w, &r.items[i]);
    loom_json_write_array_end(&w);
    loom_json_write_key(&w, "next_cursor");
    if (more) {
        char cursor[96];
        snprintf(cursor, sizeof(cursor), "%lld_%s", (long long)r.items[n - 1].created_ms,
                 r.items[n - 1].digest + 7);
        loom_json_write_string(&w, cursor);
    } else {
        loom_json_write_null(&w);
    }
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
    ds_rows_release(&r);
    trn_op_json(op, 200, &b);
}

void trn_h_dataset_list(struct loom_http_req *req)
{
    struct get_args *a = loom_arena_new(req->arena, struct get_args);
    if (!trn_query_limit(req, &a->limit))
        return;
    struct loom_str c;
    if (loom_http_req_query(req, "cursor", &c)) {
        struct loom_str ms;
        struct loom_str hex = loom_str_cut(c, '_', &ms);
        if (loom_str_to_i64(ms, &a->cursor_ms) || !loom_sha256_hex_valid(hex)) {
            trn_problem(req, 400, "cursor", "cursor is not one this API gave out");
            return;
        }
        snprintf(a->cursor_digest, sizeof(a->cursor_digest), "sha256:%.*s", LOOM_STR_FMT(hex));
        a->has_cursor = true;
    }
    trn_op_submit(trn_op_new(req, op_dataset_list, a));
}

/* ---- POST /api/v1/datasets ---- */

struct upload {
    struct trn_service *trn;
    struct loom_http_req *req;
    int fd;
    char *tmp;
    struct loom_sha256 h;
    bool hashing;
    uint64_t size, max;
    struct loom_csv_reader csv;
    struct loom_error csv_err;
    bool csv_failed;
    struct loom_error io_err;
    bool io_failed;
    struct trn_dataset ds;
    bool committed; /* the temporary file became the dataset (or was dropped for it) */
};

static void upload_cleanup(void *arg)
{
    struct upload *u = arg;
    if (u->hashing)
        loom_sha256_abandon(&u->h);
    if (u->fd >= 0)
        close(u->fd);
    if (u->tmp && !u->committed)
        unlink(u->tmp);
    free(u->tmp);
    loom_csv_reader_release(&u->csv);
    trn_dataset_release(&u->ds);
}

static int cmp_name_idx(const void *a, const void *b, void *arg)
{
    const struct trn_column *cols = arg;
    return strcmp(cols[*(const size_t *)a].name, cols[*(const size_t *)b].name);
}

static loom_err on_header(struct loom_csv_reader *r, const struct loom_csv_record *rec,
                          struct upload *u, struct loom_error *err)
{
    u->ds.cols = loom_calloc(rec->nfields, sizeof(*u->ds.cols));
    for (size_t i = 0; i < rec->nfields; i++) {
        struct loom_str name = rec->fields[i];
        if (name.len == 0)
            return loom_csv_fail(r, err, LOOM_EINVAL, rec->line, rec->columns[i],
                                 "column %zu of the header row has no name", i + 1);
        if (name.len > COLUMN_NAME_MAX)
            return loom_csv_fail(r, err, LOOM_EINVAL, rec->line, rec->columns[i],
                                 "column %zu's name is longer than %d bytes", i + 1,
                                 COLUMN_NAME_MAX);
        if (memchr(name.ptr, '\n', name.len) || memchr(name.ptr, '\r', name.len))
            return loom_csv_fail(r, err, LOOM_EINVAL, rec->line, rec->columns[i],
                                 "column %zu's name holds a line break", i + 1);
        struct trn_column *c = &u->ds.cols[u->ds.ncols++];
        c->name = loom_str_dup(name);
        c->min = c->max = NAN;
    }
    /* Names must be unique: sort indices by name and compare neighbours. */
    size_t n = u->ds.ncols;
    size_t *idx = loom_malloc(n * sizeof(*idx));
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    qsort_r(idx, n, sizeof(*idx), cmp_name_idx, u->ds.cols);
    loom_err e = LOOM_OK;
    for (size_t i = 1; i < n && !e; i++)
        if (strcmp(u->ds.cols[idx[i - 1]].name, u->ds.cols[idx[i]].name) == 0) {
            size_t later = LOOM_MAX(idx[i - 1], idx[i]);
            e = loom_csv_fail(r, err, LOOM_EINVAL, rec->line, rec->columns[later],
                              "column name \"%s\" appears twice in the header row",
                              u->ds.cols[later].name);
        }
    free(idx);
    return e;
}

static loom_err on_record(struct loom_csv_reader *r, const struct loom_csv_record *rec, void *arg,
                          struct loom_error *err)
{
    struct upload *u = arg;
    if (rec->index == 0)
        return on_header(r, rec, u, err);
    if (rec->nfields != u->ds.ncols) {
        size_t at = LOOM_MIN(rec->nfields, u->ds.ncols + 1) - 1;
        return loom_csv_fail(r, err, LOOM_EINVAL, rec->line, rec->columns[at],
                             "this row has %zu fields but the header row has %zu", rec->nfields,
                             u->ds.ncols);
    }
    for (size_t i = 0; i < rec->nfields; i++) {
        struct trn_column *c = &u->ds.cols[i];
        struct loom_str f = rec->fields[i];
        if (f.len == 0) {
            c->missing++;
            continue;
        }
        if (c->is_string)
            continue;
        double v;
        if (!loom_csv_number(f, &v)) {
            c->is_string = true;
            continue;
        }
        if (isnan(c->min) || v < c->min)
            c->min = v;
        if (isnan(c->max) || v > c->max)
            c->max = v;
    }
    u->ds.rows++;
    return LOOM_OK;
}

static loom_err write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return LOOM_EIO;
        p += k;
        n -= (size_t)k;
    }
    return LOOM_OK;
}

static loom_err on_data(struct loom_http_req *req, struct loom_str chunk, void *arg)
{
    LOOM_UNUSED(req);
    struct upload *u = arg;
    if (chunk.len > u->max - u->size)
        return LOOM_ETOOBIG;
    u->size += chunk.len;
    if (u->csv_failed || u->io_failed)
        return LOOM_OK; /* read the rest, to answer a client still sending */
    loom_sha256_update(&u->h, chunk.ptr, chunk.len);
    if (write_all(u->fd, chunk.ptr, chunk.len)) {
        loom_error_errno(&u->io_err, "writing %s", u->tmp);
        u->io_failed = true;
        return LOOM_OK;
    }
    if (loom_csv_feed(&u->csv, chunk.ptr, chunk.len, &u->csv_err))
        u->csv_failed = true;
    return LOOM_OK;
}

/* On the pool: make the file durable under its digest and record the description. */
static void op_dataset_commit(struct trn_op *op)
{
    struct upload *u = op->args;
    struct trn_service *trn = op->trn;
    struct loom_error err = { 0 };
    if (fsync(u->fd) < 0) {
        loom_error_errno(&err, "fsync %s", u->tmp);
        LOOM_LOG_KV(LOOM_LOG_ERROR, "dataset not stored", LOOM_KV_CSTR("error", err.msg));
        trn_op_problem(op, 500, NULL, "the dataset could not be stored");
        return;
    }
    close(u->fd);
    u->fd = -1;
    char *path = trn_dataset_path(trn, u->ds.digest + 7);
    /* Same bytes, same name: a file already there is this dataset, keep it. */
    struct stat st;
    if (stat(path, &st) == 0 && (uint64_t)st.st_size == u->size) {
        unlink(u->tmp);
        u->committed = true;
    } else if (rename(u->tmp, path) == 0) {
        u->committed = true;
        int dfd = open(trn->datasets_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    } else {
        loom_error_errno(&err, "rename %s to %s", u->tmp, path);
        LOOM_LOG_KV(LOOM_LOG_ERROR, "dataset not stored", LOOM_KV_CSTR("error", err.msg));
        free(path);
        trn_op_problem(op, 500, NULL, "the dataset could not be stored");
        return;
    }
    free(path);

    struct loom_buf cols;
    loom_buf_init(&cols, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &cols);
    columns_json(&w, &u->ds);
    loom_json_writer_finish(&w);
    u->ds.created_ms = trn_now_ms();
    struct loom_sql_value p[] = {
        LOOM_SQL_CSTR_V(u->ds.digest),    LOOM_SQL_INT_V(u->ds.size),
        LOOM_SQL_INT_V(u->ds.rows),       LOOM_SQL_TEXT_V(loom_buf_str(&cols)),
        LOOM_SQL_INT_V(u->ds.created_ms),
    };
    int64_t changes = 0;
    loom_err e = trn_exec(trn->store,
                          "INSERT INTO trn_datasets (" DS_COLUMNS ") VALUES ($1, $2, $3, $4, $5) "
                          "ON CONFLICT (digest) DO NOTHING",
                          p, LOOM_ARRAY_SIZE(p), NULL, NULL, &changes, &err);
    loom_buf_release(&cols);
    if (e) {
        trn_op_store_error(op, e, &err);
        return;
    }
    struct trn_dataset stored;
    struct loom_db *db;
    if (!changes) {
        /* Known already: answer with the description as first recorded. */
        if (!(e = loom_store_acquire(trn->store, &db, &err))) {
            e = trn_dataset_get(db, u->ds.digest, &stored, &err);
            loom_store_release(trn->store, db);
        }
        if (e) {
            trn_op_store_error(op, e, &err);
            return;
        }
    }
    loom_counter_inc(trn->c_datasets);
    LOOM_LOG_KV(LOOM_LOG_INFO, changes ? "dataset stored" : "dataset already known",
                LOOM_KV_CSTR("digest", u->ds.digest), LOOM_KV_UINT("rows", u->ds.rows),
                LOOM_KV_UINT("columns", u->ds.ncols), LOOM_KV_UINT("bytes", u->ds.size));
    struct loom_buf b;
    loom_buf_init(&b, 0);
    loom_json_writer_init(&w, &b);
    trn_dataset_json(&w, changes ? &u->ds : &stored);
    loom_json_writer_finish(&w);
    if (!changes)
        trn_dataset_release(&stored);
    trn_op_json(op, changes ? 201 : 200, &b);
}

static void on_end(struct loom_http_req *req, loom_err status, void *arg)
{
    struct upload *u = arg;
    if (status == LOOM_ETOOBIG) {
        trn_problem(req, 413, NULL, "the dataset is larger than --trainer.max-dataset-bytes (%llu)",
                    (unsigned long long)u->max);
        return;
    }
    if (status) {
        trn_problem(req, 400, NULL, "the upload did not complete: %s", loom_strerror(status));
        return;
    }
    if (u->io_failed) {
        LOOM_LOG_KV(LOOM_LOG_ERROR, "dataset not stored", LOOM_KV_CSTR("error", u->io_err.msg));
        trn_problem(req, 500, NULL, "the dataset could not be stored");
        return;
    }
    if (!u->csv_failed && loom_csv_finish(&u->csv, &u->csv_err))
        u->csv_failed = true;
    if (u->csv_failed) {
        struct loom_buf b;
        loom_buf_init(&b, 0);
        char detail[LOOM_ERROR_MSG_MAX + 32];
        snprintf(detail, sizeof(detail), "malformed CSV: %s", u->csv_err.msg);
        trn_problem_body(&b, 400, detail, NULL, u->csv.err_line, u->csv.err_column);
        loom_http_respond_buf(req, 400, "application/problem+json", &b);
        loom_buf_release(&b);
        return;
    }
    if (u->ds.ncols == 0) {
        trn_problem(req, 400, NULL, "the dataset is empty: a header row and data rows are needed");
        return;
    }
    if (u->ds.rows == 0) {
        trn_problem(req, 400, NULL, "the dataset has a header row but no data rows");
        return;
    }
    uint8_t d[LOOM_SHA256_LEN];
    char hex[LOOM_SHA256_HEX];
    loom_sha256_final(&u->h, d);
    u->hashing = false;
    loom_hex(d, sizeof(d), hex);
    snprintf(u->ds.digest, sizeof(u->ds.digest), "sha256:%s", hex);
    u->ds.size = u->size;
    trn_op_submit(trn_op_new(req, op_dataset_commit, u));
}

void trn_h_dataset_upload(struct loom_http_req *req)
{
    struct trn_service *trn = req->ctx;
    uint64_t max = trn->conf->max_dataset_bytes;
    struct loom_str cl = loom_http_req_header(req, "content-length");
    uint64_t n;
    if (cl.len && loom_str_to_u64(cl, &n) == LOOM_OK && n > max) {
        trn_problem(req, 413, NULL, "the dataset is larger than --trainer.max-dataset-bytes (%llu)",
                    (unsigned long long)max);
        return;
    }
    struct upload *u = loom_arena_new(req->arena, struct upload);
    u->trn = trn;
    u->req = req;
    u->max = max;
    u->fd = -1;
    char id[LOOM_UUID_LEN + 1];
    loom_uuid7(id);
    size_t plen = strlen(trn->datasets_dir) + LOOM_UUID_LEN + 48;
    u->tmp = loom_malloc(plen);
    snprintf(u->tmp, plen, "%s/.upload-%ld-%s", trn->datasets_dir, (long)getpid(), id);
    struct loom_csv_limits lim = { .max_bytes = max };
    loom_csv_reader_init(&u->csv, &lim, on_record, u);
    loom_arena_add_cleanup(req->arena, upload_cleanup, u);
    u->fd = open(u->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (u->fd < 0) {
        struct loom_error err = { 0 };
        loom_error_errno(&err, "create %s", u->tmp);
        LOOM_LOG_KV(LOOM_LOG_ERROR, "dataset not stored", LOOM_KV_CSTR("error", err.msg));
        trn_problem(req, 500, NULL, "the dataset could not be stored");
        return;
    }
    loom_sha256_init(&u->h);
    u->hashing = true;
    loom_http_req_read_body(req, on_data, on_end, u);
}

/* ---- start-up ---- */

loom_err trn_datasets_init(struct trn_service *trn, struct loom_error *err)
{
    const char *dir = trn->datasets_dir;
    /* The parent (the data directory by default) may not exist yet. */
    char *parent = loom_strdup(dir);
    char *slash = strrchr(parent, '/');
    if (slash && slash != parent) {
        *slash = '\0';
        mkdir(parent, 0755);
    }
    free(parent);
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return loom_error_errno(err, "cannot create the datasets directory %s", dir);
    DIR *d = opendir(dir);
    if (!d)
        return loom_error_errno(err, "cannot open the datasets directory %s", dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, ".upload-", 8) != 0)
            continue;
        /* An upload of a process that died: nobody will finish it. Another live process's
         * (a trainer sharing the directory) is left alone. */
        long pid = strtol(e->d_name + 8, NULL, 10);
        if (pid > 0 && pid != (long)getpid() && (kill((pid_t)pid, 0) == 0 || errno == EPERM))
            continue;
        size_t n = strlen(dir) + strlen(e->d_name) + 2;
        char *p = loom_malloc(n);
        snprintf(p, n, "%s/%s", dir, e->d_name);
        unlink(p);
        free(p);
    }
    closedir(d);
    return LOOM_OK;
}

/* ---- loading a dataset for training ---- */

#define DISTINCT_MAX (1u << 16) /* distinct values of a label-encoded column */

/* Interned strings of one column: open addressing, ids in order of first appearance. */
struct strmap {
    char **keys;     /* by id */
    size_t *lens;    /* by id */
    uint32_t *slots; /* id + 1, 0 = empty */
    size_t cap, n;
};

static uint64_t fnv1a(struct loom_str s)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < s.len; i++)
        h = (h ^ (unsigned char)s.ptr[i]) * 1099511628211ull;
    return h;
}

static void strmap_release(struct strmap *m)
{
    for (size_t i = 0; i < m->n; i++)
        free(m->keys[i]);
    free(m->keys);
    free(m->lens);
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

static void strmap_grow(struct strmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 64;
    uint32_t *slots = loom_calloc(cap, sizeof(*slots));
    for (size_t i = 0; i < m->n; i++) {
        size_t h = fnv1a(loom_str_make(m->keys[i], m->lens[i])) & (cap - 1);
        while (slots[h])
            h = (h + 1) & (cap - 1);
        slots[h] = (uint32_t)i + 1;
    }
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
    m->keys = loom_realloc(m->keys, cap * sizeof(*m->keys));
    m->lens = loom_realloc(m->lens, cap * sizeof(*m->lens));
}

/* The id of s, added if new; false when the map is full. */
static bool strmap_intern(struct strmap *m, struct loom_str s, uint32_t *id)
{
    if (2 * (m->n + 1) > m->cap)
        strmap_grow(m);
    size_t h = fnv1a(s) & (m->cap - 1);
    while (m->slots[h]) {
        uint32_t k = m->slots[h] - 1;
        if (m->lens[k] == s.len && memcmp(m->keys[k], s.ptr, s.len) == 0) {
            *id = k;
            return true;
        }
        h = (h + 1) & (m->cap - 1);
    }
    if (m->n == DISTINCT_MAX)
        return false;
    m->keys[m->n] = loom_str_dup(s);
    m->lens[m->n] = s.len;
    m->slots[h] = (uint32_t)m->n + 1;
    *id = (uint32_t)m->n++;
    return true;
}

static int cmp_key_idx(const void *a, const void *b, void *arg)
{
    const struct strmap *m = arg;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    size_t n = LOOM_MIN(m->lens[x], m->lens[y]);
    int c = memcmp(m->keys[x], m->keys[y], n);
    if (c)
        return c;
    return (m->lens[x] > m->lens[y]) - (m->lens[x] < m->lens[y]);
}

/* rank[id] = the id's position among the keys sorted bytewise; *sorted receives the keys in
 * that order (taking them over from the map). */
static uint32_t *strmap_ranks(struct strmap *m, char ***sorted)
{
    uint32_t *order = loom_malloc((m->n ? m->n : 1) * sizeof(*order));
    uint32_t *rank = loom_malloc((m->n ? m->n : 1) * sizeof(*rank));
    for (size_t i = 0; i < m->n; i++)
        order[i] = (uint32_t)i;
    qsort_r(order, m->n, sizeof(*order), cmp_key_idx, m);
    *sorted = loom_malloc((m->n ? m->n : 1) * sizeof(char *));
    for (size_t i = 0; i < m->n; i++) {
        rank[order[i]] = (uint32_t)i;
        (*sorted)[i] = m->keys[order[i]];
        m->keys[order[i]] = NULL;
    }
    free(order);
    return rank;
}

struct loader {
    const struct trn_dataset *ds;
    const struct trn_spec *spec;
    struct trn_data *out;
    size_t *feat_col; /* per feature: its column */
    int *feat_map;    /* per feature: its string map, or -1 */
    struct strmap *maps;
    size_t nmaps;
    size_t label_col;
    long sens_col;
    struct strmap sens;
    bool binary;
};

static long column_of(const struct trn_dataset *ds, const char *name)
{
    for (size_t i = 0; i < ds->ncols; i++)
        if (strcmp(ds->cols[i].name, name) == 0)
            return (long)i;
    return -1;
}

static loom_err load_record(struct loom_csv_reader *r, const struct loom_csv_record *rec, void *arg,
                            struct loom_error *err)
{
    struct loader *ld = arg;
    struct trn_data *d = ld->out;
    if (rec->index == 0) {
        if (rec->nfields != ld->ds->ncols)
            return loom_csv_fail(r, err, LOOM_EINVAL, rec->line, 1,
                                 "the file does not match its description");
        return LOOM_OK;
    }
    if (rec->nfields != ld->ds->ncols || d->nrows == ld->ds->rows)
        return loom_csv_fail(r, err, LOOM_EINVAL, rec->line, 1,
                             "the file does not match its description");
    size_t row = d->nrows;
    float *x = d->x + row * d->nfeat;
    for (size_t j = 0; j < d->nfeat; j++) {
        struct loom_str f = rec->fields[ld->feat_col[j]];
        if (f.len == 0) {
            x[j] = NAN;
        } else if (ld->feat_map[j] >= 0) {
            uint32_t id;
            if (!strmap_intern(&ld->maps[ld->feat_map[j]], f, &id))
                return loom_csv_fail(r, err, LOOM_ETOOBIG, rec->line, rec->columns[ld->feat_col[j]],
                                     "feature %s has more than %u distinct values: too many to "
                                     "label-encode",
                                     ld->spec->features[j], DISTINCT_MAX);
            x[j] = (float)id;
        } else {
            double v;
            if (!loom_csv_number(f, &v))
                return loom_csv_fail(r, err, LOOM_EINVAL, rec->line, rec->columns[ld->feat_col[j]],
                                     "feature %s is not a number", ld->spec->features[j]);
            x[j] = (float)v;
        }
    }
    double y;
    struct loom_str lf = rec->fields[ld->label_col];
    if (!loom_csv_number(lf, &y))
        return loom_csv_fail(r, err, LOOM_EINVAL, rec->line, rec->columns[ld->label_col],
                             "the label %s is %s", ld->spec->label,
                             lf.len ? "not a number" : "missing");
    if (ld->binary && y != 0 && y != 1)
        return loom_csv_fail(r, err, LOOM_EINVAL, rec->line, rec->columns[ld->label_col],
                             "the label %s is %.*s; objective %s needs 0 or 1", ld->spec->label,
                             (int)LOOM_MIN(lf.len, (size_t)32), lf.ptr, ld->spec->objective);
    d->y[row] = (float)y;
    if (ld->sens_col >= 0) {
        uint32_t id;
        if (!strmap_intern(&ld->sens, rec->fields[ld->sens_col], &id))
            return loom_csv_fail(r, err, LOOM_ETOOBIG, rec->line, rec->columns[ld->sens_col],
                                 "the sensitive attribute %s has more than %u groups",
                                 ld->spec->sensitive, DISTINCT_MAX);
        d->group[row] = id;
    }
    d->nrows++;
    return LOOM_OK;
}

void trn_data_release(struct trn_data *d)
{
    free(d->x);
    free(d->y);
    free(d->group);
    for (size_t i = 0; i < d->ngroups; i++)
        free(d->group_names[i]);
    free(d->group_names);
    for (size_t i = 0; i < d->nenc; i++) {
        for (size_t k = 0; k < d->enc[i].n; k++)
            free(d->enc[i].values[k]);
        free(d->enc[i].values);
    }
    free(d->enc);
    memset(d, 0, sizeof(*d));
}

loom_err trn_data_load(const char *path, const struct trn_dataset *ds, const struct trn_spec *spec,
                       bool (*stop)(void *arg), void *arg, struct trn_data *out,
                       struct loom_error *err)
{
    memset(out, 0, sizeof(*out));
    enum trn_task task = spec->task;
    struct loader ld = {
        .ds = ds,
        .spec = spec,
        .out = out,
        .binary = task == TRN_TASK_BINARY,
        .sens_col = spec->sensitive ? column_of(ds, spec->sensitive) : -1,
    };
    loom_err e = LOOM_OK;
    size_t nfeat = spec->nfeatures;
    if (ds->rows && nfeat > ((size_t)1 << 31) / ds->rows)
        return loom_error_set(err, LOOM_ETOOBIG,
                              "%llu rows of %zu features is more than the trainer holds in "
                              "memory (2^31 values)",
                              (unsigned long long)ds->rows, nfeat);
    out->nfeat = nfeat;
    out->feature_names = (const char *const *)spec->features;
    out->x =
        loom_malloc(loom_mul_size(loom_mul_size(ds->rows ? ds->rows : 1, nfeat), sizeof(float)));
    out->y = loom_malloc((ds->rows ? ds->rows : 1) * sizeof(float));
    if (ld.sens_col >= 0)
        out->group = loom_malloc((ds->rows ? ds->rows : 1) * sizeof(uint32_t));
    ld.feat_col = loom_calloc(nfeat, sizeof(*ld.feat_col));
    ld.feat_map = loom_calloc(nfeat, sizeof(*ld.feat_map));
    ld.maps = loom_calloc(nfeat, sizeof(*ld.maps));
    for (size_t j = 0; j < nfeat; j++) {
        long c = column_of(ds, spec->features[j]);
        ld.feat_col[j] = (size_t)(c < 0 ? 0 : c);
        ld.feat_map[j] = c >= 0 && ds->cols[c].is_string ? (int)ld.nmaps++ : -1;
    }
    ld.label_col = (size_t)LOOM_MAX(column_of(ds, spec->label), 0L);

    struct loom_csv_reader csv;
    struct loom_csv_limits lim = { .max_bytes = ds->size + 1 };
    loom_csv_reader_init(&csv, &lim, load_record, &ld);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    char *buf = loom_malloc((size_t)1 << 20);
    if (fd < 0) {
        e = loom_error_errno(err, "cannot open the dataset file %s", path);
        goto out;
    }
    for (;;) {
        ssize_t n = read(fd, buf, (size_t)1 << 20);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            e = loom_error_errno(err, "reading %s", path);
            goto out;
        }
        if (n == 0)
            break;
        if ((e = loom_csv_feed(&csv, buf, (size_t)n, err)))
            goto out;
        if (stop && stop(arg)) {
            e = loom_error_set(err, LOOM_ECANCELED, "loading stopped");
            goto out;
        }
    }
    if ((e = loom_csv_finish(&csv, err)))
        goto out;
    if (out->nrows != ds->rows) {
        e = loom_error_set(err, LOOM_EINVAL, "the file does not match its description");
        goto out;
    }

    /* Label encoding: each string feature's values sorted bytewise, value i encoded as i. */
    out->enc = loom_calloc(ld.nmaps ? ld.nmaps : 1, sizeof(*out->enc));
    for (size_t j = 0; j < nfeat; j++) {
        if (ld.feat_map[j] < 0)
            continue;
        struct strmap *m = &ld.maps[ld.feat_map[j]];
        struct trn_encoding *enc = &out->enc[out->nenc++];
        enc->column = spec->features[j];
        enc->n = m->n;
        uint32_t *rank = strmap_ranks(m, &enc->values);
        for (size_t i = 0; i < out->nrows; i++) {
            float *v = &out->x[i * nfeat + j];
            if (!isnan(*v))
                *v = (float)rank[(uint32_t)*v];
        }
        free(rank);
    }
    if (ld.sens_col >= 0) {
        /* Groups in the same sorted order; an empty value is the group "(missing)". */
        for (size_t i = 0; i < ld.sens.n; i++)
            if (ld.sens.lens[i] == 0) {
                free(ld.sens.keys[i]);
                ld.sens.keys[i] = loom_strdup("(missing)");
                ld.sens.lens[i] = strlen("(missing)");
            }
        out->ngroups = ld.sens.n;
        uint32_t *rank = strmap_ranks(&ld.sens, &out->group_names);
        for (size_t i = 0; i < out->nrows; i++)
            out->group[i] = rank[out->group[i]];
        free(rank);
    }
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    loom_csv_reader_release(&csv);
    for (size_t i = 0; i < ld.nmaps; i++)
        strmap_release(&ld.maps[i]);
    strmap_release(&ld.sens);
    free(ld.maps);
    free(ld.feat_col);
    free(ld.feat_map);
    if (e)
        trn_data_release(out);
    return e;
}
