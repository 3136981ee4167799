"""Data folders shipped inside the packages, found through ``importlib.resources``.

The repository keeps ``templates/``, ``static/`` and ``alembic/`` at its top level; the packages
point at them through symlinks (``app/templates``, ``app/static``, ``precompute/migrations``),
which the build follows, so a wheel carries real copies inside ``app/`` and ``precompute/``.
The same lookup therefore works in a source checkout, an editable install and a wheel.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def resource_dir(package: str, name: str) -> Path:
    """The folder ``name`` inside the installed ``package``, as a filesystem path.

    Raises:
        FileNotFoundError: the folder is missing (a broken install: reinstall the package).
    """
    path = Path(str(files(package).joinpath(name)))
    if not path.is_dir():
        raise FileNotFoundError(f"{package}/{name} is missing from the installed package at {path}: "
                                f"reinstall context-lookups (pip install .).")
    return path
