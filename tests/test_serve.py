"""The HTTP service: search by text and image, thumbnails, health, OpenAPI, limits, VISA toggle, load."""

import io
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
            "expected an image",
        ),
        (
            ("post", "/api/search/image", {"files": {"file": ("x.png", b"not a png", "image/png")}}),
            400,
            "not a readable image",
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
