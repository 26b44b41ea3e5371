/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Time: a monotonic clock for deadlines and durations, a wall clock for logs and events, and
 * the two text forms loom writes (RFC 3339 with microseconds, and the HTTP IMF-fixdate).
 * Durations are nanoseconds in uint64_t everywhere inside loom.
 */
#ifndef LOOM_CLOCK_H
#define LOOM_CLOCK_H

#include <stddef.h>
#include <stdint.h>

#define LOOM_NS_PER_US  1000ull
#define LOOM_NS_PER_MS  1000000ull
#define LOOM_NS_PER_SEC 1000000000ull

/* CLOCK_MONOTONIC in nanoseconds: never goes back, unrelated to the calendar. */
uint64_t loom_now_ns(void);

/* CLOCK_REALTIME in nanoseconds since the Unix epoch. */
int64_t loom_wall_ns(void);

/* "2026-11-24T19:10:00.123456Z" into out (>= 28 bytes, NUL-terminated); returns the length. */
size_t loom_time_rfc3339(int64_t wall_ns, char *out);

/* "Tue, 24 Nov 2026 19:10:00 GMT" into out (>= 30 bytes, NUL-terminated); returns 29. */
size_t loom_time_http_date(int64_t unix_sec, char *out);

#endif
