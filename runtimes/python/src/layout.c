// SPDX-License-Identifier: Apache-2.0
/*
 * CPython version differences and private layouts (with layout.h): the
 * task field positions learnt and checked at install (learn_layout), and the
 * accessors every other unit uses to read a task (state, outcome, waiter,
 * coroutine, name, loop) with the fast path when the layout is known and
 * the Python getters otherwise. The only unit besides layout.h with
 * PY_VERSION_HEX conditionals.
 *
 * Locking: every function needs the GIL (they read Python objects; the
 * getter fallbacks run Python code). learn_layout is called by _install
 * only, before the hooks are installed; `layout` is read-only afterwards.
 */
#include "runtime.h"

struct task_layout layout;
const struct version_features version_features = VERSION_FEATURES;


/* Frame/await attribute names of a coroutine-like object, or NULL. */
int coro_attrs(PyObject *o, PyObject **frame_attr, PyObject **await_attr)
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

PyObject *get_coro(PyObject *task)
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

int is_task(PyObject *o) { return PyObject_TypeCheck(o, runtime.task_type); }

int task_is_done(PyObject *task)
{
	if (layout.ok)
		return *(int *)((char *)task + layout.state_off) != layout.st_pending;
	PyObject *st = PyObject_GetAttr(task, s_state);
	int done = 0;
	if (st && PyUnicode_Check(st))
		done = PyUnicode_CompareWithASCIIString(st, "PENDING") != 0;
	Py_XDECREF(st);
	PyErr_Clear();
	return done;
}

/* Outcome of a done task, read without marking its exception as retrieved. */
int task_outcome(PyObject *task)
{
	if (layout.ok) {
		if (*(int *)((char *)task + layout.state_off) == layout.st_cancelled)
			return ASYNCTRACE_OUTCOME_CANCELLED;
		return field(task, layout.exc) ? ASYNCTRACE_OUTCOME_EXCEPTION : ASYNCTRACE_OUTCOME_RESULT;
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
PyObject *task_waiter(PyObject *task)
{
	if (layout.ok) {
		PyObject *w = field(task, layout.waiter);
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
PyObject *task_coro(PyObject *task)
{
	if (layout.ok)
		return Py_XNewRef(field(task, layout.coro));
	return get_coro(task);
}

/* Code object of a coroutine-like object (new ref) or NULL, without getters
 * for the native coroutine and generator types. */
PyObject *coro_code_fast(PyObject *coro)
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


/* A task's name as UTF-8, without calling Task.get_name() when the layout is
 * known: 3.12+ keep the default name as the counter (a PyLong) until someone
 * asks, so "Task-<n>" is formatted here exactly as get_name() would. */
const char *task_name(PyObject *task, Py_ssize_t *len, struct name_buf *nb)
{
	nb->owned = NULL;
	if (layout.ok) {
		PyObject *n = field(task, layout.name);
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

/* The task's loop: FutureObj's first field on 3.10-3.13 (checked at install). */
PyObject *task_loop_borrowed(PyObject *task)
{
	return runtime.loop_field_ok ? ((PyObject **)task)[2] : NULL;
}

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
 * Learns the field positions of `layout` from live sample objects (see
 * _discover.layout_samples) and checks every one of them; on any doubt layout.ok
 * stays 0 and the hooks use the Python getters (slower, same events).
 */
void learn_layout(PyObject *samples)
{
	PyObject *task, *wfut, *coro, *name, *fdone, *fcanc, *fexc, *exc, *fcb, *cb, *shield_code, *cb2 = NULL;
	Py_ssize_t inner;
	memset(&layout, 0, sizeof layout);
	runtime.shield_inner = -1;
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
	layout.coro = ci;
	layout.waiter = ci - 1;
	layout.name = ci + 1;
	layout.exc = ei;
	layout.cb0 = bi;
	layout.state_off = soff;
	layout.st_pending = int_at(task, soff);
	layout.st_finished = int_at(fdone, soff);
	layout.st_cancelled = int_at(fcanc, soff);
	layout.ok = 1;
	/* fut_callbacks (after loop, callback0, context0): a list of
	 * (callback, context) once a future has a second callback. */
	PyObject *lst = (bi + 2) * (Py_ssize_t)sizeof(PyObject *) < fsize ? field(fcb, bi + 2) : NULL;
	layout.callbacks_ok = cb2 && lst && PyList_Check(lst) && PyList_GET_SIZE(lst) == 1 &&
			 PyTuple_Check(PyList_GET_ITEM(lst, 0)) && PyTuple_GET_SIZE(PyList_GET_ITEM(lst, 0)) >= 1 &&
			 PyTuple_GET_ITEM(PyList_GET_ITEM(lst, 0), 0) == cb2;
	if (PyCode_Check(shield_code) && inner >= 0) {
		runtime.shield_code = Py_NewRef(shield_code);
		runtime.shield_inner = inner;
	}
}

PyObject *m_layout(PyObject *mod, PyObject *arg)
{
	(void)mod;
	(void)arg;
	if (!layout.ok)
		Py_RETURN_NONE;
	return Py_BuildValue("{s:n,s:n,s:n,s:n,s:n,s:n,s:i,s:i,s:i,s:O}", "coro", layout.coro, "waiter", layout.waiter,
			     "name", layout.name, "exception", layout.exc, "callback0", layout.cb0, "state_offset",
			     layout.state_off, "pending", layout.st_pending, "cancelled", layout.st_cancelled, "finished",
			     layout.st_finished, "shield", runtime.shield_code ? Py_True : Py_False);
}

/* The qualified name of a code object (new ref): co_qualname on 3.11+; on
 * 3.10 the owner's (coroutine's) __qualname__ when known, else co_name. */
PyObject *code_qualname(PyCodeObject *co, PyObject *owner)
{
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
	return qn;
}

/* `o` itself (new ref), or the referent of a weak reference (NULL if dead). */
PyObject *weak_target(PyObject *o)
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
