// SPDX-License-Identifier: Apache-2.0
#include "harness.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace e2e {
namespace {

pid_t spawn(const std::vector<std::string>& argv, int* out_fd, int* err_fd, const std::string& cwd) {
  int o[2], e[2];
  if (pipe2(o, O_CLOEXEC) || pipe2(e, O_CLOEXEC)) throw std::runtime_error("pipe failed");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, o[1], 1);
  posix_spawn_file_actions_adddup2(&fa, e[1], 2);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  if (!cwd.empty()) posix_spawn_file_actions_addchdir_np(&fa, cwd.c_str());
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(o[1]);
  close(e[1]);
  if (rc != 0) throw std::runtime_error("spawn failed: " + argv[0]);
  *out_fd = o[0];
  *err_fd = e[0];
  return pid;
}

// Reads what is available from fds into bufs; returns false when both are at EOF.
bool drain(int fds[2], std::string* bufs[2], int timeout_ms) {
  pollfd p[2];
  int n = 0;
  int map[2];
  for (int i = 0; i < 2; ++i) {
    if (fds[i] >= 0) {
      p[n] = {fds[i], POLLIN, 0};
      map[n++] = i;
    }
  }
  if (n == 0) return false;
  if (poll(p, static_cast<nfds_t>(n), timeout_ms) <= 0) return true;
  for (int k = 0; k < n; ++k) {
    if (!(p[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    char buf[65536];
    const ssize_t r = read(p[k].fd, buf, sizeof buf);
    if (r > 0) {
      bufs[map[k]]->append(buf, static_cast<size_t>(r));
    } else {
      close(fds[map[k]]);
      fds[map[k]] = -1;
    }
  }
  return true;
}

}  // namespace

Output run(const std::vector<std::string>& argv, std::chrono::seconds timeout) {
  Output res;
  int fds[2];
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = spawn(argv, &fds[0], &fds[1], "");
  std::string* bufs[2] = {&res.out, &res.err};
  while (drain(fds, bufs, 100)) {
    if (std::chrono::steady_clock::now() - t0 > timeout) {
      kill(pid, SIGKILL);
      res.err += "\n[harness: killed after timeout]";
      break;
    }
  }
  for (int fd : fds) {
    if (fd >= 0) close(fd);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  res.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return res;
}

Program::Program(const std::vector<std::string>& argv, const std::string& cwd) {
  pid_ = spawn(argv, &out_fd_, &err_fd_, cwd);
}

Program::~Program() {
  if (!exited_ && pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (out_fd_ >= 0) close(out_fd_);
  if (err_fd_ >= 0) close(err_fd_);
}

void Program::pump(int timeout_ms) {
  int fds[2] = {out_fd_, err_fd_};
  std::string* bufs[2] = {&out_, &err_};
  drain(fds, bufs, timeout_ms);
  out_fd_ = fds[0];
  err_fd_ = fds[1];
}

bool Program::wait_line(const std::string& line, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    size_t pos;
    while ((pos = out_.find('\n', scanned_)) != std::string::npos) {
      const std::string l = out_.substr(scanned_, pos - scanned_);
      scanned_ = pos + 1;
      if (l == line) return true;
    }
    if (out_fd_ < 0) return false;
    pump(50);
  }
  return false;
}

std::optional<std::string> Program::wait_prefix(const std::string& prefix, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    size_t pos;
    while ((pos = out_.find('\n', scanned_)) != std::string::npos) {
      std::string l = out_.substr(scanned_, pos - scanned_);
      scanned_ = pos + 1;
      if (l.rfind(prefix, 0) == 0) return l;
    }
    if (out_fd_ < 0) return std::nullopt;
    pump(50);
  }
  return std::nullopt;
}

void Program::signal(int sig) { kill(pid_, sig); }

int Program::wait_exit(std::chrono::seconds timeout, std::string* all_out) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while ((out_fd_ >= 0 || err_fd_ >= 0) && std::chrono::steady_clock::now() < end) pump(50);
  if (std::chrono::steady_clock::now() >= end) kill(pid_, SIGKILL);
  waitpid(pid_, &status_, 0);
  exited_ = true;
  if (all_out) *all_out = out_;
  return WIFEXITED(status_) ? WEXITSTATUS(status_) : -WTERMSIG(status_);
}

const std::string& Program::stderr_text() {
  pump(0);
  return err_;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string source_dir() { return ASYNCTRACE_SOURCE_DIR; }
std::string binary_dir() { return ASYNCTRACE_BINARY_DIR; }

std::vector<std::pair<std::string, std::string>> built_pythons() {
  std::vector<std::pair<std::string, std::string>> out;
  std::istringstream in(read_file(binary_dir() + "/python/versions.txt"));
  std::string tag, path;
  while (in >> tag >> path) out.emplace_back(tag, path);
  return out;
}

std::vector<std::string> tree_paths(const std::string& text) {
  std::vector<std::string> out, stack;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    // The label follows the first "── "; depth = code points before it / 4.
    const auto at = line.find("── ");
    if (at == std::string::npos) {
      out.push_back("?" + line);
      continue;
    }
    size_t cps = 0;
    for (size_t i = 0; i < at; ++i) cps += (static_cast<unsigned char>(line[i]) & 0xC0) != 0x80;
    const size_t depth = (cps - 1) / 4;  // connector's first glyph is one code point
    const std::string label = line.substr(at + std::string("── ").size());
    stack.resize(depth);
    stack.push_back(label);
    std::string path;
    for (const auto& s : stack) path += s + " / ";
    out.push_back(path);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> sorted_lines(const std::string& text, size_t skip_header) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  size_t n = 0;
  while (std::getline(in, line)) {
    if (n++ < skip_header) continue;
    lines.push_back(line);
  }
  std::sort(lines.begin(), lines.end());
  return lines;
}

bool poll_until(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (done()) return true;
    if (std::chrono::steady_clock::now() >= end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

char proc_state(pid_t pid) {
  const std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  const auto paren = stat.rfind(')');
  return paren == std::string::npos || paren + 2 >= stat.size() ? 0 : stat[paren + 2];
}

namespace {

using nlohmann::json;

json bpftool_json(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"bpftool", "-j"};
  argv.insert(argv.end(), args.begin(), args.end());
  const Output o = run(argv, std::chrono::seconds(60));
  if (o.exit_code != 0) return json::array();  // e.g. the object went away meanwhile
  try {
    return json::parse(o.out);
  } catch (const json::exception&) {
    return json::array();
  }
}

// The programs of bpf/asynctrace.bpf.c, as the kernel names them (15 chars).
const std::set<std::string> kOurPrograms = {"task_create",  "task_resume",   "task_await",
                                            "task_complete", "edge_add",     "edge_remove",
                                            "code_register", "replay_begin", "replay_end"};

// target_tgid of a loaded asynctrace object, from its .rodata map (-1 if unknown).
long long rodata_tgid(int map_id) {
  const json dump = bpftool_json({"map", "dump", "id", std::to_string(map_id)});
  if (!dump.is_array() || dump.empty()) return -1;
  const json& e = dump[0];
  if (e.contains("formatted")) {
    const json& ro = e["formatted"]["value"][".rodata"];
    for (const auto& var : ro) {
      if (var.contains("target_tgid")) return var["target_tgid"].get<long long>();
    }
  }
  if (e.contains("value") && e["value"].size() >= 4) {  // no BTF: the first u32, little-endian
    long long v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | std::stoll(e["value"][i].get<std::string>(), nullptr, 16);
    return v;
  }
  return -1;
}

}  // namespace

KernelHold kernel_hold(pid_t pid) {
  KernelHold h;
  std::map<int, std::string> rodata;  // map id -> name, of our objects' .rodata maps
  for (const auto& m : bpftool_json({"map", "show"})) {
    const std::string name = m.value("name", "");
    if (name.rfind("asynctra", 0) == 0 && name.size() > 7 && name.substr(name.size() - 7) == ".rodata")
      rodata[m["id"].get<int>()] = name;
  }
  std::map<int, long long> tgid_of;  // rodata map id -> target_tgid
  std::set<int> prog_ids;
  for (const auto& p : bpftool_json({"prog", "show"})) {
    if (!kOurPrograms.count(p.value("name", ""))) continue;
    for (const auto& mid : p.value("map_ids", json::array())) {
      const int id = mid.get<int>();
      if (!rodata.count(id)) continue;
      if (!tgid_of.count(id)) tgid_of[id] = rodata_tgid(id);
      if (tgid_of[id] == pid) {
        prog_ids.insert(p["id"].get<int>());
        h.detail += "prog " + std::to_string(p["id"].get<int>()) + " " + p["name"].get<std::string>() + "; ";
      }
    }
  }
  h.progs = static_cast<int>(prog_ids.size());
  h.prog_ids.assign(prog_ids.begin(), prog_ids.end());
  for (const auto& l : bpftool_json({"link", "show"})) {
    if (l.contains("prog_id") && prog_ids.count(l["prog_id"].get<int>())) {
      ++h.links;
      h.detail += "link " + std::to_string(l["id"].get<int>()) + "; ";
    }
  }
  const std::string dir = "/sys/fs/bpf/asynctrace/" + std::to_string(pid);
  for (const std::string& path : {dir, dir + "/tasks", dir + "/codes", dir + "/procs",
                                  "/run/asynctrace/" + std::to_string(pid) + ".lock"}) {
    if (access(path.c_str(), F_OK) == 0) {
      ++h.pins;
      h.detail += path + "; ";
    }
  }
  return h;
}

KernelHold wait_kernel_released(pid_t pid, std::chrono::seconds timeout) {
  KernelHold h;
  poll_until(
      [&] {
        h = kernel_hold(pid);
        return h.empty();
      },
      timeout);
  return h;
}

}  // namespace e2e
