"""``run_sweep``: evaluate every unfinished cell of a sweep, sequentially or in batched passes."""

from __future__ import annotations

import logging
from pathlib import Path

from diffplan.config import Config
from diffplan.sweep.grid import PlannedCell, SweepError, is_finished, plan_cells

log = logging.getLogger(__name__)


def check_classifier_free_cells(cfg: Config, cells: list[PlannedCell]) -> None:
    """``classifier_free`` cells vary the classifier-free guidance weight: refuse them for a checkpoint that
    is not return-conditioned (they would all plan alike).

    Raises:
        SweepError: naming the entry, the checkpoint and the fix.
    """
    classifier_free_cells = [p for p in cells if p.cell.kind == "classifier_free"]
    if not classifier_free_cells:
        return
    from diffplan.training.checkpoint import config_from_checkpoint, load_checkpoint

    checkpoint = cfg.eval.checkpoint
    trained = config_from_checkpoint(load_checkpoint(checkpoint, map_location="cpu"), checkpoint)
    if not trained.model.return_condition:
        raise SweepError(
            f"sweep.cells[{classifier_free_cells[0].cell.entry}] kind=classifier_free varies "
            f"planner.return_guidance.weight, which only return-conditioned models use, but {checkpoint} was trained "
            "with model.return_condition=false; drop the classifier_free cells or evaluate a model trained with "
            "model.return_condition=true"
        )


def run_sweep(cfg: Config) -> list[Path]:
    """Evaluate the cells of ``cfg.sweep`` (all, or ``sweep.cells_index``) not finished yet.

    Every cell's results.json is checked first (:func:`diffplan.sweep.grid.is_finished`): a
    finished cell with the same config is skipped, one with another config stops the sweep
    before anything runs. Returns the results.json paths of the selected cells.
    """
    from diffplan.pipeline.evaluate import evaluate_config
    from diffplan.sweep.batched import batch_passes, batchable, run_pass

    planned = plan_cells(cfg)
    index = cfg.sweep.cells_index
    selected = planned if index is None else [planned[index]]
    mode = "batched" if cfg.sweep.batched else "sequential"
    log.info("sweep %s (%s): %d cells x seeds %s x %d episodes -> %s", cfg.sweep.name, mode, len(planned),
             list(cfg.eval.seeds), cfg.eval.n_episodes, cfg.sweep.out_dir)
    chosen = {p.cell.index for p in selected}
    for p in planned:
        log.info("  cell %d: %s%s", p.cell.index, p.label, "" if p.cell.index in chosen else " (not selected)")
    check_classifier_free_cells(cfg, selected)
    todo = []
    for p in selected:
        if is_finished(p):
            log.info("cell %d %s: %s already holds it with this config; skipping", p.cell.index, p.label,
                     p.results_path)
        else:
            todo.append(p)
    if cfg.sweep.batched:
        for part in batch_passes(todo):
            if not batchable(part[0].cfg):
                log.warning("cell %s: planner.mode=%s has no per-environment strengths; evaluating it alone",
                            part[0].label, part[0].cfg.planner.mode)
                evaluate_config(part[0].cfg, extra={"cell": part[0].key})
            else:
                run_pass(part)
    else:
        for p in todo:
            log.info("cell %d %s -> %s", p.cell.index, p.label, p.out_dir)
            evaluate_config(p.cfg, extra={"cell": p.key})
    log.info("sweep %s: %d cells evaluated, %d already done -> %s", cfg.sweep.name, len(todo),
             len(selected) - len(todo), cfg.sweep.out_dir)
    if cfg.sweep.report and index is None:
        from diffplan.reporting.report import build_report

        report = build_report([cfg.sweep.out_dir], cfg.sweep.report, title=cfg.sweep.report_title)
        log.info("report of %s -> %s", cfg.sweep.out_dir, report.html)
    return [p.results_path for p in selected]
