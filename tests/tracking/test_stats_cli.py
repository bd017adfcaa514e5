"""``mtaserver stats`` options: --since forms and operator errors."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from mtaserver.cli import main
from mtaserver.tracking.stats import StatsUsageError, parse_since


def test_since_forms() -> None:
    now = 1_800_000_000.0
    assert parse_since(None, now) == 0.0
    assert parse_since("24h", now) == now - 86400
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("2026-11-01", now) == dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()
    assert (
        parse_since("2026-11-01T12:00:00+01:00", now)
        == dt.datetime(2026, 11, 1, 11, tzinfo=dt.UTC).timestamp()
    )
    with pytest.raises(StatsUsageError, match="--since"):
        parse_since("last tuesday", now)


def test_cli_on_an_empty_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "mtaserver.toml"
    cfg.write_text(f"[server]\ndata_dir = '{tmp_path / 'data'}'\n")
    assert main(["stats", "-c", str(cfg), "--json", "--campaign", "x", "--since", "1h"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["accepted"] == 0 and out["rates"]["open_rate"] is None
    assert out["filter"]["campaign"] == "x"
    assert main(["stats", "-c", str(cfg)]) == 0
    assert "unique human" in capsys.readouterr().out
    assert main(["stats", "-c", str(cfg), "--since", "soon"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtaserver: --since:") and "Traceback" not in err
