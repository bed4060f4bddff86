"""Test-only support (the service factory the tests share)."""
