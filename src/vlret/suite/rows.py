"""The rows of ``vlret bench``: every method and the combinations of them that vlret can run.

A row is one line of a results table: ``retrieval`` (text-image), ``video`` or ``prompts``. Five kinds:

- :class:`TrainRow`: a recipe trained and evaluated (the methods themselves, and combinations that are
  recipes: VSL on the AVSE head, RVLR's distillation on the composed pretrained model);
- :class:`EnsembleRow`: the mean of members' score matrices (SGRAF = SGR + SAF);
- :class:`ItmRow`: a first stage's top-k re-scored by RVLR's ITM head;
- :class:`VisaRow`: a first stage's top-K re-ranked by VISA with the offline backends;
- :class:`PromptRow`: prompts learnt (CoOp, TextRefiner) or hand-written on a frozen trained model, scored
  base-to-new on the synthetic class benchmark.

Every row belongs to a *family* (``--methods`` picks families); re-ranking rows are added for every first
stage whose family is picked, when ``itm`` / ``visa`` are picked too.
"""

from __future__ import annotations

from dataclasses import dataclass

#: families in table order; ``itm`` and ``visa`` add re-ranking rows to the others
FAMILIES = ("cosine", "vsl", "sgraf", "avse", "rvlr", "video", "prompts", "itm", "visa")

#: the top-k that ITM re-scores (RVLR's synthetic recipe's ``k_test``) and that VISA re-ranks
ITM_K = 16
VISA_K = 20

VSL_LOSS = "{scale: 10.0, temperature: 0.001, clamp: 50.0, rank_mode: reference}"


@dataclass(frozen=True)
class TrainRow:
    """Train ``recipe`` (a built-in name) with ``overrides`` on ``data`` (``images``, ``precomp`` or
    ``video``).

    ``init_from`` names the row whose best checkpoint the model starts from (RVLR stage 2), ``teacher``
    says that the recipe reads the frozen teachers' features, and ``rerank`` whether ITM and VISA rows
    follow it."""

    name: str
    family: str
    recipe: str
    overrides: tuple[str, ...] = ()
    data: str = "images"
    init_from: str | None = None
    teacher: bool = False
    combination: bool = False
    table: str = "retrieval"
    rerank: bool = True

    @property
    def needs(self) -> tuple[str, ...]:
        return (self.init_from,) if self.init_from else ()


@dataclass(frozen=True)
class EnsembleRow:
    name: str
    family: str
    members: tuple[str, ...]
    combination: bool = False
    table: str = "retrieval"
    rerank: bool = True

    @property
    def needs(self) -> tuple[str, ...]:
        return self.members


@dataclass(frozen=True)
class ItmRow:
    """``first``'s top-:data:`ITM_K` re-scored by ``head_from``'s ITM head (both directions)."""

    name: str
    family: str
    first: str
    head_from: str
    combination: bool = True
    table: str = "retrieval"
    rerank: bool = False

    @property
    def needs(self) -> tuple[str, ...]:
        return (self.first, self.head_from)


@dataclass(frozen=True)
class VisaRow:
    """``first``'s text-to-image top-:data:`VISA_K` re-ranked by VISA (offline backends)."""

    name: str
    family: str
    first: str
    combination: bool = True
    table: str = "retrieval"
    media: str = "image"
    rerank: bool = False

    @property
    def needs(self) -> tuple[str, ...]:
        return (self.first,)


@dataclass(frozen=True)
class PromptRow:
    """Prompts on ``backbone``'s frozen model: ``recipe`` (a built-in prompt recipe) trained, or the
    hand-written ``"a photo of a <class>."`` when ``recipe`` is None."""

    name: str
    family: str
    backbone: str
    recipe: str | None = None
    combination: bool = False
    table: str = "prompts"
    rerank: bool = False

    @property
    def needs(self) -> tuple[str, ...]:
        return (self.backbone,)


Row = TrainRow | EnsembleRow | ItmRow | VisaRow | PromptRow


