"""Tests of xlpy.fakexen."""
