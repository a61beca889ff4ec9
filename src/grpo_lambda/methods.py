"""One spelling of a training method, built from the config values that define it, and one parser of run folders.

A method's tag is what recipe file names, sweep rows, run folders, tables, plots, the toy benchmark and the
benches print, and what `make train` accepts:

    grpo                                        loss_variant=grpo (TRL's loss, no advantage clamp)
    eps_trace-both-0.99                         loss_variant=eps_trace, trace_style=both, trace_lambda=0.99
    eps_weight-recent-0.98                      loss_variant=eps_weight, trace_style=recent, trace_lambda=0.98
    grpo+adv_clamp_min=-0.1                     a field that differs from the method's paper setting: +field=value
    eps_trace-both-0.99+adv_clamp_min=none      (none: null)
    grpo+advantage_bias_correction=eos_bound

The paper's setting of `adv_clamp_min` is null for GRPO and −0.1 for GRPO-λ (Table 2), so the paper's runs need no
`+`. A run folder is `<model tail>/grpo/<dataset>_<tag>` (dataset names hold no underscore).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import PurePath
from typing import Literal, get_args

# The values and defaults of GRPOLambdaConfig's method fields. configs.py takes them from here, so that planning a
# run (`make train`, `make sweep` on a login node) knows them without importing TRL and vLLM (~15 s).
LossVariant = Literal["grpo", "eps_trace", "eps_weight"]
TraceStyle = Literal["recent", "both"]
AdvantageBiasCorrection = Literal["none", "eos_bound"]
LOSS_VARIANTS: tuple[str, ...] = get_args(LossVariant)
TRACE_STYLES: tuple[str, ...] = get_args(TraceStyle)
ADVANTAGE_BIAS_CORRECTIONS: tuple[str, ...] = get_args(AdvantageBiasCorrection)
CONFIG_DEFAULTS = dict(
    loss_variant="eps_trace", trace_style="recent", trace_lambda=0.99, adv_clamp_min=None,
    advantage_bias_correction="none",
)  # fmt: skip

PAPER_ADV_CLAMP_MIN = -0.1  # Table 2: GRPO-λ's advantage clamping
_TRACED = re.compile(r"(?P<variant>eps_trace|eps_weight)-(?P<style>recent|both)-(?P<lam>[0-9.e-]+)")
_LEGACY = re.compile(r"grpo-lambda-(?P<lam>[0-9.]+)-(?P<style>recent|both)-(?P<update>trace|weight)")
_RUN_FOLDER = re.compile(r"(?:^|/)(?P<model>[^/]+)/grpo/(?P<dataset>[^/_]+)_(?P<tag>[^/]+?)(?:/|$)")


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
        """The inverse of `tag`; also reads the old `grpo-lambda-<λ>-<style>-<trace|weight>` spelling."""
        base, *modifiers = tag.split("+")
        if base == "grpo":
            kwargs = dict(loss_variant="grpo")
        elif match := _TRACED.fullmatch(base):
            kwargs = dict(loss_variant=match["variant"], trace_style=match["style"], trace_lambda=float(match["lam"]))
        elif match := _LEGACY.fullmatch(base):
            kwargs = dict(
                loss_variant=f"eps_{match['update']}", trace_style=match["style"], trace_lambda=float(match["lam"])
            )
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


@dataclass(frozen=True)
class RunFolder:
    """`<model tail>/grpo/<dataset>_<method tag>`: where a run of the recipes, a sweep or `make train` writes."""

    model: str  # the model's name tail, e.g. DeepSeek-R1-Distill-Qwen-1.5B
    dataset: str
    method: Method

    @property
    def name(self) -> str:
        return f"{self.model}/grpo/{self.dataset}_{self.method.tag}"

    @classmethod
    def find(cls, path: str | PurePath) -> RunFolder | None:
        """The last run folder named inside `path` (a run folder, its eval/ sub-folder, a checkpoint in it), or None."""
        found = None
        for match in _RUN_FOLDER.finditer(PurePath(path).as_posix()):
            try:
                found = cls(match["model"], match["dataset"], Method.from_tag(match["tag"]))
            except ValueError:
                continue
        return found
