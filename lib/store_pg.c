/* SPDX-License-Identifier: Apache-2.0 */
/* The PostgreSQL backend of the store: not written yet; postgres:// URLs are refused. */
#include "store_backend.h"

static loom_err pg_open(const struct loom__store_conf *conf, struct loom_db **out,
                        struct loom_error *err)
{
    LOOM_UNUSED(conf);
    LOOM_UNUSED(out);
    return loom_error_set(err, LOOM_EUNSUPPORTED, "postgres: backend not built yet");
}

const struct loom__store_type loom__store_pg = {
    .name = "postgres",
    .open = pg_open,
};
