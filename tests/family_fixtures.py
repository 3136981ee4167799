"""Tiny random-weight models of every family with a fast backend but GPT-2 (which conftest
builds), made from ``transformers`` configs and saved with the embedded tokenizer (vocab 8192),
so nothing is downloaded: GPT-NeoX (Pythia's parallel attention/MLP, partial rotary, untied
unembedding), Llama (grouped-query attention, tied unembedding as in SmolLM), Qwen2 (QKV
biases, untied) and Mistral (multi-query attention, untied). 3 layers, d_model 64, 4 heads,
d_mlp 256. Norm weights, biases and matrices are perturbed away from the initialisation (norm
weights of 1, zero biases) so that folding, centring and bias folding are exercised.

``families`` is one session-wide object that builds a family's directory and loads it on each
backend the first time a test asks (``families.dir(name)``, ``families.fast(name)``,
``families.bridge(name)``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

FAMILIES = ("neox", "llama", "qwen2", "mistral")
COMMON = {"vocab_size": 8192, "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
          "intermediate_size": 256, "max_position_embeddings": 128, "bos_token_id": 0, "eos_token_id": 0}


def family_config(family: str):
    """The ``transformers`` config of a tiny model of ``family`` (:data:`FAMILIES`)."""
    import transformers as T

    if family == "neox":
        return T.GPTNeoXConfig(**COMMON, rotary_pct=0.25, use_parallel_residual=True,
                               tie_word_embeddings=False)
    if family == "llama":
        return T.LlamaConfig(**COMMON, num_key_value_heads=2, tie_word_embeddings=True)
    if family == "qwen2":
        return T.Qwen2Config(**COMMON, num_key_value_heads=2, tie_word_embeddings=False)
    if family == "mistral":
        return T.MistralConfig(**COMMON, num_key_value_heads=1, tie_word_embeddings=False)
    raise ValueError(f"Unknown family {family!r}: one of {', '.join(FAMILIES)}.")


def make_family_dir(path: Path, family: str, *, seed: int = 0) -> Path:
    """A random-weight tiny model of ``family`` with the embedded tokenizer, saved as a Hugging
    Face directory at ``path``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from context_lookups.precompute.core.settings import EMBEDDED_MODEL

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(family))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
            elif p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
            else:  # larger weights than the init so activations vary more across heads
                p.mul_(3.0)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(EMBEDDED_MODEL).save_pretrained(path)
    return path


class Families:
    """Each family's tiny model directory and its two loaded backends, made on first use."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self._dirs: dict[str, Path] = {}
        self._models: dict[tuple[str, str], object] = {}

    def dir(self, family: str) -> Path:
        if family not in self._dirs:
            self._dirs[family] = make_family_dir(self._tmp.mktemp(f"tiny-{family}"), family)
        return self._dirs[family]

    def _load(self, family: str, backend: str):
        if (family, backend) not in self._models:
            from context_lookups.precompute.model import load_model

            self._models[family, backend] = load_model(str(self.dir(family)), backend=backend)
        return self._models[family, backend]

    def fast(self, family: str):
        """The tiny model as the job loads it (``--backend auto``: the family's fast backend)."""
        m = self._load(family, "auto")
        assert m.backend.name.startswith("fast ("), m.backend.name
        return m

    def bridge(self, family: str):
        """The same model on the bridge backend, the reference."""
        return self._load(family, "bridge")


@pytest.fixture(scope="session")
def families(tmp_path_factory) -> Families:
    return Families(tmp_path_factory)


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    """Each family in turn (a test taking it runs once per family)."""
    return request.param


@pytest.fixture(params=("gpt2",) + FAMILIES)
def tiny_pair(request, families):
    """(fast, bridge): each tiny model — conftest's GPT-2 and every family here — on both
    backends (a test taking it runs once per family)."""
    if request.param == "gpt2":
        return request.getfixturevalue("tiny_model"), request.getfixturevalue("tiny_bridge")
    return families.fast(request.param), families.bridge(request.param)


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory) -> Path:
    """A random-weight 2-layer Qwen3 (a Llama-like block with q/k norms) with the embedded
    tokenizer: an architecture with no fast backend, which runs on the bridge."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from context_lookups.precompute.core.settings import EMBEDDED_MODEL

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-qwen3")
    Qwen3ForCausalLM(Qwen3Config(vocab_size=8192, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=16, intermediate_size=256,
                                 max_position_embeddings=128, bos_token_id=0,
                                 eos_token_id=0)).save_pretrained(d)
    AutoTokenizer.from_pretrained(EMBEDDED_MODEL).save_pretrained(d)
    return d
