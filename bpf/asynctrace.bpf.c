// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * asynctrace kernel side: one USDT program per probe of
 * include/asynctrace/probes.h, keeping the live task graph of the traced
 * process in maps that user space (user/kernel/maps.cpp) reads on demand.
 *
 * One object, cut into headers by role (included below, in this order):
 *   maps.bpf.h    the maps, the loader's globals, per-CPU slot claims, procs;
 *   apply.bpf.h   what an event does to tasks, edges and stacks (both paths);
 *   batch.bpf.h   reading a batch__flush batch, the task records;
 *   timing.bpf.h  the timing records (TIMING, CODE, LOOP, STEP_TIMED, SAMPLE).
 * This file holds the entry points: the per-event programs, the batch record
 * loop (batch_record) and batch_flush, code_register and the replay probes.
 * Layouts: the records a runtime writes are include/asynctrace/records.h,
 * read by field (union asynctrace_slot); a stack's id is
 * include/asynctrace/stack_hash.h; the maps' keys and values are abi.h.
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
#include "asynctrace/stack_hash.h"

#include "maps.bpf.h"
#include "apply.bpf.h"
#include "batch.bpf.h"
#include "timing.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* ---- per-event programs: one per probe -------------------------------------- */

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
	/* struct at_stack keeps the frames as the runtime sends them (struct
	 * asynctrace_frame), so the array is copied as is. */
	__builtin_memset(&s->stack, 0, sizeof(s->stack));
	if (!bpf_probe_read_user(s->stack.frames, n * sizeof(struct asynctrace_frame), (const void *)frames_ptr)) {
		s->stack.nframes = n;
		task_set_stack(proc, pid, task, &s->stack, asynctrace_stack_hash(s->stack.frames, n));
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

/* ---- batch__flush: the record loop and the program ------------------------ */

static long batch_record(__u64 index, struct batch_ctx *x)
{
	struct batch_buf *b = x->buf;
	struct at_proc *proc = x->proc;
	struct asynctrace_rec *rec;
	__u32 cur, n;
	int err;

	if (!b || !proc || b->pos >= b->nslots)
		return 1;
	if (b->pos >= b->chunk_end && batch_fill(b))
		goto bad;
	cur = b->pos - b->chunk_start;
	if (cur >= AT_BATCH_CHUNK)
		goto bad;
	rec = &rec_at(b, cur, 0)->hdr;
	n = rec->nslots;
	if (n == 0 || n > ASYNCTRACE_REC_MAX_SLOTS || b->pos + n > b->nslots)
		goto bad;
	if (b->pos + n > b->chunk_end) {
		/* Only part of the record was copied: copy again from its start. */
		if (batch_fill(b))
			goto bad;
		cur = 0;
		rec = &rec_at(b, 0, 0)->hdr;
		if (rec->nslots != n)
			goto bad; /* changed under us: the runtime broke the protocol */
	}
	switch (rec->type) {
	case ASYNCTRACE_REC_CREATE:
		err = batch_create(b, proc, cur, n);
		break;
	case ASYNCTRACE_REC_STEP:
		err = batch_step(b, proc, cur, n);
		break;
	case ASYNCTRACE_REC_STACK:
		err = batch_stack(b, proc, cur, n);
		break;
	case ASYNCTRACE_REC_TIMING:
	case ASYNCTRACE_REC_CODE:
		err = batch_timing(b, proc, cur, n);
		break;
	case ASYNCTRACE_REC_LOOP:
		err = batch_loop(b, proc, cur, n);
		break;
	case ASYNCTRACE_REC_STEP_TIMED:
	case ASYNCTRACE_REC_SAMPLE:
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
