// SPDX-License-Identifier: Apache-2.0
// bpf_stack_check OBJECT [--budget BYTES] [--expect-over]
//
// The BPF stack budget, checked on the compiled object, so that it fails on
// ANY machine (no kernel, no root): the verifier of every kernel before 6.13
// (and some later ones) refuses a program whose deepest call chain uses more
// than 512 bytes of stack in all, and which chain is deepest depends on the
// compiler's code, not on the kernel we happen to run on. We keep every chain
// under a smaller budget (384) so that a compiler or kernel change that adds
// a few spills does not break a load somewhere.
//
// How it counts, like the verifier's check_max_stack_depth():
//  - a function's depth is the deepest r10-relative access in its code
//    (loads/stores off r10, and pointers formed as `rX = r10; rX += -N`);
//  - each frame counts round_up(max(depth, 1), 32) bytes;
//  - a chain follows BPF-to-BPF calls AND callbacks (a function whose
//    address is taken with ld_imm64, as for bpf_loop), which older
//    verifiers also charge to the caller's chain; a caller of bpf_loop is
//    charged 24 bytes more (the slots the verifier adds when it inlines it).
// Exit: 0 within budget, 1 over budget (or, with --expect-over, within), 2 on
// bad input.
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace {

constexpr int kBpfInsnSize = 8;
constexpr uint8_t kClassMask = 0x07, kClassLd = 0x00, kClassLdx = 0x01, kClassSt = 0x02, kClassStx = 0x03,
                  kClassAlu64 = 0x07, kClassJmp = 0x05;
constexpr uint8_t kOpCall = 0x80, kOpMov = 0xb0, kOpAdd = 0x00, kSrcX = 0x08, kSrcK = 0x00;
constexpr uint8_t kPseudoCall = 1, kPseudoFunc = 4;
constexpr int32_t kHelperLoop = 181;  // BPF_FUNC_loop
constexpr int kLoopInlineExtra = 24;  // 3 stack slots (verifier's inline_bpf_loop)

struct Insn {
  uint8_t code;
  uint8_t regs;  // dst: low nibble, src: high nibble
  int16_t off;
  int32_t imm;
  int dst() const { return regs & 0x0f; }
  int src() const { return regs >> 4; }
};

struct Func {
  std::string name;
  size_t section = 0;
  uint64_t start = 0, size = 0;  // bytes within the section
  bool program = false;          // an entry point (SEC other than .text)
  int depth = 0;
  std::set<std::string> callees;  // calls and callbacks
};

struct Reloc {
  size_t sym;  // symbol index
};

int round_frame(int depth) { return (std::max(depth, 1) + 31) / 32 * 32; }

class Object {
 public:
  bool open(const char* path, std::string* err) {
    if (elf_version(EV_CURRENT) == EV_NONE) return fail(err, "libelf too old");
    fd_ = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) return fail(err, std::string("cannot open: ") + std::strerror(errno));
    elf_ = elf_begin(fd_, ELF_C_READ, nullptr);
    if (!elf_) return fail(err, elf_errmsg(-1));
    size_t shstrndx = 0;
    if (elf_getshdrstrndx(elf_, &shstrndx)) return fail(err, elf_errmsg(-1));
    for (Elf_Scn* scn = nullptr; (scn = elf_nextscn(elf_, scn));) {
      GElf_Shdr sh;
      if (!gelf_getshdr(scn, &sh)) continue;
      const size_t idx = elf_ndxscn(scn);
      const char* name = elf_strptr(elf_, shstrndx, sh.sh_name);
      names_[idx] = name ? name : "";
      if (sh.sh_type == SHT_SYMTAB) {
        symtab_ = scn;
        strtab_ = sh.sh_link;
      } else if (sh.sh_type == SHT_PROGBITS && (sh.sh_flags & SHF_EXECINSTR)) {
        Elf_Data* d = elf_getdata(scn, nullptr);
        if (!d || d->d_size % kBpfInsnSize) return fail(err, "bad code section " + names_[idx]);
        auto& code = code_[idx];
        code.resize(d->d_size / kBpfInsnSize);
        std::memcpy(code.data(), d->d_buf, d->d_size);
      } else if (sh.sh_type == SHT_REL) {
        rel_sections_.push_back(scn);
      }
    }
    if (!symtab_) return fail(err, "no symbol table");
    return read_symbols(err) && read_relocs(err);
  }
  ~Object() {
    if (elf_) elf_end(elf_);
    if (fd_ >= 0) ::close(fd_);
  }

  std::map<std::string, Func>& funcs() { return funcs_; }

  // Per function: depth and callees.
  bool analyse(std::string* err) {
    for (auto& [name, f] : funcs_) {
      const auto& code = code_[f.section];
      const size_t first = f.start / kBpfInsnSize, last = (f.start + f.size) / kBpfInsnSize;
      if (last > code.size()) return fail(err, "function " + name + " outside its section");
      bool r10_copy[11] = {};  // registers holding r10 (+ nothing yet)
      for (size_t i = first; i < last; ++i) {
        const Insn& in = code[i];
        const uint8_t cls = in.code & kClassMask;
        if ((cls == kClassLdx && in.src() == 10) || ((cls == kClassSt || cls == kClassStx) && in.dst() == 10)) {
          if (in.off < 0) f.depth = std::max(f.depth, -static_cast<int>(in.off));
        }
        if (cls == kClassAlu64 && (in.code & 0xf0) == kOpMov && (in.code & kSrcX) && in.src() == 10) {
          r10_copy[in.dst()] = true;
          continue;
        }
        if (cls == kClassAlu64 && (in.code & 0xf0) == kOpAdd && !(in.code & kSrcX) && in.dst() <= 10 &&
            r10_copy[in.dst()]) {
          if (in.imm < 0) f.depth = std::max(f.depth, -in.imm);
          r10_copy[in.dst()] = false;  // now r10 - N; further adds are rare
          continue;
        }
        // Any other write to a register ends its life as a copy of r10.
        if ((cls == kClassAlu64 || cls == 0x04 || cls == kClassLdx || cls == kClassLd) && in.dst() <= 10)
          r10_copy[in.dst()] = false;
        if (cls == kClassJmp && (in.code & 0xf0) == kOpCall) {
          for (int r = 0; r <= 5; ++r) r10_copy[r] = false;
          if (in.src() == 0 && in.imm == kHelperLoop) loop_callers_.insert(name);
          if (in.src() == kPseudoCall) {
            std::string callee;
            if (!target(f.section, i, in, /*ld_imm64=*/false, &callee, err)) return false;
            f.callees.insert(callee);
          }
        }
        if (in.code == (kClassLd | 0x18)) {  // ld_imm64: two slots
          // In the object a function's address is an ld_imm64 relocated
          // against a code section (libbpf turns it into BPF_PSEUDO_FUNC).
          if (in.src() == kPseudoFunc || relocated_to_code(f.section, i)) {
            std::string callee;
            if (!target(f.section, i, in, /*ld_imm64=*/true, &callee, err)) return false;
            f.callees.insert(callee);
          }
          ++i;
        }
      }
      if (loop_callers_.count(name)) f.depth += kLoopInlineExtra;
    }
    return true;
  }

  // Deepest chain from `name` in bytes; `path` receives it.
  int chain(const std::string& name, std::vector<std::string>* path, std::set<std::string>& on_stack) {
    auto it = funcs_.find(name);
    if (it == funcs_.end() || on_stack.count(name)) return -1;  // recursion: the verifier refuses it
    on_stack.insert(name);
    int best = 0;
    std::vector<std::string> best_path;
    for (const std::string& c : it->second.callees) {
      std::vector<std::string> p;
      const int d = chain(c, &p, on_stack);
      if (d < 0) {
        on_stack.erase(name);
        return -1;
      }
      if (d > best) best = d, best_path = std::move(p);
    }
    on_stack.erase(name);
    path->assign(1, name);
    path->insert(path->end(), best_path.begin(), best_path.end());
    return round_frame(it->second.depth) + best;
  }

 private:
  static bool fail(std::string* err, const std::string& why) {
    *err = why;
    return false;
  }

  bool read_symbols(std::string* err) {
    Elf_Data* d = elf_getdata(symtab_, nullptr);
    GElf_Shdr sh;
    gelf_getshdr(symtab_, &sh);
    const size_t n = sh.sh_entsize ? sh.sh_size / sh.sh_entsize : 0;
    syms_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      if (!gelf_getsym(d, static_cast<int>(i), &syms_[i])) return fail(err, "bad symbol");
      const GElf_Sym& s = syms_[i];
      if (GELF_ST_TYPE(s.st_info) != STT_FUNC || !code_.count(s.st_shndx)) continue;
      Func f;
      f.name = elf_strptr(elf_, strtab_, s.st_name);
      f.section = s.st_shndx;
      f.start = s.st_value;
      f.size = s.st_size;
      f.program = names_[s.st_shndx] != ".text";
      by_addr_[{f.section, f.start}] = f.name;
      funcs_[f.name] = f;
    }
    return true;
  }

  bool read_relocs(std::string* err) {
    for (Elf_Scn* scn : rel_sections_) {
      GElf_Shdr sh;
      gelf_getshdr(scn, &sh);
      if (!code_.count(sh.sh_info)) continue;  // relocations of data (BTF, maps)
      Elf_Data* d = elf_getdata(scn, nullptr);
      const size_t n = sh.sh_entsize ? sh.sh_size / sh.sh_entsize : 0;
      for (size_t i = 0; i < n; ++i) {
        GElf_Rel r;
        if (!gelf_getrel(d, static_cast<int>(i), &r)) return fail(err, "bad relocation");
        relocs_[{sh.sh_info, r.r_offset / kBpfInsnSize}] = Reloc{GELF_R_SYM(r.r_info)};
      }
    }
    return true;
  }

  bool relocated_to_code(size_t sec, size_t i) const {
    auto r = relocs_.find({sec, i});
    return r != relocs_.end() && r->second.sym < syms_.size() && code_.count(syms_[r->second.sym].st_shndx);
  }

  // The function a call or ld_imm64 at insn i of section sec refers to (as
  // libbpf resolves it: relocation against a function, or against a section
  // symbol plus the instruction's offset; no relocation: pc-relative call).
  bool target(size_t sec, size_t i, const Insn& in, bool ld_imm64, std::string* out, std::string* err) {
    size_t tsec = sec;
    int64_t byte = 0;
    auto r = relocs_.find({sec, i});
    if (r == relocs_.end()) {
      if (ld_imm64) return fail(err, "ld_imm64 of a function without relocation");
      byte = (static_cast<int64_t>(i) + in.imm + 1) * kBpfInsnSize;
    } else {
      if (r->second.sym >= syms_.size()) return fail(err, "bad relocation symbol");
      const GElf_Sym& s = syms_[r->second.sym];
      tsec = s.st_shndx;
      if (GELF_ST_TYPE(s.st_info) == STT_FUNC)
        byte = static_cast<int64_t>(s.st_value);
      else if (ld_imm64)
        byte = static_cast<int64_t>(s.st_value) + in.imm;
      else
        byte = static_cast<int64_t>(s.st_value) + (static_cast<int64_t>(in.imm) + 1) * kBpfInsnSize;
    }
    auto f = by_addr_.find({tsec, static_cast<uint64_t>(byte)});
    if (f == by_addr_.end()) return fail(err, "call target is no function start");
    *out = f->second;
    return true;
  }

  int fd_ = -1;
  Elf* elf_ = nullptr;
  Elf_Scn* symtab_ = nullptr;
  size_t strtab_ = 0;
  std::map<size_t, std::string> names_;
  std::map<size_t, std::vector<Insn>> code_;
  std::vector<Elf_Scn*> rel_sections_;
  std::vector<GElf_Sym> syms_;
  std::map<std::pair<size_t, uint64_t>, Reloc> relocs_;
  std::map<std::pair<size_t, uint64_t>, std::string> by_addr_;
  std::map<std::string, Func> funcs_;
  std::set<std::string> loop_callers_;
};

}  // namespace

