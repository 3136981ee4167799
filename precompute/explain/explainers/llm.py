"""The LLM explainer: the paper's prompts (§4.4, docs/method.md §4-§5) sent to any OpenAI-compatible
chat-completions endpoint through the ``openai`` package.

Per pair, one explanation request (``EXPLANATION_TEMPLATE``, ``llm_max_tokens``), then one
classifier request per held-out prompt (``CLASSIFIER_TEMPLATE``, ``max_tokens`` 1). Examples are
shown as ``{prompt}{token}`` — the trimmed prompt followed by the token the neuron predicts —
with newlines replaced by spaces, as the authors' ``load_truncated_prompts`` did (each example
then stays on its ``*`` line).

Every request and its response is stored in ``LLMCall`` keyed by ``request_hash`` (SHA-256 of
the canonical JSON of the request body: model, messages, max_tokens and temperature when set;
never the API key, nor the endpoint URL — the request, not where it went, defines the answer),
committed as each answer arrives: a re-run sends nothing already answered, and a killed run
loses nothing answered.

Faults: 408/409/429/5xx and timeouts are retried by the openai client itself (``max_retries``
with its exponential backoff, honouring ``Retry-After``); a 200 response without a text answer
(malformed) is retried here with the same budget; what still fails is recorded (``LLMCall``
status ``failed``; the pair's explanation status ``failed``) and the run goes on. Requests run
in ``llm_concurrency`` worker threads; every database write happens on the calling thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from sqlalchemy.orm import Session
from tqdm.auto import tqdm

from context_lookups.precompute.core.errors import BadSettings
from context_lookups.precompute.core.redact import mask_url, redact, redact_tree, register_secret, url_secrets
from context_lookups.precompute.explain.explainers import PairResult, PairTask, explainer_name
from context_lookups.precompute.store.runs import now
from context_lookups.precompute.store.schema import LLMCall

logger = logging.getLogger(__name__)

# docs/method.md §4, the Feb 2024 zero-shot explanation prompt (authors' wording).
EXPLANATION_TEMPLATE = (
    "We are studying attention heads in a transformer architecture neural network. Each "
    "attention head looks for some particular thing in a short document.\n"
    'This attention head in particular helps to predict that the next token is "{token}", but it '
    "is only active in some documents and not others. Look at the documents and explain what "
    "makes the attention head active, taking into consideration the inactive examples.\n"
    'Examples where the attention head is active: """\n{active}\n"""\n'
    'Examples where the attention head is inactive: """\n{inactive}\n"""\n'
    "In two to three sentences, suggest when the attention head is active."
)
# docs/method.md §5, the classifier prompt (answer Yes / No, max_tokens 1).
CLASSIFIER_TEMPLATE = (
    '{explanation}\nIs the given example an active example? (Yes/No)\n\nExample: """\n'
    '{example}\n"""\nAnswer: '
)
CLASSIFIER_MAX_TOKENS = 1
MALFORMED_BACKOFF = 0.5  # seconds, doubled per attempt, at most 8 (the openai client's schedule)


class LLMFailure(Exception):
    """A request that failed after every retry (the message says why)."""


class MalformedResponse(ValueError):
    """A response without a text answer."""


def shown(text: str, token: str) -> str:
    """An example as the explainer and the classifier see it: ``{prompt}{token}``, newlines of
    the prompt replaced by spaces."""
    return text.replace("\n", " ") + token


def explanation_prompt(token: str, active: list[str], inactive: list[str]) -> str:
    """``EXPLANATION_TEMPLATE`` filled with prompt texts, each example as ``*{prompt}{token}``."""
    return EXPLANATION_TEMPLATE.format(
        token=token, active="\n".join("*" + shown(t, token) for t in active),
        inactive="\n".join("*" + shown(t, token) for t in inactive))


def classifier_prompt(explanation: str, text: str, token: str) -> str:
    """``CLASSIFIER_TEMPLATE`` filled with an explanation and one held-out prompt text."""
    return CLASSIFIER_TEMPLATE.format(explanation=explanation, example=shown(text, token))


def chat_request(settings, content: str, *, max_tokens: int) -> dict:
    """The chat-completions request body (one user message); ``temperature`` only when set."""
    req = {"model": settings.llm_model, "messages": [{"role": "user", "content": content}],
           "max_tokens": max_tokens}
    if settings.llm_temperature is not None:
        req["temperature"] = settings.llm_temperature
    return req


def request_hash(request: dict) -> str:
    """SHA-256 (hex) of the canonical JSON of a request body (sorted keys, no spaces)."""
    blob = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def response_text(response: dict | None, *, nonempty: bool = False) -> str:
    """The answer text ``choices[0].message.content`` of a stored response.

    Raises:
        MalformedResponse: no such string (or an empty one when ``nonempty``).
    """
    try:
        content = response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise MalformedResponse(f"no choices[0].message.content in {str(response)[:200]!r}") from None
    if not isinstance(content, str) or (nonempty and not content.strip()):
        raise MalformedResponse(f"answer {content!r} is not a non-empty string")
    return content


