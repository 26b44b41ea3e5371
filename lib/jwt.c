/* SPDX-License-Identifier: Apache-2.0 */
/*
 * JWS/JWT with keys pinned to one algorithm, on OpenSSL 3's EVP interface (see loom/jwt.h for
 * the contract). The verifier reads the header only to find the key and to refuse what the key
 * does not allow; the algorithm that runs is always the key's. ES256 signatures travel in
 * JOSE's fixed 64-byte r||s form, which is range-checked here and re-encoded as the DER
 * ECDSA-Sig-Value OpenSSL wants; our signer normalises s to the low half so that no token has
 * two valid signatures. Public JWK members are encoded once, when a key is made, so serving a
 * JWKS or computing a thumbprint never calls OpenSSL.
 */
#include <loom/digest.h>
#include <loom/json.h>
#include <loom/jwt.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define ES256_SIG_LEN      64
#define RSA_MIN_BITS       2048
#define RSA_MAX_BITS       8192
#define HEADER_MAX         1024 /* decoded header bytes */
#define PAYLOAD_MAX_DEPTH  16   /* nesting of the payload's JSON */
#define PAYLOAD_MAX_TOKENS 2048
#define PEM_MAX            (64 * 1024)
#define JWKS_MAX_BYTES     (1024 * 1024)
#define NUMERIC_DATE_MAX   253402300799LL /* 9999-12-31T23:59:59Z */
#define AUD_MAX_ITEMS      16

/* Claim size limits (bytes, unescaped). */
#define ISS_MAX   1024
#define SUB_MAX   256
#define SCOPE_MAX 4096

/* The order n of P-256's base point, and floor(n / 2), big-endian. */
static const uint8_t p256_n[32] = {
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
};
static const uint8_t p256_half_n[32] = {
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
};

struct loom_jwk {
    atomic_int refs;
    enum loom_jwt_alg alg;
    bool priv;
    size_t sig_len; /* bytes of a signature: 64 for ES256, the modulus size for RS256 */
    EVP_PKEY *pkey;
    char *pub_a, *pub_b; /* base64url: x and y (EC), n and e (RSA) */
    char kid[LOOM_JWK_KID_MAX + 1];
};

struct loom_jwks {
    atomic_int refs;
    size_t n;
    struct loom_jwk *keys[LOOM_JWKS_MAX_KEYS];
};

/* ---- base64url ----------------------------------------------------------------------------- */

static const char b64url_chars[64] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* The value of each base64url character, or 0xff. */
static const uint8_t b64url_values[256] = {
    ['A'] = 0,  ['B'] = 1,  ['C'] = 2,  ['D'] = 3,  ['E'] = 4,  ['F'] = 5,  ['G'] = 6,  ['H'] = 7,
    ['I'] = 8,  ['J'] = 9,  ['K'] = 10, ['L'] = 11, ['M'] = 12, ['N'] = 13, ['O'] = 14, ['P'] = 15,
    ['Q'] = 16, ['R'] = 17, ['S'] = 18, ['T'] = 19, ['U'] = 20, ['V'] = 21, ['W'] = 22, ['X'] = 23,
    ['Y'] = 24, ['Z'] = 25, ['a'] = 26, ['b'] = 27, ['c'] = 28, ['d'] = 29, ['e'] = 30, ['f'] = 31,
    ['g'] = 32, ['h'] = 33, ['i'] = 34, ['j'] = 35, ['k'] = 36, ['l'] = 37, ['m'] = 38, ['n'] = 39,
    ['o'] = 40, ['p'] = 41, ['q'] = 42, ['r'] = 43, ['s'] = 44, ['t'] = 45, ['u'] = 46, ['v'] = 47,
    ['w'] = 48, ['x'] = 49, ['y'] = 50, ['z'] = 51, ['0'] = 52, ['1'] = 53, ['2'] = 54, ['3'] = 55,
    ['4'] = 56, ['5'] = 57, ['6'] = 58, ['7'] = 59, ['8'] = 60, ['9'] = 61, ['-'] = 62, ['_'] = 63,
};

/* b64url_values is zero for both 'A' and the characters outside the alphabet: tell them apart. */
static inline bool b64url_char(unsigned char c, uint32_t *v)
{
    uint8_t x = b64url_values[c];
    if (x == 0 && c != 'A')
        return false;
    *v = x;
    return true;
}

loom_err loom_base64url_encode(struct loom_buf *out, const void *p, size_t n)
{
    const uint8_t *s = p;
    size_t olen = (n / 3) * 4 + (n % 3 ? n % 3 + 1 : 0);
    loom_err e = loom_buf_reserve(out, olen + 1);
    if (e)
        return e;
    char *d = out->data + out->len;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        *d++ = b64url_chars[v >> 18];
        *d++ = b64url_chars[(v >> 12) & 63];
        *d++ = b64url_chars[(v >> 6) & 63];
        *d++ = b64url_chars[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        *d++ = b64url_chars[v >> 18];
        *d++ = b64url_chars[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
        *d++ = b64url_chars[v >> 18];
        *d++ = b64url_chars[(v >> 12) & 63];
        *d++ = b64url_chars[(v >> 6) & 63];
    }
    out->len += olen;
    out->data[out->len] = '\0';
    return LOOM_OK;
}

loom_err loom_base64url_decode(struct loom_str in, uint8_t *out, size_t *n)
{
    if (in.len % 4 == 1)
        return LOOM_EPARSE;
    const unsigned char *s = (const unsigned char *)in.ptr;
    size_t o = 0, i = 0;
    uint32_t a, b, c, d;
    for (; i + 4 <= in.len; i += 4) {
        if (!b64url_char(s[i], &a) || !b64url_char(s[i + 1], &b) || !b64url_char(s[i + 2], &c) ||
            !b64url_char(s[i + 3], &d))
            return LOOM_EPARSE;
        uint32_t v = a << 18 | b << 12 | c << 6 | d;
        out[o++] = (uint8_t)(v >> 16);
        out[o++] = (uint8_t)(v >> 8);
        out[o++] = (uint8_t)v;
    }
    size_t rest = in.len - i;
    if (rest == 2) {
        if (!b64url_char(s[i], &a) || !b64url_char(s[i + 1], &b) || (b & 0x0f))
            return LOOM_EPARSE;
        out[o++] = (uint8_t)(a << 2 | b >> 4);
    } else if (rest == 3) {
        if (!b64url_char(s[i], &a) || !b64url_char(s[i + 1], &b) || !b64url_char(s[i + 2], &c) ||
            (c & 0x03))
            return LOOM_EPARSE;
        uint32_t v = a << 18 | b << 12 | c << 6;
        out[o++] = (uint8_t)(v >> 16);
        out[o++] = (uint8_t)(v >> 8);
    }
    *n = o;
    return LOOM_OK;
}

/* Decode into the arena; *out is not NUL-terminated by contract but gets one anyway. */
static loom_err b64_to_arena(struct loom_str in, struct loom_arena *arena, struct loom_str *out)
{
    uint8_t *p = loom_arena_alloc(arena, in.len * 3 / 4 + 1);
    size_t n;
    if (loom_base64url_decode(in, p, &n))
        return LOOM_EPARSE;
    p[n] = '\0';
    *out = loom_str_make((const char *)p, n);
    return LOOM_OK;
}

/* ---- algorithms and small helpers ---------------------------------------------------------- */

const char *loom_jwt_alg_name(enum loom_jwt_alg alg)
{
    switch (alg) {
    case LOOM_JWT_ES256:
        return "ES256";
    case LOOM_JWT_RS256:
        return "RS256";
    default:
        return "";
    }
}

enum loom_jwt_alg loom_jwt_alg_parse(struct loom_str name)
{
    if (loom_str_eq(name, LOOM_STR("ES256")))
        return LOOM_JWT_ES256;
    if (loom_str_eq(name, LOOM_STR("RS256")))
        return LOOM_JWT_RS256;
    return LOOM_JWT_ALG_INVALID;
}

const char *loom_jwt_reason(loom_err code)
{
    switch (code) {
    case LOOM_OK:
        return "ok";
    case LOOM_ETOOBIG:
        return "too_large";
    case LOOM_EPARSE:
        return "malformed";
    case LOOM_EINVAL:
        return "invalid";
    case LOOM_EUNSUPPORTED:
        return "bad_alg";
    case LOOM_ENOTFOUND:
        return "unknown_kid";
    case LOOM_EUNAUTH:
        return "bad_signature";
    case LOOM_ETIMEDOUT:
        return "expired";
    case LOOM_EAGAIN:
        return "not_yet_valid";
    case LOOM_ECONFLICT:
        return "wrong_issuer";
    case LOOM_EFORBIDDEN:
        return "wrong_audience";
    default:
        return "error";
    }
}

/* A scope token (RFC 6749 3.3): %x21 / %x23-5B / %x5D-7E. */
static inline bool scope_char(unsigned char c)
{
    return c == 0x21 || (c >= 0x23 && c <= 0x5b) || (c >= 0x5d && c <= 0x7e);
}

/* Tokens separated by single spaces, none empty; the empty string is valid. */
static bool scope_valid(struct loom_str s)
{
    if (s.len == 0)
        return true;
    if (s.ptr[0] == ' ' || s.ptr[s.len - 1] == ' ')
        return false;
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (c == ' ') {
            if (s.ptr[i - 1] == ' ')
                return false;
        } else if (!scope_char(c)) {
            return false;
        }
    }
    return true;
}

