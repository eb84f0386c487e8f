"""The HL7 v2 message store on both databases: insert, unique (sender, control id), outcome, counts."""

from __future__ import annotations

from interfaces.mllp.store import ERROR, PROCESSED, RECEIVED, MessageStore


def test_receive_is_unique_per_sender_and_control_id(backend) -> None:
    backend.truncate()
    store = MessageStore(backend.engine)
    first = store.receive(sender="LAB|HOSP", control_id="42", message_type="ORU^R01", version="2.5", raw="MSH|x")
    assert not first.duplicate and first.status == RECEIVED
    store.finish(first.pk, status=PROCESSED, ack="MSH|ack\rMSA|AA|42\r", resources=["Observation/1"])
    again = store.receive(sender="LAB|HOSP", control_id="42", message_type="ORU^R01", version="2.5", raw="MSH|y")
    assert again.duplicate and again.pk == first.pk
    assert again.acks == ["MSH|ack\rMSA|AA|42\r"] and again.resources == ["Observation/1"]
    assert again.raw == "MSH|x"  # the original is kept
    other = store.receive(sender="LAB2|HOSP", control_id="42", message_type="ORU^R01", version="2.5", raw="MSH|z")
    assert not other.duplicate


def test_messages_without_control_id_are_all_kept(backend) -> None:
    backend.truncate()
    store = MessageStore(backend.engine)
    a = store.receive(sender="", control_id=None, message_type="", version="", raw="garbage\x00")
    b = store.receive(sender="", control_id=None, message_type="", version="", raw="garbage")
    assert a.pk != b.pk and not b.duplicate
    assert store.get(a.pk).raw == "garbage"  # type: ignore[union-attr]


def test_status_listing_and_counts(backend) -> None:
    backend.truncate()
    store = MessageStore(backend.engine)
    rows = [store.receive(sender="S|F", control_id=str(i), message_type="ADT^A01", version="2.5", raw=f"m{i}")
            for i in range(5)]
    for row in rows[:2]:
        store.finish(row.pk, status=ERROR, ack="a", error="PID[1]-7: bad date")
    store.finish(rows[2].pk, status=PROCESSED, ack="a")
    assert store.counts() == {ERROR: 2, PROCESSED: 1, RECEIVED: 2}
    failed = store.with_status(ERROR)
    assert [r.pk for r in failed] == [rows[0].pk, rows[1].pk]
    assert failed[0].error == "PID[1]-7: bad date" and failed[0].attempts == 1
    assert store.with_status(ERROR, after_pk=rows[0].pk)[0].pk == rows[1].pk
