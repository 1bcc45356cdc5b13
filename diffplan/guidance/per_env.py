"""Guidance strengths that differ per environment of one batched evaluation (guidance sweeps).

``diffplan-sweep sweep.batched=true`` evaluates several cells of a sweep (guidance kinds and
strengths) as one batch of environments. :class:`EnvStrengths` holds, for each of the N
environments, what the cell of that environment changes:

- ``scale`` (N,): the :class:`~diffplan.diffusion.guide.Guidance` step size (``guidance.scale``
  of goal and value guidance, ``guidance.policy_scale`` of policy guidance; 0 for unguided
  cells, whose samples then follow the unguided updates exactly);
- ``weights`` (N, T): the weights of the T terms of the guidance's
  :class:`~diffplan.guidance.composite.CompositeGuide` (value and policy guidance mixed in
  one batch: a value cell weighs (1, 0), a policy cell (0, 1), a value_policy cell
  (``scale``, ``policy_scale``) under a step size of 1, as ``build_guidance`` builds it);
- ``return_weight`` (N,): the classifier-free guidance weight (``planner.return_guidance.weight``) of
  return-conditioned models.

A policy hands the planner the rows of the environments it plans for (:meth:`select`), and
a planner that samples K candidates per environment repeats them the way it repeats the
environments (:meth:`repeat_interleave`, candidates of an environment contiguous), then
:meth:`apply` turns them into the Guidance of that sampler call.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffplan.diffusion.guide import Guidance, Guide
from diffplan.guidance.composite import CompositeGuide


def _as_float_tensor(value: Any, name: str) -> Tensor:
    tensor = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
    if not torch.isfinite(tensor).all():
        raise ValueError(f"EnvStrengths.{name} must be finite, got {tensor.tolist()}")
    return tensor


@dataclass(frozen=True)
class EnvStrengths:
    """Per-environment guidance strengths (see the module docstring); every field is optional.

    Attributes:
        scale: (N,) Guidance step size per environment, or None (keep ``Guidance.scale``).
        weights: (N, T) CompositeGuide term weights per environment, or None.
        return_weight: (N,) classifier-free guidance weight per environment, or None.
    """

    scale: Tensor | None = None
    weights: Tensor | None = None
    return_weight: Tensor | None = None

    def __post_init__(self) -> None:
        sizes = []
        for name in ("scale", "weights", "return_weight"):
            value = getattr(self, name)
            if value is None:
                continue
            tensor = _as_float_tensor(value, name)
            expected = 2 if name == "weights" else 1
            if tensor.dim() != expected:
                shape = "(N, T)" if name == "weights" else "(N,)"
                raise ValueError(f"EnvStrengths.{name} must have shape {shape}, got {tuple(tensor.shape)}")
            object.__setattr__(self, name, tensor)
            sizes.append(tensor.shape[0])
        if not sizes:
            raise ValueError("EnvStrengths needs at least one of scale, weights, return_weight")
        if len(set(sizes)) != 1:
            raise ValueError(f"EnvStrengths fields cover different numbers of environments: {sizes}")

    def __len__(self) -> int:
        for value in (self.scale, self.weights, self.return_weight):
            if value is not None:
                return int(value.shape[0])
        raise AssertionError("unreachable: __post_init__ requires a field")

    def _map(self, fn: Any) -> EnvStrengths:
        return EnvStrengths(
            scale=None if self.scale is None else fn(self.scale),
            weights=None if self.weights is None else fn(self.weights),
            return_weight=None if self.return_weight is None else fn(self.return_weight),
        )

    def select(self, index: np.ndarray | Tensor | list[int]) -> EnvStrengths:
        """The rows of the environments ``index`` (in that order), e.g. those a policy replans."""
        rows = torch.as_tensor(np.asarray(index), dtype=torch.long)
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= len(self)):
            raise IndexError(f"environment index {rows.tolist()} outside the {len(self)} environments")
        return self._map(lambda t: t[rows])

    def repeat_interleave(self, repeats: int) -> EnvStrengths:
        """Each environment's row repeated ``repeats`` times (K candidates per environment,
        contiguous, as :meth:`diffplan.diffusion.sampler.Constraints.repeat_interleave`)."""
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def apply(self, guidance: Guidance | None) -> Guidance | None:
        """``guidance`` with the per-sample scale and CompositeGuide weights of these rows (one
        row per sample of the sampler call); None stays None (unguided).

        Raises:
            ValueError: scales or weights for an unguided planner, or weights for a guidance
                without a CompositeGuide.
        """
        if guidance is None:
            if self.scale is not None or self.weights is not None:
                raise ValueError(
                    "per-environment guidance scales need a guided planner; the planner was built with "
                    "guidance.kind=none"
                )
            return None
        guide = guidance.guide
        if self.weights is not None:
            guide = _with_sample_weights(guide, [self.weights[:, t] for t in range(self.weights.shape[1])])
        return replace(guidance, guide=guide, scale=guidance.scale if self.scale is None else self.scale)


def for_candidates(
    guidance: Guidance | None, strengths: EnvStrengths | None, n_envs: int, n_candidates: int
) -> tuple[Guidance | None, Tensor | None]:
    """The guidance and classifier-free weight (or None) of a planner call for ``n_envs``
    environments with ``n_candidates`` contiguous candidates each: ``strengths`` (None: the
    guidance as it is) repeated over each environment's candidates.

    Raises:
        ValueError: ``strengths`` does not cover exactly ``n_envs`` environments.
    """
    if strengths is None:
        return guidance, None
    if len(strengths) != n_envs:
        raise ValueError(f"strengths cover {len(strengths)} environments but {n_envs} are planned for")
    per_sample = strengths.repeat_interleave(n_candidates)
    return per_sample.apply(guidance), per_sample.return_weight


def _with_sample_weights(guide: Guide, weights: list[Tensor]) -> Guide:
    """``guide`` with its CompositeGuide's weights replaced by per-sample ones; wrappers that hold
    an inner ``guide`` (Monte Carlo, through-the-denoiser) are shallow-copied around it, so their
    state (e.g. a Monte Carlo generator) stays shared with the original."""
    if isinstance(guide, CompositeGuide):
        return guide.with_weights(weights)
    inner = getattr(guide, "guide", None)
    if inner is None:
        raise ValueError(
            "per-environment term weights need a CompositeGuide (guidance.kind=value_policy); "
            f"the guidance's guide is a {type(guide).__name__}"
        )
    outer = copy.copy(guide)
    outer.guide = _with_sample_weights(inner, weights)  # type: ignore[attr-defined]
    return outer
