/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * apply.bpf.h owns what an event does to the state: creating, updating and
 * deleting task entries, their await state and awaiter edges, and interning
 * stacks, with the same code for the per-event programs and the batch
 * records. Part of asynctrace.bpf.c: included after maps.bpf.h.
 */
#ifndef ASYNCTRACE_APPLY_BPF_H
#define ASYNCTRACE_APPLY_BPF_H

/* Existing entry, or a NAMELESS one for a task whose task__create we never saw
 * (it was created before we attached and the replay has not reached it yet). */
static __always_inline struct at_task *task_get_or_nameless(struct at_proc *proc,
							    struct at_task_key *key)
{
	struct at_task *task;
	struct scratch *s;
	long err;

	task = bpf_map_lookup_elem(&tasks, key);
	if (task)
		return task;
	__sync_fetch_and_add(&proc->unknown_task, 1);
	s = scratch_claim();
	if (!s)
		return NULL;
	__builtin_memset(&s->task, 0, sizeof(s->task));
	s->task.flags = AT_TASK_NAMELESS;
	s->task.create_ns = bpf_ktime_get_ns();
	err = bpf_map_update_elem(&tasks, key, &s->task, BPF_NOEXIST);
	slot_release(s);
	if (err && err != -EEXIST) {
		__sync_fetch_and_add(&proc->drop_tasks_full, 1);
		return NULL;
	}
	return bpf_map_lookup_elem(&tasks, key);
}

/* Sets what task__create says about a task; await state and edges stay. A
 * repeated create (rename, replay) sends 0 for what it does not know: the
 * creator and coroutine learned earlier are kept. The name comes from the
 * process (per-event probe) or from a batch already copied in (kernel). */
static __always_inline void task_set_identity(struct at_task *task, __u64 parent_id,
					      __u64 loop_id, __u64 tid, __u64 name_ptr,
					      __u64 name_len, __u64 code_id, __u32 name_avail,
					      bool name_in_kernel)
{
	__u32 n = bounded_len(bounded_len(name_len, name_avail), AT_NAME_LEN);

	if (parent_id)
		task->parent_id = parent_id;
	task->loop_id = loop_id;
	task->tid = tid ? (__u32)tid : (__u32)bpf_get_current_pid_tgid();
	if (code_id)
		task->coro_code_id = code_id;
	task->name_len = name_len > 0xffffffffULL ? 0xffffffffU : (__u32)name_len;
	task->flags &= ~AT_TASK_NAMELESS;
	__builtin_memset(task->name, 0, sizeof(task->name));
	if (!n || !name_ptr)
		return;
	/* A failed read (page not present) leaves zeros: the length stays as
	 * sent so user space still knows a name existed. */
	if (name_in_kernel)
		bpf_probe_read_kernel(task->name, n, (const void *)name_ptr);
	else
		bpf_probe_read_user(task->name, n, (const void *)name_ptr);
}

static __always_inline void apply_create(struct at_proc *proc, __u32 pid, __u64 task_id,
					 __u64 parent_id, __u64 loop_id, __u64 tid, __u64 name_ptr,
					 __u64 name_len, __u64 code_id, __u32 name_avail,
					 bool name_in_kernel)
{
	struct at_task_key key = { .pid = pid, .task_id = task_id };
	struct at_task *task;
	struct scratch *s;
	long err;

	/* Replay re-creates live tasks: keep what later events already taught
	 * us (await state, frames, edges, creation time) and only refresh the identity. */
	task = bpf_map_lookup_elem(&tasks, &key);
	if (task) {
		task_set_identity(task, parent_id, loop_id, tid, name_ptr, name_len, code_id,
				  name_avail, name_in_kernel);
		return;
	}
	s = scratch_claim();
	if (!s)
		return;
	__builtin_memset(&s->task, 0, sizeof(s->task));
	s->task.state = AT_STATE_CREATED;
	s->task.create_ns = bpf_ktime_get_ns();
	task_set_identity(&s->task, parent_id, loop_id, tid, name_ptr, name_len, code_id, name_avail,
			  name_in_kernel);
	err = bpf_map_update_elem(&tasks, &key, &s->task, BPF_NOEXIST);
	slot_release(s);
	if (!err)
		return;
	if (err != -EEXIST) {
		__sync_fetch_and_add(&proc->drop_tasks_full, 1);
		return;
	}
	/* Lost a race with an event of the same task on another CPU. */
	task = bpf_map_lookup_elem(&tasks, &key);
	if (!task)
		return;
	task_set_identity(task, parent_id, loop_id, tid, name_ptr, name_len, code_id, name_avail,
			  name_in_kernel);
}

