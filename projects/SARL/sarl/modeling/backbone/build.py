"""The registered builder of the full feature extractor: CSPDarknet -> SARLRelay -> YOLOPAFPN.

    MODEL.BACKBONE.NAME: build_sarl_cspdarknet_pafpn_backbone

reads ``MODEL.CSPDARKNET`` (flavour, size, norm), ``MODEL.SARL`` (relay; ENABLED False makes it
the identity, for the baselines) and ``MODEL.YOLOPAFPN`` (neck), and returns a detectron2
``Backbone`` whose outputs are the neck's ``p3, p4, p5`` (plus ``p2`` with USE_P2).
"""
from __future__ import annotations

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ..neck.pafpn import YOLOPAFPN, build_yolopafpn  # noqa: F401  (re-exported)
from ..relay import SARLRelay, build_sarl_relay  # noqa: F401
from .cspdarknet import CSPDarknet, build_cspdarknet_backbone, convert_norm, cspdarknet_from_config  # noqa: F401

__all__ = ["build_sarl_cspdarknet_pafpn_backbone", "build_cspdarknet_backbone", "CSPDarknet",
           "SARLRelay", "YOLOPAFPN"]


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
    bottom_up = cspdarknet_from_config(cfg, input_shape, extra_out_features=needed)
    neck = build_yolopafpn(cfg, build_sarl_relay(cfg, bottom_up))
    return convert_norm(neck, cfg.MODEL.CSPDARKNET.NORM)
