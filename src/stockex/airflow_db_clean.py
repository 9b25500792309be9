"""Slack for docker-compose's ``airflow-db-clean`` service: ``python -m stockex.airflow_db_clean
COMMAND...`` runs ``COMMAND`` (its daily ``airflow db clean ...``) and reports how it ended.

Airflow 3 lets no task reach its own metadata database, so that cleanup runs outside the
DAGs, in a shell loop, and its failures reached only the service's log. Run through this:

* the command's output (stdout and stderr, merged) passes through to stdout as it comes;
* a non-zero exit status, or a command that cannot be started, alerts source
  ``airflow-db-clean`` (service ``stockex-airflow``) with the status and the end of the
  output, like any other failure of the platform (cooldown, redaction: :mod:`stockex.alerts`);
* an exit status 0 resolves that incident, if one is open. Each run is a process of its own:
  only with ``redis.url`` set (as in compose) does a later run know an earlier one failed;
* the exit status is the command's (127 when it cannot be started).

Settings are read as the DAGs' callbacks read them: when the configuration is invalid, its
slack, redis and timezone sections alone (:func:`stockex.alerts._settings`).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections import deque
from collections.abc import Sequence

from stockex import alerts
from stockex.logs import configure_logging

SOURCE = "airflow-db-clean"
#: The end of the command's output in the alert: at most these lines and characters (an
#: alert's message is cut after 1000 characters, at its end: where the error is).
TAIL_LINES = 15
TAIL_CHARS = 800
EXIT_CANNOT_START = 127  # as a shell says for a command it cannot find

#: The error type the alert names for a non-zero exit status (its fingerprint's second half).
FAILED = "AirflowDbCleanFailed"


def run_and_report(command: Sequence[str]) -> int:
    """Run ``command``, pass its output through, alert or resolve (see module doc); returns
    its exit status. Never raises for the command's failures."""
    context = {"command": shlex.join(command)}
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        process = subprocess.Popen(  # noqa: S603 - the service's own command line
            list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            errors="replace",
        )
    except OSError as exc:
        print(f"airflow-db-clean: cannot run {command[0]!r}: {exc}", file=sys.stderr,
              flush=True)
        _report(alerts.error_type_name(exc), f"cannot run {command[0]!r}: {exc}", context)
        return EXIT_CANNOT_START
    assert process.stdout is not None  # noqa: S101 - stdout=PIPE
    with process:
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line.rstrip("\n"))
    status = process.returncode
    if status == 0:
        _report(None, "", context)
    else:
        output = "\n".join(tail) or "(no output)"
        if len(output) > TAIL_CHARS:
            output = "…" + output[-TAIL_CHARS:]
        _report(FAILED, f"{command[0]} exited with status {status}; the end of its output:\n"
                        f"{output}", context)
    return status


def _report(error_type: str | None, message: str, context: dict[str, str]) -> None:
    """Alert ``error_type`` (None: resolve) and wait for the delivery: the process ends."""
    if error_type is None:
        alerts.resolve(SOURCE, service=alerts.SERVICE_AIRFLOW, context=context)
    else:
        alerts.alert(SOURCE, error_type, message, context, service=alerts.SERVICE_AIRFLOW)
    alerts.flush(alerts.AIRFLOW_FLUSH_SECONDS)


def main(argv: Sequence[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if not command:
        print("usage: python -m stockex.airflow_db_clean COMMAND [ARG...]", file=sys.stderr)
        return 2
    configure_logging()
    return run_and_report(command)


if __name__ == "__main__":
    sys.exit(main())
