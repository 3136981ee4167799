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
  attention row, the attention sink's position (:data:`SINK`) and the context sources' order
  (:func:`rank_context`);
- :mod:`~precompute.model.knockout`: attention knockout's intervention, direct effects and result
  (:class:`Knockout`, from :meth:`Backend.knockout`), the default knockouts
  (:func:`default_sources`); what they say about a look-up is ``precompute.heads``';
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
from context_lookups.precompute.model.knockout import RENORMALISE, TOP_M, Knockout, default_sources
from context_lookups.precompute.model.loading import (
    BACKENDS,
    LoadedModel,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from context_lookups.precompute.model.sources import SINK, rank_context

__all__ = ["BACKENDS", "METHODS", "RENORMALISE", "SINK", "TOP_M", "Backend", "Dims", "Knockout",
           "LoadedModel", "NeuronPass", "PostObserver", "batches", "centre", "check_head", "check_neuron",
           "check_token", "default_sources", "length_batches", "load_model", "load_tokenizer", "pad",
           "rank_context", "resolve_device", "resolve_dtype", "tokenize_batch"]
