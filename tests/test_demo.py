"""`vlret demo` on a shrunken benchmark: the table, the result files and the HTML report with its pictures."""

import json
import re

from vlret.cli import main


def test_demo_smoke(tmp_path, capsys):
    out, data = tmp_path / "demo", tmp_path / "synth"
    args = ["demo", "--out", str(out), "--data-dir", str(data), "--images", "80", "--quiet"]
    code = main([*args, "train.epochs=1", "train.batch_size=16", "schedule.warmup_steps=2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| tiny-cnn untrained | generic |" in printed and "| tiny-cnn trained | generic |" in printed
    trained = json.loads((out / "result_trained.json").read_text())
    assert trained["protocol"]["split"] == "test" and trained["counts"]["gallery_items"] == 8
    html = (out / "report.html").read_text()
    assert html.count("class='query'") == 8
    assert len(re.findall(r"<figure", html)) == 8 * 5
    assert html.count("class='correct'") <= 8  # at most one correct image per query
    assert "alt='training curves' src='data:image/png;base64," in html
    # a second run reuses the finished training instead of training again
    assert main([*args, "train.epochs=1", "train.batch_size=16", "schedule.warmup_steps=2"]) == 0


def test_report_marks_correct_images(tmp_path):
    from PIL import Image

    from vlret.report import RetrievedImage, SampleQuery, write_report

    paths = []
    for k in range(3):
        paths.append(tmp_path / f"{k}.png")
        Image.new("RGB", (8, 8), (k * 80, 0, 0)).save(paths[-1])
    samples = [
        SampleQuery(
            "a <red> circle", [RetrievedImage(paths[0], 0.9, False), RetrievedImage(paths[1], 0.5, True)]
        ),
        SampleQuery("a square", [RetrievedImage(paths[2], 0.7, False)]),
    ]
    result = {"metrics": {"t2i_r1": 0.25}, "protocol": {"name": "generic"}}
    records = [{"kind": "train", "step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
    html = write_report(tmp_path / "r.html", "t", [result], ["mine"], records, samples).read_text()
    assert html.count("<figure class='correct'>") == 1 and html.count("<figure") == 3
    assert "“a &lt;red&gt; circle”" in html  # query text is escaped
    assert "<td>25.0</td>" in html and "#2 · 0.500" in html


def test_video_demo_smoke(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VLRET_CACHE", str(tmp_path / "cache"))
    out, data = tmp_path / "demo_video", tmp_path / "synth_video"
    args = ["demo", "--video", "--out", str(out), "--data-dir", str(data), "--images", "40", "--quiet"]
    small = ["train.epochs=1", "train.batch_size=8", "model.video.frames=4", "model.options.width=32"]
    assert main([*args, *small]) == 0
    printed = capsys.readouterr().out
    assert "| tiny-cnn frames, meanP | generic |" in printed
    assert "| tiny-cnn frames, temporal transformer | generic |" in printed and "T→V R@1" in printed
    assert "| base + VISA |" in printed
    meanp = json.loads((out / "result_meanP.json").read_text())
    temporal = json.loads((out / "result_temporal.json").read_text())
    assert meanp["data"]["media"] == temporal["data"]["media"] == "video"
    assert (
        meanp["model"]["video"]["pooling"] == "mean"
        and temporal["model"]["video"]["pooling"] == "transformer"
    )
    index = json.loads((out / "index" / "index.json").read_text())
    assert index["items"] == meanp["counts"]["gallery_items"] == 4
