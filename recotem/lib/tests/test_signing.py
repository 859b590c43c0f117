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


# --- request ids ---------------------------------------------------------------------------

from recotem.lib.signing import RequestTokens, ServedBy, request_token_keys  # noqa: E402

SERVED = ServedBy(project_id=7, slot_id=12, model_id=345, experiment_id=3, arm="variant")


def test_it_round_trips_a_request_id() -> None:
    tokens = RequestTokens(request_token_keys("secret"))
    token = tokens.sign(SERVED)
    assert tokens.verify(token) == SERVED
    assert len(token) < 60
    assert tokens.sign(SERVED) != token  # a nonce makes each id distinct


def test_it_round_trips_ids_without_slot_or_experiment() -> None:
    tokens = RequestTokens(request_token_keys("secret"))
    plain = ServedBy(project_id=1, slot_id=0, model_id=2, experiment_id=0, arm="")
    assert tokens.verify(tokens.sign(plain)) == plain


def test_it_refuses_edited_forged_and_malformed_request_ids() -> None:
    tokens = RequestTokens(request_token_keys("secret"))
    token = tokens.sign(SERVED)
    parts = token.split(".")
    edited = ".".join([*parts[:1], "8", *parts[2:]])  # another project, same MAC
    other_arm = ".".join([*parts[:5], "c", *parts[6:]])
    forged = RequestTokens(request_token_keys("not-the-secret")).sign(SERVED)
    for bad in (edited, other_arm, forged, "", "abc", token + "x", "r1." * 20, "é" * 10):
        assert tokens.verify(bad) is None, bad


def test_it_verifies_request_ids_signed_before_a_secret_rotation() -> None:
    old = RequestTokens(request_token_keys("old")).sign(SERVED)
    rotated = RequestTokens(request_token_keys("new", ["old"]))
    assert rotated.verify(old) == SERVED
    assert RequestTokens(request_token_keys("new")).verify(old) is None
