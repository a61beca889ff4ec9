"""One spelling of a training method, built from the config values that define it; the run folders named after it.

A method's tag is what recipe file names, sweep rows, run folders, tables, plots, the toy benchmark and the
benches print, and what `make train` accepts:

    grpo                                        loss_variant=grpo (TRL's loss, no advantage clamp)
    eps_trace-both-0.99                         loss_variant=eps_trace, trace_style=both, trace_lambda=0.99
    eps_weight-recent-0.98                      loss_variant=eps_weight, trace_style=recent, trace_lambda=0.98
    grpo+adv_clamp_min=-0.1                     a field that differs from the method's paper setting: +field=value
    eps_trace-both-0.99+adv_clamp_min=none      (none: null)
    grpo+advantage_bias_correction=eos_bound

The paper's setting of `adv_clamp_min` is null for GRPO and −0.1 for GRPO-λ (Table 2), so the paper's runs need no
`+`.

Run folders are written and read here only: a GRPO run's is `<model tail>/grpo/<dataset>_<tag>` (`RunFolder`), an SFT
run's `<model tail>/sft/<dataset>` (`SFTFolder`), the dataset spelled by `dataset_tail`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import PurePath
from typing import Literal, get_args

from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.layout import model_tail

# The values and defaults of GRPOLambdaConfig's method fields. configs.py takes them from here, so that planning a
# run (`make train`, `make sweep` on a login node) knows them without importing TRL and vLLM (~15 s).
LossVariant = Literal["grpo", "eps_trace", "eps_weight"]
TraceStyle = Literal["recent", "both"]
AdvantageBiasCorrection = Literal["none", "eos_bound"]
LOSS_VARIANTS: tuple[str, ...] = get_args(LossVariant)
TRACE_STYLES: tuple[str, ...] = get_args(TraceStyle)
ADVANTAGE_BIAS_CORRECTIONS: tuple[str, ...] = get_args(AdvantageBiasCorrection)
CONFIG_DEFAULTS = dict(
    loss_variant="eps_trace",
    trace_style="recent",
    trace_lambda=0.99,
    adv_clamp_min=None,
    advantage_bias_correction="none",
)

PAPER_ADV_CLAMP_MIN = -0.1  # Table 2: GRPO-λ's advantage clamping
_TRACED = re.compile(r"(?P<variant>eps_trace|eps_weight)-(?P<style>recent|both)-(?P<lam>[0-9.e-]+)")
_RUN_FOLDER = re.compile(
    r"(?:^|/)(?:style-(?P<style>[^/]+)/)?(?P<model>[^/]+)/grpo/(?P<dataset>[^/_]+)_(?P<tag>[^/]+?)(?:/|$)"
)
STYLE_PREFIX = "style-"  # a run under a recipe style (recipes/styles/<name>.yaml) lives in style-<name>/<run folder>
_SFT_FOLDER = re.compile(r"(?:^|/)(?P<model>[^/]+)/sft/(?P<dataset>[^/_]+)(?:/|$)")


@dataclass(frozen=True)
class Method:
    """The config fields that tell one training method from another (GRPOLambdaConfig's names and values)."""

    loss_variant: str = "grpo"
    trace_style: str | None = None  # None for grpo
    trace_lambda: float | None = None  # None for grpo
    adv_clamp_min: float | None | str = "paper"  # "paper": the paper's setting for the loss variant
    advantage_bias_correction: str = "none"

    def __post_init__(self):
        if self.adv_clamp_min == "paper":
            object.__setattr__(self, "adv_clamp_min", self.paper_adv_clamp_min)
        traced = self.loss_variant != "grpo"
        if traced != (self.trace_style is not None and self.trace_lambda is not None):
            raise ValueError(
                f"loss_variant={self.loss_variant!r} needs trace_style and trace_lambda "
                f"{'set' if traced else 'unset'}; got trace_style={self.trace_style!r}, "
                f"trace_lambda={self.trace_lambda!r}."
            )
        if traced:
            object.__setattr__(self, "trace_lambda", float(self.trace_lambda))

    @property
    def paper_adv_clamp_min(self) -> float | None:
        return None if self.loss_variant == "grpo" else PAPER_ADV_CLAMP_MIN

    @property
    def tag(self) -> str:
        tag = self.loss_variant
        if self.loss_variant != "grpo":
            tag += f"-{self.trace_style}-{self.trace_lambda:g}"
        if self.adv_clamp_min != self.paper_adv_clamp_min:
            tag += f"+adv_clamp_min={_format(self.adv_clamp_min)}"
        if self.advantage_bias_correction != "none":
            tag += f"+advantage_bias_correction={self.advantage_bias_correction}"
        return tag

    def config(self) -> dict:
        """The GRPOLambdaConfig fields of this method (grpo leaves the trace fields at their defaults)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {key: value for key, value in values.items() if value is not None or key == "adv_clamp_min"}

    @classmethod
    def from_config(cls, config) -> Method:
        """From a GRPOLambdaConfig (or anything with its fields)."""
        traced = config.loss_variant != "grpo"
        return cls(
            config.loss_variant,
            config.trace_style if traced else None,
            config.trace_lambda if traced else None,
            config.adv_clamp_min,
            config.advantage_bias_correction,
        )

    @classmethod
    def from_tag(cls, tag: str) -> Method:
        """The inverse of `tag`."""
        base, *modifiers = tag.split("+")
        if base == "grpo":
            kwargs = dict(loss_variant="grpo")
        elif match := _TRACED.fullmatch(base):
            kwargs = dict(loss_variant=match["variant"], trace_style=match["style"], trace_lambda=float(match["lam"]))
        else:
            raise ValueError(
                f"{tag!r} is not a method tag: grpo or <eps_trace|eps_weight>-<recent|both>-<λ>, "
                "optionally followed by +field=value (e.g. grpo+adv_clamp_min=-0.1)."
            )
        for modifier in modifiers:
            key, sep, value = modifier.partition("=")
            if not sep or key not in ("adv_clamp_min", "advantage_bias_correction"):
                raise ValueError(
                    f"{tag!r}: modifier {modifier!r} is not adv_clamp_min=<value|none> or "
                    "advantage_bias_correction=<value>."
                )
            kwargs[key] = (None if value == "none" else float(value)) if key == "adv_clamp_min" else value
        return cls(**kwargs)


def _format(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def dataset_tail(dataset: str) -> str:
    """A training set as run folders and recipe file names spell it: its name tail with `_` written `-`
    ('my_data' → 'my-data', '/data/gsm_8k/' → 'gsm-8k', 'openai/gsm8k' → 'gsm8k').

    Why `-`: `<dataset>_<tag>` must split without knowing what a tag may hold. Method tags contain `_` themselves
    (`eps_trace`, `+adv_clamp_min=`), and a sweep variant may be named anything, so only a dataset without `_` makes
    the first `_` the separator, for every tag present and future. Splitting at "the `_` where a valid tag begins"
    instead would keep `my_data` as written, but would read the free variant name `x_grpo` of dataset `d` as dataset
    `d_x` trained with GRPO. The cost is that `my_data` and `my-data` share run folders; the paper's training sets
    and most Hub names already use `-`.
    """
    return model_tail(dataset).replace("_", "-")


@dataclass(frozen=True)
class RunFolder:
    """`<model tail>/grpo/<dataset>_<method tag>`: where a run of the recipes, a sweep or `make train` writes.

    Built from a model id or folder and a training set's name or path (kept as `model_tail` and `dataset_tail`), so
    that `RunFolder.find(folder.name) == folder` for every folder named by its method. A sweep variant may name its
    folder instead (`variant`, e.g. `lr-1e-5`); such a folder matches no paper cell, and `find` returns None for it.
    A run under a recipe style (recipes/styles/<style>.yaml over its recipe) lives in `style-<style>/<run folder>`,
    which `find` reads back (`style`); the paper's tables leave such runs out of the paper's cells.
    """

    model: str  # the model's name tail, e.g. DeepSeek-R1-Distill-Qwen-1.5B
    dataset: str  # dataset_tail of the training set, e.g. math-rl-16k
    method: Method
    variant: str | None = None  # a name in place of the method's tag; None when it is the method's tag
    style: str | None = None  # a recipe style overlaid on the recipe (recipes/styles/); None: the paper's recipe

    def __post_init__(self):
        object.__setattr__(self, "model", model_tail(self.model))
        object.__setattr__(self, "dataset", dataset_tail(self.dataset))
        if self.variant is None:
            return
        if "/" in self.variant:
            raise GRPOLambdaError(f"run folder name {self.variant!r}: no '/' in a variant's name.")
        try:
            named = Method.from_tag(self.variant)
        except ValueError:
            return
        # A name that reads as a method must be the method trained: tables and plots take the method from it
        if named != self.method:
            raise GRPOLambdaError(
                f"variant {self.variant!r} trains {self.method.tag!r} (its recipe plus settings): "
                f"name it {self.method.tag!r}."
            )
        object.__setattr__(self, "variant", None)

    @property
    def name(self) -> str:
        prefix = f"{STYLE_PREFIX}{self.style}/" if self.style else ""
        return f"{prefix}{self.model}/grpo/{self.dataset}_{self.variant or self.method.tag}"

    @classmethod
    def find(cls, path: str | PurePath) -> RunFolder | None:
        """The last run folder named inside `path` (a run folder, its eval/ sub-folder, a checkpoint in it), or None."""
        found = None
        for match in _RUN_FOLDER.finditer(PurePath(path).as_posix()):
            try:
                found = cls(match["model"], match["dataset"], Method.from_tag(match["tag"]), style=match["style"])
            except ValueError:
                continue
        return found


@dataclass(frozen=True)
class SFTFolder:
    """`<model tail>/sft/<dataset>`: where `make sft` writes (built like `RunFolder`, the same spellings)."""

    model: str
    dataset: str

    def __post_init__(self):
        object.__setattr__(self, "model", model_tail(self.model))
        object.__setattr__(self, "dataset", dataset_tail(self.dataset))

    @property
    def name(self) -> str:
        return f"{self.model}/sft/{self.dataset}"

    @classmethod
    def find(cls, path: str | PurePath) -> SFTFolder | None:
        """The last SFT folder named inside `path` (an SFT folder or a checkpoint in it), or None."""
        matches = list(_SFT_FOLDER.finditer(PurePath(path).as_posix()))
        return cls(matches[-1]["model"], matches[-1]["dataset"]) if matches else None
