"""``YOLODetector``: the Detectron2 meta-architecture of the one-stage YOLO detectors.

    image -> (x - PIXEL_MEAN) / PIXEL_STD -> pad to SIZE_DIVISIBILITY -> backbone chain
          -> head (cfg.MODEL.YOLO.HEAD_NAME) -> training: head.losses   inference: decode, NMS

Inputs follow Detectron2's format (a list of dicts, one per image):
    "image": uint8/float [3, H, W] BGR, letterboxed by the mapper;
    "instances" (training): ``gt_boxes`` XYXY in that image's pixels, ``gt_classes``;
    "height"/"width" (optional): the original image size the results are reported in;
    "letterbox" (optional): ``(scale, pad_x, pad_y)`` with ``x_input = x_orig * scale + pad_x``.
Outputs at inference: ``[{"instances": Instances(pred_boxes, scores, pred_classes)}]`` in the
original image's pixels, at most ``TEST.DETECTIONS_PER_IMAGE`` per image.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor
from torchvision.ops import batched_nms

from sarl.data.transforms import PAD_VALUE

from .heads import build_yolo_head
from .losses import current_iteration

__all__ = ["YOLODetector", "check_losses_finite", "resolve_memory_format"]

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def resolve_memory_format(name: str, device: str) -> torch.memory_format:
    """``MODEL.YOLO.MEMORY_FORMAT`` for a model on ``device`` (``MODEL.DEVICE``): "auto" is channels-last on CPU
    (oneDNN convolutions then skip the NCHW <-> blocked reorders of every input and output), contiguous on other
    devices (not measured there)."""
    if name not in MEMORY_FORMATS:
        raise ValueError(f"MODEL.YOLO.MEMORY_FORMAT must be one of {MEMORY_FORMATS}, got {name!r}")
    if name == "auto":
        name = "channels_last" if torch.device(device).type == "cpu" else "contiguous"
    return torch.channels_last if name == "channels_last" else torch.contiguous_format


def check_losses_finite(losses: Dict[str, Tensor]) -> None:
    """Raise ``FloatingPointError`` naming the first non-finite loss term and the iteration.

    A NaN/inf loss would otherwise be stepped into the weights and silently ruin the model.
    """
    bad = {name: value for name, value in losses.items() if not torch.isfinite(value).all()}
    if not bad:
        return
    iteration = current_iteration()
    where = f"at iteration {iteration}" if iteration is not None else "(outside a training loop)"
    details = ", ".join(f"{name}={value.detach().float().cpu().tolist()}" for name, value in bad.items())
    all_terms = ", ".join(f"{n}={v.detach().float().cpu().tolist()}" for n, v in losses.items())
    raise FloatingPointError(f"Loss term {next(iter(bad))} is not finite {where}: {details} "
                             f"(all terms: {all_terms}). Lower the learning rate, check the data "
                             f"(degenerate boxes?) or enable gradient clipping.")


@META_ARCH_REGISTRY.register()
class YOLODetector(nn.Module):
    """One-stage YOLO detector (YOLOX or YOLOv5 head) over a Detectron2 backbone chain."""

    @configurable
    def __init__(self, *, backbone: Backbone, head: nn.Module, head_in_features: Sequence[str],
                 pixel_mean: Sequence[float], pixel_std: Sequence[float], size_divisibility: int = 32,
                 score_thresh: float = 0.001, nms_thresh: float = 0.65, pre_nms_topk: int = 30000,
                 max_detections_per_image: int = 3000, class_agnostic_nms: bool = False,
                 multi_label: bool = True, check_finite_losses: bool = True,
                 memory_format: torch.memory_format = torch.contiguous_format):
        """``memory_format``: layout of the 4-d weights and of the input batch (``torch.channels_last`` or
        ``torch.contiguous_format``); the other arguments are the ``MODEL.YOLO`` / ``TEST`` settings."""
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.head_in_features = list(head_in_features)
        self.size_divisibility = max(int(size_divisibility), int(getattr(backbone, "size_divisibility", 0) or 0))
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.pre_nms_topk = pre_nms_topk
        self.max_detections_per_image = max_detections_per_image
        self.class_agnostic_nms = class_agnostic_nms
        self.multi_label = multi_label
        self.check_finite_losses = check_finite_losses
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        if self.pixel_mean.shape != self.pixel_std.shape:
            raise ValueError(f"MODEL.PIXEL_MEAN {pixel_mean} and MODEL.PIXEL_STD {pixel_std} differ in length")
        if (self.pixel_std <= 0).any():
            raise ValueError(f"MODEL.PIXEL_STD must be positive, got {pixel_std}")
        if memory_format not in (torch.channels_last, torch.contiguous_format):
            raise ValueError(f"memory_format must be torch.channels_last or torch.contiguous_format, got {memory_format}")
        self.memory_format = memory_format
        # Conv weights in the layout the activations will have; `Module.to(device)` and `load_state_dict` (copy_)
        # keep it, so checkpoints load unchanged in either layout.
        self.to(memory_format=memory_format)

    @classmethod
    def from_config(cls, cfg) -> dict:
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        return {
            "backbone": backbone,
            "head": build_yolo_head(cfg, shapes),
            "head_in_features": cfg.MODEL.YOLO.IN_FEATURES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": cfg.MODEL.YOLO.SIZE_DIVISIBILITY,
            "score_thresh": cfg.MODEL.YOLO.SCORE_THRESH_TEST,
            "nms_thresh": cfg.MODEL.YOLO.NMS_THRESH_TEST,
            "pre_nms_topk": cfg.MODEL.YOLO.PRE_NMS_TOPK_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "class_agnostic_nms": cfg.MODEL.YOLO.CLASS_AGNOSTIC_NMS,
            "multi_label": cfg.MODEL.YOLO.MULTI_LABEL_TEST,
            "check_finite_losses": cfg.MODEL.YOLO.CHECK_FINITE_LOSSES,
            "memory_format": resolve_memory_format(cfg.MODEL.YOLO.MEMORY_FORMAT, cfg.MODEL.DEVICE),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Pad the images of the batch (right/bottom only, so box coordinates are unchanged) with the grey of the
        training letterbox (``PAD_VALUE``), then normalise. Padding with zeros after normalising would put black
        bands under non-square inputs (sliced tiles of wide frames), which the model never saw in training and
        answers with false detections along the band."""
        images = []
        for i, x in enumerate(batched_inputs):
            image = x["image"]
            if image.dim() != 3 or image.shape[0] != self.pixel_mean.shape[0]:
                raise ValueError(f"batched_inputs[{i}]['image'] must be [{self.pixel_mean.shape[0]}, H, W], "
                                 f"got {tuple(image.shape)}")
            images.append(image.to(self.device, non_blocking=True).float())
        padded = ImageList.from_tensors(images, self.size_divisibility, pad_value=float(PAD_VALUE))
        normalized = ((padded.tensor - self.pixel_mean) / self.pixel_std).contiguous(memory_format=self.memory_format)
        return ImageList(normalized, padded.image_sizes)

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        outputs = self.head([features[f] for f in self.head_in_features])
        if self.training:
            if not all("instances" in x for x in batched_inputs):
                raise ValueError("training needs 'instances' in every input dict (the mapper's gt_boxes/gt_classes)")
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            losses = self.head.losses(outputs, gt_instances)
            if self.check_finite_losses:
                check_losses_finite(losses)
            return losses
        return self.postprocess(self.inference(outputs, images.image_sizes), batched_inputs, images.image_sizes)

    @torch.no_grad()
    def inference(self, outputs, image_sizes: List[Tuple[int, int]]) -> List[Instances]:
        """Decode, threshold, top-k and NMS per image; boxes in (unpadded) input pixels."""
        boxes_all, scores_all = self.head.decode(outputs)
        return [self.select_detections(boxes_all[i].float(), scores_all[i].float(), image_sizes[i])
                for i in range(len(image_sizes))]

    def select_detections(self, boxes: Tensor, scores: Tensor, image_size: Tuple[int, int]) -> Instances:
        """boxes [A, 4], scores [A, K] -> Instances with at most ``max_detections_per_image``."""
        if self.multi_label:
            keep = scores > self.score_thresh  # every (anchor, class) pair above the threshold
            anchor_ids, classes = keep.nonzero(as_tuple=True)
            kept_scores = scores[anchor_ids, classes]
        else:
            kept_scores, classes = scores.max(dim=1)
            anchor_ids = (kept_scores > self.score_thresh).nonzero().squeeze(1)
            kept_scores, classes = kept_scores[anchor_ids], classes[anchor_ids]
        if kept_scores.numel() > self.pre_nms_topk:
            kept_scores, order = kept_scores.topk(self.pre_nms_topk)
            anchor_ids, classes = anchor_ids[order], classes[order]
        kept_boxes = boxes[anchor_ids]
        # Non-finite boxes (a diverged model) would poison NMS: drop them, never return them.
        finite = torch.isfinite(kept_boxes).all(dim=1) & torch.isfinite(kept_scores)
        kept_boxes, kept_scores, classes = kept_boxes[finite], kept_scores[finite], classes[finite]
        nms_groups = torch.zeros_like(classes) if self.class_agnostic_nms else classes
        keep = batched_nms(kept_boxes, kept_scores, nms_groups, self.nms_thresh)[: self.max_detections_per_image]
        result = Instances(image_size)
        result.pred_boxes = Boxes(kept_boxes[keep])
        result.scores = kept_scores[keep]
        result.pred_classes = classes[keep]
        return result

    @staticmethod
    def postprocess(results: List[Instances], batched_inputs: List[Dict],
                    image_sizes: List[Tuple[int, int]]) -> List[Dict[str, Instances]]:
        """Back to the original image: undo the letterbox when given, then rescale/clip to
        ``height``/``width`` with Detectron2's ``detector_postprocess``."""
        processed = []
        for result, inputs, image_size in zip(results, batched_inputs, image_sizes):
            height = inputs.get("height", image_size[0])
            width = inputs.get("width", image_size[1])
            if "letterbox" in inputs:
                scale, pad_x, pad_y = (float(v) for v in inputs["letterbox"])
                if scale <= 0:
                    raise ValueError(f"letterbox scale must be positive, got {inputs['letterbox']}")
                boxes = result.pred_boxes.tensor
                offset = boxes.new_tensor([pad_x, pad_y, pad_x, pad_y])
                unboxed = Instances((int(height), int(width)))
                unboxed.pred_boxes = Boxes((boxes - offset) / scale)
                unboxed.scores = result.scores
                unboxed.pred_classes = result.pred_classes
                result = unboxed
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed
