"""Save and restore variables by name, whole or in part: how a pretrained encoder is reused.

``save`` writes a model's variables as a TensorFlow checkpoint or rnnkit's native file;
``restore`` reads either (and any TF1/TF2 checkpoint) into a model, choosing names with
``include``/``exclude``, mapping them with ``rename``, freezing with ``freeze``, and returns a
``RestoreReport`` of what matched and what did not.

Names are TF variable names without ``:0``: an rnnkit ``Variable`` is named by its scope path
(``encoder/rnn/gru_cell/gates/kernel``), any other parameter or buffer of a ``torch.nn.Module``
by its ``state_dict`` key. TF2 checkpoint keys lose their ``/.ATTRIBUTES/VARIABLE_VALUE`` suffix.

Patterns (``include``, ``exclude``, ``freeze``): a str is a glob (``*`` crosses ``/``) that also
matches everything under a scope of that name (``"encoder"`` matches ``encoder/...``); a
compiled ``re.Pattern`` or a str starting with ``re:`` is a regular expression searched in the
name.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from rnnkit.io import native, tf_checkpoint
from rnnkit.scope import Provenance, Variable, global_variables

__all__ = ["save", "restore", "RestoreReport", "Mismatch", "named_variables"]

Patterns = str | re.Pattern | Iterable[str | re.Pattern] | None


def named_variables(variables_or_module=None, argname: str = "variables_or_module"
                    ) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` for what ``save``/``restore`` accept (see the module docstring).

    Args:
        variables_or_module: None (every variable of the default graph), a ``torch.nn.Module``,
            an iterable of rnnkit ``Variable``s, or a dict ``{name: tensor}``.

    Raises:
        TypeError: anything else, or a list holding something other than a ``Variable``.
        ValueError: two different tensors under one name.
    """
    if variables_or_module is None:
        return {v.op_name: v for v in global_variables()}
    if isinstance(variables_or_module, torch.nn.Module):
        out: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for key, tensor in variables_or_module.state_dict(keep_vars=True).items():
            if id(tensor) not in seen:
                seen.add(id(tensor))
                _add(out, tensor.op_name if isinstance(tensor, Variable) else key, tensor, argname)
        return out
    if isinstance(variables_or_module, Mapping):
        out = {}
        for key, tensor in variables_or_module.items():
            if not isinstance(key, str) or not torch.is_tensor(tensor):
                raise TypeError(f"{argname}: a dict must map str names to tensors, got "
                                f"{key!r}: {type(tensor).__name__}")
            _add(out, key[:-2] if key.endswith(":0") else key, tensor, argname)
        return out
    if isinstance(variables_or_module, Iterable) and not isinstance(variables_or_module, str):
        out = {}
        for item in variables_or_module:
            if not isinstance(item, Variable):
                raise TypeError(f"{argname}: a list must hold rnnkit Variables, got "
                                f"{type(item).__name__}")
            _add(out, item.op_name, item, argname)
        return out
    raise TypeError(f"{argname} must be None, a torch.nn.Module, a list of Variables or a dict of "
                    f"tensors, got {type(variables_or_module).__name__}")


def _add(out: dict, name: str, tensor: torch.Tensor, argname: str) -> None:
    if name in out and out[name] is not tensor:
        raise ValueError(f"{argname}: two different tensors are both named {name!r}")
    out[name] = tensor


def save(path: str | os.PathLike, variables_or_module=None, format: str = "tf") -> Path:
    """Save variables as a TensorFlow checkpoint (``format="tf"``) or a native file.

    Args:
        path: the checkpoint prefix (``"train/model.ckpt"``) for TF, the file for native.
        variables_or_module: see ``named_variables``; a cell saved natively can be rebuilt by
            ``rnnkit.io.load``.
        format: ``"tf"`` or ``"native"``.

    Returns:
        The prefix or file written. The write is atomic: on failure the old files are intact.

    Raises:
        ValueError: an unknown ``format``.
    """
    if format == "tf":
        tensors = named_variables(variables_or_module)
        return tf_checkpoint.write_tf_checkpoint(path, {k: t.detach() for k, t in tensors.items()})
    if format == "native":
        return native.save_native(path, variables_or_module)
    raise ValueError(f"save: format must be 'tf' or 'native', got {format!r}")


