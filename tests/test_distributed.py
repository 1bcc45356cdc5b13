"""Data-parallel training under torchrun: 2 CPU processes (gloo) against one process.

Each launch starts ``python -m torch.distributed.run --standalone --nproc-per-node 2`` (a free
rendezvous port, one thread per process) on a tiny random-walk dataset and a dim-8 U-Net; the
whole file takes about half a minute on 2 cores, most of it process start-up.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_fixtures import ACT_DIM, OBS_DIM, random_walk_episodes
from hydra import compose, initialize_config_dir

from diffplan.config import Config, as_config, register_configs
from diffplan.data import write_hdf5
from diffplan.diffusion.loss import diffusion_loss
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.models.inverse_dynamics import InverseDynamics, inverse_dynamics_loss
from diffplan.pipeline.train import run_train
from diffplan.pipeline.train_value import run_train_value
from diffplan.training import distributed
from diffplan.training.checkpoint import load_trained_model
from diffplan.training.value_trainer import load_value_model

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

CONF = str(Path(__file__).resolve().parents[1] / "conf")
STEPS = 20
#: Outputs of the 2-process and the 1-process network (same seed, same global batch) on a fixed
#: input may differ by this much after STEPS steps. They are not bit-identical because the
#: gradient is summed in another order (two half-batch sums, then gloo's all-reduce). Measured:
#: 2.3e-6 (denoiser, outputs of size ~1), 2.5e-7 (value net); ranks that average the plain mean of
#: their own kept entries instead of normalising by the global count (the bug loss_scale
#: prevents) give 6.7e-2 here.
OUTPUT_TOL = 2e-5
#: The 99th percentile of |weight difference| between the same two runs. Measured: 2.2e-8 (model),
#: 7e-9 (EMA); with the normalisation bug 5.3e-4 and 3.1e-5. Not the maximum (7.4e-4): a conv
#: bias followed by a GroupNorm of one channel per group has an exactly zero gradient in theory,
#: so its computed gradient is rounding noise, which Adam scales up to steps of ~lr; those few
#: biases (0.4% of the weights) random-walk apart without changing the network's function.
WEIGHT_Q99_TOL = 1e-6
#: A 2-process run stopped at STEPS // 2 and resumed ends bit-identical to a straight 2-process
#: run (same reduction order in both; measured: exactly 0).
RESUME_TOL = 0.0


def overrides(tmp_path: Path, run_dir: str, **extra: object) -> list[str]:
    """A tiny run with invalid (padded) tokens, so the ranks keep different numbers of loss entries."""
    settings: dict[str, object] = {
        "run_dir": tmp_path / run_dir,
        "task.dataset": tmp_path / "walk.hdf5",
        "task.horizon": 16,
        "task.continuous_stream": "false",
        "train.pad": "true",
        "model.unet.dim": 8,
        "model.unet.dim_mults": "[1,2]",
        "diffusion.n_timesteps": 8,
        "diffusion.sampling_steps": 4,
        "train.steps": STEPS,
        "train.batch_size": 8,
        "train.warmup_steps": 2,
        "train.ckpt_every": 5,
        "train.log_every": 5,
        "train.progress": "false",
        "train.threads": 1,
        "value.dim": 8,
        "value.dim_mults": "[1,2]",
        "value.goal_conditioned": "true",
        "value.steps": STEPS // 2,
        "value.batch_size": 8,
        "value.warmup_steps": 2,
        "value.ckpt_every": 5,
        "value.progress": "false",
        "value.threads": 1,
        **extra,
    }
    return [f"{key}={value}" for key, value in settings.items()]


def config(args: list[str]) -> Config:
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return as_config(compose("config", overrides=args))


def torchrun(tmp_path: Path, args: list[str], module: str = "diffplan.cli.train") -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node 2 -m module args`` (free port, one thread per process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", module, *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, 2 processes straight to STEPS, and 2 processes to STEPS // 2 then resumed to STEPS."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    write_hdf5(tmp_path / "walk.hdf5", random_walk_episodes(), {"task": "random-walk"})
    run_train(config(overrides(tmp_path, "single")))
    for args in (overrides(tmp_path, "ddp"), overrides(tmp_path, "resumed", **{"train.steps": STEPS // 2}),
                 overrides(tmp_path, "resumed")):
        proc = torchrun(tmp_path, args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (tmp_path / f"{args[0].rsplit('/', 1)[-1]}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    return tmp_path


def denoiser_outputs(path: Path) -> torch.Tensor:
    """The trained (not EMA) denoiser on a fixed input."""
    model = load_trained_model(path, use_ema=False)
    x = torch.randn(16, 16, OBS_DIM + ACT_DIM, generator=torch.Generator().manual_seed(1))
    return model.denoiser(x, torch.rand(16, 16, generator=torch.Generator().manual_seed(2)))


def weight_differences(a: Path, b: Path, key: str = "model") -> torch.Tensor:
    first, second = (torch.load(p, weights_only=True)[key] for p in (a, b))
    return torch.cat([(first[name] - second[name]).abs().flatten() for name in first])


def test_two_processes_match_one_process_with_the_full_batch(runs: Path) -> None:
    single, ddp = runs / "single" / "checkpoint.pt", runs / "ddp" / "checkpoint.pt"
    assert torch.load(ddp, weights_only=True)["step"] == STEPS
    assert (denoiser_outputs(single) - denoiser_outputs(ddp)).abs().max() < OUTPUT_TOL
    for key in ("model", "ema"):
        assert weight_differences(single, ddp, key).quantile(0.99) < WEIGHT_Q99_TOL


def test_only_rank_0_writes_checkpoints_logs_and_progress(runs: Path) -> None:
    run = runs / "ddp"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "logs", "tb"]
    records = list((run / "logs").iterdir())
    assert len(records) == 1 and (records[0] / "hydra" / "config.yaml").exists(), records
    assert len(list((run / "tb").iterdir())) == 1
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    assert payload["world_size"] == 2
    assert torch.load(runs / "single" / "checkpoint.pt", weights_only=True)["world_size"] == 1
    output = (runs / "ddp.log").read_text()
    assert output.count("data-parallel over 2 processes, 4 of the 8 windows") == 1
    assert output.count("trained to step 20 (from 0)") == 1 and "2 process(es)" in output


def test_a_resumed_two_process_run_continues_as_it_would_have(runs: Path) -> None:
    straight, resumed = runs / "ddp" / "checkpoint.pt", runs / "resumed" / "checkpoint.pt"
    assert "resumed" in (runs / "resumed.log").read_text()
    a, b = (torch.load(p, weights_only=True) for p in (straight, resumed))
    assert a["step"] == b["step"] == STEPS
    for key in ("model", "ema"):
        assert weight_differences(straight, resumed, key).max() <= RESUME_TOL
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name]), (index, name)
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])


def test_batch_size_not_divisible_by_the_world_size_fails_with_one_line(tmp_path: Path) -> None:
    write_hdf5(tmp_path / "walk.hdf5", random_walk_episodes(), {"task": "random-walk"})
    proc = torchrun(tmp_path, overrides(tmp_path, "bad", **{"train.batch_size": 7}))
    assert proc.returncode != 0
    message = ("diffplan-train: error: train.batch_size=7 is not divisible by the world size 2 (torchrun "
               "--nproc-per-node); set train.batch_size to a multiple of 2, e.g. train.batch_size=6\n")
    assert message in proc.stdout + proc.stderr
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()


def test_value_function_two_processes_match_one_process(runs: Path) -> None:
    """Goal-conditioned: the relabelled goals are drawn for the global batch too."""
    diffusion = runs / "single" / "checkpoint.pt"
    run_train_value(config(overrides(runs, "value-single", **{"value.diffusion_checkpoint": diffusion})))
    proc = torchrun(runs, overrides(runs, "value-ddp", **{"value.diffusion_checkpoint": diffusion}),
                    module="diffplan.cli.train_value")
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = load_trained_model(diffusion)
    x = torch.randn(16, 16, OBS_DIM + ACT_DIM, generator=torch.Generator().manual_seed(1))
    levels, goals = torch.rand(16, 16), torch.randn(16, 2)
    outputs = []
    for run in ("value-single", "value-ddp"):
        net = load_value_model(runs / run / "value" / "checkpoint.pt", model, use_ema=False)
        outputs.append(net.standardized(x, levels, goals))
    assert (outputs[0] - outputs[1]).abs().max() < OUTPUT_TOL
    assert sorted(p.name for p in (runs / "value-ddp" / "value").iterdir()) == ["checkpoint.pt", "tb"]


def test_loss_scale_makes_the_rank_average_the_global_masked_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pins loss_scale to diffusion_loss's and inverse_dynamics_loss's normalisation (by kept
    entries), with ranks that keep different numbers of entries; no processes needed."""
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    gen = torch.Generator().manual_seed(0)
    batch, horizon, dim = 6, 8, 3
    schedule = NoiseSchedule(8)
    x0, noise = torch.randn(batch, horizon, dim, generator=gen), torch.randn(batch, horizon, dim, generator=gen)
    x0[3:] *= 4  # larger errors on the second rank, so that a mean of means is far off
    levels = torch.randint(1, 9, (batch, horizon), generator=gen)
    valid = torch.arange(horizon) < torch.tensor([8, 8, 8, 2, 5, 0])[:, None]  # ranks keep 72 and 21 entries
    mask = torch.zeros(horizon, dim, dtype=torch.bool)
    mask[0] = True
    with torch.random.fork_rng():
        torch.manual_seed(0)
        layer = torch.nn.Linear(dim, dim)

    def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return layer(x) * t.unsqueeze(-1)

    def loss(part: slice) -> torch.Tensor:
        return diffusion_loss(denoiser, schedule, x0[part], levels[part], noise[part], condition_mask=mask,
                              valid=valid[part])

    kept = (valid.unsqueeze(-1) & ~mask).sum(dim=(1, 2))
    parts = [slice(0, 3), slice(3, 6)]
    averaged = sum(loss(p) * distributed.loss_scale(kept, p) for p in parts) / 2
    assert torch.allclose(averaged, loss(slice(None)), rtol=1e-6)
    mean_of_means = sum(loss(p) for p in parts) / 2
    assert not torch.allclose(mean_of_means, loss(slice(None)), rtol=0.1), (mean_of_means, loss(slice(None)))

    head = InverseDynamics(obs_dim=2, act_dim=1)
    states, actions = torch.randn(batch, horizon, 2, generator=gen), torch.randn(batch, horizon, 1, generator=gen)
    pairs = valid[:, :-1] & valid[:, 1:]

    def id_loss(part: slice) -> torch.Tensor:
        return inverse_dynamics_loss(head, states[part], actions[part], pairs[part])

    averaged = sum(id_loss(p) * distributed.loss_scale(pairs.sum(dim=1), p) for p in parts) / 2
    assert torch.allclose(averaged, id_loss(slice(None)), rtol=1e-6)


def test_one_process_is_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torchrun every helper is the identity, so single-process training is unchanged."""
    layer = torch.nn.Linear(2, 2)
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.wrap(layer) is layer
    assert distributed.batch_part(7, "train.batch_size") is None
    assert distributed.mean([1.5, 2.0]) == [1.5, 2.0] and distributed.from_main([0.1]) == [0.1]
    assert distributed.place(torch.device("cpu")) == torch.device("cpu")
    distributed.barrier()
    with distributed.session("cpu"):
        assert not torch.distributed.is_initialized()
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    monkeypatch.setattr(distributed, "rank", lambda: 2)
    assert distributed.batch_part(32, "value.batch_size") == slice(16, 24)
    with pytest.raises(ValueError, match=r"value.batch_size=30 is not divisible by the world size 4 .* "
                                         r"value.batch_size=28"):
        distributed.batch_part(30, "value.batch_size")
