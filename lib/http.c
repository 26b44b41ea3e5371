/* SPDX-License-Identifier: Apache-2.0 */
/* HTTP pieces shared by the server and the client: method and status names, header lookup,
 * percent-decoding, the Allow list. */
#include "internal.h"

#include <loom/http.h>

#include <stdint.h>
#include <string.h>

static const char *const method_names[LOOM_HTTP__METHODS] = {
    [LOOM_HTTP_OTHER] = "OTHER", [LOOM_HTTP_GET] = "GET",         [LOOM_HTTP_HEAD] = "HEAD",
    [LOOM_HTTP_POST] = "POST",   [LOOM_HTTP_PUT] = "PUT",         [LOOM_HTTP_DELETE] = "DELETE",
    [LOOM_HTTP_PATCH] = "PATCH", [LOOM_HTTP_OPTIONS] = "OPTIONS",
};

const char *loom_http_method_name(enum loom_http_method m)
{
    return (unsigned)m < LOOM_HTTP__METHODS ? method_names[m] : "OTHER";
}

enum loom_http_method loom_http_method_parse(struct loom_str name)
{
    for (int m = 1; m < LOOM_HTTP__METHODS; m++)
        if (loom_str_eq_cstr(name, method_names[m]))
            return (enum loom_http_method)m;
    return LOOM_HTTP_OTHER;
}

const char *loom_http_status_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 207:
        return "Multi-Status";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 416:
        return "Range Not Satisfiable";
    case 417:
        return "Expectation Failed";
    case 422:
        return "Unprocessable Content";
    case 425:
        return "Too Early";
    case 428:
        return "Precondition Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 499:
        return "Client Closed Request";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

struct loom_str loom_http_header_get(const struct loom_http_header *h, size_t n, const char *name,
                                     bool *found)
{
    struct loom_str want = loom_str_cstr(name);
    for (size_t i = 0; i < n; i++) {
        if (loom_str_ieq(h[i].name, want)) {
            if (found)
                *found = true;
            return h[i].value;
        }
    }
    if (found)
        *found = false;
    return LOOM_STR_NULL;
}

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

loom_err loom_http_url_decode(struct loom_str in, bool plus_is_space, struct loom_arena *a,
                              struct loom_str *out)
{
    size_t i = 0;
    while (i < in.len && in.ptr[i] != '%' && !(plus_is_space && in.ptr[i] == '+'))
        i++;
    if (i == in.len) {
        *out = in; /* nothing to decode: keep the slice */
        return LOOM_OK;
    }
    char *dst = loom_arena_alloc(a, in.len + 1);
    memcpy(dst, in.ptr, i);
    size_t n = i;
    for (; i < in.len; i++) {
        char c = in.ptr[i];
        if (c == '%') {
            if (i + 2 >= in.len)
                return LOOM_EINVAL;
            int hi = hexval(in.ptr[i + 1]), lo = hexval(in.ptr[i + 2]);
            if (hi < 0 || lo < 0)
                return LOOM_EINVAL;
            dst[n++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            dst[n++] = plus_is_space && c == '+' ? ' ' : c;
        }
    }
    dst[n] = '\0';
    *out = loom_str_make(dst, n);
    return LOOM_OK;
}

size_t loom_http_allow_list(unsigned allowed, char *out, size_t cap)
{
    size_t n = 0;
    if (cap)
        out[0] = '\0';
    for (int m = 1; m < LOOM_HTTP__METHODS; m++) {
        if (!(allowed & (1u << m)))
            continue;
        const char *name = method_names[m];
        size_t len = strlen(name) + (n ? 2 : 0);
        if (n + len + 1 > cap)
            break;
        if (n) {
            memcpy(out + n, ", ", 2);
            n += 2;
        }
        memcpy(out + n, name, strlen(name));
        n += strlen(name);
        out[n] = '\0';
    }
    return n;
}

/* RFC 9110 5.6.2: tchar, for the ASCII half (bytes from 0x80 are not tchars). */
static const unsigned char tchar[128] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 1, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0,
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 0,
};

bool loom__http_token(struct loom_str s)
{
    if (s.len == 0)
        return false;
    unsigned char ok = 1;
    for (size_t i = 0; i < s.len; i++) {
        unsigned char ch = (unsigned char)s.ptr[i];
        ok &= ch < 128 && tchar[ch];
    }
    return ok;
}

static bool field_bytes_ok(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((p[i] < 0x20 && p[i] != '\t') || p[i] == 0x7f)
            return false;
    return true;
}

/*
 * RFC 9110 5.5: a field value is visible characters, spaces, tabs and obs-text; no other CTL.
 * Eight bytes at a time: a word with no byte below 0x20 and none equal to 0x7f is fine as it is
 * ("has a byte less than n" and "has a zero byte", from Bit Twiddling Hacks); only a word that
 * may hold one, a tab being the usual case, is looked at byte by byte. Token values of a few
 * hundred bytes (a bearer token) pass through every proxied request.
 */
bool loom__http_field_value(struct loom_str s)
{
    const unsigned char *p = (const unsigned char *)s.ptr;
    size_t i = 0;
    for (; i + 8 <= s.len; i += 8) {
        uint64_t x, y;
        memcpy(&x, p + i, 8);
        y = x ^ 0x7f7f7f7f7f7f7f7fULL;
        uint64_t ctl = (x - 0x2020202020202020ULL) & ~x & 0x8080808080808080ULL;
        uint64_t del = (y - 0x0101010101010101ULL) & ~y & 0x8080808080808080ULL;
        if ((ctl | del) && !field_bytes_ok(p + i, 8))
            return false;
    }
    return field_bytes_ok(p + i, s.len - i);
}
