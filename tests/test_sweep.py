"""diffplan-sweep: sweep configs and their errors, per-environment guidance strengths (sampler,
composite guide, classifier-free guidance, planners, policies), sequential and batched tiny
sweeps end to end, resume, and the Hydra launcher configs."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from test_commands import CONF, tiny_config
from torch import Tensor

from diffplan.config import (
    Config,
    DiffusionConfig,
    GuidanceConfig,
    PlannerConfig,
    SweepCellConfig,
    as_config,
    register_configs,
)
from diffplan.data import LimitsNormalizer, TrajectoryLayout
from diffplan.diffusion.classifier_free import ClassifierFreeGuidance
from diffplan.diffusion.sampler import Sampler, full_sequence_matrix
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.enums import EvalController, GuideTarget
from diffplan.guidance import CompositeGuide, EnvStrengths, Guidance, GuideContext, GuideOutput
from diffplan.models.unet import TemporalUnet
from diffplan.pipeline.collect import run_collect
from diffplan.pipeline.evaluate import prepare_evaluation, run_episodes
from diffplan.pipeline.train import run_train
from diffplan.planning.controllers import PlanController
from diffplan.planning.planner import GoalPlanner, Plan
from diffplan.planning.value_planner import ValuePlanner
from diffplan.sweep import SweepError, plan_cells
from diffplan.sweep.batched import RESET_SEED_STRIDE, batch_passes, pass_kind, pass_strengths
from diffplan.sweep.runner import run_sweep
from diffplan.training.checkpoint import TrainedModel

SWEEP_CONF = Path(CONF) / "sweep"

CTX = GuideContext(10)


def _compose(overrides: list[str]) -> Config:
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return as_config(compose("config", overrides=overrides))


# -- configs and their errors ------------------------------------------------------------------
@pytest.fixture(scope="module")
def base() -> Config:
    return _compose(["sweep.cells=[{kind: goal, strengths: [1.0]}]"])


def _with_cells(cfg: Config, cells: list[dict], **sweep: object) -> Config:
    return dataclasses.replace(cfg, sweep=dataclasses.replace(
        cfg.sweep, cells=[SweepCellConfig(**c) for c in cells], **sweep))  # type: ignore[arg-type]


@pytest.mark.parametrize(("cells", "message"), [
    ([], r"sweep.cells is empty; choose a sweep"),
    ([{"kind": "valu", "strengths": [0.1]}], r"sweep.cells\[0\].kind='valu' is not a sweep kind; use one of none"),
    ([{"kind": "none"}, {"kind": "goal"}], r"sweep.cells\[1\].strengths is empty; list the goal strengths"),
    ([{"kind": "value", "strengths": [0.1, -0.2]}], r"sweep.cells\[0\].strengths\[1\]=-0.2 is not a strength >= 0"),
    ([{"kind": "goal", "strengths": [0.5]}, {"kind": "goal", "strengths": [1.0, 0.5]}],
     r"sweep.cells\[1\] repeats cell 'goal=0.5' of sweep.cells\[0\]; remove the duplicate"),
    ([{"kind": "none", "strengths": [0.3]}], r"sweep.cells\[0\]: kind=none is unguided and takes no strengths"),
    ([{"kind": "classifier_free", "strengths": [1.2], "mc_samples": 4}],
     r"sweep.cells\[0\].mc_samples=4: kind=classifier_free .* drop mc_samples"),
    ([{"kind": "goal", "strengths": [1.0], "mc_samples": 0}], r"sweep.cells\[0\].mc_samples must be >= 1"),
])
def test_bad_sweeps_name_the_key_and_the_fix(base: Config, cells: list[dict], message: str) -> None:
    with pytest.raises(SweepError, match=message):
        plan_cells(_with_cells(base, cells))


def test_bad_sweeps_from_the_command_line(base: Config) -> None:
    with pytest.raises(SweepError, match=r"sweep.cells\[0\].kind='valu' is not a sweep kind"):
        plan_cells(_compose(["sweep.cells=[{kind: valu, strengths: [0.1]}]"]))
    cells = [{"kind": "none"}, {"kind": "goal", "strengths": [1.0]}]
    with pytest.raises(SweepError, match=r"sweep.cells_index=2 is outside this sweep's 2 cells; use 0..1"):
        plan_cells(_with_cells(base, cells, cells_index=2))
    bc_eval = dataclasses.replace(base.eval, controller=EvalController.bc)
    bc = dataclasses.replace(_with_cells(base, cells), eval=bc_eval)
    with pytest.raises(SweepError, match=r"eval.controller=bc: a sweep varies the planner's guidance"):
        plan_cells(bc)


def test_cells_become_overrides_labels_and_folders() -> None:
    cfg = _compose(["guidance=policy", "guidance.policy_scale=0.02", "sweep.name=grid",
                    "planner.return_guidance.weight=1.2",
                    "sweep.cells=[{kind: none}, {kind: value, strengths: [0.1, 1]}, {kind: policy, strengths: [0.03]},"
                    " {kind: value_policy, strengths: [0.2]}, {kind: classifier_free, strengths: [1.5]},"
                    " {kind: goal, strengths: [2], mc_samples: 4}]"])
    planned = plan_cells(cfg)
    assert [p.label for p in planned] == ["none=0", "value=0.1", "value=1", "policy=0.03",
                                          "value_policy=0.2,policy=0.02", "classifier_free=1.5", "goal+mc4=2"]
    assert [p.cell.index for p in planned] == list(range(7))
    by = {p.label: p for p in planned}
    assert by["none=0"].cfg.guidance.kind == "none" and by["none=0"].key == {
        "task": "pointmaze-umaze", "kind": "none", "strength": 0.0, "label": "none=0"}
    assert by["value=1"].cfg.guidance.kind == "value" and by["value=1"].cfg.guidance.scale == 1.0
    assert by["policy=0.03"].cfg.guidance.policy_scale == 0.03
    vp = by["value_policy=0.2,policy=0.02"].cfg.guidance
    assert vp.kind == "value_policy" and vp.scale == 0.2 and vp.policy_scale == 0.02
    classifier_free_cell = by["classifier_free=1.5"].cfg
    assert classifier_free_cell.guidance.kind == "none" and classifier_free_cell.planner.return_guidance.weight == 1.5
    assert by["goal+mc4=2"].cfg.guidance.mc_samples == 4 and by["goal+mc4=2"].key["kind"] == "goal+mc4"
    assert by["value=0.1"].out_dir == Path("runs/sweeps/grid/value=0.1")
    assert by["value=0.1"].cfg.eval.out_dir == "runs/sweeps/grid/value=0.1"
    # Passes: goal (mazes) never shares a batch with the locomotion kinds; mc_samples=4 is its own structure.
    passes = batch_passes(planned)
    assert [[p.label for p in part] for part in passes] == [
        ["none=0", "value=0.1", "value=1", "policy=0.03", "value_policy=0.2,policy=0.02", "classifier_free=1.5"],
        ["goal+mc4=2"]]
    assert pass_kind(passes[0]) == "value_policy" and pass_kind(passes[1]) == "goal"
    strengths = pass_strengths(passes[0], n_episodes=2)
    assert strengths is not None and len(strengths) == 12
    assert strengths.scale is not None and strengths.weights is not None and strengths.return_weight is not None
    assert strengths.scale[::2].tolist() == pytest.approx([0.0, 0.1, 1.0, 0.03, 1.0, 0.0])
    torch.testing.assert_close(strengths.weights[::2], torch.tensor(
        [[0, 0], [1, 0], [1, 0], [0, 1], [0.2, 0.02], [0, 0]]))
    assert strengths.return_weight[::2].tolist() == pytest.approx([1.2, 1.2, 1.2, 1.2, 1.2, 1.5])
    assert torch.equal(strengths.scale[::2], strengths.scale[1::2])  # each cell's episodes are contiguous


@pytest.mark.parametrize("path", sorted(SWEEP_CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_sweep_option_composes(path: Path) -> None:
    cfg = _compose([f"sweep={path.stem}", "guidance=policy"])
    assert "${" not in cfg.sweep.out_dir and "${" not in cfg.sweep.name
    if path.stem.startswith("hopper-"):
        # The two halves of the hopper report share one folder (and its report).
        assert cfg.sweep.out_dir == "runs/sweeps/pointmaze-umaze-report"
        assert cfg.sweep.report == "runs/sweeps/pointmaze-umaze-report/report"
    else:
        assert cfg.sweep.out_dir == f"runs/sweeps/{cfg.sweep.name}"
    if path.stem == "default":
        assert cfg.sweep.cells == [] and not cfg.sweep.batched and cfg.sweep.report is None
    else:
        assert len(plan_cells(cfg)) >= 4


def test_launcher_configs_compose_without_launching() -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[launchers]'")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[launchers]'")
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        joblib = compose("config", overrides=["hydra/launcher=sweep_joblib", "hydra.launcher.n_jobs=3"],
                         return_hydra_config=True).hydra.launcher
        slurm = compose("config", overrides=["hydra/launcher=sweep_slurm", "hydra.launcher.partition=gpu",
                                             "hydra.launcher.timeout_min=30", "hydra.launcher.gpus_per_node=2"],
                        return_hydra_config=True).hydra.launcher
    assert joblib._target_.endswith("JoblibLauncher") and joblib.n_jobs == 3
    assert slurm._target_.endswith("SlurmLauncher")
    assert (slurm.partition, slurm.timeout_min, slurm.gpus_per_node) == ("gpu", 30, 2)


# -- per-sample strengths, unit level ---------------------------------------------------------
B, H, D = 2, 8, 3


class SineGuide:
    """A non-linear objective sum(cos(x)): gradient -sin(x), different for every sample."""

    def objective(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
        return torch.cos(x).sum(dim=(1, 2))

    def gradient(self, x: Tensor, levels: Tensor, context: GuideContext) -> GuideOutput:
        return GuideOutput(-torch.sin(x), self.objective(x, levels, context))


class OffsetGuide:
    """Objective sum(c x): gradient c everywhere."""

    def __init__(self, c: float) -> None:
        self.c = c

    def objective(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
        return (self.c * x).sum(dim=(1, 2))

    def gradient(self, x: Tensor, levels: Tensor, context: GuideContext) -> GuideOutput:
        return GuideOutput(torch.full_like(x, self.c), self.objective(x, levels, context))


def _halving_x0(x_t: Tensor, levels: Tensor) -> Tensor:
    """An elementwise x0 denoiser: every sample's output depends on that sample alone."""
    return 0.5 * x_t * (1 - levels.unsqueeze(-1))


