"""Tests of xlpy.receiver.domains."""
