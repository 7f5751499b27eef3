"""`genai_fast.info()`: every op x backend, whether it is available here, and why not."""

from __future__ import annotations

import os
from typing import Any

from genai_fast.backends import availability
from genai_fast.backends.dispatch import ENV_BACKEND, OPS, resolve_backend_name


def info() -> dict[str, Any]:
    """Versions of the optional pieces and, for each op, its backends in priority order.

    Returns {"versions": {...}, "forced_backend": str | None, "forced_backend_error": str | None,
    "ops": [{"op", "backend", "requires", "priority", "available", "reasons", "devices", "dtypes", "layouts",
    "min_compute_capability", "features"}]}; forced_backend_error says why the ops refuse GENAI_FAST_BACKEND.
    "available" means the backend's optional piece is present in this process; whether it runs a given
    input also depends on that input (device, dtype, ...), which the capability fields describe.
    """
    rows = []
    for op in OPS.values():
        for priority, impl in enumerate(op.implementations):
            reasons = impl.unavailable_reasons()
            rows.append({
                "op": op.name,
                "backend": impl.backend,
                "requires": impl.requires,
                "priority": priority,
                "available": not reasons,
                "reasons": reasons,
                **impl.capability.describe(),
            })
    forced, forced_error = _forced_backend()
    return {
        "versions": availability.versions(),
        "triton_interpret": availability.triton_interpreter_enabled(),
        "forced_backend": forced,
        "forced_backend_error": forced_error,
        "ops": rows,
    }


def _forced_backend() -> tuple[str | None, str | None]:
    """(GENAI_FAST_BACKEND as the ops read it, or None; why the ops will refuse it, or None)."""
    try:
        return resolve_backend_name(None), None
    except ValueError as exc:  # an unknown name: every op call raises this
        return os.environ.get(ENV_BACKEND, "").strip(), str(exc)
