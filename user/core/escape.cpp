// SPDX-License-Identifier: Apache-2.0
#include "core/escape.h"

#include <cstdint>
#include <cstdio>

namespace asynctrace {
namespace {

// Length of the valid UTF-8 sequence at s[i], or 0 if invalid. Rejects
// overlongs, surrogates and code points above U+10FFFF.
size_t utf8_seq(std::string_view s, size_t i, uint32_t* cp) {
  auto b = [&](size_t k) { return static_cast<uint8_t>(s[i + k]); };
  const uint8_t c = b(0);
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  size_t n;
  uint32_t v;
  if ((c & 0xE0) == 0xC0) {
    n = 2;
    v = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3;
    v = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4;
    v = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((b(k) & 0xC0) != 0x80) return 0;
    v = (v << 6) | (b(k) & 0x3F);
  }
  static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (v < kMin[n] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
  *cp = v;
  return n;
}

void append_hex(std::string& out, uint8_t byte) {
  char buf[5];
  std::snprintf(buf, sizeof buf, "\\x%02x", byte);
  out += buf;
}

// Calls on_cp(out, cp, bytes) for each valid UTF-8 sequence of `raw` and
// on_bad(out, byte) for each byte that starts none; returns `out`.
template <typename OnCp, typename OnBad>
std::string walk_utf8(std::string_view raw, OnCp on_cp, OnBad on_bad) {
  std::string out;
  out.reserve(raw.size());
  for (size_t i = 0; i < raw.size();) {
    uint32_t cp = 0;
    const size_t n = utf8_seq(raw, i, &cp);
    if (n == 0) {
      on_bad(out, static_cast<uint8_t>(raw[i]));
      ++i;
    } else {
      on_cp(out, cp, raw.substr(i, n));
      i += n;
    }
  }
  return out;
}

}  // namespace

std::string escape_untrusted(std::string_view raw) {
  return walk_utf8(
      raw,
      [](std::string& out, uint32_t cp, std::string_view bytes) {
        if (cp == '\\') {
          out += "\\\\";
        } else if (cp == '\n') {
          out += "\\n";
        } else if (cp == '\t') {
          out += "\\t";
        } else if (cp == '\r') {
          out += "\\r";
        } else if (cp == 0) {
          out += "\\0";
        } else if (cp < 0x20 || cp == 0x7F) {
          append_hex(out, static_cast<uint8_t>(cp));
        } else if (cp >= 0x80 && cp <= 0x9F) {
          char buf[12];
          std::snprintf(buf, sizeof buf, "\\u%04x", cp);
          out += buf;
        } else {
          out.append(bytes);
        }
      },
      append_hex);
}

std::string sanitize_utf8(std::string_view raw) {
  return walk_utf8(
      raw, [](std::string& out, uint32_t, std::string_view bytes) { out.append(bytes); },
      [](std::string& out, uint8_t) { out += "\xEF\xBF\xBD"; });
}

size_t display_width(std::string_view utf8) {
  size_t w = 0;
  for (unsigned char c : utf8) {
    if ((c & 0xC0) != 0x80) ++w;
  }
  return w;
}

std::string ljust(std::string_view s, size_t width) {
  std::string out(s);
  const size_t w = display_width(s);
  if (w < width) out.append(width - w, ' ');
  return out;
}

std::string hex_id(uint64_t id) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(id));
  return buf;
}

}  // namespace asynctrace
