"""Where alert messages go: Slack's Web API, an incoming webhook, or only the log.

Each sender's ``send(text)`` delivers one message or raises; :mod:`stockex.alerts` calls it
from its worker thread only. The Slack senders escape ``&``, ``<`` and ``>`` as Slack requires
(:func:`slack_text`): route rules (``/orders/<int:order_id>``), tracebacks (``<module>``) and
error messages hold them, and Slack reads ``<...>`` as a link or a mention (``<!channel>``).
Slack answering 429 is retried after its Retry-After by slack-sdk's
``RateLimitErrorRetryHandler`` (twice), a dropped connection once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from stockex.config import Settings

log = logging.getLogger("stockex.alerts")

SLACK_TIMEOUT_SECONDS = 5


def slack_text(text: str) -> str:
    """``text`` with ``&``, ``<`` and ``>`` written as Slack's three entities, except a ``>``
    that starts a line: the alert's own quote marker."""
    lines = text.replace("&", "&amp;").replace("<", "&lt;").split("\n")
    return "\n".join(
        line[:1] + line[1:].replace(">", "&gt;") if line.startswith(">")
        else line.replace(">", "&gt;")
        for line in lines
    )


class Sender(Protocol):
    #: True when messages only go to the log (no Slack configured).
    log_only: bool

    def send(self, text: str) -> None:
        """Deliver ``text`` or raise."""


class AlertDeliveryError(RuntimeError):
    """Slack did not accept a message."""


class LogSender:
    """No Slack configured: the alert is written to the log, and that is all."""

    log_only = True

    def send(self, text: str) -> None:
        # The summary at ERROR; the traceback only at DEBUG, so a CLI's stderr stays readable.
        summary, _, trace = text.partition("```")
        log.error("ALERT %s", summary.rstrip())
        if trace:
            log.debug("ALERT traceback:\n%s", trace.rstrip("`\n"))


def _retry_handlers() -> list[Any]:
    from slack_sdk.http_retry.builtin_handlers import (
        ConnectionErrorRetryHandler,
        RateLimitErrorRetryHandler,
    )

    return [ConnectionErrorRetryHandler(max_retry_count=1), RateLimitErrorRetryHandler(2)]


class SlackApiSender:
    """``chat.postMessage`` with a bot token."""

    log_only = False

    def __init__(self, token: str, channel: str, base_url: str = "") -> None:
        from slack_sdk import WebClient

        kwargs: dict[str, Any] = {"base_url": base_url} if base_url else {}
        self.client = WebClient(
            token=token, timeout=SLACK_TIMEOUT_SECONDS, retry_handlers=_retry_handlers(), **kwargs
        )
        self.channel = channel

    def send(self, text: str) -> None:
        # SlackApiError (ok=false) and transport errors propagate to the worker, which logs them.
        self.client.chat_postMessage(
            channel=self.channel, text=slack_text(text), unfurl_links=False, unfurl_media=False
        )


class SlackWebhookSender:
    """An incoming webhook."""

    log_only = False

    def __init__(self, url: str) -> None:
        from slack_sdk.webhook import WebhookClient

        self.client = WebhookClient(
            url, timeout=SLACK_TIMEOUT_SECONDS, retry_handlers=_retry_handlers()
        )

    def send(self, text: str) -> None:
        response = self.client.send(
            text=slack_text(text), unfurl_links=False, unfurl_media=False
        )
        if response.status_code != 200:
            raise AlertDeliveryError(f"webhook answered {response.status_code}")


def sender_for(settings: Settings) -> Sender:
    slack = settings.slack
    if slack.token:
        return SlackApiSender(slack.token, slack.channel, slack.base_url)
    if slack.webhook_url:
        return SlackWebhookSender(slack.webhook_url)
    return LogSender()
