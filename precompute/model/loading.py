"""Load a model by TransformerLens / Hugging Face name or local directory, with the backend that
runs it, chosen once here (docs/method.md §1, §10): the fast backend of its architecture
(:func:`_fast_backends`: GPT-2, GPT-NeoX/Pythia, Llama, Qwen2, Mistral) unless
``backend="bridge"``, else the TransformerBridge.

The embedded default is a local Hugging Face directory and goes through the same path as
``gpt2``: there is no special case for it.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from context_lookups.precompute.core.errors import BadSettings, ModelNotAvailable, ModelNotSupported
from context_lookups.precompute.core.settings import EMBEDDED_MODEL, RESERVED_SLUGS
from context_lookups.precompute.model.backend import Backend, Dims

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A loaded model: its backend (the one way the method reaches the model), its tokenizer,
    ``name`` (what the user asked for) and ``slug`` (a URL-safe name).

    ``backend`` is a :class:`~precompute.model.backend.Backend`, chosen once at load time
    (:func:`load_model`); the dims, device and dtype below are the backend's.
    """

    backend: Backend
    tokenizer: object
    name: str
    slug: str

    @property
    def dims(self) -> Dims:
        return self.backend.dims

    @property
    def device(self) -> torch.device:
        """The device of the model's weights."""
        return self.backend.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights (statistics are computed in float32 regardless)."""
        return self.backend.dtype

    @property
    def n_layers(self) -> int:
        return self.dims.n_layers

    @property
    def n_heads(self) -> int:
        return self.dims.n_heads

    @property
    def d_head(self) -> int:
        return self.dims.d_head

    @property
    def d_model(self) -> int:
        return self.dims.d_model

    @property
    def d_mlp(self) -> int:
        return self.dims.d_mlp

    @property
    def d_vocab(self) -> int:
        return self.dims.d_vocab

    @property
    def n_ctx(self) -> int:
        return self.dims.n_ctx

    @property
    def bos_token_id(self) -> int:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def token_str(self, token_id: int) -> str:
        """The text of one token (byte-level BPE decoded; may be a partial UTF-8 character)."""
        return self.tokenizer.decode([int(token_id)])

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str | None = "auto") -> str:
    """The torch device for a ``--device`` value: ``"auto"`` (or None) picks ``cuda`` if
    available, else ``mps``, else ``cpu``; any other value (``cpu``, ``cuda:1``, ``mps``) is
    checked and returned.

    Raises:
        BadSettings: an unknown device, or one this machine does not have.
    """
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise BadSettings(f"Unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadSettings(f"Device {name!r} asked for but CUDA is not available here: "
                          f"use --device auto or cpu.")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise BadSettings(f"Device {name!r} asked for but MPS is not available here: "
                          f"use --device auto or cpu.")
    return str(dev)


def resolve_dtype(name: str | torch.dtype | None = "float32") -> torch.dtype:
    """The torch dtype for a ``--dtype`` value (``float32``, ``bfloat16``, ``float16``).

    Raises:
        BadSettings: another name.
    """
    if isinstance(name, torch.dtype):
        return name
    if name is None:
        return torch.float32
    if name not in DTYPES:
        raise BadSettings(f"Unknown dtype {name!r}: use one of {', '.join(DTYPES)}.")
    return DTYPES[name]


def model_slug(name: str) -> str:
    """URL-safe slug of a model name or directory: ``EleutherAI/pythia-160m`` → ``pythia-160m``
    (the form :data:`precompute.settings.SLUG` every run name has; a reserved name gets
    ``-model``)."""
    base = Path(name.rstrip("/")).name if os.path.isdir(name) else name.split("/")[-1]
    if os.path.abspath(name) == os.path.abspath(EMBEDDED_MODEL):
        base = "embedded"
    slug = re.sub(r"[^a-zA-Z0-9._-]+", "-", base).strip("-._").lower()[:94] or "model"
    return f"{slug}-model" if slug in RESERVED_SLUGS else slug


BACKENDS = ("auto", "bridge", "fast")


def _fast_backends() -> dict:
    """Hugging Face architecture -> fast backend class. Every other architecture TransformerLens
    supports runs on the bridge."""
    from context_lookups.precompute.model.gpt2 import GPT2Backend
    from context_lookups.precompute.model.llama import LlamaBackend
    from context_lookups.precompute.model.neox import NeoXBackend

    return {"GPT2LMHeadModel": GPT2Backend, "GPTNeoXForCausalLM": NeoXBackend,
            "LlamaForCausalLM": LlamaBackend, "Qwen2ForCausalLM": LlamaBackend,
            "MistralForCausalLM": LlamaBackend}


def load_model(name: str = EMBEDDED_MODEL, *, device: str | None = "cpu",
               dtype: torch.dtype | str = torch.float32, backend: str = "auto") -> LoadedModel:
    """Load ``name`` with its tokenizer and the backend that runs it (docs/method.md §1).

    Args:
        name: a TransformerLens / Hugging Face model name (``gpt2``, ``gpt2-medium``,
            ``pythia-160m``, ``EleutherAI/pythia-160m``) or a local Hugging Face directory
            (``config.json``, weights, ``tokenizer.json``), such as the embedded default.
        device: torch device, or ``"auto"`` (:func:`resolve_device`).
        dtype: weights are cast to this dtype (float32: the embedded weights are stored fp16),
            a ``torch.dtype`` or its name (:func:`resolve_dtype`).
        backend: ``"auto"`` (the fast backend of the architecture if there is one, else the
            bridge), ``"bridge"`` (TransformerBridge hook points, the reference: every
            architecture TransformerLens supports) or ``"fast"`` (hooks on the plain Hugging
            Face modules; GPT-2, GPT-NeoX/Pythia, Llama, Qwen2, Mistral). Either way the
            weights are those of TransformerLens' weight processing (fold_ln,
            center_writing_weights, center_unembed, fold_value_biases).

    Returns:
        LoadedModel whose ``backend.name`` says which backend runs it (``"fast (gpt2)"``,
        ``"fast (gpt-neox)"``, ``"fast (llama)"``, ``"fast (qwen2)"``, ``"fast (mistral)"``,
        ``"bridge"``).

    Raises:
        ModelNotAvailable: the name is not a local directory and the hub cannot provide it
            (offline and not in the local cache, or unknown), or a local directory cannot be
            loaded (the message names what is wrong with it: no config.json, a corrupt or
            truncated weights file, ...); the message says what to use.
        ModelNotSupported: neither backend supports the architecture, or ``backend="fast"``
            for one without a fast backend.
        BadSettings: an unknown backend, device or dtype.
    """
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    if backend not in BACKENDS:
        raise BadSettings(f"Unknown backend {backend!r}: use one of {', '.join(BACKENDS)}.")
    local = os.path.isdir(name)
    if not local and os.path.sep in name and not re.match(r"^[\w.-]+/[\w.-]+$", name):
        raise ModelNotAvailable(f"Model directory {name!r} does not exist. Give a Hugging Face "
                                f"model name (gpt2, pythia-160m) or an existing local directory.")
    if local:
        check_tokenizer_files(name)
    source = name if local else _official_name(name)
    try:
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(source)
    except Exception as exc:  # the hub client raises many types (OSError, HfHubHTTPError, ...)
        raise _not_available(name, local, exc) from exc
    check_config(hf_config, name, dtype)
    if local:
        check_checkpoint_layers(name, hf_config)
    arch, cfg = _tl_config(hf_config, name, source, dtype)
    fast = _fast_backends().get(arch)
    if backend == "fast" and fast is None:
        raise ModelNotSupported(f"--backend fast supports {', '.join(_fast_backends())}; {name!r} is a "
                                f"{arch}. Use --backend auto (or bridge) to run it on the bridge.")
    try:
        if fast is not None and backend != "bridge":
            be, tokenizer = _load_fast(fast, source, arch, cfg, device, dtype)
        else:
            be, tokenizer = _load_bridge(source, arch, device, dtype)
    except Exception as exc:
        raise _not_available(name, local, exc) from exc
    check_vocabulary(tokenizer, name)
    d = be.dims
    logger.info("loaded %s (%s): %d layers, %d heads, d_mlp %d, n_ctx %d; backend: %s", name, arch,
                d.n_layers, d.n_heads, d.d_mlp, d.n_ctx, be.name)
    return LoadedModel(backend=be, tokenizer=tokenizer, name=name, slug=model_slug(name))


def _official_name(name: str) -> str:
    """TransformerLens' official Hugging Face name of a deprecated alias, else ``name``."""
    from transformer_lens.tools.model_registry.registry_io import resolve_model_alias

    return resolve_model_alias(name) or name


