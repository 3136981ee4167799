"""The layering of the code (docs/architecture.md), read from the source with ``ast``: each layer
imports only the layers below it, nothing imports in a cycle, no module imports another's
private names, and the rules written once are called from their one home.

Every import counts, at the top of a module or inside a function (an import inside a function
is still an arrow). The layer order is :data:`LAYERS`; a module belongs to the longest prefix
that names it. Packages on one line of :data:`LAYERS` are siblings: they import neither each
other nor anything above them.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = "context_lookups"

# Bottom to top. A module may import its own package (an entry here) and the entries of lower lines.
LAYERS: list[tuple[str, ...]] = [
    ("precompute", "precompute.core"),  # the package's face (its version) and the shared primitives
    ("precompute.store", "precompute.model", "precompute.corpus"),  # storage, the model backend, documents
    ("precompute.neurons",),  # step 1, §4.1 next-token neurons
    ("precompute.prompts",),  # step 2, §4.2 max-activating prompts
    ("precompute.heads",),  # step 3, §4.3 head attribution, look-ups, pairs
    ("precompute.explain",),  # step 4, §4.4 explanations and their scores
    ("precompute.ablation",),  # step 5, §5.4 head ablation
    ("precompute.findings",),  # read-only tables and the verdict over the steps' rows
    ("precompute.paper",),  # importing the authors' data
    ("precompute.job",),  # the job: the steps in order
    ("precompute.cli",),  # the `lookups` command
    ("app", "app.settings", "app.model_files"),  # the web layer's base: settings, where models are
    ("app.pages", "app.live"),  # the two halves: stored-data pages, live model path
    ("app.routes",),  # routes compose the two halves
    ("app.main",),  # the application
    ("app.cli",),  # `lookups serve`
    ("context_lookups",),  # the public Python API (docs/python.md): on top, nothing below imports it
]
RANK = {name: i for i, line in enumerate(LAYERS) for name in line}


def module_of(path: Path) -> str:
    """``precompute/heads/step.py`` -> ``precompute.heads.step`` (without the package prefix;
    the public API's modules keep theirs: ``context_lookups/stored.py`` -> ``context_lookups.stored``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    """The entry of :data:`LAYERS` a module belongs to (the longest prefix), or None."""
    best = None
    for name in RANK:
        if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best)):
            best = name
    return best


def sources() -> dict[str, tuple[Path, ast.AST]]:
    """Every module of ``app/``, ``precompute/`` and the public API ``context_lookups/`` (the
    migrations and the embedded data aside)."""
    out = {}
    for top in ("app", "precompute", PKG):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).parts
            if "migrations" in rel or "embedded" in rel:
                continue
            out[module_of(path)] = (path, ast.parse(path.read_text(), str(path)))
    return out


Edge = tuple[str, int, list[str]]  # (imported module, line, names imported from it)


def _project(name: str) -> str | None:
    """The module name ``name`` (an absolute import) has here, or None outside the project:
    ``context_lookups.app.x`` -> ``app.x``; the public API keeps its prefix (``context_lookups``,
    ``context_lookups.stored``)."""
    if name != PKG and not name.startswith(PKG + "."):
        return None
    rest = name[len(PKG) + 1:]
    return rest if rest.split(".")[0] in ("app", "precompute") else name


def imports(module: str, tree: ast.AST, known: set[str], is_package: bool = False) -> list[Edge]:
    """The project modules ``module`` imports: ``(target, line, names)``; a ``from P import X``
    of a submodule ``X`` counts as an import of ``P.X``."""
    out = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _project(a.name) is not None:
                    out.append((_project(a.name), node.lineno, []))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            elif _project(node.module or "") is not None:
                target = _project(node.module)
            else:
                continue
            names = [a.name for a in node.names]
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            out += [(t, node.lineno, []) for t in subs]
            rest = [n for n in names if f"{target}.{n}" not in known]
            if rest or not subs:
                out.append((target, node.lineno, rest))
    return out


def graph() -> tuple[dict[str, tuple[Path, ast.AST]], dict[str, list[Edge]]]:
    src = sources()
    known = set(src)
    return src, {m: imports(m, tree, known, path.name == "__init__.py") for m, (path, tree) in src.items()}


