"""Benchmark evaluation: score model outputs against ScreenSpot (v1/v2/Pro) and other benchmarks."""
