"""Diffusion Forcing MPC in closed loop: goal guidance, guidance through the denoiser, the
batched plan controller with executed history, ``planner.mode=forcing`` in the evaluator, and dynamics
consistency."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from diffplan.config import DiffusionConfig, PlannerConfig, TrackerConfig
from diffplan.data import LimitsNormalizer, TrajectoryLayout
from diffplan.diffusion.guide import GuideContext
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.evaluation.consistency import trajectory_consistency
from diffplan.guidance.denoised import DenoisedGuide
from diffplan.guidance.goal import GoalGuide
from diffplan.planning.controllers import PlanController
from diffplan.planning.forcing import ForcingPlanner, history_matrix
from diffplan.planning.history import ExecutedHistory
from diffplan.planning.planner import Plan
from tests.test_commands import tiny_config
from tests.test_forcing import _model

LAYOUT = TrajectoryLayout(obs_dim=4, act_dim=2)


def _normalizer() -> LimitsNormalizer:
    return LimitsNormalizer(torch.tensor([-2.0, -2.0, -1, -1, -1, -1]), torch.tensor([2.0, 2.0, 1, 1, 1, 1]))


# -- goal guide ----------------------------------------------------------------------------------
def test_goal_guide_is_minus_mean_distance_in_raw_units() -> None:
    normalizer = _normalizer()
    guide = GoalGuide(LAYOUT, normalizer, [0, 1])
    raw = torch.zeros(2, 3, 6)
    raw[0, :, 0] = torch.tensor([0.0, 1.0, 2.0])  # x positions; goal (2, 0): distances 2, 1, 0
    raw[1, :, 1] = torch.tensor([1.0, 1.0, 1.0])  # goal (0, -1): distances 2, 2, 2
    context = GuideContext(10, goals=torch.tensor([[2.0, 0.0], [0.0, -1.0]]))
    x = normalizer.normalize(raw)
    levels = torch.zeros(2, 3, dtype=torch.long)
    value = guide.objective(x, levels, context)
    assert torch.allclose(value, torch.tensor([-1.0, -2.0]))
    out = guide.gradient(x, levels, context)
    assert torch.allclose(out.value, value)
    # Only position channels move; each token's gradient points at the goal with norm
    # (1/H) * d raw / d normalized (= 2 here), except the token sitting on the goal.
    assert (out.gradient[..., 2:] == 0).all()
    assert torch.allclose(out.gradient[0, 0, :2], torch.tensor([2 / 3, 0.0]))
    assert torch.allclose(out.gradient[1, :, 1], torch.full((3,), -2 / 3))
    # A step along the gradient brings the plan closer to the goal.
    assert (guide.objective(x + 0.1 * out.gradient, levels, context) > value).all()


def test_goal_guide_reads_each_samples_goal_from_the_context_and_errors_name_the_fix() -> None:
    guide = GoalGuide(LAYOUT, _normalizer(), [0, 1])
    levels = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="context holds none; plan with goals"):
        guide.objective(torch.zeros(2, 3, 6), levels, GuideContext(10))
    goals = torch.tensor([[1.0, 0.0], [-1.0, 0.0]]).repeat_interleave(2, dim=0)  # 2 candidates per env
    distance = guide.distance(torch.zeros(4, 3, 6), GuideContext(10, goals))
    assert torch.allclose(distance, torch.ones(4, 3))
    with pytest.raises(ValueError, match=r"one goal of 2 entries per sample \(3, 2\)"):
        guide.distance(torch.zeros(3, 3, 6), GuideContext(10, goals))
    with pytest.raises(ValueError, match="task.goal_obs_dims"):
        GoalGuide(LAYOUT, _normalizer(), [])
    with pytest.raises(ValueError, match=r"task.goal_obs_dims \[7\] are outside"):
        GoalGuide(LAYOUT, _normalizer(), [0, 7])


# -- guidance through the denoiser --------------------------------------------------------------------
class CausalSum(torch.nn.Module):
    """An x0-predicting 'denoiser' whose estimate of token t is the running sum of tokens 0..t."""

    def forward(self, x: Tensor, levels: Tensor) -> Tensor:
        return x.cumsum(dim=1)


class LastTokenGuide:
    """v(x) = sum of the last token's channels: its plain gradient touches the last token only."""

    def objective(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
        return x[:, -1].sum(dim=-1)

    def gradient(self, x: Tensor, levels: Tensor, context: GuideContext):  # type: ignore[no-untyped-def]
        from diffplan.diffusion.guide import GuideOutput

        grad = torch.zeros_like(x)
        grad[:, -1] = 1.0
        return GuideOutput(grad, self.objective(x, levels, context))


def test_denoised_guide_steers_earlier_tokens_through_a_causal_denoiser() -> None:
    schedule = NoiseSchedule(10, prediction="x0")
    guide = DenoisedGuide(LastTokenGuide(), CausalSum(), schedule)
    x = torch.randn(2, 4, 3)
    levels = torch.full((2, 4), 5)
    context = GuideContext(10)
    out = guide.gradient(x, levels, context)
    # d sum(cumsum(x)[-1]) / d x = 1 for every token: the far objective reaches the near tokens.
    assert torch.allclose(out.gradient, torch.ones_like(x))
    assert torch.allclose(out.value, x.sum(dim=(1, 2)))
    plain = LastTokenGuide().gradient(x, levels, context).gradient
    assert (plain[:, :-1] == 0).all()
    # Tokens at level 0 are their own estimate (clean history): the gradient there is the guide's own.
    levels[:, 0] = 0
    out = guide.gradient(x, levels, context)
    assert torch.allclose(out.gradient[:, 0], torch.ones(2, 3))
    assert torch.allclose(guide.objective(x, levels, context), out.value)


# -- frame-stacked matrices ------------------------------------------------------------------------
def test_history_matrix_groups_timesteps_of_one_token() -> None:
    matrix = history_matrix("pyramid", 2, n_timesteps=4, sampling_steps=2, horizon=8, uncertainty=1, group=2)
    # 3 future tokens of 2 timesteps: offsets 0, 1, 2 rows; history columns stay 0.
    expected_token_levels = torch.tensor([[4, 4, 4], [2, 4, 4], [0, 2, 4], [0, 0, 2], [0, 0, 0]])
    assert torch.equal(matrix[:, 2:], expected_token_levels.repeat_interleave(2, dim=1))
    assert (matrix[:, :2] == 0).all()
    with pytest.raises(ValueError, match=r"multiples of the timesteps per token \(model.transformer.frame_stack = 2\)"):
        history_matrix("pyramid", 1, n_timesteps=4, sampling_steps=2, horizon=8, group=2)


# -- the closed-loop policy ---------------------------------------------------------------------------
def test_forcing_policy_feeds_the_real_history_and_runs_planned_actions() -> None:
    model = _model("transformer")
    planner = ForcingPlanner(model, diffusion=DiffusionConfig(sampling_steps=2, schedule_matrix="pyramid",
                                                              n_timesteps=10, clip_denoised=None),
                             execute=2, n_history=3)
    seen: list[Tensor] = []
    original = planner.plan

    def spy(observations: Tensor, generator: torch.Generator, **kwargs: Any) -> Plan:
        history = kwargs["history"]
        assert history is not None
        seen.append(history.clone())
        return original(observations, generator, **kwargs)

    planner.plan = spy  # type: ignore[method-assign]
    policy = _forcing_controller(planner, PlannerConfig(mode="actions", replan_every=planner.execute))
    policy.reset(3)
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    observations, executed = [], []
    active = np.array([True, True, False])
    for step in range(6):
        obs = rng.normal(size=(3, 4))
        actions, bad = policy.act(step, obs, np.zeros((3, 2)), active, generator)
        assert actions.shape == (3, 2) and not bad.any()
        observations.append(obs)
        executed.append(np.clip(actions, -1, 1))
    assert [h.shape[1] for h in seen] == [0, 2, 3]  # replans at steps 0, 2, 4; history capped at 3
    last = seen[-1]
    assert last.shape[0] == 2  # the inactive env is not planned for
    for k, t in enumerate(range(1, 4)):
        assert np.allclose(last[:, k, :4].numpy(), observations[t][:2], atol=1e-6)
        assert np.allclose(last[:, k, 4:].numpy(), executed[t][:2], atol=1e-6)
    assert [r.step for r in policy.records] == [0, 2, 4]
    with pytest.raises(RuntimeError, match="reset first"):
        policy.act(9, np.zeros((3, 4)), np.zeros((3, 2)), active, generator)


def _forcing_controller(planner: ForcingPlanner, cfg: PlannerConfig, stride: int = 1) -> PlanController:
    return PlanController(planner, cfg, position_dims=[0, 1], velocity_dims=[2, 3], stride=stride,
                          history=ExecutedHistory(planner.n_history, stride))


def test_executed_history_takes_every_stride_th_step_and_caps_its_length() -> None:
    layout = TrajectoryLayout(obs_dim=1, act_dim=1)
    history = ExecutedHistory(n_history=2, stride=3, action_low=-1.0, action_high=1.0)
    for step in range(8):
        history.record(step, np.array([[float(step)], [10.0 + step]]), np.array([[step / 10], [np.nan]]))
    tokens = history.tokens(np.array([1, 0]), layout)  # at step 8: tokens of steps 2 and 5
    assert tokens.shape == (2, 2, 2)
    assert tokens[:, :, 0].tolist() == [[12.0, 15.0], [2.0, 5.0]]
    assert torch.allclose(tokens[1, :, 1], torch.tensor([0.2, 0.5])) and (tokens[0, :, 1] == 0).all()  # NaN -> 0
    history.reset()
    assert history.tokens(np.array([0]), layout).shape == (1, 0, 2)
    with pytest.raises(RuntimeError, match="reset first"):
        history.record(3, np.zeros((2, 1)), np.zeros((2, 1)))


def test_forcing_policy_with_a_tracker_steers_to_the_planned_states() -> None:
    model = _model("transformer")
    planner = ForcingPlanner(model, diffusion=DiffusionConfig(sampling_steps=2, n_timesteps=10, clip_denoised=None),
                             execute=2, n_history=2)
    cfg = PlannerConfig(mode="tracker", replan_every=2, tracker=TrackerConfig(p_gain=2.0, d_gain=0.5))
    policy = _forcing_controller(planner, cfg)
    policy.reset(2)
    generator = torch.Generator().manual_seed(0)
    obs = np.random.default_rng(0).normal(size=(2, 4))
    actions, _ = policy.act(0, obs, np.zeros((2, 2)), np.ones(2, dtype=bool), generator)
    plan = planner.plan(torch.as_tensor(obs, dtype=torch.float32), torch.Generator().manual_seed(0))
    target = plan.observations[:, 1].double().numpy()  # planned state 1 step after the current one
    expected = 2.0 * (target[:, :2] - obs[:, :2]) + 0.5 * (target[:, 2:] - obs[:, 2:])
    assert np.allclose(actions, expected, atol=1e-5)


def test_evaluator_runs_forcing_mpc_with_goal_guidance(tmp_path: Path) -> None:
    from diffplan.pipeline.collect import run_collect
    from diffplan.pipeline.evaluate import run_evaluate
    from diffplan.pipeline.train import run_train

    extra = ["model=transformer", "model.transformer.d_model=16", "model.transformer.n_layers=1",
             "model.transformer.n_heads=2", "model.transformer.frame_stack=2",
             "task.stride=1", "task.horizon=16", "train.noise_mode=independent", "train.condition_goal=false",
             "planner=forcing", "planner.forcing.execute=4", "planner.forcing.n_history=4", "guidance=goal",
             "guidance.scale=10",
             "guidance.mc_samples=2", "diffusion.schedule_matrix=pyramid", "diffusion.uncertainty=0.5",
             "task.episode_steps=12", "eval.plots=false"]
    cfg = tiny_config(tmp_path, extra)
    run_collect(cfg)
    run_train(cfg)
    path = run_evaluate(cfg)
    results = json.loads(path.read_text())
    assert results["n_episodes"] == 6 and results["n_failed"] == 0
    assert results["config"]["planner"]["mode"] == "forcing" and results["config"]["guidance"]["kind"] == "goal"
    # 2 seeds x 2 batches of environments (2 + 1 episodes), 3 plans of 4 steps per 12-step batch.
    assert results["plan_time_s"]["n_plans"] == 2 * 2 * 3
    # Same seeds, same results.
    again = json.loads(run_evaluate(cfg).read_text())
    assert again["episode_returns"] == results["episode_returns"]

    strided = tiny_config(tmp_path, extra + ["task.stride=2", f"run_dir={tmp_path / 'strided'}"])
    run_train(strided)
    with pytest.raises(ValueError, match="needs a model trained with task.stride=1"):
        run_evaluate(strided)
    # A strided model: its states followed by the pursuit tracker, the goal inpainted at the last token;
    # a plan every execute x stride = 8 steps of the 12 (steps 0 and 8), history every 2nd step.
    tracked = tiny_config(tmp_path, extra + ["task.stride=2", f"run_dir={tmp_path / 'strided'}",
                                             "planner.forcing.track_states=true", "planner.forcing.inpaint_goal=true",
                                             "planner.tracker.tracking=pursuit", "guidance=none"])
    results = json.loads(run_evaluate(tracked).read_text())
    assert results["n_failed"] == 0 and results["plan_time_s"]["n_plans"] == 2 * 2 * 2
    # Replans that hold the first plan's arrival; refused without the inpainted goal they place.
    held = tiny_config(tmp_path, extra + ["task.stride=2", f"run_dir={tmp_path / 'strided'}",
                                          "planner.forcing.track_states=true", "planner.forcing.inpaint_goal=true",
                                          "planner.forcing.hold_arrival=true", "planner.tracker.tracking=pursuit",
                                          "guidance=none", "eval.out_dir=" + str(tmp_path / "held")])
    held_results = json.loads(run_evaluate(held).read_text())
    assert held_results["n_failed"] == 0 and held_results["config"]["planner"]["forcing"]["hold_arrival"] is True
    # Later arrivals as candidates (the earliest that does not jump runs); refused without a held arrival.
    slack = tiny_config(tmp_path, extra + ["task.stride=2", f"run_dir={tmp_path / 'strided'}",
                                           "planner.forcing.track_states=true", "planner.forcing.inpaint_goal=true",
                                           "planner.forcing.hold_arrival=true", "planner.forcing.arrival_slack=[0,2]",
                                           "planner.tracker.tracking=pursuit", "guidance=none",
                                           "eval.out_dir=" + str(tmp_path / "slack")])
    slack_results = json.loads(run_evaluate(slack).read_text())
    assert slack_results["n_failed"] == 0 and slack_results["config"]["planner"]["forcing"]["arrival_slack"] == [0, 2]
    assert slack_results["plan_time_s"]["n_plans"] == held_results["plan_time_s"]["n_plans"]
    with pytest.raises(ValueError, match=r"arrival_slack=\[0, 2\] plans arrivals after the held one; set "
                                         r"planner.forcing.hold_arrival=true"):  # refused with the settings
        run_evaluate(tiny_config(tmp_path, extra + ["task.stride=2", f"run_dir={tmp_path / 'strided'}",
                                                    "planner.forcing.track_states=true",
                                                    "planner.forcing.inpaint_goal=true",
                                                    "planner.forcing.arrival_slack=[0,2]", "guidance=none"]))
    with pytest.raises(ValueError, match="set planner.forcing.inpaint_goal=true as well"):
        run_evaluate(tiny_config(tmp_path, extra + ["task.stride=2", f"run_dir={tmp_path / 'strided'}",
                                                    "planner.forcing.track_states=true",
                                                    "planner.forcing.hold_arrival=true", "guidance=none"]))
    wrong = tiny_config(tmp_path, extra[:-7] + ["guidance=value"])
    with pytest.raises(ValueError, match="takes guidance kinds without a value function, got guidance.kind=value"):
        run_evaluate(wrong)


def test_forcing_planner_inpaints_the_goal_at_the_windows_last_token() -> None:
    model = _model("transformer")
    diffusion = DiffusionConfig(sampling_steps=2, n_timesteps=10, clip_denoised=None)
    planner = ForcingPlanner(model, diffusion=diffusion, execute=2, n_history=2, goal_dims=[0, 1])
    obs, goals = torch.zeros(2, 4), torch.tensor([[0.5, -0.5], [-1.0, 1.0]])
    history = torch.zeros(2, 2, 6)
    plan = planner.plan(obs, torch.Generator().manual_seed(0), goals=goals, history=history)
    assert plan.observations.shape == (2, model.horizon - 2, 4)  # from the current token on
    assert torch.allclose(plan.observations[:, -1, :2], goals, atol=1e-5)
    with pytest.raises(ValueError, match="inpaint_goal plans to a goal"):
        planner.plan(obs, torch.Generator().manual_seed(0), history=history)
    plain = ForcingPlanner(model, diffusion=diffusion, execute=2, n_history=2)
    free = plain.plan(obs, torch.Generator().manual_seed(0), goals=goals, history=history)
    assert not torch.allclose(free.observations[:, -1, :2], goals, atol=1e-2)


# -- dynamics consistency ---------------------------------------------------------------------------
def _umaze_tokens(n_tokens: int, hold: int, seed: int) -> np.ndarray:
    """(1, n_tokens, 6) real umaze tokens (state, action), each random action held ``hold`` steps."""
    from diffplan_envs.maze import get_maze_task, make_maze_env

    env = make_maze_env(get_maze_task("pointmaze-umaze"))
    rng = np.random.default_rng(seed)
    obs = env.reset(seed=seed)[0]["observation"]
    rows = []
    for _ in range(n_tokens):
        action = rng.uniform(-1, 1, size=2)
        rows.append(np.concatenate([obs, action]))
        for _ in range(hold):
            obs = env.step(action)[0]["observation"]
    env.close()
    return np.stack(rows)[None]


def test_real_maze_transitions_are_consistent_and_corrupted_ones_are_not() -> None:
    trajectory = _umaze_tokens(40, hold=1, seed=0)
    variance = np.ones(4)
    clean = trajectory_consistency("pointmaze-umaze", trajectory, LAYOUT, variance)
    assert clean.errors.shape == (1, 39) and clean.errors.max() < 1e-12
    corrupted = trajectory.copy()
    corrupted[0, 20:, 0] += 0.1  # a jump in x between tokens 19 and 20
    bad = trajectory_consistency("pointmaze-umaze", corrupted, LAYOUT, variance)
    assert bad.errors[0, 19] > 1e-3 and bad.errors[0, :19].max() < 1e-12
    summary = bad.summary(20)
    assert summary["n_transitions"] == 39 and len(summary["segment_means"]) == 2  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="trajectories must be"):
        trajectory_consistency("pointmaze-umaze", trajectory[0], LAYOUT, variance)


