"""``vlret index build``, ``vlret search`` and ``vlret serve``: index a collection and search it."""

from __future__ import annotations

import argparse
import json
import sys

from vlret.cli.common import (
    TRAINED_MODEL_HELP,
    add_data_options,
    add_engine_options,
    add_video_option,
    check_engine,
    load_data,
    parse_shard,
    print_json,
    vlret_command,
)
from vlret.errors import ConfigError


def on_error_for(args: argparse.Namespace) -> str:
    """``--on-error`` as given, else ``skip`` for a folder of images or videos and ``raise`` for a dataset."""
    if args.on_error is not None:
        return args.on_error
    return "skip" if (args.images or args.videos) else "raise"


#: skipped files named on the terminal; the rest are in index.json
SKIPPED_SHOWN = 3


def report_skipped(path, skipped: list[dict]) -> None:
    """How many files the build skipped, the first few with why, and where the full list is."""
    if not skipped:
        return
    shown = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:SKIPPED_SHOWN])
    more = f"; and {len(skipped) - SKIPPED_SHOWN} more" if len(skipped) > SKIPPED_SHOWN else ""
    print(
        f'skipped {len(skipped)} unreadable file(s): {shown}{more}. The full list is under "skipped" in '
        f"{path}/index.json; --on-error raise stops at the first instead",
        file=sys.stderr,
    )


def cmd_index_build(args: argparse.Namespace) -> int:
    from vlret.index import build_index

    args.on_error = on_error_for(args)
    if args.embeddings:
        return _index_from_embeddings(args)
    dataset = None
    if args.webdataset:  # the data option, with the format said
        args.data, args.format = args.webdataset, "webdataset"
    if args.data:
        dataset = load_data(args)
        if args.split:
            dataset = dataset.split(args.split)
    budget = _memory_budget(args.memory_gb)
    build = build_index
    check_engine(args)
    if args.engine == "ray":
        from functools import partial

        from vlret.index.ray_engine import build_with_ray

        build = partial(
            build_with_ray,
            workers=args.workers,
            address=args.address,
            gpus_per_worker=args.gpus_per_worker,
            threads_per_worker=args.threads_per_worker,
        )
    path = build(
        args.model,
        args.out,
        images=args.images,
        videos=args.videos,
        video=None if args.video_frames is None else {"frames": args.video_frames},
        dataset=dataset,
        chunk_size=args.chunk_size,
        memory_budget_bytes=budget,
        on_error=args.on_error,
        first_stage=args.first_stage,
        shortlist=args.shortlist,
        token_dtype=args.token_dtype,
        on_disk=args.on_disk,
        rebuild=args.rebuild,
        retrain=args.retrain,
        verify=args.verify,
        allow_mass_removal=args.allow_mass_removal,
        **({"shard": parse_shard(args.shard)} if args.shard else {}),
    )
    if path is None:
        print(
            f"shard {args.shard} of {args.out}: its chunks are encoded; other shards' are still missing. The last "
            "shard to finish assembles the index; or run the same command without --shard once they are done "
            "(it encodes only what is missing, then assembles)"
        )
        return 0
    meta = json.loads((path / "index.json").read_text())
    where = ", on disk" if meta.get("storage") == "on_disk" else ""
    print(
        f"index {path}: {meta['items']} items, {meta['captions']} captions, {meta['choice']['kind']}{where} "
        f"({meta['choice']['reason']})"
    )
    if meta.get("retrain_due"):
        print(f"note: {meta['retrain_due']}", file=sys.stderr)
    if "two_stage" in meta:
        stage = meta["two_stage"]
        print(
            f"two-stage: {stage['shortlist']} candidates by cosine, re-scored by the {stage['head']['name']} head"
        )
    report_skipped(path, meta["skipped"])
    for warning in meta.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _memory_budget(memory_gb: float | None) -> int | None:
    """``--memory-gb`` in bytes (None: no budget), a positive number of GiB."""
    import math

    if memory_gb is None:
        return None
    if not (math.isfinite(memory_gb) and memory_gb > 0):
        raise ConfigError(f"--memory-gb must be a positive number of GiB, not {memory_gb}")
    return int(memory_gb * 2**30)


