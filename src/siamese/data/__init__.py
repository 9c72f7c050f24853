"""Dataset sources, image decoding and identity-disjoint splitting."""