/* The entry of a task an event names. Per-event probes create a NAMELESS
 * entry for a task never created (it predates the attach and the replay has
 * not reached it yet). The batch path does not: its runtime replays after
 * every attach, and it erases tasks created and completed between two
 * flushes, whose STEP and EDGE records then name tasks we must not create. */
static __always_inline struct at_task *task_for_event(struct at_proc *proc, struct at_task_key *key,
						      bool batch)
{
	struct at_task *task;

	if (!batch)
		return task_get_or_nameless(proc, key);
	task = bpf_map_lookup_elem(&tasks, key);
	if (!task)
		__sync_fetch_and_add(&proc->unknown_task, 1);
	return task;
}

/* Forgets `awaiter` as the task awaiting `child` (set_awaiter). */
static __always_inline void clear_awaiter(__u32 pid, __u64 child, __u64 awaiter)
{
	struct at_task_key key = { .pid = pid, .task_id = child };
	struct at_task *t = bpf_map_lookup_elem(&tasks, &key);

	if (t && t->awaiter_id == awaiter)
		t->awaiter_id = 0;
}

/* Marks `awaiter` as the task awaiting `child` (the reverse of awaiting_id),
 * so an event of the child names it without a walk over every task. */
static __always_inline void set_awaiter(__u32 pid, __u64 child, __u64 awaiter)
{
	struct at_task_key key = { .pid = pid, .task_id = child };
	struct at_task *t = bpf_map_lookup_elem(&tasks, &key);

	if (t)
		t->awaiter_id = awaiter;
}

static __always_inline void apply_resume(struct at_proc *proc, __u32 pid, __u64 task_id, bool batch)
{
	struct at_task_key key = { .pid = pid, .task_id = task_id };
	struct at_task *task;

	task = task_for_event(proc, &key, batch);
	if (!task)
		return;
	/* While it runs the task awaits nothing; the frames of its last
	 * suspension would be stale. A task it awaited and left behind (a
	 * timeout, a cancellation) is no longer awaited by it. */
	if (task->awaiting_kind == ASYNCTRACE_AWAIT_TASK && task->awaiting_id)
		clear_awaiter(pid, task->awaiting_id, task_id);
	task->state = AT_STATE_RUNNING;
	task->awaiting_id = 0;
	task->awaiting_kind = 0;
	task->nframes = 0;
	task->stack_id = 0;
	task->flags &= ~AT_TASK_FRAMES_TRUNC;
}

/* Interns stack `st` (frames and nframes filled in) as stack_id; 0 if it is there. */
static __always_inline int stack_intern(struct at_proc *proc, __u32 pid, struct at_stack *st,
					__u64 stack_id)
{
	struct at_stack_key key = { .pid = pid, .stack_id = stack_id };
	struct at_stack *old;
	long err;

	/* Most stacks exist already (many tasks wait at the same place, and
	 * every replay repeats them): look up first. */
	old = bpf_map_lookup_elem(&stacks, &key);
	if (old) {
		old->gen = proc->replay_active; /* in use again: not garbage */
		return 0;
	}
	st->gen = proc->replay_active;
	err = bpf_map_update_elem(&stacks, &key, st, BPF_NOEXIST);
	if (err && err != -EEXIST) {
		__sync_fetch_and_add(&proc->drop_stacks_full, 1);
		return -1;
	}
	return 0;
}

