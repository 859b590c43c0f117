from __future__ import annotations

import hashlib
import hmac

from recotem.lib.signing import sign_payload, verify_signature

SECRET = b"whsec-test"
BODY = b'{"event":"model.trained","model_id":42}'
TS = 1_767_225_600


def test_it_formats_the_header() -> None:
    expected = hmac.new(SECRET, f"{TS}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign_payload(BODY, SECRET, TS) == f"t={TS},v1={expected}"


def test_it_round_trips() -> None:
    header = sign_payload(BODY, SECRET, TS)
    assert verify_signature(BODY, header, SECRET, now=TS + 10)


def test_it_rejects_a_tampered_body_secret_or_timestamp() -> None:
    header = sign_payload(BODY, SECRET, TS)
    assert not verify_signature(BODY + b" ", header, SECRET, now=TS)
    assert not verify_signature(BODY, header, b"other-secret", now=TS)
    forged = header.replace(f"t={TS}", f"t={TS + 1}")
    assert not verify_signature(BODY, forged, SECRET, now=TS)


def test_it_rejects_stale_and_future_timestamps() -> None:
    header = sign_payload(BODY, SECRET, TS)
    assert verify_signature(BODY, header, SECRET, now=TS + 300)
    assert not verify_signature(BODY, header, SECRET, now=TS + 301)
    assert not verify_signature(BODY, header, SECRET, now=TS - 301)
    assert verify_signature(BODY, header, SECRET, tolerance_seconds=3600, now=TS + 3000)


def test_it_rejects_malformed_headers() -> None:
    good = sign_payload(BODY, SECRET, TS)
    mac = good.split("v1=")[1]
    for header in (
        "",
        "garbage",
        f"v1={mac}",
        f"t={TS}",
        f"t=abc,v1={mac}",
        f"t={TS},t={TS},v1={mac}",
    ):
        assert not verify_signature(BODY, header, SECRET, now=TS)


def test_it_accepts_any_matching_v1_during_secret_rotation() -> None:
    old = sign_payload(BODY, b"old-secret", TS).split("v1=")[1]
    header = sign_payload(BODY, SECRET, TS) + f",v1={old}"
    assert verify_signature(BODY, header, SECRET, now=TS)
    assert verify_signature(BODY, header, b"old-secret", now=TS)
