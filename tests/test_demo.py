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
    visa_line = next(line for line in printed.splitlines() if line.startswith("| tiny-cnn trained + VISA |"))
    assert visa_line.split("|")[6:9] == [" – "] * 3  # no image->text cells: VISA re-ranks text->image
    assert "offline stand-in backends" in printed
    trained = json.loads((out / "result_trained.json").read_text())
    assert trained["protocol"]["split"] == "test" and trained["counts"]["gallery_items"] == 8
    html = (out / "report.html").read_text()
    assert html.count("class='query'") == 8 + 2 * 4  # 8 samples, then 4 queries before and after VISA
    assert len(re.findall(r"<figure", html)) == (8 + 2 * 4) * 5
    assert html.count("class='correct'") <= 8 + 2 * 4  # at most one correct image per query
    assert "alt='training curves' src='data:image/png;base64," in html
    assert "<td>tiny-cnn trained + VISA</td>" in html and "class='caveat'" in html
    assert "VISA changed the first result of" in html and "<span class='label'>(after VISA)</span>" in html
    assert f"<dt>command</dt><dd>vlret demo --out {out} --data-dir {data} --images 80" in html
    assert "<dt>machine</dt>" in html and "<dt>run time</dt>" in html
    # a second run reuses the finished training instead of training again
    assert main([*args, "train.epochs=1", "train.batch_size=16", "schedule.warmup_steps=2"]) == 0
    # another recipe in the same folder is refused, and --overwrite replaces the run (one step, here)
    other = [*args, "train.epochs=1", "train.batch_size=16", "schedule.warmup_steps=2", "train.max_steps=1"]
    capsys.readouterr()
    assert main(other) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*other, "--overwrite"]) == 0
    steps = sorted(p.name for p in (out / "train" / "checkpoints").glob("step-*"))
    assert steps == ["step-0000001"]  # the first run's checkpoints are gone


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
    assert "| temporal transformer + VISA |" in printed
    meanp = json.loads((out / "result_meanP.json").read_text())
    temporal = json.loads((out / "result_temporal.json").read_text())
    assert meanp["data"]["media"] == temporal["data"]["media"] == "video"
    assert (
        meanp["model"]["video"]["pooling"] == "mean"
        and temporal["model"]["video"]["pooling"] == "transformer"
    )
    index = json.loads((out / "index" / "index.json").read_text())
    assert index["items"] == meanp["counts"]["gallery_items"] == 4


def test_report_marks_images_the_caption_fits_and_says_why_a_sample_is_not_a_miss(tmp_path):
    from PIL import Image

    from vlret.report import RetrievedImage, SampleQuery, write_report

    path = tmp_path / "0.png"
    Image.new("RGB", (8, 8)).save(path)
    all_fit = SampleQuery("a red circle", [RetrievedImage(path, 0.9, False, True)] * 5)
    two_fit = SampleQuery(
        "a red circle", [RetrievedImage(path, 0.9, False, True), RetrievedImage(path, 0.8, False, False)] * 2
    )
    found = SampleQuery(
        "a red circle", [RetrievedImage(path, 0.9, False, True), RetrievedImage(path, 0.8, True)]
    )
    first_wrong = SampleQuery(
        "a red circle", [RetrievedImage(path, 0.9, False), RetrievedImage(path, 0.8, False, True)]
    )
    assert "true of all of these 5" in all_fit.explanation()
    assert "true of 2 of these 4" in two_fit.explanation()
    assert found.explanation() is None  # the paired image is shown: nothing to explain
    assert first_wrong.explanation() is None  # the first result is wrong: a miss it is
    html = write_report(tmp_path / "r.html", "t", [], [], [], [all_fit, found]).read_text()
    assert html.count("<figure class='fits'>") == 6 and html.count("<figure class='correct'>") == 1
    assert html.count("class='why'>The paired image is not in the top 5") == 1


