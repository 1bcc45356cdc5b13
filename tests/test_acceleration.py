"""Compute settings: bfloat16 autocast and torch.compile for planning and training, with their
tolerances against float32 eager, the eager fallback, and the fused optimizer and multi-tensor
EMA of the training loop against their per-tensor definitions."""

from __future__ import annotations

import copy
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
from data_fixtures import random_walk_episodes, tiny_maze_model
from torch import nn

from diffplan.acceleration import CompiledModule, autocast, compile_module
from diffplan.config import Config, DiffusionConfig, ModelConfig, PlannerConfig, TaskConfig, TrainConfig, UnetConfig
from diffplan.data import Episodes, TrajectoryLayout, load_hdf5, write_hdf5
from diffplan.enums import LrDecay, Precision
from diffplan.planning.planner import GoalPlanner
from diffplan.training.checkpoint import TrainedModel
from diffplan.training.loop import make_adamw, update_ema, warmup_lr
from diffplan.training.trainer import Trainer

LAYOUT = TrajectoryLayout(obs_dim=4, act_dim=2)
H = 16
STARTS = torch.tensor([[0.5, -1.0, 0.1, -0.2], [2.5, 2.0, 0.0, 0.3]])
GOALS = torch.tensor([[2.0, 1.5], [-1.5, -0.5]])
#: bfloat16 keeps 8 mantissa bits: a plan through 5 autocast denoiser calls lands within this
#: much of the float32 plan (normalized units in [-1, 1]; measured max 0.02 on this model).
BF16_PLAN_ATOL = 0.08
#: Inductor reorders float32 sums; a compiled plan matches eager to float32 rounding.
COMPILE_PLAN_ATOL = 1e-4


@pytest.fixture(scope="module")
def model() -> TrainedModel:
    return tiny_maze_model(H)


def _plan(model: TrainedModel, **planner: object) -> torch.Tensor:
    goal_planner = GoalPlanner(
        model,
        planner=PlannerConfig(n_candidates=2, **planner),  # type: ignore[arg-type]
        diffusion=DiffusionConfig(n_timesteps=10, sampler="ddim", sampling_steps=5),
        goal_dims=[0, 1],
    )
    plan = goal_planner.plan(STARTS, torch.Generator().manual_seed(0), goals=GOALS)
    return model.normalizer.normalize(torch.cat([plan.observations, plan.actions], dim=-1))


def test_bfloat16_planning_is_float32_and_close(model: TrainedModel) -> None:
    exact = _plan(model)
    low = _plan(model, precision=Precision.bfloat16)
    assert low.dtype == torch.float32
    assert not torch.equal(low, exact)  # the setting takes effect
    torch.testing.assert_close(low, exact, rtol=0, atol=BF16_PLAN_ATOL)
    # Inpainted entries stay exact whatever the precision.
    torch.testing.assert_close(low[:, 0, :4], exact[:, 0, :4], rtol=0, atol=1e-6)


def test_autocast_runs_convolutions_in_bfloat16() -> None:
    conv = nn.Conv1d(4, 4, 3)
    x = torch.randn(2, 4, 8)
    with autocast(Precision.float32, "cpu"):
        assert conv(x).dtype == torch.float32
    with autocast("bfloat16", "cpu"):
        assert conv(x).dtype == torch.bfloat16


@pytest.mark.parametrize("key", ["train.precision", "planner.precision", "value.precision", "train.lr_decay"])
def test_the_new_settings_are_checked_when_the_config_is_composed(key: str) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ValidationError

    from diffplan.config import CONF_DIR, register_configs

    register_configs()
    allowed = "cosine" if key.endswith("lr_decay") else "bfloat16"
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"), pytest.raises(
        (ConfigCompositionException, ValidationError), match=key.split(".")[1]
    ) as caught:
        compose("config", overrides=[f"{key}=fp8"])
    assert allowed in str(caught.value) + str(caught.value.__cause__)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler")
def test_compiled_planning_matches_eager(model: TrainedModel) -> None:
    exact = _plan(model)
    compiled = _plan(model, compile=True)
    wrapper = compile_module(model.denoiser, True, what="the denoiser")
    assert isinstance(wrapper, CompiledModule) and wrapper._compiled is not None, "compilation fell back to eager"
    torch.testing.assert_close(compiled, exact, rtol=0, atol=COMPILE_PLAN_ATOL)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler")
