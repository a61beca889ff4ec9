"""What an evaluation is asked to do (`EvalConfig`, checked on creation) and the template a model's recipes use."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.evaluation.suite import BENCHMARKS, BUILTIN_BENCHMARKS
from grpo_lambda.templates import TEMPLATES

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("vllm", "transformers")  # transformers: only when asked for, never as a fallback
DEFAULT_TEMPLATE = "qwen_math"  # for models without a recipe


@dataclass
class EvalConfig:
    model: str
    output_dir: str
    suite: str | None = None  # None: DEFAULT_SUITE (recorded as None, so that results.json moves between machines)
    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARKS))
    template: str | None = None  # None: the model's recipe template (default_template)
    backend: str = "vllm"
    max_new_tokens: int = 3000  # understand-r1-zero protocol
    max_model_len: int = 4096
    limit: int | None = None  # first N problems of each benchmark (smoke runs)
    batch_size: int = 8  # prompts per `generate` call of the transformers backend (vLLM takes them all at once)
    dtype: str = "bfloat16"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    grading_timeout_s: float = 5.0
    seed: int = 0  # with temperature > 0, each (problem, sample) draws from its own seed derived from this one
    samples: int = 1  # per problem; 1 greedy sample is the paper's protocol
    temperature: float = 0.0  # 0: greedy (the paper's protocol); > 0: sampling, for avg@k and pass@k
    top_p: float = 1.0  # nucleus sampling; only with temperature > 0

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
        check_sampling(self.samples, self.temperature, self.top_p)

    @property
    def sampling(self) -> dict | None:
        """What each sample record carries about how it was drawn: None for greedy decoding (the paper's protocol),
        else temperature, top_p and seed, so that a resumed evaluation refuses samples drawn otherwise."""
        if self.temperature == 0:
            return None
        return {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}


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
