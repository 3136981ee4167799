"""The batching queue of the live model process: ONE thread owns the models and runs every
forward pass (:mod:`app.live.worker`).

Jobs arrive from the web process (:class:`app.live.service.Live`) as plain values; the thread
takes the queued jobs of one model and kind, at most ``max_rows`` at a time (a bounded batch
keeps memory bounded), and hands them to one batch function; tasks (loading a model, warming
it up) run on the same thread before any job, so torch only ever runs on this thread. The
queue's limit (503 when too many requests wait) is the web process's, which sees every
request first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future

from context_lookups.precompute.core.errors import ModelNotAvailable

logger = logging.getLogger(__name__)


class Engine:
    """A queue of jobs served in batches by one daemon thread.

    ``run_batch(jobs)`` receives jobs of one group (``group(job)``, e.g. the model) and must
    settle each of them; if it raises, or the engine closes with jobs still queued, each job
    gets ``fail(job, exc)``.
    """

    def __init__(self, run_batch: Callable[[list], None], *, group: Callable[[object], Hashable],
                 fail: Callable[[object, BaseException], None], max_rows: int, name: str = "live-model"):
        self._run_batch, self._group, self._fail = run_batch, group, fail
        self.max_rows = max_rows
        self._jobs: deque = deque()
        self._tasks: deque = deque()
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._name = name
        self.stats = {"batches": 0, "batched": 0, "max_batch": 0, "busy_s": 0.0}

    # --- producer side (any thread) ----------------------------------------------------------
    def submit(self, job) -> None:
        """Queue ``job``."""
        with self._cv:
            self._jobs.append(job)
            self._ensure_thread()
            self._cv.notify()

    def call(self, fn: Callable[[], object]) -> Future:
        """Run ``fn()`` on the worker thread before any queued job; its result as a Future."""
        fut: Future = Future()
        with self._cv:
            self._tasks.append((fn, fut))
            self._ensure_thread()
            self._cv.notify()
        return fut

    def waiting(self) -> int:
        return len(self._jobs)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after the batch it is running; jobs still queued fail."""
        with self._cv:
            self._stop = True
            self._cv.notify()
            pending, self._jobs = list(self._jobs), deque()
        for job in pending:
            self._fail(job, ModelNotAvailable("The server is shutting down."))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # --- the worker thread -------------------------------------------------------------------
    def _ensure_thread(self) -> None:  # with self._cv held
        if self._thread is None and not self._stop:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    def _take(self) -> list:  # with self._cv held: the oldest job and others of its group
        first = self._jobs.popleft()
        g = self._group(first)
        batch, rest = [first], deque()
        while self._jobs and len(batch) < self.max_rows:
            j = self._jobs.popleft()
            (batch if self._group(j) == g else rest).append(j)
        rest.extend(self._jobs)
        self._jobs = rest
        return batch

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._stop or self._tasks or self._jobs):
                    self._cv.wait()
                if self._stop:
                    return
                task = self._tasks.popleft() if self._tasks else None
                batch = None if task else self._take()
            if task is not None:
                fn, fut = task
                try:
                    fut.set_result(fn())
                except Exception as exc:  # handed to whoever waits
                    fut.set_exception(exc)
                continue
            # counted before the batch runs: its results carry the counters (app.live.worker)
            self.stats["batches"] += 1
            self.stats["batched"] += len(batch)
            self.stats["max_batch"] = max(self.stats["max_batch"], len(batch))
            t0 = time.perf_counter()
            try:
                self._run_batch(batch)
            except Exception as exc:  # every request of the batch gets the error
                logger.exception("a live batch failed")
                for j in batch:
                    self._fail(j, exc)
            self.stats["busy_s"] = round(self.stats["busy_s"] + time.perf_counter() - t0, 4)
