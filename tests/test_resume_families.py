"""A run killed right after a checkpoint and resumed ends bit-identical to an uninterrupted one, for every
family of recipe, with the models' stochastic parts switched on (dropout, random view centres, token drop,
memoised frozen towers, learnt loss parameters, temporal transformers over clips).

The kill happens in-process: ``Trainer._save`` raises once the checkpoint of step ``KILL_AT`` is written, so
nothing after it (no validation, no further step) runs, as with a SIGKILL there. The resumed run is a new
``Trainer`` whose model, memo and generators start from the checkpoint alone.
"""

from __future__ import annotations

import pytest
import torch

from test_precomp import write_precomp
from test_sgraf_cli import SMALL as SGRAF_SMALL
from vlret.train import Trainer, load_recipe
from vlret.train.recipe import resolve_recipe

KILL_AT = 4


@pytest.fixture(autouse=True)
def one_thread():
    """Single-threaded: with 2 threads on a loaded machine, two *uninterrupted* RVLR stage-2 runs already
    differed (57 tensors; 0 with one thread, measured 2026-12-01 beside two busy loops), so a multi-threaded
    comparison would test the machine's load, not what a resume restores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Killed(Exception):
    pass


def _train_killed(recipe_args: list[str], out, monkeypatch) -> None:
    real = Trainer._save

    def save_then_die(self, epoch, is_best=False):
        real(self, epoch, is_best)
        if self.step >= KILL_AT:
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_save", save_then_die)
        with pytest.raises(Killed):
            Trainer(
                load_recipe(*recipe_args[:1], [*recipe_args[1:], f"output_dir={out}"]), progress=False
            ).fit()


def _assert_resume_is_exact(recipe_args: list[str], tmp_path, monkeypatch) -> Trainer:
    whole = Trainer(
        load_recipe(*recipe_args[:1], [*recipe_args[1:], f"output_dir={tmp_path / 'a'}"]), progress=False
    )
    whole.fit()
    _train_killed(recipe_args, tmp_path / "b", monkeypatch)
    recipe = load_recipe(*recipe_args[:1], [*recipe_args[1:], f"output_dir={tmp_path / 'b'}"])
    resumed = Trainer(recipe, resume=True, progress=False)
    assert resumed.step == KILL_AT
    resumed.fit()
    assert resumed.step == whole.step > KILL_AT
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"
    for term, state in whole.loss.state_dict().items():
        for key, value in state.items():
            assert torch.equal(resumed.loss.state_dict()[term][key], value), f"losses.{term}.{key}"
    return whole


def test_avse_views_token_drop_and_the_frozen_text_memo(synth_data, tmp_path, monkeypatch):
    """Two epochs: the frozen MiniLM's memo is full in the uninterrupted run's second epoch and empty in the
    resumed one, which once gave other (float16-rounded) token features from step 7 on."""
    args = [
        resolve_recipe("avse_synth_cpu"),
        f"data.path={synth_data}",
        "model.options.image_options={image_size: 64, patch_size: 16, width: 32, layers: 1, heads: 2}",
        "model.options.embed_dim=32",
        "model.head.chunk_sizes=[16]",
        "train.epochs=2",
        "train.batch_size=32",
        "train.checkpoint_every_steps=2",
        'train.amp="off"',
        "eval.batch_size=64",
    ]
    whole = _assert_resume_is_exact(args, tmp_path, monkeypatch)
    assert whole.steps_per_epoch < whole.step  # the second epoch ran (captions met again)
    assert whole.model.sampler.count == 2 and whole.model.cfg.image_token_drop > 0


def test_sgr_with_dropout_on_precomp_regions(tmp_path, monkeypatch):
    data = tmp_path / "data"
    for split, n, seed in (("train", 24, 0), ("val", 6, 1), ("test", 6, 2)):
        write_precomp(data, split, n, seed=seed)
    args = [
        resolve_recipe("sgraf_synth_cpu"),
        f"data.path={data}",
        *[a for a in SGRAF_SMALL if not a.startswith(("train.max_steps", "train.log_every"))],  # dropout 0.4
        "train.epochs=2",
        "train.checkpoint_every_steps=2",
    ]
    _assert_resume_is_exact(args, tmp_path, monkeypatch)


def test_rvlr_stage2_with_a_learnt_mix_and_temperature(synth_data, tmp_path, monkeypatch):
    from test_rvlr import STAGE1

    args = [
        resolve_recipe("rvlr_stage1_synth_cpu"),
        *[a for a in STAGE1 if not a.startswith("train.max_steps")],
        f"data.path={synth_data}",
        "train.max_steps=6",
        "train.checkpoint_every_steps=2",
        "losses.representation_distill={weight: 1.0}",
        "losses.structure_distill={weight: 1.0, learn_tau2: true}",
        "optim.lr=0.05",
    ]
    whole = _assert_resume_is_exact(args, tmp_path, monkeypatch)
    assert float(whole.loss.state_dict()["structure_distill"]["mix"]) != 0.5  # lambda was trained


def test_a_temporal_video_model_with_dropout(tmp_path, monkeypatch):
    from vlret.data.synth_video import VideoSynthConfig, write_video_benchmark

    data = write_video_benchmark(tmp_path / "clips", VideoSynthConfig(clips=24, frames=4))
    args = [
        resolve_recipe("video_temporal_synth_cpu"),
        f"data.path={data}",
        "model.video={frames: 4, pooling: transformer, layers: 1, heads: 2}",
        "model.options={width: 16, embed_dim: 16, dropout: 0.1}",
        "train.batch_size=8",
        "train.epochs=2",
        "train.checkpoint_every_steps=2",
    ]
    _assert_resume_is_exact(args, tmp_path, monkeypatch)


def test_memo_shards_of_a_step_never_published_are_not_loaded(tmp_path):
    """A kill between a memo shard and its checkpoint leaves a shard of a later step than the run resumes
    from: its rows were first computed after that checkpoint, and must be computed again where they come."""
    from vlret.models.composed import _Memo
    from vlret.train import memo_store

    memo = _Memo(size=10)
    memo.rows[b"a" * 16] = (torch.tensor([1.0, 2.0]), torch.ones(3, 2, dtype=torch.float16))
    memo.unsaved.append(b"a" * 16)
    memo_store.save_new_rows(tmp_path, {"text": memo}, step=4)
    memo.rows[b"b" * 16] = (torch.tensor([3.0, 4.0]), torch.zeros(1, 2, dtype=torch.float16))
    memo.unsaved.append(b"b" * 16)
    memo_store.save_new_rows(tmp_path, {"text": memo}, step=6)
    resumed = _Memo(size=10)
    memo_store.load_rows(tmp_path, {"text": resumed}, step=4)
    assert list(resumed.rows) == [b"a" * 16]
    embeds, tokens = resumed.rows[b"a" * 16]
    assert embeds.tolist() == [1.0, 2.0] and tokens.shape == (3, 2) and tokens.dtype == torch.float16
    later = _Memo(size=10)
    memo_store.load_rows(tmp_path, {"text": later}, step=6)
    assert list(later.rows) == [b"a" * 16, b"b" * 16] and later.unsaved == []