def api_key(settings) -> str | None:
    """The API key from the environment variable ``llm_api_key_env`` (None: not set, which a
    local endpoint given by ``llm_base_url`` may accept).

    Raises:
        BadSettings: no key and no ``llm_base_url`` (OpenAI itself needs a key); checked by
            the precompute job before anything is written.
    """
    key = os.environ.get(settings.llm_api_key_env)
    if not key and settings.llm_base_url is None:
        raise BadSettings(f"No API key: set the environment variable {settings.llm_api_key_env} "
                          f"(or name another one with --llm-api-key-env), or point "
                          f"--llm-base-url at an OpenAI-compatible server that needs none.")
    return key or None


class ChatClient:
    """An ``openai.OpenAI`` client built from the settings (the key is read from the
    environment variable ``llm_api_key_env`` and kept only inside the client). Everything that
    comes back from the endpoint, answers and failure messages alike, has the credentials it
    was sent (``secrets``: the key, the userinfo and secret query values of ``llm_base_url``,
    in every encoding they went out in) and anything shaped like a key redacted
    (:mod:`precompute.core.redact`).

    Raises:
        BadSettings: no key and no ``llm_base_url`` (OpenAI itself needs a key).
    """

    def __init__(self, settings):
        import openai

        key = api_key(settings)
        # redacted from every answer, message and log line (an endpoint may echo them)
        self.secrets: tuple[str, ...] = tuple(s for s in (key, *url_secrets(settings.llm_base_url)) if s)
        register_secret(*self.secrets)
        key = key or "none"  # local OpenAI-compatible servers accept any key
        self.max_retries = settings.llm_max_retries
        self._client = openai.OpenAI(base_url=settings.llm_base_url, api_key=key,
                                     max_retries=settings.llm_max_retries, timeout=settings.llm_timeout)

    def complete(self, request: dict, *, nonempty: bool = False) -> dict:
        """Send one request (in a worker thread); the response as a JSON-able dict.

        Raises:
            LLMFailure: an HTTP error, timeout or malformed answer after every retry (the
                message has the API key and key-shaped strings redacted: an endpoint may echo
                the request's Authorization header in its error body).
            openai.AuthenticationError, openai.PermissionDeniedError: a bad key (not retried).
        """
        import openai

        last = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(MALFORMED_BACKOFF * 2 ** (attempt - 1), 8.0))
            try:
                resp = self._client.chat.completions.create(**request)
            except (openai.AuthenticationError, openai.PermissionDeniedError):
                raise
            except openai.APIError as exc:  # the client has already retried what is retryable
                raise LLMFailure(redact(f"{type(exc).__name__}: {exc}", *self.secrets)) from None
            except ValueError as exc:  # a 200 whose JSON body does not decode
                last = MalformedResponse(redact(f"{type(exc).__name__}: {exc}", *self.secrets))
                logger.warning("malformed LLM response (attempt %d of %d): %s", attempt + 1,
                               self.max_retries + 1, last)
                continue
            try:
                data = resp.model_dump(mode="json") if hasattr(resp, "model_dump") else resp
                data = self.clean(data)
                response_text(data, nonempty=nonempty)
                return data
            except MalformedResponse as exc:
                last = MalformedResponse(redact(str(exc), *self.secrets))
                logger.warning("malformed LLM response (attempt %d of %d): %s", attempt + 1,
                               self.max_retries + 1, last)
        raise LLMFailure(f"malformed response after {self.max_retries + 1} attempts: {last}")

    def clean(self, response):
        """A response (JSON-able) with the credentials sent and key-shaped strings redacted in
        every string it holds (:func:`precompute.core.redact.redact_tree`)."""
        return redact_tree(response, *self.secrets)


