/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer driver for lib/jwt.c. The first byte of an input picks what the rest is:
 *
 *   'T' a compact token, verified as received against a fixed key set (the gateway's view:
 *       anything an unauthenticated client can send);
 *   'S' a header and a payload separated by the first NUL, signed with the fixed key first, so
 *       the fuzzer reaches the claim checks that only run after a valid signature;
 *   'K' a JWK Set document, parsed, and every key it yields written back and parsed again.
 *
 * Whatever the input, verification returns one of the documented codes (never an internal
 * error), claims returned on success obey their contract, and nothing reads outside the input
 * (each is an exactly-sized heap copy). The key is a constant test key, so crashes reproduce.
 */
#include <loom/core.h>
#include <loom/json.h>
#include <loom/jwt.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond)                                                                \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                     \
        }                                                                                \
    } while (0)

/* A throwaway P-256 test key: never use it for anything else. */
static const char test_key_pem[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgC542Ro1zP+/js0Aq\n"
    "i0OaDuUPSsKXYIQSJ4PECGbaEgWhRANCAAQeaaru6DKbqkuVx2JkNv1XnP3CMcPH\n"
    "Y9TAdWihDC8wPjUfbw3wDuTJJy9FPJSJiaLFvgbf2H7bGtTcdGmE8u4z\n"
    "-----END PRIVATE KEY-----\n";

static const struct loom_jwt_expect expect = {
    .issuer = "https://id.loom.test",
    .audience = "loom",
    .now = 1700000000,
    .leeway = 30,
};

/* The fuzzer's fixed state, built on first use and kept for the process. */
static struct loom_jwk *fuzz_key;
static struct loom_jwks *fuzz_set;

static void setup(void)
{
    if (fuzz_set)
        return;
    struct loom_error err = { 0 };
    if (loom_jwk_from_pem(LOOM_JWT_ES256, "fuzz-1", loom_str_cstr(test_key_pem), &fuzz_key, &err)) {
        fprintf(stderr, "fuzz key: %s\n", err.msg);
        abort();
    }
    fuzz_set = loom_jwks_new();
    FUZZ_ASSERT(loom_jwks_add(fuzz_set, fuzz_key, &err) == LOOM_OK);
}

static bool printable(struct loom_str s)
{
    for (size_t i = 0; i < s.len; i++)
        if ((unsigned char)s.ptr[i] < 0x20 || s.ptr[i] == 0x7f)
            return false;
    return true;
}

static void verify(const char *tok, size_t n)
{
    struct loom_arena arena;
    loom_arena_init(&arena, 0);
    struct loom_jwt_claims c;
    struct loom_error err = { 0 };
    loom_err e = loom_jwt_verify(fuzz_set, loom_str_make(tok, n), &expect, &arena, &c, &err);
    switch (e) {
    case LOOM_OK:
        FUZZ_ASSERT(loom_str_eq_cstr(c.iss, expect.issuer));
        FUZZ_ASSERT(loom_str_eq_cstr(c.aud, expect.audience));
        FUZZ_ASSERT(c.sub.len && c.jti.len && c.client_id.len);
        FUZZ_ASSERT(expect.now < c.exp + expect.leeway);
        FUZZ_ASSERT(loom_str_eq_cstr(c.kid, "fuzz-1"));
        FUZZ_ASSERT(printable(c.sub) && printable(c.jti) && printable(c.client_id));
        FUZZ_ASSERT(printable(c.iss) && printable(c.scope));
        FUZZ_ASSERT(c.payload.len > 0 && c.payload.ptr[0] == '{');
        break;
    case LOOM_ETOOBIG:
    case LOOM_EPARSE:
    case LOOM_EINVAL:
    case LOOM_EUNSUPPORTED:
    case LOOM_ENOTFOUND:
    case LOOM_EUNAUTH:
    case LOOM_ETIMEDOUT:
    case LOOM_EAGAIN:
    case LOOM_ECONFLICT:
    case LOOM_EFORBIDDEN:
        FUZZ_ASSERT(err.msg[0] != '\0');
        FUZZ_ASSERT(strcmp(loom_jwt_reason(e), "error") != 0);
        break;
    default:
        fprintf(stderr, "unexpected verify result %s: %s\n", loom_err_name(e), err.msg);
        abort();
    }
    loom_arena_release(&arena);
}

static void sign_and_verify(const char *p, size_t n)
{
    const char *nul = memchr(p, '\0', n);
    if (!nul)
        return;
    struct loom_str header = loom_str_make(p, (size_t)(nul - p));
    struct loom_str payload = loom_str_make(nul + 1, n - header.len - 1);
    struct loom_buf tok;
    loom_buf_init(&tok, 0);
    struct loom_error err = { 0 };
    FUZZ_ASSERT(loom_jws_sign_raw(fuzz_key, header, payload, &tok, &err) == LOOM_OK);
    /* An exactly-sized copy, so ASan sees a read past the token's end. */
    char *copy = malloc(tok.len ? tok.len : 1);
    memcpy(copy, tok.data, tok.len);
    verify(copy, tok.len);
    free(copy);
    loom_buf_release(&tok);
}

static void jwks(const char *p, size_t n)
{
    struct loom_jwks *set = NULL;
    struct loom_error err = { 0 };
    loom_err e = loom_jwks_parse(p, n, &set, &err);
    if (e) {
        FUZZ_ASSERT(err.msg[0] != '\0');
        FUZZ_ASSERT(e == LOOM_EPARSE || e == LOOM_ETOOBIG || e == LOOM_EINVAL ||
                    e == LOOM_EUNSUPPORTED || e == LOOM_EEXIST);
        return;
    }
    /* What we parsed, we can write, and it parses back to the same kids and thumbprints. */
    struct loom_buf out;
    loom_buf_init(&out, 0);
    FUZZ_ASSERT(loom_jwks_write(set, &out) == LOOM_OK);
    struct loom_jwks *again = NULL;
    FUZZ_ASSERT(loom_jwks_parse(out.data, out.len, &again, &err) == LOOM_OK);
    FUZZ_ASSERT(loom_jwks_count(again) == loom_jwks_count(set));
    for (size_t i = 0; i < loom_jwks_count(set); i++) {
        const struct loom_jwk *a = loom_jwks_at(set, i), *b = loom_jwks_at(again, i);
        char ta[LOOM_JWK_THUMBPRINT_LEN + 1], tb[LOOM_JWK_THUMBPRINT_LEN + 1];
        loom_jwk_thumbprint(a, ta);
        loom_jwk_thumbprint(b, tb);
        FUZZ_ASSERT(strcmp(ta, tb) == 0);
        FUZZ_ASSERT(strcmp(loom_jwk_kid(a), loom_jwk_kid(b)) == 0);
        FUZZ_ASSERT(!loom_jwk_is_private(a));
    }
    loom_jwks_unref(again);
    loom_jwks_unref(set);
    loom_buf_release(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 64 * 1024)
        return 0;
    setup();
    size_t n = size - 1;
    char *copy = malloc(n ? n : 1);
    memcpy(copy, data + 1, n);
    switch (data[0]) {
    case 'T':
        verify(copy, n);
        break;
    case 'S':
        sign_and_verify(copy, n);
        break;
    case 'K':
        jwks(copy, n);
        break;
    default:
        break;
    }
    free(copy);
    return 0;
}
