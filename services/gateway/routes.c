/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The gateway's routing table: every public path, which upstream serves it (or the gateway
 * itself), the scope a token needs for it, and its kind (which timeout, body limit and
 * retry policy apply). One X-macro list writes both the server's route table and the rules,
 * so they cannot drift apart. Access is denied by default: a path that is not in this list is
 * a 404 at the edge and never reaches a service, and every entry names its access (public,
 * a scope, or any valid token). docs/gateway.md has the same table for people.
 */
#include "gateway/gateway.h"

#include <string.h>

const char *const gw_scope_names[GW_NSCOPES] = {
    "models:read", "models:write", "infer", "train", "ingest", "admin",
};

const char *const gw_upstream_names[GW_UP__COUNT] = {
    "inference", "registry", "trainer", "ingest", "identity",
};

unsigned gw_scopes_parse(struct loom_str scope)
{
    unsigned bits = 0;
    while (scope.len) {
        struct loom_str tok;
        scope = loom_str_cut(scope, ' ', &tok);
        for (unsigned i = 0; i < GW_NSCOPES; i++)
            if (loom_str_eq_cstr(tok, gw_scope_names[i]))
                bits |= 1u << i;
    }
    return bits;
}

const char *gw_scope_name(unsigned bit)
{
    for (unsigned i = 0; i < GW_NSCOPES; i++)
        if (bit == 1u << i)
            return gw_scope_names[i];
    return "";
}

/* Our own routes accept bodies of any size at the server: the configured limits of each kind
 * are enforced by the edge itself (settings cannot change a static table). */
#define BIG ((size_t)1 << 40)

#define R  GW_SCOPE_MODELS_READ
#define W  GW_SCOPE_MODELS_WRITE
#define IN GW_SCOPE_INFER
#define TR GW_SCOPE_TRAIN
#define IG GW_SCOPE_INGEST
#define AD GW_SCOPE_ADMIN

