// A last word from a crashing process: on SIGSEGV, SIGBUS, SIGFPE, SIGILL or SIGABRT, print the signal, the faulting
// address and a symbolised backtrace to stderr, then die by the same signal (so mpirun and SLURM see it).
// Installed after MPI_Init, so it replaces OpenMPI's own handler, which prints no symbols.
#pragma once

namespace carve {

void install_crash_handler();

}  // namespace carve
