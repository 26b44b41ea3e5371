/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests for the json module: the tokenizer's grammar, limits and error messages, UTF-8 and
 * escape validation, navigation, string and number decoding (checked bit for bit against
 * strtod/strtof), the writer, and write-then-parse round trips. Inputs that must fail are parsed
 * from exactly-sized heap copies so that AddressSanitizer reports any read past the end.
 */
#include "check.h"

#include <loom/core.h>
#include <loom/json.h>

#include <float.h>
#include <stdbool.h>
#include <stdint.h>

static struct loom_arena arena;

/* A one-row KServe v2 infer request with 30 FP32 values. */
static const char infer_req[] =
    "{\"id\":\"1\",\"inputs\":[{\"name\":\"input__0\",\"shape\":[1,30],\"datatype\":\"FP32\","
    "\"data\":[[1.0,2.5e-3,-0.1234567,3.14159265,0,12,-7.5,1e-5,0.000123,99.99,"
    "0.5,1.25,-2.0,4.75e2,0.333333,6.02e23,-1.6e-19,7,8.125,9.0,"
    "10.5,-11.25,0.1,0.2,0.3,1234.5678,-0.0,2e10,3.5,42.0]]}]}";

/* Parse n bytes from an exactly-sized heap copy; the copy is freed before returning, so only
 * the code, the message and the token count survive. */
static loom_err parse_exact(const char *s, size_t n, const struct loom_json_limits *lim,
                            struct loom_error *e, int *ntoks)
{
    char *copy = n ? malloc(n) : NULL;
    if (n)
        memcpy(copy, s, n);
    struct loom_json_doc doc;
    loom_arena_reset(&arena);
    loom_err err = loom_json_parse(copy, n, lim, &arena, &doc, e);
    if (!err && ntoks)
        *ntoks = doc.ntoks;
    free(copy);
    return err;
}

static loom_err parse_cstr(const char *s, struct loom_json_doc *doc)
{
    struct loom_error e = { 0 };
    loom_err err = loom_json_parse(s, strlen(s), NULL, &arena, doc, &e);
    if (err)
        fprintf(stderr, "  parse(%s): %s\n", s, e.msg);
    return err;
}

static void test_tokens(void)
{
    struct loom_json_doc d;
    loom_arena_reset(&arena);
    CHECK_INT(parse_cstr(infer_req, &d), LOOM_OK);
    CHECK_INT(d.ntoks, 17 + 30);
    CHECK_INT(d.toks[0].type, LOOM_JSON_OBJECT);
    CHECK_INT(d.toks[0].size, 2);
    CHECK_INT(d.toks[0].next, d.ntoks);
    CHECK_INT(d.toks[0].start, 0);
    CHECK_UINT(d.toks[0].end, strlen(infer_req));
    CHECK_INT(d.toks[1].type, LOOM_JSON_STRING);
    CHECK_SLICE(loom_json_slice(&d, 1), "id");
    CHECK_INT(d.toks[1].start, 2);
    CHECK_INT(d.toks[1].next, 2);
    CHECK_SLICE(loom_json_slice(&d, 2), "1");
    CHECK_SLICE(loom_json_slice(&d, 3), "inputs");
    CHECK(loom_json_is_array(&d, 4));
    CHECK_INT(loom_json_size(&d, 4), 1);
    CHECK_INT(loom_json_skip(&d, 4), d.ntoks);
    CHECK(loom_json_is_object(&d, 5));
    CHECK_INT(loom_json_size(&d, 5), 4);
    int shape = loom_json_obj_get(&d, 5, "shape");
    CHECK_INT(shape, 9);
    CHECK_SLICE(loom_json_slice(&d, shape), "[1,30]");
    CHECK(loom_json_is_integer(&d, 10));
    int data = loom_json_obj_get(&d, 5, "data");
    CHECK(loom_json_is_array(&d, data));
    CHECK_INT(loom_json_size(&d, data), 1);
    CHECK_INT(loom_json_size(&d, data + 1), 30);
    CHECK_INT(loom_json_skip(&d, data), d.ntoks);
    CHECK(!loom_json_is_integer(&d, data + 2)); /* 1.0 */
    CHECK(loom_json_is_integer(&d, data + 6));  /* 0 */
    CHECK_SLICE(loom_json_slice(&d, data + 3), "2.5e-3");

    /* Scalars at the top level, whitespace around them. */
    CHECK_INT(parse_cstr(" \t\r\n 42 \n", &d), LOOM_OK);
    CHECK_INT(d.ntoks, 1);
    CHECK_SLICE(loom_json_slice(&d, 0), "42");
    CHECK_INT(parse_cstr("\"\"", &d), LOOM_OK);
    CHECK(loom_json_is_string(&d, 0));
    CHECK_INT(d.toks[0].start, 1);
    CHECK_INT(d.toks[0].end, 1);
    CHECK_INT(parse_cstr("null", &d), LOOM_OK);
    CHECK(loom_json_is_null(&d, 0));
    CHECK_INT(parse_cstr("[true,false,null,{},[],\"\\n\"]", &d), LOOM_OK);
    CHECK_INT(d.ntoks, 7);
    CHECK(loom_json_is_true(&d, 1) && loom_json_is_bool(&d, 1));
    CHECK(loom_json_is_bool(&d, 2) && !loom_json_is_true(&d, 2));
    CHECK(loom_json_is_null(&d, 3));
    CHECK(loom_json_is_object(&d, 4) && loom_json_size(&d, 4) == 0);
    CHECK_SLICE(loom_json_slice(&d, 4), "{}");
    CHECK(loom_json_is_array(&d, 5) && loom_json_size(&d, 5) == 0);
    CHECK_INT(d.toks[6].flags, LOOM_JSON_ESCAPED);
    CHECK_INT(d.toks[1].flags, 0);
    bool b = false;
    CHECK_INT(loom_json_to_bool(&d, 1, &b), LOOM_OK);
    CHECK(b);
    CHECK_INT(loom_json_to_bool(&d, 3, &b), LOOM_EINVAL);

    /* next skips nested subtrees; sizes count pairs for objects. */
    CHECK_INT(parse_cstr("{\"a\":[1,[2,3],{\"b\":{}}],\"c\":{\"d\":null,\"e\":[]}}", &d), LOOM_OK);
    CHECK_INT(d.toks[0].size, 2);
    CHECK_INT(d.toks[2].size, 3);
    CHECK_INT(d.toks[2].next, 10);
    CHECK_INT(d.toks[4].next, 7);
    CHECK_INT(d.toks[7].size, 1);
    CHECK_INT(d.toks[9].next, 10);
    CHECK_INT(d.toks[11].size, 2);
    CHECK_INT(d.toks[0].next, 16);
    CHECK_INT(d.ntoks, 16);
}

