#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, and run the whole pipeline on
# a small simulated dataset on the CPU: synth → stage 1 (hopper) → report →
# predict (integrate) → stage-2 pre-import → stage 2 (ens-hopper) → report.
# The user's own phil files (shared/seed) drive predict and stage 2, with only
# their site paths replaced by --cmdlinePhil. Output: ${1:-$HOME/diffbragg-demo}.
# A few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT="${1:-$HOME/diffbragg-demo}"
SHOTS="${DEMO_SHOTS:-24}"
bash scripts/setup.sh >/dev/null
source scripts/env.sh
cargo build --release 2>&1 | tail -1
DBX="$CARGO_TARGET_DIR/release/diffbragg"
SHARED="${DIFFBRAGG_SHARED:-$ROOT/../shared}"
[ -d "$SHARED/fixtures" ] || SHARED=/work/shared
SEED="$SHARED/seed"
rm -rf "$OUT"; mkdir -p "$OUT"
run() { echo "+ diffbragg ${*}" | sed "s#$OUT/##g"; "$DBX" "$@"; }
T0=$SECONDS

echo "== import: the CuNiR serial stills fixture (DIALS indexed.expt/indexed.refl) into tables"
run import "$SHARED/fixtures/dials_data_files/ssx_CuNiR/indexed.expt" \
           "$SHARED/fixtures/dials_data_files/ssx_CuNiR/indexed.refl" --out "$OUT/import"
run sql "$OUT/import" "SELECT * FROM reflections_per_shot ORDER BY n_refl DESC LIMIT 5"

echo
echo "== synth: $SHOTS simulated stills (P 43 21 2 lysozyme-like, 768² px, 50-channel SASE spectra"
echo "   in the HDF5 images, Poisson + readout noise); starting models misoriented 0.05-0.1°,"
echo "   cell +1 %, Ncells ×1.5"
run synth --out "$OUT/synth" --shots "$SHOTS" --pixels 768 --distance 80 --channels 50 --seed 7

echo
echo "== stage 1: hopper, with the phil file synth wrote"
run hopper "$OUT/synth/hopper.phil" --cmdlinePhil "outdir=$OUT/stage1" --no-progress
run sql "$OUT/stage1" "SELECT n_refined, n_converged, n_failed, median_evals, round(median_wall_s, 2) AS median_s_per_shot, round(median_sigz, 4) AS median_sigz FROM stage1_summary"
echo "-- recovery against the truth"
run synth --out "$OUT/synth" --score "$OUT/stage1"
echo "-- report: detector residuals and Δψ per panel, before vs after"
run report "$OUT/stage1" | tail -22

echo
echo "== predict: integrate with the user's simulation.phil and sim_processing.phil"
echo "   (the LZ08 site mask replaced: spotfinder/integration lookup.mask=None)"
run integrate "$SEED/simulation.phil" "$SEED/sim_processing.phil" "$OUT/stage1" "$OUT/reintegrated" \
    --hopInputName pred --cmdlinePhil threshold=1e2 spotfinder.lookup.mask=None integration.lookup.mask=None
run report "$OUT/reintegrated" | tail -18

# The user's stage_two_test.phil names site files; point them at the demo's
# (structure factors: flat start, no MTZ; the cell and group of the synth crystal).
S2=(simulator.structure_factors.mtz_name=None default_F=100 space_group=P43212
    roi.hotpixel_mask=None refiner.reference_geom=None refiner.sigma_r=3 downsamp_spec.delta_en=1)
echo
echo "== stage 2, step 1: pre-import of every shoebox pixel (the user's stage_two_test.phil)"
run ens-hopper "$OUT/reintegrated/pred.parquet" "$SEED/stage_two_test.phil" --outdir "$OUT/preimport" \
    --maxSigma 3 --saveFreq 10 --preImport --refl predicted_refls --cmdlinePhil "${S2[@]}"
run sql "$OUT/preimport" "SELECT count(DISTINCT shot_id) AS shots, count(*) AS rois, sum(len(data)) AS pixels FROM pixels"

echo
echo "== stage 2, step 2: global structure-factor refinement from flat F (+ per-shot G)"
run ens-hopper "$OUT/preimport" "$SEED/stage_two_test.phil" --outdir "$OUT/global" --maxSigma 3 --saveFreq 10 \
    --refl ens.hopper.imported --maxEvals 150 --quiet \
    --cmdlinePhil "${S2[@]}" fix.Nabc=True fix.ucell=True fix.RotXYZ=True fix.Fhkl=False fix.G=False sigmas.G=1e-2
echo "-- report: convergence, CC of F against the true structure factors by resolution"
run report "$OUT/preimport" --reference "$OUT/synth/F.mtz" --reference-columns F --with-merge --bins 6 | tail -14

echo
echo "Done in $((SECONDS - T0)) s. Where everything is (query any folder with: diffbragg sql DIR 'SQL'):"
echo "  synthetic data, truth.parquet, hopper.phil:  $OUT/synth"
echo "  stage 1 tables, refined .expt/.refl, report: $OUT/stage1   (SELECT * FROM stage1_summary)"
echo "  predictions, DIALS files, report:            $OUT/reintegrated   (SELECT * FROM predict_summary)"
echo "  pre-imported pixels, stage-2 fhkl, report:   $OUT/preimport   (SELECT * FROM stage2_convergence)"
echo "  MTZs and checkpoints:                        $OUT/global"
echo "  imported CuNiR tables:                       $OUT/import"
