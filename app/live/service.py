"""Live forward passes for the explorer, the live half's one interface (:class:`Live`): the runs'
models run in a process of their own (:mod:`app.live.worker`, started with the server, restarted
if it dies), which loads them in the background and batches every forward pass on one thread;
this side keeps the token cap's and queue's answers, single-flight and an LRU cache of recent
results, and a Future per request.

The interface takes and gives plain values only (a model source, a :class:`~app.live.passes.Target`,
texts, head tuples; Futures of JSON-able dicts), never a database row or session, and so do the
messages to and from the model process: :meth:`Live.preload`, :meth:`Live.unavailable`,
:meth:`Live.status`, :meth:`Live.submit`, :meth:`Live.submit_knockout`,
:meth:`Live.submit_fire`, :meth:`Live.waiting`,
:attr:`Live.stats`, :meth:`Live.close` (and :meth:`Live.worker`, :meth:`Live.hold`).

The science is precompute's: a live view is the model backend's ``clean_view`` (activations,
raw and LN-aware head attribution, the token's probability and the top-5, in ONE forward pass;
with a head selected, also that pass's per-source decomposition, docs/method.md §3) and, when
heads are ablated, its ``ablated_view``; a source's attention knockout, its ``knockout`` — the
passes the precompute job batches
through, on whichever backend the model was loaded with (:mod:`precompute.model`). Nothing here
re-derives them: :func:`~app.live.passes.live_views` is the one place where the live server does
model work.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from cachetools import LRUCache

from context_lookups.precompute.core.errors import BadLiveInput, ModelNotAvailable
from context_lookups.precompute.model import resolve_device

from ..model_files import LocalModels
from ..settings import WebSettings
from .fire import FireColumns, FireJob
from .host import LiveJob
from .passes import Target
from .process import ModelProcess, exit_text

logger = logging.getLogger(__name__)

ZERO = {"batches": 0, "batched": 0, "max_batch": 0, "busy_s": 0.0}
RESTART_WINDOW_S = 60.0  # the model process is restarted at most `live_restarts` times in this window


class LiveBusy(ModelNotAvailable):
    """Too many live requests are waiting for the model (the route answers 503, retry later)."""


class Live:
    """The live half of one server process (thread-safe); the models run in the live model
    process, started on first need (:meth:`preload` at server start)."""

    def __init__(self, settings: WebSettings):
        self.settings = settings
        self.device = resolve_device(settings.device)  # BadSettings now, not at the first pass
        self.local = LocalModels()  # source -> (directory, why not here), decided once per source
        self._lock = threading.Lock()  # everything below, and the order of messages to the process
        self._cache = LRUCache(settings.live_cache_size) if settings.live_cache_size else None
        self._inflight: dict[tuple, Future] = {}  # request key -> its Future (single-flight)
        self._pending: dict[int, tuple[tuple, Future]] = {}  # job id -> (key, Future), sent to the process
        self._running: set[int] = set()  # job ids in the process's current batch
        self._ids = itertools.count()
        self._counts = {"hits": 0, "misses": 0}
        self._engine = dict(ZERO)  # the running model process's counters
        self._before = dict(ZERO)  # those of the processes before it (restarts)
        self._sources: dict[str, str] = {}  # run slug -> model source
        self._asked: dict[str, str] = {}  # model source -> directory, sent to the process (again on restart)
        self._loads: dict[str, Future] = {}  # model source -> its load, settled when the process says
        self._models: set[str] = set()  # sources loaded in the running process
        self._failed: dict[str, ModelNotAvailable] = {}
        self._deaths: list[float] = []  # when the process died, within RESTART_WINDOW_S
        self._restarts = 0
        self._down: str | None = None  # why live passes are off for good (the process kept dying)
        self._closed = False
        self._process = ModelProcess(settings, on_message=self._on_message, on_exit=self._on_exit)

    @property
    def stats(self) -> dict:
        """Counters: cache ``hits`` and ``misses`` here; ``batches``, requests ``batched``,
        ``max_batch`` and the model thread's ``busy_s`` from the model process (since it started)."""
        b, e = self._before, self._engine
        return {**self._counts, **{k: max(b[k], e[k]) if k == "max_batch" else round(b[k] + e[k], 4)
                                   for k in ZERO}}

    def waiting(self) -> int:
        """Live requests waiting for the model (sent to it, not in the batch it is running)."""
        return len(self._pending) - len(self._running)

    def worker(self) -> dict:
        """The live model process: ``pid`` (None before it starts), ``restarts`` since the server
        started, ``state`` (``not started``, ``running``, ``stopped``, or ``off: <why>``)."""
        state = (f"off: {self._down}" if self._down else "stopped" if self._closed
                 else "running" if self._process.running else "not started")
        return {"pid": self._process.pid, "restarts": self._restarts, "state": state}

    # --- models (loaded in the model process) ------------------------------------------------
    def preload(self, sources: dict[str, str]) -> list[Future]:
        """Load (then warm up) the models of ``sources`` (``{run slug: model source}``) in the model
        process, in the background; the runs' states are known at once (:meth:`status`). Returns
        a Future per model asked for (its result None, or why it could not be loaded)."""
        futs = []
        with self._lock:
            for slug, src in sources.items():
                self._sources.setdefault(slug, src)
                if self.local(src)[1] is None and src not in self._failed:  # not on this server: never loaded
                    futs.append(self._ask(src))
        return futs

    def _ask(self, source: str) -> Future:  # with self._lock held
        """The load of ``source`` in the model process, asked for once (and again after a restart)."""
        if source not in self._asked:
            self._asked[source] = self.local(source)[0]
            self._loads[source] = Future()
            self._send(("load", source, self._asked[source]))
        return self._loads[source]

    # --- availability (local files only: no request ever waits on the hub) -------------------
    def unavailable(self, source: str) -> str | None:
        """Why live passes cannot run on model ``source`` (it is not on this server, failed to
        load, or the model process kept dying), one line for a page; None when they can."""
        why = self.local(source)[1]
        if why is None and source in self._failed:
            why = f"the model {source} could not be loaded"
        if why is None and self._down:
            why = self._down
        return why

    def loaded(self, slug: str) -> bool:
        return self._sources.get(slug) in self._models

    def status(self) -> dict:
        """``{slug: "ready" | "loading" | "failed: <why>" | "unavailable: <why>"}`` of every run
        seen (unavailable: its model is not on this server; known at start)."""
        out = {}
        for slug, src in self._sources.items():
            why = self.local(src)[1]
            out[slug] = ("ready" if src in self._models else f"unavailable: {why}" if why is not None
                         else f"failed: {self._failed[src]}" if src in self._failed
                         else f"failed: {self._down}" if self._down else "loading")
        return out

    # --- requests ----------------------------------------------------------------------------
    def submit(self, *, source: str, target: Target, prompt: str, ablate: list[tuple[int, int]],
               pos: int | None, head: tuple[int, int] | None = None) -> Future:
        """Queue ``prompt`` for the model of ``source``: ``target``'s neuron attributed at ``pos``
        (0-based among the prompt's tokens, BOS excluded; default the last), with ``ablate``
        heads' value vectors zero-ablated (paper §5.4) in a second pass, and ``head``'s look-up
        (its per-source decomposition in the clean pass, docs/method.md §3). Await the returned
        Future (``asyncio.wrap_future``) rather than block on it. Results are cached by (run,
        neuron, prompt, heads, pos, head); identical requests in flight share one computation.

        Raises:
            BadLiveInput: an empty prompt (at once); a position outside it, or a look-up head not
                upstream of the neuron (from the Future).
            PromptTooLong: more tokens than the server's cap (from the Future).
            ModelNotAvailable: the model cannot be loaded, or the model process stopped while
                the request waited (from the Future).
            LiveBusy: too many requests are waiting (at once).
        """
        if not prompt or not prompt.strip():
            raise BadLiveInput("The prompt is empty: type some text to run the model on.")
        key = (target.slug, target.layer, target.neuron, prompt, tuple(ablate), pos, head)
        return self._enqueue(target.slug, key, lambda i: LiveJob(
            id=i, source=source, prompt=prompt, heads=tuple(ablate), pos=pos, head=head, target=target))

    def submit_knockout(self, *, source: str, target: Target, prompt: str, pos: int | None,
                        head: tuple[int, int], src: int) -> Future:
        """Queue the attention knockout of source ``src`` (0 = BOS, the sink; ``s`` = the prompt's
        token ``s - 1``) of ``head``'s look-up at ``pos`` (0-based, BOS excluded; default the last
        token) for ``target``'s neuron (docs/method.md §3, "Attention knockout"); cached and shared
        like :meth:`submit`. The Future gives :func:`~app.live.passes.live_knockouts`' dict.

        Raises:
            BadLiveInput: an empty prompt (at once); a position or source outside it, or a head not
                upstream of the neuron (from the Future). PromptTooLong, ModelNotAvailable (from the
                Future). LiveBusy: too many requests are waiting (at once).
        """
        if not prompt or not prompt.strip():
            raise BadLiveInput("The prompt is empty: type some text to run the model on.")
        key = ("knockout", target.slug, target.layer, target.neuron, prompt, pos, head, src)
        return self._enqueue(target.slug, key, lambda i: LiveJob(
            id=i, source=source, prompt=prompt, heads=(), pos=pos, head=head, target=target, kind="knockout",
            src=src))

    def submit_fire(self, *, source: str, columns: FireColumns, text: str) -> Future:
        """Queue ``text`` for "which neurons fire" on the model of ``source`` (:mod:`app.live.fire`;
        ``columns``: the run's analysed neurons); cached and shared like :meth:`submit`.

        Raises:
            BadLiveInput: an empty text (at once). LiveBusy: too many requests are waiting (at
            once). From the Future: PromptTooLong, ModelNotAvailable.
        """
        if not text or not text.strip():
            raise BadLiveInput("The text is empty: type some text to run the model on.")
        key = ("fire", columns.slug, text)
        return self._enqueue(columns.slug, key, lambda i: FireJob(id=i, source=source, prompt=text,
                                                                  columns=columns))

    def _enqueue(self, slug: str, key: tuple, make: Callable[[int], object]) -> Future:
        """The cached result of ``key``, the Future of the same request in flight, or the job
        ``make(job id)`` sent to the model process (run ``slug``'s)."""
        fut: Future = Future()
        with self._lock:
            if self._cache is not None and key in self._cache:
                self._counts["hits"] += 1
                fut.set_result(self._cache[key])
                return fut
            if key in self._inflight:
                self._counts["hits"] += 1
                return self._inflight[key]
            job = make(next(self._ids))
            self._sources.setdefault(slug, job.source)
            why = self.local(job.source)[1]
            if why is not None or job.source in self._failed or self._down:  # known now: nothing to send
                fut.set_exception(ModelNotAvailable(f"Live passes are off for this run: {why}.") if why
                                  else self._failed.get(job.source) or ModelNotAvailable(
                                      f"Live passes are off: {self._down}."))
                return fut
            if self._closed:
                raise ModelNotAvailable("The server is shutting down.")
            if self.waiting() >= self.settings.live_queue:
                raise LiveBusy(f"The live model is busy: {self.waiting()} requests are waiting. "
                               f"Retry in a moment.")
            self._ask(job.source)
            self._pending[job.id] = (key, fut)
            self._inflight[key] = fut
            self._send(("job", job))
        return fut

    def hold(self) -> Callable[[], None]:
        """Keep the model process from starting its next batch until the returned function is
        called, so that requests queue up (what a test does to see them batched; at most 10
        minutes)."""
        with self._lock:
            token = next(self._ids)
            self._send(("hold", token))

        def release() -> None:
            with self._lock:
                self._send(("release", token))
        return release

    def close(self) -> None:
        """Stop the model process (its running batch finishes; requests still waiting fail) and
        wait for it to exit."""
        with self._lock:
            self._closed = True
        self._process.stop()
        self._fail_pending(ModelNotAvailable("The server is shutting down."))

    # --- the model process -------------------------------------------------------------------
    def _send(self, msg: tuple) -> None:  # with self._lock held
        """Send ``msg`` to the model process, starting it first if none runs (a message to a
        process that just died is lost with it: its requests fail when its exit is seen)."""
        if self._closed:
            return
        if not self._process.running:
            try:
                self._process.start()
            except Exception as exc:  # e.g. no memory for a process: said once, in a 503
                logger.exception("the live model process could not start")
                raise ModelNotAvailable(f"The live model process could not start ({type(exc).__name__}: "
                                        f"{exc}); retry in a moment.") from exc
        self._process.send(msg)

    def _on_message(self, msg: tuple) -> None:
        """A message of the model process (on its reading thread): a model's state, a batch
        started, a batch's results (each request's Future settled, the result cached)."""
        kind = msg[0]
        if kind == "done":
            _, results, stats = msg
            settled = []
            with self._lock:
                self._engine = stats
                for job_id, result, error in results:
                    key, fut = self._pending.pop(job_id, (None, None))
                    self._running.discard(job_id)
                    if fut is None:
                        continue
                    self._inflight.pop(key, None)
                    if error is None:
                        self._counts["misses"] += 1
                        if self._cache is not None:
                            self._cache[key] = result
                    settled.append((fut, result, error))
            for fut, result, error in settled:  # outside the lock: callbacks run here
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(result)
        elif kind == "took":
            with self._lock:
                self._running.update(i for i in msg[1] if i in self._pending)
        elif kind == "model":
            _, source, why = msg
            with self._lock:
                if why is None:
                    self._models.add(source)
                else:
                    self._failed[source] = ModelNotAvailable(why)
                load = self._loads.get(source)
            if load is not None and not load.done():
                load.set_result(why)

    def _on_exit(self, code: int | None) -> None:
        """The model process died (on its reading thread): the requests it had fail with a 503
        that says so, and it is started again with the models it had, unless it died more than
        ``live_restarts`` times within a minute (then live passes are off, and say why)."""
        now = time.time()
        with self._lock:
            if self._closed:
                return
            self._deaths = [t for t in self._deaths if now - t < RESTART_WINDOW_S] + [now]
            how = exit_text(code)
            give_up = len(self._deaths) > self.settings.live_restarts
            down = (f"the live model process stopped {len(self._deaths)} times within "
                    f"{RESTART_WINDOW_S:.0f} s (last: {how}); live passes need a server restart"
                    if give_up else None)
            if give_up:
                logger.error("live passes are off: %s", down)
            error = ModelNotAvailable(
                f"The live model process stopped ({how}) while this request waited"
                + (f"; live passes are off: {down}." if give_up
                   else "; it is restarting: retry in a moment."))
            failed = self._take_pending()
            self._before = {k: max(self._before[k], v) if k == "max_batch" else self._before[k] + v
                            for k, v in self._engine.items()}
            self._engine = dict(ZERO)
            self._models.clear()
            if give_up:  # set after the models are cleared: status() and worker() read without the lock
                self._down = down
            loads, asked = dict(self._loads), dict(self._asked)
            self._loads, self._asked = {}, {}
            if not give_up:
                self._restarts += 1
                for source in asked:  # the same models, loaded again in the new process
                    self._ask(source)
        for fut in failed:
            fut.set_exception(error)
        for fut in loads.values():
            if not fut.done():
                fut.set_result(str(error))

    def _take_pending(self) -> list[Future]:  # with self._lock held
        failed = [fut for _, fut in self._pending.values()]
        for key, _ in self._pending.values():
            self._inflight.pop(key, None)
        self._pending.clear()
        self._running.clear()
        return failed

    def _fail_pending(self, error: BaseException) -> None:
        with self._lock:
            failed = self._take_pending()
        for fut in failed:
            if not fut.done():
                fut.set_exception(error)
