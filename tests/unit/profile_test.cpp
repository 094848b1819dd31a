// SPDX-License-Identifier: Apache-2.0
// The profile exporters on a hand-built profile: folded byte for byte, the
// structure of speedscope and pprof (decoded here with a tiny protobuf
// reader), escaping of names a traced program chose, and empty profiles.
// tests/profile/check_exports.py checks the same outputs with the tools that
// read them (JSON schema, protoc, a browser).
#include <gtest/gtest.h>
#include <zlib.h>

#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/escape.h"
#include "profile/export.h"
#include "profile/profile.h"
#include "sample_profile.h"

using namespace asynctrace;
using K = ProfFrame::Kind;
using asynctrace::testing::kHostileCoro;
using asynctrace::testing::kHostileTask;
using asynctrace::testing::sample_profile;

namespace {

std::string render(const Profile& p, ProfFormat f) {
  std::ostringstream out;
  write_profile(p, f, out);
  return out.str();
}

std::string gunzip(const std::string& z) {
  z_stream zs{};
  EXPECT_EQ(inflateInit2(&zs, 15 + 16), Z_OK);  // gzip wrapper only, not zlib
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(z.data()));
  zs.avail_in = static_cast<uInt>(z.size());
  std::string out;
  char buf[4096];
  int rc;
  do {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof buf;
    rc = inflate(&zs, Z_NO_FLUSH);
    out.append(buf, sizeof buf - zs.avail_out);
  } while (rc == Z_OK);
  inflateEnd(&zs);
  EXPECT_EQ(rc, Z_STREAM_END);
  return out;
}

// Just enough protobuf to read profile.proto back: varint (0) and
// length-delimited (2) fields, the only wire types the encoder writes.
struct Msg {
  std::multimap<uint32_t, uint64_t> ints;
  std::multimap<uint32_t, std::string> bytes;

  static uint64_t varint(std::string_view b, size_t& i) {
    uint64_t v = 0;
    for (int shift = 0; i < b.size() && shift < 64; shift += 7) {
      const auto c = static_cast<uint8_t>(b[i++]);
      v |= uint64_t{c & 0x7Fu} << shift;
      if (!(c & 0x80)) return v;
    }
    ADD_FAILURE() << "truncated varint";
    return v;
  }
  static Msg parse(std::string_view b) {
    Msg m;
    size_t i = 0;
    while (i < b.size()) {
      const uint64_t key = varint(b, i);
      const auto field = static_cast<uint32_t>(key >> 3);
      if ((key & 7) == 0) {
        m.ints.emplace(field, varint(b, i));
      } else if ((key & 7) == 2) {
        const uint64_t n = varint(b, i);
        if (n > b.size() - i) {
          ADD_FAILURE() << "length past the end";
          break;
        }
        m.bytes.emplace(field, std::string(b.substr(i, n)));
        i += n;
      } else {
        ADD_FAILURE() << "unexpected wire type " << (key & 7);
        break;
      }
    }
    return m;
  }
  uint64_t get(uint32_t f) const {
    auto it = ints.find(f);
    return it == ints.end() ? 0 : it->second;
  }
  std::vector<Msg> msgs(uint32_t f) const {
    std::vector<Msg> out;
    for (auto [it, end] = bytes.equal_range(f); it != end; ++it) out.push_back(parse(it->second));
    return out;
  }
  std::vector<std::string> strs(uint32_t f) const {
    std::vector<std::string> out;
    for (auto [it, end] = bytes.equal_range(f); it != end; ++it) out.push_back(it->second);
    return out;
  }
  std::vector<uint64_t> packed(uint32_t f) const {
    std::vector<uint64_t> out;
    for (auto [it, end] = bytes.equal_range(f); it != end; ++it) {
      size_t i = 0;
      while (i < it->second.size()) out.push_back(varint(it->second, i));
    }
    for (auto [it, end] = ints.equal_range(f); it != end; ++it) out.push_back(it->second);
    return out;
  }
};

Msg decode_pprof(const Profile& p) { return Msg::parse(gunzip(render(p, ProfFormat::Pprof))); }

bool has_control_bytes(std::string_view s, bool allow_newline) {
  for (unsigned char c : s) {
    if (c == '\n' && allow_newline) continue;
    if (c < 0x20 || c == 0x7F) return true;
  }
  return false;
}

}  // namespace

