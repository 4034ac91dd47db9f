"""What crosses the network: envelopes for the mailbox, the HTTP client, signed requests,
serving and TLS.
"""