def _matcher(patterns: Patterns, argname: str) -> Callable[[str], bool] | None:
    if patterns is None:
        return None
    if isinstance(patterns, (str, re.Pattern)):
        patterns = [patterns]
    tests: list[Callable[[str], object]] = []
    for p in patterns:
        if isinstance(p, re.Pattern):
            tests.append(p.search)
        elif isinstance(p, str) and p.startswith("re:"):
            tests.append(re.compile(p[3:]).search)
        elif isinstance(p, str):
            glob, scope = re.compile(fnmatch.translate(p)), p.rstrip("/") + "/"
            tests.append(lambda n, glob=glob, scope=scope: glob.match(n) or n.startswith(scope))
        else:
            raise TypeError(f"restore: {argname} must be a str, a re.Pattern or a list of them, "
                            f"got {p!r}")
    return lambda name: any(test(name) for test in tests)


def _renamer(rename: Mapping | None) -> Callable[[str], str]:
    if rename is None:
        return lambda name: name
    if not isinstance(rename, Mapping):
        raise TypeError(f"restore: rename must be a dict of prefix or re.Pattern -> replacement, "
                        f"got {type(rename).__name__}")
    for old, new in rename.items():
        if not isinstance(old, (str, re.Pattern)) or not isinstance(new, str):
            raise TypeError(f"restore: rename entries must be str/re.Pattern -> str, got "
                            f"{old!r}: {new!r}")

    def apply(name: str) -> str:
        for old, new in rename.items():
            if isinstance(old, re.Pattern):
                if old.search(name):
                    return old.sub(new, name)
            elif name.startswith(old):
                return new + name[len(old):]
        return name

    return apply


class Mismatch(NamedTuple):
    """A variable whose checkpoint value cannot be assigned: shapes or dtypes differ."""

    name: str
    checkpoint: str
    model: str


