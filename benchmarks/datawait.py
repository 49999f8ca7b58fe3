"""Where step time goes in the default runs: `--profile` on the digits example and on synthetic data.

    python -m benchmarks.datawait [--repeats 1] [--quick]

Each run is `horovodrun -np 2 python -m hvdtrain --profile` (hvdtrain/reporting/profile.py); the table gives the mean
over ranks and steps of each part's share of step time, medians over repeats.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.launch import horovodrun, run, section_parser
from benchmarks.report import machine, update_section

RUNS = {
    "digits (configs/digits.yaml)": ("--config", "configs/digits.yaml"),
    "synthetic 32x32x3, cnn": ("data.name=synthetic", "train.epochs=3"),
    "digits + augmentation (configs/digits_augment.yaml)": ("--config", "configs/digits_augment.yaml"),
    "synthetic 32x32x3, cnn + augmentation": ("data.name=synthetic", "train.epochs=3", "augment.rotation_range=15",
                                              "augment.width_shift_range=0.1", "augment.zoom_range=0.1",
                                              "augment.horizontal_flip=true"),
}
QUICK = ("train.epochs=2", "train.max_steps_per_epoch=3")
# --quick checks the runner on the other three, each on one backend in turn (both are covered)
FULL_ONLY = ("synthetic 32x32x3, cnn + augmentation",)
PARTS = ("data_wait", "compute", "communication", "other")


def profiled(args: tuple[str, ...], backend: str, np_: int, run_dir: Path) -> dict:
    run([*horovodrun(np_), sys.executable, "-m", "hvdtrain", "--profile", *args, f"backend={backend}",
         f"run.dir={run_dir}", "run.overwrite=true", "run.progress=off"])
    return json.loads((run_dir / "summary.json").read_text())["profile"]


def main(argv: list[str] | None = None) -> None:
    parser = section_parser(__doc__, repeats=1)
    parser.add_argument("--np", type=int, default=2, dest="np_")
    args = parser.parse_args(argv)
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for i, (name, run_args) in enumerate(RUNS.items()):
                if args.quick and name in FULL_ONLY:
                    continue
                backends = (("torch", "tensorflow")[i % 2],) if args.quick else ("torch", "tensorflow")
                for backend in backends:
                    run_dir = Path(tmp) / f"{len(results)}-{rep}"
                    extra = QUICK if args.quick else ()
                    results.setdefault((name, backend), []).append(profiled(run_args + extra, backend, args.np_,
                                                                            run_dir))
                    print(f"datawait: repeat {rep} {name} {backend}: {results[(name, backend)][-1]}",
                          file=sys.stderr)
    rows, worst, worst_augmented = [], 0.0, 0.0
    for (name, backend), found in results.items():
        med = {key: statistics.median(r[key] for r in found) for key in ("mean_step_s",
                                                                        *(f"{p}_fraction" for p in PARTS))}
        if "augment" not in name:
            worst = max(worst, med["data_wait_fraction"])
        if name.startswith("synthetic") and "augmentation" in name:
            worst_augmented = max(worst_augmented, med["data_wait_fraction"])
        rows.append(f"| {name} | {backend} | {med['mean_step_s'] * 1000:.2f} | "
                    + " | ".join(f"{med[f'{p}_fraction']:.1%}" for p in PARTS) + " |")
    command = f"python -m benchmarks.datawait --repeats {args.repeats} --np {args.np_}" + (
        " --quick" if args.quick else "")
    update_section("datawait", f"""## Where step time goes (`--profile`)

`{command}`: `horovodrun -np {args.np_} python -m hvdtrain --profile` on each run's config; shares of step
time, mean over ranks and steps (hvdtrain/reporting/profile.py: communication is the time blocked on the gradient
allreduce; torch overlaps it with the backward pass), medians over {args.repeats} repeat(s). {machine()}.

| run | backend | mean step (ms) | data wait | compute | communication | other |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Target (data wait < 5% of step time in the default digits and synthetic runs): {'met' if worst < 0.05 else
'not met'}, highest {worst:.1%}. Target (data wait < 2% of step time in the synthetic-size CNN runs with
augmentation): {'met' if worst_augmented < 0.02 else 'not met'}, highest {worst_augmented:.1%}.""")


if __name__ == "__main__":
    main()
