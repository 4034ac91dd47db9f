"""The coordinator's room: its HTTP API, its business logic, and one event-sourced driver per
running job.
"""
