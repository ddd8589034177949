"""The paper's gap beside ours: the sentences of docs/results.md that set a claim's gap in our
runs (a figure's results.json) next to the same gap in the paper (fedln_jax/studies/paper.py, by
table and page), and say in words where the two agree and why they may not (the dataset, the
horizon). Every number and every word that depends on one is computed here from those two
sources; fedln_jax/studies/results_page.py and fedln_jax/studies/paper_page.py put them under each section.

Ours are accuracies in [0, 1]; the paper's are percent points: ours are printed in points
here (100 x) so that the two read side by side.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Optional, Sequence

from fedln_jax.studies import paper
from fedln_jax.studies.paper import PaperValue
from fedln_jax.studies.results import LAST_K

ABOUT_EQUAL_POINTS = 3.0   # "FN does about as well as LN": within this many points

# Our series -> the paper's method of the same normalizer (Tables 3, 4, 10, 14).
METHOD = {"none": "FedAvg", "ln": "FedLN", "fn": "FedFN"}


@dataclasses.dataclass(frozen=True)
class PaperGap:
    """A number the paper's values give for a claim (a gap a - b, or a difference of spreads),
    with the value that stands for its provenance (dataset, model, horizon, seeds)."""
    value: float
    basis: PaperValue
    citation: str

    @property
    def rounds(self) -> Optional[int]:
        return self.basis.rounds

    def horizon(self) -> str:
        return f"{paper.horizon_text(self.basis)} ({self.basis.source})"

    def text(self) -> str:
        """'-0.36 points (Table 14, p.24, CIFAR-10 CNN, 10,000 rounds, 3 seeds)'."""
        b = self.basis
        seeds = f", {b.seeds} seeds" if b.seeds > 1 else ""
        return (f"{self.value:+.{1 if b.from_plot else 2}f} points ({self.citation}, "
                f"{b.dataset} {b.model}, {paper.horizon_text(b)}{seeds})")


def gap(source: str, a: str, b: str, setting: str, b_source: str = "") -> PaperGap:
    """a - b of the paper's CIFAR-10 CNN; b from another table (b_source) where a's lacks it."""
    va = paper.paper_entry(source, a, setting)
    vb = paper.paper_entry(b_source or source, b, setting)
    citation = paper.cite(va) if vb.source == va.source else (
        f"{paper.cite(va)} minus {paper.cite(vb)}")
    return PaperGap(va.value - vb.value, va, citation)


def points(fraction: Optional[float]) -> Optional[float]:
    return None if fraction is None else 100.0 * fraction


def ours_where(result: dict) -> str:
    """'mnist5k, 12 rounds, last-3 mean over 3 seeds' of a figure's results.json."""
    seeds = len(result["seeds"])
    return (f"{result['protocol']['dataset']}, {result['rounds']} rounds, last-{LAST_K} mean "
            f"over {seeds} seed{'s' if seeds > 1 else ''}")


def beside(label: str, ours: Optional[float], where: str, refs: Sequence[PaperGap]) -> str:
    """'fn - ln: ours -12.6 points (mnist5k, ...); paper -0.36 points (Table 14, ...), ...'."""
    text = "n/a" if ours is None else f"{ours:+.1f} points"
    return (f"{label}: ours {text} ({where}); paper "
            + ", ".join(r.text() for r in refs) + ".")


DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tinyimagenet": "TinyImageNet",
                 "pacs": "PACS"}   # ours -> the paper's name of the same dataset