static void test_navigation(void)
{
    struct loom_json_doc d;
    loom_arena_reset(&arena);
    CHECK_INT(parse_cstr("{\"a\":1,\"b\":[10,[20,21],30],\"\\u0063\":\"C\",\"a\":2,\"\":0,"
                         "\"k\\\"q\":true,\"\\ud83d\\ude00\":\"smile\"}",
                         &d),
              LOOM_OK);
    CHECK_SLICE(loom_json_slice(&d, loom_json_obj_get(&d, 0, "a")), "1"); /* first wins */
    CHECK_SLICE(loom_json_slice(&d, loom_json_obj_get(&d, 0, "c")), "C");
    CHECK_SLICE(loom_json_slice(&d, loom_json_obj_get(&d, 0, "")), "0");
    CHECK(loom_json_is_true(&d, loom_json_obj_get(&d, 0, "k\"q")));
    CHECK_SLICE(loom_json_slice(&d, loom_json_obj_get(&d, 0, "\xf0\x9f\x98\x80")), "smile");
    CHECK_INT(loom_json_obj_get(&d, 0, "\\u0063"), -1);
    CHECK_INT(loom_json_obj_get(&d, 0, "missing"), -1);
    CHECK_INT(loom_json_obj_get(&d, 0, "k"), -1);
    CHECK_INT(loom_json_obj_getn(&d, 0, LOOM_STR("bb")), -1);
    int arr = loom_json_obj_getn(&d, 0, LOOM_STR("b"));
    CHECK_INT(loom_json_obj_get(&d, arr, "a"), -1); /* not an object */
    CHECK_INT(loom_json_arr_at(&d, arr, 0), arr + 1);
    CHECK_SLICE(loom_json_slice(&d, loom_json_arr_at(&d, arr, 1)), "[20,21]");
    CHECK_SLICE(loom_json_slice(&d, loom_json_arr_at(&d, arr, 2)), "30");
    CHECK_INT(loom_json_arr_at(&d, arr, 3), -1);
    CHECK_INT(loom_json_arr_at(&d, arr, -1), -1);
    CHECK_INT(loom_json_arr_at(&d, 0, 0), -1);

    int64_t sum = 0, n = 0;
    loom_json_foreach (&d, arr, i) {
        n++;
        int64_t v;
        if (loom_json_to_i64(&d, i, &v) == LOOM_OK)
            sum += v;
    }
    CHECK_INT(n, 3);
    CHECK_INT(sum, 40);

    char keys[128] = "";
    int members = 0;
    loom_json_foreach (&d, 0, k) {
        members++;
        struct loom_str s;
        CHECK_INT(loom_json_unescape(&d, k, &arena, &s), LOOM_OK);
        strncat(keys, s.ptr, s.len);
        strcat(keys, "|");
        CHECK(k + 1 < d.ntoks);
    }
    CHECK_INT(members, 7);
    CHECK_STR(keys, "a|b|c|a||k\"q|\xf0\x9f\x98\x80|");
    int scalars = 0;
    loom_json_foreach (&d, 1, never)
        scalars++;
    CHECK_INT(scalars, 0);

    CHECK(loom_json_str_eq(&d, 10, LOOM_STR("c")));
    CHECK(!loom_json_str_eq(&d, 10, LOOM_STR("cc")));
    CHECK(!loom_json_str_eq(&d, 10, LOOM_STR("")));
    CHECK(!loom_json_str_eq(&d, 10, LOOM_STR("\\u0063")));
    CHECK(!loom_json_str_eq(&d, 2, LOOM_STR("1"))); /* a number */
}

struct bad_case {
    const char *in;
    size_t len;
    loom_err code;
    const char *msg;
};

/* The length comes from the literal, so inputs may hold NUL bytes. */
#define BAD(in, code, msg)            \
    {                                 \
        in, sizeof(in) - 1, code, msg \
    }

static void test_errors(void)
{
    static const struct bad_case cases[] = {
        BAD("", LOOM_EPARSE,
            "unexpected end of input, expected a value at offset 0 (line 1, column 1)"),
        BAD("  ", LOOM_EPARSE,
            "unexpected end of input, expected a value at offset 2 (line 1, column 3)"),
        BAD("{\"id\":\"1\",\"n\":5 \"x\"}", LOOM_EPARSE,
            "expected ',' or '}' at offset 16 (line 1, column 17)"),
        BAD("[1,2", LOOM_EPARSE,
            "unexpected end of input, expected ',' or ']' at offset 4 (line 1, column 5)"),
        BAD("[1,]", LOOM_EPARSE, "expected a value at offset 3 (line 1, column 4)"),
        BAD("{\"a\":1,}", LOOM_EPARSE, "expected a string key at offset 7 (line 1, column 8)"),
        BAD("{,}", LOOM_EPARSE, "expected a string key or '}' at offset 1 (line 1, column 2)"),
        BAD("{\"a\" 1}", LOOM_EPARSE, "expected ':' at offset 5 (line 1, column 6)"),
        BAD("{\"a\":}", LOOM_EPARSE, "expected a value at offset 5 (line 1, column 6)"),
        BAD("{a:1}", LOOM_EPARSE, "expected a string key or '}' at offset 1 (line 1, column 2)"),
        BAD("[1}", LOOM_EPARSE, "expected ',' or ']' at offset 2 (line 1, column 3)"),
        BAD("{\"a\":1]", LOOM_EPARSE, "expected ',' or '}' at offset 6 (line 1, column 7)"),
        BAD("[1] [2]", LOOM_EPARSE,
            "unexpected data after the top-level value at offset 4 (line 1, column 5)"),
        BAD("1 2", LOOM_EPARSE,
            "unexpected data after the top-level value at offset 2 (line 1, column 3)"),
        BAD("01", LOOM_EPARSE, "leading zero in a number at offset 0 (line 1, column 1)"),
        BAD("[-01]", LOOM_EPARSE, "leading zero in a number at offset 2 (line 1, column 3)"),
        BAD("-", LOOM_EPARSE,
            "unexpected end of input, expected a digit at offset 1 (line 1, column 2)"),
        BAD("-a", LOOM_EPARSE, "expected a digit at offset 1 (line 1, column 2)"),
        BAD("+1", LOOM_EPARSE, "expected a value at offset 0 (line 1, column 1)"),
        BAD(".5", LOOM_EPARSE, "expected a value at offset 0 (line 1, column 1)"),
        BAD("1.", LOOM_EPARSE,
            "unexpected end of input, expected a digit after '.' at offset 2 (line 1, column 3)"),
        BAD("1.e5", LOOM_EPARSE, "expected a digit after '.' at offset 2 (line 1, column 3)"),
        BAD("1e", LOOM_EPARSE,
            "unexpected end of input, expected a digit in the exponent at offset 2 (line 1, column "
            "3)"),
        BAD("1e+", LOOM_EPARSE,
            "unexpected end of input, expected a digit in the exponent at offset 3 (line 1, column "
            "4)"),
        BAD("[1.5.3]", LOOM_EPARSE, "expected ',' or ']' at offset 4 (line 1, column 5)"),
        BAD("0x10", LOOM_EPARSE,
            "unexpected data after the top-level value at offset 1 (line 1, column 2)"),
        BAD("NaN", LOOM_EPARSE, "expected a value at offset 0 (line 1, column 1)"),
        BAD("[Infinity]", LOOM_EPARSE, "expected a value at offset 1 (line 1, column 2)"),
        BAD("tru", LOOM_EPARSE, "expected a value at offset 0 (line 1, column 1)"),
        BAD("[nul]", LOOM_EPARSE, "expected a value at offset 1 (line 1, column 2)"),
        BAD("True", LOOM_EPARSE, "expected a value at offset 0 (line 1, column 1)"),
        BAD("truex", LOOM_EPARSE,
            "unexpected data after the top-level value at offset 4 (line 1, column 5)"),
        BAD("\"abc", LOOM_EPARSE, "unterminated string at offset 0 (line 1, column 1)"),
        BAD("[\"a\\", LOOM_EPARSE, "unterminated string at offset 1 (line 1, column 2)"),
        BAD("\"a\tb\"", LOOM_EPARSE,
            "unescaped control character 0x09 in a string at offset 2 (line 1, column 3)"),
        BAD("\"\\x\"", LOOM_EPARSE, "invalid escape '\\x' at offset 1 (line 1, column 2)"),
        BAD("\"\\'\"", LOOM_EPARSE, "invalid escape '\\'' at offset 1 (line 1, column 2)"),
        BAD("\"\\u12\"", LOOM_EPARSE, "invalid \\u escape at offset 1 (line 1, column 2)"),
        BAD("\"\\u00g0\"", LOOM_EPARSE, "invalid \\u escape at offset 1 (line 1, column 2)"),
        BAD("\"\\\x01\"", LOOM_EPARSE, "invalid escape at offset 1 (line 1, column 2)"),
        BAD("\"\\U0041\"", LOOM_EPARSE, "invalid escape '\\U' at offset 1 (line 1, column 2)"),
        BAD("\"\\ud800\"", LOOM_EPARSE,
            "unpaired surrogate \\ud800 at offset 1 (line 1, column 2)"),
        BAD("\"\\udc00\\ud800\"", LOOM_EPARSE,
            "unpaired surrogate \\udc00 at offset 1 (line 1, column 2)"),
        BAD("\"\\ud800\\u0041\"", LOOM_EPARSE,
            "unpaired surrogate \\ud800 at offset 1 (line 1, column 2)"),
        BAD("\"\\ud800\\ud800\"", LOOM_EPARSE,
            "unpaired surrogate \\ud800 at offset 1 (line 1, column 2)"),
        BAD("\"\\ud800\\n\"", LOOM_EPARSE,
            "unpaired surrogate \\ud800 at offset 1 (line 1, column 2)"),
        BAD("\"\\ud800\\u12\"", LOOM_EPARSE, "invalid \\u escape at offset 7 (line 1, column 8)"),
        BAD("\"\\uDBFF\\uDFFF", LOOM_EPARSE, "unterminated string at offset 0 (line 1, column 1)"),
        BAD("\"\\ud800", LOOM_EPARSE, "unpaired surrogate \\ud800 at offset 1 (line 1, column 2)"),
        BAD("{\n  \"a\": 1,\n  \"b\": tru\n}", LOOM_EPARSE,
            "expected a value at offset 19 (line 3, column 8)"),
        BAD("[\r\n1\r\n,,]", LOOM_EPARSE, "expected a value at offset 7 (line 3, column 2)"),
        BAD("\xef\xbb\xbf{}", LOOM_EPARSE, "expected a value at offset 0 (line 1, column 1)"),
        BAD("[1]\x00", LOOM_EPARSE,
            "unexpected data after the top-level value at offset 3 (line 1, column 4)"),
        BAD("\"a\x00\"", LOOM_EPARSE,
            "unescaped control character 0x00 in a string at offset 2 (line 1, column 3)"),
        BAD("[\"\xc3\"]", LOOM_EPARSE, "invalid UTF-8 at offset 2 (line 1, column 3)"),
        BAD("[\v1]", LOOM_EPARSE, "expected a value at offset 1 (line 1, column 2)"),
        BAD("\"\xc3\xa9\xff\"", LOOM_EPARSE, "invalid UTF-8 at offset 3 (line 1, column 4)"),
        BAD("/*c*/1", LOOM_EPARSE, "expected a value at offset 0 (line 1, column 1)"),
        BAD("{'a':1}", LOOM_EPARSE, "expected a string key or '}' at offset 1 (line 1, column 2)"),
    };
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(cases); k++) {
        struct loom_error e = { 0 };
        loom_err err = parse_exact(cases[k].in, cases[k].len, NULL, &e, NULL);
        if (err != cases[k].code || strcmp(e.msg, cases[k].msg) != 0) {
            check_failures++;
            fprintf(stderr, "  case %zu (%s): got %s \"%s\"\n    want \"%s\"\n", k, cases[k].in,
                    loom_err_name(err), e.msg, cases[k].msg);
        }
        check_count++;
    }
}

