/* SPDX-License-Identifier: Apache-2.0 */
/*
 * asynctrace record layouts: the one definition of every structure a runtime
 * hands a tracer (frames, batch records and their payload slots) and of the
 * kinds and record types they carry. Shared by runtimes (through probes.h),
 * the BPF programs (bpf/) and the tool (user/), which checks every offset
 * (user/core/abi_check.cpp).
 *
 * No dependencies: fixed-width fields typed with the compiler's own
 * __UINT*_TYPE__ (the types <stdint.h> calls uint8_t .. uint64_t), so this
 * header compiles as BPF C (no libc), plain C and C++. docs/probes.md
 * describes the records.
 */
#ifndef ASYNCTRACE_RECORDS_H
#define ASYNCTRACE_RECORDS_H

typedef __UINT8_TYPE__ asynctrace_u8;
typedef __UINT16_TYPE__ asynctrace_u16;
typedef __UINT32_TYPE__ asynctrace_u32;
typedef __UINT64_TYPE__ asynctrace_u64;

/* One coroutine frame of a suspended task, innermost first in arrays. */
struct asynctrace_frame {
	asynctrace_u64 code_id; /* registered with code__register before first use */
	asynctrace_u32 line;    /* current line of the frame, 0 if unknown */
	asynctrace_u32 flags;   /* ASYNCTRACE_FRAME_* */
};

#define ASYNCTRACE_FRAME_TRUNCATED 1u /* more frames existed beyond this one */
#define ASYNCTRACE_MAX_FRAMES 32      /* runtimes never send more */

/* task__await: what the task is suspended on. */
enum asynctrace_await_kind {
	ASYNCTRACE_AWAIT_NONE = 0,    /* bare yield (e.g. sleep(0)): rescheduled */
	ASYNCTRACE_AWAIT_TASK = 1,    /* awaited_id is another task */
	ASYNCTRACE_AWAIT_FUTURE = 2,  /* a plain future */
	ASYNCTRACE_AWAIT_GATHER = 3,  /* a gather() future; children via edge__add */
	ASYNCTRACE_AWAIT_RUNNING = 4, /* replay only: the task is running now */
};

/* task__complete outcomes. */
enum asynctrace_outcome {
	ASYNCTRACE_OUTCOME_RESULT = 0,
	ASYNCTRACE_OUTCOME_EXCEPTION = 1,
	ASYNCTRACE_OUTCOME_CANCELLED = 2,
	ASYNCTRACE_OUTCOME_DESTROYED = 3, /* freed while still pending */
};

/*
 * Batched events (probe batch__flush). A runtime may record events as 32-byte
 * records in its own memory and fire one probe per batch instead of one per
 * event: a uprobe trap costs about as much as a whole asyncio step, so
 * per-event probes cannot be cheap on a hot path. A record means exactly what
 * the per-event probe of the same name means; tracers may attach either form
 * (the CPython runtime feeds each form only while it has a tracer).
 *
 * Every record starts with this header; payload slots follow it. Records are
 * contiguous in a batch and never split.
 */
struct asynctrace_rec {
	asynctrace_u8 type;    /* ASYNCTRACE_REC_* */
	asynctrace_u8 kind;    /* await kind, outcome or edge kind, per type */
	asynctrace_u16 nslots; /* 32-byte slots this record takes, header included, >= 1 */
	asynctrace_u32 len;    /* CREATE: name length as sent; STACK: nframes */
	asynctrace_u64 a;      /* task id (child id for edges) */
	asynctrace_u64 b;      /* CREATE: parent id; STEP/STACK: awaited id; edges: awaiter id */
	asynctrace_u64 c;      /* CREATE: loop id; STACK: stack id (a hash of the frames, 0 if none); others 0 */
};

/* Slot 1 of a CREATE record; the name's bytes follow from slot 2 on
 * (min(len, ASYNCTRACE_REC_NAME_MAX) bytes, zero padded). */
struct asynctrace_rec_create {
	asynctrace_u64 code_id;      /* coroutine code id, 0 if none (or: keep) */
	asynctrace_u32 tid;          /* OS thread id of the task's loop; never 0 in a record */
	asynctrace_u32 kept;         /* name bytes present in this record */
	asynctrace_u64 edge_awaiter; /* an EDGE_ADD(task, edge_awaiter, edge_kind - 1) folded in, */
	asynctrace_u32 edge_kind;    /* applied after the create; edge_kind 0 = none */
	asynctrace_u32 reserved;
};

