/* SPDX-License-Identifier: Apache-2.0 */
/*
 * JWS and JWT access tokens (RFC 7515, 7517, 7518, 7519, 9068) on OpenSSL, with every key
 * pinned to one algorithm. The identity service signs access tokens with it and the API
 * gateway verifies them; nothing here trusts the token to say how it should be checked (the
 * mistakes of RFC 8725 section 2): the algorithm comes from the key, never from the header, so
 * "none", HMAC with a public key as the secret, or ES384 on an ES256 key are refused before any
 * cryptography; the kid selects the key and must be known; "crit" is refused; jku, jwk, x5u and
 * x5c are ignored. Parsing is strict where the RFCs allow leniency: exactly three base64url
 * parts without padding, whitespace or non-canonical trailing bits; JSON objects without
 * duplicate keys; ES256 signatures only in JOSE's 64-byte r||s form with 0 < r, s < n and a low
 * s. The payload is parsed only after the signature verified.
 *
 * Keys (struct loom_jwk) and key sets (struct loom_jwks) are immutable once built and
 * reference-counted, so one set can be shared by every loop thread of a gateway and swapped
 * when its JWKS is refreshed; every function here is thread-safe on them. Verification does
 * not allocate outside the caller's arena except inside OpenSSL (one context per signature
 * check).
 *
 * Refusals have distinct codes, so an edge can count them and a gateway can refresh its JWKS
 * on LOOM_ENOTFOUND only. Every one of them is a 401 invalid_token at an edge (RFC 6750):
 * do not map them with loom_err_http_status.
 *
 *     LOOM_ETOOBIG      too large: the token, or a claim, is over its limit
 *     LOOM_EPARSE       malformed: parts, base64url, JSON, duplicate keys, non-object
 *     LOOM_EINVAL       invalid: well-formed but outside the profile (typ, crit, kid missing,
 *                       a required claim missing or of the wrong type)
 *     LOOM_EUNSUPPORTED bad algorithm: not the one the key is pinned to ("none", HS256, ...)
 *     LOOM_ENOTFOUND    unknown kid: refresh the key set, then try once more
 *     LOOM_EUNAUTH      bad signature
 *     LOOM_ETIMEDOUT    expired
 *     LOOM_EAGAIN       not yet valid (nbf or iat in the future)
 *     LOOM_ECONFLICT    wrong issuer
 *     LOOM_EFORBIDDEN   wrong audience
 */
#ifndef LOOM_JWT_H
#define LOOM_JWT_H

#include <loom/core.h>
#include <loom/json.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The signature algorithms a key can be pinned to. */
enum loom_jwt_alg {
    LOOM_JWT_ALG_INVALID = 0,
    LOOM_JWT_ES256 = 1, /* ECDSA P-256 with SHA-256: the default */
    LOOM_JWT_RS256 = 2, /* RSASSA-PKCS1-v1_5 with SHA-256, keys of 2048 to 8192 bits */
};

/* "ES256", "RS256", or "" for anything else. Never NULL. */
const char *loom_jwt_alg_name(enum loom_jwt_alg alg);
/* The algorithm named exactly (case-sensitive) `name`, or LOOM_JWT_ALG_INVALID. */
enum loom_jwt_alg loom_jwt_alg_parse(struct loom_str name);

/* Limits. */
#define LOOM_JWT_MAX_LEN        8192 /* bytes of a compact token, at most */
#define LOOM_JWT_MAX_LEEWAY     60   /* seconds of clock skew tolerated, at most */
#define LOOM_JWK_KID_MAX        128  /* bytes of a kid */
#define LOOM_JWKS_MAX_KEYS      64   /* keys in a set */
#define LOOM_JWK_THUMBPRINT_LEN 43   /* base64url of a SHA-256 */

/* ---- keys ---------------------------------------------------------------------------------- */

