"""The physics of ``physics="mjx"``: N simulations of one model stepped by MJX, MuJoCo's JAX backend
(the ``mjx`` extra: ``pip install "diffplan[mjx]"``), on JAX's default device (a GPU or TPU where
JAX has one, else the CPU).

:class:`MjxSimulations` is a :class:`~diffplan_envs.mujoco_batch.Simulations`: the batches and
replays of :mod:`diffplan_envs.mujoco_batch` run their task rules (observations, rewards,
terminations, time limits, reset noise, PointMaze's goals) on it unchanged, so only the physics
differs from ``physics="mujoco"``. One env step of the whole batch is one call of one jitted
function: the state and controls go in, ``jax.vmap`` over the simulations of a ``jax.lax.fori_loop``
over the frame skip's ``mjx.step`` calls, the state comes out. It is compiled once per model, batch
size and frame skip in a process (slow on a CPU; JAX_COMPILATION_CACHE_DIR keeps it across
processes) and reused by every batch after it.

MJX runs in float64 here (``jax_enable_x64``, set for the whole process when the backend loads):
in float32 a single step already moves Hopper's state by ~1e-6 from MuJoCo's, in float64 by ~1e-15
(tests/test_mjx_backend.py states what agrees and how closely).

One collision differs from MuJoCo's in MJX itself: its sphere-box function reports no contact until
the sphere penetrates the box, ignoring the contact margin, where MuJoCo's ``mjraw_SphereBox``
reports one from ``margin`` away (PointMaze's ball and walls: 0.004), so MJX's ball met a wall a
step late and left it O(1) apart from Gymnasium's. :func:`require_mjx` puts MuJoCo's algorithm in
MJX's collision table for sphere-box pairs (:func:`_sphere_box`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from dataclasses import dataclass, field
from typing import Any

import mujoco
import numpy as np

from diffplan.extras import require
from diffplan_envs.host_state import MAX_VALUE, HostStateSimulations, unstable_errors

log = logging.getLogger(__name__)


def require_mjx() -> tuple[Any, Any]:
    """``jax`` and ``mujoco.mjx`` with float64 enabled, or a MissingExtraError naming the extra."""
    jax = require("jax", "eval.physics=mjx")
    # mujoco.mjx prints to stdout when its optional Warp implementation is missing: not our concern
    with contextlib.redirect_stdout(io.StringIO()):
        mjx = require("mujoco.mjx", "eval.physics=mjx")
    jax.config.update("jax_enable_x64", True)
    _use_sphere_box(jax)
    return jax, mjx


def _use_sphere_box(jax: Any) -> None:
    """Put :func:`_sphere_box` in MJX's collision table in place of its sphere-box function (once;
    left alone where the table holds another function, e.g. a later MJX's own fix)."""
    from mujoco.mjx._src import collision_convex, collision_driver, collision_primitive
    from mujoco.mjx._src import math as mjx_math
    from mujoco.mjx._src.types import GeomType

    table = collision_driver._COLLISION_FUNC
    key = (GeomType.SPHERE, GeomType.BOX)
    if table.get(key) is collision_convex.sphere_convex:
        table[key] = collision_primitive.collider(ncon=1)(
            lambda sphere, box: _sphere_box(jax.numpy, mjx_math.make_frame, sphere, box))


