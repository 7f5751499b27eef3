"""Benchmarks (installed as genai_fast.bench): one registry of entries, one runner, `genai-fast bench`.

Each entry times genai_fast's backends side by side with the reference callables it names, on the
same inputs in the same run, and reports ratios (and TFLOP/s, GB/s, % of measured peak).
"""
