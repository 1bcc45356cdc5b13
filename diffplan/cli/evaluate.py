"""``diffplan-evaluate``: run a policy in N environments at once and write results.json.

Mazes: the goal-inpainting planner with a tracker (``planner.mode``). Locomotion
(``<robot>-<level>`` tasks): ``eval.controller=planner`` plans with the diffusion model,
value-guided (``guidance=value``) or not (``guidance=none``; candidates are still ranked by
the value function when ``planner.n_candidates > 1``), and executes the plan's actions;
``eval.controller=bc`` runs the behaviour-cloning baseline of ``bc.run_dir``, ``eval.controller=offline`` the
offline RL agent (TD3+BC or IQL, deterministic actions) of ``offline.run_dir``.

Programmatic use (``diffplan-sweep``): :func:`evaluate_config` evaluates a Config into a chosen
folder and adds top-level keys to its results.json; :func:`prepare_evaluation`,
:func:`run_episodes` and :func:`write_evaluation` are its three stages, so a batched sweep
can build one policy with per-environment guidance strengths, run it once and write one
results.json per cell exactly as a sequential evaluation does.
"""

from __future__ import annotations

from diffplan.cli.common import CommandHelp, hydra_entry
from diffplan.pipeline.evaluate import run_evaluate

main = hydra_entry(run_evaluate, help=CommandHelp(
    doc=__doc__,
    options=(
        "task.name",
        "run_dir",
        "eval.checkpoint",
        "eval.controller",
        "eval.n_episodes",
        "eval.n_envs",
        "eval.seeds",
        "eval.out_dir",
        "planner.mode",
        "guidance.kind",
        "guidance.scale",
        "guidance.policy",
        "eval.device",
        "eval.physics",
    ),
    examples=(
        "diffplan-evaluate task=pointmaze-umaze",
        "diffplan-evaluate task=hopper-medium planner=value guidance=value guidance.scale=0.1",
        "diffplan-evaluate task=pointmaze-umaze eval.seeds=[4,5,6] eval.out_dir=runs/umaze/eval-heldout",
    ),
))

if __name__ == "__main__":
    main()
