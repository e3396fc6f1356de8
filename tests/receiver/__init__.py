"""Tests of xlpy.receiver."""
