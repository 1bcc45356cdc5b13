"""The project's behaviour-cloning policy as a target policy: a Gaussian around its action."""

from __future__ import annotations

from pathlib import Path

from diffplan.models.gaussian_policy import GaussianPolicy


def load_bc_policy(path: Path, std: float, vecnormalize: Path | None) -> GaussianPolicy:
    """The BC checkpoint at ``path`` (``diffplan-train-bc``) as ``N(a; bc(s), std^2)``, CPU.

    Raises:
        ValueError: a VecNormalize pickle was given (the BC network normalizes its own inputs).
        CheckpointError: ``path`` is not a BC checkpoint.
    """
    from diffplan.baselines.bc import load_bc_model  # imports diffplan.config: not at module level

    if vecnormalize is not None:
        raise ValueError("a BC policy normalizes its observations itself; drop the VecNormalize pickle")
    bc = load_bc_model(path, device="cpu")
    network = bc.network.eval().requires_grad_(False)
    return GaussianPolicy(network, bc.obs_dim, bc.act_dim, std)
