// SPDX-License-Identifier: Apache-2.0
// The profile exporters' shared pieces (internal to user/export_*.cpp and
// their tests): one display-name convention for every format (docs/profiles.md)
// and the per-format writers write_profile() dispatches to.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <string_view>
#include <vector>

#include "profile/profile.h"

namespace asynctrace {

// A frame's label without its location, escaped for display (control
// characters and invalid UTF-8 made visible by escape_untrusted, so the result
// is printable UTF-8): "[task] <name>", "<qualname>", "[awaiting <what>]".
// Formats with their own file and line fields (speedscope, pprof) use this.
std::string frame_label(const ProfFrame& f);

// The label plus the location where known: "<qualname> (<file>:<line>)";
// the label alone unless `lines` (Profile::lines). Formats with nothing but a
// name per frame (folded, svg, html) use this.
std::string frame_display_name(const ProfFrame& f, bool lines = true);

// What a flame graph's width measures, for its title: "time inside task
// steps: 6.80 s of a 10.0 s recording" (cpu), or the wall form.
std::string weight_caption(const Profile& p, uint64_t total_ns);

// A sample is exported only if its stack is non-empty and every index is in
// range: a recorder bug must not make a file that viewers reject.
bool valid_stack(const Profile& p, const std::vector<uint32_t>& stack);

// Nanoseconds to whole microseconds, half up (folded's unit).
uint64_t ns_to_us_rounded(uint64_t ns);

void write_folded(const Profile& p, std::ostream& out);
void write_speedscope(const Profile& p, std::ostream& out);
void write_flamegraph(const Profile& p, bool html, std::ostream& out);
void write_pprof(const Profile& p, std::ostream& out);

// The serialized perftools.profiles.Profile before gzip; time_nanos is the
// recording's start in nanoseconds since the epoch (0: left out), a parameter so
// that tests get byte-stable output.
std::string encode_pprof(const Profile& p, int64_t time_nanos);

// RFC 1952 gzip of `data` (mtime 0: same input, same bytes).
std::string gzip(std::string_view data);

}  // namespace asynctrace
