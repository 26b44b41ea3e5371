/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests for the conf module: field tables, the four layers and their precedence, every
 * type's parsing and bounds, the file syntax, environment and flag naming, the exact error
 * messages a user sees, --print-config round trips and redaction, --help output.
 */
#include "check.h"

#include <loom/conf.h>
#include <loom/core.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- A small platform: globals, and two services sharing a common table ------------------- */

static const char *const log_levels[] = { "debug", "info", "warn", "error", NULL };
static const char *const formats[] = { "text", "json", NULL };

struct g_conf {
    const char *data_dir;
    int log_level;
    bool verbose;
};

struct common_conf {
    const char *listen;
    const char *admin;
};

struct inf_conf {
    int64_t threads;
    uint64_t timeout;
    uint64_t max_body;
    double ratio;
    struct loom_conf_list models;
    const char *token;
    int log_format;
    const char *model_repository;
    bool warm;
};

struct gw_conf {
    struct loom_conf_list upstreams;
};

static const struct loom_conf_field g_fields[] = {
    LOOM_CONF_FIELD(struct g_conf, data_dir, "data-dir", STRING, "./loom-data",
                    "where state is kept"),
    LOOM_CONF_ENUM_FIELD(struct g_conf, log_level, "log-level", log_levels, "info",
                         "least severe level logged"),
    LOOM_CONF_FIELD(struct g_conf, verbose, "verbose", BOOL, NULL, "say more"),
};

static const struct loom_conf_field common_fields[] = {
    LOOM_CONF_FIELD(struct common_conf, listen, "listen", ADDR, ":8081", "HTTP address"),
    LOOM_CONF_FIELD(struct common_conf, admin, "admin", ADDR, NULL, "admin address; empty: off"),
};

static const struct loom_conf_field inf_fields[] = {
    LOOM_CONF_RANGE_FIELD(struct inf_conf, threads, "threads", INT, "4", 1, 256, "worker threads"),
    LOOM_CONF_RANGE_FIELD(struct inf_conf, timeout, "timeout", DURATION, "5s", LOOM_NS_PER_MS,
                          3600 * LOOM_NS_PER_SEC, "request deadline"),
    LOOM_CONF_RANGE_FIELD(struct inf_conf, max_body, "max-body", SIZE, "1MiB", 1024, 1 << 30,
                          "largest request body"),
    LOOM_CONF_FIELD(struct inf_conf, ratio, "ratio", DOUBLE, "0.5", "sampling ratio"),
    LOOM_CONF_FIELD(struct inf_conf, models, "models", LIST, "resnet, bert", "models to load"),
    LOOM_CONF_SECRET_FIELD(struct inf_conf, token, "token", STRING, NULL, "API token"),
    LOOM_CONF_ENUM_FIELD(struct inf_conf, log_format, "log-format", formats, NULL,
                         "log line format"),
    LOOM_CONF_FIELD(struct inf_conf, model_repository, "model-repository", STRING, "/models",
                    "where models are read from"),
    LOOM_CONF_FIELD(struct inf_conf, warm, "warm", BOOL, "true", "load models at start"),
};

static const struct loom_conf_field gw_fields[] = {
    LOOM_CONF_FIELD(struct gw_conf, upstreams, "upstreams", LIST, NULL, "backends"),
};

struct fixture {
    struct g_conf g;
    struct common_conf inf_common, gw_common;
    struct inf_conf inf;
    struct gw_conf gw;
    struct loom_conf_section sections[5];
    struct loom_conf conf;
    struct loom_error err;
};

static void fx_init(struct fixture *fx)
{
    memset(fx, 0, sizeof(*fx));
    struct loom_conf_section s[] = {
        { "", g_fields, LOOM_ARRAY_SIZE(g_fields), &fx->g },
        { "inference", common_fields, LOOM_ARRAY_SIZE(common_fields), &fx->inf_common },
        { "inference", inf_fields, LOOM_ARRAY_SIZE(inf_fields), &fx->inf },
        { "gateway", common_fields, LOOM_ARRAY_SIZE(common_fields), &fx->gw_common },
        { "gateway", gw_fields, LOOM_ARRAY_SIZE(gw_fields), &fx->gw },
    };
    memcpy(fx->sections, s, sizeof(s));
    loom_conf_init(&fx->conf, fx->sections, LOOM_ARRAY_SIZE(s));
}

/* Load with argv = { "serve", args... } and the environment `env` (both NULL-terminated). */
static loom_err fx_load(struct fixture *fx, const char *const *args, const char *const *env)
{
    const char *argv[32] = { "serve" };
    int argc = 1;
    for (; args && args[argc - 1]; argc++)
        argv[argc] = args[argc - 1];
    return loom_conf_load(&fx->conf, argc, (char *const *)argv, (char *const *)env, &fx->err);
}

static loom_err fx_text(struct fixture *fx, const char *text)
{
    return loom_conf_load_text(&fx->conf, "loom.conf", text, strlen(text), &fx->err);
}

static enum loom_conf_source fx_source(struct fixture *fx, const char *section, const char *key)
{
    enum loom_conf_source src = (enum loom_conf_source) - 1;
    CHECK(loom_conf_source_of(&fx->conf, section, key, &src));
    return src;
}

/* A file in /tmp holding `text`; the name is written to path (>= 32 bytes). */
static void write_temp(char *path, const char *text)
{
    strcpy(path, "/tmp/loom-conf-XXXXXX");
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    size_t len = strlen(text);
    CHECK(write(fd, text, len) == (ssize_t)len);
    close(fd);
}

/* What loom_conf_print or loom_conf_usage write, as a string (caller frees). */
static char *capture_print(const struct loom_conf *conf, bool usage, const char *section)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (usage)
        loom_conf_usage(conf, section, f);
    else
        loom_conf_print(conf, f);
    fclose(f);
    return text;
}

/* Expect loading `args`/`env` (and then `text`, if loading succeeded) to fail with `want`. */
#define EXPECT_ERROR(args, env, text, want)      \
    do {                                         \
        struct fixture fx_;                      \
        fx_init(&fx_);                           \
        loom_err rc_ = fx_load(&fx_, args, env); \
        if (rc_ == LOOM_OK && (text))            \
            rc_ = fx_text(&fx_, (text));         \
        CHECK(rc_ != LOOM_OK);                   \
        CHECK_STR(fx_.err.msg, want);            \
        loom_conf_release(&fx_.conf);            \
    } while (0)

#define ARGS(...) ((const char *const[]){ __VA_ARGS__, NULL })

/* ---- Tests ---------------------------------------------------------------------------------- */

