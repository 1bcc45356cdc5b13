"""The physics of ``physics="warp"``: N simulations of one model stepped by MuJoCo Warp
(``mujoco_warp``, on NVIDIA Warp; the ``warp`` extra: ``pip install "diffplan[warp]"``), on Warp's
default device (a CUDA GPU where Warp sees one, else Warp's CPU device).

:class:`WarpSimulations` is a :class:`~diffplan_envs.mujoco_batch.Simulations`: the batches and
replays of :mod:`diffplan_envs.mujoco_batch` run their task rules (observations, rewards,
terminations, time limits, reset noise, PointMaze's goals) on it unchanged, so only the physics
differs from ``physics="mujoco"``. The state lives in one ``mujoco_warp.Data`` with a world per
simulation; an env step is ``nstep`` ``mujoco_warp.step`` calls over every world.

MuJoCo Warp computes in float32: a step moves Hopper's state by ~1e-6 from MuJoCo's float64 one, and
a free run grows that as any chaotic system does (tests/test_warp_backend.py states what agrees and
how closely). Warp compiles its kernels on first use (about half a minute on a CPU) and keeps them in
its kernel cache (``~/.cache/warp``) for later processes.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

import mujoco
import numpy as np

from diffplan.extras import require
from diffplan_envs.host_state import HostStateSimulations, stable_rows, unstable_errors

log = logging.getLogger(__name__)

_LOGGED: set[str] = set()


def require_warp() -> tuple[Any, Any]:
    """``warp`` (initialized, quietly: its banner, its note that no CUDA driver is found on a CPU-only
    machine and its per-kernel load lines are left out unless ``warp.config.log_level`` was set to
    something else) and ``mujoco_warp``, or a MissingExtraError naming the extra."""
    wp = require("warp", "eval.physics=warp")
    mjw = require("mujoco_warp", "eval.physics=warp")
    if wp.config.log_level == wp.LOG_INFO:
        wp.config.log_level = wp.LOG_WARNING
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        wp.init()
    return wp, mjw


class WarpSimulations(HostStateSimulations):
    """N simulations of one model on MuJoCo Warp (the :class:`~diffplan_envs.mujoco_batch.Simulations`
    of ``physics="warp"``). ``qpos``, ``qvel`` and ``ctrl`` are host arrays sent with every step and
    refreshed from its result.

    Every world is stepped in every call; an inactive one's host state is left as it was (its solver
    warm start on the device moves on, which changes the next solve only within the solver's tolerance,
    and a batch resets a simulation before it becomes active again). A simulation that becomes unstable
    (a qpos, qvel or qacc entry not finite or beyond :data:`~diffplan_envs.host_state.MAX_VALUE`, where
    mj_step would warn) keeps the state it had before the step, gets a fresh solver state, and reports an
    error, as mujoco.batch does."""

    def __init__(self, model: mujoco.MjModel, n: int) -> None:
        self._wp, self._mjw = require_warp()
        wp = self._wp
        self.device = wp.get_device()
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                self._model = self._mjw.put_model(model)
                self._data = self._mjw.put_data(model, mujoco.MjData(model), nworld=n)
            except NotImplementedError as error:
                raise ValueError(f"eval.physics=warp cannot simulate this task's model (MuJoCo Warp: {error}); "
                                 "set eval.physics=mujoco or eval.physics=gymnasium") from error
        if str(self.device) not in _LOGGED:
            _LOGGED.add(str(self.device))
            log.info("eval.physics=warp: MuJoCo Warp on Warp device %s, float32", self.device)
        super().__init__(model, n)
        self._all = wp.array(np.ones(n, dtype=bool), dtype=bool, device=self.device)

    def _reset_device(self, rows: np.ndarray) -> None:
        """``mujoco_warp.reset_data`` of the worlds in ``rows``."""
        mask = self._all if rows.all() else self._wp.array(rows, dtype=bool, device=self.device)
        self._mjw.reset_data(self._model, self._data, reset=mask)

    def step(self, active: np.ndarray, nstep: int) -> tuple[np.ndarray, np.ndarray]:
        """``nstep`` MuJoCo Warp steps of the active simulations (see the class for errors)."""
        data = self._data
        data.qpos.assign(self.qpos.astype(np.float32))
        data.qvel.assign(self.qvel.astype(np.float32))
        data.ctrl.assign(self.ctrl.astype(np.float32))
        for _ in range(nstep):
            self._mjw.step(self._model, data)
        qpos, qvel, qacc = (getattr(data, name).numpy().astype(np.float64) for name in ("qpos", "qvel", "qacc"))
        stable = stable_rows(qpos, qvel, qacc)
        stepped = active & stable
        self.qpos[stepped] = qpos[stepped]
        self.qvel[stepped] = qvel[stepped]
        if not stable.all():
            self._reset_device(~stable)  # no NaN left in a failed world's solver state
        return unstable_errors("warp", active & ~stable), stepped
