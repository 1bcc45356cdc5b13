"""The shared part of the accelerator backends (``physics="mjx"``, ``physics="warp"``): simulations
whose state lives on a framework's device while the batches of :mod:`diffplan_envs.mujoco_batch` read
and write it as host arrays, and the instability check they share with ``mujoco.batch``.

A backend subclasses :class:`HostStateSimulations`, resets its device state in
:meth:`HostStateSimulations._reset_device` and implements ``step``; resets of the host arrays, the
stability bound and the error text are here once.
"""

from __future__ import annotations

import mujoco
import numpy as np

#: MuJoCo's mjMAXVAL: a qpos, qvel or qacc entry beyond it (or not finite) makes mj_step warn and reset
#: the simulation, which mujoco.batch reports as an error; the accelerator backends check the same.
MAX_VALUE: float = float(mujoco.mjMAXVAL)


def stable_rows(*arrays: np.ndarray) -> np.ndarray:
    """(N,) bool: the rows whose entries in every (N, ...) array are finite and within :data:`MAX_VALUE`."""
    return np.all([np.all(np.abs(x.reshape(len(x), -1)) <= MAX_VALUE, axis=1) for x in arrays], axis=0)


def unstable_errors(backend: str, failed: np.ndarray) -> np.ndarray:
    """(N,) error texts: empty, but for the ``failed`` rows the backend's instability message."""
    errors = np.full(len(failed), "", dtype=object)
    errors[failed] = (f"{backend}: unstable simulation (a qpos, qvel or qacc entry not finite or beyond "
                      f"{MAX_VALUE:g}, where mj_step warns)")
    return errors


class HostStateSimulations:
    """N simulations of one model (a :class:`~diffplan_envs.mujoco_batch.Simulations`) whose ``qpos``
    (N, nq), ``qvel`` (N, nv) and ``ctrl`` (N, nu) are host arrays: a subclass sends them to its device
    with every step and refreshes them from the result."""

    def __init__(self, model: mujoco.MjModel, n: int) -> None:
        self.n = n
        self._qpos0 = model.qpos0.copy()
        self.qpos = np.tile(self._qpos0, (n, 1))
        self.qvel = np.zeros((n, model.nv))
        self.ctrl = np.zeros((n, model.nu))

    def _reset_device(self, rows: np.ndarray) -> None:
        """``mj_resetData`` of the device state of the simulations in ``rows`` (N,) bool."""
        raise NotImplementedError

    def reset(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """Every simulation reset (``mj_resetData``) with state (qpos, qvel). Gymnasium's closing
        mj_forward is left out: it changes no state a step starts from."""
        self._reset_device(np.ones(self.n, dtype=bool))
        self.qpos[:] = qpos
        self.qvel[:] = qvel
        self.ctrl[:] = 0.0

    def reset_rows(self, active: np.ndarray) -> None:
        """``mj_resetData`` of the active simulations."""
        self._reset_device(active)
        self.qpos[active] = self._qpos0
        self.qvel[active] = 0.0
        self.ctrl[active] = 0.0