@pytest.mark.parametrize("apply_to", list(GuideTarget))
def test_per_sample_scales_equal_separate_runs_bitwise(apply_to: GuideTarget) -> None:
    """A batch with scales [0, s] equals a run with scale 0 (or no guidance) on sample 0 and one with
    scale s on sample 1, bit for bit, when the noise is the same (DDIM eta 0, same x_init)."""
    sampler = Sampler(NoiseSchedule(10, prediction="x0"), clip_denoised=1.0)
    matrix = full_sequence_matrix(10, 5, H)
    x_init = torch.randn(B, H, D, generator=torch.Generator().manual_seed(0))
    s = 0.7

    def run(x: Tensor, scale: float | Tensor | None) -> Tensor:
        guidance = None if scale is None else Guidance(SineGuide(), scale=scale, t_stopgrad=0, apply_to=apply_to)
        return sampler.sample(_halving_x0, tuple(x.shape), matrix, x_init=x, guidance=guidance)  # type: ignore[arg-type]

    batched = run(x_init, torch.tensor([0.0, s]))
    assert torch.equal(batched[0], run(x_init[:1], None)[0])
    assert torch.equal(batched[0], run(x_init[:1], 0.0)[0])
    assert torch.equal(batched[1], run(x_init[1:], s)[0])
    assert not torch.equal(batched[1], run(x_init[1:], None)[0])
    assert torch.equal(run(x_init, torch.tensor([s, s])), run(x_init, s))  # a constant vector is the float
    with pytest.raises(ValueError, match="per-sample guidance scale has 3 entries but the batch has 2"):
        run(x_init, torch.tensor([0.0, s, s]))


