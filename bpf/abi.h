/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The map layouts: the keys and values the BPF programs (bpf/) keep and the
 * C++ tool (user/) reads, and nothing else. What a runtime hands a tracer
 * (frames, batch records) is defined once, in include/asynctrace/records.h;
 * the maps reuse it (struct asynctrace_frame in a stack, the record header in
 * an event). Fixed-width fields only, explicit padding; user/core/abi_check.cpp
 * static_asserts every size and offset. Map keys carry the pid so one set of
 * maps holds many processes.
 */
#ifndef ASYNCTRACE_BPF_ABI_H
#define ASYNCTRACE_BPF_ABI_H

#ifndef __VMLINUX_H__
/* The kernel's own definitions: libbpf's headers include them too, and a
 * second typedef of __u64 as uint64_t (unsigned long) would conflict with
 * their unsigned long long. */
#include <linux/types.h>
#endif

#include "asynctrace/records.h"

#define AT_NAME_LEN 64        /* bytes of a task name kept */
#define AT_QUALNAME_LEN 96    /* bytes of a code qualname kept */
#define AT_FILENAME_LEN 160   /* bytes of a code filename kept */
#define AT_MAX_FRAMES ASYNCTRACE_MAX_FRAMES /* frames kept per stack: all a runtime sends */
#define AT_MAX_AWAITERS 4     /* gather/TaskGroup/shield awaiters kept per task */

#define AT_MAX_TASKS 131072   /* tasks map capacity (all processes) */
#define AT_MAX_CODES 65536    /* code map capacity */
#define AT_MAX_STACKS 65536   /* distinct stacks (interned) */
#define AT_MAX_PROCS 1024
#define AT_HIST_BUCKETS ASYNCTRACE_HIST_BUCKETS
#define AT_MAX_SECS 8

/* task states */
enum at_task_state {
	AT_STATE_CREATED = 0,   /* created, no step seen yet */
	AT_STATE_RUNNING = 1,   /* inside a step */
	AT_STATE_SUSPENDED = 2, /* step ended, task awaits something */
};

struct at_task_key {
	__u32 pid;
	__u32 pad;
	__u64 task_id;
};

/* 168 bytes: with the hash map's per-element overhead (~72 bytes) and its
 * buckets, about 260 bytes of kernel memory per live task. The task id is the
 * key's; creation order is create_ns. */
struct at_task {
	__u64 parent_id;       /* task running at creation, 0 if none */
	__u64 loop_id;
	__u64 coro_code_id;
	__u64 create_ns;       /* bpf_ktime_get_ns() at create (or replay); orders tasks */
	__u64 awaiting_id;     /* what the task awaits (task__await) */
	__u64 stack_id;        /* key of its frames in `stacks`, 0 = none */
	__u64 awaited_by[AT_MAX_AWAITERS]; /* edge__add awaiters, 0 = empty slot */
	__u8 awaited_by_kind[AT_MAX_AWAITERS];
	__u32 tid;             /* thread of the task's loop */
	__u32 name_len;        /* full length as sent (may exceed AT_NAME_LEN) */
	__u8 state;            /* enum at_task_state */
	__u8 awaiting_kind;    /* enum asynctrace_await_kind */
	__u8 nframes;          /* frames of its stack (0: none known) */
	__u8 flags;            /* AT_TASK_* */
	char name[AT_NAME_LEN];
	__u64 awaiter_id;      /* the task awaiting this one (its task__await named this
				* task, ASYNCTRACE_AWAIT_TASK), 0 if none: the reverse of
				* awaiting_id, so an event of this task can name its awaiter */
};

/* Stacks are interned: tasks suspended at the same place share one entry.
 * stack_id is a hash of the frames (the runtime's on the batch path). */
struct at_stack_key {
	__u32 pid;
	__u32 pad;
	__u64 stack_id;
};

struct at_stack {
	__u32 nframes;
	__u32 pad;
	__u64 gen;             /* replay generation that last used it (stack GC) */
	struct asynctrace_frame frames[AT_MAX_FRAMES]; /* innermost first, as sent */
};

