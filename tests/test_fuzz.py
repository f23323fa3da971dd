"""Thousands of random and malformed frames at a live server: each gets an error frame or a close, the
server keeps serving a bystander, and leaks no sessions, subscriptions or tasks."""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest
import websockets

from tests.support import ConnectClient, Publisher, StartServer, token_for

FRAMES_PER_CONNECTION = 250
CONNECTIONS = 16
CLOSE_CODES = {1009, 4004, 4501}
TARGET_FRAMES = 5000
MAX_ROUNDS = 60


def random_frame(rng: random.Random) -> str | bytes:
    """One frame of a random kind: malformed JSON, wrong types, huge, deep, binary, or plausible."""
    kind = rng.randrange(40)
    if kind == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 64)))  # binary, often invalid UTF-8
    if kind == 1:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(0, 80)))
    if kind == 2:
        depth = rng.choice([10, 600, 2000])
        return "[" * depth + "]" * depth
    if kind == 3:
        return '{"type": "subscribe", "topic": "' + "a" * rng.choice([200, 300, 5000]) + '"}'
    if kind == 4:
        return orjson.dumps({"type": rng.choice([None, 1, [], {}, "x" * 100, "SUBSCRIBE"])}).decode()
    if kind == 5:
        field: object = rng.choice([None, 3, 2.5, [], {"a": 1}, "", "a..b", "#", "user.other", "ok.topic"])
        return orjson.dumps({"type": rng.choice(["subscribe", "unsubscribe"]), "topic": field, "id": 1}).decode()
    if kind == 6:
        return orjson.dumps({"type": "ping", "id": rng.choice([True, 1.5, [1], "x" * 70, 2**60, -3, "ok"])}).decode()
    if kind == 7:
        return orjson.dumps({"type": "refresh", "token": rng.choice(["", "junk", 5, None, "a.b.c"])}).decode()
    if kind == 8:
        return '{"type": "subscribe", "topic": "t", "pad": "' + "x" * 70_000 + '"}'  # over the frame limit
    if kind == 9:
        text = orjson.dumps({"type": "ping", "id": 7}).decode()
        return text[: rng.randrange(len(text))]  # truncated
    if kind in (10, 11):
        return orjson.dumps({"type": "auth", "token": token_for("fuzz")}).decode()
    if kind < 25:
        return orjson.dumps({"type": "subscribe", "topic": f"fuzz.{rng.randrange(5)}"}).decode()
    if kind < 33:
        return orjson.dumps({"type": rng.choice(["unsubscribe", "subscribe"]), "topic": "fuzz.1"}).decode()
    return random_frame(rng)  # re-draw: more weight on the malformed kinds above


async def fuzz_one_connection(running_url: str, seed: int) -> tuple[int, int]:
    """Send random frames until the server closes or the budget is spent; return (frames sent, answers)."""
    rng = random.Random(seed)
    sent = answers = 0
    async with websockets.connect(running_url, max_size=None) as ws:
        if rng.random() < 0.8:
            await ws.send(orjson.dumps({"type": "auth", "token": token_for(f"f{seed}", ["fuzz.*"])}).decode())
            assert orjson.loads(await ws.recv())["type"] == "welcome"
        try:
            for _ in range(FRAMES_PER_CONNECTION):
                await ws.send(random_frame(rng))
                sent += 1
                reply = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                assert reply["type"] in {"error", "pong", "subscribed", "unsubscribed", "refreshed", "welcome"}
                if reply["type"] == "error":
                    assert reply["code"] and reply["message"]
                answers += 1
        except websockets.ConnectionClosed:
            assert ws.close_code in CLOSE_CODES, (ws.close_code, ws.close_reason)
            answers += 1  # the close is the answer
    return sent, answers


@pytest.mark.slow  # a storm: thousands of frames over ~190 connections
async def test_fuzzed_frames_get_answers_and_leak_nothing(
    start_server: StartServer, connect: ConnectClient, publisher: Publisher
) -> None:
    # A short resume window: sessions cut by a reconnect-range close are parked, and must be gone after it.
    running = await start_server(
        client_frames_per_s=1000, client_frames_burst=1000, auth_timeout_s=5, resume_window_s=0.5
    )
    bystander = await connect(running, "bystander")
    tasks_before = len(asyncio.all_tasks())

    total_sent = total_answers = rounds = 0
    for round_ in range(MAX_ROUNDS):
        if total_sent >= TARGET_FRAMES:
            break
        rounds += 1
        results = await asyncio.gather(
            *(fuzz_one_connection(running.ws_url, seed=round_ * 1000 + n) for n in range(CONNECTIONS))
        )
        total_sent += sum(sent for sent, _ in results)
        total_answers += sum(answers for _, answers in results)
        await publisher.publish("user.bystander", {"round": round_})
        assert (await bystander.expect_event("user.bystander"))["data"] == {"round": round_}

    assert total_sent >= TARGET_FRAMES
    assert total_answers >= total_sent  # every frame got a reply or ended in a documented close
    for _ in range(100):  # sessions finish their close handshakes, parked ones their window
        node = running.node
        if len(node.sessions) == 1 and not node.directory.parked_count and len(node.hub.bound_topics) == 1:
            break
        await asyncio.sleep(0.05)
    assert running.node.directory.parked_count == 0
    assert running.node.sessions == {next(iter(running.node.sessions))}
    assert running.node.hub.bound_topics == {"user.bystander"}
    assert len(asyncio.all_tasks()) <= tasks_before + 2
    print(f"fuzz: {total_sent} frames over {rounds * CONNECTIONS} connections")