static void test_defaults(void)
{
    struct fixture fx;
    fx_init(&fx);
    CHECK_STR(fx.g.data_dir, "./loom-data");
    CHECK_INT(fx.g.log_level, 1);
    CHECK(!fx.g.verbose);
    CHECK_STR(fx.inf_common.listen, ":8081");
    CHECK_STR(fx.inf_common.admin, "");
    CHECK_INT(fx.inf.threads, 4);
    CHECK_UINT(fx.inf.timeout, 5 * LOOM_NS_PER_SEC);
    CHECK_UINT(fx.inf.max_body, 1u << 20);
    CHECK_NEAR(fx.inf.ratio, 0.5, 0);
    CHECK_UINT(fx.inf.models.n, 2);
    CHECK_STR(fx.inf.models.items[0], "resnet");
    CHECK_STR(fx.inf.models.items[1], "bert");
    CHECK_STR(fx.inf.token, "");
    CHECK_INT(fx.inf.log_format, 0);
    CHECK(fx.inf.warm);
    CHECK_UINT(fx.gw.upstreams.n, 0);
    CHECK_INT(fx_source(&fx, "inference", "threads"), LOOM_CONF_FROM_DEFAULT);
    enum loom_conf_source src;
    CHECK(!loom_conf_source_of(&fx.conf, "inference", "nope", &src));
    CHECK(!loom_conf_source_of(&fx.conf, "", "threads", &src));
    /* Loading nothing changes nothing. */
    CHECK_INT(fx_load(&fx, NULL, NULL), LOOM_OK);
    CHECK_INT(fx.inf.threads, 4);
    CHECK_UINT(fx.conf.nargs, 0);
    CHECK(!fx.conf.help && !fx.conf.print_config);
    loom_conf_release(&fx.conf);
}

static void test_precedence(void)
{
    char path[32];
    write_temp(path, "data-dir = \"/from/file\"\n[inference]\nthreads = 8\n");
    const char *env[] = { "LOOM_INFERENCE_THREADS=16", "LOOM_DATA_DIR=/from/env", NULL };
    struct fixture fx;

    /* Defaults only. */
    fx_init(&fx);
    CHECK_INT(fx_load(&fx, ARGS("inference"), NULL), LOOM_OK);
    CHECK_INT(fx.inf.threads, 4);
    loom_conf_release(&fx.conf);

    /* The file overrides the defaults. */
    fx_init(&fx);
    CHECK_INT(fx_load(&fx, ARGS("--config", path), NULL), LOOM_OK);
    CHECK_INT(fx.inf.threads, 8);
    CHECK_STR(fx.g.data_dir, "/from/file");
    CHECK_INT(fx_source(&fx, "inference", "threads"), LOOM_CONF_FROM_FILE);
    CHECK_INT(fx_source(&fx, "", "data-dir"), LOOM_CONF_FROM_FILE);
    CHECK_INT(fx_source(&fx, "inference", "timeout"), LOOM_CONF_FROM_DEFAULT);
    loom_conf_release(&fx.conf);

    /* The environment overrides the file. */
    fx_init(&fx);
    CHECK_INT(fx_load(&fx, ARGS("--config", path), env), LOOM_OK);
    CHECK_INT(fx.inf.threads, 16);
    CHECK_STR(fx.g.data_dir, "/from/env");
    CHECK_INT(fx_source(&fx, "inference", "threads"), LOOM_CONF_FROM_ENV);
    loom_conf_release(&fx.conf);

    /* Flags override the environment, whatever their position relative to --config. */
    fx_init(&fx);
    CHECK_INT(fx_load(&fx,
                      ARGS("--inference.threads=32", "--data-dir", "/from/flag", "--config", path),
                      env),
              LOOM_OK);
    CHECK_INT(fx.inf.threads, 32);
    CHECK_STR(fx.g.data_dir, "/from/flag");
    CHECK_INT(fx_source(&fx, "inference", "threads"), LOOM_CONF_FROM_FLAG);
    CHECK_INT(fx_source(&fx, "", "data-dir"), LOOM_CONF_FROM_FLAG);
    loom_conf_release(&fx.conf);

    /* A later flag wins over an earlier one. */
    fx_init(&fx);
    CHECK_INT(fx_load(&fx, ARGS("--inference.threads=2", "--inference.threads", "3"), NULL),
              LOOM_OK);
    CHECK_INT(fx.inf.threads, 3);
    loom_conf_release(&fx.conf);
    unlink(path);
}

static void test_config_file_sources(void)
{
    char path[32], other[32], envc[64];
    write_temp(path, "[inference]\nthreads = 8\n");
    write_temp(other, "[inference]\nthreads = 9\n");
    snprintf(envc, sizeof(envc), "LOOM_CONFIG=%s", other);
    const char *env[] = { envc, NULL };
    struct fixture fx;

    /* LOOM_CONFIG names the file when --config does not. */
    fx_init(&fx);
    CHECK_INT(fx_load(&fx, NULL, env), LOOM_OK);
    CHECK_INT(fx.inf.threads, 9);
    loom_conf_release(&fx.conf);

    /* --config=FILE wins over LOOM_CONFIG. */
    char opt[64];
    snprintf(opt, sizeof(opt), "--config=%s", path);
    fx_init(&fx);
    CHECK_INT(fx_load(&fx, ARGS(opt), env), LOOM_OK);
    CHECK_INT(fx.inf.threads, 8);
    CHECK_STR(fx.conf.file, path);
    loom_conf_release(&fx.conf);

    EXPECT_ERROR(ARGS("--config", "/nonexistent/loom.conf"), NULL, NULL,
                 "cannot read the config file /nonexistent/loom.conf (from --config): No such "
                 "file or directory");
    EXPECT_ERROR(NULL, ARGS("LOOM_CONFIG=/nonexistent/x"), NULL,
                 "cannot read the config file /nonexistent/x (from LOOM_CONFIG): No such file or "
                 "directory");
    EXPECT_ERROR(ARGS("--config"), NULL, NULL,
                 "missing value after --config (write --config FILE)");
    EXPECT_ERROR(ARGS("--config", "--inference.threads=3"), NULL, NULL,
                 "missing value after --config (write --config FILE)");
    EXPECT_ERROR(ARGS("--config", "/tmp"), NULL, NULL,
                 "cannot read the config file /tmp (from --config): Is a directory");
    unlink(path);
    unlink(other);
}

