"""Return conditioning with classifier-free guidance, and the inverse-dynamics head."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from diffplan.config import (
    Config,
    DiffusionConfig,
    ModelConfig,
    PlannerConfig,
    ReturnGuidanceConfig,
    TaskConfig,
    TrainConfig,
    UnetConfig,
)
from diffplan.data import Episodes
from diffplan.data.returns import (
    best_episodes,
    discounted_suffix_sums,
    episode_returns,
    normalized_returns_to_go,
    returns_to_go,
)
from diffplan.diffusion.classifier_free import ClassifierFreeGuidance
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.enums import ActionSource
from diffplan.models.factory import build_denoiser
from diffplan.models.inverse_dynamics import InverseDynamics, inverse_dynamics_loss, plan_actions
from diffplan.models.unet import TemporalUnet
from diffplan.planning.planner import GoalPlanner
from diffplan.training.checkpoint import CheckpointError, load_checkpoint, load_trained_model, save_checkpoint
from diffplan.training.trainer import Trainer

OBS_DIM, ACT_DIM, H = 3, 2, 8
LENGTHS = [40, 25, 40, 35]
SCALE, DISCOUNT = 20.0, 0.9


def _linear_episodes() -> Episodes:
    """Episodes of linear dynamics s' = A s + B a with random actions and rewards."""
    rng = np.random.default_rng(0)
    a_matrix = np.array([[0.9, 0.1, 0.0], [0.0, 0.8, 0.1], [0.1, 0.0, 0.9]])
    b_matrix = np.array([[0.5, 0.0], [0.0, 0.5], [0.3, -0.3]])
    observations, actions, timeouts = [], [], []
    for length in LENGTHS:
        state = rng.uniform(-1, 1, OBS_DIM)
        for _ in range(length):
            action = rng.uniform(-1, 1, ACT_DIM)
            observations.append(state)
            actions.append(action)
            state = a_matrix @ state + b_matrix @ action
        timeouts += [False] * (length - 1) + [True]
    n_rows = sum(LENGTHS)
    return Episodes.from_arrays(
        observations=np.array(observations, dtype=np.float32),
        actions=np.array(actions, dtype=np.float32),
        rewards=rng.uniform(0, 2, n_rows).astype(np.float32),
        terminals=np.zeros(n_rows, dtype=bool),
        timeouts=np.array(timeouts),
    )


@pytest.fixture(scope="module")
def episodes() -> Episodes:
    return _linear_episodes()


def _config(steps: int, *, inverse_dynamics: bool = False, dropout: float = 0.25, batch_size: int = 8,
            lr: float = 2e-4) -> Config:
    return Config(
        task=TaskConfig(name="linear", env_id="Linear-v0", dataset="linear.hdf5", horizon=H, goal_obs_dims=[],
                        velocity_obs_dims=[], return_scale=SCALE, return_discount=DISCOUNT),
        model=ModelConfig(unet=UnetConfig(dim=8, dim_mults=[1, 2], kernel_size=3), return_condition=True,
                          inverse_dynamics=inverse_dynamics, inverse_dynamics_hidden=[32, 32]),
        diffusion=DiffusionConfig(n_timesteps=10, sampling_steps=4),
        train=TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=2, ckpt_every=1000, log_every=5,
                          ema_decay=0.5, device="cpu", progress=False, condition_goal=False,
                          cond_dropout=dropout),
    )


def _conditioned_unet() -> TemporalUnet:
    torch.manual_seed(0)
    model = TemporalUnet(transition_dim=4, horizon=H, dim=8, dim_mults=(1, 2), return_condition=True).eval()
    assert model.null_condition is not None
    with torch.no_grad():  # a trained null embedding is not zero; make the two branches differ clearly
        model.null_condition.normal_()
    return model


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, H, 4, generator=generator)
    levels = torch.rand(3, 1, generator=generator).expand(3, H)
    condition = torch.tensor([0.2, 0.9, 1.5])
    return x, levels, condition


