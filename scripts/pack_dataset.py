"""Pack a dataset's training keys into a compact file, and unpack it back into a D4RL-layout file.

For moving a dataset to a machine with a transfer limit (this project's GPU machine takes 64 MiB;
walker2d-medium is 296 MB): keeps observations, actions, rewards, terminals, timeouts and the
root ``metadata`` attribute, drops next_observations and infos/*, stores floats as float16
(relative rounding error below 5e-4), then byte-shuffles and deflates each array. Unpacking
writes float32 arrays and adds ``"packed": {"source": ..., "source_sha256": ..., "float_dtype":
"float16"}`` to the metadata, so every run trained on the copy says what it was trained on.

    python scripts/pack_dataset.py pack data/walker2d-medium.hdf5 .devdata/walker2d-medium.pack.npz
    python scripts/pack_dataset.py unpack .devdata/walker2d-medium.pack.npz data/walker2d-medium.hdf5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np

from diffplan.data.hdf5 import write_hdf5
from diffplan.utils import atomic_path

KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _shuffle(array: np.ndarray) -> bytes:
    """Bytes grouped by significance (all first bytes, then all second bytes ...): deflates better."""
    raw = np.ascontiguousarray(array).view(np.uint8).reshape(array.size, array.itemsize)
    return np.ascontiguousarray(raw.T).tobytes()


def _unshuffle(blob: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    raw = np.frombuffer(blob, dtype=np.uint8).reshape(dtype.itemsize, count)
    return np.ascontiguousarray(raw.T).view(dtype).reshape(shape)


def pack(source: Path, target: Path) -> None:
    """Write ``target`` (.npz) from the HDF5 file ``source``."""
    with h5py.File(source, "r") as handle:
        missing = [key for key in KEYS if key not in handle]
        if missing:
            raise SystemExit(f"{source}: missing keys {missing}; pack needs {list(KEYS)}")
        metadata = json.loads(handle.attrs.get("metadata", "{}"))
        arrays = {key: handle[key][:] for key in KEYS}
    header: dict[str, object] = {"metadata": metadata, "source": str(source), "source_sha256": _sha256(source),
                                 "arrays": {}}
    blobs: dict[str, np.ndarray] = {}
    for key, array in arrays.items():
        stored = array.astype(np.float16) if array.dtype.kind == "f" else array.astype(bool)
        if stored.dtype == np.float16 and not np.isfinite(stored[np.isfinite(array)]).all():
            raise SystemExit(f"{source}: {key} has values beyond float16's range (65504); it cannot be packed")
        header["arrays"][key] = {"dtype": str(stored.dtype), "shape": list(stored.shape)}  # type: ignore[index]
        blobs[key] = np.frombuffer(zlib.compress(_shuffle(stored), 6), dtype=np.uint8)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp_path, open(tmp_path, "wb") as handle:
        np.savez(handle, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **blobs)


def unpack(source: Path, target: Path) -> None:
    """Write the D4RL-layout HDF5 file ``target`` from a file made by :func:`pack`."""
    with np.load(source) as packed:
        header = json.loads(packed["header"].tobytes())
        arrays = {}
        for key, spec in header["arrays"].items():
            array = _unshuffle(zlib.decompress(packed[key].tobytes()), np.dtype(spec["dtype"]), tuple(spec["shape"]))
            arrays[key] = array.astype(np.float32) if array.dtype.kind == "f" else array
    metadata = {**header["metadata"],
                "packed": {"source": header["source"], "source_sha256": header["source_sha256"],
                           "float_dtype": "float16"}}
    write_hdf5(target, arrays, metadata)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["pack", "unpack"])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args(argv)
    if not args.source.is_file():
        raise SystemExit(f"{args.source}: no such file")
    (pack if args.command == "pack" else unpack)(args.source, args.target)
    print(f"{args.command}: {args.source} ({args.source.stat().st_size / 1e6:.1f} MB) -> "
          f"{args.target} ({args.target.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