def differences(result: dict, basis: PaperValue) -> str:
    """' in dataset (mnist5k vs CIFAR-10) and horizon (12 rounds vs 10,000 rounds)', naming
    only what differs between our runs and the paper's value."""
    dataset = result["protocol"]["dataset"]
    found = []
    if DATASET_NAMES.get(dataset, dataset) != basis.dataset:
        found.append(f"dataset ({dataset} vs {basis.dataset})")
    if result["rounds"] != basis.rounds:
        found.append(f"horizon ({result['rounds']} rounds vs {paper.horizon_text(basis)})")
    return " in " + _join(found) if found else " on the same dataset and horizon"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def agreement(claim: str, test: Callable[[float], bool], ours: Optional[float],
              result: dict, refs: Sequence[PaperGap], settled: Optional[bool]) -> str:
    """In words, from the numbers: whether our gap and each of the paper's meet the claim's
    test, and where ours and the paper's longest horizon differ, the differences that may
    explain it (dataset, horizon, an early gap of the paper's own)."""
    if ours is None or not refs:
        return ""
    rounds = result["rounds"]
    ok = test(ours)
    if ok:
        mine = f"ours meets it at {rounds} rounds" + (" (not settled yet)" if settled is False
                                                      else "")
    elif settled is False:
        mine = (f"ours does not yet at {rounds} rounds, a horizon too short for the claim "
                f"(not settled at this horizon)")
    else:
        mine = f"ours does not at {rounds} rounds"
    yes = [r.horizon() for r in refs if test(r.value)]
    no = [r.horizon() for r in refs if not test(r.value)]
    theirs = ("the paper's gap meets it at " + _join(yes) + (f" but not at {_join(no)}" if no
                                                            else "")
              if yes else "none of the paper's gaps shown meets it")
    text = f"{claim}: {mine}; {theirs}."
    timed = [r for r in refs if r.rounds is not None]
    longest = max(timed, key=lambda r: r.rounds) if timed else refs[0]
    if ok != test(longest.value):
        text += f" Ours differs from the paper's result at {paper.horizon_text(longest.basis)}"
        text += differences(result, longest.basis)
        early = [r.horizon() for r in refs if test(r.value) == ok and r is not longest]
        text += (f", and agrees with the paper's own gap at {_join(early)}." if early else ".")
    return text


# ---------------------------------------------------------------------------------------------
# The claims of a headline (none / ln / fn under one-class skew)

Claim = tuple[str, str, str, Callable[[float], bool]]   # a, b, what it says, the test on a - b
HEADLINE_CLAIMS: tuple[Claim, ...] = (
    ("ln", "none", "LN beats FedAvg (ln - none > 0)", lambda g: g > 0),
    ("fn", "none", "FN beats FedAvg (fn - none > 0)", lambda g: g > 0),
    ("fn", "ln", f"FN about as good as LN (|fn - ln| <= {ABOUT_EQUAL_POINTS:g} points)",
     lambda g: abs(g) <= ABOUT_EQUAL_POINTS),
)


NORM_CLAIMS: tuple[Claim, ...] = (
    ("bn", "none", "BN no better than FedAvg (bn - none <= 0)", lambda g: g <= 0),
    ("gn", "none", "GN beats FedAvg (gn - none > 0)", lambda g: g > 0),
)


def headline_refs(a: str, b: str, table_setting: str = "1 class") -> list[PaperGap]:
    """The paper's one-class gap a - b: Table 14 (3 seeds, 10,000 rounds) and Fig. 4 at ~400
    and ~4,000 rounds."""
    ma, mb = METHOD[a], METHOD[b]
    return [gap("Table 14", ma, mb, table_setting)] + [
        gap("Fig. 4", ma, mb, f"1 class, ~{r:,} rounds") for r in (400, 4000)]


def claim_notes(result: dict, value: Callable[[str], Optional[float]], claims: Sequence[Claim],
                refs: Callable[[str, str], list[PaperGap]], settled: Optional[bool]) -> list[str]:
    """Per claim, one list item: our gap beside the paper's, then the words."""
    lines = []
    for a, b, says, test in claims:
        va, vb = value(a), value(b)
        found = refs(a, b)
        if va is None or vb is None or not found:
            continue
        ours = points(va - vb)
        where = ours_where(result) + groups_note(a, result)
        lines.append(item(beside(f"{a} - {b}", ours, where, found),
                          agreement(says, test, ours, result, found, settled)))
    return lines


def item(*sentences: str) -> str:
    """A list item of the page (fedln_jax/studies/regenerate.py sets '- ' lines apart)."""
    return "- " + " ".join(s for s in sentences if s)


# ---------------------------------------------------------------------------------------------
# Label skew: the paper's setting of a split, and BN / GN beside FedAvg


def split_setting(x) -> Optional[str]:
    """Our split label -> the paper's column: '1-class' -> '1 class', '2-class' -> '2
    classes', 'dir0.1' -> 'Dir 0.1'; None where the paper has no such column ('iid')."""
    text = str(x)
    if m := re.fullmatch(r"(\d+)-class", text):
        n = int(m.group(1))
        return f"{n} class" + ("es" if n > 1 else "")
    if m := re.fullmatch(r"dir([\d.]+)", text):
        return f"Dir {float(m.group(1)):g}"
    return None


def norm_method(series: str) -> tuple[str, str]:
    """(paper source, method) for one of our normalizers against FedAvg: Table 3 for ln/fn
    (layer-wise LN, last-layer FN), Table 4 for bn/gn."""
    return {"ln": ("Table 3", "FedLN layer-wise"), "fn": ("Table 3", "FedFN last layer"),
            "bn": ("Table 4", "FedAvg + BN"), "gn": ("Table 4", "FedGN (2 groups)")}.get(
        series, ("", ""))


