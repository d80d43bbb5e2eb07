"""Floating-point operations of each trainer's networks in one training step at any plan, counted
on the meta device (shapes only: no memory, no time), so that the BraTS plan can be counted on a
laptop.

Per trainer, the forward and backward passes its step makes (as ``torch.utils.flop_counter``
counts convolutions, matrix products and attention): ModalityDropoutTrainer and DedicatedTrainer
one U-Net; MSTKDTrainer the student and the joint teacher, forward and backward, the frozen
variant the student's and the teacher's forward; SMMLTrainer both branches; MAG-MS the four
encoders and the shared decoder on the fused and every single (or one sampled) path. The loss
terms and the MST-KD discriminator (under 0.1 % here) are not counted.

    python benchmarks/flops_at_plan.py PLANS.json [--configuration 3d_fullres]
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

TRAINERS = ["ModalityDropoutTrainer", "DedicatedTrainer__T1ce_FLAIR", "MSTKDTrainer", "MSTKDFrozenTeacherTrainer",
            "SMMLTrainer", "MAGMSTrainer", "MAGMSTrainerSampledPath"]


def _outputs(value) -> list[torch.Tensor]:
    """Every tensor a training forward returns (logits at every scale, features), to differentiate."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _outputs(v)]
    return []


def step_flops(trainer_name: str, plans: dict, configuration: str, num_channels: int, num_outputs: int) -> int:
    import nnunet_missingmod.training as trainers
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    settings = manager.get_configuration(configuration)
    cls = getattr(trainers, trainer_name)
    build = lambda: cls.build_network_architecture(manager, settings, num_channels, num_outputs, True).to("meta")  # noqa: E731
    network = build().train()
    x = torch.randn(settings.batch_size, num_channels, *settings.patch_size, device="meta")
    with FlopCounterMode(display=False) as counter:
        if trainer_name.startswith("MSTKD"):
            outputs = _outputs(network(x, return_features=True))
            teacher = build()
            if trainer_name == "MSTKDFrozenTeacherTrainer":
                with torch.no_grad():
                    teacher.eval()(x, return_features=True)
            else:
                outputs += _outputs(teacher(x, return_features=True))
        elif trainer_name.startswith("SMML"):
            outputs = _outputs(network(x, x))
        elif trainer_name == "MAGMSTrainerSampledPath":
            outputs = _outputs(network(x, single_paths=torch.zeros(x.shape[0], dtype=torch.long, device="meta")))
        else:
            outputs = _outputs(network(x))
        sum(o.float().sum() for o in outputs if o.requires_grad).backward()
    return int(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plans", help="an nnU-Net plans file (nnUNet_preprocessed/<dataset>/nnUNetPlans.json)")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--outputs", type=int, default=3, help="segmentation heads (3 regions for BraTS)")
    parser.add_argument("--trainers", nargs="+", default=TRAINERS)
    args = parser.parse_args()
    with open(args.plans) as f:
        plans = json.load(f)
    counts = {name: step_flops(name, plans, args.configuration, args.channels, args.outputs) for name in args.trainers}
    base = counts.get("ModalityDropoutTrainer")
    print("| trainer | TFLOP per step | vs ModalityDropoutTrainer |\n|---|---:|---:|")
    for name, flops in counts.items():
        print(f"| {name} | {flops / 1e12:.2f} | {flops / base:.2f} |" if base else f"| {name} | {flops / 1e12:.2f} | |")


if __name__ == "__main__":
    main()
