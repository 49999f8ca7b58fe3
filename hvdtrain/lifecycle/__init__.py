"""After training: evaluate a finished run, predict with it, export it, convert it to the other framework."""
