// SPDX-License-Identifier: Apache-2.0
/*
 * Timing: timing__on / steps__on (probes.h "Timing records"), the step
 * slots and the watcher's samples of long steps.
 *
 * While a tracer holds timing__on, each hooked step is timed with two clock
 * reads and accounted in process: per task (a hash table by address, deltas
 * since the task's last TIMING record), per coroutine (CODE records) and per
 * process (LOOP records). The loop thread drains the deltas into the ring at
 * most every ASYNCTRACE_TIMING_MS (default 200); the watcher drains an idle
 * loop's. A step longer than the slow floor (ASYNCTRACE_SLOW_MS, default 10)
 * gets a STEP_TIMED record with the stack it ended at, and the watcher
 * samples the loop thread's Python stack while such a step runs (SAMPLE
 * records): that is where a blocking call shows, plain functions included.
 * With steps__on every step gets a STEP_TIMED record and its end stack.
 *
 * Tables: task stats (a growing ptr_table), coroutine stats (a fixed
 * ptr_table: task entries point into it, so it never moves), and done_at
 * (direct-mapped and lossy, on purpose: an unknown completion time only
 * leaves a wake-up's scheduling delay unknown; one store per completion).
 *
 * Locking: everything needs the GIL except timing_watch (the watcher, no
 * GIL: it reads step slots through their seq counters and takes the GIL to
 * sample) and the step slot release at thread exit (a pthread key
 * destructor; it only marks the slot free). No ring lock. Callers: hooks.c
 * (timing_begin/timing_end per step: no allocation there except when a
 * table grows), emit.c, replay.c, watcher.c, module.c (fork).
 */
#include "runtime.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>


uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static unsigned hist_bucket(uint64_t ns)
{
	uint64_t us = ns / 1000;
	unsigned b = us ? 63u - (unsigned)__builtin_clzll(us) : 0;
	return b < ASYNCTRACE_HIST_BUCKETS ? b : ASYNCTRACE_HIST_BUCKETS - 1;
}

struct cstat;

struct tstat {
	uintptr_t task;      /* 0: empty */
	uint64_t code;       /* coroutine code id */
	struct cstat *c;     /* its coroutine's entry (the coroutine table never moves), or NULL */
	uint64_t ready_ns;   /* runnable since (0: unknown or not runnable) */
	uint64_t busy, sched, max, last_end; /* deltas, except last_end */
	uint64_t end_stack;  /* where it last suspended (steps__on or slow steps) */
	uint32_t steps;      /* delta */
	uint16_t dirty;
	uint16_t hist[ASYNCTRACE_HIST_BUCKETS];
};

struct cstat {
	uint64_t code;       /* 0: empty */
	uint64_t busy, sched, max;
	uint32_t steps, dirty;
	uint32_t resume_credit; /* steps that keep where they resume (start_capture) before the next slow one */
	uint32_t hist[ASYNCTRACE_HIST_BUCKETS];
};
#define CODE_SLOTS 2048u

/* One step of `dur` ns, runnable `sched` ns before it: a task's or a coroutine's sums. */
static inline void add_step(uint64_t *busy, uint64_t *sched, uint64_t *max, uint64_t dur, uint64_t sched_ns)
{
	*busy += dur;
	*sched += sched_ns;
	if (dur > *max)
		*max = dur;
}

static struct {
	int on;                 /* a timing session runs (GIL) */
	struct ptr_table tasks; /* struct tstat by task; .gen: entries moved */
	uintptr_t *dirty;       /* tasks with deltas, maybe stale */
	size_t ndirty, dirty_cap;
	struct ptr_table codes; /* struct cstat by code id, CODE_SLOTS, fixed: never moves */
	int cdirty;
	uint64_t since, last_drain, period, slow_floor;
	uint64_t created, completed, steps, busy, max_window;
	uint64_t full;          /* tasks not accounted (no memory) */
} timing = {
	.tasks = { .esize = sizeof(struct tstat), .min_cap = 4096 },
	.codes = { .esize = sizeof(struct cstat), .min_cap = CODE_SLOTS, .fixed = 1 },
};

