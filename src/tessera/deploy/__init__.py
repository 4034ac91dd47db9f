"""`tessera up`: a whole deployment on loopback, every party its own process."""
