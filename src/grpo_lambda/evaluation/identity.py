"""What an evaluation folder holds: its identity, recorded once when the evaluation starts (`<output_dir>/
evaluation.json`, through the store) and checked on every resume, so that one folder never mixes the samples of two
models, suites, templates, token limits, sampling settings, backends or dtypes.

- The model: as given (a path made absolute), with a fingerprint of its weights (a local folder: SHA-256 over each
  weights file's name, size and three 1 MiB slices — start, middle, end — read in milliseconds, yet different for any
  two trainings) or its Hub revision (the commit of the cached snapshot; unresolved until downloaded).
- The suite: where it comes from (None: the shipped one) and, per benchmark, a SHA-256 of its problems and golds,
  so that another copy or an edited file is told apart.
- How samples are drawn: template, max_new_tokens, max_model_len, temperature, top_p and seed (sampling only),
  backend and dtype. A protocol (PROTOCOL=) is these settings: a resume under another protocol differs in them.
What a resume may change: the benchmarks, LIMIT and SAMPLES, per benchmark (it adds what is missing, so a folder of
avg@4 becomes one of avg@32; fewer are summarized from the first k), and the engine's knobs that do not change what
is generated (batch size, GPU memory, tensor and data parallel sizes, grading timeout).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.layout import EMBEDDED_PREFIX, local_path

IDENTITY_FIELDS = ("template", "max_new_tokens", "max_model_len", "backend", "dtype")
_SLICE = 1 << 20
_WEIGHTS = (".safetensors", ".bin", ".pt", ".gguf")


def model_fingerprint(folder: str | os.PathLike) -> str:
    """SHA-256 over the weights files of a model folder (their names, sizes and three 1 MiB slices each) and its
    config.json."""
    digest = hashlib.sha256()
    files = sorted(
        p for p in Path(folder).rglob("*") if p.is_file() and (p.suffix in _WEIGHTS or p.name == "config.json")
    )
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder)}:{size}".encode())
        with path.open("rb") as stream:
            for offset in sorted({0, max(0, size // 2 - _SLICE // 2), max(0, size - _SLICE)}):
                stream.seek(offset)
                digest.update(stream.read(_SLICE))
    return digest.hexdigest()[:16]


def hub_revision(model: str) -> str | None:
    """The commit of `model`'s snapshot in the Hugging Face cache, or None before it is downloaded."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, local_files_only=True)).name
    except Exception:  # noqa: BLE001 - not cached (or not a Hub id): unresolved
        return None


def suite_fingerprints(items: list[dict]) -> dict[str, str]:
    """Per benchmark, SHA-256 of its problems and gold answers in order."""
    digests: dict[str, hashlib._Hash] = {}
    for item in items:
        digest = digests.setdefault(item["benchmark"], hashlib.sha256())
        digest.update(json.dumps([item["problem"], item["golds"]], ensure_ascii=False).encode())
    return {benchmark: digest.hexdigest()[:16] for benchmark, digest in digests.items()}


def identity(config, model_path: str, suite_items: list[dict]) -> dict:
    """The identity of an evaluation (module docstring): `model_path` is the folder the model loads from (an
    `embedded:` model's built folder), `suite_items` every problem of its benchmarks (no LIMIT)."""
    local = local_path(config.model) if not config.model.startswith(EMBEDDED_PREFIX) else None
    model = str(local) if local else config.model
    weights = Path(model_path)
    fingerprint = model_fingerprint(weights) if weights.is_dir() else None
    return {
        "model": model,
        "model_fingerprint": fingerprint,
        "model_revision": None if fingerprint else hub_revision(config.model),
        "suite": config.suite,
        "suite_fingerprints": suite_fingerprints(suite_items),
        **{name: getattr(config, name) for name in IDENTITY_FIELDS},
        "sampling": config.sampling,
    }


def differences(recorded: dict, current: dict) -> list[str]:
    """`name: recorded → now` for every identity field that differs (a benchmark's suite fingerprint only where both
    evaluated it; a Hub revision only where both resolved it)."""
    found = []
    for name, value in current.items():
        before = recorded.get(name)
        if name == "suite_fingerprints":
            changed = [b for b in value if b in (before or {}) and before[b] != value[b]]
            found += [f"the {b} problems of the suite (fingerprint {before[b]} → {value[b]})" for b in changed]
        elif name == "model_revision" and (before is None or value is None):
            continue
        elif before != value:
            found.append(f"{name}: {before} → {value}")
    return found


def check_identity(folder: Path, recorded: dict | None, current: dict) -> None:
    """Refuses to resume an evaluation folder that holds another evaluation, in one line naming the differences."""
    if recorded is None:
        return
    found = differences(recorded, current)
    if found:
        shown = "; ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise GRPOLambdaError(
            f"{folder} holds another evaluation ({shown}): evaluate into another folder (OUTPUT=, --output_dir), or "
            "with the recorded settings to resume it."
        )
