//! MTZ (placeholder)
