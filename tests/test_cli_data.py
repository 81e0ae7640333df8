"""Data files of the ``costjax`` command: tables, cost CSVs, splits, bad input.

Oracles are written here independently: pandas ``dropna`` / ``get_dummies`` for the table
encoding, plain dictionaries for label-by-name matching, set algebra for the splits.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costjax.cli import costs, data
from costjax.cli.errors import UserInputError, exit_on_user_error


def penguins_like(path, n=80, seed=0):
  """A small table in the style of penguins/diamonds: text labels and features, gaps."""
  rng = np.random.default_rng(seed)
  df = pd.DataFrame({
      "bill_mm": rng.normal(44, 5, n).round(1),
      "island": rng.choice(["Biscoe", "Dream", "Torgersen"], n),
      "mass_g": rng.normal(4200, 600, n).round(0),
      "sex": rng.choice(["male", "female"], n).astype(object),
      "species": rng.choice(["Adelie", "Chinstrap", "Gentoo"], n, p=[0.5, 0.2, 0.3]),
  })
  df.loc[[3, 17], "bill_mm"] = np.nan
  df.loc[[5, 17, 40], "sex"] = None
  df.loc[9, "species"] = None
  df.to_csv(path, index=False)
  return pd.read_csv(path)


def write(path, text):
  path.write_text(text)
  return str(path)


# --------------------------------------------------------------------------- #
# Tables.
# --------------------------------------------------------------------------- #


def test_csv_with_text_labels_text_features_and_missing_values(tmp_path):
  raw = penguins_like(tmp_path / "p.csv")
  ds = data.load_data(str(tmp_path / "p.csv"), label_column="species")
  clean = raw.dropna()
  assert ds.dropped_rows == len(raw) - len(clean) == 5
  assert ds.class_names == ("Adelie", "Chinstrap", "Gentoo")  # sorted text labels
  np.testing.assert_array_equal(
      ds.y, clean["species"].map({"Adelie": 0, "Chinstrap": 1, "Gentoo": 2}).to_numpy())
  expect = pd.get_dummies(clean.drop(columns="species"), columns=["island", "sex"],
                          prefix_sep="=", dtype=float)
  assert ds.feature_names[:4] == ("bill_mm", "island=Biscoe", "island=Dream", "island=Torgersen")
  assert sorted(ds.feature_names) == sorted(expect.columns)  # in the table's column order
  np.testing.assert_allclose(ds.x, expect[list(ds.feature_names)].to_numpy(np.float32))
  assert "5 row(s) with missing values were dropped." in ds.notes()
  # New rows encode the same way; an unseen category is an error, not a silent zero.
  np.testing.assert_allclose(ds.encoding.encode(clean, source="new"), ds.x)
  bad = clean.copy()
  bad.loc[bad.index[0], "island"] = "Atlantis"
  with pytest.raises(UserInputError, match="'Atlantis'.*not seen"):
    ds.encoding.encode(bad, source="new")


def test_class_names_that_pandas_reads_as_missing_are_kept(tmp_path):
  """Labels "NA", "None" and "null" are class names; only an empty label cell is missing.
  (pandas' defaults read them as NaN, and those rows were dropped as missing.) Feature
  columns keep pandas' missing-value spellings."""
  rng = np.random.default_rng(0)
  labels = np.array(["NA", "None", "null", "b"] * 10)
  df = pd.DataFrame({"f1": rng.normal(size=40).round(3), "f2": rng.normal(size=40).round(3),
                     "label": labels})
  df.loc[5, "f2"] = np.nan  # written as an empty cell: a missing feature
  path = tmp_path / "t.csv"
  df.to_csv(path, index=False)
  with open(path, "a") as f:
    f.write("1.0,nan,b\n")  # "nan" in a feature column is still missing
    f.write("1.0,2.0,\n")  # an empty label is missing
  ds = data.load_user_table(str(path))
  assert ds.class_names == ("NA", "None", "b", "null")
  assert len(ds.y) == 39 and ds.dropped_rows == 3
  assert np.bincount(ds.y).tolist() == [10, 9, 10, 10]  # row 5 ("None") was dropped


def test_cost_csv_class_names_that_parse_as_numbers(tmp_path):
  """float() reads "nan", "inf" and "Infinity"; as header cells or row names they are
  class names, while in the matrix they are still rejected as non-finite costs. (Found
  by the round-trip property test below with the name "nAn".)"""
  names = ["nAn", "inf", "Infinity"]
  m = np.arange(9.0).reshape(3, 3)
  for index in (False, True):
    path = tmp_path / f"c{index}.csv"
    pd.DataFrame(m, columns=names, index=names).to_csv(path, index=index)
    t = costs.read_cost_csv(str(path))
    assert t.class_names == tuple(names)
    np.testing.assert_array_equal(t.matrix, m)
  (tmp_path / "bad.csv").write_text("0,nan\n1,0\n")
  with pytest.raises(UserInputError, match=r"C\[0, 1\] = nan; costs must be finite"):
    costs.read_cost_csv(str(tmp_path / "bad.csv"))


def test_features_pick_columns(tmp_path):
  penguins_like(tmp_path / "p.csv")
  ds = data.load_data(str(tmp_path / "p.csv"), label_column="species",
                      features=["island", "bill_mm"])
  assert ds.feature_names == ("island=Biscoe", "island=Dream", "island=Torgersen", "bill_mm")
  assert ds.dropped_rows == 3  # rows 3, 17 (bill) and 9 (label); missing sex no longer counts
  with pytest.raises(UserInputError, match=r"unknown column\(s\) \['beak'\]"):
    data.load_data(str(tmp_path / "p.csv"), label_column="species", features=["beak"])
  with pytest.raises(UserInputError, match="includes the label column"):
    data.load_data(str(tmp_path / "p.csv"), label_column="species", features=["species"])


def test_integer_labels_are_indices_never_remapped(tmp_path):
  # Labels 0 and 2 only, K = 3 from the cost matrix: class 1 has no examples and stays 1.
  p = write(tmp_path / "t.csv", "a,label\n" + "".join(f"{i},{2 * (i % 2)}\n" for i in range(12)))
  ds = data.load_data(p, num_classes=3)
  np.testing.assert_array_equal(ds.y, 2 * (np.arange(12) % 2))
  assert ds.class_names == ("0", "1", "2") and ds.empty_classes == ("1",)
  assert "classes without examples: 1." in ds.notes()
  with pytest.raises(UserInputError, match=r"labels must lie in 0 \.\. 1 .*y\[1\] = 2"):
    data.load_data(p, num_classes=2)


def test_text_labels_without_header_need_k_classes(tmp_path):
  p = write(tmp_path / "t.csv", "a,label\n" + "".join(f"{i},{'xyz'[i % 3]}\n" for i in range(9)))
  assert data.load_data(p, num_classes=3).class_names == ("x", "y", "z")
  with pytest.raises(UserInputError, match=r"3 distinct text labels .* K = 4 classes"):
    data.load_data(p, num_classes=4)


def test_npz_tables_with_text_labels_and_nan_rows(tmp_path):
  x = np.arange(20, dtype=np.float64).reshape(10, 2)
  x[4, 1] = np.nan
  y = np.array(["b", "a"] * 5)
  np.savez(tmp_path / "d.npz", x=x, y=y)
  ds = data.load_data(str(tmp_path / "d.npz"))
  assert ds.dropped_rows == 1 and ds.class_names == ("a", "b") and len(ds.y) == 9
  np.testing.assert_array_equal(ds.y, [1, 0, 1, 0, 0, 1, 0, 1, 0])
  ds = data.load_data(str(tmp_path / "d.npz"), features=["0"])
  assert ds.x.shape == (10, 1) and ds.dropped_rows == 0  # the NaN column is not used


# --------------------------------------------------------------------------- #
# Cost CSVs and labels matched by name.
# --------------------------------------------------------------------------- #


def test_cost_csv_with_header_and_row_names_orders_classes(tmp_path):
  raw = penguins_like(tmp_path / "p.csv")
  header = ["Gentoo", "Adelie", "Emperor", "Chinstrap"]
  m = np.array([[0, 1, 2, 3], [4, 0, 5, 6], [1, 1, 0, 1], [7, 8, 9, 0]], np.float32)
  pd.DataFrame(m, index=header, columns=header).to_csv(tmp_path / "c.csv")  # ",Gentoo,..."
  k, names = costs.cost_classes([str(tmp_path / "c.csv"), "ordinal"])
  assert (k, names) == (4, tuple(header))
  ds = data.load_data(str(tmp_path / "p.csv"), label_column="species", num_classes=k,
                      class_names=names)
  lookup = {n: i for i, n in enumerate(header)}
  np.testing.assert_array_equal(ds.y, [lookup[s] for s in raw.dropna()["species"]])
  assert ds.class_names == tuple(header) and ds.empty_classes == ("Emperor",)
  c = costs.cost_matrix(str(tmp_path / "c.csv"), 4, class_names=ds.class_names)
  np.testing.assert_array_equal(c, m)
  # Header only (no row names) reads the same.
  write(tmp_path / "h.csv", ",".join(header) + "\n"
        + "\n".join(",".join(f"{v:g}" for v in r) for r in m) + "\n")
  t = costs.read_cost_csv(str(tmp_path / "h.csv"))
  assert t.class_names == tuple(header)
  np.testing.assert_array_equal(t.matrix, m)


def test_numeric_header_matches_integer_labels_by_name(tmp_path):
  p = write(tmp_path / "t.csv", "a,label\n" + "".join(f"{i},{i % 3}\n" for i in range(9)))
  c = write(tmp_path / "c.csv", "2,0,1\n0,1,2\n3,0,4\n5,6,0\n")
  k, names = costs.cost_classes([c])
  assert names == ("2", "0", "1")
  ds = data.load_data(p, num_classes=k, class_names=names)
  np.testing.assert_array_equal(ds.y, [{2: 0, 0: 1, 1: 2}[i % 3] for i in range(9)])
  # Without a header the same file body is read as indices, unchanged.
  assert costs.read_cost_csv(write(tmp_path / "n.csv", "0,1,2\n3,0,4\n5,6,0\n")).class_names \
      is None


def test_builtin_data_follow_a_cost_header(tmp_path):
  names = ["Ideal", "Premium", "Very Good", "Good", "Fair"]  # reversed order
  ds = data.load_data("diamonds", max_rows=300, class_names=names, num_classes=5)
  ref = data.load_data("diamonds", max_rows=300)
  np.testing.assert_array_equal(ds.y, 4 - ref.y)
  with pytest.raises(UserInputError, match=r"not classes of the cost matrix's header"):
    data.load_data("diamonds", max_rows=300, class_names=names[:4] + ["Poor"])


@pytest.mark.parametrize("text, message", [
    ("a,b\nb,0,1\na,1,0\n", r"row names and the header disagree: row 0 is named 'b'"),
    ("a,b\n0,nan\n1,0\n", r"C\[0, 1\] = nan; costs must be finite"),
    ("a,b\n0,inf\n1,0\n", r"C\[0, 1\] = inf; costs must be finite"),
    ("0,1\n-2,0\n", r"negative entry: C\[1, 0\] = -2.0"),
    ("0,1\n1,\n", r"C\[1, 1\] is an empty cell"),
    ("0,1,2\n1,0,2\n", r"must be square .* 2 rows of 3 numbers"),
    ("a,b,c\n0,1\n1,0\n", r"header names 3 classes but the matrix is 2 x 2"),
    ("a,a\n0,1\n1,0\n", r"duplicate class names in the header: \['a'\]"),
    ("0,1\n1,0,\n", r"ragged table"),
    ("", r"the file is empty"),
    ("0,x\n1,0\n", r"C\[0, 1\] is 'x', not a number"),
])
def test_bad_cost_csv(tmp_path, text, message):
  p = write(tmp_path / "bad.csv", text)
  with pytest.raises(UserInputError, match=message) as e:
    costs.read_cost_csv(p)
  assert "bad.csv" in str(e.value) and "\n" not in str(e.value)


def test_cost_shape_and_header_mismatch_with_data(tmp_path):
  c3 = write(tmp_path / "c3.csv", "0,1,1\n1,0,1\n1,1,0\n")
  with pytest.raises(UserInputError, match=r"shape \(3, 3\).*must be 10 x 10"):
    costs.cost_matrix(c3, 10)
  h = write(tmp_path / "h.csv", "a,b,c\n0,1,1\n1,0,1\n1,1,0\n")
  with pytest.raises(UserInputError, match="differ from the data's classes"):
    costs.cost_matrix(h, 3, class_names=("a", "c", "b"))
  h2 = write(tmp_path / "h2.csv", "a,c,b\n0,1,1\n1,0,1\n1,1,0\n")
  with pytest.raises(UserInputError, match="differs from another cost file's header"):
    costs.cost_classes([h, h2])
  with pytest.raises(UserInputError, match="not a built-in cost"):
    costs.cost_matrix("no_such_cost", 3)


# --------------------------------------------------------------------------- #
# Bad tables.
# --------------------------------------------------------------------------- #


def test_label_missing_from_cost_header(tmp_path):
  penguins_like(tmp_path / "p.csv")
  with pytest.raises(UserInputError, match=r"p.csv.*\['Chinstrap'\] \(\d+ row\(s\)\) are not "
                     r"classes of the cost matrix's header"):
    data.load_data(str(tmp_path / "p.csv"), label_column="species",
                   class_names=("Adelie", "Gentoo"), num_classes=2)


def test_pickled_npz_is_rejected(tmp_path):
  np.savez(tmp_path / "evil.npz", x=np.array([{"a": 1}] * 6, dtype=object), y=np.zeros(6, int))
  with pytest.raises(UserInputError, match="evil.npz.*pickled"):
    data.load_data(str(tmp_path / "evil.npz"))


def test_empty_after_dropping_missing_rows(tmp_path):
  p = write(tmp_path / "e.csv", "a,b,label\n1,,x\n,2,y\n3,4,\n")
  with pytest.raises(UserInputError, match=r"e.csv.*no rows left after dropping the 3 row"):
    data.load_data(p)


@pytest.mark.parametrize("text, message", [
    ("a,label\ninf,0\n1,1\n", r"column 'a' has a non-finite value inf in row 0"),
    ("a,b\n1,0\n", r"no label column 'label'"),
    ("label\n0\n1\n", r"no feature columns"),
    ("a,label\n1,0\n2,0\n", r"need at least 2 classes; got K = 1"),
    ("a,label\n1,1\n2,1\n", r"only 1 class has examples"),
    ("a,label\n1,0.5\n2,1\n", r"labels must be integers or names; got y\[0\] = 0.5"),
])
def test_bad_csv_tables(tmp_path, text, message):
  p = write(tmp_path / "t.csv", text)
  with pytest.raises(UserInputError, match=message):
    data.load_data(p)


def test_wrong_shapes_and_too_many_categories(tmp_path):
  np.savez(tmp_path / "flat.npz", x=np.ones(6), y=np.zeros(6, int))
  with pytest.raises(UserInputError, match="x must be 2-D"):
    data.load_data(str(tmp_path / "flat.npz"))
  np.savez(tmp_path / "short.npz", x=np.ones((6, 2)), y=np.zeros(5, int))
  with pytest.raises(UserInputError, match="one label per row"):
    data.load_data(str(tmp_path / "short.npz"))
  ids = "".join(f"id{i},{i % 2}\n" for i in range(data.MAX_CATEGORIES + 1))
  with pytest.raises(UserInputError, match=r"text column 'name' has 201 distinct values"):
    data.load_data(write(tmp_path / "ids.csv", "name,label\n" + ids))


def test_user_error_is_one_line_on_stderr_with_status_2(capsys):
  def main():
    raise UserInputError("--cost 'c.csv': negative entry:\n C[0, 1] = -1.0")

  with pytest.raises(SystemExit) as e:
    exit_on_user_error(main)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err == "error: --cost 'c.csv': negative entry: C[0, 1] = -1.0\n"


# --------------------------------------------------------------------------- #
# Splits.
# --------------------------------------------------------------------------- #


def test_splits_cope_with_rare_and_empty_classes():
  rng = np.random.default_rng(0)
  counts = [40, 25, 2, 1, 0]  # class 4 has no examples; classes 2 and 3 are rare
  y = np.repeat(np.arange(5), counts)
  x = rng.normal(size=(len(y), 3)).astype(np.float32) + y[:, None]
  x[:, 0] = np.arange(len(y))  # row ids, recovered exactly after un-standardizing
  ds = data.validate_table(x, y, source="t", num_classes=5)
  sp = data.make_splits(ds, [0, 1, 2])
  n = len(y)
  assert sp.y_test.shape == (3, round(0.2 * n)) and sp.y_val.shape == (3, round(0.2 * n))
  for s in range(3):
    rows = {}
    for split in ("train", "val", "test"):
      xs = getattr(sp, f"x_{split}")[s] * sp.scale[s] + sp.mean[s]
      ids = np.rint(xs[:, 0]).astype(int)
      rows[split] = set(ids)
      np.testing.assert_array_equal(y[ids], getattr(sp, f"y_{split}")[s])
      np.testing.assert_allclose(getattr(sp, f"x_{split}")[s].mean(0) if split == "train"
                                 else 0, 0, atol=1e-5)
    # Disjoint, and together exactly the table.
    assert not (rows["train"] & rows["val"] or rows["train"] & rows["test"]
                or rows["val"] & rows["test"])
    assert rows["train"] | rows["val"] | rows["test"] == set(range(n))
    # Stratified: every class with examples is in train; the big ones in proportion.
    tr = np.bincount(sp.y_train[s], minlength=5)
    assert np.all(tr[:4] >= 1) and tr[4] == 0
    te = np.bincount(sp.y_test[s], minlength=5)
    assert abs(te[0] - 0.2 * 40) <= 1 and abs(te[1] - 0.2 * 25) <= 1
  assert not np.array_equal(sp.y_train[0], sp.y_train[1]) or not np.array_equal(
      sp.x_train[0], sp.x_train[1])
  notes = " ".join(sp.notes)
  assert "classes without examples: 4." in notes
  assert "fewer than 3 examples: 2 (2), 3 (1)" in notes
  for split, word in (("val", "validation"), ("test", "test")):
    line = next(x for x in sp.notes if f"the {word} split" in x)
    listed = set(line.split(": ")[1].rstrip(".").split(", "))
    assert "3" in listed  # one example: it must be training data
    counts_here = np.bincount(getattr(sp, f"y_{split}")[0], minlength=5)
    assert listed == {str(c) for c in range(4) if counts_here[c] == 0}


def test_splits_reject_too_few_examples():
  ds = data.validate_table(np.ones((3, 1)), np.array([0, 1, 0]), source="tiny")
  with pytest.raises(UserInputError, match="tiny: 3 examples are too few"):
    data.make_splits(ds, [0])


def test_subsample_is_stratified_and_keeps_rare_classes():
  y = np.repeat(np.arange(3), [500, 300, 2])
  ds = data.validate_table(np.arange(len(y), dtype=np.float32)[:, None], y, source="t")
  sub = data.subsample(ds, 81, seed=1)
  np.testing.assert_array_equal(sub.class_counts, [50, 30, 1])
  assert len(set(sub.x[:, 0])) == 81


def test_split_sizes_keep_one_training_example_per_class():
  # Proportional rounding would give a singleton class a test slot; it must stay in train.
  test, val = data.split_sizes([1, 1, 1, 10], val_frac=0.2, test_frac=0.5)
  np.testing.assert_array_equal(test, [0, 0, 0, 6])
  np.testing.assert_array_equal(val, [0, 0, 0, 3])
  rng = np.random.default_rng(0)
  for _ in range(200):
    counts = rng.integers(0, 12, size=rng.integers(2, 8))
    try:
      test, val = data.split_sizes(counts, val_frac=0.2, test_frac=0.3)
    except UserInputError:
      assert round(0.3 * counts.sum()) + round(0.2 * counts.sum()) > counts.sum() - (
          counts > 0).sum() or counts.sum() < 3
      continue
    assert test.sum() == max(1, round(0.3 * counts.sum()))
    assert val.sum() == max(1, round(0.2 * counts.sum()))
    assert np.all(counts - test - val >= (counts > 0))


_NAMES = st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC _-", min_size=1, max_size=6)
                  .map(str.strip).filter(lambda s: s and not s[0].isdigit()),
                  min_size=2, max_size=6, unique=True)


