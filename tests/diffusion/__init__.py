"""Tests of mmrl.diffusion (a package so that test_tiny.py does not clash with tests/models/test_tiny.py)."""
