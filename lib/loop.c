/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The epoll reactor, timers (a binary min-heap keyed by deadline), signals (signalfd), cross-
 * thread tasks (a mutex-protected list and an eventfd), deferred end-of-iteration tasks, and the
 * work pool. One iteration: wait for events or the nearest timer, dispatch I/O, run expired
 * timers, run deferred tasks. Waiting uses epoll_pwait2 for nanosecond timeouts (dynamic
 * batching waits for 100 us, which epoll_wait's milliseconds cannot express) and falls back to
 * epoll_wait, rounding up, on kernels without it.
 */
#include <loom/log.h>
#include <loom/loop.h>

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#define LOOP_MAX_EVENTS 256

struct loom_loop {
    int epfd;
    int wakefd;
    struct loom_io wake_io;
    uint64_t now;
    void *data;

    /* The batch being dispatched, so that loom_io_stop can drop events for a stopped watcher. */
    struct epoll_event events[LOOP_MAX_EVENTS];
    int nevents;

    struct loom_timer **heap;
    size_t nheap, capheap;

    pthread_mutex_t post_mu;
    struct loom_task *post_head, *post_tail;

    struct loom_task *defer_head, *defer_tail;

    atomic_bool stop;
    bool no_pwait2;
};

static _Thread_local struct loom_loop *current_loop;

static void die(const char *what)
{
    fprintf(stderr, "{\"level\":\"fatal\",\"msg\":\"%s failed: errno %d\"}\n", what, errno);
    abort();
}

static void wake(struct loom_loop *loop)
{
    uint64_t one = 1;
    /* EAGAIN means the counter is saturated: a wake-up is pending anyway. */
    while (write(loop->wakefd, &one, sizeof(one)) < 0 && errno == EINTR)
        ;
}

static void run_posted(struct loom_loop *loop)
{
    pthread_mutex_lock(&loop->post_mu);
    struct loom_task *t = loop->post_head;
    loop->post_head = loop->post_tail = NULL;
    pthread_mutex_unlock(&loop->post_mu);
    while (t) {
        struct loom_task *next = t->next;
        t->next = NULL;
        t->fn(t);
        t = next;
    }
}

static void on_wake(struct loom_io *io, unsigned events)
{
    LOOM_UNUSED(events);
    struct loom_loop *loop = LOOM_CONTAINER_OF(io, struct loom_loop, wake_io);
    uint64_t n;
    while (read(loop->wakefd, &n, sizeof(n)) < 0 && errno == EINTR)
        ;
    run_posted(loop);
}

struct loom_loop *loom_loop_new(void)
{
    struct loom_loop *loop = loom_new(struct loom_loop);
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->epfd < 0)
        die("epoll_create1");
    loop->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (loop->wakefd < 0)
        die("eventfd");
    pthread_mutex_init(&loop->post_mu, NULL);
    loop->now = loom_now_ns();
    loom_io_init(&loop->wake_io, loop, loop->wakefd, on_wake);
    if (loom_io_start(&loop->wake_io, LOOM_IO_READ))
        die("epoll_ctl(eventfd)");
    return loop;
}

void loom_loop_free(struct loom_loop *loop)
{
    if (!loop)
        return;
    close(loop->epfd);
    close(loop->wakefd);
    pthread_mutex_destroy(&loop->post_mu);
    free(loop->heap);
    free(loop);
}

uint64_t loom_loop_now(const struct loom_loop *loop)
{
    return loop->now;
}

void loom_loop_update_time(struct loom_loop *loop)
{
    loop->now = loom_now_ns();
}

struct loom_loop *loom_loop_current(void)
{
    return current_loop;
}

void loom_loop_set_data(struct loom_loop *loop, void *data)
{
    loop->data = data;
}

void *loom_loop_data(const struct loom_loop *loop)
{
    return loop->data;
}

void loom_loop_stop(struct loom_loop *loop)
{
    atomic_store(&loop->stop, true);
    wake(loop);
}

