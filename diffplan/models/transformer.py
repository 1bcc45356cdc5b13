"""Transformer denoiser with a noise level per token (Diffusion Forcing, Chen et al. 2024).

A drop-in alternative to :class:`~diffplan.models.unet.TemporalUnet`: input x_t (B, H, D) and
normalized noise levels (B, H) in [0, 1], optional return condition; output (B, H, D).

* Tokens: ``frame_stack`` = k consecutive timesteps form one token (the horizon must be a
  multiple of k). Their channels are concatenated, (B, H / k, k D), and linearly embedded.
* Levels: each timestep's level goes through the U-Net's level embedding (sinusoidal ->
  MLP, :func:`~diffplan.models.unet.make_level_embedding`); the k embeddings of a token are
  concatenated and projected to ``d_model``, then added to the token embedding. Timesteps of
  one token may therefore carry different levels (as the pyramid scheduling matrices give
  them) and none is lost; with k = 1 this is the plain per-token embedding.
* Positions: sinusoidal (Vaswani et al. 2017) of the token index, computed on the fly, so any
  horizon H' (a multiple of k) runs, not only the training one.
* Blocks: pre-norm (LayerNorm -> multi-head self-attention through
  :func:`torch.nn.functional.scaled_dot_product_attention`, LayerNorm -> GELU MLP of width
  4 d_model), residual connections, no dropout. ``causal`` makes token t attend to tokens
  <= t only (timesteps within one stacked token see each other); otherwise bidirectional.
* Output: a final LayerNorm and a linear projection back to k D channels per token, unstacked
  to (B, H, D). The output layer is *not* zero-initialised: it keeps the standard init so the
  output depends on the inputs and levels from the start (zero-init helps epsilon prediction
  at the start of training, but the project's default is x0 prediction).
* Return condition (``return_condition``): as in the U-Net, an MLP of the scalar is added to
  every token's level embedding; a learned null embedding (initialised at zero) stands for "no
  condition" and replaces it where ``drop`` is set (classifier-free guidance).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffplan.models.unet import embed_condition, make_level_embedding


def sinusoidal_positions(length: int, dim: int, *, device: torch.device | None = None) -> Tensor:
    """Sinusoidal position features (length, dim) of the indices 0..length-1 (Vaswani et al. 2017)."""
    if dim % 2:
        raise ValueError(f"position embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=device, dtype=torch.float32) / half)
    args = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(-1) * freqs  # (L, half)
    return torch.cat([args.sin(), args.cos()], dim=-1)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + mlp(LN(x))``.

    Args:
        d_model: token width.
        n_heads: attention heads; must divide ``d_model``.
        causal: token t attends to tokens <= t only.
        mlp_ratio: hidden width of the MLP in multiples of ``d_model``.
    """

    def __init__(self, d_model: int, n_heads: int, *, causal: bool, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.causal = causal
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(), nn.Linear(mlp_ratio * d_model, d_model)
        )

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, d_model) -> (B, L, d_model)."""
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        # (B, L, d) -> (B, heads, L, d / heads)
        q, k, v = (t.reshape(batch, length, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.norm2(x))


class TrajectoryTransformer(nn.Module):
    """Transformer denoiser over trajectory tokens with per-token noise levels.

    Same interface as :class:`~diffplan.models.unet.TemporalUnet` (see the module docstring).

    Args:
        transition_dim: D, channels per timestep.
        horizon: H used in training (checked against ``frame_stack``); any multiple of
            ``frame_stack`` runs at inference.
        d_model: token width.
        n_layers: transformer blocks.
        n_heads: attention heads; must divide ``d_model``.
        causal: causal (token t sees tokens <= t) or bidirectional self-attention.
        frame_stack: k consecutive timesteps per token; the horizon must be divisible by k.
        level_dim: width of each timestep's level embedding (even).
        return_condition: take a scalar condition per sample (classifier-free guidance);
            off, the network and its state dict hold no condition parameters.
    """

    def __init__(
        self,
        *,
        transition_dim: int,
        horizon: int,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        causal: bool = True,
        frame_stack: int = 1,
        level_dim: int = 32,
        return_condition: bool = False,
    ) -> None:
        super().__init__()
        if frame_stack < 1:
            raise ValueError(f"model.transformer.frame_stack must be >= 1, got {frame_stack}")
        if n_heads < 1 or d_model % n_heads:
            raise ValueError(f"model.transformer.d_model ({d_model}) must be divisible by "
                f"model.transformer.n_heads ({n_heads})")
        if d_model % 2:
            raise ValueError(f"model.transformer.d_model must be even (sinusoidal positions), got {d_model}")
        if n_layers < 1:
            raise ValueError(f"model.transformer.n_layers must be >= 1, got {n_layers}")
        self.transition_dim = transition_dim
        self.frame_stack = frame_stack
        self.d_model = d_model
        self.causal = causal
        self.check_horizon(horizon)
        self.input_proj = nn.Linear(transition_dim * frame_stack, d_model)
        self.level_embedding = make_level_embedding(level_dim)
        self.level_proj = nn.Linear(level_dim * frame_stack, d_model)
        self.return_condition = return_condition
        self.condition_embedding: nn.Module | None = None
        self.null_condition: nn.Parameter | None = None
        if return_condition:
            self.condition_embedding = nn.Sequential(
                nn.Linear(1, d_model), nn.Mish(), nn.Linear(d_model, d_model * 4), nn.Mish(),
                nn.Linear(d_model * 4, d_model),
            )
            self.null_condition = nn.Parameter(torch.zeros(d_model))
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads, causal=causal) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(d_model)
        self.output_proj = nn.Linear(d_model, transition_dim * frame_stack)

    def check_horizon(self, horizon: int) -> None:
        """Raise a ValueError if ``horizon`` is not a positive multiple of ``frame_stack``."""
        if horizon < 1 or horizon % self.frame_stack:
            raise ValueError(
                f"horizon {horizon} must be a positive multiple of model.transformer.frame_stack={self.frame_stack}"
            )

    def forward(
        self, x: Tensor, levels: Tensor, condition: Tensor | None = None, drop: Tensor | None = None
    ) -> Tensor:
        """x (B, H, D), levels (B, H) in [0, 1] -> (B, H, D).

        Args:
            condition: (B,) scalar condition per sample (return-conditioned networks only);
                None means unconditional (the null embedding) for every sample.
            drop: (B,) bool, True where the condition is replaced by the null embedding.
        """
        batch, horizon, channels = x.shape
        self.check_horizon(horizon)
        if channels != self.transition_dim:
            raise ValueError(f"expected {self.transition_dim} channels per timestep, got {channels}")
        k = self.frame_stack
        n_tokens = horizon // k
        levels = levels.expand(batch, horizon)
        h = self.input_proj(x.reshape(batch, n_tokens, k * channels))  # (B, L, d)
        level_features = self.level_embedding(levels)  # (B, H, E)
        h = h + self.level_proj(level_features.reshape(batch, n_tokens, -1))
        if self.condition_embedding is not None and self.null_condition is not None:
            h = h + self._condition(condition, drop, batch).unsqueeze(1)
        elif condition is not None or drop is not None:
            raise ValueError("this network was built without model.return_condition; it takes no condition")
        h = h + sinusoidal_positions(n_tokens, self.d_model, device=x.device).to(h.dtype)
        for block in self.blocks:
            h = block(h)
        out = self.output_proj(self.final_norm(h))  # (B, L, k D)
        return out.reshape(batch, horizon, channels)

    def _condition(self, condition: Tensor | None, drop: Tensor | None, batch: int) -> Tensor:
        """(B, d_model) condition embedding (see :func:`diffplan.models.unet.embed_condition`)."""
        assert self.condition_embedding is not None and self.null_condition is not None
        return embed_condition(self.condition_embedding, self.null_condition, condition, drop, batch)
