"""Horovod, written once for both frameworks (the communicator), and the process's surroundings."""
