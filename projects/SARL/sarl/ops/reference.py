"""Pure-PyTorch references of every fused op (the specification the kernels are tested
against, and the fallback when ``sarl._C`` is not built)."""
from .sal_reference import sal_weights_reference, scale_adaptive_iou_loss_reference  # noqa: F401
from .relay_reference import relay_gate_reference, relay_pool_reference  # noqa: F401