static void test_types(void)
{
    struct fixture fx;
    fx_init(&fx);
    CHECK_INT(fx_load(&fx,
                      ARGS("--inference.threads=256", "--inference.timeout=250ms",
                           "--inference.max-body=64KiB", "--inference.ratio=1e-3",
                           "--inference.models= a , b,c ", "--inference.token=s3cret",
                           "--inference.log-format=JSON", "--inference.warm=no", "--verbose",
                           "--inference.listen=[::1]:8080", "--gateway.admin=localhost:65535",
                           "--gateway.listen=0.0.0.0:1", "--data-dir=  spaced  ", "--log-level",
                           "warn", "--gateway.upstreams="),
                      NULL),
              LOOM_OK);
    CHECK_INT(fx.inf.threads, 256);
    CHECK_UINT(fx.inf.timeout, 250 * LOOM_NS_PER_MS);
    CHECK_UINT(fx.inf.max_body, 64 * 1024);
    CHECK_NEAR(fx.inf.ratio, 1e-3, 0);
    CHECK_UINT(fx.inf.models.n, 3);
    CHECK_STR(fx.inf.models.items[0], "a");
    CHECK_STR(fx.inf.models.items[1], "b");
    CHECK_STR(fx.inf.models.items[2], "c");
    CHECK_STR(fx.inf.token, "s3cret");
    CHECK_INT(fx.inf.log_format, 1);
    CHECK(!fx.inf.warm);
    CHECK(fx.g.verbose);
    CHECK_STR(fx.inf_common.listen, "[::1]:8080");
    CHECK_STR(fx.gw_common.admin, "localhost:65535");
    CHECK_STR(fx.gw_common.listen, "0.0.0.0:1");
    CHECK_STR(fx.g.data_dir, "  spaced  "); /* strings keep their spaces */
    CHECK_INT(fx.g.log_level, 2);
    CHECK_UINT(fx.gw.upstreams.n, 0);
    loom_conf_release(&fx.conf);
    /* A unix socket is an address too. */
    fx_init(&fx);
    CHECK_INT(fx_load(&fx, ARGS("--inference.listen=unix:/run/loom/inference.sock"), NULL),
              LOOM_OK);
    CHECK_STR(fx.inf_common.listen, "unix:/run/loom/inference.sock");
    loom_conf_release(&fx.conf);

    /* More accepted forms, one at a time. */
    struct {
        const char *arg;
        const char *key;
        uint64_t want;
    } ok[] = {
        { "--inference.threads=+1", "threads", 1 },
        { "--inference.threads= 7 ", "threads", 7 },
        { "--inference.timeout=100", "timeout", 100 * LOOM_NS_PER_MS }, /* bare: ms */
        { "--inference.timeout=2m", "timeout", 120 * LOOM_NS_PER_SEC },
        { "--inference.timeout=1h", "timeout", 3600 * LOOM_NS_PER_SEC },
        { "--inference.timeout=1ms", "timeout", LOOM_NS_PER_MS },
        { "--inference.max-body=10MB", "max-body", 10000000 },
        { "--inference.max-body=1024", "max-body", 1024 },
        { "--inference.max-body=1GiB", "max-body", 1u << 30 },
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(ok); i++) {
        fx_init(&fx);
        CHECK_INT(fx_load(&fx, ARGS(ok[i].arg), NULL), LOOM_OK);
        uint64_t got = strcmp(ok[i].key, "threads") == 0   ? (uint64_t)fx.inf.threads
                       : strcmp(ok[i].key, "timeout") == 0 ? fx.inf.timeout
                                                           : fx.inf.max_body;
        CHECK_UINT(got, ok[i].want);
        loom_conf_release(&fx.conf);
    }

    /* Addresses. */
    const char *addrs[] = { ":9000",
                            "127.0.0.1:1",
                            "[::]:80",
                            "[::1]:8080",
                            "[fe80::1%eth0]:443",
                            "my-host.example_1:65535",
                            "[::ffff:1.2.3.4]:1" };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(addrs); i++) {
        char arg[64];
        snprintf(arg, sizeof(arg), "--inference.listen=%s", addrs[i]);
        fx_init(&fx);
        CHECK_INT(fx_load(&fx, ARGS(arg), NULL), LOOM_OK);
        CHECK_STR(fx.inf_common.listen, addrs[i]);
        loom_conf_release(&fx.conf);
    }
    /* An address whose default is empty may be emptied (switched off); others may not. */
    fx_init(&fx);
    CHECK_INT(fx_load(&fx, ARGS("--inference.admin=:9", "--inference.admin="), NULL), LOOM_OK);
    CHECK_STR(fx.inf_common.admin, "");
    loom_conf_release(&fx.conf);

    /* Booleans: a bare flag, or "true"/"false" as the next argument. */
    fx_init(&fx);
    CHECK_INT(fx_load(&fx, ARGS("--inference.warm", "false", "--verbose", "true", "x"), NULL),
              LOOM_OK);
    CHECK(!fx.inf.warm);
    CHECK(fx.g.verbose);
    CHECK_UINT(fx.conf.nargs, 1);
    loom_conf_release(&fx.conf);
    fx_init(&fx);
    CHECK_INT(fx_load(&fx, ARGS("--verbose", "inference"), NULL), LOOM_OK);
    CHECK(fx.g.verbose);
    CHECK_UINT(fx.conf.nargs, 1);
    CHECK_STR(fx.conf.args[0], "inference");
    loom_conf_release(&fx.conf);
    const char *bools[][2] = { { "on", "1" }, { "off", "0" }, { "YES", "1" }, { "0", "0" } };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(bools); i++) {
        char arg[64];
        snprintf(arg, sizeof(arg), "--verbose=%s", bools[i][0]);
        fx_init(&fx);
        CHECK_INT(fx_load(&fx, ARGS(arg), NULL), LOOM_OK);
        CHECK_INT(fx.g.verbose, bools[i][1][0] == '1');
        loom_conf_release(&fx.conf);
    }
}

