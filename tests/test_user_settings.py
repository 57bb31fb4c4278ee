"""Page settings are stored with the history, per user, by a named migration."""

from __future__ import annotations

from vlassist.store.history import MIGRATIONS, History


def test_settings_are_saved_per_user_and_survive_reopening(tmp_path):
    """Each owner reads back only what they saved, also after the history is closed and opened again."""
    history = History.open(tmp_path)
    alice, bob = history.for_owner("alice"), history.for_owner("bob")
    assert alice.get_settings() == {}
    alice.save_settings({"opt_max_new_tokens": 256, "opt_decoding": "Creative"})
    bob.save_settings({"opt_max_new_tokens": 2048})
    alice.save_settings({"opt_max_new_tokens": 512, "opt_decoding": "Creative"})
    history.close()
    history = History.open(tmp_path)
    try:
        assert history.for_owner("alice").get_settings() == {"opt_max_new_tokens": 512, "opt_decoding": "Creative"}
        assert history.for_owner("bob").get_settings() == {"opt_max_new_tokens": 2048}
    finally:
        history.close()


def test_settings_table_comes_from_a_named_migration():
    """The settings table is added by its own named step at the end of the ordered migrations."""
    names = [name for name, _ in MIGRATIONS]
    assert "005_user_settings" in names and names.index("005_user_settings") == 4
