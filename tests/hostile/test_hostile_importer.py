"""Hostile input, round 3 (issue 25, items 1-3 and 15): pickle bombs and tensor views outside
their storage in the authors' ablation pickle, JSON whose depth check was quadratic, and corpus
lines with a lone surrogate or of unbounded size. Each hostile file is built in tmp_path; the
bombs are checked by the bound they hit (objects built, a CPU budget), not by wall time."""

from __future__ import annotations

import collections
import gzip
import io
import json
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

from context_lookups.precompute.core.errors import DatasetNotAvailable
from context_lookups.precompute.paper.files import PaperFormatError
from context_lookups.precompute.paper.pickled import AllowListUnpickler, read_ablation
from tests.paper_data import copy_sample


def tuple_bomb(levels: int) -> bytes:
    """The issue's pickle: a dict keyed by ``levels`` levels of a memoised tuple, each
    ``(g, g, g)`` of the one before (3**levels items in its full tree)."""
    return (b"}(I1\nI2\nI3\ntp0\n0"
            + b"".join(b"(g%d\ng%d\ng%d\ntp%d\n0" % (i - 1, i - 1, i - 1, i) for i in range(1, levels + 1))
            + b"g%d\n}s." % levels)


# --- 1. the pickle bomb ------------------------------------------------------------------------

def test_pickle_bomb_is_refused_after_a_bounded_number_of_objects():
    for levels in (12, 18):  # 12: 531,441 items in the tree (what the old reader hashed); 18: the issue's
        u = AllowListUnpickler(io.BytesIO(tuple_bomb(levels)))
        with pytest.raises(pickle.UnpicklingError, match="refers again to a tuple of 3 items"):
            u.load()
        assert u.built < 20  # refused at the first re-use of a container, whatever the levels
    # DUP shares a container without the memo
    u = AllowListUnpickler(io.BytesIO(b"(I1\nI2\nt22\x85."))
    with pytest.raises(pickle.UnpicklingError, match="refers again to a tuple"):
        u.load()


def test_pickle_bomb_through_read_ablation_is_one_line_naming_the_file():
    with pytest.raises(PaperFormatError) as e:
        read_ablation(tuple_bomb(12), "7_head_ablation/x.pkl")  # (18 took the old reader 114 s, 3.6 GB)
    msg = str(e.value)
    assert msg.startswith("7_head_ablation/x.pkl: refused:") and "\n" not in msg and len(msg) < 300


def test_bad_key_is_described_by_type_and_size_not_by_its_text():
    raw = pickle.dumps({"A" * 100_000 + "SECRET-TAIL": {}}, protocol=2)
    with pytest.raises(PaperFormatError) as e:
        read_ablation(raw, "x.pkl")
    assert "str of 100011 items" in str(e.value) and "AAAA" not in str(e.value)


def test_sample_ablation_file_still_reads(tmp_path):
    src = copy_sample(tmp_path / "experiment_data")
    raw = (src / "7_head_ablation" / "nh_token_prob_attn_ablated_vs_normal_noabs_small.pkl").read_bytes()
    u = AllowListUnpickler(io.BytesIO(raw))
    u.load()
    assert u.built < 5000
    assert len(read_ablation(raw, "x.pkl")) == 29


# --- 2. tensor views outside their storage -----------------------------------------------------

class _View:
    """Pickles as the authors' tensors do (``_rebuild_tensor_v2`` of a storage), with any view."""

    def __init__(self, values, offset, size, stride):
        self.args = (torch.tensor(values, dtype=torch.float32), offset, size, stride)

    def __reduce__(self):
        t, offset, size, stride = self.args
        size, stride = tuple(list(size)), tuple(list(stride))  # fresh objects, as torch's are
        storage = torch.TypedStorage(t.tolist(), dtype=torch.float32, _internal=True)
        hooks = collections.OrderedDict()
        return (torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, False, hooks))


def _ablation_file(path, normal) -> bytes:
    good = _View([0.5] * 4, 0, (4,), (1,))
    raw = pickle.dumps({(9, 1, 2): {"normal": normal, "ablated": good, "act_diff_relevant": 0.1,
                                    "act_diff_irrelevant": 0.2}}, protocol=4)
    path.write_bytes(raw)
    return raw


@pytest.mark.parametrize("offset,size,stride", [
    (0, (1000,), (1,)),  # the issue's: 1000 elements of a 4-float storage
    (1000, (4,), (1,)),  # an offset past the end (the 250,000,000 grew the storage to 1 GB)
    (2, (3,), (1,)),  # one element too far
    (0, (3,), (2,)),  # a stride that leaves the storage
    (-1, (2,), (1,)),  # a negative offset
    (0, (4,), (-1,)),  # a negative stride
    (0, (30,), (0,)),  # a view larger than its storage, all on one element
])
def test_tensor_view_outside_its_storage_is_refused(tmp_path, offset, size, stride):
    raw = _ablation_file(tmp_path / "a.pkl", _View([0.1, 0.2, 0.3, 0.4], offset, size, stride))
    with pytest.raises(PaperFormatError, match="does not fit inside its storage of 4 elements"):
        read_ablation(raw, "a.pkl")