#define AT_TASK_NAMELESS 1u       /* entry created by an event before task__create */
#define AT_TASK_FRAMES_TRUNC 2u   /* runtime sent more frames than kept */
#define AT_TASK_AWAITERS_FULL 4u  /* an edge__add did not fit */

struct at_code_key {
	__u32 pid;
	__u32 pad;
	__u64 code_id;
};

struct at_code {
	__u32 qualname_len;    /* full lengths as sent */
	__u32 filename_len;
	__u32 firstlineno;
	__u32 pad;
	char qualname[AT_QUALNAME_LEN];
	char filename[AT_FILENAME_LEN];
};

/* Per-process bookkeeping, key = pid. */
struct at_proc {
	__u64 replay_gen;      /* last replay__end generation seen, 0 = none */
	__u64 replay_tasks;    /* ntasks of that replay */
	__u64 events;          /* probe hits accepted */
	__u64 drop_tasks_full; /* task entries that did not fit */
	__u64 drop_codes_full;
	__u64 drop_edges_full;
	__u64 unknown_task;    /* events for a task never created (late attach gap) */
	__u64 drop_runtime;    /* records the runtime could not buffer (batch__flush) */
	__u64 bad_records;     /* malformed batch records (batch rest skipped) */
	__u64 drop_stacks_full;
	__u64 replay_active;   /* generation of the replay in progress (replay__begin) */
	/* Timing (LOOP records, while a tracer holds timing__on): the runtime's
	 * totals since it started counting at timing_since_ns. */
	__u64 timing_since_ns;
	__u64 loop_at_ns;      /* time of the last LOOP record */
	__u64 tasks_created;
	__u64 tasks_completed;
	__u64 steps;
	__u64 busy_ns;
	__u64 drop_events;     /* STEP_TIMED/SAMPLE events the events ring had no room for */
	__u64 drop_timing_full;
	/* Longest step per second of CLOCK_MONOTONIC, the last AT_MAX_SECS seconds:
	 * slot sec % AT_MAX_SECS holds second step_max_sec[] */
	__u64 step_max_ns[AT_MAX_SECS];
	__u64 step_max_sec[AT_MAX_SECS];
};

/* Timing of one task (key at_task_key) or one coroutine (key at_code_key),
 * since timing__on: sums of the runtime's TIMING / CODE records. */
struct at_timing {
	__u64 steps;
	__u64 busy_ns;         /* time in steps */
	__u64 sched_ns;        /* runnable, not yet resumed (where the runtime can tell) */
	__u64 max_ns;          /* longest step */
	__u64 last_end_ns;     /* end of the last step (tasks) */
	__u64 first_ns;        /* when this entry was created (bpf_ktime_get_ns) */
	__u32 hist[AT_HIST_BUCKETS]; /* steps of [2^i, 2^(i+1)) us; bucket 0 also < 1 us */
};

/* Forwarded to user space through the `events` ring buffer (tracers that
 * set forward_events): STEP_TIMED and SAMPLE records, with the task's name. */
struct at_event {
	__u32 pid;
	__u32 name_len;        /* 0: task unknown to the tracer */
	__u64 ktime;           /* when the BPF program saw it */
	struct asynctrace_rec rec;   /* the record's header */
	union asynctrace_slot slot1; /* STEP_TIMED: its slot 1 (.step_timed); SAMPLE: zeroes */
	__u64 task_code;       /* the task's coroutine code id, if known */
	__u64 task_gen;        /* the task entry's create_ns, 0 if unknown: task ids are
				* addresses, reused once a task dies; (id, gen) is one task */
	__u64 awaiter_id;      /* the task awaiting it: awaiter_id, else its first
				* edge awaiter (TaskGroup, gather); 0 if none */
	__u64 awaiter_gen;     /* that task's create_ns, 0 if unknown */
	char name[AT_NAME_LEN];
};

#endif /* ASYNCTRACE_BPF_ABI_H */
