"""The live model process: its ``main``, started by the web process (:mod:`app.live.process`) and
fed through one pipe. It owns the models (:class:`~app.live.host.ModelHost`) and the batching
queue (:class:`~app.live.engine.Engine`), so that the forward passes and the Python around
them (hooks, result building) never hold the web process's GIL.

The pipe carries tuples of plain values. From the web process:

- ``("load", source, directory)``: load and warm up a model (before any job of it);
- ``("job", job)``: a :class:`~app.live.host.LiveJob` or :class:`~app.live.fire.FireJob`;
- ``("hold", token)`` / ``("release", token)``: keep the model thread waiting before its next
  batch until released (a test lets requests queue up this way);
- ``("stop",)``, or the pipe closing (the web process has gone): finish the running batch, exit.

To the web process:

- ``("model", source, None | why)``: a model is ready, or could not be loaded;
- ``("took", [job ids])``: a batch has started (the web process counts the others as waiting);
- ``("done", [(job id, result | None, error | None), ...], engine counters)``: a batch's results.
"""

from __future__ import annotations

import logging
import pickle
import signal
import threading
import time
from multiprocessing.connection import Connection

import torch

from context_lookups.precompute.core.errors import LookupsError, ModelNotAvailable

from ..settings import WebSettings
from .engine import Engine
from .host import ModelHost

logger = logging.getLogger(__name__)


def main(conn: Connection, settings: WebSettings) -> None:
    """Serve the web process on ``conn`` until it says stop or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the web process, which stops this one
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     live model process: %(message)s")
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    host = ModelHost(settings)
    send_lock = threading.Lock()

    def send(msg: tuple) -> None:
        try:
            with send_lock:
                conn.send(msg)
        except (OSError, ValueError):  # the web process has gone: the reading loop ends too
            pass

    def run(batch: list) -> None:
        t0 = time.perf_counter()
        send(("took", [j.id for j in batch]))
        done: dict[int, tuple] = {}

        def settle(job, *, result: dict | None = None, error: BaseException | None = None) -> None:
            done.setdefault(job.id, (result, error))

        try:
            host.run_batch(batch, settle)
        except Exception as exc:  # every job of the batch not settled yet gets the error
            logger.exception("a live batch failed")
            for j in batch:
                settle(j, error=exc)
        stats = {**engine.stats, "busy_s": round(engine.stats["busy_s"] + time.perf_counter() - t0, 4)}
        send(("done", [(i, r, portable(e)) for i, (r, e) in done.items()], stats))

    def fail(job, exc: BaseException) -> None:
        send(("done", [(job.id, None, portable(exc))], dict(engine.stats)))

    engine = Engine(run, group=lambda j: (j.source, j.kind), fail=fail, max_rows=settings.max_batch)

    def load(source: str) -> None:
        try:
            host.model(source)
        except ModelNotAvailable as exc:
            send(("model", source, str(exc)))
        else:
            send(("model", source, None))

    holds: dict[int, threading.Event] = {}
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):  # the web process has gone
                break
            kind = msg[0]
            if kind == "job":
                engine.submit(msg[1])
            elif kind == "load":
                host.paths[msg[1]] = msg[2]
                engine.call(lambda src=msg[1]: load(src))
            elif kind == "hold":
                ev = holds[msg[1]] = threading.Event()
                engine.call(lambda ev=ev: ev.wait(600))
            elif kind == "release":
                holds.pop(msg[1], threading.Event()).set()
            elif kind == "stop":
                break
    finally:
        for ev in holds.values():
            ev.set()
        engine.close()
        conn.close()


def portable(exc: BaseException | None) -> BaseException | None:
    """``exc`` as it can cross the pipe: the project's errors as they are (one message each), any
    other exception as a RuntimeError naming its type and message."""
    if exc is None or isinstance(exc, LookupsError):
        return exc
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
