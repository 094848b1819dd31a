// SPDX-License-Identifier: Apache-2.0
/*
 * Emitters: everything the runtime tells tracers about tasks, as USDT probes
 * (task__create/resume/await/complete, edge__add) and as ring records
 * (CREATE, STEP, STACK, EDGE_ADD, COMPLETE); the eager-task pending list;
 * which thread runs which loop (loop_tids) and, after a fork, which loops
 * are alive here (alive_loops).
 *
 * Locking: every function needs the GIL (they read Python objects and are
 * the ring's producers); none takes the ring lock itself (ring.c's fresh_*
 * do, briefly). Callers: hooks.c (per step, the hot path), replay.c and
 * timing.c. No allocation on the hot path: frame buffers are on the stack.
 */
#include "runtime.h"

#include <string.h>
#include <unistd.h>


/*
 * Eager tasks (3.12+) run their first step inside tp_init, before we could emit
 * task__create (the name is only known once tp_init has set it). Tasks whose
 * tp_init is in progress on this thread are kept here; anything emitted from
 * inside that step first flushes their task__create + task__resume so tracers
 * always see a task created before it is referenced.
 */
__thread struct pending tls_pending[MAX_PENDING];
__thread int tls_npending;

/* loop -> native tid of the thread that ran its steps (learned while traced).
 * Direct-mapped and lossy, on purpose not a ptr_table: the replay falls back
 * to the loop's thread as Python knows it, and entries are read and written
 * with single atomic stores, no probing. Located with ptr_hash (table.h). */
#define LOOP_TID_SLOTS 64
static struct { _Atomic uintptr_t loop; _Atomic uint32_t tid; } loop_tids[LOOP_TID_SLOTS];

/* gettid() is a syscall: once per thread (reset in a forked child). */
static __thread uint32_t tls_tid;
static __thread uintptr_t tls_last_loop; /* loop whose tid this thread last recorded */

uint32_t native_tid(void)
{
	if (!tls_tid)
		tls_tid = (uint32_t)gettid();
	return tls_tid;
}

void learn_loop_tid(PyObject *loop)
{
	uintptr_t key = (uintptr_t)loop;
	if (key == tls_last_loop)
		return; /* steps of one loop run on one thread: nothing new */
	tls_last_loop = key;
	size_t h = ptr_hash(key, LOOP_TID_SLOTS);
	atomic_store(&loop_tids[h].loop, key);
	atomic_store(&loop_tids[h].tid, native_tid());
}

