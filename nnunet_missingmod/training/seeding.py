"""Seeded, repeatable training: the same seed gives the same checkpoint on the CPU.

nnU-Net does not seed its training: the network's initial weights, the batches its data loader
draws, the augmentation (torch, numpy and Python's ``random`` all appear in batchgeneratorsv2) and
the order in which its augmentation workers deliver batches all differ between runs. With a seed,
set by the environment variable :data:`SEED_VARIABLE` or a trainer's ``seed`` attribute:

- the trainer seeds the three generators of its process before it builds its networks (DDP:
  seed + rank for the process's own draws; nnU-Net broadcasts rank 0's initial weights anyway);
- every batch is generated under its own seed, derived from (seed, rank, start epoch, the batch's
  place in the stream), in whichever process generates it, with the generators' states saved and
  restored around it, so that the main process's own draws do not depend on the batches;
- nnU-Net's non-deterministic multi-worker augmenter (batches in whichever order the workers
  finish) is replaced by batchgenerators' ``MultiThreadedAugmenter``, which takes the workers in
  turn: the same batches in the same order, for any number of workers (``nnUNet_n_proc_DA``),
  one process included.

A run resumed with ``--c`` is seeded too, from the epoch it resumes at: it does not replay the
interrupted run's remaining batches, so it is repeatable but not identical to an uninterrupted run.

On a GPU the draws are the same, but cuDNN's autotuning and atomic additions make the arithmetic
itself vary a little between runs, so checkpoints are close but not identical there.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Optional

import numpy as np
import torch

SEED_VARIABLE = "nnUNet_missingmod_seed"


def seed_from_environment() -> Optional[int]:
    """The seed in :data:`SEED_VARIABLE`, or None when it is unset or empty."""
    value = os.environ.get(SEED_VARIABLE, "").strip()
    if not value:
        return None
    try:
        seed = int(value)
    except ValueError:
        raise ValueError(f"environment variable {SEED_VARIABLE} must be a non-negative integer, got {value!r}") from None
    if seed < 0:
        raise ValueError(f"environment variable {SEED_VARIABLE} must be a non-negative integer, got {seed}")
    return seed


def derived_seed(seed: int, *stream: int) -> int:
    """A 32-bit seed for one stream of draws (a rank, a worker, a batch), independent of the others."""
    return int(np.random.SeedSequence([seed, *stream]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Python's ``random``, numpy's global generator and torch's (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int):
    """Run a block with every global generator seeded, then put their previous states back."""
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    seed_everything(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
