/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The identity service table: settings, the store schema, init (open and migrate the store,
 * make sure a signing key exists, create the bootstrap admin on a fresh install, start the
 * rotation timer) and fini. Init runs on the main thread before the loops start, so it may
 * block; docs/identity.md is the user's side of every setting here.
 */
#include "identity/identity.h"

#include <loom/id.h>
#include <loom/log.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define SEC ((int64_t)LOOM_NS_PER_SEC)

static const struct loom_conf_field idn_fields[] = {
    LOOM_CONF_SECRET_FIELD(struct idn_conf, store, "store", STRING, "",
                           "The SQL store: sqlite:PATH or postgres://USER:PASSWORD@HOST:PORT/DB "
                           "(default: sqlite:<data-dir>/identity.db)."),
    LOOM_CONF_FIELD(struct idn_conf, issuer, "issuer", STRING, "http://127.0.0.1:8087",
                    "The iss of every token: this service's public URL, without a trailing /."),
    LOOM_CONF_FIELD(struct idn_conf, audience, "audience", STRING, "loom",
                    "The aud of every token (the gateway expects the same)."),
    LOOM_CONF_RANGE_FIELD(struct idn_conf, token_ttl, "token-ttl", DURATION, "10m", SEC, 3600 * SEC,
                          "How long an access token is valid (1s to 1h)."),
    LOOM_CONF_RANGE_FIELD(struct idn_conf, key_rotation, "key-rotation", DURATION, "24h", SEC,
                          90 * 86400 * SEC,
                          "How long a signing key signs before a new one takes over; old keys "
                          "stay published until their last token has expired."),
    LOOM_CONF_RANGE_FIELD(struct idn_conf, key_prepublish, "key-prepublish", DURATION, "10m", SEC,
                          7 * 86400 * SEC,
                          "How long the next signing key is published in the JWKS before it "
                          "signs (at most half of key-rotation), so verifiers refreshing on "
                          "their schedule have it before its first token; keep it above their "
                          "refresh period (the gateway's --gateway.jwks-refresh)."),
    LOOM_CONF_RANGE_FIELD(struct idn_conf, clock_skew, "clock-skew", DURATION, "30s", 0, 60 * SEC,
                          "Leeway for clock differences when verifying tokens (0 to 60s); "
                          "retired keys stay published this much longer. Use the gateway's."),
    LOOM_CONF_SECRET_FIELD(struct idn_conf, bootstrap_secret, "bootstrap-secret", STRING, "",
                           "Secret of the admin client created on a fresh install (at least 16 "
                           "characters); empty: a random one written to "
                           "<data-dir>/identity-bootstrap-secret."),
    LOOM_CONF_RANGE_FIELD(struct idn_conf, max_failed_auth, "max-failed-auth", INT, "10", 1, 10000,
                          "Failed authentications per client id per minute before /oauth/token "
                          "answers 429 for the rest of the minute."),
};

