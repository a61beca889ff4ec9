"""What an evaluation is asked to do: `EvalConfig`, whose fields are the evaluation's command line (`parse_config`:
one parser, HfArgumentParser, so each default is written once, here) and a sweep's `evaluation:` section; checked on
creation. The peers' evaluation settings, selectable by name: `PROTOCOLS`. The template a model is evaluated with,
when none is given: `run_template`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from dataclasses import dataclass, field

from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.evaluation.suite import BENCHMARKS, BUILTIN_BENCHMARKS
from grpo_lambda.templates import TEMPLATES

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("vllm", "transformers")  # transformers: only when asked for, never as a fallback

# The peers' evaluation protocols: what each sets (docs/evaluation.md, "Protocols", gives each one's source). Samples
# per problem as SAMPLES writes them: `benchmark:k` entries and a bare k for the other benchmarks.
PROTOCOLS: dict[str, dict] = {
    # sail-sg/understand-r1-zero evaluate_model.py (the paper's numbers): greedy, 3 000 new tokens in 4 096
    "understand-r1-zero": dict(samples="1", temperature=0.0, top_p=1.0, max_new_tokens=3000, max_model_len=4096),
    # huggingface/open-r1 README, "Reproducing Deepseek's evaluation results" (lighteval): AIME 64, MATH-500 4 at
    # T 0.6, top-p 0.95, 32 768 tokens; AMC, Minerva and OlympiadBench, which it does not evaluate, MATH-500's 4
    "open-r1": dict(
        samples="aime:64,math:4,4", temperature=0.6, top_p=0.95, max_new_tokens=32768, max_model_len=32768
    ),
    # DAPO §4.1 (avg@32 on AIME at T 1.0, top-p 0.7); AMC's 83 problems 32 too, the large benchmarks 4; the paper's
    # token limits (DAPO's 20 480-token generations do not fit the 4 096-token Qwen2.5-Math models)
    "avg32": dict(samples="aime:32,amc:32,4", temperature=1.0, top_p=0.7, max_new_tokens=3000, max_model_len=4096),
}
DEFAULT_PROTOCOL = "understand-r1-zero"  # what every protocol setting left unset takes when no PROTOCOL is named


@dataclass
class EvalConfig:
    """An evaluation of one model on the suite (the understand-r1-zero protocol by default)."""

    model: str = field(metadata={"help": "Checkpoint folder, Hub id or embedded:SmolLM2-135M-Instruct."})
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of samples.jsonl and results.json (resumed); default: named after the model."},
    )
    suite: str | None = field(
        default=None,
        metadata={"help": "Benchmark folder (JSONL or save_to_disk) or Hub dataset id; default: the shipped suite."},
    )
    benchmarks: list[str] = field(
        default_factory=lambda: list(BENCHMARKS),
        metadata={"help": f"Benchmarks, from {', '.join(BENCHMARKS + BUILTIN_BENCHMARKS)}."},
    )
    template: str | None = field(
        default=None,
        metadata={"help": "Prompt template, qwen_math|r1|no; default: the model's run record, else its recipes."},
    )
    backend: str = field(
        default="vllm", metadata={"help": "vllm, or transformers where vLLM cannot run (~20x slower)."}
    )
    protocol: str | None = field(
        default=None,
        metadata={
            "help": f"{', '.join(PROTOCOLS)}: sets samples, temperature, top_p and the token limits (a flag that "
            f"contradicts it is refused); unset: {DEFAULT_PROTOCOL}'s settings, which flags may change."
        },
    )
    max_new_tokens: int | None = field(default=None, metadata={"help": "Tokens per completion (default: 3000)."})
    max_model_len: int | None = field(default=None, metadata={"help": "Prompt plus completion (default: 4096)."})
    limit: int | None = field(default=None, metadata={"help": "First N problems of each benchmark (smoke runs)."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate call (transformers backend)."})
    dtype: str = field(default="bfloat16", metadata={"help": "Weights' dtype in the engine."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs vLLM shards the model over."})
    data_parallel_size: int = field(
        default=1,
        metadata={
            "help": "Engines, each on its own tensor_parallel_size GPUs of CUDA_VISIBLE_DEVICES, over disjoint problems."
        },
    )
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vLLM's share of each GPU's memory."})
    grading_timeout_s: float = field(default=5.0, metadata={"help": "Time bound per graded answer (scored 0)."})
    seed: int = field(
        default=0, metadata={"help": "With a temperature, each (problem, sample) draws from a seed derived from it."}
    )
    samples: str | None = field(
        default=None,
        metadata={
            "help": "Samples per problem: k, or per benchmark aime:32,amc:32,math:4 with a bare k for the rest (avg@k, "
            "maj@k, pass@k; needs a temperature); default 1."
        },
    )
    temperature: float | None = field(default=None, metadata={"help": "0 (default): greedy; e.g. 0.6 to sample."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling, with a temperature above 0."})

    def __post_init__(self):
        if self.output_dir is None:
            self.output_dir = default_output_dir(self.model)
        known = BENCHMARKS + BUILTIN_BENCHMARKS
        unknown = [b for b in self.benchmarks if b not in known]
        if unknown or not self.benchmarks:
            raise GRPOLambdaError(f"unknown benchmark(s) {unknown}; choose from {', '.join(known)}.")
        self._apply_protocol()
        if self.template is not None and self.template not in TEMPLATES:
            raise GRPOLambdaError(f"TEMPLATE={self.template!r} is not one of {', '.join(TEMPLATES)}.")
        if self.backend not in BACKENDS:
            raise GRPOLambdaError(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}.")
        if self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1
        ):
            raise GRPOLambdaError(f"limit={self.limit!r}: give a positive number of problems per benchmark (LIMIT=N).")
        for name in ("max_new_tokens", "max_model_len", "batch_size", "tensor_parallel_size", "data_parallel_size"):
            if getattr(self, name) < 1:
                raise GRPOLambdaError(f"{name}={getattr(self, name)} must be a positive number.")
        counts = sample_counts(self.samples, self.benchmarks)
        check_sampling(max(counts.values()), self.temperature, self.top_p)
        self.samples = canonical_samples(counts)
        if self.backend == "transformers":  # settings of the vLLM engine that generate would ignore
            ignored = [
                f"{f.name}={getattr(self, f.name)}"
                for f in dataclasses.fields(self)
                if f.name in ("tensor_parallel_size", "gpu_memory_utilization") and getattr(self, f.name) != f.default
            ]
            if ignored:
                raise GRPOLambdaError(
                    f"{', '.join(ignored)} would be ignored: the transformers backend runs no vLLM engine; drop it or "
                    "use BACKEND=vllm."
                )

    def _apply_protocol(self) -> None:
        """Fills the protocol settings left unset from the named protocol (else DEFAULT_PROTOCOL's); one the user set
        that contradicts a named protocol is refused: results.json would name a protocol it was not evaluated with."""
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise GRPOLambdaError(f"PROTOCOL={self.protocol!r} is not one of {', '.join(PROTOCOLS)}.")
        preset = PROTOCOLS[self.protocol or DEFAULT_PROTOCOL]
        if self.protocol is not None:
            given = {name: getattr(self, name) for name in preset if getattr(self, name) is not None}
            conflicts = _differences({**preset, **given}, preset, self.benchmarks)
            if conflicts:
                raise GRPOLambdaError(
                    f"PROTOCOL={self.protocol} sets {'; '.join(f'{n}={preset[n]} (given: {given[n]})' for n in conflicts)}"
                    ": drop those flags, or leave PROTOCOL out to evaluate with your own settings."
                )
        for name, value in preset.items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    def sample_counts(self) -> dict[str, int]:
        """Samples per problem of each evaluated benchmark."""
        return sample_counts(self.samples, self.benchmarks)

    @property
    def protocol_used(self) -> str | None:
        """The protocol whose settings this evaluation has (named or not), None for settings of no protocol."""
        return matching_protocol(dataclasses.asdict(self))

    @property
    def sampling(self) -> dict | None:
        """What each sample record carries about how it was drawn: None for greedy decoding (the paper's protocol),
        else temperature, top_p and seed, so that a resumed evaluation refuses samples drawn otherwise."""
        if self.temperature == 0:
            return None
        return {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}


EVAL_FIELDS = frozenset(f.name for f in dataclasses.fields(EvalConfig))


@dataclass
class RegradeConfig:
    """`--regrade`: re-score an evaluation folder's samples.jsonl, generating nothing."""

    regrade: str = field(metadata={"help": "The evaluation folder (with samples.jsonl)."})
    template: str | None = field(default=None, metadata={"help": "Default: the one results.json records."})
    suite: str | None = field(default=None, metadata={"help": "Default: the one results.json records."})
    grading_timeout_s: float = field(default=EvalConfig.grading_timeout_s, metadata={"help": "Per graded answer."})


def _parser(config_type: type):
    from transformers import HfArgumentParser

    class OneLineParser(HfArgumentParser):
        def error(self, message: str):
            raise GRPOLambdaError(f"evaluation: {message}")

    return OneLineParser(config_type)


def parse_config(argv: list[str], config_type: type = EvalConfig):
    """`config_type` from a command line, by HfArgumentParser (a list field takes several values: `--benchmarks aime
    amc`); a bad flag or value is one line."""
    try:
        (config,) = _parser(config_type).parse_args_into_dataclasses(args=list(argv))
    except GRPOLambdaError:
        raise
    except (TypeError, ValueError) as error:
        raise GRPOLambdaError(f"evaluation: {' '.join(str(error).split())}") from None
    return config


def given_fields(flags: list[str]) -> dict:
    """The EvalConfig fields `flags` set, typed by the same parser, its defaults left out (checked: `check_fields`)."""
    parser = _parser(EvalConfig)
    for action in parser._actions:
        action.default, action.required = argparse.SUPPRESS, False
    given, unknown = parser.parse_known_args(list(flags))
    if unknown:
        raise GRPOLambdaError(f"evaluation: unrecognized arguments: {' '.join(unknown)}")
    return vars(given)


def as_flags(values: dict) -> list[str]:
    """EvalConfig fields as the command line `parse_config` reads back into them (None: left at its default)."""
    flags = []
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            flags += [f"--{name}", *(str(item) for item in value)]
        else:
            flags += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


def check_fields(values: dict, where: str) -> None:
    """Refuses keys that are not EvalConfig fields (`where`: how the user wrote them), in one line."""
    allowed = {f.name for f in dataclasses.fields(EvalConfig)} - {"model", "output_dir"}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise GRPOLambdaError(
            f"unknown key(s) {', '.join(unknown)} in {where}; allowed: {', '.join(sorted(allowed))}."
        )


def parse_samples(spec) -> tuple[dict[str, int], int | None]:
    """SAMPLES as written: a count (4, "4") or `benchmark:k` entries with at most one bare count for the other
    benchmarks ("aime:32,amc:32,4") → ({benchmark: k}, the count of the rest or None)."""
    fix = (
        "give a whole number of samples per problem, at least 1 (SAMPLES=4), or counts per benchmark with a bare "
        "one for the rest (SAMPLES=aime:32,amc:32,4)."
    )
    if isinstance(spec, bool) or not isinstance(spec, (int, str)):
        raise GRPOLambdaError(f"samples={spec}: {fix}")
    named, rest = {}, None
    for entry in str(spec).replace(" ", "").split(","):
        name, _, count = entry.rpartition(":")
        if not count.isdigit() or int(count) < 1:
            raise GRPOLambdaError(f"samples={spec}: {fix}")
        if not name:
            if rest is not None:
                raise GRPOLambdaError(f"samples={spec} gives two counts for the other benchmarks: keep one.")
            rest = int(count)
            continue
        known = BENCHMARKS + BUILTIN_BENCHMARKS
        if name not in known or name in named:
            why = "twice" if name in named else f"which is no benchmark ({', '.join(known)})"
            raise GRPOLambdaError(f"samples={spec} names {name} {why}: {fix}")
        named[name] = int(count)
    return named, rest


def sample_counts(spec, benchmarks: list[str]) -> dict[str, int]:
    """Samples per problem of each of `benchmarks` under SAMPLES `spec` (parse_samples); a benchmark that `spec`
    gives no count is refused."""
    named, rest = parse_samples(spec)
    counts = {benchmark: named.get(benchmark, rest) for benchmark in benchmarks}
    missing = [benchmark for benchmark, count in counts.items() if count is None]
    if missing:
        raise GRPOLambdaError(
            f"samples={spec} gives no count for {', '.join(missing)}: add {missing[0]}:k, or a bare count for the "
            "rest (SAMPLES=aime:32,4)."
        )
    return counts


def canonical_samples(counts: dict[str, int]) -> int | str:
    """How a config holds its resolved samples: one count when every benchmark has it (results.json's `samples: 8`),
    else each benchmark's ("aime:32,math:4")."""
    if len(set(counts.values())) == 1:
        return next(iter(counts.values()))
    return ",".join(f"{benchmark}:{count}" for benchmark, count in counts.items())


def _differences(values: dict, preset: dict, benchmarks: list[str]) -> list[str]:
    """The settings of `preset` (a protocol) that `values` has otherwise (samples compared per benchmark)."""
    found = []
    for name, wanted in preset.items():
        value = values[name]
        if name == "samples":
            same = sample_counts(value, benchmarks) == sample_counts(wanted, benchmarks)
        else:
            same = value == wanted
        if not same:
            found.append(name)
    return found


def protocol_differences(record: dict, protocol: str = DEFAULT_PROTOCOL) -> list[str]:
    """`name=value` for each setting of `protocol` that an evaluation's config (EvalConfig fields, as results.json
    records them) has otherwise. A setting it does not record has DEFAULT_PROTOCOL's value: a greedy results.json
    records no samples, temperature and top_p, and files written before a setting existed do not record it."""
    default = PROTOCOLS[DEFAULT_PROTOCOL]
    values = {name: record.get(name, default[name]) for name in default}
    values = {name: default[name] if value is None else value for name, value in values.items()}
    benchmarks = list(record.get("benchmarks") or BENCHMARKS)
    return [f"{name}={values[name]}" for name in _differences(values, PROTOCOLS[protocol], benchmarks)]


def matching_protocol(record: dict) -> str | None:
    """The protocol whose every setting an evaluation's config has (`protocol_differences`), or None."""
    return next((name for name in PROTOCOLS if not protocol_differences(record, name)), None)


def check_sampling(samples: int, temperature: float, top_p: float) -> None:
    """Refuses settings that cannot mean what they say: k greedy samples are k copies of one, and top_p does nothing
    without sampling."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise GRPOLambdaError(f"samples={samples!r}: give a whole number of samples per problem, at least 1.")
    if not temperature >= 0:  # also refuses NaN
        raise GRPOLambdaError(f"temperature={temperature}: give 0 (greedy) or a positive temperature such as 0.6.")
    if not 0 < top_p <= 1:
        raise GRPOLambdaError(f"top_p={top_p}: give a value in (0, 1], 1 for no nucleus cut.")
    if temperature == 0 and samples > 1:
        raise GRPOLambdaError(
            f"samples={samples} with temperature 0 gives {samples} copies of the one greedy completion: set a "
            "temperature (e.g. --temperature 0.6, TEMPERATURE=0.6) or samples=1."
        )
    if temperature == 0 and top_p != 1:
        raise GRPOLambdaError(
            f"top_p={top_p} does nothing with temperature 0 (greedy): set a temperature (e.g. 0.6) or top_p=1."
        )


def default_output_dir(model: str) -> str:
    """Where an evaluation of `model` goes when no folder is given: named after the model as resolved, so that two
    models never share one (a trailing slash or `..` changes nothing): a folder under data/ mirrors its path
    (data/eval/<model>/grpo/<dataset>_<tag>, which the tables find), another folder gets its name and a hash of its
    absolute path, a Hub id data/eval/hub/<org>/<name>, an embedded model data/eval/embedded/<name>."""
    import hashlib
    from pathlib import Path

    from grpo_lambda.layout import EMBEDDED_PREFIX, local_path, model_tail

    if model.startswith(EMBEDDED_PREFIX):
        return f"data/eval/embedded/{model_tail(model)}"
    path = local_path(model)
    if path is None:
        return f"data/eval/hub/{model}"
    path = path.resolve()
    try:
        return str(Path("data/eval") / path.relative_to(Path("data").resolve()))
    except ValueError:
        return f"data/eval/{path.name}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


def run_template(model: str) -> tuple[str, str]:
    """The template a model is evaluated with when none is given, and why: the one its training used, as the run
    record of its folder says (a run folder, a checkpoint in one, an SFT folder); else the `prompt_template` its
    recipes set (a Hub model of the paper's grid); else the training stage's own default (configs.DataArguments)."""
    from grpo_lambda.layout import model_recipes, run_folder_of, run_record

    folder = run_folder_of(model) if os.path.isdir(model) else None
    template = (run_record(folder) or {}).get("prompt_template") if folder else None
    if template:
        return template, f"the template {folder} was trained with"
    from grpo_lambda.configs import DataArguments, read_recipe, resolve_settings

    recipes = model_recipes(model, "grpo") or model_recipes(model, "sft")
    if recipes:
        stage = recipes[0].parent.name
        found = {resolve_settings(stage, read_recipe(p), for_reading=True).script.prompt_template for p in recipes}
        if len(found) > 1:
            raise GRPOLambdaError(
                f"the recipes of {model} use templates {', '.join(sorted(found))}: say which (TEMPLATE=...)."
            )
        return found.pop(), f"the template of the recipes of {model}"
    default = next(f.default for f in dataclasses.fields(DataArguments) if f.name == "prompt_template")
    return default, "no run record or recipe for this model: the training default"
