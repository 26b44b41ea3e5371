/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The SQLite backend of the store (libsqlite3): one sqlite3 handle per pooled connection, in
 * WAL mode so that readers never wait for the writer and several processes on one host can
 * share the file. Statements are prepared on every call: preparing a short statement costs a
 * few microseconds next to a commit, and no cache means no stale statements after a migration
 * and no memory that grows with the number of distinct statements. SQLite reads "$1" as a
 * named parameter; each one is bound by the number in its name, which gives PostgreSQL's
 * meaning (reused, in any order) without rewriting the SQL.
 */
#include "internal.h"
#include "store_backend.h"

#include <fcntl.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct sqlite_db {
    struct loom_db base; /* first: lib/store.c sees only this */
    sqlite3 *h;
};

static sqlite3 *handle(struct loom_db *db)
{
    return ((struct sqlite_db *)db)->h;
}

static loom_err map_code(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return LOOM_EBUSY;
    case SQLITE_CONSTRAINT:
        /* NOT NULL and CHECK violations are bugs in the caller, not conflicts. */
        return rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY ||
                       rc == SQLITE_CONSTRAINT_FOREIGNKEY
                   ? LOOM_ECONFLICT
                   : LOOM_EINVAL;
    case SQLITE_TOOBIG:
        return LOOM_ETOOBIG;
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_PERM:
        return LOOM_EIO;
    default:
        return LOOM_EINVAL;
    }
}

static loom_err fail(sqlite3 *h, int rc, const char *sql, struct loom_error *err)
{
    char head[LOOM__STORE_SQL_HEAD];
    return loom_error_set(err, map_code(rc), "sqlite: %s (in \"%s\")", sqlite3_errmsg(h),
                          loom__store_sql_head(sql, head, sizeof(head)));
}

/* A new database file is created 0600 before SQLite opens it: a store holds what its service
 * keeps to itself (identity's signing keys and secret hashes, say), and SQLite would create it
 * with the umask's mode (0644 under umask 022). SQLite gives the -wal and -shm files the mode
 * of the database file. An existing file keeps its mode. */
static void create_private(const char *path)
{
    if (strcmp(path, ":memory:") == 0 || strncmp(path, "file:", 5) == 0)
        return;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0)
        close(fd);
    /* EEXIST: someone created it first; anything else: sqlite3_open_v2 says what is wrong. */
}

static loom_err sqlite_open(const struct loom__store_conf *conf, struct loom_db **out,
                            struct loom_error *err)
{
    sqlite3 *h = NULL;
    loom_err lrc;
    create_private(conf->target);
    /* NOMUTEX: the pool hands a connection to one thread at a time. EXRESCODE: extended codes
     * everywhere, to tell a unique violation from a NOT NULL one. */
    int flags =
        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE;
    int rc = sqlite3_open_v2(conf->target, &h, flags, NULL);
    if (rc != SQLITE_OK) {
        lrc = loom_error_set(err, LOOM_ECONNECT, "sqlite: cannot open %s: %s", conf->target,
                             h ? sqlite3_errmsg(h) : sqlite3_errstr(rc));
        goto out_close;
    }
    uint64_t ms = conf->busy_timeout_ns / LOOM_NS_PER_MS;
    sqlite3_busy_timeout(h, (int)LOOM_MIN(ms, (uint64_t)INT_MAX));
    /* Double-quoted strings are identifiers, as in PostgreSQL, not string literals. */
    sqlite3_db_config(h, SQLITE_DBCONFIG_DQS_DML, 0, (int *)NULL);
    sqlite3_db_config(h, SQLITE_DBCONFIG_DQS_DDL, 0, (int *)NULL);
    /*
     * WAL: readers and the writer do not block each other. synchronous=NORMAL syncs the WAL at
     * checkpoints instead of at every commit; with WAL this can never corrupt the database, and
     * an application crash loses nothing (the WAL is in the OS page cache): only a power loss
     * or kernel crash may undo the last transactions, which is the usual trade for a server.
     * Foreign keys are off by default in SQLite and on in PostgreSQL.
     */
    /* Two replicas may set up the same new file at the same moment. */
    rc = loom__sqlite_exec_busy(
        h, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON",
        conf->busy_timeout_ns);
    if (rc != SQLITE_OK) {
        lrc = loom_error_set(err, LOOM_ECONNECT, "sqlite: cannot set up %s: %s", conf->target,
                             sqlite3_errmsg(h));
        goto out_close;
    }
    struct sqlite_db *db = loom_new(struct sqlite_db);
    db->base.type = &loom__store_sqlite;
    db->h = h;
    *out = &db->base;
    return LOOM_OK;

out_close:
    sqlite3_close_v2(h);
    return lrc;
}

