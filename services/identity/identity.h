/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The identity service: API clients with hashed secrets, scopes and quotas; OAuth 2.0 client
 * credentials tokens (RFC 6749 section 4.4) issued as RFC 9068 JWT access tokens signed with
 * ES256; the signing keys, rotated on a schedule and published as a JWK Set for the gateway.
 *
 * How it fits together. Everything durable is in the SQL store (clients.c, keys.c), which
 * blocks, so the HTTP handlers (api.c) parse and validate on the loop thread and run their
 * store and hashing work as a struct idn_op on the work pool; the completion answers back on
 * the loop. Secrets are hashed with argon2id and only ever shown once, in the answer that
 * created them. The keys live in the store too; an in-memory keyring (the current signing key,
 * every published key as a loom_jwks for verification, and the JWKS document pre-rendered) is
 * swapped whole under a mutex and shared by reference, so readers never wait on the store. A
 * timer on the first loop submits the rotation job, which creates the next key when the current
 * one is due, retires the old one, and deletes keys once no token they signed can still be
 * valid. The service's own /api/v1/clients routes accept only bearer tokens it issued itself
 * with the admin scope (verified with lib/jwt.c, like the gateway does).
 */
#ifndef LOOM_SVC_IDENTITY_H
#define LOOM_SVC_IDENTITY_H

#include <loom/http.h>
#include <loom/json.h>
#include <loom/jwt.h>
#include <loom/metrics.h>
#include <loom/service.h>
#include <loom/store.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

extern const struct loom_service identity_service;

/* --identity.* settings. */
struct idn_conf {
    const char *store;            /* URL; "" means sqlite:<data-dir>/identity.db */
    const char *issuer;           /* iss of every token */
    const char *audience;         /* aud of every token */
    uint64_t token_ttl;           /* ns a token lives */
    uint64_t key_rotation;        /* ns a key signs before the next one takes over */
    uint64_t key_prepublish;      /* ns the next key is published before it signs (at most) */
    uint64_t clock_skew;          /* ns of leeway verifiers allow; keys outlive tokens by it */
    const char *bootstrap_secret; /* the first admin's secret; "" for a random one */
    int64_t max_failed_auth;      /* failed authentications per client id per minute */
};

/* The scopes a client may hold: a fixed set, as bits. */
enum idn_scope {
    IDN_SCOPE_MODELS_READ = 1u << 0,
    IDN_SCOPE_MODELS_WRITE = 1u << 1,
    IDN_SCOPE_INFER = 1u << 2,
    IDN_SCOPE_TRAIN = 1u << 3,
    IDN_SCOPE_INGEST = 1u << 4,
    IDN_SCOPE_ADMIN = 1u << 5,
};
#define IDN_NSCOPES    6
#define IDN_SCOPES_ALL ((1u << IDN_NSCOPES) - 1)

/* "models:read", ... in bit order. */
extern const char *const idn_scope_names[IDN_NSCOPES];

/* The bits of a space-separated scope string: false if a name is unknown or the syntax is off
 * (empty tokens, leading or trailing spaces). "" gives 0. */
bool idn_scopes_parse(struct loom_str s, unsigned *out);
/* Append the space-separated names of `bits` (in bit order) to out. */
void idn_scopes_format(unsigned bits, struct loom_buf *out);

/* ---- keys (keys.c) ---- */

/* An immutable snapshot of the keys, shared by reference. */
struct idn_keyring {
    atomic_int refs;
    struct loom_jwks *verify; /* every published key */
    struct loom_jwk *signer;  /* the key that signs now */
    struct loom_jwk *next;    /* NULL, or a published key that signs from next_from_ms */
    int64_t next_from_ms;
    char *jwks_json; /* {"keys":[...]}: the published document */
    size_t jwks_len;
    char *fingerprint; /* the kids and their states, to tell whether a reload changed anything */
};

struct idn_keyring *idn_keyring_ref(struct idn_keyring *r);
/* The key to sign with at `now_ms` (wall clock): the next key once its time has come. */
const struct loom_jwk *idn_keyring_signer(const struct idn_keyring *r, int64_t now_ms);
void idn_keyring_unref(struct idn_keyring *r);

struct idn_service;

/* The current keyring, with a reference the caller drops. Any thread. */
struct idn_keyring *idn_keys_current(struct idn_service *idn);

/*
 * Make sure a signing key exists and is not due, retire and delete keys as their time comes,
 * and reload the keyring from the store. Blocks (the work pool, or init). LOOM_OK or a store
 * error with a message.
 */
loom_err idn_keys_rotate(struct idn_service *idn, struct loom_error *err);

/* Reload the keyring from the store, at most once a second (a token with an unknown kid may
 * have been signed by another replica's new key). Blocks. Returns whether it reloaded. */
bool idn_keys_reload_soon(struct idn_service *idn);

/* How long before it signs the next key is published: min(key-rotation / 2,
 * key-prepublish). */
uint64_t idn_keys_prepublish(const struct idn_conf *conf);

/* How often the rotation job runs: a quarter of the shorter of rotation and ttl, within
 * 250 ms and 60 s. */
uint64_t idn_keys_check_interval(const struct idn_conf *conf);

/* Start the rotation timer on the first loop (init). */
void idn_keys_start(struct idn_service *idn);

/* The store schema of the service, for loom_store_migrate (component "identity"). */
extern const struct loom_migration idn_migrations[];
extern const size_t idn_nmigrations;

/* ---- clients (clients.c) ---- */

#define IDN_ID_MAX     64
#define IDN_NAME_MAX   64
#define IDN_SECRET_LEN 47 /* "lsk_" + 43 base64url characters (32 random bytes) */

