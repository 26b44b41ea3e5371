/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The generic half of the SQL store: it parses the URL and picks a backend table
 * (lib/store_sqlite.c or lib/store_pg.c), keeps a fixed-size pool of connections behind a
 * mutex and a condition variable, runs transactions with retry on LOOM_EBUSY, and applies
 * schema migrations. It never talks to a database library itself; see lib/store_backend.h.
 */
#include "store_backend.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STORE_URL_MAX        4096
#define STORE_POOL_DEFAULT   4
#define STORE_POOL_MAX       256
#define STORE_BUSY_DEFAULT   (5 * LOOM_NS_PER_SEC)
#define STORE_PARAMS_MAX     65535 /* PostgreSQL's protocol limit; SQLite's default is lower */
#define STORE_TX_ATTEMPTS    10
#define STORE_BACKOFF_MIN_NS (1 * LOOM_NS_PER_MS)
#define STORE_BACKOFF_MAX_NS (64 * LOOM_NS_PER_MS)
#define STORE_COMPONENT_MAX  64
#define STORE_MIGRATIONS_MAX 10000
#define STORE_SECRETS_MAX    4

struct loom_store {
    const struct loom__store_type *type;
    struct loom__store_conf conf;
    char *target;                     /* conf.target's memory */
    char *secrets[STORE_SECRETS_MAX]; /* password spellings to scrub from connect errors */
    size_t nsecrets;
    pthread_mutex_t mu;
    pthread_cond_t cv;     /* signalled when a connection is returned or a slot frees up */
    size_t size;           /* most connections open at once */
    size_t nopen;          /* connections open, or being opened by an acquire */
    size_t nidle;          /* idle[0..nidle) are open and not borrowed */
    struct loom_db **idle; /* a stack of `size` slots: the warmest connection goes out first */
};

