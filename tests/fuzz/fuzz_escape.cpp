// SPDX-License-Identifier: Apache-2.0
// Strings from the traced process: user/escape.cpp on arbitrary bytes.
//   escape_untrusted: terminal-safe (valid UTF-8, no C0/DEL/C1: no ESC, no
//     NUL), identity on already safe text, and lossless: unescape() below
//     (the inverse of the documented escapes) gives the input back.
//   sanitize_utf8: valid UTF-8, identity on valid input, idempotent, one
//     U+FFFD per invalid byte, always accepted by nlohmann::json::dump().
//   display_width / ljust: code point counting and padding.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/escape.h"
#include "fuzz_common.h"

namespace {

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

int hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// Inverse of escape_untrusted: \\ \n \t \r \0 \xNN (one byte) \uNNNN (code point).
std::string unescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\') {
      out += s[i];
      continue;
    }
    FUZZ_CHECK(i + 1 < s.size(), s);
    const char c = s[++i];
    switch (c) {
      case '\\': out += '\\'; break;
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case '0': out += '\0'; break;
      case 'x': {
        FUZZ_CHECK(i + 2 < s.size(), s);
        const int hi = hex(s[i + 1]), lo = hex(s[i + 2]);
        FUZZ_CHECK(hi >= 0 && lo >= 0, s);
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
        break;
      }
      case 'u': {
        FUZZ_CHECK(i + 4 < s.size(), s);
        uint32_t cp = 0;
        for (int k = 1; k <= 4; ++k) {
          const int h = hex(s[i + static_cast<size_t>(k)]);
          FUZZ_CHECK(h >= 0, s);
          cp = cp * 16 + static_cast<uint32_t>(h);
        }
        append_utf8(out, cp);
        i += 4;
        break;
      }
      default:
        fuzzcheck::fail("unknown escape", s);
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace asynctrace;
  const std::string_view raw(reinterpret_cast<const char*>(data), size);
  std::vector<uint32_t> cps;
  const bool valid = fuzzcheck::decode_utf8(raw, &cps);

  // escape_untrusted
  const std::string esc = escape_untrusted(raw);
  std::vector<uint32_t> esc_cps;
  FUZZ_CHECK(fuzzcheck::decode_utf8(esc, &esc_cps), esc);
  for (uint32_t cp : esc_cps) FUZZ_CHECK(cp >= 0x20 && cp != 0x7F && !(cp >= 0x80 && cp <= 0x9F), esc);
  FUZZ_CHECK(unescape(esc) == raw, esc);
  bool safe = valid;
  for (uint32_t cp : cps) safe &= cp >= 0x20 && cp != 0x7F && !(cp >= 0x80 && cp <= 0x9F) && cp != '\\';
  if (safe) FUZZ_CHECK(esc == raw, esc);

  // sanitize_utf8
  const std::string san = sanitize_utf8(raw);
  std::vector<uint32_t> san_cps;
  FUZZ_CHECK(fuzzcheck::decode_utf8(san, &san_cps), san);
  if (valid) FUZZ_CHECK(san == raw, san);
  FUZZ_CHECK(sanitize_utf8(san) == san, san);
  // One U+FFFD (3 bytes) per byte that starts no valid sequence.
  size_t invalid = 0;
  for (size_t i = 0; i < raw.size();) {
    size_t n = 1;
    while (n <= 4 && i + n <= raw.size() && !fuzzcheck::decode_utf8(raw.substr(i, n), nullptr)) ++n;
    if (n <= 4 && i + n <= raw.size()) {
      i += n;
    } else {
      ++invalid;
      ++i;
    }
  }
  FUZZ_CHECK(san.size() == raw.size() + 2 * invalid, san);
  try {
    const std::string dumped = nlohmann::json(san).dump();
    FUZZ_CHECK(nlohmann::json::parse(dumped).get<std::string>() == san, dumped);
  } catch (const nlohmann::json::exception& e) {
    fuzzcheck::fail("json rejected sanitize_utf8 output", e.what());
  }

  // display_width / ljust
  FUZZ_CHECK(display_width(esc) == esc_cps.size(), esc);
  FUZZ_CHECK(display_width(san) == san_cps.size(), san);
  const size_t width = size ? data[0] % 80 : 0;
  const std::string padded = ljust(esc, width);
  FUZZ_CHECK(padded.compare(0, esc.size(), esc) == 0, padded);
  FUZZ_CHECK(display_width(padded) == std::max(width, esc_cps.size()), padded);
  FUZZ_CHECK(padded.find_first_not_of(' ', esc.size()) == std::string::npos, padded);
  return 0;
}
