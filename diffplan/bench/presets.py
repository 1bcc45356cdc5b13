"""The shapes ``diffplan-bench`` measures.

- ``reference-hopper``: the reference Diffuser's Hopper shape (the headline): U-Net and value
  net dim 32, mults (1, 2, 4, 8), kernel 5, horizon 32, 11 observations + 3 actions, 64
  candidates, DDPM over all 20 levels, Gaussian normalizer, no clipping, value guidance with 2
  guide steps and t_stopgrad 2 (``conf/guidance/value.yaml``), one environment.
- ``reference-umaze``: the reference Diffuser's umaze shape: horizon 128, dim 32, mults (1, 4,
  8), DDPM over 64 levels, 4 observations + 2 actions, goal-inpainted unguided plans for 16
  environments.
- one preset per ``conf/experiment/*.yaml`` (named after it): the experiment's own config,
  its planner settings, ``eval.n_envs`` environments (at most :data:`MAX_ENVS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffplan.config import CONF_DIR

#: Experiment presets plan for at most this many environments (the benchmark's time budget).
MAX_ENVS = 16


@dataclass(frozen=True)
class Preset:
    """A benchmarked shape.

    Attributes:
        name: selected by ``--presets`` substrings.
        description: one line for the table and the JSON.
        overrides: Hydra overrides of ``conf/config.yaml``.
        n_envs: environments per plan; None: the config's ``eval.n_envs``, at most :data:`MAX_ENVS`.
        tiny: small enough for ``--quick`` (the smoke test).
    """

    name: str
    description: str
    overrides: tuple[str, ...]
    n_envs: int | None = None
    tiny: bool = False


REFERENCE_HOPPER = Preset(
    "reference-hopper",
    "Diffuser's Hopper shape: U-Net + value net dim 32 (1,2,4,8), H 32, K 64, DDPM 20, 2 guide steps, N 1",
    (
        "task=hopper-medium",
        "model=unet_small", "model.unet.dim=32", "model.unet.dim_mults=[1,2,4,8]", "model.unet.kernel_size=5",
        "diffusion=ddpm", "diffusion.n_timesteps=20", "diffusion.sampling_steps=20",
        "diffusion.normalizer=gaussian", "diffusion.clip_denoised=null",
        "planner=value", "planner.n_candidates=64", "planner.warm_start.level=0",
        "guidance=value",
        "value.dim=32", "value.dim_mults=[1,2,4,8]", "value.kernel_size=5",
        "train.batch_size=32", "train.pad=true", "train.action_weight=10", "train.condition_goal=false",
    ),
    n_envs=1,
)

REFERENCE_UMAZE = Preset(
    "reference-umaze",
    "Diffuser's umaze shape: U-Net dim 32 (1,4,8), H 128, DDPM 64, goal-inpainted unguided plan, N 16",
    (
        "task=pointmaze-umaze", "task.horizon=128", "task.stride=1",
        "model=unet_diffuser",
        "diffusion=ddpm",
        "planner=tracker", "planner.n_candidates=1",
        "guidance=none",
        "train.batch_size=32",
    ),
    n_envs=16,
)

#: Extra overrides of experiment presets: the locomotion experiment is evaluated value-guided
#: (``diffplan-evaluate +experiment=locomotion guidance=value``, the README's command).
EXPERIMENT_EXTRA: dict[str, tuple[str, ...]] = {"locomotion": ("guidance=value",)}
#: Experiments small enough for ``--quick``.
TINY_EXPERIMENTS = ("demo", "umaze-ref", "medium-ref")
#: Listing order of the shipped experiments (others follow alphabetically).
EXPERIMENT_ORDER = ("demo", "umaze-ref", "medium-ref", "large-ref", "locomotion", "medium-df", "large-df")


def experiment_names(conf_dir: str | Path | None = None) -> list[str]:
    """The experiments shipped in ``conf/experiment/``, in :data:`EXPERIMENT_ORDER`."""
    names = sorted(path.stem for path in (Path(conf_dir or CONF_DIR) / "experiment").glob("*.yaml"))
    rank = {name: i for i, name in enumerate(EXPERIMENT_ORDER)}
    return sorted(names, key=lambda name: (rank.get(name, len(rank)), name))


def experiment_preset(name: str) -> Preset:
    extra = EXPERIMENT_EXTRA.get(name, ())
    what = f"+experiment={name}" + "".join(f" {o}" for o in extra)
    return Preset(
        name,
        f"{what}: its training step and its planner for eval.n_envs (at most {MAX_ENVS}) environments",
        (f"+experiment={name}", *extra),
        tiny=name in TINY_EXPERIMENTS,
    )


def all_presets() -> list[Preset]:
    """Every preset, the two reference shapes first."""
    return [REFERENCE_HOPPER, REFERENCE_UMAZE, *(experiment_preset(name) for name in experiment_names())]


class PresetError(ValueError):
    """A ``--presets`` value that selects nothing."""


def select_presets(patterns: list[str] | None, *, quick: bool = False) -> list[Preset]:
    """The presets whose names contain any of ``patterns`` (comma-separated values are split),
    in listing order; None or empty: all of them. With ``quick`` only tiny presets are choices.

    Raises:
        PresetError: a pattern that matches no preset (the message names it and the choices).
    """
    choices = [p for p in all_presets() if p.tiny or not quick]
    wanted = [part.strip() for pattern in patterns or [] for part in pattern.split(",") if part.strip()]
    if not wanted:
        return choices
    for pattern in wanted:
        if not any(pattern in preset.name for preset in choices):
            kind = "presets (--quick: tiny presets only)" if quick else "presets"
            raise PresetError(
                f"--presets {pattern!r} matches no preset; {kind}: {', '.join(p.name for p in choices)}"
            )
    return [preset for preset in choices if any(pattern in preset.name for pattern in wanted)]
