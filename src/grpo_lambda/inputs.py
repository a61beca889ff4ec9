"""Checks of what a command is given, made before anything heavy is imported or started: the model (a folder that
holds a saved model, or a Hub id that is cached or reachable) and the output folder (writable). `make train` / `make
sft` (grpo_lambda.jobs.launch) and `make evaluate` call them, so that a wrong input costs one line in seconds, not a
traceback under accelerate's after the model loads. The training set's check is data.check_dataset.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import GRPOLambdaError
from .layout import EMBEDDED_MODELS, EMBEDDED_PREFIX, local_path

MODEL_FILES = ("config.json", "adapter_config.json")  # a saved model; a LoRA adapter (transformers loads it with peft)
_TRUE = ("1", "on", "yes", "true")


def hub_offline() -> bool:
    """Whether the Hugging Face libraries are told to stay offline (HF_HUB_OFFLINE, or transformers' own flag)."""
    return any(os.environ.get(name, "").lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_model(name: str, flag: str = "MODEL") -> None:
    """A model the trainer or the evaluation can load: an `embedded:` model, a folder with config.json, or a Hub id
    that is in the Hugging Face cache or on the Hub. `flag` is how the user gave it."""
    if name.startswith(EMBEDDED_PREFIX):
        if name not in EMBEDDED_MODELS:
            raise GRPOLambdaError(
                f"{flag}={name} is no embedded model; they are {', '.join(EMBEDDED_MODELS)} (else a folder or a Hub "
                "id)."
            )
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if not any((path / file).is_file() for file in MODEL_FILES):
            raise GRPOLambdaError(
                f"model folder {path.absolute()} has no config.json: give a saved model ({flag}=<a run's output "
                "folder or its checkpoint-N>) or a Hub id."
            )
        return
    if path.exists():
        raise GRPOLambdaError(f"{flag}={name} is a file; give a model folder (with config.json) or a Hub id.")
    if local_path(name) is not None:  # it can only be a path (layout.local_path), and there is none
        raise GRPOLambdaError(
            f"model folder {path.absolute()} does not exist: check {flag} (a folder, or a Hub id such as "
            "Qwen/Qwen2.5-Math-1.5B-Instruct)."
        )
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise GRPOLambdaError(f"{flag}={name} is neither a folder here nor a Hub id (org/name).") from None
    _check_hub_model(name, flag, path)


def _check_hub_model(name: str, flag: str, path: Path) -> None:
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    if any(isinstance(try_to_load_from_cache(name, file, cache_dir=cache), str) for file in MODEL_FILES):
        return
    if hub_offline():
        raise GRPOLambdaError(
            f"{flag}={name}: HF_HUB_OFFLINE=1 and the model is not in the Hugging Face cache {cache} (nor a folder "
            f"{path.absolute()}): download it first (make download MODEL={name}) or unset HF_HUB_OFFLINE."
        )
    try:
        hf_hub_download(name, "config.json", cache_dir=cache)  # a few kB, into the cache the trainer reads
    except GatedRepoError:
        raise GRPOLambdaError(
            f"{flag}={name} is gated on the Hugging Face Hub: accept its terms on its page and log in (hf auth login)."
        ) from None
    except RepositoryNotFoundError:
        raise GRPOLambdaError(
            f"{flag}={name}: no such model on the Hugging Face Hub nor folder {path.absolute()} (a private model "
            "needs hf auth login)."
        ) from None
    except EntryNotFoundError:
        return  # a repository without config.json (an adapter): its loader says what it needs
    except Exception as error:  # no network, a proxy, a timeout: huggingface_hub raises several kinds
        reason = " ".join(str(error).split())[:200]
        raise GRPOLambdaError(
            f"{flag}={name}: cannot reach the Hugging Face Hub ({type(error).__name__}: {reason}). On a node "
            f"without network, download it first (make download MODEL={name}) and set HF_HUB_OFFLINE=1."
        ) from None


def check_output_folder(folder: str | os.PathLike, flag: str = "--output_dir") -> None:
    """`folder` can be created and written to: a temporary file is created (and removed) in it, or in its nearest
    existing parent (nothing else is created)."""
    path = Path(folder).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise GRPOLambdaError(f"output folder {path}: {existing} is a file, not a folder; choose another with {flag}.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise GRPOLambdaError(
            f"output folder {path} is not writable ({error.strerror} in {existing}): choose another with {flag}."
        ) from None
