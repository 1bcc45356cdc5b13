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
from diffplan.utils import Registry

#: A loader: (existing file, std of deterministic policies in action units, VecNormalize pickle
#: or None) -> the policy, on the CPU. Loaders that cannot use a pickle should raise ValueError.
PolicyLoader = Callable[[Path, float, Path | None], TargetPolicy]

def _load_offline(path: Path, std: float, vecnormalize: Path | None) -> TargetPolicy:
    """A ``diffplan-train-offline`` checkpoint (TD3+BC or IQL); imported on use (no import cycle)."""
    from diffplan.agents.trainer import offline_policy_loader

    return offline_policy_loader(path, std, vecnormalize)


_LOADERS: Registry[PolicyLoader] = Registry("target-policy kind", "guidance.policy",
                                            "diffplan.policies.register_policy_loader")
for _kind, _loader in (("sb3-sac", load_sb3_sac), ("sb3-td3", load_sb3_td3), ("bc", load_bc_policy),
                       ("offline", _load_offline)):
    _LOADERS.add(_kind, _loader)

#: The kinds whose files are pickles (code runs when they load): loaded only with ``trust_pickle``.
#: bc and offline are diffplan checkpoints, read with ``torch.load(weights_only=True)``.
_PICKLE_KINDS: set[str] = {"sb3-sac", "sb3-td3"}
#: The kinds whose loaders refuse a VecNormalize pickle without reading it (they normalize themselves).
_OWN_NORMALIZATION = {"bc", "offline"}

_EXAMPLE = "sb3-sac:data/agents/hopper/medium.zip"


def policy_kinds() -> list[str]:
    """The registered kinds, in registration order."""
    return _LOADERS.names()


def register_policy_loader(kind: str, loader: PolicyLoader, *, replace: bool = False, unpickles: bool = False) -> None:
    """Make ``load_target_policy("<kind>:<path>")`` call ``loader(path, std, vecnormalize)``;
    ``unpickles``: the loader unpickles its file (it then runs only with ``trust_pickle``).

    Example: ``register_policy_loader("td3bc", lambda path, std, _: load_agent_policy(path, std))``.

    Raises:
        ValueError: ``kind`` is empty or holds ``:``, or is registered already and not ``replace``.
    """
    if not kind or ":" in kind:
        raise ValueError(f"a policy kind must be non-empty and free of ':', got {kind!r}")
    _LOADERS.add(kind, loader, replace=replace)
    if unpickles:
        _PICKLE_KINDS.add(kind)
    else:
        _PICKLE_KINDS.discard(kind)


def parse_policy_spec(spec: str) -> tuple[str, Path]:
    """``"<kind>:<path>"`` -> (kind, path), the kind checked against the registry.

    Raises:
        ValueError: no ``:``, an empty path or an unknown kind (the message lists the kinds).
    """
    kind, sep, path = spec.partition(":")
    kinds = ", ".join(_LOADERS.names())
    if not sep or not path:
        raise ValueError(
            f"policy spec {spec!r} must be '<kind>:<path>' with kind one of {kinds}, e.g. {_EXAMPLE!r}"
        )
    if kind not in _LOADERS:
        raise ValueError(
            f"policy spec {spec!r} has unknown kind {kind!r}; use one of {kinds} as '<kind>:<path>', e.g. {_EXAMPLE!r}"
        )
    return kind, Path(path)


def check_target_policy(
    spec: str, *, vecnormalize: str | None = None, trust_pickle: bool = False, key: str = "guidance"
) -> tuple[str, Path, Path | None]:
    """Check ``spec`` and ``vecnormalize`` as :func:`load_target_policy` would, without loading
    anything: the spec's form and kind, that the files exist, and that a pickle (an SB3 zip, a
    VecNormalize pickle) is loaded only with ``trust_pickle``. ``key`` is the config section
    whose settings are named in the messages. Returns (kind, path, VecNormalize path or None).

    Raises:
        ValueError: each naming the setting, the value and the fix.
    """
    kind, path = parse_policy_spec(spec)
    kinds = ", ".join(_LOADERS.names())
    if not path.is_file():
        raise ValueError(
            f"policy spec {spec!r}: no file {path}; point '<kind>:<path>' (kind one of {kinds}) at an existing "
            f"{kind} file, e.g. {_EXAMPLE!r}"
        )
    pickle_path = None if vecnormalize is None else Path(vecnormalize)
    if pickle_path is not None and not pickle_path.is_file():
        raise ValueError(
            f"policy spec {spec!r}: no VecNormalize pickle {pickle_path}; pass the file VecNormalize.save wrote "
            f"for this agent as {key}.policy_vecnormalize, or none"
        )
    if not trust_pickle:
        if kind in _PICKLE_KINDS:
            raise ValueError(
                f"{key}.policy={spec!r}: {path} is a pickle ({kind}), which runs code when it is loaded, and "
                f"{key}.trust_pickle is false; if you trust the file, add {key}.trust_pickle=true"
            )
        if pickle_path is not None and kind not in _OWN_NORMALIZATION:
            raise ValueError(
                f"{key}.policy_vecnormalize={pickle_path} is a pickle (VecNormalize.save), which runs code when it "
                f"is loaded, and {key}.trust_pickle is false; if you trust the file, add {key}.trust_pickle=true"
            )
    return kind, path, pickle_path


def load_target_policy(
    spec: str, *, std: float = 0.1, vecnormalize: str | None = None, trust_pickle: bool = False
) -> TargetPolicy:
    """The target policy named by ``spec`` = ``"<kind>:<path>"``, on the CPU.

    Args:
        spec: e.g. ``"sb3-sac:agent.zip"``, ``"sb3-td3:agent.zip"``, ``"bc:runs/hopper/bc/checkpoint.pt"``.
        std: standard deviation (action units) of the Gaussian around deterministic policies
            (TD3, BC); unused by policies with their own (SAC).
        vecnormalize: SB3 agents only: the ``VecNormalize.save`` pickle of the agent's training
            environment, or None (no normalization: nothing is loaded that is not named).
        trust_pickle: load pickles (SB3 zips, ``vecnormalize``), which run code when loaded;
            without it they are refused (``guidance.trust_pickle``).

    Raises:
        ValueError: malformed spec, unknown kind, missing file, a pickle without ``trust_pickle``
            (each naming the spec and the fix), or a file the kind's loader cannot read.
    """
    kind, path, pickle_path = check_target_policy(spec, vecnormalize=vecnormalize, trust_pickle=trust_pickle)
    policy = _LOADERS.get(kind)(path, float(std), pickle_path)
    if not isinstance(policy, TargetPolicy):
        raise TypeError(f"the {kind!r} loader returned {type(policy).__name__}, not a TargetPolicy")
    return policy
