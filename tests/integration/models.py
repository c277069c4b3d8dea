"""The bundles of tests/bundles_testlib.py under their former name.

Kept while integration tests written on other branches (resilience: test_faults, test_lost_node,
test_many_models) still import them from here; remove once those import tests.bundles_testlib.
"""

from tests.bundles_testlib import build_meta_graph, corrupt_version, write_version

__all__ = ["build_meta_graph", "corrupt_version", "write_version"]
