// SPDX-License-Identifier: Apache-2.0
/*
 * asynctrace._asynctrace: emits the asynctrace USDT probes (include/asynctrace/probes.h)
 * from CPython's C asyncio implementation (_asyncio), for CPython 3.10 .. 3.13.
 *
 * Nothing in Python's view of asyncio changes: we never replace a Python object,
 * we swap a few C function pointers of the _asyncio types for wrappers that call
 * the original and, only when a tracer is attached (USDT semaphore non-zero),
 * describe what happened:
 *
 *   Task.tp_init (+ the __init__ slot wrapper used by super().__init__(),
 *                 + existing subclasses that copied the slot)   -> task__create
 *   TaskStepMethWrapper.tp_call (first step, sleep(0), cancel)  -> resume / await / complete
 *   TaskWakeupDef.ml_meth (done-callback of an awaited future)  -> resume / await / complete
 *   Task.tp_finalize (+ __del__ slot wrapper, subclasses)       -> complete(DESTROYED)
 *
 * The Python side (asynctrace/__init__.py) discovers these objects with a
 * throw-away task on a fake loop and passes them to _install(); this file
 * checks the private layouts it relies on against those live objects.
 *
 * Late attach: a watcher pthread polls the replay__end semaphore without the
 * GIL and, when it grows, takes the GIL and runs asynctrace._replay.replay(),
 * which walks the live tasks and calls the emit_* helpers below.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>
#include <structmember.h>

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ASYNCTRACE_DEFINE_SEMAPHORES
#include "asynctrace/probes.h"

/* Never called: the request probes exist for their semaphores (probes.h). */
__attribute__((visibility("hidden"))) void asynctrace_replay_request_sites(int i);
ASYNCTRACE_DEFINE_REPLAY_REQUEST_SITES()
__attribute__((visibility("hidden"))) void asynctrace_mode_sites(int i);
ASYNCTRACE_DEFINE_MODE_SITES()

#if PY_VERSION_HEX < 0x030A0000
#error "asynctrace needs CPython >= 3.10"
#endif

/* ---- version differences, in one place ---------------------------------- */

#if PY_VERSION_HEX >= 0x030C0000
typedef PyObject *exc_state_t;
#define EXC_SAVE(s) ((s) = PyErr_GetRaisedException())
#define EXC_RESTORE(s) PyErr_SetRaisedException(s)
#else
typedef struct { PyObject *t, *v, *tb; } exc_state_t;
#define EXC_SAVE(s) PyErr_Fetch(&(s).t, &(s).v, &(s).tb)
#define EXC_RESTORE(s) PyErr_Restore((s).t, (s).v, (s).tb)
#endif

#if PY_VERSION_HEX >= 0x030D0000
#define IS_FINALIZING() Py_IsFinalizing()
#else
#define IS_FINALIZING() _Py_IsFinalizing()
#endif

/* 3.12 added eager tasks: their first step runs inside Task.__init__. */
#define HAVE_EAGER_TASKS (PY_VERSION_HEX >= 0x030C0000)

/*
 * Private layouts read directly. Identical in 3.10..3.13 (Modules/_asynciomodule.c,
 * Objects/genobject.c); _install() verifies them on live objects and refuses
 * to hook if they do not match.
 */
typedef struct {
	PyObject_HEAD
	PyObject *sw_task; /* TaskObj * */
	PyObject *sw_arg;
} StepMethWrapper;

typedef struct {
	PyObject_HEAD
	PyObject *gen; /* ags_gen / agt_gen: the async generator */
} AsyncGenAwaitable;

/* ---- state ---------------------------------------------------------------- */

static struct {
	int installed;
	PyTypeObject *task_type;
	PyTypeObject *step_type;
	PyMethodDef *wakeup_def;
	PyObject *init_descr;  /* Task.__dict__['__init__'] (wrapper_descriptor) */
	PyObject *del_descr;   /* Task.__dict__['__del__'] */
	initproc orig_init;
	destructor orig_finalize;
	ternaryfunc orig_step_call;
	PyCFunction orig_wakeup;
	PyMethodDef *set_name_def;
	int loop_field_ok;        /* ((PyObject **)task)[2] is task._loop */
	PyCFunction orig_set_name;

	PyObject *gathering_future_type; /* asyncio.tasks._GatheringFuture */
	PyObject *current_tasks;         /* _asyncio._current_tasks (dict loop -> task) */
	PyObject *get_running_loop;      /* _asyncio._get_running_loop */
	PyTypeObject *asend_type, *athrow_type;

	unsigned session_sem;     /* replay semaphore value the code set belongs to */
	uint64_t replay_gen;
	int in_replay;            /* the replay runs: await states carry their frames */
	PyObject *shield_code;    /* code of asyncio.shield's _outer_done_callback */
	Py_ssize_t shield_inner;  /* index of `inner` in its closure, -1 if unknown */
} S;

/*
 * Field positions inside _asyncio's FutureObj / TaskObj, found at install on
 * live sample objects (asynctrace/_discover.py layout_samples) and verified
 * there; the hot path reads them directly instead of calling Python getters.
 * Indices count PyObject * words from the object start.
 */
static struct {
	int ok;
	int callbacks_ok;                        /* fut_callbacks is word cb0 + 2 */
	Py_ssize_t coro, waiter, name, exc, cb0; /* word indices */
	Py_ssize_t state_off;                    /* byte offset of the fut_state int */
	int st_pending, st_cancelled, st_finished;
} L;

/* Interned attribute names. */
static PyObject *s_state, *s_fut_waiter, *s_get_coro, *s_get_name, *s_loop, *s_exception,
	*s_callbacks, *s_children, *s_cr_frame, *s_gi_frame, *s_ag_frame, *s_cr_await,
	*s_gi_yieldfrom, *s_ag_await, *s_qualname, *s_done, *s_cr_suspended, *s_gi_suspended,
	*s_outer_done_callback, *s_inner, *s_eager_start, *s_co_freevars;

/* Per-thread: frames buffer the tracer reads during task__await. */
static __thread struct asynctrace_frame tls_frames[ASYNCTRACE_MAX_FRAMES];

/*
 * Eager tasks (3.12+) run their first step inside tp_init, before we could emit
 * task__create (the name is only known once tp_init has set it). Tasks whose
 * tp_init is in progress on this thread are kept here; anything emitted from
 * inside that step first flushes their task__create + task__resume so tracers
 * always see a task created before it is referenced.
 */
#define MAX_PENDING 16
static __thread struct pending {
	PyObject *task;
	uint64_t parent;
	PyObject *coro; /* borrowed from tp_init's arguments */
	int flushed;
} tls_pending[MAX_PENDING];
static __thread int tls_npending;

/* loop -> native tid of the thread that ran its steps (learned while traced). */
#define LOOP_TID_SLOTS 64
static struct { _Atomic uintptr_t loop; _Atomic uint32_t tid; } loop_tids[LOOP_TID_SLOTS];

/* gettid() is a syscall: once per thread (reset in a forked child). */
static __thread uint32_t tls_tid;
static __thread uintptr_t tls_last_loop; /* loop whose tid this thread last recorded */

static uint32_t native_tid(void)
{
	if (!tls_tid)
		tls_tid = (uint32_t)gettid();
	return tls_tid;
}

static void learn_loop_tid(PyObject *loop)
{
	uintptr_t key = (uintptr_t)loop;
	if (key == tls_last_loop)
		return; /* steps of one loop run on one thread: nothing new */
	tls_last_loop = key;
	size_t h = (key >> 4) % LOOP_TID_SLOTS;
	atomic_store(&loop_tids[h].loop, key);
	atomic_store(&loop_tids[h].tid, native_tid());
}

static uint32_t lookup_loop_tid(uintptr_t key)
{
	size_t h = (key >> 4) % LOOP_TID_SLOTS;
	if (atomic_load(&loop_tids[h].loop) == key)
		return atomic_load(&loop_tids[h].tid);
	return 0;
}

/*
 * In a forked child the parent's Task objects are still there, but their loop
 * never runs again (3.12+ asyncio resets the running loop in the child; a
 * loop of another thread lost its thread). A replay in the child shows only
 * tasks of loops that created or stepped a task since the fork, as Python's
 * all_tasks() shows only the running loop's. fork_gen counts forks in this
 * process's ancestry; 0 (never forked) costs the hooks one branch.
 */
#define ALIVE_LOOP_SLOTS 64
static unsigned fork_gen;
static uintptr_t alive_loops[ALIVE_LOOP_SLOTS]; /* GIL; open addressing, never removed */
static __thread uintptr_t tls_alive_loop;

static void note_loop_alive(PyObject *loop)
{
	uintptr_t key = (uintptr_t)loop;
	if (!key || key == tls_alive_loop)
		return;
	tls_alive_loop = key;
	for (size_t i = 0, h = (key >> 4) % ALIVE_LOOP_SLOTS; i < ALIVE_LOOP_SLOTS; i++, h = (h + 1) % ALIVE_LOOP_SLOTS) {
		if (alive_loops[h] == key)
			return;
		if (!alive_loops[h]) {
			alive_loops[h] = key;
			return;
		}
	}
	/* Full (64 loops ran in the child): the replay shows every task. */
	fork_gen = 0;
}

/* False for a loop inherited from the parent that has done nothing since. */
static int loop_alive(PyObject *loop)
{
	uintptr_t key = (uintptr_t)loop;
	if (!fork_gen || !key)
		return 1;
	for (size_t i = 0, h = (key >> 4) % ALIVE_LOOP_SLOTS; i < ALIVE_LOOP_SLOTS; i++, h = (h + 1) % ALIVE_LOOP_SLOTS) {
		if (alive_loops[h] == key)
			return 1;
		if (!alive_loops[h])
			return 0;
	}
	return 0;
}

#define ANY_STEP_PROBE_ON() \
	(ASYNCTRACE_TASK_RESUME_ENABLED() | ASYNCTRACE_TASK_AWAIT_ENABLED() | \
	 ASYNCTRACE_TASK_COMPLETE_ENABLED() | ASYNCTRACE_BATCH_FLUSH_ENABLED())
#define BATCH_ON() ASYNCTRACE_BATCH_FLUSH_ENABLED()

/* ---- event ring: the batch path (probes.h, batch__flush) --------------------
 *
 * One ring per process. Records are appended only with the GIL held, so the
 * GIL orders producers (all threads) and the ring keeps event order across
 * threads. A flusher (the watcher thread every poll period or when kicked,
 * or a producer finding the ring full) holds `lock`, fires batch__flush over
 * the published, unflushed range, and then advances `tail`; the tracer's BPF
 * program reads the records during the probe. Nothing is computed or kept
 * while no tracer attached batch__flush. */
#define RING_SLOTS 65536u /* 2 MiB, allocated when a tracer first attaches */
#define RING_MASK (RING_SLOTS - 1)
#define RING_KICK (RING_SLOTS / 4) /* wake the watcher at this fill */
/* A flush the fill asked for leaves the newest RING_KEEP slots (whole
 * records) in the ring: tasks created in them may still complete unflushed
 * and never reach the kernel (fresh_erase). Without it, every task alive at
 * such a flush did: in a churn of short tasks created in bursts, a quarter
 * of them, an insert and a delete in the kernel's hash map each. */
#define RING_KEEP (RING_SLOTS / 8)

static struct {
	struct asynctrace_rec *slots;
	uint64_t head;            /* next free position (GIL) */
	_Atomic uint64_t pub;     /* head as published to flushers */
	_Atomic uint64_t tail;    /* first position not flushed yet */
	atomic_flag lock;
	_Atomic uint64_t dropped; /* records lost (no memory): cumulative */
	_Atomic int kicked;
} R = { .lock = ATOMIC_FLAG_INIT };

static void kick_watcher(void);

/* Counters of the batch path (GIL), for ring_stats(): what was written and
 * what never had to be. */
static struct {
	uint64_t records[16];  /* by type */
	uint64_t erased;       /* tasks created and completed between two flushes */
	uint64_t same_state;   /* steps that repeated the task's last state */
	uint64_t flushes;      /* batch__flush probes fired */
	uint64_t self_flushes; /* by a producer finding the ring full */
	uint64_t edges_in_create; /* edges carried by their child's CREATE */
} RS;

static void ring_lock(void)
{
	while (atomic_flag_test_and_set_explicit(&R.lock, memory_order_acquire))
		sched_yield();
}

static void ring_unlock(void) { atomic_flag_clear_explicit(&R.lock, memory_order_release); }

/* With the lock: hands the published records to the tracers (or drops them
 * when none listens any more), all but those starting in the newest `keep`
 * slots. Record headers between tail and pub are stable under the lock
 * (fresh_erase and fresh_note change a type, never a length). */
static void ring_flush_locked(uint64_t keep)
{
	uint64_t t = atomic_load_explicit(&R.tail, memory_order_relaxed);
	uint64_t h = atomic_load_explicit(&R.pub, memory_order_acquire);
	if (keep) {
		uint64_t end = t;
		while (end < h && h - end > keep) {
			uint16_t n = R.slots[end & RING_MASK].nslots;
			if (!n)
				break; /* never written so: flush up to here */
			end += n;
		}
		h = end;
	}
	if (BATCH_ON()) {
		while (t < h) {
			uint32_t off = (uint32_t)(t & RING_MASK);
			uint64_t n = h - t;
			if (n > RING_SLOTS - off)
				n = RING_SLOTS - off;
			/* Register operands only: tracers (libbpf) cannot read
			 * %rip-relative USDT arguments. */
			struct asynctrace_rec *recs = &R.slots[off];
			uint64_t dropped = atomic_load_explicit(&R.dropped, memory_order_relaxed);
			__asm__ volatile("" : "+r"(recs), "+r"(n), "+r"(dropped));
			ASYNCTRACE_BATCH_FLUSH(recs, n, dropped);
			RS.flushes++; /* racy without the GIL: approximate */
			t += n;
		}
	}
	atomic_store_explicit(&R.tail, h, memory_order_release);
	atomic_store_explicit(&R.kicked, 0, memory_order_relaxed);
}

