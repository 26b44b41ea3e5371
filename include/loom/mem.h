/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Memory: allocation that aborts on exhaustion (a server's policy: inputs are capped instead,
 * so running out of memory is a bug or an attack we cannot recover from), and arenas. An arena
 * serves many small allocations from a few chunks and frees them all in one step; each request
 * owns one. Non-memory resources (a file, a reference) hang a cleanup on the arena and are
 * released with it, last registered first, as nginx's pool cleanups are.
 */
#ifndef LOOM_MEM_H
#define LOOM_MEM_H

#include <stdbool.h>
#include <stddef.h>

/* malloc/calloc/realloc/strdup that never return NULL: they log and abort on exhaustion.
 * Free the results with free(). */
void *loom_malloc(size_t size) __attribute__((malloc, alloc_size(1)));
void *loom_calloc(size_t n, size_t size) __attribute__((malloc, alloc_size(1, 2)));
void *loom_realloc(void *p, size_t size) __attribute__((alloc_size(2)));
char *loom_strdup(const char *s) __attribute__((malloc));
char *loom_strndup(const char *s, size_t n) __attribute__((malloc));

/* Allocate one zeroed T. */
#define loom_new(T) ((T *)loom_calloc(1, sizeof(T)))

/* Multiply with overflow check; aborts on overflow (sizes come from capped inputs). */
size_t loom_mul_size(size_t a, size_t b);

#define LOOM_ARENA_ALIGN 16

struct loom__arena_chunk;
struct loom__arena_cleanup;

struct loom_arena {
    char *pos, *end;                      /* free space in the current chunk */
    struct loom__arena_chunk *chunks;     /* newest first; the last is the first chunk */
    struct loom__arena_chunk *large;      /* allocations bigger than a quarter chunk */
    struct loom__arena_cleanup *cleanups; /* newest first */
    size_t chunk_size;
    size_t bytes; /* bytes handed out since the last reset, for limits and tests */
};

/* Initialise an empty arena whose chunks are `chunk_size` bytes (0: 4 KiB). No allocation
 * happens until the first loom_arena_alloc. */
void loom_arena_init(struct loom_arena *a, size_t chunk_size);

/* `size` bytes aligned to LOOM_ARENA_ALIGN, valid until the next reset or release. */
void *loom_arena_alloc(struct loom_arena *a, size_t size) __attribute__((malloc));
void *loom_arena_zalloc(struct loom_arena *a, size_t size) __attribute__((malloc));
char *loom_arena_strndup(struct loom_arena *a, const char *s, size_t n);
void *loom_arena_memdup(struct loom_arena *a, const void *p, size_t n);

#define loom_arena_new(a, T) ((T *)loom_arena_zalloc((a), sizeof(T)))

typedef void (*loom_cleanup_fn)(void *arg);

/* Run fn(arg) when the arena is next reset or released; cleanups run newest first. */
void loom_arena_add_cleanup(struct loom_arena *a, loom_cleanup_fn fn, void *arg);

/* Run the cleanups and free everything but the first chunk, which is kept for reuse: the
 * steady state of a keep-alive connection allocates nothing. */
void loom_arena_reset(struct loom_arena *a);

/* Run the cleanups and free all memory; the arena may be initialised again. */
void loom_arena_release(struct loom_arena *a);

#endif
