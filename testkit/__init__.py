"""Constructed inputs and private servers shared by the tests, the benchmarks and the scripts.

    checkpoints   small random models in every layout we load, and test images
    clips         synthetic video clips (PyAV)
    handler       the TorchServe handler called in process (TorchServe's own Context, no Java)
    torchserve    a private TorchServe: free loopback ports, its own temp dir, always stopped

Never archived into a .mar: the served core (``vitscope``) does not import it.
"""
