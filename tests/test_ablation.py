"""The ablation grid's rows (sarl.benchmark.ablation, tools/ablation.py): the paper's cells by default; this
project's one-change rows (--variants) each differ from the cell they name by exactly one setting, the dry run
lists them, and the report gives their AP difference to that cell."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from sarl.benchmark.ablation import (
    BETAS,
    PAPER_CELLS,
    VARIANTS,
    cell_loss_overrides,
    describe_cell,
    effective_settings,
    grid,
)
from sarl.benchmark.ablation_report import markdown_tables, mean_over_seeds
from sarl.ops import PAPER_SAL_BETA

REPO = Path(__file__).resolve().parents[1]
# The setting each "change" label names (the SAL weight options live in the "sal_weight" setting).
CHANGED_SETTING = {"base loss": "base_loss", "objectness target": "obj_target", "SAL weight": "sal_weight",
                   "weight normalisation": "sal_weight", "per-object counting": "sal_weight"}


def _tool():
    spec = importlib.util.spec_from_file_location("sarl_ablation_tool", REPO / "tools" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_grid_is_the_papers_with_its_settings():
    cells = grid(["yolox", "yolov5"], ["yolox"])
    assert [c["cell"] for c in cells if c["detector"] == "yolov5"] == list(PAPER_CELLS)
    assert all(c["variant"] is None and c["weight_norm"] == "none" and not c["per_object"] for c in cells)
    assert BETAS["2/ln2"] == PAPER_SAL_BETA
    sal = next(c for c in cells if c["detector"] == "yolov5" and c["cell"] == "sal")
    opts = cell_loss_overrides(sal)
    assert opts[opts.index("MODEL.SAL.WEIGHT_NORM") + 1] == "none"
    assert "MODEL.YOLOV5.OBJ_TARGET" not in opts and "MODEL.YOLOV5.BOX_LOSS_TYPE" not in opts  # the defaults
    # On YOLOv5, the paper's SAL cell changes three settings at once compared with the baseline.
    baseline = next(c for c in cells if c["detector"] == "yolov5" and c["cell"] == "baseline")
    a, b = effective_settings(sal), effective_settings(baseline)
    assert sorted(k for k in a if a[k] != b[k]) == ["base_loss", "obj_target", "sal_weight"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_row_changes_one_setting(variant):
    cells = grid(["yolox", "yolov5"], [], list(VARIANTS))
    by_name = {(c["detector"], c["cell"]): c for c in cells}
    rows = [c for c in cells if c["variant"] == variant]
    assert {c["detector"] for c in rows} == set(VARIANTS[variant]["detectors"])
    for row in rows:
        reference = by_name[(row["detector"], row["compare_with"])]
        mine, theirs = effective_settings(row), effective_settings(reference)
        changed = [k for k in mine if mine[k] != theirs[k]]
        assert changed == [CHANGED_SETTING[row["change"]]], describe_cell(row)
        if row["change"] in ("weight normalisation", "per-object counting"):  # one of (beta, norm, per object)
            assert sum(x != y for x, y in zip(mine["sal_weight"], theirs["sal_weight"])) == 1


def test_loss_parts_overrides_set_both_base_loss_keys_and_the_objectness_target():
    cells = {c["cell"]: c for c in grid(["yolov5"], [], ["loss_parts"])}
    opts = cell_loss_overrides(cells["base_iou2"])
    pairs = dict(zip(opts[::2], opts[1::2]))
    assert pairs["MODEL.SAL.LOSS_TYPE"] == pairs["MODEL.YOLOV5.BOX_LOSS_TYPE"] == "iou2"
    assert pairs["MODEL.YOLOV5.OBJ_TARGET"] == "ciou" and pairs["MODEL.SAL.ENABLED"] == "False"
    pairs = dict(zip(*[iter(cell_loss_overrides(cells["sal_ciou"]))] * 2))
    assert pairs["MODEL.SAL.ENABLED"] == "True" and pairs["MODEL.SAL.LOSS_TYPE"] == "ciou"


def test_dry_run_lists_the_rows_and_bad_variants_are_reported(tmp_path, capsys):
    tool = _tool()
    argv = ["--output", str(tmp_path), "--detectors", "yolov5", "--variants", "loss_parts,per_object", "--dry-run"]
    assert tool.main(argv) == 0
    printed = capsys.readouterr().out
    assert "[ablation] 9 rows:" in printed
    assert "yolov5/obj_iou: SARL off, base loss CIoU, SAL weight off, objectness target IoU; vs baseline: the " \
           "objectness target only" in printed
    assert "MODEL.YOLOV5.OBJ_TARGET iou" in printed and "MODEL.SAL.PER_OBJECT True" in printed
    assert not (tmp_path / "yolov5").exists()  # a dry run trains nothing
    assert tool.main(["--output", str(tmp_path), "--variants", "loss_parts,median"]) == 2
    assert "--variants: unknown ['median']" in capsys.readouterr().err


def test_report_gives_the_ap_difference_to_the_compared_cell():
    tool = _tool()
    args = tool.get_parser().parse_args([])
    args.seed_list = [0]
    cells = grid(["yolov5"], [], ["loss_parts", "weight_norm"])
    ap = {"baseline": 2.0, "sarl": 3.0, "sal": 5.0, "sarl_sal": 4.0, "base_iou2": 3.5, "obj_iou": 1.0,
          "sal_ciou": 2.5, "iou2_obj_iou": 4.25, "sal_mean": 6.0}
    rows = [mean_over_seeds(c, [{"seed": 0, "metrics": {"AP": ap[c["cell"]], "AP50": 10.0}}]) for c in cells]
    table = markdown_tables(rows, args)
    assert "| base_iou2 | baseline | base loss | +1.5 | 3.5 |" in table
    assert "| obj_iou | baseline | objectness target | -1.0 | 1.0 |" in table
    assert "| iou2_obj_iou | sal | SAL weight | -0.8 | 4.2 |" in table
    assert "| sal_mean | sal | weight normalisation | +1.0 | 6.0 |" in table
    paper_table = table.split("**YOLOV5: one change per row")[0]
    paper_rows = [line for line in paper_table.splitlines() if line.startswith("| ✓ |")]
    assert len(paper_rows) == 4 and "base_iou2" not in paper_table  # Tables V/VI: the paper's cells only


def test_budget_from_config_keeps_the_configs_recipe_and_needs_a_config(tmp_path, capsys):
    tool = _tool()
    config = "configs/kit_ais/yolox_kit_cpu.yaml"
    argv = ["--output", str(tmp_path), "--config", config, "--budget-from-config", "--detectors", "yolox",
            "--beta-detectors", "", "--only", "baseline,sal", "--seeds", "0,1", "--dry-run"]
    assert tool.main(argv) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if "train_net.py" in line]
    assert len(commands) == 4  # 2 cells x 2 seeds, one whole line each (printed in order)
    assert all(config in c for c in commands)
    for budget_key in ("SOLVER.YOLO.EPOCHS", "INPUT.YOLO.IMG_SIZE", "MODEL.CSPDARKNET.WIDTH_MULTIPLIER",
                       "SOLVER.YOLO.RECIPE", "DATASETS.TRAIN"):
        assert not any(budget_key in c for c in commands), budget_key
    assert "MODEL.SAL.ENABLED True" in commands[1] and "SEED 1" in commands[3]
    args = tool.get_parser().parse_args(argv[:-1])
    args.seed_list = [0, 1]
    table = markdown_tables([mean_over_seeds(c, [{"seed": 0, "metrics": {"AP": 1.0}}])
                             for c in grid(["yolox"], [])], args)
    assert table.startswith(f"Budget: the recipe of `{config}`")
    assert tool.main(["--output", str(tmp_path), "--budget-from-config", "--dry-run"]) == 2
    assert "--budget-from-config needs --config" in capsys.readouterr().err
    assert tool.main(["--output", str(tmp_path), "--config", "configs/nope.yaml", "--dry-run"]) == 2
    assert "--config: no such file 'configs/nope.yaml'" in capsys.readouterr().err
