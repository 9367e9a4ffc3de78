"""What a sweep says about its optimizers, in words measured from its runs.

* The settings table: per optimizer config, its parameters, the ``torch.optim`` arguments that
  realise it and its **steady-state step** (:mod:`initopt.optim`): the step a constant gradient
  g eventually gets, ``w <- w - step * g``: lr for SGD and EMA momentum, lr / beta for heavy ball,
  lr per coordinate for Adam (its update tends to lr * sign(g)).
* The finding: per init, SGD against momentum (at equal steady-state step they move alike, so
  the comparison is stated with the measured difference of their final training loss), and where
  Adam's whole-set training loss (``loss/train``, mean over seeds) first falls below both others.
"""

from __future__ import annotations

import math

import numpy as np

from initopt.optim import steady_state_step, torch_equivalent
from initopt.report.collect import OPTIM_ORDER, Group
from initopt.report.stats import seed_stats

TRAIN_LOSS = "loss/train"
ALIKE = 0.15  # relative difference of final training loss below which two optimizers "train alike"
TIE = 1e-3  # "below" means lower by more than this fraction: equal losses (zero init's ln 2) are a tie
SHOWN_KEYS = ("lr", "beta", "form", "beta1", "beta2", "eps", "weight_decay")


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _distinct_optims(configs: list[dict]) -> list[dict]:
    """Each distinct optim config of the sweep once, in the config order (sgd, momentum, adam)."""
    seen: dict[str, dict] = {}
    for c in configs:
        optim = c.get("optim")
        if optim:
            seen.setdefault(repr(sorted(optim.items())), optim)
    order = lambda o: OPTIM_ORDER.index(o["name"]) if o["name"] in OPTIM_ORDER else len(OPTIM_ORDER)  # noqa: E731
    return sorted(seen.values(), key=order)


def _torch_text(optim: dict) -> str:
    args = torch_equivalent(optim)
    if optim["name"] == "adam":
        return f"Adam(lr={args['lr']:g}, betas=({optim['beta1']:g}, {optim['beta2']:g}))"
    return f"SGD(lr={args['lr']:g}, momentum={args['momentum']:g})"


def _step_text(optim: dict) -> str:
    step = steady_state_step(optim)
    if optim["name"] == "adam":
        return f"{step:g} per coordinate (lr · sign g)"
    if optim["name"] == "momentum":
        rule = "lr" if optim["form"] == "ema" else "lr / beta"
        return f"{step:g} ({rule})"
    return f"{step:g} (lr)"


def settings_table(configs: list[dict]) -> list[str]:
    """Markdown rows: optimizer, its settings, the torch.optim equivalent, the steady-state step."""
    optims = _distinct_optims(configs)
    if not optims:
        return []
    lines = ["| optimizer | settings | torch.optim equivalent (lr, momentum) | steady-state step |",
             "|---|---|---|---|"]
    for o in optims:
        settings = ", ".join(f"{k} {_fmt(o[k])}" for k in SHOWN_KEYS if k in o)
        lines.append(f"| {o['name']} | {settings} | `{_torch_text(o)}` | {_step_text(o)} |")
    return lines


def _final_train_loss(group: Group) -> float:
    values = [r.metrics["final"]["train_loss"] for r in group.finished]
    return float(np.mean(values)) if values else math.nan


def _optim_config(group: Group) -> dict:
    return group.runs[0].config.get("optim", {})


def by_optimizer(groups: list[Group]) -> dict[tuple, dict[str, Group]]:
    """``(init, other choices) -> {optimizer: group}``: the groups that differ only in the optimizer."""
    rows: dict[tuple, dict[str, Group]] = {}
    for g in groups:
        rows.setdefault((g.init, g.rest), {})[g.optim] = g
    return rows


def first_step_below(lead: Group, others: list[Group], tag: str = TRAIN_LOSS) -> tuple[int | None, int | None]:
    """(first evaluated step > 0 where ``lead``'s mean ``tag`` is below every other group's by more
    than ``TIE`` of it, first step from which it stays below to the end), None where never."""
    curves = [seed_stats(g, tag) for g in (lead, *others)]
    if any(c is None for c in curves):
        return None, None
    common = curves[0].steps
    for c in curves[1:]:
        common = np.intersect1d(common, c.steps)
    common = common[common > 0]
    if not len(common):
        return None, None
    at = [c.mean[np.searchsorted(c.steps, common)] for c in curves]
    below = np.all([at[0] < other * (1 - TIE) for other in at[1:]], axis=0)
    first = int(common[np.argmax(below)]) if below.any() else None
    if not below[-1]:
        return first, None
    last_not = np.flatnonzero(~below)
    stays = int(common[0]) if not len(last_not) else int(common[last_not[-1] + 1])
    return first, stays