def test_per_sample_scales_on_a_unet_equal_runs_of_the_same_batch() -> None:
    """With a real denoiser, row 0 of scales [0, s] equals row 0 of an unguided batch and row 1 equals
    row 1 of a batch guided at s everywhere (same batch shape, same generator: same noise)."""
    torch.manual_seed(0)
    unet = TemporalUnet(transition_dim=D, horizon=H, dim=8, dim_mults=(1, 2)).eval()
    sampler = Sampler(NoiseSchedule(10), eta=1.0, clip_denoised=1.0)
    matrix = full_sequence_matrix(10, 4, H)

    def run(scale: float | Tensor | None) -> Tensor:
        guidance = None if scale is None else Guidance(SineGuide(), scale=scale, t_stopgrad=0)
        return sampler.sample(unet, (B, H, D), matrix, generator=torch.Generator().manual_seed(3), guidance=guidance)

    mixed = run(torch.tensor([0.0, 2.0]))
    assert torch.equal(mixed[0], run(None)[0])
    assert torch.equal(mixed[1], run(2.0)[1])


def test_composite_guide_per_sample_weights() -> None:
    x = torch.randn(3, H, D, generator=torch.Generator().manual_seed(1))
    a, b = SineGuide(), OffsetGuide(2.0)
    weighted = CompositeGuide([(a, torch.tensor([1.0, 0.0, 0.5])), (b, torch.tensor([0.0, 1.0, 0.25]))])
    out = weighted.gradient(x, torch.zeros(3, H), CTX)
    assert torch.equal(out.gradient[0], a.gradient(x, x, CTX)[0][0])
    assert torch.equal(out.gradient[1], b.gradient(x, x, CTX)[0][1])
    assert torch.equal(out.gradient[2], CompositeGuide([(a, 0.5), (b, 0.25)]).gradient(x, x, CTX).gradient[2])
    assert torch.equal(out.value, weighted.objective(x, x, CTX))

    class Broken(OffsetGuide):
        def gradient(self, x: Tensor, levels: Tensor, context: GuideContext) -> GuideOutput:
            return GuideOutput(torch.full_like(x, float("nan")), x.new_full((x.shape[0],), float("nan")))

    # A zero weight adds exactly nothing, even for a non-finite term.
    masked = CompositeGuide([(a, 1.0), (Broken(0.0), torch.tensor([0.0, 0.0, 1.0]))]).gradient(x, x, CTX)
    assert torch.isfinite(masked.gradient[:2]).all() and torch.isnan(masked.gradient[2]).all()


