"""The live engine over real HTTP (a loopback uvicorn server): models load in the background
and /healthz says when they are ready, queued live requests never hold the threads that serve
pages, requests for different neurons and ablations share batched passes whose results equal
precompute's reference functions, and the device / dtype settings."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from tests.web_fixtures import TOPK_RUN, Server, rows, wait_ready


def make_app(web_db, tiny_model_dir, **over):
    from context_lookups.app.main import create_app

    over.setdefault("torch_threads", None)
    over.setdefault("model_paths", {s: str(tiny_model_dir) for (s,) in rows(web_db, "SELECT slug FROM runs")})
    return create_app(db_url=f"sqlite:///{web_db}", **over)


def neurons(db, n: int):
    return rows(db, "SELECT n.layer, n.neuron, n.token_id FROM neurons n JOIN runs r ON r.id = n.run_id "
                "WHERE r.slug = ? AND n.kind != 'other' ORDER BY n.layer, n.neuron LIMIT ?", TOPK_RUN, n)


def test_models_load_in_the_background_and_healthz_says_when(web_db, tiny_model_dir):
    app = make_app(web_db, tiny_model_dir)
    with Server(app) as srv:
        h = httpx.get(srv.url + "/healthz").json()  # answers at once, loaded or not
        assert h["status"] == "ok"
        assert set(h["models"]) == {s for (s,) in rows(web_db, "SELECT slug FROM runs")}
        assert set(h["models"].values()) <= {"loading", "ready"}
        h = wait_ready(srv.url)
        assert h["ready"] and set(h["models"].values()) == {"ready"}
        assert app.state.live.loaded(TOPK_RUN)  # before any live request
    bad = make_app(web_db, tiny_model_dir, model_paths={TOPK_RUN: "/nonexistent/model-dir"})
    with Server(bad) as srv:
        h = wait_ready(srv.url)
        assert not h["ready"] and "nonexistent/model-dir" in h["models"][TOPK_RUN]
        # not on this server: known at start, without trying to load it
        assert h["models"][TOPK_RUN].startswith("unavailable") and h["live"][TOPK_RUN] is False
        assert h["live"] == {s: s != TOPK_RUN for s in h["models"]}


def test_queued_live_requests_do_not_hold_page_threads(web_db, tiny_model_dir):
    """60 live requests wait on a blocked model thread; a plain page still answers, and every
    live request completes once the model is free. (Handlers that blocked a worker thread per
    live request would exhaust the 40-thread pool and the page would time out.)"""
    (layer, neuron, _), = neurons(web_db, 1)
    app = make_app(web_db, tiny_model_dir)
    with Server(app) as srv:
        wait_ready(srv.url)
        release = app.state.live.hold()  # the model thread is busy
        url = f"{srv.url}/{TOPK_RUN}/neurons/{layer}/{neuron}"

        def live(i: int) -> int:
            return httpx.get(url + "/live", params={"prompt": f"request {i} of the king"},
                             headers={"HX-Request": "true"}, timeout=120).status_code

        with ThreadPoolExecutor(60) as ex:
            futs = [ex.submit(live, i) for i in range(60)]
            deadline = time.time() + 60
            while app.state.live.waiting() < 60 and time.time() < deadline:
                time.sleep(0.05)
            assert app.state.live.waiting() == 60  # all queued, none answered
            page = httpx.get(url, timeout=30)
            assert page.status_code == 200 and "Top explain prompts" in page.text
            assert httpx.get(srv.url + "/healthz", timeout=30).json()["queue"] == 60
            assert not any(f.done() for f in futs)
            release()
            assert [f.result() for f in futs] == [200] * 60
        stats = app.state.live.stats
        assert stats["max_batch"] == app.state.settings.max_batch  # bounded batches
        assert stats["batched"] >= 60


def test_requests_for_other_neurons_and_ablations_share_a_pass(web_db, tiny_model_dir, tiny_model,
                                                               tiny_bridge):
    """Queued requests for several neurons, some with heads ablated, run as one batch; each
    result equals precompute's attribute()/ablate() on that prompt alone, on the bridge backend."""
    from context_lookups.precompute.ablation.ablate import ablate
    from context_lookups.precompute.heads.attribution import attribute

    picked = neurons(web_db, 3)
    app = make_app(web_db, tiny_model_dir)
    cases = [(n, f"Prompt {i}: the son of the king went" + " far" * i, [(0, 1)] if i % 2 else [])
             for i, n in enumerate(picked * 2)]
    with Server(app) as srv:
        wait_ready(srv.url)
        release = app.state.live.hold()

        def get(case):
            (layer, neuron, _), prompt, heads = case
            params = {"prompt": prompt, **({"ablate": "L0H1"} if heads else {})}
            return httpx.get(f"{srv.url}/{TOPK_RUN}/neurons/{layer}/{neuron}.json", params=params,
                             timeout=120)

        with ThreadPoolExecutor(len(cases)) as ex:
            futs = [ex.submit(get, c) for c in cases]
            while app.state.live.waiting() < len(cases):
                time.sleep(0.05)
            release()
            got = [f.result() for f in futs]
        assert app.state.live.stats["max_batch"] == len(cases)  # one batch across neurons
    for ((layer, neuron, token_id), prompt, heads), r in zip(cases, got, strict=True):
        assert r.status_code == 200, r.text
        live = r.json()["live"]
        row = [tiny_model.bos_token_id] + tiny_model.encode(prompt)
        att = attribute(tiny_bridge, [row], layer, neuron)
        ref = ablate(tiny_bridge, [row], layer, neuron, token_id, heads)
        assert live["acts"] == pytest.approx(att.acts[0][1:], rel=1e-4, abs=1e-5)
        assert torch.allclose(torch.tensor(live["attr_raw"]), att.raw[0], rtol=1e-4, atol=1e-5)
        assert torch.allclose(torch.tensor(live["attr_ln"]), att.ln[0], rtol=1e-4, atol=1e-5)
        assert live["prob"] == pytest.approx(float(ref.prob_clean[0]), rel=1e-4)
        if heads:
            assert live["ablation"]["drop"] == pytest.approx(float(ref.drop[0]), rel=1e-3, abs=1e-7)
            assert live["ablation"]["act_ablated"] == pytest.approx(float(ref.act_ablated[0]),
                                                                    rel=1e-4, abs=1e-5)
        else:
            assert live["ablation"] is None


