"""Full-text search over explanations and prompt texts (docs/method.md §9): the queries behind
``/search``, on SQLite's FTS5 indexes or PostgreSQL's text-search indexes (migration
``0004_search``), read only.

The words typed are matched as words (all of them; a "quoted phrase" as a phrase), never as
query syntax, so any input is safe on both backends. SQLite stems with Porter's stemmer,
PostgreSQL with its ``english`` configuration (which also ignores stop words such as "the").

Snippets are stored text shown, so they go through the one redaction of stored text on display
(:func:`precompute.redact.redact`, as pair pages and their twins do): a database written before
answers were redacted, or by another writer, may hold a key. A match whose matched words all lay
inside a redacted credential is not shown (searching a password must not confirm it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from context_lookups.precompute.core.errors import NotFound
from context_lookups.precompute.core.redact import redact
from context_lookups.precompute.explain.scoring import authors_score
from context_lookups.precompute.heads.attribution import head_label

from . import urls
from .present import flat_uncertainty, uncertainty
from .states import score_reason

_START, _STOP = "\ue000", "\ue001"  # private-use marks around matched words in snippets
_PHRASE = re.compile(r'"([^"]*)"|(\w+)', re.UNICODE)
KINDS = ("explanations", "prompts")
MAX_TERMS = 32


@dataclass
class SearchQuery:
    """What to search: ``q`` the words, ``run`` a run's slug (None: every run), ``kind`` one of
    :data:`KINDS` (None: both, ``per_kind`` each), ``page`` of ``per_page`` results."""

    q: str
    run: str | None = None
    kind: str | None = None
    page: int = 1
    per_page: int = 50
    per_kind: int = 10


def terms(q: str) -> list[list[str]]:
    """The words of ``q`` as phrases: ``"ab cd" ef`` → ``[["ab", "cd"], ["ef"]]`` (at most
    :data:`MAX_TERMS`); punctuation and query operators are dropped."""
    out: list[list[str]] = []
    for phrase, word in _PHRASE.findall(q):
        words = re.findall(r"\w+", phrase) if phrase else [word]
        if words:
            out.append(words)
    return out[:MAX_TERMS]


def fts5_query(phrases: list[list[str]]) -> str:
    """An FTS5 MATCH expression of quoted phrases, all required (no operator of the user's)."""
    return " ".join('"' + " ".join(w.replace('"', '""') for w in p) + '"' for p in phrases)


def pg_query(phrases: list[list[str]]) -> str:
    """A ``websearch_to_tsquery`` text of quoted phrases, all required."""
    return " ".join('"' + " ".join(p) + '"' if len(p) > 1 else p[0] for p in phrases)


def _snippet(marked: str) -> dict:
    """A snippet with the matched words between the private-use marks, as ``text`` and
    ``marks`` (``[start, end)`` character offsets of the matches in ``text``), redacted
    (:func:`precompute.redact.redact`): when redaction changed the text, the matched words are
    marked again where they still stand in it, and those inside a credential are gone."""
    out, marks, start = [], [], None
    n = 0
    for ch in marked or "":
        if ch == _START:
            start = n
        elif ch == _STOP:
            if start is not None:
                marks.append([start, n])
            start = None
        else:
            out.append(ch)
            n += 1
    text = "".join(out)
    clean = redact(text)
    if clean == text:
        return {"snippet": text, "marks": marks}
    words = {text[a:b] for a, b in marks}
    remarked = sorted([m.start(), m.end()] for w in words if w
                      for m in re.finditer(r"(?<!\w)" + re.escape(w) + r"(?!\w)", clean))
    return {"snippet": clean, "marks": remarked, "only_in_secret": bool(marks) and not remarked}


_SQLITE = {
    "prompts": ("SELECT p.id AS id, p.split AS split, p.rank AS rank, n.layer AS layer, n.neuron AS neuron, "
                "n.kind AS kind, r.slug AS run, snippet(search_prompts, 0, :a, :b, '…', 16) AS marked "
                "FROM search_prompts JOIN prompts p ON p.id = search_prompts.rowid "
                "JOIN neurons n ON n.id = p.neuron_id JOIN runs r ON r.id = n.run_id "
                "WHERE search_prompts MATCH :q {run} "
                "ORDER BY search_prompts.rank, p.id LIMIT :lim OFFSET :off",
                "SELECT count(*) FROM search_prompts JOIN prompts p ON p.id = search_prompts.rowid "
                "JOIN neurons n ON n.id = p.neuron_id JOIN runs r ON r.id = n.run_id "
                "WHERE search_prompts MATCH :q {run}"),
    "explanations": ("SELECT e.id AS id, e.explainer AS explainer, e.score AS score, "
                     "e.tpr AS tpr, e.tnr AS tnr, "
                     "e.n_pos AS n_pos, e.n_neg AS n_neg, e.n_unparsed AS n_unparsed, e.status AS status, "
                     "e.error AS error, e.settings AS settings, pr.head_layer AS head_layer, "
                     "pr.head AS head, n.layer AS layer, "
                     "n.neuron AS neuron, n.kind AS kind, r.slug AS run, "
                     "snippet(search_explanations, 0, :a, :b, '…', 24) AS marked "
                     "FROM search_explanations JOIN explanations e ON e.id = search_explanations.rowid "
                     "JOIN pairs pr ON pr.id = e.pair_id JOIN neurons n ON n.id = pr.neuron_id "
                     "JOIN runs r ON r.id = pr.run_id "
                     "WHERE search_explanations MATCH :q {run} "
                     "ORDER BY search_explanations.rank, e.id LIMIT :lim OFFSET :off",
                     "SELECT count(*) FROM search_explanations "
                     "JOIN explanations e ON e.id = search_explanations.rowid "
                     "JOIN pairs pr ON pr.id = e.pair_id JOIN runs r ON r.id = pr.run_id "
                     "WHERE search_explanations MATCH :q {run}"),
}
_TSV = "to_tsvector('english'::regconfig, coalesce({col}, ''))"  # the expression the GIN index holds
_HEADLINE = ("ts_headline('english'::regconfig, {col}, websearch_to_tsquery('english'::regconfig, :q), "
             "'StartSel=' || :a || ', StopSel=' || :b || ', MaxWords={w}, MinWords={m}, MaxFragments=2, "
             "FragmentDelimiter=\" … \"')")
_PG = {
    "prompts": ("SELECT p.id AS id, p.split AS split, p.rank AS rank, n.layer AS layer, n.neuron AS neuron, "
                "n.kind AS kind, r.slug AS run, " + _HEADLINE.format(col="p.text", w=20, m=8) + " AS marked "
                "FROM prompts p JOIN neurons n ON n.id = p.neuron_id JOIN runs r ON r.id = n.run_id "
                "WHERE " + _TSV.format(col="p.text")
                + " @@ websearch_to_tsquery('english'::regconfig, :q) {run} "
                "ORDER BY ts_rank(" + _TSV.format(col="p.text")
                + ", websearch_to_tsquery('english'::regconfig, :q)) "
                "DESC, p.id LIMIT :lim OFFSET :off",
                "SELECT count(*) FROM prompts p JOIN neurons n ON n.id = p.neuron_id "
                "JOIN runs r ON r.id = n.run_id "
                "WHERE " + _TSV.format(col="p.text")
                + " @@ websearch_to_tsquery('english'::regconfig, :q) {run}"),
    "explanations": ("SELECT e.id AS id, e.explainer AS explainer, e.score AS score, "
                     "e.tpr AS tpr, e.tnr AS tnr, "
                     "e.n_pos AS n_pos, e.n_neg AS n_neg, e.n_unparsed AS n_unparsed, e.status AS status, "
                     "e.error AS error, e.settings AS settings, pr.head_layer AS head_layer, "
                     "pr.head AS head, n.layer AS layer, "
                     "n.neuron AS neuron, n.kind AS kind, r.slug AS run, "
                     + _HEADLINE.format(col="e.text", w=35, m=15) + " AS marked "
                     "FROM explanations e JOIN pairs pr ON pr.id = e.pair_id "
                     "JOIN neurons n ON n.id = pr.neuron_id JOIN runs r ON r.id = pr.run_id "
                     "WHERE " + _TSV.format(col="e.text")
                     + " @@ websearch_to_tsquery('english'::regconfig, :q) {run} "
                     "ORDER BY ts_rank(" + _TSV.format(col="e.text") + ", "
                     "websearch_to_tsquery('english'::regconfig, :q)) DESC, e.id LIMIT :lim OFFSET :off",
                     "SELECT count(*) FROM explanations e JOIN pairs pr ON pr.id = e.pair_id "
                     "JOIN runs r ON r.id = pr.run_id "
                     "WHERE " + _TSV.format(col="e.text")
                     + " @@ websearch_to_tsquery('english'::regconfig, :q) {run}"),
}


def _link(kind: str, row) -> dict:
    d = dict(row._mapping)
    d.update(_snippet(d.pop("marked")))
    d["neuron_label"] = f"L{d['layer']}N{d['neuron']}"
    d["neuron_url"] = urls.neuron(d["run"], d["layer"], d["neuron"])
    if kind == "explanations":
        d["label"] = head_label(d["head_layer"], d["head"])
        d.update(flat_uncertainty(uncertainty(
            score=d["score"], score_authors=authors_score(d["score"], d["tpr"], d["tnr"]), tpr=d["tpr"],
            tnr=d["tnr"], n_pos=d["n_pos"], n_neg=d["n_neg"], n_unparsed=d["n_unparsed"], counts=None)))
        st = d.pop("settings")
        st = json.loads(st) if isinstance(st, str) else (st or {})
        d["truncated"] = bool(st.get("truncated"))  # cut at the explainer's token limit
        d["score_authors"] = authors_score(d["score"], d["tpr"], d["tnr"])
        d["reason"] = score_reason(d, rule="project")  # the project's E is the one shown
        d["url"] = urls.pair(d["run"], d["layer"], d["neuron"], d["head_layer"], d["head"])
    else:
        d["url"] = urls.neuron(d["run"], d["layer"], d["neuron"],
                               split=d["split"] if d["split"] != "explain" else None)
    return d


def search(session: Session, sq: SearchQuery) -> dict:
    """The matches of ``sq``: per kind, ``total`` and ``items`` (best match first: bm25 on
    SQLite, ``ts_rank`` on PostgreSQL), each with its run, neuron, link (an explanation's pair
    page, a prompt's neuron page) and a ``snippet`` with the matched words' ``marks``.

    Raises:
        NotFound: ``sq.run`` names no run (the message lists the runs).
    """
    phrases = terms(sq.q)
    run_clause, params = "", {"a": _START, "b": _STOP}
    if sq.run:
        if session.execute(text("SELECT 1 FROM runs WHERE slug = :s"), {"s": sq.run}).first() is None:
            names = [r for (r,) in session.execute(text("SELECT slug FROM runs ORDER BY slug"))]
            raise NotFound(f"Unknown run {sq.run!r}: runs in this database are {', '.join(names) or 'none'}.")
        run_clause, params["run"] = "AND r.slug = :run", sq.run
    kinds = [sq.kind] if sq.kind else list(KINDS)
    out = {k: {"total": 0, "items": []} for k in KINDS}
    if not phrases:
        return out
    pg = session.get_bind().dialect.name == "postgresql"
    params["q"] = pg_query(phrases) if pg else fts5_query(phrases)
    limit = sq.per_page if sq.kind else sq.per_kind
    offset = (sq.page - 1) * sq.per_page if sq.kind else 0
    for k in kinds:
        select_sql, count_sql = (_PG if pg else _SQLITE)[k]
        rows = session.execute(text(select_sql.format(run=run_clause)),
                               {**params, "lim": limit, "off": offset}).all()
        total = session.execute(text(count_sql.format(run=run_clause)), params).scalar() or 0
        items = [_link(k, r) for r in rows]
        shown = [d for d in items if not d.pop("only_in_secret", False)]  # matched only in a credential
        out[k] = {"total": total - (len(items) - len(shown)), "items": shown}
    return out
