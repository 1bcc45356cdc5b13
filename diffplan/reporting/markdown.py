"""A short Markdown report of one evaluation (the demo's report.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffplan.evaluation.reference import scale_label


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
        f"- normalized score: **{score['mean']:.1f} ± {score['stderr']:.1f}** ({scale_label(ref)}; mean ± standard "
        f"error over {results['n_episodes']} episodes, seeds {results['seeds']}; {results['n_failed']} failed)",
        "- success rate (reached the goal at least once): "
        + ("n/a (scored by return only)" if results["success_rate"] is None else f"{results['success_rate']:.2f}"),
        f"- mean episode return: {results['return']['mean']:.1f}",
        f"- reference returns ({ref.get('method', '?')} method, from {ref.get('source', '?')}): "
        f"min {ref['min']:.2f}, max {ref['max']:.2f}{_reference_detail(ref, results['task'])}",
        f"- planning: {results['plan_time_s']['n_plans']} batched plans, "
        f"{results['plan_time_s']['mean']:.3f} s each on average "
        f"({cfg['planner']['mode']} execution, replan_every={cfg['planner']['replan_every']}, "
        f"{cfg['diffusion']['sampler']} with {cfg['diffusion']['sampling_steps']} steps)",
        f"- evaluation wall time: {results['wall_time_s']:.1f} s on {hardware.get('processor')} "
        f"({hardware.get('cpu_count')} cores{gpu})",
        f"- dataset: {_dataset_line(results['dataset'])}",
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


def _reference_detail(ref: dict[str, Any], task: str) -> str:
    """What the reference returns were measured with, and which scales they must not be compared to."""
    if ref.get("method") == "minari":
        detail = (f" ({ref.get('min_policy', 'random policy')} and {ref.get('max_policy', 'expert policy')}"
                  + (f", {ref['n_episodes']} episodes each" if "n_episodes" in ref else "") + ")")
        return detail + ". These are not D4RL's maze2d reference scores; do not compare the two scales directly."
    if ref.get("method") == "d4rl":
        return " (D4RL's published reference returns)."
    return ""


def _dataset_line(dataset: dict[str, Any]) -> str:
    """The dataset's name and identity (or, in results written before identities, its file hash)."""
    path = str(dataset["path"])
    name = path if path.startswith("minari:") else Path(path).name
    if dataset.get("identity"):
        return f"`{name}` (identity {dataset['identity'][:12]}…)"
    return f"`{name}` (sha256 {dataset['sha256'][:12]}…)"


def write_eval_report(path: str | Path, results: dict[str, Any], **kwargs: Any) -> Path:
    """Write :func:`eval_report` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(eval_report(results, **kwargs))
    return path
