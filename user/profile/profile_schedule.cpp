// SPDX-License-Identifier: Apache-2.0
#include "profile/profile_schedule.h"

#include <algorithm>
#include <cstdio>

namespace asynctrace {

std::string sanitize_file_name(const std::string& raw) {
  std::string out;
  for (const char c : raw.substr(0, 32)) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-';
    out += ok ? c : '_';
  }
  if (out.empty() || out == "." || out == "..") out = "_";
  return out;
}

std::string utc_stamp(int64_t unix_ms) {
  const time_t s = static_cast<time_t>(unix_ms / 1000);
  tm t{};
  gmtime_r(&s, &t);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%04d%02d%02dT%02d%02d%02d.%03dZ", t.tm_year + 1900, t.tm_mon + 1, t.tm_mday,
                t.tm_hour, t.tm_min, t.tm_sec, static_cast<int>(unix_ms % 1000));
  return buf;
}

std::string profile_extension(const std::string& format) {
  if (format == "pprof") return "pb.gz";
  if (format == "speedscope") return "speedscope.json";
  return format;  // folded, svg, html
}

namespace {
// 8 digits, 'T': what utc_stamp writes first.
bool is_profile_name(const std::string& n) {
  if (n.size() < 10 || n[8] != 'T') return false;
  return std::all_of(n.begin(), n.begin() + 8, [](char c) { return c >= '0' && c <= '9'; });
}
}  // namespace

std::vector<std::string> profiles_to_remove(std::vector<std::string> names, size_t keep) {
  names.erase(std::remove_if(names.begin(), names.end(), [](const std::string& n) { return !is_profile_name(n); }),
              names.end());
  std::sort(names.begin(), names.end());
  if (names.size() <= keep) return {};
  names.resize(names.size() - keep);
  return names;
}

std::string url_encode(const std::string& s) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
        c == '_' || c == '~') {
      out += ch;
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::string ingest_target(const std::string& base_path, uint32_t pid, const std::string& comm, int64_t from_s,
                          int64_t until_s) {
  // Label values and the application name in Pyroscope's name syntax take
  // no quoting: the sanitized comm is safe in both.
  const std::string c = sanitize_file_name(comm);
  const std::string name = "asynctrace." + c + "{pid=" + std::to_string(pid) + ",comm=" + c + "}";
  return base_path + "?name=" + url_encode(name) + "&from=" + std::to_string(from_s) +
         "&until=" + std::to_string(until_s) + "&format=pprof&spyName=asynctrace";
}

std::string sample_type_config(const std::string& mode) {
  const std::string type = mode == "wall" ? "wall" : "cpu";
  return "{\"" + type + "\": {\"units\": \"samples\", \"aggregation\": \"sum\", \"display-name\": \"" + type +
         "_nanoseconds\", \"sampled\": false}}";
}

}  // namespace asynctrace
