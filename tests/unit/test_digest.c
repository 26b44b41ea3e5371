/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for SHA-256 (FIPS 180-2 vectors, incremental feeding), hex, UUIDv7 and randomness. */
#include "check.h"

#include <loom/digest.h>
#include <loom/id.h>

static void test_sha256(void)
{
    uint8_t d[LOOM_SHA256_LEN];
    char hex[LOOM_SHA256_HEX];
    loom_sha256("abc", 3, d);
    loom_hex(d, sizeof(d), hex);
    CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    loom_sha256("", 0, d);
    loom_hex(d, sizeof(d), hex);
    CHECK_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    /* A million 'a' fed in uneven pieces equals the one-shot vector. */
    struct loom_sha256 h;
    loom_sha256_init(&h);
    char block[997];
    memset(block, 'a', sizeof(block));
    size_t left = 1000000;
    while (left) {
        size_t n = left < sizeof(block) ? left : sizeof(block);
        loom_sha256_update(&h, block, n);
        left -= n;
    }
    loom_sha256_final(&h, d);
    loom_hex(d, sizeof(d), hex);
    CHECK_STR(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    CHECK(loom_sha256_hex_valid(loom_str_cstr(hex)));
    CHECK(!loom_sha256_hex_valid(
        LOOM_STR("CDC76E5C9914FB9281A1C7E284D73E67F1809A48A497200E046D39CCC7112CD0")));
    CHECK(!loom_sha256_hex_valid(LOOM_STR("cdc76e")));
    loom_sha256_init(&h);
    loom_sha256_abandon(&h); /* no leak */
}

static void test_uuid7(void)
{
    char prev[LOOM_UUID_LEN + 1] = "", id[LOOM_UUID_LEN + 1];
    for (int i = 0; i < 20000; i++) {
        loom_uuid7(id);
        CHECK(loom_uuid_valid(loom_str_cstr(id)));
        if (i % 5000 == 0)
            CHECK(id[14] == '7' && strchr("89ab", id[19]) != NULL); /* version and variant */
        if (strcmp(prev, id) >= 0) {
            CHECK_STR(prev, "(ids must increase)");
            break;
        }
        memcpy(prev, id, sizeof(id));
    }
    /* The timestamp is now, in milliseconds. */
    uint64_t ms = 0;
    for (int i = 0; i < 13; i++)
        if (id[i] != '-')
            ms = ms * 16 + (uint64_t)(id[i] <= '9' ? id[i] - '0' : id[i] - 'a' + 10);
    uint64_t now = (uint64_t)(loom_wall_ns() / 1000000);
    CHECK(ms <= now + 10 && ms + 60000 > now);
    CHECK(!loom_uuid_valid(LOOM_STR("0190c2a1-6b2e-7cde-9f01-23456789abcZ")));
    CHECK(!loom_uuid_valid(LOOM_STR("0190c2a16b2e7cde9f0123456789abcd")));
    uint8_t a[32] = { 0 }, b[32] = { 0 };
    loom_random_bytes(a, sizeof(a));
    loom_random_bytes(b, sizeof(b));
    CHECK(memcmp(a, b, sizeof(a)) != 0);
}

int main(void)
{
    RUN(test_sha256);
    RUN(test_uuid7);
    return check_report();
}
