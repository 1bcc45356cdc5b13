"""Schedule-matched training (train.noise_mode=schedule): the levels a model trains on are exactly
the level patterns the forcing planner asks its denoiser for."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from test_commands import tiny_config

from diffplan.config import Config, DiffusionConfig
from diffplan.data import LimitsNormalizer, TrajectoryLayout
from diffplan.diffusion.levels import planner_history_lengths, planner_level_patterns, schedule_levels, training_levels
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.enums import NoiseMode
from diffplan.planning.forcing import ForcingPlanner
from diffplan.planning.planner import planning_sampler
from diffplan.training.checkpoint import TrainedModel, load_trained_model
from diffplan.training.trainer import schedule_patterns

LAYOUT = TrajectoryLayout(obs_dim=4, act_dim=2)
H, T, S = 8, 10, 4


def test_history_lengths_follow_the_planner_over_an_episode() -> None:
    assert planner_history_lengths(8, 3) == [0, 3, 6, 8]
    assert planner_history_lengths(6, 3) == [0, 3, 6]
    assert planner_history_lengths(0, 2) == [0]
    with pytest.raises(ValueError, match="execute >= 1"):
        planner_history_lengths(4, 0)


def test_schedule_levels_draw_stored_patterns() -> None:
    patterns = planner_level_patterns("pyramid", n_timesteps=T, sampling_steps=S, horizon=H, uncertainty=1,
                                      history_lengths=[0, 2, 3])
    assert [p.shape for p in patterns] == [(11, H), (9, H), (8, H)]
    levels = schedule_levels(4, patterns, torch.Generator().manual_seed(0), n_timesteps=T)
    # Stored draws for seed 0 (a change to the drawing order or the patterns shows here).
    assert levels.tolist() == [[0, 0, 0, 5, 8, 10, 10, 10], [0, 0, 0, 2, 5, 8, 10, 10],
                               [0, 0, 0, 2, 5, 8, 10, 10], [0, 0, 0, 0, 0, 0, 2, 5]]
    rows = {tuple(r.tolist()) for p in patterns for r in p}
    many = schedule_levels(500, patterns, torch.Generator().manual_seed(1), n_timesteps=T)
    assert {tuple(r.tolist()) for r in many} == rows  # only the patterns, and all of them
    mixed = schedule_levels(500, patterns, torch.Generator().manual_seed(1), n_timesteps=T, independent_p=0.5)
    outside = sum(tuple(r.tolist()) not in rows for r in mixed)
    assert 150 < outside < 300  # about half the windows are independent (some fall on a pattern)
    with pytest.raises(ValueError, match="needs the planner's level patterns"):
        training_levels("schedule", 4, H, T, torch.Generator())


class LevelSpy(torch.nn.Module):
    """A denoiser that records the integer levels it is asked for and predicts x0 = its input."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[tuple[int, ...]] = set()

    def forward(self, x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        for row in (levels * T).round().long():
            self.asked.add(tuple(row.tolist()))
        return x.clone()


def _model(denoiser: torch.nn.Module, config: Config) -> TrainedModel:
    mins, maxs = -torch.ones(6) * 3, torch.ones(6) * 3
    return TrainedModel(denoiser=denoiser, schedule=NoiseSchedule(T), normalizer=LimitsNormalizer(mins, maxs),
                        layout=LAYOUT, config=config, horizon=H, step=0, path=Path("memory"))


@pytest.mark.parametrize("kind", ["pyramid", "autoregressive", "full_sequence"])
def test_trained_patterns_are_exactly_those_the_forcing_planner_asks_for(kind: str) -> None:
    config = Config()
    config.train.noise_mode = NoiseMode.schedule
    config.diffusion = DiffusionConfig(n_timesteps=T, sampling_steps=S, schedule_matrix=kind, uncertainty=1)
    config.planner.forcing.execute, config.planner.forcing.n_history = 2, 5
    spy = LevelSpy()
    planner = ForcingPlanner(_model(spy, config), diffusion=config.diffusion, execute=2, n_history=5)
    planner.rollout(torch.zeros(2, 4), n_steps=14, generator=torch.Generator().manual_seed(0))
    trained = {tuple(r.tolist()) for p in schedule_patterns(config, H)[0] for r in p}
    assert spy.asked == trained


def test_planning_with_other_patterns_warns(caplog: pytest.LogCaptureFixture) -> None:
    config = Config()
    config.train.noise_mode = NoiseMode.schedule
    config.diffusion = DiffusionConfig(n_timesteps=T, sampling_steps=S, schedule_matrix="pyramid", uncertainty=1)
    model = _model(LevelSpy(), config)
    with caplog.at_level(logging.WARNING):
        planning_sampler(model, config.diffusion)
        assert not caplog.records
        planning_sampler(model, DiffusionConfig(n_timesteps=T, sampling_steps=S, schedule_matrix="pyramid",
                                                uncertainty=2))
    assert "trained on the level patterns of schedule_matrix=pyramid, uncertainty=1.0" in caplog.text
    caplog.clear()
    config.planner.forcing.execute, config.planner.forcing.n_history = 2, 5
    with caplog.at_level(logging.WARNING):
        ForcingPlanner(model, diffusion=config.diffusion, execute=2, n_history=5)
        # Other steps between plans that meet only history lengths the model was trained on (0, 2): silent.
        ForcingPlanner(model, diffusion=config.diffusion, execute=3, n_history=2)
        assert not caplog.records
        ForcingPlanner(model, diffusion=config.diffusion, execute=1, n_history=5)
    assert "trained on the histories of planner.forcing.execute=2, planner.forcing.n_history=5" in caplog.text
    assert "history lengths [0, 2, 4, 5]) but plans with execute=1, n_history=5 (lengths [0, 1, 2, 3, 4, 5])" \
        in caplog.text


def test_schedule_matched_training_through_the_trainer(tmp_path: Path) -> None:
    """A tiny transformer trained with noise_mode=schedule: the checkpoint records the mode and the
    settings of the patterns, clean tokens are out of the loss, and a forcing planner loads it silently."""
    from diffplan.pipeline.collect import run_collect
    from diffplan.pipeline.train import run_train

    cfg = tiny_config(tmp_path, ["model=transformer", "model.transformer.d_model=16", "model.transformer.n_layers=1",
                                 "model.transformer.n_heads=2",
                                 "train.noise_mode=schedule", "train.schedule_independent_p=0.1",
                                 "diffusion.schedule_matrix=pyramid", "planner.forcing.execute=4", "task.horizon=16"])
    run_collect(cfg)
    summary = run_train(cfg)
    assert summary.steps == 4 and torch.isfinite(torch.tensor(summary.final_loss))
    model = load_trained_model(summary.checkpoint)
    assert model.config.train.noise_mode is NoiseMode.schedule and model.config.planner.forcing.execute == 4
    assert model.config.train.schedule_independent_p == 0.1

    with pytest.raises(ValueError, match=r"train.schedule_independent_p=1.5 is out of range"):
        tiny_config(tmp_path, ["train.noise_mode=schedule", "train.schedule_independent_p=1.5"])
    with pytest.raises(ValueError, match="schedule trains for the forcing planner: need planner.forcing.n_history >= 0 "
                                         "and planner.forcing.n_history \\+ planner.forcing.execute <= horizon - 1"):
        bad = tiny_config(tmp_path, ["train.noise_mode=schedule", "planner.forcing.execute=40"])
        schedule_patterns(bad, bad.task.horizon)


def test_schedule_matched_windows_give_the_current_state_after_the_history() -> None:
    from diffplan.diffusion.conditioning import conditioning_mask
    from diffplan.training.trainer import current_state_mask

    mask = conditioning_mask(LAYOUT, H, start=True, goal_dims=[0, 1])
    moved = current_state_mask(mask, torch.tensor([0, 3, 7]), LAYOUT, start=True)
    assert moved.shape == (3, H, 6)
    for window, token in enumerate([0, 3, 7]):
        given = moved[window].nonzero().tolist()
        expected = {(token, c) for c in range(4)} | {(H - 1, 0), (H - 1, 1)}  # current state, goal position
        assert {tuple(g) for g in given} == expected
    assert torch.equal(current_state_mask(mask, torch.tensor([3]), LAYOUT, start=False)[0, 0], mask[0])
