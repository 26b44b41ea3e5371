/* SPDX-License-Identifier: Apache-2.0 */
/*
 * API clients: ids, secrets and their argon2id hashes, scopes, optional quotas, and their rows
 * in the store; plus the bootstrap admin of a fresh install. A secret is 32 bytes from the kernel's
 * CSPRNG, shown once and stored only as an argon2id hash (RFC 9106) with the parameters OWASP
 * recommends for it: 19 MiB of memory, 2 passes, 1 lane, a 16-byte random salt and a 32-byte
 * tag, all in the encoded string, so they can be raised later without breaking stored hashes.
 * argon2's verify compares in constant time. Writes that could lock everyone out (deleting,
 * disabling or taking the admin scope from the last enabled admin client) are refused in the
 * same transaction that would have made them.
 */
#include "identity/identity.h"

#include <loom/id.h>
#include <loom/log.h>

#include <argon2.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* argon2id parameters (OWASP's first recommendation for argon2id). */
#define ARGON2_T_COST   2
#define ARGON2_M_COST   19456 /* KiB */
#define ARGON2_LANES    1
#define ARGON2_SALT_LEN 16
#define ARGON2_HASH_LEN 32

#define BOOTSTRAP_FILE "identity-bootstrap-secret"
#define BOOTSTRAP_MIN  16 /* characters of a --identity.bootstrap-secret */

const char *const idn_scope_names[IDN_NSCOPES] = {
    "models:read", "models:write", "infer", "train", "ingest", "admin",
};

bool idn_scopes_parse(struct loom_str s, unsigned *out)
{
    unsigned bits = 0;
    if (s.len && (s.ptr[0] == ' ' || s.ptr[s.len - 1] == ' '))
        return false;
    while (s.len) {
        struct loom_str tok;
        s = loom_str_cut(s, ' ', &tok);
        int found = -1;
        for (int i = 0; i < IDN_NSCOPES; i++)
            if (loom_str_eq_cstr(tok, idn_scope_names[i]))
                found = i;
        if (found < 0)
            return false;
        bits |= 1u << found;
        if (s.ptr && s.len == 0)
            return false; /* a trailing separator */
    }
    *out = bits;
    return true;
}

void idn_scopes_format(unsigned bits, struct loom_buf *out)
{
    bool first = true;
    for (int i = 0; i < IDN_NSCOPES; i++) {
        if (!(bits & (1u << i)))
            continue;
        if (!first)
            loom_buf_putc(out, ' ');
        loom_buf_append_cstr(out, idn_scope_names[i]);
        first = false;
    }
}

/* ---- ids, names, secrets ---- */

