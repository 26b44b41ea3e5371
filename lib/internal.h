/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Declarations shared inside lib/ only (the loom__ prefix). The HTTP/1.1 parser is wrapped here
 * so that the rest of libloom never sees http-parser's API: swapping it for llhttp (which has
 * the same callback shape) means rewriting lib/h1.c alone.
 */
#ifndef LOOM_INTERNAL_H
#define LOOM_INTERNAL_H

#include <loom/core.h>
#include <loom/http.h>

#include <stdbool.h>
#include <stdint.h>

/* ---- SQLite (lib/store_sqlite.c) ---- */

struct sqlite3;

/* sqlite3_exec, tried again every 2 ms for up to timeout_ns while SQLite answers BUSY or
 * LOCKED at once, without its busy handler: switching a fresh file to WAL takes an exclusive
 * lock that way, and processes opening a new database together collide on it. Returns SQLite's
 * last result code. */
int loom__sqlite_exec_busy(struct sqlite3 *db, const char *sql, uint64_t timeout_ns);

/* ---- HTTP/1.1 message parser (lib/h1.c) ---- */

/* RFC 9110 checks shared by the HTTP server and client (lib/http.c): a field name is a
 * non-empty token (5.6.2); a field value has no CTL but tab (5.5). */
bool loom__http_token(struct loom_str s);
bool loom__http_field_value(struct loom_str s);

enum loom__h1_kind { LOOM__H1_REQUEST, LOOM__H1_RESPONSE };

/* Callbacks return 0 to go on and non-zero to stop with an error (the caller remembers why).
 * Data callbacks may be called several times for one item, with consecutive fragments. */
struct loom__h1_callbacks {
    int (*on_message_begin)(void *ud);
    int (*on_target)(void *ud, const char *at, size_t len);
    int (*on_header_name)(void *ud, const char *at, size_t len);
    int (*on_header_value)(void *ud, const char *at, size_t len);
    /* Return 0 to read a body if the message has one, 1 to declare there is none (a response to
     * HEAD), anything else for an error. */
    int (*on_headers_complete)(void *ud);
    /* A chunk of `len` bytes is announced (chunked bodies only; 0 for the last chunk). */
    int (*on_chunk_header)(void *ud, uint64_t len);
    int (*on_body)(void *ud, const char *at, size_t len);
    int (*on_message_complete)(void *ud);
};

enum loom__h1_status {
    LOOM__H1_MORE,    /* all input consumed, the message is not complete */
    LOOM__H1_MESSAGE, /* a message completed; parsing stopped right after it */
    LOOM__H1_ERROR,   /* malformed input or a callback refused it */
};

struct loom__h1_parser {
    _Alignas(16) unsigned char impl[64]; /* the wrapped parser's state */
    const struct loom__h1_callbacks *cb;
    void *ud;
    bool paused; /* a message completed and was delivered */
    /* Chunked bodies are decoded by the wrapper itself, strictly (see lib/h1.c). */
    bool chunked; /* decoding a chunked body now */
    uint8_t chunk_state;
    bool chunk_digits;   /* the size line has at least one digit */
    uint64_t chunk_left; /* size being read, then bytes of data left */
    uint32_t line_bytes; /* bytes of the current extension or trailer section */
    const char *error;   /* the wrapper's own error, when it found one */
    bool error_callback; /* the error came from a callback */
};

void loom__h1_init(struct loom__h1_parser *p, enum loom__h1_kind kind,
                   const struct loom__h1_callbacks *cb, void *ud);

/* Feed bytes; *used says how many were consumed. Stops after each complete message
 * (LOOM__H1_MESSAGE) so the caller can handle it before parsing a pipelined next one; call
 * loom__h1_resume before feeding again. */
enum loom__h1_status loom__h1_execute(struct loom__h1_parser *p, const char *data, size_t len,
                                      size_t *used);
void loom__h1_resume(struct loom__h1_parser *p);

/* Tell the parser the input ended (EOF): completes a response delimited by close. */
enum loom__h1_status loom__h1_finish(struct loom__h1_parser *p);

/* What the head said; valid from on_headers_complete on. */
enum loom_http_method loom__h1_method(const struct loom__h1_parser *p);
unsigned loom__h1_version_minor(const struct loom__h1_parser *p);
unsigned loom__h1_version_major(const struct loom__h1_parser *p);
int loom__h1_status_code(const struct loom__h1_parser *p);
bool loom__h1_keepalive(const struct loom__h1_parser *p);
bool loom__h1_chunked(const struct loom__h1_parser *p);
/* Content-Length if the message has one, else UINT64_MAX. */
uint64_t loom__h1_content_length(const struct loom__h1_parser *p);
bool loom__h1_upgrade(const struct loom__h1_parser *p);

/* A short description of the parse error ("invalid character in chunk size"). */
const char *loom__h1_error(const struct loom__h1_parser *p);
/* True if the error came from a callback rather than the parser. */
bool loom__h1_error_is_callback(const struct loom__h1_parser *p);

/* ---- HTTP server test hooks (lib/http_server.c) ---- */

/* Serve an already connected socket on `loop` as if it had been accepted (fuzz drivers feed a
 * socketpair through the real connection state machine this way). */
void loom__http_server_adopt(struct loom_http_server *s, struct loom_loop *loop, int fd);

#endif
