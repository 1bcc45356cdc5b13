"""Datasets: loading and validation, episodes, normalization, training windows."""

from diffplan.data.episodes import Episode, Episodes, validate_arrays
from diffplan.data.errors import DatasetError, DatasetNotFoundError
from diffplan.data.hdf5 import load_hdf5, write_hdf5
from diffplan.data.layout import TrajectoryLayout
from diffplan.data.loading import load_episodes
from diffplan.data.minari_io import load_minari
from diffplan.data.normalizer import (
    GaussianNormalizer,
    LimitsNormalizer,
    Normalizer,
    fit_normalizer,
    normalizer_from_state_dict,
)
from diffplan.data.windows import TrajectoryBatch, WindowSampler

__all__ = [
    "DatasetError",
    "DatasetNotFoundError",
    "Episode",
    "Episodes",
    "GaussianNormalizer",
    "LimitsNormalizer",
    "Normalizer",
    "TrajectoryBatch",
    "TrajectoryLayout",
    "WindowSampler",
    "fit_normalizer",
    "load_episodes",
    "load_hdf5",
    "load_minari",
    "normalizer_from_state_dict",
    "validate_arrays",
    "write_hdf5",
]