bool loom_jwt_scope_has(struct loom_str scope, struct loom_str want)
{
    if (want.len == 0)
        return false;
    while (scope.len) {
        struct loom_str tok;
        scope = loom_str_cut(scope, ' ', &tok);
        if (loom_str_eq(tok, want))
            return true;
    }
    return false;
}

/* Printable ASCII without '"' and '\\': what we accept as a kid. */
static bool kid_valid(struct loom_str kid)
{
    if (kid.len == 0 || kid.len > LOOM_JWK_KID_MAX)
        return false;
    for (size_t i = 0; i < kid.len; i++) {
        unsigned char c = (unsigned char)kid.ptr[i];
        if (c < 0x21 || c > 0x7e || c == '"' || c == '\\')
            return false;
    }
    return true;
}

/* A short printable rendering of attacker-controlled text for error messages. */
static const char *printable(struct loom_str s, char *buf, size_t cap)
{
    size_t n = LOOM_MIN(s.len, cap - 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        buf[i] = (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? (char)c : '?';
    }
    buf[n] = '\0';
    return buf;
}

static loom_err ossl_fail(struct loom_error *err, const char *what)
{
    unsigned long code = ERR_peek_last_error();
    char reason[128] = "";
    if (code)
        ERR_error_string_n(code, reason, sizeof(reason));
    ERR_clear_error();
    return loom_error_set(err, LOOM_EINTERNAL, "%s failed%s%s", what, code ? ": " : "", reason);
}

/* ---- keys ---------------------------------------------------------------------------------- */

static char *b64_dup(const uint8_t *p, size_t n)
{
    struct loom_buf b;
    loom_buf_init(&b, 0);
    loom_base64url_encode(&b, p, n);
    return loom_buf_detach(&b, NULL);
}

static char *bn_b64(const BIGNUM *bn, size_t pad)
{
    size_t n = pad ? pad : (size_t)BN_num_bytes(bn);
    if (n == 0)
        n = 1;
    uint8_t *tmp = loom_malloc(n);
    BN_bn2binpad(bn, tmp, (int)n);
    char *s = b64_dup(tmp, n);
    free(tmp);
    return s;
}

static void jwk_free(struct loom_jwk *k)
{
    EVP_PKEY_free(k->pkey);
    free(k->pub_a);
    free(k->pub_b);
    free(k);
}

/*
 * Check that pkey fits alg, encode its public members and name it: the common end of every
 * way to make a key. Takes ownership of pkey, also on failure.
 */
static loom_err jwk_finish(EVP_PKEY *pkey, enum loom_jwt_alg alg, const char *kid, bool priv,
                           struct loom_jwk **out, struct loom_error *err)
{
    struct loom_jwk *k = loom_new(struct loom_jwk);
    atomic_init(&k->refs, 1);
    k->alg = alg;
    k->priv = priv;
    k->pkey = pkey;
    BIGNUM *a = NULL, *b = NULL;
    loom_err e = LOOM_OK;
    if (alg == LOOM_JWT_ES256) {
        char group[64] = "";
        size_t glen = 0;
        if (!EVP_PKEY_is_a(pkey, "EC") ||
            EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                           &glen) != 1 ||
            strcmp(group, "prime256v1") != 0) {
            ERR_clear_error();
            e = loom_error_set(err, LOOM_EINVAL, "an ES256 key must be an EC key on P-256");
            goto out_free;
        }
        if (EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_X, &a) != 1 ||
            EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_Y, &b) != 1) {
            e = ossl_fail(err, "reading the EC public key");
            goto out_free;
        }
        k->pub_a = bn_b64(a, 32);
        k->pub_b = bn_b64(b, 32);
        k->sig_len = ES256_SIG_LEN;
    } else if (alg == LOOM_JWT_RS256) {
        int bits = EVP_PKEY_is_a(pkey, "RSA") ? EVP_PKEY_get_bits(pkey) : 0;
        if (bits < RSA_MIN_BITS || bits > RSA_MAX_BITS) {
            e = loom_error_set(err, LOOM_EINVAL, "an RS256 key must be an RSA key of %d to %d bits",
                               RSA_MIN_BITS, RSA_MAX_BITS);
            goto out_free;
        }
        if (EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &a) != 1 ||
            EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_E, &b) != 1) {
            e = ossl_fail(err, "reading the RSA public key");
            goto out_free;
        }
        k->pub_a = bn_b64(a, 0);
        k->pub_b = bn_b64(b, 0);
        k->sig_len = (size_t)EVP_PKEY_get_size(pkey);
    } else {
        e = loom_error_set(err, LOOM_EINVAL, "unknown algorithm");
        goto out_free;
    }
    if (kid) {
        if (!kid_valid(loom_str_cstr(kid))) {
            e = loom_error_set(err, LOOM_EINVAL,
                               "a kid is 1 to %d printable ASCII characters without quotes",
                               LOOM_JWK_KID_MAX);
            goto out_free;
        }
        memcpy(k->kid, kid, strlen(kid) + 1);
    } else {
        loom_jwk_thumbprint(k, k->kid);
    }
    BN_free(a);
    BN_free(b);
    *out = k;
    return LOOM_OK;