static void ring_flush_keep(uint64_t keep)
{
	if (!R.slots)
		return;
	ring_lock();
	ring_flush_locked(keep);
	ring_unlock();
}

/* Everything published: replays, exit, fork, a full ring, the flush period. */
static void ring_flush(void) { ring_flush_keep(0); }

/*
 * Space for an n-slot record (GIL held), or NULL (counted as dropped). No
 * Python API may run between ring_reserve() and ring_commit(): a finalizer
 * run by the GC could append a record in between.
 */
static struct asynctrace_rec *ring_reserve(uint32_t n)
{
	if (!R.slots) {
		R.slots = aligned_alloc(64, (size_t)RING_SLOTS * sizeof(struct asynctrace_rec));
		if (!R.slots) {
			atomic_fetch_add_explicit(&R.dropped, 1, memory_order_relaxed);
			return NULL;
		}
	}
	uint64_t h = R.head;
	uint32_t off = (uint32_t)(h & RING_MASK);
	uint32_t pad = off + n > RING_SLOTS ? RING_SLOTS - off : 0;
	if (h + pad + n - atomic_load_explicit(&R.tail, memory_order_acquire) > RING_SLOTS) {
		RS.self_flushes++;
		ring_flush();
		if (h + pad + n - atomic_load_explicit(&R.tail, memory_order_acquire) > RING_SLOTS) {
			atomic_fetch_add_explicit(&R.dropped, 1, memory_order_relaxed);
			return NULL;
		}
	}
	if (pad) {
		R.slots[off] = (struct asynctrace_rec){ .type = ASYNCTRACE_REC_PAD, .nslots = (uint16_t)pad };
		R.head = h + pad;
	}
	return &R.slots[R.head & RING_MASK];
}

static void ring_commit(uint32_t n)
{
	RS.records[R.slots[R.head & RING_MASK].type & 15]++;
	R.head += n;
	atomic_store_explicit(&R.pub, R.head, memory_order_release);
	if (R.head - atomic_load_explicit(&R.tail, memory_order_relaxed) >= RING_KICK &&
	    !atomic_exchange_explicit(&R.kicked, 1, memory_order_relaxed))
		kick_watcher();
}

/*
 * Tasks whose first CREATE record has not been flushed yet, by address
 * (direct-mapped: a collision just forgets the older task). When such a task
 * completes before the flush, its CREATE becomes a PAD record and no COMPLETE
 * is written: the tracer never sees the task, as if it had lived between two
 * looks. Records about it in between (STEP, EDGE_ADD) name a task the tracer
 * does not know, and the batch path ignores those (probes.h). Short-lived
 * tasks are most tasks of a busy service; this keeps them out of the
 * kernel's hash map (an insert and a delete each).
 */
#define FRESH_SLOTS 16384u
static struct {
	uintptr_t task;
	uint64_t pos; /* ring position of the CREATE record */
} fresh[FRESH_SLOTS];

/* By address, like the state table: tasks created together share lines
 * (128 bytes a slot: one task at most; 2 MiB of addresses before slots
 * repeat). */
static size_t fresh_slot(PyObject *task)
{
	return (size_t)((uintptr_t)task >> 7) & (FRESH_SLOTS - 1);
}

/* A CREATE record for `task` at `pos`: remember it if it is the task's first. */
/*
 * With the ring lock taken: the task's first CREATE record if it is still
 * unflushed (no flush can read it now), else NULL and the lock released.
 * NULL without the lock too when the task has no such record or a flush runs.
 */
static struct asynctrace_rec *fresh_create_locked(PyObject *task)
{
	size_t i = fresh_slot(task);
	if (fresh[i].task != (uintptr_t)task || !R.slots ||
	    atomic_flag_test_and_set_explicit(&R.lock, memory_order_acquire))
		return NULL;
	uint64_t pos = fresh[i].pos;
	struct asynctrace_rec *r = &R.slots[pos & RING_MASK];
	if (pos >= atomic_load_explicit(&R.tail, memory_order_relaxed) && r->type == ASYNCTRACE_REC_CREATE &&
	    r->a == (uint64_t)(uintptr_t)task)
		return r; /* records never wrap: r[1] is its slot 1 */
	ring_unlock();
	return NULL;
}

static void forget_step(PyObject *task);

static void fresh_note(PyObject *task, uint64_t pos, int first)
{
	size_t i = fresh_slot(task);
	forget_step(task); /* a new task at an old address, or a replayed one */
	if (first) {
		fresh[i].task = (uintptr_t)task;
		fresh[i].pos = pos;
		return;
	}
	/* Renamed while its first CREATE is unflushed (create_task(name=) on
	 * 3.10-3.12 names the task just after creating it): that record becomes
	 * padding, and this one, the not yet published record at pos, takes over
	 * its creator, coroutine and edge and becomes the first. */
	struct asynctrace_rec *o = fresh_create_locked(task);
	if (!o) {
		if (fresh[i].task == (uintptr_t)task)
			fresh[i].task = 0; /* two CREATEs reach tracers: erase neither */
		return;
	}
	struct asynctrace_rec *nr = &R.slots[pos & RING_MASK];
	struct asynctrace_rec_create *oc = (struct asynctrace_rec_create *)&o[1];
	struct asynctrace_rec_create *nc = (struct asynctrace_rec_create *)&nr[1];
	if (!nr->b)
		nr->b = o->b;
	if (!nc->code_id)
		nc->code_id = oc->code_id;
	if (!nc->edge_kind) {
		nc->edge_awaiter = oc->edge_awaiter;
		nc->edge_kind = oc->edge_kind;
	}
	o->type = ASYNCTRACE_REC_PAD;
	fresh[i].pos = pos;
	ring_unlock();
}

/* 1 if the task's CREATE was still unflushed and is now a PAD (the caller
 * then writes no COMPLETE). Under the ring lock, so no flush reads it now. */
static int fresh_erase(PyObject *task)
{
	struct asynctrace_rec *r = fresh_create_locked(task);
	fresh[fresh_slot(task)].task = 0;
	if (!r)
		return 0;
	r->type = ASYNCTRACE_REC_PAD;
	RS.erased++;
	ring_unlock();
	return 1;
}

/*
 * What the last STEP record of each task said, as a 32-bit hash of
 * (awaited, kind): a step that leaves a task in the state tracers already
 * have (a loop of sleep(0), a worker waiting again on the same queue future)
 * writes nothing. A collision between two tasks only costs a record; equal
 * hashes of a task's two successive states (2^-32) would hide one change
 * until the next.
 *
 * Located by address, not hashed: looking a task up is a cache miss per step
 * unless tasks that run one after the other share cache lines, and tasks
 * created together lie together (176-384 bytes apart, by version and
 * program). A two-way set of 8-byte entries covers 256 bytes of address
 * space (two tasks at most), four sets a cache line: 1 KiB, ~5 tasks created
 * in a row (10,000 tasks: ~1,900 lines instead of 10,000). Entry: a tag (the
 * address bits the set does not say) << 32 | state (0: empty).
 */
#define STATE_SET_SHIFT 8
#define STATE_SET_BITS 18
#define STATE_SETS (1u << STATE_SET_BITS) /* 4 MiB (touched lines only): 64 MiB of addresses */
static uint64_t last_state[STATE_SETS][2] __attribute__((aligned(64)));

struct state_ref {
	uint64_t *set;
	uint32_t tag;
};

static struct state_ref state_set(PyObject *task)
{
	uintptr_t a = (uintptr_t)task;
	uintptr_t hi = a >> (STATE_SET_SHIFT + STATE_SET_BITS);
	uintptr_t lo = (a >> 4) & ((1u << (STATE_SET_SHIFT - 4)) - 1); /* objects are 16-aligned */
	return (struct state_ref){ last_state[(a >> STATE_SET_SHIFT) & (STATE_SETS - 1)],
				   (uint32_t)((hi << (STATE_SET_SHIFT - 4)) | lo) };
}

/* The low bit of a way's state says "tracers have this task's current stack"
 * (a STACK record was sent and the task has not run since): a refresh replay
 * skips those tasks, frames walk included. */
#define STATE_STACK_SENT 1u

static uint32_t state_hash(PyObject *awaited, int kind)
{
	uint64_t h = ((uint64_t)(uintptr_t)awaited ^ 0x9E3779B97F4A7C15ull) * 0xff51afd7ed558ccdull;
	h ^= (uint64_t)kind * 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 33;
	uint32_t s = (uint32_t)(h ^ (h >> 32)) & ~STATE_STACK_SENT;
	return s ? s : 2;
}

static uint32_t way_state(struct state_ref r, int w) { return (uint32_t)r.set[w]; }

static void way_put(struct state_ref r, int w, uint32_t state)
{
	r.set[w] = (uint64_t)r.tag << 32 | state;
}

/* The task's way in its set, -1 if it has none. */
static int state_way_of(struct state_ref r)
{
	for (int w = 0; w < 2; w++)
		if ((uint32_t)(r.set[w] >> 32) == r.tag && (uint32_t)r.set[w])
			return w;
	return -1;
}

/* A way for the task: an empty one, else either (by the state's bits). */
static int state_take_way(struct state_ref r, uint32_t h)
{
	return !(uint32_t)r.set[0] ? 0 : !(uint32_t)r.set[1] ? 1 : (int)((h >> 1) & 1);
}

static void forget_step(PyObject *task)
{
	struct state_ref r = state_set(task);
	int w = state_way_of(r);
	if (w >= 0)
		r.set[w] = 0;
}

/* Forget what tracers were told (a replay re-tells everything). */
static void last_step_clear(void) { memset(last_state, 0, sizeof last_state); }

static void rec_step(PyObject *task, PyObject *awaited, int kind)
{
	struct state_ref set = state_set(task);
	uint32_t h = state_hash(awaited, kind);
	int w = state_way_of(set);
	if (w >= 0 && (way_state(set, w) & ~STATE_STACK_SENT) == h) {
		RS.same_state++;
		if (way_state(set, w) != h)
			way_put(set, w, h); /* it ran: the stack tracers have is stale */
		return; /* same state as the last record: nothing new to tell */
	}
	struct asynctrace_rec *r = ring_reserve(1);
	if (!r)
		return;
	*r = (struct asynctrace_rec){ .type = ASYNCTRACE_REC_STEP, .kind = (uint8_t)kind, .nslots = 1,
				      .a = (uint64_t)(uintptr_t)task, .b = (uint64_t)(uintptr_t)awaited };
	if (w < 0)
		w = state_take_way(set, h);
	way_put(set, w, h);
	ring_commit(1);
}

/* One-slot record. */
static void rec1(uint8_t type, uint8_t kind, uint64_t a, uint64_t b)
{
	struct asynctrace_rec *r = ring_reserve(1);
	if (!r)
		return;
	*r = (struct asynctrace_rec){ .type = type, .kind = kind, .nslots = 1, .a = a, .b = b };
	ring_commit(1);
}

/* ---- small helpers (all called with the GIL, never leave an error set) ----- */

static const char *utf8(PyObject *s, Py_ssize_t *len)
{
	const char *p = NULL;
	*len = 0;
	if (s && PyUnicode_Check(s))
		p = PyUnicode_AsUTF8AndSize(s, len);
	if (!p) {
		PyErr_Clear();
		*len = 0;
		return "";
	}
	return p;
}

/*
 * Registered code objects of this tracing session, by address: a strong
 * reference keeps each id valid while tracers may still resolve it. Keyed by
 * pointer, not by a dict: code objects hash their whole content (and equal
 * code objects from two modules are still two ids).
 */
static struct {
	PyObject **slots; /* open addressing, NULL = empty */
	size_t cap, len;  /* cap is a power of two */
} codes;

static size_t ptr_slot(PyObject *p, size_t cap)
{
	uintptr_t h = (uintptr_t)p >> 4;
	h ^= h >> 17;
	h *= 0x9E3779B97F4A7C15ull;
	return (size_t)(h >> 7) & (cap - 1);
}

static void codes_clear(void)
{
	for (size_t i = 0; i < codes.cap; i++)
		Py_CLEAR(codes.slots[i]);
	codes.len = 0;
}

/* 1 if newly added, 0 if present, -1 on memory error. */
static int codes_add(PyObject *code)
{
	if (2 * (codes.len + 1) > codes.cap) {
		size_t ncap = codes.cap ? 2 * codes.cap : 1024;
		PyObject **ns = PyMem_Calloc(ncap, sizeof(PyObject *));
		if (!ns)
			return -1;
		for (size_t i = 0; i < codes.cap; i++) {
			PyObject *o = codes.slots[i];
			if (!o)
				continue;
			size_t j = ptr_slot(o, ncap);
			while (ns[j])
				j = (j + 1) & (ncap - 1);
			ns[j] = o;
		}
		PyMem_Free(codes.slots);
		codes.slots = ns;
		codes.cap = ncap;
	}
	size_t j = ptr_slot(code, codes.cap);
	while (codes.slots[j]) {
		if (codes.slots[j] == code)
			return 0;
		j = (j + 1) & (codes.cap - 1);
	}
	codes.slots[j] = Py_NewRef(code);
	codes.len++;
	return 1;
}

/*
 * Register a code object for this tracing session (once); `codes` keeps it
 * alive so the id stays valid. On 3.10 code
 * objects have no co_qualname: the coroutine's __qualname__ is used when known.
 */
