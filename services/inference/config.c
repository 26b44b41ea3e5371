/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Model configuration: Triton's ModelConfig in its JSON form (config.json), with Triton's
 * defaults for what the file leaves out, completed from the loaded model (inputs and outputs a
 * file may omit entirely) and rendered back as JSON for GET .../config. Fields Triton knows but
 * that do not change how loom serves (instance_group, optimization, ...) are accepted and
 * ignored, so Triton configurations load unchanged; fields loom cannot honour
 * (sequence_batching, ensembles) and unknown fields are errors that name the field.
 */
#include "inference/inference.h"

#include <loom/json.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const ignored_fields[] = {
    "runtime",
    "optimization",
    "instance_group",
    "cc_model_filenames",
    "metric_tags",
    "model_warmup",
    "model_operations",
    "model_transaction_policy",
    "model_repository_agents",
    "response_cache",
    NULL,
};
static const char *const unsupported_fields[] = {
    "sequence_batching", "ensemble_scheduling", "batch_input", "batch_output", NULL,
};

static bool in_list(const char *const *list, struct loom_str key)
{
    for (; *list; list++)
        if (loom_str_eq_cstr(key, *list))
            return true;
    return false;
}

struct parser {
    struct loom_json_doc doc;
    struct loom_arena arena;
    struct loom_error *err;
    const char *model;
};

