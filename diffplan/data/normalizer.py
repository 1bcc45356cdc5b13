"""Invertible per-channel normalizers whose statistics live in module buffers.

The buffers travel in the state dict, so a checkpoint holds the normalizer and can be read
with ``torch.load(weights_only=True)``; :func:`normalizer_from_state_dict` rebuilds it.
Statistics are computed in float64 and stored as float32.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from diffplan.enums import NormalizerKind

#: Standard deviations below this are treated as constant dimensions (std set to 1).
MIN_STD = 1e-6


class Normalizer(nn.Module):
    """Base class: maps raw (..., D) tensors to normalized ones and back."""

    kind: str

    @property
    def dim(self) -> int:
        """D, the number of channels."""
        raise NotImplementedError

    def normalize(self, x: Tensor) -> Tensor:
        """Raw (..., D) -> normalized (..., D)."""
        raise NotImplementedError

    def unnormalize(self, x: Tensor) -> Tensor:
        """Normalized (..., D) -> raw (..., D)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`normalize`."""
        return self.normalize(x)

    def normalize_channels(self, values: Tensor, channels: list[int]) -> Tensor:
        """Raw (..., C) values of the channels ``channels`` -> normalized (..., C).

        Normalizers act channel by channel, so the other channels (zeros here) do not matter;
        e.g. a goal (B, 2) in the units of the position channels.
        """
        full = values.new_zeros(*values.shape[:-1], self.dim)
        full[..., channels] = values
        return self.normalize(full)[..., channels]


class GaussianNormalizer(Normalizer):
    """``(x - mean) / std`` per channel; constant channels (std < MIN_STD) use std 1.

    Args:
        mean: (D,) channel means.
        std: (D,) channel standard deviations, already free of zeros.
    """

    kind: str = NormalizerKind.gaussian.value  # a plain str: safe in weights_only checkpoints
    mean: Tensor
    std: Tensor

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).clone())
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).clone())

    @classmethod
    def fit(cls, data: np.ndarray) -> GaussianNormalizer:
        """Fit on raw (N, D) data."""
        data64 = np.asarray(data, dtype=np.float64)
        mean = data64.mean(axis=0)
        std = data64.std(axis=0)
        std = np.where(std < MIN_STD, 1.0, std)
        return cls(torch.from_numpy(mean), torch.from_numpy(std))

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def unnormalize(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean


class LimitsNormalizer(Normalizer):
    """Maps ``[min, max]`` to ``[-1, 1]`` per channel.

    Constant channels (max == min) are shifted only: ``x - min``, so the constant maps to 0
    and the round trip is exact.

    Args:
        mins: (D,) channel minima.
        maxs: (D,) channel maxima.
    """

    kind: str = NormalizerKind.limits.value
    mins: Tensor
    maxs: Tensor

    def __init__(self, mins: Tensor, maxs: Tensor) -> None:
        super().__init__()
        self.register_buffer("mins", torch.as_tensor(mins, dtype=torch.float32).clone())
        self.register_buffer("maxs", torch.as_tensor(maxs, dtype=torch.float32).clone())

    @classmethod
    def fit(cls, data: np.ndarray) -> LimitsNormalizer:
        """Fit on raw (N, D) data."""
        data64 = np.asarray(data, dtype=np.float64)
        return cls(torch.from_numpy(data64.min(axis=0)), torch.from_numpy(data64.max(axis=0)))

    @property
    def dim(self) -> int:
        return int(self.mins.shape[0])

    def _half_range(self) -> tuple[Tensor, Tensor]:
        """(D,) half-widths (1 for constant channels) and (D,) mask of constant channels."""
        constant = self.maxs <= self.mins
        half = torch.where(constant, torch.ones_like(self.mins), (self.maxs - self.mins) / 2)
        return half, constant

    def normalize(self, x: Tensor) -> Tensor:
        half, constant = self._half_range()
        shifted = x - self.mins
        return torch.where(constant, shifted, shifted / half - 1)

    def unnormalize(self, x: Tensor) -> Tensor:
        half, constant = self._half_range()
        return torch.where(constant, x, (x + 1) * half) + self.mins


_KINDS: dict[str, type[GaussianNormalizer] | type[LimitsNormalizer]] = {
    "gaussian": GaussianNormalizer,
    "limits": LimitsNormalizer,
}


def _check_kind(kind: NormalizerKind | str) -> type[GaussianNormalizer] | type[LimitsNormalizer]:
    if kind not in _KINDS:
        allowed = [k.value for k in NormalizerKind]
        raise ValueError(f"normalizer kind {kind!r} is not supported; use one of {allowed}.")
    return _KINDS[kind]


def fit_normalizer(kind: NormalizerKind | str, data: np.ndarray) -> Normalizer:
    """Fit a normalizer of ``kind`` on raw (N, D) data.

    Raises:
        ValueError: unknown ``kind``, or ``data`` not a non-empty finite (N, D) array.
    """
    cls = _check_kind(kind)
    array = np.asarray(data)
    if array.ndim != 2 or len(array) == 0:
        raise ValueError(f"fit_normalizer needs non-empty (N, D) data, got shape {array.shape}; "
                         "pass Episodes.transitions(layout).")
    if not np.isfinite(array).all():
        raise ValueError("fit_normalizer data holds NaN or inf; load it through diffplan.data loaders, "
                         "which reject such values.")
    return cls.fit(array)


def normalizer_from_state_dict(kind: NormalizerKind | str, state_dict: Mapping[str, Tensor]) -> Normalizer:
    """Rebuild a normalizer of ``kind`` from its ``state_dict()`` (e.g. from a checkpoint).

    Raises:
        ValueError: unknown ``kind``, or the state dict lacks the kind's buffers.
    """
    cls = _check_kind(kind)
    names = ("mean", "std") if cls is GaussianNormalizer else ("mins", "maxs")
    missing = [name for name in names if name not in state_dict]
    if missing:
        raise ValueError(f"{kind} normalizer state dict lacks {missing} (has {sorted(state_dict)}); "
                         "was it saved from a normalizer of another kind?")
    return cls(state_dict[names[0]], state_dict[names[1]])
