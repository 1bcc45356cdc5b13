"""Structured configs: typed dataclasses registered in Hydra's ConfigStore.

Each config group under ``conf/`` (task, model, diffusion, planner, train, eval, collect,
bc, offline, value, guidance, sweep) is validated against one of these schemas, so a bad
override fails early with its full key and, for choices, the allowed values (enums).
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from diffplan.enums import (
    ActionSource,
    EvalController,
    ExecutionMode,
    GuidanceSchedule,
    GuideTarget,
    LevelWeighting,
    LrDecay,
    ModelKind,
    NoiseMode,
    NormalizerKind,
    OfflineAlgo,
    Physics,
    Precision,
    PredictionType,
    SamplerKind,
    ScheduleKind,
    ScheduleMatrixKind,
    Selection,
    TaskSuite,
    Tracking,
)

#: The shipped configs the commands compose: ``diffplan/conf`` in an installed package (the wheel holds
#: copies), a link to the repository's top-level ``conf/`` in a clone.
CONF_DIR = str(Path(__file__).resolve().parent / "conf")


@dataclass
class TaskConfig:
    """The environment and its dataset."""

    name: str = MISSING
    env_id: str = MISSING
    # maze (goal-reaching PointMaze: goal inpainting, trackers) or locomotion (<robot>-<level>: planned
    # actions, value and policy guidance). null: inferred from the name (configs written before it).
    suite: TaskSuite | None = None
    dataset: str = MISSING
    dataset_steps: int = 1_000_000
    episode_steps: int = 300
    horizon: int = 128
    stride: int = 1
    continuous_stream: bool = False
    goal_obs_dims: list[int] = field(default_factory=lambda: [0, 1])
    velocity_obs_dims: list[int] = field(default_factory=lambda: [2, 3])
    # Return condition (model.return_condition): the model sees the discounted return-to-go
    # at the window start divided by return_scale (Decision Diffuser: discount 0.99, scale
    # hopper 400, walker2d 550, halfcheetah 1200), see diffplan.data.returns.
    return_scale: float = 1.0
    return_discount: float = 0.99
    # The share of the dataset's episodes the trainers learn from, those with the highest returns
    # (undiscounted sums of rewards) first; 1.0 all. For files that mix poor and good policies (the
    # replay datasets): the diffusion model, its value function and BC then learn the better behaviour
    # (see diffplan.data.returns.best_episodes). Evaluation checks a checkpoint against the same share.
    top_return_fraction: float = 1.0
    # Reference returns that normalize scores to 0 (ref_min) and 100 (ref_max); null: the dataset's
    # own, else D4RL's for locomotion (diffplan.evaluation.reference).
    ref_min: float | None = None
    ref_max: float | None = None


@dataclass
class UnetConfig:
    """The temporal U-Net (Diffuser): base width, width multipliers per resolution, kernel size."""

    dim: int = 32
    dim_mults: list[int] = field(default_factory=lambda: [1, 4, 8])
    kernel_size: int = 5


@dataclass
class TransformerConfig:
    """The trajectory transformer (Diffusion Forcing): token width, blocks, heads, causal attention,
    timesteps per token."""

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    causal: bool = True
    frame_stack: int = 1


@dataclass
class ModelConfig:
    """The denoiser (``name``: its settings are in the section of that name) and its heads."""

    # A registered denoiser (diffplan.models.factory): unet, transformer, or one a plugin module registers
    # (plugins=[...], diffplan.models.register_denoiser); checked when the model is built.
    name: str = ModelKind.unet.value
    unet: UnetConfig = field(default_factory=UnetConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    # Condition on the normalized return-to-go (classifier-free guidance, Decision Diffuser).
    return_condition: bool = False
    # Train an inverse-dynamics head (s_t, s_t+1) -> a_t alongside the denoiser.
    inverse_dynamics: bool = False
    inverse_dynamics_hidden: list[int] = field(default_factory=lambda: [256, 256])


@dataclass
class DiffusionConfig:
    n_timesteps: int = 64
    schedule: ScheduleKind = ScheduleKind.cosine
    prediction: PredictionType = PredictionType.x0
    sampler: SamplerKind = SamplerKind.ddim
    sampling_steps: int = 20
    eta: float = 0.0
    clip_denoised: float | None = 1.0
    normalizer: NormalizerKind = NormalizerKind.limits
    # Mark tokens with inpainted entries as clean (level 0) in the denoiser's input, in
    # training and sampling alike (the checkpoint's setting is used at planning time).
    clean_condition_tokens: bool = False
    # Planning-time scheduling matrix (diffplan.diffusion.sampler.scheduling_matrix): full_sequence,
    # or Diffusion Forcing's per-token autoregressive | pyramid | trapezoid (for models trained with
    # train.noise_mode=independent or mixture); uncertainty: rows between consecutive tokens' starts.
    schedule_matrix: ScheduleMatrixKind = ScheduleMatrixKind.full_sequence
    uncertainty: float = 1.0


@dataclass
class TrainConfig:
    steps: int = 20_000
    batch_size: int = 32
    lr: float = 2e-4
    # After warmup: constant, or cosine decay to 0 at train.steps (a better model at a short budget).
    lr_decay: LrDecay = LrDecay.constant
    weight_decay: float = 0.0
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    ckpt_every: int = 1000
    log_every: int = 100
    action_weight: float = 1.0
    condition_start: bool = True
    condition_goal: bool = True
    pad: bool = False
    # Probability per sample of replacing the return condition by the null one (model.return_condition).
    cond_dropout: float = 0.25
    # Reward and terminal-flag channels after the actions (synthetic experience needs them),
    # and their loss weights on every token (observations and actions weigh 1).
    model_rewards: bool = False
    model_terminals: bool = False
    reward_weight: float = 1.0
    terminal_weight: float = 1.0
    # Training noise levels (diffplan.diffusion.levels): full_sequence (one per window), independent
    # (one per token, Diffusion Forcing), mixture (independent windows with probability noise_mixture_p)
    # or schedule (the patterns the forcing planner asks for: diffusion.schedule_matrix, .uncertainty and
    # .sampling_steps after the clean histories of planner.forcing.execute and .n_history, with a fraction
    # schedule_independent_p of independent windows); per-token loss weight by level: none or min_snr.
    noise_mode: NoiseMode = NoiseMode.full_sequence
    noise_mixture_p: float = 0.5
    schedule_independent_p: float = 0.0
    # noise_mode=schedule: probability per window of dropping its clean history (its tokens noised to the
    # last level and predicted), so the planner can guide on the history (planner.forcing.history_guidance).
    history_dropout: float = 0.0
    level_weighting: LevelWeighting = LevelWeighting.none
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    progress: bool = True
    # Wall-clock budget of one invocation (minutes): stop early with a checkpoint; rerun to go on.
    max_minutes: float | None = None
    # Compute (diffplan.acceleration): bfloat16 runs convolutions and matrix products under autocast
    # (weights, optimizer and loss stay float32); compile runs the denoiser through torch.compile.
    precision: Precision = Precision.float32
    compile: bool = False


@dataclass
class TrackerConfig:
    """The PD tracker that follows planned states (``planner.mode=tracker``, and
    ``planner.forcing.track_states``): ``time`` steers to the plan state of the current step,
    ``pursuit`` to the point ``lookahead`` tokens past the closest one ahead (:mod:`diffplan.planning.controllers`)."""

    tracking: Tracking = Tracking.time
    lookahead: int = 4
    # Pursuit only: replan an env whose progress along its plan has not advanced for this
    # many steps (stuck, e.g. against a wall the plan cut through); 0 = never.
    replan_on_stall: int = 0
    p_gain: float = 1.0
    d_gain: float = 1.0


@dataclass
class WarmStartConfig:
    """Replanning from the previous plan (:mod:`diffplan.diffusion.warm_start`): 0 = cold start from
    pure noise every plan; k in [1, diffusion.n_timesteps] = start from the previous plan, shifted by
    the steps executed since, re-noised to level k and denoised in ``steps`` (<= k) DDIM steps."""

    level: int = 0
    steps: int = 4


@dataclass
class ReturnGuidanceConfig:
    """Classifier-free guidance of return-conditioned models (``model.return_condition``, Decision
    Diffuser): the normalized return-to-go plans are conditioned on (``task.return_scale`` units) and
    the guidance weight w (0 unconditional, 1 conditional, > 1 beyond)."""

    target: float = 0.9
    weight: float = 1.2


@dataclass
class ForcingConfig:
    """Diffusion Forcing MPC (``planner.mode=forcing``): tokens executed per plan (each ``task.stride``
    environment steps), the most executed tokens kept as clean history in the window (null: as many as
    fit, horizon - 1 - execute), whether to follow the planned states with the tracker
    (``planner.tracker``; needed for strided models) instead of running the planned actions (Diffusion
    Forcing's protocol), and whether to inpaint the goal's entries at the window's last token as the
    goal planner does (besides any goal guidance). ``hold_arrival`` (with ``inpaint_goal``) keeps a
    plan's arrival when replanning: the goal is inpainted at the current token plus the tokens the
    previous plan still had to go past the environment's progress along it, and held at every token
    after (the first plan: the last token, or earlier with a negative slack). ``arrival_slack`` (with
    ``hold_arrival``) plans candidates that arrive this many tokens later than the held arrival as well
    (0: the held arrival itself; negative: earlier), ``planner.n_candidates`` each, and executes the
    earliest arrival whose plan does not jump (``planner.jump_ratio``, as the goal planner's
    ``goal_tokens``); empty: the held arrival only. With a frame-stacked transformer ``execute`` and
    ``n_history`` must be multiples of ``model.transformer.frame_stack``."""

    execute: int = 8
    n_history: int | None = None
    track_states: bool = False
    inpaint_goal: bool = False
    hold_arrival: bool = False
    arrival_slack: list[int] = field(default_factory=list)
    # Classifier-free guidance on the history (a model trained with train.history_dropout): 1 = off
    # (the history-conditioned prediction), > 1 pushes plans towards consistency with the history.
    history_guidance: float = 1.0


@dataclass
class PlannerConfig:
    """How plans are made and executed. The parts of one planner kind live in their own sections:
    ``tracker``, ``warm_start``, ``return_guidance`` (classifier-free guidance of return-conditioned
    models) and ``forcing``."""

    # A registered planner (diffplan.planning.modes): tracker, actions, forcing, or one a plugin module
    # registers (diffplan.planning.modes.register_planner); checked before an evaluation loads anything.
    mode: str = ExecutionMode.tracker.value
    replan_every: int = 0
    n_candidates: int = 1
    selection: Selection = Selection.first
    # Maze goal planner: arrival tokens to try (the goal inpainted at token t and held after it; n_candidates
    # plans each); the earliest arrival is kept whose largest step between planned positions is at most
    # jump_ratio times that of the latest arrival's plan. Empty: the goal at the last token only.
    goal_tokens: list[int] = field(default_factory=list)
    jump_ratio: float = 1.5
    action_source: ActionSource = ActionSource.diffused
    # Locomotion planner: a diffplan-train-offline checkpoint (TD3+BC or IQL) whose critic ranks the
    # n_candidates plans by min(Q1, Q2) of their first state and action, in place of the value function
    # (diffplan.guidance.critic). null: the value function ranks.
    critic: str | None = None
    # With planner.critic: the critic's agent proposes one more candidate, its own deterministic action
    # from the plan's start state (the rest of the window as the first candidate's), ranked with the K
    # by the critic (the policy candidates of TD-MPC's planner); the agent's action runs when the critic
    # rates it above every planned one.
    agent_candidate: bool = False
    # Compute of the networks while planning and generating (diffplan.acceleration): bfloat16
    # autocast for the denoiser and the guides' networks; on the CPU the planners' U-Net and value network
    # then run as planar bfloat16 copies (diffplan.models.planar: channels-last 2-D convolutions).
    # compile runs the denoiser (and the locomotion planner's value network) through torch.compile (eager
    # fallback). Both together: the fastest CPU planning on CPUs with AVX512-BF16 or AMX (docs/PERFORMANCE.md).
    precision: Precision = Precision.float32
    compile: bool = False
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    return_guidance: ReturnGuidanceConfig = field(default_factory=ReturnGuidanceConfig)
    forcing: ForcingConfig = field(default_factory=ForcingConfig)


@dataclass
class EvalConfig:
    controller: EvalController = EvalController.planner
    n_episodes: int = 50
    n_envs: int = 50
    seeds: list[int] = field(default_factory=lambda: [0])
    checkpoint: str = "${run_dir}/checkpoint.pt"
    out_dir: str = "${run_dir}/eval"
    use_ema: bool = True
    device: str = "auto"
    # torch's intra-op threads while evaluating (0 leaves torch's default, one per core).
    threads: int = 0
    plots: bool = True
    progress: bool = True
    # What steps the environments: gymnasium (N Gymnasium envs, the reference), mujoco (N raw
    # MuJoCo simulations in one batch, MuJoCo >= 4: the same episodes bit for bit, faster) or mjx
    # (the batch on MJX, MuJoCo's JAX backend, in float64 on JAX's device; the mjx extra) or warp (MuJoCo
    # Warp in float32 on Warp's device; the warp extra).
    physics: Physics = Physics.gymnasium
    # Write episodes.npz next to results.json: every episode's executed observations (and, on the
    # mazes, its plans), for diffplan-report's path plots and renders (diffplan.evaluation.episodes).
    save_episodes: bool = False
    # diffplan-report's name for this evaluation's cell (null: its guidance kind and strength), so
    # evaluations of other models or planners at the same guidance are reported side by side.
    label: str | None = None


@dataclass
class GenerateConfig:
    """Synthetic experience (``diffplan-generate``): M trajectories of L transitions from dataset
    start states, sampled by the model of ``eval.checkpoint`` under ``guidance``."""

    n_trajectories: int = 1000
    # Transitions per trajectory (L + 1 tokens; at most the model's horizon minus one).
    length: int = 16
    batch_size: int = 256
    seed: int = 0
    # A terminal channel above this ends the trajectory (models trained with train.model_terminals).
    terminal_threshold: float = 0.5
    out: str = "${run_dir}/synthetic/${task.name}.hdf5"
    # After writing: dynamics error (locomotion) and the target policy's log-likelihood -> <out>.metrics.json
    metrics: bool = True
    metrics_transitions: int = 5000
    device: str = "auto"
    threads: int = 0
    progress: bool = True


@dataclass
class BCConfig:
    """Behaviour cloning baseline (``diffplan-train-bc``)."""

    hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])
    steps: int = 10_000
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 1e-4
    ckpt_every: int = 1000
    log_every: int = 100
    # The action box the policy's tanh output is scaled to (all dimensions).
    action_low: float = -1.0
    action_high: float = 1.0
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    progress: bool = True
    run_dir: str = "${run_dir}/bc"


@dataclass
class OfflineConfig:
    """Offline RL agent (``diffplan-train-offline``): TD3+BC or IQL on the task's dataset, optionally
    mixed with a synthetic dataset (policy-guided diffusion). Defaults are TD3+BC's (Fujimoto & Gu
    2021); ``conf/offline/iql.yaml`` sets CORL's IQL locomotion defaults."""

    algo: OfflineAlgo = OfflineAlgo.td3bc
    # Actor, critic and value MLP hidden widths (ReLU).
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])
    steps: int = 1_000_000
    batch_size: int = 256
    lr: float = 3e-4
    discount: float = 0.99
    # Polyak rate of the target networks.
    tau: float = 0.005
    # Actions lie in [-max_action, max_action] (all dimensions).
    max_action: float = 1.0
    # Observations normalized by the real dataset's mean and std (+ 1e-3), stored in the checkpoint.
    normalize_states: bool = True
    # Rewards scaled by reward_scale / (max episode return - min episode return) of the real dataset (IQL).
    normalize_reward: bool = False
    reward_scale: float = 1000.0
    # Cosine decay of the actor's learning rate to 0 over offline.steps (IQL).
    actor_cosine: bool = False
    # TD3+BC.
    alpha: float = 2.5
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_freq: int = 2
    # IQL.
    expectile: float = 0.7
    temperature: float = 3.0
    adv_max: float = 100.0
    # Standard deviation of the Gaussian around TD3+BC's deterministic action in log_prob.
    std: float = 0.1
    # Synthetic transitions: a dataset file (D4RL layout) or null; the share of each batch drawn
    # from them (0 = real only, 1 = synthetic only; PGD: 240 of 256 = 0.9375); regenerate the
    # synthetic set with the current agent as target policy every this many updates (0 = never).
    synthetic: str | None = None
    synthetic_ratio: float = 0.0
    regenerate_every: int = 0
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    progress: bool = True
    # Wall-clock budget of one invocation (minutes): stop early with a checkpoint; rerun to go on.
    max_minutes: float | None = None
    ckpt_every: int = 5000
    log_every: int = 1000
    run_dir: str = "${run_dir}/offline-${offline.algo}"


