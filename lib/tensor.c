/* SPDX-License-Identifier: Apache-2.0 */
/* Tensor datatypes: names, sizes, ranges and conversions (see include/loom/tensor.h). */
#include <loom/tensor.h>

#include <math.h>
#include <string.h>

static const struct {
    const char *name;
    const char *config;
    size_t size;
} dtypes[LOOM_DT__COUNT] = {
    [LOOM_DT_INVALID] = { "INVALID", "TYPE_INVALID", 0 },
    [LOOM_DT_BOOL] = { "BOOL", "TYPE_BOOL", 1 },
    [LOOM_DT_UINT8] = { "UINT8", "TYPE_UINT8", 1 },
    [LOOM_DT_UINT16] = { "UINT16", "TYPE_UINT16", 2 },
    [LOOM_DT_UINT32] = { "UINT32", "TYPE_UINT32", 4 },
    [LOOM_DT_UINT64] = { "UINT64", "TYPE_UINT64", 8 },
    [LOOM_DT_INT8] = { "INT8", "TYPE_INT8", 1 },
    [LOOM_DT_INT16] = { "INT16", "TYPE_INT16", 2 },
    [LOOM_DT_INT32] = { "INT32", "TYPE_INT32", 4 },
    [LOOM_DT_INT64] = { "INT64", "TYPE_INT64", 8 },
    [LOOM_DT_FP16] = { "FP16", "TYPE_FP16", 2 },
    [LOOM_DT_FP32] = { "FP32", "TYPE_FP32", 4 },
    [LOOM_DT_FP64] = { "FP64", "TYPE_FP64", 8 },
    [LOOM_DT_BYTES] = { "BYTES", "TYPE_STRING", 0 },
};

static bool valid(enum loom_dtype t)
{
    return (unsigned)t < LOOM_DT__COUNT;
}

const char *loom_dtype_name(enum loom_dtype t)
{
    return valid(t) ? dtypes[t].name : "INVALID";
}

const char *loom_dtype_config_name(enum loom_dtype t)
{
    return valid(t) ? dtypes[t].config : "TYPE_INVALID";
}

enum loom_dtype loom_dtype_parse(struct loom_str name)
{
    for (int t = 1; t < LOOM_DT__COUNT; t++)
        if (loom_str_eq_cstr(name, dtypes[t].name))
            return (enum loom_dtype)t;
    return LOOM_DT_INVALID;
}

enum loom_dtype loom_dtype_parse_config(struct loom_str name)
{
    for (int t = 1; t < LOOM_DT__COUNT; t++)
        if (loom_str_eq_cstr(name, dtypes[t].config))
            return (enum loom_dtype)t;
    if (loom_str_eq_cstr(name, "TYPE_BYTES"))
        return LOOM_DT_BYTES;
    return LOOM_DT_INVALID;
}

size_t loom_dtype_size(enum loom_dtype t)
{
    return valid(t) ? dtypes[t].size : 0;
}

bool loom_dtype_is_numeric(enum loom_dtype t)
{
    return t > LOOM_DT_INVALID && t < LOOM_DT_BYTES;
}

bool loom_dtype_is_integer(enum loom_dtype t)
{
    return t >= LOOM_DT_BOOL && t <= LOOM_DT_INT64;
}

bool loom_dtype_is_float(enum loom_dtype t)
{
    return t == LOOM_DT_FP16 || t == LOOM_DT_FP32 || t == LOOM_DT_FP64;
}

bool loom_dtype_fits_i64(enum loom_dtype t, int64_t v)
{
    switch (t) {
    case LOOM_DT_BOOL:
        return v == 0 || v == 1;
    case LOOM_DT_UINT8:
        return v >= 0 && v <= UINT8_MAX;
    case LOOM_DT_UINT16:
        return v >= 0 && v <= UINT16_MAX;
    case LOOM_DT_UINT32:
        return v >= 0 && v <= (int64_t)UINT32_MAX;
    case LOOM_DT_UINT64:
        return v >= 0;
    case LOOM_DT_INT8:
        return v >= INT8_MIN && v <= INT8_MAX;
    case LOOM_DT_INT16:
        return v >= INT16_MIN && v <= INT16_MAX;
    case LOOM_DT_INT32:
        return v >= INT32_MIN && v <= INT32_MAX;
    case LOOM_DT_INT64:
        return true;
    default:
        return loom_dtype_is_float(t);
    }
}

bool loom_dtype_fits_u64(enum loom_dtype t, uint64_t v)
{
    if (v <= (uint64_t)INT64_MAX)
        return loom_dtype_fits_i64(t, (int64_t)v);
    return t == LOOM_DT_UINT64 || loom_dtype_is_float(t);
}

float loom_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                mant <<= 1;
            } while (!(mant & 0x400));
            bits = sign | (uint32_t)(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | mant << 13;
    } else {
        bits = sign | (exp + 127 - 15) << 23 | mant << 13;
    }
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

uint16_t loom_f32_to_f16(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof(bits));
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000);
    uint32_t exp = (bits >> 23) & 0xff, mant = bits & 0x7fffff;
    if (exp == 0xff)
        return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31)
        return (uint16_t)(sign | 0x7c00);
    if (e <= 0) {
        if (e < -10)
            return sign;
        mant |= 0x800000;
        int shift = 14 - e;
        uint32_t half = mant >> shift, rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1)))
            half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = (uint32_t)e << 10 | mant >> 13, rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1)))
        half++; /* may carry into the exponent, correctly up to infinity */
    return (uint16_t)(sign | half);
}

