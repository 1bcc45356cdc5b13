"""Temporal U-Net denoiser (Janner et al. 2022) with a noise level per token.

Input x_t (B, H, D) and normalized noise levels (B, H); output (B, H, D). The network
convolves over the horizon axis: Conv1d residual blocks with GroupNorm and Mish, strided
downsampling, transposed-convolution upsampling and skip connections. Each token's noise
level is embedded on its own and average-pooled along with the features at every
resolution, so equal levels reproduce the classic full-sequence model exactly.

With ``return_condition`` the network also takes one scalar per sample (the normalized
return-to-go of Decision Diffuser): an MLP embeds it and the embedding is added to every
token's level embedding. A learned null embedding (initialised at zero) stands for "no
condition"; training drops the condition at random so one network gives both the
conditional and the unconditional prediction (classifier-free guidance,
:mod:`diffplan.diffusion.classifier_free`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal features of a scalar (Vaswani et al. 2017), applied elementwise: (...) -> (..., dim)."""

    def __init__(self, dim: int, max_period: float = 10_000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        self.dim = dim
        self.max_period = max_period

    def forward(self, value: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, device=value.device) / half)
        # Levels arrive in [0, 1]; scale to the [0, 1000] range the frequencies were designed for.
        args = value.float().unsqueeze(-1) * 1000.0 * freqs
        return torch.cat([args.sin(), args.cos()], dim=-1)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish on (B, C, H)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class ResidualTemporalBlock(nn.Module):
    """Two conv blocks with the per-token level embedding added in between, plus a residual."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, kernel_size: int) -> None:
        super().__init__()
        self.block0 = Conv1dBlock(in_channels, out_channels, kernel_size)
        self.block1 = Conv1dBlock(out_channels, out_channels, kernel_size)
        self.level_mlp = nn.Sequential(nn.Mish(), nn.Linear(embed_dim, out_channels))
        self.residual = (
            nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: Tensor, embedding: Tensor) -> Tensor:
        """x (B, C_in, H_l), embedding (B, H_l, E) or shared (B, 1, E) -> (B, C_out, H_l); planar
        features (B, C, 1, H_l) (:mod:`diffplan.models.planar`) likewise."""
        level = self.level_mlp(embedding).transpose(1, 2)  # (B, C_out, H_l), or (B, C_out, 1) if shared
        h = self.block0(x)
        h = h + (level.unsqueeze(2) if h.dim() == 4 else level)
        h = self.block1(h)
        return h + self.residual(x)


class DownStage(nn.Module):
    """Two residual blocks at one resolution, then strided downsampling (except the last stage)."""

    def __init__(self, c_in: int, c_out: int, embed_dim: int, kernel_size: int, *, downsample: bool) -> None:
        super().__init__()
        self.block1 = ResidualTemporalBlock(c_in, c_out, embed_dim, kernel_size)
        self.block2 = ResidualTemporalBlock(c_out, c_out, embed_dim, kernel_size)
        self.down: nn.Module | None = nn.Conv1d(c_out, c_out, 3, stride=2, padding=1) if downsample else None

    def forward(self, h: Tensor, embedding: Tensor) -> Tensor:
        return self.block2(self.block1(h, embedding), embedding)


class UpStage(nn.Module):
    """Concatenate the skip, two residual blocks, then transposed-convolution upsampling."""

    def __init__(self, c_in: int, c_out: int, embed_dim: int, kernel_size: int) -> None:
        super().__init__()
        self.block1 = ResidualTemporalBlock(c_out * 2, c_in, embed_dim, kernel_size)
        self.block2 = ResidualTemporalBlock(c_in, c_in, embed_dim, kernel_size)
        self.up = nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1)

    def forward(self, h: Tensor, skip: Tensor, embedding: Tensor) -> Tensor:
        h = torch.cat([h, skip], dim=1)  # (B, 2 C, H_l)
        h = self.block2(self.block1(h, embedding), embedding)
        return self.up(h)  # (B, C, 2 H_l)


def _pool_tokens(embedding: Tensor) -> Tensor:
    """Halve the horizon of a token embedding (B, H, E) -> (B, H/2, E), as the features are.

    A shared embedding (B, 1, E) (see :func:`shared_levels`) stays as it is: the average of
    equal tokens is that token, exactly.
    """
    if embedding.shape[1] == 1:
        return embedding
    return F.avg_pool1d(embedding.transpose(1, 2), 2).transpose(1, 2)


def shared_levels(levels: Tensor) -> Tensor:
    """Levels (B, 1) when all H tokens of every sample share one level, else ``levels`` (B, H) as given.

    Full-sequence diffusion (training with ``train.noise_mode=full_sequence``, sampling along a
    full-sequence scheduling matrix) gives every token of a sample the same level; the networks
    then embed one level per sample and broadcast it over the tokens instead of embedding H
    copies (Diffuser's per-sample time embedding). The result is the same: the embedding MLPs
    see the same inputs, and the pooled embedding of equal tokens is that token.

    Detected without a device synchronisation for an expanded tensor (stride 0 along H), by
    comparing values on the CPU, and not at all while ``torch.compile`` traces (the per-token
    path is then taken, which computes the same values).
    """
    if levels.dim() != 2 or levels.shape[1] == 1:
        return levels
    if levels.stride(1) == 0:
        return levels[:, :1]
    if torch.compiler.is_compiling() or levels.device.type != "cpu":
        return levels
    first = levels[:, :1]
    return first if bool((levels == first).all()) else levels


def to_features(x: Tensor, planar: bool = False) -> Tensor:
    """Tokens (B, H, D) -> convolution features (B, D, H); with ``planar``, (B, D, 1, H) in the
    channels-last memory format (the 2-D convolutions of :mod:`diffplan.models.planar`)."""
    h = x.transpose(1, 2)
    return h.unsqueeze(2).contiguous(memory_format=torch.channels_last) if planar else h


def from_features(h: Tensor) -> Tensor:
    """Convolution features (B, D, H), or planar (B, D, 1, H) -> tokens (B, H, D)."""
    return (h.squeeze(2) if h.dim() == 4 else h).transpose(1, 2)


def make_level_embedding(dim: int) -> nn.Sequential:
    """The per-token noise-level embedding: levels (B, H) in [0, 1] -> (B, H, dim).

    Sinusoidal features, then a two-layer MLP with Mish (Janner et al. 2022); shared by the
    denoiser and the value network (:mod:`diffplan.models.value`) so both read levels alike.
    """
    return nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, dim * 4), nn.Mish(), nn.Linear(dim * 4, dim))


class DownPath(nn.ModuleList):
    """The downsampling half of the temporal U-Net: one :class:`DownStage` per ``dim_mults`` entry.

    A ``ModuleList`` of the stages (parameter names stay ``downs.<i>.*`` in the U-Net) whose
    forward pass also average-pools the per-token embedding alongside the features. The
    denoiser continues with its middle blocks and upsampling path; the value network
    (:class:`diffplan.models.value.ValueNet`) flattens the output into an MLP head.

    Args:
        transition_dim: D, channels per token.
        dim: base channel width.
        dim_mults: channel multipliers per resolution; each but the last halves the horizon.
        embed_dim: width of the level embedding.
        kernel_size: temporal convolution width.
    """

    def __init__(
        self, transition_dim: int, dim: int, dim_mults: Sequence[int], embed_dim: int, kernel_size: int
    ) -> None:
        dims = [transition_dim, *[dim * m for m in dim_mults]]
        in_out = list(zip(dims[:-1], dims[1:], strict=True))
        super().__init__(
            DownStage(c_in, c_out, embed_dim, kernel_size, downsample=index < len(in_out) - 1)
            for index, (c_in, c_out) in enumerate(in_out)
        )
        #: Channels of the last stage's output.
        self.out_channels = dims[-1]
        #: The horizon is divided by this much on the way down.
        self.downsample_factor = 2 ** (len(dim_mults) - 1)

    def forward(  # type: ignore[override]
        self, h: Tensor, embedding: Tensor
    ) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        """Features h (B, D, H) and embedding (B, H, E) -> features (B, C, H / f), embedding
        (B, H / f, E), and per stage its output features and the embedding it saw (the skips)."""
        skips: list[Tensor] = []
        embeddings: list[Tensor] = []
        for stage in self:
            assert isinstance(stage, DownStage)
            h = stage(h, embedding)
            skips.append(h)
            embeddings.append(embedding)
            if stage.down is not None:
                h = stage.down(h)  # (B, C, H_l / 2)
                embedding = _pool_tokens(embedding)
        return h, embedding, skips, embeddings


class TemporalUnet(nn.Module):
    """Janner-style temporal U-Net with per-token noise-level conditioning.

    ``planar`` (set by :func:`diffplan.models.planar.planar_copy`, for planning) runs the
    convolutions as 2-D ones over (B, C, 1, H) channels-last features; inputs and outputs are
    the same.

    Args:
        transition_dim: D, channels per token.
        horizon: H used in training; any H divisible by ``2 ** (len(dim_mults) - 1)`` works.
        dim: base channel width.
        dim_mults: channel multipliers per resolution; each but the last halves the horizon.
        kernel_size: temporal convolution width.
        return_condition: add a scalar condition per sample (see the module docstring);
            off, the network and its state dict are exactly the unconditional ones.
    """

    def __init__(
        self,
        *,
        transition_dim: int,
        horizon: int,
        dim: int = 32,
        dim_mults: Sequence[int] = (1, 2, 4, 8),
        kernel_size: int = 5,
        return_condition: bool = False,
    ) -> None:
        super().__init__()
        if dim % 8:
            raise ValueError(f"model.unet.dim must be a multiple of 8 (GroupNorm with 8 groups), got {dim}")
        self.planar = False
        self.downsample_factor = 2 ** (len(dim_mults) - 1)
        check_horizon(horizon, self.downsample_factor)
        self.transition_dim = transition_dim
        dims = [transition_dim, *[dim * m for m in dim_mults]]
        in_out = list(zip(dims[:-1], dims[1:], strict=True))
        embed_dim = dim
        self.level_embedding = make_level_embedding(dim)
        self.return_condition = return_condition
        self.condition_embedding: nn.Module | None = None
        self.null_condition: nn.Parameter | None = None
        if return_condition:
            # Decision Diffuser's returns MLP; the null embedding replaces it where the condition is dropped.
            self.condition_embedding = nn.Sequential(
                nn.Linear(1, dim), nn.Mish(), nn.Linear(dim, dim * 4), nn.Mish(), nn.Linear(dim * 4, embed_dim)
            )
            self.null_condition = nn.Parameter(torch.zeros(embed_dim))
        self.downs = DownPath(transition_dim, dim, dim_mults, embed_dim, kernel_size)
        mid = dims[-1]
        self.mid1 = ResidualTemporalBlock(mid, mid, embed_dim, kernel_size)
        self.mid2 = ResidualTemporalBlock(mid, mid, embed_dim, kernel_size)
        self.ups = nn.ModuleList(
            UpStage(c_in, c_out, embed_dim, kernel_size) for c_in, c_out in reversed(in_out[1:])
        )
        self.final = nn.Sequential(Conv1dBlock(dims[1], dim, kernel_size), nn.Conv1d(dim, transition_dim, 1))

    def forward(
        self, x: Tensor, levels: Tensor, condition: Tensor | None = None, drop: Tensor | None = None
    ) -> Tensor:
        """x (B, H, D), levels (B, H) in [0, 1] -> (B, H, D).

        Args:
            condition: (B,) scalar condition per sample (return-conditioned networks only);
                None means unconditional (the null embedding) for every sample.
            drop: (B,) bool, True where the condition is replaced by the null embedding.
        """
        check_horizon(x.shape[1], self.downsample_factor)
        if levels.shape != x.shape[:2]:
            raise ValueError(f"levels must have shape {tuple(x.shape[:2])} (B, H), got {tuple(levels.shape)}")
        embedding = self.level_embedding(shared_levels(levels))  # (B, H, E), or (B, 1, E) when shared
        if self.condition_embedding is not None and self.null_condition is not None:
            embedding = embedding + self._condition(condition, drop, x.shape[0]).unsqueeze(1)
        elif condition is not None or drop is not None:
            raise ValueError("this network was built without model.return_condition; it takes no condition")
        h, embedding, skips, embeddings = self.downs(to_features(x, self.planar), embedding)  # from (B, D, H)
        h = self.mid2(self.mid1(h, embedding), embedding)
        for stage in self.ups:
            h = stage(h, skips.pop(), embeddings.pop())
        return from_features(self.final(h))  # (B, H, D)

    def _condition(self, condition: Tensor | None, drop: Tensor | None, batch: int) -> Tensor:
        """(B, E) condition embedding (see :func:`embed_condition`)."""
        assert self.condition_embedding is not None and self.null_condition is not None
        return embed_condition(self.condition_embedding, self.null_condition, condition, drop, batch)


def embed_condition(
    mlp: nn.Module, null_condition: Tensor, condition: Tensor | None, drop: Tensor | None, batch: int
) -> Tensor:
    """(B, E) embedding of a scalar condition (B,): ``mlp`` of it, or the learned ``null_condition``
    (E,) where ``drop`` is set or no condition is given (classifier-free guidance's null input).

    Raises:
        ValueError: ``condition`` is not of shape (B,).
    """
    null = null_condition.expand(batch, -1)
    if condition is None:
        return null
    if condition.shape != (batch,):
        raise ValueError(f"condition must have shape ({batch},), got {tuple(condition.shape)}")
    embedded = mlp(condition.to(null.dtype).unsqueeze(-1))  # (B, E)
    if drop is None:
        return embedded
    return torch.where(drop.to(torch.bool).unsqueeze(-1), null, embedded)


def check_horizon(horizon: int, factor: int) -> None:
    """Raise if the U-Net cannot process this horizon."""
    if horizon % factor:
        raise ValueError(
            f"horizon {horizon} must be divisible by {factor} (2 ** (len(model.unet.dim_mults) - 1)); "
            f"use a multiple of {factor} or fewer dim_mults"
        )
