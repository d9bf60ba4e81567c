"""tarscli: the command-line interface to TARS Self-Coding."""