static uint64_t register_code(PyObject *code, PyObject *owner)
{
	if (!code || !PyCode_Check(code))
		return 0;
	if (!ASYNCTRACE_CODE_REGISTER_ENABLED())
		return (uint64_t)(uintptr_t)code;
	unsigned sem = ASYNCTRACE_REPLAY_SEMAPHORE();
	if (sem != S.session_sem) {
		/* The set of attached tracers changed: a new session re-registers. */
		codes_clear();
		S.session_sem = sem;
	}
	if (codes_add(code) <= 0)
		return (uint64_t)(uintptr_t)code; /* known (or no memory: stays unnamed) */
	PyCodeObject *co = (PyCodeObject *)code;
	PyObject *qn = NULL;
#if PY_VERSION_HEX >= 0x030B0000
	(void)owner;
	qn = Py_NewRef(co->co_qualname);
#else
	if (owner)
		qn = PyObject_GetAttr(owner, s_qualname);
	if (!qn || !PyUnicode_Check(qn)) {
		PyErr_Clear();
		Py_XDECREF(qn);
		qn = Py_NewRef(co->co_name);
	}
#endif
	Py_ssize_t qlen, flen;
	const char *q = utf8(qn, &qlen);
	const char *f = utf8(co->co_filename, &flen);
	ASYNCTRACE_CODE_REGISTER(code, q, qlen, f, flen, co->co_firstlineno);
	Py_DECREF(qn);
	return (uint64_t)(uintptr_t)code;
}

/* Frame/await attribute names of a coroutine-like object, or NULL. */
static int coro_attrs(PyObject *o, PyObject **frame_attr, PyObject **await_attr)
{
	if (PyCoro_CheckExact(o)) {
		*frame_attr = s_cr_frame;
		*await_attr = s_cr_await;
	} else if (PyGen_Check(o)) {
		*frame_attr = s_gi_frame;
		*await_attr = s_gi_yieldfrom;
	} else if (PyAsyncGen_CheckExact(o)) {
		*frame_attr = s_ag_frame;
		*await_attr = s_ag_await;
	} else {
		return 0;
	}
	return 1;
}

static PyObject *get_coro(PyObject *task)
{
	PyObject *c = PyObject_CallMethodNoArgs(task, s_get_coro);
	if (!c)
		PyErr_Clear();
	return c;
}

/* Code object of a coroutine-like object (new ref) or NULL. */
static PyObject *coro_code(PyObject *coro)
{
	PyObject *fa, *aa;
	if (!coro || !coro_attrs(coro, &fa, &aa))
		return NULL;
	const char *name = PyCoro_CheckExact(coro) ? "cr_code" :
			   PyAsyncGen_CheckExact(coro) ? "ag_code" : "gi_code";
	PyObject *code = PyObject_GetAttrString(coro, name);
	if (!code)
		PyErr_Clear();
	return code;
}

/*
 * Fill tls_frames with the coroutine chain of `coro`, innermost first.
 * Follows cr_await / gi_yieldfrom / ag_await, and steps through async
 * generator asend/athrow awaitables to their generator.
 */
#define CHAIN_MAX 256
static size_t collect_frames(PyObject *coro)
{
	struct { PyCodeObject *code; PyObject *owner; int line; } chain[CHAIN_MAX];
	size_t n = 0;
	PyObject *o = coro ? Py_NewRef(coro) : NULL;
	for (int guard = 0; o && n < CHAIN_MAX && guard < 2 * CHAIN_MAX; guard++) {
		PyObject *fa, *aa;
		if ((S.asend_type && Py_IS_TYPE(o, S.asend_type)) ||
		    (S.athrow_type && Py_IS_TYPE(o, S.athrow_type))) {
			PyObject *g = ((AsyncGenAwaitable *)o)->gen;
			Py_XINCREF(g);
			Py_SETREF(o, g);
			continue;
		}
		if (!coro_attrs(o, &fa, &aa))
			break;
		PyObject *frame = PyObject_GetAttr(o, fa);
		if (!frame || !PyFrame_Check(frame)) {
			Py_XDECREF(frame);
			break;
		}
		chain[n].code = PyFrame_GetCode((PyFrameObject *)frame); /* new ref */
		chain[n].line = PyFrame_GetLineNumber((PyFrameObject *)frame);
		chain[n].owner = Py_NewRef(o);
		n++;
		Py_DECREF(frame);
		PyObject *next = PyObject_GetAttr(o, aa);
		if (next == Py_None)
			Py_CLEAR(next);
		Py_SETREF(o, next);
	}
	Py_XDECREF(o);
	PyErr_Clear();

	/* chain[] is outermost first; keep the innermost ASYNCTRACE_MAX_FRAMES. */
	size_t keep = n < ASYNCTRACE_MAX_FRAMES ? n : ASYNCTRACE_MAX_FRAMES;
	for (size_t i = 0; i < keep; i++) {
		size_t src = n - 1 - i;
		tls_frames[i].code_id = register_code((PyObject *)chain[src].code, chain[src].owner);
		tls_frames[i].line = chain[src].line > 0 ? (uint32_t)chain[src].line : 0;
		tls_frames[i].flags = 0;
	}
	if (n > keep)
		tls_frames[keep - 1].flags |= ASYNCTRACE_FRAME_TRUNCATED;
	for (size_t i = 0; i < n; i++) {
		Py_DECREF(chain[i].code);
		Py_DECREF(chain[i].owner);
	}
	return keep;
}

static int is_task(PyObject *o) { return PyObject_TypeCheck(o, S.task_type); }

static inline PyObject *field(PyObject *o, Py_ssize_t idx) { return ((PyObject **)o)[idx]; }

static int task_is_done(PyObject *task)
{
	if (L.ok)
		return *(int *)((char *)task + L.state_off) != L.st_pending;
	PyObject *st = PyObject_GetAttr(task, s_state);
	int done = 0;
	if (st && PyUnicode_Check(st))
		done = PyUnicode_CompareWithASCIIString(st, "PENDING") != 0;
	Py_XDECREF(st);
	PyErr_Clear();
	return done;
}

/* Outcome of a done task, read without marking its exception as retrieved. */
static int task_outcome(PyObject *task)
{
	if (L.ok) {
		if (*(int *)((char *)task + L.state_off) == L.st_cancelled)
			return ASYNCTRACE_OUTCOME_CANCELLED;
		return field(task, L.exc) ? ASYNCTRACE_OUTCOME_EXCEPTION : ASYNCTRACE_OUTCOME_RESULT;
	}
	PyObject *st = PyObject_GetAttr(task, s_state);
	int cancelled = st && PyUnicode_Check(st) &&
			PyUnicode_CompareWithASCIIString(st, "CANCELLED") == 0;
	Py_XDECREF(st);
	if (cancelled)
		return ASYNCTRACE_OUTCOME_CANCELLED;
	PyObject *exc = PyObject_GetAttr(task, s_exception); /* getter: no side effect */
	int failed = exc && exc != Py_None;
	Py_XDECREF(exc);
	PyErr_Clear();
	return failed ? ASYNCTRACE_OUTCOME_EXCEPTION : ASYNCTRACE_OUTCOME_RESULT;
}

/* The future the task waits for (new ref), or NULL. */
static PyObject *task_waiter(PyObject *task)
{
	if (L.ok) {
		PyObject *w = field(task, L.waiter);
		return w == Py_None ? NULL : Py_XNewRef(w);
	}
	PyObject *w = PyObject_GetAttr(task, s_fut_waiter);
	if (!w)
		PyErr_Clear();
	if (w == Py_None)
		Py_CLEAR(w);
	return w;
}

/* The task's coroutine (new ref), or NULL. */
static PyObject *task_coro(PyObject *task)
{
	if (L.ok)
		return Py_XNewRef(field(task, L.coro));
	return get_coro(task);
}

/* Code object of a coroutine-like object (new ref) or NULL, without getters
 * for the native coroutine and generator types. */
static PyObject *coro_code_fast(PyObject *coro)
{
	if (coro && (PyCoro_CheckExact(coro) || PyGen_CheckExact(coro))) {
#if PY_VERSION_HEX >= 0x030C0000
		return (PyObject *)PyGen_GetCode((PyGenObject *)coro);
#else
		return Py_XNewRef((PyObject *)((PyGenObject *)coro)->gi_code);
#endif
	}
	return coro_code(coro);
}

/* asyncio's current task of the loop running on this thread (borrowed-free id). */
static uint64_t running_parent(void)
{
	uint64_t parent = 0;
	PyObject *loop = PyObject_CallNoArgs(S.get_running_loop);
	if (loop && loop != Py_None) {
		PyObject *cur = PyDict_GetItemWithError(S.current_tasks, loop);
		if (cur)
			parent = (uint64_t)(uintptr_t)cur;
	}
	Py_XDECREF(loop);
	PyErr_Clear();
	return parent;
}

/* The task whose step runs on this thread (hooked steps only), or 0. */
static __thread uint64_t tls_current;

/* A task's name as UTF-8, without calling Task.get_name() when the layout is
 * known: 3.12+ keep the default name as the counter (a PyLong) until someone
 * asks, so "Task-<n>" is formatted here exactly as get_name() would. */
struct name_buf {
	char num[32];
	PyObject *owned;
};

static const char *task_name(PyObject *task, Py_ssize_t *len, struct name_buf *nb)
{
	nb->owned = NULL;
	if (L.ok) {
		PyObject *n = field(task, L.name);
		if (n && PyUnicode_Check(n))
			return utf8(n, len);
		if (n && PyLong_CheckExact(n)) {
			long long v = PyLong_AsLongLong(n);
			if (!(v == -1 && PyErr_Occurred())) {
				int k = snprintf(nb->num, sizeof nb->num, "Task-%lld", v);
				*len = k > 0 ? k : 0;
				return nb->num;
			}
			PyErr_Clear();
		}
	}
	nb->owned = PyObject_CallMethodNoArgs(task, s_get_name);
	if (!nb->owned)
		PyErr_Clear();
	return utf8(nb->owned, len);
}

static void fresh_note(PyObject *task, uint64_t pos, int first);

static void rec_create(PyObject *task, uint64_t parent, PyObject *loop, uint32_t tid,
		       const char *name, Py_ssize_t nlen, uint64_t code_id, int first)
{
	uint32_t kept = nlen > ASYNCTRACE_REC_NAME_MAX ? ASYNCTRACE_REC_NAME_MAX : (uint32_t)nlen;
	uint32_t n = 2 + (kept + 31) / 32;
	struct asynctrace_rec *r = ring_reserve(n);
	if (!r)
		return;
	r[0] = (struct asynctrace_rec){ .type = ASYNCTRACE_REC_CREATE, .nslots = (uint16_t)n,
					.len = nlen > UINT32_MAX ? UINT32_MAX : (uint32_t)nlen,
					.a = (uint64_t)(uintptr_t)task, .b = parent,
					.c = (uint64_t)(uintptr_t)loop };
	struct asynctrace_rec_create *c = (struct asynctrace_rec_create *)&r[1];
	*c = (struct asynctrace_rec_create){ .code_id = code_id, .tid = tid ? tid : native_tid(),
					     .kept = kept };
	if (kept) {
		char *dst = (char *)&r[2];
		memcpy(dst, name, kept);
		memset(dst + kept, 0, (size_t)(n - 2) * 32 - kept);
	}
	fresh_note(task, R.head, first);
	ring_commit(n);
}

/*
 * coro: the task's coroutine if the caller has it. Task.get_coro() must not be
 * called on a finished eager task: 3.12.0/3.12.1 return a NULL task_coro
 * without a check (crash), so only pending tasks are asked.
 */
static void emit_create_raw(PyObject *task, uint64_t parent, uint64_t tid, PyObject *coro, int first)
{
	int pe = ASYNCTRACE_TASK_CREATE_ENABLED(), be = BATCH_ON();
	if (!pe && !be)
		return;
	struct name_buf nb;
	Py_ssize_t nlen;
	const char *n = task_name(task, &nlen, &nb);
	PyObject *loop = S.loop_field_ok ? Py_XNewRef(field(task, 2)) : PyObject_GetAttr(task, s_loop);
	if (coro)
		Py_INCREF(coro);
	else if (!task_is_done(task))
		coro = task_coro(task);
	PyObject *code = coro_code_fast(coro);
	PyErr_Clear();
	uint64_t code_id = register_code(code, coro);
	if (loop == Py_None)
		Py_CLEAR(loop);
	if (be)
		rec_create(task, parent, loop, (uint32_t)tid, n, nlen, code_id, first);
	if (pe)
		ASYNCTRACE_TASK_CREATE(task, parent, loop, tid, n, nlen, code_id);
	Py_XDECREF(code);
	Py_XDECREF(coro);
	Py_XDECREF(loop);
	Py_XDECREF(nb.owned);
	PyErr_Clear();
}

static void emit_resume(PyObject *task)
{
	if (ASYNCTRACE_TASK_RESUME_ENABLED())
		ASYNCTRACE_TASK_RESUME(task);
}

/* Emit task__create (+ resume: their eager step is running) for pending eager tasks. */
static void flush_pending(void)
{
	for (int i = 0; i < tls_npending && i < MAX_PENDING; i++) {
		if (tls_pending[i].flushed)
			continue;
		tls_pending[i].flushed = 1;
		emit_create_raw(tls_pending[i].task, tls_pending[i].parent, 0, tls_pending[i].coro, 1);
		emit_resume(tls_pending[i].task);
	}
}

static int edges_on(void) { return ASYNCTRACE_EDGE_ADD_ENABLED() | BATCH_ON(); }