static struct tstat *tstat_find(PyObject *task)
{
	return ptr_table_find(&timing.tasks, (uintptr_t)task);
}

static uint64_t task_code_id(PyObject *task)
{
	PyObject *coro = task_coro(task);
	PyObject *code = coro_code_fast(coro);
	PyErr_Clear();
	uint64_t id = register_code(code, coro);
	Py_XDECREF(code);
	Py_XDECREF(coro);
	return id;
}

static struct cstat *cstat_get(uint64_t code)
{
	int added;
	return ptr_table_insert(&timing.codes, (uintptr_t)code, &added);
}

static struct tstat *tstat_get(PyObject *task)
{
	struct tstat *e = tstat_find(task);
	if (e)
		return e;
	uint64_t code = task_code_id(task); /* may run Python: before the entry is taken */
	int added;
	e = ptr_table_insert(&timing.tasks, (uintptr_t)task, &added);
	if (!e) {
		timing.full++;
		return NULL;
	}
	if (added) {
		e->code = code;
		e->c = code ? cstat_get(code) : NULL;
	}
	return e;
}

static void tstat_del(PyObject *task)
{
	ptr_table_delete(&timing.tasks, (uintptr_t)task);
}

/* TIMING or CODE records: counts above 255 a bucket go into more records. */
static void rec_timing(uint8_t type, uint64_t id, uint64_t code, uint32_t steps, uint64_t busy,
		       uint64_t sched, uint64_t max, uint64_t last_end, uint32_t *hist)
{
	int first = 1;
	for (;;) {
		int more = 0;
		for (int b = 0; b < ASYNCTRACE_HIST_BUCKETS; b++)
			more |= hist[b] != 0;
		if (!more && !first)
			return;
		struct asynctrace_rec *r = ring_reserve(3);
		if (!r)
			return;
		r[0] = (struct asynctrace_rec){ .type = type, .nslots = 3, .len = first ? steps : 0,
						.a = id, .b = first ? busy : 0, .c = first ? sched : 0 };
		struct asynctrace_rec_timing *t = (struct asynctrace_rec_timing *)&r[1];
		*t = (struct asynctrace_rec_timing){ .max_ns = max, .last_end_ns = last_end, .task_code = code };
		uint8_t *h = (uint8_t *)&r[2];
		for (int b = 0; b < ASYNCTRACE_HIST_BUCKETS; b++) {
			uint32_t v = hist[b] > 255 ? 255 : hist[b];
			h[b] = (uint8_t)v;
			hist[b] -= v;
		}
		ring_commit(3);
		first = 0;
	}
}

static void tstat_emit(struct tstat *e)
{
	uint32_t hist[ASYNCTRACE_HIST_BUCKETS];
	for (int b = 0; b < ASYNCTRACE_HIST_BUCKETS; b++)
		hist[b] = e->hist[b];
	rec_timing(ASYNCTRACE_REC_TIMING, e->task, e->code, e->steps, e->busy, e->sched, e->max,
		   e->last_end, hist);
	e->steps = 0;
	e->busy = e->sched = e->max = 0;
	memset(e->hist, 0, sizeof e->hist);
	e->dirty = 0;
}

static uint64_t busy_in_progress(uint64_t now);

