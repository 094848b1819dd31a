// SPDX-License-Identifier: Apache-2.0
/*
 * Where asyncio keeps its tasks, read the way this version keeps them:
 * the current task of a loop (the parent of a new task, the replay's
 * running tasks) and every pending task of every loop in every thread (the
 * replay after a late attach).
 *
 *   3.10-3.13  _asyncio._current_tasks (dict loop -> task); the sets of all
 *              tasks are read by asynctrace/_replay.py itself.
 *   3.14+      the thread state holds the running loop and current task, and
 *              every task sits in an intrusive list (TaskObj.task_node) of
 *              the thread that created or eagerly started it, or of the
 *              interpreter once that thread has exited. _asyncio publishes
 *              the offsets (_AsyncioDebug, for debuggers, in its own ELF
 *              section: elfsec.c); they are read at
 *              install and verified on live objects (tasks_install), then
 *              threads are walked with the public PyInterpreterState_ThreadHead
 *              / PyThreadState_Next. If they cannot be verified, the
 *              _asyncio API answers instead: current_task(loop) and
 *              all_tasks(loop) over the loops seen creating tasks since
 *              install (known_loops), which misses loops that created no
 *              task since then.
 *
 * Free-threaded builds are not supported (asynctrace/__init__.py refuses
 * them), so holding the GIL is what keeps these lists still: no thread
 * links or unlinks a task, or removes a thread state, without it.
 *
 * Locking: every function needs the GIL. The walks run no Python code
 * between reading a list and taking references to its tasks.
 */
#include "runtime.h"

#include "elfsec.h"

struct asyncio_offsets aoffs;

/* Longest list walked: a corrupt list must not hang the process. */
#define WALK_MAX (1L << 24)

struct llist_node {
	struct llist_node *next, *prev;
};

static const struct asyncio_debug *debug;  /* _AsyncioDebug, or NULL */
static int step_seen = -1;                 /* discovery: the task was current in its step */
static PyObject *known_loops;              /* WeakSet: fallback without offsets */
static PyObject *api_current_task, *api_all_tasks;

static PyObject *word_at(const void *base, Py_ssize_t off) { return *(PyObject *const *)((const char *)base + off); }
static struct llist_node *node_at(void *base, Py_ssize_t off) { return (struct llist_node *)((char *)base + off); }

/* _AsyncioDebug: _asyncio puts it in a section of its own (not exported),
 * in the extension (lib-dynload) or the interpreter when built in; found
 * from the object that holds the task type's code. */
static const struct asyncio_debug *get_debug(PyTypeObject *task_type)
{
	static int looked;
	if (!looked && version_features.asyncio_thread_state && task_type && task_type->tp_init) {
		looked = 1;
		size_t size = 0;
		const void *d = elf_loaded_section((const void *)task_type->tp_init, ".AsyncioDebug", &size);
		debug = d && size >= sizeof(struct asyncio_debug) ? d : NULL;
	}
	return debug;
}

/* note_step(task): called by discovery's sample coroutine during its task's
 * step, which makes the task its thread's current task: the offset of the
 * current task is right if it holds the task now. */
PyObject *m_note_step(PyObject *mod, PyObject *task)
{
	(void)mod;
	const struct asyncio_debug *d = get_debug(Py_TYPE(task));
	if (d && d->thread.running_task + sizeof(PyObject *) <= d->thread.size)
		step_seen = word_at(PyThreadState_Get(), (Py_ssize_t)d->thread.running_task) == task;
	Py_RETURN_NONE;
}

/* Is the node of `task` in the list at `head` (bounded walk)? */
static int list_has(struct llist_node *head, struct llist_node *node)
{
	long n = 0;
	for (struct llist_node *p = head->next; p && p != head && n < WALK_MAX; p = p->next, n++)
		if (p == node)
			return 1;
	return 0;
}

/*
 * Reads _AsyncioDebug and keeps it only if it describes the live objects:
 * the task type's size, the coroutine and name offsets learnt independently
 * (learn_layout), this thread's running loop, the current task seen during
 * the sample's step (note_step), and the pending sample task in this
 * thread's list. Called by _install in discovery's thread, where a fake
 * loop is running and the sample task pending.
 */