@dataclass
class RestoreReport:
    """What ``restore`` did. Names are model names (after ``rename``).

    Attributes:
        path: the checkpoint read.
        matched: variables assigned from the checkpoint.
        missing: selected variables of the model the checkpoint does not have.
        unexpected: selected checkpoint names the model does not have.
        mismatched: names in both whose shape (or kind of dtype) differs; not assigned.
        renamed: checkpoint name -> model name, for names ``rename`` changed.
        frozen: restored variables set to ``requires_grad=False``.
        skipped: names left out by ``include``/``exclude``.
    """

    path: str
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[Mismatch] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    frozen: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Nothing missing and nothing mismatched (what ``strict=True`` requires)."""
        return not self.missing and not self.mismatched

    def __str__(self) -> str:
        lines = [f"restore from {self.path}: {len(self.matched)} matched, {len(self.missing)} "
                 f"missing, {len(self.unexpected)} unexpected, {len(self.mismatched)} mismatched, "
                 f"{len(self.skipped)} skipped, {len(self.frozen)} frozen"]
        sections = [("matched", self.matched), ("missing", self.missing),
                    ("unexpected", self.unexpected),
                    ("mismatched", [f"{m.name}: checkpoint {m.checkpoint}, model {m.model}"
                                    for m in self.mismatched]),
                    ("renamed", [f"{k} -> {v}" for k, v in self.renamed.items()]),
                    ("frozen", self.frozen)]
        for title, items in sections:
            lines += [f"  {title}:"] + [f"    {item}" for item in items] if items else []
        return "\n".join(lines)


def _read(path: str | os.PathLike) -> dict[str, np.ndarray]:
    if native.is_native(path):
        return native.read_native(path)[0]
    suffix = tf_checkpoint.VARIABLE_VALUE_SUFFIX
    return {k[:-len(suffix)] if k.endswith(suffix) else k: v
            for k, v in tf_checkpoint.read_checkpoint(path).items()}


def _describe(shape, dtype) -> str:
    return f"{list(shape)} {str(dtype).replace('torch.', '')}"


def _convert(value: np.ndarray, target: torch.Tensor) -> torch.Tensor | None:
    """``value`` as a tensor like ``target``, or None when the kinds differ (float vs int...)."""
    if value.dtype == object:
        return None
    source = torch.from_numpy(np.array(value, order="C"))
    same_kind = (source.dtype.is_floating_point == target.dtype.is_floating_point
                 and (source.dtype == torch.bool) == (target.dtype == torch.bool))
    return source.to(target.dtype) if same_kind else None


def restore(path: str | os.PathLike, variables_or_module=None, *, include: Patterns = None,
            exclude: Patterns = None, rename: Mapping | None = None,
            freeze: Patterns | bool = None, strict: bool = False) -> RestoreReport:
    """Assign checkpoint values to a model's variables by name.

    Args:
        path: a TF checkpoint (prefix, ``.index`` or folder) or a native file.
        variables_or_module: the variables to fill (see ``named_variables``; None: the default
            graph's).
        include: only names matching one of these patterns take part (model names, after
            ``rename``); default all.
        exclude: names matching one of these are left out.
        rename: ``{old: new}`` applied to checkpoint names, the first rule that applies wins: a
            str key is a prefix (``{"pretrained/": "encoder/"}``), a ``re.Pattern`` key is
            substituted with ``re.sub`` (``\\1`` groups allowed).
        freeze: restored variables matching these patterns (True: all restored) get
            ``requires_grad=False``.
        strict: raise if a selected variable is missing or mismatched (before assigning anything).

    Returns:
        A ``RestoreReport``; ``print`` it for a readable summary.

    Raises:
        FormatError: the checkpoint is missing or corrupt.
        ValueError: ``strict`` and the report is not complete; nothing was assigned.

    Example:
        >>> report = restore("pretrained/", model, include="encoder", freeze="encoder")
        >>> report.missing
        []
    """
    native.as_path(path, "restore")
    targets = named_variables(variables_or_module)
    selected = _matcher(include, "include")
    excluded = _matcher(exclude, "exclude")
    frozen = freeze if isinstance(freeze, bool) else _matcher(freeze, "freeze")
    rename_fn = _renamer(rename)
    report = RestoreReport(str(path))

    def wanted(name: str) -> bool:
        return (selected is None or selected(name)) and not (excluded and excluded(name))

    checkpoint: dict[str, tuple[str, np.ndarray]] = {}
    skipped: set[str] = set()
    for key, value in _read(path).items():
        name = rename_fn(key)
        if name != key:
            report.renamed[key] = name
        if wanted(name):
            checkpoint[name] = (key, value)
        else:
            skipped.add(name)
    assignments: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    for name, target in targets.items():
        if name in checkpoint:
            converted = _convert(checkpoint[name][1], target)
            shape = checkpoint[name][1].shape
            if converted is None or tuple(shape) != tuple(target.shape):
                report.mismatched.append(Mismatch(name, _describe(shape, checkpoint[name][1].dtype),
                                                  _describe(target.shape, target.dtype)))
            else:
                assignments.append((name, target, converted))
        elif wanted(name):
            report.missing.append(name)
        else:
            skipped.add(name)
    report.skipped = sorted(skipped)
    report.unexpected = [n for n in checkpoint if n not in targets]
    if strict and not report.complete:
        raise ValueError(f"restore(strict=True): the checkpoint does not cover the model; nothing "
                         f"was assigned\n{report}")
    with torch.no_grad():
        for name, target, value in assignments:
            target.copy_(value)
            report.matched.append(name)
            if isinstance(target, Variable):
                old = target.provenance
                target.provenance = Provenance(old.initializer if old else None, "restored",
                                               note=f"{checkpoint[name][0]} from {path}")
            if frozen is True or (callable(frozen) and frozen(name)):
                target.requires_grad_(False)
                report.frozen.append(name)
    return report
