import os, signal, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get('GTSR_MIRROR', ROOT.parent/'shared'/'gtsrb'))

def run_gtsr(*args, env=None, timeout=600, **kwargs):
    "Run the `gtsr` command line in a subprocess; return the CompletedProcess."
    return subprocess.run([sys.executable, '-m', 'gtsr.cli', *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, **kwargs)

def start_gtsr_interruptible(*args, env=None):
    """Start the `gtsr` command line in a subprocess that Ctrl-C (SIGINT) interrupts, even when the test run itself was
    started with SIGINT ignored (a shell's background job is), which the child would otherwise inherit."""
    return subprocess.Popen([sys.executable, '-m', 'gtsr.cli', *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

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
