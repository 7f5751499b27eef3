"""Triton kernels, installed as `genai_fast.kernels` (never as a top-level `kernels` package).

Each module holds `@triton.jit` kernels and their launchers; importing a module imports triton, so
the package itself stays import-free and the dispatcher imports a module only when it runs it.
"""
