/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The embedded bus backend: a durable append-only log in one SQLite file in WAL mode, shared
 * by every process on the host that opens it. Tables:
 *   bus_log      seq (AUTOINCREMENT: never reused), the event id, subject, only_group
 *                (replays of parked events), time, the running byte total `cum` (for size
 *                retention) and the data
 *   bus_dedup    the dedup keys of the retained log, as 63 + 64 bits (see dedup_hash) with
 *                their seq for retention. Ids derived from record ids are random, and a
 *                B-tree keyed on them dirties about a page per insert: 24-byte entries put
 *                more keys on a page than the 36-byte ids would, and UUIDv7s keep their time
 *                order. Publishing is bound by this index (and the WAL it fills).
 *   bus_groups   a group's filter and next_seq, the next log position it has not looked at
 *   bus_pending  (group, seq) delivered and not settled: attempts made, and when it becomes
 *                visible again (the lease of ack_wait, or a retry's backoff)
 *   bus_parked   the dead letter: a copy of the event, why, after how many attempts
 * A member claims work in one BEGIN IMMEDIATE transaction (due pending rows first, then new log
 * rows matching its filter), so two members never claim the same delivery. Publishing commits
 * with synchronous=FULL (an acknowledged publish survives a power cut); the consumers' own
 * bookkeeping uses NORMAL, since losing it only means a redelivery. Waiting members sleep on
 * inotify (IN_MODIFY in the database's directory, for the file <db>-notify that publishers
 * write one byte to after each commit) and an eventfd for local wake-ups, and poll once a
 * second as a safety net. (Watching the -wal file itself races: its frames are written before
 * the commit becomes visible in the shared index, so a reader woken by them may see nothing.)
 * Retention deletes the oldest rows by age and total size every few seconds; a group that falls
 * behind retention skips what was deleted. A thread of each process, the checkpointer, copies
 * the WAL back into the database in small steps, off the commits' path (see checkpointer()).
 */
#include "internal.h"

#include <loom/bus.h>
#include <loom/digest.h>
#include <loom/id.h>
#include <loom/log.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

struct sq_bus {
    char *path;
    char *dir;         /* for inotify */
    char *notify_name; /* basename of the -notify file, written after each commit */
    int notify_fd;
    bool sync_full;
    uint64_t max_age_ms;
    uint64_t max_bytes;
    uint64_t poll_ns;
    char instance[LOOM_BUS_INSTANCE_MAX];
    pthread_mutex_t mu; /* the shared connection: publishing and admin */
    sqlite3 *db;
    sqlite3_stmt *ins, *last_cum, *dedup_get, *dedup_put;
    uint64_t last_retention;
    /* The checkpointer (see checkpointer()): its thread, connection and wake-up. */
    pthread_t ck_thread;
    bool ck_started;
    pthread_mutex_t ck_mu;
    pthread_cond_t ck_cond;
    bool ck_wanted, ck_stop; /* under ck_mu */
    sqlite3 *ck_db;
    atomic_int ck_frames; /* the WAL's length at the last checkpoint */
};

struct sq_sub {
    sqlite3 *db; /* the pump's own connection */
    int ifd, efd;
    sqlite3_stmt *probe, *group_next, *due, *redeliver, *drop_pending, *scan, *claim, *advance;
    sqlite3_stmt *ack, *retry, *park;
};

struct sq_msg {
    struct loom_bus_msg m;
    char bytes[]; /* id, subject, data */
};

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS bus_meta(k TEXT PRIMARY KEY, v TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS bus_log(seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " id TEXT NOT NULL, subject TEXT NOT NULL, only_group TEXT,"
    " time_ms INTEGER NOT NULL, cum INTEGER NOT NULL, data BLOB NOT NULL);"
    "CREATE TABLE IF NOT EXISTS bus_dedup(h INTEGER PRIMARY KEY, h2 INTEGER NOT NULL,"
    " seq INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS bus_dedup_seq ON bus_dedup(seq);"
    "CREATE TABLE IF NOT EXISTS bus_groups(name TEXT PRIMARY KEY, filter TEXT NOT NULL,"
    " next_seq INTEGER NOT NULL, created_ms INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS bus_pending(grp TEXT NOT NULL, seq INTEGER NOT NULL,"
    " deliveries INTEGER NOT NULL, visible_ms INTEGER NOT NULL, PRIMARY KEY(grp, seq))"
    " WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS bus_pending_due ON bus_pending(grp, visible_ms);"
    "CREATE TABLE IF NOT EXISTS bus_parked(pseq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " grp TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL, subject TEXT NOT NULL,"
    " time_ms INTEGER NOT NULL, deliveries INTEGER NOT NULL, reason TEXT NOT NULL,"
    " parked_ms INTEGER NOT NULL, data BLOB NOT NULL);"
    "CREATE INDEX IF NOT EXISTS bus_parked_grp ON bus_parked(grp, pseq);";

static int64_t now_ms(void)
{
    return loom_wall_ns() / (int64_t)LOOM_NS_PER_MS;
}

static loom_err sq_error(sqlite3 *db, int rc, struct loom_error *err, const char *what)
{
    loom_err code = (rc == SQLITE_BUSY || rc == SQLITE_LOCKED) ? LOOM_EBUSY : LOOM_EIO;
    return loom_error_set(err, code, "bus: %s: %s", what, db ? sqlite3_errmsg(db) : "?");
}

static loom_err exec(sqlite3 *db, const char *sql, struct loom_error *err)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        loom_err code = (rc == SQLITE_BUSY || rc == SQLITE_LOCKED) ? LOOM_EBUSY : LOOM_EIO;
        loom_error_set(err, code, "bus: %s", msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return code;
    }
    return LOOM_OK;
}

static loom_err prep(sqlite3 *db, const char *sql, sqlite3_stmt **st, struct loom_error *err)
{
    int rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL);
    if (rc != SQLITE_OK)
        return sq_error(db, rc, err, "prepare");
    return LOOM_OK;
}

static void rollback(sqlite3 *db)
{
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
}

/*
 * Waiting for the write lock. SQLite's own busy handler sleeps 1, 2, 5, ... up to 100 ms
 * between tries and nothing wakes it when the lock frees, so a consumer that found a
 * publisher's commit (a few ms of fsync) in its way could sleep 100 ms: the whole latency
 * budget. Try every 250 us for the first 100 ms, then every 2 ms, for up to 30 s.
 */
static int busy_wait(void *arg, int tries)
{
    LOOM_UNUSED(arg);
    uint64_t us = tries < 400 ? 250 : 2000;
    uint64_t waited = tries < 400 ? (uint64_t)tries * 250 : 100000 + (uint64_t)(tries - 400) * 2000;
    if (waited >= 30 * 1000000ull)
        return 0;
    struct timespec ts = { 0, (long)(us * 1000) };
    nanosleep(&ts, NULL);
    return 1;
}

/*
 * Checkpoints copy the WAL back into the database file so that the WAL can start over. SQLite's
 * automatic one runs inside the commit that crosses its threshold (64 MiB here): with the dedup
 * index's random pages it took 25 to 75 ms, most of it the fsync of the database file, and the
 * publish, or the consumer's next claim, waited that long; other commits' fsyncs queued behind
 * it. Here commits only wake the checkpointer, a thread of the process with a connection of its
 * own, every CHECKPOINT_STEP frames. It copies what is new in PASSIVE mode (writers and readers
 * carry on), so that each fsync has 16 MiB of pages at most to write rather than 64 (steps of
 * 8 MiB held the latency lower still, but cost a fifth of the bulk rate). Once the WAL
 * passes CHECKPOINT_FRAMES and all of it is copied, it catches up once more and restarts the WAL
 * (RESTART mode: it holds the write lock while it copies the frames committed meanwhile, and
 * waits briefly for readers of the old WAL). PASSIVE alone never restarts the WAL under a steady
 * stream of commits, and the WAL would grow without end. SQLite runs one checkpoint at a time
 * across processes: the others answer BUSY, and a later commit wakes them again.
 */
enum { CHECKPOINT_STEP = 4096, CHECKPOINT_FRAMES = 16384 };

static int wal_hook(void *arg, sqlite3 *db, const char *name, int frames)
{
    LOOM_UNUSED(db);
    LOOM_UNUSED(name);
    struct sq_bus *b = arg;
    int last = atomic_load(&b->ck_frames);
    if (frames >= last + CHECKPOINT_STEP || frames < last) {
        pthread_mutex_lock(&b->ck_mu);
        b->ck_wanted = true;
        pthread_cond_signal(&b->ck_cond);
        pthread_mutex_unlock(&b->ck_mu);
    }
    return SQLITE_OK;
}

/* The busy handler of the restart: it holds the write lock while it waits for readers, so it
 * gives up after about 5 ms (a later commit asks again). */
static int restart_busy(void *arg, int tries)
{
    LOOM_UNUSED(arg);
    if (tries >= 20)
        return 0;
    struct timespec ts = { 0, 250 * 1000 };
    nanosleep(&ts, NULL);
    return 1;
}

static int checkpoint(struct sq_bus *b, int mode, int *log, int *done)
{
    int rc = sqlite3_wal_checkpoint_v2(b->ck_db, NULL, mode, log, done);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY)
        loom_log_warn("bus: checkpoint: %s", sqlite3_errmsg(b->ck_db));
    return rc;
}

