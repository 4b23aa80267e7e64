#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, and run the pipeline on a
# small dataset on the CPU. Output goes to ${1:-$HOME/diffbragg-demo}.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT="${1:-$HOME/diffbragg-demo}"
bash scripts/setup.sh >/dev/null
source scripts/env.sh
cargo build --release 2>&1 | tail -1
DBX="$CARGO_TARGET_DIR/release/diffbragg"
SHARED="${DIFFBRAGG_SHARED:-$ROOT/../shared}"
rm -rf "$OUT"; mkdir -p "$OUT"

echo "== import: the CuNiR serial stills fixture (DIALS indexed.expt/indexed.refl)"
"$DBX" import "$SHARED/fixtures/dials_data_files/ssx_CuNiR/indexed.expt" \
              "$SHARED/fixtures/dials_data_files/ssx_CuNiR/indexed.refl" --out "$OUT/import"
"$DBX" sql "$OUT/import" "SELECT * FROM reflections_per_shot ORDER BY n_refl DESC"

echo
echo "Done. Tables: $OUT/import (catalog: $OUT/import/catalog.duckdb)"
