// SPDX-License-Identifier: Apache-2.0
/*
 * A stand-in coroutine runtime for testing the kernel side without Python.
 * It owns a fixed set of "pending tasks" and emits the asynctrace probes the
 * way a real runtime does: nothing while no tracer is attached, a full replay
 * whenever the replay__end semaphore rises, then a burst of live activity
 * (CHURN_STEPS loop iterations) and silence, so a test can snapshot a state it
 * knows exactly (see loader_check.cpp for the expected values).
 *
 * Every probe is emitted from a noinline function whose arguments are plain
 * parameters: libbpf 1.1 parses only "N@%reg", "N@off(%reg)" and "N@$imm"
 * USDT operands, and globals or indexed array elements would make the compiler
 * emit "sym(%rip)" or "(%rax,%rdx,8)" forms it rejects.
 *
 * Prints "ready <replay__end semaphore address>" on stdout once running.
 * FAKE_RUNTIME_NO_REPLAY=1 makes it ignore tracers (a loop stuck in C code),
 * for testing the replay timeout.
 */
#define _GNU_SOURCE
#define ASYNCTRACE_DEFINE_SEMAPHORES
#include "asynctrace/probes.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define CHURN_STEPS 50
#define LIFETIME_MS 120000 /* never outlive a crashed test for long */

struct fake_code {
	uint64_t id;
	const char *qualname;
	const char *filename;
	uint64_t firstlineno;
};

struct fake_task {
	uint64_t id, parent, loop;
	const char *name;
	uint64_t code;
	uint64_t awaited, kind;
	struct asynctrace_frame frames[3];
	uint64_t nframes;
};

struct fake_edge {
	uint64_t child, awaiter, kind;
};

#define LOOP_ID 0x100000001ULL
#define T1 0x7a5c0001ULL
#define T2 0x7a5c0002ULL
#define T3 0x7a5c0003ULL
#define T_NAMELESS 0x7a5c0999ULL
#define T_CHURN 0x7a5c1000ULL

static const struct fake_code g_codes[] = {
	{ 0xc0de0001, "main", "/app/main.py", 10 },
	{ 0xc0de0002, "worker", "/app/worker.py", 20 },
	{ 0xc0de0003, "sleep", "/usr/lib/python3.11/asyncio/tasks.py", 627 },
	{ 0xc0de0004,
	  "Service.handle_request.<locals>.inner_helper_with_a_qualname_longer_than_ninety_six_bytes_for_truncation",
	  "/app/worker.py", 40 },
};

static const struct fake_task g_tasks[] = {
	{ T1, 0, LOOP_ID, "Task-1", 0xc0de0001, 0xf0000001, ASYNCTRACE_AWAIT_GATHER,
	  { { 0xc0de0001, 14, 0 } }, 1 },
	{ T2, T1, LOOP_ID, "worker-0", 0xc0de0002, 0xf0000002, ASYNCTRACE_AWAIT_FUTURE,
	  { { 0xc0de0003, 629, 0 }, { 0xc0de0002, 25, 0 } }, 2 },
	{ T3, T1, LOOP_ID,
	  "worker-with-a-rather-long-name-that-does-not-fit-into-sixty-four-bytes-of-map",
	  0xc0de0004, T2, ASYNCTRACE_AWAIT_TASK,
	  { { 0xc0de0003, 629, 0 }, { 0xc0de0004, 44, 0 }, { 0xc0de0002, 30, ASYNCTRACE_FRAME_TRUNCATED } }, 3 },
};

static const struct fake_edge g_edges[] = {
	{ T2, T1, ASYNCTRACE_EDGE_GATHER },
	{ T3, T1, ASYNCTRACE_EDGE_GATHER },
};

#define N(a) (sizeof(a) / sizeof((a)[0]))

static atomic_uint g_replay_requests;
static atomic_int g_stop;

/* ---- probe emitters: arguments arrive in registers or on the stack ---- */

static NOINLINE void emit_create(uint64_t id, uint64_t parent, uint64_t loop, const char *name,
				 uint64_t name_len, uint64_t code)
{
	uint64_t tid = 0; /* the emitting thread is the loop thread */

	if (ASYNCTRACE_TASK_CREATE_ENABLED())
		ASYNCTRACE_TASK_CREATE(id, parent, loop, tid, name, name_len, code);
}

static NOINLINE void emit_resume(uint64_t id)
{
	if (ASYNCTRACE_TASK_RESUME_ENABLED())
		ASYNCTRACE_TASK_RESUME(id);
}

static NOINLINE void emit_await(uint64_t id, uint64_t awaited, uint64_t kind,
				const struct asynctrace_frame *frames, uint64_t nframes)
{
	if (ASYNCTRACE_TASK_AWAIT_ENABLED())
		ASYNCTRACE_TASK_AWAIT(id, awaited, kind, frames, nframes);
}

static NOINLINE void emit_complete(uint64_t id, uint64_t outcome)
{
	if (ASYNCTRACE_TASK_COMPLETE_ENABLED())
		ASYNCTRACE_TASK_COMPLETE(id, outcome);
}

static NOINLINE void emit_edge_add(uint64_t child, uint64_t awaiter, uint64_t kind)
{
	if (ASYNCTRACE_EDGE_ADD_ENABLED())
		ASYNCTRACE_EDGE_ADD(child, awaiter, kind);
}

static NOINLINE void emit_edge_remove(uint64_t child, uint64_t awaiter)
{
	if (ASYNCTRACE_EDGE_REMOVE_ENABLED())
		ASYNCTRACE_EDGE_REMOVE(child, awaiter);
}

