// SPDX-License-Identifier: Apache-2.0
// 5-byte nop probe sites (ASYNCTRACE_PROBE_NOP5, docs/probes.md "Probe sites:
// 5-byte nops"). Linux >= 6.17 turns a uprobe on such a site into a call to a
// trampoline, which writes below rsp: tests/programs/redzone.c keeps a pattern
// in its red zone across a site and runs under bpftrace. Built with
// -mno-red-zone it must come through undamaged while the kernel really did
// optimize the site; built without, the same program must see damage (else
// this test could not fail). And the CPython runtime keeps 1-byte nops (fork
// safety, docs/probes.md). Root, real uprobes.
#include <elf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cinttypes>
#include <cstring>
#include <filesystem>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "harness.h"

using namespace std::chrono_literals;

namespace {

constexpr unsigned char kNop5[5] = {0x0f, 0x1f, 0x44, 0x00, 0x00};
constexpr uint64_t kHits = 200000;

std::string hex(const unsigned char* b, size_t n) {
  std::string out;
  char buf[4];
  for (size_t i = 0; i < n; ++i) {
    snprintf(buf, sizeof buf, "%s%02x", i ? " " : "", b[i]);
    out += buf;
  }
  return out;
}

// The code at `addr` as the process sees it now: uprobes show there (0xcc, or
// 0xe8 once optimized), not in the file.
std::string code_at(pid_t pid, uint64_t addr) {
  unsigned char b[5] = {};
  const int fd = open(("/proc/" + std::to_string(pid) + "/mem").c_str(), O_RDONLY);
  if (fd < 0) return "";
  const ssize_t n = pread(fd, b, sizeof b, static_cast<off_t>(addr));
  close(fd);
  return n == sizeof b ? hex(b, sizeof b) : "";
}

struct Site {
  std::string name;
  uint64_t pc = 0;
  std::string bytes;  // the five bytes at pc in the file
};

// Every asynctrace:* probe of an ELF file from its .note.stapsdt notes.
std::vector<Site> asynctrace_sites(const std::string& path) {
  const std::string elf = e2e::read_file(path);
  std::vector<Site> out;
  if (elf.size() < sizeof(Elf64_Ehdr)) return out;
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(elf.data());
  const auto* sh = reinterpret_cast<const Elf64_Shdr*>(elf.data() + eh->e_shoff);
  const char* shstr = elf.data() + sh[eh->e_shstrndx].sh_offset;
  auto file_bytes = [&](uint64_t addr) -> std::string {
    for (int s = 0; s < eh->e_shnum; ++s) {
      if ((sh[s].sh_flags & SHF_ALLOC) && sh[s].sh_type != SHT_NOBITS && addr >= sh[s].sh_addr &&
          addr + 5 <= sh[s].sh_addr + sh[s].sh_size)
        return hex(reinterpret_cast<const unsigned char*>(elf.data() + sh[s].sh_offset + (addr - sh[s].sh_addr)), 5);
    }
    return "";
  };
  for (int s = 0; s < eh->e_shnum; ++s) {
    if (std::strcmp(shstr + sh[s].sh_name, ".note.stapsdt") != 0) continue;
    for (uint64_t off = 0; off + sizeof(Elf64_Nhdr) <= sh[s].sh_size;) {
      const auto* nh = reinterpret_cast<const Elf64_Nhdr*>(elf.data() + sh[s].sh_offset + off);
      const char* desc = reinterpret_cast<const char*>(nh + 1) + ((nh->n_namesz + 3) & ~3u);
      // desc: pc, base, semaphore (8 bytes each), then "provider\0name\0args\0".
      const char* provider = desc + 24;
      if (nh->n_type == 3 && std::strcmp(provider, "asynctrace") == 0) {
        Site site;
        site.name = provider + std::strlen(provider) + 1;
        std::memcpy(&site.pc, desc, sizeof site.pc);
        site.bytes = file_bytes(site.pc);
        out.push_back(site);
      }
      off += sizeof(*nh) + ((nh->n_namesz + 3) & ~3u) + ((nh->n_descsz + 3) & ~3u);
    }
  }
  return out;
}

struct RedzoneRun {
  uint64_t damaged = 0, hits = 0, counted = 0;
  std::string before, attached, after;  // site bytes: at start, attached before hits, after hits
};

// Runs tests/programs/redzone_<variant> under bpftrace counting task__resume.
// Hits start once bpftrace's BEGIN ran (it runs after every probe is attached:
// the int3 alone shows up before the BPF program is on the uprobe).
void run_redzone(const std::string& variant, RedzoneRun* r) {
  const std::string bin = e2e::binary_dir() + "/tests/programs/redzone_" + variant;
  e2e::Program app({bin, std::to_string(kHits), "--wait"});
  const auto site_line = app.wait_prefix("site ", 30s);
  ASSERT_TRUE(site_line) << app.stderr_text();
  uint64_t site = 0;
  char b[5][3] = {};
  ASSERT_EQ(sscanf(site_line->c_str(), "site 0x%" SCNx64 " bytes %2s %2s %2s %2s %2s", &site, b[0], b[1], b[2], b[3],
                   b[4]),
            6)
      << *site_line;
  r->before = std::string(b[0]) + " " + b[1] + " " + b[2] + " " + b[3] + " " + b[4];
  ASSERT_TRUE(app.wait_line("ready", 10s)) << app.stderr_text();

  e2e::Program tracer({"bpftrace", "-p", std::to_string(app.pid()), "-e",
                       "BEGIN { printf(\"attached\\n\"); } "
                       "usdt:" + bin + ":asynctrace:task__resume { @n = count(); }"});
  ASSERT_TRUE(tracer.wait_line("attached", 60s)) << tracer.stderr_text();
  r->attached = code_at(app.pid(), site);

  app.signal(SIGUSR1);
  const auto result = app.wait_prefix("damaged ", 120s);
  ASSERT_TRUE(result) << app.stderr_text();
  ASSERT_EQ(sscanf(result->c_str(), "damaged %" SCNu64 " hits %" SCNu64, &r->damaged, &r->hits), 2) << *result;
  ASSERT_TRUE(app.wait_line("done", 10s));
  r->after = code_at(app.pid(), site);  // still attached

  tracer.signal(SIGINT);
  std::string out;
  EXPECT_EQ(tracer.wait_exit(30s, &out), 0) << tracer.stderr_text();
  std::smatch m;
  ASSERT_TRUE(std::regex_search(out, m, std::regex(R"(@n: (\d+))"))) << out << tracer.stderr_text();
  r->counted = std::stoull(m[1]);
  app.signal(SIGUSR1);
  EXPECT_EQ(app.wait_exit(30s, &out), 0) << app.stderr_text();
}

std::string kernel_release() {
  utsname u{};
  uname(&u);
  return u.release;
}

TEST(Nop5, SafeBuildIsOptimizedAndKeepsItsRedZone) {
  RedzoneRun r;
  ASSERT_NO_FATAL_FAILURE(run_redzone("safe", &r));
  EXPECT_EQ(r.before, hex(kNop5, 5)) << "the probe site is not a 5-byte nop";
  EXPECT_EQ(r.attached.substr(0, 2), "cc");
  // Not optimized means: no call, every hit an int3 trap. On this kernel that
  // is a failure, never a skip: the point of the 5-byte sites is lost.
  EXPECT_EQ(r.after.substr(0, 2), "e8")
      << "the kernel did not optimize the uprobe on the 5-byte nop (site reads " << r.after << " after " << r.hits
      << " hits; 0xcc = still an int3 trap). Needs Linux >= 6.17 on x86-64 (arch_uprobe_optimize, the uprobe "
      << "syscall in /proc/kallsyms); this is " << kernel_release();
  EXPECT_EQ(r.hits, kHits);
  EXPECT_EQ(r.counted, kHits) << "bpftrace did not see every hit";
  EXPECT_EQ(r.damaged, 0u) << "-mno-red-zone build had its red zone pattern damaged";
}

// The control: without -mno-red-zone, every hit after the first one (the int3
// trap that optimizes the site) goes through the call and overwrites the
// pattern at rsp-8 .. rsp-32. Deterministic: kHits - 1 damaged calls.
TEST(Nop5, UnsafeBuildWithoutNoRedZoneIsDamaged) {
  RedzoneRun r;
  ASSERT_NO_FATAL_FAILURE(run_redzone("unsafe", &r));
  EXPECT_EQ(r.before, hex(kNop5, 5));
  EXPECT_EQ(r.after.substr(0, 2), "e8") << r.after << " on " << kernel_release();
  EXPECT_EQ(r.counted, kHits);
  EXPECT_GE(r.damaged, kHits - 10) << "the control build's red zone survived the optimized probe: this test "
                                      "cannot tell a safe build from an unsafe one";
}

// The CPython runtime does not opt in (docs/probes.md: a child forked while
// traced would crash at an optimized site on this kernel): every asynctrace
// probe site of every built extension is sys/sdt.h's 1-byte nop.
TEST(Nop5, RuntimeExtensionKeepsOneByteNops) {
  const auto pythons = e2e::built_pythons();
  ASSERT_FALSE(pythons.empty());
  for (const auto& [tag, py] : pythons) {
    SCOPED_TRACE(tag);
    std::vector<std::string> sos;
    for (const auto& e : std::filesystem::directory_iterator(e2e::binary_dir() + "/python/" + tag + "/asynctrace"))
      if (e.path().filename().string().rfind("_asynctrace", 0) == 0 && e.path().extension() == ".so")
        sos.push_back(e.path().string());
    ASSERT_EQ(sos.size(), 1u);
    const auto sites = asynctrace_sites(sos[0]);
    std::set<std::string> names;
    for (const auto& s : sites) {
      names.insert(s.name);
      EXPECT_EQ(s.bytes.substr(0, 2), "90") << s.name << " at 0x" << std::hex << s.pc << " in " << sos[0];
    }
    for (const char* want : {"task__create", "task__resume", "task__await", "task__complete", "batch__flush"})
      EXPECT_TRUE(names.count(want)) << want << " missing from " << sos[0];
  }
}

}  // namespace
