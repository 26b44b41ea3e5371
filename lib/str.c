/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Slices, bounded buffers and strict parsers. The parsers reject anything that is not exactly
 * a value (no leading spaces, no trailing garbage, no silent overflow) because they read
 * configuration and protocol fields where a half-understood value is worse than an error.
 */
#include <loom/mem.h>
#include <loom/str.h>

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static inline char lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
}

bool loom_str_ieq(struct loom_str a, struct loom_str b)
{
    if (a.len != b.len)
        return false;
    for (size_t i = 0; i < a.len; i++)
        if (lower(a.ptr[i]) != lower(b.ptr[i]))
            return false;
    return true;
}

bool loom_str_has_prefix(struct loom_str s, struct loom_str prefix)
{
    return s.len >= prefix.len && (prefix.len == 0 || memcmp(s.ptr, prefix.ptr, prefix.len) == 0);
}

bool loom_str_has_suffix(struct loom_str s, struct loom_str suffix)
{
    return s.len >= suffix.len &&
           (suffix.len == 0 || memcmp(s.ptr + s.len - suffix.len, suffix.ptr, suffix.len) == 0);
}

ptrdiff_t loom_str_index(struct loom_str s, char c)
{
    const char *p = s.len ? memchr(s.ptr, c, s.len) : NULL;
    return p ? p - s.ptr : -1;
}

struct loom_str loom_str_trim(struct loom_str s)
{
    while (s.len && (s.ptr[0] == ' ' || s.ptr[0] == '\t')) {
        s.ptr++;
        s.len--;
    }
    while (s.len && (s.ptr[s.len - 1] == ' ' || s.ptr[s.len - 1] == '\t'))
        s.len--;
    return s;
}

struct loom_str loom_str_cut(struct loom_str s, char sep, struct loom_str *head)
{
    ptrdiff_t i = loom_str_index(s, sep);
    if (i < 0) {
        *head = s;
        return LOOM_STR_NULL;
    }
    *head = loom_str_make(s.ptr, (size_t)i);
    return loom_str_make(s.ptr + i + 1, s.len - (size_t)i - 1);
}

char *loom_str_dup(struct loom_str s)
{
    return loom_strndup(s.len ? s.ptr : "", s.len);
}

loom_err loom_str_to_u64(struct loom_str s, uint64_t *out)
{
    if (s.len == 0)
        return LOOM_EINVAL;
    uint64_t v = 0;
    for (size_t i = 0; i < s.len; i++) {
        unsigned d = (unsigned char)s.ptr[i] - '0';
        if (d > 9)
            return LOOM_EINVAL;
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, d, &v))
            return LOOM_ETOOBIG;
    }
    *out = v;
    return LOOM_OK;
}

loom_err loom_str_to_i64(struct loom_str s, int64_t *out)
{
    bool neg = s.len && s.ptr[0] == '-';
    if (s.len && (s.ptr[0] == '-' || s.ptr[0] == '+')) {
        s.ptr++;
        s.len--;
    }
    uint64_t u;
    loom_err err = loom_str_to_u64(s, &u);
    if (err)
        return err;
    if (neg ? u > (uint64_t)INT64_MAX + 1 : u > (uint64_t)INT64_MAX)
        return LOOM_ETOOBIG;
    *out = neg ? (int64_t)(0 - u) : (int64_t)u;
    return LOOM_OK;
}

loom_err loom_str_to_double(struct loom_str s, double *out)
{
    char tmp[64];
    if (s.len == 0 || s.len >= sizeof(tmp) || s.ptr[0] == ' ' || s.ptr[0] == '\t')
        return s.len >= sizeof(tmp) ? LOOM_ETOOBIG : LOOM_EINVAL;
    memcpy(tmp, s.ptr, s.len);
    tmp[s.len] = '\0';
    char *end;
    errno = 0;
    double v = strtod(tmp, &end);
    if (end != tmp + s.len)
        return LOOM_EINVAL;
    if (errno == ERANGE && isinf(v))
        return LOOM_ETOOBIG;
    *out = v;
    return LOOM_OK;
}