static void test_bad_values(void)
{
    EXPECT_ERROR(ARGS("--inference.listen=abc"), NULL, NULL,
                 "--inference.listen: \"abc\" is not HOST:PORT");
    EXPECT_ERROR(NULL, ARGS("LOOM_INFERENCE_THREADS=0"), NULL,
                 "LOOM_INFERENCE_THREADS: \"0\" is out of range 1..256");
    EXPECT_ERROR(ARGS("--inference.threads=257"), NULL, NULL,
                 "--inference.threads: \"257\" is out of range 1..256");
    EXPECT_ERROR(ARGS("--inference.threads=99999999999999999999"), NULL, NULL,
                 "--inference.threads: \"99999999999999999999\" is out of range 1..256");
    EXPECT_ERROR(ARGS("--inference.threads=four"), NULL, NULL,
                 "--inference.threads: \"four\" is not an integer");
    EXPECT_ERROR(ARGS("--inference.threads=1.5"), NULL, NULL,
                 "--inference.threads: \"1.5\" is not an integer");
    EXPECT_ERROR(ARGS("--inference.timeout=0s"), NULL, NULL,
                 "--inference.timeout: \"0s\" is out of range 1ms..1h");
    EXPECT_ERROR(ARGS("--inference.timeout=61m"), NULL, NULL,
                 "--inference.timeout: \"61m\" is out of range 1ms..1h");
    EXPECT_ERROR(ARGS("--inference.timeout=5 s"), NULL, NULL,
                 "--inference.timeout: \"5 s\" is not a duration (a whole number with a unit: "
                 "250ms, 5s, 2m, 1h)");
    EXPECT_ERROR(ARGS("--inference.max-body=1023"), NULL, NULL,
                 "--inference.max-body: \"1023\" is out of range 1KiB..1GiB");
    EXPECT_ERROR(ARGS("--inference.max-body=lots"), NULL, NULL,
                 "--inference.max-body: \"lots\" is not a size (a whole number of bytes with an "
                 "optional unit: 512, 64KiB, 10MB, 1GiB)");
    EXPECT_ERROR(ARGS("--inference.ratio=half"), NULL, NULL,
                 "--inference.ratio: \"half\" is not a number");
    EXPECT_ERROR(ARGS("--inference.ratio=nan"), NULL, NULL,
                 "--inference.ratio: \"nan\" is not a finite number");
    EXPECT_ERROR(ARGS("--verbose=maybe"), NULL, NULL,
                 "--verbose: \"maybe\" is not a boolean (true/false, yes/no, on/off, 1/0)");
    EXPECT_ERROR(ARGS("--inference.log-format=jsn"), NULL, NULL,
                 "--inference.log-format: \"jsn\" is not one of: text, json (did you mean "
                 "\"json\"?)");
    EXPECT_ERROR(ARGS("--log-level=loud"), NULL, NULL,
                 "--log-level: \"loud\" is not one of: debug, info, warn, error");
    EXPECT_ERROR(ARGS("--inference.models=a,,b"), NULL, NULL,
                 "--inference.models: \"a,,b\" has an empty item (items are separated by commas)");
    EXPECT_ERROR(ARGS("--inference.models=a,"), NULL, NULL,
                 "--inference.models: \"a,\" has an empty item (items are separated by commas)");

    /* Addresses: each says what is wrong. */
    EXPECT_ERROR(ARGS("--inference.listen="), NULL, NULL,
                 "--inference.listen: \"\" is not HOST:PORT (e.g. 127.0.0.1:8080, or :8080 for "
                 "all interfaces)");
    EXPECT_ERROR(ARGS("--inference.listen=host:65536"), NULL, NULL,
                 "--inference.listen: \"host:65536\" is not HOST:PORT (the port must be a number "
                 "in 0..65535)");
    EXPECT_ERROR(ARGS("--inference.listen=host:http"), NULL, NULL,
                 "--inference.listen: \"host:http\" is not HOST:PORT (the port must be a number "
                 "in 0..65535)");
    EXPECT_ERROR(ARGS("--inference.listen=host:"), NULL, NULL,
                 "--inference.listen: \"host:\" is not HOST:PORT (the port is missing)");
    EXPECT_ERROR(ARGS("--inference.listen=::1:8080"), NULL, NULL,
                 "--inference.listen: \"::1:8080\" is not HOST:PORT (write IPv6 addresses in "
                 "brackets, e.g. [::1]:8080)");
    EXPECT_ERROR(ARGS("--inference.listen=unix:run/loom.sock"), NULL, NULL,
                 "--inference.listen: \"unix:run/loom.sock\" is not unix:/ABSOLUTE/PATH (of at "
                 "most 107 bytes)");
    EXPECT_ERROR(ARGS("--inference.listen=[::1]8080"), NULL, NULL,
                 "--inference.listen: \"[::1]8080\" is not HOST:PORT (missing :PORT)");
    EXPECT_ERROR(ARGS("--inference.listen=[::1:8080"), NULL, NULL,
                 "--inference.listen: \"[::1:8080\" is not HOST:PORT (missing \"]\")");
    EXPECT_ERROR(ARGS("--inference.listen=[nothex]:80"), NULL, NULL,
                 "--inference.listen: \"[nothex]:80\" is not HOST:PORT (bad IPv6 address in "
                 "brackets)");
    EXPECT_ERROR(ARGS("--inference.listen=my host:80"), NULL, NULL,
                 "--inference.listen: \"my host:80\" is not HOST:PORT (bad host name)");

    /* Long and unprintable values are shortened and escaped in messages. */
    char arg[200];
    snprintf(arg, sizeof(arg), "--inference.threads=%0150d", 7);
    arg[30] = 'x';
    struct fixture fx;
    fx_init(&fx);
    CHECK(fx_load(&fx, ARGS(arg), NULL) != LOOM_OK);
    CHECK_CONTAINS(fx.err.msg, "...\" is not an integer");
    CHECK(strlen(fx.err.msg) < 120);
    loom_conf_release(&fx.conf);
    EXPECT_ERROR(ARGS("--inference.threads=\x1b[31m"), NULL, NULL,
                 "--inference.threads: \"\\x1b[31m\" is not an integer");
}

static void test_unknown_names(void)
{
    EXPECT_ERROR(ARGS("--infrence.listen=:80"), NULL, NULL,
                 "unknown option --infrence.listen (did you mean --inference.listen?)");
    EXPECT_ERROR(ARGS("--inference.lsten", ":80"), NULL, NULL,
                 "unknown option --inference.lsten (did you mean --inference.listen?)");
    EXPECT_ERROR(ARGS("--log-levl=info"), NULL, NULL,
                 "unknown option --log-levl (did you mean --log-level?)");
    EXPECT_ERROR(ARGS("--print-confg"), NULL, NULL,
                 "unknown option --print-confg (did you mean --print-config?)");
    /* The right key in the wrong place. */
    EXPECT_ERROR(ARGS("--threads=4"), NULL, NULL,
                 "unknown option --threads (did you mean --inference.threads?)");
    EXPECT_ERROR(ARGS("--gateway.threads=4"), NULL, NULL,
                 "unknown option --gateway.threads (did you mean --inference.threads?)");
    EXPECT_ERROR(ARGS("--inference=4"), NULL, NULL,
                 "unknown option --inference (set a key of [inference] with "
                 "--inference.KEY=VALUE)");
    EXPECT_ERROR(ARGS("--frobnicate"), NULL, NULL, "unknown option --frobnicate (see --help)");
    EXPECT_ERROR(ARGS("--.data-dir=x"), NULL, NULL,
                 "unknown option --.data-dir (did you mean --data-dir?)");
    EXPECT_ERROR(ARGS("--inference.listen"), NULL, NULL,
                 "missing value after --inference.listen (write --inference.listen=VALUE)");
    EXPECT_ERROR(ARGS("--inference.listen", "--verbose"), NULL, NULL,
                 "missing value after --inference.listen (write --inference.listen=VALUE)");
    EXPECT_ERROR(ARGS("--help=yes"), NULL, NULL, "--help takes no value");

    /* The environment: LOOM_<known section>_<unknown key> is an error, the rest is ignored. */
    EXPECT_ERROR(NULL, ARGS("LOOM_INFERENCE_LISTN=:80"), NULL,
                 "LOOM_INFERENCE_LISTN: unknown setting for [inference] (did you mean "
                 "LOOM_INFERENCE_LISTEN?)");
    EXPECT_ERROR(NULL, ARGS("LOOM_GATEWAY_ZZZZZZZZ=1"), NULL,
                 "LOOM_GATEWAY_ZZZZZZZZ: unknown setting for [gateway] (see loom --help for the "
                 "keys)");
    struct fixture fx;
    fx_init(&fx);
    CHECK_INT(fx_load(&fx, NULL,
                      ARGS("LOOM_FOO_BAR=1", "LOOM_LOG_LEVL=x", "LOOM_INFERENCE=1", "LOOM_=1",
                           "LOOM_GATEWAY_=2", "HOME=/root", "LOOMY=1", "NOEQUALS")),
              LOOM_OK);
    CHECK_INT(fx.g.log_level, 1);
    loom_conf_release(&fx.conf);
}

