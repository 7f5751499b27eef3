"""A model call replayed from a CUDA graph: one launch per sampling step instead of one per kernel.

A U-Net step launches on the order of a thousand kernels; at SD sizes on a fast GPU the host's launch time
is a large part of the step. `GraphedCall(fn)` captures fn on its first call (after two warm-up calls on a
side stream, which compile the Triton kernels and let genai_fast.conv2d time its paths) and replays the
graph on later calls with the same input shapes, copying the new inputs into the graph's own tensors first.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class GraphedCall:
    """fn(*tensors) -> tensor, captured as a CUDA graph on the first call and replayed afterwards.

    The first call fixes the inputs' shapes, dtypes and device; a call with other ones runs fn eagerly.
    Tensors fn reads besides its arguments (a U-Net's weights, a fixed context) are read where they are
    at replay time, so they must stay alive and keep their storage. Each replay returns a clone of the
    graph's output: samplers keep earlier outputs (DPM-Solver++ does), and the next replay overwrites the
    graph's own. No gradients are recorded through a replay.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], warmup: int = 2) -> None:
        self.fn = fn
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[torch.Tensor] = []
        self.output: torch.Tensor | None = None
        self.signature: list[tuple] | None = None
        self.replays = 0

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        signature = [(a.shape, a.dtype, a.device) for a in args]
        if self.graph is None:
            self._capture(args, signature)
        elif signature != self.signature:
            return self.fn(*args)
        for static, new in zip(self.inputs, args, strict=True):
            static.copy_(new)
        self.graph.replay()
        self.replays += 1
        return self.output.clone()

    def _capture(self, args: tuple[torch.Tensor, ...], signature: list[tuple]) -> None:
        if not all(a.is_cuda for a in args):
            raise ValueError("GraphedCall: CUDA graphs need every input on a CUDA device")
        self.inputs = [a.clone() for a in args]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.output = self.fn(*self.inputs)
        self.graph, self.signature = graph, signature
