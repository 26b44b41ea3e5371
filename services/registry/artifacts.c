/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The content-addressed artifact store, two-step like OCI blobs: a model file is uploaded once
 * (POST /api/v1/artifacts) and versions refer to it by digest. An upload streams to a temporary
 * file under <artifacts>/tmp while SHA-256 is computed; the writes go to the page cache on the
 * loop thread (they do not wait for the disk), and everything slow runs on the work pool: the
 * fsync, checking that the file is a model loom can serve (the format is detected from the
 * content and the model must load), the rename to <artifacts>/sha256/<2 hex>/<64 hex> with an
 * fsync of its directory, and only then the row in registry_artifacts. A crash before the
 * rename leaves a temporary file, which the next start deletes; a crash after it leaves a file
 * without a row, which the next upload of the same bytes adopts. Pickles are refused before a
 * byte is written (they run code when loaded). Downloads read the whole file and check it
 * against its digest before anything is sent: a file changed on disk is never served.
 */
#include "registry/registry.h"

#include <loom/id.h>
#include <loom/log.h>
#include <loom/model.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ACCEPTED                                                                             \
    "loom accepts XGBoost JSON models (Booster.save_model(\"model.json\")) and loom linear " \
    "models (JSON, see docs/models.md)"

/* ---- base64 ---- */

size_t reg_base64(const uint8_t *in, size_t n, bool url, char *out)
{
    const char *abc = url ? "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                          : "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = abc[(v >> 18) & 63];
        out[o++] = abc[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = abc[(v >> 6) & 63];
        else if (!url)
            out[o++] = '=';
        if (i + 2 < n)
            out[o++] = abc[v & 63];
        else if (!url)
            out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

static int b64url_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

bool reg_base64url_decode(struct loom_str in, uint8_t *out, size_t *outlen)
{
    if (in.len % 4 == 1)
        return false;
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < in.len; i++) {
        int v = b64url_value(in.ptr[i]);
        if (v < 0)
            return false;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    if (bits && (acc & ((1u << bits) - 1)))
        return false; /* non-canonical trailing bits */
    *outlen = o;
    return true;
}

/* ---- files ---- */

char *reg_artifact_path(const struct reg_service *reg, const char *hex)
{
    size_t n = strlen(reg->artifacts_dir) + 80;
    char *p = loom_malloc(n);
    snprintf(p, n, "%s/sha256/%.2s/%s", reg->artifacts_dir, hex, hex);
    return p;
}

static loom_err mkdir_p(const char *path, struct loom_error *err)
{
    char *p = loom_strdup(path);
    loom_err e = LOOM_OK;
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char c = *s;
        *s = '\0';
        if (mkdir(p, 0755) < 0 && errno != EEXIST) {
            e = loom_error_errno(err, "mkdir %s", p);
            break;
        }
        *s = c;
        if (!c)
            break;
    }
    free(p);
    return e;
}

static void fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

loom_err reg_artifacts_init(struct reg_service *reg, struct loom_error *err)
{
    size_t n = strlen(reg->artifacts_dir) + 16;
    reg->tmp_dir = loom_malloc(n);
    snprintf(reg->tmp_dir, n, "%s/tmp", reg->artifacts_dir);
    char *blobs = loom_malloc(n);
    snprintf(blobs, n, "%s/sha256", reg->artifacts_dir);
    loom_err e = mkdir_p(reg->tmp_dir, err);
    if (!e)
        e = mkdir_p(blobs, err);
    free(blobs);
    if (e)
        return e;
    /* Uploads of processes that are gone (killed mid-upload) never became artifacts. */
    DIR *d = opendir(reg->tmp_dir);
    if (!d)
        return loom_error_errno(err, "open %s", reg->tmp_dir);
    struct dirent *ent;
    int removed = 0;
    while ((ent = readdir(d))) {
        long pid = 0;
        if (sscanf(ent->d_name, "upload-%ld-", &pid) != 1)
            continue;
        if (pid != (long)getpid() && (kill((pid_t)pid, 0) == 0 || errno != ESRCH))
            continue; /* another live process's upload (a shared --data-dir) */
        if (unlinkat(dirfd(d), ent->d_name, 0) == 0)
            removed++;
    }
    closedir(d);
    if (removed)
        LOOM_LOG_KV(LOOM_LOG_INFO, "removed unfinished uploads", LOOM_KV_INT("files", removed),
                    LOOM_KV_CSTR("dir", reg->tmp_dir));
    return LOOM_OK;
}

/* Read a whole file into b (which the caller has sized), hashing it. */
/* Hash the file at `path` (and append its bytes to b, when b is not NULL). With keep_fd, the
 * file stays open and *keep_fd receives it (the caller closes it), so that what was verified
 * is what is sent. */
static loom_err read_hashed_fd(const char *path, struct loom_buf *b,
                               uint8_t digest[LOOM_SHA256_LEN], int *keep_fd,
                               struct loom_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return loom_error_errno(err, "open %s", path);
    struct loom_sha256 h;
    loom_sha256_init(&h);
    loom_err e = LOOM_OK;
    char chunk[1 << 16];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            e = loom_error_errno(err, "read %s", path);
            break;
        }
        if (n == 0)
            break;
        loom_sha256_update(&h, chunk, (size_t)n);
        if (b && loom_buf_append(b, chunk, (size_t)n)) {
            e = loom_error_set(err, LOOM_ETOOBIG, "%s is larger than its recorded size", path);
            break;
        }
    }
    if (e || !keep_fd)
        close(fd);
    else
        *keep_fd = fd;
    if (e)
        loom_sha256_abandon(&h);
    else
        loom_sha256_final(&h, digest);
    return e;
}

