"""The VISA pipeline with offline backends: results, caching, resume after a failure, sharding and merging."""

import json
import threading
import time

import numpy as np
import pytest

from vlret.data import load_dataset
from vlret.errors import VlretError
from vlret.rerank.visa.config import VisaConfig
from vlret.rerank.visa.pipeline import Candidate, Roles, Visa
from vlret.rerank.visa.prompts import PROMPT_VERSION
from vlret.rerank.visa.run import base_from_scores, merge_visa, run_visa


class Counting:
    """Wraps a role: counts calls, and can fail from the n-th call on."""

    def __init__(self, inner, fail_from=None):
        self.inner, self.fail_from, self.calls = inner, fail_from, 0
        self.id = inner.id
        self._lock = threading.Lock()

    def __getattr__(self, name):
        method = getattr(self.inner, name)

        def call(*args, **kwargs):
            with self._lock:
                self.calls += 1
                if self.fail_from is not None and self.calls >= self.fail_from:
                    raise RuntimeError("backend down")
            return method(*args, **kwargs)

        return call


def _candidate_rows(split, cand, top, n):
    """The first ``n`` queries' candidates as the pipeline takes them."""
    return [
        [
            Candidate(split.items[j].id, split.media_path(split.items[j]), float(s))
            for j, s in zip(cand[q], top[q], strict=True)
        ]
        for q in range(n)
    ]


def roles(fail_vqa_from=None):
    base = Roles.from_config(VisaConfig())
    return Roles(
        Counting(base.describer),
        Counting(base.question_generator),
        Counting(base.vqa, fail_vqa_from),
        Counting(base.reranker),
    )


@pytest.fixture(scope="module")
def setup(synth_data):
    split = load_dataset(synth_data).split("test")
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(len(split.captions), len(split.items))).astype(np.float32)
    config = VisaConfig(k=4, concurrency=4)
    return split, scores, config, base_from_scores(scores, split, config.k)


def test_second_run_makes_no_calls_and_same_result(setup, tmp_path):
    split, _, config, (cand, top, ranks) = setup
    first_roles, second_roles = roles(), roles()
    first = run_visa(split, cand, top, ranks, config, tmp_path, roles=first_roles)
    second = run_visa(split, cand, top, ranks, config, tmp_path, roles=second_roles)
    assert first_roles.vqa.calls == first["stages"]["answers"]["computed"] > 0
    assert (
        sum(getattr(second_roles, r).calls for r in ("describer", "question_generator", "vqa", "reranker"))
        == 0
    )
    assert second["stages"]["answers"]["cache_hits"] == second["stages"]["answers"]["units"]
    assert first["metrics"] == second["metrics"]
    # the base metrics equal an independent evaluation of the same matrix (text->image)
    from vlret.evaluate import evaluate_scores

    base = evaluate_scores(setup[1], load_dataset(split.source), direction="t2i")["metrics"]
    assert first["metrics"]["base"]["t2i_r1"] == base["t2i_r1"]


def test_failure_keeps_finished_units_and_resume_completes(setup, tmp_path):
    split, _, config, (cand, top, ranks) = setup
    clean = run_visa(split, cand, top, ranks, config, tmp_path / "clean", roles=roles())
    total = clean["stages"]["answers"]["computed"]
    failing = roles(fail_vqa_from=20)
    with pytest.raises(VlretError, match="answers: .* units failed"):
        run_visa(split, cand, top, ranks, config, tmp_path / "run", roles=failing)
    again = roles()
    resumed = run_visa(split, cand, top, ranks, config, tmp_path / "run", roles=again)
    assert again.vqa.calls == total - 19  # the 19 answers before the failure were kept
    answers = resumed["stages"]["answers"]  # and the resumed run records what it did, not what it reused
    assert (answers["computed"], answers["cache_hits"], answers["units"]) == (total - 19, 19, total)
    assert resumed["metrics"] == clean["metrics"]
    np.testing.assert_array_equal(
        np.load(tmp_path / "run" / "reranked.npy"), np.load(tmp_path / "clean" / "reranked.npy")
    )


def test_shards_merge_to_the_unsharded_result(setup, tmp_path):
    split, _, config, (cand, top, ranks) = setup
    whole = run_visa(split, cand, top, ranks, config, tmp_path / "whole", roles=roles())
    out = tmp_path / "sharded"
    assert run_visa(split, cand, top, ranks, config, out, shard=(0, 2), roles=roles()) is None
    with pytest.raises(VlretError, match="not in"):
        merge_visa(split, config, out, roles=roles())  # shard 1 has not run
    run_visa(split, cand, top, ranks, config, out, shard=(1, 2), roles=roles())
    merged_roles = roles()
    merged = merge_visa(split, config, out, roles=merged_roles)
    assert merged_roles.vqa.calls == 0
    assert merged["metrics"] == whole["metrics"]
    np.testing.assert_array_equal(np.load(out / "reranked.npy"), np.load(tmp_path / "whole" / "reranked.npy"))
    assert not list(out.glob("*.shard-*.jsonl"))


