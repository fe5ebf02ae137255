"""The image files a user names: paths, folders and glob patterns."""
from __future__ import annotations

import glob
import os
from typing import List, Sequence

__all__ = ["IMAGE_EXTENSIONS", "expand_inputs"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def expand_inputs(inputs: Sequence[str]) -> List[str]:
    """Files from image paths, folders (their images, sorted) and glob patterns; a missing path or a pattern
    matching nothing raises FileNotFoundError naming it (as ``--input``)."""
    files: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            files += sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS))
        elif any(c in item for c in "*?["):
            matched = sorted(glob.glob(item, recursive=True))
            if not matched:
                raise FileNotFoundError(f"--input {item!r} matches no file")
            files += matched
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise FileNotFoundError(f"--input {item!r} does not exist")
    return files
