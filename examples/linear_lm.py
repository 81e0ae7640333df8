"""A tiny word-level language model trained with a cost-aware loss from features.

The text is Python's own help topics (``pydoc_data/topics.py``, shipped with the
standard library), split into words, numbers and punctuation. The vocabulary (the
``--vocab`` most frequent tokens plus ``<unk>``) gets a hierarchy, a ``TreeCost``:
root -> kind of token (punctuation, number, word) -> first character -> token, so
that predicting ``"return"`` for ``"raise"`` costs less than predicting ``"("``.

The model (Flax NNX) embeds the previous ``--context`` tokens, mixes them with an
MLP into ``--dim`` features, and is trained with
``costjax.linear_soft_label_cross_entropy(features, W, next_token, tree)``: the loss
goes straight from the features and the output layer ``W`` to the value, one block
of the vocabulary at a time, never forming the batch x vocabulary logits. The script
prints the compiled temporary memory of the training loss's gradient with the
materialized logits against the blockwise loss, at its own size and at a language
model's vocabulary (compile only), then trains and reports the held-out accuracy and
mean tree cost of the argmax prediction.

  python examples/linear_lm.py                       # ~20 s on a laptop CPU
  python examples/linear_lm.py --steps 20 --vocab 300 --batch 64   # smoke run
"""

from __future__ import annotations

import argparse
import collections
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import costjax as cj


def load_tokens() -> list[str]:
  from pydoc_data import topics

  text = "\n".join(topics.topics[k] for k in sorted(topics.topics))
  return re.findall(r"[A-Za-z_]+|\d+|[^\sA-Za-z_\d]", text)


def kind(token: str) -> int:
  if token[0].isdigit():
    return 1
  if token[0].isalpha() or token[0] == "_":
    return 2
  return 0


def vocabulary_tree(vocab: list[str]) -> np.ndarray:
  """Parents over the nodes: the ``V`` tokens first (class order), then (kind,
  first character) groups, then three kinds, then the root."""
  v = len(vocab)
  groups = sorted({(kind(t), t[0].lower()) for t in vocab[1:]})
  group_id = {g: v + i for i, g in enumerate(groups)}
  kind_node = v + len(groups)  # kinds 0, 1, 2 -> kind_node + k
  root = kind_node + 3
  parents = np.full(root + 1, -1, np.int64)
  parents[0] = root  # <unk> hangs off the root: far from everything
  for i, t in enumerate(vocab[1:], start=1):
    parents[i] = group_id[(kind(t), t[0].lower())]
  for (k, _), node in group_id.items():
    parents[node] = kind_node + k
  parents[kind_node:kind_node + 3] = root
  return parents


class Model(nnx.Module):
  def __init__(self, vocab: int, context: int, dim: int, *, rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocab, 32, rngs=rngs)
    self.mix = nnx.Linear(context * 32, dim, rngs=rngs)
    self.out = nnx.Param(jax.random.normal(rngs.params(), (dim, vocab)) / np.sqrt(dim))
    self.bias = nnx.Param(jnp.zeros((vocab,)))

  def features(self, ctx: jax.Array) -> jax.Array:
    e = self.embed(ctx)  # (B, context, 32)
    return jax.nn.gelu(self.mix(e.reshape(e.shape[0], -1)))