def test_compiled_bfloat16_planning_matches_eager(model: TrainedModel) -> None:
    """planner.precision=bfloat16 with planner.compile (the fastest CPU setting): the compiled planar copy
    plans what the eager one plans, within bfloat16's rounding."""
    eager = _plan(model, precision=Precision.bfloat16)
    compiled = _plan(model, precision=Precision.bfloat16, compile=True)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=BF16_PLAN_ATOL)


def test_compile_failure_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from torch._dynamo.exc import TorchRuntimeError

    def broken(*args: object, **kwargs: object) -> torch.Tensor:
        raise TorchRuntimeError("inductor: C++ compile error (g++ not found)")

    monkeypatch.setattr(torch, "compile", lambda module, **options: broken)
    net = nn.Linear(3, 2)
    wrapper = compile_module(net, True, what="a test network")
    x = torch.randn(4, 3)
    with caplog.at_level(logging.WARNING, logger="diffplan.acceleration"):
        out = wrapper(x)
        again = wrapper(x)
    assert torch.equal(out, net(x)) and torch.equal(again, net(x))
    warnings = [r for r in caplog.records if "running it eagerly" in r.getMessage()]
    assert len(warnings) == 1 and "a test network" in warnings[0].getMessage()


def test_errors_of_the_network_itself_are_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda module, **options: module)
    wrapper = compile_module(nn.Linear(3, 2), True, what="a test network")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        wrapper(torch.randn(4, 5))


def test_compile_off_returns_the_module_and_one_wrapper_per_module() -> None:
    net = nn.Linear(3, 2)
    assert compile_module(net, False, what="x") is net
    assert compile_module(net, True, what="x") is compile_module(net, True, what="x")


