"""``vlret rerank visa | visa-merge | head``: re-rank a retriever's top-K."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlret.cli.common import (
    add_data_options,
    add_engine_options,
    add_video_option,
    check_engine,
    load_data,
    load_readable_data,
    model_for,
    parse_shard,
    vlret_command,
)
from vlret.errors import ConfigError


def _split(args: argparse.Namespace, readable: bool = False):
    """The dataset and its split; ``readable``: a model reads every image (see :func:`load_readable_data`)."""
    dataset = load_readable_data(args) if readable else load_data(args)
    name = args.split or "test"
    try:
        return dataset, dataset.split(name)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None


def _print_table(result: dict) -> None:
    base, visa = result["metrics"]["base"], result["metrics"]["visa"]
    print("| ranking | R@1 | R@5 | R@10 |\n|---|---|---|---|")
    for name, m in (("base", base), ("base + VISA", visa)):
        print(f"| {name} | {100 * m['t2i_r1']:.1f} | {100 * m['t2i_r5']:.1f} | {100 * m['t2i_r10']:.1f} |")


def cmd_visa(args: argparse.Namespace) -> int:
    from vlret.evaluate.score_files import load_score_matrix
    from vlret.rerank.visa.config import load_visa_config
    from vlret.rerank.visa.run import base_from_embeddings, base_from_scores, run_visa

    config = load_visa_config(args.config)
    # with --scores the rows and columns are the data's as written: nothing may be left out of them
    dataset, split = _split(args, readable=not args.scores)
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

        model = model_for(args.model, dataset, split.items[0].split, args.video_frames)
        encoded = encode_dataset(model, split, batch_size=args.batch_size)
        candidates, base_topk, base_ranks = base_from_embeddings(
            encoded.text_embeds, encoded.item_embeds, split, config.k, config.compat
        )
        source = {"model": model.identity()}
    check_engine(args)
    base = (split, candidates, base_topk, base_ranks, config, args.out)
    options = {"source": source, "query_limit": args.queries}
    if args.engine == "ray":
        from vlret.rerank.visa.ray_engine import run_visa_with_ray

        result = run_visa_with_ray(
            *base,
            workers=args.workers,
            address=args.address,
            threads_per_worker=args.threads_per_worker,
            **options,
        )
    else:
        result = run_visa(*base, parse_shard(args.shard), **options)
    if result is None:
        print(f"shard {args.shard} done; when every shard is done: {_merge_command(args)}")
        return 0
    _print_table(result)
    print(f"result written to {Path(args.out) / 'result.json'}")
    return 0


def _merge_command(args: argparse.Namespace) -> str:
    """The ``visa-merge`` command for this run, with every option that chose its data."""
    parts = [f"{vlret_command()} rerank visa-merge", f"--data {args.data}"]
    for flag, value in (("--split", args.split), ("--media-root", args.media_root)):
        if value:
            parts.append(f"{flag} {value}")
    if args.format != "auto":
        parts.append(f"--format {args.format}")
    parts.append(f"--out {args.out}")
    return " ".join(parts)


def cmd_visa_merge(args: argparse.Namespace) -> int:
    from vlret.data._io import read_json
    from vlret.rerank.visa.config import load_visa_config
    from vlret.rerank.visa.run import merge_visa

    run_file = Path(args.out) / "run.json"
    if not run_file.is_file():
        raise ConfigError(
            f"{args.out}: not a VISA run folder (no run.json); give the --out of `vlret rerank visa`"
        )
    recorded = read_json(run_file)["config"]
    config = load_visa_config(args.config) if args.config else load_visa_config(None, recorded)
    if config.to_dict() != recorded:
        raise ConfigError(
            f"--config {args.config}: the shards of {args.out} ran with another VISA config; leave --config out "
            "to merge with the one they recorded"
        )
    _, split = _split(args)
    result = merge_visa(split, config, args.out)
    _print_table(result)
    print(f"result written to {Path(args.out) / 'result.json'}")
    return 0


def cmd_head(args: argparse.Namespace) -> int:
    from vlret.data._io import write_json
    from vlret.evaluate import results_table
    from vlret.evaluate.reranked import evaluate_reranked
    from vlret.evaluate.score_files import load_score_matrix

    dataset = load_data(args)
    split = args.split or "test"
    model = model_for(args.model, dataset, split)
    if model.head.is_dot_product:
        raise ConfigError(
            f"{args.model}: its head is the cosine of the global embeddings, which ranks the top-k as the "
            "first stage already does; re-ranking needs a head that is not a dot product"
        )
    first_stage = None
    if args.scores:
        first_stage = load_score_matrix(args.scores)
    elif args.first_stage:
        first_stage = model_for(args.first_stage, dataset, split)
    result = evaluate_reranked(
        model,
        dataset,
        first_stage,
        k=args.k,
        protocol=args.protocol,
        split=args.split,
        direction=args.direction,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        scores_source=args.scores,
        on_error=args.on_error,
    )
    if args.out:
        write_json(args.out, result)
    first = {**result, "metrics": result["first_stage"]["metrics"]}
    print(results_table([first, result], ["first stage", f"re-ranked by {model.head.name} (top {args.k})"]))
    if args.out:
        print(f"result written to {args.out}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    rerank = commands.add_parser("rerank", help="re-rank a retriever's top-K (VISA, a similarity head)")
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
    visa.add_argument(
        "--shard",
        help="i/n: this process's share of the work, split by unit: every n-th distinct candidate item "
        "described, every n-th query asked and answered",
    )
    add_engine_options(visa, "merge them")
    visa.add_argument("--queries", type=int, help="only the first N queries (smoke runs)")
    visa.add_argument("--batch-size", type=int, default=64)
    add_data_options(visa)
    add_video_option(visa)
    visa.set_defaults(func=cmd_visa)

    merge = rerank_cmds.add_parser("visa-merge", help="join the shards of a VISA run, fuse and evaluate")
    merge.add_argument("--data", required=True)
    merge.add_argument("--split")
    merge.add_argument("--config", help="default: the config the shards recorded in OUT/run.json")
    merge.add_argument("--out", required=True)
    add_data_options(merge)
    merge.set_defaults(func=cmd_visa_merge)

    from vlret.evaluate.defaults import DEFAULT_K
    from vlret.evaluate.protocols import DIRECTIONS, PROTOCOLS

    head = rerank_cmds.add_parser(
        "head",
        help="re-score a first stage's top-k with a model's similarity head (ITM k_test), both directions",
    )
    head.add_argument("--model", required=True, help="the re-ranking model (its head scores the top-k)")
    first = head.add_mutually_exclusive_group()
    first.add_argument("--first-stage", help="model whose embeddings give the top-k (default: --model's own)")
    first.add_argument("--scores", help=".npy first-stage score matrix (captions x items of the split)")
    head.add_argument(
        "-k", "--k", type=int, default=DEFAULT_K, help=f"candidates per query (default {DEFAULT_K})"
    )
    head.add_argument("--data", required=True, help="annotation file or folder")
    head.add_argument("--split", help="split to evaluate (default: the protocol's, test)")
    head.add_argument("--protocol", default="generic", choices=list(PROTOCOLS))
    head.add_argument("--direction", default="both", choices=list(DIRECTIONS))
    head.add_argument("--out", help="write the result JSON here")
    head.add_argument("--batch-size", type=int, default=64)
    head.add_argument("--cache-dir", help="feature cache folder (default ~/.cache/vlret/features)")
    head.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    add_data_options(head)
    head.set_defaults(func=cmd_head)
