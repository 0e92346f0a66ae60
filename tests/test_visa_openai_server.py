"""VISA's chat roles against a local OpenAI-compatible server (loopback, scripted replies): settings reach
the requests, empty replies are retried and never stored, echoed instructions are not questions, and the
cache key follows the served model."""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer

import pytest
from PIL import Image

from json_server import QuietHandler
from vlret.errors import VlretError
from vlret.rerank.backends.openai_http import BackendError, OpenAIChat
from vlret.rerank.visa.config import build_describer, build_question_generator, build_vqa, load_visa_config
from vlret.rerank.visa.pipeline import Roles, Visa
from vlret.rerank.visa.prompts import parse_questions


class _Server(QuietHandler):
    """Answers POST /v1/chat/completions with the next scripted reply (the last one repeats) and
    GET /v1/models with ``models``; records every request body."""

    replies: list[str] = []
    requests: list[dict] = []
    models: dict | None = None

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Server.requests.append(body)
        text = _Server.replies.pop(0) if len(_Server.replies) > 1 else _Server.replies[0]
        usage = {"prompt_tokens": 7, "completion_tokens": len(text.split())}
        self.send_json(200, {"choices": [{"message": {"content": text}}], "usage": usage})

    def do_GET(self):  # noqa: N802
        if _Server.models is None:
            self.send_json(404, {"error": "not found"})
        else:
            self.send_json(200, _Server.models)


@pytest.fixture
def server():
    _Server.replies, _Server.requests, _Server.models = ["A red circle."], [], None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def _config(tmp_path, url, **role_settings):
    role = {"backend": "openai", "model": "m", "base_url": url, "max_retries": 1, **role_settings}
    path = tmp_path / "visa.yaml"
    roles = {name: role for name in ("describer", "question_generator", "vqa")}
    path.write_text(json.dumps({**roles, "reranker": {"backend": "lexical"}}))
    return load_visa_config(path)


def test_max_tokens_and_temperature_of_each_role_reach_its_requests(server, tmp_path):
    config = _config(tmp_path, server, max_tokens=200, temperature=0.7)
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    build_describer(config).describe(image)
    build_question_generator(config).generate("a red circle", 3)
    build_vqa(config).answer(image, "What colour is it?", "red circle")
    assert [(r["max_tokens"], r["temperature"]) for r in _Server.requests] == [(200, 0.7)] * 3
    defaults = _config(tmp_path, server)  # unset: each role's own defaults
    assert (build_describer(defaults).max_tokens, build_vqa(defaults).temperature) == (512, 0.0)
    assert build_question_generator(defaults).temperature == 0.2  # the official setting
    assert build_describer(config).id != build_describer(defaults).id  # the settings are in the key


def test_an_empty_reply_is_retried_and_never_stored(server, tmp_path):
    _Server.replies = ["", "   ", "A red circle."]
    chat = OpenAIChat("m", base_url=server, max_retries=2, backoff=0.01)
    assert chat.chat("describe") == "A red circle." and len(_Server.requests) == 3
    assert chat.usage.calls == 1  # only the usable reply counts as an answer

    _Server.replies = [""]
    config = _config(tmp_path, server)
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    visa = Visa(config, Roles.from_config(config), tmp_path / "cache")
    with pytest.raises(VlretError, match="descriptions: 1 of 1 units failed .*empty text"):
        visa.descriptions([image])
    assert len(visa.stores["descriptions"]) == 0  # nothing stored: the next run asks again
    _Server.replies = ["A grey square."]
    again = Visa(config, Roles.from_config(config), tmp_path / "cache")
    assert again.descriptions([image]) == {image: "A grey square."}


def test_a_reply_that_echoes_the_instructions_is_a_recorded_fallback():
    echo = (
        'Answer with a numbered list under the header "questions:". '
        "Example 1. tennis sweater 2. red and white sweater 3. grey sofa"
    )
    parsed = parse_questions(echo, "a red circle", 3)
    assert parsed.status == "fallback" and parsed.key_phrases == "a red circle" and parsed.raw == echo
    example = "questions: 1. What colours is the sweater? 2. Where is the sweater hanging? 3. What colour is the sofa?"
    assert parse_questions(example, "a cat", 3).status == "fallback"  # the prompt's own example, repeated
    fragments = "questions: 1. red? 2. Where? 3. " + "why " * 45 + "?"
    assert parse_questions(fragments, "q", 3).status == "fallback"  # too short, too short, too long
    # the instructions echoed first, then a real answer: the real one (after the last marker) is read
    real = echo + " key phrases: 1. red circle questions: 1. What colour is the circle? 2. Is it large?"
    parsed = parse_questions(real, "a red circle", 3)
    assert parsed.status == "partial" and parsed.questions[:2] == [
        "What colour is the circle?",
        "Is it large?",
    ]
    assert parsed.key_phrases == "1. red circle"


