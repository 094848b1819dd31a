// SPDX-License-Identifier: Apache-2.0
/*
 * Internal declarations shared by the units of asynctrace._asynctrace.
 *
 * Units (each file's header comment has its locking rules):
 *   module.c  module init, method table, semaphores, fork handling, ring sink
 *   hooks.c   the tp_init/step/wakeup/set_name/finalize wrappers, slot patching, _install
 *   layout.c  (+ layout.h) CPython version differences, task field access
 *   tasks.c   where asyncio keeps its tasks: current task of a loop, all tasks
 *   frames.c  code registry, coroutine frame walks, stack ids
 *   emit.c    emitters (probes and ring records), eager-task pending list, loop threads
 *   timing.c  step timing, per-task/coroutine stats, step slots and sampling
 *   replay.c  the replay's emitters (asynctrace/_replay.py) and module queries
 *   watcher.c the watcher thread (flushes, samples, triggers replays)
 *   ring.c, table.c, dedupe.c, elfsec.c: plain C (no Python.h), unit-tested.
 *
 * General rule: every function declared here needs the GIL unless its
 * comment says otherwise; the ring lock is taken only inside ring.c.
 */
#ifndef ASYNCTRACE_RUNTIME_H
#define ASYNCTRACE_RUNTIME_H

#include "layout.h"

#include <stdatomic.h>
#include <stdint.h>

#include "asynctrace/probes.h"
#include "dedupe.h"
#include "ring.h"
#include "table.h"

#define ANY_STEP_PROBE_ON() \
	(ASYNCTRACE_TASK_RESUME_ENABLED() | ASYNCTRACE_TASK_AWAIT_ENABLED() | \
	 ASYNCTRACE_TASK_COMPLETE_ENABLED() | ASYNCTRACE_BATCH_FLUSH_ENABLED())
#define BATCH_ON() ASYNCTRACE_BATCH_FLUSH_ENABLED()
#define TIMING_ON() (BATCH_ON() && ASYNCTRACE_TIMING_ON())
#define STEPS_ON() (BATCH_ON() && ASYNCTRACE_STEPS_ON())

/* Longest coroutine chain / Python stack walked. */
#define CHAIN_MAX 256

/* What _install() found and replaced (written once there, with the GIL),
 * and the replay session state (GIL). */
struct runtime_state {
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
	PyObject *current_tasks;         /* _asyncio._current_tasks (dict loop -> task), 3.10-3.13 */
	PyObject *get_running_loop;      /* _asyncio._get_running_loop */
	PyTypeObject *asend_type, *athrow_type;

	unsigned session_sem;     /* replay semaphore value the code set belongs to */
	uint64_t replay_gen;
	int in_replay;            /* the replay runs: await states carry their frames */
	PyObject *shield_code;    /* code of asyncio.shield's _outer_done_callback */
	Py_ssize_t shield_inner;  /* index of `inner` in its closure, -1 if unknown */
};
extern struct runtime_state runtime;

/* Interned attribute names (module.c creates them at module init). */
extern PyObject *s_state, *s_fut_waiter, *s_get_coro, *s_get_name, *s_loop, *s_exception,
	*s_callbacks, *s_children, *s_cr_frame, *s_gi_frame, *s_ag_frame, *s_cr_await,
	*s_gi_yieldfrom, *s_ag_await, *s_qualname, *s_done, *s_cr_suspended, *s_gi_suspended,
	*s_outer_done_callback, *s_inner, *s_eager_start, *s_co_freevars;

/* A task's name as UTF-8 (layout.c task_name). */
struct name_buf {
	char num[32];
	PyObject *owned;
};

/* What the hooks keep across a step (timing.c). */
struct step_slot;
struct step_clock {
	uint64_t start, sched;
	struct step_slot *slot; /* NULL: not sampled (nested step, or no slot) */
	int nested;             /* inside another step of this thread: not loop busy time */
	/* Where the task resumed: the stack tracers have (start_stack), or the
	 * frames it was suspended at when the step began (nstart of them, with
	 * what it awaited), sent only if the step turns out slow. */
	uint64_t start_stack;
	uintptr_t start_awaited;
	int start_kind;
	uint32_t nstart;
	struct asynctrace_frame start_frames[ASYNCTRACE_MAX_FRAMES];
	size_t idx;             /* the task's entry in the task stats table, valid while its gen == gen */
	uint64_t gen;
};

/* The task whose hooked step runs on this thread, or 0 (emit.c). */
extern __thread uint64_t tls_current;
/* Eager tasks whose tp_init runs on this thread (emit.c). */
#define MAX_PENDING 16
struct pending {
	PyObject *task;
	uint64_t parent;
	PyObject *coro; /* borrowed from tp_init's arguments */
	int flushed;
};
extern __thread struct pending tls_pending[MAX_PENDING];
extern __thread int tls_npending;
/* Forks in this process's ancestry (emit.c); 0 costs the hooks one branch. */
extern unsigned fork_gen;

