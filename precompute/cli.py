"""The ``lookups`` command: precompute, explain, import-paper, db upgrade|current|metadata, config
(``serve``: app.cli).

Logging is configured here (the entry point) and nowhere else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import sys
import typing

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from context_lookups.precompute.core.errors import LookupsError
from context_lookups.precompute.core.options import Options, given
from context_lookups.precompute.core.redact import RedactingFilter, mask_db_url, mask_url
from context_lookups.precompute.core.settings import Settings

logger = logging.getLogger("lookups")

EXIT_BAD_INPUT = 2


def _settings(ns: argparse.Namespace) -> Settings:
    """The precompute settings of a parsed command: its options, then the environment and the
    defaults (validated by :class:`Settings`)."""
    return Settings(**given(ns, Settings))


EXPLAIN_FIELDS = ("db_url", "run_name", "model", "explainer", "heldout_per_pair", "llm_base_url",
                  "llm_model", "llm_api_key_env", "llm_temperature", "llm_max_tokens",
                  "llm_concurrency", "llm_timeout", "llm_max_retries", "seed")


def build_parser(extra: typing.Callable | None = None,
                 config_classes: tuple = (Settings,)) -> argparse.ArgumentParser:
    """The ``lookups`` parser; ``extra(subparsers)`` adds commands of other layers (``serve``
    is added by ``app.cli`` so that this package never imports the web layer), and
    ``config_classes`` are the settings classes whose options ``lookups config`` takes."""
    ap = argparse.ArgumentParser(prog="lookups", description="context-lookups: how attention heads "
                                 "switch on next-token neurons (Neo, Cohen & Barez, EMNLP 2024).")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("precompute", help="find next-token neurons, their prompts, head "
                       "attributions, explanations and ablations; store them in SQLite")
    Options(p, Settings)
    p = sub.add_parser("explain", help="explain and score the kept (neuron, head) pairs of an "
                       "existing run (baseline explainer or an OpenAI-compatible LLM)")
    Options(p, Settings, fields=EXPLAIN_FIELDS, shortcuts={"run-name": "run"})
    p = sub.add_parser("import-paper", help="import the authors' released GPT-2 results (their "
                       "experiment_data folder) as one run per model: gpt2-small, -medium, -large")
    p.add_argument("path", help="the authors' neuron_groups/experiment_data folder")
    p.add_argument("--db", "--db-url", dest="db_url", default=None, help="SQLAlchemy URL of the "
                   "database [default: sqlite:///lookups.db]")
    p = sub.add_parser("db", help="database maintenance")
    p.add_argument("action", choices=["upgrade", "current", "metadata"], help="upgrade: migrate to "
                   "the newest schema; current: print the schema revision; metadata: write "
                   "Datasette's metadata.json (table and column descriptions, units)")
    p.add_argument("--db", "--db-url", dest="db_url", default=None, help="SQLAlchemy URL of the "
                   "database [default: sqlite:///lookups.db]")
    p.add_argument("-o", "--output", default=None, help="metadata: write to this file (default: "
                   "standard output); an existing file is replaced only if it is a metadata file")
    p = sub.add_parser("config", help="print the effective settings (defaults, environment, options)")
    Options(p, *config_classes)
    if extra is not None:
        extra(sub)
    return ap


def main(argv: list[str] | None = None, *, extra=None, handlers: dict | None = None,
         config_classes: tuple = (Settings,)) -> int:
    """Entry point: parse, configure logging, dispatch; domain errors exit 2 with a message."""
    ns = build_parser(extra, config_classes).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # httpx/httpx2 log every request's URL at INFO (an --llm-base-url may hold credentials);
    # alembic: precompute.store.db logs the one line that matters
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "datasets", "filelock",
                  "urllib3", "transformers", "huggingface_hub", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for h in logging.getLogger().handlers:  # no API key reaches a log line (an endpoint may echo it)
        h.addFilter(RedactingFilter())
    try:
        if handlers and ns.command in handlers:
            return handlers[ns.command](ns)
        return _dispatch(ns)
    except LookupsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValidationError as exc:  # a setting's value: one line per field
        for line in validation_lines(exc):
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (SQLAlchemyError, sqlite3.Error) as exc:  # those precompute.store.db has not translated
        from context_lookups.precompute.store.db import database_error
        print(f"error: {database_error(getattr(ns, 'db_url', None), exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: everything committed so far is kept; run the same command to resume.",
              file=sys.stderr)
        return 130


def validation_lines(exc: ValidationError) -> list[str]:
    """One line per invalid setting: ``--active-sigma (LOOKUPS_ACTIVE_SIGMA) nan: Input should
    be a finite number``."""
    out = []
    for e in exc.errors(include_url=False):
        name = str(e["loc"][0]) if e["loc"] else ""
        where = f"--{name.replace('_', '-')} (LOOKUPS_{name.upper()})" if name else "settings"
        if not e["loc"] and e["type"] == "value_error":  # a rule across fields: its own words
            out.append(str(e["ctx"]["error"]))
            continue
        if "input" not in e:
            out.append(f"{where}: {e['msg']}")
            continue
        value = e["input"]  # as typed (options arrive as text): 1e26, not '1e26'
        shown = value if isinstance(value, str) and value.strip() == value and value else repr(value)
        out.append(f"{where} {shown}: {e['msg']}")
    return out


def printable(settings: dict) -> dict:
    """A settings dump as it may be printed: the database password and the credentials of
    the LLM URL masked."""
    out = dict(settings)
    if "db_url" in out:
        out["db_url"] = mask_db_url(out["db_url"])
    if "llm_base_url" in out:
        out["llm_base_url"] = mask_url(out["llm_base_url"])
    return out


def _sqlite_bytes(db_url: str) -> int | None:
    """The size of a SQLite database file (with its write-ahead log), or None for another
    database."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    files = [Path(url.database), Path(url.database + "-wal")]
    return sum(f.stat().st_size for f in files if f.is_file()) or None


