"""Hazardous materials: raw cryptographic primitives.

WARNING: the functions here are easy to misuse. Reusing a seed, expanding
one seed to two different lengths or word types, or adding a keystream where
it should be subtracted silently destroys secrecy or correctness, and nothing
here can notice. Only ``tessera.crypto`` (the recipes) and tests may import
this package; the protocol layer and everything above it use the recipes in
``tessera.crypto`` instead (see DESIGN, "Layers").
"""
