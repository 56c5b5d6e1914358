"""The pykka actors of a CADDY node and the ZeroMQ I/O thread that serves them."""
