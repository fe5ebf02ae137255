"""Benchmarks of the project, the library behind ``tools/benchmark_*.py`` and ``tools/ablation.py``: kernel timings
(``sal``, ``relay``, ``assign`` with ``common``), evaluation and mapper speed, the real-data comparison with
Ultralytics (``real_*``, ``kit_split``, ``yolo_layout``, ``peer_*``) and the ablation grid (``ablation*``).

Imports nothing: the peer's worker (``peer_worker``) runs in an environment where only the standard library is
certain, and each tool imports the modules it needs.
"""
