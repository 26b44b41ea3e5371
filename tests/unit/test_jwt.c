/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests for lib/jwt.c: base64url, keys (generation, PEM, JWK, thumbprints), JWK sets
 * (parsing and the keys they refuse), signing round trips for ES256 and RS256, and a catalogue
 * of forged and broken tokens, each of which must be refused with its own reason: the
 * algorithm-confusion family (none, HS256 keyed with the public key, RS256 on an EC key, ES384),
 * unknown and missing kids, time claims at and past their boundaries, issuer and audience,
 * encoding tricks (padding, the standard alphabet, whitespace, NUL, trailing bytes, part
 * counts), signature tricks (empty, truncated, DER, high s, r or s out of range), size limits,
 * JSON tricks (non-objects, duplicate keys, depth bombs, wrong types) and header extensions
 * (crit, typ, embedded keys). Forged tokens with a valid signature are made with
 * loom_jws_sign_raw, so each case breaks exactly one rule.
 */
#include "check.h"

#include <loom/json.h>
#include <loom/jwt.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NOW    1700000000LL
#define ISS    "https://id.loom.test"
#define AUD    "loom"
#define LEEWAY 30

/* The usual claims (without exp, nbf and iat), for payloads written out by hand. */
#define BASE                                                                                 \
    "\"iss\":\"" ISS "\",\"sub\":\"cl_1\",\"aud\":\"" AUD "\",\"jti\":\"j1\",\"client_id\":" \
    "\"cl_1\",\"scope\":\"infer models:read\""
#define TIMES        "\"exp\":1700000600,\"nbf\":1700000000,\"iat\":1700000000"
#define GOOD_PAYLOAD "{" BASE "," TIMES "}"

struct fixture {
    struct loom_jwk *ec, *ec_other, *rsa, *rsa_other;
    struct loom_jwks *set; /* ec and rsa */
};

static struct fixture fx;

static int forged_total, forged_expected;

static void fixture_init(void)
{
    struct loom_error err = { 0 };
    CHECK_INT(loom_jwk_generate(LOOM_JWT_ES256, "ec-1", &fx.ec, &err), LOOM_OK);
    CHECK_INT(loom_jwk_generate(LOOM_JWT_ES256, "ec-1", &fx.ec_other, &err), LOOM_OK);
    CHECK_INT(loom_jwk_generate(LOOM_JWT_RS256, "rsa-1", &fx.rsa, &err), LOOM_OK);
    CHECK_INT(loom_jwk_generate(LOOM_JWT_RS256, "rsa-1", &fx.rsa_other, &err), LOOM_OK);
    fx.set = loom_jwks_new();
    CHECK_INT(loom_jwks_add(fx.set, fx.ec, &err), LOOM_OK);
    CHECK_INT(loom_jwks_add(fx.set, fx.rsa, &err), LOOM_OK);
}

static void fixture_release(void)
{
    loom_jwks_unref(fx.set);
    loom_jwk_unref(fx.ec);
    loom_jwk_unref(fx.ec_other);
    loom_jwk_unref(fx.rsa);
    loom_jwk_unref(fx.rsa_other);
}

/* ---- token builders (results are malloc'd) ---- */

static char *xstrdup(const char *s)
{
    return strdup(s);
}

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    char *s = NULL;
    if (vasprintf(&s, f, ap) < 0)
        abort();
    va_end(ap);
    return s;
}

static char *b64(const void *p, size_t n)
{
    struct loom_buf b;
    loom_buf_init(&b, 0);
    loom_base64url_encode(&b, p, n);
    return loom_buf_detach(&b, NULL);
}

static char *b64s(const char *s)
{
    return b64(s, strlen(s));
}

static char *std_header(const struct loom_jwk *key)
{
    return fmt("{\"alg\":\"%s\",\"typ\":\"at+jwt\",\"kid\":\"%s\"}",
               loom_jwt_alg_name(loom_jwk_alg(key)), loom_jwk_kid(key));
}

/* header and payload signed by `key`, whatever they say. */
static char *forge_n(const struct loom_jwk *key, const char *header, const char *payload,
                     size_t plen)
{
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_error err = { 0 };
    loom_err e =
        loom_jws_sign_raw(key, loom_str_cstr(header), loom_str_make(payload, plen), &b, &err);
    if (e) {
        fprintf(stderr, "forge: %s\n", err.msg);
        abort();
    }
    return loom_buf_detach(&b, NULL);
}

static char *forge(const struct loom_jwk *key, const char *header, const char *payload)
{
    return forge_n(key, header, payload, strlen(payload));
}

/* A good token for key with the standard header and `payload`. */
static char *signed_payload(const struct loom_jwk *key, const char *payload)
{
    char *h = std_header(key);
    char *t = forge(key, h, payload);
    free(h);
    return t;
}

static char *good(const struct loom_jwk *key)
{
    return signed_payload(key, GOOD_PAYLOAD);
}

/* The three parts of a token, as malloc'd strings. */
static void split3(const char *tok, char **h, char **p, char **s)
{
    const char *d1 = strchr(tok, '.'), *d2 = strchr(d1 + 1, '.');
    *h = strndup(tok, (size_t)(d1 - tok));
    *p = strndup(d1 + 1, (size_t)(d2 - d1 - 1));
    *s = strdup(d2 + 1);
}

/* Replace the signature of tok by the base64url of sig. */
static char *with_sig(const char *tok, const uint8_t *sig, size_t n)
{
    char *h, *p, *s;
    split3(tok, &h, &p, &s);
    char *e = b64(sig, n);
    char *t = fmt("%s.%s.%s", h, p, e);
    free(h);
    free(p);
    free(s);
    free(e);
    return t;
}

/* The raw signature bytes of tok into out (at least 1024 bytes); returns the length. */
static size_t sig_of(const char *tok, uint8_t *out)
{
    const char *s = strrchr(tok, '.') + 1;
    size_t n = 0;
    CHECK_INT(loom_base64url_decode(loom_str_cstr(s), out, &n), LOOM_OK);
    return n;
}

/* ---- verification helpers ---- */

static struct loom_jwt_expect expect_default(void)
{
    return (struct loom_jwt_expect){ .issuer = ISS, .audience = AUD, .now = NOW, .leeway = LEEWAY };
}

static loom_err verify_x(const char *tok, size_t len, const struct loom_jwt_expect *x,
                         struct loom_jwt_claims *c, struct loom_error *err)
{
    struct loom_arena a;
    loom_arena_init(&a, 0);
    struct loom_jwt_claims tmp;
    loom_err e = loom_jwt_verify(fx.set, loom_str_make(tok, len), x, &a, c ? c : &tmp, err);
    loom_arena_release(&a);
    return e;
}

/* A forged or broken token: must be refused with `want`. Takes ownership of tok. */
static void refuse_x(const char *name, char *tok, size_t len, const struct loom_jwt_expect *x,
                     loom_err want)
{
    struct loom_error err = { 0 };
    loom_err got = verify_x(tok, len, x, NULL, &err);
    forged_total++;
    if (got == want && got != LOOM_OK)
        forged_expected++;
    check_count++;
    if (got != want)
        CHECK_FAIL_("forged token \"%s\": got %s (%s: %s), want %s", name, loom_err_name(got),
                    loom_jwt_reason(got), err.msg, loom_err_name(want));
    else if (got != LOOM_OK && !err.msg[0])
        CHECK_FAIL_("forged token \"%s\": refused without a message", name);
    free(tok);
}

static void refuse(const char *name, char *tok, loom_err want)
{
    struct loom_jwt_expect x = expect_default();
    refuse_x(name, tok, strlen(tok), &x, want);
}

static void accept_x(const char *name, char *tok, const struct loom_jwt_expect *x)
{
    struct loom_error err = { 0 };
    loom_err got = verify_x(tok, strlen(tok), x, NULL, &err);
    check_count++;
    if (got != LOOM_OK)
        CHECK_FAIL_("valid token \"%s\" refused: %s (%s)", name, loom_err_name(got), err.msg);
    free(tok);
}

static void accept(const char *name, char *tok)
{
    struct loom_jwt_expect x = expect_default();
    accept_x(name, tok, &x);
}

/* ---- base64url ---- */

