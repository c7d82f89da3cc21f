"""Where a training step's time goes: operator records of a torch.profiler run sorted into categories.

Pure functions over plain records, so the rules are unit-tested with hand-made records
(tests/unit/benchmarks/test_profile_categories.py); benchmarks/speed/profile_step.py turns real profiler events into
records.

A record is a dict: ``name`` (the operator, e.g. ``aten::mm``), ``shapes`` (its input shapes, as the profiler
records them with ``record_shapes``), ``self_us`` (self CPU time: its own time, children excluded, so the self
times of all records add up to the time spent inside operators without double counting) and ``ancestors`` (the
names of the operators and ``record_function`` ranges it ran inside, innermost first).

Which matmul is which is read from the shapes, because that is all an ``aten::mm`` knows about itself: a product
with the LoRA rank as one of its dimensions is LoRA's (A: hidden -> r, B: r -> out, and their gradients), one with
the vocabulary or the number of labels as a dimension is the output head's, every other one multiplies the frozen
base's weights (forward, or the activation gradients of the backward pass). A rank equal to a hidden size or to the
number of labels would be ambiguous; SmolLM2 (576 hidden, rank 16, 2 labels, 49,152 vocabulary) is not.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# the order of the table, and what each category means (written under the table)
CATEGORIES = {
    "base_matmul": "matmuls with the frozen base's weights (q/k/v/o, MLP), forward and activation gradients",
    "lora_matmul": "LoRA's rank-r matmuls (A and B, forward, input and weight gradients)",
    "head_matmul": "the output head: LM head over the vocabulary, or the classification head",
    "attention": "scaled-dot-product attention kernels (forward and backward), everything inside them",
    "casts": "dtype casts (aten::to / _to_copy and the copies inside them): autocast's fp32 -> bf16 of weights "
             "and activations, and back",
    "elementwise": "forward non-matmul work: norms, activations, rotary, dropout, adds, softmax, loss, copies",
    "backward_other": "backward non-matmul work: elementwise gradients and the autograd engine's own nodes",
    "optimizer": "optimizer step and zero_grad (AdamW over the adapter's parameters, its Python loop included) "
                 "and gradient clipping",
    "bookkeeping": "views, reshapes, transposes, empty tensors: no arithmetic, per-op dispatch cost",
    "python_forward": "Python inside the forward pass between operators (module calls, PEFT's LoRA dispatch, "
                      "transformers' masks and hooks)",
    "data": "data collation (the collator's Python and tensor ops)",
    "outside_ops": "wall time in none of the above: the Trainer loop's own Python, the backward call's entry, "
                   "profiler overhead",
}
# record_function ranges profile_step.py opens around parts of the step, so their Python time is attributed
FORWARD_RANGE, DATA_RANGE, CLIP_RANGE = "peftkit.forward", "peftkit.collate", "peftkit.clip_grad_norm"
# the ones that do the arithmetic
MATMUL_KERNELS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm"}
MATMUL_WRAPPERS = {"aten::matmul", "aten::linear"}  # dispatch to a kernel; their self time is overhead
CAST_OPS = {"aten::to", "aten::_to_copy"}
BOOKKEEPING_OPS = {"aten::view", "aten::reshape", "aten::_unsafe_view", "aten::t", "aten::transpose",
                   "aten::as_strided", "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::expand",
                   "aten::slice", "aten::select", "aten::unsqueeze", "aten::squeeze", "aten::permute",
                   "aten::detach", "aten::alias", "aten::resolve_conj", "aten::resolve_neg", "aten::unbind",
                   "aten::split", "aten::narrow", "aten::contiguous", "aten::lift_fresh", "detach",
                   "aten::result_type", "aten::is_nonzero", "aten::item", "aten::_local_scalar_dense"}


def matmul_dims(name: str, shapes: list) -> tuple[int, int, int, int] | None:
    """(batch, m, k, n) of a matmul kernel from its input shapes; None when the shapes are not recorded."""
    try:
        if name == "aten::mm":
            (m, k), (_, n) = shapes[0], shapes[1]
            return 1, m, k, n
        if name in ("aten::addmm", "aten::addmm_"):  # (bias or accumulator, a, b)
            (m, k), (_, n) = shapes[1], shapes[2]
            return 1, m, k, n
        if name == "aten::bmm":
            (b, m, k), (_, _, n) = shapes[0], shapes[1]
            return b, m, k, n
        if name == "aten::baddbmm":
            (b, m, k), (_, _, n) = shapes[1], shapes[2]
            return b, m, k, n
    except (IndexError, TypeError, ValueError):
        return None
    return None


def matmul_flops(name: str, shapes: list) -> int:
    dims = matmul_dims(name, shapes)
    if dims is None:
        return 0
    b, m, k, n = dims
    return 2 * b * m * k * n


def weight_dims(name: str, shapes: list) -> set[int]:
    """The dimensions that identify whose matmul this is. A kernel's operands are 2-D (tokens flattened into one
    dimension, which equals a rank, vocabulary or label count only for a batch of exactly that many tokens), so all
    their dimensions count; ``aten::linear`` keeps the batch and sequence dimensions in its input, so only its
    weight's count, and for ``aten::matmul`` only each operand's last one."""
    shapes = [s for s in shapes or [] if isinstance(s, (list, tuple)) and s]
    if name == "aten::linear":
        shapes = shapes[1:2]
    elif name == "aten::matmul":
        shapes = [s[-1:] for s in shapes]
    return {d for shape in shapes for d in shape if isinstance(d, int)}


def whose_matmul(name: str, shapes: list, *, rank: int, vocab: int, num_labels: int | None) -> str:
    """Head, LoRA or frozen base, from the dimensions (module docstring). A dimension of a quarter of the vocabulary
    or more is the head's too: TRL's fused LM head multiplies the vocabulary in 32,768-wide chunks (49,152 =
    32,768 + 16,384), and no token count or base weight of the profiled runs comes near 12,288."""
    dims = weight_dims(name, shapes)
    if vocab in dims or (num_labels and num_labels in dims) or any(d >= vocab // 4 for d in dims):
        return "head_matmul"
    if rank in dims:
        return "lora_matmul"
    return "base_matmul"


def categorise_one(record: dict[str, Any], *, rank: int, vocab: int, num_labels: int | None) -> str:
    """The category of one operator record (see CATEGORIES); the first rule that matches wins."""
    name, ancestors = record["name"], record.get("ancestors", ())
    within = (name, *ancestors)
    if DATA_RANGE in within:
        return "data"
    if any(a.startswith("Optimizer.") for a in within) or CLIP_RANGE in within:
        return "optimizer"
    if name == FORWARD_RANGE:
        return "python_forward"
    if "scaled_dot_product" in name or any("scaled_dot_product" in a for a in ancestors):
        return "attention"
    if name in CAST_OPS or any(a in CAST_OPS for a in ancestors):
        return "casts"
    if name in MATMUL_KERNELS or name in MATMUL_WRAPPERS:
        return whose_matmul(name, record.get("shapes"), rank=rank, vocab=vocab, num_labels=num_labels)
    if name in BOOKKEEPING_OPS:
        return "bookkeeping"
    backward = any(a.startswith("autograd::engine::evaluate_function") for a in within)
    if backward or name.endswith("Backward0") or name.endswith("Backward1") or "AccumulateGrad" in name:
        return "backward_other"
    return "elementwise"


def categorise(records: Iterable[dict[str, Any]], *, rank: int, vocab: int,
               num_labels: int | None) -> dict[str, dict[str, Any]]:
    """category -> {self_us, count, flops (matmul kernels: 2 b m k n from the shapes), top ops by self time}."""
    out: dict[str, dict[str, Any]] = {c: {"self_us": 0.0, "count": 0, "flops": 0, "ops": {}}
                                      for c in CATEGORIES if c != "outside_ops"}
    for record in records:
        category = categorise_one(record, rank=rank, vocab=vocab, num_labels=num_labels)
        entry = out[category]
        entry["self_us"] += record["self_us"]
        entry["count"] += 1
        if record["name"] in MATMUL_KERNELS and category.endswith("matmul"):
            entry["flops"] += matmul_flops(record["name"], record.get("shapes"))
        entry["ops"][record["name"]] = entry["ops"].get(record["name"], 0.0) + record["self_us"]
    for entry in out.values():
        entry["ops"] = dict(sorted(entry["ops"].items(), key=lambda kv: -kv[1])[:6])
    return out


def breakdown(categories: dict[str, dict[str, Any]], wall_us: float, peak_gflops: float) -> list[dict[str, Any]]:
    """Rows of the table: each category's share of the window's wall time, adding up to 100%.

    ``outside_ops`` = wall time minus the time inside operators. If the operators' self times exceed the wall
    time (operators on other threads overlapping), ``outside_ops`` is 0 and the shares are of the operators' sum,
    so the table still adds up to 100%; ``overlap_us`` says by how much.
    """
    inside = sum(e["self_us"] for e in categories.values())
    outside = max(0.0, wall_us - inside)
    total = inside + outside
    rows = []
    for name in CATEGORIES:
        entry = categories.get(name, {"self_us": outside, "count": 0, "flops": 0, "ops": {}})
        us = outside if name == "outside_ops" else entry["self_us"]
        row = {"category": name, "self_ms": round(us / 1000, 1), "share": round(us / total, 4) if total else 0.0,
               "ops": entry["count"], "top_ops": {k: round(v / 1000, 1) for k, v in entry.get("ops", {}).items()}}
        if entry.get("flops"):
            gflops = entry["flops"] / us / 1e3 if us else 0.0  # flops / microseconds / 1e3 = GFLOP/s
            row.update(gflop=round(entry["flops"] / 1e9, 2), gflops=round(gflops, 1),
                       of_peak=round(gflops / peak_gflops, 4) if peak_gflops else None)
        rows.append(row)
    rows[-1]["overlap_us"] = max(0.0, inside - wall_us)
    return rows


def matmul_shapes(records: Iterable[dict[str, Any]], *, rank: int, vocab: int, num_labels: int | None,
                  top: int = 12) -> list[dict[str, Any]]:
    """The matmul kernels grouped by (category, kernel, shape): calls, time and GFLOP/s, the most time first."""
    groups: dict[tuple, dict[str, Any]] = {}
    for record in records:
        if record["name"] not in MATMUL_KERNELS:
            continue
        category = categorise_one(record, rank=rank, vocab=vocab, num_labels=num_labels)
        if not category.endswith("matmul"):
            continue
        dims = matmul_dims(record["name"], record.get("shapes"))
        key = (category, record["name"], dims)
        g = groups.setdefault(key, {"category": category, "kernel": record["name"],
                                    "bmkn": list(dims) if dims else None, "calls": 0, "self_us": 0.0, "flops": 0})
        g["calls"] += 1
        g["self_us"] += record["self_us"]
        g["flops"] += matmul_flops(record["name"], record.get("shapes"))
    rows = sorted(groups.values(), key=lambda g: -g["self_us"])[:top]
    for g in rows:
        g["gflops"] = round(g["flops"] / g["self_us"] / 1e3, 1) if g["self_us"] else None
        g["self_ms"] = round(g.pop("self_us") / 1000, 1)
    return rows
