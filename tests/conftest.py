"""Shared test setup: tiny models run fastest on one thread (and CI boxes are shared)."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
