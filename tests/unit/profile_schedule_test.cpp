// SPDX-License-Identifier: Apache-2.0
// The agent's periodic profiles, pure parts: file names, retention, the
// ingest request (user/profile_schedule.h).
#include "profile/profile_schedule.h"

#include <gtest/gtest.h>

using namespace asynctrace;

TEST(ProfileSchedule, SanitizeFileName) {
  EXPECT_EQ(sanitize_file_name("python3.11"), "python3.11");
  EXPECT_EQ(sanitize_file_name("my app/x"), "my_app_x");
  EXPECT_EQ(sanitize_file_name("a\nb\x01;$(rm)"), "a_b____rm_");
  EXPECT_EQ(sanitize_file_name(""), "_");
  EXPECT_EQ(sanitize_file_name("."), "_");
  EXPECT_EQ(sanitize_file_name(".."), "_");
  EXPECT_EQ(sanitize_file_name("..."), "...");  // a plain name, not a path step
  EXPECT_EQ(sanitize_file_name("\xc3\xa9t\xc3\xa9"), "__t__");
  EXPECT_EQ(sanitize_file_name(std::string(100, 'x')).size(), 32u);
}

TEST(ProfileSchedule, UtcStampSortsAsTime) {
  EXPECT_EQ(utc_stamp(0), "19700101T000000.000Z");
  EXPECT_EQ(utc_stamp(1795689900123), "20261126T104500.123Z");
  EXPECT_LT(utc_stamp(1795689900123), utc_stamp(1795689900124));
  EXPECT_LT(utc_stamp(1795689909999), utc_stamp(1795689910000));
}

TEST(ProfileSchedule, Extensions) {
  EXPECT_EQ(profile_extension("pprof"), "pb.gz");
  EXPECT_EQ(profile_extension("speedscope"), "speedscope.json");
  EXPECT_EQ(profile_extension("folded"), "folded");
  EXPECT_EQ(profile_extension("svg"), "svg");
  EXPECT_EQ(profile_extension("html"), "html");
}

TEST(ProfileSchedule, RetentionRemovesTheOldestProfilesOnly) {
  const std::vector<std::string> names = {
      "20261126T104503.000Z.folded", "20261126T104500.000Z.folded", ".20261126T104506.000Z.folded.part",
      "README",                      "20261126T104501.500Z.pb.gz",  "20261126T104502.000Z.folded"};
  EXPECT_EQ(profiles_to_remove(names, 2),
            (std::vector<std::string>{"20261126T104500.000Z.folded", "20261126T104501.500Z.pb.gz"}));
  EXPECT_EQ(profiles_to_remove(names, 4), std::vector<std::string>{});
  EXPECT_EQ(profiles_to_remove(names, 1).size(), 3u);
  EXPECT_EQ(profiles_to_remove({}, 1), std::vector<std::string>{});
}

TEST(ProfileSchedule, IngestTarget) {
  EXPECT_EQ(url_encode("a.b-c_d~e"), "a.b-c_d~e");
  EXPECT_EQ(url_encode("{pid=1,comm=x}"), "%7Bpid%3D1%2Ccomm%3Dx%7D");
  EXPECT_EQ(url_encode("a b&c"), "a%20b%26c");
  EXPECT_EQ(ingest_target("/ingest", 42, "svc 1", 1700000000, 1700000010),
            "/ingest?name=asynctrace.svc_1%7Bpid%3D42%2Ccomm%3Dsvc_1%7D&from=1700000000&until=1700000010"
            "&format=pprof&spyName=asynctrace");
}

TEST(ProfileSchedule, SampleTypeConfigNamesTheMode) {
  EXPECT_NE(sample_type_config("cpu").find("\"cpu\": {"), std::string::npos);
  EXPECT_NE(sample_type_config("wall").find("\"wall\": {"), std::string::npos);
  EXPECT_NE(sample_type_config("wall").find("\"aggregation\": \"sum\""), std::string::npos);
}
