"""Packaging: pyproject.toml declares ranges, constraints.txt pins the tested set (environment.yml and CI install from
it), the LICENSE ships in the wheel, and the wheel with only its base dependencies, resolved from the package index,
runs the shipped ONNX models: `gtsr predict`, `detect`, `serve` and `app`, with no torch, fastai, pandas or JupyterLab."""
import json, os, re, shutil, signal, socket, subprocess, sys, time, tomllib, urllib.request, zipfile
from pathlib import Path
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from conftest import ROOT
from gtsr.loadgen import free_port

def declared() -> dict:
    "pyproject.toml's dependencies, base and every extra, by canonical name (gtsr's own `gtsr[train]` left out)."
    project = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']
    reqs = [Requirement(r) for r in project['dependencies'] + sum(project['optional-dependencies'].values(), [])]
    return {canonicalize_name(r.name): r for r in reqs if canonicalize_name(r.name) != 'gtsr'}

def pins(path=ROOT/'constraints.txt') -> list[Requirement]:
    "The requirements of a constraints file, in order, comments and blank lines left out."
    lines = [l.split('#', 1)[0].strip() for l in path.read_text().splitlines()]
    return [Requirement(l) for l in lines if l]

def test_constraints_pin_every_dependency_once_within_its_range():
    wanted, pinned = declared(), pins()
    names = [canonicalize_name(p.name) for p in pinned]
    assert len(names) == len(set(names)), f"pinned more than once: {sorted({n for n in names if names.count(n) > 1})}"
    assert set(names) == set(wanted), f"not pinned: {sorted(set(wanted) - set(names))}; pinned, not declared: {sorted(set(names) - set(wanted))}"
    for p in pinned:
        spec, = p.specifier # exactly one specifier, an exact version
        assert spec.operator == '==' and not p.extras and p.marker is None, p
        want = wanted[canonicalize_name(p.name)]
        assert str(want.specifier) and not any(s.operator in ('==', '===') for s in want.specifier), f"pyproject pins {want}: declare a range"
        assert want.specifier.contains(spec.version, prereleases=True), f"{p} is outside pyproject.toml's {want}"

def test_base_install_has_no_torch_fastai_or_jupyterlab():
    project = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']
    base = {canonicalize_name(Requirement(r).name) for r in project['dependencies']}
    assert not base & {'torch', 'torchvision', 'fastai', 'jupyterlab', 'accelerate', 'onnx', 'scikit-learn'}
    extras = project['optional-dependencies']
    assert 'gtsr[train,video,batch]' in extras['dev'] and {'torch', 'fastai'} <= {canonicalize_name(Requirement(r).name) for r in extras['train']}

def test_environment_yml_installs_the_constraints_file():
    import yaml
    env = yaml.safe_load((ROOT/'environment.yml').read_text())
    pip, = [d['pip'] for d in env['dependencies'] if isinstance(d, dict)]
    assert '-r constraints.txt' in pip, pip # every pinned version, base, [train] and [dev]
    assert not [l for l in pip if '==' in l], "environment.yml pins nothing itself: constraints.txt does"
    assert '--extra-index-url https://download.pytorch.org/whl/cpu' in pip # CPU-only torch for Binder
    # Binder reads binder/environment.yml, and conda resolves `-r constraints.txt` beside the file it was given
    assert (ROOT/'binder'/'environment.yml').resolve() == (ROOT/'environment.yml').resolve()
    assert (ROOT/'binder'/'constraints.txt').resolve() == (ROOT/'constraints.txt').resolve()

def test_readme_and_ci_run_the_same_test_line():
    readme = [l for l in (ROOT/'README.md').read_text().splitlines() if l.startswith('python3 -m venv') and 'pytest' in l]
    ci = [l for l in (ROOT/'.ci'/'run').read_text().splitlines() if l.startswith('python3 -m venv')]
    assert len(readme) == 1 and ci == readme, (readme, ci)
    assert '-c constraints.txt -e ".[dev]"' in ci[0]