const struct loom_migration idn_migrations[] = {
    { 1, "CREATE TABLE IF NOT EXISTS identity_clients ("
         "  id TEXT PRIMARY KEY,"
         "  name TEXT NOT NULL UNIQUE,"
         "  scopes TEXT NOT NULL,"
         "  admin BIGINT NOT NULL,"
         "  rps DOUBLE PRECISION NOT NULL,"
         "  burst BIGINT NOT NULL,"
         "  disabled BIGINT NOT NULL,"
         "  created_ms BIGINT NOT NULL,"
         "  updated_ms BIGINT NOT NULL,"
         "  secret_rotated_ms BIGINT NOT NULL,"
         "  secret_hash TEXT NOT NULL);"
         "CREATE TABLE IF NOT EXISTS identity_keys ("
         "  kid TEXT PRIMARY KEY,"
         "  alg TEXT NOT NULL,"
         "  private_pem TEXT NOT NULL,"
         "  created_ms BIGINT NOT NULL,"
         "  retired_ms BIGINT);"
         "CREATE TABLE IF NOT EXISTS identity_locks (name TEXT PRIMARY KEY);"
         "INSERT INTO identity_locks (name) VALUES ('keys'), ('bootstrap') "
         "ON CONFLICT (name) DO NOTHING" },
    /* A quota is optional: NULL rps and burst mean the client has none and the gateway's
     * default limit applies. Version 1 stored 50/s:100 for every client created without one,
     * so those rows become "no quota". loom is pre-release, so this is done without more
     * ceremony: a client that was given exactly 50/s:100 on purpose cannot be told apart and
     * needs its quota set again. SQLite cannot drop a NOT NULL, so the table is rebuilt, the
     * same way on both backends. */
    { 2, "CREATE TABLE identity_clients_v2 ("
         "  id TEXT PRIMARY KEY,"
         "  name TEXT NOT NULL UNIQUE,"
         "  scopes TEXT NOT NULL,"
         "  admin BIGINT NOT NULL,"
         "  rps DOUBLE PRECISION,"
         "  burst BIGINT,"
         "  disabled BIGINT NOT NULL,"
         "  created_ms BIGINT NOT NULL,"
         "  updated_ms BIGINT NOT NULL,"
         "  secret_rotated_ms BIGINT NOT NULL,"
         "  secret_hash TEXT NOT NULL,"
         "  CHECK ((rps IS NULL) = (burst IS NULL)));"
         "INSERT INTO identity_clients_v2 (id, name, scopes, admin, rps, burst, disabled, "
         "  created_ms, updated_ms, secret_rotated_ms, secret_hash) "
         "SELECT id, name, scopes, admin,"
         "  CASE WHEN rps = 50 AND burst = 100 THEN NULL ELSE rps END,"
         "  CASE WHEN rps = 50 AND burst = 100 THEN NULL ELSE burst END,"
         "  disabled, created_ms, updated_ms, secret_rotated_ms, secret_hash "
         "FROM identity_clients;"
         "DROP TABLE identity_clients;"
         "ALTER TABLE identity_clients_v2 RENAME TO identity_clients" },
    /* A key is published from created_ms and signs from signs_from_ms: the next key is
     * published ahead of its first use. The keys of version 2 signed from their creation. */
    { 3, "ALTER TABLE identity_keys ADD COLUMN signs_from_ms BIGINT NOT NULL DEFAULT 0;"
         "UPDATE identity_keys SET signs_from_ms = created_ms" },
};
const size_t idn_nmigrations = LOOM_ARRAY_SIZE(idn_migrations);

static void idn_free(struct idn_service *idn)
{
    idn_keyring_unref(idn->ring);
    if (idn->store)
        loom_store_close(idn->store);
    pthread_mutex_destroy(&idn->keys_mu);
    pthread_mutex_destroy(&idn->rotate_mu);
    pthread_mutex_destroy(&idn->limiter_mu);
    free(idn->limiter);
    free(idn->dummy_hash);
    free(idn->data_dir);
    free(idn);
}

static bool issuer_ok(const char *iss)
{
    size_t n = strlen(iss);
    return (strncmp(iss, "http://", 7) == 0 || strncmp(iss, "https://", 8) == 0) && n > 8 &&
           iss[n - 1] != '/' && !strpbrk(iss, " \"\\?#");
}

static loom_err idn_init_state(struct loom_svc *svc, struct loom_error *err);

/* Init, with the log lines it writes attributed to this service. */
static loom_err idn_init(struct loom_svc *svc, struct loom_error *err)
{
    const char *was = loom_log_service();
    loom_log_set_service("identity");
    loom_err e = idn_init_state(svc, err);
    loom_log_set_service(was);
    return e;
}

