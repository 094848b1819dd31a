// SPDX-License-Identifier: Apache-2.0
/*
 * Hooks: the wrappers swapped into _asyncio's C types and what they do
 * around the original functions, and their installation (_install, slot
 * patching of the type, its wrapper descriptors and existing subclasses).
 *
 *   Task.tp_init (+ the __init__ slot wrapper used by super().__init__(),
 *                 + existing subclasses that copied the slot)   -> task__create
 *   TaskStepMethWrapper.tp_call (first step, sleep(0), cancel)  -> resume / await / complete
 *   TaskWakeupDef.ml_meth (done-callback of an awaited future)  -> resume / await / complete
 *   Task.set_name                                               -> task__create (rename)
 *   Task.tp_finalize (+ __del__ slot wrapper, subclasses)       -> complete(DESTROYED)
 *
 * Locking: CPython calls every hook with the GIL held; they stay in it.
 * The step hooks are the hot path (every asyncio task step): with no
 * tracer they cost one semaphore test; traced, no allocation and no lock
 * beyond what emit.c/timing.c document. _install runs once, with the GIL,
 * from asynctrace.enable().
 */
#include "runtime.h"


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

/*
 * A step that began with no tracer attached ran unhooked. If a tracer
 * attached while it ran, the replay may have told it the task is running
 * (it was its loop's current task): its end must still be told, or the task
 * stays `running` for that tracer after the step (or the task) ended. One
 * more semaphore test per untraced step.
 */
static PyObject *untraced_step_end(PyObject *task, PyObject *r)
{
	if (__builtin_expect(ANY_STEP_PROBE_ON(), 0)) {
		exc_state_t ex;
		EXC_SAVE(ex);
		emit_post_step(task);
		EXC_RESTORE(ex);
	}
	return r;
}

