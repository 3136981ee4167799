"""Writing a run: the run row, its settings check and the per-unit-of-work phase marks that make
the job resumable and idempotent; and the run's ranges (which layers, neurons and heads it has),
checked in one place for every page."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from context_lookups.precompute import __version__
from context_lookups.precompute.core.errors import NotFound, SettingsMismatch
from context_lookups.precompute.core.settings import Settings
from context_lookups.precompute.store.schema import Phase, Run

logger = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def get_or_create_run(session: Session, *, settings: Settings, slug: str, model, layers: list[int]) -> Run:
    """The run called ``slug``: created if new; if it exists, its settings must match.

    Raises:
        SettingsMismatch: the run exists with other science settings. The message lists the
            differing fields and how to keep both (another ``--run-name`` or ``--db``).
    """
    run = session.scalar(select(Run).where(Run.slug == slug))
    science = settings.science()
    if run is not None:
        if run.settings_hash != settings.science_hash():
            stored = Settings.of_run(run.settings).science()
            diff = {k: (stored.get(k), v) for k, v in science.items() if stored.get(k) != v}
            shown = ", ".join(f"{k}: stored {a!r} vs given {b!r}" for k, (a, b) in diff.items())
            raise SettingsMismatch(
                f"Run {slug!r} already exists in this database with other settings ({shown}). "
                f"Nothing was changed. Re-run with the stored settings, or keep both runs by "
                f"passing --run-name NEW_NAME (or another --db).")
        if run.status != "running":
            run.status = "running"
            session.commit()
        return run
    cfg = model.dims
    run = Run(slug=slug, model_name=settings.model if science["model"] != "embedded" else "embedded",
              dataset=settings.dataset if science["dataset"] != "embedded" else "embedded",
              settings=science, settings_hash=settings.science_hash(), package_version=__version__,
              n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_mlp=cfg.d_mlp, d_model=cfg.d_model,
              n_ctx=cfg.n_ctx, layers=layers, status="running", started_at=now())
    session.add(run)
    session.commit()
    return run


def is_done(session: Session, run_id: int, name: str) -> bool:
    """Whether the unit of work ``name`` of the run has been committed."""
    return session.get(Phase, (run_id, name)) is not None


@contextmanager
def unit_of_work(session: Session, run_id: int, name: str, stats: dict | None = None,
                 seconds_before: float = 0.0):
    """Do one unit of work atomically: rows added in the block and the phase mark are committed
    together, or (on any exception, or a kill) not at all.

    Yields a dict the block may fill with figures, stored on the phase row. The phase's
    ``seconds`` are the block's wall time plus ``seconds_before`` (work done for this unit
    before the block, e.g. its share of a batched computation).
    """
    t0 = time.time() - seconds_before
    out = dict(stats or {})
    try:
        yield out
        session.add(Phase(run_id=run_id, name=name, seconds=round(time.time() - t0, 3),
                          stats=out or None, finished_at=now()))
        session.commit()
    except BaseException:
        session.rollback()
        raise


@contextmanager
def transaction(session: Session):
    """Commit the rows added in the block together, or (on any exception, or a kill) none of
    them: a unit of work without a phase mark (``lookups import-paper`` creates the run inside)."""
    try:
        yield
        session.commit()
    except BaseException:
        session.rollback()
        raise


def phase_seconds(session: Session, run_id: int) -> dict[str, float]:
    """Seconds spent per phase family (``scan``, ``prompts``, ...), summed over units."""
    out: dict[str, float] = {}
    for p in session.scalars(select(Phase).where(Phase.run_id == run_id)):
        fam = p.name.split(":")[0]
        out[fam] = round(out.get(fam, 0.0) + p.seconds, 2)
    return out


# --- a run's ranges: the one home of every check of a layer, neuron or head against a run ----------

def _ranges(values: list[int]) -> str:
    return ", ".join(map(str, values)) if values else "none"


def check_layer(run: Run, layer: int) -> None:
    """Raises NotFound naming the scanned layers if ``layer`` is not one of the run's."""
    if layer not in run.layers:
        raise NotFound(f"layer {layer} out of range: scanned layers are {_ranges(run.layers)}.")


def neuron_range_error(run: Run, layer: int, neuron: int) -> str | None:
    """Why neuron ``L{layer}N{neuron}`` is not one of the run's scanned neurons (the message of
    :func:`check_neuron`), or None when it is."""
    if layer not in run.layers:
        return f"layer {layer} out of range: scanned layers are {_ranges(run.layers)}."
    if not 0 <= neuron < run.d_mlp:
        return f"neuron {neuron} out of range: neurons of layer {layer} are 0..{run.d_mlp - 1}."
    return None


def check_neuron(run: Run, layer: int, neuron: int) -> None:
    """Raises NotFound naming the scanned layers or the neuron range if neuron
    ``L{layer}N{neuron}`` is not one of the run's scanned neurons."""
    why = neuron_range_error(run, layer, neuron)
    if why is not None:
        raise NotFound(why)


def check_head(run: Run, head_layer: int, head: int) -> None:
    """Raises NotFound naming the range if head ``L{head_layer}H{head}`` cannot drive any scanned
    neuron of the run: heads of layers up to the last scanned layer (the loosest of the
    upstream rules, docs/method.md §3; each neuron's own heads are its stored pairs)."""
    top = min(max(run.layers) if run.layers else run.n_layers - 1, run.n_layers - 1)
    if not 0 <= head_layer <= top:
        raise NotFound(f"head layer {head_layer} out of range: heads that can drive a scanned "
                       f"neuron are in layers 0..{top}.")
    if not 0 <= head < run.n_heads:
        raise NotFound(f"head {head} out of range: heads are 0..{run.n_heads - 1}.")