static loom_err read_hashed(const char *path, struct loom_buf *b, uint8_t digest[LOOM_SHA256_LEN],
                            struct loom_error *err)
{
    return read_hashed_fd(path, b, digest, NULL, err);
}

/* ---- downloads ---- */

struct art_row {
    bool found;
    int64_t size;
};

static loom_err get_art_row(const struct loom_sql_row *row, void *arg)
{
    struct art_row *r = arg;
    const struct loom_sql_value *v = loom_sql_col(row, "size");
    r->found = true;
    r->size = v && v->type == LOOM_SQL_INT ? v->i : 0;
    return LOOM_OK;
}

void reg_artifact_send(struct reg_op *op, struct loom_str digest)
{
    struct reg_service *reg = op->reg;
    struct loom_error err = { 0 };
    struct loom_db *db;
    loom_err e = loom_store_acquire(reg->store, &db, &err);
    if (e) {
        reg_op_store_error(op, e, &err);
        return;
    }
    struct art_row row = { .found = false };
    struct loom_sql_value p[1] = { LOOM_SQL_TEXT_V(digest) };
    e = loom_db_exec(db, "SELECT size FROM registry_artifacts WHERE digest = $1", p, 1, get_art_row,
                     &row, NULL, &err);
    loom_store_release(reg->store, db);
    if (e) {
        reg_op_store_error(op, e, &err);
        return;
    }
    if (!row.found) {
        reg_op_problem(op, 404, "no artifact %.*s", LOOM_STR_FMT(digest));
        return;
    }
    char hex[LOOM_SHA256_HEX];
    snprintf(hex, sizeof(hex), "%.*s", (int)(digest.len - 7), digest.ptr + 7);
    /* Hash the file as a stream (it may be large) and keep it open: the bytes verified are the
     * bytes sent, from the page cache with sendfile. */
    char *path = reg_artifact_path(reg, hex);
    uint8_t got[LOOM_SHA256_LEN];
    int fd = -1;
    e = read_hashed_fd(path, NULL, got, &fd, &err);
    free(path);
    char got_hex[LOOM_SHA256_HEX];
    if (!e)
        loom_hex(got, sizeof(got), got_hex);
    if (e || strcmp(got_hex, hex) != 0) {
        LOOM_LOG_KV(LOOM_LOG_ERROR, "artifact failed verification", LOOM_KV_STR("digest", digest),
                    LOOM_KV_CSTR("error", e ? err.msg : "content does not match its digest"));
        if (e)
            reg_op_problem(op, 500, "artifact %.*s cannot be read (%s); it is not served",
                           LOOM_STR_FMT(digest), err.msg);
        else
            reg_op_problem(op, 500,
                           "artifact %.*s failed verification: the file on disk no longer "
                           "matches its digest (it now hashes to sha256:%s); it is not served. "
                           "Upload the original file again to repair it",
                           LOOM_STR_FMT(digest), got_hex);
        if (fd >= 0)
            close(fd);
        return;
    }
    reg_base64(got, sizeof(got), false, op->digest_b64);
    snprintf(op->etag, sizeof(op->etag), "sha256:%s", hex);
    struct loom_str inm = loom_http_req_header(op->req, "If-None-Match");
    char quoted[90];
    snprintf(quoted, sizeof(quoted), "\"sha256:%s\"", hex);
    if (inm.len && (loom_str_eq_cstr(loom_str_trim(inm), quoted) ||
                    loom_str_eq_cstr(loom_str_trim(inm), "*"))) {
        close(fd);
        op->status = 304;
        return;
    }
    op->file_fd = fd;
    op->file_len = (uint64_t)row.size;
    op->status = 200;
    op->content_type = "application/octet-stream";
}