static void test_base64url(void)
{
    static const struct {
        const char *plain, *enc;
    } v[] = {
        { "", "" },
        { "f", "Zg" },
        { "fo", "Zm8" },
        { "foo", "Zm9v" },
        { "foob", "Zm9vYg" },
        { "fooba", "Zm9vYmE" },
        { "foobar", "Zm9vYmFy" },
        { "\xfb\xff", "-_8" },
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(v); i++) {
        char *e = b64s(v[i].plain);
        CHECK_STR(e, v[i].enc);
        uint8_t out[16];
        size_t n = 99;
        CHECK_INT(loom_base64url_decode(loom_str_cstr(v[i].enc), out, &n), LOOM_OK);
        CHECK_UINT(n, strlen(v[i].plain));
        CHECK(memcmp(out, v[i].plain, n) == 0);
        free(e);
    }
    static const char *const bad[] = {
        /* padding, impossible lengths, non-zero unused bits (Zh, Zm9, Zm9vYmF), the standard
         * alphabet, whitespace, other characters */
        "Zg==", "Zm9=", "Z",    "Zm9vY", "Zh",     "Zm9",  "Zm9vYmF",
        "Zm+v", "Zm/v", "Zm v", "Zm\nv", "Zm9v\n", "Zm.v", "Zm9*",
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(bad); i++) {
        uint8_t out[16];
        size_t n = 0;
        loom_err e = loom_base64url_decode(loom_str_cstr(bad[i]), out, &n);
        check_count++;
        if (e != LOOM_EPARSE)
            CHECK_FAIL_("base64url \"%s\" was accepted", bad[i]);
    }
    /* A NUL inside. */
    uint8_t out[8];
    size_t n;
    CHECK_INT(loom_base64url_decode(loom_str_make("Zm\0v", 4), out, &n), LOOM_EPARSE);
    /* Every byte value round-trips. */
    uint8_t all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (uint8_t)i;
    for (size_t len = 0; len <= 256; len += 37) {
        char *e = b64(all, len);
        uint8_t back[256];
        CHECK_INT(loom_base64url_decode(loom_str_cstr(e), back, &n), LOOM_OK);
        CHECK_UINT(n, len);
        CHECK(memcmp(back, all, len) == 0);
        free(e);
    }
}

/* ---- keys ---- */

static void test_keys(void)
{
    struct loom_error err = { 0 };
    CHECK_STR(loom_jwk_kid(fx.ec), "ec-1");
    CHECK_INT(loom_jwk_alg(fx.ec), LOOM_JWT_ES256);
    CHECK(loom_jwk_is_private(fx.ec));
    CHECK_INT(loom_jwt_alg_parse(LOOM_STR("ES256")), LOOM_JWT_ES256);
    CHECK_INT(loom_jwt_alg_parse(LOOM_STR("es256")), LOOM_JWT_ALG_INVALID);
    CHECK_INT(loom_jwt_alg_parse(LOOM_STR("none")), LOOM_JWT_ALG_INVALID);
    CHECK_INT(loom_jwt_alg_parse(LOOM_STR("HS256")), LOOM_JWT_ALG_INVALID);

    /* Default kid: the RFC 7638 thumbprint. */
    struct loom_jwk *k = NULL;
    CHECK_INT(loom_jwk_generate(LOOM_JWT_ES256, NULL, &k, &err), LOOM_OK);
    char tp[LOOM_JWK_THUMBPRINT_LEN + 1];
    loom_jwk_thumbprint(k, tp);
    CHECK_STR(loom_jwk_kid(k), tp);
    CHECK_UINT(strlen(tp), 43);

    /* Bad kids and algorithms. */
    struct loom_jwk *bad = NULL;
    CHECK_INT(loom_jwk_generate(LOOM_JWT_ES256, "", &bad, &err), LOOM_EINVAL);
    CHECK_INT(loom_jwk_generate(LOOM_JWT_ES256, "a b", &bad, &err), LOOM_EINVAL);
    CHECK_INT(loom_jwk_generate(LOOM_JWT_ES256, "a\"b", &bad, &err), LOOM_EINVAL);
    CHECK_INT(loom_jwk_generate(LOOM_JWT_ALG_INVALID, "x", &bad, &err), LOOM_EINVAL);
    char longkid[LOOM_JWK_KID_MAX + 2];
    memset(longkid, 'k', sizeof(longkid) - 1);
    longkid[sizeof(longkid) - 1] = '\0';
    CHECK_INT(loom_jwk_generate(LOOM_JWT_ES256, longkid, &bad, &err), LOOM_EINVAL);

    /* PEM round trip: the reloaded key signs what the original verifies. */
    struct loom_buf pem;
    loom_buf_init(&pem, 0);
    CHECK_INT(loom_jwk_private_pem(k, &pem, &err), LOOM_OK);
    CHECK(strstr(pem.data, "-----BEGIN PRIVATE KEY-----") != NULL);
    struct loom_jwk *k2 = NULL;
    CHECK_INT(loom_jwk_from_pem(LOOM_JWT_ES256, "reloaded", loom_buf_str(&pem), &k2, &err),
              LOOM_OK);
    CHECK(loom_jwk_is_private(k2));
    char tp2[LOOM_JWK_THUMBPRINT_LEN + 1];
    loom_jwk_thumbprint(k2, tp2);
    CHECK_STR(tp2, tp);
    /* An EC key is not an RS256 key, and the other way round. */
    CHECK_INT(loom_jwk_from_pem(LOOM_JWT_RS256, NULL, loom_buf_str(&pem), &bad, &err), LOOM_EINVAL);
    struct loom_buf rpem;
    loom_buf_init(&rpem, 0);
    CHECK_INT(loom_jwk_private_pem(fx.rsa, &rpem, &err), LOOM_OK);
    CHECK_INT(loom_jwk_from_pem(LOOM_JWT_ES256, NULL, loom_buf_str(&rpem), &bad, &err),
              LOOM_EINVAL);
    CHECK_INT(loom_jwk_from_pem(LOOM_JWT_ES256, NULL, LOOM_STR("not a key"), &bad, &err),
              LOOM_EPARSE);
    CHECK_INT(loom_jwk_from_pem(LOOM_JWT_ES256, NULL, LOOM_STR(""), &bad, &err), LOOM_EPARSE);

    /* A public PEM key verifies but cannot sign. */
    BIO *bio = BIO_new_mem_buf(pem.data, (int)pem.len);
    EVP_PKEY *pk = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(bio, pk);
    char *pub = NULL;
    long publen = BIO_get_mem_data(bio, &pub);
    struct loom_jwk *kp = NULL;
    CHECK_INT(
        loom_jwk_from_pem(LOOM_JWT_ES256, "pub", loom_str_make(pub, (size_t)publen), &kp, &err),
        LOOM_OK);
    BIO_free(bio);
    EVP_PKEY_free(pk);
    CHECK(!loom_jwk_is_private(kp));
    struct loom_buf out;
    loom_buf_init(&out, 0);
    CHECK_INT(loom_jwk_private_pem(kp, &out, &err), LOOM_EINVAL);
    struct loom_jwt_claims c = { .iss = LOOM_STR(ISS),
                                 .sub = LOOM_STR("s"),
                                 .aud = LOOM_STR(AUD),
                                 .jti = LOOM_STR("j"),
                                 .client_id = LOOM_STR("s"),
                                 .exp = NOW + 60 };
    CHECK_INT(loom_jwt_sign(kp, &c, &out, &err), LOOM_EINVAL);
    CHECK_UINT(out.len, 0);
    loom_buf_release(&out);

    loom_buf_release(&pem);
    loom_buf_release(&rpem);
    loom_jwk_unref(k);
    loom_jwk_unref(k2);
    loom_jwk_unref(kp);
}

/* ---- JWK sets ---- */