@dataclass
class AgentConfig:
    """How the stable-baselines3 agent that generates a locomotion robot's datasets is trained
    (all budgets in environment steps; ``diffplan_envs.collect_locomotion.AgentRecipe``).

    Attributes:
        algo: a stable-baselines3 algorithm name (``ppo``, ``sac``, ``td3``, ``a2c``).
        n_envs: parallel training environments (PPO/A2C collect from all of them).
        normalize_obs: wrap training in ``VecNormalize`` (observations; rewards too for
            on-policy algorithms); the statistics are frozen and stored with each snapshot.
        algo_kwargs: keyword arguments of the SB3 algorithm (``policy_kwargs`` included).
        medium_score: D4RL-normalized evaluated score at which the medium policy is taken.
        medium_max_steps: if the score is never reached, the medium policy is taken here.
        expert_steps: total training steps of the expert policy (0: no expert).
        expert_snapshot: which policy becomes the expert: ``last``, the agent at ``expert_steps``;
            ``best``, the best-evaluated checkpoint after the medium snapshot up to ``expert_steps``
            (an on-policy agent's return swings between evaluations).
        eval_every: steps between evaluations and checkpoints.
        eval_episodes: episodes per evaluation (stochastic policy, as collected).
        seed: agent and evaluation seed.
    """

    algo: str = "ppo"
    n_envs: int = 8
    normalize_obs: bool = True
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    medium_score: float = 45.0
    medium_max_steps: int = 3_000_000
    expert_steps: int = 0
    expert_snapshot: str = "last"
    eval_every: int = 50_000
    eval_episodes: int = 10
    seed: int = 0


