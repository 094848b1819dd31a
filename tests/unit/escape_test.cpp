// SPDX-License-Identifier: Apache-2.0
#include "core/escape.h"

#include <gtest/gtest.h>

using asynctrace::escape_untrusted;
using asynctrace::ljust;
using asynctrace::sanitize_utf8;

TEST(Escape, PrintableTextPassesThrough) {
  EXPECT_EQ(escape_untrusted("worker-0 /srv/app.py:30"), "worker-0 /srv/app.py:30");
  EXPECT_EQ(escape_untrusted("tâche-été ✓"), "tâche-été ✓");
}

TEST(Escape, ControlCharactersAreEscaped) {
  using namespace std::string_literals;
  EXPECT_EQ(escape_untrusted("a\nb\tc\rd"), "a\\nb\\tc\\rd");
  EXPECT_EQ(escape_untrusted("x\0y"s), "x\\0y");
  EXPECT_EQ(escape_untrusted("\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
  EXPECT_EQ(escape_untrusted("\x7f"), "\\x7f");
  EXPECT_EQ(escape_untrusted("\xc2\x9b"), "\\u009b");  // C1 CSI
  EXPECT_EQ(escape_untrusted("back\\slash"), "back\\\\slash");
}

TEST(Escape, InvalidUtf8BecomesHex) {
  EXPECT_EQ(escape_untrusted("\xff\xfe"), "\\xff\\xfe");
  EXPECT_EQ(escape_untrusted("\xe2\x82"), "\\xe2\\x82");       // truncated sequence
  EXPECT_EQ(escape_untrusted("\xc0\xaf"), "\\xc0\\xaf");       // overlong '/'
  EXPECT_EQ(escape_untrusted("\xed\xa0\x80"), "\\xed\\xa0\\x80");  // surrogate
}

TEST(Escape, SanitizeKeepsValidUtf8) {
  EXPECT_EQ(sanitize_utf8("ok\n"), "ok\n");
  EXPECT_EQ(sanitize_utf8("a\xffz"), "a\xEF\xBF\xBDz");
}

TEST(Escape, LjustCountsCodePoints) {
  EXPECT_EQ(ljust("ab", 4), "ab  ");
  EXPECT_EQ(ljust("été", 4), "été ");
  EXPECT_EQ(ljust("toolong", 3), "toolong");
}
