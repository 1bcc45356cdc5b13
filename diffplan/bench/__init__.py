"""Speed as a measured, tracked property: ``diffplan-bench`` (:mod:`diffplan.cli.bench`).

- :mod:`diffplan.bench.presets`: the shapes measured (the reference Diffuser's Hopper and
  umaze shapes, one preset per shipped ``+experiment``);
- :mod:`diffplan.bench.builders`: random-weight trainers, models and planners built from
  composed configs exactly as training and evaluation build them;
- :mod:`diffplan.bench.timing`: warm-up, timed runs, median and spread;
- :mod:`diffplan.bench.runner`: the metrics of a preset, the JSON record, the table;
- :mod:`diffplan.bench.reference`: the reference implementation's figures and the targets.
"""

from diffplan.bench.presets import Preset, PresetError, all_presets, select_presets
from diffplan.bench.reference import REFERENCE_FIGURES, TARGETS
from diffplan.bench.runner import Settings, format_table, run_benchmark
from diffplan.bench.timing import Measurement, time_runs

__all__ = [
    "REFERENCE_FIGURES",
    "TARGETS",
    "Measurement",
    "Preset",
    "PresetError",
    "Settings",
    "all_presets",
    "format_table",
    "run_benchmark",
    "select_presets",
    "time_runs",
]
