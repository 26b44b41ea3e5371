/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The PostgreSQL backend of the store (libpq): one PGconn per pooled connection, statements
 * sent with PQexecParams and parameters in text form (bigint and double precision formatted
 * here, bytea as "\x" hex, text as is), results read in text form and converted by each
 * column's type OID. SQLSTATEs map to loom's codes: unique and foreign-key violations are
 * conflicts, serialization failures, deadlocks and lock timeouts are EBUSY (retry), a lost
 * connection is ECONNECT and the pool replaces it at the next acquire.
 */
#include "store_backend.h"

#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Type OIDs from PostgreSQL's catalog (pg_type.dat); they are fixed for built-in types. */
enum {
    OID_BOOL = 16,
    OID_BYTEA = 17,
    OID_INT8 = 20,
    OID_INT2 = 21,
    OID_INT4 = 23,
    OID_FLOAT4 = 700,
    OID_FLOAT8 = 701,
    OID_NUMERIC = 1700,
};

/*
 * libpq is loaded when a postgres:// store is first opened, not linked: it brings some 25
 * shared libraries (Kerberos, LDAP, GnuTLS...) whose loading alone costs every loom process,
 * most of which never talk to PostgreSQL, several MB of resident memory. The calls below go
 * through this table (the macros keep them reading as libpq's own names).
 */
static struct {
    __typeof__(&PQclear) PQclear;
    __typeof__(&PQcmdStatus) PQcmdStatus;
    __typeof__(&PQcmdTuples) PQcmdTuples;
    __typeof__(&PQconnectdbParams) PQconnectdbParams;
    __typeof__(&PQconninfoFree) PQconninfoFree;
    __typeof__(&PQconninfoParse) PQconninfoParse;
    __typeof__(&PQerrorMessage) PQerrorMessage;
    __typeof__(&PQexec) PQexec;
    __typeof__(&PQexecParams) PQexecParams;
    __typeof__(&PQfinish) PQfinish;
    __typeof__(&PQfname) PQfname;
    __typeof__(&PQfreemem) PQfreemem;
    __typeof__(&PQftype) PQftype;
    __typeof__(&PQgetisnull) PQgetisnull;
    __typeof__(&PQgetlength) PQgetlength;
    __typeof__(&PQgetvalue) PQgetvalue;
    __typeof__(&PQnfields) PQnfields;
    __typeof__(&PQntuples) PQntuples;
    __typeof__(&PQresultErrorField) PQresultErrorField;
    __typeof__(&PQresultStatus) PQresultStatus;
    __typeof__(&PQsetNoticeProcessor) PQsetNoticeProcessor;
    __typeof__(&PQsocket) PQsocket;
    __typeof__(&PQstatus) PQstatus;
    __typeof__(&PQtransactionStatus) PQtransactionStatus;
} pq;
static pthread_once_t pq_once = PTHREAD_ONCE_INIT;
static char pq_error[256];