def _dispatch(ns: argparse.Namespace) -> int:
    if ns.command == "config":
        print(json.dumps(printable(_settings(ns).model_dump()), indent=2, default=str))
        return 0
    if ns.command == "precompute":
        from context_lookups.precompute.job.pipeline import run_precompute
        from context_lookups.precompute.job.summary import summary_text
        s = _settings(ns)
        summary = run_precompute(s)
        print(summary_text(summary, s, db_shown=mask_db_url(s.db_url), db_bytes=_sqlite_bytes(s.db_url)))
        return 0
    if ns.command == "explain":
        return explain_command(_settings(ns))
    if ns.command == "import-paper":
        from context_lookups.precompute.paper.command import import_command
        return import_command(ns.path, ns.db_url or Settings().db_url)
    if ns.command == "db":
        from context_lookups.precompute.store.db import current_revision, open_writer
        url = ns.db_url or Settings().db_url
        if ns.action == "metadata":
            from context_lookups.precompute.store.metadata import check_output, datasette_metadata
            if ns.output:
                check_output(ns.output)  # never the database, nor any file but a metadata file
            text = json.dumps(datasette_metadata(url), indent=2, ensure_ascii=False) + "\n"
            if ns.output:
                with open(ns.output, "w", encoding="utf-8") as fh:
                    fh.write(text)
                from sqlalchemy.engine import make_url
                print(f"wrote {ns.output}; use it with: datasette {make_url(url).database} "
                      f"--metadata {ns.output}")
            else:
                sys.stdout.write(text)
            return 0
        if ns.action == "upgrade":
            engine = open_writer(url)
            print(f"{mask_db_url(url)}: schema at revision {current_revision(engine)}")
        else:  # read-only: never creates the file
            from context_lookups.precompute.store.db import read_only_engine
            engine = read_only_engine(url)
            try:
                print(current_revision(engine))
            finally:
                engine.dispose()
        return 0
    raise AssertionError(ns.command)


EXIT_ALL_FAILED = 1


def explain_command(settings: Settings) -> int:
    """``lookups explain``: explain and score the kept pairs of an existing run with
    ``settings.explainer`` (no model is loaded), then print the score table, and on a run with
    another explainer the per-pair comparison with it.

    Returns: 0; ``EXIT_ALL_FAILED`` (1) when pairs were attempted and none succeeded (failure
    counts are printed whenever some failed).

    Raises:
        FileNotFoundError: the SQLite database does not exist.
        NotFound: no run to explain (message lists the runs).
        ValueError: ``--explainer none``.
        BadSettings: the LLM explainer without a usable API key.
    """
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from context_lookups.precompute.explain.explainers import explainer_name
    from context_lookups.precompute.explain.step import run_explanations
    from context_lookups.precompute.findings.report import (
        comparison_table,
        explainers_of_run,
        find_run,
        format_comparison,
        format_table,
        score_table,
    )
    from context_lookups.precompute.store.db import open_writer, sessions

    name = explainer_name(settings)
    url = make_url(settings.db_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        raise FileNotFoundError(f"Database {url.database} not found: run `lookups precompute` "
                                f"first or pass --db.")
    engine = open_writer(settings.db_url)
    try:
        Session = sessions(engine)
        with Session() as s:
            run = find_run(s, run_name=settings.run_name, model=settings.model)
        stats = run_explanations(Session, run.id, None, settings)
        with Session() as s:
            table = format_table(score_table(s, run_id=run.id, explainer=name))
            others = [e for e in explainers_of_run(s, run_id=run.id) if e != name]
            cmp = (format_comparison(comparison_table(s, run_id=run.id, a=others[0], b=name))
                   if others else None)
    finally:
        engine.dispose()
    # The command's output (logging is configured in main; results go to stdout).
    print(table)
    if cmp:
        print(cmp)
    extra = {k: v for k, v in stats.items() if k.startswith("requests_")}
    done, failed = stats["pairs_done"], stats["failed"]
    print(f"run {run.slug!r}: {done} pairs done now "
          f"(ok {stats['ok']}, failed {failed}, single-class {stats['single_class']}, "
          f"unparsed answers {stats['n_unparsed']})" + (f"; LLM {extra}" if extra else ""))
    if done and failed == done:
        print(f"error: all {done} pairs failed ({name}); nothing was explained. The reasons are "
              f"logged above and stored with each explanation; fix them and run the same command.",
              file=sys.stderr)
        return EXIT_ALL_FAILED
    if failed:
        print(f"warning: {failed} of {done} pairs failed ({name}); run the same command to retry "
              f"them.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
