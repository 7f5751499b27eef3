"""genai_fast kernels inside diffusers U-Nets (UNet2DConditionModel, UNet2DModel), patched in place.

    from genai_fast.integrations.diffusers import patch, unpatch
    report = patch(unet)      # same module, same parameters and state_dict keys; faster forward
    print(report)             # what was fused, and what was left alone and why
    unpatch(unet)             # back to diffusers' own forward, processors and memory format

What patch() changes, each only where it can be shown to compute what diffusers computes:

- ResnetBlock2D with SiLU: norm1+SiLU and norm2+SiLU run as one `genai_fast.group_norm(...,
  activation="silu")` each; conv1 takes the time embedding as a per-sample bias ([N, C_out], added in
  the conv epilogue); conv2 adds the shortcut and multiplies by 1 / output_scale_factor in its
  epilogue (`genai_fast.conv2d`). "scale_shift" blocks fuse norm1+SiLU and conv2 only (the time scale
  sits between norm2 and its SiLU). Blocks with another activation are left unfused.
- Attention modules on diffusers' AttnProcessor2_0 / AttnProcessor: a processor that runs
  `genai_fast.scaled_dot_product_attention` (other processors, e.g. added-KV ones, are left alone),
  called without Attention.forward's per-call signature inspection. unet.set_default_attn_processor() still
  works (diffusers' AttnProcessor then), and processors set after patch() are used and kept by unpatch().
- Every other nn.GroupNorm: `genai_fast.group_norm`; the U-Net's closing conv_norm_out + SiLU fused.
- Every other plain nn.Conv2d (conv_in/out, shortcuts, down/upsampler convs, proj_in): `genai_fast.conv2d`
  (on a CPU a small 1x1 conv of NHWC activations is one GEMM there, a third of oneDNN's time, and every
  large 3x3 conv, fused or not, runs Winograd's F(2x2, 3x3)).
- Transformer2DModel outputs: no `.contiguous()` copy back to NCHW; the residual is added in the
  proj_out conv's epilogue.
- GEGLU feed-forward activations (diffusers' GEGLU): the projection, then `genai_fast.geglu` (value *
  GELU(gate) in one pass instead of GELU on a strided half and a product).
- BasicTransformerBlock with LayerNorms and plain attention: one direct forward (norms, projections,
  attention, feed-forward, residuals) instead of a dozen module calls and diffusers' per-call branching;
  calls with masks, extra keyword arguments or a text batch other than the sample's go to diffusers' own
  forward.
- 4-D parameters go channels_last, so every activation stays NHWC from conv_in to conv_out (the U-Net
  output is channels_last too: same values, other strides).

Module forwards are replaced per instance (an attribute shadowing the class method), never by new
modules, so parameters, optimizers holding them, and checkpoints are unaffected, and training through
the patched U-Net works (every op used has autograd).
"""

from __future__ import annotations

import math
import os
import types
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import genai_fast
from genai_fast.backends.dispatch import ENV_BACKEND, Implementation, Op
from genai_fast.ops.attention import ATTENTION
from genai_fast.ops.conv2d import CONV2D
from genai_fast.ops.eager import can_bypass_custom_op
from genai_fast.ops.group_norm import GROUP_NORM
from genai_fast.ops.linear import LINEAR, ONEDNN_MIN_MACS
from genai_fast.ops.plans import tensor_signature

STATE_ATTR = "_genai_fast_patch_state"


# ---------------------------------------------------------------- report


@dataclass
class PatchReport:
    """What patch() changed. Counts are of module instances; `left` maps a reason to how many modules
    were left as diffusers wrote them for that reason."""

    resnets_fused: int = 0
    resnets_partly_fused: int = 0
    attention_processors: int = 0
    group_norms: int = 0
    output_norm_silu_fused: bool = False
    transformer_outputs: int = 0
    geglus: int = 0
    transformer_blocks: int = 0
    graphed_forward: bool = False
    convs: int = 0
    channels_last_tensors: int = 0
    left: Counter = field(default_factory=Counter)

    @property
    def patched(self) -> int:
        return (self.resnets_fused + self.resnets_partly_fused + self.attention_processors + self.group_norms
                + self.transformer_outputs + self.geglus + self.transformer_blocks + self.convs
                + int(self.output_norm_silu_fused))

    def __str__(self) -> str:
        lines = [
            f"genai_fast diffusers patch: {self.patched} modules patched",
            f"  resnet blocks fully fused: {self.resnets_fused}, partly fused (scale_shift): "
            f"{self.resnets_partly_fused}",
            f"  attention processors: {self.attention_processors}",
            f"  other GroupNorms: {self.group_norms}; output GroupNorm+SiLU fused: {self.output_norm_silu_fused}",
            f"  Transformer2D outputs kept channels_last: {self.transformer_outputs}",
            f"  GEGLU feed-forward activations fused: {self.geglus}",
            f"  transformer blocks on a direct forward: {self.transformer_blocks}",
            f"  other convolutions on genai_fast.conv2d: {self.convs}",
            f"  tensors made channels_last: {self.channels_last_tensors}",
            f"  forward replayed from CUDA graphs: {self.graphed_forward}",
        ]
        lines += [f"  left unpatched ({count}): {reason}" for reason, count in sorted(self.left.items())]
        return "\n".join(lines)