@dataclass
class ValueConfig:
    """Value function for value-guided planning (``diffplan-train-value``).

    Horizon, layout, normalizer, noise schedule, stride, padding and inpainting come from the
    diffusion checkpoint, so the value network sees exactly what the sampler produces.
    """

    # The diffusion model the value function guides; its dataset is the training data.
    diffusion_checkpoint: str = "${run_dir}/checkpoint.pt"
    # null: the dataset file recorded in the diffusion checkpoint (its sha256 is checked).
    dataset: str | None = None
    # Value checkpoint (checkpoint.pt) and TensorBoard logs (tb/) go here.
    run_dir: str = "${run_dir}/value"
    # Targets: discounted return to the episode end; a true terminal adds the penalty (Diffuser).
    discount: float = 0.997
    termination_penalty: float = -100.0
    # Goal-conditioned value (mazes, diffplan.training.value_targets.goal_reward_targets): the network
    # also reads a goal (the task's goal_obs_dims) and predicts the discounted number of the window's
    # tokens within goal_radius of it. Goals are relabelled: a position of the window itself with
    # probability goal_window_prob, else a position drawn from the whole dataset.
    goal_conditioned: bool = False
    goal_radius: float = 0.45
    goal_window_prob: float = 0.5
    dim: int = 32
    dim_mults: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    kernel_size: int = 5
    steps: int = 200_000
    batch_size: int = 32
    lr: float = 2e-4
    lr_decay: LrDecay = LrDecay.constant
    weight_decay: float = 0.0
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    ckpt_every: int = 1000
    log_every: int = 100
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    progress: bool = True
    # Wall-clock budget of one invocation (minutes): stop early with a checkpoint; rerun to go on.
    max_minutes: float | None = None
    # Compute, as train.precision and train.compile (for the value network).
    precision: Precision = Precision.float32
    compile: bool = False


