import subprocess
import sys


def test_import_sthist_does_not_import_torch():
    code = (
        "import sys, sthist, sthist.pp, sthist.datasets; print('torch' in sys.modules, 'timm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_public_api_is_listed():
    import sthist

    assert set(sthist.__all__) >= {"pp", "datasets", "data", "settings"}
    assert isinstance(sthist.__version__, str)
    for name in sthist.pp.__all__:
        assert callable(getattr(sthist.pp, name))


def test_settings_validate(tmp_path):
    import pytest

    import sthist

    old = sthist.settings.data_dir
    try:
        sthist.settings.data_dir = str(tmp_path)
        assert sthist.settings.data_dir == tmp_path
    finally:
        sthist.settings.data_dir = old
    with pytest.raises(ValueError, match="non-negative integer"):
        sthist.settings.num_workers = -1
