"""The benchmark scripts kept from rotting: their --quick presets run and print sane tables (the CPU convolution
benchmarks' are long checks: MEDSSL_SLOW_TESTS=1)."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

import device_testing

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _table_rows(text: str) -> list[list[str]]:
  rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
          if line.startswith("| ") and not line.startswith("| workload")]
  return rows


def test_accelerator_check_quick(tmp_path):
  out = tmp_path / "check.md"
  # One device, as the check measures; its temporary TFDS dir under tmp_path, to see that it is removed. Compiled
  # as the rest of the suite (tests/conftest.py): the test reads the table's layout, not its speeds.
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=device_testing.suite_xla_flags(os.environ),
             TMPDIR=str(tmp_path))
  proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accelerator_check.py"), "--quick",
                         f"--out={out}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = out.read_text()
  assert text.startswith("device: cpu"), text[:200]
  rows = {r[0]: r for r in _table_rows(text)}
  steps = [r for name, r in rows.items() if not name.startswith("input pipeline")]
  assert [r[0].split()[0] for r in steps] == ["simclr", "byol", "dino", "mae"], list(rows)
  for r in steps:
    batch, records_s, views_s, gflop = int(r[1]), float(r[3]), float(r[4]), float(r[5])
    assert batch == 8 and records_s > 0 and gflop > 0, r
    views = 1 if r[0].startswith("mae") else 2
    # Both columns are rounded to whole numbers: views/s is views x records/s within the two roundings.
    assert abs(views_s - views * records_s) <= 0.5 + 0.5 * views, r
    assert r[6] == "-"  # No MFU on a CPU without --peak_tflops.
  pipes = [r for name, r in rows.items() if name.startswith("input pipeline")]
  assert len(pipes) == 1 and "0 grain workers" in pipes[0][0] and float(pipes[0][3]) > 0, pipes
  assert re.search(r"SimCLR: \d+ views/s", text) and "Host cores one device needs" in text, text
  assert not list(tmp_path.glob("accel_check_tfds_*"))


@pytest.mark.slow
def test_conv_step_tiny():
  # Both compiles must train the same model: the ResNet's convolution only changes how a convolution is computed.
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "conv_step.py"), "--size=16", "--width=0.25",
                         "--batch=8", "--steps=1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  losses = [float(x) for x in re.findall(r"first-step loss ([\d.]+)", proc.stdout)]
  assert len(losses) == 2 and abs(losses[0] - losses[1]) < 1e-4, proc.stdout
  assert re.search(r"speed-up \(XLA's / the ResNet's\): [\d.]+ median", proc.stdout), proc.stdout


@pytest.mark.slow
def test_step_parts_tiny():
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_parts.py"), "--size=16", "--width=0.125",
                         "--batch=4", "--steps=1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "20 BatchNorms in" in proc.stdout, proc.stdout  # ResNet-18: stem, 4 in stage 1, 5 in each later stage.
  rows = {r[0]: r for r in _table_rows(proc.stdout) if r[0] != "part"}
  for part in ("encoder forward", "encoder forward + backward", "model step", "BatchNorm + ReLU forward"):
    assert float(rows[part][1]) > 0 and float(rows[part][2]) > 0, rows[part]
  assert any(p.startswith("projector + loss + optimizer") for p in rows), list(rows)


@pytest.mark.slow
def test_compile_quick():
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile.py"), "--quick"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [r for r in _table_rows(proc.stdout) if r[0] != "config"]
  assert [r[0] for r in rows] == ["fundus_simclr:quick"], proc.stdout
  init = [float(x) for x in rows[0][2].split(" / ")]
  assert all(x > 0 for x in init) and float(rows[0][5]) < 1e-5, rows  # The values agree to the last bits.
