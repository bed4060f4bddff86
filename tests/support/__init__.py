"""Test support: a private TorchServe, small checkpoints and images."""
