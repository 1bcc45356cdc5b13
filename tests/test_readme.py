"""The README is a user guide that stays true: its Python example runs, and its command and config
group tables list exactly what the package ships."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from diffplan.config import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_is_short_and_speaks_of_the_project_only() -> None:
    assert len(README.splitlines()) <= 300
    assert not re.search(r"\bissue\b|#\d+\b|REFERENCE\.md|shared/", README)
    for link in re.findall(r"\]\(((?:docs/|results/)?[\w./-]+\.(?:md|cff|json|png))(?:#[\w-]+)?\)", README):
        assert (ROOT / link).exists() or link == "LICENSE", link


def test_every_console_command_is_in_the_commands_table() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    table = _section("Commands").split("```", 1)[0]
    listed = set(re.findall(r"^\| `(diffplan-[\w-]+)`", table, flags=re.M))
    assert listed == set(scripts)


def test_config_group_table_lists_every_group_and_option() -> None:
    table = _section("Commands").split("Config groups (`conf/`):", 1)[1]
    rows = dict(re.findall(r"^\| (`[^|]+`) \| ([^\n]+) \|$", table, flags=re.M))
    groups = {g.strip("` ") for key in rows for g in key.split(",")}
    conf = Path(CONF_DIR)
    shipped = {p.name for p in conf.iterdir() if p.is_dir() and p.name != "hydra"} | {"hydra/launcher"}
    assert groups == shipped
    for key, options in rows.items():
        for group in (g.strip("` ") for g in key.split(",")):
            folder = conf / group
            for option in sorted(p.stem for p in folder.glob("*.yaml")):
                if group == "task" and re.fullmatch(r"(hopper|walker2d|halfcheetah)-[\w-]+", option):
                    robot, level = option.split("-", 1)
                    assert f"`{robot}`" in options and f"`{level}`" in options, option
                else:
                    assert f"`{option}`" in options, f"{group}={option} is missing from the README's table"


@pytest.mark.slow
def test_python_api_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's example, verbatim except for its budget line (a smaller budget and model)."""
    code = _section("Python API").split("```python\n", 1)[1].split("```", 1)[0]
    budget = re.search(r"^budget = \{.*\}$", code, flags=re.M)
    assert budget is not None
    tiny = ('budget = {"collect.n_steps": 3000, "collect.ref_episodes": 2, "train.steps": 4, "train.batch_size": 4, '
            '"task.horizon": 32, "task.stride": 1, "model.unet.dim": 8, "model.unet.dim_mults": [1, 2], '
            '"diffusion.n_timesteps": 8, "diffusion.sampling_steps": 4, "eval.n_episodes": 2, "eval.n_envs": 2, '
            '"collect.progress": False, "train.progress": False, "eval.progress": False, "eval.plots": False}')
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code.replace(budget.group(0), tiny), "README.md", "exec"), namespace)  # noqa: S102
    plan, action = namespace["plan"], namespace["action"]
    assert plan.observations.shape == (32, 4) and plan.actions.shape == (32, 2)  # type: ignore[attr-defined]
    assert action.shape == (2,)  # type: ignore[attr-defined]
    assert (tmp_path / "runs" / "api" / "eval" / "results.json").exists()
