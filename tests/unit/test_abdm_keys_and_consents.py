"""ABDM pieces without a server: the sealed HIU keys, the consent manager's signature, the consent frequency."""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from interfaces.abdm import consent as consents
from interfaces.abdm.fidelius import KeyMaterial
from interfaces.abdm.keystore import KeyStoreError, seal, unseal
from interfaces.abdm.settings import AbdmSettings

SETTINGS = AbdmSettings(gateway_url="http://gateway.invalid", hiu_id="H", key_secret="first secret")


def test_a_sealed_key_opens_only_with_its_secret_and_its_task() -> None:
    keys = KeyMaterial.generate()
    sealed = seal(SETTINGS, keys, "abdm-hiu-pull-1")
    assert str(keys.private) not in sealed and keys.nonce not in sealed
    opened = unseal(SETTINGS, sealed, "abdm-hiu-pull-1")
    assert opened == keys
    peer = KeyMaterial.generate()  # and it still decrypts what a HIP encrypts for the original key
    assert opened.decrypt(peer.encrypt(b"record", keys.to_json()), peer.to_json()) == b"record"
    with pytest.raises(KeyStoreError):
        unseal(AbdmSettings(gateway_url="http://gateway.invalid", key_secret="another"), sealed, "abdm-hiu-pull-1")
    with pytest.raises(KeyStoreError):
        unseal(SETTINGS, sealed, "abdm-hiu-pull-2")
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(KeyStoreError):
        unseal(SETTINGS, tampered, "abdm-hiu-pull-1")


def test_without_any_secret_no_key_is_kept() -> None:
    with pytest.raises(KeyStoreError):
        seal(AbdmSettings(gateway_url="http://gateway.invalid"), KeyMaterial.generate(), "t")
    # the gateway client secret is the fallback
    fallback = AbdmSettings(gateway_url="http://gateway.invalid", client_secret="nha-secret")
    keys = KeyMaterial.generate()
    assert unseal(fallback, seal(fallback, keys, "t"), "t") == keys


DETAIL = {"schemaVersion": "v3", "consentId": "c-1", "createdAt": "2024-05-01T00:00:00.000Z",
          "patient": {"id": "hinapatel79@sbx"}, "hiTypes": ["OPConsultation"], "hip": {"id": "HIP", "name": "Hospitāl"},
          "permission": {"accessMode": "VIEW", "dateRange": {"from": "2024-01-01T00:00:00.000Z",
                                                             "to": "2024-12-31T00:00:00.000Z"},
                         "dataEraseAt": "2030-01-01T00:00:00.000Z",
                         "frequency": {"unit": "HOUR", "value": 1, "repeats": 2}}}


def test_the_consent_managers_signature_is_checked() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signature = base64.b64encode(key.sign(orjson.dumps(DETAIL), padding.PKCS1v15(), hashes.SHA256())).decode()
    assert consents.signature_valid(DETAIL, signature, [other.public_key(), key.public_key()])
    assert not consents.signature_valid(DETAIL, signature, [other.public_key()])
    changed = copy.deepcopy(DETAIL)
    changed["permission"]["dateRange"]["from"] = "2020-01-01T00:00:00.000Z"  # a widened range
    assert not consents.signature_valid(changed, signature, [key.public_key()])
    assert not consents.signature_valid(DETAIL, "not base64!", [key.public_key()])
    assert not consents.signature_valid(DETAIL, None, [key.public_key()])


def test_the_frequency_allows_the_request_and_its_repeats_per_window() -> None:
    consent = consents.to_resource("hip", "GRANTED", DETAIL, "Patient/1")
    assert consents.frequency(consent) == (3, timedelta(hours=1), "1 hour")
    now = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    recent = [(now - timedelta(minutes=m)).isoformat() for m in (5, 20)]
    consents.check_frequency(consent, recent, now)  # two in the hour: a third is allowed
    with pytest.raises(consents.ConsentRefused) as refused:
        consents.check_frequency(consent, [*recent, (now - timedelta(minutes=59)).isoformat()], now)
    assert refused.value.code == "ABDM-1014"
    consents.check_frequency(consent, [*recent, (now - timedelta(minutes=61)).isoformat()], now)  # out of the window
    daily = copy.deepcopy(DETAIL)
    daily["permission"]["frequency"] = {"unit": "DAY", "value": 2, "repeats": 0}
    assert consents.frequency(consents.to_resource("hip", "GRANTED", daily, None)) == (1, timedelta(days=2), "2 day")