def test_strided_tokens_are_replayed_by_holding_each_action_over_the_stride() -> None:
    """A strided model's tokens are ``stride`` steps apart: the replay holds each token's action that
    long, so a trajectory whose actions were held exactly is consistent and the one-step replay is not."""
    trajectory = _umaze_tokens(12, hold=4, seed=1)
    variance = np.ones(4)
    held = trajectory_consistency("pointmaze-umaze", trajectory, LAYOUT, variance, hold=4)
    assert held.errors.shape == (1, 11) and held.errors.max() < 1e-12
    one_step = trajectory_consistency("pointmaze-umaze", trajectory, LAYOUT, variance)
    assert one_step.errors.min() > 1e-6
    with pytest.raises(ValueError, match="hold must be >= 1"):
        trajectory_consistency("pointmaze-umaze", trajectory, LAYOUT, variance, hold=0)


def test_forcing_mpc_on_locomotion_is_refused_with_the_alternatives(tmp_path: Path) -> None:
    from diffplan.pipeline.evaluate import run_evaluate

    cfg = tiny_config(tmp_path, ["task=hopper-medium", "planner=forcing"])
    with pytest.raises(ValueError, match=r"planner.mode=forcing plans maze tasks, not locomotion tasks; use "
                                         r"planner.mode in \['tracker', 'actions'\] \(e.g. planner=value"):
        run_evaluate(cfg)


