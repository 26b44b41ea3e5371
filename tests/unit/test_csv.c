/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for the RFC 4180 reader: quoting, escapes, line breaks, empty fields, blank lines,
 * byte-order marks, every split of the input, error positions, limits and number fields. */
#include "check.h"

#include <loom/csv.h>

/* Records rendered as "[f1|f2]" lines, with line numbers when asked. */
struct collect {
    struct loom_buf out;
    bool lines;
    uint64_t fail_at; /* fail on this record index (+1), 0: never */
};

static loom_err on_record(struct loom_csv_reader *r, const struct loom_csv_record *rec, void *arg,
                          struct loom_error *err)
{
    struct collect *c = arg;
    if (c->fail_at && rec->index + 1 == c->fail_at)
        return loom_csv_fail(r, err, LOOM_EINVAL, rec->line, rec->columns[rec->nfields - 1],
                             "record %llu refused", (unsigned long long)rec->index);
    if (c->lines)
        loom_buf_printf(&c->out, "%llu:", (unsigned long long)rec->line);
    loom_buf_putc(&c->out, '[');
    for (size_t i = 0; i < rec->nfields; i++) {
        if (i)
            loom_buf_putc(&c->out, '|');
        loom_buf_append_str(&c->out, rec->fields[i]);
    }
    loom_buf_append_cstr(&c->out, "]\n");
    return LOOM_OK;
}

/* Parse `in` fed in pieces of `step` bytes (0: at once); the records, or "ERR <msg>". */
static char *parse_in(const char *in, size_t len, size_t step, const struct loom_csv_limits *lim,
                      bool lines)
{
    struct collect c = { .lines = lines };
    loom_buf_init(&c.out, 0);
    loom_buf_append_cstr(&c.out, "");
    struct loom_csv_reader r;
    loom_csv_reader_init(&r, lim, on_record, &c);
    struct loom_error err = { 0 };
    loom_err e = LOOM_OK;
    for (size_t off = 0; off < len && !e;) {
        size_t n = step ? LOOM_MIN(step, len - off) : len;
        e = loom_csv_feed(&r, in + off, n, &err);
        off += n;
    }
    if (!e)
        e = loom_csv_finish(&r, &err);
    if (e) {
        loom_buf_reset(&c.out);
        loom_buf_printf(&c.out, "ERR %s", err.msg);
    }
    loom_csv_reader_release(&r);
    return loom_buf_detach(&c.out, NULL);
}

static char *parse(const char *in)
{
    return parse_in(in, strlen(in), 0, NULL, false);
}

#define CHECK_PARSE(in, want)   \
    do {                        \
        char *got_ = parse(in); \
        CHECK_STR(got_, want);  \
        free(got_);             \
    } while (0)

static void test_basics(void)
{
    CHECK_PARSE("a,b,c\n1,2,3\n", "[a|b|c]\n[1|2|3]\n");
    CHECK_PARSE("a,b\r\n1,2\r\n", "[a|b]\n[1|2]\n");
    CHECK_PARSE("a,b\n1,2", "[a|b]\n[1|2]\n"); /* no final line break */
    CHECK_PARSE("a,b\r\n1,2\r", "[a|b]\n[1|2]\n");
    CHECK_PARSE("", "");
    CHECK_PARSE("x", "[x]\n");
    /* Empty fields anywhere. */
    CHECK_PARSE(",\n", "[|]\n");
    CHECK_PARSE("a,,c\n,b,\n", "[a||c]\n[|b|]\n");
    CHECK_PARSE("\"\",\"\"\n", "[|]\n");
    /* Blank lines are skipped, LF and CRLF alike. */
    CHECK_PARSE("\na\n\n\r\nb\n\n", "[a]\n[b]\n");
    /* Spaces are data. */
    CHECK_PARSE(" a , b \n", "[ a | b ]\n");
}

static void test_quotes(void)
{
    CHECK_PARSE("\"a,b\",c\n", "[a,b|c]\n");
    CHECK_PARSE("\"say \"\"hi\"\"\",x\n", "[say \"hi\"|x]\n");
    CHECK_PARSE("\"\"\"\"\n", "[\"]\n");
    CHECK_PARSE("\"line1\nline2\",z\n", "[line1\nline2|z]\n");
    CHECK_PARSE("\"crlf\r\ninside\"\r\n", "[crlf\r\ninside]\n");
    CHECK_PARSE("\"last\"", "[last]\n");
    CHECK_PARSE("a,\"b\"\r\n", "[a|b]\n");
    /* Line numbers count the line breaks inside quotes. */
    char *got = parse_in("h\n\"x\ny\"\nz\n", 10, 0, NULL, true);
    CHECK_STR(got, "1:[h]\n2:[x\ny]\n4:[z]\n");
    free(got);
}

static void test_bom(void)
{
    CHECK_PARSE("\xEF\xBB\xBF"
                "a,b\n",
                "[a|b]\n");
    /* Only at the start, and a partial mark is data. */
    CHECK_PARSE("a\n\xEF\xBB\xBF\n", "[a]\n[\xEF\xBB\xBF]\n");
    CHECK_PARSE("\xEF\xBBx\n", "[\xEF\xBBx]\n");
    CHECK_PARSE("\xEF", "[\xEF]\n");
    char *got = parse_in("\xEF\xBB\xBF"
                         "q\n",
                         5, 1, NULL, false);
    CHECK_STR(got, "[q]\n");
    free(got);
    got = parse_in("\xEF\xBBz\n", 4, 1, NULL, false);
    CHECK_STR(got, "[\xEF\xBBz]\n");
    free(got);
}

