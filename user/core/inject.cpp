// SPDX-License-Identifier: Apache-2.0
#include "core/inject.h"

#include <cstring>

#include "core/escape.h"

namespace asynctrace {
namespace {

constexpr std::string_view kCookie("xdebugpy", 8);
constexpr const char* kRunHint = "; start it with 'asynctrace run -- python3 app.py' or call asynctrace.enable() in it";

std::string who(pid_t pid, const std::string& comm) {
  return "process " + std::to_string(pid) + " (" + escape_untrusted(comm) + ")";
}

// A Python bytes literal of `raw`: only [A-Za-z0-9/._-] as themselves, so
// no path can end the literal or the line.
std::string bytes_literal(const std::string& raw) {
  static const char* hex = "0123456789abcdef";
  std::string out = "b'";
  for (const unsigned char c : raw) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '/' || c == '.' ||
        c == '_' || c == '-') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out + "'";
}

}  // namespace

std::string PythonBuild::tag() const { return "cp" + std::to_string(major()) + std::to_string(minor()); }

std::optional<PythonBuild> decode_debug_offsets(std::string_view bytes) {
  if (bytes.size() < kDebugOffsetsPrefix || bytes.substr(0, kCookie.size()) != kCookie) return std::nullopt;
  uint64_t fields[2];
  std::memcpy(fields, bytes.data() + kCookie.size(), sizeof fields);
  PythonBuild b;
  b.version_hex = fields[0];
  b.free_threaded = fields[1] != 0;
  return b;
}

std::optional<Error> refuse_build(pid_t pid, const std::string& comm, const std::optional<PythonBuild>& build) {
  const std::string head = "failed to load the asynctrace runtime into " + who(pid, comm) + ": ";
  if (!build)
    return Error{kExitNoProbes, head + "its Python is older than 3.13 (no debug offsets); injection needs 3.14+" +
                                    kRunHint};
  const std::string version = std::to_string(build->major()) + "." + std::to_string(build->minor());
  if (build->major() != 3 || build->minor() < 14)
    return Error{kExitNoProbes, head + "Python " + version + ": injection needs 3.14+" + kRunHint};
  // The version fields of a pre-3.14 layout do not include free_threaded:
  // only asked from here on.
  if (build->free_threaded)
    return Error{kExitNoProbes, head + "Python " + version + "t: free-threaded CPython builds are not supported yet"};
  return std::nullopt;
}

std::string inject_script(const std::string& package_dir) {
  // Runs in the target's main thread at its next eval-breaker check, with a
  // fresh globals dict. Nothing may escape it: CPython prints an exception
  // leaving the script on the target's stderr ("Error executing debugger
  // script"). The import must not leave the directory on sys.path nor its
  // finder in sys.path_importer_cache (the program's own imports would look
  // there), nor write __pycache__ into our directory as the target's user.
  // A program that never imported asyncio is left as it is (enable() would
  // import it).
  return "# Written by asynctrace (docs/python.md, \"Unprepared 3.14 processes\"): loads its dormant\n"
         "# runtime into this process. Removed once the runtime is loaded.\n"
         "def _asynctrace_load():\n"
         "    import os, sys\n"
         "    if 'asyncio' not in sys.modules:\n"
         "        return  # never imported asyncio: nothing to trace, nothing to change\n"
         "    d = os.fsdecode(" +
         bytes_literal(package_dir) +
         ")\n"
         "    added = d not in sys.path\n"
         "    old_dwb = sys.dont_write_bytecode\n"
         "    sys.dont_write_bytecode = True\n"
         "    if added:\n"
         "        sys.path.insert(0, d)\n"
         "    try:\n"
         "        import asynctrace\n"
         "        asynctrace.enable()\n"
         "    finally:\n"
         "        sys.dont_write_bytecode = old_dwb\n"
         "        if added:\n"
         "            try:\n"
         "                sys.path.remove(d)\n"
         "            except ValueError:\n"
         "                pass\n"
         "            sys.path_importer_cache.pop(d, None)\n"
         "\n"
         "\n"
         "try:\n"
         "    _asynctrace_load()\n"
         "except BaseException:\n"
         "    pass\n"
         "del _asynctrace_load\n";
}

Error injector_error(pid_t pid, const std::string& comm, const std::string& report, int ptrace_scope) {
  const auto tab = report.find('\t');
  const std::string type = report.substr(0, tab);
  const std::string msg = tab == std::string::npos ? "" : report.substr(tab + 1);
  const std::string head = "failed to load the asynctrace runtime into " + who(pid, comm) + ": ";
  if (msg.find("Remote debugging is not enabled in the remote process") != std::string::npos)
    return {kExitNoProbes, head + "remote debugging is disabled in it (PYTHON_DISABLE_REMOTE_DEBUG, -X "
                                  "disable_remote_debug, or a build --without-remote-debug)" + kRunHint};
  if (type == "PermissionError" || msg.find("Operation not permitted") != std::string::npos) {
    const std::string why = ptrace_scope == 3
                                ? "Yama's kernel.yama.ptrace_scope is 3, which forbids it even to root"
                                : "it needs CAP_SYS_PTRACE over the process, and no security module (Yama, "
                                  "SELinux, AppArmor) forbidding the write";
    return {kExitPrivilege, head + "the kernel refused to let us write into its memory: " + why};
  }
  if (type == "ProcessLookupError") return {kExitNoProcess, "no such process: " + std::to_string(pid)};
  const std::string reason = escape_untrusted(type.empty() ? "no answer" : msg.empty() ? type : type + ": " + msg);
  return {kExitNoProbes, head + "sys.remote_exec failed: " + reason.substr(0, 300)};
}

}  // namespace asynctrace