# -- holding a plan's arrival -------------------------------------------------------------------------
class _RecordingForcing(ForcingPlanner):
    """A forcing planner that records the arrival tokens and plans it was asked for."""

    arrivals: list[list[int] | None]
    plans: list[Plan]

    def plan(self, observations: Tensor, generator: torch.Generator, **kwargs: Any) -> Plan:
        arrival = kwargs.get("arrival")
        self.arrivals.append(None if arrival is None else arrival.tolist())
        plan = super().plan(observations, generator, **kwargs)
        self.plans.append(plan)
        return plan


def test_forcing_planner_holds_the_goal_from_each_environments_arrival_token() -> None:
    model = _model("transformer")
    horizon = model.horizon
    diffusion = DiffusionConfig(sampling_steps=2, n_timesteps=10, clip_denoised=None)
    planner = ForcingPlanner(model, diffusion=diffusion, execute=2, n_history=2, goal_dims=[0, 1])
    obs, goals = torch.zeros(2, 4), torch.tensor([[0.5, -0.5], [-1.0, 1.0]])
    history = torch.zeros(2, 2, 6)
    plan = planner.plan(obs, torch.Generator().manual_seed(0), goals=goals, history=history,
                        arrival=torch.tensor([1, 3]))
    assert plan.observations.shape[1] == horizon - 2
    for env, arrival in enumerate([1, 3]):
        held = plan.observations[env, arrival:, :2]
        assert torch.allclose(held, goals[env].expand_as(held), atol=1e-5)
        assert not torch.allclose(plan.observations[env, arrival - 1, :2], goals[env], atol=1e-3)
    # Arrivals past the window end at its last token; arrival 0 is the next token (the current one is observed).
    clamped = planner.plan(obs, torch.Generator().manual_seed(0), goals=goals, history=history,
                           arrival=torch.tensor([0, 10 * horizon]))
    assert torch.allclose(clamped.observations[0, 1:, :2], goals[0].expand(horizon - 3, 2), atol=1e-5)
    assert not torch.allclose(clamped.observations[1, -2, :2], goals[1], atol=1e-3)
    plain = ForcingPlanner(model, diffusion=diffusion, execute=2, n_history=2)
    with pytest.raises(ValueError, match="set planner.forcing.inpaint_goal=true"):
        plain.plan(obs, torch.Generator().manual_seed(0), goals=goals, history=history, arrival=torch.tensor([1, 3]))


