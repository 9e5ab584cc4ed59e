"""cache.py: one folder for what medcore downloads, converts or initialises."""
from medcore.cache import cache_dir


def test_medcore_cache_names_the_folder_and_it_is_created(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCORE_CACHE", str(tmp_path / "new" / "cache"))
    assert cache_dir() == tmp_path / "new" / "cache" and (tmp_path / "new" / "cache").is_dir()


def test_without_medcore_cache_it_is_under_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for unset in (lambda: monkeypatch.delenv("MEDCORE_CACHE", raising=False),
                  lambda: monkeypatch.setenv("MEDCORE_CACHE", "")):  # empty counts as unset
        unset()
        assert cache_dir() == tmp_path / ".cache" / "medcore" and cache_dir().is_dir()
