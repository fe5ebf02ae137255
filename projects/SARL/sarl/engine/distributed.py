"""Several training processes: the DDP wrapper (CPU/Gloo processes included) and its unwrapping."""
from __future__ import annotations

import torch.nn as nn
from detectron2.engine import create_ddp_model as d2_create_ddp_model
from detectron2.utils import comm

__all__ = ["create_ddp_model", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (or the model itself)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def create_ddp_model(model: nn.Module) -> nn.Module:
    """DDP wrapper when several processes train (detectron2's ``create_ddp_model`` always passes CUDA
    ``device_ids``, which DDP rejects for CPU modules: CPU/Gloo processes need none)."""
    if comm.get_world_size() == 1:
        return model
    device = next(model.parameters()).device
    if device.type == "cuda":
        return d2_create_ddp_model(model, broadcast_buffers=False)
    # broadcast_buffers=False as YOLOX: each process keeps its own BN statistics (SyncBN shares them).
    return nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
