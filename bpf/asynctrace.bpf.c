// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * asynctrace kernel side: one USDT program per probe of
 * include/asynctrace/probes.h, keeping the live task graph of the traced
 * process in maps that user space (user/loader.cpp) reads on demand.
 *
 * Rules every program follows:
 *  - guard clauses, every lookup NULL-checked, nothing fails silently: a full
 *    map bumps a drop counter in procs[pid];
 *  - the stack holds scalars and keys only: every call chain stays under a
 *    384-byte budget (tests/bpf_stack checks the object; the verifier of
 *    kernels before 6.13 refuses 512 for the whole chain). Zero values come
 *    from the zero_proc map, big values are built in a scratch slot claimed
 *    per nesting level (scratch_claim) and released before the program ends;
 *  - an index into a buffer is re-bounded where it is used (rec_at), in a
 *    form the 6.1 verifier tracks, never only where it was checked: clang
 *    may spill the checked copy and use a reloaded one;
 *  - no loop whose shape the verifier must guess: bpf_loop, #pragma unroll,
 *    or written out;
 *  - strings and frames are copied from user memory straight into map values,
 *    bounded by the field sizes of bpf/abi.h.
 */
/* No CO-RE: the only kernel type read is struct pt_regs (usdt.bpf.h reads
 * its ip), whose x86-64 layout is the user ABI. Without relocations libbpf
 * does not load and parse the kernel's BTF (~5 MB) at every load, which was
 * the largest part of a one-shot `pstree`. */
#define BPF_NO_PRESERVE_ACCESS_INDEX
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

/* Set by the loader when the runtime has replay__begin sites: a replay counts
 * as ours only if we saw it begin. A tracer attaching in the middle of a
 * replay would otherwise take that replay's end, with half its records
 * missed, for a complete one. */
const volatile bool require_begin = false;

/* Set by tracers that read the `events` ring buffer (slow, record): the
 * runtime's STEP_TIMED and SAMPLE records are forwarded there. */
const volatile bool forward_events = false;

/* Tests only (ASYNCTRACE_TEST_VERIFIER_REJECT=1): an access the verifier must refuse, to test how a rejected load is reported. */
const volatile bool test_reject = false;

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

/* Interned stacks, shared by the tasks suspended at the same place. Entries
 * no task refers to any more are removed by the user-space holder
 * (loader.cpp gc), which keeps those a replay in progress may still use. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, AT_MAX_STACKS);
	__type(key, struct at_stack_key);
	__type(value, struct at_stack);
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AT_MAX_PROCS);
	__type(key, __u32);
	__type(value, struct at_proc);
} procs SEC(".maps");

/* Per-task timing (TIMING records); the entry goes with the task's. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, AT_MAX_TASKS);
	__type(key, struct at_task_key);
	__type(value, struct at_timing);
} timing SEC(".maps");

/* Per-coroutine timing (CODE records), key (pid, code id). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, AT_MAX_CODES);
	__type(key, struct at_code_key);
	__type(value, struct at_timing);
} code_timing SEC(".maps");

/* STEP_TIMED and SAMPLE records for user space (forward_events). The loader
 * sizes it; tracers that do not forward keep it at one page. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

/* Never written: the zero value procs entries start from (280 bytes, too
 * big for the stack budget). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct at_proc);
} zero_proc SEC(".maps");

/* Room for the big values one program builds. A uprobe program can be
 * preempted on its CPU (uprobe_multi runs it with migration disabled, not
 * preemption) and the next program on that CPU may need scratch too, so a
 * slot is claimed (busy 0 -> 1, atomically) and released, one per nesting
 * level: two programs never share one. */
struct scratch {
	__u32 busy;
	__u32 pad;
	union {
		struct at_task task;
		struct at_code code;
		struct at_stack stack;
		struct at_timing timing;
	};
};

#define AT_SCRATCH_LEVELS 3

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, AT_SCRATCH_LEVELS);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

/* Programs that found every scratch level (or batch buffer) of their CPU in
 * use: their event is lost. Global, like drop_procs_full. */
__u64 drop_nested = 0;

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