/* Every split of a tricky input gives the same records as one feed. */
static void test_every_split(void)
{
    const char *in = "\xEF\xBB\xBFid,\"na,me\",v\r\n1,\"a \"\"q\"\"\r\nb\",\r\n\n2,,\"x\"\n3,z,";
    size_t len = strlen(in);
    char *whole = parse_in(in, len, 0, NULL, true);
    CHECK_STR(whole, "1:[id|na,me|v]\n2:[1|a \"q\"\r\nb|]\n5:[2||x]\n6:[3|z|]\n");
    for (size_t step = 1; step <= len; step++) {
        char *got = parse_in(in, len, step, NULL, true);
        if (strcmp(got, whole) != 0) {
            CHECK_STR(got, whole);
            free(got);
            break;
        }
        free(got);
    }
    free(whole);
}

static void test_errors(void)
{
    CHECK_PARSE("a,b\n\"open,x\n", "ERR line 2, column 1: unterminated quoted field");
    CHECK_PARSE("a,b\nx,y\"z\n",
                "ERR line 2, column 4: a quote inside an unquoted field (quote the whole field and "
                "double the quotes inside it)");
    CHECK_PARSE("\"ab\"c\n", "ERR line 1, column 5: expected ',' or a line break after a closing "
                             "quote");
    CHECK_PARSE("a\rb\n", "ERR line 1, column 2: a carriage return not followed by a line feed");
    char *got = parse_in("a,b\nc\0d\n", 8, 0, NULL, false);
    CHECK_STR(got, "ERR line 2, column 2: a NUL byte");
    free(got);
    got = parse_in("\"a\0\"\n", 5, 0, NULL, false);
    CHECK_STR(got, "ERR line 1, column 3: a NUL byte");
    free(got);
    /* The callback's own error, with its position; the reader stays failed. */
    struct collect c = { .fail_at = 2 };
    loom_buf_init(&c.out, 0);
    struct loom_csv_reader r;
    loom_csv_reader_init(&r, NULL, on_record, &c);
    struct loom_error err = { 0 };
    CHECK_INT(loom_csv_feed(&r, "h1,h2\n1,2\n", 10, &err), LOOM_EINVAL);
    CHECK_STR(err.msg, "line 2, column 3: record 1 refused");
    CHECK_UINT(r.err_line, 2);
    CHECK_UINT(r.err_column, 3);
    CHECK_INT(loom_csv_feed(&r, "x\n", 2, &err), LOOM_EINVAL);
    CHECK_INT(loom_csv_finish(&r, &err), LOOM_EINVAL);
    loom_csv_reader_release(&r);
    loom_buf_release(&c.out);
}

static void test_limits(void)
{
    struct loom_csv_limits lim = { .max_fields = 3 };
    char *got = parse_in("a,b,c\n1,2,3,4\n", 14, 0, &lim, false);
    CHECK_STR(got, "ERR line 2, column 7: more than 3 fields in one record");
    free(got);
    lim = (struct loom_csv_limits){ .max_field_bytes = 4 };
    got = parse_in("abcd,\"ef\"\nabcde\n", 16, 3, &lim, false);
    CHECK_STR(got, "ERR line 2, column 5: a field is longer than 4 bytes");
    free(got);
    lim = (struct loom_csv_limits){ .max_record_bytes = 5 };
    got = parse_in("abc,def\n", 8, 2, &lim, false);
    CHECK_STR(got, "ERR line 1, column 7: a record is longer than 5 bytes");
    free(got);
    lim = (struct loom_csv_limits){ .max_records = 2 };
    got = parse_in("a\nb\nc\n", 6, 0, &lim, false);
    CHECK_STR(got, "ERR line 3, column 1: more than 2 records");
    free(got);
    lim = (struct loom_csv_limits){ .max_bytes = 5 };
    got = parse_in("a,b\nc,d\n", 8, 4, &lim, false);
    CHECK_STR(got, "ERR line 2, column 1: the input is larger than 5 bytes");
    free(got);
}

static void test_numbers(void)
{
    double v = 0;
    CHECK(loom_csv_number(LOOM_STR("12"), &v) && v == 12);
    CHECK(loom_csv_number(LOOM_STR("-0.5"), &v) && v == -0.5);
    CHECK(loom_csv_number(LOOM_STR("+1e-3"), &v) && v == 1e-3);
    CHECK(loom_csv_number(LOOM_STR(".5"), &v) && v == 0.5);
    CHECK(loom_csv_number(LOOM_STR("3."), &v) && v == 3);
    CHECK(!loom_csv_number(LOOM_STR(""), &v));
    CHECK(!loom_csv_number(LOOM_STR(" 1"), &v));
    CHECK(!loom_csv_number(LOOM_STR("1 "), &v));
    CHECK(!loom_csv_number(LOOM_STR("nan"), &v));
    CHECK(!loom_csv_number(LOOM_STR("inf"), &v));
    CHECK(!loom_csv_number(LOOM_STR("0x10"), &v));
    CHECK(!loom_csv_number(LOOM_STR("1e999"), &v));
    CHECK(!loom_csv_number(LOOM_STR("e5"), &v));
    CHECK(!loom_csv_number(LOOM_STR("-"), &v));
    CHECK(!loom_csv_number(LOOM_STR("1-2"), &v));
    CHECK(!loom_csv_number(LOOM_STR("abc"), &v));
}

int main(void)
{
    RUN(test_basics);
    RUN(test_quotes);
    RUN(test_bom);
    RUN(test_every_split);
    RUN(test_errors);
    RUN(test_limits);
    RUN(test_numbers);
    return check_report();
}
