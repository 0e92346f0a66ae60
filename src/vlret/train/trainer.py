"""The training loop every objective plugs into.

A recipe names a backbone, the data, weighted loss terms, the optimiser and schedule. The trainer builds
deterministic batches (see :mod:`vlret.train.data`), encodes both towers, gathers features across processes,
sums the weighted loss terms (logging each), steps AdamW with per-group learning rates, validates on the
validation split every epoch, and writes atomic checkpoints (``last``, and ``best`` by the validation metric).
``resume=True`` continues from ``last`` exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import vlret.train.checkpoint as ckpt
import vlret.train.memo_store as memo_store
from vlret.data import load_dataset
from vlret.data.prefetch import prefetch
from vlret.data.records import RetrievalDataset
from vlret.devices import pick_device
from vlret.errors import ConfigError, DataError, TrainingError
from vlret.evaluate.api import evaluate_model
from vlret.evaluate.encode import check_head_fits
from vlret.evaluate.protocols import get_protocol, prepare
from vlret.losses import LOSSES
from vlret.losses.base import LossContext
from vlret.models import RetrievalModel, create_model
from vlret.models.base import Features
from vlret.train.bertadam import BertAdam, released_no_decay
from vlret.train.data import EpochBatches, PairSource, epoch_loader, loader_workers
from vlret.train.distributed import (
    DistInfo,
    average_gradients,
    barrier,
    gather_no_grad,
    gather_objects,
    gather_tokens_with_grad,
    gather_with_grad,
    init_from_env,
)
from vlret.train.logger import MetricsLogger
from vlret.train.recipe import NO_VALIDATION, Recipe, check_resumable, check_writable, save_recipe
from vlret.train.schedule import lr_multiplier
from vlret.train.stopping import StopRequest
from vlret.train.teacher import Teacher, TeacherTowers


@dataclass
class WeightedLoss:
    """A recipe's loss terms with their weights, and the parameters some of them learn."""

    terms: dict[str, tuple[float, object]] = field(default_factory=dict)

    @property
    def needs(self) -> frozenset[str]:
        """Everything some term reads (see :data:`vlret.losses.base.NEEDS`)."""
        return frozenset().union(*(getattr(loss, "needs", frozenset()) for _, loss in self.terms.values()))

    @classmethod
    def from_recipe(cls, losses: dict[str, dict]) -> WeightedLoss:
        """The recipe's terms; a term of weight 0 is left out (not computed, not logged, not fitted)."""
        built = {}
        for name, options in losses.items():
            options = dict(options)
            weight = float(options.pop("weight", 1.0))
            if weight == 0:
                continue
            built[name] = (weight, LOSSES[name](**options))
        return cls(built)

    def fit(self, train: RetrievalDataset) -> None:
        """Let every term that learns from the training data (``fit(train_split)``) do so."""
        for _, loss in self.terms.values():
            if hasattr(loss, "fit"):
                loss.fit(train)

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        """The terms that learn parameters, by recipe name."""
        return {name: loss for name, (_, loss) in self.terms.items() if isinstance(loss, torch.nn.Module)}

    def prepare(self, context: LossContext, device: torch.device) -> None:
        """Build the terms' own parameters (they need the model's and the teachers' widths)."""
        for name, module in self.modules.items():
            try:
                module.prepare(context)
            except ValueError as exc:
                raise ConfigError(f"losses.{name}: {exc}") from None
            module.to(device)

    def named_parameters(self):
        for name, module in self.modules.items():
            for key, param in module.named_parameters():
                yield f"losses.{name}.{key}", param

    def state_dict(self) -> dict:
        return {name: module.state_dict() for name, module in self.modules.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, module in self.modules.items():
            module.load_state_dict(state[name])

    def __call__(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, logged = 0.0, {}
        for weight, loss in self.terms.values():
            term_weights = getattr(loss, "term_weights", {})
            for term, value in loss(outputs, batch).items():
                logged[term] = value.detach()
                total = total + weight * term_weights.get(term, 1.0) * value
            if hasattr(loss, "monitor"):
                logged.update({k: torch.tensor(v) for k, v in loss.monitor().items()})
        return total, logged


def encode_batch(
    model: RetrievalModel,
    batch: dict,
    info: DistInfo,
    device: torch.device,
    needs: frozenset[str],
    teacher: Teacher | None = None,
) -> dict:
    """What the loss terms ``needs`` of a batch, gathered from every process.

    Always: normalised global embeddings, item ids and the logit scale. ``"scores"``: the model's head on
    the gathered batch ``[B images, B texts]`` (left to the losses when the head is the plain dot product or
    a re-ranker); ``"tokens"``: token features and masks of both sides; ``"head"``: the head itself;
    ``"fused"``: the head's fused vector of each positive pair; ``"teacher"``: the teachers' features.
    """
    pixels = batch["pixels"].to(device, non_blocking=True)
    text = {k: v.to(device, non_blocking=True) for k, v in batch["text"].items()}
    image, caption = model.encode_images(pixels), model.encode_texts(text)
    outputs = {
        "image_embeds": gather_with_grad(F.normalize(image.embeds.float(), dim=-1), info),
        "text_embeds": gather_with_grad(F.normalize(caption.embeds.float(), dim=-1), info),
        "item_ids": gather_no_grad(batch["item_ids"].to(device), info),
        "caption_ids": gather_no_grad(batch["caption_ids"].to(device), info),
        "logit_scale": model.logit_scale.float(),
    }
    head = model.head
    head_scores = "scores" in needs and not head.is_dot_product and not head.reranks
    if "tokens" in needs or "fused" in needs or (head_scores and head.uses_tokens):
        for side, features in (("image", image), ("text", caption)):
            mask = features.mask
            if mask is None:
                mask = torch.ones(features.tokens.shape[:2], dtype=torch.bool, device=device)
            tokens, mask = gather_tokens_with_grad(features.tokens.float(), mask.bool(), info)
            outputs[f"{side}_tokens"], outputs[f"{side}_mask"] = tokens, mask
    texts = Features(outputs["text_embeds"], outputs.get("text_tokens"), outputs.get("text_mask"))
    items = Features(outputs["image_embeds"], outputs.get("image_tokens"), outputs.get("image_mask"))
    if head_scores:
        outputs["scores"] = head.score(texts, items).T
    if "head" in needs:
        outputs["head"] = head
    if "fused" in needs:
        outputs["fused"] = head.fuse(texts, items)
    if "teacher" in needs:
        outputs["teacher_image"], outputs["teacher_text"] = teacher.features(outputs["caption_ids"], device)
    return outputs


def parameter_groups(model: RetrievalModel, recipe: Recipe, loss: WeightedLoss | None = None) -> list[dict]:
    """AdamW groups: backbone vs. the rest (lr factor), and no weight decay on biases, norms and scalars.
    Parameters the loss terms learn train with the rest."""
    opt = recipe.optim
    groups: dict[tuple[bool, bool], list] = {}
    named = list(model.named_parameters()) + (list(loss.named_parameters()) if loss is not None else [])
    for name, param in named:
        if not param.requires_grad:
            continue
        backbone = any(name.startswith(p) for p in model.backbone_prefixes)
        # AdamW: no decay on biases, norms and scalars; bertadam: CLIP4Clip's rule, by name
        decay = not released_no_decay(name) if opt.name == "bertadam" else param.ndim >= 2
        groups.setdefault((backbone, decay), []).append(param)
    return [
        {
            "params": params,
            "lr": opt.lr * (opt.backbone_lr_factor if backbone else 1.0),
            "weight_decay": opt.weight_decay if decay else 0.0,
            "name": f"{'backbone' if backbone else 'head'}{'' if decay else '_no_decay'}",
        }
        for (backbone, decay), params in sorted(groups.items())
    ]


def make_optimizer(groups: list[dict], opt) -> torch.optim.Optimizer:
    """The recipe's optimiser over ``groups`` (:func:`parameter_groups`): AdamW, or CLIP4Clip's BertAdam
    with ``clip_grad_norm`` as its per-tensor clip."""
    if opt.name == "bertadam":
        return BertAdam(
            groups, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, max_grad_norm=opt.clip_grad_norm or 0.0
        )
    return torch.optim.AdamW(groups, betas=tuple(opt.betas), eps=opt.eps)


class Trainer:
    """Train a model by a recipe; ``fit()`` returns a summary dict."""

    def __init__(
        self,
        recipe: Recipe,
        resume: bool = False,
        progress: bool = True,
        resume_anyway: bool = False,
        overwrite: bool = False,
    ):
        """Everything that can be checked is checked here, before the first step: the data and its splits,
        the validation protocol, the output folder, and (``resume``) that the recipe is the run's own.

        The run-folder policy: a folder that holds checkpoints of a run is never replaced silently. Without
        ``resume`` it is refused; ``resume`` continues it when the recipe is the run's own (``resume_anyway``
        even when it differs); ``overwrite`` deletes that run's checkpoints and logs and starts afresh."""
        if overwrite and (resume or resume_anyway):
            flag = "--resume-anyway" if resume_anyway else "--resume"
            raise ConfigError(
                f"{flag} continues the run in {recipe.output_dir} and --overwrite deletes it: give one of them"
            )
        self.recipe = recipe
        self.progress = progress
        #: called as ``on_step(step, total_steps)`` after each optimiser step (the demo's time estimates)
        self.on_step: Callable[[int, int], None] | None = None
        self.device = pick_device(recipe.train.device)
        self.info = init_from_env(self.device.type)
        if self.info.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.info.local_rank)
        self.out = Path(recipe.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        resuming = (resume or resume_anyway) and not overwrite and ckpt.has_checkpoint(self.ckpt_dir)
        if resuming:
            check_resumable(self.out, recipe, allow_changes=resume_anyway)
        elif not overwrite:
            ckpt.refuse_to_replace(self.ckpt_dir)
        self.data = self._load_data()
        self.train_split = self._split(recipe.data.train_split, "data.train_split")
        self._check_validation_split()
        check_writable(self.out)
        if not resuming and self.info.is_main:
            ckpt.clear_run(
                self.out
            )  # checked above: nothing here is a run's checkpoint unless overwrite says so
        barrier(self.info)
        resume_state = None
        if resuming:
            self.model, resume_state = ckpt.load_checkpoint(self.ckpt_dir, "last")
        else:
            captions = [c.text for c in self.train_split.captions]
            self.model = create_model(
                recipe.model.name,
                captions=captions,
                seed=recipe.train.seed,
                head=recipe.model.head,
                video=recipe.model.video,
                **recipe.model.options,
            )
            # Dropout and other in-model randomness draw from torch's global generator: fix it by the seed
            # (per process), so a run does not depend on what ran before it; a resumed run restores it.
            torch.manual_seed(recipe.train.seed + self.info.rank)
            if self.info.is_main:
                save_recipe(self.out, recipe)
        self.model.to(self.device)
        check_head_fits(self.model, self.train_split)  # sizes that do not fit fail now, not at step 1
        self.model.train()
        self.loss = WeightedLoss.from_recipe(recipe.losses)
        self.loss.fit(self.train_split)
        self._check_head_needs()
        self.teacher = self._build_teacher() if "teacher" in self.loss.needs else None
        if self.loss.modules:  # only terms with parameters need the widths (a dry encode finds the model's)
            context = LossContext(self._embed_dim(), None if self.teacher is None else self.teacher.dims)
            self.loss.prepare(context, self.device)
        self.source = PairSource(
            self.train_split,
            self.model.image_transform,
            recipe.data,
            self.model.input_kind,
            getattr(self.model, "sampling", None),
        )
        micro_batches = len(self.source) // recipe.train.batch_size
        self.steps_per_epoch = micro_batches // recipe.train.grad_accum_steps
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"train.batch_size: {len(self.source)} training pairs make no full step of batch "
                f"{recipe.train.batch_size} x {recipe.train.grad_accum_steps} accumulation"
            )
        self.total_steps = recipe.train.epochs * self.steps_per_epoch
        if recipe.train.max_steps is not None:
            self.total_steps = min(self.total_steps, recipe.train.max_steps)
        self.optimizer = make_optimizer(parameter_groups(self.model, recipe, self.loss), recipe.optim)
        factor = lr_multiplier(
            recipe.schedule, recipe.train.epochs * self.steps_per_epoch, self.steps_per_epoch
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.best: float | None = None
        self.memos = self.model.memos() if hasattr(self.model, "memos") else {}
        self.memo_dir = self.out / memo_store.MEMO_DIR / f"rank{self.info.rank}"
        if resume_state is not None:
            self._restore(resume_state)
            memo_store.load_rows(self.memo_dir, self.memos, self.step)
        self.logger = MetricsLogger(self.out, enabled=self.info.is_main)

    # ----- set-up ---------------------------------------------------------------------------------------
    def _load_data(self) -> RetrievalDataset:
        d = self.recipe.data
        if not d.path:
            raise ConfigError("data.path is empty: name the annotation file or folder to train on")
        return load_dataset(d.path, d.format, d.media_root)

    def _split(self, name: str, key: str) -> RetrievalDataset:
        try:
            return self.data.split(name)
        except KeyError:
            raise ConfigError(
                f"{key}: {self.data.source} has no split {name!r}; it has {self.data.splits}"
            ) from None

    def _check_validation_split(self) -> None:
        """The validation protocol must apply to the validation split (else it fails after a whole epoch)."""
        if self.recipe.data.val_split == NO_VALIDATION:
            return
        val = self._split(self.recipe.data.val_split, "data.val_split")
        try:
            prepare(val, get_protocol(self.recipe.eval.protocol))
        except DataError as exc:
            raise ConfigError(f"eval.protocol: {exc}") from None

    def _check_head_needs(self) -> None:
        """A term that reads fused pairs needs a head with a fusion encoder (ITM)."""
        if "fused" in self.loss.needs and not hasattr(self.model.head, "fuse"):
            readers = [n for n, (_, loss) in self.loss.terms.items() if "fused" in getattr(loss, "needs", ())]
            raise ConfigError(
                f"losses.{readers[0]}: reads the fusion encoder's pair vectors, but the model's "
                f"{self.model.head.name} head has none (use model.head: {{name: itm, ...}}, or a "
                "student relation from the embeddings)"
            )

    def _build_teacher(self) -> Teacher:
        spec = self.recipe.teacher
        if spec.cache:
            return Teacher.from_cache(spec.cache, self.train_split, self.recipe.data.train_split)
        towers = TeacherTowers(
            spec.image_tower, spec.text_tower, spec.image_options, spec.text_options, spec.batch_size
        )
        return Teacher.on_the_fly(towers, self.train_split)

    @torch.no_grad()
    def _embed_dim(self) -> int:
        """The width of the model's text embedding (loss terms with parameters project into it)."""
        was_training = self.model.training
        self.model.eval()
        batch = {k: v.to(self.device) for k, v in self.model.tokenize(["a"]).items()}
        width = int(self.model.encode_texts(batch).embeds.shape[-1])
        self.model.train(was_training)
        return width

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.recipe.train.amp
        if amp == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else None
        return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _rng_state(self) -> dict:
        """This process's random generators: dropout and the like draw from them."""
        state = {"torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def _state(self, rank_rngs: list[dict]) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "best": self.best,
            "losses": self.loss.state_dict(),
            **rank_rngs[0],  # a one-process run reads these; checkpoints before per-rank states had only them
            "rank_rngs": rank_rngs,  # each process's own, in rank order
        }

    def _restore(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.best = state["best"]
        if "losses" in state:
            self.loss.load_state_dict(state["losses"])
        rngs = state.get("rank_rngs") or [state]  # checkpoints before per-rank states hold one
        own = rngs[self.info.rank] if self.info.rank < len(rngs) else rngs[0]
        if self.info.rank >= len(rngs):
            warnings.warn(
                f"the checkpoint holds the random states of {len(rngs)} processes, this run has "
                f"{self.info.world_size}; process {self.info.rank} continues from process 0's",
                stacklevel=2,
            )
        torch.set_rng_state(own["torch_rng"])
        if "cuda_rng" in own and self.device.type == "cuda":
            torch.cuda.set_rng_state(own["cuda_rng"], self.device)

    # ----- the loop -------------------------------------------------------------------------------------
    def train_step(self, micro_batches: list[dict], epoch: int) -> dict[str, float]:
        """One optimiser step over ``grad_accum_steps`` micro-batches; returns the logged values."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        params += [p for _, p in self.loss.named_parameters() if p.requires_grad]
        logged: dict[str, float] = {}
        for batch in micro_batches:
            with self._autocast():
                outputs = encode_batch(
                    self.model, batch, self.info, self.device, self.loss.needs, self.teacher
                )
            total, terms = self.loss(outputs, {"epoch": epoch})
            if not torch.isfinite(total):
                raise TrainingError(self._non_finite_loss_message(terms))
            self.scaler.scale(total / len(micro_batches)).backward()
            logged["loss"] = logged.get("loss", 0.0) + float(total.detach()) / len(micro_batches)
            for k, v in terms.items():
                logged[k] = logged.get(k, 0.0) + float(v) / len(micro_batches)
        average_gradients(params, self.info)
        if not self.recipe.optim.compat_amp_clip:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        if (
            self.recipe.optim.clip_grad_norm and self.recipe.optim.name != "bertadam"
        ):  # bertadam clips per tensor
            logged["grad_norm"] = float(
                torch.nn.utils.clip_grad_norm_(params, self.recipe.optim.clip_grad_norm)
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        logged["temperature"] = math.exp(-self.model.logit_scale.item())
        return logged

    def _non_finite_loss_message(self, terms: dict[str, torch.Tensor]) -> str:
        values = ", ".join(f"{name} = {float(v):.4g}" for name, v in terms.items())
        return (
            f"step {self.step + 1}: the loss is not finite ({values}); training stopped before the optimiser "
            f"step, so nothing non-finite was saved (last checkpoint: {self._last_checkpoint()}). "
            "Lower optim.lr, lengthen schedule.warmup_steps, or check the data and the model's weights."
        )

    def _last_checkpoint(self) -> str:
        meta = ckpt.read_meta(self.ckpt_dir, "last")
        return f"step {meta['step']} in {self.ckpt_dir / 'last'}" if meta else "none"

    def _check_finite_weights(self) -> None:
        for name, param in self.model.named_parameters():
            if not torch.isfinite(param).all():
                raise TrainingError(
                    f"step {self.step}: parameter {name} holds NaN or infinity; not saved "
                    f"(last checkpoint: {self._last_checkpoint()}). Lower optim.lr or check the data."
                )

    def validate(self) -> dict:
        was_training = self.model.training
        result = evaluate_model(
            self.model,
            self.data,
            protocol=self.recipe.eval.protocol,
            split=self.recipe.data.val_split,
            batch_size=self.recipe.eval.batch_size,
            use_cache=False,
            progress=False,
        )
        self.model.train(was_training)
        return result["metrics"]

    def _save(self, epoch: int, is_best: bool = False) -> None:
        self._check_finite_weights()  # every process holds the same weights: all stop together
        memo_store.save_new_rows(self.memo_dir, self.memos, self.step)  # each process: its own batches
        rank_rngs = gather_objects(self._rng_state(), self.info)  # every process's dropout stream
        if self.info.is_main:
            ckpt.save_checkpoint(
                self.ckpt_dir,
                self.model,
                self._state(rank_rngs),
                self.step,
                is_best,
                {"epoch": epoch, "best": self.best},
            )
        barrier(self.info)

    def fit(self) -> dict:
        r = self.recipe
        started = time.perf_counter()
        stop, stopped = StopRequest(), False
        with stop.listening():
            while self.step < self.total_steps and not stopped:
                stopped = self._run_epoch(stop)
        self.logger.close()
        summary = {
            "steps": self.step,
            "best_metric": self.best,
            "metric": r.eval.metric,
            "seconds": round(time.perf_counter() - started, 2),
            "checkpoints": str(self.ckpt_dir),
        }
        if stopped:
            summary["stopped"] = f"SIGTERM after step {self.step}; resume with --resume"
        return summary

    def _run_epoch(self, stop: StopRequest) -> bool:
        """The steps of the current epoch from ``self.step`` on; True when a stop request ended it early."""
        r = self.recipe
        k = r.train.grad_accum_steps
        epoch, step_in_epoch = divmod(self.step, self.steps_per_epoch)
        batches = EpochBatches(
            self.source,
            self.model.tokenize,
            r.train.batch_size,
            epoch,
            r.train.seed,
            self.info,
            step_in_epoch * k,
            r.data.sampling,
        )
        workers = loader_workers(r.data.num_workers, self.source, self.device.type)
        loader = epoch_loader(batches, workers)
        loader = prefetch(iter(loader)) if workers == 0 else iter(loader)
        steps_left = min(self.steps_per_epoch - step_in_epoch, self.total_steps - self.step)
        bar = tqdm(
            total=steps_left,
            desc=f"epoch {epoch + 1}/{r.train.epochs}",
            disable=not (self.progress and self.info.is_main),
        )
        try:
            window = (time.perf_counter(), 0)
            for _ in range(steps_left):
                logged = self.train_step([next(loader) for _ in range(k)], epoch)
                window = (window[0], window[1] + r.train.batch_size * k)
                bar.update(1)
                if self.on_step is not None:
                    self.on_step(self.step, self.total_steps)
                if self.step % r.train.log_every_steps == 0 or self.step == self.total_steps:
                    self._log(logged, window, bar)
                    window = (time.perf_counter(), 0)
                at_epoch_end = self.step % self.steps_per_epoch == 0 or self.step == self.total_steps
                if stop.agreed(self.info):  # SIGTERM: checkpoint this step and return
                    if at_epoch_end:
                        self._end_epoch(epoch)
                    else:
                        self._save(epoch)
                    return True
                every = r.train.checkpoint_every_steps
                if every and self.step % every == 0 and not at_epoch_end:
                    self._save(epoch)
        finally:
            bar.close()
            getattr(loader, "close", lambda: None)()  # the prefetch thread stops with it
        self._end_epoch(epoch)  # also when max_steps stops mid-epoch: validate, so `best` exists
        return False

    def _log(self, logged: dict, window: tuple[float, int], bar) -> None:
        """Log a step's values with the throughput since the last log line."""
        started, samples = window
        logged["samples_per_s"] = samples / max(time.perf_counter() - started, 1e-9)
        logged["lr"] = self.optimizer.param_groups[0]["lr"]
        logged["epoch"] = self.step / self.steps_per_epoch  # fractional
        self.logger.log(logged, self.step)
        bar.set_postfix(
            loss=f"{logged['loss']:.3f}", lr=f"{logged['lr']:.2e}", sps=f"{logged['samples_per_s']:.0f}"
        )

    def _end_epoch(self, epoch: int) -> None:
        r = self.recipe
        is_best = False
        due = (epoch + 1) % r.eval.every_epochs == 0 or self.step == self.total_steps
        if self.recipe.data.val_split == NO_VALIDATION:
            is_best = True  # nothing to choose by: the latest checkpoint is the one kept as best
        elif due and self.info.is_main:
            metrics = self.validate()
            value = metrics[r.eval.metric]
            is_best = self.best is None or value > self.best
            self.best = value if is_best else self.best
            self.logger.log({**metrics, "epoch": epoch + 1}, self.step, prefix="val")
        self._save(epoch + 1, is_best)
