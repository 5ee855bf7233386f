"""The OpenAI-compatible server serving a three-model TITA export (base + reward + explicit ref):
/v1/completions with per-request alpha through vllm_xargs, greedy tokens equal guided_generate's;
a bad alpha is a 400; a folder that is not a TITA export fails the start with a clear message.

The server runs on 127.0.0.1 only, started and stopped here, every wait bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("vllm")

from tita_ext.tiny_models import tiny_tokenizer  # noqa: E402
from tita_ext.vllm.export import export_vllm  # noqa: E402
from tita_ext.vllm.layout import ALPHA_PROCESSOR  # noqa: E402
from tita_ext.vllm.tiny_pair import save_trio, tiny_trio  # noqa: E402

from test_vllm_engine import MAX_NEW, guided_tokens, prompt_ids  # noqa: E402

START_TIMEOUT_S = 240
REQUEST_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, log_path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
               "--port", str(port), "--dtype", "float32", "--max-model-len", "128", "--max-num-seqs", "4",
               "--kv-cache-memory-bytes", str(1 << 26), "--enforce-eager", "--logits-processors", ALPHA_PROCESSOR]
    log = open(log_path, "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return process, f"http://127.0.0.1:{port}"


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def wait_ready(process: subprocess.Popen, url: str, log_path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise AssertionError(f"the server was not ready after {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    models = tiny_trio()
    return models, save_trio(tmp_path_factory.mktemp("trio"), models)


@pytest.fixture(scope="module")
def server(trio, tmp_path_factory):
    _, folders = trio
    root = tmp_path_factory.mktemp("server")
    out = export_vllm(folders["base"], folders["reward"], root / "tita3", ref=folders["ref"], alpha=0.6)
    log_path = root / "server.log"
    process, url = start_server(str(out), log_path)
    try:
        wait_ready(process, url, log_path)
        yield url, str(out)
    finally:
        stop_server(process)


def test_completions_with_per_request_alpha_equal_guided_generate(trio, server):
    models, _ = trio
    url, model = server
    ids = prompt_ids()
    alphas = [0.0, 0.3, 0.6, 1.0, 1.5, 0.6, 0.3, 1.0]
    expected = guided_tokens(models, ids, alphas, ref=True)
    for prompt, alpha, want in zip(ids, alphas, expected):
        status, body = post(url, {"model": model, "prompt": prompt, "max_tokens": MAX_NEW, "temperature": 0,
                                  "return_token_ids": True, "vllm_xargs": {"tita_alpha": alpha}})
        assert status == 200, body
        choice = body["choices"][0]
        assert choice["token_ids"] == want, (alpha, prompt)
        # the server holds back a trailing incomplete UTF-8 sequence of the random-weight text
        assert tiny_tokenizer().decode(want, skip_special_tokens=True).startswith(choice["text"])


def test_bad_alpha_is_a_400_with_the_reason(server):
    url, model = server
    status, body = post(url, {"model": model, "prompt": [5, 6], "max_tokens": 2,
                              "vllm_xargs": {"tita_alpha": "strong"}})
    assert status == 400
    assert "tita_alpha must be a finite number" in json.dumps(body)


def test_a_folder_that_is_not_an_export_fails_the_start_clearly(trio, tmp_path):
    """A config that names the architecture but lost its tita section (e.g. edited by hand)."""
    _, folders = trio
    out = export_vllm(folders["base"], folders["reward"], tmp_path / "broken")
    config = json.loads((out / "config.json").read_text())
    del config["tita"]
    (out / "config.json").write_text(json.dumps(config))
    log_path = tmp_path / "server.log"
    process, _ = start_server(str(out), log_path)
    try:
        process.wait(timeout=START_TIMEOUT_S)
    finally:
        stop_server(process)
    assert process.returncode != 0
    assert "is not a TITA export: export the models with `tita-ext export-vllm" in log_path.read_text()
