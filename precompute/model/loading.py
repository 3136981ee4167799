"""Load a model by TransformerLens / Hugging Face name or local directory (docs/method.md §1).

The embedded default is a local Hugging Face directory and goes through the same path as
``gpt2``: there is no special case for it.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from precompute.errors import ModelNotAvailable
from precompute.settings import EMBEDDED_MODEL

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A processed model and what the science needs to know about it.

    ``bridge`` is a ``TransformerBridge`` with compatibility mode on (fold_ln,
    center_writing_weights, center_unembed) and ``hook_result`` enabled; ``tokenizer`` is its
    Hugging Face tokenizer; ``name`` is what the user asked for; ``slug`` a URL-safe name.
    """

    bridge: object
    tokenizer: object
    name: str
    slug: str
    _fast: object = field(default=None, repr=False)  # precompute.model.hooks.FastModel, built on use

    @property
    def cfg(self):
        return self.bridge.cfg

    @property
    def device(self) -> torch.device:
        """The device of the model's weights."""
        return next(self.bridge.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights (statistics are computed in float32 regardless)."""
        return next(self.bridge.parameters()).dtype

    @property
    def n_layers(self) -> int:
        return self.bridge.cfg.n_layers

    @property
    def n_heads(self) -> int:
        return self.bridge.cfg.n_heads

    @property
    def d_mlp(self) -> int:
        return self.bridge.cfg.d_mlp

    @property
    def n_ctx(self) -> int:
        return self.bridge.cfg.n_ctx

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
    from precompute.errors import BadSettings

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
        raise BadSettings(f"Device {name!r} asked for but CUDA is not available here: use --device auto or cpu.")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise BadSettings(f"Device {name!r} asked for but MPS is not available here: use --device auto or cpu.")
    return str(dev)


def resolve_dtype(name: str | torch.dtype | None = "float32") -> torch.dtype:
    """The torch dtype for a ``--dtype`` value (``float32``, ``bfloat16``, ``float16``).

    Raises:
        BadSettings: another name.
    """
    from precompute.errors import BadSettings

    if isinstance(name, torch.dtype):
        return name
    if name is None:
        return torch.float32
    if name not in DTYPES:
        raise BadSettings(f"Unknown dtype {name!r}: use one of {', '.join(DTYPES)}.")
    return DTYPES[name]


def model_slug(name: str) -> str:
    """URL-safe slug of a model name or directory: ``EleutherAI/pythia-160m`` → ``pythia-160m``."""
    base = Path(name.rstrip("/")).name if os.path.isdir(name) else name.split("/")[-1]
    if os.path.abspath(name) == os.path.abspath(EMBEDDED_MODEL):
        base = "embedded"
    return re.sub(r"[^a-zA-Z0-9._-]+", "-", base).strip("-").lower() or "model"


def load_model(name: str = EMBEDDED_MODEL, *, device: str | None = "cpu",
               dtype: torch.dtype | str = torch.float32) -> LoadedModel:
    """Load ``name`` as a processed ``TransformerBridge`` plus tokenizer (docs/method.md §1).

    Args:
        name: a TransformerLens / Hugging Face model name (``gpt2``, ``gpt2-medium``,
            ``pythia-160m``, ``EleutherAI/pythia-160m``) or a local Hugging Face directory
            (``config.json``, weights, ``tokenizer.json``), such as the embedded default.
        device: torch device, or ``"auto"`` (:func:`resolve_device`).
        dtype: weights are cast to this dtype (float32: the embedded weights are stored fp16),
            a ``torch.dtype`` or its name (:func:`resolve_dtype`).

    Returns:
        LoadedModel with compatibility mode on (fold_ln, center_writing_weights,
        center_unembed) and ``hook_result`` (per-head output ``z @ W_O``) enabled.

    Raises:
        ModelNotAvailable: the name is not a local directory and the hub cannot provide it
            (offline and not in the local cache, or unknown), or a local directory cannot be
            loaded (the message names what is wrong with it: no config.json, a corrupt or
            truncated weights file, ...); the message says what to use.
    """
    from transformer_lens.model_bridge import TransformerBridge

    device, dtype = resolve_device(device), resolve_dtype(dtype)
    local = os.path.isdir(name)
    if not local and os.path.sep in name and not re.match(r"^[\w.-]+/[\w.-]+$", name):
        raise ModelNotAvailable(f"Model directory {name!r} does not exist. Give a Hugging Face "
                                f"model name (gpt2, pythia-160m) or an existing local directory.")
    if local:
        check_tokenizer_files(name)
    try:
        bridge = TransformerBridge.boot_transformers(name, device=device, dtype=dtype)
    except Exception as exc:  # the hub client raises many types (OSError, HfHubHTTPError, ...)
        if local:  # the hub was not involved: say what is wrong with the directory
            raise ModelNotAvailable(
                f"Cannot load the model directory {name!r}: {local_dir_problem(name, exc)}. Fix "
                f"or re-save that directory (config.json, model.safetensors, tokenizer.json), "
                f"or run without --model to use the embedded default.") from exc
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or _looks_offline(exc)
        where = ("it is not in the local Hugging Face cache and the hub is unreachable"
                 if offline else f"loading failed: {type(exc).__name__}: {str(exc)[:300]}")
        raise ModelNotAvailable(
            f"Cannot load model {name!r}: {where}. Run without --model to use the embedded "
            f"default ({EMBEDDED_MODEL}), or pass --model a local Hugging Face directory "
            f"(config.json, model.safetensors, tokenizer.json).") from exc
    bridge.enable_compatibility_mode()
    bridge.set_use_attn_result(True)
    bridge.eval()
    tokenizer = bridge.tokenizer
    logger.info("loaded %s: %d layers, %d heads, d_mlp %d, n_ctx %d", name, bridge.cfg.n_layers,
                bridge.cfg.n_heads, bridge.cfg.d_mlp, bridge.cfg.n_ctx)
    return LoadedModel(bridge=bridge, tokenizer=tokenizer, name=name, slug=model_slug(name))


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
    return any(w in text for w in ("offline", "connect", "resolve", "network", "cannot find the "
                                   "requested files", "localentrynotfound", "outgoing traffic"))