TEST(Profile, InternsFrames) {
  Profile p;
  const uint32_t a = p.frame(K::Coroutine, "f", "/a.py", 1);
  EXPECT_EQ(p.frame(K::Coroutine, "f", "/a.py", 1), a);
  EXPECT_NE(p.frame(K::Coroutine, "f", "/a.py", 2), a);
  EXPECT_NE(p.frame(K::Function, "f", "/a.py", 1), a);
  EXPECT_NE(p.frame(K::Task, "f"), a);
  // NULs are data: "a\0" + "b" must not meet "a" + "\0b".
  const uint32_t x = p.frame(K::Coroutine, std::string("a\0", 2), "b");
  const uint32_t y = p.frame(K::Coroutine, "a", std::string("\0b", 2));
  EXPECT_NE(x, y);
  EXPECT_EQ(p.frames.size(), 6u);
  EXPECT_EQ(p.frames[a].name, "f");
  EXPECT_EQ(p.frames[a].line, 1u);

  // A copy edited by hand still interns against what it holds.
  Profile q = p;
  q.frames.push_back(ProfFrame{K::Task, "hand", "", 0});
  EXPECT_EQ(q.frame(K::Task, "hand"), 6u);
  EXPECT_EQ(q.frame(K::Coroutine, "f", "/a.py", 1), a);
  q.frames.clear();
  EXPECT_EQ(q.frame(K::Task, "hand"), 0u);
  EXPECT_EQ(q.frames.size(), 1u);
}

TEST(Profile, DisplayNames) {
  EXPECT_EQ(frame_display_name({K::Task, "worker-1", "", 0}), "[task] worker-1");
  EXPECT_EQ(frame_display_name({K::Coroutine, "Srv.handle", "/srv/app.py", 42}),
            "Srv.handle (/srv/app.py:42)");
  EXPECT_EQ(frame_display_name({K::Function, "crunch", "/srv/lib.py", 0}), "crunch (/srv/lib.py)");
  EXPECT_EQ(frame_display_name({K::Function, "crunch", "", 0}), "crunch");
  EXPECT_EQ(frame_display_name({K::Await, "awaiting asyncio.sleep", "", 0}),
            "[awaiting asyncio.sleep]");
  EXPECT_EQ(frame_display_name({K::Await, "Queue.get", "", 0}), "[awaiting Queue.get]");
  EXPECT_EQ(frame_display_name({K::Await, "awaiting", "", 0}), "[awaiting]");
  EXPECT_EQ(frame_label({K::Coroutine, "Srv.handle", "/srv/app.py", 42}), "Srv.handle");
  EXPECT_EQ(frame_label({K::Task, "a\nb\x1b", "", 0}), "[task] a\\nb\\x1b");
  // Without lines (record's default): the label alone, file or not.
  EXPECT_EQ(frame_display_name({K::Coroutine, "Srv.handle", "/srv/app.py", 0}, false), "Srv.handle");
  EXPECT_EQ(frame_display_name({K::Task, "worker-N", "", 0}, false), "[task] worker-N");
}

