"""Planning copies of the temporal convolution networks: bfloat16, channels-last 2-D convolutions.

On CPUs with bfloat16 matrix units (AVX512-BF16, AMX), oneDNN's fastest convolutions are 2-D ones
over channels-last activations: at the reference Hopper U-Net's layer shapes they run the planning
forwards 2.6x faster than the float32 1-D convolutions and 1.6x faster than the same 1-D
convolutions under bfloat16 autocast (``scripts/benchmark_kernels.py``, docs/PERFORMANCE.md).
:func:`planar_copy` builds such a copy of a :class:`~diffplan.models.unet.TemporalUnet` or
:class:`~diffplan.models.value.ValueNet`: every ``Conv1d`` (kernel k) becomes a ``Conv2d`` (kernel
1 x k) and every ``ConvTranspose1d`` a ``ConvTranspose2d`` with the same weights, the parameters
are cast to bfloat16 (buffers, such as the value network's target statistics, stay float32), and
the network's ``planar`` flag makes it carry (B, C, 1, H) channels-last features between its
layers. GroupNorm runs on the same layout (through float32 for groups of fewer than 16 channels,
where ATen's channels-last bfloat16 kernel is slow: :class:`PlanarGroupNorm`) and Mish as a
rational function with its own backward (:class:`PlanarMish`); the inputs and outputs are unchanged
(float32 (B, H, D) in, float32 out), and input gradients flow as before, so value guidance works
through the copy. At the reference Hopper shape a guided plan runs 1.4x faster than in float32,
1.9x compiled (``planner.compile``: inductor fuses the elementwise work); docs/PERFORMANCE.md.

:func:`planning_network` is what the planners call: the planar copy of a network when planning
runs at ``planner.precision=bfloat16`` on the CPU (on CUDA, bfloat16 autocast alone already uses
the tensor cores), cached on the network and rebuilt when its weights change. The copy is a
planning-time representation, never trained or saved.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffplan.enums import Precision

#: Where a network keeps its planar copy (with the parameter versions it was built from).
_CACHE = "_diffplan_planar"
_WARNED: set[str] = set()

log = logging.getLogger(__name__)


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


def _conv2d(conv: nn.Conv1d) -> nn.Conv2d:
    """The 1 x k ``Conv2d`` computing what ``conv`` computes, on (B, C, 1, L) features."""
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"planar copies support plain zero-padded convolutions, got {conv}")
    planar = nn.Conv2d(conv.in_channels, conv.out_channels, (1, conv.kernel_size[0]), stride=(1, conv.stride[0]),
                       padding=(0, conv.padding[0]), dilation=(1, conv.dilation[0]), bias=conv.bias is not None)
    _copy_weights(planar, conv)
    return planar


def _conv_transpose2d(conv: nn.ConvTranspose1d) -> nn.ConvTranspose2d:
    """The 1 x k ``ConvTranspose2d`` computing what ``conv`` computes, on (B, C, 1, L) features."""
    if conv.groups != 1 or conv.output_padding[0] or isinstance(conv.padding, str):
        raise ValueError(f"planar copies support plain transposed convolutions, got {conv}")
    planar = nn.ConvTranspose2d(conv.in_channels, conv.out_channels, (1, conv.kernel_size[0]),
                                stride=(1, conv.stride[0]), padding=(0, conv.padding[0]),
                                dilation=(1, conv.dilation[0]), bias=conv.bias is not None)
    _copy_weights(planar, conv)
    return planar


def _copy_weights(planar: nn.Conv2d | nn.ConvTranspose2d, conv: nn.Conv1d | nn.ConvTranspose1d) -> None:
    """Copy ``conv``'s weights (a unit axis inserted for the 1 x k kernel) and bias into ``planar``."""
    with torch.no_grad():
        planar.weight.copy_(conv.weight.unsqueeze(2))
        if conv.bias is not None and planar.bias is not None:
            planar.bias.copy_(conv.bias)


class PlanarGroupNorm(nn.GroupNorm):
    """GroupNorm on planar bfloat16 features that computes in float32 where ATen's channels-last
    bfloat16 kernel is slow: groups of fewer than :attr:`NARROW` channels (measured on the Xeon:
    (64, 32, 1, 32) 218 us in bfloat16 against 53 us through float32; from 16 channels per group
    the bfloat16 kernel is the faster). The same function either way."""

    #: Channels per group from which the bfloat16 channels-last kernel is used.
    NARROW = 16

    def forward(self, x: Tensor) -> Tensor:
        if self.num_channels // self.num_groups >= self.NARROW or x.dtype == torch.float32:
            return super().forward(x)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