/* ---- uploads ---- */

struct upload {
    struct reg_op *op;
    struct reg_service *reg;
    int fd;
    char *tmp_path;
    struct loom_sha256 sha;
    bool sha_live;
    uint64_t size;
    bool pickle;
    bool claimed;   /* we hold the Idempotency-Key */
    bool hash_only; /* a stored answer exists: hash the body to compare, store nothing */
    struct reg_idem_stored stored;
    enum reg_idem_result idem;
    loom_err end_status;
    int io_errno;
    struct loom_error claim_err;
    loom_err claim_e;
};

static void upload_discard(struct upload *up)
{
    if (up->fd >= 0) {
        close(up->fd);
        up->fd = -1;
    }
    if (up->tmp_path) {
        unlink(up->tmp_path);
        free(up->tmp_path);
        up->tmp_path = NULL;
    }
    if (up->sha_live) {
        loom_sha256_abandon(&up->sha);
        up->sha_live = false;
    }
}

static void write_signature(struct loom_json_writer *w, const struct loom_model_info *info)
{
    loom_json_write_object_begin(w);
    loom_json_write_key(w, "num_features");
    loom_json_write_u64(w, info->num_features);
    loom_json_write_key(w, "num_outputs");
    loom_json_write_u64(w, info->num_outputs);
    loom_json_write_key(w, "objective");
    loom_json_write_string(w, info->objective);
    if (info->feature_names) {
        loom_json_write_key(w, "feature_names");
        loom_json_write_array_begin(w);
        for (size_t i = 0; i < info->num_features; i++)
            loom_json_write_string(w, info->feature_names[i]);
        loom_json_write_array_end(w);
    }
    loom_json_write_object_end(w);
}

/*
 * Recognise and load the model in data: on success the format, backend and signature (JSON,
 * into sig); else the HTTP status (415 not a model format loom accepts, 422 a model that does
 * not load) with the reason in err.
 */