/* ---- URLs ---- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Remember a password as written and percent-decoded: libpq may echo either. */
static void add_secret(struct loom_store *s, const char *p, size_t n)
{
    if (n == 0 || s->nsecrets + 2 > STORE_SECRETS_MAX)
        return;
    char *raw = loom_strndup(p, n);
    char *dec = loom_malloc(n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (p[i] == '%' && i + 2 < n && (hi = hexval(p[i + 1])) >= 0 &&
            (lo = hexval(p[i + 2])) >= 0) {
            dec[k++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            dec[k++] = p[i];
        }
    }
    dec[k] = '\0';
    s->secrets[s->nsecrets++] = raw;
    if (k && strcmp(raw, dec) != 0)
        s->secrets[s->nsecrets++] = dec;
    else
        free(dec);
}

/* Find the password of a postgres URL where libpq looks for it: the userinfo before the first
 * '@' (if it comes before any '/'), and a "password=" query parameter. */
static void find_pg_secrets(struct loom_store *s, const char *url)
{
    const char *p = strstr(url, "://") + 3;
    size_t auth = strcspn(p, "@/");
    if (p[auth] == '@') {
        const char *colon = memchr(p, ':', auth);
        if (colon)
            add_secret(s, colon + 1, (size_t)(p + auth - colon - 1));
    }
    const char *q = strchr(p, '?');
    while (q) {
        q++;
        size_t n = strcspn(q, "&");
        if (n > 9 && memcmp(q, "password=", 9) == 0)
            add_secret(s, q + 9, n - 9);
        q = strchr(q, '&');
    }
}

/* Replace every spelling of the password in the message with "***", and cut the start of one
 * that a truncated message ends with. */
static void scrub_secrets(const struct loom_store *s, struct loom_error *err)
{
    if (!err)
        return;
    for (size_t i = 0; i < s->nsecrets; i++) {
        const char *secret = s->secrets[i];
        size_t n = strlen(secret);
        char *from = err->msg, *at;
        while ((at = strstr(from, secret)) != NULL) {
            char rest[LOOM_ERROR_MSG_MAX];
            snprintf(rest, sizeof(rest), "%s", at + n);
            size_t room = sizeof(err->msg) - (size_t)(at - err->msg);
            snprintf(at, room, "***%s", rest);
            from = at + LOOM_MIN((size_t)3, room - 1); /* the password may contain "*" */
        }
        size_t len = strlen(err->msg);
        if (len < sizeof(err->msg) - 1)
            continue; /* not truncated */
        for (size_t k = LOOM_MIN(n - 1, len); k > 0; k--) {
            if (memcmp(err->msg + len - k, secret, k) == 0) {
                err->msg[len - k] = '\0';
                break;
            }
        }
    }
}

static loom_err parse_url(struct loom_store *s, const char *url, struct loom_error *err)
{
    if (!url || !*url)
        return loom_error_set(err, LOOM_EINVAL, "store URL is empty");
    if (strnlen(url, STORE_URL_MAX + 1) > STORE_URL_MAX)
        return loom_error_set(err, LOOM_EINVAL, "store URL is longer than %d bytes", STORE_URL_MAX);
    if (strncmp(url, "sqlite:", 7) == 0) {
        const char *path = url + 7;
        if (!*path || strncmp(path, "//", 2) == 0)
            return loom_error_set(err, LOOM_EINVAL,
                                  "bad store URL \"%s\": use sqlite:PATH or sqlite::memory:", url);
        s->type = &loom__store_sqlite;
        s->target = loom_strdup(path);
        /* Each connection to ":memory:" would be a database of its own. */
        if (strcmp(path, ":memory:") == 0)
            s->size = 1;
        return LOOM_OK;
    }
    if (strncmp(url, "postgres://", 11) == 0 || strncmp(url, "postgresql://", 13) == 0) {
        s->type = &loom__store_pg;
        s->target = loom_strdup(url);
        find_pg_secrets(s, url);
        return LOOM_OK;
    }
    /* Show the scheme only: the rest may hold a password. */
    return loom_error_set(err, LOOM_EINVAL,
                          "unsupported store URL scheme \"%.*s\": use sqlite:PATH or "
                          "postgres://user:password@host:port/dbname",
                          (int)LOOM_MIN(strcspn(url, ":"), 32), url);
}

const char *loom__store_sql_head(const char *sql, char *out, size_t n)
{
    size_t k = 0;
    bool space = false;
    for (const char *p = sql; *p && n > 4; p++) {
        bool ws = *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r';
        if (ws) {
            space = k > 0;
            continue;
        }
        if (k + (space ? 2 : 1) > n - 4) {
            memcpy(out + k, "...", 3);
            k += 3;
            break;
        }
        if (space)
            out[k++] = ' ';
        space = false;
        out[k++] = *p;
    }
    if (n)
        out[k] = '\0';
    return out;
}

/* ---- the pool ---- */

static loom_err connect_one(struct loom_store *s, struct loom_db **out, struct loom_error *err)
{
    loom_err rc = s->type->open(&s->conf, out, err);
    if (rc != LOOM_OK)
        scrub_secrets(s, err);
    return rc;
}

loom_err loom_store_open(const char *url, const struct loom_store_options *opts,
                         struct loom_store **out, struct loom_error *err)
{
    size_t pool = opts && opts->pool_size ? opts->pool_size : STORE_POOL_DEFAULT;
    uint64_t busy = opts && opts->busy_timeout ? opts->busy_timeout : STORE_BUSY_DEFAULT;
    if (pool > STORE_POOL_MAX)
        return loom_error_set(err, LOOM_EINVAL, "pool_size %zu is above %d", pool, STORE_POOL_MAX);
    struct loom_store *s = loom_new(struct loom_store);
    s->size = pool;
    loom_err rc = parse_url(s, url, err);
    if (rc != LOOM_OK)
        goto out_free;
    s->conf.target = s->target;
    s->conf.busy_timeout_ns = busy;
    s->idle = loom_calloc(s->size, sizeof(*s->idle));

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&s->mu, NULL);

    /* One connection now, so that a wrong URL or a server that is down fails at start; the
     * others open on demand. */
    struct loom_db *db;
    rc = connect_one(s, &db, err);
    if (rc != LOOM_OK)
        goto out_destroy;
    s->idle[s->nidle++] = db;
    s->nopen = 1;
    *out = s;
    return LOOM_OK;

out_destroy:
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
out_free:
    for (size_t i = 0; i < s->nsecrets; i++)
        free(s->secrets[i]);
    free(s->idle);
    free(s->target);
    free(s);
    return rc;
}

void loom_store_close(struct loom_store *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nidle; i++)
        s->type->close(s->idle[i]);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    for (size_t i = 0; i < s->nsecrets; i++)
        free(s->secrets[i]);
    free(s->idle);
    free(s->target);
    free(s);
}

const char *loom_store_backend(const struct loom_store *s)
{
    return s->type->name;
}

