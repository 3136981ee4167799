"""Token rows into forward passes: tokenizing with BOS, right padding, and cutting rows into
batches (docs/method.md §2). Model-independent: every backend pads and batches the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from jaxtyping import Int
from torch import Tensor


def batches(items: Iterable, size: int):
    """Consecutive lists of ``size`` items (the last may be shorter) from any iterable,
    without materialising it: the scan's memory does not grow with the corpus."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def tokenize_batch(model, texts: Sequence[str], context_tokens: int) -> list[list[int]]:
    """BOS + the first ``context_tokens - 1`` tokens of each text (docs/method.md §2)."""
    enc = model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [[model.bos_token_id] + ids[:context_tokens - 1] for ids in enc]


def pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str | None = None
        ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, " batch"]]:
    """Right-pad token rows (on ``device``). Causal attention means real positions never see
    padding, so no attention mask is needed; returns the padded tensor and each row's length."""
    n = max(len(r) for r in rows)
    out = torch.full((len(rows), n), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows])
    return (out.to(device), lengths.to(device)) if device is not None else (out, lengths)


def length_batches(lengths: Sequence[int], max_tokens: int, max_rows: int,
                   pass_cost: int = 64) -> list[list[int]]:
    """Indices of rows grouped into batches of similar length, each at most ``max_rows`` rows
    and ``max_tokens`` padded tokens, that minimise the padded tokens computed plus
    ``pass_cost`` tokens per pass (a forward pass's fixed cost: the weights read once, Python
    and kernel launches; ~64 tokens on a CPU for the embedded model and GPT-2 small alike).

    Rows are sorted longest first (ties by index) and cut into consecutive batches by dynamic
    programming, O(len(lengths) * max_rows): a few short rows are not padded to the longest
    row of the step, and many equal rows still share one pass. A row longer than
    ``max_tokens`` gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda j: (-lengths[j], j))
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[i]: cost of the first i rows (in `order`)
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        for j in range(i - 1, max(-1, i - 1 - max_rows), -1):  # batch order[j:i], longest order[j]
            if i - j > 1 and lengths[order[j]] * (i - j) > max_tokens:
                break
            c = best[j] + lengths[order[j]] * (i - j) + pass_cost
            if c < best[i]:
                best[i], cut[i] = c, j
    out, i = [], n
    while i > 0:
        out.append(order[cut[i]:i])
        i = cut[i]
    return out[::-1]
