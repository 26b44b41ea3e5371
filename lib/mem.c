/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Allocation that aborts on exhaustion, and the arena. An arena is a list of chunks served by
 * bumping a pointer; allocations larger than a quarter chunk get a chunk of their own so they
 * do not waste the current one. Reset keeps the first chunk, so a connection that reuses its
 * arena per request allocates nothing in the steady state.
 */
#include <loom/mem.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct loom__arena_chunk {
    struct loom__arena_chunk *next;
    size_t size; /* usable bytes after the header */
    _Alignas(LOOM_ARENA_ALIGN) char data[];
};

struct loom__arena_cleanup {
    struct loom__arena_cleanup *next;
    loom_cleanup_fn fn;
    void *arg;
};

static void oom(size_t size)
{
    fprintf(stderr, "{\"level\":\"fatal\",\"msg\":\"out of memory allocating %zu bytes\"}\n", size);
    abort();
}

void *loom_malloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (!p)
        oom(size);
    return p;
}

void *loom_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        oom(n * size);
    return p;
}

void *loom_realloc(void *p, size_t size)
{
    void *q = realloc(p, size ? size : 1);
    if (!q)
        oom(size);
    return q;
}

char *loom_strdup(const char *s)
{
    return loom_strndup(s, strlen(s));
}

char *loom_strndup(const char *s, size_t n)
{
    char *p = loom_malloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

size_t loom_mul_size(size_t a, size_t b)
{
    size_t r;
    if (__builtin_mul_overflow(a, b, &r)) {
        fprintf(stderr, "{\"level\":\"fatal\",\"msg\":\"size overflow %zu * %zu\"}\n", a, b);
        abort();
    }
    return r;
}

void loom_arena_init(struct loom_arena *a, size_t chunk_size)
{
    memset(a, 0, sizeof(*a));
    a->chunk_size = chunk_size ? chunk_size : 4096;
}

static struct loom__arena_chunk *chunk_new(size_t size)
{
    struct loom__arena_chunk *c = loom_malloc(sizeof(*c) + size);
    c->size = size;
    c->next = NULL;
    return c;
}

static size_t align_up(size_t n)
{
    return (n + LOOM_ARENA_ALIGN - 1) & ~(size_t)(LOOM_ARENA_ALIGN - 1);
}

void *loom_arena_alloc(struct loom_arena *a, size_t size)
{
    size = align_up(size ? size : 1);
    a->bytes += size;
    if ((size_t)(a->end - a->pos) >= size) {
        void *p = a->pos;
        a->pos += size;
        return p;
    }
    if (size > a->chunk_size / 4) {
        struct loom__arena_chunk *c = chunk_new(size);
        c->next = a->large;
        a->large = c;
        return c->data;
    }
    struct loom__arena_chunk *c = chunk_new(a->chunk_size);
    c->next = a->chunks;
    a->chunks = c;
    a->pos = c->data + size;
    a->end = c->data + c->size;
    return c->data;
}

void *loom_arena_zalloc(struct loom_arena *a, size_t size)
{
    void *p = loom_arena_alloc(a, size);
    memset(p, 0, size);
    return p;
}

void *loom_arena_memdup(struct loom_arena *a, const void *p, size_t n)
{
    void *q = loom_arena_alloc(a, n);
    if (n)
        memcpy(q, p, n);
    return q;
}

char *loom_arena_strndup(struct loom_arena *a, const char *s, size_t n)
{
    char *p = loom_arena_alloc(a, n + 1);
    if (n)
        memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

void loom_arena_add_cleanup(struct loom_arena *a, loom_cleanup_fn fn, void *arg)
{
    struct loom__arena_cleanup *c = loom_arena_alloc(a, sizeof(*c));
    c->fn = fn;
    c->arg = arg;
    c->next = a->cleanups;
    a->cleanups = c;
}

static void run_cleanups(struct loom_arena *a)
{
    /* A cleanup may register another one (it lives in this arena); loop until none is left. */
    while (a->cleanups) {
        struct loom__arena_cleanup *c = a->cleanups;
        a->cleanups = c->next;
        c->fn(c->arg);
    }
}

static void free_chunks(struct loom__arena_chunk *c, struct loom__arena_chunk *keep)
{
    while (c && c != keep) {
        struct loom__arena_chunk *next = c->next;
        free(c);
        c = next;
    }
}

void loom_arena_reset(struct loom_arena *a)
{
    run_cleanups(a);
    free_chunks(a->large, NULL);
    a->large = NULL;
    a->bytes = 0;
    if (!a->chunks)
        return;
    struct loom__arena_chunk *first = a->chunks;
    while (first->next)
        first = first->next;
    free_chunks(a->chunks, first);
    a->chunks = first;
    a->pos = first->data;
    a->end = first->data + first->size;
}

void loom_arena_release(struct loom_arena *a)
{
    run_cleanups(a);
    free_chunks(a->large, NULL);
    free_chunks(a->chunks, NULL);
    size_t chunk_size = a->chunk_size;
    loom_arena_init(a, chunk_size);
}
