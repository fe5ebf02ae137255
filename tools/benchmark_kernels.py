#!/usr/bin/env python
"""Kernel benchmarks: fused ops vs eager reference vs torch.compile vs the bandwidth bound.

    python tools/benchmark_kernels.py --op sal --json out.json
    python tools/benchmark_kernels.py --op all --device all

Ops (modules of ``sarl.benchmark``): ``sal`` (scale-adaptive IoU loss), ``relay`` (SARL pool/gate ops and the
relay's share of a training step), ``assign`` (sparse vs dense SimOTA). Each prints a table; ``--json`` writes all
figures and ratios. Figures are medians; ratios are taken within the same run.
"""
from __future__ import annotations

import argparse
import importlib
import sys

import torch

from sarl.benchmark.common import machine_description, write_json

OPS = ("sal", "relay", "assign")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--op", default="all", choices=OPS + ("all",))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "all"))
    parser.add_argument("--json", default=None, help="write figures and ratios to this path")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per figure")
    args = parser.parse_args(argv)

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        print("[benchmark] no CUDA device: CUDA figures skipped")
        devices = [d for d in devices if d != "cuda"]
    ops = OPS if args.op == "all" else (args.op,)
    payload = {"machine": {d: machine_description(d) for d in devices}, "results": {}}
    for op in ops:
        module = importlib.import_module(f"sarl.benchmark.{op}")
        payload["results"][op] = {dev: module.run(dev, args) for dev in devices}
    if args.json:
        write_json(args.json, payload)
        print(f"[benchmark] wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
