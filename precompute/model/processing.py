"""TransformerLens' own weight processing, one part of a model at a time (docs/method.md §1, §3).

``TransformerBridge.enable_compatibility_mode()`` processes the whole model's weights with
``ProcessWeights.process_weights`` (fold_ln, center_writing_weights, center_unembed,
fold_value_biases), keeping a processed copy next to the Hugging Face one. A fast backend keeps
only the Hugging Face weights and runs the same function on one block (or the unembedding) at
a time, given in TransformerLens format (``ln1.w``, ``attn.W_Q [n_heads, d_model, d_head]``,
``mlp.W_in [d_model, d_mlp]``, ...; views of the Hugging Face tensors). Every step of that
processing is local to a block's attention with the norm before it, to its MLP with its norm,
or to the unembedding with the final norm, so a part processed alone equals the same part
processed with the whole model; ``tests/test_backend_equality.py`` checks this against the bridge's weights.
The embedding, positional embedding and unembedding that ``process_weights`` expects in every
state dict are given as one-row zero stand-ins when they are not the part processed (zeros
stay zeros under centring), and dropped from the result.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor


def _standins(cfg, device) -> dict[str, Tensor]:
    out = {"embed.W_E": torch.zeros(1, cfg.d_model, device=device),
           "unembed.W_U": torch.zeros(cfg.d_model, 1, device=device)}
    if cfg.positional_embedding_type not in ("rotary", "alibi", "none"):
        out["pos_embed.W_pos"] = torch.zeros(1, cfg.d_model, device=device)
    return out


def _process(cfg, state: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    from transformer_lens.weight_processing import ProcessWeights

    part = copy.copy(cfg)
    part.n_layers = n_layers
    return ProcessWeights.process_weights({k: v.detach() for k, v in state.items()}, part)


def process_block(cfg, block: dict[str, Tensor]) -> dict[str, Tensor]:
    """The processed weights of one block, or of a part of it (its attention with ``ln1``, its MLP
    with ``ln2``). ``block``: TransformerLens-format tensors without the ``blocks.{l}.`` prefix
    (``ln1.w``, ``ln1.b``, ``attn.W_Q``, ..., ``mlp.b_out``);
    ``cfg``: the model's TransformerLens config. Returns the same keys, processed, float32.

    Besides the processed tensors, ``"attn.b_V_folded"`` is the value bias after folding the
    first norm's bias into it and before ``fold_value_biases`` moves it into ``b_O``
    (``[n_heads, d_head]``): what a plain model's per-head ``z`` holds beyond the processed
    ``hook_z`` (attention weights sum to one)."""
    from transformer_lens.weight_processing import ProcessWeights

    dev = next(iter(block.values())).device
    state = {f"blocks.0.{k}": v for k, v in block.items()} | _standins(cfg, dev)
    out = _process(cfg, state, 1)
    res = {k[len("blocks.0."):]: v.float() for k, v in out.items() if k.startswith("blocks.0.")}
    b_v = block.get("attn.b_V")
    b_v = torch.zeros(cfg.n_heads, cfg.d_head, device=dev) if b_v is None else b_v.detach().float()
    if block.get("ln1.b") is not None and cfg.normalization_type in ("LN", "LNPre"):
        b_v = ProcessWeights.fold_layer_norm_bias_single(block["attn.W_V"].detach().float(), b_v,
                                                         block["ln1.b"].detach().float())
    res["attn.b_V_folded"] = b_v
    return res


def process_unembed(cfg, unembed: dict[str, Tensor]) -> Tensor:
    """The processed unembedding ``W_U [d_model, d_vocab]`` (float32) from ``ln_final.w``,
    ``ln_final.b``, ``unembed.W_U`` (``[d_model, d_vocab]``) and ``unembed.b_U``."""
    dev = unembed["unembed.W_U"].device
    out = _process(cfg, {k: v for k, v in _standins(cfg, dev).items() if k != "unembed.W_U"} | unembed, 0)
    return out["unembed.W_U"].float()
