"""A model call replayed from a CUDA graph: one launch per sampling step instead of one per kernel.

A U-Net step launches on the order of a thousand kernels; at SD sizes on a fast GPU the host's launch time
is a large part of the step. `GraphedCall(fn)` captures fn on its first call (after two warm-up calls on a
side stream, which compile the Triton kernels and let genai_fast.conv2d time its paths) and replays the
graph on later calls with the same input shapes, copying the new inputs into the graph's own tensors first.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch


class GraphedCall:
    """fn(*tensors) -> tensor, captured as a CUDA graph on the first call and replayed afterwards.

    The first call fixes the inputs' shapes, dtypes and device; a call with other ones runs fn eagerly.
    Tensors fn reads besides its arguments (a U-Net's weights, a fixed context) are read where they are
    at replay time, so they must stay alive and keep their storage. Each replay returns a clone of the
    graph's output: samplers keep earlier outputs (DPM-Solver++ does), and the next replay overwrites the
    graph's own. No gradients are recorded through a replay.

    fallback=True (sample's cuda_graph="auto"): when the capture is refused (inputs not on a CUDA device, or
    fn does something a graph cannot hold, such as a host sync), warn once and run fn eagerly from then on.
    An error in fn itself still raises: the warm-up calls run eagerly before the capture.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], warmup: int = 2, fallback: bool = False) -> None:
        self.fn = fn
        self.warmup = warmup
        self.fallback = fallback
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[torch.Tensor] = []
        self.output: torch.Tensor | None = None
        self.signature: list[tuple] | None = None
        self.replays = 0
        self.failure: str | None = None  # why the capture was refused (fallback=True), else None

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if self.failure is not None:
            return self.fn(*args)
        signature = [(a.shape, a.dtype, a.device) for a in args]
        if self.graph is None:
            if not self._try_capture(args, signature):
                return self.fn(*args)
        elif signature != self.signature:
            return self.fn(*args)
        for static, new in zip(self.inputs, args, strict=True):
            static.copy_(new)
        self.graph.replay()
        self.replays += 1
        return self.output.clone()

    def _try_capture(self, args: tuple[torch.Tensor, ...], signature: list[tuple]) -> bool:
        """Capture; False (after a warning) when the capture was refused and fallback is set."""
        if not all(isinstance(a, torch.Tensor) and a.is_cuda for a in args):
            if not self.fallback:
                raise ValueError("GraphedCall: CUDA graphs need every input on a CUDA device")
            return self._give_up("an input is not a CUDA tensor")
        self._warm_up(args)
        try:
            self._capture(signature)
        except Exception as exc:  # the warm-up ran fn on these inputs: what fails now is the capture itself
            if not self.fallback:
                raise
            return self._give_up(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return True

    def _give_up(self, why: str) -> bool:
        self.failure, self.graph, self.inputs, self.output = why, None, [], None
        warnings.warn(f"GraphedCall: the CUDA graph capture was refused ({why}); running eagerly instead",
                      RuntimeWarning, stacklevel=4)  # the caller of GraphedCall.__call__
        return False

    def _warm_up(self, args: tuple[torch.Tensor, ...]) -> None:
        """Copies of the inputs (the graph's own from now on), run through fn on a side stream."""
        self.inputs = [a.clone() for a in args]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)

    def _capture(self, signature: list[tuple]) -> None:
        graph = torch.cuda.CUDAGraph()
        # torch.cuda.graph leaves its capture stream current when ending the capture fails; the outer context
        # puts the caller's stream back either way, so a refused capture leaves no trace for the eager calls.
        with torch.cuda.stream(torch.cuda.current_stream()), torch.cuda.graph(graph):
            self.output = self.fn(*self.inputs)
        self.graph, self.signature = graph, signature