def _label(key: tuple) -> str:
    init, rest = key
    return ", ".join([f"init={init}", *(f"{k}={v}" for k, v in rest)])


def momentum_sentence(rows: dict[tuple, dict[str, Group]]) -> str | None:
    """SGD against momentum, with their steady-state steps and the measured final training losses."""
    pairs = [(key, row["sgd"], row["momentum"]) for key, row in rows.items() if "sgd" in row and "momentum" in row]
    if not pairs:
        return None
    parts, diffs, equal_steps = [], [], True
    for key, sgd, mom in pairs:
        s_sgd, s_mom = steady_state_step(_optim_config(sgd)), steady_state_step(_optim_config(mom))
        equal_steps &= math.isclose(s_sgd, s_mom, rel_tol=1e-9)
        l_sgd, l_mom = _final_train_loss(sgd), _final_train_loss(mom)
        diff = abs(l_mom - l_sgd) / max(l_sgd, l_mom)
        diffs.append(diff)
        parts.append(f"{_label(key)}: SGD {l_sgd:.4g}, momentum {l_mom:.4g} ({diff:.0%} apart)")
    mom_cfg, sgd_cfg = _optim_config(pairs[0][2]), _optim_config(pairs[0][1])
    steps = (f"SGD's steady-state step is {steady_state_step(sgd_cfg):g} and momentum's "
             f"({mom_cfg['form']}, beta {mom_cfg['beta']:g}, lr {mom_cfg['lr']:g}) is "
             f"{steady_state_step(mom_cfg):g}")
    if mom_cfg["form"] == "ema":
        steps += (f": torch applies lr · beta = {torch_equivalent(mom_cfg)['lr']:g} to a buffer that tends to "
                  f"g / beta, so EMA momentum's step tends to lr · g, exactly SGD's at the same lr")
    finals = "Final training loss (mean over seeds) " + "; ".join(parts) + "."
    worst = max(d for d in diffs if math.isfinite(d)) if any(map(math.isfinite, diffs)) else math.nan
    if equal_steps and worst < ALIKE:
        verdict = (f"At equal steady-state step momentum trains like SGD here (at most {worst:.0%} apart): on "
                   "this problem averaging the gradient gains nothing; momentum pays where curvature differs "
                   "across directions (the least-squares experiment in the README).")
    elif equal_steps:
        verdict = f"At equal steady-state step they still differ by up to {worst:.0%} here."
    else:
        verdict = "Their steady-state steps differ, so the comparison mixes step size and momentum."
    return f"**SGD and momentum.** {steps}. {finals} {verdict}"


def adam_sentence(rows: dict[tuple, dict[str, Group]]) -> str | None:
    """Where Adam's training loss first falls below both others, per init (from the evaluations)."""
    parts = []
    for key, row in rows.items():
        others = [row[o] for o in ("sgd", "momentum") if o in row]
        if "adam" not in row or not others:
            continue
        first, stays = first_step_below(row["adam"], others)
        finals = ", ".join(f"{g.optim} {_final_train_loss(g):.4g}" for g in (row["adam"], *others))
        if first is None:
            when = "never below " + ("both others" if len(others) > 1 else "the other") + f" by more than {TIE:.1%}"
        elif stays == first:
            when = f"below from step {first} on"
        elif stays is None:
            when = f"first below at step {first}, not at the end"
        else:
            when = f"first below at step {first}, for good from step {stays}"
        parts.append(f"{_label(key)}: {when} (final {finals})")
    if not parts:
        return None
    return ("**Adam.** Whole-set training loss (mean over seeds, at each evaluation) against SGD and "
            "momentum: " + "; ".join(parts) + ".")


def finding(groups: list[Group]) -> list[str]:
    """The optimizer part of the report's text (empty when the sweep compares no optimizers)."""
    rows = by_optimizer(groups)
    return [s for s in (momentum_sentence(rows), adam_sentence(rows)) if s]
