"""``vlret bench``: rows and their order, the budget's arithmetic, the Pareto front, aggregation over seeds,
and a whole (tiny) suite from the CLI: every row, consistent first stages, resumed without rerunning."""

from __future__ import annotations

import json
import math

import pytest

from vlret.cli import main
from vlret.suite.budget import EVAL_RESERVE, Probe, plan_training, share_budget
from vlret.suite.page import pareto_front, pareto_points, points_table, smoke_reasons
from vlret.suite.rows import (
    FAMILIES,
    RVLR_STAGE1,
    RVLR_STAGE2,
    EnsembleRow,
    ItmRow,
    TrainRow,
    VisaRow,
    run_order,
    synthetic_rows,
    with_rerankers,
)
from vlret.suite.summary import markdown_table, mean_std


def test_picked_families_bring_their_rerankers_and_what_they_need():
    rows = with_rerankers(synthetic_rows(), {"sgraf", "visa"})
    names = [r.name for r in rows]
    assert names == [
        "SGR",
        "SGR + VISA",
        "SAF",
        "SAF + VISA",
        "SGRAF (SGR + SAF)",
        "SGRAF (SGR + SAF) + VISA",
    ]
    assert isinstance(rows[4], EnsembleRow) and rows[4].members == ("SGR", "SAF")
    assert all(isinstance(r, VisaRow) for r in rows[1::2])

    # ITM borrows RVLR stage 2's head: both RVLR stages come along, without re-ranking rows of their own
    rows = with_rerankers(synthetic_rows(), {"cosine", "itm"})
    names = [r.name for r in rows]
    assert RVLR_STAGE1 in names and RVLR_STAGE2 in names
    itm = [r for r in rows if isinstance(r, ItmRow)]
    assert [r.first for r in itm] == ["cosine · tiny CNN", "cosine · pretrained towers (composed)"]
    assert all(r.head_from == RVLR_STAGE2 for r in itm)
    order = [r.name for r in run_order(rows)]
    for row in itm:  # an ITM row runs after the head it borrows, and after its first stage
        assert order.index(row.name) > order.index(RVLR_STAGE2) > order.index(RVLR_STAGE1)
        assert order.index(row.name) > order.index(row.first)


def test_every_trained_row_is_a_built_in_recipe():
    from vlret.train import load_recipe
    from vlret.train.recipe import builtin_recipe

    for row in synthetic_rows():
        if isinstance(row, TrainRow):
            # a row that starts from another's checkpoint gets its folder from the suite: stand in a name
            start = ["model.name=tiny-cnn"] if row.init_from else []
            load_recipe(builtin_recipe(row.recipe), [*start, *row.overrides])  # overrides name real keys


def test_budget_gives_whole_epochs_then_part_of_one():
    probe = Probe(seconds_per_step=0.5, validation_seconds=2.0, steps_per_epoch=10, recipe_epochs=6)
    # one epoch: 10 steps x 0.5 s + 2 s of validation = 7 s
    assert plan_training(probe, 30.0)["epochs"] == 4  # floor(30 / 7)
    assert plan_training(probe, 30.0)["overrides"] == ["train.epochs=4"]
    assert plan_training(probe, 100.0)["epochs"] == 6  # never more than the recipe's own
    partial = plan_training(probe, 5.0)  # less than an epoch: (5 - 2) / 0.5 = 6 steps
    assert (partial["epochs"], partial["max_steps"]) == (1, 6)
    assert plan_training(probe, 0.0)["max_steps"] == 1  # at least one step

    shares = share_budget(100.0, 15.0, {"a": probe, "b": probe}, cells_per_row=2)
    expected = (100.0 * (1 - EVAL_RESERVE) - 15.0) / 4  # 17.5 s for each of 2 rows x 2 seeds
    assert shares["a"]["share_seconds"] == pytest.approx(expected)
    assert shares["a"]["epochs"] == 2  # floor(17.5 / 7)


def test_the_bench_page_says_when_a_run_is_a_smoke_run_and_numbers_every_point():
    def entry(name, r1, seconds, training=None):
        costs = {"eval_seconds": {"mean": seconds, "std": None}, "queries": {"mean": 10.0, "std": None}}
        return {
            "row": name,
            "metrics": {"t2i_r1": {"mean": r1, "std": None}},
            "costs": costs,
            "training": training,
        }

    full = {"settings": {"suite": "synthetic", "steps": None, "images": None}, "rows": [entry("a", 0.2, 1.0)]}
    assert smoke_reasons(full) == []
    cut = {
        "settings": {"suite": "synthetic", "steps": None, "images": 999, "budget_minutes": 1.0},
        "rows": [entry("a", 0.2, 1.0, {"epochs": 1, "max_steps": 7}), entry("b", 0.1, 1.0, {"epochs": 3})],
    }
    assert smoke_reasons(cut) == [
        "the budget (1.0 min) left 1 row(s) less than one epoch: a",
        "--images 999: the calibrated benchmark has 5,000 images",
    ]
    points = pareto_points([entry("a", 0.2, 1.0), entry("b", 0.1, 2.0), entry("c", 0.5, 4.0)])
    assert [(p["n"], p["row"], p["front"]) for p in points] == [
        (1, "a", True),
        (2, "b", False),
        (3, "c", True),
    ]
    assert [round(p["cost"], 3) for p in points] == [0.1, 0.2, 0.4]  # eval seconds / queries
    table = points_table(points)
    assert table.count("<tr><td>") == 3 and "<td>2</td><td>b</td><td>200</td><td>10.0</td><td></td>" in table