def test_the_cache_key_follows_the_served_model_and_the_revision(server):
    def key(**kwargs):
        return OpenAIChat("m", base_url=server, max_retries=0, **kwargs).id

    unreported = key()
    assert unreported == f"openai:m@{server}"  # a server without /models: the name is all there is
    _Server.models = {"data": [{"id": "m", "created": 1, "owned_by": "me", "meta": {"size": 100}}]}
    first = key()
    _Server.models["data"][0]["created"] = 2  # a time of the request, not of the model
    assert key() == first != unreported
    _Server.models["data"][0]["meta"]["size"] = 101  # another model file under the same name
    assert key() != first
    assert key(revision="template-2") != key()  # a label the user sets where the server tells nothing


def test_an_unreachable_server_fails_on_the_key_too():
    chat = OpenAIChat("m", base_url="http://127.0.0.1:9/v1", max_retries=0, timeout=2.0)
    with pytest.raises(BackendError, match="models: gave up after 1 attempts"):
        _ = chat.id


def _counting_server(models: dict | None = None, status: int = 200):
    """A server that answers every chat with its own name, and counts the chats it got."""

    class Counted(QuietHandler):
        chats = 0

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            Counted.chats += 1
            if status != 200:
                self.send_json(status, {"error": "busy"})
                return
            name = f"server {self.server.server_address[1]}"
            self.send_json(200, {"choices": [{"message": {"content": name}}]})

        def do_GET(self):  # noqa: N802
            self.send_json(200, models or {"data": [{"id": "m", "root": "/models/m"}]})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Counted)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, Counted, f"http://127.0.0.1:{httpd.server_address[1]}/v1"


def test_several_servers_share_the_requests_and_a_failing_one_is_passed_over(tmp_path):
    servers = [_counting_server(), _counting_server()]
    try:
        urls = [url for _, _, url in servers]
        chat = OpenAIChat("m", base_url=urls, max_retries=1, backoff=0.01)
        for _ in range(10):  # one after another: ties taken in turn
            chat.chat("describe")
        assert [handler.chats for _, handler, _ in servers] == [5, 5]
        # the cache identity names the pool and the model, not the addresses: a third server keeps it
        third = _counting_server()
        assert chat.id == OpenAIChat("m", base_url=[*urls, third[2]]).id
        assert "127.0.0.1" not in chat.id and chat.id.startswith("openai:m@pool")
        third[0].shutdown()
        # a config names them as a list, validated
        config = _config(tmp_path, urls)
        assert build_describer(config).chat_model.base_urls == urls
        with pytest.raises(VlretError, match="base_url"):
            _config(tmp_path, [urls[0], "ftp://x"])
    finally:
        for httpd, _, _ in servers:
            httpd.shutdown()
    busy = _counting_server(status=503)
    good = _counting_server()
    try:
        chat = OpenAIChat("m", base_url=[busy[2], good[2]], max_retries=1, backoff=0.01)
        replies = {chat.chat("describe") for _ in range(4)}
        assert replies == {f"server {good[0].server_address[1]}"}  # every request answered by the good one
        assert busy[1].chats <= 4 and good[1].chats == 4
    finally:
        busy[0].shutdown()
        good[0].shutdown()


def test_servers_that_describe_different_models_are_refused():
    first = _counting_server({"data": [{"id": "m", "root": "/models/a"}]})
    second = _counting_server({"data": [{"id": "m", "root": "/models/b"}]})
    try:
        chat = OpenAIChat("m", base_url=[first[2], second[2]], max_retries=0)
        with pytest.raises(BackendError, match="describe different models"):
            chat.id  # noqa: B018
    finally:
        first[0].shutdown()
        second[0].shutdown()


@pytest.mark.parametrize("status, calls", [(400, 1), (404, 1), (429, 3), (503, 3)])
def test_a_refused_request_is_not_retried_and_a_busy_server_is_asked_max_retries_more_times(status, calls):
    """Counted on the server: a 4xx other than 408/409/429 is answered at once (the same request cannot
    succeed later); a busy or failing server is asked 1 + max_retries times in all, then the call fails."""
    httpd, handler, url = _counting_server(status=status)
    try:
        with pytest.raises(
            BackendError, match=f"HTTP {status}" if calls == 1 else "gave up after 3 attempts"
        ):
            OpenAIChat("m", base_url=url, max_retries=2, backoff=0.001).chat("describe")
        assert handler.chats == calls
    finally:
        httpd.shutdown()


@pytest.mark.parametrize("max_tokens, cap", [(10, 4096), (512, 512 * 16)])
def test_a_reply_longer_than_max_tokens_allows_is_cut_and_counted(server, max_tokens, cap):
    """A server that ignores max_tokens (10 MB replies filled 170 MB of cache): a reply is kept to
    max_tokens x 16 characters, at least 4,096, and the cut is counted in the usage."""
    chat = OpenAIChat("m", server, max_retries=0)
    _Server.replies = ["x" * cap]  # exactly the cap: kept whole
    assert chat.chat("hello", max_tokens=max_tokens) == "x" * cap
    assert "truncated_replies" not in chat.usage.as_dict()
    _Server.replies = ["y" * (cap + 1)]
    assert chat.chat("hello", max_tokens=max_tokens) == "y" * cap
    assert chat.usage.as_dict()["truncated_replies"] == 1
    chat.close()