def norm_refs(series: str, setting: Optional[str]) -> list[PaperGap]:
    """series - none at one of the paper's CIFAR-10 settings: Table 3/4 (minus Table 3's
    FedAvg) and Fig. 5 (ln, fn), where the paper has the setting."""
    source, method = norm_method(series)
    refs = []
    if setting in paper.SPLITS and source:
        refs.append(gap(source, method, "FedAvg", setting, b_source="Table 3"))
    if series in ("ln", "fn") and setting and paper.paper_values("Fig. 5", setting=setting):
        refs.append(gap("Fig. 5", METHOD[series], "FedAvg", setting))
    return refs


def split_refs(series: str, x) -> list[PaperGap]:
    """norm_refs at the paper's setting of our split label x."""
    return norm_refs(series, split_setting(x))


def splits_beside(series: str, xs: list, gaps: list, result: dict) -> str:
    """series - none per split in points beside the paper's at the splits it has, and at
    which splits the two have the same sign."""
    parts, same, opposite, basis = [], [], [], None
    for x, g in zip(xs, gaps):
        refs = split_refs(series, x)
        if g is None or not refs:
            continue
        basis = refs[0].basis
        parts.append(f"{x} ours {points(g):+.1f}, paper " + ", ".join(
            f"{r.value:+.{1 if r.basis.from_plot else 2}f} ({r.citation})" for r in refs))
        (same if all((g > 0) == (r.value > 0) for r in refs) else opposite).append(str(x))
    if not parts:
        return ""
    text = (f"{series} - none beside the paper, in points: " + "; ".join(parts)
            + f" (ours: {ours_where(result)}{groups_note(series, result)}; the paper: "
            f"{basis.dataset} {basis.model}, {paper.horizon_text(basis)}, one run each).")
    if not opposite:
        return item(text, f"Ours has the paper's sign at every split the paper has "
                          f"({_join(same)}).")
    return item(text, (f"Ours has the paper's sign at {_join(same)} and " if same else
                       "Ours has ") + f"the opposite sign at {_join(opposite)}; ours "
                f"differs from the paper's{differences(result, basis)}.")


def run_config(result: dict, series: str) -> dict:
    """The config of one run of this series (the "configs" the page adds), else {}."""
    return next((c["config"] for c in result.get("configs", ()) if c["series"] == series), {})


def groups_note(series: str, result: dict) -> str:
    """GN: the paper's Table 4 uses 2 groups; where ours used another number, it says so."""
    groups = run_config(result, series).get("gn_groups") if series == "gn" else None
    return f", GN with {groups} groups where the paper's has 2" if groups not in (None, 2) else ""


def shrink_note(series: str) -> str:
    """The paper's own series - FedAvg gap from the strongest to the weakest skew it shows."""
    t3 = [gap("Table 3", norm_method(series)[1], "FedAvg", s) for s in ("1 class", "Dir 0.1")]
    f5 = [gap("Fig. 5", METHOD[series], "FedAvg", f"Dir {b:g}")
          for b in (paper.FIG_5_BETAS[0], paper.FIG_5_BETAS[-1])]
    verb = lambda pair: "shrinks" if abs(pair[1].value) < abs(pair[0].value) else "does not shrink"
    return (f"The paper's {series} - FedAvg gap {verb(t3)} from {t3[0].value:+.2f} (1 class) to "
            f"{t3[1].value:+.2f} points (Dir 0.1) in {t3[0].citation}, and {verb(f5)} from "
            f"{f5[0].value:+.1f} (Dir {paper.FIG_5_BETAS[0]:g}) to {f5[1].value:+.1f} (Dir "
            f"{paper.FIG_5_BETAS[-1]:g}) in {f5[0].citation}.")


# ---------------------------------------------------------------------------------------------
# The learning rate (Fig. 7) and local overfitting (Fig. 2)


def fig7_spreads(lo: float, hi: float) -> tuple[tuple[float, ...], dict[str, float]]:
    """The learning rates of Fig. 7 within [lo, hi] where nothing diverged, and each method's
    spread (max - min accuracy, points) over them."""
    lrs = tuple(lr for lr in paper.FIG_7_LRS if lo <= lr <= hi and lr not in paper.FIG_7_DIVERGED)
    spreads = {}
    for method in ("FedAvg", "FedFN", "FedLN"):
        vals = [paper.paper_value("Fig. 7", method, f"1 class, lr {lr}") for lr in lrs]
        spreads[method] = max(vals) - min(vals) if vals else None
    return lrs, spreads