/* An edge to a child whose CREATE is still unflushed rides in that record
 * (slot 1's edge fields), so it goes wherever the CREATE goes: erased with it
 * if the child completes before the flush. 1 if it did. */
static int edge_into_create(PyObject *child, PyObject *awaiter, int kind)
{
	struct asynctrace_rec *r = fresh_create_locked(child);
	if (!r)
		return 0;
	struct asynctrace_rec_create *c = (struct asynctrace_rec_create *)&r[1];
	int done = !c->edge_kind;
	if (done) {
		c->edge_awaiter = (uint64_t)(uintptr_t)awaiter;
		c->edge_kind = (uint32_t)kind + 1;
		RS.edges_in_create++;
	}
	ring_unlock();
	return done;
}

static void emit_edge(PyObject *child, PyObject *awaiter, int kind)
{
	if (BATCH_ON() && !edge_into_create(child, awaiter, kind))
		rec1(ASYNCTRACE_REC_EDGE_ADD, (uint8_t)kind, (uint64_t)(uintptr_t)child,
		     (uint64_t)(uintptr_t)awaiter);
	if (ASYNCTRACE_EDGE_ADD_ENABLED())
		ASYNCTRACE_EDGE_ADD(child, awaiter, kind);
}

/* edge__add(child, awaiter, GATHER) for each pending child task of a gather future. */
static void gather_edges(PyObject *gfut, PyObject *awaiter, int depth)
{
	PyObject *children = PyObject_GetAttr(gfut, s_children);
	if (!children || !PyList_Check(children)) {
		Py_XDECREF(children);
		PyErr_Clear();
		return;
	}
	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(children); i++) {
		PyObject *c = PyList_GET_ITEM(children, i);
		if (is_task(c)) {
			if (!task_is_done(c))
				emit_edge(c, awaiter, ASYNCTRACE_EDGE_GATHER);
		} else if (depth < 4 && PyObject_TypeCheck(c, (PyTypeObject *)S.gathering_future_type)) {
			gather_edges(c, awaiter, depth + 1); /* gather(gather(...)) */
		}
	}
	Py_DECREF(children);
}

/* The `inner` of a shield() whose outer future is `fut`, borrowed, or NULL.
 * shield() adds _outer_done_callback to the outer future first, so it is the
 * future's first callback (fut_callback0). */
static PyObject *shield_inner_fast(PyObject *fut)
{
	if (!L.ok || !S.shield_code || S.shield_inner < 0)
		return NULL;
	PyObject *cb = field(fut, L.cb0);
	if (!cb || !PyFunction_Check(cb) || PyFunction_GET_CODE(cb) != S.shield_code)
		return NULL;
	PyObject *closure = PyFunction_GET_CLOSURE(cb);
	if (!closure || !PyTuple_Check(closure) || S.shield_inner >= PyTuple_GET_SIZE(closure))
		return NULL;
	PyObject *cell = PyTuple_GET_ITEM(closure, S.shield_inner);
	return PyCell_Check(cell) ? PyCell_GET(cell) : NULL;
}

/* A future made by asyncio.shield(): its `_outer_done_callback` closes over `inner`. */
static void shield_edges(PyObject *fut, PyObject *awaiter)
{
	if (L.ok && S.shield_code && S.shield_inner >= 0) {
		PyObject *inner = shield_inner_fast(fut);
		if (inner && is_task(inner) && !task_is_done(inner))
			emit_edge(inner, awaiter, ASYNCTRACE_EDGE_SHIELD);
		return;
	}
	PyObject *cbs = PyObject_GetAttr(fut, s_callbacks);
	if (!cbs || !PyList_Check(cbs))
		goto out;
	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(cbs); i++) {
		PyObject *ent = PyList_GET_ITEM(cbs, i);
		PyObject *cb = PyTuple_Check(ent) && PyTuple_GET_SIZE(ent) ? PyTuple_GET_ITEM(ent, 0) : ent;
		if (!PyFunction_Check(cb))
			continue;
		PyCodeObject *co = (PyCodeObject *)PyFunction_GET_CODE(cb);
		PyObject *closure = PyFunction_GET_CLOSURE(cb);
		if (!closure || PyUnicode_Compare(co->co_name, s_outer_done_callback) != 0)
			continue;
		PyObject *fv = PyObject_GetAttr((PyObject *)co, s_co_freevars);
		if (fv && PyTuple_Check(fv)) {
			for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(fv) && j < PyTuple_GET_SIZE(closure); j++) {
				if (PyUnicode_Compare(PyTuple_GET_ITEM(fv, j), s_inner) != 0)
					continue;
				PyObject *inner = PyCell_GET(PyTuple_GET_ITEM(closure, j));
				if (inner && is_task(inner) && !task_is_done(inner))
					emit_edge(inner, awaiter, ASYNCTRACE_EDGE_SHIELD);
			}
		}
		Py_XDECREF(fv);
	}
out:
	Py_XDECREF(cbs);
	PyErr_Clear();
}

/* FNV-1a over frames: the stack id of a STACK record (probes.h). */
static uint64_t stack_id(size_t nframes)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < nframes; i++) {
		h = (h ^ tls_frames[i].code_id) * 0x100000001b3ULL;
		h = (h ^ (((uint64_t)tls_frames[i].flags << 32) | tls_frames[i].line)) * 0x100000001b3ULL;
	}
	return h ? h : 1;
}

static void timing_stack_sent(PyObject *task, uint64_t id);

static void rec_stack(PyObject *task, PyObject *awaited, int kind, size_t nframes)
{
	uint64_t id = nframes ? stack_id(nframes) : 0;
	uint32_t n = 1 + (uint32_t)(nframes + 1) / 2;
	struct asynctrace_rec *r = ring_reserve(n);
	if (!r)
		return;
	r[0] = (struct asynctrace_rec){ .type = ASYNCTRACE_REC_STACK, .kind = (uint8_t)kind,
					.nslots = (uint16_t)n, .len = (uint32_t)nframes,
					.a = (uint64_t)(uintptr_t)task, .b = (uint64_t)(uintptr_t)awaited,
					.c = id };
	memset(&r[1], 0, (size_t)(n - 1) * sizeof(*r));
	memcpy(&r[1], tls_frames, nframes * sizeof(struct asynctrace_frame));
	if (kind != ASYNCTRACE_AWAIT_RUNNING) {
		struct state_ref set = state_set(task);
		uint32_t h = state_hash(awaited, kind);
		int w = state_way_of(set);
		if (w < 0)
			w = state_take_way(set, h);
		way_put(set, w, h | STATE_STACK_SENT);
	}
	ring_commit(n);
	timing_stack_sent(task, id);
}

/* What a task waiting on `w` (NULL: nothing) awaits (asynctrace_await_kind). */
static int await_kind_of(PyObject *w)
{
	if (!w)
		return ASYNCTRACE_AWAIT_NONE;
	if (is_task(w))
		return ASYNCTRACE_AWAIT_TASK;
	if (S.gathering_future_type && PyObject_TypeCheck(w, (PyTypeObject *)S.gathering_future_type))
		return ASYNCTRACE_AWAIT_GATHER;
	return ASYNCTRACE_AWAIT_FUTURE;
}

/* task__await for a suspended task, preceded by the gather/shield edges that hold. */
static void emit_await_state(PyObject *task)
{
	PyObject *w = task_waiter(task);
	int kind = await_kind_of(w);
	if (edges_on()) {
		if (kind == ASYNCTRACE_AWAIT_GATHER)
			gather_edges(w, task, 0);
		else if (kind == ASYNCTRACE_AWAIT_FUTURE)
			shield_edges(w, task);
	}
	int pe = ASYNCTRACE_TASK_AWAIT_ENABLED(), be = BATCH_ON();
	if (pe || (be && S.in_replay)) {
		PyObject *coro = task_coro(task);
		size_t n = collect_frames(coro);
		Py_XDECREF(coro);
		if (be && S.in_replay)
			rec_stack(task, w, kind, n);
		if (pe)
			ASYNCTRACE_TASK_AWAIT(task, w, kind, tls_frames, n);
	}
	if (be && !S.in_replay)
		rec_step(task, w, kind);
	Py_XDECREF(w);
	PyErr_Clear();
}

static void timing_note_done(PyObject *fut);
static void timing_completed(PyObject *task);

static void emit_complete(PyObject *task, int outcome)
{
	forget_step(task);
	timing_note_done(task);
	timing_completed(task);
	if (BATCH_ON() && !fresh_erase(task))
		rec1(ASYNCTRACE_REC_COMPLETE, (uint8_t)outcome, (uint64_t)(uintptr_t)task, 0);
	if (ASYNCTRACE_TASK_COMPLETE_ENABLED())
		ASYNCTRACE_TASK_COMPLETE(task, outcome);
}

/* After a step: completion or the new await state. */
static void emit_post_step(PyObject *task)
{
	if (task_is_done(task))
		emit_complete(task, task_outcome(task));
	else
		emit_await_state(task);
}

/* ---- timing: timing__on / steps__on (probes.h "Timing records") -------------
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
 * With steps__on every step gets a STEP_TIMED record and its end stack. */
#define TIMING_ON() (BATCH_ON() && ASYNCTRACE_TIMING_ON())
#define STEPS_ON() (BATCH_ON() && ASYNCTRACE_STEPS_ON())

static uint64_t now_ns(void)
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
	struct cstat *c;     /* its coroutine's entry (T.c never moves), or NULL */
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
	uint32_t hist[ASYNCTRACE_HIST_BUCKETS];
};
#define CODE_SLOTS 2048u

static struct {
	int on;                 /* a timing session runs (GIL) */
	struct tstat *t;        /* open addressing, linear probing, cap a power of 2 */
	size_t cap, n;
	uint64_t gen;           /* bumped whenever entries move (grow, delete) */
	uintptr_t *dirty;       /* tasks with deltas, maybe stale */
	size_t ndirty, dirty_cap;
	struct cstat *c;        /* CODE_SLOTS, never shrinks */
	int cdirty;
	uint64_t since, last_drain, period, slow_floor;
	uint64_t created, completed, steps, busy, max_window;
	uint64_t full;          /* tasks not accounted (no memory) */
} T;

static size_t tstat_home(uintptr_t task, size_t cap)
{
	uint64_t h = ((uint64_t)task >> 4) * 0x9E3779B97F4A7C15ull;
	return (size_t)(h >> 20) & (cap - 1);
}

static struct tstat *tstat_find(PyObject *task)
{
	if (!T.t)
		return NULL;
	for (size_t i = tstat_home((uintptr_t)task, T.cap);; i = (i + 1) & (T.cap - 1)) {
		if (T.t[i].task == (uintptr_t)task)
			return &T.t[i];
		if (!T.t[i].task)
			return NULL;
	}
}

