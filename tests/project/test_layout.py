"""How the tests are laid out: a test module never imports another test module (what tests share
lives in fixtures, conftest or tests/helpers/), so running, moving or deleting one test file never
changes another."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def is_test_module(name: str) -> bool:
    """``tests.web.test_pages``, ``.test_pages``, ``test_pages``: a module pytest collects."""
    return name.rsplit(".", 1)[-1].startswith("test_")


def imports_of_test_modules(root: Path) -> list[str]:
    """``file:line imports module`` for every import of a test module by a file under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = "." * node.level + (node.module or "")
                # "from tests import test_x" and "from . import test_x" name the module in the alias
                names = [base] if node.module else [base + a.name for a in node.names]
                if node.module and not is_test_module(node.module):
                    names += [base + "." + a.name for a in node.names]
            else:
                continue
            where = f"{path.relative_to(root)}:{node.lineno}"
            found += [f"{where} imports {n}" for n in names if is_test_module(n)]
    return found


def test_no_test_module_imports_another():
    assert imports_of_test_modules(TESTS) == []


def test_the_import_check_finds_what_it_forbids(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "test_b.py").write_text(
        "from tests.test_a import helper\n"
        "from . import test_c\n"
        "import tests.web.test_d as d\n"
        "from tests import test_e\n"
        "from tests.helpers.cli import precompute_args\n"
        "from .test_f import x\n")
    assert imports_of_test_modules(tmp_path) == [
        "sub/test_b.py:1 imports tests.test_a", "sub/test_b.py:2 imports .test_c",
        "sub/test_b.py:3 imports tests.web.test_d", "sub/test_b.py:4 imports tests.test_e",
        "sub/test_b.py:6 imports .test_f"]
