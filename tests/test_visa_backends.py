"""VISA backends: the pixel scene parser, the rule question generator, the OpenAI-compatible HTTP client
against a local server, and the relevance models."""

import base64
import json
import threading
from http.server import ThreadingHTTPServer

import pytest
from PIL import Image

from json_server import QuietHandler
from vlret.data.synth import Scene, SceneObject, SynthConfig, render
from vlret.rerank.backends.openai_http import BackendError, OpenAIChat
from vlret.rerank.backends.synthetic import RuleQuestionGenerator, ShapeSceneParser, SyntheticVisualQA
from vlret.rerank.visa.prompts import parse_questions


def _scene(*objects):
    import numpy as np

    return render(
        Scene(tuple(SceneObject(*o) for o in objects)),
        np.random.default_rng(0),
        SynthConfig(images=10, difficulty=0.1),
    )


def test_parser_names_what_was_drawn():
    # shape, colour, size, texture, row, col
    drawn = [
        ("circle", "red", "large", "striped", 0, 0),
        ("square", "blue", "small", "plain", 1, 1),
        ("triangle", "yellow", "large", "dotted", 2, 2),
        ("diamond", "green", "large", "plain", 0, 2),
    ]
    found = ShapeSceneParser().parse(_scene(*drawn))
    got = sorted((d.shape, d.colour, d.size, d.texture, d.row, d.col) for d in found)
    assert got == sorted(drawn)


def test_parser_accuracy_on_random_scenes():
    import numpy as np

    from vlret.data.synth import random_scene

    cfg = SynthConfig(images=10, difficulty=0.1)
    correct = total = 0
    for n in range(60):
        rng = np.random.default_rng([9, n])
        scene = random_scene(rng, cfg)
        found = {(d.row, d.col): d for d in ShapeSceneParser().parse(render(scene, rng, cfg))}
        for o in scene.objects:
            d = found.get((o.row, o.col))
            total += 1
            correct += d is not None and (d.shape, d.colour, d.size, d.texture) == (
                o.shape,
                o.colour,
                o.size,
                o.texture,
            )
    assert correct / total >= 0.95


def test_rule_questions_parse_and_vqa_answers(tmp_path):
    path = tmp_path / "s.png"
    _scene(("circle", "red", "large", "plain", 0, 0), ("square", "blue", "small", "plain", 2, 2)).save(path)
    reply = RuleQuestionGenerator().generate("a large red circle above a blue square", 3)
    parsed = parse_questions(reply, "q", 3)
    assert parsed.status == "ok"
    assert parsed.questions == [
        "Is there a large red circle in the image?",
        "Is there a blue square in the image?",
        "Where is the large red circle?",
    ]
    vqa = SyntheticVisualQA()
    assert (
        vqa.answer(path, parsed.questions[0], parsed.key_phrases)
        == "Yes, there is a large red circle in the top left."
    )
    assert (
        vqa.answer(path, "Where is the blue square?", parsed.key_phrases)
        == "The small blue square is in the bottom right."
    )
    assert (
        vqa.answer(path, "Is there a green diamond in the image?", "green diamond") == "Uncertain"
    )  # key-phrase gate


class _Handler(QuietHandler):
    script: list[int] = []
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.seen.append(body)
        status = _Handler.script.pop(0) if _Handler.script else 200
        if status != 200:
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b'{"error": "try later"}')
            return
        reply = {
            "choices": [{"message": {"content": "ok:" + body["model"]}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2},
        }
        self.send_json(200, reply)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    _Handler.script, _Handler.seen = [], []
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_http_client_sends_images_retries_and_counts(server, tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (4, 4), (255, 0, 0)).save(image)
    _Handler.script = [503, 429]  # two transient failures, then success
    chat = OpenAIChat("tiny-vlm", base_url=server, backoff=0.01)
    assert chat.chat("describe", [image], max_tokens=5) == "ok:tiny-vlm"
    assert len(_Handler.seen) == 3
    content = _Handler.seen[-1]["messages"][0]["content"]
    assert content[0]["type"] == "image_url" and content[1] == {"type": "text", "text": "describe"}
    url = content[0]["image_url"]["url"]
    assert (
        url.startswith("data:image/png;base64,")
        and base64.b64decode(url.split(",", 1)[1]) == image.read_bytes()
    )
    assert chat.usage.as_dict() == {"calls": 1, "prompt_tokens": 7, "completion_tokens": 2}


def test_http_client_gives_clear_errors(server):
    _Handler.script = [400]
    with pytest.raises(BackendError, match="HTTP 400"):
        OpenAIChat("m", base_url=server).chat("x")
    _Handler.script = [503, 503, 503]
    with pytest.raises(BackendError, match="gave up after 3 attempts"):
        OpenAIChat("m", base_url=server, max_retries=2, backoff=0.01).chat("x")
    with pytest.raises(BackendError, match="ConnectError"):
        OpenAIChat("m", base_url="http://127.0.0.1:9/v1", max_retries=0).chat("x")


def test_minilm_bi_encoder_ranks_the_relevant_passage_first():
    from vlret.rerank.backends.relevance import BiEncoderReranker

    scores = BiEncoderReranker().score(
        [
            ("a dog running on the beach", "A brown dog runs along the sand by the sea."),
            ("a dog running on the beach", "A bowl of soup on a table."),
        ]
    )
    assert scores[0] > scores[1] + 0.3