out_free:
    BN_free(a);
    BN_free(b);
    jwk_free(k);
    return e;
}

loom_err loom_jwk_generate(enum loom_jwt_alg alg, const char *kid, struct loom_jwk **out,
                           struct loom_error *err)
{
    EVP_PKEY *pkey = NULL;
    if (alg == LOOM_JWT_ES256)
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    else if (alg == LOOM_JWT_RS256)
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    else
        return loom_error_set(err, LOOM_EINVAL, "unknown algorithm");
    if (!pkey)
        return ossl_fail(err, "key generation");
    return jwk_finish(pkey, alg, kid, true, out, err);
}

/* Never prompt for a passphrase: encrypted PEM is refused. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    LOOM_UNUSED(buf);
    LOOM_UNUSED(size);
    LOOM_UNUSED(rwflag);
    LOOM_UNUSED(u);
    return -1;
}

static bool contains(struct loom_str hay, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= hay.len; i++)
        if (memcmp(hay.ptr + i, needle, n) == 0)
            return true;
    return false;
}

loom_err loom_jwk_from_pem(enum loom_jwt_alg alg, const char *kid, struct loom_str pem,
                           struct loom_jwk **out, struct loom_error *err)
{
    if (pem.len == 0 || pem.len > PEM_MAX)
        return loom_error_set(err, LOOM_EPARSE, "a PEM key is 1 byte to 64 KiB");
    BIO *bio = BIO_new_mem_buf(pem.ptr, (int)pem.len);
    if (!bio)
        return ossl_fail(err, "BIO_new_mem_buf");
    bool pub = contains(pem, "-----BEGIN PUBLIC KEY-----");
    EVP_PKEY *pkey = pub ? PEM_read_bio_PUBKEY(bio, NULL, no_passphrase, NULL)
                         : PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    BIO_free(bio);
    if (!pkey) {
        ERR_clear_error();
        return loom_error_set(err, LOOM_EPARSE, "not a PEM %s key (encrypted keys are refused)",
                              pub ? "public" : "private");
    }
    return jwk_finish(pkey, alg, kid, !pub, out, err);
}

loom_err loom_jwk_private_pem(const struct loom_jwk *key, struct loom_buf *out,
                              struct loom_error *err)
{
    if (!key->priv)
        return loom_error_set(err, LOOM_EINVAL, "key %s has no private part", key->kid);
    BIO *bio = BIO_new(BIO_s_mem());
    if (!bio)
        return ossl_fail(err, "BIO_new");
    loom_err e = LOOM_OK;
    if (PEM_write_bio_PrivateKey(bio, key->pkey, NULL, NULL, 0, NULL, NULL) != 1) {
        e = ossl_fail(err, "PEM_write_bio_PrivateKey");
    } else {
        char *p = NULL;
        long n = BIO_get_mem_data(bio, &p);
        e = loom_buf_append(out, p, (size_t)n);
        if (e)
            loom_error_set(err, e, "the PEM key does not fit the buffer");
    }
    /* The memory BIO held the private key: wipe it before it goes back to the allocator. */
    BUF_MEM *mem = NULL;
    BIO_get_mem_ptr(bio, &mem);
    if (mem && mem->data)
        OPENSSL_cleanse(mem->data, mem->max);
    BIO_free(bio);
    return e;
}

void loom_jwk_write_public(const struct loom_jwk *key, struct loom_json_writer *w)
{
    loom_json_write_object_begin(w);
    if (key->alg == LOOM_JWT_ES256) {
        loom_json_write_key(w, "kty");
        loom_json_write_string(w, "EC");
        loom_json_write_key(w, "crv");
        loom_json_write_string(w, "P-256");
        loom_json_write_key(w, "x");
        loom_json_write_string(w, key->pub_a);
        loom_json_write_key(w, "y");
        loom_json_write_string(w, key->pub_b);
    } else {
        loom_json_write_key(w, "kty");
        loom_json_write_string(w, "RSA");
        loom_json_write_key(w, "n");
        loom_json_write_string(w, key->pub_a);
        loom_json_write_key(w, "e");
        loom_json_write_string(w, key->pub_b);
    }
    loom_json_write_key(w, "kid");
    loom_json_write_string(w, key->kid);
    loom_json_write_key(w, "alg");
    loom_json_write_string(w, loom_jwt_alg_name(key->alg));
    loom_json_write_key(w, "use");
    loom_json_write_string(w, "sig");
    loom_json_write_object_end(w);
}

void loom_jwk_thumbprint(const struct loom_jwk *key, char out[LOOM_JWK_THUMBPRINT_LEN + 1])
{
    /* RFC 7638: the required members only, in lexicographic order, without whitespace. */
    struct loom_buf b;
    loom_buf_init(&b, 0);
    if (key->alg == LOOM_JWT_ES256)
        loom_buf_printf(&b, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}",
                        key->pub_a, key->pub_b);
    else
        loom_buf_printf(&b, "{\"e\":\"%s\",\"kty\":\"RSA\",\"n\":\"%s\"}", key->pub_b, key->pub_a);
    uint8_t d[LOOM_SHA256_LEN];
    loom_sha256(b.data, b.len, d);
    loom_buf_reset(&b);
    loom_base64url_encode(&b, d, sizeof(d));
    memcpy(out, b.data, LOOM_JWK_THUMBPRINT_LEN);
    out[LOOM_JWK_THUMBPRINT_LEN] = '\0';
    loom_buf_release(&b);
}

const char *loom_jwk_kid(const struct loom_jwk *key)
{
    return key->kid;
}

enum loom_jwt_alg loom_jwk_alg(const struct loom_jwk *key)
{
    return key->alg;
}

bool loom_jwk_is_private(const struct loom_jwk *key)
{
    return key->priv;
}

struct loom_jwk *loom_jwk_ref(struct loom_jwk *key)
{
    atomic_fetch_add_explicit(&key->refs, 1, memory_order_relaxed);
    return key;
}

void loom_jwk_unref(struct loom_jwk *key)
{
    if (key && atomic_fetch_sub_explicit(&key->refs, 1, memory_order_acq_rel) == 1)
        jwk_free(key);
}

/* ---- JWK from JSON ------------------------------------------------------------------------- */

