// SPDX-License-Identifier: Apache-2.0
// libbpf's warnings about a refused BPF program, parsed, and the kernel
// feature table's reports: what the user reads when the kernel says no.
#include <gtest/gtest.h>

#include "core/features.h"
#include "render/features_view.h"
#include "core/verifier_log.h"

using namespace asynctrace;

namespace {

// libbpf 1.1.2's messages for one refused program, as its log callback gets them.
const std::string kFailed = "libbpf: prog 'replay_end': BPF program load failed: Permission denied\n";
const std::string kLog =
    "0: R1=ctx() R10=fp0\n"
    "70: (7b) *(u64 *)(r2 +152) = r9\n"
    "R2 unbounded memory access, make sure to bounds check any such access\n"
    "processed 184 insns (limit 1000000) max_states_per_insn 1 total_states 15 peak_states 15 mark_read 0\n";
const std::string kBlock = "libbpf: prog 'replay_end': -- BEGIN PROG LOAD LOG --\n" + kLog + "-- END PROG LOAD LOG --\n";

}  // namespace

TEST(VerifierLog, FailureThenLogGivesProgramAndWholeLog) {
  ProgLoadFailure f;
  EXPECT_TRUE(parse_prog_load_warning(kFailed, &f));
  EXPECT_EQ(f.prog, "replay_end");
  EXPECT_FALSE(f.has_log);
  EXPECT_TRUE(parse_prog_load_warning(kBlock, &f));
  EXPECT_EQ(f.prog, "replay_end");
  EXPECT_TRUE(f.has_log);
  EXPECT_EQ(f.log, kLog);
}

TEST(VerifierLog, OtherWarningsAreNotLoadFailures) {
  ProgLoadFailure f;
  for (const char* msg : {"libbpf: prog 'replay_end': failed to load: -13\n", "libbpf: failed to load object 'x'\n",
                          "libbpf: failed to load BPF skeleton 'asynctrace_bpf': -13\n",
                          "libbpf: prog '': BPF program load failed: x\n", "libbpf: prog 'unterminated"}) {
    SCOPED_TRACE(msg);
    EXPECT_FALSE(parse_prog_load_warning(msg, &f));
  }
  EXPECT_EQ(f.prog, "");
}

TEST(VerifierLog, NewFailureForgetsTheOldLog) {
  ProgLoadFailure f;
  ASSERT_TRUE(parse_prog_load_warning(kBlock, &f));
  ASSERT_TRUE(parse_prog_load_warning("libbpf: prog 'batch_flush': BPF program load failed: Invalid argument\n", &f));
  EXPECT_EQ(f.prog, "batch_flush");
  EXPECT_FALSE(f.has_log);
  EXPECT_EQ(f.log, "");
}

TEST(VerifierLog, LogWithoutEndMarkerIsKeptToTheEnd) {
  ProgLoadFailure f;
  ASSERT_TRUE(parse_prog_load_warning("libbpf: prog 'p': -- BEGIN PROG LOAD LOG --\nline 1\nline 2", &f));
  EXPECT_EQ(f.log, "line 1\nline 2");
}

TEST(VerifierLog, ReasonIsTheLastLineBeforeTheStatistics) {
  EXPECT_EQ(verifier_reason(kLog), "R2 unbounded memory access, make sure to bounds check any such access");
  EXPECT_EQ(verifier_reason("insn 1\ncombined stack size of 3 calls is 528. Too large\n"
                            "verification time 1234 usec\nstack depth 8+512+8\n"
                            "processed 99 insns (limit 1000000) max_states_per_insn 0\n\n  \n"),
            "combined stack size of 3 calls is 528. Too large");
  EXPECT_EQ(verifier_reason("  only line without newline  "), "only line without newline");
  EXPECT_EQ(verifier_reason("processed 1 insns\n"), "");
  EXPECT_EQ(verifier_reason(""), "");
  EXPECT_EQ(verifier_reason("\n\n"), "");
}

TEST(VerifierLog, LongLogIsNotCut) {
  std::string log;
  for (int i = 0; i < 5000; ++i) log += std::to_string(i) + ": (bf) r1 = r10\n";
  log += "invalid access to map value, value_size=280 off=4096 size=8\nprocessed 5000 insns\n";
  ProgLoadFailure f;
  ASSERT_TRUE(parse_prog_load_warning("libbpf: prog 'x': -- BEGIN PROG LOAD LOG --\n" + log +
                                          "-- END PROG LOAD LOG --\n",
                                      &f));
  EXPECT_EQ(f.log, log);
  EXPECT_EQ(verifier_reason(f.log), "invalid access to map value, value_size=280 off=4096 size=8");
}

namespace {

KernelFeatures all_present() {
  KernelFeatures f{"6.1.0-13-amd64", feature_table()};
  for (KernelFeature& k : f.list) k.present = true;
  return f;
}

}  // namespace

TEST(KernelFeatures, AllPresentIsOk) {
  const KernelFeatures f = all_present();
  EXPECT_TRUE(check_kernel_features(f).ok());
  EXPECT_EQ(features_json(f)["ok"], true);
  EXPECT_EQ(features_summary(f).find(" no"), std::string::npos);
}

TEST(KernelFeatures, MissingRequiredFeatureIsNamedWithItsKernel) {
  KernelFeatures f = all_present();
  hide_features(f, "bpf_loop");
  const Status st = check_kernel_features(f);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, kExitTracing);
  EXPECT_EQ(st.error().message,
            "failed to load BPF object 'asynctrace': this kernel (6.1.0-13-amd64) lacks the bpf_loop helper "
            "(Linux 5.17+)");
  EXPECT_NE(features_summary(f).find("bpf_loop no"), std::string::npos);
  EXPECT_EQ(features_json(f)["ok"], false);
  EXPECT_NE(render_features(f).find("without bpf_loop: "), std::string::npos);
}

TEST(KernelFeatures, SeveralMissingAreAllNamed) {
  KernelFeatures f = all_present();
  hide_features(f, "ringbuf,nonsense,atomics");
  const Status st = check_kernel_features(f);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("the BPF ring buffer map (Linux 5.8+), BPF atomic"), std::string::npos)
      << st.error().message;
  EXPECT_EQ(st.error().message.find('\n'), std::string::npos);
}

TEST(KernelFeatures, MissingOptionalFeatureIsOk) {
  KernelFeatures f = all_present();
  hide_features(f, "uprobe_multi");
  EXPECT_TRUE(check_kernel_features(f).ok());
  ASSERT_NE(f.find("uprobe_multi"), nullptr);
  EXPECT_FALSE(f.find("uprobe_multi")->present);
  EXPECT_EQ(f.find("no_such_feature"), nullptr);
}

TEST(KernelFeatures, EveryFeatureSaysWhenAndWhatHappensWithout) {
  for (const KernelFeature& k : feature_table()) {
    SCOPED_TRACE(std::string(k.name));
    EXPECT_FALSE(k.what.empty());
    EXPECT_FALSE(k.since.empty());
    EXPECT_FALSE(k.without.empty());
  }
}
