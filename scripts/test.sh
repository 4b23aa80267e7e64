#!/usr/bin/env bash
# The test command: sets the machine up (idempotent), builds, runs every test,
# including the MPI run with 2 ranks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
source scripts/env.sh
cargo test --all-targets 2>&1
