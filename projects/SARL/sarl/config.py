"""Config keys of the SARL project: ``add_sarl_config(cfg)`` on a detectron2 ``get_cfg()``.

Sections (each one owned by the module that reads it):
    MODEL.CSPDARKNET   backbone            sarl/modeling/backbone/cspdarknet.py
    MODEL.SARL         relay layer         sarl/modeling/relay.py
    MODEL.YOLOPAFPN    neck                sarl/modeling/neck/pafpn.py
    MODEL.YOLO         shared head/decode  sarl/modeling/meta_arch.py
    MODEL.YOLOX        anchor-free head    sarl/modeling/heads/yolox_head.py
    MODEL.YOLOV5       anchor-based head   sarl/modeling/heads/yolov5_head.py
    MODEL.SAL          scale-adaptive loss sarl/modeling/losses.py
    INPUT.YOLO         mapper/augmentation sarl/data/mapper.py
    SOLVER.YOLO/EMA    schedule, EMA       sarl/engine/
    TEST.AITOD         evaluator           sarl/evaluation/evaluator.py
"""
from detectron2.config import CfgNode as CN

from sarl.ops import PAPER_SAL_BETA


def add_sarl_config(cfg: CN) -> CN:
    """Add every key this project reads to ``cfg`` (in place) and return it."""
    _add_backbone_config(cfg)
    _add_relay_config(cfg)
    _add_neck_config(cfg)
    _add_head_config(cfg)
    _add_loss_config(cfg)
    _add_input_config(cfg)
    _add_solver_config(cfg)
    _add_test_config(cfg)
    return cfg


def _add_backbone_config(cfg: CN) -> None:
    cfg.MODEL.CSPDARKNET = CN()
    # "yolox": Focus stem, CSP stages, SPP on dark5; "yolov5": 6x6 conv stem, C3 stages, SPPF.
    cfg.MODEL.CSPDARKNET.FLAVOR = "yolox"
    # nano/tiny/s/m/l/x multipliers: depth 0.33/0.33/0.33/0.67/1.0/1.33, width .25/.375/.5/.75/1/1.25
    cfg.MODEL.CSPDARKNET.DEPTH_MULTIPLIER = 0.33
    cfg.MODEL.CSPDARKNET.WIDTH_MULTIPLIER = 0.5
    cfg.MODEL.CSPDARKNET.OUT_FEATURES = ["dark3", "dark4", "dark5"]
    # "BN", or "SyncBN" (multi-GPU training): the norm of the whole model, backbone, relay, neck and YOLOX head.
    cfg.MODEL.CSPDARKNET.NORM = "BN"
    cfg.MODEL.CSPDARKNET.DEPTHWISE = False


def _add_relay_config(cfg: CN) -> None:
    cfg.MODEL.SARL = CN()
    cfg.MODEL.SARL.ENABLED = True
    cfg.MODEL.SARL.IN_FEATURES = ["dark3", "dark4", "dark5"]
    cfg.MODEL.SARL.REDUCTION = 16  # channel-MLP reduction ratio
    cfg.MODEL.SARL.SPATIAL_KERNEL_SIZE = 7
    cfg.MODEL.SARL.RELAY_RESIDUAL = True  # add up(g), the relay term, to each level
    cfg.MODEL.SARL.FUSED = True  # use the sarl._C kernels (False: pure-PyTorch reference)


def _add_neck_config(cfg: CN) -> None:
    cfg.MODEL.YOLOPAFPN = CN()
    cfg.MODEL.YOLOPAFPN.IN_FEATURES = ["dark3", "dark4", "dark5"]
    cfg.MODEL.YOLOPAFPN.USE_P2 = False  # add a stride-4 output (needs dark2) for very tiny objects