# The config fields every supported architecture has (transformers' generic names; GPT-2's n_layer,
# n_head, n_embd, n_positions are mapped onto them), and how the error names them.
_SIZES = {"num_hidden_layers": "layers", "num_attention_heads": "heads", "hidden_size": "d_model",
          "vocab_size": "vocab_size", "max_position_embeddings": "positions"}


def _size(hf_config, field: str):
    v = getattr(hf_config, field, None)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def config_parameters(hf_config) -> int:
    """Parameters a Hugging Face config builds, estimated from its sizes (no weights are read):
    token and learned position embeddings, attention (``4 d_model²``), MLP (``2`` or, gated,
    ``3 × d_model × d_mlp``) per layer, and an untied unembedding; norms and biases are left
    out (under 1%)."""
    d, n_layers = hf_config.hidden_size, hf_config.num_hidden_layers
    d_mlp = (_size(hf_config, "intermediate_size") or _size(hf_config, "n_inner") or 4 * d)
    gated = getattr(hf_config, "hidden_act", None) in ("silu", "swiglu")
    positions = hf_config.max_position_embeddings if hf_config.model_type == "gpt2" else 0
    embed = hf_config.vocab_size * d * (1 if getattr(hf_config, "tie_word_embeddings", True) else 2)
    return embed + positions * d + n_layers * (4 * d * d + (3 if gated else 2) * d * d_mlp)


