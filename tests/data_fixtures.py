"""Small shared fixtures: a tiny dataset (three 30-step episodes of a smooth random walk) and a
tiny random-weight maze planning model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from diffplan.data import Episodes

if TYPE_CHECKING:
    from diffplan.training.checkpoint import TrainedModel

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


def tiny_maze_model(horizon: int) -> TrainedModel:
    """A random-weight U-Net (dim 8, mults 1-2) over 4 observations (position in [-2, 3], velocity
    in [-1, 1]) and 2 actions in [-1, 1], limits normalizer, 10 levels: for planning tests."""
    from pathlib import Path

    from diffplan.config import Config
    from diffplan.data import LimitsNormalizer, TrajectoryLayout
    from diffplan.diffusion.schedule import NoiseSchedule
    from diffplan.models.unet import TemporalUnet
    from diffplan.training.checkpoint import TrainedModel

    layout = TrajectoryLayout(obs_dim=OBS_DIM, act_dim=ACT_DIM)
    torch.manual_seed(0)
    denoiser = TemporalUnet(transition_dim=layout.transition_dim, horizon=horizon, dim=8, dim_mults=(1, 2)).eval()
    mins = torch.tensor([-2.0, -2.0, -1.0, -1.0, -1.0, -1.0])
    maxs = torch.tensor([3.0, 3.0, 1.0, 1.0, 1.0, 1.0])
    return TrainedModel(denoiser=denoiser, schedule=NoiseSchedule(10), normalizer=LimitsNormalizer(mins, maxs),
                        layout=layout, config=Config(), horizon=horizon, step=0, path=Path("memory"))