# -- the network and the guidance wrapper ----------------------------------------------------
@torch.no_grad()
def test_guidance_weight_zero_and_one_give_unconditional_and_conditional() -> None:
    model = _conditioned_unet()
    x, levels, condition = _inputs()
    uncond, cond = model(x, levels), model(x, levels, condition)
    assert not torch.allclose(uncond, cond, atol=1e-3)
    torch.testing.assert_close(ClassifierFreeGuidance(model, condition, 0.0)(x, levels), uncond, rtol=0, atol=1e-5)
    torch.testing.assert_close(ClassifierFreeGuidance(model, condition, 1.0)(x, levels), cond, rtol=0, atol=1e-5)
    # (Batch size changes CPU kernels in the last bits.) Exactly the halves of the one batched call:
    # conditional rows first, then the null condition.
    drop = torch.tensor([False] * 3 + [True] * 3)
    both = model(torch.cat([x, x]), torch.cat([levels, levels]), torch.cat([condition, condition]), drop)
    assert torch.equal(ClassifierFreeGuidance(model, condition, 0.0)(x, levels), both[3:])
    assert torch.equal(ClassifierFreeGuidance(model, condition, 1.0)(x, levels), both[:3])
    guided = ClassifierFreeGuidance(model, condition, 1.2)(x, levels)
    torch.testing.assert_close(guided, both[3:] + 1.2 * (both[:3] - both[3:]))


@torch.no_grad()
def test_guidance_runs_the_network_once_on_a_doubled_batch() -> None:
    model = _conditioned_unet()
    x, levels, condition = _inputs()
    batches: list[int] = []
    model.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0]))
    ClassifierFreeGuidance(model, condition, 1.2)(x, levels)
    assert batches == [6]
    with pytest.raises(ValueError, match="condition has 3 entries but the batch has 2"):
        ClassifierFreeGuidance(model, condition, 1.2)(x[:2], levels[:2])


def test_guidance_commutes_with_prediction_type_conversions() -> None:
    """Guiding epsilon outputs and converting to x0 equals guiding the converted x0 outputs."""
    schedule = NoiseSchedule(10, prediction="epsilon")
    generator = torch.Generator().manual_seed(2)
    x_t = torch.randn(2, H, 4, generator=generator)
    eps_cond, eps_uncond = torch.randn(2, 2, H, 4, generator=generator)
    level_ids = torch.full((2, H), 6)
    w = 1.7
    guided_eps = eps_uncond + w * (eps_cond - eps_uncond)
    x0_cond = schedule.pred_original_sample(x_t, eps_cond, level_ids)
    x0_uncond = schedule.pred_original_sample(x_t, eps_uncond, level_ids)
    torch.testing.assert_close(
        schedule.pred_original_sample(x_t, guided_eps, level_ids), x0_uncond + w * (x0_cond - x0_uncond)
    )


def test_condition_option_keeps_the_unconditional_network_unchanged() -> None:
    plain = build_denoiser(ModelConfig(unet=UnetConfig(dim=8, dim_mults=[1, 2])), transition_dim=4, horizon=H)
    conditioned = build_denoiser(ModelConfig(unet=UnetConfig(dim=8, dim_mults=[1, 2]), return_condition=True),
                                 transition_dim=4, horizon=H)
    extra = set(conditioned.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith(("condition_embedding.", "null_condition")) for k in extra)
    assert set(plain.state_dict()) <= set(conditioned.state_dict())
    x, levels, condition = _inputs()
    with pytest.raises(ValueError, match="without model.return_condition"):
        plain(x, levels, condition)
    with pytest.raises(ValueError, match=r"condition must have shape \(3,\)"):
        conditioned(x, levels, condition[:2])


# -- returns-to-go -----------------------------------------------------------------------------
def _naive_returns(episodes: Episodes, discount: float) -> np.ndarray:
    out = np.zeros(episodes.n_transitions)
    for start, length in zip(episodes.starts, episodes.lengths, strict=True):
        running = 0.0
        for t in reversed(range(start, start + length)):
            running = float(episodes.rewards[t]) + discount * running
            out[t] = running
    return out


@pytest.mark.parametrize("discount", [0.0, 0.9, 1.0])
def test_returns_to_go_match_a_loop_per_episode(episodes: Episodes, discount: float) -> None:
    np.testing.assert_allclose(returns_to_go(episodes, discount), _naive_returns(episodes, discount), rtol=1e-12)
    scaled = normalized_returns_to_go(episodes, discount, 4.0)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, _naive_returns(episodes, discount) / 4.0, rtol=1e-6)


