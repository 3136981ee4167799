"""Command-line options made from the settings classes by pydantic-settings' own CLI support
(``CliSettingsSource`` on an argparse sub-command).

One option per field (``n_per_layer`` → ``--n-per-layer``), help from the field's description
with its default and environment variable; lists take several values (``--layers 9 10 11``),
booleans a ``--no-`` form, dicts (``model_paths``) are set through the environment only. The
options only collect what was typed: the values are validated by the settings class itself
(``Settings(**given)``), so an option, its ``LOOKUPS_*`` variable and ``create_app(**kw)`` obey
the same rules and a bad value is reported by the field's name.
"""

from __future__ import annotations

import argparse
import copy
import typing

from pydantic import create_model
from pydantic_settings import BaseSettings, CliSettingsSource, CliSuppress, CliVariadicArg, SettingsConfigDict

# Every command: `--db` is the short spelling of `--db-url`.
SHORTCUTS = {"db-url": "db"}


def _cli_annotation(annotation):
    """The field's type, marked for the command line: lists take several values after one
    option (``nargs``), dicts are not options (environment only)."""
    kinds = {typing.get_origin(a) for a in (annotation, *typing.get_args(annotation))}
    if dict in kinds:
        return CliSuppress[annotation]
    if list in kinds:
        return CliVariadicArg[annotation]
    return annotation


def options_model(*classes: type[BaseSettings], fields: typing.Iterable[str] | None = None,
                  name: str = "Options") -> type[BaseSettings]:
    """A settings class holding the fields of ``classes`` (the first class's field wins when
    two share a name), or only ``fields``, with their CLI markings: it builds a parser and
    is never instantiated."""
    wanted = set(fields) if fields is not None else None
    picked: dict[str, tuple] = {}
    for cls in classes:
        for n, f in cls.model_fields.items():
            if n not in picked and (wanted is None or n in wanted):
                picked[n] = (_cli_annotation(f.annotation), copy.copy(f))
    base = type(f"{name}Base", (BaseSettings,), {"model_config": SettingsConfigDict(
        env_prefix=classes[0].model_config.get("env_prefix", ""), extra="ignore")})
    return create_model(name, __base__=base, **picked)


class Options:
    """The settings options of one sub-command (``parser``), from the fields of ``classes``
    (or only ``fields``); ``shortcuts`` adds aliases (``{"run-name": "run"}``) to ``--db``.

    Registered on the parser (``set_defaults``), so ``options_of(ns).given(ns, cls)`` reads the
    options typed for the command that was parsed."""

    def __init__(self, parser: argparse.ArgumentParser, *classes: type[BaseSettings],
                 fields: typing.Iterable[str] | None = None, shortcuts: dict | None = None):
        self.model = options_model(*classes, fields=fields, name=f"{parser.prog.split()[-1].title()}Options")
        self.source = CliSettingsSource(
            self.model, root_parser=parser, cli_kebab_case=True, cli_implicit_flags=True,
            cli_hide_none_type=True, cli_show_env_vars=True, cli_avoid_json=True,
            cli_shortcuts={**SHORTCUTS, **(shortcuts or {})})
        parser.set_defaults(settings_options=self)

    def given(self, ns: argparse.Namespace, cls: type[BaseSettings] | None = None) -> dict:
        """The options typed on the command line (not validated), as ``{field: value}``; only
        the fields of ``cls`` when given. The other fields come from the environment and the
        defaults when ``cls(**given)`` is built."""
        values = self.source(parsed_args=ns)()
        return {k: v for k, v in values.items() if cls is None or k in cls.model_fields}


def given(ns: argparse.Namespace, cls: type[BaseSettings]) -> dict:
    """The options of ``cls`` typed for the parsed command (empty for a command without
    settings options)."""
    opts: Options | None = getattr(ns, "settings_options", None)
    return opts.given(ns, cls) if opts is not None else {}


__all__ = ["Options", "given", "options_model"]
