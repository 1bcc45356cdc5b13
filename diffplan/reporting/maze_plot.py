"""Planned versus executed paths drawn on the maze."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from diffplan.evaluation.evaluator import EpisodeTrace  # noqa: E402


def plot_maze_paths(
    traces: Sequence[EpisodeTrace],
    walls: Sequence[tuple[float, float, float, float]],
    path: str | Path,
    *,
    title: str = "",
    position_dims: tuple[int, int] = (0, 1),
) -> Path:
    """One panel per episode: walls, the first plan (dashed), later plans (faint), the
    executed path (solid), start (circle) and goal (star). Writes a PNG to ``path``."""
    n = max(1, len(traces))
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    px, py = position_dims
    for ax, trace in zip(axes.flat, traces, strict=False):
        for x0, y0, w, h in walls:
            ax.add_patch(Rectangle((x0, y0), w, h, color="0.25"))
        for k, plan in enumerate(trace.plans):
            style = {"ls": "--", "lw": 1.5, "color": "tab:orange", "alpha": 0.9} if k == 0 else {
                "ls": ":", "lw": 0.8, "color": "tab:orange", "alpha": 0.4}
            ax.plot(plan[:, px], plan[:, py], **style, label="planned" if k == 0 else None)
        obs = trace.observations
        ax.plot(obs[:, px], obs[:, py], color="tab:blue", lw=1.5, label="executed")
        ax.plot(obs[0, px], obs[0, py], "o", color="tab:green", ms=7, label="start")
        ax.plot(trace.goal[0], trace.goal[1], "*", color="tab:red", ms=12, label="goal")
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"seed {trace.seed} episode {trace.episode}", fontsize=8)
        ax.autoscale_view()
    for ax in list(axes.flat)[len(traces):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