/* Deltas into the ring (GIL held). */
static void timing_drain(uint64_t now)
{
	for (size_t k = 0; k < timing.ndirty; k++) {
		struct tstat *e = tstat_find((PyObject *)timing.dirty[k]);
		if (e && e->dirty)
			tstat_emit(e);
	}
	timing.ndirty = 0;
	if (timing.cdirty && timing.codes.cap) {
		for (size_t i = 0; i < timing.codes.cap; i++) {
			struct cstat *c = ptr_table_at(&timing.codes, i);
			if (!c->code || !c->dirty)
				continue;
			rec_timing(ASYNCTRACE_REC_CODE, c->code, c->code, c->steps, c->busy, c->sched, c->max, 0,
				   c->hist);
			c->steps = 0;
			c->busy = c->sched = c->max = 0;
			c->dirty = 0;
		}
		timing.cdirty = 0;
	}
	struct asynctrace_rec *r = ring_reserve(2);
	if (r) {
		r[0] = (struct asynctrace_rec){ .type = ASYNCTRACE_REC_LOOP, .nslots = 2, .a = timing.created,
						.b = timing.completed, .c = timing.steps };
		/* Busy up to `now`, steps in progress included: a reader's busy
		 * between two LOOP records is then at most their distance (times
		 * the loop threads), whatever the steps' lengths. */
		*(struct asynctrace_rec_loop *)&r[1] = (struct asynctrace_rec_loop){
			.busy_ns = timing.busy + busy_in_progress(now), .max_step_ns = timing.max_window,
			.at_ns = now, .since_ns = timing.since };
		ring_commit(2);
	}
	timing.max_window = 0;
	timing.last_drain = now;
}

static uint64_t env_ms(const char *name, uint64_t dflt)
{
	const char *e = getenv(name);
	long v = e ? strtol(e, NULL, 10) : 0;
	return (uint64_t)(v > 0 ? v : (long)dflt) * 1000000ull;
}

/* Is a timing session on? Starts one (fresh counters) when timing__on rose. */
static int timing_active(void)
{
	if (!TIMING_ON()) {
		if (timing.on)
			timing.on = 0; /* no store per step while nobody times */
		return 0;
	}
	if (!timing.on) {
		ptr_table_clear(&timing.tasks);
		timing.ndirty = 0;
		ptr_table_clear(&timing.codes);
		timing.cdirty = 0;
		timing.created = timing.completed = timing.steps = timing.busy = timing.max_window = timing.full = 0;
		timing.period = env_ms("ASYNCTRACE_TIMING_MS", 200);
		timing.slow_floor = env_ms("ASYNCTRACE_SLOW_MS", 10);
		timing.since = timing.last_drain = now_ns();
		timing.on = 1;
	}
	return 1;
}

/* Steps in progress, one slot per thread that ran a timed step, for the
 * watcher's samples. A thread takes a free slot at its first timed step and
 * gives it back when it exits (a pthread key destructor), so any number of
 * loop threads over a process's life are sampled, STEP_SLOTS at a time. The
 * watcher reads a slot only while its seq is odd (a step runs); seq only
 * grows, across owners too, so a slot reused between two reads is noticed. */
#define STEP_SLOTS 64
struct step_slot {
	_Atomic uint64_t seq;      /* odd while a step runs */
	_Atomic uint64_t start_ns;
	_Atomic int used;          /* owned by a live thread */
	PyThreadState *ts;
	PyObject *task;            /* borrowed: the hook holds a reference */
	uint32_t nsamples;
	uint64_t last_sample_ns;   /* watcher only */
};
static struct step_slot step_slots[STEP_SLOTS];
static _Atomic int nstep_slots; /* high-water mark of slots ever used */
static __thread int tls_step_slot = -1; /* STEP_SLOTS: none was free */
static pthread_key_t step_slot_key;
static pthread_once_t step_slot_once = PTHREAD_ONCE_INIT;

/* Thread exit (no GIL): the slot is free again. Its seq is even (no step
 * runs on an exiting thread). */
static void step_slot_release(void *p)
{
	struct step_slot *s = p;
	atomic_store_explicit(&s->used, 0, memory_order_release);
}

static void step_slot_key_init(void)
{
	pthread_key_create(&step_slot_key, step_slot_release);
}

