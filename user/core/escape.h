// SPDX-License-Identifier: Apache-2.0
// Strings from a traced process are untrusted bytes: escape before printing.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace asynctrace {

// Printable text for a terminal: valid UTF-8 passes through except control
// characters (C0, DEL, C1), which become \n \t \r \0 or \xNN / \u{NNNN};
// invalid UTF-8 bytes become \xNN; a backslash becomes \\.
std::string escape_untrusted(std::string_view raw);

// Valid UTF-8 for JSON: invalid bytes replaced by U+FFFD (JSON escapes controls).
std::string sanitize_utf8(std::string_view raw);

// Number of code points (what Python's str.ljust counts), for column padding.
size_t display_width(std::string_view utf8);

// Left-justifies `s` in `width` code points (Python f"{s:<width}").
std::string ljust(std::string_view s, size_t width);

// An id as Python's hex() writes it: "0x7f...".
std::string hex_id(uint64_t id);

}  // namespace asynctrace