def test_pareto_front_keeps_what_nothing_cheaper_beats():
    points = [(1.0, 10.0), (2.0, 5.0), (3.0, 20.0), (0.5, 8.0), (3.0, 20.0), (4.0, 19.0)]
    assert pareto_front(points) == [3, 0, 2]


def test_mean_and_sample_std_over_seeds_in_the_table():
    mean, std = mean_std([0.2, 0.4])
    assert mean == pytest.approx(0.3) and std == pytest.approx(math.sqrt(0.02))
    assert mean_std([0.5]) == (0.5, None)
    summary = {
        "rows": [
            {
                "row": "m",
                "combination": True,
                "metrics": {"t2i_r1": {"mean": 0.3, "std": math.sqrt(0.02)}},
                "costs": {"parameters": {"mean": 1_280_000, "std": None}, "train_seconds": None},
            }
        ]
    }
    line = markdown_table(summary).splitlines()[2]
    assert line.startswith("| m * | 30.0 ± 14.1 | – |")
    assert "1.28 M" in line


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    args = ["bench", "--images", "120", "--steps", "1", "--data-dir", str(root / "data"), "--quiet"]
    assert main([*args, "--out", str(root / "out")]) == 0
    return root, args


def _records(out):
    return {
        p.parent.parent.name: json.loads(p.read_text()) for p in (out / "cells").glob("*/seed-0/cell.json")
    }


def test_the_whole_suite_runs_and_its_rows_agree(tiny_suite):
    root, _ = tiny_suite
    out = root / "out"
    summary = json.loads((out / "summary.json").read_text())
    names = [e["row"] for e in summary["rows"]]
    assert summary["settings"]["families"] == list(FAMILIES)  # the default: every family, recorded
    assert names == [r.name for r in with_rerankers(synthetic_rows(), set(FAMILIES))]
    # 14 image first stages (2 cosine, 5 VSL, SGR, SAF, SGRAF, AVSE, 3 RVLR), each with VISA and all but
    # the 3 RVLR rows with ITM; 2 video first stages with VISA; the prompts' backbone and 3 prompt rows
    assert len(names) == 14 + 14 + 11 + 2 + 2 + 1 + 3
    page = (out / "index.html").read_text()
    assert all(
        f"id='{i}'" in page
        for i in (
            "results-retrieval",
            "results-video",
            "results-prompts",
            "pareto",
            "pareto-points",
            "settings",
        )
    )
    assert "<strong>A smoke run:</strong>" in page
    assert "--steps 1: every training cell stopped after 1 steps" in page and "--images 120" in page
    table = (out / "table.md").read_text()
    assert table.count("\n| ") == len(names) + 3  # every row, and each of the 3 tables' header line

    records = _records(out)
    by_row = {r["row"]: r for r in records.values()}
    for record in by_row.values():
        if record.get("training"):
            assert record["training"]["steps"] == 1  # --steps 1
        if "first_stage" in record:  # a re-ranker starts from exactly its first stage's ranking
            if by_row[record["first_stage"]]["family"] == "rvlr":
                continue  # VISA's top 20 of an ITM model are all head-scored: its ranking with k_test 20
            first = by_row[record["first_stage"]]["metrics"]
            for key, value in record["first_stage_metrics"].items():
                assert value == pytest.approx(first[key]), (record["row"], key)
    for name in ("CoOp", "CoOp + TextRefiner", "zero-shot (a photo of a <class>.)"):
        m = by_row[name]["metrics"]
        assert m["hm"] == pytest.approx(2 * m["base_acc"] * m["new_acc"] / (m["base_acc"] + m["new_acc"]))
    assert by_row["zero-shot (a photo of a <class>.)"]["costs"]["parameters"] == 0
    assert 0 < by_row["CoOp"]["costs"]["parameters"] < by_row["CoOp + TextRefiner"]["costs"]["parameters"]
    video_visa = by_row["video · temporal transformer + VISA"]
    assert video_visa["costs"]["model_calls"] > 0
    visa = by_row["SGRAF (SGR + SAF) + VISA"]
    assert visa["costs"]["model_calls"] > 0 and set(visa["metrics"]) == {"t2i_r1", "t2i_r5", "t2i_r10"}
    ensemble = by_row["SGRAF (SGR + SAF)"]["costs"]
    assert (
        ensemble["parameters"] == by_row["SGR"]["costs"]["parameters"] + by_row["SAF"]["costs"]["parameters"]
    )