static struct step_slot *my_step_slot(void)
{
	if (__builtin_expect(tls_step_slot < 0, 0)) {
		/* Once a thread: no allocation, no lock. */
		pthread_once(&step_slot_once, step_slot_key_init);
		tls_step_slot = STEP_SLOTS;
		for (int i = 0; i < STEP_SLOTS; i++) {
			int expected = 0;
			if (atomic_compare_exchange_strong(&step_slots[i].used, &expected, 1)) {
				tls_step_slot = i;
				int hw = atomic_load(&nstep_slots);
				while (hw < i + 1 && !atomic_compare_exchange_weak(&nstep_slots, &hw, i + 1))
					;
				pthread_setspecific(step_slot_key, &step_slots[i]);
				break;
			}
		}
	}
	return tls_step_slot < STEP_SLOTS ? &step_slots[tls_step_slot] : NULL;
}

/* The time the steps in progress (one a thread, the outermost) have run
 * until `now`. GIL held: no step starts or ends (timing_begin/timing_end)
 * while this reads, so a step is either in progress here or in timing.busy. */
static uint64_t busy_in_progress(uint64_t now)
{
	uint64_t sum = 0;
	int n = atomic_load(&nstep_slots);
	for (int i = 0; i < n && i < STEP_SLOTS; i++) {
		struct step_slot *s = &step_slots[i];
		if (!(atomic_load_explicit(&s->seq, memory_order_acquire) & 1))
			continue;
		uint64_t start = atomic_load_explicit(&s->start_ns, memory_order_relaxed);
		sum += now > start ? now - start : 0;
	}
	return sum;
}

/* Where the task is suspended as its step begins: the resume point a slow
 * step reports (the frames are gone by the time the step is known to be
 * slow). A frame walk a step costs as much as a short step itself, so it is
 * taken only when tracers do not have that stack already, and only for tasks
 * of coroutines with slow steps: each slow step gives its coroutine
 * RESUME_CREDIT more walks. A coroutine slow at least once in that many
 * steps keeps them all; one slow by accident (a GC pause) stops paying soon.
 * The first slow step of a coroutine (or one after a long calm) has no
 * resume point. */
#define RESUME_CREDIT 256u
static void start_capture(PyObject *task, struct step_clock *sc)
{
	PyObject *w = task_waiter(task);
	sc->start_awaited = (uintptr_t)w;
	sc->start_kind = await_kind_of(w);
	Py_XDECREF(w);
	PyObject *coro = task_coro(task);
	sc->nstart = (uint32_t)collect_frames(coro, sc->start_frames);
	Py_XDECREF(coro);
	PyErr_Clear();
}

void timing_begin(PyObject *task, struct step_clock *sc)
{
	sc->start = 0;
	sc->slot = NULL;
	sc->nested = 0;
	sc->start_stack = 0;
	sc->nstart = 0;
	if (!timing_active())
		return;
	struct tstat *e = tstat_get(task);
	if (e && e->end_stack) {
		sc->start_stack = e->end_stack;
	} else if (e && e->c && e->c->resume_credit) {
		e->c->resume_credit--;
		start_capture(task, sc);
		e = tstat_find(task); /* collect_frames may have run Python */
	}
	sc->start = now_ns();
	sc->sched = e && e->ready_ns && sc->start > e->ready_ns ? sc->start - e->ready_ns : 0;
	sc->gen = timing.tasks.gen;
	sc->idx = e ? (size_t)((unsigned char *)e - timing.tasks.slots) / sizeof *e : (size_t)-1;
	if (e)
		e->ready_ns = 0;
	struct step_slot *s = my_step_slot();
	if (s && !(atomic_load_explicit(&s->seq, memory_order_relaxed) & 1)) {
		s->ts = PyThreadState_Get();
		s->task = task;
		s->nsamples = 0;
		atomic_store_explicit(&s->start_ns, sc->start, memory_order_relaxed);
		atomic_fetch_add_explicit(&s->seq, 1, memory_order_release);
		sc->slot = s;
	}
	sc->nested = s && !sc->slot;
}

/* Which stack the task is suspended at now (0: none), sent as a STACK record
 * if it is not the one tracers were last told. */
