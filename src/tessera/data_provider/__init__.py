"""The data provider's room: its HTTP service (catalogue, preprocessing, consented records)
and durable gate state.
"""
