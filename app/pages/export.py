"""The ``.csv`` twins of the list pages: the rows of the ``.json`` twin, written with the
standard library's :mod:`csv` module.

- **Every row.** A list's CSV holds every row matching its filters, not one page: the rows are
  read page by page (:data:`CHUNK` at a time, in the list's order) and streamed as they are
  written, so memory does not grow with the list. The JSON twin stays one page.
- **Round trip.** RFC 4180 (``\\r\\n`` rows, fields quoted when they hold a comma, quote, CR or
  LF): Python's ``csv`` reader (and spreadsheets) read back the same rows whatever a token holds.
- **Formulas.** A text cell starting with ``=``, ``+``, ``-``, ``@``, tab or CR would run as a
  formula in a spreadsheet (CSV injection); such cells get a leading ``'`` (OWASP's rule), which
  spreadsheets hide. Numbers are written as numbers. The JSON twin keeps every text exact.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator

from fastapi.responses import Response, StreamingResponse

CHUNK = 500  # rows read per query while streaming a CSV
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(v):
    """One CSV cell: None empty, booleans ``true``/``false`` as in JSON, text that a spreadsheet
    would run as a formula prefixed with ``'``; numbers as they are."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return ""
    if isinstance(v, str) and v.startswith(FORMULA_START):
        return "'" + v
    return v


def columns(rows: list[dict]) -> list[str]:
    """One column per scalar field (str, int, float, bool, None), in the order the fields first
    appear; lists and dicts (nested data) are left to the JSON twin."""
    cols: dict[str, None] = {}
    for r in rows:
        for k, v in r.items():
            if v is None or isinstance(v, (str, int, float, bool)):
                cols.setdefault(k)
    return list(cols)


def csv_lines(chunks: Iterable[list[dict]], cols: list[str] | None = None) -> Iterator[str]:
    """The CSV text of ``chunks`` of rows (header first, columns of the first chunk unless
    given), one string per chunk."""
    buf = io.StringIO()
    w = csv.writer(buf)  # RFC 4180: \r\n rows; CR and LF in a field are quoted
    for rows in chunks:
        if cols is None:
            cols = columns(rows)
            w.writerow(cols)
        for r in rows:
            w.writerow(cell(r.get(k)) for k in cols)
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
    if cols is None:  # no chunk at all: an empty file
        yield ""


def csv_text(rows: list[dict]) -> str:
    """``rows`` as CSV (:func:`csv_lines` of one chunk)."""
    return "".join(csv_lines([rows]))


def _disposition(filename: str) -> dict:
    safe = re.sub(r"[^\w.-]+", "_", filename)
    return {"Content-Disposition": f'attachment; filename="{safe}"'}


def csv_response(rows: list[dict], *, filename: str) -> Response:
    """A ``text/csv`` response of ``rows`` (:func:`csv_text`), offered as ``filename``."""
    return Response(csv_text(rows), media_type="text/csv; charset=utf-8", headers=_disposition(filename))


def all_pages_csv(fetch: Callable, first: tuple[list[dict], int], session_factory, *,
                  filename: str) -> StreamingResponse:
    """A ``text/csv`` response of every page of a list, streamed: ``first`` is page 1 as
    ``(rows, n_pages)``, already read (so a bad filter is an error page, not a cut stream);
    ``fetch(session, page)`` reads the next ones, in a session of its own (the request's is
    closed when the handler returns)."""
    rows, n_pages = first

    def chunks() -> Iterator[list[dict]]:
        yield rows
        if n_pages > 1:
            with session_factory() as s:
                for page in range(2, n_pages + 1):
                    yield fetch(s, page)[0]

    return StreamingResponse(csv_lines(chunks()), media_type="text/csv; charset=utf-8",
                             headers=_disposition(filename))
