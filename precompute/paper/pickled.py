"""The authors' ablation file (``7_head_ablation/nh_token_prob_attn_ablated_vs_normal_noabs_*.pkl``,
``notebooks/8_head_ablation.ipynb``), read as the untrusted input it is.

The file is a pickle: a dict keyed by the tuple ``(layer, neuron, flat_head)``, each value
``{"ablated", "normal"}`` (1-D float32 torch tensors: the probability of the neuron's token at
each held-out prompt's last position with the head's value vectors zeroed, and without) and
``{"act_diff_relevant", "act_diff_irrelevant"}`` (numpy scalars: the mean of ``normal -
ablated`` over the prompts where the head is / is not in the prompt's top 3; NaN when that
group is empty).

Unpickling runs whatever callables a pickle names, so :class:`AllowListUnpickler` resolves only
the globals this file holds:

- ``collections.OrderedDict``;
- ``torch._utils._rebuild_tensor_v2`` (a tensor view of a storage; it checks its bounds);
- ``torch.storage._load_from_bytes``, which in torch is ``torch.load(..., weights_only=False)``,
  an unrestricted nested unpickler: it is mapped to :func:`load_storage`, the same bytes read
  with ``torch.load(..., weights_only=True)`` (torch's own allow-list), whose result must be a
  storage;
- ``numpy.dtype`` (float dtypes only) and ``numpy.core.multiarray.scalar`` /
  ``numpy._core.multiarray.scalar`` (numpy 1 and 2 names; float scalars only).

Any other global, a persistent id, or a nested stream with another object is refused with one
line naming the file, before anything it names is called.
"""

from __future__ import annotations

import collections
import io
import math
import pickle

from context_lookups.precompute.paper.files import PaperFormatError

MAX_VALUES = 1000  # held-out prompts per pair in one file (the authors' files: at most 30)


def load_storage(b: bytes):
    """``torch.storage._load_from_bytes`` made safe: the nested stream read by torch's
    weights-only unpickler; only a storage is accepted.

    Raises:
        pickle.UnpicklingError: not a storage, or refused by the weights-only unpickler.
    """
    import torch

    if not isinstance(b, bytes):
        raise pickle.UnpicklingError("a nested storage that is not bytes")
    try:
        obj = torch.load(io.BytesIO(b), weights_only=True)
    except Exception as exc:  # torch's message spans many lines: keep the one naming the object
        lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
        what = next((x for x in lines if "Unsupported global" in x or "GLOBAL" in x),
                    lines[-1] if lines else type(exc).__name__)
        raise pickle.UnpicklingError(f"a nested torch stream holds objects torch.load(weights_only=True) "
                                     f"does not allow ({what[:160]})") from None
    if not isinstance(obj, (torch.UntypedStorage, torch.TypedStorage)):
        raise pickle.UnpicklingError(f"a nested torch stream holds {type(obj).__name__}, not a storage")
    return obj


def _dtype(*args):
    import numpy as np

    dt = np.dtype(*args)
    if dt.kind != "f":
        raise pickle.UnpicklingError(f"a numpy dtype {dt} (only float dtypes are in the authors' file)")
    return dt


def _scalar(dtype, data=None):
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.kind != "f" or not isinstance(data, bytes):
        raise pickle.UnpicklingError("a numpy scalar that is not a float")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _rebuild_tensor(*args):
    import torch
    from torch._utils import _rebuild_tensor_v2

    if not args or not isinstance(args[0], (torch.UntypedStorage, torch.TypedStorage)):
        raise pickle.UnpicklingError("a tensor whose storage is not a torch storage")
    return _rebuild_tensor_v2(*args)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): load_storage,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
}


class AllowListUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of the authors' ablation file (see the
    module docstring); anything else raises ``pickle.UnpicklingError`` before it is called."""

    def find_class(self, module, name):
        fn = _ALLOWED.get((module, name))
        if fn is None:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which is not among the objects "
                                         f"the authors' ablation file holds")
        return fn

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it holds a persistent id, which the authors' ablation file does not")


def _values(t, where: str, field: str) -> list[float]:
    import torch

    if not isinstance(t, torch.Tensor) or t.dim() != 1 or not t.is_floating_point():
        raise PaperFormatError(f"{where}: field {field!r} should be a 1-D float tensor.")
    if t.numel() > MAX_VALUES:
        raise PaperFormatError(f"{where}: field {field!r} holds {t.numel()} values, above the importer's "
                               f"limit of {MAX_VALUES} held-out prompts per pair (the authors': 30).")
    vals = [float(x) for x in t.tolist()]
    for x in vals:
        if not (math.isfinite(x) and 0.0 <= x <= 1.0):
            raise PaperFormatError(f"{where}: field {field!r} holds {x}, not a probability; the authors' "
                                   f"data has only finite probabilities there.")
    return vals


def _mean(v, where: str, field: str) -> float:
    import numpy as np

    if isinstance(v, (np.floating, float)) and not isinstance(v, bool):
        x = float(v)
        if math.isnan(x) or math.isfinite(x):  # NaN: the authors' empty group
            return x
    raise PaperFormatError(f"{where}: field {field!r} should be a finite float or NaN (an empty group).")


def read_ablation(raw: bytes, rel: str) -> dict[tuple[int, int, int], dict]:
    """The authors' ablation file: pair → ``{"normal": [p], "ablated": [p], "relevant": mean
    drop where active (NaN: none), "irrelevant": ...}``, in file order.

    Raises:
        PaperFormatError: the pickle names an object outside the allow-list (nothing it names
            is called), is malformed, or does not have the authors' structure (one line,
            naming the file).
    """
    try:
        data = AllowListUnpickler(io.BytesIO(raw)).load()
    except pickle.UnpicklingError as exc:
        raise PaperFormatError(f"{rel}: refused: {exc}; not read.") from None
    except Exception as exc:  # a malformed stream: EOFError, TypeError, RuntimeError, MemoryError...
        msg = " ".join(str(exc).split())[:200]
        raise PaperFormatError(f"{rel}: not a readable pickle ({type(exc).__name__}: {msg}).") from None
    if not isinstance(data, dict):
        raise PaperFormatError(f"{rel}: holds {type(data).__name__}, not the authors' dict of pairs.")
    out = {}
    for key, v in data.items():
        if not (isinstance(key, tuple) and len(key) == 3 and
                all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 10**6 for x in key)):
            raise PaperFormatError(f"{rel}: key {str(key)[:60]} is not a (layer, neuron, flat head) tuple.")
        where = f"{rel}[{key}]"
        if not isinstance(v, dict):
            raise PaperFormatError(f"{where}: should be a dict of 'normal', 'ablated' and the mean drops.")
        for f in ("normal", "ablated", "act_diff_relevant", "act_diff_irrelevant"):
            if f not in v:
                raise PaperFormatError(f"{where}: missing field {f!r}.")
        normal, ablated = _values(v["normal"], where, "normal"), _values(v["ablated"], where, "ablated")
        if len(normal) != len(ablated):
            raise PaperFormatError(f"{where}: 'normal' has {len(normal)} values but 'ablated' {len(ablated)}.")
        out[key] = {"normal": normal, "ablated": ablated,
                    "relevant": _mean(v["act_diff_relevant"], where, "act_diff_relevant"),
                    "irrelevant": _mean(v["act_diff_irrelevant"], where, "act_diff_irrelevant")}
    return out
