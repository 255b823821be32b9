import os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get('GTSR_MIRROR', ROOT.parent/'shared'/'gtsrb'))

def run_gtsr(*args, env=None, timeout=600, **kwargs):
    "Run the `gtsr` command line in a subprocess; return the CompletedProcess."
    return subprocess.run([sys.executable, '-m', 'gtsr.cli', *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, **kwargs)

@pytest.fixture(scope='session')
def synthetic_mirror(tmp_path_factory):
    "Official-layout synthetic archives with SHA256SUMS."
    from gtsr.synthetic import make_synthetic_archives
    return make_synthetic_archives(tmp_path_factory.mktemp('mirror'))

@pytest.fixture(scope='session')
def real_mirror():
    "The GTSRB mirror folder, or a skip that says why."
    if not (MIRROR/'GTSRB_Final_Training_Images.zip').is_file():
        pytest.skip(f"needs the real GTSRB archives: no mirror at {MIRROR} (set GTSR_MIRROR)")
    return MIRROR

@pytest.fixture(scope='session')
def real_data(real_mirror, tmp_path_factory):
    "The real GTSRB, extracted once per test session from the mirror."
    from gtsr.download import download_gtsrb
    return download_gtsrb(tmp_path_factory.mktemp('real')/'gtsrb', mirror=real_mirror, quiet=True)
