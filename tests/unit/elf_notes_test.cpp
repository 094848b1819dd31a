// SPDX-License-Identifier: Apache-2.0
// The .note.stapsdt reader (user/kernel/elf_notes.h) on the seed files of
// tests/fuzz/corpus/fuzz_elf_notes (written by tests/fuzz/make_seeds.py) and
// on hostile layouts: overlapping sections, a FIFO.
#include "kernel/elf_notes.h"

#include <elf.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <string>

using namespace asynctrace;

namespace {

std::string seed(const std::string& name) {
  std::ifstream in(std::string(ASYNCTRACE_FUZZ_CORPUS) + "/fuzz_elf_notes/" + name, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// An ELF file of `size` bytes whose `nsections` .note.stapsdt sections all
// cover the whole file: each alone is small enough, together they are not.
std::string overlapping(uint64_t size, uint16_t nsections) {
  std::string f(size, '\0');
  Elf64_Ehdr eh{};
  std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
  eh.e_ident[EI_CLASS] = ELFCLASS64;
  eh.e_ident[EI_DATA] = ELFDATA2LSB;
  eh.e_type = ET_DYN;
  eh.e_shoff = 4096;
  eh.e_shentsize = sizeof(Elf64_Shdr);
  eh.e_shnum = static_cast<uint16_t>(nsections + 2);
  eh.e_shstrndx = 1;
  std::memcpy(f.data(), &eh, sizeof eh);
  const char names[] = "\0.shstrtab\0.note.stapsdt";
  std::memcpy(f.data() + 256, names, sizeof names);
  Elf64_Shdr strtab{};
  strtab.sh_name = 1;
  strtab.sh_type = SHT_STRTAB;
  strtab.sh_offset = 256;
  strtab.sh_size = sizeof names;
  std::memcpy(f.data() + 4096 + sizeof(Elf64_Shdr), &strtab, sizeof strtab);
  for (uint16_t i = 0; i < nsections; ++i) {
    Elf64_Shdr note{};
    note.sh_name = 11;
    note.sh_type = SHT_NOTE;
    note.sh_offset = 0;
    note.sh_size = size;
    std::memcpy(f.data() + 4096 + (2 + i) * sizeof(Elf64_Shdr), &note, sizeof note);
  }
  return f;
}

}  // namespace

TEST(ElfNotes, ReadsTheSitesOfASharedObject) {
  const auto r = elf::parse_stapsdt_bytes(seed("asynctrace"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  const elf::StapsdtNotes& f = r.value();
  EXPECT_EQ(f.type, ET_DYN);
  ASSERT_EQ(f.segments.size(), 1u);
  EXPECT_TRUE(f.segments[0].exec);
  EXPECT_TRUE(f.has_section);
  EXPECT_EQ(f.base_addr, 0x4000u);
  ASSERT_EQ(f.notes.size(), 3u);
  EXPECT_EQ(f.notes[0].provider, "asynctrace");
  EXPECT_EQ(f.notes[0].name, "replay__end");
  EXPECT_EQ(f.notes[0].args, "8@%rdi");
  EXPECT_EQ(f.notes[0].pc, 0x1000u);
  EXPECT_EQ(f.notes[0].semaphore, 0x2000u);
  EXPECT_EQ(f.notes[1].args, "8@%rdi -8@-24(%rbp)");
  EXPECT_EQ(f.notes[2].args, ":");
  for (const auto& n : f.notes) EXPECT_EQ(n.error, "");
}

TEST(ElfNotes, OtherProvidersAreListedToo) {
  const auto r = elf::parse_stapsdt_bytes(seed("other-provider"));
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r.value().notes.size(), 1u);
  EXPECT_EQ(r.value().notes[0].provider, "libc");
}

TEST(ElfNotes, TruncatedAndGarbageFilesAreErrors) {
  EXPECT_FALSE(elf::parse_stapsdt_bytes(seed("truncated")).ok());
  EXPECT_FALSE(elf::parse_stapsdt_bytes("").ok());
  EXPECT_FALSE(elf::parse_stapsdt_bytes("#!/bin/sh\necho hi\n").ok());
  // A note whose strings are cut: said, not guessed.
  const auto r = elf::parse_stapsdt_bytes(seed("malformed-note"));
  if (r.ok())
    for (const auto& n : r.value().notes) EXPECT_TRUE(!n.error.empty() || !n.name.empty());
}

TEST(ElfNotes, OverlappingSectionsAreReadWithinTheBudget) {
  // 40 sections of 2 MiB over the same bytes: 80 MiB claimed, 64 MiB allowed.
  const std::string f = overlapping(2u << 20, 40);
  uint64_t total = 0;
  const auto r = elf::parse_stapsdt(
      [&](void* buf, size_t len, uint64_t off) {
        EXPECT_LE(off + len, f.size());
        total += len;
        std::memcpy(buf, f.data() + off, len);
        return true;
      },
      f.size());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "too large to read");
  EXPECT_LE(total, elf::kMaxTotalRead);
  // Fewer of them fit: read, each once.
  EXPECT_TRUE(elf::parse_stapsdt_bytes(overlapping(2u << 20, 8)).ok());
}

TEST(ElfNotes, OnlyRegularFilesAreOpenedAndAFifoDoesNotBlock) {
  char dir[] = "/tmp/elf_notes_test.XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string fifo = std::string(dir) + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  const auto r = elf::read_stapsdt(fifo);  // would block without O_NONBLOCK: no writer
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "not a regular file");
  EXPECT_EQ(elf::read_stapsdt(dir).error().message, "not a regular file");
  EXPECT_FALSE(elf::read_stapsdt(std::string(dir) + "/missing").ok());
  unlink(fifo.c_str());
  rmdir(dir);
}
