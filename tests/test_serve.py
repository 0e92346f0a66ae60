"""The HTTP service: search by text and image, thumbnails, health, OpenAPI, limits, VISA toggle, load."""

import io
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from vlret.data import load_dataset
from vlret.index import build_index
from vlret.models import create_model
from vlret.serve import create_app


@pytest.fixture(scope="module")
def index(synth_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    captions = [c.text for c in load_dataset(synth_data).captions]
    create_model("tiny-cnn", captions=captions, seed=0).save(root / "model")
    return build_index(
        str(root / "model"), root / "idx", images=synth_data.parent / "images" / "test", progress=False
    )


@pytest.fixture(scope="module")
def client(index, tmp_path_factory):
    visa_yaml = tmp_path_factory.mktemp("visa") / "visa.yaml"
    visa_yaml.write_text("k: 4\n")
    return TestClient(create_app(index, visa_config=visa_yaml, max_upload_bytes=50_000, max_k=5))


def _png(size=(32, 32), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_health_and_openapi(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["items"] == 6 and health["visa"] is True
    schema = client.get("/openapi.json").json()
    assert {"/api/search", "/api/search/image", "/thumbnail/{item}", "/health"} <= set(schema["paths"])


def test_text_search_matches_the_python_searcher(client, index):
    from vlret.index import Searcher

    body = client.get("/api/search", params={"q": "a red circle", "k": 3}).json()
    expected = Searcher(index).text_to_image("a red circle", 3)
    assert [r["path"] for r in body["results"]] == [h.path for h in expected]
    assert [r["rank"] for r in body["results"]] == [1, 2, 3]
    thumb = client.get(body["results"][0]["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumb.content)).size == (128, 128)


def test_visa_toggle_reranks_the_top_k(client):
    plain = client.get("/api/search", params={"q": "a red circle", "k": 4}).json()
    visa = client.get("/api/search", params={"q": "a red circle", "k": 4, "visa": "true"}).json()
    assert visa["visa"] is True
    assert sorted(r["path"] for r in visa["results"]) == sorted(r["path"] for r in plain["results"])
    assert all("text_score" in r for r in visa["results"])


def test_image_upload(client):
    response = client.post(
        "/api/search/image", params={"k": 2}, files={"file": ("q.png", _png(), "image/png")}
    )
    assert response.status_code == 200 and len(response.json()["results"]) == 2


@pytest.mark.parametrize(
    "request_args, status, reason",
    [
        (("get", "/api/search", {"params": {"q": "x", "k": 6}}), 422, "less than or equal to 5"),
        (("get", "/api/search", {"params": {"q": "   "}}), 422, "blank"),
        (("get", "/api/search", {}), 422, "Field required"),
        (("get", "/thumbnail/99", {}), 404, "no item 99"),
        (("get", "/thumbnail/-1", {}), 404, "no item -1"),
        (("get", "/thumbnail/..%2F..%2Fetc%2Fpasswd", {}), 404, "Not Found"),
        (("get", "/thumbnail/passwd", {}), 422, "integer"),
        (("get", "/thumbnail/0", {"params": {"size": 9999}}), 422, "size must be one of"),
        (
            ("post", "/api/search/image", {"files": {"file": ("x.txt", b"hello", "text/plain")}}),
            415,
            "not a readable image in an accepted format",
        ),
        (
            ("post", "/api/search/image", {"files": {"file": ("x.png", b"not a png", "image/png")}}),
            415,
            "not a readable image in an accepted format",
        ),
        (
            (
                "post",
                "/api/search/image",
                {"files": {"file": ("x.png", _png((400, 400)) + b"\0" * 60_000, "image/png")}},
            ),
            413,
            "larger than",
        ),
    ],
)
def test_bad_requests_get_4xx_with_a_reason(client, request_args, status, reason):
    method, url, kwargs = request_args
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status
    assert reason in response.text
    assert "object at 0x" not in response.text and "Traceback" not in response.text


def test_keeps_serving_under_concurrent_load(client):
    def one(n):
        return client.get("/api/search", params={"q": f"a red circle {n % 3}", "k": 3}).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(one, range(64)))
    assert codes == [200] * 64
    assert client.get("/health").status_code == 200


def test_page_is_served(client):
    page = client.get("/")
    assert page.status_code == 200 and '<input id="query"' in page.text


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` pixels but carries almost no data (the shape of a bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_decompression_bombs_are_refused_before_decoding(client, monkeypatch):
    from PIL import ImageFile

    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self)
    )
    response = client.post(
        "/api/search/image", files={"file": ("bomb.png", _png_header_only(20000, 20000), "image/png")}
    )
    assert response.status_code == 413 and "the limit of 50000000" in response.text
    response = client.post(
        "/api/search/image", files={"file": ("bomb.png", _png_header_only(13000, 13000), "image/png")}
    )
    assert response.status_code == 413
    assert "13000 x 13000 = 169000000 pixels; the limit is 50000000" in response.text
    assert decoded == []  # refused from the header: nothing was decoded


def test_a_narrow_strip_is_refused_before_any_resize(client, monkeypatch):
    """200,000 x 1 pixels is 0.2 MP, within every size cap; resized to the model's short side it would
    take gigabytes. Refused from its header with a reason, and the server keeps serving."""
    resized = []
    real_resize = Image.Image.resize
    monkeypatch.setattr(
        Image.Image, "resize", lambda self, *a, **k: resized.append(self.size) or real_resize(self, *a, **k)
    )
    for size in ((200_000, 1), (1, 200_000), (51 * 20, 20)):
        files = {"file": ("strip.png", _png_header_only(*size), "image/png")}
        response = client.post("/api/search/image", files=files)
        assert response.status_code == 400 and "more elongated than 50:1" in response.text, size
    assert resized == []
    files = {"file": ("wide.png", _png((50 * 20, 20)), "image/png")}  # 50:1 exactly is accepted
    assert client.post("/api/search/image", files=files).status_code == 200
    assert client.get("/health").json()["status"] == "ok"


def test_a_failing_request_does_not_fail_the_others_of_its_micro_batch():
    from concurrent.futures import Future

    from vlret.serve.batching import MicroBatcher

    def encode(items):
        if "bad" in items:
            raise ValueError("cannot encode 'bad'")
        return [item.upper() for item in items]

    batcher = MicroBatcher(encode)
    group = [(item, Future()) for item in ("a", "bad", "c")]
    for _, future in group:
        future.set_running_or_notify_cancel()
    batcher._run(group)  # one group, as the worker would run it
    assert [group[0][1].result(), group[2][1].result()] == ["A", "C"]
    with pytest.raises(ValueError, match="cannot encode 'bad'"):
        group[1][1].result()
    assert batcher.calls == 4  # the group once, then each request alone
    batcher.close()


def test_pixel_limit_is_configurable(index):
    small = TestClient(create_app(index, max_upload_pixels=1000))
    response = small.post("/api/search/image", files={"file": ("q.png", _png((40, 40)), "image/png")})
    assert response.status_code == 413 and "40 x 40 = 1600 pixels; the limit is 1000" in response.text
    assert (
        small.post("/api/search/image", files={"file": ("q.png", _png((30, 30)), "image/png")}).status_code
        == 200
    )


def test_only_the_accepted_image_formats_are_opened(client, monkeypatch):
    from PIL import EpsImagePlugin

    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(1))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    response = client.post("/api/search/image", files={"file": ("x.eps", eps, "image/x-eps")})
    assert (
        response.status_code == 415 and "accepted format (JPEG, PNG, WEBP, GIF, BMP, TIFF)" in response.text
    )
    assert opened == []


class _Reranker:
    """A VISA reranker that fails, or takes its time."""

    id = "test-reranker"

    def __init__(self, delay=0.0, error=None):
        self.delay, self.error = delay, error

    def score(self, pairs):
        time.sleep(self.delay)
        if self.error:
            raise self.error
        return [1.0] * len(pairs)


@pytest.fixture
def visa_client(index, tmp_path):
    visa_yaml = tmp_path / "visa.yaml"
    visa_yaml.write_text("k: 4\n")
    # a budget no machine's speed reaches: the failure tests must see the failure, not the timeout
    app = create_app(index, visa_config=visa_yaml, visa_cache=tmp_path / "cache", visa_timeout=600.0)
    return TestClient(app), app.state.service


@pytest.mark.parametrize("error", [RuntimeError("socket closed"), ValueError("bad reply")])
def test_a_failing_visa_backend_answers_the_base_ranking_with_a_warning(visa_client, error):
    client, service = visa_client
    service.visa.roles.reranker = _Reranker(error=error)
    plain = client.get("/api/search", params={"q": "a red circle", "k": 3}).json()
    body = client.get("/api/search", params={"q": "a red circle", "k": 3, "visa": "true"})
    assert body.status_code == 200
    body = body.json()
    assert body["visa"] is False and "VISA re-ranking failed" in body["warning"]
    assert "showing the base ranking" in body["warning"] and "object at 0x" not in body["warning"]
    assert [r["path"] for r in body["results"]] == [r["path"] for r in plain["results"]]


class _BlockedReranker:
    """A VISA reranker that does not answer until it is released."""

    id = "test-blocked-reranker"

    def __init__(self):
        self.entered, self.release = threading.Event(), threading.Event()

    def score(self, pairs):
        self.entered.set()
        self.release.wait(120)
        return [1.0] * len(pairs)


def test_a_stuck_visa_backend_runs_out_of_time_and_plain_searches_do_not_wait(index, tmp_path):
    """Ordered by events, not by the clock: the VISA request is answered (base ranking, a warning) while its
    backend is still stuck, and a plain search completes meanwhile."""
    visa_yaml = tmp_path / "visa.yaml"
    visa_yaml.write_text("k: 4\n")
    app = create_app(index, visa_config=visa_yaml, visa_cache=tmp_path / "cache", visa_timeout=0.5)
    client, reranker = TestClient(app), _BlockedReranker()
    app.state.service.visa.roles.reranker = reranker
    outcome = {}

    def visa_request():
        outcome["body"] = client.get(
            "/api/search", params={"q": "a blue square", "k": 3, "visa": "true"}
        ).json()

    thread = threading.Thread(target=visa_request)
    thread.start()
    try:
        while not (reranker.entered.wait(0.05) or not thread.is_alive()):
            pass  # the VISA request is now held by the stuck backend (or already timed out before it)
        assert client.get("/api/search", params={"q": "a red circle", "k": 3}).status_code == 200
        thread.join(120)
        assert not thread.is_alive() and not reranker.release.is_set()  # answered while still stuck
        assert outcome["body"]["visa"] is False and "within 0.5 s" in outcome["body"]["warning"]
    finally:
        reranker.release.set()
        thread.join(120)


def test_concurrent_queries_share_model_calls_and_match_the_searcher(client, index):
    from vlret.index import Searcher

    service = client.app.state.service
    queries = [f"a {c} {s}" for c in ("red", "blue", "green", "yellow") for s in ("circle", "square")]
    before = service.queries.calls
    with ThreadPoolExecutor(max_workers=8) as pool:
        bodies = list(
            pool.map(lambda q: client.get("/api/search", params={"q": q, "k": 3}).json(), queries * 4)
        )
    assert service.queries.calls - before < len(bodies)  # some requests were encoded together
    searcher = Searcher(index)
    for q, body in zip(queries * 4, bodies, strict=True):
        assert [r["path"] for r in body["results"]] == [h.path for h in searcher.text_to_image(q, 3)]


def test_api_docs_work_offline_and_health_shows_no_absolute_paths(client, index):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static-offline-docs/swagger-ui-bundle.js" in docs.text
    asset = client.get("/static-offline-docs/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.content) > 100_000
    assert client.get("/redoc").status_code == 200
    health = client.get("/health").text
    assert str(index.parent) not in health and str(index.resolve().parent) not in health


@pytest.fixture(scope="module")
def captioned(captioned_index):
    """A service over an index that holds captions (the shared ``captioned_index``)."""
    index, model_folder, test = captioned_index
    return TestClient(create_app(index)), model_folder, test


def test_an_image_finds_the_captions_that_describe_it(captioned):
    """Image -> caption: the same top 3 as the plain API's embeddings ranked by hand."""
    import numpy as np

    from vlret.models import load_model

    client, model_folder, test = captioned
    query = test.media_path(test.items[2])
    response = client.post(
        "/api/search/image",
        params={"k": 3, "target": "captions"},
        files={"file": ("q.png", query.read_bytes(), "image/png")},
    )
    body = response.json()
    assert response.status_code == 200 and body["target"] == "captions"
    model = load_model(model_folder)
    texts = [c.text for c in test.captions]
    scores = model.encode_text(texts) @ model.encode_image(query)  # one image: one embedding [D]
    best = np.argsort(-scores, kind="stable")[:3]
    assert [r["text"] for r in body["results"]] == [texts[i] for i in best]
    assert [r["id"] for r in body["results"]] == [test.captions[i].item_id for i in best]
    np.testing.assert_allclose([r["score"] for r in body["results"]], scores[best], atol=1e-5)
    assert all(r["thumbnail"].startswith("/thumbnail/") for r in body["results"])  # the caption's image


def test_searching_captions_of_an_index_without_captions_says_how_to_get_them(client):
    response = client.post(
        "/api/search/image", params={"target": "captions"}, files={"file": ("q.png", _png(), "image/png")}
    )
    assert response.status_code == 400 and "build it from a dataset" in response.json()["detail"]


def test_image_to_caption_search_on_a_transformers_clip_ranks_as_transformers_features_do(
    synth_data, tmp_path
):
    """The real path: an index of the test split built with an architecture-true CLIP stand-in (saved like
    a hub download). The service's captions for an uploaded image are those that transformers' own
    get_image_features / get_text_features rank first by cosine."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer, CLIPModel

    from hf_tiny import make_clip
    from vlret.data.image_files import load_image

    folder = make_clip(tmp_path / "clip")
    test = load_dataset(synth_data).split("test")
    index = build_index(f"hf:{folder}", tmp_path / "idx", dataset=test, progress=False)
    client = TestClient(create_app(index))
    query = test.media_path(test.items[1])
    body = client.post(
        "/api/search/image",
        params={"k": 3, "target": "captions"},
        files={"file": ("q.png", query.read_bytes(), "image/png")},
    ).json()

    reference = CLIPModel.from_pretrained(str(folder)).eval()
    texts = [c.text for c in test.captions]
    batch = AutoTokenizer.from_pretrained(str(folder))(
        texts, padding=True, truncation=True, return_tensors="pt"
    )
    pixels = torch.from_numpy(create_model(f"hf:{folder}").image_transform(load_image(query)))[None]

    def vectors(out):  # transformers 5 answers an output object whose pooler_output is the projection
        return F.normalize(out if torch.is_tensor(out) else out.pooler_output, dim=-1).numpy()

    with torch.no_grad():
        scores = (
            vectors(reference.get_text_features(**batch))
            @ vectors(reference.get_image_features(pixel_values=pixels))[0]
        )
    best = np.argsort(-scores, kind="stable")[:3]
    assert scores.max() - scores.min() > 1e-3  # the captions are told apart: the ranking means something
    assert [r["text"] for r in body["results"]] == [texts[i] for i in best]
    np.testing.assert_allclose([r["score"] for r in body["results"]], scores[best], atol=1e-5)


@pytest.mark.parametrize("kind", ["WEBP", "BMP", "TIFF", "PNG"])
@pytest.mark.parametrize("declared", ["application/octet-stream", "image/png", "text/plain"])
def test_an_uploads_format_is_read_from_its_bytes_not_its_declared_type(client, kind, declared):
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), (30, 160, 40)).save(buffer, kind)
    response = client.post("/api/search/image", files={"file": ("q", buffer.getvalue(), declared)})
    assert response.status_code == 200, response.text


def test_a_refused_query_is_not_echoed_back_whole(client):
    response = client.get("/api/search", params={"q": "x" * 20_000})  # the test client takes up to 64 KB
    assert response.status_code == 422 and "at most 1000 characters" in response.text
    assert len(response.content) < 1000 and "(20000 characters)" in response.text  # not echoed whole


def test_a_visa_failure_tells_the_page_what_failed_not_the_backends_address(visa_client):
    from vlret.errors import ConfigError

    client, service = visa_client
    url = "http://10.1.2.3:8001/v1"
    service.visa.roles.reranker = _Reranker(
        error=ConfigError(f"{url}: the reranker answered 500 (/srv/keys/token)")
    )
    body = client.get("/api/search", params={"q": "a red circle", "k": 3, "visa": "true"}).json()
    warning = body["warning"]
    assert "<address> the reranker answered 500 (<path>); showing the base ranking" in warning
    assert "10.1.2.3" not in warning and "/srv" not in warning


@pytest.mark.parametrize(
    "message, shown",
    [
        ("v-1: /srv/idx/index.versions/v-1/index.json: malformed", "v-1: <path>: malformed"),
        ("https://host:6333/collections/x timed out", "<address> timed out"),
        ("shard 1/2 of n/a done in 0.5 s", "shard 1/2 of n/a done in 0.5 s"),  # no path, nothing hidden
    ],
)
def test_redacted_keeps_the_words_and_hides_addresses_and_paths(message, shown):
    from vlret.serve.app import redacted

    assert redacted(message) == shown
