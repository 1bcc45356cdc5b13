"""Target policies: densities against torch.distributions and stable-baselines3's own, loading, errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import Tensor
from torch.distributions import AffineTransform, Normal, TanhTransform, TransformedDistribution

from diffplan.baselines import BCTrainer
from diffplan.config import BCConfig
from diffplan.data import Episodes
from diffplan.policies import (
    GaussianPolicy,
    LinearGaussianPolicy,
    SB3SACPolicy,
    TargetPolicy,
    gaussian_log_prob,
    load_target_policy,
    loading,
    policy_kinds,
    register_policy_loader,
    tanh_gaussian_log_prob,
)

OBS_DIM, ACT_DIM = 3, 2
LOW = np.array([-1.0, 0.0], dtype=np.float32)  # a non-symmetric action box
HIGH = np.array([3.0, 0.5], dtype=np.float32)


def _box_actions(shape: tuple[int, ...], seed: int, margin: float = 0.95) -> tuple[Tensor, Tensor]:
    """Actions strictly inside the box (env units) and the same in SB3's [-1, 1] scale."""
    scaled = (torch.rand(*shape, ACT_DIM, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * margin
    low, high = torch.from_numpy(LOW), torch.from_numpy(HIGH)
    return low + (scaled + 1) / 2 * (high - low), scaled


# -- the two densities ----------------------------------------------------------------------------
def test_gaussian_log_prob_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    mean, log_std, actions = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g) * 0.5, torch.randn(5, 3)
    expected = Normal(mean, log_std.exp()).log_prob(actions).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(mean, log_std, actions), expected)


def test_tanh_gaussian_log_prob_matches_transformed_distribution_on_a_non_symmetric_box() -> None:
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(6, ACT_DIM, generator=g, dtype=torch.float64)
    log_std = torch.randn(6, ACT_DIM, generator=g, dtype=torch.float64) * 0.3
    low, high = torch.from_numpy(LOW).double(), torch.from_numpy(HIGH).double()
    actions, _ = _box_actions((6,), seed=2)
    actions = actions.double()
    dist = TransformedDistribution(
        Normal(mean, log_std.exp()), [TanhTransform(), AffineTransform(loc=(low + high) / 2, scale=(high - low) / 2)]
    )
    expected = dist.log_prob(actions).sum(-1)
    got = tanh_gaussian_log_prob(mean, log_std, actions, low=low, high=high)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    # Actions on the bound stay finite, and so do their gradients.
    edge = torch.stack([low, high]).requires_grad_(True)
    value = tanh_gaussian_log_prob(mean[:2], log_std[:2], edge, low=low, high=high)
    (grad,) = torch.autograd.grad(value.sum(), edge)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()


def test_linear_gaussian_policy_log_prob_and_closed_form_gradient() -> None:
    g = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(ACT_DIM, OBS_DIM, generator=g), torch.randn(ACT_DIM, generator=g)
    policy = LinearGaussianPolicy(weight, bias, std=[0.5, 2.0])
    assert isinstance(policy, TargetPolicy) and (policy.obs_dim, policy.act_dim) == (OBS_DIM, ACT_DIM)
    obs, actions = torch.randn(4, 7, OBS_DIM, generator=g), torch.randn(4, 7, ACT_DIM, generator=g)
    expected = Normal(obs @ weight.T + bias, torch.tensor([0.5, 2.0])).log_prob(actions).sum(-1)
    torch.testing.assert_close(policy.log_prob(obs, actions), expected)
    leaf = actions.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(policy.log_prob(obs, leaf).sum(), leaf)
    torch.testing.assert_close(policy.grad_log_prob(obs, actions), grad)
    with pytest.raises(ValueError, match="positive and finite"):
        LinearGaussianPolicy(weight, bias, std=0.0)
    with pytest.raises(ValueError, match="act_dim=2 entries"):
        LinearGaussianPolicy(weight, bias, std=[1.0, 1.0, 1.0])