def _index_from_embeddings(args: argparse.Namespace) -> int:
    from vlret.index.clip_retrieval import import_embeddings

    budget = _memory_budget(args.memory_gb)
    path = import_embeddings(
        args.model,
        args.embeddings,
        args.out,
        args.media_root,
        args.on_disk,
        memory_budget_bytes=budget,
        rebuild=args.rebuild,
        retrain=args.retrain,
        allow_mass_removal=args.allow_mass_removal,
    )
    meta = json.loads((path / "index.json").read_text())
    print(f"index {path}: {meta['items']} items from {args.embeddings}, {meta['choice']['kind']}")
    if meta["outside_media_root"]:
        print(
            f"{meta['outside_media_root']} of them lie outside the media root {meta['media_root']}: indexed and "
            "searchable, their files never served",
            file=sys.stderr,
        )
    return 0


def cmd_index_watch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vlret.index.watch import watch_folder

    model = args.model
    if model is None:
        meta_file = Path(args.index) / "index.json"
        if not meta_file.is_file():
            raise ConfigError(
                f"{args.index} is not an index yet: give --model to build it from {args.folder}"
            )
        model = json.loads(meta_file.read_text())["model"]
    if not Path(args.folder).is_dir():
        raise ConfigError(
            f"{args.folder}: not a folder (vlret index watch follows a folder of images or videos)"
        )
    if not args.settle >= 0:
        raise ConfigError(f"--settle must be a number of seconds >= 0, not {args.settle}")
    if args.stop_after is not None and args.stop_after < 1:
        raise ConfigError(f"--stop-after must be a number of updates >= 1, not {args.stop_after}")
    print(f"watching {args.folder} for {args.index} (Ctrl-C stops)", file=sys.stderr, flush=True)
    published = watch_folder(
        args.folder,
        args.index,
        model,
        videos=args.videos,
        settle=args.settle,
        poll=args.poll,
        max_updates=args.stop_after,
        on_error=args.on_error,
        memory_budget_bytes=_memory_budget(args.memory_gb),
    )
    print(f"{published} update(s) published to {args.index}")
    return 0


def cmd_index_export(args: argparse.Namespace) -> int:
    if args.format == "qdrant":
        from vlret.index.qdrant import export_to_qdrant

        if not args.qdrant:
            raise ConfigError("--format qdrant: give --qdrant URL (a server) or FOLDER (embedded local mode)")
        collection, points = export_to_qdrant(args.index, args.qdrant, args.collection)
        print(f"{args.qdrant}: collection {collection!r} holds {points} points")
        print(
            f"search through it: {vlret_command()} search {args.index} --qdrant {args.qdrant} --collection {collection} TEXT"
        )
        return 0
    from vlret.index.clip_retrieval import export_embeddings

    if not args.out:
        raise ConfigError("--format clip-retrieval: give --out FOLDER")
    parts = export_embeddings(args.index, args.out, args.dtype)
    print(
        f"{args.out}: {len(parts)} part(s) of embeddings (img_emb/) and metadata (metadata/), clip-retrieval's layout"
    )
    return 0


def add_qdrant_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--qdrant", help="a Qdrant server URL (http://host:6333) or a folder (its embedded local mode)"
    )
    parser.add_argument("--collection", help="the Qdrant collection (default: the index's name)")


def item_vectors(args: argparse.Namespace):
    """What ``Searcher(item_vectors=...)`` takes for ``--qdrant``, or None."""
    if not args.qdrant:
        return None
    from functools import partial

    from vlret.index.qdrant import QdrantVectors, default_collection

    return partial(QdrantVectors, args.qdrant, args.collection or default_collection(args.index))


