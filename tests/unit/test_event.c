/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests for CloudEvents envelopes: build then parse round trips (ids, time, subject,
 * traceparent, data kept byte for byte), the builder's refusals, the strict parser's
 * refusals (missing, mistyped, oversized and duplicate attributes, data_base64, bad time and
 * traceparent, extension names), RFC 3339 times, and derived ids.
 */
#include "check.h"

#include <loom/event.h>
#include <loom/json.h>

#include <stdio.h>
#include <string.h>

static const char *TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

static void test_build_parse(void)
{
    struct loom_trace_ctx tc;
    CHECK_INT(loom_trace_parse(loom_str_cstr(TP), &tc), LOOM_OK);
    struct loom_buf b;
    loom_buf_init(&b, 0);
    char id[LOOM_EVENT_ID_MAX + 1];
    struct loom_event_spec spec = {
        .source = "/loom/registry",
        .type = "loom.model.alias.changed",
        .subject = LOOM_STR("fraud"),
        .time_ns = 1764011400123456000LL,
        .trace = &tc,
        .data = LOOM_STR("{\"model\":\"fraud\",\"alias\":\"prod\",\"version\":3,"
                         "\"previous_version\":null}"),
    };
    CHECK_INT(loom_event_build(&spec, &b, id, NULL), LOOM_OK);
    CHECK(loom_uuid_valid(loom_str_cstr(id)));
    CHECK_INT(id[14], '7');
    CHECK_CONTAINS(b.data, "\"specversion\":\"1.0\"");
    CHECK_CONTAINS(b.data, "\"time\":\"2025-11-24T19:10:00.123456Z\"");
    CHECK_CONTAINS(b.data, "\"datacontenttype\":\"application/json\"");

    struct loom_arena a;
    loom_arena_init(&a, 0);
    struct loom_event ev;
    struct loom_error err = { 0 };
    CHECK_INT(loom_event_parse(b.data, b.len, &a, &ev, &err), LOOM_OK);
    CHECK_SLICE(ev.id, id);
    CHECK_SLICE(ev.source, "/loom/registry");
    CHECK_SLICE(ev.type, "loom.model.alias.changed");
    CHECK_SLICE(ev.subject, "fraud");
    CHECK_INT(ev.time_ns, 1764011400123456000LL);
    CHECK(ev.has_trace);
    CHECK_STR(ev.trace.trace_hex, tc.trace_hex);
    CHECK(ev.has_data);
    CHECK_SLICE(ev.data, "{\"model\":\"fraud\",\"alias\":\"prod\",\"version\":3,"
                         "\"previous_version\":null}");
    CHECK_INT(ev.n_ext, 0);

    /* A given id is kept; no current trace means no traceparent. */
    loom_buf_reset(&b);
    spec.id = LOOM_STR("order-42");
    spec.trace = NULL;
    spec.subject = LOOM_STR_NULL;
    spec.data = LOOM_STR("\"text\"");
    CHECK_INT(loom_event_build(&spec, &b, id, NULL), LOOM_OK);
    CHECK_STR(id, "order-42");
    CHECK(strstr(b.data, "traceparent") == NULL);
    CHECK(strstr(b.data, "subject") == NULL);
    CHECK_INT(loom_event_parse(b.data, b.len, &a, &ev, &err), LOOM_OK);
    CHECK_SLICE(ev.data, "\"text\"");
    CHECK(!ev.has_trace);

    /* The current trace is picked up. */
    loom_buf_reset(&b);
    loom_trace_set_current(&tc);
    CHECK_INT(loom_event_build(&spec, &b, NULL, NULL), LOOM_OK);
    loom_trace_set_current(NULL);
    CHECK_CONTAINS(b.data, TP);

    loom_arena_release(&a);
    loom_buf_release(&b);
}

