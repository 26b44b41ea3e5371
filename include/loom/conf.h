/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Configuration. Each service declares its settings as a table of fields (key, type, offsetof
 * into a plain struct, default, help), the way nginx declares its directives, and receives the
 * filled struct as const. This module fills those structs from four layers, lowest to highest:
 * the defaults in the tables, a file in a TOML subset (--config FILE or LOOM_CONFIG), the
 * environment (LOOM_<SECTION>_<KEY>) and the command line (--<section>.<key>=VALUE). Every
 * error names the setting and where it came from and says what to fix. loom_conf_print writes
 * the effective values back in the file syntax, each with its source (--print-config), and
 * loom_conf_usage lists the flags (--help). docs/configuration.md is the user's side.
 */
#ifndef LOOM_CONF_H
#define LOOM_CONF_H

#include <loom/err.h>
#include <loom/mem.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* The type of a setting, and the C type of the struct member it fills. */
enum loom_conf_type {
    LOOM_CONF_STRING,   /* const char *, never NULL ("" when unset); owned by the conf's arena */
    LOOM_CONF_INT,      /* int64_t */
    LOOM_CONF_BOOL,     /* bool: true/false, yes/no, on/off, 1/0 */
    LOOM_CONF_DOUBLE,   /* double, finite */
    LOOM_CONF_DURATION, /* uint64_t nanoseconds: "250ms", "5s", "2m", "1h"; a bare number is ms */
    LOOM_CONF_SIZE,     /* uint64_t bytes: "512", "64KiB", "10MB", "1GiB" */
    LOOM_CONF_ENUM,     /* int: the index of the value in `choices` */
    LOOM_CONF_ADDR,     /* const char * "HOST:PORT" (arena); "" only if the default is empty */
    LOOM_CONF_LIST,     /* struct loom_conf_list (arena), from "a,b,c" or ["a", "b", "c"] */
};

/* Field flags. */
#define LOOM_CONF_SECRET 1u /* never printed by loom_conf_print, nor quoted in error messages */

/* The value of a LOOM_CONF_LIST setting: `n` NUL-terminated items, each non-empty and trimmed
 * of spaces (items may be NULL when n is 0). All owned by the conf's arena. */
struct loom_conf_list {
    const char **items;
    size_t n;
};

/*
 * One setting. `key` is kebab-case ([a-z][a-z0-9-]*, at most 48 bytes). `def` is written as a
 * flag value would be ("5s", "a,b", "true"); NULL means empty, zero, false or the first choice.
 * `min < max` bounds an int, duration (ns) or size (bytes), inclusive. `choices` is
 * NULL-terminated, for enums only. Declare fields with the macros below, which also check at
 * compile time that the member has the C type the setting needs.
 */
struct loom_conf_field {
    const char *key;
    enum loom_conf_type type;
    size_t offset; /* offsetof into the section's struct */
    const char *def;
    const char *help;
    int64_t min, max;
    const char *const *choices;
    unsigned flags; /* LOOM_CONF_SECRET */
};

