"""PointMaze and MuJoCo locomotion environments, data collectors and reference scores for diffplan."""

from diffplan_envs.collect_maze import MazeRecipe, collect_maze_dataset
from diffplan_envs.controller import WaypointController, noisy_action, q_iteration_next_cells
from diffplan_envs.locomotion import (
    LEVELS,
    ROBOTS,
    LocomotionBatch,
    LocomotionTask,
    Robot,
    get_locomotion_task,
    is_locomotion_task,
    make_locomotion_env,
)
from diffplan_envs.maze import (
    GOAL_RADIUS,
    MAZE_TASKS,
    MazeBatch,
    MazeGeometry,
    MazeTask,
    StepResult,
    geometry_from_env,
    get_maze_task,
    make_maze_env,
    maze_geometry,
)
from diffplan_envs.mujoco_batch import (
    PHYSICS_BACKENDS,
    MujocoLocomotionBatch,
    MujocoMazeBatch,
    locomotion_batch,
    maze_batch,
)
from diffplan_envs.reference_scores import (
    D4RL_REF_SCORES,
    RefScores,
    compute_maze_reference_scores,
    normalized_score,
)

__all__ = [
    "LEVELS",
    "ROBOTS",
    "LocomotionBatch",
    "LocomotionTask",
    "Robot",
    "get_locomotion_task",
    "is_locomotion_task",
    "make_locomotion_env",
    "D4RL_REF_SCORES",
    "GOAL_RADIUS",
    "MAZE_TASKS",
    "MazeBatch",
    "MazeGeometry",
    "MazeRecipe",
    "MazeTask",
    "MujocoLocomotionBatch",
    "MujocoMazeBatch",
    "PHYSICS_BACKENDS",
    "RefScores",
    "StepResult",
    "WaypointController",
    "collect_maze_dataset",
    "compute_maze_reference_scores",
    "geometry_from_env",
    "get_maze_task",
    "locomotion_batch",
    "make_maze_env",
    "maze_batch",
    "maze_geometry",
    "noisy_action",
    "normalized_score",
    "q_iteration_next_cells",
]