/* Unaligned little-endian loads (x86-64 and arm64 are little-endian; memcpy compiles to a
 * plain load). */
#define DEFINE_LOAD(name, T)                     \
    static inline T name(const unsigned char *p) \
    {                                            \
        T v;                                     \
        memcpy(&v, p, sizeof(v));                \
        return v;                                \
    }
DEFINE_LOAD(ld_u16, uint16_t)
DEFINE_LOAD(ld_u32, uint32_t)
DEFINE_LOAD(ld_u64, uint64_t)
DEFINE_LOAD(ld_i16, int16_t)
DEFINE_LOAD(ld_i32, int32_t)
DEFINE_LOAD(ld_i64, int64_t)
DEFINE_LOAD(ld_f32, float)
DEFINE_LOAD(ld_f64, double)

void loom_tensor_to_f32(enum loom_dtype t, const void *src, size_t n, float *dst)
{
    const unsigned char *p = src;
    size_t sz = loom_dtype_size(t);
    for (size_t i = 0; i < n; i++, p += sz) {
        switch (t) {
        case LOOM_DT_BOOL:
            dst[i] = *p ? 1.0f : 0.0f;
            break;
        case LOOM_DT_UINT8:
            dst[i] = (float)*p;
            break;
        case LOOM_DT_UINT16:
            dst[i] = (float)ld_u16(p);
            break;
        case LOOM_DT_UINT32:
            dst[i] = (float)ld_u32(p);
            break;
        case LOOM_DT_UINT64:
            dst[i] = (float)ld_u64(p);
            break;
        case LOOM_DT_INT8:
            dst[i] = (float)(int8_t)*p;
            break;
        case LOOM_DT_INT16:
            dst[i] = (float)ld_i16(p);
            break;
        case LOOM_DT_INT32:
            dst[i] = (float)ld_i32(p);
            break;
        case LOOM_DT_INT64:
            dst[i] = (float)ld_i64(p);
            break;
        case LOOM_DT_FP16:
            dst[i] = loom_f16_to_f32(ld_u16(p));
            break;
        case LOOM_DT_FP32:
            dst[i] = ld_f32(p);
            break;
        case LOOM_DT_FP64:
            dst[i] = (float)ld_f64(p);
            break;
        default:
            dst[i] = NAN;
            break;
        }
    }
}

static int64_t sat_i64(float v, int64_t lo, int64_t hi)
{
    if (isnan(v))
        return 0;
    if (v <= (float)lo)
        return lo;
    if (v >= (float)hi)
        return hi;
    return (int64_t)v;
}

#define STORE(T, p, v)                \
    do {                              \
        T v_ = (T)(v);                \
        memcpy((p), &v_, sizeof(v_)); \
    } while (0)

void loom_tensor_from_f32(enum loom_dtype t, const float *src, size_t n, void *dst)
{
    unsigned char *p = dst;
    size_t sz = loom_dtype_size(t);
    for (size_t i = 0; i < n; i++, p += sz) {
        float v = src[i];
        switch (t) {
        case LOOM_DT_BOOL:
            *p = v != 0 && !isnan(v);
            break;
        case LOOM_DT_UINT8:
            *p = (uint8_t)sat_i64(v, 0, UINT8_MAX);
            break;
        case LOOM_DT_UINT16:
            STORE(uint16_t, p, sat_i64(v, 0, UINT16_MAX));
            break;
        case LOOM_DT_UINT32:
            STORE(uint32_t, p, sat_i64(v, 0, UINT32_MAX));
            break;
        case LOOM_DT_UINT64:
            STORE(uint64_t, p, sat_i64(v, 0, INT64_MAX));
            break;
        case LOOM_DT_INT8:
            *p = (unsigned char)(int8_t)sat_i64(v, INT8_MIN, INT8_MAX);
            break;
        case LOOM_DT_INT16:
            STORE(int16_t, p, sat_i64(v, INT16_MIN, INT16_MAX));
            break;
        case LOOM_DT_INT32:
            STORE(int32_t, p, sat_i64(v, INT32_MIN, INT32_MAX));
            break;
        case LOOM_DT_INT64:
            STORE(int64_t, p, sat_i64(v, INT64_MIN, INT64_MAX));
            break;
        case LOOM_DT_FP16:
            STORE(uint16_t, p, loom_f32_to_f16(v));
            break;
        case LOOM_DT_FP32:
            STORE(float, p, v);
            break;
        case LOOM_DT_FP64:
            STORE(double, p, (double)v);
            break;
        default:
            break;
        }
    }
}

loom_err loom_shape_elements(const int64_t *dims, size_t n, uint64_t max, uint64_t *out)
{
    uint64_t total = 1;
    for (size_t i = 0; i < n; i++) {
        if (dims[i] < 0)
            return LOOM_EINVAL;
        if (__builtin_mul_overflow(total, (uint64_t)dims[i], &total) || total > max) {
            /* A zero later on would make it small again, but such a shape is still absurd. */
            return LOOM_ETOOBIG;
        }
    }
    *out = total;
    return LOOM_OK;
}
