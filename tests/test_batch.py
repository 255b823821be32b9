"`gtsr batch` on a real Ray: real GTSDB scenes and bad files, checked against `gtsr detect`; a run killed half way and resumed; a cluster started apart (`ray start --head`) reached with --address."
import json, os, shutil, signal, subprocess, sys, tempfile, time, zipfile
from pathlib import Path
import pytest
from conftest import ROOT, run_gtsr

pytest.importorskip('ray', reason='needs the batch extra (Ray Data): pip install "gtsr[batch]"')
GTSDB_MIRROR = Path(os.environ.get('GTSR_GTSDB_MIRROR', ROOT.parent/'shared'/'gtsdb'))
N_SCENES = 24
CLUSTER_ENV = {'RAY_AUTH_MODE': 'disabled'}

def _scene_sources() -> list[tuple[str, bytes]]:
    "The first `N_SCENES` GTSDB scenes as (name, JPEG bytes): from the mirror's archive, else from `$GTSR_GTSDB`; a skip if neither."
    archive = GTSDB_MIRROR/'TrainIJCNN2013.zip'
    if archive.is_file():
        with zipfile.ZipFile(archive) as z:
            names = sorted(n for n in z.namelist() if n.lower().endswith('.jpg'))[:N_SCENES]
            return [(Path(n).name, z.read(n)) for n in names]
    from gtsr.data import DatasetError
    from gtsr.gtsdb import gtsdb_folder
    try: folder = gtsdb_folder()
    except DatasetError: pytest.skip(f"needs real GTSDB scenes: no mirror at {GTSDB_MIRROR} (set GTSR_GTSDB_MIRROR) and no $GTSR_GTSDB folder")
    return [(p.name, p.read_bytes()) for p in sorted(folder.glob('*.jpg'))[:N_SCENES]]

@pytest.fixture(scope='module')
def archive(tmp_path_factory):
    "A folder of real scenes (two thirds JPEG, a third re-saved as PPM), a folder of bad files, and a list naming a missing file."
    from PIL import Image
    import io
    root = tmp_path_factory.mktemp('archive')
    (root/'scenes').mkdir(); (root/'bad').mkdir()
    for i, (name, data) in enumerate(_scene_sources()):
        if i % 3 == 2: Image.open(io.BytesIO(data)).save(root/'scenes'/(Path(name).stem + '.ppm'))
        else: (root/'scenes'/name).write_bytes(data)
    (root/'bad'/'text.jpg').write_text('not a photo, only a text file named like one\n')
    (root/'bad'/'truncated.jpg').write_bytes(_scene_sources()[0][1][:4000])
    first = sorted((root/'scenes').iterdir())[0]
    (root/'list.txt').write_text(f"{root/'missing.jpg'}\n{first}\n") # a missing file, and a scene the folder names too
    return root

def _inputs(archive) -> list:
    return [archive/'scenes', archive/'bad', archive/'list.txt']

def _expected_files(archive) -> list[str]:
    return sorted(map(str, (archive/'scenes').iterdir())) + sorted(map(str, (archive/'bad').iterdir())) + [str(archive/'missing.jpg')]

def _tables(out) -> tuple:
    "files.parquet and signs.parquet as lists of dicts."
    import pyarrow.parquet as pq
    return pq.read_table(Path(out)/'files.parquet').to_pylist(), pq.read_table(Path(out)/'signs.parquet').to_pylist()

@pytest.fixture(scope='module')
def local_run(archive, tmp_path_factory):
    "`gtsr batch` with a local Ray it starts itself (no --address), two workers; its output folder and its result."
    out = tmp_path_factory.mktemp('local')/'out'
    r = run_gtsr('batch', *_inputs(archive), '--out', out, '--workers', 2, '--quiet', timeout=300)
    return out, r

def test_batch_gives_the_records_of_gtsr_detect(archive, local_run):
    out, r = local_run
    assert r.returncode == 0, r.stderr
    files = _expected_files(archive)
    assert f"{len(files)} files ({len(files)} read now, 0 done before)" in r.stdout and '3 files could not be read' in r.stdout, r.stdout
    assert 'Ray dashboard: ' in r.stderr, r.stderr
    d = run_gtsr('detect', '--json', *files, timeout=300)
    assert d.returncode == 2, d.stderr # 2: some files could not be read
    records = {rec['path']: rec for rec in json.loads(d.stdout)}
    table, signs = _tables(out)
    assert [row['path'] for row in table] == files # every input once, in the order named
    for row in table:
        rec = records[row['path']]
        if 'error' in rec:
            assert row == {'path': rec['path'], 'width': None, 'height': None, 'signs': 0, 'error': rec['error']}
            continue
        assert row == {'path': rec['path'], 'width': rec['width'], 'height': rec['height'], 'signs': len(rec['signs']), 'error': None}
        found = [s for s in signs if s['path'] == row['path']]
        assert [[s[k] for k in ('x1', 'y1', 'x2', 'y2')] for s in found] == [s['box'] for s in rec['signs']] # boxes to the pixel
        assert [(s['class_id'], s['name']) for s in found] == [(s['class_id'], s['name']) for s in rec['signs']]
        assert [s['probability'] for s in found] == pytest.approx([s['probability'] for s in rec['signs']], abs=1e-5)
        assert [s['score'] for s in found] == pytest.approx([s['score'] for s in rec['signs']], abs=1e-5)
        assert all(s['frame'] == 0 and (s['width'], s['height']) == (rec['width'], rec['height']) for s in found)
    assert len(signs) >= N_SCENES # GTSDB's scenes all hold signs, most of them one or more the detector finds
    errors = {row['path']: row['error'] for row in table}
    assert errors[str(archive/'missing.jpg')] == f"{archive/'missing.jpg'}: no such file"
    assert 'not a readable image' in errors[str(archive/'bad'/'text.jpg')] and 'truncated' in errors[str(archive/'bad'/'truncated.jpg')]

