"""Two CPU processes (gloo) with all-gathered features give the loss and gradients of one process on the
whole batch."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vlret.losses import HingeLoss, InfoNCELoss
from vlret.models import create_model
from vlret.train.distributed import DistInfo, average_gradients
from vlret.train.trainer import WeightedLoss, encode_batch

CAPTIONS = [
    "a red circle",
    "two blue squares",
    "a small green triangle on the left",
    "an orange diamond",
    "a red square above a blue circle",
    "three shapes",
    "a large dotted purple circle",
    "a yellow triangle at the top",
]
ITEMS = [0, 0, 1, 2, 3, 3, 4, 5]  # repeated items exercise the multi-positive mask


def _setup():
    torch.manual_seed(0)
    model = create_model("tiny-cnn", captions=CAPTIONS, seed=0)
    pixels = torch.randn(len(CAPTIONS), 3, 64, 64, generator=torch.Generator().manual_seed(1))
    loss = WeightedLoss({"infonce": (1.0, InfoNCELoss()), "hinge": (0.5, HingeLoss())})
    return model, pixels, loss


def _batch(model, pixels, rows):
    return {
        "pixels": pixels[rows],
        "text": model.tokenize([CAPTIONS[r] for r in rows]),
        "item_ids": torch.tensor([ITEMS[r] for r in rows]),
        "caption_ids": torch.tensor(rows),
    }


def _run(model, batch, loss, info):
    total, _ = loss(encode_batch(model, batch, info, torch.device("cpu"), loss.needs), {"epoch": 1})
    total.backward()
    params = list(model.parameters())
    average_gradients(params, info)
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank, world, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model, pixels, loss = _setup()
    per = len(CAPTIONS) // world
    rows = list(range(rank * per, (rank + 1) * per))
    total, grads = _run(model, _batch(model, pixels, rows), loss, DistInfo(rank, world))
    torch.save({"loss": total, "grads": grads}, f"{out_file}.{rank}")
    dist.destroy_process_group()


def test_two_processes_equal_one_process_on_whole_batch(tmp_path):
    model, pixels, loss = _setup()
    ref_loss, ref_grads = _run(model, _batch(model, pixels, list(range(len(CAPTIONS)))), loss, DistInfo())
    os.environ.pop("WORLD_SIZE", None)
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(f"{tmp_path / 'out'}.{rank}", weights_only=True)
        torch.testing.assert_close(got["loss"], ref_loss, atol=1e-5, rtol=1e-5)
        assert got["grads"].keys() == ref_grads.keys()
        for name, grad in ref_grads.items():
            torch.testing.assert_close(got["grads"][name], grad, atol=1e-5, rtol=1e-4, msg=name)


# ----- kill and resume with two processes: each process's random stream is saved and restored -------------

KILL_AT = 4


class _Killed(Exception):
    pass


def _train_worker(rank, world, port, recipe_args, kill_at, resume):
    """One process of a 2-process training run (the environment torchrun would give it)."""
    import torch as _torch

    from vlret.train import Trainer, load_recipe

    _torch.set_num_threads(1)
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    trainer = Trainer(load_recipe(None, recipe_args), resume=resume, progress=False)
    if kill_at is not None:
        real = Trainer._save

        def save_then_die(self, epoch, is_best=False):
            real(self, epoch, is_best)
            if self.step >= kill_at:
                raise _Killed

        trainer._save = save_then_die.__get__(trainer)
    try:
        trainer.fit()
    except _Killed:
        pass  # as a SIGKILL right after the checkpoint: nothing more runs
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_two_process_run_killed_and_resumed_equals_an_uninterrupted_one(synth_data, tmp_path):
    """Dropout 0.1 in both processes: before each process's RNG state was saved, process 1 resumed from
    process 0's stream and the runs parted."""
    from vlret.train.checkpoint import load_checkpoint

    common = [
        f"data.path={synth_data}",
        "train.epochs=1",
        "train.max_steps=8",
        "train.batch_size=8",
        "train.checkpoint_every_steps=2",
        "model.options={width: 16, embed_dim: 16, dropout: 0.1}",
        "eval.every_epochs=100",
    ]
    os.environ.pop("WORLD_SIZE", None)
    whole = [*common, f"output_dir={tmp_path / 'whole'}"]
    mp.spawn(_train_worker, args=(2, _free_port(), whole, None, False), nprocs=2, join=True)
    parted = [*common, f"output_dir={tmp_path / 'parted'}"]
    mp.spawn(_train_worker, args=(2, _free_port(), parted, KILL_AT, False), nprocs=2, join=True)
    assert load_checkpoint(tmp_path / "parted" / "checkpoints", "last")[1]["step"] == KILL_AT
    mp.spawn(_train_worker, args=(2, _free_port(), parted, None, True), nprocs=2, join=True)
    a, _ = load_checkpoint(tmp_path / "whole" / "checkpoints", "last")
    b, state = load_checkpoint(tmp_path / "parted" / "checkpoints", "last")
    assert state["step"] == 8 and len(state["rank_rngs"]) == 2
    assert not torch.equal(state["rank_rngs"][0]["torch_rng"], state["rank_rngs"][1]["torch_rng"])
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name]), f"{name} differs after the resume"