def test_forcing_planner_plans_later_arrivals_and_reports_the_one_it_runs() -> None:
    """``arrival_slack``: candidates arrive at the held arrival and that many tokens after it (clamped
    to the window); the earliest arrival whose plan does not jump runs, and the plan says which."""
    from diffplan.planning.planner import EarliestArrivalSelector

    model = _model("transformer")
    horizon = model.horizon
    diffusion = DiffusionConfig(sampling_steps=2, n_timesteps=10, clip_denoised=None)
    planner = ForcingPlanner(model, diffusion=diffusion, execute=2, n_history=2, goal_dims=[0, 1],
                             planner=PlannerConfig(n_candidates=2, jump_ratio=1.5), arrival_slack=[0, 3, 100])
    assert planner.n_candidates == 6 and isinstance(planner.selector, EarliestArrivalSelector)
    obs, goals = torch.zeros(2, 4), torch.tensor([[0.5, -0.5], [-1.0, 1.0]])
    history = torch.zeros(2, 2, 6)
    plan = planner.plan(obs, torch.Generator().manual_seed(0), goals=goals, history=history,
                        arrival=torch.tensor([1, 2]))
    assert plan.candidates is not None and plan.candidates.shape[:2] == (2, 6)
    last = horizon - 3  # the window's last token, counted from the current one
    for env, held in enumerate([1, 2]):
        for candidate, arrival in enumerate([held, held, held + 3, held + 3, last, last]):
            states = plan.candidates[env, candidate, :, :2]
            assert torch.allclose(states[arrival:], goals[env].expand_as(states[arrival:]), atol=1e-5)
            assert not torch.allclose(states[arrival - 1], goals[env], atol=1e-3)
    assert plan.arrival is not None and plan.arrival.dtype == torch.long
    for env in range(2):
        chosen = int(plan.arrival[env])
        assert chosen in ({1, 4, last} if env == 0 else {2, 5, last})
        held_goal = goals[env].expand(horizon - 2 - chosen, 2)
        assert torch.allclose(plan.observations[env, chosen:, :2], held_goal, atol=1e-5)
        assert not torch.allclose(plan.observations[env, chosen - 1, :2], goals[env], atol=1e-3)
    # Without slack a plan reports no arrival of its own (the controller keeps the one it handed over).
    plain = ForcingPlanner(model, diffusion=diffusion, execute=2, n_history=2, goal_dims=[0, 1])
    assert plain.plan(obs, torch.Generator().manual_seed(0), goals=goals, history=history,
                      arrival=torch.tensor([1, 2])).arrival is None
    # A negative slack arrives earlier, at the token after the current one at the earliest.
    early = ForcingPlanner(model, diffusion=diffusion, execute=2, n_history=2, goal_dims=[0, 1], arrival_slack=[-2])
    plan = early.plan(obs, torch.Generator().manual_seed(0), goals=goals, history=history, arrival=torch.tensor([1, 4]))
    assert plan.arrival is not None and plan.arrival.tolist() == [1, 2]
    with pytest.raises(ValueError, match="set planner.forcing.inpaint_goal=true and planner.forcing.hold_arrival"):
        ForcingPlanner(model, diffusion=diffusion, execute=2, n_history=2, arrival_slack=[0, 4])


