"""The fast backend of GPT-2 and its kind (``GPT2LMHeadModel``: sequential LayerNorm blocks,
joint ``c_attn``, learned positional embeddings; docs/method.md §1-§3, §6): the module map of
:class:`~precompute.model.fast.FastBackend` and the weights in TransformerLens format.

GPT-2's ``gelu_new`` is eight elementwise kernels in Python; the backend runs the library's
fused ``GELUTanh`` (one ``gelu(approximate="tanh")`` kernel) instead: the same function, equal
to ~2e-7, and 4-5x faster (on the embedded model it cost more than the ``W_in`` matmul).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from context_lookups.precompute.model.fast import Block, FastBackend, Hook
from context_lookups.precompute.model.sources import attention_row, head_dots


class GPT2Backend(FastBackend):
    """:class:`~precompute.model.fast.FastBackend` of a Hugging Face ``GPT2LMHeadModel``."""

    family = "gpt2"

    def __init__(self, hf: torch.nn.Module, cfg, *, pad_id: int, architecture: str = "GPT2LMHeadModel"):
        fuse_gelu(hf)
        super().__init__(hf, cfg, pad_id=pad_id, architecture=architecture)

    def _blocks(self) -> list[Block]:
        return [Block(ln2=h.ln_2, attn_o=h.attn.c_proj, mlp=h.mlp, mlp_in=h.mlp.c_fc, mlp_out=h.mlp.c_proj,
                      qkv=h.attn.c_attn) for h in self.hf.transformer.h]

    def _embeddings(self):
        return self.hf.transformer.wte, self.hf.transformer.wpe

    def tl_block(self, layer: int) -> dict[str, Tensor]:
        h = self.hf.transformer.h[layer]
        H, D, d = self.dims.n_heads, self.dims.d_head, self.dims.d_model
        W, bias = h.attn.c_attn.weight, h.attn.c_attn.bias  # Conv1D: [d_model, 3 * d_model]
        out = {"ln1.w": h.ln_1.weight, "ln1.b": h.ln_1.bias, "ln2.w": h.ln_2.weight, "ln2.b": h.ln_2.bias,
               "attn.W_O": h.attn.c_proj.weight.reshape(H, D, d), "attn.b_O": h.attn.c_proj.bias,
               "mlp.W_in": h.mlp.c_fc.weight, "mlp.b_in": h.mlp.c_fc.bias,
               "mlp.W_out": h.mlp.c_proj.weight, "mlp.b_out": h.mlp.c_proj.bias}
        for j, n in enumerate("QKV"):
            out[f"attn.W_{n}"] = W[:, j * d:(j + 1) * d].reshape(d, H, D).permute(1, 0, 2)
            out[f"attn.b_{n}"] = bias[j * d:(j + 1) * d].reshape(H, D)
        return out

    def tl_unembed(self) -> dict[str, Tensor]:
        t = self.hf.transformer
        b_U = getattr(self.head, "bias", None)
        return {"ln_final.w": t.ln_f.weight, "ln_final.b": t.ln_f.bias, "unembed.W_U": self.head.weight.T,
                "unembed.b_U": b_U if b_U is not None else torch.zeros(self.dims.d_vocab)}

    def W_O_plain(self, layer: int) -> Float[Tensor, "n_heads d_head d_model"]:
        d = self.dims
        return self.blocks[layer].attn_o.weight.reshape(d.n_heads, d.d_head, d.d_model)

    def _values(self, layer: int, qkv_out: Tensor) -> Float[Tensor, "batch pos n_heads d_head"]:
        d = self.dims.d_model
        return qkv_out[..., 2 * d:].unflatten(-1, (self.dims.n_heads, self.dims.d_head))

    def _lookup_hook(self, layer: int, pos: Int[Tensor, " batch"], fn) -> Hook:
        """GPT-2's look-up capture reads the output of ``c_attn`` (:meth:`_pattern_and_values`),
        not a second projection of the stream. See :meth:`FastBackend._lookup_hook`."""
        return (self.blocks[layer].qkv, False,
                lambda m, a, out: fn(*self._pattern_and_values(layer, out, pos)))

    def _pattern_and_values(self, layer: int, qkv_out: Float[Tensor, "batch pos qkv"],
                            pos: Int[Tensor, " batch"]
                            ) -> tuple[Float[Tensor, "batch n_heads pos"],
                                       Float[Tensor, "batch pos n_heads d_head"]]:
        """GPT-2's attention row at ``pos`` (``c_attn`` holds q, k, v; scores scaled by the
        module's ``scaling``: ``1/sqrt(d_head)``, and ``1/(layer + 1)`` with
        ``scale_attn_by_inverse_layer_idx``; causal, no positional rotation) and its plain value
        vectors, from ``qkv_out``, the output of ``c_attn`` for the whole batch ``[batch, pos,
        3 * d_model]``: ``pattern [batch, n_heads, pos]`` (float32), ``values [batch, pos,
        n_heads, d_head]`` (a view of ``qkv_out``; see :meth:`FastBackend._lookup_hook`)."""
        d, H, D = self.dims.d_model, self.dims.n_heads, self.dims.d_head
        b = torch.arange(qkv_out.shape[0], device=qkv_out.device)
        q = qkv_out[b, pos, :d].unflatten(-1, (H, D))  # [batch, H, D] at each row's target position
        pattern = attention_row(head_dots(qkv_out[..., d:2 * d], q), pos,
                                scaling=float(self.hf.transformer.h[layer].attn.scaling))
        return pattern, self._values(layer, qkv_out)


def fuse_gelu(hf: torch.nn.Module) -> int:
    """Replace each ``NewGELUActivation`` of ``hf`` by the library's fused ``GELUTanh`` (see the
    module docstring). Returns the number of modules replaced."""
    from transformers.activations import GELUTanh, NewGELUActivation

    n = 0
    for parent in list(hf.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                setattr(parent, name, GELUTanh())
                n += 1
    return n
