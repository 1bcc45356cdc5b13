"""diffplan: planning with trajectory diffusion models for offline reinforcement learning.

The Python API (:mod:`diffplan.api`), importable from the top level::

    import diffplan
    diffplan.train("pointmaze-umaze", experiment="demo", run_dir="runs/umaze")
    planner = diffplan.load_planner("runs/umaze/checkpoint.pt")

The commands (``diffplan-train``, ``diffplan-evaluate``, ...) run the same functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: The public API, imported on first use so that ``import diffplan.<module>`` stays light.
__all__ = ["LoadedPlanner", "Trajectory", "collect", "evaluate", "load_planner", "make_config", "train"]

if TYPE_CHECKING:
    from diffplan.api import LoadedPlanner, Trajectory, collect, evaluate, load_planner, make_config, train


def __getattr__(name: str) -> Any:
    if name in __all__:
        from diffplan import api

        return getattr(api, name)
    raise AttributeError(f"module 'diffplan' has no attribute {name!r}")
