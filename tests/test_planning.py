"""Goal planning by inpainting, candidate selection, and the closed-loop planning policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_fixtures import tiny_maze_model

from diffplan.config import DiffusionConfig, PlannerConfig, TrackerConfig
from diffplan.data import TrajectoryLayout
from diffplan.diffusion.guide import GuideContext
from diffplan.enums import ExecutionMode, Selection, Tracking
from diffplan.guidance.per_env import EnvStrengths
from diffplan.planning.controllers import PlanController
from diffplan.planning.planner import GoalPlanner, Plan, select_candidates
from diffplan.training.checkpoint import TrainedModel

LAYOUT = TrajectoryLayout(obs_dim=4, act_dim=2)
H = 8


@pytest.fixture(scope="module")
def model() -> TrainedModel:
    return tiny_maze_model(H)


def _planner(model: TrainedModel, n_candidates: int = 1, sampler: str = "ddim",
             selection: Selection = Selection.first) -> GoalPlanner:
    return GoalPlanner(
        model,
        planner=PlannerConfig(n_candidates=n_candidates, selection=selection),
        diffusion=DiffusionConfig(n_timesteps=10, sampler=sampler, sampling_steps=3),
        goal_dims=[0, 1],
    )


STARTS = torch.tensor([[0.5, -1.0, 0.1, -0.2], [2.5, 2.0, 0.0, 0.3]])
GOALS = torch.tensor([[2.0, 1.5], [-1.5, -0.5]])


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_same_seed_same_plan_other_seed_other_plan(model: TrainedModel, sampler: str) -> None:
    planner = _planner(model, sampler=sampler)
    a = planner.plan(STARTS, torch.Generator().manual_seed(0), goals=GOALS)
    b = planner.plan(STARTS, torch.Generator().manual_seed(0), goals=GOALS)
    c = planner.plan(STARTS, torch.Generator().manual_seed(1), goals=GOALS)
    assert torch.equal(a.observations, b.observations) and torch.equal(a.actions, b.actions)
    assert not torch.allclose(a.observations[:, 1:-1], c.observations[:, 1:-1])


def test_plan_starts_at_observation_and_ends_at_goal(model: TrainedModel) -> None:
    plan = _planner(model).plan(STARTS, torch.Generator().manual_seed(0), goals=GOALS)
    assert plan.observations.shape == (2, H, 4)
    assert plan.actions.shape == (2, H, 2)
    torch.testing.assert_close(plan.observations[:, 0], STARTS, rtol=0, atol=1e-5)
    torch.testing.assert_close(plan.observations[:, -1, :2], GOALS, rtol=0, atol=1e-5)
    assert plan.finite.tolist() == [True, True]
    assert plan.plan_time_s > 0


def test_n_by_k_batching(model: TrainedModel) -> None:
    plan = _planner(model, n_candidates=3).plan(STARTS, torch.Generator().manual_seed(0), goals=GOALS)
    assert plan.observations.shape == (2, H, 4)
    assert plan.candidates is not None and plan.candidates.shape == (2, 3, H, 4)
    # Every candidate of environment n is conditioned on environment n's start and goal.
    for k in range(3):
        torch.testing.assert_close(plan.candidates[:, k, 0], STARTS, rtol=0, atol=1e-5)
        torch.testing.assert_close(plan.candidates[:, k, -1, :2], GOALS, rtol=0, atol=1e-5)
    # Candidates differ (independent noise); 'first' executes candidate 0.
    assert not torch.allclose(plan.candidates[:, 0], plan.candidates[:, 1])
    assert torch.equal(plan.observations, plan.candidates[:, 0])


def test_smoothest_selection_in_planner(model: TrainedModel) -> None:
    plan = _planner(model, n_candidates=3, selection=Selection.smoothest).plan(
        STARTS, torch.Generator().manual_seed(0), goals=GOALS)
    assert plan.candidates is not None
    jumps = plan.candidates.diff(dim=2).pow(2).sum(dim=(-1, -2))
    best = jumps.argmin(dim=1)
    for n in range(2):
        assert torch.equal(plan.observations[n], plan.candidates[n, best[n]])


def test_select_candidates_hand_made() -> None:
    straight = torch.linspace(0, 1, 5).unsqueeze(-1).expand(5, 2)  # (H, obs)
    zigzag = straight.clone()
    zigzag[2] += 1.0
    jump = straight.clone()
    jump[4] += 3.0
    broken = straight.clone()
    broken[1, 0] = float("nan")
    observations = torch.stack([
        torch.stack([zigzag, straight, jump]),
        torch.stack([broken, jump, zigzag]),
    ])  # (N=2, K=3, H=5, 2)
    assert select_candidates(observations, Selection.smoothest).tolist() == [1, 2]
    assert select_candidates(observations, Selection.first).tolist() == [0, 0]
    assert select_candidates(observations[:, :1], Selection.smoothest).tolist() == [0, 0]


def test_invalid_candidate_count(model: TrainedModel) -> None:
    with pytest.raises(ValueError, match="n_candidates must be >= 1, got 0"):
        _planner(model, n_candidates=0)


# -- the policy, with a stub planner whose plan is known ---------------------------------------
class StubPlanner:
    """Returns fixed plans: state h of env i is (10 i + h, -h, h / 10, i), action (h, -h)."""

    def __init__(self, horizon: int = 3, finite: bool = True) -> None:
        self.horizon = horizon
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []
        self.finite = finite

    def plan(self, observations: torch.Tensor, generator: torch.Generator, *, goals: torch.Tensor | None = None,
             previous: torch.Tensor | None = None, shift: int = 0, strengths: EnvStrengths | None = None) -> Plan:
        assert goals is not None
        self.calls.append((observations.numpy().copy(), goals.numpy().copy()))
        n = observations.shape[0]
        h = torch.arange(self.horizon, dtype=torch.float32)
        states = torch.stack([observations[:, :1] * 0 + 10 * observations[:, 3:4] + h,
                              (-h).expand(n, -1), (h / 10).expand(n, -1),
                              observations[:, 3:4].expand(n, self.horizon)], dim=-1)
        actions = torch.stack([h, -h], dim=-1).expand(n, -1, -1)
        return Plan(states, actions, torch.full((n,), self.finite), 0.01)


def _policy(mode: ExecutionMode, replan_every: int = 0, planner: StubPlanner | None = None) -> PlanController:
    cfg = PlannerConfig(mode=mode, replan_every=replan_every, tracker=TrackerConfig(p_gain=2.0, d_gain=0.5))
    return PlanController(planner or StubPlanner(), cfg, position_dims=[0, 1], velocity_dims=[2, 3])


OBS = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, -1.0, 1.0]])  # channel 3 = env id i
GOAL = np.zeros((2, 2))
ALL = np.ones(2, dtype=bool)


def _expected_pd(obs: np.ndarray, target: np.ndarray) -> np.ndarray:
    return 2.0 * (target[:, :2] - obs[:, :2]) + 0.5 * (target[:, 2:] - obs[:, 2:])


def test_tracker_pd_action_by_hand() -> None:
    policy = _policy(ExecutionMode.tracker)
    generator = torch.Generator()
    for step in range(5):
        actions, bad = policy.act(step, OBS, GOAL, ALL, generator)
        index = min(step + 1, 2)
        target = np.array([[10 * i + index, -index, index / 10, i] for i in (0, 1)], dtype=np.float64)
        if step + 1 >= 3:  # past the plan's end: hold the last position, zero velocity
            target[:, 2:] = 0.0
        np.testing.assert_allclose(actions, _expected_pd(OBS, target), rtol=1e-6)
        assert not bad.any()
    # Env 1 at step 0 by hand: target (11, -1, 0.1, 1), obs (1, 2, -1, 1).
    policy.reset(2)
    actions, _ = policy.act(0, OBS, GOAL, ALL, generator)
    np.testing.assert_allclose(actions[1], [2 * 10 + 0.5 * 1.1, 2 * -3 + 0.5 * 0.0], rtol=1e-6)


def test_actions_mode_returns_planned_actions() -> None:
    policy = _policy(ExecutionMode.actions)
    generator = torch.Generator()
    for step in range(4):
        actions, _ = policy.act(step, OBS, GOAL, ALL, generator)
        h = min(step, 2)
        np.testing.assert_array_equal(actions, [[h, -h], [h, -h]])


@pytest.mark.parametrize(("replan_every", "plan_steps"), [(0, [0]), (1, [0, 1, 2, 3, 4, 5, 6]), (3, [0, 3, 6])])
def test_replan_steps(replan_every: int, plan_steps: list[int]) -> None:
    stub = StubPlanner()
    policy = _policy(ExecutionMode.actions, replan_every, stub)
    generator = torch.Generator()
    for step in range(7):
        policy.act(step, OBS, GOAL, ALL, generator)
    assert [r.step for r in policy.records] == plan_steps
    assert len(stub.calls) == len(plan_steps)


def test_replan_only_active_envs_and_age_resets() -> None:
    stub = StubPlanner()
    policy = _policy(ExecutionMode.actions, 2, stub)
    generator = torch.Generator()
    policy.act(0, OBS, GOAL, ALL, generator)
    policy.act(1, OBS, GOAL, ALL, generator)
    only_first = np.array([True, False])
    policy.act(2, OBS, GOAL, only_first, generator)
    assert policy.records[-1].env_index.tolist() == [0]
    np.testing.assert_array_equal(stub.calls[-1][0], OBS[:1])
    actions, _ = policy.act(3, OBS, GOAL, ALL, generator)
    # Env 0 was replanned at step 2 (age 1 -> action 1); env 1 now replans (age 2 >= 2 -> action 0).
    assert policy.records[-1].env_index.tolist() == [1]
    np.testing.assert_array_equal(actions, [[1, -1], [0, 0]])


def test_non_finite_plans_are_flagged() -> None:
    policy = _policy(ExecutionMode.tracker, planner=StubPlanner(finite=False))
    _, bad = policy.act(0, OBS, GOAL, ALL, torch.Generator())
    assert bad.tolist() == [True, True]


def test_policy_argument_errors() -> None:
    with pytest.raises(ValueError, match="replan_every must be >= 0"):
        _policy(ExecutionMode.tracker, replan_every=-1)
    with pytest.raises(ValueError, match="as many velocity dims as position dims"):
        PlanController(StubPlanner(), PlannerConfig(), position_dims=[0, 1], velocity_dims=[2])


def test_policy_with_real_planner(model: TrainedModel) -> None:
    policy = PlanController(_planner(model), PlannerConfig(mode=ExecutionMode.actions, replan_every=0),
                            position_dims=[0, 1], velocity_dims=[2, 3])
    observations, goals = STARTS.numpy(), GOALS.numpy()
    actions, bad = policy.act(0, observations, goals, ALL, torch.Generator().manual_seed(0))
    plan = _planner(model).plan(STARTS, torch.Generator().manual_seed(0), goals=GOALS)
    np.testing.assert_allclose(actions, plan.actions[:, 0].numpy(), rtol=1e-6)
    assert not bad.any()


class LinePlanner:
    """Plans a straight line along x: token h at (h, 0) with zero velocity."""

    horizon = 10

    def plan(self, observations: torch.Tensor, generator: torch.Generator, *, goals: torch.Tensor | None = None,
             previous: torch.Tensor | None = None, shift: int = 0, strengths: EnvStrengths | None = None) -> Plan:
        n = observations.shape[0]
        h = torch.arange(self.horizon, dtype=torch.float32)
        states = torch.zeros(n, self.horizon, 4)
        states[..., 0] = h
        return Plan(states, torch.zeros(n, self.horizon, 2), torch.ones(n, dtype=torch.bool), 0.0)


def test_pursuit_targets_lookahead_past_closest_point_and_never_backwards() -> None:
    cfg = PlannerConfig(mode=ExecutionMode.tracker,
                        tracker=TrackerConfig(tracking=Tracking.pursuit, lookahead=2, p_gain=10.0, d_gain=1.0))
    policy = PlanController(LinePlanner(), cfg, position_dims=[0, 1], velocity_dims=[2, 3])
    generator = torch.Generator()
    one = np.ones(1, dtype=bool)
    # At x = 3.2 the closest token is 3; the target is token 5 = (5, 0), target velocity 0.
    obs = np.array([[3.2, 0.5, 1.0, 0.0]])
    actions, _ = policy.act(0, obs, GOAL[:1], one, generator)
    np.testing.assert_allclose(actions, [[10 * (5 - 3.2) - 1.0, 10 * (0 - 0.5) - 0.0]], rtol=1e-6)
    # Moving back to x = 0.9 does not move progress backwards: target stays token 5.
    obs = np.array([[0.9, 0.0, 0.0, 0.0]])
    actions, _ = policy.act(1, obs, GOAL[:1], one, generator)
    np.testing.assert_allclose(actions, [[10 * (5 - 0.9), 0.0]], rtol=1e-6)
    # Near the end the target is clamped to the last token.
    obs = np.array([[8.9, 0.0, 0.0, 0.0]])
    actions, _ = policy.act(2, obs, GOAL[:1], one, generator)
    np.testing.assert_allclose(actions, [[10 * (9 - 8.9), 0.0]], rtol=1e-6)


def test_time_tracker_with_stride_advances_one_token_per_stride_steps() -> None:
    cfg = PlannerConfig(mode=ExecutionMode.tracker,
                        tracker=TrackerConfig(tracking=Tracking.time, p_gain=1.0, d_gain=0.0))
    policy = PlanController(LinePlanner(), cfg, position_dims=[0, 1], velocity_dims=[2, 3],
                            stride=3)
    generator = torch.Generator()
    one = np.ones(1, dtype=bool)
    obs = np.zeros((1, 4))
    targets = [policy.act(t, obs, GOAL[:1], one, generator)[0][0, 0] for t in range(7)]
    # Steps 0-2 aim at token 1 (x = 1), steps 3-5 at token 2, step 6 at token 3.
    assert targets == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="task.stride=1"):
        PlanController(LinePlanner(), PlannerConfig(mode=ExecutionMode.actions), position_dims=[0, 1],
                       velocity_dims=[2, 3], stride=2)


class CountingLine(LinePlanner):
    """:class:`LinePlanner` that counts its plans; with ``hold_from`` the plan arrives at x = hold_from
    on that token and holds it to the end (a goal held after arrival)."""

    def __init__(self, hold_from: int | None = None) -> None:
        self.calls = 0
        self.hold_from = hold_from

    def plan(self, observations: torch.Tensor, generator: torch.Generator, *,
             goals: torch.Tensor | None = None, previous: torch.Tensor | None = None, shift: int = 0,
             strengths: EnvStrengths | None = None) -> Plan:
        self.calls += 1
        plan = super().plan(observations, generator, goals=goals)
        if self.hold_from is not None:
            plan.observations[:, self.hold_from:, 0] = float(self.hold_from)
        return plan


def test_pursuit_replans_when_progress_stalls() -> None:
    cfg = PlannerConfig(mode=ExecutionMode.tracker,
                        tracker=TrackerConfig(tracking=Tracking.pursuit, lookahead=2, replan_on_stall=3))
    planner = CountingLine()
    policy = PlanController(planner, cfg, position_dims=[0, 1], velocity_dims=[2, 3])
    one, generator = np.ones(1, dtype=bool), torch.Generator()
    stuck = np.array([[1.0, 0.0, 0.0, 0.0]])  # never moves: progress stays at token 1
    for t in range(5):
        policy.act(t, stuck, GOAL[:1], one, generator)
    # Plan at t=0; stalled at t=1,2,3 -> replanned at t=4.
    assert planner.calls == 2
    moving = [np.array([[x, 0.0, 0.0, 0.0]]) for x in range(2, 9)]
    for t, obs in enumerate(moving, start=5):
        policy.act(t, obs, GOAL[:1], one, generator)
    assert planner.calls == 2  # steady progress: no replanning
    with pytest.raises(ValueError, match="replan_on_stall"):
        PlanController(CountingLine(), PlannerConfig(tracker=TrackerConfig(replan_on_stall=-1)), position_dims=[0, 1],
                       velocity_dims=[2, 3])


def test_an_environment_waiting_on_its_held_goal_is_not_stalled() -> None:
    """A plan that reaches its goal at token 3 and holds it to token 9: an environment sitting at the
    goal makes no progress but is done, so the stall counter leaves it alone; one stuck before the
    goal is still replanned."""

    cfg = PlannerConfig(mode=ExecutionMode.tracker,
                        tracker=TrackerConfig(tracking=Tracking.pursuit, lookahead=2, replan_on_stall=3))
    one, generator = np.ones(1, dtype=bool), torch.Generator()
    planner = CountingLine(hold_from=3)  # arrives at x = 3 on token 3, held after it
    policy = PlanController(planner, cfg, position_dims=[0, 1], velocity_dims=[2, 3])
    for t in range(12):
        policy.act(t, np.array([[3.0, 0.0, 0.0, 0.0]]), GOAL[:1], one, generator)
    assert planner.calls == 1
    for stuck_at in (0.0, 1.0, 2.0):  # stuck before the goal, also within the lookahead of the hold
        planner = CountingLine(hold_from=3)
        policy = PlanController(planner, cfg, position_dims=[0, 1], velocity_dims=[2, 3])
        for t in range(5):
            policy.act(t, np.array([[stuck_at, 0.0, 0.0, 0.0]]), GOAL[:1], one, generator)
        assert planner.calls == 2, stuck_at


def test_settled_token_finds_where_a_plan_stops_moving() -> None:
    from diffplan.planning.controllers import settled_token

    positions = np.zeros((3, 6, 2))
    positions[0, :, 0] = np.arange(6)  # moves to its end
    positions[1, :, 0] = [0, 1, 2, 3, 3, 3]  # holds from token 3
    positions[2, :, 0] = [0, 1, 1, 2, 7, 7]  # its own end is token 3 (a shorter plan, padded)
    np.testing.assert_array_equal(settled_token(positions, np.array([5, 5, 3])), [5, 3, 3])


def test_negative_lookahead_is_refused() -> None:
    with pytest.raises(ValueError, match="planner.tracker.lookahead must be >= 0"):
        PlanController(LinePlanner(), PlannerConfig(tracker=TrackerConfig(lookahead=-1)), position_dims=[0, 1],
                       velocity_dims=[2, 3])


def test_goal_tokens_plans_arrive_by_their_token_and_the_earliest_feasible_one_is_kept(model: TrainedModel) -> None:
    from diffplan.planning.planner import EarliestArrivalSelector

    planner = GoalPlanner(model, planner=PlannerConfig(n_candidates=2, goal_tokens=[3, 7]),
                          diffusion=DiffusionConfig(n_timesteps=10, sampling_steps=3), goal_dims=[0, 1])
    assert planner.n_candidates == 4  # 2 per arrival token
    plan = planner.plan(STARTS, torch.Generator().manual_seed(0), goals=GOALS)
    assert plan.candidates is not None and plan.candidates.shape == (2, 4, H, 4)
    for group, token in enumerate([3, 7]):  # every candidate of a group holds the goal from its token on
        held = plan.candidates[:, 2 * group:2 * group + 2, token:, :2]
        torch.testing.assert_close(held, GOALS[:, None, None, :].expand_as(held), rtol=0, atol=1e-5)
    torch.testing.assert_close(plan.observations[:, 0], STARTS, rtol=0, atol=1e-5)
    # The selector by hand: positions along x; arrival by token 1 jumps 3 at once, by token 2 steps 1.5.
    raw = torch.zeros(2, 6, 4, 4)  # N=2, 3 arrival tokens x 2 candidates, H=4, D=4 (x, y, vx, vy)
    raw[0, 0:2, 1:, 0] = 3.0                                   # token 1: x 0 -> 3 in one step
    raw[0, 2:4, 1, 0], raw[0, 2:4, 2:, 0] = 1.5, 3.0           # token 2: steps of 1.5
    raw[0, 4:6, 1, 0], raw[0, 4:6, 2, 0], raw[0, 4:6, 3, 0] = 1.0, 2.0, 3.0  # token 3: steps of 1
    raw[0, 3, 1, 1] = 0.1                                      # the second token-2 candidate is less smooth
    raw[1] = raw[0]
    raw[1, 2:4, 1, 0] = 2.5                                    # env 1: token 2 steps 2.5 then 0.5: too large
    selector = EarliestArrivalSelector((1, 2, 3), 2, (0, 1), jump_ratio=1.6)
    chosen, values = selector.select(raw, raw, GuideContext(10))
    assert chosen.tolist() == [2, 4] and values is None  # env 0: token 2 (smoothest); env 1: token 3
    with pytest.raises(ValueError, match=r"planner.goal_tokens=\[0, 7\]: arrival tokens must lie in \[1, "):
        GoalPlanner(model, planner=PlannerConfig(goal_tokens=[0, 7]),
                    diffusion=DiffusionConfig(n_timesteps=10, sampling_steps=3), goal_dims=[0, 1])