def _add_head_config(cfg: CN) -> None:
    cfg.MODEL.YOLO = CN()
    cfg.MODEL.YOLO.HEAD_NAME = "YOLOXHead"  # in sarl.modeling.YOLO_HEAD_REGISTRY
    cfg.MODEL.YOLO.NUM_CLASSES = 80
    cfg.MODEL.YOLO.IN_FEATURES = ["p3", "p4", "p5"]
    cfg.MODEL.YOLO.SIZE_DIVISIBILITY = 32
    cfg.MODEL.YOLO.SCORE_THRESH_TEST = 0.001
    cfg.MODEL.YOLO.NMS_THRESH_TEST = 0.65
    cfg.MODEL.YOLO.PRE_NMS_TOPK_TEST = 30000
    cfg.MODEL.YOLO.CLASS_AGNOSTIC_NMS = False
    # Keep every (anchor, class) pair above the threshold (YOLOv5 val's multi_label); False keeps
    # only each anchor's best class (YOLOX's postprocess).
    cfg.MODEL.YOLO.MULTI_LABEL_TEST = True
    # Stop training with a message naming the term when a loss is not finite.
    cfg.MODEL.YOLO.CHECK_FINITE_LOSSES = True
    # Memory layout of the weights and activations: "channels_last" (NHWC; oneDNN runs the convolutions without
    # reordering each input and output: measured about 1.3x faster training steps on CPU), "contiguous" (NCHW), or
    # "auto" (channels_last on CPU, contiguous elsewhere: not measured on GPUs). Same results up to float rounding.
    cfg.MODEL.YOLO.MEMORY_FORMAT = "auto"

    cfg.MODEL.YOLOX = CN()
    cfg.MODEL.YOLOX.HEAD_WIDTH = 256  # times CSPDARKNET.WIDTH_MULTIPLIER
    cfg.MODEL.YOLOX.PRIOR_PROB = 0.01
    cfg.MODEL.YOLOX.CENTER_RADIUS = 1.5  # SimOTA candidate rule, in strides
    cfg.MODEL.YOLOX.SIMOTA_TOPK = 10
    cfg.MODEL.YOLOX.IOU_COST_WEIGHT = 3.0
    cfg.MODEL.YOLOX.ASSIGNER = "sparse"  # "sparse" (dense scenes) or "dense" (reference)
    cfg.MODEL.YOLOX.USE_L1 = False  # switched on by the no-aug hook

    cfg.MODEL.YOLOV5 = CN()
    # Per level (P3, P4, P5; P2 first when USE_P2), 3 (w, h) pairs each, in input pixels.
    cfg.MODEL.YOLOV5.ANCHORS = [
        [[10, 13], [16, 30], [33, 23]],
        [[30, 61], [62, 45], [59, 119]],
        [[116, 90], [156, 198], [373, 326]],
    ]
    # Stride-4 anchors, prepended to ANCHORS when IN_FEATURES has one level more (P2): P3's halved.
    cfg.MODEL.YOLOV5.ANCHORS_P2 = [[5, 6], [8, 14], [15, 11]]
    cfg.MODEL.YOLOV5.ANCHOR_T = 4.0
    cfg.MODEL.YOLOV5.BALANCE = [4.0, 1.0, 0.4]
    # Objectness balance of P2, prepended to BALANCE when P2 is used: P3's 4.0 (see yolov5_head.py).
    cfg.MODEL.YOLOV5.BALANCE_P2 = 4.0
    cfg.MODEL.YOLOV5.BOX_GAIN = 0.05
    cfg.MODEL.YOLOV5.CLS_GAIN = 0.5
    cfg.MODEL.YOLOV5.OBJ_GAIN = 1.0
    # Box loss when MODEL.SAL.ENABLED is False: the official YOLOv5 CIoU loss ("ciou"); any
    # SAL loss type works. With SAL on, MODEL.SAL.LOSS_TYPE is the base loss ("iou2": the paper).
    cfg.MODEL.YOLOV5.BOX_LOSS_TYPE = "ciou"
    # Objectness target: the matched prediction's "iou" or "ciou" with its GT; "auto" (default, YOLOv5's rule):
    # CIoU when the box loss is "ciou", else IoU. A fixed value lets an ablation change the base loss alone.
    cfg.MODEL.YOLOV5.OBJ_TARGET = "auto"
    # Multiply the losses by the images per device, as YOLOv5 does (its lr 0.01 assumes it).
    cfg.MODEL.YOLOV5.LOSS_TIMES_BATCH_SIZE = True
    cfg.MODEL.YOLOV5.AUTOANCHOR = True
    cfg.MODEL.YOLOV5.AUTOANCHOR_BPR_THRESH = 0.98
    cfg.MODEL.YOLOV5.AUTOANCHOR_GENERATIONS = 1000  # genetic evolution steps after k-means