def _query_texts(args: argparse.Namespace) -> list[str]:
    """The query texts: those given on the line, then those of ``--queries FILE`` (one per line)."""
    from pathlib import Path

    texts = list(args.query)
    if args.queries:
        path = Path(args.queries)
        if not path.is_file():
            what = "a folder, not a file" if path.is_dir() else "file not found"
            raise ConfigError(f"--queries {path}: {what} (one query text per line)")
        lines = path.read_text(encoding="utf-8").splitlines()
        texts += [line.strip() for line in lines if line.strip()]
        if not any(line.strip() for line in lines):
            raise ConfigError(f"--queries {path}: no query in it (one query text per line)")
    return texts


def cmd_search(args: argparse.Namespace) -> int:
    from vlret.index import Searcher

    texts, images = _query_texts(args), list(args.image or [])
    if bool(texts) == bool(images):
        raise ConfigError("give query texts (or --queries FILE) or --image PATH, not both and not neither")
    searcher = Searcher(args.index, item_vectors=item_vectors(args))
    # every query is encoded in one model call: the model is loaded once, however many there are
    queries = searcher.text_queries(texts) if texts else searcher.image_queries(images)
    find = searcher.caption_hits if args.target == "captions" else searcher.image_hits
    answers = [(label, find(query, args.k)) for label, query in zip(texts or images, queries, strict=True)]
    for text in texts:
        unknown = searcher.unknown_words(text)
        if unknown:
            print(
                f"note: the model does not know {', '.join(unknown)} (each is read as one unknown word)",
                file=sys.stderr,
            )
    for warning in searcher.meta.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        if len(answers) == 1:
            print_json([h.as_dict() for h in answers[0][1]])
        else:
            print_json([{"query": label, "hits": [h.as_dict() for h in hits]} for label, hits in answers])
        return 0
    for label, hits in answers:
        if len(answers) > 1:
            print(f"# {label}")
        for h in hits:
            first = "" if h.first_stage_score is None else f"  (shortlist {h.first_stage_score:.4f})"
            print(f"{h.rank:>3}  {h.score:.4f}  {h.path or h.text}{first}")
    return 0


