"""The ``vlret`` command line: ``vlret data ...``, ``vlret eval``, ``vlret results table``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vlret.errors import ConfigError, VlretError


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", default="auto", help="karpathy, lavis, csv, vse, or auto (default)")
    p.add_argument(
        "--media-root", help="folder the media paths are relative to (default: beside the annotations)"
    )
    p.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default="raise",
        help="stop at a bad record, or skip and list it",
    )
    p.add_argument("--path-column", default="image", help="CSV: column with the media path")
    p.add_argument("--caption-column", default="caption", help="CSV: column with the caption")
    p.add_argument("--split-column", default="split", help="CSV: column with the split (optional)")
    p.add_argument("--default-split", default="test", help="CSV: split of rows without a split column")
    p.add_argument(
        "--encoding", default="utf-8", help="CSV: text encoding (default UTF-8, with or without BOM)"
    )


def _load(args: argparse.Namespace):
    from vlret.data import detect_format, load_dataset

    fmt = detect_format(args.data) if args.format == "auto" else args.format
    options = {}
    if fmt == "csv":
        options = {
            "path_column": args.path_column,
            "caption_column": args.caption_column,
            "split_column": args.split_column,
            "default_split": args.default_split,
            "encoding": args.encoding,
        }
    return load_dataset(args.data, fmt, args.media_root, args.on_error, **options)


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


# ----- vlret data ---------------------------------------------------------------------------------------


def cmd_data_stats(args: argparse.Namespace) -> int:
    from vlret.data.images import check_media

    dataset = _load(args)
    if args.check_media:
        dataset = check_media(dataset, args.on_error)
    stats = dataset.stats()
    stats["skipped_records"] = [s.as_dict() for s in dataset.skipped]
    _print_json(stats)
    return 0


def cmd_data_convert(args: argparse.Namespace) -> int:
    from vlret.data import write_karpathy

    dataset = _load(args)
    write_karpathy(dataset, args.out)
    print(f"wrote {len(dataset.items)} items, {len(dataset.captions)} captions to {args.out}")
    for s in dataset.skipped:
        print(f"skipped {s.file} {s.record}: {s.reason}", file=sys.stderr)
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from vlret.data.synth import SynthConfig, write_benchmark

    cfg = SynthConfig(images=args.images, seed=args.seed, size=args.size, difficulty=args.difficulty)
    path = write_benchmark(args.out, cfg, force=args.force)
    print(path)
    return 0


# ----- vlret eval ---------------------------------------------------------------------------------------


def _model_for(name: str, dataset, split: str):
    from vlret.models import create_model
    from vlret.models.registry import is_model_reference

    if is_model_reference(name):
        return create_model(name)
    # A fresh tiny model builds its vocabulary from the training captions (or the evaluated split's).
    source = "train" if "train" in dataset.splits else split
    return create_model(name, captions=[c.text for c in dataset.split(source).captions])


def cmd_eval(args: argparse.Namespace) -> int:
    from vlret.data._io import write_json
    from vlret.evaluate import evaluate_model, evaluate_scores, results_table
    from vlret.evaluate.score_files import load_score_matrix

    dataset = _load(args)
    if args.scores:
        scores = load_score_matrix(args.scores)
        result = evaluate_scores(
            scores, dataset, args.protocol, args.split, args.direction, source=args.scores
        )
    else:
        model = _model_for(args.model, dataset, args.split or "test")
        result = evaluate_model(
            model,
            dataset,
            args.protocol,
            args.split,
            args.direction,
            batch_size=args.batch_size,
            cache_dir=args.cache_dir,
            use_cache=not args.no_cache,
            on_error=args.on_error,
        )
    if args.out:
        write_json(args.out, result)
    print(results_table([result]))
    for s in result["skipped"]:
        print(f"skipped {s['file']} {s['record']}: {s['reason']}", file=sys.stderr)
    if args.out:
        print(f"result written to {args.out}")
    return 0


# ----- vlret train --------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from vlret.train import Trainer, load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    trainer = Trainer(recipe, resume=args.resume, progress=not args.quiet, resume_anyway=args.resume_anyway)
    summary = trainer.fit()
    if trainer.info.is_main:  # under torchrun, one summary
        _print_json(summary)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vlret.demo import run_demo

    outcome = run_demo(args.out, args.data_dir, args.overrides, progress=not args.quiet, images=args.images)
    print()
    print(outcome["table"])
    print()
    for name, path in outcome["results"].items():
        print(f"result ({name}): {path}")
    print(f"report: {outcome['report']}")
    print(f"index of the test images: {outcome['index']}")
    print(f"search it in a browser:   vlret serve {outcome['index']}   (then open http://127.0.0.1:8000/)")
    print(f'or from the shell:        vlret search {outcome["index"]} "a large red circle"')
    return 0


# ----- vlret rerank -------------------------------------------------------------------------------------


def _parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return (0, 1)
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= index < count:
        raise ConfigError(f"--shard {text!r}: need 0 <= i < n")
    return index, count


def _visa_split(args: argparse.Namespace):
    dataset = _load(args)
    name = args.split or "test"
    try:
        return dataset, dataset.split(name)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None


def _print_visa(result: dict) -> None:
    base, visa = result["metrics"]["base"], result["metrics"]["visa"]
    print("| ranking | R@1 | R@5 | R@10 |\n|---|---|---|---|")
    for name, m in (("base", base), ("base + VISA", visa)):
        print(f"| {name} | {100 * m['t2i_r1']:.1f} | {100 * m['t2i_r5']:.1f} | {100 * m['t2i_r10']:.1f} |")


def cmd_rerank_visa(args: argparse.Namespace) -> int:
    from vlret.evaluate.score_files import load_score_matrix
    from vlret.rerank.visa.config import load_visa_config
    from vlret.rerank.visa.run import base_from_embeddings, base_from_scores, run_visa

    config = load_visa_config(args.config)
    dataset, split = _visa_split(args)
    if args.scores:
        scores = load_score_matrix(args.scores)
        expected = (len(split.captions), len(split.items))
        if tuple(scores.shape) != expected:
            raise ConfigError(
                f"{args.scores}: shape {tuple(scores.shape)}; expected (captions, items) = {expected}"
            )
        candidates, base_topk, base_ranks = base_from_scores(
            scores, split, config.k, config.compat, source=args.scores
        )
        source = {"scores": args.scores}
    else:
        from vlret.evaluate.encode import encode_dataset

        model = _model_for(args.model, dataset, split.items[0].split)
        encoded = encode_dataset(model, split, batch_size=args.batch_size)
        candidates, base_topk, base_ranks = base_from_embeddings(
            encoded.text_embeds, encoded.item_embeds, split, config.k, config.compat
        )
        source = {"model": model.identity()}
    result = run_visa(
        split,
        candidates,
        base_topk,
        base_ranks,
        config,
        args.out,
        _parse_shard(args.shard),
        source=source,
        query_limit=args.queries,
    )
    if result is None:
        print(
            f"shard {args.shard} done; when every shard is done: vlret rerank visa-merge --data {args.data} --out {args.out}"
        )
        return 0
    _print_visa(result)
    print(f"result written to {Path(args.out) / 'result.json'}")
    return 0


def cmd_rerank_visa_merge(args: argparse.Namespace) -> int:
    from vlret.rerank.visa.config import load_visa_config
    from vlret.rerank.visa.run import merge_visa

    config = load_visa_config(args.config)
    _, split = _visa_split(args)
    result = merge_visa(split, config, args.out)
    _print_visa(result)
    print(f"result written to {Path(args.out) / 'result.json'}")
    return 0


# ----- vlret index / search -----------------------------------------------------------------------------


def cmd_index_build(args: argparse.Namespace) -> int:
    from vlret.index import build_index

    dataset = None
    if args.data:
        dataset = _load(args)
        if args.split:
            dataset = dataset.split(args.split)
    budget = int(args.memory_gb * 2**30) if args.memory_gb else None
    path = build_index(
        args.model,
        args.out,
        images=args.images,
        dataset=dataset,
        chunk_size=args.chunk_size,
        memory_budget_bytes=budget,
        on_error=args.on_error,
    )
    meta = json.loads((path / "index.json").read_text())
    print(
        f"index {path}: {meta['items']} items, {meta['captions']} captions, {meta['choice']['kind']} ({meta['choice']['reason']})"
    )
    for s in meta["skipped"]:
        print(f"skipped {s['file']}: {s['reason']}", file=sys.stderr)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from vlret.index import Searcher

    searcher = Searcher(args.index)
    if (args.query is None) == (args.image is None):
        raise ConfigError("give a query text or --image PATH (one of them)")
    if args.image:
        hits = (
            searcher.image_to_text(args.image, args.k)
            if args.target == "captions"
            else searcher.image_to_image(args.image, args.k)
        )
    else:
        hits = (
            searcher.text_to_text(args.query, args.k)
            if args.target == "captions"
            else searcher.text_to_image(args.query, args.k)
        )
    if args.json:
        _print_json([h.as_dict() for h in hits])
        return 0
    for h in hits:
        print(f"{h.rank:>3}  {h.score:.4f}  {h.path or h.text}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from vlret.serve import create_app

    app = create_app(
        args.index,
        visa_config=args.visa_config,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_k=args.max_k,
        max_upload_pixels=int(args.max_upload_megapixels * 1e6),
        visa_timeout=args.visa_timeout,
    )
    print(f"serving {args.index} on http://{args.host}:{args.port}/  (API docs: /docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_results_table(args: argparse.Namespace) -> int:
    from vlret.evaluate.results import load_result, results_table

    results = [load_result(f) for f in args.files]
    names = [Path(f).stem for f in args.files] if args.by_file else None
    print(results_table(results, names))
    return 0


# ----- parser -------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from vlret import __version__
    from vlret.data.synth import SynthConfig
    from vlret.evaluate.protocols import DIRECTIONS, PROTOCOLS

    parser = argparse.ArgumentParser(prog="vlret", description="Text-visual retrieval toolkit.")
    parser.add_argument("--version", action="version", version=f"vlret {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="read, check, convert and synthesise datasets")
    data_cmds = data.add_subparsers(dest="data_command", required=True)
    stats = data_cmds.add_parser("stats", help="counts per split; --check-media opens every image")
    stats.add_argument("data", help="annotation file or folder")
    stats.add_argument(
        "--check-media", action="store_true", help="open every media file and report unreadable ones"
    )
    _add_data_options(stats)
    stats.set_defaults(func=cmd_data_stats)
    convert = data_cmds.add_parser("convert", help="convert any supported format to Karpathy JSON")
    convert.add_argument("data", help="annotation file or folder")
    convert.add_argument("--out", required=True, help="output Karpathy JSON file")
    _add_data_options(convert)
    convert.set_defaults(func=cmd_data_convert)
    synth = data_cmds.add_parser("synth", help="write the synthetic benchmark (images + Karpathy JSON)")
    synth.add_argument("--out", required=True, help="output folder")
    d = SynthConfig()
    synth.add_argument("--images", type=int, default=d.images, help=f"number of images (default {d.images})")
    synth.add_argument("--seed", type=int, default=d.seed)
    synth.add_argument("--size", type=int, default=d.size, help=f"image side in pixels (default {d.size})")
    synth.add_argument(
        "--difficulty", type=float, default=d.difficulty, help=f"0 (easy) .. 1 (hard), default {d.difficulty}"
    )
    synth.add_argument(
        "--force", action="store_true", help="rewrite even if the folder holds the same benchmark"
    )
    synth.set_defaults(func=cmd_data_synth)

    ev = commands.add_parser("eval", help="evaluate a model or a score matrix with a retrieval protocol")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model", help="tiny-cnn, tiny-vit, hf:<id or folder>, or a saved vlret model folder"
    )
    source.add_argument("--scores", help=".npy score matrix (captions x items of the split; higher = better)")
    ev.add_argument("--data", required=True, help="annotation file or folder")
    ev.add_argument("--split", help="split to evaluate (default: the protocol's, test)")
    ev.add_argument("--protocol", default="generic", choices=list(PROTOCOLS))
    ev.add_argument("--direction", default="both", choices=list(DIRECTIONS), help="t2i: text->visual only")
    ev.add_argument("--out", help="write the result JSON here")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument(
        "--cache-dir", help="feature cache folder (default ~/.cache/vlret/features or $VLRET_CACHE)"
    )
    ev.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    _add_data_options(ev)
    ev.set_defaults(func=cmd_eval)

    train = commands.add_parser("train", help="train a model from a YAML recipe")
    train.add_argument("--recipe", help="YAML recipe (default: the built-in defaults)")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=3 optim.lr=1e-4")
    train.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoints/last")
    train.add_argument(
        "--resume-anyway",
        action="store_true",
        help="resume even if the recipe differs from the one the run was started with",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    demo = commands.add_parser(
        "demo", help="synthesise, train the tiny model, evaluate, report (about 5 min)"
    )
    demo.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    demo.add_argument("--data-dir", default="data/synth", help="where the synthetic benchmark is written")
    demo.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.epochs=1")
    demo.add_argument("--images", type=int, help="benchmark size (default: the calibrated 5000)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)

    rerank = commands.add_parser("rerank", help="re-rank a retriever's top-K (VISA)")
    rerank_cmds = rerank.add_subparsers(dest="rerank_command", required=True)
    visa = rerank_cmds.add_parser(
        "visa", help="VISA: descriptions, questions, answers, text relevance, fusion"
    )
    visa_source = visa.add_mutually_exclusive_group(required=True)
    visa_source.add_argument("--scores", help=".npy base score matrix (captions x items of the split)")
    visa_source.add_argument("--model", help="compute the base scores with this model instead")
    visa.add_argument("--data", required=True, help="annotation file or folder")
    visa.add_argument("--split", help="split to re-rank (default test)")
    visa.add_argument("--config", help="VISA YAML (default: offline synthetic backends)")
    visa.add_argument("--out", required=True, help="run folder: caches, arrays, result.json")
    visa.add_argument("--shard", help="i/n: this process's share of the queries")
    visa.add_argument("--queries", type=int, help="only the first N queries (smoke runs)")
    visa.add_argument("--batch-size", type=int, default=64)
    _add_data_options(visa)
    visa.set_defaults(func=cmd_rerank_visa)
    merge = rerank_cmds.add_parser("visa-merge", help="join the shards of a VISA run, fuse and evaluate")
    merge.add_argument("--data", required=True)
    merge.add_argument("--split")
    merge.add_argument("--config")
    merge.add_argument("--out", required=True)
    _add_data_options(merge)
    merge.set_defaults(func=cmd_rerank_visa_merge)

    index = commands.add_parser("index", help="build a searchable index of a collection")
    index_cmds = index.add_subparsers(dest="index_command", required=True)
    build = index_cmds.add_parser(
        "build", help="encode a folder of images or a dataset (resumable) and index it"
    )
    build.add_argument("--model", required=True, help="a saved vlret model folder or hf:<id or folder>")
    build_source = build.add_mutually_exclusive_group(required=True)
    build_source.add_argument("--images", help="folder of images (searched recursively)")
    build_source.add_argument("--data", help="annotation file or folder (captions are indexed too)")
    build.add_argument("--split", help="with --data: only this split")
    build.add_argument("--out", required=True, help="index path (a link to the current version)")
    build.add_argument("--chunk-size", type=int, default=1024, help="images per resumable chunk")
    build.add_argument("--memory-gb", type=float, help="memory budget for the index (chooses compression)")
    _add_data_options(build)
    build.set_defaults(func=cmd_index_build)
    search = commands.add_parser("search", help="search an index by text or by image")
    search.add_argument("index")
    search.add_argument("query", nargs="?", help="query text")
    search.add_argument("--image", help="query image file")
    search.add_argument("--target", choices=["images", "captions"], default="images", help="what to return")
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--json", action="store_true")
    search.set_defaults(func=cmd_search)

    serve = commands.add_parser("serve", help="serve an index over HTTP with a web page")
    serve.add_argument("index")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--visa-config", help="VISA YAML: enables the re-ranking toggle")
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload in MiB (default 10)")
    serve.add_argument(
        "--max-upload-megapixels",
        type=float,
        default=50.0,
        help="largest upload in declared pixels, checked before decoding (default 50 million)",
    )
    serve.add_argument("--max-k", type=int, default=100)
    serve.add_argument(
        "--visa-timeout",
        type=float,
        default=60.0,
        help="seconds a request may spend on VISA before the base ranking is answered (default 60)",
    )
    serve.set_defaults(func=cmd_serve)

    results = commands.add_parser("results", help="aggregate result files")
    results_cmds = results.add_subparsers(dest="results_command", required=True)
    table = results_cmds.add_parser("table", help="print a markdown table of result files")
    table.add_argument("files", nargs="+")
    table.add_argument("--by-file", action="store_true", help="name rows by file instead of by model")
    table.set_defaults(func=cmd_results_table)
    return parser


def _is_override(token: str) -> bool:
    key = token.split("=", 1)[0]
    return "=" in token and bool(key) and all(part.isidentifier() for part in key.split("."))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides are accepted wherever they appear."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras and hasattr(args, "overrides") and all(_is_override(t) for t in extras):
        args.overrides = [*args.overrides, *extras]
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return args.func(args)
    except VlretError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