static void test_jwks_roundtrip(void)
{
    struct loom_error err = { 0 };
    struct loom_buf b;
    loom_buf_init(&b, 0);
    CHECK_INT(loom_jwks_write(fx.set, &b), LOOM_OK);
    CHECK(strstr(b.data, "\"d\"") == NULL);
    CHECK_CONTAINS(b.data, "\"kty\":\"EC\",\"crv\":\"P-256\"");
    CHECK_CONTAINS(b.data, "\"kid\":\"ec-1\",\"alg\":\"ES256\",\"use\":\"sig\"");
    CHECK_CONTAINS(b.data, "\"kty\":\"RSA\"");
    CHECK_CONTAINS(b.data, "\"e\":\"AQAB\"");
    struct loom_jwks *set = NULL;
    CHECK_INT(loom_jwks_parse(b.data, b.len, &set, &err), LOOM_OK);
    if (!set)
        return;
    CHECK_UINT(loom_jwks_count(set), 2);
    const struct loom_jwk *k = loom_jwks_find(set, LOOM_STR("ec-1"));
    CHECK(k && !loom_jwk_is_private(k));
    char a[LOOM_JWK_THUMBPRINT_LEN + 1], bb[LOOM_JWK_THUMBPRINT_LEN + 1];
    loom_jwk_thumbprint(k, a);
    loom_jwk_thumbprint(fx.ec, bb);
    CHECK_STR(a, bb);
    CHECK(loom_jwks_find(set, LOOM_STR("nope")) == NULL);

    /* Tokens signed with the private keys verify with the parsed public ones. */
    char *t1 = good(fx.ec), *t2 = good(fx.rsa);
    struct loom_jwt_expect x = expect_default();
    struct loom_arena ar;
    loom_arena_init(&ar, 0);
    struct loom_jwt_claims c;
    CHECK_INT(loom_jwt_verify(set, loom_str_cstr(t1), &x, &ar, &c, &err), LOOM_OK);
    CHECK_SLICE(c.kid, "ec-1");
    CHECK_INT(loom_jwt_verify(set, loom_str_cstr(t2), &x, &ar, &c, &err), LOOM_OK);
    CHECK_SLICE(c.kid, "rsa-1");
    loom_arena_release(&ar);
    free(t1);
    free(t2);

    /* Adding a kid twice. */
    CHECK_INT(loom_jwks_add(set, fx.ec, &err), LOOM_EEXIST);
    loom_jwks_unref(set);
    loom_buf_release(&b);
}

static void test_jwks_refusals(void)
{
    /* A valid EC JWK to mutate: take x and y from the fixture key. */
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_jwk_write_public(fx.ec, &w);
    struct loom_arena ar;
    loom_arena_init(&ar, 0);
    struct loom_json_doc doc;
    CHECK_INT(loom_json_parse(b.data, b.len, NULL, &ar, &doc, NULL), LOOM_OK);
    struct loom_str x, y;
    loom_json_unescape(&doc, loom_json_obj_get(&doc, 0, "x"), &ar, &x);
    loom_json_unescape(&doc, loom_json_obj_get(&doc, 0, "y"), &ar, &y);
    char *X = strndup(x.ptr, x.len), *Y = strndup(y.ptr, y.len);
    /* y of another point: off the curve with this x (almost surely). */
    char *Y2 = strdup(Y);
    Y2[5] = Y2[5] == 'A' ? 'B' : 'A';

    struct {
        const char *name;
        char *doc;
        loom_err want;
    } cases[] = {
        { "ok",
          fmt("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\","
              "\"kid\":\"a\",\"alg\":\"ES256\"}]}",
              X, Y),
          LOOM_OK },
        { "no kid",
          fmt("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\","
              "\"alg\":\"ES256\"}]}",
              X, Y),
          LOOM_EINVAL },
        { "no alg",
          fmt("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\","
              "\"kid\":\"a\"}]}",
              X, Y),
          LOOM_EINVAL },
        { "alg RS256 on EC",
          fmt("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\","
              "\"y\":\"%s\",\"kid\":\"a\",\"alg\":\"RS256\"}]}",
              X, Y),
          LOOM_EUNSUPPORTED },
        { "alg none",
          fmt("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\","
              "\"y\":\"%s\",\"kid\":\"a\",\"alg\":\"none\"}]}",
              X, Y),
          LOOM_EUNSUPPORTED },
        { "crv P-384",
          fmt("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-384\",\"x\":\"%s\","
              "\"y\":\"%s\",\"kid\":\"a\",\"alg\":\"ES256\"}]}",
              X, Y),
          LOOM_EUNSUPPORTED },
        { "kty oct", xstrdup("{\"keys\":[{\"kty\":\"oct\",\"kid\":\"a\",\"alg\":\"HS256\"}]}"),
          LOOM_EUNSUPPORTED },
        { "oct with k",
          xstrdup("{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0\",\"kid\":\"a\","
                  "\"alg\":\"HS256\"}]}"),
          LOOM_EINVAL },
        { "kty OKP",
          xstrdup("{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AA\","
                  "\"kid\":\"a\",\"alg\":\"EdDSA\"}]}"),
          LOOM_EUNSUPPORTED },
        { "private d",
          fmt("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\","
              "\"y\":\"%s\",\"d\":\"%s\",\"kid\":\"a\",\"alg\":\"ES256\"}]}",
              X, Y, X),
          LOOM_EINVAL },
        { "off the curve",
          fmt("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\","
              "\"y\":\"%s\",\"kid\":\"a\",\"alg\":\"ES256\"}]}",
              X, Y2),
          LOOM_EINVAL },
        { "short x",
          fmt("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AAAA\","
              "\"y\":\"%s\",\"kid\":\"a\",\"alg\":\"ES256\"}]}",
              Y),
          LOOM_EINVAL },
        { "padded x",
          fmt("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s=\","
              "\"y\":\"%s\",\"kid\":\"a\",\"alg\":\"ES256\"}]}",
              X, Y),
          LOOM_EINVAL },
        { "use enc",
          fmt("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\","
              "\"y\":\"%s\",\"kid\":\"a\",\"alg\":\"ES256\",\"use\":\"enc\"}]}",
              X, Y),
          LOOM_EINVAL },
        { "kid twice",
          fmt("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\","
              "\"kid\":\"a\",\"alg\":\"ES256\"},{\"kty\":\"EC\",\"crv\":\"P-256\","
              "\"x\":\"%s\",\"y\":\"%s\",\"kid\":\"a\",\"alg\":\"ES256\"}]}",
              X, Y, X, Y),
          LOOM_EEXIST },
        { "member twice",
          fmt("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\","
              "\"y\":\"%s\",\"kid\":\"a\",\"kid\":\"b\",\"alg\":\"ES256\"}]}",
              X, Y),
          LOOM_EPARSE },
        { "small RSA",
          xstrdup("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\","
                  "\"kid\":\"r\",\"alg\":\"RS256\"}]}"),
          LOOM_EINVAL },
        { "not an object", xstrdup("[]"), LOOM_EPARSE },
        { "keys not an array", xstrdup("{\"keys\":{}}"), LOOM_EPARSE },
        { "not JSON", xstrdup("{\"keys\":["), LOOM_EPARSE },
        { "empty set", xstrdup("{\"keys\":[]}"), LOOM_OK },
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(cases); i++) {
        struct loom_error err = { 0 };
        struct loom_jwks *set = NULL;
        loom_err e = loom_jwks_parse(cases[i].doc, strlen(cases[i].doc), &set, &err);
        check_count++;
        if (e != cases[i].want)
            CHECK_FAIL_("jwks \"%s\": got %s (%s), want %s", cases[i].name, loom_err_name(e),
                        err.msg, loom_err_name(cases[i].want));
        loom_jwks_unref(set);
        free(cases[i].doc);
    }
    free(X);
    free(Y);
    free(Y2);
    loom_arena_release(&ar);
    loom_buf_release(&b);
}

/* ---- round trips ---- */

