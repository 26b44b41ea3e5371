/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Clocks and time formats. The formatters do their own calendar arithmetic rather than call
 * gmtime_r/strftime: they run on every log line and every response, and the libc versions
 * take locks and consult the time zone.
 */
#include <loom/clock.h>

#include <string.h>
#include <time.h>

uint64_t loom_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * LOOM_NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

int64_t loom_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * (int64_t)LOOM_NS_PER_SEC + ts.tv_nsec;
}

struct civil {
    int year, month, day, hour, min, sec, wday;
};

/* Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm). */
static struct civil civil_from_unix(int64_t t)
{
    struct civil c;
    int64_t days = t / 86400, rem = t % 86400;
    if (rem < 0) {
        rem += 86400;
        days--;
    }
    c.hour = (int)(rem / 3600);
    c.min = (int)(rem % 3600 / 60);
    c.sec = (int)(rem % 60);
    c.wday = (int)((days % 7 + 11) % 7); /* 1970-01-01 was a Thursday */
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    c.day = (int)(doy - (153 * mp + 2) / 5 + 1);
    c.month = (int)(mp < 10 ? mp + 3 : mp - 9);
    c.year = (int)(yoe + era * 400 + (c.month <= 2));
    return c;
}

static char *put2(char *p, int v)
{
    p[0] = (char)('0' + v / 10);
    p[1] = (char)('0' + v % 10);
    return p + 2;
}

static char *put4(char *p, int v)
{
    p = put2(p, v / 100 % 100);
    return put2(p, v % 100);
}

size_t loom_time_rfc3339(int64_t wall_ns, char *out)
{
    int64_t sec = wall_ns / (int64_t)LOOM_NS_PER_SEC;
    int64_t ns = wall_ns % (int64_t)LOOM_NS_PER_SEC;
    if (ns < 0) {
        ns += (int64_t)LOOM_NS_PER_SEC;
        sec--;
    }
    struct civil c = civil_from_unix(sec);
    char *p = out;
    p = put4(p, c.year);
    *p++ = '-';
    p = put2(p, c.month);
    *p++ = '-';
    p = put2(p, c.day);
    *p++ = 'T';
    p = put2(p, c.hour);
    *p++ = ':';
    p = put2(p, c.min);
    *p++ = ':';
    p = put2(p, c.sec);
    *p++ = '.';
    int us = (int)(ns / 1000);
    p = put2(p, us / 10000);
    p = put2(p, us / 100 % 100);
    p = put2(p, us % 100);
    *p++ = 'Z';
    *p = '\0';
    return (size_t)(p - out);
}

size_t loom_time_http_date(int64_t unix_sec, char *out)
{
    static const char days[] = "SunMonTueWedThuFriSat";
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    struct civil c = civil_from_unix(unix_sec);
    char *p = out;
    for (int i = 0; i < 3; i++)
        *p++ = days[c.wday * 3 + i];
    *p++ = ',';
    *p++ = ' ';
    p = put2(p, c.day);
    *p++ = ' ';
    for (int i = 0; i < 3; i++)
        *p++ = months[(c.month - 1) * 3 + i];
    *p++ = ' ';
    p = put4(p, c.year);
    *p++ = ' ';
    p = put2(p, c.hour);
    *p++ = ':';
    p = put2(p, c.min);
    *p++ = ':';
    p = put2(p, c.sec);
    memcpy(p, " GMT", 5);
    return (size_t)(p - out) + 4;
}
