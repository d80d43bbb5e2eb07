"""Which loss term drives training: per epoch, each term's value, its share of the step on the
deployed network, and how often the gradient clip engaged.

A method's loss is a sum of weighted terms; whether a term helps or dominates shows in its
gradient, not its value. Once per epoch (while the time spent stays under ``budget`` of the time
spent training, 2 % by default) one step is *sampled*: after the step's backward pass, each term's
own gradient on the deployed network ``g_i`` is computed from the retained graph, and reported as

- its norm ``|g_i|``, and
- its share of the step ``<g_i, g> / |g|²`` where ``g = Σ g_i`` is the step's gradient (before
  clipping). Shares add up to 1; a negative share is a term that pulls against the step.

Under DDP ``g`` is the gradient averaged over the ranks and ``g_i`` this rank's, so shares are
approximate. Every step also reports the norm of each clipped parameter group before clipping;
the epoch's record keeps the fraction of steps in which the clip engaged.

The history is written to the training log each epoch, plotted beside nnU-Net's progress.png
(``loss_terms.png``) and saved in the checkpoint, so ``--c`` continues it.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable, Iterable, Optional

import numpy as np
import torch

GRADIENT_NORM_PREFIX = "gradient_norm/"
CLIPPED_PREFIX = "clipped/"


class LossTermMonitor:
    def __init__(self, budget: float = 0.02):
        self.budget = budget
        self.history: list[dict] = []
        self.sample_due = False  # set at the start of an epoch, consumed by the step that samples
        self._sampled: Optional[dict] = None
        self._training_s = 0.0
        self._sampling_s = 0.0

    # --- when to sample ------------------------------------------------------------------------

    def start_epoch(self) -> bool:
        """Whether this epoch's first step is sampled: always the first time, then while the time
        spent sampling is within ``budget`` of the time spent in training steps."""
        self.sample_due = self._sampling_s <= self.budget * self._training_s
        self._sampled = None
        return self.sample_due

    def add_training_time(self, seconds: float) -> None:
        self._training_s += seconds

    # --- the sampled step ----------------------------------------------------------------------

    def sample(self, terms: dict[str, torch.Tensor], parameters: Iterable[torch.nn.Parameter],
               scale: float = 1.0, recompute: Optional[Callable[[], dict[str, torch.Tensor]]] = None) -> Optional[dict]:
        """Each term's gradient norm and share on ``parameters``, whose ``.grad`` holds the step's
        (unscaled) gradient. ``terms`` must still have their graph; ``scale`` multiplies each term
        before differentiation (a GradScaler's scale, so fp16 gradients do not underflow).

        ``recompute``: the step's terms from a fresh forward. A compiled network's backward may run
        only once per forward (AOTAutograd donates the forward's buffers to it, and refuses
        ``retain_graph``), so each term is then differentiated on a forward of its own: the same
        values at the cost of one more forward and backward per term, on sampled steps only."""
        start = time.perf_counter()
        parameters = [p for p in parameters if p.requires_grad and p.grad is not None]
        if not parameters:
            self.sample_due = False
            return None
        total = [p.grad.detach().float() for p in parameters]
        zero = total[0].new_zeros(())
        sums = {"": torch.stack([sum((g.square().sum() for g in total), zero), zero])}
        for name, term in terms.items():
            if len(terms) == 1:  # the step's gradient is the term's: nothing to differentiate again
                sums[name] = torch.stack([sums[""][0], sums[""][0]])
                continue
            if not term.requires_grad:
                sums[name] = torch.stack([zero, zero])
                continue
            if recompute is None:
                grads = torch.autograd.grad(term * scale, parameters, retain_graph=True, allow_unused=True)
            else:
                grads = torch.autograd.grad(recompute()[name] * scale, parameters, allow_unused=True)
            squared, dot = zero, zero
            for g, t in zip(grads, total):
                if g is not None:
                    g = g.float() / scale
                    squared = squared + g.square().sum()
                    dot = dot + (g * t).sum()
            sums[name] = torch.stack([squared, dot])
        values = dict(zip(sums, torch.stack(list(sums.values())).cpu().tolist()))  # one device sync
        total_squared = values.pop("")[0]
        norms = {name: math.sqrt(squared) for name, (squared, _) in values.items()}
        shares = {name: dot / total_squared if total_squared > 0 else float("nan") for name, (_, dot) in values.items()}
        self._sampled = {"gradient_norms": norms, "gradient_shares": shares, "total_norm": math.sqrt(total_squared)}
        self.sample_due = False
        self._sampling_s += time.perf_counter() - start
        return self._sampled

    # --- the epoch's record --------------------------------------------------------------------

    def end_epoch(self, epoch: int, means: dict[str, float], clip: float) -> dict:
        """Turn the epoch means of what the steps returned into the epoch's record."""
        record = {"epoch": epoch,
                  "values": {k: v for k, v in means.items()
                             if not k.startswith((GRADIENT_NORM_PREFIX, CLIPPED_PREFIX))},
                  "mean_gradient_norm": {k[len(GRADIENT_NORM_PREFIX):]: v for k, v in means.items()
                                         if k.startswith(GRADIENT_NORM_PREFIX)},
                  "clipped_fraction": {k[len(CLIPPED_PREFIX):]: v for k, v in means.items()
                                       if k.startswith(CLIPPED_PREFIX)},
                  "clip": clip,
                  "sampling_overhead": self._sampling_s / self._training_s if self._training_s else 0.0}
        if self._sampled is not None:
            record.update(self._sampled)
        self.history.append(record)
        return record

    @staticmethod
    def log_lines(record: dict) -> list[str]:
        lines = ["loss terms (weighted, epoch mean): "
                 + ", ".join(f"{k} {v:.4f}" for k, v in record["values"].items())]
        if "gradient_norms" in record:
            lines.append("gradient on the network per term (one sampled step): " + ", ".join(
                f"{k} |g| {record['gradient_norms'][k]:.3g} share {record['gradient_shares'][k]:+.0%}"
                for k in record["gradient_norms"]) + f"; all terms |g| {record['total_norm']:.3g}")
        lines.append(f"gradient clip at {record['clip']:g}: " + ", ".join(
            f"{k} engaged in {record['clipped_fraction'][k]:.0%} of steps (mean |g| {record['mean_gradient_norm'][k]:.3g})"
            for k in record["clipped_fraction"]))
        return lines

    # --- persistence and the plot --------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"history": self.history, "training_s": self._training_s, "sampling_s": self._sampling_s}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state["history"])
        self._training_s, self._sampling_s = state["training_s"], state["sampling_s"]

    def plot(self, path: str) -> None:
        """Values, gradient shares and clip rates per epoch, written atomically to ``path``."""
        if not self.history:
            return
        import matplotlib
        matplotlib.use("agg")
        import matplotlib.pyplot as plt

        epochs = [r["epoch"] for r in self.history]
        terms = list(dict.fromkeys(k for r in self.history for k in r["values"]))
        groups = list(dict.fromkeys(k for r in self.history for k in r["clipped_fraction"]))
        figure, axes = plt.subplots(3, 1, figsize=(10, 11), sharex=True)
        for name in terms:
            axes[0].plot(epochs, [r["values"].get(name, np.nan) for r in self.history], label=name)
            axes[1].plot(epochs, [r.get("gradient_shares", {}).get(name, np.nan) for r in self.history],
                         marker="o", label=name)
        for name in groups:
            axes[2].plot(epochs, [r["clipped_fraction"].get(name, np.nan) for r in self.history], label=name)
        axes[0].set_ylabel("weighted value (epoch mean)")
        axes[1].set_ylabel("share of the step <g_i, g>/|g|^2")
        axes[1].axhline(0, color="grey", linewidth=0.5)
        axes[2].set_ylabel(f"steps with the clip engaged (|g| > {self.history[-1]['clip']:g})")
        axes[2].set_ylim(-0.05, 1.05)
        axes[2].set_xlabel("epoch")
        for axis in axes:
            axis.legend(fontsize=8, loc="best")
            axis.grid(alpha=0.3)
        figure.tight_layout()
        partial = path + ".partial.png"
        figure.savefig(partial)
        plt.close(figure)
        os.replace(partial, path)
