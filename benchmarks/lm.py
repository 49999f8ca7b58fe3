"""Language models: nanoGPT's baby GPT recipe (configs/lm-python.yaml) trained by hvdtrain on both backends at
np=1 and np=2, by a minimal hand-written PyTorch loop (benchmarks/handwritten_lm.py) and, given --nanogpt DIR (a
checkout of karpathy/nanoGPT), by nanoGPT's own train.py, on the same token files; then generation with and
without the key/value cache.

    python -m benchmarks.lm [--steps 2000] [--quick] [--nanogpt DIR]
    python -m benchmarks.lm --generation-only [--quick]   (generation alone: the lm-generation section)

Tokens/s: of the long runs, hvdtrain's from metrics.jsonl (windows/s x block_size, median of the evaluation
periods after the first); of the loops and of the interleaved speed runs, every trainer's from its step times after
the first 10 steps, by one statistic (benchmarks/step_times.py). Validation loss: every non-overlapping
window of the held-out part, after the last step. Generation: 500 new tokens (--quick: 100) from one prompt,
greedy, timed inside one process per backend (the model loaded first, a first call of a few tokens timed apart).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from benchmarks.launch import horovodrun, run, section_parser
from benchmarks.report import machine, update_section
from benchmarks.step_times import SKIPPED_STEPS, tokens_per_s

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "lm-python.yaml"
QUICK = ("model.n_layer=2", "model.n_embd=32", "model.n_head=2")
WARMUP = 8  # generation's first call, timed apart
SAMPLES = 10  # nanoGPT's sample.py default count, generated here as one batch
GENERATION_ROUNDS = 5  # cached and recomputed one after the other, this many times: medians
TARGETS = "hvdtrain torch >= 0.97x the hand-written loop's tokens/s at np=1; validation losses within 0.03"


def _tokens(out: Path) -> Path:
    """The example's corpus as token files (what data.name=text caches), written once into `out`."""
    from hvdtrain.commands.tokenize import tokenize_corpus
    from hvdtrain.config import load_config
    from hvdtrain.data.text import corpus_path

    data = load_config(CONFIG).data
    tokenize_corpus([corpus_path(data.path)], out, data.tokenizer, data.vocab_size, data.val_fraction)
    return out


def hvdtrain_run(backend: str, np_: int, tokens: Path, steps: int, extra: tuple[str, ...], out: Path,
                 eval_every: int | None = None, step_times: bool = False) -> dict:
    """One run of the recipe. Tokens/s: from metrics.jsonl (windows/s x block_size, the median of the evaluation
    periods after the first), or with `step_times` from each step's time after the first SKIPPED_STEPS, the
    statistic the hand-written loop reports (benchmarks/step_times.py)."""
    run_dir = out / f"hvdtrain-{backend}-np{np_}"
    batch = 12 // np_  # nanoGPT's 12 windows per step at any rank count
    launcher = [*horovodrun(np_, controller="mpi"), sys.executable] if np_ > 1 else [sys.executable]
    timed = ("callbacks.user=[benchmarks.step_times:StepTimes]",) if step_times else ()
    run([*launcher, "-m", "hvdtrain", "--config", str(CONFIG), f"backend={backend}", "data.name=tokens",
         f"data.path={tokens}", f"train.batch_size={batch}", f"train.max_steps={steps}",
         f"train.eval_every_steps={eval_every or max(1, steps // 8)}", "run.progress=off", f"run.dir={run_dir}",
         "run.overwrite=true", *timed, *extra], timeout=7200)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    block = 64
    if step_times:
        rate = tokens_per_s(json.loads((run_dir / "step_times.json").read_text()), 12 * block)
    else:
        rate = statistics.median([r["samples_per_s"] * block for r in records[1:] or records])
    return {"tokens_per_s": rate, "val_loss": records[-1]["val_loss"], "run_dir": str(run_dir)}


