#!/usr/bin/env bash
# Idempotent machine set-up for diffbragg-rs on Debian.
# Installs system packages, the Python cross-check packages and DuckDB's
# official prebuilt library (compiling DuckDB from source takes ~1 h on 2 cores).
# Everything cached lives under $HOME/.cache/diffbragg-rs, never in the clone.
set -euo pipefail

CACHE="${DIFFBRAGG_CACHE:-$HOME/.cache/diffbragg-rs}"
DUCKDB_NPM_VERSION="1.5.6-r.1"   # carries DuckDB v1.5.6 == crate duckdb =1.10506.0
WITH_MPI="${WITH_MPI:-1}"

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_pkgs=()
for p in libhdf5-dev pkg-config; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ "$WITH_MPI" = 1 ]; then
  for p in libopenmpi-dev openmpi-bin libclang-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
  done
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${need_pkgs[*]}"
  sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# Python packages used only by cross-check tests.
py_missing=0
python3 - <<'PY' || py_missing=1
import importlib, sys
for m in ("gemmi", "msgpack", "h5py", "pyarrow", "scipy"):
    importlib.import_module(m)
PY
if [ "$py_missing" = 1 ]; then
  echo "setup: installing Python cross-check packages"
  python3 -m pip install -q --disable-pip-version-check gemmi msgpack h5py pyarrow numpy scipy
fi

# NVRTC (CUDA run-time compiler, ~24 MB wheel) for the test that compiles the
# CUDA kernels to PTX; a GPU host without a CUDA toolkit uses it too
# (src/gpu/ptx.rs looks here). Skip with WITH_NVRTC=0.
WITH_NVRTC="${WITH_NVRTC:-1}"
NVRTC_DIR="$CACHE/nvrtc-cu12"
if [ "$WITH_NVRTC" = 1 ] && [ ! -f "$NVRTC_DIR/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" ]; then
  echo "setup: installing NVRTC (nvidia-cuda-nvrtc-cu12 12.6) into $NVRTC_DIR"
  python3 -m pip install -q --disable-pip-version-check --no-deps --target "$NVRTC_DIR" \
    "nvidia-cuda-nvrtc-cu12==12.6.85" || echo "setup: NVRTC not installed (the PTX compile test will be skipped)"
fi

# Prebuilt DuckDB shared library.
LIBDIR="$CACHE/duckdb-$DUCKDB_NPM_VERSION"
if [ ! -f "$LIBDIR/libduckdb.so" ]; then
  echo "setup: fetching prebuilt libduckdb ($DUCKDB_NPM_VERSION)"
  mkdir -p "$LIBDIR"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "@duckdb/node-bindings-linux-x64@$DUCKDB_NPM_VERSION" >/dev/null \
     && tar xzf ./*.tgz && cp package/libduckdb.so "$LIBDIR/libduckdb.so.part" \
     && mv "$LIBDIR/libduckdb.so.part" "$LIBDIR/libduckdb.so")
  rm -rf "$tmp"
fi
echo "$LIBDIR"
