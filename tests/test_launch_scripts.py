"""launch/tpu_pod.sh against a fake gcloud: create vs reuse, the command on every worker,
per-worker logs, the compilation cache, and a failing worker's exit code reaching the caller.

The fake `gcloud compute tpus tpu-vm ssh --worker=all --command=CMD` runs CMD once per worker
(2 workers) in a fake home with an (empty) ~/psvae/.venv; a fake `curl` answers the metadata
server's worker number. Every gcloud call is recorded.
"""

import os
import stat
import subprocess
import textwrap

from conftest import ROOT  # pylint: disable=g-bad-import-order

_GCLOUD = textwrap.dedent("""\
    #!/usr/bin/env bash
    echo "$*" >> "$FAKE_DIR/calls"
    case "$3 $4" in
      "tpu-vm describe") [ -f "$FAKE_DIR/exists" ] && echo READY; exit 0 ;;
      "tpu-vm create") touch "$FAKE_DIR/exists"; exit 0 ;;
      "tpu-vm ssh")
        cmd=""; for a in "$@"; do case "$a" in --command=*) cmd="${a#--command=}" ;; esac; done
        rc=0
        for w in 0 1; do
          FAKE_WORKER=$w HOME="$FAKE_DIR/home" bash -c "$cmd" || rc=$?
        done
        exit $rc ;;
    esac
    exit 0
""")
_CURL = '#!/usr/bin/env bash\necho "$FAKE_WORKER"\n'


def _fake(tmp_path):
  bindir = tmp_path / "bin"
  bindir.mkdir()
  for name, text in (("gcloud", _GCLOUD), ("curl", _CURL)):
    (bindir / name).write_text(text)
    (bindir / name).chmod(stat.S_IRWXU)
  venv = tmp_path / "home" / "psvae" / ".venv" / "bin"  # what the install step makes
  venv.mkdir(parents=True)
  (venv / "activate").write_text("")
  env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", FAKE_DIR=str(tmp_path))
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # a real ssh session does not inherit ours
  return env


def _run(env, logdir, *cmd):
  return subprocess.run(
      [
          "bash",
          os.path.join(ROOT, "launch", "tpu_pod.sh"),
          "--name",
          "t",
          "--zone",
          "z1",
          "--type",
          "v4-16",
          "--preemptible",
          "--no-install",
          "--logdir",
          str(logdir),
          "--",
          *cmd,
      ],
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )


def test_tpu_pod_runs_on_every_worker_and_keeps_exit_codes(tmp_path):
  env = _fake(tmp_path)
  logs = tmp_path / "logs"
  r = _run(env, logs, "bash", "-c", 'echo "cache=$JAX_COMPILATION_CACHE_DIR arg=$0"', "a b")
  assert r.returncode == 0, r.stderr
  calls = (tmp_path / "calls").read_text().splitlines()
  assert any(
      c.startswith("compute tpus tpu-vm create t --zone=z1 --accelerator-type=v4-16")
      and "--preemptible" in c
      for c in calls
  ), calls
  for w in (0, 1):  # each worker's lines land in its own log, with the quoting intact
    log = (logs / f"worker_{w}.log").read_text()
    assert f"[worker {w}] cache=" in log and "/.cache/jax arg=a b" in log, log
  assert "[worker 0]" in r.stdout and "[worker 1]" not in r.stdout  # the terminal shows worker 0

  r = _run(env, logs, "bash", "-c", '[ "$FAKE_WORKER" = 0 ] || exit 3')  # worker 1 fails
  assert r.returncode == 3, (r.returncode, r.stderr)
  calls = (tmp_path / "calls").read_text().splitlines()
  assert sum("tpu-vm create" in c for c in calls) == 1  # the second run reused the VM
  assert "reusing t" in r.stderr


def test_tpu_pod_refuses_a_config_that_does_not_fit(tmp_path):
  """The compile check runs before any gcloud call; its one-line verdict is what the user sees.
  (The checker is faked here: tests/test_aot.py runs the real one.)"""
  env = _fake(tmp_path)
  fake_aot = tmp_path / "fake_aot.sh"
  fake_aot.write_text(
      '#!/usr/bin/env bash\necho "$*" > "$FAKE_DIR/aot_args"\n'
      'echo "error: train does not fit on v4-16: 41.3 GiB per chip (HBM 32.0 GiB)" >&2\nexit 2\n'
  )
  fake_aot.chmod(stat.S_IRWXU)
  env["PSVAE_AOT"] = str(fake_aot)
  cmd = ["python", "-m", "psvae_jax.main", "--config=configs/dit.py:paper", "--workdir=gs://b/d"]
  r = _run(env, tmp_path / "logs", *cmd, "--config.batch_size=512")
  assert r.returncode == 2, r.stderr
  assert "refusing to start on v4-16: error: train does not fit on v4-16: 41.3 GiB" in r.stderr
  args = (tmp_path / "aot_args").read_text()
  assert "--config=configs/dit.py:paper --config.batch_size=512 --topology=v4-16" in args
  assert "--workdir" not in args
  assert (
      not (tmp_path / "calls").exists() or "tpu-vm create" not in (tmp_path / "calls").read_text()
  )