static int tstat_grow(void)
{
	size_t cap = T.cap ? T.cap * 2 : 4096;
	struct tstat *t = calloc(cap, sizeof *t);
	if (!t)
		return -1;
	for (size_t j = 0; j < T.cap; j++) {
		if (!T.t[j].task)
			continue;
		size_t i = tstat_home(T.t[j].task, cap);
		while (t[i].task)
			i = (i + 1) & (cap - 1);
		t[i] = T.t[j];
	}
	free(T.t);
	T.t = t;
	T.cap = cap;
	T.gen++;
	return 0;
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

static struct cstat *cstat_get(uint64_t code);

static struct tstat *tstat_get(PyObject *task)
{
	struct tstat *e = tstat_find(task);
	if (e)
		return e;
	if ((T.n + 1) * 4 > T.cap * 3 && tstat_grow() < 0) {
		T.full++;
		return NULL;
	}
	uint64_t code = task_code_id(task); /* may run Python: before the slot is taken */
	size_t i = tstat_home((uintptr_t)task, T.cap);
	while (T.t[i].task)
		i = (i + 1) & (T.cap - 1);
	T.t[i] = (struct tstat){ .task = (uintptr_t)task, .code = code, .c = code ? cstat_get(code) : NULL };
	T.n++;
	return &T.t[i];
}

/* Backward-shift deletion keeps probe chains intact without tombstones. */
static void tstat_del(PyObject *task)
{
	struct tstat *e = tstat_find(task);
	if (!e)
		return;
	size_t i = (size_t)(e - T.t);
	for (size_t j = (i + 1) & (T.cap - 1); T.t[j].task; j = (j + 1) & (T.cap - 1)) {
		size_t h = tstat_home(T.t[j].task, T.cap);
		/* Move j into the hole i if its home is not in (i, j]. */
		if ((j > i && (h <= i || h > j)) || (j < i && (h <= i && h > j))) {
			T.t[i] = T.t[j];
			i = j;
		}
	}
	T.t[i].task = 0;
	T.n--;
	T.gen++;
}

static struct cstat *cstat_get(uint64_t code)
{
	if (!T.c && !(T.c = calloc(CODE_SLOTS, sizeof *T.c)))
		return NULL;
	uint64_t h = (code >> 4) * 0x9E3779B97F4A7C15ull;
	for (size_t k = 0, i = (size_t)(h >> 30) & (CODE_SLOTS - 1); k < CODE_SLOTS; k++, i = (i + 1) & (CODE_SLOTS - 1)) {
		if (T.c[i].code == code)
			return &T.c[i];
		if (!T.c[i].code) {
			T.c[i].code = code;
			return &T.c[i];
		}
	}
	return NULL;
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

/* Deltas into the ring (GIL held). */
static void timing_drain(uint64_t now)
{
	for (size_t k = 0; k < T.ndirty; k++) {
		struct tstat *e = tstat_find((PyObject *)T.dirty[k]);
		if (e && e->dirty)
			tstat_emit(e);
	}
	T.ndirty = 0;
	if (T.cdirty && T.c) {
		for (size_t i = 0; i < CODE_SLOTS; i++) {
			struct cstat *c = &T.c[i];
			if (!c->code || !c->dirty)
				continue;
			rec_timing(ASYNCTRACE_REC_CODE, c->code, c->code, c->steps, c->busy, c->sched, c->max, 0,
				   c->hist);
			c->steps = 0;
			c->busy = c->sched = c->max = 0;
			c->dirty = 0;
		}
		T.cdirty = 0;
	}
	struct asynctrace_rec *r = ring_reserve(2);
	if (r) {
		r[0] = (struct asynctrace_rec){ .type = ASYNCTRACE_REC_LOOP, .nslots = 2, .a = T.created,
						.b = T.completed, .c = T.steps };
		*(struct asynctrace_rec_loop *)&r[1] = (struct asynctrace_rec_loop){
			.busy_ns = T.busy, .max_step_ns = T.max_window, .at_ns = now, .since_ns = T.since };
		ring_commit(2);
	}
	T.max_window = 0;
	T.last_drain = now;
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
		if (T.on)
			T.on = 0; /* no store per step while nobody times */
		return 0;
	}
	if (!T.on) {
		for (size_t i = 0; T.t && i < T.cap; i++)
			T.t[i].task = 0;
		T.n = T.ndirty = 0;
		if (T.c)
			memset(T.c, 0, CODE_SLOTS * sizeof *T.c);
		T.gen++;
		T.cdirty = 0;
		T.created = T.completed = T.steps = T.busy = T.max_window = T.full = 0;
		T.period = env_ms("ASYNCTRACE_TIMING_MS", 200);
		T.slow_floor = env_ms("ASYNCTRACE_SLOW_MS", 10);
		T.since = T.last_drain = now_ns();
		T.on = 1;
	}
	return 1;
}

/* Steps in progress, one slot per thread, for the watcher's samples. */
#define STEP_SLOTS 64
static struct step_slot {
	_Atomic uint64_t seq;      /* odd while a step runs */
	_Atomic uint64_t start_ns;
	PyThreadState *ts;
	PyObject *task;            /* borrowed: the hook holds a reference */
	uint32_t nsamples;
	uint64_t last_sample_ns;   /* watcher only */
} step_slots[STEP_SLOTS];
static _Atomic int nstep_slots;
static __thread int tls_step_slot = -1;

static struct step_slot *my_step_slot(void)
{
	if (tls_step_slot < 0) {
		int i = atomic_fetch_add(&nstep_slots, 1);
		tls_step_slot = i < STEP_SLOTS ? i : STEP_SLOTS;
	}
	return tls_step_slot < STEP_SLOTS ? &step_slots[tls_step_slot] : NULL;
}

/* What the hooks keep across a step. */
struct step_clock {
	uint64_t start, sched;
	struct step_slot *slot; /* NULL: not sampled (nested step, or no slot) */
	size_t idx;             /* the task's entry in T.t, valid while T.gen == gen */
	uint64_t gen;
};

static void timing_begin(PyObject *task, struct step_clock *sc)
{
	sc->start = 0;
	sc->slot = NULL;
	if (!timing_active())
		return;
	struct tstat *e = tstat_get(task);
	sc->start = now_ns();
	sc->sched = e && e->ready_ns && sc->start > e->ready_ns ? sc->start - e->ready_ns : 0;
	sc->gen = T.gen;
	sc->idx = e ? (size_t)(e - T.t) : (size_t)-1;
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
}

/* Which stack the task is suspended at now (0: none), sent as a STACK record
 * if it is not the one tracers were last told. */
static uint64_t timing_end_stack(PyObject *task, struct tstat *e)
{
	PyObject *w = task_waiter(task);
	int kind = await_kind_of(w);
	PyObject *coro = task_coro(task);
	size_t n = collect_frames(coro);
	Py_XDECREF(coro);
	uint64_t id = n ? stack_id(n) : 0;
	if (id && (!e || e->end_stack != id))
		rec_stack(task, w, kind, n);
	Py_XDECREF(w);
	PyErr_Clear();
	return id;
}

/* Tracers have this stack of the task now (a STACK record). */
static void timing_stack_sent(PyObject *task, uint64_t id)
{
	struct tstat *e = T.on ? tstat_find(task) : NULL;
	if (e)
		e->end_stack = id;
}

/* A full replay re-tells a new tracer everything: the stacks it has are
 * only those the replay sends. */
static void timing_forget_stacks(void)
{
	for (size_t i = 0; T.t && i < T.cap; i++)
		T.t[i].end_stack = 0;
}

static void fresh_keep(PyObject *task)
{
	size_t i = fresh_slot(task);
	if (fresh[i].task == (uintptr_t)task)
		fresh[i].task = 0;
}

static void timing_end(PyObject *task, struct step_clock *sc)
{
	if (!sc->start)
		return;
	uint64_t end = now_ns(), dur = end > sc->start ? end - sc->start : 0;
	uint32_t nsamples = 0;
	if (sc->slot) {
		nsamples = sc->slot->nsamples;
		atomic_fetch_add_explicit(&sc->slot->seq, 1, memory_order_release);
	}
	if (!T.on)
		return; /* the session ended during the step */
	int done = task_is_done(task);
	unsigned b = hist_bucket(dur);
	T.steps++;
	T.busy += dur;
	if (dur > T.max_window)
		T.max_window = dur;
	/* The entry found at the step's start, unless entries moved since. */
	struct tstat *e = sc->gen == T.gen && sc->idx < T.cap && T.t[sc->idx].task == (uintptr_t)task
				  ? &T.t[sc->idx] : tstat_find(task);
	uint64_t code = e ? e->code : 0;
	struct cstat *c = e ? e->c : NULL;
	if (c) {
		c->steps++;
		c->busy += dur;
		c->sched += sc->sched;
		if (dur > c->max)
			c->max = dur;
		c->hist[b]++;
		c->dirty = 1;
		T.cdirty = 1;
	}
	int slow = dur >= T.slow_floor;
	if (slow || STEPS_ON()) {
		uint64_t start_stack = e ? e->end_stack : 0;
		uint64_t end_stack = done ? 0 : timing_end_stack(task, e);
		e = tstat_find(task); /* collect_frames may have run Python */
		if (e)
			e->end_stack = end_stack;
		fresh_keep(task); /* its CREATE must reach tracers: they name its steps */
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
		e->busy += dur;
		e->sched += sc->sched;
		if (dur > e->max)
			e->max = dur;
		if (e->hist[b] < UINT16_MAX)
			e->hist[b]++;
		e->last_end = end;
		if (done) {
			tstat_del(task);
		} else {
			PyObject *w = task_waiter(task);
			e->ready_ns = w ? 0 : end; /* a bare yield: runnable again at once */
			Py_XDECREF(w);
			if (!e->dirty) {
				if (T.ndirty == T.dirty_cap) {
					size_t cap = T.dirty_cap ? T.dirty_cap * 2 : 1024;
					uintptr_t *d = realloc(T.dirty, cap * sizeof *d);
					if (d) {
						T.dirty = d;
						T.dirty_cap = cap;
					}
				}
				if (T.ndirty < T.dirty_cap) {
					T.dirty[T.ndirty++] = e->task;
					e->dirty = 1;
				}
			}
			if (e->hist[b] >= UINT16_MAX - 1)
				tstat_emit(e); /* a bucket would saturate: send it now */
		}
	}
	if (end - T.last_drain >= T.period)
		timing_drain(end);
}

static void timing_created(PyObject *task)
{
	if (!timing_active())
		return;
	T.created++;
	struct tstat *e = tstat_get(task);
	if (e && !e->ready_ns)
		e->ready_ns = now_ns(); /* its first step is scheduled */
}

static void timing_completed(PyObject *task)
{
	if (!T.on)
		return;
	T.completed++;
	tstat_del(task);
}

/* A task woke up `fut` was awaiting: when did `fut` complete? Tasks only
 * (their completion goes through the hooks); a plain future's is unknown. */
#define DONE_SLOTS 4096u
static struct { uintptr_t fut; uint64_t ns; } done_at[DONE_SLOTS];

static size_t done_slot(PyObject *fut)
{
	return (size_t)(((uint64_t)(uintptr_t)fut >> 4) * 0x9E3779B97F4A7C15ull >> 40) & (DONE_SLOTS - 1);
}

static void timing_note_done(PyObject *fut)
{
	if (!T.on)
		return;
	size_t i = done_slot(fut);
	done_at[i].fut = (uintptr_t)fut;
	done_at[i].ns = now_ns();
}

static void timing_wakeup(PyObject *task, PyObject *fut)
{
	if (!T.on)
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
	size_t keep = n < ASYNCTRACE_MAX_FRAMES ? n : ASYNCTRACE_MAX_FRAMES;
	for (size_t i = 0; i < keep; i++) {
		tls_frames[i].code_id = register_code((PyObject *)chain[i].code, NULL);
		tls_frames[i].line = chain[i].line > 0 ? (uint32_t)chain[i].line : 0;
		tls_frames[i].flags = 0;
	}
	if (keep && (n > keep || !reached))
		tls_frames[keep - 1].flags |= ASYNCTRACE_FRAME_TRUNCATED;
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
					.b = now, .c = stack_id(keep) };
	memset(&r[1], 0, (size_t)(ns - 1) * sizeof(*r));
	memcpy(&r[1], tls_frames, keep * sizeof(struct asynctrace_frame));
	ring_commit(ns);
	s->nsamples++;
}

/* The watcher, without the GIL: sample steps running past the slow floor
 * (any running step with steps__on), and drain an idle loop's deltas. */
static void timing_watch(long long poll_ns)
{
	if (!TIMING_ON() || IS_FINALIZING())
		return;
	uint64_t now = now_ns();
	uint64_t floor = STEPS_ON() ? (uint64_t)poll_ns : T.slow_floor;
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
		if (atomic_load_explicit(&s->seq, memory_order_acquire) == seq && T.on)
			take_sample(s, now_ns());
		PyGILState_Release(g);
		s->last_sample_ns = now_ns();
	}
	/* A loop that runs no step (idle, or blocked in one) still reports: the
	 * session starts here, and deltas do not wait for its next step. */
	if (!T.on || (T.ndirty && now > T.last_drain + 2 * T.period)) {
		PyGILState_STATE g = PyGILState_Ensure();
		if (timing_active())
			timing_drain(now_ns());
		PyGILState_Release(g);
	}
}

/* ---- hooks ------------------------------------------------------------------ */

/* The task's loop: FutureObj's first field on 3.10-3.13 (checked at install). */
static PyObject *task_loop_borrowed(PyObject *task)
{
	return S.loop_field_ok ? ((PyObject **)task)[2] : NULL;
}

static void before_step(PyObject *task)
{
	flush_pending();
	PyObject *loop = task_loop_borrowed(task);
	if (loop) {
		learn_loop_tid(loop);
	} else if ((loop = PyObject_GetAttr(task, s_loop))) {
		learn_loop_tid(loop);
		Py_DECREF(loop);
	}
	PyErr_Clear();
	emit_resume(task);
}

static void after_step(PyObject *task, struct step_clock *sc)
{
	exc_state_t ex;
	EXC_SAVE(ex);
	timing_end(task, sc); /* before a COMPLETE: tracers still know the task */
	emit_post_step(task);
	EXC_RESTORE(ex);
}

/* TaskStepMethWrapper.__call__: a step scheduled with loop.call_soon. */
static PyObject *hook_step_call(PyObject *self, PyObject *args, PyObject *kw)
{
	if (__builtin_expect(fork_gen != 0, 0))
		note_loop_alive(task_loop_borrowed(((StepMethWrapper *)self)->sw_task));
	if (!ANY_STEP_PROBE_ON())
		return S.orig_step_call(self, args, kw);
	PyObject *task = Py_NewRef(((StepMethWrapper *)self)->sw_task);
	uint64_t prev = tls_current;
	struct step_clock sc;
	before_step(task);
	timing_begin(task, &sc);
	tls_current = (uint64_t)(uintptr_t)task;
	PyObject *r = S.orig_step_call(self, args, kw);
	tls_current = prev;
	after_step(task, &sc);
	Py_DECREF(task);
	return r;
}

/* task_wakeup(task, fut): done callback of the future a task awaited (METH_O). */
static PyObject *hook_wakeup(PyObject *task, PyObject *fut)
{
	if (__builtin_expect(fork_gen != 0, 0))
		note_loop_alive(task_loop_borrowed(task));
	if (!ANY_STEP_PROBE_ON())
		return S.orig_wakeup(task, fut);
	Py_INCREF(task);
	uint64_t prev = tls_current;
	struct step_clock sc;
	before_step(task);
	timing_wakeup(task, fut);
	timing_begin(task, &sc);
	tls_current = (uint64_t)(uintptr_t)task;
	PyObject *r = S.orig_wakeup(task, fut);
	tls_current = prev;
	after_step(task, &sc);
	Py_DECREF(task);
	return r;
}

/*
 * Task.set_name (METH_O): asyncio.create_task(coro, name=...) on 3.10-3.12
 * names the task only after Task.__init__ returned (and eager tasks have run
 * their first step by then), so a rename repeats task__create with the new
 * name; parent 0 tells the tracer to keep the creator it already knows.
 */
static PyObject *hook_set_name(PyObject *task, PyObject *name)
{
	PyObject *r = S.orig_set_name(task, name);
	if (r && (ASYNCTRACE_TASK_CREATE_ENABLED() | BATCH_ON()) && !task_is_done(task)) {
		exc_state_t ex;
		EXC_SAVE(ex);
		emit_create_raw(task, 0, 0, NULL, 0);
		EXC_RESTORE(ex);
	}
	return r;
}