def _sphere_box(jnp: Any, make_frame: Any, sphere: Any, box: Any) -> tuple[Any, Any, Any]:
    """MuJoCo's ``mjraw_SphereBox`` (engine_collision_box.c) for one sphere and one box
    (``pos``, ``mat``, ``size``): the contact's distance, position and frame, its normal from the
    sphere towards the box. The distance is reported at any range; MJX's constraints take the
    contact where it is below the margin, as MuJoCo does."""
    center = box.mat.T @ (sphere.pos - box.pos)  # the sphere's center in the box's frame
    clamped = jnp.clip(center, -box.size, box.size)  # its nearest point of the box
    offset = clamped - center
    dist = jnp.linalg.norm(offset)
    outside = dist > mujoco.mjMINVAL
    normal = offset / jnp.where(outside, dist, 1.0)
    # the center inside the box: out through the nearest face, in mjraw_SphereBox's order of faces
    gaps = jnp.abs(jnp.stack([-box.size, box.size], axis=1).reshape(6) - jnp.repeat(center, 2))
    face = jnp.argmin(gaps)
    closest = gaps[face]
    nearest = jnp.zeros(3, dtype=center.dtype).at[face // 2].set(jnp.where(face % 2 == 1, -1.0, 1.0))
    radius = sphere.size[0]
    deepest = center + normal * radius
    pos = jnp.where(outside, 0.5 * clamped + 0.5 * deepest, center + nearest * ((radius - closest) / 2))
    normal = jnp.where(outside, normal, nearest)
    dist = jnp.where(outside, dist, -closest)
    return dist - radius, box.mat @ pos + box.pos, make_frame(box.mat @ normal)


@dataclass
class _Compiled:
    """One model on the JAX device: its mjx.Model, a fresh mjx.Data, the jitted env step of each
    frame skip and the jitted :func:`_select` of its data (jax.jit compiles each again per batch
    size, and keeps those)."""

    model: Any
    data: Any
    select: Any
    steps: dict[int, Any] = field(default_factory=dict)


#: The models put on the device in this process, by the digest of their MJB.
_COMPILED: dict[bytes, _Compiled] = {}


def _digest(model: mujoco.MjModel) -> bytes:
    buffer = np.empty(mujoco.mj_sizeModel(model), dtype=np.uint8)
    mujoco.mj_saveModel(model, None, buffer)
    return hashlib.sha256(buffer.tobytes()).digest()


def _compiled(jax: Any, mjx: Any, model: mujoco.MjModel) -> _Compiled:
    """``model`` on JAX's default device (put there once per process), or a ValueError where MJX
    cannot simulate it."""
    key = _digest(model)
    if key not in _COMPILED:
        device = jax.devices()[0]
        try:
            model_x = mjx.put_model(model, device=device, impl="jax")
            data = mjx.make_data(model_x, device=device, impl="jax")
        except NotImplementedError as error:
            raise ValueError(f"eval.physics=mjx cannot simulate this task's model (MJX: {error}); set "
                             "eval.physics=mujoco or eval.physics=gymnasium") from error
        log.info("eval.physics=mjx: MJX on JAX device %s:%d (%s), float64; each batch size compiles once",
                 device.platform, device.id, device.device_kind)
        _COMPILED[key] = _Compiled(model_x, data, jax.jit(lambda rows, new, old: _select(jax, rows, new, old)))
    return _COMPILED[key]


def _env_step(jax: Any, mjx: Any, model: Any, nstep: int) -> Any:
    """The jitted env step of ``model``: ``(data, qpos, qvel, ctrl, active) -> (data, stepped)``.

    Every simulation gets ``qpos``, ``qvel`` and ``ctrl`` (N, ...), then ``nstep`` mjx.steps; an
    active one that stayed stable (:data:`MAX_VALUE`) takes the result, the others keep what they
    were given (``stepped`` False)."""
    jnp = jax.numpy

    def unstable(data: Any) -> Any:
        return jnp.any(jnp.stack([jnp.any(~(jnp.abs(x) <= MAX_VALUE)) for x in (data.qpos, data.qvel, data.qacc)]))

    def substep(_: Any, carry: tuple[Any, Any]) -> tuple[Any, Any]:
        data, bad = carry
        data = mjx.step(model, data)
        return data, bad | unstable(data)

    def one(data: Any) -> tuple[Any, Any]:
        return jax.lax.fori_loop(0, nstep, substep, (data, jnp.zeros((), dtype=bool)))

    def run(data: Any, qpos: Any, qvel: Any, ctrl: Any, active: Any) -> tuple[Any, Any]:
        data = data.replace(qpos=qpos, qvel=qvel, ctrl=ctrl)
        new, bad = jax.vmap(one)(data)
        stepped = active & ~bad
        return _select(jax, stepped, new, data), stepped

    return jax.jit(run)


def _select(jax: Any, rows: Any, new: Any, old: Any) -> Any:
    """The (N, ...) leaves of ``new`` in ``rows`` (N,), those of ``old`` elsewhere."""
    jnp = jax.numpy
    return jax.tree.map(lambda a, b: jnp.where(rows.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old)


class MjxSimulations(HostStateSimulations):
    """N simulations of one model on MJX (the :class:`~diffplan_envs.mujoco_batch.Simulations` of
    ``physics="mjx"``). The state lives on the JAX device; ``qpos``, ``qvel`` and ``ctrl`` are host
    arrays sent with every step and refreshed from its result.

    A simulation that becomes unstable in a step (a qpos, qvel or qacc entry not finite or beyond
    :data:`~diffplan_envs.host_state.MAX_VALUE`, where mj_step would warn) keeps the state it had before
    the step and reports an error, as mujoco.batch does; the check runs after every substep."""

    def __init__(self, model: mujoco.MjModel, n: int) -> None:
        self._jax, self._mjx = require_mjx()
        self._compiled = _compiled(self._jax, self._mjx, model)
        jnp = self._jax.numpy
        super().__init__(model, n)
        self._fresh = self._jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), self._compiled.data)
        self._data = self._fresh

    def _reset_device(self, rows: np.ndarray) -> None:
        """The fresh mjx.Data (``mj_resetData``'s state) in ``rows``."""
        self._data = self._fresh if rows.all() else self._compiled.select(rows, self._fresh, self._data)

    def step(self, active: np.ndarray, nstep: int) -> tuple[np.ndarray, np.ndarray]:
        """``nstep`` mjx.steps of the active simulations in one jitted call (see the class for errors)."""
        compiled = self._compiled
        if nstep not in compiled.steps:
            compiled.steps[nstep] = _env_step(self._jax, self._mjx, compiled.model, nstep)
        jnp = self._jax.numpy
        self._data, stepped = compiled.steps[nstep](self._data, jnp.asarray(self.qpos), jnp.asarray(self.qvel),
                                                    jnp.asarray(self.ctrl), jnp.asarray(active))
        self.qpos[:] = np.asarray(self._data.qpos)
        self.qvel[:] = np.asarray(self._data.qvel)
        stepped = np.asarray(stepped)
        return unstable_errors("mjx", active & ~stepped), stepped