@settings(max_examples=40, deadline=None)
@given(names=_NAMES, layout=st.sampled_from(["plain", "header", "header+rows", "digits"]),
       seed=st.integers(0, 2**16))
def test_cost_csv_round_trip(tmp_path_factory, names, layout, seed):
  """Any matrix written in any accepted layout (by pandas / NumPy) reads back exactly."""
  k = len(names)
  rng = np.random.default_rng(seed)
  m = rng.integers(0, 50, size=(k, k)) / rng.choice([1, 4, 10])
  path = tmp_path_factory.mktemp("rt") / "c.csv"
  if layout == "plain":
    np.savetxt(path, m, delimiter=",")
    expect = None
  elif layout == "digits":
    expect = tuple(str(i) for i in rng.permutation(k))
    pd.DataFrame(m, columns=list(expect)).to_csv(path, index=False)
  else:
    df = pd.DataFrame(m, columns=names, index=names)
    df.to_csv(path, index=(layout == "header+rows"))
    expect = tuple(names)
  t = costs.read_cost_csv(str(path))
  assert t.class_names == expect
  np.testing.assert_allclose(t.matrix, m.astype(np.float32), rtol=1e-6)


def test_bundled_digits_equal_scikit_learns_loader(monkeypatch):
  """load_digits reads scikit-learn's digits.csv.gz directly (no sklearn.datasets import);
  the table must be exactly what scikit-learn's own loader returns, and so must the
  fallback to that loader when the file is not found."""
  from sklearn.datasets import load_digits as sklearn_digits

  ref = sklearn_digits()
  ds = data.load_digits()
  np.testing.assert_array_equal(ds.x, ref.data.astype(np.float32))
  np.testing.assert_array_equal(ds.y, ref.target)
  assert ds.x.shape == (1797, 64) and ds.num_classes == 10 and ds.image_shape == (8, 8, 1)
  assert ds.class_names == tuple("0123456789")

  import importlib.util

  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
  fallback = data.load_digits()
  np.testing.assert_array_equal(fallback.x, ds.x)
  np.testing.assert_array_equal(fallback.y, ds.y)
