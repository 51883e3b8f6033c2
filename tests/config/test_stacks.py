"""The zoo's stack facts and what the settings do with them: a key a library cannot apply is
refused before anything runs, a whole-seconds option refuses a fraction, and an unset connect
timeout is the library's own."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lab.config.settings import TrialSettings
from lab.config.stacks import LIBRARY_KEYS, STACKS, StackFacts, refused


def zoo(stack: str, **client: object) -> TrialSettings:
    return TrialSettings.model_validate({"load": {"driver": "zoo", "stack": stack},
                                         "client": client})


def test_every_key_is_an_option_or_a_reason_in_every_stack() -> None:
    for facts in STACKS.values():
        assert set(facts.options) | set(facts.cannot) == set(LIBRARY_KEYS), facts.name
    with pytest.raises(ValueError, match="neither"):
        StackFacts("half", "X", "x", {"read_timeout_s": "r"})


def test_a_key_the_library_cannot_apply_is_refused_with_why() -> None:
    with pytest.raises(ValidationError, match="the JDK cannot set TCP_USER_TIMEOUT"):
        zoo("java-connectorj", tcp_user_timeout_ms=3000)
    assert refused("python-pymysql", {"tcp_user_timeout_ms": 3000}) is None


def test_whole_seconds_refuse_a_fraction_and_name_the_value_to_write() -> None:
    with pytest.raises(ValidationError, match=r"whole seconds only .* write 2"):
        zoo("c-libmariadb", read_timeout_s=2.4)
    assert zoo("c-libmariadb", read_timeout_s=2).client.read_timeout_s == 2
    assert zoo("python-pymysql", read_timeout_s=2.5).client.read_timeout_s == 2.5


def test_an_unset_connect_timeout_is_the_librarys_own() -> None:
    assert zoo("java-connectorj").client.connect_timeout_s == 30.0
    assert zoo("php-mysqli").client.connect_timeout_s == 60.0
    assert zoo("go-sql-driver").client.connect_timeout_s is None
    assert zoo("go-sql-driver", connect_timeout_s=5).client.connect_timeout_s == 5
    assert TrialSettings().client.connect_timeout_s == 10.0  # the lab's own drivers: PyMySQL's


def test_stack_and_command_belong_to_their_drivers() -> None:
    with pytest.raises(ValidationError, match=r"load\.stack is the client of load\.driver=.zoo."):
        TrialSettings.model_validate({"load": {"stack": "go-sql-driver"}})
    with pytest.raises(ValidationError, match=r"load\.command is the program"):
        TrialSettings.model_validate({"load": {"driver": "command"}})
    with pytest.raises(ValidationError, match="your program's sockets and timeouts"):
        TrialSettings.model_validate({"load": {"driver": "command", "command": ["x"]},
                                      "client": {"read_timeout_s": 2}})
    with pytest.raises(ValidationError, match=r"supports only load\.shape=.busy."):
        TrialSettings.model_validate({"load": {"driver": "zoo", "stack": "go-sql-driver",
                                               "shape": "idle"}})
    command = TrialSettings.model_validate(
        {"backend": "nginx", "load": {"driver": "command", "command": ["curl"]}})
    assert command.client.connect_timeout_s is None
