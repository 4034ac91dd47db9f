"""A user's node: the agent that registers, consents, pulls its mailbox and trains in the
sandbox.
"""