def _free_port() -> int:
    from gtsr.loadgen import free_port
    return free_port()

def _processes_of(folder:str) -> list[int]:
    "The pids of the processes whose command line names `folder`."
    import psutil
    return [p.pid for p in psutil.process_iter(['cmdline']) if any(folder in a for a in (p.info['cmdline'] or []))]

@pytest.fixture(scope='module')
def cluster():
    """A one-node Ray cluster started apart with `ray start --head --block` (2 CPUs, no dashboard, its own temp folder); its address.
    It is stopped by killing its own process group, not by `ray stop`, which would stop every Ray of this user on the machine.
    It runs without Ray's token authentication, so that its clients need no token file (they get RAY_AUTH_MODE from `CLUSTER_ENV`)."""
    import re
    temp = tempfile.mkdtemp(prefix='rayt', dir='/tmp') # short: Ray's socket paths must fit in 107 characters
    log = Path(temp)/'head.log'
    ray = Path(sys.executable).with_name('ray')
    with open(log, 'w') as f:
        head = subprocess.Popen([str(ray), 'start', '--head', '--block', '--port', str(_free_port()), '--num-cpus', '2', '--include-dashboard', 'false',
                                 '--temp-dir', temp, '--disable-usage-stats'], stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **CLUSTER_ENV})
    try:
        deadline, address = time.monotonic() + 90, None
        while address is None or subprocess.run([str(ray), 'status', '--address', address], capture_output=True, env={**os.environ, **CLUSTER_ENV}).returncode != 0:
            if head.poll() is not None: pytest.fail(f"ray start --head failed: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline: pytest.fail(f"ray start --head: the cluster did not come up in 90 s: {log.read_text()[-2000:]}")
            if found := re.search(r"ray start --address='([^']+)'", log.read_text()): address = found[1]
            time.sleep(1)
        yield address
    finally:
        os.killpg(head.pid, signal.SIGKILL); head.wait(10)
        for pid in _processes_of(temp): os.kill(pid, signal.SIGKILL) # any Ray process that left the group
        shutil.rmtree(temp, ignore_errors=True)

def test_a_run_killed_half_way_resumes_on_a_cluster(archive, cluster, local_run, tmp_path):
    "Kill `gtsr batch --address` (SIGKILL) once part files exist; the rerun reads only the rest, and the tables equal an uninterrupted run's."
    from gtsr.batch import done_paths
    out = tmp_path/'out'
    args = ['batch', *_inputs(archive), '--out', out, '--address', cluster, '--workers', 1, '--batch-size', 1, '--flush-seconds', 0.5, '--quiet']
    proc = subprocess.Popen([sys.executable, '-m', 'gtsr.cli', *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **CLUSTER_ENV})
    deadline = time.monotonic() + 120
    while not list((out/'parts').glob('part-*.parquet')):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, 'no part file written in 120 s'
        time.sleep(0.2)
    proc.kill(); proc.communicate()
    files = _expected_files(archive)
    done = done_paths(out)
    assert 0 < len(done) < len(files) and not (out/'files.parquet').exists(), f"killed too late: {len(done)} of {len(files)} done"
    before = {p: p.stat().st_mtime_ns for p in (out/'parts').glob('part-*.parquet')}
    r = run_gtsr(*args, env=CLUSTER_ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{len(files)} files ({len(files) - len(done)} read now, {len(done)} done before)" in r.stdout, r.stdout
    assert 'Ray dashboard: not available' in r.stderr, r.stderr # the cluster runs without one
    assert {p: p.stat().st_mtime_ns for p in before} == before # the first run's parts are kept as they were
    import pyarrow.parquet as pq
    new = [p for p in (out/'parts').glob('part-*.parquet') if p not in before]
    assert not done & {x for p in new for x in pq.read_table(p, columns=['path'])['path'].to_pylist()} # nothing read twice
    (table, signs), (full_table, full_signs) = _tables(out), _tables(local_run[0])
    assert table == full_table
    key = lambda rows: [(s['path'], s['x1'], s['y1'], s['x2'], s['y2'], s['class_id'], s['name']) for s in rows]
    assert key(signs) == key(full_signs)
    again = run_gtsr(*args, env=CLUSTER_ENV, timeout=120) # only the three files that failed are read again
    assert f"(3 read now, {len(files) - 3} done before)" in again.stdout, again.stdout
    assert _tables(out)[0] == full_table

def test_a_file_that_failed_is_read_again_by_the_next_run(archive, cluster, tmp_path):
    "A file that could not be read (not there yet, as after a network time-out) is read again by the next run, once it is there; its signs replace its error. On the cluster: one Ray for both runs."
    scene, late = sorted((archive/'scenes').glob('*.jpg'))[0], tmp_path/'late.jpg'
    (tmp_path/'list.txt').write_text(f"{scene}\n{late}\n")
    out, args = tmp_path/'out', ['batch', tmp_path/'list.txt', '--out', tmp_path/'out', '--address', cluster, '--workers', 1, '--quiet']
    r = run_gtsr(*args, env=CLUSTER_ENV, timeout=300)
    assert r.returncode == 0 and '2 files (2 read now, 0 done before)' in r.stdout and '1 files could not be read' in r.stdout, (r.stdout, r.stderr)
    assert _tables(out)[0][1]['error'] == f"{late}: no such file"
    shutil.copy(scene, late)
    r = run_gtsr(*args, env=CLUSTER_ENV, timeout=300)
    assert r.returncode == 0 and '2 files (1 read now, 1 done before)' in r.stdout and '0 files could not be read' in r.stdout, (r.stdout, r.stderr)
    table, signs = _tables(out)
    assert table[1] == {**table[0], 'path': str(late)} and table[1]['signs'] > 0 # the same photo, the same signs
    assert [s['path'] for s in signs].count(str(late)) == table[1]['signs']

def test_dead_address_and_unwritable_out_fail_fast_before_ray(tmp_path):
    "`--address` where no Ray listens: a one-line error well within 30 s (Ray retried for ever); an `--out` that cannot be written: refused before Ray starts. No traceback, no Ray."
    from PIL import Image
    photo = tmp_path/'a.png'; Image.new('RGB', (64, 48), 'red').save(photo)
    dead = f'127.0.0.1:{_free_port()}' # nothing listens there
    start = time.monotonic()
    r = run_gtsr('batch', photo, '--out', tmp_path/'out', '--address', dead, '--quiet', timeout=60)
    took = time.monotonic() - start
    print(f"dead address refused in {took:.1f} s: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 1 and took < 30, (took, r.stderr[-2000:])
    assert r.stderr.strip().splitlines()[-1].startswith(f"gtsr batch: error: cannot reach a Ray cluster at {dead}: Connection refused"), r.stderr
    assert 'Traceback' not in r.stderr and 'GCS' not in r.stderr and not (tmp_path/'out').exists()
    (tmp_path/'a-file').write_text('not a folder')
    r = run_gtsr('batch', photo, '--out', tmp_path/'a-file'/'out', '--quiet', timeout=60) # a local Ray would start here
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == \
        f"gtsr batch: error: cannot write the results to --out {tmp_path/'a-file'/'out'}: {tmp_path/'a-file'} is a file, not a folder", r.stderr
    assert 'Ray dashboard' not in r.stderr and 'Traceback' not in r.stderr

def test_a_killed_driver_takes_its_local_ray_along(tmp_path):
    "SIGKILL `gtsr batch` (a local Ray) once it writes results: every process of its Ray is gone within 10 s (they stayed a minute or more)."
    import psutil
    from PIL import Image
    for i in range(40): Image.new('RGB', (1360, 800), (i * 5, 90, 90)).save(tmp_path/f'{i}.jpg')
    out = tmp_path/'out'
    proc = subprocess.Popen([sys.executable, '-m', 'gtsr.cli', 'batch', str(tmp_path), '--out', str(out), '--workers', '1', '--batch-size', '1',
                             '--flush-seconds', '0.5', '--quiet'], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    driver, ray = psutil.Process(proc.pid), []
    try:
        deadline = time.monotonic() + 150
        while not (out/'parts').is_dir() or not any((out/'parts').iterdir()):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, 'no part file in 150 s'
            time.sleep(0.2)
        ray = [p for p in driver.children(recursive=True) if 'python' not in p.name() or 'ray' in ' '.join(p.cmdline())]
        assert any(p.name() == 'raylet' for p in ray), [p.name() for p in ray]
        os.kill(proc.pid, signal.SIGKILL); proc.wait(10); killed = time.monotonic()
        def alive(p):
            try: return p.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess: return False
        while any(map(alive, ray)) and time.monotonic() - killed < 10: time.sleep(0.2)
        left = [p.name() for p in ray if alive(p)]
        print(f"{len(ray)} Ray processes; {len(left)} left {time.monotonic() - killed:.1f} s after the driver's SIGKILL: {left}")
        assert not left
    finally:
        for p in ray + [driver]:
            try: p.kill()
            except psutil.Error: pass