static int verify_offsets(PyObject *sample_task)
{
	const struct asyncio_debug *d = get_debug(runtime.task_type);
	if (!d || !layout.ok || !sample_task || !is_task(sample_task))
		return 0;
	const uint64_t w = sizeof(PyObject *);
	if (d->task.size != (uint64_t)runtime.task_type->tp_basicsize || d->task.coro != (uint64_t)layout.coro * w ||
	    d->task.name != (uint64_t)layout.name * w || d->task.node + 2 * w > d->task.size ||
	    d->thread.running_loop + w > d->thread.size || d->thread.running_task + w > d->thread.size ||
	    d->thread.tasks_head + 2 * w > d->thread.size || d->interp.tasks_head + 2 * w > d->interp.size)
		return 0;
	if (step_seen != 1)
		return 0;
	PyThreadState *ts = PyThreadState_Get();
	PyObject *loop = PyObject_CallNoArgs(runtime.get_running_loop);
	int loop_ok = loop && loop != Py_None && word_at(ts, (Py_ssize_t)d->thread.running_loop) == loop;
	Py_XDECREF(loop);
	PyErr_Clear();
	if (!loop_ok)
		return 0;
	struct llist_node *head = node_at(ts, (Py_ssize_t)d->thread.tasks_head);
	if (!list_has(head, node_at(sample_task, (Py_ssize_t)d->task.node)))
		return 0;
	aoffs = (struct asyncio_offsets){ .ok = 1, .task_node = (Py_ssize_t)d->task.node,
					  .ts_loop = (Py_ssize_t)d->thread.running_loop,
					  .ts_task = (Py_ssize_t)d->thread.running_task,
					  .ts_head = (Py_ssize_t)d->thread.tasks_head,
					  .interp_head = (Py_ssize_t)d->interp.tasks_head };
	return 1;
}

/* _install: current_tasks is _asyncio._current_tasks (3.10-3.13) or None. */
int tasks_install(PyObject *current_tasks, PyObject *sample_task)
{
	if (!version_features.asyncio_thread_state) {
		if (!current_tasks || !PyDict_Check(current_tasks)) {
			PyErr_SetString(PyExc_RuntimeError, "asynctrace: _asyncio._current_tasks is not a dict");
			return -1;
		}
		runtime.current_tasks = Py_NewRef(current_tasks);
		return 0;
	}
	if (getenv("ASYNCTRACE_NO_ASYNCIO_OFFSETS") == NULL) /* tests: the fallback */
		verify_offsets(sample_task);
	PyObject *m = PyImport_ImportModule("_asyncio");
	api_current_task = m ? PyObject_GetAttrString(m, "current_task") : NULL;
	api_all_tasks = m ? PyObject_GetAttrString(m, "all_tasks") : NULL;
	Py_XDECREF(m);
	if (!api_current_task || !api_all_tasks)
		return -1;
	if (!aoffs.ok) {
		PyObject *wr = PyImport_ImportModule("weakref");
		known_loops = wr ? PyObject_CallMethod(wr, "WeakSet", NULL) : NULL;
		Py_XDECREF(wr);
		if (!known_loops)
			return -1;
	}
	return 0;
}

/* Without offsets (3.14+): remember the loop of a new task, once per change
 * on this thread. */
void note_known_loop(PyObject *loop)
{
	static __thread PyObject *last;
	if (!known_loops || !loop || loop == last || loop == Py_None)
		return;
	last = loop;
	exc_state_t ex;
	EXC_SAVE(ex);
	PyObject *r = PyObject_CallMethod(known_loops, "add", "O", loop);
	Py_XDECREF(r);
	PyErr_Clear();
	EXC_RESTORE(ex);
}

/* The known loops (fallback), a new list. */
static PyObject *known_loop_list(void)
{
	return known_loops ? PySequence_List(known_loops) : PyList_New(0);
}

/* asyncio's current task of the loop running on this thread (new ref), or NULL. */
PyObject *current_task_here(void)
{
	if (aoffs.ok)
		return Py_XNewRef(word_at(PyThreadState_Get(), aoffs.ts_task));
	PyObject *cur = NULL;
	if (version_features.asyncio_thread_state) {
		cur = api_current_task ? PyObject_CallNoArgs(api_current_task) : NULL;
	} else if (runtime.current_tasks) {
		PyObject *loop = PyObject_CallNoArgs(runtime.get_running_loop);
		if (loop && loop != Py_None)
			cur = Py_XNewRef(PyDict_GetItemWithError(runtime.current_tasks, loop));
		Py_XDECREF(loop);
	}
	if (cur == Py_None)
		Py_CLEAR(cur);
	PyErr_Clear();
	return cur;
}

/* The current task of `loop`, whichever thread runs it (new ref), or NULL. */
PyObject *current_task_of_loop(PyObject *loop)
{
	PyObject *cur = NULL;
	if (!loop)
		return NULL;
	if (aoffs.ok) {
		for (PyThreadState *ts = PyInterpreterState_ThreadHead(PyInterpreterState_Get()); ts;
		     ts = PyThreadState_Next(ts))
			if (word_at(ts, aoffs.ts_loop) == loop)
				return Py_XNewRef(word_at(ts, aoffs.ts_task));
		return NULL;
	}
	if (version_features.asyncio_thread_state)
		cur = api_current_task ? PyObject_CallOneArg(api_current_task, loop) : NULL;
	else if (runtime.current_tasks)
		cur = Py_XNewRef(PyDict_GetItemWithError(runtime.current_tasks, loop));
	if (cur == Py_None)
		Py_CLEAR(cur);
	PyErr_Clear();
	return cur;
}

