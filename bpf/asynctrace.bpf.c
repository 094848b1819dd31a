// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * asynctrace kernel side: one USDT program per probe of
 * include/asynctrace/probes.h, keeping the live task graph of the traced
 * process in maps that user space (user/loader.cpp) reads on demand.
 *
 * Rules every program follows:
 *  - guard clauses, every lookup NULL-checked, nothing fails silently: a full
 *    map bumps a drop counter in procs[pid];
 *  - values bigger than the 512-byte stack are built in a per-CPU scratch slot;
 *  - strings and frames are copied from user memory straight into map values,
 *    bounded by the field sizes of bpf/abi.h.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/usdt.bpf.h>

#include "abi.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by the loader before load; 0 traces every process the uprobes fire in.
 * Children forked from the traced process inherit its breakpoints, so the
 * filter keeps their events out of the traced pid's state. */
const volatile __u32 target_tgid = 0;

/* Events lost because procs itself was full: there is no per-process counter
 * to put them in, so they are counted globally (read through the skeleton). */
__u64 drop_procs_full = 0;

/* Allocated on demand: the capacity is a ceiling, preallocating 128k task
 * values (~90 MB) for a process with a hundred tasks would be wasteful. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, AT_MAX_TASKS);
	__type(key, struct at_task_key);
	__type(value, struct at_task);
} tasks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, AT_MAX_CODES);
	__type(key, struct at_code_key);
	__type(value, struct at_code);
} codes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AT_MAX_PROCS);
	__type(key, __u32);
	__type(value, struct at_proc);
} procs SEC(".maps");

struct scratch {
	struct at_task task;
	struct at_code code;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

#define AT_AWAIT_RUNNING 4 /* ASYNCTRACE_AWAIT_RUNNING: replay of a running task */

/* min(len, cap) in a form the verifier can bound: barrier_var() keeps clang
 * from folding the comparison into one the verifier does not track, so the
 * register passed as a size is the one that was checked. */
static __always_inline __u32 bounded_len(__u64 len, __u32 cap)
{
	__u32 n = len > cap ? cap : (__u32)len;

	barrier_var(n);
	if (n > cap)
		n = cap;
	return n;
}

static __always_inline __u32 current_tgid(void)
{
	return bpf_get_current_pid_tgid() >> 32;
}

/* procs[tgid] for an event of the traced process, created on first use;
 * NULL if the event is not ours or procs is full (counted). */
static __always_inline struct at_proc *proc_for_event(__u32 pid)
{
	struct at_proc zero = {};
	struct at_proc *proc;
	long err;

	if (target_tgid && pid != target_tgid)
		return NULL;
	proc = bpf_map_lookup_elem(&procs, &pid);
	if (proc)
		goto found;
	err = bpf_map_update_elem(&procs, &pid, &zero, BPF_NOEXIST);
	if (err && err != -EEXIST) {
		__sync_fetch_and_add(&drop_procs_full, 1);
		return NULL;
	}
	proc = bpf_map_lookup_elem(&procs, &pid);
	if (!proc)
		return NULL;
found:
	__sync_fetch_and_add(&proc->events, 1);
	return proc;
}

static __always_inline struct scratch *scratch_slot(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&scratch, &zero);
}

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
	s = scratch_slot();
	if (!s)
		return NULL;
	__builtin_memset(&s->task, 0, sizeof(s->task));
	s->task.task_id = key->task_id;
	s->task.flags = AT_TASK_NAMELESS;
	s->task.create_ns = bpf_ktime_get_ns();
	s->task.seq = __sync_fetch_and_add(&proc->seq, 1);
	err = bpf_map_update_elem(&tasks, key, &s->task, BPF_NOEXIST);
	if (err && err != -EEXIST) {
		__sync_fetch_and_add(&proc->drop_tasks_full, 1);
		return NULL;
	}
	return bpf_map_lookup_elem(&tasks, key);
}

/* Sets what task__create says about a task; await state and edges stay. A
 * repeated create (rename, replay) sends 0 for what it does not know: the
 * creator and coroutine learned earlier are kept. */
static __always_inline void task_set_identity(struct at_task *task, __u64 parent_id,
					      __u64 loop_id, __u64 tid, __u64 name_ptr,
					      __u64 name_len, __u64 code_id)
{
	__u32 n = bounded_len(name_len, AT_NAME_LEN);

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
	bpf_probe_read_user(task->name, n, (const void *)name_ptr);
}

