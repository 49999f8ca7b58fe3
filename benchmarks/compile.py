"""Compiled vs eager training steps (train.compile): time per optimizer step for cnn, resnet, mobilenet and gpt on
both backends, with the time spent compiling in its own column.

    python -m benchmarks.compile [--repeats 2] [--np 1,2] [--models cnn,resnet,mobilenet,gpt] [--backends ...]
                                 [--section compile] [--quick]

Each variant is one `horovodrun -np N python -m hvdtrain` run of EPOCHS epochs of STEPS optimizer steps; its time
per step is the median over the epochs after the first (the first holds the compiling), then the median over
the repeats, which run eager and compiled alternately so that drifts in machine load hit both. Compile time:
summary.json's compile_time_s (the wall time of the calls that compiled). Inductor's and XLA's caches are left as
they are: the first compiled run of a model pays the cold compile, the later repeats find kernels cached, as a
user's second run does (docs/performance.md).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.launch import horovodrun, run, section_parser
from benchmarks.report import machine, update_section

EPOCHS, STEPS = 3, 30
IMAGES = ("data.name=synthetic", "data.synthetic_samples=4096", "data.synthetic_shape=[32,32,3]",
          "data.val_fraction=0.0625", "train.batch_size=64", "optim.name=sgd", "optim.lr=0.01")
WORKLOADS: dict[str, tuple[str, ...]] = {
    "cnn": (*IMAGES, "model.name=cnn", "model.channels=[32,64]", "model.hidden_units=[128]"),
    "resnet": (*IMAGES, "model.name=resnet", "model.depth=20"),
    "mobilenet": (*IMAGES, "model.name=mobilenet"),
    # nanoGPT's baby GPT (configs/lm-python.yaml): 4 layers, 4 heads, width 128, context 64, 12 windows a step.
    "gpt": ("--config", "configs/lm-python.yaml", "train.batch_size=12", "train.max_steps=null",
            "train.eval_every_steps=null", "data.val_fraction=0.01"),
}
QUICK = {"images": ("data.synthetic_samples=256", "data.synthetic_shape=[8,8,3]", "train.batch_size=16",
                    "model.channels=[4]", "model.hidden_units=[8]", "model.width_multiplier=0.25", "model.depth=8"),
         "gpt": ("model.n_layer=1", "model.n_head=2", "model.n_embd=32", "data.block_size=16")}


def one_run(model: str, backend: str, np_: int, compiled: bool, steps: int, epochs: int, quick: bool,
            run_dir: Path) -> dict[str, float]:
    """One training run: seconds per step (median of the epochs after the first) and the compile time."""
    words = list(WORKLOADS[model])
    if quick:
        words += QUICK["gpt" if model == "gpt" else "images"]
    run([*horovodrun(np_), sys.executable, "-m", "hvdtrain", *words, f"backend={backend}",
         f"train.compile={str(compiled).lower()}", f"train.epochs={epochs}", f"train.max_steps_per_epoch={steps}",
         "run.progress=off", "run.tensorboard=false", "checkpoint.every_epochs=0", f"run.dir={run_dir}",
         "run.overwrite=true"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    per_step = [r["epoch_time_s"] / steps for r in records[1:] or records]
    return {"step_s": statistics.median(per_step), "compile_s": summary["compile_time_s"],
            "graphs_later": sum(r.get("compiled_graphs", 0) for r in records[1:])}


def main(argv: list[str] | None = None) -> None:
    parser = section_parser(__doc__, repeats=2)
    parser.add_argument("--np", default="1,2", help="rank counts, comma-separated")
    parser.add_argument("--models", default=",".join(WORKLOADS))
    parser.add_argument("--backends", default="torch,tensorflow")
    parser.add_argument("--section", default="compile", help="docs/benchmarks.md section to write (compile-np2: the "
                                                                "np=2 rows beside the np=1 ones)")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.np.split(",")]
    models, backends = args.models.split(","), args.backends.split(",")
    steps, epochs = (3, 2) if args.quick else (STEPS, EPOCHS)
    results: dict[tuple[str, str, int, bool], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for rep in range(args.repeats):
            for model in models:
                for backend in backends:
                    for np_ in sizes:
                        # Alternate which mode goes first, so neither always runs on the warmer machine.
                        for compiled in ((False, True) if rep % 2 == 0 else (True, False)):
                            key = (model, backend, np_, compiled)
                            result = one_run(model, backend, np_, compiled, steps, epochs, args.quick,
                                             tmp / f"{model}-{backend}-{np_}-{compiled}-{rep}")
                            results.setdefault(key, []).append(result)
                            print(f"compile: repeat {rep} {key}: {result}", file=sys.stderr)
    rows, ratios = [], {}
    for model in models:
        for backend in backends:
            for np_ in sizes:
                eager = statistics.median(r["step_s"] for r in results[(model, backend, np_, False)])
                done = results[(model, backend, np_, True)]
                compiled = statistics.median(r["step_s"] for r in done)
                ratios[(model, backend, np_)] = eager / compiled
                compile_s = ", ".join(f"{r['compile_s']:.1f}" for r in done)
                later = sum(r["graphs_later"] for r in done)
                rows.append(f"| {model} | {backend} | {np_} | {eager * 1000:.1f} | {compiled * 1000:.1f} | "
                            f"**{eager / compiled:.2f}x** | {compile_s} | {later} |")
    command = (f"python -m benchmarks.compile --repeats {args.repeats} --np {args.np} --models {args.models} "
               f"--backends {args.backends}" + (f" --section {args.section}" if args.section != "compile" else "")
               + (" --quick" if args.quick else ""))
    title = "Compiled steps (train.compile)" + (f", {args.section}" if args.section != "compile" else "")
    update_section(args.section, f"""## {title}

`{command}`: {epochs} epochs of {steps} optimizer steps per run, per-rank batch 64 of 32x32x3 synthetic images
(gpt: configs/lm-python.yaml, 12 windows of 64 tokens), `horovodrun -np N`; ms per optimizer step = median over
the epochs after the first, then over {args.repeats} interleaved repeats (eager and compiled alternating). Compile
time: summary.json's `compile_time_s` of each compiled repeat in order (the first finds Inductor's and XLA's caches
cold, the later ones warm). "Recompiles": graphs compiled after the first epoch, over all repeats (0: steady
state). {machine()}.

| model | backend | np | eager ms/step | compiled ms/step | speed-up | compile time (s) | recompiles |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Target (issue 26): compiled >= 1.15x eager for resnet and gpt on both backends at np=1; docs/performance.md says
where it is met, where not and why.""")


if __name__ == "__main__":
    main()
