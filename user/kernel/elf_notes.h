// SPDX-License-Identifier: Apache-2.0
// The one ELF reader: SystemTap SDT notes (.note.stapsdt), for procinfo
// (does this file carry asynctrace probes?) and usdt_attach (its probe
// sites), and the first bytes of a named section (CPython's .PyRuntime, whose
// _Py_DebugOffsets say the interpreter's version without running it). Plain pread()s of the headers and the note sections, no
// libelf: a garbage, truncated or hostile file (sections that overlap or
// claim the whole file) costs at most kMaxTotalRead bytes and ends in an
// error, never in a crash. Files are opened O_NONBLOCK and must be regular
// files (a FIFO or a device under /proc/PID/root would block or never end).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.h"

namespace asynctrace::elf {

constexpr uint64_t kMaxTotalRead = 64ull << 20;  // every read of one file together
constexpr uint64_t kMaxSectionHeaders = 1u << 16;

struct Segment {  // a PT_LOAD program header
  uint64_t vaddr = 0, memsz = 0, offset = 0;
  bool exec = false;
};

struct Note {  // one NT_STAPSDT note of owner "stapsdt"
  uint64_t pc = 0, base = 0, semaphore = 0;  // link-time addresses
  std::string provider, name, args;
  std::string error;  // why the note's descriptor is malformed; "" if it is not
};

struct StapsdtNotes {
  uint16_t type = 0;              // e_type
  std::vector<Segment> segments;  // PT_LOAD, in header order
  bool has_section = false;       // a .note.stapsdt section of type SHT_NOTE exists
  uint64_t base_addr = 0;         // address of .stapsdt.base, 0 if none (prelink)
  std::vector<Note> notes;        // in file order; note framing errors end the list
};

// Parses the ELF64 little-endian file whose bytes `read(buf, len, off)`
// gives (false: short read). Errors: "not an ELF file", "not a 64-bit ELF
// file", "not little-endian", "bad program headers", "bad section headers",
// "too large to read" (over kMaxTotalRead in all).
using ReadAt = std::function<bool(void* buf, size_t len, uint64_t off)>;
Result<StapsdtNotes> parse_stapsdt(const ReadAt& read, uint64_t size);

// The same over bytes in memory (tests, fuzzing).
Result<StapsdtNotes> parse_stapsdt_bytes(std::string_view bytes);

// The same over the file at `path`; also "not a regular file" and strerror
// for open/fstat failures.
Result<StapsdtNotes> read_stapsdt(const std::string& path);

// The first `max_len` bytes (fewer if it is shorter) of the section named
// `name`, from the file bytes or the file at `path`. Errors as above, and
// "no section NAME", "section NAME has no bytes in the file" (SHT_NOBITS).
Result<std::string> parse_section_prefix(const ReadAt& read, uint64_t size, std::string_view name, size_t max_len);
Result<std::string> section_prefix_bytes(std::string_view bytes, std::string_view name, size_t max_len);
Result<std::string> read_section_prefix(const std::string& path, std::string_view name, size_t max_len);

}  // namespace asynctrace::elf
