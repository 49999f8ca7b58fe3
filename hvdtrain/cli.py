"""Command line: `hvdtrain [train] --config FILE key=value ...`, `bench`, `sweep`, `plot`, `augment-preview`,
`doctor`, `config-docs`, `pack`, `tokenize`, and the finished-run commands (`generate` among them)."""

from __future__ import annotations

import argparse
import sys

from hvdtrain.distributed.environment import under_launcher
from hvdtrain.distributed.error_exit import announce, ending_with_errors_reported, wait_for_every_rank_before_start
from hvdtrain.errors import UserError
from hvdtrain.registry import BACKEND_NAMES

COMMANDS = ("train", "bench", "doctor", "config-docs", "augment-preview", "plot", "sweep", "pack", "tokenize",
            "evaluate", "predict", "export", "convert", "generate", "sync")
# The commands that run under launchers, one process per rank: their errors are reported on every rank.
LAUNCHED_COMMANDS = ("train", "bench", "evaluate", "predict")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hvdtrain", description="Horovod data-parallel training for PyTorch and TensorFlow/Keras 3. "
                                     "Launch under horovodrun or mpirun for several ranks.")
    sub = parser.add_subparsers(dest="command",
                                metavar="{train,bench,doctor,config-docs,augment-preview,plot,sweep,pack,tokenize,"
                                        "evaluate,predict,export,convert,generate}")
    train = sub.add_parser("train", help="train a model (the default command)")
    train.add_argument("--config", "-c", help="YAML config file (default: built-in defaults)")
    train.add_argument("--profile", action="store_true",
                       help="record where step time goes (data wait, compute, communication) and Horovod's "
                            "timeline under run.dir/profile/ (same as run.profile=true)")
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides, e.g. optim.lr=0.05 train.epochs=3 (see docs/config.md)")
    bench = sub.add_parser("bench", help="synthetic training benchmark (img/s per rank and total), like Horovod's")
    bench.add_argument("--config", "-c", help="YAML config file (model, data.synthetic_shape, train.batch_size, "
                                              "policy)")
    bench.add_argument("--warmup-batches", type=int, default=5, help="untimed steps first (default 5)")
    bench.add_argument("--batches-per-iter", type=int, default=10, help="steps per timed iteration (default 10)")
    bench.add_argument("--iters", type=int, default=10, help="timed iterations (default 10)")
    bench.add_argument("--json", help="write the numbers to this JSON file (rank 0)")
    bench.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    sub.add_parser("doctor", help="report Python, frameworks, Horovod, MPI and GPUs, and what to fix").add_argument(
        "--json", action="store_true", help="print the report as one JSON object (docs/setup.md)")
    preview = sub.add_parser("augment-preview", help="write a PNG grid of augmented training samples")
    preview.add_argument("--config", "-c", help="YAML config file with an augment section")
    preview.add_argument("--out", default="augment-preview.png", help="PNG to write")
    preview.add_argument("--rows", type=int, default=4, help="source images (one per row)")
    preview.add_argument("--variants", type=int, default=7, help="augmented versions per image")
    preview.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    plot = sub.add_parser("plot", help="write a PNG of loss, accuracy, LR and throughput curves of one or more runs")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories to overlay")
    plot.add_argument("--out", default="plot.png", help="PNG to write (default: plot.png)")
    sub.add_parser("config-docs", help="print the config reference (docs/config.md) as Markdown")
    sweep = sub.add_parser("sweep", help="grid search: one training run per combination, ranked (docs/sweep.md)")
    sweep.add_argument("--config", "-c", help="base YAML config of every trial")
    sweep.add_argument("--grid", nargs="+", action="extend", default=[], metavar="KEY=V1,V2",
                       help="a config key and its values, split at commas outside brackets and quotes: "
                            "optim.lr=0.1,0.01 model.channels=[8],[16,32]")
    sweep.add_argument("--metric", default="val_accuracy",
                       help="metrics.jsonl column to rank by, best epoch of each trial; minimised if its name "
                            "contains 'loss', else maximised (default: val_accuracy)")
    sweep.add_argument("--launcher", help="command prefix that starts each trial, e.g. \"horovodrun -np 2\" "
                                          "(default: one local process per trial)")
    sweep.add_argument("--out", help="new sweep folder (default: runs/sweep-<timestamp>)")
    sweep.add_argument("--timeout", type=float, help="seconds after which a trial is stopped and marked failed")
    sweep.add_argument("--dry-run", action="store_true", help="print the trial commands and run nothing")
    sweep.add_argument("overrides", nargs="*", metavar="key=value",
                       help="overrides for every trial (before --grid, or after --)")
    pack = sub.add_parser("pack", help="write an image folder as tar shards for data.name=shards (docs/shards.md)")
    pack.add_argument("folder", metavar="FOLDER", help="image folder: class sub-folders, or train/ and val/ of them")
    pack.add_argument("out_dir", metavar="OUT_DIR", help="new (or empty) directory for the shards")
    pack.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per shard (default 1000)")
    pack.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the shuffle across shards (default 0)")
    pack.add_argument("--overwrite", action="store_true", help="replace a previous pack's output in OUT_DIR")
    tokenize = sub.add_parser("tokenize", help="a text corpus as token files for language models "
                                               "(docs/language-models.md)")
    tokenize.add_argument("texts", nargs="+", metavar="TEXT", help="UTF-8 text files, or folders of them")
    tokenize.add_argument("--out", required=True, help="new (or empty) directory for the token files")
    tokenize.add_argument("--tokenizer", required=True, help="byte, char or bpe (trained here on the corpus)")
    tokenize.add_argument("--vocab-size", type=int, help="bpe: the vocabulary to train (default 8192)")
    tokenize.add_argument("--val-fraction", type=float, default=0.1,
                          help="the end of each file held out for validation (default 0.1)")
    evaluate = sub.add_parser("evaluate", help="score a finished run on its validation split or other data "
                                               "(docs/lifecycle.md); under a launcher like training")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory")
    evaluate.add_argument("--checkpoint", help="a checkpoint directory of the run instead of its final model")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value",
                          help="data.* overrides (other data: data.path=... data.val_fraction=...), "
                               "train.eval_batch_size")
    predict = sub.add_parser("predict", help="classify images with a finished run's model (docs/lifecycle.md)")
    predict.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders of images, or an .npz "
                                                                   "with an array x")
    predict.add_argument("--out", default="predictions.csv", help="CSV to write (default: predictions.csv)")
    predict.add_argument("--top-k", type=int, default=1, help="classes and probabilities per image (default 1)")
    predict.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    predict.add_argument("--checkpoint", help="a checkpoint directory of the run instead of its final model")
    export = sub.add_parser("export", help="export a finished run's model: onnx, torch-export (torch runs), "
                                           "savedmodel, onnx (TensorFlow runs); checked after writing")
    export.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory")
    export.add_argument("--format", required=True, help="onnx, torch-export or savedmodel")
    export.add_argument("--out", help="file or folder to write (default: under RUN_DIR/export/)")
    export.add_argument("--checkpoint", help="a checkpoint directory of the run instead of its final model")
    convert = sub.add_parser("convert", help="convert a finished run of a built-in model to the other framework, "
                                             "as a new run directory (checked on the validation set)")
    convert.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory")
    convert.add_argument("--to", required=True, choices=BACKEND_NAMES, help="the target backend")
    convert.add_argument("--out", required=True, help="the new run directory to write")
    generate = sub.add_parser("generate", help="text from a finished language-model run (docs/language-models.md)")
    generate.add_argument("run_dir", metavar="RUN_DIR", help="a finished task=language_model run directory")
    generate.add_argument("--prompt", default="\n", help="text the samples start from (default: a newline)")
    generate.add_argument("--max-new-tokens", type=int, default=200, help="tokens per sample (default 200)")
    generate.add_argument("--temperature", type=float, default=1.0, help="logits / T before sampling; 0: greedy "
                                                                         "(default 1.0)")
    generate.add_argument("--top-k", type=int, help="sample among the k most likely tokens only")
    generate.add_argument("--num-samples", type=int, default=1, help="samples, separated by --- (default 1)")
    generate.add_argument("--seed", type=int, default=0, help="the sampling's seed: same seed, same text (default 0)")
    generate.add_argument("--no-cache", action="store_true", help="recompute the whole context for every token "
                                                                  "instead of keeping keys and values (to compare)")
    sync = sub.add_parser("sync", help="send a run's tracker data that did not go while it trained (docs/tracking.md)")
    sync.add_argument("run_dir", metavar="RUN_DIR", help="a run directory trained with tracking.mlflow_uri")
    return parser