static void test_valid(void)
{
    static const struct {
        const char *in;
        int ntoks;
    } cases[] = {
        { "0", 1 },
        { "-0", 1 },
        { "-0.0e-0", 1 },
        { "1E+2", 1 },
        { "1e-2", 1 },
        { "123.456e789", 1 },
        { "[]", 1 },
        { "{}", 1 },
        { " [ ] ", 1 },
        { "{ \"a\" : [ 1 , { } ] }", 5 },
        { "[[[[[[[[[[]]]]]]]]]]", 10 },
        { "\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u0000 \\uFFFF \\uD834\\uDD1E\"", 1 },
        { "\"\x7f\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbf\"", 1 },
        { "\"\xf0\x90\x80\x80\xf4\x8f\xbf\xbf\"", 1 },
        { "[\"\\ud83d\\ude00\",\"\\uDBFF\\uDFFF\"]", 3 },
        { "{\"a\":{\"a\":{\"a\":null}}}", 7 },
    };
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(cases); k++) {
        struct loom_error e = { 0 };
        int ntoks = -1;
        loom_err err = parse_exact(cases[k].in, strlen(cases[k].in), NULL, &e, &ntoks);
        if (err || ntoks != cases[k].ntoks) {
            check_failures++;
            fprintf(stderr, "  valid case %zu (%s): %s \"%s\" ntoks %d\n", k, cases[k].in,
                    loom_err_name(err), e.msg, ntoks);
        }
        check_count++;
    }
}

static void test_utf8(void)
{
    static const char *const bad[] = {
        "\"\xc0\x80\"",                 /* overlong NUL */
        "\"\xc1\xbf\"",                 /* overlong 2-byte */
        "\"\xe0\x80\x80\"",             /* overlong 3-byte */
        "\"\xe0\x9f\xbf\"",             /* overlong 3-byte, top */
        "\"\xf0\x80\x80\x80\"",         /* overlong 4-byte */
        "\"\xf0\x8f\xbf\xbf\"",         /* overlong 4-byte, top */
        "\"\xed\xa0\x80\"",             /* U+D800 encoded in UTF-8 */
        "\"\xed\xbf\xbf\"",             /* U+DFFF */
        "\"\xed\xa0\xbd\xed\xb8\x80\"", /* CESU-8 surrogate pair */
        "\"\xf4\x90\x80\x80\"",         /* U+110000 */
        "\"\xf5\x80\x80\x80\"",         /* lead byte F5 */
        "\"\xff\"",
        "\"\xfe\"",
        "\"\x80\"", /* stray continuation */
        "\"\xbf\"",
        "\"\xc3\"", /* truncated */
        "\"\xe2\x82\"",
        "\"\xf0\x9f\x98\"",
        "\"\xc3\x28\"", /* bad continuation */
        "\"\xe2\x28\xa1\"",
        "\"\xf0\x9f\x28\x80\"",
        "[\xc3\xa9]", /* valid UTF-8 outside a string */
    };
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(bad); k++) {
        struct loom_error e = { 0 };
        loom_err err = parse_exact(bad[k], strlen(bad[k]), NULL, &e, NULL);
        CHECK_INT(err, LOOM_EPARSE);
        if (k + 1 < LOOM_ARRAY_SIZE(bad))
            CHECK_CONTAINS(e.msg, "invalid UTF-8 at offset");
    }
    /* A string cut in the middle of a sequence by the length, not by a NUL. */
    struct loom_error e = { 0 };
    CHECK_INT(parse_exact("\"\xe2\x82\xac\"", 3, NULL, &e, NULL), LOOM_EPARSE);
    CHECK_STR(e.msg, "invalid UTF-8 at offset 1 (line 1, column 2)");
    CHECK_INT(parse_exact("\"\xe2\x82\xac\"", 5, NULL, &e, NULL), LOOM_OK);
}

static void test_unescape(void)
{
    struct loom_json_doc d;
    struct loom_str s;
    loom_arena_reset(&arena);
    CHECK_INT(
        parse_cstr("[\"plain\",\"a\\\"b\\\\c\\/d\\be\\ff\\ng\\rh\\ti\",\"\\u0041\\u00e9\\u20ac"
                   "\\ud83d\\ude00\\uD834\\uDD1E\",\"x\\u0000y\",\"\\uFFFF\\u0800\\u07FF\\u0080\","
                   "\"caf\xc3\xa9\",12]",
                   &d),
        LOOM_OK);
    CHECK_INT(loom_json_unescape(&d, 1, &arena, &s), LOOM_OK);
    CHECK_SLICE(s, "plain");
    CHECK(s.ptr == d.src + 2); /* no escapes: a slice of the source */
    CHECK_INT(loom_json_unescape(&d, 2, &arena, &s), LOOM_OK);
    CHECK_SLICE(s, "a\"b\\c/d\be\ff\ng\rh\ti");
    CHECK_INT(loom_json_unescape(&d, 3, &arena, &s), LOOM_OK);
    CHECK_SLICE(s, "A\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf0\x9d\x84\x9e");
    CHECK_INT(loom_json_unescape(&d, 4, &arena, &s), LOOM_OK);
    CHECK_UINT(s.len, 3);
    CHECK(memcmp(s.ptr, "x\0y", 3) == 0);
    CHECK(loom_json_str_eq(&d, 4, loom_str_make("x\0y", 3)));
    CHECK_INT(loom_json_unescape(&d, 5, &arena, &s), LOOM_OK);
    CHECK_SLICE(s, "\xef\xbf\xbf\xe0\xa0\x80\xdf\xbf\xc2\x80");
    CHECK_INT(loom_json_unescape(&d, 6, &arena, &s), LOOM_OK);
    CHECK_SLICE(s, "caf\xc3\xa9");
    CHECK_INT(loom_json_unescape(&d, 7, &arena, &s), LOOM_EINVAL);
    CHECK_INT(loom_json_unescape(&d, 0, &arena, &s), LOOM_EINVAL);

    /* A hand-made document with a bad escape is refused, not decoded out of bounds. */
    struct loom_json_tok tok = {
        .type = LOOM_JSON_STRING, .flags = LOOM_JSON_ESCAPED, .start = 0, .end = 3, .next = 1
    };
    struct loom_json_doc hand = { .src = "ab\\", .len = 3, .toks = &tok, .ntoks = 1 };
    CHECK_INT(loom_json_unescape(&hand, 0, &arena, &s), LOOM_EPARSE);
    CHECK(!loom_json_str_eq(&hand, 0, LOOM_STR("ab")));
    static const char *const bad_escapes[] = { "\\q",      "\\u12",          "\\udc00",
                                               "\\ud800x", "\\ud800\\u0041", "\\ud800\\u00" };
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(bad_escapes); k++) {
        hand.src = bad_escapes[k];
        tok.end = (uint32_t)strlen(bad_escapes[k]);
        CHECK_INT(loom_json_unescape(&hand, 0, &arena, &s), LOOM_EPARSE);
        CHECK(!loom_json_str_eq(&hand, 0, LOOM_STR("x")));
    }
    /* Hand-made numbers that break the grammar. */
    static const char *const bad_numbers[] = { "", "-", "1.", "1e", "1e+", ".5", "1x", "--1" };
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(bad_numbers); k++) {
        double x;
        uint64_t u;
        hand.src = bad_numbers[k];
        tok.type = LOOM_JSON_NUMBER;
        tok.end = (uint32_t)strlen(bad_numbers[k]);
        CHECK_INT(loom_json_to_double(&hand, 0, &x), LOOM_EINVAL);
        CHECK_INT(loom_json_to_u64(&hand, 0, &u), LOOM_EINVAL);
    }
    tok.type = LOOM_JSON_NUMBER;
    int64_t v;
    CHECK_INT(loom_json_to_i64(&hand, 0, &v), LOOM_EINVAL);
}