class _RationalMish(torch.autograd.Function):
    """Mish in the input's dtype, with e = e^x, n = e (e + 2) and t = n / (n + 2): mish(x) = x t, and
    d mish / dx = t + x (1 - t^2) sigmoid(x) from the forward's t and sigmoid(x)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        e = torch.exp(x.clamp(max=20.0))
        n = e * (e + 2)
        t = n / (n + 2)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x, t, e / (e + 1))
        return x * t

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        x, t, sigmoid = ctx.saved_tensors
        return grad * (t + x * (1 - t * t) * sigmoid)


class PlanarMish(nn.Mish):
    """Mish, x tanh(softplus(x)), as x n / (n + 2) with n = e^x (e^x + 2) (inputs clamped at 20,
    beyond which both are x in bfloat16), and its backward from the same intermediates: a few
    vectorised passes where ATen's Mish and its backward are not vectorised for channels-last
    bfloat16 on these CPUs. Measured on (64, 32, 1, 32) bfloat16: forward 115 us against ATen's
    260 us, forward and backward 303 us against 586 us; the forward as accurate as ATen's, the
    derivative within 0.024 of the exact one (ATen's: 0.004; bfloat16's rounding of 1 - t^2)."""

    def forward(self, x: Tensor) -> Tensor:
        return _RationalMish.apply(x)


def _group_norm(norm: nn.GroupNorm) -> PlanarGroupNorm:
    planar = PlanarGroupNorm(norm.num_groups, norm.num_channels, norm.eps, norm.affine)
    planar.load_state_dict(norm.state_dict())
    return planar


def _replace_layers(module: nn.Module) -> None:
    """Swap every 1-D (transposed) convolution below ``module`` for its planar 2-D equivalent and
    every GroupNorm and Mish for :class:`PlanarGroupNorm` and :class:`PlanarMish`, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv1d):
            setattr(module, name, _conv2d(child))
        elif isinstance(child, nn.ConvTranspose1d):
            setattr(module, name, _conv_transpose2d(child))
        elif isinstance(child, nn.GroupNorm):
            setattr(module, name, _group_norm(child))
        elif isinstance(child, nn.Mish):
            setattr(module, name, PlanarMish())
        else:
            _replace_layers(child)


def supports_planar(network: nn.Module) -> bool:
    """True for the networks :func:`planar_copy` converts (those with a ``planar`` flag: the
    temporal U-Net and the value network)."""
    return isinstance(getattr(network, "planar", None), bool)


class PlanarNetwork(nn.Module):
    """A planar bfloat16 copy of a network (see the module docstring), called like the original.

    Float32 tensors go in and come out; inside, the calls run under bfloat16 autocast on the CPU
    (which casts the embedding MLPs' float32 inputs and keeps every convolution, GroupNorm and Mish
    in bfloat16). Attributes of the original network (``horizon``, ``goal_dims``, ...) are read
    through :attr:`module`.

    Args:
        network: the network to copy (:func:`supports_planar`); left unchanged.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        if not supports_planar(network):
            raise ValueError(f"{type(network).__name__} has no planar form; only the temporal U-Net and the value "
                             "network have one")
        # What the project caches on the network (compiled wrappers, an earlier planar copy) stays behind.
        cached = {key: network.__dict__.pop(key) for key in list(network.__dict__) if key.startswith("_diffplan_")}
        try:
            planar = copy.deepcopy(network)
        finally:
            network.__dict__.update(cached)
        _replace_layers(planar)
        for parameter in planar.parameters():
            channels_last = parameter.dim() == 4  # the 2-D convolutions' weights
            parameter.data = parameter.data.to(torch.bfloat16, memory_format=torch.channels_last if channels_last
                                               else torch.preserve_format)
            parameter.requires_grad_(False)
        setattr(planar, "planar", True)  # noqa: B010 - the flag of the networks that have a planar form
        self.module = planar.eval()

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            out = self.module(*args, **kwargs)
        return out.float()


def planar_copy(network: nn.Module) -> nn.Module:
    """``network``'s planar bfloat16 copy (:class:`PlanarNetwork`), or ``network`` itself when it has
    no planar form (the transformer denoiser) or is one already."""
    if isinstance(network, PlanarNetwork) or not supports_planar(network):
        return network
    return PlanarNetwork(network)


def cpu_has_bfloat16() -> bool:
    """True when oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def planning_network(network: nn.Module, precision: Precision | str, device: torch.device | str) -> nn.Module:
    """The network a planner calls: :func:`planar_copy` of ``network`` for bfloat16 planning on a
    CPU with bfloat16 units, else ``network`` itself (float32; CUDA, where autocast alone uses the
    tensor cores; a CPU without bfloat16 units, where the copy would be slower (one warning); or
    a network without a planar form, the transformer, which bfloat16 autocast slows on the CPU
    (one warning)).

    The copy is cached on ``network`` and rebuilt when any of its parameters or buffers has changed
    since (an optimizer or EMA step, ``load_state_dict``, the value network's target statistics):
    planners built repeatedly on one network share one copy. Writes through ``.data`` are not seen.
    """
    if Precision(precision) is not Precision.bfloat16 or torch.device(device).type != "cpu":
        return network
    if not supports_planar(network):
        _warn_once(f"planner.precision=bfloat16: {type(network).__name__} has no planar form and runs under "
                   "bfloat16 autocast, which is slower than float32 on the CPU for the transformer (measured 2x); "
                   "plan in float32")
        return network
    if not cpu_has_bfloat16():
        _warn_once("planner.precision=bfloat16: this CPU has no bfloat16 units (AVX512-BF16 or AMX); planning "
                   "runs under bfloat16 autocast, usually slower than float32 here")
        return network
    tensors = [*network.parameters(), *network.buffers()]
    versions = tuple((t.data_ptr(), t._version) for t in tensors)
    cached = network.__dict__.get(_CACHE)
    if cached is None or cached[0] != versions:
        cached = (versions, planar_copy(network))
        network.__dict__[_CACHE] = cached
    return cached[1]
