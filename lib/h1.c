/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The one file that knows http-parser (Debian's libhttp-parser 2.9). It adapts the parser to
 * loom__h1_*: messages are delivered one at a time by pausing in on_message_complete, which is
 * what lets the server answer pipelined requests in order without buffering them all.
 * http-parser refuses Content-Length together with Transfer-Encoding: chunked
 * (HPE_UNEXPECTED_CONTENT_LENGTH) and repeated differing Content-Length. Debian builds it
 * without HTTP_PARSER_STRICT, though, and then it takes any two bytes after chunk data as the
 * CRLF, a request smuggling vector; so chunked bodies are decoded here instead, strictly: the
 * parser is told the message has no body and paused after the head, and decode_chunked reads
 * sizes, extensions, data, the CRLF after each chunk and the trailer section, refusing anything
 * else. The header size limit is enforced by the caller, so the parser's own global limit is
 * raised out of the way.
 */
#include "internal.h"

#include <http_parser.h>
#include <pthread.h>
#include <string.h>

_Static_assert(sizeof(http_parser) <= sizeof(((struct loom__h1_parser *)0)->impl),
               "http_parser does not fit in loom__h1_parser");

static http_parser *impl(struct loom__h1_parser *p)
{
    return (http_parser *)(void *)p->impl;
}

static const http_parser *cimpl(const struct loom__h1_parser *p)
{
    return (const http_parser *)(const void *)p->impl;
}

static struct loom__h1_parser *outer(http_parser *hp)
{
    return hp->data;
}

static int cb_begin(http_parser *hp)
{
    struct loom__h1_parser *p = outer(hp);
    return p->cb->on_message_begin ? p->cb->on_message_begin(p->ud) : 0;
}

#define DATA_CB(name, field)                                     \
    static int name(http_parser *hp, const char *at, size_t len) \
    {                                                            \
        struct loom__h1_parser *p = outer(hp);                   \
        return p->cb->field ? p->cb->field(p->ud, at, len) : 0;  \
    }
DATA_CB(cb_url, on_target)
DATA_CB(cb_field, on_header_name)
DATA_CB(cb_value, on_header_value)
DATA_CB(cb_body, on_body)

enum {
    CS_SIZE,         /* hex digits of a chunk size */
    CS_SIZE_WS,      /* whitespace after the size */
    CS_EXT,          /* a chunk extension, up to CR */
    CS_SIZE_LF,      /* LF ending the size line */
    CS_DATA,         /* chunk_left bytes of data */
    CS_DATA_CR,      /* CR after the data */
    CS_DATA_LF,      /* LF after the data */
    CS_TRAILER,      /* start of a trailer line (CR here ends the message) */
    CS_TRAILER_NAME, /* a trailer field name, up to ':' */
    CS_TRAILER_IN,   /* a trailer field value, up to CR */
    CS_TRAILER_LF,   /* LF ending a trailer line */
    CS_END_LF,       /* LF ending the message */
    CS_DONE,
};

#define CHUNK_SIZE_MAX ((uint64_t)1 << 60)
#define CHUNK_LINE_MAX 8192 /* bytes of extensions per size line, and of trailers */

static int cb_headers(http_parser *hp)
{
    struct loom__h1_parser *p = outer(hp);
    int r = p->cb->on_headers_complete ? p->cb->on_headers_complete(p->ud) : 0;
    /* http-parser reads 1 as "skip the body" and 2 as "upgrade, skip body"; keep other values
     * as errors. A chunked body is ours to decode: the parser skips it. */
    if (r == 0 && (hp->flags & F_CHUNKED)) {
        p->chunked = true;
        p->chunk_state = CS_SIZE;
        p->chunk_left = 0;
        p->chunk_digits = false;
        p->line_bytes = 0;
        return 1;
    }
    return r == 0 || r == 1 ? r : -1;
}

static int cb_chunk(http_parser *hp)
{
    struct loom__h1_parser *p = outer(hp);
    return p->cb->on_chunk_header ? p->cb->on_chunk_header(p->ud, hp->content_length) : 0;
}

static int cb_complete(http_parser *hp)
{
    struct loom__h1_parser *p = outer(hp);
    if (p->chunked) {
        /* The head of a chunked message: stop here; decode_chunked takes over. */
        http_parser_pause(hp, 1);
        return 0;
    }
    int r = p->cb->on_message_complete ? p->cb->on_message_complete(p->ud) : 0;
    if (r == 0) {
        p->paused = true;
        http_parser_pause(hp, 1);
    }
    return r;
}

static const http_parser_settings settings = {
    .on_message_begin = cb_begin,
    .on_url = cb_url,
    .on_header_field = cb_field,
    .on_header_value = cb_value,
    .on_headers_complete = cb_headers,
    .on_body = cb_body,
    .on_message_complete = cb_complete,
    .on_chunk_header = cb_chunk,
};

static pthread_once_t limit_once = PTHREAD_ONCE_INIT;

static void raise_limit(void)
{
    /* The server counts head bytes itself, against its own configurable limit. */
    http_parser_set_max_header_size(1u << 30);
}

void loom__h1_init(struct loom__h1_parser *p, enum loom__h1_kind kind,
                   const struct loom__h1_callbacks *cb, void *ud)
{
    pthread_once(&limit_once, raise_limit);
    http_parser_init(impl(p), kind == LOOM__H1_REQUEST ? HTTP_REQUEST : HTTP_RESPONSE);
    impl(p)->data = p;
    p->cb = cb;
    p->ud = ud;
    p->paused = false;
    p->chunked = false;
    p->error = NULL;
    p->error_callback = false;
}

static bool is_hex(unsigned char c, unsigned *v)
{
    if (c >= '0' && c <= '9')
        *v = c - '0';
    else if (c >= 'a' && c <= 'f')
        *v = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F')
        *v = c - 'A' + 10;
    else
        return false;
    return true;
}

static enum loom__h1_status chunk_fail(struct loom__h1_parser *p, const char *why)
{
    p->error = why;
    p->chunk_state = CS_DONE;
    return LOOM__H1_ERROR;
}

static bool is_ctl(unsigned char c)
{
    return (c < 0x20 && c != '\t') || c == 0x7f;
}

/* RFC 9110 5.6.2 tchar. */
static bool is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Decode chunked framing from data[0..len); *used says how much was consumed. */
static enum loom__h1_status decode_chunked(struct loom__h1_parser *p, const char *data, size_t len,
                                           size_t *used)
{
    size_t i = 0;
    enum loom__h1_status st = LOOM__H1_MORE;
    while (i < len && st == LOOM__H1_MORE) {
        unsigned char c = (unsigned char)data[i];
        unsigned v;
        switch (p->chunk_state) {
        case CS_SIZE:
            if (is_hex(c, &v)) {
                if (p->chunk_left >= CHUNK_SIZE_MAX / 16) {
                    st = chunk_fail(p, "chunk size too large");
                    break;
                }
                p->chunk_left = p->chunk_left * 16 + v;
                p->chunk_digits = true;
            } else if (!p->chunk_digits) {
                st = chunk_fail(p, "invalid character in chunk size");
            } else if (c == ' ' || c == '\t') {
                p->chunk_state = CS_SIZE_WS;
            } else if (c == ';') {
                p->chunk_state = CS_EXT;
            } else if (c == '\r') {
                p->chunk_state = CS_SIZE_LF;
            } else {
                st = chunk_fail(p, "invalid character in chunk size");
            }
            i++;
            break;
        case CS_SIZE_WS:
            if (c == ';')
                p->chunk_state = CS_EXT;
            else if (c == '\r')
                p->chunk_state = CS_SIZE_LF;
            else if (c != ' ' && c != '\t')
                st = chunk_fail(p, "invalid character after chunk size");
            i++;
            break;
        case CS_EXT:
            if (c == '\r')
                p->chunk_state = CS_SIZE_LF;
            else if (is_ctl(c))
                st = chunk_fail(p, "invalid character in chunk extension");
            else if (++p->line_bytes > CHUNK_LINE_MAX)
                st = chunk_fail(p, "chunk extension too long");
            i++;
            break;
        case CS_SIZE_LF:
            if (c != '\n') {
                st = chunk_fail(p, "expected CRLF after chunk size");
                break;
            }
            i++;
            p->line_bytes = 0;
            p->chunk_digits = false;
            if (p->cb->on_chunk_header && p->cb->on_chunk_header(p->ud, p->chunk_left)) {
                p->error_callback = true;
                st = chunk_fail(p, "chunk refused");
                break;
            }
            p->chunk_state = p->chunk_left ? CS_DATA : CS_TRAILER;
            break;
        case CS_DATA: {
            size_t n = (size_t)LOOM_MIN((uint64_t)(len - i), p->chunk_left);
            if (p->cb->on_body && p->cb->on_body(p->ud, data + i, n)) {
                p->error_callback = true;
                st = chunk_fail(p, "body refused");
                break;
            }
            i += n;
            p->chunk_left -= n;
            if (p->chunk_left == 0)
                p->chunk_state = CS_DATA_CR;
            break;
        }
        case CS_DATA_CR:
            if (c != '\r')
                st = chunk_fail(p, "expected CRLF after chunk data");
            p->chunk_state = CS_DATA_LF;
            i++;
            break;
        case CS_DATA_LF:
            if (c != '\n')
                st = chunk_fail(p, "expected CRLF after chunk data");
            p->chunk_state = CS_SIZE;
            i++;
            break;
        case CS_TRAILER:
        case CS_TRAILER_NAME:
            if (c == '\r' && p->chunk_state == CS_TRAILER)
                p->chunk_state = CS_END_LF;
            else if (c == ':' && p->chunk_state == CS_TRAILER_NAME)
                p->chunk_state = CS_TRAILER_IN;
            else if (is_tchar(c))
                p->chunk_state = CS_TRAILER_NAME;
            else
                st = chunk_fail(p, "invalid trailer field name");
            if (++p->line_bytes > CHUNK_LINE_MAX)
                st = chunk_fail(p, "trailer section too long");
            i++;
            break;
        case CS_TRAILER_IN:
            if (c == '\r')
                p->chunk_state = CS_TRAILER_LF;
            else if (is_ctl(c))
                st = chunk_fail(p, "invalid character in trailer");
            else if (++p->line_bytes > CHUNK_LINE_MAX)
                st = chunk_fail(p, "trailer section too long");
            i++;
            break;
        case CS_TRAILER_LF:
            if (c != '\n')
                st = chunk_fail(p, "expected CRLF after a trailer line");
            p->chunk_state = CS_TRAILER;
            i++;
            break;
        case CS_END_LF:
            if (c != '\n') {
                st = chunk_fail(p, "expected CRLF ending the chunked body");
                break;
            }
            i++;
            p->chunk_state = CS_DONE;
            p->chunked = false;
            if (p->cb->on_message_complete && p->cb->on_message_complete(p->ud)) {
                p->error_callback = true;
                st = chunk_fail(p, "message refused");
                break;
            }
            p->paused = true; /* http-parser stays paused until loom__h1_resume */
            st = LOOM__H1_MESSAGE;
            break;
        default:
            st = chunk_fail(p, "chunked body after an error");
        }
    }
    *used = i;
    return st;
}

enum loom__h1_status loom__h1_execute(struct loom__h1_parser *p, const char *data, size_t len,
                                      size_t *used)
{
    http_parser *hp = impl(p);
    size_t n = 0;
    if (!p->chunked) {
        n = http_parser_execute(hp, &settings, data, len);
        enum http_errno e = HTTP_PARSER_ERRNO(hp);
        if (p->paused) {
            /* Paused in on_message_complete: the parser stopped right after the message. */
            *used = n;
            return LOOM__H1_MESSAGE;
        }
        if (!p->chunked) {
            *used = n;
            if (e != HPE_OK)
                return LOOM__H1_ERROR;
            /* Upgrade (e.g. h2c, websocket) is not supported: report it as an error the server
             * answers with 400 rather than treating the rest of the stream as HTTP/1.1. */
            return hp->upgrade ? LOOM__H1_ERROR : LOOM__H1_MORE;
        }
        /* Paused after the head of a chunked message: decode its body from here. */
    }
    size_t m = 0;
    enum loom__h1_status st = decode_chunked(p, data + n, len - n, &m);
    *used = n + m;
    return st;
}

void loom__h1_resume(struct loom__h1_parser *p)
{
    if (!p->paused)
        return;
    p->paused = false;
    http_parser *hp = impl(p);
    if (hp->upgrade) {
        /* An Upgrade request without a body was answered as plain HTTP/1.1 (the upgrade
         * ignored, as RFC 9110 allows): start afresh for the next message. */
        enum http_parser_type type = (enum http_parser_type)hp->type;
        http_parser_init(hp, type);
        hp->data = p;
    } else {
        http_parser_pause(hp, 0);
    }
}

enum loom__h1_status loom__h1_finish(struct loom__h1_parser *p)
{
    size_t used;
    return loom__h1_execute(p, NULL, 0, &used);
}

enum loom_http_method loom__h1_method(const struct loom__h1_parser *p)
{
    switch (cimpl(p)->method) {
    case HTTP_GET:
        return LOOM_HTTP_GET;
    case HTTP_HEAD:
        return LOOM_HTTP_HEAD;
    case HTTP_POST:
        return LOOM_HTTP_POST;
    case HTTP_PUT:
        return LOOM_HTTP_PUT;
    case HTTP_DELETE:
        return LOOM_HTTP_DELETE;
    case HTTP_PATCH:
        return LOOM_HTTP_PATCH;
    case HTTP_OPTIONS:
        return LOOM_HTTP_OPTIONS;
    default:
        return LOOM_HTTP_OTHER;
    }
}

unsigned loom__h1_version_minor(const struct loom__h1_parser *p)
{
    return cimpl(p)->http_minor;
}

unsigned loom__h1_version_major(const struct loom__h1_parser *p)
{
    return cimpl(p)->http_major;
}

int loom__h1_status_code(const struct loom__h1_parser *p)
{
    return (int)cimpl(p)->status_code;
}

bool loom__h1_keepalive(const struct loom__h1_parser *p)
{
    return http_should_keep_alive(cimpl(p)) != 0;
}

bool loom__h1_chunked(const struct loom__h1_parser *p)
{
    return (cimpl(p)->flags & F_CHUNKED) != 0;
}

uint64_t loom__h1_content_length(const struct loom__h1_parser *p)
{
    const http_parser *hp = cimpl(p);
    return (hp->flags & F_CONTENTLENGTH) ? hp->content_length : UINT64_MAX;
}

bool loom__h1_upgrade(const struct loom__h1_parser *p)
{
    return cimpl(p)->upgrade != 0;
}

const char *loom__h1_error(const struct loom__h1_parser *p)
{
    if (p->error)
        return p->error;
    const http_parser *hp = cimpl(p);
    if (hp->upgrade && HTTP_PARSER_ERRNO(hp) == HPE_OK)
        return "protocol upgrade is not supported";
    return http_errno_description(HTTP_PARSER_ERRNO(hp));
}

bool loom__h1_error_is_callback(const struct loom__h1_parser *p)
{
    if (p->error)
        return p->error_callback;
    enum http_errno e = HTTP_PARSER_ERRNO(cimpl(p));
    return e >= HPE_CB_message_begin && e <= HPE_CB_chunk_complete;
}
