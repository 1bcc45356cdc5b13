"""Episode media of a sweep report: maze path plots and MuJoCo GIFs of selected episodes.

For each task the report shows the best, median and worst episode (by normalized score) of
the best cell (highest mean score) among the cells whose results have an ``episodes.npz``
(``diffplan-evaluate eval.save_episodes=true``). Anything missing becomes a note, never an
error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from diffplan.evaluation.episodes import SavedEpisodes, load_episodes
from diffplan.reporting.cells import Episode
from diffplan.reporting.render import RenderJob, render_gifs, renderable
from diffplan.reporting.summary import CellSummary, TaskSummary


@dataclass(frozen=True)
class MediaItem:
    """One image of the report: ``path`` (under the report's images folder) and its caption."""

    path: Path
    caption: str

    @property
    def mime(self) -> str:
        return "image/gif" if self.path.suffix == ".gif" else "image/png"


@dataclass
class TaskMedia:
    """The media of one task and notes on what could not be shown."""

    cell: str | None = None
    items: list[MediaItem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def slug(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_") or "x"


def select_episodes(episodes: list[Episode]) -> list[tuple[str, Episode]]:
    """(tag, episode) for the best, median and worst episode by normalized score (ties: first key)."""
    ranked = sorted(episodes, key=lambda e: (-e.normalized_score, e.key))
    picks = [("best", ranked[0]), ("median", ranked[len(ranked) // 2]), ("worst", ranked[-1])]
    seen: set[tuple[int, int]] = set()
    unique = []
    for tag, episode in picks:
        if episode.key not in seen:
            seen.add(episode.key)
            unique.append((tag, episode))
    return unique


def _with_episodes(cell: CellSummary) -> list[Episode]:
    return [e for f in cell.cell.files if f.episodes_npz is not None for e in f.episodes]


def _npz_of(cell: CellSummary, episode: Episode) -> Path:
    npz = next(f.episodes_npz for f in cell.cell.files if f.path == episode.source)
    assert npz is not None  # only episodes of files with an episodes.npz are selected
    return npz


def task_media(task: TaskSummary, images_dir: Path, *, render: bool = True) -> TaskMedia:
    """Path plots (mazes) and GIFs (when ``render`` and a GL backend works) for ``task``."""
    media = TaskMedia()
    ranked = sorted(task.cells, key=lambda c: -c.score.estimate)
    chosen = next((c for c in ranked if _with_episodes(c)), None)
    if chosen is None:
        media.notes.append("no episodes.npz next to these results: rerun diffplan-evaluate with "
                           "eval.save_episodes=true to get path plots and renders of episodes")
        return media
    if chosen is not ranked[0]:
        media.notes.append(f"the best cell {ranked[0].label!r} has no episodes.npz; showing {chosen.label!r}, "
                           "the best cell that has one")
    media.cell = chosen.label
    picks = select_episodes(_with_episodes(chosen))
    cache: dict[Path, SavedEpisodes] = {}
    rows: list[tuple[str, Episode, SavedEpisodes, int]] = []
    for tag, episode in picks:
        npz = _npz_of(chosen, episode)
        try:
            saved = cache.setdefault(npz, load_episodes(npz))
            rows.append((tag, episode, saved, saved.index(episode.seed, episode.episode)))
        except (KeyError, ValueError, OSError) as e:
            media.notes.append(f"{npz}: {e}")
    if not rows:
        return media
    base = f"{slug(task.task)}-{slug(chosen.label)}"
    describe = {tag: f"{tag} episode (seed {e.seed}, episode {e.episode}, normalized score {e.normalized_score:.1f})"
                for tag, e, _, _ in rows}
    _maze_paths(task.task, rows, images_dir / f"{base}-paths.png", media)
    if not render:
        media.notes.append("episode renders skipped (--no-media)")
    elif not renderable(task.task):
        media.notes.append(f"no renderer for task {task.task!r} (PointMaze and locomotion tasks are rendered)")
    else:
        jobs = [RenderJob(task.task, str(saved.path), row, str(images_dir / f"{base}-{tag}.gif"),
                          # Locomotion: a moving textured floor; smaller and shorter keeps each GIF ~0.2 MB.
                          **({} if saved.goals.shape[1] else {"width": 200, "height": 136, "max_frames": 40}))
                for tag, _, saved, row in rows]
        outcome = render_gifs(jobs)
        for (tag, _, _, _), written in zip(rows, outcome.written, strict=True):
            if written is not None:
                media.items.append(MediaItem(written, f"{describe[tag]}, rendered with MUJOCO_GL={outcome.backend}"))
        if outcome.error:
            media.notes.append(f"episode renders unavailable: {outcome.error}")
    return media


def _maze_paths(task: str, rows: list[tuple[str, Episode, SavedEpisodes, int]], path: Path,
                media: TaskMedia) -> None:
    from diffplan_envs import MAZE_TASKS, maze_geometry

    from diffplan.reporting.maze_plot import plot_maze_paths

    if task not in MAZE_TASKS:
        return
    traces = [saved.trace(row) for _, _, saved, row in rows]
    plot_maze_paths(traces, maze_geometry(task).wall_rectangles(), path,
                    title=f"{task}: planned (dashed) vs executed (solid)")
    tags = "; ".join(f"{tag}: seed {e.seed} episode {e.episode} ({e.normalized_score:.1f})" for tag, e, _, _ in rows)
    media.items.append(MediaItem(path, f"planned vs executed paths, {tags}"))