static void test_limits(void)
{
    char deep[200];
    struct loom_error e = { 0 };
    int ntoks;
    /* 64 levels pass with the defaults, 65 do not. */
    memset(deep, '[', 64);
    memset(deep + 64, ']', 64);
    CHECK_INT(parse_exact(deep, 128, NULL, &e, &ntoks), LOOM_OK);
    CHECK_INT(ntoks, 64);
    memset(deep, '[', 65);
    memset(deep + 65, ']', 65);
    CHECK_INT(parse_exact(deep, 130, NULL, &e, NULL), LOOM_ETOOBIG);
    CHECK_STR(e.msg, "nesting deeper than 64 at offset 64 (line 1, column 65)");
    /* The depth check happens as the bracket opens, before the rest is even looked at. */
    CHECK_INT(parse_exact(deep, 70, NULL, &e, NULL), LOOM_ETOOBIG);

    struct loom_json_limits lim = { .max_depth = 2 };
    CHECK_INT(parse_exact("{\"a\":[1]}", 9, &lim, &e, NULL), LOOM_OK);
    CHECK_INT(parse_exact("{\"a\":[{}]}", 10, &lim, &e, NULL), LOOM_ETOOBIG);
    CHECK_STR(e.msg, "nesting deeper than 2 at offset 6 (line 1, column 7)");
    CHECK_INT(parse_exact("[[1],[2],[3]]", 13, &lim, &e, NULL), LOOM_OK);

    lim = (struct loom_json_limits){ .max_tokens = 4 };
    CHECK_INT(parse_exact("[1,2,3]", 7, &lim, &e, &ntoks), LOOM_OK);
    CHECK_INT(ntoks, 4);
    CHECK_INT(parse_exact("[1,2,3,4]", 9, &lim, &e, NULL), LOOM_ETOOBIG);
    CHECK_STR(e.msg, "more than 4 tokens at offset 7 (line 1, column 8)");
    CHECK_INT(parse_exact("{\"a\":1,\"b\":2}", 13, &lim, &e, NULL), LOOM_ETOOBIG);
    lim.max_tokens = 1;
    CHECK_INT(parse_exact("1", 1, &lim, &e, NULL), LOOM_OK);
    /* The limit is hit by each kind of token. */
    CHECK_INT(parse_exact("[\"a\"]", 5, &lim, &e, NULL), LOOM_ETOOBIG);
    CHECK_STR(e.msg, "more than 1 tokens at offset 2 (line 1, column 3)");
    CHECK_INT(parse_exact("[true]", 6, &lim, &e, NULL), LOOM_ETOOBIG);
    CHECK_INT(parse_exact("[[]]", 4, &lim, &e, NULL), LOOM_ETOOBIG);
    CHECK_INT(parse_exact("[-1]", 4, &lim, &e, NULL), LOOM_ETOOBIG);

    /* Growth: many more tokens than the first guess, all in order. */
    size_t n = 200000;
    char *big = malloc(2 * n + 1);
    big[0] = '[';
    for (size_t i = 0; i < n; i++) {
        big[1 + 2 * i] = '7';
        big[2 + 2 * i] = i + 1 < n ? ',' : ']';
    }
    struct loom_json_doc d;
    loom_arena_reset(&arena);
    CHECK_INT(loom_json_parse(big, 2 * n + 1, NULL, &arena, &d, &e), LOOM_OK);
    CHECK_INT(d.ntoks, (int)n + 1);
    CHECK_INT(d.toks[0].size, (int)n);
    CHECK_INT(d.toks[n].start, 2 * n - 1);
    free(big);

    lim = (struct loom_json_limits){ .max_bytes = 8 };
    CHECK_INT(parse_exact("[1,2,3]", 7, &lim, &e, NULL), LOOM_OK);
    CHECK_INT(parse_exact("[1,2,3] ", 8, &lim, &e, NULL), LOOM_OK);
    CHECK_INT(parse_exact("[1,2,3]  ", 9, &lim, &e, NULL), LOOM_ETOOBIG);
    CHECK_STR(e.msg, "document is 9 bytes, more than the limit of 8");

    /* Out-parameters are untouched on failure. */
    struct loom_json_doc untouched = { .ntoks = 12345 };
    CHECK_INT(loom_json_parse("[", 1, NULL, &arena, &untouched, NULL), LOOM_EPARSE);
    CHECK_INT(untouched.ntoks, 12345);
    CHECK_INT(loom_json_parse(NULL, 0, NULL, &arena, &untouched, NULL), LOOM_EPARSE);
}

/* Every prefix of these documents, parsed from an exactly-sized buffer: ASan flags any read
 * past the end, and only the full document may succeed. */
static void test_no_overread(void)
{
    static const char *const docs[] = {
        infer_req,
        "{\"a\":[true,false,null,-1.5e+10,\"\\u00e9\\ud83d\\ude00\\n\"],\"b\":{}}",
        "\"\xf0\x9f\x98\x80\xe2\x82\xac\xc3\xa9\"",
        "  [ 0 , -0.0 , 1E-0 ]  ",
        "\"\\uD834\\uDD1E\"",
    };
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(docs); k++) {
        size_t len = strlen(docs[k]);
        for (size_t n = 0; n <= len; n++) {
            /* Trailing whitespace may be cut without harm. */
            bool complete = strspn(docs[k] + n, " ") == len - n;
            loom_err err = parse_exact(docs[k], n, NULL, NULL, NULL);
            if ((err == LOOM_OK) != complete) {
                check_failures++;
                fprintf(stderr, "  doc %zu prefix %zu: %s\n", k, n, loom_err_name(err));
            }
            check_count++;
        }
    }
    /* Numbers and literals cut at the end of the buffer. */
    static const char *const cut[] = {
        "1", "-1", "1.5", "1e5", "1E+5", "0", "true", "null", "false"
    };
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(cut); k++) {
        CHECK_INT(parse_exact(cut[k], strlen(cut[k]), NULL, NULL, NULL), LOOM_OK);
        CHECK_INT(parse_exact(cut[k], strlen(cut[k]) - 1, NULL, NULL, NULL), LOOM_EPARSE);
    }
}

