"""DINO Vision Transformer attention: the engine-agnostic core (no model server is imported here).

A request's path, bytes -> tensor -> the method's arrays -> bytes:

    protocols   codecs: a server's row -> ImageRequests (plain, KServe v1/v2) ... AttentionResult -> Reply
    service     AttentionService.explain: options -> image -> tensor -> the method's arrays -> AttentionResult, batched
    methods/    the ways of looking (attention, rollout, ...), one module each, and their registry
    model/      the network (variants table, ViT with the [CLS]-row fast path, rollout, checkpoints)

and what they use, one concept each:

    schema      ImageRequest and AttentionResult: what enters the service and leaves it (the response schema)
    options     the options every method shares, their defaults, and the validation of a request's options
    image       decoding, resizing and cropping (PIL only)
    attention   image -> normalised tensor, last-layer [CLS] maps (the precision probe's measure), upsampling
    masks       DINO's threshold masks, their boxes, the bit-packed encoding masks travel in
    precision   which reduced precisions this device runs natively, decided once at load
    layout      what a model archive holds, by name
    errors      the exceptions a request can end in (with their HTTP status)

``handler/vitscope_handler.py`` adapts this to TorchServe, ``kserve_engine/`` to KServe's model server.
"""
