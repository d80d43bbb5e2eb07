"""Which loss term drives the training step of a trained model: each term's value, the norm of its
gradient on the deployed network and its share of the step, averaged over training batches.

    python benchmarks/loss_term_shares.py -m MODEL_FOLDER [-f 0] [--checkpoint checkpoint_final.pth]
        [--batches 6] [--set kl_standardize=False ...] [--device cpu]

The training log reports the same for one sampled step per epoch (docs/training.md); this probe
repeats it at a checkpoint, on as many batches as asked, and, with ``--set``, for a variant of the
trainer's loss (class attributes, e.g. a term switched back to an earlier formula) on the same
weights. Share of term i: <g_i, g> / |g|² with g the sum over the terms' gradients (shares add up
to 1; negative: the term pulls against the step).

Run it with the environment the model was trained with (nnU-Net's folders and any
``nnUNet_missingmod_num_epochs``: ramped weights depend on the epoch and the number of epochs).
"""

from __future__ import annotations

import argparse
import ast
import os
import tempfile

import numpy as np


def build_trainer(model: str, fold: int, checkpoint_name: str, overrides: dict, device: str):
    import torch

    import nnunet_missingmod.trainer_registration as registration
    from nnunet_missingmod.training.mstkd_teacher import find_trainer_class
    registration.register()
    path = os.path.join(model, f"fold_{fold}", checkpoint_name)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    trainer_class = find_trainer_class(checkpoint["trainer_name"])
    for name in overrides:
        if not hasattr(trainer_class, name):
            raise SystemExit(f"--set {name}: {trainer_class.__name__} has no attribute {name!r}")
    if overrides:
        trainer_class = type(f"{trainer_class.__name__}Probe", (trainer_class,), dict(overrides))
    init = checkpoint["init_args"]
    plans = dict(init["plans"], continue_training=False)
    trainer = trainer_class(plans, init["configuration"], init["fold"], init["dataset_json"], torch.device(device))
    trainer.output_folder = tempfile.mkdtemp(prefix="loss_term_shares_")  # its log, not in the model folder
    trainer.log_file = os.path.join(trainer.output_folder, "log.txt")
    trainer.load_checkpoint(path)
    return trainer


def measure(trainer, batches: int) -> dict:
    """Per term: mean value, gradient norm and share over ``batches`` training batches."""
    import torch
    os.environ["nnUNet_n_proc_DA"] = "0"
    loader, _ = trainer.get_dataloaders()
    trainer.network.train()
    for aux in trainer.auxiliaries.values():
        if aux.trainable:
            aux.module.train()
    records = []
    for _ in range(batches):
        batch = trainer.batch_to_device(next(loader))
        for optimizer in trainer.optimizers():
            optimizer.zero_grad(set_to_none=True)
        with trainer.autocast():
            terms = trainer.loss_terms(batch)
        sum(terms.values()).backward(retain_graph=True)
        sampled = trainer.loss_monitor.sample(terms, trainer.network.parameters())
        records.append({name: (float(value.detach()), sampled["gradient_norms"][name],
                               sampled["gradient_shares"][name]) for name, value in terms.items()})
        del terms
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {name: tuple(np.mean([r[name][i] for r in records]) for i in range(3)) for name in records[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", required=True, help="trained model folder (Trainer__Plans__configuration)")
    parser.add_argument("-f", "--fold", type=int, default=0)
    parser.add_argument("--checkpoint", default="checkpoint_final.pth")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="trainer class attributes to change for the probe (Python literals)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        try:
            overrides[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parser.error(f"--set {item}: the value must be a Python literal")
    import torch
    torch.manual_seed(0)
    np.random.seed(0)
    trainer = build_trainer(os.path.abspath(args.model), args.fold, args.checkpoint, overrides, args.device)
    result = measure(trainer, args.batches)
    print(f"\n{type(trainer).__name__} at epoch {trainer.current_epoch} of {trainer.num_epochs}"
          + (f", with {overrides}" if overrides else "") + f"; mean over {args.batches} training batches")
    print(f"{'term':<24}{'value':>10}{'|g| on network':>16}{'share':>8}")
    for name, (value, norm, share) in result.items():
        print(f"{name:<24}{value:>10.4f}{norm:>16.4g}{share:>+8.0%}")


if __name__ == "__main__":
    main()
