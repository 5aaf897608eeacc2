"""The supervisor (the `hermesd` parent process) and the `hermesd` command line."""
