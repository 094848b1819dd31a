// SPDX-License-Identifier: Apache-2.0
/*
 * asynctrace._asynctrace: emits the asynctrace USDT probes (include/asynctrace/probes.h)
 * from CPython's C asyncio implementation (_asyncio), for CPython 3.10 .. 3.14 (GIL builds).
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
 * which walks the live tasks and calls the emit_* helpers (replay.c).
 *
 * This unit: module init (interned names, the method table), the USDT
 * semaphores' definition, the ring's tracer side (ring_sink_*), ring_stats,
 * and fork handling (os.register_at_fork hooks). runtime.h lists the others.
 *
 * Locking: every module function is called by Python with the GIL.
 * ring_sink_on/ring_sink_flush are called by flushers holding the ring lock,
 * with or without the GIL (they only read a semaphore and fire the probe).
 */
#include <pthread.h>
#include <stdatomic.h>

#define ASYNCTRACE_DEFINE_SEMAPHORES
#include "asynctrace/probes.h"
#include "runtime.h"

/* Never called: the request probes exist for their semaphores (probes.h). */
__attribute__((visibility("hidden"))) void asynctrace_replay_request_sites(int i);
ASYNCTRACE_DEFINE_REPLAY_REQUEST_SITES()
__attribute__((visibility("hidden"))) void asynctrace_mode_sites(int i);
ASYNCTRACE_DEFINE_MODE_SITES()

struct runtime_state runtime;

/* Interned attribute names. */
PyObject *s_state, *s_fut_waiter, *s_get_coro, *s_get_name, *s_loop, *s_exception,
	*s_callbacks, *s_children, *s_cr_frame, *s_gi_frame, *s_ag_frame, *s_cr_await,
	*s_gi_yieldfrom, *s_ag_await, *s_qualname, *s_done, *s_cr_suspended, *s_gi_suspended,
	*s_outer_done_callback, *s_inner, *s_eager_start, *s_co_freevars;

/* The ring's tracer side (ring.h): is batch__flush attached, and the probe.
 * Called by flushers with the ring lock held (no GIL needed). */
int ring_sink_on(void) { return BATCH_ON(); }

void ring_sink_flush(struct asynctrace_rec *recs, uint64_t n, uint64_t dropped)
{
	/* Register operands only: tracers (libbpf) cannot read %rip-relative
	 * USDT arguments. */
	__asm__ volatile("" : "+r"(recs), "+r"(n), "+r"(dropped));
	ASYNCTRACE_BATCH_FLUSH(recs, n, dropped);
}

static PyObject *m_ring_stats(PyObject *mod, PyObject *arg)
{
	(void)mod;
	(void)arg;
	return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K}",
			     "timing", (unsigned long long)ring_counters.records[ASYNCTRACE_REC_TIMING], "code",
			     (unsigned long long)ring_counters.records[ASYNCTRACE_REC_CODE], "step_timed",
			     (unsigned long long)ring_counters.records[ASYNCTRACE_REC_STEP_TIMED], "sample",
			     (unsigned long long)ring_counters.records[ASYNCTRACE_REC_SAMPLE], "timing_full",
			     (unsigned long long)timing_full(), "create",
			     (unsigned long long)ring_counters.records[ASYNCTRACE_REC_CREATE], "step",
			     (unsigned long long)ring_counters.records[ASYNCTRACE_REC_STEP], "complete",
			     (unsigned long long)ring_counters.records[ASYNCTRACE_REC_COMPLETE], "edge_add",
			     (unsigned long long)ring_counters.records[ASYNCTRACE_REC_EDGE_ADD], "stack",
			     (unsigned long long)ring_counters.records[ASYNCTRACE_REC_STACK], "erased",
			     (unsigned long long)ring_counters.erased, "same_state", (unsigned long long)ring_counters.same_state,
			     "flushes", (unsigned long long)ring_counters.flushes, "self_flushes",
			     (unsigned long long)ring_counters.self_flushes, "edges_in_create",
			     (unsigned long long)ring_counters.edges_in_create, "dropped",
			     (unsigned long long)ring_dropped(), "unflushed",
			     (unsigned long long)ring_unflushed());
}

/* enable() after its own sample objects are gone: timing counts start anew
 * (a session restarts at the next hook), so they are the program's alone. */
static PyObject *m_timing_restart(PyObject *mod, PyObject *arg)
{
	(void)mod;
	(void)arg;
	timing_restart();
	Py_RETURN_NONE;
}

static PyObject *m_is_installed(PyObject *mod, PyObject *arg)
{
	(void)mod;
	(void)arg;
	return PyBool_FromLong(runtime.installed);
}
static int pending_start_watcher(void *arg)
{
	(void)arg;
	if (runtime.installed)
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
	if (runtime.installed && Py_AddPendingCall(pending_start_watcher, NULL) < 0)
		start_watcher();
	Py_RETURN_NONE;
}

/* os.register_at_fork(after_in_child=...): threads do not survive fork. */
static PyObject *m_after_fork_child(PyObject *mod, PyObject *arg)
{
	(void)mod;
	(void)arg;
	watcher_after_fork_child_begin();
	/* Records of the parent are not the child's events; no tracer is
	 * attached to the child (its semaphores count the parent's tracers). */
	ring_reset_after_fork();
	emit_after_fork_child(); /* loops of the parent stay out of replays until they run here */
	timing_after_fork_child();
	if (runtime.installed)
		watcher_after_fork_child_start();
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
	{ "wait_begin", m_wait_begin, METH_VARARGS, NULL },
	{ "replay_tasks", m_replay_tasks, METH_VARARGS, NULL },
	{ "unknown_loops", m_unknown_loops, METH_O, NULL },
	{ "edge_enabled", m_edge_enabled, METH_NOARGS, NULL },
	{ "loop_tid", m_loop_tid, METH_O, NULL },
	{ "loop_alive", m_loop_alive, METH_O, NULL },
	{ "task_refs", m_task_refs, METH_NOARGS, "3.14+: every pending task of every thread (None before)." },
	{ "running_tasks", m_running_tasks, METH_NOARGS, "[(loop, task)] for each loop in a step now." },
	{ "asyncio_offsets", m_asyncio_offsets, METH_NOARGS, "3.14+: verified _AsyncioDebug offsets (None: not used)." },
	{ "_note_step", m_note_step, METH_O, NULL },
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
	if (m && (PyModule_AddIntConstant(m, "ABI_VERSION", ASYNCTRACE_ABI_VERSION) < 0 ||
		  PyModule_AddIntConstant(m, "ASYNCIO_THREAD_STATE", version_features.asyncio_thread_state) < 0))
		Py_CLEAR(m);
	return m;
}