loom_err loom_str_to_bool(struct loom_str s, bool *out)
{
    static const char *const yes[] = { "true", "1", "yes", "on" };
    static const char *const no[] = { "false", "0", "no", "off" };
    for (size_t i = 0; i < 4; i++) {
        if (loom_str_ieq(s, loom_str_cstr(yes[i]))) {
            *out = true;
            return LOOM_OK;
        }
        if (loom_str_ieq(s, loom_str_cstr(no[i]))) {
            *out = false;
            return LOOM_OK;
        }
    }
    return LOOM_EINVAL;
}

/* Split "123abc" into the number and the unit; the unit is matched against `units`. */
static loom_err scaled(struct loom_str s, const char *const *names, const uint64_t *scales,
                       size_t n, uint64_t default_scale, uint64_t *out)
{
    size_t digits = 0;
    while (digits < s.len && s.ptr[digits] >= '0' && s.ptr[digits] <= '9')
        digits++;
    if (digits == 0)
        return LOOM_EINVAL;
    uint64_t v;
    loom_err err = loom_str_to_u64(loom_str_make(s.ptr, digits), &v);
    if (err)
        return err;
    struct loom_str unit = loom_str_make(s.ptr + digits, s.len - digits);
    uint64_t scale = 0;
    if (unit.len == 0)
        scale = default_scale;
    for (size_t i = 0; i < n && !scale; i++)
        if (loom_str_eq_cstr(unit, names[i]))
            scale = scales[i];
    if (!scale)
        return LOOM_EINVAL;
    if (__builtin_mul_overflow(v, scale, out))
        return LOOM_ETOOBIG;
    return LOOM_OK;
}

loom_err loom_str_to_duration_ns(struct loom_str s, uint64_t *out)
{
    static const char *const names[] = { "ns", "us", "ms", "s", "m", "h" };
    static const uint64_t scales[] = {
        1, 1000ull, 1000000ull, 1000000000ull, 60000000000ull, 3600000000000ull
    };
    return scaled(s, names, scales, sizeof(names) / sizeof(names[0]), 1000000ull, out);
}

loom_err loom_str_to_size(struct loom_str s, uint64_t *out)
{
    static const char *const names[] = { "B", "KiB", "MiB", "GiB", "kB", "KB", "MB", "GB" };
    static const uint64_t scales[] = { 1,       1ull << 10, 1ull << 20, 1ull << 30,
                                       1000ull, 1000ull,    1000000ull, 1000000000ull };
    return scaled(s, names, scales, sizeof(names) / sizeof(names[0]), 1, out);
}

void loom_buf_init(struct loom_buf *b, size_t max)
{
    b->data = NULL;
    b->len = b->cap = 0;
    b->max = max ? max : LOOM_BUF_MAX_DEFAULT;
}

void loom_buf_release(struct loom_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

loom_err loom_buf_reserve(struct loom_buf *b, size_t n)
{
    if (n > b->max - b->len)
        return LOOM_ETOOBIG;
    size_t need = b->len + n + 1; /* room for the NUL */
    if (need <= b->cap)
        return LOOM_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > b->max + 1)
        cap = b->max + 1;
    b->data = loom_realloc(b->data, cap);
    b->data[b->len] = '\0';
    b->cap = cap;
    return LOOM_OK;
}

loom_err loom_buf_append(struct loom_buf *b, const void *p, size_t n)
{
    loom_err err = loom_buf_reserve(b, n);
    if (err)
        return err;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return LOOM_OK;
}

loom_err loom_buf_putc(struct loom_buf *b, char c)
{
    return loom_buf_append(b, &c, 1);
}