/* The unescaped string member `name` of object `obj`: 1 found, 0 absent, -1 not a string. */
static int member_str(const struct loom_json_doc *doc, int obj, const char *name,
                      struct loom_arena *arena, struct loom_str *out)
{
    int i = loom_json_obj_get(doc, obj, name);
    if (i < 0)
        return 0;
    if (!loom_json_is_string(doc, i) || loom_json_unescape(doc, i, arena, out))
        return -1;
    return 1;
}

/* A base64url member decoded into `out` (cap bytes): its length, or -1. */
static long member_b64(const struct loom_json_doc *doc, int obj, const char *name,
                       struct loom_arena *arena, uint8_t *out, size_t cap)
{
    struct loom_str s;
    if (member_str(doc, obj, name, arena, &s) != 1 || s.len == 0 || s.len * 3 / 4 > cap)
        return -1;
    size_t n;
    if (loom_base64url_decode(s, out, &n))
        return -1;
    return (long)n;
}

static loom_err pkey_fromdata(const char *type, OSSL_PARAM_BLD *bld, EVP_PKEY **out,
                              struct loom_error *err)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    EVP_PKEY *pkey = NULL;
    loom_err e = LOOM_OK;
    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1) {
        ERR_clear_error();
        e = loom_error_set(err, LOOM_EINVAL, "the %s public key is invalid", type);
        goto out;
    }
    /* Refuse points off the curve, the point at infinity, and RSA moduli that are not sane. */
    EVP_PKEY_CTX *check = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    int ok = check && EVP_PKEY_public_check(check) == 1;
    EVP_PKEY_CTX_free(check);
    if (!ok) {
        ERR_clear_error();
        EVP_PKEY_free(pkey);
        e = loom_error_set(err, LOOM_EINVAL, "the %s public key is invalid", type);
        goto out;
    }
    *out = pkey;
out:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return e;
}

loom_err loom_jwk_from_json(const struct loom_json_doc *doc, int i, struct loom_jwk **out,
                            struct loom_error *err)
{
    static const char *const private_members[] = { "d", "p", "q", "dp", "dq", "qi", "oth", "k" };
    if (!loom_json_is_object(doc, i))
        return loom_error_set(err, LOOM_EINVAL, "a JWK is a JSON object");
    for (size_t m = 0; m < LOOM_ARRAY_SIZE(private_members); m++)
        if (loom_json_obj_get(doc, i, private_members[m]) >= 0)
            return loom_error_set(err, LOOM_EINVAL,
                                  "the JWK has a private or symmetric part (\"%s\"): publish "
                                  "public keys only",
                                  private_members[m]);
    struct loom_arena arena;
    loom_arena_init(&arena, 0);
    loom_err e = LOOM_OK;
    struct loom_str kty, kid, alg, use, crv;
    char kid_c[LOOM_JWK_KID_MAX + 1];
    char shown[24];
    if (member_str(doc, i, "kty", &arena, &kty) != 1) {
        e = loom_error_set(err, LOOM_EINVAL, "the JWK has no kty");
        goto out;
    }
    if (member_str(doc, i, "kid", &arena, &kid) != 1 || !kid_valid(kid)) {
        e = loom_error_set(err, LOOM_EINVAL,
                           "the JWK has no kid, or one that is not 1 to %d printable characters",
                           LOOM_JWK_KID_MAX);
        goto out;
    }
    memcpy(kid_c, kid.ptr, kid.len);
    kid_c[kid.len] = '\0';
    if (member_str(doc, i, "alg", &arena, &alg) != 1) {
        e = loom_error_set(err, LOOM_EINVAL, "JWK %s has no alg", kid_c);
        goto out;
    }
    int u = member_str(doc, i, "use", &arena, &use);
    if (u < 0 || (u == 1 && !loom_str_eq(use, LOOM_STR("sig")))) {
        e = loom_error_set(err, LOOM_EINVAL, "JWK %s is not for signatures (use)", kid_c);
        goto out;
    }
    enum loom_jwt_alg a = loom_jwt_alg_parse(alg);
    if (loom_str_eq(kty, LOOM_STR("EC"))) {
        if (a != LOOM_JWT_ES256) {
            e = loom_error_set(err, LOOM_EUNSUPPORTED, "JWK %s: alg \"%s\" is not ES256", kid_c,
                               printable(alg, shown, sizeof(shown)));
            goto out;
        }
        if (member_str(doc, i, "crv", &arena, &crv) != 1 || !loom_str_eq(crv, LOOM_STR("P-256"))) {
            e = loom_error_set(err, LOOM_EUNSUPPORTED, "JWK %s: the curve is not P-256", kid_c);
            goto out;
        }
        uint8_t pt[65] = { 0x04 };
        if (member_b64(doc, i, "x", &arena, pt + 1, 32) != 32 ||
            member_b64(doc, i, "y", &arena, pt + 33, 32) != 32) {
            e = loom_error_set(err, LOOM_EINVAL, "JWK %s: x and y must be 32 bytes of base64url",
                               kid_c);
            goto out;
        }
        OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
        EVP_PKEY *pkey = NULL;
        if (!bld || !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "P-256", 0) ||
            !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof(pt))) {
            OSSL_PARAM_BLD_free(bld);
            e = ossl_fail(err, "OSSL_PARAM_BLD");
            goto out;
        }
        e = pkey_fromdata("EC", bld, &pkey, err);
        OSSL_PARAM_BLD_free(bld);
        if (e) {
            loom_error_prefix(err, "JWK %s", kid_c);
            goto out;
        }
        e = jwk_finish(pkey, a, kid_c, false, out, err);
    } else if (loom_str_eq(kty, LOOM_STR("RSA"))) {
        if (a != LOOM_JWT_RS256) {
            e = loom_error_set(err, LOOM_EUNSUPPORTED, "JWK %s: alg \"%s\" is not RS256", kid_c,
                               printable(alg, shown, sizeof(shown)));
            goto out;
        }
        uint8_t nb[RSA_MAX_BITS / 8 + 2], eb[16];
        long nlen = member_b64(doc, i, "n", &arena, nb, sizeof(nb));
        long elen = member_b64(doc, i, "e", &arena, eb, sizeof(eb));
        if (nlen < RSA_MIN_BITS / 8 || nlen > RSA_MAX_BITS / 8 || nb[0] == 0 || elen < 1 ||
            elen > 8 || eb[0] == 0 || !(eb[elen - 1] & 1)) {
            e = loom_error_set(err, LOOM_EINVAL,
                               "JWK %s: n must be a %d to %d-bit modulus and e a small odd "
                               "exponent, in unpadded base64url",
                               kid_c, RSA_MIN_BITS, RSA_MAX_BITS);
            goto out;
        }
        BIGNUM *n = BN_bin2bn(nb, (int)nlen, NULL), *ee = BN_bin2bn(eb, (int)elen, NULL);
        OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
        EVP_PKEY *pkey = NULL;
        if (!n || !ee || !bld || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
            !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, ee)) {
            e = ossl_fail(err, "OSSL_PARAM_BLD");
        } else {
            e = pkey_fromdata("RSA", bld, &pkey, err);
            if (e)
                loom_error_prefix(err, "JWK %s", kid_c);
        }
        OSSL_PARAM_BLD_free(bld);
        BN_free(n);
        BN_free(ee);
        if (!e)
            e = jwk_finish(pkey, a, kid_c, false, out, err);
    } else {
        e = loom_error_set(err, LOOM_EUNSUPPORTED, "JWK %s: kty \"%s\" is not EC or RSA", kid_c,
                           printable(kty, shown, sizeof(shown)));
    }
