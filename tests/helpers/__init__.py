"""Builders and runners the test modules share (pytest fixtures stay in ``tests/conftest.py``)."""
