// SPDX-License-Identifier: Apache-2.0
#include "kernel/elf_notes.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace asynctrace::elf {
namespace {

constexpr uint32_t kNtStapsdt = 3;  // note type of SystemTap SDT probes
constexpr std::string_view kOwner("stapsdt\0", 8);
constexpr std::string_view kNoteSection = ".note.stapsdt";
constexpr std::string_view kBaseSection = ".stapsdt.base";

Error bad(const std::string& why) { return Error{kExitTracing, why}; }

// Every read goes through here: bounds-checked against the file size and
// charged to one budget, so overlapping sections cannot make us read more
// than kMaxTotalRead whatever the headers claim.
class Reader {
 public:
  Reader(const ReadAt& read, uint64_t size) : read_(read), size_(size) {}
  bool at(void* buf, uint64_t len, uint64_t off) {
    if (off > size_ || len > size_ - off || len > kMaxTotalRead - used_) {
      over_ |= len <= size_ && off <= size_ - len;  // in the file, over the budget
      return false;
    }
    used_ += len;
    return len == 0 || read_(buf, static_cast<size_t>(len), off);
  }
  bool over_budget() const { return over_; }

 private:
  const ReadAt& read_;
  uint64_t size_;
  uint64_t used_ = 0;
  bool over_ = false;
};

// The notes of one section's bytes; a framing error ends the list.
void parse_notes(const std::vector<char>& sec, std::vector<Note>* out) {
  auto align4 = [](uint64_t v) { return (v + 3) & ~uint64_t{3}; };
  uint64_t off = 0;
  while (off + sizeof(Elf64_Nhdr) <= sec.size()) {
    Elf64_Nhdr nh;
    std::memcpy(&nh, sec.data() + off, sizeof nh);
    const uint64_t name_off = off + sizeof nh;
    const uint64_t desc_off = name_off + align4(nh.n_namesz);
    const uint64_t next = desc_off + align4(nh.n_descsz);
    if (next > sec.size() || next <= off) return;  // malformed: stop, do not guess
    off = next;
    if (nh.n_type != kNtStapsdt || std::string_view(sec.data() + name_off, nh.n_namesz) != kOwner) continue;
    // desc: u64 pc, u64 base, u64 semaphore, "provider\0name\0args\0"
    Note n;
    const char* d = sec.data() + desc_off;
    const char* d_end = d + nh.n_descsz;
    uint64_t addr[3];
    if (nh.n_descsz < sizeof addr + 3) {
      n.error = "truncated note";
      out->push_back(std::move(n));
      continue;
    }
    std::memcpy(addr, d, sizeof addr);
    n.pc = addr[0];
    n.base = addr[1];
    n.semaphore = addr[2];
    const char* prov = d + sizeof addr;
    const char* prov_end = static_cast<const char*>(std::memchr(prov, 0, static_cast<size_t>(d_end - prov)));
    n.provider.assign(prov, prov_end ? prov_end : d_end);
    const char* name = prov_end ? prov_end + 1 : d_end;
    const char* name_end =
        name < d_end ? static_cast<const char*>(std::memchr(name, 0, static_cast<size_t>(d_end - name))) : nullptr;
    const char* args = name_end ? name_end + 1 : d_end;
    const char* args_end =
        args < d_end ? static_cast<const char*>(std::memchr(args, 0, static_cast<size_t>(d_end - args))) : nullptr;
    if (!prov_end || prov_end + 1 >= d_end || !name_end || name_end == name || name_end + 1 >= d_end || !args_end) {
      n.error = "malformed note";
    } else {
      n.name.assign(name, name_end);
      n.args.assign(args, args_end);
    }
    out->push_back(std::move(n));
  }
}

// The ELF header's checks, shared by every parse.
Result<Elf64_Ehdr> read_header(Reader& r) {
  Elf64_Ehdr eh;
  if (!r.at(&eh, sizeof eh, 0) || std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) return bad("not an ELF file");
  if (eh.e_ident[EI_CLASS] != ELFCLASS64) return bad("not a 64-bit ELF file");
  if (eh.e_ident[EI_DATA] != ELFDATA2LSB) return bad("not little-endian");
  return eh;
}

struct SectionTable {
  std::vector<Elf64_Shdr> headers;  // empty: the file has no sections
  std::vector<char> names;          // .shstrtab, NUL-terminated
  std::string_view name_of(const Elf64_Shdr& sh) const {
    // names.size() >= 1; sh_name + 1 would wrap at 0xffffffff (the fuzzer's find).
    return sh.sh_name < names.size() - 1 ? std::string_view(names.data() + sh.sh_name) : std::string_view();
  }
};

// Section headers and their names; e_shnum / e_shstrndx overflow into
// section 0 for files with many sections.
Result<SectionTable> read_sections(Reader& r, const Elf64_Ehdr& eh, uint64_t size) {
  auto too_large = [&r](const char* why) { return bad(r.over_budget() ? "too large to read" : why); };
  SectionTable t;
  if (eh.e_shoff == 0) return t;
  if (eh.e_shentsize != sizeof(Elf64_Shdr)) return bad("bad section headers");
  Elf64_Shdr sh0;
  if (!r.at(&sh0, sizeof sh0, eh.e_shoff)) return bad("bad section headers");
  const uint64_t shnum = eh.e_shnum ? eh.e_shnum : sh0.sh_size;
  const uint64_t shstrndx = eh.e_shstrndx == SHN_XINDEX ? sh0.sh_link : eh.e_shstrndx;
  if (shnum == 0 || shnum > kMaxSectionHeaders || shstrndx >= shnum) return bad("bad section headers");
  t.headers.resize(shnum);
  if (!r.at(t.headers.data(), shnum * sizeof(Elf64_Shdr), eh.e_shoff)) return too_large("bad section headers");
  const Elf64_Shdr& strtab = t.headers[shstrndx];
  if (strtab.sh_size > size) return bad("bad section headers");
  if (strtab.sh_size >= kMaxTotalRead) return bad("too large to read");
  t.names.assign(strtab.sh_size + 1, '\0');  // +1: always NUL-terminated
  if (!r.at(t.names.data(), strtab.sh_size, strtab.sh_offset)) return too_large("bad section headers");
  return t;
}

// Opens `path` for the parsers: O_NONBLOCK (opening a FIFO must not wait for
// a writer), a regular file only, reads that fail short.
template <class Parse>
auto with_file(const std::string& path, const Parse& parse) -> decltype(parse(ReadAt(), uint64_t{})) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) return bad(std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  struct stat st {};
  if (fstat(fd, &st) != 0) return bad(std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return bad("not a regular file");
  return parse(
      [fd](void* buf, size_t len, uint64_t off) {
        auto* p = static_cast<char*>(buf);
        while (len > 0) {
          const ssize_t n = pread(fd, p, len, static_cast<off_t>(off));
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) return false;  // error, or the file is shorter than it was
          p += n;
          len -= static_cast<size_t>(n);
          off += static_cast<uint64_t>(n);
        }
        return true;
      },
      static_cast<uint64_t>(st.st_size));
}

