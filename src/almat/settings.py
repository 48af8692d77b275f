"""Settings: where almat keeps its data.

One ``BaseSettings`` with the ``ALMAT_`` env prefix, as in atomate2. Values come, in order of
precedence, from keyword arguments, ``ALMAT_*`` environment variables, and a YAML file
(``ALMAT_CONFIG_FILE`` or ``~/.almat.yaml``).

By default everything lives in an embedded SQLite store (``almat.stores.sqlite.SQLiteStore``, one
file ``<database>.sqlite``) under ``./almat_db``. Set ``mongo_uri`` (``ALMAT_MONGO_URI``) to use a MongoDB server instead, with GridFS for
large objects. The URI is a secret: it is never printed, only its host.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from almat.schemas.section import load_yaml

DEFAULT_CONFIG_FILE = "~/.almat.yaml"


class _YamlSource(PydanticBaseSettingsSource):
    """Read settings from the YAML file named by ``ALMAT_CONFIG_FILE`` (or ``~/.almat.yaml``)."""

    def get_field_value(self, field, field_name):  # pragma: no cover - not used by pydantic here
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = Path(os.environ.get("ALMAT_CONFIG_FILE", DEFAULT_CONFIG_FILE)).expanduser()
        if not path.is_file():
            if "ALMAT_CONFIG_FILE" in os.environ:
                raise FileNotFoundError(f"ALMAT_CONFIG_FILE points to a missing file: {path}")
            return {}
        data = load_yaml(path, "settings file", empty={})
        # keys in the file may be written as in the environment (ALMAT_DB_PATH) or as fields
        return {k.lower().removeprefix("almat_"): v for k, v in data.items()}


class AlmatSettings(BaseSettings):
    """Where almat keeps its data, and a few run-time defaults."""

    model_config = SettingsConfigDict(env_prefix="ALMAT_", extra="forbid", validate_default=True)

    db_path: Path = Field(
        Path("almat_db"),
        description="Folder of the embedded SQLite store used when no mongo_uri is set.",
    )
    mongo_uri: SecretStr | None = Field(
        None,
        description="MongoDB connection string. When set, the documents go to MongoDB and large "
        "objects (models, trajectories) to GridFS. Keep credentials in env or the settings file.",
    )
    database: str = Field("almat", description="Database name (MongoDB or embedded).")
    collection_prefix: str = Field(
        "almat", description="Prefix of the campaign collections (structures, labels, ...)."
    )
    jobs_collection: str = Field("jobflow_jobs", description="Collection of jobflow job outputs.")
    data_collection: str = Field(
        "jobflow_data", description="Collection (or GridFS bucket) of large objects."
    )
    mongo_timeout_ms: int = Field(
        5000, description="How long to wait for a MongoDB server before giving up (ms)."
    )
    run_dir: Path = Field(
        Path("almat_runs"), description="Where local runs create their job folders."
    )

    @field_validator("mongo_uri")
    @classmethod
    def _check_uri(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("mongo_uri must start with mongodb:// or mongodb+srv://")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls,
        init_settings,
        env_settings,
        dotenv_settings,
        file_secret_settings,
    ):
        return (init_settings, env_settings, _YamlSource(settings_cls))

    @property
    def embedded(self) -> bool:
        """True when data lives in the embedded SQLite store rather than on a MongoDB server."""
        return self.mongo_uri is None

    @property
    def mongo_host(self) -> str | None:
        """Host (and port) of the MongoDB URI, without credentials: safe to print."""
        if self.mongo_uri is None:
            return None
        netloc = urlsplit(self.mongo_uri.get_secret_value()).netloc
        return netloc.rsplit("@", 1)[-1]

    def describe(self) -> str:
        """One line naming where data lives, never showing credentials."""
        if self.embedded:
            return f"embedded SQLite store at {self.db_path.resolve() / f'{self.database}.sqlite'}"
        return f"MongoDB at {self.mongo_host} [{self.database}]"


def get_settings(**overrides: Any) -> AlmatSettings:
    """Settings from the environment and the settings file, with ``overrides`` on top."""
    return AlmatSettings(**overrides)
