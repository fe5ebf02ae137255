#!/usr/bin/env python
"""Real-data benchmark: this project's recipe vs Ultralytics YOLOv8n on the KIT AIS frames, side by side.

    python tools/benchmark_real.py                              # 12 min of training each, CPU
    python tools/benchmark_real.py --budget-min 1 --skip-ours   # the peer alone (re-uses "ours" from --json)

Both sides train in this run, on this machine, on the same split (validation = frames MOS155..MOS179, the other
20 frames train: tools/benchmarks/real_peer.py), with the same threads and the same wall-clock budget, and both
are scored by this project's AI-TOD evaluator (``sarl.evaluation.evaluate_detections``) on the same
``kit_ais_cars_val`` dataset dicts.

- ours: ``tools/train_net.py --config-file <--config> OUTPUT_DIR <output>/sarl`` in a subprocess. train_net has no
  time budget: the config's schedule (SOLVER.YOLO.EPOCHS) runs in full and the measured time is reported (the
  run is stopped only past max(3 x budget, budget + 20 min)). Its AI-TOD results are those of train_net's final
  evaluation (``<output>/sarl/inference/kit_ais_cars_val/aitod_eval.json``); images/s = SOLVER.IMS_PER_BATCH /
  median iteration ``time`` of metrics.json. ``tools/predict.py`` then re-predicts the validation frames with
  ``model_final.pth`` for the class-agnostic AP50 (and a re-scored AP, a check of the scoring path).
- peer: Ultralytics YOLOv8n from scratch (``yolov8n.yaml``, ``pretrained=False``), imgsz 640, batch 8, nbs 8,
  optimizer auto, ``time=`` budget, ``amp=False``, ``val=False``, ``plots=False``, seed, deterministic, CPU, in a
  scratch virtual environment (``$SARL_PEER_ENV``, default ``<output>/peer_env``) that re-uses the project's torch
  (created on first use: pip needs the package index); no other network access (``YOLO_OFFLINE=1``, a local
  font). Predicts the validation frames (imgsz 640 letterboxed rect, conf 0.001, NMS IoU 0.65, max_det 3000)
  with ``last.pt``; the boxes are scored here.

Prints a table and writes ``--json`` (default ``<output>/benchmark_real.json``): AI-TOD metrics, class-agnostic
AP50, training images/s, wall times, iterations/epochs, peak memory (max RSS of each side's process), the ratios
ours/peer, the machine and the versions. Peak memory and wall time include each side's final evaluation.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

try:
    from tools.benchmarks import real_peer
except ImportError:  # run as a script: tools/ is sys.path[0]
    from benchmarks import real_peer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = "configs/kit_ais/sarl_yolox_kit_cpu.yaml"
METRICS = ("AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m", "AP50_agnostic")
RATIO_KEYS = ("AP", "AP50", "train_images_per_s")


class UserError(Exception):
    """Bad input: one line on stderr, exit status 2."""


def log(message: str) -> None:
    print(f"[benchmark_real] {message}", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------
def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-min", type=float, default=12.0, help="wall-clock training budget of each side")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="this project's config (tools/train_net.py)")
    parser.add_argument("--output", default="output/benchmark_real", help="folder for both runs and the JSON")
    parser.add_argument("--json", default=None, help="results JSON (default <output>/benchmark_real.json)")
    parser.add_argument("--datasets", default=None,
                        help="folder holding kit_ais_cars/ (default $DETECTRON2_DATASETS, else ../shared/data "
                             "beside the repository if it has it, else ./datasets)")
    parser.add_argument("--skip-ours", action="store_true",
                        help="do not train ours: re-use its results from --json (if there are any)")
    parser.add_argument("--skip-peer", action="store_true",
                        help="do not train the peer: re-use its results from --json (if there are any)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides KEY VALUE ... for ours (e.g. a smoke-test schedule)")
    return parser


def validate(args: argparse.Namespace) -> None:
    if not math.isfinite(args.budget_min) or args.budget_min <= 0:
        raise UserError(f"--budget-min must be > 0 minutes (got {args.budget_min:g})")
    if args.threads < 1:
        raise UserError(f"--threads must be >= 1 (got {args.threads})")
    if args.skip_ours and args.skip_peer:
        raise UserError("--skip-ours and --skip-peer together leave nothing to run")
    args.config = args.config if os.path.isabs(args.config) or os.path.exists(args.config) \
        else os.path.join(REPO, args.config)
    if not args.skip_ours and not os.path.isfile(args.config):
        raise UserError(f"--config: no such config file {args.config}")
    args.datasets = os.path.abspath(os.path.expanduser(args.datasets or default_datasets()))
    if not os.path.isdir(os.path.join(args.datasets, "kit_ais_cars")):
        raise UserError(f"--datasets: no kit_ais_cars folder in {args.datasets} (pass --datasets or set "
                        f"DETECTRON2_DATASETS to the folder that holds it)")
    args.output = os.path.abspath(args.output)
    args.json = os.path.abspath(args.json or os.path.join(args.output, "benchmark_real.json"))


def default_datasets() -> str:
    """$DETECTRON2_DATASETS; unset: ../shared/data beside the repository when it holds kit_ais_cars/ (as the
    tests find it), else ./datasets (detectron2's default)."""
    if os.environ.get("DETECTRON2_DATASETS"):
        return os.environ["DETECTRON2_DATASETS"]
    shared = os.path.join(os.path.dirname(REPO), "shared", "data")
    return shared if os.path.isdir(os.path.join(shared, "kit_ais_cars")) else "datasets"


def read_previous(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------------------------------------------
# Subprocesses: wall time and peak memory of each
# ----------------------------------------------------------------------------------------------------------------
def run_measured(cmd: Sequence[str], env: Dict[str, str], log_path: str, timeout_s: float,
                 cwd: Optional[str] = None) -> Dict[str, Any]:
    """Run ``cmd`` with stdout+stderr to ``log_path``; its exit code, wall time and peak RSS (``wait4``: the
    process and the descendants it waited for). Killed (its process group) past ``timeout_s``."""
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    with open(log_path, "w") as out:
        proc = subprocess.Popen(list(cmd), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True)
        timed_out = False
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() - start > timeout_s and not timed_out:
                    timed_out = True
                    os.killpg(proc.pid, signal.SIGKILL)
                time.sleep(0.5)
        except BaseException:  # interrupted: do not leave the child (its own session) running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - start, "timed_out": timed_out,
            "peak_rss_mib": usage.ru_maxrss / 1024.0, "load_avg_1min": [load_before, os.getloadavg()[0]]}


def log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def child_env(args: argparse.Namespace) -> Dict[str, str]:
    env = dict(os.environ)
    env.update({"DETECTRON2_DATASETS": args.datasets, "OMP_NUM_THREADS": str(args.threads),
                "MKL_NUM_THREADS": str(args.threads)})
    return env


# ----------------------------------------------------------------------------------------------------------------
# Scoring (both sides: the same evaluator, the same dataset dicts)
# ----------------------------------------------------------------------------------------------------------------
def score(val_dicts: List[Dict[str, Any]], predictions: List[Dict[str, Any]], class_names: Sequence[str]
          ) -> Dict[str, Optional[float]]:
    from sarl.evaluation import evaluate_detections

    metrics = evaluate_detections(val_dicts, predictions, class_names)
    gt, dt = real_peer.class_agnostic(val_dicts, predictions)
    agnostic = evaluate_detections(gt, dt, ["object"])
    out = {k: _finite(metrics.get(k)) for k in METRICS if k != "AP50_agnostic"}
    out["AP50_agnostic"] = _finite(agnostic["AP50"])
    out["per_class_AP"] = {k[3:]: _finite(v) for k, v in metrics.items() if k.startswith("AP-")}
    return out


def _finite(value: Any) -> Optional[float]:
    return None if value is None or not math.isfinite(float(value)) else float(value)


# ----------------------------------------------------------------------------------------------------------------
# Ours
# ----------------------------------------------------------------------------------------------------------------
def _seconds(text: str) -> float:
    days = 0
    if "day" in text:
        head, text = text.split(",", 1)
        days = int(head.split()[0])
    h, m, s = (float(p) for p in text.strip().split(":"))
    return days * 86400 + h * 3600 + m * 60 + s


def _read_jsonl(path: str) -> List[Dict[str, Any]]:
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        pass
    return rows


def run_ours(args: argparse.Namespace, val_dicts: List[Dict[str, Any]], class_names: List[str]) -> Dict[str, Any]:
    import yaml

    out_dir = os.path.join(args.output, "sarl")
    shutil.rmtree(out_dir, ignore_errors=True)  # metrics.json is appended to: start clean
    os.makedirs(out_dir)
    overrides = ["DATASETS.TRAIN", '("kit_ais_cars_train",)', "DATASETS.TEST", '("kit_ais_cars_val",)',
                 "MODEL.YOLO.NUM_CLASSES", str(len(class_names)), "MODEL.DEVICE", "cpu"]
    overrides += list(args.opts or [])
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", args.config,
           "OUTPUT_DIR", out_dir, "SEED", str(args.seed)] + overrides
    budget_s = args.budget_min * 60
    log(f"ours: training with {os.path.relpath(args.config, REPO)} (the config's schedule; budget "
        f"{args.budget_min:g} min is not enforced by train_net), log {out_dir}/train_net.log")
    run = run_measured(cmd, child_env(args), os.path.join(out_dir, "train_net.log"),
                       timeout_s=max(3 * budget_s, budget_s + 1200), cwd=REPO)
    text = log_tail(os.path.join(out_dir, "train_net.log"), 10**6)
    if run["rc"] != 0:
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        if errors and run["rc"] == 2:
            raise UserError(f"--config (or the overrides): tools/train_net.py rejected it: {errors[-1][6:].strip()}")
        raise RuntimeError(f"ours: tools/train_net.py failed (exit {run['rc']}"
                           f"{', killed past the time limit' if run['timed_out'] else ''}); last lines:\n"
                           f"{log_tail(os.path.join(out_dir, 'train_net.log'))}")
    with open(os.path.join(out_dir, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    batch = int(cfg["SOLVER"]["IMS_PER_BATCH"])
    rows = _read_jsonl(os.path.join(out_dir, "metrics.json"))
    times = [r["time"] for r in rows if "time" in r]
    step = statistics.median(times) if times else None
    # detectron2's IterationTimer: "Total training time: 0:01:02 (0:00:01 on hooks)" (the loop, with its hooks,
    # without the final evaluation); its "Overall training speed" line leaves out the first iterations.
    total = re.findall(r"Total training time: ([^(]+?) \(", text)
    loop_s = _seconds(total[-1]) if total else None
    iterations = max((int(r["iteration"]) + 1 for r in rows if "time" in r), default=None)
    plan = re.findall(r"YOLO schedule[^:]*: (\d+) iterations/epoch", text)
    per_epoch = int(plan[-1]) if plan else None
    if loop_s is not None and loop_s > 1.25 * budget_s:
        log(f"ours: the config's schedule trained for {loop_s / 60:.1f} min, over the {args.budget_min:g} min budget")
    eval_json = os.path.join(out_dir, "inference", "kit_ais_cars_val", "aitod_eval.json")
    with open(eval_json) as f:
        official = json.load(f)["metrics"]
    result: Dict[str, Any] = {k: _finite(official.get(k)) for k in METRICS if k != "AP50_agnostic"}
    result["per_class_AP"] = {k[3:]: _finite(v) for k, v in official.items() if k.startswith("AP-")}
    result.update({
        "config": os.path.relpath(args.config, REPO),
        "input_size": cfg.get("INPUT", {}).get("YOLO", {}).get("IMG_SIZE"),
        "images_per_iteration": batch,
        "step_time_median_s": step,
        "train_images_per_s": batch / step if step else None,
        "iterations_done": iterations,
        "train_images_seen": iterations * batch if iterations is not None else None,
        "epochs_done": (iterations / per_epoch) if iterations is not None and per_epoch else None,
        "train_loop_s": loop_s,
        "process_wall_s": run["wall_s"],
        "peak_rss_mib": run["peak_rss_mib"],
        "load_avg_1min_before_after": run["load_avg_1min"],
        "overrides": list(args.opts or []),
        "budget_enforced": False,
        "results_file": eval_json,
    })
    result.update(_ours_agnostic(args, out_dir, cfg, overrides, val_dicts, class_names))
    return result


def _ours_agnostic(args: argparse.Namespace, out_dir: str, cfg: Dict[str, Any], overrides: List[str],
                   val_dicts: List[Dict[str, Any]], class_names: List[str]) -> Dict[str, Any]:
    """Class-agnostic AP50 of ours: tools/predict.py on the validation frames with model_final.pth (tiled as the
    config's evaluation when TEST.SLICED.ENABLED), scored here."""
    predict_dir = os.path.join(args.output, "sarl_predict")
    shutil.rmtree(predict_dir, ignore_errors=True)
    weights = os.path.join(out_dir, "model_final.pth")
    sliced = (cfg.get("TEST") or {}).get("SLICED") or {}
    slicing = []
    if sliced.get("ENABLED"):
        size = int(sliced.get("SLICE_SIZE") or 0) or int(cfg["INPUT"]["YOLO"]["IMG_SIZE"])
        slicing = ["--slice", str(size), "--overlap", str(sliced.get("OVERLAP", 0.2)),
                   "--batch", str(sliced.get("BATCH_SIZE", 4))]
    cmd = [sys.executable, os.path.join(REPO, "tools", "predict.py"), "--config-file", args.config, "--input",
           *[r["file_name"] for r in val_dicts], "--output", predict_dir, "--no-vis", *slicing,
           "MODEL.WEIGHTS", weights, *overrides]
    os.makedirs(predict_dir, exist_ok=True)
    run = run_measured(cmd, child_env(args), os.path.join(predict_dir, "predict.log"), timeout_s=1800, cwd=REPO)
    if run["rc"] != 0:
        log(f"ours: tools/predict.py failed (exit {run['rc']}): no class-agnostic AP50; see {predict_dir}")
        return {"AP50_agnostic": None}
    with open(os.path.join(predict_dir, "results.json")) as f:
        raw = real_peer.coco_results_to_raw(json.load(f))
    rescored = score(val_dicts, real_peer.raw_to_predictions(raw, val_dicts), class_names)
    return {"AP50_agnostic": rescored["AP50_agnostic"],
            "rescored_from_predict": {"AP": rescored["AP"], "AP50": rescored["AP50"]}}


# ----------------------------------------------------------------------------------------------------------------
# Peer
# ----------------------------------------------------------------------------------------------------------------
def prepare_peer(args: argparse.Namespace, train_dicts: List[Dict[str, Any]], val_dicts: List[Dict[str, Any]],
                 class_names: List[str]) -> Dict[str, str]:
    """The peer's environment and data, before any training (a failed install costs no training time)."""
    env_dir = os.path.abspath(os.environ.get("SARL_PEER_ENV") or os.path.join(args.output, "peer_env"))
    python = real_peer.ensure_peer_env(env_dir, sys.executable, log=lambda m: log(f"peer: {m}"))
    data_yaml = real_peer.export_yolo_layout({"train": train_dicts, "val": val_dicts}, class_names,
                                             os.path.join(args.output, "peer_data"))
    return {"env_dir": env_dir, "python": python, "data_yaml": data_yaml}


def run_peer(args: argparse.Namespace, prepared: Dict[str, str], val_dicts: List[Dict[str, Any]],
             class_names: List[str]) -> Dict[str, Any]:
    env_dir, python, data_yaml = prepared["env_dir"], prepared["python"], prepared["data_yaml"]
    peer_dir = os.path.join(args.output, "peer")
    shutil.rmtree(peer_dir, ignore_errors=True)
    os.makedirs(peer_dir)
    result_path = os.path.join(peer_dir, "peer_result.json")
    cmd = [python, os.path.abspath(real_peer.__file__), "--data", data_yaml,
           "--val-images", os.path.join(os.path.dirname(data_yaml), "images", "val"),
           "--project", os.path.join(peer_dir, "runs"), "--result", result_path,
           "--budget-min", str(args.budget_min), "--threads", str(args.threads), "--seed", str(args.seed)]
    env = child_env(args)
    env.update(real_peer.offline_env(os.path.join(env_dir, "ultralytics_config"), args.threads))
    log(f"peer: training Ultralytics YOLOv8n for {args.budget_min:g} min, log {peer_dir}/peer.log")
    budget_s = args.budget_min * 60
    run = run_measured(cmd, env, os.path.join(peer_dir, "peer.log"), timeout_s=budget_s + 1800, cwd=peer_dir)
    if run["rc"] != 0:
        raise RuntimeError(f"peer: the Ultralytics run failed (exit {run['rc']}); last lines:\n"
                           f"{log_tail(os.path.join(peer_dir, 'peer.log'))}")
    with open(result_path) as f:
        worker = json.load(f)
    predictions = real_peer.raw_to_predictions(worker.pop("raw"), val_dicts)
    result: Dict[str, Any] = score(val_dicts, predictions, class_names)
    result.update(worker)
    result.update({"model": f"Ultralytics YOLOv8n ({real_peer.PEER_MODEL}, from scratch)",
                   "input_size": real_peer.PEER_IMGSZ, "process_wall_s": run["wall_s"],
                   "peak_rss_mib": run["peak_rss_mib"], "load_avg_1min_before_after": run["load_avg_1min"],
                   "budget_enforced": True, "env": env_dir})
    return result


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------
def ratios(ours: Dict[str, Any], peer: Dict[str, Any]) -> Dict[str, Optional[float]]:
    out = {}
    for key in RATIO_KEYS:
        a, b = ours.get(key), peer.get(key)
        out[key] = (a / b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def report_table(payload: Dict[str, Any]) -> str:
    rows = [("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75"), ("AP_vt", "AP_vt"), ("AP_t", "AP_t"),
            ("AP_s", "AP_s"), ("AP_m", "AP_m"), ("AP50 class-agnostic", "AP50_agnostic"),
            ("train img/s", "train_images_per_s"), ("train loop (s)", "train_loop_s"),
            ("process wall (s)", "process_wall_s"), ("iterations", "iterations_done"),
            ("images seen", "train_images_seen"), ("epochs", "epochs_done"), ("peak RSS (MiB)", "peak_rss_mib"),
            ("input size", "input_size")]
    ours, peer, ratio = payload.get("ours") or {}, payload.get("peer") or {}, payload.get("ratios") or {}
    cells = [("", "ours (SARL)", "peer (YOLOv8n)", "ours/peer")]
    for label, key in rows:
        cells.append((label, _fmt(ours.get(key)), _fmt(peer.get(key)), _fmt(ratio.get(key))))
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    lines = [f"KIT AIS cars, validation MOS155..179 (13 frames), AI-TOD metrics in %, budget "
             f"{payload['settings']['budget_min']:g} min, {payload['settings']['threads']} threads"]
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def versions() -> Dict[str, Optional[str]]:
    from importlib import metadata

    import torch

    out: Dict[str, Optional[str]] = {"python": sys.version.split()[0], "torch": torch.__version__}
    try:
        import detectron2

        out["detectron2"] = detectron2.__version__
    except ImportError:
        out["detectron2"] = None
    try:
        out["sarl"] = metadata.version("sarl")
    except metadata.PackageNotFoundError:
        out["sarl"] = None
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        validate(args)
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1


def run(args: argparse.Namespace) -> int:
    import torch

    try:
        from tools.benchmarks.common import machine_description, write_json
    except ImportError:
        from benchmarks.common import machine_description, write_json

    torch.set_num_threads(args.threads)  # scoring here; the sides get OMP_NUM_THREADS
    os.makedirs(args.output, exist_ok=True)
    train_dicts, class_names, train_source = real_peer.load_kit_ais_split(args.datasets, "train")
    val_dicts, _, val_source = real_peer.load_kit_ais_split(args.datasets, "val")
    if not args.skip_ours and train_source != "kit_ais_cars_train":
        raise UserError("--datasets: this project does not register kit_ais_cars_train/kit_ais_cars_val (sarl.data); "
                        "train_net needs them (run the peer alone with --skip-ours)")
    log(f"split: {len(train_dicts)} training frames ({train_source}), {len(val_dicts)} validation frames "
        f"({val_source}); classes {class_names}")
    previous = read_previous(args.json)
    for flag, side in (("--skip-ours", "ours"), ("--skip-peer", "peer")):
        if getattr(args, flag[2:].replace("-", "_")):
            found = isinstance(previous.get(side), dict) and previous[side]
            log(f"{flag}: re-using '{side}' of {args.json}" if found else
                f"{flag}: {args.json} holds no earlier results of '{side}': reported as not run")
    prepared = None if args.skip_peer else prepare_peer(args, train_dicts, val_dicts, class_names)
    ours = (previous.get("ours") or {}) if args.skip_ours else run_ours(args, val_dicts, class_names)
    peer = (previous.get("peer") or {}) if args.skip_peer else run_peer(args, prepared, val_dicts, class_names)
    machine = machine_description("cpu")
    machine.update({"threads_per_side": args.threads, "cores": os.cpu_count()})
    payload = {
        "benchmark": "KIT AIS cars: this project's recipe vs Ultralytics YOLOv8n, same split, budget and evaluator",
        "settings": {"budget_min": args.budget_min, "threads": args.threads, "seed": args.seed,
                     "config": os.path.relpath(args.config, REPO), "datasets": args.datasets,
                     "train_frames": sorted(real_peer.frame_name(r["file_name"]) for r in train_dicts),
                     "val_frames": sorted(real_peer.frame_name(r["file_name"]) for r in val_dicts),
                     "reused": [s for s, skip in (("ours", args.skip_ours), ("peer", args.skip_peer)) if skip]},
        "machine": machine,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "versions": {**versions(), "ultralytics": peer.get("ultralytics")},
        "ours": ours,
        "peer": peer,
        "ratios": ratios(ours, peer),
    }
    print(report_table(payload), flush=True)
    write_json(args.json, payload)
    log(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
