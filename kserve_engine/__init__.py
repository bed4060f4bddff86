"""The same attention core on KServe's own model server (``kserve.ModelServer``), without TorchServe.

``model.py``: ``AttentionModel``, a ``kserve.Model`` whose preprocess/predict/postprocess are thin
over ``vitscope`` (the KServe v1/v2 codecs and ``AttentionService``), so its answers are the
TorchServe route's byte for byte. ``__main__.py``: the entry point (``python -m kserve_engine``).
Needs the ``kserve`` extra (requirements-kserve.txt); the TorchServe path never imports this package.
"""
