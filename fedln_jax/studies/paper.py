"""The paper's own numbers, as data: Zhang, Beitollahi, Bie, Chen, "Understanding the Role of
Layer Normalization in Label-Skewed Federated Learning", arXiv 2308.09565v2 (TMLR 2024).

Every value names its table or figure and the page of that PDF. Test accuracies are in
percent points, as printed; a table value is the last round of a single run unless its
`seeds` says otherwise (Table 14 is the paper's only three-seed table, mean +- std). Figure
values were read off the plots and are good to about +-1 point (`from_plot`). Only the tables
with a counterpart in this project are here: the CIFAR-10 CNN by setting (Tables 3, 4, 6, 10,
12, 14), Table 1's baselines, and Figures 2 and 4-7; docs/results.md prints them beside the
runs' numbers (fedln_jax/studies/paper_notes.py writes the sentences; `fedln-jax results --page
paper` renders the paper's own configs beside them, fedln_jax/studies/paper_page.py). `PROTOCOL` holds
the training and baseline settings the paper states.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

PAPER = ('Zhang et al., "Understanding the Role of Layer Normalization in Label-Skewed '
         'Federated Learning", arXiv 2308.09565v2 (TMLR 2024)')
ROUNDS = 10_000           # every reported experiment (Appendix C-D, p.19-22)
TOLERANCE_POINTS = 1.0    # how far a value read off a plot may be off


@dataclasses.dataclass(frozen=True)
class PaperValue:
    source: str                   # "Table 10", "Fig. 4"
    page: int                     # of the arXiv v2 PDF
    dataset: str                  # "CIFAR-10"
    model: str                    # "CNN" (Table 7's), "ResNet-18"
    setting: str                  # "1 class, E=10", "Dir 0.1", "~400 rounds"
    method: str                   # the paper's name: "FedAvg", "FedLN", "FedAvg + BN"
    value: float                  # test accuracy, percent points
    std: Optional[float] = None   # over seeds, where the table gives one
    seeds: int = 1
    rounds: Optional[int] = ROUNDS  # None: a horizon the paper does not state
    from_plot: bool = False       # read off a figure (+- TOLERANCE_POINTS)
    approx_rounds: bool = False   # the horizon itself read off a plot's axis
    note: str = ""

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.source, self.dataset, self.model, self.method, self.setting)


@dataclasses.dataclass(frozen=True)
class PaperSetting:
    name: str                     # "lr", "prox_mu"
    value: object
    source: str                   # "Appendix C"
    page: int
    last_page: Optional[int] = None   # the source spans page..last_page
    note: str = ""


# Where each table or figure stands in the PDF.
PAGES: dict[str, int] = {"Table 1": 2, "Fig. 2": 7, "Table 3": 9, "Fig. 4": 9, "Table 4": 10,
                         "Fig. 5": 10, "Fig. 6": 11, "Table 6": 12, "Fig. 7": 12, "Table 10": 23,
                         "Table 12": 23, "Table 14": 24}

SPLITS = ("1 class", "2 classes", "Dir 0.1")   # the CIFAR-10 columns of Tables 3-12
C10, CNN = "CIFAR-10", "CNN"


def _rows(source: str, rows: dict[str, tuple[float, ...]], settings: tuple[str, ...], *,
          dataset: str = C10, model: str = CNN, **kw) -> tuple[PaperValue, ...]:
    """One PaperValue per (method row, setting column) of a printed table."""
    return tuple(PaperValue(source, PAGES[source], dataset, model, s, method, v, **kw)
                 for method, values in rows.items() for s, v in zip(settings, values, strict=True))


# Table 10 (p.23): CIFAR-10, the CNN, by local steps E (E=10 is the protocol's).
T10_SETTINGS = tuple(f"{s}, E={e}" for s in SPLITS for e in (1, 10, 20))
TABLE_10 = _rows("Table 10", {
    "FedAvg": (57.45, 55.86, 58.65, 57.35, 71.83, 73.16, 52.82, 73.06, 74.58),
    "FedProx": (57.39, 54.24, 58.31, 57.42, 71.86, 72.78, 53.94, 72.85, 74.72),
    "SCAFFOLD": (57.41, 54.14, 57.97, 57.45, 71.88, 73.44, 52.87, 72.38, 75.20),
    "FedLC": (9.72, 9.72, 9.72, 39.35, 62.01, 64.49, 45.08, 70.25, 71.98),
    "FedDecorr": (47.50, 48.18, 48.09, 47.73, 70.88, 73.43, 45.46, 74.58, 75.31),
    "FedRS": (10.00, 10.00, 10.00, 37.96, 63.26, 64.06, 44.82, 70.60, 72.63),
    "FedYogi": (77.61, 73.13, 74.21, 76.77, 78.97, 77.12, 76.46, 79.35, 77.99),
    "FedFN": (77.52, 77.14, 77.35, 74.52, 76.67, 76.12, 75.73, 78.13, 77.35),
    "FedLN": (79.25, 78.04, 78.12, 77.39, 77.52, 76.93, 77.10, 78.27, 77.48),
}, T10_SETTINGS, note="FedLN is the learnable-affine variant (Table 6)")

# Table 14 (p.24): one class per client, three seeds, mean +- std.
TABLE_14 = tuple(
    PaperValue("Table 14", PAGES["Table 14"], C10, model, "1 class", method, mean, std=std,
               seeds=3)
    for method, by_model in {
        "FedAvg": ((55.76, 0.55), (55.34, 0.78)), "FedYogi": ((73.76, 0.70), (76.90, 2.80)),
        "FedFN": ((76.85, 0.37), (80.55, 0.17)), "FedLN": ((77.21, 0.85), (83.40, 4.90)),
    }.items()
    for model, (mean, std) in zip((CNN, "ResNet-18"), by_model, strict=True))

# Table 3 (p.9): where the normalization goes; the CNN without biases unless stated.
TABLE_3 = _rows("Table 3", {
    "FedAvg": (56.82, 71.83, 73.06),
    "FedFN layer-wise": (77.05, 76.60, 77.27), "FedFN last layer": (77.14, 76.67, 78.14),
    "FedLN layer-wise": (77.16, 78.09, 78.71),
    "FedLN last layer + mean shift": (77.71, 77.65, 79.94),
    "FedAvg with bias": (58.57, 72.0, 73.17),
}, SPLITS)

# Table 4 (p.10): GroupNorm and BatchNorm.
TABLE_4 = _rows("Table 4", {
    "FedGN (2 groups)": (77.15, 77.54, 79.15),
    "FedAvg + BN": (9.63, 24.64, 58.80),
    "FedBN": (10.00, 19.90, 41.25),
}, SPLITS, note="FedAvg + BN: every statistic, running statistics included, is averaged; "
                "FedBN (Li et al.): BN layers stay local")

# Table 6 (p.12): LN's variants.
TABLE_6 = _rows("Table 6", {
    "FedLN affine": (78.04, 77.52, 78.27), "FedLN static": (77.17, 78.41, 78.27),
    "FedLN before activation": (77.04, 78.08, 78.27),
}, SPLITS)

# Table 12 (p.23): FN and LN combined with FedYogi.
TABLE_12 = _rows("Table 12", {
    "FedFN + FedYogi": (80.47, 78.83, 80.35), "FedLN + FedYogi": (79.27, 79.16, 80.46),
}, SPLITS)

# Table 1 (p.2): the baselines on three datasets.
T1_METHODS = ("FedAvg", "FedProx", "SCAFFOLD", "FedLC", "FedDecorr", "FedRS", "FedYogi", "FedLN",
              "FedFN")
T1_COLUMNS = (
    ("CIFAR-10", "ResNet-18", SPLITS, "",
     ((55.0, 54.7, 55.3, 10.0, 43.9, 10.0, 80.9, 87.2, 80.8),
      (65.6, 66.7, 67.1, 57.9, 70.2, 56.7, 80.0, 88.0, 82.3),
      (71.7, 71.4, 71.1, 65.0, 69.9, 66.1, 79.2, 89.1, 84.2))),
    ("CIFAR-100", CNN, ("2 classes", "5 classes", "Dir"),
     "the Dirichlet column's beta reads 0.1 in Table 1 and 0.01 in Table 11",
     ((32.3, 32.4, 32.3, 6.0, 29.2, 10.7, 44.6, 46.6, 40.3),
      (36.2, 36.6, 36.6, 18.2, 33.0, 24.9, 44.1, 46.2, 45.4),
      (38.1, 38.8, 38.7, 22.3, 34.2, 22.1, 45.2, 47.3, 45.4))),
    ("TinyImageNet", "ResNet-18", ("Dir a", "Dir b", "Dir c"),
     "betas 0.01/0.02/0.05 in Table 1's caption, 0.1/0.2/0.5 in Appendix C.2",
     ((21.2, 21.0, 20.7, 0.8, 22.2, 14.8, 22.5, 38.2, 34.0),
      (20.9, 20.8, 20.7, 0.4, 22.4, 18.4, 24.3, 39.1, 34.1),
      (21.9, 22.1, 21.7, 0.5, 1.5, 19.0, 25.7, 38.1, 34.1))),
)
TABLE_1 = tuple(PaperValue("Table 1", PAGES["Table 1"], dataset, model, setting, method, v,
                           note=note)
                for dataset, model, settings, note, columns in T1_COLUMNS
                for setting, column in zip(settings, columns, strict=True)
                for method, v in zip(T1_METHODS, column, strict=True))

# Figures, read off the plots.
_plot = dict(from_plot=True)
FIG_2_NOTE = ("FedAvg's global CNN after 10,000 rounds, then 5 local steps on client 0 (class 0 "
              "only); 'before' is that global model")
FIG_2 = tuple(PaperValue("Fig. 2", PAGES["Fig. 2"], C10, CNN, setting, method, v,
                         note=FIG_2_NOTE, **_plot)
              for method, setting, v in (
                  ("FedAvg", "before local steps", 57.0),
                  ("FedAvg", "after 5 local steps", 20.0),
                  ("FedAvg", "after 5 local steps, class 0", 100.0),
                  ("FedFN", "after 5 local steps", 43.0),
                  ("FedFN", "after 5 local steps, class 0", 94.0)))
FIG_4_NOTE = ("one class per client; the x axis counts batches (one parallel step of the 10 "
              "clients), so 4k batches ~ 400 rounds and 40k ~ 4,000")
FIG_4 = tuple(PaperValue("Fig. 4", PAGES["Fig. 4"], C10, CNN, f"1 class, ~{rounds:,} rounds",
                         method, v, rounds=rounds, approx_rounds=True, note=FIG_4_NOTE,
                         **_plot)
              for rounds, values in ((400, (50.0, 43.0, 41.0, 17.0)),
                                     (4000, (72.5, 71.0, 77.0, 43.0)))
              for method, v in zip(("FedLN", "FedFN", "centralized", "FedAvg"), values,
                                   strict=True))
FIG_5_BETAS = (0.02, 0.1, 0.5, 2, 4)
FIG_5 = _rows("Fig. 5", {"FedAvg": (62.3, 71.1, 78.0, 80.2, 80.3),
                         "FedFN": (74.0, 76.5, 80.1, 80.9, 81.0),
                         "FedLN": (75.0, 77.1, 81.0, 81.8, 81.8)},
              tuple(f"Dir {b}" for b in FIG_5_BETAS), **_plot)
FIG_6 = _rows("Fig. 6", {"vanilla": (81.0, 59.0), "FN": (83.0, 57.0), "LN": (82.0, 75.0),
                         "GN": (82.0, 75.0), "BN": (82.0, 73.0)},
              ("final", "epoch 10"), rounds=None,
              note="centralized training: 100 epochs, batch 32, lr 0.001, momentum 0.9", **_plot)
FIG_7_LRS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0)
FIG_7 = _rows("Fig. 7", {"FedAvg": (18.5, 28.0, 34.0, 50.5, 56.5, 10.0, 10.0),
                         "FedFN": (52.5, 63.5, 65.5, 65.0, 66.5, 10.0, 10.0),
                         "FedLN": (54.5, 64.0, 65.0, 70.0, 70.5, 10.0, 10.0)},
              tuple(f"1 class, lr {lr}" for lr in FIG_7_LRS), rounds=None,
              note="a shorter horizon than Table 10's, not stated; at lr 0.5 and 1.0 every "
                   "method diverges (10 = chance)", **_plot)
FIG_7_DIVERGED = (0.5, 1.0)

VALUES: tuple[PaperValue, ...] = (TABLE_1 + TABLE_3 + TABLE_4 + TABLE_6 + TABLE_10 + TABLE_12
                                  + TABLE_14 + FIG_2 + FIG_4 + FIG_5 + FIG_6 + FIG_7)

# The protocol and the baselines' settings (Appendix C-D).
_appendix = dict(source="Appendix C-D", page=19, last_page=22)
_baselines = dict(source="Appendix D", page=21, last_page=22)
PROTOCOL: tuple[PaperSetting, ...] = (
    PaperSetting("rounds", ROUNDS, note="global rounds of every reported experiment", **_appendix),
    PaperSetting("num_clients", 10, note="CIFAR-10; every client takes part in every round",
                 **_appendix),
    PaperSetting("local_steps", 10, note="E, local steps (not epochs); 1, 10, 20 in Tables 10-11",
                 **_appendix),
    PaperSetting("batch_size", 32, **_appendix),
    PaperSetting("lr", 0.01, note="plain SGD; CIFAR-100 with E = 1 uses 0.1, PACS 0.001",
                 **_appendix),
    PaperSetting("momentum", 0.0, note="0.9 only for the centralized baseline", **_appendix),
    PaperSetting("eps", 1e-5, "Appendix C", 19, note="in every normalization, FN included"),
    PaperSetting("augment", "random crop (padding 4) + horizontal flip", **_appendix),
    PaperSetting("prox_mu", 0.01, note="FedProx; swept over 0.001, 0.01, 0.1, 1, 0.01 best",
                 **_baselines),
    PaperSetting("scaffold_option", "II", **_baselines),
    PaperSetting("feddecorr_coef", 0.5, **_baselines),
    PaperSetting("fedlc_tau", 1.0, **_baselines),
    PaperSetting("fedrs_alpha", 0.5, **_baselines),
    PaperSetting("server_lr", 0.01, note="FedYogi", **_baselines),
    PaperSetting("server_beta1", 0.9, note="FedYogi", **_baselines),
    PaperSetting("server_beta2", 0.99, note="FedYogi", **_baselines),
    PaperSetting("server_tau", 1e-3, note="FedYogi", **_baselines),
    PaperSetting("server_v0", 1e-6, note="FedYogi", **_baselines),
)

# ---------------------------------------------------------------------------------------------
# Lookups


def paper_values(source: str = "", *, method: str = "", setting: str = "",
                 dataset: str = "", model: str = "") -> list[PaperValue]:
    """Every value matching the given fields ("" matches anything), in table order."""
    wanted = dict(source=source, method=method, setting=setting, dataset=dataset, model=model)
    return [v for v in VALUES if all(not w or getattr(v, k) == w for k, w in wanted.items())]


def paper_entry(source: str, method: str, setting: str, *, dataset: str = C10,
                model: str = CNN) -> PaperValue:
    """The one value of `source` for this method and setting; KeyError if none or several."""
    found = paper_values(source, method=method, setting=setting, dataset=dataset, model=model)
    if len(found) != 1:
        raise KeyError(f"{source}: {len(found)} values for {method!r} at {setting!r} "
                       f"({dataset}, {model})")
    return found[0]


def paper_value(source: str, method: str, setting: str, **where) -> float:
    return paper_entry(source, method, setting, **where).value


def paper_gap(source: str, a: str, b: str, setting: str, **where) -> float:
    """a - b in percent points, both from `source` at `setting`."""
    return paper_value(source, a, setting, **where) - paper_value(source, b, setting, **where)


def protocol_setting(name: str) -> PaperSetting:
    return next(s for s in PROTOCOL if s.name == name)


def cite(v: PaperValue) -> str:
    """'Table 14, p.24' or 'Fig. 4, p.9, read off the plot'."""
    return f"{v.source}, p.{v.page}" + (", read off the plot" if v.from_plot else "")


def horizon_text(v: PaperValue) -> str:
    """'10,000 rounds', '~400 rounds', or 'a horizon the paper does not state'."""
    if v.rounds is None:
        return "a horizon the paper does not state"
    return f"{'~' if v.approx_rounds else ''}{v.rounds:,} rounds"