/* Appends the live tasks of the list at `head` to `out`; -1 on error. A task
 * whose count is 0 is being deallocated (it unlinks itself next). */
static int add_list(PyObject *out, struct llist_node *head)
{
	long n = 0;
	for (struct llist_node *p = head->next; p && p != head; p = p->next) {
		if (++n > WALK_MAX)
			return 0;
		PyObject *t = (PyObject *)((char *)p - aoffs.task_node);
		if (Py_REFCNT(t) > 0 && PyList_Append(out, t) < 0)
			return -1;
	}
	return 0;
}

/* Appends all_tasks(loop) of every known loop (fallback). */
static int add_known(PyObject *out)
{
	PyObject *loops = known_loop_list();
	for (Py_ssize_t i = 0; loops && i < PyList_GET_SIZE(loops); i++) {
		PyObject *set = PyObject_CallOneArg(api_all_tasks, PyList_GET_ITEM(loops, i));
		PyObject *lst = set ? PySequence_List(set) : NULL;
		for (Py_ssize_t j = 0; lst && j < PyList_GET_SIZE(lst); j++)
			if (PyList_Append(out, PyList_GET_ITEM(lst, j)) < 0)
				break;
		Py_XDECREF(lst);
		Py_XDECREF(set);
		PyErr_Clear();
	}
	if (!loops)
		return -1;
	Py_DECREF(loops);
	return 0;
}

/*
 * task_refs() -> list of every pending task of every loop in every thread
 * (3.14+; each once; done ones may follow), or None before 3.14, where
 * asynctrace/_replay.py reads _asyncio's sets itself.
 */
PyObject *m_task_refs(PyObject *mod, PyObject *arg)
{
	(void)mod;
	(void)arg;
	if (!version_features.asyncio_thread_state)
		Py_RETURN_NONE;
	PyObject *out = PyList_New(0);
	if (!out)
		return NULL;
	int err;
	if (aoffs.ok) {
		PyInterpreterState *interp = PyInterpreterState_Get();
		err = add_list(out, node_at(interp, aoffs.interp_head));
		for (PyThreadState *ts = PyInterpreterState_ThreadHead(interp); ts && !err; ts = PyThreadState_Next(ts))
			err = add_list(out, node_at(ts, aoffs.ts_head));
	} else {
		err = add_known(out);
	}
	if (err < 0)
		Py_CLEAR(out);
	return out;
}

static int append_pair(PyObject *out, PyObject *loop, PyObject *task)
{
	PyObject *pair = PyTuple_Pack(2, loop, task);
	int err = pair ? PyList_Append(out, pair) : -1;
	Py_XDECREF(pair);
	return err;
}

/* running_tasks() -> [(loop, task)]: each loop with a step running now, and its task. */
PyObject *m_running_tasks(PyObject *mod, PyObject *arg)
{
	(void)mod;
	(void)arg;
	PyObject *out = PyList_New(0);
	int err = 0;
	if (!out)
		return NULL;
	if (aoffs.ok) {
		for (PyThreadState *ts = PyInterpreterState_ThreadHead(PyInterpreterState_Get()); ts && !err;
		     ts = PyThreadState_Next(ts)) {
			PyObject *loop = word_at(ts, aoffs.ts_loop), *task = word_at(ts, aoffs.ts_task);
			if (loop && task)
				err = append_pair(out, loop, task);
		}
	} else if (version_features.asyncio_thread_state) {
		PyObject *loops = known_loop_list();
		for (Py_ssize_t i = 0; loops && !err && i < PyList_GET_SIZE(loops); i++) {
			PyObject *loop = PyList_GET_ITEM(loops, i);
			PyObject *t = current_task_of_loop(loop);
			if (t)
				err = append_pair(out, loop, t);
			Py_XDECREF(t);
		}
		err = loops ? err : -1;
		Py_XDECREF(loops);
	} else if (runtime.current_tasks) {
		PyObject *items = PyDict_Items(runtime.current_tasks);
		for (Py_ssize_t i = 0; items && !err && i < PyList_GET_SIZE(items); i++)
			err = PyList_Append(out, PyList_GET_ITEM(items, i));
		err = items ? err : -1;
		Py_XDECREF(items);
	}
	if (err < 0)
		Py_CLEAR(out);
	return out;
}

/* asyncio_offsets() -> the verified offsets as a dict, or None (tests, docs). */
PyObject *m_asyncio_offsets(PyObject *mod, PyObject *arg)
{
	(void)mod;
	(void)arg;
	if (!aoffs.ok)
		Py_RETURN_NONE;
	return Py_BuildValue("{s:n,s:n,s:n,s:n,s:n}", "task_node", aoffs.task_node, "running_loop", aoffs.ts_loop,
			     "running_task", aoffs.ts_task, "thread_tasks_head", aoffs.ts_head,
			     "interp_tasks_head", aoffs.interp_head);
}
