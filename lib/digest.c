/* SPDX-License-Identifier: Apache-2.0 */
/* SHA-256 on OpenSSL's EVP interface, and hex. */
#include <loom/digest.h>

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>

static void die(const char *what)
{
    fprintf(stderr, "{\"level\":\"fatal\",\"msg\":\"%s failed\"}\n", what);
    abort();
}

void loom_sha256_init(struct loom_sha256 *h)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
        die("EVP_DigestInit_ex(sha256)");
    h->ctx = ctx;
}

void loom_sha256_update(struct loom_sha256 *h, const void *data, size_t n)
{
    if (n && EVP_DigestUpdate(h->ctx, data, n) != 1)
        die("EVP_DigestUpdate");
}

void loom_sha256_final(struct loom_sha256 *h, uint8_t out[LOOM_SHA256_LEN])
{
    unsigned len = 0;
    if (EVP_DigestFinal_ex(h->ctx, out, &len) != 1 || len != LOOM_SHA256_LEN)
        die("EVP_DigestFinal_ex");
    loom_sha256_abandon(h);
}

void loom_sha256_abandon(struct loom_sha256 *h)
{
    EVP_MD_CTX_free(h->ctx);
    h->ctx = NULL;
}

void loom_sha256(const void *data, size_t n, uint8_t out[LOOM_SHA256_LEN])
{
    struct loom_sha256 h;
    loom_sha256_init(&h);
    loom_sha256_update(&h, data, n);
    loom_sha256_final(&h, out);
}

void loom_hex(const uint8_t *bytes, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * n] = '\0';
}

bool loom_sha256_hex_valid(struct loom_str s)
{
    if (s.len != 2 * LOOM_SHA256_LEN)
        return false;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.ptr[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return true;
}
