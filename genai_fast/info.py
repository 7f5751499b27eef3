"""`genai_fast.info()`: every op x backend, whether it is available here, and why not."""

from __future__ import annotations

import os
from typing import Any

from genai_fast.backends import availability
from genai_fast.backends.dispatch import ENV_BACKEND, OPS


def info() -> dict[str, Any]:
    """Versions of the optional pieces and, for each op, its backends in priority order.

    Returns {"versions": {...}, "forced_backend": str | None, "ops": [{"op", "backend", "requires", "priority",
    "available", "reasons", "devices", "dtypes", "layouts", "min_compute_capability", "features"}]}.
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
    return {
        "versions": availability.versions(),
        "triton_interpret": availability.triton_interpreter_enabled(),
        "forced_backend": os.environ.get(ENV_BACKEND) or None,
        "ops": rows,
    }