def test_env_strengths_select_repeat_and_apply() -> None:
    strengths = EnvStrengths(scale=[0.0, 1.0, 2.0], weights=[[1, 0], [0, 1], [0.5, 0.5]], return_weight=[1, 1.2, 1.5])
    picked = strengths.select(np.array([2, 0])).repeat_interleave(2)
    assert picked.scale is not None and picked.scale.tolist() == [2.0, 2.0, 0.0, 0.0]
    assert picked.return_weight is not None and picked.return_weight.tolist() == pytest.approx([1.5, 1.5, 1.0, 1.0])
    composite = CompositeGuide([(SineGuide(), 0.1), (OffsetGuide(1.0), 0.2)])
    applied = picked.apply(Guidance(composite, scale=1.0))
    assert applied is not None and isinstance(applied.guide, CompositeGuide)
    assert applied.guide.terms[0][1].tolist() == [0.5, 0.5, 1.0, 1.0]  # type: ignore[union-attr]
    assert composite.terms[0][1] == 0.1  # the original is untouched
    with pytest.raises(ValueError, match="need a guided planner"):
        picked.apply(None)
    with pytest.raises(ValueError, match="need a CompositeGuide"):
        picked.apply(Guidance(SineGuide(), scale=1.0))
    with pytest.raises(ValueError, match="different numbers of environments"):
        EnvStrengths(scale=[0.0, 1.0], return_weight=[1.0])
    with pytest.raises(IndexError):
        strengths.select([3])


