"""The model: DINO, DINOv2 and DINOv3 ViT variants (one table), the network, and checkpoint loading. Needs torch only.

variants    the architecture table: each family one row (its facts and variants), preprocessing constants
catalogue   the official checkpoints: per family, its licence, download base, gating and files
vit         the network, with the fast [CLS]-row attention path and the explicit reference path
position    learned position grids resized as DINO/DINOv2 do them, DINOv3's RoPE
rollout     exact attention rollout in linear memory, and the naive full-matrix reference
checkpoint  reading, filtering (a pure function) and strict loading of checkpoints
kernels     the attention kernel, measured at load
archive time only (not in the .mar): sources (checkpoints as users share them), keymaps (timm's,
transformers' and a family's own key names -> ours)
"""