static NOINLINE void emit_code(uint64_t id, const char *qn, uint64_t qn_len, const char *fn,
			       uint64_t fn_len, uint64_t firstline)
{
	if (ASYNCTRACE_CODE_REGISTER_ENABLED())
		ASYNCTRACE_CODE_REGISTER(id, qn, qn_len, fn, fn_len, firstline);
}

static NOINLINE void emit_replay_begin(uint64_t gen)
{
	if (ASYNCTRACE_REPLAY_BEGIN_ENABLED())
		ASYNCTRACE_REPLAY_BEGIN(gen);
}

static NOINLINE void emit_replay_end(uint64_t gen, uint64_t ntasks)
{
	if (ASYNCTRACE_REPLAY_END_ENABLED())
		ASYNCTRACE_REPLAY_END(gen, ntasks);
}

/* ---- runtime behaviour ---- */

static void replay(uint64_t gen)
{
	emit_replay_begin(gen);
	for (size_t i = 0; i < N(g_codes); i++) {
		const struct fake_code *c = &g_codes[i];
		emit_code(c->id, c->qualname, strlen(c->qualname), c->filename, strlen(c->filename),
			  c->firstlineno);
	}
	for (size_t i = 0; i < N(g_tasks); i++) {
		const struct fake_task *t = &g_tasks[i];
		emit_create(t->id, t->parent, t->loop, t->name, strlen(t->name), t->code);
		for (size_t e = 0; e < N(g_edges); e++)
			if (g_edges[e].child == t->id)
				emit_edge_add(g_edges[e].child, g_edges[e].awaiter, g_edges[e].kind);
		emit_await(t->id, t->awaited, t->kind, t->frames, t->nframes);
	}
	emit_replay_end(gen, N(g_tasks));
}

/* One iteration of live activity. Leaves the pending tasks exactly as the
 * replay described them, plus one NAMELESS task (a task created before the
 * tracer attached that the replay does not know about). */
static void churn(unsigned step)
{
	struct asynctrace_frame deep[40];
	const struct fake_task *t2 = &g_tasks[1];
	uint64_t id = T_CHURN + step;
	char name[32];
	int len = snprintf(name, sizeof name, "churn-%u", step);

	emit_create(id, T1, LOOP_ID, name, (uint64_t)len, 0xc0de0002);
	emit_resume(id);
	emit_edge_add(id, T1, ASYNCTRACE_EDGE_TASKGROUP);
	emit_await(id, 0, ASYNCTRACE_AWAIT_NONE, t2->frames, 1);
	emit_resume(id);
	emit_edge_remove(id, T1);
	emit_complete(id, step % 2 ? ASYNCTRACE_OUTCOME_RESULT : ASYNCTRACE_OUTCOME_CANCELLED);

	/* A step of worker-0 that ends where it was, plus a transient edge. */
	emit_resume(T2);
	emit_edge_add(T2, 0xdead0001, ASYNCTRACE_EDGE_SHIELD);
	emit_edge_remove(T2, 0xdead0001);
	emit_await(T2, t2->awaited, t2->kind, t2->frames, t2->nframes);

	/* More frames than anyone keeps: must arrive truncated to 32. */
	for (unsigned i = 0; i < 40; i++)
		deep[i] = (struct asynctrace_frame){ 0xc0de0002, 100 + i, 0 };
	emit_await(T_NAMELESS, 0xf0000003, ASYNCTRACE_AWAIT_FUTURE, deep, 40);
}

static void *watcher(void *arg)
{
	unsigned short last = 0;

	(void)arg;
	/* Polls like the CPython runtime's watcher: a new tracer raises the
	 * replay__end semaphore; the replay itself runs on the loop thread. */
	while (!atomic_load(&g_stop)) {
		unsigned short now = ASYNCTRACE_REPLAY_SEMAPHORE();
		if (now > last)
			atomic_fetch_add(&g_replay_requests, 1);
		last = now;
		usleep(1000);
	}
	return NULL;
}

static void on_term(int sig)
{
	(void)sig;
	atomic_store(&g_stop, 1);
}

int main(void)
{
	pthread_t thr;
	unsigned handled = 0;
	uint64_t gen = 0;
	unsigned churn_left = 0, step = 0;

	signal(SIGTERM, on_term);
	signal(SIGINT, on_term);
	if (getenv("FAKE_RUNTIME_NO_REPLAY"))
		atomic_store(&g_stop, 1); /* the watcher thread exits at once */
	if (pthread_create(&thr, NULL, watcher, NULL) != 0) {
		perror("failed to create watcher thread");
		return 1;
	}
	printf("ready %p\n", (void *)&ASYNCTRACE_REPLAY_SEMAPHORE());
	fflush(stdout);

	if (getenv("FAKE_RUNTIME_NO_REPLAY")) {
		pthread_join(thr, NULL);
		atomic_store(&g_stop, 0);
	}
	for (unsigned ms = 0; ms < LIFETIME_MS && !atomic_load(&g_stop); ms++) {
		unsigned requests = atomic_load(&g_replay_requests);
		if (requests != handled) {
			handled = requests;
			replay(++gen);
			churn_left = CHURN_STEPS;
		}
		if (churn_left) {
			churn(step++);
			churn_left--;
		}
		usleep(1000);
	}
	atomic_store(&g_stop, 1);
	pthread_join(thr, NULL);
	return 0;
}