/* A key: a kid, the algorithm it is pinned to, a public key and maybe the private one. Opaque,
 * immutable, reference-counted; thread-safe. */
struct loom_jwk;

/*
 * A new key pair for `alg` (ES256: a P-256 key; RS256: 2048-bit RSA) with kid `kid`, or, when
 * kid is NULL, the key's RFC 7638 thumbprint. *out holds one reference (loom_jwk_unref). Returns
 * LOOM_EINVAL for an unknown alg or a kid that is empty, over LOOM_JWK_KID_MAX bytes or has
 * bytes outside printable ASCII (or '"', '\\'); LOOM_EINTERNAL if OpenSSL fails.
 */
loom_err loom_jwk_generate(enum loom_jwt_alg alg, const char *kid, struct loom_jwk **out,
                           struct loom_error *err);

/*
 * A key from PEM text (borrowed): a private key ("PRIVATE KEY", PKCS#8, unencrypted, or the
 * traditional "EC PRIVATE KEY" / "RSA PRIVATE KEY") or a public one ("PUBLIC KEY"). The key
 * must fit `alg` (a P-256 key for ES256; RSA of 2048 to 8192 bits for RS256) and is pinned to
 * it; kid as for loom_jwk_generate. *out holds one reference. LOOM_EPARSE if the text is not a
 * key, LOOM_EINVAL if the key does not fit alg or the kid is bad.
 */
loom_err loom_jwk_from_pem(enum loom_jwt_alg alg, const char *kid, struct loom_str pem,
                           struct loom_jwk **out, struct loom_error *err);

/* Append the private key as unencrypted PKCS#8 PEM to `out` (for storage: treat it as a
 * secret). LOOM_EINVAL for a public-only key, LOOM_ETOOBIG if out's ceiling is hit. */
loom_err loom_jwk_private_pem(const struct loom_jwk *key, struct loom_buf *out,
                              struct loom_error *err);

/*
 * Write the public key as one JWK object (RFC 7517/7518): {"kty":"EC","crv":"P-256","x","y",
 * "kid","alg","use":"sig"} or {"kty":"RSA","n","e","kid","alg","use":"sig"}. Never the
 * private part. Errors are the writer's (sticky).
 */
void loom_jwk_write_public(const struct loom_jwk *key, struct loom_json_writer *w);

/*
 * A public key from one JWK object: token `i` of a parsed document. It must have kid, alg
 * (ES256 or RS256, matching kty), kty EC with crv P-256 and 32-byte x and y on the curve, or
 * kty RSA with n (2048 to 8192 bits) and e; "use", when present, must be "sig". A JWK with a
 * private part (d, p, q, dp, dq, qi, oth, k) is refused. *out holds one reference. LOOM_EINVAL
 * or LOOM_EUNSUPPORTED (unknown kty, crv or alg) with a message.
 */
loom_err loom_jwk_from_json(const struct loom_json_doc *doc, int i, struct loom_jwk **out,
                            struct loom_error *err);

/* The kid (NUL-terminated, borrowed from the key). */
const char *loom_jwk_kid(const struct loom_jwk *key);
enum loom_jwt_alg loom_jwk_alg(const struct loom_jwk *key);
/* Whether the key can sign. */
bool loom_jwk_is_private(const struct loom_jwk *key);
/* The RFC 7638 thumbprint: base64url(SHA-256 of the canonical public JWK), 43 characters, into
 * out (NUL-terminated). */
void loom_jwk_thumbprint(const struct loom_jwk *key, char out[LOOM_JWK_THUMBPRINT_LEN + 1]);

/* Take and drop references. unref frees the key with its last reference; NULL is allowed. */
struct loom_jwk *loom_jwk_ref(struct loom_jwk *key);
void loom_jwk_unref(struct loom_jwk *key);

/* ---- key sets ------------------------------------------------------------------------------ */

