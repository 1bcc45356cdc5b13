"""What ``diffplan-evaluate`` runs: run a policy in N environments at once and write results.json.

The command (:mod:`diffplan.cli.evaluate`) composes the config and calls :func:`run_evaluate`; the
Python API (:mod:`diffplan.api`) and sweeps call it too.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffplan.config import Config, ForcingConfig, to_container
from diffplan.controllers import Controller
from diffplan.data.identity import check_same_dataset, dataset_record
from diffplan.data.layout import TrajectoryLayout
from diffplan.enums import EvalController, Physics
from diffplan.evaluation.evaluator import BatchEnv, EpisodeTrace, EvaluationOutput, evaluate
from diffplan.evaluation.reference import resolve_reference_scores
from diffplan.evaluation.results import build_record, write_record
from diffplan.guidance.kinds import guidance_kind
from diffplan.guidance.per_env import EnvStrengths
from diffplan.planning.modes import build_controller, check_critic_settings, planner_spec
from diffplan.reporting.maze_plot import plot_maze_paths
from diffplan.tasks import is_locomotion, task_episodes
from diffplan.training.checkpoint import TrainedModel, load_trained_model
from diffplan.utils import ensure_writable_folder, file_sha256, select_device, set_threads

log = logging.getLogger(__name__)

#: Episodes drawn in paths.png (mazes).
N_PLOT_TRACES = 6


@dataclass
class EvaluationSetup:
    """What evaluating a config runs and records.

    Attributes:
        policy: the batched policy.
        make_env: builds a batch of n environments of the task.
        trained_config: the checkpoint's resolved config (results.json ``trained_config``).
        checkpoint: path, sha256 and step of what is evaluated (results.json ``checkpoint``).
        has_success: False for tasks scored by return only (locomotion: ``success_rate: null``).
        plot_paths: draws episode traces into a file (mazes' paths.png), or None.
        trained_dataset: the dataset record the checkpoint holds ({} when it holds none).
        dataset: the record of ``task.dataset`` (results.json ``dataset``): what
            :func:`~diffplan.data.identity.dataset_record` gives, with ``matches_checkpoint``
            (True, or None with a ``note`` saying why it could not be checked).
        reference: the reference returns that normalize the scores (results.json ``reference_scores``,
            :func:`~diffplan.evaluation.reference.resolve_reference_scores`).
        plan_check: flags plans (planned states (n, H, obs_dim) -> (n,) bool) whose rate results.json
            records as ``plans_through_walls`` (mazes: plans that leave the free cells), or None.
    """

    controller: Controller
    make_env: Callable[[int], BatchEnv]
    trained_config: dict[str, Any]
    checkpoint: dict[str, Any]
    has_success: bool = True
    plot_paths: Callable[[list[EpisodeTrace], Path], None] | None = None
    trained_dataset: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: dict[str, Any] = dataclasses.field(default_factory=dict)
    reference: dict[str, Any] = dataclasses.field(default_factory=dict)
    plan_check: Callable[[np.ndarray], np.ndarray] | None = None


def run_evaluate(cfg: Config) -> Path:
    """Evaluate ``eval.checkpoint`` (or the BC baseline) on ``task``; returns the path of results.json."""
    return evaluate_config(cfg, refuse_all_failed=True)


def evaluate_config(
    cfg: Config, out_dir: str | Path | None = None, extra: dict[str, Any] | None = None, *,
    refuse_all_failed: bool = False,
) -> Path:
    """Evaluate ``cfg`` and write results.json (and paths.png, episodes.npz) into ``out_dir``
    (default ``eval.out_dir``; the config written is the one with ``eval.out_dir = out_dir``),
    with the top-level keys of ``extra`` added (e.g. a sweep's ``"cell"``); returns its path.
    ``refuse_all_failed``: see :func:`write_evaluation`."""
    if out_dir is not None:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, out_dir=str(out_dir)))
    check_evaluation(cfg)
    set_threads(cfg.eval.threads)
    setup = prepare_evaluation(cfg)
    output = run_episodes(cfg, setup)
    return write_evaluation(cfg, setup, output, extra=extra, refuse_all_failed=refuse_all_failed)


def check_evaluation(cfg: Config) -> None:
    """Check the evaluation settings and the output folder before any model is loaded or episode run.

    Raises:
        ValueError: empty or negative ``eval.seeds``; ``eval.n_episodes``, ``eval.n_envs`` or
            ``task.episode_steps`` < 1; a policy guidance whose ``guidance.policy`` is malformed,
            missing or a pickle without ``guidance.trust_pickle``; ``eval.physics=mujoco`` without
            mujoco>=4.
        MissingExtraError: ``eval.physics=mjx`` without the ``mjx`` extra (jax, mujoco-mjx), or
            ``eval.physics=warp`` without the ``warp`` extra (mujoco-warp, warp-lang).
        OSError: ``eval.out_dir`` cannot be created or written (a file in the way, a read-only
            folder, a full disk; :func:`~diffplan.utils.ensure_writable_folder`).
    """
    seeds = list(cfg.eval.seeds)
    if not seeds:
        raise ValueError("eval.seeds is empty; give at least one evaluation seed, e.g. 'eval.seeds=[0,1,2]'")
    bad = [seed for seed in seeds if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0]
    if bad:
        raise ValueError(f"eval.seeds must be integers >= 0, got {bad}; e.g. 'eval.seeds=[0,1,2]'")
    for key in ("n_episodes", "n_envs"):
        if getattr(cfg.eval, key) < 1:
            raise ValueError(f"eval.{key} must be >= 1, got {getattr(cfg.eval, key)}")
    if cfg.task.episode_steps < 1:
        raise ValueError(
            f"task.episode_steps must be >= 1 (environment steps per episode), got {cfg.task.episode_steps}"
        )
    if EvalController(cfg.eval.controller) is EvalController.planner:  # an unknown mode fails here, before loading
        planner_spec(cfg.planner.mode, "locomotion" if is_locomotion(cfg.task) else "maze")
        _warn_unused_forcing(cfg)
    _check_critic(cfg)
    if Physics(cfg.eval.physics) is Physics.mujoco:
        from diffplan_envs.mujoco_batch import require_mujoco_batch

        require_mujoco_batch()
    if Physics(cfg.eval.physics) is Physics.mjx:
        from diffplan_envs.mjx_batch import require_mjx

        require_mjx()
    if Physics(cfg.eval.physics) is Physics.warp:
        from diffplan_envs.warp_batch import require_warp

        require_warp()
    spec = guidance_kind(cfg.guidance.kind)  # an unknown kind fails here, before anything loads
    if spec is not None and spec.needs_policy and cfg.guidance.policy:
        from diffplan.policies.loading import check_target_policy

        check_target_policy(cfg.guidance.policy, vecnormalize=cfg.guidance.policy_vecnormalize,
                            trust_pickle=cfg.guidance.trust_pickle)
    ensure_writable_folder(cfg.eval.out_dir, "eval.out_dir")


def _check_critic(cfg: Config) -> None:
    """``planner.critic`` only where it ranks something: the locomotion planner with candidates to rank
    (``planner.agent_candidate`` counts as one); ``planner.agent_candidate`` only with a critic."""
    check_critic_settings(cfg.planner, "locomotion" if is_locomotion(cfg.task) else "maze")
    critic = cfg.planner.critic
    if not critic:
        return
    if EvalController(cfg.eval.controller) is not EvalController.planner:
        raise ValueError(f"planner.critic={critic} ranks the planner's candidates, but eval.controller="
                         f"{cfg.eval.controller} runs no planner: drop planner.critic or set eval.controller=planner")
    if cfg.planner.n_candidates < 2 and not cfg.planner.agent_candidate:
        raise ValueError(f"planner.critic={critic} ranks candidates, but planner.n_candidates="
                         f"{cfg.planner.n_candidates}: set planner.n_candidates>=2 (or planner.agent_candidate=true) "
                         "or drop planner.critic")
    if not Path(critic).is_file():
        raise ValueError(f"planner.critic={critic} does not exist; point it at a diffplan-train-offline checkpoint "
                         "(e.g. planner.critic=runs/<task>/offline-td3bc/checkpoint.pt) or drop it")


def _warn_unused_forcing(cfg: Config) -> None:
    """One warning naming the ``planner.forcing.*`` settings that differ from their defaults while
    ``planner.mode`` is not ``forcing`` (only the forcing planner reads them while evaluating)."""
    if cfg.planner.mode == "forcing":
        return
    defaults = dataclasses.asdict(ForcingConfig())
    given = dataclasses.asdict(cfg.planner.forcing)
    changed = [f"planner.forcing.{key}={str(given[key]).lower() if isinstance(given[key], bool) else given[key]}"
               for key in defaults if given[key] != defaults[key]]
    if changed:
        log.warning("%s ignored: only planner.mode=forcing reads planner.forcing.* (planner.mode=%s)",
                    ", ".join(changed), cfg.planner.mode)


def prepare_evaluation(cfg: Config, strengths: EnvStrengths | None = None) -> EvaluationSetup:
    """Load what ``cfg`` evaluates and build its policy; ``strengths`` (a batched guidance sweep)
    gives the planner per-environment guidance strengths, one row per environment of the batch.

    ``task.dataset`` is loaded first: its dimensions must be the task's, its reference returns
    normalize the scores, and it must be the dataset the checkpoint was trained on (by identity,
    :mod:`diffplan.data.identity`).

    Raises:
        ValueError: ``strengths`` for a policy that plans without guidance strengths (the BC and
            offline baselines, ``planner.mode=forcing``), or a bad setting.
        DatasetError: a missing or malformed dataset, dimensions other than the task's, no
            reference returns for the task, or a dataset other than the checkpoint's.
    """
    locomotion = is_locomotion(cfg.task)
    if not locomotion and EvalController(cfg.eval.controller) is not EvalController.planner:
        raise ValueError(f"eval.controller={cfg.eval.controller} is for locomotion tasks; mazes use "
                         "eval.controller=planner")
    episodes = task_episodes(cfg.task)
    reference = resolve_reference_scores(cfg.task.name, cfg.task.dataset, episodes.metadata,
                                         ref_min=cfg.task.ref_min, ref_max=cfg.task.ref_max)
    dataset = dataset_record(cfg.task.dataset, episodes)
    setup = build_setup(cfg, strengths)
    note = check_same_dataset(setup.trained_dataset, dataset, what=f"checkpoint {setup.checkpoint['path']}",
                              key="task.dataset", fix="evaluate a checkpoint trained on this dataset (eval.checkpoint)")
    setup.dataset = {**dataset, "matches_checkpoint": True if note is None else None,
                     **({"note": note} if note else {})}
    setup.reference = reference
    return setup


def build_setup(cfg: Config, strengths: EnvStrengths | None = None) -> EvaluationSetup:
    """The policy ``cfg`` evaluates (the checkpoint's planner and controller, or a baseline) and
    its provenance, without the dataset checks of :func:`prepare_evaluation`."""
    make_setup = _locomotion_setup if is_locomotion(cfg.task) else _maze_setup
    return make_setup(cfg, strengths)


def _env_maker(cfg: Config, task: Any) -> Callable[[int], BatchEnv]:
    """Batches of n environments of ``task`` (a maze or locomotion task) on ``eval.physics``. The
    mujoco backend steps them on as many threads as torch's intra-op pool has when the batch is
    made (one per core unless ``torch.set_num_threads`` said otherwise); its results do not depend
    on the count."""
    from diffplan_envs.locomotion import LocomotionTask
    from diffplan_envs.mujoco_batch import locomotion_batch, maze_batch

    physics = str(cfg.eval.physics)
    if isinstance(task, LocomotionTask):
        return lambda n: locomotion_batch(task, n, physics=physics, threads=torch.get_num_threads())
    return lambda n: maze_batch(task, n, physics=physics, threads=torch.get_num_threads())


def _load_model(cfg: Config, obs_dim: int, act_dim: int) -> TrainedModel:
    return load_trained_model(
        cfg.eval.checkpoint,
        device=select_device(cfg.eval.device),
        use_ema=cfg.eval.use_ema,
        expected_layout=TrajectoryLayout(obs_dim=obs_dim, act_dim=act_dim),
        expected_task=cfg.task.name,
    )


def _model_checkpoint_info(cfg: Config, model: TrainedModel) -> dict[str, Any]:
    return {"path": str(model.path.resolve()), "sha256": file_sha256(model.path), "step": model.step,
            "ema": cfg.eval.use_ema}


def _file_info(path: str | Path) -> dict[str, Any]:
    """``{"path", "sha256"}`` of a file a planner read (results.json's ``checkpoint.value``, ``.critic``)."""
    return {"path": str(Path(path).resolve()), "sha256": file_sha256(Path(path))}


def _maze_setup(cfg: Config, strengths: EnvStrengths | None) -> EvaluationSetup:
    from diffplan_envs import get_maze_task, maze_geometry

    task = get_maze_task(cfg.task.name)
    device = select_device(cfg.eval.device)
    model = _load_model(cfg, task.obs_dim, task.act_dim)
    built = build_controller(cfg, "maze", model, device, strengths)

    def plot(traces: list[EpisodeTrace], path: Path) -> None:
        plot_maze_paths(traces, maze_geometry(task).wall_rectangles(), path,
                        title=f"{cfg.task.name}: planned (dashed) vs executed (solid)")

    info = _model_checkpoint_info(cfg, model)
    if built.uses_value_checkpoint:
        info["value"] = _file_info(cfg.guidance.value_checkpoint)
    geometry, position = maze_geometry(task), list(cfg.task.goal_obs_dims)

    def through_walls(plans: np.ndarray) -> np.ndarray:
        return geometry.crosses_walls(plans[..., position])

    return EvaluationSetup(built.controller, _env_maker(cfg, task), to_container(model.config), info, plot_paths=plot,
                           trained_dataset=model.dataset, plan_check=through_walls if len(position) == 2 else None)


def _locomotion_setup(cfg: Config, strengths: EnvStrengths | None) -> EvaluationSetup:
    from diffplan_envs.locomotion import get_locomotion_task

    task = get_locomotion_task(cfg.task.name)
    device = select_device(cfg.eval.device)
    policy: Controller
    if strengths is not None and EvalController(cfg.eval.controller) is not EvalController.planner:
        raise ValueError(f"eval.controller={cfg.eval.controller} takes no guidance strengths; sweeps need "
                         "eval.controller=planner")
    if EvalController(cfg.eval.controller) is EvalController.bc:
        from diffplan.baselines.bc import AgentController, load_bc_model

        checkpoint = Path(cfg.bc.run_dir) / "checkpoint.pt"
        bc = load_bc_model(checkpoint, device=device, expected_task=cfg.task.name, expected_obs_dim=task.obs_dim,
                           expected_act_dim=task.act_dim)
        policy = AgentController(bc.network, device=device)
        trained: dict[str, Any] = {"bc": to_container(cfg)["bc"], "task": {"name": bc.task}}
        info = {"path": str(checkpoint.resolve()), "sha256": file_sha256(checkpoint), "step": bc.step}
        trained_dataset = bc.dataset
    elif EvalController(cfg.eval.controller) is EvalController.offline:
        from diffplan.agents import load_offline_agent
        from diffplan.agents.trainer import config_dict
        from diffplan.baselines.bc import AgentController

        checkpoint = Path(cfg.offline.run_dir) / "checkpoint.pt"
        agent = load_offline_agent(checkpoint, device=device, expected_task=cfg.task.name,
                                   expected_obs_dim=task.obs_dim, expected_act_dim=task.act_dim, key="offline.run_dir")
        policy = AgentController(agent.agent, device=device)
        trained = {"offline": config_dict(agent.config), "task": {"name": agent.task},
                   "synthetic": agent.synthetic}
        info = {"path": str(checkpoint.resolve()), "sha256": file_sha256(checkpoint), "step": agent.step}
        trained_dataset = agent.dataset
    else:
        model = _load_model(cfg, task.obs_dim, task.act_dim)
        built = build_controller(cfg, "locomotion", model, device, strengths)
        policy = built.controller
        trained = to_container(model.config)
        info = _model_checkpoint_info(cfg, model)
        trained_dataset = model.dataset
        if built.uses_value_checkpoint:
            info["value"] = _file_info(cfg.guidance.value_checkpoint)
        if cfg.planner.critic:
            info["critic"] = _file_info(cfg.planner.critic)
    return EvaluationSetup(policy, _env_maker(cfg, task), trained, info, has_success=False,
                           trained_dataset=trained_dataset)


def run_episodes(
    cfg: Config,
    setup: EvaluationSetup,
    *,
    n_episodes: int | None = None,
    n_envs: int | None = None,
    reset_seed_of: Callable[[int, int], int] | None = None,
    n_traces: int | None = None,
) -> EvaluationOutput:
    """Run ``setup``'s policy over ``eval.seeds`` x ``eval.n_episodes`` episodes, ``eval.n_envs`` at
    a time. A batched sweep overrides the episode and environment counts, the reset seeds
    (:func:`diffplan.evaluation.evaluator.evaluate`) and the number of episodes traced.

    The first ``N_PLOT_TRACES`` episodes are traced for paths.png, every episode with
    ``eval.save_episodes`` (their plans too, except on locomotion tasks, which replan every step).
    """
    ref = setup.reference
    save_episodes = bool(cfg.eval.save_episodes)
    n_episodes = cfg.eval.n_episodes if n_episodes is None else n_episodes
    if n_traces is None:
        n_traces = n_episodes * len(cfg.eval.seeds) if save_episodes else N_PLOT_TRACES
    return evaluate(
        setup.controller,
        setup.make_env,
        n_episodes=n_episodes,
        n_envs=cfg.eval.n_envs if n_envs is None else n_envs,
        seeds=list(cfg.eval.seeds),
        episode_steps=cfg.task.episode_steps,
        ref_min=float(ref["min"]),
        ref_max=float(ref["max"]),
        device=select_device(cfg.eval.device),
        n_traces=n_traces,
        trace_plans=not (save_episodes and is_locomotion(cfg.task)),
        progress=cfg.eval.progress,
        reset_seed_of=reset_seed_of,
        plan_check=setup.plan_check,
    )


def write_evaluation(
    cfg: Config, setup: EvaluationSetup, output: EvaluationOutput, *, extra: dict[str, Any] | None = None,
    refuse_all_failed: bool = False,
) -> Path:
    """Write ``output`` as ``eval.out_dir``/results.json (plus paths.png with ``eval.plots`` on
    mazes, episodes.npz with ``eval.save_episodes``), log the summary; returns the path.

    ``setup.has_success=False`` (locomotion: scored by return only) writes ``success_rate: null``;
    ``extra`` adds top-level keys (a sweep's ``"cell"`` and ``"batched"``); mazes' ``plans_through_walls``
    and, with ``planner.agent_candidate``, ``proposed_candidates`` (the share of plans that kept the
    agent's action; rate null when none was made) are added here. ``eval.save_episodes``
    writes every traced episode's executed observations (and, except on locomotion tasks, which
    replan every step, its plans) to episodes.npz next to results.json.

    ``refuse_all_failed`` (``diffplan-evaluate``): when every episode failed, the record goes to
    ``results.failed.json`` (with each episode's reason), an earlier results.json stays as it
    was, and a ValueError naming both is raised (the command exits non-zero). Sweeps keep the
    default: a cell whose every episode failed is a result of the sweep, written as results.json.
    """
    ref = setup.reference
    plans = output.plan_totals()
    if setup.plan_check is not None:
        rate = plans.flagged / plans.checked if plans.checked else None
        extra = {**(extra or {}), "plans_through_walls": {"rate": rate, "n_plans": plans.checked,
                                                          "n_through_walls": plans.flagged}}
    if cfg.planner.agent_candidate:  # (only with a planner: refused by check_evaluation otherwise)
        ranked = plans.ranked_with_proposals
        extra = {**(extra or {}), "proposed_candidates": {
            "rate": plans.proposed / ranked if ranked else None, "n_plans": ranked, "n_kept": plans.proposed}}
    record = build_record(
        output,
        task=cfg.task.name,
        config=to_container(cfg),
        trained_config=setup.trained_config,
        dataset=setup.dataset,
        checkpoint=setup.checkpoint,
        seeds=list(cfg.eval.seeds),
        n_episodes_per_seed=cfg.eval.n_episodes,
        reference_scores=ref,
        has_success=setup.has_success,
        extra=extra,
    )
    if refuse_all_failed and record.n_episodes and record.n_failed == record.n_episodes:
        reason = next((e.reason for e in record.episodes if e.reason), None)
        failed = write_record(Path(cfg.eval.out_dir) / "results.failed.json", record)
        raise ValueError(
            f"every one of the {record.n_episodes} episodes failed (first: {reason or 'no reason recorded'}); "
            f"the record is in {failed}, and {failed.parent / 'results.json'} was not written"
        )
    path = write_record(Path(cfg.eval.out_dir) / "results.json", record)
    if cfg.eval.save_episodes:
        from diffplan.evaluation.episodes import EPISODES_FILE
        from diffplan.evaluation.episodes import save_episodes as write_episodes

        saved = write_episodes(path.parent / EPISODES_FILE, output.traces,
                               include_plans=not is_locomotion(cfg.task))
        log.info("%d episodes' observations -> %s", len(output.traces), saved)
    if cfg.eval.plots and output.traces and setup.plot_paths is not None:
        setup.plot_paths(output.traces[:N_PLOT_TRACES], path.parent / "paths.png")  # 6 panels
    score = record.normalized_score
    success = "n/a" if record.success_rate is None else f"{record.success_rate:.2f}"
    log.info(
        "%s: normalized score %.1f +- %.1f (%s, reference returns from %s) over %d episodes (%d failed), "
        "success %s, %.3f s per plan -> %s",
        cfg.task.name, score.mean, score.stderr, record.reference_scores.label, record.reference_scores.source or "?",
        record.n_episodes, record.n_failed, success, record.plan_time_s.mean, path,
    )
    return path
