"""The tasks the project knows (the PointMaze mazes, ``<robot>-<level>`` locomotion) as the data
layer sees them: their dimensions, and loading a dataset for a task with its dimensions checked.

Sits above :mod:`diffplan.data` and :mod:`diffplan_envs`, which do not import each other's way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from diffplan_envs import MAZE_TASKS
from diffplan_envs.locomotion import get_locomotion_task, is_locomotion_task

from diffplan.data.episodes import Episodes
from diffplan.data.errors import DatasetError
from diffplan.data.loading import load_episodes
from diffplan.data.returns import best_episodes
from diffplan.enums import TaskSuite

if TYPE_CHECKING:
    from diffplan.config import TaskConfig

def task_suite(task: TaskConfig) -> TaskSuite:
    """``task.suite``, or for configs without one, the suite its name belongs to."""
    if task.suite is not None:
        return TaskSuite(task.suite)
    return TaskSuite.locomotion if is_locomotion_task(task.name) else TaskSuite.maze


def is_locomotion(task: TaskConfig) -> bool:
    """Whether the task is a locomotion task (planned actions, return-scored, no goals)."""
    return task_suite(task) is TaskSuite.locomotion


def task_dims(task_name: str) -> tuple[int, int] | None:
    """(observation, action) sizes of a known task (the mazes, ``<robot>-<level>``), else None."""
    if task_name in MAZE_TASKS:
        maze = MAZE_TASKS[task_name]
        return maze.obs_dim, maze.act_dim
    if is_locomotion_task(task_name):
        robot = get_locomotion_task(task_name)
        return robot.obs_dim, robot.act_dim
    return None


def load_task_episodes(
    source: str | Path, task_name: str, *, key: str = "task.dataset", top_return_fraction: float = 1.0
) -> Episodes:
    """Load ``source`` (see :func:`load_episodes`) for task ``task_name``, refusing a dataset whose
    observation or action size is not the task's (known tasks only) before anything is trained;
    then keep the ``top_return_fraction`` of its episodes with the best returns
    (:func:`~diffplan.data.returns.best_episodes`, ``task.top_return_fraction``).

    Raises:
        DatasetError: any loader error, or a dimension mismatch naming the key, both sizes and the fix.
        ValueError: ``top_return_fraction`` outside (0, 1].
    """
    episodes = load_episodes(source)
    dims = task_dims(task_name)
    if dims is None:
        return best_episodes(episodes, top_return_fraction)
    for name, actual, expected in (("observations", episodes.obs_dim, dims[0]),
                                   ("actions", episodes.act_dim, dims[1])):
        if actual != expected:
            raise DatasetError(
                f"{key}={source}: key '{name}' has dimension {actual} but task {task_name} needs {expected}; "
                f"pass a dataset recorded for {task_name}, or the task it was recorded for (task=<name>)"
            )
    return best_episodes(episodes, top_return_fraction)


def task_episodes(task: TaskConfig) -> Episodes:
    """The episodes ``task`` trains and evaluates on: ``task.dataset`` checked against the task's
    dimensions, then its ``task.top_return_fraction`` of best episodes (:func:`load_task_episodes`)."""
    return load_task_episodes(task.dataset, task.name, top_return_fraction=task.top_return_fraction)