static void test_build_refusals(void)
{
    struct loom_buf b;
    loom_buf_init(&b, 0);
    struct loom_error err = { 0 };
    struct loom_event_spec ok = { .source = "/loom/x",
                                  .type = "loom.data.ingested",
                                  .data = LOOM_STR("{}") };
    struct loom_event_spec s = ok;
    s.source = "registry";
    CHECK_INT(loom_event_build(&s, &b, NULL, &err), LOOM_EINVAL);
    s = ok;
    s.type = "model.created";
    CHECK_INT(loom_event_build(&s, &b, NULL, &err), LOOM_EINVAL);
    s.type = "loom.Model.created";
    CHECK_INT(loom_event_build(&s, &b, NULL, &err), LOOM_EINVAL);
    s.type = "loom.model";
    CHECK_INT(loom_event_build(&s, &b, NULL, &err), LOOM_EINVAL);
    s.type = "loom.model..created";
    CHECK_INT(loom_event_build(&s, &b, NULL, &err), LOOM_EINVAL);
    s = ok;
    s.data = LOOM_STR_NULL;
    CHECK_INT(loom_event_build(&s, &b, NULL, &err), LOOM_EINVAL);
    s = ok;
    s.id = LOOM_STR("a b");
    CHECK_INT(loom_event_build(&s, &b, NULL, &err), LOOM_EINVAL);
    char longid[300];
    memset(longid, 'x', sizeof(longid));
    s.id = loom_str_make(longid, sizeof(longid));
    CHECK_INT(loom_event_build(&s, &b, NULL, &err), LOOM_ETOOBIG);
    CHECK(loom_event_type_valid(LOOM_STR("loom.model.version.created")));
    CHECK(!loom_event_type_valid(LOOM_STR("loom.model.")));
    loom_buf_release(&b);
}

static loom_err parse(const char *json, struct loom_error *err)
{
    struct loom_arena a;
    loom_arena_init(&a, 0);
    struct loom_event ev;
    loom_err e = loom_event_parse(json, strlen(json), &a, &ev, err);
    loom_arena_release(&a);
    return e;
}

#define BASE "\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/x\",\"type\":\"loom.a.b\""

static void test_parse_refusals(void)
{
    struct loom_error err = { 0 };
    CHECK_INT(parse("{" BASE "}", &err), LOOM_OK);
    CHECK_INT(parse("{" BASE ",\"data\":[1,2]}", &err), LOOM_OK);
    CHECK_INT(parse("{" BASE ",\"subject\":null,\"data\":null}", &err), LOOM_OK);
    CHECK_INT(parse("{" BASE ",\"myext\":\"v\",\"n2\":3,\"b\":true}", &err), LOOM_OK);
    CHECK_INT(parse("{" BASE ",\"datacontenttype\":\"application/cloudevents+json\"}", &err),
              LOOM_OK);
    CHECK_INT(parse("{" BASE ",\"time\":\"2026-01-02T03:04:05+01:00\"}", &err), LOOM_OK);

    CHECK_INT(parse("[1]", &err), LOOM_EINVAL);
    CHECK_INT(parse("{\"specversion\":\"1.0\"", &err), LOOM_EPARSE);
    CHECK_INT(
        parse("{\"specversion\":\"0.3\",\"id\":\"1\",\"source\":\"/x\",\"type\":\"t.a\"}", &err),
        LOOM_EINVAL);
    CHECK_CONTAINS(err.msg, "1.0");
    CHECK_INT(parse("{\"specversion\":\"1.0\",\"source\":\"/x\",\"type\":\"t\"}", &err),
              LOOM_EINVAL);
    CHECK_CONTAINS(err.msg, "\"id\" is missing");
    CHECK_INT(parse("{\"specversion\":\"1.0\",\"id\":7,\"source\":\"/x\",\"type\":\"t\"}", &err),
              LOOM_EINVAL);
    CHECK_CONTAINS(err.msg, "\"id\" must be a string");
    CHECK_INT(parse("{\"specversion\":\"1.0\",\"id\":\"\",\"source\":\"/x\",\"type\":\"t\"}", &err),
              LOOM_EINVAL);
    CHECK_INT(parse("{" BASE ",\"id\":\"2\"}", &err), LOOM_EINVAL);
    CHECK_CONTAINS(err.msg, "twice");
    CHECK_INT(parse("{" BASE ",\"data_base64\":\"AA==\"}", &err), LOOM_EUNSUPPORTED);
    CHECK_INT(parse("{" BASE ",\"datacontenttype\":\"text/plain\"}", &err), LOOM_EUNSUPPORTED);
    CHECK_INT(parse("{" BASE ",\"time\":\"yesterday\"}", &err), LOOM_EINVAL);
    CHECK_INT(parse("{" BASE ",\"time\":\"2026-02-30T00:00:00Z\"}", &err), LOOM_EINVAL);
    CHECK_INT(parse("{" BASE ",\"traceparent\":\"00-xyz\"}", &err), LOOM_EINVAL);
    CHECK_INT(parse("{" BASE ",\"Bad\":1}", &err), LOOM_EINVAL);
    CHECK_INT(parse("{" BASE ",\"waytoolongextensionname\":1}", &err), LOOM_EINVAL);
    CHECK_INT(parse("{" BASE ",\"x\":{}}", &err), LOOM_EINVAL);
    CHECK_INT(parse("{" BASE ",\"subject\":3}", &err), LOOM_EINVAL);

    char big[400];
    snprintf(big, sizeof(big),
             "{\"specversion\":\"1.0\",\"id\":\"%0200d\",\"source\":\"/x\",\"type\":\"t\"}", 1);
    CHECK_INT(parse(big, &err), LOOM_ETOOBIG);
}

