"""A short Markdown report of one evaluation (the demo's report.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def eval_report(
    results: dict[str, Any],
    *,
    image: str | None = None,
    training: dict[str, Any] | None = None,
    commands: list[str] | None = None,
) -> str:
    """Markdown text summarizing ``results`` (the evaluator's JSON)."""
    score = results["normalized_score"]
    ref = results["reference_scores"]
    cfg = results["config"]
    hardware = results["hardware"]
    gpu = f", {hardware['gpu']}" if "gpu" in hardware else ""
    lines = [
        f"# diffplan evaluation: {results['task']}",
        "",
        f"- normalized score: **{score['mean']:.1f} ± {score['stderr']:.1f}** (mean ± standard error over "
        f"{results['n_episodes']} episodes, seeds {results['seeds']}; {results['n_failed']} failed)",
        f"- success rate (reached the goal at least once): {results['success_rate']:.2f}",
        f"- mean episode return: {results['return']['mean']:.1f}",
        f"- reference scores ({ref.get('method', '?')} method, from {ref.get('source', '?')}): "
        f"min {ref['min']:.2f} ({ref.get('min_policy', 'random')}), max {ref['max']:.2f} "
        f"({ref.get('max_policy', 'expert')}), {ref.get('n_episodes', '?')} episodes each. "
        "These are not D4RL's maze2d reference scores; do not compare the two scales directly.",
        f"- planning: {results['plan_time_s']['n_plans']} batched plans, "
        f"{results['plan_time_s']['mean']:.3f} s each on average "
        f"({cfg['planner']['mode']} execution, replan_every={cfg['planner']['replan_every']}, "
        f"{cfg['diffusion']['sampler']} with {cfg['diffusion']['sampling_steps']} steps)",
        f"- evaluation wall time: {results['wall_time_s']:.1f} s on {hardware.get('processor')} "
        f"({hardware.get('cpu_count')} cores{gpu})",
        f"- dataset: `{Path(results['dataset']['path']).name}` (sha256 {results['dataset']['sha256'][:12]}…)",
        f"- checkpoint: step {results['checkpoint']['step']} ({'EMA' if results['checkpoint'].get('ema') else 'raw'} "
        "weights)",
        f"- git revision: {results['git_revision']}",
    ]
    if training:
        lines.append(
            f"- training: {training['steps']} steps in {training['wall_time_s']:.0f} s "
            f"({training['steps_per_s']:.1f} steps/s), final loss {training['final_loss']:.4f}"
        )
    if image:
        lines += ["", "## Planned versus executed paths", "", f"![planned vs executed]({image})", "",
                  "Dashed orange: the first plan; dotted: later replans; blue: the executed path; "
                  "green circle: start; red star: goal."]
    if commands:
        lines += ["", "## Reproduce", "", "```bash", *commands, "```"]
    lines += ["", "Per-episode returns and the resolved config are in `results.json`.", ""]
    return "\n".join(lines)


def write_eval_report(path: str | Path, results: dict[str, Any], **kwargs: Any) -> Path:
    """Write :func:`eval_report` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(eval_report(results, **kwargs))
    return path
