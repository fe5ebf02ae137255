"""Bad input to the SAL op (sarl::sal_loss) and its reference: one clear error naming the argument, from the Python
API and from the C++ op called directly."""
from __future__ import annotations

import pytest
import torch

from sarl.ops import scale_adaptive_iou_loss
from sarl.ops.sal_reference import scale_adaptive_iou_loss_reference

from test_sal_op import requires_extension

_BOX = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 4.0]])

BAD_INPUTS = [
    (dict(pred=_BOX[:, :3]), ValueError, "pred must have shape"),
    (dict(target=_BOX[0]), ValueError, "target must have shape"),
    (dict(target=_BOX[:1]), ValueError, "same N"),
    (dict(pred=_BOX.long()), TypeError, "pred must be a floating-point"),
    (dict(target=_BOX.int()), TypeError, "target must be a floating-point"),
    (dict(pred=_BOX.to("meta")), ValueError, "same device"),
    (dict(loss_type="l1"), ValueError, "loss_type"),
    (dict(normalize="global"), ValueError, "normalize"),
    (dict(weight_norm="sum"), ValueError, "weight_norm"),
    (dict(box_format="xywh"), ValueError, "box_format"),
    (dict(reduction="max"), ValueError, "reduction"),
    (dict(normalize="image"), ValueError, "batch_index is required"),
    (dict(normalize="image", batch_index=torch.tensor([0])), ValueError, "batch_index must have shape"),
    (dict(normalize="image", batch_index=torch.tensor([0.0, 1.0])), TypeError, "batch_index must be int64"),
    (dict(normalize="image", batch_index=torch.tensor([0, -1])), ValueError, "batch_index must be >= 0"),
    (dict(normalize="fixed"), ValueError, "area_range"),
    (dict(normalize="fixed", area_range=(10.0, 10.0)), ValueError, "hi > lo"),
    (dict(normalize="fixed", area_range=(1.0,)), ValueError, "area_range"),
    (dict(target=torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, float("nan"), 3.0, 4.0]])), ValueError,
     "target must be finite: row 1"),
    (dict(target=torch.tensor([[0.0, 0.0, float("inf"), 2.0], [1.0, 1.0, 3.0, 4.0]])), ValueError,
     "target must be finite: row 0"),
    (dict(weight=torch.ones(3)), ValueError, "weight must have shape"),
    (dict(beta=float("nan")), TypeError, "beta"),
    (dict(eps=-1.0), ValueError, "eps"),
]


@pytest.mark.parametrize("fn", [scale_adaptive_iou_loss, scale_adaptive_iou_loss_reference])
@pytest.mark.parametrize("bad,error,message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_inputs_raise_clear_errors(fn, bad, error, message):
    kwargs = dict(bad)
    pred = kwargs.pop("pred", _BOX + 0.5)
    target = kwargs.pop("target", _BOX)
    with pytest.raises(error, match=message):
        fn(pred, target, **kwargs)


@requires_extension
def test_kernel_rejects_bad_strings_and_shapes_directly():
    """The C++ op checks its arguments too, for callers of torch.ops.sarl.sal_loss."""
    op = torch.ops.sarl.sal_loss
    base = [_BOX, _BOX, None, None, "xyxy", "iou2", "batch", "none", 1.0, 0.0, 0.0, "sum", 1e-7, False]
    for index, value, message in ((5, "l1", "loss_type"), (4, "xywh", "box_format"), (6, "x", "normalize"),
                                  (7, "median", "weight_norm"), (11, "max", "reduction"),
                                  (0, _BOX[:, :2], "pred must have shape")):
        args = list(base)
        args[index] = value
        with pytest.raises(ValueError, match=message):
            op(*args)