def check_serve_options(args: argparse.Namespace) -> None:
    """Every serve setting, checked before anything is loaded or printed."""
    import math
    import socket

    for flag, value, low, inclusive in (
        ("--workers", args.workers, 1, True),
        ("--max-k", args.max_k, 1, True),
        ("--max-upload-mb", args.max_upload_mb, 0, False),
        ("--max-upload-megapixels", args.max_upload_megapixels, 0, False),
        ("--check-every", args.check_every, 0, True),
        ("--visa-timeout", args.visa_timeout, 0, False),
    ):
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            bound = f"at least {low}" if inclusive else f"more than {low}"
            raise ConfigError(f"{flag} must be a number {bound}, not {value}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0 to 65535 (0: any free port), not {args.port}")
    try:
        socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"--host {args.host}: no address of this machine by that name ({exc})") from None
    if args.qdrant and args.workers > 1 and not args.qdrant.startswith(("http://", "https://")):
        raise ConfigError(
            f"--qdrant {args.qdrant} is a folder: Qdrant's embedded local mode opens it from one process, so it "
            "serves with --workers 1; for replicas give a Qdrant server URL (http://host:6333)"
        )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from vlret.serve import create_app

    check_serve_options(args)
    settings = {
        "index": args.index,
        "visa_config": args.visa_config,
        "max_upload_bytes": int(args.max_upload_mb * 2**20),
        "max_k": args.max_k,
        "max_upload_pixels": int(args.max_upload_megapixels * 1e6),
        "visa_timeout": args.visa_timeout,
        "prompts": args.prompts,
        "check_every": args.check_every,
        "qdrant": args.qdrant,
        "qdrant_collection": args.collection,
    }
    if args.workers == 1:
        app = create_app(**settings)  # built here: a bad index or config fails before the server starts
        for warning in app.state.service.searcher.meta.get("warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
        print(f"serving {args.index} on http://{args.host}:{args.port}/  (API docs: /docs)")
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        return 0
    from vlret.serve.replicas import run_replicas

    create_app(**settings).state.service.close()  # check the index and settings once, before the workers
    print(f"serving {args.index} on http://{args.host}:{args.port}/ with {args.workers} worker processes")
    run_replicas(settings, args.workers, args.host, args.port)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    index = commands.add_parser("index", help="build a searchable index of a collection")
    index_cmds = index.add_subparsers(dest="index_command", required=True)
    build = index_cmds.add_parser(
        "build", help="encode a folder of images or videos, or a dataset (resumable), and index it"
    )
    build.add_argument(
        "--model",
        required=True,
        help=TRAINED_MODEL_HELP,
    )
    build.add_argument(
        "--shard",
        metavar="I/N",
        help="encode only chunks I, I+N, ... (a slurm array task); the last shard to finish assembles the index",
    )
    add_engine_options(build, "assemble the index")
    build.add_argument(
        "--gpus-per-worker", type=float, default=0, help="--engine ray: GPUs each task asks for"
    )
    build_source = build.add_mutually_exclusive_group(required=True)
    build_source.add_argument("--images", help="folder of images (searched recursively)")
    build_source.add_argument(
        "--videos", help="folder of videos (searched recursively; an image model pools its frames, meanP)"
    )
    build_source.add_argument("--data", help="annotation file or folder (captions are indexed too)")
    build_source.add_argument(
        "--webdataset",
        metavar="SHARDS",
        help="webdataset shards: 'shards/{00000..00099}.tar' (quoted), a .tar or a folder of them; the same "
        "as --data SHARDS",
    )
    build_source.add_argument(
        "--embeddings",
        help="a clip-retrieval embeddings folder (img_emb/, metadata/): indexed without encoding; "
        "--model must be the model that made them",
    )
    build.add_argument("--split", help="with --data: only this split")
    build.add_argument("--out", required=True, help="index path (a link to the current version)")
    build.add_argument("--chunk-size", type=int, default=1024, help="images per resumable chunk")
    build.add_argument(
        "--first-stage",
        help="a model whose embeddings shortlist candidates for a head that is not a dot product "
        "(default: the model's own global embeddings)",
    )
    build.add_argument(
        "--shortlist",
        type=int,
        default=100,
        help="candidates per query the head re-scores, for a head that is not a dot product (default 100)",
    )
    build.add_argument(
        "--token-dtype",
        choices=["float32", "float16"],
        default="float32",
        help="how a two-stage index stores the head's token features (float16 halves the disk)",
    )
    build.add_argument("--memory-gb", type=float, help="memory budget for the index (chooses compression)")
    build.add_argument(
        "--rebuild",
        action="store_true",
        help="encode the whole collection again, even over an index of the same model that an update would "
        "follow (an index of another model or settings needs it)",
    )
    build.add_argument(
        "--retrain",
        action="store_true",
        help="make the search structure again (choose and train the FAISS index) from the stored embeddings; "
        "only changed files are encoded",
    )
    build.add_argument(
        "--verify",
        action="store_true",
        help="update: read every file's digest, catching an edit that kept its size and modification time "
        "(default: size and mtime decide, the digest only where they differ)",
    )
    build.add_argument(
        "--allow-mass-removal",
        action="store_true",
        help="update: remove more than half of the index's items (refused by default: an unmounted or moved "
        "folder looks like every file removed)",
    )
    build.add_argument(
        "--on-disk",
        action="store_true",
        help="keep the vectors out of the searcher's memory: inverted lists merged on disk and read per "
        "query (an exact index is searched from the memory-mapped embeddings)",
    )
    add_video_option(build)
    add_data_options(build)
    on_error = next(a for a in build._actions if a.dest == "on_error")
    on_error.default = None  # resolved by the source: see on_error_for
    on_error.help = (
        "an unreadable, oversized or bomb file: skip it and report, or stop the build (default: skip for "
        "--images and --videos, a folder of one's own photos nearly always holds one; raise for --data and "
        "--webdataset, where a missing test image changes the protocol)"
    )
    build.set_defaults(func=cmd_index_build)

    watch = index_cmds.add_parser(
        "watch",
        help="keep an index up to date with a folder: updates as files arrive, change or leave (Ctrl-C stops)",
    )
    watch.add_argument("folder", help="the folder of images (or, with --videos, of videos) to follow")
    watch.add_argument("--index", required=True, help="the index to keep up to date (built first if missing)")
    watch.add_argument(
        "--model", help="the model (default: the index's own; needed when it is not built yet)"
    )
    watch.add_argument("--videos", action="store_true", help="the folder holds videos, not images")
    watch.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds a file must be left alone before it is read: newer ones are copies still being written",
    )
    watch.add_argument(
        "--poll", action="store_true", help="poll the folder instead of waiting for events (network shares)"
    )
    watch.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default="skip",
        help="an unreadable file: skip and report it, or stop the update",
    )
    watch.add_argument("--memory-gb", type=float, help="memory budget for the index (chooses compression)")
    watch.add_argument("--stop-after", type=int, metavar="N", help="stop after N published updates (scripts)")
    watch.set_defaults(func=cmd_index_watch)

    export = index_cmds.add_parser(
        "export",
        help="write an index's embeddings and metadata in clip-retrieval's layout (autofaiss reads it)",
    )
    export.add_argument("index")
    export.add_argument("--out", help="clip-retrieval: folder for img_emb/ and metadata/")
    export.add_argument(
        "--format",
        choices=["clip-retrieval", "qdrant"],
        default="clip-retrieval",
        help="clip-retrieval's folder layout, or a Qdrant collection (the qdrant extra)",
    )
    add_qdrant_options(export)
    export.add_argument(
        "--dtype",
        choices=["float16", "float32"],
        default="float16",
        help="embedding type (clip-retrieval: float16)",
    )
    export.set_defaults(func=cmd_index_export)

    search = commands.add_parser("search", help="search an index by text or by image")
    search.add_argument("index")
    search.add_argument(
        "query", nargs="*", help="query texts (several share one model load: 'a cat' 'a red car' ...)"
    )
    search.add_argument("--queries", metavar="FILE", help="a file of query texts, one per line")
    search.add_argument("--image", action="append", help="query image file (repeat for several)")
    search.add_argument("--target", choices=["images", "captions"], default="images", help="what to return")
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--json", action="store_true")
    add_qdrant_options(search)
    search.set_defaults(func=cmd_search)

    serve = commands.add_parser("serve", help="serve an index over HTTP with a web page")
    serve.add_argument("index")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (0.0.0.0: every interface, not only this machine)",
    )
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="replica processes over the one index (each loads the model; one VISA cache, shared live)",
    )
    serve.add_argument("--visa-config", help="VISA YAML: enables the re-ranking toggle")
    add_qdrant_options(serve)
    serve.add_argument(
        "--prompts",
        help="a prompts folder of `vlret prompts train` (RUN/prompts) learnt on the index's model: "
        "enables search by class and the classes of an uploaded image",
    )
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload in MiB (default 10)")
    serve.add_argument(
        "--max-upload-megapixels",
        type=float,
        default=50.0,
        help="largest upload in declared pixels, checked before decoding (default 50 million)",
    )
    serve.add_argument(
        "--check-every",
        type=float,
        default=2.0,
        help="seconds between looks at the index link: a rebuilt index is opened beside the served one "
        "and swapped in without dropping requests (POST /api/reload does it at once; default 2)",
    )
    serve.add_argument("--max-k", type=int, default=100)
    serve.add_argument(
        "--visa-timeout",
        type=float,
        default=60.0,
        help="seconds a request may spend on VISA before the base ranking is answered (default 60)",
    )
    serve.set_defaults(func=cmd_serve)