def _add_loss_config(cfg: CN) -> None:
    cfg.MODEL.SAL = CN()
    cfg.MODEL.SAL.ENABLED = True  # False: plain IoU loss (baseline)
    cfg.MODEL.SAL.BETA = PAPER_SAL_BETA  # 2 / ln 2, the paper's best (Table VII)
    cfg.MODEL.SAL.LOSS_TYPE = "iou2"  # 1 - IoU^2 (paper, YOLOX); iou, giou, diou, ciou
    cfg.MODEL.SAL.NORMALIZE = "batch"  # batch | image | fixed | none
    cfg.MODEL.SAL.AREA_RANGE = [0.0, 1024.0]  # for NORMALIZE "fixed"
    cfg.MODEL.SAL.ALPHA = 5.0  # weight of the IoU/SAL term (YOLOX's 5.0)
    # This project's options; the defaults are the paper's. WEIGHT_NORM "mean": each weight divided by the mean
    # weight of its NORMALIZE group (the loss keeps the unweighted scale; only the reweighting remains).
    cfg.MODEL.SAL.WEIGHT_NORM = "none"  # none (paper) | mean
    # True: each GT object counts once in the min-max and the mean, whatever its number of anchors (the paper:
    # every matched anchor counts). Only changes the weights with WEIGHT_NORM "mean".
    cfg.MODEL.SAL.PER_OBJECT = False


def _add_input_config(cfg: CN) -> None:
    cfg.INPUT.YOLO = CN()
    cfg.INPUT.YOLO.ENABLED = True  # use the YOLO mapper (letterbox + augmentation)
    cfg.INPUT.YOLO.IMG_SIZE = 640  # square training/test size (letterbox)
    cfg.INPUT.YOLO.MOSAIC_PROB = 1.0
    cfg.INPUT.YOLO.MOSAIC_SCALE = [0.1, 2.0]
    cfg.INPUT.YOLO.MIXUP_PROB = 1.0
    cfg.INPUT.YOLO.MIXUP_SCALE = [0.5, 1.5]
    cfg.INPUT.YOLO.HSV_PROB = 1.0
    cfg.INPUT.YOLO.HSV_GAIN = [0.015, 0.7, 0.4]
    cfg.INPUT.YOLO.FLIP_PROB = 0.5
    cfg.INPUT.YOLO.DEGREES = 10.0
    cfg.INPUT.YOLO.TRANSLATE = 0.1
    cfg.INPUT.YOLO.SHEAR = 2.0
    # Smallest box side (px) kept after augmentation: 1 px, not YOLOX's 2 (tiny objects).
    cfg.INPUT.YOLO.MIN_BOX_SIZE = 1.0
    # Boxes cut by the image border keep at least this fraction of their (transformed) area, else dropped.
    cfg.INPUT.YOLO.MIN_VISIBLE_FRACTION = 0.1
    # Fill VisDrone ignore regions with grey before augmentation (their objects are unlabelled).
    cfg.INPUT.YOLO.MASK_IGNORE_REGIONS = True
    # Large frames (aerial): train on IMG_SIZE windows cut at native resolution instead of letterboxing the whole
    # frame (which shrinks tiny objects); a window holds a random object with prob CROP_OBJECT_PROB. Images no
    # larger than IMG_SIZE keep the letterbox path. Evaluate such frames with TEST.SLICED.ENABLED.
    cfg.INPUT.YOLO.NATIVE_CROP = False
    cfg.INPUT.YOLO.CROP_OBJECT_PROB = 0.8
    # Seed of the mapper's RNG (mosaic partners, augmentation draws); -1: from torch.initial_seed().
    # Either way each DataLoader worker gets its own deterministic stream.
    cfg.INPUT.YOLO.SEED = -1


