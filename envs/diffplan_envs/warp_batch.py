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

log = logging.getLogger(__name__)

#: MuJoCo's mjMAXVAL: a qpos, qvel or qacc entry beyond it (or not finite) makes mj_step warn and
#: reset the simulation, which mujoco.batch reports as an error; a Warp step is checked for the same.
MAX_VALUE = 1e10

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


class WarpSimulations:
    """N simulations of one model on MuJoCo Warp (the :class:`~diffplan_envs.mujoco_batch.Simulations`
    of ``physics="warp"``). ``qpos``, ``qvel`` and ``ctrl`` are host arrays sent with every step and
    refreshed from its result.

    Every world is stepped; an inactive one gets back the state it had before the call. A simulation
    that becomes unstable (a qpos, qvel or qacc entry not finite or beyond :data:`MAX_VALUE`, where
    mj_step would warn) keeps the state it had before the step and reports an error, as mujoco.batch
    does."""

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
        self.n = n
        self._qpos0 = model.qpos0.copy()
        self.qpos = np.tile(self._qpos0, (n, 1))
        self.qvel = np.zeros((n, model.nv))
        self.ctrl = np.zeros((n, model.nu))
        self._all = wp.array(np.ones(n, dtype=bool), dtype=bool, device=self.device)

    def _reset_worlds(self, rows: np.ndarray) -> None:
        """``mj_resetData`` of the worlds in ``rows`` (N,) bool."""
        mask = self._all if rows.all() else self._wp.array(rows, dtype=bool, device=self.device)
        self._mjw.reset_data(self._model, self._data, reset=mask)

    def reset(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """Every simulation reset (``mj_resetData``) with state (qpos, qvel). Gymnasium's closing
        mj_forward is left out: it changes no state a step starts from."""
        self._reset_worlds(np.ones(self.n, dtype=bool))
        self.qpos[:] = qpos
        self.qvel[:] = qvel
        self.ctrl[:] = 0.0

    def reset_rows(self, active: np.ndarray) -> None:
        """``mj_resetData`` of the active simulations."""
        self._reset_worlds(active)
        self.qpos[active] = self._qpos0
        self.qvel[active] = 0.0
        self.ctrl[active] = 0.0

    def step(self, active: np.ndarray, nstep: int) -> tuple[np.ndarray, np.ndarray]:
        """``nstep`` MuJoCo Warp steps of the active simulations (see the class for errors)."""
        data, wp = self._data, self._wp
        kept = {name: getattr(data, name).numpy().copy() for name in ("qacc_warmstart", "time")}
        data.qpos.assign(self.qpos.astype(np.float32))
        data.qvel.assign(self.qvel.astype(np.float32))
        data.ctrl.assign(self.ctrl.astype(np.float32))
        for _ in range(nstep):
            self._mjw.step(self._model, data)
        wp.synchronize_device(self.device)
        qpos, qvel, qacc = (getattr(data, name).numpy().astype(np.float64) for name in ("qpos", "qvel", "qacc"))
        stable = np.all([np.all(np.abs(x) <= MAX_VALUE, axis=1) for x in (qpos, qvel, qacc)], axis=0)
        stepped = active & stable
        self.qpos[stepped] = qpos[stepped]
        self.qvel[stepped] = qvel[stepped]
        if not stepped.all():  # the others keep the solver's warm start and clock they had
            for name, before in kept.items():
                now = getattr(data, name).numpy()
                now[~stepped] = before[~stepped]
                getattr(data, name).assign(now)
        errors = np.full(self.n, "", dtype=object)
        errors[active & ~stable] = (f"warp: unstable simulation (a qpos, qvel or qacc entry not finite or beyond "
                                    f"{MAX_VALUE:g}, where mj_step warns)")
        return errors, stepped
