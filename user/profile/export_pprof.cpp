// SPDX-License-Identifier: Apache-2.0
// pprof's profile.proto (github.com/google/pprof, proto/profile.proto), encoded
// by hand: the schema is small and stable, and a protobuf runtime would be the
// tool's only use of one. Field numbers below are that file's.
#include <time.h>
#include <zlib.h>

#include <algorithm>
#include <map>
#include <ostream>
#include <stdexcept>
#include <tuple>

#include "core/escape.h"
#include "profile/export.h"

namespace asynctrace {
namespace {

// Protobuf wire format: varints, and length-delimited fields (wire type 2) for
// strings, sub-messages and packed repeated integers.
class Pb {
 public:
  void varint(uint64_t v) {
    while (v >= 0x80) {
      buf_ += static_cast<char>((v & 0x7F) | 0x80);
      v >>= 7;
    }
    buf_ += static_cast<char>(v);
  }
  void tag(uint32_t field, uint32_t wire) { varint((uint64_t{field} << 3) | wire); }
  // proto3 leaves zero scalars out: same bytes as protoc would write.
  void int_field(uint32_t field, uint64_t v) {
    if (v == 0) return;
    tag(field, 0);
    varint(v);
  }
  void bytes_field(uint32_t field, std::string_view b) {
    tag(field, 2);
    varint(b.size());
    buf_.append(b);
  }
  void packed(uint32_t field, const std::vector<uint64_t>& vs) {
    if (vs.empty()) return;
    Pb inner;
    for (uint64_t v : vs) inner.varint(v);
    bytes_field(field, inner.str());
  }
  const std::string& str() const { return buf_; }

 private:
  std::string buf_;
};

class Strings {
 public:
  Strings() { index(""); }  // string_table[0] must be ""
  uint64_t index(const std::string& s) {
    auto [it, inserted] = ids_.try_emplace(s, table_.size());
    if (inserted) table_.push_back(s);
    return it->second;
  }
  const std::vector<std::string>& table() const { return table_; }