def test_returns_to_go_of_a_long_stream_stay_exact() -> None:
    rewards = np.ones(5000)
    ends = np.zeros(5000, dtype=bool)
    ends[[999, 4999]] = True
    values = discounted_suffix_sums(rewards, ends, 0.99)
    assert values[999] == 1.0 and values[4999] == 1.0
    assert values[0] == pytest.approx((1 - 0.99**1000) / 0.01, rel=1e-12)
    with pytest.raises(ValueError, match="task.return_discount"):
        discounted_suffix_sums(rewards, ends, 1.5)


# -- training ----------------------------------------------------------------------------------
def test_condition_dropout_rate_and_values(episodes: Episodes, tmp_path: Path) -> None:
    trainer = Trainer(_config(10, batch_size=256), episodes, tmp_path, {})
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    windows: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: torch.Tensor) -> None:
        seen.append((kwargs["condition"], kwargs["drop"]))

    trainer.model.register_forward_hook(hook, with_kwargs=True)
    sample = trainer.windows.sample

    def recording_sample(batch_size: int, generator: torch.Generator) -> Any:
        batch = sample(batch_size, generator)
        windows.append((batch.episode, batch.start))
        return batch

    trainer.windows.sample = recording_sample  # type: ignore[method-assign]
    for _ in range(8):
        trainer.train_step()
    drop = torch.cat([d for _, d in seen])
    assert drop.dtype == torch.bool and drop.numel() == 8 * 256
    assert drop.float().mean().item() == pytest.approx(0.25, abs=0.04)
    # The condition is the normalized return-to-go at each window's first step.
    expected = _naive_returns(episodes, DISCOUNT) / SCALE
    rows = torch.cat([trainer.windows.episode_starts[episode] + start for episode, start in windows])
    np.testing.assert_allclose(torch.cat([c for c, _ in seen]).numpy(), expected[rows.numpy()], rtol=1e-5)
    assert not torch.equal(trainer.model.null_condition, torch.zeros(8))  # type: ignore[arg-type]

    never = Trainer(_config(10, batch_size=64, dropout=0.0), episodes, tmp_path / "never", {})
    always = Trainer(_config(10, batch_size=64, dropout=1.0), episodes, tmp_path / "always", {})
    for run, value in ((never, False), (always, True)):
        drops: list[torch.Tensor] = []
        run.model.register_forward_hook(lambda m, a, k, o, out=drops: out.append(k["drop"]), with_kwargs=True)
        run.train_step()
        assert bool(drops[0].all()) is value and bool(drops[0].any()) is value
    with pytest.raises(ValueError, match=r"train.cond_dropout must be in \[0, 1\]"):
        Trainer(_config(10, dropout=1.5), episodes, tmp_path / "bad", {})


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in trainer.ema.state_dict().items()})
    assert trainer.inverse_dynamics is not None and trainer.inverse_dynamics_ema is not None
    out.update({f"id.{k}": v for k, v in trainer.inverse_dynamics.state_dict().items()})
    out.update({f"id_ema.{k}": v for k, v in trainer.inverse_dynamics_ema.state_dict().items()})
    assert trainer.inverse_dynamics_optimizer is not None
    for index, state in trainer.inverse_dynamics_optimizer.state_dict()["state"].items():
        out.update({f"id_opt.{index}.{k}": v for k, v in state.items()})
    return out


def test_return_condition_and_inverse_dynamics_resume_bit_identically(episodes: Episodes, tmp_path: Path) -> None:
    straight = Trainer(_config(6, inverse_dynamics=True), episodes, tmp_path / "a", {})
    straight.train()
    first = Trainer(_config(3, inverse_dynamics=True), episodes, tmp_path / "b", {})
    first.train()
    second = Trainer(_config(6, inverse_dynamics=True), episodes, tmp_path / "b", {})
    assert second.train(resume=True).resumed_from == 3
    expected, got = _state(straight), _state(second)
    assert expected.keys() == got.keys()
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []
    assert torch.equal(straight.generator.get_state(), second.generator.get_state())
    payload = load_checkpoint(straight.checkpoint_path)
    assert set(payload["inverse_dynamics"]) == {"model", "ema", "optimizer"}
    assert json.loads(payload["config"])["model"]["return_condition"] is True


