/* SPDX-License-Identifier: Apache-2.0 */
/* Socket helpers: address parsing and resolution, listening and connecting sockets. */
#include <loom/net.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define UNIX_PREFIX "unix:"

static loom_err resolve_unix(const char *addr, struct loom_sockaddr *out, struct loom_error *err)
{
    const char *path = addr + strlen(UNIX_PREFIX);
    struct sockaddr_un *un = (struct sockaddr_un *)&out->ss;
    size_t n = strlen(path);
    if (n == 0 || path[0] != '/')
        return loom_error_set(err, LOOM_EINVAL, "\"%s\": write unix:/ABSOLUTE/PATH", addr);
    if (n >= sizeof(un->sun_path))
        return loom_error_set(err, LOOM_EINVAL, "\"%s\": a socket path has at most %zu bytes", addr,
                              sizeof(un->sun_path) - 1);
    memset(out, 0, sizeof(*out));
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, path, n + 1);
    out->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    return LOOM_OK;
}

loom_err loom_net_resolve(const char *hostport, bool passive, struct loom_sockaddr *out,
                          struct loom_error *err)
{
    if (strncmp(hostport, UNIX_PREFIX, strlen(UNIX_PREFIX)) == 0)
        return resolve_unix(hostport, out, err);
    struct loom_str s = loom_str_cstr(hostport), host, port;
    if (s.len && s.ptr[0] == '[') {
        ptrdiff_t close = loom_str_index(s, ']');
        if (close < 0 || (size_t)close + 1 >= s.len || s.ptr[close + 1] != ':')
            return loom_error_set(err, LOOM_EINVAL, "\"%s\" is not [IPV6]:PORT", hostport);
        host = loom_str_make(s.ptr + 1, (size_t)close - 1);
        port = loom_str_make(s.ptr + close + 2, s.len - (size_t)close - 2);
    } else {
        const char *colon = memrchr(s.ptr, ':', s.len);
        if (!colon)
            return loom_error_set(err, LOOM_EINVAL, "\"%s\" is not HOST:PORT", hostport);
        host = loom_str_make(s.ptr, (size_t)(colon - s.ptr));
        port = loom_str_make(colon + 1, s.len - host.len - 1);
        if (loom_str_index(host, ':') >= 0)
            return loom_error_set(err, LOOM_EINVAL,
                                  "\"%s\": write IPv6 addresses in brackets, [::1]:PORT", hostport);
    }
    uint64_t p;
    if (loom_str_to_u64(port, &p) || p > 65535)
        return loom_error_set(err, LOOM_EINVAL, "\"%s\": port must be 0..65535", hostport);
    char hostbuf[256], portbuf[8];
    if (host.len >= sizeof(hostbuf))
        return loom_error_set(err, LOOM_EINVAL, "\"%s\": host name too long", hostport);
    memcpy(hostbuf, host.ptr, host.len);
    hostbuf[host.len] = '\0';
    snprintf(portbuf, sizeof(portbuf), "%u", (unsigned)p);
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    hints.ai_flags = (passive ? AI_PASSIVE : 0) | AI_NUMERICSERV;
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host.len ? hostbuf : NULL, portbuf, &hints, &res);
    if (rc != 0 || !res) {
        if (res)
            freeaddrinfo(res);
        return loom_error_set(err, LOOM_EINVAL, "cannot resolve \"%s\": %s", hostport,
                              gai_strerror(rc));
    }
    memset(out, 0, sizeof(*out));
    memcpy(&out->ss, res->ai_addr, res->ai_addrlen);
    out->len = res->ai_addrlen;
    freeaddrinfo(res);
    return LOOM_OK;
}

static void set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* A unix socket path may be bound if nothing is there, or if a socket file is there that
 * nobody listens on any more (left by a server that was killed): that one is removed. */