ReadAt bytes_reader(std::string_view bytes) {
  return [bytes](void* buf, size_t len, uint64_t off) {
    std::memcpy(buf, bytes.data() + off, len);  // the parsers bound every read by the size
    return true;
  };
}

}  // namespace

Result<StapsdtNotes> parse_stapsdt(const ReadAt& read, uint64_t size) {
  Reader r(read, size);
  auto too_large = [&r](const char* why) { return bad(r.over_budget() ? "too large to read" : why); };
  StapsdtNotes out;
  auto header = read_header(r);
  if (!header.ok()) return header.error();
  const Elf64_Ehdr& eh = header.value();
  out.type = eh.e_type;

  // Program headers: the PT_LOAD segments map addresses to file offsets.
  if (eh.e_phnum) {
    if (eh.e_phentsize != sizeof(Elf64_Phdr)) return bad("bad program headers");  // e_phnum: at most 65535
    std::vector<Elf64_Phdr> phdrs(eh.e_phnum);
    if (!r.at(phdrs.data(), phdrs.size() * sizeof(Elf64_Phdr), eh.e_phoff)) return too_large("bad program headers");
    for (const Elf64_Phdr& ph : phdrs)
      if (ph.p_type == PT_LOAD) out.segments.push_back({ph.p_vaddr, ph.p_memsz, ph.p_offset, (ph.p_flags & PF_X) != 0});
  }

  auto sections = read_sections(r, eh, size);
  if (!sections.ok()) return sections.error();
  const SectionTable& t = sections.value();
  for (const Elf64_Shdr& sh : t.headers) {
    const std::string_view name = t.name_of(sh);
    if (name == kBaseSection && !out.base_addr) out.base_addr = sh.sh_addr;
    if (name != kNoteSection || sh.sh_type != SHT_NOTE) continue;
    out.has_section = true;
    if (sh.sh_size > size) return bad("bad section headers");
    if (sh.sh_size > kMaxTotalRead) return bad("too large to read");
    std::vector<char> sec(sh.sh_size);
    if (!r.at(sec.data(), sec.size(), sh.sh_offset)) return too_large("bad section headers");
    parse_notes(sec, &out.notes);
  }
  return out;
}

Result<std::string> parse_section_prefix(const ReadAt& read, uint64_t size, std::string_view name, size_t max_len) {
  Reader r(read, size);
  auto header = read_header(r);
  if (!header.ok()) return header.error();
  auto sections = read_sections(r, header.value(), size);
  if (!sections.ok()) return sections.error();
  for (const Elf64_Shdr& sh : sections.value().headers) {
    if (sections.value().name_of(sh) != name) continue;
    if (sh.sh_type == SHT_NOBITS) return bad("section " + std::string(name) + " has no bytes in the file");
    std::string out(std::min<uint64_t>(sh.sh_size, max_len), '\0');
    if (!r.at(out.data(), out.size(), sh.sh_offset)) return bad("bad section headers");
    return out;
  }
  return bad("no section " + std::string(name));
}

Result<StapsdtNotes> parse_stapsdt_bytes(std::string_view bytes) {
  return parse_stapsdt(bytes_reader(bytes), bytes.size());
}

Result<StapsdtNotes> read_stapsdt(const std::string& path) {
  return with_file(path, [](const ReadAt& read, uint64_t size) { return parse_stapsdt(read, size); });
}

Result<std::string> section_prefix_bytes(std::string_view bytes, std::string_view name, size_t max_len) {
  return parse_section_prefix(bytes_reader(bytes), bytes.size(), name, max_len);
}

Result<std::string> read_section_prefix(const std::string& path, std::string_view name, size_t max_len) {
  return with_file(path, [&](const ReadAt& read, uint64_t size) { return parse_section_prefix(read, size, name, max_len); });
}

}  // namespace asynctrace::elf
