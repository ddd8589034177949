"""docs/results.md as code: the page's sections, each a figure config, and the sentences that
read its numbers. `fedln_jax.studies.regenerate` runs the figures and assembles the page from here.

A section's `about` says what is measured and never states a result; every number on the
page, and every sentence that depends on one, comes from the section's `notes(result)` (a
figure's results.json, with the runs' accuracy curves added as "curves" when the page is
written) or from fedln_jax/studies/paper.py, so the page cannot contradict the runs it was made from
or the paper. A claim of the paper is checked by a comparison written out beside its numbers
("holds" / "does not hold here"), next to the paper's own gap (fedln_jax/studies/paper_notes.py); a
horizon whose curves have not settled (results.horizon_check) makes that "not settled at this
horizon" rather than a failed claim.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

from fedln_jax.studies import paper
from fedln_jax.studies import paper_notes as pn
from fedln_jax.studies.results import (HORIZON_FRACTION, HORIZON_TOLERANCE, LAST_K, Curve, Horizon,
                                       horizon_check)

Notes = Callable[[dict], list[str]]


@dataclasses.dataclass(frozen=True)
class Section:
    name: str                    # the figure's directory under the workdir, and its image name
    config: str                  # the figure config, a file of experiments/configs
    group: str                   # the page heading it goes under
    heading: str
    about: str                   # what is measured, how (never a result)
    notes: Optional[Notes] = None
    extras: tuple[str, ...] = ()  # more files of the figure's directory to show (.md or .png)
    image: str = ""               # the copied image's name (default: <name>.png)
    # A single-run config (a paper table's): the figure's runs and FIGURE options are these.
    runs: tuple[dict, ...] = ()
    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Page:
    sections: tuple[Section, ...]
    template: str                # its fixed text, a file of the package


# ---------------------------------------------------------------------------------------------
# Reading a figure's results.json


def cells(result: dict) -> list[dict]:
    table = result["table"]
    return list(table.values()) if isinstance(table, dict) else list(table)


def at(result: dict, series: str, x=None) -> Optional[dict]:
    return next((c for c in cells(result) if c["series"] == series and c.get("x") == x
                 and c["n"]), None)


def last3(result: dict, series: str, x=None) -> Optional[float]:
    c = at(result, series, x)
    return None if c is None else c["last3_mean"]


def xs_of(result: dict) -> list:
    return list(dict.fromkeys(c.get("x") for c in cells(result)))


def series_of(result: dict) -> list[str]:
    return list(dict.fromkeys(c["series"] for c in cells(result)))


def signed(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def diff(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a - b


def verdict(ok: bool, settled: Optional[bool] = None) -> str:
    """"holds here" / "does not hold here"; at a horizon that has not settled (settled False)
    "holds here so far" / "is not settled at this horizon"."""
    if settled is False:
        return "holds here so far, at a horizon that has not settled" if ok else (
            "is not settled at this horizon")
    return "holds here" if ok else "does not hold here"


# ---------------------------------------------------------------------------------------------
# The horizon: have the claim's curves settled?


def curves_of(result: dict, series: str, x=None) -> list[Curve]:
    """The accuracy curves (one per seed) of a cell, from the "curves" the page adds."""
    return [(c["rounds"], c["accuracy"]) for c in result.get("curves", ())
            if c["series"] == series and c.get("x") == x]


def horizons(result: dict, series: Sequence[str], xs=(None,)) -> dict[tuple, Optional[Horizon]]:
    """(series, x) -> its horizon check, for the cells of these series that have runs."""
    return {(s, x): horizon_check(curves_of(result, s, x)) for x in xs for s in series
            if at(result, s, x) is not None}


def settled_of(checks: dict[tuple, Optional[Horizon]]) -> Optional[bool]:
    """True when every check passed, False when one did not, None when one could not be made."""
    if not checks or None in checks.values():
        return None
    return all(h.settled for h in checks.values())


def horizon_rule() -> str:
    return (f"the last-{LAST_K} mean moves less than {HORIZON_TOLERANCE:g} over the last "
            f"{HORIZON_FRACTION:.0%} of the rounds")


def horizon_sentence(checks: dict[tuple, Optional[Horizon]]) -> str:
    """The check's numbers per (series, x) and its outcome, in one sentence."""
    if not checks:
        return ""
    if None in checks.values():
        return ("Horizon check: not made (no accuracy curve with an evaluation before the last "
                f"{HORIZON_FRACTION:.0%} of the rounds was found for every run).")
    h0 = next(iter(checks.values()))
    parts = [f"{s}{'' if x is None else f' at {x}'} {h.before:.3f} -> {h.end:.3f} "
             f"({round(h.moved, 3) + 0.0:+.3f})" for (s, x), h in checks.items()]
    moving = [f"{s}{'' if x is None else f' at {x}'}" for (s, x), h in checks.items()
              if not h.settled]
    outcome = ("settled" if not moving else
               f"not settled ({', '.join(moving)}): {h0.rounds} rounds is too short a horizon "
               f"for the claims below, read as not settled at this horizon, not as failed")
    return (f"Horizon check ({horizon_rule()}: round {h0.cut:g} to {h0.rounds}): "
            + ", ".join(parts) + f"; {outcome}.")


