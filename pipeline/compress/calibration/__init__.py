"""Feeding calibration windows through a model one layer at a time, and what is measured on the way."""