/* X(method, template, upstream, access, scope, kind, limit class, local handler) */
#define GW_ROUTE_LIST(X)                                                                          \
    X(OPTIONS, "/{path...}", LOCAL, GW_PUBLIC, 0, LOCAL, "cors", NULL)                            \
    /* no route: 404, or 405 with Allow when the path has other methods (never upstream) */       \
    X(GET, "/{path...}", LOCAL, GW_PUBLIC, 0, LOCAL, "cors", gw_h_no_route)                       \
    X(POST, "/{path...}", LOCAL, GW_PUBLIC, 0, LOCAL, "cors", gw_h_no_route)                      \
    X(PUT, "/{path...}", LOCAL, GW_PUBLIC, 0, LOCAL, "cors", gw_h_no_route)                       \
    X(PATCH, "/{path...}", LOCAL, GW_PUBLIC, 0, LOCAL, "cors", gw_h_no_route)                     \
    X(DELETE, "/{path...}", LOCAL, GW_PUBLIC, 0, LOCAL, "cors", gw_h_no_route)                    \
    X(GET, "/openapi.json", LOCAL, GW_PUBLIC, 0, LOCAL, "openapi", gw_h_openapi)                  \
    /* identity */                                                                                \
    X(POST, "/oauth/token", IDENTITY, GW_PUBLIC, 0, API, "token", NULL)                           \
    X(GET, "/.well-known/jwks.json", IDENTITY, GW_PUBLIC, 0, API, "jwks", NULL)                   \
    X(GET, "/.well-known/oauth-authorization-server", IDENTITY, GW_PUBLIC, 0, API, "oauth_meta",  \
      NULL)                                                                                       \
    X(GET, "/api/v1/clients", IDENTITY, GW_SCOPE, AD, API, "clients", NULL)                       \
    X(POST, "/api/v1/clients", IDENTITY, GW_SCOPE, AD, API, "clients", NULL)                      \
    X(GET, "/api/v1/clients/{rest...}", IDENTITY, GW_SCOPE, AD, API, "clients", NULL)             \
    X(POST, "/api/v1/clients/{rest...}", IDENTITY, GW_SCOPE, AD, API, "clients", NULL)            \
    X(PUT, "/api/v1/clients/{rest...}", IDENTITY, GW_SCOPE, AD, API, "clients", NULL)             \
    X(PATCH, "/api/v1/clients/{rest...}", IDENTITY, GW_SCOPE, AD, API, "clients", NULL)           \
    X(DELETE, "/api/v1/clients/{rest...}", IDENTITY, GW_SCOPE, AD, API, "clients", NULL)          \
    /* registry */                                                                                \
    X(GET, "/api/v1/models", REGISTRY, GW_SCOPE, R, API, "models", NULL)                          \
    X(POST, "/api/v1/models", REGISTRY, GW_SCOPE, W, API, "models", NULL)                         \
    X(GET, "/api/v1/models/{rest...}", REGISTRY, GW_SCOPE, R, API, "models", NULL)                \
    X(POST, "/api/v1/models/{rest...}", REGISTRY, GW_SCOPE, W, API, "models", NULL)               \
    X(PUT, "/api/v1/models/{rest...}", REGISTRY, GW_SCOPE, W, API, "models", NULL)                \
    X(PATCH, "/api/v1/models/{rest...}", REGISTRY, GW_SCOPE, W, API, "models", NULL)              \
    X(DELETE, "/api/v1/models/{rest...}", REGISTRY, GW_SCOPE, W, API, "models", NULL)             \
    X(POST, "/api/v1/artifacts", REGISTRY, GW_SCOPE, W, UPLOAD, "artifacts", NULL)                \
    X(GET, "/api/v1/artifacts/{rest...}", REGISTRY, GW_SCOPE, R, API, "artifacts", NULL)          \
    X(GET, "/api/v1/resolve/{rest...}", REGISTRY, GW_SCOPE, R, API, "resolve", NULL)              \
    /* trainer */                                                                                 \
    X(GET, "/api/v1/datasets", TRAINER, GW_SCOPE, TR, API, "datasets", NULL)                      \
    X(POST, "/api/v1/datasets", TRAINER, GW_SCOPE, TR, UPLOAD, "datasets", NULL)                  \
    X(GET, "/api/v1/datasets/{rest...}", TRAINER, GW_SCOPE, TR, API, "datasets", NULL)            \
    X(POST, "/api/v1/datasets/{rest...}", TRAINER, GW_SCOPE, TR, API, "datasets", NULL)           \
    X(PUT, "/api/v1/datasets/{rest...}", TRAINER, GW_SCOPE, TR, API, "datasets", NULL)            \
    X(PATCH, "/api/v1/datasets/{rest...}", TRAINER, GW_SCOPE, TR, API, "datasets", NULL)          \
    X(DELETE, "/api/v1/datasets/{rest...}", TRAINER, GW_SCOPE, TR, API, "datasets", NULL)         \
    X(GET, "/api/v1/training-jobs", TRAINER, GW_SCOPE, TR, API, "training-jobs", NULL)            \
    X(POST, "/api/v1/training-jobs", TRAINER, GW_SCOPE, TR, API, "training-jobs", NULL)           \
    X(GET, "/api/v1/training-jobs/{rest...}", TRAINER, GW_SCOPE, TR, API, "training-jobs", NULL)  \
    X(POST, "/api/v1/training-jobs/{rest...}", TRAINER, GW_SCOPE, TR, API, "training-jobs", NULL) \
    X(DELETE, "/api/v1/training-jobs/{rest...}", TRAINER, GW_SCOPE, TR, API, "training-jobs",     \
      NULL)                                                                                       \
    /* ingest */                                                                                  \
    X(GET, "/api/v1/streams", INGEST, GW_SCOPE, IG, API, "streams", NULL)                         \
    X(POST, "/api/v1/streams", INGEST, GW_SCOPE, IG, API, "streams", NULL)                        \
    X(GET, "/api/v1/streams/{rest...}", INGEST, GW_SCOPE, IG, API, "streams", NULL)               \
    X(POST, "/api/v1/streams/{rest...}", INGEST, GW_SCOPE, IG, UPLOAD, "streams", NULL)           \
    X(PUT, "/api/v1/streams/{rest...}", INGEST, GW_SCOPE, IG, API, "streams", NULL)               \
    X(DELETE, "/api/v1/streams/{rest...}", INGEST, GW_SCOPE, IG, API, "streams", NULL)            \
    /* inference (KServe v2) */                                                                   \
    X(GET, "/v2", INFERENCE, GW_SCOPE, IN, V2, "v2", NULL)                                        \
    X(GET, "/v2/health/{rest...}", INFERENCE, GW_SCOPE, IN, V2, "v2", NULL)                       \
    X(GET, "/v2/models/{rest...}", INFERENCE, GW_SCOPE, IN, V2, "v2", NULL)                       \
    X(POST, "/v2/models/{model}/infer", INFERENCE, GW_SCOPE, IN, INFER, "infer", NULL)            \
    X(POST, "/v2/models/{model}/versions/{version}/infer", INFERENCE, GW_SCOPE, IN, INFER,        \
      "infer", NULL)                                                                              \
    X(POST, "/v2/repository/{rest...}", INFERENCE, GW_SCOPE, AD, V2, "repository", NULL)          \
    /* the gateway's own API */                                                                   \
    X(GET, "/api/v1/flags", LOCAL, GW_SCOPE, AD, LOCAL, "flags", gw_h_flags_list)                 \
    X(POST, "/api/v1/flags", LOCAL, GW_SCOPE, AD, LOCAL, "flags", gw_h_flags_create)              \
    X(GET, "/api/v1/flags/{name}", LOCAL, GW_SCOPE, AD, LOCAL, "flags", gw_h_flag_get)            \
    X(PUT, "/api/v1/flags/{name}", LOCAL, GW_SCOPE, AD, LOCAL, "flags", gw_h_flag_put)            \
    X(DELETE, "/api/v1/flags/{name}", LOCAL, GW_SCOPE, AD, LOCAL, "flags", gw_h_flag_delete)      \
    X(GET, "/api/v1/flags/{name}/evaluate", LOCAL, GW_ANY_TOKEN, 0, LOCAL, "flags",               \
      gw_h_flag_evaluate)                                                                         \
    X(GET, "/api/v1/traffic", LOCAL, GW_SCOPE, AD, LOCAL, "traffic", gw_h_traffic_list)           \
    X(GET, "/api/v1/traffic/{model}", LOCAL, GW_SCOPE, AD, LOCAL, "traffic", gw_h_traffic_get)    \
    X(PUT, "/api/v1/traffic/{model}", LOCAL, GW_SCOPE, AD, LOCAL, "traffic", gw_h_traffic_put)    \
    X(DELETE, "/api/v1/traffic/{model}", LOCAL, GW_SCOPE, AD, LOCAL, "traffic", gw_h_traffic_delete)

