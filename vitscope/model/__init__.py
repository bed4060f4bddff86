"""The model: the ViT families (one table), the network with its heads and text tower, and checkpoint
loading. Needs torch only (a text tower's tokenizer: regex, tokenizers).

variants    the architecture table: each family one row (its facts and variants), preprocessing constants
catalogue   the official checkpoints: per family, its licence, download base, gating and files
vit         the network and its heads, with the fast path of the pooling query's row and the explicit reference path
layers      what it is built of: patch projection, FFNs, attention, the block, SigLIP's attention pool
text        CLIP's and SigLIP's text tower
tokenizer   CLIP's BPE and tokenizer.json files -> token ids
position    learned position grids resized as each checkpoint's code does, DINOv3's RoPE
rollout     exact attention rollout in linear memory, and the naive full-matrix reference
checkpoint  reading, filtering (a pure function) and strict loading of checkpoints
kernels     the attention kernel, measured at load
archive time only (not in the .mar): sources (checkpoints as users share them), towers (transformers'
ViT/DeiT/CLIP/SigLIP, timm: and open_clip: specs), keymaps (other libraries' key names -> ours)
"""