static void sqlite_close(struct loom_db *db)
{
    sqlite3_close_v2(handle(db));
    free(db);
}

/* "$12" -> 12; 0 for any other spelling ("?", ":name", "$x"). */
static size_t placeholder_number(const char *name)
{
    if (!name || name[0] != '$' || !name[1])
        return 0;
    size_t n = 0;
    for (const char *p = name + 1; *p; p++) {
        if (*p < '0' || *p > '9' || n > 100000)
            return 0;
        n = n * 10 + (size_t)(*p - '0');
    }
    return n;
}

static loom_err bind_params(sqlite3 *h, sqlite3_stmt *st, const char *sql,
                            const struct loom_sql_value *params, size_t nparams,
                            struct loom_error *err)
{
    int count = sqlite3_bind_parameter_count(st);
    for (int i = 1; i <= count; i++) {
        const char *name = sqlite3_bind_parameter_name(st, i);
        size_t k = placeholder_number(name);
        if (k == 0 || k > nparams)
            return loom_error_set(err, LOOM_EINVAL,
                                  "sqlite: placeholder %s has no parameter (%zu given; use "
                                  "$1..$n)",
                                  name ? name : "?", nparams);
        const struct loom_sql_value *v = &params[k - 1];
        /* Empty slices may have a NULL pointer, which SQLite would bind as SQL NULL. */
        const char *p = v->s.ptr ? v->s.ptr : "";
        int rc;
        switch (v->type) {
        case LOOM_SQL_NULL:
            rc = sqlite3_bind_null(st, i);
            break;
        case LOOM_SQL_INT:
            rc = sqlite3_bind_int64(st, i, v->i);
            break;
        case LOOM_SQL_REAL:
            rc = sqlite3_bind_double(st, i, v->r);
            break;
        case LOOM_SQL_TEXT:
            rc = sqlite3_bind_text64(st, i, p, v->s.len, SQLITE_STATIC, SQLITE_UTF8);
            break;
        case LOOM_SQL_BLOB:
            rc = sqlite3_bind_blob64(st, i, p, v->s.len, SQLITE_STATIC);
            break;
        default:
            return loom_error_set(err, LOOM_EINVAL, "sqlite: parameter $%zu has type %d", k,
                                  (int)v->type);
        }
        if (rc != SQLITE_OK)
            return fail(h, rc, sql, err);
    }
    return LOOM_OK;
}

static void column_value(sqlite3_stmt *st, int c, struct loom_sql_value *v)
{
    *v = LOOM_SQL_NULL_V;
    switch (sqlite3_column_type(st, c)) {
    case SQLITE_INTEGER:
        *v = LOOM_SQL_INT_V(sqlite3_column_int64(st, c));
        break;
    case SQLITE_FLOAT:
        *v = LOOM_SQL_REAL_V(sqlite3_column_double(st, c));
        break;
    case SQLITE_TEXT:
        v->type = LOOM_SQL_TEXT;
        v->s.ptr = (const char *)sqlite3_column_text(st, c); /* before _bytes, as documented */
        v->s.len = (size_t)sqlite3_column_bytes(st, c);
        break;
    case SQLITE_BLOB:
        v->type = LOOM_SQL_BLOB;
        v->s.ptr = sqlite3_column_blob(st, c);
        v->s.len = (size_t)sqlite3_column_bytes(st, c);
        break;
    default:
        break;
    }
}