def test_earliest_arrival_selector_takes_the_first_arrival_that_does_not_jump() -> None:
    from diffplan.planning.planner import EarliestArrivalSelector

    selector = EarliestArrivalSelector((0, 4, 8), 1, (0,), 1.5)
    raw = torch.zeros(2, 3, 5, 2)
    steps = torch.tensor([[3.0, 1.0, 1.0], [1.2, 1.1, 1.0]])  # each candidate's step per token, env x arrival
    raw[..., 0] = steps[..., None] * torch.arange(5.0)
    chosen, values = selector.select(raw, raw, GuideContext(10))
    # env 0: the held arrival jumps 3x the latest's step, the next one does not; env 1: the held one is smooth.
    assert chosen.tolist() == [1, 0] and values is None
    # Groups in any order (offsets 4, 0, 8): the order of the offsets decides; a non-finite plan is never taken.
    unsorted = EarliestArrivalSelector((4, 0, 8), 1, (0,), 1.5)
    assert unsorted.select(raw[:, [1, 0, 2]], raw[:, [1, 0, 2]], GuideContext(10))[0].tolist() == [0, 1]
    broken = raw.clone()
    broken[1, 0, 2, 0] = float("nan")
    broken[1, 2, 2, 0] = float("nan")  # the latest arrival non-finite as well: no limit to compare with
    assert selector.select(broken, broken, GuideContext(10))[0].tolist() == [1, 1]