static void pq_load(void)
{
    void *h = dlopen("libpq.so.5", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(pq_error, sizeof(pq_error), "%s", dlerror());
        return;
    }
#define LOAD(name)                                                              \
    do {                                                                        \
        *(void **)&pq.name = dlsym(h, #name);                                   \
        if (!pq.name && !pq_error[0])                                           \
            snprintf(pq_error, sizeof(pq_error), "libpq.so.5 lacks %s", #name); \
    } while (0)
    LOAD(PQclear);
    LOAD(PQcmdStatus);
    LOAD(PQcmdTuples);
    LOAD(PQconnectdbParams);
    LOAD(PQconninfoFree);
    LOAD(PQconninfoParse);
    LOAD(PQerrorMessage);
    LOAD(PQexec);
    LOAD(PQexecParams);
    LOAD(PQfinish);
    LOAD(PQfname);
    LOAD(PQfreemem);
    LOAD(PQftype);
    LOAD(PQgetisnull);
    LOAD(PQgetlength);
    LOAD(PQgetvalue);
    LOAD(PQnfields);
    LOAD(PQntuples);
    LOAD(PQresultErrorField);
    LOAD(PQresultStatus);
    LOAD(PQsetNoticeProcessor);
    LOAD(PQsocket);
    LOAD(PQstatus);
    LOAD(PQtransactionStatus);
#undef LOAD
}

#define PQclear              (pq.PQclear)
#define PQcmdStatus          (pq.PQcmdStatus)
#define PQcmdTuples          (pq.PQcmdTuples)
#define PQconnectdbParams    (pq.PQconnectdbParams)
#define PQconninfoFree       (pq.PQconninfoFree)
#define PQconninfoParse      (pq.PQconninfoParse)
#define PQerrorMessage       (pq.PQerrorMessage)
#define PQexec               (pq.PQexec)
#define PQexecParams         (pq.PQexecParams)
#define PQfinish             (pq.PQfinish)
#define PQfname              (pq.PQfname)
#define PQfreemem            (pq.PQfreemem)
#define PQftype              (pq.PQftype)
#define PQgetisnull          (pq.PQgetisnull)
#define PQgetlength          (pq.PQgetlength)
#define PQgetvalue           (pq.PQgetvalue)
#define PQnfields            (pq.PQnfields)
#define PQntuples            (pq.PQntuples)
#define PQresultErrorField   (pq.PQresultErrorField)
#define PQresultStatus       (pq.PQresultStatus)
#define PQsetNoticeProcessor (pq.PQsetNoticeProcessor)
#define PQsocket             (pq.PQsocket)
#define PQstatus             (pq.PQstatus)
#define PQtransactionStatus  (pq.PQtransactionStatus)

#define PG_CONNECT_TIMEOUT "10" /* seconds; the URL may say otherwise */

struct pg_db {
    struct loom_db base; /* first: lib/store.c sees only this */
    PGconn *conn;
};

static PGconn *conn_of(struct loom_db *db)
{
    return ((struct pg_db *)db)->conn;
}

/* libpq's messages end in a newline and may span lines ("\n\tIs the server running..."): one
 * line for a log. */
static const char *one_line(const char *msg, char *out, size_t n)
{
    return loom__store_sql_head(msg ? msg : "", out, n);
}

static loom_err map_sqlstate(const char *state)
{
    static const struct {
        const char *prefix;
        loom_err code;
    } table[] = {
        { "23505", LOOM_ECONFLICT },  /* unique_violation */
        { "23503", LOOM_ECONFLICT },  /* foreign_key_violation */
        { "40001", LOOM_EBUSY },      /* serialization_failure */
        { "40P01", LOOM_EBUSY },      /* deadlock_detected */
        { "55P03", LOOM_EBUSY },      /* lock_not_available (lock_timeout) */
        { "08", LOOM_ECONNECT },      /* connection exceptions */
        { "57P0", LOOM_ECONNECT },    /* the server shuts down or terminated us */
        { "57014", LOOM_ETIMEDOUT },  /* query_canceled (statement_timeout) */
        { "53", LOOM_EUNAVAIL },      /* insufficient resources */
        { "28", LOOM_EUNAUTH },       /* invalid authorization */
        { "42501", LOOM_EFORBIDDEN }, /* insufficient_privilege */
    };
    for (size_t i = 0; state && i < LOOM_ARRAY_SIZE(table); i++) {
        if (strncmp(state, table[i].prefix, strlen(table[i].prefix)) == 0)
            return table[i].code;
    }
    return LOOM_EINVAL;
}

/* The error of a failed command: res may be NULL (out of memory, or the connection died). */
static loom_err fail(PGconn *conn, const PGresult *res, const char *sql, struct loom_error *err)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    loom_err code = PQstatus(conn) == CONNECTION_BAD ? LOOM_ECONNECT : map_sqlstate(state);
    char line[LOOM_ERROR_MSG_MAX], head[LOOM__STORE_SQL_HEAD];
    return loom_error_set(err, code, "postgres: %s [%s] (in \"%s\")",
                          one_line(msg ? msg : PQerrorMessage(conn), line, sizeof(line)),
                          state ? state : "client", loom__store_sql_head(sql, head, sizeof(head)));
}

/* Run a command that returns no rows. */
static loom_err simple(PGconn *conn, const char *sql, struct loom_error *err)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    loom_err rc = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY
                      ? LOOM_OK
                      : fail(conn, res, sql, err);
    PQclear(res);
    return rc;
}

static void drop_notice(void *arg, const char *msg)
{
    /* NOTICEs ("relation ... already exists, skipping") would go to stderr by default. */
    LOOM_UNUSED(arg);
    LOOM_UNUSED(msg);
}

