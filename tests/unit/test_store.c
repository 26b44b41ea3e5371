/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests for the store: one suite run against each backend, SQLite on a file in a temp
 * directory and PostgreSQL on a server this test starts itself (Debian's initdb and pg_ctl, on
 * loopback, in a temp directory that a guardian process removes even if the test crashes).
 * Without PostgreSQL's binaries that half is skipped with a message. Then the checks that only
 * make sense on one backend: pragmas, a terminated server connection, error messages.
 */
#include "check.h"

#include <loom/store.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <float.h>
#include <glob.h>
#include <pthread.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* The backend under test: tests take no arguments (RUN calls them by name). */
static struct {
    const char *name;
    char url[512];
    bool pg;
    int port; /* postgres */
} cur;

static struct loom_store *open_store(size_t pool, uint64_t busy_ns)
{
    struct loom_store_options o = { .pool_size = pool, .busy_timeout = busy_ns };
    struct loom_store *s = NULL;
    struct loom_error e = { 0 };
    loom_err rc = loom_store_open(cur.url, &o, &s, &e);
    if (rc != LOOM_OK) {
        CHECK_FAIL_("open %s: %s", cur.name, e.msg);
        exit(check_report() | 1); /* nothing below can run */
    }
    return s;
}

/* One statement on a borrowed connection; returns the code, the message goes to e. */
static loom_err exec(struct loom_store *s, const char *sql, const struct loom_sql_value *p,
                     size_t n, loom_sql_row_fn fn, void *arg, int64_t *changes,
                     struct loom_error *e)
{
    struct loom_db *db;
    loom_err rc = loom_store_acquire(s, &db, e);
    if (rc != LOOM_OK)
        return rc;
    rc = loom_db_exec(db, sql, p, n, fn, arg, changes, e);
    loom_store_release(s, db);
    return rc;
}

#define EXEC_OK(s, sql, p, n, fn, arg, changes)                   \
    do {                                                          \
        struct loom_error e_ = { 0 };                             \
        loom_err rc_ = exec(s, sql, p, n, fn, arg, changes, &e_); \
        if (rc_ != LOOM_OK)                                       \
            CHECK_FAIL_("%s: %s", loom_err_name(rc_), e_.msg);    \
        check_count++;                                            \
    } while (0)

static void fresh_table(struct loom_store *s, const char *name, const char *create)
{
    char drop[128];
    snprintf(drop, sizeof(drop), "DROP TABLE IF EXISTS %s", name);
    EXEC_OK(s, drop, NULL, 0, NULL, NULL, NULL);
    EXEC_OK(s, create, NULL, 0, NULL, NULL, NULL);
}

/* Rows copied out of the callbacks, for checks after the statement. */
#define ROWS_MAX 16
#define COLS_MAX 8
#define CELL_MAX 300

struct rows {
    size_t n, ncols;
    struct loom_sql_value v[ROWS_MAX][COLS_MAX];
    char data[ROWS_MAX][COLS_MAX][CELL_MAX];
    char names[COLS_MAX][32];
};

static loom_err collect(const struct loom_sql_row *row, void *arg)
{
    struct rows *r = arg;
    if (r->n == ROWS_MAX || row->ncols > COLS_MAX)
        return LOOM_ETOOBIG;
    r->ncols = row->ncols;
    for (size_t c = 0; c < row->ncols; c++) {
        struct loom_sql_value v = row->cols[c];
        if (v.type == LOOM_SQL_TEXT || v.type == LOOM_SQL_BLOB) {
            if (v.s.len > CELL_MAX)
                return LOOM_ETOOBIG;
            if (v.s.len)
                memcpy(r->data[r->n][c], v.s.ptr, v.s.len);
            v.s.ptr = r->data[r->n][c];
        }
        r->v[r->n][c] = v;
        snprintf(r->names[c], sizeof(r->names[c]), "%s", row->names[c]);
    }
    r->n++;
    return LOOM_OK;
}

static int64_t count_rows(struct loom_store *s, const char *sql)
{
    struct rows r = { 0 };
    EXEC_OK(s, sql, NULL, 0, collect, &r, NULL);
    if (r.n != 1 || r.v[0][0].type != LOOM_SQL_INT)
        return -1;
    return r.v[0][0].i;
}

static bool value_eq(const struct loom_sql_value *a, const struct loom_sql_value *b)
{
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case LOOM_SQL_NULL:
        return true;
    case LOOM_SQL_INT:
        return a->i == b->i;
    case LOOM_SQL_REAL:
        return memcmp(&a->r, &b->r, sizeof(a->r)) == 0; /* bit-exact, so -0.0 counts */
    default:
        return a->s.len == b->s.len && (!a->s.len || memcmp(a->s.ptr, b->s.ptr, a->s.len) == 0);
    }
}

#define CHECK_VALUE(got, want)                                                                  \
    do {                                                                                        \
        check_count++;                                                                          \
        if (!value_eq(&(got), &(want)))                                                         \
            CHECK_FAIL_("%s: value differs: type %d vs %d, i %lld vs %lld, r %.17g vs %.17g, "  \
                        "len %zu vs %zu",                                                       \
                        #got, (got).type, (want).type, (long long)(got).i, (long long)(want).i, \
                        (got).r, (want).r, (got).s.len, (want).s.len);                          \
    } while (0)

/* ---- the suite, on every backend ---- */

static const char blob_zeros[] = { 0, 1, 0, (char)0xff, 0, 'x', 0 };
static const char utf8_text[] = "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93 \xe6\x97\xa5\xe6\x9c\xac "
                                "\xf0\x9f\x99\x82";