loom_err loom_buf_vprintf(struct loom_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    char small[256];
    int n = vsnprintf(small, sizeof(small), fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return LOOM_EINVAL;
    if ((size_t)n < sizeof(small))
        return loom_buf_append(b, small, (size_t)n);
    loom_err err = loom_buf_reserve(b, (size_t)n);
    if (err)
        return err;
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return LOOM_OK;
}

loom_err loom_buf_printf(struct loom_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    loom_err err = loom_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return err;
}

static size_t fmt_nonfinite(double v, char *out)
{
    const char *s = isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf";
    size_t n = strlen(s);
    memcpy(out, s, n + 1);
    return n;
}

static size_t fmt_integral(double v, char *out)
{
    size_t n = 0;
    if (v < 0)
        out[n++] = '-';
    n += loom_u64_to_dec((uint64_t)fabs(v), out + n);
    out[n] = '\0';
    return n;
}

/* For normal numbers %.15g (%.6g for floats) is coarser than the type's spacing, so when it
 * round-trips it has already stripped to the shortest form, and more digits are tried only when
 * it does not. Subnormals have fewer significant bits: they start from one digit. */
size_t loom_fmt_double(double v, char out[LOOM_FMT_DOUBLE_MAX])
{
    if (!isfinite(v))
        return fmt_nonfinite(v, out);
    if (fabs(v) < 9007199254740992.0 && v == trunc(v) && !(v == 0 && signbit(v)))
        return fmt_integral(v, out);
    int n = 0;
    for (int prec = fabs(v) < DBL_MIN ? 1 : 15; prec <= 17; prec++) {
        n = snprintf(out, LOOM_FMT_DOUBLE_MAX, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            break;
    }
    return (size_t)n;
}

/* Write N (p digits, value N * 10^(d - p + 1)) as printf's %g would, trailing zeros dropped. */
static size_t fmt_g(bool neg, uint64_t N, int p, int d, char *out)
{
    char digits[24];
    size_t nd = loom_u64_to_dec(N, digits);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    size_t o = 0;
    if (neg)
        out[o++] = '-';
    if (d < -4 || d >= p) { /* exponent notation: d.ddde-XX */
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            memcpy(out + o, digits + 1, nd - 1);
            o += nd - 1;
        }
        out[o++] = 'e';
        out[o++] = d < 0 ? '-' : '+';
        unsigned ad = (unsigned)(d < 0 ? -d : d);
        if (ad < 10)
            out[o++] = '0';
        o += loom_u64_to_dec(ad, out + o);
    } else if (d < 0) { /* 0.000ddd */
        out[o++] = '0';
        out[o++] = '.';
        for (int i = -1; i > d; i--)
            out[o++] = '0';
        memcpy(out + o, digits, nd);
        o += nd;
    } else { /* ddd.ddd */
        size_t ip = (size_t)d + 1;
        for (size_t i = 0; i < ip; i++)
            out[o++] = i < nd ? digits[i] : '0';
        if (nd > ip) {
            out[o++] = '.';
            memcpy(out + o, digits + ip, nd - ip);
            o += nd - ip;
        }
    }
    out[o] = '\0';
    return o;
}

/*
 * The shortest decimal that reads back as float v, exactly, with 128-bit integers instead of
 * printf and strtof (which this replaces on the hot path of every inference response). With
 * v = m / 2^E, the candidate with p significant digits is N = round(v * 10^K), K = p - 1 - d,
 * and it reads back as v iff it lies in v's rounding interval: |N*2^(E+1) - 2m*10^K| below
 * 10^K (half that under v when v is a power of two), the bound itself counting when m is even
 * (ties go to even). Handles normal floats in [2^-36, 2^24) that are not integers, that is
 * every probability and most scores; others take the printf path.
 */
static bool shortest_float(float v, char *out, size_t *len)
{
    uint32_t bits;
    memcpy(&bits, &v, sizeof(bits));
    bool neg = bits >> 31;
    int ef = (int)((bits >> 23) & 0xff);
    if (ef == 0 || ef == 0xff)
        return false;
    uint64_t m = (bits & 0x7fffff) | 0x800000;
    int E = 150 - ef; /* |v| = m / 2^E */
    if (E < 1 || E > 60)
        return false;
    static const unsigned __int128 one = 1;
    double av = fabs((double)v);
    int d = (int)floor(log10(av)); /* may be off by one near powers of ten: corrected below */
    if ((double)pow(10.0, d) > av)
        d--;
    static const uint64_t p10[] = { 1ull,
                                    10ull,
                                    100ull,
                                    1000ull,
                                    10000ull,
                                    100000ull,
                                    1000000ull,
                                    10000000ull,
                                    100000000ull,
                                    1000000000ull,
                                    10000000000ull,
                                    100000000000ull,
                                    1000000000000ull,
                                    10000000000000ull,
                                    100000000000000ull,
                                    1000000000000000ull,
                                    10000000000000000ull,
                                    100000000000000000ull,
                                    1000000000000000000ull,
                                    10000000000000000000ull };
    for (int p = 1; p <= 9; p++) {
        int K = p - 1 - d;
        if (K < 0)
            continue; /* a non-integer below 2^24 has no such short form */
        if (K > 38)
            return false;
        unsigned __int128 P = K < 20 ? p10[K] : (unsigned __int128)p10[19] * p10[K - 19];
        if (P > ((unsigned __int128)1 << 100))
            return false;
        unsigned __int128 num = m * P, half = one << (E - 1);
        unsigned __int128 N = num >> E, rem = num & ((one << E) - 1);
        if (rem > half || (rem == half && (N & 1)))
            N++;
        if (N >= p10[p])
            return false; /* rounding carried into another digit: let printf do it */
        unsigned __int128 lhs = N << (E + 1), rhs = 2 * m * P;
        unsigned __int128 diff = lhs > rhs ? lhs - rhs : rhs - lhs;
        unsigned __int128 bound = P;
        if (lhs < rhs && m == 0x800000)
            diff *= 2; /* below a power of two the gap to the next float is half as wide */
        if (diff < bound || (diff == bound && !(m & 1))) {
            *len = fmt_g(neg, (uint64_t)N, p, d, out);
            return true;
        }
    }
    return false;
}

size_t loom_fmt_float(float v, char out[LOOM_FMT_DOUBLE_MAX])
{
    if (!isfinite(v))
        return fmt_nonfinite(v, out);
    if (fabsf(v) < 16777216.0f && v == truncf(v) && !(v == 0 && signbit(v)))
        return fmt_integral(v, out);
    size_t len;
    if (shortest_float(v, out, &len))
        return len;
    int n = 0;
    for (int prec = fabsf(v) < FLT_MIN ? 1 : 6; prec <= 9; prec++) {
        n = snprintf(out, LOOM_FMT_DOUBLE_MAX, "%.*g", prec, (double)v);
        if (strtof(out, NULL) == v)
            break;
    }
    return (size_t)n;
}

size_t loom_u64_to_dec(uint64_t v, char *out)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

loom_err loom_buf_append_u64(struct loom_buf *b, uint64_t v)
{
    char tmp[20];
    return loom_buf_append(b, tmp, loom_u64_to_dec(v, tmp));
}

loom_err loom_buf_append_i64(struct loom_buf *b, int64_t v)
{
    char tmp[21];
    size_t n = 0;
    uint64_t u = (uint64_t)v;
    if (v < 0) {
        tmp[n++] = '-';
        u = 0 - u;
    }
    n += loom_u64_to_dec(u, tmp + n);
    return loom_buf_append(b, tmp, n);
}

void loom_buf_consume(struct loom_buf *b, size_t n)
{
    if (n >= b->len) {
        loom_buf_reset(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

char *loom_buf_detach(struct loom_buf *b, size_t *len)
{
    if (!b->data)
        loom_buf_reserve(b, 0);
    char *p = b->data;
    if (len)
        *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}