static loom_err pg_open(const struct loom__store_conf *conf, struct loom_db **out,
                        struct loom_error *err)
{
    char line[LOOM_ERROR_MSG_MAX];
    char *perr = NULL;
    loom_err rc;
    pthread_once(&pq_once, pq_load);
    if (pq_error[0])
        return loom_error_set(err, LOOM_EUNSUPPORTED,
                              "postgres: cannot load libpq (Debian package libpq5): %s", pq_error);
    /* Parse first, so that a bad URL is EINVAL and not a failure to connect. */
    PQconninfoOption *opts = PQconninfoParse(conf->target, &perr);
    if (!opts) {
        rc = loom_error_set(err, LOOM_EINVAL, "postgres: bad URL: %s",
                            one_line(perr ? perr : "out of memory", line, sizeof(line)));
        PQfreemem(perr);
        return rc;
    }
    PQconninfoFree(opts);

    /* Keywords after "dbname" (the expanded URL) override it, those before give defaults. */
    const char *const keys[] = { "connect_timeout", "application_name", "dbname", "client_encoding",
                                 NULL };
    const char *const vals[] = { PG_CONNECT_TIMEOUT, "loom", conf->target, "UTF8", NULL };
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        rc = loom_error_set(
            err, LOOM_ECONNECT, "postgres: %s",
            one_line(conn ? PQerrorMessage(conn) : "out of memory", line, sizeof(line)));
        goto out_finish;
    }
    PQsetNoticeProcessor(conn, drop_notice, NULL);
    /* busy_timeout is lock_timeout here (an int of ms); hex bytea and exact floats whatever the
     * server's defaults say, since the conversions below depend on them. */
    char set[160];
    snprintf(set, sizeof(set),
             "SET lock_timeout = %llu; SET bytea_output = hex; SET extra_float_digits = 1",
             LOOM_MIN(LOOM_MAX(conf->busy_timeout_ns / LOOM_NS_PER_MS, 1ull), 2147483647ull));
    rc = simple(conn, set, err);
    if (rc != LOOM_OK)
        goto out_finish;
    struct pg_db *db = loom_new(struct pg_db);
    db->base.type = &loom__store_pg;
    db->conn = conn;
    *out = &db->base;
    return LOOM_OK;

out_finish:
    PQfinish(conn);
    return rc;
}

static void pg_close(struct loom_db *db)
{
    PQfinish(conn_of(db));
    free(db);
}

static char *hex_encode(struct loom_arena *a, struct loom_str s)
{
    static const char digits[] = "0123456789abcdef";
    char *out = loom_arena_alloc(a, loom_mul_size(s.len, 2) + 3);
    char *p = out;
    *p++ = '\\';
    *p++ = 'x';
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        *p++ = digits[c >> 4];
        *p++ = digits[c & 15];
    }
    *p = '\0';
    return out;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* bytea in hex output form, "\x0aff...", into the arena. */
static bool hex_decode(struct loom_arena *a, const char *t, size_t n, struct loom_str *out)
{
    if (n < 2 || t[0] != '\\' || t[1] != 'x' || n % 2)
        return false;
    size_t len = (n - 2) / 2;
    char *p = loom_arena_alloc(a, len + 1);
    for (size_t i = 0; i < len; i++) {
        int hi = hex_digit(t[2 + 2 * i]), lo = hex_digit(t[3 + 2 * i]);
        if (hi < 0 || lo < 0)
            return false;
        p[i] = (char)(hi << 4 | lo);
    }
    *out = loom_str_make(p, len);
    return true;
}

