"""Synthetic experience: trajectories sampled from the diffusion model, written as a dataset.

Policy-Guided Diffusion (Jackson et al. 2024) trains offline agents on trajectories the
diffusion model generates from dataset start states, steered towards a target policy. This
module samples M trajectories of L transitions in batches, with the first observation
inpainted to a start state drawn uniformly from the dataset's observations, optionally guided
(:class:`diffplan.guidance.Guidance`: value, policy, or both), and turns them into transitions
in the D4RL layout: ``observations``, ``actions``, ``rewards``, ``next_observations``,
``terminals`` and ``timeouts``. The model must have reward channels (``train.model_rewards``);
with a terminal channel (``train.model_terminals``) a trajectory ends at its first token whose
terminal value exceeds ``terminal_threshold``, else after L transitions (a timeout).

Generation is chunked; each chunk has its own seed (``seed``, chunk index), so an interrupted
run resumes from its saved chunks with the same result as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffplan.diffusion.conditioning import goal_constraints
from diffplan.diffusion.guide import Guidance
from diffplan.diffusion.sampler import Sampler
from diffplan.models.planar import planning_network
from diffplan.training.checkpoint import TrainedModel
from diffplan.utils import atomic_path

log = logging.getLogger(__name__)

KEYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


@dataclass(frozen=True)
class GenerationSpec:
    """What to generate.

    Args:
        n_trajectories: M trajectories.
        length: L transitions per trajectory (L + 1 tokens: the last one is the final next
            observation), at most the model's horizon minus one.
        batch_size: trajectories per sampler call (one chunk).
        seed: chunk i draws its start states and noise from (seed, i).
        terminal_threshold: a terminal channel above this ends the trajectory there.
        action_low, action_high: generated actions are clipped to this box.
    """

    n_trajectories: int
    length: int
    batch_size: int = 256
    seed: int = 0
    terminal_threshold: float = 0.5
    action_low: float = -1.0
    action_high: float = 1.0

    def check(self, model: TrainedModel) -> None:
        """Raise a ValueError naming the setting if ``model`` cannot generate this."""
        for key in ("n_trajectories", "length", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"generate.{key} must be >= 1, got {getattr(self, key)}")
        if self.length + 1 > model.horizon:
            raise ValueError(
                f"generate.length={self.length} transitions need {self.length + 1} tokens, more than the model's "
                f"horizon {model.horizon}; use generate.length <= {model.horizon - 1}"
            )
        if not model.layout.reward:
            raise ValueError(
                f"checkpoint {model.path} has no reward channel; synthetic experience needs rewards: train the "
                "diffusion model with train.model_rewards=true (and train.model_terminals=true for falls)"
            )

    @property
    def n_chunks(self) -> int:
        """How many sampler calls the run takes."""
        return -(-self.n_trajectories // self.batch_size)


def chunk_trajectories(
    model: TrainedModel,
    sampler: Sampler,
    matrix: Tensor,
    starts: Tensor,
    spec: GenerationSpec,
    generator: torch.Generator,
    guidance: Guidance | None = None,
) -> dict[str, np.ndarray]:
    """Sample one batch of trajectories from ``starts`` (B, obs_dim), raw units; returns its transitions."""
    layout, horizon, device = model.layout, model.horizon, starts.device
    batch = starts.shape[0]
    constraints = goal_constraints(layout, model.normalizer, horizon, starts, None, [])
    denoiser = planning_network(model.denoiser, sampler.precision, device)  # planar bfloat16 on the CPU
    x = sampler.sample(denoiser, (batch, horizon, layout.transition_dim), matrix, constraints=constraints,
                       generator=generator, device=device, guidance=guidance)
    raw = model.normalizer.unnormalize(x).double().cpu().numpy()
    return trajectories_to_transitions(raw, model, spec)


def trajectories_to_transitions(raw: np.ndarray, model: TrainedModel, spec: GenerationSpec) -> dict[str, np.ndarray]:
    """Flatten (B, H, D) raw trajectories into transitions, cutting each at its first terminal."""
    layout, length = model.layout, spec.length
    obs = raw[:, : length + 1, layout.obs]
    actions = np.clip(raw[:, :length, layout.act], spec.action_low, spec.action_high)
    rewards = raw[:, :length, layout.rew][..., 0]
    if layout.terminal:
        done = raw[:, :length, layout.term][..., 0] > spec.terminal_threshold
    else:
        done = np.zeros(rewards.shape, dtype=bool)
    # Keep steps up to and including the first terminal of each trajectory.
    after_first = np.cumsum(np.cumsum(done, axis=1), axis=1) > 1
    keep = ~after_first
    last = np.zeros_like(keep)
    kept = keep.sum(axis=1)
    last[np.arange(len(kept)), kept - 1] = True
    terminals = done & keep
    return {
        "observations": obs[:, :length][keep].astype(np.float32),
        "actions": actions[keep].astype(np.float32),
        "rewards": rewards[keep].astype(np.float32),
        "next_observations": obs[:, 1:][keep].astype(np.float32),
        "terminals": terminals[keep],
        "timeouts": (last & ~terminals)[keep],
    }


def _chunk_seed(seed: int, chunk: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{chunk}".encode()).digest()[:7], "little")


def start_states(observations: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` observations drawn uniformly (with replacement) from the dataset's, with ``seed``."""
    rng = np.random.default_rng(seed)
    return observations[rng.integers(0, len(observations), size=count)]


