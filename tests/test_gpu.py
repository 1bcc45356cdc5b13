"""The same planning and training paths on CUDA (skipped on machines without a GPU)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from diffplan.config import Config, DiffusionConfig, GuidanceConfig, PlannerConfig, ValueConfig, WarmStartConfig
from diffplan.data import LimitsNormalizer, TrajectoryLayout
from diffplan.diffusion.loss import diffusion_loss
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.guidance import ValueGuide
from diffplan.models.transformer import TrajectoryTransformer
from diffplan.models.unet import TemporalUnet
from diffplan.models.value import build_value_net
from diffplan.planning.planner import GoalPlanner
from diffplan.planning.value_planner import ValuePlanner
from diffplan.training.checkpoint import TrainedModel

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
LAYOUT = TrajectoryLayout(obs_dim=4, act_dim=2)


def _model(device: str) -> TrainedModel:
    torch.manual_seed(0)
    denoiser = TemporalUnet(transition_dim=6, horizon=16, dim=8, dim_mults=(1, 2)).eval().to(device)
    normalizer = LimitsNormalizer(-2 * torch.ones(6), 2 * torch.ones(6)).to(device)
    return TrainedModel(denoiser, NoiseSchedule(10).to(device), normalizer, LAYOUT, Config(), 16, 0, Path("mem"))


def test_cuda_plan_matches_cpu_plan_and_keeps_constraints() -> None:
    plans = {}
    for device in ("cpu", "cuda"):
        planner = GoalPlanner(_model(device), planner=PlannerConfig(n_candidates=2),
                              diffusion=DiffusionConfig(n_timesteps=10, sampling_steps=5), goal_dims=[0, 1],
                              device=device)
        start, goal = torch.tensor([[0.5, -1.0, 0.1, 0.0]]), torch.tensor([[1.0, 1.5]])
        x_init_generator = torch.Generator(device=device).manual_seed(0)
        plan = planner.plan(start, x_init_generator, goals=goal)
        torch.testing.assert_close(plan.observations[0, 0], start[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(plan.observations[0, -1, :2], goal[0], atol=1e-5, rtol=0)
        plans[device] = plan
    assert plans["cuda"].observations.shape == plans["cpu"].observations.shape


def test_cuda_training_step_runs() -> None:
    model = _model("cuda")
    denoiser = copy.deepcopy(model.denoiser).train()
    x0 = torch.randn(4, 16, 6, device="cuda")
    levels = torch.randint(1, 11, (4, 1), device="cuda").expand(4, 16)
    loss = diffusion_loss(denoiser, model.schedule, x0, levels, torch.randn_like(x0))
    loss.backward()
    assert torch.isfinite(loss)


def value_plans(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A value-guided cold plan, then a warm-started one, for 3 environments (first actions)."""
    model = _model(device)
    torch.manual_seed(0)
    value = build_value_net(ValueConfig(dim=8, dim_mults=[1, 2]), transition_dim=6, horizon=16).eval().to(device)
    planner = ValuePlanner(
        model, ValueGuide(value), planner=PlannerConfig(mode="actions", n_candidates=4,
                                                       warm_start=WarmStartConfig(level=4, steps=2)),
        diffusion=DiffusionConfig(n_timesteps=10, sampling_steps=5),
        guidance=GuidanceConfig(kind="value", scale=1.0), device=device,
    )
    generator = torch.Generator(device=device).manual_seed(0)
    observations = torch.tensor([[0.5, -1.0, 0.1, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, -0.5, 0.5]])
    cold = planner.plan(observations, generator)
    warm = planner.plan(observations, generator, previous=cold.normalized, shift=1)
    return cold.actions[:, 0].cpu(), warm.actions[:, 0].cpu()


def test_cuda_value_guided_planning_with_warm_start() -> None:
    cold, warm = value_plans("cuda")
    assert cold.shape == warm.shape == (3, 2)
    assert torch.isfinite(cold).all() and torch.isfinite(warm).all()


def test_cuda_transformer_matches_cpu_and_trains() -> None:
    torch.manual_seed(0)
    net = TrajectoryTransformer(transition_dim=6, horizon=16, d_model=32, n_layers=2, n_heads=4, frame_stack=2).eval()
    x, levels = torch.randn(2, 16, 6), torch.rand(2, 16)
    with torch.no_grad():
        expected = net(x, levels)
        got = net.to("cuda")(x.cuda(), levels.cuda())
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)
    denoiser = net.train()
    schedule = NoiseSchedule(10).to("cuda")
    x0 = torch.randn(4, 16, 6, device="cuda")
    loss = diffusion_loss(denoiser, schedule, x0, torch.randint(1, 11, (4, 16), device="cuda"), torch.randn_like(x0))
    loss.backward()
    assert torch.isfinite(loss)


def test_cuda_critic_ranking_matches_cpu() -> None:
    """planner.critic on CUDA: the critic's values of the same plans equal the CPU's, and the planner
    keeps the candidate of highest value."""
    from diffplan.agents.td3bc import TD3BCAgent
    from diffplan.diffusion.guide import GuideContext
    from diffplan.guidance.critic import CriticGuide

    torch.manual_seed(1)
    agent = TD3BCAgent(4, 2, hidden_sizes=(16,)).eval()
    x = torch.randn(5, 16, 6)
    levels = torch.zeros(5, 16, dtype=torch.long)
    context = GuideContext(n_timesteps=10)
    expected = CriticGuide(agent, LAYOUT, _model("cpu").normalizer).objective(x, levels, context)
    model = _model("cuda")
    ranker = CriticGuide(agent.to("cuda"), LAYOUT, model.normalizer)
    got = ranker.objective(x.cuda(), levels.cuda(), context)
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)
    planner = ValuePlanner(
        model, ValueGuide(torch.nn.Identity()), planner=PlannerConfig(mode="actions", n_candidates=4),
        diffusion=DiffusionConfig(n_timesteps=10, sampling_steps=5), guidance=GuidanceConfig(kind="none"),
        device="cuda", ranker=ranker,
    )
    plan = planner.plan(torch.tensor([[0.5, -1.0, 0.1, 0.0], [0.0, 0.0, 0.0, 0.0]]),
                        torch.Generator(device="cuda").manual_seed(0))
    assert plan.candidate_values is not None and plan.values is not None
    torch.testing.assert_close(plan.values.cpu(), plan.candidate_values.max(dim=1).values.cpu())