def check_config(hf_config, name: str, dtype: torch.dtype = torch.float32,
                 available: int | None = None) -> None:
    """A model config that can be built: positive whole sizes, ``d_model`` divisible by the
    heads, and parameters (:func:`config_parameters` × the dtype's bytes) that fit the memory
    available (``available``, default :func:`precompute.core.memory.available_memory`, the estimate
    the scan's own check uses). Checked before any weight is allocated.

    Raises:
        BadSettings: an impossible value, or a model that cannot fit; one line naming it.
    """
    from context_lookups.precompute.core.memory import available_memory

    for field, what in _SIZES.items():
        v = getattr(hf_config, field, None)
        if field == "max_position_embeddings" and hf_config.model_type != "gpt2":
            continue  # learned positions (a table to allocate) only in GPT-2; XLNet says -1: unbounded
        if _size(hf_config, field) is None or v < 1:
            raise BadSettings(f"Model {name!r}: its config.json gives {what} ({field}) = {v!r}, which is "
                              f"impossible: it must be a whole number of at least 1. Fix config.json.")
    heads, d = hf_config.num_attention_heads, hf_config.hidden_size
    if getattr(hf_config, "head_dim", None) is None and d % heads:
        raise BadSettings(f"Model {name!r}: its config.json gives d_model {d} and {heads} heads, but d_model "
                          f"must be divisible by the number of heads. Fix config.json.")
    kv = getattr(hf_config, "num_key_value_heads", None)
    if kv is not None and (_size(hf_config, "num_key_value_heads") is None or kv < 1 or heads % kv):
        raise BadSettings(f"Model {name!r}: its config.json gives {kv!r} key/value heads for {heads} heads; "
                          f"the heads must be a multiple of it. Fix config.json.")
    need = config_parameters(hf_config) * torch.empty((), dtype=dtype).element_size()
    available = available_memory() if available is None else available
    if available is not None and need > available:
        positions = getattr(hf_config, "max_position_embeddings", "?")
        raise BadSettings(f"Model {name!r}: its config.json ({hf_config.num_hidden_layers} layers, d_model "
                          f"{d}, vocab {hf_config.vocab_size}, {positions} positions) needs about "
                          f"{need / 1e9:.1f} GB for its weights in {str(dtype)[6:]}, and "
                          f"{available / 1e9:.1f} GB of memory is available: use a smaller model or a "
                          f"smaller --dtype.")