static void test_sign_verify(void)
{
    struct loom_error err = { 0 };
    const struct loom_jwk *keys[] = { fx.ec, fx.rsa };
    for (size_t i = 0; i < 2; i++) {
        struct loom_jwt_claims in = {
            .iss = LOOM_STR(ISS),
            .sub = LOOM_STR("cl_abc"),
            .aud = LOOM_STR(AUD),
            .jti = LOOM_STR("0190c2a1-6b2e-7cde-9f01-23456789abcd"),
            .client_id = LOOM_STR("cl_abc"),
            .scope = LOOM_STR("infer models:read"),
            .exp = NOW + 600,
            .nbf = NOW,
            .iat = NOW,
            .private_name = LOOM_STR("loom_quota"),
            .private_json = LOOM_STR("{\"rps\":2.5,\"burst\":3}"),
        };
        struct loom_buf b;
        loom_buf_init(&b, 0);
        CHECK_INT(loom_jwt_sign(keys[i], &in, &b, &err), LOOM_OK);
        /* Three base64url parts, the header as specified. */
        char *h, *p, *s;
        split3(b.data, &h, &p, &s);
        uint8_t hdr[256];
        size_t hn = 0;
        CHECK_INT(loom_base64url_decode(loom_str_cstr(h), hdr, &hn), LOOM_OK);
        char *want = fmt("{\"alg\":\"%s\",\"typ\":\"at+jwt\",\"kid\":\"%s\"}",
                         i ? "RS256" : "ES256", i ? "rsa-1" : "ec-1");
        CHECK(hn == strlen(want) && memcmp(hdr, want, hn) == 0);
        free(want);
        uint8_t sig[1024];
        CHECK_UINT(sig_of(b.data, sig), i ? 256 : 64);
        free(h);
        free(p);
        free(s);

        struct loom_arena ar;
        loom_arena_init(&ar, 0);
        struct loom_jwt_claims c;
        struct loom_jwt_expect x = expect_default();
        CHECK_INT(loom_jwt_verify(fx.set, loom_buf_str(&b), &x, &ar, &c, &err), LOOM_OK);
        CHECK_SLICE(c.iss, ISS);
        CHECK_SLICE(c.sub, "cl_abc");
        CHECK_SLICE(c.aud, AUD);
        CHECK_SLICE(c.jti, "0190c2a1-6b2e-7cde-9f01-23456789abcd");
        CHECK_SLICE(c.client_id, "cl_abc");
        CHECK_SLICE(c.scope, "infer models:read");
        CHECK_INT(c.exp, NOW + 600);
        CHECK_INT(c.nbf, NOW);
        CHECK_INT(c.iat, NOW);
        CHECK_SLICE(c.kid, i ? "rsa-1" : "ec-1");
        CHECK(c.payload.len > 0 && c.payload.ptr[0] == '{');
        /* The private claim comes last, as it was given. */
        CHECK(c.payload.len > 36 && memcmp(c.payload.ptr + c.payload.len - 36,
                                           ",\"loom_quota\":{\"rps\":2.5,\"burst\":3}}", 36) == 0);
        CHECK(loom_jwt_scope_has(c.scope, LOOM_STR("infer")));
        CHECK(loom_jwt_scope_has(c.scope, LOOM_STR("models:read")));
        CHECK(!loom_jwt_scope_has(c.scope, LOOM_STR("models")));
        CHECK(!loom_jwt_scope_has(c.scope, LOOM_STR("admin")));
        CHECK(!loom_jwt_scope_has(c.scope, LOOM_STR("")));
        loom_arena_release(&ar);
        loom_buf_release(&b);
    }
    /* ES256 signatures are low-s, always (32 signatures: a high s would show up). */
    for (int i = 0; i < 32; i++) {
        char *t = good(fx.ec);
        uint8_t sig[64];
        CHECK_UINT(sig_of(t, sig), 64);
        CHECK(sig[32] < 0x80);
        free(t);
    }
    /* Refusals of the signer. */
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_jwt_claims c = { .iss = LOOM_STR(ISS),
                                 .sub = LOOM_STR("s"),
                                 .aud = LOOM_STR(AUD),
                                 .jti = LOOM_STR("j"),
                                 .client_id = LOOM_STR("s") };
    CHECK_INT(loom_jwt_sign(fx.ec, &c, &b, &err), LOOM_EINVAL); /* no exp */
    c.exp = NOW + 60;
    c.scope = LOOM_STR("a  b");
    CHECK_INT(loom_jwt_sign(fx.ec, &c, &b, &err), LOOM_EINVAL);
    c.scope = LOOM_STR("");
    char *big = malloc(9000);
    memset(big, 'x', 8999);
    big[8999] = '\0';
    c.sub = loom_str_cstr(big);
    CHECK_INT(loom_jwt_sign(fx.ec, &c, &b, &err), LOOM_ETOOBIG);
    CHECK_UINT(b.len, 0);
    free(big);
    loom_buf_release(&b);
}

static void test_valid_variants(void)
{
    struct loom_jwt_expect x = expect_default();
    accept("ES256", good(fx.ec));
    accept("RS256", good(fx.rsa));
    accept("typ AT+JWT",
           forge(fx.ec, "{\"alg\":\"ES256\",\"typ\":\"AT+JWT\",\"kid\":\"ec-1\"}", GOOD_PAYLOAD));
    accept("typ application/at+jwt",
           forge(fx.ec, "{\"typ\":\"application/at+jwt\",\"kid\":\"ec-1\",\"alg\":\"ES256\"}",
                 GOOD_PAYLOAD));
    accept("escaped header strings",
           forge(fx.ec, "{\"\\u0061lg\":\"ES\\u00325\\u0036\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\"}",
                 GOOD_PAYLOAD));
    accept("aud array",
           signed_payload(fx.ec, "{\"iss\":\"" ISS "\",\"sub\":\"s\",\"aud\":[\"other\",\"" AUD
                                 "\"],\"jti\":\"j\",\"client_id\":\"s\"," TIMES "}"));
    accept("no nbf, iat, scope",
           signed_payload(fx.ec, "{\"iss\":\"" ISS "\",\"sub\":\"s\",\"aud\":\"" AUD
                                 "\",\"jti\":\"j\",\"client_id\":\"s\",\"exp\":1700000600}"));
    accept("extra claims and header members",
           forge(fx.ec, "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\",\"x-extra\":[1]}",
                 "{" BASE "," TIMES ",\"roles\":{\"a\":[1,2,{\"b\":null}]}}"));
    accept("empty scope", signed_payload(fx.ec, "{\"iss\":\"" ISS "\",\"sub\":\"s\",\"aud\":\"" AUD
                                                "\",\"jti\":\"j\",\"client_id\":\"s\","
                                                "\"scope\":\"\"," TIMES "}"));
    /* Time boundaries inside the leeway. */
    x.now = 1700000600 + LEEWAY - 1;
    accept_x("exp one second inside the leeway", good(fx.ec), &x);
    x.now = 1700000000 - LEEWAY;
    accept_x("nbf exactly at the leeway", good(fx.ec), &x);
    x = expect_default();
    x.leeway = 1000; /* clamped to 60 */
    x.now = 1700000600 + 59;
    accept_x("leeway clamped: 59 s late", good(fx.ec), &x);
    x = expect_default();
    x.allow_high_s = true;
    accept_x("allow_high_s still accepts low s", good(fx.ec), &x);
}

/* ---- the catalogue of forgeries ---- */

