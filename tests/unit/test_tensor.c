/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for tensor datatypes: names, sizes, ranges, conversions, half floats, shapes. */
#include "check.h"

#include <loom/tensor.h>

#include <float.h>
#include <math.h>

static void test_names(void)
{
    for (int t = 1; t < LOOM_DT__COUNT; t++) {
        const char *name = loom_dtype_name((enum loom_dtype)t);
        CHECK_INT(loom_dtype_parse(loom_str_cstr(name)), t);
        CHECK_INT(
            loom_dtype_parse_config(loom_str_cstr(loom_dtype_config_name((enum loom_dtype)t))), t);
    }
    CHECK_STR(loom_dtype_config_name(LOOM_DT_BYTES), "TYPE_STRING");
    CHECK_INT(loom_dtype_parse_config(LOOM_STR("TYPE_BYTES")), LOOM_DT_BYTES);
    CHECK_INT(loom_dtype_parse(LOOM_STR("fp32")), LOOM_DT_INVALID); /* case matters */
    CHECK_INT(loom_dtype_parse(LOOM_STR("FP33")), LOOM_DT_INVALID);
    CHECK_INT(loom_dtype_parse(LOOM_STR("INVALID")), LOOM_DT_INVALID);
    CHECK_STR(loom_dtype_name((enum loom_dtype)99), "INVALID");
    CHECK_UINT(loom_dtype_size(LOOM_DT_FP16), 2);
    CHECK_UINT(loom_dtype_size(LOOM_DT_UINT64), 8);
    CHECK_UINT(loom_dtype_size(LOOM_DT_BYTES), 0);
    CHECK(loom_dtype_is_numeric(LOOM_DT_BOOL) && !loom_dtype_is_numeric(LOOM_DT_BYTES));
    CHECK(loom_dtype_is_integer(LOOM_DT_INT8) && !loom_dtype_is_integer(LOOM_DT_FP32));
    CHECK(loom_dtype_is_float(LOOM_DT_FP16) && !loom_dtype_is_float(LOOM_DT_UINT8));
}

static void test_ranges(void)
{
    CHECK(loom_dtype_fits_i64(LOOM_DT_UINT8, 255) && !loom_dtype_fits_i64(LOOM_DT_UINT8, 256));
    CHECK(!loom_dtype_fits_i64(LOOM_DT_UINT8, -1));
    CHECK(loom_dtype_fits_i64(LOOM_DT_INT8, -128) && !loom_dtype_fits_i64(LOOM_DT_INT8, -129));
    CHECK(loom_dtype_fits_i64(LOOM_DT_BOOL, 1) && !loom_dtype_fits_i64(LOOM_DT_BOOL, 2));
    CHECK(loom_dtype_fits_i64(LOOM_DT_INT32, INT32_MIN) &&
          !loom_dtype_fits_i64(LOOM_DT_INT32, (int64_t)INT32_MAX + 1));
    CHECK(loom_dtype_fits_u64(LOOM_DT_UINT64, UINT64_MAX));
    CHECK(!loom_dtype_fits_u64(LOOM_DT_INT64, (uint64_t)INT64_MAX + 1));
    CHECK(loom_dtype_fits_u64(LOOM_DT_FP32, UINT64_MAX));
}

static void test_half(void)
{
    static const struct {
        uint16_t h;
        float f;
    } cases[] = {
        { 0x0000, 0.0f },
        { 0x3c00, 1.0f },
        { 0xc000, -2.0f },
        { 0x7bff, 65504.0f },
        { 0x0400, 6.103515625e-05f },
        { 0x0001, 5.960464477539063e-08f },
        { 0x3555, 0.33325195f },
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(cases); i++) {
        CHECK(loom_f16_to_f32(cases[i].h) == cases[i].f);
        CHECK_UINT(loom_f32_to_f16(cases[i].f), cases[i].h);
    }
    CHECK(isinf(loom_f16_to_f32(0x7c00)) && isnan(loom_f16_to_f32(0x7e00)));
    CHECK_UINT(loom_f32_to_f16(1e9f), 0x7c00);                     /* overflow to infinity */
    CHECK_UINT(loom_f32_to_f16(1e-10f), 0);                        /* underflow to zero */
    CHECK_UINT(loom_f32_to_f16(1.0009765625f / 2 + 0.5f), 0x3c00); /* ties to even */
    /* Every half converts to float and back unchanged. */
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = loom_f16_to_f32((uint16_t)h);
        if (isnan(f))
            continue;
        bad += loom_f32_to_f16(f) != h;
    }
    CHECK_INT(bad, 0);
}

