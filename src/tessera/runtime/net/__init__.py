"""Services over the network: coordinator, data provider, node agent; TLS and server helpers."""
