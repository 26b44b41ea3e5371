/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests for the inference service's model configuration: Triton's names and defaults,
 * the errors that name the field, completion from a loaded model's info, FIL output
 * parameters, and the JSON rendering served by GET .../config.
 */
#include "check.h"

#include "inference/inference.h"

static struct inf_config *parse(const char *json, struct loom_error *err)
{
    return inf_config_parse("m", json, json ? strlen(json) : 0, err);
}

static void expect_error(const char *json, const char *part)
{
    struct loom_error err = { 0 };
    struct inf_config *c = parse(json, &err);
    CHECK(c == NULL);
    CHECK_CONTAINS(err.msg, part);
    if (c)
        inf_config_unref(c);
}

static const struct loom_model_info binary_info = {
    .backend = "xgboost",
    .objective = "binary:logistic",
    .num_features = 30,
    .num_outputs = 1,
    .num_groups = 1,
};
static const struct loom_model_info multi_info = {
    .backend = "xgboost",
    .objective = "multi:softprob",
    .num_features = 4,
    .num_outputs = 3,
    .num_groups = 3,
};

static void test_defaults(void)
{
    struct loom_error err = { 0 };
    struct inf_config *c = parse(NULL, &err);
    CHECK(c != NULL);
    CHECK_STR(c->backend, "xgboost");
    CHECK_INT(c->max_batch_size, 0);
    CHECK_INT(c->policy, INF_POLICY_LATEST);
    CHECK_INT(c->num_versions, 1);
    CHECK(!c->dynamic_batching);
    CHECK_INT(inf_config_complete(c, &binary_info, &err), LOOM_OK);
    /* No batching: the batch is a -1 dimension of the input itself. */
    CHECK_STR(c->input.name, "input__0");
    CHECK_INT(c->input.ndims, 2);
    CHECK_INT(c->input.dims[0], -1);
    CHECK_INT(c->input.dims[1], 30);
    CHECK_STR(c->output.name, "output__0");
    CHECK_INT(c->output.dims[1], 1);
    CHECK_UINT(c->out_width, 1);
    CHECK_CONTAINS(c->json, "\"max_batch_size\":0");
    CHECK_CONTAINS(c->json, "\"platform\":\"xgboost\"");
    inf_config_unref(c);
}

static void test_full(void)
{
    struct loom_error err = { 0 };
    const char *json =
        "{\"name\": \"m\", \"backend\": \"xgboost\", \"max_batch_size\": \"1024\","
        " \"input\": [{\"name\": \"x\", \"data_type\": \"TYPE_FP64\", \"dims\": [30]}],"
        " \"output\": [{\"name\": \"y\", \"data_type\": \"TYPE_FP32\", \"dims\": [-1]}],"
        " \"version_policy\": {\"specific\": {\"versions\": [1, \"3\"]}},"
        " \"dynamic_batching\": {\"max_queue_delay_microseconds\": 100, \"max_queue_size\": 4096,"
        "   \"preferred_batch_size\": [8, 16],"
        "   \"default_queue_policy\": {\"default_timeout_microseconds\": 500,"
        "     \"allow_timeout_override\": true, \"timeout_action\": \"REJECT\"}},"
        " \"instance_group\": [{\"kind\": \"KIND_CPU\", \"count\": 2}],"
        " \"default_model_filename\": \"m.json\", \"parameters\": {\"a\": {\"string_value\": "
        "\"b\"}}}";
    struct inf_config *c = parse(json, &err);
    CHECK(c != NULL);
    if (!c) {
        fprintf(stderr, "%s\n", err.msg);
        return;
    }
    CHECK_INT(c->max_batch_size, 1024);
    CHECK_INT(c->policy, INF_POLICY_SPECIFIC);
    CHECK_UINT(c->nversions, 2);
    CHECK_INT(c->versions[1], 3);
    CHECK(c->dynamic_batching);
    CHECK_UINT(c->max_queue_delay_us, 100);
    CHECK_UINT(c->max_queue_size, 4096);
    CHECK_UINT(c->npreferred, 2);
    CHECK_UINT(c->default_timeout_us, 500);
    CHECK(c->allow_timeout_override);
    CHECK_STR(c->default_model_filename, "m.json");
    CHECK_STR(c->parameters_json, "{\"a\": {\"string_value\": \"b\"}}");
    CHECK_INT(c->input.dtype, LOOM_DT_FP64);
    CHECK_INT(inf_config_complete(c, &binary_info, &err), LOOM_OK);
    CHECK_INT(c->output.dims[0], 1); /* -1 became the model's one output per row */
    CHECK_CONTAINS(c->json, "\"max_queue_size\":4096");
    CHECK_CONTAINS(c->json, "\"versions\":[1,3]");
    CHECK_CONTAINS(c->json, "\"data_type\":\"TYPE_FP64\"");
    inf_config_unref(c);
}