def test_classifier_free_guidance_per_sample_weight_is_the_float_weight() -> None:
    torch.manual_seed(0)
    unet = TemporalUnet(transition_dim=4, horizon=H, dim=8, dim_mults=(1, 2), return_condition=True).eval()
    assert unet.null_condition is not None
    with torch.no_grad():
        unet.null_condition.normal_()
    x = torch.randn(3, H, 4, generator=torch.Generator().manual_seed(2))
    levels = torch.full((3, H), 0.5)
    condition = torch.tensor([0.9, 0.9, 0.9])
    with torch.no_grad():
        mixed = ClassifierFreeGuidance(unet, condition, torch.tensor([0.0, 1.2, 2.0]))(x, levels)
        for i, w in enumerate([0.0, 1.2, 2.0]):
            assert torch.equal(mixed[i], ClassifierFreeGuidance(unet, condition, w)(x, levels)[i])


# -- planners and policies with per-environment strengths ----------------------------------
LAYOUT = TrajectoryLayout(obs_dim=4, act_dim=2)
PH = 8


@pytest.fixture(scope="module")
def model() -> TrainedModel:
    torch.manual_seed(0)
    denoiser = TemporalUnet(transition_dim=LAYOUT.transition_dim, horizon=PH, dim=8, dim_mults=(1, 2)).eval()
    mins = torch.tensor([-2.0, -2.0, -1.0, -1.0, -1.0, -1.0])
    maxs = torch.tensor([3.0, 3.0, 1.0, 1.0, 1.0, 1.0])
    return TrainedModel(denoiser=denoiser, schedule=NoiseSchedule(10), normalizer=LimitsNormalizer(mins, maxs),
                        layout=LAYOUT, config=Config(), horizon=PH, step=0, path=Path("memory"))


STARTS = torch.tensor([[0.5, -1.0, 0.1, -0.2], [2.5, 2.0, 0.0, 0.3], [0.0, 0.0, 0.0, 0.0]])
GOALS = torch.tensor([[2.0, 1.5], [-1.5, -0.5], [1.0, 1.0]])


def _goal_planner(model: TrainedModel, kind: str = "goal", k: int = 2,
                  **guidance: object) -> GoalPlanner:
    settings: dict[str, object] = {"scale": 1.0, "t_stopgrad": 0, "through_denoiser": True, **guidance}
    return GoalPlanner(model, planner=PlannerConfig(n_candidates=k), goal_dims=[0, 1],
                       diffusion=DiffusionConfig(n_timesteps=10, sampler="ddpm", sampling_steps=4),
                       guidance=GuidanceConfig(kind=kind, **settings))  # type: ignore[arg-type]


def _plan_goal(planner: GoalPlanner, scales: list[float] | None) -> Tensor:
    strengths = None if scales is None else EnvStrengths(scale=scales)
    plan = planner.plan(STARTS, torch.Generator().manual_seed(5), goals=GOALS, strengths=strengths)
    assert plan.candidates is not None
    return plan.candidates  # (N, K, H, obs)


def test_goal_planner_per_env_scales_reach_the_right_environments(model: TrainedModel) -> None:
    """K = 2 candidates per environment: each environment's scale covers both its candidates."""
    planner = _goal_planner(model)
    mixed = _plan_goal(planner, [0.0, 3.0, 0.0])
    unguided = _plan_goal(_goal_planner(model, "none"), None)
    guided = _plan_goal(planner, [3.0, 3.0, 3.0])
    assert torch.equal(mixed[0], unguided[0]) and torch.equal(mixed[2], unguided[2])
    assert torch.equal(mixed[1], guided[1]) and not torch.equal(mixed[1], unguided[1])
    assert torch.equal(_plan_goal(planner, [0.0, 0.0, 0.0]), unguided)


