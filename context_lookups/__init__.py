"""context-lookups: how attention heads switch on next-token neurons (Neo, Cohen & Barez,
*Interpreting Context Look-ups in Transformers*, EMNLP 2024).

The one import name of the project. Its parts are installed beneath it:

- ``context_lookups.precompute``: the science and the storage schema (the repository's
  ``precompute/`` folder);
- ``context_lookups.app``: the web explorer (the repository's ``app/`` folder).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("context-lookups")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
