// SPDX-License-Identifier: Apache-2.0
// The BPF object and what libbpf says about it.
#include "kernel/object.h"

#include <bpf/libbpf.h>
#include <errno.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string_view>

#include "asynctrace.skel.h"
#include "core/verifier_log.h"
#include "kernel/kernel_features.h"
#include "kernel/loader.h"

namespace asynctrace {
namespace {

constexpr unsigned long kBpfFsMagic = 0xcafe4a11;

constexpr int kCapPerfmon = 38;
constexpr int kCapBpf = 39;
constexpr int kCapSysAdmin = 21;
constexpr unsigned long kTracefsMagic = 0x74726163;  // TRACEFS_MAGIC

// libbpf logs through one process-wide callback. Keep its last one-line
// warning so an error message can say why, and the last program the kernel
// refused with its verifier log (load_error()), and echo everything, whole,
// only when asked to.
std::mutex g_log_mu;
std::string g_last_libbpf_warning;
ProgLoadFailure g_prog_failure;
bool g_verbose = false;

// One libbpf message, however long: a refused program's whole verifier log
// comes as one message.
std::string format_message(const char* fmt, va_list args) {
  va_list copy;
  va_copy(copy, args);
  const int n = vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  if (n <= 0) return {};
  std::string msg(static_cast<size_t>(n) + 1, '\0');
  va_copy(copy, args);
  vsnprintf(msg.data(), msg.size(), fmt, copy);
  va_end(copy);
  msg.resize(static_cast<size_t>(n));
  return msg;
}

int libbpf_log(enum libbpf_print_level level, const char* fmt, va_list args) {
  const std::string msg = format_message(fmt, args);
  std::lock_guard lock(g_log_mu);
  if (level == LIBBPF_WARN && !parse_prog_load_warning(msg, &g_prog_failure)) {
    std::string_view s(msg);
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.remove_suffix(1);
    if (s.find('\n') == std::string_view::npos) g_last_libbpf_warning.assign(s);
  }
  if (!g_verbose) return 0;
  return fputs(msg.c_str(), stderr);
}

ProgLoadFailure take_prog_failure() {
  std::lock_guard lock(g_log_mu);
  ProgLoadFailure f;
  std::swap(f, g_prog_failure);
  return f;
}

std::string take_libbpf_warning() {
  std::lock_guard lock(g_log_mu);
  std::string w;
  w.swap(g_last_libbpf_warning);
  return w;
}

// Effective capabilities from /proc/self/status: what the kernel will check,
// unlike euid (root in a container may lack CAP_BPF).
uint64_t effective_caps() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("CapEff:", 0) != 0) continue;
    return std::stoull(line.substr(7), nullptr, 16);
  }
  return 0;
}

// The one line for a program the verifier refused: its name, the verifier's
// reason (the end of its log) and the kernel release.
Error verifier_error(const ProgLoadFailure& f, const std::string& hint) {
  std::string why = verifier_reason(f.log);
  if (why.empty()) why = "its log gives no reason";
  return Error{kExitTracing, "failed to load BPF program '" + f.prog + "': the kernel's verifier rejected it: " +
                                 why + " (Linux " + kernel_release() + ")" + hint};
}

}  // namespace

void SkelDeleter::operator()(asynctrace_bpf* skel) const { asynctrace_bpf__destroy(skel); }

Result<SkelPtr> open_object() {
  // The object has no CO-RE relocations (bpf/asynctrace.bpf.c): no kernel
  // BTF is needed or read.
  SkelPtr skel(asynctrace_bpf__open());
  if (!skel) return Error{kExitTracing, "failed to open BPF object 'asynctrace': " + reason(errno)};
  return skel;
}

// Routes libbpf's log through libbpf_log, echoing it only when verbose.
void init_libbpf_log(bool verbose) {
  {
    std::lock_guard lock(g_log_mu);
    g_verbose = verbose;
    g_last_libbpf_warning.clear();
    g_prog_failure = {};
  }
  libbpf_set_print(libbpf_log);
}

