"""Pieces of ``tools/benchmark_real.py`` (this project vs Ultralytics YOLOv8n on KIT AIS frames).

- the split: validation = the 13 frames MOS155, MOS157, ..., MOS179 (one sequence); training = the other 20
  (MOS74..92 and MunichStreet02-MOS74..92). Consecutive frames overlap, so the split is by sequence;
- the YOLO layout Ultralytics trains on (``images/{train,val}`` as links to the frames, ``labels/{train,val}``
  written from the project's dataset dicts, so both sides learn the same boxes, ``data.yaml``);
- the scratch virtual environment of the peer (Ultralytics is not a project dependency): it reuses the project's
  torch through a ``.pth`` file that adds the project's site-packages after its own, and gets ``ultralytics`` plus
  the light dependencies the project lacks with ``pip install --no-deps`` (nothing installed there can shadow or
  remove a package of the project's environment);
- Ultralytics results -> this project's prediction format (``{"image_id", "boxes" XYXY, "scores", "classes"}``),
  which ``sarl.evaluation.evaluate_detections`` scores.

Run as a script (``python tools/benchmarks/real_peer.py --data ... --result ...``) by the peer environment's
python, it is the peer's worker: trains YOLOv8n from scratch for a wall-clock budget, predicts the validation
frames and writes the raw boxes, its timings and Ultralytics' own metrics to ``--result``. Only that worker
imports ultralytics; the module's top level needs the standard library only.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

KIT_AIS_CLASSES = ("car", "truck", "bus", "minibus", "cyclist")
KIT_AIS_VAL_FRAMES = tuple(f"MOS{n}" for n in range(155, 180, 2))  # MOS155 ... MOS179: 13 frames

ULTRALYTICS_VERSION = "8.4.190"
PEER_MODEL = "yolov8n.yaml"  # from scratch: the architecture only, no weights
PEER_IMGSZ = 640
PEER_BATCH = 8
PEER_CONF = 0.001
# NMS IoU at prediction: 0.65, the NMS threshold of this project's recipes (MODEL.YOLO.NMS_THRESH_TEST), rather
# than Ultralytics' val default 0.7, so both sides' detections go through the same NMS before scoring.
PEER_IOU = 0.65
PEER_MAX_DET = 3000
# Requirements of ultralytics that the peer never needs on CPU (and their own dependency trees): the Platform
# client (only with an API key) and NVML bindings (GPU statistics).
PEER_SKIPPED_REQUIREMENTS = ("ultralytics-platform", "nvidia-ml-py")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


# ----------------------------------------------------------------------------------------------------------------
# The split
# ----------------------------------------------------------------------------------------------------------------
def frame_name(file_name: str) -> str:
    """``/x/y/MOS155.png`` -> ``MOS155``."""
    return os.path.splitext(os.path.basename(file_name))[0]


def is_val_frame(file_name: str) -> bool:
    return frame_name(file_name) in KIT_AIS_VAL_FRAMES


def split_records(records: Sequence[Mapping[str, Any]]) -> Tuple[List[Mapping[str, Any]], List[Mapping[str, Any]]]:
    """(train, val) dataset dicts of the KIT AIS frames, by :data:`KIT_AIS_VAL_FRAMES`."""
    train = [r for r in records if not is_val_frame(r["file_name"])]
    val = [r for r in records if is_val_frame(r["file_name"])]
    return train, val


def check_split(records: Sequence[Mapping[str, Any]], split: str, expected_val: Iterable[str] = KIT_AIS_VAL_FRAMES
                ) -> None:
    """``records`` of a registered ``kit_ais_cars_<split>`` must follow the split above (else ValueError)."""
    names = sorted(frame_name(r["file_name"]) for r in records)
    in_val = [n for n in names if n in set(expected_val)]
    if split == "val" and (len(in_val) != len(names) or set(names) != set(expected_val)):
        raise ValueError(f"kit_ais_cars_val holds {names}, not the frames {sorted(expected_val)}")
    if split == "train" and in_val:
        raise ValueError(f"kit_ais_cars_train holds validation frames {in_val}")


def load_kit_ais_split(datasets_root: str, split: str) -> Tuple[List[Dict[str, Any]], List[str], str]:
    """Dataset dicts of ``split`` ("train" or "val"), the class names and where they came from.

    Reads ``kit_ais_cars_<split>`` when the project registers it (checked against the split above), else
    ``kit_ais_cars`` filtered by :func:`split_records`. ``datasets_root`` holds ``kit_ais_cars/``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from sarl.data.datasets.kit_ais import register_kit_ais

    register_kit_ais(datasets_root)  # (re-)points the kit_ais_cars* names only
    name = f"kit_ais_cars_{split}"
    if name in DatasetCatalog.list():
        records = [dict(r) for r in DatasetCatalog.get(name)]
        check_split(records, split)
        source = name
    else:
        name = "kit_ais_cars"
        train, val = split_records(DatasetCatalog.get(name))
        records = [dict(r) for r in (train if split == "train" else val)]
        source = f"kit_ais_cars filtered by frame ({split})"
    class_names = list(MetadataCatalog.get(name).get("thing_classes", KIT_AIS_CLASSES))
    return records, class_names, source


