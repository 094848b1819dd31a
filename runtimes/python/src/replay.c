// SPDX-License-Identifier: Apache-2.0
/*
 * The replay: the module functions asynctrace/_replay.py calls to re-tell a
 * tracer that attached late (or asks for a refresh) the live tasks, their
 * edges and await states with frames (replay_begin/end, emit_*,
 * replay_tasks), and the queries it needs (unknown_loops, loop_tid,
 * loop_alive, edge_enabled, semaphores, taskgroup_edge, wait_begin).
 *
 * Locking: Python calls every function here with the GIL. replay_begin and
 * replay_end flush the ring (taking the ring lock inside ring.c).
 */
#include "runtime.h"


/* replay_begin(full=True) -> generation */
PyObject *m_replay_begin(PyObject *mod, PyObject *args)
{
	(void)mod;
	int full = 1;
	if (!PyArg_ParseTuple(args, "|p", &full))
		return NULL;
	uint64_t gen = ++runtime.replay_gen;
	ring_flush(); /* what happened before the replay reaches tracers first */
	runtime.in_replay = 1;
	if (full) {
		/* A new tracer: it knows nothing of what earlier records said. */
		dedupe_clear();
		codes_clear(); /* re-register every code it will see */
	}
	runtime.session_sem = ASYNCTRACE_REPLAY_SEMAPHORE();
	if (ASYNCTRACE_REPLAY_BEGIN_ENABLED())
		ASYNCTRACE_REPLAY_BEGIN(gen);
	return PyLong_FromUnsignedLongLong(gen);
}

PyObject *m_replay_end(PyObject *mod, PyObject *args)
{
	(void)mod;
	unsigned long long gen, n;
	if (!PyArg_ParseTuple(args, "KK", &gen, &n))
		return NULL;
	runtime.in_replay = 0;
	ring_flush(); /* the replayed state reaches tracers before replay__end */
	if (ASYNCTRACE_REPLAY_END_ENABLED())
		ASYNCTRACE_REPLAY_END(gen, n);
	Py_RETURN_NONE;
}

/* emit_create(task, parent_or_None, tid) */
PyObject *m_emit_create(PyObject *mod, PyObject *args)
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
PyObject *m_emit_edge(PyObject *mod, PyObject *args)
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
PyObject *m_emit_state(PyObject *mod, PyObject *task)
{
	(void)mod;
	emit_post_step(task);
	Py_RETURN_NONE;
}

/* Is `task` its loop's current task, i.e. is one of its steps running now?
 * Its hook then tells the step's end after this (hooks.c; the GIL orders
 * the records). */
static int step_running(PyObject *task)
{
	PyObject *cur = current_task_of_loop(task_loop_borrowed(task));
	Py_XDECREF(cur);
	return cur == task; /* compared as addresses only */
}

/* emit_running(task, frames, truncated): task__await(RUNNING) with live frames, innermost first.
 * The caller saw the task running, but Python code (its own) ran since, and
 * the loop's thread may have taken the GIL meanwhile and ended the step:
 * a task whose step is not running now gets its current state instead,
 * never a RUNNING that no step end would follow. */
PyObject *m_emit_running(PyObject *mod, PyObject *args)
{
	(void)mod;
	PyObject *task, *frames;
	int truncated;
	if (!PyArg_ParseTuple(args, "OO!p", &task, &PyList_Type, &frames, &truncated))
		return NULL;
	if (!is_task(task))
		Py_RETURN_NONE;
	if (!step_running(task)) {
		emit_post_step(task);
		Py_RETURN_NONE;
	}
	int pe = ASYNCTRACE_TASK_AWAIT_ENABLED(), be = BATCH_ON();
	if (!pe && !be)
		Py_RETURN_NONE;
	struct asynctrace_frame buf[ASYNCTRACE_MAX_FRAMES];
	size_t n = 0;
	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(frames) && n < ASYNCTRACE_MAX_FRAMES; i++) {
		PyObject *f = PyList_GET_ITEM(frames, i);
		if (!PyFrame_Check(f))
			continue;
		PyCodeObject *code = PyFrame_GetCode((PyFrameObject *)f);
		int line = PyFrame_GetLineNumber((PyFrameObject *)f);
		buf[n].code_id = register_code((PyObject *)code, NULL);
		buf[n].line = line > 0 ? (uint32_t)line : 0;
		buf[n].flags = 0;
		Py_DECREF(code);
		n++;
	}
	if (n && (truncated || PyList_GET_SIZE(frames) > (Py_ssize_t)n))
		buf[n - 1].flags |= ASYNCTRACE_FRAME_TRUNCATED;
	if (be)
		rec_stack(task, NULL, ASYNCTRACE_AWAIT_RUNNING, buf, n);
	if (pe)
		ASYNCTRACE_TASK_AWAIT(task, NULL, ASYNCTRACE_AWAIT_RUNNING, buf, n);
	Py_RETURN_NONE;
}

