"""NOTIFIER_AMQP_URL as a list of a cluster's nodes: checked at start, tried in turn, and every failed attempt
said once, plainly."""

from __future__ import annotations

import aiormq
import pytest
from structlog.testing import capture_logs
from yarl import URL

from notifier.broker.failover import NodeAddresses, describe_connect_failure
from notifier.settings import Settings, split_amqp_urls
from tests.processes import run_cli
from tests.support import AMQP_URL, StartServer, amqp_url_through, free_port, wait_until

NODE_1 = "amqp://u:p@rabbit1:5672/"
NODE_2 = "amqp://u:p@rabbit2:5673/prod"


def test_a_list_of_urls_is_every_node_in_order() -> None:
    assert split_amqp_urls(f"{NODE_1},{NODE_2}") == [NODE_1, NODE_2]
    assert split_amqp_urls(f" {NODE_1} , {NODE_2} ") == [NODE_1, NODE_2]


def test_a_comma_in_a_password_is_written_percent_encoded() -> None:
    assert split_amqp_urls("amqp://u:p%2Cw@rabbit1/") == ["amqp://u:p%2Cw@rabbit1/"]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("amqp://u:p@h:5701,h:5702/", "address 2 of 2 ('h:5702/') must start with amqp://"),
        (f"{NODE_1},", "address 2 of 2 is empty"),
        ("amqp://u:p@h:99999/", "needs a host and a valid port"),
        ("rabbit1:5672", "must start with amqp://"),
        (f"memory://,{NODE_1}", "address 1 of 2 ('memory://') must start with amqp://"),
    ],
)
def test_a_bad_list_says_which_address_is_wrong(value: str, says: str) -> None:
    with pytest.raises(ValueError, match=None) as raised:
        split_amqp_urls(value)
    assert says in str(raised.value)
    assert ":p@" not in str(raised.value), "the password is never shown"


@pytest.mark.loopback
def test_a_bad_list_stops_the_start_with_a_line_naming_the_setting() -> None:
    result = run_cli(
        "serve",
        env={
            "NOTIFIER_AMQP_URL": "amqp://guest:secret@127.0.0.1:5701,127.0.0.1:5702/",
            "NOTIFIER_JWT_SECRET": "x" * 32,
        },
    )
    assert result.returncode == 2, result.stderr
    assert "invalid setting NOTIFIER_AMQP_URL: address 2 of 2 ('127.0.0.1:5702/')" in result.stderr
    assert "secret" not in result.stderr


def test_each_attempt_takes_the_next_node_and_wraps_around() -> None:
    nodes = NodeAddresses([NODE_1, NODE_2], heartbeat=3)
    assert [nodes.take().host for _ in range(5)] == ["rabbit1", "rabbit2", "rabbit1", "rabbit2", "rabbit1"]
    assert nodes.current.query["heartbeat"] == "3"


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (aiormq.exceptions.ProbableAuthenticationError("ACCESS_REFUSED"), "refused the login of user 'u'"),
        (
            aiormq.exceptions.InvalidFrameError("Expected one of ['Connection.OpenOk'], got <Connection.Close ...>"),
            "refused to open the vhost: it does not exist or user 'u' may not use it",
        ),
        (aiormq.exceptions.AMQPConnectionError(111, "Connect call failed"), "cannot reach RabbitMQ at rabbit2:5673"),
    ],
)
def test_a_failed_attempt_is_described_with_the_node_and_vhost(error: BaseException, says: str) -> None:
    described = describe_connect_failure(error, URL(NODE_2))
    assert says in described
    assert "vhost 'prod'" in described
    assert ":p@" not in described


async def test_an_instance_given_a_dead_node_first_connects_through_the_next(start_server: StartServer) -> None:
    dead = amqp_url_through(free_port())
    with capture_logs() as logs:
        running = await start_server(amqp_url=f"{dead},{AMQP_URL}")
        await wait_until(lambda: running.node.ready, 20)
    failed = [line["reason"] for line in logs if line["event"] == "broker_connect_attempt_failed"]
    assert len(failed) >= 1
    assert all(reason.startswith(f"cannot reach RabbitMQ at {URL(dead).host}:{URL(dead).port}") for reason in failed)


async def test_an_unknown_vhost_is_named_in_one_line_per_attempt(start_server: StartServer) -> None:
    with capture_logs() as logs:
        running = await start_server(amqp_url=AMQP_URL.rstrip("/") + "/no-such-vhost-here")
        assert not running.node.ready
    # The start makes the first attempt; one line says what is wrong, and nothing else says it again.
    failed = [line for line in logs if line["event"] == "broker_connect_attempt_failed"]
    assert len(failed) == 1, logs
    assert "vhost 'no-such-vhost-here'" in failed[0]["reason"]
    assert "does not exist" in failed[0]["reason"]


@pytest.mark.parametrize(
    ("amqp_url", "queue_type", "declared"),
    [
        (NODE_1, "auto", "classic"),
        (f"{NODE_1},{NODE_2}", "auto", "quorum"),
        (f"{NODE_1},{NODE_2}", "classic", "classic"),
        (NODE_1, "quorum", "quorum"),
    ],
)
def test_the_queue_type_follows_the_list_of_nodes_unless_set(amqp_url: str, queue_type: str, declared: str) -> None:
    settings = Settings(_env_file=None, amqp_url=amqp_url, queue_type=queue_type)  # type: ignore[call-arg,arg-type]
    assert settings.instance_queue_type == declared