def test_goal_guidance_in_the_goal_planner_pulls_plans_to_the_goal(model: TrainedModel) -> None:
    """On the x0 estimate (the last step's estimate is the plan), the goal guide's gradient moves the
    planned positions towards each environment's goal, whatever the (untrained) denoiser predicts."""
    planner = _goal_planner(model, k=4, apply_to=GuideTarget.x0, through_denoiser=False, scale_grad_by_std=False,
                            n_guide_steps=4)

    def distance(scales: list[float]) -> float:
        positions = _plan_goal(planner, scales)[..., 1:-1, :2]  # the free tokens (ends are inpainted)
        return float((positions - GOALS[:, None, None, :]).norm(dim=-1).mean())

    assert distance([0.5] * 3) < distance([0.0] * 3) - 0.5
    with pytest.raises(ValueError, match=r"the maze goal planner takes guidance.kind in \['none', 'value', 'goal'.*\], "
                                         r"got guidance.kind=policy \(it is for locomotion tasks\)"):
        _goal_planner(model, "policy")


class LinearValue:
    def objective(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
        return x[..., 4].sum(dim=1)

    def gradient(self, x: Tensor, levels: Tensor, context: GuideContext) -> GuideOutput:
        grad = torch.zeros_like(x)
        grad[..., 4] = 1.0
        return GuideOutput(grad, self.objective(x, levels, context))


def test_value_planner_per_env_scales_follow_its_candidate_layout(model: TrainedModel) -> None:
    planner = ValuePlanner(model, LinearValue(), planner=PlannerConfig(n_candidates=3),
                           diffusion=DiffusionConfig(n_timesteps=10, sampling_steps=3),
                           guidance=GuidanceConfig(kind="value", scale=0.05, t_stopgrad=1))

    def plan(scales: list[float]) -> Tensor:
        out = planner.plan(STARTS, torch.Generator().manual_seed(0), strengths=EnvStrengths(scale=scales))
        assert out.candidates is not None and out.candidate_values is not None
        return out.candidate_values

    mixed, zero, full = plan([0.0, 0.5, 0.0]), plan([0.0] * 3), plan([0.5] * 3)
    assert torch.equal(mixed[0], zero[0]) and torch.equal(mixed[2], zero[2]) and torch.equal(mixed[1], full[1])
    assert (full[1] > zero[1]).all()  # guidance raises every candidate's value
    with pytest.raises(ValueError, match="strengths cover 2 environments but 3 are planned for"):
        planner.plan(STARTS, torch.Generator(), strengths=EnvStrengths(scale=[0.0, 1.0]))


def test_policy_hands_the_planner_the_rows_of_the_environments_it_replans() -> None:
    seen: list[list[float]] = []

    class Spy:
        def plan(self, observations: Tensor, generator: torch.Generator, *, goals: Tensor | None = None,
                 previous: Tensor | None = None, shift: int = 0, strengths: EnvStrengths | None = None) -> Plan:
            assert strengths is not None and strengths.scale is not None
            seen.append(strengths.scale.tolist())
            n = observations.shape[0]
            return Plan(torch.zeros(n, 4, 4), torch.zeros(n, 4, 2), torch.ones(n, dtype=torch.bool), 0.0)

    policy = PlanController(Spy(), PlannerConfig(), position_dims=[0, 1], velocity_dims=[2, 3],
                            strengths=EnvStrengths(scale=[0.0, 1.0, 2.0]))
    policy.reset(3)
    obs, goals = np.zeros((3, 4)), np.zeros((3, 2))
    policy.act(0, obs, goals, np.array([True, False, True]), torch.Generator())
    policy.act(1, obs, goals, np.array([False, True, False]), torch.Generator())
    assert seen == [[0.0, 2.0], [1.0]]
    with pytest.raises(ValueError, match="cover 3 environments but the batch has 4"):
        policy.reset(4)


# -- tiny sweeps end to end -----------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny umaze dataset and a 4-step model (test_commands' tiny budget)."""
    folder = tmp_path_factory.mktemp("sweep")
    cfg = tiny_config(folder)
    run_collect(cfg)
    run_train(cfg)
    return folder


def _sweep_config(folder: Path, out: str, cells: str, extra: list[str] | None = None) -> Config:
    return tiny_config(folder, [
        "eval.n_episodes=2", "eval.n_envs=2", "eval.seeds=[0]", "eval.plots=false", "eval.progress=false",
        "task.episode_steps=30", "guidance=goal", f"sweep.out_dir={folder / out}", f"sweep.cells={cells}",
        *(extra or []),
    ])


GRID = "[{kind: goal, strengths: [0.5, 3.0]}]"


def _results(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def sequential(trained: Path) -> list[Path]:
    """The 2-strength x 1-seed grid evaluated sequentially (eval.n_envs = eval.n_episodes = 2)."""
    return run_sweep(_sweep_config(trained, "seq", GRID))


def test_sequential_sweep_writes_cells_resumes_and_refuses_a_changed_config(
    trained: Path, sequential: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    paths = sequential
    assert paths == [trained / "seq" / "goal=0.5" / "results.json", trained / "seq" / "goal=3" / "results.json"]
    for path, strength in zip(paths, [0.5, 3.0], strict=True):
        results = _results(path)
        assert results["cell"] == {"task": "pointmaze-umaze", "kind": "goal", "strength": strength,
                                   "label": path.parent.name}
        assert results["config"]["guidance"]["scale"] == strength and "batched" not in results
        assert results["n_episodes"] == 2 and [e["reset_seed"] for e in results["episodes"]] == [0, 1]
    mtimes = [p.stat().st_mtime_ns for p in paths]

    # A new cell, run alone as one job of a multirun would (sweep.cells_index): the others stay untouched.
    more = "[{kind: goal, strengths: [0.5, 3.0]}, {kind: none}]"
    assert run_sweep(_sweep_config(trained, "seq", more, ["sweep.cells_index=2"])) == [
        trained / "seq" / "none=0" / "results.json"]
    assert _results(trained / "seq" / "none=0" / "results.json")["cell"]["kind"] == "none"
    # The whole grid again: every cell is finished with this config, so nothing runs.
    caplog.set_level(logging.INFO, logger="diffplan")
    assert run_sweep(_sweep_config(trained, "seq", more))[:2] == paths
    assert [p.stat().st_mtime_ns for p in paths] == mtimes
    assert sum("already holds it with this config; skipping" in r.message for r in caplog.records) == 3

    changed = _sweep_config(trained, "seq", GRID, ["diffusion.sampling_steps=2"])
    with pytest.raises(SweepError, match=r"cell 'goal=0.5' was already evaluated with another config .*"
                                         r"diffusion.sampling_steps differ \(diffusion.sampling_steps: stored 4, "
                                         r"now 2\); delete .*goal=0.5 to evaluate it again, or use a new sweep.name"):
        run_sweep(changed)
    assert [p.stat().st_mtime_ns for p in paths] == mtimes


def test_sweep_report_option_writes_the_report_of_all_cells(trained: Path, sequential: list[Path]) -> None:
    # Resuming the finished grid with sweep.report set evaluates nothing and writes the report.
    report = trained / "seq-report"
    run_sweep(_sweep_config(trained, "seq", GRID, [f"sweep.report={report}", "sweep.report_title=tiny"]))
    html = (report / "report.html").read_text()
    assert "goal=0.5" in html and "goal=3" in html and "<h1>tiny</h1>" in html
    assert (report / "report.md").exists()
    rows = (report / "episodes.csv").read_text().strip().splitlines()
    assert len(rows) - 1 >= 4  # header + 2 cells x 2 episodes (plus cells added by other tests)


def test_batched_sweep_writes_the_sequential_format(trained: Path, sequential: list[Path]) -> None:
    batched = run_sweep(_sweep_config(trained, "bat", GRID, ["sweep.batched=true"]))
    for seq_path, bat_path in zip(sequential, batched, strict=True):
        seq, bat = _results(seq_path), _results(bat_path)
        assert bat["cell"] == seq["cell"] and bat["batched"] == {"n_envs": 4, "cells_in_batch": ["goal=0.5", "goal=3"]}
        assert set(bat) - {"batched"} == set(seq)
        assert [(e["seed"], e["episode"], e["reset_seed"]) for e in bat["episodes"]] == [
            (e["seed"], e["episode"], e["reset_seed"]) for e in seq["episodes"]]
        # Each cell counts the plans of its own environments (each plans at least once), not the pass's.
        assert bat["plans_through_walls"]["n_plans"] >= 2 and bat["plans_through_walls"]["rate"] is not None
        # The stored configs differ only where the sweeps do: the mode and the output folders.
        seq_cfg, bat_cfg = seq["config"], bat["config"]
        assert bat_cfg["sweep"]["batched"] and not seq_cfg["sweep"]["batched"]
        seq_cfg["sweep"], bat_cfg["sweep"] = {}, {}
        seq_cfg["eval"].pop("out_dir"), bat_cfg["eval"].pop("out_dir")
        assert seq_cfg == bat_cfg
    # Switching a finished sweep's mode is refused (the random streams differ).
    with pytest.raises(SweepError, match="sweep.batched differ"):
        run_sweep(_sweep_config(trained, "bat", GRID))


def test_batched_zero_strengths_equal_one_unguided_evaluation(trained: Path) -> None:
    """All strengths 0: the batched pass is exactly one unguided evaluation of cells x episodes
    environments with the same reset seeds."""
    paths = run_sweep(_sweep_config(trained, "zero", "[{kind: none}, {kind: goal, strengths: [0.0]}]",
                                    ["sweep.batched=true"]))
    cfg = _sweep_config(trained, "zero", "[{kind: none}]", ["guidance.kind=none"])
    output = run_episodes(cfg, prepare_evaluation(cfg), n_episodes=4, n_envs=4, n_traces=0,
                          reset_seed_of=lambda seed, j: seed * RESET_SEED_STRIDE + j % 2)
    expected = [(e.reset_seed, e.episode_return, e.length, e.success) for e in output.episodes]
    got = [(e["reset_seed"], e["episode_return"], e["length"], e["success"])
           for p in paths for e in _results(p)["episodes"]]
    assert got == expected


def test_single_cell_batched_pass_equals_the_sequential_cell(trained: Path, sequential: list[Path]) -> None:
    """One cell in a batch: the same batch, generator and reset seeds as the sequential run (eval.n_envs =
    eval.n_episodes), with a per-sample scale vector in place of the float guidance.scale: bit-identical."""
    (batched,) = run_sweep(_sweep_config(trained, "single", GRID, ["sweep.batched=true", "sweep.cells_index=1"]))
    seq, bat = _results(sequential[1]), _results(batched)
    assert bat["cell"]["label"] == "goal=3" and bat["batched"] == {"n_envs": 2, "cells_in_batch": ["goal=3"]}
    assert bat["episode_returns"] == seq["episode_returns"]
    assert [e["length"] for e in bat["episodes"]] == [e["length"] for e in seq["episodes"]]
    assert bat["plans_through_walls"] == seq["plans_through_walls"] and seq["plans_through_walls"]["n_plans"] >= 2


def test_classifier_free_cells_need_a_return_conditioned_model(trained: Path) -> None:
    with pytest.raises(SweepError, match=r"kind=classifier_free varies "
        "planner.return_guidance.weight.*model.return_condition=false"):
        run_sweep(_sweep_config(trained, "classifier-free", "[{kind: classifier_free, strengths: [1.0, 1.5]}]"))
