"""`make download`: fetch models and training sets into the Hugging Face cache from a machine with network (a login
node), before jobs start on GPU nodes that may have none, and so that the array tasks of a sweep do not all download
the same weights at once.

    python -m grpo_lambda.jobs.download --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --dataset math12k
    python -m grpo_lambda.jobs.download --sweep paper-1.5b [--dry-run]   # every model and training set of a sweep

The cache is Hugging Face's (HF_HOME, default ~/.cache/huggingface); a sweep's `hf_home:` sets it for the sweep's
jobs and for this command alike. Put it on a filesystem the GPU nodes share. Local folders, `embedded:` models and the
built-in tasks need nothing. A rerun downloads only what is missing (the Hub client's own cache check).
"""

from __future__ import annotations

import argparse
import os
import sys

from grpo_lambda.errors import GRPOLambdaError, disk_full_message, exit_status
from grpo_lambda.inputs import hub_offline
from grpo_lambda.layout import EMBEDDED_PREFIX, local_path


def plan(models: list[str], datasets: list[str]) -> tuple[list[str], list[str]]:
    """The models and training sets to fetch (in order, once each): local folders, `embedded:` models and built-in
    or registered tasks left out."""
    from grpo_lambda.data import GENERATED_TASKS

    def _local(name: str) -> bool:  # a folder, a file or an embedded: model: nothing to fetch
        return name.startswith(EMBEDDED_PREFIX) or local_path(name) is not None

    fetch_models = [m for m in dict.fromkeys(models) if not _local(m)]
    fetch_datasets = [d for d in dict.fromkeys(datasets) if not _local(d) and d not in GENERATED_TASKS]
    return fetch_models, fetch_datasets


def download(models: list[str], datasets: list[str]) -> None:
    """Fetch `models` (every file of the Hub repository, at its main revision) and `datasets` (as training loads
    them, grpo_lambda.data.load_problem_dataset) into the Hugging Face cache. What cannot be fetched (no network, a
    name the Hub does not have, a gated repository) stops in one line naming it."""
    from huggingface_hub import HfApi, snapshot_download

    if hub_offline():
        raise GRPOLambdaError("HF_HUB_OFFLINE is set, so nothing can be downloaded: unset it (unset HF_HUB_OFFLINE).")
    from grpo_lambda.data import SOURCES, load_problem_dataset

    for model in models:
        print(f"model {model}", flush=True)
        path = _fetch(f"MODEL={model}", "model", lambda model=model: snapshot_download(model))
        print(f"  in {path}", flush=True)
    for dataset in datasets:
        print(f"training set {dataset}", flush=True)
        hub_id = SOURCES[dataset].hub_id if dataset in SOURCES else dataset
        # one request first: without network, datasets' own retries take half a minute to give up
        _fetch(f"DATASET={dataset}", "dataset", lambda hub_id=hub_id: HfApi().dataset_info(hub_id, timeout=30))
        rows = _fetch(f"DATASET={dataset}", "dataset", lambda dataset=dataset: load_problem_dataset(dataset, "train"))
        print(f"  {len(rows)} problems", flush=True)


def _fetch(what: str, kind: str, fetch):
    """`fetch()`, with what stops it said in one line: a repository the Hub does not have or gates, no network."""
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        return fetch()
    except GRPOLambdaError:
        raise
    except GatedRepoError:
        raise GRPOLambdaError(
            f"{what} is gated on the Hugging Face Hub: accept its terms on its page and log in (hf auth login)."
        ) from None
    except (RepositoryNotFoundError, DatasetNotFoundError):
        raise GRPOLambdaError(
            f"{what}: no such {kind} on the Hugging Face Hub: check the name (a private one needs hf auth login)."
        ) from None
    except Exception as error:  # no network, a proxy, a timeout: the Hub client and datasets raise several kinds
        if disk_full_message(error):
            raise  # the entry point's one line names the file and the space left
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise GRPOLambdaError(
            f"{what}: cannot fetch it from the Hugging Face Hub ({type(error).__name__}: {reason}); run make download "
            "where there is network (a login node)."
        ) from None


def sweep_inputs(name: str) -> tuple[list[str], list[str], str | None]:
    """The models and training sets of a sweep's runs (recipe values with the sweep's overrides), and its hf_home."""
    from grpo_lambda.jobs.sweep import load_sweep

    sweep = load_sweep(name)
    runs = [*sweep.sft_runs, *(run for run in sweep.runs if run.after is None)]  # the others start from an SFT run
    models = [run.settings.model.model_name_or_path for run in runs]
    datasets = [run.settings.script.dataset_name for run in [*sweep.sft_runs, *sweep.runs]]
    return models, datasets, sweep.hf_home


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="A Hub model id (repeatable).")
    parser.add_argument("--dataset", action="append", default=[], help="A training set name or Hub id (repeatable).")
    parser.add_argument("--sweep", default=None, help="Every model and training set of this sweep.")
    parser.add_argument("--dry-run", action="store_true", help="List what would be fetched; fetch nothing.")
    args = parser.parse_args(argv)
    models, datasets = list(args.model), list(args.dataset)
    if args.sweep:
        sweep_models, sweep_datasets, hf_home = sweep_inputs(args.sweep)
        models, datasets = models + sweep_models, datasets + sweep_datasets
        if hf_home:
            os.environ["HF_HOME"] = hf_home  # before huggingface_hub reads it
    if not (models or datasets):
        raise GRPOLambdaError("nothing to download: give MODEL=<hub id>, DATASET=<name> or SWEEP=<sweep>.")
    models, datasets = plan(models, datasets)
    cache = os.environ.get("HF_HOME") or "~/.cache/huggingface (HF_HOME)"
    print(
        f"to fetch into {cache}: models {', '.join(models) or 'none'}; training sets {', '.join(datasets) or 'none'}"
    )
    if not args.dry_run and (models or datasets):
        download(models, datasets)
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main))
