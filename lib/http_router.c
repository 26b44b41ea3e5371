/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The router: route templates compiled into a trie of path segments. Matching walks the path
 * once, trying at each segment the literal child, then the `{param}` child, then a trailing
 * `{rest...}`, and backtracks when a branch dead-ends, so `/v2/models/{name}/ready` and
 * `/v2/models/{name}/versions/{version}` coexist and literals win. A path that exists for other
 * methods yields their mask, for 405 and its Allow header.
 */
#include <loom/http.h>

#include <stdio.h>
#include <stdlib.h>

struct rnode {
    struct loom_str seg; /* literal children: the segment text */
    struct rnode **lits;
    size_t nlits;
    struct rnode *param;           /* {name} */
    struct rnode *rest;            /* {name...}: always a leaf */
    int route[LOOM_HTTP__METHODS]; /* index into the table, -1 for none */
    unsigned allowed;
};

struct compiled {
    size_t nparams;
    struct loom_str names[LOOM_ROUTE_MAX_PARAMS];
};

struct loom_router {
    const struct loom_route *routes;
    struct compiled *compiled;
    size_t n;
    struct rnode *root;
};

static struct rnode *node_new(void)
{
    struct rnode *n = loom_new(struct rnode);
    for (int m = 0; m < LOOM_HTTP__METHODS; m++)
        n->route[m] = -1;
    return n;
}

static void node_free(struct rnode *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->nlits; i++)
        node_free(n->lits[i]);
    free(n->lits);
    node_free(n->param);
    node_free(n->rest);
    free(n);
}

static struct rnode *lit_child(struct rnode *n, struct loom_str seg, bool create)
{
    for (size_t i = 0; i < n->nlits; i++)
        if (loom_str_eq(n->lits[i]->seg, seg))
            return n->lits[i];
    if (!create)
        return NULL;
    struct rnode *c = node_new();
    c->seg = seg;
    n->lits = loom_realloc(n->lits, (n->nlits + 1) * sizeof(*n->lits));
    n->lits[n->nlits++] = c;
    return c;
}

/* Next segment of `path` starting at *pos (just after a '/'); false at the end. */
static bool next_segment(struct loom_str path, size_t *pos, struct loom_str *seg)
{
    if (*pos > path.len)
        return false;
    const char *start = path.ptr + *pos;
    const char *slash = memchr(start, '/', path.len - *pos);
    size_t len = slash ? (size_t)(slash - start) : path.len - *pos;
    *seg = loom_str_make(start, len);
    *pos += len + 1;
    return true;
}

