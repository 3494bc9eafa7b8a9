"""Benchmarks of nodehost against the engines a user would pick instead (not tests).

Run from the repository root: `.venv/bin/python -m bench` (`--quick` for a short pass,
`--help` for the options). See the "Benchmarks" section of README.md.
"""
