"""What ``diffplan-generate`` runs: synthetic experience from the diffusion model, in the D4RL file layout.

The command (:mod:`diffplan.cli.generate`) composes the config and calls :func:`run_generate`; the
Python API (:mod:`diffplan.api`) and sweeps call it too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from diffplan.config import Config, to_container
from diffplan.data.episodes import Episodes
from diffplan.data.hdf5 import write_hdf5
from diffplan.diffusion.guide import Guidance
from diffplan.diffusion.sampler import Sampler
from diffplan.guidance.kinds import guidance_kind
from diffplan.models.policy import TargetPolicy
from diffplan.planning.planner import planning_sampler
from diffplan.synthetic import GenerationSpec, clear_partial, generate
from diffplan.tasks import is_locomotion, task_episodes
from diffplan.training.checkpoint import TrainedModel, load_trained_model
from diffplan.utils import file_sha256, hardware_info, select_device, set_threads

log = logging.getLogger(__name__)


def build_generation_guidance(cfg: Config, model: TrainedModel, device: torch.device) -> Guidance | None:
    """The guidance of ``cfg.guidance`` for generation (None for ``guidance=none``)."""
    spec = guidance_kind(cfg.guidance.kind)
    if spec is None:
        return None
    from diffplan.guidance import build_guidance
    from diffplan.guidance.value import load_value_guide

    value = load_value_guide(model, cfg.guidance, device) if spec.needs_value else None
    return build_guidance(cfg.guidance, model, device, value_guide=value)


def _metrics(cfg: Config, model: TrainedModel, data: dict[str, np.ndarray], episodes: Any) -> dict[str, Any]:
    """Dynamics error (locomotion tasks) and target-policy log-likelihoods on a subsample."""
    rng = np.random.default_rng(cfg.generate.seed)
    n = len(data["observations"])
    idx = np.sort(rng.choice(n, size=min(n, cfg.generate.metrics_transitions), replace=False))
    out: dict[str, Any] = {"n_transitions_scored": int(len(idx))}

    if is_locomotion(cfg.task):
        from diffplan_envs.dynamics import dynamics_error

        error = dynamics_error(
            cfg.task.name, data["observations"][idx], data["actions"][idx], data["next_observations"][idx],
            obs_variance=episodes.observations.var(axis=0), rewards=data["rewards"][idx],
            reward_variance=float(episodes.rewards.var()),
        )
        out["dynamics_error"] = error.to_dict()
    if cfg.guidance.policy:
        from diffplan.policies import load_target_policy

        policy = load_target_policy(cfg.guidance.policy, std=cfg.guidance.policy_std,
                                    vecnormalize=cfg.guidance.policy_vecnormalize,
                                    trust_pickle=cfg.guidance.trust_pickle)
        real = rng.choice(episodes.n_transitions, size=len(idx), replace=False)
        with torch.no_grad():
            generated = policy.log_prob(torch.as_tensor(data["observations"][idx]),
                                        torch.as_tensor(data["actions"][idx]))
            dataset = policy.log_prob(torch.as_tensor(episodes.observations[real]),
                                      torch.as_tensor(episodes.actions[real]))
        out["policy_log_prob"] = {"policy": cfg.guidance.policy, "std": cfg.guidance.policy_std,
                                  "generated_mean": float(generated.mean()),
                                  "generated_stderr": float(generated.std() / np.sqrt(len(generated))),
                                  "dataset_mean": float(dataset.mean())}
    return out


@dataclass
class GenerationSetup:
    """Everything a generation run needs, built from the config."""

    model: TrainedModel
    sampler: Sampler
    matrix: torch.Tensor
    episodes: Episodes
    spec: GenerationSpec
    device: torch.device


def check_generation(cfg: Config) -> None:
    """Check what generation reads from ``guidance`` before any file is loaded: a policy kind needs
    ``guidance.policy``, and a given ``guidance.policy`` must name an existing file of a known
    kind, a pickle only with ``guidance.trust_pickle`` (:func:`~diffplan.policies.loading.check_target_policy`).

    Raises:
        ValueError: naming the setting, its value and the fix.
    """
    from diffplan.policies.loading import check_target_policy, policy_kinds

    spec = guidance_kind(cfg.guidance.kind)
    if spec is not None and spec.needs_policy and not cfg.guidance.policy:
        raise ValueError(
            f"guidance.kind={spec.name} needs guidance.policy='<kind>:<path>' (kinds: {', '.join(policy_kinds())}), "
            "e.g. guidance.policy=bc:runs/hopper-medium/bc/checkpoint.pt"
        )
    if cfg.guidance.policy:  # the guide's target, and the metrics' policy
        check_target_policy(cfg.guidance.policy, vecnormalize=cfg.guidance.policy_vecnormalize,
                            trust_pickle=cfg.guidance.trust_pickle)


def generation_setup(cfg: Config) -> GenerationSetup:
    """Load the model of ``eval.checkpoint`` and the dataset; check ``generate.*`` against them."""
    gc = cfg.generate
    set_threads(gc.threads)
    device = select_device(gc.device)
    model = load_trained_model(cfg.eval.checkpoint, device=device, use_ema=cfg.eval.use_ema,
                               expected_task=cfg.task.name)  # before the (larger) dataset is read
    episodes = task_episodes(cfg.task)  # the start states: the episodes the model learned from
    spec = GenerationSpec(n_trajectories=gc.n_trajectories, length=gc.length, batch_size=gc.batch_size,
                          seed=gc.seed, terminal_threshold=gc.terminal_threshold,
                          action_low=float(episodes.actions.min()), action_high=float(episodes.actions.max()))
    spec.check(model)
    sampler, matrix = planning_sampler(model, cfg.diffusion, precision=cfg.planner.precision)
    return GenerationSetup(model, sampler, matrix.to(device), episodes, spec, device)


def policy_guided_regenerator(cfg: Config) -> Callable[[TargetPolicy, int], dict[str, np.ndarray]]:
    """Policy-Guided Diffusion's loop: ``regenerate(policy, step)`` samples a fresh synthetic set
    (``generate.*``) guided towards ``policy`` (the agent being trained) with ``guidance.*``
    (``guidance.kind`` must be ``policy``; ``guidance.policy`` is not read). Each call's seed is
    ``generate.seed + step``, so a resumed run regenerates the same data. The set of step 0 is
    sampled unguided: the agent is untrained then, and guiding towards a random policy fills the
    first U updates with its actions (on hopper-medium that cost TD3+BC half its score)."""
    if cfg.guidance.kind != "policy":
        raise ValueError(
            f"regenerating synthetic data with the agent as target needs guidance=policy, got guidance.kind="
            f"{cfg.guidance.kind}; add guidance=policy (and guidance.policy_scale=...)"
        )
    if cfg.guidance.policy:
        raise ValueError(
            f"guidance.policy={cfg.guidance.policy!r} is not read when the agent regenerates its synthetic data "
            "(offline.regenerate_every > 0): the data is guided towards the agent being trained; drop guidance.policy"
        )
    from diffplan.guidance import build_guidance

    setup = generation_setup(cfg)

    def regenerate(policy: TargetPolicy, step: int) -> dict[str, np.ndarray]:
        guidance = build_guidance(cfg.guidance, setup.model, setup.device, policy=policy) if step > 0 else None
        spec = dataclasses.replace(setup.spec, seed=cfg.generate.seed + step)
        return generate(setup.model, setup.sampler, setup.matrix, setup.episodes.observations, spec,
                        guidance=guidance, device=setup.device)

    return regenerate


def run_generate(cfg: Config) -> Path:
    """Generate, write ``generate.out`` (and its metrics JSON); returns the dataset path."""
    check_generation(cfg)
    gc = cfg.generate
    setup = generation_setup(cfg)
    model, sampler, matrix, episodes, spec, device = (setup.model, setup.sampler, setup.matrix, setup.episodes,
                                                      setup.spec, setup.device)
    guidance = build_generation_guidance(cfg, model, device)
    out = Path(gc.out)
    partial = out.with_name(out.name + ".partial")
    resolved = to_container(cfg)
    checkpoint = {"path": str(Path(cfg.eval.checkpoint).resolve()), "sha256": file_sha256(cfg.eval.checkpoint),
                  "step": model.step}
    fingerprint = {"checkpoint": checkpoint["sha256"], "diffusion": resolved["diffusion"],
                   "guidance": resolved["guidance"], "spec": spec.__dict__, "dataset": file_sha256(cfg.task.dataset),
                   "top_return_fraction": cfg.task.top_return_fraction}

    def progress(chunks: Any, total: int) -> Any:
        return tqdm(chunks, total=total, desc="generate", unit="batch", disable=not gc.progress)

    start = time.perf_counter()
    data = generate(model, sampler, matrix, episodes.observations, spec, guidance=guidance,
                    device=device, partial_dir=partial, fingerprint=fingerprint, progress=progress)
    wall = time.perf_counter() - start
    metadata = {
        **{k: v for k, v in episodes.metadata.items() if k in ("ref_scores", "task", "env_id", "robot", "level")},
        "synthetic": True, "source_dataset": {"path": str(Path(cfg.task.dataset).resolve()),
                                              "sha256": fingerprint["dataset"],
                                              "top_return_fraction": cfg.task.top_return_fraction},
        "checkpoint": checkpoint, "guidance": resolved["guidance"], "diffusion": resolved["diffusion"],
        "spec": spec.__dict__, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_time_s": wall,
    }
    write_hdf5(out, data, metadata)
    clear_partial(partial)
    n = len(data["observations"])
    log.info("generated %d trajectories, %d transitions (%d terminals) in %.1f s -> %s",
             spec.n_trajectories, n, int(data["terminals"].sum()), wall, out)
    if gc.metrics:
        report = {"task": cfg.task.name, "kind": "synthetic-experience", "dataset": str(out),
                  "dataset_sha256": file_sha256(out), "n_trajectories": spec.n_trajectories,
                  "n_transitions": n, "terminal_fraction": float(data["terminals"].mean()),
                  "reward_mean": float(data["rewards"].mean()), "dataset_reward_mean": float(episodes.rewards.mean()),
                  "wall_time_s": wall, "hardware": hardware_info(), "config": resolved,
                  "checkpoint": checkpoint, **_metrics(cfg, model, data, episodes)}
        metrics_path = out.with_name(out.stem + ".metrics.json")
        metrics_path.write_text(json.dumps(report, indent=1, default=str))
        log.info("metrics: %s", json.dumps({k: report[k] for k in report if k in ("dynamics_error",
                                                                                    "policy_log_prob")},
                                            default=str)[:400])
    return out
