//! Criterion benchmarks for the StreamSpace workspace; see `benches/`.