static uint64_t timing_end_stack(PyObject *task, struct tstat *e)
{
	PyObject *w = task_waiter(task);
	int kind = await_kind_of(w);
	PyObject *coro = task_coro(task);
	struct asynctrace_frame frames[ASYNCTRACE_MAX_FRAMES];
	size_t n = collect_frames(coro, frames);
	Py_XDECREF(coro);
	uint64_t id = n ? stack_id(frames, n) : 0;
	if (id && (!e || e->end_stack != id))
		rec_stack(task, w, kind, frames, n);
	Py_XDECREF(w);
	PyErr_Clear();
	return id;
}

/* Tracers have this stack of the task now (a STACK record). */
void timing_stack_sent(PyObject *task, uint64_t id)
{
	struct tstat *e = timing.on ? tstat_find(task) : NULL;
	if (e)
		e->end_stack = id;
}

/* A full replay re-tells a new tracer everything: the stacks it has are
 * only those the replay sends. */
void timing_forget_stacks(void)
{
	for (size_t i = 0; i < timing.tasks.cap; i++)
		((struct tstat *)ptr_table_at(&timing.tasks, i))->end_stack = 0;
}

void timing_end(PyObject *task, struct step_clock *sc)
{
	if (!sc->start)
		return;
	uint64_t end = now_ns(), dur = end > sc->start ? end - sc->start : 0;
	uint32_t nsamples = 0;
	if (sc->slot) {
		nsamples = sc->slot->nsamples;
		atomic_fetch_add_explicit(&sc->slot->seq, 1, memory_order_release);
	}
	if (!timing.on)
		return; /* the session ended during the step */
	int done = task_is_done(task);
	unsigned b = hist_bucket(dur);
	timing.steps++;
	/* A step nested in another (run_until_complete inside a step) is part
	 * of the outer one's time: the loop's busy counts outermost steps. A
	 * thread with no slot (STEP_SLOTS threads took them) counts them all. */
	if (!sc->nested)
		timing.busy += dur;
	if (dur > timing.max_window)
		timing.max_window = dur;
	/* The entry found at the step's start, unless entries moved since. */
	struct tstat *e = sc->gen == timing.tasks.gen && sc->idx < timing.tasks.cap &&
				  ptr_table_key_at(&timing.tasks, sc->idx) == (uintptr_t)task
				  ? ptr_table_at(&timing.tasks, sc->idx) : tstat_find(task);
	uint64_t code = e ? e->code : 0;
	struct cstat *c = e ? e->c : NULL;
	if (c) {
		c->steps++;
		add_step(&c->busy, &c->sched, &c->max, dur, sc->sched);
		c->hist[b]++;
		c->dirty = 1;
		timing.cdirty = 1;
	}
	int slow = dur >= timing.slow_floor;
	if (slow && c)
		c->resume_credit = c->resume_credit + RESUME_CREDIT < 4 * RESUME_CREDIT ? c->resume_credit + RESUME_CREDIT
										  : 4 * RESUME_CREDIT;
	if (slow || STEPS_ON()) {
		uint64_t start_stack = sc->start_stack;
		if (!start_stack && sc->nstart) {
			/* Tracers learn the resume point now, with the await
			 * state it had; the end's records follow and replace it. */
			start_stack = stack_id(sc->start_frames, sc->nstart);
			rec_stack(task, (PyObject *)sc->start_awaited, sc->start_kind, sc->start_frames, sc->nstart);
			e = tstat_find(task);
		}
		uint64_t end_stack = done ? 0 : timing_end_stack(task, e);
		e = tstat_find(task); /* collect_frames may have run Python */
		if (e)
			e->end_stack = end_stack;
		fresh_keep((uintptr_t)task); /* its CREATE must reach tracers: they name its steps */
		struct asynctrace_rec *r = ring_reserve(2);
		if (r) {
			r[0] = (struct asynctrace_rec){
				.type = ASYNCTRACE_REC_STEP_TIMED, .nslots = 2, .len = native_tid(),
				.kind = (uint8_t)((done ? ASYNCTRACE_STEP_COMPLETED : 0) | (slow ? ASYNCTRACE_STEP_SLOW : 0)),
				.a = (uint64_t)(uintptr_t)task, .b = sc->start, .c = dur };
			*(struct asynctrace_rec_step_timed *)&r[1] = (struct asynctrace_rec_step_timed){
				.start_stack = start_stack, .end_stack = end_stack, .nsamples = nsamples,
				.task_code = code };
			ring_commit(2);
		}
	}
	if (e) {
		e->steps++;
		add_step(&e->busy, &e->sched, &e->max, dur, sc->sched);
		if (e->hist[b] < UINT16_MAX)
			e->hist[b]++;
		e->last_end = end;
		if (!slow && !STEPS_ON())
			e->end_stack = 0; /* suspended somewhere tracers were not told */
		if (done) {
			tstat_del(task);
		} else {
			PyObject *w = task_waiter(task);
			e->ready_ns = w ? 0 : end; /* a bare yield: runnable again at once */
			Py_XDECREF(w);
			if (!e->dirty) {
				if (timing.ndirty == timing.dirty_cap) {
					size_t cap = timing.dirty_cap ? timing.dirty_cap * 2 : 1024;
					uintptr_t *d = realloc(timing.dirty, cap * sizeof *d);
					if (d) {
						timing.dirty = d;
						timing.dirty_cap = cap;
					}
				}
				if (timing.ndirty < timing.dirty_cap) {
					timing.dirty[timing.ndirty++] = e->task;
					e->dirty = 1;
				}
			}
			if (e->hist[b] >= UINT16_MAX - 1)
				tstat_emit(e); /* a bucket would saturate: send it now */
		}
	}
	if (end - timing.last_drain >= timing.period)
		timing_drain(end);
}

