"""The fast backend of Llama-style models (``LlamaForCausalLM``, ``Qwen2ForCausalLM``,
``MistralForCausalLM``; SmolLM and TinyLlama are Llama configs; docs/method.md §1-§3, §6, §10):
the module map of :class:`~precompute.model.fast.FastBackend` and the weights in
TransformerLens format.

What sets the family apart, and where the method meets it:

* **RMSNorm** before attention, MLP and unembedding: TransformerLens folds its weight into the
  next weights and centres nothing (an RMSNorm does not remove the mean); the LN-aware score
  divides by the RMS scale ``sqrt(mean(x²) + eps)`` without centring (``norm_read``).
* **Gated MLP** (SwiGLU): ``hook_post = act(x W_gate + b_gate) * (x W_in + b_in)``, the input
  of ``down_proj`` (``W_out``); ``hook_pre`` is the gate's pre-activation (TransformerLens'
  ``GatedMLP``), and head attribution projects on ``W_gate[:, i]`` (``W_pre``; §3 says why).
* **Grouped-query attention** (``num_key_value_heads < num_attention_heads``): query head ``h``
  reads kv head ``h // (n_heads // n_kv_heads)``; ``z``, ``hook_result`` and ablation are per
  query head (§6: a query head is ablated through its own ``z``, never the shared ``v``).
* **Rotary positions**, nothing added to the residual stream (no ``pos_embed`` component).
* Optional biases: Qwen2's ``q/k/v_proj`` have them (folded into ``b_O`` by processing); a
  config's ``attention_bias``/``mlp_bias`` are honoured when present. Tied (SmolLM) or untied
  (Llama 2, Qwen2, Mistral) unembedding alike.
"""

from __future__ import annotations

import sys

import torch
from jaxtyping import Float
from torch import Tensor

from context_lookups.precompute.model.fast import Block, FastBackend
from context_lookups.precompute.model.processing import kv_prefix, put


class LlamaBackend(FastBackend):
    """:class:`~precompute.model.fast.FastBackend` of a Hugging Face Llama, Qwen2 or Mistral."""

    family = "llama"

    def __init__(self, hf: torch.nn.Module, cfg, *, pad_id: int, architecture: str = "LlamaForCausalLM"):
        self.family = {"Qwen2ForCausalLM": "qwen2", "MistralForCausalLM": "mistral"}.get(architecture,
                                                                                         "llama")
        super().__init__(hf, cfg, pad_id=pad_id, architecture=architecture)

    def _layers(self):
        return self.hf.model.layers

    def _blocks(self) -> list[Block]:
        return [Block(ln2=h.post_attention_layernorm, attn_o=h.self_attn.o_proj, mlp=h.mlp,
                      mlp_in=h.mlp.gate_proj, mlp_out=h.mlp.down_proj, qkv=h.self_attn.v_proj,
                      attn=h.self_attn, mlp_up=h.mlp.up_proj) for h in self._layers()]

    def _embeddings(self):
        return self.hf.model.embed_tokens, None

    def _heads(self, lin: torch.nn.Module) -> tuple[Tensor, Tensor | None]:
        """An ``nn.Linear`` onto heads as TransformerLens has it: ``[heads, d_model, d_head]`` and
        the bias ``[heads, d_head]`` (or None)."""
        D, d = self.dims.d_head, self.dims.d_model
        W = lin.weight.view(-1, D, d).transpose(1, 2)
        return W, None if lin.bias is None else lin.bias.view(-1, D)

    def tl_block(self, layer: int) -> dict[str, Tensor]:
        h = self._layers()[layer]
        a, m = h.self_attn, h.mlp
        kv = kv_prefix(self.cfg)
        out = {"ln1.w": h.input_layernorm.weight, "ln2.w": h.post_attention_layernorm.weight,
               "attn.W_O": self.W_O_plain(layer), "mlp.W_in": m.up_proj.weight.T,
               "mlp.W_gate": m.gate_proj.weight.T, "mlp.W_out": m.down_proj.weight.T}
        for n, lin, pre in (("Q", a.q_proj, ""), ("K", a.k_proj, kv), ("V", a.v_proj, kv)):
            W, b = self._heads(lin)
            out[f"attn.{pre}W_{n}"] = W
            put(out, f"attn.{pre}b_{n}", b)
        put(out, "attn.b_O", a.o_proj.bias)
        for n, lin in (("in", m.up_proj), ("gate", m.gate_proj), ("out", m.down_proj)):
            put(out, f"mlp.b_{n}", lin.bias)
        return out

    def tl_unembed(self) -> dict[str, Tensor]:
        b_U = getattr(self.head, "bias", None)
        return {"ln_final.w": self.hf.model.norm.weight, "unembed.W_U": self.head.weight.T,
                "unembed.b_U": b_U if b_U is not None else torch.zeros(self.dims.d_vocab, device=self.device)}

    def W_O_plain(self, layer: int) -> Float[Tensor, "n_heads d_head d_model"]:
        H, D, d = self.dims.n_heads, self.dims.d_head, self.dims.d_model
        return self.blocks[layer].attn_o.weight.view(d, H, D).permute(1, 2, 0)

    def _values(self, layer: int, qkv_out: Tensor) -> Float[Tensor, "batch pos n_heads d_head"]:
        d = self.dims
        v = qkv_out.unflatten(-1, (d.n_kv_heads, d.d_head))
        return v.repeat_interleave(d.n_heads // d.n_kv_heads, dim=-2)

    def _sliding_window(self, layer: int) -> int | None:
        """Qwen2 names a sliding layer's window on the attention; Mistral's is the config's."""
        attn = self.blocks[layer].attn
        if hasattr(attn, "sliding_window"):
            return attn.sliding_window
        return getattr(self.hf.config, "sliding_window", None) if self.family == "mistral" else None

    def _qkv(self, layer: int, hidden: Tensor, position_embeddings):
        attn, D = self.blocks[layer].attn, self.dims.d_head
        q, k, v = (p(hidden).unflatten(-1, (-1, D)) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        q, k = rotary(q, k, *position_embeddings, unsqueeze_dim=2)
        return q, k, v
