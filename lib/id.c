/* SPDX-License-Identifier: Apache-2.0 */
/*
 * UUIDv7 and kernel randomness. Within one millisecond, the 12-bit rand_a field counts up from
 * a random start (RFC 9562's "method 1" monotonic counter), so ids of one process sort in
 * creation order; a process-wide lock keeps that true across threads.
 */
#include <loom/id.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>

void loom_random_bytes(void *out, size_t n)
{
    unsigned char *p = out;
    while (n) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "{\"level\":\"fatal\",\"msg\":\"getrandom failed\"}\n");
            abort();
        }
        p += r;
        n -= (size_t)r;
    }
}

static pthread_mutex_t uuid_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t last_ms;
static uint16_t counter;

void loom_uuid7(char out[LOOM_UUID_LEN + 1])
{
    uint8_t b[16];
    loom_random_bytes(b, sizeof(b));
    uint64_t ms = (uint64_t)(loom_wall_ns() / 1000000);
    pthread_mutex_lock(&uuid_mu);
    if (ms <= last_ms) {
        ms = last_ms;
        if (++counter > 0xfff) { /* 4096 ids in one millisecond: borrow the next one */
            ms = ++last_ms;
            counter = (uint16_t)((b[6] << 8 | b[7]) & 0x7ff);
        }
    } else {
        last_ms = ms;
        counter = (uint16_t)((b[6] << 8 | b[7]) & 0x7ff); /* room to count up */
    }
    uint16_t seq = counter;
    pthread_mutex_unlock(&uuid_mu);
    for (int i = 0; i < 6; i++)
        b[i] = (uint8_t)(ms >> (40 - 8 * i));
    b[6] = (uint8_t)(0x70 | (seq >> 8));
    b[7] = (uint8_t)seq;
    b[8] = (uint8_t)(0x80 | (b[8] & 0x3f)); /* the RFC 4122 variant */
    static const char digits[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = digits[b[i] >> 4];
        out[o++] = digits[b[i] & 15];
    }
    out[o] = '\0';
}

bool loom_uuid_valid(struct loom_str s)
{
    if (s.len != LOOM_UUID_LEN)
        return false;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.ptr[i];
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? c != '-' : !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return true;
}