def test_goal_planner_refuses_per_environment_arrival_tokens() -> None:
    from diffplan.planning.planner import GoalTokensConditioner, StartConditioner

    model = _model("unet")
    for conditioner in (StartConditioner(model, torch.zeros(1, model.horizon), goal_dims=[0, 1]),
                        GoalTokensConditioner(model, torch.zeros(1, model.horizon), [0, 1], [2], 1)):
        with pytest.raises(ValueError, match="need planner.mode=forcing"):
            conditioner.condition(torch.zeros(1, 4), torch.zeros(1, 2), None, arrival=torch.tensor([2]))


def test_plan_controller_hands_each_replan_the_previous_plans_remaining_tokens() -> None:
    from diffplan.config import ForcingConfig

    model = _model("transformer")
    horizon = model.horizon
    planner = _RecordingForcing(model, diffusion=DiffusionConfig(sampling_steps=2, n_timesteps=10, clip_denoised=None),
                                execute=2, n_history=2, goal_dims=[0, 1])
    planner.arrivals, planner.plans = [], []
    cfg = PlannerConfig(mode="tracker", replan_every=2, tracker=TrackerConfig(tracking="time"),
                        forcing=ForcingConfig(execute=2, n_history=2, inpaint_goal=True, hold_arrival=True))
    policy = _forcing_controller(planner, cfg)
    policy.reset(2)
    generator = torch.Generator().manual_seed(0)
    goals = np.array([[0.5, -0.5], [-1.0, 1.0]])
    obs = np.zeros((2, 4))
    for step in range(5):  # plans at steps 0, 2 and 4
        policy.act(step, obs, goals, np.ones(2, dtype=bool), generator)
    first = np.iinfo(np.int32).max
    # The first plan arrives at the window's last token (plan token H - 1); each replan 2 tokens later
    # holds the arrival 2 tokens nearer (time tracking: progress = the plan's age in tokens).
    assert planner.arrivals == [[first, first], [horizon - 3] * 2, [horizon - 5] * 2]
    last = planner.plans[-1].observations  # from the current token (window token 2) on
    assert torch.allclose(last[:, horizon - 5:, :2].double(),
                          torch.as_tensor(goals)[:, None, :].expand(2, 3, 2), atol=1e-5)


