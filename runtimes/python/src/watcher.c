// SPDX-License-Identifier: Apache-2.0
/*
 * The watcher thread: notices tracers attaching (replay semaphores) and
 * runs the replay, flushes the ring every flush period or when a producer
 * kicks it, and samples long steps (timing_watch).
 *
 * Locking: watcher_main runs without the GIL and takes it only to replay
 * and to sample; it flushes the ring through ring.c (ring lock inside).
 * `watcher.mu` guards kick and stop wake-ups. start_watcher and
 * m_stop_watcher need the GIL (module.c, hooks.c call them); ring_kick is
 * called by producers (GIL).
 */
#include "runtime.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>


static struct {
	pthread_t thread;
	atomic_int running; /* a watcher thread exists */
	atomic_int stop;
	atomic_int tid;     /* the watcher's OS thread id, 0 until it runs */
	unsigned last;
	unsigned last_req; /* replay request semaphores seen non-zero */
	long poll_ns;
	long long flush_ns;     /* ring flush period */
	long long last_flush_ns;
	pthread_mutex_t mu; /* with cv: stop and kicks wake the watcher at once */
	pthread_cond_t cv;
	int kick;           /* under mu */
} watcher = { .mu = PTHREAD_MUTEX_INITIALIZER };

/* The condition variable measures timeouts on CLOCK_MONOTONIC (the default,
 * CLOCK_REALTIME, would turn monotonic deadlines into a busy loop). */
static pthread_once_t cv_once = PTHREAD_ONCE_INIT;
static void init_cv(void)
{
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&watcher.cv, &ca);
	pthread_condattr_destroy(&ca);
}

/* Sleeps one poll period, or less if asked to stop. */
static void watcher_sleep(void)
{
	struct timespec until;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_nsec += watcher.poll_ns % 1000000000L;
	until.tv_sec += watcher.poll_ns / 1000000000L + until.tv_nsec / 1000000000L;
	until.tv_nsec %= 1000000000L;
	pthread_mutex_lock(&watcher.mu);
	while (!atomic_load(&watcher.stop) && !watcher.kick &&
	       pthread_cond_timedwait(&watcher.cv, &watcher.mu, &until) == 0)
		;
	watcher.kick = 0;
	pthread_mutex_unlock(&watcher.mu);
}

/* A producer filled the ring past RING_KICK: flush now, not at the next poll
 * (ring.h; GIL held by the producer, never the ring lock). */
void ring_kick(void)
{
	pthread_mutex_lock(&watcher.mu);
	watcher.kick = 1;
	pthread_cond_signal(&watcher.cv);
	pthread_mutex_unlock(&watcher.mu);
}