#define AS_ROUTE(m, path, up, acc, sc, kind, cls, fn) \
    { LOOM_HTTP_##m, path, gw_h_edge, BIG, LOOM_ROUTE_STREAM },
#define AS_RULE(m, path, up, acc, sc, kind, cls, fn) \
    { GW_UP_##up, acc, sc, GW_KIND_##kind, cls, fn },

const struct loom_route gw_routes[] = { GW_ROUTE_LIST(AS_ROUTE) };
const struct gw_rule gw_rules[] = { GW_ROUTE_LIST(AS_RULE) };
const size_t gw_nroutes = LOOM_ARRAY_SIZE(gw_routes);
_Static_assert(LOOM_ARRAY_SIZE(gw_routes) == GW_NROUTES, "update GW_NROUTES in gateway.h");

const char *const gw_limit_classes[] = {
    "cors",      "openapi",    "token",    "jwks",          "clients", "models",
    "artifacts", "resolve",    "datasets", "training-jobs", "streams", "v2",
    "infer",     "repository", "flags",    "traffic",       NULL,
};

const struct gw_rule *gw_rule_of(const struct loom_route *route)
{
    if (!route)
        return NULL;
    /* Templates are ours and distinct per (method, template): a short scan of pointers. The
     * hot routes (infer) sit near the end, so scan from the end. */
    for (size_t i = gw_nroutes; i-- > 0;)
        if (gw_routes[i].path == route->path && gw_routes[i].method == route->method)
            return &gw_rules[i];
    return NULL;
}