out:
    loom_arena_release(&arena);
    return e;
}

/* ---- key sets ------------------------------------------------------------------------------ */

struct loom_jwks *loom_jwks_new(void)
{
    struct loom_jwks *s = loom_new(struct loom_jwks);
    atomic_init(&s->refs, 1);
    return s;
}

loom_err loom_jwks_add(struct loom_jwks *set, struct loom_jwk *key, struct loom_error *err)
{
    if (loom_jwks_find(set, loom_str_cstr(key->kid)))
        return loom_error_set(err, LOOM_EEXIST, "kid %s is in the set twice", key->kid);
    if (set->n == LOOM_JWKS_MAX_KEYS)
        return loom_error_set(err, LOOM_ETOOBIG, "a key set holds at most %d keys",
                              LOOM_JWKS_MAX_KEYS);
    set->keys[set->n++] = loom_jwk_ref(key);
    return LOOM_OK;
}

const struct loom_jwk *loom_jwks_find(const struct loom_jwks *set, struct loom_str kid)
{
    for (size_t i = 0; i < set->n; i++) {
        const struct loom_jwk *k = set->keys[i];
        if (strlen(k->kid) == kid.len && memcmp(k->kid, kid.ptr, kid.len) == 0)
            return k;
    }
    return NULL;
}

size_t loom_jwks_count(const struct loom_jwks *set)
{
    return set->n;
}

const struct loom_jwk *loom_jwks_at(const struct loom_jwks *set, size_t i)
{
    return i < set->n ? set->keys[i] : NULL;
}

struct loom_jwks *loom_jwks_ref(struct loom_jwks *set)
{
    atomic_fetch_add_explicit(&set->refs, 1, memory_order_relaxed);
    return set;
}

void loom_jwks_unref(struct loom_jwks *set)
{
    if (!set || atomic_fetch_sub_explicit(&set->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < set->n; i++)
        loom_jwk_unref(set->keys[i]);
    free(set);
}

/* Whether some object in the document has the same key twice (compared unescaped). */
static bool has_duplicate_keys(const struct loom_json_doc *doc, struct loom_arena *arena)
{
    for (int o = 0; o < doc->ntoks; o++) {
        if (!loom_json_is_object(doc, o) || loom_json_size(doc, o) < 2)
            continue;
        int n = loom_json_size(doc, o), k = 0;
        struct loom_str *keys = loom_arena_alloc(arena, (size_t)n * sizeof(*keys));
        loom_json_foreach (doc, o, key) {
            if (loom_json_unescape(doc, key, arena, &keys[k]))
                return true;
            k++;
        }
        for (int a = 0; a < n; a++)
            for (int b = a + 1; b < n; b++)
                if (loom_str_eq(keys[a], keys[b]))
                    return true;
    }
    return false;
}

loom_err loom_jwks_parse(const char *json, size_t len, struct loom_jwks **out,
                         struct loom_error *err)
{
    if (len > JWKS_MAX_BYTES)
        return loom_error_set(err, LOOM_ETOOBIG, "a JWK set is at most 1 MiB");
    struct loom_arena arena;
    loom_arena_init(&arena, 0);
    struct loom_json_doc doc;
    struct loom_json_limits lim = { .max_depth = 8, .max_bytes = JWKS_MAX_BYTES };
    struct loom_jwks *set = NULL;
    struct loom_error jerr = { 0 };
    loom_err e = loom_json_parse(json, len, &lim, &arena, &doc, &jerr);
    if (e) {
        e = loom_error_set(err, LOOM_EPARSE, "the JWK set is not JSON: %s", jerr.msg);
        goto out;
    }
    int keys = loom_json_is_object(&doc, 0) ? loom_json_obj_get(&doc, 0, "keys") : -1;
    if (keys < 0 || !loom_json_is_array(&doc, keys)) {
        e = loom_error_set(err, LOOM_EPARSE, "a JWK set is an object with a \"keys\" array");
        goto out;
    }
    if (has_duplicate_keys(&doc, &arena)) {
        e = loom_error_set(err, LOOM_EPARSE, "the JWK set has an object with a key twice");
        goto out;
    }
    if (loom_json_size(&doc, keys) > LOOM_JWKS_MAX_KEYS) {
        e = loom_error_set(err, LOOM_ETOOBIG, "a JWK set holds at most %d keys",
                           LOOM_JWKS_MAX_KEYS);
        goto out;
    }
    set = loom_jwks_new();
    int idx = 0;
    loom_json_foreach (&doc, keys, k) {
        struct loom_jwk *key;
        e = loom_jwk_from_json(&doc, k, &key, err);
        if (!e) {
            e = loom_jwks_add(set, key, err);
            loom_jwk_unref(key);
        }
        if (e) {
            loom_error_prefix(err, "keys[%d]", idx);
            goto out;
        }
        idx++;
    }
    *out = set;
    set = NULL;
out:
    loom_jwks_unref(set);
    loom_arena_release(&arena);
    return e;
}

loom_err loom_jwks_write(const struct loom_jwks *set, struct loom_buf *out)
{
    struct loom_json_writer w;
    loom_json_writer_init(&w, out);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "keys");
    loom_json_write_array_begin(&w);
    for (size_t i = 0; i < set->n; i++)
        loom_jwk_write_public(set->keys[i], &w);
    loom_json_write_array_end(&w);
    loom_json_write_object_end(&w);
    return loom_json_writer_finish(&w);
}

/* ---- signing ------------------------------------------------------------------------------- */

/* The signature of msg with the key's algorithm into sig (at least key->sig_len bytes). */
static loom_err sign_bytes(const struct loom_jwk *key, const void *msg, size_t n, uint8_t *sig,
                           size_t *siglen, struct loom_error *err)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    uint8_t der[160];
    size_t dlen = 0;
    loom_err e = LOOM_OK;
    if (!ctx || EVP_DigestSignInit_ex(ctx, &pctx, "SHA256", NULL, NULL, key->pkey, NULL) != 1) {
        e = ossl_fail(err, "EVP_DigestSignInit_ex");
        goto out;
    }
    if (key->alg == LOOM_JWT_RS256) {
        size_t len = key->sig_len;
        if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1 ||
            EVP_DigestSign(ctx, sig, &len, msg, n) != 1 || len != key->sig_len) {
            e = ossl_fail(err, "RS256 signing");
            goto out;
        }
        *siglen = len;
        goto out;
    }
    dlen = sizeof(der);
    if (EVP_DigestSign(ctx, der, &dlen, msg, n) != 1) {
        e = ossl_fail(err, "ES256 signing");
        goto out;
    }
    /* DER ECDSA-Sig-Value to JOSE's r||s, with s moved to the low half (n - s) if needed. */
    const unsigned char *p = der;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)dlen);
    BIGNUM *s = NULL, *order = NULL, *half = NULL;
    if (!es || !(order = BN_bin2bn(p256_n, 32, NULL)) ||
        !(half = BN_bin2bn(p256_half_n, 32, NULL)) || !(s = BN_dup(ECDSA_SIG_get0_s(es))) ||
        (BN_cmp(s, half) > 0 && !BN_sub(s, order, s)) ||
        BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, 32) != 32 || BN_bn2binpad(s, sig + 32, 32) != 32)
        e = ossl_fail(err, "ES256 signature encoding");
    else
        *siglen = ES256_SIG_LEN;
    BN_free(s);
    BN_free(order);
    BN_free(half);
    ECDSA_SIG_free(es);