static bool valid_param_name(struct loom_str s)
{
    if (s.len == 0)
        return false;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.ptr[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

static loom_err add_route(struct loom_router *r, size_t idx, struct loom_error *err)
{
    const struct loom_route *route = &r->routes[idx];
    struct compiled *c = &r->compiled[idx];
    struct loom_str path = loom_str_cstr(route->path);
    if (!route->handler)
        return loom_error_set(err, LOOM_EINVAL, "route %s has no handler", route->path);
    if (route->method <= LOOM_HTTP_OTHER || route->method >= LOOM_HTTP__METHODS)
        return loom_error_set(err, LOOM_EINVAL, "route %s: bad method", route->path);
    if (path.len == 0 || path.ptr[0] != '/')
        return loom_error_set(err, LOOM_EINVAL, "route \"%s\" must start with /", route->path);
    struct rnode *n = r->root;
    size_t pos = 1;
    struct loom_str seg;
    bool root_only = path.len == 1;
    while (!root_only && next_segment(path, &pos, &seg)) {
        if (seg.len >= 2 && seg.ptr[0] == '{' && seg.ptr[seg.len - 1] == '}') {
            struct loom_str name = loom_str_make(seg.ptr + 1, seg.len - 2);
            bool rest = loom_str_has_suffix(name, LOOM_STR("..."));
            if (rest)
                name.len -= 3;
            if (!valid_param_name(name))
                return loom_error_set(err, LOOM_EINVAL, "route %s: bad parameter name in %.*s",
                                      route->path, LOOM_STR_FMT(seg));
            if (c->nparams == LOOM_ROUTE_MAX_PARAMS)
                return loom_error_set(err, LOOM_EINVAL, "route %s: more than %d parameters",
                                      route->path, LOOM_ROUTE_MAX_PARAMS);
            for (size_t i = 0; i < c->nparams; i++)
                if (loom_str_eq(c->names[i], name))
                    return loom_error_set(err, LOOM_EINVAL, "route %s: parameter %.*s twice",
                                          route->path, LOOM_STR_FMT(name));
            c->names[c->nparams++] = name;
            if (rest) {
                if (pos <= path.len)
                    return loom_error_set(err, LOOM_EINVAL,
                                          "route %s: {%.*s...} must be the last segment",
                                          route->path, LOOM_STR_FMT(name));
                if (!n->rest)
                    n->rest = node_new();
                n = n->rest;
            } else {
                if (!n->param)
                    n->param = node_new();
                n = n->param;
            }
        } else {
            if (loom_str_index(seg, '{') >= 0 || loom_str_index(seg, '}') >= 0)
                return loom_error_set(err, LOOM_EINVAL,
                                      "route %s: a parameter must be a whole segment", route->path);
            n = lit_child(n, seg, true);
        }
    }
    if (n->route[route->method] >= 0)
        return loom_error_set(err, LOOM_EINVAL, "route %s %s is declared twice",
                              loom_http_method_name(route->method), route->path);
    n->route[route->method] = (int)idx;
    n->allowed |= 1u << route->method;
    if (route->method == LOOM_HTTP_GET)
        n->allowed |= 1u << LOOM_HTTP_HEAD;
    return LOOM_OK;
}

struct loom_router *loom_router_new(const struct loom_route *routes, size_t n,
                                    struct loom_error *err)
{
    struct loom_router *r = loom_new(struct loom_router);
    r->routes = routes;
    r->n = n;
    r->compiled = loom_calloc(n ? n : 1, sizeof(*r->compiled));
    r->root = node_new();
    for (size_t i = 0; i < n; i++) {
        if (add_route(r, i, err)) {
            loom_router_free(r);
            return NULL;
        }
    }
    return r;
}

void loom_router_free(struct loom_router *r)
{
    if (!r)
        return;
    node_free(r->root);
    free(r->compiled);
    free(r);
}

static int route_at(const struct rnode *n, enum loom_http_method method)
{
    int idx = n->route[method];
    if (idx < 0 && method == LOOM_HTTP_HEAD)
        idx = n->route[LOOM_HTTP_GET];
    return idx;
}

/* Depth-first match; values[] is filled along the way. Returns the route index or -1, and ORs
 * the allowed methods of every node the whole path reached into *allowed. */
static int match(const struct rnode *n, struct loom_str path, size_t pos,
                 enum loom_http_method method, struct loom_str *values, size_t depth,
                 unsigned *allowed)
{
    struct loom_str seg;
    size_t next = pos;
    if (!next_segment(path, &next, &seg)) {
        *allowed |= n->allowed;
        return route_at(n, method);
    }
    const struct rnode *lit = lit_child((struct rnode *)n, seg, false);
    if (lit) {
        int idx = match(lit, path, next, method, values, depth, allowed);
        if (idx >= 0)
            return idx;
    }
    if (n->param && seg.len > 0 && depth < LOOM_ROUTE_MAX_PARAMS) {
        values[depth] = seg;
        int idx = match(n->param, path, next, method, values, depth + 1, allowed);
        if (idx >= 0)
            return idx;
    }
    if (n->rest && depth < LOOM_ROUTE_MAX_PARAMS) {
        values[depth] = loom_str_make(path.ptr + pos, path.len - pos);
        *allowed |= n->rest->allowed;
        int idx = route_at(n->rest, method);
        if (idx >= 0)
            return idx;
    }
    return -1;
}

void loom_router_match(const struct loom_router *r, enum loom_http_method method,
                       struct loom_str path, struct loom_route_match *m)
{
    m->route = NULL;
    m->allowed = 0;
    m->nparams = 0;
    if (path.len == 0 || path.ptr[0] != '/')
        return;
    int idx;
    if (path.len == 1) {
        m->allowed = r->root->allowed;
        idx = route_at(r->root, method);
    } else {
        idx = match(r->root, path, 1, method, m->values, 0, &m->allowed);
    }
    if (idx < 0)
        return;
    const struct compiled *c = &r->compiled[idx];
    m->route = &r->routes[idx];
    m->nparams = c->nparams;
    memcpy(m->names, c->names, c->nparams * sizeof(c->names[0]));
}