static void test_forged_algorithms(void)
{
    struct loom_error err = { 0 };
    char *p64 = b64s(GOOD_PAYLOAD);
    /* alg none, in three spellings, with an empty signature and with some bytes. */
    static const char *const nones[] = { "none", "None", "NONE", "nOnE" };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(nones); i++) {
        char *h = fmt("{\"alg\":\"%s\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\"}", nones[i]);
        char *h64 = b64s(h);
        char *name = fmt("alg %s, empty signature", nones[i]);
        refuse(name, fmt("%s.%s.", h64, p64), LOOM_EUNSUPPORTED);
        free(name);
        name = fmt("alg %s, some signature", nones[i]);
        refuse(name, fmt("%s.%s.AAAA", h64, p64), LOOM_EUNSUPPORTED);
        free(name);
        free(h);
        free(h64);
    }
    refuse("alg none without kid", fmt("%s.%s.", "eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0", p64),
           LOOM_EUNSUPPORTED);

    /* HS256 with the public key's bytes (PEM and JWK forms) as the HMAC secret. */
    struct loom_buf pem;
    loom_buf_init(&pem, 0);
    loom_jwk_private_pem(fx.ec, &pem, &err);
    BIO *bio = BIO_new_mem_buf(pem.data, (int)pem.len);
    EVP_PKEY *pk = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(bio, pk);
    char *pub = NULL;
    long publen = BIO_get_mem_data(bio, &pub);
    static const char *const hs[] = { "HS256", "HS384", "HS512" };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(hs); i++) {
        char *h = fmt("{\"alg\":\"%s\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\"}", hs[i]);
        char *h64 = b64s(h);
        char *input = fmt("%s.%s", h64, p64);
        uint8_t mac[64];
        size_t maclen = 0;
        const char *md = i == 0 ? "SHA256" : i == 1 ? "SHA384" : "SHA512";
        CHECK(EVP_Q_mac(NULL, "HMAC", NULL, md, NULL, pub, (size_t)publen,
                        (const unsigned char *)input, strlen(input), mac, sizeof(mac),
                        &maclen) != NULL);
        char *m64 = b64(mac, maclen);
        char *name = fmt("alg %s keyed with the public key", hs[i]);
        refuse(name, fmt("%s.%s", input, m64), LOOM_EUNSUPPORTED);
        free(name);
        free(h);
        free(h64);
        free(input);
        free(m64);
    }
    BIO_free(bio);

    /* RS256 on the EC key's kid (signed with an RSA key), ES256 on the RSA key's kid. */
    refuse("alg RS256 on an EC key",
           forge(fx.rsa, "{\"alg\":\"RS256\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\"}", GOOD_PAYLOAD),
           LOOM_EUNSUPPORTED);
    refuse("alg ES256 on an RSA key",
           forge(fx.ec, "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"rsa-1\"}", GOOD_PAYLOAD),
           LOOM_EUNSUPPORTED);
    /* Algorithms we never accept, whatever the key. */
    static const char *const others[] = { "ES384", "ES512",  "PS256", "EdDSA",
                                          "es256", "ES256 ", "RS384" };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(others); i++) {
        char *h = fmt("{\"alg\":\"%s\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\"}", others[i]);
        char *name = fmt("alg \"%s\"", others[i]);
        refuse(name, forge(fx.ec, h, GOOD_PAYLOAD), LOOM_EUNSUPPORTED);
        free(name);
        free(h);
    }
    refuse("alg missing", forge(fx.ec, "{\"typ\":\"at+jwt\",\"kid\":\"ec-1\"}", GOOD_PAYLOAD),
           LOOM_EINVAL);
    refuse("alg not a string",
           forge(fx.ec, "{\"alg\":1,\"typ\":\"at+jwt\",\"kid\":\"ec-1\"}", GOOD_PAYLOAD),
           LOOM_EINVAL);
    refuse("alg null",
           forge(fx.ec, "{\"alg\":null,\"typ\":\"at+jwt\",\"kid\":\"ec-1\"}", GOOD_PAYLOAD),
           LOOM_EINVAL);

    /* Keys: another key under our kid, unknown and missing kids, an embedded key. */
    refuse("wrong key (same kid)", good(fx.ec_other), LOOM_EUNAUTH);
    refuse("wrong RSA key (same kid)", good(fx.rsa_other), LOOM_EUNAUTH);
    refuse("unknown kid",
           forge(fx.ec, "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"ec-2\"}", GOOD_PAYLOAD),
           LOOM_ENOTFOUND);
    refuse("kid path traversal",
           forge(fx.ec, "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"../../dev/null\"}",
                 GOOD_PAYLOAD),
           LOOM_ENOTFOUND);
    refuse("kid with a NUL after a known prefix",
           forge(fx.ec, "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\\u0000x\"}",
                 GOOD_PAYLOAD),
           LOOM_EINVAL);
    refuse("kid missing", forge(fx.ec, "{\"alg\":\"ES256\",\"typ\":\"at+jwt\"}", GOOD_PAYLOAD),
           LOOM_EINVAL);
    refuse("kid empty",
           forge(fx.ec, "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"\"}", GOOD_PAYLOAD),
           LOOM_EINVAL);
    refuse("kid not a string",
           forge(fx.ec, "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":7}", GOOD_PAYLOAD),
           LOOM_EINVAL);
    {
        /* The attacker's own key embedded as "jwk" (and "jku"): ignored, so the signature
         * made with that key fails against ours. */
        struct loom_buf jb;
        loom_buf_init(&jb, 0);
        struct loom_json_writer w;
        loom_json_writer_init(&w, &jb);
        loom_jwk_write_public(fx.ec_other, &w);
        char *h = fmt("{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\",\"jwk\":%s,"
                      "\"jku\":\"http://evil.test/jwks.json\"}",
                      jb.data);
        refuse("embedded jwk and jku", forge(fx.ec_other, h, GOOD_PAYLOAD), LOOM_EUNAUTH);
        free(h);
        loom_buf_release(&jb);
    }
    EVP_PKEY_free(pk);
    loom_buf_release(&pem);
    free(p64);
}

static void test_forged_times(void)
{
    struct loom_jwt_expect x = expect_default();
    x.now = 1700000600 + LEEWAY + 1;
    char *t = good(fx.ec);
    refuse_x("expired beyond the leeway", t, strlen(t), &x, LOOM_ETIMEDOUT);
    x.now = 1700000600 + LEEWAY;
    t = good(fx.ec);
    refuse_x("exp exactly at the leeway boundary", t, strlen(t), &x, LOOM_ETIMEDOUT);
    x = expect_default();
    x.leeway = 0;
    x.now = 1700000600;
    t = good(fx.ec);
    refuse_x("exp == now without leeway", t, strlen(t), &x, LOOM_ETIMEDOUT);
    x.leeway = -5; /* treated as 0 */
    t = good(fx.rsa);
    refuse_x("negative leeway", t, strlen(t), &x, LOOM_ETIMEDOUT);
    x = expect_default();
    x.leeway = 1000; /* clamped to 60 */
    x.now = 1700000600 + 60;
    t = good(fx.ec);
    refuse_x("leeway clamped to 60 s", t, strlen(t), &x, LOOM_ETIMEDOUT);

    refuse("nbf in the future",
           signed_payload(fx.ec, "{" BASE ",\"exp\":1700009999,\"nbf\":1700000031}"), LOOM_EAGAIN);
    refuse("iat in the future",
           signed_payload(fx.ec, "{" BASE ",\"exp\":1700009999,\"iat\":1700000500}"), LOOM_EAGAIN);
    refuse("exp missing", signed_payload(fx.ec, "{" BASE ",\"nbf\":1700000000}"), LOOM_EINVAL);
    refuse("exp as a string", signed_payload(fx.ec, "{" BASE ",\"exp\":\"1700000600\"}"),
           LOOM_EINVAL);
    refuse("exp with a fraction", signed_payload(fx.ec, "{" BASE ",\"exp\":1700000600.5}"),
           LOOM_EINVAL);
    refuse("exp as an exponent", signed_payload(fx.ec, "{" BASE ",\"exp\":1.7000006e9}"),
           LOOM_EINVAL);
    refuse("exp negative", signed_payload(fx.ec, "{" BASE ",\"exp\":-1}"), LOOM_EINVAL);
    refuse("exp past year 9999", signed_payload(fx.ec, "{" BASE ",\"exp\":99999999999999}"),
           LOOM_EINVAL);
    refuse("exp huge", signed_payload(fx.ec, "{" BASE ",\"exp\":1e400}"), LOOM_EINVAL);
    refuse("exp null", signed_payload(fx.ec, "{" BASE ",\"exp\":null}"), LOOM_EINVAL);
    refuse("nbf as a string", signed_payload(fx.ec, "{" BASE ",\"exp\":1700000600,\"nbf\":\"0\"}"),
           LOOM_EINVAL);
    refuse("iat as a bool", signed_payload(fx.ec, "{" BASE ",\"exp\":1700000600,\"iat\":true}"),
           LOOM_EINVAL);
}

