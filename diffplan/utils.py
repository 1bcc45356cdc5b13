"""Small shared helpers: devices, threads, hashing, provenance."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

T = TypeVar("T")


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda when present, else cpu; anything else is passed to torch.device.

    On CUDA, float32 matrix products and convolutions may use TF32 tensor cores (about 8x the
    float32 rate on Ampere and later, 10-bit mantissa products with float32 accumulation):
    the networks here are trained and sampled in that mode. cuDNN's autotuner stays off, since
    its choice of algorithm can change from run to run and with it the results.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was requested but CUDA is not available; use device=auto or cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def set_threads(threads: int) -> None:
    """Set torch's intra-op threads (0 leaves torch's default: one per core)."""
    if threads > 0:
        torch.set_num_threads(threads)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git_revision(cwd: str | Path | None = None) -> str:
    """The checkout's commit (with ``-dirty`` when it has uncommitted changes), or ``unknown``."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    """The CPU's model name (Linux), else the machine type."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info() -> dict[str, Any]:
    """What ran this: CPU, core count, GPU name, library versions."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    Writers use it so an interruption never leaves a truncated file under the final name:
    the old file (if any) stays intact until the new one is complete. The result gets the
    usual permissions (0666 minus the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_writable_folder(folder: str | Path, key: str) -> Path:
    """Create ``folder`` if needed and check that a file can be written in it, before any work
    whose results would go there is done.

    Raises:
        OSError: naming ``key`` (the setting or option that chose the folder), the folder and
            the reason: a file in the way, a read-only folder, a full disk.
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{key}={path} is a file, not a folder; choose another {key}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as error:
        raise OSError(f"{key}={path} cannot be written ({error.strerror or error}); choose a writable {key}") from error
    return path


class Registry(Generic[T]):
    """Named extension points (denoisers, guidance rules and kinds, target-policy loaders): items
    registered by name, looked up with one-line errors that name the setting, the registered names
    and how to add one.

    Args:
        what: what an item is, for messages (``"denoiser"``).
        key: the setting that names an item (``"model.name"``).
        register_with: the function that registers one (``"diffplan.models.register_denoiser"``).
    """

    def __init__(self, what: str, key: str, register_with: str) -> None:
        self.what = what
        self.key = key
        self.register_with = register_with
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T, *, replace: bool = False) -> T:
        """Register ``item`` as ``name``; returns it.

        Raises:
            ValueError: ``name`` is empty or registered already and not ``replace``.
        """
        if not name:
            raise ValueError(f"a {self.what} needs a non-empty name")
        if name in self._items and not replace:
            raise ValueError(f"{self.what} {name!r} is registered already; pass replace=True to override it")
        self._items[name] = item
        return item

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def copy(self) -> Registry[T]:
        """A registry with the same items (for a test that registers something temporarily)."""
        out = Registry[T](self.what, self.key, self.register_with)
        out._items = dict(self._items)
        return out

    def get(self, name: str, *, key: str | None = None) -> T:
        """The item registered as ``name``.

        Raises:
            ValueError: none is, naming ``key`` (default the registry's), the registered names and the fix.
        """
        if name not in self._items:
            raise ValueError(f"{key or self.key}={name} is not a registered {self.what}; use one of "
                             f"{', '.join(self._items)}, or register it with {self.register_with} in a module "
                             "listed in plugins=[...]")
        return self._items[name]
