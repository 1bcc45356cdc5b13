"""Offscreen MuJoCo renders of saved episodes, written as GIFs.

MuJoCo picks its OpenGL backend when it is first imported (``MUJOCO_GL``: ``egl`` for GPU or
Mesa EGL, ``osmesa`` for software rendering), and a failing GL driver can take the process
down with it. So rendering runs in a child process (``python -m diffplan.reporting.render``)
with the backend set in its environment; :func:`render_gifs` tries the backends in turn and
reports what went wrong instead of raising, so a report without a GL backend still gets
written (with a note).

Episode states come from ``episodes.npz`` (:mod:`diffplan.evaluation.episodes`):

- PointMaze: observation (x, y, vx, vy) is the ball's qpos and qvel; the goal marker is
  moved to the episode's goal; a fixed top-down camera sees the whole maze.
- Hopper, Walker2d, HalfCheetah: the observation is qpos without the root x, then qvel
  (:func:`diffplan_envs.dynamics.set_state_from_observation`); the root x is integrated from
  the root's forward velocity (``x += vx * dt``) so the robot moves over the floor, and a
  camera tracks the torso from the side.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_BACKENDS = ("egl", "osmesa")
"""GL backends tried in order when ``MUJOCO_GL`` is not set."""


@dataclass(frozen=True)
class RenderJob:
    """Render row ``row`` of the episodes file ``npz`` (an episode of ``task``) to the GIF ``out``."""

    task: str
    npz: str
    row: int
    out: str
    max_frames: int = 80
    width: int = 240
    height: int = 240


@dataclass
class RenderOutcome:
    """What :func:`render_gifs` did: the backend that worked (None if none did), the GIFs written
    (one per job, None where that job failed) and, on failure, why."""

    backend: str | None
    written: list[Path | None]
    error: str = ""


def renderable(task: str) -> bool:
    """True for tasks this module can render (PointMaze and the locomotion robots)."""
    from diffplan_envs import MAZE_TASKS, is_locomotion_task

    return task in MAZE_TASKS or is_locomotion_task(task)


def _backends(backends: tuple[str, ...] | None) -> tuple[str, ...]:
    if backends is not None:
        return backends
    preset = os.environ.get("MUJOCO_GL", "").strip().lower()
    return (preset,) if preset else DEFAULT_BACKENDS


_NO_BACKEND_HINT = ("install an OpenGL backend (Debian: apt-get install libegl1 libgl1-mesa-dri, or libosmesa6 "
                    "for MUJOCO_GL=osmesa) or pass --no-media")


def _run_child(jobs: list[RenderJob], backends: tuple[str, ...], timeout_s: float
               ) -> tuple[str | None, dict[str, Any] | None, str]:
    """(backend, the child's status, errors) of the first backend whose child process ran."""
    errors = []
    payload = json.dumps([asdict(j) for j in jobs])
    for backend in backends:
        env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend, "OMP_NUM_THREADS": "1"}
        try:
            proc = subprocess.run([sys.executable, "-m", "diffplan.reporting.render"], input=payload, text=True,
                                  capture_output=True, env=env, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            errors.append(f"MUJOCO_GL={backend}: timed out after {timeout_s:.0f} s")
            continue
        status = _last_json_line(proc.stdout)
        if proc.returncode == 0 and status is not None:
            return backend, status, ""
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        errors.append(f"MUJOCO_GL={backend}: {tail[0][:300]}")
    return None, None, "; ".join(errors) + f"; {_NO_BACKEND_HINT}"


def available_backend(backends: tuple[str, ...] | None = None, timeout_s: float = 120.0) -> str | None:
    """The first GL backend (``$MUJOCO_GL`` or :data:`DEFAULT_BACKENDS`) that renders here, else None."""
    backend, _, _ = _run_child([], _backends(backends), timeout_s)
    return backend


def render_gifs(jobs: list[RenderJob], *, backends: tuple[str, ...] | None = None, timeout_s: float = 600.0
                ) -> RenderOutcome:
    """Render every job in a child process, trying GL backends until one works.

    ``backends`` defaults to ``$MUJOCO_GL`` alone when set, else :data:`DEFAULT_BACKENDS`.
    Never raises for a rendering problem: the outcome says what failed.
    """
    if not jobs:
        return RenderOutcome(None, [])
    backend, status, error = _run_child(jobs, _backends(backends), timeout_s)
    if status is None:
        return RenderOutcome(None, [None] * len(jobs), error)
    written = [Path(p) if p else None for p in status["written"]]
    return RenderOutcome(backend, written, "; ".join(e for e in status["errors"] if e))


def _last_json_line(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "written" in value:
            return value
    return None


# --- the child process -------------------------------------------------------------------------


def _frame_rows(length: int, max_frames: int) -> tuple[np.ndarray, int]:
    stride = max(1, math.ceil((length + 1) / max_frames))
    return np.arange(0, length + 1, stride), stride


@dataclass
class _Scene:
    """An environment's MuJoCo model and data, a renderer and a camera (reused across jobs)."""

    env: Any
    model: Any
    data: Any
    renderer: Any
    camera: Any
    dt: float
    target_site: int | None = None

    def close(self) -> None:
        self.renderer.close()
        self.env.close()


_SCENES: dict[tuple[str, int, int], _Scene] = {}


def _scene(task: str, height: int, width: int) -> _Scene:
    """The cached scene of ``task`` at this frame size (building a renderer costs ~0.5 s)."""
    key = (task, height, width)
    if key not in _SCENES:
        _SCENES[key] = _build_scene(task, height, width)
    return _SCENES[key]


def _build_scene(task: str, height: int, width: int) -> _Scene:
    import mujoco
    from diffplan_envs import MAZE_TASKS, geometry_from_env, get_locomotion_task, make_locomotion_env, make_maze_env

    camera = mujoco.MjvCamera()
    if task in MAZE_TASKS:
        env = make_maze_env(task)
        env.reset(seed=0)
        point = env.unwrapped.point_env  # type: ignore[attr-defined]
        geometry = geometry_from_env(env)
        camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        camera.lookat[:] = (0.0, 0.0, 0.0)
        camera.distance = 1.25 * max(geometry.n_rows, geometry.n_cols) * geometry.scaling
        camera.elevation, camera.azimuth = -90.0, 90.0  # top-down, x to the right, y up
        return _Scene(env, point.model, point.data, mujoco.Renderer(point.model, height, width), camera,
                      float(point.dt), int(env.unwrapped.target_site_id))  # type: ignore[attr-defined]
    env = make_locomotion_env(get_locomotion_task(task).robot)
    env.reset(seed=0)
    unwrapped = env.unwrapped
    model, data = unwrapped.model, unwrapped.data  # type: ignore[attr-defined]
    camera.type = mujoco.mjtCamera.mjCAMERA_TRACKING
    camera.trackbodyid = 1  # the torso
    camera.distance, camera.elevation, camera.azimuth = 4.0, -15.0, 90.0  # from the side
    return _Scene(env, model, data, mujoco.Renderer(model, height, width), camera,
                  float(unwrapped.dt))  # type: ignore[attr-defined]


def _states(scene: _Scene, job: RenderJob, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(qpos, qvel) per step of an episode's observations."""
    if scene.target_site is not None:  # PointMaze: (x, y, vx, vy)
        return observations[:, :2], observations[:, 2:4]
    nq, nv = scene.model.nq, scene.model.nv
    if observations.shape[1] != nq - 1 + nv:
        raise ValueError(f"{job.npz}: observations have {observations.shape[1]} entries, {job.task} needs "
                         f"nq - 1 + nv = {nq - 1 + nv}")
    root_x = np.concatenate([[0.0], np.cumsum(observations[:-1, nq - 1] * scene.dt)])
    return np.concatenate([root_x[:, None], observations[:, : nq - 1]], axis=1), observations[:, nq - 1:]


def render_frames(job: RenderJob, observations: np.ndarray, goal: np.ndarray) -> tuple[list[np.ndarray], float]:
    """(RGB frames, seconds between frames) of one episode (at most ``job.max_frames`` frames)."""
    import mujoco

    scene = _scene(job.task, job.height, job.width)
    if scene.target_site is not None:
        scene.model.site_pos[scene.target_site, :2] = goal[:2]
    qpos, qvel = _states(scene, job, observations)
    rows, stride = _frame_rows(len(observations) - 1, job.max_frames)
    frames = []
    for t in rows:
        scene.data.qpos[:] = qpos[t]
        scene.data.qvel[:] = qvel[t]
        mujoco.mj_forward(scene.model, scene.data)
        scene.renderer.update_scene(scene.data, camera=scene.camera)
        frames.append(scene.renderer.render().copy())
    return frames, stride * scene.dt


def write_gif(frames: list[np.ndarray], path: str | Path, frame_seconds: float) -> Path:
    """Write RGB frames (H, W, 3) uint8 as a looping GIF (at least 20 ms per frame), every frame
    on one 48-colour palette taken from the middle frame (textured floors otherwise cost megabytes)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    palette = rgb[len(rgb) // 2].quantize(colors=48, method=Image.Quantize.MEDIANCUT)
    images = [image.quantize(palette=palette, dither=Image.Dither.NONE) for image in rgb]
    duration = max(20, int(round(1000 * frame_seconds / 10)) * 10)
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0, optimize=True)
    return path


def render_job(job: RenderJob) -> Path:
    """Render one job in this process (``MUJOCO_GL`` must already be set) and write its GIF."""
    from diffplan.evaluation.episodes import load_episodes

    saved = load_episodes(job.npz)
    frames, seconds = render_frames(job, saved.executed(job.row), saved.goals[job.row])
    return write_gif(frames, job.out, seconds)


_PROBE_XML = '<mujoco><worldbody><light pos="0 0 2"/><geom type="sphere" size="0.1"/></worldbody></mujoco>'


def probe_backend() -> None:
    """Render one tiny frame in this process; raises when the GL backend does not work."""
    import mujoco

    model = mujoco.MjModel.from_xml_string(_PROBE_XML)
    data = mujoco.MjData(model)
    with mujoco.Renderer(model, 16, 16) as renderer:
        mujoco.mj_forward(model, data)
        renderer.update_scene(data)
        renderer.render()


def _main() -> int:
    jobs = [RenderJob(**j) for j in json.loads(sys.stdin.read())]
    probe_backend()  # a broken backend fails the whole process: the parent tries the next one
    written: list[str | None] = []
    errors: list[str] = []
    for job in jobs:
        try:
            written.append(str(render_job(job)))
            errors.append("")
        except Exception as e:  # one bad episode must not cost the others
            written.append(None)
            errors.append(f"{Path(job.npz).name} row {job.row}: {type(e).__name__}: {e}")
    for scene in _SCENES.values():
        scene.close()
    print(json.dumps({"written": written, "errors": errors}))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
