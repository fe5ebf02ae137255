"""Benchmark of the SARL relay ops (``--op relay``): forward+backward of the fused
``relay_gate`` / ``relay_pool`` vs the eager reference vs ``torch.compile`` of the reference vs
the memory-bandwidth bound, at the level shapes of a 640x640 batch of 8 at width 0.5
(C=128 @ 80x80, 256 @ 40x40, 512 @ 20x20, and 64 @ 160x160 for P2); then the SARL relay's share
of a backbone+SARL+neck training step of YOLOX-s at 640 (step time with SARL on / off).

The gate's relay input is the coarser level's map at half the resolution ([N, C, H/2, W/2]), as in
the SARL relay. Bytes of the bound (float32): gate forward reads x, the relay, the logits and
writes out; its backward reads grad_out, x, the logits and writes the four gradients. Pool forward
reads g and writes the descriptors and arg-max indices; its backward reads the descriptor
gradients and indices and writes grad_g.
"""
from __future__ import annotations

import time
from typing import Dict, List

import torch

from .common import bound_ms, copy_bandwidth_gbps, format_table, time_fn

LEVELS = [(128, 80), (256, 40), (512, 20), (64, 160)]  # (channels, side) at width 0.5, 640 input


def _gate_case(n: int, c: int, side: int, device: str):
    x = torch.randn(n, c, side, side, device=device, requires_grad=True)
    cl = torch.randn(n, c, device=device, requires_grad=True)
    sl = torch.randn(n, 1, side, side, device=device, requires_grad=True)
    relay = torch.randn(n, c, side // 2, side // 2, device=device, requires_grad=True)
    grad_out = torch.randn(n, c, side, side, device=device)
    elems, pix = n * c * side * side, n * side * side
    relay_elems = relay.numel()
    bytes_moved = 4 * ((elems + relay_elems + pix + n * c + elems)                       # forward
                       + (2 * elems + pix + n * c + elems + n * c + pix + relay_elems))  # backward
    return (x, cl, sl, relay), grad_out, bytes_moved


def _pool_case(n: int, c: int, side: int, device: str):
    g = torch.randn(n, c, side, side, device=device, requires_grad=True)
    elems, pix = n * c * side * side, n * side * side
    grads = (torch.randn(n, 2, side, side, device=device), torch.randn(n, 2, c, device=device))
    bytes_moved = (4 * (elems + 2 * pix + 2 * n * c) + 8 * (pix + n * c)     # forward (+ int64 arg-max)
                   + 4 * (2 * pix + 2 * n * c) + 8 * (pix + n * c) + 4 * elems)  # backward
    return (g,), grads, bytes_moved


def _fwd_bwd(fn, inputs, grad_out):
    def step():
        out = fn(*inputs)
        torch.autograd.grad(out, inputs, grad_out)
    return step


def _time_op(name: str, fused, reference, make_case, n: int, device: str, bandwidth: float,
             repeats: int, compile_reference: bool) -> List[Dict[str, object]]:
    rows = []
    for c, side in LEVELS:
        inputs, grad_out, bytes_moved = make_case(n, c, side, device)
        row: Dict[str, object] = {"op": name, "shape": f"{n}x{c}x{side}x{side}"}
        row["fused_ms"] = time_fn(_fwd_bwd(fused, inputs, grad_out), device, warmup=2,
                                  repeats=repeats)["median_ms"]
        row["eager_ms"] = time_fn(_fwd_bwd(reference, inputs, grad_out), device, warmup=1,
                                  repeats=repeats)["median_ms"]
        if compile_reference:
            compiled = torch.compile(reference, dynamic=False)
            # The warm-up calls compile (forward and backward graphs); they are not timed.
            row["compile_ms"] = time_fn(_fwd_bwd(compiled, inputs, grad_out), device, warmup=2,
                                        repeats=repeats)["median_ms"]
        row["bound_ms"] = bound_ms(bytes_moved, bandwidth)
        row["eager/fused"] = row["eager_ms"] / row["fused_ms"]
        if compile_reference:
            row["compile/fused"] = row["compile_ms"] / row["fused_ms"]
        row["fused/bound"] = row["fused_ms"] / row["bound_ms"]
        rows.append(row)
        del inputs, grad_out
    return rows


def _relay_share_of_step(device: str, batch: int, side: int, repeats: int) -> Dict[str, object]:
    """Training step (forward + backward, no optimizer) of CSPDarknet + SARL + PAFPN, YOLOX-s."""
    try:
        from detectron2.config import get_cfg
        from detectron2.layers import ShapeSpec

        from sarl.config import add_sarl_config
        from sarl.modeling.backbone.build import build_sarl_cspdarknet_pafpn_backbone
    except Exception as e:  # noqa: BLE001 - the model may be absent or broken in a partial checkout
        msg = f"skipped: the backbone+SARL+neck builder is not importable ({type(e).__name__}: {e})"
        print(f"[relay] step share {msg}")
        return {"skipped": msg}

    images = torch.randn(batch, 3, side, side, device=device)
    result: Dict[str, object] = {"batch": batch, "input": side, "model": "YOLOX-s (depth 0.33, width 0.5)"}
    variants = {"sarl_off": (False, True), "sarl_on_fused": (True, True), "sarl_on_unfused": (True, False)}
    for key, (enabled, fused) in variants.items():
        cfg = add_sarl_config(get_cfg())
        cfg.MODEL.CSPDARKNET.DEPTH_MULTIPLIER, cfg.MODEL.CSPDARKNET.WIDTH_MULTIPLIER = 0.33, 0.5
        cfg.MODEL.SARL.ENABLED, cfg.MODEL.SARL.FUSED = enabled, fused
        model = build_sarl_cspdarknet_pafpn_backbone(cfg, ShapeSpec(channels=3)).to(device).train()

        def step():
            outs = model(images)
            loss = sum(o.float().mean() for o in outs.values())
            loss.backward()

        result[f"{key}_ms"] = time_fn(step, device, warmup=1, repeats=repeats)["median_ms"]
        del model
    result["on/off"] = result["sarl_on_fused_ms"] / result["sarl_off_ms"]
    result["on_unfused/off"] = result["sarl_on_unfused_ms"] / result["sarl_off_ms"]
    print(format_table([result], ["model", "batch", "input", "sarl_off_ms", "sarl_on_fused_ms",
                                  "sarl_on_unfused_ms", "on/off", "on_unfused/off"],
                       title=f"SARL relay share of a backbone+SARL+neck training step ({device})"))
    return result


def run(device: str, args) -> Dict[str, object]:
    from sarl.ops import extension_info, relay_gate, relay_pool
    from sarl.ops.relay_reference import relay_gate_reference, relay_pool_reference

    quick = bool(getattr(args, "quick", False))
    repeats = getattr(args, "repeats", None) or (3 if quick else 10)
    n = 2 if quick else 8
    torch.manual_seed(0)
    bandwidth = copy_bandwidth_gbps(device)
    started = time.perf_counter()
    rows = _time_op("relay_gate", relay_gate, relay_gate_reference, _gate_case, n, device, bandwidth,
                    repeats, compile_reference=True)
    rows += _time_op("relay_pool", relay_pool, relay_pool_reference, _pool_case, n, device, bandwidth,
                     repeats, compile_reference=True)
    print(format_table(rows, ["op", "shape", "fused_ms", "eager_ms", "compile_ms", "bound_ms", "eager/fused",
                              "compile/fused", "fused/bound"],
                       title=f"SARL relay ops, forward+backward ({device}, copy bandwidth "
                             f"{bandwidth:.1f} GB/s, threads {torch.get_num_threads()})"))
    # On a CPU: batch 2 at 640 and 2 timed steps (a batch of 8 takes minutes per step on 2 cores).
    on_cpu = device == "cpu"
    step = _relay_share_of_step(device, batch=2 if on_cpu or quick else 8,
                                side=320 if quick else 640, repeats=2 if on_cpu or quick else 5)
    return {"extension": extension_info(), "copy_bandwidth_gbps": bandwidth, "kernels": rows,
            "step_share": step, "seconds": time.perf_counter() - started}