def test_fused_adamw_matches_the_reference_update() -> None:
    """The fused kernel implements AdamW: weights after 5 steps agree with the per-tensor loop.

    An MLP, not the U-Net: a convolution bias followed by a GroupNorm of one channel per group
    has a gradient that is zero up to rounding, which Adam divides by its own tiny second
    moment, so such parameters follow the rounding, not the rule."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.Mish(), nn.Linear(32, 32), nn.Mish(), nn.Linear(32, 6))
    reference = copy.deepcopy(net)
    fused = make_adamw(net.parameters(), lr=1e-3, weight_decay=1e-2)
    loop = torch.optim.AdamW(reference.parameters(), lr=1e-3, weight_decay=1e-2, foreach=False)
    x = torch.randn(64, 6)
    for _ in range(5):
        for module, optimizer in ((net, fused), (reference, loop)):
            optimizer.zero_grad()
            (module(x) - x).square().mean().backward()
            optimizer.step()
    for a, b in zip(net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_multi_tensor_ema_is_the_per_parameter_lerp() -> None:
    torch.manual_seed(0)
    model, ema = nn.Linear(5, 3), nn.Linear(5, 3)
    pairs = zip(ema.parameters(), model.parameters(), strict=True)
    expected = [e.detach().clone().lerp_(p.detach(), 1 - 0.9) for e, p in pairs]
    update_ema(ema, model, 0.9)
    for got, want in zip(ema.parameters(), expected, strict=True):
        assert torch.equal(got, want)


def test_cosine_learning_rate() -> None:
    assert warmup_lr(1e-3, 0, 10) == pytest.approx(1e-4)
    assert warmup_lr(1e-3, 500, 10) == 1e-3  # constant by default
    assert warmup_lr(1e-3, 9, 10, decay="cosine", total_steps=110) == pytest.approx(1e-3)
    assert warmup_lr(1e-3, 60, 10, decay="cosine", total_steps=110) == pytest.approx(5e-4)
    assert warmup_lr(1e-3, 110, 10, decay="cosine", total_steps=110) == pytest.approx(0.0, abs=1e-12)
    assert warmup_lr(1e-3, 110, 10, decay="cosine", total_steps=110, final_ratio=0.1) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="unknown learning-rate decay 'step'"):
        warmup_lr(1e-3, 50, 10, decay="step", total_steps=100)


# --- training -------------------------------------------------------------------------------

#: A bfloat16 training step's loss is within this relative distance of the float32 one (the
#: products round to 8 mantissa bits; measured 0.2% on this model).
BF16_LOSS_RTOL = 0.02
#: A compiled training step's loss, and the trained network's output, match eager to float32 rounding.
COMPILE_TRAIN_ATOL = 1e-5
COMPILE_OUTPUT_ATOL = 1e-4


@pytest.fixture(scope="module")
def episodes(tmp_path_factory: pytest.TempPathFactory) -> Episodes:
    data = random_walk_episodes()
    return load_hdf5(write_hdf5(tmp_path_factory.mktemp("data") / "tiny.hdf5", data, {"task": "tiny"}))


def _trainer(episodes: Episodes, run_dir: Path, steps: int = 3, **train: object) -> Trainer:
    cfg = Config(
        task=TaskConfig(name="tiny", env_id="Tiny-v0", dataset="tiny.hdf5", horizon=16),
        model=ModelConfig(unet=UnetConfig(dim=8, dim_mults=[1, 2], kernel_size=3)),
        diffusion=DiffusionConfig(n_timesteps=10, sampling_steps=5),
        train=TrainConfig(steps=steps, batch_size=4, warmup_steps=1, ckpt_every=1000, log_every=1, device="cpu",
                          progress=False, **train),  # type: ignore[arg-type]
    )
    return Trainer(cfg, episodes, run_dir, {"path": "tiny.hdf5"})


def test_bfloat16_training_step(episodes: Episodes, tmp_path: Path) -> None:
    exact = _trainer(episodes, tmp_path / "a")
    low = _trainer(episodes, tmp_path / "b", precision=Precision.bfloat16)
    loss, low_loss = exact.train_step(), low.train_step()
    assert low_loss != loss
    assert low_loss == pytest.approx(loss, rel=BF16_LOSS_RTOL)
    assert all(p.dtype == torch.float32 for p in low.model.parameters())
    assert all(torch.isfinite(p).all() for p in low.model.parameters())


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler")
def test_compiled_training_step_matches_eager(episodes: Episodes, tmp_path: Path) -> None:
    exact = _trainer(episodes, tmp_path / "a")
    compiled = _trainer(episodes, tmp_path / "b", compile=True)
    assert isinstance(compiled.train_model, CompiledModule)
    for _ in range(2):
        assert compiled.train_step() == pytest.approx(exact.train_step(), abs=COMPILE_TRAIN_ATOL)
    assert compiled.train_model._compiled is not None, "compilation fell back to eager"
    # The trained networks agree (compared through their outputs: single weights do not, where a
    # convolution bias before a one-channel GroupNorm gets a rounding-noise gradient that Adam scales up).
    x, levels = torch.randn(3, 16, 6), torch.rand(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(compiled.model(x, levels), exact.model(x, levels), rtol=0, atol=COMPILE_OUTPUT_ATOL)


def test_cosine_decay_in_training(episodes: Episodes, tmp_path: Path) -> None:
    trainer = _trainer(episodes, tmp_path, steps=5, lr_decay=LrDecay.cosine)
    rates = []
    for _ in range(5):
        trainer.train_step()
        rates.append(trainer.optimizer.param_groups[0]["lr"])
    lr = trainer.cfg.train.lr
    # Warmup of 1 step, then the cosine from lr (step 1) towards 0 at step 5 = train.steps.
    expected = [lr, lr, lr * 0.5 * (1 + math.cos(math.pi / 4)), lr * 0.5, lr * 0.5 * (1 + math.cos(3 * math.pi / 4))]
    assert rates == pytest.approx(expected)


def test_resuming_an_older_optimizer_state_keeps_the_fused_kernel() -> None:
    from diffplan.training.loop import keep_implementation

    net = nn.Linear(3, 2)
    old = torch.optim.AdamW(net.parameters(), lr=1e-3, foreach=False)
    net(torch.randn(4, 3)).sum().backward()
    old.step()
    fused = make_adamw(net.parameters(), lr=1e-3, weight_decay=0.0)
    fused.load_state_dict(keep_implementation(old.state_dict(), fused))
    assert fused.param_groups[0]["fused"] is True
    assert fused.state_dict()["state"][0]["step"] == 1


def test_a_wrapper_is_not_wrapped_again_and_holds_the_weights_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda module, **options: module)
    net = nn.Linear(3, 2)
    wrapper = compile_module(net, True, what="x")
    assert compile_module(wrapper, True, what="x") is wrapper
    assert set(wrapper.state_dict()) == {"module.weight", "module.bias"}