static void test_env_names(void)
{
    char name[64];
    CHECK_UINT(loom_conf_env_name("inference", "model-repository", name, sizeof(name)), 31);
    CHECK_STR(name, "LOOM_INFERENCE_MODEL_REPOSITORY");
    loom_conf_env_name("", "log-level", name, sizeof(name));
    CHECK_STR(name, "LOOM_LOG_LEVEL");
    CHECK_UINT(loom_conf_env_name("inference", "threads", name, 8), 22);
    CHECK_STR(name, "LOOM_IN");

    struct fixture fx;
    fx_init(&fx);
    CHECK_INT(fx_load(&fx, NULL,
                      ARGS("LOOM_INFERENCE_MODEL_REPOSITORY=/srv/models", "LOOM_LOG_LEVEL=error",
                           "LOOM_VERBOSE=yes", "LOOM_GATEWAY_LISTEN=:7000",
                           "LOOM_INFERENCE_TOKEN=", "LOOM_GATEWAY_UPSTREAMS=a:1,b:2")),
              LOOM_OK);
    CHECK_STR(fx.inf.model_repository, "/srv/models");
    CHECK_INT(fx.g.log_level, 3);
    CHECK(fx.g.verbose);
    CHECK_STR(fx.gw_common.listen, ":7000");
    CHECK_STR(fx.inf_common.listen, ":8081");
    CHECK_STR(fx.inf.token, "");
    CHECK_UINT(fx.gw.upstreams.n, 2);
    CHECK_STR(fx.gw.upstreams.items[1], "b:2");
    CHECK_INT(fx_source(&fx, "inference", "model-repository"), LOOM_CONF_FROM_ENV);
    CHECK_INT(fx_source(&fx, "inference", "listen"), LOOM_CONF_FROM_DEFAULT);
    loom_conf_release(&fx.conf);
}

static void test_positional(void)
{
    struct fixture fx;
    fx_init(&fx);
    CHECK_INT(fx_load(&fx,
                      ARGS("inference", "--inference.threads", "8", "gateway", "-", "-x", "--",
                           "--verbose", "registry"),
                      NULL),
              LOOM_OK);
    CHECK_INT(fx.inf.threads, 8);
    CHECK(!fx.g.verbose);
    CHECK_UINT(fx.conf.nargs, 6);
    const char *want[] = { "inference", "gateway", "-", "-x", "--verbose", "registry" };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(want) && i < fx.conf.nargs; i++)
        CHECK_STR(fx.conf.args[i], want[i]);
    loom_conf_release(&fx.conf);

    /* --print-config and --help are recorded; with --help nothing else is applied or checked,
     * so that help works even when the config file or a flag is broken. */
    fx_init(&fx);
    CHECK_INT(fx_load(&fx, ARGS("--print-config", "--inference.threads=9"), NULL), LOOM_OK);
    CHECK(fx.conf.print_config && !fx.conf.help);
    loom_conf_release(&fx.conf);
    fx_init(&fx);
    CHECK_INT(fx_load(&fx, ARGS("inference", "--bogus", "--inference.threads=0", "--help"),
                      ARGS("LOOM_CONFIG=/nonexistent", "LOOM_INFERENCE_THREADS=0")),
              LOOM_OK);
    CHECK(fx.conf.help);
    CHECK_INT(fx.inf.threads, 4);
    CHECK_UINT(fx.conf.nargs, 1);
    CHECK_STR(fx.conf.args[0], "inference");
    loom_conf_release(&fx.conf);
    fx_init(&fx);
    CHECK_INT(fx_load(&fx, ARGS("-h"), NULL), LOOM_OK);
    CHECK(fx.conf.help);
    CHECK_UINT(fx.conf.nargs, 0);
    loom_conf_release(&fx.conf);
    fx_init(&fx);
    CHECK_INT(fx_load(&fx, ARGS("--data-dir", "-h"), NULL), LOOM_OK);
    CHECK(fx.conf.help);
    loom_conf_release(&fx.conf);
    /* After "--", --help is an argument like any other. */
    fx_init(&fx);
    CHECK_INT(fx_load(&fx, ARGS("--", "--help"), NULL), LOOM_OK);
    CHECK(!fx.conf.help);
    CHECK_UINT(fx.conf.nargs, 1);
    loom_conf_release(&fx.conf);
}

static void test_same_name_sections(void)
{
    struct fixture fx;
    fx_init(&fx);
    CHECK_INT(fx_text(&fx, "[inference]\nlisten = :9001\nthreads = 3\n"
                           "[gateway]\nlisten = :9002\nupstreams = a,b\n"),
              LOOM_OK);
    CHECK_INT(fx_load(&fx, ARGS("--inference.admin=:9003", "--gateway.admin=:9004"), NULL),
              LOOM_OK);
    CHECK_STR(fx.inf_common.listen, ":9001");
    CHECK_INT(fx.inf.threads, 3);
    CHECK_STR(fx.gw_common.listen, ":9002");
    CHECK_STR(fx.inf_common.admin, ":9003");
    CHECK_STR(fx.gw_common.admin, ":9004");
    CHECK_UINT(fx.gw.upstreams.n, 2);
    /* One [inference] block in the output, holding the keys of both tables. */
    char *text = capture_print(&fx.conf, false, NULL);
    const char *first = strstr(text, "[inference]");
    CHECK(first && !strstr(first + 1, "[inference]"));
    CHECK(first && strstr(first, "listen = \":9001\"") && strstr(first, "threads = 3"));
    free(text);
    loom_conf_release(&fx.conf);
}