@dataclass
class GuidanceConfig:
    """Guided sampling: Diffuser's value guidance and/or policy guidance (PGD)."""

    # A registered guidance kind (diffplan.guidance.kinds): none, value, policy, value_policy, goal, or
    # one a plugin module registers (plugins=[...]); checked when the guidance is built.
    kind: str = "none"
    scale: float = 0.1
    n_guide_steps: int = 2
    # No guidance for the last t_stopgrad levels (tokens at level <= t_stopgrad).
    t_stopgrad: int = 2
    scale_grad_by_std: bool = True
    # The rule that applies the gradient: x_t (the noisy sample, Diffuser), x0 (the x0 estimate), or a
    # rule registered with diffplan.diffusion.guide.register_guidance_rule (checked when guidance is built).
    apply_to: str = GuideTarget.x_t.value
    value_checkpoint: str = "${value.run_dir}/checkpoint.pt"
    # Policy guidance (kind policy / value_policy, diffplan.guidance.build_guidance): the target
    # policy "<kind>:<path>" (diffplan.policies.load_target_policy; kinds sb3-sac, sb3-td3, bc, offline),
    # its step size, the std of deterministic policies (env action units) and an optional
    # VecNormalize pickle for SB3 agents (null: none; a <stem>_vecnorm.pkl next to the zip is not loaded).
    policy: str | None = None
    policy_scale: float = 1.0
    policy_std: float = 0.1
    policy_vecnormalize: str | None = None
    # SB3 zips and VecNormalize files are pickles, which run code when loaded: they are loaded only
    # with trust_pickle=true (bc: and offline: policies are diffplan checkpoints, read without pickle).
    trust_pickle: bool = False
    # Step size over the denoising steps, per token: constant | linear | cosine | pgd.
    schedule: GuidanceSchedule = GuidanceSchedule.constant
    # Rescale the policy gradient per sample to unit RMS per action entry (diffplan.guidance.PolicyGuide).
    normalize_grad: bool = False
    # Monte Carlo guidance (diffplan.guidance.monte_carlo.wrap_monte_carlo): average the guide's gradient
    # over this many re-noised samples of the noisier future tokens; 1 = plain guidance.
    mc_samples: int = 1
    # Evaluate the guide on the denoiser's x0 estimate and differentiate through the denoiser
    # (diffplan.guidance.denoised.DenoisedGuide; Diffusion Forcing's guidance): with apply_to=x_t
    # the gradient reaches every token the estimate depends on (with a causal model, nearer tokens
    # are steered by what their future predicts).
    through_denoiser: bool = False


