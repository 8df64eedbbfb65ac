"""The one setting for the real shared datasets, and the folders CI provides."""
import pytest

from medssl_jax.data import shared

EXPECTED = ("retinamnist", "pneumoniamnist", "nih_cxr14_1000_64px", "hrf", "chase_db1", "bccd")


def test_missing_dataset_error_names_path_and_setting(tmp_path, monkeypatch):
  monkeypatch.setenv(shared.ENV_VAR, str(tmp_path))
  (tmp_path / "retinamnist").mkdir()
  assert shared.dataset_dir("retinamnist") == tmp_path / "retinamnist"
  with pytest.raises(FileNotFoundError, match=rf"'hrf' not found at {tmp_path}/hrf; set MEDSSL_SHARED_DATA.*retinamnist"):
    shared.dataset_dir("hrf")


@pytest.mark.parametrize("name", EXPECTED)
def test_shared_datasets_have_provenance(name):
  root = shared.shared_data_dir()
  if not root.is_dir():
    pytest.skip(f"real shared data not present at {root} (set {shared.ENV_VAR}); CI always has it")
  try:
    folder = shared.dataset_dir(name)
  except FileNotFoundError as e:
    pytest.skip(f"real data absent: {e}")
  assert (folder / "PROVENANCE.md").is_file()
