// carve: the single binary. Parses the subcommand, dispatches, and turns errors into messages and exit codes.
#include <cstdlib>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <iomanip>
#include <iostream>

#include "base/error.h"
#include "comm/mpi_session.h"
#include "launcher/options.h"
#include "launcher/subcommands.h"

namespace carve::launcher {

const std::vector<Subcommand>& subcommands() {
  static const std::vector<Subcommand> table = {
      {"synth", "write the built-in example: a synthetic visual question-answering set", synth_main},
      {"pretrain", "train the built-in example's small teacher on a sample file", pretrain_main},
      {"inspect", "architecture, parameter counts, dtypes and files of a checkpoint", inspect_main},
      {"generate", "continue token prompts with a teacher or student checkpoint", generate_main},
      {"convert", "carve a seeded Mamba-2 student out of a teacher and save it", convert_main},
      {"data", "sample files: validate", data_main},
      {"precompute", "run the teacher once over samples and write the activation cache (mpirun: ranks split it)",
       precompute_main},
      {"cache", "activation caches: verify", cache_main},
      {"distill", "distillation: layer-wise stages 1-2, end-to-end stage 3, MaTVLM's one stage (mpirun)",
       distill_main},
      {"eval", "teacher and students side by side: perplexity, KL, top-1 agreement, exact-match answers", eval_main},
      {"bench", "benchmarks: kernels (CUDA vs reference vs Triton), cache (precompute, streaming), distill (stages)",
       bench_main},
  };
  return table;
}

namespace {

void print_help() {
  std::cout << "carve: distil Mamba-2 students out of Transformer vision-language models\n\n"
               "usage: carve <subcommand> [--config FILE.ini] [--key value ...]\n\nsubcommands:\n";
  for (const auto& s : subcommands()) std::cout << "  " << s.name << std::string(12 - std::string(s.name).size(), ' ')
                                                << s.summary << "\n";
  std::cout << "\n`carve <subcommand> --help` lists its options with their defaults.\n";
}

}  // namespace
}  // namespace carve::launcher

namespace carve::launcher {

int run_action(const std::string& sub, const std::vector<Subcommand>& actions, const std::vector<std::string>& args) {
  std::vector<std::string> names;
  for (const auto& a : actions) names.push_back(a.name);
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cout << "usage: carve " << sub << " <action> [options]   (carve " << sub << " <action> --help)\nactions:\n";
    for (const auto& a : actions) std::cout << "  " << std::left << std::setw(10) << a.name << a.summary << "\n";
    return args.empty() ? 2 : 0;
  }
  for (const auto& a : actions)
    if (args[0] == a.name) return a.main(std::vector<std::string>(args.begin() + 1, args.end()));
  const auto best = closest_name(names, args[0]);
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  throw UsageError("carve " + sub + ": unknown action '" + args[0] + "'" +
                   (best.empty() ? "" : " (did you mean '" + best + "'?)") + "; available: " + list);
}

}  // namespace carve::launcher

int main(int argc, char** argv) {
  using namespace carve::launcher;
#ifdef __GLIBC__
  // CPU training allocates and frees the same large tensors every step. glibc serves blocks over its mmap threshold
  // with fresh mappings, and the kernel zero-fills every page again: on 2 cores that system time was half of a
  // small model's step. Keep large blocks on the heap and freed memory mapped, so steps reuse it.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 64 << 20);
#endif
  if (argc < 2 || std::string(argv[1]) == "help" || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    if (argc >= 3) {  // carve help <subcommand>
      for (const auto& s : subcommands())
        if (argv[2] == std::string(s.name)) return s.main({"--help"});
    }
    print_help();
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  for (const auto& s : subcommands()) {
    if (name != s.name) continue;
    int rc = 0;
    try {
      rc = s.main(args);
    } catch (const UsageError& e) {
      std::cerr << "error: " << e.what() << "\n(see `carve " << name << " --help`)\n";
      rc = 2;
    } catch (const carve::Error& e) {
      std::cerr << "error: " << e.what() << "\n";
      const char* debug = std::getenv("CARVE_DEBUG");
      if (debug && *debug && std::string(debug) != "0" && !e.where().empty())
        std::cerr << "(failed check " << e.where() << ")\n";
      rc = 1;
    } catch (const std::exception& e) {
      std::cerr << "error: " << e.what() << "\n";
      rc = 1;
    }
    // A subcommand that failed inside a multi-process MPI job left MPI running (see MpiSession): stop every rank
    // now rather than let the others wait in their next collective.
    if (rc != 0 && carve::comm::mpi_active() && carve::comm::world_size() > 1) {
      std::cerr.flush();
      MPI_Abort(MPI_COMM_WORLD, rc);
    }
    return rc;
  }
  std::vector<std::string> names;
  for (const auto& s : subcommands()) names.push_back(s.name);
  const auto best = closest_name(names, name);
  std::cerr << "error: unknown subcommand '" << name << "'" << (best.empty() ? "" : " (did you mean '" + best + "'?)")
            << "\n";
  print_help();
  return 2;
}
