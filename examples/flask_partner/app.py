"""A partner service on Flask that calls `MailboxFlow.handle_webhook` from its own route.

    export MAILBOX_FLOW_MAILIVERY_API_KEY=... MAILBOX_FLOW_WEBHOOK_SECRET=...
    flask --app examples/flask_partner/app.py run
"""

from __future__ import annotations

from typing import Any

from flask import Flask, abort, request

from mailbox_flow import (
    DuplicateMailbox,
    InvalidInput,
    MailboxFlow,
    MailiveryError,
    Outcome,
    WebhookAuthError,
    WebhookPayloadError,
)

MAX_BODY = 64 * 1024


def build_app(flow: MailboxFlow) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY  # Flask answers 413 beyond this

    @app.post("/hooks/mailivery/<secret>")
    def mailivery_webhook(secret: str) -> tuple[dict[str, Any], int]:
        try:
            result = flow.handle_webhook(request.get_data(), secret=secret)
        except WebhookAuthError:
            return {"error": "unauthorized"}, 401
        except WebhookPayloadError as exc:
            return {"error": "invalid_payload", "detail": exc.message}, 400
        status = 202 if result.outcome is Outcome.DEFERRED else 200
        return {"outcome": result.outcome.value}, status

    @app.post("/users/<user_id>/outlook")
    def connect_outlook(user_id: str) -> tuple[dict[str, Any], int]:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            abort(400)
        try:
            mailbox = flow.request_connection(owner_id=user_id, email=str(data.get("email", "")),
                                              first_name=str(data.get("first_name", "")))
        except InvalidInput as exc:
            return {"field": exc.field, "message": exc.message}, 422
        except DuplicateMailbox:
            return {"error": "already connecting"}, 409
        except MailiveryError:
            return {"error": "Mailivery is unavailable"}, 502
        return {"mailbox_id": str(mailbox.id), "redirect_to": mailbox.oauth_url}, 201

    return app


def create_app() -> Flask:
    """For `flask --app examples/flask_partner/app.py run`: configuration from MAILBOX_FLOW_*."""
    flow = MailboxFlow()
    flow.create_schema()
    return build_app(flow)
