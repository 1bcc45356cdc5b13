"""D4RL-style locomotion datasets from a stable-baselines3 agent, resumable, into HDF5.

One agent per robot produces every level (D4RL's recipe, with the algorithm a setting):

- ``random``: the untrained agent's stochastic policy.
- ``medium``: the agent stopped when its evaluated return first reaches
  ``medium_score`` (a D4RL-normalized score; D4RL stopped at about a third of the expert).
- ``medium-replay``: every transition the agent experienced in training up to that stop
  (for SAC that is its replay buffer; for PPO, its rollouts).
- ``expert``: the agent after ``expert_steps`` environment steps in total (``expert_snapshot=best``:
  the best-evaluated checkpoint after the medium snapshot up to then).
- ``medium-expert``: the medium and expert files concatenated.

Training is checkpointed every ``eval_every`` steps under ``agent_dir`` (agent zip,
observation-normalization statistics, the transitions recorded so far, and a JSON state
written last); calling again continues from the last checkpoint. A level's file is
collected in lockstep groups of ``n_envs`` episodes whose randomness is seeded per group,
checkpointed to ``<file>.partial/``, so an interrupted collection continues with the same
result; the final file is written atomically.

File layout (D4RL): observations, actions, rewards, next_observations, terminals (true
termination only), timeouts (the 1000-step cut, and the cut at the dataset's end),
infos/qpos, infos/qvel (float64, the state before the step), and a root ``metadata``
attribute with the agent, its training steps, seed, evaluated return, the dataset's mean
return and D4RL's reference scores.
"""

from __future__ import annotations

import datetime
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from tqdm.auto import tqdm

from diffplan.config import AgentConfig
from diffplan.extras import require
from diffplan.utils import atomic_path
from diffplan_envs.locomotion import LEVELS, ROBOTS, Robot, make_locomotion_env, mujoco_state
from diffplan_envs.reference_scores import normalized_score

logger = logging.getLogger(__name__)

_STATE = "state.json"
#: collect.agents.<robot>.expert_snapshot: the agent at expert_steps, or its best-evaluated checkpoint after medium.
EXPERT_SNAPSHOTS = ("last", "best")
_ARRAY_KEYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts",
               "infos/qpos", "infos/qvel")


#: How the data-generating agent is trained: the ``collect.agents.<robot>`` config section.
AgentRecipe = AgentConfig


# ----------------------------------------------------------------------------- recording


class TransitionRecorder(gymnasium.Wrapper):  # type: ignore[type-arg]
    """Records raw transitions (before any vector-env normalization) episode by episode.

    Finished episodes accumulate in :attr:`finished` as dicts of arrays in the D4RL keys.
    """

    def __init__(self, env: gymnasium.Env) -> None:  # type: ignore[type-arg]
        super().__init__(env)
        self.finished: list[dict[str, np.ndarray]] = []
        self._current: dict[str, list[Any]] = _empty_episode()
        self._obs: np.ndarray | None = None

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._current = _empty_episode()
        self._obs = np.asarray(obs, dtype=np.float64).copy()
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        qpos, qvel = mujoco_state(self.env)
        obs, reward, terminated, truncated, info = self.env.step(action)
        episode = self._current
        episode["observations"].append(self._obs)
        episode["actions"].append(np.asarray(action, dtype=np.float64).copy())
        episode["rewards"].append(float(reward))
        episode["next_observations"].append(np.asarray(obs, dtype=np.float64).copy())
        episode["terminals"].append(bool(terminated))
        episode["timeouts"].append(bool(truncated and not terminated))
        episode["infos/qpos"].append(qpos)
        episode["infos/qvel"].append(qvel)
        self._obs = np.asarray(obs, dtype=np.float64).copy()
        if terminated or truncated:
            self.finished.append(_stack_episode(episode))
            self._current = _empty_episode()
        return obs, float(reward), bool(terminated), bool(truncated), info

    def pop_finished(self) -> list[dict[str, np.ndarray]]:
        """The episodes finished since the last call (and forget them)."""
        out, self.finished = self.finished, []
        return out


def _empty_episode() -> dict[str, list[Any]]:
    return {key: [] for key in _ARRAY_KEYS}


