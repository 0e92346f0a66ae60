"""``vlret eval`` and ``vlret results table``: run a protocol, aggregate result files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlret.cli.common import MODEL_HELP, add_data_options, add_video_option, load_data, model_for


def cmd_eval(args: argparse.Namespace) -> int:
    from vlret.data._io import write_json
    from vlret.devices import pick_device
    from vlret.evaluate import evaluate_model, evaluate_scores, results_table
    from vlret.evaluate.api import evaluate_ensemble
    from vlret.evaluate.score_files import load_score_matrix

    dataset = load_data(args)
    if args.ensemble:
        models = [model_for(name, dataset, args.split or "test", args.video_frames) for name in args.ensemble]
        for model in models:
            model.to(pick_device(args.device))
        result = evaluate_ensemble(
            models,
            dataset,
            args.protocol,
            args.split,
            args.direction,
            batch_size=args.batch_size,
            cache_dir=args.cache_dir,
            score_dir=args.score_dir,
            ties=args.ties,
        )
    elif args.scores:
        scores = load_score_matrix(args.scores)
        result = evaluate_scores(
            scores,
            dataset,
            args.protocol,
            args.split,
            args.direction,
            args.scores,
            args.item_to_text,
            args.ties,
        )
    else:
        model = model_for(args.model, dataset, args.split or "test", args.video_frames)
        model.to(pick_device(args.device))
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
            score_dir=args.score_dir,
            relevance=args.relevance,
            mixed_mode=args.mixed_mode,
            item_rule=args.item_to_text,
            ties=args.ties,
        )
    if args.out:
        write_json(args.out, result)
    print(results_table([result]))
    for s in result["skipped"]:
        print(f"skipped {s['file']} {s['record']}: {s['reason']}", file=sys.stderr)
    if args.out:
        print(f"result written to {args.out}")
    return 0


def cmd_results_table(args: argparse.Namespace) -> int:
    from vlret.evaluate.results import load_result, results_table

    results = [load_result(f) for f in args.files]
    names = [Path(f).stem for f in args.files] if args.by_file else None
    print(results_table(results, names))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    from vlret.evaluate.protocols import DIRECTIONS, PROTOCOLS

    ev = commands.add_parser("eval", help="evaluate a model or a score matrix with a retrieval protocol")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help=MODEL_HELP)
    source.add_argument("--scores", help=".npy score matrix (captions x items of the split; higher = better)")
    source.add_argument(
        "--ensemble",
        nargs="+",
        metavar="MODEL",
        help="the mean of several models' score matrices (SGRAF: an SGR and a SAF model), read from the score "
        "store where an earlier evaluation left them",
    )
    ev.add_argument("--data", required=True, help="annotation file or folder")
    ev.add_argument("--split", help="split to evaluate (default: the protocol's, test)")
    ev.add_argument("--protocol", default="generic", choices=list(PROTOCOLS))
    ev.add_argument("--direction", default="both", choices=list(DIRECTIONS), help="t2i: text->visual only")
    ev.add_argument("--out", help="write the result JSON here")
    ev.add_argument(
        "--relevance",
        help="add single-modal and mixed-gallery NDCG@10/20/50 graded by caption relevance: rouge-l "
        "(built and cached) or a [captions x items] .npy file (RVLR / TERAN's released matrices)",
    )
    ev.add_argument(
        "--mixed-mode",
        choices=["clean", "compat"],
        default="clean",
        help="mixed gallery: clean (one score scale, untransposed) or compat (RVLR's code)",
    )
    ev.add_argument(
        "--item-to-text",
        choices=["captions", "items"],
        help="item->text ranks: captions (every wrong caption counts; images' default, VSE++/SCAN) or items "
        "(one entry per other item; videos' default, CLIP4Clip's MSVD video->text)",
    )
    ev.add_argument(
        "--ties",
        choices=["pessimistic", "optimistic", "released"],
        default="pessimistic",
        help="a wrong entry scoring the same as the right one: counts against the model (pessimistic), does "
        "not count (optimistic), or as the protocol's released code ranks it (released: SCAN's argsort for "
        "images, CLIP4Clip's compute_metrics for videos)",
    )
    ev.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: the GPU when one is visible"
    )
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument(
        "--cache-dir", help="feature cache folder (default ~/.cache/vlret/features or $VLRET_CACHE)"
    )
    ev.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    ev.add_argument(
        "--score-dir",
        help="where heavy heads' score matrices are stored (default ~/.cache/vlret/scores or $VLRET_CACHE/scores)",
    )
    add_data_options(ev)
    add_video_option(ev)
    ev.set_defaults(func=cmd_eval)

    results = commands.add_parser("results", help="aggregate result files")
    results_cmds = results.add_subparsers(dest="results_command", required=True)
    table = results_cmds.add_parser("table", help="print a markdown table of result files")
    table.add_argument("files", nargs="+")
    table.add_argument("--by-file", action="store_true", help="name rows by file instead of by model")
    table.set_defaults(func=cmd_results_table)
