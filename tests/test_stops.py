"Clean stops: `gtsr app` and `gtsr serve` stopped by a signal to their pid, as systemd, `docker stop`, Kubernetes or a terminal stop them."
import io, signal, socket, subprocess, sys, threading, time, urllib.request
import pytest, psutil
from PIL import Image
from conftest import ROOT
from test_app import free_port, kernels, start_app

def listening(port:int) -> bool:
    with socket.socket() as s: return s.connect_ex(('127.0.0.1', port)) == 0

def wait_gone(proc, port:int, family:list, limit:float=10.) -> float:
    "Seconds until `proc` has exited, nothing listens on `port` and every process of `family` is gone (at most `limit` + 5)."
    start = time.time()
    def alive(p):
        try: return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess: return False
    while time.time() - start < limit + 5 and (proc.poll() is None or listening(port) or any(map(alive, family))): time.sleep(0.05)
    return time.time() - start

@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_app_stops_voila_and_its_kernels(sig, tmp_path):
    "`gtsr app` with two pages' kernels, sent a stop signal to its pid only: within 10 s its port is free and no child is left."
    port, log = free_port(), tmp_path/'app.log'
    proc = start_app(port, log)
    try:
        for _ in range(2): urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=60).read() # each page starts a kernel
        family = psutil.Process(proc.pid).children(recursive=True)
        assert len(kernels(proc)) == 2, [p.cmdline() for p in family]
        proc.send_signal(sig)
        took = wait_gone(proc, port, family)
        print(f"{sig.name}: port free and {len(family)} children gone {took:.2f} s after the signal")
        assert took < 10 and proc.returncode == 0 and not listening(port), log.read_text()[-3000:]
        assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        if proc.poll() is None: proc.kill()

def test_serve_answers_in_flight_requests_then_exits(tmp_path):
    "A request of several photos in flight when SIGTERM arrives still gets its 200; then `gtsr serve` exits and frees its port."
    import httpx
    port = free_port()
    proc = subprocess.Popen([sys.executable, '-m', 'gtsr.cli', 'serve', '--port', str(port)], cwd=ROOT,
                            stdout=open(tmp_path/'serve.log', 'w'), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try: urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=5); break
            except Exception: time.sleep(0.2)
        # PNG: a JPEG is decoded reduced and would be answered before the signal
        buf = io.BytesIO(); Image.effect_mandelbrot((4000, 3000), (-2, -1.2, 1, 1.2), 60).convert('RGB').save(buf, 'PNG', compress_level=1)
        files = [('files', (f'photo{k}.png', buf.getvalue(), 'image/png')) for k in range(8)]
        answer = {}
        def post():
            start = time.time()
            answer['response'] = httpx.post(f'http://127.0.0.1:{port}/v1/classify', files=files, timeout=60)
            answer['took'], answer['done'] = time.time() - start, time.time()
        client = threading.Thread(target=post); client.start()
        time.sleep(0.3) # the request is sent and being worked on
        proc.send_signal(signal.SIGTERM); sent = time.time()
        client.join(30)
        wait_gone(proc, port, [])
        took, r = time.time() - sent, answer['response']
        print(f"in-flight request ({len(buf.getvalue()) * 8 / 1e6:.1f} MB) answered {r.status_code} {answer['done'] - sent:.2f} s after SIGTERM "
              f"({answer['took']:.2f} s in all); server gone {took:.2f} s after SIGTERM")
        assert r.status_code == 200 and len(r.json()) == 8, r.text[:500]
        assert answer['done'] > sent, "the request was answered before SIGTERM: make it slower"
        assert proc.returncode is not None and not listening(port) and took < 10, (tmp_path/'serve.log').read_text()[-3000:]
    finally:
        if proc.poll() is None: proc.kill()

@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_idle_serve_stops_at_once_with_exit_0(tmp_path, sig):
    "An idle `gtsr serve`, a keep-alive client connected, stops within 2 s of SIGTERM or SIGINT (no graceful wait for nothing) and exits 0 either way."
    import httpx
    port = free_port()
    proc = subprocess.Popen([sys.executable, '-m', 'gtsr.cli', 'serve', '--port', str(port)], cwd=ROOT,
                            stdout=open(tmp_path/'serve.log', 'w'), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not listening(port): time.sleep(0.2)
        with httpx.Client() as client: # a keep-alive connection left open
            assert client.get(f'http://127.0.0.1:{port}/health').status_code == 200
            proc.send_signal(sig); sent = time.time()
            rc = proc.wait(10)
        took = time.time() - sent
        print(f"{sig.name}: idle server gone {took:.2f} s after the signal, exit {rc}")
        assert rc == 0 and took < 2, (rc, took, (tmp_path/'serve.log').read_text()[-2000:])
    finally:
        if proc.poll() is None: proc.kill()