static void test_values(void)
{
    struct loom_store *s = open_store(2, 0);
    fresh_table(s, "vals",
                "CREATE TABLE vals (id BIGINT PRIMARY KEY, i BIGINT, r DOUBLE PRECISION, "
                "t TEXT, b BYTEA)");
    char all_bytes[256];
    for (int i = 0; i < 256; i++)
        all_bytes[i] = (char)i;
    const struct loom_sql_value rows[][4] = {
        { LOOM_SQL_NULL_V, LOOM_SQL_NULL_V, LOOM_SQL_NULL_V, LOOM_SQL_NULL_V },
        { LOOM_SQL_INT_V(INT64_MIN), LOOM_SQL_REAL_V(-DBL_MAX), LOOM_SQL_TEXT_V(LOOM_STR_NULL),
          LOOM_SQL_BLOB_V(LOOM_STR_NULL) },
        { LOOM_SQL_INT_V(INT64_MAX), LOOM_SQL_REAL_V(DBL_MIN), LOOM_SQL_CSTR_V(utf8_text),
          LOOM_SQL_BLOB_V(loom_str_make(blob_zeros, sizeof(blob_zeros))) },
        { LOOM_SQL_INT_V(0), LOOM_SQL_REAL_V(0.1), LOOM_SQL_CSTR_V("'q' \"d\" $1 \\ ?"),
          LOOM_SQL_BLOB_V(loom_str_make(all_bytes, sizeof(all_bytes))) },
        { LOOM_SQL_INT_V(-1), LOOM_SQL_REAL_V(1.0 / 3), LOOM_SQL_CSTR_V("x"),
          LOOM_SQL_BLOB_V(loom_str_make("\0", 1)) },
        { LOOM_SQL_INT_V(1), LOOM_SQL_REAL_V(-2.5), LOOM_SQL_CSTR_V(" "),
          LOOM_SQL_BLOB_V(loom_str_make("\\x00", 4)) },
        { LOOM_SQL_INT_V(42), LOOM_SQL_REAL_V(4.9406564584124654e-324), LOOM_SQL_CSTR_V("a"),
          LOOM_SQL_NULL_V },
        { LOOM_SQL_INT_V(43), LOOM_SQL_REAL_V(1e300), LOOM_SQL_NULL_V, LOOM_SQL_NULL_V },
    };
    size_t n = LOOM_ARRAY_SIZE(rows);
    for (size_t i = 0; i < n; i++) {
        struct loom_sql_value p[5] = { LOOM_SQL_INT_V(i), rows[i][0], rows[i][1], rows[i][2],
                                       rows[i][3] };
        int64_t changes = -1;
        EXEC_OK(s, "INSERT INTO vals (id, i, r, t, b) VALUES ($1, $2, $3, $4, $5)", p, 5, NULL,
                NULL, &changes);
        CHECK_INT(changes, 1);
    }
    struct rows r = { 0 };
    EXEC_OK(s, "SELECT id, i, r, t AS text_col, b FROM vals ORDER BY id", NULL, 0, collect, &r,
            NULL);
    CHECK_UINT(r.n, n);
    CHECK_UINT(r.ncols, 5);
    CHECK_STR(r.names[3], "text_col");
    CHECK_STR(r.names[4], "b");
    for (size_t i = 0; i < r.n && i < n; i++) {
        CHECK_INT(r.v[i][0].type, LOOM_SQL_INT);
        CHECK_INT(r.v[i][0].i, (int64_t)i);
        for (size_t c = 0; c < 4; c++)
            CHECK_VALUE(r.v[i][c + 1], rows[i][c]);
    }

    /* Parameters come back with their own type from a bare SELECT $1. */
    for (size_t i = 0; i < n; i++) {
        for (size_t c = 0; c < 4; c++) {
            struct rows one = { 0 };
            EXEC_OK(s, "SELECT $1 AS v", &rows[i][c], 1, collect, &one, NULL);
            CHECK_UINT(one.n, 1);
            CHECK_VALUE(one.v[0][0], rows[i][c]);
        }
    }

    /* loom_sql_col finds columns by name. */
    struct loom_sql_value cols[2] = { LOOM_SQL_INT_V(7), LOOM_SQL_CSTR_V("seven") };
    const char *names[2] = { "n", "word" };
    struct loom_sql_row row = { 2, cols, names };
    CHECK(loom_sql_col(&row, "word") == &cols[1]);
    CHECK(loom_sql_col(&row, "nope") == NULL);
    loom_store_close(s);
}

static void test_placeholders(void)
{
    struct loom_store *s = open_store(1, 0);
    struct loom_sql_value p[2] = { LOOM_SQL_INT_V(7), LOOM_SQL_CSTR_V("x") };
    struct rows r = { 0 };
    EXEC_OK(s, "SELECT $2 AS a, $1 AS b, $2 AS c, $1 + 1 AS d", p, 2, collect, &r, NULL);
    CHECK_UINT(r.n, 1);
    CHECK_SLICE(r.v[0][0].s, "x");
    CHECK_INT(r.v[0][1].i, 7);
    CHECK_SLICE(r.v[0][2].s, "x");
    CHECK_INT(r.v[0][3].i, 8);

    fresh_table(s, "ph", "CREATE TABLE ph (a BIGINT, b TEXT, c BIGINT)");
    EXEC_OK(s, "INSERT INTO ph (b, a, c) VALUES ($2, $1, $1 * 2)", p, 2, NULL, NULL, NULL);
    memset(&r, 0, sizeof(r));
    EXEC_OK(s, "SELECT a, b, c FROM ph WHERE a = $1 AND c = $1 * 2", p, 1, collect, &r, NULL);
    CHECK_UINT(r.n, 1);
    CHECK_INT(r.v[0][2].i, 14);

    struct loom_error e = { 0 };
    CHECK_INT(exec(s, "SELECT $3", p, 2, NULL, NULL, NULL, &e), LOOM_EINVAL);
    CHECK(e.msg[0] != '\0');
    CHECK_INT(exec(s, "SELECT ?", p, 1, NULL, NULL, NULL, &e), LOOM_EINVAL);
    CHECK_INT(exec(s, "SELECT 1; SELECT 2", NULL, 0, NULL, NULL, NULL, &e), LOOM_EINVAL);
    CHECK_INT(exec(s, "SELECT 1", NULL, 1, NULL, NULL, NULL, &e), LOOM_EINVAL);
    /* A trailing ';' and comment are one statement still. */
    EXEC_OK(s, "SELECT 1; -- done", NULL, 0, NULL, NULL, NULL);
    loom_store_close(s);
}

static void test_changes_and_returning(void)
{
    struct loom_store *s = open_store(1, 0);
    fresh_table(s, "ch", "CREATE TABLE ch (id BIGINT PRIMARY KEY, v BIGINT NOT NULL, name TEXT)");
    int64_t changes = -1;
    for (int i = 1; i <= 3; i++) {
        struct loom_sql_value p[1] = { LOOM_SQL_INT_V(i) };
        EXEC_OK(s, "INSERT INTO ch (id, v) VALUES ($1, $1 * 10)", p, 1, NULL, NULL, &changes);
        CHECK_INT(changes, 1);
    }
    EXEC_OK(s, "UPDATE ch SET v = v + 1", NULL, 0, NULL, NULL, &changes);
    CHECK_INT(changes, 3);
    EXEC_OK(s, "DELETE FROM ch WHERE id > 100", NULL, 0, NULL, NULL, &changes);
    CHECK_INT(changes, 0);
    /* Statements that change nothing say 0, not the count of the last write. */
    EXEC_OK(s, "UPDATE ch SET v = v + 1", NULL, 0, NULL, NULL, &changes);
    EXEC_OK(s, "SELECT * FROM ch", NULL, 0, NULL, NULL, &changes);
    CHECK_INT(changes, 0);
    EXEC_OK(s, "CREATE INDEX IF NOT EXISTS ch_v ON ch (v)", NULL, 0, NULL, NULL, &changes);
    CHECK_INT(changes, 0);

    struct rows r = { 0 };
    struct loom_sql_value p[2] = { LOOM_SQL_INT_V(4), LOOM_SQL_CSTR_V("four") };
    EXEC_OK(s, "INSERT INTO ch (id, v, name) VALUES ($1, 40, $2) RETURNING id, name", p, 2, collect,
            &r, &changes);
    CHECK_INT(changes, 1);
    CHECK_UINT(r.n, 1);
    CHECK_INT(r.v[0][0].i, 4);
    CHECK_SLICE(r.v[0][1].s, "four");
    memset(&r, 0, sizeof(r));
    EXEC_OK(s, "UPDATE ch SET v = 0 WHERE id <= 2 RETURNING id", NULL, 0, collect, &r, &changes);
    CHECK_INT(changes, 2);
    CHECK_UINT(r.n, 2);
    memset(&r, 0, sizeof(r));
    EXEC_OK(s, "DELETE FROM ch WHERE v = 0 RETURNING id", NULL, 0, collect, &r, &changes);
    CHECK_INT(changes, 2);
    CHECK_UINT(r.n, 2);
    CHECK_INT(count_rows(s, "SELECT count(*) FROM ch"), 2);

    /* ON CONFLICT: nothing, then an update. */
    struct loom_sql_value up[2] = { LOOM_SQL_INT_V(4), LOOM_SQL_CSTR_V("FOUR") };
    EXEC_OK(s, "INSERT INTO ch (id, v, name) VALUES ($1, 1, $2) ON CONFLICT (id) DO NOTHING", up, 2,
            NULL, NULL, &changes);
    CHECK_INT(changes, 0);
    memset(&r, 0, sizeof(r));
    EXEC_OK(s,
            "INSERT INTO ch (id, v, name) VALUES ($1, 1, $2) "
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name, v = ch.v + 1 RETURNING v, name",
            up, 2, collect, &r, &changes);
    CHECK_INT(changes, 1);
    CHECK_UINT(r.n, 1);
    CHECK_INT(r.v[0][0].i, 41);
    CHECK_SLICE(r.v[0][1].s, "FOUR");

    /* A callback's error stops the statement and comes back as is. */
    memset(&r, 0, sizeof(r));
    struct loom_error e = { 0 };
    r.n = ROWS_MAX; /* collect refuses the first row */
    CHECK_INT(exec(s, "SELECT id FROM ch", NULL, 0, collect, &r, NULL, &e), LOOM_ETOOBIG);
    loom_store_close(s);
}

