// SPDX-License-Identifier: Apache-2.0
// include/asynctrace/stack_hash.h: the id of a stack, computed by runtimes
// (STACK and SAMPLE records carry it) and by the BPF programs (task__await
// frames), so equal frames get equal ids on both paths. This test pins its
// values to the definition in docs/probes.md: the expected values below were
// computed from that text by an independent implementation (Python), not by
// the header, so a change of the function, of its constants or of the frame
// layout fails here. The BPF side is checked against the header in
// tests/fake_runtime/loader_check.cpp (the kernel's stack id of a task equals
// asynctrace_stack_hash of the frames fake_runtime sent).
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "asynctrace/stack_hash.h"

extern "C" uint64_t stack_hash_test_from_c(const struct asynctrace_frame* frames, uint32_t nframes);

namespace {

using Frames = std::vector<asynctrace_frame>;

uint64_t hash(const Frames& f) {
  const uint64_t h = asynctrace_stack_hash(f.data(), static_cast<uint32_t>(f.size()));
  // The same header built as C gives the same value.
  EXPECT_EQ(h, stack_hash_test_from_c(f.data(), static_cast<uint32_t>(f.size())));
  return h;
}

Frames deep(unsigned n) {
  Frames f;
  for (unsigned i = 0; i < n; i++) f.push_back({0xc0de0002, 100 + i, 0});
  return f;
}

}  // namespace

TEST(StackHash, KnownVectors) {
  EXPECT_EQ(hash({}), 0xcbf29ce484222325ull);  // the offset basis (runtimes send id 0 for no frames)
  EXPECT_EQ(hash({{0xc0de0001, 14, 0}}), 0xe42e61b2e5d27bc6ull);
  EXPECT_EQ(hash({{0xc0de0003, 629, 0}, {0xc0de0002, 25, 0}}), 0xadecaa5d879ea2b4ull);
  EXPECT_EQ(hash(deep(32)), 0x759cc11a040f79e5ull);
  EXPECT_EQ(hash({{0xffffffffffffffffull, 0xffffffffu, 0xffffffffu}, {0x7f0012345678ull, 1, 0}}),
            0xe9463ae11b6e12a0ull);
}

TEST(StackHash, FlagsAreHashedAboveTheLine) {
  // The truncation flag of the last frame changes the id (flags << 32 | line).
  EXPECT_EQ(hash({{0xc0de0003, 629, 0}, {0xc0de0002, 25, ASYNCTRACE_FRAME_TRUNCATED}}), 0xadecac10879ea2b4ull);
}

TEST(StackHash, OrderAndCountMatter) {
  EXPECT_NE(hash({{1, 2, 0}, {3, 4, 0}}), hash({{3, 4, 0}, {1, 2, 0}}));
  EXPECT_NE(hash(deep(3)), hash(deep(4)));
  const Frames f = deep(5);
  EXPECT_EQ(asynctrace_stack_hash(f.data(), 3), hash(deep(3)));  // only nframes count
}

TEST(StackHash, AtMostMaxFramesCount) {
  // Runtimes never send more than ASYNCTRACE_MAX_FRAMES; the BPF programs keep
  // that many, and the hash covers exactly those.
  EXPECT_EQ(hash(deep(40)), hash(deep(ASYNCTRACE_MAX_FRAMES)));
}

TEST(StackHash, ZeroIsNeverAnId) {
  // One frame whose second step cancels the state: (basis ^ 0) * P equals
  // flags << 32 | line, so the FNV value is 0, which means "no stack": 1.
  EXPECT_EQ(hash({{0, 0x8601b7dfu, 0xaf63bd4cu}}), 1u);
}