@dataclass
class _PatchState:
    """What unpatch() needs: modules whose forward/method was shadowed, the original processors, the tensors
    that were not channels_last before (as their owning module and key: names change when a module is wrapped
    after patching, and a dtype move replaces buffer objects)."""

    report: PatchReport
    shadowed: list[tuple[nn.Module, str]] = field(default_factory=list)
    processors: list[tuple[nn.Module, Any]] = field(default_factory=list)
    made_channels_last: list[tuple[nn.Module, str]] = field(default_factory=list)
    fused_convs: set[int] = field(default_factory=set)  # ids of convs a patched forward calls through _conv
    graphed: Any = None  # the GraphedForward of patch(cuda_graph=True): its graphs, one per call signature


# ---------------------------------------------------------------- public API


def patch(unet: nn.Module, cuda_graph: bool = False) -> PatchReport:
    """Patch a diffusers UNet2DConditionModel or UNet2DModel in place; returns the PatchReport.

    cuda_graph=True also replays the U-Net's forward from CUDA graphs, one per call signature, for calls on
    CUDA tensors without gradient recording (genai_fast.integrations.diffusers_graph): what makes a pipeline's
    U-Net steps fast on a GPU, where the eager step is bound by launching its kernels (an SD1.5 fp16 step on an
    H200: 49.8 ms eagerly, 8.9 ms from a graph). Other calls run the patched forward eagerly.

    Patching twice returns the first report and changes nothing. Raises TypeError naming `unet` for
    anything else, or naming `cuda_graph` when it is not a bool.
    """
    _check_unet(unet)
    if not isinstance(cuda_graph, bool):
        raise TypeError(f"cuda_graph: expected a bool, got {type(cuda_graph).__name__}")
    state = getattr(unet, STATE_ATTR, None)
    if state is not None:
        return state.report
    state = _PatchState(PatchReport())
    _to_channels_last(unet, state)
    fused_norms = _patch_resnets(unet, state)
    fused_norms |= _patch_output_norm(unet, state)
    _patch_attention(unet, state)
    _patch_default_processor_switch(unet, state)
    _patch_transformer_outputs(unet, state)
    _patch_geglus(unet, state)
    _patch_transformer_blocks(unet, state)
    _patch_group_norms(unet, state, skip=fused_norms)
    _patch_convs(unet, state)
    if cuda_graph:
        _patch_graphed_forward(unet, state)
    object.__setattr__(unet, STATE_ATTR, state)
    return state.report


def unpatch(unet: nn.Module) -> nn.Module:
    """Undo patch(): class forwards, the original processor objects (where patch()'s still run: one the user
    set since is kept), and each tensor's memory format.

    Parameter objects are kept (their values too, so training done while patched is kept). Raises
    TypeError naming `unet` for a non-U-Net and ValueError when it is not patched.
    """
    _check_unet(unet)
    state = getattr(unet, STATE_ATTR, None)
    if state is None:
        raise ValueError("unet: not patched by genai_fast (nothing to undo)")
    for module, name in state.shadowed:
        del module.__dict__[name]
    _restore_processors(state)
    _restore_saved_processors(unet, state)
    for module, key in state.made_channels_last:
        tensor = module._parameters.get(key, module._buffers.get(key))
        if tensor is not None:  # else removed since patching
            tensor.data = tensor.data.contiguous()
    object.__delattr__(unet, STATE_ATTR)
    return unet


def is_patched(unet: nn.Module) -> bool:
    """True when patch() was applied to `unet` and not undone."""
    return getattr(unet, STATE_ATTR, None) is not None


def _check_unet(unet: Any) -> None:
    from diffusers import UNet2DConditionModel, UNet2DModel

    if not isinstance(unet, (UNet2DConditionModel, UNet2DModel)):
        raise TypeError(f"unet: expected a diffusers UNet2DConditionModel or UNet2DModel, got "
                        f"{type(unet).__name__}")


