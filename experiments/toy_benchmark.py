"""`make reproduce-toy`: does GRPO-λ learn faster than GRPO? Seeded CPU studies on the `credit_echo` task.

1. A tiny Qwen2 (toy tokenizer) is trained from scratch by SFT to an intermediate success rate on credit_echo.
   Every RL run of both studies starts from this one checkpoint.
2. `--study quick` (default, < 30 min): every method trains by RL with the same budget and hyperparameters, for
   each seed: GRPO, GRPO + Lemma 1's `eos_bound`, GRPO + GRPO-λ's advantage clamp alone, GRPO-λ {ε-trace,
   ε-weight} × {both, recent} at λ = 0.99, and the best of those four at λ = 0.98 (chosen after they finish).
   A Markdown table, a PNG of training reward vs step (mean ± std over seeds) and the raw per-step logs.
3. `--study factorial` (2–3 h on an idle 2-core machine): is it the traces or the clamp? toy_factorial.py.
4. `--study dapo` (~2 h of one core): GRPO vs GRPO-λ on the paper's recipe and on a recipe style laid over it
   (recipes/styles/dapo.yaml, with and without dynamic sampling: `Run.style`). toy_dapo.py.

Methods are named by their tag (grpo_lambda.methods.Method), in tables, plots, folders and `--methods`. Every run
appends its metrics to `<output_dir>/runs/<tag>/lr<lr>_steps<N>/seed<k>/metrics.jsonl` as it trains and writes
its run record (grpo_lambda_run.json, with its wall time: grpo_lambda.reruns) when it ends; both studies share these
runs, and a rerun skips finished runs and restarts unfinished ones, so a crash loses one run at most. docs/toy_benchmark.md describes the task, the settings and the results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.layout import run_record
from grpo_lambda.methods import PAPER_ADV_CLAMP_MIN, Method
from grpo_lambda.metrics_log import logged_mean, logged_std, read_steps, trailing_mean
from grpo_lambda.reruns import final_step, mark_finished

from .toy import TASK_NAME

# RL settings shared by every method (Table 2 where it applies: β, group size, grad clip; γ = 1 is the config's)
RL_SETTINGS = dict(
    beta=0.04,  # Table 2
    num_generations=8,  # Table 2
    per_device_train_batch_size=32,  # 4 prompts × 8 completions
    max_completion_length=48,
    temperature=1.0,
    max_grad_norm=1.0,  # Table 2
    loss_type="grpo",
    lr_scheduler_type="constant",
    warmup_steps=0,
)
LEARNING_RATE = 3e-4  # the quick study's, for every method: our choice, from a GRPO-only pilot (docs/toy_benchmark.md)
QUICK_METHODS = [
    Method("grpo"),
    Method("grpo", advantage_bias_correction="eos_bound"),
    Method("grpo", adv_clamp_min=PAPER_ADV_CLAMP_MIN),  # GRPO-λ's clamp alone: tells the clamp from the traces
    *(Method(variant, style, 0.99) for variant in ("eps_trace", "eps_weight") for style in ("both", "recent")),
]
SIZES = {
    # most SFT steps, RL steps per quick run, seeds, last N steps averaged for the final reward, held-out SFT problems
    "default": dict(sft_steps=600, rl_steps=200, seeds=3, last_steps=30, eval_problems=200),
    "small": dict(sft_steps=4, rl_steps=2, seeds=1, last_steps=1, eval_problems=8),
}
LOGGED = (  # table column ← logged metric, averaged over the last N steps
    ("kl", "kl"),
    ("completion_length", "completions/mean_length"),
    ("grad_norm", "grad_norm"),
    ("lemma1_bound_mean", "lemma1/bound_mean"),
)
SFT_TARGET_RATE = 0.25  # SFT stops once sampling at T=1 solves this share of held-out problems
SFT_CHECK_EVERY = 25  # steps between those checks


@dataclass(frozen=True)
class Run:
    """One RL run: a method at a learning rate for a number of steps, from one seed (its prompts and sampling)."""

    method: Method
    learning_rate: float
    steps: int
    seed: int
    lemma1_diagnostics: bool = False  # log lemma1/… (the quick study's table); the training is the same without it
    style: str = ""  # a recipe style over RL_SETTINGS (style_settings), e.g. "dapo"; "" for none (the paper's recipe)

    def folder(self, output_dir: Path) -> Path:
        setting = f"lr{self.learning_rate:g}_steps{self.steps}" + (f"_{self.style}" if self.style else "")
        return output_dir / "runs" / self.method.tag / setting / f"seed{self.seed}"

    def records(self, output_dir: Path) -> list[dict]:
        """The per-step records of its metrics log, in step order (grpo_lambda.metrics_log.read_steps)."""
        return read_steps(self.folder(output_dir) / "metrics.jsonl")

    def config(self) -> dict:
        """The GRPOLambdaConfig fields of this run besides its folder, steps and seed."""
        extra = {"lemma1_diagnostics": True} if self.lemma1_diagnostics else {}
        style = style_settings(self.style)
        return {**RL_SETTINGS, **style, "learning_rate": self.learning_rate, **self.method.config(), **extra}


def style_settings(style: str) -> dict:
    """The settings a recipe style gives, read from `recipes/styles/<name>.yaml` by the library's recipe reader
    (grpo_lambda.configs.read_recipe), then `+key=value` modifiers (YAML values): `dapo+dynamic_sampling=false` is
    the DAPO overlay without dynamic sampling. "" gives none."""
    if not style:
        return {}
    import yaml

    from grpo_lambda.configs import read_recipe
    from grpo_lambda.layout import repo_root

    name, *modifiers = style.split("+")
    path = repo_root() / "recipes" / "styles" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise GRPOLambdaError(f"recipe style {name!r}: no {path}; styles: {', '.join(known)}.")
    values = read_recipe(path)
    for modifier in modifiers:
        key, _, value = modifier.partition("=")
        if key not in values or not value:
            raise GRPOLambdaError(f"recipe style {style!r}: {modifier!r} is not key=value for a key of {path.name}.")
        values[key] = yaml.safe_load(value)
    return values


def build_sft_model(
    output_dir: Path, sft_steps: int, eval_problems: int = 200, threads: int = 1, seed: int = 0
) -> Path:
    """Stage 1: a tiny Qwen2 with the toy tokenizer, SFT'd on credit_echo solutions until sampling at T=1 solves
    `SFT_TARGET_RATE` of held-out problems (checked every `SFT_CHECK_EVERY` steps), at most `sft_steps` steps."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from grpo_lambda.testbench.models import build_tiny_model

    from .toy import credit_echo_dataset, tokenizer_corpus

    sft_dir = output_dir / "sft"
    if final_step(sft_dir) is not None:
        return sft_dir
    torch.set_num_threads(threads)
    base = build_tiny_model(
        output_dir / "base", seed, hidden_size=128, num_layers=2, num_heads=2, corpus=tokenizer_corpus(seed)
    )
    rows = credit_echo_dataset(sft_steps * 32, seed, "sft")
    rows = rows.map(lambda r: {"prompt": r["problem"], "completion": r["answer"]}, remove_columns=rows.column_names)
    args = SFTConfig(
        output_dir=str(sft_dir),
        max_steps=sft_steps,
        learning_rate=1e-3,
        per_device_train_batch_size=32,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=20,
        logging_steps=25,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=seed,
        disable_tqdm=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(base)
    checks = credit_echo_dataset(100, seed, "validation")
    history = []

    class StopAtTarget(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % SFT_CHECK_EVERY == 0:
                history.append((state.global_step, sampled_accuracy(model, tokenizer, checks)))
                model.train()
                print(f"[toy] SFT step {state.global_step}: exact-match rate {history[-1][1]:.2f}", flush=True)
                control.should_training_stop = history[-1][1] >= SFT_TARGET_RATE

    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(base),
        args=args,
        train_dataset=rows,
        processing_class=tokenizer,
        callbacks=[StopAtTarget()],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    trainer.save_model(str(sft_dir))
    accuracy = sampled_accuracy(trainer.model, tokenizer, credit_echo_dataset(eval_problems, seed, "test"))
    record = {"sft_steps": trainer.state.global_step, "test_accuracy_t1": accuracy, "checks": history}
    mark_finished(str(sft_dir), trainer.state.global_step, stage="toy-sft", **record)
    return sft_dir


def sampled_accuracy(model, tokenizer, rows, max_new_tokens: int = 48, batch: int = 50) -> float:
    """Share of exact answers when sampling at temperature 1 (what the RL stage starts from)."""
    import torch

    from grpo_lambda.rewards import exact_match

    model.eval()
    tokenizer.padding_side = "left"
    correct = 0
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        encoded = tokenizer(chunk["problem"], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=1.0,
                pad_token_id=tokenizer.pad_token_id,
            )
        texts = tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        correct += sum(exact_match(t, a) for t, a in zip(texts, chunk["answer"], strict=True))
    return correct / len(rows)


def rl_run(sft_dir: str, run_dir: str, config: dict, steps: int, seed: int, threads: int) -> dict:
    """Stage 2, one run: GRPOLambdaTrainer on credit_echo from the SFT checkpoint; metrics.jsonl grows as it trains.
    The seed fixes the training prompts and the sampling, the same for every method (a paired design)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, set_seed
    from transformers.trainer_callback import PrinterCallback

    from grpo_lambda.callbacks import JsonlMetricsCallback
    from grpo_lambda.configs import GRPOLambdaConfig
    from grpo_lambda.data import load_problem_dataset
    from grpo_lambda.rewards import get_reward_funcs
    from grpo_lambda.trainer import GRPOLambdaTrainer

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    run_dir = Path(run_dir)
    if run_dir.exists():  # an unfinished run from a crash: start it again
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    set_seed(seed)
    prompts_per_step = config["per_device_train_batch_size"] // config["num_generations"]
    sizes = dict(train_size=steps * prompts_per_step, test_size=1, seed=seed, level="one_step")
    train = load_problem_dataset(TASK_NAME, "train", **sizes)
    train = train.map(lambda r: {"prompt": r["problem"]})
    args = GRPOLambdaConfig(
        output_dir=str(run_dir),
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=seed,
        disable_tqdm=True,
        **config,
    )
    (reward,) = get_reward_funcs(["exact"])
    rounds = RoundRewards(reward, config["num_generations"])

    class FirstRound(TrainerCallback):
        """Adds the step's first-round metrics to its log record, before JsonlMetricsCallback writes it."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is not None and "loss" in logs:
                logs.update(rounds.step_metrics())

    started, cpu_started = time.time(), time.process_time()
    trainer = GRPOLambdaTrainer(
        model=AutoModelForCausalLM.from_pretrained(sft_dir),
        reward_funcs=[rounds],
        args=args,
        train_dataset=train,
        processing_class=AutoTokenizer.from_pretrained(sft_dir),
        callbacks=[FirstRound(), JsonlMetricsCallback(run_dir / "metrics.jsonl")],
    )
    trainer.remove_callback(PrinterCallback)  # the parent's progress bar reports; metrics.jsonl keeps every record
    trainer.train()
    summary = {
        "seconds": time.time() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "steps": steps,
        "seed": seed,
        "threads": threads,
        "config": config,
    }
    mark_finished(str(run_dir), steps, stage="toy", **summary)
    return summary


class RoundRewards:
    """The `exact` reward, keeping the rewards of each call: TRL scores a generation round's completions in one call
    (on one process), so with dynamic sampling a step makes one call per round. TRL's logged `reward` then averages
    every round of the step, and how many rounds a step takes depends on their rewards; the step's own batch (its
    first round: the prompts every arm of a seed gets at that step) is what the dapo study compares."""

    def __init__(self, reward, num_generations: int):
        self.reward, self.num_generations, self.rounds = reward, num_generations, []
        self.__name__ = reward.__name__  # TRL names the reward's metrics after it

    def __call__(self, *args, **kwargs) -> list[float]:
        rewards = self.reward(*args, **kwargs)
        self.rounds.append(rewards)
        return rewards

    def step_metrics(self) -> dict:
        """The first round's mean reward and its share of groups with one reward (those dynamic sampling drops);
        then forgets the step's rounds. {} when the step generated nothing."""
        if not self.rounds:
            return {}
        first, self.rounds = self.rounds[0], []
        groups = [first[i : i + self.num_generations] for i in range(0, len(first), self.num_generations)]
        return {
            "toy/first_round_reward": sum(first) / len(first),
            "toy/first_round_zero_std_groups": sum(len(set(g)) == 1 for g in groups) / len(groups),
        }


def _steps_logged(run_dir: Path) -> int:
    log = run_dir / "metrics.jsonl"
    try:
        return len(read_steps(log)) if log.is_file() else 0  # not started yet
    except FileNotFoundError:  # an unfinished run being cleared to start again, between the check and the read
        return 0


def run_all(runs: list[Run], output_dir: Path, sft_dir: Path, workers: int, bar) -> None:
    """Trains the unfinished runs on `workers` processes (0: in this one), advancing `bar` as steps are logged and
    printing a line as each run ends."""
    unique = list({run.folder(output_dir): run for run in runs}.values())
    todo = [run for run in unique if final_step(run.folder(output_dir)) is None]
    bar.update(sum(run.steps for run in unique if run not in todo))
    finished = len(unique) - len(todo)

    def report(run: Run) -> None:
        nonlocal finished
        finished += 1
        seconds = run_record(run.folder(output_dir))["seconds"]
        bar.write(
            f"[toy] run {finished}/{len(unique)} done: {run.method.tag} lr {run.learning_rate:g} "
            f"seed {run.seed} ({run.steps} steps, {seconds:.0f} s)"
        )

    if workers == 0:
        for run in todo:
            rl_run(str(sft_dir), str(run.folder(output_dir)), run.config(), run.steps, run.seed, 1)
            bar.update(run.steps)
            report(run)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    running: dict = {}
    counted: dict[Run, int] = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        queue = list(todo)
        while queue or running:
            while queue and len(running) < workers:
                run = queue.pop(0)
                folder = str(run.folder(output_dir))
                running[pool.submit(rl_run, str(sft_dir), folder, run.config(), run.steps, run.seed, threads)] = run
                counted[run] = 0
            done, _ = wait(list(running), timeout=2.0, return_when=FIRST_COMPLETED)
            for run in running.values():
                now = _steps_logged(run.folder(output_dir))
                bar.update(now - counted[run])
                counted[run] = now
            for future in done:
                run = running.pop(future)
                future.result()  # re-raise a worker's error here
                bar.update(run.steps - counted[run])
                report(run)


def final_value(records: list[dict], key: str, last_steps: int) -> float:
    """The mean of `key` over the last `last_steps` steps of one run."""
    return logged_mean([r.get(key) for r in records[-last_steps:]])


def mean_curve(seeds: list[list[dict]], key: str) -> list[float]:
    length = min(len(records) for records in seeds)
    return [logged_mean([records[i].get(key) for records in seeds]) for i in range(length)]


def summarise(runs: dict[str, list[list[dict]]], last_steps: int) -> dict[str, dict]:
    """Per method: final reward (mean of the last N steps, then mean ± std over seeds), steps to reach GRPO's final
    reward (the first step s ≥ N at which the seed-mean reward averaged over steps s−N+1..s reaches it: the same
    N-step average as the final reward, so GRPO reaches its own by its last step), KL, length, grad norm, and
    Lemma 1's mean bound over the last N steps."""
    summary = {}
    for name, seeds in runs.items():
        finals = [final_value(records, "reward", last_steps) for records in seeds]
        summary[name] = {
            "seeds": len(seeds),
            "final_reward": logged_mean(finals),
            "final_reward_std": logged_std(finals),
            **{out: logged_mean([final_value(records, key, last_steps) for records in seeds]) for out, key in LOGGED},
            "curve": mean_curve(seeds, "reward"),
        }
    if "grpo" in summary:
        target = summary["grpo"]["final_reward"]
        for values in summary.values():
            smoothed = trailing_mean(values["curve"], last_steps)
            reached = (i + 1 for i, v in enumerate(smoothed) if i + 1 >= last_steps and v >= target - 1e-9)
            values["steps_to_grpo_final"] = next(reached, None)
    return summary


def results_table(summary: dict[str, dict], last_steps: int, steps: int) -> str:
    lines = [
        f"| method | final reward (last {last_steps} steps, mean ± std over seeds) | steps to GRPO's final reward "
        f"(of {steps}) | KL to ref | completion length | grad norm (pre-clip) | Lemma 1 bound (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in summary.items():
        reach = v.get("steps_to_grpo_final")
        lines.append(
            f"| {name} | {v['final_reward']:.3f} ± {v['final_reward_std']:.3f} | {reach if reach else 'not reached'} "
            f"| {v['kl']:.4f} | {v['completion_length']:.1f} | {v['grad_norm']:.3f} | {v['lemma1_bound_mean']:.4f} |"
        )
    return "\n".join(lines)


def plot_curves(axis, runs: dict[str, list[list[dict]]], window: int, key: str = "reward") -> None:
    """Training reward (`key`) vs step on `axis`: per method the seed mean of a `window`-step moving average, ± one
    std."""
    for name, seeds in runs.items():
        length = min(len(records) for records in seeds)
        per_seed = [trailing_mean([r.get(key) for r in records[:length]], window) for records in seeds]
        mean = [logged_mean([s[i] for s in per_seed]) for i in range(length)]
        std = [logged_std([s[i] for s in per_seed]) for i in range(length)]
        steps = list(range(1, length + 1))
        style = "--" if name.startswith("grpo") else "-"
        (line,) = axis.plot(steps, mean, style, label=f"{name} ({len(seeds)} seeds)", linewidth=1.8)
        axis.fill_between(
            steps,
            [m - s for m, s in zip(mean, std)],
            [m + s for m, s in zip(mean, std)],
            color=line.get_color(),
            alpha=0.15,
        )
    axis.set_xlabel("RL step")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)


def plot_rewards(runs: dict[str, list[list[dict]]], path: Path, window: int) -> Path:
    """Training reward vs step: per method the seed mean (smoothed over `window` steps) and ± one std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5.5))
    plot_curves(axis, runs, window)
    axis.set_ylabel(f"training reward (exact match), moving average over {window} steps")
    axis.set_title(f"{TASK_NAME}: mean ± std over seeds")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def parse_methods(text: str) -> list[Method]:
    """Comma-separated method tags; a misspelt one exits with one line."""
    try:
        return [Method.from_tag(tag.strip()) for tag in text.split(",") if tag.strip()]
    except ValueError as error:
        defaults = ",".join(m.tag for m in QUICK_METHODS)
        raise GRPOLambdaError(f"--methods: {error} Defaults: {defaults}.") from None


def quick_study(args: argparse.Namespace, out: Path, sft_dir: Path, sft: dict, size: dict, started: float) -> int:
    from tqdm.auto import tqdm

    steps = max(1, round(size["rl_steps"] * args.scale))
    last_steps = max(1, round(size["last_steps"] * args.scale))
    seeds = list(range(args.seeds if args.seeds is not None else size["seeds"]))
    lr = args.learning_rate
    methods = parse_methods(args.methods) if args.methods else list(QUICK_METHODS)
    at_099 = [m for m in methods if m.loss_variant != "grpo" and m.trace_lambda == 0.99]
    with_098 = bool(at_099) and not args.no_lambda_098
    total_runs = len(seeds) * (len(methods) + with_098)
    print(f"[toy] 2/3 RL: {total_runs} runs of {steps} steps ({args.workers} at a time)", flush=True)
    runs = [Run(m, lr, steps, s, lemma1_diagnostics=True) for m in methods for s in seeds]
    with tqdm(total=total_runs * steps, unit="step", desc="RL steps", dynamic_ncols=True) as bar:
        run_all(runs, out, sft_dir, args.workers, bar)
        if with_098:
            finals = {
                m: logged_mean([final_value(Run(m, lr, steps, s).records(out), "reward", last_steps) for s in seeds])
                for m in at_099
            }
            best = max(at_099, key=finals.get)
            extra = Method(
                best.loss_variant, best.trace_style, 0.98, best.adv_clamp_min, best.advantage_bias_correction
            )
            print(f"\n[toy] best at λ = 0.99: {best.tag} ({finals[best]:.3f}); running {extra.tag}", flush=True)
            methods.append(extra)
            extra_runs = [Run(extra, lr, steps, s, lemma1_diagnostics=True) for s in seeds]
            run_all(extra_runs, out, sft_dir, args.workers, bar)

    print("[toy] 3/3 table and plot", flush=True)
    logs = {m.tag: [Run(m, lr, steps, s).records(out) for s in seeds] for m in methods}
    summary = summarise(logs, last_steps)
    table = results_table(summary, last_steps, steps)
    plot = plot_rewards(logs, out / "reward_vs_step.png", window=max(1, last_steps // 2))
    minutes = (time.time() - started) / 60
    settings = {**RL_SETTINGS, "learning_rate": lr}
    note = (
        f"{TASK_NAME}, tiny Qwen2 SFT'd for {sft['sft_steps']} steps (exact-match rate {sft['test_accuracy_t1']:.2f} "
        f"sampling at T=1), then {steps} RL steps per run, seeds {seeds}; settings {json.dumps(settings)}. "
        f"Wall time of this invocation: {minutes:.1f} min.\n"
    )
    (out / "results.md").write_text(note + "\n" + table + "\n")
    (out / "results.json").write_text(json.dumps({"sft": sft, "steps": steps, "summary": summary}, indent=1) + "\n")
    print("\n" + table)
    print(f"\ntable: {out / 'results.md'}\nplot:  {plot}\nlogs:  {out / 'runs'}/<method>/<setting>/seed<k>/")
    print(f"wall time: {minutes:.1f} min")
    return 0
