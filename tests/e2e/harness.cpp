// SPDX-License-Identifier: Apache-2.0
#include "harness.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
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

// The expected view, rendered from the truth file by tests/e2e/expect.py.
// 10,001 tasks take ~1 s of Python on the host, 20-40x that under QEMU's TCG
// (scripts/matrix), more on a loaded host: 60 s killed it once on 6.12.
std::string expected_view(const std::string& truth_path, const char* view) {
  auto r = e2e::run({"python3", e2e::source_dir() + "/tests/e2e/expect.py", truth_path, view},
                    std::chrono::seconds(600));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.out;
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

// bpftool's "type" of a link; bpftool 7.1 gives the number of types newer
// than it (uprobe_multi, 6.6).
std::string link_type(const json& link) {
  const json t = link.value("type", json("?"));
  if (t.is_string()) return t.get<std::string>();
  if (t.is_number_integer()) return t.get<int>() == 12 ? "uprobe_multi" : "type " + std::to_string(t.get<int>());
  return "?";
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
      h.link_types[link_type(l)]++;
      h.detail += "link " + std::to_string(l["id"].get<int>()) + " " + link_type(l) + "; ";
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

std::set<int> prog_ids_named(const std::string& name) {
  std::set<int> ids;
  for (const auto& p : bpftool_json({"prog", "show"}))
    if (p.value("name", "") == name) ids.insert(p["id"].get<int>());
  return ids;
}

std::map<int, std::string> links_of(const std::set<int>& prog_ids) {
  std::map<int, std::string> out;
  for (const auto& l : bpftool_json({"link", "show"}))
    if (l.contains("prog_id") && prog_ids.count(l["prog_id"].get<int>()))
      out[l["id"].get<int>()] = link_type(l);
  return out;
}

std::string asynctrace_uprobes() {
  std::string found;
  for (const auto& e : bpftool_json({"perf"})) {
    const std::string file = e.value("filename", "");
    if (e.value("fd_type", "") == "uprobe" && file.find("asynctrace") != std::string::npos)
      found += "bpftool perf: pid " + std::to_string(e.value("pid", 0)) + " prog " +
               std::to_string(e.value("prog_id", 0)) + " " + file + "\n";
  }
  for (const char* events : {"/sys/kernel/tracing/uprobe_events", "/sys/kernel/debug/tracing/uprobe_events"}) {
    std::istringstream in(read_file(events));
    for (std::string line; std::getline(in, line);)
      if (line.find("asynctrace") != std::string::npos) found += std::string(events) + ": " + line + "\n";
  }
  return found;
}

namespace {

// "0x1f" or "1f" -> 31.
uint64_t hex_value(const std::string& s) { return std::stoull(s, nullptr, 16); }

}  // namespace

std::map<std::string, int> usdt_semaphores(pid_t pid) {
  // The runtime's mappings: path, and (file offset, start, end) of each.
  struct Mapping {
    uint64_t start, end, off;
  };
  std::string lib;
  std::vector<Mapping> maps;
  {
    std::istringstream in(read_file("/proc/" + std::to_string(pid) + "/maps"));
    for (std::string line; std::getline(in, line);) {
      const auto slash = line.find('/');
      if (slash == std::string::npos || line.find("/_asynctrace") == std::string::npos) continue;
      const std::string path = line.substr(slash);
      if (!lib.empty() && path != lib) continue;
      lib = path;
      std::istringstream f(line);
      std::string range, perms, off;
      f >> range >> perms >> off;
      const auto dash = range.find('-');
      maps.push_back({hex_value(range.substr(0, dash)), hex_value(range.substr(dash + 1)), hex_value(off)});
    }
  }
  std::map<std::string, int> out;
  if (lib.empty()) return out;
  // PT_LOAD segments: semaphore address -> file offset.
  struct Segment {
    uint64_t off, vaddr, memsz;
  };
  std::vector<Segment> segs;
  {
    std::istringstream in(run({"readelf", "-lW", lib}).out);
    for (std::string line; std::getline(in, line);) {
      std::istringstream f(line);
      std::string type, off, vaddr, paddr, filesz, memsz;
      if (!(f >> type >> off >> vaddr >> paddr >> filesz >> memsz) || type != "LOAD") continue;
      segs.push_back({hex_value(off), hex_value(vaddr), hex_value(memsz)});
    }
  }
  const int mem = open(("/proc/" + std::to_string(pid) + "/mem").c_str(), O_RDONLY | O_CLOEXEC);
  if (mem < 0) return out;
  // "    Provider: asynctrace" / "    Name: task__create" /
  // "    Location: 0x..., Base: 0x..., Semaphore: 0x..."
  std::istringstream in(run({"readelf", "-nW", lib}).out);
  std::string provider, name;
  for (std::string line; std::getline(in, line);) {
    const auto field = [&](const char* key) -> std::optional<std::string> {
      const auto at = line.find(key);
      if (at == std::string::npos) return std::nullopt;
      std::string v = line.substr(at + std::strlen(key));
      return v.substr(0, v.find(','));
    };
    if (auto p = field("Provider: ")) provider = *p;
    if (auto n = field("Name: ")) name = *n;
    const auto sema = field("Semaphore: ");
    if (!sema || provider != "asynctrace") continue;
    const uint64_t vaddr = hex_value(*sema);
    if (vaddr == 0) continue;
    for (const Segment& sg : segs) {
      if (vaddr < sg.vaddr || vaddr >= sg.vaddr + sg.memsz) continue;
      const uint64_t file_off = vaddr - sg.vaddr + sg.off;
      for (const Mapping& m : maps) {
        if (file_off < m.off || file_off + 2 > m.off + (m.end - m.start)) continue;
        uint16_t v = 0;
        if (pread(mem, &v, sizeof v, static_cast<off_t>(m.start + (file_off - m.off))) == sizeof v) out[name] = v;
        break;
      }
      break;
    }
  }
  close(mem);
  return out;
}

// ---- shared by the suites ---------------------------------------------------

using namespace std::chrono_literals;

namespace {

std::set<std::string> id_set(const nlohmann::json& arr, bool objects) {
  std::set<std::string> s;
  for (const auto& x : arr) s.insert(objects ? x["id"].get<std::string>() : x.get<std::string>());
  return s;
}


}  // namespace

// Tool JSON vs the program's truth: same tasks, names, threads, stacks, awaiters.
void compare_json(const nlohmann::json& truth, const nlohmann::json& got) {
  std::map<std::string, json> tool_tasks;
  for (const auto& t : got["tasks"]) tool_tasks[t["id"]] = t;
  std::set<std::string> want_ids;
  for (const auto& t : truth["tasks"]) want_ids.insert(t["id"]);
  std::set<std::string> got_ids;
  for (const auto& [id, _] : tool_tasks) got_ids.insert(id);
  ASSERT_EQ(got_ids, want_ids) << "task sets differ";
  for (const auto& want : truth["tasks"]) {
    const nlohmann::json& t = tool_tasks[want["id"]];
    SCOPED_TRACE("task " + want["id"].get<std::string>());
    const std::string want_name = want["name"];
    if (want_name.size() > 64) {  // the kernel keeps 64 bytes (AT_NAME_LEN)
      EXPECT_TRUE(t["name_truncated"].get<bool>());
      const std::string got_name = t["name"];
      EXPECT_GE(got_name.size(), 61u);
      EXPECT_EQ(want_name.compare(0, got_name.size(), got_name), 0) << got_name;
    } else {
      EXPECT_EQ(t["name"], want["name"]);
      EXPECT_FALSE(t["name_truncated"].get<bool>());
    }
    EXPECT_EQ(t["tid"], want["tid"]);
    ASSERT_EQ(t["stack"].size(), want["stack"].size()) << t["stack"].dump() << "\nwant " << want["stack"].dump();
    for (size_t i = 0; i < want["stack"].size(); ++i) {
      EXPECT_EQ(t["stack"][i]["function"], want["stack"][i]["function"]);
      EXPECT_EQ(t["stack"][i]["file"], want["stack"][i]["file"]);
      EXPECT_EQ(t["stack"][i]["line"], want["stack"][i]["line"]);
      // The runtime adds no frame to a task (its asyncio.wait and TaskGroup
      // wrappers are plain functions): none of its files is on any stack.
      EXPECT_EQ(want["stack"][i]["file"].get<std::string>().find(binary_dir() + "/python/"), std::string::npos)
          << want["stack"].dump();
    }
    EXPECT_EQ(id_set(t["awaited_by"], true), id_set(want["awaited_by"], false)) << t["awaited_by"].dump();
  }
  EXPECT_TRUE(got["complete"].get<bool>());
}

// pstree (JSON and text) and ps of `pid` against the truth file.
void check_views(const std::string& truth_path, pid_t pid) {
  const nlohmann::json truth = nlohmann::json::parse(e2e::read_file(truth_path));
  ASSERT_EQ(truth["pid"], pid);
  ASSERT_FALSE(truth["tasks"].empty());
  auto j = e2e::run({tool(), "pstree", "-p", std::to_string(pid), "--format", "json"});
  ASSERT_EQ(j.exit_code, 0) << j.err;
  std::cerr << "[ pstree json: " << truth["tasks"].size() << " tasks in " << j.seconds << " s ]\n";
  compare_json(truth, nlohmann::json::parse(j.out));

  auto tree = e2e::run({tool(), "pstree", "-p", std::to_string(pid)});
  ASSERT_EQ(tree.exit_code, 0) << tree.err;
  EXPECT_EQ(e2e::tree_paths(tree.out), e2e::tree_paths(expected_view(truth_path, "pstree")))
      << "got:\n" << tree.out.substr(0, 4000);

  auto ps = e2e::run({tool(), "ps", "-p", std::to_string(pid)});
  ASSERT_EQ(ps.exit_code, 0) << ps.err;
  const std::string want_ps = expected_view(truth_path, "ps");
  EXPECT_EQ(ps.out.substr(0, ps.out.find('\n', ps.out.find('\n') + 1)),
            want_ps.substr(0, want_ps.find('\n', want_ps.find('\n') + 1)));
  EXPECT_EQ(e2e::sorted_lines(ps.out, 2), e2e::sorted_lines(want_ps, 2));
}

std::string tool() { return binary_dir() + "/asynctrace"; }

std::string python() {
  const auto py = built_pythons();
  return py.empty() ? "python3" : py.front().second;
}

int line_of(const std::string& file, const std::string& text) {
  std::istringstream in(read_file(file));
  std::string l;
  for (int n = 1; std::getline(in, l); ++n)
    if (l.find(text) != std::string::npos) return n;
  return -1;
}

Shapes::Shapes(const std::string& py, int seconds)
    : app({tool(), "run", "--", py, program(), std::to_string(seconds)}) {}

std::string Shapes::program() { return source_dir() + "/tests/programs/time_shapes.py"; }

bool Shapes::ready(std::chrono::milliseconds timeout) { return app.wait_prefix("{\"ready\"", timeout).has_value(); }

std::string Shapes::pid() { return std::to_string(app.pid()); }

namespace {
// SIGUSR1 to a program that then prints {"truth": ...} and exits 0.
json truth_at_exit(Program& app, std::chrono::seconds timeout) {
  app.signal(SIGUSR1);
  std::string out;
  const int rc = app.wait_exit(timeout, &out);
  EXPECT_EQ(rc, 0) << app.stderr_text();
  const auto pos = out.find("{\"truth\"");
  if (pos == std::string::npos) return json::object();
  return json::parse(out.substr(pos, out.find('\n', pos) - pos)).at("truth");
}
}  // namespace

json Shapes::truth() { return truth_at_exit(app, 30s); }

namespace {
std::vector<std::string> service_argv(bool traced, int seconds, const std::map<std::string, std::string>& env) {
  std::vector<std::string> argv{"/usr/bin/env"};
  for (const auto& [k, v] : env) argv.push_back(k + "=" + v);
  if (traced) argv.insert(argv.end(), {tool(), "run", "--"});
  argv.insert(argv.end(), {Service::interpreter(), Service::program(), std::to_string(seconds)});
  return argv;
}
}  // namespace

Service::Service(bool traced, int seconds, const std::map<std::string, std::string>& env)
    : app(service_argv(traced, seconds, env)) {}

std::string Service::program() { return source_dir() + "/tests/programs/aiohttp_service.py"; }
std::string Service::interpreter() { return "/usr/bin/python3.11"; }

bool Service::ready(std::chrono::milliseconds timeout) { return app.wait_prefix("{\"ready\"", timeout).has_value(); }

std::string Service::pid() {
  // `env` and `run` exec the interpreter: same pid.
  return std::to_string(app.pid());
}

json Service::truth() { return truth_at_exit(app, 60s); }

json last_ndjson(const std::string& out) {
  std::istringstream in(out);
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  return json::parse(last);
}

const json* row(const json& frame, const std::string& name) {
  for (const auto& r : frame.at("tasks"))
    if (r.at("name") == name) return &r;
  return nullptr;
}

std::map<std::string, double> folded(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    const auto sp = line.rfind(' ');
    if (sp == std::string::npos) continue;
    out[line.substr(0, sp)] += std::stod(line.substr(sp + 1));
  }
  return out;
}

// ---- the agent ----------------------------------------------------------------

const char* const kAgentPins = "/sys/fs/bpf/asynctrace/agent";
const char* const kAgentLock = "/run/asynctrace/agent.lock";
const std::vector<std::string> kAgentPinnedMaps = {"code_timing", "codes", "procs", "stacks", "tasks", "timing"};

Work::Work(int workers, int steps, int idle, int linger, const std::string& python_dir)
    : app(argv(workers, steps, idle, linger, python_dir)) {}

std::vector<std::string> Work::argv(int workers, int steps, int idle, int linger, const std::string& dir) {
  std::vector<std::string> a = {tool(), "run"};
  if (!dir.empty()) a.insert(a.end(), {"--python-dir", dir});
  a.insert(a.end(), {"--", python(), source_dir() + "/tests/programs/agent_work.py", std::to_string(workers),
                     std::to_string(steps), std::to_string(idle), std::to_string(linger)});
  return a;
}

bool Work::ready(std::chrono::milliseconds timeout) { return app.wait_line("READY", timeout); }

json Work::truth() {
  auto line = app.wait_prefix("{\"truth\"", 60s);
  if (!line) return json::object();
  return json::parse(*line).at("truth");
}

std::string Work::pid() const { return std::to_string(app.pid()); }

Agent::Agent(const std::vector<std::string>& extra) : app(argv(extra)) {}

std::vector<std::string> Agent::argv(const std::vector<std::string>& extra) {
  std::vector<std::string> a = {tool()};
  for (const std::string& e : extra)
    if (e == "-v") a.push_back(e);  // global: before the command
  a.insert(a.end(), {"agent", "--listen", "127.0.0.1:0", "--scan-interval", "500ms", "--library-prefix",
                     binary_dir() + "/python"});
  for (const std::string& e : extra)
    if (e != "-v") a.push_back(e);
  return a;
}

std::string Agent::started(std::chrono::milliseconds timeout) {
  auto line = app.wait_prefix("agent maps=", timeout);
  if (!line) return "";
  const auto at = line->find("http://127.0.0.1:");
  if (at != std::string::npos) port = std::stoi(line->substr(at + 17));
  return *line;
}

std::string Agent::scrape(bool openmetrics) const {
  httplib::Client c("127.0.0.1", port);
  c.set_connection_timeout(5);
  c.set_read_timeout(5);
  httplib::Headers h;
  if (openmetrics) h.emplace("Accept", "application/openmetrics-text; version=1.0.0");
  auto res = c.Get("/metrics", h);
  return res && res->status == 200 ? res->body : "";
}

double tasks_in_state(const std::string& text, const std::string& pid, const std::string& state) {
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);)
    if (l.rfind("asynctrace_tasks{pid=\"" + pid + "\",", 0) == 0 &&
        l.find(",state=\"" + state + "\"}") != std::string::npos)
      return std::stod(l.substr(l.rfind(' ') + 1));
  return -1;
}

std::vector<std::string> agent_pin_files() {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(kAgentPins, ec)) out.push_back(e.path().filename());
  std::sort(out.begin(), out.end());
  return out;
}

void cleanup_agent_leftovers() { (void)run({tool(), "agent", "--cleanup"}); }

}  // namespace e2e
