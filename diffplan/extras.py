"""Optional dependencies, imported on first use with an error that names the extra to install.

The core install plans, trains and evaluates on the maze and locomotion tasks. Parts that only some
users need live in extras (``pip install "diffplan[<extra>]"``):

- ``sb3``: stable-baselines3, for collecting locomotion datasets with SB3 agents and for SB3
  target policies in policy guidance;
- ``minari``: Minari datasets by id or folder;
- ``launchers``: Hydra's joblib and SLURM (submitit) launchers for ``diffplan-sweep``;
- ``mjx``: MuJoCo's JAX backend (mujoco-mjx, jax) for ``eval.physics=mjx``;
- ``warp``: MuJoCo Warp (mujoco-warp, warp-lang) for ``eval.physics=warp``;
- ``test``: the test suite and linters.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: The extra that provides each optional top-level module.
EXTRA_OF = {
    "stable_baselines3": "sb3",
    "minari": "minari",
    "hydra_plugins.hydra_joblib_launcher": "launchers",
    "hydra_plugins.hydra_submitit_launcher": "launchers",
    "jax": "mjx",
    "mujoco.mjx": "mjx",
    "warp": "warp",
    "mujoco_warp": "warp",
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` saying which extra installs it.

    Args:
        module: the importable name, a key of :data:`EXTRA_OF`.
        purpose: what needs it, completing "... needs <package>", e.g. "loading an SB3 target policy".
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        extra = EXTRA_OF[module]
        raise MissingExtraError(
            f"{purpose} needs the optional dependency {module.split('.')[-1]!r}; install it with "
            f'pip install "diffplan[{extra}]"'
        ) from error
