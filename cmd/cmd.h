/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The loom command line: a table of subcommands. `loom serve` runs services; the other
 * commands are clients of a running platform (like kubectl). Each command parses its own
 * arguments and answers --help.
 */
#ifndef LOOM_CMD_H
#define LOOM_CMD_H

#include <loom/service.h>

struct loom_cmd {
    const char *name;
    const char *summary;
    /* argv[0] is "loom <name>"; returns the exit status. */
    int (*run)(int argc, char **argv);
};

/* Every service this binary can run, in `loom help` order. */
extern const struct loom_service *const loom_services[];
extern const size_t loom_nservices;

int cmd_serve(int argc, char **argv);
int cmd_models(int argc, char **argv);
int cmd_predict(int argc, char **argv);
int cmd_clients(int argc, char **argv);
int cmd_datasets(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_ingest(int argc, char **argv);
int cmd_events(int argc, char **argv);

#endif
