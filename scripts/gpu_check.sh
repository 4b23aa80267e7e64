#!/usr/bin/env bash
# GPU device check, in one go, on a machine with an NVIDIA GPU (it cannot run
# without one). Every step must pass; the first failure stops the script with
# a line naming the step.
#   1. release build;
#   2. the kernel tests against the CPU (host-compiled CUDA maths, NVRTC, the
#      CUDA backend vs the CPU kernel, stage 1/2 through the Backend);
#   3. `bench kernel --device cuda`;
#   4. `bench stage1` and `bench stage2` on cuda, then on cpu;
#   5. one synthetic stage-1 dataset refined with --device cuda and --device cpu:
#      every shot refined by both, backend columns right, and every refined
#      parameter within 1 σ (its Fisher uncertainty) of the other run.
# Sizes: GPU_CHECK_SHOTS (default 4) shots for step 5 and bench stage1.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
SHOTS="${GPU_CHECK_SHOTS:-4}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
step() { echo; echo "=== gpu_check: $* ==="; }
fail() { echo "gpu_check: FAILED: $*" >&2; exit 1; }

step "0. GPU"
nvidia-smi -L || fail "nvidia-smi sees no GPU"

step "1. release build"
cargo build --release --bin diffbragg || fail "release build"
BIN="$CARGO_TARGET_DIR/release/diffbragg"

step "2. kernel tests vs the CPU kernel"
cargo test --release --test host_kernel --test gpu_nvrtc --test gpu_device \
  --test device_stage1 --test device_stage2 --test device_cli || fail "kernel/device tests"

step "3. bench kernel --device cuda"
"$BIN" bench kernel --device cuda --domains 1,25 --repeat 3 || fail "bench kernel --device cuda"

step "4. stage benches, cuda then cpu"
for dev in cuda cpu; do
  "$BIN" bench stage1 --device "$dev" --shots "$SHOTS" || fail "bench stage1 --device $dev"
  "$BIN" bench stage2 --device "$dev" --shots 40 --evals 5 || fail "bench stage2 --device $dev"
done

step "5. stage 1 on cuda vs cpu ($SHOTS synthetic shots)"
"$BIN" synth --out "$WORK/data" --shots "$SHOTS" >/dev/null || fail "synth"
for dev in cuda cpu; do
  "$BIN" hopper "$WORK/data/hopper.phil" --device "$dev" --no-progress \
    --cmdlinePhil "outdir=$WORK/$dev" 2>"$WORK/$dev.log" || { cat "$WORK/$dev.log"; fail "hopper --device $dev"; }
  tail -n 1 "$WORK/$dev.log"
done
dev() { echo "coalesce(abs(c.$1 - p.$1) / $2, 0)"; }
Q="WITH c AS (SELECT * FROM read_parquet('$WORK/cuda/shot_params/rank*.parquet')),
     p AS (SELECT * FROM read_parquet('$WORK/cpu/shot_params/rank*.parquet'))
SELECT count(*) AS n,
       sum(CASE WHEN c.backend = 'cuda' AND p.backend = 'cpu' THEN 1 ELSE 0 END) AS n_backend,
       max(greatest($(dev rotX 'p.sigma_rot[1]'), $(dev rotY 'p.sigma_rot[2]'), $(dev rotZ 'p.sigma_rot[3]'),
                    $(dev spot_scales p.sigma_spot_scales), $(dev a 'p.sigma_cell[1]'), $(dev c 'p.sigma_cell[3]'),
                    coalesce(abs(c.ncells[1] - p.ncells[1]) / p.sigma_ncells[1], 0))) AS max_dev_sigma,
       max(abs(c.f_final - p.f_final) / abs(p.f_final)) AS max_rel_f
FROM c JOIN p USING (shot_id)"
"$BIN" sql "$WORK/cpu" "$Q" || fail "comparison query"
"$BIN" sql "$WORK/cpu" "$Q" --format csv | tail -n 1 > "$WORK/cmp.csv" || fail "comparison query"
IFS=, read -r n nb dev_sigma rel_f < "$WORK/cmp.csv"
[ "$n" = "$SHOTS" ] || fail "$n of $SHOTS shots refined by both backends"
[ "$nb" = "$n" ] || fail "backend columns: $nb of $n rows say cuda/cpu"
awk -v d="$dev_sigma" 'BEGIN { exit !(d != "" && d <= 1.0) }' \
  || fail "cuda and cpu refinements differ by $dev_sigma σ (> 1)"
echo "gpu_check: stage 1 cuda vs cpu: $n shots, max |Δ|/σ = $dev_sigma, max relative Δf = $rel_f"

echo; echo "gpu_check: ALL PASSED"