static void test_errors(void)
{
    struct loom_store *s = open_store(1, 0);
    fresh_table(s, "child", "CREATE TABLE child (id BIGINT PRIMARY KEY)");
    fresh_table(s, "parent", "CREATE TABLE parent (id BIGINT PRIMARY KEY, name TEXT NOT NULL)");
    fresh_table(s, "child",
                "CREATE TABLE child (id BIGINT PRIMARY KEY, "
                "parent_id BIGINT NOT NULL REFERENCES parent (id))");
    struct loom_sql_value p[2] = { LOOM_SQL_INT_V(1), LOOM_SQL_CSTR_V("one") };
    EXEC_OK(s, "INSERT INTO parent (id, name) VALUES ($1, $2)", p, 2, NULL, NULL, NULL);
    struct loom_error e = { 0 };
    CHECK_INT(exec(s, "INSERT INTO parent (id, name) VALUES ($1, $2)", p, 2, NULL, NULL, NULL, &e),
              LOOM_ECONFLICT);
    CHECK_CONTAINS(e.msg, cur.name);
    struct loom_sql_value fk[2] = { LOOM_SQL_INT_V(1), LOOM_SQL_INT_V(99) };
    CHECK_INT(
        exec(s, "INSERT INTO child (id, parent_id) VALUES ($1, $2)", fk, 2, NULL, NULL, NULL, &e),
        LOOM_ECONFLICT);
    CHECK_INT(exec(s, "INSERT INTO parent (id) VALUES (2)", NULL, 0, NULL, NULL, NULL, &e),
              LOOM_EINVAL); /* NOT NULL is a bug, not a conflict */
    CHECK_INT(exec(s, "SELEC 1", NULL, 0, NULL, NULL, NULL, &e), LOOM_EINVAL);
    CHECK_CONTAINS(e.msg, "SELEC 1");
    CHECK_INT(exec(s, "SELECT * FROM no_such_table", NULL, 0, NULL, NULL, NULL, &e), LOOM_EINVAL);
    CHECK_CONTAINS(e.msg, "no_such_table");
    /* Double quotes name identifiers on both backends. */
    CHECK_INT(exec(s, "SELECT \"not a string\"", NULL, 0, NULL, NULL, NULL, &e), LOOM_EINVAL);
    CHECK_INT(exec(s, "", NULL, 0, NULL, NULL, NULL, &e), LOOM_EINVAL);
    struct loom_sql_value bad = { .type = (enum loom_sql_type)42 };
    CHECK_INT(exec(s, "SELECT $1", &bad, 1, NULL, NULL, NULL, &e), LOOM_EINVAL);
    loom_store_close(s);
}

static void test_transactions(void)
{
    struct loom_store *s = open_store(1, 0);
    fresh_table(s, "txt", "CREATE TABLE txt (id BIGINT PRIMARY KEY)");
    struct loom_error e = { 0 };
    struct loom_db *db;
    CHECK_INT(loom_store_acquire(s, &db, &e), LOOM_OK);
    CHECK_INT(loom_db_commit(db, &e), LOOM_EINVAL); /* no transaction */
    CHECK_INT(loom_db_begin(db, &e), LOOM_OK);
    CHECK_INT(loom_db_begin(db, &e), LOOM_EINVAL); /* no nesting */
    CHECK_INT(loom_db_exec(db, "INSERT INTO txt VALUES (1)", NULL, 0, NULL, NULL, NULL, &e),
              LOOM_OK);
    loom_db_rollback(db);
    loom_db_rollback(db); /* harmless */
    CHECK_INT(loom_db_begin(db, &e), LOOM_OK);
    CHECK_INT(loom_db_exec(db, "INSERT INTO txt VALUES (2)", NULL, 0, NULL, NULL, NULL, &e),
              LOOM_OK);
    CHECK_INT(loom_db_commit(db, &e), LOOM_OK);
    /* Released inside a transaction: rolled back. */
    CHECK_INT(loom_db_begin(db, &e), LOOM_OK);
    CHECK_INT(loom_db_exec(db, "INSERT INTO txt VALUES (3)", NULL, 0, NULL, NULL, NULL, &e),
              LOOM_OK);
    loom_store_release(s, db);
    /* A transaction opened with raw SQL: the connection is replaced, the work is lost. */
    CHECK_INT(loom_store_acquire(s, &db, &e), LOOM_OK);
    CHECK_INT(loom_db_exec_script(db, "BEGIN; INSERT INTO txt VALUES (4)", &e), LOOM_OK);
    loom_store_release(s, db);
    struct rows r = { 0 };
    EXEC_OK(s, "SELECT id FROM txt", NULL, 0, collect, &r, NULL);
    CHECK_UINT(r.n, 1);
    CHECK_INT(r.v[0][0].i, 2);
    loom_store_close(s);
}

struct flaky {
    int calls, busy_times;
    loom_err then;
};

static loom_err flaky_tx(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct flaky *f = arg;
    f->calls++;
    loom_err rc =
        loom_db_exec(db, "INSERT INTO txr (id) VALUES (1)", NULL, 0, NULL, NULL, NULL, err);
    if (rc != LOOM_OK)
        return rc;
    if (f->calls <= f->busy_times)
        return loom_error_set(err, LOOM_EBUSY, "pretend busy #%d", f->calls);
    return f->then == LOOM_OK ? LOOM_OK : loom_error_set(err, f->then, "failed");
}

static void test_tx_retry(void)
{
    struct loom_store *s = open_store(1, 0);
    fresh_table(s, "txr", "CREATE TABLE txr (id BIGINT PRIMARY KEY)");
    struct loom_error e = { 0 };
    /* Each failed attempt was rolled back, or the INSERT would conflict. */
    struct flaky f = { 0, 2, LOOM_OK };
    CHECK_INT(loom_store_tx(s, flaky_tx, &f, &e), LOOM_OK);
    CHECK_INT(f.calls, 3);
    CHECK_INT(count_rows(s, "SELECT count(*) FROM txr"), 1);
    EXEC_OK(s, "DELETE FROM txr", NULL, 0, NULL, NULL, NULL);

    f = (struct flaky){ 0, 100, LOOM_OK };
    uint64_t t0 = loom_now_ns();
    CHECK_INT(loom_store_tx(s, flaky_tx, &f, &e), LOOM_EBUSY);
    CHECK_INT(f.calls, 10);
    CHECK_CONTAINS(e.msg, "gave up after 10 attempts");
    CHECK((loom_now_ns() - t0) < 2 * LOOM_NS_PER_SEC);

    f = (struct flaky){ 0, 0, LOOM_ENOTFOUND };
    CHECK_INT(loom_store_tx(s, flaky_tx, &f, &e), LOOM_ENOTFOUND);
    CHECK_INT(f.calls, 1);
    CHECK_INT(count_rows(s, "SELECT count(*) FROM txr"), 0);
    loom_store_close(s);
}

