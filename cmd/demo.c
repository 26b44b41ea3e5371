/* SPDX-License-Identifier: Apache-2.0 */
/*
 * `loom demo data fraud`: a synthetic card-transaction dataset for the fraud demo, written as
 * CSV. Rows are independent draws from a fixed generative story (docs/trainer.md, "The demo
 * data"): about 1% of transactions are fraud, and fraud shows in the signals a fraud team
 * looks at (an amount far above the card's 7-day average, night hours, far from home, a new
 * card, bursts of transactions, risky merchant categories), each present in most frauds but
 * not all, so that a model has to combine them. Regions differ a little (typical amounts,
 * distances), which makes region partly predictable from the other columns, as in real data.
 * With --bias B the labels also depend on the region, like a biased review process: legitimate
 * transactions in the south are reported as fraud with probability 0.03 B and fraud in the east
 * goes unreported with probability B. A model trained on such labels is unfair across regions
 * (its true-positive rate differs), which the trainer's fairness gates catch; with B = 0 it is
 * not. The output is a pure function of --rows, --seed and --bias (xoshiro256** seeded through
 * splitmix64, fixed draw order, fixed formatting).
 */
#include "cmd.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- randomness ---- */

struct rng {
    uint64_t s[4];
};

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void rng_seed(struct rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(struct rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

/* Uniform in [0, 1). */
static double uniform(struct rng *r)
{
    return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

static double normal(struct rng *r)
{
    double u = uniform(r), v = uniform(r);
    return sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v);
}

static double lognormal(struct rng *r, double mu, double sigma)
{
    return exp(mu + sigma * normal(r));
}

static int poisson(struct rng *r, double lambda)
{
    double l = exp(-lambda), p = 1.0;
    int k = 0;
    do {
        k++;
        p *= uniform(r);
    } while (p > l && k < 1000);
    return k - 1;
}

/* An index drawn from weights summing to 1. */
static size_t pick(struct rng *r, const double *w, size_t n)
{
    double u = uniform(r), acc = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        acc += w[i];
        if (u < acc)
            return i;
    }
    return n - 1;
}

/* ---- the story ---- */

static const char *const regions[] = { "north", "south", "east", "west" };
static const double region_w[] = { 0.30, 0.25, 0.25, 0.20 };
/* log of the typical 7-day average amount, and of the typical distance from home, per region */
static const double region_amount_mu[] = { 3.4, 3.8, 3.6, 3.7 };
static const double region_distance_mu[] = { 2.2, 1.2, 1.6, 1.8 };
enum { SOUTH = 1, EAST = 2 };

static const char *const categories[] = { "grocery", "restaurant",  "fuel",    "online",
                                          "travel",  "electronics", "jewelry", "atm" };
static const double legit_category_w[] = { 0.25, 0.20, 0.15, 0.15, 0.05, 0.08, 0.02, 0.10 };
static const double fraud_category_w[] = { 0.03, 0.03, 0.04, 0.25, 0.10, 0.25, 0.15, 0.15 };

#define FRAUD_RATE       0.01
#define SOUTH_OVERREPORT 0.03 /* times B: legitimate south transactions labelled fraud */

struct demo_opts {
    uint64_t rows, seed;
    double bias;
    const char *out;
};

static int generate(const struct demo_opts *o, FILE *f, uint64_t *nfraud)
{
    struct rng r;
    rng_seed(&r, o->seed);
    fprintf(f, "amount,merchant_category,hour,distance_from_home_km,card_age_days,txn_count_1h,"
               "txn_count_24h,avg_amount_7d,region,is_fraud\n");
    for (uint64_t i = 0; i < o->rows; i++) {
        size_t region = pick(&r, region_w, LOOM_ARRAY_SIZE(region_w));
        bool fraud = uniform(&r) < FRAUD_RATE;
        double avg = lognormal(&r, region_amount_mu[region], 0.7);
        double amount, distance, hour_f;
        int card_age, n1h, n24h;
        /* Each fraud signal shows in most frauds, not all of them. */
        if (fraud && uniform(&r) < 0.9)
            amount = avg * lognormal(&r, 1.7, 0.5);
        else
            amount = avg * lognormal(&r, 0.0, 0.45);
        if (fraud && uniform(&r) < 0.7)
            hour_f = floor(uniform(&r) * 6.0); /* 0:00 to 5:59 */
        else
            hour_f = fmod(floor(14.0 + 4.0 * normal(&r)) + 48.0, 24.0);
        if (fraud && uniform(&r) < 0.75)
            distance = lognormal(&r, 5.0, 0.8);
        else
            distance = lognormal(&r, region_distance_mu[region], 0.9);
        if (fraud && uniform(&r) < 0.6)
            card_age = (int)floor(uniform(&r) * 30.0);
        else
            card_age = 30 + (int)fmin(3620.0, floor(-900.0 * log(1.0 - uniform(&r))));
        if (fraud && uniform(&r) < 0.65)
            n1h = 3 + poisson(&r, 3.0);
        else
            n1h = poisson(&r, 0.4);
        n24h = n1h + poisson(&r, fraud ? 6.0 : 3.5);
        size_t cat = fraud ? pick(&r, fraud_category_w, LOOM_ARRAY_SIZE(fraud_category_w))
                           : pick(&r, legit_category_w, LOOM_ARRAY_SIZE(legit_category_w));
        /* The label: the truth, unless a biased review changes it. Both draws are always made,
         * so that every bias gives the same transactions. */
        double u_over = uniform(&r), u_under = uniform(&r);
        bool label = fraud;
        if (region == SOUTH && !fraud && u_over < SOUTH_OVERREPORT * o->bias)
            label = true;
        if (region == EAST && fraud && u_under < o->bias)
            label = false;
        *nfraud += label;
        fprintf(f, "%.2f,%s,%d,%.2f,%d,%d,%d,%.2f,%s,%d\n", amount, categories[cat], (int)hour_f,
                distance, card_age, n1h, n24h, avg, regions[region], label ? 1 : 0);
    }
    return ferror(f) ? -1 : 0;
}

/* ---- the command ---- */

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: loom demo data fraud [--rows N] [--seed S] [--bias B] [--out FILE]\n\n"
            "Write a synthetic card-transaction dataset (CSV with a header row) for the fraud\n"
            "demo: about 1%% fraud, driven by the amount against the card's 7-day average, night\n"
            "hours, distance from home, card age, bursts and merchant category. The same\n"
            "arguments always give the same bytes.\n\n"
            "Columns: amount, merchant_category, hour, distance_from_home_km, card_age_days,\n"
            "txn_count_1h, txn_count_24h, avg_amount_7d, region (north|south|east|west: the\n"
            "sensitive attribute), is_fraud (0/1).\n\n"
            "Options:\n"
            "  --rows N    rows to write (default 10000, at most 100000000)\n"
            "  --seed S    random seed (default 1)\n"
            "  --bias B    0..1: make the labels depend on the region (south over-reported,\n"
            "              east under-reported), so that a model trained on them is unfair\n"
            "              across regions (default 0: fair labels)\n"
            "  --out FILE  write to FILE instead of standard output\n"
            "  --help      show this help\n\n"
            "Example:\n"
            "  loom demo data fraud --rows 20000 --seed 1 --out fraud.csv\n"
            "  loom datasets push fraud.csv\n");
}