static void test_integers(void)
{
    static const struct {
        const char *in;
        loom_err i64_err;
        int64_t i64;
        loom_err u64_err;
        uint64_t u64;
    } cases[] = {
        { "0", LOOM_OK, 0, LOOM_OK, 0 },
        { "-0", LOOM_OK, 0, LOOM_OK, 0 },
        { "-0.0e5", LOOM_OK, 0, LOOM_OK, 0 },
        { "0e999999999999", LOOM_OK, 0, LOOM_OK, 0 },
        { "42", LOOM_OK, 42, LOOM_OK, 42 },
        { "-42", LOOM_OK, -42, LOOM_EINVAL, 0 },
        { "1.0", LOOM_OK, 1, LOOM_OK, 1 },
        { "1.500e1", LOOM_OK, 15, LOOM_OK, 15 },
        { "2.5e1", LOOM_OK, 25, LOOM_OK, 25 },
        { "25e-1", LOOM_EINVAL, 0, LOOM_EINVAL, 0 },
        { "250e-1", LOOM_OK, 25, LOOM_OK, 25 },
        { "1.5", LOOM_EINVAL, 0, LOOM_EINVAL, 0 },
        { "1e-999999999999", LOOM_EINVAL, 0, LOOM_EINVAL, 0 },
        { "1e3", LOOM_OK, 1000, LOOM_OK, 1000 },
        { "1E+18", LOOM_OK, 1000000000000000000, LOOM_OK, 1000000000000000000u },
        { "1e19", LOOM_ETOOBIG, 0, LOOM_OK, 10000000000000000000u },
        { "1e20", LOOM_ETOOBIG, 0, LOOM_ETOOBIG, 0 },
        { "2e19", LOOM_ETOOBIG, 0, LOOM_ETOOBIG, 0 },
        { "99999999999999999999", LOOM_ETOOBIG, 0, LOOM_ETOOBIG, 0 },
        { "1e999999999999", LOOM_ETOOBIG, 0, LOOM_ETOOBIG, 0 },
        { "9223372036854775807", LOOM_OK, INT64_MAX, LOOM_OK, (uint64_t)INT64_MAX },
        { "9223372036854775808", LOOM_ETOOBIG, 0, LOOM_OK, (uint64_t)INT64_MAX + 1 },
        { "-9223372036854775808", LOOM_OK, INT64_MIN, LOOM_EINVAL, 0 },
        { "-9223372036854775809", LOOM_ETOOBIG, 0, LOOM_EINVAL, 0 },
        { "-92233720368547758.08e2", LOOM_OK, INT64_MIN, LOOM_EINVAL, 0 },
        { "18446744073709551615", LOOM_ETOOBIG, 0, LOOM_OK, UINT64_MAX },
        { "18446744073709551616", LOOM_ETOOBIG, 0, LOOM_ETOOBIG, 0 },
        { "1844674407370955161.5e1", LOOM_ETOOBIG, 0, LOOM_OK, UINT64_MAX },
        { "0.0000000000000000000000000018446744073709551615e46", LOOM_ETOOBIG, 0, LOOM_OK,
          UINT64_MAX },
        { "000", LOOM_OK, 0, LOOM_OK, 0 }, /* not reachable from the parser; decoder is lenient */
        { "123456789012345678901234567890", LOOM_ETOOBIG, 0, LOOM_ETOOBIG, 0 },
        { "12345678901234567890.5", LOOM_EINVAL, 0, LOOM_EINVAL, 0 },
        { "100000000000000000000e-2", LOOM_OK, 1000000000000000000, LOOM_OK, 1000000000000000000u },
    };
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(cases); k++) {
        struct loom_json_doc d;
        struct loom_json_tok tok = { .type = LOOM_JSON_NUMBER,
                                     .end = (uint32_t)strlen(cases[k].in),
                                     .next = 1 };
        d = (struct loom_json_doc){ .src = cases[k].in, .len = tok.end, .toks = &tok, .ntoks = 1 };
        int64_t i = -7;
        uint64_t u = 7;
        loom_err ie = loom_json_to_i64(&d, 0, &i), ue = loom_json_to_u64(&d, 0, &u);
        if (ie != cases[k].i64_err || (!ie && i != cases[k].i64) || ue != cases[k].u64_err ||
            (!ue && u != cases[k].u64)) {
            check_failures++;
            fprintf(stderr, "  %s: i64 %s %" PRId64 ", u64 %s %" PRIu64 "\n", cases[k].in,
                    loom_err_name(ie), i, loom_err_name(ue), u);
        }
        if (ie)
            CHECK_INT(i, -7); /* untouched on error */
        if (ue)
            CHECK_UINT(u, 7);
        check_count++;
    }
    struct loom_json_doc d;
    loom_arena_reset(&arena);
    CHECK_INT(parse_cstr("[\"1\",true]", &d), LOOM_OK);
    int64_t i;
    double x;
    float f;
    CHECK_INT(loom_json_to_i64(&d, 1, &i), LOOM_EINVAL);
    CHECK_INT(loom_json_to_i64(&d, 0, &i), LOOM_EINVAL);
    CHECK_INT(loom_json_to_double(&d, 1, &x), LOOM_EINVAL);
    CHECK_INT(loom_json_to_float(&d, 2, &f), LOOM_EINVAL);
}

/* A tiny deterministic generator (xorshift64*), so failures reproduce. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

/* A random JSON number: up to `maxdig` digits, some fraction, an exponent within +-maxexp. */
static size_t random_number(char *out, int maxdig, int maxexp)
{
    size_t n = 0;
    if (rng() & 1)
        out[n++] = '-';
    int idig = 1 + (int)(rng() % (uint64_t)maxdig);
    int fdig = rng() % 3 ? (int)(rng() % (uint64_t)maxdig) : 0;
    if (rng() % 8 == 0)
        out[n++] = '0';
    else
        for (int k = 0; k < idig; k++)
            out[n++] = (char)('0' + (k == 0 ? 1 + rng() % 9 : rng() % 10));
    if (fdig) {
        out[n++] = '.';
        for (int k = 0; k < fdig; k++)
            out[n++] = (char)('0' + rng() % 10);
    }
    if (rng() % 2)
        n += (size_t)sprintf(out + n, "e%d", (int)(rng() % (uint64_t)(2 * maxexp + 1)) - maxexp);
    out[n] = '\0';
    return n;
}

static bool float_conv_matches(const char *s, size_t n)
{
    struct loom_json_tok tok = { .type = LOOM_JSON_NUMBER, .end = (uint32_t)n, .next = 1 };
    struct loom_json_doc d = { .src = s, .len = n, .toks = &tok, .ntoks = 1 };
    float f, want = strtof(s, NULL);
    loom_err err = loom_json_to_float(&d, 0, &f);
    if (isinf(want))
        return err == LOOM_ETOOBIG;
    if (err || memcmp(&f, &want, sizeof(f)) != 0) {
        fprintf(stderr, "  float %s: got %a (%s), want %a\n", s, (double)f, loom_err_name(err),
                (double)want);
        return false;
    }
    return true;
}

static bool double_conv_matches(const char *s, size_t n)
{
    struct loom_json_tok tok = { .type = LOOM_JSON_NUMBER, .end = (uint32_t)n, .next = 1 };
    struct loom_json_doc d = { .src = s, .len = n, .toks = &tok, .ntoks = 1 };
    double x, want = strtod(s, NULL);
    loom_err err = loom_json_to_double(&d, 0, &x);
    if (isinf(want))
        return err == LOOM_ETOOBIG;
    if (err || memcmp(&x, &want, sizeof(x)) != 0) {
        fprintf(stderr, "  double %s: got %a (%s), want %a\n", s, x, loom_err_name(err), want);
        return false;
    }
    return true;
}

