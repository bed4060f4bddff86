"""The model: DINO ViT variants (one table), the network, and checkpoint loading. Needs torch only.

variants    architectures, patch sizes, official checkpoints, preprocessing constants
vit         the network, with the fast [CLS]-row attention path and the explicit reference path
checkpoint  reading, filtering (a pure function) and strict loading of DINO checkpoints
"""