static void test_conversions(void)
{
    unsigned char raw[64];
    float out[8], in[8] = { -3.7f, 0.0f, 1.5f, 300.0f, -1e10f, NAN, 2.0f, 7.9f };
    int16_t i16[3] = { -5, 0, 32767 };
    memcpy(raw, i16, sizeof(i16));
    loom_tensor_to_f32(LOOM_DT_INT16, raw, 3, out);
    CHECK(out[0] == -5 && out[1] == 0 && out[2] == 32767);
    double f64[2] = { 0.1, -1e300 };
    memcpy(raw + 1, f64, sizeof(f64)); /* unaligned */
    loom_tensor_to_f32(LOOM_DT_FP64, raw + 1, 2, out);
    CHECK(out[0] == 0.1f && isinf(out[1]) && out[1] < 0);
    uint8_t b[3] = { 0, 1, 7 };
    loom_tensor_to_f32(LOOM_DT_BOOL, b, 3, out);
    CHECK(out[0] == 0 && out[1] == 1 && out[2] == 1);
    /* Back to integers: toward zero and saturated; NaN is 0. */
    loom_tensor_from_f32(LOOM_DT_UINT8, in, 8, raw);
    CHECK(raw[0] == 0 && raw[2] == 1 && raw[3] == 255 && raw[4] == 0 && raw[5] == 0 && raw[7] == 7);
    int32_t i32[8];
    loom_tensor_from_f32(LOOM_DT_INT32, in, 8, i32);
    CHECK(i32[0] == -3 && i32[3] == 300 && i32[4] == INT32_MIN && i32[5] == 0);
    loom_tensor_from_f32(LOOM_DT_BOOL, in, 8, raw);
    CHECK(raw[0] == 1 && raw[1] == 0 && raw[5] == 0);
    float f32[8];
    loom_tensor_from_f32(LOOM_DT_FP32, in, 8, f32);
    CHECK(memcmp(f32, in, sizeof(in)) == 0);
    uint16_t h[2];
    loom_tensor_from_f32(LOOM_DT_FP16, in + 2, 2, h);
    CHECK(h[0] == 0x3e00 && h[1] == 0x5cb0);
}

static void test_shapes(void)
{
    uint64_t n;
    int64_t a[] = { 2, 3, 4 };
    CHECK_INT(loom_shape_elements(a, 3, 100, &n), LOOM_OK);
    CHECK_UINT(n, 24);
    CHECK_INT(loom_shape_elements(a, 0, 100, &n), LOOM_OK);
    CHECK_UINT(n, 1); /* a scalar */
    CHECK_INT(loom_shape_elements(a, 3, 23, &n), LOOM_ETOOBIG);
    int64_t neg[] = { 2, -1 };
    CHECK_INT(loom_shape_elements(neg, 2, 100, &n), LOOM_EINVAL);
    int64_t huge[] = { INT64_MAX, INT64_MAX, 0 };
    CHECK_INT(loom_shape_elements(huge, 3, UINT64_MAX, &n), LOOM_ETOOBIG);
    int64_t zero[] = { 0, 30 };
    CHECK_INT(loom_shape_elements(zero, 2, 100, &n), LOOM_OK);
    CHECK_UINT(n, 0);
}

int main(void)
{
    RUN(test_names);
    RUN(test_ranges);
    RUN(test_half);
    RUN(test_conversions);
    RUN(test_shapes);
    return check_report();
}
