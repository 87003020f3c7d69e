"""The ``lungseg`` command: argument parsing only; each command imports what it needs.

Exit codes: 0 when every input is ok (or deliberately skipped), 1 when any failed, 2 for
usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline import __version__
from pipeline.cpus import fit_threads_to_cpus
from pipeline.enums import LungField, NetworkName, TBNetworkName, ViewCheckMode

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
VOI_CHOICES = ("auto", "lut", "window", "none")


class UsageError(Exception):
    """A command-line mistake; the message says what to do."""


def _cmd_info(args: argparse.Namespace) -> int:
    from pipeline.io.discovery import iter_inputs
    from pipeline.io.errors import InputError
    from pipeline.io.reader import read_cxr

    failed = False
    for item in iter_inputs(args.inputs):
        try:
            image, meta = read_cxr(item.path, voi=args.voi, voi_index=args.voi_index)
        except InputError as err:
            failed |= err.status == "failed"
            row = {"path": str(item.path), "status": err.status, "reason": err.reason}
        else:
            row = {"path": str(item.path), "status": "ok", **meta}
            row.update(min=float(image.min()), max=float(image.max()), mean=float(image.mean()))
        print(json.dumps(row, default=str))
    return EXIT_FAILED if failed else EXIT_OK


def _cmd_dicomize(args: argparse.Namespace) -> int:
    from pipeline.io.convert import DicomVariant, dicomize
    from pipeline.io.datasets import default_data_dir, interleave_by, list_cases

    try:
        variants = (
            list(DicomVariant)
            if args.variant == ["all"]
            else [DicomVariant.parse(v) for v in args.variant]
        )
    except ValueError as err:
        raise UsageError(str(err)) from err
    images = [Path(p) for p in args.images]
    if not images:
        try:
            cases = list_cases(args.data or default_data_dir())
        except FileNotFoundError as err:
            raise UsageError(str(err)) from err
        images = [c.image for c in interleave_by(cases, "source")[: args.count]]
    written = dicomize(images, args.output, variants, args.pixel_spacing)
    for path in written:
        print(path)
    print(f"wrote {len(written)} DICOM files under {args.output}", file=sys.stderr)
    return EXIT_OK


def _cmd_prepare_data(args: argparse.Namespace) -> int:
    from pipeline.io.datasets import prepare_public_sets

    try:
        count = prepare_public_sets(
            args.output, args.montgomery, args.shenzhen, args.shenzhen_masks, args.size
        )
    except FileNotFoundError as err:
        raise UsageError(str(err)) from err
    print(f"wrote {count} cases to {args.output} (images/, masks/, manifest.csv)")
    return EXIT_OK if count else EXIT_FAILED


def _parse_set(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(
                f"--set {item!r} must be KEY=VALUE (a bundle config id and a JSON value)"
            )
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    from pipeline.cpus import loader_workers

    if args.workers is not None:
        try:
            args.workers = loader_workers(args.workers)
        except ValueError as err:
            raise UsageError(str(err)) from err
    from pipeline.training.run import train_from_options

    result, output = train_from_options(vars(args), _parse_set(args.set))
    print(
        f"trained {result['epochs']} epochs; best validation Dice {result['best_metric']:.4f} "
        f"at epoch {result['best_epoch']}; checkpoints in {output / 'models'}"
    )
    return EXIT_OK


def _preview_line(result) -> str:
    if result.status != "ok":
        return f"{result.status:7s} {result.path}: {result.reason}"
    m = result.meta
    rows, cols = m["original_shape"]
    photometric = m["photometric_interpretation"] or "-"
    detail = f"{m['format']} {rows}x{cols} {photometric} voi={m['voi']}"
    return f"ok      {result.path}  [{detail}] -> {result.output}  {result.seconds:.2f}s"


def _cmd_preview(args: argparse.Namespace) -> int:
    from pipeline.inference.preview import run_previews

    counts = {"ok": 0, "skipped": 0, "failed": 0}
    options = {"size": args.size, "clip_limit": args.clahe_clip, "radius": args.tophat_radius}
    for result in run_previews(args.inputs, args.output, **options):
        counts[result.status] += 1
        print(_preview_line(result))
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    print(f"{summary}; previews in {args.output}")
    return EXIT_FAILED if counts["failed"] else EXIT_OK


def _parse_formats(text: str) -> list:
    from pipeline.enums import OutputFormat

    try:
        return [OutputFormat.parse(f) for f in text.split(",") if f.strip()]
    except ValueError as err:
        raise UsageError(f"--formats {text!r}: {err}") from err


def _parse_query(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--query {item!r} must be KEY=VALUE (a QIDO-RS attribute filter)")
        out[key] = value
    return out


def _cmd_segment(args: argparse.Namespace) -> int:
    from pipeline.inference.segment import parse_shard, resolve_workers, segment

    if args.tb:  # TB sits above inference: its package wraps the batch job
        from pipeline.tb.screen import segment_and_screen as segment
    try:
        shard = parse_shard(args.shard)
    except ValueError as err:
        raise UsageError(str(err)) from err
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} must be >= 1")
    try:
        resolve_workers(args.workers, "cpu", cpus=1)  # the value checked before anything loads
    except ValueError as err:
        raise UsageError(str(err)) from err
    summary = segment(
        args.inputs,
        args.output,
        formats=_parse_formats(args.formats),
        bundle=args.bundle,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        overwrite=args.overwrite,
        shard=shard,
        progress=not args.no_progress,
        studies=args.study,
        query=_parse_query(args.query),
        store_back=args.store_back,
        precision=args.precision,
        lung_field=args.lung_field,
        view_check=args.view_check,
        **({"tb_bundle": args.tb_bundle} if args.tb else {}),
    )
    counts = summary["counts"]
    rate = summary["this_run"]["images_per_second"]
    print(
        f"{counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed"
        f" ({summary['this_run']['processed']} processed now"
        + (f", {rate:.2f} images/s" if rate else "")
        + f"); report in {Path(args.output) / 'report.csv'}"
    )
    if counts["failed"]:
        print(f"see the 'reason' column of {Path(args.output) / 'report.csv'}", file=sys.stderr)
    return EXIT_FAILED if counts["failed"] else EXIT_OK


def _collection_paths(args: argparse.Namespace) -> tuple[Path, Path, Path | None]:
    """--images/--masks/--manifest, or the three parts of a collection (--data, default)."""
    from pipeline.io.datasets import default_data_dir

    if bool(args.images) != bool(args.masks):
        raise UsageError("give --images and --masks together (or --data for a collection)")
    if args.images:
        return args.images, args.masks, args.manifest
    data = Path(args.data or default_data_dir())
    manifest = args.manifest or (data / "manifest.csv")
    return data / "images", data / "masks", manifest if manifest.is_file() else None


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluation.run import evaluate

    images, masks, manifest = _collection_paths(args)
    if args.bundle and args.predictions:
        raise UsageError("--bundle and --predictions exclude each other: run a model or read masks")
    select = None
    if args.split:
        from pipeline.training.data import read_split_file

        select = set(read_split_file(args.split)[args.part])
    spacing = None if args.pixel_spacing is None else (args.pixel_spacing,) * 2
    summary = evaluate(
        images,
        masks,
        args.output,
        manifest=manifest,
        bundle=args.bundle,
        predictions=args.predictions,
        device=args.device,
        batch_size=args.batch_size,
        pixel_spacing=spacing,
        select=select,
        title=args.title,
        worst=args.worst,
        progress=not args.no_progress,
    )
    if args.mlflow:
        from pipeline.evaluation.tracking import log_evaluation

        log_evaluation(summary, args.output, args.tracking_uri, args.experiment)
    dice = summary["statistics"]["overall"]["dice"]
    cases = summary["cases"]
    print(
        f"{cases['evaluated']} cases evaluated, {cases['failed']} failed; mean Dice "
        f"{dice['mean']:.4f} (95% CI {dice['ci95_low']:.4f} to {dice['ci95_high']:.4f}); "
        f"see {Path(args.output) / 'summary.md'}"
        if dice["n"]
        else f"no case could be evaluated; see {Path(args.output) / 'per_case.csv'}"
    )
    return EXIT_FAILED if cases["failed"] else EXIT_OK


def _cmd_results_table(args: argparse.Namespace) -> int:
    from pipeline.evaluation.tables import marked_block, table_for, update_marked_block

    name, table = table_for(json.loads(Path(args.summary).read_text()))
    if not args.update:
        print(table, end="")
        return EXIT_OK
    stale = []
    for doc in args.update:
        if args.check:
            if marked_block(doc, name) != table:
                stale.append(str(doc))
        elif update_marked_block(doc, table, name):
            print(f"updated {doc}")
    if stale:
        print(f"{name} table out of date in: {', '.join(stale)}", file=sys.stderr)
    return EXIT_FAILED if stale else EXIT_OK


def _cmd_split(args: argparse.Namespace) -> int:
    from pipeline.io.datasets import default_data_dir
    from pipeline.training.data import write_split_file

    path = write_split_file(
        args.data or default_data_dir(),
        args.output,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
    )
    counts = json.loads(path.read_text())["counts"]
    print(f"wrote {path}: " + ", ".join(f"{p} {c['cases']}" for p, c in counts.items()))
    return EXIT_OK


def _cmd_stress(args: argparse.Namespace) -> int:
    from pipeline.evaluation.stress import conditions, run_stress
    from pipeline.evaluation.stress_report import markdown
    from pipeline.io.datasets import default_data_dir

    try:
        conditions(args.stress)
    except ValueError as err:
        raise UsageError(f"--stress: {err}") from err
    summary = run_stress(
        args.data or default_data_dir(),
        args.output,
        bundle=args.bundle,
        device=args.device,
        max_cases=args.max_eval_cases,
        overrides=_parse_set(args.set),
        stresses=args.stress,
    )
    print(markdown(summary["table"]), end="")
    return EXIT_OK


def _cmd_protocol(args: argparse.Namespace) -> int:
    from pipeline.evaluation import protocols
    from pipeline.io.datasets import default_data_dir

    if args.protocol == "stress":
        return _cmd_stress(args)

    overrides = {"progress": not args.no_progress, **_parse_set(args.set)}
    for opt, cfg in (
        ("epochs", "max_epochs"),
        ("network", "network_name"),
        ("image_size", "image_size"),
        ("max_cases", "max_cases"),
    ):
        if getattr(args, opt) is not None:
            overrides[cfg] = getattr(args, opt)
    common = {
        "train_overrides": overrides,
        "device": args.device,
        "mlflow": not args.no_mlflow,
        "tracking_uri": args.tracking_uri,
        "experiment": args.experiment,
    }
    data = args.data or default_data_dir()
    if args.protocol == "kfold":
        result = protocols.kfold(
            data,
            args.output,
            args.folds,
            max_folds=args.max_folds,
            max_eval_cases=args.max_eval_cases,
            **common,
        )
    else:
        result = protocols.cross_dataset(
            data, args.output, max_eval_cases=args.max_eval_cases, **common
        )
    from pipeline.evaluation.tables import protocol_markdown

    print(protocol_markdown(result), end="")
    return EXIT_OK


def _cmd_node(args: argparse.Namespace) -> int:
    from pipeline.dicom_node import ConfigError, Node, check_node, load_config

    try:
        config = load_config(args.config)
    except ConfigError as err:
        raise UsageError(str(err)) from err
    if args.check:
        return EXIT_OK if check_node(config) else EXIT_FAILED
    print(f"lungseg node {config.ae_title} listening on {config.host}:{config.port}", flush=True)
    Node(config).start(block=True)
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    import ipaddress

    import uvicorn

    from pipeline.web import ResultStore, create_app
    from pipeline.web.app import configure_logging

    if (
        min(args.max_upload_mb, args.result_minutes) <= 0
        or min(args.keep_results, args.parallel) < 1
    ):
        raise UsageError(
            "--max-upload-mb and --result-minutes must be > 0, --keep-results and --parallel >= 1"
        )
    configure_logging()
    app = create_app(
        bundle=args.bundle,
        device=args.device,
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
        store=ResultStore(args.keep_results, args.result_minutes * 60),
        parallel=args.parallel,
    )
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:  # a host name
        loopback = args.host == "localhost"
    if not loopback:
        print("warning: the viewer has no authentication; serve it on a trusted network only")
    print(f"lungseg viewer on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None)
    return EXIT_OK


def _cmd_tb(args: argparse.Namespace) -> int:
    if args.tb_command == "train":
        return _tb_train(args)
    return _tb_evaluate(args)


def _tb_train(args: argparse.Namespace) -> int:
    from pipeline.io.datasets import default_data_dir
    from pipeline.tb.run import summary_markdown, train_and_report
    from pipeline.tb.train import Settings

    if min(args.folds, args.epochs, args.batch_size) < 1 or args.folds < 2:
        raise UsageError("--folds must be >= 2 and --epochs, --batch-size >= 1")
    TBNetworkName.parse(args.network)  # before any work: a ValueError quoting the allowed names
    settings = Settings(
        network=args.network,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        crop_size=args.crop_size,
        seed=args.seed,
        device=args.device,
    )
    summary = train_and_report(
        args.data or default_data_dir(),
        args.output,
        settings,
        folds=args.folds,
        seg_bundle=args.seg_bundle,
        max_cases=args.max_cases,
        max_folds=args.max_folds,
        mlflow=not args.no_mlflow,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        package=args.package,
    )
    print(summary_markdown(summary), end="")
    return EXIT_OK


def _tb_evaluate(args: argparse.Namespace) -> int:
    from pipeline.io.datasets import default_data_dir
    from pipeline.tb.evaluate import evaluate_model, evaluate_predictions, evaluation_markdown

    if args.predictions:
        summary = evaluate_predictions(args.predictions, args.output, args.column)
    else:
        summary = evaluate_model(
            args.data or default_data_dir(),
            args.output,
            bundle=args.bundle,
            seg_bundle=args.seg_bundle,
            device=args.device,
            max_cases=args.max_cases,
            gradcam=args.gradcam,
            mlflow=args.mlflow,
            tracking_uri=args.tracking_uri,
        )
    print(evaluation_markdown(summary), end="")
    return EXIT_OK


def _tb_common(p: argparse.ArgumentParser) -> None:
    """The options ``tb train`` and ``tb evaluate`` share."""
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    p.add_argument("--data", type=Path, help="collection with manifest.csv (default: shared)")
    p.add_argument("--max-cases", type=int, help="use this many cases (sources, labels mixed)")
    p.add_argument("--seg-bundle", type=Path, help="lung segmentation bundle (default: shipped)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--tracking-uri", help="MLflow URI (default: sqlite under mlruns/)")


def _add_tb_commands(sub: argparse._SubParsersAction) -> None:
    tb = sub.add_parser("tb", help="TB score from the segmented lungs (research only)")
    tb_sub = tb.add_subparsers(dest="tb_command", required=True, metavar="{train,evaluate}")
    tr = tb_sub.add_parser("train", help="stratified k-fold training, MLflow, optional bundle")
    _tb_common(tr)
    tr.add_argument(
        "--network", default="densenet_small", help=", ".join(n.value for n in TBNetworkName)
    )
    tr.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    tr.add_argument("--max-folds", type=int, help="stop after this many folds (quick runs)")
    tr.add_argument("--epochs", type=int, default=24, help="epochs per fold (default 24)")
    tr.add_argument("--patience", type=int, default=8, help="early stopping patience (default 8)")
    tr.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    tr.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    tr.add_argument("--crop-size", type=int, default=256, help="side of the lung crop")
    tr.add_argument("--seed", type=int, default=0, help="folds, initialisation, augmentation")
    tr.add_argument("--package", type=Path, help="also write the TB bundle to this folder")
    tr.add_argument("--experiment", default="lungseg-tb", help="MLflow experiment name")
    tr.add_argument("--no-mlflow", action="store_true", help="do not track the run")
    ev = tb_sub.add_parser("evaluate", help="AUC [95%% CI], sensitivity at 90%% specificity, ROC")
    _tb_common(ev)
    ev.add_argument("--bundle", type=Path, help="TB bundle (default: the shipped one)")
    ev.add_argument("--predictions", type=Path, help="score a CSV instead (cv_predictions.csv)")
    ev.add_argument("--column", default="hybrid_score", help="score column of --predictions")
    ev.add_argument("--gradcam", type=int, default=6, help="Grad-CAM overlays of this many cases")
    ev.add_argument("--mlflow", action="store_true", help="log the evaluation to MLflow")
    tb.set_defaults(func=_cmd_tb)


def _add_serve_command(sub: argparse._SubParsersAction) -> None:
    srv = sub.add_parser("serve", help="web viewer: upload a radiograph, see the lungs")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    srv.add_argument("--bundle", type=Path, help="bundle folder (default: the shipped one)")
    srv.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    srv.add_argument("--max-upload-mb", type=float, default=64, help="upload size limit")
    srv.add_argument("--keep-results", type=int, default=32, help="results kept in memory")
    srv.add_argument("--parallel", type=int, default=2, help="uploads processed at once")
    srv.add_argument(
        "--result-minutes", type=float, default=15, help="how long a result stays downloadable"
    )
    srv.set_defaults(func=_cmd_serve)


def _add_evaluation_commands(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("evaluate", help="score a model or existing masks against references")
    ev.add_argument("--images", type=Path, help="folder of radiographs (recursive)")
    ev.add_argument("--masks", type=Path, help="folder of reference masks (same names)")
    ev.add_argument("--manifest", type=Path, help="CSV keyed by file name: group columns")
    ev.add_argument("--data", type=Path, help="a collection instead (default: $LUNGSEG_DATA)")
    ev.add_argument("--bundle", type=Path, help="bundle folder (default: the shipped one)")
    ev.add_argument("--predictions", type=Path, help="score these masks (lungseg segment's)")
    ev.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    ev.add_argument("--split", type=Path, help="split file: evaluate one part of it")
    ev.add_argument("--part", default="test", choices=("train", "validation", "test"))
    ev.add_argument("--pixel-spacing", type=float, help="mm per pixel for every image")
    ev.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    ev.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    ev.add_argument("--worst", type=int, default=8, help="worst cases to draw")
    ev.add_argument("--title", help="heading of summary.md")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.add_argument("--mlflow", action="store_true", help="record the evaluation in MLflow")
    ev.add_argument("--tracking-uri", help="MLflow URI (default: sqlite under mlruns/)")
    ev.add_argument("--experiment", default="lungseg-evaluation", help="MLflow experiment")
    ev.set_defaults(func=_cmd_evaluate)

    rt = sub.add_parser("results-table", help="Markdown results table of an evaluation/protocol")
    rt.add_argument("summary", type=Path, help="summary.json (evaluate) or protocol.json")
    rt.add_argument("--update", nargs="+", type=Path, help="fill the marked block of these files")
    rt.add_argument("--check", action="store_true", help="with --update: fail if out of date")
    rt.set_defaults(func=_cmd_results_table)

    sp = sub.add_parser("split", help="write a stratified train/validation/test split file")
    sp.add_argument("--data", type=Path, help="collection (default: $LUNGSEG_DATA)")
    sp.add_argument("-o", "--output", required=True, type=Path, help="split file (JSON)")
    sp.add_argument("--val-fraction", type=float, default=0.15)
    sp.add_argument("--test-fraction", type=float, default=0.15)
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=_cmd_split)

    pr = sub.add_parser("protocol", help="k-fold or cross-dataset: train, evaluate, log")
    pr.add_argument("protocol", choices=("kfold", "cross-dataset", "stress"))
    pr.add_argument("--bundle", type=Path, help="stress: bundle to test (default: the shipped one)")
    pr.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    pr.add_argument("--data", type=Path, help="collection (default: $LUNGSEG_DATA)")
    pr.add_argument("--folds", type=int, default=5, help="kfold: number of folds")
    pr.add_argument("--max-folds", type=int, help="kfold: run only the first folds")
    pr.add_argument("--max-eval-cases", type=int, help="cap the evaluated cases per run")
    pr.add_argument(
        "--stress",
        action="append",
        metavar="NAME",
        help="stress: run only this condition (repeatable; clean always runs; default: all)",
    )
    pr.add_argument("--epochs", type=int, help="maximum epochs per training")
    pr.add_argument("--network", help="network name (default: the bundle's)")
    pr.add_argument("--image-size", type=int, help="network input size")
    pr.add_argument("--max-cases", type=int, help="cap training/validation cases (quick runs)")
    pr.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    pr.add_argument("--tracking-uri", help="MLflow URI (default: sqlite under mlruns/)")
    pr.add_argument("--experiment", default="lungseg-protocols", help="MLflow experiment")
    pr.add_argument("--no-mlflow", action="store_true", help="do not track the runs")
    pr.add_argument("--no-progress", action="store_true", help="no progress bars")
    pr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config id")
    pr.set_defaults(func=_cmd_protocol)


def build_parser() -> argparse.ArgumentParser:
    """The ``lungseg`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="lungseg", description="Lung segmentation of chest X-rays with MONAI."
    )
    parser.add_argument("--version", action="version", version=f"lungseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    info = sub.add_parser("info", help="decode files and print their metadata as JSON lines")
    info.add_argument("inputs", nargs="+", help="files or folders (searched recursively)")
    info.add_argument("--voi", choices=VOI_CHOICES, default="auto", help="DICOM VOI transform")
    info.add_argument("--voi-index", type=int, default=0, help="which window / VOI LUT (0 = first)")
    info.set_defaults(func=_cmd_info)

    dcm = sub.add_parser("dicomize", help="build DICOM radiographs from 8-bit images")
    dcm.add_argument("images", nargs="*", help="PNG/JPEG files (default: the shared data set)")
    dcm.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    dcm.add_argument("--data", type=Path, help="collection to take images from ($LUNGSEG_DATA)")
    dcm.add_argument("--count", type=int, default=8, help="images to take from --data")
    dcm.add_argument("--variant", nargs="+", default=["all"], help="encodings to cycle (or all)")
    dcm.add_argument("--pixel-spacing", type=float, help="ImagerPixelSpacing to write, in mm")
    dcm.set_defaults(func=_cmd_dicomize)

    prep = sub.add_parser("prepare-data", help="build a collection from the NLM downloads")
    prep.add_argument("--montgomery", type=Path, help="unzipped MontgomerySet folder")
    prep.add_argument("--shenzhen", type=Path, help="unzipped ChinaSet_AllFiles folder")
    prep.add_argument("--shenzhen-masks", type=Path, help="folder of Shenzhen lung masks")
    prep.add_argument("--size", type=int, help="resize: longer side in pixels (default: keep)")
    prep.add_argument("-o", "--output", required=True, type=Path, help="collection folder")
    prep.set_defaults(func=_cmd_prepare_data)

    tr = sub.add_parser("train", help="train a network with the bundle's training config")
    tr.add_argument(
        "--data", type=Path, help="collection folder or CSV/JSON datalist ($LUNGSEG_DATA)"
    )
    tr.add_argument("--network", choices=[n.value for n in NetworkName], default="res_unet")
    tr.add_argument("--pretrained", help="encoder weights: a file, a URL or 'imagenet'")
    tr.add_argument("--epochs", type=int, help="maximum epochs (bundle default 30)")
    tr.add_argument("--batch-size", type=int)
    tr.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    tr.add_argument("--loss", choices=("dice_ce", "pgdl", "pcl"))
    tr.add_argument("--optimizer", choices=("auto", "adam", "nadam", "adamw"))
    tr.add_argument("--scheduler", choices=("plateau", "cosine", "none"))
    tr.add_argument("--image-size", type=int, help="network input size (default 256)")
    tr.add_argument("--augmentation", choices=("default", "robust", "light", "none"))
    tr.add_argument(
        "--clahe", action="store_true", default=None, help="add CLAHE to the preprocessing"
    )
    tr.add_argument(
        "--tophat", action="store_true", default=None, help="add top-hat/bottom-hat enhancement"
    )
    tr.add_argument(
        "--lung-field",
        choices=[f.value for f in LungField],
        help="visible (the masks as drawn, default) or anatomical (retrocardiac lung included)",
    )
    tr.add_argument(
        "--lung-field-cases",
        type=Path,
        help="anatomical: JSON listing the masks drawn with the retrocardiac lung "
        "(data/splits/montgomery-shenzhen-lung-field.json)",
    )
    tr.add_argument(
        "--anatomical-repeat", type=int, help="anatomical: show those cases N times per epoch"
    )
    tr.add_argument("--early-stop", type=int, help="patience in epochs (0 disables)")
    tr.add_argument("--val-fraction", type=float, default=0.15)
    tr.add_argument("--test-fraction", type=float, default=0.15)
    tr.add_argument("--split-file", type=Path, help="take the parts from this split file")
    tr.add_argument(
        "--split-seed", type=int, default=0, help="seed of the split (not of the training)"
    )
    tr.add_argument("--folds", type=int, default=0, help="k-fold cross-validation: number of folds")
    tr.add_argument("--fold", type=int, default=0, help="which fold validates")
    tr.add_argument(
        "--max-cases", type=int, help="use only the first N cases of each part (smoke runs)"
    )
    tr.add_argument("--seed", type=int)
    tr.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    tr.add_argument(
        "--workers",
        help="data loader worker processes (auto: one per usable CPU but one, at most 8; "
        "default: the bundle's, 0)",
    )
    tr.add_argument("--resume", type=Path, help="checkpoint (last.pt) to continue from")
    tr.add_argument("--init", type=Path, help="start from these network weights (fine-tuning)")
    tr.add_argument("-o", "--output", type=Path, help="run folder (models/, eval/)")
    tr.add_argument("--bundle", type=Path, help="bundle folder (default: the shipped one)")
    tr.add_argument("--tracking-uri", help="MLflow URI (default: sqlite under mlruns/)")
    tr.add_argument("--experiment", default="lungseg", help="MLflow experiment name")
    tr.add_argument("--no-mlflow", action="store_true", help="do not track the run")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.add_argument("--distributed", action="store_true", help="DDP: run under torchrun")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config id")
    tr.set_defaults(func=_cmd_train)

    seg = sub.add_parser(
        "segment", help="segment radiographs: DICOM SEG, masks, overlays and a report"
    )
    seg.add_argument(
        "inputs",
        nargs="+",
        help="files, folders (searched recursively), ZIP/TAR archives (read member by member, "
        "each written to OUT/archives while read) or dicomweb+http(s)://host/prefix",
    )
    seg.add_argument("--study", action="append", default=[], help="DICOMweb: a Study UID")
    seg.add_argument(
        "--query", action="append", default=[], metavar="KEY=VALUE", help="DICOMweb QIDO filter"
    )
    seg.add_argument(
        "--store-back",
        action="store_true",
        help="DICOMweb: store each SEG in its server as the batch goes",
    )
    seg.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    seg.add_argument(
        "--formats",
        default="seg,mask,overlay",
        help="comma-separated: seg, mask, overlay, nifti, sr (TID 1500 areas; with seg)",
    )
    seg.add_argument("--bundle", type=Path, help="bundle folder (default: the shipped one)")
    seg.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    seg.add_argument(
        "--precision",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="the network's arithmetic (default: the bundle's, float32); auto: bfloat16 on "
        "CPUs with native bfloat16 (about 2x; masks agree with float32 at mean Dice ~0.998, "
        "some images ~0.97: see README)",
    )
    seg.add_argument(
        "--lung-field",
        choices=[f.value for f in LungField],
        help="anatomical (default: the lung behind the heart included) or visible (the "
        "left lung stops at the heart's border, as most Montgomery/Shenzhen masks)",
    )
    seg.add_argument(
        "--view-check",
        choices=[m.value for m in ViewCheckMode],
        help="auto (default): an image the network is unsure of is also tried as its "
        "negative and turned upside down, kept so where the network is surer of it (flagged "
        "inverted_polarity or upside_down); off: every image as read",
    )
    seg.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    seg.add_argument(
        "--workers",
        default="auto",
        help="worker processes (0: none; default auto: one per usable CPU, one fewer with a GPU)",
    )
    seg.add_argument("--overwrite", action="store_true", help="redo inputs already done")
    seg.add_argument(
        "--shard", help="I/N: the I-th of N deterministic parts; auto: from Slurm or torchrun"
    )
    seg.add_argument("--no-progress", action="store_true", help="no progress bar")
    seg.add_argument(
        "--tb", action="store_true", help="add a TB score column (research only; see README)"
    )
    seg.add_argument("--tb-bundle", type=Path, help="TB bundle (default: the shipped one)")
    seg.set_defaults(func=_cmd_segment)

    prev = sub.add_parser(
        "preview", help="write preprocessing previews (decoded | CLAHE | top-hat)"
    )
    prev.add_argument("inputs", nargs="+", help="files or folders (searched recursively)")
    prev.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    prev.add_argument("--size", type=int, default=512, help="panel size in pixels")
    prev.add_argument("--clahe-clip", type=float, default=0.01, help="CLAHE clip limit (0, 1]")
    prev.add_argument("--tophat-radius", type=int, default=15, help="structuring element radius")
    prev.set_defaults(func=_cmd_preview)
    _add_evaluation_commands(sub)
    node = sub.add_parser("node", help="DICOM node: receive radiographs, send back DICOM SEG")
    node.add_argument("--config", required=True, type=Path, help="node YAML (see README)")
    node.add_argument("--check", action="store_true", help="validate, echo destinations, exit")
    node.set_defaults(func=_cmd_node)
    _add_serve_command(sub)
    _add_tb_commands(sub)
    return parser


def _raised_by_lungseg(err: BaseException) -> bool:
    """Whether the innermost frame of ``err`` is lungseg's own code (not MONAI, torch...)."""
    import traceback

    frames = traceback.extract_tb(err.__traceback__)
    package = str(Path(__file__).resolve().parent)
    return bool(frames) and str(Path(frames[-1].filename).resolve()).startswith(package)


#: Commands whose process skips the interpreter's teardown once the command has returned:
#: freeing the modules torch, MONAI and MLflow load takes ~1.3 s, longer than a batch of 30
#: images, and a batch's outputs are already closed and synced (journal, reports, files).
FAST_EXIT_COMMANDS = frozenset({"segment"})


#: Commands that import MONAI without what inference does not use (~2.5 s less start-up)
#: and whose network threads sleep when idle (:mod:`pipeline.lean`).
LEAN_COMMANDS = frozenset({"segment"})


def run() -> None:
    """The console script: :func:`main`, then a fast exit for :data:`FAST_EXIT_COMMANDS`."""
    sys.exit(main(fast_exit=True))


def _exit_now(code: int) -> None:
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None, fast_exit: bool = False) -> int:
    """Run ``lungseg``; return the exit code.

    Exit 2 means a usage error: a bad option or value that lungseg itself checked and named
    (``UsageError``, or a ``ValueError``/``FileNotFoundError`` raised by lungseg's own code,
    which quote the bad value and what is allowed). Anything else raised while working, e.g.
    deep inside MONAI or torch, is a failure: exit 1 with the traceback.

    Args:
        argv: the arguments (default: the command line).
        fast_exit: end the process right after the command for :data:`FAST_EXIT_COMMANDS`
            (the console script does; tests calling ``main`` in-process do not).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    fit_threads_to_cpus()  # before torch loads: a container's CPU quota, not its host's cores
    if args.command in LEAN_COMMANDS:  # before anything imports torch or MONAI
        from pipeline.lean import (
            import_monai_for_inference,
            let_idle_threads_sleep,
            pause_collector,
        )

        let_idle_threads_sleep()
        pause_collector()  # until the batch job starts its workers (Segmenter._pool)
        import_monai_for_inference()
    try:
        code = _dispatch(args)
    finally:
        from pipeline.lean import resume_collector

        resume_collector(freeze=False)  # where the command ended before starting workers
    if fast_exit and args.command in FAST_EXIT_COMMANDS:
        _exit_now(code)
    return code


def _dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command; map the errors to exit codes (see :func:`main`)."""
    import traceback

    from pipeline.io.dicomweb import DicomWebError
    from pipeline.io.errors import OutputError

    try:
        return args.func(args)
    except (OutputError, DicomWebError) as err:  # not a usage error: the environment failed
        print(f"lungseg {args.command}: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except UsageError as err:
        print(f"lungseg {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, FileNotFoundError) as err:
        if not _raised_by_lungseg(err):
            traceback.print_exc()
            print(f"lungseg {args.command}: failed: {type(err).__name__}: {err}", file=sys.stderr)
            return EXIT_FAILED
        print(f"lungseg {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    run()
