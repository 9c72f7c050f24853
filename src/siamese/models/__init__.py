"""Encoders: one network shared by both branches of the Siamese twin."""
