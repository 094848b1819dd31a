// SPDX-License-Identifier: Apache-2.0
// The aiohttp service (tests/programs/aiohttp_service.py) under its own load,
// traced: the views answer on a live service whose tasks churn and whose task
// addresses are reused, and the service behaves as it does untraced.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "harness.h"

using namespace std::chrono_literals;
using nlohmann::json;

namespace {

// Every task of a `ps --format json` answer.
int count_named(const json& ps, const std::string& coro_part) {
  int n = 0;
  for (const auto& t : ps.at("tasks"))
    if (t.dump().find(coro_part) != std::string::npos) ++n;
  return n;
}

}  // namespace

TEST(Service, PsSeesTheRequestTasksOfALiveServiceAndItStillServes) {
  e2e::Service svc;
  ASSERT_TRUE(svc.ready()) << svc.app.stderr_text();
  const auto ps = e2e::run({e2e::tool(), "ps", "-p", svc.pid(), "--format", "json"}, 120s);
  ASSERT_EQ(ps.exit_code, 0) << ps.err;
  const json j = json::parse(ps.out);
  // aiohttp 3.8 serves each connection in a RequestHandler.start task: the
  // load keeps 8 connections open.
  EXPECT_GE(count_named(j, "RequestHandler.start"), 1) << ps.out;
  const json truth = svc.truth();
  EXPECT_GT(truth.at("requests").at("/fanout").get<int>(), 0);
  EXPECT_GT(truth.at("block").at("count").get<int>(), 0);
  // The premise of the lineage tests: request tasks and fan-out parts shared addresses.
  EXPECT_GT(truth.at("reused_ids").get<int>(), 0);
}
