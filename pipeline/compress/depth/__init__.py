"""Depth methods: remove or replace whole layers and sublayers."""
