/* SPDX-License-Identifier: Apache-2.0 */
/*
 * `loom`: dispatch to a subcommand. Unknown commands and missing arguments print what to do
 * instead and exit with 2.
 */
#include "cmd.h"

#include <stdio.h>
#include <string.h>

static int cmd_version(int argc, char **argv);
static int cmd_help(int argc, char **argv);

static const struct loom_cmd commands[] = {
    { "serve", "Run services (all of them, or those named) in this process", cmd_serve },
    { "datasets", "Datasets for training: push a CSV, list", cmd_datasets },
    { "train", "Train a model from a job spec (YAML or JSON) and show the report", cmd_train },
    { "models", "Models in the registry: list, show, push, alias", cmd_models },
    { "predict", "Send rows to a served model and print its outputs", cmd_predict },
    { "ingest", "Send a file of records (JSON array or NDJSON, gzip or not) to an event stream",
      cmd_ingest },
    { "events", "The event bus: publish an event, consumer groups, dead letters, replay",
      cmd_events },
    { "clients", "API clients of the identity service: create, list, rotate...", cmd_clients },
    { "demo", "Reference data: loom demo data fraud --rows N --seed S [--bias B]", cmd_demo },
    { "version", "Print the version", cmd_version },
    { "help", "Show help for loom or for a command", cmd_help },
};

static const struct loom_cmd *find(const char *name)
{
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(commands); i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static void usage(FILE *out)
{
    fprintf(out,
            "loom %s: one binary for building, serving and operating AI products.\n\n"
            "Usage: loom <command> [arguments]\n\nCommands:\n",
            LOOM_VERSION);
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(commands); i++)
        fprintf(out, "  %-9s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\nServices (loom serve [SERVICE...]):\n");
    for (size_t i = 0; i < loom_nservices; i++)
        fprintf(out, "  %-9s %-16s %s\n", loom_services[i]->name, loom_services[i]->default_listen,
                loom_services[i]->summary);
    fprintf(out, "\nRun 'loom <command> --help' for a command's options.\n");
}

static bool wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return true;
    return false;
}

static int cmd_version(int argc, char **argv)
{
    if (wants_help(argc, argv)) {
        printf("Usage: loom version\n\nPrint loom's version.\n");
        return 0;
    }
    if (argc > 1) {
        fprintf(stderr, "loom version: unexpected argument \"%s\"\n", argv[1]);
        return 2;
    }
    printf("loom %s\n", LOOM_VERSION);
    return 0;
}

static int cmd_help(int argc, char **argv)
{
    if (argc < 2 || wants_help(argc, argv)) {
        usage(stdout);
        return 0;
    }
    const struct loom_cmd *cmd = find(argv[1]);
    if (!cmd) {
        fprintf(stderr, "loom help: unknown command \"%s\"; run 'loom help' for the list\n",
                argv[1]);
        return 2;
    }
    char name[64];
    snprintf(name, sizeof(name), "loom %s", cmd->name);
    char *args[] = { name, "--help", NULL };
    return cmd->run(2, args);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0)
        return cmd_version(1, argv);
    const struct loom_cmd *cmd = find(argv[1]);
    if (!cmd) {
        fprintf(stderr, "loom: unknown command \"%s\"; run 'loom help' for the list\n", argv[1]);
        return 2;
    }
    char name[64];
    snprintf(name, sizeof(name), "loom %s", cmd->name);
    argv[1] = name;
    return cmd->run(argc - 1, argv + 1);
}
