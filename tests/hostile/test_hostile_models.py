"""Hostile input, round 3 (issue 25, items 4-7): model folders whose config lies about its layers,
asks for more memory than there is, is impossible, or whose tokenizer has no vocabulary. Each
folder is a copy of the tiny random-weight GPT-2 in tmp_path with one thing changed; each is
refused at load with one line naming what to fix, and the CLI exits 2."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from context_lookups.precompute.core.errors import BadSettings, ModelNotAvailable
from context_lookups.precompute.model.loading import load_model


def _copy(tiny_model_dir, tmp_path, **config):
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(config)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _weights(d, change) -> None:
    w = load_file(d / "model.safetensors")
    change(w)
    save_file(w, d / "model.safetensors", metadata={"format": "pt"})


# --- 4. a config that lies about its layers ----------------------------------------------------

def test_config_with_more_layers_than_its_weights_is_refused(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path, n_layer=4)  # the weights hold 2 layers
    for backend in ("fast", "bridge"):
        with pytest.raises(ModelNotAvailable, match="builds 4 layers but its weights hold layers 0-1"):
            load_model(str(d), backend=backend)


def test_weights_missing_from_the_checkpoint_are_named(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path)
    _weights(d, lambda w: w.pop("transformer.h.1.mlp.c_fc.weight"))
    with pytest.raises(ModelNotAvailable) as e:
        load_model(str(d))
    msg = str(e.value)
    assert "1 weights the config builds are missing from the checkpoint" in msg
    assert "h.1.mlp.c_fc.weight" in msg and "\n" not in msg


def test_weights_the_model_does_not_use_are_named(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path)
    _weights(d, lambda w: w.update({"transformer.h.1.mlp.extra.weight": torch.zeros(3)}))
    with pytest.raises(ModelNotAvailable, match="not used by the config's model .*h.1.mlp.extra.weight"):
        load_model(str(d))


def test_config_with_another_shape_than_its_weights_is_refused(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path, n_inner=128)  # the weights' MLP is 256 wide
    with pytest.raises(ModelNotAvailable, match="weights"):
        load_model(str(d))


# --- 5. a config that asks for too much --------------------------------------------------------

@pytest.mark.parametrize("field,value", [("n_positions", 10**9), ("vocab_size", 2**31),
                                         ("n_embd", 4 * 10**6)])
def test_config_too_large_for_memory_is_refused_before_building(tiny_model_dir, tmp_path, field, value):
    import tracemalloc

    d = _copy(tiny_model_dir, tmp_path, **{field: value})
    tracemalloc.start()
    with pytest.raises(BadSettings, match=r"needs about [\d.]+ GB for its weights in float32, and "
                                          r"[\d.]+ GB of memory is available"):
        load_model(str(d))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200e6  # refused before any weight was allocated


def test_memory_check_uses_the_scan_estimate_of_available_memory():
    from transformers import GPT2Config

    from context_lookups.precompute.model.loading import check_config

    cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)  # GPT-2 small
    check_config(cfg, "gpt2", available=10**9)  # ~0.5 GB in float32
    with pytest.raises(BadSettings, match="0.5 GB"):
        check_config(cfg, "gpt2", available=4 * 10**8)
    check_config(cfg, "gpt2", dtype=torch.float16, available=4 * 10**8)


def test_config_with_many_layers_missing_from_its_weights_is_refused_at_once(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path, n_layer=10000)  # the issue's: 42 s of allocation, then "corrupt"
    with pytest.raises(ModelNotAvailable, match="builds 10000 layers but its weights hold layers 0-1"):
        load_model(str(d))


# --- 6. impossible configs ---------------------------------------------------------------------

@pytest.mark.parametrize("change,needle", [
    ({"n_head": 0}, "heads (num_attention_heads) = 0"),
    ({"n_layer": -1}, "layers (num_hidden_layers) = -1"),
    ({"n_embd": 66}, "d_model 66 and 4 heads"),
    ({"n_embd": 64.5}, "64.5"),
    ({"vocab_size": 0}, "vocab_size (vocab_size) = 0"),
])
def test_impossible_config_is_one_line_exit_2(tiny_model_dir, tmp_path, capsys, change, needle):
    from context_lookups.precompute.cli import main

    d = _copy(tiny_model_dir, tmp_path, **change)
    rc = main(["precompute", "--model", str(d), "--db", f"sqlite:///{tmp_path / 'x.db'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], err[-2000:]


# --- 7. a tokenizer with an empty vocabulary ---------------------------------------------------

def test_tokenizer_with_an_empty_vocabulary_is_refused_at_load(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path)
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["model"]["vocab"], tok["model"]["merges"] = {}, []
    (d / "tokenizer.json").write_text(json.dumps(tok))
    for backend in ("fast", "bridge"):
        with pytest.raises(ModelNotAvailable, match="has an empty vocabulary"):
            load_model(str(d), backend=backend)
