"""Tests of xlpy.binding."""