/* ---- functions shared between units (GIL unless said otherwise) ---- */

/* layout.c */
int coro_attrs(PyObject *o, PyObject **frame_attr, PyObject **await_attr);
PyObject *get_coro(PyObject *task);
int is_task(PyObject *o);
int task_is_done(PyObject *task);
int task_outcome(PyObject *task);
PyObject *task_waiter(PyObject *task);
PyObject *task_coro(PyObject *task);
PyObject *coro_code_fast(PyObject *coro);
const char *task_name(PyObject *task, Py_ssize_t *len, struct name_buf *nb);
PyObject *task_loop_borrowed(PyObject *task);
void learn_layout(PyObject *samples);
PyObject *m_layout(PyObject *mod, PyObject *arg);
PyObject *code_qualname(PyCodeObject *co, PyObject *owner);
PyObject *weak_target(PyObject *o);

/* tasks.c */
int tasks_install(PyObject *current_tasks, PyObject *sample_task);
PyObject *current_task_here(void);
PyObject *current_task_of_loop(PyObject *loop);
void note_known_loop(PyObject *loop);
PyObject *m_note_step(PyObject *mod, PyObject *task);
PyObject *m_task_refs(PyObject *mod, PyObject *arg);
PyObject *m_running_tasks(PyObject *mod, PyObject *arg);
PyObject *m_asyncio_offsets(PyObject *mod, PyObject *arg);

/* frames.c */
const char *utf8(PyObject *s, Py_ssize_t *len);
uint64_t register_code(PyObject *code, PyObject *owner);
void codes_clear(void);
size_t collect_frames(PyObject *coro, struct asynctrace_frame *frames);
uint64_t stack_id(const struct asynctrace_frame *frames, size_t nframes);

/* emit.c */
uint32_t native_tid(void);
void learn_loop_tid(PyObject *loop);
uint32_t lookup_loop_tid(uintptr_t key);
void note_loop_alive(PyObject *loop);
int loop_alive(PyObject *loop);
uint64_t running_parent(void);
void emit_create_raw(PyObject *task, uint64_t parent, uint64_t tid, PyObject *coro, int first);
void emit_resume(PyObject *task);
void flush_pending(void);
int edges_on(void);
void emit_edge(PyObject *child, PyObject *awaiter, int kind);
void emit_edge_remove(PyObject *child, PyObject *awaiter);
int await_kind_of(PyObject *w);
void emit_complete(PyObject *task, int outcome);
void emit_post_step(PyObject *task);
void emit_after_fork_child(void);
void rec_stack(PyObject *task, PyObject *awaited, int kind, const struct asynctrace_frame *frames,
	       size_t nframes);

/* timing.c */
uint64_t now_ns(void);
void timing_begin(PyObject *task, struct step_clock *sc);
void timing_stack_sent(PyObject *task, uint64_t id);
void timing_forget_stacks(void);
void timing_end(PyObject *task, struct step_clock *sc);
void timing_created(PyObject *task);
void timing_completed(PyObject *task);
void timing_note_done(PyObject *fut);
void timing_wakeup(PyObject *task, PyObject *fut);
void timing_watch(long long poll_ns);
void timing_after_fork_child(void);
void timing_restart(void);
uint64_t timing_full(void);

/* hooks.c */
PyObject *m_install(PyObject *mod, PyObject *args);

/* replay.c */
PyObject *m_replay_begin(PyObject *mod, PyObject *args);
PyObject *m_replay_end(PyObject *mod, PyObject *args);
PyObject *m_emit_create(PyObject *mod, PyObject *args);
PyObject *m_emit_edge(PyObject *mod, PyObject *args);
PyObject *m_emit_state(PyObject *mod, PyObject *task);
PyObject *m_emit_running(PyObject *mod, PyObject *args);
PyObject *m_replay_tasks(PyObject *mod, PyObject *args);
PyObject *m_unknown_loops(PyObject *mod, PyObject *tasks);
PyObject *m_taskgroup_edge(PyObject *mod, PyObject *args);
PyObject *m_wait_begin(PyObject *mod, PyObject *args);
void wait_step_ended(PyObject *task, int completed);
PyObject *m_edge_enabled(PyObject *mod, PyObject *arg);
PyObject *m_loop_alive(PyObject *mod, PyObject *loop);
PyObject *m_loop_tid(PyObject *mod, PyObject *loop);
PyObject *m_semaphores(PyObject *mod, PyObject *arg);

/* watcher.c */
void start_watcher(void);
PyObject *m_stop_watcher(PyObject *mod, PyObject *arg);
void watcher_after_fork_child_begin(void);
void watcher_after_fork_child_start(void);



#endif
