"""Isolation as a property: random users, grants, subscriptions and events across two instances; every
client receives exactly the events it is subscribed to and allowed, no more, no fewer."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest

from tests.support import Client, ConnectClient, Publisher, StartServer, reference_match

USERS = ["ann", "bob", "cid", "dee", "eve"]
SHARED = ["news.sport", "news.tech", "team.red.chat", "team.blue.chat", "ops.alerts"]
PATTERN_CHOICES = ["news.*", "news.#", "team.*.chat", "team.red.#", "user.*", "user.bob", "ops.#", "#"]


@dataclass
class Participant:
    user: str
    patterns: list[str]
    client: Client
    subscribed: set[str] = field(default_factory=set)
    received: list[tuple[str, int]] = field(default_factory=list)


def may_subscribe(user: str, patterns: list[str], topic: str) -> bool:
    """The rule from docs/protocol.md, written independently of the service's code."""
    own = f"user.{user}"
    if topic == own or topic.startswith(own + "."):
        return True
    return any(reference_match(pattern.split("."), topic.split(".")) for pattern in patterns)


@pytest.mark.parametrize("seed", range(6))
async def test_every_client_gets_exactly_what_it_may_and_did_subscribe_to(
    seed: int, start_server: StartServer, connect: ConnectClient, publisher: Publisher
) -> None:
    rng = random.Random(seed)
    instances = [await start_server(), await start_server()]
    participants: list[Participant] = []
    for n in range(rng.randrange(4, 9)):
        user = rng.choice(USERS)
        patterns = rng.sample(PATTERN_CHOICES, rng.randrange(0, 3))
        client = await connect(instances[n % 2], user, topics=patterns)
        participants.append(Participant(user, patterns, client, subscribed={f"user.{user}"}))

    every_topic = SHARED + [f"user.{user}" for user in USERS] + [f"user.{user}.inbox" for user in USERS]
    for participant in participants:
        for topic in rng.sample(every_topic, rng.randrange(1, 8)):
            answer = await participant.client.subscribe(topic)
            if may_subscribe(participant.user, participant.patterns, topic):
                assert answer["type"] == "subscribed", answer
                participant.subscribed.add(topic)
            else:
                assert (answer["type"], answer["code"]) == ("error", "forbidden"), answer
        leavable = sorted(participant.subscribed - {f"user.{participant.user}"})
        if leavable and rng.random() < 0.5:  # and some leave a topic again
            topic = rng.choice(leavable)
            await participant.client.request({"type": "unsubscribe", "topic": topic})
            participant.subscribed.discard(topic)

    events = [(rng.choice(every_topic), n) for n in range(40)]
    for topic, n in events:
        await publisher.publish(topic, n)
    marker = 10_000  # a last event to each personal topic tells each client that everything before it arrived
    for user in USERS:
        await publisher.publish(f"user.{user}", marker)

    async def collect(participant: Participant) -> None:
        while True:
            frame = await participant.client.expect_event()
            if frame["data"] == marker and frame["topic"] == f"user.{participant.user}":
                return
            participant.received.append((frame["topic"], frame["data"]))

    await asyncio.gather(*(collect(participant) for participant in participants))

    markers = [(f"user.{user}", marker) for user in USERS]
    for participant in participants:
        # One instance queue keeps publish order, so the markers published before its own arrive first.
        published = events + markers[: USERS.index(participant.user)]
        expected = [(topic, n) for topic, n in published if topic in participant.subscribed]
        assert participant.received == expected, participant.user
