"""The ``.csv`` twins of the list pages: the rows of the ``.json`` twin, written with the
standard library's :mod:`csv` module."""

from __future__ import annotations

import csv
import io
import re

from fastapi.responses import Response


def _cell(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else v


def csv_text(rows: list[dict]) -> str:
    """``rows`` as CSV: one column per scalar field (str, int, float, bool, None), in the order
    the fields first appear; lists and dicts (nested data) are left to the JSON twin. None is
    an empty cell, booleans are ``true``/``false`` as in JSON."""
    cols: dict[str, None] = {}
    for r in rows:
        for k, v in r.items():
            if v is None or isinstance(v, (str, int, float, bool)):
                cols.setdefault(k)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(_cell(r.get(k)) for k in cols)
    return buf.getvalue()


def csv_response(rows: list[dict], *, filename: str) -> Response:
    """A ``text/csv`` response of ``rows`` (:func:`csv_text`), offered as ``filename``."""
    safe = re.sub(r"[^\w.-]+", "_", filename)
    return Response(csv_text(rows), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{safe}"'})