static void run_replay(int full)
{
	if (full)
		timing_forget_stacks();
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	PyObject *m = PyImport_ImportModule("asynctrace._replay");
	PyObject *r = m ? PyObject_CallMethod(m, "replay", "O", full ? Py_True : Py_False) : NULL;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (getenv("ASYNCTRACE_DEBUG"))
		fprintf(stderr, "asynctrace: %s replay: %.1f ms (%s)\n", full ? "full" : "refresh",
			(double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6,
			r ? "ok" : "failed");
	if (!r) {
		if (getenv("ASYNCTRACE_DEBUG"))
			PyErr_Print();
		PyErr_Clear();
	}
	Py_XDECREF(r);
	Py_XDECREF(m);
}

/* Sum of all semaphores: changes while a tracer is still attaching probes. */
static unsigned semaphore_sum(void)
{
	unsigned sum = 0;
#define X(n) sum += asynctrace_##n##_semaphore;
	ASYNCTRACE__SEMAPHORES(X)
#undef X
	return sum;
}

static void *watcher_main(void *arg)
{
	(void)arg;
	atomic_store(&watcher.tid, (int)gettid());
	while (!atomic_load(&watcher.stop)) {
		watcher_sleep();
		/* Nothing sits in the ring longer than the flush period, whether
		 * the loop is busy, idle or blocked; no GIL needed. Views ask for a
		 * replay, which flushes first, so the period bounds only how stale
		 * held maps get between views; the longer it is, the more
		 * short-lived tasks never reach the kernel (fresh_erase). */
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		long long now_ns = now.tv_sec * 1000000000LL + now.tv_nsec;
		uint64_t fill = ring_unflushed();
		if ((fill && now_ns - watcher.last_flush_ns >= watcher.flush_ns) || (fill && !BATCH_ON())) {
			ring_flush();
			watcher.last_flush_ns = now_ns;
		} else if (fill >= RING_KICK) {
			ring_flush_keep(RING_KEEP);
			watcher.last_flush_ns = now_ns;
		}
		timing_watch(watcher.poll_ns);
		unsigned v = ASYNCTRACE_REPLAY_SEMAPHORE();
		unsigned req = ASYNCTRACE_REPLAY_REQUEST_MASK();
		if (v > watcher.last || (req & ~watcher.last_req)) {
			/*
			 * A new tracer attached. probes.h says tracers attach replay__end
			 * last, but generic tools (bpftrace) attach in any order: wait until
			 * the semaphores stop changing (at most ~40 polls) before replaying.
			 * A request alone (one link on a tracer already attached) needs no
			 * wait.
			 */
			for (int i = 0, prev = -1; v > watcher.last && i < 40 && !atomic_load(&watcher.stop); i++) {
				int cur = (int)semaphore_sum();
				if (cur == prev)
					break;
				prev = cur;
				watcher_sleep();
			}
			/* A new tracer (replay__end, or a full request) needs
			 * everything; a refresh request only current stacks. */
			int full = v > watcher.last || (req & ~watcher.last_req & ASYNCTRACE_REPLAY_FULL_MASK);
			v = ASYNCTRACE_REPLAY_SEMAPHORE();
			req = ASYNCTRACE_REPLAY_REQUEST_MASK();
			if (atomic_load(&watcher.stop) || IS_FINALIZING())
				break;
			PyGILState_STATE g = PyGILState_Ensure();
			if (!atomic_load(&watcher.stop))
				run_replay(full);
			PyGILState_Release(g);
		}
		watcher.last = v;
		watcher.last_req = req;
	}
	return NULL;
}

void start_watcher(void)
{
	if (atomic_load(&watcher.running))
		return;
	const char *e = getenv("ASYNCTRACE_POLL_MS");
	long ms = e ? strtol(e, NULL, 10) : 5;
	if (ms <= 0)
		ms = 5;
	watcher.poll_ns = ms * 1000000L;
	e = getenv("ASYNCTRACE_FLUSH_MS");
	ms = e ? strtol(e, NULL, 10) : 50;
	if (ms <= 0)
		ms = 50;
	watcher.flush_ns = ms * 1000000LL;
	pthread_once(&cv_once, init_cv);
	atomic_store(&watcher.stop, 0);
	atomic_store(&watcher.tid, 0);
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setstacksize(&a, 256 * 1024);
	/* Block all signals in the watcher so Python's handlers keep running on the main thread. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	if (pthread_create(&watcher.thread, &a, watcher_main, NULL) == 0)
		atomic_store(&watcher.running, 1);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&a);
}

/*
 * Stops and joins the watcher: at exit, before the interpreter goes away, and
 * before fork(), so that a program forking while dormant-traced is single-
 * threaded as without us (3.12+ warns about fork() in multi-threaded
 * processes, counting the kernel's threads).
 */
PyObject *m_stop_watcher(PyObject *mod, PyObject *arg)
{
	(void)mod;
	(void)arg;
	if (atomic_exchange(&watcher.running, 0)) {
		pthread_mutex_lock(&watcher.mu);
		atomic_store(&watcher.stop, 1);
		pthread_cond_broadcast(&watcher.cv);
		pthread_mutex_unlock(&watcher.mu);
		int tid = atomic_load(&watcher.tid);
		Py_BEGIN_ALLOW_THREADS
		pthread_join(watcher.thread, NULL);
		/* pthread_join returns when the thread cleared its tid, slightly
		 * before the kernel stops counting it: wait for that too (bounded). */
		if (tid > 0) {
			char path[64];
			snprintf(path, sizeof path, "/proc/self/task/%d", tid);
			for (int i = 0; i < 200 && access(path, F_OK) == 0; i++)
				usleep(50);
		}
		Py_END_ALLOW_THREADS
	}
	ring_flush(); /* at exit and before fork: nothing left behind */
	Py_RETURN_NONE;
}


/* In a forked child, first: the watcher thread did not survive fork. */
void watcher_after_fork_child_begin(void)
{
	atomic_store(&watcher.running, 0);
	watcher.kick = 0;
}

/* In a forked child, last: the child is a new process; no tracer is attached
 * to it yet, but it inherited the parent's semaphore values; only a rise
 * means a tracer. */
void watcher_after_fork_child_start(void)
{
	watcher.last = ASYNCTRACE_REPLAY_SEMAPHORE();
	watcher.last_req = ASYNCTRACE_REPLAY_REQUEST_MASK();
	start_watcher();
}