/* Parameters in text form, with the type the value has (0: let the statement decide). */
static loom_err encode_params(struct loom_arena *a, const struct loom_sql_value *params, size_t n,
                              Oid *types, const char **vals, struct loom_error *err)
{
    for (size_t i = 0; i < n; i++) {
        const struct loom_sql_value *v = &params[i];
        char *t;
        switch (v->type) {
        case LOOM_SQL_NULL:
            types[i] = 0;
            vals[i] = NULL;
            break;
        case LOOM_SQL_INT:
            types[i] = OID_INT8;
            t = loom_arena_alloc(a, 24);
            snprintf(t, 24, "%" PRId64, v->i);
            vals[i] = t;
            break;
        case LOOM_SQL_REAL:
            types[i] = OID_FLOAT8;
            t = loom_arena_alloc(a, LOOM_FMT_DOUBLE_MAX);
            if (isnan(v->r))
                strcpy(t, "NaN");
            else if (isinf(v->r))
                strcpy(t, v->r > 0 ? "Infinity" : "-Infinity");
            else
                loom_fmt_double(v->r, t);
            vals[i] = t;
            break;
        case LOOM_SQL_TEXT:
            if (v->s.len && memchr(v->s.ptr, '\0', v->s.len))
                return loom_error_set(err, LOOM_EINVAL,
                                      "postgres: text parameter $%zu holds a NUL byte", i + 1);
            types[i] = 0;
            vals[i] = loom_arena_strndup(a, v->s.ptr, v->s.len);
            break;
        case LOOM_SQL_BLOB:
            types[i] = OID_BYTEA;
            vals[i] = hex_encode(a, v->s);
            break;
        default:
            return loom_error_set(err, LOOM_EINVAL, "postgres: parameter $%zu has type %d", i + 1,
                                  (int)v->type);
        }
    }
    return LOOM_OK;
}

static loom_err decode_value(const PGresult *res, int r, int c, struct loom_arena *a,
                             struct loom_sql_value *v, struct loom_error *err)
{
    if (PQgetisnull(res, r, c)) {
        *v = LOOM_SQL_NULL_V;
        return LOOM_OK;
    }
    const char *t = PQgetvalue(res, r, c);
    size_t n = (size_t)PQgetlength(res, r, c);
    char *end;
    errno = 0;
    switch (PQftype(res, c)) {
    case OID_INT2:
    case OID_INT4:
    case OID_INT8:
        *v = LOOM_SQL_INT_V(strtoll(t, &end, 10));
        break;
    case OID_BOOL:
        *v = LOOM_SQL_INT_V(t[0] == 't');
        return LOOM_OK;
    case OID_FLOAT4:
    case OID_FLOAT8:
    case OID_NUMERIC:
        /* strtod reads "NaN", "Infinity" and "-Infinity"; numeric may overflow to inf. */
        *v = LOOM_SQL_REAL_V(strtod(t, &end));
        errno = 0;
        break;
    case OID_BYTEA:
        v->type = LOOM_SQL_BLOB;
        if (!hex_decode(a, t, n, &v->s))
            return loom_error_set(err, LOOM_EINTERNAL, "postgres: column %s: bad bytea",
                                  PQfname(res, c));
        return LOOM_OK;
    default:
        *v = (struct loom_sql_value){ .type = LOOM_SQL_TEXT, .s = loom_str_make(t, n) };
        return LOOM_OK;
    }
    if (errno || end != t + n)
        return loom_error_set(err, LOOM_EINTERNAL, "postgres: column %s: bad number \"%.32s\"",
                              PQfname(res, c), t);
    return LOOM_OK;
}

static loom_err deliver_rows(const PGresult *res, loom_sql_row_fn fn, void *arg,
                             struct loom_arena *a, struct loom_error *err)
{
    int nrows = PQntuples(res), ncols = PQnfields(res);
    if (nrows == 0 || ncols == 0)
        return LOOM_OK;
    struct loom_sql_value *vals = loom_calloc((size_t)ncols, sizeof(*vals));
    const char **names = loom_calloc((size_t)ncols, sizeof(*names));
    for (int c = 0; c < ncols; c++)
        names[c] = PQfname(res, c);
    loom_err rc = LOOM_OK;
    for (int r = 0; r < nrows && rc == LOOM_OK; r++) {
        loom_arena_reset(a); /* decoded bytea of the previous row */
        for (int c = 0; c < ncols && rc == LOOM_OK; c++)
            rc = decode_value(res, r, c, a, &vals[c], err);
        if (rc == LOOM_OK) {
            struct loom_sql_row row = { (size_t)ncols, vals, names };
            rc = fn(&row, arg);
        }
    }
    free(vals);
    free(names);
    return rc;
}

/* Rows changed by the command: PQcmdTuples also counts the rows a SELECT returned. */
static int64_t changed_rows(const PGresult *res)
{
    static const char *const writes[] = { "INSERT ", "UPDATE ", "DELETE ", "MERGE " };
    const char *status = PQcmdStatus((PGresult *)res);
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(writes); i++) {
        if (strncmp(status, writes[i], strlen(writes[i])) == 0)
            return strtoll(PQcmdTuples((PGresult *)res), NULL, 10);
    }
    return 0;
}

