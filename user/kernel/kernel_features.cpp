// SPDX-License-Identifier: Apache-2.0
// The kernel feature probes: libbpf's probing API where it has one (map
// types, helpers), a tiny program load where it has none (atomics, global
// functions), sysfs for the uprobe PMU's ref_ctr_offset.
#include "kernel/kernel_features.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <linux/btf.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <iterator>
#include <mutex>
#include <utility>

#include "kernel/usdt_attach.h"

namespace asynctrace {
namespace {

constexpr bpf_insn insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
  bpf_insn i{};
  i.code = code;
  i.dst_reg = dst & 0xf;
  i.src_reg = src & 0xf;
  i.off = off;
  i.imm = imm;
  return i;
}
constexpr uint8_t kR0 = 0, kR1 = 1, kR10 = 10;
constexpr bpf_insn mov_imm(uint8_t dst, int32_t imm) { return insn(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm); }
constexpr bpf_insn exit_insn() { return insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0); }
constexpr bpf_insn store_dw(uint8_t base, uint8_t src, int16_t off) {
  return insn(BPF_STX | BPF_DW | BPF_MEM, base, src, off, 0);
}
constexpr bpf_insn atomic_dw(int32_t op, uint8_t base, uint8_t src, int16_t off) {
  return insn(BPF_STX | BPF_DW | BPF_ATOMIC, base, src, off, op);
}

// Loads `insns` as a socket filter (no attach, no kernel version needed);
// true if the kernel accepts it.
bool loads(const bpf_insn* insns, size_t n, const bpf_prog_load_opts* opts = nullptr) {
  const int fd = bpf_prog_load(BPF_PROG_TYPE_SOCKET_FILTER, "at_probe", "GPL", insns, n, opts);
  if (fd < 0) return false;
  close(fd);
  return true;
}

// The object's __sync_lock_test_and_set and __sync_fetch_and_add on map
// values: BPF_XCHG and BPF_ADD | BPF_FETCH (Linux 5.12), here on the stack.
bool probe_atomics(std::string*) {
  const bpf_insn prog[] = {
      mov_imm(kR1, 0),
      store_dw(kR10, kR1, -8),
      mov_imm(kR1, 1),
      atomic_dw(BPF_ADD | BPF_FETCH, kR10, kR1, -8),
      atomic_dw(BPF_XCHG, kR10, kR1, -8),
      mov_imm(kR0, 0),
      exit_insn(),
  };
  return loads(prog, std::size(prog));
}

// BTF of `int main(void)` and the global `int sub(int *p)`: func ids in *main, *sub.
btf* global_func_btf(int* main_id, int* sub_id) {
  btf* b = btf__new_empty();
  if (!b) return nullptr;
  const int int_id = btf__add_int(b, "int", 4, BTF_INT_SIGNED);
  const int ptr_id = btf__add_ptr(b, int_id);
  const int main_proto = btf__add_func_proto(b, int_id);
  *main_id = btf__add_func(b, "at_probe_main", BTF_FUNC_GLOBAL, main_proto);
  const int sub_proto = btf__add_func_proto(b, int_id);
  const int param = btf__add_func_param(b, "p", ptr_id);
  *sub_id = btf__add_func(b, "at_probe_sub", BTF_FUNC_GLOBAL, sub_proto);
  if (int_id < 0 || ptr_id < 0 || main_proto < 0 || *main_id < 0 || sub_proto < 0 || param < 0 || *sub_id < 0 ||
      btf__load_into_kernel(b) != 0) {
    btf__free(b);
    return nullptr;
  }
  return b;
}

