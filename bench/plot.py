"""`--plot`: speedup over the reference for each op, shape and backend, as a PNG bar chart."""

from __future__ import annotations

from collections import Counter
from typing import Any

from genai_fast.io import atomic_write


def plot_speedups(result: dict[str, Any], path: str) -> None:
    """Horizontal bars of speedup_vs_reference (log scale; 1x marked), one bar per row."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ValueError("--plot: needs matplotlib (pip install matplotlib)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    if not rows:
        raise ValueError("--plot: there are no benchmark rows to plot")
    labels = _labels(rows)
    speedups = [r["speedup_vs_reference"] for r in rows]
    fig, ax = plt.subplots(figsize=(12, 0.45 * len(rows) + 1.6))
    colors = ["tab:green" if s >= 1 else "tab:red" for s in speedups]
    ax.barh(range(len(rows)), speedups, color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    for i, s in enumerate(speedups):
        ax.text(s, i, f" {s:.2f}x", va="center", fontsize=8)
    env = result["env"]
    device = env["gpu"] or env["cpu"]
    ax.set_title(f"genai_fast speedup vs reference ({result['preset']}, {device}, {env['threads']} threads)",
                 fontsize=10)
    ax.set_xlabel("speedup (reference time / genai_fast time), log scale")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def _labels(rows: list[dict[str, Any]]) -> list[str]:
    """op shape dtype [backend], plus "vs <reference>" where one measurement is compared with several."""
    def key(r: dict[str, Any]) -> tuple[str, ...]:
        return r["op"], r["shape"], r["dtype"], r["backend"]

    counts = Counter(key(r) for r in rows)
    return [f"{r['op']} {r['shape']} {r['dtype']} [{r['backend']}]"
            + (f" vs {r['reference']}" if counts[key(r)] > 1 else "") for r in rows]
