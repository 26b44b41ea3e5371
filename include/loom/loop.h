/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The event loop: one epoll reactor per thread, in the spirit of Redis's ae and libuv. Handles
 * are structs the caller embeds and owns (an I/O watcher, a timer, a signal watcher); the loop
 * only links them. Everything runs on the loop's thread except the few functions marked
 * thread-safe: loom_loop_post (run a task on a loop from any thread), loom_loop_stop, and the
 * work pool, whose jobs run on worker threads and whose completions run back on the loop that
 * submitted them. If a function that takes a callback returns an error, the callback is never
 * called (libuv's rule).
 */
#ifndef LOOM_LOOP_H
#define LOOM_LOOP_H

#include <loom/core.h>
#include <loom/trace.h>

#include <stdbool.h>
#include <stdint.h>

struct loom_loop;

/* A new loop (caller frees with loom_loop_free). Aborts if epoll or eventfd cannot be made. */
struct loom_loop *loom_loop_new(void);

/* Free a loop that is not running. Tasks still queued are dropped without being run. */
void loom_loop_free(struct loom_loop *loop);

/* Run until loom_loop_stop. Must be called from one thread only, which becomes its owner. */
void loom_loop_run(struct loom_loop *loop);

/* Run one iteration: wait up to `timeout_ns` for events (0: poll), dispatch them, run due
 * timers and deferred tasks. For tests, fuzz drivers and blocking clients. */
void loom_loop_run_once(struct loom_loop *loop, uint64_t timeout_ns);

/* Ask the loop to return from loom_loop_run after the current iteration. Thread-safe. */
void loom_loop_stop(struct loom_loop *loop);

/* The loop's cached monotonic time in nanoseconds, updated once per iteration: cheap, and the
 * same for every callback of one iteration. */
uint64_t loom_loop_now(const struct loom_loop *loop);

/* Refresh the cached time (after a long computation on the loop thread). */
void loom_loop_update_time(struct loom_loop *loop);

/* The loop running on the calling thread, or NULL. */
struct loom_loop *loom_loop_current(void);

/* A pointer for the owner's use. */
void loom_loop_set_data(struct loom_loop *loop, void *data);
void *loom_loop_data(const struct loom_loop *loop);

/* ---- tasks: intrusive callbacks, run later on a loop ---- */

struct loom_task;
typedef void (*loom_task_fn)(struct loom_task *task);

struct loom_task {
    struct loom_task *next;
    loom_task_fn fn;
};

/* Run task->fn(task) on `loop`'s thread soon. Thread-safe; the task (embedded in the caller's
 * struct) must stay valid until it runs. Posting from the loop's own thread is allowed. */
void loom_loop_post(struct loom_loop *loop, struct loom_task *task, loom_task_fn fn);

/* Run task->fn(task) at the end of the current iteration, before the loop next waits for I/O:
 * the place to flush work gathered from several events (write coalescing, batching). A task
 * already waiting is not queued twice. The task must be zero-initialised (or have run) before
 * its first defer. Loop thread only. */
void loom_loop_defer(struct loom_loop *loop, struct loom_task *task, loom_task_fn fn);

/* ---- I/O watchers ---- */

enum {
    LOOM_IO_READ = 1u << 0,
    LOOM_IO_WRITE = 1u << 1,
    /* Reported to callbacks only. */
    LOOM_IO_HUP = 1u << 2,
    LOOM_IO_ERROR = 1u << 3,
};

struct loom_io;
typedef void (*loom_io_cb)(struct loom_io *io, unsigned events);

struct loom_io {
    struct loom_loop *loop;
    loom_io_cb cb;
    int fd;
    unsigned events; /* what is registered with epoll now */
};

/* Bind a watcher to a loop and fd; nothing is registered until loom_io_start. */
void loom_io_init(struct loom_io *io, struct loom_loop *loop, int fd, loom_io_cb cb);

/* Watch for `events` (LOOM_IO_READ | LOOM_IO_WRITE), replacing what was watched; 0 stops.
 * Level-triggered. LOOM_EIO if epoll refuses the fd. */
loom_err loom_io_start(struct loom_io *io, unsigned events);

/* Stop watching. Safe to call from the watcher's own callback, and events already collected for
 * this watcher in the current iteration are dropped, so the memory may be freed right after. */
void loom_io_stop(struct loom_io *io);

/* ---- timers ---- */

struct loom_timer;
typedef void (*loom_timer_cb)(struct loom_timer *timer);

struct loom_timer {
    struct loom_loop *loop;
    loom_timer_cb cb;
    uint64_t deadline; /* loop time in ns */
    uint64_t repeat;   /* ns; 0 = one-shot */
    size_t heap_index; /* SIZE_MAX when not active */
};

void loom_timer_init(struct loom_timer *t, struct loom_loop *loop, loom_timer_cb cb);

/* Fire after `timeout_ns` (from the loop's cached now), then every `repeat_ns` if non-zero.
 * Restarts a running timer. Timers have sub-millisecond resolution. */
void loom_timer_start(struct loom_timer *t, uint64_t timeout_ns, uint64_t repeat_ns);

/* Fire at an absolute loop time. */
void loom_timer_start_at(struct loom_timer *t, uint64_t deadline_ns);

void loom_timer_stop(struct loom_timer *t);

static inline bool loom_timer_is_active(const struct loom_timer *t)
{
    return t->heap_index != SIZE_MAX;
}

/* ---- signals ---- */

struct loom_signal;
typedef void (*loom_signal_cb)(struct loom_signal *s, int signum);

struct loom_signal {
    struct loom_io io; /* the signalfd */
    loom_signal_cb cb;
    int signum;
};

/*
 * Block `signum` in the calling thread and deliver it to `cb` on `loop` through a signalfd.
 * Block the signals you handle in the main thread before starting other threads (see
 * loom_signal_block), or a thread without the mask may receive them.
 */
loom_err loom_signal_start(struct loom_signal *s, struct loom_loop *loop, int signum,
                           loom_signal_cb cb);
void loom_signal_stop(struct loom_signal *s);

/* Block these signals (a 0-terminated list) in the calling thread; threads it creates later
 * inherit the mask. */
void loom_signal_block(const int *signums);

/* ---- the work pool: blocking or CPU-heavy jobs off the loop ---- */

struct loom_pool;
struct loom_work;
typedef void (*loom_work_fn)(struct loom_work *w);
typedef void (*loom_work_done_fn)(struct loom_work *w, loom_err status);

struct loom_work {
    struct loom_task task; /* the completion, posted back to `loop` */
    struct loom_work *next;
    struct loom_loop *loop;
    loom_work_fn work;
    loom_work_done_fn done;
    int state;
    /* The submitter's log service and trace context, restored around work() so that its log
     * lines name the service and request they belong to. */
    const char *log_svc;
    struct loom_trace_ctx trace;
    bool traced;
};

/* A pool of `nthreads` workers (0: one per CPU) whose queue holds at most `max_queue` jobs
 * (0: unbounded). Caller frees with loom_pool_free. */
struct loom_pool *loom_pool_new(unsigned nthreads, size_t max_queue);

/* Wait for running jobs, cancel queued ones (their completions are posted with
 * LOOM_ECANCELED), join the workers and free the pool. */
void loom_pool_free(struct loom_pool *pool);

unsigned loom_pool_threads(const struct loom_pool *pool);

/*
 * Run work(w) on a worker, then done(w, LOOM_OK) on `loop`. `w` is embedded in the caller's
 * struct and must stay valid until done runs. work() runs with the submitting thread's log
 * service and current trace context. LOOM_EBUSY if the queue is full (then nothing is called).
 * Thread-safe.
 */
loom_err loom_pool_submit(struct loom_pool *pool, struct loom_loop *loop, struct loom_work *w,
                          loom_work_fn work, loom_work_done_fn done);

/* Cancel a job that has not started: its done runs on its loop with LOOM_ECANCELED. Returns
 * false (and changes nothing) if the job already started or finished. Thread-safe. */
bool loom_pool_cancel(struct loom_pool *pool, struct loom_work *w);

/* The number of CPUs this process may run on (sched_getaffinity), at least 1. */
unsigned loom_cpu_count(void);

#endif
