"""Reading detectron2's ``metrics.json`` (one JSON object per line, appended by ``JSONWriter`` during training)."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

__all__ = ["read_metrics_json", "last_evaluation"]


def read_metrics_json(path: str) -> List[Dict[str, Any]]:
    """The rows of ``path`` in order; a missing file gives no rows, a line that is not JSON (a run killed while
    writing it) is skipped."""
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


def last_evaluation(path: str, prefix: str = "bbox/") -> Optional[Dict[str, float]]:
    """The metrics of the last evaluation in ``path`` (the row's ``<prefix>AP`` and the rest of its
    ``<prefix>*`` keys, prefix removed); None when the run has no evaluation."""
    last = None
    for row in read_metrics_json(path):
        if f"{prefix}AP" in row:
            last = row
    if last is None:
        return None
    return {k[len(prefix):]: v for k, v in last.items() if k.startswith(prefix)}
