"""Goal-conditioned value functions for the mazes: targets, relabelling, network, training, guidance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import training_state
from test_commands import tiny_config

from diffplan.config import Config
from diffplan.data import LimitsNormalizer, TrajectoryLayout
from diffplan.data.loading import load_episodes
from diffplan.guidance import GoalValueGuide, GuideContext
from diffplan.guidance.value import load_value_guide as value_guide
from diffplan.models.value import ValueNet
from diffplan.pipeline.collect import run_collect
from diffplan.pipeline.evaluate import run_evaluate
from diffplan.pipeline.train import run_train
from diffplan.pipeline.train_value import run_train_value
from diffplan.planning.planner import GoalPlanner
from diffplan.training.checkpoint import load_checkpoint, load_trained_model
from diffplan.training.value_targets import goal_reward_targets, relabel_goals
from diffplan.training.value_trainer import ValueTrainer, load_value_model


def test_goal_reward_targets_hand_computed() -> None:
    positions = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [2.0, 0.3]]], dtype=torch.float64)
    goals = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    valid = torch.tensor([[True, True, True, True]])
    # Tokens 2 (distance 0) and 3 (0.3) are within 0.45; token 1 (1.0) is not.
    expected = 0.5**2 + 0.5**3
    got = goal_reward_targets(positions, goals, valid, radius=0.45, discount=0.5)
    assert got.tolist() == [pytest.approx(expected)]
    # An invalid (padded after a timeout) token counts zero.
    valid[0, 3] = False
    assert goal_reward_targets(positions, goals, valid, radius=0.45, discount=0.5).tolist() == [pytest.approx(0.25)]
    # A radius of 1.0 includes token 1.
    assert goal_reward_targets(positions, goals, valid, radius=1.0, discount=1.0).tolist() == [pytest.approx(2.0)]
    with pytest.raises(ValueError, match=r"value.goal_radius must be > 0, got 0"):
        goal_reward_targets(positions, goals, valid, radius=0.0, discount=0.5)
    with pytest.raises(ValueError, match=r"value.discount must be in \[0, 1\], got 1.5"):
        goal_reward_targets(positions, goals, valid, radius=0.5, discount=1.5)


def test_relabel_goals_draws_window_positions_or_pool_positions() -> None:
    positions = torch.arange(5 * 6 * 2, dtype=torch.float32).view(5, 6, 2)
    pool = -torch.arange(40, dtype=torch.float32).view(20, 2) - 1.0
    own = relabel_goals(positions, pool, 1.0, torch.Generator().manual_seed(0))
    for b in range(5):
        assert any(torch.equal(own[b], positions[b, k]) for k in range(6))
    other = relabel_goals(positions, pool, 0.0, torch.Generator().manual_seed(0))
    assert all(any(torch.equal(other[b], row) for row in pool) for b in range(5))
    mixed = relabel_goals(positions, pool, 0.5, torch.Generator().manual_seed(1))
    again = relabel_goals(positions, pool, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(mixed, again)
    with pytest.raises(ValueError, match=r"value.goal_window_prob must be in \[0, 1\], got -0.1"):
        relabel_goals(positions, pool, -0.1, torch.Generator())


def test_goal_conditioned_value_net_reads_the_goal() -> None:
    torch.manual_seed(0)
    net = ValueNet(transition_dim=6, horizon=8, dim=8, dim_mults=(1, 2), goal_dim=2)
    x, levels = torch.randn(3, 8, 6), torch.rand(3, 8)
    goals = torch.randn(3, 2)
    out = net(x, levels, goals)
    assert out.shape == (3,)
    assert not torch.allclose(out, net(x, levels, goals + 1.0))  # the goal matters
    assert torch.allclose(net(x[:1], levels[:1], goals[:1]), out[:1], atol=1e-6)  # per sample
    with pytest.raises(ValueError, match=r"goal-conditioned: it takes goals of shape \(3, 2\) "
                                         r"\(observation entries \?\), got None"):
        net(x, levels)
    plain = ValueNet(transition_dim=6, horizon=8, dim=8, dim_mults=(1, 2))
    with pytest.raises(ValueError, match=r"trained without goals \(value.goal_conditioned=false\)"):
        plain(x, levels, goals)


@pytest.fixture(scope="module")
def maze(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    """A tiny collected umaze dataset, a 4-step diffusion model and a goal-conditioned value function
    trained for 200 steps on it."""
    folder = tmp_path_factory.mktemp("goal-value")
    cfg = tiny_config(folder, _value_overrides(200))
    run_collect(cfg)
    run_train(cfg)
    summary = run_train_value(cfg)
    assert summary.steps == 200 and np.isfinite(summary.final_loss)
    return folder, cfg


def _value_overrides(steps: int, run_dir: str | None = None) -> list[str]:
    out = [
        "value.goal_conditioned=true", "value.dim=8", "value.dim_mults=[1,2]", f"value.steps={steps}",
        "value.batch_size=16", "value.warmup_steps=5", "value.lr=1e-3", "value.ckpt_every=1000",
        "value.progress=false", "value.threads=1", "value.discount=0.99", "value.ema_decay=0.9",
    ]
    return out + ([f"value.run_dir={run_dir}"] if run_dir else [])


def test_goal_value_checkpoint_targets_and_learning_on_maze_data(maze: tuple[Path, Config]) -> None:
    folder, cfg = maze
    payload = load_checkpoint(Path(cfg.value.run_dir) / "checkpoint.pt")
    assert payload["goal_dims"] == [0, 1]
    stored = json.loads(payload["config"])["value"]
    assert stored["goal_conditioned"] is True and stored["goal_radius"] == 0.45
    model = load_trained_model(Path(cfg.run_dir) / "checkpoint.pt")
    net = load_value_model(Path(cfg.value.run_dir) / "checkpoint.pt", model)
    assert net.goal_dim == 2
    # The target statistics are those of relabelled windows of the collected dataset.
    episodes = load_episodes(cfg.task.dataset)
    trainer = ValueTrainer(cfg.value, model, episodes, {}, run_dir=folder / "unused")
    assert payload["target"]["mean"] == pytest.approx(trainer.target_mean)
    assert 0 < trainer.target_mean < sum(0.99 ** (2 * k) for k in range(32))  # stride 2 tokens
    # Clean windows with goals on their own path score higher than with far-away goals.
    generator = torch.Generator().manual_seed(5)
    batch = trainer.windows.sample(256, generator)
    positions = trainer.normalizer.unnormalize(batch.x)[..., [0, 1]]
    near = positions[:, 10]
    far = -positions[:, 10]  # the point mirrored through the maze centre
    levels = torch.zeros(batch.x.shape[:2])
    normalize = model.normalizer.normalize_channels
    v_near = net(batch.x, levels, normalize(near, [0, 1]))
    v_far = net(batch.x, levels, normalize(far, [0, 1]))
    assert float((v_near > v_far).float().mean()) > 0.8


def test_goal_value_training_resumes_bit_identically(maze: tuple[Path, Config], tmp_path: Path) -> None:
    folder, _ = maze
    base = [f"run_dir={folder / 'run'}", f"task.dataset={folder / 'umaze.hdf5'}"]
    straight = tiny_config(tmp_path, base + _value_overrides(6, str(tmp_path / "a")))
    first = tiny_config(tmp_path, base + _value_overrides(3, str(tmp_path / "b")))
    run_train_value(first)
    model = load_trained_model(Path(straight.run_dir) / "checkpoint.pt")
    episodes = load_episodes(straight.task.dataset)
    one = ValueTrainer(straight.value, model, episodes, {}, run_dir=tmp_path / "a")
    one.train()
    two = ValueTrainer(straight.value, model, episodes, {}, run_dir=tmp_path / "b")
    assert two.train().resumed_from == 3
    expected, got = training_state(one), training_state(two)
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []
    # A resume with another seed keeps the target statistics its network was trained with.
    stored = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["target"]
    reseeded = ValueTrainer(tiny_config(tmp_path, base + _value_overrides(6, str(tmp_path / "b")) + ["value.seed=7"]
                                        ).value, model, episodes, {}, run_dir=tmp_path / "b")
    assert reseeded.target_mean != stored["mean"]  # estimated from other windows...
    assert reseeded.resume() and (reseeded.target_mean, reseeded.target_std) == (stored["mean"], stored["std"])
    # A discount outside [0, 1] is named as configured (not raised to the token stride).
    bad = tiny_config(tmp_path, base + _value_overrides(6, str(tmp_path / "c")) + ["value.discount=-0.5"])
    with pytest.raises(ValueError, match=r"value.discount must be in \[0, 1\], got -0.5"):
        ValueTrainer(bad.value, model, episodes, {}, run_dir=tmp_path / "c")


def test_maze_value_guidance_end_to_end_and_deterministic(maze: tuple[Path, Config], tmp_path: Path) -> None:
    folder, _ = maze
    extra = [f"run_dir={folder / 'run'}", f"task.dataset={folder / 'umaze.hdf5'}", "guidance=value",
             "guidance.scale=1.0", "eval.plots=false", "eval.progress=false"]
    runs = []
    for name in ("a", "b"):
        cfg = tiny_config(tmp_path, extra + [f"eval.out_dir={tmp_path / name}"] + _value_overrides(200))
        runs.append(json.loads(run_evaluate(cfg).read_text()))
    results = runs[0]
    assert results["n_episodes"] == 6 and results["config"]["guidance"]["kind"] == "value"
    value_file = Path(folder / "run" / "value" / "checkpoint.pt")
    assert results["checkpoint"]["value"]["sha256"] and results["checkpoint"]["value"]["path"] == str(
        value_file.resolve())
    assert runs[0]["episode_returns"] == runs[1]["episode_returns"]
    # Unguided plans differ from value-guided ones (the guide acts on the samples).
    cfg = tiny_config(tmp_path, extra + _value_overrides(200))
    model = load_trained_model(Path(cfg.run_dir) / "checkpoint.pt")
    observations = torch.tensor([[0.5, 0.5, 0.0, 0.0], [-0.5, -0.5, 0.0, 0.0]])
    goals = torch.tensor([[-1.0, 1.0], [1.0, -1.0]])
    plans = []
    for kind in ("value", "none"):
        planner = GoalPlanner(model, planner=cfg.planner, diffusion=cfg.diffusion, goal_dims=[0, 1],
                              guidance=tiny_config(tmp_path, extra + [f"guidance.kind={kind}"]).guidance)
        plans.append(planner.plan(observations, torch.Generator().manual_seed(0), goals=goals).observations)
        if kind == "value":
            assert planner.guidance is not None and isinstance(planner.guidance.guide, GoalValueGuide)
    assert not torch.allclose(plans[0], plans[1])


def test_value_checkpoint_goal_conditioning_must_fit_the_planner(maze: tuple[Path, Config], tmp_path: Path) -> None:
    folder, cfg = maze
    model = load_trained_model(Path(cfg.run_dir) / "checkpoint.pt")
    # A goal-conditioned value function cannot guide the locomotion planner, which has no goals.
    with pytest.raises(ValueError, match=r"is goal-conditioned \(value.goal_conditioned=true\): it guides the maze"):
        value_guide(model, cfg.guidance, "cpu")
    # A plain value function cannot guide the maze planner.
    plain = tiny_config(tmp_path, [f"run_dir={folder / 'run'}", f"task.dataset={folder / 'umaze.hdf5'}"]
                        + _value_overrides(2, str(tmp_path / "plain"))[1:] + ["value.goal_conditioned=false"])
    run_train_value(plain)
    guided = tiny_config(tmp_path, [f"run_dir={folder / 'run'}", "guidance=value",
                                    f"guidance.value_checkpoint={tmp_path / 'plain' / 'checkpoint.pt'}"])
    with pytest.raises(ValueError, match=r"was trained without goals, but a maze's reward depends on its goal; "
                                         r"train a goal-conditioned one"):
        GoalPlanner(model, planner=guided.planner, diffusion=guided.diffusion, goal_dims=[0, 1],
                    guidance=guided.guidance)
    # Goal entries other than those the value function was trained with.
    with pytest.raises(ValueError, match=r"reads the goal from observation entries \[0, 1\] .* gives entries \[1, 0\]"):
        value_guide(model, cfg.guidance, "cpu", goal_dims=[1, 0])
    # A plain value checkpoint written before goal conditioning existed (no goal keys) still loads as one.
    old = load_checkpoint(tmp_path / "plain" / "checkpoint.pt")
    old.pop("goal_dims")
    config = json.loads(old["config"])
    for key in ("goal_conditioned", "goal_radius", "goal_window_prob"):
        config["value"].pop(key)
    old["config"] = json.dumps(config)
    torch.save(old, tmp_path / "old.pt")
    assert load_value_model(tmp_path / "old.pt", model).goal_dim == 0
    # Policy guidance is still refused by the maze planner, naming the kinds it takes.
    policy = tiny_config(tmp_path, [f"run_dir={folder / 'run'}", "guidance=policy"])
    with pytest.raises(ValueError, match=r"takes guidance.kind in \['none', 'value', 'goal'.*\], "
                                         r"got guidance.kind=policy"):
        GoalPlanner(model, planner=policy.planner, diffusion=policy.diffusion, goal_dims=[0, 1],
                    guidance=policy.guidance)


def test_goal_conditioning_needs_position_channels(tmp_path: Path) -> None:
    layout = TrajectoryLayout(obs_dim=4, act_dim=2)
    normalizer = LimitsNormalizer(-torch.ones(6), torch.ones(6))
    net = ValueNet(transition_dim=6, horizon=8, dim=8, dim_mults=(1, 2), goal_dim=2)
    with pytest.raises(ValueError, match=r"needs the position channels \(task.goal_obs_dims\), got an empty list"):
        GoalValueGuide(net, layout, normalizer, [])
    with pytest.raises(ValueError, match=r"task.goal_obs_dims \[7\] are outside the observation \(obs_dim 4\)"):
        GoalValueGuide(net, layout, normalizer, [0, 7])
    guide = GoalValueGuide(net, layout, normalizer, [0, 1])
    with pytest.raises(ValueError, match=r"goal-conditioned value guidance steers towards goals, but the plan's "
                                         r"guidance context holds none"):
        guide.objective(torch.zeros(2, 8, 6), torch.zeros(2, 8, dtype=torch.long), GuideContext(10))
    # Goals are normalized like the position channels; each sample reads its own (candidates share theirs).
    normalizer = LimitsNormalizer(torch.tensor([-2.0, -1.0, -1, -1, -1, -1]), torch.tensor([4.0, 3.0, 1, 1, 1, 1]))
    guide = GoalValueGuide(net, layout, normalizer, [0, 1])
    goals = torch.tensor([[1.0, 2.0], [-1.5, 0.5]]).repeat_interleave(2, dim=0)
    context = GuideContext(10, goals)
    x, levels = torch.randn(4, 8, 6), torch.randint(0, 11, (4, 8))  # two candidates per goal
    expected = net(x, levels / 10, torch.tensor([[0.0, 0.5], [0.0, 0.5], [-5 / 6, -0.25], [-5 / 6, -0.25]]))
    assert torch.allclose(guide.objective(x, levels, context), expected)
    out = guide.gradient(x, levels, context)
    assert out.gradient.shape == (4, 8, 6) and torch.allclose(out.value, expected)


def test_maze_sweep_with_goal_and_value_cells_batches_them_in_separate_passes(
    maze: tuple[Path, Config], tmp_path: Path
) -> None:
    """none + goal share one pass and value another; a single value cell batched equals it sequential."""
    from diffplan.cli.sweep import run_sweep

    folder, _ = maze
    cells = "[{kind: none}, {kind: goal, strengths: [1.0]}, {kind: value, strengths: [1.0]}]"

    def sweep(out: str, *extra: str) -> list[Path]:
        return run_sweep(tiny_config(tmp_path, [
            f"run_dir={folder / 'run'}", f"task.dataset={folder / 'umaze.hdf5'}", "guidance=goal",
            "eval.n_episodes=2", "eval.n_envs=2", "eval.seeds=[0]", "eval.plots=false", "eval.progress=false",
            "task.episode_steps=30", f"sweep.out_dir={tmp_path / out}", f"sweep.cells={cells}", *extra,
        ] + _value_overrides(200)))

    batched = [json.loads(p.read_text()) for p in sweep("bat", "sweep.batched=true")]
    assert [r["cell"]["label"] for r in batched] == ["none=0", "goal=1", "value=1"]
    assert batched[0]["batched"]["cells_in_batch"] == ["none=0", "goal=1"]
    assert batched[2]["batched"]["cells_in_batch"] == ["value=1"]
    assert batched[2]["checkpoint"]["value"]["sha256"]
    (sequential,) = sweep("seq", "sweep.cells_index=2")
    assert json.loads(sequential.read_text())["episode_returns"] == batched[2]["episode_returns"]
