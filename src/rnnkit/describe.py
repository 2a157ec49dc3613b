"""``rnnkit.describe``: a table of variables with their initializers and statistics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from rnnkit.scope import Variable, global_variables

__all__ = ["describe", "VariableTable", "orthogonality_gap"]

_COLUMNS = ("name", "shape", "dtype", "initializer", "origin", "mean", "std", "min", "max",
            "orth_gap")


def aligned_table(header, rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, a dashed rule under the header (rnnkit's text tables)."""
    cells = [list(header)] + rows
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def orthogonality_gap(weight: torch.Tensor) -> float | None:
    """Largest ``|entry|`` of ``B^T B - I``: 0 means (semi-)orthogonal; None if not 2-D.

    The whole matrix is checked (orthonormal columns if tall, rows if wide), and so is each
    square block of a fused ``[n, k*n]`` or ``[k*n, n]`` kernel (orthogonal per gate); the
    smaller gap is reported.
    """
    if weight.dim() != 2 or weight.numel() == 0:
        return None
    w = weight.detach().to(torch.float64)
    rows, cols = w.shape
    candidates = [w if rows >= cols else w.T]
    if cols % rows == 0 and cols > rows:
        candidates.append(list(w.split(rows, dim=1)))
    elif rows % cols == 0 and rows > cols:
        candidates.append([b.T for b in w.split(cols, dim=0)])

    def gap(b: torch.Tensor) -> float:
        return float((b.T @ b - torch.eye(b.shape[1], dtype=torch.float64)).abs().max())

    return min(gap(c) if torch.is_tensor(c) else max(gap(b) for b in c) for c in candidates)


@dataclass
class VariableTable:
    """Rows of ``describe``; ``str()`` renders an aligned text table, ``rows`` are dicts."""

    rows: list[dict]

    def __str__(self) -> str:
        def fmt(value) -> str:
            if value is None:
                return "-"
            if isinstance(value, float):
                return f"{value:.4g}"
            return str(value)

        return aligned_table(_COLUMNS, [[fmt(r[c]) for c in _COLUMNS] for r in self.rows])

    __repr__ = __str__

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, name: str) -> dict:
        for row in self.rows:
            if row["name"] == name:
                return row
        raise KeyError(name)


def _named(obj) -> Iterable[tuple[str, torch.Tensor]]:
    if obj is None:
        return [(v.name, v) for v in global_variables()]
    if isinstance(obj, torch.nn.Module):
        seen, out = set(), []
        for key, p in obj.named_parameters(remove_duplicate=True):
            if id(p) not in seen:
                seen.add(id(p))
                out.append((p.name if isinstance(p, Variable) else key, p))
        return out
    if isinstance(obj, Mapping):
        return list(obj.items())
    if torch.is_tensor(obj):
        return [(obj.name if isinstance(obj, Variable) else "tensor", obj)]
    if isinstance(obj, Iterable):
        items = list(obj)
        if all(torch.is_tensor(t) for t in items):
            return [(t.name if isinstance(t, Variable) else f"tensor_{i}", t)
                    for i, t in enumerate(items)]
    raise TypeError(f"describe: obj must be None, a Module, a tensor, a list of tensors or a "
                    f"dict of them, got {type(obj).__name__}")


def describe(obj=None) -> VariableTable:
    """Describe variables: name, shape, dtype, initializer and its origin, and statistics.

    Args:
        obj: None (every variable in the default graph), a ``torch.nn.Module``, a tensor, a list
            of tensors or a ``{name: tensor}`` dict.

    Returns:
        A ``VariableTable``; print it, or read ``.rows`` (dicts keyed by column name).

    Example:
        >>> print(rnnkit.describe(cell))  # doctest: +SKIP
    """
    rows = []
    for name, tensor in _named(obj):
        prov = getattr(tensor, "provenance", None)
        data = tensor.detach()
        stats = data.to(torch.float64) if data.numel() else None
        rows.append({
            "name": name,
            "shape": list(data.shape),
            "dtype": str(data.dtype).removeprefix("torch."),
            "initializer": repr(prov.initializer) if prov and prov.initializer is not None else None,
            "origin": prov.describe() if prov else None,
            "mean": float(stats.mean()) if stats is not None else None,
            "std": float(stats.std(unbiased=False)) if stats is not None else None,
            "min": float(stats.min()) if stats is not None else None,
            "max": float(stats.max()) if stats is not None else None,
            "orth_gap": orthogonality_gap(data),
        })
    return VariableTable(rows)