/* Claims the first free slot of a per-CPU array whose values start with a
 * __u32 busy flag, levels 0..nlevels-1 written out (a loop here was once
 * compiled into one the 6.18 verifier took for infinite). NULL if all are
 * in use (counted). */
static __always_inline void *slot_claim(void *map, __u32 nlevels)
{
	__u32 k0 = 0, k1 = 1, k2 = 2;
	__u32 *busy;

	busy = bpf_map_lookup_elem(map, &k0);
	if (busy && !__sync_lock_test_and_set(busy, 1))
		return busy;
	busy = bpf_map_lookup_elem(map, &k1);
	if (busy && !__sync_lock_test_and_set(busy, 1))
		return busy;
	if (nlevels > 2) {
		busy = bpf_map_lookup_elem(map, &k2);
		if (busy && !__sync_lock_test_and_set(busy, 1))
			return busy;
	}
	__sync_fetch_and_add(&drop_nested, 1);
	return NULL;
}

/* Only this CPU's programs share the slot, so ordering the store after the
 * slot's last use in program order is enough. */
static __always_inline void slot_release(void *slot)
{
	barrier();
	*(volatile __u32 *)slot = 0;
}

static __always_inline struct scratch *scratch_claim(void)
{
	return slot_claim(&scratch, AT_SCRATCH_LEVELS);
}

static __always_inline __u32 current_tgid(void)
{
	return bpf_get_current_pid_tgid() >> 32;
}

/* procs[tgid] for an event of the traced process, created on first use;
 * NULL if the event is not ours or procs is full (counted). */
