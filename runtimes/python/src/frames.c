// SPDX-License-Identifier: Apache-2.0
/*
 * Code objects and frames: the code registry of the tracing session
 * (code__register, one strong reference a code so that ids stay valid),
 * the coroutine frame walk of a suspended task (collect_frames) and the
 * stack id of a frame list (stack_id: the one FNV-1a stack hash).
 *
 * Locking: every function needs the GIL (Python objects, the registry).
 * The frame buffers are the callers' (no hidden per-thread buffer).
 */
#include "runtime.h"
#include "asynctrace/stack_hash.h"

/* ---- small helpers (all called with the GIL, never leave an error set) ----- */

const char *utf8(PyObject *s, Py_ssize_t *len)
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
static struct ptr_table codes = { .esize = sizeof(uintptr_t), .min_cap = 1024 }; /* keys: owned refs */

void codes_clear(void)
{
	for (size_t i = 0; i < codes.cap; i++) {
		PyObject *o = (PyObject *)ptr_table_key_at(&codes, i);
		Py_XDECREF(o);
	}
	ptr_table_clear(&codes);
}

/* 1 if newly added, 0 if present, -1 on memory error. */
static int codes_add(PyObject *code)
{
	int added;
	if (!ptr_table_insert(&codes, (uintptr_t)code, &added))
		return -1;
	if (added)
		Py_INCREF(code);
	return added;
}

/*
 * Register a code object for this tracing session (once); `codes` keeps it
 * alive so the id stays valid. On 3.10 code
 * objects have no co_qualname: the coroutine's __qualname__ is used when known.
 */
uint64_t register_code(PyObject *code, PyObject *owner)
{
	if (!code || !PyCode_Check(code))
		return 0;
	if (!ASYNCTRACE_CODE_REGISTER_ENABLED())
		return (uint64_t)(uintptr_t)code;
	unsigned sem = ASYNCTRACE_REPLAY_SEMAPHORE();
	if (sem != runtime.session_sem) {
		/* The set of attached tracers changed: a new session re-registers. */
		codes_clear();
		runtime.session_sem = sem;
	}
	if (codes_add(code) <= 0)
		return (uint64_t)(uintptr_t)code; /* known (or no memory: stays unnamed) */
	PyCodeObject *co = (PyCodeObject *)code;
	PyObject *qn = code_qualname(co, owner);
	Py_ssize_t qlen, flen;
	const char *q = utf8(qn, &qlen);
	const char *f = utf8(co->co_filename, &flen);
	ASYNCTRACE_CODE_REGISTER(code, q, qlen, f, flen, co->co_firstlineno);
	Py_DECREF(qn);
	return (uint64_t)(uintptr_t)code;
}
/*
 * Fill `frames` (ASYNCTRACE_MAX_FRAMES) with the coroutine chain of `coro`,
 * innermost first; returns how many.
 * Follows cr_await / gi_yieldfrom / ag_await, and steps through async
 * generator asend/athrow awaitables to their generator.
 */
size_t collect_frames(PyObject *coro, struct asynctrace_frame *frames)
{
	struct { PyCodeObject *code; PyObject *owner; int line; } chain[CHAIN_MAX];
	size_t n = 0;
	PyObject *o = coro ? Py_NewRef(coro) : NULL;
	for (int guard = 0; o && n < CHAIN_MAX && guard < 2 * CHAIN_MAX; guard++) {
		PyObject *fa, *aa;
		if ((runtime.asend_type && Py_IS_TYPE(o, runtime.asend_type)) ||
		    (runtime.athrow_type && Py_IS_TYPE(o, runtime.athrow_type))) {
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
		frames[i].code_id = register_code((PyObject *)chain[src].code, chain[src].owner);
		frames[i].line = chain[src].line > 0 ? (uint32_t)chain[src].line : 0;
		frames[i].flags = 0;
	}
	if (n > keep)
		frames[keep - 1].flags |= ASYNCTRACE_FRAME_TRUNCATED;
	for (size_t i = 0; i < n; i++) {
		Py_DECREF(chain[i].code);
		Py_DECREF(chain[i].owner);
	}
	return keep;
}
/* The stack id of a STACK record: include/asynctrace/stack_hash.h, as BPF. */
uint64_t stack_id(const struct asynctrace_frame *frames, size_t nframes)
{
	return asynctrace_stack_hash(frames, (uint32_t)nframes);
}