def test_visa_samples_count_moves_of_the_paired_image(tmp_path):
    """Three queries over items 0..4, K = 3: query 0's answer moves up (rank 3 -> 1), query 1's moves down
    (1 -> 2), query 2's first result changes but its answer stays outside the top K."""

    import numpy as np

    from vlret.data.records import Caption, Item, RetrievalDataset
    from vlret.demo import visa_samples

    items = [Item(f"{k}.png", f"{k}.png", "test") for k in range(5)]
    captions = [Caption("a", "2.png"), Caption("b", "0.png"), Caption("c", "4.png")]
    test = RetrievalDataset(items, captions, tmp_path, "t", "karpathy")
    np.save(tmp_path / "candidates.npy", np.array([[0, 1, 2], [0, 1, 2], [1, 2, 3]]))
    np.save(tmp_path / "reranked.npy", np.array([[2, 0, 1], [1, 0, 2], [2, 1, 3]]))
    np.save(tmp_path / "fused.npy", np.array([[0.1, 0.2, 0.9], [0.3, 0.8, 0.1], [0.2, 0.7, 0.1]]))
    np.save(tmp_path / "base_topk.npy", np.array([[0.9, 0.8, 0.7]] * 3))
    section = visa_samples(test, tmp_path, k=3)
    samples = section.queries
    assert "first result of 3 of 3 queries" in section.intro and "up for 1 and down for 1" in section.intro
    assert [(s.text, s.label) for s in samples[:2]] == [("a", "base"), ("a", "after VISA")]
    assert [h.score for h in samples[1].results] == [0.9, 0.1, 0.2]  # fused, following the new order
    assert [h.correct for h in samples[1].results] == [True, False, False]


def test_stage_clock_estimates_what_is_left_from_this_machines_pace(monkeypatch):
    """Stages typically 10 s and 30 s; the first took 20 s (twice the typical time), so 60 s are left."""
    import io

    from vlret import demo

    now = iter([0.0, 0.0, 20.0, 20.0, 20.0, 20.0])
    monkeypatch.setattr(demo.time, "perf_counter", lambda: next(now))
    printed = io.StringIO()
    clock = demo.StageClock([("one", 10.0), ("two", 30.0)], stream=printed)
    with clock.stage("one"):
        pass
    assert printed.getvalue().splitlines() == ["[1/2] one ...", "[1/2] one: 20 s; about 1 min 00 s left"]


def test_stage_clock_times_a_stage_by_its_own_measured_pace(monkeypatch):
    """A 100-step stage typically 30 s, then a 10 s stage. Steps 0..10 take 2 s each (a machine three times
    slower than the 1 s/step the typical time says... 20 s for 10 steps): at 10% the clock says 90 steps x
    2 s = 3 min 00 s left in the stage, and the later stage scaled by the same pace (200/30 = 6.7, capped at
    4: 40 s): 3 min 40 s in all. Nothing is said before the warm steps, nor twice for one share."""
    import io

    from vlret import demo

    clock_now = [0.0]
    monkeypatch.setattr(demo.time, "perf_counter", lambda: clock_now[0])
    printed = io.StringIO()
    clock = demo.StageClock([("train", 30.0), ("index", 10.0)], stream=printed)
    with clock.stage("train"):
        for step in range(0, 12):
            clock_now[0] = 2.0 * step
            clock.progress(step, 100)
    lines = printed.getvalue().splitlines()
    assert (
        lines[1] == "    10/100 steps at 2.00 s each: about 3 min 00 s left in this stage, 3 min 40 s in all"
    )
    assert len(lines) == 3  # start, the 10% report, the end (11 steps is still under 25%)
    printed.truncate(0)
    printed.seek(0)
    clock = demo.StageClock([("train", 30.0), ("index", 10.0)], stream=printed)
    with clock.stage("train"):
        clock_now[0] = 0.0
        clock.progress(50, 100)  # a resumed run: its pace is measured from here
        clock_now[0] = 4.0
        clock.progress(52, 100)  # 2 steps: still warming up
        clock_now[0] = 10.0
        clock.progress(55, 100)  # 5 steps in 10 s: 2 s each, 45 steps left
    assert (
        printed.getvalue()
        .splitlines()[1]
        .startswith("    55/100 steps at 2.00 s each: about 1 min 30 s left")
    )