static bool unix_path_free(const struct loom_sockaddr *addr, struct loom_error *err)
{
    const char *path = ((const struct sockaddr_un *)&addr->ss)->sun_path;
    struct stat st;
    if (lstat(path, &st) < 0)
        return true;
    if (!S_ISSOCK(st.st_mode)) {
        loom_error_set(err, LOOM_EEXIST, "unix:%s exists and is not a socket", path);
        return false;
    }
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe < 0) {
        loom_error_errno(err, "socket");
        return false;
    }
    int rc = connect(probe, (const struct sockaddr *)&addr->ss, addr->len);
    close(probe);
    if (rc == 0) {
        loom_error_set(err, LOOM_EEXIST, "unix:%s: another server listens there", path);
        return false;
    }
    unlink(path);
    return true;
}

bool loom_net_addr_free(const struct loom_sockaddr *addr, struct loom_error *err)
{
    if (addr->ss.ss_family == AF_UNIX)
        return unix_path_free(addr, err);
    const struct sockaddr_in *in = (const void *)&addr->ss;
    const struct sockaddr_in6 *in6 = (const void *)&addr->ss;
    if ((addr->ss.ss_family == AF_INET && in->sin_port == 0) ||
        (addr->ss.ss_family == AF_INET6 && in6->sin6_port == 0))
        return true; /* port 0: the kernel picks a free one */
    int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return true; /* the real bind reports it */
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    bool ok = bind(fd, (const struct sockaddr *)&addr->ss, addr->len) == 0 || errno != EADDRINUSE;
    close(fd);
    if (!ok) {
        char name[80];
        loom_net_format(addr, name, sizeof(name));
        loom_error_set(err, LOOM_EIO, "%s is in use by another process", name);
    }
    return ok;
}

int loom_net_listen(const struct loom_sockaddr *addr, bool reuseport, int backlog,
                    struct loom_error *err)
{
    char name[64];
    loom_net_format(addr, name, sizeof(name));
    int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        loom_error_errno(err, "socket for %s", name);
        return -1;
    }
    int one = 1;
    if (addr->ss.ss_family == AF_UNIX) {
        if (!unix_path_free(addr, err))
            goto out_close;
        reuseport = false; /* unix sockets have no such sharing: one fd serves every loop */
    } else {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    }
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
        loom_error_errno(err, "SO_REUSEPORT on %s", name);
        goto out_close;
    }
    if (bind(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0) {
        loom_error_errno(err, "bind %s", name);
        goto out_close;
    }
    if (listen(fd, backlog) < 0) {
        loom_error_errno(err, "listen %s", name);
        goto out_close;
    }
    return fd;
out_close:
    close(fd);
    return -1;
}

int loom_net_connect(const struct loom_sockaddr *addr, struct loom_error *err)
{
    int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        loom_error_errno(err, "socket");
        return -1;
    }
    if (addr->ss.ss_family != AF_UNIX)
        set_nodelay(fd);
    if (connect(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0 && errno != EINPROGRESS) {
        char name[64];
        loom_net_format(addr, name, sizeof(name));
        loom_error_errno(err, "connect %s", name);
        close(fd);
        return -1;
    }
    return fd;
}

int loom_net_connect_result(int fd)
{
    int so_error = 0;
    socklen_t len = sizeof(so_error);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len) < 0)
        return errno;
    return so_error;
}

int loom_net_local_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

void loom_net_set_port(struct loom_sockaddr *addr, int port)
{
    if (addr->ss.ss_family == AF_INET)
        ((struct sockaddr_in *)&addr->ss)->sin_port = htons((uint16_t)port);
    else if (addr->ss.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&addr->ss)->sin6_port = htons((uint16_t)port);
}

void loom_net_format(const struct loom_sockaddr *addr, char *out, size_t cap)
{
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (addr->ss.ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&addr->ss;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        port = ntohs(in->sin_port);
        snprintf(out, cap, "%s:%d", host, port);
    } else if (addr->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&addr->ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        port = ntohs(in6->sin6_port);
        snprintf(out, cap, "[%s]:%d", host, port);
    } else if (addr->ss.ss_family == AF_UNIX) {
        const struct sockaddr_un *un = (const struct sockaddr_un *)&addr->ss;
        bool named = addr->len > offsetof(struct sockaddr_un, sun_path) && un->sun_path[0];
        snprintf(out, cap, UNIX_PREFIX "%s", named ? un->sun_path : "");
    } else {
        snprintf(out, cap, "?");
    }
}