@dataclass
class CollectConfig:
    """Dataset collection. ``n_steps``, ``seed``, ``progress`` serve both suites; ``ref_episodes``
    is for mazes; ``levels``, ``n_envs``, ``agent_dir`` and ``agents`` for locomotion."""

    n_steps: int | None = None
    seed: int = 0
    ref_episodes: int = 100
    progress: bool = True
    # torch's intra-op threads of the collecting agent (0 leaves torch's default, one per core).
    threads: int = 0
    # Locomotion: the levels to write (empty: the task's own level), next to task.dataset.
    levels: list[str] = field(default_factory=list)
    n_envs: int = 10
    agent_dir: str = "data/agents"  # one folder per robot below it
    agents: dict[str, AgentConfig] = field(default_factory=dict)


@dataclass
class SweepCellConfig:
    """One entry of ``sweep.cells``: a guidance kind evaluated at each of its strengths.

    ``kind`` is one of ``none`` (unguided; no strengths, or ``[0]``), ``goal`` and ``value``
    (strength = ``guidance.scale``), ``policy`` (``guidance.policy_scale``), ``value_policy``
    (``guidance.scale``; the policy term keeps ``guidance.policy_scale``) and ``classifier_free``
    (``planner.return_guidance.weight`` of return-conditioned models, unguided otherwise). It is a
    string, not an enum, so that a wrong kind is reported by ``diffplan-sweep`` with the fix
    (:mod:`diffplan.sweep.grid`). ``mc_samples`` sets ``guidance.mc_samples`` for these cells
    (null: the guidance config's).
    """

    kind: str = "none"
    strengths: list[float] = field(default_factory=list)
    mc_samples: int | None = None


