"""The web page end to end in headless Chromium (Debian's chromium, driven by Playwright)."""

import os
import shutil
import socket
import threading
import time

import pytest
import uvicorn
from PIL import Image

from vlret.data import load_dataset
from vlret.index import build_index
from vlret.models import create_model
from vlret.serve import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError(
            "the browser test needs Debian's chromium: .ci/run installs it (apt-get install chromium)"
        )
    pytest.skip(
        "chromium is not installed here (apt-get install chromium); CI installs it", allow_module_level=True
    )

# Expectations wait for the page however long a loaded machine needs: 30 s is a bound for a broken page,
# not a speed requirement (Playwright's default of 5 s is).
pytest.importorskip("playwright.sync_api").expect.set_options(timeout=30_000)

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(app):
    """Run ``app`` on a free port in a thread; yields its URL until the module's tests are done."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def base_url(synth_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    captions = [c.text for c in load_dataset(synth_data).captions]
    create_model("tiny-cnn", captions=captions, seed=0).save(root / "model")
    index = build_index(
        str(root / "model"), root / "idx", images=synth_data.parent / "images" / "test", progress=False
    )
    (root / "visa.yaml").write_text("k: 4\n")
    yield from _serve(create_app(index, visa_config=root / "visa.yaml"))


@pytest.fixture(scope="module")
def prompts_url(tmp_path_factory):
    from vlret.data.classes import read_split_zhou
    from vlret.data.synth_classes import ClassBenchConfig, write_class_benchmark
    from vlret.train.prompt_trainer import PromptRun, train_prompts

    root = tmp_path_factory.mktemp("browser_prompts")
    split = write_class_benchmark(root, ClassBenchConfig(per_class={"train": 2, "val": 1, "test": 1}))
    data = read_split_zhou(split, root / "images")
    create_model("tiny-vit", captions=[f"a photo of a {n}." for n in data.classnames], seed=0).save(
        root / "m"
    )
    run = PromptRun(model=str(root / "m"), shots=2, epochs=1, batch_size=8, select="last")
    prompts = train_prompts(run, data, root / "run")["prompts"]
    index = build_index(str(root / "m"), root / "idx", images=root / "images" / "test", progress=False)
    yield from _serve(create_app(index, prompts=prompts))


def test_search_upload_and_visa_toggle_in_the_page(base_url, synth_data, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.goto(base_url)
        expect(page.locator("#status")).to_contain_text("6 items indexed")
        expect(page.locator("#visa-label")).to_be_visible()
        expect(page.locator("#target-label")).to_be_hidden()  # no captions indexed: nothing to choose

        page.select_option("#k", "5")
        page.fill("#query", "a red circle")
        page.click("#search")
        expect(page.locator("figure.hit")).to_have_count(5)
        expect(page.locator("figure.hit").first).to_contain_text("#1")
        first_img = page.locator("figure.hit img").first
        expect(first_img).to_have_attribute(
            "src", "/thumbnail/" + first_img.get_attribute("src").rsplit("/", 1)[1]
        )
        # the thumbnail loaded (wait for it: on a busy machine the image can arrive after the hits render)
        page.wait_for_function(
            "() => { const i = document.querySelector('figure.hit img'); return i && i.complete; }"
        )
        assert page.evaluate("document.querySelector('figure.hit img').naturalWidth") == 128

        page.check("#visa")
        page.click("#search")
        expect(page.locator("#status")).to_contain_text("VISA re-ranked")

        query_image = tmp_path / "q.png"
        Image.open(next((synth_data.parent / "images" / "test").iterdir())).save(query_image)
        expect(page.locator("#query-image")).to_be_hidden()
        page.set_input_files("#upload", str(query_image))
        expect(page.locator("#status")).not_to_contain_text("VISA")
        expect(page.locator("figure.hit")).to_have_count(5)
        expect(page.locator("#query-image")).to_be_visible()  # the query image stays in view
        page.wait_for_function(  # the preview decoded (no clock: it waits for the image, however slow)
            "() => { const i = document.querySelector('#query-image'); return i.complete && i.naturalWidth > 0; }"
        )
        assert page.locator("link[rel=icon]").count() == 1

        page.fill("#query", "a red circle")
        page.click("#search")
        expect(page.locator("#query-image")).to_be_hidden()  # a text query replaces it

        page.fill("#query", "   ")
        page.click("#search")
        expect(page.locator("#status")).to_have_class("error")
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()


@pytest.fixture(scope="module")
def captions_url(captioned_index):
    """A service over an index that holds captions (the shared ``captioned_index``)."""
    yield from _serve(create_app(captioned_index[0]))


def test_a_query_in_the_address_runs_and_the_address_follows_the_search(base_url):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.goto(base_url + "/?q=a%20blue%20square")
        expect(page.locator("#query")).to_have_value("a blue square")
        expect(page.locator("figure.hit").first).to_be_visible()
        expect(page.locator("#collection")).to_contain_text("6 items, last changed")
        page.fill("#query", "a red circle")
        page.click("#search")
        page.wait_for_function("() => new URLSearchParams(location.search).get('q') === 'a red circle'")
        browser.close()


def test_an_uploaded_image_finds_captions_in_the_page(captions_url, synth_data, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    query_image = tmp_path / "q.png"
    Image.open(next((synth_data.parent / "images" / "test").iterdir())).save(query_image)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.goto(captions_url)
        expect(page.locator("#target-label")).to_be_visible()  # the index holds captions
        page.select_option("#k", "5")
        page.set_input_files("#upload", str(query_image))
        expect(page.locator("figure.hit")).to_have_count(5)
        expect(page.locator("figure.caption-hit")).to_have_count(0)  # images first, by default
        page.select_option("#target", "captions")  # the same upload, searched again for captions
        expect(page.locator("figure.caption-hit")).to_have_count(5)
        expect(page.locator("figure.caption-hit q").first).not_to_be_empty()
        expect(page.locator("#query-image")).to_be_visible()
        browser.close()


def test_class_menu_and_the_classes_of_an_upload_in_the_page(prompts_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.goto(prompts_url)
        expect(page.locator("#status")).to_contain_text("24 items indexed")
        expect(page.locator("#class-label")).to_be_visible()
        expect(page.locator("#class option")).to_have_count(13)  # "choose…" + the 12 base classes
        page.select_option("#k", "5")
        page.select_option("#class", "red circle")
        expect(page.locator("figure.hit")).to_have_count(5)
        query_image = tmp_path / "q.png"
        Image.new("RGB", (64, 64), (220, 30, 30)).save(query_image)
        page.set_input_files("#upload", str(query_image))
        expect(page.locator("#classes li.class")).to_have_count(3)
        expect(page.locator("#classes li.class").first).to_contain_text("%")
        browser.close()


@pytest.fixture(scope="module")
def video_url(tmp_path_factory):
    from vlret.data.synth_video import VideoSynthConfig, write_video_benchmark

    root = tmp_path_factory.mktemp("browser_video")
    data = write_video_benchmark(root / "clips", VideoSynthConfig(clips=12))
    captions = [c.text for c in load_dataset(data).captions]
    create_model("tiny-cnn", captions=captions, seed=0).save(root / "model")
    index = build_index(
        str(root / "model"),
        root / "idx",
        videos=root / "clips" / "videos",
        video={"frames": 4},
        progress=False,
    )
    yield from _serve(create_app(index))


def test_a_video_result_shows_its_poster_and_plays_in_the_page(video_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        ranges = []
        page.on("request", lambda r: ranges.append(r.headers.get("range")) if "/media/" in r.url else None)
        page.goto(video_url)
        expect(page.locator("#status")).to_contain_text("12 items indexed")
        page.select_option("#k", "5")
        page.fill("#query", "a red circle moves left")
        page.click("#search")
        expect(page.locator("figure.hit video")).to_have_count(5)
        video = page.locator("figure.hit video").first
        assert video.get_attribute("poster").startswith("/thumbnail/")
        assert video.get_attribute("src").startswith("/media/")
        # the poster (the clip's middle frame) is a real image
        poster = page.evaluate(
            "async () => { const r = await fetch(document.querySelector('figure.hit video').poster);"
            " return [r.status, r.headers.get('content-type')]; }"
        )
        assert poster == [200, "image/png"]
        # play it: the browser fetches the file by range requests and the clock moves
        page.evaluate("document.querySelector('figure.hit video').play()")
        page.wait_for_function(
            "() => { const v = document.querySelector('figure.hit video'); return v.currentTime > 0.2; }",
            timeout=15000,
        )
        assert page.evaluate("document.querySelector('figure.hit video').videoWidth") == 64
        assert any(r and r.startswith("bytes=") for r in ranges)
        page.screenshot(path=str(tmp_path / "video_page.png"))
        browser.close()


def test_bench_page_shows_the_table_the_pareto_plot_and_the_charts(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from vlret.suite.page import write_page
    from vlret.suite.summary import tables

    def row(name, r1, seconds, combination=False):
        metric = {"mean": r1, "std": 0.01}
        costs = {"eval_seconds": {"mean": seconds, "std": None}, "queries": {"mean": 100.0, "std": None}}
        costs["train_seconds"] = {"mean": 60.0, "std": 5.0}
        return {"row": name, "combination": combination, "metrics": {"t2i_r1": metric}, "costs": costs}

    summary = {
        "settings": {"suite": "synthetic", "seeds": [0, 1]},
        "machine": "test machine",
        "rows": [row("a", 0.2, 1.0), row("a + VISA", 0.5, 4.0, True), row("b", 0.1, 2.0)],
    }
    page_file = write_page(summary, tables(summary), tmp_path / "index.html")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.goto(page_file.as_uri())
        rows = page.locator("#results-retrieval tbody tr")
        expect(rows).to_have_count(3)
        expect(rows.nth(1)).to_contain_text("a + VISA *")
        expect(rows.nth(1)).to_contain_text("50.0 ± 1.0")
        for ident in ("pareto", "recall-bars", "train-bars"):
            image = page.locator(f"#{ident}")
            expect(image).to_be_visible()
            assert page.evaluate(f"document.getElementById('{ident}').naturalWidth") > 300
        expect(page.locator("#pareto-points tbody tr")).to_have_count(3)  # the plot's key: every point
        expect(page.locator("#smoke")).to_have_count(0)  # no --steps, no cut budget, the full benchmark
        expect(page.locator("#settings")).to_contain_text("seeds")
        browser.close()