_LAYER_KEY = re.compile(r"(?:^|\.)(?:h|layers|layer|blocks)\.(\d+)\.")


def check_checkpoint_layers(path: str, hf_config) -> None:
    """The layers a local checkpoint holds (read from the ``*.safetensors`` headers, no
    weight is read) against the layers its config builds, before the model is built: a config
    that says 6 layers over weights of 4 would otherwise get 2 layers of random weights.

    Raises:
        ModelNotAvailable: the config builds layers the weights do not hold (or the reverse).
    """
    from safetensors import safe_open

    layers = set()
    for w in sorted(Path(path).glob("*.safetensors")):
        try:
            with safe_open(str(w), framework="pt") as fh:
                layers.update(int(m.group(1)) for k in fh.keys() if (m := _LAYER_KEY.search(k)))  # noqa: SIM118
        except Exception:  # a corrupt header: the load says so (local_dir_problem)
            return
    n = hf_config.num_hidden_layers
    if layers and layers != set(range(n)):
        held = f"layers 0-{max(layers)}" if layers == set(range(max(layers) + 1)) else f"{len(layers)} layers"
        raise ModelNotAvailable(f"The model directory {path!r}: config.json builds {n} layers but its "
                                f"weights hold {held}. Fix num_hidden_layers (n_layer) in config.json, or "
                                f"the weights.")


def check_loading_info(source: str, info: dict) -> None:
    """What transformers reports after loading a checkpoint into the model its config builds:
    any weight the model has that the checkpoint lacks (left at random), or the checkpoint
    has that the model does not use, or of another shape, is an error naming them.

    Raises:
        ModelNotAvailable: the message names up to 5 of the weights and how many there are.
    """
    for kind, what in (("missing_keys", "weights the config builds are missing from the checkpoint"),
                       ("unexpected_keys", "weights of the checkpoint are not used by the config's model"),
                       ("mismatched_keys", "weights of the checkpoint have another shape than the config's")):
        keys = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(kind) or ())
        if keys:
            shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
            raise ModelNotAvailable(f"Model {source!r}: {len(keys)} {what} ({shown}). Fix config.json or "
                                    f"the weights so that they describe the same model.")


