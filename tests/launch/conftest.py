"""Markers of the launch tests (registered here so --strict-markers accepts them)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: needs a running SLURM cluster (bash scripts/slurm/start.sh)")
