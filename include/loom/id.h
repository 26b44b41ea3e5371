/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Identifiers: UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits from the
 * kernel's CSPRNG. They sort by creation time, which makes them good primary keys and cursors,
 * and are unguessable enough to name things a client must not enumerate.
 */
#ifndef LOOM_ID_H
#define LOOM_ID_H

#include <loom/core.h>

#include <stdbool.h>

#define LOOM_UUID_LEN 36 /* "0190c2a1-6b2e-7cde-9f01-23456789abcd" */

/* A new UUIDv7 in out (LOOM_UUID_LEN + 1 bytes, NUL-terminated). Thread-safe; ids made by one
 * process in the same millisecond still sort in creation order. */
void loom_uuid7(char out[LOOM_UUID_LEN + 1]);

/* Is s a UUID in canonical lowercase form? */
bool loom_uuid_valid(struct loom_str s);

/* n random bytes from the kernel (getrandom); aborts if it cannot. For secrets and ids. */
void loom_random_bytes(void *out, size_t n);

#endif
