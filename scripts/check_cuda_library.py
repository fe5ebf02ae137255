"""Load a CUDA build of ``sarl._C`` after ``import torch`` and list the ops it registers for CUDA.

    python scripts/check_cuda_library.py build-cuda/lib/sarl/_C.cpython-311-x86_64-linux-gnu.so

Linking proves little: a shared library with an undefined symbol links, and fails only when it is
loaded (``undefined symbol: ...``), which is what a GPU machine's ``import sarl`` then meets. This
loads the library the way ``import sarl._C`` does (into a process that has imported torch, whose
CUDA libraries load without a GPU), then checks through the dispatcher that every ``sarl::`` op
with a CPU kernel also has a CUDA kernel, except the ops that are CPU-only by design.
Run it in its own process: the in-place CPU build registers the same ``sarl`` library, and a
process can hold only one. Exit status 0 when everything holds, 1 otherwise (one line says why).
"""
from __future__ import annotations

import argparse
import sys
from typing import List

# Ops without a CUDA kernel by design (evaluation runs on the CPU).
CPU_ONLY_OPS = {"sarl::coco_eval_bbox"}


def sarl_ops() -> List[str]:
    import torch

    return sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("sarl::"))


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("library", help="path of the CUDA-built sarl._C shared library")
    args = parser.parse_args(argv)

    import torch

    try:
        torch.ops.load_library(args.library)
    except OSError as e:  # an undefined symbol surfaces here (torch wraps the loader's message)
        reason = e.__cause__ or e
        print(f"[cuda] FAILED: {args.library} does not load after `import torch`: {reason}")
        return 1
    if not bool(torch.ops.sarl._compiled_with_cuda()):
        print(f"[cuda] FAILED: {args.library} loaded but was compiled without WITH_CUDA")
        return 1
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    with_cpu = [op for op in sarl_ops() if has(op, "CPU") and op not in CPU_ONLY_OPS]
    missing = [op for op in with_cpu if not has(op, "CUDA")]
    if not with_cpu:
        print(f"[cuda] FAILED: {args.library} loaded but registers no sarl:: CPU kernels")
        return 1
    if missing:
        print(f"[cuda] FAILED: no CUDA kernel registered for {', '.join(missing)}")
        return 1
    cuda_ops = [op.split("::", 1)[1] for op in with_cpu]
    print(f"[cuda] OK: {args.library} loaded after `import torch`; CUDA kernels registered for "
          f"{len(cuda_ops)} ops: {', '.join(cuda_ops)} (CPU-only by design: "
          f"{', '.join(sorted(CPU_ONLY_OPS))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