ROLES = ("describer", "question_generator", "vqa", "reranker")


def test_shards_split_by_unit_call_each_model_once_per_unit(setup, tmp_path):
    """Two shards then a merge make, role by role, the calls one process makes: every distinct candidate
    item is described by one shard (by queries, each shard described the items of its own queries, 80
    calls against 40 in the issue's run); the shard that ends last scores the queries the first left."""
    split, _, config, (cand, top, ranks) = setup
    alone = roles()
    whole = run_visa(split, cand, top, ranks, config, tmp_path / "whole", roles=alone)
    out = tmp_path / "sharded"
    shards = [roles(), roles()]
    for i in range(2):
        assert run_visa(split, cand, top, ranks, config, out, shard=(i, 2), roles=shards[i]) is None
    merging = roles()
    merged = merge_visa(split, config, out, roles=merging)
    for role in ROLES:
        assert sum(getattr(r, role).calls for r in shards) == getattr(alone, role).calls > 0, role
        assert getattr(merging, role).calls == 0, role
    distinct = len({int(j) for row in cand for j in row})
    assert alone.describer.calls == distinct
    assert shards[0].describer.calls == (distinct + 1) // 2  # every other distinct item
    assert shards[0].question_generator.calls == (len(cand) + 1) // 2
    assert merged["metrics"] == whole["metrics"]


def test_a_merge_scores_what_no_shard_could(setup, tmp_path):
    """Shards that end before the descriptions of their queries' candidates are in (they ran at once, or
    were stopped after their answers) leave those queries unscored: the merge scores them, calling the
    reranker alone, and the result is the same."""
    split, _, config, (cand, top, ranks) = setup
    whole = run_visa(split, cand, top, ranks, config, tmp_path / "whole", roles=roles())
    out = tmp_path / "sharded"
    for i in range(2):
        run_visa(split, cand, top, ranks, config, out, shard=(i, 2), roles=roles())
    for scores in out.glob("text_scores*.jsonl"):
        scores.unlink()
    merging = roles()
    merged = merge_visa(split, config, out, roles=merging)
    assert merging.reranker.calls == merged["stages"]["text_scores"]["computed"] > 0
    assert merging.describer.calls == merging.vqa.calls == merging.question_generator.calls == 0
    assert merged["metrics"] == whole["metrics"]


def test_rerank_one_query_python_api(setup, tmp_path):
    split = setup[0]
    visa = Visa(VisaConfig(k=3), Roles.from_config(VisaConfig()), tmp_path)
    items = split.items[:3]
    candidates = [
        Candidate(it.id, split.media_path(it), s) for it, s in zip(items, (0.3, 0.2, 0.1), strict=True)
    ]
    caption = next(c.text for c in split.captions if c.item_id == items[2].id)
    out = visa.rerank(caption, candidates)
    assert sorted(out.item_ids) == sorted(it.id for it in items)
    assert out.fused == sorted(out.fused, reverse=True)
    assert len(out.questions.questions) == 3
    zero_text = Visa(VisaConfig(k=3, w_text=0.0), Roles.from_config(VisaConfig()), tmp_path).rerank(
        caption, candidates
    )
    assert zero_text.item_ids == [it.id for it in items]  # base order back