/* Two writers increment one counter with a read, a pause and a write: a lost update would
 * show as a final count below the number of increments. */
#define CONTEND_THREADS    2
#define CONTEND_INCREMENTS 60

struct contend {
    struct loom_store *s;
    atomic_int attempts;
    atomic_int failures;
    char msg[LOOM_ERROR_MSG_MAX];
};

static loom_err increment_tx(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct contend *c = arg;
    atomic_fetch_add(&c->attempts, 1);
    struct rows r = { 0 };
    loom_err rc =
        loom_db_exec(db, "SELECT n FROM counter WHERE id = 1", NULL, 0, collect, &r, NULL, err);
    if (rc != LOOM_OK)
        return rc;
    usleep(200); /* widen the window between the read and the write */
    struct loom_sql_value p[1] = { LOOM_SQL_INT_V(r.v[0][0].i + 1) };
    return loom_db_exec(db, "UPDATE counter SET n = $1 WHERE id = 1", p, 1, NULL, NULL, NULL, err);
}

static void *contend_thread(void *arg)
{
    struct contend *c = arg;
    for (int i = 0; i < CONTEND_INCREMENTS; i++) {
        struct loom_error e = { 0 };
        if (loom_store_tx(c->s, increment_tx, c, &e) != LOOM_OK) {
            atomic_fetch_add(&c->failures, 1);
            snprintf(c->msg, sizeof(c->msg), "%s", e.msg);
        }
    }
    return NULL;
}

static void test_tx_contention(void)
{
    struct contend c = { .s = open_store(CONTEND_THREADS, 0) };
    fresh_table(c.s, "counter", "CREATE TABLE counter (id BIGINT PRIMARY KEY, n BIGINT)");
    EXEC_OK(c.s, "INSERT INTO counter VALUES (1, 0)", NULL, 0, NULL, NULL, NULL);
    pthread_t t[CONTEND_THREADS];
    for (int i = 0; i < CONTEND_THREADS; i++)
        pthread_create(&t[i], NULL, contend_thread, &c);
    for (int i = 0; i < CONTEND_THREADS; i++)
        pthread_join(t[i], NULL);
    CHECK_INT(atomic_load(&c.failures), 0);
    if (atomic_load(&c.failures))
        fprintf(stderr, "  last failure: %s\n", c.msg);
    CHECK_INT(count_rows(c.s, "SELECT n FROM counter WHERE id = 1"),
              CONTEND_THREADS * CONTEND_INCREMENTS);
    fprintf(stderr, "  %s: %d increments took %d attempts\n", cur.name,
            CONTEND_THREADS * CONTEND_INCREMENTS, atomic_load(&c.attempts));
    loom_store_close(c.s);
}

/* A writer holding the lock makes another, with a short busy timeout, fail with EBUSY. */
static void test_busy(void)
{
    struct loom_store *a = open_store(1, 0);
    struct loom_store *b = open_store(1, 100 * LOOM_NS_PER_MS);
    fresh_table(a, "busy", "CREATE TABLE busy (id BIGINT PRIMARY KEY, n BIGINT)");
    EXEC_OK(a, "INSERT INTO busy VALUES (1, 0)", NULL, 0, NULL, NULL, NULL);
    struct loom_error e = { 0 };
    struct loom_db *da, *db;
    CHECK_INT(loom_store_acquire(a, &da, &e), LOOM_OK);
    CHECK_INT(loom_db_begin(da, &e), LOOM_OK);
    CHECK_INT(loom_db_exec(da, "UPDATE busy SET n = 1 WHERE id = 1", NULL, 0, NULL, NULL, NULL, &e),
              LOOM_OK);
    CHECK_INT(loom_store_acquire(b, &db, &e), LOOM_OK);
    uint64_t t0 = loom_now_ns();
    loom_err rc = loom_db_begin(db, &e);
    if (rc == LOOM_OK) /* PostgreSQL: the row lock, not the begin, makes it wait */
        rc = loom_db_exec(db, "UPDATE busy SET n = 2 WHERE id = 1", NULL, 0, NULL, NULL, NULL, &e);
    uint64_t waited = loom_now_ns() - t0;
    CHECK_INT(rc, LOOM_EBUSY);
    CHECK(waited >= 80 * LOOM_NS_PER_MS);
    CHECK(waited < 3 * LOOM_NS_PER_SEC);
    loom_db_rollback(db);
    loom_store_release(b, db);
    CHECK_INT(loom_db_commit(da, &e), LOOM_OK);
    loom_store_release(a, da);
    CHECK_INT(count_rows(b, "SELECT n FROM busy"), 1);
    loom_store_close(b);
    loom_store_close(a);
}

#define POOL_THREADS 8
#define POOL_ROUNDS  20

struct pool_run {
    struct loom_store *s;
    atomic_int in_use, max_in_use, errors, done;
};

static void *pool_thread(void *arg)
{
    struct pool_run *p = arg;
    for (int i = 0; i < POOL_ROUNDS; i++) {
        struct loom_error e = { 0 };
        struct loom_db *db;
        if (loom_store_acquire(p->s, &db, &e) != LOOM_OK) {
            atomic_fetch_add(&p->errors, 1);
            continue;
        }
        int n = atomic_fetch_add(&p->in_use, 1) + 1;
        int m = atomic_load(&p->max_in_use);
        while (n > m && !atomic_compare_exchange_weak(&p->max_in_use, &m, n))
            ;
        struct loom_sql_value v = LOOM_SQL_INT_V(i);
        if (loom_db_exec(db, "SELECT $1 + 1", &v, 1, NULL, NULL, NULL, &e) != LOOM_OK)
            atomic_fetch_add(&p->errors, 1);
        usleep(500);
        atomic_fetch_sub(&p->in_use, 1);
        loom_store_release(p->s, db);
        atomic_fetch_add(&p->done, 1);
    }
    return NULL;
}

static void test_pool(void)
{
    struct pool_run p = { .s = open_store(2, 0) };
    pthread_t t[POOL_THREADS];
    for (int i = 0; i < POOL_THREADS; i++)
        pthread_create(&t[i], NULL, pool_thread, &p);
    for (int i = 0; i < POOL_THREADS; i++)
        pthread_join(t[i], NULL);
    CHECK_INT(atomic_load(&p.errors), 0);
    CHECK_INT(atomic_load(&p.done), POOL_THREADS * POOL_ROUNDS);
    CHECK_INT(atomic_load(&p.max_in_use), 2);
    CHECK_STR(loom_store_backend(p.s), cur.pg ? "postgres" : "sqlite");
    loom_store_close(p.s);

    /* Nothing comes back within the busy timeout: EBUSY. */
    struct loom_store *s = open_store(1, 50 * LOOM_NS_PER_MS);
    struct loom_error e = { 0 };
    struct loom_db *db1, *db2;
    CHECK_INT(loom_store_acquire(s, &db1, &e), LOOM_OK);
    CHECK_INT(loom_store_acquire(s, &db2, &e), LOOM_EBUSY);
    CHECK_CONTAINS(e.msg, "busy");
    loom_store_release(s, db1);
    CHECK_INT(loom_store_acquire(s, &db2, &e), LOOM_OK);
    CHECK(db2 == db1);
    loom_store_release(s, db2);
    loom_store_close(s);
}