def test_license():
    text = (ROOT/'LICENSE').read_text()
    assert 'Apache License' in text and 'Version 2.0, January 2004' in text and 'END OF TERMS AND CONDITIONS' in text
    project = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']
    assert project['license'] == 'Apache-2.0' and project['license-files'] == ['LICENSE']


def start(cmd, **kwargs):
    "Start a server in its own process group, which Ctrl-C (SIGINT) stops even when this test run ignores it."
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)

def wait_for(proc, url, seconds=180):
    "The body of GET `url` once the server answers; fails with its output if it exits first."
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try: return urllib.request.urlopen(url, timeout=120).read().decode()
        except OSError: time.sleep(0.5)
    raise AssertionError(f"no answer from {url} in {seconds} s")

def stop(proc, seconds=90) -> int:
    "Ctrl-C, as a user stops it (its children go too); its exit status. Kills the group and fails if it does not exit."
    os.killpg(proc.pid, signal.SIGINT)
    try: return proc.wait(seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL) # leave nothing running, then fail
        raise

def du_mb(path) -> float:
    return int(subprocess.run(['du', '-sk', path], capture_output=True, text=True, check=True).stdout.split()[0]) / 1024

def test_wheel_with_base_dependencies_from_the_index_runs_predict_detect_serve_and_app(tmp_path, record_property):
    """A regular install, not the editable one: build the wheel, install it with its base dependencies from the package
    index (the versions constraints.txt pins) in a fresh venv, outside the checkout, then the ONNX commands work there,
    torch and pandas are absent, the install is at most 400 MB, and a command that needs the training extra names it."""
    import httpx
    from PIL import Image
    from gtsr.synthetic import draw_sign
    src = tmp_path/'src'
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns('.venv', '.git', 'runs', '_artifacts', 'build', '*.egg-info', '__pycache__'))
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-w', tmp_path/'dist', src],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel, = (tmp_path/'dist').glob('gtsr-*.whl')
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert {'gtsr/app.ipynb', 'gtsr/models/model.pkl', 'gtsr/models/manifest.json', 'gtsr/models/model-int8.onnx',
                'gtsr/models/detector.onnx', 'gtsr/models/detector-verifier.onnx', 'gtsr/jupyter/voila/templates/gtsr/index.html.j2',
                'gtsr/jupyter/voila/templates/gtsr/conf.json', 'gtsr/jupyter/voila/templates/gtsr/static/gtsr-alive.txt'} <= names # the app page's template
        info = next(n.split('/')[0] for n in names if n.endswith('.dist-info/METADATA'))
        assert z.read(f'{info}/licenses/LICENSE') == (ROOT/'LICENSE').read_bytes()
        metadata = z.read(f'{info}/METADATA').decode()
    assert 'License-Expression: Apache-2.0' in metadata and 'License-File: LICENSE' in metadata

    venv = tmp_path/'fresh'
    subprocess.run([sys.executable, '-m', 'venv', venv], check=True, timeout=300)
    site, = venv.glob('lib/python3*/site-packages')
    empty = du_mb(site) # pip and setuptools, which every venv starts with
    py = venv/'bin'/'python'
    start_time = time.perf_counter()
    r = subprocess.run([py, '-m', 'pip', 'install', '--disable-pip-version-check', '-c', ROOT/'constraints.txt', wheel],
                       capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start_time
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    size = du_mb(site)
    print(f"\nbase install (pip install -c constraints.txt {wheel.name}): {seconds:.1f} s; site-packages {size:.0f} MB "
          f"({size - empty:.0f} MB more than the fresh venv's {empty:.0f} MB of pip and setuptools)")
    record_property('base_install_mb', round(size - empty)); record_property('base_install_s', round(seconds, 1))
    assert size - empty <= 400, f"the base install takes {size - empty:.0f} MB, more than 400 MB"
    r = subprocess.run([py, '-m', 'pip', 'check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    probe = ("import importlib.metadata as md, importlib.util, json, sys\n"
             "print(json.dumps({'where': __import__('gtsr').__file__, 'absent': [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None],\n"
             "                  'versions': {d.metadata['Name']: d.version for d in md.distributions()}}))")
    absent = ['torch', 'torchvision', 'fastai', 'jupyterlab', 'sklearn', 'matplotlib', 'onnx', 'pandas']
    seen = json.loads(subprocess.run([py, '-c', probe, *absent], capture_output=True, text=True, cwd=tmp_path, check=True).stdout)
    assert seen['where'].startswith(str(venv)), seen['where']
    assert seen['absent'] == absent # the base brings no training stack
    installed = {canonicalize_name(k): v for k, v in seen['versions'].items()}
    base = {canonicalize_name(Requirement(r).name) for r in tomllib.loads((ROOT/'pyproject.toml').read_text())['project']['dependencies']}
    for p in pins(): # the base dependencies are the tested versions
        if canonicalize_name(p.name) in base: assert p.specifier.contains(installed[canonicalize_name(p.name)]), (p, installed.get(canonicalize_name(p.name)))
    r = subprocess.run([py, '-c', 'import torch'], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0 and 'ModuleNotFoundError' in r.stderr

    draw_sign(14, 64).save(tmp_path/'sign.png')
    scene = Image.new('RGB', (640, 360), (110, 120, 130)); scene.paste(draw_sign(14, 48), (300, 120)); scene.save(tmp_path/'scene.png')
    env = {k: v for k, v in os.environ.items() if not k.startswith('GTSR_') and k not in ('PYTHONPATH', 'VIRTUAL_ENV', 'JUPYTER_PATH')}
    gtsr = str(venv/'bin'/'gtsr')
    def run(*args): return subprocess.run([gtsr, *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    r = run('predict', '--backend', 'onnx-int8', '--json', 'sign.png')
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)[0]['predictions'][0]['name']
    r = run('predict', 'sign.png') # the default backend is the shipped INT8 ONNX file, which the base install runs
    assert r.returncode == 0 and 'sign.png' in r.stdout, r.stderr[-3000:]
    r = run('predict', '--backend', 'fastai', 'sign.png') # the fastai learner is the training extra's
    assert r.returncode == 1 and 'gtsr predict: error: this needs the training extra: pip install "gtsr[train]"' in r.stderr, r.stderr[-3000:]
    assert 'Traceback' not in r.stderr and '--backend onnx-int8' in r.stderr
    r = run('detect', 'scene.png', '--json')
    assert r.returncode == 0, r.stderr[-3000:]
    found, = json.loads(r.stdout)
    assert isinstance(found['signs'], list) and 'error' not in found, found
    r = run('download', '--dest', 'data') # pandas reads the dataset's tables: the training extra, asked for before any download
    assert r.returncode == 1 and 'gtsr download: error: this needs the training extra: pip install "gtsr[train]"' in r.stderr, r.stderr[-3000:]
    assert "'pandas'" in r.stderr and 'Traceback' not in r.stderr and not (tmp_path/'data').exists()

    (tmp_path/'clip.mp4').write_bytes(b'not decoded: the base install has no PyAV')
    for command, extra in (['video', 'clip.mp4'], 'video'), (['batch', 'scene.png', '--out', 'batch'], 'batch'):
        r = run(*command)
        assert r.returncode == 1 and f'this needs the {extra} extra' in r.stderr and f'pip install "gtsr[{extra}]"' in r.stderr, r.stderr[-3000:]
        assert 'Traceback' not in r.stderr
    assert not (tmp_path/'batch').exists()

    port = free_port()
    server = start([gtsr, 'serve', '--port', str(port)], cwd=tmp_path, env=env)
    try:
        assert json.loads(wait_for(server, f'http://127.0.0.1:{port}/health'))['status'] == 'ok'
        answer = httpx.post(f'http://127.0.0.1:{port}/v1/classify', files=[('files', ('sign.png', (tmp_path/'sign.png').read_bytes(), 'image/png'))], timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()[0]['path'] == 'sign.png' and answer.json()[0]['predictions'][0]['name']
    finally: stop(server)
    assert server.poll() is not None
    with socket.socket() as s: assert s.connect_ex(('127.0.0.1', port)) != 0 # nothing listens any more

    port = free_port()
    app = start([gtsr, 'app', '--port', str(port)], cwd=tmp_path, env=env) # Voila's templates and the kernel come from the venv
    try:
        page = wait_for(app, f'http://127.0.0.1:{port}/')
        assert 'German traffic-sign classifier' in page
        assert 'No model at' not in page and 'Traceback' not in page and '"output_type": "error"' not in page
        assert 'application/vnd.jupyter.widget-view+json' in page and 'FileUpload(' in page # the kernel ran the page to its widgets
    finally: stop(app) # Voila and its kernel go too (slower on a busy machine)

def test_modules_import_only_from_below_and_stay_small():
    "Each module imports gtsr modules of earlier notebooks only (the notebooks' order is the reading order), and none is over 400 lines."
    import json
    order = {}
    for nb in sorted((ROOT/'nbs').glob('*.ipynb')):
        for cell in json.loads(nb.read_text())['cells']:
            m = re.search(r'#\|\s*default_exp\s+(\S+)', ''.join(cell['source']))
            if m: order[m.group(1)] = nb.stem; break
    assert {'detect', 'detect_evaluate', 'detect_train', 'serve', 'loadgen', 'cli'} <= set(order)
    upward, long = [], []
    for module, notebook in order.items():
        text = (ROOT/'gtsr'/f'{module}.py').read_text()
        used = set(re.findall(r'from (?:gtsr)?\.(\w+) import', text)) | set(re.findall(r'import gtsr\.(\w+)', text))
        upward += [f'{module} ({notebook}) imports {u} ({order[u]})' for u in used if u in order and order[u] > notebook]
        if len(text.splitlines()) > 400: long.append(f'{module}: {len(text.splitlines())} lines')
    assert upward == [] and long == [], (upward, long)

def test_figures_in_the_docs_are_rendered_from_their_json():
    "Each figure of README.md and the model card has one source: a JSON in docs/figures/ that a command wrote."
    r = subprocess.run([sys.executable, str(ROOT/'docs'/'render_figures.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

def test_readme_is_short_shows_todays_app_and_no_development_paths():
    """The README a newcomer reads: at most 250 lines, its pictures the screenshots the browser test writes (so they
    cannot go stale), and no path of the development machine (`../shared/...`) in it, the model card, the changelog or
    the notebooks' prose."""
    readme = (ROOT/'README.md').read_text()
    assert len(readme.splitlines()) <= 250, f"README.md has {len(readme.splitlines())} lines, more than 250"
    browser_test = (ROOT/'tests'/'test_app.py').read_text()
    shots = re.findall(r'\]\((docs/[^)\s]+\.(?:png|jpg))\)', readme)
    assert shots, "the README shows no picture of the app"
    for shot in shots:
        assert (ROOT/shot).exists(), shot
        assert f"'{Path(shot).name}'" in browser_test, f"{shot} is not written by tests/test_app.py"
    docs = {p: p.read_text() for p in [ROOT/'README.md', ROOT/'CHANGELOG.md', ROOT/'gtsr'/'models'/'README.md'] if p.exists()}
    for nb in sorted((ROOT/'nbs').glob('*.ipynb')):
        docs[nb] = '\n'.join(''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'markdown')
    assert not [p.relative_to(ROOT) for p, text in docs.items() if '../shared' in text]