out:
    EVP_MD_CTX_free(ctx);
    return e;
}

loom_err loom_jws_sign_raw(const struct loom_jwk *key, struct loom_str header_json,
                           struct loom_str payload_json, struct loom_buf *out,
                           struct loom_error *err)
{
    if (!key->priv)
        return loom_error_set(err, LOOM_EINVAL, "key %s cannot sign: it has no private part",
                              key->kid);
    size_t start = out->len;
    uint8_t sig[RSA_MAX_BITS / 8];
    size_t siglen = 0;
    loom_err e = loom_base64url_encode(out, header_json.ptr, header_json.len);
    if (!e)
        e = loom_buf_putc(out, '.');
    if (!e)
        e = loom_base64url_encode(out, payload_json.ptr, payload_json.len);
    if (e) {
        loom_error_set(err, e, "the token does not fit the buffer");
        goto fail;
    }
    e = sign_bytes(key, out->data + start, out->len - start, sig, &siglen, err);
    if (e)
        goto fail;
    e = loom_buf_putc(out, '.');
    if (!e)
        e = loom_base64url_encode(out, sig, siglen);
    if (e) {
        loom_error_set(err, e, "the token does not fit the buffer");
        goto fail;
    }
    return LOOM_OK;
fail:
    out->len = start;
    if (out->cap)
        out->data[start] = '\0';
    return e;
}

loom_err loom_jwt_sign(const struct loom_jwk *key, const struct loom_jwt_claims *c,
                       struct loom_buf *out, struct loom_error *err)
{
    if (!c->iss.len || !c->sub.len || !c->aud.len || !c->jti.len || !c->client_id.len ||
        c->exp <= 0)
        return loom_error_set(err, LOOM_EINVAL,
                              "a token needs iss, sub, aud, jti, client_id and exp");
    if (!scope_valid(c->scope))
        return loom_error_set(err, LOOM_EINVAL, "the scope is not space-separated scope tokens");
    struct loom_buf h, p;
    loom_buf_init(&h, LOOM_JWT_MAX_LEN);
    loom_buf_init(&p, LOOM_JWT_MAX_LEN);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &h);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "alg");
    loom_json_write_string(&w, loom_jwt_alg_name(key->alg));
    loom_json_write_key(&w, "typ");
    loom_json_write_string(&w, "at+jwt");
    loom_json_write_key(&w, "kid");
    loom_json_write_string(&w, key->kid);
    loom_json_write_object_end(&w);
    loom_err e = loom_json_writer_finish(&w);
    if (!e) {
        loom_json_writer_init(&w, &p);
        loom_json_write_object_begin(&w);
        loom_json_write_key(&w, "iss");
        loom_json_write_str(&w, c->iss);
        loom_json_write_key(&w, "sub");
        loom_json_write_str(&w, c->sub);
        loom_json_write_key(&w, "aud");
        loom_json_write_str(&w, c->aud);
        loom_json_write_key(&w, "exp");
        loom_json_write_i64(&w, c->exp);
        loom_json_write_key(&w, "nbf");
        loom_json_write_i64(&w, c->nbf);
        loom_json_write_key(&w, "iat");
        loom_json_write_i64(&w, c->iat);
        loom_json_write_key(&w, "jti");
        loom_json_write_str(&w, c->jti);
        loom_json_write_key(&w, "client_id");
        loom_json_write_str(&w, c->client_id);
        loom_json_write_key(&w, "scope");
        loom_json_write_str(&w, c->scope);
        if (c->private_name.len) {
            loom_json_write_keyn(&w, c->private_name);
            loom_json_write_raw(&w, c->private_json);
        }
        loom_json_write_object_end(&w);
        e = loom_json_writer_finish(&w);
    }
    if (e) {
        loom_error_set(err, LOOM_ETOOBIG, "the token would be over %d bytes", LOOM_JWT_MAX_LEN);
        goto out;
    }
    size_t start = out->len;
    e = loom_jws_sign_raw(key, loom_buf_str(&h), loom_buf_str(&p), out, err);
    if (!e && out->len - start > LOOM_JWT_MAX_LEN) {
        out->len = start;
        out->data[start] = '\0';
        e = loom_error_set(err, LOOM_ETOOBIG, "the token would be over %d bytes", LOOM_JWT_MAX_LEN);
    }
out:
    loom_buf_release(&h);
    loom_buf_release(&p);
    return e;
}

/* ---- verification -------------------------------------------------------------------------- */

/* Append the DER INTEGER for a 32-byte big-endian unsigned value (not zero). */
static size_t der_int(uint8_t *d, const uint8_t *v)
{
    size_t skip = 0;
    while (skip < 31 && v[skip] == 0)
        skip++;
    size_t n = 32 - skip;
    bool pad = v[skip] & 0x80;
    d[0] = 0x02;
    d[1] = (uint8_t)(n + pad);
    d[2] = 0;
    memcpy(d + 2 + pad, v + skip, n);
    return 2 + pad + n;
}

static bool is_zero(const uint8_t *v, size_t n)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= v[i];
    return acc == 0;
}