void loom_loop_post(struct loom_loop *loop, struct loom_task *task, loom_task_fn fn)
{
    task->fn = fn;
    task->next = NULL;
    pthread_mutex_lock(&loop->post_mu);
    bool was_empty = loop->post_head == NULL;
    if (loop->post_tail)
        loop->post_tail->next = task;
    else
        loop->post_head = task;
    loop->post_tail = task;
    pthread_mutex_unlock(&loop->post_mu);
    /* One wake-up covers every task queued before the loop drains the list. */
    if (was_empty)
        wake(loop);
}

void loom_loop_defer(struct loom_loop *loop, struct loom_task *task, loom_task_fn fn)
{
    /* Deferring a task that is already queued keeps its place (run_deferred clears `next` as
     * it takes a task, so a queued task has a successor or is the tail). */
    if (task->next || loop->defer_tail == task)
        return;
    task->fn = fn;
    task->next = NULL;
    if (loop->defer_tail)
        loop->defer_tail->next = task;
    else
        loop->defer_head = task;
    loop->defer_tail = task;
}

static void run_deferred(struct loom_loop *loop)
{
    /* A deferred task may defer another; those run in this same pass. */
    while (loop->defer_head) {
        struct loom_task *t = loop->defer_head;
        loop->defer_head = t->next;
        if (!loop->defer_head)
            loop->defer_tail = NULL;
        t->next = NULL;
        t->fn(t);
    }
}

/* ---- I/O ---- */

void loom_io_init(struct loom_io *io, struct loom_loop *loop, int fd, loom_io_cb cb)
{
    io->loop = loop;
    io->cb = cb;
    io->fd = fd;
    io->events = 0;
}

loom_err loom_io_start(struct loom_io *io, unsigned events)
{
    if (events == io->events)
        return LOOM_OK;
    if (events == 0) {
        loom_io_stop(io);
        return LOOM_OK;
    }
    struct epoll_event ev = { .data.ptr = io };
    ev.events = (events & LOOM_IO_READ ? EPOLLIN | EPOLLRDHUP : 0u) |
                (events & LOOM_IO_WRITE ? EPOLLOUT : 0u);
    int op = io->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(io->loop->epfd, op, io->fd, &ev) < 0)
        return LOOM_EIO;
    io->events = events;
    return LOOM_OK;
}

void loom_io_stop(struct loom_io *io)
{
    struct loom_loop *loop = io->loop;
    if (io->events) {
        struct epoll_event ev = { 0 };
        epoll_ctl(loop->epfd, EPOLL_CTL_DEL, io->fd, &ev);
        io->events = 0;
    }
    for (int i = 0; i < loop->nevents; i++)
        if (loop->events[i].data.ptr == io)
            loop->events[i].data.ptr = NULL;
}

/* ---- timers: a binary min-heap of pointers, each timer knowing its index ---- */

static bool timer_before(const struct loom_timer *a, const struct loom_timer *b)
{
    return a->deadline < b->deadline;
}

static void heap_set(struct loom_loop *loop, size_t i, struct loom_timer *t)
{
    loop->heap[i] = t;
    t->heap_index = i;
}

static void heap_up(struct loom_loop *loop, size_t i)
{
    struct loom_timer *t = loop->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!timer_before(t, loop->heap[parent]))
            break;
        heap_set(loop, i, loop->heap[parent]);
        i = parent;
    }
    heap_set(loop, i, t);
}

static void heap_down(struct loom_loop *loop, size_t i)
{
    struct loom_timer *t = loop->heap[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= loop->nheap)
            break;
        if (child + 1 < loop->nheap && timer_before(loop->heap[child + 1], loop->heap[child]))
            child++;
        if (!timer_before(loop->heap[child], t))
            break;
        heap_set(loop, i, loop->heap[child]);
        i = child;
    }
    heap_set(loop, i, t);
}