# ---------------------------------------------------------------------------------------------
# Notes: the sentences generated from a figure's numbers


def headline_verdicts(result: dict, settled: Optional[bool]) -> list[str]:
    """The paper's two claims about none / ln / fn at one x, checked on the last-k means."""
    none, ln, fn = (last3(result, s) for s in ("none", "ln", "fn"))
    if None in (none, ln, fn):
        return []
    close = pn.ABOUT_EQUAL_POINTS / 100
    return [f"The paper's claim that LN and FN beat vanilla FedAvg under one-class skew "
            f"{verdict(ln > none and fn > none, settled)}; its claim that FN does about as well "
            f"as LN (within {close:g} here) {verdict(abs(fn - ln) <= close, settled)}."]


def headline_notes(result: dict) -> list[str]:
    """none / ln / fn at one x: the gaps, whether ln's and fn's curves settled, the paper's
    two claims about the gaps, and each gap beside the paper's (Table 14, Fig. 4)."""
    none, ln, fn = (last3(result, s) for s in ("none", "ln", "fn"))
    checks = horizons(result, ("ln", "fn"))
    settled = settled_of(checks)
    lines = [f"Last-{LAST_K} means over seeds: ln - none {signed(diff(ln, none))}, fn - none "
             f"{signed(diff(fn, none))}, fn - ln {signed(diff(fn, ln))}.",
             horizon_sentence(checks)]
    lines += headline_verdicts(result, settled)
    lines += pn.claim_notes(result, lambda s: last3(result, s), pn.HEADLINE_CLAIMS,
                            pn.headline_refs, settled)
    return [line for line in lines if line]


def curves_notes(result: dict) -> list[str]:
    """Every normalizer over the rounds: the headline's sentences, with BN and GN beside
    FedAvg and the paper's Table 4."""
    vals = {s: last3(result, s) for s in series_of(result)}
    checks = horizons(result, ("ln", "fn"))
    settled = settled_of(checks)
    lines = [f"Last-{LAST_K} means over seeds: " + ", ".join(
        f"{s} {v:.3f}" for s, v in vals.items() if v is not None) + ".", horizon_sentence(checks)]
    if vals.get("bn") is not None:
        lines.append(f"BatchNorm {'is at chance level (<= 0.15)' if vals['bn'] <= 0.15 else 'is above chance'}"
                     f" under one-class skew; the paper's claim that BN does not help here "
                     f"{verdict(vals.get('none') is not None and vals['bn'] <= vals['none'], settled)}"
                     " (bn <= none).")
    lines += headline_verdicts(result, settled)
    lines += pn.claim_notes(result, vals.get, pn.HEADLINE_CLAIMS + pn.NORM_CLAIMS,
                            lambda a, b: (pn.norm_refs(a, "1 class") if a in ("bn", "gn")
                                          else pn.headline_refs(a, b)), settled)
    return [line for line in lines if line]


def skew_notes(result: dict) -> list[str]:
    """Per split, each normalizer minus none; the claims: ln/fn above none on every split,
    bn not, and the gap shrinking as the skew weakens (first vs last split); each gap beside
    the paper's at the splits it has (Tables 3-4, Fig. 5)."""
    xs = xs_of(result)
    checks = horizons(result, ("ln", "fn"), xs)
    settled = settled_of(checks)
    lines = [horizon_sentence(checks)]
    for s in [s for s in series_of(result) if s != "none"]:
        gaps = [diff(last3(result, s, x), last3(result, "none", x)) for x in xs]
        lines.append(f"{s} - none per split ({', '.join(map(str, xs))}): "
                     + ", ".join(signed(g) for g in gaps) + ".")
        if s in ("ln", "fn") and None not in gaps:
            below = [str(x) for x, g in zip(xs, gaps) if g <= 0]
            lines.append(f"The paper's claim that {s} beats none on every split "
                         f"{verdict(not below, settled)}"
                         + (f" ({s} <= none at {', '.join(below)})" if below else "") + ".")
            if len(xs) > 3:   # a range from one class to IID (digits); not mnist5k's three
                lines.append(f"Its claim that the {s} - none gap shrinks as the skew weakens "
                             f"(from {xs[0]} to {xs[-1]}: {gaps[0]:+.3f} -> {gaps[-1]:+.3f}) "
                             f"{verdict(gaps[-1] < gaps[0], settled)}. " + pn.shrink_note(s))
        if s == "bn" and None not in gaps:
            below = [str(x) for x, g in zip(xs, gaps) if g < 0]
            lines.append("The paper's finding that BN falls behind vanilla FedAvg under label skew "
                         + ("holds here on every split" if len(below) == len(xs) else
                            f"holds here only at {', '.join(below)}" if below else
                            "does not hold here on any split") + ".")
        lines.append(pn.splits_beside(s, xs, gaps, result))
    return [line for line in lines if line]