def _add_solver_config(cfg: CN) -> None:
    cfg.SOLVER.YOLO = CN()
    cfg.SOLVER.YOLO.ENABLED = True  # YOLO optimizer/schedule (RECIPE below); False: detectron2's defaults
    cfg.SOLVER.YOLO.BASE_LR_PER_IMAGE = 0.01 / 64
    # YOLOX recipe's optimizer: "sgd" (nesterov, YOLOX) or "adamw" (Ultralytics' pick for short runs; betas
    # (SOLVER.MOMENTUM, 0.999), decoupled decay on conv weights); lr = BASE_LR_PER_IMAGE * IMS_PER_BATCH either way.
    cfg.SOLVER.YOLO.OPTIMIZER = "sgd"  # yolox: lr = this x IMS_PER_BATCH (yolov5: SOLVER.BASE_LR)
    # yolox recipe: PyTorch's fused SGD/AdamW kernel (one pass over all parameters; AdamW's step measured about
    # 3x faster on CPU), the same update up to float rounding. False: the per-parameter loop.
    cfg.SOLVER.YOLO.FUSED_OPTIMIZER = True
    cfg.SOLVER.YOLO.WARMUP_EPOCHS = 5
    cfg.SOLVER.YOLO.MIN_LR_RATIO = 0.05  # yolox: the cosine's floor (yolov5: FINAL_LR_RATIO)
    cfg.SOLVER.YOLO.NO_AUG_EPOCHS = 15
    cfg.SOLVER.YOLO.EPOCHS = 300
    # Iterations per epoch; 0 = len(dataset) // IMS_PER_BATCH. EPOCHS * ITERS_PER_EPOCH replaces
    # SOLVER.MAX_ITER (EPOCHS <= 0: SOLVER.MAX_ITER is kept and the epochs follow from it).
    cfg.SOLVER.YOLO.ITERS_PER_EPOCH = 0
    # The one SyncBN switch is MODEL.CSPDARKNET.NORM; a file with the old key gets an error that names it.
    if not cfg.key_is_renamed("SOLVER.YOLO.SYNC_BN"):
        cfg.register_renamed_key("SOLVER.YOLO.SYNC_BN", "MODEL.CSPDARKNET.NORM",
                                 message='set MODEL.CSPDARKNET.NORM: "SyncBN"')
    # Optimizer recipe (sarl/engine): "yolox" = BASE_LR_PER_IMAGE x batch, warmup + cosine, a step per batch;
    # "yolov5" = YOLOv5 v7.0 train.py: lr0 SOLVER.BASE_LR, gradient accumulation to the nominal batch, linear lf.
    cfg.SOLVER.YOLO.RECIPE = "yolox"
    # yolov5: images per optimizer update (nbs): steps every max(round(nbs / IMS_PER_BATCH), 1) iterations.
    cfg.SOLVER.YOLO.NOMINAL_BATCH_SIZE = 64
    # yolov5: the bias lr at iteration 0, falling linearly to lr0 * lf(epoch) over warmup.
    cfg.SOLVER.YOLO.WARMUP_BIAS_LR = 0.1
    # yolov5: the momentum at iteration 0, rising linearly to SOLVER.MOMENTUM over warmup.
    cfg.SOLVER.YOLO.WARMUP_MOMENTUM = 0.8
    # yolov5: lrf, the final lr as a fraction of lr0 (linear lf(epoch) = (1 - epoch/EPOCHS)(1 - lrf) + lrf).
    cfg.SOLVER.YOLO.FINAL_LR_RATIO = 0.01
    # yolov5: warmup lasts max(round(WARMUP_EPOCHS x iterations per epoch), this) iterations.
    cfg.SOLVER.YOLO.MIN_WARMUP_ITERS = 100
    cfg.SOLVER.EMA = CN()
    cfg.SOLVER.EMA.ENABLED = True
    cfg.SOLVER.EMA.DECAY = 0.9998
    cfg.SOLVER.EMA.RAMP = 2000.0  # decay * (1 - exp(-updates / RAMP))
    cfg.SOLVER.AMP.ENABLED = False


def _add_test_config(cfg: CN) -> None:
    cfg.TEST.AITOD = CN()
    cfg.TEST.AITOD.MAX_DETS = [100, 300, 1500]
    # "sarl" (the project's C++ kernel; faster_coco_eval when sarl._C is not built), "faster_coco_eval",
    # "pycocotools": the same arrays from all three.
    cfg.TEST.AITOD.ENGINE = "sarl"
    cfg.TEST.DETECTIONS_PER_IMAGE = 3000
    # Whole images at native resolution: images larger than INPUT.YOLO.IMG_SIZE are tiled, run tile by tile and
    # merged (class-wise NMS) before scoring (sarl.inference.SlicedDetector); smaller ones are letterboxed.
    cfg.TEST.SLICED = CN()
    cfg.TEST.SLICED.ENABLED = False
    cfg.TEST.SLICED.SLICE_SIZE = 0  # 0: INPUT.YOLO.IMG_SIZE
    cfg.TEST.SLICED.OVERLAP = 0.2  # fraction of SLICE_SIZE shared by neighbouring tiles
    cfg.TEST.SLICED.BATCH_SIZE = 4  # tiles per model call
    # Models built for prediction, video and export (sarl.inference.load_inference_model) fold each BatchNorm into
    # the convolution before it (sarl.modeling.fuse): one pass per activation instead of two, same outputs up to
    # float rounding. The trainer's evaluation uses the training model as it is.
    cfg.TEST.FUSE_CONV_BN = True