static loom_err fail(struct parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static loom_err fail(struct parser *p, const char *fmt, ...)
{
    char msg[LOOM_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return loom_error_set(p->err, LOOM_EINVAL, "config.json of '%s': %s", p->model, msg);
}

static char *str_dup(struct parser *p, int i)
{
    struct loom_str s;
    if (loom_json_unescape(&p->doc, i, &p->arena, &s))
        return NULL;
    return loom_str_dup(s);
}

/* An integer given as a JSON number or, as protobuf's JSON mapping allows for int64, a string. */
static bool get_int(struct parser *p, int i, int64_t *out)
{
    if (loom_json_is_integer(&p->doc, i))
        return loom_json_to_i64(&p->doc, i, out) == LOOM_OK;
    if (loom_json_is_string(&p->doc, i))
        return loom_str_to_i64(loom_json_slice(&p->doc, i), out) == LOOM_OK;
    return false;
}

static bool get_bool(struct parser *p, int i, bool *out)
{
    return loom_json_to_bool(&p->doc, i, out) == LOOM_OK;
}

static loom_err parse_dims(struct parser *p, int arr, const char *what, int64_t *dims, size_t *n)
{
    if (!loom_json_is_array(&p->doc, arr))
        return fail(p, "%s.dims must be an array of integers", what);
    *n = 0;
    loom_json_foreach (&p->doc, arr, i) {
        int64_t d;
        if (!get_int(p, i, &d) || d < -1 || d > (int64_t)1 << 40)
            return fail(p, "%s.dims[%zu] must be an integer >= -1", what, *n);
        if (*n == LOOM_TENSOR_MAX_DIMS)
            return fail(p, "%s has more than %d dims", what, LOOM_TENSOR_MAX_DIMS);
        dims[(*n)++] = d;
    }
    return LOOM_OK;
}

static loom_err parse_tensor(struct parser *p, int arr, const char *what, struct inf_tensor_spec *t,
                             bool *has)
{
    if (!loom_json_is_array(&p->doc, arr))
        return fail(p, "%s must be an array", what);
    int n = loom_json_size(&p->doc, arr);
    if (n == 0)
        return LOOM_OK;
    if (n > 1)
        return fail(p, "%s declares %d tensors; loom's model runtimes take one %s", what, n,
                    strcmp(what, "input") == 0 ? "input" : "output");
    int obj = arr + 1;
    if (!loom_json_is_object(&p->doc, obj))
        return fail(p, "%s[0] must be an object", what);
    *has = true;
    bool have_dims = false;
    loom_json_foreach (&p->doc, obj, k) {
        struct loom_str key = loom_json_slice(&p->doc, k);
        int v = k + 1;
        if (loom_str_eq_cstr(key, "name")) {
            if (!loom_json_is_string(&p->doc, v) || !(t->name = str_dup(p, v)) || !t->name[0])
                return fail(p, "%s[0].name must be a non-empty string", what);
        } else if (loom_str_eq_cstr(key, "data_type")) {
            if (!loom_json_is_string(&p->doc, v) ||
                !(t->dtype = loom_dtype_parse_config(loom_json_slice(&p->doc, v))))
                return fail(p,
                            "%s[0].data_type must be one of TYPE_BOOL, TYPE_UINT8..64, "
                            "TYPE_INT8..64, TYPE_FP16, TYPE_FP32, TYPE_FP64, TYPE_STRING",
                            what);
        } else if (loom_str_eq_cstr(key, "dims")) {
            loom_err e = parse_dims(p, v, what, t->dims, &t->ndims);
            if (e)
                return e;
            have_dims = true;
        } else if (loom_str_eq_cstr(key, "optional")) {
            if (!get_bool(p, v, &t->optional))
                return fail(p, "%s[0].optional must be a boolean", what);
        } else if (loom_str_eq_cstr(key, "reshape")) {
            return fail(p, "%s[0].reshape is not supported", what);
        } else if (!loom_str_eq_cstr(key, "format") && !loom_str_eq_cstr(key, "is_shape_tensor") &&
                   !loom_str_eq_cstr(key, "allow_ragged_batch") &&
                   !loom_str_eq_cstr(key, "label_filename")) {
            return fail(p, "unknown field %s[0].%.*s", what, LOOM_STR_FMT(key));
        }
    }
    if (!t->name)
        return fail(p, "%s[0].name is required", what);
    if (!t->dtype)
        return fail(p, "%s[0].data_type is required", what);
    if (!have_dims || t->ndims == 0)
        return fail(p, "%s[0].dims is required and must not be empty", what);
    return LOOM_OK;
}

static loom_err parse_policy(struct parser *p, int obj, struct inf_config *c)
{
    if (!loom_json_is_object(&p->doc, obj) || loom_json_size(&p->doc, obj) != 1)
        return fail(p, "version_policy must be one of {\"latest\": {\"num_versions\": N}}, "
                       "{\"all\": {}}, {\"specific\": {\"versions\": [...]}}");
    struct loom_str kind = loom_json_slice(&p->doc, obj + 1);
    int v = obj + 2;
    if (!loom_json_is_object(&p->doc, v))
        return fail(p, "version_policy.%.*s must be an object", LOOM_STR_FMT(kind));
    if (loom_str_eq_cstr(kind, "latest")) {
        c->policy = INF_POLICY_LATEST;
        int n = loom_json_obj_get(&p->doc, v, "num_versions");
        if (n >= 0 && (!get_int(p, n, &c->num_versions) || c->num_versions < 1))
            return fail(p, "version_policy.latest.num_versions must be an integer >= 1");
    } else if (loom_str_eq_cstr(kind, "all")) {
        c->policy = INF_POLICY_ALL;
    } else if (loom_str_eq_cstr(kind, "specific")) {
        c->policy = INF_POLICY_SPECIFIC;
        int arr = loom_json_obj_get(&p->doc, v, "versions");
        if (arr < 0 || !loom_json_is_array(&p->doc, arr) || loom_json_size(&p->doc, arr) == 0)
            return fail(p, "version_policy.specific.versions must be a non-empty array");
        c->versions = loom_calloc((size_t)loom_json_size(&p->doc, arr), sizeof(int64_t));
        loom_json_foreach (&p->doc, arr, i) {
            int64_t ver;
            if (!get_int(p, i, &ver) || ver < 1)
                return fail(p, "version_policy.specific.versions must be positive integers");
            c->versions[c->nversions++] = ver;
        }
    } else {
        return fail(p, "version_policy.%.*s: expected latest, all or specific", LOOM_STR_FMT(kind));
    }
    return LOOM_OK;
}

static loom_err parse_uint_field(struct parser *p, int v, const char *what, uint64_t *out)
{
    int64_t x;
    if (!get_int(p, v, &x) || x < 0)
        return fail(p, "%s must be a non-negative integer", what);
    *out = (uint64_t)x;
    return LOOM_OK;
}

static loom_err parse_queue_policy(struct parser *p, int obj, struct inf_config *c)
{
    if (!loom_json_is_object(&p->doc, obj))
        return fail(p, "dynamic_batching.default_queue_policy must be an object");
    loom_json_foreach (&p->doc, obj, k) {
        struct loom_str key = loom_json_slice(&p->doc, k);
        int v = k + 1;
        loom_err e = LOOM_OK;
        if (loom_str_eq_cstr(key, "max_queue_size"))
            e = parse_uint_field(p, v, "default_queue_policy.max_queue_size", &c->max_queue_size);
        else if (loom_str_eq_cstr(key, "default_timeout_microseconds"))
            e = parse_uint_field(p, v, "default_queue_policy.default_timeout_microseconds",
                                 &c->default_timeout_us);
        else if (loom_str_eq_cstr(key, "allow_timeout_override")) {
            if (!get_bool(p, v, &c->allow_timeout_override))
                e = fail(p, "default_queue_policy.allow_timeout_override must be a boolean");
        } else if (loom_str_eq_cstr(key, "timeout_action")) {
            if (!loom_json_str_eq(&p->doc, v, LOOM_STR("REJECT")))
                e = fail(p, "default_queue_policy.timeout_action: only REJECT is supported");
        } else
            e = fail(p, "unknown field dynamic_batching.default_queue_policy.%.*s",
                     LOOM_STR_FMT(key));
        if (e)
            return e;
    }
    return LOOM_OK;
}

static loom_err parse_batching(struct parser *p, int obj, struct inf_config *c)
{
    if (!loom_json_is_object(&p->doc, obj))
        return fail(p, "dynamic_batching must be an object");
    c->dynamic_batching = true;
    loom_json_foreach (&p->doc, obj, k) {
        struct loom_str key = loom_json_slice(&p->doc, k);
        int v = k + 1;
        loom_err e = LOOM_OK;
        if (loom_str_eq_cstr(key, "max_queue_delay_microseconds")) {
            e = parse_uint_field(p, v, "dynamic_batching.max_queue_delay_microseconds",
                                 &c->max_queue_delay_us);
            if (!e && c->max_queue_delay_us > 10 * 1000 * 1000)
                e = fail(p, "dynamic_batching.max_queue_delay_microseconds is over 10 s");
        } else if (loom_str_eq_cstr(key, "max_queue_size")) {
            /* loom's flattened form of default_queue_policy.max_queue_size */
            e = parse_uint_field(p, v, "dynamic_batching.max_queue_size", &c->max_queue_size);
        } else if (loom_str_eq_cstr(key, "default_queue_policy")) {
            e = parse_queue_policy(p, v, c);
        } else if (loom_str_eq_cstr(key, "preferred_batch_size")) {
            if (!loom_json_is_array(&p->doc, v))
                return fail(p, "dynamic_batching.preferred_batch_size must be an array");
            c->preferred_batch_sizes =
                loom_calloc((size_t)loom_json_size(&p->doc, v) + 1, sizeof(int64_t));
            loom_json_foreach (&p->doc, v, i) {
                int64_t b;
                if (!get_int(p, i, &b) || b < 1)
                    return fail(p, "dynamic_batching.preferred_batch_size must hold integers "
                                   ">= 1");
                c->preferred_batch_sizes[c->npreferred++] = b;
            }
        } else if (loom_str_eq_cstr(key, "priority_levels") ||
                   loom_str_eq_cstr(key, "default_priority_level") ||
                   loom_str_eq_cstr(key, "priority_queue_policy") ||
                   loom_str_eq_cstr(key, "preserve_ordering")) {
            /* accepted; loom answers in arrival order and has one priority level */
        } else {
            e = fail(p, "unknown field dynamic_batching.%.*s", LOOM_STR_FMT(key));
        }
        if (e)
            return e;
    }
    return LOOM_OK;
}

static bool safe_filename(const char *s)
{
    return s[0] && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static loom_err parse_fields(struct parser *p, struct inf_config *c)
{
    int root = 0;
    if (!loom_json_is_object(&p->doc, root))
        return fail(p, "the top level must be an object");
    loom_json_foreach (&p->doc, root, k) {
        struct loom_str key = loom_json_slice(&p->doc, k);
        int v = k + 1;
        loom_err e = LOOM_OK;
        if (loom_str_eq_cstr(key, "name")) {
            char *name = loom_json_is_string(&p->doc, v) ? str_dup(p, v) : NULL;
            if (!name || strcmp(name, p->model) != 0)
                e = fail(p, "name \"%s\" does not match the model directory \"%s\"",
                         name ? name : "?", p->model);
            free(name);
        } else if (loom_str_eq_cstr(key, "backend") || loom_str_eq_cstr(key, "platform")) {
            char *s = loom_json_is_string(&p->doc, v) ? str_dup(p, v) : NULL;
            if (!s)
                return fail(p, "%.*s must be a string", LOOM_STR_FMT(key));
            char **slot = key.ptr[0] == 'b' ? &c->backend : &c->platform;
            free(*slot);
            *slot = s;
        } else if (loom_str_eq_cstr(key, "max_batch_size")) {
            if (!get_int(p, v, &c->max_batch_size) || c->max_batch_size < 0 ||
                c->max_batch_size > (1 << 24))
                e = fail(p, "max_batch_size must be an integer in 0..16777216");
        } else if (loom_str_eq_cstr(key, "input")) {
            e = parse_tensor(p, v, "input", &c->input, &c->has_input);
        } else if (loom_str_eq_cstr(key, "output")) {
            e = parse_tensor(p, v, "output", &c->output, &c->has_output);
        } else if (loom_str_eq_cstr(key, "version_policy")) {
            e = parse_policy(p, v, c);
        } else if (loom_str_eq_cstr(key, "dynamic_batching")) {
            e = parse_batching(p, v, c);
        } else if (loom_str_eq_cstr(key, "default_model_filename")) {
            free(c->default_model_filename);
            c->default_model_filename = loom_json_is_string(&p->doc, v) ? str_dup(p, v) : NULL;
            if (!c->default_model_filename || !safe_filename(c->default_model_filename))
                e = fail(p, "default_model_filename must be a file name (no '/')");
        } else if (loom_str_eq_cstr(key, "parameters")) {
            if (!loom_json_is_object(&p->doc, v))
                return fail(p, "parameters must be an object");
            free(c->parameters_json);
            c->parameters_json = loom_str_dup(loom_json_slice(&p->doc, v));
        } else if (in_list(unsupported_fields, key)) {
            e = fail(p, "%.*s is not supported", LOOM_STR_FMT(key));
        } else if (!in_list(ignored_fields, key)) {
            e = fail(p, "unknown field \"%.*s\"", LOOM_STR_FMT(key));
        }
        if (e)
            return e;
    }
    return LOOM_OK;
}

/* parameters.<key>.string_value, or NULL. */
static char *param_string(const char *params_json, const char *key)
{
    struct loom_arena a;
    loom_arena_init(&a, 0);
    struct loom_json_doc doc;
    char *out = NULL;
    if (loom_json_parse(params_json, strlen(params_json), NULL, &a, &doc, NULL) == LOOM_OK) {
        int v = loom_json_obj_get(&doc, 0, key);
        int s = v >= 0 && loom_json_is_object(&doc, v) ? loom_json_obj_get(&doc, v, "string_value")
                                                       : -1;
        struct loom_str str;
        if (s >= 0 && loom_json_is_string(&doc, s) && !loom_json_unescape(&doc, s, &a, &str))
            out = loom_str_dup(str);
    }
    loom_arena_release(&a);
    return out;
}

/* A "true"/"false" string parameter; `def` when absent. */
static int param_bool(struct parser *p, const char *params, const char *key, bool def, bool *out)
{
    char *v = param_string(params, key);
    *out = def;
    int bad = 0;
    if (v && strcmp(v, "true") == 0)
        *out = true;
    else if (v && strcmp(v, "false") == 0)
        *out = false;
    else if (v)
        bad = fail(p, "parameters.%s must be \"true\" or \"false\"", key);
    free(v);
    return bad;
}

/* Triton FIL's output_class, predict_proba and threshold. */
static loom_err parse_fil_output(struct parser *p, struct inf_config *c)
{
    bool output_class, proba;
    if (param_bool(p, c->parameters_json, "output_class", false, &output_class) ||
        param_bool(p, c->parameters_json, "predict_proba", false, &proba))
        return LOOM_EINVAL;
    c->threshold = 0.5f;
    char *t = param_string(c->parameters_json, "threshold");
    if (t) {
        double d;
        bool ok = loom_str_to_double(loom_str_cstr(t), &d) == LOOM_OK && d >= 0 && d <= 1;
        free(t);
        if (!ok)
            return fail(p, "parameters.threshold must be a number in 0..1");
        c->threshold = (float)d;
    }
    c->post = !output_class ? INF_POST_NONE : proba ? INF_POST_PROBA : INF_POST_CLASS;
    return LOOM_OK;
}

static uint64_t fnv1a(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h;
}

static void config_free(struct inf_config *c)
{
    free(c->name);
    free(c->backend);
    free(c->platform);
    free(c->input.name);
    free(c->output.name);
    free(c->versions);
    free(c->preferred_batch_sizes);
    free(c->default_model_filename);
    free(c->parameters_json);
    free(c->json);
    free(c);
}

struct inf_config *inf_config_parse(const char *name, const char *text, size_t len,
                                    struct loom_error *err)
{
    struct inf_config *c = loom_new(struct inf_config);
    atomic_init(&c->refs, 1);
    c->name = loom_strdup(name);
    c->policy = INF_POLICY_LATEST;
    c->num_versions = 1;
    c->digest = text ? fnv1a(text, len) : 0;
    struct parser p = { .err = err, .model = name };
    loom_arena_init(&p.arena, 0);
    if (text) {
        struct loom_json_limits limits = { .max_depth = 32, .max_bytes = 1 << 20 };
        struct loom_error jerr = { 0 };
        if (loom_json_parse(text, len, &limits, &p.arena, &p.doc, &jerr)) {
            fail(&p, "%s", jerr.msg);
            goto out_fail;
        }
        if (parse_fields(&p, c))
            goto out_fail;
    }
    if (!c->parameters_json)
        c->parameters_json = loom_strdup("{}");
    /* Triton's FIL backend configurations name the backend "fil" with a model_type. */
    if (c->backend && strcmp(c->backend, "fil") == 0) {
        char *type = param_string(c->parameters_json, "model_type");
        bool ok = !type || strcmp(type, "xgboost_json") == 0;
        if (!ok)
            fail(&p, "fil model_type \"%s\" is not supported (only xgboost_json)", type);
        free(type);
        if (!ok || parse_fil_output(&p, c))
            goto out_fail;
        if (!c->platform)
            c->platform = loom_strdup("fil");
        if (!c->default_model_filename)
            c->default_model_filename = loom_strdup("xgboost.json");
    } else if (c->backend && strcmp(c->backend, "xgboost") != 0 &&
               strcmp(c->backend, "linear") != 0) {
        fail(&p, "backend \"%s\" is not supported (supported: xgboost, linear, fil)", c->backend);
        goto out_fail;
    }
    if (!c->backend)
        c->backend = loom_strdup("xgboost");
    if (c->dynamic_batching && c->max_batch_size == 0) {
        fail(&p, "dynamic_batching needs max_batch_size >= 1");
        goto out_fail;
    }
    loom_arena_release(&p.arena);
    return c;
out_fail:
    loom_arena_release(&p.arena);
    config_free(c);
    return NULL;
}

struct inf_config *inf_config_ref(struct inf_config *c)
{
    atomic_fetch_add(&c->refs, 1);
    return c;
}

void inf_config_unref(struct inf_config *c)
{
    if (c && atomic_fetch_sub(&c->refs, 1) == 1)
        config_free(c);
}

static void write_dims(struct loom_json_writer *w, const int64_t *dims, size_t n)
{
    loom_json_write_array_begin(w);
    for (size_t i = 0; i < n; i++)
        loom_json_write_i64(w, dims[i]);
    loom_json_write_array_end(w);
}

static void write_tensor(struct loom_json_writer *w, const char *key,
                         const struct inf_tensor_spec *t)
{
    loom_json_write_key(w, key);
    loom_json_write_array_begin(w);
    loom_json_write_object_begin(w);
    loom_json_write_key(w, "name");
    loom_json_write_string(w, t->name);
    loom_json_write_key(w, "data_type");
    loom_json_write_string(w, loom_dtype_config_name(t->dtype));
    loom_json_write_key(w, "dims");
    write_dims(w, t->dims, t->ndims);
    if (t->optional) {
        loom_json_write_key(w, "optional");
        loom_json_write_bool(w, true);
    }
    loom_json_write_object_end(w);
    loom_json_write_array_end(w);
}

static void render(struct inf_config *c)
{
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "name");
    loom_json_write_string(&w, c->name);
    loom_json_write_key(&w, "platform");
    loom_json_write_string(&w, c->platform ? c->platform : "");
    loom_json_write_key(&w, "backend");
    loom_json_write_string(&w, c->backend);
    loom_json_write_key(&w, "version_policy");
    loom_json_write_object_begin(&w);
    if (c->policy == INF_POLICY_LATEST) {
        loom_json_write_key(&w, "latest");
        loom_json_write_object_begin(&w);
        loom_json_write_key(&w, "num_versions");
        loom_json_write_i64(&w, c->num_versions);
        loom_json_write_object_end(&w);
    } else if (c->policy == INF_POLICY_ALL) {
        loom_json_write_key(&w, "all");
        loom_json_write_object_begin(&w);
        loom_json_write_object_end(&w);
    } else {
        loom_json_write_key(&w, "specific");
        loom_json_write_object_begin(&w);
        loom_json_write_key(&w, "versions");
        write_dims(&w, c->versions, c->nversions);
        loom_json_write_object_end(&w);
    }
    loom_json_write_object_end(&w);
    loom_json_write_key(&w, "max_batch_size");
    loom_json_write_i64(&w, c->max_batch_size);
    write_tensor(&w, "input", &c->input);
    write_tensor(&w, "output", &c->output);
    if (c->dynamic_batching) {
        loom_json_write_key(&w, "dynamic_batching");
        loom_json_write_object_begin(&w);
        if (c->npreferred) {
            loom_json_write_key(&w, "preferred_batch_size");
            write_dims(&w, c->preferred_batch_sizes, c->npreferred);
        }
        loom_json_write_key(&w, "max_queue_delay_microseconds");
        loom_json_write_u64(&w, c->max_queue_delay_us);
        loom_json_write_key(&w, "default_queue_policy");
        loom_json_write_object_begin(&w);
        loom_json_write_key(&w, "timeout_action");
        loom_json_write_string(&w, "REJECT");
        loom_json_write_key(&w, "default_timeout_microseconds");
        loom_json_write_u64(&w, c->default_timeout_us);
        loom_json_write_key(&w, "allow_timeout_override");
        loom_json_write_bool(&w, c->allow_timeout_override);
        loom_json_write_key(&w, "max_queue_size");
        loom_json_write_u64(&w, c->max_queue_size);
        loom_json_write_object_end(&w);
        loom_json_write_object_end(&w);
    }
    loom_json_write_key(&w, "default_model_filename");
    loom_json_write_string(&w, c->default_model_filename ? c->default_model_filename : "");
    loom_json_write_key(&w, "parameters");
    loom_json_write_raw(&w, loom_str_cstr(c->parameters_json));
    loom_json_write_object_end(&w);
    loom_json_writer_finish(&w);
    free(c->json);
    c->json = loom_buf_detach(&b, NULL);
}

static void format_dims(const int64_t *dims, size_t n, char *out, size_t cap)
{
    size_t o = (size_t)snprintf(out, cap, "[");
    for (size_t i = 0; i < n && o < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s%lld", i ? ", " : "", (long long)dims[i]);
    if (o < cap)
        snprintf(out + o, cap - o, "]");
}

static bool is_binary_proba(const char *objective)
{
    return strcmp(objective, "binary:logistic") == 0 || strcmp(objective, "reg:logistic") == 0;
}

void inf_postprocess(const struct inf_config *c, const struct loom_model_info *info,
                     const float *raw, size_t rows, float *y)
{
    size_t k = info->num_outputs;
    for (size_t r = 0; r < rows; r++) {
        const float *in = raw + r * k;
        if (c->post == INF_POST_CLASS) {
            y[r] = k == 1 ? (in[0] > c->threshold ? 1.0f : 0.0f) : loom_model_argmax(in, k);
        } else if (k == 1) { /* INF_POST_PROBA, binary */
            y[2 * r] = 1.0f - in[0];
            y[2 * r + 1] = in[0];
        } else {
            memcpy(y + r * k, in, k * sizeof(float));
        }
    }
}

size_t inf_config_out_width(const struct inf_config *c, const struct loom_model_info *info,
                            struct loom_error *err)
{
    bool multi = strcmp(info->objective, "multi:softprob") == 0;
    switch (c->post) {
    case INF_POST_NONE:
        return info->num_outputs;
    case INF_POST_CLASS:
        if (is_binary_proba(info->objective) || multi)
            return 1;
        break;
    case INF_POST_PROBA:
        if (is_binary_proba(info->objective))
            return 2;
        if (multi)
            return info->num_outputs;
        break;
    }
    loom_error_set(err, LOOM_EINVAL,
                   "model '%s': output_class%s needs a probability objective (binary:logistic, "
                   "reg:logistic or multi:softprob), not %s",
                   c->name, c->post == INF_POST_PROBA ? " with predict_proba" : "",
                   info->objective);
    return 0;
}

loom_err inf_config_complete(struct inf_config *c, const struct loom_model_info *info,
                             struct loom_error *err)
{
    c->out_width = inf_config_out_width(c, info, err);
    if (!c->out_width)
        return LOOM_EINVAL;
    int64_t features = (int64_t)info->num_features, outputs = (int64_t)c->out_width;
    bool batching = c->max_batch_size > 0;
    if (!c->has_input) {
        c->input.name = loom_strdup("input__0");
        c->input.dtype = LOOM_DT_FP32;
        c->input.ndims = 0;
        if (!batching)
            c->input.dims[c->input.ndims++] = -1;
        c->input.dims[c->input.ndims++] = features;
        c->has_input = true;
    }
    if (!c->has_output) {
        c->output.name = loom_strdup("output__0");
        c->output.dtype = LOOM_DT_FP32;
        memcpy(c->output.dims, c->input.dims, sizeof(c->input.dims));
        c->output.ndims = c->input.ndims;
        c->output.dims[c->output.ndims - 1] = outputs;
        c->has_output = true;
    }
    char in_dims[128], out_dims[128];
    format_dims(c->input.dims, c->input.ndims, in_dims, sizeof(in_dims));
    format_dims(c->output.dims, c->output.ndims, out_dims, sizeof(out_dims));
    if (!loom_dtype_is_numeric(c->input.dtype) || !loom_dtype_is_numeric(c->output.dtype))
        return loom_error_set(err, LOOM_EINVAL,
                              "model '%s': input and output must be numeric (not TYPE_STRING)",
                              c->name);
    int64_t *last = &c->input.dims[c->input.ndims - 1];
    if (*last == -1)
        *last = features;
    if (*last != features)
        return loom_error_set(err, LOOM_EINVAL,
                              "model '%s': input '%s' dims %s end in %lld but the model has %lld "
                              "features",
                              c->name, c->input.name, in_dims, (long long)*last,
                              (long long)features);
    int64_t *olast = &c->output.dims[c->output.ndims - 1];
    if (*olast == -1)
        *olast = outputs;
    bool match = c->output.ndims == c->input.ndims && *olast == outputs;
    for (size_t i = 0; match && i + 1 < c->input.ndims; i++)
        match = c->output.dims[i] == c->input.dims[i];
    if (!match)
        return loom_error_set(err, LOOM_EINVAL,
                              "model '%s': output '%s' dims %s must be the input's leading dims %s "
                              "followed by the model's %lld value(s) per row",
                              c->name, c->output.name, out_dims, in_dims, (long long)outputs);
    if (!c->platform)
        c->platform = loom_strdup(c->backend);
    render(c);
    return LOOM_OK;
}
