"""A diffusers U-Net's forward replayed from CUDA graphs: `patch(unet, cuda_graph=True)`.

On a GPU, an eager U-Net step is bound by the host launching its kernels one by one. On an H200, an SD1.5 fp16
step took 49.8 ms patched and eagerly, against 8.9 ms replayed from a graph. Pipelines call
`unet(sample, t, encoder_hidden_states=..., ..., return_dict=False)` once per step with the same shapes, so
this wrapper captures one graph per call signature and replays it.

A call signature is the shapes, dtypes and devices of the tensor arguments, plus the value of every other
argument. A Python-number timestep becomes a tensor input, so the changing t does not change the signature;
dicts of tensors (SDXL's added_cond_kwargs) and tuples of tensors (ControlNet residuals) are inputs too.

The call runs eagerly (the patched forward, unchanged) instead:
- while gradients are recorded;
- inside a CUDA autocast region: a graph holds the dtypes of the region it was captured in, so one captured outside
  would replay fp32 work inside (and autocast's cache of cast weights must not be captured);
- when sample is not on a CUDA device;
- when an argument is of a kind it does not know;
- once MAX_GRAPHS signatures hold graphs.

A refused capture warns once for that signature and runs eagerly from then on (GraphedCall's fallback).

A graph replays the kernels it captured, on the weight storage it captured. The graphs are dropped (and captured
again on the next calls) when a module, parameter or buffer has been registered anywhere since (peft wrapping the
U-Net's projections when a pipeline loads LoRA weights, a weight replaced), or when the U-Net's weights moved
(.to() another device or dtype). What such events do not show is not seen: a LoRA scale changed with
set_adapters, adapters disabled, weights swapped in place with `.data =` (fuse_lora). After those, unpatch() and
patch() again.
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Callable
from typing import Any

import torch

from genai_fast.diffusion.cuda_graph import GraphedCall

MAX_GRAPHS = 4  # each graph keeps its own activation memory

_registrations = 0  # modules, parameters and buffers registered in this process since the hooks were installed
_registration_hooks: list[Any] = []


def _count_registration(*_args: Any) -> None:
    global _registrations
    _registrations += 1


def _watch_registrations() -> None:
    """Count every module, parameter and buffer registration from now on (torch's global hooks, installed once)."""
    if not _registration_hooks:
        from torch.nn.modules import module

        _registration_hooks.extend([module.register_module_module_registration_hook(_count_registration),
                                    module.register_module_parameter_registration_hook(_count_registration),
                                    module.register_module_buffer_registration_hook(_count_registration)])


class _Unsupported(Exception):
    """An argument this wrapper does not replay (the call runs eagerly)."""


class GraphedForward:
    """Replaces a U-Net instance's forward; see the module docstring."""

    def __init__(self, unet: torch.nn.Module, forward: Callable[..., Any]) -> None:
        self.forward = forward  # the class's forward bound to unet (with patch()'s submodule forwards inside)
        self.signature = inspect.signature(forward)
        module = sys.modules[type(unet).__module__]
        self.output_type = getattr(module, "UNet2DConditionOutput", None) or getattr(module, "UNet2DOutput", None)
        self.graphs: dict[tuple, GraphedCall] = {}
        _watch_registrations()
        self.model_state: tuple | None = self._model_state()

    def _model_state(self) -> tuple:
        """What tells the graphs' model changed: the registrations counted so far, and where (and in what dtype) the
        U-Net's first weight lives (a .to() moves them all)."""
        first = next(self.forward.__self__.parameters(), None)
        return _registrations, None if first is None else (first.data_ptr(), first.dtype, first.device)

    def drop_stale_graphs(self) -> None:
        """Drop the graphs when the model changed since they were captured (see the module docstring)."""
        state = self._model_state()
        if state != self.model_state:
            self.graphs.clear()
            self.model_state = state

    def __deepcopy__(self, memo: dict) -> GraphedForward:
        """A copy bound to the copied U-Net (deepcopy rebinds the forward), with no graphs of its own yet."""
        clone = GraphedForward.__new__(GraphedForward)
        clone.forward = copy.deepcopy(self.forward, memo)
        clone.signature, clone.output_type, clone.graphs = self.signature, self.output_type, {}
        clone.model_state = None  # the copied U-Net is still being built: read on the first call
        return clone

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        return_dict = arguments.pop("return_dict", True)
        sample = arguments.get("sample")
        if (torch.is_grad_enabled() or not isinstance(sample, torch.Tensor) or not sample.is_cuda
                or torch.is_autocast_enabled("cuda")):
            return self.forward(*args, **kwargs)
        try:
            key, tensors, rebuild = flatten_call(arguments, sample.device)
        except _Unsupported:
            return self.forward(*args, **kwargs)
        self.drop_stale_graphs()
        call = self.graphs.get(key)
        if call is None:
            if len(self.graphs) >= MAX_GRAPHS:
                return self.forward(*args, **kwargs)
            call = self.graphs[key] = GraphedCall(self._replayable(rebuild), fallback=True)
        out = call(*tensors)
        # What the forward itself registered (lazily, while warming up for a capture) is in the graph it captured.
        self.model_state = self._model_state()
        if not return_dict:
            return (out,)
        return self.output_type(sample=out) if self.output_type is not None else (out,)

    def _replayable(self, rebuild: Callable[[tuple[torch.Tensor, ...]], dict[str, Any]]) -> Callable[..., Any]:
        def run(*tensors: torch.Tensor) -> torch.Tensor:
            return self.forward(**rebuild(tensors), return_dict=False)[0]

        return run


def flatten_call(arguments: dict[str, Any], device: torch.device
                 ) -> tuple[tuple, tuple[torch.Tensor, ...], Callable[[tuple[torch.Tensor, ...]], dict[str, Any]]]:
    """(signature key, tensor inputs, rebuild) for a forward call's arguments (return_dict taken out).

    rebuild(tensors) gives the arguments back with those tensors in place. Raises _Unsupported for an argument
    that is neither a tensor, None, a bool/int/float/str, nor a dict or tuple/list of those."""
    tensors: list[torch.Tensor] = []

    def walk(name: str, value: Any) -> Any:
        """The value's key; tensors are appended to `tensors` and keyed by their shape."""
        if isinstance(value, torch.Tensor):
            tensors.append(value)
            return ("tensor", tuple(value.shape), value.dtype, value.device)
        if _is_number_timestep(name, value):
            tensors.append(torch.tensor(value, device=device))  # t changes every step: an input, not a key
            return ("number-timestep", type(value).__name__)
        if value is None or isinstance(value, (bool, int, float, str)):
            return ("constant", value)
        if isinstance(value, dict):
            return ("dict", tuple((k, walk(name, v)) for k, v in value.items()))
        if isinstance(value, (tuple, list)):
            return (type(value).__name__, tuple(walk(name, v) for v in value))
        raise _Unsupported(f"{name}: {type(value).__name__}")

    key = tuple((name, walk(name, value)) for name, value in arguments.items())

    def rebuild(inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
        it = iter(inputs)  # in walk's order

        def fill(name: str, value: Any) -> Any:
            if isinstance(value, torch.Tensor) or _is_number_timestep(name, value):
                return next(it)
            if isinstance(value, dict):
                return {k: fill(name, v) for k, v in value.items()}
            if isinstance(value, (tuple, list)):
                return type(value)(fill(name, v) for v in value)
            return value

        return {name: fill(name, value) for name, value in arguments.items()}

    return key, tuple(tensors), rebuild


def _is_number_timestep(name: str, value: Any) -> bool:
    return name == "timestep" and isinstance(value, (int, float)) and not isinstance(value, bool)


def graphable_forward_reason(forward: Callable[..., Any]) -> str | None:
    """Why this forward cannot be wrapped (it takes *args or **kwargs, which a signature cannot pin), or None."""
    kinds = {p.kind for p in inspect.signature(forward).parameters.values()}
    if kinds & {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}:
        return "its forward takes *args or **kwargs"
    return None