void loom_timer_init(struct loom_timer *t, struct loom_loop *loop, loom_timer_cb cb)
{
    t->loop = loop;
    t->cb = cb;
    t->deadline = 0;
    t->repeat = 0;
    t->heap_index = SIZE_MAX;
}

void loom_timer_stop(struct loom_timer *t)
{
    if (!loom_timer_is_active(t))
        return;
    struct loom_loop *loop = t->loop;
    size_t i = t->heap_index;
    t->heap_index = SIZE_MAX;
    struct loom_timer *last = loop->heap[--loop->nheap];
    if (i == loop->nheap)
        return;
    heap_set(loop, i, last);
    heap_down(loop, i);
    heap_up(loop, last->heap_index);
}

void loom_timer_start_at(struct loom_timer *t, uint64_t deadline_ns)
{
    struct loom_loop *loop = t->loop;
    if (loom_timer_is_active(t)) {
        uint64_t old = t->deadline;
        t->deadline = deadline_ns;
        if (deadline_ns < old)
            heap_up(loop, t->heap_index);
        else
            heap_down(loop, t->heap_index);
        return;
    }
    if (loop->nheap == loop->capheap) {
        loop->capheap = loop->capheap ? loop->capheap * 2 : 64;
        loop->heap = loom_realloc(loop->heap, loom_mul_size(loop->capheap, sizeof(*loop->heap)));
    }
    t->deadline = deadline_ns;
    heap_set(loop, loop->nheap++, t);
    heap_up(loop, t->heap_index);
}

void loom_timer_start(struct loom_timer *t, uint64_t timeout_ns, uint64_t repeat_ns)
{
    t->repeat = repeat_ns;
    loom_timer_start_at(t, t->loop->now + timeout_ns);
}

static void run_timers(struct loom_loop *loop)
{
    while (loop->nheap && loop->heap[0]->deadline <= loop->now) {
        struct loom_timer *t = loop->heap[0];
        loom_timer_stop(t);
        if (t->repeat)
            loom_timer_start_at(t, loop->now + t->repeat);
        t->cb(t);
    }
}

/* ---- the loop ---- */

/* Wait for I/O: until the nearest timer, or at most `cap_ns` (UINT64_MAX: no cap). */
static int wait_events(struct loom_loop *loop, uint64_t cap_ns)
{
    uint64_t wait = cap_ns;
    if (loop->defer_head != NULL || atomic_load(&loop->stop)) {
        wait = 0;
    } else if (loop->nheap) {
        uint64_t d = loop->heap[0]->deadline;
        wait = LOOM_MIN(wait, d > loop->now ? d - loop->now : 0);
    }
    struct timespec ts = { 0 }, *tsp = NULL;
    if (wait != UINT64_MAX) {
        ts.tv_sec = (time_t)(wait / LOOM_NS_PER_SEC);
        ts.tv_nsec = (long)(wait % LOOM_NS_PER_SEC);
        tsp = &ts;
    }
    if (!loop->no_pwait2) {
        int n = epoll_pwait2(loop->epfd, loop->events, LOOP_MAX_EVENTS, tsp, NULL);
        if (n >= 0 || errno != ENOSYS)
            return n;
        loop->no_pwait2 = true;
    }
    int ms = -1;
    if (tsp) {
        uint64_t up = (wait + LOOM_NS_PER_MS - 1) / LOOM_NS_PER_MS;
        ms = up > 1000000 ? 1000000 : (int)up;
    }
    return epoll_wait(loop->epfd, loop->events, LOOP_MAX_EVENTS, ms);
}

