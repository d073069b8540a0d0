"""study/transport.py: the model as one Array on the wire, byte for byte, and hostile layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loopback_grid import LoopbackGrid, run_loopback_study, set_task_identity, small_study

from client.client_app import build_client_app, transport_mod
from server.grid import exchange
from server.strategy import message_bytes
from study import transport
from study.task import build_model


def model_content() -> RecordDict:
    return RecordDict(
        {
            "arrays": ArrayRecord(build_model("xray").state_dict()),
            "config": ConfigRecord({"server-round": 3}),
            "metrics": MetricRecord({"x": 1.0}),
        }
    )


def test_pack_then_unpack_gives_the_same_arrays_byte_for_byte_in_far_fewer_objects():
    content = model_content()
    packed = transport.pack(content)
    assert transport.is_packed(packed) and list(packed["arrays"].keys()) == [transport.PACKED]
    back = transport.unpack(packed)
    before, after = content["arrays"], back["arrays"]
    assert list(after.keys()) == list(before.keys())
    for name in before:
        assert after[name].data == before[name].data
        assert after[name].object_id == before[name].object_id  # same Flower object
    state = after.to_torch_state_dict()
    for name, tensor in build_model("xray").state_dict().items():
        assert state[name].shape == tensor.shape and state[name].dtype == tensor.dtype
    assert back["config"]["server-round"] == 3 and back["metrics"]["x"] == 1.0
    assert transport.TRANSPORT_KEY not in back
    # the point of it: Flower sends one object per Array and chunk
    n_plain = len(get_all_nested_objects(content))
    n_packed = len(get_all_nested_objects(packed))
    assert n_plain > 26 and n_packed <= 8, (n_plain, n_packed)  # 26 tensors (some equal)


def test_mixed_dtypes_and_empty_arrays_survive():
    record = ArrayRecord(
        {
            "f": Array(np.arange(6, dtype=np.float32).reshape(2, 3)),
            "i": Array(np.array([7, -1], dtype=np.int64)),
            "empty": Array(np.zeros((0, 4), dtype=np.float16)),
            "t": Array(torch.ones(3, dtype=torch.float64)),
        }
    )
    back = transport.unpack(transport.pack(RecordDict({"r": record})))["r"]
    for name in record:
        got, want = back[name].numpy(), record[name].numpy()
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)


def test_nothing_to_pack_leaves_the_content_as_it_is():
    plain = RecordDict(
        {"one": ArrayRecord({"w": Array(np.ones(3))}), "config": ConfigRecord({"a": 1})}
    )
    assert transport.pack(plain) is plain and not transport.is_packed(plain)
    assert transport.unpack(plain) is plain


def _forge(content: RecordDict, edit) -> RecordDict:
    """`content` packed, with its layout for 'arrays' edited by `edit(doc)`."""
    packed = transport.pack(content)
    doc = json.loads(packed[transport.TRANSPORT_KEY]["arrays"])
    edit(doc)
    packed[transport.TRANSPORT_KEY]["arrays"] = json.dumps(doc)
    return packed


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(schema=2), "schema is not 1"),
        (lambda d: d.update(arrays=[]), "list of 1.."),
        (lambda d: d["arrays"][0].update(bytes=10**9), "past the packed data"),
        (lambda d: d["arrays"].pop(), "layout covers"),
        (lambda d: d["arrays"][1].update(name=d["arrays"][0]["name"]), "unique string"),
        (lambda d: d["arrays"][0].update(shape=[-1, 3]), "non-negative ints"),
        (lambda d: d["arrays"][0].update(shape="3,3"), "non-negative ints"),
        (lambda d: d["arrays"][0].update(bytes=True), "bytes must be an int"),
        (lambda d: d["arrays"][0].update(extra=1), "must have exactly"),
        (lambda d: d["arrays"][0].update(dtype=None), "dtype and stype must be strings"),
    ],
)
def test_a_forged_layout_is_refused_with_the_record_named(edit, message):
    with pytest.raises(transport.TransportError, match="packed record 'arrays'") as err:
        transport.unpack(_forge(model_content(), edit))
    assert message in str(err.value)


def test_other_forgeries_are_refused():
    packed = transport.pack(model_content())
    packed[transport.TRANSPORT_KEY]["arrays"] = "{not json"
    with pytest.raises(transport.TransportError, match="not JSON"):
        transport.unpack(packed)
    packed = transport.pack(model_content())
    packed[transport.TRANSPORT_KEY]["ghost"] = packed[transport.TRANSPORT_KEY]["arrays"]
    with pytest.raises(transport.TransportError, match="lacks: \\['ghost'\\]"):
        transport.unpack(packed)
    packed = transport.pack(model_content())
    packed["arrays"] = ArrayRecord({transport.PACKED: Array(np.zeros(4, dtype=np.float32))})
    with pytest.raises(transport.TransportError, match="1-D uint8"):
        transport.unpack(packed)
    packed = transport.pack(model_content())
    del packed[transport.TRANSPORT_KEY]
    packed[transport.TRANSPORT_KEY] = MetricRecord({"a": 1.0})
    with pytest.raises(transport.TransportError, match="not a ConfigRecord"):
        transport.unpack(packed)
    with pytest.raises(transport.TransportError, match="already has"):
        transport.pack(transport.pack(model_content()))


def test_the_site_mod_answers_in_the_form_it_was_asked(monkeypatch):
    set_task_identity(monkeypatch)
    seen = []

    def handler(msg, context):
        seen.append(list(msg.content["arrays"].keys()))
        return Message(RecordDict({"arrays": msg.content["arrays"]}), reply_to=msg)

    plain = Message(model_content(), dst_node_id=5, message_type="train")
    plain.metadata.__dict__["_message_id"] = "a"
    reply = transport_mod(plain, None, handler)
    assert not transport.is_packed(reply.content) and len(reply.content["arrays"]) == 26

    packed = Message(transport.pack(model_content()), dst_node_id=5, message_type="train")
    packed.metadata.__dict__["_message_id"] = "b"
    reply = transport_mod(packed, None, handler)
    assert seen[1] == seen[0] and len(seen[1]) == 26  # the handler saw the model's tensors
    assert transport.is_packed(reply.content)
    assert list(reply.content["arrays"].keys()) == [transport.PACKED]


class OneSiteLink:
    """Answers every message with `answer(message)`, as node 7."""

    def __init__(self, answer) -> None:
        self.answer, self.sent, self.pushed = answer, {}, []

    def push_messages(self, messages):
        ids = []
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"m{i}"
            self.sent[f"m{i}"] = msg
            self.pushed.append(msg)
            ids.append(f"m{i}")
        return ids

    def pull_messages(self, ids):
        out = []
        for mid in ids:
            reply = self.answer(self.sent[mid])
            reply.metadata.__dict__["_src_node_id"] = 7
            out.append(reply)
        return out


def test_the_server_packs_what_it_sends_and_a_forged_reply_becomes_that_sites_error(
    monkeypatch,
):
    set_task_identity(monkeypatch)

    def forged(msg):
        content = transport.pack(model_content())
        content[transport.TRANSPORT_KEY]["arrays"] = "[]"
        return Message(content, reply_to=msg)

    link = OneSiteLink(forged)
    message = Message(model_content(), dst_node_id=7, message_type="train")
    [reply] = exchange(link, [message], timeout=5, poll_s=0.0)
    assert transport.is_packed(link.pushed[0].content)  # on the wire: packed
    assert reply.has_error() and reply.metadata.src_node_id == 7
    assert "reply not readable" in reply.error.reason and "'arrays'" in reply.error.reason

    def honest(msg):  # a site that packs its reply: the server reads plain arrays
        content = RecordDict({"arrays": transport.unpack(msg.content)["arrays"]})
        return Message(transport.pack(content), reply_to=msg)

    [reply] = exchange(
        OneSiteLink(honest),
        [Message(model_content(), dst_node_id=7, message_type="train")],
        timeout=5,
        poll_s=0.0,
    )
    assert not transport.is_packed(reply.content) and len(reply.content["arrays"]) == 26


def test_a_study_sends_packed_messages_and_counts_the_bytes_that_travel(tmp_path, monkeypatch):
    study = small_study(tmp_path, monkeypatch, num_sites=2, phantom_patients=24)
    grid = LoopbackGrid(build_client_app(study), study.num_sites)
    [record] = run_loopback_study(grid, study)
    trains = [m for m in grid.delivered if m.metadata.message_type == "train"]
    replies = [m for m in grid.returned if m.metadata.message_type == "train"]
    assert len(trains) == len(replies) == 2
    for msg in trains:  # as each site received it
        assert transport.is_packed(msg.content)
        assert len(get_all_nested_objects(msg.content)) <= 12
    # the bytes counted are the bytes of the packed messages
    for site in record.sites:
        node = 1001 + int(site.site.split("-")[1])
        up = sum(message_bytes(m) for m in replies if m.metadata.src_node_id == node)
        assert 0 < up <= site.bytes["message_up"]  # train reply; the evaluate reply is the rest


def _wrong_shape(record: ArrayRecord, name: str) -> None:
    record[name] = Array(np.zeros((3, 3), dtype=np.float32))


def _header_claims_more(record: ArrayRecord, name: str) -> None:
    """The record says the right shape; the .npy header inside claims 10^12 values."""
    good = record[name]
    data = bytearray(good.data)
    header = len(data) - int(np.prod(good.shape)) * np.dtype(good.dtype).itemsize
    text = data[:header].decode("latin1")
    claimed = text.replace(str(tuple(good.shape)), "(1000000000000,)", 1)
    claimed = claimed[: header - 1].ljust(header - 1) + "\n"  # same header length
    record[name] = Array(
        dtype=good.dtype,
        shape=tuple(good.shape),
        stype=good.stype,
        data=claimed.encode("latin1") + bytes(data[header:]),
    )


@pytest.mark.parametrize("tamper", [_wrong_shape, _header_claims_more])
def test_a_reply_whose_model_is_not_the_studys_fails_that_site_only(tmp_path, monkeypatch, tamper):
    study = small_study(tmp_path, monkeypatch)
    honest = build_client_app(study)

    def hostile(message, context):
        reply = honest(message, context)
        if message.metadata.message_type == "train" and context.node_id == 1002:
            content = transport.unpack(reply.content)
            tamper(content["arrays"], "head.weight")
            reply.content = transport.pack(content)
        return reply

    [record] = run_loopback_study(LoopbackGrid(hostile, study.num_sites), study)
    by_site = {s.site: s for s in record.sites}
    assert by_site["site-0"].ok and by_site["site-2"].ok
    bad = by_site["site-1"]
    assert not bad.ok and "model is not the study's" in bad.error and "head.weight" in bad.error


# -- hostile layouts: bounded work, one error type, a reason --------------------------------


def _set_entry(**fields):
    return lambda d: d["arrays"][0].update(**fields)


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set_entry(dtype="O"), "dtype 'O' is not one of"),
        (_set_entry(dtype=">f8"), "dtype '>f8' is not one of"),
        (_set_entry(dtype="object"), "dtype 'object' is not one of"),
        (_set_entry(stype="pickle"), "stype 'pickle' is not 'numpy.ndarray'"),
        (_set_entry(name=""), "name must be a non-empty string"),
        (_set_entry(shape=[10**4000]), "shape"),
        (_set_entry(shape=[2**64]), "shape"),
        (_set_entry(shape=[0, 2**64]), "shape"),
        (_set_entry(shape=[1] * 100), "dimensions"),
        (_set_entry(shape=[1.5]), "non-negative ints"),
    ],
)
def test_a_layout_entry_outside_what_medfed_sends_is_refused(edit, message):
    with pytest.raises(transport.TransportError, match="packed record 'arrays'") as err:
        transport.unpack(_forge(model_content(), edit))
    assert message in str(err.value)


def _with_layout(text: str) -> RecordDict:
    packed = transport.pack(model_content())
    packed[transport.TRANSPORT_KEY]["arrays"] = text
    return packed


def test_a_deeply_nested_layout_is_refused_without_recursing():
    wide = '{"schema": 1, "arrays": ' + "[" * 50 + "]" * 50 + "}"
    for deep in ("[" * 200_000 + "]" * 200_000, wide):
        with pytest.raises(transport.TransportError, match="nested deeper than"):
            transport.unpack(_with_layout(deep))
    # brackets inside strings are not nesting
    doc = json.loads(transport.pack(model_content())[transport.TRANSPORT_KEY]["arrays"])
    doc["arrays"][0]["name"] = name = '[[[[[[[[[[[[\\"{{{{{{{{{'
    assert name in transport.unpack(_with_layout(json.dumps(doc)))["arrays"]


def test_a_layout_over_its_size_caps_is_refused_at_once():
    import time

    entry = {"name": "", "dtype": "uint8", "shape": [0], "stype": "numpy.ndarray", "bytes": 0}
    entries = [{**entry, "name": f"a{i}"} for i in range(100_000)]
    text = json.dumps({"schema": 1, "arrays": entries})
    t0 = time.perf_counter()
    with pytest.raises(transport.TransportError, match=f"{transport.MAX_LAYOUT_BYTES} bytes"):
        transport.unpack(_with_layout(text))
    assert time.perf_counter() - t0 < 0.5
    few = json.dumps({"schema": 1, "arrays": entries[: transport.MAX_ARRAYS + 1]})
    assert len(few) <= transport.MAX_LAYOUT_BYTES
    with pytest.raises(transport.TransportError, match=f"1..{transport.MAX_ARRAYS} entries"):
        transport.unpack(_with_layout(few))


def test_array_problem_computes_sizes_in_python_ints():
    # the record and the .npy header agree on 2^64 values (np.prod in int64 overflowed)
    import io

    fp = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (2**64,)}
    np.lib.format.write_array_header_1_0(fp, header)
    huge = Array(dtype="float32", shape=(2**64,), stype="numpy.ndarray", data=fp.getvalue())
    problem = transport.array_problem(huge, "float32", (2**64,))
    assert "float32 (18446744073709551616,) needs" in problem


def _exchange_one(answer) -> Message:
    [reply] = exchange(
        OneSiteLink(answer),
        [Message(model_content(), dst_node_id=7, message_type="train")],
        timeout=5,
        poll_s=0.0,
    )
    return reply


@pytest.mark.parametrize(
    "layout, reason",
    [
        ("[" * 200_000 + "]" * 200_000, "nested deeper than"),
        (None, "does not fit"),  # shape (2^64,)
    ],
)
def test_a_hostile_reply_becomes_that_sites_error_not_the_studys(monkeypatch, layout, reason):
    set_task_identity(monkeypatch)

    def hostile(msg):
        content = transport.pack(model_content())
        doc = json.loads(content[transport.TRANSPORT_KEY]["arrays"])
        doc["arrays"][0]["shape"] = [2**64]
        content[transport.TRANSPORT_KEY]["arrays"] = layout or json.dumps(doc)
        return Message(content, reply_to=msg)

    reply = _exchange_one(hostile)
    assert reply.has_error() and reply.metadata.src_node_id == 7
    assert "reply not readable" in reply.error.reason and reason in reply.error.reason


def test_any_exception_unpacking_a_reply_is_that_sites_error(monkeypatch):
    # what precise validation might still miss (here: a RecursionError) fails the site only
    set_task_identity(monkeypatch)

    def boom(content):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(transport, "unpack", boom)
    reply = _exchange_one(lambda msg: Message(transport.pack(model_content()), reply_to=msg))
    assert reply.has_error() and reply.metadata.src_node_id == 7
    assert "reply not readable: RecursionError: maximum recursion" in reply.error.reason


# -- property: whatever a site's reply holds, the study goes on without that site --------

_LAYOUT_FIELDS = sorted(transport._FIELDS)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)
_mutations = st.one_of(
    st.tuples(st.just("field"), st.integers(0, 25), st.sampled_from(_LAYOUT_FIELDS), _json_values),
    st.tuples(st.just("layout"), _json_values.map(json.dumps)),
    st.tuples(st.just("layout"), st.text(max_size=80)),
    st.tuples(st.just("nest"), st.integers(5, 300_000)),
    st.tuples(st.just("entries"), st.sampled_from(["drop", "repeat", "extra-key", "schema"])),
    st.tuples(st.just("blob"), st.integers(-64, 64).filter(bool)),
    st.tuples(st.just("header"), st.integers(0, 9), st.integers(0, 255)),
)


def _mutate(content: RecordDict, mutation: tuple) -> None:
    """`content` (a packed train reply) made unusable by `mutation`, in place."""
    layouts = content[transport.TRANSPORT_KEY]
    doc = json.loads(layouts["arrays"])
    kind, *args = mutation
    if kind == "field":
        i, name, value = args
        if doc["arrays"][i][name] == value:
            value = [value]  # a change, always
        doc["arrays"][i][name] = value
    elif kind == "layout":
        doc = args[0]
    elif kind == "nest":
        doc = "[" * args[0] + "]" * args[0]
    elif kind == "entries":
        edit = args[0]
        if edit == "drop":
            doc["arrays"].pop(3)
        elif edit == "repeat":
            doc["arrays"].append(doc["arrays"][0])
        elif edit == "extra-key":
            doc["arrays"][5]["pickle"] = True
        else:
            doc["schema"] = 0
    else:
        data = bytearray(content["arrays"][transport.PACKED].data)
        if kind == "blob":
            data = data[: args[0]] if args[0] < 0 else data + bytes(args[0])
        elif data[args[0]] == args[1]:
            data[args[0]] ^= 0xFF
        else:
            data[args[0]] = args[1]
        packed = content["arrays"][transport.PACKED]
        content["arrays"] = ArrayRecord(
            {
                transport.PACKED: Array(
                    dtype=packed.dtype, shape=packed.shape, stype=packed.stype, data=bytes(data)
                )
            }
        )
        return
    layouts["arrays"] = doc if isinstance(doc, str) else json.dumps(doc)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mutation=_mutations)
def test_whatever_a_reply_holds_the_server_reads_it_as_that_sites_error_or_refuses_it(
    monkeypatch, mutation
):
    # the server's reply path (server.grid.exchange) on one mutated train reply
    set_task_identity(monkeypatch)
    sent = model_content()["arrays"]
    layout = {name: (a.dtype, tuple(a.shape)) for name, a in sent.items()}

    def mutated(msg):
        content = transport.pack(model_content())
        _mutate(content, mutation)
        return Message(content, reply_to=msg)

    reply = _exchange_one(mutated)
    assert reply.metadata.src_node_id == 7
    if reply.has_error():
        assert "reply not readable" in reply.error.reason, reply.error.reason
    else:  # it unpacked (a renamed, retyped or reshaped array): the model check refuses it
        got = reply.content["arrays"]
        assert set(got.keys()) != set(layout) or any(
            transport.array_problem(got[name], *layout[name]) for name in layout
        ), mutation


_runs = iter(range(10**6))


@settings(
    max_examples=2,  # a study each (about 5 s); the exchange-level property above runs many
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(_mutations, min_size=4, max_size=4))
def test_whatever_a_sites_reply_holds_the_study_goes_on_and_records_why(
    tmp_path, monkeypatch, mutations
):
    # Prepare: sites 1 and 2 mutate each train reply; site 0 is honest
    out = tmp_path / f"run-{next(_runs)}"
    study = small_study(tmp_path, monkeypatch, num_rounds=2, min_sites=1, out_dir=str(out))
    honest = build_client_app(study)
    pending = list(mutations)

    def hostile(message, context):
        reply = honest(message, context)
        if message.metadata.message_type == "train" and context.node_id != 1001:
            _mutate(reply.content, pending.pop())
        return reply

    # Execute
    records = run_loopback_study(LoopbackGrid(hostile, study.num_sites), study)
    # Assert: both rounds ran; site-0 trained; each hostile site failed, with a reason
    assert [r.round for r in records] == [1, 2] and not pending
    for record in records:
        by_site = {s.site: s for s in record.sites}
        assert by_site["site-0"].ok
        for name in ("site-1", "site-2"):
            bad = by_site[name]
            assert not bad.ok, (mutations, name)
            assert "reply not readable" in bad.error or "model is not the study's" in bad.error


def test_a_packed_array_whose_npy_header_does_not_parse_is_a_transport_error():
    content = transport.pack(model_content())
    _mutate(content, ("header", 8, 1))  # numpy's header parser raised a TokenError
    with pytest.raises(transport.TransportError, match="not an .npy array"):
        transport.unpack(content)