def check_vocabulary(tokenizer, name: str) -> None:
    """A tokenizer with a vocabulary: one whose vocabulary is empty (besides special tokens)
    turns every text into no token and every neuron's token into an empty string.

    Raises:
        ModelNotAvailable: fewer than 2 ordinary tokens.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    n = backend.get_vocab_size(with_added_tokens=False) if backend is not None else len(tokenizer)
    if n < 2:
        raise ModelNotAvailable(f"The tokenizer of {name!r} has an empty vocabulary ({n} tokens besides its "
                                f"special tokens): save the model's real tokenizer next to its weights.")


def _tl_config(hf_config, name: str, source: str, dtype: torch.dtype):
    """The architecture name and TransformerLens config of a Hugging Face config, as the bridge
    derives them (no weights are read).

    Raises:
        ModelNotSupported: TransformerLens has no adapter for the architecture."""
    from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_config_from_hf
    from transformer_lens.model_bridge.sources._hf_format import determine_architecture_from_hf_config

    try:
        arch = determine_architecture_from_hf_config(hf_config)
        adapter = ArchitectureAdapterFactory.select_architecture_adapter(
            build_bridge_config_from_hf(hf_config, arch, source, dtype))
    except (ValueError, KeyError, NotImplementedError) as exc:
        archs = getattr(hf_config, "architectures", None) or [getattr(hf_config, "model_type", "?")]
        raise ModelNotSupported(f"Model {name!r} ({', '.join(map(str, archs))}) is supported by neither "
                                f"backend: TransformerLens has no bridge for it ({_one_line(exc)}). Use a "
                                f"model TransformerLens supports (gpt2, pythia-160m, ...).") from exc
    return arch, adapter.cfg


def _load_fast(cls, source: str, arch: str, cfg, device: str, dtype: torch.dtype):
    """The plain Hugging Face model (SDPA attention, one copy of the weights) in a fast backend,
    and the tokenizer set up as the bridge sets it up."""
    from transformers import AutoModelForCausalLM

    hf, info = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation="sdpa",
                                                    output_loading_info=True, ignore_mismatched_sizes=True)
    check_loading_info(source, info)
    hf = hf.to(device).eval()
    for p in hf.parameters():
        p.requires_grad_(False)
    tokenizer = load_tokenizer(source, cfg)
    return cls(hf, cfg, pad_id=_bos(tokenizer), architecture=arch), tokenizer


def _load_bridge(source: str, arch: str, device: str, dtype: torch.dtype):
    """A processed ``TransformerBridge`` (compatibility mode, ``hook_result`` on) in the
    bridge backend, and its tokenizer.

    Raises:
        ModelNotSupported: the bridge loads the model but the method cannot be read off its
            blocks (:func:`~precompute.model.bridge.unsupported`) or it has no ``hook_result``."""
    from transformer_lens.model_bridge import TransformerBridge

    from context_lookups.precompute.model.bridge import BridgeBackend, unsupported

    bridge = TransformerBridge.boot_transformers(source, device=device, dtype=dtype)
    why = unsupported(bridge)
    if why is None:
        bridge.enable_compatibility_mode()
        try:
            bridge.set_use_attn_result(True)
        except NotImplementedError:
            why = "TransformerLens exposes no per-head output (hook_result) for its attention"
    if why is not None:
        raise ModelNotSupported(f"{arch} is supported by neither backend: TransformerLens' bridge loads it, "
                                f"but {why}. Use a model of an architecture listed in the README (GPT-2, "
                                f"Pythia, Llama, Qwen2, Mistral, ...).")
    bridge.eval()
    return BridgeBackend(bridge, pad_id=_bos(bridge.tokenizer), architecture=arch), bridge.tokenizer


def load_tokenizer(source: str, cfg=None):
    """The tokenizer of ``source`` (a Hugging Face name or a local model directory) exactly as
    ``TransformerBridge.boot_transformers`` makes it: the one way the project loads a tokenizer
    (with every model :func:`load_model` loads, and alone for the explorer's pages). ``cfg``:
    the model's TransformerLens config when the caller has it, else derived from the Hugging Face
    config (no weights are read).

    Raises:
        OSError, ValueError: ``source`` holds no loadable config or tokenizer (the caller says
            what to do).
    """
    if cfg is None:
        from transformers import AutoConfig

        cfg = _tl_config(AutoConfig.from_pretrained(source), source, source, torch.float32)[1]
    from transformer_lens.model_bridge.sources._bridge_builder import configure_tokenizer
    from transformer_lens.utilities.hf_utils import autotokenizer_with_special_token_compat
    from transformers import AutoTokenizer

    try:
        tok = autotokenizer_with_special_token_compat(source, auto_tokenizer=AutoTokenizer,
                                                      add_bos_token=True,
                                                      use_fast=getattr(cfg, "use_fast", True))
    except ValueError:
        tok = AutoTokenizer.from_pretrained(source, use_fast=getattr(cfg, "use_fast", True))
    return configure_tokenizer(tok, cfg)


def _bos(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _not_available(name: str, local: bool, exc: BaseException) -> ModelNotAvailable:
    """The one-line error of a model that cannot be loaded: what is wrong with a local
    directory, or that the hub cannot provide the name."""
    if isinstance(exc, ModelNotAvailable):
        return exc
    if local:  # the hub was not involved: say what is wrong with the directory
        return ModelNotAvailable(
            f"Cannot load the model directory {name!r}: {local_dir_problem(name, exc)}. Fix "
            f"or re-save that directory (config.json, model.safetensors, tokenizer.json), "
            f"or run without --model to use the embedded default.")
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or _looks_offline(exc)
    where = ("it is not in the local Hugging Face cache and the hub is unreachable"
             if offline else f"loading failed: {type(exc).__name__}: {str(exc)[:300]}")
    return ModelNotAvailable(
        f"Cannot load model {name!r}: {where}. Run without --model to use the embedded "
        f"default ({EMBEDDED_MODEL}), or pass --model a local Hugging Face directory "
        f"(config.json, model.safetensors, tokenizer.json).")


# A local directory's tokenizer: any one of these sets of files (fast, BPE, SentencePiece).
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("tokenizer.model",))


def check_tokenizer_files(path: str) -> None:
    """A local model directory holds a tokenizer (:data:`TOKENIZER_FILES`): without one the
    model loads with another tokenizer, or none, and finds no next-token neuron.

    Raises:
        ModelNotAvailable: none of the sets is complete; the message names the files.
    """
    d = Path(path)
    if any(all((d / f).is_file() for f in files) for files in TOKENIZER_FILES):
        return
    wanted = " or ".join(" + ".join(files) for files in TOKENIZER_FILES)
    raise ModelNotAvailable(f"The model directory {path!r} holds no tokenizer: it needs {wanted}. "
                            f"Save the tokenizer next to the weights (tokenizer.save_pretrained(DIR)), "
                            f"or run without --model to use the embedded default.")


def local_dir_problem(path: str, exc: BaseException) -> str:
    """What is wrong with a local model directory that failed to load with ``exc``: a missing
    config.json, weights or tokenizer, a ``*.safetensors`` file whose header does not read
    (corrupt or truncated), else ``exc`` itself, on one line."""
    from safetensors import safe_open

    d = Path(path)
    if not (d / "config.json").is_file():
        return "it holds no config.json"
    weights = sorted(d.glob("*.safetensors"))
    for w in weights:
        try:
            with safe_open(str(w), framework="pt") as fh:
                fh.keys()
        except Exception as bad:  # SafetensorError, OSError, ...
            return f"{w.name} is corrupt or truncated ({_one_line(bad)})"
    if not weights and not list(d.glob("pytorch_model*.bin")):
        return "it holds no weights (model.safetensors or pytorch_model.bin)"
    if not any((d / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer.model")):
        return "it holds no tokenizer (tokenizer.json, or vocab.json and merges.txt)"
    if "ignore_mismatched_sizes" in str(exc):  # transformers points at a report it does not show
        return "its weights have other shapes than config.json describes (d_model, d_mlp, vocab_size...)"
    return f"{type(exc).__name__}: {_one_line(exc)}"


def _one_line(exc: BaseException, limit: int = 300) -> str:
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


def _looks_offline(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    seen = {id(exc)}
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        text += f" {type(cause).__name__} {cause}".lower()
        cause = cause.__cause__ or cause.__context__
    return any(w in text for w in ("offline", "connect", "resolve", "network",
                                   "cannot find the requested files", "localentrynotfound",
                                   "outgoing traffic"))