static int check_model(const struct reg_service *reg, const char *data, size_t len,
                       const char **format, const char **backend, struct loom_buf *sig,
                       struct loom_error *err)
{
    if (len == 0) {
        loom_error_set(err, LOOM_EINVAL, "the body is empty: %s", ACCEPTED);
        return 415;
    }
    if ((unsigned char)data[0] == 0x80) {
        loom_error_set(err, LOOM_EUNSUPPORTED,
                       "Python pickle files are refused (loading one runs arbitrary code): %s",
                       ACCEPTED);
        return 415;
    }
    size_t i = 0;
    while (i < len && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r'))
        i++;
    if (i == len || data[i] != '{') {
        loom_error_set(err, LOOM_EUNSUPPORTED,
                       "unrecognised model format (not a JSON object): %s; pickle, joblib and "
                       "binary formats are refused",
                       ACCEPTED);
        return 415;
    }
    size_t head = LOOM_MIN(len, (size_t)1 << 16);
    bool linear = memmem(data, head, "\"loom_model\"", 12) != NULL;
    bool learner = memmem(data, head, "\"learner\"", 9) != NULL;
    *backend = linear ? "linear" : "xgboost";
    *format = linear ? "loom-linear" : "xgboost-json";
    struct loom_model_limits lim = { .max_bytes = (size_t)reg->conf->max_artifact_bytes };
    struct loom_model *model = NULL;
    loom_err e = loom_model_load(*backend, data, len, &lim, &model, err);
    if (e) {
        if (!linear && !learner) {
            loom_error_set(err, LOOM_EUNSUPPORTED,
                           "unrecognised model format (a JSON document that is neither an "
                           "XGBoost nor a loom model): %s",
                           ACCEPTED);
            return 415;
        }
        loom_error_prefix(err, "the %s model does not load", *format);
        return 422;
    }
    struct loom_json_writer w;
    loom_json_writer_init(&w, sig);
    write_signature(&w, loom_model_info(model));
    loom_json_writer_finish(&w);
    loom_model_free(model);
    return 0;
}

static loom_err note_insert(const struct loom_sql_row *row, void *arg)
{
    LOOM_UNUSED(row);
    *(bool *)arg = true;
    return LOOM_OK;
}

/* On the pool: the body is in (or failed). Answer op. */
static void finish_upload(struct upload *up, const char *hex)
{
    struct reg_op *op = up->op;
    struct reg_service *reg = up->reg;
    struct loom_error err = { 0 };
    char *final = NULL;
    void *map = MAP_FAILED;
    struct loom_buf sig;
    loom_buf_init(&sig, 0);
    const char *format = NULL, *backend = NULL;

    if (fsync(up->fd) < 0 || close(up->fd) < 0) {
        up->fd = -1;
        loom_error_errno(&err, "write %s", up->tmp_path);
        reg_op_problem(op, 500, "the upload could not be stored: %s", err.msg);
        goto out;
    }
    up->fd = -1;
    /* Is it a model loom can serve? Read back through a mapping: no second copy in memory. */
    if (up->size) {
        int fd = open(up->tmp_path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            map = mmap(NULL, (size_t)up->size, PROT_READ, MAP_PRIVATE, fd, 0);
            close(fd);
        }
        if (map == MAP_FAILED) {
            loom_error_errno(&err, "map %s", up->tmp_path);
            reg_op_problem(op, 500, "the upload could not be read back: %s", err.msg);
            goto out;
        }
    }
    int status = check_model(reg, map == MAP_FAILED ? "" : map, (size_t)up->size, &format, &backend,
                             &sig, &err);
    if (status) {
        reg_op_problem(op, status, "%s", err.msg);
        goto out;
    }
    /* Into the store: rename (or adopt the file already there if it is intact). */
    final = reg_artifact_path(reg, hex);
    char *dir = loom_strndup(final, (size_t)(strrchr(final, '/') - final));
    loom_err e = mkdir_p(dir, &err);
    if (!e) {
        uint8_t have[LOOM_SHA256_LEN];
        char have_hex[LOOM_SHA256_HEX] = "";
        struct loom_error ignore = { 0 };
        if (access(final, F_OK) == 0 && !read_hashed(final, NULL, have, &ignore))
            loom_hex(have, sizeof(have), have_hex);
        if (strcmp(have_hex, hex) == 0) {
            unlink(up->tmp_path);
        } else if (rename(up->tmp_path, final) < 0) {
            e = loom_error_errno(&err, "rename to %s", final);
        } else {
            fsync_dir(dir);
            if (have_hex[0])
                LOOM_LOG_KV(LOOM_LOG_WARN, "repaired a damaged artifact file",
                            LOOM_KV_CSTR("digest", hex));
        }
    }
    free(dir);
    if (e) {
        reg_op_problem(op, 500, "the upload could not be stored: %s", err.msg);
        goto out;
    }
    free(up->tmp_path);
    up->tmp_path = NULL;

    char digest[80];
    snprintf(digest, sizeof(digest), "sha256:%s", hex);
    bool created = false;
    struct loom_db *db;
    e = loom_store_acquire(reg->store, &db, &err);
    if (!e) {
        struct loom_sql_value p[6] = {
            LOOM_SQL_CSTR_V(digest),
            LOOM_SQL_INT_V(up->size),
            LOOM_SQL_CSTR_V(format),
            LOOM_SQL_CSTR_V(backend),
            LOOM_SQL_TEXT_V(loom_buf_str(&sig)),
            LOOM_SQL_INT_V(loom_wall_ns() / (int64_t)LOOM_NS_PER_MS),
        };
        e = loom_db_exec(db,
                         "INSERT INTO registry_artifacts (digest, size, format, backend, signature,"
                         " created_ms) VALUES ($1, $2, $3, $4, $5, $6)"
                         " ON CONFLICT (digest) DO NOTHING RETURNING digest",
                         p, 6, note_insert, &created, NULL, &err);
        loom_store_release(reg->store, db);
    }
    if (e) {
        reg_op_store_error(op, e, &err);
        goto out;
    }
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "digest");
    loom_json_write_string(&w, digest);
    loom_json_write_key(&w, "size");
    loom_json_write_u64(&w, up->size);
    loom_json_write_key(&w, "format");
    loom_json_write_string(&w, format);
    loom_json_write_key(&w, "backend");
    loom_json_write_string(&w, backend);
    loom_json_write_key(&w, "signature");
    loom_json_write_raw(&w, loom_buf_str(&sig));
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
    reg_op_json(op, created ? 201 : 200, &b);
    if (created)
        LOOM_LOG_KV(LOOM_LOG_INFO, "artifact stored", LOOM_KV_CSTR("digest", digest),
                    LOOM_KV_UINT("size", up->size), LOOM_KV_CSTR("format", format));
out:
    if (map != MAP_FAILED)
        munmap(map, (size_t)up->size);
    free(final);
    loom_buf_release(&sig);
    upload_discard(up);
}

