/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Tensors: the datatypes of the KServe v2 protocol (BOOL, UINT8..UINT64, INT8..INT64, FP16,
 * FP32, FP64, BYTES), their names in the protocol ("FP32") and in Triton model configurations
 * ("TYPE_FP32"), element sizes, and conversion of little-endian raw elements (the binary tensor
 * extension's wire format) to float32, which is what loom's model runtimes compute in.
 */
#ifndef LOOM_TENSOR_H
#define LOOM_TENSOR_H

#include <loom/core.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum loom_dtype {
    LOOM_DT_INVALID = 0,
    LOOM_DT_BOOL,
    LOOM_DT_UINT8,
    LOOM_DT_UINT16,
    LOOM_DT_UINT32,
    LOOM_DT_UINT64,
    LOOM_DT_INT8,
    LOOM_DT_INT16,
    LOOM_DT_INT32,
    LOOM_DT_INT64,
    LOOM_DT_FP16,
    LOOM_DT_FP32,
    LOOM_DT_FP64,
    LOOM_DT_BYTES,
    LOOM_DT__COUNT
};

#define LOOM_TENSOR_MAX_DIMS 8

/* "FP32"; "INVALID" for LOOM_DT_INVALID. */
const char *loom_dtype_name(enum loom_dtype t);
/* "TYPE_FP32" (BYTES is "TYPE_STRING" in Triton configurations). */
const char *loom_dtype_config_name(enum loom_dtype t);
/* From "FP32"; LOOM_DT_INVALID if unknown. */
enum loom_dtype loom_dtype_parse(struct loom_str name);
/* From "TYPE_FP32" (or "TYPE_STRING" for BYTES); LOOM_DT_INVALID if unknown. */
enum loom_dtype loom_dtype_parse_config(struct loom_str name);
/* Bytes per element; 0 for BYTES (variable) and INVALID. */
size_t loom_dtype_size(enum loom_dtype t);
bool loom_dtype_is_numeric(enum loom_dtype t); /* everything but BYTES (BOOL counts as 0/1) */
bool loom_dtype_is_integer(enum loom_dtype t); /* BOOL, UINTn, INTn */
bool loom_dtype_is_float(enum loom_dtype t);   /* FP16, FP32, FP64 */

/* Does `v` fit the integer type `t` exactly? (For JSON integers: range checks.) */
bool loom_dtype_fits_i64(enum loom_dtype t, int64_t v);
bool loom_dtype_fits_u64(enum loom_dtype t, uint64_t v);

/* Convert `n` little-endian elements of numeric type `t` at `src` (no alignment needed) to
 * float32. */
void loom_tensor_to_f32(enum loom_dtype t, const void *src, size_t n, float *dst);

/* Write float32 values as `n` little-endian elements of numeric type `t` (integers are rounded
 * toward zero and saturated; BOOL is v != 0). */
void loom_tensor_from_f32(enum loom_dtype t, const float *src, size_t n, void *dst);

/* IEEE 754 half <-> single precision (round to nearest even). */
float loom_f16_to_f32(uint16_t h);
uint16_t loom_f32_to_f16(float f);

/* Product of `n` dims into *out: LOOM_EINVAL for a negative dim, LOOM_ETOOBIG past `max`. */
loom_err loom_shape_elements(const int64_t *dims, size_t n, uint64_t max, uint64_t *out);

#endif
