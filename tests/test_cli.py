"""The command line as a user meets it: `--help` lists configs, variants and modes; a user error is one line.

Each case runs `python -m medssl_jax` in a fresh directory outside the checkout (the package found through
PYTHONPATH), so nothing depends on the working directory.
"""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _medssl(args, cwd, **env):
  env = dict(os.environ, PYTHONPATH=str(ROOT), **env)
  return subprocess.run([sys.executable, "-m", "medssl_jax", *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


def test_help_lists_configs_variants_and_modes(tmp_path):
  out = _medssl(["--help"], tmp_path)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  demo = next(l for l in lines if l.strip().startswith("demo_simclr "))
  assert ":quick" in demo
  swcl = next(l for l in lines if l.strip().startswith("fundus_swcl "))
  assert ":cpu" in swcl and ":quick" in swcl
  assert any(l.strip().startswith("table_ood_cxr ") for l in lines)
  modes = next(l for l in lines if l.startswith("Modes"))
  for mode in ("pretrain", "linear_eval", "pretrain_and_probe", "swcl", "particles", "curriculum", "features"):
    assert f" {mode}," in modes or modes.endswith(f" {mode}")


USER_ERRORS = [
    # (arguments, what the one line must say)
    (["--config=demo_simclar"], "did you mean 'demo_simclr'"),
    (["--config=/nonexistent/x.py"], "name of a shipped config: cxr_clip"),
    (["--config=demo_simclr:quik"], "valid variants: ['quick']"),
    (["--config=medmnist_supervised:blah"], "with <dataset> in ["),
    (["--config=demo_simclr:quick", "--config.train.num_step=3"], "did you mean --config.train.num_steps?"),
    (["--config=demo_simclr:quick", "--config.mode=pretrian"], "valid choices: ['pretrain'"),
    (["--config=demo_simclr:quick", "--config.objective.name=simclar"], "valid choices: ['barlow_twins'"),
    (["--config=demo_simclr:quick", "--config.train.batch_size=0"], "config.train.batch_size must be a positive"),
    (["--config=demo_simclr:quick", "--config.objective.vicreg_sim=3"], "set config.objective.vicreg.sim_weight"),
    (["--config=demo_simclr:quick", "--config.data.builder=nope"], "config.data.builder='nope' is not known"),
    (["--config=demo_simclr:quick", "--config.eval.train_subset=150%"], "the percentage must be in (0, 100]"),
]


@pytest.mark.parametrize("args,hint", USER_ERRORS, ids=[" ".join(a[1:]) or a[0] for a, _ in USER_ERRORS])
def test_user_error_is_one_line(tmp_path, args, hint):
  out = _medssl([*args, f"--workdir={tmp_path / 'wd'}"], tmp_path)
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert out.returncode == 2, out.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("FATAL: ") and hint in lines[0], out.stderr[-2000:]
  assert not (tmp_path / "wd").exists()  # Refused before anything is written.


def test_run_time_error_is_one_line_with_traceback_on_request(tmp_path):
  """An error met while running (here: missing manual files of a dataset) is one line, naming the folder; with
  --verbosity=1 the traceback is shown."""
  args = ["--config=demo_simclr:quick", "--config.data.builder=hrf", "--config.data.builder_config=classification_512",
          f"--config.data.manual_dir={tmp_path / 'nowhere'}", f"--config.data.data_dir={tmp_path / 'tfds'}",
          f"--workdir={tmp_path / 'wd'}"]
  out = _medssl(args, tmp_path)
  lines = [l for l in out.stderr.splitlines() if l.strip() and l.startswith("FATAL")]
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
  assert len(lines) == 1 and "nowhere" in lines[0] and "--verbosity=1" in lines[0], out.stderr[-3000:]
  verbose = _medssl([*args, "--verbosity=1"], tmp_path)
  assert verbose.returncode != 0 and "Traceback" in verbose.stderr


TABLE_ERRORS = [
    (["--table=table_fundus_quik"], "did you mean 'table_fundus_quick'"),
    (["--table=table_fundus_quick", "--table.train.num_step=3"], "num_step"),
    (["--table=table_fundus_quick", "--table.objective.name=simclar"], "config.objective.name='simclar' is not known"),
]


@pytest.mark.parametrize("args,hint", TABLE_ERRORS, ids=[" ".join(a) for a, _ in TABLE_ERRORS])
def test_table_user_error_is_one_line(tmp_path, args, hint):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  out = subprocess.run([sys.executable, "-m", "medssl_jax.tables.runner", *args, f"--workdir={tmp_path / 'wd'}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("FATAL: ") and hint in lines[0], out.stderr[-2000:]
  assert not (tmp_path / "wd").exists()  # Every row is checked before anything is written.
