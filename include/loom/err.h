/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Errors: one stable enum for all of libloom, a message for each code, and a small carrier
 * (struct loom_error) that keeps a human-readable message next to the code. Actions return a
 * loom_err; parsers and loaders also fill a loom_error so the edge can say what to fix. The
 * enum is append-only: codes are logged and may be persisted, so values never change.
 * HTTP status codes are derived at the edge only, with loom_err_http_status().
 */
#ifndef LOOM_ERR_H
#define LOOM_ERR_H

#include <stdarg.h>
#include <stddef.h>

typedef enum loom_err {
    LOOM_OK = 0,
    LOOM_EINVAL = 1,        /* bad argument or malformed input */
    LOOM_ETOOBIG = 2,       /* a size, count or depth ceiling was hit */
    LOOM_ENOTFOUND = 3,     /* no such thing */
    LOOM_EEXIST = 4,        /* already exists */
    LOOM_EIO = 5,           /* a system call failed; see errno in the message */
    LOOM_ETIMEDOUT = 6,     /* a deadline passed */
    LOOM_ECANCELED = 7,     /* the operation was cancelled before it ran */
    LOOM_EAGAIN = 8,        /* try again later (would block, temporarily overloaded) */
    LOOM_ECLOSED = 9,       /* the peer or handle is closed */
    LOOM_EPARSE = 10,       /* syntax error in a document or protocol stream */
    LOOM_EUNSUPPORTED = 11, /* valid but not supported by this implementation */
    LOOM_EBUSY = 12,        /* a queue or pool is full */
    LOOM_EUNAVAIL = 13,     /* not ready, draining, or a circuit breaker is open */
    LOOM_EUNAUTH = 14,      /* missing or invalid credentials */
    LOOM_EFORBIDDEN = 15,   /* authenticated but not allowed */
    LOOM_ECONFLICT = 16,    /* state conflict (in flight, precondition failed) */
    LOOM_EINTERNAL = 17,    /* a bug or an impossible state */
    LOOM_ECONNECT = 18,     /* could not connect to a peer */
    LOOM_ERR__COUNT
} loom_err;

/* The message for a code ("invalid argument"); never NULL, even for unknown values. */
const char *loom_strerror(loom_err err);

/* The symbolic name of a code ("EINVAL"); never NULL. */
const char *loom_err_name(loom_err err);

/* The HTTP status an edge answers with for a code (EINVAL -> 400, ENOTFOUND -> 404, ...). */
int loom_err_http_status(loom_err err);

#define LOOM_ERROR_MSG_MAX 256

/* A code with its message. Zero-initialise it; loom_error_set fills both. */
struct loom_error {
    loom_err code;
    char msg[LOOM_ERROR_MSG_MAX];
};

/*
 * Record `code` and a printf-style message in `e` (which may be NULL) and return `code`, so that
 * `return loom_error_set(e, LOOM_EINVAL, "dims[%d] is negative", i);` reads as one step.
 * Messages longer than LOOM_ERROR_MSG_MAX are truncated.
 */
loom_err loom_error_set(struct loom_error *e, loom_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
loom_err loom_error_setv(struct loom_error *e, loom_err code, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

/* Like loom_error_set with LOOM_EIO, appending ": strerror(errno)" to the message. */
loom_err loom_error_errno(struct loom_error *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prepend "prefix: " to e's message, keeping its code; returns the code. */
loom_err loom_error_prefix(struct loom_error *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
