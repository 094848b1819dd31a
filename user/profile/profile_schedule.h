// SPDX-License-Identifier: Apache-2.0
// The agent's periodic profiles, the pure parts: file names, retention, the
// Pyroscope ingest request. No processes, files or sockets here; the agent
// (agent_profiler.cpp) does those. Unit-tested in tests/unit/profile_schedule_test.cpp.
#pragma once

#include <cstdint>
#include <ctime>
#include <string>
#include <vector>

namespace asynctrace {

// A comm (untrusted bytes) as one file-name component: only [A-Za-z0-9._-],
// everything else '_', at most 32 bytes, never "", "." or "..".
std::string sanitize_file_name(const std::string& raw);

// "20261126T104500.123Z": UTC, sorts as time does, no ':' (portable names).
std::string utc_stamp(int64_t unix_ms);

// File extension of a record format: "pb.gz", "folded", "speedscope.json", "svg", "html".
std::string profile_extension(const std::string& format);

// Of the names in one process directory, those to remove so that at most
// `keep` profiles stay: the oldest (names start with utc_stamp). Names that
// are not profiles (other files, our dot-prefixed temporaries) are never
// chosen.
std::vector<std::string> profiles_to_remove(std::vector<std::string> names, size_t keep);

// Percent-encoding of a query parameter value (RFC 3986 unreserved kept).
std::string url_encode(const std::string& s);

// Path and query of the ingest request for one profile, after
// `base_path` (e.g. "/ingest"): name=asynctrace.<comm>{pid=..,comm=..}
// (Pyroscope appends the profile type), from/until in Unix seconds,
// format=pprof, spyName=asynctrace.
std::string ingest_target(const std::string& base_path, uint32_t pid, const std::string& comm, int64_t from_s,
                          int64_t until_s);

// The sample_type_config form field: how Pyroscope should show our one
// sample type ("cpu" or "wall", values in nanoseconds, summed, not sampled).
std::string sample_type_config(const std::string& mode);

}  // namespace asynctrace
