"""``ringlab up`` as a person runs it (a subprocess with real services, a real Redis): the mistakes a
newcomer makes get a clear message and the documented status, the hint names the address, and
the services' logs go to files in the deployment's state folder, not into the terminal."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringlab.rpc.local import LocalDeployment
from ringlab.store.server import free_port
from tests.services.conftest import usage_error
from tests.services.up_process import Up, clean_env, ringlab


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    running = Up.start(tmp_path_factory.mktemp("up") / "state")
    yield running
    assert running.stop() == 0, running.stderr
    assert "shutting down" in running.stderr


def test_up_hint_names_the_address_it_listens_on(up: Up) -> None:
    assert f"hypervisor  {up.target}" in up.stdout
    assert f"ringlab vm create hello --workload hello --start --hypervisor {up.target}" in up.stdout
    assert f"export RINGLAB_HYPERVISOR={up.target}" in up.stdout
    listed = ringlab("vm", "list", "--hypervisor", up.target)  # and it does listen there
    assert listed.returncode == 0, listed.stderr


def test_up_service_logs_go_to_the_state_folder_not_the_terminal(up: Up) -> None:
    assert f"logs        {up.state}/" in up.stdout and "--verbose" in up.stdout
    hypervisor_log = (up.state / "hypervisor.log").read_text()
    assert f"serving on {up.target}" in hypervisor_log
    assert "serving on" in (up.state / "cpu0.log").read_text()
    assert (up.state / "redis.log").exists()
    assert "serving on" not in up.stdout + up.stderr  # no service log line reached the terminal


def test_up_listen_on_a_port_in_use_is_refused(up: Up) -> None:
    done = ringlab("up", "--listen", up.target, "--data", str(up.state.parent / "second"))
    assert done.returncode == 3, done.stderr
    assert f"port {up.target.rsplit(':', 1)[1]}" in done.stderr and "already in use" in done.stderr
    assert "--listen" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_up_listen_nonsense_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(capsys, "up", "--listen", "nonsense")
    assert "--listen" in err and "HOST:PORT" in err and "'nonsense'" in err, err


def test_up_listen_port_99999_names_that_port(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(capsys, "up", "--listen", "127.0.0.1:99999")
    assert "99999" in err and "1-65535" in err, err
    assert set(re.findall(r"\d{5,}", err)) == {"99999", "65535"}, err  # no other port is named


def test_up_with_pcpus_zero_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(capsys, "up", "--pcpus", "0")
    assert "--pcpus" in err and "at least one pCPU" in err, err


def test_up_redis_pointing_at_nothing_fails_fast_with_advice(tmp_path: Path) -> None:
    nothing = f"redis://127.0.0.1:{free_port()}/0"
    done = ringlab("up", "--listen", f"127.0.0.1:{free_port()}", "--redis", nothing, "--state", str(tmp_path))
    assert done.returncode == 3, done.stderr
    assert f"no Redis answers at {nothing}" in done.stderr and "leave out --redis" in done.stderr
    assert "Traceback" not in done.stderr


def test_up_redis_that_is_not_a_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert "redis://" in usage_error(capsys, "up", "--redis", "localhost")


def test_up_when_a_service_fails_to_start_shows_the_end_of_its_log(tmp_path: Path) -> None:
    # RINGLAB_SLICE must be a number: every service refuses to start without one.
    done = ringlab(
        "up",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--state",
        str(tmp_path),
        env=clean_env(RINGLAB_SLICE="abc"),
    )
    assert done.returncode == 3, done.stderr
    assert "did not start" in done.stderr and f"its log ({tmp_path}/" in done.stderr, done.stderr
    assert "invalid literal" in done.stderr  # the log's last lines say why


def test_up_verbose_echoes_the_service_logs(tmp_path: Path) -> None:
    verbose = Up.start(tmp_path / "state", "--verbose")
    try:
        assert "[hypervisor]" in verbose.stderr and "serving on" in verbose.stderr, verbose.stderr
        assert "serving on" in (tmp_path / "state" / "hypervisor.log").read_text()
    finally:
        assert verbose.stop() == 0


def test_local_deployment_keeps_service_logs_out_of_the_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    """What ``ringlab demo`` and the benchmarks start: logs in a temporary folder, removed at the end."""
    with LocalDeployment.start(pcpus=1) as d:
        assert d.state_dir is not None
        state = d.state_dir
        assert sorted(d.logs) == ["cpu0", "hypervisor", "redis"]
        assert not (state / "redis").exists()  # no persistence asked: Redis keeps no files here
        assert "serving on" in d.logs["hypervisor"].read_text()
    assert not state.exists()
    out, err = capfd.readouterr()
    assert "serving on" not in out + err and "INFO" not in out + err


def test_up_state_is_another_name_for_data() -> None:
    from ringlab.cli.main import build_parser

    parsed = build_parser().parse_args(["up", "--state", "/some/folder"])
    assert parsed.data == "/some/folder"


def test_up_fresh_with_an_external_redis_is_a_usage_error(tmp_path: Path) -> None:
    done = ringlab(
        "up", "--listen", f"127.0.0.1:{free_port()}", "--redis", "redis://127.0.0.1:1/0", "--fresh",
        "--data", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--fresh" in done.stderr and "--redis" in done.stderr and "Traceback" not in done.stderr


def test_up_max_restarts_below_zero_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(capsys, "up", "--max-restarts", "-1")
    assert "--max-restarts" in err and "at least 0" in err, err