/* Did the eager first step (3.12+) run inside tp_init? */
static int first_step_ran(PyObject *task)
{
	if (task_is_done(task))
		return 1;
	PyObject *coro = get_coro(task);
	int ran = 0;
	if (coro) {
		PyObject *a = PyObject_GetAttr(coro, PyCoro_CheckExact(coro) ? s_cr_suspended : s_gi_suspended);
		ran = a == Py_True;
		Py_XDECREF(a);
	}
	Py_XDECREF(coro);
	PyErr_Clear();
	return ran;
}

static int traced_init(PyObject *self, PyObject *args, PyObject *kw)
{
	/* The task whose hooked step runs here is asyncio's current task, except
	 * inside an eager step (not hooked: it runs in Task.__init__). */
	uint64_t parent = tls_current && !tls_npending ? tls_current : running_parent();
	int eager = 0;
#if HAVE_EAGER_TASKS
	if (kw && PyDict_Check(kw)) {
		PyObject *e = PyDict_GetItemWithError(kw, s_eager_start);
		eager = e && PyObject_IsTrue(e) == 1;
		PyErr_Clear();
	}
#endif
	int slot = -1;
	if (eager && tls_npending < MAX_PENDING) {
		slot = tls_npending++;
		PyObject *coro = args && PyTuple_Check(args) && PyTuple_GET_SIZE(args) ? PyTuple_GET_ITEM(args, 0) : NULL;
		tls_pending[slot] = (struct pending){ .task = self, .parent = parent, .coro = coro };
	}
	int rc = S.orig_init(self, args, kw);
	int flushed = 0;
	if (slot >= 0) {
		flushed = tls_pending[slot].flushed;
		tls_npending = slot;
	}
	if (rc < 0)
		return rc; /* not a task: nothing to report */
	flush_pending(); /* outer eager tasks, if this one ran inside their step */
	timing_created(self);
	if (!eager) {
		emit_create_raw(self, parent, 0, NULL, 1);
	} else {
		if (!flushed)
			emit_create_raw(self, parent, 0, slot >= 0 ? tls_pending[slot].coro : NULL, 1);
		int ran = flushed || first_step_ran(self);
		if (ran) {
			if (!flushed)
				emit_resume(self);
			emit_post_step(self);
		}
	}
	PyErr_Clear();
	return rc;
}

/* Task.__init__ (tp_init slot, and the slot wrapper that super().__init__() calls). */
static int hook_init(PyObject *self, PyObject *args, PyObject *kw)
{
	int r;
	if (!(ASYNCTRACE_TASK_CREATE_ENABLED() | ANY_STEP_PROBE_ON()))
		r = S.orig_init(self, args, kw);
	else
		r = traced_init(self, args, kw);
	if (__builtin_expect(fork_gen != 0, 0) && r == 0)
		note_loop_alive(task_loop_borrowed(self));
	return r;
}

/* Task.tp_finalize: a task collected while pending never completes otherwise. */
static void hook_finalize(PyObject *self)
{
	if (ASYNCTRACE_TASK_COMPLETE_ENABLED() | BATCH_ON()) {
		exc_state_t ex;
		EXC_SAVE(ex);
		if (!task_is_done(self))
			emit_complete(self, ASYNCTRACE_OUTCOME_DESTROYED);
		PyErr_Clear();
		EXC_RESTORE(ex);
	}
	S.orig_finalize(self);
}

/* ---- installation -------------------------------------------------------------- */

/* Wrapper descriptors keep their own copy of the slot function (d_wrapped). */
static void patch_descr(PyObject *descr, void *orig, void *hook)
{
	if (descr && Py_IS_TYPE(descr, &PyWrapperDescr_Type) &&
	    ((PyWrapperDescrObject *)descr)->d_wrapped == orig)
		((PyWrapperDescrObject *)descr)->d_wrapped = hook;
}

/* Subclasses created before _install() copied the original slots; newer ones inherit ours. */
static void patch_subclasses(PyTypeObject *t, int depth)
{
	if (t->tp_init == S.orig_init)
		t->tp_init = hook_init;
	if (t->tp_finalize == S.orig_finalize)
		t->tp_finalize = hook_finalize;
	if (depth > 32)
		return;
	PyObject *subs = PyObject_CallMethod((PyObject *)t, "__subclasses__", NULL);
	if (!subs) {
		PyErr_Clear();
		return;
	}
	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(subs); i++)
		patch_subclasses((PyTypeObject *)PyList_GET_ITEM(subs, i), depth + 1);
	Py_DECREF(subs);
}

static void start_watcher(void);

/* The one word index in [2, size/8) of `o` holding `p`, or -1 (none or several). */
static Py_ssize_t find_word(PyObject *o, PyObject *p)
{
	Py_ssize_t n = Py_TYPE(o)->tp_basicsize / (Py_ssize_t)sizeof(PyObject *), found = -1;
	for (Py_ssize_t i = 2; i < n; i++) {
		if (field(o, i) != p)
			continue;
		if (found >= 0)
			return -1;
		found = i;
	}
	return found;
}

static int int_at(PyObject *o, Py_ssize_t off) { return *(int *)((char *)o + off); }

/*
 * Learns the field positions of L from live sample objects (see
 * _discover.layout_samples) and checks every one of them; on any doubt L.ok
 * stays 0 and the hooks use the Python getters (slower, same events).
 */
static void learn_layout(PyObject *samples)
{
	PyObject *task, *wfut, *coro, *name, *fdone, *fcanc, *fexc, *exc, *fcb, *cb, *shield_code, *cb2 = NULL;
	Py_ssize_t inner;
	memset(&L, 0, sizeof L);
	S.shield_inner = -1;
	if (!samples || samples == Py_None ||
	    !PyArg_ParseTuple(samples, "OOOOOOOOOOOn|O", &task, &wfut, &coro, &name, &fdone, &fcanc, &fexc,
			      &exc, &fcb, &cb, &shield_code, &inner, &cb2)) {
		PyErr_Clear();
		return;
	}
	if (!is_task(task) || Py_TYPE(fdone) != Py_TYPE(fcanc) || Py_TYPE(fdone) != Py_TYPE(fexc) ||
	    Py_TYPE(fdone) != Py_TYPE(fcb) || Py_TYPE(wfut) != Py_TYPE(fdone))
		return;
	Py_ssize_t ci = find_word(task, coro);
	if (ci < 3 || (ci + 2) * (Py_ssize_t)sizeof(PyObject *) > Py_TYPE(task)->tp_basicsize)
		return;
	if (field(task, ci - 1) != wfut || field(task, ci + 1) != name)
		return;
	Py_ssize_t ei = find_word(fexc, exc), bi = find_word(fcb, cb);
	if (ei < 0 || bi < 0)
		return;
	/* fut_state: the one int equal for the two pending objects, different for
	 * done and cancelled, and the same for a result and an exception. */
	Py_ssize_t fsize = Py_TYPE(fdone)->tp_basicsize, soff = -1;
	for (Py_ssize_t off = 2 * (Py_ssize_t)sizeof(PyObject *); off + (Py_ssize_t)sizeof(int) <= fsize;
	     off += sizeof(int)) {
		int p = int_at(task, off), d = int_at(fdone, off), c = int_at(fcanc, off);
		if (p != int_at(wfut, off) || p == d || p == c || d == c || int_at(fexc, off) != d ||
		    p < 0 || p > 7 || d < 0 || d > 7 || c < 0 || c > 7)
			continue;
		if (soff >= 0)
			return; /* ambiguous */
		soff = off;
	}
	if (soff < 0)
		return;
	L.coro = ci;
	L.waiter = ci - 1;
	L.name = ci + 1;
	L.exc = ei;
	L.cb0 = bi;
	L.state_off = soff;
	L.st_pending = int_at(task, soff);
	L.st_finished = int_at(fdone, soff);
	L.st_cancelled = int_at(fcanc, soff);
	L.ok = 1;
	/* fut_callbacks (after loop, callback0, context0): a list of
	 * (callback, context) once a future has a second callback. */
	PyObject *lst = (bi + 2) * (Py_ssize_t)sizeof(PyObject *) < fsize ? field(fcb, bi + 2) : NULL;
	L.callbacks_ok = cb2 && lst && PyList_Check(lst) && PyList_GET_SIZE(lst) == 1 &&
			 PyTuple_Check(PyList_GET_ITEM(lst, 0)) && PyTuple_GET_SIZE(PyList_GET_ITEM(lst, 0)) >= 1 &&
			 PyTuple_GET_ITEM(PyList_GET_ITEM(lst, 0), 0) == cb2;
	if (PyCode_Check(shield_code) && inner >= 0) {
		S.shield_code = Py_NewRef(shield_code);
		S.shield_inner = inner;
	}
}

/*
 * _install(task_type, step_wrapper, task, wakeup_cb, gathering_future_type,
 *          current_tasks, get_running_loop, asend, athrow)
 * step_wrapper is a live TaskStepMethWrapper of `task`; wakeup_cb a live bound
 * task_wakeup of `task`; asend/athrow live async generator awaitables (or None).
 */
static PyObject *m_install(PyObject *mod, PyObject *args)
{
	(void)mod;
	PyObject *task_type, *step, *task, *wakeup, *gft, *cur, *grl, *asend, *athrow, *samples = NULL;
	if (!PyArg_ParseTuple(args, "O!OOOOO!OOO|O", &PyType_Type, &task_type, &step, &task, &wakeup,
			      &gft, &PyDict_Type, &cur, &grl, &asend, &athrow, &samples))
		return NULL;
	if (S.installed)
		Py_RETURN_FALSE;

	/* Check the private layouts against live objects before touching anything. */
	PyTypeObject *tt = (PyTypeObject *)task_type;
	if (!PyObject_TypeCheck(task, tt) || Py_TYPE(step)->tp_basicsize != sizeof(StepMethWrapper) ||
	    ((StepMethWrapper *)step)->sw_task != task || !Py_TYPE(step)->tp_call) {
		PyErr_SetString(PyExc_RuntimeError, "asynctrace: unexpected TaskStepMethWrapper layout");
		return NULL;
	}
	if (!PyCFunction_Check(wakeup) || PyCFunction_GET_SELF(wakeup) != task ||
	    (PyCFunction_GET_FLAGS(wakeup) & (METH_O | METH_VARARGS | METH_FASTCALL | METH_KEYWORDS |
					      METH_NOARGS)) != METH_O) {
		PyErr_SetString(PyExc_RuntimeError, "asynctrace: unexpected task_wakeup callback");
		return NULL;
	}
	if (!tt->tp_init || !tt->tp_finalize) {
		PyErr_SetString(PyExc_RuntimeError, "asynctrace: _asyncio.Task lacks tp_init/tp_finalize");
		return NULL;
	}
	PyTypeObject *asend_t = NULL, *athrow_t = NULL;
	if (asend != Py_None && Py_TYPE(asend)->tp_basicsize >= (Py_ssize_t)sizeof(AsyncGenAwaitable) &&
	    PyAsyncGen_CheckExact(((AsyncGenAwaitable *)asend)->gen))
		asend_t = Py_TYPE(asend);
	if (athrow != Py_None && Py_TYPE(athrow)->tp_basicsize >= (Py_ssize_t)sizeof(AsyncGenAwaitable) &&
	    PyAsyncGen_CheckExact(((AsyncGenAwaitable *)athrow)->gen))
		athrow_t = Py_TYPE(athrow);

	PyObject *loop_attr = PyObject_GetAttr(task, s_loop);
	S.loop_field_ok = loop_attr && loop_attr != Py_None && ((PyObject **)task)[2] == loop_attr;
	Py_XDECREF(loop_attr);
	PyErr_Clear();
	S.task_type = (PyTypeObject *)Py_NewRef(task_type);
	learn_layout(samples);
	S.step_type = (PyTypeObject *)Py_NewRef(Py_TYPE(step));
	S.wakeup_def = ((PyCFunctionObject *)wakeup)->m_ml;
	S.gathering_future_type = gft == Py_None ? NULL : Py_NewRef(gft);
	S.current_tasks = Py_NewRef(cur);
	S.get_running_loop = Py_NewRef(grl);
	S.asend_type = asend_t ? (PyTypeObject *)Py_NewRef(asend_t) : NULL;
	S.athrow_type = athrow_t ? (PyTypeObject *)Py_NewRef(athrow_t) : NULL;
	S.init_descr = PyDict_GetItemString(tt->tp_dict, "__init__");
	S.del_descr = PyDict_GetItemString(tt->tp_dict, "__del__");
	Py_XINCREF(S.init_descr);
	Py_XINCREF(S.del_descr);

	S.orig_init = tt->tp_init;
	S.orig_finalize = tt->tp_finalize;
	S.orig_step_call = S.step_type->tp_call;
	S.orig_wakeup = S.wakeup_def->ml_meth;
	PyObject *set_name = PyDict_GetItemString(tt->tp_dict, "set_name");
	if (set_name && Py_IS_TYPE(set_name, &PyMethodDescr_Type) &&
	    (((PyMethodDescrObject *)set_name)->d_method->ml_flags &
	     (METH_O | METH_VARARGS | METH_FASTCALL | METH_KEYWORDS | METH_NOARGS)) == METH_O) {
		S.set_name_def = ((PyMethodDescrObject *)set_name)->d_method;
		S.orig_set_name = S.set_name_def->ml_meth;
	}

	/*
	 * Swap the pointers. TaskStepMethWrapper has no vectorcall, so calls go through
	 * tp_call read at call time; PyCFunction vectorcall reads m_ml->ml_meth at call
	 * time, so bound task_wakeup callbacks that already exist are covered too.
	 */
	S.step_type->tp_call = hook_step_call;
	S.wakeup_def->ml_meth = (PyCFunction)(void (*)(void))hook_wakeup;
	if (S.set_name_def)
		S.set_name_def->ml_meth = (PyCFunction)(void (*)(void))hook_set_name;
	patch_descr(S.init_descr, (void *)S.orig_init, (void *)hook_init);
	patch_descr(S.del_descr, (void *)S.orig_finalize, (void *)hook_finalize);
	patch_subclasses(tt, 0);
	S.installed = 1;
	start_watcher();
	Py_RETURN_TRUE;
}