@dataclass
class _State:
    task: PairTask
    prompt: str
    request_hash: str
    text: str | None = None
    outstanding: int = 0
    answers: dict[int, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def run_llm(session: Session, tasks: list[PairTask], settings,
            on_result: Callable[[PairTask, PairResult], None], *, client: ChatClient | None = None) -> dict:
    """Explain and classify ``tasks`` with the LLM; ``on_result(task, result)`` is called on
    this thread as each pair completes. Answered requests are taken from ``LLMCall``.

    Returns: ``{"requests_sent", "requests_cached", "requests_failed"}``.

    Raises:
        BadSettings: the endpoint refused the API key (nothing more is sent).
    """
    import openai

    client = client or ChatClient(settings)
    name = explainer_name(settings)
    stats = {"requests_sent": 0, "requests_cached": 0, "requests_failed": 0}
    states: dict[int, _State] = {}
    futures: dict[Future, str] = {}
    waiting: dict[str, list[tuple[int, int | None]]] = defaultdict(list)  # hash -> (pair, slot)
    requests: dict[str, dict] = {}  # hash -> request body, while in flight
    pool = ThreadPoolExecutor(max_workers=settings.llm_concurrency, thread_name_prefix="llm")
    bar = tqdm(total=len(tasks), desc=f"explain {name}", unit="pair", dynamic_ncols=True)
    common = {"explainer": name, "llm_model": settings.llm_model,
              "llm_base_url": mask_url(settings.llm_base_url), "llm_temperature": settings.llm_temperature,
              "llm_max_tokens": settings.llm_max_tokens, "classifier_max_tokens": CLASSIFIER_MAX_TOKENS,
              "heldout_per_pair": settings.heldout_per_pair}

    def finish(st: _State, result: PairResult) -> None:
        result.prompt = st.prompt
        result.settings = {**common, "explanation_request": st.request_hash}
        on_result(st.task, result)
        bar.update(1)

    def ask(request: dict, pair_id: int, slot: int | None) -> None:
        h = request_hash(request)
        row = session.get(LLMCall, h)
        if row is not None and row.status == "ok":
            stats["requests_cached"] += 1  # (stored before answers were redacted: cleaned now)
            deliver(pair_id, slot, client.clean(row.response), None)
            return
        if h not in waiting:  # identical requests in flight are sent once
            fut = pool.submit(client.complete, request, nonempty=slot is None)
            futures[fut] = h
            requests[h] = request
        waiting[h].append((pair_id, slot))

    def deliver(pair_id: int, slot: int | None, response: dict | None, error: str | None) -> None:
        st = states[pair_id]
        if slot is None:  # the explanation
            if error is not None:
                finish(st, PairResult(status="failed", error=f"explanation request failed: {error}"))
                return
            st.text = response_text(response).strip()
            if st.task.single_class:
                finish(st, PairResult(status="single_class", text=st.text))
                return
            st.outstanding = len(st.task.heldout)
            for e in st.task.heldout:
                ask(chat_request(settings, classifier_prompt(st.text, e.text, st.task.token),
                                 max_tokens=CLASSIFIER_MAX_TOKENS), pair_id, e.prompt_id)
            return
        if error is not None:
            st.errors.append(error)
        else:
            st.answers[slot] = response_text(response)
        st.outstanding -= 1
        if st.outstanding == 0:
            finish(st, _classified(st))

    try:
        for t in tasks:
            prompt = explanation_prompt(t.token, [e.text for e in t.active], [e.text for e in t.inactive])
            req = chat_request(settings, prompt, max_tokens=settings.llm_max_tokens)
            states[t.pair_id] = _State(task=t, prompt=prompt, request_hash=request_hash(req))
            ask(req, t.pair_id, None)
        while futures:
            done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
            for fut in done:
                h = futures.pop(fut)
                response, error = None, None
                try:
                    response = fut.result()
                except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                    raise BadSettings(f"The LLM endpoint refused the API key from "
                                      f"${settings.llm_api_key_env} ({type(exc).__name__}); "
                                      f"nothing more was sent.") from None
                except LLMFailure as exc:
                    error = str(exc)
                _record(session, h, requests.pop(h), response, error)
                stats["requests_failed" if error else "requests_sent"] += 1
                for pair_id, slot in waiting.pop(h):
                    deliver(pair_id, slot, response, error)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    return stats


def _classified(st: _State) -> PairResult:
    task = st.task
    if st.errors:
        return PairResult(status="failed", text=st.text,
                          error=f"{len(st.errors)} of {len(task.heldout)} classifier requests "
                                f"failed; first: {st.errors[0]}")
    return PairResult(status="ok", text=st.text,
                      answers=[(e.prompt_id, e.active, st.answers[e.prompt_id]) for e in task.heldout])


def _record(session: Session, h: str, request: dict, response: dict | None, error: str | None) -> None:
    """Store one request and its response (or failure) and commit at once; key-shaped
    strings in the response and the error are redacted (the client has redacted the
    credentials it sent already)."""
    error, response = redact(error), redact_tree(response)
    session.merge(LLMCall(request_hash=h, request=request, response=response,
                          status="failed" if error else "ok", error=error, created_at=now()))
    session.commit()
    if error:
        logger.warning("LLM request %s… failed: %s", h[:12], error)


__all__ = ["EXPLANATION_TEMPLATE", "CLASSIFIER_TEMPLATE", "CLASSIFIER_MAX_TOKENS", "ChatClient", "api_key",
           "LLMFailure", "chat_request", "classifier_prompt", "explanation_prompt", "request_hash",
           "response_text", "run_llm", "shown"]