static void finish_work(struct loom_work *w)
{
    struct reg_op *op = LOOM_CONTAINER_OF(w, struct reg_op, work);
    struct upload *up = op->args;
    struct reg_service *reg = up->reg;
    char hex[LOOM_SHA256_HEX] = "";
    if (up->end_status) {
        upload_discard(up);
        switch (up->end_status) {
        case LOOM_ETOOBIG:
            reg_op_problem(op, 413,
                           "the artifact is larger than this registry accepts (%llu "
                           "bytes, --registry.max-artifact-bytes)",
                           (unsigned long long)reg->conf->max_artifact_bytes);
            break;
        case LOOM_EUNSUPPORTED:
            reg_op_problem(op, 415,
                           "Python pickle files are refused (loading one runs arbitrary "
                           "code): %s",
                           ACCEPTED);
            break;
        case LOOM_EIO:
            reg_op_problem(op, 500, "the upload could not be written: %s", strerror(up->io_errno));
            break;
        case LOOM_ECLOSED:
            reg_op_problem(op, 400, "the client went away before the body was complete");
            break;
        default:
            reg_op_problem(op, 400, "the request body is malformed (%s)",
                           loom_strerror(up->end_status));
        }
        if (up->claimed)
            reg_idem_release(reg->store, op->key);
        return;
    }
    uint8_t d[LOOM_SHA256_LEN];
    loom_sha256_final(&up->sha, d);
    up->sha_live = false;
    loom_hex(d, sizeof(d), hex);
    if (up->hash_only) {
        upload_discard(up);
        if (strcmp(hex, up->stored.body_sha) == 0) {
            snprintf(op->content_type_buf, sizeof(op->content_type_buf), "%s",
                     up->stored.content_type);
            op->content_type = op->content_type_buf;
            op->status = up->stored.status;
            loom_buf_release(&op->body);
            op->body = up->stored.body;
            loom_buf_init(&up->stored.body, 0);
            op->replayed = true;
        } else {
            reg_op_problem(op, 422,
                           "Idempotency-Key \"%.*s\" was already used for another request "
                           "(a different body); use a new key for a new request",
                           LOOM_STR_FMT(op->key));
        }
        return;
    }
    finish_upload(up, hex);
    if (up->claimed)
        reg_idem_finish(reg->store, op->key, hex, op->status, op->content_type,
                        loom_buf_str(&op->body));
}

static void finish_done(struct loom_work *w, loom_err status)
{
    struct reg_op *op = LOOM_CONTAINER_OF(w, struct reg_op, work);
    struct upload *up = op->args;
    if (status == LOOM_ECANCELED) {
        upload_discard(up);
        reg_op_problem(op, 503, "the registry is shutting down");
    }
    loom_buf_release(&up->stored.body);
    reg_op_respond(op);
}

static loom_err on_data(struct loom_http_req *req, struct loom_str chunk, void *arg)
{
    LOOM_UNUSED(req);
    struct upload *up = arg;
    if (!chunk.len)
        return LOOM_OK;
    if (up->size == 0 && (unsigned char)chunk.ptr[0] == 0x80) {
        up->pickle = true;
        return LOOM_EUNSUPPORTED;
    }
    if (chunk.len > up->reg->conf->max_artifact_bytes - up->size)
        return LOOM_ETOOBIG;
    up->size += chunk.len;
    loom_sha256_update(&up->sha, chunk.ptr, chunk.len);
    for (size_t off = 0; up->fd >= 0 && off < chunk.len;) {
        ssize_t n = write(up->fd, chunk.ptr + off, chunk.len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            up->io_errno = errno;
            return LOOM_EIO;
        }
        off += (size_t)n;
    }
    return LOOM_OK;
}

