"""One entry point that loads any supported dataset source into :class:`Episodes`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from diffplan.data.episodes import Episodes
from diffplan.data.errors import DatasetError, DatasetNotFoundError
from diffplan.data.hdf5 import load_hdf5
from diffplan.data.minari_io import load_minari, minari_data_dir

DatasetFormat = Literal["auto", "hdf5", "minari"]
#: File suffixes read as D4RL-layout HDF5.
HDF5_SUFFIXES = (".hdf5", ".h5")
#: Prefix that marks a Minari dataset id, e.g. ``"minari:D4RL/pointmaze/umaze-v2"``.
MINARI_PREFIX = "minari:"
_ACCEPTED = (
    "a .hdf5/.h5 file (D4RL or diffplan layout), 'minari:<dataset id>', or a Minari dataset "
    "folder (one holding data/metadata.json)"
)


def _resolve_format(source: str | Path) -> tuple[Literal["hdf5", "minari"], str | Path]:
    text = str(source)
    if text.startswith(MINARI_PREFIX):
        return "minari", text[len(MINARI_PREFIX):]
    path = Path(source)
    if path.suffix.lower() in HDF5_SUFFIXES:
        return "hdf5", path
    if path.is_dir() and minari_data_dir(path) is not None:
        return "minari", path
    if not path.exists() and not path.suffix:
        raise DatasetNotFoundError(f"{text}: no such file or folder; accepted sources: {_ACCEPTED}.")
    raise DatasetError(f"{text}: unrecognised dataset source; accepted sources: {_ACCEPTED}.")


def load_episodes(
    source: str | Path,
    *,
    fmt: DatasetFormat = "auto",
    expected_obs_dim: int | None = None,
    expected_act_dim: int | None = None,
) -> Episodes:
    """Load a dataset from a file, a Minari id or a Minari folder.

    Args:
        source: ``path/to/file.hdf5`` (or ``.h5``), ``"minari:<dataset id>"``, or a Minari
            dataset folder.
        fmt: ``"auto"`` decides from ``source`` as above; ``"hdf5"`` / ``"minari"`` force a
            loader (a Minari id may then be given without the prefix).
        expected_obs_dim: observation size the task needs (None: unchecked).
        expected_act_dim: action size the task needs (None: unchecked).

    Raises:
        DatasetError: invalid ``fmt``, an unrecognised source, or any loader error.
    """
    allowed = get_args(DatasetFormat)
    if fmt not in allowed:
        raise DatasetError(f"fmt={fmt!r} is not supported; use one of {list(allowed)}.")
    if fmt == "auto":
        kind, target = _resolve_format(source)
    else:
        kind, target = fmt, str(source).removeprefix(MINARI_PREFIX) if fmt == "minari" else source
    if kind == "hdf5":
        return load_hdf5(target, expected_obs_dim=expected_obs_dim, expected_act_dim=expected_act_dim)
    return load_minari(target, expected_obs_dim=expected_obs_dim, expected_act_dim=expected_act_dim)
