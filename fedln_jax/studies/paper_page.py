"""The page of the paper's configs (`fedln-jax results --page paper`): CIFAR-10 through TFDS,
the paper's CNN and protocol (experiments/configs/paper_cifar10_*_cnn.py, 10,000 rounds: meant
for a GPU), every normalizer per setting, each number beside the paper's own for that setting
(fedln_jax/studies/paper.py, by table and page). Its fixed text is fedln_jax/results_paper_template.md.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from fedln_jax.studies import paper
from fedln_jax.studies import paper_notes as pn
from fedln_jax.studies.paper import PaperValue
from fedln_jax.studies.results_page import (PAGE, Notes, Page, Section, at, horizon_sentence,
                                            horizons, last3, settled_of)


def table10_setting(setting: str, result: dict) -> Optional[str]:
    """Table 10's column for our local steps (E = 1, 10 or 20), else None."""
    name = f"{setting}, E={result['protocol']['local_steps']}"
    return name if name in paper.T10_SETTINGS else None


def paper_entries(series: str, setting: str, result: dict) -> list[PaperValue]:
    """The paper's CIFAR-10 CNN values of this normalizer at this setting: Table 10 (at our
    E; its FedLN has a learnable affine), Table 6's LN without affine (ours; at E = 10, the
    protocol's) and Table 14 (one class) for none/ln/fn; Table 4 for bn/gn."""
    found = []
    if series in pn.METHOD:
        t10 = table10_setting(setting, result)
        found += [paper.paper_entry("Table 10", pn.METHOD[series], t10)] if t10 else []
        if series == "ln" and result["protocol"]["local_steps"] == 10:
            found.append(paper.paper_entry("Table 6", "FedLN static", setting))
        found += paper.paper_values("Table 14", method=pn.METHOD[series], setting=setting,
                                    model=paper.CNN)
    elif series in ("bn", "gn"):
        found.append(paper.paper_entry("Table 4", pn.norm_method(series)[1], setting))
    return found


def value_text(v: PaperValue) -> str:
    std = f" +- {v.std:.2f}" if v.std is not None else ""
    seeds = f", {v.seeds} seeds" if v.seeds > 1 else ""
    return f"{v.method} {v.value:.2f}{std} ({paper.cite(v)}{seeds})"


def values_beside(result: dict, setting: str, cell: Callable[[str], Optional[dict]],
                  series: Sequence[str]) -> list[str]:
    """Per normalizer: our last-k mean (final in brackets), in points, beside the paper's."""
    lines = []
    for s in series:
        c, found = cell(s), paper_entries(s, setting, result)
        if c is None or not found:
            continue
        lines.append(f"- {s}: ours {pn.points(c['last3_mean']):.2f} (final "
                     f"{pn.points(c['final_mean']):.2f}; {pn.ours_where(result)}"
                     f"{pn.groups_note(s, result)}); paper "
                     + ", ".join(value_text(v) for v in found) + ".")
    return lines


def setting_refs(setting: str, result: dict) -> Callable[[str, str], list[pn.PaperGap]]:
    """The paper's gaps a - b at a CIFAR-10 setting: Table 10 (our E) and, for one class,
    Table 14 and Fig. 4; bn/gn from Table 4 minus Table 3's FedAvg."""
    def refs(a: str, b: str) -> list[pn.PaperGap]:
        if a in ("bn", "gn"):
            return pn.norm_refs(a, setting)
        found = []
        t10 = table10_setting(setting, result)
        if t10:
            found.append(pn.gap("Table 10", pn.METHOD[a], pn.METHOD[b], t10))
        if setting == "1 class":
            found += pn.headline_refs(a, b)
        return found
    return refs


def paper_setting_notes(setting: str) -> Notes:
    """A paper setting's notes: each normalizer beside the paper's value, then the headline's
    claims and BN's and GN's, each gap beside the paper's (Tables 3, 4, 10, 14, Fig. 4)."""
    def notes(result: dict) -> list[str]:
        checks = horizons(result, ("ln", "fn"))
        settled = settled_of(checks)
        lines = [horizon_sentence(checks)]
        lines += values_beside(result, setting, lambda s: at(result, s),
                                  [n for n, _ in PAPER_NORMS])
        lines += pn.claim_notes(result, lambda s: last3(result, s),
                                pn.HEADLINE_CLAIMS + pn.NORM_CLAIMS,
                                setting_refs(setting, result), settled)
        return [line for line in lines if line]
    return notes


PAPER_NORMS = (("none", {}), ("bn", {}), ("gn", {"gn_groups": 2}), ("ln", {}), ("fn", {}))
PAPER_RUNS = tuple({"name": n, "series": n, "x": None, "overrides": {"norm": n, **o}}
                   for n, o in PAPER_NORMS)
CIFAR10 = "CIFAR-10, the paper's CNN (the paper's protocol: 10,000 rounds)"


def paper_section(name: str, setting: str, heading: str, about: str, seeds: tuple) -> Section:
    return Section(name, f"{name}_cnn.py", CIFAR10, heading, about, paper_setting_notes(setting),
                   image=f"{name}.png", runs=PAPER_RUNS,
                   options={"kind": "curves", "seeds": seeds, "table": "seeds",
                            "row_label": "norm", "title": f"CIFAR-10, 10 clients, {setting}"})


PAPER_ABOUT = ("Every normalizer (GN with 2 groups, as the paper's Table 4) on the paper's "
               "protocol, beside the paper's numbers for the same setting.")
PAPER_PAGE: tuple[Section, ...] = (
    paper_section("paper_cifar10_one_class", "1 class", "One class per client",
                  PAPER_ABOUT + " Seeds 0, 1, 2, as the paper's three-seed table.", (0, 1, 2)),
    paper_section("paper_cifar10_two_class", "2 classes", "Two classes per client", PAPER_ABOUT,
                  (0,)),
    paper_section("paper_cifar10_dirichlet", "Dir 0.1", "Dirichlet 0.1", PAPER_ABOUT, (0,)),
)


PAGES = {"main": Page(PAGE, "results_template.md"),
         "paper": Page(PAPER_PAGE, "results_paper_template.md")}
