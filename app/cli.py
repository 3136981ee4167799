"""The ``lookups`` console script: precompute's commands plus ``serve`` (the web layer)."""

from __future__ import annotations

import sys

from precompute.cli import main as _main


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve the explorer on a database (read-only)")
    p.add_argument("--db", dest="db_url", default=None, help="database URL [default: sqlite:///lookups.db]")
    p.add_argument("--host", default="127.0.0.1", help="bind address [default: 127.0.0.1]")
    p.add_argument("--port", type=int, default=8000, help="port [default: 8000]")


def _serve(ns) -> int:
    import uvicorn

    from precompute.settings import Settings

    from .main import create_app

    url = ns.db_url or Settings().db_url
    app = create_app(db_url=url)
    print(f"context-lookups: serving {url} at http://{ns.host}:{ns.port}/", flush=True)
    uvicorn.run(app, host=ns.host, port=ns.port, log_level="info")
    return 0


def main(argv: list[str] | None = None) -> int:
    return _main(argv, extra=_add_serve, handlers={"serve": _serve})


if __name__ == "__main__":
    sys.exit(main())
