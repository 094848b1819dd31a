// SPDX-License-Identifier: Apache-2.0
// The pure half of loading the runtime into an unprepared CPython 3.14+
// (user/core/inject.h), and the ELF reader's section prefix that finds the
// target's _Py_DebugOffsets (user/kernel/elf_notes.h).
#include "core/inject.h"

#include <elf.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "kernel/elf_notes.h"

using namespace asynctrace;

namespace {

// The first 24 bytes of a _Py_DebugOffsets.
std::string offsets(uint64_t version, uint64_t free_threaded, const char* cookie = "xdebugpy") {
  std::string b(cookie, 8);
  b.append(reinterpret_cast<const char*>(&version), 8);
  b.append(reinterpret_cast<const char*>(&free_threaded), 8);
  return b + std::string(64, '\x7f');  // the rest of the struct
}

// An ELF64 file with one section `name` of type `type` holding `data`.
std::string elf_with_section(const std::string& name, const std::string& data, uint32_t type = SHT_PROGBITS) {
  const std::string names = std::string("\0.shstrtab\0", 11) + name + '\0';
  const uint64_t names_off = 64, data_off = 256, sh_off = 1024;
  std::string f(sh_off + 3 * sizeof(Elf64_Shdr), '\0');
  Elf64_Ehdr eh{};
  std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
  eh.e_ident[EI_CLASS] = ELFCLASS64;
  eh.e_ident[EI_DATA] = ELFDATA2LSB;
  eh.e_type = ET_EXEC;
  eh.e_shoff = sh_off;
  eh.e_shentsize = sizeof(Elf64_Shdr);
  eh.e_shnum = 3;
  eh.e_shstrndx = 1;
  std::memcpy(f.data(), &eh, sizeof eh);
  std::memcpy(f.data() + names_off, names.data(), names.size());
  std::memcpy(f.data() + data_off, data.data(), std::min<size_t>(data.size(), sh_off - data_off));
  Elf64_Shdr strtab{}, sec{};
  strtab.sh_name = 1;
  strtab.sh_type = SHT_STRTAB;
  strtab.sh_offset = names_off;
  strtab.sh_size = names.size();
  sec.sh_name = 11;
  sec.sh_type = type;
  sec.sh_offset = data_off;
  sec.sh_size = data.size();
  std::memcpy(f.data() + sh_off + sizeof(Elf64_Shdr), &strtab, sizeof strtab);
  std::memcpy(f.data() + sh_off + 2 * sizeof(Elf64_Shdr), &sec, sizeof sec);
  return f;
}

}  // namespace

TEST(InjectBuild, DecodesTheDebugOffsetsPrefix) {
  auto b = decode_debug_offsets(offsets(0x030E07F0, 0));
  ASSERT_TRUE(b);
  EXPECT_EQ(b->major(), 3);
  EXPECT_EQ(b->minor(), 14);
  EXPECT_EQ(b->tag(), "cp314");
  EXPECT_FALSE(b->free_threaded);
  EXPECT_TRUE(decode_debug_offsets(offsets(0x030E07F0, 1))->free_threaded);
  EXPECT_FALSE(decode_debug_offsets(offsets(0x030E07F0, 0, "xdebugpz")));
  EXPECT_FALSE(decode_debug_offsets(offsets(0x030E07F0, 0).substr(0, 23)));
  EXPECT_FALSE(decode_debug_offsets(""));
}

TEST(InjectBuild, RefusesOlderAndFreeThreadedBuildsWithOneLine) {
  auto e = refuse_build(42, "python3", decode_debug_offsets(offsets(0x030D00F0, 0)));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code, kExitNoProbes);
  EXPECT_NE(e->message.find("Python 3.13: injection needs 3.14+"), std::string::npos) << e->message;
  EXPECT_NE(e->message.find("asynctrace run"), std::string::npos);
  e = refuse_build(42, "python3", std::nullopt);
  ASSERT_TRUE(e);
  EXPECT_NE(e->message.find("needs 3.14+"), std::string::npos);
  e = refuse_build(42, "python3.14t", decode_debug_offsets(offsets(0x030E07F0, 1)));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code, kExitNoProbes);
  EXPECT_NE(e->message.find("free-threaded CPython builds are not supported yet"), std::string::npos);
  EXPECT_FALSE(refuse_build(42, "python3", decode_debug_offsets(offsets(0x030E07F0, 0))));
  EXPECT_FALSE(refuse_build(42, "python3", decode_debug_offsets(offsets(0x030F00A1, 0))));  // 3.15a1
  // The comm is the target's: escaped.
  e = refuse_build(42, "evil\x1b[2J", std::nullopt);
  EXPECT_EQ(e->message.find('\x1b'), std::string::npos);
  EXPECT_EQ(e->message.find('\n'), std::string::npos);
}