static loom_err pg_exec(struct loom_db *db, const char *sql, const struct loom_sql_value *params,
                        size_t nparams, loom_sql_row_fn fn, void *arg, int64_t *changes,
                        struct loom_error *err)
{
    PGconn *conn = conn_of(db);
    struct loom_arena a;
    loom_arena_init(&a, 0);
    Oid *types = nparams ? loom_arena_alloc(&a, nparams * sizeof(*types)) : NULL;
    const char **vals = nparams ? loom_arena_alloc(&a, nparams * sizeof(*vals)) : NULL;
    PGresult *res = NULL;
    loom_err rc = encode_params(&a, params, nparams, types, vals, err);
    if (rc != LOOM_OK)
        goto out_release;

    res = PQexecParams(conn, sql, (int)nparams, types, vals, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_EMPTY_QUERY) {
        rc = loom_error_set(err, LOOM_EINVAL, "postgres: empty statement");
        goto out_clear;
    }
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        /* COPY and friends would leave the connection mid-protocol: is_broken sees to it. */
        rc = fail(conn, res, sql, err);
        goto out_clear;
    }
    if (fn) {
        rc = deliver_rows(res, fn, arg, &a, err);
        if (rc != LOOM_OK)
            goto out_clear;
    }
    if (changes)
        *changes = changed_rows(res);

out_clear:
    PQclear(res);
out_release:
    loom_arena_release(&a);
    return rc;
}

static loom_err pg_exec_script(struct loom_db *db, const char *sql, struct loom_error *err)
{
    return simple(conn_of(db), sql, err);
}

static void pg_rollback(struct loom_db *db)
{
    PGconn *conn = conn_of(db);
    if (PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) != PQTRANS_IDLE)
        PQclear(PQexec(conn, "ROLLBACK"));
}

static loom_err pg_begin(struct loom_db *db, const char *lock, struct loom_error *err)
{
    PGconn *conn = conn_of(db);
    if (!lock)
        return simple(conn, "BEGIN ISOLATION LEVEL SERIALIZABLE", err);
    /* READ COMMITTED: after waiting for the lock, the next statement must see what the
     * holder committed; a serializable snapshot would date from before the wait. */
    loom_err rc = simple(conn, "BEGIN ISOLATION LEVEL READ COMMITTED", err);
    if (rc != LOOM_OK)
        return rc;
    struct loom_sql_value key = LOOM_SQL_CSTR_V(lock);
    rc = pg_exec(db, "SELECT pg_advisory_xact_lock(hashtext($1))", &key, 1, NULL, NULL, NULL, err);
    if (rc != LOOM_OK)
        pg_rollback(db);
    return rc;
}

static loom_err pg_commit(struct loom_db *db, struct loom_error *err)
{
    PGconn *conn = conn_of(db);
    PGresult *res = PQexec(conn, "COMMIT");
    loom_err rc = LOOM_OK;
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        rc = fail(conn, res, "COMMIT", err);
    else if (strcmp(PQcmdStatus(res), "ROLLBACK") == 0)
        /* COMMIT of a transaction that an error aborted rolls back and says so. */
        rc = loom_error_set(err, LOOM_EINVAL,
                            "postgres: transaction rolled back: a statement in it failed");
    PQclear(res);
    pg_rollback(db);
    return rc;
}

static bool pg_is_broken(struct loom_db *db)
{
    PGconn *conn = conn_of(db);
    if (PQstatus(conn) != CONNECTION_OK || PQtransactionStatus(conn) != PQTRANS_IDLE)
        return true;
    /* An idle server has nothing to say (we never LISTEN) unless it is going away: a
     * terminated backend sends a FATAL error, then closes. Anything readable, the error or
     * the close, condemns the connection; the rare harmless message costs a reconnect. */
    struct pollfd p = { .fd = PQsocket(conn), .events = POLLIN };
    return poll(&p, 1, 0) != 0;
}

const struct loom__store_type loom__store_pg = {
    .name = "postgres",
    .open = pg_open,
    .close = pg_close,
    .exec = pg_exec,
    .exec_script = pg_exec_script,
    .begin = pg_begin,
    .commit = pg_commit,
    .rollback = pg_rollback,
    .is_broken = pg_is_broken,
};
