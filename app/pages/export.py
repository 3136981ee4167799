"""The ``.csv`` twins of the list pages: the rows of the ``.json`` twin, written with the
standard library's :mod:`csv` module.

- **Every row.** A list's CSV holds every row matching its filters, not one page: the keys of
  the rows are read once, in the list's order (one sort, ids only), then the rows
  :data:`CHUNK` at a time by key and streamed as they are written, so the time is linear in
  the rows (reading pages by OFFSET re-sorted and skipped every row before each page: 200,000
  rows took a minute) and memory holds the keys, not the rows. The JSON twin stays one page.
- **Round trip.** RFC 4180 (``\\r\\n`` rows, fields quoted when they hold a comma, quote, CR or
  LF): Python's ``csv`` reader (and spreadsheets) read back the same rows whatever a token holds.
- **Formulas.** A text cell starting with ``=``, ``+``, ``-``, ``@``, tab or CR would run as a
  formula in a spreadsheet (CSV injection); such cells get a leading ``'`` (OWASP's rule), which
  spreadsheets hide. So do cells whose first character after leading spaces or line breaks is
  one of those, or a fullwidth ``＝ ＋ － ＠`` (outside OWASP's list, but some spreadsheets trim
  or fold them and evaluate). Numbers are written as numbers. The JSON twin keeps every text
  exact.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import quote

from fastapi.responses import Response, StreamingResponse

CHUNK = 500  # rows read per query while streaming a CSV
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "＝", "＋", "－", "＠")


def cell(v):
    """One CSV cell: None empty, booleans ``true``/``false`` as in JSON, text that a spreadsheet
    would run as a formula prefixed with ``'``; numbers as they are."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return ""
    if isinstance(v, str) and (v.startswith(FORMULA_START) or v.lstrip(" \n\r\t").startswith(FORMULA_START)):
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
    """``Content-Disposition`` offering ``filename`` (RFC 6266): an ASCII ``filename=`` for old
    clients and the exact name as ``filename*=UTF-8''...`` (percent-encoded UTF-8, RFC 8187), so
    a header never carries a character latin-1 cannot encode."""
    ascii_name = re.sub(r"[^A-Za-z0-9._-]+", "_", filename)
    return {"Content-Disposition": f"attachment; filename=\"{ascii_name}\"; "
                                   f"filename*=UTF-8''{quote(filename, safe='')}"}


def csv_response(rows: list[dict], *, filename: str) -> Response:
    """A ``text/csv`` response of ``rows`` (:func:`csv_text`), offered as ``filename``."""
    return Response(csv_text(rows), media_type="text/csv; charset=utf-8", headers=_disposition(filename))


def all_rows_csv(fetch: Callable, keys, session, session_factory, *, filename: str) -> StreamingResponse:
    """A ``text/csv`` response of every row of a list, streamed by key: ``keys`` are the rows'
    keys in the list's order, ``fetch(session, keys)`` the rows of some of them, :data:`CHUNK`
    at a time. The first chunk is read here, in the request's ``session`` (so a bad filter is
    an error page, not a cut stream); the others in a session of its own (the request's is
    closed when the handler returns)."""
    rows = fetch(session, keys[:CHUNK])

    def chunks() -> Iterator[list[dict]]:
        yield rows
        if len(keys) > CHUNK:
            with session_factory() as s:
                for i in range(CHUNK, len(keys), CHUNK):
                    yield fetch(s, keys[i:i + CHUNK])

    return StreamingResponse(csv_lines(chunks()), media_type="text/csv; charset=utf-8",
                             headers=_disposition(filename))
