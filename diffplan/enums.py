"""The enumerations of the settings: every choice a config key offers, in one module that imports
nothing from the package, so the config schema (:mod:`diffplan.config`) and the runtime modules
that act on a choice both depend on it and not on each other.
"""

from __future__ import annotations

from enum import StrEnum


class ScheduleKind(StrEnum):
    """Named beta schedules."""

    cosine = "cosine"
    linear = "linear"

class PredictionType(StrEnum):
    """What the denoiser predicts: the noise, the clean sample, or the velocity."""

    epsilon = "epsilon"
    x0 = "x0"
    v = "v"

class TaskSuite(StrEnum):
    """The family of a task: what its planners condition on and how it is scored."""

    # Goal-reaching PointMaze: goal inpainting, trackers, success and normalized return.
    maze = "maze"
    # <robot>-<level> MuJoCo locomotion: planned actions, value and policy guidance, return only.
    locomotion = "locomotion"


class NoiseMode(StrEnum):
    """How training draws the noise level of each token of a window."""

    full_sequence = "full_sequence"
    independent = "independent"
    mixture = "mixture"
    # Schedule-matched (Diffusion Forcing planning): the level patterns the forcing planner's
    # scheduling matrix asks for, after a clean history of the lengths it keeps.
    schedule = "schedule"

class LevelWeighting(StrEnum):
    """Per-token loss weight as a function of the token's noise level."""

    none = "none"
    min_snr = "min_snr"

class SamplerKind(StrEnum):
    """Named reverse processes."""

    ddpm = "ddpm"
    ddim = "ddim"

class ScheduleMatrixKind(StrEnum):
    """Named scheduling matrices (:func:`scheduling_matrix`)."""

    full_sequence = "full_sequence"
    autoregressive = "autoregressive"
    pyramid = "pyramid"
    trapezoid = "trapezoid"

class ModelKind(StrEnum):
    unet = "unet"
    # diffplan.models.transformer.TrajectoryTransformer (d_model, n_layers, n_heads, causal, frame_stack).
    transformer = "transformer"

class ExecutionMode(StrEnum):
    """How a plan becomes actions: a PD tracker follows its states, or its actions run."""

    tracker = "tracker"
    actions = "actions"
    # Diffusion Forcing MPC (diffplan.planning.forcing): plan a window after the executed history,
    # run planner.forcing.execute of its own actions, replan.
    forcing = "forcing"

class Tracking(StrEnum):
    """How the tracker picks its target on the plan: by elapsed time, or by progress along the path."""

    time = "time"
    pursuit = "pursuit"

class ActionSource(StrEnum):
    """Where planned actions come from: the diffused action channels, or the inverse-dynamics
    head applied to consecutive planned states (Decision Diffuser)."""

    diffused = "diffused"
    inverse_dynamics = "inverse_dynamics"

class EvalController(StrEnum):
    """What ``diffplan-evaluate`` runs: the diffusion planner, the behaviour-cloning baseline, or
    the offline RL agent of ``offline.run_dir`` (TD3+BC or IQL)."""

    planner = "planner"
    bc = "bc"
    offline = "offline"

class Physics(StrEnum):
    """What steps the evaluator's environments: N Gymnasium envs one at a time (the reference),
    N raw MuJoCo simulations in one batch (``diffplan_envs.mujoco_batch``, MuJoCo >= 4), which
    gives the same observations, rewards and episodes bit for bit, faster, or the same task rules
    with MJX, MuJoCo's JAX backend, stepping the batch in float64 on JAX's device
    (``diffplan_envs.mjx_batch``, the ``mjx`` extra), or with MuJoCo Warp in float32 on Warp's device
    (``diffplan_envs.warp_batch``, the ``warp`` extra): agreement within stated tolerances
    (docs/COMMANDS.md, "Physics backends")."""

    gymnasium = "gymnasium"
    mujoco = "mujoco"
    mjx = "mjx"
    warp = "warp"

class OfflineAlgo(StrEnum):
    """Offline RL algorithm of ``diffplan-train-offline``."""

    td3bc = "td3bc"
    iql = "iql"

class Selection(StrEnum):
    """Which of the K candidate plans per environment is executed."""

    first = "first"
    smoothest = "smoothest"

class LrDecay(StrEnum):
    """The learning rate after warmup (:func:`diffplan.training.loop.warmup_lr`)."""

    constant = "constant"
    cosine = "cosine"

class Precision(StrEnum):
    """Numeric precision of network evaluations (``train.precision``, ``planner.precision``)."""

    float32 = "float32"
    bfloat16 = "bfloat16"

class NormalizerKind(StrEnum):
    """Named normalizers (the ``diffusion.normalizer`` setting)."""

    gaussian = "gaussian"
    limits = "limits"

class GuideTarget(StrEnum):
    """What the guide's gradient moves at each denoising step.

    - ``x_t``: the noisy sample, evaluated at its noise level (Diffuser).
    - ``x0``: the denoiser's x0 estimate, evaluated at level 0; the reverse update then uses
      the moved estimate.
    """

    x_t = "x_t"
    x0 = "x0"

class GuidanceSchedule(StrEnum):
    """How the guidance step size varies over the denoising steps (per token).

    With ``u = level_from / T`` (the level a token is denoised from; 1 at the first step of a
    full-sequence sampler, ``1 / S`` at its last) the step size is ``scale * c``:

    - ``constant``: c = 1 (the default; the sampler then multiplies by nothing at all).
    - ``linear``: c = u, decaying linearly to 0 as the level goes to 0.
    - ``cosine``: c = (1 - cos(pi u)) / 2, cosine-annealed from 1 at level T to 0 at level 0.
    - ``pgd``: policy-guided diffusion's schedule (Jackson et al. 2024, official code's
      ``denoise_step``): ``c = u + PGD_SINE_WEIGHT * sin(pi * level_to / T)`` and exactly 0 on
      a token's final step (``level_to = 0``). The official code writes it per step index i
      of S: ``1 - i / S + 0.3 sin(pi (i + 1) / S)``, zero on the last step; on evenly spaced
      levels ``1 - i / S = level_from / T`` and ``sin(pi (i + 1) / S) = sin(pi level_to / T)``,
      so both agree, and the level form carries over to per-token (Diffusion Forcing) rows.
    """

    constant = "constant"
    linear = "linear"
    cosine = "cosine"
    pgd = "pgd"
