"""Range checks of a composed config, run by :func:`diffplan.config.as_config` before any command
starts its work (before a dataset is read, a model built or an episode run).

The schema (:mod:`diffplan.config`) checks keys, types and enum values; this module checks what a
type cannot say: counts that must be positive, a learning rate > 0, sampling steps within the
noise levels, a horizon the U-Net can halve. Each failure is one ``ValueError`` naming the key,
the value given and the fix (a valid value, the schema's default where it is one).

Only settings whose meaning does not depend on the command are checked here; a setting that is
valid or not depending on a checkpoint or a dataset is checked where that is read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffplan.config import Config

#: (rule text, test) by name.
_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "positive_int": ("an integer >= 1", lambda v: v >= 1),
    "non_negative": (">= 0", lambda v: v >= 0),
    "positive": ("> 0", lambda v: v > 0),
    "positive_or_null": ("> 0 or null", lambda v: v is None or v > 0),
    "int_or_null": ("an integer >= 1, or null", lambda v: v is None or v >= 1),
    "index_or_null": ("an index >= 0, or null (all cells)", lambda v: v is None or v >= 0),
    "fraction": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "share": ("in (0, 1]", lambda v: 0 < v <= 1),
}

#: Settings checked for every command: dotted key -> rule.
RANGES: dict[str, str] = {
    "task.horizon": "positive_int",
    "task.stride": "positive_int",
    "task.episode_steps": "positive_int",
    "task.dataset_steps": "positive_int",
    "task.top_return_fraction": "share",
    "model.unet.dim": "positive_int",
    "model.unet.kernel_size": "positive_int",
    "diffusion.n_timesteps": "positive_int",
    "diffusion.sampling_steps": "positive_int",
    "diffusion.eta": "non_negative",
    "diffusion.clip_denoised": "positive_or_null",
    "train.steps": "positive_int",
    "train.batch_size": "positive_int",
    "train.lr": "positive",
    "train.weight_decay": "non_negative",
    "train.warmup_steps": "non_negative",
    "train.ckpt_every": "positive_int",
    "train.log_every": "positive_int",
    "train.ema_decay": "fraction",
    "train.cond_dropout": "fraction",
    "train.noise_mixture_p": "fraction",
    "train.schedule_independent_p": "fraction",
    "train.history_dropout": "fraction",
    "planner.forcing.history_guidance": "non_negative",
    "train.threads": "non_negative",
    "train.max_minutes": "positive_or_null",
    "planner.n_candidates": "positive_int",
    "planner.tracker.lookahead": "non_negative",
    "planner.jump_ratio": "positive",
    "run.threads": "non_negative",
    "eval.threads": "non_negative",
    "planner.replan_every": "non_negative",
    "planner.tracker.replan_on_stall": "non_negative",
    "planner.forcing.execute": "positive_int",
    "collect.n_steps": "int_or_null",
    "collect.ref_episodes": "positive_int",
    "collect.n_envs": "positive_int",
    "collect.threads": "non_negative",
    "value.steps": "positive_int",
    "value.batch_size": "positive_int",
    "value.lr": "positive",
    "guidance.n_guide_steps": "positive_int",
    "guidance.t_stopgrad": "non_negative",
    "guidance.mc_samples": "positive_int",
    "guidance.policy_std": "positive",
    "bc.steps": "positive_int",
    "bc.batch_size": "positive_int",
    "bc.lr": "positive",
    "offline.steps": "positive_int",
    "offline.batch_size": "positive_int",
    "offline.lr": "positive",
    "generate.n_trajectories": "positive_int",
    "generate.length": "positive_int",
    "generate.batch_size": "positive_int",
    "sweep.cells_index": "index_or_null",
}


def _default(key: str) -> Any:
    """The schema's default of ``key`` (None when it has none)."""
    from diffplan.config import Config

    node: Any = Config()
    for part in key.split("."):
        node = getattr(node, part, None)
    return node


