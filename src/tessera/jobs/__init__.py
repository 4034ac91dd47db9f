"""Shared vocabulary of a job, below every runtime: its prepared form, its signed document,
its round records.
"""