/* TaskStepMethWrapper.__call__: a step scheduled with loop.call_soon. */
static PyObject *hook_step_call(PyObject *self, PyObject *args, PyObject *kw)
{
	if (__builtin_expect(fork_gen != 0, 0))
		note_loop_alive(task_loop_borrowed(((StepMethWrapper *)self)->sw_task));
	if (!ANY_STEP_PROBE_ON()) {
		/* The caller holds self, and self its task, for the whole call. */
		PyObject *task = ((StepMethWrapper *)self)->sw_task;
		return untraced_step_end(task, runtime.orig_step_call(self, args, kw));
	}
	PyObject *task = Py_NewRef(((StepMethWrapper *)self)->sw_task);
	uint64_t prev = tls_current;
	struct step_clock sc;
	before_step(task);
	timing_begin(task, &sc);
	tls_current = (uint64_t)(uintptr_t)task;
	PyObject *r = runtime.orig_step_call(self, args, kw);
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
		return untraced_step_end(task, runtime.orig_wakeup(task, fut));
	Py_INCREF(task);
	uint64_t prev = tls_current;
	struct step_clock sc;
	before_step(task);
	timing_wakeup(task, fut);
	timing_begin(task, &sc);
	tls_current = (uint64_t)(uintptr_t)task;
	PyObject *r = runtime.orig_wakeup(task, fut);
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
	PyObject *r = runtime.orig_set_name(task, name);
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
	if (version_features.eager_tasks && kw && PyDict_Check(kw)) {
		PyObject *e = PyDict_GetItemWithError(kw, s_eager_start);
		eager = e && PyObject_IsTrue(e) == 1;
		PyErr_Clear();
	}
	int slot = -1;
	if (eager && tls_npending < MAX_PENDING) {
		slot = tls_npending++;
		PyObject *coro = args && PyTuple_Check(args) && PyTuple_GET_SIZE(args) ? PyTuple_GET_ITEM(args, 0) : NULL;
		tls_pending[slot] = (struct pending){ .task = self, .parent = parent, .coro = coro };
	}
	int rc = runtime.orig_init(self, args, kw);
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
	if (!(ASYNCTRACE_TASK_CREATE_ENABLED() | ANY_STEP_PROBE_ON())) {
		r = runtime.orig_init(self, args, kw);
		/* An eager first step (3.12+) is a step begun untraced too
		 * (untraced_step_end): a replay during it saw it running. */
		if (r == 0 && __builtin_expect(ANY_STEP_PROBE_ON(), 0) && first_step_ran(self))
			(void)untraced_step_end(self, NULL);
	} else {
		r = traced_init(self, args, kw);
	}
	if (__builtin_expect(fork_gen != 0, 0) && r == 0)
		note_loop_alive(task_loop_borrowed(self));
	if (r == 0)
		note_known_loop(task_loop_borrowed(self)); /* 3.14 without offsets only */
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
	runtime.orig_finalize(self);
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
	if (t->tp_init == runtime.orig_init)
		t->tp_init = hook_init;
	if (t->tp_finalize == runtime.orig_finalize)
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

/*
 * _install(task_type, step_wrapper, task, wakeup_cb, gathering_future_type,
 *          current_tasks, get_running_loop, asend, athrow, samples)
 * current_tasks: _asyncio._current_tasks, None on 3.14+ (tasks.c); samples:
 * _discover.layout_samples() (its task pending, its loop this thread's
 * running loop on 3.14+).
 * step_wrapper is a live TaskStepMethWrapper of `task`; wakeup_cb a live bound
 * task_wakeup of `task`; asend/athrow live async generator awaitables (or None).
 */
PyObject *m_install(PyObject *mod, PyObject *args)
{
	(void)mod;
	PyObject *task_type, *step, *task, *wakeup, *gft, *cur, *grl, *asend, *athrow, *samples = NULL;
	if (!PyArg_ParseTuple(args, "O!OOOOOOOO|O", &PyType_Type, &task_type, &step, &task, &wakeup,
			      &gft, &cur, &grl, &asend, &athrow, &samples))
		return NULL;
	if (runtime.installed)
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
	runtime.loop_field_ok = loop_attr && loop_attr != Py_None && ((PyObject **)task)[2] == loop_attr;
	Py_XDECREF(loop_attr);
	PyErr_Clear();
	runtime.task_type = (PyTypeObject *)Py_NewRef(task_type);
	learn_layout(samples);
	runtime.step_type = (PyTypeObject *)Py_NewRef(Py_TYPE(step));
	runtime.wakeup_def = ((PyCFunctionObject *)wakeup)->m_ml;
	runtime.gathering_future_type = gft == Py_None ? NULL : Py_NewRef(gft);
	runtime.get_running_loop = Py_NewRef(grl);
	if (tasks_install(cur == Py_None ? NULL : cur,
			  samples && PyTuple_Check(samples) && PyTuple_GET_SIZE(samples) ? PyTuple_GET_ITEM(samples, 0) : NULL) < 0)
		return NULL;
	runtime.asend_type = asend_t ? (PyTypeObject *)Py_NewRef(asend_t) : NULL;
	runtime.athrow_type = athrow_t ? (PyTypeObject *)Py_NewRef(athrow_t) : NULL;
	runtime.init_descr = PyDict_GetItemString(tt->tp_dict, "__init__");
	runtime.del_descr = PyDict_GetItemString(tt->tp_dict, "__del__");
	Py_XINCREF(runtime.init_descr);
	Py_XINCREF(runtime.del_descr);

	runtime.orig_init = tt->tp_init;
	runtime.orig_finalize = tt->tp_finalize;
	runtime.orig_step_call = runtime.step_type->tp_call;
	runtime.orig_wakeup = runtime.wakeup_def->ml_meth;
	PyObject *set_name = PyDict_GetItemString(tt->tp_dict, "set_name");
	if (set_name && Py_IS_TYPE(set_name, &PyMethodDescr_Type) &&
	    (((PyMethodDescrObject *)set_name)->d_method->ml_flags &
	     (METH_O | METH_VARARGS | METH_FASTCALL | METH_KEYWORDS | METH_NOARGS)) == METH_O) {
		runtime.set_name_def = ((PyMethodDescrObject *)set_name)->d_method;
		runtime.orig_set_name = runtime.set_name_def->ml_meth;
	}

	/*
	 * Swap the pointers. TaskStepMethWrapper has no vectorcall, so calls go through
	 * tp_call read at call time; PyCFunction vectorcall reads m_ml->ml_meth at call
	 * time, so bound task_wakeup callbacks that already exist are covered too.
	 */
	runtime.step_type->tp_call = hook_step_call;
	runtime.wakeup_def->ml_meth = (PyCFunction)(void (*)(void))hook_wakeup;
	if (runtime.set_name_def)
		runtime.set_name_def->ml_meth = (PyCFunction)(void (*)(void))hook_set_name;
	patch_descr(runtime.init_descr, (void *)runtime.orig_init, (void *)hook_init);
	patch_descr(runtime.del_descr, (void *)runtime.orig_finalize, (void *)hook_finalize);
	patch_subclasses(tt, 0);
	runtime.installed = 1;
	start_watcher();
	Py_RETURN_TRUE;
}
