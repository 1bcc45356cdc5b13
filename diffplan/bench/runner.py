"""Run the benchmark's presets and report: the JSON record and the table.

Per preset (random weights; latency does not depend on them):

- ``train_step`` (ms) and ``train_samples_per_s``: the real ``Trainer.train_step`` (window
  sampling, loss, fused AdamW, EMA) on a synthetic dataset of the task's dimensions, at the
  config's ``train.batch_size`` (32 in every preset);
- ``denoise_step`` (ms): one denoiser forward at the planning batch (environments x candidates),
  through the planner's precision and compile settings;
- plans (s): locomotion presets time one value-guided plan (``plan_guided``) and one unguided
  plan (``plan_unguided``, candidates still ranked by value); presets that warm-start their plans
  time the warm-started plan (what the evaluator runs between replans) and the cold first plan
  of an episode (``*_cold``); maze presets time one goal-inpainted plan (``plan``, guided as the
  config says); Diffusion Forcing presets time one ``ForcingPlanner.plan_normalized`` call with a
  full history window (``plan``). Plans are for the preset's N environments in one call: the
  planner call of one evaluation step (no physics).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import torch

from diffplan.acceleration import autocast
from diffplan.bench.builders import (
    build_forcing_planner,
    build_goal_planner,
    build_trainer,
    build_value_planner,
    compose_config,
    episodes_for,
    is_locomotion,
    random_model,
)
from diffplan.bench.presets import MAX_ENVS, Preset
from diffplan.bench.reference import REFERENCE_FIGURES, TARGETS, reference_kind
from diffplan.bench.timing import Measurement, time_runs
from diffplan.config import Config
from diffplan.enums import ExecutionMode
from diffplan.planning.planner import planning_denoiser
from diffplan.training.checkpoint import TrainedModel
from diffplan.utils import cpu_name, git_revision, hardware_info

#: A 1-minute load average above this at the start marks the figures as taken on a busy machine.
BUSY_LOAD = 0.3


@dataclass(frozen=True)
class Settings:
    """How every preset is measured.

    Attributes:
        device: where networks run.
        repeats: timed runs per metric (the median is reported, with min and max).
        warmup: untimed runs before them.
        train_steps_per_run: training steps per timed run (the run's value is their mean).
        denoise_calls_per_run: denoiser forwards per timed run.
        precision: ``train.precision`` and ``planner.precision``.
        compile: ``train.compile`` and ``planner.compile``.
        threads: torch's intra-op threads (also ``train.threads``); 0: torch's default.
    """

    device: torch.device
    repeats: int = 5
    warmup: int = 2
    train_steps_per_run: int = 10
    denoise_calls_per_run: int = 10
    precision: str = "float32"
    compile: bool = False
    threads: int = 0

    def overrides(self) -> list[str]:
        """Hydra overrides every preset is composed with."""
        device = str(self.device)
        return [
            f"train.device={device}", f"eval.device={device}", f"train.threads={self.threads}", "train.progress=false",
            f"train.precision={self.precision}", f"train.compile={str(self.compile).lower()}",
            f"planner.precision={self.precision}", f"planner.compile={str(self.compile).lower()}",
        ]

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["device"] = str(self.device)
        return out


def n_envs_for(preset: Preset, cfg: Config) -> int:
    """The preset's N, else the config's ``eval.n_envs`` capped at :data:`MAX_ENVS`."""
    return preset.n_envs if preset.n_envs is not None else min(cfg.eval.n_envs, MAX_ENVS)


def _plan_inputs(cfg: Config, model: TrainedModel, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Observations (N, obs_dim) and goals (N, goal_dim) in raw units, drawn inside the data's range."""
    generator = torch.Generator().manual_seed(1)
    layout = model.layout
    normalized = torch.rand(2 * n, 1, layout.transition_dim, generator=generator) * 2 - 1
    obs = model.normalizer.unnormalize(normalized.to(device))[:, 0, layout.obs].cpu()
    goals = obs[n:, list(cfg.task.goal_obs_dims)]
    return obs[:n], goals


def measure_training(cfg: Config, settings: Settings) -> tuple[dict[str, Measurement], TrainedModel]:
    """Training step metrics; returns them and a random-weight planning model of the same layout."""
    episodes = episodes_for(cfg)
    with tempfile.TemporaryDirectory(prefix="diffplan-bench-") as run_dir:
        trainer = build_trainer(cfg, episodes, run_dir)
        batch = cfg.train.batch_size
        seconds = time_runs(trainer.train_step, repeats=settings.repeats, warmup=max(settings.warmup, 1),
                            device=settings.device, calls=settings.train_steps_per_run)
        layout = trainer.layout
        del trainer
        gc.collect()
    note = "Trainer.train_step: window sampling, loss, AdamW step, EMA"
    metrics = {
        "train_step": Measurement("ms", [1000 * s for s in seconds], settings.train_steps_per_run, batch=batch,
                                  note=note),
        "train_samples_per_s": Measurement("samples/s", [batch / s for s in seconds], settings.train_steps_per_run,
                                           batch=batch, note=note),
    }
    model = random_model(cfg, layout, settings.device, data=episodes.transitions(layout))
    return metrics, model


def measure_denoiser(cfg: Config, model: TrainedModel, batch: int, horizon: int, settings: Settings) -> Measurement:
    """One denoiser forward at ``batch`` x ``horizon`` tokens, mid-way through the levels."""
    device = settings.device
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(batch, horizon, model.layout.transition_dim, generator=generator).to(device)
    levels = model.schedule.normalized_level(
        torch.full((batch, horizon), model.schedule.n_timesteps // 2, device=device)
    )
    denoiser = planning_denoiser(model, cfg.planner, batch, device)

    @torch.no_grad()
    def forward() -> None:
        with autocast(cfg.planner.precision, device):
            denoiser(x, levels)

    seconds = time_runs(forward, repeats=settings.repeats, warmup=settings.warmup, device=device,
                        calls=settings.denoise_calls_per_run)
    return Measurement("ms", [1000 * s for s in seconds], settings.denoise_calls_per_run, batch=batch,
                       note="one denoiser forward at the planning batch (environments x candidates)")


def _plan_metric(run: Callable[[], Any], n: int, k: int, note: str, settings: Settings) -> Measurement:
    seconds = time_runs(run, repeats=settings.repeats, warmup=settings.warmup, device=settings.device)
    return Measurement("s", seconds, n_envs=n, batch=n * k, note=note)


def measure_value_plans(cfg: Config, model: TrainedModel, n: int, settings: Settings) -> dict[str, Measurement]:
    """Guided and unguided :class:`ValuePlanner` plans (warm-started and cold when the config warm-starts)."""
    device = settings.device
    obs, _ = _plan_inputs(cfg, model, n, device)
    k = cfg.planner.n_candidates
    metrics: dict[str, Measurement] = {}
    warm = cfg.planner.warm_start.level > 0
    shift = max(cfg.planner.replan_every, 1)
    modes = [(True, "plan_guided"), (False, "plan_unguided")]
    if cfg.guidance.kind == "none":
        modes = [(False, "plan_unguided")]
    for guided, name in modes:
        planner = build_value_planner(cfg, model, device, guided=guided)
        generator = torch.Generator(device=device).manual_seed(0)
        what = f"{'value-guided' if guided else 'unguided'} plan, {k} candidates per environment"
        if warm:
            previous = planner.plan(obs, generator).normalized
            metrics[name] = _plan_metric(
                functools.partial(planner.plan, obs, generator, previous=previous, shift=shift), n, k,
                f"{what}, warm-started (level {cfg.planner.warm_start.level}, {cfg.planner.warm_start.steps} steps)",
                settings,
            )
            name = f"{name}_cold"
            what = f"{what}, cold (an episode's first plan)"
        metrics[name] = _plan_metric(functools.partial(planner.plan, obs, generator), n, k, what, settings)
    return metrics


def measure_goal_plan(cfg: Config, model: TrainedModel, n: int, settings: Settings) -> dict[str, Measurement]:
    """One goal-inpainted :class:`GoalPlanner` plan for N environments."""
    device = settings.device
    obs, goals = _plan_inputs(cfg, model, n, device)
    planner = build_goal_planner(cfg, model, device)
    generator = torch.Generator(device=device).manual_seed(0)
    note = (f"goal-inpainted plan, guidance={cfg.guidance.kind}, "
            f"{cfg.planner.n_candidates} candidate(s) per environment")
    return {"plan": _plan_metric(lambda: planner.plan(obs, generator, goals=goals), n, cfg.planner.n_candidates, note,
                                 settings)}


def measure_forcing_plan(cfg: Config, model: TrainedModel, n: int, settings: Settings) -> dict[str, Measurement]:
    """One :meth:`ForcingPlanner.plan_normalized` call for N environments with a full history window."""
    device = settings.device
    planner = build_forcing_planner(cfg, model, device)
    obs, goals = _plan_inputs(cfg, model, n, device)
    generator = torch.Generator().manual_seed(3)
    history = torch.randn(n, planner.n_history, model.layout.transition_dim, generator=generator).clamp(-1, 1)
    current = torch.rand(n, model.layout.obs_dim, generator=generator) * 2 - 1
    sample_generator = torch.Generator(device=device).manual_seed(0)
    note = (f"ForcingPlanner.plan_normalized, {planner.n_history} history tokens, "
            f"guidance={cfg.guidance.kind}, matrix={cfg.diffusion.schedule_matrix}")
    return {"plan": _plan_metric(lambda: planner.plan_normalized(history, current, sample_generator,
                                                                 goals=goals.to(device)), n, 1,
                                 note, settings)}


def run_preset(preset: Preset, settings: Settings, log: TextIO = sys.stdout) -> dict[str, Any]:
    """Measure one preset; returns its JSON record (``error`` set instead of metrics on failure)."""
    start = time.perf_counter()
    record: dict[str, Any] = {"description": preset.description, "overrides": list(preset.overrides)}
    try:
        cfg = compose_config([*preset.overrides, *settings.overrides()])
        n = n_envs_for(preset, cfg)
        forcing = ExecutionMode(cfg.planner.mode) is ExecutionMode.forcing
        locomotion = is_locomotion(cfg.task)
        k = 1 if forcing else cfg.planner.n_candidates
        record.update(
            n_envs=n, n_envs_config=cfg.eval.n_envs, n_candidates=k, train_batch=cfg.train.batch_size,
            task=cfg.task.name, horizon=cfg.task.horizon, stride=cfg.task.stride, model=str(cfg.model.name),
            sampler=f"{cfg.diffusion.sampler.value} {cfg.diffusion.sampling_steps} of {cfg.diffusion.n_timesteps}",
            schedule_matrix=cfg.diffusion.schedule_matrix.value, guidance=cfg.guidance.kind,
            planner="forcing" if forcing else "value" if locomotion else "goal",
        )
        print(f"[{preset.name}] {preset.description}", file=log, flush=True)
        metrics, model = measure_training(cfg, settings)
        record["transition_dim"] = model.layout.transition_dim
        horizon = model.horizon
        metrics["denoise_step"] = measure_denoiser(cfg, model, n * k, horizon, settings)
        if forcing:
            metrics.update(measure_forcing_plan(cfg, model, n, settings))
        elif locomotion:
            metrics.update(measure_value_plans(cfg, model, n, settings))
        else:
            metrics.update(measure_goal_plan(cfg, model, n, settings))
        record["metrics"] = {name: m.as_dict() for name, m in metrics.items()}
        for name, m in metrics.items():
            print(f"[{preset.name}] {name:22s} {_format(m.median, m.unit):>12s}", file=log, flush=True)
    except Exception as error:  # noqa: BLE001 - one failing preset must not lose the others' figures
        record["error"] = f"{type(error).__name__}: {error}"
        record["traceback"] = traceback.format_exc()
        print(f"[{preset.name}] FAILED: {record['error']}", file=sys.stderr, flush=True)
    record["wall_s"] = time.perf_counter() - start
    return record


def compare(presets: dict[str, dict[str, Any]], device: torch.device) -> None:
    """Add ``vs_reference`` (reference figure and speedup = reference / median) to the presets
    that have reference figures for this kind of hardware."""
    figures = REFERENCE_FIGURES[reference_kind(device.type)]
    for name, record in presets.items():
        out = {}
        for metric, figure in figures.get(name, {}).items():
            measured = record.get("metrics", {}).get(metric)
            if measured is None:
                continue
            assert measured["unit"] == figure.unit, (metric, measured["unit"], figure.unit)
            out[metric] = {"reference": figure.value, "unit": figure.unit, "what": figure.what,
                           "hardware": reference_kind(device.type), "speedup": figure.value / measured["median"]}
        if out:
            record["vs_reference"] = out


def check_targets(presets: dict[str, dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """The headline targets: met or missed (None when not measured or not on the target's hardware)."""
    out = []
    for target in TARGETS:
        measured = presets.get(target.preset, {}).get("metrics", {}).get(target.metric)
        applies = reference_kind(device.type) == target.hardware
        median = measured["median"] if measured else None
        met = (median <= target.limit) if (median is not None and applies) else None
        out.append({**dataclasses.asdict(target), "median": median, "applies": applies, "met": met})
    return out


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def device_info(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "index": device.index or 0,
                "tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_benchmark": torch.backends.cudnn.benchmark}
    return {"type": device.type, "name": cpu_name()}


def run_benchmark(presets: list[Preset], settings: Settings, *, command: str, quick: bool = False,
                  log: TextIO = sys.stdout) -> dict[str, Any]:
    """Measure ``presets``; returns the JSON record."""
    start = time.perf_counter()
    load_start = _load_average()
    records = {preset.name: run_preset(preset, settings, log) for preset in presets}
    compare(records, settings.device)
    return {
        "command": command,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "hardware": hardware_info(),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device_info(settings.device),
        # 1-minute load average before and after: figures from a busy machine are not comparable.
        "load_average": {"start": load_start, "end": _load_average()},
        "settings": {**settings.as_dict(), "quick": quick, "presets": [p.name for p in presets]},
        "reference_figures": {
            kind: {preset: {metric: dataclasses.asdict(f) for metric, f in metrics.items()}
                   for preset, metrics in figures.items()}
            for kind, figures in REFERENCE_FIGURES.items()
        },
        "presets": records,
        "targets": check_targets(records, settings.device),
        "wall_s": time.perf_counter() - start,
    }


def _format(value: float | None, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "samples/s":
        return f"{value:,.0f}/s"
    return f"{value:,.0f} {unit}"


def _speedup(ref: dict[str, Any] | None) -> str:
    return "" if ref is None else f"{ref['speedup']:.2f}x"


def format_table(result: dict[str, Any]) -> str:
    """The readable summary: one line per preset and metric, then the targets."""
    header = f"{'preset':18s} {'metric':22s} {'N':>3s} {'batch':>5s} {'median':>12s} {'min .. max':>23s} " \
             f"{'reference':>10s} {'speedup':>8s}"
    lines = [header, "-" * len(header)]
    for name, record in result["presets"].items():
        if "error" in record:
            lines.append(f"{name:18s} FAILED: {record['error']}")
            continue
        vs = record.get("vs_reference", {})
        for metric, m in record["metrics"].items():
            ref = vs.get(metric)
            n = "" if m.get("n_envs") is None else str(m["n_envs"])
            batch = "" if m.get("batch") is None else str(m["batch"])
            spread = f"{_format(m['min'], m['unit'])} .. {_format(m['max'], m['unit'])}"
            lines.append(
                f"{name:18s} {metric:22s} {n:>3s} {batch:>5s} {_format(m['median'], m['unit']):>12s} {spread:>23s} "
                f"{_format(ref['reference'], ref['unit']) if ref else '':>10s} "
                f"{_speedup(ref):>8s}"
            )
    device = result["device"]
    lines.append("")
    lines.append(f"device {device['type']} ({device['name']}), {result['threads']} threads, "
                 f"precision {result['settings']['precision']}, compile {result['settings']['compile']}, "
                 f"median of {result['settings']['repeats']}; speedup = reference / median "
                 f"(reference Diffuser code, {'one H200' if device['type'] == 'cuda' else '2-core CPU'})")
    load = result.get("load_average", {}).get("start")
    if load is not None and load > BUSY_LOAD:
        lines.append(f"warning: load average {load:.2f} at the start (other processes share the cores): these figures "
                     "are not comparable with a quiet machine's")
    for target in result["targets"]:
        what = f"target: {target['preset']} {target['metric']} <= {_format(target['limit'], target['unit'])}"
        if target["median"] is None:
            verdict = "not measured"
        elif not target["applies"]:
            verdict = f"{_format(target['median'], target['unit'])}: not applicable (a {target['hardware']} target)"
        else:
            verdict = f"{_format(target['median'], target['unit'])}: {'MET' if target['met'] else 'MISSED'}"
        lines.append(f"{what}: {verdict}")
    return "\n".join(lines)

