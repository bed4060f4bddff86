"""DINO Vision Transformer attention: the engine-agnostic core (no model server is imported here).

A request's path, bytes -> tensor -> attention -> bytes:

    protocols   codecs: a server's row -> ImageRequests (plain, KServe v1/v2) ... AttentionResult -> Reply
    service     AttentionService.explain: options -> image -> tensor -> maps -> AttentionResult, batched
    model/      the network (variants table, ViT with the [CLS]-row fast path, checkpoints)

and what they use, one concept each:

    schema      ImageRequest and AttentionResult: what enters the service and leaves it (the response schema)
    options     request options, their defaults and validation
    image       decoding, resizing and cropping (PIL only)
    attention   image -> normalised tensor, the network's [CLS] maps in a given precision
    precision   which reduced precisions this device runs natively, decided once at load
    errors      the exceptions a request can end in (with their HTTP status)

``handler/dino_handler.py`` adapts this to TorchServe.
"""
