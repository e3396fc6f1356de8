"""Tests of xlpy.stream."""