bool idn_valid_id(struct loom_str s)
{
    if (s.len == 0 || s.len > IDN_ID_MAX)
        return false;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.ptr[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return true;
}

static bool is_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

bool idn_valid_name(struct loom_str s)
{
    if (s.len == 0 || s.len > IDN_NAME_MAX || !is_alnum(s.ptr[0]))
        return false;
    for (size_t i = 1; i < s.len; i++)
        if (!is_alnum(s.ptr[i]) && s.ptr[i] != '.' && s.ptr[i] != '_' && s.ptr[i] != '-')
            return false;
    return true;
}

void idn_new_id(char out[IDN_ID_MAX + 1])
{
    /* 48 bits of milliseconds, then 80 random bits: ids sort by creation, like UUIDv7. */
    static const char b32[] = "0123456789abcdefghjkmnpqrstvwxyz";
    uint8_t v[16];
    uint64_t ms = (uint64_t)(loom_wall_ns() / (int64_t)LOOM_NS_PER_MS);
    for (int i = 0; i < 6; i++)
        v[i] = (uint8_t)(ms >> (40 - 8 * i));
    loom_random_bytes(v + 6, 10);
    memcpy(out, "cl_", 3);
    /* 128 bits as 26 base32 digits, most significant first (the top digit holds 3 bits). */
    for (int d = 0; d < 26; d++) {
        int bit = 128 - 5 * (26 - d); /* first bit of this digit, may be negative */
        unsigned x = 0;
        for (int b = 0; b < 5; b++) {
            int pos = bit + b;
            x <<= 1;
            if (pos >= 0)
                x |= (v[pos / 8] >> (7 - pos % 8)) & 1u;
        }
        out[3 + d] = b32[x];
    }
    out[29] = '\0';
}

void idn_new_secret(char out[IDN_SECRET_LEN + 1])
{
    uint8_t raw[32];
    loom_random_bytes(raw, sizeof(raw));
    struct loom_buf b;
    loom_buf_init(&b, 0);
    loom_buf_append_cstr(&b, "lsk_");
    loom_base64url_encode(&b, raw, sizeof(raw));
    memcpy(out, b.data, IDN_SECRET_LEN);
    out[IDN_SECRET_LEN] = '\0';
    OPENSSL_cleanse(raw, sizeof(raw));
    OPENSSL_cleanse(b.data, b.len);
    loom_buf_release(&b);
}

char *idn_hash_secret(struct loom_str secret)
{
    uint8_t salt[ARGON2_SALT_LEN];
    loom_random_bytes(salt, sizeof(salt));
    size_t n = argon2_encodedlen(ARGON2_T_COST, ARGON2_M_COST, ARGON2_LANES, ARGON2_SALT_LEN,
                                 ARGON2_HASH_LEN, Argon2_id);
    char *out = loom_malloc(n);
    int rc = argon2id_hash_encoded(ARGON2_T_COST, ARGON2_M_COST, ARGON2_LANES, secret.ptr,
                                   secret.len, salt, sizeof(salt), ARGON2_HASH_LEN, out, n);
    if (rc != ARGON2_OK) {
        /* Only memory exhaustion can make this fail with our fixed parameters. */
        loom_log_error("argon2id_hash_encoded failed: %s", argon2_error_message(rc));
        abort();
    }
    return out;
}

bool idn_verify_secret(const char *encoded, struct loom_str secret)
{
    return argon2id_verify(encoded, secret.ptr, secret.len) == ARGON2_OK;
}

/* ---- JSON ---- */

static void write_time(struct loom_json_writer *w, const char *key, int64_t ms)
{
    char t[32];
    loom_time_rfc3339(ms * (int64_t)LOOM_NS_PER_MS, t);
    loom_json_write_key(w, key);
    loom_json_write_string(w, t);
}

void idn_client_json(const struct idn_client *c, struct loom_json_writer *w)
{
    loom_json_write_key(w, "id");
    loom_json_write_string(w, c->id);
    loom_json_write_key(w, "name");
    loom_json_write_string(w, c->name);
    loom_json_write_key(w, "scopes");
    loom_json_write_array_begin(w);
    for (int i = 0; i < IDN_NSCOPES; i++)
        if (c->scopes & (1u << i))
            loom_json_write_string(w, idn_scope_names[i]);
    loom_json_write_array_end(w);
    loom_json_write_key(w, "quota");
    if (c->has_quota) {
        loom_json_write_object_begin(w);
        loom_json_write_key(w, "requests_per_second");
        loom_json_write_double(w, c->quota.requests_per_second);
        loom_json_write_key(w, "burst");
        loom_json_write_i64(w, c->quota.burst);
        loom_json_write_object_end(w);
    } else {
        loom_json_write_null(w);
    }
    loom_json_write_key(w, "disabled");
    loom_json_write_bool(w, c->disabled);
    write_time(w, "created_at", c->created_ms);
    write_time(w, "updated_at", c->updated_ms);
    write_time(w, "secret_rotated_at", c->secret_rotated_ms);
}

/* ---- rows ---- */

/* The rps and burst columns of a client: NULL for a client without a quota. */
static struct loom_sql_value quota_rps(const struct idn_client *c)
{
    return c->has_quota ? LOOM_SQL_REAL_V(c->quota.requests_per_second) : LOOM_SQL_NULL_V;
}

static struct loom_sql_value quota_burst(const struct idn_client *c)
{
    return c->has_quota ? LOOM_SQL_INT_V(c->quota.burst) : LOOM_SQL_NULL_V;
}

#define CLIENT_COLS                                                                       \
    "id, name, scopes, rps, burst, disabled, created_ms, updated_ms, secret_rotated_ms, " \
    "secret_hash"

static bool col_text(const struct loom_sql_row *row, const char *name, char *out, size_t cap)
{
    const struct loom_sql_value *v = loom_sql_col(row, name);
    if (!v || v->type != LOOM_SQL_TEXT || v->s.len >= cap)
        return false;
    memcpy(out, v->s.ptr, v->s.len);
    out[v->s.len] = '\0';
    return true;
}

static bool col_int(const struct loom_sql_row *row, const char *name, int64_t *out)
{
    const struct loom_sql_value *v = loom_sql_col(row, name);
    if (!v || v->type != LOOM_SQL_INT)
        return false;
    *out = v->i;
    return true;
}

struct client_rows {
    struct idn_client *v;
    size_t n, cap;
    char **hash; /* the first row's secret hash, when wanted */
};

static loom_err collect_client(const struct loom_sql_row *row, void *arg)
{
    struct client_rows *r = arg;
    if (r->n == r->cap)
        return LOOM_OK;
    struct idn_client *c = &r->v[r->n];
    memset(c, 0, sizeof(*c));
    int64_t disabled;
    const struct loom_sql_value *scopes = loom_sql_col(row, "scopes"),
                                *rps = loom_sql_col(row, "rps"),
                                *burst = loom_sql_col(row, "burst");
    if (!col_text(row, "id", c->id, sizeof(c->id)) ||
        !col_text(row, "name", c->name, sizeof(c->name)) || !scopes ||
        scopes->type != LOOM_SQL_TEXT || !idn_scopes_parse(scopes->s, &c->scopes) || !rps ||
        !burst || !col_int(row, "disabled", &disabled) ||
        !col_int(row, "created_ms", &c->created_ms) ||
        !col_int(row, "updated_ms", &c->updated_ms) ||
        !col_int(row, "secret_rotated_ms", &c->secret_rotated_ms))
        return LOOM_EINTERNAL;
    /* A quota is both columns or neither (NULL: no quota of its own). */
    c->has_quota = rps->type != LOOM_SQL_NULL;
    if (c->has_quota) {
        if ((rps->type != LOOM_SQL_REAL && rps->type != LOOM_SQL_INT) ||
            burst->type != LOOM_SQL_INT)
            return LOOM_EINTERNAL;
        c->quota.requests_per_second = rps->type == LOOM_SQL_REAL ? rps->r : (double)rps->i;
        c->quota.burst = burst->i;
    } else if (burst->type != LOOM_SQL_NULL) {
        return LOOM_EINTERNAL;
    }
    c->disabled = disabled != 0;
    if (r->hash && r->n == 0) {
        const struct loom_sql_value *h = loom_sql_col(row, "secret_hash");
        if (!h || h->type != LOOM_SQL_TEXT)
            return LOOM_EINTERNAL;
        *r->hash = loom_str_dup(h->s);
    }
    r->n++;
    return LOOM_OK;
}

static loom_err bad_row(loom_err e, struct loom_error *err)
{
    if (e == LOOM_EINTERNAL)
        return loom_error_set(err, e, "a row of identity_clients has unexpected values");
    return e;
}

static loom_err get_tx(struct loom_db *db, struct loom_str id, struct idn_client *c, char **hash,
                       struct loom_error *err)
{
    struct client_rows rows = { .v = c, .cap = 1, .hash = hash };
    struct loom_sql_value p[] = { LOOM_SQL_TEXT_V(id) };
    loom_err e = loom_db_exec(db, "SELECT " CLIENT_COLS " FROM identity_clients WHERE id = $1", p,
                              1, collect_client, &rows, NULL, err);
    if (e)
        return bad_row(e, err);
    if (rows.n == 0)
        return loom_error_set(err, LOOM_ENOTFOUND, "no client \"%.*s\"", LOOM_STR_FMT(id));
    return LOOM_OK;
}

static loom_err collect_count(const struct loom_sql_row *row, void *arg)
{
    const struct loom_sql_value *v = row->ncols ? &row->cols[0] : NULL;
    if (!v || v->type != LOOM_SQL_INT)
        return LOOM_EINTERNAL;
    *(int64_t *)arg = v->i;
    return LOOM_OK;
}

static loom_err count_where(struct loom_db *db, const char *sql, int64_t *n, struct loom_error *err)
{
    *n = 0;
    loom_err e = loom_db_exec(db, sql, NULL, 0, collect_count, n, NULL, err);
    if (e == LOOM_EINTERNAL)
        return loom_error_set(err, e, "COUNT(*) did not give an integer");
    return e;
}

/* LOOM_ECONFLICT if no enabled client holds the admin scope any more. */
static loom_err check_admins(struct loom_db *db, struct loom_error *err)
{
    int64_t n;
    loom_err e = count_where(
        db, "SELECT COUNT(*) AS n FROM identity_clients WHERE admin = 1 AND disabled = 0", &n, err);
    if (e)
        return e;
    if (n == 0)
        return loom_error_set(err, LOOM_ECONFLICT,
                              "this would leave no enabled client with the admin scope; create "
                              "or enable another admin client first");
    return LOOM_OK;
}

/* ---- store operations ---- */

struct client_tx {
    const struct idn_client *in;
    struct idn_client *out;
    struct loom_str id;
    const char *hash;
    const struct idn_client_patch *patch;
    int64_t now;
};

static loom_err collect_id(const struct loom_sql_row *row, void *arg)
{
    return col_text(row, "id", arg, IDN_ID_MAX + 1) ? LOOM_OK : LOOM_EINTERNAL;
}

static loom_err insert_tx(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct client_tx *t = arg;
    const struct idn_client *c = t->in;
    /* A taken name is looked up first, so that the refusal names the client that has it (after
     * a failed INSERT, PostgreSQL would not run another statement in this transaction). */
    char taken[IDN_ID_MAX + 1] = "";
    struct loom_sql_value n[] = { LOOM_SQL_CSTR_V(c->name) };
    loom_err e = loom_db_exec(db, "SELECT id FROM identity_clients WHERE name = $1", n, 1,
                              collect_id, taken, NULL, err);
    if (e)
        return bad_row(e, err);
    if (taken[0])
        return loom_error_set(err, LOOM_EEXIST, "a client named \"%s\" exists: %s", c->name, taken);
    struct loom_buf scopes;
    loom_buf_init(&scopes, 0);
    idn_scopes_format(c->scopes, &scopes);
    struct loom_sql_value p[] = {
        LOOM_SQL_CSTR_V(c->id),
        LOOM_SQL_CSTR_V(c->name),
        LOOM_SQL_TEXT_V(loom_buf_str(&scopes)),
        LOOM_SQL_INT_V((c->scopes & IDN_SCOPE_ADMIN) ? 1 : 0),
        quota_rps(c),
        quota_burst(c),
        LOOM_SQL_INT_V(c->disabled ? 1 : 0),
        LOOM_SQL_INT_V(c->created_ms),
        LOOM_SQL_INT_V(c->updated_ms),
        LOOM_SQL_INT_V(c->secret_rotated_ms),
        LOOM_SQL_CSTR_V(t->hash),
    };
    e = loom_db_exec(db,
                     "INSERT INTO identity_clients (id, name, scopes, admin, rps, burst, "
                     "disabled, created_ms, updated_ms, secret_rotated_ms, secret_hash) "
                     "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                     p, LOOM_ARRAY_SIZE(p), NULL, NULL, NULL, err);
    loom_buf_release(&scopes);
    if (e == LOOM_ECONFLICT) /* another request took the name since the look-up */
        return loom_error_set(err, LOOM_EEXIST, "a client named \"%s\" exists", c->name);
    return e;
}

loom_err idn_client_insert(struct loom_store *s, const struct idn_client *c,
                           const char *secret_hash, struct loom_error *err)
{
    struct client_tx t = { .in = c, .hash = secret_hash };
    return loom_store_tx(s, insert_tx, &t, err);
}

loom_err idn_client_get(struct loom_store *s, struct loom_str id, struct idn_client *c, char **hash,
                        struct loom_error *err)
{
    struct loom_db *db;
    loom_err e = loom_store_acquire(s, &db, err);
    if (e)
        return e;
    e = get_tx(db, id, c, hash, err);
    loom_store_release(s, db);
    return e;
}

loom_err idn_client_list(struct loom_store *s, struct loom_str after, size_t limit,
                         struct idn_client *out, size_t *n, struct loom_error *err)
{
    struct loom_db *db;
    loom_err e = loom_store_acquire(s, &db, err);
    if (e)
        return e;
    struct client_rows rows = { .v = out, .cap = limit };
    struct loom_sql_value p[] = { LOOM_SQL_TEXT_V(after), LOOM_SQL_INT_V(limit) };
    e = loom_db_exec(db,
                     "SELECT " CLIENT_COLS " FROM identity_clients WHERE id > $1 ORDER BY id "
                     "LIMIT $2",
                     p, 2, collect_client, &rows, NULL, err);
    loom_store_release(s, db);
    if (e)
        return bad_row(e, err);
    *n = rows.n;
    return LOOM_OK;
}

static loom_err update_tx(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct client_tx *t = arg;
    struct idn_client c;
    loom_err e = get_tx(db, t->id, &c, NULL, err);
    if (e)
        return e;
    const struct idn_client_patch *p = t->patch;
    if (p->set_scopes)
        c.scopes = p->scopes;
    if (p->clear_quota) {
        c.has_quota = false;
    } else if (p->set_rps || p->set_burst) {
        /* One field of a quota changes an existing quota; a client without one needs both. */
        if (!c.has_quota && !(p->set_rps && p->set_burst))
            return loom_error_set(err, LOOM_ECONFLICT,
                                  "client %s has no quota: give both requests_per_second and "
                                  "burst",
                                  c.id);
        if (p->set_rps)
            c.quota.requests_per_second = p->quota.requests_per_second;
        if (p->set_burst)
            c.quota.burst = p->quota.burst;
        c.has_quota = true;
    }
    if (p->set_disabled)
        c.disabled = p->disabled;
    c.updated_ms = t->now;
    struct loom_buf scopes;
    loom_buf_init(&scopes, 0);
    idn_scopes_format(c.scopes, &scopes);
    struct loom_sql_value v[] = {
        LOOM_SQL_TEXT_V(loom_buf_str(&scopes)),
        LOOM_SQL_INT_V((c.scopes & IDN_SCOPE_ADMIN) ? 1 : 0),
        quota_rps(&c),
        quota_burst(&c),
        LOOM_SQL_INT_V(c.disabled ? 1 : 0),
        LOOM_SQL_INT_V(c.updated_ms),
        LOOM_SQL_TEXT_V(t->id),
    };
    e = loom_db_exec(db,
                     "UPDATE identity_clients SET scopes = $1, admin = $2, rps = $3, burst = $4, "
                     "disabled = $5, updated_ms = $6 WHERE id = $7",
                     v, LOOM_ARRAY_SIZE(v), NULL, NULL, NULL, err);
    loom_buf_release(&scopes);
    if (!e)
        e = check_admins(db, err);
    if (!e)
        *t->out = c;
    return e;
}

loom_err idn_client_update(struct loom_store *s, struct loom_str id,
                           const struct idn_client_patch *p, struct idn_client *c,
                           struct loom_error *err)
{
    struct client_tx t = {
        .id = id, .patch = p, .out = c, .now = loom_wall_ns() / (int64_t)LOOM_NS_PER_MS
    };
    return loom_store_tx(s, update_tx, &t, err);
}

static loom_err secret_tx(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct client_tx *t = arg;
    struct loom_sql_value v[] = { LOOM_SQL_CSTR_V(t->hash), LOOM_SQL_INT_V(t->now),
                                  LOOM_SQL_TEXT_V(t->id) };
    int64_t changed = 0;
    loom_err e = loom_db_exec(db,
                              "UPDATE identity_clients SET secret_hash = $1, updated_ms = $2, "
                              "secret_rotated_ms = $2 WHERE id = $3",
                              v, 3, NULL, NULL, &changed, err);
    if (e)
        return e;
    if (changed == 0)
        return loom_error_set(err, LOOM_ENOTFOUND, "no client \"%.*s\"", LOOM_STR_FMT(t->id));
    return get_tx(db, t->id, t->out, NULL, err);
}

loom_err idn_client_set_secret(struct loom_store *s, struct loom_str id, const char *hash,
                               struct idn_client *c, struct loom_error *err)
{
    struct client_tx t = {
        .id = id, .hash = hash, .out = c, .now = loom_wall_ns() / (int64_t)LOOM_NS_PER_MS
    };
    return loom_store_tx(s, secret_tx, &t, err);
}

static loom_err delete_tx(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct client_tx *t = arg;
    struct loom_sql_value v[] = { LOOM_SQL_TEXT_V(t->id) };
    int64_t changed = 0;
    loom_err e = loom_db_exec(db, "DELETE FROM identity_clients WHERE id = $1", v, 1, NULL, NULL,
                              &changed, err);
    if (e)
        return e;
    if (changed == 0)
        return loom_error_set(err, LOOM_ENOTFOUND, "no client \"%.*s\"", LOOM_STR_FMT(t->id));
    return check_admins(db, err);
}

loom_err idn_client_delete(struct loom_store *s, struct loom_str id, struct loom_error *err)
{
    struct client_tx t = { .id = id };
    return loom_store_tx(s, delete_tx, &t, err);
}

loom_err idn_client_count(struct loom_store *s, int64_t *n, struct loom_error *err)
{
    struct loom_db *db;
    loom_err e = loom_store_acquire(s, &db, err);
    if (e)
        return e;
    e = count_where(db, "SELECT COUNT(*) AS n FROM identity_clients", n, err);
    loom_store_release(s, db);
    return e;
}

/* ---- the bootstrap admin ---- */

struct bootstrap_tx {
    const struct idn_client *admin;
    const char *hash;
    bool created;
};

static loom_err bootstrap_tx(struct loom_db *db, void *arg, struct loom_error *err)
{
    struct bootstrap_tx *b = arg;
    b->created = false;
    int64_t n;
    loom_err e = loom_db_exec(db, "UPDATE identity_locks SET name = name WHERE name = 'bootstrap'",
                              NULL, 0, NULL, NULL, NULL, err);
    if (!e)
        e = count_where(db, "SELECT COUNT(*) AS n FROM identity_clients", &n, err);
    if (e || n > 0)
        return e;
    struct client_tx t = { .in = b->admin, .hash = b->hash };
    e = insert_tx(db, &t, err);
    if (!e)
        b->created = true;
    return e;
}

/* Write the secret to path, readable by its owner only. */
static loom_err write_secret_file(const char *path, const char *secret, struct loom_error *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return loom_error_errno(err, "cannot create %s", path);
    loom_err e = LOOM_OK;
    size_t n = strlen(secret);
    if (fchmod(fd, 0600) < 0 || write(fd, secret, n) != (ssize_t)n || write(fd, "\n", 1) != 1 ||
        fsync(fd) < 0)
        e = loom_error_errno(err, "cannot write %s", path);
    close(fd);
    if (e)
        unlink(path);
    return e;
}

loom_err idn_bootstrap(struct idn_service *idn, struct loom_error *err)
{
    int64_t n;
    loom_err e = idn_client_count(idn->store, &n, err);
    if (e || n > 0)
        return e;
    const char *given = idn->conf->bootstrap_secret;
    char secret[IDN_SECRET_LEN + 1];
    if (given[0]) {
        if (strlen(given) < BOOTSTRAP_MIN)
            return loom_error_set(err, LOOM_EINVAL,
                                  "--identity.bootstrap-secret must be at least %d characters",
                                  BOOTSTRAP_MIN);
    } else {
        idn_new_secret(secret);
    }
    const char *use = given[0] ? given : secret;
    int64_t now = loom_wall_ns() / (int64_t)LOOM_NS_PER_MS;
    struct idn_client admin = {
        .id = "admin",
        .name = "admin",
        .scopes = IDN_SCOPES_ALL, /* and no quota: the gateway's default applies */
        .created_ms = now,
        .updated_ms = now,
        .secret_rotated_ms = now,
    };
    char *hash = idn_hash_secret(loom_str_cstr(use));
    struct bootstrap_tx b = { .admin = &admin, .hash = hash };
    e = loom_store_tx(idn->store, bootstrap_tx, &b, err);
    free(hash);
    if (e || !b.created)
        goto out;
    if (given[0]) {
        LOOM_LOG_KV(LOOM_LOG_INFO, "bootstrap admin created", LOOM_KV_CSTR("client_id", "admin"),
                    LOOM_KV_CSTR("secret_from", "--identity.bootstrap-secret"));
        goto out;
    }
    size_t plen = strlen(idn->data_dir) + sizeof(BOOTSTRAP_FILE) + 2;
    char *path = loom_malloc(plen);
    snprintf(path, plen, "%s/%s", idn->data_dir, BOOTSTRAP_FILE);
    e = write_secret_file(path, secret, err);
    if (e) {
        /* Nobody could ever learn this secret: take the admin back, so the next start tries
         * again. */
        struct loom_error ignored = { 0 };
        struct client_tx t = { .id = LOOM_STR("admin") };
        struct loom_db *db;
        if (loom_store_acquire(idn->store, &db, &ignored) == LOOM_OK) {
            struct loom_sql_value v[] = { LOOM_SQL_TEXT_V(t.id) };
            loom_db_exec(db, "DELETE FROM identity_clients WHERE id = $1", v, 1, NULL, NULL, NULL,
                         &ignored);
            loom_store_release(idn->store, db);
        }
        loom_error_prefix(err, "bootstrap admin");
    } else {
        LOOM_LOG_KV(LOOM_LOG_WARN,
                    "bootstrap admin created; its secret is in the file named here (read it "
                    "once, then delete the file or rotate the secret)",
                    LOOM_KV_CSTR("client_id", "admin"), LOOM_KV_CSTR("secret_file", path));
    }
    free(path);
out:
    OPENSSL_cleanse(secret, sizeof(secret));
    return e;
}