uint32_t lookup_loop_tid(uintptr_t key)
{
	size_t h = ptr_hash(key, LOOP_TID_SLOTS);
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
unsigned fork_gen;
static struct ptr_table alive_loops = { .esize = sizeof(uintptr_t), .min_cap = ALIVE_LOOP_SLOTS, .fixed = 1 }; /* GIL; never removed */
static __thread uintptr_t tls_alive_loop;

void note_loop_alive(PyObject *loop)
{
	uintptr_t key = (uintptr_t)loop;
	if (!key || key == tls_alive_loop)
		return;
	tls_alive_loop = key;
	int added;
	if (!ptr_table_insert(&alive_loops, key, &added))
		fork_gen = 0; /* Full (64 loops ran in the child): the replay shows every task. */
}

/* False for a loop inherited from the parent that has done nothing since. */
int loop_alive(PyObject *loop)
{
	uintptr_t key = (uintptr_t)loop;
	if (!fork_gen || !key)
		return 1;
	return ptr_table_find(&alive_loops, key) != NULL;
}

/* In a forked child: the parent's loops are not alive here until they run. */
void emit_after_fork_child(void)
{
	tls_npending = 0;
	tls_current = 0;
	tls_tid = 0; /* the child's thread has its own id */
	tls_last_loop = 0;
	fork_gen++;
	ptr_table_clear(&alive_loops);
	tls_alive_loop = 0;
}

static void rec_step(PyObject *task, PyObject *awaited, int kind)
{
	uint32_t h = dedupe_state_hash((uintptr_t)awaited, kind);
	if (dedupe_same((uintptr_t)task, h)) {
		ring_counters.same_state++;
		return; /* same state as the last record: nothing new to tell */
	}
	struct asynctrace_rec *r = ring_reserve(1);
	if (!r)
		return;
	*r = (struct asynctrace_rec){ .type = ASYNCTRACE_REC_STEP, .kind = (uint8_t)kind, .nslots = 1,
				      .a = (uint64_t)(uintptr_t)task, .b = (uint64_t)(uintptr_t)awaited };
	dedupe_put((uintptr_t)task, h);
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
/* asyncio's current task of the loop running on this thread, as an id. */
uint64_t running_parent(void)
{
	PyObject *cur = current_task_here();
	uint64_t parent = (uint64_t)(uintptr_t)cur;
	Py_XDECREF(cur);
	return parent;
}

/* The task whose step runs on this thread (hooked steps only), or 0. */
__thread uint64_t tls_current;

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
	dedupe_forget((uintptr_t)task); /* a new task at an old address, or a replayed one */
	fresh_note((uintptr_t)task, ring_head(), first);
	ring_commit(n);
}

/*
 * coro: the task's coroutine if the caller has it. Task.get_coro() must not be
 * called on a finished eager task: 3.12.0/3.12.1 return a NULL task_coro
 * without a check (crash), so only pending tasks are asked.
 */
void emit_create_raw(PyObject *task, uint64_t parent, uint64_t tid, PyObject *coro, int first)
{
	int pe = ASYNCTRACE_TASK_CREATE_ENABLED(), be = BATCH_ON();
	if (!pe && !be)
		return;
	struct name_buf nb;
	Py_ssize_t nlen;
	const char *n = task_name(task, &nlen, &nb);
	PyObject *loop = runtime.loop_field_ok ? Py_XNewRef(field(task, 2)) : PyObject_GetAttr(task, s_loop);
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

void emit_resume(PyObject *task)
{
	if (ASYNCTRACE_TASK_RESUME_ENABLED())
		ASYNCTRACE_TASK_RESUME(task);
}

/* Emit task__create (+ resume: their eager step is running) for pending eager tasks. */
void flush_pending(void)
{
	for (int i = 0; i < tls_npending && i < MAX_PENDING; i++) {
		if (tls_pending[i].flushed)
			continue;
		tls_pending[i].flushed = 1;
		emit_create_raw(tls_pending[i].task, tls_pending[i].parent, 0, tls_pending[i].coro, 1);
		emit_resume(tls_pending[i].task);
	}
}

int edges_on(void) { return ASYNCTRACE_EDGE_ADD_ENABLED() | BATCH_ON(); }

/* An edge to a child whose CREATE is still unflushed rides in that record
 * (slot 1's edge fields), so it goes wherever the CREATE goes: erased with it
 * if the child completes before the flush (ring.c fresh_edge_into_create). */
void emit_edge(PyObject *child, PyObject *awaiter, int kind)
{
	if (BATCH_ON() && !fresh_edge_into_create((uintptr_t)child, (uintptr_t)awaiter, kind))
		rec1(ASYNCTRACE_REC_EDGE_ADD, (uint8_t)kind, (uint64_t)(uintptr_t)child,
		     (uint64_t)(uintptr_t)awaiter);
	if (ASYNCTRACE_EDGE_ADD_ENABLED())
		ASYNCTRACE_EDGE_ADD(child, awaiter, kind);
}

void emit_edge_remove(PyObject *child, PyObject *awaiter)
{
	if (BATCH_ON())
		rec1(ASYNCTRACE_REC_EDGE_REMOVE, 0, (uint64_t)(uintptr_t)child, (uint64_t)(uintptr_t)awaiter);
	if (ASYNCTRACE_EDGE_REMOVE_ENABLED())
		ASYNCTRACE_EDGE_REMOVE(child, awaiter);
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
		} else if (depth < 4 && PyObject_TypeCheck(c, (PyTypeObject *)runtime.gathering_future_type)) {
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
	if (!layout.ok || !runtime.shield_code || runtime.shield_inner < 0)
		return NULL;
	PyObject *cb = field(fut, layout.cb0);
	if (!cb || !PyFunction_Check(cb) || PyFunction_GET_CODE(cb) != runtime.shield_code)
		return NULL;
	PyObject *closure = PyFunction_GET_CLOSURE(cb);
	if (!closure || !PyTuple_Check(closure) || runtime.shield_inner >= PyTuple_GET_SIZE(closure))
		return NULL;
	PyObject *cell = PyTuple_GET_ITEM(closure, runtime.shield_inner);
	return PyCell_Check(cell) ? PyCell_GET(cell) : NULL;
}

/* A future made by asyncio.shield(): its `_outer_done_callback` closes over `inner`. */
static void shield_edges(PyObject *fut, PyObject *awaiter)
{
	if (layout.ok && runtime.shield_code && runtime.shield_inner >= 0) {
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



void rec_stack(PyObject *task, PyObject *awaited, int kind, const struct asynctrace_frame *frames,
	       size_t nframes)
{
	uint64_t id = nframes ? stack_id(frames, nframes) : 0;
	uint32_t n = 1 + (uint32_t)(nframes + 1) / 2;
	struct asynctrace_rec *r = ring_reserve(n);
	if (!r)
		return;
	r[0] = (struct asynctrace_rec){ .type = ASYNCTRACE_REC_STACK, .kind = (uint8_t)kind,
					.nslots = (uint16_t)n, .len = (uint32_t)nframes,
					.a = (uint64_t)(uintptr_t)task, .b = (uint64_t)(uintptr_t)awaited,
					.c = id };
	memset(&r[1], 0, (size_t)(n - 1) * sizeof(*r));
	memcpy(&r[1], frames, nframes * sizeof(struct asynctrace_frame));
	if (kind != ASYNCTRACE_AWAIT_RUNNING) {
		uint32_t h = dedupe_state_hash((uintptr_t)awaited, kind);
		dedupe_put((uintptr_t)task, h | DEDUPE_STACK_SENT);
	} else {
		/* The step's end must reach tracers even if the task then awaits
		 * what it awaited before (a bare yield): no dedupe against that. */
		dedupe_forget((uintptr_t)task);
	}
	ring_commit(n);
	timing_stack_sent(task, id);
}

/* What a task waiting on `w` (NULL: nothing) awaits (asynctrace_await_kind). */
int await_kind_of(PyObject *w)
{
	if (!w)
		return ASYNCTRACE_AWAIT_NONE;
	if (is_task(w))
		return ASYNCTRACE_AWAIT_TASK;
	if (runtime.gathering_future_type && PyObject_TypeCheck(w, (PyTypeObject *)runtime.gathering_future_type))
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
	if (pe || (be && runtime.in_replay)) {
		PyObject *coro = task_coro(task);
		struct asynctrace_frame frames[ASYNCTRACE_MAX_FRAMES];
		size_t n = collect_frames(coro, frames);
		Py_XDECREF(coro);
		if (be && runtime.in_replay)
			rec_stack(task, w, kind, frames, n);
		if (pe)
			ASYNCTRACE_TASK_AWAIT(task, w, kind, frames, n);
	}
	if (be && !runtime.in_replay)
		rec_step(task, w, kind);
	Py_XDECREF(w);
	PyErr_Clear();
}


void emit_complete(PyObject *task, int outcome)
{
	wait_step_ended(task, 1);
	dedupe_forget((uintptr_t)task);
	timing_note_done(task);
	timing_completed(task);
	if (BATCH_ON() && !fresh_erase((uintptr_t)task))
		rec1(ASYNCTRACE_REC_COMPLETE, (uint8_t)outcome, (uint64_t)(uintptr_t)task, 0);
	if (ASYNCTRACE_TASK_COMPLETE_ENABLED())
		ASYNCTRACE_TASK_COMPLETE(task, outcome);
}

/* After a step: completion or the new await state. */
void emit_post_step(PyObject *task)
{
	if (task_is_done(task)) {
		emit_complete(task, task_outcome(task));
	} else {
		wait_step_ended(task, 0);
		emit_await_state(task);
	}
}