static void test_floats(void)
{
    static const char *const fixed[] = {
        "0",
        "-0",
        "1",
        "-1",
        "0.1",
        "0.5",
        "2.5e-3",
        "1e10",
        "1e-10",
        "1e11",
        "1e22",
        "1e23",
        "1e-22",
        "1e-23",
        "16777216",
        "16777217",
        "16777218",
        "16777219",
        "9007199254740993",
        "9007199254740992",
        "3.4028234663852886e38",
        "3.4028235e38",
        "3.40282357e38",
        "3.4028236e38",
        "1.17549435e-38",
        "1.4e-45",
        "1e-45",
        "7e-46",
        "7.1e-46",
        "1e-400",
        "2.2250738585072014e-308",
        "4.9e-324",
        "2e-324",
        "1.7976931348623157e308",
        "1.7976931348623159e308",
        "1e309",
        "0.000000000000000000000000000000000000001",
        "123456789012345678901234567890",
        "1.00000005960464477539062500001",
        "1.000000059604644775390625",
        "1.0000000596046447753906249999",
        "8589935104.000001",
        "33554431",
        "33554433",
        "1e39",
        "-1e39",
        "0e1000000000000",
        "1e-1000000000000",
        "0.30000000000000004",
        "6.02e23",
        "-1.6e-19",
        "4.35e-09",
        "7.038531e-26",
    };
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(fixed); k++) {
        CHECK(float_conv_matches(fixed[k], strlen(fixed[k])));
        CHECK(double_conv_matches(fixed[k], strlen(fixed[k])));
    }
    struct loom_json_tok tok = { .type = LOOM_JSON_NUMBER, .end = 5, .next = 1 };
    struct loom_json_doc d = { .src = "1e400", .len = 5, .toks = &tok, .ntoks = 1 };
    double x = 7;
    float f = 7;
    CHECK_INT(loom_json_to_double(&d, 0, &x), LOOM_ETOOBIG);
    CHECK_INT(loom_json_to_float(&d, 0, &f), LOOM_ETOOBIG);
    CHECK(x == 7 && f == 7);
    d.src = "1e39";
    tok.end = 4;
    CHECK_INT(loom_json_to_double(&d, 0, &x), LOOM_OK);
    CHECK_INT(loom_json_to_float(&d, 0, &f), LOOM_ETOOBIG);
    d.src = "-0";
    tok.end = 2;
    CHECK_INT(loom_json_to_float(&d, 0, &f), LOOM_OK);
    CHECK(f == 0 && signbit(f));
    CHECK_INT(loom_json_to_double(&d, 0, &x), LOOM_OK);
    CHECK(x == 0 && signbit(x));

    /* Too long for the stack copy. */
    char lng[LOOM_JSON_NUMBER_MAX + 2];
    memset(lng, '1', sizeof(lng) - 1);
    lng[1] = '.';
    lng[sizeof(lng) - 1] = '\0';
    d.src = lng;
    tok.end = LOOM_JSON_NUMBER_MAX;
    CHECK_INT(loom_json_to_double(&d, 0, &x), LOOM_OK);
    CHECK_INT(loom_json_to_float(&d, 0, &f), LOOM_OK);
    tok.end = LOOM_JSON_NUMBER_MAX + 1;
    CHECK_INT(loom_json_to_double(&d, 0, &x), LOOM_ETOOBIG);
    /* Floats read any number of digits in one pass (the fast path truncates past 19). */
    CHECK_INT(loom_json_to_float(&d, 0, &f), LOOM_OK);
    CHECK(f == strtof("1.1111111111111111111111", NULL));

    /* Random decimals, bit-identical to libc: short ones that take the fast paths, long ones
     * that do not, and exponents reaching subnormals and overflow. */
    char buf[128];
    int bad_f = 0, bad_d = 0;
    for (int k = 0; k < 300000; k++) {
        size_t n;
        switch (k % 4) {
        case 0:
            n = random_number(buf, 7, 10);
            break;
        case 1:
            n = random_number(buf, 9, 22);
            break;
        case 2:
            n = random_number(buf, 17, 40);
            break;
        default:
            n = random_number(buf, 25, 330);
        }
        bad_f += !float_conv_matches(buf, n);
        bad_d += !double_conv_matches(buf, n);
        if (bad_f + bad_d > 10)
            break;
    }
    CHECK_INT(bad_f, 0);
    CHECK_INT(bad_d, 0);

    /* What Python clients send: float32 values widened to double and printed in full
     * (json.dumps of numpy float32 -> float). Every one must read back to the same float. */
    int bad_py = 0;
    for (int k = 0; k < 200000 && bad_py < 5; k++) {
        uint32_t bits = (uint32_t)rand() << 16 ^ (uint32_t)rand();
        float want;
        memcpy(&want, &bits, sizeof(want));
        if (!isfinite(want) || fabsf(want) < FLT_MIN)
            continue;
        int n = snprintf(buf, sizeof(buf), "%.17g", (double)want);
        struct loom_json_tok t = { .type = LOOM_JSON_NUMBER, .end = (uint32_t)n, .next = 1 };
        struct loom_json_doc one = { .src = buf, .len = (size_t)n, .toks = &t, .ntoks = 1 };
        float got;
        if (loom_json_to_float(&one, 0, &got) || memcmp(&got, &want, sizeof(got)) != 0)
            bad_py++;
    }
    CHECK_INT(bad_py, 0);

    /* Decimals at and next to the midpoints between adjacent floats, where rounding through
     * double would go wrong. */
    int bad_mid = 0;
    for (int k = 0; k < 100000 && bad_mid < 10; k++) {
        uint32_t bits = (uint32_t)rng() & 0x7fffffff;
        uint32_t expo = 100 + (uint32_t)(rng() % 60); /* about 1e-8 .. 1e10 */
        bits = (bits & 0x807fffff) | expo << 23;
        float lo;
        memcpy(&lo, &bits, sizeof(lo));
        double mid = ((double)lo + (double)nextafterf(lo, INFINITY)) / 2;
        for (int prec = 8; prec <= 17; prec++) {
            size_t n = (size_t)snprintf(buf, sizeof(buf), "%.*g", prec, mid);
            if (!strchr(buf, 'n'))
                bad_mid += !float_conv_matches(buf, n);
        }
    }
    CHECK_INT(bad_mid, 0);
}

static const char *written(struct loom_buf *b)
{
    return b->data ? b->data : "";
}

