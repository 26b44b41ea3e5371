/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The wire formats of the v2 protocol. Decoding turns an infer request (JSON tensors, flat or
 * nested, in any numeric datatype; or Triton's binary tensor extension: a JSON header of
 * Inference-Header-Content-Length bytes followed by the raw tensors) into the float32 matrix
 * the model runtimes take, checking everything against the model's configuration and saying
 * precisely what is wrong. Encoding writes the answer as JSON or, for outputs the client asked
 * to receive in binary, as a JSON header followed by the raw tensors.
 */
#include "inference/inference.h"

#include <loom/json.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BAD(...) (loom_error_set(err, LOOM_EINVAL, __VA_ARGS__), 400)

static void format_shape(const int64_t *dims, size_t n, char *out, size_t cap)
{
    size_t o = (size_t)snprintf(out, cap, "[");
    for (size_t i = 0; i < n && o < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s%lld", i ? "," : "", (long long)dims[i]);
    if (o < cap)
        snprintf(out + o, cap - o, "]");
}

struct input_ref { /* where the one input's data is */
    int obj;
    int data; /* token of "data", or -1 */
    uint64_t binary_size;
    bool binary;
    enum loom_dtype dtype;
};

/* Check the request's shape against the configuration; the number of elements into *n. */
static int check_shape(const struct inf_version *v, struct inf_request *r, uint64_t *n,
                       struct loom_error *err)
{
    const struct inf_config *c = v->config;
    const struct inf_tensor_spec *in = &c->input;
    char got[160], want[160];
    format_shape(r->in_shape, r->in_ndims, got, sizeof(got));
    bool batching = c->max_batch_size > 0;
    size_t off = batching ? 1 : 0;
    bool ok = r->in_ndims == in->ndims + off;
    for (size_t i = 0; ok && i < in->ndims; i++)
        ok = in->dims[i] == -1 || in->dims[i] == r->in_shape[i + off];
    if (!ok) {
        int64_t full[LOOM_TENSOR_MAX_DIMS + 1];
        full[0] = -1;
        memcpy(full + off, in->dims, in->ndims * sizeof(int64_t));
        format_shape(full, in->ndims + off, want, sizeof(want));
        return BAD("input '%s' has shape %s; model '%s' takes %s (-1: any size)", in->name, got,
                   v->model_name, want);
    }
    if (batching && r->in_shape[0] > c->max_batch_size)
        return BAD("input '%s' has a batch of %lld; model '%s' takes at most max_batch_size %lld",
                   in->name, (long long)r->in_shape[0], v->model_name,
                   (long long)c->max_batch_size);
    uint64_t max = (uint64_t)v->inf->conf->max_tensor_elements;
    loom_err e = loom_shape_elements(r->in_shape, r->in_ndims, max, n);
    if (e == LOOM_ETOOBIG)
        return BAD("input '%s' with shape %s has more than %llu elements (the limit is "
                   "--inference.max-tensor-elements)",
                   in->name, got, (unsigned long long)max);
    if (e)
        return BAD("input '%s' has a negative dimension in shape %s", in->name, got);
    uint64_t features = (uint64_t)in->dims[in->ndims - 1];
    r->rows = features ? *n / features : 0;
    return 0;
}

/* Convert the JSON `data` (flat or nested arrays of numbers) into x[0..n). */
static int decode_json_data(const struct loom_json_doc *doc, int data, enum loom_dtype dt,
                            const char *name, float *x, uint64_t n, struct loom_error *err)
{
    if (!loom_json_is_array(doc, data) && n != 1)
        return BAD("input '%s': data must be an array", name);
    uint64_t k = 0;
    int end = loom_json_skip(doc, data);
    for (int i = data; i < end; i++) {
        const struct loom_json_tok *t = &doc->toks[i];
        if (t->type == LOOM_JSON_ARRAY)
            continue;
        if (k == n) {
            /* Count the rest for a helpful message. */
            uint64_t more = 0;
            for (; i < end; i++)
                more += doc->toks[i].type != LOOM_JSON_ARRAY;
            return BAD("input '%s': the shape has %llu elements but data has %llu", name,
                       (unsigned long long)n, (unsigned long long)(n + more));
        }
        loom_err e = LOOM_OK;
        if (dt == LOOM_DT_BOOL) {
            if (t->type != LOOM_JSON_TRUE && t->type != LOOM_JSON_FALSE)
                return BAD("input '%s' is BOOL: element %llu must be true or false", name,
                           (unsigned long long)k);
            x[k++] = t->type == LOOM_JSON_TRUE ? 1.0f : 0.0f;
            continue;
        }
        if (t->type != LOOM_JSON_NUMBER)
            return BAD("input '%s': element %llu of data is not a number", name,
                       (unsigned long long)k);
        if (dt == LOOM_DT_FP32 || dt == LOOM_DT_FP16) {
            e = loom_json_to_float(doc, i, &x[k]);
        } else if (dt == LOOM_DT_FP64) {
            double d;
            e = loom_json_to_double(doc, i, &d);
            x[k] = (float)d;
        } else { /* integers */
            int64_t iv;
            uint64_t uv;
            if (!(t->flags & LOOM_JSON_INTEGER))
                return BAD("input '%s' is %s: element %llu must be an integer", name,
                           loom_dtype_name(dt), (unsigned long long)k);
            if (loom_json_to_i64(doc, i, &iv) == LOOM_OK) {
                if (!loom_dtype_fits_i64(dt, iv))
                    return BAD("input '%s': element %llu (%lld) is out of range for %s", name,
                               (unsigned long long)k, (long long)iv, loom_dtype_name(dt));
                x[k] = (float)iv;
            } else if (loom_json_to_u64(doc, i, &uv) == LOOM_OK && loom_dtype_fits_u64(dt, uv)) {
                x[k] = (float)uv;
            } else {
                return BAD("input '%s': element %llu is out of range for %s", name,
                           (unsigned long long)k, loom_dtype_name(dt));
            }
        }
        if (e == LOOM_ETOOBIG)
            return BAD("input '%s': element %llu is out of range for %s", name,
                       (unsigned long long)k, loom_dtype_name(dt));
        if (e)
            return BAD("input '%s': element %llu is not a valid number", name,
                       (unsigned long long)k);
        k++;
    }
    if (k != n)
        return BAD("input '%s': the shape has %llu elements but data has %llu", name,
                   (unsigned long long)n, (unsigned long long)k);
    return 0;
}

static int decode_parameters(const struct loom_json_doc *doc, int obj, struct inf_request *r,
                             bool *binary_default, struct loom_error *err)
{
    if (!loom_json_is_object(doc, obj))
        return BAD("'parameters' must be an object");
    loom_json_foreach (doc, obj, k) {
        struct loom_str key = loom_json_slice(doc, k);
        int v = k + 1;
        if (loom_str_eq_cstr(key, "timeout")) {
            uint64_t us;
            if (loom_json_to_u64(doc, v, &us))
                return BAD("parameter 'timeout' must be a non-negative integer (microseconds)");
            r->timeout_us = us;
        } else if (loom_str_eq_cstr(key, "binary_data_output")) {
            if (loom_json_to_bool(doc, v, binary_default))
                return BAD("parameter 'binary_data_output' must be a boolean");
        } else if (loom_str_eq_cstr(key, "priority")) {
            uint64_t p;
            if (loom_json_to_u64(doc, v, &p))
                return BAD("parameter 'priority' must be a non-negative integer");
        } else if (loom_str_has_prefix(key, LOOM_STR("sequence_"))) {
            return BAD("parameter '%.*s': sequence batching is not supported", LOOM_STR_FMT(key));
        } else if (loom_str_has_prefix(key, LOOM_STR("triton_"))) {
            return BAD("parameter keys starting with 'triton_' are reserved");
        } else if (loom_json_is_container(doc, v) || loom_json_is_null(doc, v)) {
            return BAD("parameter '%.*s' must be a string, a number or a boolean",
                       LOOM_STR_FMT(key));
        }
    }
    return 0;
}

static int decode_input(const struct inf_version *v, const struct loom_json_doc *doc, int obj,
                        struct inf_request *r, struct input_ref *in, struct loom_arena *a,
                        struct loom_error *err)
{
    const struct inf_tensor_spec *spec = &v->config->input;
    if (!loom_json_is_object(doc, obj))
        return BAD("each element of 'inputs' must be an object");
    int name = loom_json_obj_get(doc, obj, "name"), shape = loom_json_obj_get(doc, obj, "shape");
    int dtype = loom_json_obj_get(doc, obj, "datatype"),
        params = loom_json_obj_get(doc, obj, "parameters");
    if (name < 0 || !loom_json_is_string(doc, name))
        return BAD("an input has no 'name' (a string)");
    struct loom_str nm;
    if (loom_json_unescape(doc, name, a, &nm))
        return BAD("an input's name is not valid");
    if (!loom_str_eq_cstr(nm, spec->name))
        return BAD("unknown input '%.*s': model '%s' takes one input, '%s'", LOOM_STR_FMT(nm),
                   v->model_name, spec->name);
    if (in->obj >= 0)
        return BAD("input '%s' is given twice", spec->name);
    in->obj = obj;
    if (dtype < 0 || !loom_json_is_string(doc, dtype))
        return BAD("input '%s' has no 'datatype' (e.g. \"FP32\")", spec->name);
    in->dtype = loom_dtype_parse(loom_json_slice(doc, dtype));
    if (!in->dtype)
        return BAD("input '%s': unknown datatype \"%.*s\" (BOOL, UINT8..UINT64, INT8..INT64, "
                   "FP16, FP32, FP64, BYTES)",
                   spec->name, LOOM_STR_FMT(loom_json_slice(doc, dtype)));
    if (!loom_dtype_is_numeric(in->dtype))
        return BAD("input '%s' is %s, but model '%s' takes numbers (%s)", spec->name,
                   loom_dtype_name(in->dtype), v->model_name, loom_dtype_name(spec->dtype));
    if (shape < 0 || !loom_json_is_array(doc, shape))
        return BAD("input '%s' has no 'shape' (an array of integers)", spec->name);
    r->in_ndims = 0;
    loom_json_foreach (doc, shape, i) {
        int64_t d;
        if (r->in_ndims == LOOM_TENSOR_MAX_DIMS)
            return BAD("input '%s' has more than %d dimensions", spec->name, LOOM_TENSOR_MAX_DIMS);
        if (!loom_json_is_number(doc, i) || loom_json_to_i64(doc, i, &d) || d < 0)
            return BAD("input '%s': shape must hold non-negative integers", spec->name);
        r->in_shape[r->in_ndims++] = d;
    }
    if (params >= 0) {
        if (!loom_json_is_object(doc, params))
            return BAD("input '%s': 'parameters' must be an object", spec->name);
        int bds = loom_json_obj_get(doc, params, "binary_data_size");
        if (bds >= 0) {
            if (loom_json_to_u64(doc, bds, &in->binary_size))
                return BAD("input '%s': binary_data_size must be a non-negative integer",
                           spec->name);
            in->binary = true;
        }
        if (loom_json_obj_get(doc, params, "shared_memory_region") >= 0)
            return BAD("input '%s': shared memory is not supported", spec->name);
    }
    in->data = loom_json_obj_get(doc, obj, "data");
    if (in->binary && in->data >= 0)
        return BAD("input '%s' sets both 'data' and 'binary_data_size'", spec->name);
    if (!in->binary && in->data < 0)
        return BAD("input '%s' has neither 'data' nor parameters.binary_data_size", spec->name);
    return 0;
}

static int decode_outputs(const struct inf_version *v, const struct loom_json_doc *doc, int arr,
                          bool binary_default, struct inf_request *r, struct loom_arena *a,
                          struct loom_error *err)
{
    const struct inf_tensor_spec *spec = &v->config->output;
    r->out.binary = binary_default;
    if (arr >= 0 && !loom_json_is_array(doc, arr))
        return BAD("'outputs' must be an array");
    if (arr < 0 || loom_json_size(doc, arr) == 0) {
        r->want_output = true; /* no selection: every output */
        return 0;
    }
    loom_json_foreach (doc, arr, i) {
        if (!loom_json_is_object(doc, i))
            return BAD("each element of 'outputs' must be an object");
        int name = loom_json_obj_get(doc, i, "name");
        struct loom_str nm;
        if (name < 0 || !loom_json_is_string(doc, name) || loom_json_unescape(doc, name, a, &nm))
            return BAD("a requested output has no 'name' (a string)");
        if (!loom_str_eq_cstr(nm, spec->name))
            return BAD("unknown output '%.*s': model '%s' has one output, '%s'", LOOM_STR_FMT(nm),
                       v->model_name, spec->name);
        if (r->want_output)
            return BAD("output '%s' is requested twice", spec->name);
        r->want_output = true;
        int params = loom_json_obj_get(doc, i, "parameters");
        if (params < 0)
            continue;
        if (!loom_json_is_object(doc, params))
            return BAD("output '%s': 'parameters' must be an object", spec->name);
        int bin = loom_json_obj_get(doc, params, "binary_data");
        if (bin >= 0 && loom_json_to_bool(doc, bin, &r->out.binary))
            return BAD("output '%s': binary_data must be a boolean", spec->name);
        int cls = loom_json_obj_get(doc, params, "classification");
        uint64_t k;
        if (cls >= 0 && (loom_json_to_u64(doc, cls, &k) || k < 1 || k > UINT32_MAX))
            return BAD("output '%s': classification must be an integer >= 1", spec->name);
        if (cls >= 0)
            r->out.classification = (uint32_t)k;
        if (loom_json_obj_get(doc, params, "shared_memory_region") >= 0)
            return BAD("output '%s': shared memory is not supported", spec->name);
    }
    return 0;
}

static bool model_takes_missing(const struct inf_version *v)
{
    return strcmp(v->info->backend, "linear") != 0;
}

static int check_finite(const struct inf_version *v, const float *x, uint64_t n,
                        struct loom_error *err)
{
    if (model_takes_missing(v))
        return 0;
    for (uint64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return BAD("input '%s': element %llu is %s, but model '%s' (%s) needs finite values",
                       v->config->input.name, (unsigned long long)i, isnan(x[i]) ? "NaN" : "Inf",
                       v->model_name, v->info->backend);
    return 0;
}

/* Inference-Header-Content-Length: 0 means the whole body is the raw bytes of the one input. */
static int decode_raw(const struct inf_version *v, struct loom_str body, struct inf_request *r,
                      struct loom_arena *a, struct loom_error *err)
{
    const struct inf_tensor_spec *spec = &v->config->input;
    size_t esize = loom_dtype_size(spec->dtype);
    r->in_ndims = 0;
    if (v->config->max_batch_size > 0)
        r->in_shape[r->in_ndims++] = 1;
    uint64_t fixed = 1;
    int variable = -1;
    for (size_t i = 0; i < spec->ndims; i++) {
        if (spec->dims[i] < 0) {
            if (variable >= 0)
                return BAD("a raw binary request needs at most one variable dimension");
            variable = (int)r->in_ndims;
            r->in_shape[r->in_ndims++] = 0;
        } else {
            fixed *= (uint64_t)spec->dims[i];
            r->in_shape[r->in_ndims++] = spec->dims[i];
        }
    }
    if (!esize || !fixed || body.len % (esize * fixed) != 0 ||
        (variable < 0 && body.len != esize * fixed))
        return BAD("a raw binary request of %zu bytes does not fit input '%s' (%s)", body.len,
                   spec->name, loom_dtype_name(spec->dtype));
    if (variable >= 0)
        r->in_shape[variable] = (int64_t)(body.len / (esize * fixed));
    uint64_t n;
    int st = check_shape(v, r, &n, err);
    if (st)
        return st;
    r->x = loom_arena_alloc(a, (size_t)n * sizeof(float) + 1);
    loom_tensor_to_f32(spec->dtype, body.ptr, (size_t)n, r->x);
    r->want_output = true;
    r->out.binary = true;
    return check_finite(v, r->x, n, err);
}

int inf_decode(const struct inf_version *v, struct loom_http_req *http, struct inf_request *r,
               struct loom_error *err)
{
    memset(r, 0, sizeof(*r));
    struct loom_str body = http->body, json = body, bin = LOOM_STR_NULL;
    struct loom_str hlen = loom_http_req_header(http, "inference-header-content-length");
    if (hlen.len) {
        uint64_t n;
        if (loom_str_to_u64(hlen, &n) || n > body.len)
            return BAD("Inference-Header-Content-Length must be an integer in 0..%zu", body.len);
        if (n == 0)
            return decode_raw(v, body, r, http->arena, err);
        json = loom_str_make(body.ptr, (size_t)n);
        bin = loom_str_make(body.ptr + n, body.len - (size_t)n);
    }
    if (json.len == 0)
        return BAD("the request body is empty; send a v2 inference request (JSON)");
    struct loom_json_limits limits = {
        .max_depth = 2 + 3 + LOOM_TENSOR_MAX_DIMS + 1,
        .max_tokens = (uint32_t)LOOM_MIN((uint64_t)v->inf->conf->max_tensor_elements * 2 + 4096,
                                         (uint64_t)INT32_MAX),
        .allow_nonfinite = true,
    };
    struct loom_json_doc doc;
    struct loom_error jerr = { 0 };
    loom_err e = loom_json_parse(json.ptr, json.len, &limits, http->arena, &doc, &jerr);
    if (e)
        return BAD("malformed JSON: %s%s", jerr.msg,
                   hlen.len ? ""
                            : " (if binary tensors follow the JSON, send the "
                              "Inference-Header-Content-Length header)");
    if (!loom_json_is_object(&doc, 0))
        return BAD("the request must be a JSON object");
    int inputs = -1, outputs = -1;
    bool binary_default = false;
    loom_json_foreach (&doc, 0, k) {
        struct loom_str key = loom_json_slice(&doc, k);
        int val = k + 1;
        if (loom_str_eq_cstr(key, "id")) {
            if (!loom_json_is_string(&doc, val) ||
                loom_json_unescape(&doc, val, http->arena, &r->id))
                return BAD("'id' must be a string");
            r->has_id = true;
        } else if (loom_str_eq_cstr(key, "parameters")) {
            int st = decode_parameters(&doc, val, r, &binary_default, err);
            if (st)
                return st;
        } else if (loom_str_eq_cstr(key, "inputs")) {
            inputs = val;
        } else if (loom_str_eq_cstr(key, "outputs")) {
            outputs = val;
        }
    }
    if (inputs < 0 || !loom_json_is_array(&doc, inputs) || loom_json_size(&doc, inputs) == 0)
        return BAD("'inputs' must be a non-empty array");
    struct input_ref in = { .obj = -1, .data = -1 };
    loom_json_foreach (&doc, inputs, i) {
        int st = decode_input(v, &doc, i, r, &in, http->arena, err);
        if (st)
            return st;
    }
    uint64_t n;
    int st = check_shape(v, r, &n, err);
    if (st)
        return st;
    r->x = loom_arena_alloc(http->arena, (size_t)n * sizeof(float) + 1);
    if (in.binary) {
        size_t esize = loom_dtype_size(in.dtype);
        if (in.binary_size != n * esize)
            return BAD("input '%s': binary_data_size is %llu but shape and %s need %llu bytes",
                       v->config->input.name, (unsigned long long)in.binary_size,
                       loom_dtype_name(in.dtype), (unsigned long long)(n * esize));
        if (!hlen.len)
            return BAD("input '%s' is binary: send the Inference-Header-Content-Length header",
                       v->config->input.name);
        if (bin.len < in.binary_size)
            return BAD("input '%s': expected %llu bytes of binary data after the header, got %zu",
                       v->config->input.name, (unsigned long long)in.binary_size, bin.len);
        loom_tensor_to_f32(in.dtype, bin.ptr, (size_t)n, r->x);
        bin.ptr += in.binary_size;
        bin.len -= in.binary_size;
    } else {
        st = decode_json_data(&doc, in.data, in.dtype, v->config->input.name, r->x, n, err);
        if (st)
            return st;
    }
    if (bin.len)
        return BAD("%zu bytes of binary data after the inputs belong to no input", bin.len);
    st = decode_outputs(v, &doc, outputs, binary_default, r, http->arena, err);
    if (st)
        return st;
    return check_finite(v, r->x, n, err);
}

/* ---- answers ---- */

struct cls_item {
    float value;
    uint32_t index;
};

static int cmp_cls(const void *a, const void *b)
{
    const struct cls_item *x = a, *y = b;
    if (x->value != y->value)
        return x->value > y->value ? -1 : 1;
    return x->index < y->index ? -1 : (x->index > y->index);
}

/* The classification extension: per row the top k "value:index" strings. */
static void classify(const float *y, uint64_t rows, uint32_t nout, uint32_t k, struct loom_arena *a,
                     struct loom_str **strs)
{
    struct cls_item *items = loom_arena_alloc(a, nout * sizeof(*items));
    *strs = loom_arena_alloc(a, (size_t)rows * k * sizeof(**strs));
    for (uint64_t r = 0; r < rows; r++) {
        for (uint32_t i = 0; i < nout; i++)
            items[i] = (struct cls_item){ y[r * nout + i], i };
        qsort(items, nout, sizeof(*items), cmp_cls);
        for (uint32_t i = 0; i < k; i++) {
            char tmp[64];
            int n = snprintf(tmp, sizeof(tmp), "%f:%u", (double)items[i].value, items[i].index);
            (*strs)[r * k + i] = loom_str_make(loom_arena_memdup(a, tmp, (size_t)n), (size_t)n);
        }
    }
}

static void write_values_json(struct loom_json_writer *w, enum loom_dtype dt, const float *y,
                              uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        switch (dt) {
        case LOOM_DT_FP32:
            loom_json_write_float(w, y[i]);
            break;
        case LOOM_DT_FP16: /* the value a half holds, as the binary form would carry it */
            loom_json_write_float(w, loom_f16_to_f32(loom_f32_to_f16(y[i])));
            break;
        case LOOM_DT_FP64:
            loom_json_write_double(w, (double)y[i]);
            break;
        case LOOM_DT_BOOL:
            loom_json_write_bool(w, y[i] != 0 && !isnan(y[i]));
            break;
        default: {
            unsigned char tmp[8];
            loom_tensor_from_f32(dt, &y[i], 1, tmp);
            if (dt == LOOM_DT_UINT64) {
                uint64_t u;
                memcpy(&u, tmp, 8);
                loom_json_write_u64(w, u);
            } else {
                float back;
                loom_tensor_to_f32(dt, tmp, 1, &back);
                loom_json_write_i64(w, (int64_t)back);
            }
        }
        }
    }
}

void inf_respond(const struct inf_version *v, struct loom_http_req *http,
                 const struct inf_request *r, const float *y)
{
    const struct inf_tensor_spec *spec = &v->config->output;
    uint32_t nout = (uint32_t)v->config->out_width;
    int64_t shape[LOOM_TENSOR_MAX_DIMS];
    size_t ndims = r->in_ndims;
    memcpy(shape, r->in_shape, ndims * sizeof(int64_t));
    shape[ndims - 1] = nout;
    uint64_t n = r->rows * nout;
    enum loom_dtype dt = spec->dtype;
    struct loom_str *cls = NULL;
    uint32_t k = r->out.classification ? LOOM_MIN(r->out.classification, nout) : 0;
    if (k) {
        classify(y, r->rows, nout, k, http->arena, &cls);
        shape[ndims - 1] = k;
        n = r->rows * k;
        dt = LOOM_DT_BYTES;
    }

    struct loom_buf b;
    loom_buf_init(&b, 0);
    loom_buf_reserve(&b, 160 + (r->out.binary ? 0 : n * 12));
    struct loom_json_writer w;
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    if (r->has_id) {
        loom_json_write_key(&w, "id");
        loom_json_write_str(&w, r->id);
    }
    loom_json_write_key(&w, "model_name");
    loom_json_write_string(&w, v->model_name);
    loom_json_write_key(&w, "model_version");
    loom_json_write_string(&w, v->version_str);
    loom_json_write_key(&w, "outputs");
    loom_json_write_array_begin(&w);
    size_t blob_len = 0;
    if (r->want_output) {
        loom_json_write_object_begin(&w);
        loom_json_write_key(&w, "name");
        loom_json_write_string(&w, spec->name);
        loom_json_write_key(&w, "datatype");
        loom_json_write_string(&w, loom_dtype_name(dt));
        loom_json_write_key(&w, "shape");
        loom_json_write_array_begin(&w);
        for (size_t i = 0; i < ndims; i++)
            loom_json_write_i64(&w, shape[i]);
        loom_json_write_array_end(&w);
        if (r->out.binary) {
            if (cls) {
                for (uint64_t i = 0; i < n; i++)
                    blob_len += 4 + cls[i].len;
            } else {
                blob_len = (size_t)n * loom_dtype_size(dt);
            }
            loom_json_write_key(&w, "parameters");
            loom_json_write_object_begin(&w);
            loom_json_write_key(&w, "binary_data_size");
            loom_json_write_u64(&w, blob_len);
            loom_json_write_object_end(&w);
        } else {
            loom_json_write_key(&w, "data");
            loom_json_write_array_begin(&w);
            if (cls)
                for (uint64_t i = 0; i < n; i++)
                    loom_json_write_str(&w, cls[i]);
            else
                write_values_json(&w, dt, y, n);
            loom_json_write_array_end(&w);
        }
        loom_json_write_object_end(&w);
    }
    loom_json_write_array_end(&w);
    loom_json_write_object_end(&w);
    if (loom_json_writer_finish(&w)) {
        loom_buf_release(&b);
        loom_http_respond_error(http, 500, "the response is too large to encode");
        return;
    }
    if (!blob_len) {
        loom_http_respond_buf(http, 200, "application/json", &b);
        loom_buf_release(&b);
        return;
    }
    size_t header_len = b.len;
    if (loom_buf_reserve(&b, blob_len)) {
        loom_buf_release(&b);
        loom_http_respond_error(http, 500, "the response is too large to encode");
        return;
    }
    if (cls) {
        for (uint64_t i = 0; i < n; i++) {
            uint32_t len = (uint32_t)cls[i].len;
            loom_buf_append(&b, &len, 4);
            loom_buf_append(&b, cls[i].ptr, cls[i].len);
        }
    } else {
        loom_tensor_from_f32(dt, y, (size_t)n, b.data + b.len);
        b.len += blob_len;
    }
    loom_http_resp_headerf(http, "Inference-Header-Content-Length", "%zu", header_len);
    loom_http_respond_buf(http, 200, "application/octet-stream", &b);
    loom_buf_release(&b);
}