/* The private claim of an access token that carries its client's quota, for the gateway:
 * "loom_quota": {"rps": requests_per_second, "burst": burst}. A client without a quota gets
 * tokens without it, and the gateway's default limit. */
#define IDN_QUOTA_CLAIM "loom_quota"

struct idn_quota {
    double requests_per_second; /* > 0 */
    int64_t burst;              /* >= 1 */
};

/* One client as stored (the secret's hash stays in clients.c). */
struct idn_client {
    char id[IDN_ID_MAX + 1];
    char name[IDN_NAME_MAX + 1];
    unsigned scopes;
    bool has_quota; /* false: no quota of its own, the gateway's default applies */
    struct idn_quota quota;
    bool disabled;
    int64_t created_ms, updated_ms, secret_rotated_ms;
};

/* Valid ids: 1..64 of [a-z0-9_]. Valid names: 1..64 of [A-Za-z0-9._-], starting with an
 * alphanumeric. */
bool idn_valid_id(struct loom_str s);
bool idn_valid_name(struct loom_str s);

/* A new client id ("cl_" and 26 base32 characters of a time-ordered 128-bit value) and a new
 * secret ("lsk_" and 43 base64url characters) into out (NUL-terminated). */
void idn_new_id(char out[IDN_ID_MAX + 1]);
void idn_new_secret(char out[IDN_SECRET_LEN + 1]);

/* argon2id hash (encoded, with its parameters and salt) of a secret into out (caller frees).
 * Blocks for tens of milliseconds: the work pool only. */
char *idn_hash_secret(struct loom_str secret);
/* Whether secret matches the encoded hash (argon2's own constant-time comparison). */
bool idn_verify_secret(const char *encoded, struct loom_str secret);

/* Write a client as the API shows it (never the secret or its hash). */
void idn_client_json(const struct idn_client *c, struct loom_json_writer *w);

/*
 * Store operations; each blocks and runs in its own transaction. LOOM_ENOTFOUND for no such
 * client, LOOM_EEXIST for a taken id or name, LOOM_ECONFLICT when a change would leave no
 * enabled client with the admin scope, or a store error.
 */
loom_err idn_client_insert(struct loom_store *s, const struct idn_client *c,
                           const char *secret_hash, struct loom_error *err);
/* The client and (if hash is not NULL) its secret hash (caller frees *hash). */
loom_err idn_client_get(struct loom_store *s, struct loom_str id, struct idn_client *c, char **hash,
                        struct loom_error *err);
/* Up to `limit` clients with ids after `after` (empty: from the start), in id order. */
loom_err idn_client_list(struct loom_store *s, struct loom_str after, size_t limit,
                         struct idn_client *out, size_t *n, struct loom_error *err);

/* What a PATCH changes (and, in a POST, the quota given). */
struct idn_client_patch {
    bool set_scopes, set_rps, set_burst, clear_quota, set_disabled;
    unsigned scopes;
    struct idn_quota quota; /* the fields set_rps and set_burst say */
    bool disabled;
};
/* Apply a patch; *c receives the updated client. LOOM_EINVAL for a quota half given to a client
 * that has none. */
loom_err idn_client_update(struct loom_store *s, struct loom_str id,
                           const struct idn_client_patch *p, struct idn_client *c,
                           struct loom_error *err);
/* Replace the secret's hash; *c receives the updated client. */
loom_err idn_client_set_secret(struct loom_store *s, struct loom_str id, const char *hash,
                               struct idn_client *c, struct loom_error *err);
loom_err idn_client_delete(struct loom_store *s, struct loom_str id, struct loom_error *err);
/* The number of clients. */
loom_err idn_client_count(struct loom_store *s, int64_t *n, struct loom_error *err);

/*
 * On a fresh install (no client at all), create the client "admin" with every scope, whose
 * secret is --identity.bootstrap-secret or a random one written to
 * <data-dir>/identity-bootstrap-secret (mode 0600). Logs the file's path, never the secret.
 * Blocks (init).
 */
loom_err idn_bootstrap(struct idn_service *idn, struct loom_error *err);

/* ---- failed-authentication limiter (api.c) ---- */

#define IDN_LIMITER_SLOTS 4096

struct idn_limiter_slot {
    char id[IDN_ID_MAX + 1];
    int64_t window_ms; /* start of the one-minute window */
    int64_t failures;
};

/* ---- the service ---- */

struct idn_service {
    const struct idn_conf *conf;
    struct loom_svc *svc;
    struct loom_pool *pool;
    struct loom_store *store;
    char *data_dir;
    char *dummy_hash; /* verified against when a client id is unknown, to take as long */
    /* keys */
    pthread_mutex_t keys_mu;
    struct idn_keyring *ring;        /* under keys_mu */
    pthread_mutex_t rotate_mu;       /* one rotation at a time */
    atomic_int_fast64_t reloaded_ms; /* last on-demand reload */
    struct loom_timer rotate_timer;
    struct loom_work rotate_work;
    atomic_bool rotate_running;
    /* failed authentications */
    pthread_mutex_t limiter_mu;
    struct idn_limiter_slot *limiter; /* IDN_LIMITER_SLOTS */
    uint64_t limiter_seed;            /* random: slots cannot be aimed at */
    /* metrics */
    struct loom_counter *m_issued, *m_rotations;
    struct loom_counter_family *f_failed;
    struct loom_gauge *m_keys;
};

/* api.c */
#define IDN_NROUTES 9
extern const struct loom_route idn_routes[IDN_NROUTES];

#endif