static void test_forged_claims(void)
{
    refuse("wrong iss",
           signed_payload(fx.ec, "{\"iss\":\"https://evil.test\",\"sub\":\"s\",\"aud\":\"" AUD
                                 "\",\"jti\":\"j\",\"client_id\":\"s\"," TIMES "}"),
           LOOM_ECONFLICT);
    refuse("iss with a trailing slash",
           signed_payload(fx.ec, "{\"iss\":\"" ISS "/\",\"sub\":\"s\",\"aud\":\"" AUD
                                 "\",\"jti\":\"j\",\"client_id\":\"s\"," TIMES "}"),
           LOOM_ECONFLICT);
    refuse("iss missing",
           signed_payload(fx.ec, "{\"sub\":\"s\",\"aud\":\"" AUD "\",\"jti\":\"j\","
                                 "\"client_id\":\"s\"," TIMES "}"),
           LOOM_EINVAL);
    refuse("wrong aud",
           signed_payload(fx.ec, "{\"iss\":\"" ISS "\",\"sub\":\"s\",\"aud\":\"other\","
                                 "\"jti\":\"j\",\"client_id\":\"s\"," TIMES "}"),
           LOOM_EFORBIDDEN);
    refuse("aud array without ours",
           signed_payload(fx.ec, "{\"iss\":\"" ISS "\",\"sub\":\"s\",\"aud\":[\"a\",\"b\"],"
                                 "\"jti\":\"j\",\"client_id\":\"s\"," TIMES "}"),
           LOOM_EFORBIDDEN);
    refuse("aud empty array",
           signed_payload(fx.ec, "{\"iss\":\"" ISS "\",\"sub\":\"s\",\"aud\":[],"
                                 "\"jti\":\"j\",\"client_id\":\"s\"," TIMES "}"),
           LOOM_EFORBIDDEN);
    refuse("aud array with a number",
           signed_payload(fx.ec, "{\"iss\":\"" ISS "\",\"sub\":\"s\",\"aud\":[1,\"" AUD "\"],"
                                 "\"jti\":\"j\",\"client_id\":\"s\"," TIMES "}"),
           LOOM_EINVAL);
    refuse("aud a prefix of ours",
           signed_payload(fx.ec, "{\"iss\":\"" ISS "\",\"sub\":\"s\",\"aud\":\"loo\","
                                 "\"jti\":\"j\",\"client_id\":\"s\"," TIMES "}"),
           LOOM_EFORBIDDEN);
    refuse("aud missing",
           signed_payload(fx.ec, "{\"iss\":\"" ISS "\",\"sub\":\"s\",\"jti\":\"j\","
                                 "\"client_id\":\"s\"," TIMES "}"),
           LOOM_EINVAL);
    refuse("sub missing",
           signed_payload(fx.ec, "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"jti\":\"j\","
                                 "\"client_id\":\"s\"," TIMES "}"),
           LOOM_EINVAL);
    refuse("sub empty",
           signed_payload(fx.ec, "{\"iss\":\"" ISS "\",\"sub\":\"\",\"aud\":\"" AUD
                                 "\",\"jti\":\"j\",\"client_id\":\"s\"," TIMES "}"),
           LOOM_EINVAL);
    refuse("sub a number",
           signed_payload(fx.ec, "{\"iss\":\"" ISS "\",\"sub\":5,\"aud\":\"" AUD
                                 "\",\"jti\":\"j\",\"client_id\":\"s\"," TIMES "}"),
           LOOM_EINVAL);
    refuse("sub with a NUL",
           signed_payload(fx.ec, "{\"iss\":\"" ISS "\",\"sub\":\"adm\\u0000in\",\"aud\":\"" AUD
                                 "\",\"jti\":\"j\",\"client_id\":\"s\"," TIMES "}"),
           LOOM_EINVAL);
    refuse("jti missing",
           signed_payload(fx.ec, "{\"iss\":\"" ISS "\",\"sub\":\"s\",\"aud\":\"" AUD
                                 "\",\"client_id\":\"s\"," TIMES "}"),
           LOOM_EINVAL);
    refuse("client_id missing",
           signed_payload(fx.ec, "{\"iss\":\"" ISS "\",\"sub\":\"s\",\"aud\":\"" AUD
                                 "\",\"jti\":\"j\"," TIMES "}"),
           LOOM_EINVAL);
    refuse("scope with a double space",
           signed_payload(fx.ec,
                          "{\"iss\":\"" ISS "\",\"sub\":\"s\",\"aud\":\"" AUD
                          "\",\"jti\":\"j\",\"client_id\":\"s\",\"scope\":\"a  b\"," TIMES "}"),
           LOOM_EINVAL);
    refuse("scope with a quote",
           signed_payload(fx.ec,
                          "{\"iss\":\"" ISS "\",\"sub\":\"s\",\"aud\":\"" AUD
                          "\",\"jti\":\"j\",\"client_id\":\"s\",\"scope\":\"a\\\"b\"," TIMES "}"),
           LOOM_EINVAL);
    refuse("scope not a string",
           signed_payload(fx.ec,
                          "{\"iss\":\"" ISS "\",\"sub\":\"s\",\"aud\":\"" AUD
                          "\",\"jti\":\"j\",\"client_id\":\"s\",\"scope\":[\"admin\"]," TIMES "}"),
           LOOM_EINVAL);
}

static void test_forged_encoding(void)
{
    char *t = good(fx.ec);
    char *h, *p, *s;
    split3(t, &h, &p, &s);
    refuse("header padded", fmt("%s=.%s.%s", h, p, s), LOOM_EPARSE);
    refuse("payload padded", fmt("%s.%s==.%s", h, p, s), LOOM_EPARSE);
    refuse("signature padded", fmt("%s.%s.%s=", h, p, s), LOOM_EPARSE);
    refuse("whole token base64-padded", fmt("%s.%s.%s==", h, p, s), LOOM_EPARSE);
    {
        char *s2 = strdup(s);
        /* Standard-alphabet characters where base64url has - and _. */
        for (char *c = s2; *c; c++)
            if (*c == '-' || *c == '_')
                *c = *c == '-' ? '+' : '/';
        s2[3] = '+';
        refuse("signature with '+'", fmt("%s.%s.%s", h, p, s2), LOOM_EPARSE);
        s2[3] = '/';
        refuse("signature with '/'", fmt("%s.%s.%s", h, p, s2), LOOM_EPARSE);
        free(s2);
        char *p2 = strdup(p);
        p2[4] = '+';
        refuse("payload with '+'", fmt("%s.%s.%s", h, p2, s), LOOM_EPARSE);
        p2[4] = '*';
        refuse("payload with '*'", fmt("%s.%s.%s", h, p2, s), LOOM_EPARSE);
        free(p2);
    }
    refuse("space in the payload", fmt("%s.%.10s %s.%s", h, p, p + 10, s), LOOM_EPARSE);
    refuse("newline in the signature", fmt("%s.%s.%.20s\n%s", h, p, s, s + 20), LOOM_EPARSE);
    refuse("leading space", fmt(" %s.%s.%s", h, p, s), LOOM_EPARSE);
    refuse("trailing space", fmt("%s.%s.%s ", h, p, s), LOOM_EPARSE);
    refuse("trailing newline", fmt("%s.%s.%s\n", h, p, s), LOOM_EPARSE);
    refuse("trailing garbage", fmt("%s.%s.%sA", h, p, s), LOOM_EUNAUTH);
    refuse("trailing dot", fmt("%s.%s.%s.", h, p, s), LOOM_EPARSE);
    refuse("two parts", fmt("%s.%s", h, p), LOOM_EPARSE);
    refuse("four parts", fmt("%s.%s.%s.%s", h, p, s, s), LOOM_EPARSE);
    refuse("five parts (JWE-shaped)", fmt("%s.%s.%s.%s.%s", h, p, s, s, s), LOOM_EPARSE);
    refuse("one part", fmt("%s", h), LOOM_EPARSE);
    refuse("only dots", xstrdup(".."), LOOM_EPARSE);
    refuse("empty token", xstrdup(""), LOOM_EPARSE);
    refuse("empty header", fmt(".%s.%s", p, s), LOOM_EPARSE);
    refuse("empty payload", fmt("%s..%s", h, s), LOOM_EPARSE);
    refuse("empty signature", fmt("%s.%s.", h, p), LOOM_EPARSE);
    refuse("non-canonical trailing bits",
           fmt("%s.%s.%.*s%c", h, p, (int)strlen(s) - 1, s,
               s[strlen(s) - 1] == 'A' ? 'B' : s[strlen(s) - 1] + 1),
           LOOM_EPARSE);
    {
        /* NUL bytes: inside the token, and a token of the right length cut by a NUL. */
        size_t n = strlen(t);
        char *z = malloc(n + 1);
        memcpy(z, t, n + 1);
        z[n / 2] = '\0';
        struct loom_jwt_expect x = expect_default();
        refuse_x("NUL inside", z, n, &x, LOOM_EPARSE);
        z = malloc(n + 2);
        memcpy(z, t, n);
        z[n] = '\0';
        z[n + 1] = 'A';
        refuse_x("NUL after", z, n + 2, &x, LOOM_EPARSE);
    }
    refuse("header not base64 JSON", fmt("%s.%s.%s", "e30x", p, s), LOOM_EPARSE);
    free(h);
    free(p);
    free(s);
    free(t);
}

