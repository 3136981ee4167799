"""Where the tests find the authors' GPT-2 small sample (not part of the repository):
``$LOOKUPS_PAPER_DATA``, else a ``shared/paper-data/gpt2-small-sample/experiment_data`` folder
next to the repository or one of its parents."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_REL = Path("shared") / "paper-data" / "gpt2-small-sample" / "experiment_data"


def sample_dir() -> Path | None:
    env = os.environ.get("LOOKUPS_PAPER_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    for parent in ROOT.parents:
        if (parent / _REL).is_dir():
            return parent / _REL
    return None


def require_sample() -> Path:
    d = sample_dir()
    if d is None:
        pytest.skip("the authors' GPT-2 small sample is not here: set LOOKUPS_PAPER_DATA to its "
                    "experiment_data folder")
    return d


def import_sample(db: Path, src: Path | None = None) -> str:
    """Import the sample (or ``src``) into the SQLite file ``db`` with the real CLI; the URL."""
    from context_lookups.precompute.cli import main

    url = f"sqlite:///{db}"
    assert main(["import-paper", str(src or require_sample()), "--db", url]) == 0
    return url


def build_paper_web_db(tmp_path_factory, precomputed_db: Path) -> Path:
    """A copy of the precomputed database (run computed here) with the sample imported next to
    it and the baseline explainer run on the imported run: two runs to browse and compare."""
    import shutil

    from context_lookups.precompute.cli import main

    db = tmp_path_factory.mktemp("paper-web") / "lookups.db"
    shutil.copy(precomputed_db, db)
    url = import_sample(db)
    assert main(["explain", "--db", url, "--run", "gpt2-small", "--explainer", "baseline"]) == 0
    return db


def paper_server(tmp_path_factory, precomputed_db: Path):
    """A real uvicorn server on :func:`build_paper_web_db` (a generator: the server, then
    stopped); skips without the sample."""
    require_sample()
    from context_lookups.app.main import create_app
    from tests.web_fixtures import Server

    db = build_paper_web_db(tmp_path_factory, precomputed_db)
    with Server(create_app(db_url=f"sqlite:///{db}", torch_threads=None)) as srv:
        yield srv


# --- hostile and partial folders, built in tmp_path ----------------------------------------------

def copy_sample(dst: Path) -> Path:
    """A writable copy of the sample's ``experiment_data`` folder at ``dst``."""
    import shutil

    shutil.copytree(require_sample(), dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """The real ``lookups`` entry point in-process: (exit code, stdout, stderr)."""
    from context_lookups.precompute.cli import main

    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


SYN_LAYERS = (6, 7)
SYN_STEM = "2023-11-02_10-00-00_gpt2-small"


def write_synthetic(root: Path, *, layers=SYN_LAYERS, per_layer: int = 2, n_prompts: int = 12,
                    seed: int = 0, stem: str = SYN_STEM, ablation: bool = True) -> dict:
    """A second gpt2-small experiment in the authors' format (their file names, fields and
    links) written into the folder ``root``: neurons of ``layers``, trimmed texts, training and
    held-out attributions (top-3 flat heads of lower layers), the explained pairs (> 25 %),
    explain prompts and GPT-4-style results, classification answers named after the held-out
    attributions and, with ``ablation``, an ablation pickle. Returns what was written
    (file paths by role, the pairs, the neurons)."""
    import json
    import pickle
    import random

    import numpy as np
    import torch

    rng = random.Random(seed)
    params = {"model_name": "gpt2-small", "layers": list(layers), "num_neurons_per_layer": per_layer,
              "rejected_neurons": []}
    tokens = [" cat", " dog", " sun", " map", " key", " box", " pen", " cup"]
    neurons = {}
    for layer in layers:
        for j in range(per_layer):
            neurons[(layer, 100 + 7 * j + layer)] = (tokens[len(neurons) % len(tokens)], 9.0 - j)
    files: dict[str, Path] = {}

    def write(folder: str, name: str, obj, *, lines: bool = False) -> Path:
        p = root / folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("".join(json.dumps(x) + "\n" for x in obj) if lines else json.dumps(obj))
        return p

    files["neurons"] = write("1_next_token_neurons", f"{stem}.json", {"parameters": params, "neurons": {
        str(k): {"token": t, "congruence": c} for k, (t, c) in neurons.items()}})
    texts, heads = {}, {}
    for split, suffix in (("explain", ""), ("heldout", "_test")):
        recs, attrs = {}, {}
        for (layer, idx) in neurons:
            ts = [f" {split} prompt {i} of L{layer}N{idx} says word{rng.randint(0, 9)}"
                  for i in range(n_prompts)]
            recs[str((layer, idx))] = [{"og_act": 5.0 - 0.1 * i, "token_pos": 20 + i,
                                         "dataset_index": 1000 + i, "start_pos": 10 + i,
                                         "trunc_act": 4.5 - 0.1 * i} for i in range(n_prompts)]
            pool = list(range(layer * 12))
            attrs[str((layer, idx))] = {t: rng.sample(pool[:6], 2) + [rng.choice(pool[6:])] for t in ts}
            texts[(split, layer, idx)] = ts
            heads[(split, layer, idx)] = attrs[str((layer, idx))]
        tstem = f"{stem[:11]}11-00-0{len(suffix)}_gpt2-small{suffix}"
        files[f"trim{suffix}"] = write("3_trimmed_texts", f"{tstem}.json", {
            "parameters": params, "neuron_to_trunc_data": recs,
            "prior_filename": f"{stem[:11]}09-00-00_gpt2-small{suffix}"})
        astem = f"{stem[:11]}12-00-0{len(suffix)}_gpt2-small{suffix}"
        files[f"attr{suffix}"] = write("4_head_attributions", f"{astem}.json", {
            "parameters": params, "head_attributions": attrs, "prior_filename": tstem})
    attr_stem = files["attr"].stem
    pairs = {}
    for (layer, idx), (tok, _) in neurons.items():
        ts = texts[("explain", layer, idx)]
        counts: dict[int, int] = {}
        for t in ts:
            for h in heads[("explain", layer, idx)][t]:
                counts[h] = counts.get(h, 0) + 1
        for h, c in counts.items():
            if c > 0.25 * len(ts):
                act = [t + tok for t in ts if h in heads[("explain", layer, idx)][t]]
                ina = [t + tok for t in ts if h not in heads[("explain", layer, idx)][t]]
                pairs[(layer, idx, h)] = (act, ina)
    files["pairs"] = write("4_head_attributions", f"{stem[:11]}13-00-00_gpt2-small_prompts.json", {
        "parameters": params, "nh_to_pos_neg_prompts": {str(k): list(v) for k, v in pairs.items()},
        "prior_filename": attr_stem})
    prompts = {k: f"Explain head {k[2]} of neuron {k[:2]}: active {len(v[0])}, inactive {len(v[1])}."
               for k, v in pairs.items()}
    files["expl_dict"] = write("5_head_explanations", f"{attr_stem}_prompts_dict.json",
                               {str(k): v for k, v in prompts.items()})
    expl = {k: f"mentions the word number {k[2] % 10} near the end." for k in pairs}
    files["expl_results"] = write("5_head_explanations", f"{attr_stem}_prompts_results.jsonl", [
        [{"model": "gpt-4", "messages": [{"role": "user", "content": prompts[k]}], "max_tokens": 200},
         {"model": "gpt-4-0613",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": expl[k]},
                       "finish_reason": "stop"}]}] for k in pairs], lines=True)
    from context_lookups.precompute.paper.importer import CLASSIFY

    cls = []
    for k in pairs:
        tok = neurons[k[:2]][0]
        for t in texts[("heldout", *k[:2])][:20]:
            ans = "Yes" if rng.random() < 0.5 else "No"
            cls.append([{"model": "gpt-4", "messages": [{"role": "user", "content": CLASSIFY.format(
                explanation=expl[k], shown=t + tok)}], "max_tokens": 1},
                {"model": "gpt-4-0613",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": ans},
                              "finish_reason": "length"}]}])
    files["cls_results"] = write("6_explanation_eval", f"{files['attr_test'].stem}_prompts_results.jsonl",
                                 cls, lines=True)
    if ablation:
        data = {}
        for k in pairs:
            ts = texts[("heldout", *k[:2])]
            normal = torch.tensor([rng.uniform(0.05, 0.9) for _ in ts], dtype=torch.float32)
            ablated = (normal - torch.tensor([rng.uniform(-0.02, 0.05) for _ in ts])).clamp(0, 1)
            mask = np.array([k[2] in heads[("heldout", *k[:2])][t] for t in ts])
            drop = (normal - ablated).numpy()
            data[k] = {"ablated": ablated, "normal": normal,
                       "act_diff_relevant": np.mean(drop[mask]) if mask.any() else np.float64("nan"),
                       "act_diff_irrelevant": np.mean(drop[~mask]) if (~mask).any() else np.float64("nan")}
        p = root / "7_head_ablation" / "nh_token_prob_attn_ablated_vs_normal_noabs_l6-7_small.pkl"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(pickle.dumps(data))
        files["ablation"] = p
    return {"files": files, "pairs": pairs, "neurons": neurons}
