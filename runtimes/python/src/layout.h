// SPDX-License-Identifier: Apache-2.0
/*
 * CPython version differences and the private object layouts the runtime
 * reads, in one place. Everything that depends on PY_VERSION_HEX is here
 * (as macros and one table, version_features) or in layout.c; the other
 * units use these names only.
 *
 * Locking: layout.c's functions read task objects and need the GIL.
 * learn_layout() runs once, in _install(), before any hook is in place;
 * afterwards `layout` is read-only.
 */
#ifndef ASYNCTRACE_RUNTIME_LAYOUT_H
#define ASYNCTRACE_RUNTIME_LAYOUT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>

#if PY_VERSION_HEX < 0x030A0000
#error "asynctrace needs CPython >= 3.10"
#endif

/*
 * What this interpreter's version has, as data (one row for the version
 * compiled against). Code that differs by version branches on these where
 * it can, and on the macros below where the C API itself differs.
 */
struct version_features {
	int raised_exception_api;  /* 3.12+: PyErr_GetRaisedException */
	int eager_tasks;           /* 3.12+: eager tasks run their first step inside Task.__init__ */
	int code_qualname;         /* 3.11+: code objects have co_qualname */
	int gen_get_code;          /* 3.12+: PyGen_GetCode (gi_code is gone) */
	int weakref_get_ref;       /* 3.13+: PyWeakref_GetRef */
	int public_is_finalizing;  /* 3.13+: Py_IsFinalizing */
	/* 3.14+: _asyncio keeps the running loop and current task in the thread
	 * state and every task in per-thread linked lists (tasks.c); before, in
	 * the _current_tasks dict and the _scheduled_tasks/_eager_tasks sets.
	 * Stepping a task needs its loop to be the thread's running loop. */
	int asyncio_thread_state;
};
#define VERSION_FEATURES                                                                   \
	{                                                                                  \
		.raised_exception_api = PY_VERSION_HEX >= 0x030C0000,                      \
		.eager_tasks = PY_VERSION_HEX >= 0x030C0000,                               \
		.code_qualname = PY_VERSION_HEX >= 0x030B0000,                             \
		.gen_get_code = PY_VERSION_HEX >= 0x030C0000,                              \
		.weakref_get_ref = PY_VERSION_HEX >= 0x030D0000,                           \
		.public_is_finalizing = PY_VERSION_HEX >= 0x030D0000,                      \
		.asyncio_thread_state = PY_VERSION_HEX >= 0x030E0000,                      \
	}
extern const struct version_features version_features;

/* The C API differences themselves (one #if each, here only). */
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

/*
 * Field positions inside _asyncio's FutureObj / TaskObj, found at install on
 * live sample objects (asynctrace/_discover.py layout_samples) and verified
 * there; the hot path reads them directly instead of calling Python getters.
 * Indices count PyObject * words from the object start.
 */
struct task_layout {
	int ok;
	int callbacks_ok;                        /* fut_callbacks is word cb0 + 2 */
	Py_ssize_t coro, waiter, name, exc, cb0; /* word indices */
	Py_ssize_t state_off;                    /* byte offset of the fut_state int */
	int st_pending, st_cancelled, st_finished;
};
extern struct task_layout layout;

static inline PyObject *field(PyObject *o, Py_ssize_t idx) { return ((PyObject **)o)[idx]; }

/*
 * 3.14+: where _asyncio keeps its tasks, as byte offsets from the offsets it
 * publishes for debuggers (the _AsyncioDebug symbol, struct asyncio_debug
 * below), checked at install on live objects (tasks.c). ok == 0: not read
 * or not verified; tasks.c then asks _asyncio through its Python API.
 */
struct asyncio_offsets {
	int ok;
	Py_ssize_t task_node;   /* struct llist_node {next, prev} in TaskObj */
	Py_ssize_t ts_loop;     /* thread state: asyncio_running_loop */
	Py_ssize_t ts_task;     /* thread state: asyncio_running_task */
	Py_ssize_t ts_head;     /* thread state: head of its tasks' list */
	Py_ssize_t interp_head; /* interpreter: tasks of threads that exited */
};
extern struct asyncio_offsets aoffs;

/* The layout of _AsyncioDebug (CPython 3.14 Modules/_asynciomodule.c,
 * Py_AsyncioModuleDebugOffsets): three groups of 64-bit sizes and offsets. */
struct asyncio_debug {
	struct { uint64_t size, name, awaited_by, is_task, awaited_by_is_set, coro, node; } task;
	struct { uint64_t size, tasks_head; } interp;
	struct { uint64_t size, running_loop, running_task, tasks_head; } thread;
};

#endif