/* A set of keys with distinct kids (at most LOOM_JWKS_MAX_KEYS). Build it, then share it
 * read-only: adding to a set other threads read is not allowed. Reference-counted. */
struct loom_jwks;

/* An empty set with one reference (loom_jwks_unref). */
struct loom_jwks *loom_jwks_new(void);
/* Add `key` (the set takes its own reference). LOOM_EEXIST for a kid already in the set,
 * LOOM_ETOOBIG past LOOM_JWKS_MAX_KEYS. */
loom_err loom_jwks_add(struct loom_jwks *set, struct loom_jwk *key, struct loom_error *err);
/* The key whose kid is `kid` (borrowed from the set), or NULL. */
const struct loom_jwk *loom_jwks_find(const struct loom_jwks *set, struct loom_str kid);
size_t loom_jwks_count(const struct loom_jwks *set);
/* Key i (< count), borrowed, in the order added. */
const struct loom_jwk *loom_jwks_at(const struct loom_jwks *set, size_t i);

/*
 * Parse a JWK Set document ({"keys":[JWK, ...]}, as /.well-known/jwks.json serves it) of `len`
 * bytes (at most 1 MiB). Every key must be acceptable to loom_jwk_from_json and kids must be
 * distinct: one bad key refuses the whole document (its index is in the message). *out holds
 * one reference. LOOM_EPARSE (not JSON, not an object, no "keys" array), LOOM_ETOOBIG (too big,
 * too many keys), LOOM_EINVAL / LOOM_EUNSUPPORTED (a bad key) or LOOM_EEXIST (a kid twice).
 */
loom_err loom_jwks_parse(const char *json, size_t len, struct loom_jwks **out,
                         struct loom_error *err);

/* Append {"keys":[...]} with every key's public JWK to `out`. LOOM_ETOOBIG at out's ceiling. */
loom_err loom_jwks_write(const struct loom_jwks *set, struct loom_buf *out);

struct loom_jwks *loom_jwks_ref(struct loom_jwks *set);
/* Drop a reference; the last one frees the set and its references to the keys. NULL is ok. */
void loom_jwks_unref(struct loom_jwks *set);

/* ---- tokens -------------------------------------------------------------------------------- */

/*
 * The claims of an RFC 9068 access token. For loom_jwt_sign the caller fills it (slices
 * borrowed for the call; iss, sub, aud, jti and client_id non-empty; scope may be empty). From
 * loom_jwt_verify every slice is unescaped, free of control characters, and lives in the arena
 * given to it (or in the token); aud is the expected audience that matched.
 */
struct loom_jwt_claims {
    struct loom_str iss, sub, aud, jti, client_id;
    struct loom_str scope;   /* space-separated scope tokens (RFC 6749 3.3); "" when absent */
    int64_t exp;             /* seconds since the epoch */
    int64_t nbf, iat;        /* 0 when absent (verify) */
    struct loom_str kid;     /* verify: the kid of the key that verified */
    struct loom_str payload; /* verify: the decoded JSON payload, for other claims */
    /* sign: one private claim written after the others, its name and its JSON value (written
     * as it is: the caller makes it valid JSON); an empty name for none. Unused by verify,
     * which leaves private claims in `payload`. */
    struct loom_str private_name, private_json;
};

/*
 * Sign `claims` with `key` (which must be private) into a compact JWS appended to `out`: header
 * {"alg":<the key's>,"typ":"at+jwt","kid":<the key's>}, payload {"iss","sub","aud","exp","nbf",
 * "iat","jti","client_id","scope"} and the private claim if any, base64url without padding. ES256
 * signatures are 64 bytes r||s with a low s. LOOM_EINVAL for a public key or a missing claim,
 * LOOM_ETOOBIG if the token would pass LOOM_JWT_MAX_LEN or out's ceiling, LOOM_EINTERNAL if OpenSSL
 * fails.
 */
loom_err loom_jwt_sign(const struct loom_jwk *key, const struct loom_jwt_claims *claims,
                       struct loom_buf *out, struct loom_error *err);