static const struct loom_migration mig_v3[] = {
    { 1, "CREATE TABLE mig_a (id BIGINT PRIMARY KEY, name TEXT NOT NULL)" },
    { 2, "ALTER TABLE mig_a ADD COLUMN note TEXT;\n"
         "CREATE INDEX IF NOT EXISTS mig_a_name ON mig_a (name);" },
    { 3, "INSERT INTO mig_a (id, name, note) VALUES (1, 'seed', 'from v3')" },
    { 4, "CREATE TABLE mig_b (x BIGINT);\nINSERT INTO no_such_table VALUES (1)" },
};

static void test_migrations(void)
{
    struct loom_store *s = open_store(2, 0);
    struct loom_error e = { 0 };
    CHECK_INT(loom_store_migrate(s, "test", mig_v3, 2, &e), LOOM_OK);
    CHECK_INT(count_rows(s, "SELECT count(*) FROM loom_schema_migrations "
                            "WHERE component = 'test'"),
              2);
    CHECK_INT(count_rows(s, "SELECT count(*) FROM mig_a"), 0);
    /* A newer binary brings migration 3; running again changes nothing. */
    for (int i = 0; i < 2; i++) {
        CHECK_INT(loom_store_migrate(s, "test", mig_v3, 3, &e), LOOM_OK);
        CHECK_INT(count_rows(s, "SELECT count(*) FROM mig_a"), 1);
    }
    struct rows r = { 0 };
    EXEC_OK(s,
            "SELECT version, applied_at FROM loom_schema_migrations WHERE component = 'test' "
            "ORDER BY version",
            NULL, 0, collect, &r, NULL);
    CHECK_UINT(r.n, 3);
    for (size_t i = 0; i < r.n; i++) {
        CHECK_INT(r.v[i][0].i, (int64_t)i + 1);
        CHECK(r.v[i][1].i > 1700000000000); /* milliseconds since the epoch */
    }
    /* Migration 4 fails halfway: rolled back whole, reported by name. */
    CHECK_INT(loom_store_migrate(s, "test", mig_v3, 4, &e), LOOM_EINVAL);
    CHECK_CONTAINS(e.msg, "migration test/4 failed");
    CHECK_CONTAINS(e.msg, "no_such_table");
    CHECK_INT(exec(s, "SELECT * FROM mig_b", NULL, 0, NULL, NULL, NULL, &e), LOOM_EINVAL);
    CHECK_INT(count_rows(s, "SELECT max(version) FROM loom_schema_migrations "
                            "WHERE component = 'test'"),
              3);
    /* Another component numbers its own migrations. */
    const struct loom_migration other[] = { { 1, "CREATE TABLE mig_c (x BIGINT)" } };
    CHECK_INT(loom_store_migrate(s, "other", other, 1, &e), LOOM_OK);
    /* Lists that make no sense. */
    const struct loom_migration unordered[] = { { 2, "SELECT 1" }, { 1, "SELECT 1" } };
    CHECK_INT(loom_store_migrate(s, "test", unordered, 2, &e), LOOM_EINVAL);
    const struct loom_migration zero[] = { { 0, "SELECT 1" } };
    CHECK_INT(loom_store_migrate(s, "test", zero, 1, &e), LOOM_EINVAL);
    const struct loom_migration nosql[] = { { 1, NULL } };
    CHECK_INT(loom_store_migrate(s, "test", nosql, 1, &e), LOOM_EINVAL);
    CHECK_INT(loom_store_migrate(s, "", mig_v3, 1, &e), LOOM_EINVAL);
    CHECK_INT(loom_store_migrate(s, "test", NULL, 0, &e), LOOM_OK);
    loom_store_close(s);
}

/* Processes starting at once, each with its own store, apply each migration once. */
#define RACE_STORES 4

struct race {
    pthread_barrier_t start;
    atomic_int failures;
    char msg[LOOM_ERROR_MSG_MAX];
};

static const struct loom_migration race_migrations[] = {
    { 1, "CREATE TABLE race (n BIGINT)" },
    { 2, "INSERT INTO race VALUES (1)" },
    { 3, "INSERT INTO race SELECT n + 1 FROM race" },
};

static void *race_thread(void *arg)
{
    struct race *r = arg;
    struct loom_store *s = open_store(1, 0);
    struct loom_error e = { 0 };
    pthread_barrier_wait(&r->start);
    if (loom_store_migrate(s, "race", race_migrations, LOOM_ARRAY_SIZE(race_migrations), &e) !=
        LOOM_OK) {
        atomic_fetch_add(&r->failures, 1);
        snprintf(r->msg, sizeof(r->msg), "%s", e.msg);
    }
    loom_store_close(s);
    return NULL;
}

static void test_migrations_concurrent(void)
{
    struct race r = { 0 };
    pthread_barrier_init(&r.start, NULL, RACE_STORES);
    pthread_t t[RACE_STORES];
    for (int i = 0; i < RACE_STORES; i++)
        pthread_create(&t[i], NULL, race_thread, &r);
    for (int i = 0; i < RACE_STORES; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&r.start);
    CHECK_INT(atomic_load(&r.failures), 0);
    if (atomic_load(&r.failures))
        fprintf(stderr, "  last failure: %s\n", r.msg);
    struct loom_store *s = open_store(1, 0);
    CHECK_INT(count_rows(s, "SELECT count(*) FROM race"), 2);
    CHECK_INT(count_rows(s, "SELECT count(*) FROM loom_schema_migrations "
                            "WHERE component = 'race'"),
              3);
    loom_store_close(s);
}

/* Not a check: what a statement costs, for the report. */
static void test_timing(void)
{
    struct loom_store *s = open_store(1, 0);
    fresh_table(s, "timing", "CREATE TABLE timing (id BIGINT PRIMARY KEY, v TEXT)");
    struct loom_db *db;
    struct loom_error e = { 0 };
    CHECK_INT(loom_store_acquire(s, &db, &e), LOOM_OK);
    enum { N = 2000 };
    uint64_t t0 = loom_now_ns();
    CHECK_INT(loom_db_begin(db, &e), LOOM_OK);
    for (int i = 0; i < N; i++) {
        struct loom_sql_value p[2] = { LOOM_SQL_INT_V(i), LOOM_SQL_CSTR_V("value") };
        loom_db_exec(db, "INSERT INTO timing (id, v) VALUES ($1, $2)", p, 2, NULL, NULL, NULL, &e);
    }
    CHECK_INT(loom_db_commit(db, &e), LOOM_OK);
    uint64_t t1 = loom_now_ns();
    for (int i = 0; i < N; i++) {
        struct loom_sql_value p[1] = { LOOM_SQL_INT_V(i) };
        struct rows r = { 0 };
        loom_db_exec(db, "SELECT id, v FROM timing WHERE id = $1", p, 1, collect, &r, NULL, &e);
    }
    uint64_t t2 = loom_now_ns();
    for (int i = 0; i < N / 10; i++) {
        struct loom_sql_value p[1] = { LOOM_SQL_INT_V(i) };
        loom_db_exec(db, "UPDATE timing SET v = 'x' WHERE id = $1", p, 1, NULL, NULL, NULL, &e);
    }
    uint64_t t3 = loom_now_ns();
    loom_store_release(s, db);
    CHECK_INT(count_rows(s, "SELECT count(*) FROM timing"), N);
    fprintf(stderr,
            "  %s: insert in a tx %.1f us, select by key %.1f us, autocommit update %.1f us\n",
            cur.name, (double)(t1 - t0) / N / 1e3, (double)(t2 - t1) / N / 1e3,
            (double)(t3 - t2) / (N / 10) / 1e3);
    loom_store_close(s);
}

