"""The plain MLP the baselines and offline agents share."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def mlp(
    in_dim: int, out_dim: int, hidden_sizes: Sequence[int], output: nn.Module | None = None, *,
    setting: str = "hidden_sizes",
) -> nn.Sequential:
    """Linear layers with ReLU between them; ``output`` (e.g. ``nn.Tanh()``) after the last one.

    Raises:
        ValueError: a size below 1; ``setting`` names the config key of ``hidden_sizes``.
    """
    if in_dim < 1 or out_dim < 1:
        raise ValueError(f"an MLP needs input and output sizes >= 1, got {in_dim} and {out_dim}")
    if any(width < 1 for width in hidden_sizes):
        raise ValueError(f"{setting} must be >= 1, got {list(hidden_sizes)}")
    layers: list[nn.Module] = []
    width = in_dim
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    if output is not None:
        layers.append(output)
    return nn.Sequential(*layers)
