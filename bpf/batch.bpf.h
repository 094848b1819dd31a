/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * batch.bpf.h owns the batch__flush path's reading of a runtime's records:
 * copying them from the process in chunks, bounding every record access
 * (rec_at), and the global functions that apply the task records (CREATE,
 * STEP, STACK, COMPLETE, EDGES, RESUME). Part of asynctrace.bpf.c: included
 * after apply.bpf.h; the record loop (batch_record) and the program are there.
 */
#ifndef ASYNCTRACE_BATCH_BPF_H
#define ASYNCTRACE_BATCH_BPF_H

/* ---- batch__flush: records buffered by the runtime ------------------------
 *
 * The records are copied from the process AT_BATCH_CHUNK slots at a time
 * into a per-CPU buffer and applied in order by one bpf_loop callback per
 * record, with the same apply_* code as the per-event programs. A record is
 * never split across copies: a chunk starts at a record boundary, and a
 * record that does not fit entirely is copied again at the start of the next
 * chunk (the buffer, struct batch_buf, is in maps.bpf.h).
 *
 * Payloads are read by field through the views of
 * include/asynctrace/records.h: rec_at(buf, cur, k) is slot k of the record
 * at cur, a union asynctrace_slot (.hdr, .create, .frames, ...). */

/* &buf->slots[cur + k], for a record start cur (< AT_BATCH_CHUNK, checked by
 * the caller) and a constant k < ASYNCTRACE_REC_MAX_SLOTS. cur is bounded again
 * here, at the use, by a mask: the 6.1 verifier lost the caller's check when
 * clang spilled cur and used another reload of it. barrier_var() keeps clang
 * from dropping the mask as redundant with that check. */
static __always_inline union asynctrace_slot *rec_at(struct batch_buf *buf, __u32 cur, __u32 k)
{
	__u64 i = cur;

	barrier_var(i);
	i &= AT_BATCH_CHUNK - 1;
	return &buf->slots[i + k];
}

/* Copies up to AT_BATCH_CHUNK slots from the process, starting at pos. */
static __always_inline int batch_fill(struct batch_buf *b)
{
	__u32 cnt = bounded_len(b->nslots - b->pos, AT_BATCH_CHUNK);

	if (!cnt)
		return -1;
	if (bpf_probe_read_user(b->slots, cnt * sizeof(union asynctrace_slot),
				(const void *)(b->base + (__u64)b->pos * sizeof(union asynctrace_slot))))
		return -1;
	b->chunk_start = b->pos;
	b->chunk_end = b->pos + cnt;
	return 0;
}

/* Interns the AT_MAX_FRAMES frames from slot `first` on (the payload of a
 * STACK or SAMPLE record, two frames a slot; nf of them valid) as stack_id,
 * and points `task` at it if there is one. */
static __always_inline void frames_intern(struct at_proc *proc, __u32 pid,
					  const union asynctrace_slot *first, __u32 nf,
					  __u64 stack_id, struct at_task *task)
{
	struct scratch *s = scratch_claim();

	if (!s)
		return;
	__builtin_memcpy(s->stack.frames, first->frames, sizeof(s->stack.frames));
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
	struct asynctrace_rec_create *c;
	struct asynctrace_rec *rec;
	__u32 avail;

	if (!proc || !buf || cur >= AT_BATCH_CHUNK || n < 2 || n > ASYNCTRACE_REC_MAX_SLOTS)
		return -1;
	rec = &rec_at(buf, cur, 0)->hdr;
	c = &rec_at(buf, cur, 1)->create;
	avail = (n - 2) * sizeof(union asynctrace_slot);
	apply_create(proc, buf->pid, rec->a, rec->b, rec->c, c->tid,
		     (__u64)rec_at(buf, cur, 2)->bytes, rec->len, c->code_id,
		     c->kept < avail ? c->kept : avail, true);
	if (c->edge_kind)  /* an EDGE_ADD the runtime folded into the create */
		apply_edge_add(proc, buf->pid, rec->a, c->edge_awaiter, c->edge_kind - 1, true);
	return 0;
}

__noinline int batch_step(struct batch_buf *buf, struct at_proc *proc, __u32 cur, __u32 n)
{
	struct asynctrace_rec *rec;

	if (!proc || !buf || cur >= AT_BATCH_CHUNK || n == 0)
		return -1;
	rec = &rec_at(buf, cur, 0)->hdr;
	/* No frames: stacks come with the replay (STACK records). */
	apply_await(proc, buf->pid, rec->a, rec->b, rec->kind, true);
	return 0;
}

__noinline int batch_stack(struct batch_buf *buf, struct at_proc *proc, __u32 cur, __u32 n)
{
	struct at_task *task;
	struct asynctrace_rec *rec;
	__u32 nf;

	if (!proc || !buf || cur >= AT_BATCH_CHUNK || n < 1 || n > ASYNCTRACE_REC_MAX_SLOTS)
		return -1;
	rec = &rec_at(buf, cur, 0)->hdr;
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
	struct asynctrace_rec *rec;

	if (!proc || !buf || cur >= AT_BATCH_CHUNK || n == 0)
		return -1;
	rec = &rec_at(buf, cur, 0)->hdr;
	switch (rec->type) {
	case ASYNCTRACE_REC_COMPLETE:
		apply_complete(proc, buf->pid, rec->a);
		break;
	case ASYNCTRACE_REC_EDGE_ADD:
		apply_edge_add(proc, buf->pid, rec->a, rec->b, rec->kind, true);
		break;
	case ASYNCTRACE_REC_EDGE_REMOVE:
		apply_edge_remove(proc, buf->pid, rec->a, rec->b);
		break;
	case ASYNCTRACE_REC_RESUME:
		apply_resume(proc, buf->pid, rec->a, true);
		break;
	default:
		break; /* PAD, or a newer record type: skipped by its length */
	}
	return 0;
}

#endif /* ASYNCTRACE_BATCH_BPF_H */
