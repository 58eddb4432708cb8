"""`loyalty serve` as a real process: its logs are JSON lines on stderr at the configured
level, and its live /metrics endpoint counts what it answered.

The process's stdout and stderr go to the suite's log directory (tests/logscan.py), so the
end-of-session scan for card numbers covers them too.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from protocol.framing import encode_frame
from switch import keys
from tests import logscan, promscrape
from tests.conftest import ROOT

START_TIMEOUT_S = 60.0


async def test_serve_logs_json_lines_and_serves_live_metrics(db_url: str, tmp_path: Path
                                                             ) -> None:
    key_file = tmp_path / "keys.json"
    keys.load_or_create(key_file)
    env = {**os.environ, "DATABASE_URL": db_url, "LOYALTY_KEY_FILE": str(key_file),
           "LOYALTY_LISTEN_PORT": "0", "LOYALTY_METRICS_PORT": "0",
           "LOYALTY_LOG_LEVEL": "debug", "LOYALTY_HOLD_SWEEP_INTERVAL_S": "3600"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "switch.cli", "serve", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    stderr = asyncio.create_task(proc.stderr.read())
    try:
        banner = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)).decode()
        assert banner.startswith("switch listening on 127.0.0.1:"), banner
        # switch listening on 127.0.0.1:PORT; metrics on http://127.0.0.1:PORT/metrics
        port = int(banner.split(";")[0].rsplit(":", 1)[1])
        metrics_port = int(banner.rsplit(":", 1)[1].split("/")[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # An 0800 that does not decode: answered 30, counted under the request's MTI (not
        # the 0810's) and logged as a format error.
        writer.write(encode_frame(b"0800" + b"\x00" * 8))
        answer = await asyncio.wait_for(reader.readexactly(2), 10)
        await reader.readexactly(int.from_bytes(answer, "big"))
        writer.close()
        await writer.wait_closed()
        samples = await promscrape.scrape(metrics_port)
        assert samples[("loyalty_messages_total", (("mti", "0800"), ("processing_code", ""),
                                                   ("response_code", "30")))] == 1
        assert samples[("loyalty_db_up", ())] == 1
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out = (await proc.stdout.read()).decode()
        await asyncio.wait_for(proc.wait(), 30)
        err = (await stderr).decode()
        logscan.store_output("loyalty-serve", banner + out, err)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines()]
    events = [line["event"] for line in lines]
    for expected in ("listening", "connection_accepted", "format_error", "shutting_down",
                     "shut_down"):
        assert expected in events, events
    assert all({"ts", "level", "logger", "event"} <= line.keys() for line in lines)
