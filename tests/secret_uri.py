"""MongoDB URIs that carry a throw-away password, made at run time, for tests that check the password is
never printed. No credential is written in the source: the password is random for every test run."""

import secrets

SECRET = secrets.token_hex(8)


def uri_with_secret(host: str, scheme: str = "mongodb") -> str:
    """``scheme://tester:<SECRET>@host/``."""
    return f"{scheme}://" + "tester:" + SECRET + f"@{host}/"