static void test_writer(void)
{
    struct loom_buf b;
    struct loom_json_writer w;
    loom_buf_init(&b, 0);
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "model_name");
    loom_json_write_string(&w, "fraud");
    loom_json_write_key(&w, "outputs");
    loom_json_write_array_begin(&w);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "shape");
    loom_json_write_array_begin(&w);
    loom_json_write_i64(&w, 1);
    loom_json_write_u64(&w, UINT64_MAX);
    loom_json_write_i64(&w, INT64_MIN);
    loom_json_write_array_end(&w);
    loom_json_write_keyn(&w, LOOM_STR("data"));
    loom_json_write_array_begin(&w);
    loom_json_write_float(&w, 0.5f);
    loom_json_write_float(&w, 0.1f);
    loom_json_write_double(&w, 0.1);
    loom_json_write_float(&w, 1.0f / 3);
    loom_json_write_double(&w, 1.0 / 3);
    loom_json_write_float(&w, 100.0f);
    loom_json_write_double(&w, -0.0);
    loom_json_write_float(&w, NAN);
    loom_json_write_double(&w, -INFINITY);
    loom_json_write_float(&w, 1e-7f);
    loom_json_write_float(&w, FLT_MAX);
    loom_json_write_double(&w, 1e300);
    loom_json_write_double(&w, 5e-324);
    loom_json_write_array_end(&w);
    loom_json_write_key(&w, "ok");
    loom_json_write_bool(&w, true);
    loom_json_write_key(&w, "none");
    loom_json_write_null(&w);
    loom_json_write_key(&w, "nil");
    loom_json_write_string(&w, NULL);
    loom_json_write_key(&w, "raw");
    loom_json_write_raw(&w, LOOM_STR("{\"x\":[1,2]}"));
    loom_json_write_key(&w, "empty");
    loom_json_write_object_begin(&w);
    loom_json_write_object_end(&w);
    loom_json_write_key(&w, "e2");
    loom_json_write_array_begin(&w);
    loom_json_write_array_end(&w);
    loom_json_write_object_end(&w);
    loom_json_write_array_end(&w);
    loom_json_write_object_end(&w);
    CHECK_INT(loom_json_writer_finish(&w), LOOM_OK);
    CHECK_STR(written(&b),
              "{\"model_name\":\"fraud\",\"outputs\":[{\"shape\":[1,18446744073709551615,"
              "-9223372036854775808],\"data\":[0.5,0.1,0.1,0.33333334,0.3333333333333333,100,"
              "-0,null,null,1e-07,3.4028235e+38,1e+300,5e-324],\"ok\":true,"
              "\"none\":null,\"nil\":null,\"raw\":{\"x\":[1,2]},\"empty\":{},\"e2\":[]}]}");

    /* Escaping: controls, quotes, backslashes; invalid UTF-8 becomes \ufffd. */
    loom_buf_reset(&b);
    loom_json_writer_init(&w, &b);
    loom_json_write_array_begin(&w);
    static const char ctl[] = "a\"b\\c\n\r\t\b\f\x01\x1f\x7f\0z";
    loom_json_write_str(&w, loom_str_make(ctl, sizeof(ctl) - 1));
    loom_json_write_string(&w, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    loom_json_write_string(&w, "bad \xff \xc3 \xed\xa0\x80 \xc0\x80 end");
    loom_json_write_str(&w, LOOM_STR_NULL);
    loom_json_write_array_end(&w);
    CHECK_INT(loom_json_writer_finish(&w), LOOM_OK);
    CHECK_STR(written(&b),
              "[\"a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001f\x7f\\u0000z\","
              "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\","
              "\"bad \\ufffd \\ufffd \\ufffd\\ufffd\\ufffd \\ufffd\\ufffd end\",\"\"]");

    /* An escaped key. */
    loom_buf_reset(&b);
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "a\"\n");
    loom_json_write_i64(&w, -5);
    loom_json_write_object_end(&w);
    CHECK_INT(loom_json_writer_finish(&w), LOOM_OK);
    CHECK_STR(written(&b), "{\"a\\\"\\n\":-5}");

    /* A scalar document, then misuse. */
    loom_buf_reset(&b);
    loom_json_writer_init(&w, &b);
    CHECK_INT(loom_json_writer_finish(&w), LOOM_EINVAL); /* nothing written */
    loom_json_writer_init(&w, &b);
    loom_json_write_double(&w, 2.5);
    CHECK_INT(loom_json_writer_finish(&w), LOOM_OK);
    CHECK_STR(written(&b), "2.5");
    loom_json_write_i64(&w, 1); /* a second top-level value */
    CHECK_INT(loom_json_writer_err(&w), LOOM_EINVAL);
    CHECK_STR(written(&b), "2.5");

    static const int misuse[][4] = {
        { 1, 0, 0, 0 }, /* key at the top level */
        { 2, 3, 0, 0 }, /* value where a key is due */
        { 2, 1, 5, 0 }, /* object ends after a key */
        { 2, 6, 0, 0 }, /* object closed as an array */
        { 4, 5, 0, 0 }, /* array closed as an object */
        { 4, 1, 0, 0 }, /* key in an array */
        { 6, 0, 0, 0 }, /* end with nothing open */
        { 2, 1, 1, 0 }, /* two keys */
        { 4, 3, 0, 0 }, /* unclosed array: finish fails */
    };
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(misuse); k++) {
        loom_buf_reset(&b);
        loom_json_writer_init(&w, &b);
        for (int s = 0; s < 4 && misuse[k][s]; s++) {
            switch (misuse[k][s]) {
            case 1:
                loom_json_write_key(&w, "k");
                break;
            case 2:
                loom_json_write_object_begin(&w);
                break;
            case 3:
                loom_json_write_i64(&w, 1);
                break;
            case 4:
                loom_json_write_array_begin(&w);
                break;
            case 5:
                loom_json_write_object_end(&w);
                break;
            default:
                loom_json_write_array_end(&w);
            }
        }
        CHECK_INT(loom_json_writer_finish(&w), LOOM_EINVAL);
    }

    /* Depth ceiling. */
    loom_buf_reset(&b);
    loom_json_writer_init(&w, &b);
    for (int k = 0; k < LOOM_JSON_WRITER_MAX_DEPTH; k++)
        loom_json_write_array_begin(&w);
    CHECK_INT(loom_json_writer_err(&w), LOOM_OK);
    loom_json_write_array_begin(&w);
    CHECK_INT(loom_json_writer_err(&w), LOOM_ETOOBIG);
    loom_buf_release(&b);

    /* The buffer's ceiling; the first error sticks. */
    loom_buf_init(&b, 16);
    loom_json_writer_init(&w, &b);
    loom_json_write_array_begin(&w);
    loom_json_write_string(&w, "0123456789");
    CHECK_INT(loom_json_writer_err(&w), LOOM_OK);
    loom_json_write_string(&w, "0123456789");
    CHECK_INT(loom_json_writer_err(&w), LOOM_ETOOBIG);
    size_t len = b.len;
    loom_json_write_key(&w, "misuse, but ignored");
    loom_json_write_object_begin(&w);
    loom_json_write_str(&w, LOOM_STR("x"));
    loom_json_write_raw(&w, LOOM_STR("1"));
    loom_json_write_u64(&w, 1);
    loom_json_write_i64(&w, 1);
    loom_json_write_float(&w, 1.5f);
    loom_json_write_array_end(&w);
    CHECK_UINT(b.len, len);
    CHECK_INT(loom_json_writer_finish(&w), LOOM_ETOOBIG);
    loom_buf_release(&b);
}

/* Write values, parse them back, and get the same values. */
static void test_roundtrip(void)
{
    struct loom_buf b;
    struct loom_json_writer w;
    loom_buf_init(&b, 0);
    enum { N = 20000 };
    static float fs[N];
    static double ds[N];
    for (int k = 0; k < N; k++) {
        uint64_t r = rng();
        uint32_t fb = (uint32_t)r;
        memcpy(&fs[k], &fb, sizeof(fs[k]));
        r = rng();
        memcpy(&ds[k], &r, sizeof(ds[k]));
        if (k % 3 == 0)
            fs[k] = (float)(rng() % 2000000) / 1000.0f - 1000.0f;
        if (k % 5 == 0)
            ds[k] = (double)(rng() % 2000000000) / 1e6;
    }
    loom_json_writer_init(&w, &b);
    loom_json_write_object_begin(&w);
    loom_json_write_key(&w, "f");
    loom_json_write_array_begin(&w);
    for (int k = 0; k < N; k++)
        loom_json_write_float(&w, fs[k]);
    loom_json_write_array_end(&w);
    loom_json_write_key(&w, "d");
    loom_json_write_array_begin(&w);
    for (int k = 0; k < N; k++)
        loom_json_write_double(&w, ds[k]);
    loom_json_write_array_end(&w);
    loom_json_write_key(&w, "i");
    loom_json_write_array_begin(&w);
    loom_json_write_i64(&w, INT64_MIN);
    loom_json_write_i64(&w, INT64_MAX);
    loom_json_write_u64(&w, UINT64_MAX);
    loom_json_write_array_end(&w);
    loom_json_write_key(&w, "s\x01\xff");
    char all[128];
    for (int k = 0; k < 128; k++)
        all[k] = (char)(k == 127 ? 0 : k + 1);
    loom_json_write_str(&w, loom_str_make(all, 128)); /* every ASCII byte, NUL last */
    loom_json_write_object_end(&w);
    CHECK_INT(loom_json_writer_finish(&w), LOOM_OK);

    struct loom_json_doc d;
    struct loom_error e = { 0 };
    loom_arena_reset(&arena);
    CHECK_INT(loom_json_parse(b.data, b.len, NULL, &arena, &d, &e), LOOM_OK);
    int fa = loom_json_obj_get(&d, 0, "f"), da = loom_json_obj_get(&d, 0, "d");
    CHECK_INT(loom_json_size(&d, fa), N);
    CHECK_INT(loom_json_size(&d, da), N);
    int k = 0, bad = 0;
    loom_json_foreach (&d, fa, i) {
        float f;
        if (isfinite(fs[k])) {
            if (loom_json_to_float(&d, i, &f) || memcmp(&f, &fs[k], sizeof(f)) != 0)
                bad++;
        } else if (!loom_json_is_null(&d, i)) {
            bad++;
        }
        k++;
    }
    k = 0;
    loom_json_foreach (&d, da, i) {
        double x;
        if (isfinite(ds[k])) {
            if (loom_json_to_double(&d, i, &x) || memcmp(&x, &ds[k], sizeof(x)) != 0) {
                if (bad++ < 5)
                    fprintf(stderr, "  %a -> %.*s\n", ds[k], LOOM_STR_FMT(loom_json_slice(&d, i)));
            }
        } else if (!loom_json_is_null(&d, i)) {
            bad++;
        }
        k++;
    }
    CHECK_INT(bad, 0);
    int ia = loom_json_obj_get(&d, 0, "i");
    int64_t i64;
    uint64_t u64;
    CHECK_INT(loom_json_to_i64(&d, ia + 1, &i64), LOOM_OK);
    CHECK(i64 == INT64_MIN);
    CHECK_INT(loom_json_to_i64(&d, ia + 2, &i64), LOOM_OK);
    CHECK(i64 == INT64_MAX);
    CHECK_INT(loom_json_to_u64(&d, ia + 3, &u64), LOOM_OK);
    CHECK(u64 == UINT64_MAX);
    int sa = loom_json_obj_get(&d, 0, "s\x01\xef\xbf\xbd");
    CHECK(sa > 0);
    struct loom_str s;
    CHECK_INT(loom_json_unescape(&d, sa, &arena, &s), LOOM_OK);
    CHECK_UINT(s.len, 128);
    CHECK(memcmp(s.ptr, all, 128) == 0);

    /* Raw forwarding of a parsed subtree. */
    loom_buf_reset(&b);
    loom_json_writer_init(&w, &b);
    loom_json_write_array_begin(&w);
    loom_json_write_raw(&w, loom_json_slice(&d, ia));
    loom_json_write_array_end(&w);
    CHECK_INT(loom_json_writer_finish(&w), LOOM_OK);
    CHECK_STR(written(&b), "[[-9223372036854775808,9223372036854775807,18446744073709551615]]");
    loom_buf_release(&b);
}