def lr_beside(result: dict, spread: dict[str, tuple[float, float]], xs: list,
              settled: Optional[bool]) -> list[str]:
    """Our spread over the learning rates beside Fig. 7's over its rates within our range,
    then the claim that FN's spread is the smaller."""
    lrs, theirs = fig7_spreads(min(xs), max(xs))
    if len(lrs) < 2 or "fn" not in spread or "none" not in spread:
        return []
    width = {s: points(hi - lo) for s, (lo, hi) in spread.items()}
    basis = paper.paper_entry("Fig. 7", "FedFN", f"1 class, lr {lrs[0]}")
    spreads = ("Spread over the learning rates, in points: ours " + ", ".join(
        f"{s} {w:.1f}" for s, w in width.items()) + f" (lr {xs[0]}-{xs[-1]}; "
        f"{ours_where(result)}); paper " + ", ".join(
        f"{m} {w:.1f}" for m, w in theirs.items()) + f" (its lr {lrs[0]}-{lrs[-1]}, within "
        f"ours; {paper.cite(basis)}, one class, {paper.horizon_text(basis)}).")
    ref = PaperGap(theirs["FedFN"] - theirs["FedAvg"], basis, paper.cite(basis))
    ours = width["fn"] - width["none"]
    return [item(spreads, beside("spread(fn) - spread(none)", ours, ours_where(result), [ref]),
                 agreement("FN less sensitive to the learning rate than FedAvg (spread(fn) - "
                           "spread(none) < 0)", lambda g: g < 0, ours, result, [ref], settled))]


def probe_at(analysis: dict, steps: int) -> dict:
    """The local-overfit probe of `steps` steps, else the longest there is."""
    probes = analysis["local_overfit_by_steps"]
    return next((p for p in probes if p["steps"] == steps), probes[-1])


def local_overfit_beside(result: dict, settled: Optional[bool]) -> list[str]:
    """Our none and fn probes (5 local steps on client 0) beside Fig. 2's."""
    analysis = result.get("analysis", {})
    if "none" not in analysis or "fn" not in analysis:
        return []
    fig = {(v.method, v.setting): v for v in paper.paper_values("Fig. 2")}
    steps = 5
    probe = {s: probe_at(analysis[s], steps) for s in ("none", "fn")}
    lost = {s: points(p["global_acc_before"] - p["global_acc_after"]) for s, p in probe.items()}
    start = fig[("FedAvg", "before local steps")].value
    after = {m: fig[(m, f"after {steps} local steps")].value for m in ("FedAvg", "FedFN")}
    class0 = {m: fig[(m, f"after {steps} local steps, class 0")].value for m in after}
    classes = len(probe["fn"]["per_class_recall_after"])
    seed = min(r["seed"] for r in result["runs"])
    where = (f"{result['protocol']['dataset']}, {result['rounds']} rounds, the final global "
             f"model of seed {seed}")
    basis = fig[("FedFN", f"after {steps} local steps")]
    lines = [
        f"Global accuracy lost after {probe['fn']['steps']} local steps on client 0, in points: "
        f"ours none {lost['none']:.1f}, fn {lost['fn']:.1f} (each from its own global model: "
        f"none {points(probe['none']['global_acc_before']):.1f}, fn "
        f"{points(probe['fn']['global_acc_before']):.1f}; {where}); paper FedAvg "
        f"{start - after['FedAvg']:.0f}, FN {start - after['FedFN']:.0f} (both from ~{start:.0f} "
        f"before; {paper.cite(basis)}).",
        f"After the probe: ours none {points(probe['none']['global_acc_after']):.1f}, fn "
        f"{points(probe['fn']['global_acc_after']):.1f} points (chance {100 / classes:.1f} for "
        f"{classes} classes), class 0 recall none "
        f"{points(probe['none']['per_class_recall_after'][0]):.0f}, fn "
        f"{points(probe['fn']['per_class_recall_after'][0]):.0f}; paper FedAvg "
        f"{after['FedAvg']:.0f}, FN {after['FedFN']:.0f}, class 0 recall {class0['FedAvg']:.0f} "
        f"and {class0['FedFN']:.0f}."]
    ref = PaperGap(after["FedAvg"] - after["FedFN"], basis, paper.cite(basis))
    ours = lost["fn"] - lost["none"]
    return [item(*lines), item(
        beside("lost(fn) - lost(none)", ours, where, [ref]),
        agreement("FN keeps local steps from collapsing the global model (lost(fn) - lost(none) "
                  "< 0)", lambda g: g < 0, ours, result, [ref], settled))]

