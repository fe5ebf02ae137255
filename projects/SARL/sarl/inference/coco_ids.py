"""The ids of a COCO json, so prediction results score against it as they are (``--coco-json``).

pycocotools' ``loadRes`` wants every result's ``image_id`` among the json's image ids (integers) and its
``category_id`` among the json's category ids. :class:`CocoJsonIds` looks the image id up by file name and maps
the model's contiguous class ids to the json's category ids by class name (compared loosely: case, ``_``, ``-`` and
spaces do not matter, as the dataset readers compare them).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional, Sequence

from ..config import UserError
from ..data.datasets.common import class_index, normalize_class_name

logger = logging.getLogger(__name__)

__all__ = ["CocoJsonIds"]


def _norm_path(path: str) -> str:
    return os.path.normpath(path).replace(os.sep, "/")


class CocoJsonIds:
    """Image and category ids of the COCO json ``path`` for a model with classes ``class_names``.

    Attributes:
        category_ids: contiguous class id -> the json's category id (classes the json lacks are absent: their
            detections are left out of the results, with a warning).
    Raises :class:`UserError` naming ``--coco-json`` when the file is unreadable, not a COCO json, or shares no
    category with the model.
    """

    def __init__(self, path: str, class_names: Sequence[str]):
        self.path = path
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"--coco-json {path}: cannot read it as json ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
                or not isinstance(data.get("categories"), list):
            raise UserError(f"--coco-json {path}: not a COCO json (needs 'images' and 'categories' lists)")
        self._by_name: Dict[str, List[Dict]] = {}
        for index, image in enumerate(data["images"]):
            if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
                raise UserError(f"--coco-json {path} (images[{index}]): an image needs 'id' and 'file_name'")
            self._by_name.setdefault(os.path.basename(image["file_name"]), []).append(image)
        self.category_ids = self._map_categories(data["categories"], class_names)

    def _map_categories(self, categories: List[Dict], class_names: Sequence[str]) -> Dict[int, int]:
        if not class_names:
            raise UserError(f"--coco-json {self.path}: the model's classes have no names to match the json's "
                            f"categories with: give them with --class-names")
        by_name = class_index(class_names)
        mapping: Dict[int, int] = {}
        for index, category in enumerate(categories):
            if not isinstance(category, dict) or "id" not in category or "name" not in category:
                raise UserError(f"--coco-json {self.path} (categories[{index}]): a category needs 'id' and 'name'")
            contiguous = by_name.get(normalize_class_name(str(category["name"])))
            if contiguous is not None:
                mapping[contiguous] = category["id"]
        if not mapping:
            raise UserError(f"--coco-json {self.path}: none of its categories "
                            f"({', '.join(str(c['name']) for c in categories[:8])}) is a class of the model "
                            f"({', '.join(class_names[:8])})")
        missing = [name for i, name in enumerate(class_names) if i not in mapping]
        if missing:
            logger.warning(f"--coco-json {self.path} has no category {', '.join(missing)}: those detections are left "
                           f"out of results.json")
        return mapping

    def image_id(self, file_path: str) -> Optional[int]:
        """The json's id of the image at ``file_path``, matched by file name (by the end of the path when several
        json images share the name); None when the json does not list it."""
        candidates = self._by_name.get(os.path.basename(file_path), [])
        if len(candidates) > 1:
            path = _norm_path(os.path.abspath(file_path))
            candidates = [c for c in candidates if path.endswith("/" + _norm_path(c["file_name"]).lstrip("/"))]
        return candidates[0]["id"] if len(candidates) == 1 else None
