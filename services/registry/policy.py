"""Promotion policies: manual, newest, champion_challenger — every judgement recorded with its numbers.

champion_challenger promotes a challenger only when (offline) it beats the champion's validation
metric by ``margin`` on at least ``min_validation_samples`` and its backtest drawdown is not worse
by more than ``max_drawdown_worsening``; with shadow scoring on it then runs in shadow until K
paired live outcomes exist and a one-sided Wilcoxon signed-rank test on the per-outcome return
differences (challenger − champion) is significant at ``significance``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

from services.registry.settings import PolicyConfig
from shared.db.models import ModelVersion

DRAWDOWN_METRIC = "backtest_max_drawdown"


@dataclass(frozen=True)
class Verdict:
    """A policy judgement: ``stage`` is offline, shadow or pending."""

    promoted: bool
    stage: str
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.stage != "pending"


def offline_verdict(challenger: ModelVersion, champion: ModelVersion | None, config: PolicyConfig) -> Verdict:
    """Judge a new version on its validation metric and backtest drawdown against the champion."""
    if champion is None:
        return Verdict(True, "offline", "the slot has no champion yet")
    mine, theirs = challenger.metrics.get(config.metric), champion.metrics.get(config.metric)
    numbers: dict[str, Any] = {
        "metric": config.metric, "challenger": mine, "champion": theirs, "margin": config.margin,
        "validation_samples": challenger.validation_samples, "min_validation_samples": config.min_validation_samples,
    }
    if mine is None:
        return Verdict(False, "offline", f"challenger has no {config.metric}", numbers)
    if challenger.validation_samples < config.min_validation_samples:
        return Verdict(False, "offline", "too few validation samples", numbers)
    if theirs is not None and mine < theirs + config.margin:
        return Verdict(False, "offline", f"{config.metric} {mine:.4f} does not beat {theirs:.4f} + {config.margin}",
                       numbers)
    my_drawdown, their_drawdown = challenger.metrics.get(DRAWDOWN_METRIC), champion.metrics.get(DRAWDOWN_METRIC)
    if my_drawdown is not None and their_drawdown is not None:
        numbers.update(challenger_drawdown=my_drawdown, champion_drawdown=their_drawdown,
                       max_drawdown_worsening=config.max_drawdown_worsening)
        if abs(my_drawdown) > abs(their_drawdown) + config.max_drawdown_worsening:
            return Verdict(False, "offline", "backtest drawdown worse than allowed", numbers)
    if config.shadow:
        return Verdict(False, "pending", "passed offline checks; shadow scoring on live outcomes", numbers)
    return Verdict(True, "offline", f"{config.metric} beats the champion by the margin", numbers)


def shadow_verdict(challenger_returns: list[float], champion_returns: list[float], config: PolicyConfig) -> Verdict:
    """Paired one-sided Wilcoxon signed-rank test of challenger vs champion returns on the same outcomes."""
    n = len(challenger_returns)
    numbers: dict[str, Any] = {"pairs": n, "required": config.shadow_min_outcomes, "significance": config.significance}
    if n < config.shadow_min_outcomes:
        return Verdict(False, "pending", f"{n} of {config.shadow_min_outcomes} paired outcomes", numbers)
    differences = np.asarray(challenger_returns) - np.asarray(champion_returns)
    numbers.update(mean_difference=float(differences.mean()), challenger_mean=float(np.mean(challenger_returns)),
                   champion_mean=float(np.mean(champion_returns)))
    if not np.any(differences):
        return Verdict(False, "shadow", "no difference between challenger and champion", {**numbers, "p_value": 1.0})
    result = wilcoxon(differences, alternative="greater", zero_method="wilcox")
    p_value = float(result.pvalue)
    numbers.update(statistic=float(result.statistic), p_value=p_value, test="wilcoxon signed-rank, one-sided")
    if p_value < config.significance:
        return Verdict(True, "shadow", f"challenger better on live outcomes (p={p_value:.4g})", numbers)
    return Verdict(False, "shadow", f"not significantly better (p={p_value:.4g})", numbers)