def _train(args: argparse.Namespace) -> int:
    """`train` and `bench`: under Horovod, with a failed collective turned into one line."""
    from pathlib import Path

    from hvdtrain.backend import get_backend
    from hvdtrain.config import load_config

    overrides = [*args.overrides, *(["run.profile=true"] if getattr(args, "profile", False) else [])]
    cfg = load_config(args.config, overrides)  # before Horovod starts: bad input fails fast
    if args.command == "train":
        from hvdtrain.training.run_dir import check_run_dir

        check_run_dir(cfg)  # as fast: a used run.dir, or a checkpoint that does not fit
    backend = get_backend(cfg.backend)
    with ending_with_errors_reported(backend.comm):
        if args.command == "bench":
            from hvdtrain.commands.bench import run_bench
            run_bench(cfg, backend, args.warmup_batches, args.batches_per_iter, args.iters,
                      Path(args.json) if args.json else None)
        else:
            from hvdtrain.training.loop import train
            train(cfg, backend)
    return 0


def _named_backend(args: argparse.Namespace) -> str:
    """The framework the command's input names (its config, or the finished run's), torch where it names none:
    the Horovod that reports an error found before training started on every rank."""
    from pathlib import Path

    from hvdtrain.config import named_backend

    if args.command in ("train", "bench"):
        return named_backend(args.config, args.overrides) or "torch"
    return named_backend(Path(args.run_dir) / "config.yaml", []) or "torch"


