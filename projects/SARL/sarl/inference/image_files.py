"""The image and video files a user names: paths, folders and glob patterns."""
from __future__ import annotations

import glob
import os
from typing import List, Sequence

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "expand_inputs", "is_video"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


def is_video(path: str) -> bool:
    """Whether ``path`` names a video file (by its extension)."""
    return path.lower().endswith(VIDEO_EXTENSIONS)


def expand_inputs(inputs: Sequence[str]) -> List[str]:
    """Files from paths, folders (their images and videos, sorted) and glob patterns.

    Raises FileNotFoundError naming the argument (as ``--input``) for a missing path, a pattern matching nothing,
    or inputs that come to no file at all (an empty folder).
    """
    files: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            files += sorted(os.path.join(item, f) for f in os.listdir(item)
                            if f.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS))
        elif any(c in item for c in "*?["):
            matched = sorted(f for f in glob.glob(item, recursive=True) if os.path.isfile(f))
            if not matched:
                raise FileNotFoundError(f"--input {item!r} matches no file")
            files += matched
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise FileNotFoundError(f"--input {item!r} does not exist")
    if not files:
        raise FileNotFoundError(f"--input {' '.join(inputs)}: no image or video file there (looked for "
                                f"{' '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)})")
    return files