def memory(b: int, d: int, tree: cj.TreeCost, temperature: float, block: int) -> tuple[int, int]:
  """Compiled temporary bytes of value_and_grad: materialized logits vs blockwise."""
  v = tree.num_classes
  args = (jax.ShapeDtypeStruct((b, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32),
          jax.ShapeDtypeStruct((v,), jnp.float32), jax.ShapeDtypeStruct((b,), jnp.int32))

  def temp(f):
    g = jax.jit(jax.value_and_grad(lambda h, w, c, y: f(h, w, c, y).mean(), argnums=(0, 1, 2)))
    return g.lower(*args).compile().memory_analysis().temp_size_in_bytes

  full = temp(lambda h, w, c, y: cj.soft_label_cross_entropy(
      h @ w + c[None, :], y, tree, temperature=temperature))
  blockwise = temp(lambda h, w, c, y: cj.linear_soft_label_cross_entropy(
      h, w, y, tree, temperature=temperature, bias=c, block_size=block))
  return full, blockwise


def star_tree(v: int, fanout: int = 256) -> cj.TreeCost:
  """A two-level tree over ``v`` classes (groups of ``fanout``), for the memory estimate."""
  groups = -(-v // fanout)
  parents = np.concatenate([v + np.arange(v) // fanout, np.full(groups, v + groups), [-1]])
  return cj.TreeCost(parents, v)


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--vocab", type=int, default=4000, help="most frequent tokens kept")
  ap.add_argument("--context", type=int, default=4, help="previous tokens the model sees")
  ap.add_argument("--dim", type=int, default=64, help="feature dimension D")
  ap.add_argument("--batch", type=int, default=256)
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--lr", type=float, default=3e-3)
  ap.add_argument("--temperature", type=float, default=0.5,
                  help="soft-label temperature, in tree-distance units")
  ap.add_argument("--block-size", type=int, default=1024, help="classes per block")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)

  tokens = load_tokens()
  counts = collections.Counter(tokens)
  vocab = ["<unk>"] + [t for t, _ in counts.most_common(args.vocab)]
  index = {t: i for i, t in enumerate(vocab)}
  ids = np.array([index.get(t, 0) for t in tokens], np.int32)
  v = len(vocab)
  tree = cj.TreeCost(vocabulary_tree(vocab), v)
  print(f"{len(tokens):,} tokens, vocabulary {v:,} (tree of {tree.parents.shape[0]:,} nodes)")

  full, blockwise = memory(args.batch, args.dim, tree, args.temperature, args.block_size)
  print(f"gradient temporaries at B={args.batch}, D={args.dim}, V={v:,}: materialized "
        f"{full / 2**20:.2f} MiB, blockwise {blockwise / 2**20:.2f} MiB")
  big_v, big_b = 131072, 2048
  full_big, block_big = memory(big_b, args.dim, star_tree(big_v), args.temperature, 4096)
  print(f"gradient temporaries at B={big_b}, D={args.dim}, V={big_v:,} (compile only): "
        f"materialized {full_big / 2**30:.2f} GiB, blockwise {block_big / 2**20:.1f} MiB")

  # Next-token windows; the last 10% of the text is held out.
  n = len(ids) - args.context
  windows = np.stack([ids[i:i + n] for i in range(args.context + 1)], axis=1)
  split = int(0.9 * n)
  train, test = windows[:split], windows[split:]

  model = Model(v, args.context, args.dim, rngs=nnx.Rngs(args.seed))
  optimizer = nnx.Optimizer(model, optax.adam(args.lr), wrt=nnx.Param)

  def loss_fn(m, batch):
    h = m.features(batch[:, :-1])
    return cj.linear_soft_label_cross_entropy(
        h, m.out[...], batch[:, -1], tree, temperature=args.temperature, bias=m.bias[...],
        block_size=args.block_size).mean()

  @nnx.jit
  def step(m, opt, batch):
    loss, grads = nnx.value_and_grad(loss_fn)(m, batch)
    opt.update(m, grads)
    return loss

  @nnx.jit
  def evaluate(m, batch):
    logits = m.features(batch[:, :-1]) @ m.out[...] + m.bias[...][None, :]
    pred = jnp.argmax(logits, axis=-1)
    y = batch[:, -1]
    return jnp.mean(pred == y), cj.mean_cost(pred, y, tree)

  rng = np.random.default_rng(args.seed)
  t0 = time.perf_counter()
  losses = []
  for s in range(args.steps):
    batch = jnp.asarray(train[rng.integers(0, len(train), args.batch)])
    losses.append(float(step(model, optimizer, batch)))
    if s % max(1, args.steps // 5) == 0 or s == args.steps - 1:
      print(f"step {s:4d}  soft-label loss {losses[-1]:.3f}")
  held_out = jnp.asarray(test[: 8 * args.batch])
  acc, cost = (float(x) for x in evaluate(model, held_out))
  print(f"held-out next-token accuracy {acc:.3f}, mean tree cost of argmax {cost:.3f} "
        f"({time.perf_counter() - t0:.1f} s of training)")
  return {"first_loss": losses[0], "last_loss": float(np.mean(losses[-5:])), "accuracy": acc,
          "mean_cost": cost, "temp_materialized": full, "temp_blockwise": blockwise}


if __name__ == "__main__":
  main()
