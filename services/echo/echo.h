/* SPDX-License-Identifier: Apache-2.0 */
/*
 * echo: the smallest complete service. It proves the runtime end to end (settings, routes with
 * parameters, bodies, asynchronous answers, traces, metrics, drain) and is what the black-box
 * tests of the runtime drive.
 */
#ifndef LOOM_SVC_ECHO_H
#define LOOM_SVC_ECHO_H

#include <loom/service.h>

extern const struct loom_service echo_service;

#endif
