"""The YOLOv5 loss switches behind the ablation's one-change rows: MODEL.YOLOV5.OBJ_TARGET and the base-loss keys.
Each loss_parts row, built into a YOLOv5 head from its own config overrides, changes only the loss term it names
compared with the cell it names (same weights, same batch); and MODEL.SAL.PER_OBJECT reaches the YOLOv5 loss."""
from __future__ import annotations

import pytest
import torch

import sarl.modeling.heads.yolov5_head as yolov5_module
from sarl.benchmark.ablation import cell_loss_overrides, effective_settings, grid
from sarl.config import UserError

from test_yolov5_head import TinyDetector, _cfg, _fixed_batch, _head_only

pytestmark = pytest.mark.usefixtures("one_thread")
# The loss term that each change moves (the others stay equal to the compared cell's).
TERM_OF_CHANGE = {"base loss": "loss_box", "SAL weight": "loss_box", "objectness target": "loss_obj"}


def _model(cell):
    cfg = _cfg(sal=cell["sal"], sarl=cell["sarl"])
    cfg.merge_from_list(cell_loss_overrides(cell))
    return TinyDetector(cfg)


def test_obj_target_key():
    assert not TinyDetector(_cfg(sal=True)).head.obj_target_complete_iou  # "auto": IoU with 1 - IoU^2 (SAL on)
    assert TinyDetector(_cfg(sal=False)).head.obj_target_complete_iou  # "auto": CIoU with the CIoU loss (SAL off)
    cfg = _cfg(sal=True)
    cfg.MODEL.YOLOV5.OBJ_TARGET = "ciou"
    assert TinyDetector(cfg).head.obj_target_complete_iou
    cfg = _cfg(sal=False)
    cfg.MODEL.YOLOV5.OBJ_TARGET = "iou"
    assert not TinyDetector(cfg).head.obj_target_complete_iou
    cfg.MODEL.YOLOV5.OBJ_TARGET = "giou"
    with pytest.raises(UserError, match="MODEL.YOLOV5.OBJ_TARGET"):
        TinyDetector(cfg)
    with pytest.raises(ValueError, match="OBJ_TARGET"):
        _head_only(obj_target="diou")


@pytest.mark.parametrize("row", ["base_iou2", "obj_iou", "sal_ciou", "iou2_obj_iou"])
def test_each_loss_parts_row_moves_only_its_term(row):
    cells = {c["cell"]: c for c in grid(["yolov5"], [], ["loss_parts"])}
    cell = cells[row]
    reference = cells[cell["compare_with"]]
    model, reference_model = _model(cell), _model(reference)
    reference_model.load_state_dict(model.state_dict())
    model.eval(), reference_model.eval()
    # The head is built as the row says (base loss, objectness target, SAL weight on or off).
    settings = effective_settings(cell)
    assert model.head.sal.loss_type == settings["base_loss"] and model.head.sal.enabled == cell["sal"]
    assert model.head.obj_target_complete_iou == (settings["obj_target"] == "ciou")
    images, gts = _fixed_batch()
    with torch.no_grad():
        got = model.head.losses(model(images), gts)
        want = reference_model.head.losses(reference_model(images), gts)
    moved = TERM_OF_CHANGE[cell["change"]]
    assert not torch.allclose(got[moved], want[moved], rtol=1e-4, atol=0), (row, got, want)
    for term in {"loss_box", "loss_obj", "loss_cls"} - {moved}:
        torch.testing.assert_close(got[term], want[term])


def test_per_object_reaches_the_yolov5_loss(monkeypatch):
    """PER_OBJECT: the head hands the loss each match's GT row (YOLOv5 gives every GT several anchors), and with
    WEIGHT_NORM "mean" counting objects instead of anchors changes loss_box only."""
    seen = {}
    real_loss = yolov5_module.sal_box_loss

    def spy(params, pred, target, batch_index=None, **kwargs):
        seen["gt_index"] = kwargs["gt_index"]
        return real_loss(params, pred, target, batch_index, **kwargs)

    monkeypatch.setattr(yolov5_module, "sal_box_loss", spy)
    cfg = _cfg(sal=True, sarl=False)
    cfg.MODEL.SAL.WEIGHT_NORM = "mean"
    per_anchor = TinyDetector(cfg)
    cfg.MODEL.SAL.PER_OBJECT = True
    per_object = TinyDetector(cfg)
    per_object.load_state_dict(per_anchor.state_dict())
    per_object.eval(), per_anchor.eval()
    images, gts = _fixed_batch()
    with torch.no_grad():
        outputs = per_object(images)
        got = per_object.head.losses(outputs, gts)
        matches, _ = per_object.head.match(outputs, gts)
        want = per_anchor.head.losses(per_anchor(images), gts)
    assert torch.equal(seen["gt_index"], torch.cat([m.gt_index for m in matches]))
    assert int(torch.bincount(seen["gt_index"]).min()) >= 2  # the case: objects with several anchors
    assert not torch.allclose(got["loss_box"], want["loss_box"])
    torch.testing.assert_close(got["loss_obj"], want["loss_obj"])
