/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The error table: one row per loom_err with its name, message and the HTTP status an edge
 * answers with. Kept as one table so a new code cannot be added without all three.
 */
#include <loom/err.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    const char *msg;
    int http_status;
} err_table[LOOM_ERR__COUNT] = {
    [LOOM_OK] = { "OK", "success", 200 },
    [LOOM_EINVAL] = { "EINVAL", "invalid argument", 400 },
    [LOOM_ETOOBIG] = { "ETOOBIG", "too large", 413 },
    [LOOM_ENOTFOUND] = { "ENOTFOUND", "not found", 404 },
    [LOOM_EEXIST] = { "EEXIST", "already exists", 409 },
    [LOOM_EIO] = { "EIO", "input/output error", 500 },
    [LOOM_ETIMEDOUT] = { "ETIMEDOUT", "timed out", 504 },
    [LOOM_ECANCELED] = { "ECANCELED", "canceled", 499 },
    [LOOM_EAGAIN] = { "EAGAIN", "try again", 503 },
    [LOOM_ECLOSED] = { "ECLOSED", "connection closed", 502 },
    [LOOM_EPARSE] = { "EPARSE", "parse error", 400 },
    [LOOM_EUNSUPPORTED] = { "EUNSUPPORTED", "not supported", 400 },
    [LOOM_EBUSY] = { "EBUSY", "queue full", 503 },
    [LOOM_EUNAVAIL] = { "EUNAVAIL", "unavailable", 503 },
    [LOOM_EUNAUTH] = { "EUNAUTH", "unauthenticated", 401 },
    [LOOM_EFORBIDDEN] = { "EFORBIDDEN", "forbidden", 403 },
    [LOOM_ECONFLICT] = { "ECONFLICT", "conflict", 409 },
    [LOOM_EINTERNAL] = { "EINTERNAL", "internal error", 500 },
    [LOOM_ECONNECT] = { "ECONNECT", "connection failed", 502 },
};

static bool err_known(loom_err err)
{
    return (unsigned)err < LOOM_ERR__COUNT;
}

const char *loom_strerror(loom_err err)
{
    return err_known(err) ? err_table[err].msg : "unknown error";
}

const char *loom_err_name(loom_err err)
{
    return err_known(err) ? err_table[err].name : "EUNKNOWN";
}

int loom_err_http_status(loom_err err)
{
    return err_known(err) ? err_table[err].http_status : 500;
}

loom_err loom_error_setv(struct loom_error *e, loom_err code, const char *fmt, va_list ap)
{
    if (e) {
        e->code = code;
        vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    }
    return code;
}

loom_err loom_error_set(struct loom_error *e, loom_err code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    loom_error_setv(e, code, fmt, ap);
    va_end(ap);
    return code;
}

loom_err loom_error_errno(struct loom_error *e, const char *fmt, ...)
{
    int saved = errno;
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < sizeof(e->msg))
            snprintf(e->msg + n, sizeof(e->msg) - (size_t)n, ": %s", strerror(saved));
        e->code = LOOM_EIO;
    }
    errno = saved;
    return LOOM_EIO;
}

loom_err loom_error_prefix(struct loom_error *e, const char *fmt, ...)
{
    if (!e)
        return LOOM_EINTERNAL;
    char old[LOOM_ERROR_MSG_MAX];
    memcpy(old, e->msg, sizeof(old));
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof(e->msg) - 2) {
        memcpy(e->msg + n, ": ", 2);
        size_t room = sizeof(e->msg) - (size_t)n - 2;
        size_t len = strnlen(old, room - 1);
        memcpy(e->msg + n + 2, old, len);
        e->msg[(size_t)n + 2 + len] = '\0';
    }
    return e->code;
}
