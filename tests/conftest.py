pytest_plugins = ["labfixtures"]

# The longest lab modules first (from a whole run's --durations), so that the two lanes of
# scripts/test.sh (pytest-xdist, one module per lane at a time) end together: a long module picked
# up last would leave one lane running it alone. Modules not named keep their order, after these.
LONGEST_FIRST = [
    "test_serve_cpu_demo.py",
    "test_fleet_lifecycle.py",
    "test_serve_supervisor.py",
    "test_model_fanout_lab.py",
    "test_roles.py",
    "test_serve_tiny_dsv3.py",
    "test_model_download_lab.py",
    "test_gpu_check_lab.py",
    "test_bundle_lab.py",
]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