int main(int argc, char** argv) {
  const char* path = nullptr;
  int budget = 384;
  bool expect_over = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--budget") && i + 1 < argc)
      budget = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--expect-over"))
      expect_over = true;
    else if (!path)
      path = argv[i];
    else
      path = nullptr, i = argc;
  }
  if (!path || budget <= 0) {
    std::fprintf(stderr, "usage: bpf_stack_check OBJECT [--budget BYTES] [--expect-over]\n");
    return 2;
  }
  static_assert(sizeof(Insn) == kBpfInsnSize);
  Object obj;
  std::string err;
  if (!obj.open(path, &err) || !obj.analyse(&err)) {
    std::fprintf(stderr, "bpf_stack_check: failed to read BPF object '%s': %s\n", path, err.c_str());
    return 2;
  }
  int worst = 0, programs = 0;
  std::printf("%-16s %6s  %s\n", "program", "bytes", "deepest chain (frame depth in bytes)");
  for (auto& [name, f] : obj.funcs()) {
    if (!f.program) continue;
    ++programs;
    std::vector<std::string> p;
    std::set<std::string> on_stack;
    const int d = obj.chain(name, &p, on_stack);
    if (d < 0) {
      std::fprintf(stderr, "bpf_stack_check: program '%s' is recursive\n", name.c_str());
      return 2;
    }
    std::string desc;
    for (const std::string& s : p)
      desc += (desc.empty() ? "" : " -> ") + s + "(" + std::to_string(obj.funcs()[s].depth) + ")";
    std::printf("%-16s %6d  %s%s\n", name.c_str(), d, desc.c_str(), d > budget ? "   OVER BUDGET" : "");
    worst = std::max(worst, d);
  }
  if (!programs) {
    std::fprintf(stderr, "bpf_stack_check: no BPF program in '%s'\n", path);
    return 2;
  }
  const bool over = worst > budget;
  std::printf("deepest: %d bytes, budget %d (the verifier's limit is 512)\n", worst, budget);
  if (over != expect_over) {
    std::fprintf(stderr, "bpf_stack_check: %s\n",
                 over ? "a call chain is over the stack budget" : "expected a chain over the budget, found none");
    return 1;
  }
  return 0;
}
