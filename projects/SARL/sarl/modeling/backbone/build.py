"""The registered builder of the full feature extractor: CSPDarknet -> SARLRelay -> YOLOPAFPN.

    MODEL.BACKBONE.NAME: build_sarl_cspdarknet_pafpn_backbone

reads ``MODEL.CSPDARKNET`` (flavour, size, norm), ``MODEL.SARL`` (relay; ENABLED False makes it
the identity, for the baselines) and ``MODEL.YOLOPAFPN`` (neck), and returns a detectron2
``Backbone`` whose outputs are the neck's ``p3, p4, p5`` (plus ``p2`` with USE_P2). Each of the
three modules is built from the config by its own ``from_config``, as Detectron2's
``build_resnet_fpn_backbone`` chains ResNet and FPN.
"""
from __future__ import annotations

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ..layers import convert_norm
from ..neck.pafpn import YOLOPAFPN
from ..relay import SARLRelay
from .cspdarknet import CSPDarknet

__all__ = ["build_sarl_cspdarknet_pafpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_sarl_cspdarknet_pafpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """CSPDarknet -> SARLRelay -> YOLOPAFPN from ``cfg``; SyncBN everywhere when
    ``MODEL.CSPDARKNET.NORM == "SyncBN"``.

    The backbone returns every level the relay or the neck reads, in addition to
    ``MODEL.CSPDARKNET.OUT_FEATURES`` (so USE_P2 only needs the neck's IN_FEATURES to name dark2).
    """
    needed = list(cfg.MODEL.YOLOPAFPN.IN_FEATURES)
    if cfg.MODEL.SARL.ENABLED:
        needed += list(cfg.MODEL.SARL.IN_FEATURES)
    bottom_up = CSPDarknet(cfg, input_shape, extra_out_features=needed)
    neck = YOLOPAFPN(cfg, SARLRelay(cfg, bottom_up))
    return convert_norm(neck, cfg.MODEL.CSPDARKNET.NORM)