static void *checkpointer(void *arg)
{
    struct sq_bus *b = arg;
    pthread_mutex_lock(&b->ck_mu);
    for (;;) {
        while (!b->ck_wanted && !b->ck_stop)
            pthread_cond_wait(&b->ck_cond, &b->ck_mu);
        if (b->ck_stop)
            break;
        b->ck_wanted = false;
        pthread_mutex_unlock(&b->ck_mu);
        int log = 0, done = 0;
        int rc = checkpoint(b, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
        if (rc == SQLITE_OK)
            atomic_store(&b->ck_frames, log);
        /* A reader of an older snapshot holds back a partial copy: wait for the next step. The
         * publish lock keeps this process's publishes, which follow one another closely under
         * load, from taking the write lock first every time. */
        if (rc == SQLITE_OK && done == log && log >= CHECKPOINT_FRAMES &&
            checkpoint(b, SQLITE_CHECKPOINT_PASSIVE, &log, &done) == SQLITE_OK) {
            pthread_mutex_lock(&b->mu);
            if (checkpoint(b, SQLITE_CHECKPOINT_RESTART, &log, &done) == SQLITE_OK)
                atomic_store(&b->ck_frames, 0);
            pthread_mutex_unlock(&b->mu);
        }
        pthread_mutex_lock(&b->ck_mu);
    }
    pthread_mutex_unlock(&b->ck_mu);
    return NULL;
}

static loom_err open_conn(struct sq_bus *b, bool sync_full, sqlite3 **out, struct loom_error *err)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(
        b->path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        loom_error_set(err, LOOM_EIO, "bus: cannot open %s: %s", b->path,
                       db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return LOOM_EIO;
    }
    sqlite3_busy_handler(db, busy_wait, NULL);
    /* Processes may open a new bus at the same moment. */
    loom_err e = LOOM_OK;
    rc = loom__sqlite_exec_busy(db, "PRAGMA journal_mode=WAL", 30 * LOOM_NS_PER_SEC);
    if (rc != SQLITE_OK)
        e = sq_error(db, rc, err, "cannot switch to WAL");
    if (!e)
        e = exec(db, sync_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL", err);
    /* The dedup index is keyed on event ids, often random (derived ids): its pages are read
     * all over the file. Map the file rather than copy pages in with read(2), and keep a
     * larger page cache for the rest. */
    if (!e)
        e = exec(db, "PRAGMA mmap_size=1073741824", err);
    if (!e)
        e = exec(db, "PRAGMA cache_size=-32768", err);
    if (e) {
        sqlite3_close(db);
        return e;
    }
    /* In place of SQLite's automatic checkpoint (itself a WAL hook): see checkpointer(). */
    sqlite3_wal_hook(db, wal_hook, b);
    *out = db;
    return LOOM_OK;
}

static void reset(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

static void bind_str(sqlite3_stmt *st, int i, struct loom_str s)
{
    sqlite3_bind_text(st, i, s.ptr ? s.ptr : "", (int)s.len, SQLITE_STATIC);
}

/* ---- open / close ---- */

static loom_err parse_url(struct sq_bus *b, const char *url, struct loom_error *err)
{
    struct loom_str u = loom_str_cstr(url + strlen("sqlite:"));
    struct loom_str path;
    struct loom_str query = loom_str_cut(u, '?', &path);
    if (path.len == 0)
        return loom_error_set(err, LOOM_EINVAL, "bus URL \"%s\" has no path", url);
    b->path = loom_str_dup(path);
    while (query.len) {
        struct loom_str kv;
        query = loom_str_cut(query, '&', &kv);
        struct loom_str k;
        struct loom_str v = loom_str_cut(kv, '=', &k);
        uint64_t x;
        if (loom_str_eq_cstr(k, "max_age") && !loom_str_to_duration_ns(v, &x)) {
            b->max_age_ms = x / LOOM_NS_PER_MS;
        } else if (loom_str_eq_cstr(k, "max_bytes") && !loom_str_to_size(v, &x)) {
            b->max_bytes = x;
        } else if (loom_str_eq_cstr(k, "poll") && !loom_str_to_duration_ns(v, &x) && x) {
            b->poll_ns = x;
        } else if (loom_str_eq_cstr(k, "sync") &&
                   (loom_str_eq_cstr(v, "full") || loom_str_eq_cstr(v, "normal"))) {
            b->sync_full = loom_str_eq_cstr(v, "full");
        } else {
            return loom_error_set(err, LOOM_EINVAL,
                                  "bus URL option \"%.*s\" is unknown or malformed (max_age, "
                                  "max_bytes, poll, sync=full|normal)",
                                  LOOM_STR_FMT(kv));
        }
    }
    const char *slash = strrchr(b->path, '/');
    b->dir = slash ? loom_strndup(b->path, slash == b->path ? 1 : (size_t)(slash - b->path))
                   : loom_strdup(".");
    size_t n = strlen(slash ? slash + 1 : b->path);
    b->notify_name = loom_malloc(n + 8);
    memcpy(b->notify_name, slash ? slash + 1 : b->path, n);
    memcpy(b->notify_name + n, "-notify", 8);
    return LOOM_OK;
}

static void sq_free(struct sq_bus *b)
{
    if (b->ck_started) {
        pthread_mutex_lock(&b->ck_mu);
        b->ck_stop = true;
        pthread_cond_signal(&b->ck_cond);
        pthread_mutex_unlock(&b->ck_mu);
        pthread_join(b->ck_thread, NULL);
    }
    sqlite3_close(b->ck_db);
    pthread_cond_destroy(&b->ck_cond);
    pthread_mutex_destroy(&b->ck_mu);
    sqlite3_finalize(b->ins);
    sqlite3_finalize(b->last_cum);
    sqlite3_finalize(b->dedup_get);
    sqlite3_finalize(b->dedup_put);
    sqlite3_close(b->db);
    pthread_mutex_destroy(&b->mu);
    free(b->path);
    free(b->dir);
    free(b->notify_name);
    if (b->notify_fd >= 0)
        close(b->notify_fd);
    free(b);
}

static loom_err read_instance(struct sq_bus *b, struct loom_error *err)
{
    char id[LOOM_UUID_LEN + 1], sql[160];
    loom_err e = exec(b->db, "INSERT OR IGNORE INTO bus_meta VALUES('format', '2')", err);
    if (e)
        return e;
    sqlite3_stmt *fmt;
    if ((e = prep(b->db, "SELECT v FROM bus_meta WHERE k='format'", &fmt, err)))
        return e;
    bool ok = sqlite3_step(fmt) == SQLITE_ROW &&
              strcmp((const char *)sqlite3_column_text(fmt, 0), "2") == 0;
    sqlite3_finalize(fmt);
    if (!ok)
        return loom_error_set(err, LOOM_EUNSUPPORTED,
                              "bus: %s was written by another version of loom's bus; move it "
                              "away",
                              b->path);
    loom_uuid7(id);
    snprintf(sql, sizeof(sql), "INSERT OR IGNORE INTO bus_meta VALUES('instance', '%s')", id);
    e = exec(b->db, sql, err);
    if (e)
        return e;
    sqlite3_stmt *st;
    if ((e = prep(b->db, "SELECT v FROM bus_meta WHERE k='instance'", &st, err)))
        return e;
    if (sqlite3_step(st) == SQLITE_ROW)
        snprintf(b->instance, sizeof(b->instance), "sqlite:%s",
                 (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return LOOM_OK;
}

static loom_err sq_open(struct loom_bus *bus, const char *url, struct loom_error *err)
{
    struct sq_bus *b = loom_new(struct sq_bus);
    pthread_mutex_init(&b->mu, NULL);
    pthread_mutex_init(&b->ck_mu, NULL);
    pthread_cond_init(&b->ck_cond, NULL);
    b->sync_full = true;
    b->max_age_ms = 7 * 24 * 3600 * 1000ull;
    b->max_bytes = (uint64_t)1 << 30;
    b->poll_ns = LOOM_NS_PER_SEC;
    b->notify_fd = -1;
    loom_err e = parse_url(b, url, err);
    if (e)
        goto out_free;
    char npath[4096];
    snprintf(npath, sizeof(npath), "%s-notify", b->path);
    b->notify_fd = open(npath, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (b->notify_fd < 0) {
        e = loom_error_errno(err, "bus: cannot open %s", npath);
        goto out_free;
    }
    if ((e = open_conn(b, b->sync_full, &b->db, err)))
        goto out_free;
    /* Several processes may create the schema at once: one transaction each. */
    if ((e = exec(b->db, "BEGIN IMMEDIATE", err)))
        goto out_free;
    if ((e = exec(b->db, schema, err)) || (e = read_instance(b, err)) ||
        (e = exec(b->db, "COMMIT", err))) {
        rollback(b->db);
        goto out_free;
    }
    if ((e = prep(b->db,
                  "INSERT INTO bus_log(id, subject, only_group, time_ms, cum, data) VALUES(?1, ?2, "
                  "?3, ?4, ?5, ?6)",
                  &b->ins, err)) ||
        (e = prep(b->db, "SELECT h2 FROM bus_dedup WHERE h = ?1", &b->dedup_get, err)) ||
        (e = prep(b->db, "INSERT INTO bus_dedup(h, h2, seq) VALUES(?1, ?2, ?3)", &b->dedup_put,
                  err)) ||
        (e = prep(b->db, "SELECT cum FROM bus_log ORDER BY seq DESC LIMIT 1", &b->last_cum, err)))
        goto out_free;
    if ((e = open_conn(b, false, &b->ck_db, err)))
        goto out_free;
    sqlite3_busy_handler(b->ck_db, restart_busy, NULL);
    int rc = pthread_create(&b->ck_thread, NULL, checkpointer, b);
    if (rc) {
        e = loom_error_set(err, LOOM_EIO, "bus: cannot start the checkpointer: %s", strerror(rc));
        goto out_free;
    }
    b->ck_started = true;
    pthread_setname_np(b->ck_thread, "loom-bus-ckpt");
    loom_bus_set_impl(bus, b);
    return LOOM_OK;
out_free:
    sq_free(b);
    return e;
}

static void sq_close(struct loom_bus *bus)
{
    sq_free(loom_bus_impl(bus));
}

static void sq_instance(struct loom_bus *bus, char out[LOOM_BUS_INSTANCE_MAX])
{
    struct sq_bus *b = loom_bus_impl(bus);
    memcpy(out, b->instance, LOOM_BUS_INSTANCE_MAX);
}

/* ---- retention ---- */

/* The running byte total of the last row (mu held). */
static int64_t last_cum(struct sq_bus *b)
{
    int64_t cum = 0;
    if (sqlite3_step(b->last_cum) == SQLITE_ROW)
        cum = sqlite3_column_int64(b->last_cum, 0);
    sqlite3_reset(b->last_cum);
    return cum;
}

/* The first row at or after `seq`: its seq and column `col` (1: cum, 2: time_ms). */
static bool row_at(sqlite3 *db, sqlite3_stmt *st, uint64_t seq, uint64_t *rseq, int64_t *val)
{
    LOOM_UNUSED(db);
    sqlite3_bind_int64(st, 1, (int64_t)seq);
    bool ok = sqlite3_step(st) == SQLITE_ROW;
    if (ok) {
        *rseq = (uint64_t)sqlite3_column_int64(st, 0);
        *val = sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    return ok;
}

/* The last seq whose column is <= limit (col "cum" or "time_ms"; both grow with seq), or 0. */
static uint64_t last_at_most(sqlite3 *db, const char *col, int64_t limit)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT seq, %s FROM bus_log WHERE seq >= ?1 ORDER BY seq LIMIT 1",
             col);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return 0;
    uint64_t ans = 0, lo = 0, hi = 0, rs;
    int64_t v;
    /* Two subqueries: SQLite answers min() or max() alone from the end of the B-tree, but
     * "SELECT min(seq), max(seq)" scans the whole table (0.15 s at a million events, every 5 s
     * in retention, under the publish lock). */
    sqlite3_stmt *ends;
    if (sqlite3_prepare_v2(db,
                           "SELECT (SELECT min(seq) FROM bus_log), (SELECT max(seq) FROM bus_log)",
                           -1, &ends, NULL) == SQLITE_OK &&
        sqlite3_step(ends) == SQLITE_ROW) {
        lo = (uint64_t)sqlite3_column_int64(ends, 0);
        hi = (uint64_t)sqlite3_column_int64(ends, 1);
    }
    sqlite3_finalize(ends);
    while (lo && lo <= hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (!row_at(db, st, mid, &rs, &v))
            break;
        if (v <= limit) {
            ans = rs;
            lo = rs + 1;
        } else {
            if (mid == 0)
                break;
            hi = mid - 1;
        }
    }
    sqlite3_finalize(st);
    return ans;
}

/* Delete the oldest rows past max_age or max_bytes (mu held, outside a transaction). */
static void retention(struct sq_bus *b)
{
    uint64_t cut = 0;
    if (b->max_age_ms)
        cut = last_at_most(b->db, "time_ms", now_ms() - (int64_t)b->max_age_ms);
    if (b->max_bytes) {
        int64_t last = last_cum(b);
        if (last > (int64_t)b->max_bytes)
            cut = LOOM_MAX(cut, last_at_most(b->db, "cum", last - (int64_t)b->max_bytes));
    }
    if (cut == 0)
        return;
    char sql[160];
    snprintf(sql, sizeof(sql),
             "BEGIN IMMEDIATE; DELETE FROM bus_log WHERE seq <= %llu; DELETE FROM bus_dedup "
             "WHERE seq <= %llu; COMMIT",
             (unsigned long long)cut, (unsigned long long)cut);
    struct loom_error err = { 0 };
    if (exec(b->db, sql, &err)) {
        rollback(b->db);
        loom_log_warn("bus: retention: %s", err.msg);
    }
}

/* Tell waiting consumers (in every process) that a commit is visible. The write comes after
 * the commit, so a woken reader sees it; the WAL's own writes come before the commit is
 * published in the shared index, and a reader woken by them could miss it. */
static void notify(struct sq_bus *b)
{
    if (pwrite(b->notify_fd, "", 1, 0) < 0)
        loom_log_warn("bus: cannot write the notify file: %s", strerror(errno));
}

/* ---- publishing ---- */

static int hexval(char c)
{
    return c >= 'a' ? c - 'a' + 10 : c - '0';
}

/*
 * A dedup key as two 64-bit halves: h, the rowid (63 bits), and h2, to tell a duplicate from
 * a collision. For a UUIDv7 (outbox events) h is the id's own first 63 bits, which grow with
 * time, so its inserts append at the end of the B-tree; for any other key (ids derived from
 * record ids) both halves come from SHA-256. A collision on h with another key only costs that
 * event its dedup: it is appended anyway.
 */
static void dedup_hash(struct loom_str key, int64_t *h, int64_t *h2)
{
    uint8_t d[LOOM_SHA256_LEN];
    loom_sha256(key.ptr, key.len, d);
    uint64_t a = 0, c = 0;
    for (int i = 0; i < 8; i++) {
        a = a << 8 | d[i];
        c = c << 8 | d[8 + i];
    }
    if (key.len == LOOM_UUID_LEN && key.ptr[14] == '7' && loom_uuid_valid(key)) {
        a = 0;
        for (size_t i = 0, nib = 0; i < key.len && nib < 16; i++) {
            if (key.ptr[i] == '-')
                continue;
            a = a << 4 | (uint64_t)hexval(key.ptr[i]);
            nib++;
        }
    }
    *h = (int64_t)(a & INT64_MAX);
    *h2 = (int64_t)c;
}

/* Append one event unless its dedup key is in the log (mu held, in a transaction). *cum is the
 * running byte total; *added says whether it went in. */
static loom_err append(struct sq_bus *b, struct loom_str key, struct loom_str id,
                       struct loom_str subject, const char *only_group, struct loom_str data,
                       int64_t t, int64_t *cum, bool *added, struct loom_error *err)
{
    int64_t h, h2;
    dedup_hash(key, &h, &h2);
    sqlite3_bind_int64(b->dedup_get, 1, h);
    int rc = sqlite3_step(b->dedup_get);
    bool seen = rc == SQLITE_ROW;
    bool same = seen && sqlite3_column_int64(b->dedup_get, 0) == h2;
    sqlite3_reset(b->dedup_get);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return sq_error(b->db, rc, err, "dedup");
    *added = false;
    if (same)
        return LOOM_OK; /* a duplicate */
    bind_str(b->ins, 1, id);
    bind_str(b->ins, 2, subject);
    if (only_group)
        sqlite3_bind_text(b->ins, 3, only_group, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(b->ins, 3);
    sqlite3_bind_int64(b->ins, 4, t);
    sqlite3_bind_int64(b->ins, 5, *cum + (int64_t)data.len);
    sqlite3_bind_blob(b->ins, 6, data.ptr ? data.ptr : "", (int)data.len, SQLITE_STATIC);
    rc = sqlite3_step(b->ins);
    reset(b->ins);
    if (rc != SQLITE_DONE)
        return sq_error(b->db, rc, err, "append");
    *cum += (int64_t)data.len;
    *added = true;
    if (seen) /* a 63-bit collision with another key (never in practice): no dedup for it */
        return LOOM_OK;
    sqlite3_bind_int64(b->dedup_put, 1, h);
    sqlite3_bind_int64(b->dedup_put, 2, h2);
    sqlite3_bind_int64(b->dedup_put, 3, sqlite3_last_insert_rowid(b->db));
    rc = sqlite3_step(b->dedup_put);
    reset(b->dedup_put);
    if (rc != SQLITE_DONE)
        return sq_error(b->db, rc, err, "dedup");
    return LOOM_OK;
}

static loom_err sq_publish(struct loom_bus *bus, const struct loom_bus_event *evs, size_t n,
                           struct loom_error *err)
{
    struct sq_bus *b = loom_bus_impl(bus);
    pthread_mutex_lock(&b->mu);
    loom_err e = exec(b->db, "BEGIN IMMEDIATE", err);
    if (e)
        goto out;
    int64_t cum = last_cum(b);
    int64_t t = now_ms();
    for (size_t i = 0; i < n; i++) {
        bool added;
        if ((e = append(b, evs[i].id, evs[i].id, evs[i].subject, NULL, evs[i].data, t, &cum, &added,
                        err))) {
            rollback(b->db);
            goto out;
        }
    }
    if ((e = exec(b->db, "COMMIT", err))) {
        rollback(b->db);
        goto out;
    }
    notify(b);
    uint64_t now = loom_now_ns();
    if (now - b->last_retention > 5 * LOOM_NS_PER_SEC) {
        b->last_retention = now;
        retention(b);
    }
out:
    pthread_mutex_unlock(&b->mu);
    return e;
}

/* ---- subscriptions ---- */

static void sq_sub_free(struct sq_sub *s)
{
    sqlite3_stmt *all[] = { s->probe, s->group_next, s->due, s->redeliver, s->drop_pending, s->scan,
                            s->claim, s->advance,    s->ack, s->retry,     s->park };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(all); i++)
        sqlite3_finalize(all[i]);
    sqlite3_close(s->db);
    if (s->ifd >= 0)
        close(s->ifd);
    if (s->efd >= 0)
        close(s->efd);
    free(s);
}

static loom_err join_group(struct sq_sub *s, const struct loom_bus_sub_options *o,
                           struct loom_error *err)
{
    loom_err e = exec(s->db, "BEGIN IMMEDIATE", err);
    if (e)
        return e;
    sqlite3_stmt *st = NULL;
    if ((e = prep(s->db, "SELECT filter FROM bus_groups WHERE name=?1", &st, err)))
        goto out;
    sqlite3_bind_text(st, 1, o->group, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        if (strcmp((const char *)sqlite3_column_text(st, 0), o->filter) != 0)
            e = loom_error_set(err, LOOM_ECONFLICT, "group \"%s\" exists with filter \"%s\"",
                               o->group, (const char *)sqlite3_column_text(st, 0));
        goto out;
    }
    sqlite3_finalize(st);
    st = NULL;
    char sql[256];
    snprintf(sql, sizeof(sql),
             "INSERT INTO bus_groups(name, filter, next_seq, created_ms) VALUES(?1, ?2, %s, "
             "?3)",
             o->start == LOOM_BUS_START_NEW ? "(SELECT ifnull(max(seq), 0) + 1 FROM bus_log)"
                                            : "0");
    if ((e = prep(s->db, sql, &st, err)))
        goto out;
    sqlite3_bind_text(st, 1, o->group, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, o->filter, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now_ms());
    if ((rc = sqlite3_step(st)) != SQLITE_DONE)
        e = sq_error(s->db, rc, err, "create group");
out:
    sqlite3_finalize(st);
    if (e)
        rollback(s->db);
    else
        e = exec(s->db, "COMMIT", err);
    if (e)
        rollback(s->db);
    return e;
}

static loom_err sq_sub_open(struct loom_bus_sub *sub, struct loom_error *err)
{
    struct sq_bus *b = loom_bus_impl(loom_bus_sub_bus(sub));
    const struct loom_bus_sub_options *o = loom_bus_sub_options(sub);
    struct sq_sub *s = loom_new(struct sq_sub);
    s->ifd = s->efd = -1;
    loom_err e = open_conn(b, false, &s->db, err);
    if (e)
        goto out_free;
    if ((e = join_group(s, o, err)))
        goto out_free;
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    s->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (s->efd < 0 || s->ifd < 0) {
        e = loom_error_errno(err, "bus: eventfd/inotify");
        goto out_free;
    }
    if (inotify_add_watch(s->ifd, b->dir, IN_MODIFY) < 0) {
        e = loom_error_errno(err, "bus: inotify watch on %s", b->dir);
        goto out_free;
    }
    if ((e = prep(s->db,
                  "SELECT (SELECT ifnull(max(seq), 0) FROM bus_log),"
                  " (SELECT next_seq FROM bus_groups WHERE name=?1),"
                  " (SELECT min(visible_ms) FROM bus_pending WHERE grp=?1)",
                  &s->probe, err)) ||
        (e = prep(s->db, "SELECT next_seq FROM bus_groups WHERE name=?1", &s->group_next, err)) ||
        (e = prep(s->db,
                  "SELECT p.seq, p.deliveries, l.seq IS NULL, l.id, l.subject, l.time_ms, "
                  "l.data FROM bus_pending p LEFT JOIN bus_log l ON l.seq = p.seq "
                  "WHERE p.grp=?1 AND p.visible_ms <= ?2 ORDER BY p.seq LIMIT ?3",
                  &s->due, err)) ||
        (e = prep(s->db,
                  "UPDATE bus_pending SET deliveries = deliveries + 1, visible_ms = ?3 "
                  "WHERE grp=?1 AND seq=?2",
                  &s->redeliver, err)) ||
        (e = prep(s->db, "DELETE FROM bus_pending WHERE grp=?1 AND seq=?2", &s->drop_pending,
                  err)) ||
        (e = prep(s->db,
                  "SELECT seq, id, subject, only_group, time_ms, data FROM bus_log "
                  "WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
                  &s->scan, err)) ||
        (e = prep(s->db,
                  "INSERT INTO bus_pending(grp, seq, deliveries, visible_ms) VALUES(?1, ?2, 1, "
                  "?3) ON CONFLICT(grp, seq) DO UPDATE SET deliveries = deliveries + 1, "
                  "visible_ms = excluded.visible_ms",
                  &s->claim, err)) ||
        (e = prep(s->db, "UPDATE bus_groups SET next_seq=?2 WHERE name=?1", &s->advance, err)) ||
        (e = prep(s->db, "DELETE FROM bus_pending WHERE grp=?1 AND seq=?2", &s->ack, err)) ||
        (e = prep(s->db, "UPDATE bus_pending SET visible_ms=?3 WHERE grp=?1 AND seq=?2", &s->retry,
                  err)) ||
        (e = prep(s->db,
                  "INSERT INTO bus_parked(grp, seq, id, subject, time_ms, deliveries, reason, "
                  "parked_ms, data) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                  &s->park, err)))
        goto out_free;
    loom_bus_sub_set_impl(sub, s);
    return LOOM_OK;
out_free:
    sq_sub_free(s);
    return e;
}

static void sq_sub_close(struct loom_bus_sub *sub)
{
    sq_sub_free(loom_bus_sub_impl(sub));
}

static void sq_wake(struct loom_bus_sub *sub)
{
    struct sq_sub *s = loom_bus_sub_impl(sub);
    uint64_t one = 1;
    if (s && write(s->efd, &one, sizeof(one)) < 0) {
        /* the counter is saturated: a wake-up is pending anyway */
    }
}

/* Drain the wake-up fds; true if something relevant happened. */
static bool drain(struct sq_sub *s, const char *notify_name)
{
    bool any = false;
    uint64_t v;
    if (read(s->efd, &v, sizeof(v)) == (ssize_t)sizeof(v))
        any = true;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t r = read(s->ifd, buf, sizeof(buf));
        if (r <= 0)
            break;
        for (char *p = buf; p < buf + r;) {
            struct inotify_event *ev = (struct inotify_event *)(void *)p;
            if (ev->len && strcmp(ev->name, notify_name) == 0)
                any = true;
            if (ev->mask & IN_Q_OVERFLOW)
                any = true;
            p += sizeof(*ev) + ev->len;
        }
    }
    return any;
}

/* Whether there is work (new rows or due retries); *due_ms gets the next retry time. */
static loom_err probe(struct loom_bus_sub *sub, struct sq_sub *s, bool *work, int64_t *due_ms,
                      struct loom_error *err)
{
    const struct loom_bus_sub_options *o = loom_bus_sub_options(sub);
    sqlite3_bind_text(s->probe, 1, o->group, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s->probe);
    if (rc != SQLITE_ROW) {
        reset(s->probe);
        return sq_error(s->db, rc, err, "probe");
    }
    int64_t head = sqlite3_column_int64(s->probe, 0);
    bool exists = sqlite3_column_type(s->probe, 1) != SQLITE_NULL;
    int64_t next = sqlite3_column_int64(s->probe, 1);
    bool has_due = sqlite3_column_type(s->probe, 2) != SQLITE_NULL;
    int64_t due = sqlite3_column_int64(s->probe, 2);
    reset(s->probe);
    if (!exists) {
        /* The group was deleted under us: create it again. */
        loom_err e = join_group(s, o, err);
        if (e)
            return e;
        *work = true;
        return LOOM_OK;
    }
    *work = head >= next || (has_due && due <= now_ms());
    *due_ms = has_due ? due : INT64_MAX;
    return LOOM_OK;
}

static struct sq_msg *make_msg(sqlite3_stmt *st, int c_id, int c_subject, int c_time, int c_data)
{
    const char *id = (const char *)sqlite3_column_text(st, c_id);
    size_t id_len = (size_t)sqlite3_column_bytes(st, c_id);
    const char *subject = (const char *)sqlite3_column_text(st, c_subject);
    size_t subject_len = (size_t)sqlite3_column_bytes(st, c_subject);
    const void *data = sqlite3_column_blob(st, c_data);
    size_t data_len = (size_t)sqlite3_column_bytes(st, c_data);
    struct sq_msg *m = loom_malloc(sizeof(*m) + id_len + subject_len + data_len + 3);
    memset(&m->m, 0, sizeof(m->m));
    char *p = m->bytes;
    memcpy(p, id, id_len);
    p[id_len] = '\0';
    m->m.id = loom_str_make(p, id_len);
    p += id_len + 1;
    memcpy(p, subject, subject_len);
    p[subject_len] = '\0';
    m->m.subject = loom_str_make(p, subject_len);
    p += subject_len + 1;
    if (data_len)
        memcpy(p, data, data_len);
    p[data_len] = '\0';
    m->m.data = loom_str_make(p, data_len);
    m->m.time_ns = sqlite3_column_int64(st, c_time) * (int64_t)LOOM_NS_PER_MS;
    return m;
}

static void push(struct loom_bus_msg ***tail, struct sq_msg *m, size_t *n)
{
    **tail = &m->m;
    *tail = &m->m.next;
    (*n)++;
}

static loom_err claim(struct loom_bus_sub *sub, struct sq_sub *s, size_t max,
                      struct loom_bus_msg **out, size_t *n, struct loom_error *err)
{
    const struct loom_bus_sub_options *o = loom_bus_sub_options(sub);
    struct loom_bus_msg *head = NULL, **tail = &head;
    size_t got = 0;
    int rc;
    loom_err e = exec(s->db, "BEGIN IMMEDIATE", err);
    if (e)
        return e;
    int64_t now = now_ms();
    int64_t lease = now + (int64_t)(o->ack_wait / LOOM_NS_PER_MS);

    /* Due redeliveries and retries first. */
    sqlite3_bind_text(s->due, 1, o->group, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s->due, 2, now);
    sqlite3_bind_int64(s->due, 3, (int64_t)max);
    while ((rc = sqlite3_step(s->due)) == SQLITE_ROW) {
        int64_t seq = sqlite3_column_int64(s->due, 0);
        int64_t deliveries = sqlite3_column_int64(s->due, 1);
        bool gone = sqlite3_column_int(s->due, 2) != 0;
        sqlite3_stmt *w = gone ? s->drop_pending : s->redeliver;
        sqlite3_bind_text(w, 1, o->group, -1, SQLITE_STATIC);
        sqlite3_bind_int64(w, 2, seq);
        if (!gone)
            sqlite3_bind_int64(w, 3, lease);
        int wrc = sqlite3_step(w);
        reset(w);
        if (wrc != SQLITE_DONE) {
            rc = wrc;
            break;
        }
        if (gone) /* deleted by retention */
            continue;
        struct sq_msg *m = make_msg(s->due, 3, 4, 5, 6);
        m->m.seq = (uint64_t)seq;
        m->m.attempt = (uint32_t)(deliveries + 1);
        push(&tail, m, &got);
    }
    reset(s->due);
    if (rc != SQLITE_DONE)
        goto fail;

    /* Then new rows, past next_seq, that match the filter. */
    sqlite3_bind_text(s->group_next, 1, o->group, -1, SQLITE_STATIC);
    rc = sqlite3_step(s->group_next);
    int64_t next = rc == SQLITE_ROW ? sqlite3_column_int64(s->group_next, 0) : -1;
    reset(s->group_next);
    if (next < 0) {
        rc = SQLITE_DONE;
        goto commit;
    }
    int64_t pos = next;
    size_t want = max - got;
    if (want) {
        sqlite3_bind_int64(s->scan, 1, next);
        sqlite3_bind_int64(s->scan, 2, (int64_t)LOOM_MAX(want * 4, (size_t)256));
        struct loom_str filter = loom_str_cstr(o->filter);
        struct loom_str group = loom_str_cstr(o->group);
        while (want && (rc = sqlite3_step(s->scan)) == SQLITE_ROW) {
            int64_t seq = sqlite3_column_int64(s->scan, 0);
            pos = seq + 1;
            struct loom_str subject = loom_str_make((const char *)sqlite3_column_text(s->scan, 2),
                                                    (size_t)sqlite3_column_bytes(s->scan, 2));
            if (!loom_bus_subject_match(filter, subject))
                continue;
            if (sqlite3_column_type(s->scan, 3) != SQLITE_NULL &&
                !loom_str_eq(group, loom_str_make((const char *)sqlite3_column_text(s->scan, 3),
                                                  (size_t)sqlite3_column_bytes(s->scan, 3))))
                continue;
            sqlite3_bind_text(s->claim, 1, o->group, -1, SQLITE_STATIC);
            sqlite3_bind_int64(s->claim, 2, seq);
            sqlite3_bind_int64(s->claim, 3, lease);
            int wrc = sqlite3_step(s->claim);
            reset(s->claim);
            if (wrc != SQLITE_DONE) {
                rc = wrc;
                break;
            }
            struct sq_msg *m = make_msg(s->scan, 1, 2, 4, 5);
            m->m.seq = (uint64_t)seq;
            m->m.attempt = 1;
            push(&tail, m, &got);
            want--;
        }
        reset(s->scan);
        if (rc != SQLITE_DONE && rc != SQLITE_ROW)
            goto fail;
        rc = SQLITE_DONE;
    }
    if (pos != next) {
        sqlite3_bind_text(s->advance, 1, o->group, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s->advance, 2, pos);
        rc = sqlite3_step(s->advance);
        reset(s->advance);
        if (rc != SQLITE_DONE)
            goto fail;
    }
commit:
    if ((e = exec(s->db, "COMMIT", err))) {
        rollback(s->db);
        goto out_free;
    }
    *tail = NULL;
    *out = head;
    *n = got;
    return LOOM_OK;
fail:
    e = sq_error(s->db, rc, err, "claim");
    rollback(s->db);
out_free:
    *tail = NULL;
    for (struct loom_bus_msg *m = head, *next_m; m; m = next_m) {
        next_m = m->next;
        free(LOOM_CONTAINER_OF(m, struct sq_msg, m));
    }
    return e;
}

static loom_err sq_fetch(struct loom_bus_sub *sub, size_t max, uint64_t wait_ns,
                         struct loom_bus_msg **out, size_t *n, struct loom_error *err)
{
    struct sq_bus *b = loom_bus_impl(loom_bus_sub_bus(sub));
    struct sq_sub *s = loom_bus_sub_impl(sub);
    *n = 0;
    bool work = false;
    int64_t due = INT64_MAX;
    drain(s, b->notify_name);
    loom_err e = probe(sub, s, &work, &due, err);
    if (e)
        return e;
    if (!work) {
        uint64_t wait = LOOM_MIN(wait_ns, b->poll_ns);
        int64_t now = now_ms();
        if (due != INT64_MAX)
            wait = LOOM_MIN(wait, (uint64_t)LOOM_MAX(due - now, 0) * LOOM_NS_PER_MS + 1000);
        struct pollfd pfd[2] = { { .fd = s->ifd, .events = POLLIN },
                                 { .fd = s->efd, .events = POLLIN } };
        int ms = (int)((wait + LOOM_NS_PER_MS - 1) / LOOM_NS_PER_MS);
        if (poll(pfd, 2, ms) < 0 && errno != EINTR)
            return loom_error_errno(err, "bus: poll");
        drain(s, b->notify_name); /* woken or timed out (the safety poll): probe again */
        if ((e = probe(sub, s, &work, &due, err)))
            return e;
        if (!work)
            return LOOM_OK;
    }
    return claim(sub, s, max, out, n, err);
}

static void sq_release(struct loom_bus_sub *sub, struct loom_bus_msg *msg)
{
    LOOM_UNUSED(sub);
    free(LOOM_CONTAINER_OF(msg, struct sq_msg, m));
}

static void sq_settle(struct loom_bus_sub *sub, struct loom_bus_msg *const *msgs, size_t n)
{
    struct sq_sub *s = loom_bus_sub_impl(sub);
    const struct loom_bus_sub_options *o = loom_bus_sub_options(sub);
    struct loom_error err = { 0 };
    loom_err e = exec(s->db, "BEGIN IMMEDIATE", &err);
    int64_t now = now_ms();
    for (size_t i = 0; i < n && !e; i++) {
        const struct loom_bus_msg *m = msgs[i];
        sqlite3_stmt *st;
        int rc;
        if (m->verdict == LOOM_BUS_PARK) {
            st = s->park;
            sqlite3_bind_text(st, 1, o->group, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 2, (int64_t)m->seq);
            bind_str(st, 3, m->id);
            bind_str(st, 4, m->subject);
            sqlite3_bind_int64(st, 5, m->time_ns / (int64_t)LOOM_NS_PER_MS);
            sqlite3_bind_int64(st, 6, m->attempt);
            sqlite3_bind_text(st, 7, m->reason, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 8, now);
            sqlite3_bind_blob(st, 9, m->data.ptr, (int)m->data.len, SQLITE_STATIC);
            rc = sqlite3_step(st);
            reset(st);
            if (rc != SQLITE_DONE) {
                e = sq_error(s->db, rc, &err, "park");
                break;
            }
        }
        if (m->verdict == LOOM_BUS_RETRY) {
            st = s->retry;
            sqlite3_bind_int64(st, 3, now + (int64_t)(m->retry_delay / LOOM_NS_PER_MS));
        } else {
            st = s->ack;
        }
        sqlite3_bind_text(st, 1, o->group, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (int64_t)m->seq);
        rc = sqlite3_step(st);
        reset(st);
        if (rc != SQLITE_DONE)
            e = sq_error(s->db, rc, &err, "settle");
    }
    if (!e)
        e = exec(s->db, "COMMIT", &err);
    if (e) {
        rollback(s->db);
        /* Nothing is lost: the deliveries come back after ack_wait. */
        LOOM_LOG_KV(LOOM_LOG_WARN, "bus: cannot record verdicts", LOOM_KV_CSTR("error", err.msg),
                    LOOM_KV_UINT("events", n));
    }
    for (size_t i = 0; i < n; i++)
        free(LOOM_CONTAINER_OF(msgs[i], struct sq_msg, m));
}

/* ---- groups and the dead letter ---- */

static loom_err group_exists(struct sq_bus *b, const char *group, int64_t *next,
                             struct loom_error *err)
{
    sqlite3_stmt *st;
    loom_err e = prep(b->db, "SELECT next_seq FROM bus_groups WHERE name=?1", &st, err);
    if (e)
        return e;
    sqlite3_bind_text(st, 1, group, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW)
        *next = sqlite3_column_int64(st, 0);
    else
        e = loom_error_set(err, LOOM_ENOTFOUND, "no group \"%s\"", group);
    sqlite3_finalize(st);
    return e;
}

static int64_t scalar(sqlite3 *db, const char *sql, const char *group)
{
    sqlite3_stmt *st;
    int64_t v = 0;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return 0;
    if (group)
        sqlite3_bind_text(st, 1, group, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static loom_err sq_group_list(struct loom_bus *bus, loom_bus_group_fn fn, void *arg,
                              struct loom_error *err)
{
    /* The names are collected first and fn runs unlocked: it may well call back into the
     * bus (loom_bus_group_info), which takes the same lock. */
    struct sq_bus *b = loom_bus_impl(bus);
    char **names = NULL;
    size_t n = 0, cap = 0;
    pthread_mutex_lock(&b->mu);
    sqlite3_stmt *st;
    loom_err e = prep(b->db, "SELECT name FROM bus_groups ORDER BY name", &st, err);
    if (!e) {
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            if (n == cap) {
                cap = cap ? 2 * cap : 16;
                names = loom_realloc(names, cap * sizeof(*names));
            }
            names[n++] = loom_strdup((const char *)sqlite3_column_text(st, 0));
        }
        if (rc != SQLITE_DONE)
            e = sq_error(b->db, rc, err, "list groups");
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&b->mu);
    for (size_t i = 0; i < n; i++) {
        if (!e)
            e = fn(names[i], arg);
        free(names[i]);
    }
    free(names);
    return e;
}

static loom_err sq_group_info(struct loom_bus *bus, const char *group,
                              struct loom_bus_group_info *out, struct loom_error *err)
{
    struct sq_bus *b = loom_bus_impl(bus);
    pthread_mutex_lock(&b->mu);
    int64_t next = 0;
    loom_err e = group_exists(b, group, &next, err);
    if (!e) {
        int64_t head = scalar(b->db, "SELECT ifnull(max(seq), 0) FROM bus_log", NULL);
        int64_t first = scalar(b->db, "SELECT ifnull(min(seq), 0) FROM bus_log", NULL);
        out->head = (uint64_t)head;
        out->next = (uint64_t)LOOM_MAX(next, first);
        out->pending =
            (uint64_t)scalar(b->db, "SELECT count(*) FROM bus_pending WHERE grp=?1", group);
        out->parked =
            (uint64_t)scalar(b->db, "SELECT count(*) FROM bus_parked WHERE grp=?1", group);
        out->lag = out->pending + (out->head >= out->next ? out->head - out->next + 1 : 0);
    }
    pthread_mutex_unlock(&b->mu);
    return e;
}

static loom_err sq_group_reset(struct loom_bus *bus, const char *group, uint64_t seq,
                               int64_t time_ns, struct loom_error *err)
{
    struct sq_bus *b = loom_bus_impl(bus);
    pthread_mutex_lock(&b->mu);
    loom_err e = exec(b->db, "BEGIN IMMEDIATE", err);
    if (e)
        goto out;
    int64_t next = 0;
    if ((e = group_exists(b, group, &next, err)))
        goto out_rollback;
    if (seq == 0) {
        int64_t limit = time_ns / (int64_t)LOOM_NS_PER_MS - 1;
        seq = last_at_most(b->db, "time_ms", limit) + 1;
        if (seq == 1) /* nothing before the time: the first row */
            seq = (uint64_t)scalar(b->db, "SELECT ifnull(min(seq), 1) FROM bus_log", NULL);
    }
    char sql[160];
    snprintf(sql, sizeof(sql), "UPDATE bus_groups SET next_seq=%llu WHERE name=?1",
             (unsigned long long)seq);
    sqlite3_stmt *st;
    if ((e = prep(b->db, sql, &st, err)))
        goto out_rollback;
    sqlite3_bind_text(st, 1, group, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        e = sq_error(b->db, rc, err, "reset");
        goto out_rollback;
    }
    if ((e = prep(b->db, "DELETE FROM bus_pending WHERE grp=?1", &st, err)))
        goto out_rollback;
    sqlite3_bind_text(st, 1, group, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        e = sq_error(b->db, rc, err, "reset");
        goto out_rollback;
    }
    e = exec(b->db, "COMMIT", err);
    if (!e)
        notify(b);
out_rollback:
    if (e)
        rollback(b->db);
out:
    pthread_mutex_unlock(&b->mu);
    return e;
}

static loom_err sq_parked_list(struct loom_bus *bus, const char *group, uint64_t after,
                               size_t limit, loom_bus_parked_fn fn, void *arg,
                               struct loom_error *err)
{
    struct sq_bus *b = loom_bus_impl(bus);
    pthread_mutex_lock(&b->mu);
    sqlite3_stmt *st;
    loom_err e = prep(b->db,
                      "SELECT pseq, seq, id, subject, data, reason, deliveries, parked_ms FROM "
                      "bus_parked WHERE grp=?1 AND pseq > ?2 ORDER BY pseq LIMIT ?3",
                      &st, err);
    if (e)
        goto out;
    sqlite3_bind_text(st, 1, group, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (int64_t)after);
    sqlite3_bind_int64(st, 3, (int64_t)LOOM_MIN(limit, (size_t)INT64_MAX));
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct loom_bus_parked p = {
            .pseq = (uint64_t)sqlite3_column_int64(st, 0),
            .seq = (uint64_t)sqlite3_column_int64(st, 1),
            .id = loom_str_make((const char *)sqlite3_column_text(st, 2),
                                (size_t)sqlite3_column_bytes(st, 2)),
            .subject = loom_str_make((const char *)sqlite3_column_text(st, 3),
                                     (size_t)sqlite3_column_bytes(st, 3)),
            .data = loom_str_make((const char *)sqlite3_column_blob(st, 4),
                                  (size_t)sqlite3_column_bytes(st, 4)),
            .reason = loom_str_make((const char *)sqlite3_column_text(st, 5),
                                    (size_t)sqlite3_column_bytes(st, 5)),
            .deliveries = (uint32_t)sqlite3_column_int64(st, 6),
            .parked_ns = sqlite3_column_int64(st, 7) * (int64_t)LOOM_NS_PER_MS,
        };
        if ((e = fn(&p, arg)))
            break;
    }
    if (!e && rc != SQLITE_DONE)
        e = sq_error(b->db, rc, err, "list parked");
    sqlite3_finalize(st);
out:
    pthread_mutex_unlock(&b->mu);
    return e;
}

static loom_err sq_parked_replay(struct loom_bus *bus, const char *group, uint64_t pseq,
                                 size_t *count, struct loom_error *err)
{
    struct sq_bus *b = loom_bus_impl(bus);
    pthread_mutex_lock(&b->mu);
    sqlite3_stmt *sel = NULL, *del = NULL;
    size_t done = 0;
    int rc = SQLITE_DONE;
    loom_err e = exec(b->db, "BEGIN IMMEDIATE", err);
    if (e)
        goto out;
    if ((e = prep(b->db,
                  "SELECT pseq, id, subject, data FROM bus_parked WHERE grp=?1 AND (?2 = 0 OR "
                  "pseq = ?2) ORDER BY pseq",
                  &sel, err)) ||
        (e = prep(b->db, "DELETE FROM bus_parked WHERE pseq=?1", &del, err)))
        goto out_rollback;
    sqlite3_bind_text(sel, 1, group, -1, SQLITE_STATIC);
    sqlite3_bind_int64(sel, 2, (int64_t)pseq);
    int64_t now = now_ms(), cum = last_cum(b);
    while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
        int64_t p = sqlite3_column_int64(sel, 0);
        /* Back in the log for this group only, with a dedup key of its own (a replay is not
         * a duplicate of the original). */
        char key[LOOM_BUS_GROUP_MAX + 48];
        snprintf(key, sizeof(key), "replay:%s:%lld", group, (long long)p);
        struct loom_str id = loom_str_make((const char *)sqlite3_column_text(sel, 1),
                                           (size_t)sqlite3_column_bytes(sel, 1));
        struct loom_str subject = loom_str_make((const char *)sqlite3_column_text(sel, 2),
                                                (size_t)sqlite3_column_bytes(sel, 2));
        struct loom_str data = loom_str_make((const char *)sqlite3_column_blob(sel, 3),
                                             (size_t)sqlite3_column_bytes(sel, 3));
        bool added;
        if ((e = append(b, loom_str_cstr(key), id, subject, group, data, now, &cum, &added, err)))
            goto out_rollback;
        sqlite3_bind_int64(del, 1, p);
        int wrc = sqlite3_step(del);
        reset(del);
        if (wrc != SQLITE_DONE) {
            rc = wrc;
            break;
        }
        done++;
    }
    if (rc != SQLITE_DONE) {
        e = sq_error(b->db, rc, err, "replay parked");
        goto out_rollback;
    }
    if (pseq && done == 0) {
        e = loom_error_set(err, LOOM_ENOTFOUND, "group \"%s\" has no parked event %llu", group,
                           (unsigned long long)pseq);
        goto out_rollback;
    }
    e = exec(b->db, "COMMIT", err);
    if (!e)
        notify(b);
out_rollback:
    if (e)
        rollback(b->db);
out:
    sqlite3_finalize(sel);
    sqlite3_finalize(del);
    pthread_mutex_unlock(&b->mu);
    if (!e)
        *count = done;
    return e;
}

const struct loom_bus_type loom_bus_sqlite = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .instance = sq_instance,
    .publish = sq_publish,
    .sub_open = sq_sub_open,
    .sub_close = sq_sub_close,
    .fetch = sq_fetch,
    .settle = sq_settle,
    .release = sq_release,
    .wake = sq_wake,
    .group_list = sq_group_list,
    .group_info = sq_group_info,
    .group_reset = sq_group_reset,
    .parked_list = sq_parked_list,
    .parked_replay = sq_parked_replay,
};