static void test_forged_signatures(void)
{
    char *t = good(fx.ec);
    uint8_t sig[1024];
    size_t n = sig_of(t, sig);
    CHECK_UINT(n, 64);
    refuse("truncated signature (63 bytes)", with_sig(t, sig, 63), LOOM_EUNAUTH);
    refuse("truncated signature (32 bytes)", with_sig(t, sig, 32), LOOM_EUNAUTH);
    refuse("signature with an extra byte", with_sig(t, (uint8_t[65]){ 0 }, 65), LOOM_EUNAUTH);
    {
        uint8_t s2[64];
        memcpy(s2, sig, 64);
        s2[10] ^= 1;
        refuse("one bit flipped in r", with_sig(t, s2, 64), LOOM_EUNAUTH);
        memcpy(s2, sig, 64);
        s2[63] ^= 0x80;
        refuse("one bit flipped in s", with_sig(t, s2, 64), LOOM_EUNAUTH);
    }
    {
        /* Swap the payload of one good token into another. */
        char *t2 = signed_payload(fx.ec, "{" BASE ",\"exp\":1700009999}");
        char *h, *p, *s, *h2, *p2, *s2;
        split3(t, &h, &p, &s);
        split3(t2, &h2, &p2, &s2);
        refuse("payload swapped", fmt("%s.%s.%s", h, p2, s), LOOM_EUNAUTH);
        char *admin =
            b64s("{\"iss\":\"" ISS "\",\"sub\":\"cl_1\",\"aud\":\"" AUD
                 "\",\"jti\":\"j1\",\"client_id\":\"cl_1\",\"scope\":\"admin\"," TIMES "}");
        refuse("admin scope spliced in", fmt("%s.%s.%s", h, admin, s), LOOM_EUNAUTH);
        free(admin);
        free(h), free(p), free(s), free(h2), free(p2), free(s2), free(t2);
    }
    {
        /* The DER ECDSA-Sig-Value OpenSSL makes, instead of r||s. */
        struct loom_buf pem;
        loom_buf_init(&pem, 0);
        struct loom_error err = { 0 };
        loom_jwk_private_pem(fx.ec, &pem, &err);
        BIO *bio = BIO_new_mem_buf(pem.data, (int)pem.len);
        EVP_PKEY *pk = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
        BIO_free(bio);
        const char *input_end = strrchr(t, '.');
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        uint8_t der[80];
        size_t dlen = sizeof(der);
        CHECK(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, pk) == 1);
        CHECK(EVP_DigestSign(ctx, der, &dlen, (const uint8_t *)t, (size_t)(input_end - t)) == 1);
        EVP_MD_CTX_free(ctx);
        EVP_PKEY_free(pk);
        loom_buf_release(&pem);
        refuse("DER-encoded ES256 signature", with_sig(t, der, dlen), LOOM_EUNAUTH);
        /* The same DER sig padded to 64 bytes: still not r||s. */
        uint8_t d64[64] = { 0 };
        memcpy(d64, der, LOOM_MIN(dlen, 64));
        refuse("DER signature cut to 64 bytes", with_sig(t, d64, 64), LOOM_EUNAUTH);
    }
    {
        /* High s: n - s verifies mathematically, but is a second encoding of the same token. */
        static const uint8_t n_bytes[32] = {
            0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17,
            0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
        };
        BIGNUM *order = BN_bin2bn(n_bytes, 32, NULL), *s = BN_bin2bn(sig + 32, 32, NULL);
        BN_sub(s, order, s);
        uint8_t hi[64];
        memcpy(hi, sig, 32);
        BN_bn2binpad(s, hi + 32, 32);
        char *ht = with_sig(t, hi, 64);
        refuse("high-s ES256 signature", strdup(ht), LOOM_EUNAUTH);
        struct loom_jwt_expect x = expect_default();
        x.allow_high_s = true;
        accept_x("high-s accepted when allowed", ht, &x);
        /* r or s of zero, r or s equal to n, n + 1, or all ones. */
        uint8_t bad[64];
        memcpy(bad, sig, 64);
        memset(bad, 0, 32);
        refuse("r = 0", with_sig(t, bad, 64), LOOM_EUNAUTH);
        memcpy(bad, sig, 64);
        memset(bad + 32, 0, 32);
        refuse("s = 0", with_sig(t, bad, 64), LOOM_EUNAUTH);
        memset(bad, 0, 64);
        refuse("r = s = 0", with_sig(t, bad, 64), LOOM_EUNAUTH);
        memcpy(bad, sig, 64);
        memcpy(bad, n_bytes, 32);
        refuse("r = n", with_sig(t, bad, 64), LOOM_EUNAUTH);
        memcpy(bad, sig, 64);
        memcpy(bad, n_bytes, 32);
        bad[31]++;
        refuse("r = n + 1", with_sig(t, bad, 64), LOOM_EUNAUTH);
        memcpy(bad, sig, 64);
        memcpy(bad + 32, n_bytes, 32);
        x.allow_high_s = true;
        char *sn = with_sig(t, bad, 64);
        refuse_x("s = n (with high s allowed)", sn, strlen(sn), &x, LOOM_EUNAUTH);
        memset(bad, 0xff, 64);
        refuse("r = s = 2^256 - 1", with_sig(t, bad, 64), LOOM_EUNAUTH);
        BN_free(order);
        BN_free(s);
    }
    {
        /* RSA: truncated, padded, zero. */
        char *rt = good(fx.rsa);
        uint8_t rs[1024];
        size_t rn = sig_of(rt, rs);
        CHECK_UINT(rn, 256);
        refuse("RS256 truncated signature", with_sig(rt, rs, 255), LOOM_EUNAUTH);
        uint8_t big[257] = { 0 };
        memcpy(big + 1, rs, 256);
        refuse("RS256 signature with a leading zero", with_sig(rt, big, 257), LOOM_EUNAUTH);
        memset(big, 0, sizeof(big));
        refuse("RS256 signature of zeros", with_sig(rt, big, 256), LOOM_EUNAUTH);
        free(rt);
    }
    free(t);
}

static void test_forged_structure(void)
{
    refuse("header an array", forge(fx.ec, "[\"ES256\"]", GOOD_PAYLOAD), LOOM_EPARSE);
    refuse("header a string", forge(fx.ec, "\"ES256\"", GOOD_PAYLOAD), LOOM_EPARSE);
    refuse("header null", forge(fx.ec, "null", GOOD_PAYLOAD), LOOM_EPARSE);
    refuse("header not JSON", forge(fx.ec, "{alg:ES256}", GOOD_PAYLOAD), LOOM_EPARSE);
    refuse("header with a trailing comma",
           forge(fx.ec, "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\",}", GOOD_PAYLOAD),
           LOOM_EPARSE);
    refuse("header with a BOM",
           forge(fx.ec, "\xef\xbb\xbf{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\"}",
                 GOOD_PAYLOAD),
           LOOM_EPARSE);
    refuse("header with invalid UTF-8",
           forge(fx.ec, "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\",\"x\":\"\xff\"}",
                 GOOD_PAYLOAD),
           LOOM_EPARSE);
    refuse("header with two JSON values",
           forge(fx.ec, "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\"}{}", GOOD_PAYLOAD),
           LOOM_EPARSE);
    refuse("duplicate alg in the header",
           forge(fx.ec, "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\",\"alg\":\"none\"}",
                 GOOD_PAYLOAD),
           LOOM_EPARSE);
    refuse("duplicate kid, one escaped",
           forge(fx.ec,
                 "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\",\"k\\u0069d\":\"x\"}",
                 GOOD_PAYLOAD),
           LOOM_EPARSE);
    refuse("crit header",
           forge(fx.ec,
                 "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\",\"crit\":[\"exp\"],"
                 "\"exp\":1}",
                 GOOD_PAYLOAD),
           LOOM_EINVAL);
    refuse("crit empty",
           forge(fx.ec,
                 "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\","
                 "\"crit\":[]}",
                 GOOD_PAYLOAD),
           LOOM_EINVAL);
    refuse("b64 false with crit",
           forge(fx.ec,
                 "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\",\"b64\":false,"
                 "\"crit\":[\"b64\"]}",
                 GOOD_PAYLOAD),
           LOOM_EINVAL);
    refuse("typ missing", forge(fx.ec, "{\"alg\":\"ES256\",\"kid\":\"ec-1\"}", GOOD_PAYLOAD),
           LOOM_EINVAL);
    refuse("typ JWT",
           forge(fx.ec, "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"ec-1\"}", GOOD_PAYLOAD),
           LOOM_EINVAL);
    refuse(
        "typ at+jwt with a parameter",
        forge(fx.ec, "{\"alg\":\"ES256\",\"typ\":\"at+jwt; x=1\",\"kid\":\"ec-1\"}", GOOD_PAYLOAD),
        LOOM_EINVAL);
    refuse("typ a number",
           forge(fx.ec, "{\"alg\":\"ES256\",\"typ\":1,\"kid\":\"ec-1\"}", GOOD_PAYLOAD),
           LOOM_EINVAL);
    refuse(
        "typ id_token-ish",
        forge(fx.ec, "{\"alg\":\"ES256\",\"typ\":\"secevent+jwt\",\"kid\":\"ec-1\"}", GOOD_PAYLOAD),
        LOOM_EINVAL);
    {
        /* A depth bomb in the header (refused before any signature work). */
        char deep[600];
        size_t o = 0;
        o += (size_t)sprintf(deep, "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\",\"x\":");
        for (int i = 0; i < 100; i++)
            deep[o++] = '[';
        for (int i = 0; i < 100; i++)
            deep[o++] = ']';
        deep[o++] = '}';
        deep[o] = '\0';
        refuse("header depth bomb", forge(fx.ec, deep, GOOD_PAYLOAD), LOOM_EPARSE);
    }
    /* Payloads with valid signatures. */
    refuse("payload an array", signed_payload(fx.ec, "[" GOOD_PAYLOAD "]"), LOOM_EPARSE);
    refuse("payload a string", signed_payload(fx.ec, "\"admin\""), LOOM_EPARSE);
    refuse("payload a number", signed_payload(fx.ec, "1700000600"), LOOM_EPARSE);
    refuse("payload not JSON", signed_payload(fx.ec, "{" BASE "," TIMES), LOOM_EPARSE);
    refuse("payload empty object", signed_payload(fx.ec, "{}"), LOOM_EINVAL);
    refuse("duplicate sub in the payload",
           signed_payload(fx.ec, "{" BASE "," TIMES ",\"sub\":\"admin\"}"), LOOM_EPARSE);
    refuse("duplicate scope, one escaped",
           signed_payload(fx.ec, "{" BASE "," TIMES ",\"sc\\u006fpe\":\"admin\"}"), LOOM_EPARSE);
    refuse("duplicate exp", signed_payload(fx.ec, "{" BASE "," TIMES ",\"exp\":9999999999}"),
           LOOM_EPARSE);
    refuse("duplicate key in a nested object",
           signed_payload(fx.ec, "{" BASE "," TIMES ",\"x\":{\"a\":1,\"a\":2}}"), LOOM_EPARSE);
    refuse("payload with a NUL byte",
           forge_n(fx.ec, "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\"}",
                   "{" BASE "," TIMES "}\0", sizeof("{" BASE "," TIMES "}")),
           LOOM_EPARSE);
    {
        char deep[8000];
        size_t o = 0;
        o += (size_t)sprintf(deep, "{" BASE "," TIMES ",\"x\":");
        for (int i = 0; i < 1000; i++)
            deep[o++] = '[';
        for (int i = 0; i < 1000; i++)
            deep[o++] = ']';
        deep[o++] = '}';
        deep[o] = '\0';
        refuse("payload depth bomb", signed_payload(fx.ec, deep), LOOM_EPARSE);
        o = (size_t)sprintf(deep, "{" BASE "," TIMES ",\"x\":");
        for (int i = 0; i < 2500; i++)
            o += (size_t)sprintf(deep + o, "%s0", i ? "," : "[");
        deep[o++] = ']';
        deep[o++] = '}';
        deep[o] = '\0';
        refuse("payload with too many tokens", signed_payload(fx.ec, deep), LOOM_EPARSE);
    }
}