static void run_suite(void)
{
    fprintf(stderr, "== %s (%s)\n", cur.name, cur.url);
    RUN(test_migrations_concurrent); /* first: it also races to create loom_schema_migrations */
    RUN(test_values);
    RUN(test_placeholders);
    RUN(test_changes_and_returning);
    RUN(test_errors);
    RUN(test_transactions);
    RUN(test_tx_retry);
    RUN(test_tx_contention);
    RUN(test_busy);
    RUN(test_pool);
    RUN(test_migrations);
    RUN(test_timing);
}

/* ---- SQLite only ---- */

static loom_err first_text(const struct loom_sql_row *row, void *arg)
{
    snprintf(arg, 32, "%.*s", LOOM_STR_FMT(row->cols[0].s));
    return LOOM_OK;
}

static void test_sqlite_setup(void)
{
    struct loom_store *s = open_store(1, 0);
    char mode[32] = "";
    EXEC_OK(s, "PRAGMA journal_mode", NULL, 0, first_text, mode, NULL);
    CHECK_STR(mode, "wal");
    CHECK_INT(count_rows(s, "PRAGMA foreign_keys"), 1);
    CHECK_INT(count_rows(s, "PRAGMA synchronous"), 1); /* NORMAL */
    loom_store_close(s);

    /* A private in-memory database: one connection, whatever the options say. */
    struct loom_store_options o = { .pool_size = 4, .busy_timeout = 20 * LOOM_NS_PER_MS };
    struct loom_error e = { 0 };
    CHECK_INT(loom_store_open("sqlite::memory:", &o, &s, &e), LOOM_OK);
    struct loom_db *db1, *db2;
    CHECK_INT(loom_store_acquire(s, &db1, &e), LOOM_OK);
    CHECK_INT(loom_db_exec_script(db1, "CREATE TABLE m (x BIGINT); INSERT INTO m VALUES (5)", &e),
              LOOM_OK);
    CHECK_INT(loom_store_acquire(s, &db2, &e), LOOM_EBUSY);
    loom_store_release(s, db1);
    CHECK_INT(count_rows(s, "SELECT x FROM m"), 5);
    loom_store_close(s);
}

/* A new database file, and the WAL files beside it, are the owner's alone (they hold keys and
 * secret hashes), whatever the umask. */
static const char *sqlite_dir; /* main's temporary directory */

static void test_sqlite_file_mode(void)
{
    const char *dir = sqlite_dir;
    char url[300], path[256], wal[300];
    snprintf(path, sizeof(path), "%s/private.db", dir);
    snprintf(url, sizeof(url), "sqlite:%s", path);
    snprintf(wal, sizeof(wal), "%s-wal", path);
    mode_t old = umask(022);
    struct loom_store *s;
    struct loom_error e = { 0 };
    CHECK_INT(loom_store_open(url, NULL, &s, &e), LOOM_OK);
    struct loom_db *db;
    CHECK_INT(loom_store_acquire(s, &db, &e), LOOM_OK);
    CHECK_INT(loom_db_exec_script(db, "CREATE TABLE k (x TEXT); INSERT INTO k VALUES ('key')", &e),
              LOOM_OK);
    struct stat st;
    CHECK_INT(stat(path, &st), 0);
    CHECK_INT(st.st_mode & 0777, 0600);
    CHECK_INT(stat(wal, &st), 0);
    CHECK_INT(st.st_mode & 0777, 0600);
    loom_store_release(s, db);
    loom_store_close(s);
    umask(old);
}

/* ---- URLs and messages ---- */

static void test_bad_urls(void)
{
    struct loom_store *s = NULL;
    struct loom_error e = { 0 };
    CHECK_INT(loom_store_open(NULL, NULL, &s, &e), LOOM_EINVAL);
    CHECK_INT(loom_store_open("", NULL, &s, &e), LOOM_EINVAL);
    CHECK_INT(loom_store_open("mysql://root:hunter2@db/x", NULL, &s, &e), LOOM_EINVAL);
    CHECK_CONTAINS(e.msg, "\"mysql\"");
    CHECK(strstr(e.msg, "hunter2") == NULL);
    CHECK_INT(loom_store_open("sqlite:", NULL, &s, &e), LOOM_EINVAL);
    CHECK_INT(loom_store_open("sqlite://x.db", NULL, &s, &e), LOOM_EINVAL);
    CHECK_CONTAINS(e.msg, "sqlite:PATH");
    CHECK_INT(loom_store_open("sqlite:/nonexistent-dir/x/loom.db", NULL, &s, &e), LOOM_ECONNECT);
    CHECK_CONTAINS(e.msg, "/nonexistent-dir/x/loom.db");
    struct loom_store_options big = { .pool_size = 100000 };
    CHECK_INT(loom_store_open("sqlite::memory:", &big, &s, &e), LOOM_EINVAL);
    char huge[5000];
    memset(huge, 'a', sizeof(huge) - 1);
    memcpy(huge, "sqlite:", 7);
    huge[sizeof(huge) - 1] = '\0';
    CHECK_INT(loom_store_open(huge, NULL, &s, &e), LOOM_EINVAL);
    CHECK(s == NULL);
}

/* ---- PostgreSQL only ---- */

static const char pg_password[] = "loom-Test-pw"; /* the server's password for user loom */

/* A URL for the test's server: "user:password@" (or ""), then "/dbname?query". */
static void pg_url(char *out, size_t n, const char *userinfo, const char *path)
{
    snprintf(out, n, "postgres://%s127.0.0.1:%d%s", userinfo, cur.port, path);
}

