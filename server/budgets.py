"""Compute budgets of `edgekws distill`: how much distillation and training a run may spend.

* ``fast`` (default): fits 10 minutes end to end on the embedded default with 2 CPU cores: a 30-epoch teacher
  (the shipped net when it is the better one), 40 RFAD steps over a pool of 16 narrow random nets (readout chosen
  per dataset on validation), and the target
  net trained on the coreset from the teacher until validation stalls (at most 80 epochs).
* ``standard``: a few times ``fast`` on a CPU server: more RFAD steps, wider and more random nets per step.
* ``best``: what a GPU server runs: the paper's 7 nets per step from a large pool of wide nets, hundreds of steps,
  long patience.

Every figure quoted for a run names its budget; a resumed run may change the budget's step count but not its
kernel (the RFAD checkpoint refuses other settings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["BUDGETS", "Budget", "get_budget", "rfad_settings"]


@dataclass(frozen=True)
class Budget:
    name: str
    description: str
    rfad: dict[str, Any]
    teacher_epochs: int
    student_max_epochs: int
    student_patience: int


BUDGETS: dict[str, Budget] = {
    b.name: b
    for b in (
        Budget("fast", "<= 10 min on 2 CPU cores (embedded default)",
               rfad=dict(steps=40, n_models=4, pool_size=16, width=32, lr=3e-2, label_lr=3e-2, patience=4,
                         eval_every=10, readout="auto"),
               teacher_epochs=30, student_max_epochs=80, student_patience=12),
        Budget("standard", "a CPU server: wider kernel, more steps",
               rfad=dict(steps=200, n_models=8, pool_size=32, width=64, lr=3e-2, label_lr=3e-2, patience=6,
                         eval_every=10, readout="auto"),
               teacher_epochs=40, student_max_epochs=200, student_patience=24),
        Budget("best", "a GPU server: the paper's 7 nets per step, wide nets, long patience",
               rfad=dict(steps=1000, n_models=7, pool_size=64, width=128, lr=1e-2, label_lr=1e-2, patience=10,
                         eval_every=20, readout="auto"),
               teacher_epochs=60, student_max_epochs=400, student_patience=40),
    )
}


def get_budget(name: str) -> Budget:
    try:
        return BUDGETS[name]
    except KeyError:
        raise ValueError(f"unknown budget {name!r}; choose one of {', '.join(BUDGETS)}") from None


def rfad_settings(name: str) -> dict[str, Any]:
    """Keyword arguments of :class:`~edgekws.server.rfad.RFADConfig` for a budget (without size and seed)."""
    return dict(get_budget(name).rfad)
