"""What the passes of every backend read out of a forward pass, model-independent
(docs/method.md §2, §6): the scan's per-document maximum, next-token probabilities, and which
heads each row ablates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def doc_max(post: Float[Tensor, "batch pos d_mlp"], lengths: Int[Tensor, " batch"]
            ) -> tuple[Float[Tensor, "batch d_mlp"], Int[Tensor, "batch d_mlp"]]:
    """The scan's reduction of one layer (docs/method.md §2): per row, the max of ``hook_post``
    over its real positions after BOS (``1 .. length - 1``) and the position of that max,
    float32; ``-inf`` and 0 for a row with no token after BOS. Row by row, so no masked copy of
    ``post`` is made (at 1,024 tokens and batch 16 that copy was as large as the MLP's own
    activations)."""
    vals = torch.full((post.shape[0], post.shape[2]), float("-inf"), device=post.device)
    idxs = torch.zeros(post.shape[0], post.shape[2], dtype=torch.long, device=post.device)
    for j, n in enumerate(lengths.tolist()):
        if n > 1:
            v, i = post[j, 1:n].max(dim=0)
            vals[j], idxs[j] = v.float(), i + 1
    return vals, idxs


def probabilities(logits: Float[Tensor, "batch d_vocab"], targets: Sequence[tuple], top_n: int
                  ) -> tuple[Float[Tensor, " batch"], list[list[tuple[int, float]]]]:
    """Softmax (float64) of each row's logits at its target position: the probability of the
    row's token (0 when it has none) and the ``top_n`` most probable tokens ``[(id, prob)]``."""
    probs = logits.double().softmax(-1)
    tok = torch.tensor([int(t[2]) if len(t) > 2 and t[2] is not None else 0 for t in targets],
                       device=probs.device)
    v, i = probs.topk(min(top_n, probs.shape[-1]), dim=-1)
    return (probs[torch.arange(len(tok), device=probs.device), tok],
            [list(zip(i[j].tolist(), v[j].tolist(), strict=True)) for j in range(len(tok))])


def head_mask(ablate: Sequence[Sequence[tuple[int, int]]], layer: int, n_heads: int,
              device: torch.device) -> Bool[Tensor, "batch n_heads"]:
    """Which heads of ``layer`` each row ablates."""
    mask = torch.zeros(len(ablate), n_heads, dtype=torch.bool, device=device)
    for j, hs in enumerate(ablate):
        for k, h in hs:
            if int(k) == layer:
                mask[j, int(h)] = True
    return mask
