"""The front door: every command's help, did-you-mean, --version, `list`, config mistakes that
fail at start with the key's name (and no `+key` advice), range checks, plan's device check.
No Ray: every case here fails or finishes before a cluster would start."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from geoxray import __version__
from geoxray.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """main(argv) as the shell would see it: exit status, stdout, stderr."""
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's --help, --version and usage errors
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_its_own_help(name, capsys):
    rc, out, _ = run_cli([name, "--help"], capsys)
    assert rc == 0
    assert out.startswith("usage: geoxray " + name)


def test_top_level_help_lists_every_command(capsys):
    rc, out, _ = run_cli(["--help"], capsys)
    assert rc == 0
    listed = {line.split()[0] for line in out.split("commands:")[1].splitlines()[2:] if line}
    assert listed == set(COMMANDS) and len(COMMANDS) >= 13


def test_the_installed_entry_point_answers(tmp_path):
    # a real process: `python -m geoxray.cli` as the console script runs it
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "geoxray.cli", "--version"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"geoxray {__version__}"


@pytest.mark.parametrize("typo, meant", [("sweeps", "sweep"), ("evl", "eval"),
                                         ("lst", "list"), ("profil", "profile")])
def test_a_typod_command_names_the_nearest(typo, meant, capsys):
    rc, out, err = run_cli([typo], capsys)
    assert rc == 2 and out == ""
    assert f"did you mean {meant}?" in err
    rc, _, err = run_cli(["frobnicate"], capsys)
    assert rc == 2 and "did you mean" not in err and "commands: eval" in err


def test_version(capsys):
    rc, out, _ = run_cli(["--version"], capsys)
    assert rc == 0 and out.strip() == f"geoxray {__version__}"


def test_list_models_tasks_data_sweeps(capsys):
    conf = ROOT / "conf"
    for kind, group in (("models", "model"), ("data", "data"), ("sweeps", "sweep")):
        rc, out, _ = run_cli(["list", kind, "--json"], capsys)
        assert rc == 0
        names = [row["name"] for row in json.loads(out)]
        assert names == sorted(p.stem for p in (conf / group).glob("*.yaml"))
    rc, out, _ = run_cli(["list", "models"], capsys)
    line = next(row for row in out.splitlines() if row.startswith("qwen2_vl_7b "))
    assert line.split()[1:3] == ["vllm", "Qwen/Qwen2-VL-7B-Instruct"]

    rc, out, _ = run_cli(["list", "tasks", "--json"], capsys)
    tasks = {row["name"]: row for row in json.loads(out)}
    assert list(tasks) == ["pose_fixed", "pose_random", "loc_prior", "loc_noprior",
                           "intra_map", "crossmap_std", "crossmap_random"]
    # the paper's answer sets: 4 directions, yes/no, 9 crop locations, 4 aerial indices
    assert [tasks[t]["options"] for t in tasks] == [4, 4, 2, 2, 9, 4, 4]
    assert tasks["intra_map"]["answer_field"] == "location"
    assert tasks["crossmap_std"]["answer_field"] == "matched_aerial_index"


def test_list_protocols_reads_conf_protocol(tmp_path, monkeypatch, capsys):
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    shutil.rmtree(conf / "protocol", ignore_errors=True)
    monkeypatch.setenv("GEOXRAY_CONF", str(conf))
    rc, out, _ = run_cli(["list", "protocols", "--json"], capsys)
    assert rc == 0 and json.loads(out) == []
    (conf / "protocol").mkdir()
    (conf / "protocol" / "zero_shot.yaml").write_text("# The paper's protocol.\nname: x\n")
    rc, out, _ = run_cli(["list", "protocols", "--json"], capsys)
    assert json.loads(out) == [{"name": "zero_shot", "description": "The paper's protocol."}]


@pytest.mark.parametrize("override, nearest", [
    ("run.concurrancy=3", "run.concurrency"),
    ("decode.max_token=8", "decode.max_tokens"),
    ("modle=random", "model"),
    ("+run.concurency=3", "run.concurrency"),  # appended with + still fails: nothing reads it
])
def test_a_typod_key_names_the_nearest_and_never_advises_plus(override, nearest, tmp_path,
                                                               capsys):
    rc, out, err = run_cli(["eval", f"output_dir={tmp_path}", override], capsys)
    assert rc == 2
    key = override.lstrip("+").split("=")[0]
    assert f"config key '{key}': no such key; did you mean '{nearest}'?" in err
    assert "+" not in err and "append" not in err.lower()
    assert not (tmp_path / "predictions").exists()


def test_an_unknown_key_without_a_near_one_lists_its_section(capsys):
    rc, _, err = run_cli(["config", "+run.zzz=1"], capsys)
    assert rc == 2 and "config key 'run.zzz': no such key; valid keys of run: batch_size" in err


@pytest.mark.parametrize("override, detail", [
    ("run.concurrency=abc", "expected int; Value 'abc' of type 'str' could not be converted "
                            "to Integer"),
    ("decode.temperature=hot", "expected float; Value 'hot'"),
    ("run.max_items_per_task=lots", "expected int or null; Value 'lots'"),
    ("run.progress=maybe", "expected bool; Value 'maybe' is not a valid bool"),
])
def test_a_wrong_type_keeps_hydras_detail(override, detail, capsys):
    rc, _, err = run_cli(["config", override], capsys)
    assert rc == 2
    assert f"config key '{override.split('=')[0]}': {detail}" in err


def test_a_typod_group_option_names_the_nearest(capsys):
    rc, _, err = run_cli(["config", "model=randon"], capsys)
    assert rc == 2
    assert "config group 'model': no option 'randon'; did you mean 'random'?" in err


@pytest.mark.parametrize("override, message", [
    ("run.concurrency=0", "config key 'run.concurrency': must be >= 1 (got 0)"),
    ("run.max_items_per_task=-1", "config key 'run.max_items_per_task': must be >= 1 (got -1)"),
    ("run.bootstrap=-5", "config key 'run.bootstrap': must be >= 1 (got -5)"),
    ("run.batch_size=0", "config key 'run.batch_size': must be >= 1 (got 0)"),
    ("decode.max_tokens=0", "config key 'decode.max_tokens': must be >= 1 (got 0)"),
    ("decode.temperature=-0.5", "config key 'decode.temperature': must be >= 0 (got -0.5)"),
    ("model.num_replicas=0", "config key 'model.num_replicas': must be >= 1 (got 0)"),
    ("model.request_timeout_s=0", "config key 'model.request_timeout_s': must be > 0 (got 0.0)"),
])
def test_nonsense_values_fail_at_start(override, message, tmp_path, capsys):
    rc, _, err = run_cli(["eval", f"output_dir={tmp_path}", override], capsys)
    assert rc == 2 and message in err
    assert not (tmp_path / "predictions").exists()


def test_values_at_the_bounds_are_accepted():
    from geoxray.config import load_config

    cfg = load_config(["run.concurrency=1", "run.max_items_per_task=1", "run.bootstrap=1",
                       "decode.max_tokens=1", "decode.temperature=0", "model.num_replicas=1"])
    assert (cfg.run.concurrency, cfg.decode.max_tokens, cfg.decode.temperature) == (1, 1, 0.0)


@pytest.mark.parametrize("key", ["index_root", "image_root"])
def test_a_data_root_that_does_not_exist_fails_naming_the_key(key, tmp_path, capsys):
    rc, _, err = run_cli(["eval", f"output_dir={tmp_path / 'out'}", "data=index",
                          f"data.{key}={tmp_path / 'typo'}",
                          f"data.{'image_root' if key == 'index_root' else 'index_root'}="
                          f"{tmp_path}"], capsys)
    assert rc == 2 and f"config key 'data.{key}': {tmp_path / 'typo'} is not a directory" in err
    assert not (tmp_path / "out").exists()


# --- plan: device names ---------------------------------------------------------------------
def test_plan_device_is_case_insensitive_and_checked(tmp_path, capsys):
    out = tmp_path / "plan"
    rc, stdout, _ = run_cli(["plan", "model=random,constant", "--gpus", "1", "--device", "H100",
                             "--profiles", str(tmp_path), "--out", str(out)], capsys)
    assert rc == 0 and json.loads((out / "plan.json").read_text())["device"] == "h100"
    rc, _, err = run_cli(["plan", "model=random", "--gpus", "1", "--device", "B300",
                          "--profiles", str(tmp_path)], capsys)
    assert rc == 2
    assert "--device 'B300'" in err and "known devices: a100, a10g, h100, h200, l4, l40s" in err
    # a device a profile was measured on counts as known
    (tmp_path / "random-cpu.json").write_text(json.dumps({"device": {"slug": "cpu"}}))
    from geoxray.capacity.plan import known_devices
    assert "cpu" in known_devices(tmp_path)


def test_plan_fails_when_a_model_cannot_be_planned(tmp_path, capsys):
    # 72B needs 4 GPUs per replica: on 1 GPU it cannot be placed (it used to plan 0 h, rc 0)
    rc, _, err = run_cli(["plan", "model=qwen2_5_vl_72b,random", "--gpus", "1",
                          "--profiles", str(tmp_path), "--out", str(tmp_path / "p")], capsys)
    assert rc == 1
    assert "1 model(s) cannot be planned on h100: qwen2.5_vl_72b" in err
    assert "needs TP 4 > 1 GPUs" in err


# --- console: chatter to the run folder, geoxray's lines to the terminal ---------------------
CONSOLE_SCRIPT = r'''
import logging, os, sys, time
from pathlib import Path
from geoxray import console
with console.session():
    console.redirect_chatter(Path(sys.argv[1]))
    os.write(2, b"native-xyzzy\n")  # as Ray's C++ core worker writes it
    print("python-xyzzy", file=sys.stderr)
    logging.getLogger("geoxray.run").info("geoxray line")
    with console.elapsed("starting engine e", every_s=0.2):
        time.sleep(0.5)
    bar = console.progress_bar(3, "m on d (choice)")
    bar.update(3)
    bar.close()
    if sys.argv[2] == "fail":
        raise RuntimeError("boom")
print("after the session", file=sys.stderr)
'''


@pytest.mark.parametrize("outcome", ["ok", "fail"])
def test_console_sends_chatter_to_the_run_folder(outcome, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CONSOLE_SCRIPT, str(tmp_path), outcome],
                          env=env, capture_output=True, text=True, timeout=120)
    terminal = done.stderr
    log = (tmp_path / "logs" / "ray-vllm.log").read_text()
    assert "native-xyzzy" in log and "python-xyzzy" in log
    assert "xyzzy" not in terminal
    assert f"Ray and vLLM logs -> {tmp_path}/logs/" in terminal
    assert "geoxray line" in terminal and "geoxray line" not in log
    assert "starting engine e ... 0 s" in terminal
    assert re.search(r"starting engine e: done in [01] s", terminal)
    assert "m on d (choice): 100%" in terminal
    if outcome == "ok":
        assert done.returncode == 0 and "after the session" in terminal
    else:  # the traceback reaches the terminal, with where the chatter went
        assert done.returncode == 1 and "RuntimeError: boom" in terminal
        assert f"Ray's and vLLM's output: {tmp_path}/logs/" in terminal


def test_a_pinned_log_folder_holds_for_the_whole_session(tmp_path):
    # a sweep pins SWEEP_DIR/logs: its points, run side by side, do not move descriptor 2
    script = ("import os, sys\nfrom pathlib import Path\nfrom geoxray import console\n"
              "with console.session():\n"
              "    console.redirect_chatter(Path(sys.argv[1]) / 'sweep', pin=True)\n"
              "    console.redirect_chatter(Path(sys.argv[1]) / 'point')\n"
              "    os.write(2, b'pinned-xyzzy\\n')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "pinned-xyzzy" in (tmp_path / "sweep" / "logs" / "ray-vllm.log").read_text()
    assert not (tmp_path / "point").exists() and "xyzzy" not in done.stderr


def test_serve_refuses_an_engine_without_a_serve_app(capsys):
    """`geoxray serve model=random` used to start a vLLM app for a baseline; now it names
    the key and stops before Ray starts."""
    from geoxray.cli import main

    assert main(["serve", "model=random"]) == 2
    err = capsys.readouterr().err
    assert "model.engine" in err and "Serve app" in err
