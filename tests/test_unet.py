"""Temporal U-Net: shapes, argument errors, per-token level conditioning, gradients."""

from __future__ import annotations

import pytest
import torch

from diffplan.config import ModelConfig, UnetConfig
from diffplan.models.factory import build_denoiser
from diffplan.models.unet import SinusoidalEmbedding, TemporalUnet

D = 3


def _unet(horizon: int = 16, dim_mults: tuple[int, ...] = (1, 2, 4)) -> TemporalUnet:
    torch.manual_seed(0)
    return TemporalUnet(transition_dim=D, horizon=horizon, dim=8, dim_mults=dim_mults)


@pytest.mark.parametrize("horizon", [4, 8, 12, 32])
def test_output_shape_any_valid_horizon(horizon: int) -> None:
    model = _unet(horizon=16)  # any horizon divisible by 4 works, not only the training one
    out = model(torch.randn(2, horizon, D), torch.rand(2, horizon))
    assert out.shape == (2, horizon, D)
    assert torch.isfinite(out).all()


def test_horizon_not_divisible_raises_naming_dim_mults() -> None:
    with pytest.raises(ValueError, match=r"horizon 10 must be divisible by 4 \(2 \*\* \(len\(model.unet.dim_mults\)"):
        _unet(horizon=10)
    model = _unet(horizon=16)
    with pytest.raises(ValueError, match="horizon 6 must be divisible by 4"):
        model(torch.randn(1, 6, D), torch.rand(1, 6))


@pytest.mark.parametrize("dim", [4, 12])
def test_dim_not_multiple_of_8_raises(dim: int) -> None:
    with pytest.raises(ValueError, match=f"model.unet.dim must be a multiple of 8.*got {dim}"):
        TemporalUnet(transition_dim=D, horizon=8, dim=dim, dim_mults=(1, 2))


def test_odd_embedding_dim_raises() -> None:
    with pytest.raises(ValueError, match="embedding dim must be even, got 7"):
        SinusoidalEmbedding(7)


def test_sinusoidal_embedding_values() -> None:
    embedding = SinusoidalEmbedding(4)(torch.tensor([0.0, 0.001]))
    # freqs = [1, 1e-2]; args = value * 1000 * freqs.
    expected = torch.tensor([[0.0, 0.0, 1.0, 1.0],
                             [torch.sin(torch.tensor(1.0)), torch.sin(torch.tensor(0.01)),
                              torch.cos(torch.tensor(1.0)), torch.cos(torch.tensor(0.01))]])
    torch.testing.assert_close(embedding, expected)


def test_factory_builds_unet_from_config() -> None:
    config = ModelConfig(unet=UnetConfig(dim=8, dim_mults=[1, 2], kernel_size=3))
    model = build_denoiser(config, transition_dim=5, horizon=8)
    assert isinstance(model, TemporalUnet)
    assert model.downsample_factor == 2
    assert model(torch.randn(1, 8, 5), torch.rand(1, 8)).shape == (1, 8, 5)


def test_per_token_levels_condition_each_token() -> None:
    model = _unet().eval()
    x = torch.randn(2, 16, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        shared = model(x, torch.full((2, 16), 0.5))
        broadcast = model(x, torch.tensor(0.5).expand(2, 16))
        assert torch.equal(shared, broadcast)
        # Changing the level of one token of one sample changes the output of that sample only
        # (both calls take the per-token path: each has a sample whose tokens differ).
        levels = torch.full((2, 16), 0.5)
        levels[0, 5] = 0.9
        changed = model(x, levels)
        levels_elsewhere = torch.full((2, 16), 0.5)
        levels_elsewhere[0, 11] = 0.9
        elsewhere = model(x, levels_elsewhere)
    assert torch.equal(changed[1], elsewhere[1])
    # The per-token path and the shared-level path agree up to the rounding of the embedding
    # products (matrix products of different row counts may sum in another order).
    torch.testing.assert_close(changed[1], shared[1], rtol=0, atol=1e-6)
    assert not torch.allclose(changed[0], shared[0])
    # The change is felt most at the token itself (local convolutions).
    delta = (changed[0] - shared[0]).abs().sum(dim=-1)
    assert delta[5] > 0
    assert delta[5] >= delta[-1]


def test_levels_matter_at_all() -> None:
    model = _unet().eval()
    x = torch.randn(1, 16, D)
    with torch.no_grad():
        assert not torch.allclose(model(x, torch.zeros(1, 16)), model(x, torch.ones(1, 16)))


def test_gradients_reach_every_parameter() -> None:
    model = _unet()
    x = torch.randn(2, 16, D, requires_grad=True)
    out = model(x, torch.rand(2, 16))
    out.pow(2).mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_dim_mults_not_starting_at_one() -> None:
    net = TemporalUnet(transition_dim=6, horizon=16, dim=8, dim_mults=(2, 4))
    assert net(torch.randn(2, 16, 6), torch.rand(2, 16)).shape == (2, 16, 6)


@pytest.mark.parametrize("dims", [(16, (1, 2, 4), 64, 6, 32), (32, (1, 2, 4, 8), 32, 14, 8)])
def test_shared_levels_take_one_embedding_per_sample(dims: tuple[int, tuple[int, ...], int, int, int]) -> None:
    """Equal levels per sample are embedded once per sample (the fast path) and give what the
    per-token path gives, for the denoiser and the value network alike."""
    from diffplan.models import unet as unet_module
    from diffplan.models import value as value_module
    from diffplan.models.unet import shared_levels
    from diffplan.models.value import ValueNet

    dim, mults, horizon, transition_dim, batch = dims
    torch.manual_seed(0)
    model = TemporalUnet(transition_dim=transition_dim, horizon=horizon, dim=dim, dim_mults=mults).eval()
    value = ValueNet(transition_dim=transition_dim, horizon=horizon, dim=dim, dim_mults=mults).eval()
    x = torch.randn(batch, horizon, transition_dim)
    levels = torch.rand(batch, 1).expand(batch, horizon)
    assert shared_levels(levels).shape == (batch, 1)
    assert shared_levels(levels.contiguous()).shape == (batch, 1)
    mixed = levels.clone()
    mixed[0, -1] = 0.0
    assert shared_levels(mixed) is mixed
    with torch.no_grad():
        fast, fast_value = model(x, levels), value(x, levels)
        original = unet_module.shared_levels
        try:
            unet_module.shared_levels = value_module.shared_levels = lambda t: t  # force the per-token path
            slow, slow_value = model(x, levels), value(x, levels)
        finally:
            unet_module.shared_levels = value_module.shared_levels = original
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6)
    torch.testing.assert_close(fast_value, slow_value, rtol=1e-6, atol=1e-6)


def test_levels_of_the_wrong_shape_are_refused() -> None:
    model = _unet()
    with pytest.raises(ValueError, match=r"levels must have shape \(2, 16\)"):
        model(torch.randn(2, 16, D), torch.rand(2, 8))
