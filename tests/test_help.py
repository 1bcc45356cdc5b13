"""Each command's --help: what it does, its main settings with their current values, the config
groups, examples; no internal schema entries."""

from __future__ import annotations

import importlib

import pytest

COMMANDS = ["collect", "train", "train_value", "evaluate", "demo", "train_bc", "train_offline", "generate", "sweep"]


@pytest.mark.parametrize("module", COMMANDS)
def test_help_says_what_the_command_does(module: str, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    command = "diffplan-" + module.replace("_", "-")
    monkeypatch.setattr("sys.argv", [command, "--help"])
    importlib.import_module(f"diffplan.cli.{module}").main()
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith(f"{command}: ") and len(first) > len(command) + 10
    assert "Main settings (current value):" in out and "Config groups (group=option):" in out
    assert "Examples:" in out and f"  {command.split()[0]}" in out.split("Examples:")[1]
    assert "_schema" not in out and len(out.splitlines()) < 60


def test_help_shows_the_values_after_the_overrides(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["diffplan-train", "+experiment=demo", "train.steps=123", "--help"])
    importlib.import_module("diffplan.cli.train").main()
    out = capsys.readouterr().out
    values = dict(line.split(None, 1) for line in out.split("Main settings (current value):\n")[1].split("\n\n")[0]
                  .splitlines())
    assert values["train.steps"] == "123" and values["task.horizon"] == "64" and values["train.lr"] == "0.001"
    assert "  task: halfcheetah-expert, " in out and "pointmaze-umaze" in out