TEST(Profile, TitleSaysWhatTheWidthMeasures) {
  Profile p;
  p.duration_ns = 10'000'000'000ull;
  EXPECT_EQ(weight_caption(p, 6'800'000'000ull), "width = time inside task steps: 6.80 s of a 10.0 s recording");
  p.mode = ProfMode::Wall;
  EXPECT_EQ(weight_caption(p, 25'000'000'000ull),
            "width = task wall time, in steps and awaiting, summed over tasks: 25.00 s of a 10.0 s recording");
  std::ostringstream svg;
  write_profile(p, ProfFormat::Svg, svg);
  EXPECT_NE(svg.str().find("summed over tasks: 0 ns of a 10.0 s recording"), std::string::npos) << svg.str();
}

TEST(Profile, FoldedGolden) {
  const std::string expected =
      "[task] evil\\x3btask\\nname\\x1b[31m \"q\" <b>&amp\\x3b'\xEF\xBF\xBF;"
      "co\\x3bro<x>\\x01 (/tmp/a\\x3bb.py:7) 250\n"
      "[task] main;main (/srv/app.py:10) 2\n"
      "[task] main;main (/srv/app.py:10);[task] worker-1;worker (/srv/app.py:20);"
      "crunch (/srv/lib.py:5) 3001\n"
      "[task] main;main (/srv/app.py:10);[task] worker-2;worker (/srv/app.py:20);"
      "[awaiting asyncio.sleep] 4000\n";
  EXPECT_EQ(render(sample_profile(), ProfFormat::Folded), expected);
  // Mode changes the sample type, not the stacks.
  EXPECT_EQ(render(sample_profile(ProfMode::Wall), ProfFormat::Folded), expected);
}

TEST(Profile, FoldedMergesThenRounds) {
  Profile p;
  const uint32_t t = p.frame(K::Task, "t");
  const uint32_t a = p.frame(K::Coroutine, "a");
  const uint32_t b = p.frame(K::Coroutine, "b");
  const uint32_t c = p.frame(K::Coroutine, "c");
  const uint32_t d = p.frame(K::Coroutine, "d");
  p.samples = {{{t, a}, 400, "t", "a"},   {{t, a}, 400, "t", "a"},  // 800 ns: 1 us once merged
               {{t, b}, 499, "t", "b"},                             // rounds to 0: dropped
               {{t, c}, 2'500, "t", "c"},                           // half up: 3
               {{t, d}, 2'499, "t", "d"},   {{t}, 1'000'000, "t", ""},
               {{t, 99}, 5'000, "t", "?"}};  // index out of range: dropped
  EXPECT_EQ(render(p, ProfFormat::Folded),
            "[task] t 1000\n"
            "[task] t;a 1\n"
            "[task] t;c 3\n"
            "[task] t;d 2\n");
  EXPECT_EQ(ns_to_us_rounded(0), 0u);
  EXPECT_EQ(ns_to_us_rounded(499), 0u);
  EXPECT_EQ(ns_to_us_rounded(500), 1u);
  EXPECT_EQ(ns_to_us_rounded(1'499), 1u);
  EXPECT_EQ(ns_to_us_rounded(1'500), 2u);
}

TEST(Profile, FoldedSortsWholeLines) {
  // Stack "x" is a prefix of stack "x !": sorting stacks would put "x" first,
  // sorting lines puts "x ! 3" before "x 5" ('!' < '5').
  Profile p;
  const uint32_t x = p.frame(K::Function, "x");
  const uint32_t y = p.frame(K::Function, "x !");
  p.samples = {{{x}, 5'000, "", ""}, {{y}, 3'000, "", ""}};
  EXPECT_EQ(render(p, ProfFormat::Folded), "x ! 3\nx 5\n");
}

TEST(Profile, FoldedLinesAlwaysParse) {
  Profile p;
  std::vector<uint32_t> stack;
  const std::string names[] = {"a;b", "line\nbreak", "cr\rlf", "esc\x1b[2J", "tab\there",
                               "nul" + std::string(1, '\0') + "x", "\xff\xfe invalid", "del\x7f",
                               "c1\xc2\x85", " 12"};
  for (const std::string& n : names) stack.push_back(p.frame(K::Coroutine, n, "/f;g\n.py", 3));
  p.samples.push_back({stack, 7'000, "t", "c"});
  const std::string out = render(p, ProfFormat::Folded);
  ASSERT_FALSE(out.empty());
  ASSERT_EQ(out.back(), '\n');
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1);
  EXPECT_FALSE(has_control_bytes(out, true));
  const size_t space = out.rfind(' ');
  EXPECT_EQ(out.substr(space), " 7\n");
  const std::string frames = out.substr(0, space);
  EXPECT_EQ(static_cast<size_t>(std::count(frames.begin(), frames.end(), ';')),
            stack.size() - 1);
  EXPECT_NE(out.find("a\\x3bb (/f\\x3bg\\n.py:3)"), std::string::npos) << out;
}

TEST(Profile, EmptyProfileEveryFormat) {
  const Profile p;
  EXPECT_EQ(render(p, ProfFormat::Folded), "");

  const auto ss = nlohmann::json::parse(render(p, ProfFormat::Speedscope));
  EXPECT_EQ(ss["shared"]["frames"].size(), 0u);
  ASSERT_EQ(ss["profiles"].size(), 1u);
  EXPECT_EQ(ss["profiles"][0]["type"], "sampled");
  EXPECT_EQ(ss["profiles"][0]["samples"].size(), 0u);
  EXPECT_EQ(ss["profiles"][0]["weights"].size(), 0u);

  for (ProfFormat f : {ProfFormat::Svg, ProfFormat::Html}) {
    const std::string s = render(p, f);
    EXPECT_NE(s.find("No samples"), std::string::npos);
    EXPECT_EQ(s.find("class=\"f\""), std::string::npos);
    EXPECT_NE(s.find("</svg>"), std::string::npos);
  }

  const Msg m = decode_pprof(p);
  const auto strings = m.strs(6);
  ASSERT_GE(strings.size(), 3u);
  EXPECT_EQ(strings[0], "");
  const auto types = m.msgs(1);
  ASSERT_EQ(types.size(), 1u);
  EXPECT_EQ(strings.at(types[0].get(1)), "cpu");
  EXPECT_EQ(strings.at(types[0].get(2)), "nanoseconds");
  EXPECT_TRUE(m.msgs(2).empty());
  EXPECT_TRUE(m.msgs(4).empty());
}

TEST(Profile, SpeedscopeStructure) {
  const Profile p = sample_profile();
  const auto j = nlohmann::json::parse(render(p, ProfFormat::Speedscope));
  EXPECT_EQ(j["$schema"], "https://www.speedscope.app/file-format-schema.json");
  const auto& frames = j["shared"]["frames"];
  ASSERT_EQ(frames.size(), p.frames.size());
  EXPECT_EQ(frames[1]["name"], "main");
  EXPECT_EQ(frames[1]["file"], "/srv/app.py");
  EXPECT_EQ(frames[1]["line"], 10);
  EXPECT_EQ(frames[0]["name"], "[task] main");
  EXPECT_FALSE(frames[0].contains("file"));
  for (const auto& f : frames) EXPECT_FALSE(has_control_bytes(f["name"].get<std::string>(), false));

  const auto& profiles = j["profiles"];
  ASSERT_EQ(profiles.size(), 1 + p.timelines.size());
  const auto& sampled = profiles[0];
  EXPECT_EQ(sampled["type"], "sampled");
  EXPECT_EQ(sampled["unit"], "nanoseconds");
  ASSERT_EQ(sampled["samples"].size(), 5u);  // the two equal worker-1 stacks merged
  ASSERT_EQ(sampled["weights"].size(), 5u);
  EXPECT_EQ(sampled["weights"][1], 3'000'600u);
  uint64_t total = 0;
  for (const auto& w : sampled["weights"]) total += w.get<uint64_t>();
  EXPECT_EQ(sampled["endValue"], total);
  for (const auto& s : sampled["samples"])
    for (const auto& i : s) EXPECT_LT(i.get<size_t>(), frames.size());

  for (size_t k = 1; k < profiles.size(); ++k) {
    const auto& e = profiles[k];
    EXPECT_EQ(e["type"], "evented");
    EXPECT_EQ(e["unit"], "nanoseconds");
    std::vector<int> open;
    uint64_t last = 0;
    for (const auto& ev : e["events"]) {
      const uint64_t at = ev["at"];
      EXPECT_GE(at, last);
      EXPECT_LE(at, e["endValue"].get<uint64_t>());
      last = at;
      const int f = ev["frame"];
      EXPECT_LT(static_cast<size_t>(f), frames.size());
      if (ev["type"] == "O") {
        open.push_back(f);
      } else {
        ASSERT_EQ(ev["type"], "C");
        ASSERT_FALSE(open.empty());
        EXPECT_EQ(open.back(), f);
        open.pop_back();
      }
    }
    EXPECT_TRUE(open.empty()) << "unbalanced timeline " << k;
  }
  EXPECT_EQ(profiles[2]["name"], "[task] worker-1 (0x2000)");
  EXPECT_EQ(profiles[3]["name"], "[task] " + escape_untrusted(kHostileTask) + " (0x3000)");
}

TEST(Profile, SpeedscopeRepairsBrokenTimelines) {
  Profile p;
  p.duration_ns = 100;
  const uint32_t t = p.frame(K::Task, "t");
  const uint32_t a = p.frame(K::Coroutine, "a");
  const uint32_t b = p.frame(K::Coroutine, "b");
  p.timelines.push_back({1, "t",
                         {{10, t, true}, {10, a, true}, {20, b, true},
                          {15, t, false},   // closes b and a too; time never goes back
                          {30, a, false},   // not open: dropped
                          {40, t, true}, {45, 7, true}}});  // out of range; t left open
  const auto j = nlohmann::json::parse(render(p, ProfFormat::Speedscope));
  const std::string got = j["profiles"][1]["events"].dump();
  EXPECT_EQ(got,
            R"([{"at":10,"frame":0,"type":"O"},{"at":10,"frame":1,"type":"O"},)"
            R"({"at":20,"frame":2,"type":"O"},{"at":20,"frame":2,"type":"C"},)"
            R"({"at":20,"frame":1,"type":"C"},{"at":20,"frame":0,"type":"C"},)"
            R"({"at":40,"frame":0,"type":"O"},{"at":100,"frame":0,"type":"C"}])");
}

TEST(Profile, PprofDecodes) {
  const Profile p = sample_profile();
  const Msg m = decode_pprof(p);
  const auto strings = m.strs(6);
  ASSERT_FALSE(strings.empty());
  EXPECT_EQ(strings[0], "");
  auto str = [&](uint64_t i) { return i < strings.size() ? strings[i] : "<bad index>"; };
  for (const std::string& s : strings) EXPECT_FALSE(has_control_bytes(s, false)) << s;

  const auto types = m.msgs(1);
  ASSERT_EQ(types.size(), 1u);
  EXPECT_EQ(str(types[0].get(1)), "cpu");
  EXPECT_EQ(str(types[0].get(2)), "nanoseconds");
  const auto period = m.msgs(11);
  ASSERT_EQ(period.size(), 1u);
  EXPECT_EQ(str(period[0].get(1)), "cpu");
  EXPECT_EQ(m.get(10), p.duration_ns);
  EXPECT_EQ(m.ints.count(9), 0u);  // start_ns 0: no time_nanos

  // location id -> (function name, file, line)
  std::map<uint64_t, Msg> functions;
  for (const Msg& f : m.msgs(5)) functions[f.get(1)] = f;
  std::map<uint64_t, std::string> where;
  for (const Msg& l : m.msgs(4)) {
    const auto lines = l.msgs(4);
    ASSERT_EQ(lines.size(), 1u);
    ASSERT_TRUE(functions.count(lines[0].get(1)));
    const Msg& f = functions[lines[0].get(1)];
    EXPECT_EQ(f.get(2), f.get(3));  // name == system_name
    where[l.get(1)] = str(f.get(2)) + "@" + str(f.get(4)) + ":" + std::to_string(lines[0].get(2));
  }

  const auto samples = m.msgs(2);
  ASSERT_EQ(samples.size(), 5u);
  auto stack = [&](const Msg& s) {
    std::string out;
    for (uint64_t id : s.packed(1)) out += (out.empty() ? "" : " < ") + where[id];
    return out;
  };
  auto labels = [&](const Msg& s) {
    std::map<std::string, std::string> out;
    for (const Msg& l : s.msgs(3)) out[str(l.get(1))] = str(l.get(2));
    return out;
  };
  EXPECT_EQ(stack(samples[1]),
            "crunch@/srv/lib.py:5 < worker@/srv/app.py:20 < [task] worker-1@:0 < "
            "main@/srv/app.py:10 < [task] main@:0");
  EXPECT_EQ(samples[1].packed(2), std::vector<uint64_t>{3'000'600});
  EXPECT_EQ(labels(samples[1]),
            (std::map<std::string, std::string>{{"task_name", "worker-1"}, {"coroutine", "worker"}}));
  EXPECT_EQ(samples[2].packed(2), std::vector<uint64_t>{499});  // pprof keeps nanoseconds
  EXPECT_EQ(stack(samples[3]),
            "[awaiting asyncio.sleep]@:0 < worker@/srv/app.py:20 < [task] worker-2@:0 < "
            "main@/srv/app.py:10 < [task] main@:0");
  EXPECT_EQ(labels(samples[4]),
            (std::map<std::string, std::string>{{"task_name", escape_untrusted(kHostileTask)},
                                                {"coroutine", escape_untrusted(kHostileCoro)}}));
  // Same function at two lines would share a Function; here every label+file differs
  // except the two worker frames of one code object... which have the same line: one frame.
  EXPECT_EQ(m.msgs(5).size(), 9u);

  const Msg wall = decode_pprof(sample_profile(ProfMode::Wall));
  EXPECT_EQ(wall.strs(6).at(wall.msgs(1).at(0).get(1)), "wall");
}

TEST(Profile, PprofSharesFunctionsAcrossLines) {
  Profile p;
  const uint32_t a = p.frame(K::Coroutine, "f", "/x.py", 1);
  const uint32_t b = p.frame(K::Coroutine, "f", "/x.py", 2);
  p.samples = {{{a}, 1, "t", "f"}, {{b}, 2, "t", "f"}};
  const Msg m = decode_pprof(p);
  EXPECT_EQ(m.msgs(4).size(), 2u);
  EXPECT_EQ(m.msgs(5).size(), 1u);
}

TEST(Profile, PprofIsDeterministic) {
  const Profile p = sample_profile();
  EXPECT_EQ(render(p, ProfFormat::Pprof), render(p, ProfFormat::Pprof));
  EXPECT_EQ(gunzip(render(p, ProfFormat::Pprof)), encode_pprof(p, 0));
  const Msg m = Msg::parse(encode_pprof(p, 1'700'000'000'000'000'000));
  EXPECT_EQ(m.get(9), 1'700'000'000'000'000'000u);
}

TEST(Profile, FlameGraphEscapesAndLaysOut) {
  const Profile p = sample_profile();
  for (ProfFormat f : {ProfFormat::Svg, ProfFormat::Html}) {
    const std::string s = render(p, f);
    // Nodes: all, [task] main, main, worker-1, worker, crunch, worker-2, worker,
    // [awaiting asyncio.sleep], evil task, its coroutine.
    size_t nodes = 0;
    for (size_t i = s.find("<g class=\"f\""); i != std::string::npos;
         i = s.find("<g class=\"f\"", i + 1))
      ++nodes;
    EXPECT_EQ(nodes, 11u);
    EXPECT_FALSE(has_control_bytes(s, true));
    EXPECT_EQ(s.find("<b>"), std::string::npos);
    EXPECT_EQ(s.find("<x>"), std::string::npos);
    EXPECT_EQ(s.find("\xEF\xBF\xBF"), std::string::npos);
    EXPECT_NE(s.find("evil;task\\nname\\x1b[31m &quot;q&quot; &lt;b&gt;&amp;amp;&#39;\\u{ffff}"),
              std::string::npos);
    EXPECT_NE(s.find("co;ro&lt;x&gt;\\x01 (/tmp/a;b.py:7)"), std::string::npos);
    // The root spans the full width; a child's width follows its weight.
    EXPECT_NE(s.find("data-x=\"0\" data-w=\"7252599\" data-d=\"0\"><title>all (7.25 ms, 100.00%)"
                     "</title><svg x=\"10.00\" y=\""),
              std::string::npos);
    EXPECT_NE(s.find("width=\"1180.00\""), std::string::npos);
  }
  EXPECT_EQ(render(p, ProfFormat::Svg).rfind("<?xml", 0), 0u);
  EXPECT_EQ(render(p, ProfFormat::Html).rfind("<!DOCTYPE html>", 0), 0u);
}

TEST(Profile, FlameGraphLeavesOutSubpixelFrames) {
  Profile p;
  const uint32_t t = p.frame(K::Task, "t");
  const uint32_t big = p.frame(K::Coroutine, "big");
  const uint32_t tiny = p.frame(K::Coroutine, "tiny");
  p.samples = {{{t, big}, 1'000'000'000, "t", "big"}, {{t, tiny}, 1, "t", "tiny"}};
  const std::string s = render(p, ProfFormat::Svg);
  EXPECT_NE(s.find(">big</text>"), std::string::npos);
  EXPECT_EQ(s.find(">tiny</text>"), std::string::npos);
}