SEC("usdt")
int BPF_USDT(task_create, __u64 task_id, __u64 parent_id, __u64 loop_id, __u64 tid,
	     __u64 name_ptr, __u64 name_len, __u64 code_id)
{
	struct at_task_key key = { .pid = current_tgid(), .task_id = task_id };
	struct at_proc *proc;
	struct at_task *task;
	struct scratch *s;
	long err;

	proc = proc_for_event(key.pid);
	if (!proc)
		return 0;
	/* Replay re-creates live tasks: keep what later events already taught
	 * us (await state, frames, edges, seq) and only refresh the identity. */
	task = bpf_map_lookup_elem(&tasks, &key);
	if (task) {
		task_set_identity(task, parent_id, loop_id, tid, name_ptr, name_len, code_id);
		return 0;
	}
	s = scratch_slot();
	if (!s)
		return 0;
	__builtin_memset(&s->task, 0, sizeof(s->task));
	s->task.task_id = task_id;
	s->task.state = AT_STATE_CREATED;
	s->task.create_ns = bpf_ktime_get_ns();
	task_set_identity(&s->task, parent_id, loop_id, tid, name_ptr, name_len, code_id);
	s->task.seq = __sync_fetch_and_add(&proc->seq, 1);
	err = bpf_map_update_elem(&tasks, &key, &s->task, BPF_NOEXIST);
	if (!err)
		return 0;
	if (err != -EEXIST) {
		__sync_fetch_and_add(&proc->drop_tasks_full, 1);
		return 0;
	}
	/* Lost a race with an event of the same task on another CPU. */
	task = bpf_map_lookup_elem(&tasks, &key);
	if (!task)
		return 0;
	task_set_identity(task, parent_id, loop_id, tid, name_ptr, name_len, code_id);
	return 0;
}

SEC("usdt")
int BPF_USDT(task_resume, __u64 task_id)
{
	struct at_task_key key = { .pid = current_tgid(), .task_id = task_id };
	struct at_proc *proc;
	struct at_task *task;

	proc = proc_for_event(key.pid);
	if (!proc)
		return 0;
	task = task_get_or_nameless(proc, &key);
	if (!task)
		return 0;
	/* While it runs the task awaits nothing; the frames of its last
	 * suspension would be stale. */
	task->state = AT_STATE_RUNNING;
	task->awaiting_id = 0;
	task->awaiting_kind = 0;
	task->nframes = 0;
	task->flags &= ~AT_TASK_FRAMES_TRUNC;
	return 0;
}

SEC("usdt")
int BPF_USDT(task_await, __u64 task_id, __u64 awaited_id, __u64 kind, __u64 frames_ptr,
	     __u64 nframes)
{
	struct at_task_key key = { .pid = current_tgid(), .task_id = task_id };
	struct at_proc *proc;
	struct at_task *task;
	__u32 n;

	proc = proc_for_event(key.pid);
	if (!proc)
		return 0;
	task = task_get_or_nameless(proc, &key);
	if (!task)
		return 0;
	task->state = kind == AT_AWAIT_RUNNING ? AT_STATE_RUNNING : AT_STATE_SUSPENDED;
	task->awaiting_id = awaited_id;
	task->awaiting_kind = (__u32)kind;
	task->flags &= ~AT_TASK_FRAMES_TRUNC;
	task->nframes = 0;
	if (nframes > AT_MAX_FRAMES)
		task->flags |= AT_TASK_FRAMES_TRUNC;
	n = bounded_len(nframes, AT_MAX_FRAMES);
	if (!n || !frames_ptr)
		return 0;
	/* struct asynctrace_frame and struct at_frame share one layout, so the
	 * array is copied as is. */
	if (bpf_probe_read_user(task->frames, n * sizeof(struct at_frame), (const void *)frames_ptr))
		return 0;
	task->nframes = n;
	return 0;
}

SEC("usdt")
int BPF_USDT(task_complete, __u64 task_id, __u64 outcome)
{
	struct at_task_key key = { .pid = current_tgid(), .task_id = task_id };
	struct at_proc *proc;

	proc = proc_for_event(key.pid);
	if (!proc)
		return 0;
	if (bpf_map_delete_elem(&tasks, &key))
		__sync_fetch_and_add(&proc->unknown_task, 1);
	return 0;
}

