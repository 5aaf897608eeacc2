"""Benchmarks of hermesd against supervisord and circus running the same gateways.

Run `python -m bench` (full run, about 15 minutes on 2 cores) or `python -m bench --quick`
(a smoke run of under a minute). Results go to `bench/results/` as JSON and as a table.
"""