# ----------------------------------------------------------------------------------------------------------------
# Loading a config file for the tools (train_net, predict, export, demo) and the Python API (sarl.inference)
# ----------------------------------------------------------------------------------------------------------------
class UserError(Exception):
    """An error in the user's input (config, dataset): the tools report it as one line, exit status 2."""


def run_reporting_user_errors(run, *args, user_errors: tuple = (), failures: tuple = ()) -> int:
    """``run(*args)``'s exit status, with the tools' error contract: a :class:`UserError` (or one of
    ``user_errors``) becomes one ``error: ...`` line on stderr and status 2, one of ``failures`` (e.g. a
    subprocess that failed) one line and status 1; ``SARL_DEBUG=1`` re-raises them with their traceback."""
    import os
    import sys

    try:
        return run(*args)
    except (UserError, *user_errors, *failures) as e:
        if os.environ.get("SARL_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1 if isinstance(e, failures) and not isinstance(e, (UserError, *user_errors)) else 2


def load_config(config_file: str, opts=None) -> CN:
    """The frozen config of ``config_file`` (empty: the defaults) with the ``KEY VALUE`` overrides ``opts``.

    yacs' errors become :class:`UserError` naming the key or the file; ``MODEL.DEVICE cuda`` without a GPU
    falls back to the CPU with a warning.
    """
    import logging
    import os

    import torch
    from detectron2.config import get_cfg

    cfg = add_sarl_config(get_cfg())
    if config_file:
        if not os.path.isfile(config_file):
            raise UserError(f"config file {config_file} does not exist")
        try:
            cfg.merge_from_file(config_file)
        except KeyError as e:
            raise UserError(f"{config_file}: {_key_error_text(e)}") from None
    try:
        cfg.merge_from_list(_dataset_names_as_tuples(list(opts or [])))
    except KeyError as e:
        raise UserError(f"command-line override: {_key_error_text(e)}") from None
    except AssertionError as e:  # odd number of KEY VALUE tokens
        raise UserError(f"command-line overrides: {e}") from None
    except ValueError as e:  # wrong type for a key
        raise UserError(f"command-line override: {e}") from None
    if cfg.MODEL.DEVICE == "cuda" and not torch.cuda.is_available():
        logging.getLogger(__name__).warning("MODEL.DEVICE is cuda but no GPU is available: using the CPU")
        cfg.MODEL.DEVICE = "cpu"
    # Dataset names given by path (coco:ANN.json:IMAGE_DIR, yolo:DIR) are registered here, in every process that
    # loads the config; MODEL.YOLO.NUM_CLASSES 0 becomes the class count of the data (sarl.data.catalog).
    from sarl.data.catalog import prepare_config_datasets

    prepare_config_datasets(cfg)
    _check_choices(cfg)
    cfg.freeze()
    return cfg


# Keys that take one of a few words, checked when the config loads (a typo costs one line, not a traceback from
# deep inside the model build).
_CHOICES = {
    "MODEL.YOLO.MEMORY_FORMAT": ("auto", "channels_last", "contiguous"),
    "MODEL.YOLOV5.BOX_LOSS_TYPE": ("iou", "iou2", "giou", "diou", "ciou"),
    "MODEL.YOLOV5.OBJ_TARGET": ("auto", "iou", "ciou"),
    "MODEL.SAL.LOSS_TYPE": ("iou", "iou2", "giou", "diou", "ciou"),
    "MODEL.SAL.NORMALIZE": ("batch", "image", "fixed", "none"),
    "MODEL.SAL.WEIGHT_NORM": ("none", "mean"),
    "SOLVER.YOLO.OPTIMIZER": ("sgd", "adamw"),
    "SOLVER.YOLO.RECIPE": ("yolox", "yolov5"),
}


def _check_choices(cfg: CN) -> None:
    for key, allowed in _CHOICES.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        if node not in allowed:
            raise UserError(f"{key} must be one of {', '.join(allowed)}; got {node!r}")


def _dataset_names_as_tuples(opts: list) -> list:
    """``DATASETS.TRAIN coco:a.json:img`` (one bare name) on the command line means ``('coco:a.json:img',)``."""
    opts = list(opts)
    for i in range(0, len(opts) - 1, 2):
        value = str(opts[i + 1]).strip()
        if opts[i] in ("DATASETS.TRAIN", "DATASETS.TEST") and value and value[0] not in "([\"'":
            opts[i + 1] = repr((value,))
    return opts


def _key_error_text(e: KeyError) -> str:
    text = str(e.args[0]) if e.args else str(e)
    return text if "config key" in text else f"non-existent config key {text}"
