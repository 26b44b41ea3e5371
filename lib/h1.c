/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The one file that knows http-parser (Debian's libhttp-parser 2.9). It adapts the parser to
 * loom__h1_*: messages are delivered one at a time by pausing in on_message_complete, which is
 * what lets the server answer pipelined requests in order without buffering them all.
 * http-parser 2.9.4 already refuses Content-Length together with Transfer-Encoding: chunked
 * (HPE_UNEXPECTED_CONTENT_LENGTH), repeated differing Content-Length, bad chunk sizes and bare
 * LF line endings in strict mode; the header size limit is enforced by the caller, so the
 * parser's own global limit is raised out of the way.
 */
#include "internal.h"

#include <http_parser.h>
#include <pthread.h>

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

static int cb_headers(http_parser *hp)
{
    struct loom__h1_parser *p = outer(hp);
    int r = p->cb->on_headers_complete ? p->cb->on_headers_complete(p->ud) : 0;
    /* http-parser reads 1 as "skip the body" and 2 as "upgrade, skip body"; keep other values
     * as errors. */
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
}

enum loom__h1_status loom__h1_execute(struct loom__h1_parser *p, const char *data, size_t len,
                                      size_t *used)
{
    http_parser *hp = impl(p);
    size_t n = http_parser_execute(hp, &settings, data, len);
    enum http_errno e = HTTP_PARSER_ERRNO(hp);
    if (p->paused) {
        /* Paused in on_message_complete: the parser stopped right after the message. With a
         * paused parser http-parser reports the bytes up to and including the one that ended
         * the message. */
        *used = n;
        return LOOM__H1_MESSAGE;
    }
    *used = n;
    if (e != HPE_OK)
        return LOOM__H1_ERROR;
    if (hp->upgrade) {
        /* Upgrade (e.g. h2c, websocket) is not supported: report it as an error the server
         * answers with 400 rather than treating the rest of the stream as HTTP/1.1. */
        return LOOM__H1_ERROR;
    }
    return LOOM__H1_MORE;
}

void loom__h1_resume(struct loom__h1_parser *p)
{
    if (p->paused) {
        p->paused = false;
        http_parser_pause(impl(p), 0);
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
    const http_parser *hp = cimpl(p);
    if (hp->upgrade && HTTP_PARSER_ERRNO(hp) == HPE_OK)
        return "protocol upgrade is not supported";
    return http_errno_description(HTTP_PARSER_ERRNO(hp));
}

bool loom__h1_error_is_callback(const struct loom__h1_parser *p)
{
    enum http_errno e = HTTP_PARSER_ERRNO(cimpl(p));
    return e >= HPE_CB_message_begin && e <= HPE_CB_chunk_complete;
}