static void test_completion_errors(void)
{
    struct loom_error err = { 0 };
    struct inf_config *c =
        parse("{\"max_batch_size\": 4, \"input\": [{\"name\": \"x\", \"data_type\": \"TYPE_FP32\","
              " \"dims\": [29]}]}",
              &err);
    CHECK_INT(inf_config_complete(c, &binary_info, &err), LOOM_EINVAL);
    CHECK_CONTAINS(err.msg, "dims [29] end in 29 but the model has 30 features");
    inf_config_unref(c);
    c = parse("{\"max_batch_size\": 4, \"output\": [{\"name\": \"y\", \"data_type\": \"TYPE_FP32\","
              " \"dims\": [2]}]}",
              &err);
    CHECK_INT(inf_config_complete(c, &binary_info, &err), LOOM_EINVAL);
    CHECK_CONTAINS(err.msg, "output 'y' dims [2]");
    inf_config_unref(c);
    c = parse("{\"input\": [{\"name\": \"x\", \"data_type\": \"TYPE_STRING\", \"dims\": [30]}]}",
              &err);
    CHECK_INT(inf_config_complete(c, &binary_info, &err), LOOM_EINVAL);
    CHECK_CONTAINS(err.msg, "numeric");
    inf_config_unref(c);
}

static void test_fil(void)
{
    struct loom_error err = { 0 };
    struct inf_config *c = parse("{\"backend\": \"fil\", \"max_batch_size\": 8, \"parameters\": {"
                                 "\"model_type\": {\"string_value\": \"xgboost_json\"},"
                                 "\"output_class\": {\"string_value\": \"true\"},"
                                 "\"threshold\": {\"string_value\": \"0.7\"}}}",
                                 &err);
    CHECK(c != NULL);
    CHECK_STR(c->platform, "fil");
    CHECK_STR(c->default_model_filename, "xgboost.json");
    CHECK_INT(c->post, INF_POST_CLASS);
    CHECK_NEAR(c->threshold, 0.7, 1e-6);
    CHECK_INT(inf_config_complete(c, &multi_info, &err), LOOM_OK);
    CHECK_UINT(c->out_width, 1);
    float raw[6] = { 0.1f, 0.7f, 0.2f, 0.5f, 0.2f, 0.3f }, y[2];
    inf_postprocess(c, &multi_info, raw, 2, y);
    CHECK(y[0] == 1.0f && y[1] == 0.0f);
    inf_config_unref(c);

    c = parse("{\"backend\": \"fil\", \"max_batch_size\": 8, \"parameters\": {"
              "\"output_class\": {\"string_value\": \"true\"},"
              "\"predict_proba\": {\"string_value\": \"true\"}}}",
              &err);
    CHECK_INT(inf_config_complete(c, &binary_info, &err), LOOM_OK);
    CHECK_UINT(c->out_width, 2);
    float p[2] = { 0.25f, 0.9f }, q[4];
    inf_postprocess(c, &binary_info, p, 2, q);
    CHECK(q[0] == 0.75f && q[1] == 0.25f && q[3] == 0.9f);
    inf_config_unref(c);

    struct loom_model_info reg = binary_info;
    reg.objective = "reg:squarederror";
    c = parse("{\"backend\": \"fil\", \"parameters\": {\"output_class\": {\"string_value\": "
              "\"true\"}}}",
              &err);
    CHECK_INT(inf_config_complete(c, &reg, &err), LOOM_EINVAL);
    CHECK_CONTAINS(err.msg, "needs a probability objective");
    inf_config_unref(c);
    expect_error("{\"backend\": \"fil\", \"parameters\": {\"model_type\": {\"string_value\": "
                 "\"lightgbm\"}}}",
                 "model_type \"lightgbm\" is not supported");
    expect_error("{\"backend\": \"fil\", \"parameters\": {\"output_class\": {\"string_value\": "
                 "\"yes\"}}}",
                 "output_class must be \"true\" or \"false\"");
    expect_error("{\"backend\": \"fil\", \"parameters\": {\"threshold\": {\"string_value\": "
                 "\"2\"}}}",
                 "threshold must be a number in 0..1");
}