def _sgraf_rows() -> list[Row]:
    rows: list[Row] = []
    for head in ("sgr", "saf"):
        label = head.upper()
        base = (f"model.head.name={head}",)
        rows.append(TrainRow(label, "sgraf", "sgraf_synth_cpu", (*base, "losses.vsl.weight=0"), "precomp"))
        rows.append(TrainRow(f"{label} + VSL", "vsl", "sgraf_synth_cpu", base, "precomp"))
    rows.append(EnsembleRow("SGRAF (SGR + SAF)", "sgraf", ("SGR", "SAF")))
    rows.append(EnsembleRow("SGRAF + VSL", "vsl", ("SGR + VSL", "SAF + VSL")))
    return rows


RVLR_STAGE1 = "RVLR stage 1 (ITC + ITM)"
PROMPT_BACKBONE = "tiny ViT dual encoder (the prompts' frozen model)"
RVLR_STAGE2 = "RVLR stage 2 (+ distillation)"

_COMPOSED = "{image_tower: efficientnet-lite0, text_tower: minilm, embed_dim: 128, projection: linear}"
_ITM_HEAD = "{name: itm, dim: 128, layers: 1, heads: 4, dropout: 0.1, k_test: 16}"


def synthetic_rows() -> list[Row]:
    """The trained and ensembled rows of the synthetic suite, in table (and dependency) order."""
    rows: list[Row] = [
        TrainRow("cosine · tiny CNN", "cosine", "demo_tiny"),
        TrainRow("cosine · pretrained towers (composed)", "cosine", "demo_tiny", ("model.name=composed",)),
        TrainRow("cosine · tiny CNN + VSL", "vsl", "vsl_tiny_cnn"),
        *_sgraf_rows(),
        TrainRow("AVSE", "avse", "avse_synth_cpu"),
        TrainRow("AVSE + VSL", "vsl", "avse_synth_cpu", (f"losses.vsl={VSL_LOSS}",), combination=True),
        TrainRow(RVLR_STAGE1, "rvlr", "rvlr_stage1_synth_cpu"),
        TrainRow(RVLR_STAGE2, "rvlr", "rvlr_synth_cpu", init_from=RVLR_STAGE1, teacher=True),
        TrainRow(
            "RVLR distillation on pretrained towers",
            "rvlr",
            "rvlr_synth_cpu",
            ("model.name=composed", f"model.options={_COMPOSED}", f"model.head={_ITM_HEAD}"),
            teacher=True,
            combination=True,
        ),
        TrainRow(
            "video · meanP (tiny CNN frames)", "video", "video_meanp_synth_cpu", data="video", table="video"
        ),
        TrainRow(
            "video · temporal transformer", "video", "video_temporal_synth_cpu", data="video", table="video"
        ),
        # the prompt learners' frozen "CLIP": a tiny ViT dual encoder, a retrieval row of its own
        TrainRow(PROMPT_BACKBONE, "prompts", "tiny_vit_clip_synth_cpu", rerank=False),
        PromptRow("zero-shot (a photo of a <class>.)", "prompts", PROMPT_BACKBONE),
        PromptRow("CoOp", "prompts", PROMPT_BACKBONE, "coop_synth_cpu"),
        PromptRow("CoOp + TextRefiner", "prompts", PROMPT_BACKBONE, "textrefiner_synth_cpu"),
    ]
    return rows


#: families that a user's text-image dataset can run (no clips, no class benchmark)
DATASET_FAMILIES = tuple(f for f in FAMILIES if f not in ("video", "prompts"))

#: the real-data recipe sets: the papers' settings for Flickr30K and for COCO
RECIPE_SETS = ("f30k", "coco")


