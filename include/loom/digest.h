/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Digests: SHA-256 over OpenSSL's EVP interface, fed incrementally (an artifact is hashed while
 * it streams in), with the lowercase hex form loom uses for content addresses ("sha256:<hex>").
 */
#ifndef LOOM_DIGEST_H
#define LOOM_DIGEST_H

#include <loom/core.h>

#include <stdbool.h>
#include <stdint.h>

#define LOOM_SHA256_LEN 32
#define LOOM_SHA256_HEX (2 * LOOM_SHA256_LEN + 1)

struct loom_sha256 {
    void *ctx; /* EVP_MD_CTX */
};

/* Start a digest. Aborts if OpenSSL cannot (out of memory). */
void loom_sha256_init(struct loom_sha256 *h);
void loom_sha256_update(struct loom_sha256 *h, const void *data, size_t n);
/* Finish: the 32 bytes into out, and the context is released. */
void loom_sha256_final(struct loom_sha256 *h, uint8_t out[LOOM_SHA256_LEN]);
/* Release a digest without finishing it. */
void loom_sha256_abandon(struct loom_sha256 *h);

/* One call: the digest of data. */
void loom_sha256(const void *data, size_t n, uint8_t out[LOOM_SHA256_LEN]);

/* Lowercase hex into out (LOOM_SHA256_HEX bytes, NUL-terminated). */
void loom_hex(const uint8_t *bytes, size_t n, char *out);

/* Is s exactly 64 lowercase hex digits? */
bool loom_sha256_hex_valid(struct loom_str s);

#endif