# ----------------------------------------------------------------------------------------------------------------
# YOLO layout for Ultralytics
# ----------------------------------------------------------------------------------------------------------------
def _xywh_abs(annotation: Mapping[str, Any]) -> List[float]:
    x, y, a, b = (float(v) for v in annotation["bbox"])
    mode = annotation.get("bbox_mode", 1)
    mode = getattr(mode, "value", mode)
    if mode == 1:  # XYWH_ABS
        return [x, y, a, b]
    if mode == 0:  # XYXY_ABS
        return [x, y, a - x, b - y]
    raise ValueError(f"annotation bbox_mode {annotation.get('bbox_mode')!r}: only XYXY_ABS / XYWH_ABS are exported")


def yolo_label_lines(record: Mapping[str, Any]) -> List[str]:
    """``class cx cy w h`` lines (normalised by the record's width/height) of a record's annotations."""
    width, height = float(record["width"]), float(record["height"])
    lines = []
    for annotation in record.get("annotations", []):
        if annotation.get("iscrowd", 0) or annotation.get("ignore", 0):
            continue  # not a box to learn (YOLO txt has no crowd flag)
        x, y, w, h = _xywh_abs(annotation)
        if w <= 0 or h <= 0:
            continue
        lines.append(f"{int(annotation['category_id'])} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} "
                     f"{w / width:.6f} {h / height:.6f}")
    return lines


def export_yolo_layout(splits: Mapping[str, Sequence[Mapping[str, Any]]], class_names: Sequence[str],
                       out_dir: str) -> str:
    """Write ``out_dir/images/<split>/`` (symbolic links to the records' images), ``out_dir/labels/<split>/``
    (one txt per image, :func:`yolo_label_lines`; an image without boxes gets an empty file) and
    ``out_dir/data.yaml``; returns the yaml's path. Folders of an earlier export are replaced (and Ultralytics'
    ``*.cache`` label caches removed)."""
    out_dir = os.path.abspath(out_dir)
    for split, records in splits.items():
        image_dir = os.path.join(out_dir, "images", split)
        label_dir = os.path.join(out_dir, "labels", split)
        for folder in (image_dir, label_dir):
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder)
        cache = os.path.join(out_dir, "labels", f"{split}.cache")
        if os.path.exists(cache):
            os.remove(cache)
        seen = set()
        for record in records:
            base = os.path.basename(record["file_name"])
            if base in seen:
                raise ValueError(f"two images named {base} in split {split!r}")
            seen.add(base)
            os.symlink(os.path.abspath(record["file_name"]), os.path.join(image_dir, base))
            with open(os.path.join(label_dir, frame_name(base) + ".txt"), "w") as f:
                f.writelines(line + "\n" for line in yolo_label_lines(record))
    yaml_path = os.path.join(out_dir, "data.yaml")
    with open(yaml_path, "w") as f:
        f.write(f"path: {json.dumps(out_dir)}\n")
        for split in splits:
            f.write(f"{split}: images/{split}\n")
        f.write("names:\n")
        for index, name in enumerate(class_names):
            f.write(f"  {index}: {json.dumps(str(name))}\n")
    return yaml_path


# ----------------------------------------------------------------------------------------------------------------
# Predictions -> the project's format
# ----------------------------------------------------------------------------------------------------------------
def _as_list(values: Any) -> list:
    if hasattr(values, "detach"):
        values = values.detach().cpu()
    if hasattr(values, "tolist"):
        return values.tolist()
    return list(values)