loom_err loom_store_acquire(struct loom_store *s, struct loom_db **out, struct loom_error *err)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += (time_t)(s->conf.busy_timeout_ns / LOOM_NS_PER_SEC);
    deadline.tv_nsec += (long)(s->conf.busy_timeout_ns % LOOM_NS_PER_SEC);
    if (deadline.tv_nsec >= (long)LOOM_NS_PER_SEC) {
        deadline.tv_sec++;
        deadline.tv_nsec -= (long)LOOM_NS_PER_SEC;
    }

    struct loom_db *db = NULL;
    pthread_mutex_lock(&s->mu);
    while (s->nidle == 0 && s->nopen == s->size) {
        if (pthread_cond_timedwait(&s->cv, &s->mu, &deadline) == ETIMEDOUT && s->nidle == 0 &&
            s->nopen == s->size) {
            pthread_mutex_unlock(&s->mu);
            return loom_error_set(err, LOOM_EBUSY, "store: all %zu connections stayed busy",
                                  s->size);
        }
    }
    if (s->nidle)
        db = s->idle[--s->nidle];
    else
        s->nopen++; /* our slot: open a connection below, outside the lock */
    pthread_mutex_unlock(&s->mu);

    /* Probing and connecting happen unlocked: they may take a network round trip. */
    if (db && s->type->is_broken(db)) {
        s->type->close(db);
        db = NULL;
    }
    if (!db) {
        loom_err rc = connect_one(s, &db, err);
        if (rc != LOOM_OK) {
            pthread_mutex_lock(&s->mu);
            s->nopen--;
            pthread_cond_signal(&s->cv);
            pthread_mutex_unlock(&s->mu);
            return rc;
        }
    }
    *out = db;
    return LOOM_OK;
}