def test_a_second_run_reads_every_cell_and_a_lost_cell_alone_runs_again(tiny_suite):
    root, args = tiny_suite
    out = root / "out"
    cells = sorted((out / "cells").glob("*/seed-0/cell.json"))
    stamps = {p: p.stat().st_mtime_ns for p in cells}
    lost = out / "cells" / "sgr" / "seed-0" / "cell.json"
    lost.unlink()  # as if the suite had been killed while this cell ran
    assert main([*args, "--out", str(out)]) == 0
    assert lost.is_file()
    changed = [p for p in cells if p.stat().st_mtime_ns != stamps[p]]
    assert changed == [lost]


def test_other_settings_in_the_same_folder_are_refused(tiny_suite, capsys):
    root, args = tiny_suite
    assert main([*args, "--out", str(root / "out"), "--seeds", "0", "1"]) == 2
    assert "seeds: [0] before, [0, 1] now" in capsys.readouterr().err


def test_a_budget_plans_epochs_from_probes_and_cells_follow_it(tmp_path):
    data = tmp_path / "data"
    args = ["bench", "--images", "120", "--budget-minutes", "1", "--methods", "cosine", "--quiet"]
    assert main([*args, "--data-dir", str(data), "--out", str(tmp_path / "out")]) == 0
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["settings"]["budget_minutes"] == 1
    for name, entry in plan["rows"].items():
        probe = entry["probe"]
        # 96 training images x 5 captions = 480 pairs: 3 full batches of 128
        assert probe["seconds_per_step"] > 0 and probe["steps_per_epoch"] == 480 // 128
        record = _records(tmp_path / "out")
        cell = next(r for r in record.values() if r["row"] == name)
        steps = entry["max_steps"] or entry["epochs"] * probe["steps_per_epoch"]
        assert cell["training"]["steps"] == steps
        assert cell["training"]["budget"] == entry["overrides"]


def test_bad_settings_are_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", "--steps", "1", "--budget-minutes", "5", "--out", str(out)]) == 2
    assert "give --budget-minutes or --steps, not both" in capsys.readouterr().err
    assert main(["bench", "--seeds", "1", "1", "--out", str(out)]) == 2
    assert "seeds must be distinct" in capsys.readouterr().err
    assert main(["bench", "--suite", "coco", "--out", str(out)]) == 2
    assert "expected 'synthetic' or a dataset file or folder" in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_in_use_by_another_run_is_refused_before_anything_is_read(tmp_path, capsys):
    from vlret.locks import claimed

    out = tmp_path / "out"
    with claimed(out, "vlret bench (a test)"):
        assert main(["bench", "--images", "120", "--steps", "1", "--out", str(out), "--quiet"]) == 2
    assert f"{out} is in use by vlret bench (a test)" in capsys.readouterr().err
    assert not (tmp_path / "data").exists() and not out.exists()  # nothing read, nothing left behind


@pytest.mark.parametrize(
    "assignment, reason",
    [
        ("train.seed=7", "--seeds gives each cell its seed"),
        ("output_dir=/tmp/x", "each cell trains in its own folder"),
        ("train.max_steps=3", "--steps / --budget-minutes plan train.max_steps"),
    ],
)
def test_a_set_of_what_the_suite_varies_is_refused(assignment, reason, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", "--steps", "1", "--set", assignment, "--out", str(out), "--quiet"]) == 2
    assert reason in capsys.readouterr().err and not out.exists()


def test_set_values_are_checked_before_the_data_is_prepared(tmp_path, capsys):
    data = tmp_path / "data"
    args = ["bench", "--images", "120", "--steps", "1", "--methods", "cosine", "--data-dir", str(data)]
    assert main([*args, "--set", "optim.lr=.nan", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "the edited recipe" in err and "optim.lr: expected a finite number >= 0, got nan" in err
    assert not data.exists()


def test_changed_data_at_the_same_path_is_refused(tiny_suite, capsys):
    root, args = tiny_suite
    dataset = next((root / "data").glob("synth_120/dataset.json"))
    original = dataset.read_text()
    records = json.loads(original)
    records["images"][-1]["sentences"][0]["raw"] = "a caption that was edited"
    try:
        dataset.write_text(json.dumps(records))
        assert main([*args, "--out", str(root / "out")]) == 2
        assert "holds a suite run on other data" in capsys.readouterr().err
    finally:
        dataset.write_text(original)
    assert main([*args, "--out", str(root / "out")]) == 0  # the same data again: every cell is read back
