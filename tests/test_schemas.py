"""Pure Mailivery parsing and validation: `mailbox_flow.mailivery.schemas`."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailbox_flow.errors import InvalidInput, MailiveryResponseError, WebhookPayloadError
from mailbox_flow.mailivery import (
    CORRELATION_META_KEY,
    Campaign,
    ConnectResult,
    WebhookEvent,
    normalize_email,
    parse_meta,
    parse_webhook,
    validate_connect,
    validate_meta,
)

# -- the documented webhook examples (mailivery-api.md §3) --------------------------------------

PENDING = {
    "type": "campaign.pending",
    "action": "pending",
    "account": {
        "campaign_id": 198,
        "first_name": "John",
        "lalst_name": "Doe",
        "email": "John.Doe@Contoso.com",
        "provider_type": "office",
        "tags": ["worthcoding", "97694201"],
        "meta": "meta=4dd49f4f84e4d6945e3bc6d14812004e&tags=97694201,%20worthcoding",
    },
}
CREATED = {
    "type": "campaign.created",
    "action": "created",
    "account": {
        "campaign_id": 203,
        "first_name": "Jane",
        "last_name": "Roe",
        "email": "jane@gmail.com",
        "provider_type": "gmail",
        "tags": [],
        "meta": None,
    },
}
UPDATED = {
    "type": "campaign.updated",
    "action": "updated",
    "account": {
        "campaign_id": 216,
        "first_name": "Max",
        "last_name": "Mustermann",
        "email": "max@example.de",
        "meta": "",
    },
}
DELETED = {
    "type": "campaign.deleted",
    "action": "deleted",
    "account": {
        "campaign_id": 198,
        "first_name": "John",
        "last_name": "Doe",
        "email": "john.doe@contoso.com",
        "type": "smtp",
        "meta": None,
    },
}


def _connect(**overrides: Any) -> dict[str, str]:
    kwargs: dict[str, Any] = {
        "first_name": "Ada",
        "last_name": "Lovelace",
        "email": "ada@contoso.com",
        "email_per_day": 40,
        "response_rate": 30,
    }
    kwargs.update(overrides)
    return validate_connect(**kwargs)


# -- normalize_email ----------------------------------------------------------------------------


class TestNormalizeEmail:
    def test_strips_and_lowercases(self) -> None:
        """Surrounding whitespace goes and the address is lowercased."""
        assert normalize_email("  Ada@Contoso.COM \n") == "ada@contoso.com"

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "   ",
            "ada",
            "ada@",
            "@contoso.com",
            "ada@contoso",
            "ada@@contoso.com",
            "a@b@contoso.com",
            "ada lovelace@contoso.com",
            "ada@contoso..com",
            "ada@.contoso.com",
            "ada@contoso.com.",
            "ada@-contoso.com",
            "ada\x00@contoso.com",
            "ada\u200b@contoso.com",
            "<ada>@contoso.com",
            "ada@contoso.com" + "m" * 250,
            "a" * 65 + "@contoso.com",
        ],
    )
    def test_rejects_bad_syntax(self, value: str) -> None:
        """Malformed addresses raise InvalidInput naming the field."""
        with pytest.raises(InvalidInput) as info:
            normalize_email(value, "owner_email")
        assert info.value.field == "owner_email"

    def test_rejects_non_string(self) -> None:
        """A non-string raises InvalidInput, not TypeError."""
        with pytest.raises(InvalidInput):
            normalize_email(42)  # type: ignore[arg-type]

    def test_accepts_at_most_255_chars(self) -> None:
        """255 characters is allowed (the documented limit)."""
        email = "a" * 64 + "@" + "b" * 61 + "." + "c" * 61 + "." + "d" * 63 + ".co"
        assert len(email) == 255
        assert email == normalize_email(email)

    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(st.text(), st.binary(), st.integers(), st.none(), st.floats()))
    def test_only_ever_raises_invalid_input(self, value: Any) -> None:
        """Arbitrary input gives a normalized string or InvalidInput, nothing else."""
        try:
            result = normalize_email(value)
        except InvalidInput as exc:
            assert exc.field == "email"
        else:
            assert result == result.strip().lower()
            assert result.count("@") == 1


# -- validate_connect ---------------------------------------------------------------------------


class TestValidateConnect:
    def test_returns_snake_case_fields(self) -> None:
        """The form fields are snake_case strings with a normalized email."""
        assert _connect(first_name=" Ada ", email="ADA@contoso.com") == {
            "first_name": "Ada",
            "last_name": "Lovelace",
            "email": "ada@contoso.com",
            "email_per_day": "40",
            "response_rate": "30",
        }

    def test_optional_fields_only_when_given(self) -> None:
        """last_name, owner_email, timezone and tags are omitted when absent."""
        assert {"first_name", "email", "email_per_day", "response_rate"} == set(
            _connect(last_name=None)
        )

    def test_optional_fields_when_given(self) -> None:
        """owner_email is normalized, timezone kept and tags comma-joined."""
        fields = _connect(
            owner_email="Boss@Contoso.com", timezone="Europe/Paris", tags=[" gold ", "agency"]
        )
        assert (
            fields["owner_email"],
            fields["timezone"],
            fields["tags"],
        ) == ("boss@contoso.com", "Europe/Paris", "gold,agency")

    def test_limits_are_inclusive(self) -> None:
        """0 and 2000 emails per day, 0 and 100 percent are all accepted."""
        assert tuple(
            _connect(email_per_day=2000, response_rate=100)[k]
            for k in ("email_per_day", "response_rate")
        ) == ("2000", "100")
        assert tuple(
            _connect(email_per_day=0, response_rate=0)[k]
            for k in ("email_per_day", "response_rate")
        ) == ("0", "0")

    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            ({"first_name": ""}, "first_name"),
            ({"first_name": "   "}, "first_name"),
            ({"first_name": None}, "first_name"),
            ({"first_name": 7}, "first_name"),
            ({"first_name": "x" * 256}, "first_name"),
            ({"first_name": "Ada\nEvil"}, "first_name"),
            ({"first_name": "Ada\ud800"}, "first_name"),
            ({"last_name": "x" * 256}, "last_name"),
            ({"last_name": "Love\x07lace"}, "last_name"),
            ({"last_name": ["L"]}, "last_name"),
            ({"email": "not-an-email"}, "email"),
            ({"email": None}, "email"),
            ({"email_per_day": -1}, "email_per_day"),
            ({"email_per_day": 2001}, "email_per_day"),
            ({"email_per_day": "40"}, "email_per_day"),
            ({"email_per_day": 40.0}, "email_per_day"),
            ({"email_per_day": True}, "email_per_day"),
            ({"response_rate": -1}, "response_rate"),
            ({"response_rate": 101}, "response_rate"),
            ({"response_rate": True}, "response_rate"),
            ({"response_rate": 30.5}, "response_rate"),
            ({"response_rate": "30"}, "response_rate"),
            ({"owner_email": "boss@"}, "owner_email"),
            ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
            ({"timezone": "x" * 256}, "timezone"),
            ({"tags": "gold,agency"}, "tags"),
            ({"tags": ["gold", ""]}, "tags"),
            ({"tags": ["a,b"]}, "tags"),
            ({"tags": ["x" * 256]}, "tags"),
            ({"tags": [1]}, "tags"),
            ({"tags": 5}, "tags"),
        ],
    )
    def test_rejects_bad_input_naming_the_field(
        self, overrides: dict[str, Any], field: str
    ) -> None:
        """Each invalid value raises InvalidInput naming its field."""
        with pytest.raises(InvalidInput) as info:
            _connect(**overrides)
        assert field == info.value.field

    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(
        first_name=st.one_of(st.text(max_size=300), st.none(), st.integers()),
        last_name=st.one_of(st.text(max_size=300), st.none(), st.booleans()),
        email=st.one_of(st.emails(), st.text(max_size=300), st.none()),
        email_per_day=st.one_of(st.integers(), st.booleans(), st.floats(), st.text(max_size=5)),
        response_rate=st.one_of(st.integers(), st.booleans(), st.floats(), st.none()),
        timezone=st.one_of(st.none(), st.sampled_from(["UTC", "Europe/Paris"]), st.text()),
        tags=st.one_of(st.none(), st.lists(st.text(max_size=20), max_size=4), st.text()),
    )
    def test_only_ever_raises_invalid_input(self, **kwargs: Any) -> None:
        """Arbitrary input gives string fields or InvalidInput, nothing else."""
        try:
            fields = validate_connect(**kwargs)
        except InvalidInput:
            return
        assert all(isinstance(v, str) for v in fields.values())
        for value in fields.values():
            value.encode("utf-8")  # always sendable


class TestValidateMeta:
    def test_accepts_simple_items(self) -> None:
        """Safe keys and short text values pass through (values stripped)."""
        assert validate_meta({CORRELATION_META_KEY: " abc "}) == {CORRELATION_META_KEY: "abc"}

    @pytest.mark.parametrize(
        "meta",
        [{"bad key": "x"}, {"a[b]": "x"}, {"": "x"}, {"k": ""}, {"k": "x" * 256}, {"k": 5}, ["k"]],
    )
    def test_rejects_bad_items(self, meta: Any) -> None:
        """Unsafe keys or values raise InvalidInput("meta")."""
        with pytest.raises(InvalidInput) as info:
            validate_meta(meta)
        assert info.value.field == "meta"


# -- Campaign ----------------------------------------------------------------------------------


class TestCampaign:
    def test_from_api_reads_documented_fields(self) -> None:
        """id, normalized email, status_code and names are read."""
        campaign = Campaign.from_api(
            {
                "id": 198,
                "email": " John@Contoso.com",
                "status_code": "pending",
                "first_name": "John",
                "last_name": "Doe",
            }
        )
        assert (
            campaign.id,
            campaign.email,
            campaign.status,
            campaign.first_name,
            campaign.last_name,
        ) == (198, "john@contoso.com", "pending", "John", "Doe")

    def test_from_api_keeps_unknown_fields(self) -> None:
        """Fields we do not model stay in raw."""
        campaign = Campaign.from_api({"id": 1, "grade": "A", "smto": {"host": "x"}})
        assert dict(campaign.raw) == {"id": 1, "grade": "A", "smto": {"host": "x"}}

    def test_from_api_accepts_numeric_string_id_and_status_alias(self) -> None:
        """A numeric string id and a `status` key are accepted."""
        campaign = Campaign.from_api({"id": " 42 ", "status": "active"})
        assert (campaign.id, campaign.status) == (42, "active")

    def test_from_api_tolerates_bad_optional_fields(self) -> None:
        """An unusable email or name becomes None instead of an error."""
        campaign = Campaign.from_api({"id": 3, "email": "nope", "first_name": 12})
        assert (campaign.email, campaign.first_name) == (None, None)

    @pytest.mark.parametrize("data", [{}, {"id": None}, {"id": "abc"}, {"id": 0}, {"id": True}, []])
    def test_from_api_without_usable_id_raises(self, data: Any) -> None:
        """No usable id → MailiveryResponseError."""
        with pytest.raises(MailiveryResponseError):
            Campaign.from_api(data)

    @pytest.mark.parametrize(
        ("status", "lifecycle"),
        [
            ("pending", "pending"),
            ("Pending", "pending"),
            ("active", "active"),
            ("warming", "active"),
            ("running", "active"),
            ("in_progress", "active"),
            ("in-progress", "active"),
            ("paused", "paused"),
            ("paused_by_problem", "paused"),
            ("inactive", "paused"),
            ("stopped", "paused"),
            ("disabled", "paused"),
            ("deleted", "deleted"),
            ("archived", "deleted"),
            ("weird", "unknown"),
            (None, "unknown"),
        ],
    )
    def test_lifecycle(self, status: str | None, lifecycle: str) -> None:
        """Open status strings map onto a small lifecycle vocabulary."""
        assert lifecycle == Campaign(id=1, status=status).lifecycle

    def test_is_hashable(self) -> None:
        """A campaign can be used in a set despite its raw mapping."""
        assert len({Campaign.from_api({"id": 1}), Campaign.from_api({"id": 1})}) == 1


# -- ConnectResult ------------------------------------------------------------------------------


class TestConnectResult:
    def test_reads_data_url(self) -> None:
        """The URL comes from data.url."""
        url = "https://login.microsoftonline.com/common/oauth2?state=s3cr3t"
        assert url == ConnectResult.from_api({"success": True, "data": {"url": url}}).url

    def test_falls_back_to_top_level_url(self) -> None:
        """Without data.url the top-level url is used."""
        url = "https://login.microsoftonline.com/x"
        assert url == ConnectResult.from_api({"url": url}).url

    @pytest.mark.parametrize(
        "payload",
        [
            {"data": {"url": "http://login.microsoftonline.com/x?token=SECRET"}},
            {"data": {"url": "javascript:alert(1)//SECRET"}},
            {"data": {"url": "/relative?token=SECRET"}},
            {"data": {"url": "https:///SECRET"}},
            {"data": {"url": "https://host/a b?token=SECRET"}},
            {"data": {"url": 5}},
            {"data": {}},
            {"success": True},
            [],
            None,
        ],
    )
    def test_rejects_unusable_url_without_echoing_it(self, payload: Any) -> None:
        """No absolute https URL → MailiveryResponseError that does not contain the URL."""
        with pytest.raises(MailiveryResponseError) as info:
            ConnectResult.from_api(payload)
        assert "SECRET" not in str(info.value)

    def test_loopback_http_only_when_allowed(self) -> None:
        """http on a loopback host is accepted only with allow_loopback_http (local simulator)."""
        payload = {"data": {"url": "http://127.0.0.1:8000/oauth/consent/t"}}
        assert ConnectResult.from_api(payload, allow_loopback_http=True).url.startswith("http://")
        with pytest.raises(MailiveryResponseError):
            ConnectResult.from_api(payload)

    def test_non_loopback_http_never_allowed(self) -> None:
        """http on a public host is refused even with allow_loopback_http."""
        with pytest.raises(MailiveryResponseError):
            ConnectResult.from_api(
                {"data": {"url": "http://login.example.com/x"}}, allow_loopback_http=True
            )

    def test_repr_hides_url(self) -> None:
        """The URL (it carries tokens) is not in repr."""
        result = ConnectResult.from_api({"url": "https://x.example/?token=SECRET"})
        assert "SECRET" not in repr(result)


# -- parse_meta ---------------------------------------------------------------------------------


class TestParseMeta:
    def test_documented_query_string(self) -> None:
        """The documented example decodes %20 and keeps the comma list."""
        assert (
            parse_meta("meta=4dd49f4f84e4d6945e3bc6d14812004e&tags=97694201,%20worthcoding")
        ) == {"meta": "4dd49f4f84e4d6945e3bc6d14812004e", "tags": "97694201, worthcoding"}

    def test_our_token_as_query_string(self) -> None:
        """A plain `mailbox_flow_token=abc` is read."""
        assert parse_meta("mailbox_flow_token=abc") == {CORRELATION_META_KEY: "abc"}

    def test_bracket_keys_are_normalized(self) -> None:
        """`meta[key]` is exposed as `key` too, and the original key is kept."""
        assert parse_meta("meta%5Bmailbox_flow_token%5D=abc") == {
            "meta[mailbox_flow_token]": "abc",
            CORRELATION_META_KEY: "abc",
        }

    def test_json_object_string(self) -> None:
        """A JSON object string is read and its values stripped."""
        assert parse_meta('{"mailbox_flow_token": " abc ", "n": 3}') == {
            CORRELATION_META_KEY: "abc",
            "n": "3",
        }

    def test_dict(self) -> None:
        """A dict is accepted as is (nested values dropped)."""
        assert parse_meta({"a": "1", "b": {"c": 2}}) == {"a": "1"}

    @pytest.mark.parametrize(
        "value", [None, "", "   ", "garbage", "{not json", "[1, 2]", 5, ["a=b"], b"\xff", "{}"]
    )
    def test_empty_for_nothing_or_garbage(self, value: Any) -> None:
        """Absent or unreadable meta gives an empty dict."""
        assert parse_meta(value) == {}

    @settings(max_examples=200)
    @given(st.one_of(st.text(), st.binary(), st.dictionaries(st.text(), st.text()), st.none()))
    def test_never_raises(self, value: Any) -> None:
        """Any input gives a dict of strings."""
        result = parse_meta(value)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())


# -- parse_webhook ------------------------------------------------------------------------------


class TestParseWebhook:
    def test_documented_pending_with_lalst_name_typo(self) -> None:
        """The pending example: typo'd last name, tags array, meta query string."""
        event = parse_webhook(json.dumps(PENDING).encode())
        assert (
            WebhookEvent(
                type="campaign.pending",
                action="pending",
                campaign_id=198,
                email="john.doe@contoso.com",
                first_name="John",
                last_name="Doe",
                provider_type="office",
                tags=("worthcoding", "97694201"),
                meta={"meta": "4dd49f4f84e4d6945e3bc6d14812004e", "tags": "97694201, worthcoding"},
                raw=PENDING,
            )
            == event
        )

    def test_documented_created_with_null_meta(self) -> None:
        """The created example: meta null → {}, empty tags, gmail provider."""
        event = parse_webhook(json.dumps(CREATED))
        assert (
            event.type,
            event.campaign_id,
            event.provider_type,
            event.tags,
            event.meta,
        ) == ("campaign.created", 203, "gmail", (), {})

    def test_documented_updated_with_empty_meta(self) -> None:
        """The updated example: meta "" → {}, no provider or tags."""
        event = parse_webhook(json.dumps(UPDATED).encode())
        assert (
            event.type,
            event.campaign_id,
            event.email,
            event.provider_type,
            event.tags,
            event.meta,
        ) == ("campaign.updated", 216, "max@example.de", None, (), {})

    def test_documented_deleted_with_type_in_account(self) -> None:
        """The deleted example: `type` inside account is the provider type."""
        event = parse_webhook(json.dumps(DELETED).encode())
        assert (
            event.type,
            event.action,
            event.campaign_id,
            event.provider_type,
        ) == ("campaign.deleted", "deleted", 198, "smtp")

    def test_accepts_a_mapping(self) -> None:
        """An already decoded body is accepted and kept as raw."""
        assert dict(parse_webhook(PENDING).raw) == PENDING

    def test_campaign_id_camel_case(self) -> None:
        """`campaignId` (as a numeric string) is accepted."""
        body = {"type": "campaign.pending", "account": {"campaignId": "216"}}
        assert parse_webhook(json.dumps(body)).campaign_id == 216

    def test_campaign_id_at_top_level(self) -> None:
        """A campaign id outside `account` is accepted."""
        assert (
            parse_webhook(json.dumps({"type": "campaign.created", "campaign_id": 7})).campaign_id
            == 7
        )

    def test_type_from_action_only(self) -> None:
        """Without `type`, the type is built from `action`."""
        body = {"action": "pending", "account": {"campaign_id": 1}}
        assert (
            parse_webhook(json.dumps(body)).type,
            parse_webhook(json.dumps(body)).action,
        ) == ("campaign.pending", "pending")

    def test_meta_query_string_carries_correlation_token(self) -> None:
        """Our token in a query-string meta is exposed via meta and correlation_token."""
        body = {
            "type": "campaign.pending",
            "account": {"campaign_id": 1, "meta": "meta%5Bmailbox_flow_token%5D=tok"},
        }
        event = parse_webhook(json.dumps(body))
        assert (event.meta[CORRELATION_META_KEY], event.correlation_token) == ("tok", "tok")

    def test_meta_json_string(self) -> None:
        """A meta given as a JSON object string is decoded."""
        body = {
            "type": "campaign.pending",
            "account": {"campaign_id": 1, "meta": '{"mailbox_flow_token": "tok"}'},
        }
        assert parse_webhook(json.dumps(body)).meta == {CORRELATION_META_KEY: "tok"}

    def test_tags_fall_back_to_meta(self) -> None:
        """Without a tags array, tags come from meta's comma list (trimmed)."""
        body = {
            "type": "campaign.pending",
            "account": {"campaign_id": 1, "meta": "tags=97694201,%20worthcoding"},
        }
        assert parse_webhook(json.dumps(body)).tags == ("97694201", "worthcoding")

    def test_invalid_email_becomes_none(self) -> None:
        """An unusable email does not reject the delivery."""
        body = {"type": "campaign.pending", "account": {"campaign_id": 1, "email": "nope"}}
        assert parse_webhook(json.dumps(body)).email is None

    def test_utf8_bom_is_tolerated(self) -> None:
        """A UTF-8 byte order mark before the JSON is accepted."""
        assert parse_webhook(b"\xef\xbb\xbf" + json.dumps(PENDING).encode()).campaign_id == 198

    @pytest.mark.parametrize(
        "body",
        [
            b"",
            b"   ",
            b"\xff\xfe{}",
            b"not json",
            b"[]",
            b'"campaign.pending"',
            b"null",
            b'{"type": "campaign.pending", "account": {"campaign_id": NaN}}',
            b'{"type": "campaign.pending", "account": {"campaign_id": Infinity}}',
            b'{"type": "campaign.pending", "account": {"campaign_id": 1, "score": NaN}}',
            b'{"type": "campaign.pending", "account": {"campaign_id": 1}, "x": -Infinity}',
            b'{"type": "campaign.pending", "account": {"campaign_id": 1e999}}',
            b"[" * 100_000 + b"]" * 100_000,
            b'{"a": "' + b"x" * (1024 * 1024) + b'"}',
            b'{"account": {"campaign_id": 1}}',
            b'{"type": "", "account": {"campaign_id": 1}}',
            b'{"type": 5, "account": {"campaign_id": 1}}',
            b'{"type": "campaign.pending"}',
            b'{"type": "campaign.pending", "account": {"campaign_id": 0}}',
            b'{"type": "campaign.pending", "account": {"campaign_id": -3}}',
            b'{"type": "campaign.pending", "account": {"campaign_id": true}}',
            b'{"type": "campaign.pending", "account": {"campaign_id": "abc"}}',
            b'{"type": "campaign.pending", "account": {"campaign_id": 1.5}}',
            b'{"type": "campaign.pending", "account": {"campaign_id": "' + b"9" * 5000 + b'"}}',
            b'{"type": "campaign.pending", "account": {"campaign_id": ' + b"9" * 5000 + b"}}",
        ],
    )
    def test_rejects_unreadable_bodies(self, body: bytes) -> None:
        """Malformed deliveries raise WebhookPayloadError."""
        with pytest.raises(WebhookPayloadError):
            parse_webhook(body)

    def test_rejects_other_body_types(self) -> None:
        """A body that is neither bytes, str nor a mapping raises WebhookPayloadError."""
        with pytest.raises(WebhookPayloadError):
            parse_webhook(42)  # type: ignore[arg-type]

    @settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=512))
    def test_arbitrary_bytes_only_raise_payload_error(self, body: bytes) -> None:
        """Arbitrary bytes give a WebhookEvent or WebhookPayloadError, nothing else."""
        try:
            event = parse_webhook(body)
        except WebhookPayloadError:
            return
        assert isinstance(event, WebhookEvent) and event.campaign_id > 0

    @settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=20)
            | st.sampled_from(["campaign.pending", "198", "a@b.co", "meta=x&tags=a,b"]),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "type",
                            "action",
                            "account",
                            "campaign_id",
                            "campaignId",
                            "email",
                            "tags",
                            "meta",
                            "first_name",
                            "lalst_name",
                            "provider_type",
                        ]
                    )
                    | st.text(max_size=8),
                    inner,
                    max_size=6,
                )
            ),
            max_leaves=20,
        )
    )
    def test_arbitrary_json_only_raises_payload_error(self, value: Any) -> None:
        """Arbitrary JSON (as bytes and as a decoded value) never raises anything else."""
        for body in (json.dumps(value).encode(), value):
            try:
                event = parse_webhook(body)
            except WebhookPayloadError:
                continue
            assert isinstance(event, WebhookEvent)
            assert event.type and event.campaign_id > 0
            assert all(isinstance(tag, str) and tag for tag in event.tags)