def _stack_episode(episode: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    return {key: np.asarray(values) for key, values in episode.items()}


def concatenate(episodes: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Episodes (dicts of arrays in the D4RL keys) joined into one D4RL array dict."""
    if not episodes:
        raise ValueError("no episodes to concatenate")
    out = {key: np.concatenate([e[key] for e in episodes]) for key in _ARRAY_KEYS}
    for key in ("observations", "actions", "rewards", "next_observations"):
        out[key] = out[key].astype(np.float32)
    return out


def episode_returns(data: dict[str, np.ndarray]) -> np.ndarray:
    """Returns of the episodes of a D4RL array dict (episodes end at terminals or timeouts)."""
    ends = np.flatnonzero(data["terminals"] | data["timeouts"])
    sums: Any = np.add.reduceat(data["rewards"].astype(np.float64), np.r_[0, ends[:-1] + 1]) if len(ends) else []
    return np.asarray(sums, dtype=np.float64)


# ----------------------------------------------------------------------------- agents


def _sb3() -> Any:
    """stable-baselines3, or an error naming the extra that installs it."""
    return require("stable_baselines3", "collecting locomotion data with an SB3 agent (collect.agents)")


def _algo_class(name: str) -> Any:
    sb3 = _sb3()
    classes = {"ppo": sb3.PPO, "sac": sb3.SAC, "td3": sb3.TD3, "a2c": sb3.A2C}
    if name.lower() not in classes:
        raise ValueError(f"collect.agent.algo={name!r} is not supported; use one of {sorted(classes)}")
    return classes[name.lower()]


def _policy_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Turn config-friendly values (``activation_fn: relu``) into what SB3 expects."""
    out = dict(kwargs)
    policy = dict(out.get("policy_kwargs") or {})
    act = policy.get("activation_fn")
    if isinstance(act, str):
        table = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "elu": torch.nn.ELU}
        if act.lower() not in table:
            raise ValueError(f"activation_fn={act!r} is not supported; use one of {sorted(table)}")
        policy["activation_fn"] = table[act.lower()]
    if policy:
        out["policy_kwargs"] = policy
    return out


@dataclass
class AgentState:
    """Progress of the agent pipeline, saved as JSON after every checkpoint."""

    steps: int = 0
    phase: str = "medium"  # medium -> expert -> done
    evals: list[dict[str, float]] = field(default_factory=list)
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)
    replay_chunks: int = 0
    replay_steps: int = 0
    # expert_snapshot=best: the best evaluation since the medium snapshot (its checkpoint: the snapshot it names,
    # expert_best_<steps>).
    best_expert: dict[str, Any] | None = None