void timing_created(PyObject *task)
{
	if (!timing_active())
		return;
	timing.created++;
	struct tstat *e = tstat_get(task);
	if (e && !e->ready_ns)
		e->ready_ns = now_ns(); /* its first step is scheduled */
}

void timing_completed(PyObject *task)
{
	if (!timing.on)
		return;
	timing.completed++;
	tstat_del(task);
}

/* A task woke up `fut` was awaiting: when did `fut` complete? Tasks only
 * (their completion goes through the hooks); a plain future's is unknown. */
#define DONE_SLOTS 4096u
static struct { uintptr_t fut; uint64_t ns; } done_at[DONE_SLOTS];

static size_t done_slot(PyObject *fut)
{
	return ptr_hash((uintptr_t)fut, DONE_SLOTS);
}

void timing_note_done(PyObject *fut)
{
	if (!timing.on)
		return;
	size_t i = done_slot(fut);
	done_at[i].fut = (uintptr_t)fut;
	done_at[i].ns = now_ns();
}

void timing_wakeup(PyObject *task, PyObject *fut)
{
	if (!timing.on)
		return;
	size_t i = done_slot(fut);
	if (done_at[i].fut != (uintptr_t)fut)
		return;
	struct tstat *e = tstat_find(task);
	if (e && !e->ready_ns)
		e->ready_ns = done_at[i].ns;
}

/* The watcher, GIL held: the Python stack of the thread running `s`'s step,
 * innermost first, down to the task's coroutine, as a SAMPLE record. */
