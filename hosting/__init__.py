"""Running parts of the stack as a process: stop signals, waiting, orderly stop."""
