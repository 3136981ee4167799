"""Hook names, padding, batching and the hooked forward passes, in one place (docs/method.md
§2-§3, §6).

Two paths compute the same quantities:

* The **reference**: the ``TransformerBridge``'s hook points (``blocks.{l}.mlp.hook_post``,
  ``blocks.{k}.attn.hook_result``, ...) through :func:`run_hooks`. Exact, slow: every hook point
  runs, attention is eager, and ``hook_result`` is materialised for every position.
* The **fast path** (:class:`FastModel`, :func:`capture`): forward hooks on a plain Hugging Face
  model of the same architecture and weights (SDPA attention, no hook points, GPT-2's ``gelu_new``
  run by the library's fused ``GELUTanh`` kernel), capturing only
  quantities that TransformerLens' weight processing leaves unchanged — the MLP post-activation
  (input of ``W_out``), the pre-activation (output of ``W_in``), the per-head ``z`` (input of
  ``W_O``), the residual stream that ``ln2`` reads, embeddings and MLP outputs — and only at the
  positions needed. What processing changes (folded ``W_in``/``b_in``, centred ``W_O``, ``b_O``
  with the value biases folded in) is read from the bridge once per model. The forward stops
  after the last module needed (no unembedding unless asked).

Tests assert that both paths agree to 1e-5 relative.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

logger = logging.getLogger(__name__)


# --- hook names (the bridge's, TransformerLens spelling) ----------------------------------------

def hook_post(layer: int) -> str:
    """Name of the post-GELU MLP activation hook of a 0-based layer: ``[batch, pos, d_mlp]``."""
    return f"blocks.{layer}.mlp.hook_post"


def hook_pre(layer: int) -> str:
    """Name of the MLP pre-activation hook (``ln2(x) @ W_in + b_in``) of a 0-based layer."""
    return f"blocks.{layer}.mlp.hook_pre"


def hook_v(layer: int) -> str:
    """Name of the value-vector hook of a 0-based attention layer: ``[batch, pos, n_heads, d_head]``."""
    return f"blocks.{layer}.attn.hook_v"


def hook_z(layer: int) -> str:
    """Name of the per-head attention output before ``W_O``: ``[batch, pos, n_heads, d_head]``."""
    return f"blocks.{layer}.attn.hook_z"


# --- batching and padding ------------------------------------------------------------------------

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
        ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch"]]:
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


# --- the reference: the bridge's hook points ------------------------------------------------------

def run_hooks(model, tokens: Int[Tensor, "batch pos"], names: list[str],
              stop_at_layer: int | None) -> dict[str, Tensor]:
    """Bridge forward pass (the reference path) that caches only ``names`` and stops after
    block ``stop_at_layer - 1``."""
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(tokens, names_filter=names,
                                               stop_at_layer=stop_at_layer)
    return {n: cache[n] for n in names}


# --- the fast path: hooks on the plain Hugging Face modules --------------------------------------

class _Stop(Exception):
    """Raised by the last hook needed: the rest of the forward pass is not run."""


@dataclass
class Block:
    """The Hugging Face modules of one block that the fast path hooks."""

    ln2: torch.nn.Module        # input: resid_mid
    attn_o: torch.nn.Module     # input: z, [batch, pos, n_heads * d_head]; W_O
    mlp: torch.nn.Module        # output: mlp_out
    mlp_in: torch.nn.Module     # output: hook_pre; W_in
    mlp_out: torch.nn.Module    # input: hook_post; W_out


@dataclass
class FastModel:
    """A plain Hugging Face model with the bridge's weights (unprocessed, SDPA attention) and
    the processed weights that attribution needs, read once from the bridge.

    Shapes (float32 on the model's device): ``W_in [n_layers, d_model, d_mlp]``,
    ``b_in [n_layers, d_mlp]``, ``W_O [n_layers, n_heads, d_head, d_model]``,
    ``b_O [n_layers, d_model]``; ``b_V [n_layers, n_heads, d_head]`` is what the plain model's
    ``z`` holds beyond the processed ``hook_z`` (value biases, incl. the folded ``ln1`` bias):
    ``hook_z = z - b_V``. ``ln2_eps``: each block's LayerNorm epsilon.
    """

    hf: torch.nn.Module
    base: torch.nn.Module
    head: torch.nn.Module
    embed: torch.nn.Module
    pos_embed: torch.nn.Module | None
    blocks: list[Block]
    W_in: Tensor
    b_in: Tensor
    W_O: Tensor
    b_O: Tensor
    b_V: Tensor
    ln2_eps: list[float]
    device: torch.device


def fast_supported(model) -> bool:
    """Whether the fast path handles this architecture: sequential LayerNorm blocks with a
    non-gated MLP (GPT-2 and its kind). Others use the bridge (the reference) everywhere."""
    cfg = model.cfg
    return (cfg.normalization_type in ("LN", "LNPre") and not getattr(cfg, "gated_mlp", False)
            and not getattr(cfg, "parallel_attn_mlp", False)
            and cfg.positional_embedding_type == "standard")


def fast_model(model) -> FastModel:
    """The :class:`FastModel` of a loaded model, built on first use and kept on it.

    Loads the plain Hugging Face model from the same source as the bridge (same dtype and
    device), maps the bridge's components to its modules, and measures ``b_V`` with one
    bridge pass of 8 tokens.

    Raises:
        NotImplementedError: an architecture :func:`fast_supported` rejects.
    """
    fm = getattr(model, "_fast", None)
    if fm is not None:
        return fm
    if not fast_supported(model):
        raise NotImplementedError(f"The fast path does not support {model.name}; use the bridge.")
    from transformers import AutoModelForCausalLM

    bridge = model.bridge
    dev = next(bridge.parameters()).device
    dtype = next(bridge.parameters()).dtype
    src = bridge.original_model.config._name_or_path
    hf = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, attn_implementation="sdpa").to(dev).eval()
    for p in hf.parameters():
        p.requires_grad_(False)
    _fuse_activations(hf)

    def module(*names: str) -> torch.nn.Module:
        return hf.get_submodule(".".join(n for n in names if n))

    blocks = []
    for b in bridge.blocks:
        blocks.append(Block(ln2=module(b.name, b.ln2.name), attn_o=module(b.name, b.attn.name, b.attn.o.name),
                            mlp=module(b.name, b.mlp.name),
                            mlp_in=module(b.name, b.mlp.name, getattr(b.mlp, "in").name),
                            mlp_out=module(b.name, b.mlp.name, b.mlp.out.name)))
    has_pos = hasattr(bridge, "pos_embed") and model.cfg.positional_embedding_type == "standard"
    f32 = dict(device=dev, dtype=torch.float32)
    fm = FastModel(hf=hf, base=hf.base_model, head=hf.get_output_embeddings(),
                   embed=module(bridge.embed.name), pos_embed=module(bridge.pos_embed.name) if has_pos else None,
                   blocks=blocks, W_in=bridge.W_in.detach().to(**f32), b_in=bridge.b_in.detach().to(**f32),
                   W_O=bridge.W_O.detach().to(**f32), b_O=bridge.b_O.detach().to(**f32),
                   b_V=torch.zeros(model.n_layers, model.n_heads, model.cfg.d_head, **f32),
                   ln2_eps=[float(getattr(b.ln2, "eps", model.cfg.eps)) for b in blocks], device=dev)
    fm.b_V = _measure_b_V(model, fm)
    model._fast = fm
    return fm


def _fuse_activations(hf: torch.nn.Module) -> int:
    """Replace each ``NewGELUActivation`` (GPT-2's ``gelu_new``, eight elementwise kernels in
    Python) of ``hf`` by the library's ``GELUTanh`` (one fused ``gelu(approximate="tanh")``
    kernel): the same function, equal to ~2e-7, and 4-5x faster; on the embedded model it cost
    more than the MLP's ``W_in`` matmul. Returns the number of modules replaced."""
    from transformers.activations import GELUTanh, NewGELUActivation

    n = 0
    for parent in list(hf.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                setattr(parent, name, GELUTanh())
                n += 1
    return n


def _measure_b_V(model, fm: FastModel) -> Tensor:
    """``z`` (plain model) minus ``hook_z`` (bridge) on 8 tokens: constant over positions."""
    tokens = torch.tensor([[model.bos_token_id] + list(range(1, 8))], device=fm.device)
    ref = run_hooks(model, tokens, [hook_z(k) for k in range(model.n_layers)], stop_at_layer=None)
    zs: dict[int, Tensor] = {}
    hooks = [(fm.blocks[k].attn_o, True, lambda mod, args, k=k: zs.__setitem__(k, args[0]))
             for k in range(model.n_layers)]
    capture(fm, tokens, hooks, stop=None)
    shape = (model.n_heads, model.cfg.d_head)
    diff = torch.stack([(zs[k][0].float().unflatten(-1, shape) - ref[hook_z(k)][0].float())
                        for k in range(model.n_layers)])  # [n_layers, pos, n_heads, d_head]
    return diff.mean(1)


Hook = tuple[torch.nn.Module, bool, Callable]


def capture(fm: FastModel, tokens: Int[Tensor, "batch pos"], hooks: Sequence[Hook], *,
            stop: torch.nn.Module | None, final: bool = False) -> Tensor | None:
    """One forward pass of the plain model with ``hooks`` — ``(module, pre, fn)``: a forward
    pre-hook ``fn(module, args)`` if ``pre`` else a forward hook ``fn(module, args, output)``;
    a pre-hook may return new args (ablation) — registered in order. The pass stops right before
    ``stop`` runs (after its pre-hooks); with ``final`` it runs to the end and returns the base
    model's last hidden state ``[batch, pos, d_model]`` (the unembedding is not applied)."""
    handles = []
    try:
        for mod, pre, fn in hooks:
            handles.append(mod.register_forward_pre_hook(fn) if pre else mod.register_forward_hook(fn))
        if stop is not None:
            def halt(mod, args):
                raise _Stop
            handles.append(stop.register_forward_pre_hook(halt))
        with torch.no_grad():
            try:
                out = fm.base(input_ids=tokens, use_cache=False)
            except _Stop:
                return None
        return out.last_hidden_state if final else None
    finally:
        for h in handles:
            h.remove()


def z_ablation_hook(fm: FastModel, layer: int, heads_per_row: Sequence[Sequence[int]], *,
                    method: str = "zero", mean_v: dict[int, Tensor] | None = None) -> Hook:
    """A pre-hook on ``W_O`` of ``layer`` that ablates, for each row, the heads listed for it:
    equal to the bridge's ``hook_v[:, :, h] = 0`` (``"zero"``) or ``= mean_v[layer][h]``
    (``"mean"``) at every position, since attention weights sum to one: the processed ``hook_z``
    becomes 0 (or the mean value vector), i.e. the plain ``z`` becomes ``b_V`` (+ the mean)."""
    n_heads, d_head = fm.b_V.shape[1:]
    mask = torch.zeros(len(heads_per_row), n_heads, dtype=torch.bool, device=fm.device)
    for j, hs in enumerate(heads_per_row):
        mask[j, list(hs)] = True
    fill = fm.b_V[layer] + (mean_v[layer].to(fm.device) if method == "mean" else 0.0)  # [n_heads, d_head]

    def fn(mod, args):
        z = args[0].unflatten(-1, (n_heads, d_head))
        z = torch.where(mask[:, None, :, None], fill.to(z.dtype), z)
        return (z.flatten(-2), *args[1:])
    return (fm.blocks[layer].attn_o, True, fn)
