"""The distillation objective: a weighted sum of named terms declared in the bundle config."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from kd_components.losses.terms import DistillationInputs, DistillationTerm

__all__ = ["LOSS_PREFIX", "DistillationLoss", "loss_key"]

#: ``engine.state.output`` holds the total under ``"loss"`` and the unweighted term ``name`` under ``"loss_<name>"``.
LOSS_PREFIX = "loss"


def loss_key(name: str) -> str:
    """The output and logging key of the term ``name``: ``"loss_<name>"`` (e.g. ``loss_soft``)."""
    return f"{LOSS_PREFIX}_{name}"


class DistillationLoss(nn.Module):
    """
    ``loss = sum_name weight_name * term_name(inputs)`` over the active terms, an open set of
    :class:`~kd_components.losses.DistillationTerm` modules named in the config.

    A term that needs labels (the task term) is skipped for a batch without labels: unlabelled batches
    learn from the other terms alone. A term with weight 0 (or without its loss, e.g. a feature term
    disabled with ``beta = 0``) is not computed at all, so the task term alone is exactly the supervised
    baseline, and the teacher is not even run (:attr:`needs_teacher`). The terms' parameters (the feature
    adapters) are this module's: give ``loss.parameters()`` to the optimiser with the student's.

    ``forward`` returns a dict: ``"loss"`` (the total, with its graph) and ``"loss_<name>"`` for every
    declared term: its unweighted value, detached for logging (0 when not computed). The logging handlers
    (:func:`~kd_components.handlers.loss_components`) take the names from there.

    Example (what the student's ``train.json`` declares)::

        loss = DistillationLoss({
            "task": TaskTerm(DiceCELoss(sigmoid=True)),
            "soft": SoftTargetTerm(SoftTargetKDLoss(4.0), weight=1.0),
            "feature": FeatureTerm(build_feature_kd_loss(student, teacher, pairs), weight=0.1),
        })
        out = loss(DistillationInputs(student_logits, teacher_logits, label, ...))
        out["loss"].backward()

    Args:
        terms: term name -> term module; a ``None`` module is a declared but inactive term. Names are
            identifiers (letters, digits, ``_``).

    Raises:
        ValueError: for no terms, a name that is not an identifier, or a module that is not a DistillationTerm.
    """

    def __init__(self, terms: Mapping[str, DistillationTerm | None]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("DistillationLoss needs at least one term")
        for name, term in terms.items():
            if not (isinstance(name, str) and name.isidentifier()):
                raise ValueError(f"loss term names must be identifiers, got {name!r}")
            if term is not None and not isinstance(term, DistillationTerm):
                raise ValueError(f"loss term {name!r} must be a DistillationTerm, got {type(term).__name__}")
        self.names: list[str] = list(terms)
        self.terms = nn.ModuleDict({name: term for name, term in terms.items() if term is not None})

    def active_terms(self) -> dict[str, DistillationTerm]:
        """The terms that are computed, by name."""
        return {name: term for name, term in self.terms.items() if term.active}

    @property
    def needs_teacher(self) -> bool:
        """Whether an active term needs the teacher's logits or features."""
        return any(t.needs_teacher or t.teacher_paths for t in self.active_terms().values())

    @property
    def needs_mask(self) -> bool:
        """Whether an active term uses the brain mask."""
        return any(t.needs_mask for t in self.active_terms().values())

    @property
    def student_paths(self) -> list[str]:
        """The student module paths that active terms tap (each once, in order)."""
        return list(dict.fromkeys(p for t in self.active_terms().values() for p in t.student_paths))

    @property
    def teacher_paths(self) -> list[str]:
        """The teacher module paths that active terms tap (each once, in order)."""
        return list(dict.fromkeys(p for t in self.active_terms().values() for p in t.teacher_paths))

    @property
    def output_keys(self) -> list[str]:
        """``["loss", "loss_<name>", ...]``: the keys :meth:`forward` returns."""
        return [LOSS_PREFIX, *(loss_key(n) for n in self.names)]

    def check_networks(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Let every active term check the networks before training (see ``DistillationTerm.check_networks``)."""
        for term in self.active_terms().values():
            term.check_networks(student, teacher)

    def forward(self, inputs: DistillationInputs) -> dict[str, torch.Tensor]:
        """
        Args:
            inputs: the step's logits, labels, mask and tapped features.

        Returns:
            ``{"loss": total, "loss_<name>": unweighted value, ...}`` (the terms detached scalars).

        Raises:
            ValueError: when no active term applies to the batch (no label and no distillation term).
        """
        zero = torch.zeros((), device=inputs.student_logits.device)
        values = {loss_key(name): zero for name in self.names}
        total: torch.Tensor | None = None
        for name, term in self.active_terms().items():
            if term.needs_label and inputs.label is None:
                continue
            value = term(inputs)
            values[loss_key(name)] = value.detach()
            weight = term.weight_at(inputs.iteration)
            total = weight * value if total is None else total + weight * value
        if total is None:
            raise ValueError(
                "DistillationLoss: no active term applies to this batch (no label, and no distillation term "
                f"with a non-zero weight among {self.names}): it has nothing to learn from"
            )
        return {LOSS_PREFIX: total, **values}
