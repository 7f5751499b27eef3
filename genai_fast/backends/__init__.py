"""Backends: the dispatcher, capability declarations and the loaders of optional pieces."""

from genai_fast.backends.dispatch import (
    BACKEND_NAMES,
    BackendNotSupportedError,
    Capability,
    Implementation,
    Op,
    define_op,
)

__all__ = ["BACKEND_NAMES", "BackendNotSupportedError", "Capability", "Implementation", "Op", "define_op"]