def test_cli_visa_on_scores_then_resumes_from_cache(synth_data, tmp_path, capsys):
    from vlret.cli import main

    split = load_dataset(synth_data).split("test")
    scores = np.random.default_rng(1).normal(size=(len(split.captions), len(split.items))).astype(np.float32)
    np.save(tmp_path / "s.npy", scores)
    config = tmp_path / "visa.yaml"
    config.write_text("k: 4\nquestions: 3\n")
    args = [
        "rerank",
        "visa",
        "--scores",
        str(tmp_path / "s.npy"),
        "--data",
        str(synth_data),
        "--config",
        str(config),
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(args) == 0
    assert "| base + VISA |" in capsys.readouterr().out
    first = json.loads((tmp_path / "run" / "result.json").read_text())
    assert main(args) == 0
    second = json.loads((tmp_path / "run" / "result.json").read_text())
    assert all(s["computed"] == 0 for s in second["stages"].values())
    assert second["metrics"] == first["metrics"]
    config.write_text("k: 4\nquestons: 3\n")
    assert main(args) == 2
    assert "unknown key 'questons'" in capsys.readouterr().err


def test_store_ignores_a_line_cut_off_by_a_kill(tmp_path):
    from vlret.rerank.visa.store import StageStore

    store = StageStore(tmp_path, "answers")
    store.put("a", "first")
    store.put("b", "second")
    with store.path.open("a") as fh:
        fh.write('{"key": "c", "val')  # the process died mid-write
    again = StageStore(tmp_path, "answers")
    assert len(again) == 2 and again.get("b") == "second" and "c" not in again


def test_compat_setting_selects_and_ranks_as_the_official_script(setup, tmp_path):
    """With ``compat: true`` the run's candidates and final ranks are the official step 4's, computed here
    from the run's own text scores with the transcription in test_visa_fusion."""
    from test_visa_fusion import official_step4

    split, scores, _, _ = setup
    config = VisaConfig(k=4, concurrency=4, compat=True)
    run = base_from_scores(scores, split, config.k, compat=True)
    np.testing.assert_array_equal(run[0], np.argsort(-scores.astype(np.float64), axis=1)[:, :4])
    result = run_visa(split, *run, config, tmp_path, roles=roles())
    text = np.load(tmp_path / "text_scores.npy").astype(np.float64)
    sim_text = np.zeros(scores.shape)
    np.put_along_axis(sim_text, run[0], text, axis=1)
    expected = official_step4(scores.astype(np.float64), sim_text, split.caption_to_item, 4)
    for k in (1, 5, 10):
        assert result["metrics"]["visa"][f"t2i_r{k}"] == pytest.approx(np.mean(expected < k))
    assert result["visa"]["compat"] is True


def test_replicas_over_one_cache_see_each_others_units_live(setup, tmp_path):
    """Two service replicas (two Visa objects opened before either computed anything) over one cache
    folder: what one stores, the other reads on its next miss, and computes no unit twice."""
    from vlret.rerank.visa.store import StageStore

    first, second = StageStore(tmp_path, "descriptions"), StageStore(tmp_path, "descriptions")
    first.put("a", {"text": "one"})
    assert "a" in second and second.get("a") == {"text": "one"}
    with (tmp_path / "descriptions.jsonl").open("ab") as fh:
        fh.write(b'{"key": "b", "val')  # another process, mid-write
    assert "b" not in second
    with (tmp_path / "descriptions.jsonl").open("ab") as fh:
        fh.write(b'ue": 2}\n')
    assert "b" in second and second.get("b") == 2

    split, _, config, (cand, top, ranks) = setup
    replicas = [roles(), roles()]
    visas = [Visa(config, r, tmp_path / "cache") for r in replicas]
    rows = _candidate_rows(split, cand, top, 4)
    text = [c.text for c in split.captions]
    for q in range(4):  # the same queries reach replica 0, then replica 1
        visas[0].rerank(text[q], rows[q])
    for q in range(4):
        visas[1].rerank(text[q], rows[q])
    assert replicas[0].describer.calls > 0
    assert (
        sum(getattr(replicas[1], r).calls for r in ("describer", "question_generator", "vqa", "reranker"))
        == 0
    )


class Slow:
    """Wraps a role: every call takes a while, so that concurrent replicas meet on the same units."""

    def __init__(self, inner, seconds=0.05):
        self.inner, self.seconds, self.id = inner, seconds, inner.id

    def __getattr__(self, name):
        method = getattr(self.inner, name)

        def call(*args, **kwargs):
            time.sleep(self.seconds)
            return method(*args, **kwargs)

        return call


def test_replicas_asked_the_same_queries_at_once_compute_each_unit_once(setup, tmp_path):
    """Two replicas (two Visa objects over one cache) re-rank the same queries at the same moment: each
    unit is claimed by one of them and waited for by the other, so every role's calls in total equal the
    distinct units (without claims both would compute most units)."""
    split, _, config, (cand, top, ranks) = setup
    counted = [roles(), roles()]
    replicas = [
        Roles(*(Slow(getattr(r, name)) for name in ("describer", "question_generator", "vqa", "reranker")))
        for r in counted
    ]
    visas = [Visa(config, r, tmp_path / "cache") for r in replicas]
    rows = _candidate_rows(split, cand, top, 4)
    text = [c.text for c in split.captions]
    start = threading.Barrier(2)
    results = [None, None]

    def serve(n):
        start.wait()
        results[n] = [visas[n].rerank(text[q], rows[q]).item_ids for q in range(4)]

    threads = [threading.Thread(target=serve, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == results[1]
    alone = roles()
    single = Visa(config, alone, tmp_path / "alone")
    assert [single.rerank(text[q], rows[q]).item_ids for q in range(4)] == results[0]
    for role in ("describer", "question_generator", "vqa", "reranker"):
        together = sum(getattr(r, role).calls for r in counted)
        assert together == getattr(alone, role).calls > 0, role
    assert not list((tmp_path / "cache" / "claims").iterdir())  # every claim released


def test_a_unit_claimed_by_a_dead_process_is_taken_over(setup, tmp_path):
    import subprocess
    import sys

    from vlret.rerank.visa.store import content_key

    split, _, config, _ = setup
    counted = roles()
    visa = Visa(config, counted, tmp_path / "cache")
    media = split.media_path(split.items[0])
    key = content_key("describe", counted.describer.id, PROMPT_VERSION, visa._media_key(media))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    holder = {"host": visa.claims.host, "pid": int(dead.stdout), "since": 0}
    visa.claims.claim_file(f"descriptions.{key}").write_text(json.dumps(holder))
    assert visa.descriptions([media])[media]  # not waited for forever: the dead holder's claim is taken
    assert counted.describer.calls == 1