def layer_violations(edges: dict[str, list[Edge]]) -> list[str]:
    """Imports of a layer above, or of a sibling on the same line of :data:`LAYERS`."""
    bad = []
    for m, targets in edges.items():
        here = layer_of(m)
        if here is None:
            bad.append(f"{m}: in no layer (add it to LAYERS)")
            continue
        for t, line, _ in targets:
            there = layer_of(t)
            if there is None or there == here:
                continue
            if RANK[there] > RANK[here]:
                bad.append(f"{m}:{line} imports {t}, a layer above ({there} over {here})")
            elif RANK[there] == RANK[here]:
                bad.append(f"{m}:{line} imports {t}, a sibling ({there} beside {here})")
    return bad


def cycles(edges: dict[str, list[Edge]]) -> list[list[str]]:
    """The import cycles between modules (strongly connected components of more than one module,
    or a module importing itself), by Tarjan's algorithm."""
    adj = {m: sorted({t for t, _, _ in ts if t in edges and t != m}) for m, ts in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in adj[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in adj:
        if v not in index:
            visit(v)
    return out


def private_imports(edges: dict[str, list[Edge]]) -> list[str]:
    """Names starting with ``_`` imported from another project module (dunders aside)."""
    return [f"{m}:{line} imports {n} from {t}" for m, ts in edges.items() for t, line, names in ts
            for n in names if n.startswith("_") and not n.startswith("__") and t != m]


def test_each_layer_imports_only_the_layers_below():
    src, edges = graph()
    assert len(src) > 80 and all(layer_of(m) for m in src)
    bad = layer_violations(edges)
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    _, edges = graph()
    found = cycles(edges)
    assert not found, found


def test_no_private_names_across_modules():
    _, edges = graph()
    bad = private_imports(edges)
    assert not bad, "\n".join(bad)


def test_the_checks_find_what_they_forbid():
    """Not vacuous: the back-arrow, the cycle and the private names this project had before
    the layering are caught."""
    known = {"precompute.ablation.step", "precompute.job.distributed", "app.live.service", "app.live.passes",
             "app.pages.views", "app.pages"}
    edges = {
        "precompute.ablation.step": imports("precompute.ablation.step", ast.parse(
            "def f():\n    from context_lookups.precompute.job.distributed import LocalExecutor\n"), known),
        "app.pages.views": imports("app.pages.views", ast.parse("from ..live.service import Live\n"), known),
        "app.live.service": imports("app.live.service", ast.parse(
            "from .passes import _check_ids, live_views\n"), known),
        "app.live.passes": imports("app.live.passes", ast.parse(
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from .service import LiveJob\n"), known),
    }
    bad = layer_violations(edges)
    back = "precompute.ablation.step:2 imports precompute.job.distributed, a layer above"
    assert any(back in b for b in bad)
    assert any("app.pages.views:1 imports app.live.service, a sibling" in b for b in bad)
    assert cycles(edges) == [["app.live.passes", "app.live.service"]]
    assert private_imports(edges) == ["app.live.service:1 imports _check_ids from app.live.passes"]
    # nothing below the public API imports it, by any spelling
    for code in ("import context_lookups\n", "from context_lookups import open\n",
                 "from context_lookups.stored import Run\n"):
        edges = imports("app.pages.views", ast.parse(code), known | {"context_lookups.stored"})
        up = {"app.pages.views": edges}
        assert any("a layer above" in b for b in layer_violations(up)), code


# --- the rules written once (issue 27, rules 3-8): each one's call sites --------------------------

def _where(pred) -> list[str]:
    """``module:line`` of every AST node of ``app/`` and ``precompute/`` for which ``pred(node)``."""
    out = []
    for m, (_, tree) in sources().items():
        out += [f"{m}:{getattr(node, 'lineno', 0)}" for node in ast.walk(tree) if pred(node)]
    return out


def _attr(node, obj: str, attr: str) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == attr and isinstance(node.value, ast.Name) \
        and node.value.id == obj


def _modules(hits: list[str]) -> set[str]:
    return {h.split(":")[0] for h in hits}


def test_rule_3_the_top_documents_join_has_one_home():
    hits = _where(lambda n: isinstance(n, ast.Compare) and any(
        _attr(a, "Document", "idx") for a in [n.left, *n.comparators]) and any(
        _attr(a, "TopActivation", "doc_idx") for a in [n.left, *n.comparators]))
    assert _modules(hits) == {"precompute.prompts.reads"}, hits


def test_rule_4_the_e_rule_of_a_run_is_decided_once():
    """Only ``explain.scoring.run_rule`` turns a run's provenance into "authors" / "project"."""
    def decides(n) -> bool:
        if not isinstance(n, ast.IfExp):
            return False
        consts = {c.value for c in ast.walk(n) if isinstance(c, ast.Constant)}
        return bool(consts & {"authors", "project"}) and any(
            isinstance(a, ast.Attribute) and a.attr == "provenance" for a in ast.walk(n.test))
    hits = _where(decides)
    assert _modules(hits) == {"precompute.explain.scoring"}, hits


def test_rule_5_prefer_the_llm_explainer_is_written_once():
    """Whether an explainer is an LLM's is tested in ``explainers.is_llm`` alone."""
    def llm_test(a) -> bool:
        return isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("openai")

    hits = _where(lambda n: isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                  and n.func.attr == "startswith" and any(llm_test(a) for a in n.args))
    hits += _where(lambda n: isinstance(n, ast.Compare) and any(
        isinstance(a, ast.Name) and a.id == "BASELINE" for a in n.comparators)
        and any(isinstance(o, ast.NotEq) for o in n.ops))
    assert _modules(hits) <= {"precompute.explain.explainers"}, hits
    uses = _where(lambda n: isinstance(n, ast.Name) and n.id in ("is_llm", "llm_first", "preferred"))
    assert {"precompute.explain.step", "precompute.explain.reads", "precompute.findings.verdict",
            "app.pages.queries", "app.pages.compare"} <= _modules(uses)


def test_rule_6_a_runs_ranges_are_checked_in_one_place():
    """The checks of a layer, neuron or head against a run live in ``store.runs``; the pages and
    the steps' reads call them."""
    hits = _where(lambda n: isinstance(n, ast.Constant) and isinstance(n.value, str)
                  and ("scanned layers are" in n.value or "can drive a scanned neuron" in n.value))
    hits += _where(lambda n: isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "max"
                   and n.args and _attr(n.args[0], "run", "layers"))
    assert _modules(hits) == {"precompute.store.runs"}, hits
    uses = _where(lambda n: isinstance(n, ast.Name) and n.id in ("check_layer", "check_neuron", "check_head",
                                                                  "neuron_range_error"))
    assert {"precompute.neurons.reads", "precompute.heads.reads", "app.pages.queries",
            "app.pages.fire"} <= _modules(uses)


def test_rule_7_tokenizers_load_through_one_function():
    """Outside the model backend nothing loads a tokenizer; the pages use ``load_tokenizer``."""
    hits = _where(lambda n: (isinstance(n, ast.Name) and n.id == "AutoTokenizer")
                  or (isinstance(n, ast.alias) and n.name == "AutoTokenizer"))
    assert _modules(hits) <= {"precompute.model.loading"}, hits
    uses = _where(lambda n: isinstance(n, ast.Name) and n.id == "load_tokenizer")
    assert {"precompute.model.loading", "app.pages.context"} <= _modules(uses)


def test_rule_8_live_jobs_are_served_by_one_loop():
    """Tokenize, check, length-batch and settle live jobs in ``app.live.passes.serve_batch``."""
    hits = _where(lambda n: isinstance(n, ast.Name) and n.id == "length_batches")
    assert {h for h in _modules(hits) if h.startswith("app.")} == {"app.live.passes"}, hits
    uses = _where(lambda n: isinstance(n, ast.Name) and n.id == "serve_batch")
    assert {"app.live.host", "app.live.fire"} <= _modules(uses)


def test_the_sink_and_the_knockout_summaries_are_the_lookup_steps_science():
    """The look-up's sink split and what the knockouts say about a look-up (issue 28) live in step
    3's package; the backend keeps the computation (the sink's position and the context order,
    ``model.sources.rank_context``, which only the default knockouts and the split call)."""
    names = {"split_sink", "rank_agreement", "pair_agreement", "pair_top_source", "top_source_holds",
             "share_of_pairs", "summarise_pair", "summarise_run"}
    defs = _where(lambda n: isinstance(n, ast.FunctionDef) and n.name in names)
    assert _modules(defs) == {"precompute.heads.lookup", "precompute.heads.knockout"}, defs
    calls = _where(lambda n: isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                   and n.func.id == "rank_context")
    assert _modules(calls) == {"precompute.model.knockout", "precompute.heads.lookup"}, calls
