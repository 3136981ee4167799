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
- ``torch._utils._rebuild_tensor_v2`` (a tensor view of a storage): the view (offset, size,
  stride) must lie inside the elements the file's storage holds (torch would grow the storage
  to fit, with memory the file never held);
- ``torch.storage._load_from_bytes``, which in torch is ``torch.load(..., weights_only=False)``,
  an unrestricted nested unpickler: it is mapped to :func:`load_storage`, the same bytes read
  with ``torch.load(..., weights_only=True)`` (torch's own allow-list), whose result must be a
  storage;
- ``numpy.dtype`` (float dtypes only) and ``numpy.core.multiarray.scalar`` /
  ``numpy._core.multiarray.scalar`` (numpy 1 and 2 names; float scalars only).

Any other global, a persistent id, or a nested stream with another object is refused with one
line naming the file, before anything it names is called.

What the unpickler builds is bounded too. A pickle may refer to an object it built before (its
memo) any number of times, so a few hundred bytes can describe a tuple of tuples whose full
tree holds 3**19 items: hashing it as a dict key, or printing it, never ends. The authors' file
refers again only to strings, callables and numpy dtypes, never to a container: a reference to a
tuple, list, dict or set it built before (a memo fetch, or ``DUP``) is refused, so the objects
built are at most the opcodes read, at most :data:`MAX_OBJECTS`. Untrusted objects are
described in messages by type and size, never by ``str()`` or ``repr()``.
"""

from __future__ import annotations

import collections
import io
import math
import pickle

from context_lookups.precompute.paper.files import PaperFormatError

MAX_VALUES = 1000  # held-out prompts per pair in one file (the authors' files: at most 30)
MAX_OBJECTS = 5_000_000  # opcodes run, each building at most one object (the sample: 2,700 for 29 pairs)
_CONTAINERS = (tuple, list, dict, set, frozenset, bytearray)


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


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _rebuild_tensor(storage=None, offset=None, size=None, stride=None, *rest):
    """``torch._utils._rebuild_tensor_v2`` for a view that lies inside its storage: ``offset``,
    ``size`` and ``stride`` (elements) must address only elements the storage holds, and the
    view has at most as many elements as the storage (torch itself would grow the storage to
    fit the view, with uninitialised memory).

    Raises:
        pickle.UnpicklingError: not a typed storage, or a view that does not fit inside it.
    """
    import torch
    from torch._utils import _rebuild_tensor_v2

    if not isinstance(storage, torch.TypedStorage):
        raise pickle.UnpicklingError("a tensor whose storage is not a torch storage")
    if not (_is_int(offset) and isinstance(size, tuple) and isinstance(stride, tuple)
            and len(size) == len(stride) <= 8 and all(_is_int(x) for x in size + stride)):
        raise pickle.UnpicklingError("a tensor whose offset, size or stride are not integers")
    held = storage._untyped_storage.nbytes() // torch.empty((), dtype=storage.dtype).element_size()
    numel = math.prod(size)
    last = offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True))  # the last element read
    if offset < 0 or min(size + stride, default=0) < 0 or numel > held or (numel and last >= held):
        raise pickle.UnpicklingError(f"a tensor view (offset {offset}, {len(size)}-D size and stride) "
                                     f"that does not fit inside its storage of {held} elements")
    return _rebuild_tensor_v2(storage, offset, size, stride, *rest)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): load_storage,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
}


def _describe(obj) -> str:
    """An untrusted object named by its type and size, never by its text."""
    n = len(obj) if isinstance(obj, _CONTAINERS + (str, bytes)) else None
    return type(obj).__name__ + (f" of {n} items" if n is not None else "")


def _counted(op):
    def run(self):
        self.built += 1
        if self.built > MAX_OBJECTS:
            raise pickle.UnpicklingError(f"it builds more than {MAX_OBJECTS} objects")
        op(self)
    return run


def _fetched(op):
    def run(self):
        op(self)
        if isinstance(self.stack[-1], _CONTAINERS):
            raise pickle.UnpicklingError(f"it refers again to a {_describe(self.stack[-1])} it built "
                                         f"before (the authors' file shares no container)")
    return run


def _dispatch() -> dict:
    """The pure-Python unpickler's opcode table with every opcode counted and a second
    reference to a container (a memo fetch, or ``DUP``) refused."""
    table = dict(pickle._Unpickler.dispatch)
    for code in (pickle.GET, pickle.BINGET, pickle.LONG_BINGET, pickle.DUP):
        table[code[0]] = _fetched(table[code[0]])
    return {k: _counted(v) for k, v in table.items()}


class AllowListUnpickler(pickle._Unpickler):
    """An unpickler that resolves only the globals of the authors' ablation file (see the
    module docstring); anything else raises ``pickle.UnpicklingError`` before it is called.
    It refuses a second reference to a container it built (a memo fetch of a tuple, list,
    dict or set) and more than :data:`MAX_OBJECTS` opcodes; ``built`` counts the opcodes run.

    It is the pure-Python unpickler (``pickle._Unpickler``), whose opcodes can be checked one
    by one; the authors' file is small (24 KB for 29 pairs).
    """

    dispatch = _dispatch()
    built = 0

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
            raise PaperFormatError(f"{rel}: a key ({_describe(key)}) is not a (layer, neuron, flat head) "
                                   f"tuple.")
        where = f"{rel}[{key}]"
        if not isinstance(v, dict):
            raise PaperFormatError(f"{where}: should be a dict of 'normal', 'ablated' and the mean drops.")
        for f in ("normal", "ablated", "act_diff_relevant", "act_diff_irrelevant"):
            if f not in v:
                raise PaperFormatError(f"{where}: missing field {f!r}.")
        normal, ablated = _values(v["normal"], where, "normal"), _values(v["ablated"], where, "ablated")
        if len(normal) != len(ablated):
            raise PaperFormatError(f"{where}: 'normal' has {len(normal)} values "
                                   f"but 'ablated' {len(ablated)}.")
        out[key] = {"normal": normal, "ablated": ablated,
                    "relevant": _mean(v["act_diff_relevant"], where, "act_diff_relevant"),
                    "irrelevant": _mean(v["act_diff_irrelevant"], where, "act_diff_irrelevant")}
    return out
