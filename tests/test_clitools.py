"""clitools: the shared error path, output-folder guard, atomic writes and graceful stops of both CLIs."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from clitools import errors, signals
from clitools import outputs as safe_out


def _run(main, argv, capsys):
    code = errors.run(main, argv, "prog")
    return code, capsys.readouterr().err


def test_input_errors_are_one_line_with_exit_code_2(capsys):
    def bad_value(argv):
        raise ValueError("data/x.json: hint 3 lies outside\n the image")

    code, err = _run(bad_value, [], capsys)
    assert code == 2
    assert err == "prog: error: data/x.json: hint 3 lies outside the image\n"


def test_unknown_config_variant_is_an_input_error_naming_config():
    from configs import four_d, priors

    assert errors.config_variant(four_d.get_config, "tiny").to_dict() == four_d.get_config("tiny").to_dict()
    for module in (four_d, priors):
        with pytest.raises(errors.InputError, match=r"^--config: .*huge"):
            errors.config_variant(module.get_config, "huge")


def test_os_errors_name_the_file(capsys, tmp_path):
    missing = tmp_path / "nope.png"

    def open_missing(argv):
        open(missing)  # noqa: SIM115

    code, err = _run(open_missing, [], capsys)
    assert code == 2
    assert err.strip() == f"prog: error: {missing}: No such file or directory"


def test_debug_shows_the_traceback(capsys):
    def bad(argv):
        raise errors.InputError("k: broken")

    code, err = _run(bad, ["--debug"], capsys)
    assert code == 2
    assert "Traceback (most recent call last)" in err and err.strip().endswith("prog: error: k: broken")


def test_bugs_keep_their_traceback():
    def bug(argv):
        raise ZeroDivisionError("internal")

    with pytest.raises(ZeroDivisionError):
        errors.run(bug, [], "prog")


def test_keyboard_interrupt_exits_130(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    code, err = _run(interrupted, [], capsys)
    assert code == 130 and err == "prog: interrupted\n"


def test_argparse_usage_error_is_one_line(capsys):
    p = errors.ArgumentParser(prog="prog")
    p.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--n", "x"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and err.startswith("prog: error: argument --n: invalid int value")


def test_output_dir_is_created_with_parents(tmp_path):
    out = tmp_path / "a" / "b" / "c"
    assert safe_out.prepare_output_dir(out) == str(out)
    assert out.is_dir()


def test_output_dir_that_holds_files_is_refused_unless_overwrite_or_resume(tmp_path):
    (tmp_path / "stats.json").write_text("{}")
    with pytest.raises(errors.InputError, match=r"already holds files \(stats.json\); pass --overwrite"):
        safe_out.prepare_output_dir(tmp_path)
    assert safe_out.prepare_output_dir(tmp_path, overwrite=True) == str(tmp_path)
    assert safe_out.prepare_output_dir(tmp_path, resume=True) == str(tmp_path)


def test_partial_leftovers_do_not_count_as_results(tmp_path):
    (tmp_path / ".cinemagraph.partial-123.mp4").write_bytes(b"\0")
    assert safe_out.prepare_output_dir(tmp_path) == str(tmp_path)


def test_output_dir_under_a_file_or_unwritable_place_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(errors.InputError, match="is not a folder"):
        safe_out.prepare_output_dir(f)
    with pytest.raises(errors.InputError, match="cannot create the output folder"):
        safe_out.prepare_output_dir(f / "out")
    # /proc refuses new folders even for root (who passes every os.access check)
    with pytest.raises(errors.InputError, match="cannot create the output folder"):
        safe_out.prepare_output_dir("/proc/cine-jax-test/out")


def test_atomic_path_renames_on_success_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "video.mp4"
    with safe_out.atomic_path(target) as tmp:
        assert tmp.endswith(".mp4") and os.path.basename(tmp).startswith(".video.partial-")
        with open(tmp, "w") as f:
            f.write("complete")
    assert target.read_text() == "complete"

    with pytest.raises(RuntimeError), safe_out.atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("writer died")
    assert target.read_text() == "complete"  # the old result is untouched
    assert sorted(os.listdir(tmp_path)) == ["video.mp4"]


def test_atomic_path_requires_the_writer_to_write(tmp_path):
    with pytest.raises(OSError, match="produced no file"), safe_out.atomic_path(tmp_path / "r.json"):
        pass
    assert os.listdir(tmp_path) == []


def test_atomic_dir_replaces_the_folder(tmp_path):
    d = tmp_path / "frames"
    d.mkdir()
    (d / "old.png").write_text("old")
    with safe_out.atomic_dir(d) as tmp:
        with open(os.path.join(tmp, "frame_0000.png"), "w") as f:
            f.write("new")
    assert sorted(os.listdir(d)) == ["frame_0000.png"]
    assert sorted(os.listdir(tmp_path)) == ["frames"]


def test_killed_writer_leaves_no_result_that_looks_complete(tmp_path):
    target = tmp_path / "results.json"
    code = textwrap.dedent(
        f"""
        import os, signal
        from clitools import outputs
        with outputs.atomic_path({str(target)!r}) as tmp:
            with open(tmp, "w") as f:
                f.write('{{"psnr": ')
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == -signal.SIGKILL
    assert not target.exists()
    assert all(".partial-" in n for n in os.listdir(tmp_path))
    safe_out.prepare_output_dir(tmp_path)  # a rerun may use the folder


def test_write_json_roundtrip(tmp_path):
    import json

    p = safe_out.write_json(tmp_path / "s.json", {"a": [1, 2]})
    assert json.loads(open(p).read()) == {"a": [1, 2]}


def test_graceful_stop_turns_the_first_signal_into_a_request():
    prev = signal.getsignal(signal.SIGTERM)
    with signals.GracefulStop() as stop:
        assert not stop.requested and stop.exit_code == 0
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.name == "SIGTERM" and stop.exit_code == 143
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second signal: the user insists
    assert signal.getsignal(signal.SIGTERM) is prev


def test_graceful_stop_request_without_signal():
    with signals.GracefulStop() as stop:
        stop.request()
        stop.request(signal.SIGTERM)  # the first request wins
        assert stop.exit_code == 130
