/* SPDX-License-Identifier: Apache-2.0 */
/*
 * asynctrace probe ABI: USDT probes any coroutine runtime can emit.
 *
 * Provider: "asynctrace". Every argument is a 64-bit integer or a pointer into
 * the emitting process. Strings are (pointer, length) pairs: they may contain
 * NUL bytes and need not be NUL-terminated; tracers read at most what they keep.
 * All ids are opaque 64-bit values unique among the live objects of one process
 * (CPython uses the object's address, i.e. id(obj)).
 *
 * Each probe has a USDT semaphore. It is non-zero exactly while a tracer is
 * attached, so a runtime computes arguments only inside
 *     if (ASYNCTRACE_TASK_AWAIT_ENABLED()) { ... ASYNCTRACE_TASK_AWAIT(...); }
 * and pays one predictable branch when nobody listens.
 *
 * Exactly one translation unit of an emitting binary must define
 * ASYNCTRACE_DEFINE_SEMAPHORES before including this header.
 *
 * Argument lists are stable: new information gets new probes, never new
 * arguments on old ones. See docs/probes.md.
 */
#ifndef ASYNCTRACE_PROBES_H
#define ASYNCTRACE_PROBES_H

#include <stdint.h>

/* 4: LOOP busy_ns counts steps in progress (records.h); a tool of ABI 3
 * reads it, but its busy ratio was computed for ended steps. */
#define ASYNCTRACE_ABI_VERSION 4

/* The record layouts (frames, batch records, kinds): one definition, shared
 * by runtimes, the BPF programs and the tool. */
#include "records.h"

#ifndef ASYNCTRACE_NO_PROBES

#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>

/*
 * ASYNCTRACE_PROBE_NOP5 (define before including; x86-64 only, ignored
 * elsewhere): every asynctrace probe site is the 5-byte nop 0f 1f 44 00 00
 * instead of sys/sdt.h's 1-byte nop. Linux >= 6.17 turns a uprobe on such a
 * site into a call to a uprobe trampoline after its first hit, instead of an
 * int3 trap on every hit (docs/probes.md "Probe sites: 5-byte nops").
 *
 * A translation unit that defines it MUST be compiled with -mno-red-zone.
 * The call, and the trampoline's pushes, write below the stack pointer: into
 * the 128-byte red zone where the x86-64 ABI lets a leaf function keep data
 * without moving rsp. A leaf function holding live data there across a probe
 * site would find it overwritten once a tracer attaches. -mno-red-zone makes
 * the compiler move rsp instead (a few stack adjustments in leaf functions).
 *
 * The site is 8-byte aligned so that it never crosses a page: the kernel
 * does not optimize a site that does. sys/sdt.h puts its note label 990
 * before _SDT_NOP, so the padding (one nop instruction of up to 7 bytes) would
 * get the label: 990 is defined again after it, and the note's "990b" takes
 * the latest definition. Semicolons, no commas: sys/sdt.h passes _SDT_NOP
 * through one-argument macros.
 *
 * And a process that forks while a tracer is attached must not reach such a
 * site in the child: on Linux 6.18 the child does not inherit the uprobe
 * trampoline page and segfaults there (the CPython runtime does not opt in
 * for this reason; docs/probes.md).
 */
#if defined(ASYNCTRACE_PROBE_NOP5) && defined(__x86_64__)
#undef _SDT_NOP
#define _SDT_NOP .p2align 3; 990: .byte 0x0f; .byte 0x1f; .byte 0x44; .byte 0x00; .byte 0x00
#endif

#define ASYNCTRACE__SEMAPHORES(X) \
	X(task__create)           \
	X(task__resume)           \
	X(task__await)            \
	X(task__complete)         \
	X(edge__add)              \
	X(edge__remove)           \
	X(code__register)         \
	X(replay__begin)          \
	X(replay__end)            \
	X(batch__flush)           \
	X(replay__req0)           \
	X(replay__req1)           \
	X(replay__req2)           \
	X(replay__req3)           \
	X(replay__req4)           \
	X(replay__req5)           \
	X(replay__req6)           \
	X(replay__req7)           \
	X(timing__on)             \
	X(steps__on)

#ifdef ASYNCTRACE_DEFINE_SEMAPHORES
#define ASYNCTRACE__SEM(n) \
	__extension__ volatile unsigned short asynctrace_##n##_semaphore \
		__attribute__((section(".probes"), used, visibility("hidden"))) = 0;
#else
#define ASYNCTRACE__SEM(n) \
	extern volatile unsigned short asynctrace_##n##_semaphore \
		__attribute__((visibility("hidden")));
#endif
ASYNCTRACE__SEMAPHORES(ASYNCTRACE__SEM)
#undef ASYNCTRACE__SEM

