#!/usr/bin/env bash
# The test command: sets the machine up (idempotent), builds, runs every test,
# then the release-mode stage-1 acceptance run and the MPI run with 2 ranks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
source scripts/env.sh
cargo test --all-targets 2>&1

# Stage 1 acceptance on the full synthetic dataset (20 shots, 1024² px, 50
# channels, Poisson + readout noise), in release: prints the recovery and the
# seconds per shot.
cargo test --release --test stage1_synthetic -- --ignored --nocapture 2>&1

# MPI: the same binary under mpirun -np 2 gives the same rows as one rank
# (stage 1 and stage 2; the tests run mpirun themselves). Separate build with
# --features mpi.
if command -v mpirun >/dev/null 2>&1; then
  cargo test --features mpi --test stage1_mpi --test stage2_mpi 2>&1
else
  echo "test.sh: mpirun not found; skipping the MPI tests" >&2
fi
