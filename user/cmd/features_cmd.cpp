// SPDX-License-Identifier: Apache-2.0
// `asynctrace features`: what this kernel offers asynctrace (docs/kernels.md).
#include <iostream>

#include "cmd/commands.h"
#include "cmd/session.h"
#include "kernel/kernel_features.h"
#include "render/features_view.h"

namespace asynctrace {

// The table on stdout; exit 7 with one line on stderr if a required feature
// is missing.
int run_features(const Options& o) {
  if (auto st = check_privileges(); !st.ok()) return fail(st.error());
  const KernelFeatures& kf = kernel_features();
  std::cout << (o.format == Format::Json ? features_json(kf).dump(2) + "\n" : render_features(kf));
  std::cout.flush();
  const int status = output_status();
  const Status st = check_kernel_features(kf);
  return st.ok() ? status : fail(st.error());
}

}  // namespace asynctrace