#define ASYNCTRACE__ON(n) __builtin_expect(asynctrace_##n##_semaphore != 0, 0)

/* task__create(task_id, parent_task_id, loop_id, tid, name, name_len, coro_code_id)
 * parent_task_id: the task running when this one was created, or 0.
 * tid: OS thread id of the loop's thread, 0 = the emitting thread.
 * coro_code_id: code id of the task's coroutine function (0 if none). */
#define ASYNCTRACE_TASK_CREATE_ENABLED() ASYNCTRACE__ON(task__create)
#define ASYNCTRACE_TASK_CREATE(id, parent, loop, tid, name, name_len, code) \
	STAP_PROBE7(asynctrace, task__create, (uint64_t)(id), (uint64_t)(parent), \
		    (uint64_t)(loop), (uint64_t)(tid), (name), (uint64_t)(name_len), \
		    (uint64_t)(code))

/* task__resume(task_id): a step of the task begins. */
#define ASYNCTRACE_TASK_RESUME_ENABLED() ASYNCTRACE__ON(task__resume)
#define ASYNCTRACE_TASK_RESUME(id) STAP_PROBE1(asynctrace, task__resume, (uint64_t)(id))

/* task__await(task_id, awaited_id, awaited_kind, frames, nframes)
 * The step ended with the task suspended on awaited_id (see asynctrace_await_kind).
 * frames: struct asynctrace_frame[nframes], innermost first, nframes <= ASYNCTRACE_MAX_FRAMES. */
#define ASYNCTRACE_TASK_AWAIT_ENABLED() ASYNCTRACE__ON(task__await)
#define ASYNCTRACE_TASK_AWAIT(id, awaited, kind, frames, nframes) \
	STAP_PROBE5(asynctrace, task__await, (uint64_t)(id), (uint64_t)(awaited), \
		    (uint64_t)(kind), (frames), (uint64_t)(nframes))

/* task__complete(task_id, outcome): the task is done (asynctrace_outcome). */
#define ASYNCTRACE_TASK_COMPLETE_ENABLED() ASYNCTRACE__ON(task__complete)
#define ASYNCTRACE_TASK_COMPLETE(id, outcome) \
	STAP_PROBE2(asynctrace, task__complete, (uint64_t)(id), (uint64_t)(outcome))

/* edge__add(child_id, awaiter_id, kind): awaiter waits for child (asynctrace_edge_kind)
 * until child completes or edge__remove. */
#define ASYNCTRACE_EDGE_ADD_ENABLED() ASYNCTRACE__ON(edge__add)
#define ASYNCTRACE_EDGE_ADD(child, awaiter, kind) \
	STAP_PROBE3(asynctrace, edge__add, (uint64_t)(child), (uint64_t)(awaiter), (uint64_t)(kind))

/* edge__remove(child_id, awaiter_id) */
#define ASYNCTRACE_EDGE_REMOVE_ENABLED() ASYNCTRACE__ON(edge__remove)
#define ASYNCTRACE_EDGE_REMOVE(child, awaiter) \
	STAP_PROBE2(asynctrace, edge__remove, (uint64_t)(child), (uint64_t)(awaiter))

/* code__register(code_id, qualname, qualname_len, filename, filename_len, firstlineno)
 * Names a code id. Emitted once per code id per tracing session, before any
 * task__await or task__create that refers to it; the id stays valid (the
 * runtime keeps the code object alive) while tracers are attached. */
#define ASYNCTRACE_CODE_REGISTER_ENABLED() ASYNCTRACE__ON(code__register)
#define ASYNCTRACE_CODE_REGISTER(code, qn, qn_len, fn, fn_len, firstline) \
	STAP_PROBE6(asynctrace, code__register, (uint64_t)(code), (qn), (uint64_t)(qn_len), \
		    (fn), (uint64_t)(fn_len), (uint64_t)(firstline))

/* replay__begin(generation) / replay__end(generation, ntasks)
 * A tracer that attaches late needs the live state. The runtime watches the
 * replay__end semaphore; whenever its value increases, the runtime emits
 * replay__begin, then for every pending task code__register, task__create,
 * edge__add and task__await exactly as if it happened now, then replay__end.
 * Tracers attach replay__end last. */
#define ASYNCTRACE_REPLAY_BEGIN_ENABLED() ASYNCTRACE__ON(replay__begin)
#define ASYNCTRACE_REPLAY_BEGIN(gen) STAP_PROBE1(asynctrace, replay__begin, (uint64_t)(gen))
#define ASYNCTRACE_REPLAY_END_ENABLED() ASYNCTRACE__ON(replay__end)
#define ASYNCTRACE_REPLAY_END(gen, ntasks) \
	STAP_PROBE2(asynctrace, replay__end, (uint64_t)(gen), (uint64_t)(ntasks))
