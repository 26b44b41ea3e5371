/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The core of libloom in one include: errors, memory (allocation and arenas), strings (slices
 * and bounded buffers) and clocks. Every other module builds on these.
 */
#ifndef LOOM_CORE_H
#define LOOM_CORE_H

#include <loom/clock.h>
#include <loom/err.h>
#include <loom/mem.h>
#include <loom/str.h>

#define LOOM_VERSION "0.1.0"

#define LOOM_ARRAY_SIZE(a)              (sizeof(a) / sizeof((a)[0]))
#define LOOM_MIN(a, b)                  ((a) < (b) ? (a) : (b))
#define LOOM_MAX(a, b)                  ((a) > (b) ? (a) : (b))
#define LOOM_CONTAINER_OF(p, T, member) ((T *)((char *)(p)-offsetof(T, member)))
#define LOOM_LIKELY(x)                  __builtin_expect(!!(x), 1)
#define LOOM_UNLIKELY(x)                __builtin_expect(!!(x), 0)
#define LOOM_UNUSED(x)                  ((void)(x))

#endif
