"""CLI input errors: one line, exit status 1, before any model loads, nothing written."""

import json

import helpers
import pytest

ROOT = helpers.ROOT


@pytest.fixture(name="workdirs", scope="module")
def _workdirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("cli")
  dit = root / "dit"
  dit.mkdir()
  (dit / "config.json").write_text(
      json.dumps({"stage": "dit", "model": {"cond_type": "class", "num_classes": 3}})
  )
  (dit / "data.json").write_text(json.dumps({"class_names": ["0_bag", "1_coat", "2_sneaker"]}))
  text = root / "text"
  text.mkdir()
  (text / "config.json").write_text(json.dumps({"stage": "dit", "model": {"cond_type": "text"}}))
  ae = root / "psvae"
  ae.mkdir()
  (ae / "config.json").write_text(json.dumps({"stage": "psvae"}))
  return root


CASES = [
    ("dit", ["--label=shoe"], "Unknown class 'shoe'; the classes are"),
    ("dit", ["--label=7"], "out of range"),
    ("dit", ["--prompt=a coat"], "class-conditioned model: give --label"),
    ("text", ["--label=1"], "--label is for class-conditioned models"),
    ("psvae", ["--prompt=a"], "holds a 'psvae' run"),
    ("missing", ["--prompt=a"], "does not exist"),
    ("text", ["--prompt=a", "--steps=0"], "--steps must be in [1, 1000], got 0"),
    ("text", ["--prompt=a", "--steps=100000"], "must be in [1, 1000]"),
    ("text", ["--prompt=a", "--cfg=-1"], "--guidance_scale must be >= 0"),
    ("text", ["--prompt=a", "--num_images=0"], "--num_images=0 must be >= 1"),
    ("text", ["--prompt=a", "--guidance_interval=0.8,0.2"], "--guidance_interval wants lo,hi"),
    ("text", ["--prompt=a", "--resample=2"], "--resample (RePaint jumps) is for inpainting"),
    ("text", ["--prompt=a", "--out=grid.unknownext"], "no image format for '.unknownext'"),
]


@pytest.mark.parametrize("workdir,args,message", CASES)
def test_sample_cli_errors_are_one_line(workdirs, tmp_path, workdir, args, message):
  out = tmp_path / "out.png"
  if not any(a.startswith("--out=") for a in args):
    args = [*args, f"--out={out}"]
  r = helpers.run_module("psvae_jax.sample", f"--workdir={workdirs / workdir}", *args, timeout=120)
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 1, r.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("sample: error: ") and message in lines[0], lines
  assert not out.exists() and not list(tmp_path.iterdir())


def test_prompt_warnings_name_unknown_words_truncation_and_empty():
  """Out-of-vocabulary words became [UNK] and long prompts were cut, silently."""
  from psvae_jax.shapes import text  # pylint: disable=g-import-not-at-top
  from psvae_jax.weights import clip  # pylint: disable=g-import-not-at-top

  tok = text._build_tokenizer(text.shapes_vocabulary(), 16)  # pylint: disable=protected-access
  clean = "a red circle on the left"
  assert not clip.prompt_warnings(tok, [clean], 16)
  w = clip.prompt_warnings(tok, ["a purple dog on the left", "", " ".join([clean] * 5), clean], 16)
  assert len(w) == 3, w
  assert "unknown to the tokenizer: purple, dog" in w[0]
  assert "is empty" in w[1]
  assert "the text encoder reads the first 16" in w[2]


@pytest.mark.parametrize(
    "module,args,message",
    [
        (
            "main",
            ["--config=configs/nope.py", "--workdir={w}"],
            "--config: no config file configs/",
        ),
        (
            "main",
            ["--config=configs/svae.py:nope", "--workdir={w}"],
            "--config=configs/svae.py:nope: ValueError: Unknown config variant 'nope'",
        ),
        (
            "main",
            ["--config=configs/psvae.py:tiny", "--workdir={w}", "--config.optim.lrr=1"],
            'Did you mean "lr" instead of "lrr"?',
        ),
        ("main", ["--config=configs/dit.py:tiny", "--workdir={w}"], "set --config.autoencoder"),
        ("main", ["--config=configs/psvae.py:tiny"], "--workdir must have a value"),
        ("sample", ["--num_images=abc"], "--num_images=abc"),
        ("evaluate", ["--config=configs/eval.py:nope", "--workdir={w}"], "Unknown eval variant"),
        ("experiments.rep_encoder", ["--steps=0", "--out={w}"], "give --out=DIR and --steps >= 1"),
        (
            "main",
            [
                "--config=configs/svae.py:tiny",
                "--workdir={w}",
                "--config.data.source=folder",
                "--config.data.path=/no/such/folder",
            ],
            "does not exist",
        ),
        (
            "cache_latents",
            ["--autoencoder={w}", "--data=folder:path=/x", "--out=" + ROOT + "/tests"],
            "is not a trained workdir",
        ),
    ],
)
def test_entry_point_flag_errors_are_one_line(tmp_path, module, args, message):
  workdir = tmp_path / "run"
  r = helpers.run_module(f"psvae_jax.{module}", *(a.format(w=workdir) for a in args), timeout=120)
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 1, r.stderr[-2000:]
  assert len(lines) == 1 and message in lines[0] and "error" in lines[0], lines
  assert not workdir.exists()  # nothing created


def test_library_info_lines_are_dropped_unless_verbose():
  import logging  # pylint: disable=g-import-not-at-top
  from psvae_jax import cli  # pylint: disable=g-import-not-at-top

  f = cli._DropLibraryInfo()  # pylint: disable=protected-access
  rec = lambda path, level: logging.LogRecord("absl", level, path, 1, "m", (), None)
  assert not f.filter(rec("/x/site-packages/orbax/checkpoint/_src/a.py", logging.INFO))
  assert not f.filter(rec("/x/site-packages/clu/metric_writers/logging_writer.py", logging.INFO))
  assert f.filter(rec("/x/site-packages/orbax/checkpoint/_src/a.py", logging.WARNING))
  assert f.filter(rec("/repo/psvae_jax/train/loop.py", logging.INFO))
