// SPDX-License-Identifier: Apache-2.0
#include "core/verifier_log.h"

#include <array>

namespace asynctrace {
namespace {

constexpr std::string_view kProgPrefix = "prog '";
constexpr std::string_view kLoadFailed = "': BPF program load failed";
constexpr std::string_view kBegin = "-- BEGIN PROG LOAD LOG --";
constexpr std::string_view kEnd = "-- END PROG LOAD LOG --";

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r' || s.front() == '\n'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

// "NAME" of "...prog 'NAME'<rest>", with `rest` what follows the quote.
std::optional<std::string_view> prog_name(std::string_view msg, std::string_view* rest) {
  const size_t at = msg.find(kProgPrefix);
  if (at == std::string_view::npos) return std::nullopt;
  const size_t start = at + kProgPrefix.size();
  const size_t end = msg.find('\'', start);
  if (end == std::string_view::npos || end == start) return std::nullopt;
  *rest = msg.substr(end);
  return msg.substr(start, end - start);
}

bool is_stats_line(std::string_view line) {
  constexpr std::array<std::string_view, 3> kStats = {"processed ", "verification time ", "stack depth "};
  for (std::string_view s : kStats)
    if (line.substr(0, s.size()) == s) return true;
  return false;
}

}  // namespace

bool parse_prog_load_warning(std::string_view msg, ProgLoadFailure* f) {
  std::string_view rest;
  const auto name = prog_name(msg, &rest);
  if (!name) return false;
  if (rest.substr(0, kLoadFailed.size()) == kLoadFailed) {
    *f = ProgLoadFailure{std::string(*name), {}, false};  // its log, if any, comes next
    return true;
  }
  const size_t begin = rest.find(kBegin);
  if (begin == std::string_view::npos) return false;
  std::string_view log = rest.substr(begin + kBegin.size());
  if (!log.empty() && log.front() == '\n') log.remove_prefix(1);
  // The log may itself be cut (a full buffer): then everything to the end.
  const size_t end = log.rfind(kEnd);
  if (end != std::string_view::npos) log = log.substr(0, end);
  *f = ProgLoadFailure{std::string(*name), std::string(log), true};
  return true;
}

std::string verifier_reason(std::string_view log) {
  while (!log.empty()) {
    const size_t nl = log.rfind('\n', log.size() - 1);
    const size_t from = nl == std::string_view::npos ? 0 : nl + 1;
    const std::string_view line = trim(log.substr(from));
    if (!line.empty() && !is_stats_line(line)) return std::string(line);
    log = log.substr(0, nl == std::string_view::npos ? 0 : nl);
  }
  return {};
}

}  // namespace asynctrace
