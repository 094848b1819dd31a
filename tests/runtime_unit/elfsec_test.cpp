// SPDX-License-Identifier: Apache-2.0
// elfsec.c: a named section of a loaded ELF object (how the runtime finds
// CPython 3.14's _AsyncioDebug), looked up in this test binary and in libc.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>

#include "elfsec.h"

namespace {

__attribute__((section(".asynctrace_test"), used)) const uint64_t kMarker[3] = {0x61, 0x62, 0x63};

TEST(ElfSection, FoundAtItsLoadedAddress) {
  size_t size = 0;
  const void* p = elf_loaded_section(reinterpret_cast<const void*>(&kMarker), ".asynctrace_test", &size);
  EXPECT_EQ(p, static_cast<const void*>(kMarker));
  EXPECT_GE(size, sizeof kMarker);  // sanitizers may pad globals
}

TEST(ElfSection, FoundFromAnyAddressInTheObject) {
  size_t size = 0;
  // Code of this binary, not the section itself, locates the object.
  const void* code = reinterpret_cast<const void*>(&elf_loaded_section);
  EXPECT_EQ(elf_loaded_section(code, ".asynctrace_test", &size), static_cast<const void*>(kMarker));
}

TEST(ElfSection, OtherObjectsAreNotSearched) {
  size_t size = 0;
  // libc has no such section: the lookup stays in the object holding the address.
  EXPECT_EQ(elf_loaded_section(reinterpret_cast<const void*>(&fopen), ".asynctrace_test", &size), nullptr);
  EXPECT_NE(elf_loaded_section(reinterpret_cast<const void*>(&fopen), ".text", &size), nullptr);
}

TEST(ElfSection, MissingSectionOrAddressGivesNull) {
  size_t size = 7;
  EXPECT_EQ(elf_loaded_section(reinterpret_cast<const void*>(&kMarker), ".no_such_section", &size), nullptr);
  EXPECT_EQ(size, 7u);
  EXPECT_EQ(elf_loaded_section(nullptr, ".text", &size), nullptr);
  int on_stack = 0;
  EXPECT_EQ(elf_loaded_section(&on_stack, ".text", &size), nullptr);
}

}  // namespace
