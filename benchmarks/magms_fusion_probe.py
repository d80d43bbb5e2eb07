"""How a trained MAG-MS network's fused output relates to its single-modality outputs.

    python benchmarks/magms_fusion_probe.py -m MODEL_FOLDER -p PREPROCESSED_FOLDER [--cases 6]

MODEL_FOLDER is a MAGMSTrainer* (or any nnU-Net trainer's) output folder with fold_0, and
PREPROCESSED_FOLDER the configuration's preprocessed data (e.g. ``.../nnUNetPlans_2d``). For 2D
models of region datasets (BraTS-like) only. On every other tumour slice of the first cases, the
network is run on all modalities and on each modality alone (the others zeroed, as in
prediction), and inside each region's ground
truth this prints:

- recall (logit > 0) of the all-modality output and of each single modality;
- the mean logits, and how close the all-modality logit is to the mean of the single logits
  (the minimiser of MAG-MS's summed KL term) and to the best single one;
- the gradient on the all-modality logits of nnU-Net's segmentation loss (BCE + batch Dice, per
  case) and of MAG-MS's KL term (fused output against each single output, summed), whose ratio
  says how strongly the self-distillation pulls the fused output (for a network not trained with
  the KL, what the term would do).

It is a diagnostic for docs/results-discussion.md, run on the robustness study's models.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch



def tumour_slices(folder: str, num_cases: int, regions):
    """Per case, every other slice with tumour: images (S, M, H, W) and region masks (S, R, H, W)
    for the dataset's regions (lists of labels, nnU-Net's ``foreground_regions``)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    dataset = infer_dataset_class(folder)(folder)
    for key in sorted(dataset.identifiers)[:num_cases]:
        data, seg, *_ = dataset.load_case(key)
        data, seg = torch.from_numpy(np.asarray(data)).float(), np.asarray(seg)[0]
        keep = [z for z in range(data.shape[1]) if (seg[z] > 0).sum() > 20][::2]
        masks = np.stack([np.isin(seg[keep], labels) for labels in regions], 1)
        yield data[:, keep].permute(1, 0, 2, 3), torch.from_numpy(masks).float()


def padded(network, x: torch.Tensor, divisor: tuple[int, int]) -> torch.Tensor:
    """The network's logits for x, run on x padded to a multiple of the network's downsampling."""
    h, w = x.shape[-2:]
    x = torch.nn.functional.pad(x, (0, -w % divisor[1], 0, -h % divisor[0]))
    return network(x)[..., :h, :w]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("-p", "--preprocessed", required=True)
    parser.add_argument("--cases", type=int, default=6)
    args = parser.parse_args()

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunet_missingmod.inference.metrics import short_region_name
    from nnunet_missingmod.losses.self_distillation import distillation_kl
    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False)
    predictor.initialize_from_trained_model_folder(args.model, (0,), "checkpoint_final.pth")
    network = predictor.network.eval()
    modalities = list(predictor.dataset_json["channel_names"].values())
    labels = predictor.label_manager
    if not labels.has_regions or len(predictor.configuration_manager.patch_size) != 2:
        raise SystemExit(f"{args.model}: the probe needs a 2D model of a region dataset (BraTS-like)")
    regions = [list(np.atleast_1d(r)) for r in labels.foreground_regions]  # the order of the output channels
    names = [short_region_name(n) for n in predictor.dataset_json["labels"] if n != "background"]
    divisor = tuple(int(d) for d in np.prod(predictor.configuration_manager.pool_op_kernel_sizes, axis=0))
    segmentation = DC_and_BCE_loss({}, {"batch_dice": True, "do_bg": True, "smooth": 1e-5, "ddp": False},
                                   use_ignore_label=False, dice_class=MemoryEfficientSoftDiceLoss)

    # per region: the all-modality logits, the single-modality logits (M, n) and the two gradients, inside the region
    inside = {r: {"all": [], "single": [], "g_seg": [], "g_kl": []} for r in range(len(regions))}
    num_slices = 0
    for x, y in tumour_slices(args.preprocessed, args.cases, regions):
        num_slices += len(x)
        with torch.no_grad():
            fused = padded(network, x, divisor)
            single = []
            for m in range(x.shape[1]):
                alone = torch.zeros_like(x)
                alone[:, m] = x[:, m]
                single.append(padded(network, alone, divisor))
        single = torch.stack(single)  # (M, S, R, H, W)
        z0 = fused.clone().requires_grad_()
        g_seg, = torch.autograd.grad(segmentation(z0, y), z0)
        kl = distillation_kl(z0.unsqueeze(0), single, True, channel_dim=2)  # (M, S)
        g_kl, = torch.autograd.grad(kl.sum(0).mean(), z0)
        for r in inside:
            where = y[:, r] > 0
            inside[r]["all"].append(fused[:, r][where])
            inside[r]["single"].append(single[:, :, r][:, where])
            inside[r]["g_seg"].append(g_seg[:, r][where])
            inside[r]["g_kl"].append(g_kl[:, r][where])

    print(f"{args.model}: {num_slices} slices from {args.cases} cases")
    for r, name in enumerate(names):
        z0, zm = torch.cat(inside[r]["all"]), torch.cat(inside[r]["single"], 1)
        recall = " ".join(f"{m} {(zm[i] > 0).float().mean():.2f}" for i, m in enumerate(modalities))
        logits = " ".join(f"{m} {zm[i].mean():+.2f}" for i, m in enumerate(modalities))
        print(f"{name}: recall: all {(z0 > 0).float().mean():.2f}, alone: {recall}")
        print(f"{name}: mean logit: all {z0.mean():+.2f}, alone: {logits}; mean of the single logits "
              f"{zm.mean(0).mean():+.2f}; |all - mean of singles| {(z0 - zm.mean(0)).abs().mean():.2f}, "
              f"|all - best single| {(z0 - zm.max(0).values).abs().mean():.2f}")
        gs, gk = torch.cat(inside[r]["g_seg"]).mean(), torch.cat(inside[r]["g_kl"]).mean()
        print(f"{name}: gradient on the all-modality logit inside the region: segmentation {gs:+.2e}, KL to the "
              f"single outputs {gk:+.2e} (KL / segmentation {gk / gs:+.2f}; negative: the KL pulls the other way)")


if __name__ == "__main__":
    main()
