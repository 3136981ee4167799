"""The ``lookups`` console script: precompute's commands plus ``serve`` (the web layer).

``serve`` takes one option per :class:`app.settings.WebSettings` field, and reads the same
``LOOKUPS_*`` environment variables as the precompute job (``LOOKUPS_DB_URL`` among them).
"""

from __future__ import annotations

import json
import sys

from pydantic import ValidationError

from context_lookups.precompute.cli import EXIT_BAD_INPUT, printable, validation_lines
from context_lookups.precompute.cli import main as _main
from context_lookups.precompute.core.options import Options, given
from context_lookups.precompute.core.redact import mask_db_url
from context_lookups.precompute.core.settings import SERVE_HOST, SERVE_PORT, Settings

from .settings import WebSettings


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve the explorer on a database (read-only)")
    Options(p, WebSettings)
    p.add_argument("--host", default=SERVE_HOST, help=f"bind address [default: {SERVE_HOST}]")
    p.add_argument("--port", type=int, default=SERVE_PORT, help=f"port [default: {SERVE_PORT}]")


def _serve(ns) -> int:
    import uvicorn

    from .main import create_app

    app = create_app(**given(ns, WebSettings))
    url = mask_db_url(app.state.settings.db_url)
    print(f"context-lookups: serving {url} at http://{ns.host}:{ns.port}/", flush=True)
    uvicorn.run(app, host=ns.host, port=ns.port, log_level="info")
    return 0


def _config(ns) -> int:
    out, errors = {}, []
    for part, cls in (("precompute", Settings), ("serve", WebSettings)):
        try:
            out[part] = printable(cls(**given(ns, cls)).model_dump())
        except ValidationError as exc:  # both classes checked: every bad value at once
            errors += validation_lines(exc)
    for line in dict.fromkeys(errors):
        print(f"error: {line}", file=sys.stderr)
    if errors:
        return EXIT_BAD_INPUT
    print(json.dumps(out, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    return _main(argv, extra=_add_serve, handlers={"serve": _serve, "config": _config},
                 config_classes=(Settings, WebSettings))


if __name__ == "__main__":
    sys.exit(main())
