"""Tests of xlpy.cli."""