def generate(
    model: TrainedModel,
    sampler: Sampler,
    matrix: Tensor,
    dataset_observations: np.ndarray,
    spec: GenerationSpec,
    *,
    guidance: Guidance | None = None,
    device: torch.device | str = "cpu",
    partial_dir: Path | None = None,
    fingerprint: dict[str, Any] | None = None,
    progress: Callable[[Iterator[int], int], Iterator[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Generate ``spec.n_trajectories`` trajectories; returns all transitions concatenated.

    Args:
        model, sampler, matrix: the diffusion model and its planning-time sampler.
        dataset_observations: (T, obs_dim) the start-state pool.
        guidance: steers sampling (None: unguided).
        partial_dir: if given, each finished chunk is saved there and reused on a rerun;
            ``fingerprint`` (JSON) is stored beside them and a rerun with a different one is
            refused rather than mixing two generations.
        progress: wraps the chunk iterator (e.g. a tqdm), given the iterator and the total.

    Raises:
        ValueError: ``spec`` does not fit the model, or ``partial_dir`` holds another run's chunks.
    """
    spec.check(model)
    device = torch.device(device)
    if partial_dir is not None:
        _check_partial(partial_dir, fingerprint or {})
    parts: list[dict[str, np.ndarray]] = []
    chunks: Iterator[int] = iter(range(spec.n_chunks))
    if progress is not None:
        chunks = progress(chunks, spec.n_chunks)
    for chunk in chunks:
        path = partial_dir / f"chunk-{chunk:05d}.npz" if partial_dir is not None else None
        if path is not None and path.exists():
            with np.load(path) as saved:
                parts.append({key: saved[key] for key in KEYS})
            continue
        count = min(spec.batch_size, spec.n_trajectories - chunk * spec.batch_size)
        seed = _chunk_seed(spec.seed, chunk)
        starts = torch.as_tensor(start_states(dataset_observations, count, seed), dtype=torch.float32, device=device)
        generator = torch.Generator(device=device).manual_seed(seed)
        part = chunk_trajectories(model, sampler, matrix, starts, spec, generator, guidance)
        if path is not None:
            with atomic_path(path) as tmp_path, open(tmp_path, "wb") as handle:
                np.savez(handle, **part)  # type: ignore[arg-type]  # numpy's stub reads **part as allow_pickle
        parts.append(part)
    return {key: np.concatenate([part[key] for part in parts]) for key in KEYS}


def _check_partial(partial_dir: Path, fingerprint: dict[str, Any]) -> None:
    partial_dir.mkdir(parents=True, exist_ok=True)
    manifest = partial_dir / "fingerprint.json"
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    if manifest.exists():
        if manifest.read_text() != text:
            raise ValueError(
                f"{partial_dir} holds chunks of a generation with other settings ({manifest}); delete the folder "
                "to start over, or restore the settings to resume it"
            )
        return
    manifest.write_text(text)


def clear_partial(partial_dir: Path) -> None:
    """Remove the saved chunks once the dataset file is written."""
    shutil.rmtree(partial_dir, ignore_errors=True)
