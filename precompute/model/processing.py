"""TransformerLens' own weight processing, one part of a model at a time (docs/method.md §1, §3).

``TransformerBridge.enable_compatibility_mode()`` processes the whole model's weights with
``ProcessWeights.process_weights`` (fold_ln, center_writing_weights, center_unembed,
fold_value_biases), keeping a processed copy next to the Hugging Face one. A fast backend keeps
only the Hugging Face weights and runs the same function on one block (or the unembedding) at
a time, given in TransformerLens format (``ln1.w``, ``attn.W_Q [n_heads, d_model, d_head]``,
``mlp.W_in [d_model, d_mlp]``, ...; views of the Hugging Face tensors). Every step of that
processing is local to a block's attention with the norm before it, to its MLP with its norm,
or to the unembedding with the final norm, so a part processed alone equals the same part
processed with the whole model; ``tests/model/test_backend_equality.py`` checks this against the
bridge's weights.
The embedding, positional embedding and unembedding that ``process_weights`` expects in every
state dict are given as one-row zero stand-ins when they are not the part processed (zeros
stay zeros under centring), and dropped from the result.

For an RMSNorm model (Llama, Qwen2, Mistral) ``process_weights`` folds only the norm's weight
(an RMSNorm has no bias and does not centre), and centres no writing weight
(:func:`centres_writes`); the unembedding is still centred over the vocabulary. With grouped-query
attention the key and value weights are ``attn._W_K``, ``attn._W_V`` (``[n_kv_heads, d_model,
d_head]``) and their biases ``attn._b_K``, ``attn._b_V``, TransformerLens' names for them.
"""

from __future__ import annotations

import copy

import torch
from jaxtyping import Float
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
    if not any(".mlp." in k for k in state):  # an attention half: no MLP for a parallel block's norm
        part.parallel_attn_mlp = False       # to fold into (TransformerLens would look for one)
    return ProcessWeights.process_weights({k: v.detach() for k, v in state.items()}, part)


def centres_writes(cfg) -> bool:
    """Whether ``process_weights`` centres the weights that write to the residual stream
    (``W_O``, ``b_O``, ``W_out``, ``W_E``) over ``d_model``: for a LayerNorm model only (the norm
    removes the mean anyway), never for RMSNorm, which does not. The same condition as
    TransformerLens' own."""
    return cfg.normalization_type in ("LN", "LNPre") and not getattr(cfg, "final_rms", False)


def kv_prefix(cfg) -> str:
    """``"_"`` when TransformerLens names the key/value weights of ``cfg`` ``_W_K``/``_W_V``
    (grouped-query attention: ``n_key_value_heads`` set), else ``""``."""
    return "" if getattr(cfg, "n_key_value_heads", None) is None else "_"


def put(out: dict, key: str, t: Float[Tensor, "*shape"] | None) -> None:
    """``out[key] = t`` unless the model has no such tensor (a bias-free projection): a
    TransformerLens-format block holds only the biases the model has."""
    if t is not None:
        out[key] = t


def process_block(cfg, block: dict[str, Tensor]) -> dict[str, Tensor]:
    """The processed weights of one block, or of a part of it (its attention with ``ln1``, its MLP
    with ``ln2``). ``block``: TransformerLens-format tensors without the ``blocks.{l}.`` prefix
    (``ln1.w``, ``ln1.b``, ``attn.W_Q``, ..., ``mlp.b_out``);
    ``cfg``: the model's TransformerLens config. Returns the same keys, processed, float32.

    Besides the processed tensors, ``"attn.b_V_folded"`` is the value bias after folding the
    first norm's bias into it and before ``fold_value_biases`` moves it into ``b_O``, per query
    head (``[n_heads, d_head]``; a kv head's bias repeated for each query head that reads it):
    what a plain model's per-head ``z`` holds beyond the processed ``hook_z`` (attention weights
    sum to one). Zeros for a model without value biases."""
    from transformer_lens.weight_processing import ProcessWeights

    dev = next(iter(block.values())).device
    state = {f"blocks.0.{k}": v for k, v in block.items()} | _standins(cfg, dev)
    out = _process(cfg, state, 1)
    res = {k[len("blocks.0."):]: v.float() for k, v in out.items() if k.startswith("blocks.0.")}
    if "attn.W_O" not in block:  # an MLP half
        return res
    kv = kv_prefix(cfg)
    b_v = block.get(f"attn.{kv}b_V")
    n_kv = block[f"attn.{kv}W_V"].shape[0]
    b_v = torch.zeros(n_kv, cfg.d_head, device=dev) if b_v is None else b_v.detach().float()
    if block.get("ln1.b") is not None and cfg.normalization_type in ("LN", "LNPre"):
        b_v = ProcessWeights.fold_layer_norm_bias_single(block[f"attn.{kv}W_V"].detach().float(), b_v,
                                                         block["ln1.b"].detach().float())
    res["attn.b_V_folded"] = b_v.repeat_interleave(cfg.n_heads // n_kv, dim=0)
    return res


def process_unembed(cfg, unembed: dict[str, Tensor]) -> Float[Tensor, "d_model d_vocab"]:
    """The processed unembedding ``W_U [d_model, d_vocab]`` (float32) from ``ln_final.w``,
    ``ln_final.b``, ``unembed.W_U`` (``[d_model, d_vocab]``) and ``unembed.b_U``."""
    dev = unembed["unembed.W_U"].device
    out = _process(cfg, {k: v for k, v in _standins(cfg, dev).items() if k != "unembed.W_U"} | unembed, 0)
    return out["unembed.W_U"].float()