static loom_err verify_sig(const struct loom_jwk *key, struct loom_str input, const uint8_t *sig,
                           size_t siglen, bool allow_high_s, struct loom_error *err)
{
    uint8_t der[80];
    const uint8_t *vsig = sig;
    size_t vlen = siglen;
    if (key->alg == LOOM_JWT_ES256) {
        if (siglen != ES256_SIG_LEN)
            return loom_error_set(err, LOOM_EUNAUTH,
                                  "an ES256 signature is 64 bytes (r||s), not %zu", siglen);
        const uint8_t *r = sig, *s = sig + 32;
        if (is_zero(r, 32) || is_zero(s, 32) || memcmp(r, p256_n, 32) >= 0 ||
            memcmp(s, p256_n, 32) >= 0)
            return loom_error_set(err, LOOM_EUNAUTH, "the ES256 signature is out of range");
        if (!allow_high_s && memcmp(s, p256_half_n, 32) > 0)
            return loom_error_set(err, LOOM_EUNAUTH,
                                  "the ES256 signature has a high s (a malleated signature)");
        size_t n = der_int(der + 2, r);
        n += der_int(der + 2 + n, s);
        der[0] = 0x30;
        der[1] = (uint8_t)n;
        vsig = der;
        vlen = n + 2;
    } else if (siglen != key->sig_len) {
        return loom_error_set(err, LOOM_EUNAUTH, "an RS256 signature for this key is %zu bytes",
                              key->sig_len);
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    loom_err e = LOOM_OK;
    if (!ctx || EVP_DigestVerifyInit_ex(ctx, &pctx, "SHA256", NULL, NULL, key->pkey, NULL) != 1 ||
        (key->alg == LOOM_JWT_RS256 &&
         EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1)) {
        e = ossl_fail(err, "EVP_DigestVerifyInit_ex");
    } else if (EVP_DigestVerify(ctx, vsig, vlen, (const unsigned char *)input.ptr, input.len) !=
               1) {
        ERR_clear_error();
        e = loom_error_set(err, LOOM_EUNAUTH, "the signature does not verify with key %s",
                           key->kid);
    }
    EVP_MD_CTX_free(ctx);
    return e;
}

/* Whether s has a byte below 0x20 or DEL (NUL included). */
static bool has_control(struct loom_str s)
{
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (c < 0x20 || c == 0x7f)
            return true;
    }
    return false;
}

/* A string claim: unescaped, bounded, without control characters. */
static loom_err claim_str(const struct loom_json_doc *doc, int obj, const char *name, size_t max,
                          bool required, struct loom_arena *arena, struct loom_str *out,
                          struct loom_error *err)
{
    int i = loom_json_obj_get(doc, obj, name);
    if (i < 0) {
        if (required)
            return loom_error_set(err, LOOM_EINVAL, "the token has no %s claim", name);
        *out = LOOM_STR("");
        return LOOM_OK;
    }
    if (!loom_json_is_string(doc, i) || loom_json_unescape(doc, i, arena, out))
        return loom_error_set(err, LOOM_EINVAL, "the %s claim is not a string", name);
    if (out->len > max)
        return loom_error_set(err, LOOM_ETOOBIG, "the %s claim is over %zu bytes", name, max);
    if (has_control(*out))
        return loom_error_set(err, LOOM_EINVAL, "the %s claim has control characters", name);
    if (required && out->len == 0)
        return loom_error_set(err, LOOM_EINVAL, "the %s claim is empty", name);
    return LOOM_OK;
}

/* A NumericDate claim: an integer number of seconds in 0..year 9999. */
static loom_err claim_time(const struct loom_json_doc *doc, int obj, const char *name,
                           bool required, int64_t *out, bool *present, struct loom_error *err)
{
    int i = loom_json_obj_get(doc, obj, name);
    *present = i >= 0;
    if (i < 0) {
        *out = 0;
        return required ? loom_error_set(err, LOOM_EINVAL, "the token has no %s claim", name)
                        : LOOM_OK;
    }
    int64_t v;
    if (!loom_json_is_integer(doc, i) || loom_json_to_i64(doc, i, &v) || v < 0 ||
        v > NUMERIC_DATE_MAX)
        return loom_error_set(err, LOOM_EINVAL, "the %s claim is not an integer number of seconds",
                              name);
    *out = v;
    return LOOM_OK;
}

/* Whether typ is at+jwt or application/at+jwt, ASCII case-insensitive (RFC 9068 section 4). */
static bool typ_ok(struct loom_str typ)
{
    return loom_str_ieq(typ, LOOM_STR("at+jwt")) ||
           loom_str_ieq(typ, LOOM_STR("application/at+jwt"));
}

static loom_err check_header(const struct loom_jwks *keys, struct loom_str hb64,
                             struct loom_arena *arena, const struct loom_jwk **key,
                             struct loom_str *kid_out, struct loom_error *err)
{
    if (hb64.len > (HEADER_MAX * 4 + 2) / 3)
        return loom_error_set(err, LOOM_ETOOBIG, "the header is over %d bytes", HEADER_MAX);
    struct loom_str hdr;
    if (b64_to_arena(hb64, arena, &hdr))
        return loom_error_set(err, LOOM_EPARSE, "the header is not unpadded base64url");
    struct loom_json_doc doc;
    struct loom_json_limits lim = { .max_depth = 4, .max_tokens = 128 };
    struct loom_error jerr = { 0 };
    if (loom_json_parse(hdr.ptr, hdr.len, &lim, arena, &doc, &jerr))
        return loom_error_set(err, LOOM_EPARSE, "the header is not JSON: %s", jerr.msg);
    if (!loom_json_is_object(&doc, 0))
        return loom_error_set(err, LOOM_EPARSE, "the header is not a JSON object");
    if (has_duplicate_keys(&doc, arena))
        return loom_error_set(err, LOOM_EPARSE, "the header has a member twice");
    if (loom_json_obj_get(&doc, 0, "crit") >= 0)
        return loom_error_set(err, LOOM_EINVAL,
                              "the header has crit: no extension is understood here");
    struct loom_str typ, alg, kid;
    char shown[24];
    int r = member_str(&doc, 0, "typ", arena, &typ);
    if (r == 0)
        return loom_error_set(err, LOOM_EINVAL, "the header has no typ (at+jwt)");
    if (r < 0 || !typ_ok(typ))
        return loom_error_set(err, LOOM_EINVAL, "typ \"%s\" is not at+jwt",
                              r < 0 ? "(not a string)" : printable(typ, shown, sizeof(shown)));
    if (member_str(&doc, 0, "alg", arena, &alg) != 1)
        return loom_error_set(err, LOOM_EINVAL, "the header has no alg");
    enum loom_jwt_alg a = loom_jwt_alg_parse(alg);
    if (a == LOOM_JWT_ALG_INVALID)
        return loom_error_set(err, LOOM_EUNSUPPORTED, "alg \"%s\" is not accepted",
                              printable(alg, shown, sizeof(shown)));
    if (member_str(&doc, 0, "kid", arena, &kid) != 1 || kid.len == 0)
        return loom_error_set(err, LOOM_EINVAL, "the header has no kid");
    if (kid.len > LOOM_JWK_KID_MAX || has_control(kid))
        return loom_error_set(err, LOOM_EINVAL,
                              "the kid is not a printable string of at most %d "
                              "bytes",
                              LOOM_JWK_KID_MAX);
    const struct loom_jwk *k = loom_jwks_find(keys, kid);
    if (!k)
        return loom_error_set(err, LOOM_ENOTFOUND, "unknown kid \"%s\"",
                              printable(kid, shown, sizeof(shown)));
    if (k->alg != a)
        return loom_error_set(err, LOOM_EUNSUPPORTED, "alg %s is not the %s key %s is pinned to",
                              loom_jwt_alg_name(a), loom_jwt_alg_name(k->alg), k->kid);
    *key = k;
    *kid_out = kid;
    return LOOM_OK;
}

