"""Helpers the tests share: real servers and processes, the test model, checks on answers.

Fixtures live in tests/conftest.py; these are plain functions and classes they (and tests) use."""
