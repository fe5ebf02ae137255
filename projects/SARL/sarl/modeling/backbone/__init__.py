"""Backbones registered in detectron2's ``BACKBONE_REGISTRY`` (importing this package registers them):
``build_cspdarknet_backbone`` (bare CSPDarknet) and ``build_sarl_cspdarknet_pafpn_backbone`` (the chain)."""
from .build import build_sarl_cspdarknet_pafpn_backbone  # noqa: F401
from .cspdarknet import CSPDarknet, build_cspdarknet_backbone  # noqa: F401
