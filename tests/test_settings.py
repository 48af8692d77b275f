import pytest
from pydantic import ValidationError

from almat.settings import AlmatSettings
from secret_uri import SECRET, uri_with_secret


def test_defaults_are_embedded(monkeypatch):
    monkeypatch.delenv("ALMAT_DB_PATH")
    s = AlmatSettings()
    assert s.embedded and s.mongo_uri is None
    assert str(s.db_path) == "almat_db"
    assert "embedded SQLite store at" in s.describe()


def test_env_prefix_and_yaml_file(tmp_path, monkeypatch):
    cfg = tmp_path / "almat.yaml"
    cfg.write_text("database: from_file\nALMAT_COLLECTION_PREFIX: pfx\n")
    monkeypatch.setenv("ALMAT_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("ALMAT_DATABASE", "from_env")
    s = AlmatSettings()
    assert s.database == "from_env"  # env beats the file
    assert s.collection_prefix == "pfx"  # keys may be written as env names


def test_home_settings_file_is_read(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / ".almat.yaml").write_text(f"mongo_uri: {uri_with_secret('db.example.org:27017')}\n")  # a random password
    s = AlmatSettings()
    assert not s.embedded
    assert s.mongo_host == "db.example.org:27017"
    # credentials are never printed
    for text in (repr(s), str(s), s.describe()):
        assert SECRET not in text and "tester:" not in text


def test_unknown_key_and_bad_uri_are_errors(tmp_path, monkeypatch):
    cfg = tmp_path / "almat.yaml"
    cfg.write_text("db_pth: x\n")
    monkeypatch.setenv("ALMAT_CONFIG_FILE", str(cfg))
    with pytest.raises(ValidationError, match="db_pth"):
        AlmatSettings()
    monkeypatch.delenv("ALMAT_CONFIG_FILE")
    with pytest.raises(ValidationError, match="mongodb://"):
        AlmatSettings(mongo_uri="http://nope")


def test_missing_config_file_named(tmp_path, monkeypatch):
    monkeypatch.setenv("ALMAT_CONFIG_FILE", str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        AlmatSettings()