def dataset_rows(
    recipes: str = "f30k", precomp_only: bool = False, regions: bool = True, rerank_regions: bool = True
) -> list[Row]:
    """The synthetic suite's text-image rows with the papers' real-data recipes (``*_f30k`` or ``*_coco``)
    where a method has them; the cosine baselines and VSL on them keep their general recipes.

    ``precomp_only``: the data is region features without images, so only SGR and SAF (and their
    ensembles) run; ``regions``: whether SGR and SAF run on features written from the images, and
    ``rerank_regions`` whether their rankings get re-ranking rows."""
    if recipes not in RECIPE_SETS:
        raise ValueError(f"recipes must be one of {RECIPE_SETS}, not {recipes!r}")
    rerank = rerank_regions and not precomp_only
    region_rows: list[Row] = []
    for head in ("sgr", "saf"):
        label = head.upper()
        for name, family, recipe in ((label, "sgraf", head), (f"{label} + VSL", "vsl", f"{head}_vsl")):
            region_rows.append(TrainRow(name, family, f"{recipe}_{recipes}", data="precomp", rerank=rerank))
    region_rows.append(EnsembleRow("SGRAF (SGR + SAF)", "sgraf", ("SGR", "SAF"), rerank=rerank))
    region_rows.append(EnsembleRow("SGRAF + VSL", "vsl", ("SGR + VSL", "SAF + VSL"), rerank=rerank))
    if precomp_only:
        return region_rows
    regions_kept = region_rows if regions else []
    return [
        TrainRow("cosine · tiny CNN", "cosine", "demo_tiny"),
        TrainRow("cosine · pretrained towers (composed)", "cosine", "demo_tiny", ("model.name=composed",)),
        TrainRow("cosine · tiny CNN + VSL", "vsl", "vsl_tiny_cnn"),
        *regions_kept,
        TrainRow("AVSE", "avse", f"avse_{recipes}"),
        TrainRow("AVSE + VSL", "vsl", f"avse_{recipes}", (f"losses.vsl={VSL_LOSS}",), combination=True),
        TrainRow(RVLR_STAGE1, "rvlr", f"rvlr_stage1_{recipes}"),
        TrainRow(RVLR_STAGE2, "rvlr", f"rvlr_{recipes}", init_from=RVLR_STAGE1, teacher=True),
        TrainRow(
            "RVLR distillation on pretrained towers",
            "rvlr",
            f"rvlr_{recipes}",
            ("model.name=composed", f"model.options={_COMPOSED}", f"model.head={_ITM_HEAD}"),
            teacher=True,
            combination=True,
        ),
    ]


def with_rerankers(rows: list[Row], families: set[str]) -> list[Row]:
    """``rows`` of the picked families, each first stage followed by its ITM and VISA rows."""
    kept = [r for r in rows if r.family in families or _needed_by_picked(r, rows, families)]
    names = {r.name for r in kept}
    itm_source = RVLR_STAGE2 if RVLR_STAGE2 in names else None
    out: list[Row] = []
    for row in kept:
        out.append(row)
        if row.family not in families or not row.rerank:
            continue  # kept only because a picked row needs it, or not a first stage
        video = isinstance(row, TrainRow) and row.data == "video"
        own_itm = isinstance(row, TrainRow) and row.family == "rvlr"
        if "itm" in families and itm_source and not own_itm and not video:
            out.append(ItmRow(f"{row.name} + ITM re-rank (RVLR stage 2 head)", "itm", row.name, itm_source))
        if "visa" in families:
            media = "video" if video else "image"
            out.append(VisaRow(f"{row.name} + VISA", "visa", row.name, table=row.table, media=media))
    return out


def _needed_by_picked(row: Row, rows: list[Row], families: set[str]) -> bool:
    picked = [r for r in rows if r.family in families]
    wanted: set[str] = set()
    stack = [n for r in picked for n in r.needs]
    if "itm" in families:
        stack.append(RVLR_STAGE2)
    by_name = {r.name: r for r in rows}
    while stack:
        name = stack.pop()
        if name in wanted or name not in by_name:
            continue
        wanted.add(name)
        stack.extend(by_name[name].needs)
    return row.name in wanted


def run_order(rows: list[Row]) -> list[Row]:
    """``rows`` in a stable order in which every row comes after the rows it needs (an ITM row waits for
    the head it borrows)."""
    done: set[str] = set()
    ordered: list[Row] = []
    pending = list(rows)
    while pending:
        ready = [r for r in pending if all(n in done for n in r.needs)]
        if not ready:
            missing = {n for r in pending for n in r.needs} - done - {r.name for r in pending}
            raise ValueError(f"rows need rows that are not in the suite: {sorted(missing)}")
        first = ready[0]
        ordered.append(first)
        done.add(first.name)
        pending.remove(first)
    return ordered
