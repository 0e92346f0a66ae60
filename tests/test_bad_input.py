"""Bad input and faults get a clear error (or a counted, documented handling), never a traceback or a wrong
answer: score files, non-finite values, recipes checked before the first step, resuming with another recipe,
the command line, CSV encodings, captions skipped one by one, chat backends' odd replies, cut cache lines,
and a disk that fills up during a checkpoint."""

import errno
import json
import threading
import zipfile
from http.server import ThreadingHTTPServer

import numpy as np
import pytest
import torch

from conftest import write_json
from json_server import QuietHandler
from vlret.cli import main
from vlret.data import load_dataset, read_karpathy
from vlret.data.lavis import read_lavis
from vlret.errors import ConfigError, DataError, TrainingError
from vlret.evaluate.score_files import load_score_matrix
from vlret.rerank.backends.openai_http import BackendError, OpenAIChat
from vlret.rerank.visa.config import load_visa_config
from vlret.train import Trainer, load_recipe

# ----- score files -----------------------------------------------------------------------------------------


def _write_bad_score_file(kind: str, path):
    if kind == "text":
        path.write_text("0.1 0.2\n0.3 0.4\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        np.save(path, np.ones((30, 6), np.float32))
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "npz":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("scores.npy", b"x")
    elif kind == "structured":
        np.save(path, np.zeros((30, 6), dtype=[("a", "f4"), ("b", "i4")]))
    elif kind == "object":
        np.save(path, np.array([[object()] * 6] * 30, dtype=object), allow_pickle=True)
    elif kind == "1-d":
        np.save(path, np.ones(180, np.float32))
    elif kind == "strings":
        np.save(path, np.full((30, 6), "x"))
    return path


@pytest.mark.parametrize(
    "kind", ["text", "empty", "truncated", "npz", "structured", "object", "1-d", "strings"]
)
def test_score_files_that_are_not_numeric_matrices_exit_2_naming_the_file(kind, synth_data, tmp_path, capsys):
    path = _write_bad_score_file(kind, tmp_path / "scores.npy")
    with pytest.raises(DataError, match="expected a 2-D numeric array"):
        load_score_matrix(path)
    assert main(["eval", "--scores", str(path), "--data", str(synth_data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}") and "Traceback" not in err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_eval_scores_with_a_non_finite_value_exits_2_naming_where(value, synth_data, tmp_path, capsys):
    split = load_dataset(synth_data).split("test")
    scores = np.random.default_rng(0).normal(size=(len(split.captions), len(split.items)))
    scores[17, 4] = float(value)
    np.save(tmp_path / "s.npy", scores)
    assert main(["eval", "--scores", str(tmp_path / "s.npy"), "--data", str(synth_data)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 's.npy'}: row 17, column 4: non-finite score {float(value)}" in err
    assert (
        main(
            [
                "rerank",
                "visa",
                "--scores",
                str(tmp_path / "s.npy"),
                "--data",
                str(synth_data),
                "--out",
                str(tmp_path / "v"),
            ]
        )
        == 2
    )
    assert "row 17, column 4" in capsys.readouterr().err


# ----- training: non-finite values, validation before work, resuming ----------------------------------


def _overrides(data, out, *extra):
    return [
        f"data.path={data}",
        f"output_dir={out}",
        "train.epochs=1",
        "train.batch_size=8",
        "model.options={width: 32, embed_dim: 32}",
        *extra,
    ]


def test_a_non_finite_loss_stops_training_before_anything_is_saved(synth_data, tmp_path):
    trainer = Trainer(load_recipe(None, _overrides(synth_data, tmp_path / "run")), progress=False)
    with torch.no_grad():
        trainer.model.text_encoder.proj.bias[0] = float("nan")
    with pytest.raises(TrainingError, match=r"step 1: the loss is not finite \(infonce = nan\)") as info:
        trainer.fit()
    assert "last checkpoint: none" in str(info.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_non_finite_weights_are_never_saved(synth_data, tmp_path):
    trainer = Trainer(load_recipe(None, _overrides(synth_data, tmp_path / "run")), progress=False)
    with torch.no_grad():
        trainer.model.logit_scale.fill_(float("inf"))
    with pytest.raises(TrainingError, match="parameter logit_scale holds NaN or infinity; not saved"):
        trainer._save(0)
    assert not (tmp_path / "run" / "checkpoints" / "last").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("eval.metric=bogus", "eval.metric: expected one of rsum, t2i_r1"),
        ("eval.metric=t2i_medr", "eval.metric: expected one of"),  # lower is better: cannot pick `best`
        ("optim.lr=.nan", "optim.lr: expected a finite number >= 0, got nan"),
        ("optim.lr=-1e-3", "optim.lr: expected a finite number >= 0"),
        ("optim.betas=[0.9]", "optim.betas: expected two numbers in [0, 1)"),
        ("optim.betas=[0.9, 1.5]", "optim.betas: expected two numbers in [0, 1)"),
        ("optim.eps=0", "optim.eps: expected a finite number > 0"),
        ("data.crop_scale=[0.5, 1.5]", "data.crop_scale: expected [low, high] with 0 < low <= high <= 1"),
        ("data.crop_scale=[0.9, 0.5]", "data.crop_scale"),
        ("data.num_workers=-1", "data.num_workers: expected auto or an integer from 0 to 64"),
        ("data.num_workers=65", "data.num_workers: expected auto or an integer from 0 to 64"),
        ("data.num_workers=many", "data.num_workers: expected auto or an integer from 0 to 64"),
        ("data.num_workers=.nan", "data.num_workers: expected int or str, got nan"),
        ("data.num_workers=1.5", "data.num_workers: expected int or str, got 1.5"),
        ("data.format=xml", "data.format: expected auto or one of karpathy"),
        ("train.device=tpu", "train.device: expected auto, cpu, cuda or cuda:N"),
        ("train.batch_size=0", "train.batch_size: expected an integer >= 1"),
        ("train.max_steps=0", "train.max_steps: expected null or an integer >= 1"),
        ("train.seed=-1", "train.seed: expected an integer >= 0"),
        ("schedule.warmup_steps=-5", "schedule.warmup_steps: expected an integer >= 0"),
        ("schedule.min_lr_ratio=2", "schedule.min_lr_ratio: expected a number in [0, 1]"),
        ("eval.every_epochs=0", "eval.every_epochs: expected an integer >= 1"),
        ("model.options={widht: 32}", "model.options: unknown key 'widht'"),
        ("model.options={width: 28}", "model.options: width must be a multiple of 8"),
        ("model.options={dropout: 1.5}", "model.options: dropout must be in [0, 1)"),
        ("model.name=resnet", "model.name: expected tiny-cnn, tiny-vit, composed, hf:"),
        ("losses.hinge={margin: x}", "losses.hinge.margin: expected float, got 'x'"),
        ("losses.hinge={reduction: max}", "losses.hinge: reduction must be 'sum' or 'mean'"),
        ("losses.infonce={weight: -1}", "losses.infonce.weight: expected a finite number >= 0"),
    ],
)
def test_every_recipe_value_is_checked_before_work(override, message):
    with pytest.raises(ConfigError) as info:
        load_recipe("demo_tiny", [override])
    assert message in str(info.value)


@pytest.mark.parametrize("workers", ["auto", "0", "64"])
def test_loader_workers_within_the_limit_are_taken(workers):
    assert str(load_recipe("demo_tiny", [f"data.num_workers={workers}"]).data.num_workers) == workers


def test_no_cuda_no_cuda_device():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(
        ConfigError, match="train.device: cuda was asked for, but this machine has no usable CUDA GPU"
    ):
        load_recipe("demo_tiny", ["train.device=cuda"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["data.train_split=training"],
            "data.train_split: .* has no split 'training'; it has \\['train', 'val', 'test'\\]",
        ),
        (["data.val_split=dev"], "data.val_split: .* has no split 'dev'"),
        (
            ["eval.protocol=flickr30k-1k"],
            "eval.protocol: .*flickr30k-1k expects 1000 items in the split, found 6",
        ),
    ],
)
def test_data_dependent_checks_fail_before_the_first_step(extra, message, synth_data, tmp_path):
    with pytest.raises(ConfigError, match=message):
        Trainer(load_recipe(None, _overrides(synth_data, tmp_path / "run", *extra)), progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_an_output_folder_that_cannot_be_written_is_refused(synth_data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="output_dir: cannot write to"):
        Trainer(load_recipe(None, _overrides(synth_data, blocker / "run")), progress=False)


def test_resume_with_a_different_recipe_is_refused_with_the_differing_keys(synth_data, tmp_path):
    out = tmp_path / "run"
    Trainer(load_recipe(None, _overrides(synth_data, out, "train.max_steps=2")), progress=False).fit()
    changed = load_recipe(
        None, _overrides(synth_data, out, "train.max_steps=2", "optim.lr=0.5", "train.log_every_steps=1")
    )
    with pytest.raises(ConfigError) as info:
        Trainer(changed, resume=True, progress=False)
    message = str(info.value)
    assert "optim.lr: 0.001 -> 0.5" in message and "--resume-anyway" in message
    assert "log_every_steps" not in message  # changes nothing the run computes
    assert Trainer(changed, resume_anyway=True, progress=False).step == 2
    same_but_logging = load_recipe(
        None, _overrides(synth_data, out, "train.max_steps=2", "train.log_every_steps=1")
    )
    assert Trainer(same_but_logging, resume=True, progress=False).step == 2


def test_overrides_are_accepted_anywhere_on_the_command_line(synth_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "train.max_steps=1",
        "--quiet",
        f"data.path={synth_data}",
        "--recipe",
        "demo_tiny",
        f"output_dir={out}",
    ]
    assert main([*args, "train.batch_size=8", "model.options={width: 32, embed_dim: 32}"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 1
    assert main(["train", "--quiet", "not-an-override"]) == 2
    assert "override 'not-an-override': expected key=value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "train.epochs=1", "--quiet", "stray"])
    assert "unrecognized arguments: stray" in capsys.readouterr().err


def test_a_key_given_twice_in_yaml_is_an_error(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  epochs: 4\n  batch_size: 8\n  epochs: 6\n")
    with pytest.raises(ConfigError, match="line 4: key 'epochs' appears twice \\(first on line 2\\)"):
        load_recipe(path)
    visa = tmp_path / "visa.yaml"
    visa.write_text("k: 4\nk: 5\n")
    with pytest.raises(ConfigError, match="key 'k' appears twice"):
        load_visa_config(visa)


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("w_base: .nan\n", "w_base: expected a finite number >= 0"),
        ("w_text: -1\n", "w_text: expected a finite number >= 0"),
        ("w_base: 0\nw_text: 0\n", "at least one fusion weight must be above 0"),
        ("k: 0\n", "k: expected an integer >= 1"),
        ("media: audio\n", "media: expected image or video"),
        ("vqa: {backend: openai, model: m, timeout: -3}\n", "vqa.timeout: expected a number of seconds > 0"),
        (
            "vqa: {backend: openai, model: m, timeout: soon}\n",
            "vqa.timeout: expected a number of seconds > 0",
        ),
        ("vqa: {backend: openai, model: m, max_retries: 1.5}\n", "vqa.max_retries: expected an integer >= 0"),
        (
            "describer: {backend: openai, model: m, base_url: localhost}\n",
            "describer.base_url: expected an http(s) URL",
        ),
        ("describer: {backend: openai}\n", "describer.model: backend 'openai' needs a model name"),
        (
            "reranker: {backend: magic}\n",
            "reranker.backend: expected one of lexical, cross-encoder, bi-encoder",
        ),
        ("reranker: {backend: lexical, model: x}\n", "reranker: unknown key 'model' for backend 'lexical'"),
    ],
)
def test_visa_config_values_are_checked_when_read(yaml_text, message, tmp_path):
    path = tmp_path / "visa.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_visa_config(path)
    assert message in str(info.value)


# ----- datasets ---------------------------------------------------------------------------------------------


def test_csv_with_a_utf8_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes("\ufeffimage,caption,split\na.png,a red circle,test\n".encode())
    ds = load_dataset(path)
    assert [c.text for c in ds.captions] == ["a red circle"]


def test_non_utf8_csv_names_the_line_and_the_encoding_option_reads_it(tmp_path, capsys):
    path = tmp_path / "a.csv"
    path.write_bytes("image,caption\na.png,a red circle\nb.png,un caf\u00e9 rouge\n".encode("latin-1"))
    with pytest.raises(DataError, match="line 3: not utf-8 text .*--encoding"):
        load_dataset(path)
    assert main(["data", "stats", str(path)]) == 2
    assert "line 3" in capsys.readouterr().err
    ds = load_dataset(path, encoding="latin-1")
    assert ds.captions[1].text == "un caf\u00e9 rouge"
    assert main(["data", "stats", str(path), "--encoding", "latin-1"]) == 0


def test_karpathy_filepath_must_be_a_string(tmp_path):
    doc = {"images": [{"filename": "a.png", "filepath": 7, "split": "test", "sentences": [{"raw": "x"}]}]}
    with pytest.raises(DataError, match='images\\[0\\] \\(a.png\\): "filepath" must be a string'):
        read_karpathy(write_json(tmp_path / "d.json", doc))


def test_an_empty_caption_under_skip_drops_only_that_caption(tmp_path):
    doc = {
        "images": [
            {
                "filename": "a.png",
                "split": "test",
                "sentences": [{"raw": "one"}, {"raw": " "}, {"raw": "three"}],
            },
            {"filename": "b.png", "split": "test", "sentences": [{"raw": "four"}]},
        ]
    }
    ds = read_karpathy(write_json(tmp_path / "d.json", doc), on_error="skip")
    assert [c.text for c in ds.captions] == ["one", "three", "four"]
    assert [s.record for s in ds.skipped] == ["images[0] (a.png) sentences[1]"]
    lavis = [{"image": "a.png", "caption": ["one", "", "three"]}, {"image": "b.png", "caption": "four"}]
    ds = read_lavis(write_json(tmp_path / "x_test.json", lavis), on_error="skip")
    assert [c.text for c in ds.captions] == ["one", "three", "four"]
    assert [s.record for s in ds.skipped] == ["[0] (a.png) caption[1]"]


# ----- chat backends and the VISA cache ------------------------------------------------------------------


class _OddServer(QuietHandler):
    replies: list[bytes] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_body(200, _OddServer.replies.pop(0))


@pytest.fixture
def odd_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OddServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def _reply(content, usage=None) -> bytes:
    return json.dumps({"choices": [{"message": {"content": content}}], "usage": usage}).encode()


def test_a_200_without_json_or_text_is_retried_never_returned_empty(odd_server):
    _OddServer.replies = [
        b"<html>proxy error</html>",
        _reply(None),
        _reply("a red circle", {"prompt_tokens": 5, "completion_tokens": 3}),
    ]
    chat = OpenAIChat("m", base_url=odd_server, backoff=0.01)
    assert chat.chat("describe") == "a red circle"
    assert chat.usage.as_dict() == {"calls": 1, "prompt_tokens": 5, "completion_tokens": 3}
    _OddServer.replies = [_reply(None)] * 2
    with pytest.raises(BackendError, match="gave up after 2 attempts .*content is None"):
        OpenAIChat("m", base_url=odd_server, max_retries=1, backoff=0.01).chat("describe")


def test_malformed_usage_counts_are_ignored(odd_server):
    _OddServer.replies = [
        _reply("x", {"prompt_tokens": "many", "completion_tokens": -4}),
        _reply("y", "usage"),
    ]
    chat = OpenAIChat("m", base_url=odd_server)
    assert chat.chat("a") == "x" and chat.chat("b") == "y"
    assert chat.usage.as_dict() == {"calls": 2, "prompt_tokens": 0, "completion_tokens": 0}


def test_a_cut_cache_line_is_not_glued_to_the_next_record(tmp_path):
    from vlret.rerank.visa.store import StageStore

    store = StageStore(tmp_path, "answers")
    store.put("a", "first")
    with store.path.open("a") as fh:
        fh.write('{"key": "b", "val')  # killed mid-write
    again = StageStore(tmp_path, "answers")
    again.put("c", "third")
    third = StageStore(tmp_path, "answers")
    assert third.get("a") == "first" and third.get("c") == "third" and "b" not in third


# ----- a full disk during a checkpoint --------------------------------------------------------------------


def test_disk_full_during_a_checkpoint_leaves_nothing_partial(synth_data, tmp_path, monkeypatch):
    import vlret.train.checkpoint as ckpt

    out = tmp_path / "run"
    trainer = Trainer(load_recipe(None, _overrides(synth_data, out, "train.max_steps=2")), progress=False)
    trainer.fit()
    before = sorted(p.name for p in (out / "checkpoints").iterdir())

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(TrainingError) as info:
        trainer._save(1)
    message = str(info.value)
    assert "No space left on device" in message and "previous checkpoint (step-0000002) is intact" in message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before  # no .tmp folder left
    assert (out / "checkpoints" / "last" / "trainer_state.pt").is_file()
