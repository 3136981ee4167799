"""The model backend: loading a model and every forward pass the method needs, behind one
protocol (:class:`Backend`, docs/method.md §1-§3, §6). Modules outside this package use only
what is exported here; ``app/`` imports nothing else from it.

- :mod:`~precompute.model.backend`: the protocol, :class:`Dims`, :class:`NeuronPass`, range checks;
- :mod:`~precompute.model.loading`: :func:`load_model` (``backend="auto"|"bridge"|"fast"``);
- :mod:`~precompute.model.bridge`: the TransformerBridge backend (every architecture; the reference);
- :mod:`~precompute.model.fast`: hooks on the plain Hugging Face modules, one copy of the
  weights, processed a block at a time (:mod:`~precompute.model.processing`); its families are
  :mod:`~precompute.model.gpt2` (GPT-2), :mod:`~precompute.model.neox` (GPT-NeoX / Pythia) and
  :mod:`~precompute.model.llama` (Llama, Qwen2, Mistral: RMSNorm, gated MLP, grouped-query
  attention);
- :mod:`~precompute.model.readout`: what every backend reads out of a pass (per-document
  maximum, next-token probabilities, the heads each row ablates);
- :mod:`~precompute.model.components`: head attribution and the other components of a
  pre-activation, the formula every backend calls (docs/method.md §3);
- :mod:`~precompute.model.sources`: the per-source decomposition (the look-up), the causal
  attention row, the attention sink (:func:`split_sink`);
- :mod:`~precompute.model.knockout`: attention knockout's intervention, direct effects, result
  (:class:`Knockout`, from :meth:`Backend.knockout`) and summaries (:func:`rank_agreement`,
  :func:`top_source_holds`, :func:`share_of_pairs`);
- :mod:`~precompute.model.batching`: tokenizing with BOS, padding, length-sorted batches.
"""

from context_lookups.precompute.model.backend import (
    METHODS,
    Backend,
    Dims,
    NeuronPass,
    PostObserver,
    centre,
    check_head,
    check_neuron,
    check_token,
)
from context_lookups.precompute.model.batching import batches, length_batches, pad, tokenize_batch
from context_lookups.precompute.model.knockout import (
    RENORMALISE,
    TOP_M,
    Knockout,
    default_sources,
    pair_agreement,
    pair_top_source,
    rank_agreement,
    share_of_pairs,
    top_source_holds,
)
from context_lookups.precompute.model.loading import (
    BACKENDS,
    LoadedModel,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from context_lookups.precompute.model.sources import SINK, SinkSplit, split_sink

__all__ = ["BACKENDS", "METHODS", "RENORMALISE", "SINK", "TOP_M", "Backend", "Dims", "Knockout",
           "LoadedModel", "NeuronPass", "PostObserver", "SinkSplit", "batches", "centre", "check_head",
           "check_neuron", "check_token", "default_sources", "length_batches", "load_model", "load_tokenizer",
           "pad", "pair_agreement", "pair_top_source", "rank_agreement", "resolve_device", "resolve_dtype",
           "share_of_pairs", "split_sink", "tokenize_batch", "top_source_holds"]