void loom_store_release(struct loom_store *s, struct loom_db *db)
{
    if (!db)
        return;
    if (db->in_tx)
        loom_db_rollback(db);
    pthread_mutex_lock(&s->mu);
    s->idle[s->nidle++] = db;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* ---- statements and transactions ---- */

loom_err loom_db_exec(struct loom_db *db, const char *sql, const struct loom_sql_value *params,
                      size_t nparams, loom_sql_row_fn fn, void *arg, int64_t *changes,
                      struct loom_error *err)
{
    if (!sql)
        return loom_error_set(err, LOOM_EINVAL, "no SQL");
    if (nparams > STORE_PARAMS_MAX || (nparams && !params))
        return loom_error_set(err, LOOM_EINVAL, "bad parameters (%zu, at most %d)", nparams,
                              STORE_PARAMS_MAX);
    return db->type->exec(db, sql, params, nparams, fn, arg, changes, err);
}

loom_err loom_db_exec_script(struct loom_db *db, const char *sql, struct loom_error *err)
{
    if (!sql)
        return loom_error_set(err, LOOM_EINVAL, "no SQL");
    return db->type->exec_script(db, sql, err);
}

static loom_err begin_tx(struct loom_db *db, const char *lock, struct loom_error *err)
{
    if (db->in_tx)
        return loom_error_set(err, LOOM_EINVAL, "a transaction is already open");
    loom_err rc = db->type->begin(db, lock, err);
    db->in_tx = rc == LOOM_OK;
    return rc;
}

loom_err loom_db_begin(struct loom_db *db, struct loom_error *err)
{
    return begin_tx(db, NULL, err);
}

loom_err loom_db_commit(struct loom_db *db, struct loom_error *err)
{
    if (!db->in_tx)
        return loom_error_set(err, LOOM_EINVAL, "commit without a transaction");
    db->in_tx = false;
    return db->type->commit(db, err);
}

void loom_db_rollback(struct loom_db *db)
{
    if (!db->in_tx)
        return;
    db->in_tx = false;
    db->type->rollback(db);
}

/* Sleep before attempt `attempt + 1`: exponential, capped, and jittered so that two writers
 * that collided do not collide again in step. */
static void backoff(int attempt, uint64_t *rng)
{
    uint64_t max = STORE_BACKOFF_MIN_NS << LOOM_MIN(attempt - 1, 16);
    max = LOOM_MIN(max, STORE_BACKOFF_MAX_NS);
    *rng ^= *rng << 13; /* xorshift64: the jitter needs no quality, only no shared state */
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    uint64_t ns = max / 2 + *rng % (max / 2 + 1);
    struct timespec ts = { (time_t)(ns / LOOM_NS_PER_SEC), (long)(ns % LOOM_NS_PER_SEC) };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Run fn in a transaction on db, again while the database answers LOOM_EBUSY. */
static loom_err run_tx(struct loom_db *db, const char *lock, loom_tx_fn fn, void *arg,
                       struct loom_error *err)
{
    uint64_t rng = loom_now_ns() ^ (uint64_t)(uintptr_t)&rng;
    rng |= 1;
    loom_err rc = LOOM_OK;
    int attempt;
    for (attempt = 1; attempt <= STORE_TX_ATTEMPTS; attempt++) {
        rc = begin_tx(db, lock, err);
        if (rc == LOOM_OK) {
            rc = fn(db, arg, err);
            if (rc == LOOM_OK) {
                rc = loom_db_commit(db, err);
            } else {
                loom_db_rollback(db);
                /* fn failed without saying why: do not leave a stale message behind. */
                if (err && err->code != rc)
                    loom_error_set(err, rc, "transaction function failed: %s", loom_strerror(rc));
            }
        }
        if (rc != LOOM_EBUSY)
            return rc;
        if (attempt < STORE_TX_ATTEMPTS)
            backoff(attempt, &rng);
    }
    if (err)
        loom_error_prefix(err, "gave up after %d attempts", STORE_TX_ATTEMPTS);
    return rc;
}

loom_err loom_store_tx(struct loom_store *s, loom_tx_fn fn, void *arg, struct loom_error *err)
{
    struct loom_db *db;
    loom_err rc = loom_store_acquire(s, &db, err);
    if (rc != LOOM_OK)
        return rc;
    rc = run_tx(db, NULL, fn, arg, err);
    loom_store_release(s, db);
    return rc;
}

/* ---- migrations ---- */

static const char migrations_table[] =
    "CREATE TABLE IF NOT EXISTS loom_schema_migrations ("
    "component TEXT NOT NULL, version BIGINT NOT NULL, applied_at BIGINT NOT NULL, "
    "PRIMARY KEY (component, version))";

struct migration_ctx {
    const char *component;
    const struct loom_migration *m;
};

static loom_err create_migrations_table(struct loom_db *db, void *arg, struct loom_error *err)
{
    LOOM_UNUSED(arg);
    return loom_db_exec_script(db, migrations_table, err);
}

static loom_err row_seen(const struct loom_sql_row *row, void *arg)
{
    LOOM_UNUSED(row);
    *(bool *)arg = true;
    return LOOM_OK;
}

/* One migration, in a transaction that holds the component's lock: check again, now that no
 * other process can be applying it, then apply and record it. */
static loom_err apply_migration(struct loom_db *db, void *arg, struct loom_error *err)
{
    const struct migration_ctx *c = arg;
    struct loom_sql_value p[3] = { LOOM_SQL_CSTR_V(c->component), LOOM_SQL_INT_V(c->m->version),
                                   LOOM_SQL_INT_V(loom_wall_ns() / (int64_t)LOOM_NS_PER_MS) };
    bool applied = false;
    loom_err rc = loom_db_exec(db,
                               "SELECT 1 FROM loom_schema_migrations "
                               "WHERE component = $1 AND version = $2",
                               p, 2, row_seen, &applied, NULL, err);
    if (rc != LOOM_OK || applied)
        return rc;
    rc = loom_db_exec_script(db, c->m->sql, err);
    if (rc != LOOM_OK) {
        if (err)
            loom_error_prefix(err, "migration %s/%d failed", c->component, c->m->version);
        return rc;
    }
    return loom_db_exec(db,
                        "INSERT INTO loom_schema_migrations (component, version, applied_at) "
                        "VALUES ($1, $2, $3)",
                        p, 3, NULL, NULL, NULL, err);
}

loom_err loom_store_migrate(struct loom_store *s, const char *component,
                            const struct loom_migration *migrations, size_t n,
                            struct loom_error *err)
{
    if (!component || !*component || strlen(component) > STORE_COMPONENT_MAX)
        return loom_error_set(err, LOOM_EINVAL, "migration component must be 1 to %d bytes",
                              STORE_COMPONENT_MAX);
    if (n > STORE_MIGRATIONS_MAX || (n && !migrations))
        return loom_error_set(err, LOOM_EINVAL, "bad migration list for %s", component);
    for (size_t i = 0; i < n; i++) {
        if (migrations[i].version <= (i ? migrations[i - 1].version : 0) || !migrations[i].sql)
            return loom_error_set(err, LOOM_EINVAL,
                                  "migration %s/%d: versions must increase from 1 and have SQL",
                                  component, migrations[i].version);
    }

    struct loom_db *db;
    loom_err rc = loom_store_acquire(s, &db, err);
    if (rc != LOOM_OK)
        return rc;
    /* Two processes creating the table at once collide on PostgreSQL's catalog even with IF
     * NOT EXISTS, so the creation takes a lock of its own. */
    rc = run_tx(db, "loom_schema_migrations", create_migrations_table, NULL, err);
    for (size_t i = 0; i < n && rc == LOOM_OK; i++) {
        struct migration_ctx c = { component, &migrations[i] };
        rc = run_tx(db, component, apply_migration, &c, err);
    }
    loom_store_release(s, db);
    return rc;
}

const struct loom_sql_value *loom_sql_col(const struct loom_sql_row *row, const char *name)
{
    for (size_t i = 0; i < row->ncols; i++) {
        if (strcmp(row->names[i], name) == 0)
            return &row->cols[i];
    }
    return NULL;
}
