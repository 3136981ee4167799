"""The model backend's jaxtyping annotations are checked at run time in the test session
(tests/conftest.py installs jaxtyping's import hook with beartype before anything imports the
backend): a tensor of the wrong shape or dtype fails where it enters, with jaxtyping's error, and
every tensor-typed public function of the backend says the shapes it takes and gives."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch
from jaxtyping import TypeCheckError

from context_lookups.precompute.model import sources
from context_lookups.precompute.model.sources import SourceTerms

MODEL = Path(__file__).resolve().parents[2] / "precompute" / "model"


def test_the_hook_was_installed_before_the_backend_was_imported():
    conftest = sys.modules["tests.conftest"]
    assert conftest.JAXTYPING_HOOK is not None
    # The hook wraps each function in a checker; an unhooked module keeps the plain function.
    assert sources.readout.__module__ == "context_lookups.precompute.model.sources"
    assert hasattr(sources.readout, "__wrapped__")


def test_a_module_function_refuses_a_wrong_shape():
    W_O = torch.zeros(4, 8, 16)  # [n_heads, d_head, d_model]
    assert sources.readout(W_O, torch.zeros(3, 16)).shape == (3, 4, 8)
    with pytest.raises(TypeCheckError, match="d_model"):
        sources.readout(W_O, torch.zeros(3, 15))  # d_model 15 against W_O's 16
    with pytest.raises(TypeCheckError):
        sources.readout(W_O, torch.zeros(3, 2, 16))  # one axis too many


def test_a_backend_method_refuses_a_wrong_shape_and_dtype(tiny_model):
    b = tiny_model.backend
    d = tiny_model.dims
    head = torch.tensor([0, 1])
    w = torch.randn(2, d.d_model)
    assert b.head_readout(0, head, w).shape == (2, d.d_head)
    with pytest.raises(TypeCheckError):
        b.head_readout(0, head, torch.randn(3, d.d_model))  # 3 read-out rows for 2 heads
    with pytest.raises(TypeCheckError):
        b.head_readout(0, head.float(), w)  # head indices must be integers
    with pytest.raises(TypeCheckError):
        b.head_out(0, head, torch.randn(2, 5, d.d_head).long())  # z must be floating point


def test_a_dataclass_refuses_fields_of_different_batches():
    B, K, H, P = 2, 3, 4, 5
    terms = torch.zeros(B, K, H, P), torch.zeros(B, K, H, P), torch.zeros(B, K, H)
    SourceTerms(*terms, torch.zeros(B))
    with pytest.raises(TypeCheckError):
        SourceTerms(*terms, torch.zeros(B + 1))  # scale of 3 rows for terms of 2


def _bare_tensor(annotation: ast.expr | None) -> bool:
    """``Tensor`` or ``Tensor | None`` with no shape: what a public backend function may not say."""
    if annotation is None:
        return False
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        annotation = ast.parse(annotation.value, mode="eval").body
    if isinstance(annotation, ast.Name):
        return annotation.id == "Tensor"
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        return _bare_tensor(annotation.left) or _bare_tensor(annotation.right)
    return False


def bare_tensor_signatures(folder: Path) -> list[str]:
    """``file:function(param)`` of every public function or method under ``folder`` whose
    parameter or return annotation is a tensor without a jaxtyping shape (module functions and
    methods; closures inside a function are not public)."""
    found = []
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())
        defs = tree.body + [n for c in tree.body if isinstance(c, ast.ClassDef) for n in c.body]
        for node in defs:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.name.startswith("_"):
                continue
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            bad = [a.arg for a in args if _bare_tensor(a.annotation)]
            if _bare_tensor(node.returns):
                bad.append("return")
            found += [f"{path.name}:{node.name}({b})" for b in bad]
    return found


def test_every_tensor_typed_public_backend_function_gives_its_shapes():
    assert bare_tensor_signatures(MODEL) == []


def test_the_shape_check_finds_what_it_forbids(tmp_path):
    (tmp_path / "m.py").write_text(
        "from torch import Tensor\n"
        "def W_O(layer: int) -> Tensor: ...\n"
        "def f(x: 'Tensor | None', y: Float[Tensor, ' n']): ...\n"
        "def _private(x: Tensor) -> Tensor: ...\n"
        "class C:\n"
        "    def W_U(self) -> Tensor:\n"
        "        def inner(t: Tensor) -> Tensor: ...\n")
    assert bare_tensor_signatures(tmp_path) == ["m.py:W_O(return)", "m.py:f(x)", "m.py:W_U(return)"]
