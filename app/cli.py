"""The ``lookups`` console script: precompute's commands plus ``serve`` (the web layer).

``serve`` takes one option per :class:`app.settings.WebSettings` field, and reads the same
``LOOKUPS_*`` environment variables as the precompute job (``LOOKUPS_DB_URL`` among them).
"""

from __future__ import annotations

import json
import sys

from precompute.cli import _add_settings_options, _settings, given_options
from precompute.cli import main as _main

from .settings import WebSettings


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve the explorer on a database (read-only)")
    _add_settings_options(p, cls=WebSettings)
    p.add_argument("--host", default="127.0.0.1", help="bind address [default: 127.0.0.1]")
    p.add_argument("--port", type=int, default=8000, help="port [default: 8000]")
    # `lookups config` prints the web settings too; it accepts their options
    _add_settings_options(sub.choices["config"], cls=WebSettings)


def _serve(ns) -> int:
    import uvicorn

    from .main import create_app

    app = create_app(**given_options(ns, WebSettings))
    url = app.state.settings.db_url
    print(f"context-lookups: serving {url} at http://{ns.host}:{ns.port}/", flush=True)
    uvicorn.run(app, host=ns.host, port=ns.port, log_level="info")
    return 0


def _config(ns) -> int:
    out = {"precompute": _settings(ns).model_dump(),
           "serve": WebSettings(**given_options(ns, WebSettings)).model_dump()}
    print(json.dumps(out, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    return _main(argv, extra=_add_serve, handlers={"serve": _serve, "config": _config})


if __name__ == "__main__":
    sys.exit(main())