static __always_inline struct at_proc *proc_for_event(__u32 pid)
{
	struct at_proc *proc, *zero;
	__u32 k0 = 0;
	long err;

	if (target_tgid && pid != target_tgid)
		return NULL;
	proc = bpf_map_lookup_elem(&procs, &pid);
	if (proc)
		goto found;
	zero = bpf_map_lookup_elem(&zero_proc, &k0);
	if (!zero)
		return NULL;
	err = bpf_map_update_elem(&procs, &pid, zero, BPF_NOEXIST);
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

static __always_inline void apply_resume(struct at_proc *proc, __u32 pid, __u64 task_id, bool batch)
{
	struct at_task_key key = { .pid = pid, .task_id = task_id };
	struct at_task *task;

	task = task_for_event(proc, &key, batch);
	if (!task)
		return;
	/* While it runs the task awaits nothing; the frames of its last
	 * suspension would be stale. */
	task->state = AT_STATE_RUNNING;
	task->awaiting_id = 0;
	task->awaiting_kind = 0;
	task->nframes = 0;
	task->stack_id = 0;
	task->flags &= ~AT_TASK_FRAMES_TRUNC;
}

/* FNV-1a over the frames: the id of an interned stack (same on both paths). */
static __always_inline __u64 stack_hash(const struct at_stack *st, __u32 n)
{
	__u64 h = 0xcbf29ce484222325ULL;

	for (int i = 0; i < AT_MAX_FRAMES; i++) {
		if (i >= n)
			break;
		h = (h ^ st->frames[i].code_id) * 0x100000001b3ULL;
		h = (h ^ (((__u64)st->frames[i].flags << 32) | st->frames[i].line)) * 0x100000001b3ULL;
	}
	return h ? h : 1;
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
	task->state = kind == AT_AWAIT_RUNNING ? AT_STATE_RUNNING : AT_STATE_SUSPENDED;
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

SEC("usdt")
int BPF_USDT(task_create, __u64 task_id, __u64 parent_id, __u64 loop_id, __u64 tid,
	     __u64 name_ptr, __u64 name_len, __u64 code_id)
{
	__u32 pid = current_tgid();
	struct at_proc *proc;

	proc = proc_for_event(pid);
	if (!proc)
		return 0;
	apply_create(proc, pid, task_id, parent_id, loop_id, tid, name_ptr, name_len, code_id,
		     AT_NAME_LEN, false);
	return 0;
}

SEC("usdt")
int BPF_USDT(task_resume, __u64 task_id)
{
	__u32 pid = current_tgid();
	struct at_proc *proc;

	proc = proc_for_event(pid);
	if (proc)
		apply_resume(proc, pid, task_id, false);
	return 0;
}

SEC("usdt")
int BPF_USDT(task_await, __u64 task_id, __u64 awaited_id, __u64 kind, __u64 frames_ptr,
	     __u64 nframes)
{
	__u32 pid = current_tgid();
	struct at_proc *proc;
	struct at_task *task;
	struct scratch *s;
	__u32 n;

	proc = proc_for_event(pid);
	if (!proc)
		return 0;
	task = apply_await(proc, pid, task_id, awaited_id, kind, false);
	if (!task)
		return 0;
	if (nframes > AT_MAX_FRAMES)
		task->flags |= AT_TASK_FRAMES_TRUNC;
	n = bounded_len(nframes, AT_MAX_FRAMES);
	if (!n || !frames_ptr)
		return 0;
	s = scratch_claim();
	if (!s)
		return 0;
	/* struct asynctrace_frame and struct at_frame share one layout, so the
	 * array is copied as is. */
	__builtin_memset(&s->stack, 0, sizeof(s->stack));
	if (!bpf_probe_read_user(s->stack.frames, n * sizeof(struct at_frame), (const void *)frames_ptr)) {
		s->stack.nframes = n;
		task_set_stack(proc, pid, task, &s->stack, stack_hash(&s->stack, n));
	}
	slot_release(s);
	return 0;
}

SEC("usdt")
int BPF_USDT(task_complete, __u64 task_id, __u64 outcome)
{
	__u32 pid = current_tgid();
	struct at_proc *proc;

	proc = proc_for_event(pid);
	if (proc)
		apply_complete(proc, pid, task_id);
	return 0;
}

SEC("usdt")
int BPF_USDT(edge_add, __u64 child_id, __u64 awaiter_id, __u64 kind)
{
	__u32 pid = current_tgid();
	struct at_proc *proc;

	proc = proc_for_event(pid);
	if (proc)
		apply_edge_add(proc, pid, child_id, awaiter_id, kind, false);
	return 0;
}

SEC("usdt")
int BPF_USDT(edge_remove, __u64 child_id, __u64 awaiter_id)
{
	__u32 pid = current_tgid();
	struct at_proc *proc;

	proc = proc_for_event(pid);
	if (proc)
		apply_edge_remove(proc, pid, child_id, awaiter_id);
	return 0;
}

/* ---- batch__flush: records buffered by the runtime ------------------------
 *
 * The records are copied from the process AT_BATCH_CHUNK slots at a time
 * into a per-CPU buffer and applied in order by one bpf_loop callback per
 * record, with the same apply_* code as the per-event programs. A record is
 * never split across copies: a chunk starts at a record boundary, and a
 * record that does not fit entirely is copied again at the start of the next
 * chunk. The buffer has AT_REC_MAX_SLOTS spare slots so the constant-size
 * payload copies below stay inside it for any record start the verifier
 * allows. */
/* State of one batch: in the per-CPU map value, not on the stack, so that
 * the verifier does not track its values precisely through the bpf_loop
 * callback (it would then verify the callback once per iteration value). */
struct batch_buf {
	__u32 busy;       /* claimed by a batch running on this CPU (slot_claim) */
	__u32 nslots;
	__u64 base;       /* user address of slot 0 */
	__u32 pos;        /* next record, in slots from base */
	__u32 chunk_start;
	__u32 chunk_end;  /* slots [chunk_start, chunk_end) are in recs */
	__u32 pid;
	__u32 nrec;       /* records applied */
	__u32 pad;
	struct at_rec recs[AT_BATCH_CHUNK + AT_REC_MAX_SLOTS];
};

/* rec_at() bounds a record start with a mask. */
_Static_assert((AT_BATCH_CHUNK & (AT_BATCH_CHUNK - 1)) == 0, "AT_BATCH_CHUNK is a power of two");

/* bpf_loop's context (it must be on the stack): pointers only. */
struct batch_ctx {
	struct batch_buf *buf;
	struct at_proc *proc;
};

/* Two buffers per CPU: a batch program preempted on this CPU (uprobe
 * programs can be) must not share its buffer with the next one. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct batch_buf);
} batch_bufs SEC(".maps");

/* &buf->recs[cur + k], for a record start cur (< AT_BATCH_CHUNK, checked by
 * the caller) and a constant k < AT_REC_MAX_SLOTS. cur is bounded again
 * here, at the use, by a mask: the 6.1 verifier lost the caller's check when
 * clang spilled cur and used another reload of it. barrier_var() keeps clang
 * from dropping the mask as redundant with that check. */
static __always_inline void *rec_at(struct batch_buf *buf, __u32 cur, __u32 k)
{
	__u64 i = cur;

	barrier_var(i);
	i &= AT_BATCH_CHUNK - 1;
	return &buf->recs[i + k];
}

/* Copies up to AT_BATCH_CHUNK slots from the process, starting at pos. */
static __always_inline int batch_fill(struct batch_buf *b)
{
	__u32 cnt = bounded_len(b->nslots - b->pos, AT_BATCH_CHUNK);

	if (!cnt)
		return -1;
	if (bpf_probe_read_user(b->recs, cnt * sizeof(struct at_rec),
				(const void *)(b->base + (__u64)b->pos * sizeof(struct at_rec))))
		return -1;
	b->chunk_start = b->pos;
	b->chunk_end = b->pos + cnt;
	return 0;
}

/* Interns the AT_MAX_FRAMES frame slots at `frames` (nf of them valid) as
 * stack_id, and points `task` at it if there is one. */
static __always_inline void frames_intern(struct at_proc *proc, __u32 pid, const void *frames,
					  __u32 nf, __u64 stack_id, struct at_task *task)
{
	struct scratch *s = scratch_claim();

	if (!s)
		return;
	__builtin_memcpy(s->stack.frames, frames, sizeof(s->stack.frames));
	s->stack.nframes = nf;
	if (task)
		task_set_stack(proc, pid, task, &s->stack, stack_id);
	else
		stack_intern(proc, pid, &s->stack, stack_id);
	slot_release(s);
}

/* One global function per record type: the verifier checks each once, on
 * its own, instead of along every path of the record loop (inlined, they
 * made the batch program ~60 ms of verification per load, most of a
 * one-shot `pstree`). Their pointer arguments are map values of the sizes
 * their types say; cur is the record's first slot in buf (< AT_BATCH_CHUNK),
 * n its length. Each reads n (batch_step and batch_other only check it):
 * clang leaves an unread argument's register unset, and the verifier refuses
 * a global function call with an uninitialised argument. */
__noinline int batch_create(struct batch_buf *buf, struct at_proc *proc, __u32 cur, __u32 n)
{
	struct at_rec_create *c;
	struct at_rec *rec;
	__u32 avail;

	if (!proc || !buf || cur >= AT_BATCH_CHUNK || n < 2 || n > AT_REC_MAX_SLOTS)
		return -1;
	rec = rec_at(buf, cur, 0);
	c = rec_at(buf, cur, 1);
	avail = (n - 2) * sizeof(struct at_rec);
	apply_create(proc, buf->pid, rec->a, rec->b, rec->c, c->tid, (__u64)rec_at(buf, cur, 2),
		     rec->len, c->code_id, c->kept < avail ? c->kept : avail, true);
	if (c->edge_kind)  /* an EDGE_ADD the runtime folded into the create */
		apply_edge_add(proc, buf->pid, rec->a, c->edge_awaiter, c->edge_kind - 1, true);
	return 0;
}

__noinline int batch_step(struct batch_buf *buf, struct at_proc *proc, __u32 cur, __u32 n)
{
	struct at_rec *rec;

	if (!proc || !buf || cur >= AT_BATCH_CHUNK || n == 0)
		return -1;
	rec = rec_at(buf, cur, 0);
	/* No frames: stacks come with the replay (STACK records). */
	apply_await(proc, buf->pid, rec->a, rec->b, rec->kind, true);
	return 0;
}

__noinline int batch_stack(struct batch_buf *buf, struct at_proc *proc, __u32 cur, __u32 n)
{
	struct at_task *task;
	struct at_rec *rec;
	__u32 nf;

	if (!proc || !buf || cur >= AT_BATCH_CHUNK || n < 1 || n > AT_REC_MAX_SLOTS)
		return -1;
	rec = rec_at(buf, cur, 0);
	task = apply_await(proc, buf->pid, rec->a, rec->b, rec->kind, true);
	if (!task)
		return 0;
	nf = rec->len;
	if (nf > AT_MAX_FRAMES || nf > (n - 1) * 2) {
		task->flags |= AT_TASK_FRAMES_TRUNC;
		nf = nf > AT_MAX_FRAMES ? AT_MAX_FRAMES : nf;
		if (nf > (n - 1) * 2)
			nf = (n - 1) * 2;
	}
	/* Frames beyond nf are whatever follows in the buffer; nframes says
	 * how many are valid (and the runtime's id covers those). */
	if (nf && rec->c)
		frames_intern(proc, buf->pid, rec_at(buf, cur, 1), nf, rec->c, task);
	return 0;
}

__noinline int batch_other(struct batch_buf *buf, struct at_proc *proc, __u32 cur, __u32 n)
{
	struct at_rec *rec;

	if (!proc || !buf || cur >= AT_BATCH_CHUNK || n == 0)
		return -1;
	rec = rec_at(buf, cur, 0);
	switch (rec->type) {
	case AT_REC_COMPLETE:
		apply_complete(proc, buf->pid, rec->a);
		break;
	case AT_REC_EDGE_ADD:
		apply_edge_add(proc, buf->pid, rec->a, rec->b, rec->kind, true);
		break;
	case AT_REC_EDGE_REMOVE:
		apply_edge_remove(proc, buf->pid, rec->a, rec->b);
		break;
	case AT_REC_RESUME:
		apply_resume(proc, buf->pid, rec->a, true);
		break;
	default:
		break; /* PAD, or a newer record type: skipped by its length */
	}
	return 0;
}

/*
 * The timing records are handled by global functions: the verifier checks
 * each once, on its own, instead of along every path of the record loop
 * (inlined, they took the load from ~30 to ~130 ms of verification). Their
 * pointer arguments are map values of the sizes their types say.
 */

/* The entry of `key` in the timing map `map` (keys of at_task_key's layout),
 * created zeroed with first_ns = now if it is new. */
static __always_inline struct at_timing *timing_entry(struct at_proc *proc, void *map, void *key)
{
	struct at_timing *t = bpf_map_lookup_elem(map, key);
	struct scratch *s;
	long err;

	if (t)
		return t;
	s = scratch_claim();
	if (!s)
		return NULL;
	__builtin_memset(&s->timing, 0, sizeof(s->timing));
	s->timing.first_ns = bpf_ktime_get_ns();
	err = bpf_map_update_elem(map, key, &s->timing, BPF_NOEXIST);
	slot_release(s);
	if (err && err != -EEXIST) {
		__sync_fetch_and_add(&proc->drop_timing_full, 1);
		return NULL;
	}
	return bpf_map_lookup_elem(map, key);
}

/* TIMING (per task, known tasks only) and CODE (per coroutine) deltas. */
__noinline int batch_timing(struct batch_buf *buf, struct at_proc *proc, __u32 cur, __u32 n)
{
	struct at_task_key key = {};
	struct at_timing *t;
	struct at_rec *rec;
	const __u64 *slot1;
	const __u8 *hist;

	if (!proc || !buf || cur >= AT_BATCH_CHUNK || n != 3)
		return -1;
	rec = rec_at(buf, cur, 0);
	slot1 = rec_at(buf, cur, 1);
	hist = rec_at(buf, cur, 2);
	/* at_code_key has at_task_key's layout: (pid, pad, id). */
	key.pid = buf->pid;
	key.task_id = rec->a;
	if (rec->type == AT_REC_TIMING) {
		if (!bpf_map_lookup_elem(&tasks, &key))
			return 0; /* never reached us (erased) or already gone */
		t = timing_entry(proc, &timing, &key);
	} else {
		t = timing_entry(proc, &code_timing, &key);
	}
	if (!t)
		return 0;
	t->steps += rec->len;
	t->busy_ns += rec->b;
	t->sched_ns += rec->c;
	if (slot1[0] > t->max_ns)
		t->max_ns = slot1[0];
	if (slot1[1] > t->last_end_ns)
		t->last_end_ns = slot1[1];
#pragma unroll
	for (int i = 0; i < AT_HIST_BUCKETS; i++)
		t->hist[i] += hist[i];
	return 0;
}

/* LOOP: the runtime's process totals, and the longest step per second. */
__noinline int batch_loop(struct batch_buf *buf, struct at_proc *p, __u32 cur, __u32 n)
{
	struct at_rec *rec;
	const __u64 *slot1;
	__u64 sec, i;

	if (!p || !buf || cur >= AT_BATCH_CHUNK || n != 2)
		return -1;
	rec = rec_at(buf, cur, 0);
	slot1 = rec_at(buf, cur, 1);
	p->tasks_created = rec->a;
	p->tasks_completed = rec->b;
	p->steps = rec->c;
	p->busy_ns = slot1[0];
	p->loop_at_ns = slot1[2];
	p->timing_since_ns = slot1[3];
	sec = slot1[2] / 1000000000ull;
	/* sec % AT_MAX_SECS, as a mask at the use (see rec_at). */
	i = sec;
	barrier_var(i);
	i &= AT_MAX_SECS - 1;
	if (p->step_max_sec[i] != sec) {
		p->step_max_sec[i] = sec;
		p->step_max_ns[i] = 0;
	}
	if (slot1[1] > p->step_max_ns[i])
		p->step_max_ns[i] = slot1[1];
	return 0;
}

/* STEP_TIMED and SAMPLE: SAMPLE frames are interned in `stacks`; both are
 * forwarded to the events ring when a reader asked for them. */
__noinline int batch_event(struct batch_buf *buf, struct at_proc *proc, __u32 cur, __u32 n)
{
	struct at_task_key key = {};
	struct at_event *ev;
	struct at_task *task;
	struct at_rec *rec;
	__u32 nf;

	if (!proc || !buf || cur >= AT_BATCH_CHUNK || n < 1 || n > AT_REC_MAX_SLOTS)
		return -1;
	rec = rec_at(buf, cur, 0);
	if (rec->type == AT_REC_SAMPLE) {
		nf = rec->len;
		if (nf > AT_MAX_FRAMES)
			nf = AT_MAX_FRAMES;
		if (nf > (n - 1) * 2)
			nf = (n - 1) * 2;
		if (nf && rec->c)
			frames_intern(proc, buf->pid, rec_at(buf, cur, 1), nf, rec->c, NULL);
	} else if (n != 2) {
		return -1;
	}
	if (!forward_events)
		return 0;
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		__sync_fetch_and_add(&proc->drop_events, 1);
		return 0;
	}
	ev->pid = buf->pid;
	ev->ktime = bpf_ktime_get_ns();
	__builtin_memcpy(ev->rec, rec, 32);
	if (rec->type == AT_REC_STEP_TIMED) {
		const __u64 *slot1 = rec_at(buf, cur, 1);

		__builtin_memcpy(ev->rec + 32, slot1, 32);
		ev->task_code = slot1[3];
	} else {
		__builtin_memset(ev->rec + 32, 0, 32);
		ev->task_code = 0;
	}
	key.pid = buf->pid;
	key.task_id = rec->a;
	task = bpf_map_lookup_elem(&tasks, &key);
	if (task) {
		__builtin_memcpy(ev->name, task->name, AT_NAME_LEN);
		ev->name_len = task->name_len ? task->name_len : 1;
		if (!ev->task_code)
			ev->task_code = task->coro_code_id;
	} else {
		__builtin_memset(ev->name, 0, AT_NAME_LEN);
		ev->name_len = 0;
	}
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

static long batch_record(__u64 index, struct batch_ctx *x)
{
	struct batch_buf *b = x->buf;
	struct at_proc *proc = x->proc;
	struct at_rec *rec;
	__u32 cur, n;
	int err;

	if (!b || !proc || b->pos >= b->nslots)
		return 1;
	if (b->pos >= b->chunk_end && batch_fill(b))
		goto bad;
	cur = b->pos - b->chunk_start;
	if (cur >= AT_BATCH_CHUNK)
		goto bad;
	rec = rec_at(b, cur, 0);
	n = rec->nslots;
	if (n == 0 || n > AT_REC_MAX_SLOTS || b->pos + n > b->nslots)
		goto bad;
	if (b->pos + n > b->chunk_end) {
		/* Only part of the record was copied: copy again from its start. */
		if (batch_fill(b))
			goto bad;
		cur = 0;
		rec = rec_at(b, 0, 0);
		if (rec->nslots != n)
			goto bad; /* changed under us: the runtime broke the protocol */
	}
	switch (rec->type) {
	case AT_REC_CREATE:
		err = batch_create(b, proc, cur, n);
		break;
	case AT_REC_STEP:
		err = batch_step(b, proc, cur, n);
		break;
	case AT_REC_STACK:
		err = batch_stack(b, proc, cur, n);
		break;
	case AT_REC_TIMING:
	case AT_REC_CODE:
		err = batch_timing(b, proc, cur, n);
		break;
	case AT_REC_LOOP:
		err = batch_loop(b, proc, cur, n);
		break;
	case AT_REC_STEP_TIMED:
	case AT_REC_SAMPLE:
		err = batch_event(b, proc, cur, n);
		break;
	default:
		err = batch_other(b, proc, cur, n);
		break;
	}
	if (err)
		goto bad;
	b->pos += n;
	b->nrec++;
	return 0;
bad:
	__sync_fetch_and_add(&proc->bad_records, 1);
	return 1;
}

SEC("usdt")
int BPF_USDT(batch_flush, __u64 recs, __u64 nslots, __u64 dropped)
{
	struct batch_ctx x = {};
	struct batch_buf *b;
	__u32 pid = current_tgid();

	x.proc = proc_for_event(pid);
	if (!x.proc)
		return 0;
	if (dropped > x.proc->drop_runtime)
		x.proc->drop_runtime = dropped;
	b = slot_claim(&batch_bufs, 2);
	if (!b) {
		/* Two batches already run on this CPU (preempted): not ours. */
		__sync_fetch_and_add(&x.proc->bad_records, 1);
		return 0;
	}
	x.buf = b;
	b->base = recs;
	b->pid = pid;
	b->pos = 0;
	b->chunk_start = 0;
	b->chunk_end = 0;
	b->nrec = 0;
	b->nslots = nslots > (1u << 20) ? (1u << 20) : (__u32)nslots;
	if (recs && b->nslots)
		bpf_loop(b->nslots, batch_record, &x, 0);
	/* proc_for_event counted the probe hit; count the records instead. */
	if (b->nrec)
		__sync_fetch_and_add(&x.proc->events, b->nrec - 1);
	slot_release(b);
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
	s = scratch_claim();
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
	slot_release(s);
	if (err)
		__sync_fetch_and_add(&proc->drop_codes_full, 1);
	return 0;
}

SEC("usdt")
int BPF_USDT(replay_begin, __u64 gen)
{
	/* Nothing to reset: replayed events merge into what we have. Stacks
	 * it interns are tagged with its generation (stack GC keeps them). */
	struct at_proc *proc = proc_for_event(current_tgid());

	if (proc)
		proc->replay_active = gen;
	return 0;
}

SEC("usdt")
int BPF_USDT(replay_end, __u64 gen, __u64 ntasks)
{
	struct at_proc *proc;

	proc = proc_for_event(current_tgid());
	if (!proc)
		return 0;
	if (test_reject) {
		__u32 i = bpf_get_prandom_u32();

		proc->step_max_ns[i] = 1;
	}
	if (require_begin && proc->replay_active != gen)
		return 0; /* began before we attached: wait for one we see whole */
	proc->replay_tasks = ntasks;
	/* Written last: user space polls replay_gen, then reads replay_tasks. */
	proc->replay_gen = gen;
	return 0;
}