def ultralytics_result_to_raw(result: Any) -> Dict[str, Any]:
    """One Ultralytics ``Results`` (``path``, ``boxes.xyxy`` in the original image's pixels, ``boxes.conf``,
    ``boxes.cls``) -> ``{"frame", "boxes" [[x1, y1, x2, y2], ...], "scores", "classes"}`` (plain lists, JSON)."""
    boxes = result.boxes
    xyxy = [[float(v) for v in box] for box in _as_list(boxes.xyxy)]
    return {
        "frame": frame_name(str(result.path)),
        "boxes": xyxy,
        "scores": [float(s) for s in _as_list(boxes.conf)],
        "classes": [int(round(float(c))) for c in _as_list(boxes.cls)],
    }


def raw_to_predictions(raw: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]]
                       ) -> List[Dict[str, Any]]:
    """Raw per-frame detections (:func:`ultralytics_result_to_raw`, or :func:`coco_results_to_raw`) -> one
    ``{"image_id", "boxes" [N, 4] XYXY, "scores" [N], "classes" [N]}`` per record (empty where a frame has no
    detection). A frame that is not among the records is an error."""
    import numpy as np

    by_frame = {frame_name(r["file_name"]): r["image_id"] for r in records}
    merged: Dict[str, Dict[str, list]] = {}
    for item in raw:
        if item["frame"] not in by_frame:
            raise ValueError(f"detections for frame {item['frame']!r}, which is not in the ground truth")
        entry = merged.setdefault(item["frame"], {"boxes": [], "scores": [], "classes": []})
        for key in entry:
            entry[key].extend(item[key])
    predictions = []
    for frame, image_id in by_frame.items():
        entry = merged.get(frame, {"boxes": [], "scores": [], "classes": []})
        predictions.append({
            "image_id": image_id,
            "boxes": np.asarray(entry["boxes"], dtype=np.float64).reshape(-1, 4),
            "scores": np.asarray(entry["scores"], dtype=np.float64).reshape(-1),
            "classes": np.asarray(entry["classes"], dtype=np.int64).reshape(-1),
        })
    return predictions


def coco_results_to_raw(results: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """COCO detection results of ``tools/predict.py`` (``image_id`` = file name, ``bbox`` XYWH, contiguous
    ``category_id``) -> raw per-frame detections."""
    raw: Dict[str, Dict[str, Any]] = {}
    for det in results:
        frame = frame_name(str(det["image_id"]))
        entry = raw.setdefault(frame, {"frame": frame, "boxes": [], "scores": [], "classes": []})
        x, y, w, h = (float(v) for v in det["bbox"])
        entry["boxes"].append([x, y, x + w, y + h])
        entry["scores"].append(float(det["score"]))
        entry["classes"].append(int(det["category_id"]))
    return list(raw.values())


def class_agnostic(records: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]]
                   ) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Copies of the ground truth and the predictions with every class folded into one ("object")."""
    gt = [dict(r, annotations=[dict(a, category_id=0) for a in r.get("annotations", [])]) for r in records]
    dt = [dict(p, classes=p["classes"] * 0) for p in predictions]
    return gt, dt


# ----------------------------------------------------------------------------------------------------------------
# The peer's scratch environment
# ----------------------------------------------------------------------------------------------------------------
def _site_packages(python: str) -> List[str]:
    code = ("import json, site, sysconfig; "
            "print(json.dumps([sysconfig.get_paths()['purelib'], *site.getsitepackages()]))")
    paths = json.loads(subprocess.check_output([python, "-c", code], text=True))
    return list(dict.fromkeys(p for p in paths if os.path.isdir(p)))


def peer_python(env_dir: str) -> str:
    return os.path.join(env_dir, "bin", "python")


_MISSING_REQUIREMENTS = r"""
import json, sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
skip = set(json.loads(sys.argv[1]))
OPENCV = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")
todo, done, missing = ["ultralytics"], set(), []
while todo:
    dist = todo.pop()
    if dist in done:
        continue
    done.add(dist)
    for text in metadata.requires(dist) or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = req.name.lower().replace("_", "-")
        if key in skip:
            continue
        # Any OpenCV wheel provides cv2 (the project has opencv-python-headless): do not add a second one.
        names = [req.name] + ([n for n in OPENCV if n != key] if key in OPENCV else [])
        version = None
        for name in names:
            try:
                version = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                pass
        if version is None:
            missing.append(str(req))
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(str(req))
            continue
        # Recurse only into what this environment installed itself: the project's packages (torch, ...) and
        # their own requirements are the project's environment's business.
        if str(metadata.distribution(name).locate_file("")).startswith(sys.prefix):
            todo.append(name)
