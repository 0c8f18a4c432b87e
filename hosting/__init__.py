"""Running parts of the stack as a process: its log lines, stop signals, waiting, orderly stop."""
