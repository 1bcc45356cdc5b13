"""Normalizers: round trips, constant dimensions, checkpoint reload, bad kinds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffplan.data import (
    GaussianNormalizer,
    LimitsNormalizer,
    fit_normalizer,
    normalizer_from_state_dict,
)


def _data() -> np.ndarray:
    """(50, 4): two varying channels, one constant 3.5, one constant 0."""
    rng = np.random.default_rng(0)
    data = np.zeros((50, 4), dtype=np.float32)
    data[:, 0] = rng.normal(2.0, 5.0, size=50)
    data[:, 1] = rng.uniform(-7.0, 3.0, size=50)
    data[:, 2] = 3.5
    return data


@pytest.mark.parametrize("kind", ["gaussian", "limits"])
def test_round_trip(kind: str) -> None:
    data = torch.from_numpy(_data())
    normalizer = fit_normalizer(kind, data.numpy())  # type: ignore[arg-type]
    normalized = normalizer.normalize(data)
    assert normalized.shape == data.shape and normalized.dtype == torch.float32
    assert torch.isfinite(normalized).all()
    torch.testing.assert_close(normalizer.unnormalize(normalized), data, rtol=1e-5, atol=1e-5)
    # batched (B, H, D) input broadcasts over leading axes
    torch.testing.assert_close(normalizer(data.reshape(5, 10, 4)), normalized.reshape(5, 10, 4))


def test_gaussian_statistics_and_constant_dims() -> None:
    normalizer = fit_normalizer("gaussian", _data())
    assert isinstance(normalizer, GaussianNormalizer)
    normalized = normalizer.normalize(torch.from_numpy(_data()))
    torch.testing.assert_close(normalized[:, :2].mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalized[:, :2].std(0, unbiased=False), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalizer.std[2:], torch.ones(2))
    assert (normalized[:, 2:] == 0).all()


def test_limits_range_and_exact_constant_round_trip() -> None:
    data = torch.from_numpy(_data())
    normalizer = fit_normalizer("limits", data.numpy())
    assert isinstance(normalizer, LimitsNormalizer)
    normalized = normalizer.normalize(data)
    assert normalized[:, :2].min() == -1 and normalized[:, :2].max() == 1
    assert (normalized[:, 2:] == 0).all()
    assert torch.equal(normalizer.unnormalize(normalized)[:, 2:], data[:, 2:])


@pytest.mark.parametrize("kind", ["gaussian", "limits"])
def test_state_dict_reload_with_weights_only(tmp_path: Path, kind: str) -> None:
    normalizer = fit_normalizer(kind, _data())  # type: ignore[arg-type]
    torch.save({"normalizer": normalizer.state_dict(), "kind": normalizer.kind}, tmp_path / "ckpt.pt")
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    rebuilt = normalizer_from_state_dict(checkpoint["kind"], checkpoint["normalizer"])
    data = torch.from_numpy(_data())
    assert torch.equal(rebuilt.normalize(data), normalizer.normalize(data))
    assert rebuilt.dim == 4


def test_buffers_follow_the_module() -> None:
    normalizer = fit_normalizer("gaussian", _data())
    assert set(normalizer.state_dict()) == {"mean", "std"}
    assert normalizer.to(torch.float64).mean.dtype == torch.float64


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"kind 'minmax' is not supported.*\['gaussian', 'limits'\]"):
        fit_normalizer("minmax", _data())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"kind 'zscore'.*\['gaussian', 'limits'\]"):
        normalizer_from_state_dict("zscore", {})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"limits normalizer state dict lacks \['mins', 'maxs'\]"):
        normalizer_from_state_dict("limits", fit_normalizer("gaussian", _data()).state_dict())
    with pytest.raises(ValueError, match=r"non-empty \(N, D\) data, got shape \(0, 3\)"):
        fit_normalizer("gaussian", np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"NaN or inf"):
        fit_normalizer("limits", np.array([[np.nan, 1.0]]))
