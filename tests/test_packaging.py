"Packaging: environment.yml pins what pyproject.toml pins, and Binder uses it."
import re, signal, subprocess, sys, tomllib
from pathlib import Path
from conftest import ROOT

def test_environment_yml_pins_the_same_versions():
    project = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']
    wanted = set(project['dependencies']) | set(project['optional-dependencies']['dev'])
    pinned = {m.group(1) for m in re.finditer(r'^\s+- ([A-Za-z0-9_.\-\[\]]+==[^\s#]+)', (ROOT/'environment.yml').read_text(), re.M)}
    assert pinned == wanted
    assert (ROOT/'binder'/'environment.yml').resolve() == (ROOT/'environment.yml').resolve()

def test_wheel_installs_and_runs_predict_and_app(tmp_path):
    """A regular install, not the editable one: build the wheel, install it in a fresh venv, then `gtsr predict` and
    `gtsr app` work on the shipped model from a folder that is not the checkout. The fresh venv gets its dependencies
    from this test run's environment (a .pth line) instead of downloading 6 GB again; `pip check` confirms that the
    wheel's declared requirements are met by them."""
    import os, shutil, socket, time, urllib.request, json
    src = tmp_path/'src'
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns('.venv', '.git', 'runs', '_artifacts', 'build', '*.egg-info', '__pycache__'))
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-w', tmp_path/'dist', src],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel, = (tmp_path/'dist').glob('gtsr-*.whl')
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    assert {'gtsr/app.ipynb', 'gtsr/models/model.pkl', 'gtsr/models/manifest.json', 'gtsr/models/model-int8.onnx', 'gtsr/models/detector.onnx', 'gtsr/models/detector-verifier.onnx'} <= set(names)
    venv = tmp_path/'fresh'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', venv], check=True, timeout=120)
    site, = venv.glob('lib/python3*/site-packages')
    deps = next(p for p in sys.path if p.endswith('site-packages') and Path(p, 'torch').is_dir())
    (site/'dependencies.pth').write_text(deps + '\n')
    py = venv/'bin'/'python'
    r = subprocess.run([py, '-m', 'pip', 'install', '--no-deps', '--no-index', wheel], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    where = subprocess.run([py, '-c', 'import gtsr; print(gtsr.__file__)'], capture_output=True, text=True, cwd=tmp_path).stdout
    assert where.startswith(str(venv)), where
    r = subprocess.run([py, '-m', 'pip', 'check'], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    from gtsr.synthetic import draw_sign
    draw_sign(14, 64).save(tmp_path/'sign.png')
    env = {k: v for k, v in os.environ.items() if k not in ('GTSR_MODEL', 'PYTHONPATH')}
    env['JUPYTER_PATH'] = str(Path(deps).parents[2]/'share'/'jupyter') # Voila's templates, which a full install puts in the venv
    r = subprocess.run([venv/'bin'/'gtsr', 'predict', '--json', 'sign.png'], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)[0]['predictions'][0]['name']
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    app = subprocess.Popen([venv/'bin'/'gtsr', 'app', '--port', str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, start_new_session=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) # a background test run ignores Ctrl-C; the app must not
    try:
        deadline, page = time.time() + 180, None
        while time.time() < deadline and page is None:
            assert app.poll() is None, app.stdout.read()
            try: page = urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=120).read().decode()
            except OSError: time.sleep(0.5)
        assert page and 'German traffic-sign classifier' in page
        assert 'No model at' not in page and 'Traceback' not in page
    finally:
        os.killpg(app.pid, signal.SIGINT) # Ctrl-C, as a user stops it: Voila and its kernel go too (slower on a busy machine)
        try: app.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(app.pid, signal.SIGKILL) # leave nothing running, then fail
            raise
