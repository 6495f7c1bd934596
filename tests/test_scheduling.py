"""The test suite's own scheduling under `pytest -n` (tests/conftest.py)."""

from __future__ import annotations

from tests.helpers import module_fixture_users


def test_the_tests_sharing_a_module_fixture_are_found():
    """They run on one worker together, so the fixture is computed once."""
    users = module_fixture_users("tests/test_class_names.py")
    assert "test_fine_tune_records_the_folders_class_names" in users  # `trained`
    assert "test_arrays_record_nothing_and_keep_the_numbers" not in users
    # Through a fixture that requests one: `trained` requests `work`.
    cli = module_fixture_users("tests/test_cli_e2e.py")
    assert {
        "test_train_writes_a_complete_run_folder",
        "test_bad_config_exits_2_without_traceback",
    } <= cli
    assert module_fixture_users("tests/test_schedule.py") == frozenset()
    assert module_fixture_users("tests/no_such_module.py") == frozenset()