def lr_notes(result: dict) -> list[str]:
    """The spread of each series over the learning rates; the claim: fn's is the smaller;
    the spreads beside Fig. 7's."""
    xs = xs_of(result)
    checks = horizons(result, ("none", "fn"), xs)
    settled = settled_of(checks)
    spread = {}
    for s in series_of(result):
        vals = [v for v in (last3(result, s, x) for x in xs) if v is not None]
        if vals:
            spread[s] = (min(vals), max(vals))
    lines = [f"Over lr {xs[0]}-{xs[-1]}: " + ", ".join(
        f"{s} {lo:.3f}-{hi:.3f} (spread {hi - lo:.3f})" for s, (lo, hi) in spread.items()) + ".",
        horizon_sentence(checks)]
    if "fn" in spread and "none" in spread:
        width = {s: hi - lo for s, (lo, hi) in spread.items()}
        lines.append(f"The paper's claim that FN is less sensitive to the learning rate than "
                     f"vanilla FedAvg {verdict(width['fn'] < width['none'], settled)}; fn is "
                     f"above none at "
                     f"{sum((last3(result, 'fn', x) or 0) > (last3(result, 'none', x) or 0) for x in xs)}"
                     f" of {len(xs)} learning rates.")
        lines += pn.lr_beside(result, spread, xs, settled)
    return [line for line in lines if line]


def local_overfit_notes(result: dict) -> list[str]:
    analysis = result.get("analysis", {})
    checks = horizons(result, ("none", "fn"))
    settled = settled_of(checks)
    drops = {}
    for s, a in analysis.items():
        probes = a["local_overfit_by_steps"]
        drops[s] = [(p["steps"], p["global_acc_before"] - p["global_acc_after"]) for p in probes]
    lines = ["Global accuracy lost after S local steps on client 0: " + "; ".join(
        f"{s} " + ", ".join(f"{d:.3f} (S={k})" for k, d in ds) for s, ds in drops.items()) + ".",
        horizon_sentence(checks)]
    if "fn" in drops and "none" in drops:
        fn1, none1 = drops["fn"][0][1], drops["none"][0][1]
        lines.append(f"The paper's claim that FN keeps local training from collapsing the global "
                     f"model {verdict(fn1 < none1, settled)} (after one step: fn loses "
                     f"{fn1:.3f}, none {none1:.3f})"
                     + (f"; ln loses {drops['ln'][0][1]:.3f}" if "ln" in drops else "") + ".")
        lines += pn.local_overfit_beside(result, settled)
    return [line for line in lines if line]


def collapse_notes(result: dict) -> list[str]:
    analysis = result.get("analysis", {})
    parts = []
    for s, a in analysis.items():
        k = a.get("sv_index_below_0.1")
        parts.append(f"{s}: {'none' if k is None else f'no. {k + 1}'} of {len(a['singular_values'])}"
                     f" (sum of all {sum(a['singular_values']):.1f})")
    lines = ["First normalized singular value below 0.1: " + "; ".join(parts) + "."]
    fast = {s: a.get("sv_index_below_0.1") for s, a in analysis.items()}
    if "none" in fast and "fn" in fast and None not in (fast["none"], fast["fn"]):
        lines.append(f"The paper's claim that vanilla features collapse more (a faster-decaying "
                     f"spectrum) than FN's {verdict(fast['none'] < fast['fn'])}.")
    return lines


def width_notes(result: dict) -> list[str]:
    return [f"ln - fn at conv_features={x}: {signed(diff(last3(result, 'ln', x), last3(result, 'fn', x)))}"
            f"; fn - none: {signed(diff(last3(result, 'fn', x), last3(result, 'none', x)))}."
            for x in xs_of(result)]


def best_notes(result: dict) -> list[str]:
    """One line per series: its best and worst x (an ablation's reading)."""
    lines = []
    for s in series_of(result):
        vals = [(last3(result, s, x), x) for x in xs_of(result) if last3(result, s, x) is not None]
        if len(vals) > 1:
            (lo, xlo), (hi, xhi) = min(vals), max(vals)
            lines.append(f"{s}: best at {xhi} ({hi:.3f}), worst at {xlo} ({lo:.3f}).")
    return lines