def _after_training(args: argparse.Namespace) -> int:
    """evaluate, predict, export, convert (docs/lifecycle.md), generate (docs/language-models.md)."""
    if args.command == "evaluate":
        from hvdtrain.lifecycle.evaluate import run_evaluate

        run_evaluate(args.run_dir, args.overrides, args.checkpoint)
    elif args.command == "predict":
        from hvdtrain.lifecycle.predict import run_predict

        run_predict(args.run_dir, args.inputs, args.out, args.top_k, args.batch_size, args.checkpoint)
    elif args.command == "export":
        from hvdtrain.lifecycle.export import export_run

        print(export_run(args.run_dir, args.format, args.out, args.checkpoint).line())
    elif args.command == "generate":
        from hvdtrain.lifecycle.generate import Sampling, run_generate

        result = run_generate(args.run_dir, args.prompt, args.max_new_tokens,
                              Sampling(args.temperature, args.top_k, args.seed), args.num_samples, not args.no_cache)
        print("\n".join(result.lines()), flush=True)
    else:
        from hvdtrain.lifecycle.convert import convert_run

        print(convert_run(args.run_dir, args.to, args.out).line())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs one command; a UserError becomes a one-line message on stderr and exit code 2."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] not in (*COMMANDS, "-h", "--help"):
        args_list.insert(0, "train")
    parser = _parser()
    # Overrides may come on either side of an option (`--config c.yaml --profile a=b`), which argparse's
    # positional lists do not allow: the ones it leaves over join the others.
    args, extra = parser.parse_known_args(args_list)
    if extra:
        if not hasattr(args, "overrides") or any(item.startswith("-") or "=" not in item for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        if args.command == "doctor":
            from hvdtrain.commands.doctor import run_doctor
            return run_doctor(as_json=args.json)
        if args.command == "augment-preview":
            from pathlib import Path

            from hvdtrain.commands.preview import write_preview
            from hvdtrain.config import load_config

            path = write_preview(load_config(args.config, args.overrides), Path(args.out), args.rows,
                                 args.variants)
            print(f"wrote {path}")
            return 0
        if args.command == "plot":
            from pathlib import Path

            from hvdtrain.commands.plot import write_plot

            print(f"wrote {write_plot([Path(d) for d in args.run_dirs], Path(args.out))}")
            return 0
        if args.command == "sweep":
            from pathlib import Path

            from hvdtrain.commands.sweep import run_sweep

            return run_sweep(args.config, args.overrides, args.grid, metric=args.metric, launcher=args.launcher,
                             out=Path(args.out) if args.out else None, dry_run=args.dry_run, timeout=args.timeout)
        if args.command == "pack":
            from pathlib import Path

            from hvdtrain.commands.pack import pack_folder

            print(pack_folder(Path(args.folder), Path(args.out_dir), args.shard_size, args.seed,
                              args.overwrite).line())
            return 0
        if args.command == "sync":
            from pathlib import Path

            from hvdtrain.commands.sync import sync_run

            print(sync_run(Path(args.run_dir)))
            return 0
        if args.command == "tokenize":
            from pathlib import Path

            from hvdtrain.commands.tokenize import tokenize_corpus

            print(tokenize_corpus([Path(t) for t in args.texts], Path(args.out), args.tokenizer, args.vocab_size,
                                  args.val_fraction).line())
            return 0
        if args.command in ("evaluate", "predict", "export", "convert", "generate"):
            return _after_training(args)
        if args.command == "config-docs":
            from hvdtrain.config import reference_markdown
            print(reference_markdown())
            return 0
        return _train(args)  # train or bench
    except UserError as exc:
        announce(exc)
        if under_launcher() and args.command in LAUNCHED_COMMANDS:
            # Found before Horovod started (or after it stopped): every rank's line out before any rank exits.
            wait_for_every_rank_before_start(exc, _named_backend(args))
        return exc.exit_code
    except KeyboardInterrupt:
        print("hvdtrain: interrupted", file=sys.stderr)
        return 130
