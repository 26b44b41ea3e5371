/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer driver for the inference request decoder (services/inference/codec.c): arbitrary
 * bytes as the body of a v2 infer request, as JSON or with the binary tensor extension
 * (the first input byte chooses whether an Inference-Header-Content-Length header is sent and
 * its value), decoded against a small XGBoost model with batching on and a tight element
 * limit. A decoded request is also predicted, so that every shape the decoder accepts is one
 * the runtime can evaluate. Nothing may crash, leak or read out of bounds.
 */
#include "inference/inference.h"

#include <loom/log.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Two trees over 4 features, one with a missing-value default. */
static const char model_json[] =
    "{\"learner\":{\"attributes\":{},\"feature_names\":[],\"feature_types\":[],"
    "\"gradient_booster\":{\"name\":\"gbtree\",\"model\":{\"gbtree_model_param\":"
    "{\"num_parallel_tree\":\"1\",\"num_trees\":\"2\",\"size_leaf_vector\":\"0\"},"
    "\"tree_info\":[0,0],\"trees\":["
    "{\"id\":0,\"tree_param\":{\"num_deleted\":\"0\",\"num_feature\":\"4\",\"num_nodes\":\"3\","
    "\"size_leaf_vector\":\"0\"},\"left_children\":[1,-1,-1],\"right_children\":[2,-1,-1],"
    "\"parents\":[2147483647,0,0],\"split_indices\":[0,0,0],\"split_conditions\":[0.5,-0.2,0.3],"
    "\"split_type\":[0,0,0],\"default_left\":[1,0,0],\"base_weights\":[0.0,0.0,0.0],"
    "\"loss_changes\":[0.0,0.0,0.0],\"sum_hessian\":[1.0,1.0,1.0],\"categories\":[],"
    "\"categories_nodes\":[],\"categories_segments\":[],\"categories_sizes\":[]},"
    "{\"id\":1,\"tree_param\":{\"num_deleted\":\"0\",\"num_feature\":\"4\",\"num_nodes\":\"3\","
    "\"size_leaf_vector\":\"0\"},\"left_children\":[1,-1,-1],\"right_children\":[2,-1,-1],"
    "\"parents\":[2147483647,0,0],\"split_indices\":[3,0,0],\"split_conditions\":[1.5,0.1,-0.1],"
    "\"split_type\":[0,0,0],\"default_left\":[0,0,0],\"base_weights\":[0.0,0.0,0.0],"
    "\"loss_changes\":[0.0,0.0,0.0],\"sum_hessian\":[1.0,1.0,1.0],\"categories\":[],"
    "\"categories_nodes\":[],\"categories_segments\":[],\"categories_sizes\":[]}]}},"
    "\"learner_model_param\":{\"base_score\":\"5E-1\",\"boost_from_average\":\"1\","
    "\"num_class\":\"0\",\"num_feature\":\"4\",\"num_target\":\"1\"},"
    "\"objective\":{\"name\":\"binary:logistic\",\"reg_loss_param\":{\"scale_pos_weight\":\"1\"}}},"
    "\"version\":[1,7,4]}";

static const char config_json[] = "{\"name\":\"fz\",\"backend\":\"xgboost\",\"max_batch_size\":64,"
                                  "\"dynamic_batching\":{\"max_queue_delay_microseconds\":0}}";

static struct inf_service inf;
static struct inf_conf conf;
static struct inf_version version;

static void setup(void)
{
    loom_log_set_level(LOOM_LOG_ERROR);
    struct loom_error err = { 0 };
    conf.max_tensor_elements = 4096;
    inf.conf = &conf;
    struct loom_model *model = NULL;
    if (loom_model_load("xgboost", model_json, sizeof(model_json) - 1, NULL, &model, &err))
        abort();
    struct inf_config *c = inf_config_parse("fz", config_json, sizeof(config_json) - 1, &err);
    if (!c || inf_config_complete(c, loom_model_info(model), &err))
        abort();
    version.inf = &inf;
    version.model_name = "fz";
    strcpy(version.version_str, "1");
    version.config = c;
    version.model = model;
    version.info = loom_model_info(model);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!version.model)
        setup();
    if (size < 3)
        return 0;
    /* Byte 0: 0-127 plain JSON; 128-255 with Inference-Header-Content-Length taken from bytes
     * 1-2 (so 0, a JSON prefix, or a bad value). */
    bool binary = data[0] >= 128;
    unsigned hlen = (unsigned)data[1] << 8 | data[2];
    data += 3;
    size -= 3;
    char *body = malloc(size ? size : 1); /* exactly sized: ASan catches over-reads */
    memcpy(body, data, size);
    char value[16];
    int vlen = snprintf(value, sizeof(value), "%u", hlen % (unsigned)(size + 2));
    struct loom_http_header headers[1] = {
        { LOOM_STR("Inference-Header-Content-Length"), loom_str_make(value, (size_t)vlen) },
    };
    struct loom_arena arena;
    loom_arena_init(&arena, 4096);
    struct loom_http_req req = {
        .method = LOOM_HTTP_POST,
        .headers = headers,
        .nheaders = binary ? 1 : 0,
        .body = loom_str_make(body, size),
        .arena = &arena,
    };
    struct inf_request r;
    struct loom_error err = { 0 };
    if (inf_decode(&version, &req, &r, &err) == 0) {
        if (!r.x || r.rows > 4096)
            abort();
        float *y = loom_arena_alloc(&arena, (size_t)r.rows * version.info->num_outputs * 4 + 4);
        if (r.rows)
            loom_model_predict(version.model, r.x, (size_t)r.rows, y);
    } else if (!err.msg[0]) {
        abort(); /* every refusal says why */
    }
    loom_arena_release(&arena);
    free(body);
    return 0;
}