def handwritten_run(tokens: Path, steps: int, extra: tuple[str, ...], out: Path) -> dict:
    result = out / "handwritten.json"
    model = [word for word in extra if word.startswith("model.")]
    run([sys.executable, "-m", "benchmarks.handwritten_lm", "--data", str(tokens), "--json", str(result),
         "--steps", str(steps), "--warmup", str(min(100, steps // 10)), *model], timeout=7200)
    return dict(json.loads(result.read_text()))


def nanogpt_run(checkout: Path, tokens: Path, steps: int, quick: bool, out: Path) -> dict:
    """nanoGPT's train.py on the same train.bin/val.bin (its data/<dataset>/ layout, in a scratch folder that also
    holds its configurator.py, which train.py reads from the working directory)."""
    import pickle

    work = out / "nanogpt"
    (work / "data" / "hvdtrain").mkdir(parents=True)
    for name in ("train.bin", "val.bin"):
        (work / "data" / "hvdtrain" / name).symlink_to(tokens / name)
    meta = json.loads((tokens / "meta.json").read_text())
    with open(work / "data" / "hvdtrain" / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": meta["vocab_size"]}, f)
    (work / "configurator.py").symlink_to(checkout / "configurator.py")
    size = ["--n_layer=2", "--n_head=2", "--n_embd=32"] if quick else ["--n_layer=4", "--n_head=4", "--n_embd=128"]
    proc = subprocess.run([sys.executable, str(checkout / "train.py"), "--dataset=hvdtrain", "--device=cpu",
                           "--compile=False", "--dtype=float32", "--eval_iters=20", f"--eval_interval={steps}",
                           "--log_interval=1", "--block_size=64", "--batch_size=12",
                           "--gradient_accumulation_steps=1", "--dropout=0.0", "--bias=False",
                           "--learning_rate=1e-3", f"--max_iters={steps}", f"--lr_decay_iters={steps}",
                           "--min_lr=1e-4", "--beta2=0.99", f"--warmup_iters={min(100, steps // 10)}",
                           "--always_save_checkpoint=False", f"--out_dir={work / 'out'}", *size],
                          cwd=work, capture_output=True, text=True, timeout=7200)
    if proc.returncode != 0:
        raise RuntimeError(f"nanoGPT's train.py exited {proc.returncode}: {proc.stderr[-2000:]}")
    seconds = [float(line.split("time ")[1].split("ms")[0]) / 1000 for line in proc.stdout.splitlines()
               if line.startswith("iter ") and "time " in line]
    val = [float(line.split("val loss ")[1].split(",")[0]) for line in proc.stdout.splitlines() if "val loss" in line]
    return {"tokens_per_s": tokens_per_s(seconds, 12 * 64), "val_loss": val[-1]}


def generation_timing(run_dir: str, new_tokens: int, samples: int = 1, rounds: int = GENERATION_ROUNDS) -> dict:
    """Seconds to generate `new_tokens` greedily for `samples` prompts at once, with and without the cache, on one
    loaded model (inside this process), each after a first call of WARMUP tokens that pays for tracing (and the
    Keras step's XLA compilation), timed apart; then `rounds` rounds of both modes one after the other: the
    medians, and the median of the rounds' ratios."""
    import numpy as np

    from hvdtrain.lifecycle.finished_run import open_run
    from hvdtrain.lifecycle.generate import Sampling, generate_tokens
    from hvdtrain.lifecycle.trained_model import load_trained_model
    from hvdtrain.text.tokenizer import load_tokenizer

    run = open_run(run_dir, "generate")
    model, tokenizer = load_trained_model(run), load_tokenizer(run.dir)
    prompt = np.asarray([tokenizer.encode("def ")] * samples, dtype=np.int64)
    block, greedy = run.image_shape[0], Sampling(temperature=0)
    seconds: dict = {}
    modes = (("cached", True), ("recomputed", False))
    for mode, cache in modes:
        start = time.perf_counter()
        generate_tokens(model.backend, prompt, WARMUP, block, greedy, cache)
        seconds[f"{mode}_first"] = time.perf_counter() - start
    times: dict[str, list[float]] = {mode: [] for mode, _ in modes}
    for _ in range(rounds):
        for mode, cache in modes:
            start = time.perf_counter()
            tokens = generate_tokens(model.backend, prompt, new_tokens, block, greedy, cache)
            times[mode].append(time.perf_counter() - start)
            seconds[f"{mode}_text"] = tokenizer.decode(tokens[0].tolist())
    for mode, _ in modes:
        seconds[mode] = statistics.median(times[mode])
    seconds["speedup"] = statistics.median(r / c for r, c in zip(times["recomputed"], times["cached"], strict=True))
    seconds["rounds"] = rounds
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = section_parser(__doc__, repeats=3)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--speed-steps", type=int, default=300, help="steps of each interleaved speed run")
    parser.add_argument("--nanogpt", type=Path, help="a checkout of karpathy/nanoGPT: also run its train.py")
    parser.add_argument("--generation-only", action="store_true",
                        help="only time generation, on models trained briefly (the lm-generation section)")
    parser.add_argument("--generate-timing", nargs=3, metavar=("RUN_DIR", "TOKENS", "SAMPLES"),
                        help=argparse_hidden())
    args = parser.parse_args(argv)
    if args.generate_timing:  # the per-backend timing process
        print(json.dumps(generation_timing(args.generate_timing[0], int(args.generate_timing[1]),
                                           int(args.generate_timing[2]))))
        return
    if args.generation_only:
        gen_steps = 20 if args.quick else 200
        new_tokens = 100 if args.quick else 500
        with tempfile.TemporaryDirectory() as tmp_name:
            out = Path(tmp_name)
            tokens = _tokens(out / "tokens")
            extra = (*(QUICK if args.quick else ()), f"policy.warmup_steps={gen_steps // 10}")
            run_dirs = {b: hvdtrain_run(b, 1, tokens, gen_steps, extra, out)["run_dir"]
                        for b in ("torch", "tensorflow")}
            generation = time_generation(run_dirs, new_tokens)
        update_section("lm-generation", generation_section(generation, gen_steps, new_tokens, args.quick))
        return
    steps = 60 if args.quick else args.steps
    warmup = min(100, steps // 10)  # the recipe's 100 steps, or a tenth of a shorter run (the loops' too)
    extra = (*(QUICK if args.quick else ()), f"policy.warmup_steps={warmup}")
    new_tokens = 100 if args.quick else 500
    with tempfile.TemporaryDirectory() as tmp_name:
        out = Path(tmp_name)
        tokens = _tokens(out / "tokens")
        speed_steps = 30 if args.quick else args.speed_steps
        speed = speed_runs(tokens, speed_steps, args.repeats, extra, out, args.nanogpt, args.quick)
        results: dict[str, dict] = {"hand-written torch loop": handwritten_run(tokens, steps, extra, out)}
        for backend in ("torch", "tensorflow"):
            for np_ in (1, 2):
                results[f"hvdtrain {backend} np={np_}"] = hvdtrain_run(backend, np_, tokens, steps, extra, out)
                print(f"lm: {backend} np={np_}: {results[f'hvdtrain {backend} np={np_}']}", file=sys.stderr)
        if args.nanogpt is not None:
            results["nanoGPT train.py"] = nanogpt_run(args.nanogpt.resolve(), tokens, steps, args.quick, out)
        generation = time_generation({b: results[f"hvdtrain {b} np=1"]["run_dir"] for b in ("torch", "tensorflow")},
                                     new_tokens)
    update_section("lm", report(results, generation, steps, new_tokens, args, speed, speed_steps))


def generation_rows(generation: dict[str, dict]) -> list[str]:
    return [f"| {b} | {g['cached']:.2f} | {g['recomputed']:.2f} | {g['speedup']:.1f}x | "
            f"{'yes' if g['cached_text'] == g['recomputed_text'] else 'no'} | {g['cached_first']:.2f} | "
            f"{g['recomputed_first']:.2f} |" for b, g in generation.items()]


def time_generation(run_dirs: dict[str, str], new_tokens: int) -> dict[str, dict]:
    """generation_timing of each backend's run, for 1 and SAMPLES prompts, each in a process of its own."""
    return {f"{backend}, {samples} sample{'s' if samples > 1 else ''}": json.loads(run(
        [sys.executable, "-m", "benchmarks.lm", "--generate-timing", run_dir, str(new_tokens), str(samples)],
        timeout=3600).strip().splitlines()[-1]) for backend, run_dir in run_dirs.items() for samples in (1, SAMPLES)}


GENERATION_TABLE = ("| backend, samples | with the cache | recomputing | speed-up | same text | first call, cache "
                    "| first call, recomputing |\n|---|---|---|---|---|---|---|")


def generation_section(generation: dict[str, dict], steps: int, new_tokens: int, quick: bool) -> str:
    """The lm-generation section: generation alone, from runs of the recipe's model trained for `steps`."""
    speedups = ", ".join(f"{b} {g['speedup']:.1f}x" for b, g in generation.items())
    command = "python -m benchmarks.lm --generation-only" + (" --quick" if quick else "")
    model = "configs/lm-python.yaml" + (", --quick: 2 layers, 2 heads, width 32" if quick else "")
    return f"""## Language-model generation

`{command}`: the recipe's model ({model}) trained {steps} steps at
np=1 on each backend (the speed of generation does not depend on how far the model trained), then {new_tokens}
new tokens after "def ", greedy, for one sample and for {SAMPLES} at once (the context restarts from its last half
when the model's 64 positions are used up), seconds: the median of {GENERATION_ROUNDS} rounds, each running the
cached and the recomputing generation one after the other in the same process, after a first call of {WARMUP}
tokens (its own columns); speed-up: the median of the rounds' ratios. {machine()}.

{GENERATION_TABLE}
{chr(10).join(generation_rows(generation))}

Generation with the cache: {speedups} faster (target >= 3x at 500 tokens)."""


def speed_runs(tokens: Path, steps: int, repeats: int, extra: tuple[str, ...], out: Path,
               nanogpt: Path | None, quick: bool) -> dict[str, list[float]]:
    """Tokens/s at np=1 of short runs, the trainers interleaved in each of `repeats` rounds (this machine's speed
    drifts by 10-20% between minutes: one long run per trainer cannot resolve a few percent). hvdtrain's run is
    one epoch (evaluated once, at its end): shorter epochs than the recipe's 250 steps would charge it an epoch's
    start and end many times over."""
    speed: dict[str, list[float]] = {}
    trainers: dict[str, Callable[[Path], dict]] = {
        "hand-written torch loop": lambda where: handwritten_run(tokens, steps, extra, where),
        **{f"hvdtrain {b} np=1": partial(hvdtrain_run, b, 1, tokens, steps, extra, eval_every=steps, step_times=True)
           for b in ("torch", "tensorflow")}}
    if nanogpt is not None:
        trainers["nanoGPT train.py"] = lambda where: nanogpt_run(nanogpt.resolve(), tokens, steps, quick, where)
    for r in range(repeats):
        where = out / f"speed-{r}"
        where.mkdir()
        # Every other round in reverse order: the hand-written loop and hvdtrain torch stay neighbours, and which
        # of them runs first alternates, so that a drift within a round favours neither.
        order = list(trainers) if r % 2 == 0 else list(reversed(trainers))
        found = {name: trainers[name](where) for name in order}
        for name in trainers:  # reported in the trainers' order
            speed.setdefault(name, []).append(found[name]["tokens_per_s"])
        print(f"lm: speed round {r + 1}: {({k: round(v[-1]) for k, v in speed.items()})}", file=sys.stderr)
    return speed


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


def report(results: dict[str, dict], generation: dict[str, dict], steps: int, new_tokens: int,
           args: object, speed: dict[str, list[float]], speed_steps: int) -> str:
    base = results["hand-written torch loop"]
    hand = speed["hand-written torch loop"]
    ratios = {name: statistics.median(v / h for v, h in zip(values, hand, strict=True))
              for name, values in speed.items()}
    speed_rows = [f"| {name} | {' / '.join(f'{v:,.0f}' for v in values)} | {statistics.median(values):,.0f} | "
                  f"{ratios[name]:.3f} |" for name, values in speed.items()]
    rows = [f"| {name} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base['tokens_per_s']:.3f} | "
            f"{r['val_loss']:.4f} |" for name, r in results.items()]
    torch_ratio = ratios["hvdtrain torch np=1"]
    losses = [results[f"hvdtrain {b} np=1"]["val_loss"] for b in ("torch", "tensorflow")]
    gen_rows = generation_rows(generation)
    quick = getattr(args, "quick", False)
    command = "python -m benchmarks.lm" + (" --quick" if quick else f" --steps {steps} --repeats {len(hand)}") + \
        (" --nanogpt DIR" if getattr(args, "nanogpt", None) else "")
    met = "met" if torch_ratio >= 0.97 else "not met"
    verdict = (f"hvdtrain torch / hand-written at np=1, interleaved: {torch_ratio:.3f} ({met} against 0.97); "
               "validation loss "
               f"torch - tensorflow: {losses[0] - losses[1]:+.4f}, torch - hand-written: "
               f"{losses[0] - base['val_loss']:+.4f} (target: within 0.03); generation with the cache: "
               + ", ".join(f"{b} {g['speedup']:.1f}x" for b, g in generation.items())
               + " faster (target >= 3x)")
    return f"""## Language models

`{command}`: configs/lm-python.yaml (nanoGPT's baby GPT: 4 layers, 4 heads, width 128, context 64, 12 windows per
step, AdamW 1e-3 with 100 warm-up steps and cosine decay to 1e-4, betas (0.9, 0.99), decay 0.1 on matrices,
clipping 1.0{'; --quick: 2 layers, 2 heads, width 32' if quick else ''}) for {steps} steps on the char-level
tokens of Python's email package. Tokens/s of training (np=2: both ranks together, 6 windows each); validation
loss after the last step over every window of the held-out part. Ratio: to the hand-written loop. {machine()}.

| trainer | tokens/s | ratio | validation loss |
|---|---|---|---|
{chr(10).join(rows)}

Speed at np=1, interleaved: {len(hand)} rounds, each running every trainer once for {speed_steps} steps one after
another (every other round in reverse order), hvdtrain's as one epoch; tokens/s over the steps after the first
{SKIPPED_STEPS}, from each step's time as the trainer measures it (hvdtrain: its loop's step report, data included,
by a callback; the loops: around their steps), for each round, their median, and the median of the rounds' ratios
to the hand-written loop.
The single long runs above drift with the machine; the target is read from these.

| trainer | tokens/s per round | median | ratio |
|---|---|---|---|
{chr(10).join(speed_rows)}

Generation, {new_tokens} new tokens after "def ", greedy, for one sample and for {SAMPLES} at once (the context
restarts from its last half when the model's 64 positions are used up), seconds, each after a first call of
{WARMUP} tokens (its own columns: tracing, and the Keras step's XLA compilation):

{GENERATION_TABLE}
{chr(10).join(gen_rows)}

{verdict}. Targets: {TARGETS}; generation >= 3x at 500 tokens."""


if __name__ == "__main__":
    main()
