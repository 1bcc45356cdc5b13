# ruff: noqa: E402  (imports follow the sys.path entry of the tree under test)
"""Before/after timing of one source tree: the guided plan and training step at the reference
Diffuser Hopper shape, and the demo config's training step.

    python scripts/benchmark_before_after.py TREE [DEMO_DATASET]

TREE is a checkout of diffplan (its package and conf/ are used, ahead of the installed one);
run it alternately for two checkouts (for example the commit before a change and after it)
in one quiet session and compare the medians: timings on a shared virtual machine drift by
tens of percent between sessions, so only alternating runs compare. Prints one JSON line per
measurement. The plan builder is kept here so that it works on older trees too.
"""

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

tree = sys.argv[1]
dataset = sys.argv[2] if len(sys.argv) > 2 else "runs/demo/pointmaze-umaze-200000.hdf5"
sys.path.insert(0, tree)
import numpy as np
import torch
from hydra import compose, initialize_config_dir

from diffplan.config import as_config, register_configs
from diffplan.data.episodes import Episodes
from diffplan.data.layout import TrajectoryLayout
from diffplan.data.loading import load_episodes
from diffplan.data.normalizer import fit_normalizer
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.guidance import ValueGuide
from diffplan.models.factory import build_denoiser
from diffplan.models.value import build_value_net
from diffplan.planning.value_planner import ValuePlanner
from diffplan.training.checkpoint import TrainedModel
from diffplan.training.trainer import Trainer

CONF_DIR = tree + "/conf"
#: Diffuser's locomotion shape: U-Net and value net dim 32 (1, 2, 4, 8), 64 candidates, DDPM 20, 2 guide steps.
OVERRIDES = [
    "+experiment=locomotion",
    "guidance=value",
    "model.unet.dim=32",
    "model.unet.dim_mults=[1,2,4,8]",
    "value.dim=32",
    "value.dim_mults=[1,2,4,8]",
    "diffusion=ddpm",
    "diffusion.n_timesteps=20",
    "diffusion.sampling_steps=20",
    "diffusion.normalizer=gaussian",
    "diffusion.clip_denoised=null",
    "planner.n_candidates=64",
    "planner.warm_start.level=0",
]


def build_planner(overrides: list[str], device: torch.device) -> ValuePlanner:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = as_config(compose("config", overrides=overrides))
    layout = TrajectoryLayout(obs_dim=11, act_dim=3)
    torch.manual_seed(0)
    horizon = cfg.task.horizon
    denoiser = build_denoiser(cfg.model, transition_dim=layout.transition_dim, horizon=horizon)
    value = build_value_net(cfg.value, transition_dim=layout.transition_dim, horizon=horizon)
    schedule = NoiseSchedule(
        cfg.diffusion.n_timesteps, kind=cfg.diffusion.schedule, prediction=cfg.diffusion.prediction
    )
    normalizer = fit_normalizer("gaussian", torch.randn(1000, layout.transition_dim).numpy())
    model = TrainedModel(
        denoiser.to(device).eval(),
        schedule.to(device),
        normalizer.to(device),
        layout,
        cfg,
        horizon,
        0,
        Path("random-weights"),
    )
    return ValuePlanner(
        model,
        ValueGuide(value.to(device).eval()),
        planner=cfg.planner,
        diffusion=cfg.diffusion,
        guidance=cfg.guidance,
        device=device,
    )


register_configs()
import diffplan

assert diffplan.__file__.startswith(tree), diffplan.__file__
overrides = OVERRIDES
planner = build_planner(overrides, torch.device("cpu"))
g = torch.Generator().manual_seed(0)
obs = torch.zeros(1, 11)
planner.plan(obs, g)
plans = []
for _ in range(3):
    t = time.perf_counter()
    planner.plan(obs, g)
    plans.append(time.perf_counter() - t)
rng = np.random.default_rng(0)
n = 4000
timeouts = np.zeros(n, bool)
timeouts[999::1000] = True
eps = Episodes.from_arrays(
    observations=rng.normal(size=(n, 11)).astype(np.float32),
    actions=rng.uniform(-1, 1, (n, 3)).astype(np.float32),
    rewards=rng.normal(size=n).astype(np.float32),
    terminals=np.zeros(n, bool),
    timeouts=timeouts,
)
with initialize_config_dir(config_dir=tree + "/conf", version_base="1.3"):
    cfg = as_config(
        compose("config", overrides=[*overrides, "train.progress=false", "train.batch_size=32", "train.pad=true"])
    )
tr = Trainer(cfg, eps, tempfile.mkdtemp(), {})
for _ in range(5):
    tr.train_step()
steps = []
for _ in range(20):
    t = time.perf_counter()
    tr.train_step()
    steps.append(time.perf_counter() - t)
print(
    json.dumps(
        {"tree": tree, "plan_guided_s": statistics.median(plans), "train_step_ms": 1e3 * statistics.median(steps)}
    ),
    flush=True,
)
ds = dataset
with initialize_config_dir(config_dir=tree + "/conf", version_base="1.3"):
    dcfg = as_config(compose("demo", overrides=[f"task.dataset={ds}", "train.progress=false"]))
dtr = Trainer(dcfg, load_episodes(ds), tempfile.mkdtemp(), {})
for _ in range(10):
    dtr.train_step()
dsteps = []
for _ in range(200):
    t = time.perf_counter()
    dtr.train_step()
    dsteps.append(time.perf_counter() - t)
print(json.dumps({"tree": tree, "demo_train_step_ms": 1e3 * statistics.median(dsteps)}), flush=True)
