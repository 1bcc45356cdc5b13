"""Policy guidance (PGD): the policy guide's gradient, guided sampling, schedules, composite guides,
building guidance from the config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from diffplan.config import Config, GuidanceConfig, as_config
from diffplan.data import GaussianNormalizer, LimitsNormalizer, TrajectoryLayout
from diffplan.data.normalizer import Normalizer
from diffplan.diffusion.sampler import Constraints, Sampler, make_sampler
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.enums import GuidanceSchedule, GuideTarget
from diffplan.guidance import (
    CompositeGuide,
    Guidance,
    GuideContext,
    GuideOutput,
    PolicyGuide,
    build_guidance,
    schedule_coefficient,
)
from diffplan.models.unet import TemporalUnet
from diffplan.policies import LinearGaussianPolicy, loading
from diffplan.training.checkpoint import TrainedModel

B, H = 2, 8
LAYOUT = TrajectoryLayout(obs_dim=3, act_dim=2, reward=True)  # channels: 3 obs, 2 actions, 1 reward
D = LAYOUT.transition_dim
_G = torch.Generator().manual_seed(0)
WEIGHT, BIAS = torch.randn(2, 3, generator=_G), torch.randn(2, generator=_G)
STD = torch.tensor([0.5, 0.8])
X = torch.randn(B, H, D, generator=torch.Generator().manual_seed(1))

CTX = GuideContext(10)


def _policy() -> LinearGaussianPolicy:
    return LinearGaussianPolicy(WEIGHT, BIAS, std=STD)


def _gaussian_normalizer() -> GaussianNormalizer:
    g = torch.Generator().manual_seed(2)
    return GaussianNormalizer(torch.randn(D, generator=g), torch.rand(D, generator=g) + 0.5)


def _limits_normalizer() -> LimitsNormalizer:
    g = torch.Generator().manual_seed(3)
    mins = -torch.rand(D, generator=g) - 0.5
    return LimitsNormalizer(mins, mins + 2 * torch.rand(D, generator=g) + 0.5)


def _chain(normalizer: Normalizer) -> Tensor:
    """d raw / d normalized per channel (D,): std, or the half range."""
    if isinstance(normalizer, GaussianNormalizer):
        return normalizer.std
    assert isinstance(normalizer, LimitsNormalizer)
    return (normalizer.maxs - normalizer.mins) / 2


def _expected_gradient(x: Tensor, normalizer: Normalizer) -> Tensor:
    """The closed form: zero but on the action channels, d log pi / d a_raw times d a_raw / d x."""
    raw = normalizer.unnormalize(x)
    grad = torch.zeros_like(x)
    grad[..., LAYOUT.act] = _policy().grad_log_prob(raw[..., LAYOUT.obs], raw[..., LAYOUT.act]) * _chain(normalizer)[
        LAYOUT.act]
    return grad


# -- the guide -------------------------------------------------------------------------------------
@pytest.mark.parametrize("make_normalizer", [_gaussian_normalizer, _limits_normalizer])
def test_policy_guide_gradient_is_the_closed_form_on_action_channels_only(make_normalizer) -> None:  # noqa: ANN001
    normalizer = make_normalizer()
    guide = PolicyGuide(_policy(), LAYOUT, normalizer)
    with torch.no_grad():
        grad, value = guide.gradient(X, torch.full((B, H), 5), CTX)
    torch.testing.assert_close(grad, _expected_gradient(X, normalizer))
    assert torch.equal(grad[..., LAYOUT.obs], torch.zeros(B, H, 3)) and torch.equal(grad[..., LAYOUT.rew],
                                                                                   torch.zeros(B, H, 1))
    raw = normalizer.unnormalize(X)
    expected_value = _policy().log_prob(raw[..., LAYOUT.obs], raw[..., LAYOUT.act]).sum(-1)
    torch.testing.assert_close(value, expected_value)
    torch.testing.assert_close(guide.objective(X, torch.zeros(B, H), CTX), expected_value)
    assert all(p.grad is None for p in guide.policy.parameters())  # type: ignore[attr-defined]


def test_normalized_policy_gradient_has_unit_rms_per_action_entry() -> None:
    normalizer = _gaussian_normalizer()
    guide = PolicyGuide(_policy(), LAYOUT, normalizer, normalize_grad=True)
    grad, _ = guide.gradient(X, torch.zeros(B, H), CTX)
    plain = _expected_gradient(X, normalizer)
    for b in range(B):
        actions = grad[b, :, LAYOUT.act]
        torch.testing.assert_close(actions.pow(2).mean().sqrt(), torch.tensor(1.0))
        torch.testing.assert_close(actions, plain[b, :, LAYOUT.act] / plain[b, :, LAYOUT.act].pow(2).mean().sqrt())
    assert torch.equal(grad[..., LAYOUT.obs], torch.zeros(B, H, 3))


def test_policy_guide_checks_the_layout() -> None:
    with pytest.raises(ValueError, match="obs_dim=3, act_dim=2 but the diffusion model's layout has obs_dim=4"):
        PolicyGuide(_policy(), TrajectoryLayout(4, 2), GaussianNormalizer(torch.zeros(6), torch.ones(6)))
    with pytest.raises(ValueError, match="act_dim=0"):
        PolicyGuide(_policy(), TrajectoryLayout(3, 0), GaussianNormalizer(torch.zeros(3), torch.ones(3)))


# -- guided sampling ---------------------------------------------------------------------------------
def _identity_x0(x_t: Tensor, levels: Tensor) -> Tensor:
    return x_t.clone()


@pytest.mark.parametrize("n_guide_steps", [1, 2])
def test_guided_sampling_moves_actions_by_the_closed_form_and_leaves_states_alone(n_guide_steps: int) -> None:
    normalizer = _gaussian_normalizer()
    guide = PolicyGuide(_policy(), LAYOUT, normalizer)
    sampler = Sampler(NoiseSchedule(10, prediction="x0"))
    single = torch.tensor([10, 0]).unsqueeze(1).expand(2, H)  # one row to level 0: the result is the estimate
    guidance = Guidance(guide, scale=0.05, n_guide_steps=n_guide_steps, t_stopgrad=0, scale_grad_by_std=False,
                        apply_to=GuideTarget.x0)
    out = sampler.sample(_identity_x0, (B, H, D), single, x_init=X, guidance=guidance)
    expected = X.clone()
    for _ in range(n_guide_steps):
        expected = expected + 0.05 * _expected_gradient(expected, normalizer)
    torch.testing.assert_close(out, expected)
    assert torch.equal(out[..., LAYOUT.obs], X[..., LAYOUT.obs]) and torch.equal(out[..., LAYOUT.rew],
                                                                                 X[..., LAYOUT.rew])
    assert not torch.equal(out[..., LAYOUT.act], X[..., LAYOUT.act])
    # Guidance raises the target policy's likelihood.
    assert (guide.objective(out, torch.zeros(B, H), CTX) > guide.objective(X, torch.zeros(B, H), CTX)).all()


def _unet() -> TemporalUnet:
    torch.manual_seed(0)
    return TemporalUnet(transition_dim=D, horizon=H, dim=8, dim_mults=(1, 2)).eval()


def _constraints() -> Constraints:
    mask = torch.zeros(B, H, D, dtype=torch.bool)
    mask[:, 0, LAYOUT.obs] = True
    mask[:, 0, 3] = True  # one inpainted action entry
    return Constraints(mask, torch.randn(B, H, D, generator=torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
@pytest.mark.parametrize("apply_to", list(GuideTarget))
@pytest.mark.parametrize("schedule", ["constant", "pgd"])
def test_zero_policy_guidance_equals_unguided_sampling_bitwise(kind: str, apply_to: GuideTarget,
                                                               schedule: str) -> None:
    sampler, matrix = make_sampler(NoiseSchedule(10), kind, sampling_steps=4, horizon=H)
    unet, constraints = _unet(), _constraints()
    guide = PolicyGuide(_policy(), LAYOUT, _gaussian_normalizer(), normalize_grad=True)

    def run(scale: float | None) -> Tensor:
        guidance = None if scale is None else Guidance(guide, scale=scale, t_stopgrad=0, apply_to=apply_to,
                                                       schedule=GuidanceSchedule(schedule))
        return sampler.sample(unet, (B, H, D), matrix, constraints=constraints,
                              generator=torch.Generator().manual_seed(5), guidance=guidance)

    plain = run(None)
    assert torch.equal(plain, run(0.0))
    moved = run(1.0)
    assert not torch.equal(plain, moved)
    assert torch.equal(moved[constraints.mask], constraints.values[constraints.mask])  # inpainting holds
    assert torch.isfinite(moved).all()


# -- schedules -------------------------------------------------------------------------------------
def test_schedule_coefficients_match_hand_written_values() -> None:
    level_from, level_to = torch.tensor([[10, 6, 2, 1]]), torch.tensor([[6, 2, 0, 0]])
    expected = {
        "constant": [1.0, 1.0, 1.0, 1.0],
        "linear": [1.0, 0.6, 0.2, 0.1],
        # (1 - cos(pi u)) / 2 at u = 1, 0.6, 0.2, 0.1
        "cosine": [1.0, 0.6545084972, 0.0954915028, 0.0244717419],
        # u + 0.3 sin(pi level_to / T), zero on the final step: 1 + 0.3 sin(0.6 pi), 0.6 + 0.3 sin(0.2 pi)
        "pgd": [1.2853169549, 0.7763355757, 0.0, 0.0],
    }
    for kind, values in expected.items():
        got = schedule_coefficient(kind, level_from, level_to, 10)
        assert got.dtype == torch.float32 and got.shape == (1, 4)
        torch.testing.assert_close(got, torch.tensor([values]), rtol=0, atol=1e-7, msg=kind)


def test_schedule_coefficients_are_per_token() -> None:
    # Diffusion Forcing style rows: tokens at different levels in one row.
    level_from = torch.tensor([[8, 4, 0], [2, 8, 8]])
    level_to = torch.tensor([[4, 0, 0], [0, 4, 8]])
    torch.testing.assert_close(schedule_coefficient("linear", level_from, level_to, 8),
                               torch.tensor([[1.0, 0.5, 0.0], [0.25, 1.0, 1.0]]))
    s = 0.3 * math.sin(math.pi / 2)
    torch.testing.assert_close(schedule_coefficient("pgd", level_from, level_to, 8),
                               torch.tensor([[1.0 + s, 0.0, 0.0], [0.0, 1.0 + s, 1.0]]))


class LinearGuide:
    """v(x) = <w, x>: the gradient is w everywhere."""

    def __init__(self, w: Tensor) -> None:
        self.w = w
        self.calls = 0

    def objective(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
        return (x * self.w).sum(dim=(1, 2))

    def gradient(self, x: Tensor, levels: Tensor, context: GuideContext) -> GuideOutput:
        self.calls += 1
        return GuideOutput(self.w.expand_as(x).clone(), self.objective(x, levels, context))


@pytest.mark.parametrize(("schedule", "first", "second"), [("linear", 1.0, 0.5), ("pgd", 1.3, 0.0),
                                                           ("cosine", 1.0, 0.5)])
def test_the_sampler_scales_each_tokens_step_by_its_coefficient(schedule: str, first: float, second: float) -> None:
    sampler = Sampler(NoiseSchedule(4, prediction="x0"))
    matrix = torch.tensor([[4, 4], [2, 4], [0, 4], [0, 2], [0, 0]])  # token 1 waits while token 0 goes
    seen: list[Tensor] = []

    def spy(x_t: Tensor, levels: Tensor) -> Tensor:
        seen.append(x_t.clone())
        return x_t.clone()

    guide = LinearGuide(torch.ones(1, 2, 1))
    guidance = Guidance(guide, scale=1.0, n_guide_steps=1, t_stopgrad=0, scale_grad_by_std=False,
                        schedule=GuidanceSchedule(schedule))
    sampler.sample(spy, (1, 2, 1), matrix, x_init=torch.zeros(1, 2, 1), guidance=guidance)
    # Row 0: token 0 (4 -> 2) moves by c(4 -> 2); token 1 waits.
    torch.testing.assert_close(seen[0], torch.tensor([[[first], [0.0]]]), rtol=0, atol=1e-6)
    # Row 1: token 0 (2 -> 0) moves by c(2 -> 0) from where row 0 left it.
    after, _ = sampler.step(seen[0], seen[0], torch.tensor([[4, 4]]), torch.tensor([[2, 4]]))
    torch.testing.assert_close(seen[1][0, 0], after[0, 0] + second, rtol=0, atol=1e-6)
    # Rows 2 and 3: token 1 takes the same two steps.
    torch.testing.assert_close(seen[2][0, 1], torch.tensor([first]), rtol=0, atol=1e-6)
    if schedule == "pgd":  # the final steps are unguided: the guide is not even called
        assert guide.calls == 2


def test_unknown_schedules_fail_with_the_allowed_ones() -> None:
    message = r"guidance.schedule must be one of \['constant', 'linear', 'cosine', 'pgd'\], got 'exp'"
    with pytest.raises(ValueError, match=message):
        Guidance(LinearGuide(torch.ones(1)), schedule="exp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        schedule_coefficient("exp", torch.ones(1, 1), torch.zeros(1, 1), 10)
    with pytest.raises(Exception, match="exp"):
        as_config({"guidance": {"schedule": "exp"}})


# -- composite guides ------------------------------------------------------------------------------
def test_composite_gradient_and_objective_are_weighted_sums() -> None:
    policy_guide = PolicyGuide(_policy(), LAYOUT, _gaussian_normalizer())
    linear = LinearGuide(torch.randn(1, H, D, generator=torch.Generator().manual_seed(6)))
    composite = CompositeGuide([(linear, 0.3), (policy_guide, 2.0)])
    levels = torch.full((B, H), 0.25)
    grad, value = composite.gradient(X, levels, CTX)
    a, b = linear.gradient(X, levels, CTX), policy_guide.gradient(X, levels, CTX)
    torch.testing.assert_close(grad, 0.3 * a.gradient + 2.0 * b.gradient)
    torch.testing.assert_close(value, 0.3 * a.value + 2.0 * b.value)
    torch.testing.assert_close(composite.objective(X, levels, CTX), value)
    with pytest.raises(ValueError, match="at least one"):
        CompositeGuide([])


# -- building guidance from the config -----------------------------------------------------------
@pytest.fixture
def model() -> TrainedModel:
    return TrainedModel(denoiser=nn.Identity(), schedule=NoiseSchedule(10), normalizer=_gaussian_normalizer(),
                        layout=LAYOUT, config=Config(), horizon=H, step=0, path=Path("model.pt"))


@pytest.fixture
def policy_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(loading, "_LOADERS", loading._LOADERS.copy())
    loading.register_policy_loader("linear", lambda path, std, vn: LinearGaussianPolicy(WEIGHT, BIAS, std=std))
    (tmp_path / "linear.pt").write_bytes(b"")
    return f"linear:{tmp_path / 'linear.pt'}"


def test_build_guidance_for_each_kind(model: TrainedModel, policy_spec: str) -> None:
    value_guide = LinearGuide(torch.ones(1, H, D))
    shared = dict(n_guide_steps=3, t_stopgrad=1, scale_grad_by_std=False, apply_to=GuideTarget.x0)
    cfg = GuidanceConfig(kind="none", scale=0.2, policy=policy_spec, policy_scale=0.7, policy_std=0.4,
                         schedule=GuidanceSchedule.pgd, normalize_grad=True, **shared)  # type: ignore[arg-type]
    assert build_guidance(cfg, model) is None
    cfg.kind = "value"
    assert build_guidance(cfg, model, value_guide=value_guide) == Guidance(
        value_guide, scale=0.2, schedule=GuidanceSchedule.pgd, **shared)  # type: ignore[arg-type]
    cfg.kind = "policy"
    policy = build_guidance(cfg, model)
    assert policy is not None and policy.scale == 0.7 and policy.schedule is GuidanceSchedule.pgd
    assert isinstance(policy.guide, PolicyGuide) and policy.guide.normalize_grad
    assert torch.allclose(policy.guide.policy.log_std, torch.full((2,), math.log(0.4)))  # type: ignore[attr-defined]
    cfg.kind = "value_policy"
    both = build_guidance(cfg, model, value_guide=value_guide)
    assert both is not None and both.scale == 1.0 and both.n_guide_steps == 3
    assert isinstance(both.guide, CompositeGuide)
    assert [w for _, w in both.guide.terms] == [0.2, 0.7] and both.guide.terms[0][0] is value_guide


def test_build_guidance_errors(model: TrainedModel, policy_spec: str) -> None:
    with pytest.raises(ValueError, match="guidance.kind=value needs a value guide"):
        build_guidance(GuidanceConfig(kind="value"), model)
    with pytest.raises(ValueError, match="guidance.kind=value_policy needs a value guide"):
        build_guidance(GuidanceConfig(kind="value_policy", policy=policy_spec), model)
    with pytest.raises(ValueError, match=r"guidance.kind=policy needs guidance.policy='<kind>:<path>' \(kinds: "
                                         r"sb3-sac, sb3-td3, bc, offline, linear\)"):
        build_guidance(GuidanceConfig(kind="policy"), model)
    with pytest.raises(ValueError, match="unknown kind 'sac'"):
        build_guidance(GuidanceConfig(kind="policy", policy="sac:x.zip"), model)
