"""context-lookups: how attention heads switch on next-token neurons (Neo, Cohen & Barez,
*Interpreting Context Look-ups in Transformers*, EMNLP 2024).

The one import name of the project, and its Python API (docs/python.md):

- :func:`open`: a database the explorer reads, read-only; its runs' neurons, pairs, prompts,
  explanations, ablations and findings as pandas DataFrames, and a neuron's or a pair's page as
  an object whose ``to_dict()`` is the page's ``.json`` twin and which shows the page inline;
- :func:`load_model`, :func:`lookup` (a neuron, its head attribution and a head's context
  look-up on a prompt: the live page's pass) and :func:`fire` (the /fire page's result).

The parts of the project are installed beneath it:

- ``context_lookups.precompute``: the science and the storage schema (the repository's
  ``precompute/`` folder);
- ``context_lookups.app``: the web explorer (the repository's ``app/`` folder).

The API loads pandas, torch and the explorer only when one of its names is first used, so
``import context_lookups.app`` (the server) costs nothing more.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("context-lookups")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

_API = {"open": "stored", "Database": "stored", "Run": "stored", "NeuronPage": "stored", "PairPage": "stored",
        "Findings": "stored", "load_model": "compute", "lookup": "compute", "fire": "compute",
        "Lookup": "compute", "Fire": "compute"}

__all__ = ["Database", "Findings", "Fire", "Lookup", "NeuronPage", "PairPage", "Run", "__version__", "fire",
           "load_model", "lookup", "open"]


def __getattr__(name: str):
    """The API's names, imported on first use."""
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
