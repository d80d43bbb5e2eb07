"""nnU-Net's CUDA training path, also on the CPU: the network compiled, fp16 autocast, a GradScaler.

On a GPU nnU-Net compiles the network and its Dice loss with ``torch.compile``, runs the forward
under fp16 autocast and steps through a ``GradScaler``; on the CPU it does none of the three, so a
CPU run never executes the code every GPU user runs. With :data:`CUDA_PATH_VARIABLE` set to 1, our
trainers take the CUDA path on the CPU too, through the same code:

- ``_do_i_compile`` is true (unless ``nnUNet_compile`` says false), so nnU-Net compiles where it
  compiles on CUDA, and we compile the MST-KD teacher where we do on CUDA;
- autocast with ``torch.float16`` (CUDA's autocast type; the CPU's default would be bfloat16, whose
  range hides the overflows that fp16 has);
- ``torch.amp.GradScaler("cpu")``, which scales, unscales, skips steps with non-finite gradients
  and is checkpointed exactly as nnU-Net's CUDA scaler.

:data:`COMPILE_BACKEND_VARIABLE` picks the ``torch.compile`` backend everywhere a trainer compiles,
on the CPU or a GPU: ``aot_eager`` captures the same graphs as inductor (forward and backward,
with the same guards and recompilations) without generating code, which makes the path testable
in seconds rather than minutes. Unset: inductor, nnU-Net's default. docs/training.md, "The CUDA
path on the CPU".
"""

from __future__ import annotations

import os

import torch

CUDA_PATH_VARIABLE = "nnUNet_missingmod_cuda_path"
COMPILE_BACKEND_VARIABLE = "nnUNet_missingmod_compile_backend"
DEFAULT_BACKEND = "inductor"
AUTOCAST_DTYPE = torch.float16  # what CUDA's autocast uses, and nnU-Net with it


def flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "f", "false", "no"):
        return False
    if value in ("1", "t", "true", "yes"):
        return True
    raise ValueError(f"environment variable {name} must be 1 or 0 (true or false), got {os.environ[name]!r}")


def emulated(device: torch.device) -> bool:
    """Whether a trainer on ``device`` takes nnU-Net's CUDA path without CUDA."""
    return device.type == "cpu" and flag(CUDA_PATH_VARIABLE)


def compile_requested() -> bool:
    """nnU-Net's rule on CUDA: compile unless ``nnUNet_compile`` is set to something not true."""
    value = os.environ.get("nnUNet_compile")
    return value is None or value.lower() in ("true", "1", "t")


def compile_backend() -> str:
    """The ``torch.compile`` backend of every compiled module of a trainer."""
    backend = os.environ.get(COMPILE_BACKEND_VARIABLE, "").strip() or DEFAULT_BACKEND
    if backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise ValueError(f"environment variable {COMPILE_BACKEND_VARIABLE}={backend!r} is not a torch.compile backend; "
                         f"choose one of {', '.join(torch._dynamo.list_backends(exclude_tags=()))}")
    return backend