static loom_err check_claims(struct loom_str payload, const struct loom_jwt_expect *x,
                             struct loom_arena *arena, struct loom_jwt_claims *c,
                             struct loom_error *err)
{
    struct loom_json_doc doc;
    struct loom_json_limits lim = { .max_depth = PAYLOAD_MAX_DEPTH,
                                    .max_tokens = PAYLOAD_MAX_TOKENS };
    struct loom_error jerr = { 0 };
    if (loom_json_parse(payload.ptr, payload.len, &lim, arena, &doc, &jerr))
        return loom_error_set(err, LOOM_EPARSE, "the payload is not JSON: %s", jerr.msg);
    if (!loom_json_is_object(&doc, 0))
        return loom_error_set(err, LOOM_EPARSE, "the payload is not a JSON object");
    if (has_duplicate_keys(&doc, arena))
        return loom_error_set(err, LOOM_EPARSE, "the payload has a member twice");
    loom_err e;
    bool has_exp, has_nbf, has_iat;
    if ((e = claim_str(&doc, 0, "iss", ISS_MAX, true, arena, &c->iss, err)) ||
        (e = claim_str(&doc, 0, "sub", SUB_MAX, true, arena, &c->sub, err)) ||
        (e = claim_str(&doc, 0, "jti", SUB_MAX, true, arena, &c->jti, err)) ||
        (e = claim_str(&doc, 0, "client_id", SUB_MAX, true, arena, &c->client_id, err)) ||
        (e = claim_str(&doc, 0, "scope", SCOPE_MAX, false, arena, &c->scope, err)) ||
        (e = claim_time(&doc, 0, "exp", true, &c->exp, &has_exp, err)) ||
        (e = claim_time(&doc, 0, "nbf", false, &c->nbf, &has_nbf, err)) ||
        (e = claim_time(&doc, 0, "iat", false, &c->iat, &has_iat, err)))
        return e;
    if (!scope_valid(c->scope))
        return loom_error_set(err, LOOM_EINVAL,
                              "the scope claim is not space-separated scope tokens");
    /* aud: a string, or an array of strings, holding the expected audience. */
    int aud = loom_json_obj_get(&doc, 0, "aud");
    if (aud < 0)
        return loom_error_set(err, LOOM_EINVAL, "the token has no aud claim");
    struct loom_str want = loom_str_cstr(x->audience);
    bool aud_ok = false;
    if (loom_json_is_string(&doc, aud)) {
        aud_ok = loom_json_str_eq(&doc, aud, want);
    } else if (loom_json_is_array(&doc, aud)) {
        if (loom_json_size(&doc, aud) > AUD_MAX_ITEMS)
            return loom_error_set(err, LOOM_ETOOBIG, "the aud claim has over %d audiences",
                                  AUD_MAX_ITEMS);
        loom_json_foreach (&doc, aud, a) {
            if (!loom_json_is_string(&doc, a))
                return loom_error_set(err, LOOM_EINVAL, "the aud claim has a non-string item");
            if (loom_json_str_eq(&doc, a, want))
                aud_ok = true;
        }
    } else {
        return loom_error_set(err, LOOM_EINVAL, "the aud claim is not a string or an array");
    }
    if (!loom_str_eq(c->iss, loom_str_cstr(x->issuer)))
        return loom_error_set(err, LOOM_ECONFLICT, "the token was issued by another issuer");
    if (!aud_ok)
        return loom_error_set(err, LOOM_EFORBIDDEN, "the token is not for audience \"%s\"",
                              x->audience);
    c->aud = want;
    int64_t now = x->now ? x->now : loom_wall_ns() / (int64_t)LOOM_NS_PER_SEC;
    int64_t leeway = x->leeway < 0 ? 0 : LOOM_MIN(x->leeway, LOOM_JWT_MAX_LEEWAY);
    if (now >= c->exp + leeway)
        return loom_error_set(err, LOOM_ETIMEDOUT, "the token expired %lld s ago",
                              (long long)(now - c->exp));
    if (has_nbf && c->nbf > now + leeway)
        return loom_error_set(err, LOOM_EAGAIN, "the token is not valid for another %lld s",
                              (long long)(c->nbf - now));
    if (has_iat && c->iat > now + leeway)
        return loom_error_set(err, LOOM_EAGAIN, "the token was issued %lld s in the future",
                              (long long)(c->iat - now));
    c->payload = payload;
    return LOOM_OK;
}

loom_err loom_jwt_verify(const struct loom_jwks *keys, struct loom_str token,
                         const struct loom_jwt_expect *expect, struct loom_arena *arena,
                         struct loom_jwt_claims *out, struct loom_error *err)
{
    if (!expect->issuer || !*expect->issuer || !expect->audience || !*expect->audience)
        return loom_error_set(err, LOOM_EINVAL, "verification needs an issuer and an audience");
    size_t max =
        expect->max_len && expect->max_len < LOOM_JWT_MAX_LEN ? expect->max_len : LOOM_JWT_MAX_LEN;
    if (token.len > max)
        return loom_error_set(err, LOOM_ETOOBIG, "the token is %zu bytes, over the limit of %zu",
                              token.len, max);
    /* Exactly three parts. */
    const char *d1 = token.len ? memchr(token.ptr, '.', token.len) : NULL;
    const char *end = token.ptr + token.len;
    const char *d2 = d1 ? memchr(d1 + 1, '.', (size_t)(end - d1 - 1)) : NULL;
    if (!d1 || !d2 || memchr(d2 + 1, '.', (size_t)(end - d2 - 1)))
        return loom_error_set(err, LOOM_EPARSE, "a JWS has exactly three dot-separated parts");
    struct loom_str hb64 = loom_str_make(token.ptr, (size_t)(d1 - token.ptr));
    struct loom_str pb64 = loom_str_make(d1 + 1, (size_t)(d2 - d1 - 1));
    struct loom_str sb64 = loom_str_make(d2 + 1, (size_t)(end - d2 - 1));
    if (!hb64.len || !pb64.len)
        return loom_error_set(err, LOOM_EPARSE, "the token's header or payload is empty");

    struct loom_jwt_claims c = { 0 };
    const struct loom_jwk *key = NULL;
    loom_err e = check_header(keys, hb64, arena, &key, &c.kid, err);
    if (e)
        return e;

    struct loom_str sig, payload;
    if (!sb64.len)
        return loom_error_set(err, LOOM_EPARSE, "the token has no signature");
    if (sb64.len > (RSA_MAX_BITS / 8 * 4 + 2) / 3 || b64_to_arena(sb64, arena, &sig))
        return loom_error_set(err, LOOM_EPARSE, "the signature is not unpadded base64url");
    /* The payload's encoding is checked before the (costly) signature, its JSON after. */
    if (b64_to_arena(pb64, arena, &payload))
        return loom_error_set(err, LOOM_EPARSE, "the payload is not unpadded base64url");
    e = verify_sig(key, loom_str_make(token.ptr, (size_t)(d2 - token.ptr)),
                   (const uint8_t *)sig.ptr, sig.len, expect->allow_high_s, err);
    if (e)
        return e;
    e = check_claims(payload, expect, arena, &c, err);
    if (e)
        return e;
    *out = c;
    return LOOM_OK;
}