static void test_pg_types(void)
{
    struct loom_store *s = open_store(1, 0);
    struct rows r = { 0 };
    EXEC_OK(s,
            "SELECT true AS t, false AS f, CAST(7 AS int4) AS i4, CAST(-3 AS smallint) AS i2, "
            "CAST(2.5 AS numeric) AS num, sum(x) AS total, CAST(0.5 AS real) AS f4, "
            "CAST('v' AS varchar(3)) AS vc FROM (VALUES (CAST(1 AS BIGINT)), (2)) AS v (x)",
            NULL, 0, collect, &r, NULL);
    CHECK_UINT(r.n, 1);
    const struct loom_sql_value want[] = {
        LOOM_SQL_INT_V(1),    LOOM_SQL_INT_V(0),    LOOM_SQL_INT_V(7),    LOOM_SQL_INT_V(-3),
        LOOM_SQL_REAL_V(2.5), LOOM_SQL_REAL_V(3.0), LOOM_SQL_REAL_V(0.5), LOOM_SQL_CSTR_V("v"),
    };
    for (size_t c = 0; c < LOOM_ARRAY_SIZE(want); c++)
        CHECK_VALUE(r.v[0][c], want[c]);

    /* Non-finite doubles travel both ways. */
    const double odd[] = { INFINITY, -INFINITY, NAN };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(odd); i++) {
        struct loom_sql_value p = LOOM_SQL_REAL_V(odd[i]);
        memset(&r, 0, sizeof(r));
        EXEC_OK(s, "SELECT $1 AS v", &p, 1, collect, &r, NULL);
        CHECK_INT(r.v[0][0].type, LOOM_SQL_REAL);
        CHECK(isnan(odd[i]) ? isnan(r.v[0][0].r) : r.v[0][0].r == odd[i]);
    }
    struct loom_error e = { 0 };
    struct loom_sql_value nul = LOOM_SQL_TEXT_V(loom_str_make("a\0b", 3));
    CHECK_INT(exec(s, "SELECT $1", &nul, 1, NULL, NULL, NULL, &e), LOOM_EINVAL);
    CHECK_CONTAINS(e.msg, "NUL");
    /* After an error, COMMIT rolls back: reported, not silent. */
    struct loom_db *db;
    CHECK_INT(loom_store_acquire(s, &db, &e), LOOM_OK);
    CHECK_INT(loom_db_begin(db, &e), LOOM_OK);
    CHECK_INT(loom_db_exec(db, "SELECT 1/0", NULL, 0, NULL, NULL, NULL, &e), LOOM_EINVAL);
    CHECK_CONTAINS(e.msg, "22012");
    CHECK_INT(loom_db_commit(db, &e), LOOM_EINVAL);
    CHECK_CONTAINS(e.msg, "rolled back");
    loom_store_release(s, db);
    loom_store_close(s);
}

static loom_err backend_pid(const struct loom_sql_row *row, void *arg)
{
    *(int64_t *)arg = row->cols[0].i;
    return LOOM_OK;
}

/* Terminate a connection's server process and wait until it is gone. */
static void terminate(struct loom_store *admin, int64_t pid)
{
    struct loom_sql_value p = LOOM_SQL_INT_V(pid);
    EXEC_OK(admin, "SELECT pg_terminate_backend(CAST($1 AS int4))", &p, 1, NULL, NULL, NULL);
    for (int i = 0; i < 500; i++) {
        struct rows r = { 0 };
        EXEC_OK(admin, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", &p, 1, collect, &r,
                NULL);
        if (r.n == 1 && r.v[0][0].i == 0)
            return;
        usleep(10000);
    }
    CHECK_FAIL_("backend %lld did not go away", (long long)pid);
}

struct suicide {
    struct loom_store *admin;
    int calls;
};

static loom_err suicide_tx(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct suicide *k = arg;
    int64_t pid = 0;
    k->calls++;
    loom_err rc =
        loom_db_exec(db, "SELECT pg_backend_pid()", NULL, 0, backend_pid, &pid, NULL, err);
    if (rc != LOOM_OK)
        return rc;
    terminate(k->admin, pid);
    return loom_db_exec(db, "SELECT 1", NULL, 0, NULL, NULL, NULL, err);
}

static void test_pg_terminated(void)
{
    struct loom_store *s = open_store(1, 0);
    struct loom_store *admin = open_store(1, 0);
    struct loom_error e = { 0 };
    struct loom_db *db;
    int64_t pid1 = 0, pid2 = 0, pid3 = 0;

    /* Killed while idle in the pool: the next acquire notices and reconnects. */
    EXEC_OK(s, "SELECT pg_backend_pid()", NULL, 0, backend_pid, &pid1, NULL);
    terminate(admin, pid1);
    EXEC_OK(s, "SELECT pg_backend_pid()", NULL, 0, backend_pid, &pid2, NULL);
    CHECK(pid2 != 0 && pid2 != pid1);

    /* Killed while borrowed: the statement fails with ECONNECT, the next acquire reconnects. */
    CHECK_INT(loom_store_acquire(s, &db, &e), LOOM_OK);
    terminate(admin, pid2);
    CHECK_INT(loom_db_exec(db, "SELECT 1", NULL, 0, NULL, NULL, NULL, &e), LOOM_ECONNECT);
    loom_store_release(s, db);
    EXEC_OK(s, "SELECT pg_backend_pid()", NULL, 0, backend_pid, &pid3, NULL);
    CHECK(pid3 != 0 && pid3 != pid2);

    /* Killed inside loom_store_tx: ECONNECT, not retried. */
    struct suicide k = { admin, 0 };
    CHECK_INT(loom_store_tx(s, suicide_tx, &k, &e), LOOM_ECONNECT);
    CHECK_INT(k.calls, 1);
    EXEC_OK(s, "SELECT 1", NULL, 0, NULL, NULL, NULL);
    loom_store_close(admin);
    loom_store_close(s);
}

static void test_pg_messages(void)
{
    struct loom_store *s = NULL;
    struct loom_error e = { 0 };
    char url[600];
    /* The server refuses a wrong password; the message says so without repeating it. */
    pg_url(url, sizeof(url), "loom:Wrong-pw-1234@", "/postgres");
    CHECK_INT(loom_store_open(url, NULL, &s, &e), LOOM_ECONNECT);
    CHECK_CONTAINS(e.msg, "password authentication failed");
    CHECK(strstr(e.msg, "Wrong-pw-1234") == NULL);
    /* The right one, given as a query parameter and percent-encoded, works. */
    pg_url(url, sizeof(url), "loom@", "/postgres?password=loom%2DTest-pw&sslmode=disable");
    CHECK_INT(loom_store_open(url, NULL, &s, &e), LOOM_OK);
    if (s)
        CHECK_INT(count_rows(s, "SELECT 1"), 1);
    loom_store_close(s);
    s = NULL;
    /* No such database. */
    pg_url(url, sizeof(url), "loom:loom-Test-pw@", "/no_such_db");
    CHECK_INT(loom_store_open(url, NULL, &s, &e), LOOM_ECONNECT);
    CHECK_CONTAINS(e.msg, "no_such_db");
    CHECK(strstr(e.msg, pg_password) == NULL);
}

/* What libpq reports without a server: bad URLs and nobody listening. */
static void test_pg_urls(int closed_port)
{
    check_current = "test_pg_urls";
    struct loom_store *s = NULL;
    struct loom_error e = { 0 };
    char url[256];
    snprintf(url, sizeof(url), "postgres://loom:s3cret-Pw@127.0.0.1:%d/db", closed_port);
    CHECK_INT(loom_store_open(url, NULL, &s, &e), LOOM_ECONNECT);
    CHECK_CONTAINS(e.msg, "127.0.0.1");
    CHECK(strstr(e.msg, "s3cret-Pw") == NULL);
    snprintf(url, sizeof(url), "postgresql://127.0.0.1:%d/db?password=s3cret-Pw", closed_port);
    CHECK_INT(loom_store_open(url, NULL, &s, &e), LOOM_ECONNECT);
    CHECK(strstr(e.msg, "s3cret-Pw") == NULL);
    CHECK_INT(loom_store_open("postgres://loom:s3cret-Pw@h/db?bogus=s3cret-Pw", NULL, &s, &e),
              LOOM_EINVAL);
    CHECK_CONTAINS(e.msg, "bogus");
    CHECK(strstr(e.msg, "s3cret-Pw") == NULL);
    CHECK_INT(loom_store_open("postgres://loom:s3cr%65t-Pw@[::1/db", NULL, &s, &e), LOOM_EINVAL);
    CHECK(strstr(e.msg, "s3cret-Pw") == NULL && strstr(e.msg, "s3cr%65t-Pw") == NULL);
    /* libpq echoes a malformed URL whole; a message cut inside the password keeps none of it. */
    for (int user_len = 100; user_len < 200; user_len++) {
        snprintf(
            url, sizeof(url), "postgres://%.*s:Zq9xSECRETzz@[::1/db", user_len,
            "uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu"
            "uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu"
            "uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu");
        CHECK_INT(loom_store_open(url, NULL, &s, &e), LOOM_EINVAL);
        CHECK(strstr(e.msg, "Zq9") == NULL && e.msg[strlen(e.msg) - 1] != 'Z');
    }
    /* A password of stars is replaced by stars, once. */
    snprintf(url, sizeof(url), "postgres://u:*@127.0.0.1:%d/db", closed_port);
    CHECK_INT(loom_store_open(url, NULL, &s, &e), LOOM_ECONNECT);
    CHECK(s == NULL);
    fprintf(stderr, "%s test_pg_urls\n", check_failures ? "FAIL" : "ok  ");
}