def pair_notes(result: dict) -> list[str]:
    """Two series over the same xs (after/before, affine/no affine): their difference per x."""
    series = series_of(result)
    if len(series) != 2:
        return []
    a, b = series
    return [f"{a} - {b}: " + ", ".join(f"{x} {signed(diff(last3(result, a, x), last3(result, b, x)))}"
                                       for x in xs_of(result)) + "."]


# ---------------------------------------------------------------------------------------------
# The page

MNIST, DIGITS, ABLATIONS = ("mnist5k (28x28 MNIST, the paper's CNN)", "digits (8x8, the digits CNN)",
                            "Ablations on digits")
SKEW_ABOUT = ("Label skew of increasing strength across the columns; every normalizer on the same "
              "clients, seeds and budget.")
PAGE: tuple[Section, ...] = (
    Section("mnist5k_headline", "mnist5k_headline.py", MNIST, "Headline: none vs ln vs fn",
            "One class per client: each client sees one digit only, the paper's hardest skew.",
            headline_notes),
    Section("mnist5k_label_skew", "mnist5k_label_skew.py", MNIST,
            "Main comparison: one class, two classes, Dirichlet 0.1", SKEW_ABOUT, skew_notes),
    Section("mnist5k_lr_sweep", "mnist5k_lr_sweep.py", MNIST, "Learning-rate sweep",
            "The client learning rate over a 30x range, one class per client.", lr_notes),
    Section("demo", "demo.py", DIGITS, "Headline (the demo)",
            "`fedln-jax demo` runs this figure; one class per client.", headline_notes,
            image="demo_accuracy.png"),
    Section("accuracy_vs_round", "accuracy_vs_round.py", DIGITS, "Accuracy vs round",
            "Test accuracy over the rounds under one-class skew, every normalizer.", curves_notes),
    Section("local_overfit", "local_overfit.py", DIGITS, "Local overfitting and feature collapse",
            "Each global model is probed with 1, 2 and 5 local SGD steps on client 0 (which holds "
            "class 0); the table gives global test accuracy before and after and the per-class "
            "recall after, then the per-class feature and head-row norms. The spectrum: singular "
            "values of the centred test features, divided by the largest.",
            lambda r: local_overfit_notes(r) + collapse_notes(r),
            extras=("local_overfit.md", "norms.md", "local_overfit.png", "singular_values.png")),
    Section("lr_sweep", "lr_sweep.py", DIGITS, "Learning-rate sweep",
            "The client learning rate over a 30x range, one class per client.", lr_notes),
    Section("label_skew", "label_skew.py", DIGITS, "Label skew", SKEW_ABOUT, skew_notes),
    Section("ablation_width", "ablation_width.py", DIGITS, "Width of the digits CNN",
            "The digits CNN's conv widths: small_cnn's own (16/32) and the demo's (32/64).",
            width_notes),
    Section("ablation_position", "ablation_position.py", ABLATIONS, "Norm after vs before the ReLU",
            "Each normalizer placed after (the default) or before the activation.", pair_notes),
    Section("ablation_affine", "ablation_affine.py", ABLATIONS, "Affine off vs on",
            "LN and GN(4) with and without their learnable scale and bias.", pair_notes),
    Section("ablation_mean_vs_scale", "ablation_mean_vs_scale.py", ABLATIONS,
            "Mean-shift vs scaling",
            "`norm_layers` over the 4 positions: mean-shift only, L2 scaling at every layer, fn "
            "(L2 at the feature), a fixed 0.1 scale at the feature, learnable scalar scales, "
            "reduced LN (mean, mean, mean, ln) and full LN; see the config's docstring.",
            best_notes),
    Section("ablation_layers", "ablation_layers.py", ABLATIONS, "Which layer is normalized",
            "ln or l2s at one position, or at all four.", best_notes),
    Section("ablation_gn_groups", "ablation_gn_groups.py", ABLATIONS, "GroupNorm groups",
            "GroupNorm with 1 (= LN) to 16 groups.", best_notes),
)



def fixed_text() -> dict[str, str]:
    """The numbers the templates' fixed text states, from the code that fixes them."""
    return {"<!-- K -->": str(LAST_K), "<!-- HORIZON_RULE -->": horizon_rule(),
            "<!-- HORIZON_CUT -->": f"{1 - HORIZON_FRACTION:.0%}",
            "<!-- ABOUT_EQUAL -->": f"{pn.ABOUT_EQUAL_POINTS:g}",
            "<!-- PAPER_ROUNDS -->": f"{paper.ROUNDS:,}",
            "<!-- PLOT_TOLERANCE -->": f"{paper.TOLERANCE_POINTS:g}"}
