// SPDX-License-Identifier: Apache-2.0
// ELF files a traced process maps (or any file under /proc/PID/root): the
// .note.stapsdt reader of user/kernel/elf_notes.cpp on arbitrary bytes.
//   Every read stays inside the file, and all reads of one file together
//   stay within elf::kMaxTotalRead, however the headers lie (sections that
//   overlap, claim the whole file or more, header counts in the millions).
//   A parsed note is either well-formed (a name, its strings without NUL)
//   or says why not; the parse of the same bytes is the same every time.
//   The section prefix reader (.PyRuntime's _Py_DebugOffsets) keeps to the
//   file and the budget too, and returns at most the bytes asked for.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "kernel/elf_notes.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  uint64_t total = 0;
  auto result = asynctrace::elf::parse_stapsdt(
      [&](void* buf, size_t len, uint64_t off) {
        FUZZ_CHECK(off <= size && len <= size - off, "read outside the file");
        total += len;
        FUZZ_CHECK(total <= asynctrace::elf::kMaxTotalRead, "read past the budget");
        std::memcpy(buf, bytes.data() + off, len);
        return true;
      },
      size);
  uint64_t prefix_total = 0;
  const auto prefix = asynctrace::elf::parse_section_prefix(
      [&](void* buf, size_t len, uint64_t off) {
        FUZZ_CHECK(off <= size && len <= size - off, "section prefix: read outside the file");
        prefix_total += len;
        FUZZ_CHECK(prefix_total <= asynctrace::elf::kMaxTotalRead, "section prefix: read past the budget");
        std::memcpy(buf, bytes.data() + off, len);
        return true;
      },
      size, ".PyRuntime", 24);
  FUZZ_CHECK(!prefix.ok() || prefix.value().size() <= 24, "section prefix longer than asked");
  const auto again = asynctrace::elf::parse_stapsdt_bytes(bytes);
  FUZZ_CHECK(result.ok() == again.ok(), "two parses of the same bytes differ");
  if (!result.ok()) {
    FUZZ_CHECK(!result.error().message.empty(), "an error without a message");
    return 0;
  }
  const auto& notes = result.value().notes;
  FUZZ_CHECK(notes.size() == again.value().notes.size(), "two parses of the same bytes differ");
  for (const auto& n : notes) {
    if (!n.error.empty()) continue;
    FUZZ_CHECK(!n.name.empty(), "a well-formed note without a name");
    for (const std::string* s : {&n.provider, &n.name, &n.args})
      FUZZ_CHECK(s->find('\0') == std::string::npos, "a NUL inside a note string");
  }
  return 0;
}