def test_plan_controller_holds_the_arrival_the_planner_chose() -> None:
    """With ``arrival_slack`` the next replan holds the arrival of the candidate that ran, not the one handed over
    (earlier arrivals only here, so the one that ran always differs from the one handed over)."""
    from diffplan.config import ForcingConfig

    model = _model("transformer")
    horizon = model.horizon
    planner = _RecordingForcing(model, diffusion=DiffusionConfig(sampling_steps=2, n_timesteps=10, clip_denoised=None),
                                execute=2, n_history=2, goal_dims=[0, 1], arrival_slack=[-4, -2])
    planner.arrivals, planner.plans = [], []
    cfg = PlannerConfig(mode="tracker", replan_every=2, tracker=TrackerConfig(tracking="time"),
                        forcing=ForcingConfig(execute=2, n_history=2, inpaint_goal=True, hold_arrival=True,
                                              arrival_slack=[-4, -2]))
    policy = _forcing_controller(planner, cfg)
    policy.reset(2)
    generator = torch.Generator().manual_seed(0)
    goals, obs = np.array([[0.5, -0.5], [-1.0, 1.0]]), np.zeros((2, 4))
    for step in range(5):  # plans at steps 0, 2 and 4
        policy.act(step, obs, goals, np.ones(2, dtype=bool), generator)
    earlier = False
    for plan_index, (handed, before, after) in enumerate(zip(planner.arrivals[:-1], planner.plans[:-1],
                                                             planner.arrivals[1:], strict=True)):
        assert before.arrival is not None and after is not None and handed is not None
        assert after == np.maximum(before.arrival.numpy() - 2, 0).tolist()
        # What was handed over, clamped to the window (the first plan holds no history: its last token is H - 1).
        limit = np.minimum(np.asarray(handed), horizon - 1 - (0 if plan_index == 0 else 2))
        assert (before.arrival.numpy() <= limit).all()
        earlier |= bool((before.arrival.numpy() < limit).any())
    assert earlier  # the controller held an arrival the planner chose, not the one it handed over


# -- history guidance ---------------------------------------------------------------------------------
def test_history_guidance_contrasts_the_clean_history_with_the_dropped_one() -> None:
    from diffplan.diffusion.classifier_free import HistoryGuidance

    schedule = NoiseSchedule(10)
    calls: list[tuple[Tensor, Tensor]] = []

    def model(x: Tensor, levels: Tensor) -> Tensor:
        calls.append((x, levels))
        return x.sum(dim=1, keepdim=True).expand_as(x) + levels[..., None]  # every token sees the history

    x, levels = torch.randn(2, 5, 3), torch.full((2, 5), 0.5)
    levels[:, :2] = 0.0  # two clean history tokens
    noise = torch.randn(2, 2, 3)
    cond = model(x, levels)
    dropped = x.clone()
    dropped[:, :2] = schedule.add_noise(x[:, :2], noise, torch.full((2, 2), 10))
    dropped_levels = levels.clone()
    dropped_levels[:, :2] = 1.0
    uncond = model(dropped, dropped_levels)
    calls.clear()
    assert torch.equal(HistoryGuidance(model, 2, 1.0, schedule, noise)(x, levels), cond)
    out = HistoryGuidance(model, 2, 3.0, schedule, noise)(x, levels)
    assert torch.allclose(out, uncond + 3.0 * (cond - uncond), atol=1e-5)
    assert calls[-1][0].shape == (4, 5, 3) and torch.equal(calls[-1][1][2:, :2], torch.ones(2, 2))
    with pytest.raises(ValueError, match="needs history tokens"):
        HistoryGuidance(model, 0, 2.0, schedule, noise[:, :0])


def test_history_dropout_noises_only_dropped_windows_history_to_the_last_level() -> None:
    from diffplan.diffusion.levels import drop_history

    levels = torch.tensor([[0, 0, 3, 5], [0, 2, 4, 6], [0, 0, 0, 7]])
    history = torch.tensor([2, 1, 3])
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(drop_history(levels, history, 0.0, generator, n_timesteps=10), levels)
    assert drop_history(levels, history, 1.0, generator, n_timesteps=10).tolist() == [
        [10, 10, 3, 5], [10, 2, 4, 6], [10, 10, 10, 7]]
    # Seeded: under seed 0 the windows' uniforms are 0.496, 0.768, 0.088: windows 0 and 2 are dropped at p = 0.5.
    half = drop_history(levels, history, 0.5, torch.Generator().manual_seed(0), n_timesteps=10)
    assert half.tolist() == [[10, 10, 3, 5], [0, 2, 4, 6], [10, 10, 10, 7]]
    with pytest.raises(ValueError, match="train.history_dropout must be in"):
        drop_history(levels, history, 1.5, generator, n_timesteps=10)


