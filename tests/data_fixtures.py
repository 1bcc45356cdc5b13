"""A tiny dataset shared by the training tests: three 30-step episodes of a smooth random walk."""

from __future__ import annotations

import numpy as np
import torch

from diffplan.data import Episodes

OBS_DIM, ACT_DIM = 4, 2


def random_walk_episodes() -> Episodes:
    """90 rows: positions and velocities (4) driven by uniform actions (2), time-outs every 30 steps."""
    rng = np.random.default_rng(0)
    n_rows = 90
    actions = rng.uniform(-1, 1, (n_rows, ACT_DIM)).astype(np.float32)
    velocity = np.cumsum(actions, axis=0) * 0.1
    position = np.cumsum(velocity, axis=0) * 0.1
    timeouts = np.zeros(n_rows, dtype=bool)
    timeouts[[29, 59, 89]] = True
    return Episodes.from_arrays(
        observations=np.concatenate([position, velocity], axis=1).astype(np.float32),
        actions=actions,
        rewards=rng.uniform(0, 1, n_rows).astype(np.float32),
        terminals=np.zeros(n_rows, dtype=bool),
        timeouts=timeouts,
    )


def training_state(trainer: object) -> dict[str, torch.Tensor]:
    """Every tensor of a trainer's state (model, EMA, optimizer), by name, to compare runs bit for bit."""
    out = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}  # type: ignore[attr-defined]
    out.update({f"ema.{k}": v for k, v in trainer.ema.state_dict().items()})  # type: ignore[attr-defined]
    for index, state in trainer.optimizer.state_dict()["state"].items():  # type: ignore[attr-defined]
        out.update({f"opt.{index}.{k}": v for k, v in state.items()})
    return out