class AgentPipeline:
    """Trains one robot's agent through the random / medium / expert snapshots, resumably.

    Files under ``agent_dir``: ``state.json``; ``latest.zip`` + ``latest_vecnorm.pkl`` (the
    training checkpoint); ``<level>.zip`` + ``<level>_vecnorm.pkl`` (frozen snapshots);
    ``expert_best_<steps>.zip`` + its statistics (``expert_snapshot=best``: the best evaluation so far);
    ``replay/chunk_NNNNN.npz`` (transitions recorded before the medium snapshot).
    """

    def __init__(self, robot: Robot, recipe: AgentRecipe, agent_dir: str | Path, progress: bool = True) -> None:
        if recipe.eval_every < 1 or recipe.n_envs < 1 or recipe.eval_episodes < 1:
            raise ValueError("collect.agent.eval_every, n_envs and eval_episodes must be >= 1")
        if recipe.expert_snapshot not in EXPERT_SNAPSHOTS:
            raise ValueError(f"collect.agents.{robot.name}.expert_snapshot={recipe.expert_snapshot!r} is not one of "
                             f"{list(EXPERT_SNAPSHOTS)}")
        self.robot = robot
        self.recipe = recipe
        self.dir = Path(agent_dir)
        self.progress = progress
        self.state = self._load_state()

    # -- persistence
    def _load_state(self) -> AgentState:
        path = self.dir / _STATE
        if not path.exists():
            return AgentState()
        saved = json.loads(path.read_text())
        recipe = saved.pop("recipe", None) or {}
        current = _jsonable(asdict(self.recipe))
        # Stopping points may move while they are still ahead: expert_steps always, the medium
        # target until the medium snapshot is taken.
        movable = {"expert_steps"}
        if "medium" not in saved.get("snapshots", {}):
            movable |= {"medium_score", "medium_max_steps"}
        if "expert" not in saved.get("snapshots", {}):
            movable |= {"expert_snapshot"}
        defaults = _jsonable(asdict(AgentRecipe()))  # settings added since a recipe was written: their defaults
        changed = sorted(k for k in current if k not in movable and recipe.get(k, defaults.get(k)) != current[k])
        if recipe and changed:
            raise ValueError(
                f"{path} was written with a different agent recipe (changed: {changed}); restore the "
                "collect.agent settings or use another collect.agent_dir"
            )
        best = saved.get("best_expert")
        if recipe.get("expert_snapshot", defaults["expert_snapshot"]) != current["expert_snapshot"] or \
                (best is not None and "snapshot" not in best):
            # The pick changed, or a state from before snapshots were named: compared afresh from here on.
            saved["best_expert"] = None
        return AgentState(**saved)

    def _save_state(self) -> None:
        payload = {**asdict(self.state), "recipe": _jsonable(asdict(self.recipe))}
        _write_text_atomic(self.dir / _STATE, json.dumps(payload, indent=1))

    def snapshot_paths(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.zip", self.dir / f"{name}_vecnorm.pkl"

    def has_snapshot(self, name: str) -> bool:
        return name in self.state.snapshots

    # -- environments
    def _make_vec_env(self, seed: int) -> Any:
        _sb3()
        from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

        def factory(i: int) -> Callable[[], gymnasium.Env]:  # type: ignore[type-arg]
            def make() -> gymnasium.Env:  # type: ignore[type-arg]
                from stable_baselines3.common.monitor import Monitor

                return Monitor(TransitionRecorder(make_locomotion_env(self.robot)))

            return make

        venv: Any = DummyVecEnv([factory(i) for i in range(self.recipe.n_envs)])
        venv.seed(seed)
        if self.recipe.normalize_obs:
            on_policy = self.recipe.algo.lower() in ("ppo", "a2c")
            venv = VecNormalize(venv, norm_obs=True, norm_reward=on_policy,
                                gamma=float(self.recipe.algo_kwargs.get("gamma", 0.99)))
        return venv

    def _recorders(self, venv: Any) -> list[TransitionRecorder]:
        base = venv.venv if hasattr(venv, "venv") else venv
        return [env.env for env in base.envs]  # Monitor(TransitionRecorder(...))

    def _build(self) -> tuple[Any, Any]:
        _sb3()
        from stable_baselines3.common.vec_env import VecNormalize

        algo = _algo_class(self.recipe.algo)
        venv = self._make_vec_env(self.recipe.seed + self.state.steps)
        latest, latest_norm = self.snapshot_paths("latest")
        if self.state.steps > 0 and latest.exists():
            if self.recipe.normalize_obs:
                venv = VecNormalize.load(str(latest_norm), venv.venv)
                venv.training = True
            model = algo.load(str(latest), env=venv, device="cpu")
            buffer = self.dir / "latest_replay_buffer.pkl"
            if hasattr(model, "load_replay_buffer") and buffer.exists():
                model.load_replay_buffer(str(buffer))
            logger.info("resumed agent %s at %d steps", latest, self.state.steps)
        else:
            model = algo("MlpPolicy", venv, seed=self.recipe.seed, device="cpu", verbose=0,
                         **_policy_kwargs(self.recipe.algo_kwargs))
        return model, venv

    def _save_model(self, model: Any, venv: Any, name: str) -> None:
        # SB3 adds its suffix only to a path without one; atomic_path's temporary names have one.
        path, norm_path = self.snapshot_paths(name)
        with atomic_path(path) as tmp:
            model.save(str(tmp))
        if name == "latest" and hasattr(model, "save_replay_buffer"):  # off-policy agents resume with it
            with atomic_path(self.dir / "latest_replay_buffer.pkl") as tmp:
                model.save_replay_buffer(str(tmp))
        if self.recipe.normalize_obs:
            with atomic_path(norm_path) as tmp:
                venv.save(str(tmp))

    # -- the loop
    def run(self, until: str = "expert") -> AgentState:
        """Train until snapshot ``until`` (random, medium or expert) exists, or until every snapshot
        the recipe asks for exists; returns the state."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.state.phase == "done" and not self.has_snapshot("expert") and self.recipe.expert_steps > 0:
            self.state.phase = "expert"  # the expert budget was raised after an earlier run stopped
        if self.state.phase == "done" or self.has_snapshot(until):
            return self.state
        model, venv = self._build()
        recorders = self._recorders(venv)
        if not self.has_snapshot("random"):
            self._save_model(model, venv, "random")
            self.state.snapshots["random"] = {"steps": 0}
            self._save_state()
            if until == "random":
                venv.close()
                return self.state
        total = self.recipe.expert_steps or self.recipe.medium_max_steps
        bar = tqdm(total=total, initial=min(self.state.steps, total), desc=f"agent {self.robot.name}",
                   unit="step", disable=not self.progress)
        try:
            while self.state.phase != "done" and not self.has_snapshot(until):
                before = model.num_timesteps
                model.learn(self.recipe.eval_every, reset_num_timesteps=False)
                self.state.steps = int(model.num_timesteps)
                bar.update(min(self.state.steps, total) - min(before, total))
                if self.state.phase == "medium":
                    self._flush_replay(recorders)
                else:
                    for rec in recorders:
                        rec.pop_finished()
                mean_return = self._evaluate(model, venv)
                score = float(normalized_score(mean_return, *self.robot.ref_scores))
                self.state.evals.append({"steps": self.state.steps, "return": mean_return, "score": score})
                bar.set_postfix(ret=f"{mean_return:.0f}", score=f"{score:.1f}", phase=self.state.phase)
                logger.info("%s agent: %d steps, eval return %.1f (score %.1f)", self.robot.name,
                            self.state.steps, mean_return, score)
                self._advance(model, venv, mean_return, score)
                self._save_model(model, venv, "latest")
                self._save_state()
                self._drop_stale_best()
        finally:
            bar.close()
            venv.close()
        return self.state

    def _advance(self, model: Any, venv: Any, mean_return: float, score: float) -> None:
        steps = self.state.steps
        reached = score >= self.recipe.medium_score
        if self.state.phase == "medium" and (reached or steps >= self.recipe.medium_max_steps):
            self._save_model(model, venv, "medium")
            self.state.snapshots["medium"] = {"steps": steps, "eval_return": mean_return, "eval_score": score,
                                              "reached_target": reached}
            # Past an expert budget already (medium reached late, or medium_max_steps >= expert_steps):
            # the expert snapshot is taken just below, at this step, instead of ending without one.
            self.state.phase = "expert" if self.recipe.expert_steps > 0 else "done"
        if self.state.phase != "expert":
            return
        evaluated = {"steps": steps, "eval_return": mean_return, "eval_score": score}
        best = self.state.best_expert
        after_medium = steps > self.state.snapshots["medium"]["steps"]
        if self.recipe.expert_snapshot == "best" and after_medium and (best is None or score > best["eval_score"]):
            # A checkpoint per improvement, named by its step: the state names the one it scored (a crash before
            # the state is saved leaves a file no state names, never a named file of another score).
            name = f"expert_best_{steps}"
            self._save_model(model, venv, name)
            # since: the first evaluation the pick saw (a run resumed with expert_snapshot=best sees only later ones)
            self.state.best_expert = best = {**evaluated, "since": steps if best is None else best["since"],
                                             "snapshot": name}
        if steps >= self.recipe.expert_steps:
            if self.recipe.expert_snapshot == "best" and best is not None:
                self._copy_snapshot(best["snapshot"], "expert")
                self.state.snapshots["expert"] = {key: best[key] for key in evaluated} | {
                    "picked": "best", "evaluated_from": best["since"], "evaluated_to": steps}
            else:
                self._save_model(model, venv, "expert")
                # expert_snapshot=last, or best with no evaluation after the medium snapshot (medium taken at or
                # past expert_steps): the agent at this step.
                self.state.snapshots["expert"] = evaluated | {"picked": "last"}
            self.state.phase = "done"

    def _copy_snapshot(self, source: str, target: str) -> None:
        """Copy snapshot ``source``'s files to ``target`` (atomically, file by file).

        Raises:
            FileNotFoundError: a file of ``source`` is missing (the agent directory was changed by hand).
        """
        pairs = list(zip(self.snapshot_paths(source), self.snapshot_paths(target), strict=True))
        for from_path, to_path in pairs if self.recipe.normalize_obs else pairs[:1]:
            if not from_path.exists():
                raise FileNotFoundError(f"{from_path} is missing: the agent's {source} snapshot cannot become its "
                                        f"{target}; set collect.agents.{self.robot.name}.expert_snapshot=last (the "
                                        "agent at expert_steps) or restore the file")
            with atomic_path(to_path) as tmp:
                shutil.copyfile(from_path, tmp)

    def _drop_stale_best(self) -> None:
        """Remove the best-expert checkpoints the state no longer names."""
        named = (self.state.best_expert or {}).get("snapshot")
        keep = set(self.snapshot_paths(named)) if named else set()
        for path in self.dir.glob("expert_best_[0-9]*"):
            if path not in keep:
                path.unlink(missing_ok=True)

    def _flush_replay(self, recorders: list[TransitionRecorder]) -> None:
        episodes = [ep for rec in recorders for ep in rec.pop_finished()]
        if not episodes:
            return
        chunk_dir = self.dir / "replay"
        chunk_dir.mkdir(exist_ok=True)
        data = concatenate(episodes)
        _write_npz_atomic(chunk_dir / f"chunk_{self.state.replay_chunks:05d}.npz", data)
        self.state.replay_chunks += 1
        self.state.replay_steps += len(data["rewards"])

    def replay_data(self) -> dict[str, np.ndarray]:
        """All transitions recorded before the medium snapshot, in order."""
        return _read_chunks([self.dir / "replay" / f"chunk_{i:05d}.npz" for i in range(self.state.replay_chunks)])

    def _evaluate(self, model: Any, venv: Any) -> float:
        policy = SnapshotPolicy(model, venv if self.recipe.normalize_obs else None)
        data = rollout_episodes(self.robot, policy, n_episodes=self.recipe.eval_episodes,
                                first_seed=10_000_000 + self.recipe.seed, n_envs=min(10, self.recipe.eval_episodes),
                                action_seed=self.recipe.seed)
        return float(np.mean(episode_returns(concatenate(data))))

    def load_policy(self, name: str) -> SnapshotPolicy:
        """The frozen stochastic policy of snapshot ``name`` (random, medium, expert)."""
        _sb3()
        from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

        if not self.has_snapshot(name):
            raise ValueError(f"{self.dir}: no {name!r} snapshot yet; run the agent pipeline first")
        path, norm_path = self.snapshot_paths(name)
        model = _algo_class(self.recipe.algo).load(str(path), device="cpu")
        norm = None
        if self.recipe.normalize_obs:
            dummy = DummyVecEnv([lambda: make_locomotion_env(self.robot)])
            norm = VecNormalize.load(str(norm_path), dummy)
            norm.training = False
        return SnapshotPolicy(model, norm)


class SnapshotPolicy:
    """A stochastic SB3 policy with frozen observation normalization: raw obs -> action."""

    def __init__(self, model: Any, vecnorm: Any | None) -> None:
        self.model = model
        self.vecnorm = vecnorm

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        obs = observations
        if self.vecnorm is not None:
            obs = self.vecnorm.normalize_obs(observations)
        actions, _ = self.model.predict(obs.astype(np.float32), deterministic=False)
        return np.asarray(actions, dtype=np.float64)


# ----------------------------------------------------------------------------- rollouts


def rollout_episodes(
    robot: Robot,
    policy: Callable[[np.ndarray], np.ndarray],
    *,
    n_episodes: int,
    first_seed: int,
    n_envs: int,
    action_seed: int,
    first_episode: int = 0,
) -> list[dict[str, np.ndarray]]:
    """Run episodes ``first_episode ..`` in lockstep groups of ``n_envs``; episode i resets with
    seed ``first_seed + i`` and each group's action noise is seeded from (action_seed, group)."""
    episodes: list[dict[str, np.ndarray]] = []
    for group_start in range(first_episode, first_episode + n_episodes, n_envs):
        count = min(n_envs, first_episode + n_episodes - group_start)
        episodes.extend(_rollout_group(robot, policy, range(group_start, group_start + count), first_seed,
                                       action_seed))
    return episodes


def _rollout_group(
    robot: Robot, policy: Callable[[np.ndarray], np.ndarray], ids: range, first_seed: int, action_seed: int
) -> list[dict[str, np.ndarray]]:
    # SB3 policies sample from torch's global RNG: seed it for this group, and restore the caller's
    # state afterwards, so an evaluation inside AgentPipeline.run does not reset the agent's
    # training RNG to the same state after every evaluation.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(action_seed * 1_000_003 + ids.start)
        return _rollout_group_seeded(robot, policy, ids, first_seed)


def _rollout_group_seeded(
    robot: Robot, policy: Callable[[np.ndarray], np.ndarray], ids: range, first_seed: int
) -> list[dict[str, np.ndarray]]:
    envs = [TransitionRecorder(make_locomotion_env(robot)) for _ in ids]
    obs = np.stack([env.reset(seed=first_seed + i)[0] for env, i in zip(envs, ids, strict=True)])
    active = np.ones(len(envs), dtype=bool)
    low, high = envs[0].action_space.low, envs[0].action_space.high  # type: ignore[attr-defined]
    while active.any():
        actions = np.clip(policy(obs), low, high)
        for j in np.flatnonzero(active):
            obs[j], _, terminated, truncated, _ = envs[j].step(actions[j])
            if terminated or truncated:
                active[j] = False
    out = [env.pop_finished()[0] for env in envs]
    for env in envs:
        env.close()
    return out


def collect_with_policy(
    robot: Robot,
    policy: Callable[[np.ndarray], np.ndarray],
    path: Path,
    *,
    n_steps: int,
    seed: int,
    n_envs: int,
    metadata: dict[str, Any],
    progress: bool = True,
    groups_per_chunk: int = 8,
) -> Path:
    """Collect ``n_steps`` transitions of ``policy`` into ``path``, resumably (see module doc)."""
    partial = path.with_name(path.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    args = {"n_steps": n_steps, "seed": seed, "n_envs": n_envs, "robot": robot.name}
    args_file = partial / "args.json"
    if args_file.exists() and json.loads(args_file.read_text()) != args:
        raise ValueError(
            f"{partial} holds a collection with other settings ({args_file.read_text()}); delete it or restore "
            f"the settings {args}"
        )
    args_file.write_text(json.dumps(args))
    chunks = sorted(partial.glob("chunk_*.npz"))
    done_steps, next_episode = 0, 0
    for chunk in chunks:
        with np.load(chunk) as f:
            done_steps += len(f["rewards"])
            next_episode = int(f["next_episode"])
    bar = tqdm(total=n_steps, initial=min(done_steps, n_steps), desc=f"collect {path.name}", unit="step",
               disable=not progress)
    index = len(chunks)
    while done_steps < n_steps:
        count = n_envs * groups_per_chunk
        episodes = rollout_episodes(robot, policy, n_episodes=count, first_seed=seed, n_envs=n_envs,
                                    action_seed=seed, first_episode=next_episode)
        data = concatenate(episodes)
        _write_npz_atomic(partial / f"chunk_{index:05d}.npz", {**data, "next_episode": np.array(next_episode + count)})
        index += 1
        next_episode += count
        done_steps += len(data["rewards"])
        bar.update(min(done_steps, n_steps) - bar.n)
    bar.close()
    data = _read_chunks(sorted(partial.glob("chunk_*.npz")))
    write_dataset(path, truncate(data, n_steps), metadata)
    shutil.rmtree(partial)
    return path


def _write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save arrays (keys may contain ``/``) to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **{key.replace("/", "__"): value for key, value in arrays.items()})  # type: ignore[arg-type]


def _read_chunks(chunks: list[Path]) -> dict[str, np.ndarray]:
    parts = []
    for chunk in chunks:
        with np.load(chunk) as f:
            parts.append({key.replace("__", "/"): f[key] for key in f.files if key != "next_episode"})
    return {key: np.concatenate([p[key] for p in parts]) for key in _ARRAY_KEYS}


def truncate(data: dict[str, np.ndarray], n_steps: int) -> dict[str, np.ndarray]:
    """The first ``n_steps`` transitions; a cut episode ends with ``timeouts = True``."""
    out = {key: value[:n_steps].copy() for key, value in data.items()}
    if len(out["rewards"]) and not (out["terminals"][-1] or out["timeouts"][-1]):
        out["timeouts"][-1] = True
    return out


def write_dataset(path: Path, data: dict[str, np.ndarray], metadata: dict[str, Any]) -> Path:
    """Write a D4RL-layout file with the dataset's own return statistics added to ``metadata``."""
    from diffplan.data.hdf5 import write_hdf5

    returns = episode_returns(data)
    ref = ROBOTS[metadata["robot"]].ref_scores  # every episode ends at a terminal or a timeout
    stats = {
        "n_steps": len(data["rewards"]),
        "n_episodes": len(returns),
        "mean_return": float(np.mean(returns)) if len(returns) else float("nan"),
        "mean_normalized_score": float(np.mean(normalized_score(returns, *ref))) if len(returns) else float("nan"),
        "n_terminals": int(data["terminals"].sum()),
        "n_timeouts": int(data["timeouts"].sum()),
    }
    meta = {
        **metadata,
        "dataset_stats": stats,
        "ref_scores": {"method": "d4rl", "min": ref.ref_min, "max": ref.ref_max,
                       "note": "D4RL reference returns (d4rl/infos.py), not Minari-style"},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "package_versions": {name: _version(name) for name in ("gymnasium", "mujoco", "stable_baselines3", "torch")},
    }
    write_hdf5(path, data, meta)
    logger.info("wrote %s: %d steps, %d episodes, mean return %.1f (D4RL score %.1f)", path, stats["n_steps"],
                stats["n_episodes"], stats["mean_return"], stats["mean_normalized_score"])
    return path


def _version(name: str) -> str:
    try:
        return importlib_metadata.version(name.replace("_", "-"))
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# ----------------------------------------------------------------------------- entry point


def dataset_path(data_dir: str | Path, robot: Robot, level: str) -> Path:
    return Path(data_dir) / f"{robot.name}-{level}.hdf5"


def collect_locomotion_datasets(
    robot: Robot,
    levels: list[str],
    *,
    recipe: AgentRecipe,
    agent_dir: str | Path,
    data_dir: str | Path,
    n_steps: int = 1_000_000,
    seed: int = 123,
    n_envs: int = 10,
    progress: bool = True,
) -> dict[str, Path]:
    """Train (or resume) the robot's agent as far as ``levels`` need, then write each level's
    file ``<data_dir>/<robot>-<level>.hdf5``; finished files are kept as they are."""
    unknown = [level for level in levels if level not in LEVELS]
    if unknown:
        raise ValueError(f"collect.levels has unknown level(s) {unknown}; use some of {list(LEVELS)}")
    needs_expert = any(level in ("expert", "medium-expert") for level in levels)
    if needs_expert and recipe.expert_steps <= 0:
        raise ValueError("levels expert / medium-expert need collect.agent.expert_steps > 0 (the expert's budget)")
    pipeline = AgentPipeline(robot, recipe, agent_dir, progress=progress)
    todo = [level for level in levels if not dataset_path(data_dir, robot, level).exists()]
    if not todo:
        return {level: dataset_path(data_dir, robot, level) for level in levels}
    out: dict[str, Path] = {}
    for level in _ordered(levels):
        path = dataset_path(data_dir, robot, level)
        out[level] = path
        if path.exists():
            logger.info("%s exists; skipping", path)
            continue
        state = pipeline.run(until=_SNAPSHOT_NEEDED[level])
        base = {"task": f"{robot.name}-{level}", "robot": robot.name, "env_id": robot.env_id, "level": level,
                "agent": {"recipe": _jsonable(asdict(recipe)), "agent_dir": str(agent_dir),
                          "evals": state.evals}, "collection_seed": seed}
        if level in ("random", "medium", "expert"):
            snap = state.snapshots[level]
            meta = {**base, "policy": {"snapshot": level, **snap}}
            collect_with_policy(robot, pipeline.load_policy(level), path, n_steps=n_steps, seed=seed, n_envs=n_envs,
                                metadata=meta, progress=progress)
        elif level == "medium-replay":
            meta = {**base, "policy": {"snapshot": "replay up to medium", **state.snapshots["medium"]}}
            write_dataset(path, pipeline.replay_data(), meta)
        else:  # medium-expert: the two files joined
            parts = [_read_level(dataset_path(data_dir, robot, name)) for name in ("medium", "expert")]
            joined = {key: np.concatenate([p[key] for p in parts]) for key in _ARRAY_KEYS}
            write_dataset(path, joined, {**base, "policy": {"snapshot": "medium + expert"}})
    return out


#: The agent snapshot each level needs before it can be written.
_SNAPSHOT_NEEDED = {"random": "random", "medium": "medium", "medium-replay": "medium", "expert": "expert",
                    "medium-expert": "expert"}


def _ordered(levels: list[str]) -> Iterator[str]:
    """Levels in dependency order (medium-expert after medium and expert)."""
    chosen = set(levels)
    if "medium-expert" in chosen:
        chosen |= {"medium", "expert"}
    return (level for level in LEVELS if level in chosen)


def _read_level(path: Path) -> dict[str, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as handle:
        return {key: handle[key][()] for key in _ARRAY_KEYS}