static void iterate(struct loom_loop *loop, uint64_t cap_ns)
{
    int n = wait_events(loop, cap_ns);
    loop->now = loom_now_ns();
    if (n < 0) {
        if (errno != EINTR)
            die("epoll_wait");
        n = 0;
    }
    loop->nevents = n;
    for (int i = 0; i < n; i++) {
        struct loom_io *io = loop->events[i].data.ptr;
        if (!io)
            continue; /* stopped by an earlier callback of this batch */
        uint32_t e = loop->events[i].events;
        unsigned ev = (e & (EPOLLIN | EPOLLRDHUP) ? LOOM_IO_READ : 0u) |
                      (e & EPOLLOUT ? LOOM_IO_WRITE : 0u) | (e & EPOLLHUP ? LOOM_IO_HUP : 0u) |
                      (e & EPOLLERR ? LOOM_IO_ERROR : 0u);
        io->cb(io, ev);
    }
    loop->nevents = 0;
    run_timers(loop);
    run_deferred(loop);
}

void loom_loop_run_once(struct loom_loop *loop, uint64_t timeout_ns)
{
    struct loom_loop *prev = current_loop;
    current_loop = loop;
    loop->now = loom_now_ns();
    iterate(loop, timeout_ns);
    current_loop = prev;
}

void loom_loop_run(struct loom_loop *loop)
{
    current_loop = loop;
    atomic_store(&loop->stop, false);
    loop->now = loom_now_ns();
    while (!atomic_load(&loop->stop))
        iterate(loop, UINT64_MAX);
    /* Tasks posted by other threads before the stop still run: they may own memory. */
    run_posted(loop);
    run_deferred(loop);
    current_loop = NULL;
}

/* ---- signals ---- */

static void on_signal(struct loom_io *io, unsigned events)
{
    LOOM_UNUSED(events);
    struct loom_signal *s = LOOM_CONTAINER_OF(io, struct loom_signal, io);
    struct signalfd_siginfo info;
    while (read(io->fd, &info, sizeof(info)) == (ssize_t)sizeof(info))
        s->cb(s, (int)info.ssi_signo);
}

void loom_signal_block(const int *signums)
{
    sigset_t set;
    sigemptyset(&set);
    for (; *signums; signums++)
        sigaddset(&set, *signums);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
}

loom_err loom_signal_start(struct loom_signal *s, struct loom_loop *loop, int signum,
                           loom_signal_cb cb)
{
    int list[2] = { signum, 0 };
    loom_signal_block(list);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signum);
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0)
        return LOOM_EIO;
    s->cb = cb;
    s->signum = signum;
    loom_io_init(&s->io, loop, fd, on_signal);
    if (loom_io_start(&s->io, LOOM_IO_READ)) {
        close(fd);
        return LOOM_EIO;
    }
    return LOOM_OK;
}

void loom_signal_stop(struct loom_signal *s)
{
    if (s->io.fd < 0)
        return;
    loom_io_stop(&s->io);
    close(s->io.fd);
    s->io.fd = -1;
}

/* ---- the work pool ---- */

enum { WORK_QUEUED = 1, WORK_RUNNING, WORK_DONE, WORK_CANCELED };

struct loom_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct loom_work *head, *tail;
    size_t queued, max_queue;
    bool stopping;
    unsigned nthreads;
    pthread_t *threads;
};

static void work_complete(struct loom_task *task)
{
    struct loom_work *w = LOOM_CONTAINER_OF(task, struct loom_work, task);
    w->done(w, w->state == WORK_CANCELED ? LOOM_ECANCELED : LOOM_OK);
}

static void *worker_main(void *arg)
{
    struct loom_pool *pool = arg;
    pthread_mutex_lock(&pool->mu);
    for (;;) {
        while (!pool->head && !pool->stopping)
            pthread_cond_wait(&pool->cv, &pool->mu);
        if (!pool->head)
            break; /* stopping and nothing left */
        struct loom_work *w = pool->head;
        pool->head = w->next;
        if (!pool->head)
            pool->tail = NULL;
        pool->queued--;
        w->state = WORK_RUNNING;
        pthread_mutex_unlock(&pool->mu);
        loom_log_set_service(w->log_svc);
        loom_trace_set_current(w->traced ? &w->trace : NULL);
        w->work(w);
        loom_trace_set_current(NULL);
        loom_log_set_service("loom");
        pthread_mutex_lock(&pool->mu);
        w->state = WORK_DONE;
        loom_loop_post(w->loop, &w->task, work_complete);
    }
    pthread_mutex_unlock(&pool->mu);
    return NULL;
}