/* batch__flush(records, nslots, dropped)
 * records: struct asynctrace_rec[nslots] (whole records, in event order).
 * dropped: records the runtime could not buffer since it started (cumulative).
 * Records of one process reach tracers in event order across all its threads. */
#define ASYNCTRACE_BATCH_FLUSH_ENABLED() ASYNCTRACE__ON(batch__flush)
#define ASYNCTRACE_BATCH_FLUSH(recs, nslots, dropped) \
	STAP_PROBE3(asynctrace, batch__flush, (recs), (uint64_t)(nslots), (uint64_t)(dropped))

/* replay__req0 .. replay__req7(): never fired; only their semaphores matter.
 * A USDT semaphore counts processes with the probe attached, not tracers: once
 * one tracer holds replay__end it stays 1 when a second one attaches. A tracer
 * that needs a replay then attaches any program to a request probe whose
 * semaphore is 0; the runtime replays whenever a request semaphore rises
 * (and, as before, when replay__end's rises). req0..req3 ask for a full
 * replay; req4..req7 for a refresh: the await state and frames of every
 * pending task (task__await / STACK records, and the gather/shield edges
 * they imply), for a tracer that has followed the events since its own
 * full replay and wants current stacks.
 * ASYNCTRACE_DEFINE_REPLAY_REQUEST_SITES() defines the sites (once, in the
 * translation unit that defines the semaphores). */
#define ASYNCTRACE_REPLAY_REQUESTS 8
#define ASYNCTRACE_REPLAY_FULL_MASK 0x0fu    /* req0..req3 */
#define ASYNCTRACE_REPLAY_REFRESH_MASK 0xf0u /* req4..req7 */
#define ASYNCTRACE_REPLAY_REQUEST_MASK()                                              \
	((asynctrace_replay__req0_semaphore ? 1u : 0u) | (asynctrace_replay__req1_semaphore ? 2u : 0u) | \
	 (asynctrace_replay__req2_semaphore ? 4u : 0u) | (asynctrace_replay__req3_semaphore ? 8u : 0u) | \
	 (asynctrace_replay__req4_semaphore ? 16u : 0u) | (asynctrace_replay__req5_semaphore ? 32u : 0u) | \
	 (asynctrace_replay__req6_semaphore ? 64u : 0u) | (asynctrace_replay__req7_semaphore ? 128u : 0u))
#define ASYNCTRACE_DEFINE_REPLAY_REQUEST_SITES()                                  \
	__attribute__((used, noinline)) void asynctrace_replay_request_sites(int i) \
	{                                                                         \
		switch (i) {                                                      \
		case 0: STAP_PROBE(asynctrace, replay__req0); break;              \
		case 1: STAP_PROBE(asynctrace, replay__req1); break;              \
		case 2: STAP_PROBE(asynctrace, replay__req2); break;              \
		case 3: STAP_PROBE(asynctrace, replay__req3); break;              \
		case 4: STAP_PROBE(asynctrace, replay__req4); break;              \
		case 5: STAP_PROBE(asynctrace, replay__req5); break;              \
		case 6: STAP_PROBE(asynctrace, replay__req6); break;              \
		default: STAP_PROBE(asynctrace, replay__req7); break;             \
		}                                                                 \
	}

/* timing__on(), steps__on(): never fired; only their semaphores matter. A
 * tracer holds timing__on for per-task and per-coroutine timing (TIMING, CODE,
 * LOOP records, and STEP_TIMED + SAMPLE records for steps past the runtime's
 * slow floor); steps__on for a STEP_TIMED record of every step, with the
 * stacks it starts and ends at (profilers). Both need batch__flush. */
#define ASYNCTRACE_TIMING_ON() (asynctrace_timing__on_semaphore != 0)
#define ASYNCTRACE_STEPS_ON() (asynctrace_steps__on_semaphore != 0)
#define ASYNCTRACE_DEFINE_MODE_SITES()                                          \
	__attribute__((used, noinline)) void asynctrace_mode_sites(int i)       \
	{                                                                       \
		if (i)                                                          \
			STAP_PROBE(asynctrace, steps__on);                      \
		else                                                            \
			STAP_PROBE(asynctrace, timing__on);                     \
	}

/* The value a runtime polls to notice a new tracer. */
#define ASYNCTRACE_REPLAY_SEMAPHORE() (asynctrace_replay__end_semaphore)

#endif /* ASYNCTRACE_NO_PROBES */
#endif /* ASYNCTRACE_PROBES_H */