def test_device_and_dtype_settings(web_db, tiny_model_dir, capsys):
    from fastapi.testclient import TestClient

    from context_lookups.app.cli import main

    assert main(["serve", "--db", f"sqlite:///{web_db}", "--device", "nosuch"]) == 2
    assert "Unknown device 'nosuch'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["serve", "--db", f"sqlite:///{web_db}", "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    (layer, neuron, _), = neurons(web_db, 1)
    url = f"/{TOPK_RUN}/neurons/{layer}/{neuron}.json"
    prompt = {"prompt": "The king of Judah was the son of the priest, and he"}
    got = {}
    for dtype in ("float32", "bfloat16"):
        with TestClient(make_app(web_db, tiny_model_dir, dtype=dtype, device="auto")) as c:
            got[dtype] = c.get(url, params=prompt).json()["live"]
            assert c.app.state.live.device == ("cuda" if torch.cuda.is_available() else "cpu") or \
                c.app.state.live.device == "mps"
    f32, bf16 = got["float32"], got["bfloat16"]
    assert f32["token_ids"] == bf16["token_ids"]
    scale = max(abs(a) for a in f32["acts"])
    assert max(abs(a - b) for a, b in zip(f32["acts"], bf16["acts"], strict=True)) < 0.1 * scale


def _gone(pid: int, timeout: float = 20) -> bool:
    """Whether process ``pid`` has exited (and been reaped) within ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(") ")[-1].startswith("Z"):  # a zombie: exited, not yet reaped
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_a_killed_model_process_answers_503_and_restarts(web_db, tiny_model_dir):
    """The model process is killed while a request waits on it: the request answers 503 saying
    so (it does not hang), /healthz reports the restart and the new process, live passes work
    again, and no model process outlives the server."""
    import os
    import signal

    (layer, neuron, _), = neurons(web_db, 1)
    app = make_app(web_db, tiny_model_dir)
    with Server(app) as srv:
        wait_ready(srv.url)
        worker = httpx.get(srv.url + "/healthz", timeout=30).json()["worker"]
        assert worker["state"] == "running" and worker["restarts"] == 0 and worker["pid"] != os.getpid()
        first = worker["pid"]
        url = f"{srv.url}/{TOPK_RUN}/neurons/{layer}/{neuron}.json"
        release = app.state.live.hold()  # the request waits in the model process
        with ThreadPoolExecutor(1) as ex:
            fut = ex.submit(httpx.get, url, params={"prompt": "the son of the king"}, timeout=120)
            deadline = time.time() + 60
            while app.state.live.waiting() < 1 and time.time() < deadline:
                time.sleep(0.05)
            os.kill(first, signal.SIGKILL)
            r = fut.result(timeout=60)
        release()  # to a process that has gone: nothing happens
        assert r.status_code == 503
        assert "live model process stopped (killed by SIGKILL)" in r.json()["detail"]
        assert "retry" in r.json()["detail"]
        h = wait_ready(srv.url)
        assert h["ready"] and h["worker"]["restarts"] == 1 and h["worker"]["state"] == "running"
        second = h["worker"]["pid"]
        assert second not in (None, first) and _gone(first)
        again = httpx.get(url, params={"prompt": "the son of the king"}, timeout=120)
        assert again.status_code == 200 and again.json()["live"]["token_ids"]
    assert _gone(second), "the model process outlived the server"
    assert app.state.live.worker()["state"] == "stopped"


def test_a_model_process_that_keeps_dying_turns_live_passes_off(web_db, tiny_model_dir):
    """With ``live_restarts=0`` the first death is the last: live requests answer 503 at once
    with why, /healthz says the worker is off, and the stored-data pages still answer."""
    import os
    import signal

    (layer, neuron, _), = neurons(web_db, 1)
    app = make_app(web_db, tiny_model_dir, live_restarts=0)
    with Server(app) as srv:
        pid = wait_ready(srv.url)["worker"]["pid"]
        os.kill(pid, signal.SIGKILL)
        assert _gone(pid)
        deadline = time.time() + 30
        while not app.state.live.worker()["state"].startswith("off") and time.time() < deadline:
            time.sleep(0.05)
        h = httpx.get(srv.url + "/healthz", timeout=30).json()
        assert h["worker"]["state"].startswith("off: the live model process stopped 1 times")
        assert h["live"][TOPK_RUN] is False
        base = f"{srv.url}/{TOPK_RUN}/neurons/{layer}/{neuron}"
        r = httpx.get(base + ".json", params={"prompt": "the son of the king"}, timeout=30)
        detail = r.json()["detail"]
        assert r.status_code == 503 and "live passes" in detail and "restart" in detail
        assert httpx.get(base, timeout=30).status_code == 200
