"""Per-meter time set: the simulated meter takes a 0x14 write of its date (04000101) and time
(04000102) only with its password, and ``time_sync`` naming meters writes those configured
``time_set = "write"`` (any offset, read back: deviation before and after), broadcasts on the
bus of the others, and writes nothing within the quiet minutes around midnight by either
clock."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from protocols.bcd import Address
from protocols.dlt645 import (
    Acknowledge,
    ErrorResponse,
    Function,
    WriteRequest,
    decode_frame,
    encode_frame,
)
from protocols.dlt645.messages import ErrorWord, decode_message
from protocols.dlt645.registry import lookup

from .test_commands_service import M1, M2, START, Rig, command, rig_for

DATE, TIME = 0x04000101, 0x04000102


def write_mode(rig: Rig, *addresses: str) -> None:
    for address in addresses:
        plan = rig.collector.meters[address]
        config = plan.config.model_copy(update={"time_set": "write"})
        rig.collector.meters[address] = dataclasses.replace(plan, config=config)


async def test_the_simulated_meter_takes_a_time_write_only_with_its_password(
    tmp_path: Path,
) -> None:
    async with rig_for(tmp_path) as rig:
        meter = rig.meter(M1)
        item = lookup(meter.edition, TIME)
        assert item is not None
        wanted = (meter.now_local() + dt.timedelta(hours=2)).time().replace(microsecond=0)
        value = item.build({"time": wanted})

        def ask(password: str, di: int = TIME) -> object:
            request = WriteRequest(Address(M1), di, value, password=password)
            reply = meter.handle(decode_frame(encode_frame(request.to_frame())))
            assert reply is not None
            return decode_message(reply)

        refused = ask("123456")
        assert isinstance(refused, ErrorResponse)
        assert ErrorWord.PASSWORD in ErrorWord(refused.error)
        assert refused.flag_names == ["password"]
        assert abs(meter.clock_error().total_seconds()) < 1

        other = ask("000000", di=0x04000401)
        assert isinstance(other, ErrorResponse)
        assert other.flag_names == ["other"]

        done = ask("000000")
        assert isinstance(done, Acknowledge)
        assert done.function == Function.WRITE
        assert abs(meter.clock_error().total_seconds() - 7200) < 2


async def test_time_sync_writes_a_far_off_meter_and_broadcasts_for_the_others(
    tmp_path: Path,
) -> None:
    async with rig_for(tmp_path) as rig:
        write_mode(rig, M1)
        far, near = rig.meter(M1), rig.meter(M2)
        far.set_clock((START + dt.timedelta(hours=1)).replace(tzinfo=None))  # too far to broadcast
        near.set_clock((START - dt.timedelta(seconds=90)).replace(tzinfo=None))
        rig.clock.advance(60)
        result = await rig.final(command("time_sync", {"meters": [M1, M2]}, issued=rig.clock.now()))
        assert result["status"] == "done", result
        written = result["result"]["meters"][M1]
        assert written["method"] == "write"
        assert written["outcome"] == "set"
        assert abs(written["deviation_before_s"] - 3600) <= 2
        assert abs(written["deviation_after_s"]) <= 1
        assert abs(far.clock_error().total_seconds()) < 2
        assert result["result"]["meters"][M2] == {
            "method": "broadcast", "bus": "rs485-1", "outcome": "sent"
        }  # fmt: skip
        assert result["result"]["buses"] == {"rs485-1": "sent"}
        assert abs(near.clock_error().total_seconds()) < 2
        events = await rig.spool.events(type="time_sync")
        by_subject = {e.subject: e.details for e in events}
        assert by_subject[M1]["method"] == "write"
        assert abs(int(str(by_subject[M1]["deviation_before_s"])) - 3600) <= 2


async def test_a_wrong_password_is_reported_and_the_clock_left_alone(tmp_path: Path) -> None:
    async with rig_for(tmp_path, password="123456") as rig:
        write_mode(rig, M1)
        meter = rig.meter(M1)
        meter.set_clock((START + dt.timedelta(minutes=20)).replace(tzinfo=None))
        result = await rig.final(command("time_sync", {"meters": [M1, "000000009999"]}))
        assert result["status"] == "failed"
        outcome = result["result"]["meters"][M1]
        assert outcome["outcome"] == "refused"
        assert outcome["errors"] == ["password"]
        assert abs(outcome["deviation_before_s"] - 1200) <= 2
        assert "deviation_after_s" not in outcome
        assert abs(meter.clock_error().total_seconds() - 1200) < 2
        assert result["result"]["meters"]["000000009999"]["detail"] == "unknown meter"
        assert result["detail"] == "2 of 2 not synchronised"
        assert rig.channel.broadcasts == 0


async def test_no_write_near_midnight_by_either_clock(tmp_path: Path) -> None:
    async with rig_for(tmp_path) as rig:
        write_mode(rig, M1)
        meter = rig.meter(M1)
        # The meter thinks it is 23:58; the gateway knows it is 10:01.
        meter.set_clock(dt.datetime.combine(START.date(), dt.time(23, 58)))
        result = await rig.final(command("time_sync", {"meters": [M1]}))
        outcome = result["result"]["meters"][M1]
        assert (outcome["outcome"], outcome["detail"]) == (
            "refused", "within 5 min of midnight (meter clock)"
        )  # fmt: skip
        assert result["status"] == "failed"
        assert meter.now_local().hour == 23

        late = START.replace(hour=23, minute=57)
        rig.clock.set(late)
        result = await rig.final(command("time_sync", {"meters": [M1]}, issued=rig.clock.now()))
        assert result["result"]["meters"][M1]["detail"] == (
            "within 5 min of midnight (gateway clock)"
        )