/* ---- emitters used by the replay (asynctrace/_replay.py) ----------------------- */

/* replay_begin(full=True) -> generation */
static PyObject *m_replay_begin(PyObject *mod, PyObject *args)
{
	(void)mod;
	int full = 1;
	if (!PyArg_ParseTuple(args, "|p", &full))
		return NULL;
	uint64_t gen = ++S.replay_gen;
	ring_flush(); /* what happened before the replay reaches tracers first */
	S.in_replay = 1;
	if (full) {
		/* A new tracer: it knows nothing of what earlier records said. */
		last_step_clear();
		codes_clear(); /* re-register every code it will see */
	}
	S.session_sem = ASYNCTRACE_REPLAY_SEMAPHORE();
	if (ASYNCTRACE_REPLAY_BEGIN_ENABLED())
		ASYNCTRACE_REPLAY_BEGIN(gen);
	return PyLong_FromUnsignedLongLong(gen);
}

static PyObject *m_replay_end(PyObject *mod, PyObject *args)
{
	(void)mod;
	unsigned long long gen, n;
	if (!PyArg_ParseTuple(args, "KK", &gen, &n))
		return NULL;
	S.in_replay = 0;
	ring_flush(); /* the replayed state reaches tracers before replay__end */
	if (ASYNCTRACE_REPLAY_END_ENABLED())
		ASYNCTRACE_REPLAY_END(gen, n);
	Py_RETURN_NONE;
}

/* emit_create(task, parent_or_None, tid) */
static PyObject *m_emit_create(PyObject *mod, PyObject *args)
{
	(void)mod;
	PyObject *task, *parent;
	unsigned long long tid;
	if (!PyArg_ParseTuple(args, "OOK", &task, &parent, &tid))
		return NULL;
	emit_create_raw(task, parent == Py_None ? 0 : (uint64_t)(uintptr_t)parent, tid, NULL, 0);
	Py_RETURN_NONE;
}

/* emit_edge(child, awaiter, kind) */
static PyObject *m_emit_edge(PyObject *mod, PyObject *args)
{
	(void)mod;
	PyObject *child, *awaiter;
	int kind;
	if (!PyArg_ParseTuple(args, "OOi", &child, &awaiter, &kind))
		return NULL;
	emit_edge(child, awaiter, kind);
	Py_RETURN_NONE;
}

/* emit_state(task): task__await (with gather/shield edges) or task__complete. */
static PyObject *m_emit_state(PyObject *mod, PyObject *task)
{
	(void)mod;
	emit_post_step(task);
	Py_RETURN_NONE;
}

/* emit_running(task, frames, truncated): task__await(RUNNING) with live frames, innermost first. */
static PyObject *m_emit_running(PyObject *mod, PyObject *args)
{
	(void)mod;
	PyObject *task, *frames;
	int truncated;
	if (!PyArg_ParseTuple(args, "OO!p", &task, &PyList_Type, &frames, &truncated))
		return NULL;
	int pe = ASYNCTRACE_TASK_AWAIT_ENABLED(), be = BATCH_ON();
	if (!pe && !be)
		Py_RETURN_NONE;
	size_t n = 0;
	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(frames) && n < ASYNCTRACE_MAX_FRAMES; i++) {
		PyObject *f = PyList_GET_ITEM(frames, i);
		if (!PyFrame_Check(f))
			continue;
		PyCodeObject *code = PyFrame_GetCode((PyFrameObject *)f);
		int line = PyFrame_GetLineNumber((PyFrameObject *)f);
		tls_frames[n].code_id = register_code((PyObject *)code, NULL);
		tls_frames[n].line = line > 0 ? (uint32_t)line : 0;
		tls_frames[n].flags = 0;
		Py_DECREF(code);
		n++;
	}
	if (n && (truncated || PyList_GET_SIZE(frames) > (Py_ssize_t)n))
		tls_frames[n - 1].flags |= ASYNCTRACE_FRAME_TRUNCATED;
	if (be)
		rec_stack(task, NULL, ASYNCTRACE_AWAIT_RUNNING, n);
	if (pe)
		ASYNCTRACE_TASK_AWAIT(task, NULL, ASYNCTRACE_AWAIT_RUNNING, tls_frames, n);
	Py_RETURN_NONE;
}

/* `o` itself (new ref), or the referent of a weak reference (NULL if dead). */
static PyObject *weak_target(PyObject *o)
{
	if (!PyWeakref_Check(o))
		return Py_NewRef(o);
#if PY_VERSION_HEX >= 0x030D0000
	PyObject *t = NULL;
	if (PyWeakref_GetRef(o, &t) < 0) {
		PyErr_Clear();
		return NULL;
	}
	return t;
#else
	PyObject *t = PyWeakref_GetObject(o);
	return t && t != Py_None ? Py_NewRef(t) : NULL;
#endif
}

/* Tracers have this pending task's current stack and await state. */
static int stack_known(PyObject *task)
{
	struct state_ref set = state_set(task);
	int w = state_way_of(set);
	if (w < 0 || !(way_state(set, w) & STATE_STACK_SENT) || !L.ok)
		return 0;
	PyObject *wt = field(task, L.waiter);
	if (wt == Py_None)
		wt = NULL;
	return (way_state(set, w) & ~STATE_STACK_SENT) == state_hash(wt, await_kind_of(wt));
}

/* The parent task of the TaskGroup owning `task` (new ref), or NULL: the
 * group's _on_task_done is a done callback of each of its tasks. */
static PyObject *taskgroup_parent(PyObject *task, PyObject *on_done)
{
	if (!on_done || !L.ok)
		return NULL;
	PyObject *cb = field(task, L.cb0);
	PyObject *lst = L.callbacks_ok ? field(task, L.cb0 + 2) : NULL;
	Py_ssize_t n = lst && PyList_Check(lst) ? PyList_GET_SIZE(lst) : 0;
	for (Py_ssize_t i = -1; i < n; i++) {
		if (i >= 0) {
			PyObject *ent = PyList_GET_ITEM(lst, i);
			cb = PyTuple_Check(ent) && PyTuple_GET_SIZE(ent) ? PyTuple_GET_ITEM(ent, 0) : NULL;
		}
		if (cb && PyMethod_Check(cb) && PyMethod_GET_FUNCTION(cb) == on_done) {
			PyObject *p = PyObject_GetAttrString(PyMethod_GET_SELF(cb), "_parent_task");
			if (!p || p == Py_None) {
				PyErr_Clear();
				Py_XDECREF(p);
				return NULL;
			}
			return p;
		}
	}
	return NULL;
}

/*
 * replay_tasks(tasks, loop_tids, default_tid, running, on_task_done, full=True) -> n
 * The per-task part of asynctrace._replay.replay(), in C: for every pending
 * task of `tasks` task__create (tid: learned from its steps, else
 * loop_tids[loop], else default_tid) with its TaskGroup parent, then the
 * TaskGroup edges, then its await state with frames, except for the tasks in
 * `running` (a set of ids), whose frames the caller sends. Not full: only
 * the await states (a refresh for a tracer that follows the events).
 */
static PyObject *m_replay_tasks(PyObject *mod, PyObject *args)
{
	(void)mod;
	PyObject *tasks, *loop_tids, *running, *on_done;
	unsigned long long default_tid;
	int full = 1;
	if (!PyArg_ParseTuple(args, "O!O!KO!O|p", &PyList_Type, &tasks, &PyDict_Type, &loop_tids, &default_tid,
			      &PySet_Type, &running, &on_done, &full))
		return NULL;
	if (on_done == Py_None)
		on_done = NULL;
	/* Weak references become their tasks (dead and done ones go). The sets
	 * the caller read hold each task once: 3.12+'s scheduled and eager sets
	 * are disjoint. */
	PyObject *live = PyList_New(0);
	if (!live)
		return NULL;
	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(tasks); i++) {
		PyObject *t = weak_target(PyList_GET_ITEM(tasks, i));
		if (!t || !is_task(t) || task_is_done(t) || !loop_alive(task_loop_borrowed(t))) {
			Py_XDECREF(t);
			continue;
		}
		int err = PyList_Append(live, t);
		Py_DECREF(t);
		if (err < 0) {
			Py_DECREF(live);
			return NULL;
		}
	}
	tasks = live; /* owned: released at the end */
	Py_ssize_t n = PyList_GET_SIZE(tasks), emitted = 0;
	PyObject **parents = PyMem_Calloc((size_t)(n ? n : 1), sizeof(PyObject *));
	if (!parents) {
		Py_DECREF(live);
		return PyErr_NoMemory();
	}
	for (Py_ssize_t i = 0; full && i < n; i++) {
		PyObject *t = PyList_GET_ITEM(tasks, i);
		if (!is_task(t) || task_is_done(t))
			continue;
		PyObject *loop = S.loop_field_ok ? field(t, 2) : NULL;
		uint64_t tid = loop ? lookup_loop_tid((uintptr_t)loop) : 0;
		if (!tid && loop) {
			PyObject *v = PyDict_GetItemWithError(loop_tids, loop);
			if (v)
				tid = PyLong_AsUnsignedLongLong(v);
			PyErr_Clear();
		}
		if (!tid)
			tid = default_tid;
		parents[i] = taskgroup_parent(t, on_done);
		emit_create_raw(t, parents[i] ? (uint64_t)(uintptr_t)parents[i] : 0, tid, NULL, 0);
		emitted++;
	}
	for (Py_ssize_t i = 0; i < n; i++)
		if (parents[i])
			emit_edge(PyList_GET_ITEM(tasks, i), parents[i], ASYNCTRACE_EDGE_TASKGROUP);
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *t = PyList_GET_ITEM(tasks, i);
		Py_XDECREF(parents[i]);
		if (!is_task(t) || task_is_done(t))
			continue;
		PyObject *id = PyLong_FromVoidPtr(t);
		int run = id ? PySet_Contains(running, id) : -1;
		Py_XDECREF(id);
		PyErr_Clear();
		if (run == 0) {
			if (!full && stack_known(t))
				continue; /* suspended since tracers got its stack */
			emit_post_step(t);
			emitted += !full;
		}
	}
	PyMem_Free(parents);
	Py_DECREF(live);
	PyErr_Clear();
	return PyLong_FromSsize_t(emitted);
}

/* Loops of `tasks` whose thread no step has told us yet (a set). */
static PyObject *m_unknown_loops(PyObject *mod, PyObject *tasks)
{
	(void)mod;
	if (!PyList_Check(tasks)) {
		PyErr_SetString(PyExc_TypeError, "a list");
		return NULL;
	}
	PyObject *out = PySet_New(NULL);
	for (Py_ssize_t i = 0; out && i < PyList_GET_SIZE(tasks); i++) {
		PyObject *t = weak_target(PyList_GET_ITEM(tasks, i));
		if (t && is_task(t) && S.loop_field_ok) {
			PyObject *loop = field(t, 2);
			if (loop && loop != Py_None && !lookup_loop_tid((uintptr_t)loop) && PySet_Add(out, loop) < 0)
				Py_CLEAR(out);
		}
		Py_XDECREF(t);
	}
	return out;
}

/* taskgroup_edge(task, parent_task): TaskGroup.create_task wrapper (3.11+). */
static PyObject *m_taskgroup_edge(PyObject *mod, PyObject *args)
{
	(void)mod;
	PyObject *task, *parent;
	if (!PyArg_ParseTuple(args, "OO", &task, &parent))
		return NULL;
	if (edges_on() && parent != Py_None && is_task(task) && !task_is_done(task)) {
		flush_pending();
		emit_edge(task, parent, ASYNCTRACE_EDGE_TASKGROUP);
	}
	Py_RETURN_NONE;
}

static PyObject *m_edge_enabled(PyObject *mod, PyObject *arg)
{
	(void)mod;
	(void)arg;
	return PyBool_FromLong(edges_on());
}

/* loop_alive(loop): False for a loop a forked child inherited and never ran. */
static PyObject *m_loop_alive(PyObject *mod, PyObject *loop)
{
	(void)mod;
	return PyBool_FromLong(loop_alive(loop));
}

static PyObject *m_loop_tid(PyObject *mod, PyObject *loop)
{
	(void)mod;
	return PyLong_FromUnsignedLong(lookup_loop_tid((uintptr_t)loop));
}