static void demo_usage(FILE *out)
{
    fprintf(out, "Usage: loom demo data fraud [options]\n\n"
                 "Demo material for trying loom end to end.\n\n"
                 "Commands:\n"
                 "  data fraud   write the synthetic card-transaction dataset (CSV)\n\n"
                 "Run 'loom demo data fraud --help' for its options.\n");
}

/* The value of option `name` at argv[*i] ("--name=V" or "--name V"), or NULL if argv[*i] is
 * another option. Sets *bad when the value is missing. */
static const char *opt_value(int argc, char **argv, int *i, const char *name, bool *bad)
{
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) != 0)
        return NULL;
    if (a[n] == '=')
        return a + n + 1;
    if (a[n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        *bad = true;
        return NULL;
    }
    return argv[++*i];
}

int cmd_demo(int argc, char **argv);

int cmd_demo(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            if (argc > 3 && strcmp(argv[1], "data") == 0 && strcmp(argv[2], "fraud") == 0)
                usage(stdout);
            else if (argc >= 3 && strcmp(argv[1], "data") == 0)
                usage(stdout);
            else
                demo_usage(stdout);
            return 0;
        }
    if (argc < 3 || strcmp(argv[1], "data") != 0 || strcmp(argv[2], "fraud") != 0) {
        if (argc >= 2 && strcmp(argv[1], "data") == 0 && argc >= 3)
            fprintf(stderr, "loom demo data: unknown dataset \"%s\" (there is: fraud)\n", argv[2]);
        else
            demo_usage(stderr);
        return 2;
    }
    struct demo_opts o = { .rows = 10000, .seed = 1, .bias = 0, .out = NULL };
    for (int i = 3; i < argc; i++) {
        bool bad = false;
        const char *v;
        char *end;
        if ((v = opt_value(argc, argv, &i, "--rows", &bad))) {
            errno = 0;
            unsigned long long n = strtoull(v, &end, 10);
            if (errno || *end || !*v || v[0] == '-' || n > 100000000ull) {
                fprintf(stderr, "loom demo: --rows must be an integer from 0 to 100000000\n");
                return 2;
            }
            o.rows = n;
        } else if ((v = opt_value(argc, argv, &i, "--seed", &bad))) {
            errno = 0;
            unsigned long long n = strtoull(v, &end, 10);
            if (errno || *end || !*v || v[0] == '-') {
                fprintf(stderr, "loom demo: --seed must be a non-negative integer\n");
                return 2;
            }
            o.seed = n;
        } else if ((v = opt_value(argc, argv, &i, "--bias", &bad))) {
            double b = strtod(v, &end);
            if (*end || !*v || !(b >= 0.0 && b <= 1.0)) {
                fprintf(stderr, "loom demo: --bias must be a number from 0 to 1\n");
                return 2;
            }
            o.bias = b;
        } else if ((v = opt_value(argc, argv, &i, "--out", &bad))) {
            o.out = v;
        } else {
            if (bad)
                fprintf(stderr, "loom demo: %s needs a value\n", argv[i]);
            else
                fprintf(stderr,
                        "loom demo: unknown argument \"%s\"; run 'loom demo data fraud --help'\n",
                        argv[i]);
            return 2;
        }
    }
    FILE *f = stdout;
    if (o.out && !(f = fopen(o.out, "w"))) {
        fprintf(stderr, "loom demo: cannot write %s: %s\n", o.out, strerror(errno));
        return 1;
    }
    setvbuf(f, NULL, _IOFBF, (size_t)1 << 16);
    uint64_t nfraud = 0;
    int rc = generate(&o, f, &nfraud);
    if (fflush(f) != 0)
        rc = -1;
    if (o.out && fclose(f) != 0)
        rc = -1;
    if (rc) {
        fprintf(stderr, "loom demo: writing %s failed: %s\n", o.out ? o.out : "standard output",
                strerror(errno));
        return 1;
    }
    if (o.out)
        fprintf(stderr, "loom demo: wrote %llu rows (%llu labelled fraud, %.2f%%) to %s\n",
                (unsigned long long)o.rows, (unsigned long long)nfraud,
                o.rows ? 100.0 * (double)nfraud / (double)o.rows : 0.0, o.out);
    return 0;
}