static loom_err sqlite_exec(struct loom_db *db, const char *sql,
                            const struct loom_sql_value *params, size_t nparams, loom_sql_row_fn fn,
                            void *arg, int64_t *changes, struct loom_error *err)
{
    sqlite3 *h = handle(db);
    sqlite3_stmt *st = NULL, *extra = NULL;
    const char *tail = NULL;
    struct loom_sql_value *vals = NULL;
    const char **names = NULL;
    loom_err rc;

    int src = sqlite3_prepare_v3(h, sql, -1, 0, &st, &tail);
    if (src != SQLITE_OK)
        return fail(h, src, sql, err);
    if (!st)
        return loom_error_set(err, LOOM_EINVAL, "sqlite: empty statement");
    /* One statement per call, as PostgreSQL's extended protocol demands; the tail may still
     * hold a ';', spaces or comments, which prepare to nothing. */
    if (tail && *tail && (sqlite3_prepare_v3(h, tail, -1, 0, &extra, NULL) != SQLITE_OK || extra)) {
        sqlite3_finalize(extra);
        rc = loom_error_set(err, LOOM_EINVAL,
                            "sqlite: several statements in one call; use loom_db_exec_script");
        goto out_finalize;
    }
    rc = bind_params(h, st, sql, params, nparams, err);
    if (rc != LOOM_OK)
        goto out_finalize;

    int ncols = sqlite3_column_count(st);
    if (fn && ncols > 0) {
        vals = loom_calloc((size_t)ncols, sizeof(*vals));
        names = loom_calloc((size_t)ncols, sizeof(*names));
        for (int c = 0; c < ncols; c++)
            names[c] = sqlite3_column_name(st, c);
    }
    /* sqlite3_changes() keeps the count of the last INSERT, UPDATE or DELETE, whatever ran
     * since; the total tells whether this statement changed anything. */
    sqlite3_int64 before = sqlite3_total_changes64(h);
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        if (!fn)
            continue;
        for (int c = 0; c < ncols; c++)
            column_value(st, c, &vals[c]);
        struct loom_sql_row row = { (size_t)ncols, vals, names };
        rc = fn(&row, arg);
        if (rc != LOOM_OK)
            goto out_free;
    }
    if (src != SQLITE_DONE) {
        rc = fail(h, src, sql, err);
        goto out_free;
    }
    if (changes)
        *changes = sqlite3_total_changes64(h) != before ? sqlite3_changes64(h) : 0;
    rc = LOOM_OK;

out_free:
    free(vals);
    free(names);
out_finalize:
    sqlite3_finalize(st);
    return rc;
}

static loom_err sqlite_exec_script(struct loom_db *db, const char *sql, struct loom_error *err)
{
    int rc = sqlite3_exec(handle(db), sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? LOOM_OK : fail(handle(db), rc, sql, err);
}

static loom_err sqlite_begin(struct loom_db *db, const char *lock, struct loom_error *err)
{
    /* IMMEDIATE takes the database's write lock now, so writers queue at begin (waiting up to
     * busy_timeout) instead of failing at their first write; it also serialises migrations. */
    LOOM_UNUSED(lock);
    return sqlite_exec_script(db, "BEGIN IMMEDIATE", err);
}

static void sqlite_rollback(struct loom_db *db)
{
    /* SQLite rolls back by itself after some errors (SQLITE_FULL, IOERR, ...). */
    if (!sqlite3_get_autocommit(handle(db)))
        sqlite3_exec(handle(db), "ROLLBACK", NULL, NULL, NULL);
}

static loom_err sqlite_commit(struct loom_db *db, struct loom_error *err)
{
    loom_err rc = sqlite_exec_script(db, "COMMIT", err);
    if (rc != LOOM_OK)
        sqlite_rollback(db);
    return rc;
}

static bool sqlite_is_broken(struct loom_db *db)
{
    /* An idle connection in a transaction had BEGIN run through exec: drop it. */
    return !sqlite3_get_autocommit(handle(db));
}

const struct loom__store_type loom__store_sqlite = {
    .name = "sqlite",
    .open = sqlite_open,
    .close = sqlite_close,
    .exec = sqlite_exec,
    .exec_script = sqlite_exec_script,
    .begin = sqlite_begin,
    .commit = sqlite_commit,
    .rollback = sqlite_rollback,
    .is_broken = sqlite_is_broken,
};

int loom__sqlite_exec_busy(struct sqlite3 *db, const char *sql, uint64_t timeout_ns)
{
    uint64_t give_up = loom_now_ns() + timeout_ns;
    for (;;) {
        int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
        if (((rc & 0xff) != SQLITE_BUSY && (rc & 0xff) != SQLITE_LOCKED) ||
            loom_now_ns() >= give_up)
            return rc;
        struct timespec ts = { 0, 2 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
}
