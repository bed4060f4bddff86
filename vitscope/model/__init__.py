"""The model: DINO, DINOv2 and DINOv3 ViT variants (one table), the network, and checkpoint loading. Needs torch only.

variants    architectures, patch sizes, official checkpoints, preprocessing constants, licences
vit         the network, with the fast [CLS]-row attention path and the explicit reference path
position    learned position grids resized as DINO/DINOv2 do them, DINOv3's RoPE
rollout     exact attention rollout in linear memory, and the naive full-matrix reference
checkpoint  reading, filtering (a pure function) and strict loading of checkpoints
"""