/* ---- the test's own PostgreSQL server ---- */

struct pg_server {
    char dir[128];  /* temp directory: data/, the socket, the logs */
    char bin[128];  /* PostgreSQL's bin directory */
    const char *as; /* "runuser -u postgres -- " when we are root */
    int port;
    int guard_fd; /* closing it (or dying) tells the guardian to stop the server */
    pid_t guard_pid;
};

static int shell(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int shell(const char *fmt, ...)
{
    char cmd[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* A port nobody listens on, now. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(a);
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static bool find_pg_bin(char *out, size_t n)
{
    const char *env = getenv("LOOM_PG_BIN");
    glob_t g = { 0 };
    bool found = false;
    if (env) {
        snprintf(out, n, "%s", env);
    } else if (glob("/usr/lib/postgresql/*/bin", 0, NULL, &g) == 0 && g.gl_pathc > 0) {
        snprintf(out, n, "%s", g.gl_pathv[g.gl_pathc - 1]);
    } else {
        out[0] = '\0';
    }
    globfree(&g);
    char path[256];
    snprintf(path, sizeof(path), "%s/pg_ctl", out);
    found = out[0] && access(path, X_OK) == 0;
    return found;
}

/* A process that waits for EOF on a pipe only we hold, then stops the server and removes
 * the directory: it runs when we exit, crash or get killed. */
static bool start_guardian(struct pg_server *pg)
{
    char script[768];
    snprintf(script, sizeof(script),
             "trap '' INT TERM HUP; read -r _; "
             "[ -f %s/data/postmaster.pid ] && %s%s/pg_ctl -D %s/data -m immediate -w stop "
             ">/dev/null 2>&1; rm -rf %s",
             pg->dir, pg->as, pg->bin, pg->dir, pg->dir);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        return false;
    pid_t pid = fork();
    if (pid < 0)
        return false;
    if (pid == 0) {
        dup2(fds[0], 0);
        execl("/bin/sh", "sh", "-c", script, (char *)NULL);
        _exit(127);
    }
    close(fds[0]);
    pg->guard_fd = fds[1];
    pg->guard_pid = pid;
    return true;
}

static void stop_guardian(struct pg_server *pg)
{
    close(pg->guard_fd);
    waitpid(pg->guard_pid, NULL, 0);
}

static bool pg_start(struct pg_server *pg)
{
    if (!find_pg_bin(pg->bin, sizeof(pg->bin))) {
        fprintf(stderr, "== postgres: skipped: no PostgreSQL server binaries "
                        "(apt-get install postgresql, or set LOOM_PG_BIN)\n");
        return false;
    }
    struct passwd *pw = NULL;
    pg->as = "";
    if (geteuid() == 0) {
        pw = getpwnam("postgres");
        if (!pw) {
            fprintf(stderr, "== postgres: skipped: running as root and no postgres user\n");
            return false;
        }
        pg->as = "runuser -u postgres -- ";
    }
    snprintf(pg->dir, sizeof(pg->dir), "/tmp/loom-pg-XXXXXX");
    if (!mkdtemp(pg->dir) || (pw && chown(pg->dir, pw->pw_uid, pw->pw_gid) != 0) ||
        !start_guardian(pg)) {
        perror("postgres: temp directory");
        return false;
    }
    char pwfile[160];
    snprintf(pwfile, sizeof(pwfile), "%s/pw", pg->dir);
    FILE *f = fopen(pwfile, "w");
    if (!f || fprintf(f, "%s\n", pg_password) < 0 || fclose(f) != 0 ||
        (pw && chown(pwfile, pw->pw_uid, pw->pw_gid) != 0)) {
        perror(pwfile);
        return false;
    }
    uint64_t t0 = loom_now_ns();
    if (shell("%s%s/initdb -D %s/data -U loom --pwfile=%s --auth-local=trust "
              "--auth-host=scram-sha-256 -E UTF8 --no-locale --no-sync >%s/initdb.log 2>&1",
              pg->as, pg->bin, pg->dir, pwfile, pg->dir) != 0) {
        fprintf(stderr, "postgres: initdb failed, see %s/initdb.log\n", pg->dir);
        return false;
    }
    pg->port = free_port();
    if (shell("%s%s/pg_ctl -D %s/data -l %s/server.log -w -t 30 -o '-c listen_addresses=127.0.0.1 "
              "-c port=%d -c unix_socket_directories=%s -c fsync=off -c synchronous_commit=off "
              "-c full_page_writes=off -c max_connections=50' start >/dev/null 2>&1",
              pg->as, pg->bin, pg->dir, pg->dir, pg->port, pg->dir) != 0) {
        fprintf(stderr, "postgres: pg_ctl start failed, see %s/server.log\n", pg->dir);
        return false;
    }
    fprintf(stderr, "== postgres: %s, port %d, up in %.1f s\n", pg->bin, pg->port,
            (double)(loom_now_ns() - t0) / 1e9);
    return true;
}

int main(void)
{
    uint64_t t0 = loom_now_ns();
    RUN(test_bad_urls);
    test_pg_urls(free_port());

    char dir[] = "/tmp/loom-store-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    cur.name = "sqlite";
    cur.pg = false;
    snprintf(cur.url, sizeof(cur.url), "sqlite:%s/loom.db", dir);
    run_suite();
    RUN(test_sqlite_setup);
    sqlite_dir = dir;
    RUN(test_sqlite_file_mode);
    char rm[64];
    snprintf(rm, sizeof(rm), "rm -rf %s", dir);
    if (system(rm) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    fprintf(stderr, "== sqlite done in %.1f s\n", (double)(loom_now_ns() - t0) / 1e9);

    struct pg_server pg = { .guard_fd = -1 };
    t0 = loom_now_ns();
    if (pg_start(&pg)) {
        cur.name = "postgres";
        cur.pg = true;
        cur.port = pg.port;
        pg_url(cur.url, sizeof(cur.url), "loom:loom-Test-pw@", "/postgres");
        run_suite();
        RUN(test_pg_types);
        RUN(test_pg_terminated);
        RUN(test_pg_messages);
    }
    if (pg.guard_fd >= 0)
        stop_guardian(&pg);
    fprintf(stderr, "== postgres done in %.1f s\n", (double)(loom_now_ns() - t0) / 1e9);
    return check_report();
}
