/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * maps.bpf.h owns the object's state: every map (tasks, codes, stacks, procs,
 * timing, code_timing, the events ring, and the scratch and batch buffers),
 * the globals the loader sets or reads, the per-CPU slot claims, and the
 * procs entry every event starts from. Part of asynctrace.bpf.c (one object):
 * included first, after the libbpf headers and abi.h.
 */
#ifndef ASYNCTRACE_MAPS_BPF_H
#define ASYNCTRACE_MAPS_BPF_H

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

/* ---- the batch buffers (batch.bpf.h reads them) ---------------------------- */

/* Slots read from the process per copy. The buffer has
 * ASYNCTRACE_REC_MAX_SLOTS spare slots so that the constant-offset payload
 * accesses of batch.bpf.h stay inside it for any record start the verifier
 * allows. */
#define AT_BATCH_CHUNK 128

/* State of one batch: in the per-CPU map value, not on the stack, so that
 * the verifier does not track its values precisely through the bpf_loop
 * callback (it would then verify the callback once per iteration value). */
struct batch_buf {
	__u32 busy;       /* claimed by a batch running on this CPU (slot_claim) */
	__u32 nslots;
	__u64 base;       /* user address of slot 0 */
	__u32 pos;        /* next record, in slots from base */
	__u32 chunk_start;
	__u32 chunk_end;  /* slots [chunk_start, chunk_end) are in slots[] */
	__u32 pid;
	__u32 nrec;       /* records applied */
	__u32 pad;
	union asynctrace_slot slots[AT_BATCH_CHUNK + ASYNCTRACE_REC_MAX_SLOTS];
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

#endif /* ASYNCTRACE_MAPS_BPF_H */