// "<strerror(err)>[ (libbpf: <last warning>)]"
std::string reason(int err) {
  std::string r = std::strerror(err < 0 ? -err : err);
  std::string w = take_libbpf_warning();
  if (!w.empty()) r += " (" + w + ")";
  return r;
}

// Why asynctrace_bpf__load() failed (`err`: its -errno), as the one line to
// report; every load of the skeleton goes through here. A program the
// verifier refused (libbpf printed its log) is exit 7 with the program and
// the verifier's reason: with the capabilities, an EACCES or EPERM from
// BPF_PROG_LOAD is the verifier's, not a privilege problem. EACCES/EPERM
// without them is exit 6; anything else exit 7, with `remedy` if given.
Error load_error(int err, bool verbose, const std::string& remedy) {
  const ProgLoadFailure f = take_prog_failure();
  if (f.has_log) return verifier_error(f, verbose ? "" : "; rerun with --verbose for the verifier log");
  const int e = err < 0 ? -err : err;
  if ((e == EPERM || e == EACCES) && !check_privileges().ok())
    return Error{kExitPrivilege, "failed to load BPF object 'asynctrace': " + reason(err) +
                                     "; run as root or grant CAP_BPF and CAP_PERFMON"};
  const std::string what = f.prog.empty() ? "BPF object 'asynctrace'" : "BPF program '" + f.prog + "'";
  const std::string hint = !remedy.empty() ? "; " + remedy : verbose ? "" : "; rerun with --verbose for libbpf's log";
  return Error{kExitTracing, "failed to load " + what + ": " + reason(err) + hint};
}

// ASYNCTRACE_TEST_VERIFIER_REJECT=1 (tests only): replay_end makes an access
// the verifier refuses, to test how a rejected load is reported.
void apply_test_knobs(asynctrace_bpf* skel) {
  const char* env = std::getenv("ASYNCTRACE_TEST_VERIFIER_REJECT");
  skel->rodata->test_reject = env && std::string_view(env) == "1";
}

// libbpf creates uprobes through the perf "uprobe" PMU when the kernel has it
// and falls back to tracefs uprobe_events otherwise; only the fallback needs
// tracefs mounted.
Status ensure_uprobe_interface() {
  struct stat st {};
  if (stat("/sys/bus/event_source/devices/uprobe/type", &st) == 0) return ok_status();
  struct statfs fs {};
  if (statfs("/sys/kernel/tracing", &fs) == 0 && static_cast<unsigned long>(fs.f_type) == kTracefsMagic)
    return ok_status();
  if (statfs("/sys/kernel/debug/tracing", &fs) == 0 && static_cast<unsigned long>(fs.f_type) == kTracefsMagic)
    return ok_status();
  if (mount("nodev", "/sys/kernel/tracing", "tracefs", 0, nullptr) == 0) return ok_status();
  return Error{kExitTracing, std::string("failed to mount tracefs '/sys/kernel/tracing': ") +
                                 std::strerror(errno) +
                                 "; the kernel has no uprobe PMU, so uprobes need tracefs"};
}


Status ensure_bpffs() {
  struct statfs fs {};
  if (statfs("/sys/fs/bpf", &fs) == 0 && static_cast<unsigned long>(fs.f_type) == kBpfFsMagic)
    return ok_status();
  if (mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700") == 0) return ok_status();
  return Error{kExitTracing, std::string("failed to mount bpffs '/sys/fs/bpf': ") + std::strerror(errno)};
}

Status check_privileges() {
  uint64_t caps = effective_caps();
  auto has = [caps](int cap) { return (caps >> cap) & 1; };
  // CAP_SYS_ADMIN covers BPF and perf events on every kernel; CAP_BPF +
  // CAP_PERFMON is the least privilege on >= 5.8.
  if (has(kCapSysAdmin) || (has(kCapBpf) && has(kCapPerfmon))) return ok_status();
  return Error{kExitPrivilege,
               "failed to attach tracer: missing privileges; run as root or grant CAP_BPF and "
               "CAP_PERFMON (plus CAP_SYS_PTRACE for a process in another mount namespace, e.g. a container)"};
}


}  // namespace asynctrace
