"""Tests of xlpy.stream.legacy."""
