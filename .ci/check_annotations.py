"""Every public function and method of costjax is fully annotated (CI, beside mypy).

Public (docs/stability.md): the names in `costjax.__all__` (functions, and the public
methods and properties of classes), and the statistics helpers of `costjax.cli.stats`.
Each parameter and each return needs an annotation; mypy then checks them.
"""

from __future__ import annotations

import inspect
import pathlib
import sys

# This checkout's package, whatever else the environment has installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import costjax  # noqa: E402
import costjax.cli.stats  # noqa: E402


def missing(fn: object, where: str) -> list[str]:
  fn = inspect.unwrap(fn)  # type: ignore[arg-type]
  try:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
  except (TypeError, ValueError):
    return []
  out = [f"{where}({p.name})" for p in sig.parameters.values()
         if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty]
  if sig.return_annotation is inspect.Signature.empty and not where.endswith("__init__"):
    out.append(f"{where} -> ?")
  return out


def main() -> None:
  problems: list[str] = []
  public = [(f"costjax.{n}", getattr(costjax, n)) for n in costjax.__all__]
  public += [(f"costjax.cli.stats.{n}", getattr(costjax.cli.stats, n))
             for n in ("wilcoxon_p", "holm", "mean_ci")]
  for name, obj in public:
    if inspect.isclass(obj):
      for attr, member in vars(obj).items():
        if attr.startswith("_") and attr not in ("__init__", "__call__"):
          continue
        if isinstance(member, property):
          member = member.fget
        elif isinstance(member, (staticmethod, classmethod)):
          member = member.__func__
        if inspect.isfunction(member):
          problems += missing(member, f"{name}.{attr}")
    elif callable(obj):
      problems += missing(obj, name)
  if problems:
    sys.exit("not annotated:\n  " + "\n  ".join(problems))
  print(f"{len(public)} public names: every parameter and return annotated")


if __name__ == "__main__":
  main()
