"""Runtimes carry out the protocol's effects: in-process (sim) or over the network."""
