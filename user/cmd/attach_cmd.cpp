// SPDX-License-Identifier: Apache-2.0
// `asynctrace attach`: holds a tracer attached with its maps pinned, so that
// pstree/ps/top read them without attaching.
#include <string.h>
#include <unistd.h>

#include <chrono>
#include <iostream>

#include "cmd/commands.h"
#include "cmd/session.h"
#include "core/escape.h"

namespace asynctrace {

// Holds the tracer attached with its maps pinned until a signal, the duration
// or the end of the traced program. Prints one "attached" line on stdout when
// live. A program that exits or exec()s while held ends the command with
// kExitProcessExited, after one line on stderr; the pins go with the tracer.
int run_attach(const Options& o) {
  const ImageWatch image(o.pid);
  auto opened = open_session(o, TraceModes{o.timing, false, false}, Held::Refuse);
  if (!opened.ok()) return fail(opened.error());
  Tracer* tracer = opened.value().tracer;  // ours: Held::Refuse never reads a holder's maps
  if (auto st = tracer->pin(); !st.ok()) return fail(st.error());
  install_stop_handlers();
  std::cout << "attached pid=" << o.pid << " maps=" << pin_dir(o.pid) << std::endl;
  const auto end = std::chrono::steady_clock::now() + o.duration;
  auto next_gc = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  int code = kExitOk;
  while (!g_stop) {
    if (std::chrono::steady_clock::now() >= next_gc) {
      (void)tracer->gc();  // best effort: a failure only costs memory
      next_gc += std::chrono::seconds(10);
    }
    if (o.duration.count() > 0 && std::chrono::steady_clock::now() >= end) break;
    if (!process_alive(o.pid)) {
      std::cerr << "asynctrace: process " << o.pid << " exited while attached; detached\n";
      code = kExitProcessExited;
      break;
    }
    if (image.replaced()) {
      const std::string exe = proc_exe("/proc/" + std::to_string(o.pid));
      std::cerr << "asynctrace: process " << o.pid << " replaced its program (exec of '"
                << escape_untrusted(exe.empty() ? "?" : exe)
                << "') while attached; detached (attach again to trace the new program)\n";
      code = kExitProcessExited;
      break;
    }
    usleep(100 * 1000);
  }
  if (g_stop && o.verbose) {
    std::cerr << "asynctrace: detaching on " << strsignal(g_stop);
    if (g_stop_sender) std::cerr << " from pid " << g_stop_sender;
    std::cerr << "\n";
  }
  opened.value().view.reset();
  return code;
}

}  // namespace asynctrace
