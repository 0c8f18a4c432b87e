"""Sending one-time codes: by SMTP when configured, to the log in development."""

from __future__ import annotations

import asyncio
import logging
import smtplib
from email.message import EmailMessage

from settings.config import AuthSettings, secret

log = logging.getLogger("vagent.edge.mail")


class MailError(Exception):
    """The code could not be handed to the SMTP server (unreachable, refused, timed out)."""


def verification_mode(settings: AuthSettings) -> str:
    """"smtp", "log" or "off" (see AuthSettings.email_verification)."""
    mode = settings.email_verification
    if mode == "auto":
        return "smtp" if settings.smtp.host else "off"
    if mode not in ("smtp", "log", "off"):
        raise ValueError(f"auth.email_verification={mode!r}: expected auto, smtp, log or off")
    return mode


async def send_code(settings: AuthSettings, to: str, code: str) -> None:
    mode = verification_mode(settings)
    if mode == "log":
        log.warning("email verification code for %s: %s (auth.email_verification = \"log\")", to, code)
    elif mode == "smtp":
        try:
            await asyncio.to_thread(_smtp_send, settings, to, code)
        except (OSError, smtplib.SMTPException) as exc:  # socket errors and timeouts are OSErrors
            raise MailError(f"{settings.smtp.host}:{settings.smtp.port}: {exc}") from exc


def _smtp_send(settings: AuthSettings, to: str, code: str) -> None:
    smtp = settings.smtp
    message = EmailMessage()
    message["From"] = smtp.sender
    message["To"] = to
    message["Subject"] = f"Your vagent code: {code}"
    message.set_content(f"Your vagent verification code is {code}.\n"
                        f"It expires in {int(settings.code_ttl // 60)} minutes.\n")
    assert smtp.host
    with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout) as client:
        if smtp.starttls:
            client.starttls()
        if smtp.username:
            client.login(smtp.username, secret(smtp.password_env) or "")
        client.send_message(message)
