"""Pickle safety: SB3 zips and VecNormalize files run code when unpickled, so nothing is
unpickled without ``guidance.trust_pickle=true``, and no file is loaded that was not named (a
``<stem>_vecnorm.pkl`` next to the zip is only pointed out). Diffplan's own checkpoints (bc:,
offline:, the diffusion and value models) are read with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import pytest
from errors_helpers import Command, digest, one_line
from test_policies import _agent

from diffplan.policies import load_target_policy
from diffplan.policies.loading import check_target_policy


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SB3 SAC zip with a booby-trapped VecNormalize pickle next to it."""
    folder = tmp_path_factory.mktemp("sb3")
    _agent("SAC", folder / "sac.zip")
    (folder / "sac_vecnorm.pkl").write_bytes(pickle.dumps(Evil(folder / "pwned-sibling")))
    return folder / "sac.zip"


def test_an_sb3_zip_is_refused_without_trust_pickle(agent: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stable_baselines3

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the zip was unpickled")

    monkeypatch.setattr(stable_baselines3.SAC, "load", never)
    with pytest.raises(ValueError, match=rf"guidance.policy='sb3-sac:{agent}': {agent} is a pickle .* add "
                                         r"guidance.trust_pickle=true"):
        load_target_policy(f"sb3-sac:{agent}")


def test_the_vecnormalize_pickle_next_to_the_zip_is_never_loaded_implicitly(
    agent: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        policy = load_target_policy(f"sb3-sac:{agent}", trust_pickle=True)
    assert getattr(policy, "obs_normalizer", "?") is None
    assert not (agent.parent / "pwned-sibling").exists()
    assert "sac_vecnorm.pkl lies next to" in caplog.text and "guidance.policy_vecnormalize=" in caplog.text


def test_a_named_vecnormalize_pickle_needs_trust_pickle(agent: Path, tmp_path: Path) -> None:
    evil = tmp_path / "stats.pkl"
    evil.write_bytes(pickle.dumps(Evil(tmp_path / "pwned")))
    # A kind whose own file is no pickle still cannot bring one in through policy_vecnormalize.
    with pytest.raises(ValueError, match=rf"guidance.policy_vecnormalize={evil} is a pickle .* add guidance."
                                         r"trust_pickle=true"):
        _custom_check(agent, evil)
    assert not (tmp_path / "pwned").exists()


def _custom_check(agent: Path, evil: Path) -> None:
    from diffplan.policies import loading

    saved = loading._LOADERS
    loading._LOADERS = saved.copy()
    try:
        loading.register_policy_loader("custom", lambda path, std, vn: None)  # type: ignore[arg-type,return-value]
        check_target_policy(f"custom:{agent}", vecnormalize=str(evil))
    finally:
        loading._LOADERS = saved


@pytest.mark.parametrize("module", ["generate", "evaluate"])
def test_commands_refuse_an_untrusted_zip_before_reading_anything(
    trained: Path, run: Command, agent: Path, tmp_path: Path, module: str
) -> None:
    before = digest(trained / "run")
    out = [f"generate.out={tmp_path / 'synthetic.hdf5'}"] if module == "generate" else \
        [f"eval.out_dir={tmp_path / 'eval'}"]
    line = one_line(run(module, "guidance=policy", f"guidance.policy=sb3-sac:{agent}", *out),
                    str(agent), "is a pickle", "guidance.trust_pickle=true", command=f"diffplan-{module}")
    assert "guidance.policy=" in line
    assert digest(trained / "run") == before and not list(tmp_path.iterdir())
    assert not (agent.parent / "pwned-sibling").exists()


def test_trust_pickle_is_a_guidance_setting_that_defaults_to_false() -> None:
    from diffplan.composition import preflight

    assert preflight("config", ["guidance=policy"]).guidance.trust_pickle is False
    assert preflight("config", ["guidance=policy", "guidance.trust_pickle=true"]).guidance.trust_pickle is True
