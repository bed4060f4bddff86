"""DINO Vision Transformer attention: the engine-agnostic core of the serving package.

Submodules (one concept each):
    variants    the table of model variants and constants (dims, heads, mean/std, names)
    vit         the network, with a fast CLS-row attention path
    checkpoint  DINO checkpoint filtering and strict loading
    image       image decoding, resizing and cropping (PIL only)
    options     request options and their validation
    request     turning a request payload (raw, multipart, JSON) into bytes + options
    attention   preprocessing to tensors and CLS-attention extraction
    encoding    response encoding
    errors      the exceptions a request can end in (with their HTTP status)
    service     the pipeline tying them together for a batch of requests

This package does not import TorchServe; the handler in ``handler/`` is a thin adapter.
"""
