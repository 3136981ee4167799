"""A chat-completions server on loopback with scripted answers and injected faults (429, 500,
timeouts, malformed bodies, garbage answers), and the prompts the LLM explainer must send it for a
database's kept pairs, read with plain SQL."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

from context_lookups.precompute.explain.explainers.llm import CLASSIFIER_TEMPLATE, EXPLANATION_TEMPLATE

HELDOUT = 6  # held-out prompts per pair in the tests' LLM settings
# Scripted classifier answers, chosen by a hash of the example, with what they must parse to.
ANSWERS = [("Yes", True), (" no", False), ("Yes.", True), ("Maybe", None), ("NO", False), ("**Yes**", True)]


def explanation_for(content: str) -> str:
    return "the document mentions topic " + hashlib.sha256(content.encode()).hexdigest()[:6] + "."


def example_of(content: str) -> str:
    return content.split('Example: """\n', 1)[1].rsplit('\n"""\nAnswer: ', 1)[0]


def answer_for(content: str) -> tuple[str, bool | None]:
    return ANSWERS[int(hashlib.sha256(example_of(content).encode()).hexdigest()[:8], 16) % len(ANSWERS)]


class ChatServer:
    """A chat-completions endpoint on 127.0.0.1 with scripted answers and faults.

    ``faults[content]``: actions used up one per request for that user message;
    ``always[content]``: an action for every request. Actions: ``"429"``, ``"500"``, ``"401"``,
    ``"sleep"`` (answer after ``sleep_s``, later than the client's timeout), ``"html"`` (200 with
    a non-JSON body), ``"empty"`` (200 without choices), ``"hang"`` (wait for ``release``),
    ``"echo400"`` (400 whose error body echoes the request's headers, Authorization included),
    ``"echo200"`` (a valid answer that goes on to echo the request's path and headers, as sent
    and percent-encoded). ``default``: the action of every other request.
    """

    def __init__(self, sleep_s: float = 1.6):
        self.lock = threading.Lock()
        self.received: list[dict] = []  # request bodies, in order
        self.headers: list[dict] = []
        self.answered: list[str] = []  # contents answered 200 with a valid completion
        self.faults: dict[str, list[str]] = {}
        self.always: dict[str, str] = {}
        self.default = "ok"
        self.classifier_answer = answer_for
        self.sleep_s = sleep_s
        self.inflight = self.max_inflight = 0
        self.hang_after: int | None = None  # requests after this many get "hang"
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                content = body["messages"][0]["content"]
                with server.lock:
                    server.received.append(body)
                    server.headers.append(dict(self.headers))
                    n = len(server.received)
                    q = server.faults.get(content)
                    action = q.pop(0) if q else server.always.get(content, server.default)
                    if server.hang_after is not None and n > server.hang_after:
                        action = "hang"
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    self._respond(body, content, action)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with server.lock:
                        server.inflight -= 1

            def _send(self, status: int, payload: bytes, ctype="application/json", extra=None):
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(payload)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def _respond(self, body, content, action):
                err = json.dumps({"error": {"message": action, "type": "test"}}).encode()
                if action == "429":
                    return self._send(429, err, extra={"retry-after-ms": "20"})
                if action in ("500", "401"):
                    return self._send(int(action), err)
                if action == "echo400":
                    echo = f"bad request; you sent {dict(self.headers)}"
                    return self._send(400, json.dumps({"error": {"message": echo, "type": "test"}}).encode())
                if action == "echo200":
                    auth = str(self.headers.get("Authorization"))  # (case-insensitive)
                    echo = (f" debug: {auth} path {self.path} encoded {quote(auth, safe='')} "
                            f"headers {dict(self.headers)}")
                    text = (server.classifier_answer(content)[0] if body["max_tokens"] == 1
                            else explanation_for(content)) + echo
                    return self._send(200, json.dumps({
                        "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}]}).encode())
                if action == "html":
                    return self._send(200, b"<html>oops</html>", ctype="text/html")
                if action == "empty":
                    return self._send(200, json.dumps({"id": "x", "choices": []}).encode())
                if action == "hang":
                    server.release.wait(60)
                    return
                if action == "sleep":
                    time.sleep(server.sleep_s)
                if body["max_tokens"] == 1:
                    text = server.classifier_answer(content)[0]
                else:
                    text = explanation_for(content)
                out = {"id": "chatcmpl-test", "object": "chat.completion", "created": 0,
                       "model": body["model"],
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                self._send(200, json.dumps(out).encode())
                with server.lock:
                    server.answered.append(content)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def count(self, content: str) -> int:
        return sum(1 for b in self.received if b["messages"][0]["content"] == content)

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def expected_pairs(db: Path) -> list[dict]:
    """Kept pairs and their prompts, read with plain SQL (independently of precompute.explain)."""
    c = sqlite3.connect(db)
    out = []
    for pid, nid, hl, h, token in c.execute(
            "SELECT p.id, p.neuron_id, p.head_layer, p.head, n.token FROM pairs p "
            "JOIN neurons n ON n.id = p.neuron_id WHERE p.kept "
            "ORDER BY n.layer, n.neuron, p.head_layer, p.head"):
        label = f"L{hl}H{h}"

        def rows(split, limit=1000, label=label, nid=nid):
            return [(i, text, label in json.loads(act)) for i, text, act in c.execute(
                "SELECT id, text, active FROM prompts WHERE neuron_id = ? AND split = ? "
                "ORDER BY rank LIMIT ?", (nid, split, limit))]

        ex, held = rows("explain"), rows("heldout", HELDOUT)
        act = "\n".join("*" + t.replace("\n", " ") + token for _, t, a in ex if a)
        inact = "\n".join("*" + t.replace("\n", " ") + token for _, t, a in ex if not a)
        prompt = EXPLANATION_TEMPLATE.format(token=token, active=act, inactive=inact)
        classify = {i: CLASSIFIER_TEMPLATE.format(explanation=explanation_for(prompt).strip(),
                                                  example=t.replace("\n", " ") + token)
                    for i, t, _ in held}
        out.append(dict(pair_id=pid, token=token, prompt=prompt, heldout=held, classify=classify,
                        single=len({a for _, _, a in held}) < 2))
    c.close()
    return out