def test_old_checkpoints_without_the_new_keys_still_resume_and_load(episodes: Episodes, tmp_path: Path) -> None:
    cfg = _config(2)
    cfg.model = ModelConfig(unet=UnetConfig(dim=8, dim_mults=[1, 2], kernel_size=3))
    Trainer(cfg, episodes, tmp_path, {}).train()
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    config = json.loads(payload["config"])
    for section, keys in {"model": ("return_condition", "inverse_dynamics", "inverse_dynamics_hidden"),
                          "task": ("return_scale", "return_discount"), "train": ("cond_dropout",)}.items():
        for key in keys:
            del config[section][key]
    payload["config"] = json.dumps(config)
    save_checkpoint(tmp_path / "checkpoint.pt", payload)
    cfg = _config(3)  # absent keys take the schema defaults, which the current config must match
    cfg.model = ModelConfig(unet=UnetConfig(dim=8, dim_mults=[1, 2], kernel_size=3))
    cfg.task.return_scale, cfg.task.return_discount = 1.0, 0.99
    assert Trainer(cfg, episodes, tmp_path, {}).train().resumed_from == 2
    model = load_trained_model(tmp_path / "checkpoint.pt")
    assert not model.config.model.return_condition and model.inverse_dynamics is None


@pytest.fixture(scope="module")
def id_run(episodes: Episodes, tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, float]:
    trainer = Trainer(_config(80, inverse_dynamics=True, batch_size=16, lr=1e-2), episodes,
                      tmp_path_factory.mktemp("id"), {})
    before = _dataset_id_loss(trainer)
    trainer.train()
    return trainer, before


def _dataset_id_loss(trainer: Trainer) -> float:
    """Inverse-dynamics loss over every window of the dataset."""
    assert trainer.inverse_dynamics is not None
    batch = trainer.windows.windows(trainer.windows.window_episode, trainer.windows.window_start)
    obs, act = trainer.layout.obs, trainer.layout.act
    with torch.no_grad():
        return float(inverse_dynamics_loss(trainer.inverse_dynamics, batch.x[..., obs], batch.x[..., act]))


def test_inverse_dynamics_learns_linear_dynamics(id_run: tuple[Trainer, float]) -> None:
    trainer, before = id_run
    after = _dataset_id_loss(trainer)
    assert after < 0.1 * before, (before, after)
    assert after < 0.02


def test_inverse_dynamics_head_is_saved_and_loaded(id_run: tuple[Trainer, float]) -> None:
    trainer, _ = id_run
    assert trainer.inverse_dynamics is not None and trainer.inverse_dynamics_ema is not None
    ema = load_trained_model(trainer.checkpoint_path)
    raw = load_trained_model(trainer.checkpoint_path, use_ema=False)
    assert isinstance(ema.inverse_dynamics, InverseDynamics) and isinstance(raw.inverse_dynamics, InverseDynamics)
    for name, value in trainer.inverse_dynamics_ema.state_dict().items():
        assert torch.equal(ema.inverse_dynamics.state_dict()[name], value)
    for name, value in trainer.inverse_dynamics.state_dict().items():
        assert torch.equal(raw.inverse_dynamics.state_dict()[name], value)
    assert isinstance(ema.denoiser, TemporalUnet) and ema.denoiser.return_condition


# -- planning ----------------------------------------------------------------------------------
def _plan(trainer: Trainer, **planner: Any) -> Any:
    model = load_trained_model(trainer.checkpoint_path)
    goal_planner = GoalPlanner(model, planner=PlannerConfig(**planner), diffusion=trainer.cfg.diffusion,
                               goal_dims=[])
    observations = torch.tensor([[0.2, -0.1, 0.3], [0.0, 0.5, -0.4]])
    return model, goal_planner.plan(observations, torch.Generator().manual_seed(0), goals=torch.zeros(2, 0))


def test_planner_guides_towards_the_return_target(id_run: tuple[Trainer, float]) -> None:
    trainer, _ = id_run
    _, low = _plan(trainer, return_guidance=ReturnGuidanceConfig(0.1, 1.0))
    _, high = _plan(trainer, return_guidance=ReturnGuidanceConfig(2.0, 1.0))
    assert not torch.equal(low.observations, high.observations)
    # w = 0 ignores the target: the unconditional rows of the batched call do not depend on it.
    _, low0 = _plan(trainer, return_guidance=ReturnGuidanceConfig(0.1, 0.0))
    _, high0 = _plan(trainer, return_guidance=ReturnGuidanceConfig(2.0, 0.0))
    torch.testing.assert_close(low0.observations, high0.observations, rtol=0, atol=1e-6)