def _shadow(module: nn.Module, name: str, fn: Any, state: _PatchState) -> None:
    """Bind fn as module.<name> on this instance only (unpatch deletes it to reveal the class's)."""
    module.__dict__[name] = types.MethodType(fn, module)
    state.shadowed.append((module, name))


def _shadow_eligible(unet: nn.Module, cls: type, left_reason: Any, forward: Any, state: _PatchState) -> list[nn.Module]:
    """`forward` on every module of exactly type `cls` for which left_reason(module) is None; the others are
    counted in the report under their reason. Returns the modules patched."""
    patched = []
    for module in unet.modules():
        if type(module) is not cls:
            continue
        reason = left_reason(module)
        if reason is not None:
            state.report.left[reason] += 1
            continue
        _shadow(module, "forward", forward, state)
        patched.append(module)
    return patched


def _has_own_forward(module: nn.Module) -> bool:
    # Something (accelerate's offload hooks, another patch) already replaced this instance's forward.
    return "forward" in module.__dict__


def _patch_graphed_forward(unet: nn.Module, state: _PatchState) -> None:
    from genai_fast.integrations.diffusers_graph import GraphedForward, graphable_forward_reason

    if _has_own_forward(unet):
        state.report.left["CUDA graphs: the U-Net's forward is already replaced (offload hooks?)"] += 1
        return
    forward = type(unet).forward.__get__(unet)
    reason = graphable_forward_reason(forward)
    if reason is not None:
        state.report.left[f"CUDA graphs: {reason}"] += 1
        return
    state.graphed = GraphedForward(unet, forward)
    _shadow(unet, "forward", _graphed_forward, state)
    state.report.graphed_forward = True


def _graphed_forward(unet: nn.Module, *args: Any, **kwargs: Any) -> Any:
    # Found through the module, so a deep copy of the patched U-Net calls its own GraphedForward.
    return getattr(unet, STATE_ATTR).graphed(*args, **kwargs)


# ---------------------------------------------------------------- channels_last


def _to_channels_last(unet: nn.Module, state: _PatchState) -> None:
    """Every 4-D parameter and buffer channels_last, in place (the Parameter objects stay the same)."""
    for module in unet.modules():
        for key, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is None or tensor.dim() != 4 or tensor.is_contiguous(memory_format=torch.channels_last):
                continue  # a tied tensor is converted once, by its first module
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
            state.made_channels_last.append((module, key))
    state.report.channels_last_tensors = len(state.made_channels_last)


# ---------------------------------------------------------------- fused ops on modules


def _param(p: torch.Tensor | None) -> torch.Tensor | None:
    """p itself while autograd records; its plain-Tensor `.data` in inference. genai_fast ops skip their
    torch.library custom op (tens of microseconds per call) only for plain Tensors, and an
    nn.Parameter is a subclass; without grad the two are indistinguishable."""
    if p is None or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return p
    return p.data


# In inference a patched U-Net calls each conv, GroupNorm and attention with the same arguments every step.
# The first call of a signature goes through the public op, which checks every argument and picks the backend;
# later calls with that signature (shapes, strides, dtypes, devices of every tensor, and the settings) run the
# implementation it picked directly. On a CPU the checks cost about as much as a small U-Net's kernels:
# replaying made the tiny U-Net's 20-step loop 7% faster (interleaved timing, 2-core VM). Only plain-eager calls
# replay (no autograd recording, torch.compile or dispatch mode: can_bypass_custom_op), and the
# GENAI_FAST_BACKEND setting is part of the signature.
_PLANS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Implementation]] = weakref.WeakKeyDictionary()


def _signature(*tensors: torch.Tensor | None) -> tuple:
    return tuple(tensor_signature(t, strides=True) for t in tensors)


def _replayed(module: nn.Module, op: Op, key: tuple, replay: Any, first_call: Any) -> torch.Tensor:
    """replay(implementation) with the implementation `op` chose for this module and signature, or first_call()
    the first time (recording the implementation that ran)."""
    plans = _PLANS.get(module)
    if plans is None:
        plans = _PLANS[module] = {}
    key = (*key, os.environ.get(ENV_BACKEND))
    impl = plans.get(key)
    if impl is not None:
        return replay(impl)
    out = first_call()
    plans[key] = op.get(op.last_backend)
    return out


