"""Step 2 of the job, max-activating prompts (paper §4.2, docs/method.md §2): one streaming scan
per split, stored with the documents it points to and the activation histograms, each split one
unit of work (``scan:{split}``). The trimming of the top documents runs in step 3's passes
(:mod:`precompute.heads.step`), which store the trimmed prompts with their attribution."""

from __future__ import annotations

from sqlalchemy import insert, select

from context_lookups.precompute.core.settings import Settings
from context_lookups.precompute.model import LoadedModel
from context_lookups.precompute.prompts.distinct import scan_depth
from context_lookups.precompute.prompts.histogram import SCHEME as HISTOGRAM_SCHEME
from context_lookups.precompute.prompts.scan import top_k_for
from context_lookups.precompute.store.runs import unit_of_work
from context_lookups.precompute.store.schema import ActivationHistogram, Document, Neuron, TopActivation


def store_scan(s, run_id: int, executor, model: LoadedModel, docs, split: str, layers: list[int],
               ctx: int, settings: Settings) -> dict:
    """§2: one streaming scan of ``split`` (by ``executor``: this process, or document shards on
    Ray); stores every scanned neuron's top documents (``top_k`` and the reserve distinct
    prompts are drawn from, :func:`~precompute.prompts.distinct.scan_depth`), the documents
    they point to and its activation histogram over the split's tokens, in one unit of work.
    The explain split's scan also sets each neuron's ``max_act``. Returns the unit's figures."""
    with unit_of_work(s, run_id, f"scan:{split}") as st:
        res = executor.scan(docs, layers=layers, k=top_k_for(scan_depth(settings.top_k), len(docs)),
                            batch_size=settings.batch_size,
                            context_tokens=ctx, desc=f"scan {split}")
        rows = []
        vals, dids, poss = res.values.tolist(), res.docs.tolist(), res.positions.tolist()
        for j, layer in enumerate(layers):
            for i in range(model.d_mlp):
                c = j * model.d_mlp + i
                for r in range(res.values.shape[0]):
                    if dids[r][c] >= 0:
                        rows.append(dict(run_id=run_id, split=split, layer=layer, neuron=i, rank=r,
                                         doc_idx=dids[r][c], act=vals[r][c], position=poss[r][c]))
        s.execute(insert(TopActivation), rows)
        used = sorted({r["doc_idx"] for r in rows})
        s.execute(insert(Document), [dict(run_id=run_id, split=split, idx=i, text=docs[i]["text"])
                                     for i in used])
        if res.histograms is not None:
            s.execute(insert(ActivationHistogram), [
                {"run_id": run_id, "split": split, "layer": layer, "neuron": i, "scheme": HISTOGRAM_SCHEME,
                 "first_bin": first, "counts": counts}
                for layer in layers for i, (first, counts) in enumerate(res.histograms.rows(layer))])
            st.update(histogram_tokens=res.histograms.n_tokens())
        if split == "explain":
            best = {(r["layer"], r["neuron"]): r["act"] for r in rows if r["rank"] == 0}
            for n in s.scalars(select(Neuron).where(Neuron.run_id == run_id)):
                n.max_act = best.get((n.layer, n.neuron))
        st.update(docs=res.n_docs, tokens=res.n_tokens, scan_seconds=round(res.seconds, 2),
                  tokens_per_s=round(res.n_tokens / max(res.seconds, 1e-9)))
        return st