enum asynctrace_rec_type {
	ASYNCTRACE_REC_PAD = 0,      /* skip nslots */
	ASYNCTRACE_REC_CREATE = 1,   /* = task__create; 2 + ceil(kept / 32) slots */
	ASYNCTRACE_REC_STEP = 2,     /* = task__resume + task__await without frames (kind = await kind) */
	ASYNCTRACE_REC_COMPLETE = 3, /* = task__complete (kind = outcome) */
	ASYNCTRACE_REC_EDGE_ADD = 4, /* = edge__add (kind = edge kind) */
	ASYNCTRACE_REC_EDGE_REMOVE = 5, /* = edge__remove */
	ASYNCTRACE_REC_STACK = 6,    /* = task__await with frames: len frames follow, two per slot;
				      * c identifies the frames: equal frames, equal id (FNV-1a 64 over
				      * code_id, then flags << 32 | line, per frame: stack_hash.h) */
	ASYNCTRACE_REC_RESUME = 7,   /* = task__resume */
	/* Timing records (docs/probes.md "Timing"): written only while a tracer
	 * holds timing__on (TIMING, CODE, LOOP, slow STEP_TIMED, SAMPLE) or
	 * steps__on (also a STEP_TIMED for every step). Times are CLOCK_MONOTONIC
	 * nanoseconds (bpf_ktime_get_ns()'s clock). */
	ASYNCTRACE_REC_TIMING = 8,   /* per-task deltas since its last TIMING: 3 slots, see below */
	ASYNCTRACE_REC_CODE = 9,     /* per-coroutine deltas (all tasks of code_id): 3 slots */
	ASYNCTRACE_REC_LOOP = 10,    /* process-wide totals since timing__on: 2 slots */
	ASYNCTRACE_REC_STEP_TIMED = 11, /* one step: 2 slots */
	ASYNCTRACE_REC_SAMPLE = 12,  /* the thread's Python stack during a step (plain functions
				      * included), innermost first, down to the task's coroutine:
				      * like STACK (len frames follow, c = their id), a = task,
				      * b = sample time, kind = 0 */
};

/* TIMING: header { type, kind = 0, nslots = 3, len = steps, a = task id,
 * b = busy ns (sum of step durations), c = scheduled ns (ready to resumed) },
 * then this slot, then hist: steps by duration, bucket i counting steps of
 * [2^i, 2^(i+1)) us (bucket 0 also < 1 us), 255 at most per record.
 * CODE: the same three slots with a = the code id (and slot1.task_code = it). */
struct asynctrace_rec_timing {
	asynctrace_u64 max_ns;      /* longest step among these */
	asynctrace_u64 last_end_ns; /* end of the task's last step */
	asynctrace_u64 task_code;   /* coroutine code id of the task */
	asynctrace_u64 reserved;
};
#define ASYNCTRACE_HIST_BUCKETS 32

/* LOOP: header { type, nslots = 2, a = tasks created, b = tasks completed,
 * c = steps } (totals since timing__on rose), then: */
struct asynctrace_rec_loop {
	asynctrace_u64 busy_ns;     /* total time in steps up to at_ns, the part of the steps in
				     * progress at at_ns included (ABI 4; before: ended steps only),
				     * outermost steps only (a step nested in another is not counted
				     * twice). Summed over the process's loop threads: between two
				     * LOOP records it grows by at most their distance times the
				     * number of threads running steps. */
	asynctrace_u64 max_step_ns; /* longest step since the previous LOOP record */
	asynctrace_u64 at_ns;       /* when this record was written */
	asynctrace_u64 since_ns;    /* when the runtime started counting */
};

/* STEP_TIMED: header { type, kind = ASYNCTRACE_STEP_*, nslots = 2, len = tid,
 * a = task id, b = step start, c = duration ns }, then: */
struct asynctrace_rec_step_timed {
	asynctrace_u64 start_stack; /* stack id where the task resumed (0: unknown) */
	asynctrace_u64 end_stack;   /* stack id where it suspended (0: completed or unknown) */
	asynctrace_u32 nsamples;    /* SAMPLE records taken during the step (written before this) */
	asynctrace_u32 reserved;
	asynctrace_u64 task_code;
};
#define ASYNCTRACE_STEP_COMPLETED 1u /* the task finished in this step */
#define ASYNCTRACE_STEP_SLOW 2u      /* longer than the runtime's slow floor */

#define ASYNCTRACE_REC_NAME_MAX 64 /* name bytes a CREATE record carries at most */
#define ASYNCTRACE_REC_MAX_SLOTS 18 /* largest record: STACK or SAMPLE with 32 frames (+1 spare) */

/* edge__add kinds: why awaiter waits on child besides a direct await. */
enum asynctrace_edge_kind {
	ASYNCTRACE_EDGE_AWAIT = 0,     /* direct await (tracers derive it from task__await) */
	ASYNCTRACE_EDGE_GATHER = 1,    /* child of a gather() the awaiter awaits, or of its asyncio.wait() */
	ASYNCTRACE_EDGE_TASKGROUP = 2, /* child of a TaskGroup owned by the awaiter */
	ASYNCTRACE_EDGE_SHIELD = 3,    /* inner of a shield() the awaiter awaits */
};

/*
 * Named views of a record's slots. A batch is an array of 32-byte slots: a
 * record is its header slot followed by nslots - 1 payload slots, whose layout
 * depends on the record's type. union asynctrace_slot names every layout a
 * slot can have, so a tracer reads payloads by field, not by index:
 *
 *   slot[0].hdr                  every record
 *   slot[1].create               CREATE; name bytes from slot[2].bytes on
 *   slot[1..].frames             STACK, SAMPLE: two frames per slot
 *   slot[1].timing, slot[2].hist TIMING, CODE
 *   slot[1].loop                 LOOP
 *   slot[1].step_timed           STEP_TIMED
 */
union asynctrace_slot {
	struct asynctrace_rec hdr;
	struct asynctrace_rec_create create;
	struct asynctrace_frame frames[2];
	struct asynctrace_rec_timing timing;
	asynctrace_u8 hist[ASYNCTRACE_HIST_BUCKETS];
	struct asynctrace_rec_loop loop;
	struct asynctrace_rec_step_timed step_timed;
	char bytes[32];
};

#define ASYNCTRACE_SLOT_SIZE 32 /* bytes of one slot (sizeof(union asynctrace_slot)) */

#endif /* ASYNCTRACE_RECORDS_H */