static void test_file_syntax(void)
{
    struct fixture fx;
    fx_init(&fx);
    const char *text = "\xef\xbb\xbf# a comment\r\n"
                       "\n"
                       "   # an indented comment\n"
                       "data-dir = \"a \\\"q\\\" \\\\ \\n\\t \\u00e9 \\U0001F600\" # trailing\n"
                       "log-level=debug\n"
                       "verbose = true\r\n"
                       "[ inference ]   # comment after a header\n"
                       "listen = 127.0.0.1:8081\n"
                       "admin = \"\"\n"
                       "token = abc#1 # the first # follows no space, so it is kept\n"
                       "model-repository = 'C:\\models\\'\n"
                       "models = [\"a\", \"b,c\", d ,]  # one item holds a comma\n"
                       "threads=\"12\"\n"
                       "timeout = 2m\n"
                       "ratio = -2.5e-1\n"
                       "[gateway]\n"
                       "upstreams = []\n";
    CHECK_INT(fx_text(&fx, text), LOOM_OK);
    CHECK_STR(fx.g.data_dir, "a \"q\" \\ \n\t \xc3\xa9 \xf0\x9f\x98\x80");
    CHECK_INT(fx.g.log_level, 0);
    CHECK(fx.g.verbose);
    CHECK_STR(fx.inf_common.listen, "127.0.0.1:8081");
    CHECK_STR(fx.inf_common.admin, "");
    CHECK_STR(fx.inf.token, "abc#1");
    CHECK_STR(fx.inf.model_repository, "C:\\models\\");
    CHECK_UINT(fx.inf.models.n, 3);
    CHECK_STR(fx.inf.models.items[1], "b,c");
    CHECK_STR(fx.inf.models.items[2], "d");
    CHECK_INT(fx.inf.threads, 12);
    CHECK_UINT(fx.inf.timeout, 120 * LOOM_NS_PER_SEC);
    CHECK_NEAR(fx.inf.ratio, -0.25, 0);
    CHECK_UINT(fx.gw.upstreams.n, 0);
    CHECK_INT(fx_source(&fx, "inference", "ratio"), LOOM_CONF_FROM_FILE);
    loom_conf_release(&fx.conf);

    /* Empty and comment-only files are fine. */
    fx_init(&fx);
    CHECK_INT(fx_text(&fx, ""), LOOM_OK);
    CHECK_INT(fx_text(&fx, "# nothing\n\n"), LOOM_OK);
    CHECK_INT(fx_text(&fx, "verbose = on"), LOOM_OK); /* no final newline */
    CHECK(fx.g.verbose);
    loom_conf_release(&fx.conf);

    /* Errors carry file:line. */
    EXPECT_ERROR(NULL, NULL,
                 "# 1\n# 2\n# 3\n# 4\n# 5\n# 6\n# 7\n# 8\n# 9\n# 10\n[inference]\nlsten = :80\n",
                 "loom.conf:12: unknown key \"lsten\" in [inference] (did you mean \"listen\"?)");
    EXPECT_ERROR(NULL, NULL, "# 1\n\n[foo]\n", "loom.conf:3: unknown section [foo]");
    EXPECT_ERROR(NULL, NULL, "[gatewy]\n",
                 "loom.conf:1: unknown section [gatewy] (did you mean "
                 "[gateway]?)");
    EXPECT_ERROR(NULL, NULL, "[inference]\nthreads = x\n",
                 "loom.conf:2: inference.threads: \"x\" is not an integer");
    EXPECT_ERROR(NULL, NULL, "[inference]\nlisten = \"abc\"\n",
                 "loom.conf:2: inference.listen: \"abc\" is not HOST:PORT");
    EXPECT_ERROR(NULL, NULL, "[inference]\nlog-level = info\n",
                 "loom.conf:2: unknown key \"log-level\" in [inference] (it is a global key: "
                 "move it above the first [section])");
    EXPECT_ERROR(NULL, NULL, "threads = 4\n",
                 "loom.conf:1: unknown key \"threads\" at the top level (it belongs in "
                 "[inference])");
    EXPECT_ERROR(NULL, NULL, "verbose\n",
                 "loom.conf:1: expected key = value or [section], got \"verbose\"");
    EXPECT_ERROR(NULL, NULL, "\nverbose =\n",
                 "loom.conf:2: missing value after \"=\" (write \"\" for an empty string)");
    EXPECT_ERROR(NULL, NULL, "verbose = # nothing\n",
                 "loom.conf:1: missing value after \"=\" (write \"\" for an empty string)");
    EXPECT_ERROR(NULL, NULL, "data-dir = \"abc\n",
                 "loom.conf:1: unterminated string (missing closing \")");
    EXPECT_ERROR(NULL, NULL, "data-dir = 'abc\n",
                 "loom.conf:1: unterminated string (missing closing ')");
    EXPECT_ERROR(NULL, NULL, "data-dir = \"a\\qb\"\n",
                 "loom.conf:1: unknown escape \\q in a string (write a backslash as \\\\)");
    EXPECT_ERROR(NULL, NULL, "data-dir = \"\\u00\"\n",
                 "loom.conf:1: bad \\u escape (write \\u followed by 4 hex digits of a Unicode "
                 "scalar value other than 0)");
    EXPECT_ERROR(NULL, NULL, "data-dir = \"\\ud800\"\n",
                 "loom.conf:1: bad \\u escape (write \\u followed by 4 hex digits of a Unicode "
                 "scalar value other than 0)");
    EXPECT_ERROR(NULL, NULL, "data-dir = \"\\u0000\"\n",
                 "loom.conf:1: bad \\u escape (write \\u followed by 4 hex digits of a Unicode "
                 "scalar value other than 0)");
    EXPECT_ERROR(NULL, NULL, "data-dir = \"a\" b\n",
                 "loom.conf:1: unexpected \"b\" after the value");
    EXPECT_ERROR(NULL, NULL, "data-dir = \"\"\"a\"\"\"\n",
                 "loom.conf:1: multi-line strings are not supported");
    EXPECT_ERROR(NULL, NULL, "data-dir = [\"a\"]\n",
                 "loom.conf:1: data-dir: an array is accepted only for lists");
    EXPECT_ERROR(NULL, NULL, "[gateway]\nupstreams = [\"a\",\n\"b\"]\n",
                 "loom.conf:2: unterminated array (missing \"]\"; arrays must be on one line)");
    EXPECT_ERROR(NULL, NULL, "[gateway]\nupstreams = [\"a\" \"b\"]\n",
                 "loom.conf:2: expected \",\" or \"]\" in the array");
    EXPECT_ERROR(NULL, NULL, "[gateway]\nupstreams = [\"a\", \"\"]\n",
                 "loom.conf:2: gateway.upstreams: item 2 of the array is empty");
    EXPECT_ERROR(NULL, NULL, "[gateway]\nupstreams = [a, , b]\n",
                 "loom.conf:2: empty item in the array");
    EXPECT_ERROR(NULL, NULL, "[gateway]\nupstreams = [[\"a\"]]\n",
                 "loom.conf:2: nested arrays are not supported");
    EXPECT_ERROR(NULL, NULL, "[gateway]\nupstreams = [\"a\"] x\n",
                 "loom.conf:2: unexpected \"x\" after the value");
    EXPECT_ERROR(NULL, NULL, "[inference\n", "loom.conf:1: missing \"]\" after the section name");
    EXPECT_ERROR(NULL, NULL, "[inference] x\n", "loom.conf:1: unexpected \"x\" after [section]");
    EXPECT_ERROR(NULL, NULL, "[]\n", "loom.conf:1: unknown section []");
    EXPECT_ERROR(NULL, NULL, "[[inference]]\n",
                 "loom.conf:1: arrays of tables ([[...]]) are not supported");
    EXPECT_ERROR(NULL, NULL, "[inference]\nthreads = 1\n\nthreads = 2\n",
                 "loom.conf:4: \"threads\" is set twice (first on line 2)");
    EXPECT_ERROR(NULL, NULL, "verbose = 1\nx\0y = 2\n",
                 "loom.conf:2: expected key = value or "
                 "[section], got \"x\"");
}

