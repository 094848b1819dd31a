// SPDX-License-Identifier: Apache-2.0
// A flame graph as one self-contained SVG (or an HTML page around the same
// SVG): no network, scripts inline. The layout is computed here so the picture
// shows without scripting (an image viewer, a code review tool); the inline
// script adds zoom, search and hover details on top of it.
//
// Each frame is <g class="f" data-x data-w data-d> with a <title> (the native
// tooltip) and a nested <svg> that holds the rect and the label: a nested svg
// clips its content, so labels never spill over their neighbours at any zoom.
#include <cstdio>
#include <map>
#include <ostream>
#include <string_view>

#include "core/escape.h"
#include "profile/export.h"

namespace asynctrace {
namespace {

constexpr double kWidth = 1200;  // px, the whole image
constexpr double kPad = 10;
constexpr double kFrameWidth = kWidth - 2 * kPad;
constexpr double kRow = 17;  // a frame's 16 px plus a 1 px gap
constexpr double kTop = 40;
constexpr double kBottom = 30;
constexpr double kMinPx = 0.1;  // narrower frames (and their children) are left out

struct Node {
  std::string name;  // display name, printable UTF-8, not yet XML-escaped
  ProfFrame::Kind kind = ProfFrame::Kind::Coroutine;
  uint64_t weight = 0;
  std::map<std::string, size_t> children;  // by name: bytewise order, so stable output
};

// XML text and attribute content. Names are already free of control
// characters (escape_untrusted); U+FFFE and U+FFFF are not, and XML forbids them.
std::string xml(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '&') {
      out += "&amp;";
    } else if (c == '<') {
      out += "&lt;";
    } else if (c == '>') {
      out += "&gt;";
    } else if (c == '"') {
      out += "&quot;";
    } else if (c == '\'') {
      out += "&#39;";
    } else if (s.substr(i, 2) == "\xEF\xBF" && i + 2 < s.size() &&
               (s[i + 2] == '\xBE' || s[i + 2] == '\xBF')) {
      out += s[i + 2] == '\xBE' ? "\\u{fffe}" : "\\u{ffff}";
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string human_ns(uint64_t ns) {
  if (ns >= 1000000000) return fmt("%.2f s", ns / 1e9);
  if (ns >= 1000000) return fmt("%.2f ms", ns / 1e6);
  if (ns >= 1000) return fmt("%.2f \xC2\xB5s", ns / 1e3);
  return std::to_string(ns) + " ns";
}

// Stable colours: the kind picks the palette, a hash of the name the shade,
// so one frame has one colour in every graph.
std::string colour(const Node& n) {
  uint32_t h = 2166136261u;
  for (unsigned char c : n.name) h = (h ^ c) * 16777619u;
  const unsigned a = h % 60, b = (h >> 8) % 40;
  unsigned r, g, bl;
  switch (n.kind) {
    case ProfFrame::Kind::Task:
      r = 90 + a / 2, g = 150 + b, bl = 230;
      break;
    case ProfFrame::Kind::Await:
      r = 170 + b, g = 170 + b, bl = 200 + b / 2;
      break;
    case ProfFrame::Kind::Function:
      r = 230, g = 170 + a, bl = 40 + b;
      break;
    case ProfFrame::Kind::Coroutine:
    default:
      r = 225, g = 90 + a, bl = 50 + b;
      break;
  }
  return "rgb(" + std::to_string(r) + "," + std::to_string(g) + "," + std::to_string(bl) + ")";
}

class Graph {
 public:
  explicit Graph(const Profile& p) {
    nodes_.push_back(Node{"all", ProfFrame::Kind::Task, 0, {}});
    std::vector<std::string> names;
    names.reserve(p.frames.size());
    for (const ProfFrame& f : p.frames) names.push_back(frame_display_name(f, p.lines));
    for (const ProfSample& s : p.samples) {
      if (!valid_stack(p, s.stack)) continue;
      size_t cur = 0;
      nodes_[0].weight += s.weight_ns;
      for (uint32_t fi : s.stack) {
        auto [it, inserted] = nodes_[cur].children.try_emplace(names[fi], nodes_.size());
        const size_t next = it->second;
        if (inserted) nodes_.push_back(Node{names[fi], p.frames[fi].kind, 0, {}});
        nodes_[next].weight += s.weight_ns;
        cur = next;
      }
    }
    if (total() > 0) measure(0, 0);
  }

  uint64_t total() const { return nodes_[0].weight; }
  int rows() const { return total() > 0 ? max_depth_ + 1 : 0; }
  double height() const { return kTop + rows() * kRow + kBottom; }

  void emit(std::ostream& out) const {
    if (total() == 0) {
      out << "<text x=\"" << kWidth / 2 << "\" y=\"" << kTop + 12
          << "\" text-anchor=\"middle\">No samples</text>\n";
      return;
    }
    emit(out, 0, 0, 0);
  }

 private:
  bool visible(const Node& n) const { return n.weight * kFrameWidth / total() >= kMinPx; }

  void measure(size_t i, int depth) {
    if (depth > max_depth_) max_depth_ = depth;
    for (const auto& [name, c] : nodes_[i].children)
      if (visible(nodes_[c])) measure(c, depth + 1);
  }

  void emit(std::ostream& out, size_t i, uint64_t x, int depth) const {
    const Node& n = nodes_[i];
    const double px = kPad + static_cast<double>(x) * kFrameWidth / total();
    const double pw = static_cast<double>(n.weight) * kFrameWidth / total();
    const double py = kTop + (max_depth_ - depth) * kRow;
    const std::string name = xml(n.name);
    out << "<g class=\"f\" data-x=\"" << x << "\" data-w=\"" << n.weight << "\" data-d=\""
        << depth << "\"><title>" << name << " (" << human_ns(n.weight) << ", "
        << fmt("%.2f", 100.0 * static_cast<double>(n.weight) / total()) << "%)</title><svg x=\""
        << fmt("%.2f", px) << "\" y=\"" << py << "\" width=\"" << fmt("%.2f", pw)
        << "\" height=\"16\"><rect width=\"100%\" height=\"100%\" rx=\"2\" fill=\""
        << (i == 0 ? std::string("rgb(200,200,200)") : colour(n))
        << "\"/><text x=\"3\" y=\"12\">" << name << "</text></svg></g>\n";
    uint64_t cx = x;
    for (const auto& [cname, c] : n.children) {
      if (visible(nodes_[c])) emit(out, c, cx, depth + 1);
      cx += nodes_[c].weight;
    }
  }

  std::vector<Node> nodes_;
  int max_depth_ = 0;
};

constexpr std::string_view kCss = R"CSS(
.f { cursor: pointer; }
.f text { font: 12px monospace; fill: #000; pointer-events: none; }
.f:hover rect { stroke: #000; stroke-width: 1; }
.anc rect { opacity: 0.55; }
.hit rect { fill: rgb(224, 64, 224); }
.btn { cursor: pointer; fill: #2255bb; font: 13px sans-serif; }
.info { font: 12px sans-serif; fill: #333; }
)CSS";

// The interactive part, shared by the SVG and the HTML page. It only reads
// the data-* attributes above; nothing of the traced process is ever parsed
// as code or markup (labels are read back with textContent).
constexpr std::string_view kScript = R"JS(
(function () {
  "use strict";
  var svg = document.getElementById("flame");
  var FW = +svg.getAttribute("data-fw"), PAD = +svg.getAttribute("data-pad");
  var frames = Array.prototype.map.call(svg.querySelectorAll("g.f"), function (g) {
    return { g: g, box: g.querySelector("svg"), label: g.querySelector("title").textContent,
             name: g.querySelector("text").textContent,
             x: +g.getAttribute("data-x"), w: +g.getAttribute("data-w"),
             d: +g.getAttribute("data-d") };
  });
  var byElement = new Map();
  frames.forEach(function (f) { byElement.set(f.g, f); });
  var root = frames.filter(function (f) { return f.d === 0; })[0];
  var details = document.getElementById("details");
  var matched = document.getElementById("matched");

  function place(f, x, w) {
    f.box.setAttribute("x", x.toFixed(2));
    f.box.setAttribute("width", w.toFixed(2));
  }
  // The clicked frame fills the width, its descendants scale with it, its
  // ancestors stay (dimmed) as the way back, everything else is hidden.
  function zoom(z) {
    frames.forEach(function (f) {
      var inside = f.d >= z.d && f.x >= z.x && f.x + f.w <= z.x + z.w;
      var above = f.d < z.d && f.x <= z.x && f.x + f.w >= z.x + z.w;
      f.g.style.display = inside || above ? "" : "none";
      f.g.classList.toggle("anc", above);
      if (inside) place(f, PAD + (f.x - z.x) / z.w * FW, f.w / z.w * FW);
      else if (above) place(f, PAD, FW);
    });
  }
  function reset() { if (root) zoom(root); }

  function literal(s) { return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"); }
  // Highlights the frames whose name matches; the share counts each stretch of
  // samples once even when nested frames both match.
  function search(term) {
    var re = null;
    if (term) {
      try { re = new RegExp(term); } catch (e) { re = new RegExp(literal(term)); }
    }
    var hits = [];
    frames.forEach(function (f) {
      var hit = re !== null && re.test(f.name);
      f.g.classList.toggle("hit", hit);
      if (hit) hits.push(f);
    });
    hits.sort(function (a, b) { return a.x - b.x || b.w - a.w; });
    var sum = 0, end = -1;
    hits.forEach(function (f) {
      var s = Math.max(f.x, end), e = f.x + f.w;
      if (e > s) { sum += e - s; end = e; }
    });
    if (matched) {
      matched.textContent = re && root ? "Matched: " + (100 * sum / root.w).toFixed(2) + "%" : "";
    }
    return hits.length;
  }

  svg.addEventListener("click", function (e) {
    var g = e.target.closest && e.target.closest("g.f");
    if (g && byElement.has(g)) zoom(byElement.get(g));
  });
  svg.addEventListener("mouseover", function (e) {
    var g = e.target.closest && e.target.closest("g.f");
    if (g && details && byElement.has(g)) details.textContent = byElement.get(g).label;
  });
  var resetButton = document.getElementById("reset");
  if (resetButton) resetButton.addEventListener("click", reset);
  var box = document.getElementById("search");
  if (box) box.addEventListener("input", function () { search(box.value); });
  var searchButton = document.getElementById("search-btn");
  if (searchButton) searchButton.addEventListener("click", function () {
    var term = window.prompt("Search frames (regular expression)", "");
    if (term !== null) search(term);
  });
  window.asynctraceFlame = { zoom: function (i) { zoom(frames[i]); }, reset: reset, search: search };
})();
)JS";

std::string title_of(const Profile& p) {
  return std::string("asynctrace ") + (p.mode == ProfMode::Cpu ? "cpu" : "wall") +
         " profile: " + escape_untrusted(p.comm) + " (pid " + std::to_string(p.pid) + ")";
}

}  // namespace

std::string weight_caption(const Profile& p, uint64_t total_ns) {
  const std::string of = human_ns(total_ns) + " of a " + fmt("%.1f s", p.duration_ns / 1e9) + " recording";
  // Cpu mode weighs the steps (the loop thread busy running a task, blocking
  // calls included); wall mode adds each task's waits, so it sums over tasks
  // and may exceed the recording.
  if (p.mode == ProfMode::Cpu) return "width = time inside task steps: " + of;
  return "width = task wall time, in steps and awaiting, summed over tasks: " + of;
}

void write_flamegraph(const Profile& p, bool html, std::ostream& out) {
  const Graph g(p);
  const std::string title = xml(title_of(p) + "; " + weight_caption(p, g.total()));
  const double h = html ? g.height() - kTop + 10 : g.height();
  const std::string svg_open =
      "<svg id=\"flame\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" + fmt("%.0f", kWidth) +
      "\" height=\"" + fmt("%.0f", h) + "\" viewBox=\"0 " + fmt("%.0f", html ? kTop - 10 : 0) +
      " " + fmt("%.0f", kWidth) + " " + fmt("%.0f", h) + "\" data-fw=\"" +
      fmt("%.0f", kFrameWidth) + "\" data-pad=\"" + fmt("%.0f", kPad) + "\">\n";
  if (!html) {
    out << "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n" << svg_open;
    out << "<style><![CDATA[" << kCss << "]]></style>\n";
    out << "<rect width=\"100%\" height=\"100%\" fill=\"#fafafa\"/>\n";
    out << "<text x=\"" << kWidth / 2 << "\" y=\"24\" text-anchor=\"middle\" "
        << "style=\"font: 16px sans-serif\">" << title << "</text>\n";
    out << "<text id=\"reset\" class=\"btn\" x=\"" << kPad << "\" y=\"24\">Reset zoom</text>\n";
    out << "<text id=\"search-btn\" class=\"btn\" x=\"" << kWidth - kPad
        << "\" y=\"24\" text-anchor=\"end\">Search</text>\n";
    g.emit(out);
    out << "<text id=\"details\" class=\"info\" x=\"" << kPad << "\" y=\"" << h - 10
        << "\"> </text>\n";
    out << "<text id=\"matched\" class=\"info\" x=\"" << kWidth - kPad << "\" y=\"" << h - 10
        << "\" text-anchor=\"end\"></text>\n";
    out << "<script type=\"text/ecmascript\"><![CDATA[" << kScript << "]]></script>\n</svg>\n";
    return;
  }
  out << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" << title
      << "</title>\n<style>" << kCss
      << "body { font: 14px sans-serif; margin: 10px; background: #fafafa; }\n"
         "#controls { margin: 8px 0; }\n#details { min-height: 1.3em; font: 12px monospace; }\n"
         "</style>\n</head>\n<body>\n<h1 style=\"font-size: 16px\">"
      << title
      << "</h1>\n<div id=\"controls\"><button id=\"reset\" type=\"button\">Reset zoom</button>\n"
         "<input id=\"search\" type=\"search\" placeholder=\"Search frames (regular expression)\" "
         "size=\"40\">\n<span id=\"matched\"></span></div>\n"
      << svg_open;
  g.emit(out);
  out << "</svg>\n<div id=\"details\"></div>\n<script>" << kScript
      << "</script>\n</body>\n</html>\n";
}

}  // namespace asynctrace
