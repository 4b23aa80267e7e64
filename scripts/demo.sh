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
[ -d "$SHARED/fixtures" ] || SHARED=/work/shared
rm -rf "$OUT"; mkdir -p "$OUT"

echo "== import: the CuNiR serial stills fixture (DIALS indexed.expt/indexed.refl)"
"$DBX" import "$SHARED/fixtures/dials_data_files/ssx_CuNiR/indexed.expt" \
              "$SHARED/fixtures/dials_data_files/ssx_CuNiR/indexed.refl" --out "$OUT/import"
"$DBX" sql "$OUT/import" "SELECT * FROM reflections_per_shot ORDER BY n_refl DESC"

echo
echo "== synth: 8 simulated stills (P 43 21 2 lysozyme-like, 768² px, 50-channel SASE spectra,"
echo "   Poisson + readout noise), starting models misoriented 0.05-0.1°, cell +1 %, Ncells ×1.5"
"$DBX" synth --out "$OUT/synth" --shots 8 --pixels 768 --distance 80 --channels 50 --seed 7

echo
echo "== stage 1: diffbragg hopper (the phil file synth wrote)"
"$DBX" hopper "$OUT/synth/hopper.phil" --cmdlinePhil "outdir=$OUT/stage1"
"$DBX" sql "$OUT/stage1" "SELECT shot_id, status, n_evals, round(sigz, 3) AS sigz, round(wall_time_s, 2) AS wall_s FROM stage1_convergence ORDER BY shot_id"

echo
echo "== recovery against the truth"
"$DBX" synth --out "$OUT/synth" --score "$OUT/stage1"

echo
echo "== report: detector residuals and Δψ per panel, before vs after"
"$DBX" report "$OUT/stage1"

echo
echo "Done. Where everything is:"
echo "  synthetic data, truth.parquet, hopper.phil:  $OUT/synth"
echo "  stage-1 tables (catalog.duckdb):             $OUT/stage1   (diffbragg sql $OUT/stage1 'SELECT * FROM stage1_summary')"
echo "  refined .expt / .refl per shot:              $OUT/stage1/expers, $OUT/stage1/refls"
echo "  report (summary.txt, PNGs):                  $OUT/stage1/report"
echo "  imported CuNiR tables:                       $OUT/import"