/*
 * Sign arbitrary header and payload bytes with `key`'s algorithm, unchecked: the raw JWS
 * primitive behind loom_jwt_sign, for tests and tools that must forge well-signed but
 * otherwise hostile tokens. Never use it to issue tokens. Errors as loom_jwt_sign, without
 * the size limit.
 */
loom_err loom_jws_sign_raw(const struct loom_jwk *key, struct loom_str header_json,
                           struct loom_str payload_json, struct loom_buf *out,
                           struct loom_error *err);

/* What loom_jwt_verify expects of a token. */
struct loom_jwt_expect {
    const char *issuer;   /* iss must equal it; required */
    const char *audience; /* aud must equal it, or be an array containing it; required */
    int64_t now;          /* seconds since the epoch; 0: the wall clock */
    int64_t leeway;       /* seconds of clock skew, 0..LOOM_JWT_MAX_LEEWAY (clamped) */
    size_t max_len;       /* 0, or more than LOOM_JWT_MAX_LEN: LOOM_JWT_MAX_LEN */
    /* ES256: accept s > n/2 too. Off by default: our signer writes low-s only, so a high-s
     * signature is a forgery of an equivalent token. Turn on for foreign ES256 issuers. */
    bool allow_high_s;
};

/*
 * Verify the compact JWS `token` against the keys in `keys` and the expectations, in this
 * order: length; three strict base64url parts; the header (an object without duplicate keys,
 * typ "at+jwt" or "application/at+jwt" in any case, no crit, alg ES256 or RS256, a kid); the
 * key (unknown kid: LOOM_ENOTFOUND); alg equal to the key's; the signature with the key's own
 * algorithm; then the payload (an object without duplicate keys, at most 16 deep) and its
 * claims: iss, sub, jti and client_id non-empty strings, aud a string or an array of strings,
 * exp an integer with now < exp + leeway, nbf and iat (optional integers) <= now + leeway,
 * scope (optional) a string of space-separated scope tokens. String claims are capped (iss
 * and aud 1024 bytes, sub, jti and client_id 256, scope 4096) and may not hold control
 * characters.
 *
 * On LOOM_OK *out is written, its slices in `arena` or in `token` (both must outlive them);
 * the arena may have grown on failure too. On failure *err says what (never quoting the
 * token) and the code is one of those in the table at the top of this file.
 */
loom_err loom_jwt_verify(const struct loom_jwks *keys, struct loom_str token,
                         const struct loom_jwt_expect *expect, struct loom_arena *arena,
                         struct loom_jwt_claims *out, struct loom_error *err);

/*
 * A stable word for a loom_jwt_verify result, for metrics labels and logs: "ok", "too_large",
 * "malformed", "invalid", "bad_alg", "unknown_kid", "bad_signature", "expired",
 * "not_yet_valid", "wrong_issuer", "wrong_audience", or "error" for any other code.
 */
const char *loom_jwt_reason(loom_err code);

/* Whether the space-separated `scope` contains the token `want` exactly. */
bool loom_jwt_scope_has(struct loom_str scope, struct loom_str want);

/* ---- base64url (RFC 4648 section 5, no padding) ------------------------------------------- */

/* Append the unpadded base64url form of n bytes. LOOM_ETOOBIG at out's ceiling. */
loom_err loom_base64url_encode(struct loom_buf *out, const void *p, size_t n);
/*
 * Decode strictly: only [A-Za-z0-9_-], no padding, no whitespace, a length that is not 1 mod
 * 4, and zero unused bits in the last character (so every byte string has one encoding).
 * `out` must hold (in.len * 3) / 4 bytes; *n receives the decoded length. LOOM_EPARSE
 * otherwise (nothing useful is in out).
 */
loom_err loom_base64url_decode(struct loom_str in, uint8_t *out, size_t *n);

#endif