static loom_err idn_init_state(struct loom_svc *svc, struct loom_error *err)
{
    struct idn_service *idn = loom_new(struct idn_service);
    idn->conf = loom_svc_conf(svc);
    idn->svc = svc;
    idn->pool = loom_svc_pool(svc);
    idn->data_dir = loom_strdup(loom_svc_global(svc)->data_dir);
    pthread_mutex_init(&idn->keys_mu, NULL);
    pthread_mutex_init(&idn->rotate_mu, NULL);
    pthread_mutex_init(&idn->limiter_mu, NULL);
    idn->limiter = loom_calloc(IDN_LIMITER_SLOTS, sizeof(*idn->limiter));
    loom_random_bytes(&idn->limiter_seed, sizeof(idn->limiter_seed));
    loom_err e = LOOM_OK;
    if (!issuer_ok(idn->conf->issuer)) {
        e = loom_error_set(err, LOOM_EINVAL,
                           "--identity.issuer must be an http:// or https:// URL without a "
                           "trailing /");
        goto fail;
    }
    if (!idn->conf->audience[0] || strpbrk(idn->conf->audience, "\"\\")) {
        e = loom_error_set(err, LOOM_EINVAL, "--identity.audience must be a non-empty string");
        goto fail;
    }
    if (mkdir(idn->data_dir, 0755) < 0 && errno != EEXIST) {
        e = loom_error_errno(err, "identity: cannot create the data directory %s", idn->data_dir);
        goto fail;
    }
    char *url;
    if (idn->conf->store[0]) {
        url = loom_strdup(idn->conf->store);
    } else {
        size_t n = strlen(idn->data_dir) + 32;
        url = loom_malloc(n);
        snprintf(url, n, "sqlite:%s/identity.db", idn->data_dir);
    }
    e = loom_store_open(url, NULL, &idn->store, err);
    free(url);
    if (e) {
        idn->store = NULL;
        loom_error_prefix(err, "identity store");
        goto fail;
    }
    e = loom_store_migrate(idn->store, "identity", idn_migrations, idn_nmigrations, err);
    if (e) {
        loom_error_prefix(err, "identity store");
        goto fail;
    }
    struct loom_metrics *m = loom_metrics_global();
    idn->m_issued = loom_metrics_counter(m, "identity", "loom_identity_tokens_issued_total",
                                         "Access tokens issued.");
    idn->m_rotations = loom_metrics_counter(m, "identity", "loom_identity_key_rotations_total",
                                            "Signing keys created.");
    idn->m_keys =
        loom_metrics_gauge(m, "identity", "loom_identity_keys", "Keys published in the JWKS.");
    static const char *const labels[] = { "reason" };
    idn->f_failed = loom_metrics_counter_family(m, "identity", "loom_identity_token_failures_total",
                                                "Token requests refused, by reason.", labels, 1);
    /* The hash an unknown client id is checked against: the same work as a real one. */
    char dummy[IDN_SECRET_LEN + 1];
    idn_new_secret(dummy);
    idn->dummy_hash = idn_hash_secret(loom_str_cstr(dummy));
    e = idn_keys_rotate(idn, err);
    if (e) {
        loom_error_prefix(err, "identity signing keys");
        goto fail;
    }
    e = idn_bootstrap(idn, err);
    if (e)
        goto fail;
    idn_keys_start(idn);
    LOOM_LOG_KV(LOOM_LOG_INFO, "identity store ready",
                LOOM_KV_CSTR("backend", loom_store_backend(idn->store)),
                LOOM_KV_CSTR("issuer", idn->conf->issuer),
                LOOM_KV_DBL("token_ttl_s", (double)idn->conf->token_ttl / 1e9),
                LOOM_KV_DBL("key_rotation_s", (double)idn->conf->key_rotation / 1e9));
    loom_svc_set_state(svc, idn);
    return LOOM_OK;
fail:
    idn_free(idn);
    return e ? e : LOOM_EINVAL;
}

static void idn_fini(void *state)
{
    struct idn_service *idn = state;
    if (!idn)
        return;
    /* The loops have stopped and the work pool is gone (it waits for running jobs): nothing
     * else holds idn. */
    loom_timer_stop(&idn->rotate_timer);
    idn_free(idn);
}

const struct loom_service identity_service = {
    .name = "identity",
    .summary = "API clients, OAuth 2.0 client credentials tokens (JWT), signing keys",
    .default_listen = "127.0.0.1:8087",
    .error_body = loom_http_error_problem,
    .conf_fields = idn_fields,
    .nconf_fields = LOOM_ARRAY_SIZE(idn_fields),
    .conf_size = sizeof(struct idn_conf),
    .init = idn_init,
    .routes = idn_routes,
    .nroutes = IDN_NROUTES,
    .fini = idn_fini,
};
