"""Planar bfloat16 copies of the U-Net and the value network (diffplan.models.planar): the same
functions as the float32 networks within bfloat16's precision, input gradients included; the
originals untouched; cached per network and rebuilt when the weights change; used by the
planners at planner.precision=bfloat16 on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from diffplan.config import Config, DiffusionConfig, GuidanceConfig, PlannerConfig
from diffplan.data import LimitsNormalizer, TrajectoryLayout
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.enums import Precision
from diffplan.guidance import ValueGuide
from diffplan.models.planar import PlanarNetwork, planar_copy, planning_network
from diffplan.models.transformer import TrajectoryTransformer
from diffplan.models.unet import TemporalUnet
from diffplan.models.value import ValueNet
from diffplan.planning.value_planner import ValuePlanner
from diffplan.training.checkpoint import TrainedModel

D, H, B = 6, 16, 8
#: Relative error (norm of the difference over the norm) of a bfloat16 network against float32:
#: 8 mantissa bits give about 0.4 % per operation; measured 1-3 % through these networks.
REL_TOL = 0.06


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm() / b.norm()).detach())


def _unet(**kwargs: object) -> TemporalUnet:
    torch.manual_seed(0)
    return TemporalUnet(transition_dim=D, horizon=H, dim=16, dim_mults=(1, 2, 4), **kwargs).eval()  # type: ignore[arg-type]


def _value(goal_dim: int = 0) -> ValueNet:
    torch.manual_seed(1)
    net = ValueNet(transition_dim=D, horizon=H, dim=16, dim_mults=(1, 2, 4), goal_dim=goal_dim).eval()
    net.set_target_stats(mean=40.0, std=12.0)
    return net


@pytest.mark.parametrize("levels", ["shared", "per_token"])
def test_planar_unet_computes_the_float32_function(levels: str) -> None:
    net = _unet()
    x = torch.randn(B, H, D)
    lv = torch.full((B, H), 0.4) if levels == "shared" else torch.rand(B, H)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    planar = planar_copy(net)
    with torch.no_grad():
        exact, low = net(x, lv), planar(x, lv)
    assert isinstance(planar, PlanarNetwork) and low.dtype == torch.float32 and low.shape == exact.shape
    assert 0 < _relative(low, exact) < REL_TOL
    inner = planar.module
    assert not any(isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)) for m in inner.modules())
    assert all(p.dtype == torch.bfloat16 for p in inner.parameters())
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in inner.modules() if isinstance(m, nn.Conv2d))
    # The original network is left as it was: float32, 1-D, the same weights.
    assert net.planar is False and all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_planar_return_conditioned_unet_keeps_its_condition() -> None:
    net = _unet(return_condition=True)
    with torch.no_grad():
        net.null_condition.fill_(0.5)  # type: ignore[union-attr]
    x, lv = torch.randn(B, H, D), torch.full((B, H), 0.3)
    condition, drop = torch.linspace(0, 1, B), torch.tensor([True, False] * (B // 2))
    planar = planar_copy(net)
    with torch.no_grad():
        assert _relative(planar(x, lv, condition, drop), net(x, lv, condition, drop)) < REL_TOL
        assert _relative(planar(x, lv), net(x, lv)) < REL_TOL


@pytest.mark.parametrize("goal_dim", [0, 2])
def test_planar_value_net_gives_values_and_input_gradients(goal_dim: int) -> None:
    net = _value(goal_dim)
    planar = planar_copy(net)
    x, lv = torch.randn(B, H, D), torch.full((B, H), 0.2)
    goals = torch.randn(B, goal_dim) if goal_dim else None

    def value_and_grad(network: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        xx = x.clone().requires_grad_(True)
        value = network(xx, lv) if goals is None else network(xx, lv, goals)
        (grad,) = torch.autograd.grad(value.sum(), xx)
        return value.detach(), grad

    exact, exact_grad = value_and_grad(net)
    low, low_grad = value_and_grad(planar)
    # Values on the raw scale (the target statistics stay float32 buffers), within bfloat16 of float32.
    assert low.dtype == torch.float32 and _relative(low - 40.0, exact - 40.0) < REL_TOL
    assert _relative(low_grad, exact_grad) < REL_TOL
    assert planar.module.target_mean.dtype == torch.float32  # type: ignore[union-attr]


def test_planning_network_is_cached_and_follows_the_weights() -> None:
    net = _unet()
    assert planning_network(net, Precision.float32, "cpu") is net
    assert planning_network(net, Precision.bfloat16, "cuda") is net  # autocast covers CUDA
    first = planning_network(net, Precision.bfloat16, "cpu")
    assert isinstance(first, PlanarNetwork) and planning_network(net, "bfloat16", "cpu") is first
    x, lv = torch.randn(B, H, D), torch.full((B, H), 0.5)
    with torch.no_grad():
        before = first(x, lv)
        for parameter in net.parameters():
            parameter.mul_(1.5)  # an in-place update, as an EMA or optimizer step makes
        second = planning_network(net, Precision.bfloat16, "cpu")
        assert second is not first
        assert _relative(second(x, lv), net(x, lv)) < REL_TOL and _relative(second(x, lv), before) > REL_TOL
    value = _value()
    cached = planning_network(value, Precision.bfloat16, "cpu")
    value.set_target_stats(mean=-5.0, std=2.0)  # buffers only: the copy is rebuilt with them
    rebuilt = planning_network(value, Precision.bfloat16, "cpu")
    assert rebuilt is not cached and float(rebuilt.module.target_mean) == -5.0  # type: ignore[union-attr]


def test_planning_network_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """No planar form (the transformer), or a CPU without bfloat16 units: the network itself, and
    one warning each, naming the setting."""
    import diffplan.models.planar as planar

    monkeypatch.setattr(planar, "_WARNED", set())
    transformer = TrajectoryTransformer(transition_dim=D, horizon=H, d_model=16, n_layers=1, n_heads=2)
    with caplog.at_level("WARNING", logger="diffplan.models.planar"):
        assert planning_network(transformer, Precision.bfloat16, "cpu") is transformer
        assert planning_network(transformer, Precision.bfloat16, "cpu") is transformer
        monkeypatch.setattr(planar, "cpu_has_bfloat16", lambda: False)
        net = _unet()
        assert planning_network(net, Precision.bfloat16, "cpu") is net
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and all("planner.precision=bfloat16" in m for m in messages)
    assert "TrajectoryTransformer has no planar form" in messages[0] and "no bfloat16 units" in messages[1]
    with pytest.raises(ValueError, match="no planar form"):
        PlanarNetwork(transformer)


def test_planar_group_norm_and_mish_compute_the_float32_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both GroupNorm paths (bfloat16 channels-last for wide groups, float32 for narrow ones) and
    the rational Mish with its hand-written backward."""
    from diffplan.models.planar import PlanarGroupNorm, PlanarMish, _RationalMish

    torch.manual_seed(0)
    norm = nn.GroupNorm(8, 128)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 128, 1, 8)
    exact = norm(x)
    planar = PlanarGroupNorm(8, 128)
    planar.load_state_dict(norm.state_dict())
    planar.to(torch.bfloat16)
    low = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    for narrow in (16, 1000):  # 16 channels per group: the bfloat16 kernel; below 1000: through float32
        monkeypatch.setattr(PlanarGroupNorm, "NARROW", narrow)
        out = planar(low)
        assert out.dtype == torch.bfloat16 and _relative(out.float(), exact) < 0.01
    # Mish: forward and gradient of the float64 function, exactly; in bfloat16 within its rounding.
    wide = torch.linspace(-12, 25, 301, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_RationalMish.apply, (wide[::10].detach().requires_grad_(True),))
    torch.testing.assert_close(PlanarMish()(wide), nn.functional.mish(wide))
    half = wide.detach().to(torch.bfloat16).requires_grad_(True)
    (grad,) = torch.autograd.grad(PlanarMish()(half).float().sum(), half)
    (exact_grad,) = torch.autograd.grad(nn.functional.mish(wide).sum(), wide)
    assert (grad.double() - exact_grad).abs().max() < 0.05  # measured 0.024 (bfloat16's rounding of 1 - t^2)


