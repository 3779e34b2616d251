#!/usr/bin/env python3
"""Round trip through the gRPC core with a client generated from proto/ (run generate.sh first).

Upserts a new contact with ContactService.UpsertContact, reads it back with GetContact by id,
phone number and external reference id, and checks every field it sent. A call without an API
key must be refused. Exits 0 when everything matches, 1 (naming the mismatch) otherwise.

    SWITCHBORD_API_KEY=... python roundtrip.py --target 127.0.0.1:50051
"""

import argparse
import os
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "gen"))

import grpc  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402

from switchbord.v1 import contacts_pb2, contacts_pb2_grpc  # noqa: E402

CALL_TIMEOUT_SECONDS = 10.0


class Mismatch(Exception):
    """A reply that differs from what the round trip expects."""


def expect(what, actual, wanted):
    if actual != wanted:
        raise Mismatch(f"{what}: expected {wanted!r}, got {actual!r}")


def check_contact(where, contact, sent):
    expect(f"{where}: phone_number", contact.phone_number, sent["phone_e164"])
    expect(f"{where}: external_reference_id", contact.external_reference_id, sent["external_reference_id"])
    expect(f"{where}: name", contact.name, sent["name"])
    expect(f"{where}: email", contact.email, sent["email"])
    expect(f"{where}: locale", contact.locale, sent["locale"])
    expect(f"{where}: subscriber_status", contact.subscriber_status, contacts_pb2.SUBSCRIBER_STATUS_SUBSCRIBED)
    expect(f"{where}: properties.plan", dict(contact.properties).get("plan"), sent["plan"])
    expect(f"{where}: tags", list(contact.tags), sorted(set(sent["tags"])))
    if not contact.id:
        raise Mismatch(f"{where}: the contact has no id")
    if not contact.HasField("created_at") or contact.created_at.seconds <= 0:
        raise Mismatch(f"{where}: created_at is missing")


def round_trip(channel, api_key):
    contacts = contacts_pb2_grpc.ContactServiceStub(channel)
    metadata = (("x-api-key", api_key),)

    # A fresh person on every run, so reruns against the same database create again.
    national = f"151{secrets.randbelow(10**8):08d}"
    sent = {
        "phone_e164": f"+49{national}",
        "external_reference_id": f"py-roundtrip-{secrets.token_hex(6)}",
        "name": "Jane Doe",
        "email": "jane@example.com",
        "locale": "de-DE",
        "plan": "gold",
        "tags": ["vip", "beta", "vip"],
    }
    properties = struct_pb2.Struct()
    properties.update(
        {"name": sent["name"], "email": sent["email"], "locale": sent["locale"], "plan": sent["plan"]}
    )
    request = contacts_pb2.UpsertContactRequest(
        # Written the way people type it; the core stores E.164.
        phone_number=f"+49 {national[:3]} {national[3:]}",
        external_reference_id=sent["external_reference_id"],
        person_properties=properties,
        tags=contacts_pb2.TagList(values=sent["tags"]),
    )

    try:
        contacts.UpsertContact(request, timeout=CALL_TIMEOUT_SECONDS)
    except grpc.RpcError as error:
        expect("UpsertContact without an API key: status", error.code(), grpc.StatusCode.UNAUTHENTICATED)
    else:
        raise Mismatch("UpsertContact without an API key succeeded")

    upserted = contacts.UpsertContact(request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
    expect("UpsertContact: operation", upserted.operation, contacts_pb2.UPSERT_OPERATION_CREATED)
    check_contact("UpsertContact", upserted.contact, sent)
    contact_id = upserted.contact.id
    print(f"roundtrip: upserted contact {contact_id} ({sent['phone_e164']})")

    lookups = {
        "id": contacts_pb2.GetContactRequest(id=contact_id),
        "phone_number": contacts_pb2.GetContactRequest(phone_number=sent["phone_e164"]),
        "external_reference_id": contacts_pb2.GetContactRequest(
            external_reference_id=sent["external_reference_id"]
        ),
    }
    for by, lookup in lookups.items():
        found = contacts.GetContact(lookup, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
        where = f"GetContact by {by}"
        expect(f"{where}: id", found.contact.id, contact_id)
        check_contact(where, found.contact, sent)
        expect(f"{where}: the whole contact", found.contact, upserted.contact)
    print("roundtrip: read it back by id, phone number and external reference id")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="host:port of the gRPC core")
    parser.add_argument(
        "--ready-timeout", type=float, default=30.0, help="seconds to wait for the core to accept connections"
    )
    args = parser.parse_args()
    api_key = os.environ.get("SWITCHBORD_API_KEY", "")
    if not api_key:
        print("roundtrip: set SWITCHBORD_API_KEY to an API key", file=sys.stderr)
        return 2

    with grpc.insecure_channel(args.target) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=args.ready_timeout)
            round_trip(channel, api_key)
        except grpc.FutureTimeoutError:
            print(f"roundtrip: FAILED: no gRPC server at {args.target}", file=sys.stderr)
            return 1
        except grpc.RpcError as error:
            print(f"roundtrip: FAILED: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
        except Mismatch as mismatch:
            print(f"roundtrip: FAILED: {mismatch}", file=sys.stderr)
            return 1
    print("roundtrip: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
