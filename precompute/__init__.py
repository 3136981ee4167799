"""context-lookups: the science (Neo, Cohen & Barez, EMNLP 2024) and the storage schema.

`precompute` never imports `app` (the web layer); `app` imports `precompute`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("context-lookups")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
