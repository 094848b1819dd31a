// SPDX-License-Identifier: Apache-2.0
// include/asynctrace/stack_hash.h compiled as plain C (C11, as runtimes
// include it), for stack_hash_test.cpp to compare with its C++ build.
#include <stdint.h>

#include "asynctrace/stack_hash.h"

uint64_t stack_hash_test_from_c(const struct asynctrace_frame *frames, uint32_t nframes);

uint64_t stack_hash_test_from_c(const struct asynctrace_frame *frames, uint32_t nframes)
{
	return asynctrace_stack_hash(frames, nframes);
}