/* The C type each setting type fills, for the compile-time check in the macros. */
#define LOOM_CONF__CTYPE_STRING   const char *
#define LOOM_CONF__CTYPE_INT      int64_t
#define LOOM_CONF__CTYPE_BOOL     bool
#define LOOM_CONF__CTYPE_DOUBLE   double
#define LOOM_CONF__CTYPE_DURATION uint64_t
#define LOOM_CONF__CTYPE_SIZE     uint64_t
#define LOOM_CONF__CTYPE_ENUM     int
#define LOOM_CONF__CTYPE_ADDR     const char *
#define LOOM_CONF__CTYPE_LIST     struct loom_conf_list
/* offsetof(T, member), or a compile error if the member is not of the setting's C type. */
#define LOOM_CONF__OFFSET(T, member, ty) \
    _Generic(((T *)0)->member, LOOM_CONF__CTYPE_##ty : offsetof(T, member))

/*
 * LOOM_CONF_FIELD(struct inf_conf, threads, "threads", INT, "4", "worker threads")
 * `ty` is the suffix of an enum loom_conf_type constant: STRING, INT, BOOL, DOUBLE,
 * DURATION, SIZE, ADDR or LIST (enums use LOOM_CONF_ENUM_FIELD).
 */
#define LOOM_CONF_FIELD(T, member, k, ty, d, h)                                         \
    {                                                                                   \
        .key = (k), .type = LOOM_CONF_##ty, .offset = LOOM_CONF__OFFSET(T, member, ty), \
        .def = (d), .help = (h)                                                         \
    }
/* A field bounded to lo..hi inclusive (ns for durations, bytes for sizes). */
#define LOOM_CONF_RANGE_FIELD(T, member, k, ty, d, lo, hi, h)                           \
    {                                                                                   \
        .key = (k), .type = LOOM_CONF_##ty, .offset = LOOM_CONF__OFFSET(T, member, ty), \
        .def = (d), .help = (h), .min = (lo), .max = (hi)                               \
    }
/* An enum: `ch` is a NULL-terminated array of the accepted words; the member is an int. */
#define LOOM_CONF_ENUM_FIELD(T, member, k, ch, d, h)                                      \
    {                                                                                     \
        .key = (k), .type = LOOM_CONF_ENUM, .offset = LOOM_CONF__OFFSET(T, member, ENUM), \
        .def = (d), .help = (h), .choices = (ch)                                          \
    }
/* A secret (a token, a password): redacted by loom_conf_print and in error messages. */
#define LOOM_CONF_SECRET_FIELD(T, member, k, ty, d, h)                                  \
    {                                                                                   \
        .key = (k), .type = LOOM_CONF_##ty, .offset = LOOM_CONF__OFFSET(T, member, ty), \
        .def = (d), .help = (h), .flags = LOOM_CONF_SECRET                              \
    }

/*
 * A table of fields filling the struct at `base` (borrowed; it must outlive the conf). `name`
 * is the section ("inference"), or "" for global settings. Several sections may share a name:
 * their keys are merged, and a key may appear in only one of them.
 */
struct loom_conf_section {
    const char *name;
    const struct loom_conf_field *fields;
    size_t nfields;
    void *base;
};

/* Where a setting's value came from, lowest precedence first. */
enum loom_conf_source {
    LOOM_CONF_FROM_DEFAULT,
    LOOM_CONF_FROM_FILE,
    LOOM_CONF_FROM_ENV,
    LOOM_CONF_FROM_FLAG,
};

struct loom__conf_slot;

/* A loaded configuration. Read `args`, `help` and `print_config`; the rest is private. */
struct loom_conf {
    const struct loom_conf_section *sections; /* borrowed */
    size_t nsections;
    struct loom_arena arena;        /* strings, lists, args and the bookkeeping below */
    struct loom__conf_slot **slots; /* per section, per field: the source of the value */
    const char *file;               /* the file loaded, or NULL */
    const char **args;              /* positional arguments, in order (arena) */
    size_t nargs;
    bool help;         /* --help or -h was given */
    bool print_config; /* --print-config was given */
};

/*
 * Borrow `sections` (n of them) and set every field to its default. The tables are checked:
 * a bad key, a key declared twice, two keys with the same environment name, a reserved global
 * key (config, help, print-config) or a default that does not parse or is out of bounds is a
 * programming error, reported on stderr with the field's name before abort().
 */
void loom_conf_init(struct loom_conf *conf, const struct loom_conf_section *sections, size_t n);

/*
 * Apply, in order, the file named by --config FILE / --config=FILE (else by the environment
 * variable LOOM_CONFIG), the environment `envp` ("NAME=value" strings, NULL-terminated; NULL
 * for none), then the flags in argv[1..argc-1] (argv[0], the program or subcommand, is
 * skipped). Flags are --section.key=VALUE, --section.key VALUE, --key=VALUE for globals, and a
 * bare --key (or --key true|false) for booleans; "--" ends the options; any other argument is
 * positional and kept in conf->args in order. With --help (or -h) nothing is applied and only
 * conf->help and conf->args are filled, so that help works even with a broken config file.
 * Call it once per conf. Returns LOOM_EINVAL (unknown setting, bad value), LOOM_EPARSE (file
 * syntax), LOOM_ETOOBIG (file over 1 MiB, line over 8 KiB) or LOOM_EIO (file unreadable), with
 * a message in `err` that names the setting and what to fix. On error some settings may
 * already be applied: the caller is expected to report and exit.
 */
loom_err loom_conf_load(struct loom_conf *conf, int argc, char *const *argv, char *const *envp,
                        struct loom_error *err);

/*
 * Apply the config file text `text` (`len` bytes) as if it had been read from the file `name`
 * (used in messages). loom_conf_load calls it; it is public for tests and fuzzers. The same
 * errors as loom_conf_load; setting one key twice in a file is an error.
 */
loom_err loom_conf_load_text(struct loom_conf *conf, const char *name, const char *text, size_t len,
                             struct loom_error *err);

/* The source of section/key's current value in *out; false if there is no such setting. */
bool loom_conf_source_of(const struct loom_conf *conf, const char *section, const char *key,
                         enum loom_conf_source *out);

/* The environment variable for a setting into `out` (NUL-terminated, truncated to `size`):
 * ("inference", "model-repository") -> "LOOM_INFERENCE_MODEL_REPOSITORY", ("", "log-level")
 * -> "LOOM_LOG_LEVEL". Returns the full length. */
size_t loom_conf_env_name(const char *section, const char *key, char *out, size_t size);

/*
 * Print the effective configuration to `out` in the file syntax, so that it can be saved and
 * loaded with --config: globals first, then one [section] per name, each value followed by
 * its source (# default, # file PATH:LINE, # env LOOM_X_Y, # flag). Secrets print as
 * "<redacted>" unless empty.
 */
void loom_conf_print(const struct loom_conf *conf, FILE *out);

/*
 * Print the flags to `out` for --help, aligned, with their type, help, default and bounds:
 * the settings of `section` only ("" for the globals), or with NULL the general options
 * (--config, --print-config, --help) and every section.
 */
void loom_conf_usage(const struct loom_conf *conf, const char *section, FILE *out);

/* Free the arena: every string and list the fields point to becomes invalid. The sections and
 * their structs are not touched. The conf may be initialised again. */
void loom_conf_release(struct loom_conf *conf);

#endif
