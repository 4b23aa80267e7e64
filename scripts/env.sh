# Sourced by the scripts: where builds and the prebuilt DuckDB live (outside the clone).
CACHE="${DIFFBRAGG_CACHE:-$HOME/.cache/diffbragg-rs}"
export DUCKDB_LIB_DIR="${DUCKDB_LIB_DIR:-$CACHE/duckdb-1.5.6-r.1}"
export DUCKDB_INCLUDE_DIR="${DUCKDB_INCLUDE_DIR:-$DUCKDB_LIB_DIR}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
export LD_LIBRARY_PATH="$DUCKDB_LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
