"""SARL: Scale-Aware Relay Layer and Scale-Adaptive Loss for tiny object detection.

The top-level package imports nothing heavy: ``sarl.ops`` (the fused operators) works
without detectron2; ``sarl.modeling``, ``sarl.data``, ``sarl.evaluation`` and
``sarl.engine`` need detectron2.
"""

__version__ = "0.1.0"
