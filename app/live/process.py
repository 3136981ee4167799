"""The web process's side of the live model process (:mod:`app.live.worker`): start it, send it
plain values through one pipe, read what it sends back on a thread of its own, notice when it
dies, stop it.

The process is forked from multiprocessing's fork server, which imports the model code once
(torch, transformers, the backends) before any fork: a (re)start costs a fork and the model
loads, not a fresh interpreter, and it never forks the multi-threaded web process. The child
exits when the web process closes the pipe, dies, or asks it to stop, so none is left behind.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable

from ..settings import WebSettings
from . import worker

logger = logging.getLogger(__name__)

WORKER_MODULE = worker.__name__  # imported once by the fork server


def context() -> multiprocessing.context.BaseContext:
    """multiprocessing's fork server, importing the worker's modules before it forks (spawn where
    there is no fork server)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([WORKER_MODULE])  # no effect once the fork server runs: it has them
    return ctx


def exit_text(code: int | None) -> str:
    """A process's exit code as words: ``exit code 3``, ``killed by SIGKILL``."""
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ModelProcess:
    """One live model process at a time: :meth:`start` (again after it died), :meth:`send`,
    :meth:`stop`. ``on_message(msg)`` gets each message it sends; ``on_exit(code)`` is called
    once when it ends without being asked to (its exit code, or None), on the reading thread."""

    def __init__(self, settings: WebSettings, *, on_message: Callable[[tuple], None],
                 on_exit: Callable[[int | None], None]):
        self.settings = settings
        self._on_message, self._on_exit = on_message, on_exit
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._conn = None
        self._reader: threading.Thread | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._conn is not None

    def start(self) -> None:
        """Start the process (the caller knows none is running)."""
        ctx = context()
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=worker.main, args=(theirs, self.settings), name="live-model", daemon=True)
        proc.start()
        theirs.close()  # ours is the pipe's only other end: the child sees EOF when we go
        self._proc, self._conn, self._stopping = proc, ours, False
        self._reader = threading.Thread(target=self._read, args=(proc, ours), name="live-model-reader",
                                        daemon=True)
        self._reader.start()
        logger.info("live model process started (pid %s)", proc.pid)

    def send(self, msg: tuple) -> bool:
        """Send ``msg``; False when the process has gone (its reader reports the exit)."""
        conn = self._conn
        if conn is None:
            return False
        try:
            conn.send(msg)
            return True
        except (OSError, ValueError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the process to stop (it finishes its running batch; queued jobs fail), wait for it,
        then terminate or kill it if it does not exit; its reader ends after the last message."""
        proc, self._stopping = self._proc, True
        if proc is None:
            return
        self.send(("stop",))
        proc.join(timeout)
        if proc.exitcode is None:
            logger.warning("the live model process did not stop in %.0f s: terminated", timeout)
            proc.terminate()
            proc.join(5)
            if proc.exitcode is None:
                proc.kill()
                proc.join(5)
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout)
        self._conn = None
        self._proc = None

    def _read(self, proc, conn) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            try:
                self._on_message(msg)
            except Exception:  # a bug in a handler must not stop the reading
                logger.exception("handling a message of the live model process failed")
        conn.close()
        if self._stopping or self._proc is not proc:
            return
        proc.join(5)
        self._conn = None
        logger.error("the live model process (pid %s) stopped: %s", proc.pid, exit_text(proc.exitcode))
        self._on_exit(proc.exitcode)
