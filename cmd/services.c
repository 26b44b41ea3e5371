/* SPDX-License-Identifier: Apache-2.0 */
/* The services built into this binary. */
#include "cmd.h"

#include "echo/echo.h"
#include "gateway/gateway.h"
#include "identity/identity.h"
#include "inference/inference.h"
#include "ingest/ingest.h"
#include "registry/registry.h"
#include "trainer/trainer.h"

const struct loom_service *const loom_services[] = {
    &inference_service, &registry_service, &trainer_service, &identity_service,
    &ingest_service,    &gateway_service,  &echo_service,
};

const size_t loom_nservices = sizeof(loom_services) / sizeof(loom_services[0]);
