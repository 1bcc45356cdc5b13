"""``diffplan-generate``: synthetic experience from the diffusion model, in the D4RL file layout.

Example (policy-guided, Policy-Guided Diffusion)::

    diffplan-generate +experiment=locomotion task=hopper-medium train.model_rewards=true \\
        guidance=policy guidance.policy=bc:runs/hopper-medium/bc/checkpoint.pt guidance.policy_scale=0.1 \\
        generate.n_trajectories=2000 generate.out=runs/hopper-medium/synthetic/bc-0.1.hdf5

samples ``generate.n_trajectories`` trajectories of ``generate.length`` transitions from start
states drawn from ``task.dataset`` with the model of ``eval.checkpoint``, writes them to
``generate.out`` (any D4RL reader, and ``diffplan.data.load_episodes``, reads it back), and
with ``generate.metrics`` writes ``<out>.metrics.json``: the dynamics error of the generated
transitions against the simulator and the target policy's mean log-likelihood of the
generated actions (and of the dataset's, for reference). Chunks are saved in
``<out>.partial/`` as they finish: an interrupted run resumes.
"""

from __future__ import annotations

from diffplan.cli.common import CommandHelp, hydra_entry
from diffplan.pipeline.generate import run_generate

main = hydra_entry(run_generate, help=CommandHelp(
    doc=__doc__,
    options=(
        "task.name",
        "run_dir",
        "guidance.kind",
        "guidance.policy",
        "generate.n_trajectories",
        "generate.length",
        "generate.out",
        "generate.device",
    ),
    examples=(
        "diffplan-generate task=hopper-medium guidance=policy "
        "guidance.policy=td3bc:runs/hopper-medium/offline-td3bc/checkpoint.pt",
    ),
))

if __name__ == "__main__":
    main()