def _group_norm(norm: nn.GroupNorm, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
    weight, bias = _param(norm.weight), _param(norm.bias)

    def call() -> torch.Tensor:
        return genai_fast.group_norm(x, norm.num_groups, weight, bias, norm.eps, activation=activation)

    if x.numel() == 0 or not can_bypass_custom_op(x, weight, bias):
        return call()
    key = ("group_norm", activation, norm.num_groups, norm.eps, *_signature(x, weight, bias))
    args = (x, norm.num_groups, weight, bias, float(norm.eps), activation)
    return _replayed(norm, GROUP_NORM, key, lambda impl: impl.run(*args), call)


_MODULE_BIAS = object()


def _conv(conv: nn.Conv2d, x: torch.Tensor, bias: Any = _MODULE_BIAS, residual: torch.Tensor | None = None,
          output_scale: float = 1.0) -> torch.Tensor:
    """conv(x) + bias (the module's, or per-sample [N, C_out]) + residual, times output_scale."""
    bias = _param(conv.bias) if bias is _MODULE_BIAS else bias
    weight = _param(conv.weight)

    def call() -> torch.Tensor:
        return genai_fast.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups,
                                 residual=residual, output_scale=output_scale)

    if x.numel() == 0 or not can_bypass_custom_op(x, weight, bias, residual):
        return call()
    settings = (conv.stride, conv.padding, conv.dilation, conv.groups, output_scale)
    key = ("conv2d", *settings, *_signature(x, weight, bias, residual))
    args = (x, weight, bias, residual, list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups, None,
            float(output_scale))
    return _replayed(conv, CONV2D, key, lambda impl: impl.run(*args), call)


def _plain(module: Any, cls: type) -> bool:
    """module is exactly a `cls` running the class's forward: a fused forward may compute it from its weights. A
    wrapper (peft's LoRA layers) or an instance forward (accelerate's offload hooks, which load the weights in it)
    must be called instead."""
    return type(module) is cls and not _has_own_forward(module)


def _plain_conv(conv: Any) -> bool:
    """A conv that _conv computes exactly: nn.Conv2d itself, zero padding given as numbers."""
    return _plain(conv, nn.Conv2d) and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)


def _plain_group_norm(norm: Any) -> bool:
    return _plain(norm, nn.GroupNorm)


# ---------------------------------------------------------------- ResnetBlock2D


def _resnet_left_reason(block: nn.Module) -> str | None:
    """Why a ResnetBlock2D cannot take the fused forward (None: it can)."""
    if _has_own_forward(block):
        return "ResnetBlock2D: forward already replaced on the instance"
    return _resnet_parts_reason(block)


def _resnet_parts_reason(block: nn.Module) -> str | None:
    """Why the fused forward cannot compute this ResnetBlock2D's parts (None: it can). Checked again on every call:
    a part replaced since patching (peft wraps conv1 in a LoRA layer when a pipeline loads LoRA weights) must run
    as the module it now is, never as the weights it wraps."""
    if type(block.nonlinearity) is not nn.SiLU:
        return f"ResnetBlock2D: activation {type(block.nonlinearity).__name__} (only SiLU is fused)"
    if block.time_embedding_norm not in ("default", "scale_shift"):
        return f"ResnetBlock2D: time_embedding_norm {block.time_embedding_norm!r}"
    if not (_plain_group_norm(block.norm1) and _plain_group_norm(block.norm2)):
        return "ResnetBlock2D: norm1/norm2 are not plain nn.GroupNorm"
    if not (_plain_conv(block.conv1) and _plain_conv(block.conv2)):
        return "ResnetBlock2D: conv1/conv2 are not plain nn.Conv2d (LoRA or other wrapper?)"
    return None