static void test_limits(void)
{
    /* A NUL byte in a line (only visible when the length is given). */
    struct fixture fx;
    fx_init(&fx);
    const char nul[] = "verbose = 1\nx\0y = 2\n";
    CHECK_INT(loom_conf_load_text(&fx.conf, "n.conf", nul, sizeof(nul) - 1, &fx.err), LOOM_EPARSE);
    CHECK_STR(fx.err.msg, "n.conf:2: NUL byte in the line");
    loom_conf_release(&fx.conf);

    /* A line of exactly 8 KiB is fine; one byte more is not. */
    size_t n = 8192;
    char *line = malloc(n + 16);
    memcpy(line, "data-dir = \"", 12);
    memset(line + 12, 'a', n - 13);
    line[n - 1] = '"';
    line[n] = '\n';
    line[n + 1] = '\0';
    fx_init(&fx);
    CHECK_INT(fx_text(&fx, line), LOOM_OK);
    CHECK_UINT(strlen(fx.g.data_dir), n - 13);
    loom_conf_release(&fx.conf);
    memmove(line + 1, line, n + 2);
    line[0] = ' ';
    fx_init(&fx);
    CHECK_INT(fx_text(&fx, line), LOOM_ETOOBIG);
    CHECK_STR(fx.err.msg, "loom.conf:1: the line is longer than 8 KiB");
    loom_conf_release(&fx.conf);
    free(line);

    /* Files over 1 MiB, through the real file path too. */
    size_t big = (1u << 20) + 1;
    char *text = malloc(big + 1);
    memset(text, '\n', big);
    text[big] = '\0';
    fx_init(&fx);
    CHECK_INT(fx_text(&fx, text), LOOM_ETOOBIG);
    CHECK_STR(fx.err.msg, "loom.conf: the config file is larger than 1 MiB");
    loom_conf_release(&fx.conf);
    char path[32], expect[96];
    write_temp(path, text);
    fx_init(&fx);
    CHECK_INT(fx_load(&fx, ARGS("--config", path), NULL), LOOM_ETOOBIG);
    snprintf(expect, sizeof(expect), "%s: the config file is larger than 1 MiB", path);
    CHECK_STR(fx.err.msg, expect);
    loom_conf_release(&fx.conf);
    unlink(path);
    /* Exactly 1 MiB is accepted. */
    text[big - 1] = '\0';
    write_temp(path, text);
    fx_init(&fx);
    CHECK_INT(fx_load(&fx, ARGS("--config", path), NULL), LOOM_OK);
    loom_conf_release(&fx.conf);
    unlink(path);
    free(text);
}

static void test_print_round_trip(void)
{
    struct fixture fx;
    fx_init(&fx);
    CHECK_INT(fx_text(&fx, "[inference]\nthreads = 7\n"), LOOM_OK);
    CHECK_INT(fx_load(&fx,
                      ARGS("--data-dir=we\"ird \\ path\n\ttab \x01 \xc3\xa9", "--verbose",
                           "--inference.ratio=0.1", "--inference.timeout=1500ms",
                           "--inference.max-body=1000000", "--inference.models=x, y z,w\"q",
                           "--inference.log-format=json", "--gateway.listen=[::1]:8443",
                           "--inference.admin=:9100", "--inference.warm=false"),
                      ARGS("LOOM_LOG_LEVEL=warn", "LOOM_GATEWAY_UPSTREAMS=u1:80")),
              LOOM_OK);
    char *text = capture_print(&fx.conf, false, NULL);
    CHECK_CONTAINS(text, "threads = 7");
    CHECK_CONTAINS(text, "# file loom.conf:2\n");
    CHECK_CONTAINS(text, "log-level = \"warn\"");
    CHECK_CONTAINS(text, "# env LOOM_LOG_LEVEL\n");
    CHECK_CONTAINS(text, "ratio = 0.1 ");
    CHECK_CONTAINS(text, "timeout = \"1500ms\"");
    CHECK_CONTAINS(text, "max-body = \"1MB\"");
    CHECK_CONTAINS(text, "models = [\"x\", \"y z\", \"w\\\"q\"]");
    CHECK_CONTAINS(text, "# flag\n");
    CHECK_CONTAINS(text, "model-repository = \"/models\"");
    CHECK_CONTAINS(text, "# default\n");
    CHECK_CONTAINS(text, "\n[inference]\n");
    CHECK_CONTAINS(text, "\n[gateway]\n");
    CHECK(strstr(text, "data-dir") < strstr(text, "[inference]")); /* globals first */

    char path[32];
    write_temp(path, text);
    struct fixture fx2;
    fx_init(&fx2);
    CHECK_INT(fx_load(&fx2, ARGS("--config", path), NULL), LOOM_OK);
    CHECK_STR(fx2.g.data_dir, fx.g.data_dir);
    CHECK_INT(fx2.g.log_level, fx.g.log_level);
    CHECK_INT(fx2.g.verbose, fx.g.verbose);
    CHECK_STR(fx2.inf_common.listen, fx.inf_common.listen);
    CHECK_STR(fx2.inf_common.admin, fx.inf_common.admin);
    CHECK_STR(fx2.gw_common.listen, fx.gw_common.listen);
    CHECK_STR(fx2.gw_common.admin, fx.gw_common.admin);
    CHECK_INT(fx2.inf.threads, fx.inf.threads);
    CHECK_UINT(fx2.inf.timeout, fx.inf.timeout);
    CHECK_UINT(fx2.inf.max_body, fx.inf.max_body);
    CHECK_NEAR(fx2.inf.ratio, fx.inf.ratio, 0);
    CHECK_UINT(fx2.inf.models.n, fx.inf.models.n);
    for (size_t i = 0; i < fx.inf.models.n && i < fx2.inf.models.n; i++)
        CHECK_STR(fx2.inf.models.items[i], fx.inf.models.items[i]);
    CHECK_STR(fx2.inf.token, fx.inf.token);
    CHECK_INT(fx2.inf.log_format, fx.inf.log_format);
    CHECK_STR(fx2.inf.model_repository, fx.inf.model_repository);
    CHECK_INT(fx2.inf.warm, fx.inf.warm);
    CHECK_UINT(fx2.gw.upstreams.n, 1);
    CHECK_STR(fx2.gw.upstreams.items[0], "u1:80");
    CHECK_INT(fx_source(&fx2, "inference", "model-repository"), LOOM_CONF_FROM_FILE);

    /* Printing the reloaded conf gives the same settings (only the sources differ). */
    char *text2 = capture_print(&fx2.conf, false, NULL);
    CHECK_CONTAINS(text2, "# file /tmp/loom-conf-");
    free(text2);
    loom_conf_release(&fx2.conf);
    unlink(path);
    free(text);
    loom_conf_release(&fx.conf);

    /* Doubles print in their shortest exact form. */
    const char *doubles[] = { "0.1", "3", "1e+300", "-2.5", "0.30000000000000004", "1e-07" };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(doubles); i++) {
        char arg[64], want[64];
        snprintf(arg, sizeof(arg), "--inference.ratio=%s", doubles[i]);
        snprintf(want, sizeof(want), "ratio = %s ", doubles[i]);
        fx_init(&fx);
        CHECK_INT(fx_load(&fx, ARGS(arg), NULL), LOOM_OK);
        text = capture_print(&fx.conf, false, NULL);
        CHECK_CONTAINS(text, want);
        free(text);
        loom_conf_release(&fx.conf);
    }
}

