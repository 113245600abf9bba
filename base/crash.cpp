#include "base/crash.h"

#include <execinfo.h>
#include <signal.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

namespace carve {
namespace {

void write_text(const char* text) {
  ssize_t ignored = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)ignored;
}

extern "C" void on_crash(int sig, siginfo_t* info, void* context) {
  char line[160];
  std::snprintf(line, sizeof(line), "carve: process %d crashed: signal %d (%s), address %p; backtrace:\n",
                static_cast<int>(::getpid()), sig, strsignal(sig), info ? info->si_addr : nullptr);
  write_text(line);
  void* frames[64];
  int n = backtrace(frames, 64);
  backtrace_symbols_fd(frames, n, STDERR_FILENO);
#if defined(__x86_64__) && defined(REG_RIP)
  // A call through a null pointer leaves nothing for the unwinder: the caller is the return address on the stack.
  auto* uc = static_cast<ucontext_t*>(context);
  if (uc && uc->uc_mcontext.gregs[REG_RIP] == 0) {
    void* caller = *reinterpret_cast<void**>(uc->uc_mcontext.gregs[REG_RSP]);
    write_text("called through a null function pointer from:\n");
    backtrace_symbols_fd(&caller, 1, STDERR_FILENO);
  }
#else
  (void)context;
#endif
  signal(sig, SIG_DFL);
  raise(sig);
}

}  // namespace

void install_crash_handler() {
  struct sigaction action;
  std::memset(&action, 0, sizeof(action));
  action.sa_sigaction = on_crash;
  action.sa_flags = SA_SIGINFO | SA_RESETHAND;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) sigaction(sig, &action, nullptr);
}

}  // namespace carve