def _fused_resnet_forward(block: nn.Module, input_tensor: torch.Tensor, temb: torch.Tensor | None,
                          *args: Any, **kwargs: Any) -> torch.Tensor:
    """ResnetBlock2D.forward with norm+SiLU and the conv epilogues fused (same arguments, same result)."""
    if (block.time_emb_proj is None and temb is not None) or _resnet_parts_reason(block) is not None:
        # diffusers then adds the raw embedding (nothing to fuse), or a part was replaced since patching (a LoRA
        # layer): run its own code.
        return type(block).forward(block, input_tensor, temb, *args, **kwargs)
    x = input_tensor
    h = _group_norm(block.norm1, x, "silu")
    if block.upsample is not None:
        if h.shape[0] >= 64:  # as diffusers: upsample_nearest_nhwc fails with large batches
            x, h = x.contiguous(), h.contiguous()
        x, h = block.upsample(x), block.upsample(h)
    elif block.downsample is not None:
        x, h = block.downsample(x), block.downsample(h)
    emb = None
    if block.time_emb_proj is not None and temb is not None:
        emb = block.time_emb_proj(temb if block.skip_time_act else F.silu(temb))  # [N, C_out or 2 C_out]
    if block.time_embedding_norm == "default":
        bias = block.conv1.bias
        if emb is not None:
            bias = emb if bias is None else emb + bias  # per-sample conv1 bias [N, C_out]
        h = _conv(block.conv1, h, bias)
        h = _group_norm(block.norm2, h, "silu")
    else:  # scale_shift: norm2's output is modulated before its SiLU
        if emb is None:
            raise ValueError(f" `temb` should not be None when `time_embedding_norm` is {block.time_embedding_norm}")
        h = _conv(block.conv1, h)
        scale, shift = emb[:, :, None, None].chunk(2, dim=1)
        h = F.silu(_group_norm(block.norm2, h) * (1 + scale) + shift)
    h = block.dropout(h)
    # diffusers makes x contiguous here in training (a DDP gradient-stride warning); channels_last is
    # the point of the patch, and the values are the same either way.
    shortcut = block.conv_shortcut(x) if block.conv_shortcut is not None else x
    # float(): Skip*Block2D set np.sqrt(2.0), a NumPy scalar; a Python float keeps conv2d's call plans one per value.
    return _conv(block.conv2, h, residual=shortcut, output_scale=1.0 / float(block.output_scale_factor))


def _patch_resnets(unet: nn.Module, state: _PatchState) -> set[int]:
    """Fused forwards on every eligible ResnetBlock2D; returns the ids of the GroupNorms they absorbed."""
    from diffusers.models.resnet import ResnetBlock2D

    absorbed: set[int] = set()
    for module in _shadow_eligible(unet, ResnetBlock2D, _resnet_left_reason, _fused_resnet_forward, state):
        absorbed |= {id(module.norm1), id(module.norm2)}
        state.fused_convs |= {id(module.conv1), id(module.conv2)}
        if module.time_embedding_norm == "default":
            state.report.resnets_fused += 1
        else:
            state.report.resnets_partly_fused += 1
    return absorbed


# ---------------------------------------------------------------- the U-Net's output GroupNorm + SiLU