static void test_redaction(void)
{
    struct fixture fx;
    fx_init(&fx);
    char *text = capture_print(&fx.conf, false, NULL);
    CHECK_CONTAINS(text, "token = \"\""); /* unset secrets say so */
    free(text);
    CHECK_INT(fx_load(&fx, NULL, ARGS("LOOM_INFERENCE_TOKEN=s3cret-value")), LOOM_OK);
    CHECK_STR(fx.inf.token, "s3cret-value");
    text = capture_print(&fx.conf, false, NULL);
    CHECK_CONTAINS(text, "token = \"<redacted>\"");
    CHECK_CONTAINS(text, "# env LOOM_INFERENCE_TOKEN");
    CHECK(!strstr(text, "s3cret"));
    free(text);
    loom_conf_release(&fx.conf);

    /* A bad secret value is not quoted back in the error either. */
    struct secret {
        int64_t pin;
    } sc;
    static const struct loom_conf_field fields[] = {
        LOOM_CONF_SECRET_FIELD(struct secret, pin, "pin", INT, "0", "a secret number"),
    };
    struct loom_conf_section sec = { "vault", fields, 1, &sc };
    struct loom_conf conf;
    struct loom_error err = { 0 };
    loom_conf_init(&conf, &sec, 1);
    const char *argv[] = { "x", "--vault.pin=hunter2", NULL };
    CHECK(loom_conf_load(&conf, 2, (char *const *)argv, NULL, &err) != LOOM_OK);
    CHECK_STR(err.msg, "--vault.pin: (redacted) is not an integer");
    text = capture_print(&conf, false, NULL);
    CHECK_CONTAINS(text, "pin = \"<redacted>\"");
    free(text);
    loom_conf_release(&conf);
}

static void test_usage(void)
{
    struct fixture fx;
    fx_init(&fx);
    char *text = capture_print(&fx.conf, true, NULL);
    CHECK_CONTAINS(text, "  --config FILE");
    CHECK_CONTAINS(text, "Global settings (environment: LOOM_<KEY>):\n");
    CHECK_CONTAINS(text, "[inference] settings (environment: LOOM_INFERENCE_<KEY>):\n");
    CHECK_CONTAINS(text, "  --log-level=debug|info|warn|error");
    CHECK_CONTAINS(text, "  --verbose[=BOOL]");
    CHECK_CONTAINS(text, "worker threads (default 4) [1..256]\n");
    CHECK_CONTAINS(text, "request deadline (default 5s) [1ms..1h]\n");
    CHECK_CONTAINS(text, "largest request body (default 1MiB) [1KiB..1GiB]\n");
    CHECK(strstr(text, "Global") < strstr(text, "[inference]"));
    /* One block per section name, listing the keys of every table of that name. */
    const char *inf = strstr(text, "[inference] settings");
    CHECK(inf && !strstr(inf + 1, "[inference] settings"));
    CHECK(inf && strstr(inf, "--inference.listen=HOST:PORT") &&
          strstr(inf, "--inference.model-repository=STRING"));
    /* Help texts line up in one column within a block. */
    const char *a = inf ? strstr(inf, "--inference.listen") : NULL;
    const char *b = inf ? strstr(inf, "--inference.threads") : NULL;
    if (a && b)
        CHECK_INT(strstr(a, "HTTP address") - a, strstr(b, "worker threads") - b);
    free(text);

    text = capture_print(&fx.conf, true, "gateway");
    CHECK(!strstr(text, "--config"));
    CHECK(!strstr(text, "inference"));
    CHECK_CONTAINS(text, "--gateway.upstreams=A,B,...");
    free(text);
    text = capture_print(&fx.conf, true, "");
    CHECK_CONTAINS(text, "--data-dir=STRING");
    CHECK(!strstr(text, "gateway"));
    free(text);
    text = capture_print(&fx.conf, true, "nope");
    CHECK_STR(text, "no settings for [nope]\n");
    free(text);
    loom_conf_release(&fx.conf);
}

/* Run `fn` in a child and check that it aborts (bad tables are programming errors). */
static bool aborts(void (*fn)(void))
{
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        freopen("/dev/null", "w", stderr);
        fn();
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

struct one {
    int64_t n;
    int64_t m;
};

static void init_fields(const struct loom_conf_field *fields, size_t n, const char *name)
{
    struct one o;
    struct loom_conf_section sec = { name, fields, n, &o };
    struct loom_conf conf;
    loom_conf_init(&conf, &sec, 1);
    loom_conf_release(&conf);
}

static void bad_default(void)
{
    static const struct loom_conf_field f[] = {
        LOOM_CONF_RANGE_FIELD(struct one, n, "n", INT, NULL, 1, 10, "zero is out of range"),
    };
    init_fields(f, 1, "s");
}

static void bad_key(void)
{
    static const struct loom_conf_field f[] = {
        LOOM_CONF_FIELD(struct one, n, "Bad_Key", INT, NULL, ""),
    };
    init_fields(f, 1, "s");
}

static void twice(void)
{
    static const struct loom_conf_field f[] = {
        LOOM_CONF_FIELD(struct one, n, "n", INT, NULL, ""),
        LOOM_CONF_FIELD(struct one, m, "n", INT, NULL, ""),
    };
    init_fields(f, 2, "s");
}

static void reserved(void)
{
    static const struct loom_conf_field f[] = {
        LOOM_CONF_FIELD(struct one, n, "config", INT, NULL, ""),
    };
    init_fields(f, 1, "");
}

static void env_clash(void)
{
    static const struct loom_conf_field g[] = {
        LOOM_CONF_FIELD(struct one, n, "a-b", INT, NULL, ""),
    };
    static const struct loom_conf_field s[] = {
        LOOM_CONF_FIELD(struct one, n, "b", INT, NULL, ""),
    };
    struct one o1, o2;
    struct loom_conf_section secs[] = { { "", g, 1, &o1 }, { "a", s, 1, &o2 } };
    struct loom_conf conf;
    loom_conf_init(&conf, secs, 2);
    loom_conf_release(&conf);
}

static void good_tables(void)
{
    static const struct loom_conf_field f[] = {
        LOOM_CONF_RANGE_FIELD(struct one, n, "n", INT, "5", 1, 10, ""),
        LOOM_CONF_FIELD(struct one, m, "m", INT, NULL, ""),
    };
    init_fields(f, 2, "s");
}

static void test_table_checks(void)
{
    CHECK(aborts(bad_default));
    CHECK(aborts(bad_key));
    CHECK(aborts(twice));
    CHECK(aborts(reserved));
    CHECK(aborts(env_clash));
    CHECK(!aborts(good_tables));
}

int main(void)
{
    RUN(test_defaults);
    RUN(test_precedence);
    RUN(test_config_file_sources);
    RUN(test_types);
    RUN(test_bad_values);
    RUN(test_unknown_names);
    RUN(test_env_names);
    RUN(test_positional);
    RUN(test_same_name_sections);
    RUN(test_file_syntax);
    RUN(test_limits);
    RUN(test_print_round_trip);
    RUN(test_redaction);
    RUN(test_usage);
    RUN(test_table_checks);
    return check_report();
}