SEC("usdt")
int BPF_USDT(edge_add, __u64 child_id, __u64 awaiter_id, __u64 kind)
{
	struct at_task_key key = { .pid = current_tgid(), .task_id = child_id };
	struct at_proc *proc;
	struct at_task *task;
	int free_slot = -1;

	proc = proc_for_event(key.pid);
	if (!proc)
		return 0;
	if (!awaiter_id)
		return 0;
	task = task_get_or_nameless(proc, &key);
	if (!task)
		return 0;
#pragma unroll
	for (int i = 0; i < AT_MAX_AWAITERS; i++) {
		if (task->awaited_by[i] == awaiter_id) {
			/* Replay repeats edges: refresh, never duplicate. */
			task->awaited_by_kind[i] = (__u8)kind;
			return 0;
		}
		if (!task->awaited_by[i] && free_slot < 0)
			free_slot = i;
	}
	if (free_slot < 0) {
		task->flags |= AT_TASK_AWAITERS_FULL;
		__sync_fetch_and_add(&proc->drop_edges_full, 1);
		return 0;
	}
	/* Constant indices only: the verifier checks each unrolled store. */
#pragma unroll
	for (int i = 0; i < AT_MAX_AWAITERS; i++) {
		if (i != free_slot)
			continue;
		task->awaited_by[i] = awaiter_id;
		task->awaited_by_kind[i] = (__u8)kind;
	}
	return 0;
}

SEC("usdt")
int BPF_USDT(edge_remove, __u64 child_id, __u64 awaiter_id)
{
	struct at_task_key key = { .pid = current_tgid(), .task_id = child_id };
	struct at_proc *proc;
	struct at_task *task;

	proc = proc_for_event(key.pid);
	if (!proc)
		return 0;
	/* Removing an edge of a task we do not know needs no entry. */
	task = bpf_map_lookup_elem(&tasks, &key);
	if (!task) {
		__sync_fetch_and_add(&proc->unknown_task, 1);
		return 0;
	}
#pragma unroll
	for (int i = 0; i < AT_MAX_AWAITERS; i++) {
		if (task->awaited_by[i] != awaiter_id)
			continue;
		task->awaited_by[i] = 0;
		task->awaited_by_kind[i] = 0;
	}
	return 0;
}

SEC("usdt")
int BPF_USDT(code_register, __u64 code_id, __u64 qualname_ptr, __u64 qualname_len,
	     __u64 filename_ptr, __u64 filename_len, __u64 firstlineno)
{
	struct at_code_key key = { .pid = current_tgid(), .code_id = code_id };
	struct at_proc *proc;
	struct scratch *s;
	__u32 qn, fn;
	long err;

	proc = proc_for_event(key.pid);
	if (!proc)
		return 0;
	s = scratch_slot();
	if (!s)
		return 0;
	__builtin_memset(&s->code, 0, sizeof(s->code));
	s->code.qualname_len = qualname_len > 0xffffffffULL ? 0xffffffffU : (__u32)qualname_len;
	s->code.filename_len = filename_len > 0xffffffffULL ? 0xffffffffU : (__u32)filename_len;
	s->code.firstlineno = (__u32)firstlineno;
	qn = bounded_len(qualname_len, AT_QUALNAME_LEN);
	fn = bounded_len(filename_len, AT_FILENAME_LEN);
	/* Failed reads leave zeros; the lengths stay as sent. */
	if (qn && qualname_ptr)
		bpf_probe_read_user(s->code.qualname, qn, (const void *)qualname_ptr);
	if (fn && filename_ptr)
		bpf_probe_read_user(s->code.filename, fn, (const void *)filename_ptr);
	err = bpf_map_update_elem(&codes, &key, &s->code, BPF_ANY);
	if (err)
		__sync_fetch_and_add(&proc->drop_codes_full, 1);
	return 0;
}

SEC("usdt")
int BPF_USDT(replay_begin, __u64 gen)
{
	/* Nothing to reset: replayed events merge into what we have. The event
	 * is still counted so user space sees the runtime answered. */
	proc_for_event(current_tgid());
	return 0;
}

SEC("usdt")
int BPF_USDT(replay_end, __u64 gen, __u64 ntasks)
{
	struct at_proc *proc;

	proc = proc_for_event(current_tgid());
	if (!proc)
		return 0;
	proc->replay_tasks = ntasks;
	/* Written last: user space polls replay_gen, then reads replay_tasks. */
	proc->replay_gen = gen;
	return 0;
}