static void test_errors(void)
{
    expect_error("[", "config.json of 'm'");
    expect_error("[]", "top level must be an object");
    expect_error("{\"name\": \"other\"}", "does not match the model directory");
    expect_error("{\"backend\": \"onnxruntime\"}", "backend \"onnxruntime\" is not supported");
    expect_error("{\"max_batch_size\": -1}", "max_batch_size must be an integer");
    expect_error("{\"max_batchsize\": 8}", "unknown field \"max_batchsize\"");
    expect_error("{\"sequence_batching\": {}}", "sequence_batching is not supported");
    expect_error("{\"input\": [{\"name\": \"a\", \"data_type\": \"TYPE_FP32\", \"dims\": [1]},"
                 "{\"name\": \"b\", \"data_type\": \"TYPE_FP32\", \"dims\": [1]}]}",
                 "declares 2 tensors");
    expect_error("{\"input\": [{\"name\": \"a\", \"data_type\": \"FP32\", \"dims\": [1]}]}",
                 "data_type must be one of");
    expect_error("{\"input\": [{\"name\": \"a\", \"data_type\": \"TYPE_FP32\"}]}",
                 "input[0].dims is required");
    expect_error("{\"input\": [{\"name\": \"a\", \"data_type\": \"TYPE_FP32\", \"dims\": [-2]}]}",
                 "input.dims[0] must be an integer >= -1");
    expect_error("{\"input\": [{\"name\": \"a\", \"data_type\": \"TYPE_FP32\", \"dims\": [1],"
                 " \"reshape\": {\"shape\": []}}]}",
                 "reshape is not supported");
    expect_error("{\"version_policy\": {\"latest\": {\"num_versions\": 0}}}", "num_versions");
    expect_error("{\"version_policy\": {\"newest\": {}}}", "expected latest, all or specific");
    expect_error("{\"version_policy\": {\"specific\": {\"versions\": []}}}", "non-empty array");
    expect_error("{\"dynamic_batching\": {}}", "dynamic_batching needs max_batch_size >= 1");
    expect_error("{\"max_batch_size\": 2, \"dynamic_batching\": {\"max_queue_delay\": 5}}",
                 "unknown field dynamic_batching.max_queue_delay");
    expect_error("{\"max_batch_size\": 2, \"dynamic_batching\": {\"default_queue_policy\": "
                 "{\"timeout_action\": \"DELAY\"}}}",
                 "only REJECT is supported");
    expect_error("{\"default_model_filename\": \"../x.json\"}", "must be a file name");
    expect_error("{\"parameters\": []}", "parameters must be an object");
}

static void test_names(void)
{
    struct loom_error err = { 0 };
    CHECK(inf_valid_model_name(LOOM_STR("cancer-v2.1_x"), &err));
    CHECK(!inf_valid_model_name(LOOM_STR(""), &err));
    CHECK(!inf_valid_model_name(LOOM_STR(".."), &err));
    CHECK(!inf_valid_model_name(LOOM_STR("a..b"), &err));
    CHECK_CONTAINS(err.msg, "must not contain \"..\"");
    CHECK(!inf_valid_model_name(LOOM_STR("a/b"), &err));
    CHECK(!inf_valid_model_name(LOOM_STR("a b"), &err));
    CHECK(!inf_valid_model_name(LOOM_STR("a\nb"), &err));
}

int main(void)
{
    RUN(test_defaults);
    RUN(test_full);
    RUN(test_completion_errors);
    RUN(test_fil);
    RUN(test_errors);
    RUN(test_names);
    return check_report();
}