def _show(value: Any) -> str:
    return "null" if value is None else str(value)


def check_settings(cfg: Config) -> None:
    """Raise ``ValueError`` for the first setting of ``cfg`` out of its range (see :data:`RANGES`),
    a ``diffusion.sampling_steps`` above ``diffusion.n_timesteps``, forcing arrivals after a held
    arrival that is not held (``planner.forcing.arrival_slack`` without ``hold_arrival``), or a U-Net that cannot halve
    ``task.horizon`` as often as ``model.unet.dim_mults`` asks."""
    for key, rule in RANGES.items():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        text, test = _RULES[rule]
        if isinstance(value, bool) or not test(value):
            default = _default(key)
            example = f"e.g. {key}={_show(default)}" if default is not None and test(default) else "fix it"
            raise ValueError(f"{key}={_show(value)} is out of range: it must be {text}; {example}")
    diffusion = cfg.diffusion
    if diffusion.sampling_steps > diffusion.n_timesteps:
        raise ValueError(
            f"diffusion.sampling_steps={diffusion.sampling_steps} is more than diffusion.n_timesteps="
            f"{diffusion.n_timesteps} (at most one denoising step per noise level); set diffusion.sampling_steps "
            f"<= {diffusion.n_timesteps} or raise diffusion.n_timesteps"
        )
    if cfg.train.history_dropout > 0 and str(cfg.train.noise_mode) != "schedule":
        raise ValueError(
            f"train.history_dropout={cfg.train.history_dropout} drops the clean history of the forcing planner's "
            f"patterns, which only train.noise_mode=schedule trains on (got {cfg.train.noise_mode}); set "
            "train.noise_mode=schedule or train.history_dropout=0"
        )
    forcing = cfg.planner.forcing
    if str(cfg.planner.mode) == "forcing" and forcing.arrival_slack and not forcing.hold_arrival:
        raise ValueError(f"planner.forcing.arrival_slack={list(forcing.arrival_slack)} plans arrivals after the held "
                         "one; set planner.forcing.hold_arrival=true as well (or arrival_slack=[])")
    tokens = list(cfg.planner.goal_tokens)
    bad = [t for t in tokens if not 1 <= t <= cfg.task.horizon - 1]
    if bad:
        raise ValueError(f"planner.goal_tokens={tokens}: arrival tokens must lie in [1, task.horizon - 1 = "
                         f"{cfg.task.horizon - 1}], got {bad}; e.g. 'planner.goal_tokens=[{cfg.task.horizon // 2},"
                         f"{cfg.task.horizon - 1}]' or [] (the last token only)")
    model = cfg.model
    if str(model.name) == "unet":
        if not model.unet.dim_mults or any(m < 1 for m in model.unet.dim_mults):
            raise ValueError(
                f"model.unet.dim_mults={list(model.unet.dim_mults)} is out of range: it must be a non-empty "
                f"list of integers "
                ">= 1; e.g. model.unet.dim_mults=[1,4,8]"
            )
        if model.unet.dim % 8:
            raise ValueError(
                f"model.unet.dim={model.unet.dim} does not fit the U-Net: its GroupNorm uses 8 groups, so "
                f"model.unet.dim must be a "
                f"multiple of 8; e.g. model.unet.dim={max(8, model.unet.dim // 8 * 8)}"
            )
        factor = 2 ** (len(model.unet.dim_mults) - 1)
        horizon = cfg.task.horizon
        if horizon % factor:
            lower, upper = horizon // factor * factor, (horizon // factor + 1) * factor
            options = f"task.horizon={upper}" + (f" or {lower}" if lower else "")
            raise ValueError(
                f"task.horizon={horizon} does not fit the U-Net: "
                f"model.unet.dim_mults={list(model.unet.dim_mults)} halves the "
                f"horizon {len(model.unet.dim_mults) - 1} time(s), so task.horizon must be a multiple of {factor}; use "
                f"{options}, or fewer model.unet.dim_mults"
            )