def _group_norm_silu_forward(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    return _group_norm(norm, x, "silu")


def _identity_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x


def _patch_output_norm(unet: nn.Module, state: _PatchState) -> set[int]:
    """conv_norm_out computes GroupNorm+SiLU and conv_act passes through (both U-Nets call them in
    that order, and nowhere else)."""
    norm, act = getattr(unet, "conv_norm_out", None), getattr(unet, "conv_act", None)
    if norm is None:
        return set()
    if not _plain_group_norm(norm) or type(act) is not nn.SiLU or _has_own_forward(act):
        state.report.left["conv_norm_out + conv_act: not GroupNorm + SiLU"] += 1
        return set()
    _shadow(norm, "forward", _group_norm_silu_forward, state)
    _shadow(act, "forward", _identity_forward, state)
    state.report.output_norm_silu_fused = True
    return {id(norm)}


# ---------------------------------------------------------------- other GroupNorms


def _group_norm_forward(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    return _group_norm(norm, x)


def _patch_group_norms(unet: nn.Module, state: _PatchState, skip: set[int]) -> None:
    for module in unet.modules():
        if id(module) in skip or type(module) is not nn.GroupNorm:
            continue
        if _has_own_forward(module):
            state.report.left["GroupNorm: forward already replaced on the instance"] += 1
            continue
        _shadow(module, "forward", _group_norm_forward, state)
        state.report.group_norms += 1


# ---------------------------------------------------------------- other convolutions


def _conv_forward(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return _conv(conv, x)


def _patch_convs(unet: nn.Module, state: _PatchState) -> None:
    """Every plain nn.Conv2d whose forward still runs (the fused resnets' conv1/conv2 and the patched
    Transformer2D proj_out convs are called through _conv already, and are not counted again)."""
    for module in unet.modules():
        if id(module) in state.fused_convs or type(module) is not nn.Conv2d:
            continue
        if not _plain_conv(module):
            state.report.left["Conv2d: padding mode, string padding or its own forward"] += 1
            continue
        _shadow(module, "forward", _conv_forward, state)
        state.report.convs += 1


# ---------------------------------------------------------------- attention


class GenaiFastAttnProcessor:
    """diffusers' AttnProcessor2_0 computation with `genai_fast.scaled_dot_product_attention`.

    use_module_scale: take the softmax scale from attn.scale (as diffusers' AttnProcessor does);
    otherwise 1 / sqrt(head_dim) (as AttnProcessor2_0 does, whatever attn.scale says).
    """

    def __init__(self, use_module_scale: bool = False):
        self.use_module_scale = use_module_scale

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        """hidden_states [B, S, C] or [B, C, H, W]; encoder_hidden_states [B, L, D] or None (self
        attention); attention_mask as diffusers prepares it. Returns hidden_states' shape."""
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            # A view for channels_last input: [B, C, H*W] -> [B, H*W, C] with C innermost.
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, source_length = context.shape[0], context.shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, source_length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        scale = attn.scale if self.use_module_scale else None
        out = genai_fast.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scale)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))  # linear projection, dropout
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)  # channels_last view
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _attention_forward(attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                       attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
    """Attention.forward without its per-call inspect.signature of the processor (tens of microseconds)
    when there are no extra keyword arguments to filter; diffusers' own forward otherwise."""
    if kwargs:
        return type(attn).forward(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
    return attn.processor(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                          attention_mask=attention_mask)


def _patch_attention(unet: nn.Module, state: _PatchState) -> None:
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    for module in unet.modules():
        if not isinstance(module, Attention):
            continue
        processor = module.processor
        if type(processor) not in (AttnProcessor2_0, AttnProcessor):
            state.report.left[f"Attention with {type(processor).__name__}"] += 1
            continue
        state.processors.append((module, processor))
        module.set_processor(GenaiFastAttnProcessor(use_module_scale=type(processor) is AttnProcessor))
        if not _has_own_forward(module):
            _shadow(module, "forward", _attention_forward, state)
        state.report.attention_processors += 1


def _restore_processors(state: _PatchState) -> None:
    """diffusers' processors back on the Attention modules where patch()'s still run; a processor the user set
    since patching is theirs to keep."""
    for attn, processor in state.processors:
        if type(attn.processor) is GenaiFastAttnProcessor:
            attn.set_processor(processor)


def _restore_saved_processors(unet: nn.Module, state: _PatchState) -> None:
    """The same in the copy that fuse_qkv_projections() keeps for unfuse_qkv_projections() to put back
    (unet.original_attn_processors, keyed "<module name>.processor"), so that unfusing after unpatch() does
    not bring patch()'s processors back."""
    saved = getattr(unet, "original_attn_processors", None)
    if not isinstance(saved, dict) or not state.processors:
        return
    names = {id(module): name for name, module in unet.named_modules()}
    originals = {f"{names[id(attn)]}.processor": processor for attn, processor in state.processors
                 if id(attn) in names}
    for key, processor in saved.items():
        if type(processor) is GenaiFastAttnProcessor and key in originals:
            saved[key] = originals[key]


def _set_default_attn_processor(unet: nn.Module) -> None:
    """UNet2DConditionModel.set_default_attn_processor, which picks the default by the processors' classes and
    raises ValueError for a class it does not know, such as GenaiFastAttnProcessor: it decides with diffusers'
    processors back in place of patch()'s (what the unpatched U-Net would decide), and its choice then stands."""
    current = unet.attn_processors
    _restore_processors(getattr(unet, STATE_ATTR))
    try:
        type(unet).set_default_attn_processor(unet)
    except Exception:
        unet.set_attn_processor(current)
        raise


def _patch_default_processor_switch(unet: nn.Module, state: _PatchState) -> None:
    if (state.processors and hasattr(type(unet), "set_default_attn_processor")
            and "set_default_attn_processor" not in unet.__dict__):
        _shadow(unet, "set_default_attn_processor", _set_default_attn_processor, state)


# ---------------------------------------------------------------- Transformer2DModel output


def _transformer_output(model: nn.Module, hidden_states: torch.Tensor, residual: torch.Tensor, batch_size: int,
                        height: int, width: int, inner_dim: int) -> torch.Tensor:
    """Transformer2DModel._get_output_for_continuous_inputs without the copy back to NCHW: [B, H*W, C]
    viewed as channels_last [B, C, H, W]; with a conv proj_out, the residual joins its epilogue."""
    if not model.use_linear_projection and not _plain_conv(model.proj_out):  # replaced since patching (LoRA)
        return type(model)._get_output_for_continuous_inputs(model, hidden_states, residual, batch_size, height,
                                                             width, inner_dim)
    if not model.use_linear_projection:
        hidden_states = hidden_states.reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
        return _conv(model.proj_out, hidden_states, residual=residual)
    hidden_states = model.proj_out(hidden_states)
    hidden_states = hidden_states.reshape(batch_size, height, width, -1).permute(0, 3, 1, 2)
    return hidden_states + residual


def _patch_transformer_outputs(unet: nn.Module, state: _PatchState) -> None:
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    name = "_get_output_for_continuous_inputs"
    for module in unet.modules():
        if type(module) is not Transformer2DModel or not module.is_input_continuous:
            continue
        if name in module.__dict__ or (not module.use_linear_projection and not _plain_conv(module.proj_out)):
            state.report.left["Transformer2DModel: proj_out is not a plain conv"] += 1
            continue
        _shadow(module, name, _transformer_output, state)
        state.report.transformer_outputs += 1
        if not module.use_linear_projection:
            state.fused_convs.add(id(module.proj_out))


# ---------------------------------------------------------------- GEGLU feed-forward


def _geglu_forward(module: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """GEGLU.forward: the projection, then value * GELU(gate) in one genai_fast.geglu pass. Extra arguments
    (diffusers' deprecated `scale`) go to diffusers' own forward, which warns about them."""
    if args or kwargs:
        return type(module).forward(module, hidden_states, *args, **kwargs)
    return genai_fast.geglu(module.proj(hidden_states))


def _patch_geglus(unet: nn.Module, state: _PatchState) -> None:
    from diffusers.models.activations import GEGLU

    for module in unet.modules():
        if not isinstance(module, GEGLU):
            continue
        if type(module) is not GEGLU or _has_own_forward(module):
            state.report.left[f"{type(module).__name__}: a subclass or an instance with its own forward"] += 1
            continue
        _shadow(module, "forward", _geglu_forward, state)
        state.report.geglus += 1


# ---------------------------------------------------------------- BasicTransformerBlock


def _plain_attention(attn: nn.Module | None) -> bool:
    """An Attention that the direct block forward computes exactly: linear projections, no norms inside,
    no residual or rescale, on GenaiFastAttnProcessor (checked per call: a processor can be swapped later)."""
    from diffusers.models.attention_processor import Attention

    own_forward = getattr(attn, "__dict__", {}).get("forward")
    ours = own_forward is None or getattr(own_forward, "__func__", None) is _attention_forward
    return (type(attn) is Attention and ours and attn.spatial_norm is None
            and attn.group_norm is None and attn.norm_q is None and attn.norm_k is None and not attn.norm_cross
            and not attn.residual_connection and attn.rescale_output_factor == 1.0
            and all(_plain(m, nn.Linear) for m in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0])))


def _block_left_reason(block: nn.Module) -> str | None:
    """Why a BasicTransformerBlock cannot take the direct forward (None: it can)."""
    if _has_own_forward(block):
        return "BasicTransformerBlock: not a LayerNorm block (ada norms, positional embedding or own forward)"
    return _block_parts_reason(block)


def _block_parts_reason(block: nn.Module) -> str | None:
    """Why the direct forward cannot compute this BasicTransformerBlock's parts (None: it can); checked again on
    every call, as _resnet_parts_reason."""
    from diffusers.models.activations import GEGLU

    if block.norm_type != "layer_norm" or block.pos_embed is not None:
        return "BasicTransformerBlock: not a LayerNorm block (ada norms, positional embedding or own forward)"
    if block.only_cross_attention or block.attn2 is None:
        return "BasicTransformerBlock: without both self- and cross-attention"
    if not (_plain_attention(block.attn1) and _plain_attention(block.attn2)):
        return "BasicTransformerBlock: attention with norms, residual or wrapped projections"
    if not all(_plain(n, nn.LayerNorm) for n in (block.norm1, block.norm2, block.norm3)):
        return "BasicTransformerBlock: norms are not plain nn.LayerNorm"
    net = block.ff.net
    if type(net[0]) is not GEGLU or not _plain(net[0].proj, nn.Linear) or not _plain(net[2], nn.Linear):
        return "BasicTransformerBlock: feed-forward is not GEGLU then a linear layer"
    return None


def _block_dropout(block: nn.Module) -> bool:
    return any(type(m) is nn.Dropout and m.p > 0 for m in block.modules())


def _attention(attn: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scale: float | None) -> torch.Tensor:
    """genai_fast.scaled_dot_product_attention of [B, H, S, D] query, key and value without a mask, its backend
    choice replayed per signature in inference (as _conv's)."""

    def call() -> torch.Tensor:
        return genai_fast.scaled_dot_product_attention(query, key, value, scale=scale)

    if query.numel() == 0 or key.numel() == 0 or not can_bypass_custom_op(query, key, value):
        return call()
    sm_scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)

    def replay(impl: Implementation) -> torch.Tensor:
        if impl.backend == "torch":  # what the public op runs for its torch backend in eager mode
            return F.scaled_dot_product_attention(query, key, value, scale=sm_scale)
        return impl.run(query, key, value, None, False, sm_scale)[0]

    return _replayed(attn, ATTENTION, ("attention", sm_scale, *_signature(query, key, value)), replay, call)