def test_bfloat16_value_planner_plans_with_planar_networks() -> None:
    """ValuePlanner at planner.precision=bfloat16: its denoiser and value guide run planar copies,
    and its plans stay close to float32's (same seed)."""
    layout = TrajectoryLayout(obs_dim=4, act_dim=2)
    model = TrainedModel(denoiser=_unet(), schedule=NoiseSchedule(10), normalizer=LimitsNormalizer(
        -2 * torch.ones(D), 2 * torch.ones(D)), layout=layout, config=Config(), horizon=H, step=0, path=Path("memory"))
    starts = torch.tensor([[0.5, -1.0, 0.1, -0.2], [1.5, 1.0, 0.0, 0.3]])

    def plan(precision: str) -> tuple[ValuePlanner, torch.Tensor]:
        guide = ValueGuide(_value())
        planner = ValuePlanner(model, guide, planner=PlannerConfig(n_candidates=4, precision=precision),
                               diffusion=DiffusionConfig(n_timesteps=10, sampling_steps=4),
                               guidance=GuidanceConfig(kind="value", scale=0.1, t_stopgrad=1))
        assert isinstance(guide.value_net, ValueNet)  # the caller's guide keeps its own network
        return planner, planner.plan(starts, torch.Generator().manual_seed(0)).normalized

    exact_planner, exact = plan("float32")
    assert "_diffplan_planar" not in model.denoiser.__dict__
    low_planner, low = plan("bfloat16")
    assert isinstance(low_planner.guide, ValueGuide) and isinstance(low_planner.guide.value_net, PlanarNetwork)
    assert isinstance(model.denoiser.__dict__["_diffplan_planar"][1], PlanarNetwork)  # the planner's denoiser
    assert not isinstance(exact_planner.guide.value_net, PlanarNetwork)  # type: ignore[attr-defined]
    assert low.dtype == torch.float32 and not torch.equal(low, exact)
    # Guidance steps amplify bfloat16's rounding in a few entries of this random-weight model (measured:
    # mean 0.006, 95th percentile 0.01, largest 0.8 of the [-1, 1] range): the plans agree as a whole.
    difference = (low - exact).abs()
    assert difference.mean() < 0.02 and difference.flatten().quantile(0.95) < 0.03