/* The body is in, or failed with `status`: the rest runs on the pool. */
static void finish_soon(struct upload *up, loom_err status)
{
    struct loom_http_req *req = up->op->req;
    up->end_status = status;
    if (loom_pool_submit(up->reg->pool, req->loop, &up->op->work, finish_work, finish_done)) {
        upload_discard(up);
        loom_buf_release(&up->stored.body);
        loom_http_resp_header(req, "Retry-After", LOOM_STR("1"));
        reg_problem(req, 503, "the registry is overloaded; try again");
    }
}

static void on_end(struct loom_http_req *req, loom_err status, void *arg)
{
    LOOM_UNUSED(req);
    finish_soon(arg, status);
}

static void start_body(struct upload *up)
{
    struct loom_http_req *req = up->op->req;
    if (!up->hash_only) {
        char id[LOOM_UUID_LEN + 1];
        loom_uuid7(id);
        size_t n = strlen(up->reg->tmp_dir) + 80;
        up->tmp_path = loom_malloc(n);
        snprintf(up->tmp_path, n, "%s/upload-%ld-%s", up->reg->tmp_dir, (long)getpid(), id);
        up->fd = open(up->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (up->fd < 0) {
            up->io_errno = errno;
            free(up->tmp_path);
            up->tmp_path = NULL;
            finish_soon(up, LOOM_EIO); /* answers, and gives a claimed key back */
            return;
        }
    }
    loom_sha256_init(&up->sha);
    up->sha_live = true;
    loom_http_req_read_body(req, on_data, on_end, up);
}

static void claim_work(struct loom_work *w)
{
    struct reg_op *op = LOOM_CONTAINER_OF(w, struct reg_op, work);
    struct upload *up = op->args;
    up->claim_e = reg_idem_begin(up->reg->store, op->key, op->scope, "", &up->idem, &up->stored,
                                 &up->claim_err);
}

static void claim_done(struct loom_work *w, loom_err status)
{
    struct reg_op *op = LOOM_CONTAINER_OF(w, struct reg_op, work);
    struct upload *up = op->args;
    struct loom_http_req *req = op->req;
    if (status == LOOM_ECANCELED || up->claim_e) {
        loom_buf_release(&up->stored.body);
        reg_problem(req, 503, "the registry's database is unavailable; try again");
        return;
    }
    switch (up->idem) {
    case REG_IDEM_PROCEED:
        up->claimed = true;
        break;
    case REG_IDEM_REPLAY:
        up->hash_only = true;
        break;
    case REG_IDEM_MISMATCH:
        loom_buf_release(&up->stored.body);
        reg_problem(req, 422,
                    "Idempotency-Key \"%.*s\" was already used for another request (a different "
                    "path); use a new key for a new request",
                    LOOM_STR_FMT(op->key));
        return;
    case REG_IDEM_INFLIGHT:
        loom_buf_release(&up->stored.body);
        reg_problem(req, 409,
                    "a request with Idempotency-Key \"%.*s\" is still in progress; retry when it "
                    "has finished",
                    LOOM_STR_FMT(op->key));
        return;
    }
    start_body(up);
}

void reg_h_upload(struct loom_http_req *req)
{
    struct reg_service *reg = req->ctx;
    struct upload *up = loom_arena_new(req->arena, struct upload);
    up->reg = reg;
    up->fd = -1;
    loom_buf_init(&up->stored.body, 0);
    up->op = reg_op_new(req, NULL, up);
    struct loom_str cl = loom_http_req_header(req, "Content-Length");
    uint64_t len;
    if (cl.len && !loom_str_to_u64(cl, &len) && len > reg->conf->max_artifact_bytes) {
        reg_problem(req, 413,
                    "the artifact is %llu bytes, larger than this registry accepts (%llu bytes, "
                    "--registry.max-artifact-bytes)",
                    (unsigned long long)len, (unsigned long long)reg->conf->max_artifact_bytes);
        return;
    }
    if (!reg_op_take_key(up->op))
        return;
    if (!up->op->has_key) {
        start_body(up);
        return;
    }
    if (loom_pool_submit(reg->pool, req->loop, &up->op->work, claim_work, claim_done)) {
        loom_http_resp_header(req, "Retry-After", LOOM_STR("1"));
        reg_problem(req, 503, "the registry is overloaded; try again");
    }
}
