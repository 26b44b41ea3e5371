/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Sockets: "HOST:PORT" addresses, non-blocking listening and connecting sockets. Shared by the
 * HTTP server, the HTTP client and every backend that talks TCP.
 */
#ifndef LOOM_NET_H
#define LOOM_NET_H

#include <loom/core.h>

#include <stdbool.h>
#include <sys/socket.h>

struct loom_sockaddr {
    struct sockaddr_storage ss;
    socklen_t len;
};

/*
 * Parse "HOST:PORT", "[v6]:PORT" or ":PORT" (the wildcard address when `passive`, else
 * loopback). HOST may be a name (resolved with getaddrinfo, first result). LOOM_EINVAL with a
 * message saying what is wrong.
 */
loom_err loom_net_resolve(const char *hostport, bool passive, struct loom_sockaddr *out,
                          struct loom_error *err);

/* A non-blocking, close-on-exec listening socket (SO_REUSEADDR, and SO_REUSEPORT when asked).
 * Returns the fd, or -1 with *err set. */
int loom_net_listen(const struct loom_sockaddr *addr, bool reuseport, int backlog,
                    struct loom_error *err);

/* Whether a listener may bind `addr` without sharing it: for TCP, that no other socket holds
 * the port (SO_REUSEPORT would let another process share it and take half its connections; port
 * 0 is always free); for unix:, the rule of loom_net_listen, which removes a stale socket file.
 * false with *err set. */
bool loom_net_addr_free(const struct loom_sockaddr *addr, struct loom_error *err);

/* Start a non-blocking connect; the fd becomes writable when it completes (check with
 * loom_net_connect_result). Returns the fd, or -1 with *err set. TCP_NODELAY is set. */
int loom_net_connect(const struct loom_sockaddr *addr, struct loom_error *err);

/* The outcome of a non-blocking connect once the fd is writable: 0 or an errno value. */
int loom_net_connect_result(int fd);

/* The local port of a bound socket, or -1. */
int loom_net_local_port(int fd);

/* "127.0.0.1:8080" / "[::1]:8080" into out (>= 64 bytes). */
void loom_net_format(const struct loom_sockaddr *addr, char *out, size_t cap);

/* Set the port of an address. */
void loom_net_set_port(struct loom_sockaddr *addr, int port);

#endif
