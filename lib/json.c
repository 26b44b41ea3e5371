/* SPDX-License-Identifier: Apache-2.0 */
/* JSON tokenizer and writer (being completed). */
#include <loom/json.h>

/* Length of the valid UTF-8 sequence at p (1..4), or 0 if it is not one (RFC 3629: no
 * overlongs, no surrogates, nothing above U+10FFFF). */
static size_t utf8_seq_len(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return n >= 2 && (p[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if (n < 3 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80)
            return 0;
        if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f))
            return 0;
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if (n < 4 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80)
            return 0;
        if ((c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] > 0x8f))
            return 0;
        return 4;
    }
    return 0;
}

loom_err loom_json_escape(struct loom_buf *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    loom_err err = loom_buf_putc(out, '"');
    while (!err && p < end) {
        /* Copy the longest run that needs no escaping in one append. */
        const unsigned char *run = p;
        while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
            p++;
        if (p > run && (err = loom_buf_append(out, run, (size_t)(p - run))))
            break;
        if (p == end)
            break;
        unsigned c = *p;
        if (c >= 0x80) {
            size_t len = utf8_seq_len(p, (size_t)(end - p));
            if (len) {
                err = loom_buf_append(out, p, len);
                p += len;
            } else {
                err = loom_buf_append(out, "\\ufffd", 6);
                p++;
            }
            continue;
        }
        char esc[6] = { '\\', 0 };
        size_t elen = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        default:
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            elen = 6;
        }
        err = loom_buf_append(out, esc, elen);
        p++;
    }
    return err ? err : loom_buf_putc(out, '"');
}