def test_planner_actions_from_inverse_dynamics(id_run: tuple[Trainer, float]) -> None:
    trainer, _ = id_run
    model, plan = _plan(trainer, action_source=ActionSource.inverse_dynamics)
    _, diffused = _plan(trainer, action_source=ActionSource.diffused)
    torch.testing.assert_close(plan.observations, diffused.observations)
    assert plan.actions.shape == (2, H, ACT_DIM) and plan.finite.all()
    layout, normalizer = model.layout, model.normalizer
    raw = torch.zeros(2, H, layout.transition_dim)
    raw[..., layout.obs] = plan.observations
    states = normalizer.normalize(raw)[..., layout.obs]
    assert model.inverse_dynamics is not None
    with torch.no_grad():
        expected = plan_actions(model.inverse_dynamics, states)
    raw[..., layout.act] = expected
    torch.testing.assert_close(plan.actions, normalizer.unnormalize(raw)[..., layout.act], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(plan.actions, diffused.actions)


def test_inverse_dynamics_source_needs_the_head(episodes: Episodes, tmp_path: Path) -> None:
    trainer = Trainer(_config(1), episodes, tmp_path, {})
    trainer.train()
    with pytest.raises(ValueError, match="model.inverse_dynamics=true"):
        _plan(trainer, action_source=ActionSource.inverse_dynamics)


def test_best_episodes_keep_the_highest_returns_in_the_datasets_order() -> None:
    from diffplan.data.identity import dataset_identity, dataset_record

    # Four episodes (the last cut by a timeout) with returns 3, 10, 1, 6.
    rewards = np.array([1, 2, 5, 5, 1, 0, 0, 2, 4], dtype=np.float32)
    terminals = np.array([0, 1, 0, 1, 0, 1, 0, 0, 0], dtype=bool)
    timeouts = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    n = len(rewards)
    episodes = Episodes.from_arrays(np.arange(n, dtype=np.float32)[:, None], np.zeros((n, 1), np.float32), rewards,
                                    terminals, timeouts, metadata={"task": "toy"})
    assert episode_returns(episodes).tolist() == [3, 10, 1, 6]
    assert best_episodes(episodes, 1.0) is episodes
    half = best_episodes(episodes, 0.5)  # 2 of 4: returns 10 and 6, in the file's order
    assert half.observations[:, 0].tolist() == [2, 3, 6, 7, 8]
    assert half.lengths.tolist() == [2, 3] and half.terminals.tolist() == [0, 1, 0, 0, 0]
    assert half.timeouts[-1] and half.metadata["selection"] == {"top_return_fraction": 0.5, "n_episodes": 2,
                                                                "of_episodes": 4}
    assert best_episodes(episodes, 0.6).n_episodes == 3  # ceil(0.6 x 4)
    assert dataset_identity(half) != dataset_identity(episodes)
    assert dataset_record("toy.hdf5", half)["top_return_fraction"] == 0.5
    assert dataset_record("toy.hdf5", episodes)["top_return_fraction"] == 1.0
    with pytest.raises(ValueError, match=r"task.top_return_fraction=0 must be in \(0, 1\]"):
        best_episodes(episodes, 0)



def test_return_settings_bind_only_return_conditioned_runs(episodes: Episodes, tmp_path: Path) -> None:
    """task.return_scale and task.return_discount shape only a return-conditioned model: an unconditioned
    run resumes when they change (the locomotion task files gained a return scale), a conditioned one
    is refused naming the setting."""
    plain = _config(2)
    plain.model = ModelConfig(unet=UnetConfig(dim=8, dim_mults=[1, 2], kernel_size=3))
    Trainer(plain, episodes, tmp_path / "plain", {}).train()
    plain = _config(3)
    plain.model = ModelConfig(unet=UnetConfig(dim=8, dim_mults=[1, 2], kernel_size=3))
    plain.task.return_scale, plain.task.return_discount = 550.0, 0.9
    assert Trainer(plain, episodes, tmp_path / "plain", {}).train().resumed_from == 2
    conditioned = _config(2)
    Trainer(conditioned, episodes, tmp_path / "conditioned", {}).train()
    assert conditioned.model.return_condition
    conditioned = _config(3)
    conditioned.task.return_scale = 550.0
    with pytest.raises(CheckpointError, match=r"task.return_scale=.*the current config has 550.0"):
        Trainer(conditioned, episodes, tmp_path / "conditioned", {}).train()