print(json.dumps(sorted(set(missing))))
"""


def ensure_peer_env(env_dir: str, project_python: str, log: Any = print) -> str:
    """Create (or reuse) the peer's virtual environment in ``env_dir``; returns its python.

    The environment sees the project's site-packages (torch, numpy, opencv, ...) after its own, through a
    ``.pth`` that calls ``site.addsitedir`` (so the project's own ``.pth`` files, e.g. editable installs, work
    too). ``ultralytics==ULTRALYTICS_VERSION`` and every requirement that the combined environment does not
    satisfy are installed into ``env_dir`` with ``pip install --no-deps --ignore-installed`` (a requirement that
    needs torch's own wheels, torch or torchvision, is an error: the peer must use the project's torch).
    """
    python = peer_python(env_dir)
    if not os.path.exists(python):
        log(f"creating the peer environment {env_dir}")
        subprocess.check_call([project_python, "-m", "venv", env_dir])
    own = _site_packages(python)[0]
    project_sites = [p for p in _site_packages(project_python) if p != own]
    with open(os.path.join(own, "_sarl_project_site.pth"), "w") as f:
        for path in project_sites:
            f.write(f"import site; site.addsitedir({path!r})\n")
    pip = [python, "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-input",
           "--disable-pip-version-check", "-q"]
    version = subprocess.run([python, "-c", "from importlib.metadata import version; print(version('ultralytics'))"],
                             capture_output=True, text=True).stdout.strip()
    if version != ULTRALYTICS_VERSION:
        log(f"installing ultralytics=={ULTRALYTICS_VERSION} (no dependencies) into {env_dir}")
        subprocess.check_call(pip + [f"ultralytics=={ULTRALYTICS_VERSION}"])
    for _ in range(6):  # each round installs what the previous round's packages require
        missing = json.loads(subprocess.check_output(
            [python, "-c", _MISSING_REQUIREMENTS, json.dumps(PEER_SKIPPED_REQUIREMENTS)], text=True))
        if not missing:
            return python
        heavy = [r for r in missing if re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() in ("torch", "torchvision")]
        if heavy:
            raise RuntimeError(f"the project's environment does not satisfy {heavy} for ultralytics; install a "
                               f"matching torch/torchvision in the project, not in the peer environment")
        log(f"installing into the peer environment (no dependencies): {' '.join(missing)}")
        subprocess.check_call(pip + missing)
    raise RuntimeError(f"the peer environment still lacks requirements after 6 rounds: {missing}")


def offline_env(config_dir: str, threads: int) -> Dict[str, str]:
    """Environment variables of the peer's process: no network, settings and fonts in ``config_dir``, the
    thread count. ``config_dir/Ultralytics`` (Ultralytics' USER_CONFIG_DIR) gets ``Arial.ttf`` (a copy of
    matplotlib's DejaVu Sans) so that Ultralytics' ``check_font`` finds it instead of downloading it."""
    user_dir = os.path.join(config_dir, "Ultralytics")
    os.makedirs(user_dir, exist_ok=True)
    font = os.path.join(user_dir, "Arial.ttf")
    if not os.path.exists(font):
        try:
            import matplotlib

            source = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
            shutil.copyfile(source, font)
        except (ImportError, OSError):
            pass  # check_font then tries the download once (offline: fails, no plot text; plots are off anyway)
    env = {
        "YOLO_OFFLINE": "1",  # ultralytics.utils.is_online() -> False: no update check, no events, no Sentry
        "YOLO_CONFIG_DIR": config_dir,  # settings.json (the worker turns sync off) and fonts live here
        "YOLO_VERBOSE": "True",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "HUB_API_KEY": "",
        "ULTRALYTICS_API_KEY": "",
        "WANDB_MODE": "disabled",
        "COMET_MODE": "disabled",
    }
    return env


# ----------------------------------------------------------------------------------------------------------------
# The worker (runs in the peer environment)
# ----------------------------------------------------------------------------------------------------------------
def _median(values: Sequence[float]) -> Optional[float]:
    values = sorted(values)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def run_worker(args: argparse.Namespace) -> Dict[str, Any]:
    import torch
    import ultralytics
    from ultralytics import YOLO, settings
    from ultralytics.utils import torch_utils

    settings.update({"sync": False})
    # select_device() sets torch's threads to ultralytics.utils.NUM_THREADS = min(8, cores - 1): give the peer
    # the same threads as this project's side instead.
    torch_utils.NUM_THREADS = args.threads
    torch.set_num_threads(args.threads)

    stamps: Dict[str, Any] = {"batch_end": [], "epoch_start": [], "threads": None, "train_start": None}

    def on_train_start(trainer):
        stamps["train_start"] = time.perf_counter()
        stamps["threads"] = torch.get_num_threads()

    def on_train_epoch_start(trainer):
        stamps["epoch_start"].append(time.perf_counter())
        stamps["batch_end"].append([])

    def on_train_batch_end(trainer):
        stamps["batch_end"][-1].append(time.perf_counter())

    model = YOLO(PEER_MODEL)
    model.add_callback("on_train_start", on_train_start)
    model.add_callback("on_train_epoch_start", on_train_epoch_start)
    model.add_callback("on_train_batch_end", on_train_batch_end)
    start = time.perf_counter()
    model.train(data=args.data, time=args.budget_min / 60.0, imgsz=PEER_IMGSZ, batch=PEER_BATCH, device="cpu",
                workers=0, nbs=PEER_BATCH, optimizer="auto", amp=False, plots=False, val=False, seed=args.seed,
                deterministic=True, pretrained=False, project=args.project, name="train", exist_ok=True,
                verbose=True)
    process_train_s = time.perf_counter() - start
    trainer = model.trainer
    # Step times: between consecutive batch ends of an epoch, plus the first batch from its epoch start (each
    # includes loading the batch, as detectron2's iteration time does).
    # The last batch of an epoch is short (20 images = 8 + 8 + 4): rates are per step, images / seconds.
    images = len(trainer.train_loader.dataset)
    batch = int(trainer.batch_size)
    steps, sizes = [], []
    for epoch_start, ends in zip(stamps["epoch_start"], stamps["batch_end"]):
        previous = epoch_start
        for index, end in enumerate(ends):
            steps.append(end - previous)
            sizes.append(max(1, min(batch, images - index * batch)))
            previous = end
    rate = _median([n / t for n, t in zip(sizes, steps) if t > 0])
    all_ends = [t for ends in stamps["batch_end"] for t in ends]
    train_loop_s = (all_ends[-1] - stamps["train_start"]) if all_ends and stamps["train_start"] else None
    step_median = _median(steps)
    native = {k: float(v) for k, v in (getattr(trainer, "metrics", None) or {}).items()
              if isinstance(v, (int, float))}

    weights = str(trainer.last)
    predict_start = time.perf_counter()
    predictor = YOLO(weights)
    images = sorted(os.path.join(args.val_images, f) for f in os.listdir(args.val_images)
                    if f.lower().endswith(IMAGE_EXTENSIONS))
    raw = []
    for result in predictor.predict(source=images, imgsz=PEER_IMGSZ, conf=PEER_CONF, iou=PEER_IOU,
                                    max_det=PEER_MAX_DET, device="cpu", stream=True, verbose=False, save=False):
        raw.append(ultralytics_result_to_raw(result))
    return {
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "torch_threads": stamps["threads"],
        "weights": weights,
        "epochs_done": len(stamps["epoch_start"]),
        "iterations_done": len(steps),
        "train_images_seen": sum(sizes),
        "images_per_iteration": batch,
        "step_time_median_s": step_median,
        "train_images_per_s": rate,
        "train_loop_s": train_loop_s,
        "train_call_s": process_train_s,
        "predict_s": time.perf_counter() - predict_start,
        "native_val_metrics": native,
        "predict_settings": {"imgsz": PEER_IMGSZ, "conf": PEER_CONF, "iou": PEER_IOU, "max_det": PEER_MAX_DET,
                             "rect": True},
        "raw": raw,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="peer worker of tools/benchmark_real.py (peer environment only)")
    parser.add_argument("--data", required=True, help="data.yaml of the YOLO layout")
    parser.add_argument("--val-images", required=True, help="folder of the validation images to predict")
    parser.add_argument("--project", required=True, help="Ultralytics' runs folder")
    parser.add_argument("--result", required=True, help="JSON to write")
    parser.add_argument("--budget-min", type=float, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = run_worker(args)
    with open(args.result, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
