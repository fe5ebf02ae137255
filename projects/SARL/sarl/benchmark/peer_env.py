"""The scratch virtual environment of the real-data benchmark's peer (Ultralytics is not a project dependency).

It reuses the project's torch through a ``.pth`` file that adds the project's site-packages after its own, and
gets ``ultralytics`` plus the light dependencies the project lacks with ``pip install --no-deps`` (nothing
installed there can shadow or remove a package of the project's environment). The peer's process runs offline
(:func:`offline_env`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Any, Dict, List, Sequence

ULTRALYTICS_VERSION = "8.4.190"
# Requirements of ultralytics that the peer never needs on CPU (and their own dependency trees): the Platform
# client (only with an API key) and NVML bindings (GPU statistics).
PEER_SKIPPED_REQUIREMENTS = ("ultralytics-platform", "nvidia-ml-py")


def _site_packages(python: str) -> List[str]:
    code = ("import json, site, sysconfig; "
            "print(json.dumps([sysconfig.get_paths()['purelib'], *site.getsitepackages()]))")
    paths = json.loads(subprocess.check_output([python, "-c", code], text=True))
    return list(dict.fromkeys(p for p in paths if os.path.isdir(p)))


def peer_python(env_dir: str) -> str:
    return os.path.join(env_dir, "bin", "python")


_MISSING_REQUIREMENTS = r"""
import json, sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
skip = set(json.loads(sys.argv[1]))
root = sys.argv[2]
OPENCV = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")
todo, done, missing = [root], set(), []
while todo:
    dist = todo.pop()
    if dist in done:
        continue
    done.add(dist)
    for text in metadata.requires(dist) or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = req.name.lower().replace("_", "-")
        if key in skip:
            continue
        # Any OpenCV wheel provides cv2 (the project has opencv-python-headless): do not add a second one.
        names = [req.name] + ([n for n in OPENCV if n != key] if key in OPENCV else [])
        version = None
        for name in names:
            try:
                version = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                pass
        if version is None:
            missing.append(str(req))
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(str(req))
            continue
        # Recurse only into what this environment installed itself: the project's packages (torch, ...) and
        # their own requirements are the project's environment's business.
        if str(metadata.distribution(name).locate_file("")).startswith(sys.prefix):
            todo.append(name)
print(json.dumps(sorted(set(missing))))
"""


def ensure_peer_env(env_dir: str, project_python: str, log: Any = print, package: str = "ultralytics",
                    version: str = ULTRALYTICS_VERSION,
                    skipped_requirements: Sequence[str] = PEER_SKIPPED_REQUIREMENTS) -> str:
    """Create (or reuse) the peer's virtual environment in ``env_dir``; returns its python.

    The environment sees the project's site-packages (torch, numpy, opencv, ...) after its own, through a
    ``.pth`` that calls ``site.addsitedir`` (so the project's own ``.pth`` files, e.g. editable installs, work
    too). ``package==version`` (default Ultralytics; ``tools/benchmark_sliced.py`` gets SAHI this way) and every
    requirement that the combined environment does not satisfy, less ``skipped_requirements``, are installed into
    ``env_dir`` with ``pip install --no-deps --ignore-installed`` (a requirement on numpy, torch or torchvision
    that the project's versions miss is an error: a second copy in the peer environment would shadow the
    project's, which its compiled packages are built against).
    """
    python = peer_python(env_dir)
    if not os.path.exists(python):
        log(f"creating the peer environment {env_dir}")
        subprocess.check_call([project_python, "-m", "venv", env_dir])
    own = _site_packages(python)[0]
    project_sites = [p for p in _site_packages(project_python) if p != own]
    with open(os.path.join(own, "_sarl_project_site.pth"), "w") as f:
        for path in project_sites:
            f.write(f"import site; site.addsitedir({path!r})\n")
    pip = [python, "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-input",
           "--disable-pip-version-check", "-q"]
    installed = subprocess.run([python, "-c", f"from importlib.metadata import version; print(version({package!r}))"],
                               capture_output=True, text=True).stdout.strip()
    if installed != version:
        log(f"installing {package}=={version} (no dependencies) into {env_dir}")
        subprocess.check_call(pip + [f"{package}=={version}"])
    for _ in range(6):  # each round installs what the previous round's packages require
        missing = json.loads(subprocess.check_output(
            [python, "-c", _MISSING_REQUIREMENTS, json.dumps(list(skipped_requirements)), package], text=True))
        if not missing:
            return python
        heavy = [r for r in missing
                 if re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() in ("numpy", "torch", "torchvision")]
        if heavy:
            raise RuntimeError(f"the project's environment does not satisfy {heavy} for {package}; install "
                               f"matching versions in the project, not in the peer environment")
        log(f"installing into the peer environment (no dependencies): {' '.join(missing)}")
        subprocess.check_call(pip + missing)
    raise RuntimeError(f"the peer environment still lacks requirements after 6 rounds: {missing}")


def offline_env(config_dir: str, threads: int) -> Dict[str, str]:
    """Environment variables of the peer's process: no network, settings and fonts in ``config_dir``, the
    thread count. ``config_dir/Ultralytics`` (Ultralytics' USER_CONFIG_DIR) gets ``Arial.ttf`` (a copy of
    matplotlib's DejaVu Sans) so that Ultralytics' ``check_font`` finds it instead of downloading it."""
    user_dir = os.path.join(config_dir, "Ultralytics")
    os.makedirs(user_dir, exist_ok=True)
    font = os.path.join(user_dir, "Arial.ttf")
    if not os.path.exists(font):
        try:
            import matplotlib

            source = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
            shutil.copyfile(source, font)
        except (ImportError, OSError):
            pass  # check_font then tries the download once (offline: fails, no plot text; plots are off anyway)
    env = {
        "YOLO_OFFLINE": "1",  # ultralytics.utils.is_online() -> False: no update check, no events, no Sentry
        "YOLO_CONFIG_DIR": config_dir,  # settings.json (the worker turns sync off) and fonts live here
        "YOLO_VERBOSE": "True",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "HUB_API_KEY": "",
        "ULTRALYTICS_API_KEY": "",
        "WANDB_MODE": "disabled",
        "COMET_MODE": "disabled",
    }
    return env