 private:
  std::map<std::string, uint64_t> ids_;
  std::vector<std::string> table_;
};

// Profile's start is CLOCK_MONOTONIC; pprof wants the epoch.
int64_t start_epoch_ns(const Profile& p) {
  if (p.start_ns == 0) return 0;
  timespec mono{}, real{};
  clock_gettime(CLOCK_MONOTONIC, &mono);
  clock_gettime(CLOCK_REALTIME, &real);
  const int64_t mono_ns = int64_t{mono.tv_sec} * 1000000000 + mono.tv_nsec;
  const int64_t real_ns = int64_t{real.tv_sec} * 1000000000 + real.tv_nsec;
  const int64_t ago = mono_ns - static_cast<int64_t>(p.start_ns);
  return ago >= 0 && ago < real_ns ? real_ns - ago : 0;
}

}  // namespace

std::string encode_pprof(const Profile& p, int64_t time_nanos) {
  Strings st;
  Pb pb;
  const uint64_t type = st.index(p.mode == ProfMode::Cpu ? "cpu" : "wall");
  const uint64_t unit = st.index("nanoseconds");
  Pb value_type;
  value_type.int_field(1, type);
  value_type.int_field(2, unit);
  pb.bytes_field(1, value_type.str());  // sample_type

  // Samples merged by (stack, labels), in first-seen order.
  const uint64_t k_task = st.index("task_name");
  const uint64_t k_coro = st.index("coroutine");
  using Key = std::tuple<std::vector<uint32_t>, std::string, std::string>;
  std::map<Key, size_t> slot;
  std::vector<std::pair<const ProfSample*, uint64_t>> merged;
  for (const ProfSample& s : p.samples) {
    if (!valid_stack(p, s.stack)) continue;
    auto [it, inserted] = slot.try_emplace(Key{s.stack, s.task_name, s.coroutine}, merged.size());
    if (inserted) merged.emplace_back(&s, 0);
    merged[it->second].second += s.weight_ns;
  }
  std::vector<bool> used(p.frames.size(), false);
  for (const auto& [s, weight] : merged) {
    Pb sample;
    // pprof stacks are leaf first.
    std::vector<uint64_t> locs(s->stack.rbegin(), s->stack.rend());
    for (uint64_t& l : locs) {
      used[l] = true;
      l += 1;  // location ids start at 1
    }
    sample.packed(1, locs);
    sample.packed(2, {weight});
    for (auto [key, raw] : {std::pair{k_task, &s->task_name}, std::pair{k_coro, &s->coroutine}}) {
      Pb label;
      label.int_field(1, key);
      label.int_field(2, st.index(escape_untrusted(*raw)));
      sample.bytes_field(3, label.str());
    }
    pb.bytes_field(2, sample.str());
  }

  // One Location per frame, one Function per distinct (label, file): the line
  // belongs to the location, so frames of one function at different lines
  // share the function as pprof expects.
  std::map<std::pair<std::string, std::string>, uint64_t> fn_ids;
  std::string functions;
  for (size_t i = 0; i < p.frames.size(); ++i) {
    if (!used[i]) continue;
    const ProfFrame& f = p.frames[i];
    const std::string label = frame_label(f);
    const std::string file = escape_untrusted(f.file);
    auto [it, inserted] = fn_ids.try_emplace({label, file}, fn_ids.size() + 1);
    if (inserted) {
      Pb fn;
      fn.int_field(1, it->second);
      fn.int_field(2, st.index(label));
      fn.int_field(3, st.index(label));
      fn.int_field(4, st.index(file));
      Pb wrap;
      wrap.bytes_field(5, fn.str());
      functions += wrap.str();
    }
    Pb line;
    line.int_field(1, it->second);
    line.int_field(2, f.line);
    Pb loc;
    loc.int_field(1, i + 1);
    loc.bytes_field(4, line.str());
    pb.bytes_field(4, loc.str());
  }
  // Fields need not be in number order, but protoc writes them so; keep to it.
  std::string out = pb.str() + functions;

  Pb tail;
  const std::string comment = "asynctrace " + std::string(p.mode == ProfMode::Cpu ? "cpu" : "wall") +
                              " profile of " + escape_untrusted(p.comm) + " (pid " +
                              std::to_string(p.pid) + ")";
  const uint64_t comment_id = st.index(comment);
  for (const std::string& s : st.table()) tail.bytes_field(6, s);  // string_table
  tail.int_field(9, static_cast<uint64_t>(time_nanos));
  tail.int_field(10, p.duration_ns);
  tail.bytes_field(11, value_type.str());  // period_type
  tail.packed(13, {comment_id});            // comment
  return out + tail.str();
}

std::string gzip(std::string_view data) {
  z_stream zs{};
  // windowBits 15 + 16: a gzip wrapper, which is what pprof reads.
  if (deflateInit2(&zs, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    throw std::runtime_error("failed to initialize zlib deflate");
  std::string out;
  char buf[16384];
  int rc;
  // avail_in is 32 bits: feed the input in pieces, finish with the last one.
  size_t fed = 0;
  do {
    if (zs.avail_in == 0 && fed < data.size()) {
      const size_t n = std::min<size_t>(data.size() - fed, 1u << 30);
      zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data() + fed));
      zs.avail_in = static_cast<uInt>(n);
      fed += n;
    }
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof buf;
    rc = deflate(&zs, fed == data.size() ? Z_FINISH : Z_NO_FLUSH);
    out.append(buf, sizeof buf - zs.avail_out);
  } while (rc == Z_OK);
  deflateEnd(&zs);
  if (rc != Z_STREAM_END) throw std::runtime_error("failed to gzip the pprof profile");
  return out;
}

void write_pprof(const Profile& p, std::ostream& out) {
  const std::string z = gzip(encode_pprof(p, start_epoch_ns(p)));
  out.write(z.data(), static_cast<std::streamsize>(z.size()));
}

}  // namespace asynctrace