TEST(InjectScript, NoPathCanEndTheLiteral) {
  const std::string s = inject_script("/opt/a'b\"c\\d\ne f/\xc3\xa9/cp314");
  EXPECT_NE(s.find(R"(os.fsdecode(b'/opt/a\x27b\x22c\x5cd\x0ae\x20f/\xc3\xa9/cp314'))"), std::string::npos) << s;
  // Every exception is swallowed, sys.path and the importer cache restored.
  EXPECT_NE(s.find("except BaseException:\n    pass\n"), std::string::npos);
  EXPECT_NE(s.find("sys.path.remove(d)"), std::string::npos);
  EXPECT_NE(s.find("sys.path_importer_cache.pop(d, None)"), std::string::npos);
}

TEST(InjectErrors, EachFailureIsOneLineWithItsExitCode) {
  auto e = injector_error(7, "app", "RuntimeError\tRemote debugging is not enabled in the remote process", -1);
  EXPECT_EQ(e.code, kExitNoProbes);
  EXPECT_NE(e.message.find("remote debugging is disabled in it"), std::string::npos) << e.message;
  e = injector_error(7, "app", "PermissionError\t[Errno 1] Operation not permitted", 3);
  EXPECT_EQ(e.code, kExitPrivilege);
  EXPECT_NE(e.message.find("ptrace_scope is 3"), std::string::npos) << e.message;
  e = injector_error(7, "app", "PermissionError\t[Errno 1] Operation not permitted", 1);
  EXPECT_EQ(e.code, kExitPrivilege);
  EXPECT_NE(e.message.find("CAP_SYS_PTRACE over the process"), std::string::npos) << e.message;
  e = injector_error(7, "app", "ProcessLookupError\tNo such process", -1);
  EXPECT_EQ(e.code, kExitNoProcess);
  e = injector_error(7, "app", "RuntimeError\tCan't find a running interpreter\x07 in the remote process", -1);
  EXPECT_EQ(e.code, kExitNoProbes);
  EXPECT_NE(e.message.find("Can't find a running interpreter\\x07"), std::string::npos) << e.message;
  e = injector_error(7, "app", "", -1);
  EXPECT_EQ(e.code, kExitNoProbes);
  EXPECT_NE(e.message.find("no answer"), std::string::npos);
}

TEST(ElfSectionPrefix, ReadsTheFirstBytesOfANamedSection) {
  const std::string f = elf_with_section(".PyRuntime", offsets(0x030E07F0, 0));
  auto r = elf::section_prefix_bytes(f, ".PyRuntime", kDebugOffsetsPrefix);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r.value(), offsets(0x030E07F0, 0).substr(0, kDebugOffsetsPrefix));
  // Shorter than asked: what there is.
  r = elf::section_prefix_bytes(elf_with_section(".PyRuntime", "xdebug"), ".PyRuntime", kDebugOffsetsPrefix);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.value(), "xdebug");
  EXPECT_EQ(elf::section_prefix_bytes(f, ".data", 8).error().message, "no section .data");
  EXPECT_FALSE(elf::section_prefix_bytes(elf_with_section(".PyRuntime", "xdebugpy", SHT_NOBITS), ".PyRuntime", 8).ok());
  EXPECT_FALSE(elf::section_prefix_bytes("not an elf", ".PyRuntime", 8).ok());
  // A section that claims more than the file: an error, not a read past it.
  std::string lying = f;
  Elf64_Shdr sec;
  std::memcpy(&sec, lying.data() + 1024 + 2 * sizeof(Elf64_Shdr), sizeof sec);
  sec.sh_offset = lying.size() - 4;
  std::memcpy(lying.data() + 1024 + 2 * sizeof(Elf64_Shdr), &sec, sizeof sec);
  EXPECT_FALSE(elf::section_prefix_bytes(lying, ".PyRuntime", kDebugOffsetsPrefix).ok());
  // A name offset of 0xffffffff: no name (0xffffffff + 1 wrapped to 0 once:
  // scripts/fuzz found the read far past the names).
  std::string wrapped = f;
  std::memcpy(&sec, wrapped.data() + 1024 + 2 * sizeof(Elf64_Shdr), sizeof sec);
  sec.sh_name = 0xffffffffu;
  std::memcpy(wrapped.data() + 1024 + 2 * sizeof(Elf64_Shdr), &sec, sizeof sec);
  EXPECT_EQ(elf::section_prefix_bytes(wrapped, ".PyRuntime", 8).error().message, "no section .PyRuntime");
  EXPECT_TRUE(elf::parse_stapsdt_bytes(wrapped).ok());
}