unsigned loom_cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return (unsigned)n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

struct loom_pool *loom_pool_new(unsigned nthreads, size_t max_queue)
{
    struct loom_pool *pool = loom_new(struct loom_pool);
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->cv, NULL);
    pool->max_queue = max_queue ? max_queue : SIZE_MAX;
    pool->nthreads = nthreads ? nthreads : loom_cpu_count();
    pool->threads = loom_calloc(pool->nthreads, sizeof(*pool->threads));
    for (unsigned i = 0; i < pool->nthreads; i++) {
        if (pthread_create(&pool->threads[i], NULL, worker_main, pool) != 0)
            die("pthread_create");
        char name[32];
        snprintf(name, sizeof(name), "loom-pool-%u", i);
        name[15] = '\0'; /* the kernel's limit */
        pthread_setname_np(pool->threads[i], name);
    }
    return pool;
}

void loom_pool_free(struct loom_pool *pool)
{
    if (!pool)
        return;
    pthread_mutex_lock(&pool->mu);
    pool->stopping = true;
    struct loom_work *w = pool->head;
    pool->head = pool->tail = NULL;
    pool->queued = 0;
    while (w) {
        struct loom_work *next = w->next;
        w->state = WORK_CANCELED;
        loom_loop_post(w->loop, &w->task, work_complete);
        w = next;
    }
    pthread_cond_broadcast(&pool->cv);
    pthread_mutex_unlock(&pool->mu);
    for (unsigned i = 0; i < pool->nthreads; i++)
        pthread_join(pool->threads[i], NULL);
    pthread_cond_destroy(&pool->cv);
    pthread_mutex_destroy(&pool->mu);
    free(pool->threads);
    free(pool);
}

unsigned loom_pool_threads(const struct loom_pool *pool)
{
    return pool->nthreads;
}

loom_err loom_pool_submit(struct loom_pool *pool, struct loom_loop *loop, struct loom_work *w,
                          loom_work_fn work, loom_work_done_fn done)
{
    w->loop = loop;
    w->work = work;
    w->done = done;
    w->next = NULL;
    w->log_svc = loom_log_service();
    const struct loom_trace_ctx *t = loom_trace_current();
    w->traced = t != NULL;
    if (t)
        w->trace = *t;
    pthread_mutex_lock(&pool->mu);
    if (pool->queued >= pool->max_queue || pool->stopping) {
        pthread_mutex_unlock(&pool->mu);
        return pool->stopping ? LOOM_EUNAVAIL : LOOM_EBUSY;
    }
    w->state = WORK_QUEUED;
    if (pool->tail)
        pool->tail->next = w;
    else
        pool->head = w;
    pool->tail = w;
    pool->queued++;
    pthread_cond_signal(&pool->cv);
    pthread_mutex_unlock(&pool->mu);
    return LOOM_OK;
}

bool loom_pool_cancel(struct loom_pool *pool, struct loom_work *w)
{
    pthread_mutex_lock(&pool->mu);
    if (w->state != WORK_QUEUED) {
        pthread_mutex_unlock(&pool->mu);
        return false;
    }
    struct loom_work **pp = &pool->head, *prev = NULL;
    while (*pp && *pp != w) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (*pp) {
        *pp = w->next;
        if (pool->tail == w)
            pool->tail = prev;
        pool->queued--;
    }
    w->state = WORK_CANCELED;
    pthread_mutex_unlock(&pool->mu);
    loom_loop_post(w->loop, &w->task, work_complete);
    return true;
}