// A global function with a pointer argument, verified on its own (the
// object's batch record handlers): Linux 5.12; 5.6 to 5.11 take scalars only.
bool probe_global_funcs(std::string* note) {
  int main_id = -1, sub_id = -1;
  btf* b = global_func_btf(&main_id, &sub_id);
  if (!b) {
    *note = "could not load BTF";
    return false;
  }
  const bpf_insn prog[] = {
      mov_imm(kR1, 0),
      store_dw(kR10, kR1, -8),
      insn(BPF_ALU64 | BPF_MOV | BPF_X, kR1, kR10, 0, 0),
      insn(BPF_ALU64 | BPF_ADD | BPF_K, kR1, 0, 0, -8),
      insn(BPF_JMP | BPF_CALL, 0, BPF_PSEUDO_CALL, 0, 2),  // sub(fp - 8)
      mov_imm(kR0, 0),
      exit_insn(),
      mov_imm(kR0, 0),  // sub: return 0
      exit_insn(),
  };
  const bpf_func_info info[] = {{0, static_cast<__u32>(main_id)}, {7, static_cast<__u32>(sub_id)}};
  LIBBPF_OPTS(bpf_prog_load_opts, opts);
  opts.prog_btf_fd = static_cast<__u32>(btf__fd(b));
  opts.func_info = info;
  opts.func_info_cnt = std::size(info);
  opts.func_info_rec_size = sizeof(bpf_func_info);
  const bool ok = loads(prog, std::size(prog), &opts);
  btf__free(b);
  return ok;
}

bool probe_ringbuf(std::string*) { return libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, nullptr) == 1; }

// Helpers as our programs (SEC("usdt"): kprobe type) would call them.
bool probe_helper(bpf_func_id id) { return libbpf_probe_bpf_helper(BPF_PROG_TYPE_KPROBE, id, nullptr) == 1; }

// uprobe_multi links carry ref_ctr_offsets themselves; libbpf's perf-event
// uprobes need the uprobe PMU's ref_ctr_offset (libbpf 1.1's tracefs
// fallback refuses semaphores).
bool probe_usdt_semaphores(bool uprobe_multi, std::string* note) {
  if (uprobe_multi || access("/sys/bus/event_source/devices/uprobe/format/ref_ctr_offset", F_OK) == 0)
    return true;
  *note = "no uprobe_multi links, and the uprobe PMU has no ref_ctr_offset";
  return false;
}

// libbpf's log while probing: failed probe loads are answers, not news.
int silent(libbpf_print_level, const char*, va_list) { return 0; }

KernelFeatures probe_all() {
  KernelFeatures f{kernel_release(), feature_table()};
  const libbpf_print_fn_t old = libbpf_set_print(silent);
  std::string multi_why;
  const bool multi = usdt::uprobe_multi_supported(&multi_why);
  using Probe = std::function<bool(std::string*)>;
  const std::pair<std::string_view, Probe> probes[] = {
      {"ringbuf", probe_ringbuf},
      {"bpf_loop", [](std::string*) { return probe_helper(BPF_FUNC_loop); }},
      {"atomics", probe_atomics},
      {"global_funcs", probe_global_funcs},
      {"probe_read_user", [](std::string*) { return probe_helper(BPF_FUNC_probe_read_user); }},
      {"usdt_semaphores", [multi](std::string* note) { return probe_usdt_semaphores(multi, note); }},
      {"uprobe_multi",
       [&](std::string* note) {
         if (!multi) *note = multi_why;
         return multi;
       }},
  };
  for (KernelFeature& k : f.list)
    for (const auto& [name, probe] : probes)
      if (k.name == name) k.present = probe(&k.note);
  libbpf_set_print(old);
  if (const char* hide = std::getenv("ASYNCTRACE_TEST_HIDE_FEATURE")) hide_features(f, hide);
  return f;
}

}  // namespace

std::string kernel_release() {
  utsname u{};
  return uname(&u) == 0 ? std::string(u.release) : std::string("unknown");
}

const KernelFeatures& kernel_features() {
  static std::once_flag once;
  static KernelFeatures features;
  std::call_once(once, [] { features = probe_all(); });
  return features;
}

}  // namespace asynctrace