static void test_forged_sizes(void)
{
    /* A token over 8 KiB, however well signed. */
    char *big = malloc(9000);
    int o = sprintf(big, "{" BASE "," TIMES ",\"pad\":\"");
    memset(big + o, 'p', 7000);
    strcpy(big + o + 7000, "\"}");
    refuse("token over 8 KiB", signed_payload(fx.ec, big), LOOM_ETOOBIG);
    free(big);
    /* A smaller limit from the caller. */
    struct loom_jwt_expect x = expect_default();
    x.max_len = 100;
    char *t = good(fx.ec);
    refuse_x("token over the caller's limit", t, strlen(t), &x, LOOM_ETOOBIG);
    /* Long garbage is refused on length before anything else. */
    char *junk = malloc(20000);
    memset(junk, '.', 19999);
    junk[19999] = '\0';
    refuse("20 KB of dots", junk, LOOM_ETOOBIG);
    /* Huge claims inside the limit. */
    char sub[600], *p;
    memset(sub, 's', 300);
    sub[300] = '\0';
    p = fmt("{\"iss\":\"" ISS "\",\"sub\":\"%s\",\"aud\":\"" AUD "\",\"jti\":\"j\","
            "\"client_id\":\"s\"," TIMES "}",
            sub);
    refuse("sub of 300 bytes", signed_payload(fx.ec, p), LOOM_ETOOBIG);
    free(p);
    char *scope = malloc(5000);
    for (int i = 0; i < 2400; i++)
        memcpy(scope + 2 * i, "a ", 2);
    scope[4799] = '\0';
    p = fmt("{\"iss\":\"" ISS "\",\"sub\":\"s\",\"aud\":\"" AUD "\",\"jti\":\"j\","
            "\"client_id\":\"s\",\"scope\":\"%s\"," TIMES "}",
            scope);
    refuse("scope of 4.8 KB", signed_payload(fx.ec, p), LOOM_ETOOBIG);
    free(p);
    free(scope);
    /* An aud array of 17 items. */
    refuse("aud with 17 items",
           signed_payload(fx.ec, "{\"iss\":\"" ISS "\",\"sub\":\"s\",\"aud\":[\"1\",\"2\",\"3\","
                                 "\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\",\"11\",\"12\",\"13\","
                                 "\"14\",\"15\",\"16\",\"" AUD "\"],\"jti\":\"j\","
                                 "\"client_id\":\"s\"," TIMES "}"),
           LOOM_ETOOBIG);
    /* A header of 2 KB. */
    char *hb = malloc(3000);
    o = sprintf(hb, "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"ec-1\",\"x\":\"");
    memset(hb + o, 'h', 2000);
    strcpy(hb + o + 2000, "\"}");
    refuse("header over 1 KiB", forge(fx.ec, hb, GOOD_PAYLOAD), LOOM_ETOOBIG);
    free(hb);
}

/* ---- threads and speed ---- */

struct thread_arg {
    const char *tok;
    int ok;
};

static void *verify_thread(void *p)
{
    struct thread_arg *a = p;
    struct loom_jwt_expect x = expect_default();
    struct loom_arena ar;
    loom_arena_init(&ar, 0);
    for (int i = 0; i < 300; i++) {
        struct loom_jwt_claims c;
        if (loom_jwt_verify(fx.set, loom_str_cstr(a->tok), &x, &ar, &c, NULL) == LOOM_OK)
            a->ok++;
        loom_arena_reset(&ar);
    }
    loom_arena_release(&ar);
    return NULL;
}

static void test_threads(void)
{
    char *t = good(fx.ec);
    pthread_t th[4];
    struct thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (struct thread_arg){ .tok = t };
        pthread_create(&th[i], NULL, verify_thread, &args[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK_INT(args[i].ok, 300);
    }
    /* Speed, for information: verifications per second on one thread. */
    struct loom_jwt_expect x = expect_default();
    struct loom_arena ar;
    loom_arena_init(&ar, 0);
    uint64_t t0 = loom_now_ns();
    int n = 0;
    while (loom_now_ns() - t0 < 200 * LOOM_NS_PER_MS) {
        struct loom_jwt_claims c;
        CHECK_INT(loom_jwt_verify(fx.set, loom_str_cstr(t), &x, &ar, &c, NULL), LOOM_OK);
        loom_arena_reset(&ar);
        n++;
    }
    double secs = (double)(loom_now_ns() - t0) / 1e9;
    fprintf(stderr, "info: ES256 verify: %.0f tokens/s on one thread\n", n / secs);
    loom_arena_release(&ar);
    free(t);
}

static void test_reasons(void)
{
    CHECK_STR(loom_jwt_reason(LOOM_OK), "ok");
    CHECK_STR(loom_jwt_reason(LOOM_ENOTFOUND), "unknown_kid");
    CHECK_STR(loom_jwt_reason(LOOM_EUNAUTH), "bad_signature");
    CHECK_STR(loom_jwt_reason(LOOM_ETIMEDOUT), "expired");
    CHECK_STR(loom_jwt_reason(LOOM_EIO), "error");
    struct loom_jwt_expect x = { .issuer = NULL, .audience = AUD };
    char *t = good(fx.ec);
    struct loom_error err = { 0 };
    CHECK_INT(verify_x(t, strlen(t), &x, NULL, &err), LOOM_EINVAL);
    free(t);
}

int main(void)
{
    fixture_init();
    RUN(test_base64url);
    RUN(test_keys);
    RUN(test_jwks_roundtrip);
    RUN(test_jwks_refusals);
    RUN(test_sign_verify);
    RUN(test_valid_variants);
    RUN(test_forged_algorithms);
    RUN(test_forged_times);
    RUN(test_forged_claims);
    RUN(test_forged_encoding);
    RUN(test_forged_signatures);
    RUN(test_forged_structure);
    RUN(test_forged_sizes);
    RUN(test_threads);
    RUN(test_reasons);
    fprintf(stderr, "info: %d forged or broken tokens, %d refused with the expected reason\n",
            forged_total, forged_expected);
    fixture_release();
    return check_report();
}