static void take_sample(struct step_slot *s, uint64_t now)
{
	PyObject *coro = task_coro(s->task);
	PyObject *top = coro_code_fast(coro);
	Py_XDECREF(coro);
	PyErr_Clear();
	PyFrameObject *f = PyThreadState_GetFrame(s->ts);
	struct { PyCodeObject *code; int line; } chain[CHAIN_MAX];
	size_t n = 0;
	int reached = 0;
	while (f && n < CHAIN_MAX) {
		PyCodeObject *code = PyFrame_GetCode(f);
		chain[n].code = code;
		chain[n].line = PyFrame_GetLineNumber(f);
		n++;
		if ((PyObject *)code == top) {
			reached = 1;
			break;
		}
		PyFrameObject *back = PyFrame_GetBack(f);
		Py_DECREF(f);
		f = back;
	}
	Py_XDECREF(f);
	Py_XDECREF(top);
	/* chain[] is innermost first; keep the innermost frames. */
	struct asynctrace_frame frames[ASYNCTRACE_MAX_FRAMES];
	size_t keep = n < ASYNCTRACE_MAX_FRAMES ? n : ASYNCTRACE_MAX_FRAMES;
	for (size_t i = 0; i < keep; i++) {
		frames[i].code_id = register_code((PyObject *)chain[i].code, NULL);
		frames[i].line = chain[i].line > 0 ? (uint32_t)chain[i].line : 0;
		frames[i].flags = 0;
	}
	if (keep && (n > keep || !reached))
		frames[keep - 1].flags |= ASYNCTRACE_FRAME_TRUNCATED;
	for (size_t i = 0; i < n; i++)
		Py_DECREF(chain[i].code);
	PyErr_Clear();
	if (!keep)
		return;
	uint32_t ns = 1 + (uint32_t)(keep + 1) / 2;
	struct asynctrace_rec *r = ring_reserve(ns);
	if (!r)
		return;
	r[0] = (struct asynctrace_rec){ .type = ASYNCTRACE_REC_SAMPLE, .nslots = (uint16_t)ns,
					.len = (uint32_t)keep, .a = (uint64_t)(uintptr_t)s->task,
					.b = now, .c = stack_id(frames, keep) };
	memset(&r[1], 0, (size_t)(ns - 1) * sizeof(*r));
	memcpy(&r[1], frames, keep * sizeof(struct asynctrace_frame));
	ring_commit(ns);
	s->nsamples++;
}

/* The watcher, without the GIL: sample steps running past the slow floor
 * (any running step with steps__on), and drain an idle loop's deltas. */
void timing_watch(long long poll_ns)
{
	if (!TIMING_ON() || IS_FINALIZING())
		return;
	uint64_t now = now_ns();
	uint64_t floor = STEPS_ON() ? (uint64_t)poll_ns : timing.slow_floor;
	int n = atomic_load(&nstep_slots);
	for (int i = 0; i < n && i < STEP_SLOTS; i++) {
		struct step_slot *s = &step_slots[i];
		uint64_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
		if (!(seq & 1))
			continue;
		uint64_t start = atomic_load_explicit(&s->start_ns, memory_order_relaxed);
		if (!floor || now < start + floor || now < s->last_sample_ns + (uint64_t)poll_ns)
			continue;
		PyGILState_STATE g = PyGILState_Ensure();
		/* The step still runs (its thread waits for the GIL or blocks
		 * without it): its frames hold still while we read them. */
		if (atomic_load_explicit(&s->seq, memory_order_acquire) == seq && timing.on)
			take_sample(s, now_ns());
		PyGILState_Release(g);
		s->last_sample_ns = now_ns();
	}
	/* A loop that runs no step (idle, or blocked in one) still reports: the
	 * session starts here, deltas do not wait for its next step, and a long
	 * step's busy time reaches readers every period while it runs (its
	 * thread cannot drain: it is in the step). */
	if (!timing.on || (timing.ndirty && now > timing.last_drain + 2 * timing.period) ||
	    (busy_in_progress(now) >= timing.period / 2 && now > timing.last_drain + timing.period)) {
		PyGILState_STATE g = PyGILState_Ensure();
		if (timing_active())
			timing_drain(now_ns());
		PyGILState_Release(g);
	}
}

/* In a forked child: other threads' steps are gone, and the session. */
void timing_after_fork_child(void)
{
	for (int i = 0; i < STEP_SLOTS; i++) {
		atomic_store(&step_slots[i].seq, 0); /* other threads' steps are gone */
		if (i != tls_step_slot)
			atomic_store(&step_slots[i].used, 0); /* their threads too */
	}
	timing.on = 0;
}

/* enable() after its own sample objects are gone: a session restarts at the next hook. */
void timing_restart(void) { timing.on = 0; }

/* Tasks not accounted for lack of memory (ring_stats). */
uint64_t timing_full(void) { return timing.full; }
