"""Calibration: decision-threshold strategies and distance -> probability maps, fitted on
validation pairs."""