# -- stable-baselines3 agents -------------------------------------------------------------------
class BoxEnv(gymnasium.Env):  # type: ignore[type-arg]
    """Spaces only: 3 observations, 2 actions in a non-symmetric box."""

    observation_space = spaces.Box(-10.0, 10.0, (OBS_DIM,), np.float32)
    action_space = spaces.Box(LOW, HIGH, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(OBS_DIM, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.zeros(OBS_DIM, np.float32), 0.0, False, False, {}


def _agent(algo: str, path: Path) -> Any:
    """A tiny SB3 agent with perturbed (non-trivial) actor weights, saved to ``path``."""
    import stable_baselines3

    model = getattr(stable_baselines3, algo)("MlpPolicy", BoxEnv(), policy_kwargs=dict(net_arch=[16]),
                                             buffer_size=64, learning_starts=0, device="cpu", seed=0)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.policy.actor.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model.save(str(path))
    return model


def _vecnormalize(path: Path) -> Any:
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    venv = VecNormalize(DummyVecEnv([BoxEnv]), norm_obs=True, norm_reward=False, clip_obs=2.0)
    venv.obs_rms.mean = np.array([1.0, -2.0, 0.5])
    venv.obs_rms.var = np.array([4.0, 0.25, 1.0])
    venv.save(str(path))
    return venv


def _observations(seed: int, shape: tuple[int, ...] = (4, 5)) -> Tensor:
    return torch.randn(*shape, OBS_DIM, generator=torch.Generator().manual_seed(seed)) * 3


def _assert_finite_action_gradient(policy: TargetPolicy, obs: Tensor, actions: Tensor) -> None:
    leaf = actions.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(policy.log_prob(obs, leaf).sum(), leaf)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("normalized", [False, True])
def test_sb3_sac_matches_sb3s_own_distribution(tmp_path: Path, normalized: bool) -> None:
    model = _agent("SAC", tmp_path / "sac.zip")
    venv = _vecnormalize(tmp_path / "sac_vecnorm.pkl") if normalized else None  # named, never found implicitly
    policy = load_target_policy(f"sb3-sac:{tmp_path / 'sac.zip'}", trust_pickle=True,
                                vecnormalize=str(tmp_path / "sac_vecnorm.pkl") if normalized else None)
    assert isinstance(policy, SB3SACPolicy) and (policy.obs_dim, policy.act_dim) == (OBS_DIM, ACT_DIM)
    obs = _observations(0)
    actions, scaled = _box_actions((4, 5), seed=1)
    seen = obs.reshape(-1, OBS_DIM)
    if venv is not None:
        seen = torch.from_numpy(venv.normalize_obs(seen.numpy())).float()
        assert (seen.abs() == 2.0).any()  # some observations are clipped
    actor = model.policy.actor
    with torch.no_grad():
        mean, log_std, _ = actor.get_action_dist_params(seen)
        dist = actor.action_dist.proba_distribution(mean, log_std)
        half = torch.from_numpy((HIGH - LOW) / 2)
        expected = dist.log_prob(scaled.reshape(-1, ACT_DIM)) - torch.log(half).sum()
        got = policy.log_prob(obs, actions)
        # SB3 adds 1e-6 inside its log(1 - tanh^2): a difference of at most ~1e-5 here (plus float32
        # rounding of the large densities of means far outside the box).
        torch.testing.assert_close(got.reshape(-1), expected, rtol=1e-5, atol=1e-4)
        # The deterministic action is SB3's own predict (which takes what the agent saw).
        deterministic, _ = model.predict(seen.numpy(), deterministic=True)
        mode = policy.unscale(torch.tanh(policy.distribution(obs)[0]))
        np.testing.assert_allclose(mode.reshape(-1, ACT_DIM).numpy(), deterministic, atol=1e-5)
    _assert_finite_action_gradient(policy, obs, actions)
    on_bounds = torch.from_numpy(np.stack([LOW, HIGH] * 10)).reshape(4, 5, ACT_DIM)
    leaf = on_bounds.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(policy.log_prob(obs, leaf).sum(), leaf)
    assert torch.isfinite(grad).all()
    # The pickle next to the zip is not loaded unless named: without it the agent sees raw observations.
    if normalized:
        raw = load_target_policy(f"sb3-sac:{tmp_path / 'sac.zip'}", trust_pickle=True)
        assert isinstance(raw, SB3SACPolicy) and raw.obs_normalizer is None


@pytest.mark.parametrize("normalized", [False, True])
def test_sb3_td3_is_a_gaussian_around_sb3s_action(tmp_path: Path, normalized: bool) -> None:
    model = _agent("TD3", tmp_path / "td3.zip")
    pickle_path = tmp_path / "stats.pkl"
    venv = _vecnormalize(pickle_path) if normalized else None
    policy = load_target_policy(f"sb3-td3:{tmp_path / 'td3.zip'}", std=0.3, trust_pickle=True,
                                vecnormalize=str(pickle_path) if normalized else None)
    assert isinstance(policy, GaussianPolicy)
    obs = _observations(2)
    actions, _ = _box_actions((4, 5), seed=3)
    seen = obs.reshape(-1, OBS_DIM).numpy()
    if venv is not None:
        seen = venv.normalize_obs(seen)
    with torch.no_grad():
        scaled = model.policy.actor(torch.as_tensor(seen, dtype=torch.float32)).numpy()
        mean = torch.from_numpy(model.policy.unscale_action(scaled)).reshape(4, 5, ACT_DIM)
        expected = Normal(mean, 0.3).log_prob(actions).sum(-1)
        # Log-likelihoods near -60 in float32: a relative tolerance of 1e-6 is a few ulps.
        torch.testing.assert_close(policy.log_prob(obs, actions), expected, rtol=1e-6, atol=1e-5)
        deterministic, _ = model.predict(seen, deterministic=True)
        np.testing.assert_allclose(policy.mean_action(obs).reshape(-1, ACT_DIM).numpy(), deterministic, atol=1e-5)
    _assert_finite_action_gradient(policy, obs, actions)
    # Parameters are frozen: guiding never touches the agent.
    assert all(not p.requires_grad for p in policy.parameters())


# -- the BC policy --------------------------------------------------------------------------------
def test_bc_checkpoint_is_a_gaussian_around_the_bc_action(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 50
    episodes = Episodes.from_arrays(
        observations=rng.normal(size=(n, OBS_DIM)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(n, ACT_DIM)).astype(np.float32),
        rewards=np.zeros(n, np.float32), terminals=np.zeros(n, bool), timeouts=np.arange(n) == n - 1,
    )
    cfg = BCConfig(hidden_sizes=[8], device="cpu", progress=False, run_dir=str(tmp_path))
    trainer = BCTrainer(cfg, episodes, task="box", dataset_info={"path": "x", "sha256": "0" * 64})
    trainer.save()
    policy = load_target_policy(f"bc:{trainer.checkpoint_path}", std=0.2)
    obs = _observations(4)
    actions, _ = _box_actions((4, 5), seed=5)
    with torch.no_grad():
        expected = Normal(trainer.network(obs), 0.2).log_prob(actions).sum(-1)
    torch.testing.assert_close(policy.log_prob(obs, actions), expected)
    _assert_finite_action_gradient(policy, obs, actions)
    with pytest.raises(ValueError, match="normalizes its observations itself"):
        load_target_policy(f"bc:{trainer.checkpoint_path}", vecnormalize=str(trainer.checkpoint_path))


# -- specs, errors, the registry -----------------------------------------------------------------
def test_bad_specs_fail_with_the_spec_the_kinds_and_the_fix(tmp_path: Path) -> None:
    assert policy_kinds()[:3] == ["sb3-sac", "sb3-td3", "bc"]
    with pytest.raises(ValueError, match=r"policy spec 'agent.zip' must be '<kind>:<path>' with kind one of "
                                         r"sb3-sac, sb3-td3, bc"):
        load_target_policy("agent.zip")
    with pytest.raises(ValueError, match=r"policy spec 'ppo:agent.zip' has unknown kind 'ppo'; use one of "
                                         r"sb3-sac, sb3-td3, bc"):
        load_target_policy("ppo:agent.zip")
    missing = tmp_path / "missing.zip"
    with pytest.raises(ValueError, match=rf"policy spec 'sb3-sac:{missing}': no file {missing}; point"):
        load_target_policy(f"sb3-sac:{missing}")
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="no VecNormalize pickle"):
        load_target_policy(f"sb3-sac:{junk}", vecnormalize=str(tmp_path / "none.pkl"))
    with pytest.raises(ValueError, match="cannot load .*junk.zip as a stable-baselines3 SAC model"):
        load_target_policy(f"sb3-sac:{junk}", trust_pickle=True)


def test_registered_loaders_are_used_and_guarded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "_LOADERS", loading._LOADERS.copy())
    calls: list[tuple[Path, float, Path | None]] = []

    def fixed(path: Path, std: float, vecnormalize: Path | None) -> TargetPolicy:
        calls.append((path, std, vecnormalize))
        return LinearGaussianPolicy(torch.zeros(ACT_DIM, OBS_DIM), std=std)

    register_policy_loader("td3bc", fixed)
    (tmp_path / "agent.pt").write_bytes(b"")
    policy = load_target_policy(f"td3bc:{tmp_path / 'agent.pt'}", std=0.5)
    assert isinstance(policy, LinearGaussianPolicy) and calls == [(tmp_path / "agent.pt", 0.5, None)]
    assert "td3bc" in policy_kinds()
    with pytest.raises(ValueError, match="registered already"):
        register_policy_loader("td3bc", fixed)
    register_policy_loader("td3bc", fixed, replace=True)
    with pytest.raises(ValueError, match="free of ':'"):
        register_policy_loader("a:b", fixed)
    register_policy_loader("broken", lambda path, std, vn: object())  # type: ignore[arg-type,return-value]
    (tmp_path / "x").write_bytes(b"")
    with pytest.raises(TypeError, match="not a TargetPolicy"):
        load_target_policy(f"broken:{tmp_path / 'x'}")
    assert math.isfinite(float(policy.log_prob(torch.zeros(OBS_DIM), torch.zeros(ACT_DIM))))
