"""Where the tokens are, for the student forms that do not add learned positions to the embeddings: rotary
positions with global or sliding-window recursions (``modernbert`` form), and DeBERTa's relative-position buckets
and disentangled scores (``deberta`` form). Ships with every export, next to ``modeling_minialbert.py``.
"""

from __future__ import annotations

import torch

from .configuration_minialbert import MiniAlbertConfig


def rotary_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (…, L, d) of rotary positions (RoFormer; the half-split layout ModernBERT and Llama use):
    ``positions`` (L,) or (B, L)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float) / head_dim))
    freqs = positions[..., None].float() * inv_freq  # (…, L, d/2)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, d) query or key heads turned by their positions' angles (computed in fp32)."""
    if cos.dim() == 3:  # per-row positions (B, L, d)
        cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    xf = x.float()
    turned = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos + turned * sin).to(x.dtype)


def log_bucket(relative: torch.Tensor, span: int, max_position: int) -> torch.Tensor:
    """DeBERTa's relative-position buckets: distances within span/2 as they are, farther ones on a log scale up
    to ``max_position`` (``max_position`` <= 0: no buckets)."""
    if span <= 0 or max_position <= 0:
        return relative
    sign, mid = torch.sign(relative), span // 2
    near = (relative < mid) & (relative > -mid)
    absolute = torch.where(near, torch.tensor(mid - 1).type_as(relative), relative.abs())
    log_pos = torch.ceil(torch.log(absolute / mid) / torch.log(torch.tensor((max_position - 1) / mid)) * (mid - 1)) + mid
    return torch.where(absolute <= mid, relative.type_as(log_pos), log_pos * sign).long()


def relative_indices(seq: int, config: MiniAlbertConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, L) rows of the 2·span relative embeddings that query i reads for key j: content->position
    (r(i - j) + span) and position->content (span - r(j - i)), clamped to the table, as DeBERTa gathers them."""
    pos = torch.arange(seq, device=device)
    span = config.relative_span
    r = log_bucket(pos[:, None] - pos[None, :], span, config.max_relative_positions)  # (L, L): r(i - j)
    return (r + span).clamp(0, 2 * span - 1), (span - r.T).clamp(0, 2 * span - 1)


def recursion_positions(config: MiniAlbertConfig, x: torch.Tensor, key_mask: torch.Tensor | None,
                        position_ids: torch.Tensor | None) -> list[tuple] | None:
    """``modernbert`` form: per recursion (key mask, rotary (cos, sin), window) for hidden states ``x`` (B, L, H)
    — a local recursion's mask keeps keys with |i - j| <= local_window, its rotary base is local_rope_theta. None
    for the other forms."""
    c = config
    if c.layer_form != "modernbert":
        return None
    seq = x.shape[1]
    positions = torch.arange(seq, device=x.device) if position_ids is None else position_ids
    head_dim = c.hidden_size // c.num_attention_heads
    local = set(c.local_recursions)
    thetas = {c.local_rope_theta if i in local else c.rope_theta for i in range(c.num_recursions)}
    rotary = {theta: rotary_tables(positions, head_dim, theta, x.dtype) for theta in thetas}
    local_mask = None
    if local:
        pos = torch.arange(seq, device=x.device)
        band = ((pos[:, None] - pos[None, :]).abs() <= c.local_window)[None, None]  # (1, 1, L, L)
        # A padded query whose window holds no real key still sees itself: no row is empty (no NaN anywhere).
        local_mask = band if key_mask is None else (band & key_mask) | torch.eye(seq, dtype=torch.bool,
                                                                                 device=x.device)
    return [(local_mask, rotary[c.local_rope_theta], c.local_window) if i in local
            else (key_mask, rotary[c.rope_theta], None) for i in range(c.num_recursions)]


def disentangled_scores(q: torch.Tensor, k: torch.Tensor, pos_query: torch.Tensor | None,
                        pos_key: torch.Tensor | None, c2p_index: torch.Tensor, p2c_index: torch.Tensor
                        ) -> torch.Tensor:
    """(B, heads, L, L) unscaled content->position (q_i · pos_key[c2p(i, j)]) + position->content
    (k_j · pos_query[p2c(i, j)]) scores, as DeBERTa gathers them; ``pos_query`` / ``pos_key`` (heads, 2·span, d)
    are the relative embeddings through the recursion's query and key maps (None: that term is off)."""
    b, heads, seq, _ = q.shape
    scores = q.new_zeros((b, heads, seq, seq))
    if pos_key is not None:
        c2p = q @ pos_key.transpose(-1, -2)  # (B, heads, L, 2·span)
        scores = scores + c2p.gather(-1, c2p_index.expand(b, heads, seq, seq))
    if pos_query is not None:
        p2c = k @ pos_query.transpose(-1, -2)  # (B, heads, L keys, 2·span)
        scores = scores + p2c.gather(-1, p2c_index.T.expand(b, heads, seq, seq)).transpose(-1, -2)
    return scores
