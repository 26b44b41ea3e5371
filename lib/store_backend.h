/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The store's backend interface, shared by lib/store.c (URLs, the pool, transactions with
 * retry, migrations) and the backends lib/store_sqlite.c and lib/store_pg.c only. A backend is
 * a table of function pointers, as Redis's ConnectionType is; a connection is the backend's own
 * struct with struct loom_db as its first member. The generic layer calls a connection from
 * one thread at a time and keeps the transaction flag; backends only talk to their library.
 */
#ifndef LOOM_STORE_BACKEND_H
#define LOOM_STORE_BACKEND_H

#include <loom/store.h>

#include <stdbool.h>
#include <stdint.h>

/* What a backend needs to open a connection (borrowed from the store). */
struct loom__store_conf {
    const char *target;       /* sqlite: a file path or ":memory:"; postgres: the whole URL */
    uint64_t busy_timeout_ns; /* how long a statement may wait for a lock */
};

/* The head of every connection. */
struct loom_db {
    const struct loom__store_type *type;
    bool in_tx; /* begin succeeded, commit or rollback not called yet (kept by lib/store.c) */
};

struct loom__store_type {
    const char *name;
    /* A new connection, configured and ready (*out is written on success only). */
    loom_err (*open)(const struct loom__store_conf *conf, struct loom_db **out,
                     struct loom_error *err);
    void (*close)(struct loom_db *db);
    /* loom_db_exec and loom_db_exec_script, arguments already checked. */
    loom_err (*exec)(struct loom_db *db, const char *sql, const struct loom_sql_value *params,
                     size_t nparams, loom_sql_row_fn fn, void *arg, int64_t *changes,
                     struct loom_error *err);
    loom_err (*exec_script)(struct loom_db *db, const char *sql, struct loom_error *err);
    /* Begin a transaction. With `lock` (migrations), the transaction also holds an exclusive
     * lock named `lock` until it ends and each statement sees what others committed before it
     * (READ COMMITTED on PostgreSQL, where the lock is pg_advisory_xact_lock; on SQLite the
     * write lock of BEGIN IMMEDIATE already does both). */
    loom_err (*begin)(struct loom_db *db, const char *lock, struct loom_error *err);
    /* Commit; on failure the transaction is rolled back all the same. */
    loom_err (*commit)(struct loom_db *db, struct loom_error *err);
    /* Roll back if a transaction is open; never fails (a dead connection has none). */
    void (*rollback)(struct loom_db *db);
    /* Is the connection unusable (server gone, protocol state lost, a transaction left open by
     * raw SQL)? The pool then closes it and opens a new one. Called on an idle connection. */
    bool (*is_broken)(struct loom_db *db);
};

extern const struct loom__store_type loom__store_sqlite;
extern const struct loom__store_type loom__store_pg;

/* The start of `sql` for error messages: at most `n - 1` bytes, whitespace runs collapsed to
 * one space, "..." when cut. Returns out. */
const char *loom__store_sql_head(const char *sql, char *out, size_t n);

#define LOOM__STORE_SQL_HEAD 64

#endif