/* Tracers have this pending task's current stack and await state. */
static int stack_known(PyObject *task)
{
	uint32_t state = dedupe_get((uintptr_t)task);
	if (!(state & DEDUPE_STACK_SENT) || !layout.ok)
		return 0;
	PyObject *wt = field(task, layout.waiter);
	if (wt == Py_None)
		wt = NULL;
	return (state & ~DEDUPE_STACK_SENT) == dedupe_state_hash((uintptr_t)wt, await_kind_of(wt));
}

/* The parent task of the TaskGroup owning `task` (new ref), or NULL: the
 * group's _on_task_done is a done callback of each of its tasks. */
static PyObject *taskgroup_parent(PyObject *task, PyObject *on_done)
{
	if (!on_done || !layout.ok)
		return NULL;
	PyObject *cb = field(task, layout.cb0);
	PyObject *lst = layout.callbacks_ok ? field(task, layout.cb0 + 2) : NULL;
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
PyObject *m_replay_tasks(PyObject *mod, PyObject *args)
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
		PyObject *loop = runtime.loop_field_ok ? field(t, 2) : NULL;
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
PyObject *m_unknown_loops(PyObject *mod, PyObject *tasks)
{
	(void)mod;
	if (!PyList_Check(tasks)) {
		PyErr_SetString(PyExc_TypeError, "a list");
		return NULL;
	}
	PyObject *out = PySet_New(NULL);
	for (Py_ssize_t i = 0; out && i < PyList_GET_SIZE(tasks); i++) {
		PyObject *t = weak_target(PyList_GET_ITEM(tasks, i));
		if (t && is_task(t) && runtime.loop_field_ok) {
			PyObject *loop = field(t, 2);
			if (loop && loop != Py_None && !lookup_loop_tid((uintptr_t)loop) && PySet_Add(out, loop) < 0)
				Py_CLEAR(out);
		}
		Py_XDECREF(t);
	}
	return out;
}

/* taskgroup_edge(task, parent_task): TaskGroup.create_task wrapper (3.11+). */
PyObject *m_taskgroup_edge(PyObject *mod, PyObject *args)
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

/*
 * asyncio.wait(fs) in progress (3.14 semantics: the waiting task awaits each
 * pending task of fs until wait() returns). wait_begin emits the edges and
 * notes the wait by the task's address: weak references only (a noted wait
 * keeps nothing alive), ended when `until` (weak) is gone or done:
 *   by_waiter = 0: `until` is _wait's coroutine (the live wrapper): ended
 *                  once it has no frame (it returned or raised);
 *   by_waiter = 1: `until` is the future the task is suspended on (a replay
 *                  found the wait in progress): ended once the task waits
 *                  on something else.
 * wait_step_ended(task), after each traced step and at completion, removes
 * the edges of an ended wait (edge__remove for children still pending).
 * No frame is added to the waiting task: the wrapper returns _wait's own
 * coroutine. Cost when no wait is noted: one dict-size test.
 */
static PyObject *pending_waits; /* {task address: (weakref until, by_waiter, (weakref child, ...))} */

static int wait_ended(PyObject *task, PyObject *until_ref, int by_waiter)
{
	PyObject *until = weak_target(until_ref);
	if (!until)
		return 1;
	int ended;
	if (by_waiter) {
		PyObject *w = task_waiter(task);
		ended = w != until;
		Py_XDECREF(w);
	} else {
		PyObject *frame = PyObject_GetAttrString(until, "cr_frame");
		ended = !frame || frame == Py_None;
		Py_XDECREF(frame);
		PyErr_Clear();
	}
	Py_DECREF(until);
	return ended;
}

void wait_step_ended(PyObject *task, int completed)
{
	if (__builtin_expect(!pending_waits || PyDict_GET_SIZE(pending_waits) == 0, 1))
		return;
	exc_state_t ex;
	EXC_SAVE(ex);
	PyObject *key = PyLong_FromVoidPtr(task);
	PyObject *ent = key ? PyDict_GetItemWithError(pending_waits, key) : NULL; /* borrowed */
	PyObject *until, *children;
	int by_waiter;
	if (ent && PyArg_ParseTuple(ent, "OpO", &until, &by_waiter, &children) &&
	    (completed || wait_ended(task, until, by_waiter))) {
		for (Py_ssize_t i = 0; PyTuple_Check(children) && i < PyTuple_GET_SIZE(children); i++) {
			PyObject *child = weak_target(PyTuple_GET_ITEM(children, i));
			if (child && !task_is_done(child))
				emit_edge_remove(child, task);
			Py_XDECREF(child);
		}
		PyDict_DelItem(pending_waits, key);
	}
	Py_XDECREF(key);
	PyErr_Clear();
	EXC_RESTORE(ex);
}

/* wait_begin(task, until, by_waiter, fs): see above. Never raises into the
 * program's wait(). */
PyObject *m_wait_begin(PyObject *mod, PyObject *args)
{
	(void)mod;
	PyObject *task, *until, *fs;
	int by_waiter;
	if (!PyArg_ParseTuple(args, "OOpO", &task, &until, &by_waiter, &fs))
		return NULL;
	if (!edges_on() || task == Py_None || !is_task(task))
		Py_RETURN_NONE;
	/* A wait that returned earlier in this step (wait after wait): its
	 * edges go first, the new one takes its place. */
	wait_step_ended(task, 0);
	if (!pending_waits && !(pending_waits = PyDict_New())) {
		PyErr_Clear();
		Py_RETURN_NONE;
	}
	PyObject *seq = PySequence_Fast(fs, "fs");
	PyObject *refs = seq ? PyTuple_New(PySequence_Fast_GET_SIZE(seq)) : NULL;
	PyObject *uref = refs ? PyWeakref_NewRef(until, NULL) : NULL;
	Py_ssize_t n = 0;
	if (uref) {
		flush_pending();
		for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
			PyObject *f = PySequence_Fast_GET_ITEM(seq, i);
			if (f == task || !is_task(f) || task_is_done(f))
				continue;
			PyObject *r = PyWeakref_NewRef(f, NULL);
			if (!r)
				break;
			emit_edge(f, task, ASYNCTRACE_EDGE_GATHER);
			PyTuple_SET_ITEM(refs, n++, r);
		}
	}
	PyObject *key = uref ? PyLong_FromVoidPtr(task) : NULL;
	PyObject *ent = key && _PyTuple_Resize(&refs, n) == 0 ? Py_BuildValue("(OiO)", uref, by_waiter, refs) : NULL;
	if (ent)
		PyDict_SetItem(pending_waits, key, ent);
	Py_XDECREF(ent);
	Py_XDECREF(key);
	Py_XDECREF(uref);
	Py_XDECREF(refs);
	Py_XDECREF(seq);
	PyErr_Clear();
	Py_RETURN_NONE;
}

PyObject *m_edge_enabled(PyObject *mod, PyObject *arg)
{
	(void)mod;
	(void)arg;
	return PyBool_FromLong(edges_on());
}

/* loop_alive(loop): False for a loop a forked child inherited and never ran. */
PyObject *m_loop_alive(PyObject *mod, PyObject *loop)
{
	(void)mod;
	return PyBool_FromLong(loop_alive(loop));
}

PyObject *m_loop_tid(PyObject *mod, PyObject *loop)
{
	(void)mod;
	return PyLong_FromUnsignedLong(lookup_loop_tid((uintptr_t)loop));
}

PyObject *m_semaphores(PyObject *mod, PyObject *arg)
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