def _attend(attn: nn.Module, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """What GenaiFastAttnProcessor computes for a plain Attention (_plain_attention) without a mask:
    x [B, S, C], context [B, L, D] (x itself for self-attention) -> [B, S, C_out]."""
    batch, length = x.shape[0], x.shape[1]
    query = _project(attn.to_q, x)
    key = _project(attn.to_k, context)
    value = _project(attn.to_v, context)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    scale = attn.scale if attn.processor.use_module_scale else None
    out = _attention(attn, query, key, value, scale)
    out = out.transpose(1, 2).reshape(batch, length, attn.heads * head_dim)
    return _project(attn.to_out[0], out)


def _project(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """layer(x). On a CPU in plain-eager inference, products of at least ONEDNN_MIN_MACS multiply-adds go through
    genai_fast.linear, which times oneDNN against BLAS per shape, and later calls replay its choice; smaller
    ones (a small U-Net's) call F.linear directly, since the op's bookkeeping would cost more than it saves."""
    weight, bias = layer.weight, layer.bias
    if (x.device.type != "cpu" or x.numel() * weight.shape[0] < ONEDNN_MIN_MACS
            or not can_bypass_custom_op(x, weight, bias)):
        return F.linear(x, weight, bias)
    weight, bias = _param(weight), _param(bias)

    def call() -> torch.Tensor:
        return genai_fast.linear(x, weight, bias)

    return _replayed(layer, LINEAR, ("linear", *_signature(x, weight, bias)), lambda impl: impl.run(x, weight, bias),
                     call)


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _direct_block_forward(block: nn.Module, hidden_states: torch.Tensor, attention_mask: Any = None,
                          encoder_hidden_states: torch.Tensor | None = None, encoder_attention_mask: Any = None,
                          timestep: Any = None, cross_attention_kwargs: Any = None, class_labels: Any = None,
                          added_cond_kwargs: Any = None) -> torch.Tensor:
    """BasicTransformerBlock.forward for a LayerNorm block (_block_left_reason): hidden_states [B, S, C],
    encoder_hidden_states [B, L, D]. The same ops in the same order as diffusers' forward (timestep,
    class_labels and added_cond_kwargs are unused there too for LayerNorm blocks); masks, extra attention
    keyword arguments, feed-forward chunking, active dropout in training, a swapped processor or a text batch
    other than the sample's go to diffusers' own forward."""
    if (attention_mask is not None or encoder_attention_mask is not None or cross_attention_kwargs
            or hidden_states.ndim != 3 or block._chunk_size is not None
            # A text batch that is not the sample's (CFG's doubled one): diffusers' attention raises on it, while
            # _attend's views would fold it into the token axis and return a result.
            or (encoder_hidden_states is not None and encoder_hidden_states.shape[0] != hidden_states.shape[0])
            or (block.training and _block_dropout(block))
            or type(block.attn1.processor) is not GenaiFastAttnProcessor
            or type(block.attn2.processor) is not GenaiFastAttnProcessor
            or _block_parts_reason(block) is not None):  # a projection wrapped since patching (LoRA)
        return type(block).forward(block, hidden_states, attention_mask, encoder_hidden_states,
                                   encoder_attention_mask, timestep, cross_attention_kwargs, class_labels,
                                   added_cond_kwargs)
    normed = _layer_norm(block.norm1, hidden_states)
    hidden_states = _attend(block.attn1, normed, normed) + hidden_states
    normed = _layer_norm(block.norm2, hidden_states)
    context = normed if encoder_hidden_states is None else encoder_hidden_states
    hidden_states = _attend(block.attn2, normed, context) + hidden_states
    normed = _layer_norm(block.norm3, hidden_states)
    geglu, out = block.ff.net[0], block.ff.net[2]
    gated = genai_fast.geglu(_project(geglu.proj, normed))
    return _project(out, gated) + hidden_states


def _patch_transformer_blocks(unet: nn.Module, state: _PatchState) -> None:
    from diffusers.models.attention import BasicTransformerBlock

    blocks = _shadow_eligible(unet, BasicTransformerBlock, _block_left_reason, _direct_block_forward, state)
    state.report.transformer_blocks += len(blocks)