/* Points the task at stack `st` (frames and nframes filled in), interning it. */
static __always_inline void task_set_stack(struct at_proc *proc, __u32 pid, struct at_task *task,
					   struct at_stack *st, __u64 stack_id)
{
	if (stack_intern(proc, pid, st, stack_id))
		return;
	task->stack_id = stack_id;
	task->nframes = (__u8)st->nframes;
}

/* task__await: state and awaited object; frames (if any) are copied by the
 * caller into the returned entry. */
static __always_inline struct at_task *apply_await(struct at_proc *proc, __u32 pid, __u64 task_id,
						   __u64 awaited_id, __u64 kind, bool batch)
{
	struct at_task_key key = { .pid = pid, .task_id = task_id };
	struct at_task *task;

	task = task_for_event(proc, &key, batch);
	if (!task)
		return NULL;
	if (kind == ASYNCTRACE_AWAIT_TASK && awaited_id)
		set_awaiter(pid, awaited_id, task_id);
	task->state = kind == ASYNCTRACE_AWAIT_RUNNING ? AT_STATE_RUNNING : AT_STATE_SUSPENDED;
	task->awaiting_id = awaited_id;
	task->awaiting_kind = (__u8)kind;
	task->flags &= ~AT_TASK_FRAMES_TRUNC;
	task->nframes = 0;
	task->stack_id = 0;
	return task;
}

static __always_inline void apply_complete(struct at_proc *proc, __u32 pid, __u64 task_id)
{
	struct at_task_key key = { .pid = pid, .task_id = task_id };

	if (bpf_map_delete_elem(&tasks, &key))
		__sync_fetch_and_add(&proc->unknown_task, 1);
	bpf_map_delete_elem(&timing, &key);
}

static __always_inline void apply_edge_add(struct at_proc *proc, __u32 pid, __u64 child_id,
					   __u64 awaiter_id, __u64 kind, bool batch)
{
	struct at_task_key key = { .pid = pid, .task_id = child_id };
	struct at_task *task;
	int free_slot = -1;

	if (!awaiter_id)
		return;
	task = task_for_event(proc, &key, batch);
	if (!task)
		return;
#pragma unroll
	for (int i = 0; i < AT_MAX_AWAITERS; i++) {
		if (task->awaited_by[i] == awaiter_id) {
			/* Replay repeats edges: refresh, never duplicate. */
			task->awaited_by_kind[i] = (__u8)kind;
			return;
		}
		if (!task->awaited_by[i] && free_slot < 0)
			free_slot = i;
	}
	if (free_slot < 0) {
		task->flags |= AT_TASK_AWAITERS_FULL;
		__sync_fetch_and_add(&proc->drop_edges_full, 1);
		return;
	}
	/* Constant indices only: the verifier checks each unrolled store. */
#pragma unroll
	for (int i = 0; i < AT_MAX_AWAITERS; i++) {
		if (i != free_slot)
			continue;
		task->awaited_by[i] = awaiter_id;
		task->awaited_by_kind[i] = (__u8)kind;
	}
}

static __always_inline void apply_edge_remove(struct at_proc *proc, __u32 pid, __u64 child_id,
					      __u64 awaiter_id)
{
	struct at_task_key key = { .pid = pid, .task_id = child_id };
	struct at_task *task;

	/* Removing an edge of a task we do not know needs no entry. */
	task = bpf_map_lookup_elem(&tasks, &key);
	if (!task) {
		__sync_fetch_and_add(&proc->unknown_task, 1);
		return;
	}
#pragma unroll
	for (int i = 0; i < AT_MAX_AWAITERS; i++) {
		if (task->awaited_by[i] != awaiter_id)
			continue;
		task->awaited_by[i] = 0;
		task->awaited_by_kind[i] = 0;
	}
}

#endif /* ASYNCTRACE_APPLY_BPF_H */
