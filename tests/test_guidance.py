"""Guided sampling, the value guide, warm starts, the value planner and its closed-loop policy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from diffplan.config import (
    Config,
    DiffusionConfig,
    GuidanceConfig,
    ModelConfig,
    PlannerConfig,
    ReturnGuidanceConfig,
    WarmStartConfig,
)
from diffplan.data import LimitsNormalizer, TrajectoryLayout
from diffplan.diffusion.sampler import Constraints, Sampler, full_sequence_matrix, make_sampler
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.diffusion.warm_start import shift_plan, warm_start
from diffplan.enums import GuideTarget
from diffplan.guidance import ConstantGuide, Guidance, GuideContext, GuideOutput, ValueGuide
from diffplan.models.unet import TemporalUnet
from diffplan.models.value import ValueNet
from diffplan.planning.planner import Plan
from diffplan.planning.value_planner import ValueController, ValuePlanner
from diffplan.training.checkpoint import TrainedModel

B, H, D = 2, 8, 3


class LinearGuide:
    """v(x) = <w, x> over all entries of a sample: the gradient is w everywhere."""

    def __init__(self, w: Tensor) -> None:
        self.w = w
        self.levels_seen: list[Tensor] = []

    def objective(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
        return (x * self.w).sum(dim=(1, 2))

    def gradient(self, x: Tensor, levels: Tensor, context: GuideContext) -> GuideOutput:
        self.levels_seen.append(levels.clone())
        return GuideOutput(self.w.expand_as(x).clone(), self.objective(x, levels, context))


def _identity_x0(x_t: Tensor, levels: Tensor) -> Tensor:
    """An x0-predicting denoiser whose estimate is its input (the updates stay linear)."""
    return x_t.clone()


def _spy(seen: list[Tensor]):  # noqa: ANN202 - a Denoiser closure
    def denoise(x_t: Tensor, levels: Tensor) -> Tensor:
        seen.append(x_t.clone())
        return x_t.clone()

    return denoise


W = torch.randn(1, H, D, generator=torch.Generator().manual_seed(0))
X_INIT = torch.randn(B, H, D, generator=torch.Generator().manual_seed(1))


# -- the amount of guidance --------------------------------------------------------------------
@pytest.mark.parametrize("by_std", [False, True])
def test_x_t_guidance_moves_the_sample_by_scale_times_gradient(by_std: bool) -> None:
    schedule = NoiseSchedule(10, prediction="x0")
    sampler = Sampler(schedule)
    matrix = torch.tensor([10, 6, 0]).unsqueeze(1).expand(3, H)
    guidance = Guidance(LinearGuide(W), scale=0.3, n_guide_steps=2, t_stopgrad=6, scale_grad_by_std=by_std)
    plain: list[Tensor] = []
    guided: list[Tensor] = []
    sampler.sample(_spy(plain), (B, H, D), matrix, x_init=X_INIT)
    sampler.sample(_spy(guided), (B, H, D), matrix, x_init=X_INIT, guidance=guidance)
    factor = sampler.posterior_variance(torch.tensor([[10]]), torch.tensor([[6]])).item() if by_std else 1.0
    assert 0 < factor <= 1
    # Row 0 (level 10 -> 6): the denoiser sees x + 2 * 0.3 * w * factor.
    torch.testing.assert_close(guided[0] - plain[0], (2 * 0.3 * factor * W).expand(B, H, D), rtol=0, atol=1e-6)
    # Row 1 starts at level 6 <= t_stopgrad: unguided; it sees the first row's shift d carried by
    # the DDIM update (x_t and the identity estimate both moved by d):
    # (sqrt(abar_6) + sqrt(1 - abar_6) (1 - sqrt(abar_10)) / sqrt(1 - abar_10)) d.
    abar = schedule.alphas_cumprod.double()
    coefficient = (abar[6].sqrt() + (1 - abar[6]).sqrt() * (1 - abar[10].sqrt()) / (1 - abar[10]).sqrt()).item()
    torch.testing.assert_close(guided[1] - plain[1], (coefficient * 2 * 0.3 * factor * W).expand(B, H, D),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("by_std", [False, True])
def test_x0_guidance_moves_the_estimate_by_scale_times_gradient(by_std: bool) -> None:
    schedule = NoiseSchedule(10, prediction="x0")
    sampler = Sampler(schedule)
    guide = LinearGuide(W)
    # One row 10 -> 4, then an unguided-by-construction row 4 -> 0 (t_stopgrad = 4).
    matrix = torch.tensor([10, 4, 0]).unsqueeze(1).expand(3, H)
    guidance = Guidance(guide, scale=0.25, n_guide_steps=3, t_stopgrad=4, scale_grad_by_std=by_std,
                        apply_to=GuideTarget.x0)
    plain = sampler.sample(_identity_x0, (B, H, D), matrix, x_init=X_INIT)
    moved = sampler.sample(_identity_x0, (B, H, D), matrix, x_init=X_INIT, guidance=guidance)
    factor = sampler.posterior_variance(torch.tensor([[10]]), torch.tensor([[4]])).item() if by_std else 1.0
    # The estimate moves by 3 * 0.25 * w * factor; the DDIM update to level 4 maps a change d of x0
    # (x_t fixed) to (sqrt(abar_4) - sqrt(1 - abar_4) sqrt(abar_10) / sqrt(1 - abar_10)) d; the last
    # row (identity estimate, to level 0) keeps it.
    abar = schedule.alphas_cumprod.double()
    coefficient = (abar[4].sqrt() - (1 - abar[4]).sqrt() * abar[10].sqrt() / (1 - abar[10]).sqrt()).item()
    torch.testing.assert_close(moved - plain, (coefficient * 3 * 0.25 * factor * W).expand(B, H, D),
                               rtol=0, atol=1e-5)
    # The guide saw the x0 estimate at level 0.
    assert len(guide.levels_seen) == 3 and all(bool((lv == 0).all()) for lv in guide.levels_seen)
    # A single row to level 0 without variance scaling: the result is the moved estimate itself.
    single = torch.tensor([10, 0]).unsqueeze(1).expand(2, H)
    flat = Guidance(LinearGuide(W), scale=0.25, n_guide_steps=3, t_stopgrad=0, scale_grad_by_std=False,
                    apply_to=GuideTarget.x0)
    out = sampler.sample(_identity_x0, (B, H, D), single, x_init=X_INIT, guidance=flat)
    torch.testing.assert_close(out, X_INIT + 0.75 * W, rtol=0, atol=1e-6)


def test_t_stopgrad_turns_guidance_off_for_the_last_levels() -> None:
    sampler = Sampler(NoiseSchedule(10, prediction="x0"))
    guide = LinearGuide(W)
    matrix = full_sequence_matrix(10, 5, H)  # levels 10, 8, 6, 4, 2, 0
    sampler.sample(_identity_x0, (B, H, D), matrix, x_init=X_INIT,
                   guidance=Guidance(guide, scale=0.1, n_guide_steps=2, t_stopgrad=4))
    seen = sorted({int(lv[0, 0]) for lv in guide.levels_seen}, reverse=True)
    assert seen == [10, 8, 6] and len(guide.levels_seen) == 6  # rows starting at 4 and 2 are unguided


def test_per_token_guidance_skips_waiting_and_clean_tokens() -> None:
    sampler = Sampler(NoiseSchedule(4, prediction="x0"))
    matrix = torch.tensor([[4, 4], [2, 4], [0, 4], [0, 2], [0, 0]])
    seen: list[Tensor] = []
    guidance = Guidance(LinearGuide(torch.ones(1, 2, D)), scale=1.0, n_guide_steps=1, t_stopgrad=0,
                        scale_grad_by_std=False)
    x_init = torch.zeros(1, 2, D)
    sampler.sample(_spy(seen), (1, 2, D), matrix, x_init=x_init, guidance=guidance)
    # Row 0: token 0 moves (4 -> 2), token 1 waits at level 4 (not moved).
    assert torch.equal(seen[0][0, 0], torch.ones(D)) and torch.equal(seen[0][0, 1], torch.zeros(D))
    # Row 1: token 0 moves again (2 -> 0) from where row 0's update left it; token 1 still waits.
    after_row0, _ = sampler.step(seen[0], seen[0], torch.tensor([[4, 4]]), torch.tensor([[2, 4]]))
    torch.testing.assert_close(seen[1][0, 0], after_row0[0, 0] + 1, rtol=0, atol=1e-6)
    assert torch.equal(seen[1][0, 1], torch.zeros(D))
    # Row 2: token 0 is clean (0 -> 0) and stays as row 1 left it; token 1 moves (4 -> 2).
    assert torch.equal(seen[2][0, 0], seen[1][0, 0]) and torch.equal(seen[2][0, 1], torch.ones(D))


# -- scale 0, inpainting, the value guide ---------------------------------------------------------
def _tiny_unet() -> TemporalUnet:
    torch.manual_seed(0)
    return TemporalUnet(transition_dim=D, horizon=H, dim=8, dim_mults=(1, 2)).eval()


def _value_guide() -> ValueGuide:
    torch.manual_seed(1)
    return ValueGuide(ValueNet(transition_dim=D, horizon=H, dim=8, dim_mults=(1, 2)).eval())


def _constraints() -> Constraints:
    mask = torch.zeros(B, H, D, dtype=torch.bool)
    mask[:, 0, :2] = True
    values = torch.randn(B, H, D, generator=torch.Generator().manual_seed(11))
    return Constraints(mask, values)


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
@pytest.mark.parametrize("apply_to", list(GuideTarget))
def test_scale_zero_equals_unguided_bitwise(kind: str, apply_to: GuideTarget) -> None:
    sampler, matrix = make_sampler(NoiseSchedule(10), kind, sampling_steps=4, horizon=H, clip_denoised=1.0,
                                   clean_condition_tokens=True)
    unet, constraints = _tiny_unet(), _constraints()
    plain = sampler.sample(unet, (B, H, D), matrix, constraints=constraints,
                           generator=torch.Generator().manual_seed(3))
    zero = sampler.sample(unet, (B, H, D), matrix, constraints=constraints, generator=torch.Generator().manual_seed(3),
                          guidance=Guidance(_value_guide(), scale=0.0, t_stopgrad=0, apply_to=apply_to))
    assert torch.equal(plain, zero)
    moved = sampler.sample(unet, (B, H, D), matrix, constraints=constraints,
                           generator=torch.Generator().manual_seed(3),
                           guidance=Guidance(_value_guide(), scale=5.0, t_stopgrad=0, apply_to=apply_to))
    assert not torch.equal(plain, moved)


@pytest.mark.parametrize("apply_to", list(GuideTarget))
def test_guided_sampling_keeps_inpainted_entries_exact(apply_to: GuideTarget) -> None:
    sampler, matrix = make_sampler(NoiseSchedule(10), "ddpm", sampling_steps=5, horizon=H)
    constraints = _constraints()
    guidance = Guidance(LinearGuide(torch.full((1, H, D), 3.0)), scale=10.0, t_stopgrad=0, apply_to=apply_to)
    sample = sampler.sample(_tiny_unet(), (B, H, D), matrix, constraints=constraints,
                            generator=torch.Generator().manual_seed(0), guidance=guidance)
    assert torch.equal(sample[constraints.mask], constraints.values[constraints.mask])
    assert torch.isfinite(sample).all()


def test_value_guide_gradient_matches_autograd_and_leaves_parameters_alone() -> None:
    guide = _value_guide()
    x, levels, context = torch.randn(B, H, D), torch.full((B, H), 3), GuideContext(10)
    with torch.no_grad():
        grad, value = guide.gradient(x, levels, context)
    reference = x.clone().requires_grad_(True)
    expected = guide.value_net(reference, torch.full((B, H), 0.3))
    expected.sum().backward()
    assert reference.grad is not None
    torch.testing.assert_close(grad, reference.grad)
    torch.testing.assert_close(value, expected.detach())
    torch.testing.assert_close(guide.objective(x, levels, context), value)
    guide.value_net.zero_grad(set_to_none=True)
    guide.gradient(x, levels, context)
    assert all(p.grad is None for p in guide.value_net.parameters())


def test_guidance_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="n_guide_steps must be >= 1"):
        Guidance(LinearGuide(W), n_guide_steps=0)
    with pytest.raises(ValueError, match="t_stopgrad must be >= 0"):
        Guidance(LinearGuide(W), t_stopgrad=-1)
    with pytest.raises(ValueError, match=r"apply_to='sideways' is not a guidance rule; use one of \['x_t', 'x0'"):
        Guidance(LinearGuide(W), apply_to="sideways")


def test_a_registered_guidance_rule_is_used_without_editing_the_sampler() -> None:
    """A rule that guides the noisy sample but only on the first half of the horizon: registered by
    name, chosen with apply_to, and equal to x_t where it guides and to unguided sampling elsewhere."""
    from diffplan.diffusion.guide import GuidedRow, guide_noisy_sample, register_guidance_rule

    def first_half(sampler, guidance, row: GuidedRow):  # type: ignore[no-untyped-def]
        free = row.free.clone()
        free[:, free.shape[1] // 2:] = False
        return guide_noisy_sample(sampler, guidance, dataclasses.replace(row, free=free, guided=bool(free.any())))

    register_guidance_rule("test-first-half", first_half, replace=True)
    with pytest.raises(ValueError, match="registered already"):
        register_guidance_rule("test-first-half", first_half)
    schedule = NoiseSchedule(16)
    sampler = Sampler(schedule)
    matrix = full_sequence_matrix(16, 4, 8)
    denoiser = _identity_x0
    x = torch.randn(3, 8, 2, generator=torch.Generator().manual_seed(0))
    results = {}
    for rule in ("test-first-half", "x_t"):
        guidance = Guidance(LinearGuide(torch.ones(2)), scale=0.5, apply_to=rule, t_stopgrad=0)
        results[rule] = sampler.sample(denoiser, x.shape, matrix, generator=torch.Generator().manual_seed(1),
                                       guidance=guidance, x_init=x.clone())
    unguided = sampler.sample(denoiser, x.shape, matrix, generator=torch.Generator().manual_seed(1), x_init=x.clone())
    assert not torch.equal(results["test-first-half"][:, :4], unguided[:, :4])
    assert torch.equal(results["test-first-half"][:, 4:], unguided[:, 4:])  # tokens evolve independently here
    assert not torch.equal(results["x_t"][:, 4:], unguided[:, 4:])


# -- warm starts ---------------------------------------------------------------------------------
def test_shift_plan() -> None:
    plan = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    assert shift_plan(plan, 1)[0, :, 0].tolist() == [1.0, 2.0, 3.0, 3.0]
    assert shift_plan(plan, 3)[1, :, 0].tolist() == [7.0, 7.0, 7.0, 7.0]
    assert shift_plan(plan, 9)[0, :, 0].tolist() == [3.0, 3.0, 3.0, 3.0]
    assert torch.equal(shift_plan(plan, 0), plan)


def test_warm_start_without_renoise_returns_the_shifted_plan() -> None:
    schedule = NoiseSchedule(10)
    previous = torch.randn(B, H, D, generator=torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    x_init, matrix = warm_start(previous, shift=2, schedule=schedule, level=0, steps=1, generator=generator)
    expected = torch.cat([previous[:, 2:], previous[:, -1:], previous[:, -1:]], dim=1)
    assert torch.equal(x_init, expected)
    assert torch.equal(generator.get_state(), state)  # nothing drawn
    assert torch.equal(matrix, torch.zeros(2, H, dtype=torch.long))
    # Sampling from it changes nothing but the inpainted entries.
    sampler = Sampler(schedule)
    out = sampler.sample(_tiny_unet(), (B, H, D), matrix, x_init=x_init, generator=generator)
    assert torch.equal(out, x_init)


def test_warm_start_renoises_with_the_schedule() -> None:
    schedule = NoiseSchedule(10)
    previous = torch.randn(B, H, D, generator=torch.Generator().manual_seed(4))
    x_init, matrix = warm_start(previous, shift=1, schedule=schedule, level=6, steps=3,
                                generator=torch.Generator().manual_seed(7))
    assert matrix[:, 0].tolist() == [6, 4, 2, 0] and matrix.shape == (4, H)
    noise = torch.randn(B, H, D, generator=torch.Generator().manual_seed(7))
    abar = schedule.alphas_cumprod[6]
    torch.testing.assert_close(x_init, abar.sqrt() * shift_plan(previous, 1) + (1 - abar).sqrt() * noise)
    with pytest.raises(ValueError, match=r"warm start steps must be in \[1, 6\]"):
        warm_start(previous, shift=1, schedule=schedule, level=6, steps=7)
    with pytest.raises(ValueError, match=r"level must be in \[0, n_timesteps=10\], got 11"):
        warm_start(previous, shift=1, schedule=schedule, level=11, steps=1)


# -- the value planner and policy ------------------------------------------------------------------
LAYOUT = TrajectoryLayout(obs_dim=4, act_dim=2)
PH = 8


@pytest.fixture(scope="module")
def model() -> TrainedModel:
    torch.manual_seed(0)
    denoiser = TemporalUnet(transition_dim=LAYOUT.transition_dim, horizon=PH, dim=8, dim_mults=(1, 2)).eval()
    mins, maxs = -torch.ones(6) * 2, torch.ones(6) * 2
    return TrainedModel(denoiser=denoiser, schedule=NoiseSchedule(10), normalizer=LimitsNormalizer(mins, maxs),
                        layout=LAYOUT, config=Config(), horizon=PH, step=0, path=Path("memory"))


def _planner(model: TrainedModel, guide: object, *, k: int = 4, kind: str = "value",
             **planner: object) -> ValuePlanner:
    return ValuePlanner(
        model, guide,  # type: ignore[arg-type]
        planner=PlannerConfig(n_candidates=k, **planner),  # type: ignore[arg-type]
        diffusion=DiffusionConfig(n_timesteps=10, sampling_steps=3),
        guidance=GuidanceConfig(kind=kind, scale=0.05, t_stopgrad=1),
    )


STARTS = torch.tensor([[0.5, -1.0, 0.1, -0.2], [1.5, 1.0, 0.0, 0.3], [0.0, 0.0, 0.0, 0.0]])


@pytest.mark.parametrize("kind", ["none", "value"])
def test_value_planner_picks_the_highest_value_candidate(model: TrainedModel, kind: str) -> None:
    w = torch.zeros(1, PH, LAYOUT.transition_dim)
    w[:, :, 4] = 1.0  # value = sum of the first action channel over the plan (normalized units)
    guide = LinearGuide(w)
    plan = _planner(model, guide, kind=kind).plan(STARTS, torch.Generator().manual_seed(0))
    assert isinstance(plan, Plan) and plan.candidate_values is not None and plan.values is not None
    assert plan.candidate_values.shape == (3, 4) and plan.observations.shape == (3, PH, 4)
    assert torch.equal(plan.values, plan.candidate_values.max(dim=1).values)
    assert plan.normalized is not None and plan.candidates is not None
    best = plan.candidate_values.argmax(dim=1)
    for n in range(3):
        assert torch.equal(plan.observations[n], plan.candidates[n, best[n]])
        # The value is the guide's objective of the selected (normalized) plan.
        torch.testing.assert_close(plan.values[n], plan.normalized[n, :, 4].sum())
    torch.testing.assert_close(plan.observations[:, 0], STARTS, rtol=0, atol=1e-5)
    assert plan.finite.all() and plan.actions.shape == (3, PH, 2)
    # Levels 10 -> 7 -> 3 -> 0 with t_stopgrad 1: three guided rows, two gradient steps each.
    assert len(guide.levels_seen) == (0 if kind == "none" else 6)


def test_value_guidance_raises_the_value(model: TrainedModel) -> None:
    w = torch.zeros(1, PH, LAYOUT.transition_dim)
    w[:, :, 4] = 1.0
    common = dict(n_candidates=8)
    plain = ValuePlanner(model, LinearGuide(w), planner=PlannerConfig(**common),  # type: ignore[arg-type]
                         diffusion=DiffusionConfig(n_timesteps=10, sampling_steps=3), guidance=GuidanceConfig())
    guided = ValuePlanner(model, LinearGuide(w), planner=PlannerConfig(**common),  # type: ignore[arg-type]
                          diffusion=DiffusionConfig(n_timesteps=10, sampling_steps=3),
                          guidance=GuidanceConfig(kind="value", scale=1.0, t_stopgrad=0,
                                                  scale_grad_by_std=False))
    a = plain.plan(STARTS, torch.Generator().manual_seed(0))
    b = guided.plan(STARTS, torch.Generator().manual_seed(0))
    assert a.candidate_values is not None and b.candidate_values is not None
    assert (b.candidate_values.mean(dim=1) > a.candidate_values.mean(dim=1)).all()


def test_constant_guide_plans_unguided_and_takes_the_first_candidate(model: TrainedModel) -> None:
    guide = ConstantGuide()
    grad, value = guide.gradient(torch.ones(2, PH, 6), torch.zeros(2, PH), GuideContext(10))
    assert torch.equal(grad, torch.zeros(2, PH, 6)) and torch.equal(value, torch.zeros(2))
    plan = _planner(model, guide, k=3).plan(STARTS, torch.Generator().manual_seed(0))
    assert plan.candidates is not None and torch.equal(plan.observations, plan.candidates[:, 0])


def test_value_planner_settings_are_validated(model: TrainedModel) -> None:
    guide = LinearGuide(torch.zeros(1, PH, 6))
    with pytest.raises(ValueError, match="n_candidates must be >= 1"):
        _planner(model, guide, k=0)
    with pytest.raises(ValueError, match=r"warm_start.level must be in \[0, diffusion.n_timesteps=10\]"):
        _planner(model, guide, warm_start=WarmStartConfig(level=11))
    with pytest.raises(ValueError, match=r"warm_start.steps must be in \[1, planner.warm_start.level=3\]"):
        _planner(model, guide, warm_start=WarmStartConfig(level=3, steps=4))


def _spy_planner(planner: ValuePlanner) -> list[dict[str, object]]:
    calls: list[dict[str, object]] = []
    original = planner.plan

    def plan(observations: Tensor, generator: torch.Generator, **kwargs: object) -> Plan:
        calls.append({"observations": observations.clone(), **kwargs})
        return original(observations, generator, **kwargs)  # type: ignore[arg-type]

    planner.plan = plan  # type: ignore[method-assign]
    return calls


def test_value_policy_replans_on_schedule_and_executes_the_chunk(model: TrainedModel) -> None:
    planner = _planner(model, LinearGuide(torch.zeros(1, PH, 6)), k=2)
    calls = _spy_planner(planner)
    policy = ValueController(planner, PlannerConfig(replan_every=3))
    obs, goals, active = STARTS.numpy()[:2], np.zeros((2, 0)), np.ones(2, dtype=bool)
    generator = torch.Generator().manual_seed(0)
    executed = [policy.act(t, obs, goals, active, generator)[0] for t in range(7)]
    assert [r.step for r in policy.records] == [0, 3, 6] and len(calls) == 3
    assert all("previous" not in c for c in calls)  # warm start off: every plan from noise
    first = policy.records[0]
    assert first.env_index.tolist() == [0, 1] and first.observations.shape == (2, PH, 4)
    # Step 6 replanned and executes the new plan's first action.
    assert policy._actions is not None
    np.testing.assert_allclose(executed[6], policy._actions[:, 0], rtol=0, atol=0)
    # Only active envs replan.
    policy.act(7, obs, goals, active, generator)
    policy.act(8, obs, goals, active, generator)
    policy.act(9, obs, goals, np.array([True, False]), generator)
    assert policy.records[-1].env_index.tolist() == [0]
    policy.reset(2)
    policy.act(0, obs, goals, active, generator)
    assert [r.step for r in policy.records] == [0]


def test_value_policy_executes_planned_actions(model: TrainedModel) -> None:
    planner = _planner(model, LinearGuide(torch.zeros(1, PH, 6)), k=1)
    plan = planner.plan(STARTS[:2], torch.Generator().manual_seed(0))
    policy = ValueController(planner, PlannerConfig(replan_every=0))
    generator = torch.Generator().manual_seed(0)
    obs, active = STARTS.numpy()[:2], np.ones(2, dtype=bool)
    for t in range(PH + 2):
        actions, bad = policy.act(t, obs, np.zeros((2, 0)), active, generator)
        np.testing.assert_allclose(actions, plan.actions[:, min(t, PH - 1)].numpy(), rtol=1e-6)
        assert not bad.any()
    assert len(policy.records) == 1


def test_value_policy_warm_starts_from_the_shifted_previous_plan(model: TrainedModel) -> None:
    planner = _planner(model, LinearGuide(torch.zeros(1, PH, 6)), k=2, warm_start=WarmStartConfig(level=4, steps=2))
    calls = _spy_planner(planner)
    policy = ValueController(planner, PlannerConfig(replan_every=2, warm_start=WarmStartConfig(level=4, steps=2)))
    obs, goals, active = STARTS.numpy()[:2], np.zeros((2, 0)), np.ones(2, dtype=bool)
    generator = torch.Generator().manual_seed(0)
    policy.act(0, obs, goals, active, generator)
    assert policy._normalized is not None
    first = policy._normalized.clone()
    policy.act(1, obs, goals, active, generator)
    policy.act(2, obs, goals, active, generator)
    assert len(calls) == 2 and "previous" not in calls[0]
    assert calls[1]["shift"] == 2
    assert torch.equal(calls[1]["previous"], first)  # type: ignore[arg-type]
    # The warm plan still starts at the current observation.
    np.testing.assert_allclose(policy.records[1].observations[:, 0], obs, atol=1e-5)
    strided = _planner(model, LinearGuide(torch.zeros(1, PH, 6)))
    strided.model = dataclasses.replace(model, config=Config())
    strided.model.config.task.stride = 2
    with pytest.raises(ValueError, match="task.stride=1"):
        ValueController(strided, PlannerConfig())


def test_value_planner_honours_return_condition_and_inverse_dynamics(model: TrainedModel) -> None:
    """A Decision Diffuser checkpoint (planner=dd) in the locomotion evaluator: the value planner
    must guide towards planner.return_guidance.target and execute the inverse-dynamics actions, as
    GoalPlanner does, instead of silently sampling unconditionally with the diffused actions."""
    from diffplan.enums import ActionSource
    from diffplan.models.inverse_dynamics import InverseDynamics, plan_actions

    torch.manual_seed(0)
    unet = TemporalUnet(transition_dim=LAYOUT.transition_dim, horizon=PH, dim=8, dim_mults=(1, 2),
                        return_condition=True).eval()
    assert unet.null_condition is not None
    with torch.no_grad():
        unet.null_condition.normal_()
    seen: list[object] = []
    original_forward = unet.forward

    def forward(x: Tensor, levels: Tensor, condition: Tensor | None = None, drop: Tensor | None = None) -> Tensor:
        seen.append(condition)
        return original_forward(x, levels, condition, drop)

    unet.forward = forward  # type: ignore[method-assign]
    head = InverseDynamics(LAYOUT.obs_dim, LAYOUT.act_dim, (16,)).eval()
    dd = dataclasses.replace(model, denoiser=unet, config=Config(model=ModelConfig(return_condition=True)),
                             inverse_dynamics=head)
    planner = _planner(dd, ConstantGuide(), k=1, kind="none",
                       return_guidance=ReturnGuidanceConfig(0.7, 1.2), action_source=ActionSource.inverse_dynamics)
    plan = planner.plan(STARTS, torch.Generator().manual_seed(0))
    assert seen and all(isinstance(c, Tensor) and torch.allclose(c, torch.full_like(c, 0.7)) for c in seen)
    assert plan.normalized is not None
    with torch.no_grad():
        expected = plan_actions(head, plan.normalized[..., LAYOUT.obs])
    torch.testing.assert_close(plan.normalized[..., LAYOUT.act], expected)
    raw = dd.normalizer.unnormalize(plan.normalized)
    torch.testing.assert_close(plan.actions, raw[..., LAYOUT.act])
    # Without the head the setting is refused, naming the fix.
    with pytest.raises(ValueError, match="model.inverse_dynamics=true"):
        _planner(model, ConstantGuide(), k=1, kind="none", action_source=ActionSource.inverse_dynamics)


def test_value_planner_applies_policy_guidance(model: TrainedModel, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """guidance=policy steers the planner's actions towards the target policy's mean (here +2 on
    both action channels, the top of the normalizer's range) while the value guide still ranks
    the candidates. (Each guide step moves a normalized action x by 0.1 * 4 (1 - x).)"""
    from diffplan.policies import LinearGaussianPolicy, loading, register_policy_loader

    monkeypatch.setattr(loading, "_LOADERS", loading._LOADERS.copy())
    register_policy_loader("linear-test", lambda path, std, _: LinearGaussianPolicy(
        torch.zeros(2, 4), torch.full((2,), 2.0), std=std), replace=True)
    (tmp_path / "policy").write_text("fixed")
    plans = {}
    for kind in ("none", "policy"):
        planner = ValuePlanner(
            model, ConstantGuide(), planner=PlannerConfig(n_candidates=4),
            diffusion=DiffusionConfig(n_timesteps=10, sampling_steps=3, clip_denoised=None),
            guidance=GuidanceConfig(kind=kind, policy=f"linear-test:{tmp_path / 'policy'}", policy_scale=0.1,
                                    policy_std=1.0, t_stopgrad=0, scale_grad_by_std=False),
        )
        plans[kind] = planner.plan(STARTS, torch.Generator().manual_seed(0))
    assert plans["policy"].actions.mean() > plans["none"].actions.mean() + 0.1