def test_tensor_view_inside_its_storage_is_read(tmp_path):
    raw = _ablation_file(tmp_path / "a.pkl", _View([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], 1, (4,), (2,)))
    out = read_ablation(raw, "a.pkl")
    assert out[(9, 1, 2)]["normal"] == pytest.approx([0.2, 0.4, 0.6, 0.8])  # the last element exactly


# --- 3. the JSON depth check is linear ---------------------------------------------------------

_CPU_BUDGET_S = 20  # CPU seconds for the child (the old regex: ~40 s at 80 KB, hours at 1 MB)


def _depth_in_child(tmp_path, payloads: dict[str, bytes]) -> dict:
    """``nesting_depth`` of each payload in a child process limited to :data:`_CPU_BUDGET_S`
    CPU seconds (RLIMIT_CPU: a budget of steps, not of wall time), as ``{name: depth}``."""
    for name, data in payloads.items():
        (tmp_path / name).write_bytes(data)
    code = textwrap.dedent(f"""
        import json, resource, sys
        resource.setrlimit(resource.RLIMIT_CPU, ({_CPU_BUDGET_S}, {_CPU_BUDGET_S + 1}))
        from context_lookups.precompute.core.jsontext import nesting_depth
        out = {{}}
        for name in {list(payloads)!r}:
            out[name] = nesting_depth(open({str(tmp_path)!r} + "/" + name, "rb").read(), 64)
        print(json.dumps(out))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"killed by the CPU budget or failed: rc {p.returncode} {p.stderr[-300:]}"
    return json.loads(p.stdout)


def test_json_depth_check_is_linear_on_unterminated_escaped_strings(tmp_path):
    unterminated = b"[" * 65 + b'"' + b'\\"' * 500_000  # the file, 1 MB
    many_starts = b"[" * 65 + b'"\\' * 500_000  # every other byte a quote that starts nothing
    got = _depth_in_child(tmp_path, {"a.json": unterminated, "b.json": many_starts})
    assert got == {"a.json": 65, "b.json": 65}


def test_json_depth_counts_brackets_outside_strings_only(tmp_path):
    from context_lookups.precompute.core.jsontext import nesting_depth

    deep = b"[" * 70 + b"]" * 70
    assert nesting_depth(deep, 64) > 64
    in_string = b'["' + b"[" * 100 + b'", "\\"[[[", "\\\\", ["]"]]'
    assert nesting_depth(in_string, 3) == 2
    # the state carries across the numpy blocks (a string and an escape cut at a block's edge)
    from context_lookups.precompute.core import jsontext
    cut = b'["' + b"a" * (jsontext._STEP - 3) + b'\\"[[' + b'"' + b"[" * 70
    assert nesting_depth(cut, 64) == 71
    cut2 = b'["' + b"a" * (jsontext._STEP - 3) + b'\\\\"' + b"[" * 70  # an even run cut in two
    assert nesting_depth(cut2, 64) == 71


# --- 15. corpus lines --------------------------------------------------------------------------

def test_corpus_line_with_a_lone_surrogate_is_refused_with_file_and_line(tmp_path):
    from context_lookups.precompute.corpus import load_corpus

    d = tmp_path / "corpus"
    d.mkdir()
    good = "".join(json.dumps({"text": f"document {i} about cats"}) + "\n" for i in range(6))
    (d / "explain.jsonl").write_text(good)
    (d / "heldout.jsonl").write_text(good + '{"text": "bad \\ud800 here"}\n')
    with pytest.raises(DatasetNotAvailable) as e:
        load_corpus(str(d))
    assert str(e.value).startswith(f"{d / 'heldout.jsonl'}, line 7: ") and "surrogate" in str(e.value)


def test_corpus_gzip_expanding_to_one_huge_line_is_refused_with_bounded_memory(tmp_path):
    import tracemalloc

    from context_lookups.precompute.corpus import MAX_LINE_BYTES, read_texts

    path = tmp_path / "explain.jsonl.gz"
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(b'{"text": "ok"}\n{"text": "')
        chunk = b"a" * (1 << 20)
        for _ in range(MAX_LINE_BYTES // len(chunk) + 4):  # one line longer than the cap
            fh.write(chunk)
        fh.write(b'"}\n')
    tracemalloc.start()
    with pytest.raises(DatasetNotAvailable) as e:
        list(read_texts(str(path)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(e.value).startswith(f"{path}, line 2: ") and "longer than" in str(e.value)
    assert peak < 3 * MAX_LINE_BYTES
