"""Tests of xlpy.backends."""
