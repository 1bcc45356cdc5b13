"""Diffusion Forcing MPC (history matrices, sliding-window rollouts), Monte Carlo guidance and
guidance under per-token scheduling matrices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from diffplan.config import Config, DiffusionConfig
from diffplan.data import LimitsNormalizer, TrajectoryLayout
from diffplan.diffusion.guide import Guidance, GuideContext, GuideOutput
from diffplan.diffusion.sampler import Constraints, Sampler, scheduling_matrix
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.enums import NoiseMode
from diffplan.guidance.monte_carlo import MonteCarloGuide, future_tokens, wrap_monte_carlo
from diffplan.models.transformer import TrajectoryTransformer
from diffplan.models.unet import TemporalUnet
from diffplan.planning.forcing import ForcingPlanner, history_matrix
from diffplan.training.checkpoint import TrainedModel

LAYOUT = TrajectoryLayout(obs_dim=4, act_dim=2)
H = 8
D = LAYOUT.transition_dim


class LinearGuide:
    """v(x) = <w, x>: the gradient is w everywhere."""

    def __init__(self, w: Tensor) -> None:
        self.w = w

    def objective(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
        return (x * self.w).sum(dim=(1, 2))

    def gradient(self, x: Tensor, levels: Tensor, context: GuideContext) -> GuideOutput:
        return GuideOutput(self.w.expand_as(x).clone(), self.objective(x, levels, context))


class SquareGuide:
    """v(x) = -sum x^2: the gradient -2x depends on x (so re-noised copies change it)."""

    def objective(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
        return -(x**2).sum(dim=(1, 2))

    def gradient(self, x: Tensor, levels: Tensor, context: GuideContext) -> GuideOutput:
        return GuideOutput(-2 * x, self.objective(x, levels, context))


def _model(kind: str) -> TrainedModel:
    torch.manual_seed(0)
    denoiser: torch.nn.Module
    if kind == "unet":
        denoiser = TemporalUnet(transition_dim=D, horizon=H, dim=8, dim_mults=(1, 2)).eval()
    else:
        denoiser = TrajectoryTransformer(transition_dim=D, horizon=H, d_model=16, n_layers=1, n_heads=2,
                                         causal=True).eval()
    mins = torch.tensor([-2.0, -2.0, -1.0, -1.0, -1.0, -1.0])
    maxs = torch.tensor([3.0, 3.0, 1.0, 1.0, 1.0, 1.0])
    config = Config()
    config.train.noise_mode = NoiseMode.independent  # per-token matrices without the planner's warning
    return TrainedModel(denoiser=denoiser, schedule=NoiseSchedule(10), normalizer=LimitsNormalizer(mins, maxs),
                        layout=LAYOUT, config=config, horizon=H, step=0, path=Path("memory"))


# -- history matrices ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["full_sequence", "pyramid", "autoregressive", "trapezoid"])
@pytest.mark.parametrize("n_history", [0, 1, 3, H - 1])
def test_history_matrix_zero_history_columns(kind: str, n_history: int) -> None:
    matrix = history_matrix(kind, n_history, n_timesteps=10, sampling_steps=4, horizon=H, uncertainty=2)
    future = scheduling_matrix(kind, n_timesteps=10, sampling_steps=4, horizon=H - n_history, uncertainty=2)
    assert matrix.shape == (future.shape[0], H)
    assert (matrix[:, :n_history] == 0).all()
    assert torch.equal(matrix[:, n_history:], future)
    assert (matrix[0, n_history:] == 10).all() and (matrix[-1] == 0).all()


@pytest.mark.parametrize("n_history", [-1, H])
def test_history_matrix_rejects_bad_history(n_history: int) -> None:
    with pytest.raises(ValueError, match="n_history"):
        history_matrix("pyramid", n_history, n_timesteps=10, sampling_steps=4, horizon=H)


# -- sliding-window rollouts -----------------------------------------------------------------
@pytest.mark.parametrize(("model_kind", "matrix", "clean"), [("unet", "pyramid", False), ("unet", "trapezoid", True),
                                                             ("transformer", "autoregressive", True),
                                                             ("transformer", "full_sequence", False)])
def test_rollout_twice_the_horizon_keeps_history(model_kind: str, matrix: str, clean: bool) -> None:
    model = _model(model_kind)
    model.config.diffusion.clean_condition_tokens = clean
    diffusion = DiffusionConfig(n_timesteps=10, sampling_steps=3, schedule_matrix=matrix, uncertainty=1)
    planner = ForcingPlanner(model, diffusion=diffusion, execute=3, n_history=4)
    start = torch.tensor([[0.5, -1.0, 0.1, -0.2], [2.5, 2.0, 0.0, 0.3]])
    out = planner.rollout(start, 2 * H, torch.Generator().manual_seed(0))
    assert out.trajectory.shape == (2, 2 * H, D)
    assert torch.isfinite(out.trajectory).all()
    torch.testing.assert_close(out.trajectory[:, 0, LAYOUT.obs], start, rtol=0, atol=1e-5)
    assert len(out.windows) == 6  # ceil(16 / 3)
    assert out.n_history == [0, 3, 4, 4, 4, 4]
    for window, offset, n_hist in zip(out.windows, out.offsets, out.n_history, strict=True):
        # The window's history is the executed trajectory, exactly.
        assert torch.equal(window[:, :n_hist], out.normalized[:, offset:offset + n_hist])
        # The executed tokens are the window's first generated ones, never changed afterwards.
        taken = min(3, 2 * H - offset - n_hist)
        assert torch.equal(out.normalized[:, offset + n_hist:offset + n_hist + taken],
                           window[:, n_hist:n_hist + taken])
    for i in range(len(out.windows) - 1):
        # The next current state is the planned state after the executed tokens.
        assert torch.equal(out.windows[i + 1][:, out.n_history[i + 1], LAYOUT.obs],
                           out.windows[i][:, out.n_history[i] + 3, LAYOUT.obs])


def test_rollout_is_reproducible_and_plan_holds_history() -> None:
    model = _model("transformer")
    diffusion = DiffusionConfig(n_timesteps=10, sampling_steps=2, schedule_matrix="pyramid")
    planner = ForcingPlanner(model, diffusion=diffusion, execute=2)
    assert planner.n_history == H - 3
    start = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    a = planner.rollout(start, 12, torch.Generator().manual_seed(3))
    b = planner.rollout(start, 12, torch.Generator().manual_seed(3))
    assert torch.equal(a.trajectory, b.trajectory)
    history = a.trajectory[:, :4]
    plan = planner.plan(a.trajectory[:, 4, LAYOUT.obs], torch.Generator().manual_seed(0), history=history)
    assert plan.normalized is not None and plan.observations.shape[1] == H - 4  # from the current token on
    window = model.normalizer.unnormalize(plan.normalized)
    torch.testing.assert_close(window[:, :4], history, rtol=0, atol=1e-5)
    torch.testing.assert_close(plan.observations[:, 0], a.trajectory[:, 4, LAYOUT.obs], rtol=0, atol=1e-5)


def test_forcing_planner_rejects_bad_settings() -> None:
    model = _model("unet")
    diffusion = DiffusionConfig(n_timesteps=10, sampling_steps=2)
    with pytest.raises(ValueError, match="execute"):
        ForcingPlanner(model, diffusion=diffusion, execute=0)
    with pytest.raises(ValueError, match="n_history"):
        ForcingPlanner(model, diffusion=diffusion, execute=3, n_history=H - 3)
    with pytest.raises(ValueError, match="n_steps"):
        ForcingPlanner(model, diffusion=diffusion, execute=3).rollout(torch.zeros(1, 4), 0, torch.Generator())


def test_rollout_with_monte_carlo_guidance_holds_history() -> None:
    model = _model("transformer")
    diffusion = DiffusionConfig(n_timesteps=10, sampling_steps=2, schedule_matrix="pyramid")
    w = torch.zeros(D)
    w[0] = 1.0
    guidance = wrap_monte_carlo(Guidance(LinearGuide(w), scale=0.5, t_stopgrad=0), 3,
                                denoiser=model.denoiser, schedule=model.schedule)
    planner = ForcingPlanner(model, diffusion=diffusion, execute=2, n_history=3, guidance=guidance)
    out = planner.rollout(torch.zeros(1, 4), 10, torch.Generator().manual_seed(0))
    for window, offset, n_hist in zip(out.windows, out.offsets, out.n_history, strict=True):
        assert torch.equal(window[:, :n_hist], out.normalized[:, offset:offset + n_hist])


# -- Monte Carlo guidance --------------------------------------------------------------------
def _pyramid_case() -> tuple[Sampler, Tensor, Tensor]:
    schedule = NoiseSchedule(10)
    matrix = scheduling_matrix("pyramid", n_timesteps=10, sampling_steps=5, horizon=H, uncertainty=1)
    x_init = torch.randn(2, H, D, generator=torch.Generator().manual_seed(1))
    return Sampler(schedule, clip_denoised=1.0), matrix, x_init


def test_future_tokens() -> None:
    levels = torch.tensor([[0.0, 0.2, 0.2, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3, 0.3]])
    expected = torch.tensor([[False, False, False, True, True], [False] * 5, [False] * 5])
    assert torch.equal(future_tokens(levels), expected)


@pytest.mark.parametrize("guide_kind", ["linear", "square"])
def test_monte_carlo_one_sample_equals_plain_guidance(guide_kind: str) -> None:
    model = _model("unet")
    sampler, matrix, x_init = _pyramid_case()
    guide = LinearGuide(torch.linspace(-1, 1, D)) if guide_kind == "linear" else SquareGuide()
    plain = Guidance(guide, scale=0.2, t_stopgrad=0)
    mc = Guidance(MonteCarloGuide(guide, 1, renoise=False), scale=0.2, t_stopgrad=0)
    a = sampler.sample(model.denoiser, (2, H, D), matrix, x_init=x_init, guidance=plain,
                       generator=torch.Generator().manual_seed(0))
    b = sampler.sample(model.denoiser, (2, H, D), matrix, x_init=x_init, guidance=mc,
                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert wrap_monte_carlo(plain, 1) is plain
    x = torch.randn(2, H, D)
    levels = torch.randint(0, 11, (2, H))
    context = GuideContext(10)
    out = MonteCarloGuide(guide, 1, renoise=False).gradient(x, levels, context)
    ref = guide.gradient(x, levels, context)
    assert torch.equal(out.gradient, ref.gradient) and torch.equal(out.value, ref.value)


def test_monte_carlo_renoises_only_future_tokens() -> None:
    model = _model("unet")
    mc = MonteCarloGuide(SquareGuide(), 4, denoiser=model.denoiser, schedule=model.schedule, seed=5)
    x = torch.randn(2, H, D)
    n_timesteps = model.schedule.n_timesteps
    levels = (torch.tensor([0.0, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0]) * n_timesteps).round().long().expand(2, H)
    context = GuideContext(n_timesteps)
    copies = mc.samples(x, levels)
    assert len(copies) == 4
    for copy in copies:
        assert torch.equal(copy[:, :3], x[:, :3])  # clean tokens and the tokens furthest along
        assert not torch.equal(copy[:, 3:], x[:, 3:])
    assert not torch.equal(copies[0][:, 3:], copies[1][:, 3:])
    # The same seed draws the same copies; the gradient is their average.
    out = MonteCarloGuide(SquareGuide(), 4, denoiser=model.denoiser, schedule=model.schedule, seed=5).gradient(
        x, levels, context)
    torch.testing.assert_close(out.gradient, torch.stack([-2 * c for c in copies]).mean(0))
    # Full-sequence levels: nothing is future, the average is the plain gradient.
    flat = torch.full((2, H), n_timesteps // 2)
    torch.testing.assert_close(mc.gradient(x, flat, context).gradient, -2 * x)
    with pytest.raises(ValueError, match="denoiser"):
        MonteCarloGuide(SquareGuide(), 2)
    with pytest.raises(ValueError, match="mc_samples"):
        MonteCarloGuide(SquareGuide(), 0, renoise=False)


def test_mc_samples_config_default() -> None:
    assert Config().guidance.mc_samples == 1


# -- guidance under per-token scheduling matrices -------------------------------------------
def _identity_x0(x_t: Tensor, levels: Tensor) -> Tensor:
    return x_t.clone()


W = torch.tensor([1.0, -0.5, 0.0, 2.0, -1.0, 0.5])


@pytest.mark.parametrize("kind", ["pyramid", "autoregressive", "trapezoid", "full_sequence"])
@pytest.mark.parametrize("clean", [False, True])
def test_guidance_moves_samples_along_gradient_under_every_matrix(kind: str, clean: bool) -> None:
    schedule = NoiseSchedule(10, prediction="x0")
    sampler = Sampler(schedule, clean_condition_tokens=clean)
    matrix = scheduling_matrix(kind, n_timesteps=10, sampling_steps=4, horizon=H, uncertainty=2)
    x_init = torch.randn(2, H, D, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(2, H, D, dtype=torch.bool)
    mask[:, 0, :4] = True
    mask[:, H - 1, :2] = True
    constraints = Constraints(mask, torch.full((2, H, D), 0.25))
    guidance = Guidance(LinearGuide(W), scale=0.3, n_guide_steps=2, t_stopgrad=0, scale_grad_by_std=False)
    plain = sampler.sample(_identity_x0, (2, H, D), matrix, x_init=x_init, constraints=constraints)
    guided = sampler.sample(_identity_x0, (2, H, D), matrix, x_init=x_init, constraints=constraints,
                            guidance=guidance)
    assert torch.equal(guided[mask], constraints.values[mask])
    assert torch.equal(plain[mask], constraints.values[mask])
    diff = guided - plain
    free = ~mask & (W != 0).expand_as(mask)
    # The identity estimate makes every update linear with a positive gain: each free entry
    # moves in the sign of the gradient.
    assert (torch.sign(diff[free]) == torch.sign(W.expand_as(mask)[free])).all()
    assert (diff[~mask & (W == 0).expand_as(mask)] == 0).all()


@pytest.mark.parametrize("kind", ["pyramid", "autoregressive"])
@pytest.mark.parametrize("apply_to", ["x_t", "x0"])
def test_guidance_with_real_model_under_per_token_matrices(kind: str, apply_to: str) -> None:
    model = _model("transformer")
    sampler = Sampler(model.schedule, clip_denoised=None)
    matrix = scheduling_matrix(kind, n_timesteps=10, sampling_steps=3, horizon=H, uncertainty=1)
    mask = torch.zeros(4, H, D, dtype=torch.bool)
    mask[:, :2] = True  # two clean history tokens
    values = torch.randn(4, H, D, generator=torch.Generator().manual_seed(4))
    constraints = Constraints(mask, values)
    guide = LinearGuide(W)
    guidance = Guidance(guide, scale=1.0, n_guide_steps=2, t_stopgrad=0, scale_grad_by_std=False, apply_to=apply_to)
    plain = sampler.sample(model.denoiser, (4, H, D), matrix, constraints=constraints,
                           generator=torch.Generator().manual_seed(0))
    guided = sampler.sample(model.denoiser, (4, H, D), matrix, constraints=constraints,
                            generator=torch.Generator().manual_seed(0), guidance=guidance)
    assert torch.equal(guided[mask], values[mask])
    levels, context = torch.zeros(4, H, dtype=torch.long), GuideContext(model.schedule.n_timesteps)
    assert (guide.objective(guided, levels, context) > guide.objective(plain, levels, context)).all()


def test_build_guidance_wraps_the_guide_for_monte_carlo_samples() -> None:
    """guidance.mc_samples > 1 averages over re-noised futures; 1 keeps plain guidance; < 1 is refused."""
    from diffplan.config import GuidanceConfig
    from diffplan.guidance import build_guidance
    from diffplan.guidance.monte_carlo import MonteCarloGuide

    model = _model("unet")
    value = SquareGuide()
    plain = build_guidance(GuidanceConfig(kind="value"), model, value_guide=value)
    assert plain is not None and plain.guide is value
    wrapped = build_guidance(GuidanceConfig(kind="value", mc_samples=3), model, value_guide=value)
    assert wrapped is not None and isinstance(wrapped.guide, MonteCarloGuide) and wrapped.guide.n_samples == 3
    with pytest.raises(ValueError, match="guidance.mc_samples must be >= 1"):
        build_guidance(GuidanceConfig(kind="value", mc_samples=0), model, value_guide=value)