/* The opt-in NaN/Infinity extension: exactly three spellings, as number tokens; off by default. */
static void test_nonfinite(void)
{
    static const struct loom_json_limits ext = { .allow_nonfinite = true };
    const char *src = "[NaN, Infinity, -Infinity, -0.5, {\"a\": NaN}]";
    struct loom_json_doc d;
    struct loom_error e = { 0 };
    loom_arena_reset(&arena);
    CHECK_INT(loom_json_parse(src, strlen(src), &ext, &arena, &d, &e), LOOM_OK);
    CHECK_INT(d.ntoks, 8);
    CHECK_INT(d.toks[0].size, 5);
    double x;
    float f;
    int64_t v;
    uint64_t u;
    CHECK(loom_json_is_number(&d, 1) && !loom_json_is_integer(&d, 1));
    CHECK(d.toks[1].flags & LOOM_JSON_NONFINITE);
    CHECK_SLICE(loom_json_slice(&d, 1), "NaN");
    CHECK_INT(loom_json_to_double(&d, 1, &x), LOOM_OK);
    CHECK(isnan(x) && !signbit(x));
    CHECK_INT(loom_json_to_float(&d, 1, &f), LOOM_OK);
    CHECK(isnan(f));
    CHECK_INT(loom_json_to_double(&d, 2, &x), LOOM_OK);
    CHECK(isinf(x) && x > 0);
    CHECK_INT(loom_json_to_float(&d, 2, &f), LOOM_OK);
    CHECK(isinf(f) && f > 0);
    CHECK_SLICE(loom_json_slice(&d, 3), "-Infinity");
    CHECK_INT(loom_json_to_double(&d, 3, &x), LOOM_OK);
    CHECK(isinf(x) && x < 0);
    CHECK_INT(loom_json_to_float(&d, 3, &f), LOOM_OK);
    CHECK(isinf(f) && f < 0);
    CHECK(!(d.toks[4].flags & LOOM_JSON_NONFINITE));
    CHECK_INT(loom_json_to_float(&d, 4, &f), LOOM_OK);
    CHECK(f == -0.5f);
    CHECK_INT(loom_json_to_i64(&d, 1, &v), LOOM_EINVAL);
    CHECK_INT(loom_json_to_u64(&d, 2, &u), LOOM_EINVAL);
    CHECK_INT(loom_json_to_i64(&d, 3, &v), LOOM_EINVAL);
    CHECK_INT(loom_json_to_float(&d, loom_json_obj_get(&d, 5, "a"), &f), LOOM_OK);
    CHECK(isnan(f));
    /* A top-level value, and a text that only overflows still does (it is not the token). */
    CHECK_INT(loom_json_parse("-Infinity", 9, &ext, &arena, &d, &e), LOOM_OK);
    CHECK_INT(d.ntoks, 1);
    CHECK_INT(loom_json_parse("[1e999]", 7, &ext, &arena, &d, &e), LOOM_OK);
    CHECK_INT(loom_json_to_double(&d, 1, &x), LOOM_ETOOBIG);

    static const struct bad_case cases[] = {
        BAD("nan", LOOM_EPARSE, "expected a value at offset 0 (line 1, column 1)"),
        BAD("[NAN]", LOOM_EPARSE, "expected a value at offset 1 (line 1, column 2)"),
        BAD("[Inf]", LOOM_EPARSE, "expected a value at offset 1 (line 1, column 2)"),
        BAD("[+Infinity]", LOOM_EPARSE, "expected a value at offset 1 (line 1, column 2)"),
        BAD("[-NaN]", LOOM_EPARSE, "expected a digit at offset 2 (line 1, column 3)"),
        BAD("[-Inf]", LOOM_EPARSE, "expected a value at offset 1 (line 1, column 2)"),
        BAD("[infinity]", LOOM_EPARSE, "expected a value at offset 1 (line 1, column 2)"),
        BAD("NaNa", LOOM_EPARSE,
            "unexpected data after the top-level value at offset 3 (line 1, column 4)"),
        BAD("[Na", LOOM_EPARSE, "expected a value at offset 1 (line 1, column 2)"),
        BAD("-", LOOM_EPARSE,
            "unexpected end of input, expected a digit at offset 1 (line 1, column 2)"),
        BAD("{NaN:1}", LOOM_EPARSE, "expected a string key or '}' at offset 1 (line 1, column 2)"),
    };
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(cases); k++) {
        struct loom_error ce = { 0 };
        loom_err err = parse_exact(cases[k].in, cases[k].len, &ext, &ce, NULL);
        if (err != cases[k].code || strcmp(ce.msg, cases[k].msg) != 0) {
            check_failures++;
            fprintf(stderr, "  case %zu (%s): got %s \"%s\"\n    want \"%s\"\n", k, cases[k].in,
                    loom_err_name(err), ce.msg, cases[k].msg);
        }
        check_count++;
    }
    /* The default stays strict RFC 8259, whatever the other limits are. */
    static const struct loom_json_limits strict = { .max_depth = 8 };
    const char *rejected[] = { "NaN", "[Infinity]", "[-Infinity]", "{\"a\":NaN}" };
    for (size_t k = 0; k < LOOM_ARRAY_SIZE(rejected); k++) {
        CHECK_INT(parse_exact(rejected[k], strlen(rejected[k]), NULL, NULL, NULL), LOOM_EPARSE);
        CHECK_INT(parse_exact(rejected[k], strlen(rejected[k]), &strict, NULL, NULL), LOOM_EPARSE);
    }
}

static void test_timing(void)
{
    struct loom_json_doc d;
    struct loom_arena a;
    loom_arena_init(&a, 16384);
    size_t len = strlen(infer_req);
    enum { ITERS = 100000 };
    int ok = 0;
    uint64_t t0 = loom_now_ns();
    for (int k = 0; k < ITERS; k++) {
        loom_arena_reset(&a);
        ok += loom_json_parse(infer_req, len, NULL, &a, &d, NULL) == LOOM_OK;
    }
    uint64_t t1 = loom_now_ns();
    float sum = 0;
    for (int k = 0; k < ITERS / 10; k++) {
        int data = loom_json_obj_get(
            &d, loom_json_arr_at(&d, loom_json_obj_get(&d, 0, "inputs"), 0), "data");
        loom_json_foreach (&d, data + 1, i) {
            float f;
            if (loom_json_to_float(&d, i, &f) == LOOM_OK)
                sum += f;
        }
    }
    uint64_t t2 = loom_now_ns();
    CHECK_INT(ok, ITERS);
    fprintf(stderr,
            "  parse of the %zu-byte one-row infer request: %.0f ns; 30 floats: %.0f ns (sum %g)\n",
            len, (double)(t1 - t0) / ITERS, (double)(t2 - t1) / (ITERS / 10), (double)sum);
    loom_arena_release(&a);
}

int main(void)
{
    loom_arena_init(&arena, 0);
    RUN(test_tokens);
    RUN(test_navigation);
    RUN(test_errors);
    RUN(test_valid);
    RUN(test_utf8);
    RUN(test_unescape);
    RUN(test_limits);
    RUN(test_no_overread);
    RUN(test_integers);
    RUN(test_floats);
    RUN(test_writer);
    RUN(test_roundtrip);
    RUN(test_nonfinite);
    RUN(test_timing);
    loom_arena_release(&arena);
    return check_report();
}
