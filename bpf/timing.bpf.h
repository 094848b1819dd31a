/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * timing.bpf.h owns the timing records of the batch path: TIMING and CODE
 * (sums in the timing and code_timing maps), LOOP (process totals in procs)
 * and STEP_TIMED / SAMPLE (stacks interned, forwarded to the events ring).
 * Part of asynctrace.bpf.c: included after batch.bpf.h.
 */
#ifndef ASYNCTRACE_TIMING_BPF_H
#define ASYNCTRACE_TIMING_BPF_H

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
	const struct asynctrace_rec_timing *slot1;
	const struct asynctrace_rec *rec;
	const asynctrace_u8 *hist;
	struct at_timing *t;

	if (!proc || !buf || cur >= AT_BATCH_CHUNK || n != 3)
		return -1;
	rec = &rec_at(buf, cur, 0)->hdr;
	slot1 = &rec_at(buf, cur, 1)->timing;
	hist = rec_at(buf, cur, 2)->hist;
	/* at_code_key has at_task_key's layout: (pid, pad, id). */
	key.pid = buf->pid;
	key.task_id = rec->a;
	if (rec->type == ASYNCTRACE_REC_TIMING) {
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
	if (slot1->max_ns > t->max_ns)
		t->max_ns = slot1->max_ns;
	if (slot1->last_end_ns > t->last_end_ns)
		t->last_end_ns = slot1->last_end_ns;
#pragma unroll
	for (int i = 0; i < AT_HIST_BUCKETS; i++)
		t->hist[i] += hist[i];
	return 0;
}

/* LOOP: the runtime's process totals, and the longest step per second. */
__noinline int batch_loop(struct batch_buf *buf, struct at_proc *p, __u32 cur, __u32 n)
{
	const struct asynctrace_rec_loop *slot1;
	const struct asynctrace_rec *rec;
	__u64 sec, i;

	if (!p || !buf || cur >= AT_BATCH_CHUNK || n != 2)
		return -1;
	rec = &rec_at(buf, cur, 0)->hdr;
	slot1 = &rec_at(buf, cur, 1)->loop;
	p->tasks_created = rec->a;
	p->tasks_completed = rec->b;
	p->steps = rec->c;
	p->busy_ns = slot1->busy_ns;
	p->loop_at_ns = slot1->at_ns;
	p->timing_since_ns = slot1->since_ns;
	sec = slot1->at_ns / 1000000000ull;
	/* sec % AT_MAX_SECS, as a mask at the use (see rec_at). */
	i = sec;
	barrier_var(i);
	i &= AT_MAX_SECS - 1;
	if (p->step_max_sec[i] != sec) {
		p->step_max_sec[i] = sec;
		p->step_max_ns[i] = 0;
	}
	if (slot1->max_step_ns > p->step_max_ns[i])
		p->step_max_ns[i] = slot1->max_step_ns;
	return 0;
}

/* STEP_TIMED and SAMPLE: SAMPLE frames are interned in `stacks`; both are
 * forwarded to the events ring when a reader asked for them. */
__noinline int batch_event(struct batch_buf *buf, struct at_proc *proc, __u32 cur, __u32 n)
{
	struct at_task_key key = {};
	struct at_event *ev;
	struct at_task *task;
	const struct asynctrace_rec *rec;
	__u64 awaiter, edge;
	__u32 nf;

	if (!proc || !buf || cur >= AT_BATCH_CHUNK || n < 1 || n > ASYNCTRACE_REC_MAX_SLOTS)
		return -1;
	rec = &rec_at(buf, cur, 0)->hdr;
	if (rec->type == ASYNCTRACE_REC_SAMPLE) {
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
	__builtin_memcpy(&ev->rec, rec, sizeof(ev->rec));
	if (rec->type == ASYNCTRACE_REC_STEP_TIMED) {
		const union asynctrace_slot *slot1 = rec_at(buf, cur, 1);

		__builtin_memcpy(&ev->slot1, slot1, sizeof(ev->slot1));
		ev->task_code = slot1->step_timed.task_code;
	} else {
		__builtin_memset(&ev->slot1, 0, sizeof(ev->slot1));
		ev->task_code = 0;
	}
	key.pid = buf->pid;
	key.task_id = rec->a;
	task = bpf_map_lookup_elem(&tasks, &key);
	if (task) {
		__builtin_memcpy(ev->name, task->name, AT_NAME_LEN);
		ev->name_len = task->name_len ? task->name_len : 1;
		/* Which task at this address: a step's record comes before its
		 * COMPLETE deletes the entry, and a replay keeps create_ns. */
		ev->task_gen = task->create_ns;
		if (!ev->task_code)
			ev->task_code = task->coro_code_id;
		/* Who awaits it, and which task at that address: a plain awaiter
		 * while it still awaits this task (its own state says so), else
		 * the first edge awaiter (TaskGroup, gather). */
		awaiter = task->awaiter_id;
		edge = task->awaited_by[0];
		ev->awaiter_id = 0;
		ev->awaiter_gen = 0;
		if (awaiter) {
			key.task_id = awaiter;
			task = bpf_map_lookup_elem(&tasks, &key);
			if (task && task->awaiting_id == rec->a) {
				ev->awaiter_id = awaiter;
				ev->awaiter_gen = task->create_ns;
			}
		}
		if (!ev->awaiter_id && edge) {
			key.task_id = edge;
			task = bpf_map_lookup_elem(&tasks, &key);
			if (task) {
				ev->awaiter_id = edge;
				ev->awaiter_gen = task->create_ns;
			}
		}
	} else {
		__builtin_memset(ev->name, 0, AT_NAME_LEN);
		ev->name_len = 0;
		ev->task_gen = 0;
		ev->awaiter_id = 0;
		ev->awaiter_gen = 0;
	}
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

#endif /* ASYNCTRACE_TIMING_BPF_H */
