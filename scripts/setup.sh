#!/usr/bin/env bash
# Set up a Debian 12 / Ubuntu 24.04 machine for carve and build it: installs the packages that are missing (apt,
# as root or through sudo), configures with CMake and builds into build/ (or $CARVE_BUILD_DIR), then starts a
# one-node SLURM on this machine for the SLURM tests (scripts/slurm_localhost.sh; CARVE_NO_SLURM=1 skips it, and so
# does a SLURM configured here by someone else).
# Idempotent: a second run installs nothing, rebuilds only what changed and leaves a running SLURM alone.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${CARVE_BUILD_DIR:-$ROOT/build}

# Toolchain, LibTorch (CPU), MPI, HDF5, Boost.Program_options, JSON, GoogleTest; h5py and numpy for tools/*.py,
# matplotlib for the demo's loss plot;
# OpenBLAS, which Debian's alternatives then give LibTorch instead of the unoptimised reference BLAS (about 10-50x
# faster CPU matrix products).
PACKAGES=(build-essential cmake ninja-build git pkg-config
          libtorch-dev libopenmpi-dev openmpi-bin libhdf5-dev libboost-program-options-dev nlohmann-json3-dev
          libgtest-dev googletest python3 python3-h5py python3-numpy python3-matplotlib
          libopenblas0-pthread)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup.sh: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

JOBS=${CARVE_JOBS:-$(nproc)}
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo ${CARVE_CMAKE_ARGS:-}
fi
cmake --build "$BUILD_DIR" -j"$JOBS"
echo "setup.sh: built $BUILD_DIR/carve"

# The test setup includes a real SLURM (munge, slurmctld, slurmd) on localhost, for the test slurm.example, which
# is skipped only where sbatch is not installed. It needs apt and root (or sudo); where they are missing, or a
# SLURM of the site is configured (its slurm.conf would be replaced), it is left out with a note.
SLURM_MARK="# Written by carve's scripts/slurm_localhost.sh"
if [ "${CARVE_NO_SLURM:-0}" = 1 ]; then
  echo "setup.sh: CARVE_NO_SLURM=1: no local SLURM"
elif [ -n "${SLURM_CONF:-}" ] ||
     { [ -f /etc/slurm/slurm.conf ] && ! head -n1 /etc/slurm/slurm.conf | grep -qF "$SLURM_MARK"; }; then
  echo "setup.sh: a SLURM is configured here already (${SLURM_CONF:-/etc/slurm/slurm.conf}): no local one"
elif ! command -v apt-get >/dev/null; then
  echo "setup.sh: no apt-get: no local SLURM (the test slurm.example needs sbatch; scripts/slurm_localhost.sh)"
elif [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
  echo "setup.sh: neither root nor sudo: no local SLURM (scripts/slurm_localhost.sh needs root)"
else
  "$ROOT/scripts/slurm_localhost.sh"
fi