static void test_time(void)
{
    int64_t t = 0;
    CHECK_INT(loom_event_parse_time(LOOM_STR("1970-01-01T00:00:00Z"), &t), LOOM_OK);
    CHECK_INT(t, 0);
    CHECK_INT(loom_event_parse_time(LOOM_STR("1970-01-01T01:00:00.5+01:00"), &t), LOOM_OK);
    CHECK_INT(t, 500000000);
    CHECK_INT(loom_event_parse_time(LOOM_STR("2024-02-29t12:00:00.000000001z"), &t), LOOM_OK);
    char buf[40];
    loom_time_rfc3339(t - 1, buf);
    CHECK_STR(buf, "2024-02-29T12:00:00.000000Z");
    CHECK_INT(loom_event_parse_time(LOOM_STR("2023-02-29T12:00:00Z"), &t), LOOM_EINVAL);
    CHECK_INT(loom_event_parse_time(LOOM_STR("2023-01-01T12:00:00"), &t), LOOM_EINVAL);
    CHECK_INT(loom_event_parse_time(LOOM_STR("2023-01-01T12:00:00.Z"), &t), LOOM_EINVAL);
    CHECK_INT(loom_event_parse_time(LOOM_STR("2023-01-01 12:00:00Z"), &t), LOOM_EINVAL);
}

static void test_derive(void)
{
    char a[LOOM_UUID_LEN + 1], b[LOOM_UUID_LEN + 1], c[LOOM_UUID_LEN + 1];
    loom_event_id_derive(LOOM_STR("transactions"), LOOM_STR("t-1"), a);
    loom_event_id_derive(LOOM_STR("transactions"), LOOM_STR("t-1"), b);
    loom_event_id_derive(LOOM_STR("transactions"), LOOM_STR("t-2"), c);
    CHECK_STR(a, b);
    CHECK(strcmp(a, c) != 0);
    CHECK(loom_uuid_valid(loom_str_cstr(a)));
    CHECK_INT(a[14], '8');
    /* The separator keeps ("ab", "c") and ("a", "bc") apart. */
    loom_event_id_derive(LOOM_STR("ab"), LOOM_STR("c"), a);
    loom_event_id_derive(LOOM_STR("a"), LOOM_STR("bc"), b);
    CHECK(strcmp(a, b) != 0);
}

int main(void)
{
    RUN(test_build_parse);
    RUN(test_build_refusals);
    RUN(test_parse_refusals);
    RUN(test_time);
    RUN(test_derive);
    return check_report();
}
