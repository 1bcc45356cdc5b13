"""``load_target_policy("<kind>:<path>")``: target policies by name, from a registry of loaders.

Built in: ``sb3-sac`` and ``sb3-td3`` (stable-baselines3 zips, :mod:`diffplan.policies.sb3`)
and ``bc`` (``diffplan-train-bc`` checkpoints, :mod:`diffplan.policies.bc`). Other sources
(e.g. offline agents) join with :func:`register_policy_loader`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from diffplan.models.policy import TargetPolicy
from diffplan.policies.bc import load_bc_policy
from diffplan.policies.sb3 import load_sb3_sac, load_sb3_td3

#: A loader: (existing file, std of deterministic policies in action units, VecNormalize pickle
#: or None) -> the policy, on the CPU. Loaders that cannot use a pickle should raise ValueError.
PolicyLoader = Callable[[Path, float, Path | None], TargetPolicy]

def _load_offline(path: Path, std: float, vecnormalize: Path | None) -> TargetPolicy:
    """A ``diffplan-train-offline`` checkpoint (TD3+BC or IQL); imported on use (no import cycle)."""
    from diffplan.agents.trainer import offline_policy_loader

    return offline_policy_loader(path, std, vecnormalize)


_LOADERS: dict[str, PolicyLoader] = {
    "sb3-sac": load_sb3_sac,
    "sb3-td3": load_sb3_td3,
    "bc": load_bc_policy,
    "offline": _load_offline,
}

_EXAMPLE = "sb3-sac:data/agents/hopper/medium.zip"


def policy_kinds() -> list[str]:
    """The registered kinds, in registration order."""
    return list(_LOADERS)


def register_policy_loader(kind: str, loader: PolicyLoader, *, replace: bool = False) -> None:
    """Make ``load_target_policy("<kind>:<path>")`` call ``loader(path, std, vecnormalize)``.

    Example: ``register_policy_loader("td3bc", lambda path, std, _: load_agent_policy(path, std))``.

    Raises:
        ValueError: ``kind`` is empty or holds ``:``, or is registered already and not ``replace``.
    """
    if not kind or ":" in kind:
        raise ValueError(f"a policy kind must be non-empty and free of ':', got {kind!r}")
    if kind in _LOADERS and not replace:
        raise ValueError(f"policy kind {kind!r} is registered already; pass replace=True to override it")
    _LOADERS[kind] = loader


def parse_policy_spec(spec: str) -> tuple[str, Path]:
    """``"<kind>:<path>"`` -> (kind, path), the kind checked against the registry.

    Raises:
        ValueError: no ``:``, an empty path or an unknown kind (the message lists the kinds).
    """
    kind, sep, path = spec.partition(":")
    kinds = ", ".join(_LOADERS)
    if not sep or not path:
        raise ValueError(
            f"policy spec {spec!r} must be '<kind>:<path>' with kind one of {kinds}, e.g. {_EXAMPLE!r}"
        )
    if kind not in _LOADERS:
        raise ValueError(
            f"policy spec {spec!r} has unknown kind {kind!r}; use one of {kinds} as '<kind>:<path>', e.g. {_EXAMPLE!r}"
        )
    return kind, Path(path)


def load_target_policy(spec: str, *, std: float = 0.1, vecnormalize: str | None = None) -> TargetPolicy:
    """The target policy named by ``spec`` = ``"<kind>:<path>"``, on the CPU.

    Args:
        spec: e.g. ``"sb3-sac:agent.zip"``, ``"sb3-td3:agent.zip"``, ``"bc:runs/hopper/bc/checkpoint.pt"``.
        std: standard deviation (action units) of the Gaussian around deterministic policies
            (TD3, BC); unused by policies with their own (SAC).
        vecnormalize: SB3 agents only: the ``VecNormalize.save`` pickle of the agent's training
            environment; None uses ``<stem>_vecnorm.pkl`` next to the zip if it exists.

    Raises:
        ValueError: malformed spec, unknown kind, missing file (each naming the spec, the kinds
            and the fix), or a file the kind's loader cannot read.
    """
    kind, path = parse_policy_spec(spec)
    kinds = ", ".join(_LOADERS)
    if not path.is_file():
        raise ValueError(
            f"policy spec {spec!r}: no file {path}; point '<kind>:<path>' (kind one of {kinds}) at an existing "
            f"{kind} file, e.g. {_EXAMPLE!r}"
        )
    pickle_path = None if vecnormalize is None else Path(vecnormalize)
    if pickle_path is not None and not pickle_path.is_file():
        raise ValueError(
            f"policy spec {spec!r}: no VecNormalize pickle {pickle_path}; pass the file VecNormalize.save wrote "
            "for this agent, or none"
        )
    policy = _LOADERS[kind](path, float(std), pickle_path)
    if not isinstance(policy, TargetPolicy):
        raise TypeError(f"the {kind!r} loader returned {type(policy).__name__}, not a TargetPolicy")
    return policy
