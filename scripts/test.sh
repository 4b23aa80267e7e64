#!/usr/bin/env bash
# The test command: sets the machine up (idempotent), builds, runs every test,
# including the MPI run with 2 ranks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
source scripts/env.sh
cargo test --all-targets 2>&1
# Stage 2 under MPI: the same refinement with mpirun -np 1 and -np 2 must agree
# (tests/stage2_mpi.rs runs mpirun itself). Separate build with --features mpi.
if command -v mpirun >/dev/null 2>&1; then
  cargo test --features mpi --test stage2_mpi 2>&1
else
  echo "test.sh: mpirun not found; skipping the stage-2 MPI test" >&2
fi
