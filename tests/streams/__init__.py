"""Crafted broken legacy streams (``*.bin``), their byte builders and the script making them."""
