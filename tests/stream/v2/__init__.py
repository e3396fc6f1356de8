"""Tests of xlpy.stream.v2."""
