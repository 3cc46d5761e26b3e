"""Benchmark library: timing, sweeps, machine records and reports (the CLI and benchmarks/ call it)."""