def test_history_guided_forcing_mpc_trains_and_evaluates_through_the_commands(tmp_path: Path) -> None:
    from diffplan.pipeline.collect import run_collect
    from diffplan.pipeline.evaluate import run_evaluate
    from diffplan.pipeline.train import run_train

    extra = ["task.horizon=16", "task.stride=2", "train.noise_mode=schedule", "train.history_dropout=0.5",
             "planner=forcing", "planner.forcing.execute=4", "planner.forcing.n_history=4",
             "planner.forcing.track_states=true", "planner.forcing.inpaint_goal=true",
             "planner.forcing.hold_arrival=true", "planner.tracker.tracking=pursuit", "guidance=none",
             "task.episode_steps=12", "eval.plots=false"]
    cfg = tiny_config(tmp_path, extra)
    run_collect(cfg)
    run_train(cfg)
    plain = json.loads(run_evaluate(cfg).read_text())
    guided_cfg = tiny_config(tmp_path, extra + ["planner.forcing.history_guidance=2",
                                                f"eval.out_dir={tmp_path / 'guided'}"])
    guided = json.loads(run_evaluate(guided_cfg).read_text())
    assert guided["n_failed"] == 0 and guided["config"]["planner"]["forcing"]["history_guidance"] == 2.0
    assert plain["n_failed"] == 0
    # The trained checkpoint's plans: weight 1 is the unguided planner exactly, weight 2 moves them.
    from diffplan.planning.forcing import maze_forcing_planner
    from diffplan.training.checkpoint import load_trained_model

    model = load_trained_model(cfg.eval.checkpoint, device="cpu")
    assert model.config.train.history_dropout == 0.5
    obs, goals = torch.zeros(3, 4), torch.ones(3, 2)
    history = torch.randn(3, 4, 6) * 0.5

    def plan(config: Any) -> Tensor:
        planner = maze_forcing_planner(config, model, "cpu")
        return planner.plan(obs, torch.Generator().manual_seed(0), goals=goals, history=history).observations

    one = tiny_config(tmp_path, extra + ["planner.forcing.history_guidance=1"])
    assert torch.equal(plan(one), plan(cfg))
    assert not torch.allclose(plan(guided_cfg), plan(cfg), atol=1e-4)
    with pytest.raises(ValueError, match="train.history_dropout=0.5 drops the clean history"):
        run_train(tiny_config(tmp_path, ["train.history_dropout=0.5"]))

    # The long-horizon consistency script on this strided checkpoint: sliding history windows against
    # full-sequence plans chained end to end, tokens replayed holding each action over the stride (2),
    # and the dataset's own strided windows as the floor of that replay.
    out = tmp_path / "consistency.json"
    script = Path(__file__).resolve().parents[1] / "scripts" / "forcing_consistency.py"
    done = subprocess.run(
        [sys.executable, str(script), str(cfg.eval.checkpoint), "--task", "pointmaze-umaze", "--dataset",
         str(cfg.task.dataset), "--n", "2", "--modes", "sliding", "chained", "--schedule", "full_sequence",
         "--execute", "4", "--n-history", "4", "--sampling-steps", "4", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["settings"]["hold"] == 2 and record["checkpoint"]["stride"] == 2
    modes = record["modes"]
    assert set(modes) == {"dataset", "sliding", "chained"}
    assert modes["sliding"]["tokens"] == 32 and modes["chained"]["tokens"] == 31  # 2 x 16; 2 plans sharing a state
    assert modes["sliding"]["n_transitions"] == 2 * 31 and modes["dataset"]["n_trajectories"] == 8
    assert all(row["mean"] > 0 for row in modes.values())
    # Paired by trajectory (same start states): sliding minus chained.
    paired_script = script.parent / "paired_difference.py"
    paired = subprocess.run([sys.executable, str(paired_script), "--consistency", "--a", f"{out}:sliding",
                             "--b", f"{out}:chained"], capture_output=True, text=True, timeout=60)
    assert paired.returncode == 0, paired.stderr
    difference = json.loads(paired.stdout)
    expected = np.mean(modes["sliding"]["trajectory_means"]) - np.mean(modes["chained"]["trajectory_means"])
    assert difference["n_pairs"] == 2 and difference["unit"] == "trajectory"
    assert difference["mean_difference"] == pytest.approx(expected)
    wrong = subprocess.run([sys.executable, str(paired_script), "--consistency", "--a", f"{out}:pyramid",
                            "--b", f"{out}:chained"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert "no per-trajectory errors for mode 'pyramid'" in wrong.stderr.strip().splitlines()[-1]