static PyObject *m_semaphores(PyObject *mod, PyObject *arg)
{
	(void)mod;
	(void)arg;
	PyObject *d = PyDict_New();
	if (!d)
		return NULL;
#define X(n)                                                                              \
	{                                                                                 \
		PyObject *v = PyLong_FromLong(asynctrace_##n##_semaphore);                \
		if (!v || PyDict_SetItemString(d, #n, v) < 0) {                           \
			Py_XDECREF(v);                                                    \
			Py_DECREF(d);                                                     \
			return NULL;                                                      \
		}                                                                         \
		Py_DECREF(v);                                                             \
	}
	ASYNCTRACE__SEMAPHORES(X)
#undef X
	return d;
}

static PyObject *m_layout(PyObject *mod, PyObject *arg)
{
	(void)mod;
	(void)arg;
	if (!L.ok)
		Py_RETURN_NONE;
	return Py_BuildValue("{s:n,s:n,s:n,s:n,s:n,s:n,s:i,s:i,s:i,s:O}", "coro", L.coro, "waiter", L.waiter,
			     "name", L.name, "exception", L.exc, "callback0", L.cb0, "state_offset",
			     L.state_off, "pending", L.st_pending, "cancelled", L.st_cancelled, "finished",
			     L.st_finished, "shield", S.shield_code ? Py_True : Py_False);
}

static PyObject *m_ring_stats(PyObject *mod, PyObject *arg)
{
	(void)mod;
	(void)arg;
	return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K}",
			     "timing", (unsigned long long)RS.records[ASYNCTRACE_REC_TIMING], "code",
			     (unsigned long long)RS.records[ASYNCTRACE_REC_CODE], "step_timed",
			     (unsigned long long)RS.records[ASYNCTRACE_REC_STEP_TIMED], "sample",
			     (unsigned long long)RS.records[ASYNCTRACE_REC_SAMPLE], "timing_full",
			     (unsigned long long)T.full, "create",
			     (unsigned long long)RS.records[ASYNCTRACE_REC_CREATE], "step",
			     (unsigned long long)RS.records[ASYNCTRACE_REC_STEP], "complete",
			     (unsigned long long)RS.records[ASYNCTRACE_REC_COMPLETE], "edge_add",
			     (unsigned long long)RS.records[ASYNCTRACE_REC_EDGE_ADD], "stack",
			     (unsigned long long)RS.records[ASYNCTRACE_REC_STACK], "erased",
			     (unsigned long long)RS.erased, "same_state", (unsigned long long)RS.same_state,
			     "flushes", (unsigned long long)RS.flushes, "self_flushes",
			     (unsigned long long)RS.self_flushes, "edges_in_create",
			     (unsigned long long)RS.edges_in_create, "dropped",
			     (unsigned long long)atomic_load(&R.dropped), "unflushed",
			     (unsigned long long)(atomic_load(&R.pub) - atomic_load(&R.tail)));
}

/* enable() after its own sample objects are gone: timing counts start anew
 * (a session restarts at the next hook), so they are the program's alone. */
static PyObject *m_timing_restart(PyObject *mod, PyObject *arg)
{
	(void)mod;
	(void)arg;
	T.on = 0;
	Py_RETURN_NONE;
}

static PyObject *m_is_installed(PyObject *mod, PyObject *arg)
{
	(void)mod;
	(void)arg;
	return PyBool_FromLong(S.installed);
}

/* ---- watcher thread: notices tracers attaching, triggers the replay -------------- */

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
} W = { .mu = PTHREAD_MUTEX_INITIALIZER };

/* The condition variable measures timeouts on CLOCK_MONOTONIC (the default,
 * CLOCK_REALTIME, would turn monotonic deadlines into a busy loop). */
static pthread_once_t cv_once = PTHREAD_ONCE_INIT;
static void init_cv(void)
{
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&W.cv, &ca);
	pthread_condattr_destroy(&ca);
}

/* Sleeps one poll period, or less if asked to stop. */
static void watcher_sleep(void)
{
	struct timespec until;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_nsec += W.poll_ns % 1000000000L;
	until.tv_sec += W.poll_ns / 1000000000L + until.tv_nsec / 1000000000L;
	until.tv_nsec %= 1000000000L;
	pthread_mutex_lock(&W.mu);
	while (!atomic_load(&W.stop) && !W.kick &&
	       pthread_cond_timedwait(&W.cv, &W.mu, &until) == 0)
		;
	W.kick = 0;
	pthread_mutex_unlock(&W.mu);
}

/* A producer filled the ring past RING_KICK: flush now, not at the next poll. */
static void kick_watcher(void)
{
	pthread_mutex_lock(&W.mu);
	W.kick = 1;
	pthread_cond_signal(&W.cv);
	pthread_mutex_unlock(&W.mu);
}

static void timing_forget_stacks(void);

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
	atomic_store(&W.tid, (int)gettid());
	while (!atomic_load(&W.stop)) {
		watcher_sleep();
		/* Nothing sits in the ring longer than the flush period, whether
		 * the loop is busy, idle or blocked; no GIL needed. Views ask for a
		 * replay, which flushes first, so the period bounds only how stale
		 * held maps get between views; the longer it is, the more
		 * short-lived tasks never reach the kernel (fresh_erase). */
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		long long now_ns = now.tv_sec * 1000000000LL + now.tv_nsec;
		uint64_t fill = atomic_load_explicit(&R.pub, memory_order_acquire) -
				atomic_load_explicit(&R.tail, memory_order_relaxed);
		if ((fill && now_ns - W.last_flush_ns >= W.flush_ns) || (fill && !BATCH_ON())) {
			ring_flush();
			W.last_flush_ns = now_ns;
		} else if (fill >= RING_KICK) {
			ring_flush_keep(RING_KEEP);
			W.last_flush_ns = now_ns;
		}
		timing_watch(W.poll_ns);
		unsigned v = ASYNCTRACE_REPLAY_SEMAPHORE();
		unsigned req = ASYNCTRACE_REPLAY_REQUEST_MASK();
		if (v > W.last || (req & ~W.last_req)) {
			/*
			 * A new tracer attached. probes.h says tracers attach replay__end
			 * last, but generic tools (bpftrace) attach in any order: wait until
			 * the semaphores stop changing (at most ~40 polls) before replaying.
			 * A request alone (one link on a tracer already attached) needs no
			 * wait.
			 */
			for (int i = 0, prev = -1; v > W.last && i < 40 && !atomic_load(&W.stop); i++) {
				int cur = (int)semaphore_sum();
				if (cur == prev)
					break;
				prev = cur;
				watcher_sleep();
			}
			/* A new tracer (replay__end, or a full request) needs
			 * everything; a refresh request only current stacks. */
			int full = v > W.last || (req & ~W.last_req & ASYNCTRACE_REPLAY_FULL_MASK);
			v = ASYNCTRACE_REPLAY_SEMAPHORE();
			req = ASYNCTRACE_REPLAY_REQUEST_MASK();
			if (atomic_load(&W.stop) || IS_FINALIZING())
				break;
			PyGILState_STATE g = PyGILState_Ensure();
			if (!atomic_load(&W.stop))
				run_replay(full);
			PyGILState_Release(g);
		}
		W.last = v;
		W.last_req = req;
	}
	return NULL;
}

static void start_watcher(void)
{
	if (atomic_load(&W.running))
		return;
	const char *e = getenv("ASYNCTRACE_POLL_MS");
	long ms = e ? strtol(e, NULL, 10) : 5;
	if (ms <= 0)
		ms = 5;
	W.poll_ns = ms * 1000000L;
	e = getenv("ASYNCTRACE_FLUSH_MS");
	ms = e ? strtol(e, NULL, 10) : 50;
	if (ms <= 0)
		ms = 50;
	W.flush_ns = ms * 1000000LL;
	pthread_once(&cv_once, init_cv);
	atomic_store(&W.stop, 0);
	atomic_store(&W.tid, 0);
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setstacksize(&a, 256 * 1024);
	/* Block all signals in the watcher so Python's handlers keep running on the main thread. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	if (pthread_create(&W.thread, &a, watcher_main, NULL) == 0)
		atomic_store(&W.running, 1);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&a);
}

/*
 * Stops and joins the watcher: at exit, before the interpreter goes away, and
 * before fork(), so that a program forking while dormant-traced is single-
 * threaded as without us (3.12+ warns about fork() in multi-threaded
 * processes, counting the kernel's threads).
 */
static PyObject *m_stop_watcher(PyObject *mod, PyObject *arg)
{
	(void)mod;
	(void)arg;
	if (atomic_exchange(&W.running, 0)) {
		pthread_mutex_lock(&W.mu);
		atomic_store(&W.stop, 1);
		pthread_cond_broadcast(&W.cv);
		pthread_mutex_unlock(&W.mu);
		int tid = atomic_load(&W.tid);
		Py_BEGIN_ALLOW_THREADS
		pthread_join(W.thread, NULL);
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

static int pending_start_watcher(void *arg)
{
	(void)arg;
	if (S.installed)
		start_watcher();
	return 0;
}

/*
 * os.register_at_fork(after_in_parent=...): the watcher was stopped before
 * fork. 3.13 counts threads for its fork() warning after the after_in_parent
 * hooks ran, so restart from a pending call: it runs at the next bytecode
 * boundary of the main thread, once os.fork() has returned.
 */
static PyObject *m_after_fork_parent(PyObject *mod, PyObject *arg)
{
	(void)mod;
	(void)arg;
	if (S.installed && Py_AddPendingCall(pending_start_watcher, NULL) < 0)
		start_watcher();
	Py_RETURN_NONE;
}

/* os.register_at_fork(after_in_child=...): threads do not survive fork. */
static PyObject *m_after_fork_child(PyObject *mod, PyObject *arg)
{
	(void)mod;
	(void)arg;
	atomic_store(&W.running, 0);
	/* Records of the parent are not the child's events; no tracer is
	 * attached to the child (its semaphores count the parent's tracers). */
	atomic_flag_clear(&R.lock);
	R.head = atomic_load(&R.pub);
	atomic_store(&R.tail, R.head);
	atomic_store(&R.kicked, 0);
	W.kick = 0;
	tls_npending = 0;
	tls_current = 0;
	tls_tid = 0; /* the child's thread has its own id */
	tls_last_loop = 0;
	for (int i = 0; i < STEP_SLOTS; i++)
		atomic_store(&step_slots[i].seq, 0); /* other threads' steps are gone */
	T.on = 0;
	/* Loops of the parent stay out of replays until they run here. */
	fork_gen++;
	memset(alive_loops, 0, sizeof alive_loops);
	tls_alive_loop = 0;
	if (S.installed) {
		/* The child is a new process: no tracer is attached to it yet, but it
		 * inherited the parent's semaphore values; only a rise means a tracer. */
		W.last = ASYNCTRACE_REPLAY_SEMAPHORE();
		W.last_req = ASYNCTRACE_REPLAY_REQUEST_MASK();
		start_watcher();
	}
	Py_RETURN_NONE;
}

/* ---- module ------------------------------------------------------------------------ */

static PyMethodDef methods[] = {
	{ "_install", m_install, METH_VARARGS, "Hook _asyncio (called by asynctrace.enable())." },
	{ "is_installed", m_is_installed, METH_NOARGS, NULL },
	{ "_timing_restart", m_timing_restart, METH_NOARGS, NULL },
	{ "ring_stats", m_ring_stats, METH_NOARGS, "Counters of the batch path (records written and saved)." },
	{ "layout", m_layout, METH_NOARGS, "Field positions the hooks read directly (None: getters)." },
	{ "semaphores", m_semaphores, METH_NOARGS, "Current USDT semaphore values." },
	{ "replay_begin", m_replay_begin, METH_VARARGS, NULL },
	{ "replay_end", m_replay_end, METH_VARARGS, NULL },
	{ "emit_create", m_emit_create, METH_VARARGS, NULL },
	{ "emit_edge", m_emit_edge, METH_VARARGS, NULL },
	{ "emit_state", m_emit_state, METH_O, NULL },
	{ "emit_running", m_emit_running, METH_VARARGS, NULL },
	{ "taskgroup_edge", m_taskgroup_edge, METH_VARARGS, NULL },
	{ "replay_tasks", m_replay_tasks, METH_VARARGS, NULL },
	{ "unknown_loops", m_unknown_loops, METH_O, NULL },
	{ "edge_enabled", m_edge_enabled, METH_NOARGS, NULL },
	{ "loop_tid", m_loop_tid, METH_O, NULL },
	{ "loop_alive", m_loop_alive, METH_O, NULL },
	{ "_stop_watcher", m_stop_watcher, METH_NOARGS, NULL },
	{ "_after_fork_child", m_after_fork_child, METH_NOARGS, NULL },
	{ "_after_fork_parent", m_after_fork_parent, METH_NOARGS, NULL },
	{ NULL, NULL, 0, NULL },
};

static struct PyModuleDef moddef = {
	PyModuleDef_HEAD_INIT, "asynctrace._asynctrace",
	"asynctrace USDT probes for asyncio", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__asynctrace(void)
{
	struct { PyObject **var; const char *s; } names[] = {
		{ &s_state, "_state" }, { &s_fut_waiter, "_fut_waiter" }, { &s_get_coro, "get_coro" },
		{ &s_get_name, "get_name" }, { &s_loop, "_loop" }, { &s_exception, "_exception" },
		{ &s_callbacks, "_callbacks" }, { &s_children, "_children" }, { &s_cr_frame, "cr_frame" },
		{ &s_gi_frame, "gi_frame" }, { &s_ag_frame, "ag_frame" }, { &s_cr_await, "cr_await" },
		{ &s_gi_yieldfrom, "gi_yieldfrom" }, { &s_ag_await, "ag_await" },
		{ &s_qualname, "__qualname__" }, { &s_done, "done" }, { &s_cr_suspended, "cr_suspended" },
		{ &s_gi_suspended, "gi_suspended" }, { &s_outer_done_callback, "_outer_done_callback" },
		{ &s_inner, "inner" }, { &s_eager_start, "eager_start" }, { &s_co_freevars, "co_freevars" },
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (!*names[i].var && !(*names[i].var = PyUnicode_InternFromString(names[i].s)))
			return NULL;
	PyObject *m = PyModule_Create(&moddef);
	if (m && PyModule_AddIntConstant(m, "ABI_VERSION", ASYNCTRACE_ABI_VERSION) < 0)
		Py_CLEAR(m);
	return m;
}
