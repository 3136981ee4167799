"""The fast backend of GPT-NeoX and Pythia (``GPTNeoXForCausalLM``; docs/method.md §1-§3, §6,
§10): the module map of :class:`~precompute.model.fast.FastBackend` and the weights in
TransformerLens format.

What sets the family apart, and where the method meets it:

* **Parallel attention and MLP** (``use_parallel_residual``, Pythia's default): the MLP's
  LayerNorm (``post_attention_layernorm``) reads the block's input, so the same layer's heads
  are not upstream of its neurons (``Dims.parallel_attn_mlp``, ``upstream_attn_layers``). The
  sequential variant runs through the same code with the same-layer heads upstream.
* **Fused, per-head interleaved QKV**: ``query_key_value`` has ``[q_h, k_h, v_h]`` for each head
  in turn (``[n_heads, 3 * d_head]`` per position), not ``[Q | K | V]`` as GPT-2's ``c_attn``.
* **Partial rotary positions** (``rotary_pct``): the first ``rotary_ndims`` of each head's query
  and key dimensions are rotated; nothing is added to the residual stream, so there is no
  ``pos_embed`` component in the LN-aware decomposition.
* **Untied unembedding** (``embed_out``/``lm_head``), with the final LayerNorm folded in.
"""

from __future__ import annotations

import sys

import torch
from jaxtyping import Float
from torch import Tensor

from context_lookups.precompute.model.fast import Block, FastBackend
from context_lookups.precompute.model.processing import put


class NeoXBackend(FastBackend):
    """:class:`~precompute.model.fast.FastBackend` of a Hugging Face ``GPTNeoXForCausalLM``."""

    family = "gpt-neox"

    def _layers(self):
        return self.hf.gpt_neox.layers

    def _blocks(self) -> list[Block]:
        return [Block(ln2=h.post_attention_layernorm, attn_o=h.attention.dense, mlp=h.mlp,
                      mlp_in=h.mlp.dense_h_to_4h, mlp_out=h.mlp.dense_4h_to_h,
                      qkv=h.attention.query_key_value, attn=h.attention) for h in self._layers()]

    def _embeddings(self):
        return self.hf.gpt_neox.embed_in, None

    def tl_block(self, layer: int) -> dict[str, Tensor]:
        h = self._layers()[layer]
        H, D, d = self.dims.n_heads, self.dims.d_head, self.dims.d_model
        qkv = h.attention.query_key_value
        W = qkv.weight.view(H, 3, D, d)  # nn.Linear [3 * d_model, d_model], per head [q; k; v]
        out = {"ln1.w": h.input_layernorm.weight, "ln2.w": h.post_attention_layernorm.weight,
               "attn.W_O": self.W_O_plain(layer), "mlp.W_in": h.mlp.dense_h_to_4h.weight.T,
               "mlp.W_out": h.mlp.dense_4h_to_h.weight.T}
        put(out, "ln1.b", h.input_layernorm.bias)
        put(out, "ln2.b", h.post_attention_layernorm.bias)
        put(out, "attn.b_O", h.attention.dense.bias)
        put(out, "mlp.b_in", h.mlp.dense_h_to_4h.bias)
        put(out, "mlp.b_out", h.mlp.dense_4h_to_h.bias)
        for j, n in enumerate("QKV"):
            out[f"attn.W_{n}"] = W[:, j].transpose(1, 2)  # [n_heads, d_model, d_head]
            if qkv.bias is not None:
                out[f"attn.b_{n}"] = qkv.bias.view(H, 3, D)[:, j]
        return out

    def tl_unembed(self) -> dict[str, Tensor]:
        ln = self.hf.gpt_neox.final_layer_norm
        out = {"ln_final.w": ln.weight, "unembed.W_U": self.head.weight.T,
               "unembed.b_U": torch.zeros(self.dims.d_vocab, device=self.device)}
        put(out, "ln_final.b", ln.bias)
        put(out, "unembed.b_U", getattr(self.head, "bias", None))
        return out

    def W_O_plain(self, layer: int) -> Float[Tensor, "n_heads d_head d_model"]:
        H, D, d = self.dims.n_heads, self.dims.d_head, self.dims.d_model
        return self.blocks[layer].attn_o.weight.view(d, H, D).permute(1, 2, 0)

    def _values(self, layer: int, qkv_out: Tensor) -> Float[Tensor, "batch pos n_heads d_head"]:
        D = self.dims.d_head
        return qkv_out.unflatten(-1, (self.dims.n_heads, 3 * D))[..., 2 * D:]

    def _qkv(self, layer: int, hidden: Tensor, position_embeddings):
        D = self.dims.d_head
        attn = self.blocks[layer].attn
        q, k, v = attn.query_key_value(hidden).unflatten(-1, (self.dims.n_heads, 3 * D)).split(D, dim=-1)
        rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb  # partial: cos has rotary_ndims
        q, k = rotary(q, k, *position_embeddings, unsqueeze_dim=2)
        return q, k, v
