/* SPDX-License-Identifier: Apache-2.0 */
/*
 * asynctrace stack id: the one definition of the hash that names a stack.
 * A STACK or SAMPLE record's c is this hash of its frames (the runtime's),
 * and the BPF programs hash the frames of task__await with it, so equal
 * frames get equal ids on both paths and tracers can intern stacks.
 *
 * FNV-1a 64 over the frames, innermost first: for each frame
 *     h = (h ^ code_id) * P;  h = (h ^ (flags << 32 | line)) * P;
 * from the offset basis, P the FNV-1a 64 prime; a hash of 0 is returned as 1
 * (0 means "no stack"). At most ASYNCTRACE_MAX_FRAMES frames count.
 *
 * static inline, no dependencies: compiles as BPF C (a loop of constant bound,
 * inlined into its caller), plain C and C++. tests/unit/stack_hash_test.cpp
 * pins its values, tests/fake_runtime/loader_check.cpp checks the BPF side.
 */
#ifndef ASYNCTRACE_STACK_HASH_H
#define ASYNCTRACE_STACK_HASH_H

#include "records.h"

#define ASYNCTRACE_STACK_HASH_BASIS 0xcbf29ce484222325ULL
#define ASYNCTRACE_STACK_HASH_PRIME 0x100000001b3ULL

#ifdef __bpf__
#define ASYNCTRACE__INLINE static inline __attribute__((always_inline))
#else
#define ASYNCTRACE__INLINE static inline
#endif

ASYNCTRACE__INLINE asynctrace_u64 asynctrace_stack_hash(const struct asynctrace_frame *frames,
							 asynctrace_u32 nframes)
{
	asynctrace_u64 h = ASYNCTRACE_STACK_HASH_BASIS;

	for (asynctrace_u32 i = 0; i < ASYNCTRACE_MAX_FRAMES; i++) {
		if (i >= nframes)
			break;
		h = (h ^ frames[i].code_id) * ASYNCTRACE_STACK_HASH_PRIME;
		h = (h ^ (((asynctrace_u64)frames[i].flags << 32) | frames[i].line)) *
		    ASYNCTRACE_STACK_HASH_PRIME;
	}
	return h ? h : 1;
}

#undef ASYNCTRACE__INLINE

#endif /* ASYNCTRACE_STACK_HASH_H */