@dataclass
class SweepConfig:
    """A guidance sweep (``diffplan-sweep``): every cell of ``cells`` x ``eval.seeds`` x
    ``eval.n_episodes``, each cell written to ``<out_dir>/<label>/results.json``.

    ``batched`` evaluates the cells that differ only in guidance kind and strength as one batch
    of environments per seed (per-environment strengths); ``cells_index`` runs only that cell of
    the expanded grid (the order ``diffplan-sweep`` logs; one job per cell in a Hydra multirun).
    """

    name: str = "${task.name}"
    out_dir: str = "runs/sweeps/${sweep.name}"
    cells: list[SweepCellConfig] = field(default_factory=list)
    batched: bool = False
    cells_index: int | None = None
    # After the sweep, write diffplan-report's report of every results file under out_dir into this
    # folder (null: no report; a one-cell job of a multirun never writes one).
    report: str | None = None
    report_title: str = "diffplan guidance sweep: ${task.name}"


@dataclass
class RunConfig:
    """What every section shares: ``conf/`` sets each section's ``seed``, ``device``, ``threads`` and
    ``progress`` to these (``run.device=cpu`` moves training, evaluation and generation to the CPU);
    a section's own setting (``train.device=cuda``) still wins. ``threads`` 0 leaves torch's default."""

    seed: int = 0
    device: str = "auto"
    threads: int = 0
    progress: bool = True


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    value: ValueConfig = field(default_factory=ValueConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    bc: BCConfig = field(default_factory=BCConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    run_dir: str = "runs/${task.name}"
    # Modules imported before a command runs, e.g. plugins=[my_guides]: they may register guidance
    # kinds (diffplan.guidance.register_guidance_kind), guidance rules or target-policy loaders.
    plugins: list[str] = field(default_factory=list)


def timesteps_per_token(model: ModelConfig) -> int:
    """Timesteps per denoiser token: ``model.transformer.frame_stack`` for the transformer, 1 for the U-Net."""
    return int(model.transformer.frame_stack) if str(model.name) == "transformer" else 1


#: Settings that moved into a section of their own: old dotted key -> new one. Configs stored before
#: the move (checkpoints, results) are read through :func:`migrate_legacy`; an override with an old
#: key is refused with the new one named.
LEGACY_KEYS: dict[str, str] = {
    **{f"planner.{k}": f"planner.tracker.{k}" for k in ("tracking", "lookahead", "replan_on_stall", "p_gain",
                                                        "d_gain")},
    "planner.warm_start_level": "planner.warm_start.level",
    "planner.warm_start_steps": "planner.warm_start.steps",
    "planner.return_target": "planner.return_guidance.target",
    "planner.guidance_weight": "planner.return_guidance.weight",
    "planner.execute": "planner.forcing.execute",
    "planner.n_history": "planner.forcing.n_history",
    "planner.forcing_tracker": "planner.forcing.track_states",
    **{f"model.{k}": f"model.unet.{k}" for k in ("dim", "dim_mults", "kernel_size")},
    **{f"model.{k}": f"model.transformer.{k}" for k in ("d_model", "n_layers", "n_heads", "causal", "frame_stack")},
    "eval.policy": "eval.controller",
}


def migrate_legacy(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a stored config (plain dict) with settings written before :data:`LEGACY_KEYS` moved
    them put in their sections (a value already at the new place wins); other keys are unchanged."""
    out = copy.deepcopy(config)
    for old, new in LEGACY_KEYS.items():
        section, name = old.split(".", 1)
        node = out.get(section)
        if not isinstance(node, dict) or name not in node:
            continue
        value = node.pop(name)
        target = out
        *parents, leaf = new.split(".")
        for part in parents:
            child = target.get(part)
            if not isinstance(child, dict):
                child = {}
                target[part] = child
            target = child
        target.setdefault(leaf, value)
    return out


def register_configs() -> None:
    """Register the schemas so conf/*.yaml files are validated against them."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    store.store(group="task", name="task_schema", node=TaskConfig)
    store.store(group="model", name="model_schema", node=ModelConfig)
    store.store(group="diffusion", name="diffusion_schema", node=DiffusionConfig)
    store.store(group="train", name="train_schema", node=TrainConfig)
    store.store(group="planner", name="planner_schema", node=PlannerConfig)
    store.store(group="eval", name="eval_schema", node=EvalConfig)
    store.store(group="collect", name="collect_schema", node=CollectConfig)
    store.store(group="value", name="value_schema", node=ValueConfig)
    store.store(group="guidance", name="guidance_schema", node=GuidanceConfig)
    store.store(group="bc", name="bc_schema", node=BCConfig)
    store.store(group="offline", name="offline_schema", node=OfflineConfig)
    store.store(group="sweep", name="sweep_schema", node=SweepConfig)


def to_container(cfg: DictConfig | Config) -> dict[str, Any]:
    """Resolved plain-dict copy of a config (enums as strings), for checkpoints and results."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.structured(cfg)
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}


def as_config(cfg: DictConfig | dict[str, Any], *, check: bool = True) -> Config:
    """Typed object view of a composed config (validates against the schema).

    ``check``: also check the ranges of the settings (:func:`diffplan.config_checks.check_settings`);
    False for a config read back from a checkpoint, which is what it is.

    Raises:
        ValueError: a key the schema does not have (Hydra's ``+key=value`` adds any key), or a
            setting out of its range.
    """
    if isinstance(cfg, dict):
        cfg = migrate_legacy(cfg)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), cfg)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:  # a value of the wrong type, a key the schema lacks
        key = getattr(error, "full_key", None) or "a setting"
        if isinstance(error, (ConfigKeyError, ConfigAttributeError)):
            raise ValueError(f"unknown config key {key}; check the spelling (the keys of a section are listed "
                             "by the command with --cfg job) and drop the override") from None
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{key}: {detail}; give a value of the setting's type") from None
    assert isinstance(obj, Config)
    unknown = unknown_keys(obj)
    if unknown:
        raise ValueError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; check the spelling "
            "(the keys of a section are listed by the command with --cfg job) and drop the override"
        )
    if check:
        from diffplan.config_checks import check_settings

        check_settings(obj)
    return obj


def drop_unknown_settings(stored: dict[str, Any], schema: type = Config, prefix: str = "") -> list[str]:
    """Remove from ``stored`` (a plain config dict, changed in place) the settings that ``schema`` (a config
    dataclass) and the sections nested in it (named sets and lists of sections too, ``collect.agents.<robot>``,
    ``sweep.cells``) do not have; returns their dotted names. Free-form dicts (``algo_kwargs``) are kept whole."""
    hints = typing.get_type_hints(schema)
    names = {f.name for f in dataclasses.fields(schema)}
    dropped: list[str] = []
    for key in list(stored):
        if key not in names:
            dropped.append(f"{prefix}{key}")
            del stored[key]
            continue
        hint, value = hints.get(key), stored[key]
        if isinstance(hint, type) and _is_section(hint) and isinstance(value, dict):
            dropped += drop_unknown_settings(value, hint, f"{prefix}{key}.")
        elif typing.get_origin(hint) is dict and _is_section(typing.get_args(hint)[1]) and isinstance(value, dict):
            for name, entry in value.items():  # a named set of sections (collect.agents)
                if isinstance(entry, dict):
                    dropped += drop_unknown_settings(entry, typing.get_args(hint)[1], f"{prefix}{key}.{name}.")
        elif typing.get_origin(hint) is list and _is_section(typing.get_args(hint)[0]) and isinstance(value, list):
            for index, entry in enumerate(value):  # a list of sections (sweep.cells)
                if isinstance(entry, dict):
                    dropped += drop_unknown_settings(entry, typing.get_args(hint)[0], f"{prefix}{key}[{index}].")
    return dropped


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def unknown_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted names of the attributes of a config dataclass (and those nested in it) that its schema lacks."""
    if not dataclasses.is_dataclass(node) or isinstance(node, type):
        return []
    names = {f.name for f in dataclasses.fields(node)}
    found = [f"{prefix}{key}" for key in vars(node) if key not in names]
    for name in sorted(names):
        found += unknown_keys(getattr(node, name), f"{prefix}{name}.")
    return found
